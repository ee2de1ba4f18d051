//! Which HTTP version a request goes upstream in. Pingora has no "HTTP/2 if it can" on a
//! plaintext connection: a peer is HTTP/1.1, or HTTP/2 with prior knowledge (h2c), so the
//! sidecar decides per request. gRPC needs HTTP/2 end to end (its status travels in trailers,
//! which HTTP/1.1 to the app cannot carry), so a gRPC request goes over h2c even when the app's
//! other traffic is HTTP/1.1 (as Envoy's and Linkerd's protocol detection do).

use bulwark_policy::grpc;
use pingora::{http::RequestHeader, prelude::HttpPeer};

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
    /// Whether `request` goes to the app over HTTP/2.
    pub fn h2(self, request: &RequestHeader) -> bool {
        match self {
            Self::Auto => is_grpc(request),
            Self::Http1 => false,
            Self::H2c => true,
        }
    }
}

/// A gRPC request: `content-type: application/grpc`, `application/grpc+proto` and the like.
pub fn is_grpc(request: &RequestHeader) -> bool {
    request
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| grpc::is_grpc_content_type(v.as_bytes()))
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
    }
}
