//! The webhook receivers themselves (no sidecar): each official Standard Webhooks library
//! (PyPI and npm `standardwebhooks`) accepts a delivery signed by hand exactly as the
//! specification says, refuses one signed with another key or too old, accepts a rotation's
//! second signature, and the receivers answer as their mode says (fail/ratelimit/slow/redirect for the
//! next N deliveries), log what they got, and come back on the same port after a kill.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use bulwark_e2e::{
    process::{HttpResponse, http_post},
    webhook_receiver::{Library, WebhookReceiver},
};
use ring::hmac;
use serde_json::json;

fn secret_of(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the key being the base64 after
/// `whsec_`.
fn sign(secret: &str, id: &str, timestamp: u64, body: &str) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("a whsec_ secret"))
        .expect("base64 after whsec_");
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let tag = hmac::sign(&key, format!("{id}.{timestamp}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn deliver(
    receiver: &WebhookReceiver,
    id: &str,
    timestamp: u64,
    signature: &str,
    body: &str,
) -> Option<HttpResponse> {
    let timestamp = timestamp.to_string();
    http_post(
        receiver.addr(),
        "/hooks/orders",
        body,
        &[
            ("webhook-id", id),
            ("webhook-timestamp", &timestamp),
            ("webhook-signature", signature),
        ],
    )
}

/// Signs `body` with `secret` as `id`, now, delivers it, and returns the status.
fn deliver_signed(receiver: &WebhookReceiver, secret: &str, id: &str, body: &str) -> u16 {
    let ts = now();
    deliver(receiver, id, ts, &sign(secret, id, ts, body), body)
        .expect("the receiver answers")
        .status
}

fn receivers_verify_and_answer(library: Library) {
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_of(b"bulwark-e2e-webhook-key-0123456789");
    let other = secret_of(b"not-the-endpoint-key-0123456789!!");
    let mut receiver = WebhookReceiver::start(library, dir.path(), &secret);
    let which = library.name();
    assert_eq!(
        receiver.url("/hooks/orders"),
        format!("http://127.0.0.1:{}/hooks/orders", receiver.port())
    );
    let body = r#"{"type":"order.created","data":{"id":42}}"#;

    // A good signature: verified, 204, logged as sent.
    let ts = now();
    let good = sign(&secret, "msg_good", ts, body);
    let response = deliver(&receiver, "msg_good", ts, &good, body).expect("it answers");
    assert_eq!(response.status, 204, "{which}: {response:?}");
    let got = receiver.received();
    assert_eq!(got.len(), 1, "{which}: {got:?}");
    assert!(got[0].verified, "{which}: {got:?}");
    assert_eq!(got[0].error, None);
    assert_eq!(got[0].id.as_deref(), Some("msg_good"));
    assert_eq!(got[0].timestamp, Some(ts.to_string()));
    assert_eq!(got[0].signature.as_deref(), Some(good.as_str()));
    assert_eq!(got[0].path, "/hooks/orders");
    assert_eq!(
        got[0].body,
        json!({"type": "order.created", "data": {"id": 42}})
    );
    assert_eq!(got[0].body_text, body);
    assert_eq!(got[0].status, 204);
    assert!((got[0].received_at - ts as f64).abs() < 5.0, "{got:?}");

    // Signed with another key: refused, 401, with the library's reason.
    let ts = now();
    let wrong = sign(&other, "msg_wrong", ts, body);
    let response = deliver(&receiver, "msg_wrong", ts, &wrong, body).unwrap();
    assert_eq!(response.status, 401, "{which}: {response:?}");
    let last = receiver.received().pop().unwrap();
    assert!(!last.verified);
    assert_eq!(last.status, 401);
    assert!(
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("No matching signature found")),
        "{which}: {last:?}"
    );

    // Key rotation: two space-separated signatures, only the second one right.
    let ts = now();
    let both = format!(
        "{} {}",
        sign(&other, "msg_rotated", ts, body),
        sign(&secret, "msg_rotated", ts, body)
    );
    let response = deliver(&receiver, "msg_rotated", ts, &both, body).unwrap();
    assert_eq!(response.status, 204, "{which}: {response:?}");
    assert!(receiver.received().pop().unwrap().verified);

    // Right key, but signed 10 minutes ago: outside the libraries' ±5 minutes.
    let old = now() - 600;
    let response = deliver(
        &receiver,
        "msg_old",
        old,
        &sign(&secret, "msg_old", old, body),
        body,
    )
    .unwrap();
    assert_eq!(response.status, 401, "{which}");
    let last = receiver.received().pop().unwrap();
    assert!(
        last.error.as_deref().is_some_and(|e| e.contains("too old")),
        "{which}: {last:?}"
    );

    // The libraries parse the body as JSON: a signed body that is not JSON is refused.
    assert_eq!(
        deliver_signed(&receiver, &secret, "msg_text", "plain text"),
        401,
        "{which}"
    );
    let last = receiver.received().pop().unwrap();
    assert!(!last.verified && last.body.is_null(), "{which}: {last:?}");
    assert_eq!(last.body_text, "plain text");

    // fail ×2: 503, 503, then ok again. An unverified delivery answers 401 and does not count.
    receiver.set_mode(json!({"mode": "fail", "status": 503, "times": 2}));
    assert_eq!(
        receiver.mode(),
        json!({"mode": "fail", "status": 503, "times": 2})
    );
    let ts = now();
    let bad = sign(&other, "msg_bad", ts, body);
    assert_eq!(
        deliver(&receiver, "msg_bad", ts, &bad, body)
            .unwrap()
            .status,
        401
    );
    let statuses: Vec<u16> = (0..3)
        .map(|i| deliver_signed(&receiver, &secret, &format!("msg_fail_{i}"), body))
        .collect();
    assert_eq!(statuses, [503, 503, 204], "{which}");
    assert_eq!(receiver.mode(), json!({"mode": "ok"}));
    let logged: Vec<u16> = receiver.received().iter().map(|r| r.status).collect();
    assert_eq!(logged[logged.len() - 4..], [401, 503, 503, 204], "{which}");

    // ratelimit ×1: 429 with Retry-After, then 204.
    receiver.set_mode(json!({"mode": "ratelimit", "retryAfter": "1", "times": 1}));
    let ts = now();
    let response = deliver(
        &receiver,
        "msg_limited",
        ts,
        &sign(&secret, "msg_limited", ts, body),
        body,
    )
    .unwrap();
    assert_eq!(response.status, 429, "{which}");
    assert_eq!(response.header("retry-after"), Some("1"), "{which}");
    assert_eq!(deliver_signed(&receiver, &secret, "msg_after", body), 204);

    // slow ×1: answers 204 after the delay.
    receiver.set_mode(json!({"mode": "slow", "delaySeconds": 0.3, "times": 1}));
    let start = Instant::now();
    assert_eq!(deliver_signed(&receiver, &secret, "msg_slow", body), 204);
    assert!(start.elapsed() >= Duration::from_millis(300), "{which}");

    // redirect ×1: 307 to the location, then 204.
    receiver.set_mode(json!({"mode": "redirect", "location": "http://127.0.0.1:9/x", "times": 1}));
    let ts = now();
    let response = deliver(
        &receiver,
        "msg_moved",
        ts,
        &sign(&secret, "msg_moved", ts, body),
        body,
    )
    .unwrap();
    assert_eq!(response.status, 307, "{which}");
    assert_eq!(
        response.header("location"),
        Some("http://127.0.0.1:9/x"),
        "{which}"
    );
    assert_eq!(deliver_signed(&receiver, &secret, "msg_back", body), 204);

    // A mode it does not know is refused.
    let refused = http_post(receiver.addr(), "/_control", r#"{"mode":"teapot"}"#, &[]).unwrap();
    assert_eq!(refused.status, 400, "{which}: {refused:?}");

    // Killed: nothing answers. Restarted: the same port, the same log, the ok mode.
    receiver.set_mode(json!({"mode": "fail", "status": 500}));
    let port = receiver.port();
    let before = receiver.received().len();
    receiver.kill();
    let ts = now();
    assert!(
        deliver(
            &receiver,
            "msg_down",
            ts,
            &sign(&secret, "msg_down", ts, body),
            body
        )
        .is_none(),
        "{which}: answered while killed"
    );
    receiver.restart();
    assert_eq!(receiver.port(), port);
    assert_eq!(deliver_signed(&receiver, &secret, "msg_back", body), 204);
    let got = receiver.received();
    assert_eq!(got.len(), before + 1, "{which}: {got:?}");
    assert_eq!(got.last().unwrap().id.as_deref(), Some("msg_back"));
}

#[test]
fn python_standardwebhooks_receiver() {
    receivers_verify_and_answer(Library::Python);
}

#[test]
fn node_standardwebhooks_receiver() {
    receivers_verify_and_answer(Library::Node);
}
