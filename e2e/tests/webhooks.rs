//! Webhook delivery end to end: the real sidecar binary (standalone) accepts the app's
//! messages on its admin API and delivers them to real receiver processes that verify every
//! signature with the official Standard Webhooks libraries (PyPI and npm). Receivers fail,
//! rate-limit, go down and come back; the sidecar is killed with SIGKILL mid-burst. Assertions
//! are on what receivers got (ids counted, signatures verified) and on the admin API.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, http_get, http_post, wait_for_status},
    sidecar::Sidecar,
    webhook_receiver::{Library, Received, WebhookReceiver},
};
use serde_json::{Value, json};

const KEY_A: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const KEY_B: &str = "whsec_C2FtcGxlLXNlY3JldC1rZXktZm9yLWJ1bHdhcmstdGVzdHM=";

/// A WebhookEndpoint to `url` with the key of Secret `secret` and the given extra spec lines.
fn endpoint(name: &str, url: &str, secret: &str, key: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: {secret}}}
stringData:
  key: {key}
---
apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {{name: {name}}}
spec:
  url: {url}
  signing: {{secretRef: {{name: {secret}, key: key}}}}
  network: {{allowInsecureHTTP: true, allowPrivateAddresses: true}}
{extra}"
    )
}

fn sidecar(dir: &Path, policy: &str) -> Sidecar {
    let config = dir.join("policies");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("webhooks.yaml"), policy).unwrap();
    let sidecar = Sidecar::start(
        "127.0.0.1:9".parse().unwrap(),
        &dir.join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

fn submit(sidecar: &Sidecar, message: &Value) -> HttpResponse {
    http_post(
        sidecar.admin,
        "/webhooks/v1/messages",
        &message.to_string(),
        &[],
    )
    .expect("the admin listener answers")
}

/// Submits and returns the id of an accepted message.
fn accepted_id(sidecar: &Sidecar, message: &Value) -> String {
    let response = submit(sidecar, message);
    assert_eq!(response.status, 202, "{}", response.body);
    body(&response)["id"].as_str().unwrap().to_owned()
}

fn body(response: &HttpResponse) -> Value {
    serde_json::from_str(&response.body).unwrap_or_else(|e| panic!("{e}: {}", response.body))
}

fn get_json(sidecar: &Sidecar, path: &str) -> Value {
    body(&http_get(sidecar.admin, path).expect("the admin listener answers"))
}

/// Waits (up to `timeout`) until endpoint `default/{endpoint}` has a dead letter; its letters.
fn first_dead_letters(sidecar: &Sidecar, endpoint: &str, timeout: Duration) -> Vec<Value> {
    let path = format!("/webhooks/v1/endpoints/default/{endpoint}/dead-letters");
    eventually(timeout, &format!("a dead letter of {endpoint}"), || {
        let letters = get_json(sidecar, &path)["deadLetters"].as_array()?.clone();
        (!letters.is_empty()).then_some(letters)
    })
}

fn ids(received: &[Received]) -> Vec<String> {
    received.iter().filter_map(|r| r.id.clone()).collect()
}

#[test]
fn deliveries_are_signed_filtered_and_verified_by_both_official_libraries() {
    let dir = tempfile::tempdir().unwrap();
    let python = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let node = WebhookReceiver::start(Library::Node, dir.path(), KEY_B);
    let policy = [
        endpoint(
            "billing",
            &python.url("/hooks/billing"),
            "billing-key",
            KEY_A,
            "  eventTypes: [\"invoice.*\"]\n  headers: [{name: X-Tenant, value: acme}]\n",
        ),
        endpoint(
            "audit",
            &node.url("/audit"),
            "audit-key",
            KEY_B,
            "  eventTypes: [\"invoice.paid\", \"user.*\"]\n",
        ),
    ]
    .join("---\n");
    let sidecar = sidecar(dir.path(), &policy);

    // Payloads with odd spacing and key order: receivers must get them byte for byte.
    let mut expected_billing = BTreeMap::new();
    let mut expected_audit = BTreeMap::new();
    for i in 0..30 {
        let event_type = ["invoice.paid", "invoice.line.added", "user.created"][i % 3];
        let payload = format!(r#"{{"z": {i},   "a": "é ✓", "nested": {{"b": [1, 2]}}}}"#);
        let message = format!(r#"{{"eventType": "{event_type}", "payload": {payload}}}"#);
        let response = http_post(sidecar.admin, "/webhooks/v1/messages", &message, &[]).unwrap();
        assert_eq!(response.status, 202, "{}", response.body);
        let answer = body(&response);
        let id = answer["id"].as_str().unwrap().to_owned();
        let endpoints: Vec<&str> = answer["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        if event_type.starts_with("invoice.") {
            assert!(endpoints.contains(&"default/billing"), "{answer}");
            expected_billing.insert(id.clone(), payload.clone());
        }
        if event_type == "invoice.paid" || event_type.starts_with("user.") {
            assert!(endpoints.contains(&"default/audit"), "{answer}");
            expected_audit.insert(id.clone(), payload.clone());
        }
    }
    for (receiver, expected) in [(&python, &expected_billing), (&node, &expected_audit)] {
        let received = receiver.wait_for_deliveries(expected.len(), Duration::from_secs(20));
        assert_eq!(
            received.len(),
            expected.len(),
            "{:?}: exactly the matching types",
            receiver.library()
        );
        for r in &received {
            assert!(r.verified, "{:?} did not verify {r:?}", receiver.library());
            assert_eq!(r.status, 204);
            let id = r.id.as_deref().unwrap();
            assert_eq!(
                Some(&r.body_text),
                expected.get(id),
                "payload of {id} byte for byte"
            );
        }
    }
    // The endpoint's own headers travel too; the path is the URL's.
    assert!(python.received().iter().all(|r| r.path == "/hooks/billing"));

    // The counts the operator sums into status (recorded by the store, a moment behind).
    let expected_counts = BTreeMap::from([
        ("default/audit".to_owned(), expected_audit.len() as u64),
        ("default/billing".to_owned(), expected_billing.len() as u64),
    ]);
    eventually(Duration::from_secs(5), "the delivered counts", || {
        let report = get_json(&sidecar, "/webhooks/v1/endpoints");
        let delivered: BTreeMap<String, u64> = report["endpoints"]
            .as_array()?
            .iter()
            .map(|e| Some((e["endpoint"].as_str()?.to_owned(), e["delivered"].as_u64()?)))
            .collect::<Option<_>>()?;
        (delivered == expected_counts).then_some(())
    });
    assert_eq!(
        sidecar.metric_sum(
            "bulwark_webhook_deliveries_total{endpoint=\"default/billing\",outcome=\"delivered\"}"
        ),
        expected_billing.len() as f64
    );
}

#[test]
fn a_failing_or_rate_limiting_receiver_is_retried_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint(
        "orders",
        &receiver.url("/in"),
        "orders-key",
        KEY_A,
        "  retry: {schedule: [0s, 300ms, 300ms, 300ms, 300ms], jitterPercent: 0}\n",
    );
    let sidecar = sidecar(dir.path(), &policy);

    receiver.set_mode(json!({"mode": "fail", "status": 503, "times": 2}));
    let id = accepted_id(
        &sidecar,
        &json!({"eventType": "order.created", "payload": {"n": 1}}),
    );
    let received = receiver.wait_for_deliveries(3, Duration::from_secs(10));
    let statuses: Vec<u16> = received.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [503, 503, 204]);
    assert!(
        received
            .iter()
            .all(|r| r.verified && r.id.as_deref() == Some(&id))
    );
    // The same webhook-id on every attempt, a fresh timestamp signed each time.
    let attempts = get_json(&sidecar, &format!("/webhooks/v1/messages/{id}/attempts"));
    let results: Vec<&str> = attempts["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    eventually(Duration::from_secs(5), "three attempts recorded", || {
        let a = get_json(&sidecar, &format!("/webhooks/v1/messages/{id}/attempts"));
        (a["attempts"].as_array()?.len() == 3).then_some(())
    });
    assert!(
        results.len() <= 3 && results.iter().take(2).all(|r| *r == "5xx"),
        "{results:?}"
    );

    // 429 with Retry-After: 1 pushes the retry back by a second, not the schedule's 300 ms.
    receiver.set_mode(json!({"mode": "ratelimit", "retryAfter": "1", "times": 1}));
    let id = accepted_id(
        &sidecar,
        &json!({"eventType": "order.created", "payload": {"n": 2}}),
    );
    let received = receiver.wait_for_deliveries(5, Duration::from_secs(10));
    let mine: Vec<&Received> = received
        .iter()
        .filter(|r| r.id.as_deref() == Some(&id))
        .collect();
    assert_eq!(
        mine.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 204]
    );
    let waited = mine[1].received_at - mine[0].received_at;
    assert!(
        waited >= 0.95,
        "the retry came {waited:.3}s after the 429, before Retry-After"
    );

    // A 4xx other than 408/409/425/429 is final: a dead letter at once, no second attempt.
    receiver.set_mode(json!({"mode": "fail", "status": 422, "times": 1}));
    let id = accepted_id(
        &sidecar,
        &json!({"eventType": "order.created", "payload": {"n": 3}}),
    );
    let letters = first_dead_letters(&sidecar, "orders", Duration::from_secs(5));
    assert_eq!(letters[0]["id"], id.as_str());
    assert_eq!(letters[0]["attempts"], 1);
    assert!(
        letters[0]["reason"].as_str().unwrap().contains("422"),
        "{letters:?}"
    );
    thread::sleep(Duration::from_millis(700));
    assert_eq!(
        receiver
            .received()
            .iter()
            .filter(|r| r.id.as_deref() == Some(&id))
            .count(),
        1
    );
}

