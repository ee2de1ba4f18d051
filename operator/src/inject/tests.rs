use http::StatusCode;
use http_body_util::BodyExt;

use super::*;

fn cfg() -> InjectConfig {
    InjectConfig {
        image: "ghcr.io/bulwark-dev/bulwark-sidecar:test".into(),
        image_pull_policy: "IfNotPresent".into(),
        operator_url: "https://bulwark-operator.bulwark-system.svc:9444".into(),
        ca_pem: Arc::new(ArcSwap::from_pointee(
            "-----BEGIN CERTIFICATE-----\nCA\n".into(),
        )),
        inbound_port: 15080,
        admin_port: 15090,
        cpu_request: "50m".into(),
        memory_request: "32Mi".into(),
        memory_limit: "128Mi".into(),
    }
}

fn pod(v: Value) -> Pod {
    serde_json::from_value(v).unwrap()
}

fn minimal() -> Pod {
    pod(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "nginx"}]}
    }))
}

/// Applies the patch the way the apiserver does and reads the pod back.
fn apply(p: &Pod, patch: &json_patch::Patch) -> Pod {
    let mut doc = serde_json::to_value(p).unwrap();
    json_patch::patch(&mut doc, patch).unwrap();
    serde_json::from_value(doc).unwrap()
}

fn injected(p: &Pod) -> Pod {
    let patch = mutation(p, &cfg()).unwrap().expect("a patch");
    apply(p, &patch)
}

fn sidecar(p: &Pod) -> &Container {
    let spec = p.spec.as_ref().unwrap();
    let found: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .filter(|c| c.name == SIDECAR_NAME)
        .collect();
    assert_eq!(found.len(), 1, "exactly one sidecar");
    assert!(spec.containers.iter().all(|c| c.name != SIDECAR_NAME));
    found[0]
}

fn env(c: &Container, name: &str) -> String {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
        .unwrap_or_else(|| panic!("env {name}"))
}

#[test]
fn minimal_pod_gets_a_native_sidecar_volumes_label_and_annotation() {
    let p = injected(&minimal());
    let c = sidecar(&p);
    assert_eq!(c.restart_policy.as_deref(), Some("Always"));
    assert_eq!(
        c.image.as_deref(),
        Some("ghcr.io/bulwark-dev/bulwark-sidecar:test")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert!(c.args.is_none() && c.command.is_none());
    assert_eq!(
        env(c, "BULWARK_OPERATOR_URL"),
        "https://bulwark-operator.bulwark-system.svc:9444"
    );
    assert_eq!(
        env(c, "BULWARK_OPERATOR_CA"),
        "-----BEGIN CERTIFICATE-----\nCA\n"
    );
    assert_eq!(
        env(c, "BULWARK_TOKEN_FILE"),
        "/var/run/secrets/bulwark/token"
    );
    assert_eq!(env(c, "BULWARK_STATE_DIR"), "/var/run/bulwark");
    assert_eq!(env(c, "BULWARK_INBOUND_LISTEN"), "0.0.0.0:15080");
    assert_eq!(env(c, "BULWARK_ADMIN_LISTEN"), "0.0.0.0:15090");
    // No containerPort, no annotation: 8080.
    assert_eq!(env(c, "BULWARK_APP"), "127.0.0.1:8080");

    let ports: Vec<_> = c
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        vec![
            ("bulwark-http".to_string(), 15080),
            ("bulwark-admin".to_string(), 15090)
        ]
    );
    let readiness = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(readiness.path.as_deref(), Some("/readyz"));
    assert_eq!(readiness.port, IntOrString::String("bulwark-admin".into()));
    let liveness = c
        .liveness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(liveness.path.as_deref(), Some("/healthz"));

    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".into()])
    );
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");

    let resources = c.resources.as_ref().unwrap();
    assert_eq!(resources.requests.as_ref().unwrap()["cpu"].0, "50m");
    assert_eq!(resources.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(resources.limits.as_ref().unwrap()["memory"].0, "128Mi");

    let mounts: Vec<_> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
        .collect();
    assert_eq!(
        mounts,
        vec![
            ("bulwark-token", "/var/run/secrets/bulwark", Some(true)),
            ("bulwark-state", "/var/run/bulwark", None)
        ]
    );

    let volumes = p.spec.as_ref().unwrap().volumes.as_ref().unwrap();
    assert_eq!(volumes.len(), 2);
    let token = volumes[0]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(volumes[0].name, "bulwark-token");
    assert_eq!(token.audience.as_deref(), Some("bulwark"));
    assert_eq!(token.expiration_seconds, Some(3600));
    assert_eq!(token.path, "token");
    assert_eq!(volumes[1].name, "bulwark-state");
    assert!(volumes[1].empty_dir.is_some());

    assert_eq!(
        p.metadata.labels.as_ref().unwrap()["bulwark.dev/injected"],
        "true"
    );
    assert_eq!(
        p.metadata.annotations.as_ref().unwrap()["bulwark.dev/sidecar-image"],
        "ghcr.io/bulwark-dev/bulwark-sidecar:test"
    );
    // The app container is untouched.
    assert_eq!(
        p.spec.as_ref().unwrap().containers,
        minimal().spec.unwrap().containers
    );
}

