//! The inbound `ProxyHttp`. Kept thin: each phase builds a [`RequestView`] and asks a policy
//! module for a decision; it holds no policy logic of its own.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::{
    Result,
    http::ResponseHeader,
    prelude::HttpPeer,
    proxy::{ProxyHttp, Session},
};

use crate::{
    clock::unix_nanos,
    metrics::Metrics,
    policy::ActivePolicy,
    quota::{engine::RequestQuotas, usage::UsageStore},
    ratelimit::{
        engine::{AppliedLimit, Rejection},
        global::FastSync,
        store::LocalStore,
    },
    request::{self, RequestView},
};

pub struct InboundProxy {
    app: SocketAddr,
    policy: Arc<ActivePolicy>,
    store: Arc<LocalStore>,
    fast: Option<Arc<FastSync>>,
    metrics: Arc<Metrics>,
    /// Local quota usage, shared with the flusher and the admin API.
    quota_usage: Arc<UsageStore>,
    /// Proxies in front that append to X-Forwarded-For (`--trusted-proxy-hops`).
    trusted_hops: usize,
}

impl InboundProxy {
    pub fn new(
        app: SocketAddr,
        policy: Arc<ActivePolicy>,
        store: Arc<LocalStore>,
        fast: Option<Arc<FastSync>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            app,
            policy,
            store,
            fast,
            metrics,
            quota_usage: Arc::new(UsageStore::new()),
            trusted_hops: 0,
        }
    }

    /// Takes the client address from X-Forwarded-For behind `hops` trusted proxies.
    pub fn with_trusted_proxy_hops(mut self, hops: usize) -> Self {
        self.trusted_hops = hops;
        self
    }

    /// Charges local quotas to `usage` (the store the flusher persists) instead of a private one.
    pub fn with_quota_usage(mut self, usage: Arc<UsageStore>) -> Self {
        self.quota_usage = usage;
        self
    }
}

/// Per-request state: what the policy phases decided, for the later phases.
#[derive(Default)]
pub struct RequestCtx {
    /// The limit whose headers go on the app's response.
    rate_limit: Option<AppliedLimit>,
    /// Quota warnings for the response, and charges made after it.
    quota: RequestQuotas,
}

/// The policy view of a Pingora request.
fn view(session: &Session, trusted_hops: usize) -> RequestView<'_> {
    let header = session.req_header();
    let peer = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    RequestView {
        method: header.method.as_str(),
        path: header.uri.path(),
        query: header.uri.query(),
        host: header.uri.host().or_else(|| {
            header
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        }),
        headers: &header.headers,
        client_ip: request::client_ip(peer, &header.headers, trusted_hops),
    }
}

async fn reject(session: &mut Session, rejection: Rejection) -> Result<()> {
    let mut header = ResponseHeader::build(rejection.status, Some(rejection.headers.len() + 1))?;
    for (name, value) in rejection.headers {
        header.append_header(name, value)?;
    }
    header.insert_header(
        http::header::CONTENT_LENGTH,
        rejection.body.len().to_string(),
    )?;
    let empty = rejection.body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::from(rejection.body)), true)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for InboundProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let policy = self.policy.load();
        if !policy.rate_limits.is_empty() && self.rate_limit(session, ctx, &policy).await? {
            return Ok(true);
        }
        if policy.quotas.is_empty() {
            return Ok(false);
        }
        let decision = policy
            .quotas
            .decide(
                &view(session, self.trusted_hops),
                &self.quota_usage,
                unix_nanos(),
            )
            .await;
        ctx.quota = decision.pending;
        match decision.reject {
            Some(rejection) => {
                reject(session, rejection).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        // The app is plain HTTP on localhost; TLS, if any, ends at the sidecar.
        Ok(Box::new(HttpPeer::new(self.app, false, String::new())))
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(limit) = ctx.rate_limit.take() {
            for (name, value) in limit.headers() {
                response.insert_header(name, value)?;
            }
        }
        for (name, value) in ctx.quota.response_headers() {
            response.append_header(name.clone(), value.as_str())?;
        }
        Ok(())
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut Self::CTX,
    ) {
        let status = session.response_written().map(|r| r.status.as_u16());
        self.metrics.inbound_requests.count(status);
        if ctx.quota.has_deferred() {
            std::mem::take(&mut ctx.quota)
                .settle(
                    &self.quota_usage,
                    session.body_bytes_read() as u64,
                    session.body_bytes_sent() as u64,
                )
                .await;
        }
    }
}

impl InboundProxy {
    /// Rate limits: true when the request was refused (the response is written).
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &crate::policy::CompiledPolicy,
    ) -> Result<bool> {
        let started = Instant::now();
        let pending = policy.rate_limits.begin(
            &view(session, self.trusted_hops),
            &self.store,
            self.fast.as_deref(),
            unix_nanos(),
        );
        let decision = if pending.needs_redis() {
            pending.finish().await
        } else {
            pending.finish_local()
        };
        self.metrics
            .ratelimit_decision_seconds
            .observe(started.elapsed().as_secs_f64());
        match decision.reject {
            Some(rejection) => {
                reject(session, rejection).await?;
                Ok(true)
            }
            None => {
                ctx.rate_limit = decision.applied;
                Ok(false)
            }
        }
    }
}
