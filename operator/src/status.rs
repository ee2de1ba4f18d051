//! Policy status, written by the leader only: `Accepted`, `Programmed`, the selected and
//! programmed pod counts and `observedGeneration`, with server-side apply; an Event when a
//! policy's acceptance changes. A WebhookEndpoint's status also has its delivery counts, last
//! failure and `Delivering` condition (`deliveries`), with an Event when the leader disables
//! it.
//!
//! Inputs: the index (verdicts, selected pods, stored status) and the replicas' distribution
//! reports (which pod acknowledged which policy generations). A status is written only when it
//! differs from the stored one, so the writer never loops on its own writes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use bulwark_api::{
    crd::{
        common::{PolicyStatus, condition},
        webhook::{DeliveryCounts, WebhookEndpointStatus},
    },
    distribution::WebhookDeliveries,
    snapshot::ObjectRef,
};
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
    deliveries,
    distribution::acks::{self, REPORT_LABEL, Report},
    index::{AUTO_DISABLED, Index, Kind, Policy, PolicyKey, Spec},
    signing,
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
fn same(a: &Status, b: &Status) -> bool {
    let strip = |s: &Status| {
        let mut s = s.clone();
        for c in &mut s.policy.conditions {
            c.last_transition_time = Time(Timestamp::UNIX_EPOCH);
        }
        s
    };
    strip(a) == strip(b)
}

/// A status as written: every kind's fields, and a WebhookEndpoint's delivery fields (absent
/// for the other kinds, so the JSON is theirs).
type Status = WebhookEndpointStatus;

fn as_status(policy: PolicyStatus) -> Status {
    Status {
        policy,
        ..Status::default()
    }
}

