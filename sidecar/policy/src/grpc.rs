//! The sidecar's own answers in gRPC's terms. A gRPC client reads a call's outcome from the
//! `grpc-status` trailer, not the HTTP status: a 429 with a JSON body reached grpcio as
//! `UNAVAILABLE: Received http2 header with status: 429`. So to a gRPC request (see
//! [`is_grpc_content_type`]) every [`Reply`] is sent as a *trailers-only* response: HTTP 200,
//! `content-type: application/grpc`, `grpc-status` and `grpc-message`, and the reply's other
//! headers (`RateLimit`, `Retry-After`, `bulwark-reason`) as metadata, which clients expose.

use std::time::Duration;

use crate::respond::{REASON_HEADER, Reason, Reply};

/// gRPC status codes the sidecar answers with or retries on (grpc/doc/statuscodes.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Cancelled = 1,
    Unknown = 2,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    Unauthenticated = 16,
}

/// Whether a `content-type` is gRPC's (`application/grpc`, `application/grpc+proto`, …).
pub fn is_grpc_content_type(value: &[u8]) -> bool {
    value.starts_with(b"application/grpc")
}

/// `grpc-timeout`'s units, finest first, each with its length.
const TIMEOUT_UNITS: [(u8, Duration); 6] = [
    (b'n', Duration::from_nanos(1)),
    (b'u', Duration::from_micros(1)),
    (b'm', Duration::from_millis(1)),
    (b'S', Duration::from_secs(1)),
    (b'M', Duration::from_secs(60)),
    (b'H', Duration::from_secs(3600)),
];

/// The most digits a `grpc-timeout` value has.
const TIMEOUT_MAX: u32 = 99_999_999;

/// The call's deadline from its `grpc-timeout` header: 1 to 8 digits and a unit (`H`, `M`,
/// `S`, `m`, `u`, `n`). `None` for anything else: a malformed timeout is ignored, as if absent.
pub fn timeout(value: &[u8]) -> Option<Duration> {
    let (unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u32 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let (_, length) = TIMEOUT_UNITS.iter().find(|(u, _)| u == unit)?;
    Some(*length * n)
}

/// `remaining` as a `grpc-timeout` value: the finest unit whose count fits gRPC's 8 digits,
/// rounded down (a deadline passed on is never later than the caller's), and at least `1n`.
pub fn timeout_value(remaining: Duration) -> String {
    let nanos = remaining.as_nanos().max(1);
    for (unit, length) in TIMEOUT_UNITS {
        let count = nanos / length.as_nanos();
        if count <= u128::from(TIMEOUT_MAX) {
            return format!("{count}{}", char::from(unit));
        }
    }
    format!("{TIMEOUT_MAX}H")
}

/// A `grpc-status` header's code (0 to 16, as digits); `None` if it is anything else.
pub fn status_code(value: &[u8]) -> Option<u8> {
    std::str::from_utf8(value)
        .ok()?
        .parse()
        .ok()
        .filter(|c| *c <= 16)
}

/// The HTTP status a gRPC code counts as where the sidecar judges answers by HTTP status
/// (outlier detection, the breaker): Envoy's `Grpc::Utility::grpcToHttpStatus`, so `UNAVAILABLE`
/// is a 503 (a gateway error), `INTERNAL` and `UNKNOWN` 500, `RESOURCE_EXHAUSTED` 429.
pub fn http_equivalent(code: u8) -> u16 {
    match code {
        0 => 200,
        1 => 499,
        3 | 9 | 11 => 400,
        4 => 504,
        5 => 404,
        6 | 10 => 409,
        7 => 403,
        8 => 429,
        12 => 501,
        14 => 503,
        16 => 401,
        _ => 500, // UNKNOWN, INTERNAL, DATA_LOSS, and codes gRPC does not define
    }
}

/// Counts the gRPC messages in a body as it streams by, chunk by chunk: each message is a
/// 5-byte prefix (a flags byte and a big-endian length) and that many bytes, and chunks split
/// prefixes and messages anywhere. gRPC-Web's trailers frame (flag `0x80`) is not a message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounter {
    /// Messages whose prefix has been seen.
    pub messages: u64,
    prefix: [u8; 5],
    /// Bytes of the current prefix seen (5: reading the message itself).
    prefix_seen: u8,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl MessageCounter {
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            if self.prefix_seen < 5 {
                let take = chunk.len().min(usize::from(5 - self.prefix_seen));
                let at = usize::from(self.prefix_seen);
                self.prefix[at..at + take].copy_from_slice(&chunk[..take]);
                self.prefix_seen += take as u8;
                chunk = &chunk[take..];
                if self.prefix_seen == 5 {
                    if self.prefix[0] & 0x80 == 0 {
                        self.messages += 1;
                    }
                    let length = [
                        self.prefix[1],
                        self.prefix[2],
                        self.prefix[3],
                        self.prefix[4],
                    ];
                    self.remaining = u64::from(u32::from_be_bytes(length));
                    if self.remaining == 0 {
                        self.prefix_seen = 0;
                    }
                }
            } else {
                let take = chunk
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= take as u64;
                chunk = &chunk[take..];
                if self.remaining == 0 {
                    self.prefix_seen = 0;
                }
            }
        }
    }
}

