//! Webhook metrics (`bulwark_webhook_*`). The `endpoint` label is a WebhookEndpoint's
//! `namespace/name` (bounded by the configuration); `result` and `outcome` have fixed values.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::metrics::registry::registered;

/// From 0.25 ms (a group commit on a fast disk) to 1 s.
const ACCEPT_BUCKETS: [f64; 12] = [
    0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.25, 1.0,
];
/// From 1 ms to 30 s: receivers' response times, up to the longest timeout in practice.
const DELIVERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

pub struct WebhookMetrics {
    /// Messages accepted (durable), and duplicates answered by idempotency key.
    pub accepted: IntCounterVec,
    /// Time from a submission's arrival to its durable acceptance.
    pub accept_seconds: Histogram,
    /// Attempts, by endpoint and result (`2xx`, `4xx`, `429`, `5xx`, `timeout`, `network`,
    /// `refused`).
    pub attempts: IntCounterVec,
    /// Attempt durations, by endpoint.
    pub attempt_seconds: HistogramVec,
    /// Deliveries that ended: `delivered` or `dead_lettered`.
    pub deliveries: IntCounterVec,
    /// Attempts scheduled again after a failure.
    pub retries: IntCounterVec,
    /// Deliveries waiting for an attempt (pending), by endpoint.
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest pending delivery's message, by endpoint.
    pub oldest_pending_seconds: IntGaugeVec,
    /// Dead letters kept, by endpoint.
    pub dead_letters: IntGaugeVec,
    /// The endpoint's circuit breaker: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Submissions refused, by reason (`invalid`, `full`, `unavailable`).
    pub refused: IntCounterVec,
    /// Messages delivered to no endpoint (no endpoint's eventTypes matched).
    pub unrouted: IntCounter,
}

impl WebhookMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str| {
            registered(
                registry,
                IntGaugeVec::new(Opts::new(name, help), &["endpoint"])?,
            )
        };
        Ok(Self {
            accepted: counter(
                "bulwark_webhook_messages_accepted_total",
                "Messages accepted durably, and duplicates answered by idempotency key.",
                &["result"],
            )?,
            accept_seconds: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "bulwark_webhook_accept_duration_seconds",
                        "Time from a submission's arrival to its durable acceptance (202).",
                    )
                    .buckets(ACCEPT_BUCKETS.to_vec()),
                )?,
            )?,
            attempts: counter(
                "bulwark_webhook_attempts_total",
                "Delivery attempts, by endpoint and result.",
                &["endpoint", "result"],
            )?,
            attempt_seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bulwark_webhook_attempt_duration_seconds",
                        "Time from sending a delivery attempt to its response or failure.",
                    )
                    .buckets(DELIVERY_BUCKETS.to_vec()),
                    &["endpoint"],
                )?,
            )?,
            deliveries: counter(
                "bulwark_webhook_deliveries_total",
                "Deliveries that ended, by endpoint and outcome (delivered, dead_lettered).",
                &["endpoint", "outcome"],
            )?,
            retries: counter(
                "bulwark_webhook_retries_total",
                "Attempts scheduled again after a failed one.",
                &["endpoint"],
            )?,
            queue_depth: gauge(
                "bulwark_webhook_queue_depth",
                "Deliveries waiting for an attempt.",
            )?,
            oldest_pending_seconds: gauge(
                "bulwark_webhook_oldest_pending_age_seconds",
                "Age of the oldest message with a delivery waiting.",
            )?,
            dead_letters: gauge(
                "bulwark_webhook_dead_letters",
                "Dead letters kept (replayable).",
            )?,
            breaker_state: gauge(
                "bulwark_webhook_circuit_breaker_state",
                "The endpoint's circuit breaker: 0 closed, 1 open, 2 half-open.",
            )?,
            refused: counter(
                "bulwark_webhook_submissions_refused_total",
                "Submissions refused, by reason (invalid, full, unavailable).",
                &["reason"],
            )?,
            unrouted: registered(
                registry,
                IntCounter::new(
                    "bulwark_webhook_messages_unrouted_total",
                    "Messages accepted that no endpoint's eventTypes matched.",
                )?,
            )?,
        })
    }
}
