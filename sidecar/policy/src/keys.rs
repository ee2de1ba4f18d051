//! Counter keys: the compiled form of a rule's `key: [KeySource]`.
//!
//! A key is the values of its parts, in order, joined by [`SEPARATOR`] (U+001F, the ASCII unit
//! separator). A part the request lacks (no such header, cookie, claim, ...) contributes `""`, so
//! the request is still counted, under the empty value. Override values are joined the same way
//! by [`join_values`], so an override applies exactly when its string equals the request's key.
//!
//! Part values:
//!
//! - `ClientIP`: the peer address in canonical text (RFC 5952 for IPv6); an IPv4-mapped IPv6
//!   address is shown as IPv4 (`::ffff:10.0.0.1` → `10.0.0.1`).
//! - `Header`: the first value of the header, if it is UTF-8 (otherwise `""`).
//! - `QueryParam`: the first value of the parameter, decoded as in matching (`%XX`, `+` as a
//!   space; see [`crate::matching`]).
//! - `Cookie`: the first cookie of that exact (case-sensitive) name in the `Cookie` header(s)
//!   (`a=1; b=2`), its value as sent (not unquoted, not decoded).
//! - `Path`: the request path as sent, without the query.
//! - `JWTClaim`: a claim of the bearer token (below).
//! - `Constant`: `""`. An override of a key with a `Constant` part lists `""` for that part.
//!
//! **JWT claims.** The token and whether its claims are verified are the policy's
//! ([`crate::jwt::TokenClaims`]). A claim `name` is first looked up as a top-level member of
//! exactly that name (so `https://example.com/tenant` works); failing that, dots address nested
//! members (`org.id`), and a segment that is a number indexes an array (`groups.0`). Strings
//! are used as they are, numbers and booleans as JSON text (`42`, `true`), arrays and objects
//! as compact JSON, and `null` like a missing claim (`""`). A request without usable claims (no
//! token, a malformed one, or one that fails verification) gives `""` for every claim part.
//! The token is read at most once per key, however many claim parts there are.
//!
//! **Separator escaping.** For keys to be unambiguous, no value may contain the separator: then
//! distinct tuples of values always give distinct keys (`("a\u{1f}b", "c")` and
//! `("a", "b\u{1f}c")` would otherwise collide and share a counter, which a client could use to
//! charge someone else's counter). Header values cannot contain U+001F (HTTP forbids control
//! characters there), but decoded query parameters, cookies and claims can, so each U+001F in a
//! value is replaced by U+FFFD. This merges only values that differ by U+001F versus U+FFFD,
//! which no well-behaved client sends; it never lets one tuple pass for a tuple with different
//! boundaries.

use std::fmt::Write as _;
use std::net::IpAddr;

use std::sync::Arc;

use bulwark_api::crd::common::{KeySource, KeySourceType};
use http::{HeaderMap, HeaderName, header::COOKIE};
use serde_json::{Map, Value};

use crate::compile::CompileError;
use crate::jwt::{Claims, TokenClaims};
use crate::matching::{header_str, percent_decode, query_param};
use crate::request::RequestView;

/// Joins the parts of a key.
pub const SEPARATOR: char = '\u{1f}';

/// What a [`SEPARATOR`] inside a value is replaced by.
const REPLACEMENT: char = '\u{fffd}';

/// Builds counter keys from requests.
#[derive(Clone, Debug)]
pub struct KeyBuilder {
    parts: Vec<Part>,
    /// The policy's token source, if any part is a claim.
    claims: Option<Arc<TokenClaims>>,
}

impl KeyBuilder {
    /// The headers the key reads (a claim part reads the token's header).
    pub fn headers_read(&self) -> impl Iterator<Item = &HeaderName> {
        let parts = self.parts.iter().filter_map(|part| match part {
            Part::Header(name) => Some(name),
            _ => None,
        });
        parts.chain(self.claims.as_deref().map(TokenClaims::header))
    }
}

#[derive(Clone, Debug)]
enum Part {
    ClientIp,
    Header(HeaderName),
    QueryParam(String),
    Cookie(String),
    Path,
    Claim(ClaimPath),
    Constant,
}

