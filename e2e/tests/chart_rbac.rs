//! The Helm chart: lint and render with each option, bad values rejected with the field named,
//! the operator's pod hardened, and on a real apiserver: the operator's ServiceAccount can do
//! exactly what it needs (`kubectl auth can-i`), the webhook's selectors spare the cluster's and
//! Bulwark's namespaces, and `helm upgrade` keeps the caBundle the operator patched in.
//!
//! No test here lets the apiserver call the webhook through the Service: with no kubelet and no
//! kube-proxy that would dial a ClusterIP. The install uses `webhook.url` on loopback instead.

use std::{path::PathBuf, process::Command, sync::OnceLock, time::Duration};

use bulwark_e2e::{ControlPlane, eventually, free_ports, repo_root, stdout_or_panic};
use serde::Deserialize as _;
use serde_yaml::Value;

const SA: &str = "bulwark-operator";

fn chart() -> String {
    repo_root()
        .join("charts/bulwark")
        .to_str()
        .unwrap()
        .to_owned()
}

/// `helm install bulwark` into `release_ns`, with the injection webhook called at `webhook_url`.
fn install_chart(cp: &ControlPlane, release_ns: &str, webhook_url: &str) {
    cp.helm_ok(&[
        "install",
        "bulwark",
        &chart(),
        "--namespace",
        release_ns,
        "--create-namespace",
        "--set",
        &format!("webhook.url={webhook_url}"),
    ]);
}

/// The pinned helm (built and cached by `e2e/controlplane/build.sh`) and the Kubernetes version
/// the project targets, for commands that need no cluster.
fn offline_helm() -> (Command, tempfile::TempDir) {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    let bin = BIN.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo_root().join("e2e/controlplane/build.sh"))
            .output()
            .unwrap();
        PathBuf::from(stdout_or_panic("build.sh", &[], out).trim())
    });
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(bin.join("helm"));
    cmd.env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    (cmd, home)
}

fn kube_version() -> String {
    let env = std::fs::read_to_string(repo_root().join("e2e/controlplane/versions.env")).unwrap();
    env.lines()
        .find_map(|l| l.strip_prefix("K8S_VERSION="))
        .expect("K8S_VERSION in versions.env")
        .to_owned()
}

fn set_args(sets: &[&str]) -> Vec<String> {
    sets.iter()
        .flat_map(|s| ["--set".to_owned(), s.to_string()])
        .collect()
}

/// `helm template` in namespace `bulwark-system` with `--set`s; the documents, or the error.
fn try_render(sets: &[&str]) -> Result<Vec<Value>, String> {
    let (mut helm, _home) = offline_helm();
    let out = helm
        .args([
            "template",
            "bulwark",
            &chart(),
            "--namespace",
            "bulwark-system",
        ])
        .args(["--kube-version", &kube_version()])
        .args(set_args(sets))
        .output()
        .unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    Ok(serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap())
        .filter(|v| !v.is_null())
        .collect())
}

fn render(sets: &[&str]) -> Vec<Value> {
    try_render(sets).unwrap_or_else(|e| panic!("helm template {sets:?} failed: {e}"))
}

fn try_lint(sets: &[&str]) -> Result<(), String> {
    let (mut helm, _home) = offline_helm();
    let out = helm
        .args(["lint", "--strict", &chart()])
        .args(["--kube-version", &kube_version()])
        .args(set_args(sets))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The rendered object of this kind and name.
fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect()
}

