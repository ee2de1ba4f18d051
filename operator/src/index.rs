//! What the watches have seen, in one place: Bulwark policies, injected pods, and the Services,
//! EndpointSlices and Secrets that policies reference.
//!
//! The index is plain data, changed only by [`Index::apply`] with the watch events of
//! `watch.rs`, and read by the compiler and the status writer. Each watched type can be re-listed
//! at any time (a watch that expired): between [`Change::Resync`] and [`Change::Synced`] the index
//! notes what it sees, and on `Synced` forgets the objects of that type that were not seen again.

use std::collections::{BTreeMap, BTreeSet};

use bulwark_api::{
    crd::{
        FailoverPolicy, FailoverPolicySpec, FeatureFlag, FeatureFlagSpec, QuotaPolicy,
        QuotaPolicySpec, RateLimitPolicy, RateLimitPolicySpec, WebhookEndpoint,
        WebhookEndpointSpec,
        common::{JwtVerification, PolicyStatus, ReadsBearerTokens},
    },
    snapshot::ObjectRef,
};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
    jiff::Timestamp,
};
use kube::{
    Resource, ResourceExt,
    core::{Selector, SelectorExt},
};

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
}

/// The ports of a Service: (name, port).
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePorts(pub Vec<(String, u16)>);

/// One EndpointSlice reduced to what failover needs.
#[derive(Clone, Debug, PartialEq)]
pub struct Slice {
    /// The Service it belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// (port name, port number).
    pub ports: Vec<(String, u16)>,
    /// Addresses of ready endpoints.
    pub ready_addresses: Vec<String>,
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
    Service(ObjectRef, ServicePorts),
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

/// The namespaces a change concerns: their pods may need a new snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Affected {
    #[default]
    Nothing,
    Namespaces(BTreeSet<String>),
    /// A Service or EndpointSlice changed: failover policies anywhere may point at it.
    Everything,
}

impl Affected {
    pub fn merge(&mut self, other: Affected) {
        *self = match (std::mem::take(self), other) {
            (Affected::Everything, _) | (_, Affected::Everything) => Affected::Everything,
            (Affected::Nothing, x) | (x, Affected::Nothing) => x,
            (Affected::Namespaces(mut a), Affected::Namespaces(b)) => {
                a.extend(b);
                Affected::Namespaces(a)
            }
        }
    }

    fn namespace(ns: &str) -> Self {
        Affected::Namespaces(BTreeSet::from([ns.to_string()]))
    }
}

#[derive(Default)]
pub struct Index {
    pub policies: BTreeMap<PolicyKey, Policy>,
    pub pods: BTreeMap<ObjectRef, InjectedPod>,
    pub services: BTreeMap<ObjectRef, ServicePorts>,
    /// Keyed by the slice's own name.
    pub slices: BTreeMap<ObjectRef, Slice>,
    pub secrets: BTreeMap<ObjectRef, BTreeMap<String, Vec<u8>>>,
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

    fn namespace(&self) -> &str {
        match self {
            Object::Policy(key, _) => &key.namespace,
            Object::Pod(r, _)
            | Object::Service(r, _)
            | Object::EndpointSlice(r, _)
            | Object::Secret(r, _) => &r.namespace,
        }
    }
}

