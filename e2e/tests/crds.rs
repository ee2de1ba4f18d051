//! The CRDs on the real apiserver: install, examples accepted, invalid objects rejected with the
//! field named, `kubectl explain` documentation, printer columns, short names and the category.

use std::{collections::BTreeMap, fs, path::PathBuf, sync::Once};

use bulwark_e2e::{ControlPlane, fixture_expectations, repo_root, squash_whitespace};

fn cp() -> &'static ControlPlane {
    static CRDS: Once = Once::new();
    let cp = ControlPlane::shared();
    CRDS.call_once(|| cp.install_crds());
    cp
}

fn yaml_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// The `kind`s of the objects in a YAML file.
fn kinds_in(path: &std::path::Path) -> Vec<String> {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|doc| serde_yaml::Value::deserialize(doc).ok())
        .filter_map(|v| v.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .collect()
}

use serde::Deserialize as _;

fn bulwark_kinds() -> Vec<String> {
    bulwark_api::crd::all()
        .into_iter()
        .map(|(_, c)| c.spec.names.kind)
        .collect()
}

#[test]
fn every_example_is_accepted() {
    let ns = cp().namespace("examples");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for file in yaml_files(&repo_root().join("examples")) {
        let out = ns.run_kubectl(&["apply", "-f", file.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{} was rejected:\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        for kind in kinds_in(&file) {
            *seen.entry(kind).or_default() += 1;
        }
    }
    for kind in bulwark_kinds() {
        assert!(
            seen.get(&kind).copied().unwrap_or(0) >= 1,
            "examples/ has no {kind}: {seen:?}"
        );
    }
    // Everything applied is really there, and listed under the `bulwark` category.
    let listed = ns.kubectl_ok(&["get", "bulwark", "-o", "name"]);
    let bulwark_objects: usize = seen
        .iter()
        .filter(|(k, _)| bulwark_kinds().contains(k))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(
        listed.lines().count(),
        bulwark_objects,
        "kubectl get bulwark listed:\n{listed}"
    );
}

#[test]
fn every_invalid_fixture_is_rejected_naming_the_field() {
    let ns = cp().namespace("invalid");
    let root = repo_root().join("e2e/fixtures/invalid");
    let mut per_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    for dir in fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
    {
        for file in yaml_files(&dir) {
            let expect = fixture_expectations(&file);
            assert!(
                !expect.is_empty(),
                "{} has no `# expect:` line",
                file.display()
            );
            let kinds = kinds_in(&file);
            assert_eq!(
                kinds.len(),
                1,
                "{} must hold exactly one object",
                file.display()
            );
            *per_kind.entry(kinds[0].clone()).or_default() += 1;

            let out = ns.run_kubectl(&["apply", "-f", file.to_str().unwrap()]);
            let stderr = String::from_utf8_lossy(&out.stderr);
            if out.status.success() {
                failures.push(format!(
                    "{}: accepted, but must be rejected",
                    file.display()
                ));
                continue;
            }
            for e in &expect {
                if !stderr.contains(e.as_str()) {
                    failures.push(format!(
                        "{}: error does not mention {e:?}:\n{stderr}",
                        file.display()
                    ));
                }
            }
            // Rejected means nothing was stored.
            let get = ns.run_kubectl(&["get", "-f", file.to_str().unwrap()]);
            assert!(
                !get.status.success(),
                "{} was stored despite the error",
                file.display()
            );
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    for kind in bulwark_kinds() {
        let n = per_kind.get(&kind).copied().unwrap_or(0);
        assert!(
            n >= 3,
            "e2e/fixtures/invalid has {n} fixtures for {kind}; at least 3 are required"
        );
    }
}

#[test]
fn a_malformed_duration_gets_one_clear_error() {
    let ns = cp().namespace("duration");
    let path = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    fs::write(&path, RLP.replace("window: 1m", "window: 1d")).unwrap();
    let out = ns.run_kubectl(&["apply", "-f", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("spec.rules[0].rates[0].window") && stderr.contains("should match"),
        "{stderr}"
    );
    // CEL bounds are guarded by the pattern, so no second, confusing error appears.
    assert!(!stderr.contains("type conversion error"), "{stderr}");
    let _ = fs::remove_file(path);
}

/// The description the code gives a field, read from the generated CRD.
fn field_description(kind: &str, path: &[&str]) -> String {
    let (_, crd) = bulwark_api::crd::all()
        .into_iter()
        .find(|(_, c)| c.spec.names.kind == kind)
        .unwrap();
    let mut schema = serde_json::to_value(
        crd.spec.versions[0]
            .schema
            .as_ref()
            .unwrap()
            .open_api_v3_schema
            .as_ref()
            .unwrap(),
    )
    .unwrap();
    for (i, segment) in path.iter().enumerate() {
        schema = schema["properties"][*segment].clone();
        // Lists are documented on the field itself; their fields live under `items`.
        if i + 1 < path.len() && schema.get("items").is_some() {
            schema = schema["items"].clone();
        }
    }
    schema["description"]
        .as_str()
        .unwrap_or_else(|| panic!("{kind}.{} has no description", path.join(".")))
        .to_owned()
}

#[test]
fn kubectl_explain_shows_the_field_documentation() {
    let cp = cp();
    let cases: &[(&str, &[&str])] = &[
        ("RateLimitPolicy", &["spec", "rules", "rates", "window"]),
        ("RateLimitPolicy", &["spec", "scope"]),
        ("QuotaPolicy", &["spec", "quotas", "period"]),
        ("FeatureFlag", &["spec", "gates", "allowedVariants"]),
        ("WebhookEndpoint", &["spec", "signing", "secretRef"]),
        (
            "FailoverPolicy",
            &[
                "spec",
                "upstreams",
                "outlierDetection",
                "maxEjectionPercent",
            ],
        ),
    ];
    for (kind, path) in cases {
        let field = format!("{}.{}", kind.to_lowercase(), path.join("."));
        let out = cp.kubectl_ok(&["explain", &field]);
        let want = squash_whitespace(&field_description(kind, path));
        assert!(
            squash_whitespace(&out).contains(&want),
            "`kubectl explain {field}` does not show {want:?}:\n{out}"
        );
    }
}

const RLP: &str = r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata:
  name: columns
spec:
  scope: Global
  rules:
  - name: per-ip
    key: [{type: ClientIP}]
    rates: [{limit: 42, window: 1m}]
"#;

#[test]
fn printer_columns_short_names_and_status_subresource() {
    let cp = cp();
    let ns = cp.namespace("columns");
    let path = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    fs::write(&path, RLP).unwrap();
    ns.kubectl_ok(&["apply", "-f", path.to_str().unwrap()]);

    let table = ns.kubectl_ok(&["get", "rlp"]);
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME",
            "SCOPE",
            "ENFORCEMENT",
            "LIMIT",
            "WINDOW",
            "ACCEPTED",
            "PROGRAMMED",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        &row[..5],
        ["columns", "Global", "Enforce", "42", "1m"],
        "defaults and spec values show: {table}"
    );

    // The status subresource accepts conditions, and the Accepted column reads them.
    let status = r#"{"status":{"observedGeneration":1,"selectedPods":2,"programmedPods":2,"conditions":[
        {"type":"Accepted","status":"True","reason":"Accepted","message":"ok","lastTransitionTime":"2026-01-01T00:00:00Z"},
        {"type":"Programmed","status":"False","reason":"Pending","message":"0/2","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}"#;
    ns.kubectl_ok(&[
        "patch",
        "rlp",
        "columns",
        "--subresource=status",
        "--type=merge",
        "-p",
        status,
    ]);
    let wide = ns.kubectl_ok(&["get", "ratelimitpolicy", "columns", "-o", "wide"]);
    let row: Vec<&str> = wide.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        &row[5..8],
        ["True", "False", "2"],
        "Accepted, Programmed, Pods: {wide}"
    );

    // Every short name resolves.
    for short in ["rlp", "qp", "ff", "whe", "fop"] {
        ns.kubectl_ok(&["get", short]);
    }
    let _ = fs::remove_file(path);
}