fn operator_container(docs: &[Value]) -> &Value {
    &object(docs, "Deployment", "bulwark-operator")["spec"]["template"]["spec"]["containers"][0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> Option<&'a Value> {
    container["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|e| e["name"].as_str() == Some(name))
}

fn webhook(docs: &[Value]) -> &Value {
    let config = object(
        docs,
        "MutatingWebhookConfiguration",
        "bulwark-sidecar-injector",
    );
    let hooks = config["webhooks"].as_sequence().unwrap();
    assert_eq!(hooks.len(), 1, "one webhook");
    &hooks[0]
}

#[test]
fn lint_and_template_pass_with_defaults_and_each_option() {
    let variants: &[&[&str]] = &[
        &[],
        &[
            "serviceMonitor.enabled=true",
            "serviceMonitor.labels.release=prom",
        ],
        &["redis.url=redis://:secret@redis.example:6379"],
        &[
            "redis.existingSecret.name=my-redis",
            "redis.existingSecret.key=uri",
        ],
        &["webhook.url=https://127.0.0.1:9443/mutate"],
        &["operator.replicas=1", "webhook.failurePolicy=Ignore"],
    ];
    for sets in variants {
        try_lint(sets).unwrap_or_else(|e| panic!("helm lint --strict {sets:?}: {e}"));
        render(sets);
    }

    // Defaults: no ServiceMonitor, no Redis, the webhook calls the Service, a PDB for 2 replicas.
    let docs = render(&[]);
    assert!(find(&docs, "ServiceMonitor", "bulwark-operator").is_none());
    assert!(find(&docs, "Secret", "bulwark-redis").is_none());
    assert!(env_var(operator_container(&docs), "BULWARK_REDIS_URL").is_none());
    let client = &webhook(&docs)["clientConfig"];
    assert_eq!(client["service"]["name"].as_str(), Some("bulwark-operator"));
    assert_eq!(
        client["service"]["namespace"].as_str(),
        Some("bulwark-system")
    );
    assert_eq!(client["service"]["path"].as_str(), Some("/mutate"));
    assert_eq!(client["service"]["port"].as_u64(), Some(443));
    assert!(client.get("url").is_none() && client.get("caBundle").is_none());
    let pdb = object(&docs, "PodDisruptionBudget", "bulwark-operator");
    assert_eq!(pdb["spec"]["minAvailable"].as_u64(), Some(1));

    let docs = render(&[
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prom",
    ]);
    let monitor = object(&docs, "ServiceMonitor", "bulwark-operator");
    assert_eq!(
        monitor["apiVersion"].as_str(),
        Some("monitoring.coreos.com/v1")
    );
    assert_eq!(
        monitor["metadata"]["labels"]["release"].as_str(),
        Some("prom")
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        monitor["spec"]["endpoints"][0]["path"].as_str(),
        Some("/metrics")
    );

    // A Redis URL goes into a Secret, and reaches the operator only through it.
    let docs = render(&["redis.url=redis://:secret@redis.example:6379"]);
    let secret = object(&docs, "Secret", "bulwark-redis");
    assert_eq!(
        secret["stringData"]["url"].as_str(),
        Some("redis://:secret@redis.example:6379")
    );
    let deployment =
        serde_yaml::to_string(object(&docs, "Deployment", "bulwark-operator")).unwrap();
    assert!(
        !deployment.contains("secret@"),
        "the URL leaked into the Deployment"
    );
    let redis = env_var(operator_container(&docs), "BULWARK_REDIS_URL").expect("BULWARK_REDIS_URL");
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("bulwark-redis")
    );
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"]["key"].as_str(),
        Some("url")
    );

    let docs = render(&[
        "redis.existingSecret.name=my-redis",
        "redis.existingSecret.key=uri",
    ]);
    assert!(find(&docs, "Secret", "bulwark-redis").is_none());
    let redis = env_var(operator_container(&docs), "BULWARK_REDIS_URL").unwrap();
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"]["name"].as_str(),
        Some("my-redis")
    );
    assert_eq!(
        redis["valueFrom"]["secretKeyRef"]["key"].as_str(),
        Some("uri")
    );

    let docs = render(&["webhook.url=https://127.0.0.1:9443/mutate"]);
    let client = &webhook(&docs)["clientConfig"];
    assert_eq!(
        client["url"].as_str(),
        Some("https://127.0.0.1:9443/mutate")
    );
    assert!(client.get("service").is_none());

    // One replica: no PDB (minAvailable 1 would block every drain), no anti-affinity.
    let docs = render(&["operator.replicas=1", "webhook.failurePolicy=Ignore"]);
    assert!(find(&docs, "PodDisruptionBudget", "bulwark-operator").is_none());
    let pod = &object(&docs, "Deployment", "bulwark-operator")["spec"]["template"]["spec"];
    assert!(pod.get("affinity").is_none());
    assert_eq!(webhook(&docs)["failurePolicy"].as_str(), Some("Ignore"));
}

