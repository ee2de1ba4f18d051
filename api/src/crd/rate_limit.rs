//! `RateLimitPolicy`: limits on request rates per key, enforced by the selected pods' sidecars.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DenyResponse, Enforcement, FailureMode, JwtSource, KeySource, PolicyStatus, RequestMatch, Scope,
};
use crate::Duration;

/// RateLimitPolicy limits how fast clients may call the selected pods. Each rule matches requests,
/// derives a key from them (client IP, header, claim, ...), and holds a separate counter per key.
/// Every rule that matches a request applies, and every rate of a rule applies: the request is
/// admitted only if all of them admit it (the most restrictive wins).
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    category = "bulwark",
    namespaced,
    status = "PolicyStatus",
    doc = "RateLimitPolicy limits request rates per key at the sidecars of the pods it selects.",
    printcolumn(
        name = "Scope",
        type_ = "string",
        json_path = ".spec.scope",
        description = "Local (per pod) or Global (shared through Redis)"
    ),
    printcolumn(
        name = "Enforcement",
        type_ = "string",
        json_path = ".spec.enforcement",
        description = "Enforce or Shadow"
    ),
    printcolumn(
        name = "Limit",
        type_ = "integer",
        json_path = ".spec.rules[0].rates[0].limit",
        description = "The first rule's first limit"
    ),
    printcolumn(
        name = "Window",
        type_ = "string",
        json_path = ".spec.rules[0].rates[0].window",
        description = "The first rule's first window"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.programmedPods",
        priority = 1,
        description = "Selected pods enforcing the current generation"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.scope == 'Global' || !has(self.global)").message("global is only allowed with scope: Global").field_path(".global"))]
pub struct RateLimitPolicySpec {
    /// Selects the pods, in this namespace, whose sidecars enforce this policy. An empty selector
    /// selects every injected pod of the namespace.
    #[serde(default)]
    pub selector: LabelSelector,
    /// `Local` (default): each pod counts on its own, so N pods admit N times the limit.
    /// `Global`: counters live in Redis and the limit holds for all selected pods together.
    #[serde(default)]
    pub scope: Scope,
    /// Settings of `Global` scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<GlobalRateLimit>,
    /// `Enforce` (default) rejects requests over a limit; `Shadow` only counts and reports them,
    /// to try a policy on real traffic before enforcing it.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// Where bearer tokens are read for `JWTClaim` key parts (default: the `Authorization` header,
    /// not verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSource>,
    /// The response to a limited request. Defaults to `429 Too Many Requests` with `Retry-After`
    /// and the IETF `RateLimit` and `RateLimit-Policy` headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<RateLimitResponse>,
    /// The rules. Names are unique within the policy.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub rules: Vec<RateLimitRule>,
}

/// One rate-limited class of requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.algorithm == 'TokenBucket' || (self.rates.all(r, !has(r.burst)) && (!has(self.overrides) || self.overrides.all(o, !has(o.rates) || o.rates.all(r, !has(r.burst)))))").message("burst is only allowed with algorithm TokenBucket").field_path(".rates"))]
#[x_kube(validation = Rule::new("!has(self.overrides) || self.overrides.all(o, size(o.values) == (has(self.key) ? size(self.key) : 0))").message("each override lists exactly one value per key part").field_path(".overrides"))]
pub struct RateLimitRule {
    /// The rule's name, unique within the policy; used in metrics and responses.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which requests this rule counts. Empty: every request.
    #[serde(default, rename = "match")]
    pub match_: RequestMatch,
    /// How requests are grouped into counters. Each distinct key value has its own counter.
    /// Empty: one counter shared by every matching request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub key: Vec<KeySource>,
    /// `TokenBucket` (default; GCRA, smooth, with `burst`), `SlidingWindow` (no double burst at
    /// window edges) or `FixedWindow` (cheapest; up to twice the limit across a window edge).
    #[serde(default)]
    pub algorithm: RateLimitAlgorithm,
    /// The limits. All apply: `[{limit: 10, window: 1s}, {limit: 1000, window: 1h}]` admits at
    /// most 10 per second and 1000 per hour.
    #[schemars(length(min = 1, max = 4))]
    pub rates: Vec<Rate>,
    /// How much each request costs. Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<Cost>,
    /// Different limits for particular keys, e.g. 10× for a premium API key. The first override
    /// whose values equal the request's key parts applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub overrides: Vec<RateLimitOverride>,
}

/// The counting algorithm of a rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RateLimitAlgorithm {
    /// Generic cell rate algorithm: requests are spaced at `window / limit`, with up to `burst`
    /// at once.
    #[default]
    TokenBucket,
    /// A window that slides with time: never more than `limit` in any `window`.
    SlidingWindow,
    /// Windows aligned to multiples of `window`; a client can spend two limits across an edge.
    FixedWindow,
}

