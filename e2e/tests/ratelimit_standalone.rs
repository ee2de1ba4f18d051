//! Rate limits enforced by the real sidecar binary in standalone mode (`--config-dir`), in front of
//! a real upstream, driven over TCP: per-key counters, IETF headers, overrides, shadow mode, hot
//! reload (also under load), invalid configuration kept out, the last good snapshot enforced
//! after a restart, and keys from verified bearer tokens.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, http_get, http_request, send_raw, wait_for_status},
    sidecar::{Listeners, RecordingUpstream, Sidecar, Standalone},
};

const POLICY: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: api
spec:
  rules:
  - name: per-key
    match:
      path: {type: PathPrefix, value: /api}
    key: [{type: Header, name: x-api-key}]
    rates: [{limit: 3, window: 1h}]
    overrides:
    - values: [premium]
      multiplier: 2
";

fn setup(policy: &str) -> Standalone {
    Standalone::new(policy, &[("other", b"other\n"), ("api/items", b"items\n")])
}

/// The state directory every sidecar of a test shares (so a restart finds the saved snapshot).
fn state(s: &Standalone) -> PathBuf {
    s.dir.path().join("state")
}

fn start(s: &Standalone) -> Sidecar {
    let sidecar = Sidecar::start(
        s.app.addr,
        &state(s),
        &[
            "--config-dir",
            s.config.to_str().unwrap(),
            "--config-poll-ms",
            "100",
        ],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

fn get(sidecar: &Sidecar, path: &str, key: &str) -> HttpResponse {
    http_request(sidecar.inbound, "GET", path, &[("x-api-key", key)]).expect("the sidecar answers")
}

fn metric(sidecar: &Sidecar, line_start: &str) -> Option<f64> {
    let body = http_get(sidecar.admin, "/metrics")?.body;
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn snapshot_version(sidecar: &Sidecar) -> u64 {
    let config: serde_json::Value =
        serde_json::from_str(&http_get(sidecar.admin, "/config").unwrap().body).unwrap();
    config["version"].as_u64().unwrap()
}

#[test]
fn limits_per_key_with_ietf_headers_and_overrides() {
    let s = setup(POLICY);
    let sidecar = start(&s);

    for i in 0..3 {
        let r = get(&sidecar, "/api/items", "alice");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body, "items\n");
        assert_eq!(r.header("RateLimit-Policy"), Some("\"per-key\";q=3;w=3600"));
        let remaining = format!("\"per-key\";r={};", 2 - i);
        assert!(
            r.header("RateLimit").unwrap().starts_with(&remaining),
            "{:?}",
            r.header("RateLimit")
        );
    }
    let limited = get(&sidecar, "/api/items", "alice");
    assert_eq!(limited.status, 429, "{limited:?}");
    // The sidecar's own answer says so, with the default JSON body (no template in the policy).
    assert_eq!(limited.header("bulwark-reason"), Some("rate_limited"));
    assert_eq!(limited.header("Content-Type"), Some("application/json"));
    let body: serde_json::Value = serde_json::from_str(&limited.body).unwrap();
    assert_eq!(body["reason"], "rate_limited", "{}", limited.body);
    let retry_after: u64 = limited.header("Retry-After").unwrap().parse().unwrap();
    assert!(
        (1..=1200).contains(&retry_after),
        "one token per 20 minutes: {retry_after}"
    );
    assert!(
        limited
            .header("RateLimit")
            .unwrap()
            .starts_with("\"per-key\";r=0;")
    );

    // Another key has its own counter; the premium key gets twice the limit.
    assert_eq!(get(&sidecar, "/api/items", "bob").status, 200);
    let premium: Vec<u16> = (0..7)
        .map(|_| get(&sidecar, "/api/items", "premium").status)
        .collect();
    assert_eq!(premium, [200, 200, 200, 200, 200, 200, 429]);
    // Paths outside the rule's match are not limited.
    for _ in 0..5 {
        assert_eq!(get(&sidecar, "/other", "alice").status, 200);
    }

    let limited_total = metric(
        &sidecar,
        "bulwark_ratelimit_requests_total{decision=\"limited\",policy=\"default/api\",rule=\"per-key\"}",
    );
    assert_eq!(limited_total, Some(2.0));
    let allowed_total = metric(
        &sidecar,
        "bulwark_ratelimit_requests_total{decision=\"allowed\",policy=\"default/api\",rule=\"per-key\"}",
    );
    assert_eq!(allowed_total, Some(10.0));
}

#[test]
fn shadow_mode_counts_without_blocking() {
    let s = setup(&POLICY.replace("spec:\n", "spec:\n  enforcement: Shadow\n"));
    let sidecar = start(&s);
    let statuses: Vec<u16> = (0..5)
        .map(|_| get(&sidecar, "/api/items", "alice").status)
        .collect();
    assert_eq!(statuses, [200; 5]);
    let shadow = metric(
        &sidecar,
        "bulwark_ratelimit_requests_total{decision=\"shadow_limited\",policy=\"default/api\",rule=\"per-key\"}",
    );
    assert_eq!(shadow, Some(2.0));
}

#[test]
fn client_ip_behind_trusted_proxies_comes_from_x_forwarded_for() {
    let per_client = POLICY.replace(
        "key: [{type: Header, name: x-api-key}]",
        "key: [{type: ClientIP}]",
    );
    let s = setup(&per_client);
    let xff = |sidecar: &Sidecar, value: &str| {
        http_request(
            sidecar.inbound,
            "GET",
            "/api/items",
            &[("x-forwarded-for", value)],
        )
        .unwrap()
        .status
    };
    // Behind one ingress: the rightmost entry is the client the ingress saw.
    let behind_ingress = Sidecar::start(
        s.app.addr,
        &state(&s),
        &[
            "--config-dir",
            s.config.to_str().unwrap(),
            "--trusted-proxy-hops",
            "1",
        ],
    );
    wait_for_status(
        behind_ingress.admin,
        "/readyz",
        200,
        Duration::from_secs(10),
    );
    let first: Vec<u16> = (0..4)
        .map(|_| xff(&behind_ingress, "203.0.113.1"))
        .collect();
    assert_eq!(first, [200, 200, 200, 429]);
    assert_eq!(xff(&behind_ingress, "203.0.113.2"), 200, "another client");
    // What a client writes to the left of the ingress's entry changes nothing.
    assert_eq!(xff(&behind_ingress, "198.51.100.9, 203.0.113.1"), 429);
    drop(behind_ingress);

    // No trusted proxy (the default): the header is ignored; every request is the peer's.
    let s2 = setup(&per_client);
    let direct = start(&s2);
    let answers: Vec<u16> = ["203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4"]
        .iter()
        .map(|ip| xff(&direct, ip))
        .collect();
    assert_eq!(answers, [200, 200, 200, 429]);
}

#[test]
fn verified_jwt_claims_key_counters_and_forged_tokens_share_one() {
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    let idp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = idp.public_key_pem();
    let policy = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: per-user
spec:
  jwt:
    verification:
      keySecretRef: {name: idp, key: public.pem}
      algorithms: [ES256]
      issuer: https://idp.example
  rules:
  - name: per-user
    key: [{type: JWTClaim, name: sub}]
    rates: [{limit: 2, window: 1h}]
";
    let s = setup(policy);
    let indented: String = public.lines().map(|l| format!("    {l}\n")).collect();
    fs::write(
        s.config.join("idp-secret.yaml"),
        format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: idp}}\nstringData:\n  public.pem: |\n{indented}"),
    )
    .unwrap();
    let sidecar = start(&s);

    let sign = |key: &rcgen::KeyPair, sub: &str| {
        let claims = serde_json::json!({
            "sub": sub,
            "iss": "https://idp.example",
            "exp": jsonwebtoken::get_current_timestamp() + 600,
        });
        let key = EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap();
        encode(&Header::new(Algorithm::ES256), &claims, &key).unwrap()
    };
    let status = |token: &str| {
        http_request(
            sidecar.inbound,
            "GET",
            "/api/items",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .expect("the sidecar answers")
        .status
    };
    let alice = sign(&idp, "alice");
    assert_eq!(
        [status(&alice), status(&alice), status(&alice)],
        [200, 200, 429]
    );
    // Tokens claiming to be bob but signed by another key are not bob's: they share the ""
    // counter, and bob's own stays whole.
    let attacker = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let forged = sign(&attacker, "bob");
    assert_eq!(
        [status(&forged), status(&forged), status(&forged)],
        [200, 200, 429]
    );
    let bob = sign(&idp, "bob");
    assert_eq!(status(&bob), 200);

    let verified =
        "bulwark_jwt_verifications_total{policy=\"default/per-user\",result=\"verified\"}";
    let rejected =
        "bulwark_jwt_verifications_total{policy=\"default/per-user\",result=\"rejected\"}";
    assert_eq!(metric(&sidecar, verified), Some(4.0));
    assert_eq!(metric(&sidecar, rejected), Some(3.0));
    // The key reached the policy, not the admin dump.
    let config = http_get(sidecar.admin, "/config").unwrap().body;
    assert!(config.contains("default/idp/public.pem"), "{config}");
    assert!(!config.contains("BEGIN PUBLIC KEY"), "{config}");
}

fn write_policy(config: &Path, text: &str) {
    // Write-then-rename, as editors and ConfigMap updates do, so the watcher never reads half a file.
    let tmp = config.join(".policy.yaml.tmp");
    fs::write(&tmp, text).unwrap();
    fs::rename(tmp, config.join("policy.yaml")).unwrap();
}

#[test]
fn reloads_live_keeps_the_last_good_policy_and_enforces_it_after_a_restart() {
    let one = POLICY.replace("limit: 3", "limit: 1");
    let s = setup(&one);
    let mut sidecar = start(&s);
    assert_eq!(snapshot_version(&sidecar), 1);
    assert_eq!(get(&sidecar, "/api/items", "alice").status, 200);
    assert_eq!(get(&sidecar, "/api/items", "alice").status, 429);

    // A client keeps calling while the policy changes under it: every answer is the app's or a 429.
    let stop = Arc::new(AtomicBool::new(false));
    let unexpected = Arc::new(AtomicU32::new(0));
    let load = {
        let (stop, unexpected, inbound) = (stop.clone(), unexpected.clone(), sidecar.inbound);
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) && sent < 20_000 {
                let status = http_request(inbound, "GET", "/api/items", &[("x-api-key", "load")])
                    .map(|r| r.status);
                if !matches!(status, Some(200 | 429)) {
                    unexpected.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
            sent
        })
    };

    // An invalid change is rejected, counted, and changes nothing.
    write_policy(&s.config, &one.replace("window: 1h", "window: 1d"));
    eventually(
        Duration::from_secs(10),
        "the invalid reload to be counted",
        || {
            metric(&sidecar, "bulwark_config_reloads_total{result=\"failure\"}")
                .filter(|v| *v >= 1.0)
        },
    );
    assert_eq!(snapshot_version(&sidecar), 1);
    assert_eq!(
        get(&sidecar, "/api/items", "alice").status,
        429,
        "the last good policy still applies"
    );

    // A valid change applies; changed limits start from fresh counters.
    write_policy(&s.config, &POLICY.replace("limit: 3", "limit: 5"));
    eventually(Duration::from_secs(10), "version 2", || {
        (snapshot_version(&sidecar) == 2).then_some(())
    });
    assert_eq!(get(&sidecar, "/api/items", "alice").status, 200);

    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap();
    assert!(sent > 10, "the load thread made only {sent} requests");
    assert_eq!(
        unexpected.load(Ordering::Relaxed),
        0,
        "requests failed during reloads"
    );

    // Killed hard, then restarted with a broken directory: the saved snapshot enforces at once.
    sidecar.process.kill();
    write_policy(&s.config, "this: is [not valid");
    let restarted = Sidecar::start(
        s.app.addr,
        &state(&s),
        &["--config-dir", s.config.to_str().unwrap()],
    );
    wait_for_status(restarted.admin, "/readyz", 200, Duration::from_secs(10));
    assert_eq!(snapshot_version(&restarted), 2);
    let statuses: Vec<u16> = (0..6)
        .map(|_| get(&restarted, "/api/items", "carol").status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429],
        "limit 5 from the saved snapshot"
    );
}

