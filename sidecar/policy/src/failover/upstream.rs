//! An upstream: its compiled match and settings, its long-lived state (endpoints, breaker,
//! retry budget, bulkhead, the active group), and its groups of endpoints for one snapshot's
//! `endpoints`. Choosing the endpoint of a try ([`Upstream::pick`]) lives here, beside the
//! state it reads.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
};

use bulwark_api::{
    crd::{
        common::{DenyResponse, HttpHeader},
        failover::{FailoverMode, LoadBalancer, Upstream as UpstreamSpec},
    },
    snapshot::{Endpoint as SnapshotEndpoint, PolicySource, service_port_id},
};
use prometheus::{Histogram, IntCounter, IntGauge};

use super::{
    breaker::{Breaker, BreakerState},
    budget::RetryBudget,
    bulkhead::Bulkhead,
    endpoint::{Address, EndpointState, RESULTS},
    outlier::ejection_allowed,
    settings::Settings,
};
use crate::{
    compile::{CompileEnv, CompileError},
    lock::lock,
    matching::CompiledMatch,
    respond::{DenyTemplate, Reason, Reply},
};

/// The endpoints an upstream has known, by address: an endpoint that stays across snapshots
/// keeps its health and ejection. Pruned to the installed policy's endpoints on install.
#[derive(Default)]
pub struct EndpointStates(Mutex<HashMap<Address, Arc<EndpointState>>>);

/// Which group takes `ActivePassive` traffic, and since when a better one has qualified.
#[derive(Default)]
pub struct ActiveGroup {
    index: AtomicUsize,
    /// Unix nanoseconds since which a higher-priority group has qualified again; 0: none has.
    better_since: AtomicU64,
}

/// What a snapshot's compile makes of an upstream; shared by the snapshots that change only
/// endpoints.
pub struct CompiledUpstream {
    /// `namespace/name` of the FailoverPolicy.
    pub policy: String,
    pub name: String,
    namespace: String,
    matcher: CompiledMatch,
    pub settings: Settings,
    spec: UpstreamSpec,
    endpoints: Arc<EndpointStates>,
    pub breaker: Option<Arc<Mutex<Breaker>>>,
    pub budget: Arc<Mutex<RetryBudget>>,
    pub bulkhead: Option<Arc<Bulkhead>>,
    active: Arc<ActiveGroup>,
    fallback: DenyTemplate,
    /// This pod's zone, when known (for `zoneAware`).
    local_zone: Option<String>,
    /// TLS to the backends (`tls`); `None`: plain HTTP.
    pub tls: Option<UpstreamTls>,
    pub(super) metrics: UpstreamMetrics,
}

/// The upstream's metric handles, resolved once per compile.
pub(super) struct UpstreamMetrics {
    pub try_seconds: Histogram,
    pub retries: IntCounter,
    pub budget_exhausted: IntCounter,
    pub breaker_state: IntGauge,
    pub active_group: IntGauge,
    labels: [String; 2],
    registry: Arc<FailoverMetricsHandle>,
}

/// The metric families, for handles resolved later (an endpoint's, a refusal's).
pub(super) struct FailoverMetricsHandle {
    pub tries: prometheus::IntCounterVec,
    pub ejections: prometheus::IntCounterVec,
    pub endpoint_healthy: prometheus::IntGaugeVec,
    pub breaker_transitions: prometheus::IntCounterVec,
    pub refusals: prometheus::IntCounterVec,
}

impl UpstreamMetrics {
    pub fn breaker_entered(&self, state: BreakerState) {
        self.breaker_state.set(state.gauge_value());
        let [policy, upstream] = &self.labels;
        self.registry
            .breaker_transitions
            .with_label_values(&[policy.as_str(), upstream.as_str(), state.as_str()])
            .inc();
    }

    pub fn refused(&self, reason: Reason) {
        let [policy, upstream] = &self.labels;
        self.registry
            .refusals
            .with_label_values(&[policy.as_str(), upstream.as_str(), reason.as_str()])
            .inc();
    }

    pub fn endpoint_healthy(&self, endpoint: &Address) -> IntGauge {
        let [policy, upstream] = &self.labels;
        self.registry.endpoint_healthy.with_label_values(&[
            policy.as_str(),
            upstream.as_str(),
            &endpoint.to_string(),
        ])
    }
}

/// One endpoint of a group, for one snapshot.
pub struct Endpoint {
    pub state: Arc<EndpointState>,
    pub weight: u32,
    pub zone: Option<String>,
}

pub struct Group {
    pub name: String,
    pub endpoints: Vec<Endpoint>,
}

