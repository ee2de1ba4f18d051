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
}