#[test]
fn existing_init_containers_volumes_labels_and_annotations_are_kept() {
    let p = pod(json!({
        "metadata": {
            "name": "web",
            "labels": {"app": "web"},
            "annotations": {"team": "shop", "bulwark.dev/inject": "true"}
        },
        "spec": {
            "initContainers": [{"name": "migrate", "image": "migrate"}],
            "containers": [
                {"name": "app", "image": "app", "ports": [{"containerPort": 3000}, {"containerPort": 3001}]},
                {"name": "other", "image": "other", "ports": [{"containerPort": 9000}]}
            ],
            "volumes": [{"name": "data", "emptyDir": {}}]
        }
    }));
    let out = injected(&p);
    let spec = out.spec.as_ref().unwrap();
    let init: Vec<_> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    // Appended: the pod's own init containers run first, as before.
    assert_eq!(init, vec!["migrate", "bulwark-sidecar"]);
    let volumes: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, vec!["data", "bulwark-token", "bulwark-state"]);
    assert_eq!(env(sidecar(&out), "BULWARK_APP"), "127.0.0.1:3000");
    let labels = out.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app"], "web");
    assert_eq!(labels["bulwark.dev/injected"], "true");
    let annotations = out.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["team"], "shop");
    assert_eq!(
        annotations["bulwark.dev/sidecar-image"],
        "ghcr.io/bulwark-dev/bulwark-sidecar:test"
    );
}

#[test]
fn annotation_keys_are_escaped_per_rfc_6901() {
    let p = pod(json!({
        "metadata": {"labels": {"a": "b"}, "annotations": {"c": "d"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    let patch = serde_json::to_value(mutation(&p, &cfg()).unwrap().unwrap()).unwrap();
    let paths: Vec<_> = patch
        .as_array()
        .unwrap()
        .iter()
        .map(|op| op["path"].as_str().unwrap().to_string())
        .collect();
    assert!(paths.contains(&"/metadata/labels/bulwark.dev~1injected".to_string()));
    assert!(paths.contains(&"/metadata/annotations/bulwark.dev~1sidecar-image".to_string()));
    assert_eq!(escape("a~b/c"), "a~0b~1c");
}

#[test]
fn app_port_annotation_wins_and_is_validated() {
    let with = |v: &str| {
        pod(json!({
            "metadata": {"annotations": {"bulwark.dev/app-port": v}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 3000}]}]}
        }))
    };
    assert_eq!(
        env(sidecar(&injected(&with("8081"))), "BULWARK_APP"),
        "127.0.0.1:8081"
    );
    // A port name of the pod's containers works too.
    let named = pod(json!({
        "metadata": {"annotations": {"bulwark.dev/app-port": "http"}},
        "spec": {"containers": [
            {"name": "app", "ports": [{"containerPort": 9000, "name": "metrics"}]},
            {"name": "web", "ports": [{"containerPort": 3000, "name": "http"}]}
        ]}
    }));
    assert_eq!(
        env(sidecar(&injected(&named)), "BULWARK_APP"),
        "127.0.0.1:3000"
    );
    for bad in ["0", "65536", "http", "-1", ""] {
        let err = mutation(&with(bad), &cfg()).unwrap_err();
        assert_eq!(err, InjectError::InvalidAppPort(bad.into()));
        assert!(err.to_string().contains("bulwark.dev/app-port"));
    }
}

#[test]
fn trusted_proxy_hops_annotation_reaches_the_sidecar_and_is_validated() {
    let with = |v: &str| {
        pod(json!({
            "metadata": {"annotations": {"bulwark.dev/trusted-proxy-hops": v}},
            "spec": {"containers": [{"name": "app"}]}
        }))
    };
    assert_eq!(
        env(sidecar(&injected(&with("2"))), "BULWARK_TRUSTED_PROXY_HOPS"),
        "2"
    );
    let plain = injected(&minimal());
    assert!(
        sidecar(&plain)
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "BULWARK_TRUSTED_PROXY_HOPS"),
        "no annotation: the sidecar's default (the peer address)"
    );
    for bad in ["11", "-1", "one", ""] {
        let err = mutation(&with(bad), &cfg()).unwrap_err();
        assert_eq!(err, InjectError::InvalidTrustedProxyHops(bad.into()));
        assert!(err.to_string().contains("bulwark.dev/trusted-proxy-hops"));
    }
}