#[test]
fn a_receiver_down_past_the_schedule_ends_in_dead_letters_and_replay_delivers_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = WebhookReceiver::start(Library::Node, dir.path(), KEY_B);
    let policy = endpoint(
        "crm",
        &receiver.url("/events"),
        "crm-key",
        KEY_B,
        "  retry: {schedule: [0s, 200ms, 200ms], jitterPercent: 0}\n",
    );
    let sidecar = sidecar(dir.path(), &policy);
    receiver.kill();
    let sent: BTreeSet<String> = (0..6)
        .map(|i| {
            accepted_id(
                &sidecar,
                &json!({"eventType": "contact.updated", "payload": {"i": i}}),
            )
        })
        .collect();
    let letters = eventually(Duration::from_secs(20), "six dead letters", || {
        let v = get_json(&sidecar, "/webhooks/v1/endpoints/default/crm/dead-letters");
        let letters = v["deadLetters"].as_array()?.clone();
        (letters.len() == 6).then_some(letters)
    });
    let dead: BTreeSet<String> = letters
        .iter()
        .map(|l| l["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dead, sent);
    for letter in &letters {
        assert_eq!(letter["attempts"], 3, "{letter}");
        assert_eq!(letter["eventType"], "contact.updated");
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains("schedule exhausted"),
            "{letter}"
        );
    }
    // The queue gauges are set at most twice a second.
    eventually(Duration::from_secs(5), "the dead-letter gauge at 6", || {
        (sidecar.metric_sum("bulwark_webhook_dead_letters{endpoint=\"default/crm\"}") == 6.0)
            .then_some(())
    });

    // Back up: replay one by id, then the rest since a time before they were accepted.
    receiver.restart();
    let first = letters[0]["id"].as_str().unwrap();
    let replay = http_post(
        sidecar.admin,
        "/webhooks/v1/endpoints/default/crm/dead-letters/replay",
        &json!({"id": first}).to_string(),
        &[],
    )
    .unwrap();
    assert_eq!(replay.status, 202, "{}", replay.body);
    assert_eq!(body(&replay)["replayed"], json!([first]));
    receiver.wait_for_deliveries(1, Duration::from_secs(10));
    let replay = http_post(
        sidecar.admin,
        "/webhooks/v1/endpoints/default/crm/dead-letters/replay",
        &json!({"since": "2020-01-01T00:00:00Z"}).to_string(),
        &[],
    )
    .unwrap();
    assert_eq!(body(&replay)["replayed"].as_array().unwrap().len(), 5);
    let received = receiver.wait_for_deliveries(6, Duration::from_secs(10));
    assert!(received.iter().all(|r| r.verified && r.status == 204));
    assert_eq!(ids(&received).into_iter().collect::<BTreeSet<_>>(), sent);
    let v = get_json(&sidecar, "/webhooks/v1/endpoints/default/crm/dead-letters");
    assert_eq!(v["deadLetters"], json!([]));
}

