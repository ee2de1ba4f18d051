//! The listeners' golden signals: traffic by status class, latency by outcome, saturation
//! (requests in flight) and upstream errors by kind. Every label has a fixed, small set of
//! values (no paths, hosts or keys), and every series is resolved once, so a request does no
//! label lookup.

use std::sync::{Arc, OnceLock};

use bulwark_policy::{metrics::registry::registered, respond::Reason};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

use super::edge::EdgeMetrics;

/// The `status_class` label values.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

/// Index in [`STATUS_CLASSES`] of a status code's class; `error` when no response was sent.
fn status_class_index(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100 - 1),
        _ => STATUS_CLASSES.len() - 1,
    }
}

/// `2xx`, `4xx`, ... for a status code; `error` when no response was sent.
pub fn status_class(status: Option<u16>) -> &'static str {
    STATUS_CLASSES[status_class_index(status)]
}

/// The `protocol` label: how the client spoke.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// HTTP/2 but not gRPC.
    H2,
    /// A gRPC call (`content-type: application/grpc…`), over HTTP/2 (or HTTP/1.1 from a
    /// gRPC-Web bridge).
    Grpc,
    /// An upgrade the app accepted (`101`), counted once at the upgrade: WebSocket is the one
    /// Pingora passes.
    Websocket,
}

const PROTOCOLS: [&str; 4] = ["http1", "h2", "grpc", "websocket"];

/// The `grpc_status` label: empty for other protocols, `none` for a gRPC call that ended with
/// no status (the client cancelled, the connection broke, an answer that was not gRPC), else
/// the code's number as Istio's `grpc_response_status` (17 values: bounded, and the code tells
/// `RESOURCE_EXHAUSTED` from `UNAVAILABLE`, which a coarser class would not).
const GRPC_STATUSES: [&str; 19] = [
    "", "none", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
    "15", "16",
];

fn grpc_status_index(protocol: Protocol, status: Option<u8>) -> usize {
    match (protocol, status) {
        (Protocol::Grpc, Some(code @ 0..=16)) => 2 + usize::from(code),
        (Protocol::Grpc, _) => 1,
        _ => 0,
    }
}

const SERIES: usize = PROTOCOLS.len() * STATUS_CLASSES.len() * GRPC_STATUSES.len();

/// `<listener>_requests_total{protocol, status_class, grpc_status}`. A series is resolved the
/// first time it is counted and kept (no label lookup after that), and only the combinations
/// that happen are exported.
pub struct RequestsByStatus {
    counters: IntCounterVec,
    series: Box<[OnceLock<IntCounter>]>,
}

impl RequestsByStatus {
    fn new(registry: &Registry, name: &str, help: &str) -> prometheus::Result<Self> {
        let counters = registered(
            registry,
            IntCounterVec::new(
                Opts::new(name, help),
                &["protocol", "status_class", "grpc_status"],
            )?,
        )?;
        Ok(Self {
            counters,
            series: (0..SERIES).map(|_| OnceLock::new()).collect(),
        })
    }

    /// Counts one request by how the client spoke, the HTTP status it was answered with
    /// (`None`: no response was sent) and, for gRPC, the call's status.
    pub fn count(&self, protocol: Protocol, status: Option<u16>, grpc_status: Option<u8>) {
        let (p, c, g) = (
            protocol as usize,
            status_class_index(status),
            grpc_status_index(protocol, grpc_status),
        );
        self.series[(p * STATUS_CLASSES.len() + c) * GRPC_STATUSES.len() + g]
            .get_or_init(|| {
                self.counters.with_label_values(&[
                    PROTOCOLS[p],
                    STATUS_CLASSES[c],
                    GRPC_STATUSES[g],
                ])
            })
            .inc();
    }
}

/// How a request ended, for the latency histogram's `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The app or upstream answered (whatever its status).
    Upstream,
    /// The sidecar answered itself, and why.
    Sidecar(Reason),
    /// No response was sent (the client went away, the connection broke).
    NoResponse,
}