/// An upstream with its groups' endpoints as one snapshot gives them.
pub struct Upstream {
    pub compiled: Arc<CompiledUpstream>,
    pub groups: Vec<Group>,
    /// The round-robin position.
    next: AtomicUsize,
}

/// The endpoint chosen for a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pick {
    pub group: usize,
    pub index: usize,
}

fn hash(parts: &[&str]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(parts.join("\n").as_bytes())
}

impl CompiledUpstream {
    /// `spec`, an upstream of the FailoverPolicy `source`; `ca_bundles`: the snapshot's.
    pub fn compile(
        source: &PolicySource,
        spec: &UpstreamSpec,
        env: &CompileEnv<'_>,
        ca_bundles: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, CompileError> {
        let (namespace, metrics, state, regexes) = (
            source.namespace.as_str(),
            &env.metrics.failover,
            &env.state,
            &env.regexes,
        );
        let local_zone = env.zone;
        let policy = format!("{namespace}/{}", source.name);
        let matcher =
            CompiledMatch::compile(&spec.match_, regexes).map_err(|e| e.under("match"))?;
        let settings = Settings::of(spec);
        let fallback = compile_fallback(spec.fallback.as_ref())?;
        let tls = spec
            .tls
            .as_ref()
            .map(|tls| UpstreamTls::compile(tls, namespace, ca_bundles))
            .transpose()
            .map_err(|e| e.under("tls"))?;
        // Each part of the state lives as long as what makes it valid: endpoints' health while
        // the health check is the same, the breaker while its settings are, and so on.
        let id = |part: &str, settings: String| hash(&[&policy, &spec.name, part, &settings]);
        let endpoints = state.claim(
            id("endpoints", json(&spec.health_check)),
            EndpointStates::default,
        );
        let breaker = settings.breaker.map(|config| {
            state.claim(id("breaker", json(&spec.circuit_breaker)), || {
                Mutex::new(Breaker::new(config))
            })
        });
        let budget = state.claim(id("budget", json(&spec.retry)), || {
            Mutex::new(RetryBudget::new(settings.retry.budget))
        });
        let bulkhead = settings
            .bulkhead
            .clone()
            .map(|b| state.claim(id("bulkhead", json(&spec.bulkhead)), || Bulkhead::new(b)));
        let group_names: Vec<&str> = spec.groups.iter().map(|g| g.name.as_str()).collect();
        let active = state.claim(id("active", group_names.join(",")), ActiveGroup::default);
        let labels = [policy.clone(), spec.name.clone()];
        let upstream_labels = [labels[0].as_str(), labels[1].as_str()];
        let metrics = UpstreamMetrics {
            try_seconds: metrics.try_seconds.with_label_values(&upstream_labels),
            retries: metrics.retries.with_label_values(&upstream_labels),
            budget_exhausted: metrics.budget_exhausted.with_label_values(&upstream_labels),
            breaker_state: metrics.breaker_state.with_label_values(&upstream_labels),
            active_group: metrics.active_group.with_label_values(&upstream_labels),
            registry: Arc::new(FailoverMetricsHandle {
                tries: metrics.tries.clone(),
                ejections: metrics.ejections.clone(),
                endpoint_healthy: metrics.endpoint_healthy.clone(),
                breaker_transitions: metrics.breaker_transitions.clone(),
                refusals: metrics.refusals.clone(),
            }),
            labels,
        };
        if let Some(breaker) = &breaker {
            metrics
                .breaker_state
                .set(lock(breaker).state(0).gauge_value());
        }
        metrics
            .active_group
            .set(active.index.load(Ordering::Relaxed) as i64);
        Ok(Self {
            policy,
            name: spec.name.clone(),
            namespace: namespace.to_owned(),
            matcher,
            settings,
            spec: spec.clone(),
            endpoints,
            breaker,
            budget,
            bulkhead,
            active,
            fallback,
            local_zone: local_zone.map(str::to_owned),
            tls,
            metrics,
        })
    }

    /// The FailoverPolicy's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn matches(&self, req: &crate::request::RequestView<'_>) -> bool {
        self.matcher.matches(req)
    }

    pub fn headers_read(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.matcher.headers_read()
    }

