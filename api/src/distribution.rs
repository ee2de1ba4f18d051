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
//! Why an etag rather than ordering by `version`: any operator replica may serve a stream, and
//! replicas compile independently, so their version counters are not comparable; the content is.

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
