//! The operator on the real apiserver, end to end: `helm install`, the operator as a local
//! process with the chart's ServiceAccount token, injection through the apiserver's call to the
//! webhook, a sidecar process that is that pod (its token bound to the pod by the TokenRequest
//! API) in front of a real upstream, and policies applied with kubectl.

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use bulwark_e2e::{
    ControlPlane, Namespace, eventually,
    operator::{Operator, OperatorPorts, service_account_kubeconfig},
    output_with_stdin,
    process::{http_get, http_request, wait_for_status},
    promtool_check,
    redis::Redis,
    repo_root,
    sidecar::{Sidecar, Upstream},
    stdout_or_panic,
};

const RELEASE_NS: &str = "bulwark-system";

fn rate_limit(namespace: &str, limit: u32) -> String {
    format!(
        r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: api-limit, namespace: {namespace}}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  rules:
  - name: everyone
    key: [{{type: Constant}}]
    rates: [{{limit: {limit}, window: 1h}}]
"#
    )
}

fn apply(cp: &ControlPlane, yaml: &str) {
    let mut kubectl = cp.kubectl();
    kubectl.args(["apply", "-f", "-"]);
    stdout_or_panic(
        "kubectl",
        &["apply", "-f", "-"],
        output_with_stdin(kubectl, yaml),
    );
}

/// Status of the sidecar for `GET /index.html`.
fn status_of(sidecar: &Sidecar) -> u16 {
    http_get(sidecar.inbound, "/index.html").map_or(0, |r| r.status)
}

/// Sends requests until one is answered 429, returning how long that took.
fn until_limited(sidecar: &Sidecar, since: Instant, what: &str) -> Duration {
    until_limited_within(Duration::from_secs(15), sidecar, since, what)
}

fn until_limited_within(
    within: Duration,
    sidecar: &Sidecar,
    since: Instant,
    what: &str,
) -> Duration {
    eventually(within, what, || {
        (status_of(sidecar) == 429).then(|| since.elapsed())
    })
}

fn jsonpath(cp: &ControlPlane, namespace: &str, object: &str, path: &str) -> String {
    cp.kubectl_ok(&[
        "get",
        "-n",
        namespace,
        object,
        "-o",
        &format!("jsonpath={path}"),
    ])
}

/// A token for the namespace's default ServiceAccount, audience `bulwark`, bound to `pod` if
/// given (what the kubelet projects into the injected sidecar).
fn bulwark_token(ns: &Namespace<'_>, pod: Option<&str>) -> String {
    let mut args = vec!["create", "token", "default", "--audience", "bulwark"];
    if let Some(pod) = pod {
        args.extend(["--bound-object-kind", "Pod", "--bound-object-name", pod]);
    }
    ns.kubectl_ok(&args).trim().to_string()
}

