//! Which HTTP version a request goes upstream in. Pingora has no "HTTP/2 if it can" on a
//! plaintext connection: a peer is HTTP/1.1, or HTTP/2 with prior knowledge (h2c), so the
//! sidecar decides per request. gRPC needs HTTP/2 end to end (its status travels in trailers,
//! which HTTP/1.1 to the app cannot carry), so a gRPC request goes over h2c even when the app's
//! other traffic is HTTP/1.1 (as Envoy's and Linkerd's protocol detection do).

use std::time::Duration;

use bulwark_api::snapshot;
use bulwark_policy::grpc;
use pingora::{
    http::{RequestHeader, ResponseHeader},
    prelude::HttpPeer,
};

/// Streams multiplexed on one upstream HTTP/2 connection (Pingora's default is 1: no
/// multiplexing). The server's SETTINGS_MAX_CONCURRENT_STREAMS lowers it.
const MAX_H2_STREAMS: usize = 100;

/// What the app speaks (`--app-protocol`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AppProtocol {
    /// HTTP/1.1, and h2c for gRPC requests.
    #[default]
    Auto,
    /// HTTP/1.1 for every request (gRPC requests then fail at the app).
    Http1,
    /// h2c for every request.
    H2c,
}

impl AppProtocol {
    /// The protocol to speak: the one set (`--app-protocol`), else the one the operator
    /// resolved from the Service (`declared`), else detection.
    pub fn chosen(set: Option<Self>, declared: Option<snapshot::AppProtocol>) -> Self {
        set.unwrap_or(match declared {
            None => Self::Auto,
            Some(snapshot::AppProtocol::Http1) => Self::Http1,
            Some(snapshot::AppProtocol::H2c) => Self::H2c,
        })
    }

    /// Whether `request` goes to the app over HTTP/2.
    pub fn h2(self, request: &RequestHeader) -> bool {
        match self {
            Self::Auto => needs_h2(request),
            Self::Http1 => false,
            Self::H2c => true,
        }
    }
}

/// A gRPC call that needs HTTP/2 on to the app or upstream: gRPC but not gRPC-Web, which is
/// made for HTTP/1.1 (its trailers travel in the body) and goes on as it came.
pub fn needs_h2(request: &RequestHeader) -> bool {
    is_grpc(request) && grpc_web_content_type(request).is_none()
}

/// The `content-type` of the sidecar's own answer to a gRPC call: gRPC-Web's as the client sent
/// it (`application/grpc-web+proto`, `application/grpc-web-text`), which its clients expect
/// back, else gRPC's.
pub fn grpc_answer_content_type(request: &RequestHeader) -> &str {
    grpc_web_content_type(request).unwrap_or("application/grpc")
}

fn grpc_web_content_type(request: &RequestHeader) -> Option<&str> {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("application/grpc-web"))
}

/// A gRPC request: `content-type: application/grpc`, `application/grpc+proto` and the like
/// (gRPC-Web's `application/grpc-web…` too).
pub fn is_grpc(request: &RequestHeader) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| grpc::is_grpc_content_type(v.as_bytes()))
}

/// A gRPC call's deadline, its `grpc-timeout` (ignored when malformed, as if absent).
pub fn grpc_deadline(request: &RequestHeader) -> Option<Duration> {
    if !is_grpc(request) {
        return None;
    }
    grpc::timeout(request.headers.get("grpc-timeout")?.as_bytes())
}

/// Passes a gRPC call's deadline on as what is left of it: the caller's `grpc-timeout` less
/// `elapsed`, the time the call has spent at the sidecar (earlier tries and backoffs included),
/// as a gRPC server passes its own deadline to the calls it makes, so the upstream does not
/// work past the caller's deadline.
pub fn pass_on_deadline(
    request: &RequestHeader,
    upstream_request: &mut RequestHeader,
    elapsed: Duration,
) -> pingora::Result<()> {
    if let Some(deadline) = grpc_deadline(request) {
        let left = deadline.saturating_sub(elapsed);
        upstream_request.insert_header("grpc-timeout", grpc::timeout_value(left))?;
    }
    Ok(())
}

/// The `grpc-status` in the response header of a gRPC call: a trailers-only answer, which is
/// how gRPC servers send errors (a status after messages comes in trailers, too late to retry).
pub fn grpc_status(request: &RequestHeader, response: &ResponseHeader) -> Option<u8> {
    if !is_grpc(request) {
        return None;
    }
    grpc::status_code(response.headers.get("grpc-status")?.as_bytes())
}