    /// The state of the endpoint at `address`: the one known, or a new one.
    fn endpoint(&self, address: Address) -> Arc<EndpointState> {
        let mut known = lock(&self.endpoints.0);
        known
            .entry(address.clone())
            .or_insert_with(|| {
                let name = address.to_string();
                let [policy, upstream] = &self.metrics.labels;
                let tries = std::array::from_fn(|i| {
                    self.metrics.registry.tries.with_label_values(&[
                        policy.as_str(),
                        upstream.as_str(),
                        name.as_str(),
                        RESULTS[i],
                    ])
                });
                let ejections = self.metrics.registry.ejections.with_label_values(&[
                    policy.as_str(),
                    upstream.as_str(),
                    name.as_str(),
                ]);
                self.metrics.endpoint_healthy(&address).set(1);
                Arc::new(EndpointState::new(address, tries, ejections))
            })
            .clone()
    }

    /// This upstream's groups with the endpoints `endpoints` gives its Service backends.
    pub fn with_endpoints(
        self: &Arc<Self>,
        endpoints: &std::collections::BTreeMap<String, Vec<SnapshotEndpoint>>,
    ) -> Upstream {
        let groups = self
            .spec
            .groups
            .iter()
            .map(|group| {
                let mut members = Vec::new();
                for backend in &group.backends {
                    let weight = backend.weight.unwrap_or(1);
                    if let Some(address) = backend.address.as_deref().and_then(Address::parse) {
                        members.push(Endpoint {
                            state: self.endpoint(address),
                            weight,
                            zone: None,
                        });
                    }
                    if let Some(service) = &backend.service {
                        let namespace = service.namespace.as_deref().unwrap_or(&self.namespace);
                        let key = service_port_id(namespace, &service.name, service.port);
                        for e in endpoints.get(&key).into_iter().flatten() {
                            let Some(address) = Address::parse(&e.address) else {
                                continue;
                            };
                            members.push(Endpoint {
                                state: self.endpoint(address),
                                weight,
                                zone: e.zone.clone(),
                            });
                        }
                    }
                }
                Group {
                    name: group.name.clone(),
                    endpoints: members,
                }
            })
            .collect();
        Upstream {
            compiled: self.clone(),
            groups,
            next: AtomicUsize::new(0),
        }
    }

    /// The reply when no endpoint can be tried: the upstream's `fallback`, else a 503.
    pub fn fallback(&self, reason: Reason) -> Reply {
        self.metrics.refused(reason);
        self.fallback.reply(reason, Vec::new())
    }
}

/// TLS from the sidecar to the backends, compiled.
pub struct UpstreamTls {
    /// The name sent (SNI) and verified; `None`: the host the app called.
    pub sni: Option<String>,
    /// The CA certificates (DER) the backends' must chain to; `None`: the system's roots.
    pub ca: Option<Vec<Vec<u8>>>,
    /// The proxy's own form of `ca`, made once by the proxy on first use (this crate does not
    /// know its type).
    pub proxy_ca: std::sync::OnceLock<Arc<dyn std::any::Any + Send + Sync>>,
}

impl UpstreamTls {
    /// The CA bundle comes from the snapshot's `caBundles` (resolved from the Secret); errors
    /// name `caSecretRef`.
    fn compile(
        tls: &bulwark_api::crd::failover::UpstreamTls,
        namespace: &str,
        ca_bundles: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, CompileError> {
        let ca = tls
            .ca_secret_ref
            .as_ref()
            .map(|secret| {
                let id = bulwark_api::snapshot::secret_key_id(namespace, secret);
                let pem = ca_bundles.get(&id).ok_or_else(|| {
                    CompileError::new("caSecretRef", format!("the snapshot has no CA bundle {id}"))
                })?;
                ca_certificates(pem).map_err(|message| CompileError::new("caSecretRef", message))
            })
            .transpose()?;
        Ok(Self {
            sni: tls.sni.clone(),
            ca,
            proxy_ca: std::sync::OnceLock::new(),
        })
    }
}

/// The certificates of a PEM bundle, as DER, each checked to parse as X.509.
fn ca_certificates(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls_pki_types::{CertificateDer, pem::PemObject};
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the CA bundle is not valid PEM: {e}"))?;
    if certificates.is_empty() {
        return Err("the CA bundle holds no PEM certificate".into());
    }
    for (i, der) in certificates.iter().enumerate() {
        x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("certificate {i} of the CA bundle is not X.509: {e}"))?;
    }
    Ok(certificates)
}

