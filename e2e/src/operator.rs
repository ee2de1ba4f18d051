//! The operator binary as a local process, authenticated as the chart's ServiceAccount, so the
//! RBAC the chart grants is the RBAC it runs with.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{
    ControlPlane, free_ports,
    process::{Running, wait_for_status},
    workspace_binary,
};

/// Where one operator replica listens.
#[derive(Clone, Copy, Debug)]
pub struct OperatorPorts {
    pub admin: SocketAddr,
    pub webhook: SocketAddr,
    pub distribution: SocketAddr,
}

impl OperatorPorts {
    pub fn free() -> Self {
        let [admin, webhook, distribution] = free_ports();
        let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        Self {
            admin: at(admin),
            webhook: at(webhook),
            distribution: at(distribution),
        }
    }
}

/// A running operator replica.
pub struct Operator {
    pub identity: String,
    pub ports: OperatorPorts,
    pub process: Running,
}

impl Operator {
    /// Starts a replica named `identity` with `kubeconfig`, operating from `namespace`, with
    /// extra environment `env` (what the Deployment would set), and waits until /healthz answers.
    pub fn start(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        ports: OperatorPorts,
        log_dir: &Path,
        env: &[(&str, &str)],
    ) -> Operator {
        let mut cmd = Command::new(workspace_binary("bulwark-operator"));
        cmd.arg("--kubeconfig")
            .arg(kubeconfig)
            .args(["--namespace", namespace, "--pod-name", identity])
            .args(["--admin-listen", &ports.admin.to_string()])
            .args(["--webhook-listen", &ports.webhook.to_string()])
            .args(["--distribution-listen", &ports.distribution.to_string()])
            .args(["--tls-extra-sans", "127.0.0.1"])
            .args(["--api-check-interval-seconds", "1"])
            .env("RUST_LOG", "info,kube=warn")
            .envs(env.iter().copied());
        let log = log_dir.join(format!(
            "operator-{identity}-{}.log",
            crate::unique_name("run")
        ));
        let process = Running::spawn("bulwark-operator", cmd, &log);
        wait_for_status(ports.admin, "/healthz", 200, Duration::from_secs(20));
        Operator {
            identity: identity.to_string(),
            ports,
            process,
        }
    }
}

/// A kubeconfig that authenticates with a token of ServiceAccount `namespace/name` (from the
/// TokenRequest API), for the same apiserver and CA as the admin kubeconfig.
pub fn service_account_kubeconfig(cp: &ControlPlane, namespace: &str, name: &str) -> PathBuf {
    let token = cp
        .kubectl_ok(&["create", "token", name, "-n", namespace, "--duration", "2h"])
        .trim()
        .to_string();
    let admin: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&cp.kubeconfig).unwrap()).unwrap();
    let cluster = &admin["clusters"][0]["cluster"];
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bulwark\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {name}\n  user:\n    token: {token}\ncontexts:\n- name: bulwark\n  context: {{cluster: bulwark, user: {name}}}\ncurrent-context: bulwark\n",
        cluster["server"].as_str().unwrap(),
        cluster["certificate-authority-data"].as_str().unwrap(),
    );
    let path = cp.dir.join(format!("{namespace}-{name}.kubeconfig"));
    std::fs::write(&path, config).unwrap();
    path
}

/// The chart installed as release `bulwark` in `release_ns`, and one operator replica running
/// as its ServiceAccount. The release's cluster-scoped objects (webhook configurations,
/// ClusterRoles) exist once per cluster, so a test binary installs it once (keep it in a
/// `static`) and its tests, which cargo runs in parallel, share it in namespaces of their own.
pub struct Release {
    pub ports: OperatorPorts,
    _operator: Operator,
}

impl Release {
    pub fn install(cp: &ControlPlane, release_ns: &str) -> Release {
        let ports = OperatorPorts::free();
        let chart = crate::repo_root().join("charts/bulwark");
        cp.helm_ok(&[
            "install",
            "bulwark",
            chart.to_str().unwrap(),
            "--namespace",
            release_ns,
            "--create-namespace",
            "--set",
            &format!("webhook.url=https://{}/mutate", ports.webhook),
        ]);
        let sa_kubeconfig = service_account_kubeconfig(cp, release_ns, "bulwark-operator");
        let operator = Operator::start(
            &sa_kubeconfig,
            release_ns,
            "op-a",
            ports,
            &cp.dir.join("logs"),
            &[],
        );
        // Kept in a static, never dropped: the operator ends with this process instead.
        operator.process.kill_when_this_process_exits();
        wait_for_status(ports.admin, "/readyz", 200, Duration::from_secs(30));
        crate::eventually(Duration::from_secs(20), "the webhook's caBundle", || {
            let ca = cp.kubectl_ok(&[
                "get",
                "mutatingwebhookconfiguration/bulwark-sidecar-injector",
                "-o",
                "jsonpath={.webhooks[0].clientConfig.caBundle}",
            ]);
            (!ca.is_empty()).then_some(())
        });
        Release {
            ports,
            _operator: operator,
        }
    }

    /// A namespace (named after `app`) with injection on, a pod `<app>-0` labelled
    /// `app: <app>` that the webhook injects, and that pod's sidecar run locally in operator
    /// mode with a token bound to the pod, `extra` flags and its files in `work`; ready.
    pub fn injected_sidecar<'a>(
        &self,
        cp: &'a ControlPlane,
        work: &Path,
        app: &str,
        extra: &[&str],
    ) -> (crate::Namespace<'a>, crate::sidecar::Sidecar) {
        let ns = cp.namespace(app);
        cp.kubectl_ok(&["label", "namespace", &ns.name, "bulwark.dev/inject=enabled"]);
        ns.wait_for_default_service_account();
        let pod = format!("{app}-0");
        let mut kubectl = cp.kubectl();
        kubectl.args(["apply", "-f", "-"]);
        crate::stdout_or_panic(
            "kubectl",
            &["apply", "-f", "-"],
            crate::output_with_stdin(
                kubectl,
                &format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}, namespace: {}, labels: {{app: {app}}}}}\nspec:\n  containers: [{{name: app, image: registry.example/{app}:1}}]\n",
                    ns.name
                ),
            ),
        );
        let ca = ns.kubectl_ok(&[
            "get",
            "pod",
            &pod,
            "-o",
            "jsonpath={.spec.initContainers[?(@.name==\"bulwark-sidecar\")].env[?(@.name==\"BULWARK_OPERATOR_CA\")].value}",
        ]);
        assert!(
            ca.contains("BEGIN CERTIFICATE"),
            "the pod is injected: {ca:?}"
        );
        let ca_path = work.join("operator-ca.pem");
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
            &pod,
        ]);
        let token_path = work.join("token");
        std::fs::write(&token_path, token.trim()).unwrap();
        let operator_url = format!("https://{}", self.ports.distribution);
        let mut args = vec![
            "--operator-url",
            &operator_url,
            "--operator-ca-file",
            ca_path.to_str().unwrap(),
            "--token-file",
            token_path.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let sidecar = crate::sidecar::Sidecar::start(
            "127.0.0.1:9".parse().unwrap(), // the app (inbound) is not used here
            &work.join("sidecar"),
            &args,
        );
        wait_for_status(sidecar.admin, "/readyz", 200, Duration::from_secs(20));
        (ns, sidecar)
    }
}
