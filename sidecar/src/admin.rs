//! The admin listener (loopback): `/healthz` (the process serves), `/readyz` (it enforces a
//! policy, or has none to wait for), `/metrics`, and `/config` (the snapshot being enforced,
//! secrets redacted).

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::{metrics::Metrics, policy::ActivePolicy};

pub struct Admin {
    metrics: Arc<Metrics>,
    policy: Arc<ActivePolicy>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>, policy: Arc<ActivePolicy>) -> Self {
        Self { metrics, policy }
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
            _ => respond(
                StatusCode::NOT_FOUND,
                plain,
                b"not found: try /healthz, /readyz, /metrics or /config\n".to_vec(),
            ),
        }
    }
}
