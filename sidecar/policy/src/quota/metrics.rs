//! Quota metrics (`bulwark_quota_*`).

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::metrics::registry::registered;

pub struct QuotaMetrics {
    /// Decisions by policy, quota and decision (`allowed`, `limited`, `shadow_limited`).
    pub requests: IntCounterVec,
    /// Usage crossing a warning threshold, by policy, quota and threshold (percent).
    pub threshold_crossings: IntCounterVec,
    /// Local usage entries held (one per quota and key used in its current period).
    pub keys: IntGauge,
}

impl QuotaMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            requests: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_quota_requests_total",
                        "Quota decisions by policy, quota and decision.",
                    ),
                    &["policy", "quota", "decision"],
                )?,
            )?,
            threshold_crossings: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_quota_threshold_crossings_total",
                        "Times a key's quota usage crossed a warning threshold, by policy, quota and threshold (percent).",
                    ),
                    &["policy", "quota", "threshold"],
                )?,
            )?,
            keys: registered(
                registry,
                IntGauge::new(
                    "bulwark_quota_keys",
                    "Local quota usage entries held (one per quota and key used in its current period).",
                )?,
            )?,
        })
    }
}
