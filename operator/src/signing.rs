//! WebhookEndpoint signing keys across a rotation.
//!
//! When the value of the Secret key that a WebhookEndpoint's `signing.secretRef` names changes,
//! deliveries are signed with the new key **and** the previous one until
//! `signing.rotationGracePeriod` (default 24h) after the change, so that receivers can roll over
//! (Standard Webhooks receivers accept a delivery when any of its `v1,` signatures verifies).
//!
//! The previous value must survive an operator restart and be the same on every replica, so it
//! lives in a **ledger**: one operator-owned Secret in the operator's namespace
//! (`bulwark-webhook-signing-keys`, key `keys.json`), holding per endpoint (`namespace/name`)
//! the value last seen (`current`, to notice a change even one made while no operator ran) and,
//! during a grace period, the `previous` value with its `notAfter` (unix seconds). Only the
//! leader writes it ([`LedgerWriter`]); every replica reads it through the index's Secret watch
//! and compiles snapshots from it ([`signing_keys`]).
//!
//! Between a change and the leader recording it (a watch round trip), a replica compiling the
//! endpoint already sends the ledger's `current` as the previous key, expiring a grace period
//! from then: deliveries never go out signed with the new key alone.
//!
//! Key values are `SecretString`s: never logged, never in status or events.

use std::{
    collections::{BTreeMap, BTreeSet},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bulwark_api::snapshot::{ObjectRef, SecretString, SigningKey};
use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use serde::{Deserialize, Serialize};

use crate::index::{Index, Spec};

/// The Secret data key holding the ledger (JSON).
pub const LEDGER_KEY: &str = "keys.json";
/// `signing.rotationGracePeriod` when omitted.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(24 * 3600);
const FIELD_MANAGER: &str = "bulwark-operator";

/// Per endpoint (`namespace/name`), its signing key as last seen and the previous one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger(pub BTreeMap<String, Entry>);

/// One endpoint's keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// The value of the endpoint's Secret key when the leader last looked.
    pub current: SecretString,
    /// The value before it, still used until `notAfter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Previous>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Previous {
    pub secret: SecretString,
    /// Unix seconds: the change time plus the grace period.
    pub not_after: i64,
}

impl Ledger {
    /// Reads the ledger Secret's data; a missing key is an empty ledger, a malformed one too
    /// (logged: the leader then writes a fresh one, and a rotation in progress loses its
    /// previous key).
    pub fn parse(data: &BTreeMap<String, Vec<u8>>) -> Ledger {
        let Some(json) = data.get(LEDGER_KEY) else {
            return Ledger::default();
        };
        serde_json::from_slice(json).unwrap_or_else(|e| {
            // The serde error names a position, never the values.
            tracing::warn!(error = %e, "ignoring a malformed signing-key ledger");
            Ledger::default()
        })
    }

    pub fn get(&self, endpoint: &str) -> Option<&Entry> {
        self.0.get(endpoint)
    }

    /// The endpoints whose entries differ between `self` and `other`.
    pub fn changed_since(&self, other: &Ledger) -> BTreeSet<String> {
        let keys: BTreeSet<&String> = self.0.keys().chain(other.0.keys()).collect();
        keys.into_iter()
            .filter(|k| self.0.get(*k) != other.0.get(*k))
            .cloned()
            .collect()
    }
}

/// The id of an endpoint in the ledger (and in sidecar reports): `namespace/name`.
pub fn endpoint_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

pub fn unix_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The keys a snapshot carries for an endpoint whose Secret key holds `value`: the current key
/// first, then the previous one while its grace period lasts. `now` is used only between a
/// change and the leader recording it (see the module's doc).
pub fn signing_keys(
    entry: Option<&Entry>,
    value: &str,
    grace: Duration,
    now: i64,
) -> Vec<SigningKey> {
    let mut keys = vec![SigningKey {
        secret: SecretString::new(value),
        not_after: None,
    }];
    let previous = match entry {
        Some(e) if e.current.expose() == value => e
            .previous
            .as_ref()
            .filter(|p| p.secret.expose() != value)
            .map(|p| (p.secret.clone(), p.not_after)),
        // Changed, and not recorded yet.
        Some(e) if !grace.is_zero() => Some((e.current.clone(), now + grace.as_secs() as i64)),
        _ => None,
    };
    if let Some((secret, not_after)) = previous {
        keys.push(SigningKey {
            secret,
            not_after: Some(not_after),
        });
    }
    keys
}