#[test]
fn an_idempotency_key_delivers_once_however_often_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint("payments", &receiver.url("/"), "payments-key", KEY_A, "");
    let sidecar = Arc::new(sidecar(dir.path(), &policy));
    let message = json!({"eventType": "payment.settled", "payload": {"amount": 5}, "idempotencyKey": "pay-42"});
    // Eight at once, then more one by one: one id, one delivery.
    let answers: Vec<Value> = (0..8)
        .map(|_| {
            let sidecar = sidecar.clone();
            let message = message.clone();
            thread::spawn(move || body(&submit(&sidecar, &message)))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .chain((0..4).map(|_| body(&submit(&sidecar, &message))))
        .collect();
    let distinct: BTreeSet<&str> = answers.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 1, "{answers:?}");
    assert_eq!(
        answers.iter().filter(|a| a["duplicate"] == true).count(),
        11
    );
    receiver.wait_for_deliveries(1, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        sidecar.metric_sum("bulwark_webhook_messages_accepted_total{result=\"duplicate\"}"),
        11.0
    );
}

#[test]
fn bad_submissions_get_a_status_naming_the_field_and_nothing_is_half_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint("sink", &receiver.url("/"), "sink-key", KEY_A, "");
    let sidecar = sidecar(dir.path(), &policy);
    let cases: &[(&str, &str, u16, &str)] = &[
        ("/webhooks/v1/messages", "{not json", 400, ""),
        (
            "/webhooks/v1/messages",
            r#"{"payload": {}}"#,
            422,
            "eventType",
        ),
        (
            "/webhooks/v1/messages",
            r#"{"eventType": "a b", "payload": {}}"#,
            422,
            "eventType",
        ),
        (
            "/webhooks/v1/messages",
            r#"{"eventType": "a", "payload": "text"}"#,
            422,
            "payload",
        ),
        (
            "/webhooks/v1/messages",
            r#"{"eventType": "a", "payload": {}, "idempotencyKey": 7}"#,
            422,
            "idempotencyKey",
        ),
        (
            "/webhooks/v1/messages/batch",
            r#"{"messages": [{"eventType": "a", "payload": {}}, {"eventType": "b"}]}"#,
            422,
            "messages[1].payload",
        ),
    ];
    for (path, message, status, field) in cases {
        let response = http_post(sidecar.admin, path, message, &[]).unwrap();
        assert_eq!(response.status, *status, "{message}: {}", response.body);
        assert_eq!(
            body(&response)["field"].as_str().unwrap_or_default(),
            *field,
            "{message}"
        );
    }
    let big = format!(
        r#"{{"eventType": "a", "payload": {{"x": "{}"}}}}"#,
        "y".repeat(300 * 1024)
    );
    let response = http_post(sidecar.admin, "/webhooks/v1/messages", &big, &[]).unwrap();
    assert_eq!(
        (response.status, body(&response)["field"].as_str()),
        (413, Some("payload"))
    );
    // The valid first message of the refused batch was not delivered.
    accepted_id(&sidecar, &json!({"eventType": "marker", "payload": {}}));
    let received = receiver.wait_for_deliveries(1, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(receiver.received().len(), 1, "{received:?}");
}