impl Index {
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
        let affected = match object.watched() {
            Watched::Service | Watched::EndpointSlice => Affected::Everything,
            _ => Affected::namespace(object.namespace()),
        };
        let changed = match object {
            Object::Policy(key, policy) => {
                // A status-only update changes no snapshot.
                let before = self
                    .policies
                    .get(&key)
                    .map(|p| (p.generation, p.uid.clone()));
                let same = before == Some((policy.generation, policy.uid.clone()));
                self.policies.insert(key, *policy);
                !same
            }
            Object::Pod(r, pod) => self.pods.insert(r, pod.clone()).as_ref() != Some(&pod),
            Object::Service(r, s) => self.services.insert(r, s.clone()).as_ref() != Some(&s),
            Object::EndpointSlice(r, s) => self.slices.insert(r, s.clone()).as_ref() != Some(&s),
            Object::Secret(r, s) => self.secrets.insert(r, s.clone()).as_ref() != Some(&s),
        };
        if changed { affected } else { Affected::Nothing }
    }

    fn remove(&mut self, object: &Object) -> Affected {
        let removed = match object {
            Object::Policy(key, _) => self.policies.remove(key).is_some(),
            Object::Pod(r, _) => self.pods.remove(r).is_some(),
            Object::Service(r, _) => self.services.remove(r).is_some(),
            Object::EndpointSlice(r, _) => self.slices.remove(r).is_some(),
            Object::Secret(r, _) => self.secrets.remove(r).is_some(),
        };
        match (removed, object.watched()) {
            (false, _) => Affected::Nothing,
            (true, Watched::Service | Watched::EndpointSlice) => Affected::Everything,
            (true, _) => Affected::namespace(object.namespace()),
        }
    }

    fn forget_unseen(&mut self, watched: Watched, seen: &BTreeSet<String>) -> Affected {
        let mut affected = Affected::Nothing;
        let key = |r: &ObjectRef| format!("{}/{}", r.namespace, r.name);
        let mut gone = |ns: &str| {
            affected.merge(match watched {
                Watched::Service | Watched::EndpointSlice => Affected::Everything,
                _ => Affected::namespace(ns),
            })
        };
        match watched {
            Watched::Policy(kind) => self.policies.retain(|k, _| {
                let keep = k.kind != kind || seen.contains(&format!("{}/{}", k.namespace, k.name));
                if !keep {
                    gone(&k.namespace);
                }
                keep
            }),
            Watched::Pod => retain_seen(&mut self.pods, seen, key, &mut gone),
            Watched::Service => retain_seen(&mut self.services, seen, key, &mut gone),
            Watched::EndpointSlice => retain_seen(&mut self.slices, seen, key, &mut gone),
            Watched::Secret => retain_seen(&mut self.secrets, seen, key, &mut gone),
        }
        affected
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
        let start = ObjectRef {
            namespace: namespace.to_string(),
            name: String::new(),
        };
        self.pods
            .range(start..)
            .take_while(move |(r, _)| r.namespace == namespace)
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

fn retain_seen<V>(
    map: &mut BTreeMap<ObjectRef, V>,
    seen: &BTreeSet<String>,
    key: impl Fn(&ObjectRef) -> String,
    gone: &mut impl FnMut(&str),
) {
    map.retain(|r, _| {
        let keep = seen.contains(&key(r));
        if !keep {
            gone(&r.namespace);
        }
        keep
    });
}

// ---- From Kubernetes objects -------------------------------------------------------------------

fn object_ref<K: Resource>(obj: &K) -> ObjectRef {
    ObjectRef {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    }
}

fn policy<K: Resource>(kind: Kind, obj: &K, spec: Spec, status: Option<PolicyStatus>) -> Object {
    let meta = obj.meta();
    let selector = Selector::try_from(spec.selector().clone()).ok();
    Object::Policy(
        PolicyKey {
            kind,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
        },
        Box::new(Policy {
            uid: meta.uid.clone().unwrap_or_default(),
            generation: meta.generation.unwrap_or_default(),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            selector,
            spec,
            status,
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
        policy(
            Kind::WebhookEndpoint,
            &self,
            Spec::Webhook(self.spec.clone()),
            self.status.clone().map(|s| s.policy),
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
        Object::Pod(
            object_ref(&self),
            InjectedPod {
                uid: self.uid().unwrap_or_default(),
                labels: self.metadata.labels.unwrap_or_default(),
            },
        )
    }
}

impl IntoObject for Service {
    fn into_object(self) -> Object {
        let r = object_ref(&self);
        let ports = self
            .spec
            .and_then(|s| s.ports)
            .unwrap_or_default()
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.port as u16))
            .collect();
        Object::Service(r, ServicePorts(ports))
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
        let ready_addresses = self
            .endpoints
            .into_iter()
            // `ready` unset means ready (EndpointSlice API).
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
            .flat_map(|e| e.addresses)
            .collect();
        Object::EndpointSlice(
            r,
            Slice {
                service,
                ports,
                ready_addresses,
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
            },
        )
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
