//! The outbound listener's `ProxyHttp`: the app's plain-HTTP calls to other services, sent to
//! the sidecar as to an HTTP proxy (`HTTP_PROXY=http://127.0.0.1:15001`, absolute-form
//! `GET http://host/…`) or straight at it with a `Host` header. Today it forwards to the
//! destination the request names, resolved by DNS ([`crate::dns`], cached), unless a
//! `FailoverPolicy` upstream matches it: then the call goes to that upstream's endpoints, try by
//! try, as [`bulwark_policy::failover::call`] decides (endpoint, retries, backoff, timeouts);
//! this module only carries the decisions out in Pingora's phases.
//! `CONNECT` (HTTPS through a proxy) is refused (Pingora answers it 405 itself; [`destination`]
//! refuses it too): the sidecar does not tunnel TLS yet.

use std::{net::SocketAddr, sync::Arc};

use async_trait::async_trait;
use bulwark_policy::{
    admission::Direction,
    clock::unix_nanos,
    failover::call::Call,
    respond::{Reason, Reply},
    runtime::Runtime,
};
use http::{Method, Uri, header::HOST};
use pingora::{
    Result,
    http::{RequestHeader, ResponseHeader},
    prelude::HttpPeer,
    proxy::{FailToProxy, ProxyHttp, Session},
};

use super::{
    Timing, client_gone, edge, fail_to_proxy,
    failover::{Tries, on_connect_failure, on_error, on_response},
    metrics::UpstreamError,
    protocol, request_view,
};
use crate::{dns::DnsCache, metrics::Metrics};

pub struct OutboundProxy {
    runtime: Arc<Runtime>,
    metrics: Arc<Metrics>,
    /// This listener's own address: a request naming it would loop through the sidecar.
    listen: SocketAddr,
    dns: Arc<DnsCache>,
}

impl OutboundProxy {
    /// `dns`: the cache shared with the health checks.
    pub fn new(
        listen: SocketAddr,
        runtime: Arc<Runtime>,
        metrics: Arc<Metrics>,
        dns: Arc<DnsCache>,
    ) -> Self {
        Self {
            runtime,
            metrics,
            listen,
            dns,
        }
    }

    /// Where the call goes, or the sidecar's answer when it cannot go anywhere: the failover
    /// `call` when an upstream took it, else the destination the request names.
    async fn route(
        &self,
        request: &RequestHeader,
        call: Option<Call>,
    ) -> std::result::Result<Route, Reply> {
        let to = destination(request)
            .map_err(|why| Reply::new(Reason::BadRequest, Some(&why.to_string())))?;
        if let Some(call) = call {
            return Ok(Route {
                target: Target::Failover(Box::new(Tries::new(
                    call,
                    protocol::grpc_deadline(request),
                ))),
                host: to.host,
                rewrite: to.rewrite,
            });
        }
        let addr = self.resolve(&to.host, to.port).await?;
        Ok(Route {
            target: Target::Direct(addr),
            host: to.host,
            rewrite: to.rewrite,
        })
    }

    /// `host:port` through the DNS cache, refusing this listener's own address.
    async fn resolve(&self, host: &str, port: u16) -> std::result::Result<SocketAddr, Reply> {
        let addr = self.dns.resolve(host, port).await.map_err(|e| {
            self.metrics.outbound.upstream_error(UpstreamError::Connect);
            let why = format!("cannot resolve {host}:{port}: {e}");
            Reply::new(Reason::UpstreamUnreachable, Some(&why))
        })?;
        if addr == self.listen || (addr.port() == self.listen.port() && addr.ip().is_loopback()) {
            return Err(Reply::new(
                Reason::LoopDetected,
                Some("the destination is this outbound listener"),
            ));
        }
        Ok(addr)
    }
}

/// A call's resolved destination, from `request_filter` to the later phases.
struct Route {
    target: Target,
    host: String,
    /// The origin-form rewrite of an absolute-form call.
    rewrite: Option<(String, Uri)>,
}