#[test]
fn bad_values_fail_with_the_field_named() {
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["webhook.failurePolicy=Maybe"],
            &["failurePolicy", "Fail", "Ignore"],
        ),
        (&["sidecar.inboundPort=70000"], &["inboundPort", "maximum"]),
        (&["sidecar.adminPort=0"], &["adminPort", "minimum"]),
        (&["operator.replicas=0"], &["replicas", "minimum"]),
        (&["operator.ports.webhook=99999"], &["webhook", "maximum"]),
        (
            &["webhook.timeoutSeconds=31"],
            &["timeoutSeconds", "maximum"],
        ),
        (
            &["webhook.url=http://operator.example/mutate"],
            &["url", "https"],
        ),
        (&["operator.image.pullPolicy=Sometimes"], &["pullPolicy"]),
        (&["sidecar.image.pullPolicy=Sometimes"], &["pullPolicy"]),
        (&["operator.logLevel=loud"], &["logLevel"]),
        (&["operator.replica=3"], &["replica", "not allowed"]),
        (&["serviceMonitor.enabled=maybe"], &["enabled", "boolean"]),
        (
            &["redis.url=redis://r:6379", "redis.existingSecret.name=r"],
            &["/redis/existingSecret/name", "maxLength"],
        ),
        (
            &["redis.existingSecret.name=r"],
            &["/redis/existingSecret/key", "minLength"],
        ),
    ];
    for (sets, expected) in cases {
        for (what, result) in [
            ("template", try_render(sets).map(|_| ())),
            ("lint", try_lint(sets)),
        ] {
            let err = match result {
                Ok(()) => panic!("helm {what} accepted {sets:?}"),
                Err(err) => err,
            };
            for needle in *expected {
                assert!(
                    err.contains(needle),
                    "helm {what} {sets:?}: error does not mention {needle:?}:\n{err}"
                );
            }
        }
    }
}