fn delivering_of(status: Option<&Status>) -> Option<&Condition> {
    status?
        .policy
        .conditions
        .iter()
        .find(|c| c.type_ == condition::DELIVERING)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reports of the replicas' merged acknowledgements, by endpoint id, from pods that still
/// exist (same uid).
fn webhook_reports<'a>(index: &Index, acks: &'a Report) -> deliveries::ByEndpoint<'a> {
    let mut by_endpoint = deliveries::ByEndpoint::new();
    for (pod, record) in acks {
        let Some(webhooks) = &record.webhooks else {
            continue;
        };
        let alive = pod.split_once('/').is_some_and(|(namespace, name)| {
            index
                .pods
                .get(&ObjectRef {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
                .is_some_and(|p| p.uid == record.uid)
        });
        if !alive {
            continue;
        }
        for (endpoint, report) in webhooks {
            by_endpoint
                .entry(endpoint.as_str())
                .or_default()
                .push(((pod.clone(), record.uid.clone()), report));
        }
    }
    by_endpoint
}

fn accepted_of(status: Option<&Status>) -> Option<(String, String)> {
    status?
        .policy
        .conditions
        .iter()
        .find(|c| c.type_ == condition::ACCEPTED)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    /// What this leader last wrote, so it does not rewrite before its own write is watched back.
    written: HashMap<PolicyKey, Status>,
    /// What this leader has counted of each WebhookEndpoint's deliveries this term.
    tallies: HashMap<PolicyKey, deliveries::Tally>,
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
            tallies: HashMap::new(),
        }
    }

    /// A new leadership term starts from what is stored.
    fn forget(&mut self) {
        self.written.clear();
        self.tallies.clear();
    }

    /// A WebhookEndpoint's delivery fields and `Delivering` condition, added to `status`.
    #[allow(clippy::too_many_arguments)]
    fn webhook_status(
        &mut self,
        index: &Index,
        key: &PolicyKey,
        policy: &Policy,
        spec: &bulwark_api::crd::WebhookEndpointSpec,
        accepted: bool,
        reports: &deliveries::ByEndpoint<'_>,
        known: Option<&Status>,
        status: &mut Status,
        now: u64,
    ) {
        let id = signing::endpoint_id(&key.namespace, &key.name);
        let reported: &[(deliveries::PodId, &WebhookDeliveries)] =
            reports.get(id.as_str()).map_or(&[], Vec::as_slice);
        let stored = policy.webhook_status.as_deref();
        let tally = match self.tallies.get_mut(key) {
            Some(t) if t.uid == policy.uid => t,
            _ => {
                let retired = known.or(stored).and_then(|s| s.retired_deliveries.as_ref());
                self.tallies
                    .insert(key.clone(), deliveries::Tally::new(&policy.uid, retired));
                self.tallies.get_mut(key).expect("just inserted")
            }
        };
        let alive = |(pod, uid): &deliveries::PodId| {
            pod.split_once('/').is_some_and(|(namespace, name)| {
                index
                    .pods
                    .get(&ObjectRef {
                        namespace: namespace.to_owned(),
                        name: name.to_owned(),
                    })
                    .is_some_and(|p| p.uid == *uid)
            })
        };
        let total = tally.update(reported.iter().map(|(pod, r)| (pod.clone(), *r)), alive);
        let any = total != DeliveryCounts::default() || tally.retired != DeliveryCounts::default();
        status.deliveries = any.then_some(total);
        status.retired_deliveries =
            (tally.retired != DeliveryCounts::default()).then(|| tally.retired.clone());
        status.last_failure = deliveries::last_failure(
            known.or(stored).and_then(|s| s.last_failure.as_ref()),
            reported.iter().map(|(_, r)| *r),
        );

        let previous = delivering_of(known.or(stored));
        let reports: Vec<&WebhookDeliveries> = reported.iter().map(|(_, r)| *r).collect();
        let decision =
            deliveries::decide(spec, accepted, policy.generation, previous, &reports, now);
        let condition = match (&decision, previous) {
            (deliveries::Decision::StillAutoDisabled, Some(previous)) => previous.clone(),
            _ => {
                let c = deliveries::condition_for(&decision, spec, now);
                let last_transition_time = match (previous, c.since) {
                    (Some(p), _) if p.status == c.status && p.reason == c.reason => {
                        p.last_transition_time.clone()
                    }
                    (_, Some(since)) => Time(since),
                    (Some(p), None) if p.status == c.status => p.last_transition_time.clone(),
                    _ => Time(Timestamp::now()),
                };
                Condition {
                    type_: condition::DELIVERING.to_string(),
                    status: c.status.to_string(),
                    reason: c.reason.to_string(),
                    message: c.message,
                    observed_generation: Some(policy.generation),
                    last_transition_time,
                }
            }
        };
        status.policy.conditions.push(condition);
    }

    /// Writes every status that differs from what is stored.
    pub async fn reconcile(&mut self, shared: &Shared, reports: &Reports) {
        let acks = reports.merged();
        let now = now_ms();
        let mut pending = Vec::new();
        {
            let index = shared.index.read().expect("index lock");
            if !index.is_synced() {
                return;
            }
            let webhook_reports = webhook_reports(&index, &acks);
            let namespaces: std::collections::BTreeSet<&str> = index
                .policies
                .keys()
                .map(|k| k.namespace.as_str())
                .collect();
            for namespace in namespaces {
                let verdicts = compile::verdicts_in(&index, namespace);
                for (key, policy) in index.policies_in(namespace) {
                    let stored = match &policy.webhook_status {
                        Some(s) => Some(s.as_ref().clone()),
                        None => policy.status.clone().map(as_status),
                    };
                    let known = self.written.get(key).cloned().or(stored);
                    let mut want = as_status(desired(&index, key, policy, &verdicts[key], &acks));
                    if let Spec::Webhook(spec) = &policy.spec {
                        let accepted = verdicts[key] == Verdict::Accepted;
                        self.webhook_status(
                            &index,
                            key,
                            policy,
                            spec,
                            accepted,
                            &webhook_reports,
                            known.as_ref(),
                            &mut want,
                            now,
                        );
                    }
                    if known.as_ref().is_some_and(|k| same(k, &want)) {
                        continue;
                    }
                    pending.push((key.clone(), policy.uid.clone(), want, known));
                }
            }
            self.written
                .retain(|key, _| index.policies.contains_key(key));
            self.tallies
                .retain(|key, _| index.policies.contains_key(key));
        }
        for (key, uid, status, known) in pending {
            let was = accepted_of(known.as_ref());
            let was_disabled = delivering_of(known.as_ref()).map(|c| c.reason.clone());
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
                    self.delivery_event(&key, &uid, was_disabled.as_deref(), &status)
                        .await;
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

    /// `EndpointDisabled` when the leader disabled a WebhookEndpoint, `EndpointEnabled` when
    /// a spec change ended that.
    async fn delivery_event(&self, key: &PolicyKey, uid: &str, was: Option<&str>, status: &Status) {
        let Some(now) = delivering_of(Some(status)) else {
            return;
        };
        let (type_, reason, action, note) = match (was, now.reason.as_str()) {
            (Some(AUTO_DISABLED), AUTO_DISABLED) => return,
            (_, AUTO_DISABLED) => (
                EventType::Warning,
                "EndpointDisabled",
                "Disable",
                now.message.clone(),
            ),
            (Some(AUTO_DISABLED), _) => (
                EventType::Normal,
                "EndpointEnabled",
                "Enable",
                format!(
                    "the spec changed (generation {}): deliveries resume",
                    now.observed_generation.unwrap_or_default()
                ),
            ),
            _ => return,
        };
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &self.reference(key, uid))
            .await
        {
            tracing::warn!(policy = %key, error = %e, "cannot publish an Event");
        }
        if reason == "EndpointDisabled" {
            tracing::warn!(policy = %key, "webhook endpoint disabled after failing too long");
        }
    }

    fn reference(&self, key: &PolicyKey, uid: &str) -> ObjectReference {
        ObjectReference {
            api_version: Some(api_resource(key.kind).api_version),
            kind: Some(key.kind.as_str().into()),
            name: Some(key.name.clone()),
            namespace: Some(key.namespace.clone()),
            uid: Some(uid.to_string()),
            ..ObjectReference::default()
        }
    }

    async fn event(&self, key: &PolicyKey, uid: &str, status: &Status) {
        let Some(accepted) = status
            .policy
            .conditions
            .iter()
            .find(|c| c.type_ == condition::ACCEPTED)
        else {
            return;
        };
        let reference = self.reference(key, uid);
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
    mut ledger: signing::LedgerWriter,
    mut leader: watch::Receiver<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if *leader.borrow_and_update() {
            ledger.reconcile(&shared.index).await;
            writer.reconcile(&shared, &reports).await;
        } else {
            // A new term starts from what is stored.
            writer.forget();
            ledger.forget();
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
