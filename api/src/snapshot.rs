//! The compiled per-pod snapshot: the contract between the operator and the sidecar.
//!
//! The operator selects, for one pod, every policy whose selector matches it, resolves what the
//! sidecar cannot see (Service backends to endpoints, Secret references to keys) and sends the
//! result as one versioned value. The sidecar validates a snapshot whole, compiles it into its
//! runtime structures and swaps it in atomically; standalone mode builds the same value from CR
//! YAML files. Policy specs travel as the user wrote them (already validated by the apiserver):
//! one source of truth, no second schema to keep in step.

use std::{collections::BTreeMap, fmt};

use serde::{Deserialize, Serialize};

use crate::crd::{
    FailoverPolicySpec, FeatureFlagSpec, QuotaPolicySpec, RateLimitPolicySpec, WebhookEndpointSpec,
};

/// The snapshot format this build reads and writes. A sidecar refuses a snapshot with another
/// `schema`, keeping its last good one, rather than misreading it.
///
/// 2: a Service backend's endpoints moved from each failover policy (`serviceEndpoints`, plain
/// addresses) to the snapshot's own [`Snapshot::endpoints`], with zone and node.
pub const SCHEMA: u32 = 2;

/// Everything one sidecar enforces.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// The format, [`SCHEMA`].
    pub schema: u32,
    /// Increases with every change for this pod; a reconnecting sidecar sends the version it has
    /// and receives nothing until something newer exists.
    pub version: u64,
    /// The pod this snapshot was compiled for (`None` in standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<Sourced<RateLimitPolicySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub quotas: Vec<Sourced<QuotaPolicySpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub feature_flags: Vec<Sourced<FeatureFlagSpec>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<Sourced<FailoverPolicySpec>>,
    /// The ready endpoints of every Service that a policy in `failover` names as a backend, by
    /// [`service_port_id`] (`namespace/name:port`, the Service port). Only those Services are
    /// sent; an empty list means the Service exists but has no ready endpoint on that port.
    /// Static `address` backends need no entry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoints: BTreeMap<String, Vec<Endpoint>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Sourced<ResolvedWebhookEndpoint>>,
    /// The Redis for `scope: Global` policies, sent only to pods that have one (its URL may hold
    /// a password, so it travels like a signing key: in the authenticated stream only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConnection>,
    /// The keys that `jwt.verification.keySecretRef`s of the policies above name, read from their
    /// Secrets, by [`secret_key_id`]. Only the keys this pod's policies name are sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub jwt_keys: BTreeMap<String, SecretString>,
    /// The CA bundles (PEM) that `tls.caSecretRef`s of the FailoverPolicies above name, by
    /// [`secret_key_id`]: certificates are public, so they are shown as they are.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ca_bundles: BTreeMap<String, String>,
    /// What the app speaks on the port the sidecar forwards to, from the `appProtocol` of the
    /// Service ports that target it (`None`: no Service declares one; the sidecar then sends
    /// gRPC over h2c and everything else over HTTP/1.1). A pod's `bulwark.dev/app-protocol`
    /// annotation (the sidecar's `--app-protocol`) wins over it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<AppProtocol>,
}

/// The protocol of the app's port, as the operator resolved it from Service `appProtocol`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    /// HTTP/1.1 for every request (`http`, `kubernetes.io/http`, `kubernetes.io/ws`).
    Http1,
    /// HTTP/2 with prior knowledge for every request (`kubernetes.io/h2c`, `grpc`).
    H2c,
}

/// How a Secret key is named in [`Snapshot::jwt_keys`]: `namespace/secret/key`.
pub fn secret_key_id(namespace: &str, secret: &crate::crd::common::SecretKeyRef) -> String {
    format!("{namespace}/{}/{}", secret.name, secret.key)
}

/// How a Service port is named in [`Snapshot::endpoints`]: `namespace/name:port`, with the
/// Service's port number (what a `service` backend names), not the endpoints' target port.
pub fn service_port_id(namespace: &str, name: &str, port: u16) -> String {
    format!("{namespace}/{name}:{port}")
}

/// One ready endpoint of a Service, from its EndpointSlices.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `ip:port` (`[ip]:port` for IPv6), the port being the endpoint's target port.
    pub address: String,
    /// The endpoint's `zone` (`topology.kubernetes.io/zone` of its node), when the
    /// EndpointSlice gives one: zone-aware failover prefers the caller's zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The node the endpoint runs on (`nodeName`), when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// How to reach Redis: one server, or Redis Cluster seed nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RedisConnection {
    /// `redis://[:password@]host:port[/db]`.
    Url(SecretString),
    /// Seed node URLs of a Redis Cluster.
    Cluster(Vec<SecretString>),
}

