//! Writes local quota usage to disk in the background: every `--quota-flush-ms`, and at once
//! when shutdown starts. A write is one redb transaction, so after a crash (even kill -9) the
//! file holds the last flush whole: at most one flush interval of usage is lost.

use crate::lock::lock;
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::task::{BackgroundTask, Shutdown};
use async_trait::async_trait;

use super::{store::QuotaDb, usage::UsageStore};
use crate::{clock::unix_nanos, metrics::PolicyMetrics};

pub struct QuotaFlusher {
    usage: Arc<UsageStore>,
    path: PathBuf,
    /// `None` until the file could be opened (another process may hold it during an upgrade).
    db: Mutex<Option<QuotaDb>>,
    interval: Duration,
    metrics: Arc<PolicyMetrics>,
}

fn now_seconds() -> i64 {
    i64::try_from(unix_nanos() / 1_000_000_000).unwrap_or(i64::MAX)
}

impl QuotaFlusher {
    /// Opens the store at `path` and loads its usage into `usage` now, so the first request is
    /// decided on it; if the file is busy, retries at each flush.
    pub fn new(
        usage: Arc<UsageStore>,
        path: PathBuf,
        interval: Duration,
        metrics: Arc<PolicyMetrics>,
    ) -> Self {
        let flusher = Self {
            usage,
            path,
            db: Mutex::new(None),
            interval,
            metrics,
        };
        flusher.ensure_open();
        flusher
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Option<QuotaDb>> {
        lock(&self.db)
    }

    /// Opens the file if not yet open, adding its usage to what is counted in memory (counts
    /// made before it could be opened are kept).
    fn ensure_open(&self) -> bool {
        let mut db = self.db();
        if db.is_some() {
            return true;
        }
        let opened = QuotaDb::open(&self.path).and_then(|store| {
            let entries = store.load(now_seconds())?;
            Ok((store, entries))
        });
        match opened {
            Ok((store, entries)) => {
                tracing::info!(path = %self.path.display(), entries = entries.len(), "quota usage loaded");
                for (key, usage) in entries {
                    self.usage.merge(key, usage);
                }
                *db = Some(store);
                true
            }
            Err(e) => {
                self.failed();
                tracing::warn!(path = %self.path.display(), error = %e, "cannot open the quota store yet; usage is kept in memory");
                false
            }
        }
    }

    fn failed(&self) {
        self.metrics
            .stores
            .errors
            .with_label_values(&["disk", "error"])
            .inc();
    }

    /// Drops usage of ended periods and writes what changed since the last flush.
    pub fn flush(&self) {
        let now = now_seconds();
        self.usage.sweep(now);
        self.metrics
            .quota
            .keys
            .set(i64::try_from(self.usage.len()).unwrap_or(i64::MAX));
        if !self.ensure_open() {
            return;
        }
        let dirty = self.usage.take_dirty();
        let db = self.db();
        let Some(db) = db.as_ref() else { return };
        if let Err(e) = db.write(&dirty, now) {
            self.failed();
            tracing::warn!(error = %e, "cannot write quota usage; retrying at the next flush");
            self.usage.restore_dirty(&dirty);
        }
    }
}

#[async_trait]
impl BackgroundTask for QuotaFlusher {
    async fn run(&self, mut shutdown: Shutdown) {
        // redb calls block for a few milliseconds at most: this service has its own runtime
        // thread, so they are made inline.
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => self.flush(),
                _ = shutdown.changed() => break,
            }
        }
        // Shutdown started: save now, then keep flushing while in-flight requests finish (the
        // runtime is dropped at the end of the grace period).
        self.flush();
        loop {
            tokio::time::sleep(self.interval).await;
            self.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::period::Period;

    #[test]
    fn usage_flushed_by_one_flusher_is_loaded_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let metrics = Arc::new(PolicyMetrics::unregistered());
        let far = Period {
            start: 0,
            end: i64::MAX,
        };
        {
            let usage = Arc::new(UsageStore::new());
            let flusher = QuotaFlusher::new(
                usage.clone(),
                path.clone(),
                Duration::from_secs(1),
                metrics.clone(),
            );
            usage.charge("k", far, 5, 10, false).unwrap();
            flusher.flush();
            usage.charge("k", far, 1, 10, false).unwrap();
            // Not flushed: lost, as after kill -9.
        }
        let usage = Arc::new(UsageStore::new());
        let _flusher = QuotaFlusher::new(usage.clone(), path, Duration::from_secs(1), metrics);
        assert_eq!(usage.used("k", far), 5);
    }
}