#[derive(Clone, Debug)]
struct ClaimPath {
    /// The name as written, tried first as a top-level member.
    name: String,
    /// The dot-separated segments, if the name has a dot.
    segments: Option<Vec<String>>,
}

impl KeyBuilder {
    /// From a rule's `key` list and the policy's token source. Errors name the field
    /// (`key[1].name`).
    pub fn compile(parts: &[KeySource], claims: &Arc<TokenClaims>) -> Result<Self, CompileError> {
        let parts = parts
            .iter()
            .enumerate()
            .map(|(i, p)| compile_part(p).map_err(|e| e.under(&format!("key[{i}]"))))
            .collect::<Result<Vec<_>, _>>()?;
        let claims = parts
            .iter()
            .any(|p| matches!(p, Part::Claim(_)))
            .then(|| claims.clone());
        Ok(Self { parts, claims })
    }

    /// Appends the request's key to `out`: each part's value, joined by the separator '\u{1f}'
    /// (unit separator, which cannot appear in header values); a missing part contributes "".
    pub fn write_key(&self, req: &RequestView<'_>, out: &mut String) {
        // Decoded on first use, at most once.
        let mut claims: Option<Option<Claims>> = None;
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push(SEPARATOR);
            }
            match part {
                Part::ClientIp => {
                    if let Some(ip) = req.client_ip {
                        push_ip(out, ip.to_canonical());
                    }
                }
                Part::Header(name) => {
                    if let Some(v) = req.headers.get(name).and_then(header_str) {
                        push_escaped(out, v);
                    }
                }
                Part::QueryParam(name) => {
                    if let Some(raw) = req.query.and_then(|q| query_param(q, name)) {
                        push_escaped(out, &percent_decode(raw));
                    }
                }
                Part::Cookie(name) => {
                    if let Some(v) = cookie(req.headers, name) {
                        push_escaped(out, v);
                    }
                }
                Part::Path => push_escaped(out, req.path),
                Part::Claim(path) => {
                    let claims = claims.get_or_insert_with(|| {
                        self.claims.as_ref().and_then(|c| c.claims(req.headers))
                    });
                    if let Some(v) = claims.as_ref().and_then(|c| path.lookup(c)) {
                        push_claim(out, v);
                    }
                }
                Part::Constant => {}
            }
        }
    }

    /// Whether every request gets the same key: no parts, or only `Constant` parts.
    pub fn is_constant(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Constant))
    }

    /// The number of parts.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether there are no parts (one key for every request).
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// The key an override's `values` name, written as [`write_key`](Self::write_key) would
    /// write the request's: a `ClientIP` value is put in canonical form (`::ffff:1.2.3.4` is
    /// `1.2.3.4`, `2001:DB8::1` is `2001:db8::1`), so an override matches however it was spelled.
    pub fn override_key(&self, values: &[String]) -> String {
        let canonical: Vec<String> = values
            .iter()
            .zip(self.parts.iter().map(Some).chain(std::iter::repeat(None)))
            .map(
                |(value, part)| match (part, value.parse::<std::net::IpAddr>()) {
                    (Some(Part::ClientIp), Ok(ip)) => ip.to_canonical().to_string(),
                    _ => value.clone(),
                },
            )
            .collect();
        join_values(&canonical)
    }
}

/// Joins override values exactly as write_key joins request parts, so overrides compare by
/// string equality.
pub fn join_values(values: &[String]) -> String {
    let mut out = String::with_capacity(values.iter().map(|v| v.len() + 1).sum());
    for (i, v) in values.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        push_escaped(&mut out, v);
    }
    out
}

