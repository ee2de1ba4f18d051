//! Policy status, written by the leader only: `Accepted`, `Programmed`, the selected and
//! programmed pod counts and `observedGeneration`, with server-side apply; an Event when a
//! policy's acceptance changes.
//!
//! Inputs: the index (verdicts, selected pods, stored status) and the replicas' distribution
//! reports (which pod acknowledged which policy generations). A status is written only when it
//! differs from the stored one, so the writer never loops on its own writes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bulwark_api::crd::common::{PolicyStatus, condition};
use futures::StreamExt;
use k8s_openapi::{
    api::core::v1::{ConfigMap, ObjectReference},
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ApiResource, DynamicObject, Patch, PatchParams},
    runtime::{
        WatchStreamExt,
        events::{Event, EventType, Recorder, Reporter},
        watcher,
    },
};
use tokio::sync::{Notify, watch};

use crate::{
    compile::{self, Verdict},
    distribution::acks::{self, REPORT_LABEL, Report},
    index::{Index, Kind, Policy, PolicyKey},
    watch::Shared,
};

const FIELD_MANAGER: &str = "bulwark-operator";

fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::RateLimitPolicy => "ratelimitpolicies",
        Kind::QuotaPolicy => "quotapolicies",
        Kind::FeatureFlag => "featureflags",
        Kind::WebhookEndpoint => "webhookendpoints",
        Kind::FailoverPolicy => "failoverpolicies",
    }
}

fn api_resource(kind: Kind) -> ApiResource {
    ApiResource {
        group: bulwark_api::GROUP.into(),
        version: bulwark_api::VERSION.into(),
        api_version: format!("{}/{}", bulwark_api::GROUP, bulwark_api::VERSION),
        kind: kind.as_str().into(),
        plural: plural(kind).into(),
    }
}

/// The replicas' distribution reports, by ConfigMap name.
#[derive(Default)]
pub struct Reports(Mutex<BTreeMap<String, Report>>);

impl Reports {
    pub fn merged(&self) -> Report {
        acks::merge(self.0.lock().expect("reports").values())
    }
}

/// Keeps `reports` in step with the report ConfigMaps in `namespace`.
pub async fn watch_reports(
    client: Client,
    namespace: String,
    reports: Arc<Reports>,
    changed: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().labels(&format!("{REPORT_LABEL}=true"));
    let mut stream = watcher(api, config)
        .backoff(crate::watch::WatchBackoff::default())
        .boxed();
    let mut relisted: Option<BTreeMap<String, Report>> = None;
    loop {
        let event = tokio::select! {
            e = stream.next() => match e { Some(e) => e, None => return },
            _ = shutdown.changed() => return,
        };
        let mut map = reports.0.lock().expect("reports");
        match event {
            Ok(watcher::Event::Init) => relisted = Some(BTreeMap::new()),
            Ok(watcher::Event::InitApply(cm)) => {
                if let Some(r) = relisted.as_mut() {
                    r.insert(cm.name_any(), acks::parse_report(&cm));
                }
            }
            Ok(watcher::Event::InitDone) => *map = relisted.take().unwrap_or_default(),
            Ok(watcher::Event::Apply(cm)) => {
                map.insert(cm.name_any(), acks::parse_report(&cm));
            }
            Ok(watcher::Event::Delete(cm)) => {
                map.remove(&cm.name_any());
            }
            Err(e) => {
                tracing::warn!(error = %e, "watching distribution reports failed; retrying");
                continue;
            }
        }
        drop(map);
        changed.notify_one();
    }
}

/// The status a policy should have now.
fn desired(
    index: &Index,
    key: &PolicyKey,
    policy: &Policy,
    verdict: &Verdict,
    acks: &Report,
) -> PolicyStatus {
    let previous = policy.status.as_ref();
    let generation = policy.generation;
    let selected: Vec<_> = index.selected_pods(key, policy).collect();
    let source = compile::source_id(key, generation);
    let programmed = selected
        .iter()
        .filter(|(pod_ref, pod)| {
            acks.get(&acks::pod_key(pod_ref)).is_some_and(|ack| {
                ack.uid == pod.uid && ack.accepted && ack.sources.contains(&source)
            })
        })
        .count();
    let (accepted, programmed_condition) = match verdict {
        Verdict::Accepted => {
            let n = selected.len();
            let programmed_condition = if n == 0 {
                (
                    true,
                    "NoSelectedPods",
                    "no injected pod matches spec.selector".to_string(),
                )
            } else if programmed == n {
                (
                    true,
                    "Programmed",
                    format!("{programmed}/{n} selected pods enforce generation {generation}"),
                )
            } else {
                // A sidecar that rejected its snapshot keeps its last good one; say which and why.
                let rejected = selected.iter().find_map(|(pod_ref, pod)| {
                    let ack = acks.get(&acks::pod_key(pod_ref))?;
                    (ack.uid == pod.uid && !ack.accepted).then(|| {
                        format!(
                            "; pod {} rejected its snapshot: {}",
                            pod_ref.name,
                            ack.error.as_deref().unwrap_or("no reason given")
                        )
                    })
                });
                (
                    false,
                    if rejected.is_some() {
                        "Rejected"
                    } else {
                        "Pending"
                    },
                    format!(
                        "{programmed}/{n} selected pods enforce generation {generation}{}",
                        rejected.unwrap_or_default()
                    ),
                )
            };
            (
                (
                    true,
                    "Accepted",
                    "the policy is valid and its references resolve".to_string(),
                ),
                programmed_condition,
            )
        }
        Verdict::Rejected { reason, message } => (
            (false, *reason, message.clone()),
            (
                false,
                "Invalid",
                "the policy is not Accepted; no sidecar enforces it".to_string(),
            ),
        ),
    };
    let condition = |type_: &str, (status, reason, message): (bool, &str, String)| {
        let status = if status { "True" } else { "False" };
        let before = previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == type_));
        let last_transition_time = match before {
            Some(c) if c.status == status => c.last_transition_time.clone(),
            _ => Time(Timestamp::now()),
        };
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: Some(generation),
            last_transition_time,
        }
    };
    PolicyStatus {
        observed_generation: Some(generation),
        conditions: vec![
            condition(condition::ACCEPTED, accepted),
            condition(condition::PROGRAMMED, programmed_condition),
        ],
        selected_pods: Some(selected.len() as i32),
        programmed_pods: Some(programmed as i32),
    }
}