enum Target {
    /// The address the request names.
    Direct(SocketAddr),
    /// A failover upstream's call.
    Failover(Box<Tries>),
}

pub struct RequestCtx {
    timing: Timing,
    route: Option<Route>,
    /// Headers outbound flag rules set (or, `None`, remove) on the call.
    request_headers: Vec<(http::HeaderName, Option<String>)>,
}

impl RequestCtx {
    fn tries(&mut self) -> Option<&mut Tries> {
        match &mut self.route.as_mut()?.target {
            Target::Failover(tries) => Some(tries),
            Target::Direct(_) => None,
        }
    }
}

/// Where a call goes.
#[derive(Debug, PartialEq, Eq)]
struct Destination {
    host: String,
    port: u16,
    /// For an absolute-form target (`GET http://host/path`): the `Host` value and the
    /// origin-form target (`/path`) to send upstream instead, as upstreams expect.
    rewrite: Option<(String, Uri)>,
}

/// Why a request names no destination the listener can use.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
enum DestinationError {
    #[error("CONNECT is not supported: the outbound listener proxies plain HTTP")]
    Connect,
    #[error("only http:// is proxied, not {0}://")]
    Scheme(String),
    #[error("bad request target: {0}")]
    Target(String),
    #[error("the request names no destination (no absolute URI, no Host header)")]
    None,
}

/// The destination a request names: the authority of an absolute-form target, else its `Host`
/// header; port 80 when none is given (only `http` is proxied).
fn destination(request: &RequestHeader) -> std::result::Result<Destination, DestinationError> {
    if request.method == Method::CONNECT {
        return Err(DestinationError::Connect);
    }
    // Pingora keeps only the path in `uri` for an absolute-form target; the target as the
    // client wrote it is `raw_path`.
    let target = std::str::from_utf8(request.raw_path())
        .ok()
        .and_then(|t| t.parse::<Uri>().ok());
    if let Some(scheme) = target.as_ref().and_then(|t| t.scheme_str())
        && scheme != "http"
    {
        return Err(DestinationError::Scheme(scheme.to_owned()));
    }
    let (authority, rewrite) = match target.as_ref().and_then(|t| Some((t, t.authority()?))) {
        Some((target, authority)) => {
            let origin_form = target
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .parse::<Uri>()
                .map_err(|e| DestinationError::Target(e.to_string()))?;
            let rewrite = Some((authority.as_str().to_owned(), origin_form));
            (authority.clone(), rewrite)
        }
        None => {
            // HTTP/2 names it in `:authority` (the URI's), HTTP/1.1 in `Host`.
            let authority = request
                .uri
                .authority()
                .cloned()
                .or_else(|| {
                    let host = request.headers.get(HOST)?.to_str().ok()?;
                    host.parse::<http::uri::Authority>().ok()
                })
                .ok_or(DestinationError::None)?;
            (authority, None)
        }
    };
    Ok(Destination {
        host: authority.host().to_owned(),
        port: authority.port_u16().unwrap_or(80),
        rewrite,
    })
}

