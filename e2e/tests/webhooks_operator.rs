//! Webhook delivery driven by the cluster: the chart installed with helm, the operator as a local
//! process with the chart's ServiceAccount, an injected pod's sidecar (its token bound to the
//! pod) in operator mode. WebhookEndpoints whose signing key the operator reads from a Secret;
//! the app's messages (`POST /webhooks/v1/messages` on the sidecar's admin listener) reach real
//! receivers that verify with the official Standard Webhooks libraries. Then the Secret is
//! rotated: during the grace period a receiver holding only the old key and one holding only
//! the new key both verify every new delivery. The sidecar reports its counts over the
//! acknowledgement path, and the leader's `status.deliveries.succeeded` (the `Delivered` column
//! of `kubectl get whe`) reaches the number delivered. An endpoint that always fails, with a
//! short `disableAfterFailingFor`, is disabled by the operator with an Event.

use std::{sync::OnceLock, time::Duration};

use bulwark_e2e::{
    ControlPlane, Namespace, eventually,
    operator::Release,
    output_with_stdin,
    process::{http_get, http_post},
    sidecar::Sidecar,
    stdout_or_panic,
    webhook_receiver::{Library, Received, WebhookReceiver},
};
use serde_json::{Value, json};

/// The release's namespace, distinct from the other suites'.
const RELEASE_NS: &str = "bulwark-webhooks-system";
const OLD_KEY: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NEW_KEY: &str = "whsec_C2FtcGxlLXNlY3JldC1rZXktZm9yLWJ1bHdhcmstdGVzdHM=";

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

fn release(cp: &ControlPlane) -> &'static Release {
    static RELEASE: OnceLock<Release> = OnceLock::new();
    RELEASE.get_or_init(|| Release::install(cp, RELEASE_NS))
}

/// A WebhookEndpoint `name` to `url` for `event_types`, signed with Secret `hook-signing` key
/// `key`, with `extra` spec lines.
fn endpoint(ns: &str, name: &str, url: &str, event_types: &str, extra: &str) -> String {
    format!(
        r#"apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{matchLabels: {{app: billing}}}}
  url: {url}
  eventTypes: {event_types}
  signing:
    secretRef: {{name: hook-signing, key: key}}
    rotationGracePeriod: 1h
  network: {{allowInsecureHTTP: true, allowPrivateAddresses: true}}
{extra}"#
    )
}

fn secret(ns: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: hook-signing, namespace: {ns}}}\nstringData:\n  key: {key}\n"
    )
}

/// Waits until WebhookEndpoint `name` is Accepted and programmed in the one pod it selects.
fn wait_programmed(ns: &Namespace<'_>, name: &str) {
    let whe = format!("webhookendpoint/{name}");
    eventually(Duration::from_secs(30), "Accepted, Programmed 1/1", || {
        let status = jsonpath(
            ns,
            &whe,
            "{.status.programmedPods}/{.status.selectedPods} {.status.conditions[?(@.type==\"Accepted\")].status} {.status.conditions[?(@.type==\"Programmed\")].status}",
        );
        (status == "1/1 True True").then_some(())
    });
}

