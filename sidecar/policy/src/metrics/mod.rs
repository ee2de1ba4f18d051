//! The policy features' Prometheus metrics. Each feature declares its own (`ratelimit::metrics`,
//! `quota::metrics`, ...) and registers them in the one registry the sidecar exports; this
//! module only gathers them, so adding a feature adds a field here and nothing else.

pub mod registry;
pub mod stores;

use prometheus::{IntGauge, Registry};

use self::{registry::registered, stores::StoreMetrics};
use crate::{
    failover::metrics::FailoverMetrics, flags::metrics::FlagMetrics, jwt::metrics::JwtMetrics,
    quota::metrics::QuotaMetrics, ratelimit::metrics::RateLimitMetrics,
    webhooks::metrics::WebhookMetrics,
};

/// Every policy feature's metrics.
pub struct PolicyMetrics {
    /// Version of the snapshot being enforced.
    pub snapshot_version: IntGauge,
    pub ratelimit: RateLimitMetrics,
    pub quota: QuotaMetrics,
    pub flags: FlagMetrics,
    pub failover: FailoverMetrics,
    pub webhooks: WebhookMetrics,
    pub jwt: JwtMetrics,
    pub stores: StoreMetrics,
}

impl PolicyMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            snapshot_version: registered(
                registry,
                IntGauge::new(
                    "bulwark_snapshot_version",
                    "Version of the policy snapshot being enforced.",
                )?,
            )?,
            ratelimit: RateLimitMetrics::register(registry)?,
            quota: QuotaMetrics::register(registry)?,
            flags: FlagMetrics::register(registry)?,
            failover: FailoverMetrics::register(registry)?,
            webhooks: WebhookMetrics::register(registry)?,
            jwt: JwtMetrics::register(registry)?,
            stores: StoreMetrics::register(registry)?,
        })
    }

    /// In a registry of their own: for tests and benchmarks that only need the handles.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }
}
