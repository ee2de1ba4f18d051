//! The policy features' Prometheus metrics. Each feature declares its own (`ratelimit::metrics`,
//! `quota::metrics`, ...) and registers them in the one registry the sidecar exports; this
//! module only gathers them, so adding a feature adds a field here and nothing else.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder, core::Collector};

use crate::{jwt::JwtMetrics, quota::metrics::QuotaMetrics, ratelimit::metrics::RateLimitMetrics};

/// Registers `collector` in `registry` and hands it back for use.
pub fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> prometheus::Result<C> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// `registry` in Prometheus text exposition format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("encoding to a Vec cannot fail");
    out
}

/// Every policy feature's metrics.
pub struct PolicyMetrics {
    /// Version of the snapshot being enforced.
    pub snapshot_version: IntGauge,
    pub ratelimit: RateLimitMetrics,
    pub quota: QuotaMetrics,
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
            jwt: JwtMetrics::register(registry)?,
            stores: StoreMetrics::register(registry)?,
        })
    }

    /// In a registry of their own: for tests and benchmarks that only need the handles.
    pub fn unregistered() -> Self {
        Self::register(&Registry::new()).expect("fresh registry")
    }
}

/// `bulwark_store_errors_total`: shared by every store the features write to (Redis, the quota
/// file), so one alert covers them.
pub struct StoreMetrics {
    /// Failed calls to a store, by store (`redis`, `quota`) and kind (`timeout`, `error`,
    /// `full`).
    pub errors: IntCounterVec,
}

impl StoreMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        Ok(Self {
            errors: registered(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "bulwark_store_errors_total",
                        "Calls to a shared counter store that failed, by store and kind (timeout, error).",
                    ),
                    &["store", "kind"],
                )?,
            )?,
        })
    }
}
