//! What the watches have seen, in one place: Bulwark policies, injected pods, and the Services,
//! EndpointSlices and Secrets that policies reference.
//!
//! The index is plain data, changed only by [`Index::apply`] with the watch events of
//! `watch.rs`, and read by the compiler and the status writer. Each watched type can be re-listed
//! at any time (a watch that expired): between [`Change::Resync`] and [`Change::Synced`] the index
//! notes what it sees, and on `Synced` forgets the objects of that type that were not seen again.
//!
//! Each change says whose snapshots it may change ([`Affected`]). A policy or pod change: its
//! namespace. A Service or EndpointSlice change: only the pods selected by the FailoverPolicies
//! that name the Service as a backend, found through a reverse reference
//! ([`Index::service_users`]) kept in step with every FailoverPolicy change; and, for a Service
//! that says what protocol a port speaks (before or after the change), the injected pods of its
//! namespace its selector matches (their app protocol, `compile::app_protocol`).

use std::collections::{BTreeMap, BTreeSet};

use bulwark_api::{
    crd::{
        FailoverPolicy, FailoverPolicySpec, FeatureFlag, FeatureFlagSpec, QuotaPolicy,
        QuotaPolicySpec, RateLimitPolicy, RateLimitPolicySpec, WebhookEndpoint,
        WebhookEndpointSpec,
        common::{JwtVerification, PolicyStatus, ReadsBearerTokens, condition},
        webhook::WebhookEndpointStatus,
    },
    snapshot::{AppProtocol, ObjectRef},
};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
    jiff::Timestamp,
};
use kube::{
    Resource, ResourceExt,
    core::{Selector, SelectorExt},
};

/// The reason of a WebhookEndpoint's `Delivering=False` condition once the leader disabled it.
pub const AUTO_DISABLED: &str = "AutoDisabled";

/// The five Bulwark kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    RateLimitPolicy,
    QuotaPolicy,
    FeatureFlag,
    WebhookEndpoint,
    FailoverPolicy,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::RateLimitPolicy,
        Kind::QuotaPolicy,
        Kind::FeatureFlag,
        Kind::WebhookEndpoint,
        Kind::FailoverPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RateLimitPolicy => "RateLimitPolicy",
            Kind::QuotaPolicy => "QuotaPolicy",
            Kind::FeatureFlag => "FeatureFlag",
            Kind::WebhookEndpoint => "WebhookEndpoint",
            Kind::FailoverPolicy => "FailoverPolicy",
        }
    }
}

/// A policy's identity. Ordered by namespace first, so a namespace's policies are one range of
/// the index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyKey {
    pub namespace: String,
    pub kind: Kind,
    pub name: String,
}

impl std::fmt::Display for PolicyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.as_str(), self.namespace, self.name)
    }
}

/// The spec of a policy of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Spec {
    RateLimit(RateLimitPolicySpec),
    Quota(QuotaPolicySpec),
    FeatureFlag(FeatureFlagSpec),
    Webhook(WebhookEndpointSpec),
    Failover(FailoverPolicySpec),
}

impl Spec {
    fn selector(&self) -> &LabelSelector {
        match self {
            Spec::RateLimit(s) => &s.selector,
            Spec::Quota(s) => &s.selector,
            Spec::FeatureFlag(s) => &s.selector,
            Spec::Webhook(s) => &s.selector,
            Spec::Failover(s) => &s.selector,
        }
    }

    /// The policy's `jwt.verification`, if it verifies bearer tokens.
    pub fn jwt_verification(&self) -> Option<&JwtVerification> {
        match self {
            Spec::RateLimit(s) => s.jwt_verification(),
            Spec::Quota(s) => s.jwt_verification(),
            Spec::FeatureFlag(s) => s.jwt_verification(),
            Spec::Webhook(_) | Spec::Failover(_) => None,
        }
    }
}

/// One policy as last seen.
#[derive(Clone, Debug)]
pub struct Policy {
    pub uid: String,
    pub generation: i64,
    /// Older policies win conflicts (then the name decides), as in Gateway API.
    pub created: Option<Timestamp>,
    /// `None` when the selector cannot be read (then it selects nothing, and status says so).
    pub selector: Option<Selector>,
    pub spec: Spec,
    /// The status as stored, so the status writer only writes what changed.
    pub status: Option<PolicyStatus>,
    /// A WebhookEndpoint's whole stored status (delivery counts, last failure), for the status
    /// writer; `None` for the other kinds.
    pub webhook_status: Option<Box<WebhookEndpointStatus>>,
    /// A WebhookEndpoint the leader disabled at this generation (condition `Delivering` is
    /// `False`, reason `AutoDisabled`, for this generation): its snapshots say `disabled`.
    pub auto_disabled: bool,
}

impl Policy {
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_some_and(|s| s.matches(labels))
    }
}

/// A pod the injection webhook gave a sidecar (label `bulwark.dev/injected=true`).
#[derive(Clone, Debug, PartialEq)]
pub struct InjectedPod {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The port the sidecar forwards to, as the injector chose it ([`crate::inject::app_port`]);
    /// `None` when the pod's `bulwark.dev/app-port` no longer reads as a port.
    pub app_port: Option<u16>,
    /// The named TCP ports of the pod's containers, name to number (the first of each name, as
    /// Kubernetes resolves a Service's named `targetPort`).
    pub named_ports: BTreeMap<String, u16>,
}

/// A Service, reduced to what the operator uses: which pods it selects and its ports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IndexedService {
    /// `spec.selector`. Empty when absent or empty: such a Service (its endpoints managed by
    /// hand) selects no pod.
    pub selector: BTreeMap<String, String>,
    pub ports: Vec<ServicePort>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    /// `targetPort`; the port itself when absent.
    pub target_port: TargetPort,
    /// `appProtocol`, as written.
    pub app_protocol: Option<String>,
}

/// A Service port's `targetPort`: a number, or the name of a container port of each pod.
#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

impl IndexedService {
    /// Whether the Service selects a pod with `labels` (never, without a selector).
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selector.is_empty()
            && self
                .selector
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }

    /// Whether some port says what protocol it speaks ([`ServicePort::protocol`]): only then
    /// can the Service change a selected pod's app protocol.
    pub fn declares_a_protocol(&self) -> bool {
        self.ports.iter().any(|p| p.protocol().is_some())
    }
}