#[test]
fn the_operator_pod_is_hardened_and_wired() {
    let docs = render(&[]);
    let deployment = object(&docs, "Deployment", "bulwark-operator");
    assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(2));
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"].as_str(), Some(SA));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(pod["securityContext"]["runAsUser"].as_u64(), Some(65532));
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    let anti =
        &pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
    assert_eq!(
        anti["podAffinityTerm"]["topologyKey"].as_str(),
        Some("kubernetes.io/hostname")
    );
    assert_eq!(
        anti["podAffinityTerm"]["labelSelector"]["matchLabels"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    let container = &pod["containers"][0];
    let sc = &container["securityContext"];
    assert_eq!(sc["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(sc["runAsUser"].as_u64(), Some(65532));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    assert!(sc["capabilities"].get("add").is_none());
    assert_eq!(
        sc["seccompProfile"]["type"].as_str(),
        Some("RuntimeDefault")
    );
    assert!(container["resources"]["requests"]["cpu"].is_string());
    assert!(container["resources"]["limits"]["memory"].is_string());

    let ports: Vec<(&str, u64)> = container["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["containerPort"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("admin", 8080), ("webhook", 9443), ("distribution", 9444)]
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"].as_str(),
        Some("/healthz")
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"]["port"].as_str(),
        Some("admin")
    );

    for (name, field) in [
        ("BULWARK_NAMESPACE", "metadata.namespace"),
        ("BULWARK_POD_NAME", "metadata.name"),
        ("BULWARK_POD_UID", "metadata.uid"),
    ] {
        let var = env_var(container, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(
            var["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some(field)
        );
    }
    for (name, value) in [
        ("BULWARK_TLS_SECRET", "bulwark-operator-tls"),
        (
            "BULWARK_SIGNING_KEYS_SECRET",
            "bulwark-webhook-signing-keys",
        ),
        ("BULWARK_WEBHOOK_CONFIGURATION", "bulwark-sidecar-injector"),
        ("BULWARK_LEASE_NAME", "bulwark-operator"),
        ("BULWARK_SERVICE_NAME", "bulwark-operator"),
        (
            "BULWARK_SIDECAR_IMAGE",
            "ghcr.io/bulwark-dev/bulwark-sidecar:0.1.0",
        ),
        ("BULWARK_SIDECAR_IMAGE_PULL_POLICY", "IfNotPresent"),
        ("BULWARK_SIDECAR_INBOUND_PORT", "15080"),
        ("BULWARK_SIDECAR_ADMIN_PORT", "15090"),
        ("BULWARK_ADMIN_LISTEN", "0.0.0.0:8080"),
        ("BULWARK_WEBHOOK_LISTEN", "0.0.0.0:9443"),
        ("BULWARK_DISTRIBUTION_LISTEN", "0.0.0.0:9444"),
        ("RUST_LOG", "info"),
    ] {
        let var = env_var(container, name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(var["value"].as_str(), Some(value), "{name}");
    }

    let service = object(&docs, "Service", "bulwark-operator");
    let ports: Vec<(&str, u64, &str)> = service["spec"]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap(),
                p["port"].as_u64().unwrap(),
                p["targetPort"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("webhook", 443, "webhook"),
            ("distribution", 9444, "distribution"),
            ("admin", 8080, "admin")
        ]
    );
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );

    // Every object carries the recommended labels.
    for doc in &docs {
        let labels = &doc["metadata"]["labels"];
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
        ] {
            assert!(labels[key].is_string(), "{key} missing on {doc:?}");
        }
    }
}

#[test]
fn the_webhook_injects_only_into_opted_in_namespaces() {
    let docs = render(&["webhook.timeoutSeconds=7"]);
    let hook = webhook(&docs);
    assert_eq!(hook["name"].as_str(), Some("inject.bulwark.dev"));
    assert_eq!(strings(&hook["admissionReviewVersions"]), ["v1"]);
    assert_eq!(hook["sideEffects"].as_str(), Some("None"));
    assert_eq!(hook["timeoutSeconds"].as_u64(), Some(7));
    assert_eq!(hook["failurePolicy"].as_str(), Some("Fail"));
    assert_eq!(hook["reinvocationPolicy"].as_str(), Some("Never"));
    let rule = &hook["rules"][0];
    assert_eq!(strings(&rule["resources"]), ["pods"]);
    assert_eq!(strings(&rule["operations"]), ["CREATE"]);
    assert_eq!(strings(&rule["apiGroups"]), [""]);

    let expressions = hook["namespaceSelector"]["matchExpressions"]
        .as_sequence()
        .unwrap();
    let expression = |key: &str| {
        expressions
            .iter()
            .find(|e| e["key"].as_str() == Some(key))
            .unwrap_or_else(|| panic!("no namespaceSelector expression on {key}"))
    };
    let opt_in = expression("bulwark.dev/inject");
    assert_eq!(opt_in["operator"].as_str(), Some("In"));
    assert_eq!(strings(&opt_in["values"]), ["enabled"]);
    let spared = expression("kubernetes.io/metadata.name");
    assert_eq!(spared["operator"].as_str(), Some("NotIn"));
    let spared = strings(&spared["values"]);
    for namespace in [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "bulwark-system",
    ] {
        assert!(
            spared.contains(&namespace),
            "{namespace} not excluded: {spared:?}"
        );
    }
}

fn can_i(
    cp: &ControlPlane,
    sa_namespace: &str,
    verb: &str,
    resource: &str,
    ns: Option<&str>,
) -> bool {
    let subject = format!("--as=system:serviceaccount:{sa_namespace}:{SA}");
    let (resource, subresource) = match resource.split_once("#") {
        Some((r, s)) => (r, Some(format!("--subresource={s}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource, subject.as_str()];
    match ns {
        Some("*") => args.push("--all-namespaces"),
        Some(ns) => args.extend(["-n", ns]),
        None => {}
    }
    if let Some(sub) = &subresource {
        args.push(sub);
    }
    let out = cp.run_kubectl(&args);
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match answer.as_str() {
        "yes" => true,
        "no" => false,
        _ => panic!(
            "kubectl {}: {answer}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

fn pod_yaml(name: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {labels}\nspec:\n  containers:\n    - name: app\n      image: registry.invalid/app:1\n"
    )
}

/// Creates a pod in `ns`; Ok, or the apiserver's refusal.
fn create_pod(cp: &ControlPlane, ns: &str, name: &str, labels: &str) -> Result<(), String> {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pod_yaml(name, labels)).unwrap();
    let out = cp.run_kubectl(&["create", "-n", ns, "-f", file.path().to_str().unwrap()]);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn installed_chart_grants_exactly_what_the_operator_needs() {
    // Its own plane: the chart's cluster-scoped objects admit one Bulwark per cluster.
    let cp = ControlPlane::start();
    let release_ns = "bulwark-rbac";
    // Nothing listens there: every webhook call fails at once, on loopback.
    let [dead_port] = free_ports();
    let url = format!("https://127.0.0.1:{dead_port}/mutate");
    install_chart(&cp, release_ns, &url);
    let shop = cp.namespace("shop");
    let other = shop.name.as_str();

    // What the operator needs. "resource#sub" names a subresource; namespace None is
    // cluster-scoped, "*" all namespaces.
    let own = Some(release_ns);
    let any = Some(other);
    let mut granted: Vec<(&str, String, Option<String>)> = Vec::new();
    let mut grant = |verbs: &[&'static str], resource: &str, ns: Option<&str>| {
        for verb in verbs {
            granted.push((verb, resource.to_owned(), ns.map(str::to_owned)));
        }
    };
    grant(&["create"], "leases.coordination.k8s.io", own);
    grant(
        &["get", "update", "patch"],
        "leases.coordination.k8s.io/bulwark-operator",
        own,
    );
    grant(
        &["get", "list", "watch", "create", "update", "patch"],
        "configmaps",
        own,
    );
    grant(&["create"], "secrets", own);
    grant(
        &["get", "update", "patch"],
        "secrets/bulwark-operator-tls",
        own,
    );
    grant(
        &["get", "update", "patch"],
        "secrets/bulwark-webhook-signing-keys",
        own,
    );
    for kind in [
        "ratelimitpolicies",
        "quotapolicies",
        "featureflags",
        "webhookendpoints",
        "failoverpolicies",
    ] {
        grant(
            &["get", "list", "watch"],
            &format!("{kind}.bulwark.dev"),
            any,
        );
        grant(
            &["get", "patch", "update"],
            &format!("{kind}.bulwark.dev#status"),
            any,
        );
    }
    for resource in [
        "pods",
        "services",
        "secrets",
        "endpointslices.discovery.k8s.io",
    ] {
        grant(&["get", "list", "watch"], resource, any);
    }
    grant(&["list", "watch"], "pods", Some("*"));
    grant(&["create", "patch"], "events.events.k8s.io", any);
    grant(&["get", "list", "watch"], "namespaces", None);
    grant(&["create"], "tokenreviews.authentication.k8s.io", None);
    grant(
        &["get", "patch", "update"],
        "mutatingwebhookconfigurations.admissionregistration.k8s.io/bulwark-sidecar-injector",
        None,
    );
    grant(
        &["get", "patch", "update"],
        "validatingwebhookconfigurations.admissionregistration.k8s.io/bulwark-validation",
        None,
    );

    let mut wrong = Vec::new();
    for (verb, resource, ns) in &granted {
        if !can_i(&cp, release_ns, verb, resource, ns.as_deref()) {
            wrong.push(format!("denied: {verb} {resource} in {ns:?}"));
        }
    }

    // What it must never do.
    let denied: &[(&str, &str, Option<&str>)] = &[
        ("create", "pods", any),
        ("delete", "pods", any),
        ("update", "pods", any),
        ("patch", "pods", any),
        ("create", "pods#exec", any),
        ("create", "ratelimitpolicies.bulwark.dev", any),
        ("update", "ratelimitpolicies.bulwark.dev", any),
        ("patch", "ratelimitpolicies.bulwark.dev", any),
        ("delete", "ratelimitpolicies.bulwark.dev", any),
        ("update", "featureflags.bulwark.dev", any),
        ("delete", "webhookendpoints.bulwark.dev", any),
        ("create", "secrets", any),
        ("update", "secrets", any),
        ("patch", "secrets/bulwark-operator-tls", any),
        ("patch", "secrets/bulwark-webhook-signing-keys", any),
        ("delete", "secrets", own),
        ("update", "secrets/someone-elses", own),
        ("patch", "secrets/someone-elses", own),
        ("create", "configmaps", any),
        ("update", "configmaps", any),
        ("delete", "configmaps", own),
        ("update", "leases.coordination.k8s.io/another-lease", own),
        ("delete", "leases.coordination.k8s.io/bulwark-operator", own),
        ("create", "leases.coordination.k8s.io", any),
        ("create", "events", any),
        ("create", "services", any),
        ("update", "services", any),
        ("create", "serviceaccounts#token", own),
        ("delete", "namespaces", None),
        ("create", "namespaces", None),
        ("patch", "namespaces", None),
        (
            "list",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
        ),
        (
            "create",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
        ),
        (
            "patch",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/another-webhook",
            None,
        ),
        (
            "delete",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io/bulwark-sidecar-injector",
            None,
        ),
        (
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            None,
        ),
        (
            "patch",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/another-webhook",
            None,
        ),
        (
            "delete",
            "validatingwebhookconfigurations.admissionregistration.k8s.io/bulwark-validation",
            None,
        ),
        (
            "update",
            "customresourcedefinitions.apiextensions.k8s.io",
            None,
        ),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            None,
        ),
        ("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        ("bind", "clusterroles.rbac.authorization.k8s.io", None),
        ("impersonate", "serviceaccounts", any),
        ("create", "subjectaccessreviews.authorization.k8s.io", None),
        ("get", "nodes", None),
    ];
    for (verb, resource, ns) in denied {
        if can_i(&cp, release_ns, verb, resource, *ns) {
            wrong.push(format!("granted: {verb} {resource} in {ns:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from docs/rbac.md:\n{}",
        wrong.join("\n")
    );

    // The webhook's selectors on the real apiserver. The operator is not running, so with
    // failurePolicy Fail a pod the webhook is called for is refused.
    shop.kubectl_ok(&["label", "namespace", other, "bulwark.dev/inject=enabled"]);
    // Even labelled, the cluster's namespaces and Bulwark's own are never sent to the webhook.
    for ns in [release_ns, "kube-public"] {
        cp.kubectl_ok(&[
            "label",
            "namespace",
            ns,
            "bulwark.dev/inject=enabled",
            "--overwrite",
        ]);
    }
    let wait_for_default_sa = |ns: &str| {
        eventually(
            Duration::from_secs(30),
            "the default ServiceAccount",
            || {
                cp.run_kubectl(&["get", "serviceaccount/default", "-n", ns])
                    .status
                    .success()
                    .then_some(())
            },
        )
    };
    for ns in [other, release_ns, "kube-public"] {
        wait_for_default_sa(ns);
    }
    let refused = eventually(
        Duration::from_secs(30),
        "the webhook to refuse a pod",
        || create_pod(&cp, other, "refused", "{}").err(),
    );
    assert!(refused.contains("inject.bulwark.dev"), "{refused}");
    create_pod(&cp, release_ns, "spared", "{}").unwrap();
    create_pod(&cp, "kube-public", "spared", "{}").unwrap();
    // A pod labelled out of injection is not sent to the webhook either.
    create_pod(&cp, other, "opted-out", "{bulwark.dev/inject: \"false\"}").unwrap();

    // `helm upgrade` keeps the caBundle the operator patched in (the template never sets it),
    // and failurePolicy Ignore admits pods while the operator is down.
    let ca = std::fs::read(cp.dir.join("pki/ca.crt")).unwrap();
    let ca = base64(&ca);
    cp.set_injector_ca_bundle(&ca);
    cp.helm_ok(&[
        "upgrade",
        "bulwark",
        &chart(),
        "--namespace",
        release_ns,
        "--set",
        &format!("webhook.url={url}"),
        "--set",
        "webhook.failurePolicy=Ignore",
        "--set",
        "webhook.timeoutSeconds=3",
    ]);
    let live = cp.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/bulwark-sidecar-injector",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle} {.webhooks[0].failurePolicy} {.webhooks[0].timeoutSeconds} {.webhooks[0].clientConfig.url}",
    ]);
    assert_eq!(live, format!("{ca} Ignore 3 {url}"), "after helm upgrade");
    eventually(Duration::from_secs(30), "Ignore to admit pods", || {
        create_pod(&cp, other, "admitted", "{}").ok()
    });
}

/// Standard base64 (the e2e crate has no base64 dependency, and this is all it needs).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A kubeconfig for this plane that authenticates with `token` (a ServiceAccount's), as the
/// operator's pod does in a cluster.
fn token_kubeconfig(cp: &ControlPlane, token: &str, path: &std::path::Path) {
    let admin: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {
            "server": cluster["server"].as_str().unwrap(),
            "certificate-authority-data": cluster["certificate-authority-data"].as_str().unwrap(),
        }}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "plane", "user": "operator"}}],
        "current-context": "operator",
    });
    std::fs::write(path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
}

#[test]
fn the_operator_works_with_only_the_charts_permissions() {
    use bulwark_e2e::{
        process::{Running, wait_for_status},
        workspace_binary,
    };

    // Its own plane (one Bulwark per cluster). The apiserver calls the webhook on loopback.
    let cp = ControlPlane::start();
    let release_ns = "bulwark-run";
    let [admin_port, webhook_port, distribution_port] = free_ports();
    install_chart(
        &cp,
        release_ns,
        &format!("https://127.0.0.1:{webhook_port}/mutate"),
    );

    // The operator, authenticated as the chart's ServiceAccount and nothing more.
    let token = cp.kubectl_ok(&["create", "token", SA, "-n", release_ns, "--duration=1h"]);
    let kubeconfig = cp.dir.join("operator-sa.kubeconfig");
    token_kubeconfig(&cp, token.trim(), &kubeconfig);
    let identity = "bulwark-operator-rbac-0";
    // The pod this replica would run in (no kubelet runs it): it owns the replica's report.
    create_pod(&cp, release_ns, identity, "{}").unwrap();
    let pod_uid = cp.kubectl_ok(&[
        "get",
        "pod",
        identity,
        "-n",
        release_ns,
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let mut cmd = Command::new(workspace_binary("bulwark-operator"));
    cmd.args(["--kubeconfig", kubeconfig.to_str().unwrap()])
        .args(["--namespace", release_ns, "--pod-name", identity])
        .args(["--pod-uid", pod_uid.trim()])
        .args(["--admin-listen", &admin.to_string()])
        .args(["--api-check-interval-seconds", "1"])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
        .args([
            "--distribution-listen",
            &format!("127.0.0.1:{distribution_port}"),
        ])
        .args(["--tls-extra-sans", "127.0.0.1"])
        .env("RUST_LOG", "info");
    let log = cp.dir.join("logs/operator-sa.log");
    let mut operator = Running::spawn("bulwark-operator", cmd, &log);
    wait_for_status(admin, "/readyz", 200, Duration::from_secs(30));

    let get = |args: &[&str]| -> Option<String> {
        let out = cp.run_kubectl(args);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    // Its TLS Secret (create), its CA in the webhook configuration (get/patch by name).
    let secret_ca = eventually(Duration::from_secs(30), "the TLS Secret", || {
        get(&[
            "get",
            "secret/bulwark-operator-tls",
            "-n",
            release_ns,
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
    });
    let ca = eventually(Duration::from_secs(30), "the caBundle", || {
        get(&[
            "get",
            "mutatingwebhookconfiguration/bulwark-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    });
    assert_eq!(ca, secret_ca);
    // Leader election (the Lease) and its distribution report (server-side apply of a ConfigMap).
    let holder = eventually(Duration::from_secs(30), "the leader Lease", || {
        get(&[
            "get",
            "lease/bulwark-operator",
            "-n",
            release_ns,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
    });
    assert_eq!(holder, identity);
    let report = format!("configmap/bulwark-distribution-{identity}");
    let report_owner = eventually(Duration::from_secs(30), "the distribution report", || {
        get(&[
            "get",
            &report,
            "-n",
            release_ns,
            "-o",
            "jsonpath={.metadata.ownerReferences[0].kind}/{.metadata.ownerReferences[0].name}/{.metadata.ownerReferences[0].uid}",
        ])
    });
    assert_eq!(report_owner, format!("Pod/{identity}/{}", pod_uid.trim()));

    // The apiserver calls the webhook (TLS, with the caBundle the operator set) and the pod of a
    // labelled namespace gets its sidecar.
    let shop = cp.namespace("shop");
    shop.kubectl_ok(&[
        "label",
        "namespace",
        &shop.name,
        "bulwark.dev/inject=enabled",
    ]);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n    - name: app\n      image: registry.invalid/app:1\n      ports: [{name: http, containerPort: 8080}]\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), pod).unwrap();
    eventually(Duration::from_secs(30), "the injected pod", || {
        shop.run_kubectl(&["create", "-f", file.path().to_str().unwrap()])
            .status
            .success()
            .then_some(())
    });
    let containers = shop.kubectl_ok(&[
        "get",
        "pod/web",
        "-o",
        "jsonpath={.spec.initContainers[*].name} {.spec.containers[*].name}",
    ]);
    assert!(containers.contains("bulwark-sidecar"), "{containers}");

    // As leader it writes policies' status (the status subresource) in any namespace.
    shop.kubectl_ok(&[
        "apply",
        "-f",
        repo_root()
            .join("examples/ratelimitpolicy-per-client-ip.yaml")
            .to_str()
            .unwrap(),
    ]);
    eventually(
        Duration::from_secs(30),
        "status written by the leader",
        || {
            let out = shop.run_kubectl(&[
                "get",
                "ratelimitpolicies",
                "-o",
                "jsonpath={.items[0].status.conditions[?(@.type==\"Accepted\")].status}",
            ]);
            let status = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (!status.is_empty()).then_some(())
        },
    );

    // As leader it records WebhookEndpoint signing keys in its ledger Secret (created by
    // server-side apply), and a rotation there (patched by name).
    shop.kubectl_ok(&[
        "apply",
        "-f",
        repo_root()
            .join("examples/webhookendpoint-signed.yaml")
            .to_str()
            .unwrap(),
    ]);
    let ledger = |cp: &ControlPlane| -> Option<String> {
        let out = cp.run_kubectl(&[
            "get",
            "secret/bulwark-webhook-signing-keys",
            "-n",
            release_ns,
            "-o",
            r#"go-template={{index .data "keys.json" | base64decode}}"#,
        ]);
        let json = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !json.is_empty()).then_some(json)
    };
    eventually(Duration::from_secs(30), "the signing-key ledger", || {
        ledger(&cp).filter(|l| l.contains("partner-billing-events"))
    });
    shop.kubectl_ok(&[
        "patch",
        "secret/partner-billing-webhook-signing",
        "--type",
        "merge",
        "-p",
        r#"{"stringData":{"signing-secret":"whsec_cm90YXRlZC1leGFtcGxlLWtleQ=="}}"#,
    ]);
    eventually(
        Duration::from_secs(30),
        "the rotation in the ledger",
        || ledger(&cp).filter(|l| l.contains("notAfter")),
    );

    let status = operator.terminate(Duration::from_secs(10));
    assert!(status.success(), "operator exited with {status}");
    // Nothing it tried was refused.
    let text = std::fs::read_to_string(&log).unwrap();
    let refused: Vec<&str> = text
        .lines()
        .filter(|l| l.to_lowercase().contains("forbidden"))
        .collect();
    assert!(
        refused.is_empty(),
        "the operator was refused with the chart's RBAC:\n{}",
        refused.join("\n")
    );

    // Its pod gone, the garbage collector deletes its report (the operator may not).
    cp.kubectl_ok(&["delete", "pod", identity, "-n", release_ns, "--wait=false"]);
    eventually(
        Duration::from_secs(60),
        "the report to be collected",
        || {
            let out = cp.run_kubectl(&["get", &report, "-n", release_ns, "-o", "name"]);
            String::from_utf8_lossy(&out.stderr)
                .contains("NotFound")
                .then_some(())
        },
    );
}
