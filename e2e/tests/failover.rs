//! Failover under real failures: the real sidecar binary in standalone mode, the app's calls
//! sent through its outbound listener to real backend processes (`fault_upstream.py`) that the
//! tests kill (SIGKILL), slow down, make answer 5xx or reset. Assertions are on what the
//! client saw (every status counted) and on the sidecar's metrics; waits are for conditions,
//! never fixed sleeps as proof. Loopback only, bounded request counts.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use bulwark_e2e::{
    eventually,
    fault_upstream::FaultUpstream,
    process::{HttpResponse, http_get, send_raw, wait_for_status},
    sidecar::Sidecar,
    tls::certificate_for,
};

/// A standalone sidecar whose config holds `policy`; the app (inbound) is not used here.
fn sidecar(dir: &Path, policy: &str) -> Sidecar {
    let config = dir.join("policies");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("failover.yaml"), policy).unwrap();
    let unused_app = "127.0.0.1:9".parse().unwrap();
    let sidecar = Sidecar::start(
        unused_app,
        &dir.join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

/// The app's call `GET http://payments/<path>` through the outbound listener.
fn call(sidecar: &Sidecar, method: &str) -> HttpResponse {
    send_raw(
        sidecar.outbound,
        &format!(
            "{method} http://payments/pay HTTP/1.1\r\nHost: payments\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .expect("the outbound listener answers")
}

/// Who served each response (the body names the backend), or `status reason` for the rest.
fn tally(responses: &[HttpResponse]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in responses {
        let key = if r.status == 200 {
            r.body.clone()
        } else {
            format!("{} {}", r.status, r.header("bulwark-reason").unwrap_or("-"))
        };
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn policy(backends: &[(&str, &[&FaultUpstream])], rest: &str) -> String {
    let mut groups = String::new();
    for (name, members) in backends {
        groups.push_str(&format!("    - name: {name}\n      backends:\n"));
        for m in *members {
            groups.push_str(&format!("      - address: \"{}\"\n", m.addr));
        }
    }
    format!(
        "apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata:
  name: payments
spec:
  upstreams:
  - name: payments
    match: {{hosts: [payments]}}
    groups:
{groups}{rest}"
    )
}

#[test]
fn a_killed_primary_group_moves_traffic_without_client_errors_and_fails_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut p1 = FaultUpstream::start(dir.path(), "p1");
    let mut p2 = FaultUpstream::start(dir.path(), "p2");
    let s1 = FaultUpstream::start(dir.path(), "s1");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&p1, &p2]), ("secondary", &[&s1])],
            "    failover: {failbackAfter: 2s}
    healthCheck: {http: {path: /healthz}, interval: 200ms, timeout: 100ms, unhealthyThreshold: 2, healthyThreshold: 2}
",
        ),
    );
    let before: Vec<_> = (0..20).map(|_| call(&sidecar, "GET")).collect();
    assert_eq!(
        tally(&before),
        BTreeMap::from([("p1".into(), 10), ("p2".into(), 10)])
    );

    // Load from another thread while the whole primary dies.
    let stop = Arc::new(AtomicBool::new(false));
    let load = thread::spawn({
        let stop = stop.clone();
        let outbound = sidecar.outbound;
        move || {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) && seen.len() < 2000 {
                seen.push(send_raw(outbound, "GET http://payments/pay HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n"));
            }
            seen
        }
    });
    thread::sleep(Duration::from_millis(300));
    p1.kill();
    p2.kill();
    eventually(
        Duration::from_secs(5),
        "health checks to mark the primary down",
        || (sidecar.metric_sum("bulwark_failover_active_group") == 1.0).then_some(()),
    );
    let state: serde_json::Value = serde_json::from_str(
        &http_get(sidecar.admin, "/failover")
            .expect("the admin listener answers")
            .body,
    )
    .unwrap();
    let upstream = &state["upstreams"][0];
    assert_eq!(upstream["activeGroup"], "secondary", "{state:#}");
    assert_eq!(
        upstream["groups"][0]["endpoints"][0]["health"], "unhealthy",
        "{state:#}"
    );
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let during: Vec<_> = load
        .join()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("an answer"))
        .collect();
    let counts = tally(&during);
    assert_eq!(
        counts
            .keys()
            .filter(|k| !k.starts_with('p') && !k.starts_with('s'))
            .count(),
        0,
        "no client-visible error while the primary died: {counts:?}"
    );
    assert!(counts.get("s1").copied().unwrap_or(0) > 0, "{counts:?}");
    assert!(
        sidecar.metric_sum("bulwark_failover_retries_total") > 0.0,
        "connect failures before the probes noticed were retried on the secondary"
    );

    // Back: the primary returns only once it has been healthy for failbackAfter.
    p1.restart();
    p2.restart();
    let healthy = |u: &FaultUpstream| {
        sidecar.metric_sum(&format!(
            "bulwark_failover_endpoint_healthy{{endpoint=\"{}\"",
            u.addr
        ))
    };
    eventually(
        Duration::from_secs(3),
        "the probes to see the primary healthy",
        || (healthy(&p1) == 1.0 && healthy(&p2) == 1.0).then_some(()),
    );
    let right_after = call(&sidecar, "GET");
    assert_eq!(right_after.body, "s1", "no failback before failbackAfter");
    let back = eventually(Duration::from_secs(6), "traffic to fail back", || {
        let r = call(&sidecar, "GET");
        r.body.starts_with('p').then_some(r)
    });
    assert_eq!(back.status, 200);
    assert_eq!(sidecar.metric_sum("bulwark_failover_active_group"), 0.0);
}

