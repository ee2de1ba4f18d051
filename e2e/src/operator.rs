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
