//! `WebhookEndpoint`: a subscriber URL the sidecar delivers the app's events to, signed with
//! Standard Webhooks signatures, retried on a schedule, never lost once accepted.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{HttpHeader, PolicyStatus, Scope, SecretKeyRef};
use crate::Duration;

/// WebhookEndpoint is a subscriber: events that the selected pods' apps submit to their sidecar
/// (`POST /webhooks/v1/messages`) and whose type matches `eventTypes` are delivered to `url`,
/// signed (Standard Webhooks), retried on `retry.schedule`, and kept as dead letters when every
/// attempt failed.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "WebhookEndpoint",
    plural = "webhookendpoints",
    shortname = "whe",
    category = "bulwark",
    namespaced,
    status = "WebhookEndpointStatus",
    doc = "WebhookEndpoint is a subscriber URL that the selected pods' sidecars deliver events to.",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url"),
    printcolumn(name = "Disabled", type_ = "boolean", json_path = ".spec.disabled"),
    printcolumn(
        name = "Delivered",
        type_ = "integer",
        json_path = ".status.deliveries.succeeded",
        description = "Messages delivered"
    ),
    printcolumn(
        name = "Dead",
        type_ = "integer",
        json_path = ".status.deliveries.deadLettered",
        description = "Messages whose attempts were exhausted"
    ),
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Delivering\")].reason",
        description = "Delivering, Failing, Disabled or AutoDisabled"
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
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("isURL(self.url) && url(self.url).getScheme() in ['https', 'http'] && url(self.url).getHostname() != ''").message("url must be an absolute http(s) URL").field_path(".url"))]
#[x_kube(validation = Rule::new("!isURL(self.url) || url(self.url).getScheme() != 'http' || (has(self.network) && self.network.allowInsecureHTTP)").message("url must use https unless network.allowInsecureHTTP is true").field_path(".url"))]
#[x_kube(validation = Rule::new("!(has(self.ordered) && self.ordered) || !has(self.scope) || self.scope != 'Global'").message("ordered delivery needs scope: Local (one sidecar delivers in order; a shared queue is worked by several)").field_path(".ordered"))]
pub struct WebhookEndpointSpec {
    /// Selects the pods, in this namespace, whose sidecars deliver to this endpoint. An empty
    /// selector selects every injected pod of the namespace.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Where the queue lives. `Local` (default): each sidecar's own on-disk store; a message is
    /// delivered by the sidecar that accepted it. `Global`: one queue in Redis shared by every
    /// selected pod (Redis Streams, one consumer group): any of them delivers, and one finishes
    /// the work of another that died.
    #[serde(default)]
    pub scope: Scope,
    /// Where messages are POSTed. Must be https unless `network.allowInsecureHTTP` is set.
    #[schemars(length(min = 1, max = 2048))]
    pub url: String,
    /// The signing secret: a Secret key holding a `whsec_`-prefixed base64 key, as Standard
    /// Webhooks receivers expect. It travels to the sidecars only over the authenticated stream.
    pub signing: Signing,
    /// Event types delivered here: exact (`invoice.paid`) or a trailing wildcard (`invoice.*`,
    /// or `*` for all). Empty: every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(
            length(min = 1, max = 256),
            regex(pattern = r"^(\*|[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*(\.\*)?)$")
        )
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub event_types: Vec<String>,
    /// Extra request headers sent with every delivery. `webhook-*` headers are Bulwark's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[x_kube(validation = Rule::new("self.all(h, !h.name.lowerAscii().startsWith('webhook-'))").message("header names starting with webhook- are reserved for Standard Webhooks headers"))]
    pub headers: Vec<HttpHeader>,
    /// How long one attempt may take before it counts as failed (default 15s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("timeout", "100ms", "5m"))]
    pub timeout: Option<Duration>,
    /// When attempts are made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySchedule>,
    /// Messages older than this are not attempted again and become dead letters (default 72h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_between("maxMessageAge", "1m", "720h"))]
    pub max_message_age: Option<Duration>,
    /// At most this many deliveries per second to this endpoint, across its retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub rate_limit_per_second: Option<u32>,
    /// At most this many deliveries in flight at once (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_concurrency: Option<u32>,
    /// Deliver messages in the order they were accepted, one at a time: a failing message holds
    /// back the ones behind it. Off by default (throughput and isolation over order).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ordered: bool,
    /// Stop delivering (messages are still accepted and kept, and delivered once re-enabled).
    #[serde(default)]
    pub disabled: bool,
    /// Disable the endpoint automatically once every attempt has failed for this long (default
    /// 120h; `0s` never disables). The status says why, and an Event is recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_most("disableAfterFailingFor", "720h"))]
    pub disable_after_failing_for: Option<Duration>,
    /// Network restrictions (SSRF guard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<WebhookNetwork>,
}

/// Signing keys.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Signing {
    /// The Secret key holding the `whsec_...` secret.
    pub secret_ref: SecretKeyRef,
    /// After the secret changes, deliveries are signed with both the new and the previous key
    /// for this long, so receivers can roll over (default 24h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = crate::duration::rule_at_most("rotationGracePeriod", "720h"))]
    pub rotation_grace_period: Option<Duration>,
}

/// When delivery attempts are made.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetrySchedule {
    /// Delay before each attempt, counted from the previous failure; the first entry is the
    /// first attempt. Default, as Svix: `[0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h]`.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(validation = Rule::new("self.all(d, !d.matches('^([0-9]{1,5}(h|m|s|ms)){1,4}$') || duration(d) <= duration('720h'))").message("each delay must be at most 720h"))]
    pub schedule: Vec<Duration>,
    /// Random spread added to each delay, in percent of it (default 20), so retries from many
    /// sidecars do not arrive together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub jitter_percent: Option<u8>,
}

/// What the endpoint may connect to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookNetwork {
    /// Allow an `http://` URL (no TLS).
    #[serde(default, rename = "allowInsecureHTTP")]
    pub allow_insecure_http: bool,
    /// Allow targets that resolve to loopback, link-local, private or cloud-metadata addresses.
    /// Refused by default so that a tenant cannot aim deliveries at the cluster's internals.
    #[serde(default)]
    pub allow_private_addresses: bool,
    /// Follow HTTP redirects (each hop checked again). Off by default.
    #[serde(default)]
    pub follow_redirects: bool,
}

/// Observed state of a WebhookEndpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookEndpointStatus {
    #[serde(flatten)]
    pub policy: PolicyStatus,
    /// Delivery counts since the endpoint was created, summed over its sidecars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deliveries: Option<DeliveryCounts>,
    /// The most recent failed attempt (never includes secrets or full response bodies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<DeliveryFailure>,
    /// The part of `deliveries` counted by sidecars whose pods are gone: the operator keeps it
    /// so that `deliveries` does not drop when pods are replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_deliveries: Option<DeliveryCounts>,
}

/// Delivery counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryCounts {
    /// Messages delivered (2xx).
    pub succeeded: i64,
    /// Attempts that failed (and may have been retried).
    pub failed_attempts: i64,
    /// Messages whose attempts were exhausted or that outlived `maxMessageAge`.
    pub dead_lettered: i64,
}

/// A failed delivery attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryFailure {
    /// When it happened.
    pub time: Time,
    /// The HTTP status, when a response arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// What went wrong, e.g. `connect timeout` or `HTTP 503`.
    pub reason: String,
}
