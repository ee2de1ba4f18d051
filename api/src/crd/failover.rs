//! `FailoverPolicy`: where the app's outbound calls go and how failures are absorbed: priority
//! groups, health checks, outlier ejection, circuit breaking, retries, timeouts, bulkheads.
//!
//! Field names follow Istio's `outlierDetection` and Resilience4j's circuit breaker where those
//! are clear, so users who know them recognise the knobs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{HttpHeader, PolicyStatus, RequestMatch, SecretKeyRef};
use crate::Duration;

/// FailoverPolicy routes the selected pods' outbound calls (made through the sidecar's outbound
/// listener) to upstreams made of priority groups of backends, and absorbs their failures.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "FailoverPolicy",
    plural = "failoverpolicies",
    shortname = "fop",
    category = "bulwark",
    namespaced,
    status = "PolicyStatus",
    doc = "FailoverPolicy routes outbound calls across priority groups of backends and absorbs their failures.",
    printcolumn(
        name = "Upstream",
        type_ = "string",
        json_path = ".spec.upstreams[0].name",
        description = "The first upstream"
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
pub struct FailoverPolicySpec {
    /// Selects the pods, in this namespace, whose sidecars apply this policy. An empty selector
    /// selects every injected pod of the namespace.
    #[serde(default)]
    pub selector: LabelSelector,
    /// The upstreams, matched in order against each outbound request. Names are unique.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub upstreams: Vec<Upstream>,
}

/// A destination the app calls, and how calls to it are handled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.match.hosts) && size(self.match.hosts) > 0) || has(self.match.path) || has(self.match.grpc)").message("an upstream must match on hosts, path or grpc").field_path(".match"))]
pub struct Upstream {
    /// The upstream's name, unique within the policy; used in metrics, `routeTo` and headers.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which outbound requests go to this upstream (by `hosts` and/or `path`).
    #[serde(rename = "match")]
    pub match_: RequestMatch,
    /// Backend groups in priority order: traffic goes to the first group with enough healthy
    /// endpoints (see `failover`). Names are unique.
    #[schemars(length(min = 1, max = 8))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub groups: Vec<BackendGroup>,
    /// When traffic leaves a group and when it comes back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<FailoverSettings>,
    /// How a group's endpoints share calls: `RoundRobin` (default, by `weight`) or
    /// `LeastRequest` (of two endpoints drawn at random, the one with fewer calls in flight;
    /// `weight` is not used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection (ejects endpoints that fail real requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// A circuit breaker over the whole upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
    /// Retries of failed calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Request and per-try timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Limits on concurrent calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulkhead: Option<Bulkhead>,
    /// The answer when no backend is available, instead of a bare 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// Call the backends over TLS (`https`), verifying their certificates. Without it, plain
    /// HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// TLS from the sidecar to an upstream's backends.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    /// The server name sent (SNI) and verified in the backends' certificates (default: the
    /// host the app called, without its port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub sni: Option<String>,
    /// The CA certificates (PEM) the backends' certificates must chain to: a key of a Secret
    /// in the policy's namespace (default: the system's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

/// A priority group of backends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendGroup {
    /// The group's name, unique within the upstream (e.g. `primary`, `secondary`).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The group's backends.
    #[schemars(length(min = 1, max = 64))]
    pub backends: Vec<Backend>,
}

/// A Service (resolved to its ready endpoints through EndpointSlices) or a static address.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.address)").message("set exactly one of service and address"))]
pub struct Backend {
    /// A Kubernetes Service; every ready endpoint is a backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceBackend>,
    /// A static `host:port` (IP or DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 3, max = 260),
        regex(pattern = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")
    )]
    pub address: Option<String>,
    /// The share of the group's traffic with `ActiveActive` (relative weight, default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<u32>,
}

/// A Service backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackend {
    /// The Service's name.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Its namespace (default: the policy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
    /// The Service port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
}

