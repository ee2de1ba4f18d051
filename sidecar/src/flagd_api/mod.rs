//! flagd's evaluation API (`flagd.evaluation.v1` and `v2`: ResolveBoolean/String/Int/Float/
//! Object/All and EventStream) over gRPC on `--flagd-listen`, so OpenFeature's flagd providers in
//! RPC mode evaluate against the sidecar with only their address changed
//! (docs/feature-flags.md). v2 is what current providers call; v1 stays for older ones.
//!
//! - [`resolve`]: typed resolution and flagd's error statuses, over the policy crate's flags.
//! - [`service`]: the two generated services, answered by one implementation.
//! - [`EvaluationServer`]: the listener, run as a background service of the sidecar.

pub mod resolve;
pub mod service;

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use bulwark_policy::runtime::Runtime;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

/// The code generated from `proto/flagd/evaluation/*` (build.rs).
pub mod proto {
    pub mod v1 {
        tonic::include_proto!("flagd.evaluation.v1");
    }
    pub mod v2 {
        tonic::include_proto!("flagd.evaluation.v2");
    }
}

const BIND_RETRY: std::time::Duration = std::time::Duration::from_millis(500);

/// Serves the evaluation API on `listen` until shutdown.
pub struct EvaluationServer {
    pub listen: SocketAddr,
    pub runtime: Arc<Runtime>,
}

#[async_trait]
impl BackgroundService for EvaluationServer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // During an `--upgrade` handover the old process holds the port until it exits: retry.
        let incoming = loop {
            match tonic::transport::server::TcpIncoming::bind(self.listen) {
                Ok(incoming) => break incoming,
                Err(e) => {
                    tracing::warn!(listen = %self.listen, error = %e, "cannot listen for flagd's evaluation API yet; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(BIND_RETRY) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        };
        let api = service::EvaluationApi::new(self.runtime.clone());
        let served = tonic::transport::Server::builder()
            .add_service(proto::v1::service_server::ServiceServer::new(api.clone()))
            .add_service(proto::v2::service_server::ServiceServer::new(api))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.changed().await;
            })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "flagd's evaluation API stopped");
        }
    }
}