#[test]
fn an_endpoint_answering_5xx_is_ejected_and_its_calls_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let bad = FaultUpstream::start(dir.path(), "bad");
    let good = FaultUpstream::start(dir.path(), "good");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&bad, &good])],
            "    outlierDetection: {consecutive5xxErrors: 3, baseEjectionTime: 5s, maxEjectionPercent: 50}
    retry: {retryOn: [GatewayError]}
",
        ),
    );
    bad.set_mode("status:503");
    let responses: Vec<_> = (0..40).map(|_| call(&sidecar, "GET")).collect();
    assert_eq!(
        tally(&responses),
        BTreeMap::from([("good".into(), 40)]),
        "every 503 retried"
    );
    assert_eq!(
        bad.count(),
        3,
        "ejected after 3 consecutive 5xx, then skipped"
    );
    assert_eq!(
        sidecar.metric_sum(&format!(
            "bulwark_failover_ejections_total{{endpoint=\"{}\"",
            bad.addr
        )),
        1.0
    );
    bad.set_mode("ok");
    eventually(Duration::from_secs(8), "the ejection to end", || {
        (call(&sidecar, "GET").body == "bad").then_some(())
    });
}

#[test]
fn the_breaker_opens_answers_the_fallback_then_half_opens_and_closes() {
    let dir = tempfile::tempdir().unwrap();
    let only = FaultUpstream::start(dir.path(), "only");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&only])],
            "    retry: {attempts: 0}
    circuitBreaker: {minimumCalls: 5, windowSize: 5, failureRateThreshold: 60, openDuration: 1s, halfOpenCalls: 2}
    fallback:
      statusCode: 503
      headers: [{name: Content-Type, value: application/json}]
      body: '{\"error\":\"payments_unavailable\"}'
