//! The operator's certificates and its injection webhook against the real apiserver: the TLS
//! Secret (created once by racing replicas, renewed when expiring or missing a name), the
//! `caBundle` patch, and the apiserver itself calling the webhook over TLS to inject a pod.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bulwark_e2e::{ControlPlane, unique_name};
use bulwark_operator::{
    admission,
    inject::{self, InjectConfig},
    tls::{self, CaBundleOutcome, CertResolver, Certificates, Renewal, TlsConfig},
    validate,
};
use k8s_openapi::api::{
    admissionregistration::v1::MutatingWebhookConfiguration,
    core::v1::{Pod, Secret},
};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::watch;

async fn client(cp: &ControlPlane) -> Client {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn tls_config(namespace: &str, webhook_configuration: &str) -> TlsConfig {
    TlsConfig {
        namespace: namespace.into(),
        service_name: "bulwark-operator".into(),
        extra_sans: vec!["127.0.0.1".into()],
        secret_name: "bulwark-operator-tls".into(),
        webhook_configuration: webhook_configuration.into(),
        validating_webhook_configuration: format!("{webhook_configuration}-validation"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_secret_is_created_once_and_renewed_in_place() {
    let cp = ControlPlane::shared();
    let ns = cp.namespace("tls");
    let client = client(cp).await;
    let cfg = tls_config(&ns.name, "unused");

    // Two replicas starting together agree on one CA.
    let (a, b) = tokio::join!(tls::ensure(&client, &cfg), tls::ensure(&client, &cfg));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a, b, "both replicas serve what the Secret holds");
    assert_eq!(tls::ensure(&client, &cfg).await.unwrap(), a, "kept as is");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let secret = secrets.get("bulwark-operator-tls").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let keys: Vec<_> = secret.data.as_ref().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["ca.crt", "ca.key", "tls.crt", "tls.key"]);

    // A serving certificate 25 days from its end is re-issued by the same CA.
    let expiring = a.reissue_at(&cfg.sans(), now() - 340 * 24 * 3600).unwrap();
    assert!(matches!(
        expiring.renewal(&cfg.sans(), now()),
        Renewal::Serving(_)
    ));
    let mut stored = secrets.get("bulwark-operator-tls").await.unwrap();
    stored.data = Some(expiring.to_secret_data());
    secrets
        .replace("bulwark-operator-tls", &PostParams::default(), &stored)
        .await
        .unwrap();
    let renewed = tls::ensure(&client, &cfg).await.unwrap();
    assert_eq!(renewed.ca_pem, a.ca_pem);
    assert_ne!(renewed.cert_pem, expiring.cert_pem);
    assert!(renewed.serving_not_after().unwrap() > now() + 360 * 24 * 3600);
    assert_eq!(
        Certificates::from_secret(&secrets.get("bulwark-operator-tls").await.unwrap()).unwrap(),
        renewed
    );

    // A new --tls-extra-sans name gets a new serving certificate, same CA.
    let mut more = cfg.clone();
    more.extra_sans.push("10.9.8.7".into());
    let widened = tls::ensure(&client, &more).await.unwrap();
    assert_eq!(widened.ca_pem, a.ca_pem);
    assert!(
        widened
            .serving_sans()
            .unwrap()
            .contains(&"10.9.8.7".to_string())
    );
}

fn webhook_configuration(name: &str, port: u16, app_namespace_label: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.bulwark.dev",
            "admissionReviewVersions": ["v1"],
            "sideEffects": "None",
            "timeoutSeconds": 10,
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
                "operations": ["CREATE"], "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"bulwark.dev/inject": app_namespace_label}},
            "objectSelector": {"matchExpressions": [
                {"key": "bulwark.dev/inject", "operator": "NotIn", "values": ["false"]}
            ]}
        }]
    })
}