/// What the leader records next, from the stored ledger and the endpoints as they are now:
/// `(id, the value of its Secret key if it resolves, its grace period)`.
///
/// - A new endpoint is recorded with its value.
/// - A changed value becomes `current`, the recorded one `previous` until `now + grace` (none
///   with a zero grace period). A second change within a grace period drops the oldest key.
/// - An expired previous key is dropped.
/// - An endpoint whose Secret does not resolve keeps its entry (the Secret may come back);
///   a deleted endpoint loses it.
pub fn next_ledger<'a>(
    stored: &Ledger,
    endpoints: impl IntoIterator<Item = (String, Option<&'a str>, Duration)>,
    now: i64,
) -> Ledger {
    let live = |p: &Option<Previous>| p.clone().filter(|p| p.not_after > now);
    let mut next = Ledger::default();
    for (id, value, grace) in endpoints {
        let entry = match (stored.get(&id), value) {
            (None, None) => continue,
            (Some(e), None) => Entry {
                current: e.current.clone(),
                previous: live(&e.previous),
            },
            (None, Some(v)) => Entry {
                current: SecretString::new(v),
                previous: None,
            },
            (Some(e), Some(v)) if e.current.expose() == v => Entry {
                current: e.current.clone(),
                previous: live(&e.previous),
            },
            (Some(e), Some(v)) => Entry {
                current: SecretString::new(v),
                previous: (!grace.is_zero()).then(|| Previous {
                    secret: e.current.clone(),
                    not_after: now + grace.as_secs() as i64,
                }),
            },
        };
        next.0.insert(id, entry);
    }
    next
}

/// The grace period of an endpoint spec.
pub fn grace_of(spec: &bulwark_api::crd::WebhookEndpointSpec) -> Duration {
    spec.signing
        .rotation_grace_period
        .map_or(DEFAULT_GRACE, |d| d.as_std())
}

/// Every WebhookEndpoint of the index with the value of its Secret key (if it resolves) and
/// its grace period.
pub fn endpoints_of(index: &Index) -> Vec<(String, Option<String>, Duration)> {
    index
        .policies
        .iter()
        .filter_map(|(key, policy)| match &policy.spec {
            Spec::Webhook(spec) => {
                let value =
                    crate::compile::secret_value(index, &key.namespace, &spec.signing.secret_ref)
                        .ok();
                Some((
                    endpoint_id(&key.namespace, &key.name),
                    value,
                    grace_of(spec),
                ))
            }
            _ => None,
        })
        .collect()
}

/// Writes the ledger Secret while this replica leads (server-side apply; created on first use).
pub struct LedgerWriter {
    client: Client,
    secret: ObjectRef,
    /// What this leader last wrote, until the watch shows it.
    written: Option<Ledger>,
}

impl LedgerWriter {
    pub fn new(client: Client, secret: ObjectRef) -> Self {
        Self {
            client,
            secret,
            written: None,
        }
    }

    /// A new leadership term starts from what is stored.
    pub fn forget(&mut self) {
        self.written = None;
    }

    /// Records rotations and expiries if the ledger should change.
    pub async fn reconcile(&mut self, index: &std::sync::RwLock<Index>) {
        let (stored, next) = {
            let index = index.read().expect("index lock");
            if !index.is_synced() {
                return;
            }
            let endpoints = endpoints_of(&index);
            let stored = index.signing_ledger().clone();
            let next = next_ledger(
                &stored,
                endpoints
                    .iter()
                    .map(|(id, v, g)| (id.clone(), v.as_deref(), *g)),
                unix_seconds(),
            );
            (stored, next)
        };
        let known = self.written.as_ref().unwrap_or(&stored);
        if *known == next {
            return;
        }
        let rotated: Vec<&String> = next
            .0
            .iter()
            .filter(|(id, e)| {
                e.previous.is_some() && known.get(id).is_some_and(|k| k.current != e.current)
            })
            .map(|(id, _)| id)
            .collect();
        match self.write(&next).await {
            Ok(()) => {
                for id in rotated {
                    tracing::info!(endpoint = %id, "webhook signing key rotated; the previous key signs too until its grace period ends");
                }
                self.written = Some(next);
            }
            Err(e) => tracing::warn!(
                secret = %format!("{}/{}", self.secret.namespace, self.secret.name),
                error = %e,
                "cannot write the webhook signing-key ledger; retrying"
            ),
        }
    }

