//! Every response the sidecar makes itself, instead of the app or an upstream: limits, quotas,
//! gate denials, a full bulkhead, fallbacks, timeouts, no upstream, loops. All of them
//! are built here, so they look alike: the policy's `response` template where the policy has
//! one, otherwise a small JSON body; and always the `bulwark-reason` header, which says that
//! the sidecar answered and why (docs/responses.md lists the reasons). The proxy phases only
//! write the [`Reply`] out.

use std::sync::LazyLock;

use bulwark_api::crd::common::DenyResponse;

use crate::compile::CompileError;

/// The header naming why the sidecar answered itself.
pub const REASON_HEADER: &str = "bulwark-reason";

/// Why the sidecar answered instead of the app or upstream. The header value is the snake-case
/// name; the set only grows (clients and alerts match on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A rate limit refused the request (429 unless the policy says otherwise).
    RateLimited,
    /// A quota is used up (429 unless the policy says otherwise).
    QuotaExhausted,
    /// The request names no destination the sidecar can use (400).
    BadRequest,
    /// The destination is the sidecar's own listener (508).
    LoopDetected,
    /// The upstream's name does not resolve, or no connection could be made (502).
    UpstreamUnreachable,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The upstream failed mid-exchange (502).
    UpstreamError,
    /// The sidecar itself failed (500).
    Internal,
    /// The path held escaped slashes and `--escaped-slashes redirect` sends the client to the
    /// decoded path (307, with `Location`).
    PathRedirect,
    /// The request line and headers exceed `--max-request-header-bytes` (431).
    HeaderTooLarge,
    /// The request header was not complete within `--request-header-timeout` (408).
    HeaderTimeout,
    /// A feature-flag gate did not allow the request's variant (404 unless the gate says
    /// otherwise).
    FlagGated,
    /// No endpoint of the upstream can take the call: every one unhealthy or ejected (503, or
    /// the upstream's `fallback`).
    NoHealthyUpstream,
    /// The upstream's circuit breaker is open (503, or the upstream's `fallback`).
    CircuitOpen,
    /// The upstream's bulkhead is full: too many calls in flight and queued (503).
    BulkheadFull,
}

impl Reason {
    /// Every reason (metrics resolve one series per reason up front).
    pub const ALL: [Reason; 15] = [
        Self::RateLimited,
        Self::QuotaExhausted,
        Self::BadRequest,
        Self::LoopDetected,
        Self::UpstreamUnreachable,
        Self::UpstreamTimeout,
        Self::UpstreamError,
        Self::Internal,
        Self::PathRedirect,
        Self::HeaderTooLarge,
        Self::HeaderTimeout,
        Self::FlagGated,
        Self::NoHealthyUpstream,
        Self::CircuitOpen,
        Self::BulkheadFull,
    ];

    /// Its position in [`Reason::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::QuotaExhausted => "quota_exhausted",
            Self::BadRequest => "bad_request",
            Self::LoopDetected => "loop_detected",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamError => "upstream_error",
            Self::Internal => "internal_error",
            Self::PathRedirect => "path_redirect",
            Self::HeaderTooLarge => "request_header_too_large",
            Self::HeaderTimeout => "request_header_timeout",
            Self::FlagGated => "flag_gated",
            Self::NoHealthyUpstream => "no_healthy_upstream",
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
        }
    }

    /// The status used when no policy template says otherwise.
    pub const fn status(self) -> u16 {
        match self {
            Self::RateLimited | Self::QuotaExhausted => 429,
            Self::BadRequest => 400,
            Self::LoopDetected => 508,
            Self::UpstreamUnreachable | Self::UpstreamError => 502,
            Self::UpstreamTimeout => 504,
            Self::Internal => 500,
            Self::PathRedirect => 307,
            Self::HeaderTooLarge => 431,
            Self::HeaderTimeout => 408,
            Self::FlagGated => 404,
            Self::NoHealthyUpstream | Self::CircuitOpen | Self::BulkheadFull => 503,
        }
    }

    /// The default body's message: what happened, for a person reading it.
    pub const fn message(self) -> &'static str {
        match self {
            Self::RateLimited => "Too many requests: a rate limit applies. Retry later.",
            Self::QuotaExhausted => "The quota for this client is used up.",
            Self::BadRequest => "The request cannot be forwarded.",
            Self::LoopDetected => "The request would loop through the sidecar.",
            Self::UpstreamUnreachable => "The upstream could not be reached.",
            Self::UpstreamTimeout => "The upstream did not answer in time.",
            Self::UpstreamError => "The upstream failed while answering.",
            Self::Internal => "The sidecar failed to handle the request.",
            Self::PathRedirect => "The path holds escaped slashes: follow Location.",
            Self::HeaderTooLarge => "The request header is larger than the sidecar accepts.",
            Self::HeaderTimeout => "The request header did not arrive in time.",
            Self::FlagGated => "Not found.",
            Self::NoHealthyUpstream => "No endpoint of the upstream is available.",
            Self::CircuitOpen => "The upstream is failing: calls are paused (circuit open).",
            Self::BulkheadFull => "Too many calls to the upstream are in flight.",
        }
    }
}

