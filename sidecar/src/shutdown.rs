//! Stopping without losing work and without waiting for nothing. Pingora alone broadcasts
//! shutdown and then sleeps the whole grace period, so an idle sidecar took
//! `--shutdown-grace-seconds` to stop and every rollout waited for it.
//!
//! - **SIGTERM** ([`Drain`]): the listeners close new connections, end kept-alive HTTP/1 ones
//!   after their current request and send HTTP/2 ones GOAWAY ([`crate::listener::edge`], through
//!   [`Draining`]); once no request is in flight (at most the grace period), the policy tasks
//!   are stopped and their last work (the quota flush, the last fast sync) awaited; then the
//!   process exits at once.
//! - **SIGQUIT** (the zero-downtime upgrade) keeps Pingora's handover and its grace period, and
//!   [`AfterHandover`] stops the policy tasks once the old process's requests have finished.
//! - **SIGINT** exits at once.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use pingora::{
    server::{ShutdownSignal, ShutdownSignalWatch, ShutdownWatch},
    services::background::BackgroundService,
};
use prometheus::IntGauge;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::services::Tasks;

/// Whether the process is draining: a flag for the per-request checks, and a watch for what
/// waits on it (Pingora's HTTP/2 loop sends GOAWAY when its shutdown watch turns).
#[derive(Clone)]
pub struct Draining {
    flag: Arc<AtomicBool>,
    watch: Arc<watch::Sender<bool>>,
}

impl Default for Draining {
    fn default() -> Self {
        Self {
            flag: Arc::default(),
            watch: Arc::new(watch::channel(false).0),
        }
    }
}

impl Draining {
    pub fn start(&self) {
        self.flag.store(true, Ordering::Release);
        self.watch.send_replace(true);
    }

    pub fn is_draining(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// A receiver that turns true when draining starts.
    pub fn watch(&self) -> ShutdownWatch {
        self.watch.subscribe()
    }
}

/// How long the policy tasks get for their last work once requests are done.
const TASKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits for requests in flight, then for the policy tasks' last work.
pub struct Quiesce {
    /// Requests in flight, inbound and outbound.
    pub in_flight: [IntGauge; 2],
    pub grace: Duration,
    pub tasks: Tasks,
}

impl Quiesce {
    fn in_flight(&self) -> i64 {
        self.in_flight.iter().map(IntGauge::get).sum()
    }

    async fn run(&self) {
        let deadline = tokio::time::Instant::now() + self.grace;
        while self.in_flight() > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    in_flight = self.in_flight(),
                    grace = ?self.grace,
                    "the shutdown grace period is over: cancelling the requests still in flight"
                );
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if !self.tasks.stop_and_wait(TASKS_TIMEOUT).await {
            tracing::warn!(timeout = ?TASKS_TIMEOUT, "background tasks did not finish in time");
        }
    }
}

/// The signal handling Pingora runs with.
pub struct Drain {
    /// Started at SIGTERM; read by the listeners' edge.
    pub draining: Draining,
    pub quiesce: Arc<Quiesce>,
}

#[async_trait]
impl ShutdownSignalWatch for Drain {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = quit.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = int.recv() => return ShutdownSignal::FastShutdown,
            _ = term.recv() => {}
        }
        tracing::info!(
            in_flight = self.quiesce.in_flight(),
            "SIGTERM: closing new connections, finishing requests in flight"
        );
        self.draining.start();
        tokio::select! {
            _ = self.quiesce.run() => {}
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        tracing::info!("drained: exiting");
        // Nothing is left to wait for: Pingora's fast path exits without its grace sleep.
        ShutdownSignal::FastShutdown
    }
}

/// After an upgrade's handover (Pingora's shutdown broadcast, which SIGTERM no longer uses),
/// drains the listeners as SIGTERM does and stops the policy tasks once the old process's
/// requests have finished.
pub struct AfterHandover(pub Arc<Quiesce>, pub Draining);

#[async_trait]
impl BackgroundService for AfterHandover {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_ok() {
            self.1.start();
            self.0.run().await;
        }
    }
}
