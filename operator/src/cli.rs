//! Command-line flags; each also reads an environment variable for the Deployment's `env`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// The Bulwark operator: reconciles Bulwark policies and serves them to sidecars.
#[derive(Debug, clap::Parser)]
#[command(name = "bulwark-operator", version, about, long_about = None)]
pub struct Args {
    /// Address of the admin listener (/healthz, /readyz, /metrics).
    #[arg(long, env = "BULWARK_ADMIN_LISTEN", default_value = "0.0.0.0:8080")]
    pub admin_listen: SocketAddr,

    /// Kubeconfig file to reach the apiserver. Default: the in-cluster ServiceAccount, else
    /// $KUBECONFIG, else ~/.kube/config.
    #[arg(long, env = "BULWARK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Seconds between checks that the apiserver answers and serves Bulwark's API
    /// (bulwark.dev/v1alpha1); /readyz reports the last result.
    #[arg(long, env = "BULWARK_API_CHECK_INTERVAL_SECONDS", default_value_t = 10)]
    pub api_check_interval_seconds: u64,

    /// The namespace the operator runs in: its Lease, TLS Secret and distribution reports live
    /// there (the Deployment sets it from the downward API).
    #[arg(long, env = "BULWARK_NAMESPACE", default_value = "bulwark-system")]
    pub namespace: String,

    /// This replica's name, its identity in the leader Lease (the Deployment sets the pod name).
    /// Default: the host name.
    #[arg(long, env = "BULWARK_POD_NAME")]
    pub pod_name: Option<String>,

    /// This replica's pod UID (the Deployment sets it from the downward API). With it the
    /// replica's distribution report is owned by its pod, so Kubernetes' garbage collector
    /// deletes the report when the pod is gone.
    #[arg(long, env = "BULWARK_POD_UID", requires = "pod_name")]
    pub pod_uid: Option<String>,

    /// Name of the leader-election Lease in --namespace.
    #[arg(long, env = "BULWARK_LEASE_NAME", default_value = "bulwark-operator")]
    pub lease_name: String,

    /// Address of the injection webhook's TLS listener (called by the apiserver).
    #[arg(long, env = "BULWARK_WEBHOOK_LISTEN", default_value = "0.0.0.0:9443")]
    pub webhook_listen: SocketAddr,