impl Outcome {
    fn index(self) -> usize {
        match self {
            Self::Upstream => 0,
            Self::Sidecar(reason) => 1 + reason.index(),
            Self::NoResponse => 1 + Reason::ALL.len(),
        }
    }

    fn label(index: usize) -> &'static str {
        match index {
            0 => "upstream",
            i if i <= Reason::ALL.len() => Reason::ALL[i - 1].as_str(),
            _ => "no_response",
        }
    }
}

const OUTCOMES: usize = Reason::ALL.len() + 2;

/// What a finished request is counted by.
#[derive(Clone, Copy, Debug)]
pub struct Finished {
    pub protocol: Protocol,
    pub status: Option<u16>,
    pub grpc_status: Option<u8>,
    pub outcome: Outcome,
}

/// Upstream error kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpstreamError {
    /// No connection could be made (refused, unreachable, unresolvable, connect timeout).
    Connect,
    /// The upstream did not answer in time.
    Timeout,
    /// Anything else after connecting (reset, malformed response).
    Other,
}

const UPSTREAM_ERRORS: [&str; 3] = ["connect", "timeout", "other"];

pub struct ListenerMetrics {
    pub requests: RequestsByStatus,
    durations: [Histogram; OUTCOMES],
    /// Requests being handled now.
    pub in_flight: IntGauge,
    upstream_errors: [IntCounter; UPSTREAM_ERRORS.len()],
    /// Open connections and refusals before parsing ([`super::edge`]).
    pub edge: Arc<EdgeMetrics>,
}

impl ListenerMetrics {
    /// The inbound and outbound listeners' metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<[Self; 2]> {
        let durations = registered(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "bulwark_request_duration_seconds",
                    "Time from a request's arrival to the end of its response, by listener and outcome (upstream: the app or upstream answered; otherwise why the sidecar answered, or no_response).",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0,
                ]),
                &["listener", "outcome"],
            )?,
        )?;
        let in_flight = registered(
            registry,
            IntGaugeVec::new(
                Opts::new(
                    "bulwark_requests_in_flight",
                    "Requests being handled now, by listener.",
                ),
                &["listener"],
            )?,
        )?;
        let upstream_errors = registered(
            registry,
            IntCounterVec::new(
                Opts::new(
                    "bulwark_upstream_errors_total",
                    "Failures to get an answer from the app or upstream, by listener and kind (connect, timeout, other).",
                ),
                &["listener", "kind"],
            )?,
        )?;
        let [inbound_edge, outbound_edge] = EdgeMetrics::register(registry)?;
        let listener = |name: &str, requests, edge| -> Self {
            Self {
                requests,
                durations: std::array::from_fn(|i| {
                    durations.with_label_values(&[name, Outcome::label(i)])
                }),
                in_flight: in_flight.with_label_values(&[name]),
                upstream_errors: UPSTREAM_ERRORS
                    .map(|kind| upstream_errors.with_label_values(&[name, kind])),
                edge,
            }
        };
        Ok([
            listener(
                "inbound",
                RequestsByStatus::new(
                    registry,
                    "bulwark_inbound_requests_total",
                    "Requests handled by the inbound listener, by protocol (http1, h2, grpc, websocket), response status class and, for gRPC, grpc_status (the code, or none).",
                )?,
                inbound_edge,
            ),
            listener(
                "outbound",
                RequestsByStatus::new(
                    registry,
                    "bulwark_outbound_requests_total",
                    "Requests the app sent through the outbound listener, by protocol (http1, h2, grpc, websocket), response status class and, for gRPC, grpc_status (the code, or none).",
                )?,
                outbound_edge,
            ),
        ])
    }

    /// Records a finished request: its protocol, status (and gRPC status), and how long it
    /// took, by outcome.
    pub fn finished(&self, finished: Finished, seconds: f64) {
        let Finished {
            protocol,
            status,
            grpc_status,
            outcome,
        } = finished;
        self.requests.count(protocol, status, grpc_status);
        self.durations[outcome.index()].observe(seconds);
    }

    pub fn upstream_error(&self, kind: UpstreamError) {
        self.upstream_errors[kind as usize].inc();
    }
}

