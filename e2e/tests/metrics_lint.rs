//! The sidecar's `/metrics` passes `promtool check metrics` (Prometheus' own linter: names,
//! units, `_total` counters, help text), with every metric family populated: local and global
//! rate-limit decisions, limited requests, store errors, quota decisions and threshold crossings.

use std::time::Duration;

use bulwark_e2e::{
    process::{http_get, http_request, wait_for_status},
    promtool_check,
    redis::Redis,
    sidecar::{Sidecar, Standalone},
};

const POLICIES: &str = "\
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: local
spec:
  rules:
  - name: one
    match: {path: {type: Exact, value: /local}}
    rates: [{limit: 1, window: 1h}]
---
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: global
spec:
  scope: Global
  global: {failureMode: Closed}
  rules:
  - name: one
    match: {path: {type: Exact, value: /global}}
    rates: [{limit: 1, window: 1h}]
---
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata:
  name: daily
spec:
  quotas:
  - name: requests
    match: {path: {type: Exact, value: /quota}}
    key: [{type: Constant}]
    limit: 2
    period: Day
    thresholds: [50]
";

#[test]
fn sidecar_metrics_pass_promtool() {
    let files = ["probe", "local", "global", "quota"].map(|name| (name, b"ok\n".as_slice()));
    let Standalone { dir, config, app } = Standalone::new(POLICIES, &files);
    let mut redis = Redis::start(dir.path());
    let sidecar = Sidecar::start(
        app.addr,
        &dir.path().join("state"),
        &[
            "--config-dir",
            config.to_str().unwrap(),
            "--redis-url",
            &redis.url(),
        ],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    for path in [
        "/local", "/local", "/global", "/global", "/quota", "/quota", "/quota",
    ] {
        http_request(sidecar.inbound, "GET", path, &[]).unwrap();
    }
    redis.kill();
    assert_eq!(
        http_request(sidecar.inbound, "GET", "/global", &[])
            .unwrap()
            .status,
        429
    );

    let metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
    for family in [
        "bulwark_ratelimit_requests_total{",
        "bulwark_ratelimit_decision_duration_seconds_bucket{",
        "bulwark_store_errors_total{",
        "bulwark_snapshot_version ",
        "bulwark_config_reloads_total{",
        "bulwark_quota_requests_total{",
        "bulwark_quota_threshold_crossings_total{",
        "bulwark_quota_keys",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    promtool_check(&metrics);
}
