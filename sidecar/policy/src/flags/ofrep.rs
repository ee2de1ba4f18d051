//! The OpenFeature Remote Evaluation Protocol (OFREP) over a [`FlagSet`], without HTTP types:
//! a request body in, a status and a JSON body out; the admin listener carries them.
//!
//! - `POST /ofrep/v1/evaluate/flags/{key}` → [`evaluate_one`]
//! - `POST /ofrep/v1/evaluate/flags` → [`evaluate_all`], with an `ETag`; a matching
//!   `If-None-Match` gets 304, so an SDK polling an unchanged flag set receives no body
//!   (the spec allows it; flagd does not do it).
//!
//! Shapes and status codes are flagd's (docs/feature-flags.md): a success is
//! `{key, reason, variant, value, metadata}`, an error `{key, errorCode, errorDetails, metadata}`
//! with 404 for an unknown flag and 400 otherwise, a context that is not a JSON object 400
//! `INVALID_CONTEXT`.

use datalogic_rs::bumpalo::Bump;
use serde_json::{Map, Value, json};

use std::time::Instant;

use super::{CompiledFlag, Context, ErrorCode, FlagSet, Resolution, metrics::FlagMetrics};

/// An OFREP answer.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    /// Set on bulk answers (200 and 304).
    pub etag: Option<String>,
    /// Empty for 304.
    pub body: Vec<u8>,
}

impl Answer {
    fn json(status: u16, value: &Value) -> Self {
        Self {
            status,
            etag: None,
            body: serde_json::to_vec(value).expect("JSON values serialise"),
        }
    }
}

/// The context of a request body `{"context": {...}}`; an empty body is an empty context.
fn context<'a>(body: &'a [u8], arena: &'a Bump) -> Result<Context<'a>, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Context::empty());
    }
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let value = datalogic_rs::DataValue::from_str(text, arena)
        .map_err(|e| format!("the body is not JSON: {e}"))?;
    let Some(fields) = value.as_object() else {
        return Err("the body must be a JSON object".into());
    };
    match fields.iter().find(|(k, _)| *k == "context") {
        None => Ok(Context::empty()),
        Some((_, context)) => {
            Context::from_value(context).ok_or_else(|| "context must be a JSON object".to_owned())
        }
    }
}

fn invalid_context(key: Option<&str>, details: String) -> Answer {
    let mut body = json!({
        "errorCode": ErrorCode::InvalidContext.as_str(),
        "errorDetails": details,
    });
    if let Some(key) = key {
        body["key"] = json!(key);
    }
    Answer::json(400, &body)
}

/// One flag's result in OFREP's shape, with the HTTP status a single evaluation answers.
fn result(flag: &CompiledFlag, r: &Resolution<'_>) -> (u16, Value) {
    let metadata = Value::Object(r.metadata.clone());
    match &r.error {
        Some((code, details)) => (
            400,
            json!({
                "key": flag.key,
                "errorCode": code.as_str(),
                "errorDetails": details,
                "metadata": metadata,
            }),
        ),
        None => {
            let mut body = Map::new();
            body.insert("key".into(), json!(flag.key));
            body.insert("reason".into(), json!(r.reason.as_str()));
            // A DISABLED result has neither, as flagd answers it.
            if let (Some(variant), Some(value)) = (r.variant, r.value) {
                body.insert("variant".into(), json!(variant));
                body.insert("value".into(), value.clone());
            }
            body.insert("metadata".into(), metadata);
            (200, Value::Object(body))
        }
    }
}

fn not_found(key: &str) -> Answer {
    Answer::json(
        404,
        &json!({
            "key": key,
            "errorCode": ErrorCode::FlagNotFound.as_str(),
            "errorDetails": format!("flag {key:?} not found"),
            "metadata": {},
        }),
    )
}

/// `POST /ofrep/v1/evaluate/flags/{key}` at `now` (Unix seconds).
pub fn evaluate_one(flags: &FlagSet, key: &str, body: &[u8], now: i64) -> Answer {
    let arena = Bump::new();
    let context = match context(body, &arena) {
        Ok(context) => context,
        Err(details) => return invalid_context(Some(key), details),
    };
    let Some(flag) = flags.get(key) else {
        return not_found(key);
    };
    let resolution = flag.evaluate(context, &arena, now);
    flags.record(flag, &resolution);
    let (status, body) = result(flag, &resolution);
    Answer::json(status, &body)
}

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an ETag of the answer; `if_none_match`
/// (the request header's value) matching it gives 304 without a body.
pub fn evaluate_all(flags: &FlagSet, body: &[u8], if_none_match: Option<&str>, now: i64) -> Answer {
    let arena = Bump::new();
    let context = match context(body, &arena) {
        Ok(context) => context,
        Err(details) => return invalid_context(None, details),
    };
    let results: Vec<Value> = flags
        .iter()
        .map(|flag| {
            let resolution = flag.evaluate(context, &arena, now);
            flags.record(flag, &resolution);
            result(flag, &resolution).1
        })
        .collect();
    let body = serde_json::to_vec(&json!({"flags": results, "metadata": {}}))
        .expect("JSON values serialise");
    // Of the answer itself: it depends on the context (and time) as much as on the flags.
    let etag = format!("\"{:032x}\"", xxhash_rust::xxh3::xxh3_128(&body));
    if if_none_match.is_some_and(|header| etag_matches(header, &etag)) {
        return Answer {
            status: 304,
            etag: Some(etag),
            body: Vec::new(),
        };
    }
    Answer {
        status: 200,
        etag: Some(etag),
        body,
    }
}

