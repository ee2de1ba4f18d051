//! Request matching: the compiled form of `RequestMatch`.
//!
//! [`CompiledMatch::compile`] does every expensive or fallible step once, when a snapshot is
//! compiled: regular expressions are built (anchored, so they must match the whole value), CIDRs
//! are parsed, hosts, header names and methods are normalised. [`CompiledMatch::matches`] then
//! only compares, and does not allocate except to percent-decode a query parameter that a
//! regular expression must see decoded.
//!
//! Semantics (the doc comments of `RequestMatch` are the spec):
//!
//! - Every condition given must hold (AND). Within `methods`, `hosts` and `sourceCIDRs` any entry
//!   may match (OR); every entry of `headers` and `queryParams` must hold. An empty match selects
//!   every request.
//! - **Path** is compared as given: the inbound listener normalizes it first
//!   ([`crate::request::path`]; docs/security.md), so here it is compared byte for byte.
//!   `PathPrefix` matches on a segment boundary: `/api` matches `/api`, `/api/` and `/api/x`,
//!   not `/apix`. As in Gateway API, trailing slashes of the prefix are ignored, so `/api/`
//!   behaves exactly as `/api` (it also matches `/api`); `/` matches every path.
//! - **Methods** are compared case-sensitively (HTTP methods are); an unknown method matches no
//!   list. The listener refuses a standard method in another case (`post`) before matching
//!   ([`crate::request::miscased_method`]), so no app can read as `POST` what a rule on `POST`
//!   did not see.
//! - **Hosts** are compared case-insensitively, ignoring one trailing dot. A `:port` in the
//!   request host is ignored unless the pattern has a port, in which case the request must carry
//!   that same port. `*.example.com` matches one or more labels before `.example.com`, never
//!   `example.com` itself. A request without a host matches no host list.
//! - **Headers**: names are case-insensitive. Each field line is one value (no splitting on
//!   commas); with several lines, `Exact` and `RegularExpression` hold if any value matches. A
//!   value that is not UTF-8 matches nothing. `invert` negates the whole condition, so an
//!   inverted `Exact` also holds when the header is absent, and an inverted `Present` holds
//!   exactly when it is absent.
//! - **Query parameters** are parsed from the raw query as `application/x-www-form-urlencoded`:
//!   names and values are percent-decoded and `+` is a space (`a+b` equals `a%20b`); an invalid
//!   escape is kept literally; `a` without `=` has the value `""`. Names are case-sensitive and
//!   the first occurrence of a name is the one compared. `invert` as for headers.
//! - **Source CIDRs** are checked against the peer address; an IPv4-mapped IPv6 client
//!   (`::ffff:10.0.0.1`) is treated as the IPv4 address, and an IPv4-mapped IPv6 range
//!   (`::ffff:10.0.0.0/104`) as the IPv4 range, so either spelling matches either form. A request
//!   without a client address matches no CIDR list.

use std::borrow::Cow;