/// `fallback` as a response template: a `Content-Type` among its headers is the body's type.
fn compile_fallback(
    fallback: Option<&bulwark_api::crd::failover::Fallback>,
) -> Result<DenyTemplate, CompileError> {
    let deny = fallback.map(|f| {
        let (content_type, headers): (Vec<HttpHeader>, Vec<HttpHeader>) = f
            .headers
            .iter()
            .cloned()
            .partition(|h| h.name.eq_ignore_ascii_case("content-type"));
        DenyResponse {
            status_code: f.status_code,
            headers,
            body: f.body.clone(),
            content_type: content_type.into_iter().next().map(|h| h.value),
        }
    });
    DenyTemplate::compile(deny.as_ref(), 503)
        .map_err(|e| CompileError::new(e.field.replace("response.", "fallback."), e.message))
}

/// A spec part as text, for an identity.
fn json<T: serde::Serialize>(part: &T) -> String {
    serde_json::to_string(part).expect("a spec serialises")
}

impl Upstream {
    /// Drops the states of endpoints this upstream no longer has (on install: a policy compiled
    /// but never installed must not take the installed one's states away).
    pub fn prune_endpoints(&self) {
        let used: std::collections::HashSet<&Address> = self
            .groups
            .iter()
            .flat_map(|g| &g.endpoints)
            .map(|e| &e.state.address)
            .collect();
        lock(&self.compiled.endpoints.0).retain(|address, _| used.contains(address));
    }

    /// A health probe's `outcome` for `endpoint`: its health moves after the thresholds of
    /// `health`, and a change is logged and shown in `bulwark_failover_endpoint_healthy`.
    pub fn record_probe(
        &self,
        endpoint: &EndpointState,
        outcome: Result<(), String>,
        health: &super::settings::HealthSettings,
    ) {
        let changed = endpoint.record_probe(
            outcome.is_ok(),
            health.healthy_threshold,
            health.unhealthy_threshold,
        );
        if let Some(now) = changed {
            let healthy = now != super::endpoint::Health::Unhealthy;
            self.compiled
                .metrics
                .endpoint_healthy(&endpoint.address)
                .set(i64::from(healthy));
            tracing::info!(
                policy = %self.compiled.policy,
                upstream = %self.compiled.name,
                endpoint = %endpoint.address,
                health = now.as_str(),
                probe = outcome.err().as_deref().unwrap_or("ok"),
                "endpoint health changed"
            );
        }
    }

    pub fn endpoint(&self, pick: Pick) -> &Endpoint {
        &self.groups[pick.group].endpoints[pick.index]
    }

    fn qualifies(&self, group: usize, now: u64) -> bool {
        let endpoints = &self.groups[group].endpoints;
        let available = endpoints
            .iter()
            .filter(|e| e.state.is_available(now))
            .count();
        !endpoints.is_empty()
            && available * 100
                >= endpoints.len() * usize::from(self.compiled.settings.groups.min_healthy_percent)
            && available > 0
    }

    /// The group taking `ActivePassive` traffic at `now`: the first that qualifies (enough
    /// available endpoints). Traffic leaves a group as soon as it stops qualifying, and
    /// returns to a better one only once it has qualified for `failbackAfter`.
    pub fn active_group(&self, now: u64) -> usize {
        let state = &self.compiled.active;
        let active = state
            .index
            .load(Ordering::Relaxed)
            .min(self.groups.len() - 1);
        let wanted = (0..self.groups.len()).find(|&g| self.qualifies(g, now));
        let Some(wanted) = wanted else {
            return active; // nothing qualifies: stay, the pick spills to any available endpoint
        };
        let switch = if wanted == active {
            state.better_since.store(0, Ordering::Relaxed);
            false
        } else if wanted > active || !self.qualifies(active, now) {
            true // the active group degraded: leave it at once
        } else {
            let since = state.better_since.load(Ordering::Relaxed);
            if since == 0 {
                state.better_since.store(now.max(1), Ordering::Relaxed);
                false
            } else {
                now.saturating_sub(since) >= self.compiled.settings.groups.failback_nanos
            }
        };
        if switch {
            state.index.store(wanted, Ordering::Relaxed);
            state.better_since.store(0, Ordering::Relaxed);
            self.compiled.metrics.active_group.set(wanted as i64);
            tracing::info!(
                policy = %self.compiled.policy,
                upstream = %self.compiled.name,
                from = %self.groups[active].name,
                to = %self.groups[wanted].name,
                "traffic moved to another group"
            );
            return wanted;
        }
        active
    }

