//! Runs the policy features' background tasks ([`BackgroundTask`]) as Pingora services, so
//! they start once with the server and see its shutdown.

use async_trait::async_trait;
use bulwark_policy::task::BackgroundTask;
use pingora::{
    server::ShutdownWatch,
    services::background::{BackgroundService, GenBackgroundService, background_service},
};

/// A policy task as a Pingora service.
pub struct Task<T>(T);

#[async_trait]
impl<T: BackgroundTask> BackgroundService for Task<T> {
    async fn start(&self, shutdown: ShutdownWatch) {
        self.0.run(shutdown).await;
    }
}

/// `task` as a service named `name`.
pub fn background<T: BackgroundTask>(name: &str, task: T) -> GenBackgroundService<Task<T>> {
    background_service(name, Task(task))
}