/// A limit over a window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.burst) || self.burst >= 1").message("burst must be at least 1").field_path(".burst"))]
pub struct Rate {
    /// How many cost units (requests, by default) are admitted per window.
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub limit: u64,
    /// The window, e.g. `1s`, `1m`, `1h` (at most 24h: use a QuotaPolicy for longer periods).
    #[x_kube(validation = crate::duration::rule_between("window", "1ms", "24h"))]
    pub window: Duration,
    /// TokenBucket only: how many units may be spent at once (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1_000_000_000))]
    pub burst: Option<u64>,
}

/// What a request costs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// A fixed cost per request (default 1). Zero makes matching requests free.
    #[serde(default = "default_cost")]
    #[schemars(range(max = 1_000_000))]
    pub amount: u32,
    /// A request header whose non-negative integer value is the cost; when it is missing or not a
    /// number, `amount` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
}

fn default_cost() -> u32 {
    1
}

/// Limits for particular key values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.rates) != has(self.multiplier)").message("set exactly one of rates and multiplier"))]
pub struct RateLimitOverride {
    /// The key's values, one per key part, in order.
    #[schemars(length(min = 1, max = 4), inner(length(max = 1024)))]
    pub values: Vec<String>,
    /// Replace the rule's rates for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4))]
    pub rates: Option<Vec<Rate>>,
    /// Multiply every limit (and burst) of the rule for this key, e.g. `10` for 10×.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub multiplier: Option<u32>,
}

/// Settings of `Global` scope.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Fast' || !has(self.syncInterval)").message("syncInterval is only allowed with mode: Fast").field_path(".syncInterval"))]
pub struct GlobalRateLimit {
    /// `Exact` (default): one atomic Redis script per decision, never over the limit.
    /// `Fast`: each sidecar counts locally and syncs with Redis every `syncInterval`; the limit
    /// can be exceeded by what the pods admit locally between two syncs.
    #[serde(default)]
    pub mode: GlobalMode,
    /// Fast mode: how often local counts are pushed to Redis (default 100ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("syncInterval", "10ms", "10s"))]
    pub sync_interval: Option<Duration>,
    /// `Open` (default) admits requests while Redis is unreachable; `Closed` rejects them.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// How long a decision may wait for Redis before `failureMode` applies (default 50ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("timeout", "1ms", "5s"))]
    pub timeout: Option<Duration>,
}

/// Consistency of `Global` counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum GlobalMode {
    /// Every decision is made by Redis atomically.
    #[default]
    Exact,
    /// Decisions are local; counts are synchronised in batches.
    Fast,
}

/// The response to a limited request.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitResponse {
    /// Status code, headers and body (default: 429, empty body).
    #[serde(flatten)]
    pub deny: DenyResponse,
    /// Also send the legacy `X-RateLimit-Limit`, `X-RateLimit-Remaining` and `X-RateLimit-Reset`
    /// headers, for clients that predate the IETF `RateLimit` headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub legacy_headers: bool,
}

impl super::common::ReadsBearerTokens for RateLimitPolicySpec {
    fn jwt(&self) -> Option<&JwtSource> {
        self.jwt.as_ref()
    }
}
