//! The watches that feed the index, and the loop that recompiles what they change.
//!
//! Every watched type is one `kube::runtime::watcher` stream (which re-lists and backs off by
//! itself); they are merged, taken in batches of whatever is ready, applied to the index, and
//! only the pods a batch affects are recompiled: those of the namespaces where a policy, pod or
//! Secret changed, and, for a Service or EndpointSlice, the pods selected by the FailoverPolicies
//! that name it (and, for a Service declaring a port's protocol, the pods it selects). A pod's
//! snapshot is published only if its content changed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use bulwark_api::{
    crd::{FailoverPolicy, FeatureFlag, QuotaPolicy, RateLimitPolicy, WebhookEndpoint},
    snapshot::ObjectRef,
};
use futures::{StreamExt, stream::BoxStream};
use k8s_openapi::api::{
    core::v1::{Pod, Secret, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client, Resource,
    runtime::{WatchStreamExt, utils::Backoff, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, watch};

use crate::{
    compile,
    distribution::{Distributor, acks::AckBook},
    index::{Affected, Change, Index, InjectedPod, IntoObject, Kind, Watched},
    metrics::Metrics,
};

/// Retry delays of a failing watch: 0.5 s doubling to 5 s. kube's default grows to 30 s, which
/// would leave the operator unready that long after, say, the CRDs are installed late.
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(delay)
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// The label the injection webhook puts on every pod it gives a sidecar.
pub const INJECTED_LABEL: &str = "bulwark.dev/injected";

fn changes<K>(api: Api<K>, config: watcher::Config, watched: Watched) -> BoxStream<'static, Change>
where
    K: Resource + IntoObject + Clone + DeserializeOwned + Debug + Send + 'static,
{
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .filter_map(move |event| async move {
            match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => {
                    Some(Change::Upsert(o.into_object()))
                }
                Ok(watcher::Event::Delete(o)) => Some(Change::Delete(o.into_object())),
                Ok(watcher::Event::Init) => Some(Change::Resync(watched)),
                Ok(watcher::Event::InitDone) => Some(Change::Synced(watched)),
                Err(e) => {
                    tracing::warn!(?watched, error = %e, "watch failed; retrying with backoff");
                    None
                }
            }
        })
        .boxed()
}

/// Every watch the index needs, merged.
pub fn all_changes(client: &Client) -> BoxStream<'static, Change> {
    let all = watcher::Config::default;
    let policy = |kind| Watched::Policy(kind);
    futures::stream::select_all([
        changes(
            Api::<RateLimitPolicy>::all(client.clone()),
            all(),
            policy(Kind::RateLimitPolicy),
        ),
        changes(
            Api::<QuotaPolicy>::all(client.clone()),
            all(),
            policy(Kind::QuotaPolicy),
        ),
        changes(
            Api::<FeatureFlag>::all(client.clone()),
            all(),
            policy(Kind::FeatureFlag),
        ),
        changes(
            Api::<WebhookEndpoint>::all(client.clone()),
            all(),
            policy(Kind::WebhookEndpoint),
        ),
        changes(
            Api::<FailoverPolicy>::all(client.clone()),
            all(),
            policy(Kind::FailoverPolicy),
        ),
        // Only injected pods: the index never holds the cluster's other pods.
        changes(
            Api::<Pod>::all(client.clone()),
            all().labels(&format!("{INJECTED_LABEL}=true")),
            Watched::Pod,
        ),
        changes(Api::<Service>::all(client.clone()), all(), Watched::Service),
        changes(
            Api::<EndpointSlice>::all(client.clone()),
            all(),
            Watched::EndpointSlice,
        ),
        changes(Api::<Secret>::all(client.clone()), all(), Watched::Secret),
    ])
    .boxed()
}

/// What the index loop shares with the rest of the operator.
pub struct Shared {
    pub index: Arc<RwLock<Index>>,
    pub distributor: Arc<Distributor>,
    pub acks: Arc<AckBook>,
    pub metrics: Arc<Metrics>,
    /// Woken after every batch that changed something, for the status writer.
    pub changed: Arc<Notify>,
    /// The Redis given to pods with a Global policy.
    pub redis: Option<bulwark_api::snapshot::RedisConnection>,
    /// Pods whose Services disagree on the app protocol, with the last warning logged for each,
    /// so a recompile that changes nothing about it logs nothing.
    pub app_protocol_conflicts: Mutex<BTreeMap<ObjectRef, String>>,
}

