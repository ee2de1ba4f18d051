//! What each sidecar has applied, as this replica heard it, published for the leader.
//!
//! A sidecar acknowledges on the replica that serves its stream, and any replica may serve any
//! sidecar, but only the leader writes status. So each replica publishes its acknowledgements
//! in its own ConfigMap (`bulwark-distribution-<replica>`, in the operator's namespace), and the
//! leader merges all of them: the pattern Istio uses for its distribution reports. Writes are
//! batched (at most one per [`FLUSH_INTERVAL`]) and skipped when nothing changed. A record also
//! carries the sidecar's webhook deliveries; a change of those alone is written within
//! [`COUNTS_FLUSH_INTERVAL`].

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use bulwark_api::{distribution::WebhookDeliveries, snapshot::ObjectRef};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

/// Label on every replica's report ConfigMap; the leader watches by it.
pub const REPORT_LABEL: &str = "bulwark.dev/distribution-report";
const REPORT_KEY: &str = "acks.json";
const FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// A change of nothing but webhook counts waits up to this long, so that sidecars reporting
/// every few seconds do not rewrite the ConfigMap several times a second.
pub const COUNTS_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// A sidecar's latest acknowledgement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckRecord {
    pub uid: String,
    pub etag: String,
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The policy generations the acknowledged snapshot carried (`compile::source_id`).
    pub sources: Vec<String>,
    /// Unix milliseconds: the newest acknowledgement of a pod wins across replicas.
    pub at: u64,
    /// The sidecar's webhook deliveries, as its acknowledgement reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<BTreeMap<String, WebhookDeliveries>>,
}

impl AckRecord {
    /// Whether `other` says the same about the snapshot (what `Programmed` needs): a change in
    /// nothing but the webhook counts and the time is not urgent.
    fn same_snapshot(&self, other: &AckRecord) -> bool {
        (
            &self.uid,
            &self.etag,
            self.accepted,
            &self.error,
            &self.sources,
        ) == (
            &other.uid,
            &other.etag,
            other.accepted,
            &other.error,
            &other.sources,
        )
    }
}

/// Acknowledgements keyed by `namespace/name`.
pub type Report = BTreeMap<String, AckRecord>;

pub fn pod_key(pod: &ObjectRef) -> String {
    format!("{}/{}", pod.namespace, pod.name)
}

#[derive(Default)]
pub struct AckBook {
    acks: Mutex<Report>,
    /// Some acknowledgement says something new about a snapshot: publish soon.
    changed: Notify,
    /// Only webhook counts changed: publish within [`COUNTS_FLUSH_INTERVAL`].
    counted: Notify,
}

impl AckBook {
    pub fn record(&self, pod: &ObjectRef, record: AckRecord) {
        let before = self
            .acks
            .lock()
            .expect("ack book")
            .insert(pod_key(pod), record.clone());
        match before {
            Some(before) if before.same_snapshot(&record) => self.counted.notify_one(),
            _ => self.changed.notify_one(),
        }
    }

    /// The acknowledgement recorded for `pod`, if any.
    pub fn get(&self, pod: &ObjectRef) -> Option<AckRecord> {
        self.acks
            .lock()
            .expect("ack book")
            .get(&pod_key(pod))
            .cloned()
    }

    /// Drops the acknowledgement of a pod that no longer exists.
    pub fn forget(&self, pod: &ObjectRef) {
        let removed = self.acks.lock().expect("ack book").remove(&pod_key(pod));
        if removed.is_some() {
            self.changed.notify_one();
        }
    }

    pub fn snapshot(&self) -> Report {
        self.acks.lock().expect("ack book").clone()
    }
}

/// The ConfigMap name of a replica's report.
pub fn report_name(identity: &str) -> String {
    format!("bulwark-distribution-{identity}")
}

/// Reads a report ConfigMap; a malformed one counts as empty (and is logged).
pub fn parse_report(cm: &ConfigMap) -> Report {
    let Some(json) = cm.data.as_ref().and_then(|d| d.get(REPORT_KEY)) else {
        return Report::new();
    };
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(configmap = ?cm.metadata.name, error = %e, "ignoring a malformed distribution report");
        Report::new()
    })
}

/// Merges replicas' reports: per pod, the newest acknowledgement.
pub fn merge<'a>(reports: impl IntoIterator<Item = &'a Report>) -> Report {
    let mut merged = Report::new();
    for report in reports {
        for (pod, record) in report {
            match merged.get(pod) {
                Some(existing) if existing.at >= record.at => {}
                _ => {
                    merged.insert(pod.clone(), record.clone());
                }
            }
        }
    }
    merged
}

/// Keeps this replica's report ConfigMap in step with `book` until shutdown. With `pod_uid`, the
/// report is owned by this replica's pod (named `identity`): the garbage collector deletes it
/// with the pod, which the operator itself could not without `delete` on ConfigMaps.
pub async fn run_reporter(
    client: Client,
    namespace: String,
    identity: String,
    pod_uid: Option<String>,
    book: std::sync::Arc<AckBook>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let name = report_name(&identity);
    let params = PatchParams::apply("bulwark-operator").force();
    let owners: Vec<_> = pod_uid
        .iter()
        .map(|uid| serde_json::json!({ "apiVersion": "v1", "kind": "Pod", "name": identity, "uid": uid }))
        .collect();
    let mut written: Option<Report> = None;
    loop {
        let report = book.snapshot();
        if written.as_ref() != Some(&report) {
            let body = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": name,
                    "labels": {
                        "app.kubernetes.io/name": "bulwark",
                        "app.kubernetes.io/component": "distribution-report",
                        REPORT_LABEL: "true",
                    },
                    "ownerReferences": owners,
                },
                "data": { REPORT_KEY: serde_json::to_string(&report).expect("serialisable") },
            });
            match api.patch(&name, &params, &Patch::Apply(body)).await {
                Ok(_) => written = Some(report),
                Err(e) => {
                    tracing::warn!(error = %e, configmap = %name, "cannot write the distribution report; retrying")
                }
            }
        }
        let urgent = tokio::select! {
            _ = book.changed.notified() => true,
            _ = book.counted.notified() => false,
            // A periodic retry covers a failed write with no new acknowledgement behind it.
            _ = tokio::time::sleep(Duration::from_secs(5)) => true,
            _ = shutdown.changed() => return,
        };
        if urgent {
            tokio::time::sleep(FLUSH_INTERVAL).await;
        } else {
            // Counts only: wait, unless an acknowledgement that matters comes meanwhile.
            tokio::select! {
                _ = tokio::time::sleep(COUNTS_FLUSH_INTERVAL) => {}
                _ = book.changed.notified() => tokio::time::sleep(FLUSH_INTERVAL).await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(etag: &str, at: u64) -> AckRecord {
        AckRecord {
            uid: "u".into(),
            etag: etag.into(),
            accepted: true,
            error: None,
            sources: vec![],
            at,
            webhooks: None,
        }
    }

    #[test]
    fn the_newest_acknowledgement_of_a_pod_wins_across_replicas() {
        let a = Report::from([("shop/api-0".to_string(), record("old", 1))]);
        let b = Report::from([
            ("shop/api-0".to_string(), record("new", 2)),
            ("shop/api-1".to_string(), record("x", 1)),
        ]);
        let merged = merge([&a, &b]);
        assert_eq!(merged["shop/api-0"].etag, "new");
        assert_eq!(merged.len(), 2);
        assert_eq!(merge([&b, &a])["shop/api-0"].etag, "new");
    }
}
