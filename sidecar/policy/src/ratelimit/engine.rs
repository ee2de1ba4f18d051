//! The compiled `RateLimitPolicy` set of one snapshot, and the per-request decision.
//!
//! Semantics (docs/crds.md): every rule of every policy whose `match` selects the request
//! applies; each rule keeps one counter per key and admits the request only if all its rates do
//! (all-or-nothing within a rule). The request is rejected if any enforcing rule rejects it, with
//! the most restrictive answer (the longest `Retry-After`). Rules decide independently, as
//! Envoy's descriptors do: a rule that admitted a request has counted it even if another rule
//! rejects it. `Shadow` policies count and report, never reject.

use std::{collections::HashMap, sync::Arc};

use bulwark_api::{
    crd::{
        common::{Enforcement, FailureMode, Scope},
        rate_limit::{GlobalMode, RateLimitAlgorithm, RateLimitPolicySpec, RateLimitRule},
    },
    snapshot::{PolicySource, Sourced},
};
use prometheus::IntCounter;

use super::{
    algorithm::{self, Algorithm, Outcome, Rate},
    redis_counters::{self, FastSync, GlobalRule},
    store::{CounterKey, LocalStore, MAX_RATES, counter_key},
};
use crate::{
    compile::{CompileEnv, CompileError},
    jwt::{JwtKeys, TokenClaims},
    keys::KeyBuilder,
    matching::CompiledMatch,
    redis_client::RedisClient,
    request::RequestView,
    respond::{DenyTemplate, Reason, Reply},
};

const NANOS: u64 = 1_000_000_000;
/// `global.syncInterval` and `global.timeout` defaults, as documented in the CRD.
const DEFAULT_SYNC_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);
const DEFAULT_GLOBAL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(50);

/// Every rate-limit rule of a snapshot, ready to decide.
#[derive(Default)]
pub struct RateLimits {
    rules: Vec<CompiledRule>,
    /// Redis, for `Exact` global rules.
    global: Option<RedisClient>,
}

struct CompiledRule {
    /// Identifies the rule's counters; changes when the rule's limits change, so edited limits
    /// start from fresh counters while untouched rules keep theirs across reloads.
    id: u64,
    enforce: bool,
    matcher: CompiledMatch,
    key: KeyBuilder,
    algorithm: Algorithm,
    rates: Vec<Rate>,
    cost_amount: u64,
    cost_header: Option<http::HeaderName>,
    overrides: HashMap<String, Vec<Rate>>,
    info: Arc<RuleInfo>,
    response: DenyTemplate,
    counters: Counters,
    /// `Some` for `scope: Global`.
    global: Option<GlobalRule>,
}

struct Counters {
    allowed: IntCounter,
    limited: IntCounter,
    shadow_limited: IntCounter,
}

/// What the response headers need to know of a rule.
#[derive(Debug, PartialEq, Eq)]
struct RuleInfo {
    name: String,
    legacy_headers: bool,
}

/// The outcome for one request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RateLimitDecision {
    /// `Some` when the request must be answered by the sidecar instead of the app.
    pub reject: Option<Reply>,
    /// The most restrictive limit that admitted the request, for the app's response headers.
    pub applied: Option<AppliedLimit>,
}

/// An admitting limit. Its headers are rendered only when the response is written, keeping
/// formatting out of the decision itself.
#[derive(Debug, PartialEq, Eq)]
pub struct AppliedLimit {
    rule: Arc<RuleInfo>,
    rate: Rate,
    outcome: Outcome,
}

impl AppliedLimit {
    /// IETF `RateLimit` / `RateLimit-Policy` (and legacy ones when asked) for the response.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        limit_headers(&self.rule, self.rate, &self.outcome)
    }
}

impl RateLimitDecision {
    /// The headers to add to the app's response.
    pub fn response_headers(&self) -> Vec<(&'static str, String)> {
        self.applied
            .as_ref()
            .map(AppliedLimit::headers)
            .unwrap_or_default()
    }
}