fn pod_manifest(name: &str, annotations: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": annotations},
        "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "example/app:1", "ports": [{"containerPort": 3000}]}]
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apiserver_calls_the_webhook_over_tls_and_the_pod_gets_its_sidecar() {
    let cp = ControlPlane::shared();
    let operator_ns = cp.namespace("tls-op");
    let app_ns = cp.namespace("tls-app");
    // A label value of this test only, so other tests' namespaces are never sent here.
    let label = unique_name("on");
    cp.kubectl_ok(&[
        "label",
        "namespace",
        &app_ns.name,
        &format!("bulwark.dev/inject={label}"),
    ]);
    let client = client(cp).await;
    let configuration = unique_name("bulwark-sidecar-injector");
    let cfg = tls_config(&operator_ns.name, &configuration);

    // The webhook configuration is not there yet: not an error.
    let certs = tls::ensure(&client, &cfg).await.unwrap();
    assert_eq!(
        tls::patch_ca_bundle::<MutatingWebhookConfiguration>(
            &client,
            &configuration,
            &certs.ca_pem
        )
        .await
        .unwrap(),
        CaBundleOutcome::Missing
    );

    // The operator's webhook listener on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let resolver = CertResolver::new(certs.clone()).unwrap();
    let inject_cfg = Arc::new(InjectConfig {
        image: "ghcr.io/bulwark-dev/bulwark-sidecar:e2e".into(),
        image_pull_policy: "IfNotPresent".into(),
        operator_url: "https://bulwark-operator.bulwark-system.svc:9444".into(),
        ca_pem: resolver.ca_pem(),
        inbound_port: 15080,
        admin_port: 15090,
        cpu_request: "50m".into(),
        memory_request: "32Mi".into(),
        memory_limit: "128Mi".into(),
    });
    let outcomes = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = outcomes.clone();
    let observe = Arc::new(move |o: &inject::Outcome| seen.lock().unwrap().push(o.label().into()));
    let (stop, stopped) = watch::channel(false);
    let server = tokio::spawn(tls::serve_tls(
        listener,
        tls::server_config(resolver.clone()),
        move |_peer| {
            admission::service(
                inject_cfg.clone(),
                observe.clone(),
                Arc::new(|_: &validate::Verdict| {}),
            )
        },
        stopped,
    ));

    // Install the configuration without a caBundle, as the chart does; the rotation loop sets it.
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &serde_json::from_value(webhook_configuration(&configuration, port, &label)).unwrap(),
        )
        .await
        .unwrap();
    let rotation = tokio::spawn(tls::run_rotation(
        client.clone(),
        cfg.clone(),
        resolver.clone(),
        stop.subscribe(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let current = configurations.get(&configuration).await.unwrap();
        let bundle = current.webhooks.unwrap()[0].client_config.ca_bundle.clone();
        if bundle.is_some_and(|b| b.0 == certs.ca_pem.as_bytes()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run_rotation set no caBundle"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        tls::patch_ca_bundle::<MutatingWebhookConfiguration>(
            &client,
            &configuration,
            &certs.ca_pem
        )
        .await
        .unwrap(),
        CaBundleOutcome::Unchanged
    );

    // A pod in the selected namespace: the apiserver calls us, trusting only our CA.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &app_ns.name);
    let apply = |name: &str, annotations: serde_json::Value| {
        let manifest = pod_manifest(name, annotations);
        let mut kubectl = cp.kubectl();
        kubectl.args(["-n", &app_ns.name, "create", "-f", "-"]);
        bulwark_e2e::output_with_stdin(kubectl, &manifest)
    };
    let out = tokio::task::block_in_place(|| apply("web", serde_json::json!({})));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let web = pods.get("web").await.unwrap();
    let spec = web.spec.as_ref().unwrap();
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == "bulwark-sidecar")
        .expect("the sidecar was injected");
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
    let env = |name: &str| {
        sidecar
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(env("BULWARK_APP").as_deref(), Some("127.0.0.1:3000"));
    assert_eq!(env("BULWARK_OPERATOR_CA"), Some(certs.ca_pem.clone()));
    assert_eq!(
        env("BULWARK_APP_PROTOCOL"),
        None,
        "no annotation, no override"
    );
    assert_eq!(
        web.metadata.labels.as_ref().unwrap()["bulwark.dev/injected"],
        "true"
    );
    let volumes: Vec<_> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert!(volumes.contains(&"bulwark-token") && volumes.contains(&"bulwark-state"));

    // Opted out: created untouched.
    let out = tokio::task::block_in_place(|| {
        apply("plain", serde_json::json!({"bulwark.dev/inject": "false"}))
    });
    assert!(out.status.success());
    let plain = pods.get("plain").await.unwrap();
    assert!(plain.spec.unwrap().init_containers.is_none());

    // A bad annotation: refused, naming it.
    let out = tokio::task::block_in_place(|| {
        apply("bad", serde_json::json!({"bulwark.dev/app-port": "http"}))
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bulwark.dev/app-port"), "{stderr}");

    // The app protocol annotation: passed to the sidecar as it is (lower case); a value the
    // sidecar does not take is refused, naming the annotation and the values it takes.
    let out = tokio::task::block_in_place(|| {
        apply(
            "rpc",
            serde_json::json!({"bulwark.dev/app-protocol": "H2C"}),
        )
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rpc = pods.get("rpc").await.unwrap();
    let protocol = rpc
        .spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .filter(|c| c.name == "bulwark-sidecar")
        .flat_map(|c| c.env.iter().flatten())
        .find(|e| e.name == "BULWARK_APP_PROTOCOL")
        .and_then(|e| e.value.clone());
    assert_eq!(protocol.as_deref(), Some("h2c"));
    let out = tokio::task::block_in_place(|| {
        apply(
            "bad-protocol",
            serde_json::json!({"bulwark.dev/app-protocol": "http2"}),
        )
    });
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bulwark.dev/app-protocol") && stderr.contains("\"h2c\""),
        "{stderr}"
    );

    assert_eq!(
        *outcomes.lock().unwrap(),
        ["injected", "skipped", "denied", "injected", "denied"]
    );

    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), rotation)
        .await
        .unwrap()
        .unwrap();
    let _ = configurations
        .delete(&configuration, &DeleteParams::default())
        .await;
}