#[test]
fn app_protocol_annotation_reaches_the_sidecar_and_is_validated() {
    let with = |v: &str| {
        pod(json!({
            "metadata": {"annotations": {"bulwark.dev/app-protocol": v}},
            "spec": {"containers": [{"name": "app"}]}
        }))
    };
    for (value, env_value) in [
        ("h2c", "h2c"),
        ("http1", "http1"),
        ("auto", "auto"),
        (" H2C ", "h2c"),
        ("HTTP1", "http1"),
    ] {
        assert_eq!(
            env(sidecar(&injected(&with(value))), "BULWARK_APP_PROTOCOL"),
            env_value,
            "{value:?}"
        );
    }
    let plain = injected(&minimal());
    assert!(
        sidecar(&plain)
            .env
            .iter()
            .flatten()
            .all(|e| e.name != "BULWARK_APP_PROTOCOL"),
        "no annotation: the Services' appProtocol, else detection"
    );
    for bad in ["grpc", "http2", "h2", "http/1.1", ""] {
        let err = mutation(&with(bad), &cfg()).unwrap_err();
        assert_eq!(err, InjectError::InvalidAppProtocol(bad.into()));
        let message = err.to_string();
        assert!(message.contains("bulwark.dev/app-protocol"), "{message}");
        assert!(
            message.contains("\"auto\", \"http1\" or \"h2c\""),
            "{message}"
        );
    }
}

