//! Types shared by several kinds: status, request matching, counter keys, responses, references.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types every Bulwark policy reports, as Gateway API users know them.
pub mod condition {
    /// The spec is semantically valid: references resolve and no rule conflicts with another.
    pub const ACCEPTED: &str = "Accepted";
    /// Every selected pod's sidecar enforces the current generation.
    pub const PROGRAMMED: &str = "Programmed";
    /// WebhookEndpoint only: deliveries are not failing (`True`); `False` while every attempt
    /// fails (`Failing`), when disabled by its spec (`Disabled`) or by the operator after
    /// `disableAfterFailingFor` (`AutoDisabled`).
    pub const DELIVERING: &str = "Delivering";
}

/// Observed state of a policy, written by the operator.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid and its references resolve) and `Programmed` (the selected
    /// pods' sidecars enforce this generation), each with a reason and a message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// How many injected pods the selector currently matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<i32>,
    /// How many of the selected pods have acknowledged the current generation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub programmed_pods: Option<i32>,
}

/// Whether a policy blocks, or only counts and reports what it would have blocked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Enforcement {
    /// Requests over the limit are answered by the sidecar and never reach the app.
    #[default]
    Enforce,
    /// Requests over the limit are counted in metrics and logs, and still reach the app.
    Shadow,
}

/// Where counters live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Scope {
    /// In each sidecar's memory (rate limits) or on its local disk (quotas): every pod counts alone.
    #[default]
    Local,
    /// In Redis, shared by every selected pod: the limit holds for the workload as a whole.
    Global,
}

/// What the sidecar does when the counter store (Redis) cannot answer in time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailureMode {
    /// Let the request through (availability over enforcement). Counted in metrics.
    #[default]
    Open,
    /// Reject the request as if the limit were reached (enforcement over availability).
    Closed,
}

/// How a path is compared, with Gateway API's names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    /// The whole path equals `value`.
    Exact,
    /// The path starts with `value` on a segment boundary (`/api` matches `/api` and `/api/x`,
    /// not `/apix`).
    #[default]
    PathPrefix,
    /// `value` is a regular expression (RE2 syntax) that must match the whole path.
    RegularExpression,
}

/// A condition on the request path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'RegularExpression' || self.value.startsWith('/')").message("value must start with '/' unless type is RegularExpression").field_path(".value"))]
pub struct PathMatch {
    /// How `value` is compared: `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path, prefix or regular expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// A gRPC method: `service` and `method`, or either alone (every method of a service; a method
/// of any service).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) || has(self.method)").message("set service, method or both"))]
pub struct GrpcMethodMatch {
    /// The fully qualified service, `package.Service` (e.g. `shop.v1.Orders`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$")
    )]
    pub service: Option<String>,
    /// The method (e.g. `CreateOrder`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z_][A-Za-z_0-9]*$")
    )]
    pub method: Option<String>,
}

/// How a header or query parameter value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ValueMatchType {
    /// The value equals `value` (case-sensitive).
    #[default]
    Exact,
    /// `value` is a regular expression (RE2 syntax) that must match the whole value.
    RegularExpression,
    /// The header or parameter is present, whatever its value; `value` must be unset.
    Present,
}

/// A condition on one request header or query parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type == 'Present' ? !has(self.value) : has(self.value)").message("value is required unless type is Present, and not allowed with Present").field_path(".value"))]
pub struct ValueMatch {
    /// The header name (case-insensitive) or query parameter name (case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// How `value` is compared: `Exact` (default), `RegularExpression` or `Present`.
    #[serde(default, rename = "type")]
    pub type_: ValueMatchType,
    /// The expected value or regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub value: Option<String>,
    /// Select requests that do NOT match this condition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert: bool,
}

/// HTTP methods a rule can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
#[allow(clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    DELETE,
    CONNECT,
    OPTIONS,
    TRACE,
    PATCH,
}

/// Which requests a rule applies to. Every condition given must hold (they are ANDed); within a
/// list, any entry may match (ORed), except `headers` and `queryParams`, which must all match.
/// An empty match selects every request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.path) && has(self.grpc))").message("set path or grpc, not both: grpc is a shorthand for the path a gRPC call sends").field_path(".grpc"))]
pub struct RequestMatch {
    /// The request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// A gRPC service and method, as Gateway API's GRPCRoute names them: a shorthand for the
    /// path a gRPC call sends (`/package.Service/Method`). Not with `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc: Option<GrpcMethodMatch>,
    /// Request methods, any of which matches (e.g. `[GET, HEAD]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub methods: Vec<HttpMethod>,
    /// Host (`:authority`) names, any of which matches. A leading `*.` matches any one or more
    /// labels (`*.example.com` matches `a.example.com`, not `example.com`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            regex(
                pattern = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*(:[0-9]{1,5})?$"
            )
        )
    )]
    pub hosts: Vec<String>,
    /// Header conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<ValueMatch>,
    /// Query parameter conditions, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<ValueMatch>,
    /// Client address ranges in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`), any of which
    /// matches. The client is the peer of the sidecar's inbound listener.
    #[serde(default, rename = "sourceCIDRs", skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(max = 64)))]
    #[x_kube(validation = Rule::new("self.all(c, isCIDR(c))").message("every entry must be a CIDR such as 10.0.0.0/8 or 2001:db8::/32"))]
    pub source_cidrs: Vec<String>,
}

