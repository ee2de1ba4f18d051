//! Reading what the app submits (`POST /webhooks/v1/messages` and its batch form), with errors
//! that name the field, and message ids.
//!
//! A message is `{"eventType": "invoice.paid", "payload": {...}, "idempotencyKey": "..."}`.
//! The payload is kept byte for byte as sent (it is what receivers verify the signature of).

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use ulid::Ulid;

/// The largest payload one message may carry (Svix's limit is of the same order).
pub const MAX_PAYLOAD_BYTES: usize = 256 * 1024;
/// The most messages one batch may carry.
pub const MAX_BATCH: usize = 1000;
const MAX_EVENT_TYPE: usize = 256;
const MAX_IDEMPOTENCY_KEY: usize = 256;

/// A message as submitted, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewMessage {
    pub event_type: String,
    /// The JSON payload, exactly as sent.
    pub payload: Vec<u8>,
    pub idempotency_key: Option<String>,
}

/// Why a submission was refused: the HTTP status, the field at fault and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidMessage {
    /// 400 (not JSON), 413 (too large) or 422 (a field is wrong).
    pub status: u16,
    pub field: String,
    pub message: String,
}

impl InvalidMessage {
    fn new(status: u16, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            field: field.into(),
            message: message.into(),
        }
    }

    fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

/// One message: the body of `POST /webhooks/v1/messages`.
pub fn parse_one(body: &[u8]) -> Result<NewMessage, InvalidMessage> {
    let fields = object(body, "")?;
    message(&fields)
}

/// A batch: `{"messages": [ ... ]}`, all valid or none accepted.
pub fn parse_batch(body: &[u8]) -> Result<Vec<NewMessage>, InvalidMessage> {
    let fields = object(body, "")?;
    if let Some(unknown) = fields.keys().find(|k| *k != "messages") {
        return Err(InvalidMessage::new(
            422,
            unknown.as_str(),
            "unknown field; a batch is {\"messages\": [...]}",
        ));
    }
    let Some(list) = fields.get("messages") else {
        return Err(InvalidMessage::new(422, "messages", "required"));
    };
    let items: Vec<&RawValue> = serde_json::from_str(list.get())
        .map_err(|_| InvalidMessage::new(422, "messages", "must be a list of messages"))?;
    if items.is_empty() || items.len() > MAX_BATCH {
        return Err(InvalidMessage::new(
            if items.is_empty() { 422 } else { 413 },
            "messages",
            format!("must hold 1 to {MAX_BATCH} messages, not {}", items.len()),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let at = format!("messages[{i}]");
            let fields = object(item.get().as_bytes(), &at)?;
            message(&fields).map_err(|e| e.under(&at))
        })
        .collect()
}

fn object<'a>(
    body: &'a [u8],
    field: &str,
) -> Result<BTreeMap<String, &'a RawValue>, InvalidMessage> {
    let text = std::str::from_utf8(body)
        .map_err(|_| InvalidMessage::new(400, field, "the body is not UTF-8 JSON"))?;
    serde_json::from_str(text).map_err(|e| {
        let status = if field.is_empty() { 400 } else { 422 };
        InvalidMessage::new(status, field, format!("must be a JSON object: {e}"))
    })
}

fn message(fields: &BTreeMap<String, &RawValue>) -> Result<NewMessage, InvalidMessage> {
    const KNOWN: [&str; 3] = ["eventType", "payload", "idempotencyKey"];
    if let Some(unknown) = fields.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(InvalidMessage::new(
            422,
            unknown.as_str(),
            "unknown field; a message has eventType, payload and idempotencyKey",
        ));
    }
    let event_type = string(fields, "eventType", MAX_EVENT_TYPE)?
        .ok_or_else(|| InvalidMessage::new(422, "eventType", "required"))?;
    if !valid_event_type(&event_type) {
        return Err(InvalidMessage::new(
            422,
            "eventType",
            "must be dot-separated names of letters, digits, `_` and `-` (e.g. invoice.paid)",
        ));
    }
    let payload = fields
        .get("payload")
        .ok_or_else(|| InvalidMessage::new(422, "payload", "required"))?
        .get();
    if !payload.starts_with('{') {
        return Err(InvalidMessage::new(422, "payload", "must be a JSON object"));
    }
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(InvalidMessage::new(
            413,
            "payload",
            format!(
                "{} bytes is more than the {MAX_PAYLOAD_BYTES} a message may carry",
                payload.len()
            ),
        ));
    }
    let idempotency_key = string(fields, "idempotencyKey", MAX_IDEMPOTENCY_KEY)?;
    Ok(NewMessage {
        event_type,
        payload: payload.as_bytes().to_vec(),
        idempotency_key,
    })
}

