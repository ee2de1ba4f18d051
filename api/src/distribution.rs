//! The policy stream between the operator and its sidecars: paths, messages and the content tag
//! that lets a reconnecting sidecar resume.
//!
//! One HTTP/2 connection over TLS per sidecar (the operator's own CA, given to the sidecar at
//! injection). The sidecar opens [`WATCH_PATH`] with its pod's projected ServiceAccount token
//! (audience [`AUDIENCE`]) as a bearer token and, if it has a snapshot already, its [`etag`] in
//! `If-None-Match`. The operator verifies the token with a TokenReview, binds the stream to the
//! pod named in the token, and answers `200` with a body of newline-delimited JSON
//! [`StreamMessage`]s: the pod's current snapshot at once unless its etag matches, then each new
//! one, and a heartbeat at least every [`HEARTBEAT_SECONDS`]. After applying (or rejecting) a
//! snapshot the sidecar posts an [`Ack`] to [`ACK_PATH`] on the same connection and with the
//! same token; acknowledgements are what `status.programmedPods` counts.
//!
//! Errors: `401` when the token is missing or the TokenReview rejects it, `403` when the token is
//! not bound to a pod (a plain ServiceAccount token), `404` when the bound pod does not exist or
//! is not injected. The body of an error is a one-line reason.
//!
//! An acknowledgement also carries the sidecar's webhook deliveries ([`Ack::webhooks`]): the
//! leader sums them over pods into each WebhookEndpoint's status. The sidecar sends them with
//! every acknowledgement, once after every connect (the acknowledgement of the snapshot it
//! enforces, again), and again when they changed, at most every [`REPORT_SECONDS`]. Older
//! operators ignore the field; older sidecars do not send it.
//!
//! Why an etag rather than ordering by `version`: any operator replica may serve a stream, and
//! replicas compile independently, so their version counters are not comparable; the content is.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::snapshot::Snapshot;

/// The audience the sidecar's projected ServiceAccount token must carry.
pub const AUDIENCE: &str = "bulwark";
/// `GET`: the stream of this pod's snapshots.
pub const WATCH_PATH: &str = "/v1/snapshots/watch";
/// `POST` (JSON [`Ack`]): the sidecar applied, or rejected, a snapshot.
pub const ACK_PATH: &str = "/v1/snapshots/ack";
/// The operator sends something at least this often; a sidecar that hears nothing for three
/// times as long treats the stream as dead and reconnects.
pub const HEARTBEAT_SECONDS: u64 = 10;
/// A sidecar re-sends its acknowledgement with its webhook deliveries at most this often, and
/// only when they changed.
pub const REPORT_SECONDS: u64 = 10;
/// A failure reason is cut to this many characters in a report.
pub const MAX_REASON_CHARS: usize = 256;
/// `Content-Type` of the stream body.
pub const STREAM_CONTENT_TYPE: &str = "application/x-ndjson";

/// One line of the stream body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum StreamMessage {
    /// The pod's whole snapshot; replaces whatever the sidecar had.
    Snapshot {
        etag: String,
        snapshot: Box<Snapshot>,
    },
    /// Nothing changed; the stream is alive.
    Heartbeat,
}

/// The sidecar's answer to one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ack {
    /// The [`etag`] of the snapshot this answers.
    pub etag: String,
    /// Whether the sidecar compiled and now enforces it. When `false` it keeps enforcing its
    /// last good snapshot and `error` says why.
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The sidecar's webhook deliveries by endpoint (`namespace/name`): every endpoint its
    /// store has counted and every endpoint of the policy it enforces. `None` from a sidecar
    /// that does not report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<BTreeMap<String, WebhookDeliveries>>,
}

/// One sidecar's deliveries to one WebhookEndpoint. The counts are cumulative since the
/// endpoint's first message on this sidecar (kept in its store across restarts); the times are
/// unix milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookDeliveries {
    /// The `metadata.generation` of the endpoint the sidecar enforces (0: not in its policy).
    /// `failingSince` concerns this generation only.
    #[serde(default)]
    pub generation: i64,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_lettered: u64,
    /// The most recent failed attempt since the sidecar started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<WebhookFailure>,
    /// When a delivery last succeeded, as far as the sidecar saw since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success_ms: Option<u64>,
    /// When the current failure streak began: every attempt of this generation since then has
    /// failed. `None` while the last attempt succeeded, before any attempt, and while the
    /// endpoint is disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since_ms: Option<u64>,
}

