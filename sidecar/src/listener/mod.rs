//! The proxy listeners, as Pingora phases: `inbound` (clients → the app) and `outbound` (the
//! app → other services). Each phase is thin: it builds one [`RequestView`] per request, asks
//! the runtime's admission pipeline ([`bulwark_policy::admission`]) and carries out the
//! answer. Everything the sidecar answers itself, whether a policy refused the request or the
//! upstream failed, is written by [`write_reply`] from a [`Reply`]
//! ([`bulwark_policy::respond`]).

pub mod edge;
pub mod failover;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod protocol;

use std::{
    borrow::Cow,
    time::{Duration, Instant},
};

use bulwark_policy::{
    grpc,
    request::{
        self, RequestView,
        path::{Normalized, PathNormalization},
    },
    respond::{Reason, Reply},
};
use bytes::Bytes;
use pingora::{
    ErrorSource, ErrorType,
    http::ResponseHeader,
    protocols::http::HttpTask,
    proxy::{FailToProxy, Session},
};

use metrics::{Finished, InFlight, ListenerMetrics, Outcome, Protocol, UpstreamError};

/// The IP address of the connection's peer.
pub fn peer_ip(session: &Session) -> Option<std::net::IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip())
}

/// The policy view of a Pingora request: `trusted_hops` proxies in front may name the client
/// in `X-Forwarded-For`.
pub fn request_view(session: &Session, trusted_hops: usize) -> RequestView<'_> {
    let header = session.req_header();
    let peer = peer_ip(session);
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

/// Sets (or, `None`, removes) `headers` on the request to the upstream. Read, not taken: a
/// retried try builds its upstream request again.
pub fn set_request_headers(
    upstream_request: &mut pingora::http::RequestHeader,
    headers: &[(http::HeaderName, Option<String>)],
) -> pingora::Result<()> {
    for (name, value) in headers {
        match value {
            Some(value) => upstream_request.insert_header(name.clone(), value.as_str())?,
            None => drop(upstream_request.remove_header(name)),
        }
    }
    Ok(())
}

/// What the inbound listener refuses before any policy looks at a request, as a client could
/// otherwise make the app read it differently from the policy (docs/security.md): a standard
/// method in another case, an HTTP/1.1 request without `Host` (RFC 9112 §3.2), and a
/// `Content-Length` given as a list (RFC 9110 §8.6: a proxy rejects it or forwards one value;
/// an upstream that read the list differently would take part of this body as the next request).
pub fn refuse_ambiguous(session: &Session) -> Option<Reply> {
    let header = session.req_header();
    let mut lengths = header.headers.get_all(http::header::CONTENT_LENGTH).iter();
    let listed = lengths
        .next()
        .is_some_and(|first| first.as_bytes().contains(&b','));
    if listed || lengths.next().is_some() {
        return Some(Reply::new(
            Reason::BadRequest,
            Some("Content-Length must be given once, as one number"),
        ));
    }
    if request::miscased_method(header.method.as_str()) {
        return Some(Reply::new(
            Reason::BadRequest,
            Some("methods are case-sensitive: send a standard method in upper case"),
        ));
    }
    let no_host =
        header.uri.authority().is_none() && !header.headers.contains_key(http::header::HOST);
    if header.version == http::Version::HTTP_11 && no_host {
        return Some(Reply::new(
            Reason::BadRequest,
            Some("an HTTP/1.1 request needs a Host header"),
        ));
    }
    None
}