impl ServicePort {
    /// The pod port this Service port sends to, for `pod` (`None`: a name no container of the
    /// pod has, so the port sends the pod nothing).
    pub fn target_on(&self, pod: &InjectedPod) -> Option<u16> {
        match &self.target_port {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => pod.named_ports.get(name).copied(),
        }
    }

    /// What the port says its pods speak (docs/http2-grpc.md, "How the app protocol is chosen"):
    /// its `appProtocol` when it has one (`kubernetes.io/h2c`, `grpc`: h2c; `http`,
    /// `kubernetes.io/http`, `kubernetes.io/ws`: HTTP/1.1; anything else, `grpc-web` and
    /// `https` included: nothing), else its name as Istio reads it (`grpc`, `grpc-*`, `h2c`,
    /// `h2c-*`: h2c; but `grpc-web`, `grpc-web-*` is gRPC-Web, which is HTTP/1-compatible:
    /// nothing). The `kubernetes.io/` values are matched exactly, as Kubernetes defines them;
    /// the bare ones in any case.
    pub fn protocol(&self) -> Option<AppProtocol> {
        if let Some(declared) = &self.app_protocol {
            return match declared.as_str() {
                "kubernetes.io/h2c" => Some(AppProtocol::H2c),
                "kubernetes.io/http" | "kubernetes.io/ws" => Some(AppProtocol::Http1),
                bare if bare.eq_ignore_ascii_case("grpc") => Some(AppProtocol::H2c),
                bare if bare.eq_ignore_ascii_case("http") => Some(AppProtocol::Http1),
                _ => None,
            };
        }
        let name = self.name.as_str();
        let is = |prefix: &str| name == prefix || name.starts_with(&format!("{prefix}-"));
        if is("grpc-web") {
            None
        } else if is("grpc") || is("h2c") {
            Some(AppProtocol::H2c)
        } else {
            None
        }
    }
}

/// One EndpointSlice reduced to what failover needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// (port name, port number).
    pub ports: Vec<(String, u16)>,
    /// Ready endpoints, one per address.
    pub ready: Vec<SliceEndpoint>,
}

/// One address of a ready endpoint of an EndpointSlice.
#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    pub address: String,
    pub zone: Option<String>,
    pub node_name: Option<String>,
}

/// A watched type: what [`Change::Resync`] and [`Change::Synced`] concern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    Policy(Kind),
    Pod,
    Service,
    EndpointSlice,
    Secret,
}

impl Watched {
    pub const ALL: [Watched; 9] = [
        Watched::Policy(Kind::RateLimitPolicy),
        Watched::Policy(Kind::QuotaPolicy),
        Watched::Policy(Kind::FeatureFlag),
        Watched::Policy(Kind::WebhookEndpoint),
        Watched::Policy(Kind::FailoverPolicy),
        Watched::Pod,
        Watched::Service,
        Watched::EndpointSlice,
        Watched::Secret,
    ];
}

/// An object of any watched type, reduced to what the index keeps.
#[derive(Clone, Debug)]
pub enum Object {
    Policy(PolicyKey, Box<Policy>),
    Pod(ObjectRef, InjectedPod),
    Service(ObjectRef, IndexedService),
    EndpointSlice(ObjectRef, Slice),
    Secret(ObjectRef, BTreeMap<String, Vec<u8>>),
}

/// One watch event.
#[derive(Clone, Debug)]
pub enum Change {
    Upsert(Object),
    Delete(Object),
    /// A (re-)list of this type begins.
    Resync(Watched),
    /// The (re-)list is complete: objects of this type not seen since `Resync` are gone.
    Synced(Watched),
}

/// The pods a change concerns: they may need a new snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Affected {
    #[default]
    Nothing,
    /// Every pod of `namespaces` (a policy or pod changed there: verdicts, conflicts and
    /// selections may all move), and the pods in `pods` (a Service or EndpointSlice changed:
    /// only the pods selected by the FailoverPolicies that name the Service, and those the
    /// Service selects when it declares a port's protocol).
    Only {
        namespaces: BTreeSet<String>,
        pods: BTreeSet<ObjectRef>,
    },
    /// Every pod. The index never says this; the loop does, on the first complete listing,
    /// when no pod has a snapshot yet.
    Everything,
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        *self = match (std::mem::take(self), other) {
            (Affected::Everything, _) | (_, Affected::Everything) => Affected::Everything,
            (Affected::Nothing, x) | (x, Affected::Nothing) => x,
            (
                Affected::Only {
                    mut namespaces,
                    mut pods,
                },
                Affected::Only {
                    namespaces: more_namespaces,
                    pods: more_pods,
                },
            ) => {
                namespaces.extend(more_namespaces);
                pods.extend(more_pods);
                Affected::Only { namespaces, pods }
            }
        }
    }

    pub fn namespace(ns: &str) -> Self {
        Affected::Only {
            namespaces: BTreeSet::from([ns.to_string()]),
            pods: BTreeSet::new(),
        }
    }

    /// These pods; `Nothing` if there are none.
    pub fn pods(pods: impl IntoIterator<Item = ObjectRef>) -> Self {
        let pods: BTreeSet<ObjectRef> = pods.into_iter().collect();
        if pods.is_empty() {
            Affected::Nothing
        } else {
            Affected::Only {
                namespaces: BTreeSet::new(),
                pods,
            }
        }
    }
}

#[derive(Default)]
pub struct Index {
    pub policies: BTreeMap<PolicyKey, Policy>,
    pub pods: BTreeMap<ObjectRef, InjectedPod>,
    pub services: BTreeMap<ObjectRef, IndexedService>,
    /// Keyed by the slice's own name.
    pub slices: BTreeMap<ObjectRef, Slice>,
    pub secrets: BTreeMap<ObjectRef, BTreeMap<String, Vec<u8>>>,
    /// The reverse references of FailoverPolicies: each Service (`namespace/name`) a policy
    /// names as a backend, to those policies. Kept in step with `policies` by every change, so
    /// a Service or EndpointSlice change finds the pods it concerns without scanning policies.
    service_users: BTreeMap<ObjectRef, BTreeSet<PolicyKey>>,
    /// The operator's signing-key ledger Secret (`signing`), when configured, and what it holds.
    signing_secret: Option<ObjectRef>,
    signing: crate::signing::Ledger,
    /// Types whose first list is complete.
    synced: BTreeSet<Watched>,
    /// Keys seen during a re-list in progress, per type.
    resyncing: BTreeMap<Watched, BTreeSet<String>>,
}

