//! The admin listener (loopback): `/healthz` (the process serves), `/readyz` (it enforces a
//! policy, or has none to wait for), `/metrics`, `/config` (the snapshot being enforced,
//! secrets redacted), and `/quota` (a key's quota usage: see [`crate::quota::admin`]).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::{
    clock::unix_nanos,
    metrics::Metrics,
    policy::ActivePolicy,
    quota::{self, usage::UsageStore},
};

pub struct Admin {
    metrics: Arc<Metrics>,
    policy: Arc<ActivePolicy>,
    quota_usage: Arc<UsageStore>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, policy: Arc<ActivePolicy>) -> Self {
        Self {
            metrics,
            policy,
            quota_usage: Arc::new(UsageStore::new()),
        }
    }

    /// Reports local quota usage from `usage` (the store the inbound proxy charges).
    pub fn with_quota_usage(mut self, usage: Arc<UsageStore>) -> Self {
        self.quota_usage = usage;
        self
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len())
        .body(body)
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let plain = "text/plain; charset=utf-8";
        match session.req_header().uri.path() {
            "/healthz" => respond(StatusCode::OK, plain, b"ok\n".to_vec()),
            "/readyz" if self.policy.is_ready() => {
                respond(StatusCode::OK, plain, b"ready\n".to_vec())
            }
            "/readyz" => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                plain,
                b"waiting for a first valid policy snapshot\n".to_vec(),
            ),
            "/metrics" => respond(
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                self.metrics.render(),
            ),
            "/config" => {
                let snapshot = self.policy.load().snapshot.redacted();
                let body =
                    serde_json::to_vec_pretty(&snapshot).expect("a snapshot always serialises");
                respond(StatusCode::OK, "application/json", body)
            }
            "/quota" => {
                let policy = self.policy.load();
                let query = session.req_header().uri.query();
                let (status, body) =
                    quota::admin::report(&policy.quotas, &self.quota_usage, query, unix_nanos())
                        .await;
                let body = serde_json::to_vec_pretty(&body).expect("JSON values serialise");
                respond(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "application/json",
                    body,
                )
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                plain,
                b"not found: try /healthz, /readyz, /metrics, /config or /quota\n".to_vec(),
            ),
        }
    }
}
