//! Failover driven by the cluster: the chart installed with helm, the operator as a local
//! process with the chart's ServiceAccount, an injected pod's sidecar (its token bound to the
//! pod) whose FailoverPolicy names two Services. Their endpoints are EndpointSlices the test
//! writes with kubectl, pointing at real backends (`fault_upstream.py`) on loopback: deleting
//! and recreating slices moves the app's outbound calls between the groups, with no call lost;
//! with `zoneAware`, the slices' zones and the sidecar's `--zone` bound the calls kept in the
//! pod's zone, and a dead local endpoint spills its calls to the other zones. The same harness
//! checks the other thing the operator reads from Services into a pod's snapshot: the app
//! port's protocol, from the `appProtocol` of a Service selecting the pod.

use std::{
    collections::BTreeMap,
    sync::OnceLock,
    time::{Duration, Instant},
};

use bulwark_e2e::{
    ControlPlane, Namespace, eventually, fault_upstream::FaultUpstream, operator::Release,
    output_with_stdin, process::send_raw, sidecar::Sidecar, stdout_or_panic,
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
    zoned_slice(ns, name, service, backend, None)
}

/// As [`slice`], its endpoint in `zone` when given (`endpoints[].zone`, which the operator
/// sends with the address: what `zoneAware` compares with the sidecar's `--zone`).
fn zoned_slice(
    ns: &str,
    name: &str,
    service: &str,
    backend: &FaultUpstream,
    zone: Option<&str>,
) -> String {
    let zone = zone.map(|z| format!("  zone: {z}\n")).unwrap_or_default();
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
{zone}"#,
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
    call_service(sidecar, "payments", "/pay")
}

/// The app's call `GET http://<service>:8080<path>` through the sidecar's outbound listener,
/// as [`call`].
fn call_service(sidecar: &Sidecar, service: &str, path: &str) -> String {
    match send_raw(
        sidecar.outbound,
        &format!(
            "GET http://{service}:8080{path} HTTP/1.1\r\nHost: {service}:8080\r\nConnection: close\r\n\r\n"
        ),
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

fn release(cp: &ControlPlane) -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| Release::install(cp, RELEASE_NS))
}

/// Waits until FailoverPolicy `name` is Accepted and programmed in the one pod it selects.
fn wait_programmed(ns: &Namespace<'_>, name: &str) {
    let fop = format!("failoverpolicy/{name}");
    eventually(Duration::from_secs(20), "Accepted, Programmed 1/1", || {
        let status = jsonpath(
            ns,
            &fop,
            "{.status.programmedPods}/{.status.selectedPods} {.status.conditions[*].type}={.status.conditions[*].status}",
        );
        (status == "1/1 Accepted Programmed=True True").then_some(())
    });
}

#[test]
fn a_failover_policy_over_two_services_follows_their_endpoint_slices() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let primary_a = FaultUpstream::start(work.path(), "primary-a");
    let primary_b = FaultUpstream::start(work.path(), "primary-b");
    let secondary = FaultUpstream::start(work.path(), "secondary");

    // --- The chart and the operator (once per binary); an injected pod, and its sidecar with a
    // token bound to it. ------------------------------------------------------------------------
    let (ns, sidecar) = release(cp).injected_sidecar(cp, work.path(), "checkout", &[]);

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
    wait_programmed(&ns, "payments-failover");

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

/// One Service, `catalog`, over every zone: a zone-aware policy's group.
fn zone_aware_policy(ns: &str) -> String {
    format!(
        r#"apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: catalog-failover, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: storefront}}}}
  upstreams:
  - name: catalog
    match: {{hosts: [catalog, "catalog:8080"]}}
    groups:
    - name: all-zones
      backends: [{{service: {{name: catalog, port: 8080}}}}]
    failover: {{zoneAware: true}}
    retry: {{attempts: 2}}
"#
    )
}