impl Object {
    fn watched(&self) -> Watched {
        match self {
            Object::Policy(key, _) => Watched::Policy(key.kind),
            Object::Pod(..) => Watched::Pod,
            Object::Service(..) => Watched::Service,
            Object::EndpointSlice(..) => Watched::EndpointSlice,
            Object::Secret(..) => Watched::Secret,
        }
    }

    /// A key unique within the object's type, for re-list bookkeeping.
    fn key(&self) -> String {
        let r = match self {
            Object::Policy(key, _) => return format!("{}/{}", key.namespace, key.name),
            Object::Pod(r, _)
            | Object::Service(r, _)
            | Object::EndpointSlice(r, _)
            | Object::Secret(r, _) => r,
        };
        format!("{}/{}", r.namespace, r.name)
    }
}

impl Index {
    /// An index that reads the WebhookEndpoint signing-key ledger from `secret` (the operator's
    /// own Secret, see `signing`).
    pub fn with_signing_ledger(secret: ObjectRef) -> Self {
        Self {
            signing_secret: Some(secret),
            ..Self::default()
        }
    }

    /// The signing-key ledger as last seen.
    pub fn signing_ledger(&self) -> &crate::signing::Ledger {
        &self.signing
    }

    /// After the ledger Secret changed: the namespaces whose endpoints' entries moved.
    fn ledger_changed(&mut self, data: Option<&BTreeMap<String, Vec<u8>>>) -> Affected {
        let ledger = data.map(crate::signing::Ledger::parse).unwrap_or_default();
        let changed = ledger.changed_since(&self.signing);
        self.signing = ledger;
        let mut affected = Affected::Nothing;
        for id in changed {
            if let Some((namespace, _)) = id.split_once('/') {
                affected.merge(Affected::namespace(namespace));
            }
        }
        affected
    }

    /// Whether every watched type has been listed once: before that, a snapshot could miss
    /// policies that exist, so none is served.
    pub fn is_synced(&self) -> bool {
        Watched::ALL.iter().all(|w| self.synced.contains(w))
    }

    /// Applies one watch event; returns whose snapshots it may change.
    pub fn apply(&mut self, change: Change) -> Affected {
        match change {
            Change::Upsert(object) => {
                if let Some(seen) = self.resyncing.get_mut(&object.watched()) {
                    seen.insert(object.key());
                }
                self.upsert(object)
            }
            Change::Delete(object) => self.remove(&object),
            Change::Resync(watched) => {
                self.resyncing.insert(watched, BTreeSet::new());
                Affected::Nothing
            }
            Change::Synced(watched) => {
                self.synced.insert(watched);
                let seen = self.resyncing.remove(&watched).unwrap_or_default();
                self.forget_unseen(watched, &seen)
            }
        }
    }

    fn upsert(&mut self, object: Object) -> Affected {
        match object {
            Object::Policy(key, policy) => {
                // A status-only update changes no snapshot, unless it disables a WebhookEndpoint
                // (or no longer does).
                let before = self
                    .policies
                    .get(&key)
                    .map(|p| (p.generation, p.uid.clone(), p.auto_disabled));
                let same =
                    before == Some((policy.generation, policy.uid.clone(), policy.auto_disabled));
                let namespace = key.namespace.clone();
                self.insert_policy(key, *policy);
                if same {
                    Affected::Nothing
                } else {
                    Affected::namespace(&namespace)
                }
            }
            Object::Pod(r, pod) => {
                let namespace = r.namespace.clone();
                if self.pods.insert(r, pod.clone()).as_ref() == Some(&pod) {
                    return Affected::Nothing;
                }
                Affected::namespace(&namespace)
            }
            Object::Service(r, s) => {
                let before = self.services.insert(r.clone(), s.clone());
                if before.as_ref() == Some(&s) {
                    return Affected::Nothing;
                }
                // A selector change moves pods: those selected before and those selected now.
                let mut affected = self.users_of(&r);
                affected.merge(self.fronted_by(&r.namespace, before.as_ref()));
                affected.merge(self.fronted_by(&r.namespace, Some(&s)));
                affected
            }
            Object::EndpointSlice(r, s) => {
                let before = self.slices.insert(r.clone(), s.clone());
                if before.as_ref() == Some(&s) {
                    return Affected::Nothing;
                }
                let mut affected = self.users_of(&slice_service(&r, &s));
                // A slice relabelled to another Service leaves the first one too.
                if let Some(before) = before.filter(|b| b.service != s.service) {
                    affected.merge(self.users_of(&slice_service(&r, &before)));
                }
                affected
            }
            Object::Secret(r, s) => {
                let namespace = r.namespace.clone();
                let ledger = self.signing_secret.as_ref() == Some(&r);
                if self.secrets.insert(r, s.clone()).as_ref() == Some(&s) {
                    return Affected::Nothing;
                }
                let mut affected = Affected::namespace(&namespace);
                if ledger {
                    affected.merge(self.ledger_changed(Some(&s)));
                }
                affected
            }
        }
    }

    fn remove(&mut self, object: &Object) -> Affected {
        match object {
            Object::Policy(key, _) => match self.remove_policy(key) {
                true => Affected::namespace(&key.namespace),
                false => Affected::Nothing,
            },
            Object::Pod(r, _) => match self.pods.remove(r) {
                Some(_) => Affected::namespace(&r.namespace),
                None => Affected::Nothing,
            },
            Object::Service(r, _) => match self.services.remove(r) {
                Some(before) => {
                    let mut affected = self.users_of(r);
                    affected.merge(self.fronted_by(&r.namespace, Some(&before)));
                    affected
                }
                None => Affected::Nothing,
            },
            Object::EndpointSlice(r, _) => match self.slices.remove(r) {
                Some(slice) => self.users_of(&slice_service(r, &slice)),
                None => Affected::Nothing,
            },
            Object::Secret(r, _) => match self.secrets.remove(r) {
                Some(_) => {
                    let mut affected = Affected::namespace(&r.namespace);
                    if self.signing_secret.as_ref() == Some(r) {
                        affected.merge(self.ledger_changed(None));
                    }
                    affected
                }
                None => Affected::Nothing,
            },
        }
    }

