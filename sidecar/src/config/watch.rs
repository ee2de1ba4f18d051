//! Watches the standalone configuration directory and hot-reloads it.
//!
//! The directory is polled (default every second) and its files' contents hashed: polling works
//! the same on every filesystem, including a Kubernetes ConfigMap volume whose files change by
//! swapping a symlink, which inotify-based watchers miss unless they watch the right inode.
//! A changed directory is loaded and compiled whole; on success it is installed and persisted,
//! on failure the error is logged once and counted, and the last good policy keeps serving.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use super::{Installer, files};

pub struct ConfigWatcher {
    pub dir: PathBuf,
    pub interval: Duration,
    pub installer: Arc<Installer>,
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
    /// Loads, compiles and installs the directory once. Returns the error text on failure.
    pub fn reload(&self) -> Result<u64, String> {
        let result = files::load_dir(&self.dir)
            .map_err(|e| e.to_string())
            .and_then(|loaded| {
                let mut snapshot = loaded.snapshot.clone();
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
        let mut last = fingerprint(&self.dir);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.changed() => return,
            }
            let now = fingerprint(&self.dir);
            if now != last {
                last = now;
                let _ = self.reload();
            }
        }
    }
}