/// Where one part of a counter key (or of a flag evaluation context) comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeySourceType {
    /// The client's IP address.
    ClientIP,
    /// The value of the request header `name`.
    Header,
    /// The value of the query parameter `name`.
    QueryParam,
    /// The value of the cookie `name`.
    Cookie,
    /// The request path (without the query string).
    Path,
    /// The claim `name` of the bearer token (dots address nested claims: `org.id`). See `jwt`.
    JWTClaim,
    /// One fixed value: every request shares the same counter.
    Constant,
}

/// One part of a key. Parts are joined in order; a request missing a part (no such header,
/// claim, ...) is counted under the empty value for that part, so it is still limited.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type in ['Header', 'QueryParam', 'Cookie', 'JWTClaim'] ? has(self.name) : !has(self.name)").message("name is required for Header, QueryParam, Cookie and JWTClaim, and not allowed for ClientIP, Path and Constant").field_path(".name"))]
pub struct KeySource {
    /// `ClientIP`, `Header`, `QueryParam`, `Cookie`, `Path`, `JWTClaim` or `Constant`.
    #[serde(rename = "type")]
    pub type_: KeySourceType,
    /// The header, query parameter, cookie or claim name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub name: Option<String>,
}

/// Where bearer tokens are read for `JWTClaim` key parts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtSource {
    /// The header carrying the token. With `Authorization` the `Bearer ` prefix is stripped.
    #[serde(default = "default_jwt_header")]
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
    /// Verify the token before trusting its claims: signature, `exp` and `nbf` (60 s leeway),
    /// and `iss`/`aud` when set. A token that fails contributes no claims (its parts count as
    /// ""), so a forged token cannot pick another client's counter. Without it, claims are
    /// decoded but not verified: fine for keying counters, not for access decisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<JwtVerification>,
}

/// Policies whose keys (or evaluation context) may come from bearer tokens.
pub trait ReadsBearerTokens {
    /// Where the policy reads bearer tokens, if it says.
    fn jwt(&self) -> Option<&JwtSource>;

    /// The policy's `jwt.verification`, if it verifies bearer tokens.
    fn jwt_verification(&self) -> Option<&JwtVerification> {
        self.jwt().and_then(|j| j.verification.as_ref())
    }
}

fn default_jwt_header() -> String {
    "Authorization".to_owned()
}

/// How bearer tokens are verified, with keys from a Secret (as Istio's `RequestAuthentication`
/// with inline `jwks`; nothing is fetched from a URL).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.algorithms.all(a, a.startsWith('HS')) || self.algorithms.all(a, a.startsWith('RS') || a.startsWith('PS')) || self.algorithms.all(a, a.startsWith('ES')) || self.algorithms.all(a, a == 'EdDSA')").message("algorithms must all suit the one key: HS*, RS*/PS*, ES* or EdDSA").field_path(".algorithms"))]
pub struct JwtVerification {
    /// A key of a Secret in the policy's namespace holding the verification key: a PEM public
    /// key (`-----BEGIN PUBLIC KEY-----`) for RS*, PS*, ES* and EdDSA, or the HMAC secret's
    /// bytes for HS*; or a JWKS document (`{"keys": [...]}`, as identity providers publish),
    /// whose key is chosen by the token's `kid`, so keys can rotate.
    pub key_secret_ref: SecretKeyRef,
    /// Accepted algorithms, e.g. `[RS256]`.
    #[schemars(
        length(min = 1, max = 8),
        inner(regex(pattern = r"^(HS|RS|PS)(256|384|512)$|^ES(256|384)$|^EdDSA$"))
    )]
    pub algorithms: Vec<String>,
    /// Required `iss` claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub issuer: Option<String>,
    /// Accepted `aud` values; any of them must appear in the token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 1024)))]
    pub audiences: Vec<String>,
}

/// A key of a Secret in the policy's namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// The key within the Secret's data.
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The response the sidecar sends instead of forwarding the request. It always carries a
/// `bulwark-reason` header naming why (e.g. `rate_limited`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct DenyResponse {
    /// The status code. Defaults depend on the policy (429 for limits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub status_code: Option<u16>,
    /// Extra response headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub headers: Vec<HttpHeader>,
    /// The response body, sent as is. Without one (and without `contentType`), the sidecar
    /// sends a small JSON body naming the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub body: Option<String>,
    /// The body's `Content-Type` (default `text/plain; charset=utf-8` when `body` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub content_type: Option<String>,
}

/// A header name and value, as Gateway API's `HTTPHeader`. Lists of headers are keyed by name
/// (names are compared case-insensitively by HTTP, so use one spelling).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct HttpHeader {
    /// The header name: an HTTP token such as `X-Request-Source`.
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
    )]
    pub name: String,
    /// The header value.
    #[schemars(length(max = 4096))]
    pub value: String,
}

/// The pattern of a DNS-1123 label, used for names of rules, groups and upstreams.
pub const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
