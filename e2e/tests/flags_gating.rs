//! Flags acting at the proxy, for an app with no SDK: the real sidecar with the percentage
//! rollout example (`examples/featureflag-percentage-rollout.yaml`) in front of an app that
//! records what it received. The gate lets the rollout's users through to /checkout/v2 and
//! answers 404 to the rest; the app sees each user's variant in `X-Flag-New-Checkout` (a
//! client's own value never reaches it); the same user always gets the same answer, which
//! is the variant OFREP gives for that user; the split is near the example's 20%.

use std::time::Duration;

use bulwark_e2e::{
    process::{http_post, http_request, wait_for_status},
    repo_root,
    sidecar::{RecordingUpstream, Sidecar},
};
use serde_json::{Value, json};

const USERS: usize = 400;

#[test]
fn the_rollout_example_gates_its_route_and_tells_the_app_the_variant() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policies");
    std::fs::create_dir(&config).unwrap();
    std::fs::copy(
        repo_root().join("examples/featureflag-percentage-rollout.yaml"),
        config.join("rollout.yaml"),
    )
    .unwrap();
    let app = RecordingUpstream::start(dir.path());
    let sidecar = Sidecar::start(
        app.addr,
        &dir.path().join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));

    let mut rolled_out = 0;
    for i in 0..USERS {
        let user = format!("user-{i}");
        // What OFREP says this user gets.
        let body = json!({"context": {"targetingKey": user}}).to_string();
        let ofrep = http_post(
            sidecar.admin,
            "/ofrep/v1/evaluate/flags/new-checkout",
            &body,
            &[],
        )
        .unwrap();
        let variant = serde_json::from_str::<Value>(&ofrep.body).unwrap()["variant"]
            .as_str()
            .unwrap()
            .to_owned();

        app.clear();
        let headers = [("X-User-Id", user.as_str()), ("X-Flag-New-Checkout", "on")];
        let gated = http_request(sidecar.inbound, "GET", "/checkout/v2/cart", &headers).unwrap();
        let again = http_request(sidecar.inbound, "GET", "/checkout/v2/cart", &headers).unwrap();
        assert_eq!(gated.status, again.status, "{user}: the same answer twice");
        let other = http_request(sidecar.inbound, "GET", "/catalog", &headers).unwrap();
        assert_eq!(other.status, 200, "{user}: ungated routes pass");
        let received = app.received();
        if variant == "on" {
            rolled_out += 1;
            assert_eq!(gated.status, 200, "{user}: {gated:?}");
            assert_eq!(received.len(), 3, "{user}");
        } else {
            assert_eq!(gated.status, 404, "{user}: {gated:?}");
            assert_eq!(gated.header("bulwark-reason"), Some("flag_gated"));
            assert_eq!(gated.body, "Not Found\n", "the example's deny body");
            assert_eq!(received.len(), 1, "{user}: only /catalog reached the app");
        }
        for r in &received {
            assert_eq!(
                r.header_values("x-flag-new-checkout"),
                [variant.as_str()],
                "{user}: the app sees the variant, never the client's value"
            );
        }
    }
    // 20% of 400 is 80; four standard deviations (8 each) either side.
    assert!(
        (48..=112).contains(&rolled_out),
        "{rolled_out} of {USERS} users rolled out"
    );

    let metrics = http_request(sidecar.admin, "GET", "/metrics", &[])
        .unwrap()
        .body;
    for (decision, expected) in [
        ("allowed", 2 * rolled_out),
        ("denied", 2 * (USERS - rolled_out)),
    ] {
        let line = format!(
            "bulwark_flag_gate_decisions_total{{decision=\"{decision}\",gate=\"new-checkout-routes\"}} {expected}"
        );
        assert!(metrics.contains(&line), "{line} not in\n{metrics}");
    }
}
