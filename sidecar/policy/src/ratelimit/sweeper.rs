//! Background work of the rate-limit stores: dropping idle local counters (and reporting the
//! store's size), and syncing fast global counters with Redis.

use std::{sync::Arc, time::Duration};

use crate::task::{BackgroundTask, Shutdown};
use async_trait::async_trait;

use super::{redis_counters::FastSync, store::LocalStore};
use crate::{clock::unix_nanos, metrics::PolicyMetrics};

pub struct Sweeper {
    pub store: Arc<LocalStore>,
    pub metrics: Arc<PolicyMetrics>,
    pub interval: Duration,
}

#[async_trait]
impl BackgroundTask for Sweeper {
    async fn run(&self, mut shutdown: Shutdown) {
        let mut evictions_seen = 0;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            self.store.sweep(unix_nanos());
            self.metrics
                .ratelimit
                .counters
                .set(i64::try_from(self.store.len()).unwrap_or(i64::MAX));
            let evictions = self.store.evictions();
            self.metrics
                .ratelimit
                .evictions
                .inc_by(evictions - evictions_seen);
            evictions_seen = evictions;
        }
    }
}

/// Pushes fast global counters to Redis as their `syncInterval`s come due.
pub struct FastSyncer {
    pub sync: Arc<FastSync>,
    pub store: Arc<LocalStore>,
}

/// How often due counters are looked for: the smallest `syncInterval` the CRD allows.
const FAST_SYNC_TICK: Duration = Duration::from_millis(10);

#[async_trait]
impl BackgroundTask for FastSyncer {
    async fn run(&self, mut shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FAST_SYNC_TICK) => {}
                _ = shutdown.changed() => break,
            }
            self.sync.sync_due(&self.store, unix_nanos()).await;
        }
        // What was admitted since the last sync still counts for the other pods.
        self.sync.sync_due(&self.store, u64::MAX).await;
    }
}
