//! The compiled `QuotaPolicy` set of one snapshot, and the per-request decisions.
//!
//! Semantics (docs/quotas.md): every quota whose `match` selects the request draws from the
//! budget of the request's key for the current calendar period. The request is refused if an
//! `Enforce` quota's budget cannot take it; quotas decide independently (one that admitted the
//! request has charged it even if another refuses), as rate-limit rules do. `Shadow` policies
//! charge and report, never refuse.
//!
//! Costs: `Requests` charge 1 when the request is decided. `RequestBytes` charge the
//! `Content-Length` then (all or nothing, like a request cost); a body without `Content-Length`
//! (chunked) is charged the bytes actually read, after the response. `ResponseBytes` are charged
//! after the response, the bytes actually sent. Costs charged after the fact are unconditional,
//! so the request that crosses the limit completes and the next one is refused.

use std::{collections::HashMap, sync::Arc};

use bulwark_api::{
    crd::{
        common::{Enforcement, FailureMode, Scope},
        quota::{Quota, QuotaPeriod, QuotaPolicySpec, QuotaUnit},
    },
    snapshot::{PolicySource, Sourced},
};
use jiff::tz::TimeZone;
use prometheus::IntCounter;

use super::{
    period::{self, Period},
    redis_counters::{self, Mode},
    usage::{self, Charge, UsageStore},
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

/// Every quota of a snapshot, ready to decide.
#[derive(Default)]
pub struct Quotas {
    quotas: Vec<CompiledQuota>,
    global: Option<RedisClient>,
    /// Counts charges the full local store could not take in
    /// (`bulwark_store_errors_total{store="quota",kind="full"}`).
    store_full: Option<IntCounter>,
}

struct CompiledQuota {
    info: Arc<QuotaInfo>,
    matcher: CompiledMatch,
    key: KeyBuilder,
    /// Override limits by key (as [`KeyBuilder::override_key`] writes it); first one wins.
    overrides: HashMap<String, u64>,
    response: Arc<DenyTemplate>,
}

/// What is known of a quota outside the decision: its identity, budget and metrics. Shared with
/// charges made after the response and with the admin API.
pub struct QuotaInfo {
    /// `namespace/name` of the policy.
    pub policy: String,
    pub name: String,
    pub unit: QuotaUnit,
    pub period: QuotaPeriod,
    pub time_zone: TimeZone,
    pub limit: u64,
    enforce: bool,
    /// Where the usage is counted.
    scope: UsageScope,
    /// Prefix of this quota's usage keys: `namespace/name/quota:<identity hash>:`. The hash
    /// covers what gives usage its meaning (unit, period, time zone), not the limits, so an
    /// edited limit keeps the period's usage while a changed period starts afresh.
    prefix: String,
    /// Thresholds in increasing order, each with its crossing counter.
    thresholds: Vec<(u8, IntCounter)>,
    allowed: IntCounter,
    limited: IntCounter,
    shadow_limited: IntCounter,
}

impl QuotaInfo {
    /// The usage key of `key` (key parts joined as [`KeyBuilder::write_key`] joins them). A
    /// Local quota's holds a digest of the value ([`usage::push_value_digest`]). A Global
    /// quota's holds the value, as its Redis counters always have: renaming them would restart
    /// every Global quota's period on upgrade, and in Redis Cluster no script can move a counter
    /// to the slot of its new name (docs/security.md).
    pub fn usage_key(&self, key: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + 32);
        out.push_str(&self.prefix);
        if self.is_global() {
            out.push_str(key);
        } else {
            usage::push_value_digest(&mut out, key);
        }
        out
    }

    /// What every usage key of this quota starts with.
    pub fn usage_prefix(&self) -> &str {
        &self.prefix
    }

    pub fn period_at(&self, unix_nanos: u64) -> Period {
        period::period_at(self.period, &self.time_zone, unix_nanos)
    }

    pub fn is_global(&self) -> bool {
        self.scope != UsageScope::Local
    }

    /// Counts threshold crossings between `before` and `after` usage of a `limit`.
    fn count_crossings(&self, before: u64, after: u64, limit: u64) {
        for (t, counter) in &self.thresholds {
            if !reached(before, *t, limit) && reached(after, *t, limit) {
                counter.inc();
            }
        }
    }

    /// The highest threshold `used` has reached, if any.
    fn reached_threshold(&self, used: u64, limit: u64) -> Option<u8> {
        self.thresholds
            .iter()
            .rev()
            .map(|(t, _)| *t)
            .find(|t| reached(used, *t, limit))
    }
}