impl RateLimits {
    /// Compiles the policies; an error names the policy and the field.
    pub fn compile(
        policies: &[Sourced<RateLimitPolicySpec>],
        jwt_keys: &JwtKeys,
        env: &CompileEnv<'_>,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut rules = Vec::new();
        for policy in policies {
            env.require_redis(policy.spec.scope)
                .map_err(|e| (policy.source.clone(), e))?;
            let claims =
                TokenClaims::compile(policy.spec.jwt.as_ref(), &policy.source, jwt_keys, env)
                    .map(Arc::new)
                    .map_err(|e| (policy.source.clone(), e))?;
            for (i, rule) in policy.spec.rules.iter().enumerate() {
                let compiled = compile_rule(&policy.source, &policy.spec, rule, &claims, env)
                    .map_err(|e| (policy.source.clone(), e.under(&format!("rules[{i}]"))))?;
                rules.push(compiled);
            }
        }
        Ok(Self {
            rules,
            global: env.redis.cloned(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Every header an enforcing rule reads (match, key, cost). Shadow rules refuse nothing,
    /// not even ambiguous headers.
    pub fn headers_read(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.rules
            .iter()
            .filter(|rule| rule.enforce)
            .flat_map(|rule| {
                rule.matcher
                    .headers_read()
                    .chain(rule.key.headers_read())
                    .chain(rule.cost_header.as_ref())
            })
    }

    /// Decides `req` at `now` (Unix nanoseconds) against `store`, for snapshots without
    /// `Exact` global rules (those are admitted here; see [`RateLimits::begin`]).
    pub fn decide(&self, req: &RequestView<'_>, store: &LocalStore, now: u64) -> RateLimitDecision {
        self.begin(req, store, None, now).finish_local()
    }

    /// True when some rule decides in Redis, so [`Pending::finish`] must be awaited.
    pub fn has_exact_global(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.global.as_ref().is_some_and(|g| !g.fast))
    }

    /// Decides every local and fast-global rule now; `Exact` global rules that match are
    /// returned as calls for [`Pending::finish`], so the caller awaits Redis only when needed.
    pub fn begin<'a>(
        &'a self,
        req: &RequestView<'_>,
        store: &'a LocalStore,
        fast: Option<&'a FastSync>,
        now: u64,
    ) -> Pending<'a> {
        let mut pending = Pending {
            tally: Tally::default(),
            exact: Vec::new(),
            global: self.global.as_ref(),
            local: store,
            fast,
            now,
        };
        let mut key = String::with_capacity(64);
        for rule in &self.rules {
            if !rule.matcher.matches(req) {
                continue;
            }
            key.clear();
            rule.key.write_key(req, &mut key);
            let rates = if rule.overrides.is_empty() {
                &rule.rates
            } else {
                rule.overrides.get(key.as_str()).unwrap_or(&rule.rates)
            };
            let cost = rule.cost(req);
            match &rule.global {
                Some(global) if !global.fast => {
                    pending.exact.push(ExactCall {
                        rule,
                        redis_key: global.redis_key(&key),
                        rates,
                        cost,
                        warm_up: None,
                    });
                }
                // A fast counter not synced lately has a stale local view: the first request
                // is decided in Redis, which also brings the global count here.
                Some(global) if fast.is_some_and(|f| !f.is_warm(counter_key(rule.id, &key))) => {
                    pending.exact.push(ExactCall {
                        rule,
                        redis_key: global.redis_key(&key),
                        rates,
                        cost,
                        warm_up: Some((counter_key(rule.id, &key), key.clone())),
                    });
                }
                Some(global) if global.fail_closed && fast.is_some_and(|f| !f.is_healthy()) => {
                    pending
                        .tally
                        .record(rule, redis_counters::failure_outcome(true), rates[0]);
                }
                global => {
                    let counter = counter_key(rule.id, &key);
                    let (outcome, index) = store.decide(counter, rule.algorithm, rates, now, cost);
                    if let (Some(global), Some(fast)) = (global, fast) {
                        let spent = if outcome.allowed { cost } else { 0 };
                        fast.record(counter, global, &key, rule.algorithm, rates, spent, now);
                    }
                    pending
                        .tally
                        .record(rule, outcome, rates[index.min(rates.len() - 1)]);
                }
            }
        }
        pending
    }
}

/// Decisions made so far, and the `Exact` global ones still to ask Redis for.
pub struct Pending<'a> {
    tally: Tally<'a>,
    exact: Vec<ExactCall<'a>>,
    global: Option<&'a RedisClient>,
    local: &'a LocalStore,
    fast: Option<&'a FastSync>,
    now: u64,
}

