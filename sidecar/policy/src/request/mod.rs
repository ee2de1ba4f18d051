//! The small view of a request that policy modules read. Built once per request by the proxy
//! from Pingora's request header; policy code never sees Pingora types.

pub mod headers;
pub mod path;

use std::net::IpAddr;

use http::HeaderMap;

/// What policies may look at: method, path, query, host, headers and the client address.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    /// The method, upper case as sent (`GET`).
    pub method: &'a str,
    /// The path, without the query string (`/api/items`).
    pub path: &'a str,
    /// The raw query string without `?` (`a=1&b=2`), if any.
    pub query: Option<&'a str>,
    /// The `:authority` or `Host`, as sent (may include a port).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The peer address of the inbound connection.
    pub client_ip: Option<IpAddr>,
}

/// True for a standard method written in another case (`post`, `Get`): RFC 9110 methods are
/// case-sensitive, but some apps upper-case them, so such a request could reach a `POST`
/// handler unseen by a rule on `POST`. The listener refuses it, as Envoy's HTTP/1 parser does;
/// extension methods (`BREW`, `PROPFIND`) pass as sent.
pub fn miscased_method(method: &str) -> bool {
    if !method.bytes().any(|b| b.is_ascii_lowercase()) {
        return false; // the usual case: no lookup
    }
    crate::matching::METHODS
        .iter()
        .any(|(_, standard)| method != *standard && method.eq_ignore_ascii_case(standard))
}

/// The client's address when `trusted_hops` proxies that append to `X-Forwarded-For` stand in
/// front of the sidecar (an ingress, a load balancer): the `trusted_hops`-th address from the
/// right of `X-Forwarded-For` (all its header lines, in order), as Envoy's
/// `xff_num_trusted_hops` with `use_remote_address`. With 0, or when the header has fewer
/// addresses (or an unparsable one in the trusted part), the connection's peer: entries to the
/// left of the trusted ones are whatever the client wrote, so they are never used.
pub fn client_ip(peer: Option<IpAddr>, headers: &HeaderMap, trusted_hops: usize) -> Option<IpAddr> {
    if trusted_hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let Some(index) = entries.len().checked_sub(trusted_hops) else {
        return peer;
    };
    entries[index].parse().ok().or(peer)
}

/// One request builder for every policy test: owns its parts; `view()` borrows it as policy
/// code sees it.
#[cfg(test)]
pub(crate) mod testing {
    use std::net::IpAddr;

    use http::{HeaderMap, HeaderValue};

    use super::RequestView;

    pub(crate) struct TestRequest {
        method: String,
        path: String,
        query: Option<String>,
        host: Option<String>,
        headers: HeaderMap,
        client_ip: Option<IpAddr>,
    }

    impl TestRequest {
        /// `GET path`, no host, headers or client address.
        pub(crate) fn new(path: &str) -> Self {
            Self {
                method: "GET".into(),
                path: path.into(),
                query: None,
                host: None,
                headers: HeaderMap::new(),
                client_ip: None,
            }
        }
        pub(crate) fn method(mut self, m: &str) -> Self {
            self.method = m.into();
            self
        }
        pub(crate) fn query(mut self, q: &str) -> Self {
            self.query = Some(q.into());
            self
        }
        pub(crate) fn host(mut self, h: &str) -> Self {
            self.host = Some(h.into());
            self
        }
        pub(crate) fn header(mut self, name: &'static str, value: &str) -> Self {
            self.headers
                .append(name, HeaderValue::from_str(value).unwrap());
            self
        }
        /// Each `(name, value)`, appended in order.
        pub(crate) fn headers(self, headers: &[(&'static str, &str)]) -> Self {
            headers
                .iter()
                .fold(self, |req, (name, value)| req.header(name, value))
        }
        pub(crate) fn header_bytes(mut self, name: &'static str, value: &[u8]) -> Self {
            self.headers
                .append(name, HeaderValue::from_bytes(value).unwrap());
            self
        }
        pub(crate) fn clear_headers(&mut self) {
            self.headers.clear();
        }
        pub(crate) fn ip(mut self, ip: &str) -> Self {
            self.client_ip = Some(ip.parse().unwrap());
            self
        }
        pub(crate) fn view(&self) -> RequestView<'_> {
            RequestView {
                method: &self.method,
                path: &self.path,
                query: self.query.as_deref(),
                host: self.host.as_deref(),
                headers: &self.headers,
                client_ip: self.client_ip,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append("x-forwarded-for", line.parse().unwrap());
        }
        map
    }

    const PEER: Option<IpAddr> = Some(IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9)));

    #[test]
    fn the_nth_address_from_the_right_is_the_client() {
        // A client that lies (1.1.1.1), then a CDN that saw 203.0.113.7, then the ingress.
        let xff = headers(&["1.1.1.1, 203.0.113.7", "198.51.100.2"]);
        assert_eq!(client_ip(PEER, &xff, 0), PEER, "no trusted proxy: the peer");
        assert_eq!(client_ip(PEER, &xff, 1), "198.51.100.2".parse().ok());
        assert_eq!(client_ip(PEER, &xff, 2), "203.0.113.7".parse().ok());
        assert_eq!(client_ip(PEER, &xff, 3), "1.1.1.1".parse().ok());
    }

    #[test]
    fn standard_methods_in_another_case_are_told_apart() {
        for method in ["post", "Get", "dElEtE", "patch"] {
            assert!(miscased_method(method), "{method}");
        }
        for method in ["POST", "GET", "BREW", "propfind", "M-SEARCH"] {
            assert!(!miscased_method(method), "{method}");
        }
    }

    #[test]
    fn too_few_or_bad_entries_fall_back_to_the_peer() {
        assert_eq!(client_ip(PEER, &headers(&["203.0.113.7"]), 2), PEER);
        assert_eq!(client_ip(PEER, &HeaderMap::new(), 1), PEER);
        assert_eq!(client_ip(PEER, &headers(&["not-an-ip"]), 1), PEER);
        assert_eq!(
            client_ip(PEER, &headers(&["2001:db8::1"]), 1),
            "2001:db8::1".parse().ok()
        );
    }
}