use bulwark_api::crd::common::{
    GrpcMethodMatch, HttpMethod, PathMatch, PathMatchType, RequestMatch, ValueMatch, ValueMatchType,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::{IpNet, Ipv4Net};
use std::cell::Cell;

use regex_automata::meta::Regex;

use crate::compile::CompileError;
use crate::request::RequestView;

/// A `RequestMatch` ready to be evaluated against requests.
#[derive(Clone, Debug)]
pub struct CompiledMatch {
    path: Option<PathCond>,
    /// Bit `i` set: method `i` of [`METHODS`] matches. Zero: any method.
    methods: u16,
    hosts: Vec<HostPattern>,
    headers: Vec<HeaderCond>,
    query_params: Vec<QueryCond>,
    cidrs: Vec<IpNet>,
}

#[derive(Clone, Debug)]
enum PathCond {
    Exact(String),
    /// The prefix without trailing slashes; empty for `/` (every path).
    Prefix(String),
    Regex(Regex),
    /// A gRPC method of any service: `/<service>/<method>`.
    GrpcMethod(String),
}

#[derive(Clone, Debug)]
struct HostPattern {
    /// Lower case. For a wildcard, the suffix including its leading dot (`.example.com`).
    name: String,
    wildcard: bool,
    port: Option<String>,
}

#[derive(Clone, Debug)]
enum ValueCond {
    Exact(String),
    Regex(Regex),
    Present,
}

#[derive(Clone, Debug)]
struct HeaderCond {
    name: HeaderName,
    cond: ValueCond,
    invert: bool,
}

#[derive(Clone, Debug)]
struct QueryCond {
    name: String,
    cond: ValueCond,
    invert: bool,
}

/// The methods of `HttpMethod`, in bit order.
pub(crate) const METHODS: [(HttpMethod, &str); 9] = [
    (HttpMethod::GET, "GET"),
    (HttpMethod::HEAD, "HEAD"),
    (HttpMethod::POST, "POST"),
    (HttpMethod::PUT, "PUT"),
    (HttpMethod::DELETE, "DELETE"),
    (HttpMethod::CONNECT, "CONNECT"),
    (HttpMethod::OPTIONS, "OPTIONS"),
    (HttpMethod::TRACE, "TRACE"),
    (HttpMethod::PATCH, "PATCH"),
];

fn method_bit(m: HttpMethod) -> u16 {
    let i = METHODS
        .iter()
        .position(|(x, _)| *x == m)
        .expect("every HttpMethod is listed in METHODS");
    1 << i
}

fn request_method_bit(method: &str) -> u16 {
    METHODS
        .iter()
        .position(|(_, s)| *s == method)
        .map_or(0, |i| 1 << i)
}

impl CompiledMatch {
    /// Compiles regexes once (anchored full match), parses CIDRs; errors name the field relative
    /// to the match (e.g. `path.value`, `headers[0].value`, `sourceCIDRs[2]`).
    /// Each regular expression is charged to `regexes`.
    pub fn compile(m: &RequestMatch, regexes: &RegexBudget) -> Result<Self, CompileError> {
        let path = match (&m.path, &m.grpc) {
            (Some(_), Some(_)) => {
                return Err(CompileError::new(
                    "grpc",
                    "set path or grpc, not both: grpc is a shorthand for the path a gRPC call sends",
                ));
            }
            (Some(p), None) => Some(compile_path(p, regexes).map_err(|e| e.under("path"))?),
            (None, Some(g)) => Some(compile_grpc(g).map_err(|e| e.under("grpc"))?),
            (None, None) => None,
        };
        let methods = m.methods.iter().fold(0u16, |acc, &x| acc | method_bit(x));
        let hosts = m
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                compile_host(h).map_err(|msg| CompileError::new(format!("hosts[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        let headers = m
            .headers
            .iter()
            .enumerate()
            .map(|(i, v)| compile_header(v, regexes).map_err(|e| e.under(&format!("headers[{i}]"))))
            .collect::<Result<_, _>>()?;
        let query_params = m
            .query_params
            .iter()
            .enumerate()
            .map(|(i, v)| {
                compile_query(v, regexes).map_err(|e| e.under(&format!("queryParams[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        let cidrs = m
            .source_cidrs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                compile_cidr(c).map_err(|msg| CompileError::new(format!("sourceCIDRs[{i}]"), msg))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            path,
            methods,
            hosts,
            headers,
            query_params,
            cidrs,
        })
    }

    /// Whether `req` satisfies every condition of the match.
    /// The headers the match reads.
    pub fn headers_read(&self) -> impl Iterator<Item = &HeaderName> {
        self.headers.iter().map(|h| &h.name)
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if self.methods != 0 && self.methods & request_method_bit(req.method) == 0 {
            return false;
        }
        if let Some(path) = &self.path
            && !path.matches(req.path)
        {
            return false;
        }
        if !self.hosts.is_empty() {
            let Some(host) = req.host else { return false };
            let (name, port) = split_host_port(host);
            let name = name.strip_suffix('.').unwrap_or(name);
            if !self.hosts.iter().any(|p| p.matches(name, port)) {
                return false;
            }
        }
        if !self.cidrs.is_empty() {
            let Some(ip) = req.client_ip else {
                return false;
            };
            let ip = ip.to_canonical();
            if !self.cidrs.iter().any(|n| n.contains(&ip)) {
                return false;
            }
        }
        if !self.headers.iter().all(|h| h.matches(req.headers)) {
            return false;
        }
        let query = req.query.unwrap_or("");
        self.query_params.iter().all(|q| q.matches(query))
    }
}

fn compile_header(v: &ValueMatch, regexes: &RegexBudget) -> Result<HeaderCond, CompileError> {
    let name = HeaderName::from_bytes(v.name.as_bytes()).map_err(|_| {
        CompileError::new("name", format!("{:?} is not a valid header name", v.name))
    })?;
    Ok(HeaderCond {
        name,
        cond: compile_value(v, regexes)?,
        invert: v.invert,
    })
}

fn compile_query(v: &ValueMatch, regexes: &RegexBudget) -> Result<QueryCond, CompileError> {
    if v.name.is_empty() {
        return Err(CompileError::new("name", "must not be empty"));
    }
    Ok(QueryCond {
        name: v.name.clone(),
        cond: compile_value(v, regexes)?,
        invert: v.invert,
    })
}

fn compile_path(p: &PathMatch, regexes: &RegexBudget) -> Result<PathCond, CompileError> {
    if p.value.is_empty() {
        return Err(CompileError::new("value", "must not be empty"));
    }
    match p.type_ {
        PathMatchType::RegularExpression => Ok(PathCond::Regex(regexes.compile(&p.value)?)),
        _ if !p.value.starts_with('/') => Err(CompileError::new(
            "value",
            "must start with '/' unless type is RegularExpression",
        )),
        PathMatchType::Exact => Ok(PathCond::Exact(p.value.clone())),
        PathMatchType::PathPrefix => Ok(PathCond::Prefix(p.value.trim_end_matches('/').to_owned())),
    }
}

/// The path condition a gRPC method match stands for.
fn compile_grpc(g: &GrpcMethodMatch) -> Result<PathCond, CompileError> {
    let name = |field: &'static str, value: &str, dots: bool| {
        let ok = !value.is_empty()
            && value.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            && (dots || !value.contains('.'));
        if ok {
            Ok(())
        } else {
            Err(CompileError::new(
                field,
                "must be a protobuf name (letters, digits, _; a service may be qualified with dots)",
            ))
        }
    };
    if let Some(service) = &g.service {
        name("service", service, true)?;
    }
    if let Some(method) = &g.method {
        name("method", method, false)?;
    }
    match (&g.service, &g.method) {
        (Some(service), Some(method)) => Ok(PathCond::Exact(format!("/{service}/{method}"))),
        (Some(service), None) => Ok(PathCond::Prefix(format!("/{service}"))),
        (None, Some(method)) => Ok(PathCond::GrpcMethod(method.clone())),
        (None, None) => Err(CompileError::new("service", "set service, method or both")),
    }
}

impl PathCond {
    fn matches(&self, path: &str) -> bool {
        match self {
            PathCond::GrpcMethod(method) => path
                .strip_suffix(method.as_str())
                .and_then(|rest| rest.strip_suffix('/'))
                .and_then(|rest| rest.strip_prefix('/'))
                .is_some_and(|service| !service.is_empty() && !service.contains('/')),
            PathCond::Exact(v) => path == v,
            PathCond::Prefix(p) => match path.strip_prefix(p.as_str()) {
                Some(rest) => rest.is_empty() || rest.starts_with('/'),
                None => false,
            },
            PathCond::Regex(r) => r.is_match(path),
        }
    }
}

/// What a snapshot's regular expressions may take, compiled: each at most [`Self::PER_REGEX`],
/// all together at most [`Self::PER_SNAPSHOT`]. Without the total, thousands of rules each just
/// under the `regex` crate's own 10 MiB limit could take gigabytes; a snapshot over budget is
/// refused like any other invalid one (the last good one stays), naming the regex that tipped it.
///
/// The lazy DFA's cache, which grows at match time (per thread, at most 2 MiB per regex, the
/// crate's default), is not counted: it holds only states that requests reach.
pub struct RegexBudget {
    left: Cell<usize>,
}

impl Default for RegexBudget {
    fn default() -> Self {
        Self::new(Self::PER_SNAPSHOT)
    }
}

impl RegexBudget {
    /// Compiled, `[a-z0-9-]+` takes 1.5 KiB, `\w+` 56 KiB (Unicode classes are large) and
    /// `\w{100}` 5.6 MiB: this refuses the last, which the crate's 10 MiB default allows.
    pub const PER_REGEX: usize = 1 << 20;
    pub const PER_SNAPSHOT: usize = 64 << 20;

    pub fn new(total: usize) -> Self {
        Self {
            left: Cell::new(total),
        }
    }

    /// Compiles `pattern` so that it must match a whole value, and charges its heap size.
    /// The field of an error is `value`.
    fn compile(&self, pattern: &str) -> Result<Regex, CompileError> {
        // Checked alone first: a pattern such as `a)|(b` would otherwise escape the anchoring group.
        build_regex(pattern)?;
        let regex = build_regex(&format!(r"\A(?:{pattern})\z"))?;
        let size = regex.memory_usage();
        let left = self.left.get();
        if size > left {
            return Err(CompileError::new(
                "value",
                format!(
                    "the snapshot's regular expressions exceed their total budget of {} MiB compiled (this one takes {} KiB)",
                    Self::PER_SNAPSHOT >> 20,
                    size.div_ceil(1024)
                ),
            ));
        }
        self.left.set(left - size);
        Ok(regex)
    }
}

fn build_regex(pattern: &str) -> Result<Regex, CompileError> {
    Regex::builder()
        .configure(Regex::config().nfa_size_limit(Some(RegexBudget::PER_REGEX)))
        .build(pattern)
        .map_err(|e| {
            let why = match e.size_limit() {
                Some(limit) => format!(
                    "regular expression too large: compiled, it would exceed {} KiB",
                    limit >> 10
                ),
                None => format!("invalid regular expression: {e}"),
            };
            CompileError::new("value", why)
        })
}

fn compile_value(v: &ValueMatch, regexes: &RegexBudget) -> Result<ValueCond, CompileError> {
    match (v.type_, v.value.as_deref()) {
        (ValueMatchType::Present, None) => Ok(ValueCond::Present),
        (ValueMatchType::Present, Some(_)) => {
            Err(CompileError::new("value", "not allowed with type Present"))
        }
        (_, None) => Err(CompileError::new(
            "value",
            "required unless type is Present",
        )),
        (ValueMatchType::Exact, Some(x)) => Ok(ValueCond::Exact(x.to_owned())),
        (ValueMatchType::RegularExpression, Some(x)) => Ok(ValueCond::Regex(regexes.compile(x)?)),
    }
}

impl ValueCond {
    fn matches_str(&self, value: &str) -> bool {
        match self {
            ValueCond::Exact(x) => value == x,
            ValueCond::Regex(r) => r.is_match(value),
            ValueCond::Present => true,
        }
    }
}

impl HeaderCond {
    fn matches(&self, headers: &HeaderMap) -> bool {
        let held = match &self.cond {
            ValueCond::Present => headers.contains_key(&self.name),
            cond => headers
                .get_all(&self.name)
                .iter()
                .filter_map(header_str)
                .any(|v| cond.matches_str(v)),
        };
        held != self.invert
    }
}

impl QueryCond {
    fn matches(&self, query: &str) -> bool {
        let held = match query_param(query, &self.name) {
            None => false,
            Some(raw) => match &self.cond {
                ValueCond::Present => true,
                ValueCond::Exact(x) => decoded_eq(raw, x),
                cond @ ValueCond::Regex(_) => cond.matches_str(&percent_decode(raw)),
            },
        };
        held != self.invert
    }
}

/// A header value as text, if it is UTF-8 (not only visible ASCII, as `to_str` requires).
pub(crate) fn header_str(v: &HeaderValue) -> Option<&str> {
    std::str::from_utf8(v.as_bytes()).ok()
}

/// Splits `host[:port]`, `[v6]:port` or a bare IPv6 address into name and port.
fn split_host_port(host: &str) -> (&str, Option<&str>) {
    if host.starts_with('[') {
        if let Some(end) = host.find(']') {
            let (name, rest) = host.split_at(end + 1);
            return (name, rest.strip_prefix(':'));
        }
        return (host, None);
    }
    match host.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((name, _)) if name.contains(':') => (host, None),
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    }
}

fn compile_host(h: &str) -> Result<HostPattern, String> {
    let lower = h.to_ascii_lowercase();
    let (name, port) = split_host_port(&lower);
    if let Some(p) = port
        && (p.is_empty()
            || p.len() > 5
            || !p.bytes().all(|b| b.is_ascii_digit())
            || p.parse::<u16>().is_err())
    {
        return Err(format!("{h:?} has an invalid port"));
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let (wildcard, rest) = match name.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if rest.is_empty() {
        return Err(format!("{h:?} has no host name"));
    }
    if rest.contains('*') {
        return Err(format!(
            "{h:?}: a wildcard is only allowed as a leading '*.' label"
        ));
    }
    if rest.contains('/') || rest.chars().any(char::is_whitespace) {
        return Err(format!("{h:?} is not a host name"));
    }
    Ok(HostPattern {
        name: if wildcard {
            format!(".{rest}")
        } else {
            rest.to_owned()
        },
        wildcard,
        port: port.map(str::to_owned),
    })
}

impl HostPattern {
    /// `name` is the request host without port and trailing dot.
    fn matches(&self, name: &str, port: Option<&str>) -> bool {
        if let Some(p) = &self.port
            && port != Some(p.as_str())
        {
            return false;
        }
        let (n, s) = (name.as_bytes(), self.name.as_bytes());
        if self.wildcard {
            n.len() > s.len() && n[n.len() - s.len()..].eq_ignore_ascii_case(s)
        } else {
            n.eq_ignore_ascii_case(s)
        }
    }
}

fn compile_cidr(c: &str) -> Result<IpNet, String> {
    let net: IpNet = c
        .trim()
        .parse()
        .map_err(|_| format!("{c:?} is not a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))?;
    Ok(match net {
        // An IPv4-mapped IPv6 range is the IPv4 range: clients are canonicalised to IPv4.
        IpNet::V6(v6) if v6.prefix_len() >= 96 && v6.addr().to_ipv4_mapped().is_some() => {
            let v4 = v6.addr().to_ipv4_mapped().expect("checked above");
            IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("prefix at most 32"))
        }
        net => net,
    }
    .trunc())
}

/// The raw (still encoded) value of the first parameter of `query` whose decoded name is `name`.
/// A parameter without `=` has the value `""`.
pub(crate) fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            decoded_eq(n, name).then_some(v)
        })
}

/// The value of a hex digit.
fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The decoded bytes of a form-urlencoded component, without allocating.
fn decoded_bytes(raw: &str) -> impl Iterator<Item = u8> + '_ {
    let b = raw.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        let c = *b.get(i)?;
        i += 1;
        Some(match c {
            b'+' => b' ',
            b'%' => match (
                b.get(i).copied().and_then(hex),
                b.get(i + 1).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    i += 2;
                    h << 4 | l
                }
                _ => b'%',
            },
            c => c,
        })
    })
}

