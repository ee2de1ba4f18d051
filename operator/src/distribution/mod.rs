//! Serving each sidecar its own pod's snapshot.
//!
//! The [`Distributor`] holds the latest compiled snapshot of every injected pod, one watch
//! channel per pod, so a stream wakes only for its own pod. `server` is the TLS HTTP/2 endpoint
//! sidecars hold open (authenticated by `auth`); `acks` records what each sidecar applied and
//! publishes it for the leader's status writer.

pub mod acks;
pub mod auth;
pub mod server;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use bulwark_api::{
    distribution::etag,
    snapshot::{ObjectRef, Snapshot},
};
use tokio::sync::watch;

use crate::compile::PodSnapshot;

/// One pod's snapshot as served.
#[derive(Debug)]
pub struct Published {
    pub uid: String,
    pub etag: String,
    pub snapshot: Snapshot,
    /// The policy generations it carries (`compile::source_id`), what an ack of it confirms.
    pub sources: Arc<Vec<String>>,
}

type Slot = watch::Sender<Arc<Published>>;
/// (etag, sources) of one pod's recent snapshots, newest last.
type History = VecDeque<(String, Arc<Vec<String>>)>;

/// How many recent snapshots per pod an acknowledgement can still refer to.
const ACKABLE: usize = 4;

pub struct Distributor {
    pods: Mutex<HashMap<ObjectRef, Slot>>,
    recent: Mutex<HashMap<ObjectRef, History>>,
    /// Versions are this replica's own count, started at its start time in milliseconds so they
    /// mostly grow across restarts too. Informational: streams resume by etag.
    next_version: AtomicU64,
    /// Whether the index has listed everything once; streams wait for it.
    synced: watch::Sender<bool>,
}

impl Default for Distributor {
    fn default() -> Self {
        Self::new()
    }
}

impl Distributor {
    pub fn new() -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            pods: Mutex::default(),
            recent: Mutex::default(),
            next_version: AtomicU64::new(start),
            synced: watch::Sender::new(false),
        }
    }

    pub fn set_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Resolves once the index has listed every watched type.
    pub async fn wait_synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|synced| *synced).await;
    }

    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Installs `compiled` as the pod's snapshot unless its content is unchanged. Returns whether
    /// anything was published.
    pub fn publish(&self, pod: &ObjectRef, uid: &str, compiled: PodSnapshot) -> bool {
        let tag = etag(&compiled.snapshot);
        let mut pods = self.pods.lock().expect("distributor lock");
        if let Some(slot) = pods.get(pod) {
            let current = slot.borrow();
            if current.etag == tag && current.uid == uid {
                return false;
            }
        }
        let mut snapshot = compiled.snapshot;
        snapshot.version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let sources = Arc::new(compiled.sources);
        let published = Arc::new(Published {
            uid: uid.to_string(),
            etag: tag.clone(),
            snapshot,
            sources: sources.clone(),
        });
        match pods.get(pod) {
            Some(slot) => {
                slot.send_replace(published);
            }
            None => {
                pods.insert(pod.clone(), watch::Sender::new(published));
            }
        }
        drop(pods);
        let mut recent = self.recent.lock().expect("distributor lock");
        let history = recent.entry(pod.clone()).or_default();
        history.push_back((tag, sources));
        while history.len() > ACKABLE {
            history.pop_front();
        }
        true
    }

    /// Forgets a pod that is gone: its streams end.
    pub fn remove(&self, pod: &ObjectRef) {
        self.pods.lock().expect("distributor lock").remove(pod);
        self.recent.lock().expect("distributor lock").remove(pod);
    }

    /// The pods that have a snapshot.
    pub fn pods(&self) -> Vec<ObjectRef> {
        let pods = self.pods.lock().expect("distributor lock");
        pods.keys().cloned().collect()
    }

    /// A receiver of the pod's snapshots, if the pod is known.
    pub fn subscribe(&self, pod: &ObjectRef) -> Option<watch::Receiver<Arc<Published>>> {
        let pods = self.pods.lock().expect("distributor lock");
        pods.get(pod).map(|slot| slot.subscribe())
    }

    /// What the pod's snapshot with `etag` carried, if it is recent.
    pub fn sources_of(&self, pod: &ObjectRef, etag: &str) -> Option<Arc<Vec<String>>> {
        let recent = self.recent.lock().expect("distributor lock");
        recent
            .get(pod)?
            .iter()
            .rev()
            .find(|(tag, _)| tag == etag)
            .map(|(_, sources)| sources.clone())
    }

    /// How many pods have a snapshot.
    pub fn len(&self) -> usize {
        self.pods.lock().expect("distributor lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(pod: &ObjectRef, sources: &[&str]) -> PodSnapshot {
        PodSnapshot {
            snapshot: Snapshot {
                pod: Some(pod.clone()),
                ..Snapshot::empty()
            },
            sources: sources.iter().map(|s| s.to_string()).collect(),
            app_protocol_conflict: None,
        }
    }

    #[test]
    fn unchanged_content_is_not_published_again() {
        let d = Distributor::new();
        let pod = ObjectRef {
            namespace: "shop".into(),
            name: "api-0".into(),
        };
        assert!(d.publish(&pod, "u1", compiled(&pod, &[])));
        let mut rx = d.subscribe(&pod).unwrap();
        rx.mark_unchanged();
        assert!(!d.publish(&pod, "u1", compiled(&pod, &[])));
        assert!(!rx.has_changed().unwrap());
        // Same content for a new pod with the same name (a new uid) is a new snapshot.
        assert!(d.publish(&pod, "u2", compiled(&pod, &[])));
        assert!(rx.has_changed().unwrap());
        let first = rx.borrow_and_update().etag.clone();
        assert_eq!(d.sources_of(&pod, &first).unwrap().len(), 0);
        d.remove(&pod);
        assert!(
            rx.has_changed().is_err(),
            "the stream of a removed pod ends"
        );
    }
}