/// `curl` against the policy stream, as any HTTP/2 client would: (status, body).
fn stream_with_token(ports: &OperatorPorts, ca: &Path, token: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--http2", "--max-time", "2", "--cacert"])
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-w", "\n%{http_code}"])
        .arg(format!(
            "https://{}{}",
            ports.distribution,
            bulwark_api::distribution::WATCH_PATH
        ))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn helm_install_inject_enforce_survive_and_fail_over() {
    let cp = ControlPlane::shared();
    let work = tempfile::tempdir().unwrap();
    let logs = cp.dir.join("logs");

    // --- Install with the chart; the operator runs here as the chart's ServiceAccount. -------
    // Redis for Global scope: the chart keeps its URL in a Secret and gives it to the operator.
    let redis = Redis::start(work.path());
    let ports_a = OperatorPorts::free();
    let webhook_url = format!("https://{}/mutate", ports_a.webhook);
    let chart = repo_root().join("charts/bulwark");
    cp.helm_ok(&[
        "install",
        "bulwark",
        chart.to_str().unwrap(),
        "--namespace",
        RELEASE_NS,
        "--create-namespace",
        "--set",
        &format!("webhook.url={webhook_url}"),
        "--set",
        &format!("redis.url={}", redis.url()),
    ]);
    let redis_url = cp.kubectl_ok(&[
        "get",
        "secret",
        "bulwark-redis",
        "-n",
        RELEASE_NS,
        "-o",
        "go-template={{.data.url | base64decode}}",
    ]);
    assert_eq!(redis_url, redis.url(), "the chart's Redis Secret");
    let operator_env = [("BULWARK_REDIS_URL", redis_url.as_str())];
    let sa_kubeconfig = service_account_kubeconfig(cp, RELEASE_NS, "bulwark-operator");
    let mut operator_a = Operator::start(
        &sa_kubeconfig,
        RELEASE_NS,
        "op-a",
        ports_a,
        &logs,
        &operator_env,
    );
    wait_for_status(ports_a.admin, "/readyz", 200, Duration::from_secs(30));

    // The chart grants no more than the operator needs: a verb it does not grant is denied.
    let denied = Command::new(cp.bin.join("kubectl"))
        .arg("--kubeconfig")
        .arg(&sa_kubeconfig)
        .args(["delete", "pod", "anything", "-n", "default"])
        .output()
        .unwrap();
    assert!(!denied.status.success());
    assert!(
        String::from_utf8_lossy(&denied.stderr).contains("forbidden"),
        "{}",
        String::from_utf8_lossy(&denied.stderr)
    );

    // The operator made its CA and gave it to the webhook configuration.
    let ca_bundle = eventually(Duration::from_secs(20), "caBundle to be patched", || {
        let b = jsonpath(
            cp,
            RELEASE_NS,
            "mutatingwebhookconfiguration/bulwark-sidecar-injector",
            "{.webhooks[0].clientConfig.caBundle}",
        );
        (!b.is_empty()).then_some(b)
    });
    assert!(!ca_bundle.is_empty());

    // --- Injection: the apiserver calls the webhook for a pod of a labelled namespace. -------
    let ns = cp.namespace("shop");
    cp.kubectl_ok(&["label", "namespace", &ns.name, "bulwark.dev/inject=enabled"]);
    ns.wait_for_default_service_account();
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: api-0, namespace: {}, labels: {{app: api}}}}\nspec:\n  containers: [{{name: app, image: registry.example/app:1, ports: [{{containerPort: 8080}}]}}]\n",
            ns.name
        ),
    );
    let pod: serde_json::Value =
        serde_json::from_str(&ns.kubectl_ok(&["get", "pod", "api-0", "-o", "json"])).unwrap();
    let sidecar_container = pod["spec"]["initContainers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "bulwark-sidecar"))
        .unwrap_or_else(|| panic!("the stored pod has no sidecar: {pod:#}"));
    assert_eq!(sidecar_container["restartPolicy"], "Always");
    assert_eq!(pod["metadata"]["labels"]["bulwark.dev/injected"], "true");
    let env = |name: &str| {
        sidecar_container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .and_then(|e| e["value"].as_str())
            .unwrap_or_else(|| panic!("no {name} in {sidecar_container:#}"))
            .to_string()
    };
    assert_eq!(env("BULWARK_APP"), "127.0.0.1:8080");
    // The CA the sidecar will trust is the one the operator serves with.
    let ca_path = work.path().join("operator-ca.pem");
    std::fs::write(&ca_path, env("BULWARK_OPERATOR_CA")).unwrap();

    // --- The sidecar, as that pod: its token is bound to the pod. ----------------------------
    let token = bulwark_token(&ns, Some("api-0"));
    let token_path = work.path().join("token");
    std::fs::write(&token_path, &token).unwrap();
    let app_dir = work.path().join("app");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(app_dir.join("index.html"), "hello\n").unwrap();
    let upstream = Upstream::start(&app_dir, "index.html");
    let operator_url = format!("https://{}", ports_a.distribution);
    let sidecar = Sidecar::start(
        upstream.addr,
        &work.path().join("sidecar"),
        &[
            "--operator-url",
            &operator_url,
            "--operator-ca-file",
            ca_path.to_str().unwrap(),
            "--token-file",
            token_path.to_str().unwrap(),
        ],
    );
    // An empty snapshot from the operator: ready, passing traffic through.
    wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(20));
    assert_eq!(status_of(&sidecar), 200);

    // --- Apply: enforced, Accepted, Programmed 1/1. ------------------------------------------
    let applied = Instant::now();
    apply(cp, &rate_limit(&ns.name, 2));
    let took = until_limited(&sidecar, applied, "the applied policy to be enforced");
    eprintln!("apply → first 429: {took:?}");
    let rlp = "ratelimitpolicy/api-limit";
    eventually(Duration::from_secs(15), "Programmed 1/1", || {
        let status = jsonpath(
            cp,
            &ns.name,
            rlp,
            "{.status.programmedPods}/{.status.selectedPods} {.status.conditions[*].type}={.status.conditions[*].status} g{.status.observedGeneration}",
        );
        (status == "1/1 Accepted Programmed=True True g1").then_some(())
    });
    let events = ns.kubectl_ok(&["get", "events.events.k8s.io", "-o", "json"]);
    assert!(events.contains("\"reason\": \"Accepted\""), "{events}");

    // Both sides' metrics pass Prometheus' linter, with the distribution families populated.
    let operator_metrics = http_get(ports_a.admin, "/metrics").unwrap().body;
    for family in [
        "bulwark_operator_leader 1",
        "bulwark_operator_streams 1",
        "bulwark_operator_acks_total{accepted=\"true\"}",
        "bulwark_operator_injections_total{outcome=\"injected\"} 1",
        "bulwark_operator_compile_seconds_bucket{",
    ] {
        assert!(
            operator_metrics.contains(family),
            "{family}:\n{operator_metrics}"
        );
    }
    promtool_check(&operator_metrics);
    let sidecar_metrics = http_get(sidecar.admin, "/metrics").unwrap().body;
    assert!(
        sidecar_metrics.contains("bulwark_operator_stream_connected 1"),
        "{sidecar_metrics}"
    );
    promtool_check(&sidecar_metrics);

    // --- Edit: a higher limit lets requests through again. -----------------------------------
    apply(cp, &rate_limit(&ns.name, 1000));
    eventually(Duration::from_secs(15), "the edit to apply", || {
        (status_of(&sidecar) == 200).then_some(())
    });
    eventually(Duration::from_secs(15), "generation 2 programmed", || {
        let s = jsonpath(
            cp,
            &ns.name,
            rlp,
            "{.status.programmedPods} g{.status.observedGeneration}",
        );
        (s == "1 g2").then_some(())
    });

    // --- Operator down: the sidecar keeps enforcing; back up: the stream resumes. ------------
    apply(cp, &rate_limit(&ns.name, 1));
    until_limited(&sidecar, Instant::now(), "limit 1 to be enforced");
    operator_a.process.kill();
    for _ in 0..5 {
        assert_eq!(
            status_of(&sidecar),
            429,
            "enforcement must survive the operator"
        );
    }
    ns.kubectl_ok(&["delete", rlp]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        status_of(&sidecar),
        429,
        "without the operator, the last snapshot stays"
    );
    let mut operator_a = Operator::start(
        &sa_kubeconfig,
        RELEASE_NS,
        "op-a",
        ports_a,
        &logs,
        &operator_env,
    );
    eventually(
        Duration::from_secs(30),
        "the deletion to reach the sidecar",
        || (status_of(&sidecar) == 200).then_some(()),
    );

    // --- Global scope: the chart's Redis reaches the sidecar through the stream. ------------
    apply(
        cp,
        &rate_limit(&ns.name, 3)
            .replace("name: api-limit", "name: global-limit")
            .replace("  rules:", "  scope: Global\n  rules:"),
    );
    let global = "ratelimitpolicy/global-limit";
    eventually(
        Duration::from_secs(15),
        "the Global policy programmed",
        || (jsonpath(cp, &ns.name, global, "{.status.programmedPods}") == "1").then_some(()),
    );
    let answers: Vec<u16> = (0..5).map(|_| status_of(&sidecar)).collect();
    assert_eq!(
        answers,
        [200, 200, 200, 429, 429],
        "exactly 3 through Redis"
    );
    let keys = redis.cli(&["--scan", "--pattern", "bulwark:rl:*"]);
    assert!(
        keys.contains(&ns.name),
        "the counter lives in Redis: {keys:?}"
    );
    let config = http_get(sidecar.admin, "/config").unwrap().body;
    assert!(
        config.contains("<redacted>") && !config.contains(&redis.url()),
        "/config hides the Redis connection: {config}"
    );
    ns.kubectl_ok(&["delete", global]);

    // --- Verified bearer tokens: the key comes from a Secret, through the stream. -----------
    apply(
        cp,
        &format!(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: per-user, namespace: {}}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  jwt:
    verification:
      keySecretRef: {{name: idp, key: hmac}}
      algorithms: [HS256]
  rules:
  - name: per-user
    key: [{{type: JWTClaim, name: sub}}]
    rates: [{{limit: 1, window: 1h}}]
"#,
            ns.name
        ),
    );
    let per_user = "ratelimitpolicy/per-user";
    let accepted = "{.status.conditions[?(@.type==\"Accepted\")].reason}: {.status.conditions[?(@.type==\"Accepted\")].message}";
    let refused = eventually(
        Duration::from_secs(15),
        "RefNotFound for the Secret",
        || {
            let s = jsonpath(cp, &ns.name, per_user, accepted);
            s.starts_with("RefNotFound:").then_some(s)
        },
    );
    assert!(
        refused.contains("jwt.verification.keySecretRef"),
        "{refused}"
    );
    let hmac = "the identity provider's HMAC secret";
    ns.kubectl_ok(&[
        "create",
        "secret",
        "generic",
        "idp",
        &format!("--from-literal=hmac={hmac}"),
    ]);
    eventually(
        Duration::from_secs(15),
        "the policy Accepted and programmed",
        || (jsonpath(cp, &ns.name, per_user, "{.status.programmedPods}") == "1").then_some(()),
    );
    let signed = |sub: &str, key: &str| {
        let claims =
            serde_json::json!({"sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 600});
        let key = jsonwebtoken::EncodingKey::from_secret(key.as_bytes());
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
    };
    let with_token = |token: &str| {
        http_request(
            sidecar.inbound,
            "GET",
            "/index.html",
            &[("authorization", &format!("Bearer {token}"))],
        )
        .map_or(0, |r| r.status)
    };
    let (alice, forged_bob, bob) = (
        signed("alice", hmac),
        signed("bob", "a key the attacker chose"),
        signed("bob", hmac),
    );
    assert_eq!([with_token(&alice), with_token(&alice)], [200, 429]);
    assert_eq!(
        [
            with_token(&forged_bob),
            with_token(&forged_bob),
            with_token(&bob)
        ],
        [200, 429, 200],
        "forged tokens share the empty key; bob's own counter is untouched"
    );
    let config = http_get(sidecar.admin, "/config").unwrap().body;
    assert!(!config.contains(hmac), "/config hides the key: {config}");
    ns.kubectl_ok(&["delete", per_user, "secret/idp"]);

    // --- A snapshot the sidecar cannot enforce (a time zone the schema's pattern lets through
    // but no time-zone database has): it keeps the last good one, and status names the pod.
    apply(cp, &rate_limit(&ns.name, 1));
    until_limited(&sidecar, Instant::now(), "limit 1 to be enforced again");
    apply(
        cp,
        &format!(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: QuotaPolicy
metadata: {{name: martian, namespace: {}}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  timeZone: Mars/Olympus
  quotas:
  - name: daily
    key: [{{type: Constant}}]
    limit: 100
    period: Day
"#,
            ns.name
        ),
    );
    let message = eventually(Duration::from_secs(15), "Programmed=False Rejected", || {
        let s = jsonpath(
            cp,
            &ns.name,
            "quotapolicy/martian",
            "{.status.conditions[?(@.type==\"Programmed\")].reason}: {.status.conditions[?(@.type==\"Programmed\")].message}",
        );
        s.starts_with("Rejected:").then_some(s)
    });
    assert!(
        message.contains("api-0") && message.contains("Mars/Olympus"),
        "{message}"
    );
    assert_eq!(
        status_of(&sidecar),
        429,
        "the last good snapshot keeps serving"
    );
    ns.kubectl_ok(&["delete", "quotapolicy/martian", rlp]);
    eventually(
        Duration::from_secs(15),
        "the deletions to reach the sidecar",
        || (status_of(&sidecar) == 200).then_some(()),
    );

    // --- Tokens: forged, unbound, or another pod's get no snapshot. --------------------------
    let (code, body) = stream_with_token(&ports_a, &ca_path, "forged.token.value");
    assert_eq!(code, 401, "{body}");
    let unbound = bulwark_token(&ns, None);
    let (code, body) = stream_with_token(&ports_a, &ca_path, &unbound);
    assert_eq!(code, 403, "{body}");
    let plain = cp.namespace("plain");
    plain.wait_for_default_service_account();
    apply(
        cp,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: other, namespace: {}}}\nspec:\n  containers: [{{name: app, image: registry.example/app:1}}]\n",
            plain.name
        ),
    );
    let other = bulwark_token(&plain, Some("other"));
    let (code, body) = stream_with_token(&ports_a, &ca_path, &other);
    assert_eq!(code, 404, "{body}");
    assert!(!body.contains("snapshot"), "{body}");
    // The pod's own token does get its snapshot.
    let (code, body) = stream_with_token(&ports_a, &ca_path, &token);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"type\":\"snapshot\""), "{body}");

    // --- Two replicas: kill the leader, the other takes over and writes status. --------------
    let ports_b = OperatorPorts::free();
    let mut operator_b = Operator::start(
        &sa_kubeconfig,
        RELEASE_NS,
        "op-b",
        ports_b,
        &logs,
        &operator_env,
    );
    let holder = || {
        jsonpath(
            cp,
            RELEASE_NS,
            "lease/bulwark-operator",
            "{.spec.holderIdentity}",
        )
    };
    assert_eq!(holder(), "op-a");
    let killed = Instant::now();
    operator_a.process.kill();
    eventually(Duration::from_secs(30), "op-b to take the Lease", || {
        (holder() == "op-b").then_some(())
    });
    eprintln!("leader killed → new leader: {:?}", killed.elapsed());
    // The sidecar's stream was to op-a; op-a comes back as a follower and serves it, while op-b
    // (the leader) counts its acknowledgement through op-a's distribution report.
    let _operator_a = Operator::start(
        &sa_kubeconfig,
        RELEASE_NS,
        "op-a",
        ports_a,
        &logs,
        &operator_env,
    );
    apply(cp, &rate_limit(&ns.name, 1));
    // The sidecar lost op-a for the whole takeover (~9 s) and retries with exponential backoff
    // capped at 30 s, so its next attempt may be up to 30 s away: wait past the cap.
    until_limited_within(
        Duration::from_secs(45),
        &sidecar,
        Instant::now(),
        "the policy after failover",
    );
    eventually(
        Duration::from_secs(20),
        "op-b to report Programmed 1/1",
        || {
            let s = jsonpath(
                cp,
                &ns.name,
                rlp,
                "{.status.programmedPods}/{.status.selectedPods}",
            );
            (s == "1/1").then_some(())
        },
    );
    assert_eq!(holder(), "op-b");
    operator_b.process.terminate(Duration::from_secs(15));
}