/// How a group's endpoints share calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancer {
    /// In turn, by `weight`.
    #[default]
    RoundRobin,
    /// Power of two choices: of two endpoints drawn at random, the one with fewer calls in
    /// flight (better than round robin when endpoints or calls differ in speed).
    LeastRequest,
}

/// How traffic is spread across groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailoverMode {
    /// All traffic goes to the first group with enough healthy endpoints; later groups are
    /// standbys.
    #[default]
    ActivePassive,
    /// Traffic is spread over every group's healthy endpoints by `weight`.
    ActiveActive,
}

/// When traffic moves between groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSettings {
    /// `ActivePassive` (default) or `ActiveActive`.
    #[serde(default)]
    pub mode: FailoverMode,
    /// A group whose healthy share falls below this percentage spills its traffic to the next
    /// group (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub min_healthy_percent: Option<u8>,
    /// Traffic returns to a higher-priority group only after it has stayed healthy this long,
    /// so a flapping group does not pull traffic back and forth (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_most("failbackAfter", "1h"))]
    pub failback_after: Option<Duration>,
    /// Within a group, prefer endpoints in the calling pod's own zone (the EndpointSlice
    /// `zone`; the pod's from the sidecar's `--zone`). The share kept in the zone is bounded by
    /// the zone's share of the group's endpoints times the number of zones, so a zone with few
    /// endpoints is not overloaded by its callers (default false).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub zone_aware: bool,
}

/// An active health check, per endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.http) != has(self.tcp)").message("set exactly one of http and tcp"))]
#[x_kube(validation = crate::duration::rule_not_longer("timeout", "interval", true))]
pub struct HealthCheck {
    /// Probe with an HTTP GET.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Probe by opening a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
    /// Time between probes of one endpoint (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_least("interval", "100ms"))]
    pub interval: Option<Duration>,
    /// How long a probe may take (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("timeout", "1ms", "1m"))]
    pub timeout: Option<Duration>,
    /// Consecutive successes that mark an endpoint healthy (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// Consecutive failures that mark an endpoint unhealthy (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
    /// Random spread of each interval, in percent (default 10), so probes do not synchronise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub jitter_percent: Option<u8>,
}

/// An HTTP probe.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// The path probed (default `/healthz`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^/"))]
    pub path: Option<String>,
    /// Statuses that count as healthy (default: 200-399).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 100, max = 599)))]
    pub expected_statuses: Vec<u16>,
    /// The `Host` header sent (default: the backend address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub host: Option<String>,
}

/// A TCP probe: healthy when a connection opens.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TcpHealthCheck {}

/// Passive outlier detection, as Istio's `outlierDetection`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::duration::rule_not_longer("baseEjectionTime", "maxEjectionTime", false))]
pub struct OutlierDetection {
    /// Consecutive 5xx responses that eject an endpoint (default 5; 0 disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub consecutive_5xx_errors: Option<u32>,
    /// Consecutive gateway errors (502, 503, 504, connect failures) that eject an endpoint
    /// (default 0: disabled; counted within 5xx when that is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1000))]
    pub consecutive_gateway_errors: Option<u32>,
    /// Ejection time of a first ejection; each further ejection of the same endpoint lasts one
    /// more multiple of it (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_least("baseEjectionTime", "1s"))]
    pub base_ejection_time: Option<Duration>,
    /// The longest an endpoint stays ejected (default 300s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_most("maxEjectionTime", "24h"))]
    pub max_ejection_time: Option<Duration>,
    /// At most this share of a group's endpoints is ejected (default 50). Beyond it (panic), all
    /// endpoints are used, since sending to a suspect endpoint beats sending nowhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u8>,
}

/// A circuit breaker, with Resilience4j's model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CircuitBreaker {
    /// Failure rate, in percent of the calls in the window, that opens the circuit (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_rate_threshold: Option<u8>,
    /// Slow-call rate, in percent, that opens the circuit (default 100: off in practice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub slow_call_rate_threshold: Option<u8>,
    /// Calls slower than this count as slow (default 5s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("slowCallDuration", "1ms", "1h"))]
    pub slow_call_duration: Option<Duration>,
    /// The number of most recent calls the rates are computed over (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub window_size: Option<u32>,
    /// No decision before this many calls are in the window (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000))]
    pub minimum_calls: Option<u32>,
    /// How long the circuit stays open before probing (default 30s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("openDuration", "1ms", "1h"))]
    pub open_duration: Option<Duration>,
    /// Calls let through while half-open; all must succeed to close (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub half_open_calls: Option<u32>,
}