fn compile_part(p: &KeySource) -> Result<Part, CompileError> {
    let named = matches!(
        p.type_,
        KeySourceType::Header
            | KeySourceType::QueryParam
            | KeySourceType::Cookie
            | KeySourceType::JWTClaim
    );
    let name = match (named, p.name.as_deref()) {
        (true, None | Some("")) => {
            return Err(CompileError::new(
                "name",
                format!("required for type {:?}", p.type_),
            ));
        }
        (false, Some(_)) => {
            return Err(CompileError::new(
                "name",
                format!("not allowed for type {:?}", p.type_),
            ));
        }
        (_, name) => name.unwrap_or_default(),
    };
    Ok(match p.type_ {
        KeySourceType::ClientIP => Part::ClientIp,
        KeySourceType::Header => {
            Part::Header(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                CompileError::new("name", format!("{name:?} is not a valid header name"))
            })?)
        }
        KeySourceType::QueryParam => Part::QueryParam(name.to_owned()),
        KeySourceType::Cookie => Part::Cookie(name.to_owned()),
        KeySourceType::Path => Part::Path,
        KeySourceType::JWTClaim => Part::Claim(ClaimPath {
            name: name.to_owned(),
            segments: name
                .contains('.')
                .then(|| name.split('.').map(str::to_owned).collect()),
        }),
        KeySourceType::Constant => Part::Constant,
    })
}

/// Appends `ip` as `Display` writes it. IPv4, the common case, is written digit by digit into
/// a stack buffer: the formatter's machinery was a sixth of a whole local decision.
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            let mut put = |byte: u8| {
                buf[len] = byte;
                len += 1;
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + octet / 10 % 10);
                }
                put(b'0' + octet % 10);
            }
            out.push_str(std::str::from_utf8(&buf[..len]).unwrap_or_default());
        }
        IpAddr::V6(_) => {
            let _ = write!(out, "{ip}");
        }
    }
}

/// Appends `value`, with every separator replaced (see the module doc).
fn push_escaped(out: &mut String, value: &str) {
    if value.contains(SEPARATOR) {
        out.extend(
            value
                .chars()
                .map(|c| if c == SEPARATOR { REPLACEMENT } else { c }),
        );
    } else {
        out.push_str(value);
    }
}

/// Appends a claim: strings as they are, `null` as nothing, anything else as compact JSON.
fn push_claim(out: &mut String, v: &Value) {
    match v {
        Value::Null => {}
        Value::String(s) => push_escaped(out, s),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        // serde_json escapes control characters, so compact JSON never holds a raw separator;
        // escaped anyway, so that this does not depend on it.
        other => push_escaped(out, &other.to_string()),
    }
}

impl ClaimPath {
    fn lookup<'v>(&self, claims: &'v Map<String, Value>) -> Option<&'v Value> {
        if let Some(v) = claims.get(&self.name) {
            return Some(v);
        }
        let segments = self.segments.as_ref()?;
        let (first, rest) = segments.split_first()?;
        rest.iter()
            .try_fold(claims.get(first)?, |v, segment| match v {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            })
    }
}

/// The token of an `Authorization: Bearer <token>` value (scheme in any case).
/// The value of the first cookie named exactly `name` in the `Cookie` header(s).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let is_ows = |b: &u8| *b == b' ' || *b == b'\t';
    headers.get_all(COOKIE).iter().find_map(|line| {
        line.as_bytes().split(|b| *b == b';').find_map(|pair| {
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (trim(&pair[..eq], is_ows), trim(&pair[eq + 1..], is_ows));
            // A cookie whose value is not UTF-8 counts as missing.
            (n == name.as_bytes()).then(|| std::str::from_utf8(v).unwrap_or(""))
        })
    })
}

