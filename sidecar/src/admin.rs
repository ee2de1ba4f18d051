//! The admin listener: `/healthz` (the process serves), `/readyz` (it can enforce), `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode, header};
use pingora::{apps::http_app::ServeHttp, protocols::http::ServerSession};

use crate::metrics::Metrics;

pub struct Admin {
    metrics: Arc<Metrics>,
}

impl Admin {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self { metrics }
    }
}

fn text(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
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
            "/healthz" => text(StatusCode::OK, plain, b"ok\n".to_vec()),
            // Without a policy source the sidecar passes traffic through unchanged, so it is
            // ready as soon as it serves; policy sources will gate this on a first snapshot.
            "/readyz" => text(StatusCode::OK, plain, b"ready\n".to_vec()),
            "/metrics" => text(
                StatusCode::OK,
                prometheus::TEXT_FORMAT,
                self.metrics.render(),
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                plain,
                b"not found: try /healthz, /readyz or /metrics\n".to_vec(),
            ),
        }
    }
}
