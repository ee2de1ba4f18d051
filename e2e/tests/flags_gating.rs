//! Flags acting at the proxy, for an app with no SDK: the real sidecar with the percentage
//! rollout example (`examples/featureflag-percentage-rollout.yaml`) in front of an app that
//! records what it received. The gate lets the rollout's users through to /checkout/v2 and
//! answers 404 to the rest; the app sees each user's variant in `X-Flag-New-Checkout` (a
//! client's own value never reaches it); the same user always gets the same answer, which
//! is the variant OFREP gives for that user; the split is near the example's 20%.

use std::time::Duration;

use bulwark_e2e::{
    process::{http_post, http_request, send_raw, wait_for_status},
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

/// Rules with `direction: Outbound` act on the app's own calls (the outbound listener): the
/// variant header travels with the app's call to another service, and an outbound gate refuses
/// the calls of users outside its rollout; inbound requests are untouched by them.
#[test]
fn outbound_rules_act_on_the_apps_own_calls() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("policies");
    std::fs::create_dir(&config).unwrap();
    std::fs::write(
        config.join("flag.yaml"),
        r#"apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata:
  name: outbound
spec:
  flags:
    new-pricing:
      state: ENABLED
      variants: {"on": true, "off": false}
      defaultVariant: "off"
      targeting: {"if": [{"==": [{"var": "targetingKey"}, "alice"]}, "on", "off"]}
  context:
    targetingKey: {type: Header, name: X-User-Id}
  gates:
  - name: pricing-v2-calls
    direction: Outbound
    match: {path: {type: PathPrefix, value: /v2/prices}}
    flag: new-pricing
    allowedVariants: ["on"]
  injectHeaders:
  - flag: new-pricing
    header: X-Flag-New-Pricing
    direction: Outbound
"#,
    )
    .unwrap();
    let pricing = RecordingUpstream::start(dir.path());
    let sidecar = Sidecar::start(
        pricing.addr,
        &dir.path().join("state"),
        &["--config-dir", config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    // The app's call to the pricing service, named in Host.
    let call = |user: &str, path: &str| {
        send_raw(
            sidecar.outbound,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {}\r\nX-User-Id: {user}\r\nConnection: close\r\n\r\n",
                pricing.addr
            ),
        )
        .unwrap()
    };
    pricing.clear();
    assert_eq!(call("alice", "/v2/prices").status, 200);
    assert_eq!(call("bob", "/v1/prices").status, 200);
    let refused = call("bob", "/v2/prices");
    assert_eq!(refused.status, 404);
    assert_eq!(refused.header("bulwark-reason"), Some("flag_gated"));
    let received = pricing.received();
    assert_eq!(received.len(), 2, "bob's /v2 call never left the pod");
    assert_eq!(received[0].header_values("x-flag-new-pricing"), ["on"]);
    assert_eq!(received[1].header_values("x-flag-new-pricing"), ["off"]);

    // Inbound (the same recording app behind the inbound listener): no outbound rule applies.
    pricing.clear();
    let inbound = http_request(
        sidecar.inbound,
        "GET",
        "/v2/prices",
        &[("X-User-Id", "bob")],
    )
    .unwrap();
    assert_eq!(inbound.status, 200);
    assert!(
        pricing.received()[0]
            .header_values("x-flag-new-pricing")
            .is_empty()
    );
}