/// Bounds each read and write on `peer` by `deadline`, so a call its caller has given up on
/// does not hold the upstream stream: the sidecar answers `DEADLINE_EXCEEDED`. Pingora's
/// timeouts are per read, so a unary call's answer must come within it, and a stream's
/// messages each within it (the caller's own deadline cancels the stream).
pub fn bound_by(peer: &mut HttpPeer, deadline: Duration) {
    let bound = |t: Option<Duration>| Some(t.map_or(deadline, |t| t.min(deadline)));
    peer.options.read_timeout = bound(peer.options.read_timeout);
    peer.options.write_timeout = bound(peer.options.write_timeout);
}

/// Makes `peer` speak HTTP/2: with prior knowledge in plaintext, by ALPN `h2` over TLS.
pub fn use_h2(peer: &mut HttpPeer) {
    peer.options.set_http_version(2, 2);
    peer.options.max_h2_streams = MAX_H2_STREAMS;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(content_type: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/pkg.Svc/Call", None).unwrap();
        if let Some(ct) = content_type {
            r.insert_header(http::header::CONTENT_TYPE, ct).unwrap();
        }
        r
    }

    #[test]
    fn grpc_requests_go_over_h2_unless_the_app_is_http1_only() {
        let grpc = request(Some("application/grpc+proto"));
        let json = request(Some("application/json"));
        assert!(AppProtocol::Auto.h2(&grpc));
        assert!(!AppProtocol::Auto.h2(&json));
        assert!(!AppProtocol::Auto.h2(&request(None)));
        assert!(!AppProtocol::Http1.h2(&grpc));
        assert!(AppProtocol::H2c.h2(&json));
        let web = request(Some("application/grpc-web+proto"));
        assert!(is_grpc(&web), "answered in gRPC's terms");
        assert!(!AppProtocol::Auto.h2(&web), "but sent on as HTTP/1.1");
        assert_eq!(grpc_answer_content_type(&web), "application/grpc-web+proto");
        assert_eq!(grpc_answer_content_type(&grpc), "application/grpc");
    }

    #[test]
    fn the_deadline_passed_on_is_what_is_left_of_it() {
        let mut grpc = request(Some("application/grpc"));
        grpc.insert_header("grpc-timeout", "2S").unwrap();
        let mut upstream = grpc.clone();
        pass_on_deadline(&grpc, &mut upstream, Duration::from_millis(500)).unwrap();
        assert_eq!(upstream.headers["grpc-timeout"], "1500000u");
        pass_on_deadline(&grpc, &mut upstream, Duration::from_secs(3)).unwrap();
        assert_eq!(
            upstream.headers["grpc-timeout"], "1n",
            "past: the least there is"
        );
        let json = request(Some("application/json"));
        let mut upstream = json.clone();
        pass_on_deadline(&json, &mut upstream, Duration::from_secs(1)).unwrap();
        assert!(upstream.headers.get("grpc-timeout").is_none());
    }

    #[test]
    fn grpc_timeout_is_the_deadline_of_grpc_requests_only() {
        let mut grpc = request(Some("application/grpc"));
        assert_eq!(grpc_deadline(&grpc), None);
        grpc.insert_header("grpc-timeout", "250m").unwrap();
        assert_eq!(grpc_deadline(&grpc), Some(Duration::from_millis(250)));
        let mut json = request(Some("application/json"));
        json.insert_header("grpc-timeout", "250m").unwrap();
        assert_eq!(grpc_deadline(&json), None);

        let mut peer = HttpPeer::new("127.0.0.1:1", false, String::new());
        bound_by(&mut peer, Duration::from_secs(2));
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(2)));
        peer.options.write_timeout = Some(Duration::from_secs(1));
        bound_by(&mut peer, Duration::from_secs(3));
        assert_eq!(peer.options.read_timeout, Some(Duration::from_secs(2)));
        assert_eq!(peer.options.write_timeout, Some(Duration::from_secs(1)));
    }

    #[test]
    fn a_set_protocol_wins_over_the_declared_one_and_detection_is_the_default() {
        use snapshot::AppProtocol as Declared;
        assert_eq!(AppProtocol::chosen(None, None), AppProtocol::Auto);
        assert_eq!(
            AppProtocol::chosen(None, Some(Declared::H2c)),
            AppProtocol::H2c
        );
        assert_eq!(
            AppProtocol::chosen(None, Some(Declared::Http1)),
            AppProtocol::Http1
        );
        assert_eq!(
            AppProtocol::chosen(Some(AppProtocol::Auto), Some(Declared::H2c)),
            AppProtocol::Auto
        );
        assert_eq!(
            AppProtocol::chosen(Some(AppProtocol::Http1), Some(Declared::H2c)),
            AppProtocol::Http1
        );
    }
}