    /// After a re-list: removes what was not seen again, each as its own deletion would (so a
    /// re-list is as precise as the events it replaces).
    fn forget_unseen(&mut self, watched: Watched, seen: &BTreeSet<String>) -> Affected {
        let gone: Vec<Object> = match watched {
            Watched::Policy(kind) => self
                .policies
                .iter()
                .filter(|(k, _)| {
                    k.kind == kind && !seen.contains(&format!("{}/{}", k.namespace, k.name))
                })
                .map(|(k, p)| Object::Policy(k.clone(), Box::new(p.clone())))
                .collect(),
            Watched::Pod => unseen(&self.pods, seen)
                .map(|r| Object::Pod(r, InjectedPod::gone()))
                .collect(),
            Watched::Service => unseen(&self.services, seen)
                .map(|r| Object::Service(r, IndexedService::default()))
                .collect(),
            Watched::EndpointSlice => unseen(&self.slices, seen)
                .map(|r| Object::EndpointSlice(r, Slice::gone()))
                .collect(),
            Watched::Secret => unseen(&self.secrets, seen)
                .map(|r| Object::Secret(r, BTreeMap::new()))
                .collect(),
        };
        let mut affected = Affected::Nothing;
        for object in &gone {
            affected.merge(self.remove(object));
        }
        affected
    }

    fn insert_policy(&mut self, key: PolicyKey, policy: Policy) {
        let services = backend_services(&key, &policy.spec);
        if let Some(before) = self.policies.insert(key.clone(), policy) {
            self.unlink(&key, &before.spec);
        }
        for service in services {
            self.service_users
                .entry(service)
                .or_default()
                .insert(key.clone());
        }
    }

    fn remove_policy(&mut self, key: &PolicyKey) -> bool {
        match self.policies.remove(key) {
            Some(before) => {
                self.unlink(key, &before.spec);
                true
            }
            None => false,
        }
    }

    /// Drops `key`'s reverse references (those of its spec `spec`).
    fn unlink(&mut self, key: &PolicyKey, spec: &Spec) {
        for service in backend_services(key, spec) {
            if let Some(users) = self.service_users.get_mut(&service) {
                users.remove(key);
                if users.is_empty() {
                    self.service_users.remove(&service);
                }
            }
        }
    }

    /// The FailoverPolicies that name `service` as a backend.
    pub fn service_users(&self, service: &ObjectRef) -> impl Iterator<Item = &PolicyKey> + '_ {
        self.service_users.get(service).into_iter().flatten()
    }

    /// The pods whose snapshots a change of `service` (its ports, its EndpointSlices) may
    /// change: those selected by the FailoverPolicies naming it. Their endpoints come from it,
    /// and their verdicts (`RefNotFound` while it or its port is missing) depend on it. No
    /// other policy's verdict does: conflicts are decided by age whatever the verdicts
    /// (`compile::conflicts_in`), so a policy that becomes Accepted or not moves no other one.
    fn users_of(&self, service: &ObjectRef) -> Affected {
        Affected::pods(self.service_users(service).flat_map(|key| {
            self.policies
                .get(key)
                .into_iter()
                .flat_map(move |policy| self.selected_pods(key, policy))
                .map(|(r, _)| r.clone())
        }))
    }

    /// The pods whose app protocol `service` (in `namespace`, as it is or was) may decide: those
    /// it selects, if one of its ports declares a protocol. A Service that declares none changes
    /// no pod's app protocol, so the namespace's pods are not even scanned for it.
    fn fronted_by(&self, namespace: &str, service: Option<&IndexedService>) -> Affected {
        let Some(service) = service.filter(|s| s.declares_a_protocol()) else {
            return Affected::Nothing;
        };
        Affected::pods(
            self.pods_in(namespace)
                .filter(|(_, pod)| service.selects(&pod.labels))
                .map(|(r, _)| r.clone()),
        )
    }

    /// The pods `policy` selects, in its namespace.
    pub fn selected_pods<'a>(
        &'a self,
        key: &'a PolicyKey,
        policy: &'a Policy,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a InjectedPod)> + 'a {
        self.pods_in(&key.namespace)
            .filter(move |(_, pod)| policy.selects(&pod.labels))
    }

    pub fn pods_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a InjectedPod)> + 'a {
        in_namespace(&self.pods, namespace)
    }

    /// The Services of `namespace`.
    pub fn services_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a IndexedService)> + 'a {
        in_namespace(&self.services, namespace)
    }

    /// The EndpointSlices of `namespace`.
    pub fn slices_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a ObjectRef, &'a Slice)> + 'a {
        in_namespace(&self.slices, namespace)
    }

    pub fn policies_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = (&'a PolicyKey, &'a Policy)> + 'a {
        let start = PolicyKey {
            namespace: namespace.to_string(),
            kind: Kind::ALL[0],
            name: String::new(),
        };
        self.policies
            .range(start..)
            .take_while(move |(k, _)| k.namespace == namespace)
    }
}

/// The keys of `map` a re-list did not see again.
fn unseen<'a, V>(
    map: &'a BTreeMap<ObjectRef, V>,
    seen: &'a BTreeSet<String>,
) -> impl Iterator<Item = ObjectRef> + 'a {
    map.keys()
        .filter(|r| !seen.contains(&format!("{}/{}", r.namespace, r.name)))
        .cloned()
}

/// The Services a FailoverPolicy names as backends (`namespace` defaults to the policy's).
fn backend_services(key: &PolicyKey, spec: &Spec) -> BTreeSet<ObjectRef> {
    let Spec::Failover(spec) = spec else {
        return BTreeSet::new();
    };
    spec.upstreams
        .iter()
        .flat_map(|u| &u.groups)
        .flat_map(|g| &g.backends)
        .filter_map(|b| b.service.as_ref())
        .map(|s| ObjectRef {
            namespace: s.namespace.clone().unwrap_or_else(|| key.namespace.clone()),
            name: s.name.clone(),
        })
        .collect()
}

/// The Service an EndpointSlice (`r`) belongs to.
fn slice_service(r: &ObjectRef, slice: &Slice) -> ObjectRef {
    ObjectRef {
        namespace: r.namespace.clone(),
        name: slice.service.clone(),
    }
}

impl InjectedPod {
    /// A placeholder for a deletion, which only needs the key.
    fn gone() -> Self {
        Self {
            uid: String::new(),
            labels: BTreeMap::new(),
            app_port: None,
            named_ports: BTreeMap::new(),
        }
    }
}

