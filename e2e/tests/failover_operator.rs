//! Failover driven by the cluster: the chart installed with helm, the operator as a local
//! process with the chart's ServiceAccount, an injected pod's sidecar (its token bound to the
//! pod) whose FailoverPolicy names two Services. Their endpoints are EndpointSlices the test
//! writes with kubectl, pointing at real backends (`fault_upstream.py`) on loopback: deleting
//! and recreating slices moves the app's outbound calls between the groups, with no call lost.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bulwark_e2e::{
    ControlPlane, Namespace, eventually,
    fault_upstream::FaultUpstream,
    operator::{Operator, OperatorPorts, service_account_kubeconfig},
    output_with_stdin,
    process::{send_raw, wait_for_status},
    repo_root,
    sidecar::Sidecar,
    stdout_or_panic,
};

/// The release's namespace, distinct from the other suites' `bulwark-system`.
const RELEASE_NS: &str = "bulwark-failover-system";

fn apply(cp: &ControlPlane, yaml: &str) {
    let mut kubectl = cp.kubectl();
    kubectl.args(["apply", "-f", "-"]);
    stdout_or_panic(
        "kubectl",
        &["apply", "-f", "-"],
        output_with_stdin(kubectl, yaml),
    );
}

fn jsonpath(ns: &Namespace<'_>, object: &str, path: &str) -> String {
    ns.kubectl_ok(&["get", object, "-o", &format!("jsonpath={path}")])
}

/// A selector-less Service with one port, `http` 8080.
fn service(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  ports: [{{name: http, port: 8080, protocol: TCP}}]\n"
    )
}

/// An EndpointSlice of `service` with one ready endpoint: `backend`'s address and port. A slice
/// has one port list for all its endpoints, so each backend (its own port) gets its own slice.
///
/// The apiserver refuses loopback addresses in `IPv4` slices ("may not be in the loopback
/// range") and one-label names such as `localhost` in `FQDN` ones, but takes `127.0.0.1` as an
/// FQDN (four numeric labels; with a deprecation warning). The operator copies addresses as
/// they are, whatever the type, and the sidecar parses `127.0.0.1:port` as a socket address:
/// so the backends stay on loopback.
fn slice(ns: &str, name: &str, service: &str, backend: &FaultUpstream) -> String {
    format!(
        r#"apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {service}}}
addressType: FQDN
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: ["{ip}"]
  conditions: {{ready: true}}
"#,
        ip = backend.addr.ip(),
        port = backend.addr.port(),
    )
}

fn failover_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: payments-failover, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: checkout}}}}
  upstreams:
  - name: payments
    match: {{hosts: [payments, "payments:8080"]}}
    groups:
    - name: primary
      backends: [{{service: {{name: payments, port: 8080}}}}]
    - name: secondary
      backends: [{{service: {{name: payments-dr, port: 8080}}}}]
    failover: {{failbackAfter: 1s}}
    retry: {{attempts: 2}}
"#
    )
}

/// The app's call `GET http://payments:8080/pay` through the sidecar's outbound listener:
/// the backend that served it (the body), or `status <code>` / `no answer` otherwise.
fn call(sidecar: &Sidecar) -> String {
    match send_raw(
        sidecar.outbound,
        "GET http://payments:8080/pay HTTP/1.1\r\nHost: payments:8080\r\nConnection: close\r\n\r\n",
    ) {
        Some(r) if r.status == 200 => r.body,
        Some(r) => format!("status {}: {}", r.status, r.body),
        None => "no answer".to_string(),
    }
}

fn tally(served: &[String]) -> BTreeMap<&str, usize> {
    let mut counts = BTreeMap::new();
    for s in served {
        *counts.entry(s.as_str()).or_default() += 1;
    }
    counts
}