struct ExactCall<'a> {
    rule: &'a CompiledRule,
    redis_key: String,
    rates: &'a [Rate],
    cost: u64,
    /// A fast counter decided in Redis to start its local view: its counter key and key value.
    warm_up: Option<(CounterKey, String)>,
}

impl<'a> Pending<'a> {
    /// True when Redis must be asked: await [`Pending::finish`].
    pub fn needs_redis(&self) -> bool {
        !self.exact.is_empty()
    }

    /// Asks Redis for every `Exact` rule at once (each bounded by its timeout; `failureMode`
    /// applies to a call that fails), then decides.
    pub async fn finish(mut self) -> RateLimitDecision {
        let calls = std::mem::take(&mut self.exact);
        let replies = futures::future::join_all(calls.iter().map(|call| async {
            let fail_closed = call.rule.global.as_ref().is_some_and(|g| g.fail_closed);
            let (Some(global), Some(store)) = (call.rule.global.as_ref(), self.global) else {
                return Err(fail_closed);
            };
            redis_counters::call(
                store,
                redis_counters::Counter {
                    redis_key: &call.redis_key,
                    algorithm: call.rule.algorithm,
                    rates: call.rates,
                },
                call.cost,
                // Fast counters count on this pod's clock; exact ones on Redis's.
                call.warm_up.as_ref().map(|_| self.now),
                false,
                global.timeout,
            )
            .await
            .map_err(|_| fail_closed)
        }))
        .await;
        for (call, reply) in calls.iter().zip(replies) {
            let (outcome, index) = match reply {
                Ok(reply) => {
                    if let (Some((counter, key)), Some(fast), Some(global)) =
                        (&call.warm_up, self.fast, &call.rule.global)
                    {
                        let algorithm = call.rule.algorithm;
                        let now = self.now;
                        self.local
                            .replace(*counter, algorithm, call.rates, &reply.states, now, 0);
                        // Counted in Redis already: nothing pending.
                        fast.record(*counter, global, key, algorithm, call.rates, 0, now);
                    }
                    (reply.outcome, reply.index)
                }
                Err(fail_closed) => (redis_counters::failure_outcome(fail_closed), 0),
            };
            self.tally.record(
                call.rule,
                outcome,
                call.rates[index.min(call.rates.len() - 1)],
            );
        }
        self.tally.decision()
    }

    /// The decision without asking Redis: pending `Exact` rules fail as configured.
    pub fn finish_local(mut self) -> RateLimitDecision {
        for call in std::mem::take(&mut self.exact) {
            let fail_closed = call.rule.global.as_ref().is_some_and(|g| g.fail_closed);
            self.tally.record(
                call.rule,
                redis_counters::failure_outcome(fail_closed),
                call.rates[0],
            );
        }
        self.tally.decision()
    }
}

/// Accumulates per-rule outcomes into the request's decision.
#[derive(Default)]
struct Tally<'a> {
    /// The applicable limit with the least room, for the response headers. Each with the rate
    /// that decided, captured now: overrides make it key-dependent.
    tightest: Option<(&'a CompiledRule, Outcome, Rate)>,
    rejected: Option<(&'a CompiledRule, Outcome, Rate)>,
}

impl<'a> Tally<'a> {
    fn record(&mut self, rule: &'a CompiledRule, outcome: Outcome, rate: Rate) {
        if outcome.allowed {
            rule.counters.allowed.inc();
            if self
                .tightest
                .as_ref()
                .is_none_or(|(_, t, _)| outcome.remaining < t.remaining)
            {
                self.tightest = Some((rule, outcome, rate));
            }
        } else if rule.enforce {
            rule.counters.limited.inc();
            if self
                .rejected
                .as_ref()
                .is_none_or(|(_, r, _)| outcome.retry_after_nanos > r.retry_after_nanos)
            {
                self.rejected = Some((rule, outcome, rate));
            }
        } else {
            rule.counters.shadow_limited.inc();
        }
    }

    fn decision(self) -> RateLimitDecision {
        match self.rejected {
            Some((rule, outcome, rate)) => {
                let mut headers: Vec<(String, String)> = limit_headers(&rule.info, rate, &outcome)
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value))
                    .collect();
                // A cost above the limit can never pass: no Retry-After promises otherwise.
                if outcome.retry_after_nanos != algorithm::NEVER {
                    headers.push((
                        "Retry-After".into(),
                        ceil_seconds(outcome.retry_after_nanos).max(1).to_string(),
                    ));
                }
                RateLimitDecision {
                    reject: Some(rule.response.reply(Reason::RateLimited, headers)),
                    applied: None,
                }
            }
            None => RateLimitDecision {
                reject: None,
                applied: self.tightest.map(|(rule, outcome, rate)| AppliedLimit {
                    rule: rule.info.clone(),
                    rate,
                    outcome,
                }),
            },
        }
    }
}