impl Slice {
    /// A placeholder for a deletion, which only needs the key.
    fn gone() -> Self {
        Self {
            service: String::new(),
            ports: Vec::new(),
            ready: Vec::new(),
        }
    }
}

// ---- From Kubernetes objects -------------------------------------------------------------------

fn object_ref<K: Resource>(obj: &K) -> ObjectRef {
    ObjectRef {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

fn policy<K: Resource>(kind: Kind, obj: &K, spec: Spec, status: Option<PolicyStatus>) -> Object {
    policy_with(kind, obj, spec, status, None)
}

fn policy_with<K: Resource>(
    kind: Kind,
    obj: &K,
    spec: Spec,
    status: Option<PolicyStatus>,
    webhook_status: Option<WebhookEndpointStatus>,
) -> Object {
    let meta = obj.meta();
    let selector = Selector::try_from(spec.selector().clone()).ok();
    let generation = meta.generation.unwrap_or_default();
    let auto_disabled = status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == condition::DELIVERING
                && c.status == "False"
                && c.reason == AUTO_DISABLED
                && c.observed_generation == Some(generation)
        })
    });
    Object::Policy(
        PolicyKey {
            kind,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        },
        Box::new(Policy {
            uid: meta.uid.clone().unwrap_or_default(),
            generation,
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            selector,
            spec,
            status,
            webhook_status: webhook_status.map(Box::new),
            auto_disabled,
        }),
    )
}

/// Conversions from the watched Kubernetes types.
pub trait IntoObject {
    fn into_object(self) -> Object;
}

impl IntoObject for RateLimitPolicy {
    fn into_object(self) -> Object {
        policy(
            Kind::RateLimitPolicy,
            &self,
            Spec::RateLimit(self.spec.clone()),
            self.status.clone(),
        )
    }
}

impl IntoObject for QuotaPolicy {
    fn into_object(self) -> Object {
        policy(
            Kind::QuotaPolicy,
            &self,
            Spec::Quota(self.spec.clone()),
            self.status.clone(),
        )
    }
}

impl IntoObject for FeatureFlag {
    fn into_object(self) -> Object {
        policy(
            Kind::FeatureFlag,
            &self,
            Spec::FeatureFlag(self.spec.clone()),
            self.status.clone(),
        )
    }
}

impl IntoObject for WebhookEndpoint {
    fn into_object(self) -> Object {
        policy_with(
            Kind::WebhookEndpoint,
            &self,
            Spec::Webhook(self.spec.clone()),
            self.status.clone().map(|s| s.policy),
            self.status.clone(),
        )
    }
}

impl IntoObject for FailoverPolicy {
    fn into_object(self) -> Object {
        policy(
            Kind::FailoverPolicy,
            &self,
            Spec::Failover(self.spec.clone()),
            self.status.clone(),
        )
    }
}

impl IntoObject for Pod {
    fn into_object(self) -> Object {
        let app_port = crate::inject::app_port(&self).ok();
        let mut named_ports = BTreeMap::new();
        let tcp = self
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"));
        for port in tcp {
            if let (Some(name), Ok(number)) = (&port.name, u16::try_from(port.container_port)) {
                named_ports.entry(name.clone()).or_insert(number);
            }
        }
        Object::Pod(
            object_ref(&self),
            InjectedPod {
                uid: self.uid().unwrap_or_default(),
                labels: self.metadata.labels.unwrap_or_default(),
                app_port,
                named_ports,
            },
        )
    }
}

impl IntoObject for Service {
    fn into_object(self) -> Object {
        let r = object_ref(&self);
        let spec = self.spec.unwrap_or_default();
        let ports = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let port = p.port as u16;
                ServicePort {
                    name: p.name.unwrap_or_default(),
                    port,
                    target_port: match p.target_port {
                        None => TargetPort::Number(port),
                        Some(IntOrString::Int(n)) => TargetPort::Number(n as u16),
                        Some(IntOrString::String(name)) => TargetPort::Name(name),
                    },
                    app_protocol: p.app_protocol,
                }
            })
            .collect();
        Object::Service(
            r,
            IndexedService {
                selector: spec.selector.unwrap_or_default(),
                ports,
            },
        )
    }
}

impl IntoObject for EndpointSlice {
    fn into_object(self) -> Object {
        let r = object_ref(&self);
        let service = self
            .labels()
            .get("kubernetes.io/service-name")
            .cloned()
            .unwrap_or_default();
        let ports = self
            .ports
            .unwrap_or_default()
            .into_iter()
            .filter_map(|p| Some((p.name.unwrap_or_default(), p.port? as u16)))
            .collect();
        let ready = self
            .endpoints
            .into_iter()
            // `ready` unset means ready (EndpointSlice API).
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| {
                let (zone, node_name) = (e.zone, e.node_name);
                e.addresses.into_iter().map(move |address| SliceEndpoint {
                    address,
                    zone: zone.clone(),
                    node_name: node_name.clone(),
                })
            })
            .collect();
        Object::EndpointSlice(
            r,
            Slice {
                service,
                ports,
                ready,
            },
        )
    }
}

impl IntoObject for Secret {
    fn into_object(self) -> Object {
        let r = object_ref(&self);
        let data = self
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        Object::Secret(r, data)
    }
}