impl RedisConnection {
    /// From the `--redis-url` / `--redis-cluster` flags both binaries take: the URL if given,
    /// else the cluster seeds if any.
    pub fn from_flags(url: Option<&str>, cluster: &[String]) -> Option<Self> {
        match (url, cluster.is_empty()) {
            (Some(url), _) => Some(Self::Url(SecretString::new(url))),
            (None, false) => Some(Self::Cluster(
                cluster.iter().map(SecretString::new).collect(),
            )),
            (None, true) => None,
        }
    }
}

/// A namespaced object.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    pub namespace: String,
    pub name: String,
}

/// A policy spec and where it came from, so the sidecar's metrics, logs and acknowledgements
/// name the policy and generation they concern.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sourced<T> {
    pub source: PolicySource,
    pub spec: T,
}

/// Identity of a policy object at one generation.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySource {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation` of the spec carried (0 in standalone mode).
    pub generation: i64,
}

/// A WebhookEndpoint with its signing keys read from the referenced Secret.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedWebhookEndpoint {
    pub endpoint: WebhookEndpointSpec,
    /// The current key first; during rotation also the previous one until its grace period ends.
    pub signing_keys: Vec<SigningKey>,
}

/// One `whsec_` signing key.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SigningKey {
    pub secret: SecretString,
    /// Unix seconds after which this (previous) key is no longer used; `None` for the current key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("secret", &self.secret)
            .field("not_after", &self.not_after)
            .finish()
    }
}