impl CompiledRule {
    fn cost(&self, req: &RequestView<'_>) -> u64 {
        self.cost_header
            .as_ref()
            .and_then(|name| req.headers.get(name))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(self.cost_amount)
    }
}

/// IETF `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), plus the
/// legacy `X-RateLimit-*` headers when the policy asks for them.
/// Names are static: the response writer takes them without copying.
fn limit_headers(rule: &RuleInfo, rate: Rate, outcome: &Outcome) -> Vec<(&'static str, String)> {
    let window = ceil_seconds(rate.window_nanos);
    let reset = ceil_seconds(outcome.reset_nanos);
    let mut headers = vec![
        (
            "RateLimit-Policy",
            format!("\"{}\";q={};w={window}", rule.name, rate.limit),
        ),
        (
            "RateLimit",
            format!("\"{}\";r={};t={reset}", rule.name, outcome.remaining),
        ),
    ];
    if rule.legacy_headers {
        headers.push(("X-RateLimit-Limit", rate.limit.to_string()));
        headers.push(("X-RateLimit-Remaining", outcome.remaining.to_string()));
        headers.push(("X-RateLimit-Reset", reset.to_string()));
    }
    headers
}

fn ceil_seconds(nanos: u64) -> u64 {
    nanos.div_ceil(NANOS)
}

fn to_rates(rates: &[bulwark_api::crd::rate_limit::Rate], multiplier: u64) -> Vec<Rate> {
    rates
        .iter()
        .take(MAX_RATES)
        .map(|r| Rate {
            limit: r.limit.saturating_mul(multiplier),
            window_nanos: r.window.as_std().as_nanos().min(u64::MAX as u128) as u64,
            burst: r.burst.unwrap_or(r.limit).saturating_mul(multiplier),
        })
        .collect()
}