/// A failed delivery attempt, as reported (never a secret or a response body).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WebhookFailure {
    pub at_ms: u64,
    /// The HTTP status, when a response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong (`HTTP 503`, `connect timeout`), at most [`MAX_REASON_CHARS`].
    pub reason: String,
}

/// The content tag of a snapshot: equal for equal policy content, whatever `version` each
/// replica gave it. 16 hex digits (xxh3-64 of the JSON with `version` zeroed).
pub fn etag(snapshot: &Snapshot) -> String {
    let mut content = snapshot.clone();
    content.version = 0;
    let json = serde_json::to_vec(&content).expect("a snapshot always serialises");
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ObjectRef;

    #[test]
    fn etag_ignores_version_but_not_content() {
        let mut a = Snapshot::empty();
        a.version = 1;
        let mut b = a.clone();
        b.version = 99;
        assert_eq!(etag(&a), etag(&b));
        b.pod = Some(ObjectRef {
            namespace: "shop".into(),
            name: "api-0".into(),
        });
        assert_ne!(etag(&a), etag(&b));
        assert_eq!(etag(&a).len(), 16);
        // Endpoints are content too: a Service's new endpoint is a new snapshot.
        let mut c = b.clone();
        c.endpoints.insert(
            "shop/payments:8080".into(),
            vec![crate::snapshot::Endpoint {
                address: "10.0.0.1:8443".into(),
                zone: None,
                node_name: None,
            }],
        );
        assert_ne!(etag(&b), etag(&c));
        let mut d = c.clone();
        d.endpoints.get_mut("shop/payments:8080").unwrap()[0].zone = Some("zone-a".into());
        assert_ne!(etag(&c), etag(&d));
    }

    #[test]
    fn an_ack_without_webhooks_reads_as_before_and_with_them_in_camel_case() {
        // What an older sidecar sends.
        let old: Ack =
            serde_json::from_str(r#"{"etag":"00000000000000ff","accepted":true}"#).unwrap();
        assert_eq!(old.webhooks, None);
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"etag":"00000000000000ff","accepted":true}"#
        );
        let ack = Ack {
            webhooks: Some(BTreeMap::from([(
                "shop/billing".to_string(),
                WebhookDeliveries {
                    generation: 3,
                    delivered: 5,
                    failed_attempts: 2,
                    dead_lettered: 0,
                    last_failure: Some(WebhookFailure {
                        at_ms: 1_700_000_000_000,
                        status: Some(503),
                        reason: "HTTP 503".into(),
                    }),
                    last_success_ms: Some(1_700_000_001_000),
                    failing_since_ms: None,
                },
            )])),
            ..old
        };
        let json = serde_json::to_value(&ack).unwrap();
        assert_eq!(
            json["webhooks"]["shop/billing"],
            serde_json::json!({
                "generation": 3, "delivered": 5, "failedAttempts": 2, "deadLettered": 0,
                "lastFailure": {"atMs": 1_700_000_000_000_u64, "status": 503, "reason": "HTTP 503"},
                "lastSuccessMs": 1_700_000_001_000_u64
            })
        );
        assert_eq!(serde_json::from_value::<Ack>(json).unwrap(), ack);
    }

    #[test]
    fn messages_are_tagged_json_lines() {
        let line = serde_json::to_string(&StreamMessage::Heartbeat).unwrap();
        assert_eq!(line, r#"{"type":"heartbeat"}"#);
        let snapshot = StreamMessage::Snapshot {
            etag: "00000000000000ff".into(),
            snapshot: Box::new(Snapshot::empty()),
        };
        let line = serde_json::to_string(&snapshot).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(
            serde_json::from_str::<StreamMessage>(&line).unwrap(),
            snapshot
        );
    }
}