/// Normalizes the request's path in place (what policies match and the app receives); the
/// sidecar's answer instead when the path is refused or redirected.
pub fn normalize_path(
    session: &mut Session,
    paths: &PathNormalization,
) -> pingora::Result<Option<Reply>> {
    let uri = &session.req_header().uri;
    let with_query = |path: &str| match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };
    let target = match paths.apply(uri.path()) {
        Normalized::Path(Cow::Borrowed(_)) => return Ok(None),
        Normalized::Path(Cow::Owned(path)) => with_query(&path),
        Normalized::Redirect(path) => {
            let mut reply = Reply::new(Reason::PathRedirect, None);
            reply.headers.push(("Location".into(), with_query(&path)));
            return Ok(Some(reply));
        }
        Normalized::Reject(why) => return Ok(Some(Reply::new(Reason::BadRequest, Some(why)))),
    };
    let target = with_path(uri, &target)
        .map_err(|e| pingora::Error::because(ErrorType::InvalidHTTPHeader, "normalized path", e))?;
    session.req_header_mut().set_uri(target);
    Ok(None)
}

/// `uri` with its path and query replaced, its scheme and authority kept: an HTTP/2 request's
/// URI is absolute (it has no `Host`), and a path-only one lost the authority, so the app got
/// an empty `Host` and a `hosts:` rule no longer matched.
fn with_path(uri: &http::Uri, path_and_query: &str) -> Result<http::Uri, http::Error> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse()?);
    Ok(http::Uri::from_parts(parts)?)
}

/// Writes a response the sidecar makes itself; to a gRPC request, in gRPC's form
/// ([`bulwark_policy::grpc`]).
pub async fn write_reply(session: &mut Session, reply: &Reply) -> pingora::Result<()> {
    edge::before_response(session);
    if protocol::is_grpc(session.req_header()) {
        return write_grpc_reply(session, reply).await;
    }
    let mut header = ResponseHeader::build(reply.status, Some(reply.headers.len() + 1))?;
    for (name, value) in &reply.headers {
        header.append_header(name.clone(), value.as_str())?;
    }
    header.insert_header(http::header::CONTENT_LENGTH, reply.body.len().to_string())?;
    let empty = reply.body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session
            .write_response_body(Some(Bytes::from(reply.body.clone())), true)
            .await?;
    }
    Ok(())
}

/// `reply` as a gRPC trailers-only response: one HEADERS frame that ends the stream.
/// (`write_response_header(.., true)` does not end an HTTP/2 stream: its flag is dropped.)
async fn write_grpc_reply(session: &mut Session, reply: &Reply) -> pingora::Result<()> {
    let content_type = protocol::grpc_answer_content_type(session.req_header());
    let headers = grpc::trailers_only(reply, reply.reason.message(), content_type);
    let mut header = ResponseHeader::build(200, Some(headers.len()))?;
    for (name, value) in headers {
        header.append_header(name, value)?;
    }
    if session.req_header().version != http::Version::HTTP_2 {
        // HTTP/1.1 (gRPC-Web bridges): an empty body, delimited.
        header.insert_header(http::header::CONTENT_LENGTH, "0")?;
    }
    session
        .write_response_tasks(vec![HttpTask::Header(Box::new(header), true)])
        .await?;
    Ok(())
}

/// What both listeners keep per request for their metrics.
pub struct Timing {
    started: Instant,
    _in_flight: InFlight,
    /// Set when the sidecar answered itself, and why.
    answered: Option<Reason>,
    /// The status a gRPC call ended with, from whoever gave it: the sidecar's answer, the
    /// upstream's response header (trailers-only) or trailers.
    grpc_status: Option<u8>,
}

impl Timing {
    pub fn start(metrics: &ListenerMetrics) -> Self {
        Self {
            started: Instant::now(),
            _in_flight: InFlight::start(&metrics.in_flight),
            answered: None,
            grpc_status: None,
        }
    }

    /// How long the request has been at the sidecar.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Writes `reply` and remembers why the sidecar answered.
    pub async fn answer(&mut self, session: &mut Session, reply: &Reply) -> pingora::Result<()> {
        self.answered = Some(reply.reason);
        if protocol::is_grpc(session.req_header()) {
            self.grpc_status = Some(grpc::code(reply) as u8);
        }
        write_reply(session, reply).await
    }