    /// The endpoint for a try at `now`, avoiding those already `tried` when another is
    /// available. `ActivePassive`: the active group first, then the groups after it in order;
    /// `ActiveActive`: every group's endpoints together. `None`: nothing is available.
    pub fn pick(&self, now: u64, tried: &[Pick]) -> Option<Pick> {
        let order: Vec<usize> = match self.compiled.settings.groups.mode {
            FailoverMode::ActivePassive => {
                let active = self.active_group(now);
                (active..self.groups.len()).chain(0..active).collect()
            }
            FailoverMode::ActiveActive => Vec::new(),
        };
        let members = |group: usize| {
            (0..self.groups[group].endpoints.len()).map(move |index| Pick { group, index })
        };
        let usable = |p: &Pick, avoid: bool| {
            self.endpoint(*p).state.is_available(now) && !(avoid && tried.contains(p))
        };
        // A retry does not advance round robin: otherwise a retry after every failing first try
        // would keep the calls' first tries on the same endpoint.
        let advance = tried.is_empty();
        for avoid in [true, false] {
            let found = if order.is_empty() {
                let all = (0..self.groups.len()).flat_map(members);
                self.choose(all.filter(|p| usable(p, avoid)).collect(), advance)
            } else {
                order.iter().find_map(|&group| {
                    self.choose(
                        members(group).filter(|p| usable(p, avoid)).collect(),
                        advance,
                    )
                })
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }

    /// One of `candidates`: in this pod's zone first when zone-aware, then by the upstream's
    /// load balancer.
    fn choose(&self, candidates: Vec<Pick>, advance: bool) -> Option<Pick> {
        if candidates.is_empty() {
            return None;
        }
        let candidates = self.zone_preferred(candidates);
        Some(match self.compiled.settings.groups.load_balancer {
            LoadBalancer::RoundRobin => self.round_robin(&candidates, advance),
            LoadBalancer::LeastRequest => self.least_request(&candidates),
        })
    }

    /// With `zoneAware`, the candidates in this pod's zone, for a bounded share of calls: the
    /// zone's share of the candidates times the number of zones (1 or more: every call stays
    /// in the zone, which has at least its fair share of endpoints; below 1, the rest go to the
    /// other zones, so the zone's few endpoints are not loaded by every caller in it). Envoy's
    /// zone-aware routing, with callers assumed spread over the zones as evenly as endpoints.
    fn zone_preferred(&self, candidates: Vec<Pick>) -> Vec<Pick> {
        let zone = match &self.compiled.local_zone {
            Some(zone) if self.compiled.settings.groups.zone_aware => zone.as_str(),
            _ => return candidates,
        };
        let zone_of = |p: &Pick| self.endpoint(*p).zone.as_deref();
        let (local, remote): (Vec<Pick>, Vec<Pick>) =
            candidates.iter().partition(|p| zone_of(p) == Some(zone));
        if local.is_empty() || remote.is_empty() {
            return candidates;
        }
        let zones = candidates
            .iter()
            .map(zone_of)
            .collect::<std::collections::HashSet<_>>()
            .len();
        let keep = (local.len() * zones) as f64 / candidates.len() as f64;
        if keep >= 1.0 || fastrand::f64() < keep {
            local
        } else {
            remote
        }
    }

    /// Weighted round robin.
    fn round_robin(&self, candidates: &[Pick], advance: bool) -> Pick {
        let weight = |p: &Pick| u64::from(self.endpoint(*p).weight.max(1));
        let total: u64 = candidates.iter().map(weight).sum();
        let position = if advance {
            self.next.fetch_add(1, Ordering::Relaxed)
        } else {
            self.next.load(Ordering::Relaxed)
        };
        let mut n = position as u64 % total;
        for pick in candidates {
            if n < weight(pick) {
                return *pick;
            }
            n -= weight(pick);
        }
        candidates[0]
    }

    /// Power of two choices: of two candidates drawn at random, the one with fewer calls in
    /// flight.
    fn least_request(&self, candidates: &[Pick]) -> Pick {
        if candidates.len() == 1 {
            return candidates[0];
        }
        let first = fastrand::usize(..candidates.len());
        let mut second = fastrand::usize(..candidates.len() - 1);
        if second >= first {
            second += 1;
        }
        let (a, b) = (candidates[first], candidates[second]);
        let load = |p: Pick| self.endpoint(p).state.in_flight();
        if load(b) < load(a) { b } else { a }
    }

    /// Whether outlier detection may eject one more endpoint of `group` (its
    /// `maxEjectionPercent`).
    pub fn may_eject(&self, group: usize, now: u64) -> bool {
        let Some(config) = &self.compiled.settings.outlier else {
            return false;
        };
        let endpoints = &self.groups[group].endpoints;
        let ejected = endpoints.iter().filter(|e| e.state.is_ejected(now)).count();
        ejection_allowed(ejected, endpoints.len(), config.max_ejection_percent)
    }
}