fn string(
    fields: &BTreeMap<String, &RawValue>,
    name: &str,
    max: usize,
) -> Result<Option<String>, InvalidMessage> {
    let Some(raw) = fields.get(name) else {
        return Ok(None);
    };
    let value: String = serde_json::from_str(raw.get())
        .map_err(|_| InvalidMessage::new(422, name, "must be a string"))?;
    if value.is_empty() || value.len() > max {
        return Err(InvalidMessage::new(
            422,
            name,
            format!("must be 1 to {max} characters"),
        ));
    }
    Ok(Some(value))
}

fn valid_event_type(event_type: &str) -> bool {
    event_type.split('.').all(|part| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    })
}

/// A message id as receivers see it in `webhook-id`: `msg_` and a ULID (time-ordered, so the
/// store's keys sort by acceptance time and retention is a range delete).
pub fn format_id(id: u128) -> String {
    format!("msg_{}", Ulid(id))
}

/// The inverse of [`format_id`].
pub fn parse_id(text: &str) -> Option<u128> {
    let ulid = text.strip_prefix("msg_")?;
    Ulid::from_string(ulid).ok().map(|u| u.0)
}

/// The smallest id of a message accepted at or after `unix_ms`, for ranges by time.
pub fn first_id_at(unix_ms: u64) -> u128 {
    Ulid::from_parts(unix_ms, 0).0
}

/// The acceptance time encoded in an id.
pub fn id_time_ms(id: u128) -> u64 {
    Ulid(id).timestamp_ms()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_keeps_its_payload_byte_for_byte() {
        let m = parse_one(
            br#"{"eventType":"invoice.paid","payload":{"b": 1,  "a":[2]},"idempotencyKey":"k1"}"#,
        )
        .unwrap();
        assert_eq!(m.event_type, "invoice.paid");
        assert_eq!(m.payload, br#"{"b": 1,  "a":[2]}"#);
        assert_eq!(m.idempotency_key.as_deref(), Some("k1"));
    }

    #[test]
    fn errors_name_the_field_and_status() {
        let cases: &[(&[u8], u16, &str)] = &[
            (b"not json", 400, ""),
            (br#"{"payload":{}}"#, 422, "eventType"),
            (br#"{"eventType":"a..b","payload":{}}"#, 422, "eventType"),
            (br#"{"eventType":7,"payload":{}}"#, 422, "eventType"),
            (br#"{"eventType":"a"}"#, 422, "payload"),
            (br#"{"eventType":"a","payload":[1]}"#, 422, "payload"),
            (
                br#"{"eventType":"a","payload":{},"idempotencyKey":""}"#,
                422,
                "idempotencyKey",
            ),
            (
                br#"{"eventType":"a","payload":{},"event_type":"b"}"#,
                422,
                "event_type",
            ),
        ];
        for (body, status, field) in cases {
            let e = parse_one(body).unwrap_err();
            assert_eq!((e.status, e.field.as_str()), (*status, *field), "{e}");
        }
        let big = format!(
            r#"{{"eventType":"a","payload":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_PAYLOAD_BYTES)
        );
        assert_eq!(parse_one(big.as_bytes()).unwrap_err().status, 413);
    }

    #[test]
    fn a_batch_is_all_or_nothing_and_names_the_item() {
        let ok = parse_batch(
            br#"{"messages":[{"eventType":"a","payload":{}},{"eventType":"b","payload":{"n":1}}]}"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 2);
        let e = parse_batch(br#"{"messages":[{"eventType":"a","payload":{}},{"eventType":"b"}]}"#)
            .unwrap_err();
        assert_eq!(e.field, "messages[1].payload");
        assert_eq!(
            parse_batch(br#"{"messages":[]}"#).unwrap_err().field,
            "messages"
        );
    }

    #[test]
    fn ids_round_trip_and_sort_by_time() {
        let early = Ulid::from_parts(1_000, 5).0;
        let late = Ulid::from_parts(2_000, 0).0;
        assert!(early < late);
        assert_eq!(parse_id(&format_id(early)), Some(early));
        assert!(format_id(early).starts_with("msg_"));
        assert!(first_id_at(1_000) <= early && early < first_id_at(1_001));
        assert_eq!(id_time_ms(late), 2_000);
        assert_eq!(parse_id("msg_nope"), None);
    }
}