/// The code for why the sidecar answered: limits and quotas are `RESOURCE_EXHAUSTED` (the
/// client may retry later; Envoy's rate limit filter answers the same), an upstream that
/// cannot take the call `UNAVAILABLE` (safe to retry), a timeout `DEADLINE_EXCEEDED`. A gate's
/// status follows gRPC's HTTP mapping (404 is `UNIMPLEMENTED`, 403 `PERMISSION_DENIED`).
pub fn code(reply: &Reply) -> Code {
    match reply.reason {
        Reason::RateLimited | Reason::QuotaExhausted => Code::ResourceExhausted,
        Reason::UpstreamUnreachable
        | Reason::UpstreamError
        | Reason::NoHealthyUpstream
        | Reason::CircuitOpen
        | Reason::BulkheadFull => Code::Unavailable,
        Reason::UpstreamTimeout => Code::DeadlineExceeded,
        Reason::FlagGated => from_http(reply.status),
        Reason::BadRequest
        | Reason::LoopDetected
        | Reason::Internal
        | Reason::PathRedirect
        | Reason::HeaderTooLarge
        | Reason::HeaderTimeout => Code::Internal,
    }
}

/// gRPC's mapping of an HTTP status (grpc/doc/http-grpc-status-mapping.md).
fn from_http(status: u16) -> Code {
    match status {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

/// The headers of the trailers-only response for `reply`, in order: `content-type` (the
/// call's own: `application/grpc`, or gRPC-Web's as the client sent it), `grpc-status`,
/// `grpc-message`, then the reply's own headers but its `Content-Type`.
pub fn trailers_only(reply: &Reply, message: &str, content_type: &str) -> Vec<(String, String)> {
    let mut headers = vec![("content-type".to_owned(), content_type.to_owned())];
    headers.extend(status(reply, message));
    headers.extend(
        reply
            .headers
            .iter()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("content-type"))
            .cloned(),
    );
    headers
}

/// The trailers that end a call the upstream began answering and then failed (its response
/// header is already sent): `grpc-status`, `grpc-message` and `bulwark-reason`. Without them
/// the client saw a reset, `CANCELLED`, which it does not retry.
pub fn failure_trailers(reply: &Reply, message: &str) -> Vec<(String, String)> {
    let mut trailers: Vec<_> = status(reply, message).into();
    trailers.push((REASON_HEADER.to_owned(), reply.reason.as_str().to_owned()));
    trailers
}

fn status(reply: &Reply, message: &str) -> [(String, String); 2] {
    [
        ("grpc-status".to_owned(), (code(reply) as u8).to_string()),
        ("grpc-message".to_owned(), percent_encode(message)),
    ]
}

/// `grpc-message` is percent-encoded: bytes outside printable ASCII, and `%` itself.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_codes_clients_retry_on() {
        let reply = |reason| Reply::new(reason, None);
        assert_eq!(code(&reply(Reason::RateLimited)), Code::ResourceExhausted);
        assert_eq!(
            code(&reply(Reason::QuotaExhausted)),
            Code::ResourceExhausted
        );
        assert_eq!(code(&reply(Reason::BulkheadFull)), Code::Unavailable);
        assert_eq!(
            code(&reply(Reason::UpstreamTimeout)),
            Code::DeadlineExceeded
        );
        let mut gated = reply(Reason::FlagGated);
        assert_eq!(code(&gated), Code::Unimplemented);
        gated.status = 403;
        assert_eq!(code(&gated), Code::PermissionDenied);
    }

    #[test]
    fn the_trailers_only_answer_carries_the_replys_headers_as_metadata() {
        let mut reply = Reply::new(Reason::RateLimited, None);
        reply.headers.insert(0, ("Retry-After".into(), "2".into()));
        let headers = trailers_only(&reply, "rate limited: 100% used ✓", "application/grpc");
        let get = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("content-type"), Some("application/grpc"));
        assert_eq!(get("grpc-status"), Some("8"));
        assert_eq!(
            get("grpc-message"),
            Some("rate limited: 100%25 used %E2%9C%93")
        );
        assert_eq!(get("retry-after"), Some("2"));
        assert_eq!(get("bulwark-reason"), Some("rate_limited"));
        let content_types = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .count();
        assert_eq!(content_types, 1);
    }

    #[test]
    fn a_call_failed_mid_stream_ends_unavailable_with_the_reason() {
        let failure = Reply::new(Reason::UpstreamError, None);
        assert_eq!(
            failure_trailers(&failure, "mid-call"),
            [
                ("grpc-status".to_owned(), "14".to_owned()),
                ("grpc-message".to_owned(), "mid-call".to_owned()),
                ("bulwark-reason".to_owned(), "upstream_error".to_owned()),
            ]
        );
    }

    #[test]
    fn grpc_timeouts_parse_in_every_unit_and_malformed_ones_are_ignored() {
        assert_eq!(timeout(b"499m"), Some(Duration::from_millis(499)));
        assert_eq!(timeout(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(timeout(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(
            timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [
            &b""[..],
            b"m",
            b"100",
            b"123456789m",
            b"1.5S",
            b"-1S",
            b"10s",
            b" 1S",
        ] {
            assert_eq!(timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn grpc_statuses_count_as_envoys_http_equivalents() {
        assert_eq!(status_code(b"14"), Some(14));
        assert_eq!(status_code(b"0"), Some(0));
        assert_eq!(status_code(b"17"), None);
        assert_eq!(status_code(b"x"), None);
        assert_eq!(http_equivalent(0), 200);
        assert_eq!(http_equivalent(Code::Unavailable as u8), 503);
        assert_eq!(http_equivalent(Code::DeadlineExceeded as u8), 504);
        assert_eq!(http_equivalent(Code::ResourceExhausted as u8), 429);
        assert_eq!(http_equivalent(Code::Internal as u8), 500);
        assert_eq!(http_equivalent(15), 500); // DATA_LOSS
        assert_eq!(http_equivalent(5), 404); // NOT_FOUND
    }

    /// `messages` framed as gRPC's length-prefixed messages.
    fn framed(messages: &[usize]) -> Vec<u8> {
        let mut body = Vec::new();
        for &len in messages {
            body.push(0);
            body.extend_from_slice(&(len as u32).to_be_bytes());
            body.extend(std::iter::repeat_n(7u8, len));
        }
        body
    }

    #[test]
    fn messages_are_counted_whole_in_one_chunk() {
        let mut counter = MessageCounter::default();
        counter.feed(&framed(&[0, 3, 70_000, 1]));
        assert_eq!(counter.messages, 4);
        counter.feed(&[]);
        assert_eq!(counter.messages, 4);
        // A gRPC-Web trailers frame ends the body: not a message.
        let trailers = b"grpc-status: 0\r\n";
        counter.feed(&[0x80, 0, 0, 0, trailers.len() as u8]);
        counter.feed(trailers);
        assert_eq!(counter.messages, 4);
    }

    #[test]
    fn timeout_values_use_the_finest_unit_that_fits() {
        assert_eq!(timeout_value(Duration::from_millis(250)), "250000u");
        assert_eq!(timeout_value(Duration::from_secs(5)), "5000000u");
        assert_eq!(timeout_value(Duration::from_secs(3600)), "3600000m");
        assert_eq!(timeout_value(Duration::from_nanos(1_500)), "1500n");
        assert_eq!(timeout_value(Duration::ZERO), "1n");
        assert_eq!(timeout_value(Duration::from_secs(u64::MAX)), "99999999H");
    }

    proptest::proptest! {
        /// What is passed on reads back as at most the time left, and loses less than one of
        /// its unit.
        #[test]
        fn a_timeout_value_reads_back_as_at_most_the_time_left(nanos in 1u64..u64::MAX) {
            let remaining = Duration::from_nanos(nanos);
            let value = timeout_value(remaining);
            let read = timeout(value.as_bytes()).unwrap();
            proptest::prop_assert!(read <= remaining, "{value}");
            let unit = timeout(format!("1{}", value.chars().last().unwrap()).as_bytes()).unwrap();
            proptest::prop_assert!(remaining - read < unit, "{value}");
        }

        #[test]
        fn chunking_does_not_change_the_count(
            messages in proptest::collection::vec(0usize..300, 0..20),
            cuts in proptest::collection::vec(0usize..6000, 0..30),
        ) {
            let body = framed(&messages);
            let mut cuts: Vec<usize> = cuts.into_iter().filter(|c| *c <= body.len()).collect();
            cuts.extend([0, body.len()]);
            cuts.sort_unstable();
            let mut counter = MessageCounter::default();
            for pair in cuts.windows(2) {
                counter.feed(&body[pair[0]..pair[1]]);
            }
            proptest::prop_assert_eq!(counter.messages, messages.len() as u64);
        }
    }

    #[test]
    fn grpc_content_types_are_recognised() {
        assert!(is_grpc_content_type(b"application/grpc"));
        assert!(is_grpc_content_type(b"application/grpc+proto"));
        assert!(!is_grpc_content_type(b"application/json"));
    }
}