/// `used` is at or above `threshold` percent of `limit`.
fn reached(used: u64, threshold: u8, limit: u64) -> bool {
    u128::from(used) * 100 >= u128::from(threshold) * u128::from(limit)
}

/// The outcome of the request phase.
#[derive(Default)]
pub struct QuotaDecision {
    /// `Some` when the sidecar answers instead of the app.
    pub reject: Option<Reply>,
    /// What the rest of the request needs: warning headers and charges after the response.
    pub pending: RequestQuotas,
}

/// Per-request quota state carried from the request phase to the response and logging phases.
#[derive(Default)]
pub struct RequestQuotas {
    warnings: Vec<(&'static str, String)>,
    deferred: Vec<Deferred>,
    global: Option<RedisClient>,
    store_full: Option<IntCounter>,
}

/// A charge made after the response.
struct Deferred {
    info: Arc<QuotaInfo>,
    usage_key: String,
    period: Period,
    limit: u64,
    measure: Measure,
}

/// One quota's view of a request, before its outcome is known.
struct Draw<'a> {
    quota: &'a CompiledQuota,
    usage_key: String,
    period: Period,
    limit: u64,
    /// Charged now.
    cost: u64,
    /// What is charged once the exchange is over, if anything.
    deferred: Option<Measure>,
}

/// Where a quota's usage is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UsageScope {
    /// In this sidecar.
    Local,
    /// In Redis; when it cannot answer, requests pass (`failureMode: Open`) ...
    GlobalFailOpen,
    /// ... or are refused (`failureMode: Closed`).
    GlobalFailClosed,
}

/// What of an exchange a quota charges after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Measure {
    /// Body bytes read from the client (a request body without `Content-Length`).
    RequestBytes,
    /// Body bytes sent to the client.
    ResponseBytes,
    /// gRPC messages the client sent.
    RequestMessages,
    /// gRPC messages sent to the client.
    ResponseMessages,
}

/// How much an exchange carried, known once it is over: what deferred charges are made of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Exchanged {
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub request_messages: u64,
    pub response_messages: u64,
}

