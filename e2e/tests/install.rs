//! Installing Bulwark on a fresh control plane, with the chart and with the rendered manifests,
//! and the operator's readiness following what is installed.

use std::{net::SocketAddr, time::Duration};

use bulwark_e2e::{
    ControlPlane, eventually, free_ports,
    process::{Running, http_get, wait_for_status},
    repo_root, stdout_or_panic, workspace_binary,
};

/// Everything the chart installs besides the CRDs, present in `namespace` and cluster-wide.
fn assert_operator_objects(cp: &ControlPlane, namespace: &str) {
    for object in [
        "serviceaccount/bulwark-operator",
        "deployment/bulwark-operator",
        "service/bulwark-operator",
        "poddisruptionbudget/bulwark-operator",
        "role.rbac.authorization.k8s.io/bulwark-operator",
        "rolebinding.rbac.authorization.k8s.io/bulwark-operator",
    ] {
        cp.kubectl_ok(&["get", object, "-n", namespace]);
    }
    for object in [
        "clusterrole/bulwark-operator",
        "clusterrolebinding/bulwark-operator",
        "mutatingwebhookconfiguration/bulwark-sidecar-injector",
    ] {
        cp.kubectl_ok(&["get", object]);
    }
    let replicas = cp.kubectl_ok(&[
        "get",
        "deployment/bulwark-operator",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas.trim(), "2", "default replicas");
}

#[test]
fn helm_install_brings_the_api_and_the_operator_becomes_ready() {
    // Its own plane: this test needs one where Bulwark's CRDs are not installed yet.
    let cp = ControlPlane::start();
    let chart = repo_root().join("charts/bulwark");
    let chart = chart.to_str().unwrap();

    // The operator keeps its TLS Secret and Lease in its namespace, so that exists first (as
    // `helm install --create-namespace` would make it); `helm install` below accepts it.
    cp.kubectl_ok(&["create", "namespace", "bulwark-system"]);
    let [admin_port, webhook_port, distribution_port] = free_ports();
    let admin: SocketAddr = ([127, 0, 0, 1], admin_port).into();
    let mut operator_cmd = std::process::Command::new(workspace_binary("bulwark-operator"));
    operator_cmd
        .args(["--kubeconfig", cp.kubeconfig.to_str().unwrap()])
        .args(["--namespace", "bulwark-system"])
        .args([
            "--admin-listen",
            &admin.to_string(),
            "--api-check-interval-seconds",
            "1",
        ])
        .args(["--webhook-listen", &format!("127.0.0.1:{webhook_port}")])
        .args([
            "--distribution-listen",
            &format!("127.0.0.1:{distribution_port}"),
        ]);
    let mut operator = Running::spawn(
        "bulwark-operator",
        operator_cmd,
        &cp.dir.join("logs/operator.log"),
    );

    // Before the CRDs exist the operator is alive but not ready, and says what is missing.
    wait_for_status(admin, "/healthz", 200, Duration::from_secs(20));
    // (It answers 503 "starting" until its first check has run.)
    let not_ready = eventually(
        Duration::from_secs(20),
        "/readyz to name the missing kinds",
        || http_get(admin, "/readyz").filter(|r| r.body.contains("ratelimitpolicies")),
    );
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);

    cp.helm_ok(&["lint", chart, "--strict"]);

    // values.schema.json turns bad values into a clear error before anything is installed.
    let bad = cp
        .helm()
        .args(["install", "bad", chart, "--set", "operator.replicas=0"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("replicas") && err.contains("minimum"), "{err}");

    cp.helm_ok(&[
        "install",
        "bulwark",
        chart,
        "--namespace",
        "bulwark-system",
        "--create-namespace",
    ]);
    // No `--wait`: this plane has no kubelet, so the operator's pods are stored but never run and
    // the Deployment never becomes available. The objects themselves must all be there.
    assert_operator_objects(&cp, "bulwark-system");
    let crds = cp.kubectl_ok(&["get", "crd", "-o", "name"]);
    for (_, crd) in bulwark_api::crd::all() {
        assert!(
            crds.contains(crd.metadata.name.as_deref().unwrap()),
            "{crds}"
        );
    }
    cp.install_crds(); // waits until Established (and re-applying what helm installed is a no-op)

    wait_for_status(admin, "/readyz", 200, Duration::from_secs(20));
    let metrics = http_get(admin, "/metrics").unwrap();
    assert!(
        metrics.body.contains("bulwark_operator_api_ready 1"),
        "{}",
        metrics.body
    );

    // The operator writes its CA into the chart's webhook configuration (it retries every 30 s
    // until the configuration exists), and `helm upgrade` keeps it: the template has no caBundle.
    let ca_bundle = || {
        cp.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration/bulwark-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ])
    };
    let ca = eventually(
        Duration::from_secs(60),
        "the operator to set caBundle",
        || Some(ca_bundle()).filter(|ca| !ca.is_empty()),
    );
    let secret_ca = cp.kubectl_ok(&[
        "get",
        "secret/bulwark-operator-tls",
        "-n",
        "bulwark-system",
        "-o",
        "jsonpath={.data.ca\\.crt}",
    ]);
    assert!(
        !secret_ca.is_empty(),
        "no ca.crt in the operator's TLS Secret"
    );
    assert_eq!(
        ca, secret_ca,
        "caBundle is not the CA of the operator's Secret"
    );
    cp.helm_ok(&[
        "upgrade",
        "bulwark",
        chart,
        "--namespace",
        "bulwark-system",
        "--set",
        "webhook.timeoutSeconds=7",
    ]);
    let timeout = cp.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/bulwark-sidecar-injector",
        "-o",
        "jsonpath={.webhooks[0].timeoutSeconds}",
    ]);
    assert_eq!(timeout, "7", "helm upgrade did not apply");
    assert_eq!(ca_bundle(), ca, "helm upgrade wiped the caBundle");

    // manifests/ is the chart rendered with default values, and installs as well.
    let render = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/render-manifests.sh"))
        .output()
        .unwrap();
    let rendered = stdout_or_panic("scripts/render-manifests.sh", &[], render);
    let committed = std::fs::read_to_string(repo_root().join("manifests/bulwark.yaml")).unwrap();
    assert!(
        committed == rendered,
        "manifests/bulwark.yaml is out of date with the chart: run `make manifests`"
    );

    // Uninstalling removes the operator but keeps the CRDs and so every policy (Helm never
    // deletes a chart's crds/).
    let ns = cp.namespace("shop");
    ns.kubectl_ok(&[
        "apply",
        "-f",
        repo_root()
            .join("examples/ratelimitpolicy-per-client-ip.yaml")
            .to_str()
            .unwrap(),
    ]);
    cp.helm_ok(&["uninstall", "bulwark", "--namespace", "bulwark-system"]);
    let gone = cp.run_kubectl(&["get", "deployment/bulwark-operator", "-n", "bulwark-system"]);
    assert!(
        !gone.status.success(),
        "the Deployment outlived helm uninstall"
    );
    let gone = cp.run_kubectl(&[
        "get",
        "mutatingwebhookconfiguration/bulwark-sidecar-injector",
    ]);
    assert!(
        !gone.status.success(),
        "the webhook outlived helm uninstall"
    );
    let policies = ns.kubectl_ok(&["get", "ratelimitpolicies", "-o", "name"]);
    assert!(
        !policies.trim().is_empty(),
        "policies were lost with the release"
    );

    // The rendered manifests install the same objects (Namespace included).
    let manifests = repo_root().join("manifests");
    cp.kubectl_ok(&["apply", "-f", manifests.to_str().unwrap()]);
    assert_operator_objects(&cp, "bulwark-system");

    // Re-applying them keeps the caBundle the operator writes into the webhook configuration
    // (absent from the manifests, so kubectl's three-way merge leaves it alone). The operator,
    // healthy, does not look again for an hour; the test writes the value itself.
    cp.set_injector_ca_bundle(&ca);
    cp.kubectl_ok(&["apply", "-f", manifests.to_str().unwrap()]);
    let live = cp.kubectl_ok(&[
        "get",
        "mutatingwebhookconfiguration/bulwark-sidecar-injector",
        "-o",
        "jsonpath={.webhooks[0].clientConfig.caBundle}",
    ]);
    assert_eq!(live, ca, "kubectl apply -f manifests/ wiped the caBundle");

    let status = operator.terminate(Duration::from_secs(10));
    assert!(status.success(), "operator exited with {status} on SIGTERM");
}