#[test]
fn private_and_loopback_targets_are_refused_unless_the_endpoint_allows_them() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    // Loopback by address and by name, and the cloud metadata address: all refused.
    let guarded = |name: &str, url: &str| {
        endpoint(name, url, &format!("{name}-key"), KEY_A, "").replace(
            "allowPrivateAddresses: true",
            "allowPrivateAddresses: false",
        )
    };
    let policy = [
        guarded("by-address", &receiver.url("/")),
        guarded("by-name", &format!("http://localhost:{}/", receiver.port())),
        guarded("metadata", "http://169.254.169.254/latest/meta-data/"),
    ]
    .join("---\n");
    let sidecar = sidecar(dir.path(), &policy);
    accepted_id(&sidecar, &json!({"eventType": "probe", "payload": {}}));
    for (endpoint, why) in [
        ("by-address", "127.0.0.1 (loopback)"),
        ("by-name", "(loopback)"),
        ("metadata", "link-local"),
    ] {
        let letters = first_dead_letters(&sidecar, endpoint, Duration::from_secs(10));
        let reason = letters[0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("refused") && reason.contains(why),
            "{endpoint}: {reason}"
        );
        assert_eq!(letters[0]["attempts"], 1, "a refusal is not retried");
    }
    assert!(
        receiver.received().is_empty(),
        "nothing reached the receiver"
    );
    assert_eq!(
        sidecar.metric_sum(
            "bulwark_webhook_attempts_total{endpoint=\"default/by-address\",result=\"refused\"}"
        ),
        1.0
    );
}