/// Applies watch events until `changes` ends or shutdown.
pub async fn run(
    shared: Arc<Shared>,
    changes: BoxStream<'static, Change>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut batches = changes.ready_chunks(1024);
    loop {
        let batch = tokio::select! {
            batch = batches.next() => match batch { Some(b) => b, None => return },
            _ = shutdown.changed() => return,
        };
        apply_batch(&shared, batch);
    }
}

/// Applies one batch and republishes the pods it affects.
pub fn apply_batch(shared: &Shared, batch: Vec<Change>) {
    let started = Instant::now();
    let mut index = shared.index.write().expect("index lock");
    let was_synced = index.is_synced();
    let mut affected = Affected::Nothing;
    for change in batch {
        affected.merge(index.apply(change));
    }
    if !index.is_synced() {
        return; // nothing is served before the first full listing
    }
    if !was_synced {
        // The first complete listing: no pod has a snapshot yet, every one needs its first.
        affected = Affected::Everything;
    }
    let (namespaces, pods): (BTreeSet<String>, BTreeSet<ObjectRef>) = match affected {
        Affected::Nothing => {
            drop(index);
            shared.changed.notify_one(); // a status-only change may still matter to status
            return;
        }
        Affected::Only { namespaces, pods } => (namespaces, pods),
        Affected::Everything => {
            let mut ns: BTreeSet<String> = index.pods.keys().map(|p| p.namespace.clone()).collect();
            ns.extend(shared.distributor.pods().into_iter().map(|p| p.namespace));
            (ns, BTreeSet::new())
        }
    };
    // Namespace by namespace (verdicts are per namespace): all its pods, or only some.
    let mut work: BTreeMap<&str, Option<Vec<&ObjectRef>>> = BTreeMap::new();
    for namespace in &namespaces {
        work.insert(namespace, None);
    }
    for pod in &pods {
        if let Some(some) = work
            .entry(&pod.namespace)
            .or_insert_with(|| Some(Vec::new()))
        {
            some.push(pod);
        }
    }
    let (mut compiled_pods, mut published) = (0, 0);
    for (namespace, only) in work {
        let verdicts = compile::verdicts_in(&index, namespace);
        let chosen: Vec<(&ObjectRef, &InjectedPod)> = match only {
            None => index.pods_in(namespace).collect(),
            Some(refs) => refs
                .into_iter()
                .filter_map(|r| index.pods.get_key_value(r))
                .collect(),
        };
        for (pod_ref, pod) in chosen {
            let compiled =
                compile::pod_snapshot(&index, pod_ref, pod, &verdicts, shared.redis.as_ref());
            note_app_protocol_conflict(shared, pod_ref, compiled.app_protocol_conflict.as_ref());
            compiled_pods += 1;
            if shared.distributor.publish(pod_ref, &pod.uid, compiled) {
                published += 1;
            }
        }
    }
    // Pods that left the index: their streams end, their acknowledgements go.
    for pod in shared.distributor.pods() {
        if namespaces.contains(&pod.namespace) && !index.pods.contains_key(&pod) {
            shared.distributor.remove(&pod);
            shared.acks.forget(&pod);
        }
    }
    shared
        .app_protocol_conflicts
        .lock()
        .expect("conflicts lock")
        .retain(|pod, _| index.pods.contains_key(pod));
    let m = &shared.metrics;
    m.index_objects
        .with_label_values(&["policy"])
        .set(index.policies.len() as i64);
    m.index_objects
        .with_label_values(&["pod"])
        .set(index.pods.len() as i64);
    m.index_objects
        .with_label_values(&["service"])
        .set(index.services.len() as i64);
    m.index_objects
        .with_label_values(&["endpointslice"])
        .set(index.slices.len() as i64);
    m.index_objects
        .with_label_values(&["secret"])
        .set(index.secrets.len() as i64);
    drop(index);
    shared.distributor.set_synced();
    m.pods.set(shared.distributor.len() as i64);
    m.snapshots_compiled.inc_by(compiled_pods);
    m.snapshots_published.inc_by(published);
    m.compile_seconds.observe(started.elapsed().as_secs_f64());
    shared.changed.notify_one();
}