    /// Notes the `grpc-status` of a gRPC call's response header (a trailers-only answer).
    pub fn response_header(&mut self, session: &Session, response: &ResponseHeader) {
        if let Some(code) = protocol::grpc_status(session.req_header(), response) {
            self.grpc_status = Some(code);
        }
    }

    /// Notes the `grpc-status` in a response's trailers (how a gRPC call that sent messages ends).
    pub fn response_trailers(&mut self, trailers: &http::HeaderMap) {
        if let Some(code) = trailers
            .get("grpc-status")
            .and_then(|v| grpc::status_code(v.as_bytes()))
        {
            self.grpc_status = Some(code);
        }
    }

    /// Ends a gRPC call over HTTP/2 whose response header went out before the upstream failed,
    /// with trailers that give the client a status (`UNAVAILABLE` rather than a reset's
    /// `CANCELLED`).
    async fn end_grpc_call(&mut self, session: &mut Session, failure: &Reply) {
        let header = session.req_header();
        if header.version != http::Version::HTTP_2 || !protocol::is_grpc(header) {
            return;
        }
        let mut trailers = http::HeaderMap::new();
        let message = format!("the upstream failed mid-call: {}", failure.reason.message());
        for (name, value) in grpc::failure_trailers(failure, &message) {
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::try_from(name),
                http::HeaderValue::try_from(value),
            ) {
                trailers.append(name, value);
            }
        }
        let trailer = HttpTask::Trailer(Some(Box::new(trailers)));
        match session.write_response_tasks(vec![trailer]).await {
            Ok(_) => self.grpc_status = Some(grpc::code(failure) as u8),
            Err(e) => tracing::debug!(error = %e, "cannot end the gRPC call with trailers"),
        }
    }

    /// Records the finished request.
    pub fn finish(&self, session: &Session, metrics: &ListenerMetrics) {
        let status = session.response_written().map(|r| r.status.as_u16());
        let outcome = match (self.answered, status) {
            (Some(reason), _) => Outcome::Sidecar(reason),
            (None, Some(_)) => Outcome::Upstream,
            (None, None) => Outcome::NoResponse,
        };
        let request = session.req_header();
        let protocol = if protocol::is_grpc(request) {
            Protocol::Grpc
        } else if status == Some(101) {
            Protocol::Websocket
        } else if request.version == http::Version::HTTP_2 {
            Protocol::H2
        } else {
            Protocol::Http1
        };
        let finished = Finished {
            protocol,
            status,
            grpc_status: self.grpc_status,
            outcome,
        };
        metrics.finished(finished, self.started.elapsed().as_secs_f64());
    }
}

/// The answer to a request that could not be proxied, by what failed: `None` when the client
/// is gone (nothing can be written).
fn failure_reply(e: &pingora::Error) -> Option<Reply> {
    use ErrorType::*;
    let reason = match (e.esource(), e.etype()) {
        (_, HTTPStatus(status)) => {
            let reason = if *status < 500 {
                Reason::BadRequest
            } else {
                Reason::UpstreamError
            };
            let mut reply = Reply::new(reason, None);
            reply.status = *status;
            return Some(reply);
        }
        _ if client_gone(e) => return None,
        (ErrorSource::Downstream, _) => Reason::BadRequest,
        (ErrorSource::Upstream, kind) => match upstream_error_kind(kind) {
            UpstreamError::Timeout => Reason::UpstreamTimeout,
            UpstreamError::Connect => Reason::UpstreamUnreachable,
            UpstreamError::Other => Reason::UpstreamError,
        },
        (ErrorSource::Internal | ErrorSource::Unset, _) => Reason::Internal,
    };
    Some(Reply::new(reason, None))
}

/// The client went away mid-request (closed, reset, or cancelled its HTTP/2 stream, as a gRPC
/// client past its deadline does): nothing can be written, and it is not the sidecar's error,
/// so both listeners keep it out of the error log (`suppress_error_log`).
pub fn client_gone(e: &pingora::Error) -> bool {
    use ErrorType::*;
    // An HTTP/2 client's RST_STREAM comes as H2Error ("Client closed H2").
    e.esource() == &ErrorSource::Downstream
        && matches!(
            e.etype(),
            WriteError | ReadError | ConnectionClosed | H2Error
        )
}

