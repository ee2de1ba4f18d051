//! The inbound `ProxyHttp`. Kept thin: each phase calls into a policy module; it holds no
//! policy logic of its own.

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use pingora::{
    Result,
    prelude::HttpPeer,
    proxy::{ProxyHttp, Session},
};

use crate::metrics::{Metrics, status_class};

pub struct InboundProxy {
    app: SocketAddr,
    metrics: Arc<Metrics>,
}

impl InboundProxy {
    pub fn new(app: SocketAddr, metrics: Arc<Metrics>) -> Self {
        Self { app, metrics }
    }
}

/// Per-request state (policy decisions will live here, never in globals).
#[derive(Default)]
pub struct RequestCtx {}

#[async_trait]
impl ProxyHttp for InboundProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // The app is plain HTTP on localhost; TLS, if any, ends at the sidecar.
        Ok(Box::new(HttpPeer::new(self.app, false, String::new())))
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        _ctx: &mut Self::CTX,
    ) {
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics
            .inbound_requests
            .with_label_values(&[status_class(status)])
            .inc();
    }
}