/// A secret value: serialised as is (it must reach the sidecar), never printed by `Debug` or
/// `Display`, so it cannot leak into logs or the `/config` dump by accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that uses it (signing).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Snapshot {
    /// True when `self` and `other` differ at most in `version` and `endpoints`: the policies
    /// (and the app's protocol) are the same, so a sidecar can take the new endpoints without
    /// compiling anything.
    pub fn same_policies(&self, other: &Snapshot) -> bool {
        // Every field named, so a new one cannot be forgotten here.
        let Snapshot {
            schema,
            version: _,
            pod,
            rate_limits,
            quotas,
            feature_flags,
            failover,
            endpoints: _,
            webhooks,
            redis,
            jwt_keys,
            ca_bundles,
            app_protocol,
        } = self;
        *schema == other.schema
            && *pod == other.pod
            && *rate_limits == other.rate_limits
            && *quotas == other.quotas
            && *feature_flags == other.feature_flags
            && *failover == other.failover
            && *webhooks == other.webhooks
            && *redis == other.redis
            && *jwt_keys == other.jwt_keys
            && *ca_bundles == other.ca_bundles
            && *app_protocol == other.app_protocol
    }

    /// An empty snapshot of the current schema: a sidecar with it passes traffic through.
    pub fn empty() -> Self {
        Self {
            schema: SCHEMA,
            ..Self::default()
        }
    }

    /// A copy safe to show (the admin `/config` dump): every secret replaced by `<redacted>`.
    /// Policy specs and `endpoints` hold no secrets and are shown as they are.
    pub fn redacted(&self) -> Self {
        let mut copy = self.clone();
        for webhook in &mut copy.webhooks {
            for key in &mut webhook.spec.signing_keys {
                key.secret = SecretString::new("<redacted>");
            }
        }
        for key in copy.jwt_keys.values_mut() {
            *key = SecretString::new("<redacted>");
        }
        copy.redis = copy.redis.map(|redis| match redis {
            RedisConnection::Url(_) => RedisConnection::Url(SecretString::new("<redacted>")),
            RedisConnection::Cluster(nodes) => RedisConnection::Cluster(
                nodes
                    .iter()
                    .map(|_| SecretString::new("<redacted>"))
                    .collect(),
            ),
        });
        copy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::common::SecretKeyRef;
    use crate::crd::webhook::{Signing, WebhookEndpointSpec};

    fn webhook_snapshot() -> Snapshot {
        let endpoint: WebhookEndpointSpec = WebhookEndpointSpec {
            selector: Default::default(),
            scope: Default::default(),
            url: "https://hooks.example.com/in".into(),
            signing: Signing {
                secret_ref: SecretKeyRef {
                    name: "hook".into(),
                    key: "secret".into(),
                },
                rotation_grace_period: None,
            },
            event_types: vec!["invoice.*".into()],
            headers: vec![],
            timeout: None,
            retry: None,
            max_message_age: None,
            rate_limit_per_second: None,
            max_concurrency: None,
            ordered: false,
            disabled: false,
            disable_after_failing_for: None,
            network: None,
        };
        Snapshot {
            version: 7,
            pod: Some(ObjectRef {
                namespace: "shop".into(),
                name: "api-0".into(),
            }),
            webhooks: vec![Sourced {
                source: PolicySource {
                    namespace: "shop".into(),
                    name: "billing".into(),
                    generation: 3,
                },
                spec: ResolvedWebhookEndpoint {
                    endpoint,
                    signing_keys: vec![SigningKey {
                        secret: SecretString::new("whsec_c2VjcmV0"),
                        not_after: None,
                    }],
                },
            }],
            redis: Some(RedisConnection::Url(SecretString::new(
                "redis://:hunter2@redis:6379",
            ))),
            jwt_keys: BTreeMap::from([(
                "shop/jwt/hs256".to_string(),
                SecretString::new("jwt-hmac-secret"),
            )]),
            ..Snapshot::empty()
        }
    }

    #[test]
    fn round_trips_through_json() {
        let snapshot = webhook_snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        assert!(
            json.contains("whsec_c2VjcmV0"),
            "the key must travel to the sidecar"
        );
        assert_eq!(serde_json::from_str::<Snapshot>(&json).unwrap(), snapshot);
    }

    #[test]
    fn secrets_never_appear_in_debug_or_redacted_copies() {
        let snapshot = webhook_snapshot();
        assert!(!format!("{snapshot:?}").contains("whsec_c2VjcmV0"));
        assert!(!format!("{snapshot:?}").contains("hunter2"));
        assert!(!format!("{snapshot:?}").contains("jwt-hmac-secret"));
        let shown = serde_json::to_string(&snapshot.redacted()).unwrap();
        assert!(!shown.contains("whsec_c2VjcmV0"));
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("jwt-hmac-secret"));
        assert!(shown.contains("<redacted>"));
    }

    fn failover_snapshot() -> Snapshot {
        let spec: FailoverPolicySpec = serde_json::from_value(serde_json::json!({
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [{
                "name": "payments",
                "match": {"hosts": ["payments"]},
                "groups": [{"name": "primary", "backends": [
                    {"service": {"name": "payments", "port": 8080}},
                    {"address": "10.9.9.9:80"}
                ]}]
            }]
        }))
        .unwrap();
        Snapshot {
            failover: vec![Sourced {
                source: PolicySource {
                    namespace: "shop".into(),
                    name: "payments-failover".into(),
                    generation: 2,
                },
                spec,
            }],
            endpoints: BTreeMap::from([(
                service_port_id("shop", "payments", 8080),
                vec![
                    Endpoint {
                        address: "10.0.0.1:8443".into(),
                        zone: Some("zone-a".into()),
                        node_name: Some("node-1".into()),
                    },
                    Endpoint {
                        address: "[fd00::2]:8443".into(),
                        zone: None,
                        node_name: None,
                    },
                ],
            )]),
            ..Snapshot::empty()
        }
    }

    #[test]
    fn endpoints_are_their_own_section_in_camel_case_without_empty_fields() {
        let snapshot = failover_snapshot();
        let json = serde_json::to_value(&snapshot).unwrap();
        assert_eq!(json["schema"], 2);
        assert_eq!(
            json["endpoints"],
            serde_json::json!({"shop/payments:8080": [
                {"address": "10.0.0.1:8443", "zone": "zone-a", "nodeName": "node-1"},
                {"address": "[fd00::2]:8443"}
            ]})
        );
        assert!(
            json["failover"][0].get("policy").is_none()
                && json["failover"][0]["spec"]["upstreams"][0]["name"] == "payments",
            "a failover policy travels as its spec, like the other kinds: {json}"
        );
        let text = serde_json::to_string(&snapshot).unwrap();
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), snapshot);
        assert!(
            !serde_json::to_string(&Snapshot::empty())
                .unwrap()
                .contains("endpoints"),
            "no failover, no section"
        );
        // Nothing in it is secret: the /config dump shows it whole.
        assert_eq!(snapshot.redacted().endpoints, snapshot.endpoints);
    }

    #[test]
    fn redis_flags_prefer_the_url_then_the_cluster() {
        let cluster = ["redis://a:7000".to_string(), "redis://b:7000".to_string()];
        assert!(matches!(
            RedisConnection::from_flags(Some("redis://r:6379"), &cluster),
            Some(RedisConnection::Url(url)) if url.expose() == "redis://r:6379"
        ));
        assert!(matches!(
            RedisConnection::from_flags(None, &cluster),
            Some(RedisConnection::Cluster(nodes)) if nodes.len() == 2
        ));
        assert_eq!(RedisConnection::from_flags(None, &[]), None);
    }
}
