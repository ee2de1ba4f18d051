//! flagd's evaluation API (`flagd.evaluation.v1` and `v2`: ResolveBoolean/String/Int/Float/
//! Object/All and EventStream) over gRPC on `--flagd-listen`, so OpenFeature's flagd providers in
//! RPC mode evaluate against the sidecar with only their address changed
//! (docs/feature-flags.md). v2 is what current providers call; v1 stays for older ones. The
//! unary calls also answer Connect with JSON (HTTP/1.1 or h2c), as flagd does.
//!
//! - [`resolve`]: typed resolution and flagd's error statuses, over the policy crate's flags.
//! - [`service`]: the two generated services, answered by one implementation.
//! - [`connect`]: the unary calls over Connect with JSON, and EventStream as a Connect server
//!   stream, on the same port.
//! - [`EvaluationServer`]: the listener, run as a background service of the sidecar.

pub mod connect;
pub mod resolve;
pub mod service;

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use bulwark_policy::runtime::Runtime;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
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
        let listener = loop {
            match tokio::net::TcpListener::bind(self.listen).await {
                Ok(listener) => break listener,
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
        let grpc =
            tonic::service::Routes::new(proto::v1::service_server::ServiceServer::new(api.clone()))
                .add_service(proto::v2::service_server::ServiceServer::new(api.clone()))
                .prepare();
        let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting an evaluation API connection failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            // Small frames both ways: without this, Nagle's algorithm and delayed ACKs hold
            // answers back ~40 ms (measured: p99 47 ms, bench/flags.sh).
            if let Err(e) = stream.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
            let (grpc, api) = (grpc.clone(), api.clone());
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (mut grpc, api) = (grpc.clone(), api.clone());
                async move { Ok::<_, Infallible>(route(&mut grpc, &api, req).await) }
            });
            let connection = server
                .serve_connection(TokioIo::new(stream), service)
                .into_owned();
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(error = %e, "evaluation API connection ended");
                }
            });
        }
    }
}

/// gRPC (any `application/grpc…` content type) to tonic; Connect with JSON to [`connect`].
async fn route(
    grpc: &mut tonic::service::Routes,
    api: &service::EvaluationApi,
    req: Request<Incoming>,
) -> Response<tonic::body::Body> {
    let is_grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if !is_grpc && connect::is_event_stream(req.uri().path()) {
        return connect::event_stream(api);
    }
    if is_grpc || !connect::is_connect_call(req.uri().path()) {
        let response = tower::ServiceExt::oneshot(grpc.clone(), req).await;
        return match response {
            Ok(response) => response,
            Err(never) => match never {},
        };
    }
    let path = req.uri().path().to_owned();
    let body = match http_body_util::Limited::new(req.into_body(), connect::MAX_BODY)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes(),
        Err(_) => Bytes::new(),
    };
    connect::answer(api, &path, &body).map(|b| tonic::body::Body::new(Full::new(b)))
}