/// Whether the decoded form of `raw` equals `expected`, without allocating.
fn decoded_eq(raw: &str, expected: &str) -> bool {
    decoded_bytes(raw).eq(expected.bytes())
}

/// Decodes a form-urlencoded component: `%XX` escapes, `+` as space; invalid escapes stay as
/// they are, and bytes that are not UTF-8 become U+FFFD.
pub(crate) fn percent_decode(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let bytes: Vec<u8> = decoded_bytes(raw).collect();
    match String::from_utf8(bytes) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::testing::TestRequest;

    fn compile(m: &RequestMatch) -> Result<CompiledMatch, CompileError> {
        CompiledMatch::compile(m, &RegexBudget::default())
    }

    fn path_match(type_: PathMatchType, value: &str) -> CompiledMatch {
        compile(&RequestMatch {
            path: Some(PathMatch {
                type_,
                value: value.into(),
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn matches_path(m: &CompiledMatch, path: &str) -> bool {
        m.matches(&TestRequest::new(path).view())
    }

    fn vm(name: &str, type_: ValueMatchType, value: Option<&str>, invert: bool) -> ValueMatch {
        ValueMatch {
            name: name.into(),
            type_,
            value: value.map(str::to_owned),
            invert,
        }
    }

    fn headers_match(conds: Vec<ValueMatch>) -> CompiledMatch {
        compile(&RequestMatch {
            headers: conds,
            ..Default::default()
        })
        .unwrap()
    }

    fn query_match(conds: Vec<ValueMatch>) -> CompiledMatch {
        compile(&RequestMatch {
            query_params: conds,
            ..Default::default()
        })
        .unwrap()
    }

    fn hosts_match(hosts: &[&str]) -> CompiledMatch {
        compile(&RequestMatch {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn cidr_match(cidrs: &[&str]) -> CompiledMatch {
        compile(&RequestMatch {
            source_cidrs: cidrs.iter().map(|h| h.to_string()).collect(),
            ..Default::default()
        })
        .unwrap()
    }

    fn compile_err(m: RequestMatch) -> CompileError {
        compile(&m).unwrap_err()
    }

    #[test]
    fn empty_match_selects_everything() {
        let m = compile(&RequestMatch::default()).unwrap();
        assert!(m.matches(&TestRequest::new("/").view()));
        assert!(
            m.matches(
                &TestRequest::new("/x/y")
                    .method("DELETE")
                    .query("a=1")
                    .host("h:1")
                    .ip("10.0.0.1")
                    .header("x", "y")
                    .view()
            )
        );
        assert!(m.matches(&TestRequest::new("").method("BREW").view()));
    }

    #[test]
    fn exact_path() {
        let m = path_match(PathMatchType::Exact, "/api");
        assert!(matches_path(&m, "/api"));
        assert!(!matches_path(&m, "/api/"));
        assert!(!matches_path(&m, "/api/x"));
        assert!(!matches_path(&m, "/API"));
        assert!(!matches_path(&m, "/ap"));
    }

    #[test]
    fn prefix_on_segment_boundary() {
        let m = path_match(PathMatchType::PathPrefix, "/api");
        assert!(matches_path(&m, "/api"));
        assert!(matches_path(&m, "/api/"));
        assert!(matches_path(&m, "/api/x"));
        assert!(matches_path(&m, "/api/x/y"));
        assert!(!matches_path(&m, "/apix"));
        assert!(!matches_path(&m, "/ap"));
        assert!(!matches_path(&m, "/"));
        assert!(!matches_path(&m, "/v1/api"));
        assert!(!matches_path(&m, "/API"));
    }

    #[test]
    fn prefix_with_trailing_slash_is_the_same_prefix() {
        // Gateway API: a trailing `/` of the prefix is ignored.
        for prefix in ["/api/", "/api//"] {
            let m = path_match(PathMatchType::PathPrefix, prefix);
            assert!(matches_path(&m, "/api"), "{prefix}");
            assert!(matches_path(&m, "/api/"), "{prefix}");
            assert!(matches_path(&m, "/api/x"), "{prefix}");
            assert!(!matches_path(&m, "/apix"), "{prefix}");
        }
    }

    #[test]
    fn root_prefix_matches_every_path() {
        let m = path_match(PathMatchType::PathPrefix, "/");
        assert!(matches_path(&m, "/"));
        assert!(matches_path(&m, "/anything/at/all"));
    }

    #[test]
    fn path_regex_is_a_full_match() {
        let m = path_match(PathMatchType::RegularExpression, "/users/[0-9]+");
        assert!(matches_path(&m, "/users/42"));
        assert!(!matches_path(&m, "/users/42/edit"));
        assert!(!matches_path(&m, "/v1/users/42"));
        assert!(!matches_path(&m, "/users/"));
        // Alternation is anchored as a whole, not only its first or last branch.
        let m = path_match(PathMatchType::RegularExpression, "/a|/b");
        assert!(matches_path(&m, "/a"));
        assert!(matches_path(&m, "/b"));
        assert!(!matches_path(&m, "/ab"));
        assert!(!matches_path(&m, "/b/c"));
        assert!(!matches_path(&m, "x/a"));
        // A multi-line flag inside the pattern does not relax the anchors.
        let m = path_match(PathMatchType::RegularExpression, "(?m)^/a$");
        assert!(matches_path(&m, "/a"));
        assert!(!matches_path(&m, "/a\n/b"));
    }

    #[test]
    fn methods_any_of() {
        let m = compile(&RequestMatch {
            methods: vec![HttpMethod::GET, HttpMethod::HEAD],
            ..Default::default()
        })
        .unwrap();
        assert!(m.matches(&TestRequest::new("/").method("GET").view()));
        assert!(m.matches(&TestRequest::new("/").method("HEAD").view()));
        assert!(!m.matches(&TestRequest::new("/").method("POST").view()));
        assert!(!m.matches(&TestRequest::new("/").method("get").view()));
        assert!(!m.matches(&TestRequest::new("/").method("BREW").view()));
        for (method, name) in METHODS {
            let m = compile(&RequestMatch {
                methods: vec![method],
                ..Default::default()
            })
            .unwrap();
            assert!(
                m.matches(&TestRequest::new("/").method(name).view()),
                "{name}"
            );
            let others = METHODS.iter().filter(|(x, _)| *x != method);
            for (_, other) in others {
                assert!(
                    !m.matches(&TestRequest::new("/").method(other).view()),
                    "{name} vs {other}"
                );
            }
        }
    }

    #[test]
    fn exact_hosts() {
        let m = hosts_match(&["example.com", "api.example.org"]);
        let ok = |h: &str| m.matches(&TestRequest::new("/").host(h).view());
        assert!(ok("example.com"));
        assert!(ok("EXAMPLE.com"));
        assert!(ok("example.com:8080"));
        assert!(ok("example.com."));
        assert!(ok("api.example.org:443"));
        assert!(!ok("a.example.com"));
        assert!(!ok("example.co"));
        assert!(!ok("xexample.com"));
        assert!(!m.matches(&TestRequest::new("/").view()), "no host");
    }

    #[test]
    fn wildcard_hosts() {
        let m = hosts_match(&["*.example.com"]);
        let ok = |h: &str| m.matches(&TestRequest::new("/").host(h).view());
        assert!(ok("a.example.com"));
        assert!(ok("a.b.example.com"));
        assert!(ok("A.Example.COM:8443"));
        assert!(!ok("example.com"));
        assert!(!ok("example.com:80"));
        assert!(!ok(".example.com"));
        assert!(!ok("aexample.com"));
        assert!(!ok("a.example.com.evil"));
    }

    #[test]
    fn hosts_with_ports() {
        let m = hosts_match(&["example.com:8080", "*.example.org:443"]);
        let ok = |h: &str| m.matches(&TestRequest::new("/").host(h).view());
        assert!(ok("example.com:8080"));
        assert!(ok("Example.Com:8080"));
        assert!(!ok("example.com"));
        assert!(!ok("example.com:8081"));
        assert!(ok("a.example.org:443"));
        assert!(!ok("a.example.org"));
        assert!(!ok("example.org:443"));
    }

    #[test]
    fn ipv6_literal_request_hosts() {
        assert_eq!(split_host_port("[::1]:8080"), ("[::1]", Some("8080")));
        assert_eq!(split_host_port("[::1]"), ("[::1]", None));
        assert_eq!(split_host_port("::1"), ("::1", None));
        assert_eq!(split_host_port("h:1"), ("h", Some("1")));
        let m = hosts_match(&["example.com"]);
        assert!(!m.matches(&TestRequest::new("/").host("[::1]:80").view()));
    }

    #[test]
    fn header_exact_and_case_insensitive_name() {
        let m = headers_match(vec![vm(
            "X-Tenant",
            ValueMatchType::Exact,
            Some("acme"),
            false,
        )]);
        assert!(m.matches(&TestRequest::new("/").header("x-tenant", "acme").view()));
        assert!(!m.matches(&TestRequest::new("/").header("x-tenant", "ACME").view()));
        assert!(!m.matches(&TestRequest::new("/").header("x-tenant", "acme2").view()));
        assert!(!m.matches(&TestRequest::new("/").view()));
    }

    #[test]
    fn header_multiple_values_any_matches() {
        let m = headers_match(vec![vm(
            "x-role",
            ValueMatchType::Exact,
            Some("admin"),
            false,
        )]);
        let req = TestRequest::new("/")
            .header("x-role", "user")
            .header("x-role", "admin");
        assert!(m.matches(&req.view()));
        // One field line is one value: no splitting on commas.
        assert!(!m.matches(&TestRequest::new("/").header("x-role", "user, admin").view()));
        let r = headers_match(vec![vm(
            "x-role",
            ValueMatchType::RegularExpression,
            Some("adm.*"),
            false,
        )]);
        assert!(r.matches(&req.view()));
        assert!(!r.matches(&TestRequest::new("/").header("x-role", "user").view()));
    }

    #[test]
    fn header_regex_is_a_full_match() {
        let m = headers_match(vec![vm(
            "user-agent",
            ValueMatchType::RegularExpression,
            Some("curl/[0-9.]+"),
            false,
        )]);
        assert!(
            m.matches(
                &TestRequest::new("/")
                    .header("user-agent", "curl/8.5.0")
                    .view()
            )
        );
        assert!(
            !m.matches(
                &TestRequest::new("/")
                    .header("user-agent", "x curl/8.5.0")
                    .view()
            )
        );
        assert!(
            !m.matches(
                &TestRequest::new("/")
                    .header("user-agent", "curl/8.5.0 x")
                    .view()
            )
        );
    }

    #[test]
    fn header_utf8_values_match_and_invalid_bytes_do_not() {
        let m = headers_match(vec![vm(
            "x-name",
            ValueMatchType::Exact,
            Some("zoë"),
            false,
        )]);
        assert!(
            m.matches(
                &TestRequest::new("/")
                    .header_bytes("x-name", "zoë".as_bytes())
                    .view()
            )
        );
        assert!(
            !m.matches(
                &TestRequest::new("/")
                    .header_bytes("x-name", b"zo\xeb")
                    .view()
            )
        );
        let p = headers_match(vec![vm("x-name", ValueMatchType::Present, None, false)]);
        assert!(
            p.matches(
                &TestRequest::new("/")
                    .header_bytes("x-name", b"zo\xeb")
                    .view()
            )
        );
    }

    #[test]
    fn header_present_and_invert() {
        let present = headers_match(vec![vm("x-debug", ValueMatchType::Present, None, false)]);
        let absent = headers_match(vec![vm("x-debug", ValueMatchType::Present, None, true)]);
        let with = TestRequest::new("/").header("x-debug", "");
        let without = TestRequest::new("/");
        assert!(present.matches(&with.view()));
        assert!(!present.matches(&without.view()));
        assert!(!absent.matches(&with.view()));
        assert!(absent.matches(&without.view()));

        let not_admin = headers_match(vec![vm(
            "x-role",
            ValueMatchType::Exact,
            Some("admin"),
            true,
        )]);
        assert!(not_admin.matches(&TestRequest::new("/").header("x-role", "user").view()));
        assert!(
            not_admin.matches(&TestRequest::new("/").view()),
            "absent header: not admin"
        );
        assert!(!not_admin.matches(&TestRequest::new("/").header("x-role", "admin").view()));
        // Inverting "any value is admin": one admin value among several fails it.
        let both = TestRequest::new("/")
            .header("x-role", "user")
            .header("x-role", "admin");
        assert!(!not_admin.matches(&both.view()));

        let not_re = headers_match(vec![vm(
            "x-role",
            ValueMatchType::RegularExpression,
            Some("a.*"),
            true,
        )]);
        assert!(not_re.matches(&TestRequest::new("/").header("x-role", "user").view()));
        assert!(!not_re.matches(&TestRequest::new("/").header("x-role", "admin").view()));
    }

    #[test]
    fn all_headers_must_hold() {
        let m = headers_match(vec![
            vm("a", ValueMatchType::Exact, Some("1"), false),
            vm("b", ValueMatchType::Present, None, false),
        ]);
        assert!(
            m.matches(
                &TestRequest::new("/")
                    .header("a", "1")
                    .header("b", "x")
                    .view()
            )
        );
        assert!(!m.matches(&TestRequest::new("/").header("a", "1").view()));
        assert!(!m.matches(&TestRequest::new("/").header("b", "x").view()));
    }

    #[test]
    fn query_params_decoded_first_wins() {
        let m = query_match(vec![vm("q", ValueMatchType::Exact, Some("a b/c"), false)]);
        let ok = |q: &str| m.matches(&TestRequest::new("/").query(q).view());
        assert!(ok("q=a%20b%2Fc"));
        assert!(ok("q=a+b%2fc"));
        assert!(ok("x=1&q=a+b/c&q=zzz"));
        assert!(!ok("q=zzz&q=a+b/c"), "first occurrence wins");
        assert!(ok("%71=a+b/c"), "names are decoded too");
        assert!(!ok("Q=a+b/c"), "names are case-sensitive");
        assert!(!ok(""));
        assert!(!m.matches(&TestRequest::new("/").view()));

        let empty = query_match(vec![vm("a", ValueMatchType::Exact, Some(""), false)]);
        assert!(empty.matches(&TestRequest::new("/").query("a").view()));
        assert!(empty.matches(&TestRequest::new("/").query("b=1&a&c").view()));
        assert!(empty.matches(&TestRequest::new("/").query("a=").view()));
        assert!(!empty.matches(&TestRequest::new("/").query("a=1").view()));

        let pct = query_match(vec![vm("p", ValueMatchType::Exact, Some("100%"), false)]);
        assert!(
            pct.matches(&TestRequest::new("/").query("p=100%").view()),
            "invalid escape kept"
        );
        assert!(pct.matches(&TestRequest::new("/").query("p=100%25").view()));
    }

    #[test]
    fn query_regex_present_invert() {
        let re = query_match(vec![vm(
            "id",
            ValueMatchType::RegularExpression,
            Some("[0-9]+"),
            false,
        )]);
        assert!(re.matches(&TestRequest::new("/").query("id=42").view()));
        assert!(!re.matches(&TestRequest::new("/").query("id=42x").view()));
        assert!(
            re.matches(&TestRequest::new("/").query("id=%34%32").view()),
            "decoded first"
        );
        let re_utf8 = query_match(vec![vm(
            "n",
            ValueMatchType::RegularExpression,
            Some("zo."),
            false,
        )]);
        assert!(re_utf8.matches(&TestRequest::new("/").query("n=zo%C3%AB").view()));

        let present = query_match(vec![vm("debug", ValueMatchType::Present, None, false)]);
        assert!(present.matches(&TestRequest::new("/").query("debug").view()));
        assert!(present.matches(&TestRequest::new("/").query("x=1&debug=0").view()));
        assert!(!present.matches(&TestRequest::new("/").query("debugx=1").view()));
        let absent = query_match(vec![vm("debug", ValueMatchType::Present, None, true)]);
        assert!(!absent.matches(&TestRequest::new("/").query("debug").view()));
        assert!(absent.matches(&TestRequest::new("/").view()));

        let not_v2 = query_match(vec![vm("v", ValueMatchType::Exact, Some("2"), true)]);
        assert!(not_v2.matches(&TestRequest::new("/").query("v=1").view()));
        assert!(not_v2.matches(&TestRequest::new("/").view()));
        assert!(!not_v2.matches(&TestRequest::new("/").query("v=2").view()));

        let both = query_match(vec![
            vm("a", ValueMatchType::Exact, Some("1"), false),
            vm("b", ValueMatchType::Exact, Some("2"), false),
        ]);
        assert!(both.matches(&TestRequest::new("/").query("b=2&a=1").view()));
        assert!(!both.matches(&TestRequest::new("/").query("a=1").view()));
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("plain"), "plain");
        assert!(matches!(percent_decode("plain"), Cow::Borrowed(_)));
        assert_eq!(percent_decode("a+b%20c%2B"), "a b c+");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%C3%AB"), "ë");
        assert_eq!(percent_decode("%FF"), "\u{fffd}");
        assert_eq!(query_param("a=1&b=2&a=3", "a"), Some("1"));
        assert_eq!(query_param("&&a&", "a"), Some(""));
        assert_eq!(query_param("a=1", "b"), None);
        assert_eq!(query_param("a=b=c", "a"), Some("b=c"));
    }

    #[test]
    fn cidrs_v4_v6_and_mapped_clients() {
        let m = cidr_match(&["10.0.0.0/8", "2001:db8::/32"]);
        let ok = |ip: &str| m.matches(&TestRequest::new("/").ip(ip).view());
        assert!(ok("10.1.2.3"));
        assert!(!ok("11.0.0.1"));
        assert!(ok("2001:db8::1"));
        assert!(!ok("2001:db9::1"));
        assert!(
            ok("::ffff:10.0.0.1"),
            "IPv4-mapped client is its IPv4 address"
        );
        assert!(!ok("::ffff:11.0.0.1"));
        assert!(
            !m.matches(&TestRequest::new("/").view()),
            "no client address"
        );

        let mapped = cidr_match(&["::ffff:192.168.0.0/112"]);
        assert!(mapped.matches(&TestRequest::new("/").ip("192.168.3.4").view()));
        assert!(mapped.matches(&TestRequest::new("/").ip("::ffff:192.168.3.4").view()));
        assert!(!mapped.matches(&TestRequest::new("/").ip("192.169.0.1").view()));

        let host_bits = cidr_match(&["10.0.0.7/8"]);
        assert!(host_bits.matches(&TestRequest::new("/").ip("10.200.0.1").view()));

        let single = cidr_match(&["192.0.2.1/32", "::1/128"]);
        assert!(single.matches(&TestRequest::new("/").ip("192.0.2.1").view()));
        assert!(single.matches(&TestRequest::new("/").ip("::1").view()));
        assert!(!single.matches(&TestRequest::new("/").ip("192.0.2.2").view()));
    }

    fn grpc(service: Option<&str>, method: Option<&str>) -> RequestMatch {
        RequestMatch {
            grpc: Some(GrpcMethodMatch {
                service: service.map(str::to_owned),
                method: method.map(str::to_owned),
            }),
            ..RequestMatch::default()
        }
    }

    #[test]
    fn grpc_matches_are_the_paths_grpc_sends() {
        let hits = |m: &RequestMatch, path: &str| {
            compile(m).unwrap().matches(&TestRequest::new(path).view())
        };
        let both = grpc(Some("shop.v1.Orders"), Some("CreateOrder"));
        assert!(hits(&both, "/shop.v1.Orders/CreateOrder"));
        assert!(!hits(&both, "/shop.v1.Orders/CreateOrders"));
        assert!(!hits(&both, "/shop.v1.OrdersX/CreateOrder"));
        let service = grpc(Some("shop.v1.Orders"), None);
        assert!(hits(&service, "/shop.v1.Orders/GetOrder"));
        assert!(!hits(&service, "/shop.v1.OrdersAdmin/GetOrder"));
        let method = grpc(None, Some("Check"));
        assert!(hits(&method, "/grpc.health.v1.Health/Check"));
        assert!(!hits(&method, "/Check"));
        assert!(!hits(&method, "/a/b/Check"));
        assert!(!hits(&method, "/grpc.health.v1.Health/PreCheck"));

        let err = |m: RequestMatch| compile_err(m).field;
        assert_eq!(err(grpc(None, None)), "grpc.service");
        assert_eq!(err(grpc(Some("shop/v1"), None)), "grpc.service");
        assert_eq!(err(grpc(None, Some("a.b"))), "grpc.method");
        let mut with_path = grpc(Some("a.B"), None);
        with_path.path = Some(PathMatch {
            type_: PathMatchType::Exact,
            value: "/a.B/C".into(),
        });
        assert_eq!(err(with_path), "grpc");
    }

    #[test]
    fn conditions_are_anded_lists_are_ored() {
        let m = compile(&RequestMatch {
            path: Some(PathMatch {
                type_: PathMatchType::PathPrefix,
                value: "/api".into(),
            }),
            methods: vec![HttpMethod::POST, HttpMethod::PUT],
            hosts: vec!["a.example.com".into(), "*.example.org".into()],
            headers: vec![vm("x-tenant", ValueMatchType::Present, None, false)],
            query_params: vec![vm("dry", ValueMatchType::Present, None, true)],
            source_cidrs: vec!["10.0.0.0/8".into(), "192.168.0.0/16".into()],
            grpc: None,
        })
        .unwrap();
        let base = || {
            TestRequest::new("/api/items")
                .method("POST")
                .host("a.example.com")
                .header("x-tenant", "t")
                .ip("10.0.0.1")
        };
        assert!(m.matches(&base().view()));
        assert!(
            m.matches(
                &base()
                    .method("PUT")
                    .host("x.example.org")
                    .ip("192.168.1.1")
                    .view()
            )
        );
        assert!(!m.matches(&base().method("GET").view()));
        assert!(
            !m.matches(
                &TestRequest::new("/other")
                    .method("POST")
                    .host("a.example.com")
                    .header("x-tenant", "t")
                    .ip("10.0.0.1")
                    .view()
            )
        );
        assert!(!m.matches(&base().host("b.example.com").view()));
        assert!(!m.matches(&base().ip("172.16.0.1").view()));
        assert!(!m.matches(&base().query("dry=1").view()));
        let mut no_tenant = base();
        no_tenant.clear_headers();
        assert!(!m.matches(&no_tenant.view()));
    }

    #[test]
    fn compile_errors_name_the_field() {
        let bad_path = compile_err(RequestMatch {
            path: Some(PathMatch {
                type_: PathMatchType::RegularExpression,
                value: "(".into(),
            }),
            ..Default::default()
        });
        assert_eq!(bad_path.field, "path.value");
        assert!(
            bad_path.message.contains("regular expression"),
            "{}",
            bad_path.message
        );

        let escaping = compile_err(RequestMatch {
            path: Some(PathMatch {
                type_: PathMatchType::RegularExpression,
                value: "/a)|(/b".into(),
            }),
            ..Default::default()
        });
        assert_eq!(escaping.field, "path.value");

        let relative = compile_err(RequestMatch {
            path: Some(PathMatch {
                type_: PathMatchType::PathPrefix,
                value: "api".into(),
            }),
            ..Default::default()
        });
        assert_eq!(relative.field, "path.value");

        let header_re = compile_err(RequestMatch {
            headers: vec![
                vm("a", ValueMatchType::Exact, Some("1"), false),
                vm("b", ValueMatchType::RegularExpression, Some("[z-a]"), false),
            ],
            ..Default::default()
        });
        assert_eq!(header_re.field, "headers[1].value");

        let header_name = compile_err(RequestMatch {
            headers: vec![vm("bad name", ValueMatchType::Present, None, false)],
            ..Default::default()
        });
        assert_eq!(header_name.field, "headers[0].name");

        let missing_value = compile_err(RequestMatch {
            headers: vec![vm("a", ValueMatchType::Exact, None, false)],
            ..Default::default()
        });
        assert_eq!(missing_value.field, "headers[0].value");

        let present_value = compile_err(RequestMatch {
            query_params: vec![
                vm("a", ValueMatchType::Present, None, false),
                vm("b", ValueMatchType::Present, Some("x"), false),
            ],
            ..Default::default()
        });
        assert_eq!(present_value.field, "queryParams[1].value");

        let query_re = compile_err(RequestMatch {
            query_params: vec![vm("a", ValueMatchType::RegularExpression, Some("*"), false)],
            ..Default::default()
        });
        assert_eq!(query_re.field, "queryParams[0].value");

        let cidr = compile_err(RequestMatch {
            source_cidrs: vec!["10.0.0.0/8".into(), "::/0".into(), "10.0.0.1".into()],
            ..Default::default()
        });
        assert_eq!(cidr.field, "sourceCIDRs[2]");

        for bad in [
            "a.*.com",
            "*",
            "*.",
            "example.com:99999",
            "example.com:",
            "a/b",
        ] {
            let host = compile_err(RequestMatch {
                hosts: vec!["ok.com".into(), bad.into()],
                ..Default::default()
            });
            assert_eq!(host.field, "hosts[1]", "{bad}");
        }

        // Located under the rule by the caller.
        assert_eq!(
            header_re.clone().under("rules[3].match").to_string(),
            format!(
                "spec.rules[3].match.headers[1].value: {}",
                header_re.message
            )
        );
    }

    fn header_regex(pattern: &str) -> RequestMatch {
        RequestMatch {
            headers: vec![vm(
                "x-tenant",
                ValueMatchType::RegularExpression,
                Some(pattern),
                false,
            )],
            ..Default::default()
        }
    }

    #[test]
    fn a_typical_regex_is_a_small_part_of_the_budget() {
        let budget = RegexBudget::default();
        CompiledMatch::compile(&header_regex("[a-z0-9-]+"), &budget).unwrap();
        let used = RegexBudget::PER_SNAPSHOT - budget.left.get();
        assert!(
            used > 0 && used < RegexBudget::PER_REGEX / 10,
            "{used} bytes"
        );
    }

    #[test]
    fn a_regex_over_the_per_regex_limit_is_refused_naming_its_field() {
        // 5.6 MiB: fine for the regex crate's own 10 MiB default, not for ours.
        let err = compile_err(header_regex(r"\w{100}")).to_string();
        assert!(
            err.starts_with("spec.headers[0].value: regular expression too large"),
            "{err}"
        );
    }

    #[test]
    fn regexes_over_the_snapshot_budget_are_refused_at_the_one_that_tips_it() {
        let pattern = "[a-z0-9-]+";
        let one = RegexBudget::default();
        CompiledMatch::compile(&header_regex(pattern), &one).unwrap();
        let size = RegexBudget::PER_SNAPSHOT - one.left.get();
        // Room for exactly two.
        let budget = RegexBudget::new(2 * size);
        let three = RequestMatch {
            headers: (0..3)
                .map(|i| {
                    vm(
                        &format!("x-{i}"),
                        ValueMatchType::RegularExpression,
                        Some(pattern),
                        false,
                    )
                })
                .collect(),
            ..Default::default()
        };
        let err = CompiledMatch::compile(&three, &budget).unwrap_err();
        assert_eq!(err.field, "headers[2].value");
        assert!(err.message.contains("total budget"), "{}", err.message);
    }
}