/// Counts an answered OFREP request of `endpoint` (`single`, `bulk`) begun at `started`.
pub fn observe(metrics: &FlagMetrics, endpoint: &str, status: u16, started: Instant) {
    metrics
        .ofrep_requests
        .with_label_values(&[endpoint, &status.to_string()])
        .inc();
    metrics
        .ofrep_seconds
        .with_label_values(&[endpoint])
        .observe(started.elapsed().as_secs_f64());
}

/// RFC 9110 `If-None-Match`: `*`, or a list of entity tags compared weakly.
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use bulwark_api::snapshot::{PolicySource, Sourced};

    use super::*;
    use crate::metrics::PolicyMetrics;

    fn flags() -> FlagSet {
        let spec = serde_yaml::from_str(
            r#"
flags:
  checkout:
    state: ENABLED
    variants: {"on": true, "off": false}
    defaultVariant: "off"
    targeting: {"if": [{"==": [{"var": "plan"}, "pro"]}, "on", null]}
  old:
    state: DISABLED
    variants: {"a": 1}
    defaultVariant: "a"
metadata: {flagSetId: shop}
"#,
        )
        .unwrap();
        FlagSet::compile(
            &[Sourced {
                source: PolicySource::default(),
                spec,
            }],
            &PolicyMetrics::unregistered().flags,
        )
        .unwrap()
    }

    fn body(answer: &Answer) -> Value {
        serde_json::from_slice(&answer.body).unwrap()
    }

    #[test]
    fn single_evaluations_in_flagds_shapes() {
        let flags = flags();
        let on = evaluate_one(&flags, "checkout", br#"{"context":{"plan":"pro"}}"#, 0);
        assert_eq!(on.status, 200);
        assert_eq!(
            body(&on),
            json!({"key": "checkout", "reason": "TARGETING_MATCH", "variant": "on", "value": true, "metadata": {"flagSetId": "shop"}})
        );
        let disabled = evaluate_one(&flags, "old", b"{}", 0);
        assert_eq!(
            (disabled.status, body(&disabled)),
            (
                200,
                json!({"key": "old", "reason": "DISABLED", "metadata": {"flagSetId": "shop"}})
            )
        );
        let missing = evaluate_one(&flags, "nope", b"{}", 0);
        assert_eq!(missing.status, 404);
        assert_eq!(body(&missing)["errorCode"], "FLAG_NOT_FOUND");
        for bad in [&b"{"[..], b"[1]", br#"{"context": 5}"#] {
            let answer = evaluate_one(&flags, "checkout", bad, 0);
            assert_eq!(answer.status, 400);
            assert_eq!(body(&answer)["errorCode"], "INVALID_CONTEXT");
        }
        assert_eq!(
            evaluate_one(&flags, "checkout", b"", 0).status,
            200,
            "no body: empty context"
        );
    }

    #[test]
    fn bulk_answers_carry_an_etag_and_honour_if_none_match() {
        let flags = flags();
        let first = evaluate_all(&flags, br#"{"context":{"plan":"pro"}}"#, None, 0);
        assert_eq!(first.status, 200);
        let all = body(&first);
        assert_eq!(all["flags"].as_array().unwrap().len(), 2);
        assert_eq!(all["flags"][0]["variant"], "on");
        let etag = first.etag.clone().unwrap();
        let again = evaluate_all(&flags, br#"{"context":{"plan":"pro"}}"#, Some(&etag), 0);
        assert_eq!((again.status, again.body.len()), (304, 0));
        assert_eq!(again.etag.as_deref(), Some(etag.as_str()));
        let listed = format!("\"x\", W/{etag}");
        assert_eq!(evaluate_all(&flags, b"{}", Some("*"), 0).status, 304);
        let other = evaluate_all(&flags, br#"{"context":{"plan":"free"}}"#, Some(&listed), 0);
        assert_eq!(other.status, 200, "another context, another answer");
        assert_ne!(other.etag.as_deref(), Some(etag.as_str()));
        assert_eq!(
            evaluate_all(&flags, br#"{"context":{"plan":"pro"}}"#, Some(&listed), 0).status,
            304
        );
    }
}
