//! From the index to one pod's snapshot, and each policy's verdict.
//!
//! Rules (docs/operator.md):
//! - A policy applies to the injected pods of its namespace that its selector matches.
//! - Rate limits and quotas never conflict: all that select a pod apply, so the most
//!   restrictive decides.
//! - Two FeatureFlags defining the same flag key for one pod, or two FailoverPolicies defining
//!   the same upstream name, conflict: the older policy (creation time, then name) wins, as in
//!   Gateway API; the newer one is not Accepted (reason `Conflicted`) and is sent to no pod.
//! - A reference that does not resolve (a WebhookEndpoint's Secret or key, a
//!   `jwt.verification.keySecretRef`, a FailoverPolicy's Service) makes the policy not Accepted
//!   (reason `RefNotFound`); it is sent to no pod until the reference appears. Sending it
//!   half-resolved would sign with no key, verify with none, or route nowhere.
//! - The app port's protocol comes from the Services that select the pod and target that port
//!   ([`app_protocol`]); when they disagree, from none of them.

use std::collections::{BTreeMap, btree_map::Entry};

use bulwark_api::{
    crd::common::{Scope, SecretKeyRef},
    snapshot::{
        AppProtocol, Endpoint, ObjectRef, PolicySource, RedisConnection, ResolvedWebhookEndpoint,
        SCHEMA, SecretString, Snapshot, Sourced, secret_key_id, service_port_id,
    },
};

use crate::{
    index::{Index, InjectedPod, Kind, Policy, PolicyKey, Spec},
    signing,
};

/// Why a policy is, or is not, Accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// `reason` is the condition reason (`RefNotFound`, `Conflicted`, `InvalidSelector`).
    Rejected {
        reason: &'static str,
        message: String,
    },
}

/// One pod's compiled snapshot (version 0: the distributor numbers it) and the policy
/// generations it carries, as `Kind/namespace/name@generation`.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSnapshot {
    pub snapshot: Snapshot,
    pub sources: Vec<String>,
    /// Why `snapshot.app_protocol` is unset although Services declare one: they disagree
    /// ([`app_protocol`]). The index loop logs it when it changes.
    pub app_protocol_conflict: Option<String>,
}

/// The string a pod's acknowledgement records for one policy generation.
pub fn source_id(key: &PolicyKey, generation: i64) -> String {
    format!(
        "{}/{}/{}@{generation}",
        key.kind.as_str(),
        key.namespace,
        key.name
    )
}

/// The verdict of every policy in `namespace`.
pub fn verdicts_in(index: &Index, namespace: &str) -> BTreeMap<PolicyKey, Verdict> {
    let mut verdicts: BTreeMap<PolicyKey, Verdict> = index
        .policies_in(namespace)
        .map(|(key, policy)| (key.clone(), references(index, key, policy)))
        .collect();
    for (key, message) in conflicts_in(index, namespace) {
        if verdicts.get(&key) == Some(&Verdict::Accepted) {
            verdicts.insert(
                key,
                Verdict::Rejected {
                    reason: "Conflicted",
                    message,
                },
            );
        }
    }
    verdicts
}

fn references(index: &Index, key: &PolicyKey, policy: &Policy) -> Verdict {
    if policy.selector.is_none() {
        return Verdict::Rejected {
            reason: "InvalidSelector",
            message: "spec.selector cannot be parsed as a label selector".into(),
        };
    }
    if let Some(verification) = policy.spec.jwt_verification() {
        let secret = &verification.key_secret_ref;
        if let Err(message) = secret_value(index, &key.namespace, secret) {
            return Verdict::Rejected {
                reason: "RefNotFound",
                message: format!("jwt.verification.keySecretRef: {message}"),
            };
        }
    }
    match &policy.spec {
        Spec::Webhook(spec) => {
            let secret = &spec.signing.secret_ref;
            match secret_value(index, &key.namespace, secret) {
                Ok(_) => Verdict::Accepted,
                Err(message) => Verdict::Rejected {
                    reason: "RefNotFound",
                    message,
                },
            }
        }
        Spec::Failover(spec) => {
            for upstream in &spec.upstreams {
                if let Some(ca) = upstream.tls.as_ref().and_then(|t| t.ca_secret_ref.as_ref())
                    && let Err(message) = secret_value(index, &key.namespace, ca)
                {
                    return Verdict::Rejected {
                        reason: "RefNotFound",
                        message: format!(
                            "upstream {:?}: tls.caSecretRef: {message}",
                            upstream.name
                        ),
                    };
                }
                for group in &upstream.groups {
                    for backend in group.backends.iter().filter_map(|b| b.service.as_ref()) {
                        let namespace = backend.namespace.as_deref().unwrap_or(&key.namespace);
                        let service = ObjectRef {
                            namespace: namespace.to_string(),
                            name: backend.name.clone(),
                        };
                        let Some(found) = index.services.get(&service) else {
                            return Verdict::Rejected {
                                reason: "RefNotFound",
                                message: format!(
                                    "upstream {:?}: Service {namespace}/{} not found",
                                    upstream.name, backend.name
                                ),
                            };
                        };
                        if !found.ports.iter().any(|p| p.port == backend.port) {
                            return Verdict::Rejected {
                                reason: "RefNotFound",
                                message: format!(
                                    "upstream {:?}: Service {namespace}/{} has no port {}",
                                    upstream.name, backend.name, backend.port
                                ),
                            };
                        }
                    }
                }
            }
            Verdict::Accepted
        }
        Spec::RateLimit(_) | Spec::Quota(_) | Spec::FeatureFlag(_) => Verdict::Accepted,
    }
}

