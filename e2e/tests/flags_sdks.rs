//! Real OpenFeature SDKs (pinned in e2e/peers/versions.env) evaluating flags against the real
//! sidecar, as an app in the pod would: the Python SDK and the JavaScript server SDK, each with
//! its OFREP provider over the admin listener, and the Python flagd provider in RPC mode over
//! gRPC (flagd's evaluation API). Every value type, targeting, a default, a
//! disabled flag, a missing flag and a type mismatch.

use std::time::Duration;

use bulwark_e2e::{
    process::{http_get, http_post, wait_for_status},
    sdks,
    sidecar::{Sidecar, Standalone},
};
use serde_json::{Value, json};

const FLAGS: &str = r##"
apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata: {name: shop}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {"on": true, "off": false}
      defaultVariant: "off"
      targeting: {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "on", "off"]}
    rollout:
      state: ENABLED
      variants: {"blue": "blue", "green": "green"}
      defaultVariant: blue
      targeting: {"fractional": [["blue", 50], ["green", 50]]}
    price:
      state: ENABLED
      variants: {"low": 9.5, "high": 19.5}
      defaultVariant: low
    theme:
      state: ENABLED
      variants: {"dark": {"bg": "#000"}, "light": {"bg": "#fff"}}
      defaultVariant: light
      targeting: {"if": [{"==": [{"var": "plan"}, "pro"]}, "dark", null]}
    retired:
      state: DISABLED
      variants: {"on": true, "off": false}
      defaultVariant: "on"
"##;

fn evaluations() -> Value {
    json!([
        {"key": "new-checkout", "type": "boolean", "default": false,
         "context": {"targetingKey": "user-1", "email": "ana@example.com"}},
        {"key": "new-checkout", "type": "boolean", "default": true,
         "context": {"targetingKey": "user-2", "email": "bob@other.org"}},
        {"key": "rollout", "type": "string", "default": "none", "context": {"targetingKey": "user-1"}},
        {"key": "rollout", "type": "string", "default": "none", "context": {"targetingKey": "user-3"}},
        {"key": "price", "type": "number", "default": 0.0, "context": {}},
        {"key": "theme", "type": "object", "default": {}, "context": {"plan": "pro"}},
        {"key": "theme", "type": "object", "default": {}, "context": {"plan": "free"}},
        {"key": "retired", "type": "boolean", "default": false, "context": {}},
        {"key": "missing", "type": "boolean", "default": true, "context": {}},
        {"key": "new-checkout", "type": "string", "default": "code-default", "context": {}},
    ])
}

#[test]
fn ofrep_and_flagd_rpc_providers_evaluate_against_the_sidecar() {
    let s = Standalone::new(FLAGS, &[("index.html", b"app\n")]);
    let sidecar = Sidecar::start(
        s.app.addr,
        &s.dir.path().join("state"),
        &["--config-dir", s.config.to_str().unwrap()],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(10));
    let base_url = format!("http://{}", sidecar.admin);
    // The rollout's buckets as the sidecar's own OFREP answer gives them (the differential
    // test proves them equal to flagd's); the two users fall on different sides of the split.
    let bucket = |user: &str| -> Value {
        let body = json!({"context": {"targetingKey": user}}).to_string();
        let r = http_post(
            sidecar.admin,
            "/ofrep/v1/evaluate/flags/rollout",
            &body,
            &[],
        )
        .unwrap();
        serde_json::from_str::<Value>(&r.body).unwrap()["value"].clone()
    };
    let (user_1, user_3) = (bucket("user-1"), bucket("user-3"));
    assert_ne!(user_1, user_3);

    let expected = [
        // key, value, reason, variant, errorCode
        json!(["new-checkout", true, "TARGETING_MATCH", "on", null]),
        json!(["new-checkout", false, "TARGETING_MATCH", "off", null]),
        json!(["rollout", user_1, "TARGETING_MATCH", user_1, null]),
        json!(["rollout", user_3, "TARGETING_MATCH", user_3, null]),
        json!(["price", 9.5, "STATIC", "low", null]),
        json!(["theme", {"bg": "#000"}, "TARGETING_MATCH", "dark", null]),
        json!(["theme", {"bg": "#fff"}, "DEFAULT", "light", null]),
        // A disabled flag: see `disabled` below.
        json!(["retired", false, "DISABLED", null, null]),
        json!(["missing", true, "ERROR", null, "FLAG_NOT_FOUND"]),
        // A boolean flag asked for as a string: the code default and TYPE_MISMATCH.
        json!([
            "new-checkout",
            "code-default",
            "ERROR",
            null,
            "TYPE_MISMATCH"
        ]),
    ];
    // A disabled flag gives the app its code default everywhere. The sidecar answers as flagd
    // and the OFREP spec's code-default response do (reason DISABLED, no value); the OFREP
    // provider versions pinned here predate that response and report it as an error, with the
    // same value (docs/feature-flags.md). The flagd RPC provider reports DISABLED.
    let disabled_over_ofrep = json!(["retired", false, "ERROR", null, "GENERAL"]);
    let flagd = sidecar.flagd.to_string();
    for (sdk, answers, disabled) in [
        (
            "python ofrep",
            sdks::python("ofrep", &base_url, &evaluations()),
            &disabled_over_ofrep,
        ),
        (
            "javascript ofrep",
            sdks::javascript_ofrep(&base_url, &evaluations()),
            &disabled_over_ofrep,
        ),
        (
            "python flagd rpc",
            sdks::python("flagd-rpc", &flagd, &evaluations()),
            &expected[7],
        ),
    ] {
        assert_eq!(answers.len(), expected.len(), "{sdk}: {answers:?}");
        for (i, (answer, expected)) in answers.iter().zip(&expected).enumerate() {
            let expected = if i == 7 { disabled } else { expected };
            let got = json!([
                answer["key"],
                answer["value"],
                answer["reason"],
                answer["variant"],
                answer["errorCode"]
            ]);
            assert_eq!(&got, expected, "{sdk}");
        }
    }
    // The RPC provider's calls, counted by method and status.
    let metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
    for line in [
        "bulwark_flagd_api_calls_total{code=\"NotFound\",method=\"ResolveBoolean\"} 1",
        "bulwark_flagd_api_calls_total{code=\"InvalidArgument\",method=\"ResolveString\"} 1",
        "bulwark_flagd_api_calls_total{code=\"Ok\",method=\"ResolveObject\"} 2",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }
}
