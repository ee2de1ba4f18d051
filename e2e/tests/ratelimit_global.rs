//! `scope: Global` rate limits: real sidecar binaries sharing a real Redis, in front of a real
//! upstream. Exact mode holds the limit across pods; fast mode converges after a sync and stays
//! inside its bound; Redis killed mid-run fails open or closed as each policy says, never
//! hangs, is counted, and enforcement recovers when Redis is back.

use std::time::Duration;

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, http_request, wait_for_status},
    redis::Redis,
    sidecar::{Sidecar, Standalone},
};

struct Setup {
    standalone: Standalone,
    redis: Redis,
}

fn setup(policy: &str) -> Setup {
    let standalone = Standalone::new(
        policy,
        &[
            ("api/a", b"a\n"),
            ("api/b", b"b\n"),
            ("api/open", b"open\n"),
            ("api/closed", b"closed\n"),
        ],
    );
    let redis = Redis::start(standalone.dir.path());
    Setup { standalone, redis }
}

fn sidecar(s: &Setup, name: &str) -> Sidecar {
    sidecar_with_redis(s, name, &["--redis-url", &s.redis.url()])
}

/// A ready sidecar with `redis` flags (`--redis-url ...` or `--redis-cluster ...`).
fn sidecar_with_redis(s: &Setup, name: &str, redis: &[&str]) -> Sidecar {
    let env = &s.standalone;
    let mut args = vec!["--config-dir", env.config.to_str().unwrap()];
    args.extend_from_slice(redis);
    let sidecar = Sidecar::start(env.app.addr, &env.dir.path().join(name), &args);
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    sidecar
}

fn get(sidecar: &Sidecar, path: &str, key: &str) -> HttpResponse {
    http_request(sidecar.inbound, "GET", path, &[("x-api-key", key)]).expect("the sidecar answers")
}

fn metric(sidecar: &Sidecar, prefix: &str) -> u64 {
    sidecar.metric_sum(prefix) as u64
}

const EXACT: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: shared
spec:
  scope: Global
  rules:
  - name: per-key
    key: [{type: Header, name: x-api-key}]
    rates: [{limit: 5, window: 1h}]
";

#[test]
fn exact_mode_holds_one_limit_across_sidecars() {
    let s = setup(EXACT);
    let (a, b) = (sidecar(&s, "a"), sidecar(&s, "b"));
    let statuses: Vec<u16> = (0..10)
        .map(|i| get(if i % 2 == 0 { &a } else { &b }, "/api/a", "k1").status)
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429, 429, 429],
        "five in all, whichever sidecar answers"
    );
    // TokenBucket (the default): one more every 12 minutes, full again in an hour.
    let limited = get(&b, "/api/a", "k1");
    assert_eq!(limited.header("ratelimit"), Some("\"per-key\";r=0;t=3600"));
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((700..=720).contains(&retry), "Retry-After {retry}");
    // Another key has its own counter.
    assert_eq!(get(&a, "/api/a", "k2").status, 200);
    assert_eq!(
        metric(&a, "bulwark_ratelimit_requests_total{decision=\"limited\"")
            + metric(&b, "bulwark_ratelimit_requests_total{decision=\"limited\""),
        6
    );
}

const FAST: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: shared
spec:
  scope: Global
  global: {mode: Fast, syncInterval: 50ms}
  rules:
  - name: per-key
    algorithm: FixedWindow
    key: [{type: Header, name: x-api-key}]
    rates: [{limit: 20, window: 1h}]
";