impl Quotas {
    /// Compiles the policies; an error names the policy and the field.
    pub fn compile(
        policies: &[Sourced<QuotaPolicySpec>],
        jwt_keys: &JwtKeys,
        env: &CompileEnv<'_>,
    ) -> Result<Self, (PolicySource, CompileError)> {
        let mut quotas = Vec::new();
        for policy in policies {
            let fail = |e: CompileError| (policy.source.clone(), e);
            env.require_redis(policy.spec.scope).map_err(fail)?;
            let claims =
                TokenClaims::compile(policy.spec.jwt.as_ref(), &policy.source, jwt_keys, env)
                    .map(Arc::new)
                    .map_err(fail)?;
            let tz = period::time_zone(&policy.spec.time_zone)
                .map_err(|m| fail(CompileError::new("timeZone", m)))?;
            let response = Arc::new(
                DenyTemplate::compile(
                    policy.spec.response.as_ref(),
                    http::StatusCode::TOO_MANY_REQUESTS.as_u16(),
                )
                .map_err(fail)?,
            );
            for (i, quota) in policy.spec.quotas.iter().enumerate() {
                if policy.spec.quotas[..i].iter().any(|q| q.name == quota.name) {
                    return Err(fail(CompileError::new(
                        format!("quotas[{i}].name"),
                        format!("duplicate quota name {:?}", quota.name),
                    )));
                }
                let compiled = compile_quota(
                    &policy.source,
                    &policy.spec,
                    quota,
                    &tz,
                    response.clone(),
                    &claims,
                    env,
                )
                .map_err(|e| fail(e.under(&format!("quotas[{i}]"))))?;
                quotas.push(compiled);
            }
        }
        Ok(Self {
            quotas,
            global: env.redis.cloned(),
            store_full: Some(
                env.metrics
                    .stores
                    .errors
                    .with_label_values(&["quota", "full"]),
            ),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    /// Every header an enforcing quota reads (match, key).
    pub fn headers_read(&self) -> impl Iterator<Item = &http::HeaderName> {
        self.quotas
            .iter()
            .filter(|quota| quota.info.enforce)
            .flat_map(|quota| quota.matcher.headers_read().chain(quota.key.headers_read()))
    }

    /// A quota by policy (`namespace/name`) and name, for the admin API.
    pub fn find(&self, policy: &str, quota: &str) -> Option<(&Arc<QuotaInfo>, &KeyBuilder)> {
        self.quotas
            .iter()
            .find(|q| q.info.policy == policy && q.info.name == quota)
            .map(|q| (&q.info, &q.key))
    }

    /// The limit of `key` (as [`KeyBuilder::override_key`] writes it) under `info`'s quota.
    pub fn limit_for(&self, info: &QuotaInfo, key: &str) -> u64 {
        self.quotas
            .iter()
            .find(|q| std::ptr::eq(&*q.info, info))
            .and_then(|q| q.overrides.get(key).copied())
            .unwrap_or(info.limit)
    }

    /// The limit of the key whose Local usage key is `usage_key`, under `info`'s quota: the
    /// overrides are digested to compare (an admin listing; a few hundred hashes at most).
    pub fn limit_for_usage_key(&self, info: &QuotaInfo, usage_key: &str) -> u64 {
        self.quotas
            .iter()
            .find(|q| std::ptr::eq(&*q.info, info))
            .and_then(|q| {
                q.overrides
                    .iter()
                    .find(|(key, _)| info.usage_key(key) == usage_key)
                    .map(|(_, limit)| *limit)
            })
            .unwrap_or(info.limit)
    }

    /// The usage store the request path charges: what `Global` quotas read from is Redis.
    fn count_full(&self) {
        if let Some(counter) = &self.store_full {
            counter.inc();
        }
    }

    pub fn global(&self) -> Option<&RedisClient> {
        self.global.as_ref()
    }

    /// Decides `req` at `now` (Unix nanoseconds): local quotas against `usage`, global ones in
    /// Redis (all asked at once, each bounded by [`redis_counters::TIMEOUT`]; `failureMode` applies).
    pub async fn decide(
        &self,
        req: &RequestView<'_>,
        usage: &UsageStore,
        now: u64,
    ) -> QuotaDecision {
        let draws = self.draws(req, now);
        let mut charges = Vec::with_capacity(draws.len());
        let mut remote = Vec::new();
        for (i, draw) in draws.iter().enumerate() {
            if draw.quota.info.is_global() {
                remote.push(i);
                charges.push(None);
            } else {
                // Shadow quotas charge whatever the budget says: their usage is what would be
                // refused under `Enforce`.
                let force = !draw.quota.info.enforce;
                // A full store takes no new key: like a failed store, the request is admitted
                // uncounted (filling the store must not lock new clients out).
                let charge =
                    usage.charge(&draw.usage_key, draw.period, draw.cost, draw.limit, force);
                if charge.is_none() {
                    self.count_full();
                }
                charges.push(Some(charge.ok_or(())));
            }
        }
        if let (false, Some(store)) = (remote.is_empty(), &self.global) {
            let replies =
                futures::future::join_all(remote.iter().map(|&i| {
                    let d = &draws[i];
                    let mode = if d.quota.info.enforce {
                        Mode::Check
                    } else {
                        Mode::Add
                    };
                    let key = redis_counters::redis_key(d.period, &d.usage_key);
                    async move {
                        redis_counters::call(store, &key, d.period, mode, d.cost, d.limit).await
                    }
                }))
                .await;
            for (i, reply) in remote.iter().zip(replies) {
                charges[*i] = Some(reply.map_err(|_| ()));
            }
        }
        self.conclude(draws, charges, now)
    }

    /// The quotas `req` draws from, with their keys, periods, limits and costs.
    fn draws<'a>(&'a self, req: &RequestView<'_>, now: u64) -> Vec<Draw<'a>> {
        let mut draws = Vec::new();
        let mut key = String::with_capacity(64);
        for quota in &self.quotas {
            if !quota.matcher.matches(req) {
                continue;
            }
            key.clear();
            quota.key.write_key(req, &mut key);
            let limit = quota
                .overrides
                .get(key.as_str())
                .copied()
                .unwrap_or(quota.info.limit);
            let (cost, deferred) = match quota.info.unit {
                QuotaUnit::Requests => (1, None),
                QuotaUnit::RequestBytes => match content_length(req) {
                    Some(length) => (length, None),
                    None => (0, Some(Measure::RequestBytes)),
                },
                QuotaUnit::ResponseBytes => (0, Some(Measure::ResponseBytes)),
                QuotaUnit::RequestMessages => (0, Some(Measure::RequestMessages)),
                QuotaUnit::ResponseMessages => (0, Some(Measure::ResponseMessages)),
            };
            draws.push(Draw {
                quota,
                usage_key: quota.info.usage_key(&key),
                period: quota.info.period_at(now),
                limit,
                cost,
                deferred,
            });
        }
        draws
    }

    /// Turns each quota's charge (or Redis failure) into the request's decision.
    fn conclude(
        &self,
        draws: Vec<Draw<'_>>,
        charges: Vec<Option<Result<Charge, ()>>>,
        now: u64,
    ) -> QuotaDecision {
        let now_seconds = i64::try_from(now / NANOS).unwrap_or(i64::MAX);
        let mut pending = RequestQuotas {
            global: self.global.clone(),
            store_full: self.store_full.clone(),
            ..RequestQuotas::default()
        };
        // The refusing quota whose budget resets last: retrying earlier would be refused anyway.
        let mut refusal: Option<(&Draw<'_>, Charge, Option<i64>)> = None;
        for (draw, charge) in draws.iter().zip(charges) {
            let info = &draw.quota.info;
            let charge = match charge {
                Some(Ok(charge)) => charge,
                // Redis failed or timed out: `failureMode` decides, nothing is charged.
                _ => {
                    if info.scope == UsageScope::GlobalFailClosed && info.enforce {
                        info.limited.inc();
                        // Retry soon: the store, not the budget, is the problem.
                        let retry = Some(now_seconds + 1);
                        if refusal.is_none() {
                            refusal = Some((draw, Charge::default(), retry));
                        }
                    } else {
                        info.allowed.inc();
                    }
                    continue;
                }
            };
            let over = !super::usage::fits(charge.before, draw.cost, draw.limit);
            if over && info.enforce {
                info.limited.inc();
                if refusal
                    .as_ref()
                    .is_none_or(|(d, _, _)| d.period.end < draw.period.end)
                {
                    refusal = Some((draw, charge, None));
                }
                continue;
            }
            if over {
                info.shadow_limited.inc();
            } else {
                info.allowed.inc();
            }
            info.count_crossings(charge.before, charge.after, draw.limit);
            if let Some(t) = info.reached_threshold(charge.after, draw.limit) {
                pending.warnings.push((
                    WARNING_HEADER,
                    warning(
                        &info.name,
                        charge.after,
                        draw.limit,
                        t,
                        &draw.period,
                        now_seconds,
                    ),
                ));
            }
            if let Some(measure) = draw.deferred {
                pending.deferred.push(Deferred {
                    info: info.clone(),
                    usage_key: draw.usage_key.clone(),
                    period: draw.period,
                    limit: draw.limit,
                    measure,
                });
            }
        }
        let reject = refusal.map(|(draw, charge, retry_at)| {
            let reset = retry_at.unwrap_or(draw.period.end);
            let mut headers = vec![
                (
                    "Retry-After".to_owned(),
                    (reset - now_seconds).max(1).to_string(),
                ),
                ("Bulwark-Quota-Reset".to_owned(), period::rfc3339(reset)),
            ];
            if retry_at.is_none() {
                headers.push((
                    "Bulwark-Quota-Exhausted".to_owned(),
                    format!(
                        "\"{}\";limit={};used={}",
                        draw.quota.info.name, draw.limit, charge.before
                    ),
                ));
            }
            draw.quota.response.reply(Reason::QuotaExhausted, headers)
        });
        QuotaDecision { reject, pending }
    }
}

/// The header that warns of a threshold reached.
pub const WARNING_HEADER: &str = "Bulwark-Quota-Warning";

/// `"<quota>";used=<percent>;threshold=<percent>;remaining=<units>;reset=<seconds>`, in the
/// style of the IETF `RateLimit` header: the quota, how much of it is used (percent, rounded
/// down), the highest threshold reached, what is left and when the period resets.
fn warning(name: &str, used: u64, limit: u64, threshold: u8, period: &Period, now: i64) -> String {
    let percent = u128::from(used) * 100 / u128::from(limit.max(1));
    format!(
        "\"{name}\";used={percent};threshold={threshold};remaining={};reset={}",
        limit.saturating_sub(used),
        (period.end - now).max(0)
    )
}

fn content_length(req: &RequestView<'_>) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl RequestQuotas {
    /// Headers for the app's response: one warning per quota at or above a threshold.
    pub fn response_headers(&self) -> &[(&'static str, String)] {
        &self.warnings
    }

    /// Whether [`RequestQuotas::settle`] has anything to do.
    pub fn has_deferred(&self) -> bool {
        !self.deferred.is_empty()
    }

    /// Whether a deferred charge counts gRPC messages (so the proxy counts them).
    pub fn counts_messages(&self) -> bool {
        self.deferred.iter().any(|d| {
            matches!(
                d.measure,
                Measure::RequestMessages | Measure::ResponseMessages
            )
        })
    }

    /// Charges what is counted after the response, from what the exchange carried.
    /// Unconditional: the budget was checked when the request was admitted. A Redis failure
    /// loses these charges (counted in `bulwark_store_errors_total`).
    pub async fn settle(self, usage: &UsageStore, exchanged: Exchanged) {
        for d in self.deferred {
            let bytes = match d.measure {
                Measure::ResponseBytes => exchanged.response_bytes,
                Measure::RequestBytes => exchanged.request_bytes,
                Measure::RequestMessages => exchanged.request_messages,
                Measure::ResponseMessages => exchanged.response_messages,
            };
            if bytes == 0 {
                continue;
            }
            let charge = match (d.info.is_global(), &self.global) {
                (true, Some(store)) => {
                    let key = redis_counters::redis_key(d.period, &d.usage_key);
                    match redis_counters::call(store, &key, d.period, Mode::Add, bytes, d.limit)
                        .await
                    {
                        Ok(charge) => charge,
                        Err(_) => continue,
                    }
                }
                _ => match usage.charge(&d.usage_key, d.period, bytes, d.limit, true) {
                    Some(charge) => charge,
                    None => {
                        if let Some(counter) = &self.store_full {
                            counter.inc();
                        }
                        continue;
                    }
                },
            };
            d.info.count_crossings(charge.before, charge.after, d.limit);
        }
    }
}

fn compile_quota(
    source: &PolicySource,
    spec: &QuotaPolicySpec,
    quota: &Quota,
    tz: &TimeZone,
    response: Arc<DenyTemplate>,
    claims: &Arc<TokenClaims>,
    env: &CompileEnv<'_>,
) -> Result<CompiledQuota, CompileError> {
    let metrics = env.metrics;
    let matcher =
        CompiledMatch::compile(&quota.match_, &env.regexes).map_err(|e| e.under("match"))?;
    let key = KeyBuilder::compile(&quota.key, claims)?;
    if quota.limit == 0 {
        return Err(CompileError::new("limit", "must be at least 1"));
    }
    let mut overrides = HashMap::new();
    for (i, o) in quota.overrides.iter().enumerate() {
        if o.values.len() != key.len() {
            return Err(CompileError::new(
                format!("overrides[{i}].values"),
                "each override lists exactly one value per key part",
            ));
        }
        if o.limit == 0 {
            return Err(CompileError::new(
                format!("overrides[{i}].limit"),
                "must be at least 1",
            ));
        }
        overrides
            .entry(key.override_key(&o.values))
            .or_insert(o.limit);
    }
    let mut thresholds: Vec<u8> = Vec::with_capacity(quota.thresholds.len());
    for (i, &t) in quota.thresholds.iter().enumerate() {
        if !(1..=99).contains(&t) || thresholds.contains(&t) {
            return Err(CompileError::new(
                format!("thresholds[{i}]"),
                "thresholds are distinct percentages from 1 to 99",
            ));
        }
        thresholds.push(t);
    }
    thresholds.sort_unstable();
    let policy = format!("{}/{}", source.namespace, source.name);
    // Stable across restarts and pods (persisted and Redis keys carry it): xxh3 of a canonical
    // text, not std's unspecified hasher.
    let id = xxhash_rust::xxh3::xxh3_64(
        format!(
            "{policy}\u{1f}{}\u{1f}{:?}\u{1f}{:?}\u{1f}{}",
            quota.name, quota.unit, quota.period, spec.time_zone
        )
        .as_bytes(),
    );
    let decision = |d: &str| {
        metrics
            .quota
            .requests
            .with_label_values(&[policy.as_str(), quota.name.as_str(), d])
    };
    let info = QuotaInfo {
        name: quota.name.clone(),
        unit: quota.unit,
        period: quota.period,
        time_zone: tz.clone(),
        limit: quota.limit,
        enforce: spec.enforcement == Enforcement::Enforce,
        scope: match (spec.scope, spec.failure_mode) {
            (Scope::Local, _) => UsageScope::Local,
            (Scope::Global, FailureMode::Open) => UsageScope::GlobalFailOpen,
            (Scope::Global, FailureMode::Closed) => UsageScope::GlobalFailClosed,
        },
        prefix: format!("{policy}/{}:{id:016x}:", quota.name),
        thresholds: thresholds
            .iter()
            .map(|t| {
                (
                    *t,
                    metrics.quota.threshold_crossings.with_label_values(&[
                        policy.as_str(),
                        quota.name.as_str(),
                        &t.to_string(),
                    ]),
                )
            })
            .collect(),
        allowed: decision("allowed"),
        limited: decision("limited"),
        shadow_limited: decision("shadow_limited"),
        policy,
    };
    Ok(CompiledQuota {
        info: Arc::new(info),
        matcher,
        key,
        overrides,
        response,
    })
}

#[cfg(test)]
mod tests;