fn trim(mut b: &[u8], ws: impl Fn(&u8) -> bool) -> &[u8] {
    while let [first, rest @ ..] = b
        && ws(first)
    {
        b = rest;
    }
    while let [rest @ .., last] = b
        && ws(last)
    {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::testing::TestRequest;
    use proptest::prelude::*;
    use serde_json::json;

    fn src(type_: KeySourceType, name: Option<&str>) -> KeySource {
        KeySource {
            type_,
            name: name.map(str::to_owned),
        }
    }

    /// A policy without `jwt`: the bearer token of `Authorization`, decoded.
    fn bearer() -> Arc<TokenClaims> {
        Arc::new(crate::jwt::tests::unverified("Authorization"))
    }

    fn builder(parts: &[KeySource]) -> KeyBuilder {
        KeyBuilder::compile(parts, &bearer()).unwrap()
    }

    fn key(b: &KeyBuilder, req: &TestRequest) -> String {
        let mut out = String::new();
        b.write_key(&req.view(), &mut out);
        out
    }

    fn one(type_: KeySourceType, name: Option<&str>, req: &TestRequest) -> String {
        key(&builder(&[src(type_, name)]), req)
    }

    fn claims_payload() -> Value {
        json!({
            "sub": "user-1",
            "org": {"id": "acme", "tier": 3, "nested": {"deep": true}},
            "groups": ["a", "b"],
            "admin": false,
            "n": null,
            "https://example.com/tenant": "t1",
            "weird": "x\u{1f}y",
        })
    }

    fn claim(name: &str, req: &TestRequest) -> String {
        one(KeySourceType::JWTClaim, Some(name), req)
    }

    #[test]
    fn client_ip() {
        let ip = |s: &str| one(KeySourceType::ClientIP, None, &TestRequest::new("/").ip(s));
        assert_eq!(ip("10.0.0.1"), "10.0.0.1");
        assert_eq!(ip("::ffff:10.0.0.1"), "10.0.0.1");
        assert_eq!(ip("2001:DB8:0:0:0:0:0:1"), "2001:db8::1");
        assert_eq!(
            one(KeySourceType::ClientIP, None, &TestRequest::new("/")),
            ""
        );
    }

    #[test]
    fn header_first_value() {
        let h = |req: &TestRequest| one(KeySourceType::Header, Some("X-Api-Key"), req);
        assert_eq!(h(&TestRequest::new("/").header("x-api-key", "k1")), "k1");
        assert_eq!(
            h(&TestRequest::new("/")
                .header("x-api-key", "k1")
                .header("x-api-key", "k2")),
            "k1"
        );
        assert_eq!(
            h(&TestRequest::new("/").header_bytes("x-api-key", "zoë".as_bytes())),
            "zoë"
        );
        assert_eq!(
            h(&TestRequest::new("/").header_bytes("x-api-key", b"zo\xeb")),
            ""
        );
        assert_eq!(h(&TestRequest::new("/")), "");
    }

    #[test]
    fn query_param_decoded_first() {
        let q = |query: &str| {
            one(
                KeySourceType::QueryParam,
                Some("user"),
                &TestRequest::new("/").query(query),
            )
        };
        assert_eq!(q("user=a%20b+c&user=z"), "a b c");
        assert_eq!(q("x=1&user"), "");
        assert_eq!(q("x=1"), "");
        assert_eq!(q("user=%E2%9C%93"), "✓");
        assert_eq!(
            one(
                KeySourceType::QueryParam,
                Some("user"),
                &TestRequest::new("/")
            ),
            ""
        );
    }

    #[test]
    fn cookies() {
        let c = |name: &str, req: &TestRequest| one(KeySourceType::Cookie, Some(name), req);
        let req = TestRequest::new("/").header("cookie", "a=1; session = s1 ;b=x=y;  c=\"q\"");
        assert_eq!(c("a", &req), "1");
        assert_eq!(c("session", &req), "s1");
        assert_eq!(c("b", &req), "x=y");
        assert_eq!(c("c", &req), "\"q\"", "quotes are kept");
        assert_eq!(c("A", &req), "", "names are case-sensitive");
        assert_eq!(c("missing", &req), "");
        let split = TestRequest::new("/")
            .header("cookie", "x=1")
            .header("cookie", "a=2; x=3")
            .header("cookie", "a=4");
        assert_eq!(c("a", &split), "2", "first cookie across headers");
        assert_eq!(c("x", &split), "1");
        assert_eq!(
            c("a", &TestRequest::new("/").header("cookie", "flag; a=")),
            ""
        );
        assert_eq!(c("a", &TestRequest::new("/").header("x-cookie", "a=1")), "");
    }

    #[test]
    fn path_and_constant() {
        assert_eq!(
            one(
                KeySourceType::Path,
                None,
                &TestRequest::new("/api/x").query("q=1")
            ),
            "/api/x"
        );
        assert_eq!(
            one(
                KeySourceType::Constant,
                None,
                &TestRequest::new("/x").ip("1.2.3.4")
            ),
            ""
        );
        let b = builder(&[
            src(KeySourceType::Constant, None),
            src(KeySourceType::Constant, None),
        ]);
        assert!(b.is_constant());
        assert_eq!(b.len(), 2);
        assert_eq!(key(&b, &TestRequest::new("/")), "\u{1f}");
        let empty = builder(&[]);
        assert!(empty.is_constant());
        assert!(empty.is_empty());
        assert_eq!(empty.len(), 0);
        assert_eq!(key(&empty, &TestRequest::new("/").ip("1.2.3.4")), "");
        assert!(
            !builder(&[
                src(KeySourceType::Constant, None),
                src(KeySourceType::Path, None)
            ])
            .is_constant()
        );
    }

    #[test]
    fn jwt_claims_nested_and_rendered() {
        let req = TestRequest::new("/").header(
            "authorization",
            &format!(
                "Bearer {}",
                crate::jwt::tests::unsigned_token(&claims_payload())
            ),
        );
        assert_eq!(claim("sub", &req), "user-1");
        assert_eq!(claim("org.id", &req), "acme");
        assert_eq!(claim("org.tier", &req), "3");
        assert_eq!(claim("org.nested.deep", &req), "true");
        assert_eq!(claim("org.nested", &req), r#"{"deep":true}"#);
        assert_eq!(claim("groups", &req), r#"["a","b"]"#);
        assert_eq!(claim("groups.1", &req), "b");
        assert_eq!(claim("groups.2", &req), "");
        assert_eq!(claim("admin", &req), "false");
        assert_eq!(claim("n", &req), "", "null is like missing");
        assert_eq!(claim("missing", &req), "");
        assert_eq!(claim("org.missing", &req), "");
        assert_eq!(claim("sub.x", &req), "");
        assert_eq!(
            claim("https://example.com/tenant", &req),
            "t1",
            "a literal dotted name"
        );
        assert_eq!(claim("weird", &req), "x\u{fffd}y");
    }

    #[test]
    fn several_parts_and_missing_parts() {
        let b = builder(&[
            src(KeySourceType::Header, Some("x-tenant")),
            src(KeySourceType::JWTClaim, Some("sub")),
            src(KeySourceType::ClientIP, None),
            src(KeySourceType::JWTClaim, Some("org.id")),
        ]);
        assert_eq!(b.len(), 4);
        assert!(!b.is_constant());
        let full = TestRequest::new("/")
            .header("x-tenant", "t")
            .header(
                "authorization",
                &format!(
                    "Bearer {}",
                    crate::jwt::tests::unsigned_token(&claims_payload())
                ),
            )
            .ip("192.0.2.9");
        assert_eq!(key(&b, &full), "t\u{1f}user-1\u{1f}192.0.2.9\u{1f}acme");
        assert_eq!(key(&b, &TestRequest::new("/")), "\u{1f}\u{1f}\u{1f}");
        assert_eq!(
            key(&b, &TestRequest::new("/").ip("192.0.2.9")),
            "\u{1f}\u{1f}192.0.2.9\u{1f}"
        );
        // write_key appends.
        let mut out = "prefix:".to_owned();
        b.write_key(&full.view(), &mut out);
        assert_eq!(out, "prefix:t\u{1f}user-1\u{1f}192.0.2.9\u{1f}acme");
        assert_eq!(
            join_values(&[
                "t".into(),
                "user-1".into(),
                "192.0.2.9".into(),
                "acme".into()
            ]),
            key(&b, &full)
        );
    }

    #[test]
    fn separator_in_values_is_replaced() {
        let b = builder(&[
            src(KeySourceType::QueryParam, Some("a")),
            src(KeySourceType::QueryParam, Some("b")),
        ]);
        let k1 = key(&b, &TestRequest::new("/").query("a=x%1Fy&b=z"));
        let k2 = key(&b, &TestRequest::new("/").query("a=x&b=y%1Fz"));
        assert_eq!(k1, "x\u{fffd}y\u{1f}z");
        assert_eq!(k2, "x\u{1f}y\u{fffd}z");
        assert_ne!(k1, k2);
        assert_eq!(join_values(&["x\u{1f}y".into(), "z".into()]), k1);
        let c = one(
            KeySourceType::Cookie,
            Some("c"),
            &TestRequest::new("/").header("cookie", "c=%1F"),
        );
        assert_eq!(c, "%1F", "cookies are not decoded");
    }

    #[test]
    fn join_values_matches_write_key() {
        assert_eq!(join_values(&[]), "");
        assert_eq!(join_values(&["".into()]), "");
        assert_eq!(join_values(&["a".into(), "".into()]), "a\u{1f}");
        let b = builder(&[
            src(KeySourceType::Header, Some("x-api-key")),
            src(KeySourceType::Constant, None),
            src(KeySourceType::Cookie, Some("plan")),
            src(KeySourceType::Path, None),
        ]);
        let req = TestRequest::new("/v1")
            .header("x-api-key", "premium")
            .header("cookie", "plan=gold");
        assert_eq!(
            key(&b, &req),
            join_values(&["premium".into(), "".into(), "gold".into(), "/v1".into()])
        );
    }

    #[test]
    fn compile_errors_name_the_field() {
        let err = |parts: &[KeySource]| KeyBuilder::compile(parts, &bearer()).unwrap_err();
        let e = err(&[
            src(KeySourceType::Path, None),
            src(KeySourceType::Header, None),
        ]);
        assert_eq!(e.field, "key[1].name");
        let e = err(&[src(KeySourceType::Cookie, Some(""))]);
        assert_eq!(e.field, "key[0].name");
        let e = err(&[src(KeySourceType::QueryParam, None)]);
        assert_eq!(e.field, "key[0].name");
        let e = err(&[src(KeySourceType::JWTClaim, None)]);
        assert_eq!(e.field, "key[0].name");
        let e = err(&[
            src(KeySourceType::ClientIP, None),
            src(KeySourceType::Constant, None),
            src(KeySourceType::ClientIP, Some("x")),
        ]);
        assert_eq!(e.field, "key[2].name");
        assert!(e.message.contains("not allowed"), "{}", e.message);
        let e = err(&[src(KeySourceType::Header, Some("bad header"))]);
        assert_eq!(e.field, "key[0].name");
        assert_eq!(e.under("rules[1]").field, "rules[1].key[0].name");
    }

    /// Percent-encodes every byte, so any string survives as a query parameter value.
    fn encode_all(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    /// A builder of `n` query parameter parts `p0..pn` and a request carrying `values`.
    fn query_key(values: &[String]) -> String {
        let parts: Vec<_> = (0..values.len())
            .map(|i| src(KeySourceType::QueryParam, Some(&format!("p{i}"))))
            .collect();
        let query: Vec<_> = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("p{i}={}", encode_all(v)))
            .collect();
        key(
            &builder(&parts),
            &TestRequest::new("/").query(&query.join("&")),
        )
    }

    fn value() -> impl Strategy<Value = String> {
        // Small alphabet with the separator's neighbours, so collisions would be likely.
        prop::collection::vec(
            prop::sample::select(vec![
                'a', 'b', ' ', '=', '&', '%', '+', '\u{1e}', '.', '\u{fffd}', 'é',
            ]),
            0..4,
        )
        .prop_map(|c| c.into_iter().collect())
    }

    fn tuple(n: usize) -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(value(), n)
    }

    proptest! {
        #[test]
        fn distinct_tuples_give_distinct_keys(
            (a, b) in (1usize..=4).prop_flat_map(|n| (tuple(n), tuple(n)))
        ) {
            let (ka, kb) = (query_key(&a), query_key(&b));
            prop_assert_eq!(&ka, &join_values(&a));
            prop_assert_eq!(&kb, &join_values(&b));
            prop_assert_eq!(a == b, ka == kb);
        }

        #[test]
        fn client_ips_are_written_as_display_writes_them(v4 in any::<[u8; 4]>(), v6 in any::<[u16; 8]>()) {
            for ip in [IpAddr::from(v4), IpAddr::from(v6)] {
                let mut out = String::new();
                push_ip(&mut out, ip);
                prop_assert_eq!(out, ip.to_string());
            }
        }

        #[test]
        fn keys_split_back_into_escaped_values(values in prop::collection::vec(".*", 1..=4)) {
            let k = query_key(&values);
            prop_assert_eq!(&k, &join_values(&values));
            let split: Vec<&str> = k.split(SEPARATOR).collect();
            let escaped: Vec<String> = values.iter().map(|v| v.replace(SEPARATOR, "\u{fffd}")).collect();
            prop_assert_eq!(split, escaped);
        }
    }
}