/// A Secret key's value, as UTF-8 text (signing keys, PEM keys, JWKS and HMAC secrets all are).
pub fn secret_value(
    index: &Index,
    namespace: &str,
    secret: &SecretKeyRef,
) -> Result<String, String> {
    let SecretKeyRef { name, key } = secret;
    let secret = index
        .secrets
        .get(&ObjectRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
        .ok_or_else(|| format!("Secret {namespace}/{name} not found"))?;
    let value = secret
        .get(key)
        .ok_or_else(|| format!("Secret {namespace}/{name} has no key {key:?}"))?;
    String::from_utf8(value.clone())
        .map_err(|_| format!("Secret {namespace}/{name} key {key:?} is not UTF-8"))
}

/// Names a policy claims for a pod, where two policies claiming the same name conflict.
fn claims(policy: &Policy) -> Vec<String> {
    match &policy.spec {
        Spec::FeatureFlag(spec) => spec.flags.keys().map(|k| format!("flag {k:?}")).collect(),
        Spec::Failover(spec) => spec
            .upstreams
            .iter()
            .map(|u| format!("upstream {:?}", u.name))
            .collect(),
        _ => Vec::new(),
    }
}

/// Policies that lose a conflict on some pod of `namespace`, with a message naming the winner.
fn conflicts_in(index: &Index, namespace: &str) -> BTreeMap<PolicyKey, String> {
    let mut contenders: Vec<(&PolicyKey, &Policy)> = index
        .policies_in(namespace)
        .filter(|(k, _)| matches!(k.kind, Kind::FeatureFlag | Kind::FailoverPolicy))
        .collect();
    // Oldest first: the first to claim a name keeps it.
    contenders.sort_by(|(ka, a), (kb, b)| (a.created, &ka.name).cmp(&(b.created, &kb.name)));
    let mut losers = BTreeMap::new();
    for (_, pod) in index.pods_in(namespace) {
        let mut owner: BTreeMap<(Kind, String), &PolicyKey> = BTreeMap::new();
        for (key, policy) in &contenders {
            if !policy.selects(&pod.labels) || losers.contains_key(*key) {
                continue;
            }
            for claim in claims(policy) {
                match owner.entry((key.kind, claim.clone())) {
                    Entry::Vacant(slot) => {
                        slot.insert(key);
                    }
                    Entry::Occupied(winner) => {
                        losers.insert(
                            (*key).clone(),
                            format!(
                                "{claim} is already defined by {} {}/{}, which is older",
                                winner.get().kind.as_str(),
                                namespace,
                                winner.get().name
                            ),
                        );
                        break;
                    }
                }
            }
        }
    }
    losers
}

/// The snapshot for one pod: every Accepted policy of its namespace that selects it, and the
/// Redis connection if one of them has `scope: Global` (only then: it may carry a password).
pub fn pod_snapshot(
    index: &Index,
    pod_ref: &ObjectRef,
    pod: &InjectedPod,
    verdicts: &BTreeMap<PolicyKey, Verdict>,
    redis: Option<&RedisConnection>,
) -> PodSnapshot {
    let mut snapshot = Snapshot {
        schema: SCHEMA,
        pod: Some(pod_ref.clone()),
        ..Snapshot::default()
    };
    let mut sources = Vec::new();
    for (key, policy) in index.policies_in(&pod_ref.namespace) {
        if verdicts.get(key) != Some(&Verdict::Accepted) || !policy.selects(&pod.labels) {
            continue;
        }
        if let Some(verification) = policy.spec.jwt_verification() {
            let secret = &verification.key_secret_ref;
            let Ok(value) = secret_value(index, &key.namespace, secret) else {
                continue; // not Accepted: excluded above; kept as a guard
            };
            snapshot.jwt_keys.insert(
                secret_key_id(&key.namespace, secret),
                SecretString::new(value),
            );
        }
        let source = PolicySource {
            namespace: key.namespace.clone(),
            name: key.name.clone(),
            generation: policy.generation,
        };
        sources.push(source_id(key, policy.generation));
        match &policy.spec {
            Spec::RateLimit(spec) => snapshot.rate_limits.push(Sourced {
                source,
                spec: spec.clone(),
            }),
            Spec::Quota(spec) => snapshot.quotas.push(Sourced {
                source,
                spec: spec.clone(),
            }),
            Spec::FeatureFlag(spec) => snapshot.feature_flags.push(Sourced {
                source,
                spec: spec.clone(),
            }),
            Spec::Webhook(spec) => {
                let secret = &spec.signing.secret_ref;
                let Ok(value) = secret_value(index, &key.namespace, secret) else {
                    continue; // not Accepted: excluded above; kept as a guard
                };
                let id = signing::endpoint_id(&key.namespace, &key.name);
                let signing_keys = signing::signing_keys(
                    index.signing_ledger().get(&id),
                    &value,
                    signing::grace_of(spec),
                    signing::unix_seconds(),
                );
                let mut endpoint = spec.clone();
                // Disabled by the leader after failing too long (status.rs): the sidecars stop
                // delivering until the spec changes.
                endpoint.disabled |= policy.auto_disabled;
                snapshot.webhooks.push(Sourced {
                    source,
                    spec: ResolvedWebhookEndpoint {
                        endpoint,
                        signing_keys,
                    },
                });
            }
            Spec::Failover(spec) => {
                service_endpoints(index, &key.namespace, spec, &mut snapshot.endpoints);
                let cas = spec
                    .upstreams
                    .iter()
                    .filter_map(|u| u.tls.as_ref()?.ca_secret_ref.as_ref());
                for ca in cas {
                    if let Ok(pem) = secret_value(index, &key.namespace, ca) {
                        snapshot
                            .ca_bundles
                            .insert(secret_key_id(&key.namespace, ca), pem);
                    }
                }
                snapshot.failover.push(Sourced {
                    source,
                    spec: spec.clone(),
                });
            }
        }
    }
    let global = snapshot
        .rate_limits
        .iter()
        .any(|p| p.spec.scope == Scope::Global)
        || snapshot
            .quotas
            .iter()
            .any(|p| p.spec.scope == Scope::Global);
    if global {
        snapshot.redis = redis.cloned();
    }
    let app_protocol_conflict = match app_protocol(index, pod_ref, pod) {
        Ok(protocol) => {
            snapshot.app_protocol = protocol;
            None
        }
        Err(conflict) => Some(conflict),
    };
    PodSnapshot {
        snapshot,
        sources,
        app_protocol_conflict,
    }
}

/// What the pod's app port speaks, as the Services of its namespace that select it say: over
/// their ports whose `targetPort` is the app port, each one's protocol
/// ([`crate::index::ServicePort::protocol`]: its `appProtocol`, else its name). Ports that say
/// nothing are left out; `Ok(None)` when none says anything (the sidecar detects). When they
/// disagree, `Err` names them, and the snapshot says nothing either: the sidecar detects, and
/// the pod's `bulwark.dev/app-protocol` annotation is how to settle it.
pub fn app_protocol(
    index: &Index,
    pod_ref: &ObjectRef,
    pod: &InjectedPod,
) -> Result<Option<AppProtocol>, String> {
    let Some(app_port) = pod.app_port else {
        return Ok(None);
    };
    let mut said: Vec<(String, AppProtocol)> = Vec::new();
    for (service_ref, service) in index.services_in(&pod_ref.namespace) {
        if !service.selects(&pod.labels) {
            continue;
        }
        for port in &service.ports {
            if port.target_on(pod) != Some(app_port) {
                continue;
            }
            if let Some(protocol) = port.protocol() {
                let how = match &port.app_protocol {
                    Some(declared) => format!("appProtocol {declared}"),
                    None => format!("port name {}", port.name),
                };
                said.push((
                    format!(
                        "Service {}/{} port {} ({how})",
                        service_ref.namespace, service_ref.name, port.port
                    ),
                    protocol,
                ));
            }
        }
    }
    let Some((_, first)) = said.first() else {
        return Ok(None);
    };
    if said.iter().all(|(_, p)| p == first) {
        return Ok(Some(*first));
    }
    let name = |p: &AppProtocol| match p {
        AppProtocol::Http1 => "http1",
        AppProtocol::H2c => "h2c",
    };
    let each: Vec<String> = said
        .iter()
        .map(|(who, p)| format!("{who}: {}", name(p)))
        .collect();
    Err(format!(
        "the Services targeting the app port {app_port} disagree on its protocol ({}); the sidecar detects it (set the pod annotation {} to choose)",
        each.join(", "),
        crate::inject::APP_PROTOCOL_ANNOTATION
    ))
}

/// The ready endpoints of each Service backend of `spec`, added to `out` by
/// [`service_port_id`]. The Service port's name is how its EndpointSlices name the matching
/// target port; an endpoint listed by two slices (as while they are rebalanced) is kept once.
fn service_endpoints(
    index: &Index,
    policy_namespace: &str,
    spec: &bulwark_api::crd::FailoverPolicySpec,
    out: &mut BTreeMap<String, Vec<Endpoint>>,
) {
    let backends = spec
        .upstreams
        .iter()
        .flat_map(|u| &u.groups)
        .flat_map(|g| &g.backends)
        .filter_map(|b| b.service.as_ref());
    for backend in backends {
        let namespace = backend.namespace.as_deref().unwrap_or(policy_namespace);
        let id = service_port_id(namespace, &backend.name, backend.port);
        if out.contains_key(&id) {
            continue; // named twice, by this policy or another one of the pod's
        }
        let service = ObjectRef {
            namespace: namespace.to_string(),
            name: backend.name.clone(),
        };
        let Some(port_name) = index.services.get(&service).and_then(|s| {
            s.ports
                .iter()
                .find(|p| p.port == backend.port)
                .map(|p| p.name.clone())
        }) else {
            continue;
        };
        let mut endpoints: Vec<Endpoint> = index
            .slices_in(namespace)
            .filter(|(_, s)| s.service == backend.name)
            .flat_map(|(_, s)| {
                let port = s.ports.iter().find(|(n, _)| *n == port_name).map(|p| p.1);
                port.into_iter().flat_map(move |port| {
                    s.ready.iter().map(move |e| Endpoint {
                        address: match e.address.contains(':') {
                            true => format!("[{}]:{port}", e.address),
                            false => format!("{}:{port}", e.address),
                        },
                        zone: e.zone.clone(),
                        node_name: e.node_name.clone(),
                    })
                })
            })
            .collect();
        endpoints.sort();
        endpoints.dedup_by(|a, b| a.address == b.address);
        out.insert(id, endpoints);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{Change, IntoObject};
    use bulwark_api::crd::{FailoverPolicy, FeatureFlag, RateLimitPolicy, WebhookEndpoint};
    use k8s_openapi::{
        api::{
            core::v1::{Pod, Secret, Service},
            discovery::v1::EndpointSlice,
        },
        apimachinery::pkg::apis::meta::v1::Time,
    };

    fn object<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn index_with(objects: Vec<crate::index::Object>) -> Index {
        let mut index = Index::default();
        for o in objects {
            index.apply(Change::Upsert(o));
        }
        index
    }

    fn pod(name: &str, app: &str) -> crate::index::Object {
        object::<Pod>(&format!(
            "metadata: {{name: {name}, namespace: shop, uid: u-{name}, labels: {{app: {app}}}}}"
        ))
        .into_object()
    }

    fn rate_limit(name: &str, app: &str) -> crate::index::Object {
        object::<RateLimitPolicy>(&format!(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: {name}, namespace: shop, generation: 2, uid: r-{name}}}
spec:
  selector: {{matchLabels: {{app: {app}}}}}
  rules:
  - name: all
    key: [{{type: Constant}}]
    rates: [{{limit: 5, window: 1s}}]
"#
        ))
        .into_object()
    }

    fn flag(name: &str, key: &str, created: &str) -> crate::index::Object {
        let mut f: FeatureFlag = object(&format!(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: FeatureFlag
metadata: {{name: {name}, namespace: shop, generation: 1}}
spec:
  flags:
    {key}:
      state: ENABLED
      variants: {{on: true, off: false}}
      defaultVariant: off
"#
        ));
        f.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
        f.into_object()
    }

    fn redis() -> RedisConnection {
        RedisConnection::Url(SecretString::new("redis://:pw@redis:6379"))
    }

    fn snapshot_of(index: &Index, name: &str) -> PodSnapshot {
        let r = ObjectRef {
            namespace: "shop".into(),
            name: name.into(),
        };
        let verdicts = verdicts_in(index, "shop");
        pod_snapshot(index, &r, &index.pods[&r], &verdicts, Some(&redis()))
    }

    #[test]
    fn a_namespace_sees_only_its_own_policies() {
        let in_ns = |ns: &str| match rate_limit("api-limit", "api") {
            crate::index::Object::Policy(mut key, policy) => {
                key.namespace = ns.to_string();
                crate::index::Object::Policy(key, policy)
            }
            _ => unreachable!("rate_limit() builds a policy"),
        };
        let index = index_with(vec![in_ns("shop"), in_ns("shopping"), in_ns("a")]);
        let found: Vec<_> = index
            .policies_in("shop")
            .map(|(k, _)| k.namespace.clone())
            .collect();
        assert_eq!(found, ["shop"]);
    }

    #[test]
    fn a_pod_gets_the_policies_that_select_it() {
        let index = index_with(vec![
            pod("api-0", "api"),
            pod("web-0", "web"),
            rate_limit("api-limit", "api"),
        ]);
        let api = snapshot_of(&index, "api-0");
        assert_eq!(api.snapshot.rate_limits.len(), 1);
        assert_eq!(api.snapshot.rate_limits[0].source.generation, 2);
        assert_eq!(api.sources, ["RateLimitPolicy/shop/api-limit@2"]);
        assert_eq!(
            api.snapshot.redis, None,
            "no Global policy: no Redis credentials"
        );
        assert!(snapshot_of(&index, "web-0").snapshot.rate_limits.is_empty());
    }

    #[test]
    fn only_pods_with_a_global_policy_get_the_redis_connection() {
        let global = object::<RateLimitPolicy>(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: shared, namespace: shop, generation: 1}
spec:
  selector: {matchLabels: {app: api}}
  scope: Global
  rules:
  - name: all
    key: [{type: Constant}]
    rates: [{limit: 5, window: 1s}]
"#,
        );
        let index = index_with(vec![
            pod("api-0", "api"),
            pod("web-0", "web"),
            global.into_object(),
        ]);
        assert_eq!(snapshot_of(&index, "api-0").snapshot.redis, Some(redis()));
        assert_eq!(snapshot_of(&index, "web-0").snapshot.redis, None);
    }

    #[test]
    fn the_newer_of_two_flags_with_one_key_is_rejected_and_sent_nowhere() {
        let index = index_with(vec![
            pod("api-0", "api"),
            flag("old", "checkout", "2026-01-01T00:00:00Z"),
            flag("new", "checkout", "2026-02-01T00:00:00Z"),
            flag("other", "search", "2026-03-01T00:00:00Z"),
        ]);
        let verdicts = verdicts_in(&index, "shop");
        let key = |name: &str| PolicyKey {
            kind: Kind::FeatureFlag,
            namespace: "shop".into(),
            name: name.into(),
        };
        assert_eq!(verdicts[&key("old")], Verdict::Accepted);
        assert_eq!(verdicts[&key("other")], Verdict::Accepted);
        match &verdicts[&key("new")] {
            Verdict::Rejected { reason, message } => {
                assert_eq!(*reason, "Conflicted");
                assert!(message.contains("flag \"checkout\"") && message.contains("shop/old"));
            }
            v => panic!("{v:?}"),
        }
        let names: Vec<_> = snapshot_of(&index, "api-0")
            .snapshot
            .feature_flags
            .iter()
            .map(|f| f.source.name.clone())
            .collect();
        assert_eq!(names, ["old", "other"]);
    }

    #[test]
    fn a_webhook_waits_for_its_secret_then_carries_the_key() {
        let webhook: WebhookEndpoint = object(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: billing, namespace: shop, generation: 1}
spec:
  url: https://hooks.example.com/in
  signing: {secretRef: {name: hook, key: secret}}
"#,
        );
        let mut index = index_with(vec![pod("api-0", "api"), webhook.into_object()]);
        let key = PolicyKey {
            kind: Kind::WebhookEndpoint,
            namespace: "shop".into(),
            name: "billing".into(),
        };
        assert!(matches!(
            &verdicts_in(&index, "shop")[&key],
            Verdict::Rejected { reason: "RefNotFound", message } if message.contains("shop/hook")
        ));
        assert!(snapshot_of(&index, "api-0").snapshot.webhooks.is_empty());

        let secret: Secret =
            object("metadata: {name: hook, namespace: shop}\ndata: {secret: d2hzZWNfYzJWamNtVjA=}");
        index.apply(Change::Upsert(secret.into_object()));
        assert_eq!(verdicts_in(&index, "shop")[&key], Verdict::Accepted);
        let webhooks = snapshot_of(&index, "api-0").snapshot.webhooks;
        assert_eq!(
            webhooks[0].spec.signing_keys[0].secret.expose(),
            "whsec_c2VjcmV0"
        );
    }

    #[test]
    fn a_rotated_key_travels_with_the_previous_one_and_an_auto_disabled_endpoint_is_disabled() {
        let webhook: WebhookEndpoint = object(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: WebhookEndpoint
metadata: {name: billing, namespace: shop, generation: 2}
spec:
  url: https://hooks.example.com/in
  signing: {secretRef: {name: hook, key: secret}, rotationGracePeriod: 1h}
"#,
        );
        let ledger_ref = ObjectRef {
            namespace: "bulwark-system".into(),
            name: "bulwark-webhook-signing-keys".into(),
        };
        let mut index = Index::with_signing_ledger(ledger_ref.clone());
        for o in [pod("api-0", "api"), webhook.clone().into_object()] {
            index.apply(Change::Upsert(o));
        }
        let secret = |value: &str| {
            let mut s: Secret = object("metadata: {name: hook, namespace: shop}");
            s.string_data = None;
            s.data = Some(BTreeMap::from([(
                "secret".to_string(),
                k8s_openapi::ByteString(value.as_bytes().to_vec()),
            )]));
            s.into_object()
        };
        index.apply(Change::Upsert(secret("whsec_bmV3")));
        let keys = |index: &Index| -> Vec<(String, Option<i64>)> {
            snapshot_of(index, "api-0").snapshot.webhooks[0]
                .spec
                .signing_keys
                .iter()
                .map(|k| (k.secret.expose().to_owned(), k.not_after))
                .collect()
        };
        assert_eq!(keys(&index), [("whsec_bmV3".to_string(), None)]);

        // The leader's ledger says the key was rotated: the previous one travels second.
        let ledger = signing::Ledger(BTreeMap::from([(
            "shop/billing".to_string(),
            signing::Entry {
                current: SecretString::new("whsec_bmV3"),
                previous: Some(signing::Previous {
                    secret: SecretString::new("whsec_b2xk"),
                    not_after: 1_900_000_000,
                }),
            },
        )]));
        let mut ledger_secret: Secret =
            object("metadata: {name: bulwark-webhook-signing-keys, namespace: bulwark-system}");
        ledger_secret.data = Some(BTreeMap::from([(
            signing::LEDGER_KEY.to_string(),
            k8s_openapi::ByteString(serde_json::to_vec(&ledger).unwrap()),
        )]));
        let affected = index.apply(Change::Upsert(ledger_secret.into_object()));
        assert!(
            matches!(&affected, crate::index::Affected::Only { namespaces, .. } if namespaces.contains("shop")),
            "the ledger concerns the endpoint's namespace: {affected:?}"
        );
        assert_eq!(
            keys(&index),
            [
                ("whsec_bmV3".to_string(), None),
                ("whsec_b2xk".to_string(), Some(1_900_000_000))
            ]
        );
        assert_eq!(index.signing_ledger(), &ledger);

        // The leader disabled it (condition Delivering=False AutoDisabled at this generation):
        // recompiled, and sent disabled.
        assert!(
            !snapshot_of(&index, "api-0").snapshot.webhooks[0]
                .spec
                .endpoint
                .disabled
        );
        let mut disabled = webhook.clone();
        disabled.status = Some(
            serde_json::from_value(serde_json::json!({
                "conditions": [{
                    "type": "Delivering", "status": "False", "reason": "AutoDisabled",
                    "message": "", "observedGeneration": 2,
                    "lastTransitionTime": "2026-01-01T00:00:00Z"
                }]
            }))
            .unwrap(),
        );
        assert_ne!(
            index.apply(Change::Upsert(disabled.into_object())),
            crate::index::Affected::Nothing
        );
        assert!(
            snapshot_of(&index, "api-0").snapshot.webhooks[0]
                .spec
                .endpoint
                .disabled
        );
        // A spec change (generation 3) ends it.
        let mut changed = webhook;
        changed.metadata.generation = Some(3);
        index.apply(Change::Upsert(changed.into_object()));
        assert!(
            !snapshot_of(&index, "api-0").snapshot.webhooks[0]
                .spec
                .endpoint
                .disabled
        );
    }

    #[test]
    fn jwt_verification_waits_for_its_key_and_only_that_key_is_sent() {
        let policy: RateLimitPolicy = object(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: per-user, namespace: shop, generation: 1}
spec:
  jwt:
    verification:
      keySecretRef: {name: idp, key: public.pem}
      algorithms: [ES256]
  rules:
  - name: per-user
    key: [{type: JWTClaim, name: sub}]
    rates: [{limit: 5, window: 1s}]
"#,
        );
        let mut index = index_with(vec![pod("api-0", "api"), policy.into_object()]);
        let key = PolicyKey {
            kind: Kind::RateLimitPolicy,
            namespace: "shop".into(),
            name: "per-user".into(),
        };
        assert!(matches!(
            &verdicts_in(&index, "shop")[&key],
            Verdict::Rejected { reason: "RefNotFound", message }
                if message.starts_with("jwt.verification.keySecretRef: ") && message.contains("shop/idp")
        ));
        assert!(snapshot_of(&index, "api-0").snapshot.rate_limits.is_empty());

        // "PEM" and "other" base64-encoded: only the named key travels.
        let secret: Secret = object(
            "metadata: {name: idp, namespace: shop}\ndata: {public.pem: UEVN, other: b3RoZXI=}",
        );
        index.apply(Change::Upsert(secret.into_object()));
        assert_eq!(verdicts_in(&index, "shop")[&key], Verdict::Accepted);
        let snapshot = snapshot_of(&index, "api-0").snapshot;
        assert_eq!(snapshot.rate_limits.len(), 1);
        let keys: Vec<_> = snapshot
            .jwt_keys
            .iter()
            .map(|(id, value)| (id.as_str(), value.expose()))
            .collect();
        assert_eq!(keys, [("shop/idp/public.pem", "PEM")]);
    }

    #[test]
    fn an_https_upstream_waits_for_its_ca_bundle_which_travels_with_the_snapshot() {
        let policy: FailoverPolicy = object(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: pay, namespace: shop, generation: 1}
spec:
  selector: {matchLabels: {app: api}}
  upstreams:
  - name: payments
    match: {hosts: [payments]}
    groups: [{name: primary, backends: [{address: "10.9.9.9:443"}]}]
    tls: {caSecretRef: {name: payments-ca, key: ca.crt}}
"#,
        );
        let mut index = index_with(vec![pod("api-0", "api"), policy.into_object()]);
        let key = PolicyKey {
            kind: Kind::FailoverPolicy,
            namespace: "shop".into(),
            name: "pay".into(),
        };
        assert!(matches!(
            &verdicts_in(&index, "shop")[&key],
            Verdict::Rejected { reason: "RefNotFound", message }
                if message.contains("tls.caSecretRef") && message.contains("shop/payments-ca")
        ));
        // "CA" base64-encoded.
        let secret: Secret =
            object("metadata: {name: payments-ca, namespace: shop}\ndata: {ca.crt: Q0E=}");
        index.apply(Change::Upsert(secret.into_object()));
        assert_eq!(verdicts_in(&index, "shop")[&key], Verdict::Accepted);
        let snapshot = snapshot_of(&index, "api-0").snapshot;
        assert_eq!(
            snapshot.ca_bundles,
            BTreeMap::from([("shop/payments-ca/ca.crt".to_owned(), "CA".to_owned())])
        );
    }

    #[test]
    fn a_failover_policy_waits_for_its_services_and_their_endpoints_travel_apart() {
        let policy: FailoverPolicy = object(
            r#"
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {name: pay, namespace: shop, generation: 3}
spec:
  selector: {matchLabels: {app: api}}
  upstreams:
  - name: payments
    match: {hosts: [payments]}
    groups:
    - name: primary
      backends: [{service: {name: payments, port: 80}}, {address: "10.9.9.9:80"}]
    - name: secondary
      backends: [{service: {name: payments, namespace: payments-dr, port: 80}}]
"#,
        );
        let mut index = index_with(vec![
            pod("api-0", "api"),
            pod("web-0", "web"),
            policy.into_object(),
        ]);
        let key = PolicyKey {
            kind: Kind::FailoverPolicy,
            namespace: "shop".into(),
            name: "pay".into(),
        };
        assert!(matches!(
            &verdicts_in(&index, "shop")[&key],
            Verdict::Rejected { reason: "RefNotFound", message } if message.contains("shop/payments")
        ));
        assert!(snapshot_of(&index, "api-0").snapshot.failover.is_empty());

        // Port 80 is named `http`; the slices' `http` port is the target port, 8080.
        for yaml in [
            "metadata: {name: payments, namespace: shop}\n\
             spec: {ports: [{name: admin, port: 9000}, {name: http, port: 80}]}",
            "metadata: {name: payments, namespace: payments-dr}\n\
             spec: {ports: [{name: http, port: 80}]}",
        ] {
            index.apply(Change::Upsert(object::<Service>(yaml).into_object()));
        }
        assert_eq!(verdicts_in(&index, "shop")[&key], Verdict::Accepted);
        for yaml in [
            // Two slices of one Service, one endpoint in both (as while they are rebalanced),
            // one not ready, one IPv6.
            r#"
metadata: {name: payments-a, namespace: shop, labels: {kubernetes.io/service-name: payments}}
addressType: IPv4
ports: [{name: admin, port: 9900}, {name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.2], zone: zone-b, nodeName: node-2}
- {addresses: [10.0.0.1], zone: zone-a, nodeName: node-1, conditions: {ready: true}}
- {addresses: [10.0.0.3], zone: zone-a, conditions: {ready: false}}
"#,
            r#"
metadata: {name: payments-b, namespace: shop, labels: {kubernetes.io/service-name: payments}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.0.0.1], zone: zone-a, nodeName: node-1}
"#,
            r#"
metadata: {name: payments-c, namespace: shop, labels: {kubernetes.io/service-name: payments}}
addressType: IPv6
ports: [{name: http, port: 8080}]
endpoints: [{addresses: ["fd00::5"]}]
"#,
            // Another Service's slice in the same namespace.
            r#"
metadata: {name: ledger-a, namespace: shop, labels: {kubernetes.io/service-name: ledger}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.5.0.1]}]
"#,
        ] {
            index.apply(Change::Upsert(object::<EndpointSlice>(yaml).into_object()));
        }
        let snapshot = snapshot_of(&index, "api-0").snapshot;
        assert_eq!(snapshot.failover.len(), 1);
        assert_eq!(snapshot.failover[0].source.generation, 3);
        assert_eq!(snapshot.failover[0].spec.upstreams[0].name, "payments");
        let endpoint = |address: &str, zone: Option<&str>, node: Option<&str>| Endpoint {
            address: address.into(),
            zone: zone.map(Into::into),
            node_name: node.map(Into::into),
        };
        assert_eq!(
            snapshot.endpoints,
            BTreeMap::from([
                ("payments-dr/payments:80".to_string(), vec![],),
                (
                    "shop/payments:80".to_string(),
                    vec![
                        endpoint("10.0.0.1:8080", Some("zone-a"), Some("node-1")),
                        endpoint("10.0.0.2:8080", Some("zone-b"), Some("node-2")),
                        endpoint("[fd00::5]:8080", None, None),
                    ],
                ),
            ]),
            "ready endpoints only, each once; a Service with none has an empty list"
        );
        let web = snapshot_of(&index, "web-0").snapshot;
        assert!(web.failover.is_empty() && web.endpoints.is_empty());
    }

    #[test]
    fn the_app_protocol_comes_from_the_services_selecting_the_pod_that_target_its_app_port() {
        // The app port is 9000, the first containerPort; it is also named `rpc`.
        let api = object::<Pod>(
            r#"
metadata: {name: api-0, namespace: shop, uid: u-api-0, labels: {app: api}}
spec:
  containers: [{name: app, ports: [{name: rpc, containerPort: 9000}, {name: metrics, containerPort: 9100}]}]
"#,
        )
        .into_object();
        let service = |name: &str, spec: &str| {
            object::<Service>(&format!(
                "metadata: {{name: {name}, namespace: shop}}\nspec: {{{spec}}}"
            ))
            .into_object()
        };
        let mut index = index_with(vec![api, pod("web-0", "web")]);
        let protocol = |index: &Index, name: &str| {
            let compiled = snapshot_of(index, name);
            (
                compiled.snapshot.app_protocol,
                compiled.app_protocol_conflict.is_some(),
            )
        };
        assert_eq!(
            protocol(&index, "api-0"),
            (None, false),
            "no Service: detect"
        );

        // By number, by name, and with no targetPort (the port itself).
        for spec in [
            "selector: {app: api}, ports: [{port: 80, targetPort: 9000, appProtocol: kubernetes.io/h2c}]",
            "selector: {app: api}, ports: [{port: 80, targetPort: rpc, appProtocol: kubernetes.io/h2c}]",
            "selector: {app: api}, ports: [{port: 9000, appProtocol: kubernetes.io/h2c}]",
        ] {
            index.apply(Change::Upsert(service("rpc", spec)));
            assert_eq!(
                protocol(&index, "api-0"),
                (Some(AppProtocol::H2c), false),
                "{spec}"
            );
            assert_eq!(protocol(&index, "web-0"), (None, false), "not selected");
        }
        // Targeting another port, selecting another pod, or no pod at all: no opinion.
        for spec in [
            "selector: {app: api}, ports: [{port: 80, targetPort: 9100, appProtocol: kubernetes.io/h2c}]",
            "selector: {app: api}, ports: [{port: 80, targetPort: metrics, appProtocol: grpc}]",
            "selector: {app: api}, ports: [{port: 80, targetPort: missing, appProtocol: grpc}]",
            "selector: {app: web}, ports: [{port: 80, targetPort: 9000, appProtocol: grpc}]",
            "ports: [{port: 80, targetPort: 9000, appProtocol: grpc}]",
            "selector: {app: api}, ports: [{port: 80, targetPort: 9000, appProtocol: https}]",
        ] {
            index.apply(Change::Upsert(service("rpc", spec)));
            assert_eq!(protocol(&index, "api-0"), (None, false), "{spec}");
        }
        // The port's name when it has no appProtocol; HTTP/1.1 when it says so.
        index.apply(Change::Upsert(service(
            "rpc",
            "selector: {app: api}, ports: [{name: grpc-api, port: 80, targetPort: 9000}]",
        )));
        assert_eq!(protocol(&index, "api-0"), (Some(AppProtocol::H2c), false));
        index.apply(Change::Upsert(service(
            "rpc",
            "selector: {app: api}, ports: [{name: grpc-api, port: 80, targetPort: 9000, appProtocol: http}]",
        )));
        assert_eq!(protocol(&index, "api-0"), (Some(AppProtocol::Http1), false));

        // Two Services that agree, then disagree: no opinion, and the conflict names both.
        let h2c = service(
            "rpc-internal",
            "selector: {app: api}, ports: [{name: grpc, port: 81, targetPort: rpc}]",
        );
        index.apply(Change::Upsert(service(
            "rpc",
            "selector: {app: api}, ports: [{port: 80, targetPort: 9000, appProtocol: GRPC}]",
        )));
        index.apply(Change::Upsert(h2c));
        assert_eq!(protocol(&index, "api-0"), (Some(AppProtocol::H2c), false));
        index.apply(Change::Upsert(service(
            "web",
            "selector: {app: api}, ports: [{port: 8080, targetPort: 9000, appProtocol: kubernetes.io/http}]",
        )));
        let compiled = snapshot_of(&index, "api-0");
        assert_eq!(compiled.snapshot.app_protocol, None);
        let conflict = compiled.app_protocol_conflict.unwrap();
        for part in [
            "app port 9000",
            "Service shop/rpc port 80 (appProtocol GRPC): h2c",
            "Service shop/rpc-internal port 81 (port name grpc): h2c",
            "Service shop/web port 8080 (appProtocol kubernetes.io/http): http1",
            "bulwark.dev/app-protocol",
        ] {
            assert!(conflict.contains(part), "{part}: {conflict}");
        }

        // Deleted, the Services leave the snapshot as they found it.
        for name in ["web", "rpc-internal", "rpc"] {
            index.apply(Change::Delete(service(name, "")));
        }
        assert_eq!(protocol(&index, "api-0"), (None, false));
        assert_eq!(
            snapshot_of(&index, "api-0").snapshot,
            Snapshot {
                schema: SCHEMA,
                pod: Some(ObjectRef {
                    namespace: "shop".into(),
                    name: "api-0".into()
                }),
                ..Snapshot::default()
            }
        );
    }

    #[test]
    fn a_service_in_another_namespace_says_nothing_about_the_pod() {
        let mut index = index_with(vec![pod("api-0", "api")]);
        index.apply(Change::Upsert(
            object::<Service>(
                "metadata: {name: rpc, namespace: shopping}\n\
                 spec: {selector: {app: api}, ports: [{port: 8080, appProtocol: grpc}]}",
            )
            .into_object(),
        ));
        assert_eq!(snapshot_of(&index, "api-0").snapshot.app_protocol, None);
        index.apply(Change::Upsert(
            object::<Service>(
                "metadata: {name: rpc, namespace: shop}\n\
                 spec: {selector: {app: api}, ports: [{port: 8080, appProtocol: grpc}]}",
            )
            .into_object(),
        ));
        assert_eq!(
            snapshot_of(&index, "api-0").snapshot.app_protocol,
            Some(AppProtocol::H2c),
            "the pod's app port defaults to 8080"
        );
    }

    /// What `index::Index::users_of` relies on: a Service changes only the verdicts of the
    /// policies that name it, because conflicts are decided by age whatever the verdicts. If
    /// this changes, a Service change must recompile more than its users' pods.
    #[test]
    fn a_conflict_is_decided_by_age_whatever_the_older_policys_verdict() {
        let failover = |name: &str, service: &str, created: &str| {
            let mut p: FailoverPolicy = object(&format!(
                r#"
apiVersion: bulwark.dev/v1alpha1
kind: FailoverPolicy
metadata: {{name: {name}, namespace: shop, generation: 1}}
spec:
  selector: {{matchLabels: {{app: api}}}}
  upstreams:
  - name: payments
    match: {{hosts: [payments]}}
    groups: [{{name: primary, backends: [{{service: {{name: {service}, port: 80}}}}]}}]
"#
            ));
            p.metadata.creation_timestamp = Some(Time(created.parse().unwrap()));
            p.into_object()
        };
        let mut index = index_with(vec![
            pod("api-0", "api"),
            failover("old", "missing", "2026-01-01T00:00:00Z"),
            failover("new", "present", "2026-02-01T00:00:00Z"),
            object::<Service>(
                "metadata: {name: present, namespace: shop}\n\
                 spec: {ports: [{name: http, port: 80}]}",
            )
            .into_object(),
        ]);
        let key = |name: &str| PolicyKey {
            kind: Kind::FailoverPolicy,
            namespace: "shop".into(),
            name: name.into(),
        };
        let reason = |index: &Index, name: &str| match &verdicts_in(index, "shop")[&key(name)] {
            Verdict::Accepted => "Accepted",
            Verdict::Rejected { reason, .. } => reason,
        };
        assert_eq!(reason(&index, "old"), "RefNotFound");
        assert_eq!(reason(&index, "new"), "Conflicted");
        index.apply(Change::Upsert(
            object::<Service>(
                "metadata: {name: missing, namespace: shop}\n\
                 spec: {ports: [{name: http, port: 80}]}",
            )
            .into_object(),
        ));
        assert_eq!(reason(&index, "old"), "Accepted");
        assert_eq!(reason(&index, "new"), "Conflicted");
    }
}