#[test]
fn a_failover_policy_over_two_services_follows_their_endpoint_slices() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let primary_a = FaultUpstream::start(work.path(), "primary-a");
    let primary_b = FaultUpstream::start(work.path(), "primary-b");
    let secondary = FaultUpstream::start(work.path(), "secondary");

    // --- The chart, and the operator as its ServiceAccount. -----------------------------------
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
    ]);
    let sa_kubeconfig = service_account_kubeconfig(cp, RELEASE_NS, "bulwark-operator");
    let _operator = Operator::start(
        &sa_kubeconfig,
        RELEASE_NS,
        "op-a",
        ports,
        &cp.dir.join("logs"),
        &[],
    );
    wait_for_status(ports.admin, "/readyz", 200, Duration::from_secs(30));
    eventually(Duration::from_secs(20), "the webhook's caBundle", || {
        let ca = cp.kubectl_ok(&[
            "get",
            "mutatingwebhookconfiguration/bulwark-sidecar-injector",
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        (!ca.is_empty()).then_some(())
    });

    // --- An injected pod, and its sidecar with a token bound to it. ---------------------------
    let ns = cp.namespace("checkout");
    cp.kubectl_ok(&["label", "namespace", &ns.name, "bulwark.dev/inject=enabled"]);
    eventually(
        Duration::from_secs(20),
        "the default ServiceAccount",
        || {
            ns.run_kubectl(&["get", "serviceaccount", "default"])
                .status
                .success()
                .then_some(())
        },
    );
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: checkout-0, namespace: {}, labels: {{app: checkout}}}}\nspec:\n  containers: [{{name: app, image: registry.example/checkout:1}}]\n",
            ns.name
        ),
    );
    let ca = ns.kubectl_ok(&[
        "get",
        "pod",
        "checkout-0",
        "-o",
        "jsonpath={.spec.initContainers[?(@.name==\"bulwark-sidecar\")].env[?(@.name==\"BULWARK_OPERATOR_CA\")].value}",
    ]);
    assert!(
        ca.contains("BEGIN CERTIFICATE"),
        "the pod is injected: {ca:?}"
    );
    let ca_path = work.path().join("operator-ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let token = ns.kubectl_ok(&[
        "create",
        "token",
        "default",
        "--audience",
        "bulwark",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "checkout-0",
    ]);
    let token_path = work.path().join("token");
    std::fs::write(&token_path, token.trim()).unwrap();
    let sidecar = Sidecar::start(
        "127.0.0.1:9".parse().unwrap(), // the app (inbound) is not used here
        &work.path().join("sidecar"),
        &[
            "--operator-url",
            &format!("https://{}", ports.distribution),
            "--operator-ca-file",
            ca_path.to_str().unwrap(),
            "--token-file",
            token_path.to_str().unwrap(),
        ],
    );
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(20));

    // --- Two selector-less Services; payments' two backends listen on different ports, so
    // each has its own slice. -----------------------------------------------------------------
    let n = ns.name.as_str();
    apply(
        cp,
        &[
            service(n, "payments"),
            service(n, "payments-dr"),
            slice(n, "payments-a", "payments", &primary_a),
            slice(n, "payments-b", "payments", &primary_b),
            slice(n, "payments-dr-a", "payments-dr", &secondary),
        ]
        .join("---\n"),
    );
    // Nothing in the control plane rewrites or removes slices of selector-less Services.
    let stored = ns.kubectl_ok(&[
        "get",
        "endpointslices",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.endpoints[*].addresses[*]}:{.ports[*].port} {end}",
    ]);
    let expected = format!(
        "payments-a=127.0.0.1:{} payments-b=127.0.0.1:{} payments-dr-a=127.0.0.1:{} ",
        primary_a.addr.port(),
        primary_b.addr.port(),
        secondary.addr.port()
    );
    assert_eq!(stored, expected);

    // --- The policy: Accepted, and programmed in the one pod it selects. ----------------------
    apply(cp, &failover_policy(n));
    let fop = "failoverpolicy/payments-failover";
    eventually(Duration::from_secs(20), "Accepted, Programmed 1/1", || {
        let status = jsonpath(
            &ns,
            fop,
            "{.status.programmedPods}/{.status.selectedPods} {.status.conditions[*].type}={.status.conditions[*].status}",
        );
        (status == "1/1 Accepted Programmed=True True").then_some(())
    });

    // Every call of the test, in order: each must be served.
    let mut served: Vec<String> = Vec::new();

    // --- Both primary endpoints serve, the secondary none. -----------------------------------
    let first: Vec<String> = (0..10).map(|_| call(&sidecar)).collect();
    assert_eq!(
        tally(&first),
        BTreeMap::from([("primary-a", 5), ("primary-b", 5)]),
        "{first:?}"
    );
    assert_eq!(secondary.count(), 0);
    served.extend(first);

    // --- The primary's slices deleted: the calls move to the secondary. -----------------------
    let deleted = Instant::now();
    ns.kubectl_ok(&["delete", "endpointslice", "payments-a", "payments-b"]);
    eventually(
        Duration::from_secs(20),
        "calls served by the secondary",
        || {
            let who = call(&sidecar);
            served.push(who.clone());
            (who == "secondary").then_some(())
        },
    );
    eprintln!(
        "slices deleted → served by the secondary: {:?}",
        deleted.elapsed()
    );
    let primaries = (primary_a.count(), primary_b.count());
    let after: Vec<String> = (0..10).map(|_| call(&sidecar)).collect();
    assert_eq!(
        tally(&after),
        BTreeMap::from([("secondary", 10)]),
        "{after:?}"
    );
    assert_eq!((primary_a.count(), primary_b.count()), primaries);
    served.extend(after);

    // --- One primary slice back: after failbackAfter, traffic returns to the primary. ---------
    let recreated = Instant::now();
    apply(cp, &slice(n, "payments-a", "payments", &primary_a));
    eventually(Duration::from_secs(20), "calls back on the primary", || {
        let who = call(&sidecar);
        served.push(who.clone());
        (who == "primary-a").then_some(())
    });
    let took = recreated.elapsed();
    eprintln!("slice recreated → served by the primary: {took:?}");
    assert!(
        took >= Duration::from_secs(1),
        "failbackAfter holds: {took:?}"
    );
    let secondary_served = secondary.count();
    let back: Vec<String> = (0..10).map(|_| call(&sidecar)).collect();
    assert_eq!(
        tally(&back),
        BTreeMap::from([("primary-a", 10)]),
        "{back:?}"
    );
    assert_eq!(secondary.count(), secondary_served);
    served.extend(back);

    // No call failed, and the backends' own counts agree with what the app saw.
    let all = tally(&served);
    assert!(
        all.keys()
            .all(|k| ["primary-a", "primary-b", "secondary"].contains(k)),
        "{all:?}"
    );
    for backend in [&primary_a, &primary_b, &secondary] {
        assert_eq!(
            backend.count() as usize,
            all.get(backend.name.as_str()).copied().unwrap_or(0),
            "{}",
            backend.name
        );
    }
}