    /// Address of the policy stream's TLS listener (sidecars connect here).
    #[arg(
        long,
        env = "BULWARK_DISTRIBUTION_LISTEN",
        default_value = "0.0.0.0:9444"
    )]
    pub distribution_listen: SocketAddr,

    /// The operator's Service; its DNS names go into the serving certificate.
    #[arg(long, env = "BULWARK_SERVICE_NAME", default_value = "bulwark-operator")]
    pub service_name: String,

    /// More names (DNS or IP) for the serving certificate, e.g. 127.0.0.1 when the apiserver
    /// calls a webhook URL on this machine.
    #[arg(long, env = "BULWARK_TLS_EXTRA_SANS", value_delimiter = ',')]
    pub tls_extra_sans: Vec<String>,

    /// Secret in --namespace holding the operator's CA and serving certificate (created and
    /// rotated by the operator; shared by the replicas).
    #[arg(
        long,
        env = "BULWARK_TLS_SECRET",
        default_value = "bulwark-operator-tls"
    )]
    pub tls_secret: String,

    /// Secret in --namespace where the leader keeps each WebhookEndpoint's signing key and,
    /// during a rotation's grace period, the previous one (created and written by the operator;
    /// read by every replica).
    #[arg(
        long,
        env = "BULWARK_SIGNING_KEYS_SECRET",
        default_value = "bulwark-webhook-signing-keys"
    )]
    pub signing_keys_secret: String,

    /// MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    #[arg(
        long,
        env = "BULWARK_WEBHOOK_CONFIGURATION",
        default_value = "bulwark-sidecar-injector"
    )]
    pub webhook_configuration: String,

    /// ValidatingWebhookConfiguration (the `/validate` webhook) whose `caBundle` the operator
    /// keeps current.
    #[arg(
        long,
        env = "BULWARK_VALIDATING_WEBHOOK_CONFIGURATION",
        default_value = "bulwark-validation"
    )]
    pub validating_webhook_configuration: String,

    /// Image of the injected sidecar container.
    #[arg(
        long,
        env = "BULWARK_SIDECAR_IMAGE",
        default_value = "ghcr.io/bulwark-dev/bulwark-sidecar:0.1.0"
    )]
    pub sidecar_image: String,

    /// imagePullPolicy of the injected sidecar container.
    #[arg(
        long,
        env = "BULWARK_SIDECAR_IMAGE_PULL_POLICY",
        default_value = "IfNotPresent"
    )]
    pub sidecar_image_pull_policy: String,

    /// URL injected sidecars use to reach the policy stream. Default:
    /// https://<--service-name>.<--namespace>.svc:<port of --distribution-listen>.
    #[arg(long, env = "BULWARK_SIDECAR_OPERATOR_URL")]
    pub sidecar_operator_url: Option<String>,

    /// Port of the sidecar's inbound listener in injected pods (the container port
    /// `bulwark-http`: point a Service's targetPort at it).
    #[arg(long, env = "BULWARK_SIDECAR_INBOUND_PORT", default_value_t = 15080)]
    pub sidecar_inbound_port: u16,

    /// Port of the sidecar's admin listener in injected pods (probes and /metrics).
    #[arg(long, env = "BULWARK_SIDECAR_ADMIN_PORT", default_value_t = 15090)]
    pub sidecar_admin_port: u16,

    /// CPU request of the injected sidecar.
    #[arg(long, env = "BULWARK_SIDECAR_CPU_REQUEST", default_value = "50m")]
    pub sidecar_cpu_request: String,

    /// Memory request of the injected sidecar.
    #[arg(long, env = "BULWARK_SIDECAR_MEMORY_REQUEST", default_value = "32Mi")]
    pub sidecar_memory_request: String,

    /// Redis for `scope: Global` policies, e.g. `redis://:password@redis:6379/0`: sent to the
    /// sidecars whose snapshot has a Global policy, over the authenticated stream only (the chart
    /// sets it from a Secret).
    #[arg(long, env = "BULWARK_REDIS_URL", conflicts_with = "redis_cluster")]
    pub redis_url: Option<String>,

    /// Redis Cluster instead of --redis-url: comma-separated seed node URLs.
    #[arg(long, env = "BULWARK_REDIS_CLUSTER", value_delimiter = ',')]
    pub redis_cluster: Vec<String>,

    /// Memory limit of the injected sidecar.
    #[arg(long, env = "BULWARK_SIDECAR_MEMORY_LIMIT", default_value = "128Mi")]
    pub sidecar_memory_limit: String,
}

impl Args {
    pub async fn kube_client(&self) -> anyhow::Result<Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = Kubeconfig::read_from(path)?;
                Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
            }
            None => Config::infer().await?,
        };
        Ok(Client::try_from(config)?)
    }

    pub fn api_check_interval(&self) -> Duration {
        Duration::from_secs(self.api_check_interval_seconds.max(1))
    }

    /// This replica's identity.
    pub fn identity(&self) -> String {
        self.pod_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| format!("bulwark-operator-{}", std::process::id()))
        })
    }

    /// The signing-key ledger Secret.
    pub fn signing_keys_secret(&self) -> bulwark_api::snapshot::ObjectRef {
        bulwark_api::snapshot::ObjectRef {
            namespace: self.namespace.clone(),
            name: self.signing_keys_secret.clone(),
        }
    }

    /// The Redis sidecars with Global policies are given, if any.
    pub fn redis(&self) -> Option<bulwark_api::snapshot::RedisConnection> {
        // The chart may leave the variable empty: that is no Redis.
        let url = self.redis_url.as_deref().filter(|u| !u.is_empty());
        bulwark_api::snapshot::RedisConnection::from_flags(url, &self.redis_cluster)
    }

    /// The URL injected sidecars connect to.
    pub fn sidecar_operator_url(&self) -> String {
        self.sidecar_operator_url.clone().unwrap_or_else(|| {
            format!(
                "https://{}.{}.svc:{}",
                self.service_name,
                self.namespace,
                self.distribution_listen.port()
            )
        })
    }
}