/// An attempt that outlasts the endpoint's `timeout` is cut off, recorded as `timeout` and
/// retried; a redirect is not followed unless the endpoint allows it (then it is dead at once:
/// asking again would not change the answer), and when it is, the message reaches the
/// location, signed the same.
#[test]
fn slow_receivers_time_out_and_redirects_are_followed_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let moved_to = WebhookReceiver::start(Library::Node, dir.path(), KEY_A);
    let retry = "  retry: {schedule: [0s, 100ms], jitterPercent: 0}\n";
    let policy = [
        endpoint(
            "slow",
            &receiver.url("/slow"),
            "slow-key",
            KEY_A,
            &format!("{retry}  timeout: 500ms\n  eventTypes: [slow]\n"),
        ),
        endpoint(
            "stays",
            &receiver.url("/stays"),
            "stays-key",
            KEY_A,
            &format!("{retry}  eventTypes: [stays]\n"),
        ),
        endpoint(
            "follows",
            &receiver.url("/follows"),
            "follows-key",
            KEY_A,
            &format!("{retry}  eventTypes: [follows]\n"),
        )
        .replace(
            "allowPrivateAddresses: true",
            "allowPrivateAddresses: true, followRedirects: true",
        ),
    ]
    .join("---\n");
    let sidecar = sidecar(dir.path(), &policy);

    // 2 s at the receiver against a 500 ms timeout, once; the retry is answered at once.
    receiver.set_mode(json!({"mode": "slow", "delaySeconds": 2, "times": 1}));
    let id = accepted_id(&sidecar, &json!({"eventType": "slow", "payload": {}}));
    let attempts = eventually(Duration::from_secs(10), "two attempts recorded", || {
        let a = get_json(&sidecar, &format!("/webhooks/v1/messages/{id}/attempts"));
        let a = a["attempts"].as_array()?.clone();
        (a.len() == 2).then_some(a)
    });
    let results: Vec<&str> = attempts
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["timeout", "2xx"]);
    let cut = attempts[0]["latencyMs"].as_f64().unwrap();
    assert!((450.0..1_900.0).contains(&cut), "cut off after {cut} ms");

    // Not followed: a dead letter after one attempt, naming the redirect.
    receiver.set_mode(json!({"mode": "redirect", "location": moved_to.url("/new")}));
    let stays = accepted_id(
        &sidecar,
        &json!({"eventType": "stays", "payload": {"n": 1}}),
    );
    let letters = first_dead_letters(&sidecar, "stays", Duration::from_secs(10));
    assert_eq!(letters[0]["id"], stays.as_str());
    assert_eq!(letters[0]["attempts"], 1, "{letters:?}");
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("307"), "{reason}");

    // Followed: the location gets it, verified, with the same id; the redirect was logged too.
    let follows = accepted_id(
        &sidecar,
        &json!({"eventType": "follows", "payload": {"n": 2}}),
    );
    let received = moved_to.wait_for_deliveries(1, Duration::from_secs(10));
    assert_eq!(received[0].id.as_deref(), Some(follows.as_str()));
    assert!(received[0].verified, "{:?}", received[0]);
    assert_eq!(received[0].path, "/new");
    assert!(
        moved_to
            .received()
            .iter()
            .all(|r| r.id.as_deref() != Some(stays.as_str()))
    );
    let redirected: Vec<_> = receiver
        .received()
        .into_iter()
        .filter(|r| r.status == 307)
        .filter_map(|r| r.id)
        .collect();
    assert_eq!(redirected, [stays, follows]);
}

/// `https` receivers: the sidecar verifies the receiver's certificate against the trusted roots
/// (here `SSL_CERT_FILE`, which rustls-native-certs reads instead of the system's) and its
/// name. A receiver whose certificate another CA signed gets nothing: each attempt fails in the
/// handshake, and the message ends in the dead letters with the reason.
#[test]
fn https_receivers_are_verified_against_the_trusted_roots() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let (ca, cert, key) = bulwark_e2e::tls::certificate_for("localhost");
    let (_, rogue_cert, rogue_key) = bulwark_e2e::tls::certificate_for("localhost");
    let trusted = WebhookReceiver::start_tls(
        dir.path(),
        KEY_A,
        &write("trusted.crt", &cert),
        &write("trusted.key", &key),
    );
    let rogue = WebhookReceiver::start_tls(
        dir.path(),
        KEY_A,
        &write("rogue.crt", &rogue_cert),
        &write("rogue.key", &rogue_key),
    );
    let retry = "  retry: {schedule: [0s, 100ms], jitterPercent: 0}\n";
    let policy = [
        endpoint("trusted", &trusted.url("/"), "trusted-key", KEY_A, retry),
        endpoint("rogue", &rogue.url("/"), "rogue-key", KEY_A, retry),
    ]
    .join("---\n");
    let config = dir.path().join("policies");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("webhooks.yaml"), &policy).unwrap();
    let sidecar = Sidecar::start_with_env(
        "127.0.0.1:9".parse().unwrap(),
        &dir.path().join("state"),
        &["--config-dir", config.to_str().unwrap()],
        &[("SSL_CERT_FILE", &write("roots.pem", &ca))],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));

    let id = accepted_id(
        &sidecar,
        &json!({"eventType": "tls.probe", "payload": {"n": 1}}),
    );
    let received = trusted.wait_for_deliveries(1, Duration::from_secs(10));
    assert!(received[0].verified, "{:?}", received[0]);
    assert_eq!(received[0].id.as_deref(), Some(id.as_str()));

    let letters = first_dead_letters(&sidecar, "rogue", Duration::from_secs(10));
    assert_eq!(letters[0]["id"], id.as_str());
    assert_eq!(
        letters[0]["attempts"], 2,
        "a TLS failure is retried as a network error"
    );
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(reason.contains("certificate"), "{reason}");
    assert!(rogue.received().is_empty(), "nothing reached the rogue");
}