/// Counts a request as in flight while it lives (dropped with the request's context, however
/// the request ends).
pub struct InFlight(IntGauge);

impl InFlight {
    pub fn start(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_status() {
        assert_eq!(status_class(Some(101)), "1xx");
        assert_eq!(status_class(Some(204)), "2xx");
        assert_eq!(status_class(Some(308)), "3xx");
        assert_eq!(status_class(Some(599)), "5xx");
        assert_eq!(status_class(Some(600)), "error");
        assert_eq!(status_class(Some(503)), "5xx");
        assert_eq!(status_class(Some(99)), "error");
        assert_eq!(status_class(None), "error");
    }

    #[test]
    fn outcomes_have_distinct_labels_and_requests_are_timed_by_outcome() {
        let labels: std::collections::BTreeSet<_> = (0..OUTCOMES).map(Outcome::label).collect();
        assert_eq!(labels.len(), OUTCOMES);
        assert_eq!(Outcome::label(Outcome::NoResponse.index()), "no_response");
        let registry = Registry::new();
        let [inbound, _] = ListenerMetrics::register(&registry).unwrap();
        let limited = Finished {
            protocol: Protocol::Http1,
            status: Some(429),
            grpc_status: None,
            outcome: Outcome::Sidecar(Reason::RateLimited),
        };
        inbound.finished(limited, 0.0002);
        let grpc_limited = Finished {
            protocol: Protocol::Grpc,
            status: Some(200),
            grpc_status: Some(8),
            ..limited
        };
        inbound.finished(grpc_limited, 0.0002);
        inbound.finished(grpc_limited, 0.0002);
        let cancelled = Finished {
            protocol: Protocol::Grpc,
            status: None,
            grpc_status: None,
            outcome: Outcome::NoResponse,
        };
        inbound.finished(cancelled, 0.1);
        // A gRPC status on another protocol is not a label value.
        inbound.finished(
            Finished {
                protocol: Protocol::H2,
                grpc_status: Some(8),
                ..limited
            },
            0.0,
        );
        {
            let _in_flight = InFlight::start(&inbound.in_flight);
            assert_eq!(inbound.in_flight.get(), 1);
        }
        assert_eq!(inbound.in_flight.get(), 0, "dropped with the request");
        inbound.upstream_error(UpstreamError::Timeout);
        let text = String::from_utf8(bulwark_policy::metrics::registry::render(&registry)).unwrap();
        for line in [
            "bulwark_request_duration_seconds_count{listener=\"inbound\",outcome=\"rate_limited\"} 4",
            "bulwark_request_duration_seconds_bucket{listener=\"inbound\",outcome=\"rate_limited\",le=\"0.0005\"} 4",
            "bulwark_upstream_errors_total{kind=\"timeout\",listener=\"inbound\"} 1",
            "bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"http1\",status_class=\"4xx\"} 1",
            "bulwark_inbound_requests_total{grpc_status=\"\",protocol=\"h2\",status_class=\"4xx\"} 1",
            "bulwark_inbound_requests_total{grpc_status=\"8\",protocol=\"grpc\",status_class=\"2xx\"} 2",
            "bulwark_inbound_requests_total{grpc_status=\"none\",protocol=\"grpc\",status_class=\"error\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing:\n{text}");
        }
        let series = text
            .lines()
            .filter(|l| l.starts_with("bulwark_inbound_requests_total{"))
            .count();
        assert_eq!(series, 4, "only what was counted is exported:\n{text}");
    }
}
