//! Failover metrics (`bulwark_failover_*`). Labels are bounded by the configuration: `policy`
//! (`namespace/name`), `upstream` (its name) and `endpoint` (an address of one of its groups);
//! result, reason and state labels have fixed sets of values.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::metrics::registry::registered;

/// From 1 ms to 10 s: upstream calls, not in-process decisions.
const TRY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

pub struct FailoverMetrics {
    /// Tries sent to an endpoint, by result (`2xx`, `5xx`, `connect_failure`, `reset`, ...).
    pub tries: IntCounterVec,
    /// Time from choosing an endpoint to its response header (or failure).
    pub try_seconds: HistogramVec,
    /// Retries sent.
    pub retries: IntCounterVec,
    /// Retries the policy would have made but the retry budget refused.
    pub budget_exhausted: IntCounterVec,
    /// Endpoints ejected by outlier detection.
    pub ejections: IntCounterVec,
    /// 1 when an endpoint's active health check says healthy or has not yet said (unknown),
    /// 0 when unhealthy.
    pub endpoint_healthy: IntGaugeVec,
    /// The circuit breaker's state: 0 closed, 1 open, 2 half-open.
    pub breaker_state: IntGaugeVec,
    /// Breaker transitions, by the state entered.
    pub breaker_transitions: IntCounterVec,
    /// The group taking traffic with `ActivePassive` (its index in `groups`).
    pub active_group: IntGaugeVec,
    /// Calls the sidecar answered itself, by reason (`no_healthy_upstream`, `circuit_open`,
    /// `bulkhead_full`).
    pub refusals: IntCounterVec,
}

impl FailoverMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
        };
        const UPSTREAM: &[&str] = &["policy", "upstream"];
        const ENDPOINT: &[&str] = &["policy", "upstream", "endpoint"];
        Ok(Self {
            tries: counter(
                "bulwark_failover_tries_total",
                "Tries of outbound calls sent to an upstream endpoint, by result.",
                &["policy", "upstream", "endpoint", "result"],
            )?,
            try_seconds: registered(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "bulwark_failover_try_duration_seconds",
                        "Time from sending a try to its response header or failure.",
                    )
                    .buckets(TRY_BUCKETS.to_vec()),
                    UPSTREAM,
                )?,
            )?,
            retries: counter(
                "bulwark_failover_retries_total",
                "Retries of outbound calls sent.",
                UPSTREAM,
            )?,
            budget_exhausted: counter(
                "bulwark_failover_retry_budget_exhausted_total",
                "Retries refused because the upstream's retry budget was spent.",
                UPSTREAM,
            )?,
            ejections: counter(
                "bulwark_failover_ejections_total",
                "Endpoints ejected by outlier detection.",
                ENDPOINT,
            )?,
            endpoint_healthy: gauge(
                "bulwark_failover_endpoint_healthy",
                "1 when active health checks say the endpoint is healthy (or have not probed it yet), 0 when unhealthy.",
                ENDPOINT,
            )?,
            breaker_state: gauge(
                "bulwark_failover_circuit_breaker_state",
                "The upstream's circuit breaker: 0 closed, 1 open, 2 half-open.",
                UPSTREAM,
            )?,
            breaker_transitions: counter(
                "bulwark_failover_circuit_breaker_transitions_total",
                "Circuit breaker state changes, by the state entered.",
                &["policy", "upstream", "state"],
            )?,
            active_group: gauge(
                "bulwark_failover_active_group",
                "Index of the group taking traffic (ActivePassive).",
                UPSTREAM,
            )?,
            refusals: counter(
                "bulwark_failover_refusals_total",
                "Outbound calls the sidecar answered itself, by reason.",
                &["policy", "upstream", "reason"],
            )?,
        })
    }
}
