//! The inbound listener's `ProxyHttp`: clients → the app on localhost, where policy applies.
//! Thin: one [`RequestView`](bulwark_policy::request::RequestView) per request, one call to
//! the admission pipeline, and the phases carry out its answer.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bulwark_policy::respond::{Reason, Reply};

use async_trait::async_trait;
use bulwark_policy::{
    admission::{Direction, HeaderEdit, ResponseEffects},
    clock::unix_nanos,
    grpc::MessageCounter,
    quota::engine::Exchanged,
    request::path::PathNormalization,
    runtime::Runtime,
};
use http::HeaderValue;
use pingora::{
    Result,
    http::{RequestHeader, ResponseHeader},
    prelude::HttpPeer,
    proxy::{FailToProxy, ProxyHttp, Session},
};

use super::{
    Timing, client_gone, edge, fail_to_proxy,
    failover::{Tries, on_connect_failure, on_error, on_response},
    normalize_path, peer_ip,
    protocol::{self, AppProtocol},
    refuse_ambiguous, request_view, set_request_headers,
};
use crate::{dns::DnsCache, metrics::Metrics};

pub struct InboundProxy {
    app: SocketAddr,
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    /// Proxies in front that append to X-Forwarded-For (`--trusted-proxy-hops`).
    trusted_hops: usize,
    /// How paths are normalized before matching and forwarding.
    paths: PathNormalization,
    /// For the DNS-named endpoints of an upstream a gate routes to.
    dns: Arc<DnsCache>,
    /// What the app speaks, when set (`--app-protocol`); else the snapshot's, else detected.
    app_protocol: Option<AppProtocol>,
}

impl InboundProxy {
    pub fn new(app: SocketAddr, runtime: Arc<Runtime>, metrics: Arc<Metrics>) -> Self {
        Self {
            app,
            runtime,
            metrics,
            trusted_hops: 0,
            paths: PathNormalization::default(),
            dns: Arc::default(),
            app_protocol: None,
        }
    }

    /// Speaks `protocol` to the app, whatever the snapshot declares.
    pub fn with_app_protocol(mut self, protocol: Option<AppProtocol>) -> Self {
        self.app_protocol = protocol;
        self
    }

    /// Shares the outbound listener's DNS cache.
    pub fn with_dns(mut self, dns: Arc<DnsCache>) -> Self {
        self.dns = dns;
        self
    }

    /// Normalizes paths as `paths` says.
    pub fn with_path_normalization(mut self, paths: PathNormalization) -> Self {
        self.paths = paths;
        self
    }

    /// Takes the client address from X-Forwarded-For behind `hops` trusted proxies.
    pub fn with_trusted_proxy_hops(mut self, hops: usize) -> Self {
        self.trusted_hops = hops;
        self
    }
}

/// Static and in wire case: inserting it copies nothing.
const X_FORWARDED_FOR: &str = "X-Forwarded-For";

/// The `X-Forwarded-For` the app receives: with no trusted proxy in front, the peer alone
/// (whatever the client wrote is dropped, as it could name anyone); behind `trusted_hops`
/// proxies, their entries with the peer appended, so the app finds the client `trusted_hops`
/// + 1 entries from the right, the one the sidecar's `ClientIP` keys used.
fn forwarded_for(headers: &http::HeaderMap, peer: IpAddr, trusted_hops: usize) -> HeaderValue {
    if trusted_hops == 0 {
        return ip_value(peer);
    }
    let mut entries: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let peer = peer.to_string();
    entries.push(&peer);
    HeaderValue::from_str(&entries.join(", ")).expect("visible ASCII entries and an address")
}