/// Logs a pod's Services disagreeing on its app protocol once per change: when it starts, when
/// what they say changes, and when it ends.
fn note_app_protocol_conflict(shared: &Shared, pod: &ObjectRef, conflict: Option<&String>) {
    let mut conflicts = shared
        .app_protocol_conflicts
        .lock()
        .expect("conflicts lock");
    match conflict {
        Some(why) if conflicts.get(pod) != Some(why) => {
            tracing::warn!(pod = %format!("{}/{}", pod.namespace, pod.name), "{why}");
            conflicts.insert(pod.clone(), why.clone());
        }
        Some(_) => {}
        None => {
            if conflicts.remove(pod).is_some() {
                tracing::info!(
                    pod = %format!("{}/{}", pod.namespace, pod.name),
                    "the Services targeting the app port no longer disagree on its protocol"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Object;
    use bulwark_api::snapshot::AppProtocol;

    fn object<T: DeserializeOwned + IntoObject>(yaml: &str) -> Object {
        serde_yaml::from_str::<T>(yaml).unwrap().into_object()
    }

    fn pod(name: &str, app: &str) -> Change {
        Change::Upsert(object::<Pod>(&format!(
            "metadata: {{name: {name}, namespace: shop, uid: u-{name}, labels: {{app: {app}}}}}"
        )))
    }

    /// An EndpointSlice of `service` in `shop` with `ports` (name: number) and ready `addresses`.
    fn slice(name: &str, service: &str, ports: &str, addresses: &str) -> Change {
        Change::Upsert(object::<EndpointSlice>(&format!(
            r#"
metadata: {{name: {name}, namespace: shop, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{ports}]
endpoints: [{{addresses: [{addresses}], zone: zone-a}}]
"#
        )))
    }

    fn shared() -> Shared {
        Shared {
            index: Arc::default(),
            distributor: Arc::default(),
            acks: Arc::default(),
            metrics: Arc::new(Metrics::new().unwrap()),
            changed: Arc::default(),
            redis: None,
            app_protocol_conflicts: Mutex::default(),
        }
    }

    #[test]
    fn an_endpointslice_change_recompiles_and_sends_only_to_the_pods_that_use_its_service() {
        let shared = shared();
        let mut first: Vec<Change> = Watched::ALL.iter().map(|w| Change::Resync(*w)).collect();
        first.extend([
            pod("api-0", "api"),
            pod("api-1", "api"),
            pod("web-0", "web"),
            Change::Upsert(object::<FailoverPolicy>(
                r#"
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: pay, namespace: shop, generation: 1}
spec:
  selector: {matchLabels: {app: api}}
  upstreams:
  - name: payments
    match: {hosts: [payments]}
    groups: [{name: primary, backends: [{service: {name: payments, port: 80}}]}]
"#,
            )),
            Change::Upsert(object::<Service>(
                "metadata: {name: payments, namespace: shop}\n\
                 spec: {ports: [{name: http, port: 80}]}",
            )),
            Change::Upsert(object::<Service>(
                "metadata: {name: ledger, namespace: shop}\n\
                 spec: {ports: [{name: http, port: 80}]}",
            )),
            slice(
                "payments-a",
                "payments",
                "{name: http, port: 8080}",
                "10.0.0.1",
            ),
        ]);
        first.extend(Watched::ALL.iter().map(|w| Change::Synced(*w)));
        apply_batch(&shared, first);
        let compiled = || shared.metrics.snapshots_compiled.get();
        let published = || shared.metrics.snapshots_published.get();
        assert_eq!(
            (compiled(), published()),
            (3, 3),
            "the first listing: every pod"
        );

        let r = |name: &str| ObjectRef {
            namespace: "shop".into(),
            name: name.into(),
        };
        let mut streams: Vec<_> = ["api-0", "api-1", "web-0"]
            .iter()
            .map(|p| shared.distributor.subscribe(&r(p)).unwrap())
            .collect();
        let mut changed = || -> Vec<bool> {
            streams
                .iter_mut()
                .map(|rx| {
                    let changed = rx.has_changed().unwrap();
                    rx.mark_unchanged();
                    changed
                })
                .collect()
        };
        changed();
        let endpoints = |pod: &str| {
            let rx = shared.distributor.subscribe(&r(pod)).unwrap();
            let published = rx.borrow();
            published
                .snapshot
                .endpoints
                .get("shop/payments:80")
                .cloned()
        };
        assert_eq!(endpoints("api-0").unwrap()[0].address, "10.0.0.1:8080");
        assert_eq!(endpoints("web-0"), None);

        // A new endpoint: compiled for the two users only, and sent to them.
        apply_batch(
            &shared,
            vec![slice(
                "payments-a",
                "payments",
                "{name: http, port: 8080}",
                "10.0.0.1, 10.0.0.2",
            )],
        );
        assert_eq!((compiled(), published()), (5, 5));
        assert_eq!(changed(), [true, true, false]);
        assert_eq!(endpoints("api-1").unwrap().len(), 2);

        // A slice change the snapshots do not show (a port no backend uses): compiled for the
        // users, but the content is the same, so nothing is sent.
        apply_batch(
            &shared,
            vec![slice(
                "payments-a",
                "payments",
                "{name: http, port: 8080}, {name: admin, port: 9000}",
                "10.0.0.1, 10.0.0.2",
            )],
        );
        assert_eq!((compiled(), published()), (7, 5));
        assert_eq!(changed(), [false, false, false]);

        // A Service no policy names, and its slices: nothing compiled at all.
        apply_batch(
            &shared,
            vec![
                slice("ledger-a", "ledger", "{name: http, port: 8080}", "10.5.0.1"),
                Change::Upsert(object::<Service>(
                    "metadata: {name: ledger, namespace: shop}\n\
                     spec: {ports: [{name: grpc, port: 80}]}",
                )),
            ],
        );
        assert_eq!((compiled(), published()), (7, 5));

        // The Service's port goes: the policy is RefNotFound and leaves the users' snapshots.
        apply_batch(
            &shared,
            vec![Change::Upsert(object::<Service>(
                "metadata: {name: payments, namespace: shop}\n\
                 spec: {ports: [{name: http, port: 81}]}",
            ))],
        );
        assert_eq!((compiled(), published()), (9, 7));
        assert_eq!(changed(), [true, true, false]);
        assert_eq!(endpoints("api-0"), None);
    }

    #[test]
    fn a_service_declaring_a_protocol_recompiles_and_sends_only_to_the_pods_it_selects() {
        let shared = shared();
        let service = |name: &str, spec: &str| {
            Change::Upsert(object::<Service>(&format!(
                "metadata: {{name: {name}, namespace: shop}}\nspec: {{{spec}}}"
            )))
        };
        let mut first: Vec<Change> = Watched::ALL.iter().map(|w| Change::Resync(*w)).collect();
        first.extend([
            pod("api-0", "api"),
            pod("api-1", "api"),
            pod("web-0", "web"),
        ]);
        first.extend(Watched::ALL.iter().map(|w| Change::Synced(*w)));
        apply_batch(&shared, first);
        let counts = || {
            (
                shared.metrics.snapshots_compiled.get(),
                shared.metrics.snapshots_published.get(),
            )
        };
        assert_eq!(counts(), (3, 3));
        let protocol = |name: &str| {
            let r = ObjectRef {
                namespace: "shop".into(),
                name: name.into(),
            };
            let rx = shared.distributor.subscribe(&r).unwrap();
            rx.borrow().snapshot.app_protocol
        };

        // The pods' app port is 8080 (no containerPort).
        apply_batch(
            &shared,
            vec![service(
                "api",
                "selector: {app: api}, ports: [{port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}]",
            )],
        );
        assert_eq!(counts(), (5, 5), "api-0 and api-1 only");
        assert_eq!(
            [protocol("api-0"), protocol("api-1"), protocol("web-0")],
            [Some(AppProtocol::H2c), Some(AppProtocol::H2c), None]
        );
        // A Service declaring nothing: nothing compiled.
        apply_batch(
            &shared,
            vec![service(
                "plain",
                "selector: {app: api}, ports: [{name: http, port: 80}]",
            )],
        );
        assert_eq!(counts(), (5, 5));

        // A second Service disagrees: no protocol, and the conflict is noted once.
        let http = service(
            "api-http",
            "selector: {app: api}, ports: [{port: 81, targetPort: 8080, appProtocol: http}]",
        );
        apply_batch(&shared, vec![http.clone()]);
        assert_eq!(counts(), (7, 7));
        assert_eq!(protocol("api-0"), None);
        let noted = || -> Vec<String> {
            let conflicts = shared.app_protocol_conflicts.lock().unwrap();
            conflicts.keys().map(|r| r.name.clone()).collect()
        };
        assert_eq!(noted(), ["api-0", "api-1"]);
        // Deleted: the other Service decides again, and the conflict is over.
        let Change::Upsert(http) = http else {
            unreachable!()
        };
        apply_batch(&shared, vec![Change::Delete(http)]);
        assert_eq!(counts(), (9, 9));
        assert_eq!(protocol("api-1"), Some(AppProtocol::H2c));
        assert!(noted().is_empty());
    }

    #[test]
    fn watch_retries_double_to_five_seconds_and_start_over_after_a_success() {
        let mut backoff = WatchBackoff::default();
        let delays: Vec<u64> = (0..6)
            .map(|_| backoff.next().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.next(), Some(Duration::from_millis(500)));
    }
}