#[async_trait]
impl ProxyHttp for OutboundProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> Self::CTX {
        RequestCtx {
            timing: Timing::start(&self.metrics.outbound),
            route: None,
            request_headers: Vec::new(),
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
        let admission = {
            let view = request_view(session, 0);
            self.runtime
                .admit(Direction::Outbound, &view, unix_nanos())
                .await
        };
        ctx.request_headers = admission.request_headers;
        let method = session.req_header().method.as_str();
        let routed = match (admission.reply, admission.upstream) {
            (Some(reply), _) => Err(reply),
            (None, None) => self.route(session.req_header(), None).await,
            (None, Some(upstream)) => match upstream.call(method, unix_nanos()).await {
                Ok(call) => self.route(session.req_header(), Some(call)).await,
                Err(reply) => Err(reply),
            },
        };
        match routed {
            Ok(route) => {
                ctx.route = Some(route);
                Ok(false)
            }
            Err(reply) => {
                ctx.timing.answer(session, &reply).await?;
                Ok(true)
            }
        }
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route
            .as_mut()
            .expect("request_filter routes every request it lets through");
        let mut peer = match &mut route.target {
            Target::Direct(addr) => {
                let mut peer = HttpPeer::new(*addr, false, route.host.clone());
                if let Some(deadline) = protocol::grpc_deadline(session.req_header()) {
                    protocol::bound_by(&mut peer, deadline);
                }
                peer
            }
            Target::Failover(tries) => {
                let resolve = |host: String, port| async move { self.resolve(&host, port).await };
                tries.peer(&route.host, resolve).await?
            }
        };
        // The app's gRPC calls go on over HTTP/2, as they came.
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
        on_response(ctx.tries(), session, response)
    }

    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        e: Box<pingora::Error>,
    ) -> Box<pingora::Error> {
        on_connect_failure(ctx.tries(), session, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<pingora::Error>,
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<pingora::Error> {
        on_error(ctx.tries(), peer, session, e, client_reused)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        // Cloned, not taken: a retried connection builds the upstream request again.
        if let Some((host, origin_form)) = ctx.route.as_ref().and_then(|r| r.rewrite.as_ref()) {
            upstream_request.set_uri(origin_form.clone());
            upstream_request.insert_header(HOST, host.as_str())?;
        }
        protocol::pass_on_deadline(session.req_header(), upstream_request, ctx.timing.elapsed())?;
        super::set_request_headers(upstream_request, &ctx.request_headers)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        edge::before_response(session);
        ctx.timing.response_header(session, response);
        Ok(())
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
        let refusal = ctx.tries().and_then(Tries::take_refusal);
        fail_to_proxy(session, e, &mut ctx.timing, &self.metrics.outbound, refusal).await
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
        ctx.timing.finish(session, &self.metrics.outbound);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: &str, target: &str, host: Option<&str>) -> RequestHeader {
        let mut request = RequestHeader::build(method, target.as_bytes(), None).unwrap();
        if let Some(host) = host {
            request.insert_header(HOST, host).unwrap();
        }
        request
    }

    #[test]
    fn the_destination_is_the_absolute_uri_or_the_host_header() {
        let d = |method, target, host| destination(&request(method, target, host));
        let to = |host: &str, port, rewrite: Option<(&str, &str)>| {
            Ok(Destination {
                host: host.into(),
                port,
                rewrite: rewrite.map(|(h, t)| (h.to_owned(), t.parse().unwrap())),
            })
        };
        assert_eq!(
            d("GET", "http://api.shop:8080/v1?q=1", Some("ignored")),
            to("api.shop", 8080, Some(("api.shop:8080", "/v1?q=1")))
        );
        assert_eq!(
            d("GET", "http://api.shop", None),
            to("api.shop", 80, Some(("api.shop", "/")))
        );
        assert_eq!(
            d("POST", "/v1", Some("10.0.0.7:9000")),
            to("10.0.0.7", 9000, None)
        );
        assert_eq!(d("GET", "/v1", Some("api.shop")), to("api.shop", 80, None));
        let err = |method, target, host| d(method, target, host).unwrap_err().to_string();
        assert!(err("GET", "/v1", None).contains("no destination"));
        assert!(err("GET", "https://api.shop/", None).contains("only http://"));
        assert!(err("CONNECT", "api.shop:443", Some("api.shop:443")).contains("CONNECT"));
    }

    #[test]
    fn an_http2_requests_destination_is_its_authority() {
        // As Pingora builds it from an HTTP/2 stream: an absolute URI, the raw target only its
        // path, and no Host.
        let (parts, ()) = http::Request::builder()
            .method("POST")
            .uri("http://orders.shop:50051/shop.Orders/Get")
            .version(http::Version::HTTP_2)
            .body(())
            .unwrap()
            .into_parts();
        let request = RequestHeader::from(parts);
        assert_eq!(request.raw_path(), b"/shop.Orders/Get");
        assert_eq!(
            destination(&request),
            Ok(Destination {
                host: "orders.shop".into(),
                port: 50051,
                rewrite: None,
            })
        );
    }
}
