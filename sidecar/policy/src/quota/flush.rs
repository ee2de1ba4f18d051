//! Writes local quota usage to disk in the background: every `--quota-flush-ms`, and once more
//! when stopped (after the last request in flight has finished). A write is one redb transaction, so after a crash (even kill -9) the
//! file holds the last flush whole: at most one flush interval of usage is lost.

use crate::lock::lock;
use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use crate::task::{BackgroundTask, Shutdown};
use async_trait::async_trait;

use super::{store::QuotaDb, usage::UsageStore};
use crate::{clock::unix_nanos, metrics::PolicyMetrics};

pub struct QuotaFlusher {
    usage: Arc<UsageStore>,
    path: PathBuf,
    /// `None` until the file could be opened (another process may hold it during an upgrade),
    /// and again after a write failed, so the next flush opens it afresh.
    db: Mutex<Option<QuotaDb>>,
    /// True once the file's usage was read into memory: a reopening after a failed write must
    /// not add it a second time.
    loaded: AtomicBool,
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
            loaded: AtomicBool::new(false),
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
        let first = !self.loaded.load(Ordering::Relaxed);
        let opened = QuotaDb::open(&self.path).and_then(|store| {
            let entries = if first {
                store.load(now_seconds())?
            } else {
                Vec::new()
            };
            Ok((store, entries))
        });
        match opened {
            Ok((store, entries)) => {
                if first {
                    tracing::info!(path = %self.path.display(), entries = entries.len(), "quota usage loaded");
                    for (key, usage) in entries {
                        self.usage.merge(key, usage);
                    }
                    self.loaded.store(true, Ordering::Relaxed);
                } else {
                    tracing::info!(path = %self.path.display(), "quota store reopened; writing usage again");
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
        let mut db = self.db();
        let Some(store) = db.as_ref() else { return };
        if let Err(e) = store.write(&dirty, now) {
            self.failed();
            tracing::warn!(error = %e, "cannot write quota usage; reopening the store and retrying at the next flush");
            self.usage.restore_dirty(&dirty);
            // redb refuses every later write after an I/O error ("Previous I/O error
            // occurred"), even once the disk has room again: drop it and open it afresh.
            *db = None;
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
        // Stopped once no request is in flight: what they charged is saved, nothing follows.
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::period::Period;

    /// A period that never ends.
    const FOREVER: Period = Period {
        start: 0,
        end: i64::MAX,
    };

    fn flusher_of(
        usage: &Arc<UsageStore>,
        path: &std::path::Path,
        metrics: &Arc<PolicyMetrics>,
    ) -> QuotaFlusher {
        QuotaFlusher::new(
            usage.clone(),
            path.to_owned(),
            Duration::from_secs(1),
            metrics.clone(),
        )
    }

    #[test]
    fn usage_flushed_by_one_flusher_is_loaded_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quota.redb");
        let metrics = Arc::new(PolicyMetrics::unregistered());
        {
            let usage = Arc::new(UsageStore::new());
            let flusher = flusher_of(&usage, &path, &metrics);
            usage.charge("k", FOREVER, 5, 10, false).unwrap();
            flusher.flush();
            usage.charge("k", FOREVER, 1, 10, false).unwrap();
            // Not flushed: lost, as after kill -9.
        }
        let usage = Arc::new(UsageStore::new());
        let _flusher = flusher_of(&usage, &path, &metrics);
        assert_eq!(usage.used("k", FOREVER), 5);
    }

    /// A disk that fills up and frees again: writes fail meanwhile (counted, usage kept in
    /// memory), then the store is reopened and usage persists again, counted once. Needs a
    /// small filesystem: a tmpfs mounted for the test (the sidecar's tests run as root here
    /// and in CI).
    #[test]
    fn usage_persists_again_once_a_full_disk_has_room() {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        assert!(mounted, "this test needs to mount a tmpfs (run as root)");
        struct Unmount<'a>(&'a std::path::Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _unmount = Unmount(dir.path());

        let path = dir.path().join("quota.redb");
        let metrics = Arc::new(PolicyMetrics::unregistered());
        let usage = Arc::new(UsageStore::new());
        let flusher = flusher_of(&usage, &path, &metrics);
        usage.charge("k", FOREVER, 5, 1000, false).unwrap();
        flusher.flush();

        // Fill the disk.
        let filler = dir.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while std::io::Write::write_all(&mut file, &chunk).is_ok() {}
        drop(file);
        let errors = || {
            metrics
                .stores
                .errors
                .with_label_values(&["disk", "error"])
                .get()
        };
        // Many keys, so the write needs new pages the full disk cannot give.
        for i in 0..2000 {
            usage
                .charge(
                    &format!("key-{i:04}-{}", "x".repeat(64)),
                    FOREVER,
                    1,
                    1000,
                    false,
                )
                .unwrap();
        }
        usage.charge("k", FOREVER, 2, 1000, false).unwrap();
        flusher.flush();
        assert!(errors() >= 1, "the full disk fails the write");

        // Room again: the next flushes reopen the store and write everything.
        std::fs::remove_file(&filler).unwrap();
        usage.charge("k", FOREVER, 3, 1000, false).unwrap();
        flusher.flush();
        flusher.flush();
        drop(flusher);
        let reloaded = Arc::new(UsageStore::new());
        let _next = flusher_of(&reloaded, &path, &metrics);
        assert_eq!(
            reloaded.used("k", FOREVER),
            10,
            "5 + 2 + 3, each counted once"
        );
        assert_eq!(
            reloaded.used(&format!("key-0000-{}", "x".repeat(64)), FOREVER),
            1
        );
    }
}