",
        ),
    );
    only.set_mode("status:500");
    let failing: Vec<_> = (0..5).map(|_| call(&sidecar, "GET")).collect();
    assert!(
        failing.iter().all(|r| r.status == 500),
        "the upstream's own 500s pass through"
    );
    let open: Vec<_> = (0..10).map(|_| call(&sidecar, "GET")).collect();
    assert!(
        open.iter()
            .all(|r| r.status == 503 && r.header("bulwark-reason") == Some("circuit_open"))
    );
    assert_eq!(open[0].body, "{\"error\":\"payments_unavailable\"}");
    assert_eq!(only.count(), 5, "no call reached the upstream while open");
    assert_eq!(
        sidecar.metric_sum("bulwark_failover_circuit_breaker_state"),
        1.0
    );

    only.set_mode("ok");
    let closed = eventually(Duration::from_secs(3), "the breaker to half-open", || {
        let r = call(&sidecar, "GET");
        (r.status == 200).then_some(r)
    });
    assert_eq!(closed.body, "only");
    assert_eq!(call(&sidecar, "GET").status, 200);
    assert_eq!(
        call(&sidecar, "GET").status,
        200,
        "closed after 2 good half-open calls"
    );
    assert_eq!(
        sidecar.metric_sum("bulwark_failover_circuit_breaker_state"),
        0.0
    );
    assert_eq!(
        sidecar.metric_sum("bulwark_failover_circuit_breaker_transitions_total{policy=\"default/payments\",state=\"closed\",upstream=\"payments\"}"),
        1.0
    );
}

#[test]
fn in_a_full_outage_the_retry_budget_caps_retries() {
    let dir = tempfile::tempdir().unwrap();
    let a = FaultUpstream::start(dir.path(), "a");
    let b = FaultUpstream::start(dir.path(), "b");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&a, &b])],
            "    retry: {attempts: 3, retryOn: ['5xx'], budgetPercent: 20, minRetriesPerSecond: 1, backoffBase: 1ms, backoffMax: 2ms}
",
        ),
    );
    a.set_mode("status:503");
    b.set_mode("status:503");
    let calls = 200;
    let responses: Vec<_> = (0..calls).map(|_| call(&sidecar, "GET")).collect();
    assert!(
        responses.iter().all(|r| r.status == 503),
        "the upstream's answer passes through"
    );
    let retries = sidecar.metric_sum("bulwark_failover_retries_total");
    let served = a.count() + b.count();
    assert_eq!(
        served as f64,
        calls as f64 + retries,
        "every retry reached a backend"
    );
    // Within the 10 s window: 20% of the calls plus 1 per second.
    assert!(
        retries <= 0.2 * calls as f64 + 10.0,
        "{retries} retries for {calls} calls"
    );
    assert!(
        retries >= 0.2 * calls as f64 - 1.0,
        "{retries}: the budget was used"
    );
    assert!(sidecar.metric_sum("bulwark_failover_retry_budget_exhausted_total") > 0.0);
}

#[test]
fn the_bulkhead_refuses_calls_beyond_its_limit_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let slow = FaultUpstream::start(dir.path(), "slow");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&slow])],
            "    bulkhead: {maxConcurrent: 2, maxQueue: 1, queueTimeout: 100ms}
",
        ),
    );
    slow.set_mode("slow:1500");
    let outbound = sidecar.outbound;
    let calls: Vec<_> = (0..6)
        .map(|_| {
            thread::spawn(move || {
                send_raw(outbound, "GET http://payments/pay HTTP/1.1\r\nHost: payments\r\nConnection: close\r\n\r\n")
                    .expect("an answer")
            })
        })
        .collect();
    let responses: Vec<_> = calls.into_iter().map(|c| c.join().unwrap()).collect();
    let counts = tally(&responses);
    assert_eq!(
        counts,
        BTreeMap::from([("slow".into(), 2), ("503 bulkhead_full".into(), 4)]),
        "2 in flight; the queued one timed out after 100ms; 3 refused at once"
    );
    assert_eq!(slow.count(), 2);
}

#[test]
fn a_slow_try_times_out_and_is_retried_on_another_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let slow = FaultUpstream::start(dir.path(), "slow");
    let fast = FaultUpstream::start(dir.path(), "fast");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&slow, &fast])],
            "    retry: {retryOn: [Timeout, ConnectFailure, Reset]}
    timeouts: {request: 5s, perTry: 300ms}