#[test]
fn zone_aware_calls_stay_in_the_pods_zone_up_to_its_share_and_spill_when_it_fails() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    // Each backend answers with its name; zone-a holds 1 of the 4 endpoints, zone-b 2, zone-c 1.
    let mut local = FaultUpstream::start(work.path(), "zone-a");
    let remote = [
        (FaultUpstream::start(work.path(), "zone-b-1"), "zone-b"),
        (FaultUpstream::start(work.path(), "zone-b-2"), "zone-b"),
        (FaultUpstream::start(work.path(), "zone-c"), "zone-c"),
    ];
    let remote_names: Vec<&str> = remote.iter().map(|(b, _)| b.name.as_str()).collect();

    // --- The pod runs in zone-a (what the injector passes from its topology label). ----------
    let (ns, sidecar) =
        release(cp).injected_sidecar(cp, work.path(), "storefront", &["--zone", "zone-a"]);

    // --- Service catalog: one slice per backend, each endpoint with its zone. ----------------
    let n = ns.name.as_str();
    let mut objects = vec![
        service(n, "catalog"),
        zoned_slice(n, "catalog-a", "catalog", &local, Some("zone-a")),
    ];
    for (backend, zone) in &remote {
        let name = format!("catalog-{}", backend.name.trim_start_matches("zone-"));
        objects.push(zoned_slice(n, &name, "catalog", backend, Some(zone)));
    }
    apply(cp, &objects.join("---\n"));
    let stored = ns.kubectl_ok(&[
        "get",
        "endpointslices",
        "-o",
        "jsonpath={range .items[*]}{.metadata.name}={.endpoints[*].zone} {end}",
    ]);
    assert_eq!(
        stored,
        "catalog-a=zone-a catalog-b-1=zone-b catalog-b-2=zone-b catalog-c=zone-c "
    );

    // --- The policy, programmed; the sidecar holds the four endpoints with their zones. -------
    apply(cp, &zone_aware_policy(n));
    wait_programmed(&ns, "catalog-failover");
    let mut expected: Vec<(String, String)> = std::iter::once((&local, "zone-a"))
        .chain(remote.iter().map(|(b, z)| (b, *z)))
        .map(|(b, z)| (b.addr.to_string(), z.to_string()))
        .collect();
    expected.sort();
    eventually(
        Duration::from_secs(20),
        "the sidecar's four zoned endpoints",
        || {
            let report = bulwark_e2e::process::http_get(sidecar.admin, "/failover")?;
            let report: serde_json::Value = serde_json::from_str(&report.body).ok()?;
            let mut endpoints: Vec<(String, String)> =
                report["upstreams"][0]["groups"][0]["endpoints"]
                    .as_array()?
                    .iter()
                    .map(|e| {
                        (
                            e["address"].as_str().unwrap_or_default().to_string(),
                            e["zone"].as_str().unwrap_or_default().to_string(),
                        )
                    })
                    .collect();
            endpoints.sort();
            (endpoints == expected).then_some(())
        },
    );

    // --- 400 calls: zone-a keeps min(1, 1 endpoint × 3 zones / 4 endpoints) = 75% of them, the
    // other zones share the rest. ---------------------------------------------------------------
    let started = Instant::now();
    let calls: Vec<String> = (0..400)
        .map(|_| call_service(&sidecar, "catalog", "/items"))
        .collect();
    let counts = tally(&calls);
    eprintln!(
        "400 zone-aware calls in {:?}: {counts:?}",
        started.elapsed()
    );
    assert!(
        counts
            .keys()
            .all(|k| *k == "zone-a" || remote_names.contains(k)),
        "every call served: {counts:?}"
    );
    let share = counts.get("zone-a").copied().unwrap_or(0) as f64 / 400.0;
    eprintln!("local share {share:.3} (expected 0.75)");
    // 0.75 ± 0.10 is over 4.5 standard deviations (√(400 × 0.75 × 0.25) ≈ 8.7 calls) each way.
    assert!(
        (0.65..=0.85).contains(&share),
        "zone-a's share {share}: {counts:?}"
    );
    for name in &remote_names {
        assert!(
            counts.get(name).copied().unwrap_or(0) > 0,
            "{name} gets some of the spill: {counts:?}"
        );
    }
    // The backends' own counts agree with what the app saw.
    for backend in std::iter::once(&local).chain(remote.iter().map(|(b, _)| b)) {
        assert_eq!(
            backend.count() as usize,
            counts.get(backend.name.as_str()).copied().unwrap_or(0),
            "{}",
            backend.name
        );
    }

    // --- zone-a's backend dies: its calls' connect failures are retried in the other zones,
    // and no call fails. -----------------------------------------------------------------------
    let retries = sidecar.metric_sum("bulwark_failover_retries_total");
    local.kill();
    let after: Vec<String> = (0..50)
        .map(|_| call_service(&sidecar, "catalog", "/items"))
        .collect();
    let after_counts = tally(&after);
    eprintln!("50 calls with zone-a dead: {after_counts:?}");
    assert!(
        after.iter().all(|who| remote_names.contains(&who.as_str())),
        "every call served by zone-b or zone-c: {after_counts:?}"
    );
    // Without health checks or outlier detection zone-a stays a candidate: about 3 in 4 calls
    // try it first, fail to connect, and are retried elsewhere.
    let connect_failures = sidecar.metric_sum(&format!(
        "bulwark_failover_tries_total{{endpoint=\"{}\",policy=\"{n}/catalog-failover\",result=\"connect_failure\"",
        local.addr
    ));
    let retried = sidecar.metric_sum("bulwark_failover_retries_total") - retries;
    eprintln!("zone-a connect failures {connect_failures}, retries {retried}");
    assert!(connect_failures > 0.0, "calls tried the dead zone-a first");
    assert_eq!(
        retried, connect_failures,
        "each connect failure was retried once, elsewhere"
    );
}

