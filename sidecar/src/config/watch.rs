//! Watches the standalone configuration directory and hot-reloads it.
//!
//! The directory is polled (default every second) and its files' contents hashed: polling works
//! the same on every filesystem, including a Kubernetes ConfigMap volume whose files change by
//! swapping a symlink, which inotify-based watchers miss unless they watch the right inode.
//! A changed directory is loaded and compiled whole; on success it is installed and persisted,
//! on failure the error is logged and counted, the last good policy keeps serving, and the load
//! is retried with backoff (up to [`RETRY_CAP`]) until one succeeds: a file that vanished for a
//! moment, or changed while it was read, must not leave an old policy in force once the
//! directory is back to a content that was never loaded.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use bulwark_policy::lock::lock;

use super::{Installer, files, stream::backoff::Backoff};

/// The longest wait between retries of a failed load.
pub const RETRY_CAP: Duration = Duration::from_secs(30);

pub struct ConfigWatcher {
    pub dir: PathBuf,
    pub interval: Duration,
    pub installer: Arc<Installer>,
    /// The fingerprint of the content last loaded successfully (taken before reading it).
    loaded: Mutex<Option<u64>>,
}

/// A fingerprint of the policy files' names and contents.
fn fingerprint(dir: &Path) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    for path in files::policy_files(dir).ok()? {
        path.hash(&mut hasher);
        std::fs::read(&path).ok()?.hash(&mut hasher);
    }
    Some(hasher.finish())
}

impl ConfigWatcher {
    pub fn new(dir: PathBuf, interval: Duration, installer: Arc<Installer>) -> Self {
        Self {
            dir,
            interval,
            installer,
            loaded: Mutex::new(None),
        }
    }

    /// Loads, compiles and installs the directory once; returns the error text on failure.
    /// `fingerprint` is the content's, taken before reading it (a change made while loading
    /// shows as a difference next time).
    fn load(&self, fingerprint: Option<u64>) -> Result<u64, String> {
        let result = files::load_dir(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|mut loaded| {
                let mut snapshot = std::mem::take(&mut loaded.snapshot);
                snapshot.version = self.installer.runtime.policy().snapshot.version + 1;
                self.installer.compile(snapshot).map_err(|e| {
                    let origin = loaded.origin(e.kind, &e.source);
                    format!("{origin}: {e}")
                })
            });
        match result {
            Ok(compiled) => {
                let version = compiled.snapshot.version;
                self.installer.install(compiled);
                *lock(&self.loaded) = fingerprint;
                tracing::info!(version, dir = %self.dir.display(), "policy loaded");
                Ok(version)
            }
            Err(e) => {
                self.installer.reject("invalid policy configuration", &e);
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ConfigWatcher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut backoff = Backoff::new(self.interval, RETRY_CAP);
        let mut retry_at: Option<tokio::time::Instant> = None;
        // The first tick is immediate: the first load runs here, with the listeners already
        // serving, so /healthz answers at once while /readyz waits for it.
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = fingerprint(&self.dir);
            let changed = now.is_some() && now != *lock(&self.loaded);
            let due = retry_at.is_some_and(|at| tokio::time::Instant::now() >= at);
            if !(changed && (retry_at.is_none() || due)) {
                if !changed {
                    retry_at = None;
                }
                continue;
            }
            match self.load(now) {
                Ok(_) => {
                    retry_at = None;
                    backoff.reset();
                }
                Err(_) => {
                    let delay = backoff.next_delay();
                    tracing::info!(retry_in = ?delay, "retrying the configuration load");
                    retry_at = Some(tokio::time::Instant::now() + delay);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bulwark_policy::runtime::Runtime;
    use tokio::sync::watch;

    use super::*;
    use crate::metrics::Metrics;

    const GLOBAL: &str = "apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: api}
spec:
  scope: Global
  rules: [{name: r, key: [{type: ClientIP}], rates: [{limit: 5, window: 1s}]}]
";

    /// A load that fails is retried with backoff though the directory does not change (before,
    /// the content's fingerprint was taken as loaded and the failure stood until an edit).
    #[tokio::test]
    async fn a_failed_load_is_retried_without_a_change() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), GLOBAL).unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let installer = Arc::new(Installer {
            // No Redis: a Global policy cannot compile.
            runtime: Arc::new(Runtime::local(metrics.policy.clone())),
            state_dir: dir.path().to_owned(),
            metrics: metrics.clone(),
        });
        let watcher = Arc::new(ConfigWatcher::new(
            dir.path().to_owned(),
            Duration::from_millis(10),
            installer,
        ));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn({
            let watcher = watcher.clone();
            async move { watcher.start(shutdown).await }
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.send(true).unwrap();
        task.await.unwrap();
        let failures = metrics.config_reloads.with_label_values(&["failure"]).get();
        // 10 ms doubling (jittered): a few retries in 400 ms, not one per tick.
        assert!((3..=20).contains(&failures), "{failures} loads");
    }
}
