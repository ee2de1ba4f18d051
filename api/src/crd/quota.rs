//! `QuotaPolicy`: long-window budgets (hour to month, calendar-aligned), persisted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    DenyResponse, Enforcement, FailureMode, JwtSource, KeySource, PolicyStatus, RequestMatch, Scope,
};

/// QuotaPolicy gives each key a budget per calendar period (hour, day, week, month), e.g. 10,000
/// requests per API key per month. Usage is persisted (Redis for `Global` scope, the sidecar's
/// on-disk store for `Local`) so it survives restarts, and a key's usage and reset time can be
/// read from the sidecar's admin API.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "QuotaPolicy",
    plural = "quotapolicies",
    shortname = "qp",
    category = "bulwark",
    namespaced,
    status = "PolicyStatus",
    doc = "QuotaPolicy gives each key a budget per calendar period, enforced at the sidecars of the pods it selects.",
    printcolumn(
        name = "Scope",
        type_ = "string",
        json_path = ".spec.scope",
        description = "Local (per pod, on disk) or Global (shared through Redis)"
    ),
    printcolumn(
        name = "Limit",
        type_ = "integer",
        json_path = ".spec.quotas[0].limit",
        description = "The first quota's limit"
    ),
    printcolumn(
        name = "Unit",
        type_ = "string",
        json_path = ".spec.quotas[0].unit",
        description = "The first quota's unit"
    ),
    printcolumn(
        name = "Period",
        type_ = "string",
        json_path = ".spec.quotas[0].period",
        description = "The first quota's period"
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
pub struct QuotaPolicySpec {
    /// Selects the pods, in this namespace, whose sidecars enforce this policy. An empty selector
    /// selects every injected pod of the namespace.
    #[serde(default)]
    pub selector: LabelSelector,
    /// `Local` (default): each pod keeps its own usage in its on-disk store. `Global`: usage
    /// lives in Redis, shared by every selected pod.
    #[serde(default)]
    pub scope: Scope,
    /// `Enforce` (default) rejects requests once a quota is used up; `Shadow` only reports.
    #[serde(default)]
    pub enforcement: Enforcement,
    /// The IANA time zone periods are aligned to, e.g. `Europe/Paris` (default `UTC`): a `Day`
    /// quota resets at local midnight, a `Month` quota on the 1st.
    #[serde(default = "default_time_zone")]
    #[schemars(
        length(min = 1, max = 64),
        regex(pattern = r"^(UTC|[A-Za-z]+(/[A-Za-z0-9_+-]+){1,2})$")
    )]
    pub time_zone: String,
    /// `Open` (default) admits requests while the store cannot answer; `Closed` rejects them.
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// Where bearer tokens are read for `JWTClaim` key parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSource>,
    /// The response once a quota is used up: 429 (default) or 403, with `Retry-After` set to the
    /// period's reset time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!has(self.statusCode) || self.statusCode in [403, 429]").message("statusCode must be 403 or 429").field_path(".statusCode"))]
    pub response: Option<DenyResponse>,
    /// The quotas. Names are unique within the policy.
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub quotas: Vec<Quota>,
}

fn default_time_zone() -> String {
    "UTC".to_owned()
}

/// One budget.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.overrides) || self.overrides.all(o, size(o.values) == (has(self.key) ? size(self.key) : 0))").message("each override lists exactly one value per key part").field_path(".overrides"))]
#[x_kube(validation = Rule::new("!has(self.thresholds) || self.thresholds.all(t, self.thresholds.exists_one(u, u == t))").message("thresholds must be unique").field_path(".thresholds"))]
pub struct Quota {
    /// The quota's name, unique within the policy; used in headers, metrics and the usage API.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which requests draw from this quota. Empty: every request.
    #[serde(default, rename = "match")]
    pub match_: RequestMatch,
    /// How requests are grouped: each distinct key value has its own budget. Empty: one budget
    /// shared by every matching request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    pub key: Vec<KeySource>,
    /// What is counted: `Requests` (default; a gRPC call is one), `RequestBytes` or
    /// `ResponseBytes` (body bytes), `RequestMessages` or `ResponseMessages` (gRPC messages).
    #[serde(default)]
    pub unit: QuotaUnit,
    /// The budget per period, in `unit`s.
    #[schemars(range(min = 1))]
    pub limit: u64,
    /// The calendar period: `Hour`, `Day`, `Week` (starting Monday, ISO 8601) or `Month`.
    pub period: QuotaPeriod,
    /// Soft thresholds in percent (e.g. `[80, 95]`): crossing one adds a `Bulwark-Quota-Warning`
    /// header and counts a metric, without rejecting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8), inner(range(min = 1, max = 99)))]
    pub thresholds: Vec<u8>,
    /// Different budgets for particular key values. The first override whose values equal the
    /// request's key parts applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub overrides: Vec<QuotaOverride>,
}

/// What a quota counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum QuotaUnit {
    /// One per request.
    #[default]
    Requests,
    /// Bytes of request body.
    RequestBytes,
    /// Bytes of response body; counted after the response, so the request that crosses the
    /// limit completes and the next one is rejected.
    ResponseBytes,
    /// gRPC messages the client sent on a call (one for a unary call, each message of a
    /// client or bidirectional stream); counted after the call, like `ResponseBytes`. Other
    /// requests count none.
    RequestMessages,
    /// gRPC messages the app sent back on a call; counted after the call.
    ResponseMessages,
}

/// Calendar periods, aligned to the policy's time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum QuotaPeriod {
    Hour,
    Day,
    Week,
    Month,
}

/// A budget for particular key values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuotaOverride {
    /// The key's values, one per key part, in order.
    #[schemars(length(min = 1, max = 4), inner(length(max = 1024)))]
    pub values: Vec<String>,
    /// The budget per period for this key.
    #[schemars(range(min = 1))]
    pub limit: u64,
}

impl super::common::ReadsBearerTokens for QuotaPolicySpec {
    fn jwt(&self) -> Option<&JwtSource> {
        self.jwt.as_ref()
    }
}