/// Submits one message to the sidecar; returns the endpoints it goes to.
fn submit(sidecar: &Sidecar, event_type: &str, payload: Value) -> Vec<String> {
    let body = json!({"eventType": event_type, "payload": payload}).to_string();
    let response = http_post(sidecar.admin, "/webhooks/v1/messages", &body, &[])
        .expect("the admin listener answers");
    assert_eq!(response.status, 202, "{}", response.body);
    let answer: Value = serde_json::from_str(&response.body).unwrap();
    answer["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_owned())
        .collect()
}

/// The signing keys of the sidecar's installed endpoint `name`: `notAfter` of each (`None` for
/// the current key), from its `/config` (the secrets themselves are redacted there).
fn installed_keys(sidecar: &Sidecar, name: &str) -> Vec<Option<i64>> {
    let config: Value =
        serde_json::from_str(&http_get(sidecar.admin, "/config").unwrap().body).unwrap();
    let keys = config["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|w| w["source"]["name"] == name)
        .map(|w| w["spec"]["signingKeys"].as_array().unwrap().clone())
        .unwrap_or_default();
    assert!(
        keys.iter().all(|k| k["secret"] == "<redacted>"),
        "/config shows no key: {keys:?}"
    );
    keys.iter().map(|k| k["notAfter"].as_i64()).collect()
}

fn delivered_status(ns: &Namespace<'_>, name: &str) -> Option<i64> {
    jsonpath(
        ns,
        &format!("webhookendpoint/{name}"),
        "{.status.deliveries.succeeded}",
    )
    .parse()
    .ok()
}

fn unverified(received: &[Received]) -> Vec<&Received> {
    received.iter().filter(|r| !r.verified).collect()
}

#[test]
fn deliveries_are_verified_across_a_key_rotation_and_counted_in_the_status() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let (ns, sidecar) = release(cp).injected_sidecar(cp, work.path(), "billing", &[]);
    let n = ns.name.as_str();

    // Two receivers: one will only ever know the old key, the other only the new one.
    let old_only = WebhookReceiver::start(Library::Python, work.path(), OLD_KEY);
    let new_only = WebhookReceiver::start(Library::Node, work.path(), NEW_KEY);

    // --- The Secret and an endpoint to the old-key receiver: Accepted, Programmed. ---------
    apply(
        cp,
        &[
            secret(n, OLD_KEY),
            endpoint(
                n,
                "partner-old",
                &old_only.url("/hooks"),
                "[\"invoice.*\", \"rotated.*\"]",
                "",
            ),
        ]
        .join("---\n"),
    );
    wait_programmed(&ns, "partner-old");
    assert_eq!(installed_keys(&sidecar, "partner-old"), [None]);

    // --- The app's messages reach the receiver, verified by the official library. -----------
    for i in 0..5 {
        let to = submit(&sidecar, "invoice.paid", json!({"invoice": i}));
        assert_eq!(to, [format!("{n}/partner-old")]);
    }
    let received = old_only.wait_for_deliveries(5, Duration::from_secs(30));
    assert!(unverified(&received).is_empty(), "{received:?}");

    // --- The leader sums the sidecar's report: Delivered 5, visible in `kubectl get whe`. ---
    eventually(
        Duration::from_secs(60),
        "status.deliveries.succeeded = 5",
        || (delivered_status(&ns, "partner-old") == Some(5)).then_some(()),
    );
    let table = ns.kubectl_ok(&["get", "whe", "partner-old"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    let column = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(column("DELIVERED"), "5", "{table}");
    assert_eq!(column("DEAD"), "0", "{table}");
    assert_eq!(column("STATE"), "Delivering", "{table}");

    // --- A second endpoint, for the new-key receiver, only for messages sent after the
    // rotation. ----------------------------------------------------------------------------
    apply(
        cp,
        &endpoint(
            n,
            "partner-new",
            &new_only.url("/hooks"),
            "[\"rotated.*\"]",
            "",
        ),
    );
    wait_programmed(&ns, "partner-new");

    // --- Rotate: the Secret gets the new key. The leader records the old one in its ledger
    // (never in status or events), and the sidecar signs with both for the grace period. ------
    apply(cp, &secret(n, NEW_KEY));
    let keys = eventually(Duration::from_secs(30), "both keys in the sidecar", || {
        let old = installed_keys(&sidecar, "partner-old");
        let new = installed_keys(&sidecar, "partner-new");
        (old.len() == 2 && new.len() == 2).then_some(old)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(keys[0], None, "the current key first");
    let not_after = keys[1].expect("the previous key expires");
    assert!(
        (now + 3600 - 120..=now + 3600 + 5).contains(&not_after),
        "the previous key expires a grace period (1h) after the change: {not_after} vs now {now}"
    );
    // The leader records the change in its ledger after the replicas already sign with both
    // keys: the ledger is read until it holds it.
    let ledger = || {
        cp.kubectl_ok(&[
            "get",
            "secret/bulwark-webhook-signing-keys",
            "-n",
            RELEASE_NS,
            "-o",
            r#"go-template={{index .data "keys.json" | base64decode}}"#,
        ])
    };
    eventually(
        Duration::from_secs(20),
        "the previous key in the ledger",
        || {
            let ledger = ledger();
            (ledger.contains(&format!("{n}/partner-old")) && ledger.contains("notAfter"))
                .then_some(())
        },
    );
    for object in ["webhookendpoint/partner-old", "webhookendpoint/partner-new"] {
        let shown = ns.kubectl_ok(&["get", object, "-o", "json"]);
        assert!(!shown.contains("whsec_"), "no key in the status: {shown}");
    }

    // --- New deliveries during the grace period: each receiver verifies every one, with the
    // only key it has; each delivery carries two signatures. ---------------------------------
    for i in 0..3 {
        let mut to = submit(&sidecar, "rotated.check", json!({"after": i}));
        to.sort();
        assert_eq!(to, [format!("{n}/partner-new"), format!("{n}/partner-old")]);
    }
    let old_received = old_only.wait_for_deliveries(8, Duration::from_secs(30));
    let new_received = new_only.wait_for_deliveries(3, Duration::from_secs(30));
    assert!(
        unverified(&old_received).is_empty(),
        "the old-key receiver verifies every delivery: {old_received:?}"
    );
    assert!(
        unverified(&new_received).is_empty(),
        "the new-key receiver verifies every delivery: {new_received:?}"
    );
    assert_eq!(
        old_received.len(),
        8,
        "no retries were needed: {old_received:?}"
    );
    assert_eq!(
        new_received.len(),
        3,
        "no retries were needed: {new_received:?}"
    );
    for r in old_received[5..].iter().chain(&new_received) {
        let signatures = r.signature.as_deref().unwrap();
        assert_eq!(
            signatures
                .split(' ')
                .filter(|s| s.starts_with("v1,"))
                .count(),
            2,
            "{signatures}"
        );
    }

    // --- Counted: 8 to the old-key receiver, 3 to the new one. ------------------------------
    eventually(Duration::from_secs(60), "Delivered 8 and 3", || {
        (delivered_status(&ns, "partner-old") == Some(8)
            && delivered_status(&ns, "partner-new") == Some(3))
        .then_some(())
    });
}

#[test]
fn an_endpoint_failing_for_disable_after_failing_for_is_disabled_with_an_event() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let (ns, sidecar) = release(cp).injected_sidecar(cp, work.path(), "billing", &[]);
    let n = ns.name.as_str();
    // A port nothing listens on: every attempt fails (connection refused).
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // Attempts every 2 s for a minute, longer than disableAfterFailingFor.
    let retries = vec!["2s"; 31].join(", ");
    apply(
        cp,
        &[
            secret(n, OLD_KEY),
            endpoint(
                n,
                "doomed",
                &format!("http://{dead}/hooks"),
                "[\"doomed.*\"]",
                &format!(
                    "  retry: {{schedule: [0s, {retries}], jitterPercent: 0}}\n  disableAfterFailingFor: 30s\n"
                ),
            ),
        ]
        .join("---\n"),
    );
    wait_programmed(&ns, "doomed");
    submit(&sidecar, "doomed.event", json!({"n": 1}));

    // Failing first (every attempt fails since a time the condition gives), then disabled.
    let reason = |ns: &Namespace<'_>| {
        jsonpath(
            ns,
            "webhookendpoint/doomed",
            "{.status.conditions[?(@.type==\"Delivering\")].reason}",
        )
    };
    // Sidecars report at most every 10 s, and counts reach the leader within 5 s more.
    eventually(Duration::from_secs(30), "Delivering=False Failing", || {
        (reason(&ns) == "Failing").then_some(())
    });
    let failing = jsonpath(
        &ns,
        "webhookendpoint/doomed",
        "{.status.conditions[?(@.type==\"Delivering\")].message}",
    );
    assert!(failing.contains("30s"), "{failing}");
    eventually(
        Duration::from_secs(60),
        "Delivering=False AutoDisabled",
        || (reason(&ns) == "AutoDisabled").then_some(()),
    );
    let last_failure = jsonpath(
        &ns,
        "webhookendpoint/doomed",
        "{.status.lastFailure.reason}",
    );
    assert!(
        !last_failure.is_empty(),
        "the last failure is in the status"
    );
    let failed: i64 = jsonpath(
        &ns,
        "webhookendpoint/doomed",
        "{.status.deliveries.failedAttempts}",
    )
    .parse()
    .unwrap_or(0);
    assert!(failed >= 1, "failed attempts counted: {failed}");

    // The Event, and the sidecar stops: its endpoint is disabled in the snapshot it enforces.
    let events = eventually(
        Duration::from_secs(20),
        "the EndpointDisabled Event",
        || {
            let out = ns.kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-o",
            "jsonpath={range .items[*]}{.reason}|{.type}|{.regarding.name}|{.note}{\"\\n\"}{end}",
        ]);
            out.lines()
                .any(|l| l.starts_with("EndpointDisabled|Warning|doomed|"))
                .then_some(out)
        },
    );
    assert!(!events.contains("whsec_"), "{events}");
    eventually(Duration::from_secs(20), "disabled in the sidecar", || {
        let config: Value =
            serde_json::from_str(&http_get(sidecar.admin, "/config").unwrap().body).unwrap();
        config["webhooks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|w| w["source"]["name"] == "doomed" && w["spec"]["endpoint"]["disabled"] == true)
            .then_some(())
    });
    assert_eq!(
        jsonpath(&ns, "webhookendpoint/doomed", "{.spec.disabled}"),
        "false",
        "the operator does not write the spec"
    );

    // A spec change enables it again (a new generation; the clock starts over).
    ns.kubectl_ok(&[
        "patch",
        "webhookendpoint/doomed",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"disableAfterFailingFor":"1h"}}"#,
    ]);
    eventually(Duration::from_secs(30), "enabled again", || {
        (reason(&ns) != "AutoDisabled").then_some(())
    });
    eventually(Duration::from_secs(20), "the EndpointEnabled Event", || {
        ns.kubectl_ok(&[
            "get",
            "events.events.k8s.io",
            "-o",
            "jsonpath={range .items[*]}{.reason}{\"\\n\"}{end}",
        ])
        .lines()
        .any(|l| l == "EndpointEnabled")
        .then_some(())
    });
}