/// A rule on `/api` covers every spelling of that path an app would read as `/api`: the path
/// is normalized before matching (and forwarded normalized), so the tricks share one counter;
/// an escaped slash is refused.
#[test]
fn path_tricks_do_not_walk_around_a_path_rule() {
    let s = setup(POLICY);
    let sidecar = start(&s);
    for trick in ["/%61pi/items", "//api/items", "/./api/items"] {
        let r = get(&sidecar, trick, "mallory");
        assert_eq!(
            (r.status, r.body.as_str()),
            (200, "items\n"),
            "{trick}: {r:?}"
        );
        assert!(
            r.header("RateLimit").is_some(),
            "{trick} was not counted: {r:?}"
        );
    }
    // Three per hour: the fourth spelling of the same path is refused.
    for trick in ["/x/../api/items", "/API/../api/items"] {
        let r = get(&sidecar, trick, "mallory");
        assert_eq!(r.status, 429, "{trick}: {r:?}");
    }
    let r = get(&sidecar, "/api%2Fitems", "eve");
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.header("bulwark-reason"), Some("bad_request"));
    assert!(r.body.contains("escaped slash"), "{}", r.body);
}

/// Requests an app could read differently from the policy are refused before any policy looks
/// at them: a standard method in another case, HTTP/1.1 without `Host`, and a listed
/// `Content-Length`. HTTP/1.0 without `Host` passes, matching no named host.
#[test]
fn miscased_methods_and_missing_hosts_are_refused() {
    let s = setup(POLICY);
    let sidecar = start(&s);
    let raw = |request: &str| send_raw(sidecar.inbound, request).expect("the sidecar answers");
    let lower = raw("get /other HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    assert_eq!(lower.status, 400, "{lower:?}");
    assert_eq!(lower.header("bulwark-reason"), Some("bad_request"));
    assert!(lower.body.contains("case-sensitive"), "{}", lower.body);
    let extension = raw("BREW /other HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n");
    assert_ne!(
        extension.header("bulwark-reason"),
        Some("bad_request"),
        "{extension:?}"
    );
    let hostless = raw("GET /other HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert_eq!(hostless.status, 400, "{hostless:?}");
    assert!(hostless.body.contains("Host"), "{}", hostless.body);
    let old = raw("GET /other HTTP/1.0\r\n\r\n");
    assert_eq!((old.status, old.body.as_str()), (200, "other\n"), "{old:?}");
    // A Content-Length list (or two of them) is refused, never forwarded for the app to read
    // its own way.
    for lengths in [
        "Content-Length: 5, 5\r\n",
        "Content-Length: 5\r\nContent-Length: 5\r\n",
    ] {
        let r = raw(&format!(
            "POST /other HTTP/1.1\r\nHost: app\r\n{lengths}Connection: close\r\n\r\nhello"
        ));
        assert_eq!(r.status, 400, "{lengths}: {r:?}");
        assert_eq!(
            r.header("bulwark-reason"),
            Some("bad_request"),
            "{lengths}: {r:?}"
        );
    }
}

/// A key header given twice, or also spelled with `_`, is refused before any rule counts it:
/// the policy would count one value while the app could read another. Headers the policy does
/// not read may repeat.
#[test]
fn a_key_header_given_twice_or_with_underscores_is_refused() {
    let s = setup(POLICY);
    let sidecar = start(&s);
    let send = |headers: &[(&str, &str)]| {
        http_request(sidecar.inbound, "GET", "/api/items", headers).expect("the sidecar answers")
    };
    let twice = send(&[("x-api-key", "alice"), ("x-api-key", "bob")]);
    assert_eq!(twice.status, 400, "{twice:?}");
    assert_eq!(twice.header("bulwark-reason"), Some("bad_request"));
    assert!(twice.body.contains("more than once"), "{}", twice.body);
    let underscored = send(&[("x-api-key", "alice"), ("x_api_key", "bob")]);
    assert_eq!(underscored.status, 400, "{underscored:?}");
    let other = send(&[("x-api-key", "alice"), ("accept", "a"), ("accept", "b")]);
    assert_eq!(
        (other.status, other.body.as_str()),
        (200, "items\n"),
        "{other:?}"
    );
    // Nothing refused was counted: alice still has two of her three.
    assert!(
        other
            .header("RateLimit")
            .unwrap()
            .starts_with("\"per-key\";r=2;"),
        "{other:?}"
    );
}

/// Liveness answers while a large first load runs; readiness waits for it. (Before, the first
/// load ran before any listener opened, so /healthz too was silent until it finished, and a
/// liveness probe could kill a sidecar that was only loading.)
#[test]
fn liveness_answers_during_the_first_load_and_readiness_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policies");
    std::fs::create_dir(&config).unwrap();
    let policies: String = (0..10_000)
        .map(|i| {
            format!(
                "apiVersion: bulwark.dev/v1alpha1\nkind: RateLimitPolicy\nmetadata: {{name: p{i}}}\nspec:\n  rules: [{{name: r, match: {{path: {{type: PathPrefix, value: /p{i}}}}}, key: [{{type: ClientIP}}], rates: [{{limit: 5, window: 1s}}]}}]\n---\n"
            )
        })
        .collect();
    std::fs::write(config.join("many.yaml"), policies).unwrap();
    let app = RecordingUpstream::start(dir.path());
    let sidecar = Sidecar::spawn(
        app.addr,
        &dir.path().join("state"),
        Listeners::free(),
        &["--config-dir", config.to_str().unwrap()],
    );
    let live = wait_for_status(sidecar.admin, "/healthz", 200, Duration::from_secs(10));
    assert_eq!(live.body, "ok\n");
    let ready = http_get(sidecar.admin, "/readyz").expect("the admin listener answers");
    assert_eq!(
        ready.status, 503,
        "still loading 10,000 policies: {ready:?}"
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(120));
    let r = get(&sidecar, "/p9999/x", "k");
    assert!(
        r.header("RateLimit").is_some(),
        "the last policy applies: {r:?}"
    );
}
