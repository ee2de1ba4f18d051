//! Quotas enforced by the real sidecar binary in standalone mode (`--config-dir`), in front of a
//! real upstream, driven over TCP: budgets per key, warnings at thresholds, 429/403 with
//! `Retry-After` and the reset time, usage read from the admin API, usage kept across a SIGTERM
//! restart and across kill -9 (after a flush), response-byte budgets, and `scope: Global`
//! quotas shared by two sidecars through a real Redis that is killed mid-run (failureMode Open
//! and Closed).

use std::time::Duration;

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, http_get, http_request, wait_for_status},
    redis::Redis,
    sidecar::{Sidecar, Standalone},
};
use serde_json::Value;

/// Flush often so the kill -9 case needs only a short wait.
const FLUSH_MS: &str = "200";

const LOCAL: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: api
spec:
  timeZone: Europe/Paris
  quotas:
  - name: monthly
    match:
      path: {value: /api}
    key: [{type: Header, name: x-api-key}]
    limit: 10
    period: Month
    thresholds: [50, 80]
    overrides:
    - values: [premium]
      limit: 20
";

fn setup(policy: &str) -> Standalone {
    Standalone::new(
        policy,
        &[
            ("api/items", b"items\n"),
            ("api/open", b"open\n"),
            ("api/closed", b"closed\n"),
            ("api/big", &[b'x'; 600]),
        ],
    )
}