/// The entries of `map` in `namespace`: keys sort by namespace first, so they are one range.
fn in_namespace<'a, V>(
    map: &'a BTreeMap<ObjectRef, V>,
    namespace: &'a str,
) -> impl Iterator<Item = (&'a ObjectRef, &'a V)> + 'a {
    let start = ObjectRef {
        namespace: namespace.to_string(),
        name: String::new(),
    };
    map.range(start..)
        .take_while(move |(r, _)| r.namespace == namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, app: &str) -> Object {
        Object::Pod(
            ObjectRef {
                namespace: ns.into(),
                name: name.into(),
            },
            InjectedPod {
                uid: format!("uid-{name}"),
                labels: BTreeMap::from([("app".to_string(), app.to_string())]),
                app_port: Some(8080),
                named_ports: BTreeMap::new(),
            },
        )
    }

    fn object<T: serde::de::DeserializeOwned + IntoObject>(yaml: &str) -> Object {
        serde_yaml::from_str::<T>(yaml).unwrap().into_object()
    }

    fn r(ns: &str, name: &str) -> ObjectRef {
        ObjectRef {
            namespace: ns.into(),
            name: name.into(),
        }
    }

    /// A FailoverPolicy in `shop` selecting `app`, with one group naming each Service in
    /// `services` (`name` or `namespace/name`), at `generation`.
    fn failover(name: &str, app: &str, services: &[&str], generation: i64) -> Object {
        let backends: Vec<String> = services
            .iter()
            .map(|s| match s.split_once('/') {
                Some((ns, n)) => format!("{{service: {{name: {n}, namespace: {ns}, port: 80}}}}"),
                None => format!("{{service: {{name: {s}, port: 80}}}}"),
            })
            .collect();
        object::<FailoverPolicy>(&format!(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: {name}, namespace: shop, uid: f-{name}, generation: {generation}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  upstreams:
  - name: up
    match: {{hosts: [up]}}
    groups: [{{name: primary, backends: [{}]}}]
"#,
            backends.join(", ")
        ))
    }

    fn service(ns: &str, name: &str, port_name: &str) -> Object {
        object::<Service>(&format!(
            "metadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{ports: [{{name: {port_name}, port: 80}}]}}"
        ))
    }

    /// A Service with `spec` (flow-style YAML mapping contents).
    fn service_with(ns: &str, name: &str, spec: &str) -> Object {
        object::<Service>(&format!(
            "metadata: {{name: {name}, namespace: {ns}}}\nspec: {{{spec}}}"
        ))
    }

    fn slice(ns: &str, name: &str, service: &str, address: &str) -> Object {
        object::<EndpointSlice>(&format!(
            r#"
metadata: {{name: {name}, namespace: {ns}, labels: {{kubernetes.io/service-name: {service}}}}}
addressType: IPv4
ports: [{{name: http, port: 8080}}]
endpoints: [{{addresses: ["{address}"], zone: zone-a}}]
"#
        ))
    }

    fn pods_of(affected: Affected) -> Vec<String> {
        match affected {
            Affected::Nothing => vec![],
            Affected::Only { namespaces, pods } => {
                assert!(namespaces.is_empty(), "whole namespaces: {namespaces:?}");
                pods.iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect()
            }
            Affected::Everything => panic!("everything"),
        }
    }

    /// Pods api-0, api-1 and web-0 in `shop`, api-0 in `other`; FailoverPolicy `pay` (app: api)
    /// names Services shop/payments and payments-dr/payments; `web` (app: web) names shop/web.
    fn failover_index() -> Index {
        let mut index = Index::default();
        for object in [
            pod("shop", "api-0", "api"),
            pod("shop", "api-1", "api"),
            pod("shop", "web-0", "web"),
            pod("other", "api-0", "api"),
            failover("pay", "api", &["payments", "payments-dr/payments"], 1),
            failover("web", "web", &["web"], 1),
        ] {
            index.apply(Change::Upsert(object));
        }
        index
    }

    #[test]
    fn a_service_or_slice_change_affects_exactly_the_pods_of_the_policies_naming_it() {
        let mut index = failover_index();
        let users = ["shop/api-0", "shop/api-1"];
        let upsert = |index: &mut Index, o| pods_of(index.apply(Change::Upsert(o)));
        let delete = |index: &mut Index, o| pods_of(index.apply(Change::Delete(o)));

        assert_eq!(
            upsert(&mut index, service("shop", "payments", "http")),
            users
        );
        assert_eq!(
            upsert(&mut index, service("shop", "payments", "http")),
            Vec::<String>::new(),
            "unchanged"
        );
        assert_eq!(
            upsert(&mut index, service("shop", "payments", "web")),
            users
        );
        let s = slice("shop", "payments-x1", "payments", "10.0.0.1");
        assert_eq!(upsert(&mut index, s.clone()), users);
        assert_eq!(upsert(&mut index, s.clone()), Vec::<String>::new());
        assert_eq!(
            upsert(
                &mut index,
                slice("shop", "payments-x1", "payments", "10.0.0.2")
            ),
            users
        );
        // Across namespaces: the policy's namespace is not the Service's.
        let dr = slice("payments-dr", "payments-y1", "payments", "10.1.0.1");
        assert_eq!(upsert(&mut index, dr.clone()), users);
        assert_eq!(
            upsert(&mut index, service("payments-dr", "payments", "http")),
            users
        );
        // The other policy's Service: only its pod.
        assert_eq!(
            upsert(&mut index, service("shop", "web", "http")),
            ["shop/web-0"]
        );
        assert_eq!(
            upsert(&mut index, slice("shop", "web-z1", "web", "10.2.0.1")),
            ["shop/web-0"]
        );
        // Named by no policy: nothing, however it changes.
        assert_eq!(
            upsert(&mut index, service("shop", "ledger", "http")),
            Vec::<String>::new()
        );
        let ledger = slice("shop", "ledger-w1", "ledger", "10.3.0.1");
        assert_eq!(upsert(&mut index, ledger.clone()), Vec::<String>::new());
        assert_eq!(delete(&mut index, ledger), Vec::<String>::new());
        // A slice moved to another Service concerns the users of both.
        assert_eq!(
            upsert(&mut index, slice("shop", "payments-x1", "web", "10.0.0.2")),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );
        assert_eq!(
            upsert(
                &mut index,
                slice("shop", "payments-x1", "payments", "10.0.0.2")
            ),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );

        // Deletions, and deletions found by a re-list, are as precise.
        assert_eq!(delete(&mut index, s.clone()), users);
        assert_eq!(delete(&mut index, s), Vec::<String>::new(), "already gone");
        index.apply(Change::Resync(Watched::EndpointSlice));
        index.apply(Change::Upsert(slice("shop", "web-z1", "web", "10.2.0.1")));
        assert_eq!(
            pods_of(index.apply(Change::Synced(Watched::EndpointSlice))),
            users,
            "payments-dr/payments-y1 was not listed again"
        );
        assert_eq!(
            delete(&mut index, service("payments-dr", "payments", "http")),
            users
        );
        index.apply(Change::Resync(Watched::Service));
        index.apply(Change::Upsert(service("shop", "payments", "web")));
        assert_eq!(
            pods_of(index.apply(Change::Synced(Watched::Service))),
            ["shop/web-0"],
            "shop/web and shop/ledger were not listed again"
        );

        // Selection is read when the change comes: a pod relabelled into the policy is included.
        index.apply(Change::Upsert(pod("shop", "web-0", "api")));
        assert_eq!(
            upsert(&mut index, service("shop", "payments", "http")),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );
    }

    #[test]
    fn a_service_declaring_a_protocol_affects_exactly_the_pods_it_selects_before_and_after() {
        let mut index = failover_index();
        let upsert = |index: &mut Index, o| pods_of(index.apply(Change::Upsert(o)));
        let h2c = |selector: &str| {
            service_with(
                "shop",
                "rpc",
                &format!(
                    "selector: {{{selector}}}, ports: [{{name: rpc, port: 80, targetPort: 8080, appProtocol: kubernetes.io/h2c}}]"
                ),
            )
        };

        // Selected in its own namespace only (other/api-0 is not).
        assert_eq!(
            upsert(&mut index, h2c("app: api")),
            ["shop/api-0", "shop/api-1"]
        );
        assert_eq!(
            upsert(&mut index, h2c("app: api")),
            Vec::<String>::new(),
            "unchanged"
        );
        // A selector change moves pods: those it selected and those it selects.
        assert_eq!(
            upsert(&mut index, h2c("app: web")),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );
        // It stops declaring a protocol: the pods it selected, once more; then nobody.
        let plain = service_with(
            "shop",
            "rpc",
            "selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]",
        );
        assert_eq!(upsert(&mut index, plain.clone()), ["shop/web-0"]);
        assert_eq!(
            upsert(
                &mut index,
                service_with(
                    "shop",
                    "rpc",
                    "selector: {app: api}, ports: [{name: http, port: 81, targetPort: 8080}]"
                )
            ),
            Vec::<String>::new(),
            "declaring no protocol before or after, it decides no pod's"
        );
        // Without a selector (endpoints by hand), a Service selects nothing.
        assert_eq!(
            upsert(
                &mut index,
                service_with(
                    "shop",
                    "manual",
                    "ports: [{name: rpc, port: 80, appProtocol: grpc}]"
                )
            ),
            Vec::<String>::new()
        );
        assert_eq!(
            upsert(
                &mut index,
                service_with(
                    "shop",
                    "manual",
                    "selector: {}, ports: [{name: rpc, port: 80, appProtocol: grpc}]"
                )
            ),
            Vec::<String>::new(),
            "an empty selector is no selector"
        );
        // A port name Istio reads as gRPC declares a protocol too.
        assert_eq!(
            upsert(
                &mut index,
                service_with(
                    "shop",
                    "named",
                    "selector: {app: web}, ports: [{name: grpc-api, port: 80}]"
                )
            ),
            ["shop/web-0"]
        );

        // Deletions, and deletions found by a re-list: the pods it selected.
        assert_eq!(
            pods_of(index.apply(Change::Delete(h2c("app: web")))),
            Vec::<String>::new(),
            "rpc declares nothing any more"
        );
        upsert(&mut index, h2c("app: api"));
        assert_eq!(
            pods_of(index.apply(Change::Delete(h2c("app: api")))),
            ["shop/api-0", "shop/api-1"]
        );
        index.apply(Change::Resync(Watched::Service));
        assert_eq!(
            pods_of(index.apply(Change::Synced(Watched::Service))),
            ["shop/web-0"],
            "named was not listed again"
        );

        // A FailoverPolicy's backend that also declares a protocol: its users and its pods.
        assert_eq!(
            upsert(
                &mut index,
                service_with(
                    "shop",
                    "payments",
                    "selector: {app: web}, ports: [{name: http, port: 80, appProtocol: http}]"
                )
            ),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );
    }

    #[test]
    fn a_service_keeps_its_selector_and_each_ports_target_and_app_protocol() {
        let Object::Service(_, service) = service_with(
            "shop",
            "api",
            "selector: {app: api}, ports: [{name: a, port: 80}, {name: b, port: 81, targetPort: 9000, appProtocol: kubernetes.io/h2c}, {name: c, port: 82, targetPort: grpc}]",
        ) else {
            unreachable!()
        };
        assert_eq!(
            service,
            IndexedService {
                selector: BTreeMap::from([("app".into(), "api".into())]),
                ports: vec![
                    ServicePort {
                        name: "a".into(),
                        port: 80,
                        target_port: TargetPort::Number(80),
                        app_protocol: None,
                    },
                    ServicePort {
                        name: "b".into(),
                        port: 81,
                        target_port: TargetPort::Number(9000),
                        app_protocol: Some("kubernetes.io/h2c".into()),
                    },
                    ServicePort {
                        name: "c".into(),
                        port: 82,
                        target_port: TargetPort::Name("grpc".into()),
                        app_protocol: None,
                    },
                ],
            }
        );
        assert!(service.selects(&BTreeMap::from([
            ("app".into(), "api".into()),
            ("tier".into(), "x".into())
        ])));
        assert!(!service.selects(&BTreeMap::from([("app".into(), "web".into())])));
        assert!(!IndexedService::default().selects(&BTreeMap::new()));
    }

    #[test]
    fn a_pod_keeps_its_app_port_and_its_containers_named_tcp_ports() {
        let Object::Pod(_, pod) = object::<Pod>(
            r#"
metadata: {name: api-0, namespace: shop, annotations: {bulwark.dev/app-port: rpc}}
spec:
  containers:
  - {name: app, ports: [{name: metrics, containerPort: 9100}, {name: rpc, containerPort: 9000}, {name: dns, containerPort: 53, protocol: UDP}]}
  - {name: other, ports: [{name: rpc, containerPort: 9999}, {name: admin, containerPort: 9200}]}
  initContainers:
  - {name: bulwark-sidecar, restartPolicy: Always, ports: [{name: bulwark-http, containerPort: 15080}]}
"#,
        ) else {
            unreachable!()
        };
        assert_eq!(pod.app_port, Some(9000), "inject::app_port's choice");
        assert_eq!(
            pod.named_ports,
            BTreeMap::from([
                ("admin".into(), 9200),
                ("metrics".into(), 9100),
                ("rpc".into(), 9000)
            ]),
            "the first of each name, TCP only, the app containers only"
        );
        let Object::Pod(_, unreadable) = object::<Pod>(
            "metadata: {name: api-1, namespace: shop, annotations: {bulwark.dev/app-port: nope}}\nspec: {containers: [{name: app}]}",
        ) else {
            unreachable!()
        };
        assert_eq!(unreadable.app_port, None);
    }

    #[test]
    fn a_port_declares_its_protocol_by_app_protocol_else_by_name() {
        let port = |name: &str, app_protocol: Option<&str>| ServicePort {
            name: name.into(),
            port: 80,
            target_port: TargetPort::Number(8080),
            app_protocol: app_protocol.map(Into::into),
        };
        use AppProtocol::{H2c, Http1};
        for (declared, expected) in [
            ("kubernetes.io/h2c", Some(H2c)),
            ("grpc", Some(H2c)),
            ("GRPC", Some(H2c)),
            ("http", Some(Http1)),
            ("HTTP", Some(Http1)),
            ("kubernetes.io/http", Some(Http1)),
            ("kubernetes.io/ws", Some(Http1)),
            // gRPC-Web is HTTP/1-compatible; TLS and the rest say nothing the sidecar can use.
            ("grpc-web", None),
            ("https", None),
            ("kubernetes.io/wss", None),
            ("tcp", None),
            ("http2", None),
            ("example.com/custom", None),
            // Kubernetes' own values are matched as Kubernetes defines them.
            ("kubernetes.io/H2C", None),
            ("Kubernetes.io/http", None),
        ] {
            assert_eq!(
                port("tcp", Some(declared)).protocol(),
                expected,
                "appProtocol {declared}"
            );
        }
        for (name, expected) in [
            ("grpc", Some(H2c)),
            ("grpc-api", Some(H2c)),
            ("h2c", Some(H2c)),
            ("h2c-internal", Some(H2c)),
            ("grpc-web", None),
            ("grpc-web-public", None),
            ("grpcx", None),
            ("http", None),
            ("http2", None),
            ("", None),
        ] {
            assert_eq!(port(name, None).protocol(), expected, "port name {name:?}");
        }
        // appProtocol, when there is one, is all that is read.
        assert_eq!(port("grpc", Some("http")).protocol(), Some(Http1));
        assert_eq!(port("grpc", Some("https")).protocol(), None);
    }

    #[test]
    fn a_policy_edit_moves_its_reverse_references() {
        let mut index = failover_index();
        let users_of = |index: &Index, ns: &str, name: &str| -> Vec<String> {
            index
                .service_users(&r(ns, name))
                .map(|k| k.name.clone())
                .collect()
        };
        assert_eq!(users_of(&index, "shop", "payments"), ["pay"]);
        assert_eq!(users_of(&index, "payments-dr", "payments"), ["pay"]);

        // pay drops payments-dr/payments and adds ledger.
        assert_eq!(
            index.apply(Change::Upsert(failover(
                "pay",
                "api",
                &["payments", "ledger"],
                2
            ))),
            Affected::namespace("shop")
        );
        assert_eq!(users_of(&index, "shop", "payments"), ["pay"]);
        assert!(users_of(&index, "payments-dr", "payments").is_empty());
        assert_eq!(users_of(&index, "shop", "ledger"), ["pay"]);
        assert_eq!(
            pods_of(index.apply(Change::Upsert(slice(
                "payments-dr",
                "p-1",
                "payments",
                "10.1.0.1"
            )))),
            Vec::<String>::new()
        );
        assert_eq!(
            pods_of(index.apply(Change::Upsert(slice("shop", "l-1", "ledger", "10.3.0.1")))),
            ["shop/api-0", "shop/api-1"]
        );

        // Two policies naming one Service: the pods of both.
        index.apply(Change::Upsert(failover(
            "web",
            "web",
            &["web", "ledger"],
            2,
        )));
        assert_eq!(users_of(&index, "shop", "ledger"), ["pay", "web"]);
        assert_eq!(
            pods_of(index.apply(Change::Upsert(slice("shop", "l-1", "ledger", "10.3.0.2")))),
            ["shop/api-0", "shop/api-1", "shop/web-0"]
        );

        // Deleted, or gone from a re-list: no reverse reference is left behind.
        index.apply(Change::Delete(failover("pay", "api", &[], 2)));
        assert_eq!(users_of(&index, "shop", "ledger"), ["web"]);
        assert!(users_of(&index, "shop", "payments").is_empty());
        index.apply(Change::Resync(Watched::Policy(Kind::FailoverPolicy)));
        assert_eq!(
            index.apply(Change::Synced(Watched::Policy(Kind::FailoverPolicy))),
            Affected::namespace("shop")
        );
        assert!(index.service_users.is_empty());
        assert_eq!(
            pods_of(index.apply(Change::Upsert(slice("shop", "l-1", "ledger", "10.3.0.3")))),
            Vec::<String>::new()
        );
    }

    #[test]
    fn a_relist_forgets_what_it_did_not_see_again() {
        let mut index = Index::default();
        index.apply(Change::Resync(Watched::Pod));
        index.apply(Change::Upsert(pod("shop", "a", "api")));
        index.apply(Change::Upsert(pod("shop", "b", "api")));
        assert_eq!(index.apply(Change::Synced(Watched::Pod)), Affected::Nothing);
        assert_eq!(index.pods.len(), 2);
        assert!(!index.is_synced(), "other types have not been listed yet");

        // The watch expired while pod b was deleted: the re-list no longer has it.
        index.apply(Change::Resync(Watched::Pod));
        index.apply(Change::Upsert(pod("shop", "a", "api")));
        let affected = index.apply(Change::Synced(Watched::Pod));
        assert_eq!(affected, Affected::namespace("shop"));
        assert_eq!(index.pods.len(), 1);
    }

    #[test]
    fn pods_in_a_namespace_are_found_by_range() {
        let mut index = Index::default();
        for (ns, name) in [
            ("a", "x"),
            ("shop", "p1"),
            ("shop", "p2"),
            ("shopping", "q"),
        ] {
            index.apply(Change::Upsert(pod(ns, name, "api")));
        }
        let names: Vec<_> = index.pods_in("shop").map(|(r, _)| r.name.clone()).collect();
        assert_eq!(names, ["p1", "p2"]);
    }

    #[test]
    fn an_unchanged_pod_affects_nothing() {
        let mut index = Index::default();
        assert_ne!(
            index.apply(Change::Upsert(pod("shop", "a", "api"))),
            Affected::Nothing
        );
        assert_eq!(
            index.apply(Change::Upsert(pod("shop", "a", "api"))),
            Affected::Nothing
        );
        assert_ne!(
            index.apply(Change::Upsert(pod("shop", "a", "web"))),
            Affected::Nothing
        );
    }
}