#[test]
fn fast_mode_syncs_counts_between_sidecars() {
    let s = setup(FAST);
    let (a, b) = (sidecar(&s, "a"), sidecar(&s, "b"));
    let admitted = |sidecar: &Sidecar, n: usize| {
        (0..n)
            .filter(|_| get(sidecar, "/api/a", "k").status == 200)
            .count()
    };
    // Each pod first sees only its own admissions, then both see the sum.
    assert_eq!(admitted(&a, 12), 12);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admitted(&b, 12), 8, "b knows a's 12 after a sync");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admitted(&a, 5), 0, "a knows b's 8");
    // Concurrent load on both pods between syncs: the pods together stay within their bound
    // (each pod alone never exceeds the limit: at most 2 × 20 in all for this key).
    let key = "burst";
    let total: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = [&a, &b, &a, &b]
            .into_iter()
            .map(|sc| {
                scope.spawn(move || {
                    (0..20)
                        .filter(|_| get(sc, "/api/a", key).status == 200)
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!((20..=40).contains(&total), "admitted {total} of 80");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(get(&a, "/api/a", key).status, 429);
    assert_eq!(get(&b, "/api/a", key).status, 429);
}

const FAILURE_MODES: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: open
spec:
  scope: Global
  global: {failureMode: Open, timeout: 100ms}
  rules:
  - name: open
    match: {path: {type: Exact, value: /api/open}}
    rates: [{limit: 2, window: 1h}]
---
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: closed
spec:
  scope: Global
  global: {failureMode: Closed, timeout: 100ms}
  rules:
  - name: closed
    match: {path: {type: Exact, value: /api/closed}}
    rates: [{limit: 2, window: 1h}]
";

#[test]
fn redis_failure_fails_open_or_closed_and_recovers() {
    let mut s = setup(FAILURE_MODES);
    let a = sidecar(&s, "a");
    let statuses = |path: &str| -> Vec<u16> { (0..3).map(|_| get(&a, path, "-").status).collect() };
    assert_eq!(statuses("/api/open"), [200, 200, 429]);
    assert_eq!(statuses("/api/closed"), [200, 200, 429]);

    s.redis.kill();
    assert_eq!(statuses("/api/open"), [200, 200, 200], "fail open admits");
    let closed = get(&a, "/api/closed", "-");
    assert_eq!(closed.status, 429, "fail closed rejects");
    assert_eq!(closed.header("retry-after"), Some("1"));
    assert!(
        metric(&a, "bulwark_store_errors_total{") >= 4,
        "every failed call is counted"
    );

    // Back (empty, as after a failover to a fresh node): enforcement resumes by itself.
    s.redis.restart();
    eventually(Duration::from_secs(10), "limits enforced again", || {
        (get(&a, "/api/closed", "-").status == 200).then_some(())
    });
    eventually(
        Duration::from_secs(10),
        "the open limit counts again",
        || (get(&a, "/api/open", "-").status == 429).then_some(()),
    );
    // The outage is logged once, with what it means, not once per failed call.
    let log = a.log_text();
    assert_eq!(log.matches("Redis is unreachable").count(), 1, "{log}");
    assert!(log.contains("failureMode"), "{log}");
    assert!(log.contains("Redis answers again"), "{log}");
}

const CLUSTER: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: shared
spec:
  scope: Global
  rules:
  - name: per-key
    key: [{type: Header, name: x-api-key}]
    rates: [{limit: 3, window: 1h}]
";

/// Redis Cluster: three primaries made by `redis-cli --cluster create`; keys spread over the
/// slots, and each key still gets exactly its limit.
#[test]
fn redis_cluster_holds_per_key_limits() {
    let s = setup(CLUSTER);
    let nodes: Vec<Redis> = (0..3)
        .map(|_| Redis::start_cluster_node(s.standalone.dir.path()))
        .collect();
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr().to_string()).collect();
    let mut create = std::process::Command::new("redis-cli");
    create
        .args(["--cluster", "create"])
        .args(&addrs)
        .args(["--cluster-yes"]);
    let out = create.output().unwrap();
    assert!(out.status.success(), "{out:?}");
    eventually(Duration::from_secs(20), "the cluster to be ok", || {
        nodes[0]
            .cli(&["cluster", "info"])
            .contains("cluster_state:ok")
            .then_some(())
    });
    let seeds = nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",");
    let a = sidecar_with_redis(&s, "a", &["--redis-cluster", &seeds]);
    // Until the client has discovered the slots, calls fail open: wait for a counted one.
    eventually(Duration::from_secs(20), "the cluster client", || {
        (get(&a, "/api/a", "probe").status == 429).then_some(())
    });
    for key in ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"] {
        let statuses: Vec<u16> = (0..4).map(|_| get(&a, "/api/a", key).status).collect();
        assert_eq!(statuses, [200, 200, 200, 429], "key {key}");
    }
    let keys: usize = nodes
        .iter()
        .map(|n| n.cli(&["dbsize"]).parse::<usize>().unwrap())
        .sum();
    assert_eq!(keys, 7, "six keys and the probe");
    assert!(
        nodes.iter().filter(|n| n.cli(&["dbsize"]) != "0").count() >= 2,
        "keys are spread over the primaries"
    );
}