/// SIGKILL in the middle of a burst, then a restart on the same state directory: every message
/// that got a 202 reaches the receiver (at least once), and an idempotency key accepted before
/// the crash still answers with the first id after it.
#[test]
fn kill_9_mid_burst_loses_no_accepted_message() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint(
        "ledger",
        &receiver.url("/"),
        "ledger-key",
        KEY_A,
        "  retry: {schedule: [0s, 200ms], jitterPercent: 0}\n  maxConcurrency: 4\n",
    );
    let mut first = sidecar(dir.path(), &policy);
    let before = accepted_id(
        &first,
        &json!({"eventType": "entry.posted", "payload": {"n": -1}, "idempotencyKey": "before-crash"}),
    );

    let accepted = Arc::new(Mutex::new(BTreeSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let admin = first.admin;
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (accepted, count, stop) = (accepted.clone(), count.clone(), stop.clone());
            thread::spawn(move || {
                for i in 0..2_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let message =
                        json!({"eventType": "entry.posted", "payload": {"client": c, "i": i}});
                    match http_post(admin, "/webhooks/v1/messages", &message.to_string(), &[]) {
                        Some(r) if r.status == 202 => {
                            let id: Value = serde_json::from_str(&r.body).unwrap();
                            accepted
                                .lock()
                                .unwrap()
                                .insert(id["id"].as_str().unwrap().to_owned());
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(r) => panic!("refused: {} {}", r.status, r.body),
                        // Killed: no answer means not accepted.
                        None => break,
                    }
                }
            })
        })
        .collect();
    eventually(Duration::from_secs(60), "500 messages accepted", || {
        (count.load(Ordering::Relaxed) >= 500).then_some(())
    });
    first.process.kill();
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    let delivered_before = receiver.received().len();

    let second = sidecar(dir.path(), &policy);
    let received = eventually(
        Duration::from_secs(90),
        "every accepted message delivered",
        || {
            let got: BTreeSet<String> = ids(&receiver.received()).into_iter().collect();
            accepted.is_subset(&got).then_some(got)
        },
    );
    assert!(received.contains(&before));
    let log = receiver.received();
    assert!(log.iter().all(|r| r.verified));
    let duplicates = log.len() - received.len();
    eprintln!(
        "accepted {} before SIGKILL ({} delivered by then); after restart all delivered, {duplicates} delivered twice",
        accepted.len(),
        delivered_before
    );
    let again = body(&submit(
        &second,
        &json!({"eventType": "entry.posted", "payload": {"n": -1}, "idempotencyKey": "before-crash"}),
    ));
    assert_eq!(again["id"], before.as_str());
    assert_eq!(again["duplicate"], true);
}

/// A receiver that is down trips the endpoint's breaker after 20 failed attempts: further due
/// attempts wait (no schedule is spent on a receiver known to be down) until a trial attempt
/// after 10 s finds it back; then everything is delivered.
#[test]
fn a_dead_receiver_opens_the_breaker_and_a_trial_closes_it_when_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint(
        "flaky",
        &receiver.url("/"),
        "flaky-key",
        KEY_A,
        "  retry: {schedule: [0s, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms, 100ms], jitterPercent: 0}\n",
    );
    let sidecar = sidecar(dir.path(), &policy);
    receiver.kill();
    let sent: BTreeSet<String> = (0..5)
        .map(|i| accepted_id(&sidecar, &json!({"eventType": "tick", "payload": {"i": i}})))
        .collect();
    let series = "bulwark_webhook_attempts_total{endpoint=\"default/flaky\",result=\"network\"}";
    eventually(Duration::from_secs(10), "the breaker open", || {
        let report = get_json(&sidecar, "/webhooks/v1/endpoints");
        (report["endpoints"][0]["circuitBreaker"] == "open").then_some(())
    });
    // Attempts in flight when it opened (up to maxConcurrency, 10) still finish.
    thread::sleep(Duration::from_millis(300));
    let when_opened = sidecar.metric_sum(series);
    assert!(
        (20.0..=30.0).contains(&when_opened),
        "opened after {when_opened} failed attempts"
    );
    // While open, no attempt is made and none of the 50 scheduled ones is spent.
    thread::sleep(Duration::from_secs(2));
    assert_eq!(sidecar.metric_sum(series), when_opened);
    assert_eq!(
        get_json(&sidecar, "/webhooks/v1/endpoints")["endpoints"][0]["pending"],
        5
    );

    receiver.restart();
    let received = receiver.wait_for_deliveries(5, Duration::from_secs(20));
    assert_eq!(ids(&received).into_iter().collect::<BTreeSet<_>>(), sent);
    assert!(received.iter().all(|r| r.verified));
    eventually(Duration::from_secs(5), "the breaker closed", || {
        let report = get_json(&sidecar, "/webhooks/v1/endpoints");
        (report["endpoints"][0]["circuitBreaker"] == "closed").then_some(())
    });
}