/// Service `rpc` selecting the pods `app: rpc`, its one port sending to 8080 (the app port of the
/// injected pod, which declares no containerPort) with `appProtocol`.
fn rpc_service(ns: &str, app_protocol: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: rpc, namespace: {ns}}}\nspec:\n  selector: {{app: rpc}}\n  ports: [{{name: api, port: 80, targetPort: 8080, protocol: TCP, appProtocol: {app_protocol}}}]\n"
    )
}

#[test]
fn the_app_protocol_follows_the_app_protocol_of_the_service_selecting_the_pod() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let (ns, sidecar) = release(cp).injected_sidecar(cp, work.path(), "rpc", &[]);
    // The snapshot's `appProtocol` as the sidecar holds it (`absent` when unset).
    let app_protocol = || -> Option<String> {
        let config = bulwark_e2e::process::http_get(sidecar.admin, "/config")?;
        let snapshot: serde_json::Value = serde_json::from_str(&config.body).ok()?;
        snapshot["pod"]["name"].as_str()?;
        Some(
            snapshot["appProtocol"]
                .as_str()
                .unwrap_or("absent")
                .to_string(),
        )
    };
    let wait_for = |expected: &str, what: &str| {
        let started = Instant::now();
        eventually(Duration::from_secs(20), what, || {
            (app_protocol()? == expected).then_some(())
        });
        eprintln!("{what}: {:?}", started.elapsed());
    };
    assert_eq!(app_protocol().as_deref(), Some("absent"), "no Service yet");

    apply(cp, &rpc_service(&ns.name, "kubernetes.io/h2c"));
    wait_for("h2c", "kubernetes.io/h2c → appProtocol h2c");

    ns.kubectl_ok(&[
        "patch",
        "service",
        "rpc",
        "--type=json",
        "-p",
        r#"[{"op": "replace", "path": "/spec/ports/0/appProtocol", "value": "http"}]"#,
    ]);
    wait_for("http1", "patched to http → appProtocol http1");

    ns.kubectl_ok(&["delete", "service", "rpc"]);
    wait_for("absent", "Service deleted → no appProtocol");
}