fn upstream_error_kind(kind: &ErrorType) -> UpstreamError {
    use ErrorType::*;
    match kind {
        ConnectTimedout | ReadTimedout | WriteTimedout | TLSHandshakeTimedout => {
            UpstreamError::Timeout
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
        | SocketError | TLSHandshakeFailure | TLSWantX509Lookup | InvalidCert | HandshakeError => {
            UpstreamError::Connect
        }
        _ => UpstreamError::Other,
    }
}

/// Both listeners' `fail_to_proxy`: counts an upstream failure and answers through
/// [`write_reply`] instead of Pingora's default error page.
/// `refusal`: the sidecar's own answer already decided (a failover retry found nothing to try).
pub async fn fail_to_proxy(
    session: &mut Session,
    e: &pingora::Error,
    timing: &mut Timing,
    metrics: &ListenerMetrics,
    refusal: Option<Reply>,
) -> FailToProxy {
    if refusal.is_none() && e.esource() == &ErrorSource::Upstream {
        metrics.upstream_error(upstream_error_kind(e.etype()));
    }
    let mut reply = refusal.or_else(|| failure_reply(e));
    if session.response_written().is_some()
        && let Some(failure) = reply.take()
    {
        // Too late for an answer of its own; a gRPC call still gets its status in trailers.
        timing.end_grpc_call(session, &failure).await;
    }
    let error_code = match reply {
        Some(reply) => {
            if let Err(write) = timing.answer(session, &reply).await {
                tracing::debug!(error = %write, "cannot send the error response");
            }
            reply.status
        }
        None => 0,
    };
    FailToProxy {
        error_code,
        // As Pingora's default: a connection that failed mid-request is not reused.
        can_reuse_downstream: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pingora::Error;

    fn reply(source: ErrorSource, kind: ErrorType) -> Option<(u16, String)> {
        let e = match source {
            ErrorSource::Upstream => Error::new_up(kind),
            ErrorSource::Downstream => Error::new_down(kind),
            ErrorSource::Internal => Error::new_in(kind),
            ErrorSource::Unset => Error::new(kind),
        };
        failure_reply(&e).map(|r| (r.status, r.header("bulwark-reason").unwrap().to_owned()))
    }

    #[test]
    fn a_new_path_keeps_an_absolute_uris_scheme_and_authority() {
        let h2: http::Uri = "http://api.example:8080//a/../b?x=1".parse().unwrap();
        let uri = with_path(&h2, "/b?x=1").unwrap();
        assert_eq!(uri.to_string(), "http://api.example:8080/b?x=1");
        assert_eq!(uri.host(), Some("api.example"));
        let h1: http::Uri = "//a".parse().unwrap();
        assert_eq!(with_path(&h1, "/a").unwrap().to_string(), "/a");
    }

    #[test]
    fn failures_are_answered_by_what_failed() {
        use ErrorSource::*;
        use ErrorType::*;
        let r = |status, reason: &str| Some((status, reason.to_owned()));
        assert_eq!(
            reply(Upstream, ConnectRefused),
            r(502, "upstream_unreachable")
        );
        assert_eq!(reply(Upstream, ConnectTimedout), r(504, "upstream_timeout"));
        assert_eq!(reply(Upstream, ReadTimedout), r(504, "upstream_timeout"));
        assert_eq!(reply(Upstream, ConnectionClosed), r(502, "upstream_error"));
        assert_eq!(reply(Downstream, InvalidHTTPHeader), r(400, "bad_request"));
        assert_eq!(reply(Downstream, ReadError), None, "the client is gone");
        assert_eq!(reply(Internal, InternalError), r(500, "internal_error"));
        assert_eq!(reply(Unset, HTTPStatus(405)), r(405, "bad_request"));
    }
}
