//! Metrics shared by the stores the features write to.

use prometheus::{IntCounterVec, Opts, Registry};

use super::registry::registered;

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
