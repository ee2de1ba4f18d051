//! Periodically drops idle local counters and reports the store's size.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use super::store::LocalStore;
use crate::metrics::Metrics;

pub struct Sweeper {
    pub store: Arc<LocalStore>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut evictions_seen = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            self.store.sweep(now);
            self.metrics
                .ratelimit_counters
                .set(i64::try_from(self.store.len()).unwrap_or(i64::MAX));
            let evictions = self.store.evictions();
            self.metrics
                .ratelimit_evictions
                .inc_by(evictions - evictions_seen);
            evictions_seen = evictions;
        }
    }
}