#[test]
fn opted_out_or_already_injected_pods_are_left_alone() {
    let out = pod(json!({
        "metadata": {"annotations": {"bulwark.dev/inject": "false"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    assert_eq!(skip_reason(&out).unwrap(), Some(SkipReason::OptedOut));
    assert_eq!(mutation(&out, &cfg()).unwrap(), None);

    let labelled = pod(json!({
        "metadata": {"labels": {"bulwark.dev/inject": "false"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    assert_eq!(skip_reason(&labelled).unwrap(), Some(SkipReason::OptedOut));

    // Idempotent: injecting the injected pod does nothing.
    let once = injected(&minimal());
    assert_eq!(
        skip_reason(&once).unwrap(),
        Some(SkipReason::AlreadyInjected)
    );
    assert_eq!(mutation(&once, &cfg()).unwrap(), None);

    // A sidecar of that name among the regular containers counts too.
    let regular =
        pod(json!({"spec": {"containers": [{"name": "app"}, {"name": "bulwark-sidecar"}]}}));
    assert_eq!(mutation(&regular, &cfg()).unwrap(), None);

    let host = pod(json!({"spec": {"hostNetwork": true, "containers": [{"name": "app"}]}}));
    assert_eq!(skip_reason(&host).unwrap(), Some(SkipReason::HostNetwork));
    assert_eq!(mutation(&host, &cfg()).unwrap(), None);

    let bad = pod(json!({
        "metadata": {"annotations": {"bulwark.dev/inject": "yes"}},
        "spec": {"containers": [{"name": "app"}]}
    }));
    assert_eq!(
        mutation(&bad, &cfg()).unwrap_err(),
        InjectError::InvalidInjectAnnotation("yes".into())
    );
}

#[test]
fn port_and_volume_clashes_are_refused_with_the_fix_named() {
    let app_on_15080 = pod(
        json!({"spec": {"containers": [{"name": "app", "ports": [{"containerPort": 15080}]}]}}),
    );
    assert_eq!(
        mutation(&app_on_15080, &cfg()).unwrap_err(),
        InjectError::PortClash(15080, "inbound")
    );
    let other_on_15090 = pod(json!({"spec": {"containers": [
        {"name": "app", "ports": [{"containerPort": 80}]},
        {"name": "metrics", "ports": [{"containerPort": 15090}]}
    ]}}));
    assert_eq!(
        mutation(&other_on_15090, &cfg()).unwrap_err(),
        InjectError::PortClash(15090, "admin")
    );
    let volume = pod(json!({"spec": {
        "containers": [{"name": "app"}],
        "volumes": [{"name": "bulwark-state", "emptyDir": {}}]
    }}));
    assert_eq!(
        mutation(&volume, &cfg()).unwrap_err(),
        InjectError::VolumeClash("bulwark-state".into())
    );
}

fn review_json(object: Value, operation: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": "shop",
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    }))
    .unwrap()
}

async fn post(body: Vec<u8>) -> (StatusCode, Value, Outcome) {
    let req = Request::post("/mutate")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let (resp, outcome) = handle(req, &cfg()).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        outcome,
    )
}

#[tokio::test]
async fn webhook_answers_a_review_with_a_json_patch() {
    let object = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "web-7d9f-", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "nginx", "ports": [{"containerPort": 80}]}]}
    });
    let (status, body, outcome) = post(review_json(object.clone(), "CREATE")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(outcome, Outcome::Injected);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let response = &body["response"];
    assert_eq!(response["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    // kube serialises the patch bytes as a JSON array of numbers, which the apiserver (Go's
    // []byte) accepts as well as base64.
    let patch_bytes: Vec<u8> = serde_json::from_value(response["patch"].clone()).unwrap();
    let patch: json_patch::Patch = serde_json::from_slice(&patch_bytes).unwrap();
    let out = apply(&pod(object), &patch);
    assert_eq!(env(sidecar(&out), "BULWARK_APP"), "127.0.0.1:80");
}

#[tokio::test]
async fn webhook_denies_bad_annotations_allows_the_rest_and_rejects_garbage() {
    let bad = json!({
        "metadata": {"name": "web", "annotations": {"bulwark.dev/app-port": "http"}},
        "spec": {"containers": [{"name": "app"}]}
    });
    let (status, body, outcome) = post(review_json(bad, "CREATE")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(matches!(outcome, Outcome::Denied(_)));
    assert_eq!(body["response"]["allowed"], false);
    assert!(
        body["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("bulwark.dev/app-port")
    );

    let opted_out = json!({
        "metadata": {"name": "web", "annotations": {"bulwark.dev/inject": "false"}},
        "spec": {"containers": [{"name": "app"}]}
    });
    let (_, body, outcome) = post(review_json(opted_out, "CREATE")).await;
    assert_eq!(outcome, Outcome::Skipped(SkipReason::OptedOut));
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("patch").is_none());

    let (_, body, outcome) = post(review_json(
        json!({"metadata": {"name": "web"}, "spec": {"containers": []}}),
        "UPDATE",
    ))
    .await;
    assert_eq!(outcome, Outcome::Ignored);
    assert_eq!(body["response"]["allowed"], true);

    // A pod without a spec is our problem to tolerate, not the user's: allowed unchanged.
    let (_, body, outcome) =
        post(review_json(json!({"metadata": {"name": "web"}}), "CREATE")).await;
    assert!(matches!(outcome, Outcome::Error(_)));
    assert_eq!(body["response"]["allowed"], true);

    let (status, _, outcome) = post(b"{not json".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(matches!(outcome, Outcome::BadRequest(_)));

    let req = Request::get("/mutate")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        handle(req, &cfg()).await.0.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );
}