/// `scope: Global`: two sidecars share one queue in Redis (Streams, one consumer group). A
/// message accepted by either is delivered once by one of them; when one is killed with
/// SIGKILL in the middle of a burst, the other takes over its unfinished deliveries (its
/// entries idle longer than an attempt can last) and every accepted message arrives.
#[test]
fn a_shared_queue_on_redis_is_worked_by_both_sidecars_and_survives_one_being_killed() {
    let dir = tempfile::tempdir().unwrap();
    let redis = bulwark_e2e::redis::Redis::start(dir.path());
    let receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint(
        "shared",
        &receiver.url("/"),
        "shared-key",
        KEY_A,
        "  scope: Global\n  timeout: 1s\n  maxConcurrency: 4\n  retry: {schedule: [0s, 200ms, 200ms], jitterPercent: 0}\n",
    );
    let start = |name: &str| {
        let config = dir.path().join(format!("{name}-policies"));
        std::fs::create_dir_all(&config).unwrap();
        std::fs::write(config.join("webhooks.yaml"), &policy).unwrap();
        let sidecar = Sidecar::start(
            "127.0.0.1:9".parse().unwrap(),
            &dir.path().join(format!("{name}-state")),
            &[
                "--config-dir",
                config.to_str().unwrap(),
                "--redis-url",
                &redis.url(),
            ],
        );
        wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
        sidecar
    };
    let mut a = start("a");
    let b = start("b");

    // Both accept, both deliver, each message once.
    let mut sent = BTreeSet::new();
    for i in 0..40 {
        let via = if i % 2 == 0 { &a } else { &b };
        sent.insert(accepted_id(
            via,
            &json!({"eventType": "job.done", "payload": {"i": i}}),
        ));
    }
    let received = receiver.wait_for_deliveries(40, Duration::from_secs(20));
    assert_eq!(ids(&received).into_iter().collect::<BTreeSet<_>>(), sent);
    assert_eq!(received.len(), 40, "each message delivered once");
    assert!(received.iter().all(|r| r.verified));
    let delivered = |s: &Sidecar| {
        s.metric_sum(
            "bulwark_webhook_deliveries_total{endpoint=\"default/shared\",outcome=\"delivered\"}",
        )
    };
    assert_eq!(delivered(&a) + delivered(&b), 40.0);
    assert!(
        delivered(&a) > 0.0 && delivered(&b) > 0.0,
        "both sidecars deliver"
    );

    // A slow receiver keeps attempts in flight; kill A with its share of them taken.
    receiver.set_mode(json!({"mode": "slow", "delaySeconds": 0.3}));
    let mut burst = BTreeSet::new();
    for i in 0..30 {
        burst.insert(accepted_id(
            &a,
            &json!({"eventType": "job.done", "payload": {"burst": i}}),
        ));
    }
    eventually(Duration::from_secs(10), "A attempting", || {
        (a.metric_sum("bulwark_webhook_attempts_total{endpoint=\"default/shared\"") > 0.0
            || get_json(&a, "/webhooks/v1/endpoints")["endpoints"][0]["inFlight"].as_u64()? > 0)
            .then_some(())
    });
    a.process.kill();
    receiver.set_mode(json!({"mode": "ok"}));
    let got = eventually(
        Duration::from_secs(60),
        "every burst message delivered by B",
        || {
            let got: BTreeSet<String> = ids(&receiver.received()).into_iter().collect();
            burst.is_subset(&got).then_some(got)
        },
    );
    assert!(sent.is_subset(&got));
    // What A had taken and not settled when it died (attempts the receiver may have seen) is
    // taken over by B once idle past the bound (timeout 1s + 15s), attempted again, and the
    // queue drains: at least once, never lost.
    eventually(Duration::from_secs(40), "the shared queue empty", || {
        let v = get_json(&b, "/webhooks/v1/endpoints");
        (v["endpoints"][0]["pending"] == 0 && v["endpoints"][0]["inFlight"] == 0).then_some(())
    });
    let report = get_json(&b, "/webhooks/v1/endpoints");
    assert_eq!(report["endpoints"][0]["shared"], true);
    assert_eq!(report["endpoints"][0]["deadLetters"], 0);
    let log = receiver.received();
    eprintln!(
        "{} messages, {} deliveries: {} attempted again after A's death",
        sent.len() + burst.len(),
        log.len(),
        log.len() - (sent.len() + burst.len())
    );
}