fn start(s: &Standalone, state: &str, extra: &[&str]) -> Sidecar {
    let mut args = vec![
        "--config-dir",
        s.config.to_str().unwrap(),
        "--quota-flush-ms",
        FLUSH_MS,
    ];
    args.extend_from_slice(extra);
    let sidecar = Sidecar::start(s.app.addr, &s.dir.path().join(state), &args);
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

fn get(sidecar: &Sidecar, path: &str, key: &str) -> HttpResponse {
    http_request(sidecar.inbound, "GET", path, &[("x-api-key", key)]).expect("the sidecar answers")
}

fn admin_quota(sidecar: &Sidecar, query: &str) -> (u16, Value) {
    let r = http_get(sidecar.admin, &format!("/quota?{query}")).expect("admin answers");
    let body = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"));
    (r.status, body)
}

fn used(sidecar: &Sidecar, policy: &str, quota: &str, key: &str) -> u64 {
    let (status, body) = admin_quota(
        sidecar,
        &format!("policy=default/{policy}&quota={quota}&key={key}"),
    );
    assert_eq!(status, 200, "{body}");
    body["used"].as_u64().unwrap()
}

fn metric(sidecar: &Sidecar, prefix: &str) -> u64 {
    sidecar.metric_sum(prefix) as u64
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn unix_of(rfc3339: &str) -> i64 {
    // The admin API and the header give UTC "YYYY-MM-DDTHH:MM:SSZ"; `date` parses it.
    let out = std::process::Command::new("date")
        .args(["-u", "-d", rfc3339, "+%s"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn local_quota_warns_refuses_reports_and_survives_sigterm_and_kill_9() {
    let s = setup(LOCAL);
    let mut sidecar = start(&s, "state", &[]);

    let mut warnings = Vec::new();
    for i in 0..5 {
        let r = get(&sidecar, "/api/items", "alice");
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        warnings.push(r.header("Bulwark-Quota-Warning").map(str::to_owned));
    }
    assert_eq!(warnings[3], None, "40% is below every threshold");
    let warning = warnings[4].as_deref().expect("50% reached");
    assert!(
        warning.starts_with("\"monthly\";used=50;threshold=50;remaining=5;reset="),
        "{warning}"
    );
    assert_eq!(used(&sidecar, "api", "monthly", "alice"), 5);

    // The admin API: the whole answer for a key, the tracked keys, unknown quotas.
    let (status, report) = admin_quota(&sidecar, "policy=default/api&quota=monthly&key=alice");
    assert_eq!(status, 200);
    assert_eq!(report["key"], serde_json::json!(["alice"]));
    assert_eq!(
        (report["limit"].as_u64(), report["remaining"].as_u64()),
        (Some(10), Some(5))
    );
    assert_eq!(report["unit"], "Requests");
    let reset_at = report["resetAt"].as_str().unwrap().to_owned();
    assert!(unix_of(&reset_at) > now_unix());
    assert!(unix_of(report["periodStart"].as_str().unwrap()) <= now_unix());
    // Keys are tracked by digest, never by value: the listing gives the digest the lookup of
    // `alice` gave.
    let digest = report["keyDigest"]
        .as_str()
        .expect("a Local quota's key digest");
    assert!(digest.len() == 32 && digest.bytes().all(|b| b.is_ascii_hexdigit()));
    let (_, list) = admin_quota(&sidecar, "policy=default/api&quota=monthly");
    assert_eq!(list["keys"][0]["keyDigest"], digest);
    assert_eq!(list["keys"][0].get("key"), None);
    assert_eq!(list["keys"][0]["used"], 5);
    let (status, missing) = admin_quota(&sidecar, "policy=default/api&quota=nope");
    assert_eq!(status, 404, "{missing}");
    assert!(missing["error"].as_str().unwrap().contains("nope"));

    // SIGTERM: the usage is written on the way out, without the key's value.
    assert!(sidecar.process.terminate(Duration::from_secs(15)).success());
    let file = std::fs::read(s.dir.path().join("state/quota.redb")).unwrap();
    assert!(
        !file.windows(5).any(|w| w == b"alice"),
        "key values are not stored"
    );
    let mut sidecar = start(&s, "state", &[]);
    assert_eq!(
        used(&sidecar, "api", "monthly", "alice"),
        5,
        "after SIGTERM"
    );

    // kill -9 after a flush interval: nothing flushed is lost.
    for _ in 0..2 {
        assert_eq!(get(&sidecar, "/api/items", "alice").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1000));
    sidecar.process.kill();
    let sidecar = start(&s, "state", &[]);
    assert_eq!(
        used(&sidecar, "api", "monthly", "alice"),
        7,
        "after kill -9"
    );

    for _ in 0..3 {
        let r = get(&sidecar, "/api/items", "alice");
        assert_eq!(r.status, 200, "{r:?}");
    }
    let refused = get(&sidecar, "/api/items", "alice");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(
        refused.header("Bulwark-Quota-Reset"),
        Some(reset_at.as_str())
    );
    let retry_after: i64 = refused.header("Retry-After").unwrap().parse().unwrap();
    let expected = unix_of(&reset_at) - now_unix();
    assert!(
        (expected - 5..=expected + 5).contains(&retry_after),
        "Retry-After {retry_after} vs the reset in {expected} s"
    );
    assert_eq!(
        refused.header("Bulwark-Quota-Exhausted"),
        Some("\"monthly\";limit=10;used=10")
    );
    // Other keys and the override are untouched; paths outside the match are free.
    assert_eq!(get(&sidecar, "/api/items", "bob").status, 200);
    let premium = (0..21)
        .filter(|_| get(&sidecar, "/api/items", "premium").status == 200)
        .count();
    assert_eq!(premium, 20);
    assert_eq!(used(&sidecar, "api", "monthly", "premium"), 20);
    assert_eq!(
        metric(
            &sidecar,
            "bulwark_quota_requests_total{decision=\"limited\",policy=\"default/api\",quota=\"monthly\"}"
        ),
        2
    );
    assert!(
        metric(
            &sidecar,
            "bulwark_quota_threshold_crossings_total{policy=\"default/api\",quota=\"monthly\",threshold=\"80\"}"
        ) >= 2,
        "alice crossed 80% in this process and premium too"
    );
}

#[test]
fn response_bytes_let_the_crossing_download_finish_then_refuse_with_403() {
    let s = setup(
        "\
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: downloads
spec:
  response: {statusCode: 403, body: \"used up\\n\"}
  quotas:
  - name: bytes
    key: [{type: ClientIP}]
    unit: ResponseBytes
    limit: 1000
    period: Day
",
    );
    let sidecar = start(&s, "state", &[]);
    let first = get(&sidecar, "/api/big", "");
    assert_eq!((first.status, first.body.len()), (200, 600));
    let second = get(&sidecar, "/api/big", "");
    assert_eq!(
        (second.status, second.body.len()),
        (200, 600),
        "600 < 1000: the download that crosses completes"
    );
    // Bytes are charged in the logging phase, just after the response.
    eventually(Duration::from_secs(5), "1200 bytes charged", || {
        (used(&sidecar, "downloads", "bytes", "127.0.0.1") == 1200).then_some(())
    });
    let refused = get(&sidecar, "/api/big", "");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.body, "used up\n");
    // The policy's template, and the header naming why.
    assert_eq!(refused.header("bulwark-reason"), Some("quota_exhausted"));
    assert!(refused.header("Retry-After").is_some());
}

const GLOBAL: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: open
spec:
  scope: Global
  failureMode: Open
  quotas:
  - name: shared
    match: {path: {value: /api/open}}
    key: [{type: Header, name: x-api-key}]
    limit: 6
    period: Hour
---
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: closed
spec:
  scope: Global
  failureMode: Closed
  quotas:
  - name: shared
    match: {path: {value: /api/closed}}
    key: [{type: Header, name: x-api-key}]
    limit: 100
    period: Day
";

#[test]
fn global_quota_is_shared_by_two_sidecars_and_redis_failure_follows_failure_mode() {
    let s = setup(GLOBAL);
    let mut redis = Redis::start(s.dir.path());
    let url = redis.url();
    let a = start(&s, "a", &["--redis-url", &url]);
    let b = start(&s, "b", &["--redis-url", &url]);

    // Alternating pods draw from one budget of 6.
    let statuses: Vec<u16> = (0..8)
        .map(|i| get(if i % 2 == 0 { &a } else { &b }, "/api/open", "k").status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
    assert_eq!(used(&a, "open", "shared", "k"), 6);
    assert_eq!(used(&b, "open", "shared", "k"), 6);
    assert_eq!(get(&b, "/api/closed", "k").status, 200);

    // Redis gone: Open admits (uncounted), Closed refuses; neither hangs.
    redis.kill();
    let started = std::time::Instant::now();
    assert_eq!(get(&a, "/api/open", "fresh").status, 200);
    let refused = get(&a, "/api/closed", "k");
    assert_eq!(refused.status, 429, "{refused:?}");
    assert_eq!(refused.header("Retry-After"), Some("1"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(metric(&a, "bulwark_store_errors_total{kind=") >= 2);
    let (status, _) = admin_quota(&a, "policy=default/open&quota=shared&key=k");
    assert_eq!(status, 503, "the usage cannot be read without Redis");

    // Redis back (empty): counting resumes.
    redis.restart();
    eventually(Duration::from_secs(10), "Redis to be used again", || {
        (get(&a, "/api/closed", "k").status == 200).then_some(())
    });
    // b's connection to the old server breaks on first use and is re-made in the background.
    eventually(
        Duration::from_secs(10),
        "usage counted in the new Redis",
        || {
            let (status, body) = admin_quota(&b, "policy=default/closed&quota=shared&key=k");
            (status == 200 && body["used"].as_u64() >= Some(1)).then_some(())
        },
    );
}

/// `quota.lua` on a real Redis: check-and-charge never exceeds the limit, forced charges do,
/// reads charge nothing, and the counter expires an hour after its period.
#[test]
fn the_quota_script_checks_adds_and_expires_on_a_real_redis() {
    use bulwark_policy::{
        metrics::PolicyMetrics,
        quota::{
            period::Period,
            redis_counters::{Mode, call, redis_key},
        },
        redis_client::{RedisClient, RedisTarget},
    };
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(dir.path());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let metrics = PolicyMetrics::unregistered();
        let store =
            RedisClient::connect(RedisTarget::Single(redis.url()), &metrics.stores).unwrap();
        let period = Period {
            start: now_unix() - 10,
            end: now_unix() + 100,
        };
        let key = redis_key(period, "ns/p/q:0:k");
        // The connection is lazy: the first call may race it.
        let mut first = None;
        for _ in 0..50 {
            if let Ok(c) = call(&store, &key, period, Mode::Check, 4, 10).await {
                first = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = first.expect("Redis answers");
        assert_eq!((first.admitted, first.before, first.after), (true, 0, 4));
        let refused = call(&store, &key, period, Mode::Check, 7, 10)
            .await
            .unwrap();
        assert_eq!((refused.admitted, refused.after), (false, 4), "4 + 7 > 10");
        let fits = call(&store, &key, period, Mode::Check, 6, 10)
            .await
            .unwrap();
        assert_eq!((fits.admitted, fits.after), (true, 10));
        let empty = call(&store, &key, period, Mode::Check, 0, 10)
            .await
            .unwrap();
        assert!(!empty.admitted, "a used-up budget refuses even a zero cost");
        let forced = call(&store, &key, period, Mode::Add, 5, 10).await.unwrap();
        assert_eq!((forced.admitted, forced.after), (true, 15));
        let read = call(&store, &key, period, Mode::Read, 0, 10).await.unwrap();
        assert_eq!(read.after, 15);
        let expires_ms: i64 = redis.cli(&["PEXPIRETIME", &key]).parse().unwrap();
        assert_eq!(expires_ms, (period.end + 3600) * 1000);
    });
}
