//! The operator's validating webhook on the real apiserver: the chart installs the
//! ValidatingWebhookConfiguration, the operator (a local process with the chart's
//! ServiceAccount token) patches its `caBundle` and serves `/validate`, and every FeatureFlag in
//! `e2e/fixtures/webhook/featureflag/` (valid for the CRD schema, wrong in what the schema cannot
//! see) is refused by `kubectl apply` with the field named, and not stored (the schema cannot
//! refuse any of them, and the operator's denial counter must account for each). Valid flags (the
//! examples) are accepted.

use std::{fs, time::Duration};

use bulwark_e2e::{
    ControlPlane, eventually, fixture_expectations,
    operator::{Operator, OperatorPorts, service_account_kubeconfig},
    process::http_get,
    repo_root,
};

const RELEASE_NS: &str = "bulwark-system";

#[test]
fn the_operator_refuses_invalid_feature_flags_naming_the_field() {
    let cp = ControlPlane::shared();
    let logs = cp.dir.join("logs");
    let ports = OperatorPorts::free();
    let chart = repo_root().join("charts/bulwark");
    cp.helm_ok(&[
        "install",
        "bulwark",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        &format!("webhook.url=https://{}/mutate", ports.webhook),
        "--set",
        &format!("validation.url=https://{}/validate", ports.webhook),
    ]);
    let kubeconfig = service_account_kubeconfig(cp, RELEASE_NS, "bulwark-operator");
    let _operator = Operator::start(&kubeconfig, RELEASE_NS, "op-a", ports, &logs, &[]);
    eventually(
        Duration::from_secs(30),
        "the operator sets the ValidatingWebhookConfiguration's caBundle",
        || {
            let bundle = cp.kubectl_ok(&[
                "get",
                "validatingwebhookconfiguration",
                "bulwark-validation",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ]);
            (!bundle.trim().is_empty()).then_some(())
        },
    );

    let ns = cp.namespace("flags");
    for example in [
        "featureflag-flagd-file.yaml",
        "featureflag-percentage-rollout.yaml",
    ] {
        let file = repo_root().join("examples").join(example);
        ns.kubectl_ok(&["apply", "-f", file.to_str().unwrap()]);
    }

    let dir = repo_root().join("e2e/fixtures/webhook/featureflag");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "{} fixtures; at least 8", files.len());
    let mut failures = Vec::new();
    for file in &files {
        let expect = fixture_expectations(file);
        assert!(
            !expect.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let out = ns.run_kubectl(&["apply", "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            failures.push(format!("{}: accepted, but must be refused", file.display()));
            continue;
        }
        // The webhook answers 422 Invalid with one cause per field, so kubectl prints it as it
        // prints the schema's own errors.
        let name = file.file_stem().unwrap().to_str().unwrap()[3..].to_owned();
        let invalid = format!("The FeatureFlag \"{name}\" is invalid");
        for e in std::iter::once(invalid.as_str()).chain(expect.iter().map(String::as_str)) {
            if !stderr.contains(e) {
                failures.push(format!(
                    "{}: error does not mention {e:?}:\n{stderr}",
                    file.display()
                ));
            }
        }
        let get = ns.run_kubectl(&["get", "-f", file.to_str().unwrap()]);
        assert!(!get.status.success(), "{} was stored", file.display());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));

    // An update that breaks a stored flag is refused too; the stored one stays.
    let out = ns.run_kubectl(&[
        "patch",
        "featureflag",
        "checkout-rollout",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/flags/new-checkout/defaultVariant", "value": "nope"}]"#,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && stderr.contains(
                "spec.flags[new-checkout].defaultVariant: \"nope\" is not one of the flag's variants"
            ),
        "{stderr}"
    );

    let metrics = http_get(ports.admin, "/metrics").unwrap().body;
    let denied = metrics
        .lines()
        .find_map(|l| l.strip_prefix("bulwark_operator_validations_total{verdict=\"denied\"} "))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    assert!(denied > files.len(), "{denied} denials counted:\n{metrics}");
}
