//! The small view of a request that policy modules read. Built once per request by the proxy
//! from Pingora's request header; policy code never sees Pingora types.

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