fn compile_rule(
    source: &PolicySource,
    spec: &RateLimitPolicySpec,
    rule: &RateLimitRule,
    claims: &Arc<TokenClaims>,
    env: &CompileEnv<'_>,
) -> Result<CompiledRule, CompileError> {
    let metrics = env.metrics;
    let matcher =
        CompiledMatch::compile(&rule.match_, &env.regexes).map_err(|e| e.under("match"))?;
    let key = KeyBuilder::compile(&rule.key, claims)?;
    let algorithm = match rule.algorithm {
        RateLimitAlgorithm::TokenBucket => Algorithm::TokenBucket,
        RateLimitAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
        RateLimitAlgorithm::FixedWindow => Algorithm::FixedWindow,
    };
    let rates = to_rates(&rule.rates, 1);
    if rates.is_empty() {
        return Err(CompileError::new("rates", "at least one rate is required"));
    }
    let mut overrides = HashMap::new();
    for (i, o) in rule.overrides.iter().enumerate() {
        if o.values.len() != key.len() {
            return Err(CompileError::new(
                format!("overrides[{i}].values"),
                "each override lists exactly one value per key part",
            ));
        }
        let rates = match (&o.rates, o.multiplier) {
            (Some(rates), None) => to_rates(rates, 1),
            (None, Some(m)) => to_rates(&rule.rates, u64::from(m)),
            _ => {
                return Err(CompileError::new(
                    format!("overrides[{i}]"),
                    "set exactly one of rates and multiplier",
                ));
            }
        };
        // The first override for a key wins, as documented.
        overrides
            .entry(key.override_key(&o.values))
            .or_insert(rates);
    }
    let cost_header = match rule.cost.as_ref().and_then(|c| c.header.as_deref()) {
        Some(name) => Some(http::HeaderName::try_from(name).map_err(|_| {
            CompileError::new(
                "cost.header",
                format!("{name:?} is not a valid header name"),
            )
        })?),
        None => None,
    };
    let response = compile_response(spec)?;
    // Counter identity: the rule and every rate its keys can be decided with (overrides in
    // order). A state means nothing under another window, so changed rates get fresh counters.
    // Redis keys carry it, so it must be the same in every pod: xxh3 of a canonical text, not
    // std's unspecified hasher.
    let mut override_rates: Vec<(&String, &Vec<Rate>)> = overrides.iter().collect();
    override_rates.sort_by(|a, b| a.0.cmp(b.0));
    let id = xxhash_rust::xxh3::xxh3_64(
        format!(
            "{}\u{1f}{}\u{1f}{}\u{1f}{:?}\u{1f}{rates:?}\u{1f}{override_rates:?}",
            source.namespace, source.name, rule.name, rule.algorithm
        )
        .as_bytes(),
    );
    let global = (spec.scope == Scope::Global).then(|| {
        let settings = spec.global.clone().unwrap_or_default();
        GlobalRule {
            fast: settings.mode == GlobalMode::Fast,
            sync_interval: settings
                .sync_interval
                .map_or(DEFAULT_SYNC_INTERVAL, |d| d.as_std()),
            timeout: settings
                .timeout
                .map_or(DEFAULT_GLOBAL_TIMEOUT, |d| d.as_std()),
            fail_closed: settings.failure_mode == FailureMode::Closed,
            key_prefix: format!(
                "bulwark:rl:{}/{}/{}:{id:016x}:",
                source.namespace, source.name, rule.name
            ),
        }
    });
    let policy = format!("{}/{}", source.namespace, source.name);
    let counter = |decision: &str| {
        metrics.ratelimit.requests.with_label_values(&[
            policy.as_str(),
            rule.name.as_str(),
            decision,
        ])
    };
    Ok(CompiledRule {
        id,
        global,
        enforce: spec.enforcement == Enforcement::Enforce,
        matcher,
        key,
        algorithm,
        rates,
        cost_amount: rule.cost.as_ref().map_or(1, |c| u64::from(c.amount)),
        cost_header,
        overrides,
        info: Arc::new(RuleInfo {
            name: rule.name.clone(),
            legacy_headers: spec.response.as_ref().is_some_and(|r| r.legacy_headers),
        }),
        response,
        counters: Counters {
            allowed: counter("allowed"),
            limited: counter("limited"),
            shadow_limited: counter("shadow_limited"),
        },
    })
}

fn compile_response(spec: &RateLimitPolicySpec) -> Result<DenyTemplate, CompileError> {
    DenyTemplate::compile(spec.response.as_ref().map(|r| &r.deny), 429)
}

#[cfg(test)]
mod tests {
    use bulwark_api::snapshot::Sourced;

    use super::*;
    use crate::{metrics::PolicyMetrics, request::testing::TestRequest};

    const SECOND: u64 = NANOS;

    fn policies(yaml: &str) -> Vec<Sourced<RateLimitPolicySpec>> {
        let spec: RateLimitPolicySpec = serde_yaml::from_str(yaml).unwrap();
        vec![Sourced {
            source: PolicySource {
                namespace: "ns".into(),
                name: "p".into(),
                generation: 1,
            },
            spec,
        }]
    }