/// Whether two statuses say the same, ignoring when conditions last changed.
fn same(a: &PolicyStatus, b: &PolicyStatus) -> bool {
    let strip = |s: &PolicyStatus| {
        let mut s = s.clone();
        for c in &mut s.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

fn accepted_of(status: Option<&PolicyStatus>) -> Option<(String, String)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == condition::ACCEPTED)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What this leader last wrote, so it does not rewrite before its own write is watched back.
    written: HashMap<PolicyKey, PolicyStatus>,
}

impl StatusWriter {
    pub fn new(client: Client, identity: &str) -> Self {
        let reporter = Reporter {
            controller: "bulwark-operator".into(),
            instance: Some(identity.to_string()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            written: HashMap::new(),
        }
    }

    /// Writes every status that differs from what is stored.
    pub async fn reconcile(&mut self, shared: &Shared, reports: &Reports) {
        let acks = reports.merged();
        let mut pending = Vec::new();
        {
            let index = shared.index.read().expect("index lock");
            if !index.is_synced() {
                return;
            }
            let namespaces: std::collections::BTreeSet<&str> = index
                .policies
                .keys()
                .map(|k| k.namespace.as_str())
                .collect();
            for namespace in namespaces {
                let verdicts = compile::verdicts_in(&index, namespace);
                for (key, policy) in index.policies_in(namespace) {
                    let want = desired(&index, key, policy, &verdicts[key], &acks);
                    let known = self.written.get(key).or(policy.status.as_ref());
                    if known.is_some_and(|k| same(k, &want)) {
                        continue;
                    }
                    let was = accepted_of(known);
                    pending.push((key.clone(), policy.uid.clone(), want, was));
                }
            }
            self.written
                .retain(|key, _| index.policies.contains_key(key));
        }
        for (key, uid, status, was) in pending {
            let ar = api_resource(key.kind);
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, &ar);
            let body = serde_json::json!({
                "apiVersion": ar.api_version,
                "kind": ar.kind,
                "metadata": { "name": key.name },
                "status": status,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            match api
                .patch_status(&key.name, &params, &Patch::Apply(body))
                .await
            {
                Ok(_) => {
                    shared
                        .metrics
                        .status_writes
                        .with_label_values(&["success"])
                        .inc();
                    let now = accepted_of(Some(&status));
                    if now != was {
                        self.event(&key, &uid, &status).await;
                    }
                    self.written.insert(key, status);
                }
                Err(kube::Error::Api(e)) if e.code == 404 => {} // deleted meanwhile
                Err(e) => {
                    shared
                        .metrics
                        .status_writes
                        .with_label_values(&["failure"])
                        .inc();
                    tracing::warn!(policy = %key, error = %e, "cannot write status");
                }
            }
        }
    }

    async fn event(&self, key: &PolicyKey, uid: &str, status: &PolicyStatus) {
        let Some(accepted) = status
            .conditions
            .iter()
            .find(|c| c.type_ == condition::ACCEPTED)
        else {
            return;
        };
        let reference = ObjectReference {
            api_version: Some(api_resource(key.kind).api_version),
            kind: Some(key.kind.as_str().into()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: Some(uid.to_string()),
            ..ObjectReference::default()
        };
        let event = Event {
            type_: if accepted.status == "True" {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: accepted.reason.clone(),
            note: Some(accepted.message.chars().take(1000).collect()),
            action: "Validate".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(policy = %key, error = %e, "cannot publish an Event");
        }
    }
}

/// Writes status while this replica leads, after every change the index or a report signals.
pub async fn run(
    shared: Arc<Shared>,
    reports: Arc<Reports>,
    mut writer: StatusWriter,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            writer.reconcile(&shared, &reports).await;
        } else {
            writer.written.clear(); // a new term starts from what is stored
        }
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = leader.changed() => {}
            // Retries failed writes even when nothing else happens.
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
            _ = shutdown.changed() => return,
        }
        // Coalesces a burst of changes into one pass.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