",
        ),
    );
    slow.set_mode("slow:2000");
    let responses: Vec<_> = (0..6).map(|_| call(&sidecar, "GET")).collect();
    assert_eq!(tally(&responses), BTreeMap::from([("fast".into(), 6)]));
    assert_eq!(slow.count(), 3, "every other call tried the slow one first");
    assert_eq!(
        sidecar.metric_sum(&format!(
            "bulwark_failover_tries_total{{endpoint=\"{}\",policy=\"default/payments\",result=\"timeout\",upstream=\"payments\"}}",
            slow.addr
        )),
        3.0
    );

    // A reset before any answer is retried too; a POST is not retried on a timeout.
    slow.set_mode("reset");
    let resets: Vec<_> = (0..4).map(|_| call(&sidecar, "GET")).collect();
    assert_eq!(tally(&resets), BTreeMap::from([("fast".into(), 4)]));
    // A body that breaks off after its header went out cannot be retried: the client gets the
    // one truncated response, never a second one on the same connection.
    slow.set_mode("truncate");
    fast.set_mode("truncate");
    for _ in 0..2 {
        let cut = call(&sidecar, "GET");
        assert_eq!(cut.status, 200);
        assert!(cut.body == "slow" || cut.body == "fast", "{cut:?}");
    }
    fast.set_mode("ok");
    slow.set_mode("slow:2000");
    let posts: Vec<_> = (0..2).map(|_| call(&sidecar, "POST")).collect();
    let counts = tally(&posts);
    assert_eq!(counts.get("504 upstream_timeout"), Some(&1), "{counts:?}");
}

/// Retries re-send the request body from Pingora's retry buffer (64 KiB): a body that fits is
/// retried on another endpoint, a larger one is not (it has been sent and is gone), and the
/// client gets the upstream's own answer.
#[test]
fn a_request_body_beyond_the_retry_buffer_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let bad = FaultUpstream::start(dir.path(), "bad");
    let good = FaultUpstream::start(dir.path(), "good");
    let sidecar = sidecar(
        dir.path(),
        &policy(
            &[("primary", &[&bad, &good])],
            "    retry: {retryOn: [GatewayError]}
    outlierDetection: {consecutive5xxErrors: 100}
",
        ),
    );
    bad.set_mode("status:503");
    let put = |body_len: usize| {
        send_raw(
            sidecar.outbound,
            &format!(
                "PUT http://payments/pay HTTP/1.1\r\nHost: payments\r\nContent-Length: {body_len}\r\nConnection: close\r\n\r\n{}",
                "x".repeat(body_len)
            ),
        )
        .expect("the outbound listener answers")
    };

    let small: Vec<_> = (0..4).map(|_| put(16 * 1024)).collect();
    assert_eq!(
        tally(&small),
        BTreeMap::from([("good".into(), 4)]),
        "a 16 KiB body is replayed to the other endpoint"
    );
    let bad_tries = bad.count();
    assert!(bad_tries >= 1, "round robin tried the bad endpoint");

    let large: Vec<_> = (0..4).map(|_| put(200 * 1024)).collect();
    let counts = tally(&large);
    let refused = large.iter().filter(|r| r.status == 503).count() as u64;
    assert!(
        refused >= 1
            && large
                .iter()
                .all(|r| (r.status == 503 && r.body == "bad") || r.body == "good"),
        "a 200 KiB body is not retried: the bad endpoint's own 503 reaches the client: {counts:?}"
    );
    assert_eq!(
        bad.count() - bad_tries,
        refused,
        "each 503 is the bad endpoint's one try"
    );
}

