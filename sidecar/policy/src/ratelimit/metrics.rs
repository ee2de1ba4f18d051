//! Rate-limit metrics (`bulwark_ratelimit_*`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::registry::registered;

pub struct RateLimitMetrics {
    /// Decisions by policy (`namespace/name`), rule and decision (`allowed`, `limited`,
    /// `shadow_limited`).
    pub requests: IntCounterVec,
    /// Time to decide all rate limits of one request.
    pub decision_seconds: Histogram,
    /// Local counters held, and counters dropped because the store was full.
    pub counters: IntGauge,
    pub evictions: IntCounter,
}

impl RateLimitMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_ratelimit_requests_total",
                        "Rate-limit decisions by policy, rule and decision.",
                    ),
                    &["policy", "rule", "decision"],
                )?,
            )?,
            decision_seconds: registered(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "bulwark_ratelimit_decision_duration_seconds",
                        "Time to decide every rate limit that applies to one request.",
                    )
                    .buckets(vec![
                        1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 1e-4, 1e-3, 1e-2,
                    ]),
                )?,
            )?,
            counters: registered(
                registry,
                IntGauge::new(
                    "bulwark_ratelimit_counters",
                    "Local rate-limit counters held in memory.",
                )?,
            )?,
            evictions: registered(
                registry,
                IntCounter::new(
                    "bulwark_ratelimit_evictions_total",
                    "Local rate-limit counters dropped because the store was full.",
                )?,
            )?,
        })
    }
}