/// Failures a retry may follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum RetryOn {
    /// The connection could not be opened.
    ConnectFailure,
    /// The connection was reset or closed before a response.
    Reset,
    /// The try timed out (`timeouts.perTry`).
    Timeout,
    /// Any 5xx response.
    #[serde(rename = "5xx")]
    ServerError,
    /// 502, 503 or 504.
    GatewayError,
    /// 429, honouring `Retry-After` within the request timeout.
    #[serde(rename = "429")]
    TooManyRequests,
    /// A gRPC answer with `grpc-status` `CANCELLED` (1) in its headers. The gRPC classes read
    /// trailers-only answers (how servers send errors), as Envoy's `retry_on` does, and allow
    /// retrying gRPC calls although they are POSTs.
    Cancelled,
    /// gRPC `DEADLINE_EXCEEDED` (4).
    DeadlineExceeded,
    /// gRPC `RESOURCE_EXHAUSTED` (8).
    ResourceExhausted,
    /// gRPC `INTERNAL` (13).
    Internal,
    /// gRPC `UNAVAILABLE` (14).
    Unavailable,
}

/// Retry settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::duration::rule_not_longer("backoffBase", "backoffMax", false))]
pub struct Retry {
    /// Attempts after the first (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10))]
    pub attempts: Option<u32>,
    /// Which failures are retried (default `[ConnectFailure, Reset, GatewayError]`); gRPC
    /// statuses by name (`Unavailable`, `ResourceExhausted`, `DeadlineExceeded`, `Internal`,
    /// `Cancelled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 11))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub retry_on: Vec<RetryOn>,
    /// Further statuses that are retried.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 400, max = 599)))]
    pub retriable_status_codes: Vec<u16>,
    /// Also retry non-idempotent methods (POST, PATCH). Off by default: a retried POST can
    /// apply twice.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_non_idempotent: bool,
    /// Exponential backoff with full jitter: the first delay is drawn from [0, `backoffBase`],
    /// doubling up to `backoffMax` (defaults 25ms and 250ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("backoffBase", "1ms", "1m"))]
    pub backoff_base: Option<Duration>,
    /// The largest backoff.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("backoffMax", "1ms", "5m"))]
    pub backoff_max: Option<Duration>,
    /// Retries are capped at this percentage of requests over the last 10s, so retries cannot
    /// multiply an outage's load (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub budget_percent: Option<u8>,
    /// Retries always allowed per second, whatever the budget, so low traffic can still retry
    /// (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 10_000))]
    pub min_retries_per_second: Option<u32>,
}

/// Timeouts, as Gateway API's `timeouts`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = crate::duration::rule_not_longer("perTry", "request", false))]
pub struct Timeouts {
    /// The whole call, retries included (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("request", "1ms", "1h"))]
    pub request: Option<Duration>,
    /// One try (default: `request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("perTry", "1ms", "1h"))]
    pub per_try: Option<Duration>,
}

/// Concurrency limits per upstream: excess calls are rejected at once with 503 and a
/// `Bulwark-Reason: bulkhead` header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Bulkhead {
    /// Calls in flight at once.
    #[schemars(range(min = 1, max = 100_000))]
    pub max_concurrent: u32,
    /// Calls that may wait for a slot (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100_000))]
    pub max_queue: Option<u32>,
    /// The longest a call waits in the queue (default 1s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("queueTimeout", "1ms", "1m"))]
    pub queue_timeout: Option<Duration>,
}

/// A configured response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// The status code (default 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 200, max = 599))]
    pub status_code: Option<u16>,
    /// Response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub headers: Vec<HttpHeader>,
    /// The response body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
}
