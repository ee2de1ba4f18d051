//! The admin listener (loopback): a router over the routes each part of the sidecar provides.
//! The sidecar's own: `/healthz` (the process serves), `/readyz` (it enforces a policy, or has
//! none to wait for), `/metrics`, `/config` (the snapshot being enforced, secrets redacted).
//! The features': `/quota` (a key's quota usage: [`bulwark_policy::quota::admin`]); next,
//! OFREP and the webhook API, each added with one [`Admin::route`] call in `main.rs`.

use std::{future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use bulwark_policy::{clock::unix_nanos, quota, runtime::Runtime};
use http::{Method, Response, StatusCode, header};
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::metrics::Metrics;

/// What a route sees of a request.
pub struct AdminRequest {
    pub method: Method,
    pub query: Option<String>,
}

/// A route's answer.
pub struct AdminResponse {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

const PLAIN: &str = "text/plain; charset=utf-8";

impl AdminResponse {
    pub fn text(status: StatusCode, text: &str) -> Self {
        Self {
            status,
            content_type: PLAIN,
            body: text.as_bytes().to_vec(),
        }
    }

    pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Self {
        Self {
            status,
            content_type: "application/json",
            body: serde_json::to_vec_pretty(value).expect("admin answers serialise"),
        }
    }
}

type Answer = Pin<Box<dyn Future<Output = AdminResponse> + Send>>;
type Handler = Box<dyn Fn(AdminRequest) -> Answer + Send + Sync>;

/// The admin listener's routes, by exact path.
#[derive(Default)]
pub struct Admin {
    routes: Vec<(&'static str, Handler)>,
}

impl Admin {
    /// The sidecar's own routes.
    pub fn new(metrics: Arc<Metrics>, runtime: Arc<Runtime>) -> Self {
        let ready = runtime.clone();
        Self::default()
            .route("/healthz", |_| async {
                AdminResponse::text(StatusCode::OK, "ok\n")
            })
            .route("/readyz", move |_| {
                let ready = ready.is_ready();
                async move {
                    if ready {
                        AdminResponse::text(StatusCode::OK, "ready\n")
                    } else {
                        AdminResponse::text(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "waiting for a first valid policy snapshot\n",
                        )
                    }
                }
            })
            .route("/metrics", move |_| {
                let body = metrics.render();
                async move {
                    AdminResponse {
                        status: StatusCode::OK,
                        content_type: prometheus::TEXT_FORMAT,
                        body,
                    }
                }
            })
            .route("/config", move |_| {
                let snapshot = runtime.policy().snapshot.redacted();
                async move { AdminResponse::json(StatusCode::OK, &snapshot) }
            })
    }

    /// Serves `path` with `handler`.
    pub fn route<F, A>(mut self, path: &'static str, handler: F) -> Self
    where
        F: Fn(AdminRequest) -> A + Send + Sync + 'static,
        A: Future<Output = AdminResponse> + Send + 'static,
    {
        self.routes
            .push((path, Box::new(move |request| Box::pin(handler(request)))));
        self
    }

    /// `/quota`: the quota feature's usage report.
    pub fn with_quota(self, runtime: Arc<Runtime>) -> Self {
        self.route("/quota", move |request| {
            let runtime = runtime.clone();
            async move {
                let (status, body) = quota::admin::report(
                    &runtime.policy().quotas,
                    &runtime.quota_usage,
                    request.query.as_deref(),
                    unix_nanos(),
                )
                .await;
                AdminResponse::json(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    &body,
                )
            }
        })
    }

    async fn answer(&self, path: &str, request: AdminRequest) -> AdminResponse {
        match self.routes.iter().find(|(p, _)| *p == path) {
            Some((_, handler)) => handler(request).await,
            None => {
                let paths: Vec<&str> = self.routes.iter().map(|(p, _)| *p).collect();
                AdminResponse::text(
                    StatusCode::NOT_FOUND,
                    &format!("not found: try {}\n", paths.join(", ")),
                )
            }
        }
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let header = session.req_header();
        let request = AdminRequest {
            method: header.method.clone(),
            query: header.uri.query().map(str::to_owned),
        };
        let path = header.uri.path().to_owned();
        let answer = self.answer(&path, request).await;
        Response::builder()
            .status(answer.status)
            .header(header::CONTENT_TYPE, answer.content_type)
            .header(header::CONTENT_LENGTH, answer.body.len())
            .body(answer.body)
            .expect("admin response parts are valid")
    }
}
