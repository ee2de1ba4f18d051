//! A bulkhead: at most `maxConcurrent` calls to an upstream in flight, at most `maxQueue` more
//! waiting (each at most `queueTimeout`); anything beyond is refused at once, so a slow upstream
//! holds a bounded share of the app's connections and memory instead of all of them.

use std::sync::{
    Arc,
    atomic::{AtomicU32, Ordering},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::settings::BulkheadSettings;

pub struct Bulkhead {
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
    settings: BulkheadSettings,
}

/// Why a call was refused a slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Full {
    /// Every slot taken and the queue full.
    Rejected,
    /// Queued, but no slot freed within `queueTimeout`.
    QueueTimeout,
}

impl Bulkhead {
    pub fn new(settings: BulkheadSettings) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(settings.max_concurrent as usize)),
            waiting: AtomicU32::new(0),
            settings,
        }
    }

    /// A slot, held until the permit is dropped (when the call ends, however it ends).
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Full> {
        if let Ok(permit) = self.slots.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let queued = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.settings.max_queue).then_some(n + 1)
            });
        if queued.is_err() {
            return Err(Full::Rejected);
        }
        let waited = tokio::time::timeout(
            self.settings.queue_timeout,
            self.slots.clone().acquire_owned(),
        )
        .await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match waited {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a timeout is the only way here.
            _ => Err(Full::QueueTimeout),
        }
    }

    /// Calls in flight (for `/config` and tests).
    pub fn in_flight(&self) -> u32 {
        self.settings.max_concurrent - self.slots.available_permits() as u32
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bulkhead(max_concurrent: u32, max_queue: u32) -> Arc<Bulkhead> {
        Arc::new(Bulkhead::new(BulkheadSettings {
            max_concurrent,
            max_queue,
            queue_timeout: Duration::from_millis(50),
        }))
    }

    #[tokio::test]
    async fn beyond_the_slots_and_the_queue_calls_are_refused_at_once() {
        let b = bulkhead(2, 0);
        let held = [b.enter().await.unwrap(), b.enter().await.unwrap()];
        assert_eq!(b.in_flight(), 2);
        assert_eq!(b.enter().await.unwrap_err(), Full::Rejected);
        drop(held);
        assert!(b.enter().await.is_ok(), "a freed slot is taken again");
    }

    #[tokio::test]
    async fn a_queued_call_gets_a_freed_slot_or_times_out() {
        let b = bulkhead(1, 1);
        let first = b.enter().await.unwrap();
        let waiter = tokio::spawn({
            let b = b.clone();
            async move { b.enter().await.map(drop) }
        });
        tokio::task::yield_now().await;
        assert_eq!(
            b.enter().await.unwrap_err(),
            Full::Rejected,
            "the queue holds one"
        );
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(()));

        let _second = b.enter().await.unwrap();
        assert_eq!(b.enter().await.unwrap_err(), Full::QueueTimeout);
    }
}
