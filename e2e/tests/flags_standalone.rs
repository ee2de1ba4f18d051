//! Feature flags served by the real sidecar binary in standalone mode: OFREP single and bulk
//! evaluations over TCP (shapes, status codes, ETag and 304), a reload that changes a flag,
//! and an invalid flag file that leaves the last good flags in force.

use std::time::Duration;

use bulwark_e2e::{
    eventually,
    process::{HttpResponse, http_post, wait_for_status},
    sidecar::{Sidecar, Standalone},
};
use serde_json::{Value, json};

const FLAGS: &str = r#"
apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata: {name: shop}
spec:
  flags:
    new-checkout:
      state: ENABLED
      variants: {"on": true, "off": false}
      defaultVariant: "off"
      targeting:
        if:
        - {"ends_with": [{"var": "email"}, "@example.com"]}
        - "on"
        - {"fractional": [["on", 10], ["off", 90]]}
    banner:
      state: DISABLED
      variants: {"a": "A"}
      defaultVariant: a
  metadata: {flagSetId: shop}
"#;

fn start(s: &Standalone) -> Sidecar {
    let sidecar = Sidecar::start(
        s.app.addr,
        &s.dir.path().join("state"),
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

fn ofrep(sidecar: &Sidecar, path: &str, body: &str, headers: &[(&str, &str)]) -> HttpResponse {
    http_post(
        sidecar.admin,
        &format!("/ofrep/v1/evaluate/flags{path}"),
        body,
        headers,
    )
    .expect("the admin listener answers")
}

fn json_of(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{e}: {r:?}"))
}

#[test]
fn ofrep_single_and_bulk_evaluations() {
    let s = Standalone::new(FLAGS, &[("index.html", b"app\n")]);
    let sidecar = start(&s);

    let staff = ofrep(
        &sidecar,
        "/new-checkout",
        r#"{"context":{"email":"ana@example.com"}}"#,
        &[],
    );
    assert_eq!(staff.status, 200, "{staff:?}");
    assert_eq!(
        json_of(&staff),
        json!({"key": "new-checkout", "reason": "TARGETING_MATCH", "variant": "on", "value": true, "metadata": {"flagSetId": "shop"}})
    );
    // The same user always gets the same variant; about a tenth get "on".
    let variant_of = |user: &str| {
        let r = ofrep(
            &sidecar,
            "/new-checkout",
            &format!(r#"{{"context":{{"targetingKey":"{user}"}}}}"#),
            &[],
        );
        json_of(&r)["variant"].as_str().unwrap().to_owned()
    };
    let first = variant_of("user-7");
    assert_eq!(variant_of("user-7"), first);
    let on = (0..300)
        .filter(|i| variant_of(&format!("user-{i}")) == "on")
        .count();
    assert!((12..=50).contains(&on), "{on} of 300 in a 10% bucket");

    let disabled = ofrep(&sidecar, "/banner", "{}", &[]);
    assert_eq!(
        (disabled.status, json_of(&disabled)),
        (
            200,
            json!({"key": "banner", "reason": "DISABLED", "metadata": {"flagSetId": "shop"}})
        )
    );
    let missing = ofrep(&sidecar, "/nope", "{}", &[]);
    assert_eq!(missing.status, 404);
    assert_eq!(json_of(&missing)["errorCode"], "FLAG_NOT_FOUND");
    let malformed = ofrep(&sidecar, "/new-checkout", "{", &[]);
    assert_eq!(
        (malformed.status, json_of(&malformed)["errorCode"].as_str()),
        (400, Some("INVALID_CONTEXT"))
    );

    // Bulk: every flag, an ETag, and 304 when the caller already has this answer.
    let body = r#"{"context":{"targetingKey":"user-7"}}"#;
    let all = ofrep(&sidecar, "", body, &[]);
    assert_eq!(all.status, 200);
    let all_json = json_of(&all);
    let keys: Vec<&str> = all_json["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["banner", "new-checkout"]);
    let etag = all
        .header("etag")
        .expect("bulk answers carry an ETag")
        .to_owned();
    let unchanged = ofrep(&sidecar, "", body, &[("If-None-Match", &etag)]);
    assert_eq!((unchanged.status, unchanged.body.as_str()), (304, ""));
    assert_eq!(unchanged.header("etag"), Some(etag.as_str()));

    // A changed flag file is served after reload; the ETag changes with the answer.
    std::fs::write(
        s.config.join("policy.yaml"),
        FLAGS.replace("state: DISABLED", "state: ENABLED"),
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the reloaded flags", || {
        let r = ofrep(&sidecar, "", body, &[("If-None-Match", &etag)]);
        (r.status == 200).then_some(())
    });
    assert_eq!(
        json_of(&ofrep(&sidecar, "/banner", "{}", &[]))["reason"],
        "STATIC"
    );

    // An invalid flag file is refused; the last good flags stay.
    std::fs::write(
        s.config.join("policy.yaml"),
        FLAGS.replace("defaultVariant: a", "defaultVariant: z"),
    )
    .unwrap();
    eventually(Duration::from_secs(10), "the refusal logged", || {
        sidecar.log_text().contains("defaultVariant").then_some(())
    });
    assert_eq!(
        json_of(&ofrep(&sidecar, "/banner", "{}", &[]))["reason"],
        "STATIC"
    );

    // Metrics: evaluations by flag, variant and reason; requests by endpoint and status.
    let on = r#"bulwark_flag_evaluations_total{flag="new-checkout",reason="TARGETING_MATCH",variant="on"}"#;
    assert!(sidecar.metric_sum(on) >= 1.0);
    let not_found = r#"bulwark_ofrep_requests_total{endpoint="single",status="404"}"#;
    assert_eq!(sidecar.metric_sum(not_found), 1.0);
    // At least the one above (the wait for the reload may have met more).
    let not_modified = r#"bulwark_ofrep_requests_total{endpoint="bulk",status="304"}"#;
    assert!(sidecar.metric_sum(not_modified) >= 1.0);

    let get =
        bulwark_e2e::process::http_get(sidecar.admin, "/ofrep/v1/evaluate/flags/banner").unwrap();
    assert_eq!((get.status, get.header("allow")), (405, Some("POST")));
}
