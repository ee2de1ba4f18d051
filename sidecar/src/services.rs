//! Runs the policy features' background tasks ([`BackgroundTask`]) as Pingora services, so
//! they start once with the server, and can be stopped and waited for: SIGTERM's drain
//! ([`crate::shutdown`]) stops them itself and waits for what they must finish (the last quota
//! flush) before the process exits, instead of sleeping Pingora's whole grace period.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use bulwark_policy::task::BackgroundTask;
use pingora::{
    server::ShutdownWatch,
    services::background::{BackgroundService, GenBackgroundService, background_service},
};
use tokio::sync::{Notify, watch};

/// The policy tasks started, and their stop signal.
#[derive(Clone)]
pub struct Tasks(Arc<TaskSet>);

struct TaskSet {
    stop: watch::Sender<bool>,
    running: AtomicUsize,
    finished: Notify,
}

impl Default for Tasks {
    fn default() -> Self {
        Self(Arc::new(TaskSet {
            stop: watch::channel(false).0,
            running: AtomicUsize::new(0),
            finished: Notify::new(),
        }))
    }
}

impl Tasks {
    /// `task` as a service named `name`.
    pub fn service<T: BackgroundTask>(&self, name: &str, task: T) -> GenBackgroundService<Task<T>> {
        background_service(
            name,
            Task {
                task,
                tasks: self.clone(),
            },
        )
    }

    /// Stops every task and waits until all have returned, at most `timeout`. False when some
    /// had not returned by then.
    pub async fn stop_and_wait(&self, timeout: Duration) -> bool {
        self.0.stop.send_replace(true);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let finished = self.0.finished.notified();
            if self.0.running.load(Ordering::Acquire) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return false;
            }
        }
    }
}

/// A policy task as a Pingora service.
pub struct Task<T> {
    task: T,
    tasks: Tasks,
}

#[async_trait]
impl<T: BackgroundTask> BackgroundService for Task<T> {
    /// Pingora's own shutdown signal is not passed on: it comes while requests still finish
    /// (an upgrade's handover), and tasks stop only once they have ([`crate::shutdown`]).
    async fn start(&self, _server_shutdown: ShutdownWatch) {
        let set = &self.tasks.0;
        set.running.fetch_add(1, Ordering::AcqRel);
        self.task.run(set.stop.subscribe()).await;
        set.running.fetch_sub(1, Ordering::AcqRel);
        set.finished.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Finishes a slow last step after its stop signal.
    struct SlowFinisher(Arc<AtomicUsize>);

    #[async_trait]
    impl BackgroundTask for SlowFinisher {
        async fn run(&self, mut shutdown: bulwark_policy::task::Shutdown) {
            let _ = shutdown.changed().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn stopping_waits_for_what_tasks_finish() {
        let tasks = Tasks::default();
        let finished = Arc::new(AtomicUsize::new(0));
        let (_server, server_shutdown) = watch::channel(false);
        for _ in 0..2 {
            let task = Task {
                task: SlowFinisher(finished.clone()),
                tasks: tasks.clone(),
            };
            let shutdown = server_shutdown.clone();
            tokio::spawn(async move { task.start(shutdown).await });
        }
        // Pingora's signal (an upgrade's handover) does not stop them: requests may still run.
        _server.send_replace(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(finished.load(Ordering::SeqCst), 0, "still running");
        assert!(tasks.stop_and_wait(Duration::from_secs(5)).await);
        assert_eq!(
            finished.load(Ordering::SeqCst),
            2,
            "both finished their last step"
        );
    }

    #[tokio::test]
    async fn waiting_is_bounded() {
        let tasks = Tasks::default();
        let task = Task {
            task: SlowFinisher(Arc::new(AtomicUsize::new(0))),
            tasks: tasks.clone(),
        };
        let (_server, shutdown) = watch::channel(false);
        tokio::spawn(async move { task.start(shutdown).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!tasks.stop_and_wait(Duration::from_millis(10)).await);
    }
}