    fn compile(yaml: &str) -> RateLimits {
        RateLimits::compile(
            &policies(yaml),
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .unwrap()
    }

    /// `GET path` from 10.0.0.1 to api.local with `headers`.
    fn request(path: &str, headers: &[(&'static str, &str)]) -> TestRequest {
        TestRequest::new(path)
            .host("api.local")
            .ip("10.0.0.1")
            .headers(headers)
    }

    fn header<'a, N: AsRef<str>>(headers: &'a [(N, String)], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|(n, _)| n.as_ref().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    const TWO_PER_MINUTE: &str = "
rules:
- name: per-key
  key: [{type: Header, name: x-key}]
  algorithm: FixedWindow
  rates: [{limit: 2, window: 1m}]
";

    #[test]
    fn rejects_over_the_limit_with_ietf_headers_and_retry_after() {
        let limits = compile(TWO_PER_MINUTE);
        let store = LocalStore::new(4, 1000);
        let req = request("/", &[("x-key", "a")]);
        let first = limits.decide(&req.view(), &store, 0);
        assert_eq!(first.reject, None);
        assert_eq!(
            header(&first.response_headers(), "RateLimit-Policy"),
            Some("\"per-key\";q=2;w=60")
        );
        assert_eq!(
            header(&first.response_headers(), "RateLimit"),
            Some("\"per-key\";r=1;t=60")
        );
        assert!(limits.decide(&req.view(), &store, SECOND).reject.is_none());
        let third = limits
            .decide(&req.view(), &store, 10 * SECOND)
            .reject
            .expect("over the limit");
        assert_eq!(third.status, 429);
        assert_eq!(
            header(&third.headers, "Retry-After"),
            Some("50"),
            "the window resets at 60 s"
        );
        assert_eq!(
            header(&third.headers, "RateLimit"),
            Some("\"per-key\";r=0;t=50")
        );
        // Another key is counted apart.
        assert!(
            limits
                .decide(&request("/", &[("x-key", "b")]).view(), &store, 10 * SECOND)
                .reject
                .is_none()
        );
    }

    #[test]
    fn overrides_cost_shadow_and_custom_responses() {
        let limits = compile(
            "
enforcement: Enforce
response: {statusCode: 503, body: slow down, legacyHeaders: true, headers: [{name: X-Why, value: quota}]}
rules:
- name: per-key
  key: [{type: Header, name: x-key}]
  algorithm: FixedWindow
  rates: [{limit: 2, window: 1m}]
  cost: {amount: 1, header: x-cost}
  overrides:
  - values: [vip]
    multiplier: 10
",
        );
        let store = LocalStore::new(4, 1000);
        let vip = request("/", &[("x-key", "vip")]);
        for _ in 0..20 {
            assert!(limits.decide(&vip.view(), &store, 0).reject.is_none());
        }
        assert!(
            limits.decide(&vip.view(), &store, 0).reject.is_some(),
            "10× the limit, not more"
        );

        let heavy = request("/", &[("x-key", "a"), ("x-cost", "3")]);
        let rejected = limits
            .decide(&heavy.view(), &store, 0)
            .reject
            .expect("a cost of 3 exceeds 2");
        assert_eq!(rejected.status, 503);
        assert_eq!(rejected.body, "slow down");
        assert_eq!(header(&rejected.headers, "X-Why"), Some("quota"));
        assert_eq!(header(&rejected.headers, "X-RateLimit-Limit"), Some("2"));
        let bad_cost = request("/", &[("x-key", "a"), ("x-cost", "lots")]);
        assert!(
            limits.decide(&bad_cost.view(), &store, 0).reject.is_none(),
            "an unreadable cost falls back to amount"
        );

        let shadow = compile(&TWO_PER_MINUTE.replace("rules:", "enforcement: Shadow\nrules:"));
        let req = request("/", &[("x-key", "a")]);
        for _ in 0..5 {
            assert!(shadow.decide(&req.view(), &store, 0).reject.is_none());
        }
    }

    #[test]
    fn every_matching_rule_applies_and_the_longest_wait_wins() {
        let limits = compile(
            "
rules:
- name: burst
  match: {path: {value: /api}}
  algorithm: FixedWindow
  rates: [{limit: 1, window: 1s}]
- name: hourly
  algorithm: FixedWindow
  rates: [{limit: 1, window: 1h}]
",
        );
        let store = LocalStore::new(4, 1000);
        assert!(
            limits
                .decide(&request("/api/x", &[]).view(), &store, 0)
                .reject
                .is_none()
        );
        let rejected = limits
            .decide(&request("/api/x", &[]).view(), &store, 0)
            .reject
            .unwrap();
        assert_eq!(
            header(&rejected.headers, "Retry-After"),
            Some("3600"),
            "the hourly rule's wait"
        );
        assert!(
            header(&rejected.headers, "RateLimit-Policy")
                .unwrap()
                .starts_with("\"hourly\"")
        );
    }

    #[test]
    fn global_scope_is_refused_until_a_redis_store_exists() {
        let err = RateLimits::compile(
            &policies(&TWO_PER_MINUTE.replace("rules:", "scope: Global\nrules:")),
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .err()
        .unwrap();
        assert_eq!(err.1.field, "scope");
    }

    #[test]
    fn verified_claims_key_counters_and_forged_tokens_share_the_empty_key() {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let spec = "
jwt:
  verification:
    keySecretRef: {name: jwt, key: hs256}
    algorithms: [HS256]
rules:
- name: per-user
  key: [{type: JWTClaim, name: sub}]
  algorithm: FixedWindow
  rates: [{limit: 1, window: 1m}]
";
        let secret = "the policy's HMAC secret, 32 bytes";
        let keys = JwtKeys::from([(
            "ns/jwt/hs256".to_string(),
            bulwark_api::snapshot::SecretString::new(secret),
        )]);
        let limits = RateLimits::compile(
            &policies(spec),
            &keys,
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .unwrap();
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let token = |sub: &str, key: &[u8]| {
            let claims = serde_json::json!({"sub": sub, "exp": exp});
            encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
        };
        let store = LocalStore::new(4, 1000);
        let limited = |t: &str| {
            let req = request("/", &[("authorization", &format!("Bearer {t}"))]);
            limits.decide(&req.view(), &store, SECOND).reject.is_some()
        };
        let alice = token("alice", secret.as_bytes());
        assert!(!limited(&alice));
        assert!(limited(&alice), "alice's own counter is spent");
        // A token claiming to be bob, signed with another key, is not bob: it is charged to
        // the "" counter, which bob's real token does not touch.
        let forged_bob = token("bob", b"a key the attacker chose, 32 byte");
        assert!(!limited(&forged_bob));
        assert!(limited(&forged_bob), "forged tokens share one counter");
        assert!(
            !limited(&token("bob", secret.as_bytes())),
            "bob's counter is untouched"
        );

        let err = RateLimits::compile(
            &policies(spec),
            &JwtKeys::new(),
            &CompileEnv::local(&PolicyMetrics::unregistered()),
        )
        .err()
        .unwrap();
        assert_eq!(err.1.field, "jwt.verification.keySecretRef");
    }

    #[test]
    fn counters_survive_a_recompile_unless_the_rule_changed() {
        let store = LocalStore::new(4, 1000);
        let req = request("/", &[("x-key", "a")]);
        let before = compile(TWO_PER_MINUTE);
        before.decide(&req.view(), &store, 0);
        before.decide(&req.view(), &store, 0);
        assert!(
            compile(TWO_PER_MINUTE)
                .decide(&req.view(), &store, 0)
                .reject
                .is_some(),
            "same rule, same counter"
        );
        let raised = compile(&TWO_PER_MINUTE.replace("limit: 2", "limit: 3"));
        assert!(
            raised.decide(&req.view(), &store, 0).reject.is_none(),
            "new limits, fresh counter"
        );
    }

    #[test]
    fn a_changed_override_gets_fresh_counters() {
        let with_override = |window: &str| {
            compile(&format!(
                "
rules:
- name: per-key
  key: [{{type: Header, name: x-key}}]
  algorithm: FixedWindow
  rates: [{{limit: 2, window: 1m}}]
  overrides:
  - values: [vip]
    rates: [{{limit: 1, window: {window}}}]
"
            ))
        };
        let store = LocalStore::new(4, 1000);
        let vip = request("/", &[("x-key", "vip")]);
        let hourly = with_override("1h");
        assert!(hourly.decide(&vip.view(), &store, 0).reject.is_none());
        assert!(hourly.decide(&vip.view(), &store, 0).reject.is_some());
        // The override's window changed: its old state must not be read under the new window.
        let per_second = with_override("1s");
        assert!(
            per_second
                .decide(&vip.view(), &store, 2 * SECOND)
                .reject
                .is_none()
        );
    }

    #[test]
    fn a_cost_above_the_limit_is_rejected_without_a_retry_after() {
        let limits = compile(&TWO_PER_MINUTE.replace("rates:", "cost: {amount: 5}\n  rates:"));
        let rejected = limits
            .decide(
                &request("/", &[("x-key", "a")]).view(),
                &LocalStore::new(1, 10),
                0,
            )
            .reject
            .unwrap();
        assert_eq!(
            header(&rejected.headers, "Retry-After"),
            None,
            "waiting would not help"
        );
    }

    #[test]
    fn client_ip_overrides_match_however_the_address_is_written() {
        let limits = compile(
            "
rules:
- name: per-ip
  key: [{type: ClientIP}]
  algorithm: FixedWindow
  rates: [{limit: 1, window: 1m}]
  overrides:
  - values: ['::ffff:10.0.0.1']
    multiplier: 3
",
        );
        let store = LocalStore::new(4, 1000);
        let req = request("/", &[]); // client 10.0.0.1
        let admitted = (0..4)
            .filter(|_| limits.decide(&req.view(), &store, 0).reject.is_none())
            .count();
        assert_eq!(admitted, 3);
    }
}
