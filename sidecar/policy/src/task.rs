//! Long-lived background work of the policy features (sweeping counters, syncing with Redis,
//! flushing usage, webhook delivery). Written against this trait, not
//! the proxy's, so it is tested without one; the sidecar binary runs each as a service started
//! once, before it serves.

use async_trait::async_trait;

/// Changes (to `true`) when the sidecar begins to shut down.
pub type Shutdown = tokio::sync::watch::Receiver<bool>;

#[async_trait]
pub trait BackgroundTask: Send + Sync + 'static {
    /// Runs until `shutdown` changes, then finishes what must not be lost and returns.
    async fn run(&self, shutdown: Shutdown);
}