/// An address as a header value. IPv4, the common case on every request, is written digit by
/// digit: `Display` through `core::fmt` cost more than the rest of the header insertion.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        return HeaderValue::from_str(&ip.to_string()).expect("an address is visible ASCII");
    };
    let mut buf = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            buf[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            buf[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            buf[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        buf[len] = b'0' + octet % 10;
        len += 1;
    }
    HeaderValue::from_bytes(&buf[..len]).expect("digits and dots")
}

/// Per-request state: what admission decided, for the later phases.
pub struct RequestCtx {
    timing: Timing,
    /// Headers to set (or, `None`, remove) on the request to the app.
    request_headers: Vec<(http::HeaderName, Option<String>)>,
    response: ResponseEffects,
    /// A flag gate's `routeTo`: the request goes to this failover upstream, not the app.
    routed: Option<Tries>,
    /// The call's gRPC messages sent and received, counted only when a quota charges them.
    messages: Option<Box<[MessageCounter; 2]>>,
}

#[async_trait]
impl ProxyHttp for InboundProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            timing: Timing::start(&self.metrics.inbound),
            request_headers: Vec::new(),
            response: ResponseEffects::default(),
            routed: None,
            messages: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut Self::CTX,
    ) -> Result<()> {
        edge::header_received(session);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        let refused = match refuse_ambiguous(session) {
            Some(reply) => Some(reply),
            None => normalize_path(session, &self.paths)?,
        };
        if let Some(reply) = refused {
            ctx.timing.answer(session, &reply).await?;
            return Ok(true);
        }
        let admission = {
            let view = request_view(session, self.trusted_hops);
            self.runtime
                .admit(Direction::Inbound, &view, unix_nanos())
                .await
        };
        ctx.response = admission.response;
        ctx.request_headers = admission.request_headers;
        if ctx.response.counts_messages() && protocol::is_grpc(session.req_header()) {
            ctx.messages = Some(Box::default());
        }
        let reply = match (admission.reply, admission.upstream) {
            (Some(reply), _) => Some(reply),
            (None, None) => None,
            (None, Some(upstream)) => {
                let method = session.req_header().method.as_str();
                match upstream.call(method, unix_nanos()).await {
                    Ok(call) => {
                        let deadline = protocol::grpc_deadline(session.req_header());
                        ctx.routed = Some(Tries::new(call, deadline));
                        None
                    }
                    Err(reply) => Some(reply),
                }
            }
        };
        match reply {
            Some(reply) => {
                ctx.timing.answer(session, &reply).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let Some(tries) = ctx.routed.as_mut() else {
            // The app is plain HTTP on localhost; TLS, if any, ends at the sidecar.
            let mut peer = HttpPeer::new(self.app, false, String::new());
            let protocol = AppProtocol::chosen(self.app_protocol, self.runtime.app_protocol());
            if protocol.h2(session.req_header()) {
                protocol::use_h2(&mut peer);
            }
            if let Some(deadline) = protocol::grpc_deadline(session.req_header()) {
                protocol::bound_by(&mut peer, deadline);
            }
            return Ok(Box::new(peer));
        };
        let host = request_view(session, 0).host.unwrap_or_default().to_owned();
        let resolve = |host: String, port| async move {
            self.dns.resolve(&host, port).await.map_err(|e| {
                let why = format!("cannot resolve {host}:{port}: {e}");
                Reply::new(Reason::UpstreamUnreachable, Some(&why))
            })
        };
        let mut peer = tries.peer(&host, resolve).await?;
        if protocol::needs_h2(session.req_header()) {
            protocol::use_h2(&mut peer);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        on_response(ctx.routed.as_mut(), session, response)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        on_connect_failure(ctx.routed.as_mut(), session, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<pingora::Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<pingora::Error> {
        on_error(ctx.routed.as_mut(), peer, session, e, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Flag variants for the app; a client-sent header of that name never reaches it.
        set_request_headers(upstream_request, &ctx.request_headers)?;
        protocol::pass_on_deadline(session.req_header(), upstream_request, ctx.timing.elapsed())?;
        // The app sees the client the sidecar trusted, not 127.0.0.1 (docs/security.md).
        if let Some(peer) = peer_ip(session) {
            let value = forwarded_for(&upstream_request.headers, peer, self.trusted_hops);
            upstream_request.insert_header(X_FORWARDED_FOR, value)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        edge::before_response(session);
        ctx.timing.response_header(session, response);
        ctx.response.edit_headers(|edit| match edit {
            HeaderEdit::Set(name, value) => response.insert_header(name, value),
            HeaderEdit::Append(name, value) => response.append_header(name, value).map(drop),
        })
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let (Some(messages), Some(chunk)) = (ctx.messages.as_mut(), body.as_ref()) {
            messages[0].feed(chunk);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Self::CTX,
    ) -> Result<Option<std::time::Duration>> {
        if let (Some(messages), Some(chunk)) = (ctx.messages.as_mut(), body.as_ref()) {
            messages[1].feed(chunk);
        }
        Ok(None)
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Self::CTX,
    ) -> Result<Option<bytes::Bytes>> {
        ctx.timing.response_trailers(trailers);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora::Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        let refusal = ctx.routed.as_mut().and_then(Tries::take_refusal);
        fail_to_proxy(session, e, &mut ctx.timing, &self.metrics.inbound, refusal).await
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Self::CTX, e: &pingora::Error) -> bool {
        client_gone(e)
    }

    async fn logging(
        &self,
        session: &mut Session,
        _e: Option<&pingora::Error>,
        ctx: &mut Self::CTX,
    ) {
        edge::request_finished(session);
        ctx.timing.finish(session, &self.metrics.inbound);
        if ctx.response.has_deferred() {
            let [sent, received] = ctx.messages.as_deref().copied().unwrap_or_default();
            let exchanged = Exchanged {
                request_bytes: session.body_bytes_read() as u64,
                response_bytes: session.body_bytes_sent() as u64,
                request_messages: sent.messages,
                response_messages: received.messages,
            };
            std::mem::take(&mut ctx.response)
                .settle(&self.runtime.quota_usage, exchanged)
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_app_sees_the_client_the_sidecar_trusted() {
        let peer: std::net::IpAddr = "10.0.0.9".parse().unwrap();
        let mut headers = http::HeaderMap::new();
        headers.append("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        headers.append("X-Forwarded-For", "198.51.100.2".parse().unwrap());
        assert_eq!(
            forwarded_for(&headers, peer, 0),
            "10.0.0.9",
            "untrusted entries dropped"
        );
        assert_eq!(
            forwarded_for(&headers, peer, 1),
            "6.6.6.6, 203.0.113.7, 198.51.100.2, 10.0.0.9"
        );
        assert_eq!(forwarded_for(&http::HeaderMap::new(), peer, 2), "10.0.0.9");
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(forwarded_for(&headers, v6, 0), "2001:db8::1");
    }

    #[test]
    fn ipv4_values_are_written_as_display_writes_them() {
        for octet in [0u8, 1, 9, 10, 42, 99, 100, 101, 199, 200, 250, 255] {
            for ip in [
                std::net::Ipv4Addr::new(octet, 0, 7, 255),
                std::net::Ipv4Addr::new(255, octet, octet, 10),
                std::net::Ipv4Addr::new(1, 100, 10, octet),
            ] {
                assert_eq!(ip_value(IpAddr::V4(ip)), ip.to_string().as_str());
            }
        }
    }
}