    async fn write(&self, ledger: &Ledger) -> Result<(), kube::Error> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.secret.namespace);
        let json = serde_json::to_vec(ledger).expect("a ledger serialises");
        let body = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.secret.name,
                "namespace": self.secret.namespace,
                "labels": {
                    "app.kubernetes.io/name": "bulwark",
                    "app.kubernetes.io/component": "webhook-signing-keys",
                },
            },
            "type": "Opaque",
            "data": { LEDGER_KEY: base64::Engine::encode(&base64::engine::general_purpose::STANDARD, json) },
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&self.secret.name, &params, &Patch::Apply(body))
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn entry(current: &str, previous: Option<(&str, i64)>) -> Entry {
        Entry {
            current: SecretString::new(current),
            previous: previous.map(|(s, t)| Previous {
                secret: SecretString::new(s),
                not_after: t,
            }),
        }
    }

    fn ledger(entries: &[(&str, Entry)]) -> Ledger {
        Ledger(
            entries
                .iter()
                .map(|(id, e)| (id.to_string(), e.clone()))
                .collect(),
        )
    }

    fn keys(keys: &[SigningKey]) -> Vec<(&str, Option<i64>)> {
        keys.iter()
            .map(|k| (k.secret.expose(), k.not_after))
            .collect()
    }

    #[test]
    fn a_change_keeps_the_previous_key_until_the_grace_period_ends() {
        let now = 1_000_000;
        // First sight: recorded, one key.
        let first = next_ledger(
            &Ledger::default(),
            [("shop/billing".into(), Some("whsec_old"), HOUR)],
            now,
        );
        assert_eq!(first, ledger(&[("shop/billing", entry("whsec_old", None))]));
        assert_eq!(
            keys(&signing_keys(
                first.get("shop/billing"),
                "whsec_old",
                HOUR,
                now
            )),
            [("whsec_old", None)]
        );
        // Unchanged: nothing to write.
        assert_eq!(
            next_ledger(
                &first,
                [("shop/billing".into(), Some("whsec_old"), HOUR)],
                now + 5
            ),
            first
        );

        // The Secret changes. Before the leader records it, a replica already sends both, the
        // previous expiring a grace period from now.
        assert_eq!(
            keys(&signing_keys(
                first.get("shop/billing"),
                "whsec_new",
                HOUR,
                now + 10
            )),
            [("whsec_new", None), ("whsec_old", Some(now + 10 + 3600))]
        );
        let rotated = next_ledger(
            &first,
            [("shop/billing".into(), Some("whsec_new"), HOUR)],
            now + 10,
        );
        assert_eq!(
            rotated,
            ledger(&[(
                "shop/billing",
                entry("whsec_new", Some(("whsec_old", now + 10 + 3600)))
            )])
        );
        assert_eq!(
            keys(&signing_keys(
                rotated.get("shop/billing"),
                "whsec_new",
                HOUR,
                now + 20
            )),
            [("whsec_new", None), ("whsec_old", Some(now + 3610))]
        );
        // Still in the grace period: unchanged. After it: the previous key is dropped.
        assert_eq!(
            next_ledger(
                &rotated,
                [("shop/billing".into(), Some("whsec_new"), HOUR)],
                now + 3609
            ),
            rotated
        );
        let expired = next_ledger(
            &rotated,
            [("shop/billing".into(), Some("whsec_new"), HOUR)],
            now + 3610,
        );
        assert_eq!(
            expired,
            ledger(&[("shop/billing", entry("whsec_new", None))])
        );
        assert_eq!(
            rotated.changed_since(&expired),
            BTreeSet::from(["shop/billing".to_string()])
        );
    }

    #[test]
    fn a_second_change_drops_the_oldest_and_a_zero_grace_period_keeps_none() {
        let stored = ledger(&[("shop/a", entry("k2", Some(("k1", 500))))]);
        let next = next_ledger(&stored, [("shop/a".into(), Some("k3"), HOUR)], 100);
        assert_eq!(next, ledger(&[("shop/a", entry("k3", Some(("k2", 3700))))]));
        let none = next_ledger(
            &stored,
            [("shop/a".into(), Some("k3"), Duration::ZERO)],
            100,
        );
        assert_eq!(none, ledger(&[("shop/a", entry("k3", None))]));
        assert_eq!(
            keys(&signing_keys(
                stored.get("shop/a"),
                "k3",
                Duration::ZERO,
                100
            )),
            [("k3", None)],
            "no grace period: never the old key"
        );
        // A Secret changed back to the previous value: one key only.
        let back = ledger(&[("shop/a", entry("k2", Some(("k2", 500))))]);
        assert_eq!(
            keys(&signing_keys(back.get("shop/a"), "k2", HOUR, 100)),
            [("k2", None)]
        );
    }

    #[test]
    fn a_missing_secret_keeps_the_entry_and_a_deleted_endpoint_loses_it() {
        let stored = ledger(&[
            ("shop/a", entry("ka", Some(("old", 50)))),
            ("shop/gone", entry("kg", None)),
        ]);
        let next = next_ledger(&stored, [("shop/a".into(), None, HOUR)], 100);
        assert_eq!(next, ledger(&[("shop/a", entry("ka", None))]));
    }

    #[test]
    fn the_ledger_never_prints_a_key() {
        let l = ledger(&[("shop/a", entry("whsec_c2VjcmV0", Some(("whsec_b2xk", 5))))]);
        assert!(!format!("{l:?}").contains("whsec_"));
        let json = serde_json::to_vec(&l).unwrap();
        let data = BTreeMap::from([(LEDGER_KEY.to_string(), json)]);
        assert_eq!(Ledger::parse(&data), l);
        let bad = BTreeMap::from([(LEDGER_KEY.to_string(), b"{not json".to_vec())]);
        assert_eq!(Ledger::parse(&bad), Ledger::default());
    }
}