/// A response the sidecar writes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub reason: Reason,
    pub status: u16,
    /// In order; `Content-Type` and `bulwark-reason` included.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// The default reply for `reason`: its status and a JSON body (`reason`, `message`, and a
    /// `detail` when one is given, for the caller: never a secret).
    pub fn new(reason: Reason, detail: Option<&str>) -> Self {
        let body = match detail {
            None => DEFAULT_BODIES[reason.index()].clone(),
            Some(_) => json_body(reason, detail),
        };
        Self::assemble(reason, reason.status(), Vec::with_capacity(2), body, JSON)
    }

    /// A reply with `headers` first, then `Content-Type` and `bulwark-reason`.
    fn assemble(
        reason: Reason,
        status: u16,
        mut headers: Vec<(String, String)>,
        body: String,
        content_type: &str,
    ) -> Self {
        headers.push(("Content-Type".into(), content_type.into()));
        headers.push((REASON_HEADER.into(), reason.as_str().into()));
        Self {
            reason,
            status,
            headers,
            body,
        }
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

const JSON: &str = "application/json";

fn json_body(reason: Reason, detail: Option<&str>) -> String {
    let mut body = serde_json::json!({
        "reason": reason.as_str(),
        "message": reason.message(),
    });
    if let Some(detail) = detail {
        body["detail"] = detail.into();
    }
    body.to_string()
}

/// Each reason's default body, serialised once: refusals under load copy it, nothing more.
static DEFAULT_BODIES: LazyLock<[String; Reason::ALL.len()]> =
    LazyLock::new(|| Reason::ALL.map(|reason| json_body(reason, None)));
const TEXT: &str = "text/plain; charset=utf-8";

/// A policy's compiled `response`: what every refusal of the policy is built from.
#[derive(Clone, Debug)]
pub struct DenyTemplate {
    status: u16,
    headers: Vec<(String, String)>,
    /// The policy's own body and its content type; `None`: the JSON default.
    body: Option<(String, String)>,
}

impl DenyTemplate {
    /// Checks header names and values; errors name the field under `response`.
    pub fn compile(deny: Option<&DenyResponse>, default_status: u16) -> Result<Self, CompileError> {
        let mut headers = Vec::new();
        for (i, h) in deny
            .map(|d| d.headers.as_slice())
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            http::HeaderName::try_from(h.name.as_str()).map_err(|_| {
                CompileError::new(
                    format!("response.headers[{i}].name"),
                    "not a valid header name",
                )
            })?;
            http::HeaderValue::try_from(h.value.as_str()).map_err(|_| {
                CompileError::new(
                    format!("response.headers[{i}].value"),
                    "not a valid header value",
                )
            })?;
            headers.push((h.name.clone(), h.value.clone()));
        }
        let body = deny.and_then(|d| {
            let content_type = d.content_type.clone();
            match (d.body.clone(), content_type) {
                (Some(body), content_type) => Some((body, content_type.unwrap_or(TEXT.into()))),
                // A content type alone: an empty body of that type, as before.
                (None, Some(content_type)) => Some((String::new(), content_type)),
                (None, None) => None,
            }
        });
        Ok(Self {
            status: deny.and_then(|d| d.status_code).unwrap_or(default_status),
            headers,
            body,
        })
    }

    /// The refusal for `reason`: `headers` (the policy's own, e.g. `Retry-After`), then
    /// `Content-Type`, `bulwark-reason` and the configured extra headers.
    pub fn reply(&self, reason: Reason, headers: Vec<(String, String)>) -> Reply {
        let (body, content_type) = match &self.body {
            Some((body, content_type)) => (body.clone(), content_type.as_str()),
            None => (DEFAULT_BODIES[reason.index()].clone(), JSON),
        };
        let mut reply = Reply::assemble(reason, self.status, headers, body, content_type);
        reply.headers.extend(self.headers.iter().cloned());
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_template_the_reply_is_json_with_the_reason() {
        let t = DenyTemplate::compile(None, 429).unwrap();
        let r = t.reply(
            Reason::RateLimited,
            vec![("Retry-After".into(), "5".into())],
        );
        assert_eq!(r.status, 429);
        assert_eq!(
            r.headers,
            vec![
                ("Retry-After".to_owned(), "5".to_owned()),
                ("Content-Type".to_owned(), "application/json".to_owned()),
                ("bulwark-reason".to_owned(), "rate_limited".to_owned()),
            ]
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["reason"], "rate_limited");
        assert!(body["message"].as_str().unwrap().contains("rate limit"));
        // A status alone keeps the JSON body.
        let deny: DenyResponse = serde_yaml::from_str("{statusCode: 503}").unwrap();
        let r = DenyTemplate::compile(Some(&deny), 429)
            .unwrap()
            .reply(Reason::QuotaExhausted, vec![]);
        assert_eq!((r.status, r.header("content-type")), (503, Some(JSON)));
        assert!(r.body.contains("\"quota_exhausted\""), "{}", r.body);
    }

    #[test]
    fn a_template_gives_status_body_and_headers_and_bad_headers_name_the_field() {
        let deny: DenyResponse =
            serde_yaml::from_str("{statusCode: 403, headers: [{name: 'bad name', value: x}]}")
                .unwrap();
        let err = DenyTemplate::compile(Some(&deny), 429).unwrap_err();
        assert_eq!(err.field, "response.headers[0].name");
        let deny: DenyResponse =
            serde_yaml::from_str("{statusCode: 403, body: no, headers: [{name: X-A, value: b}]}")
                .unwrap();
        let r = DenyTemplate::compile(Some(&deny), 429).unwrap().reply(
            Reason::RateLimited,
            vec![("Retry-After".into(), "5".into())],
        );
        assert_eq!(r.status, 403);
        assert_eq!(r.body, "no");
        assert_eq!(
            r.headers,
            vec![
                ("Retry-After".to_owned(), "5".to_owned()),
                (
                    "Content-Type".to_owned(),
                    "text/plain; charset=utf-8".to_owned()
                ),
                ("bulwark-reason".to_owned(), "rate_limited".to_owned()),
                ("X-A".to_owned(), "b".to_owned()),
            ]
        );
    }

    #[test]
    fn each_reason_has_its_own_header_value_and_status() {
        let all = Reason::ALL;
        let names: std::collections::BTreeSet<_> = all.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), all.len());
        for (i, reason) in all.into_iter().enumerate() {
            assert_eq!(reason.index(), i, "ALL is in declaration order");
            let reply = Reply::new(reason, Some("why"));
            assert_eq!(reply.header(REASON_HEADER), Some(reason.as_str()));
            assert_eq!(reply.status, reason.status());
            let body: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            assert_eq!(
                (body["reason"].as_str(), body["detail"].as_str()),
                (Some(reason.as_str()), Some("why"))
            );
        }
    }
}