/// A flag gate's `routeTo`: users outside the rollout are sent to the `canary` upstream (a
/// FailoverPolicy's) instead of the app; each user lands where OFREP says their variant goes.
#[test]
fn a_gate_routes_users_outside_the_rollout_to_a_failover_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let app = FaultUpstream::start(dir.path(), "stable");
    let canary = FaultUpstream::start(dir.path(), "canary");
    let config = dir.path().join("policies");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("failover.yaml"),
        format!(
            "apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata:
  name: canary
spec:
  upstreams:
  - name: canary
    match: {{hosts: [canary.internal]}}
    groups: [{{name: only, backends: [{{address: \"{}\"}}]}}]
",
            canary.addr
        ),
    )
    .unwrap();
    std::fs::write(
        config.join("flag.yaml"),
        r#"apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata:
  name: stable-rollout
spec:
  flags:
    stable:
      state: ENABLED
      variants: {"yes": true, "no": false}
      defaultVariant: "no"
      targeting: {"fractional": [["yes", 70], ["no", 30]]}
  context:
    targetingKey: {type: Header, name: X-User-Id}
  gates:
  - name: to-canary
    match: {path: {type: PathPrefix, value: /pay}}
    flag: stable
    allowedVariants: ["yes"]
    routeTo: canary
"#,
    )
    .unwrap();
    let sidecar = Sidecar::start(
        app.addr,
        &dir.path().join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    let mut to_canary = 0;
    for i in 0..60 {
        let user = format!("user-{i}");
        let ofrep = bulwark_e2e::process::http_post(
            sidecar.admin,
            "/ofrep/v1/evaluate/flags/stable",
            &format!(r#"{{"context":{{"targetingKey":"{user}"}}}}"#),
            &[],
        )
        .unwrap();
        let stays = ofrep.body.contains(r#""variant":"yes""#);
        let response = bulwark_e2e::process::http_request(
            sidecar.inbound,
            "GET",
            "/pay",
            &[("X-User-Id", &user)],
        )
        .unwrap();
        assert_eq!(response.status, 200, "{user}: {response:?}");
        let expected = if stays { "stable" } else { "canary" };
        assert_eq!(response.body, expected, "{user}: OFREP says {}", ofrep.body);
        to_canary += usize::from(!stays);
    }
    assert!(
        (5..=35).contains(&to_canary),
        "30% of 60, roughly: {to_canary}"
    );
    assert_eq!(canary.count(), to_canary as u64);
    assert_eq!(
        sidecar.metric_sum("bulwark_flag_gate_decisions_total{decision=\"routed\""),
        to_canary as f64
    );
}

/// `https` upstreams: the sidecar verifies the backend's certificate against the CA bundle of
/// a Secret and the upstream's SNI; a backend whose certificate another CA signed, or that
/// shows another name, is refused (the app gets 502 `upstream_unreachable`, nothing is sent).
#[test]
fn an_https_upstream_is_verified_against_its_ca_bundle_and_name() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificate_for("payments.test");
    let secure = FaultUpstream::start_tls(dir.path(), "secure", &cert, &key);
    let (_, rogue_cert, rogue_key) = certificate_for("payments.test");
    let rogue = FaultUpstream::start_tls(dir.path(), "rogue", &rogue_cert, &rogue_key);
    let indent = |pem: &str| pem.replace('\n', "\n    ");
    let upstream = |name: &str, backend: &FaultUpstream, sni: &str| {
        format!(
            "  - name: {name}
    match: {{hosts: [{name}]}}
    groups: [{{name: only, backends: [{{address: \"{}\"}}]}}]
    retry: {{attempts: 0}}
    tls: {{sni: {sni}, caSecretRef: {{name: payments-ca, key: ca.crt}}}}
",
            backend.addr
        )
    };
    let policy = format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: payments-ca}}
stringData:
  ca.crt: |
    {}
---
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata:
  name: payments
spec:
  upstreams:
{}{}{}",
        indent(ca.trim_end()),
        upstream("payments", &secure, "payments.test"),
        upstream("impostor", &rogue, "payments.test"),
        upstream("misnamed", &secure, "billing.test"),
    );
    let sidecar = sidecar(dir.path(), &policy);
    let get = |host: &str| {
        send_raw(
            sidecar.outbound,
            &format!("GET http://{host}/pay HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"),
        )
        .expect("the outbound listener answers")
    };
    let ok = get("payments");
    assert_eq!((ok.status, ok.body.as_str()), (200, "secure"), "{ok:?}");
    for host in ["impostor", "misnamed"] {
        let refused = get(host);
        assert_eq!(refused.status, 502, "{host}: {refused:?}");
        assert_eq!(
            refused.header("bulwark-reason"),
            Some("upstream_unreachable"),
            "{host}"
        );
    }
}