/// `ordered: true`: one at a time, in acceptance order; a message waiting for its retry holds
/// back the ones after it. `rateLimitPerSecond` spaces deliveries out.
#[test]
fn ordered_endpoints_deliver_in_acceptance_order_and_rate_limits_space_deliveries() {
    let dir = tempfile::tempdir().unwrap();
    let ordered_receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let limited_receiver = WebhookReceiver::start(Library::Node, dir.path(), KEY_B);
    let policy = [
        endpoint(
            "ordered",
            &ordered_receiver.url("/"),
            "ordered-key",
            KEY_A,
            "  eventTypes: [\"seq.*\"]\n  ordered: true\n  retry: {schedule: [0s, 300ms, 300ms, 300ms], jitterPercent: 0}\n",
        ),
        endpoint(
            "limited",
            &limited_receiver.url("/"),
            "limited-key",
            KEY_B,
            "  eventTypes: [\"rate.*\"]\n  rateLimitPerSecond: 5\n",
        ),
    ]
    .join("---\n");
    let sidecar = sidecar(dir.path(), &policy);

    // The first message fails twice; the others wait behind it.
    ordered_receiver.set_mode(json!({"mode": "fail", "status": 503, "times": 2}));
    let sent: Vec<String> = (0..6)
        .map(|i| {
            accepted_id(
                &sidecar,
                &json!({"eventType": "seq.step", "payload": {"i": i}}),
            )
        })
        .collect();
    let received = ordered_receiver.wait_for_deliveries(8, Duration::from_secs(15));
    let order: Vec<&str> = received.iter().filter_map(|r| r.id.as_deref()).collect();
    let mut expected: Vec<&str> = vec![&sent[0], &sent[0], &sent[0]];
    expected.extend(sent[1..].iter().map(String::as_str));
    assert_eq!(
        order, expected,
        "in order, the first retried before any other"
    );

    // 5 per second with a burst of 5: 15 messages take at least 2 s to arrive.
    let limited: Vec<String> = (0..15)
        .map(|i| {
            accepted_id(
                &sidecar,
                &json!({"eventType": "rate.tick", "payload": {"i": i}}),
            )
        })
        .collect();
    let received = limited_receiver.wait_for_deliveries(15, Duration::from_secs(15));
    assert_eq!(
        ids(&received).into_iter().collect::<BTreeSet<_>>(),
        limited.into_iter().collect::<BTreeSet<_>>()
    );
    let first = received
        .iter()
        .map(|r| r.received_at)
        .fold(f64::MAX, f64::min);
    let last = received.iter().map(|r| r.received_at).fold(0.0, f64::max);
    assert!(
        last - first >= 1.8,
        "15 deliveries at 5/s (burst 5) took only {:.2}s",
        last - first
    );
}

/// A store at its size limit refuses new messages with 507 and keeps delivering the ones it
/// holds.
#[test]
fn a_full_store_refuses_with_507_keeps_what_it_holds_and_takes_more_once_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut receiver = WebhookReceiver::start(Library::Python, dir.path(), KEY_A);
    let policy = endpoint("archive", &receiver.url("/"), "archive-key", KEY_A, "");
    let config = dir.path().join("policies");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("webhooks.yaml"), &policy).unwrap();
    let sidecar = Sidecar::start(
        "127.0.0.1:9".parse().unwrap(),
        &dir.path().join("state"),
        &[
            "--config-dir",
            config.to_str().unwrap(),
            "--webhook-max-store-mb",
            "2",
        ],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    receiver.kill();
    let filler = "x".repeat(100 * 1024);
    let mut kept = BTreeSet::new();
    let refused = eventually(Duration::from_secs(30), "a 507", || {
        let response = submit(
            &sidecar,
            &json!({"eventType": "blob.stored", "payload": {"data": filler}}),
        );
        match response.status {
            202 => {
                kept.insert(body(&response)["id"].as_str().unwrap().to_owned());
                None
            }
            _ => Some(response),
        }
    });
    assert_eq!(refused.status, 507, "{}", refused.body);
    assert!(
        body(&refused)["error"].as_str().unwrap().contains("full"),
        "{}",
        refused.body
    );
    assert!(kept.len() >= 5, "accepted {} before the limit", kept.len());
    receiver.restart();
    let received = eventually(
        Duration::from_secs(60),
        "every kept message delivered",
        || {
            let got: BTreeSet<String> = ids(&receiver.received()).into_iter().collect();
            kept.is_subset(&got).then_some(got)
        },
    );
    assert!(received.len() >= kept.len());
    // Delivered, they made room: the file is as long as before, its pages free again.
    eventually(Duration::from_secs(10), "a 202 once delivered", || {
        let response = submit(
            &sidecar,
            &json!({"eventType": "blob.stored", "payload": {"data": filler}}),
        );
        (response.status == 202).then_some(())
    });
}
