//! `FeatureFlag`: flags in flagd's flag-definition format, evaluated by the sidecar (OFREP API,
//! route gating, header injection).
//!
//! The spec *is* a flagd flag-definition document (`flags`, `$evaluators`, `metadata`), plus
//! Bulwark's own sections (`selector`, `context`, `gates`, `injectHeaders`), so a flagd JSON file
//! pastes into `spec` unchanged.

pub mod checks;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::{DenyResponse, JwtSource, KeySource, PolicyStatus, RequestMatch};

/// FeatureFlag defines flags (flagd format) that the selected pods' sidecars evaluate: through the
/// OFREP API on the sidecar's admin port, to gate routes, and to pass variants to the app as
/// request headers.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "bulwark.dev",
    version = "v1alpha1",
    kind = "FeatureFlag",
    plural = "featureflags",
    shortname = "ff",
    category = "bulwark",
    namespaced,
    status = "PolicyStatus",
    doc = "FeatureFlag defines flagd-compatible flags evaluated by the sidecars of the pods it selects.",
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
#[x_kube(validation = Rule::new("!has(self.gates) || self.gates.all(g, g.flag in self.flags)").message("every gate must name a flag defined in flags").field_path(".gates"))]
#[x_kube(validation = Rule::new("!has(self.injectHeaders) || self.injectHeaders.all(h, h.flag in self.flags)").message("every injected header must name a flag defined in flags").field_path(".injectHeaders"))]
pub struct FeatureFlagSpec {
    /// Selects the pods, in this namespace, whose sidecars serve these flags. An empty selector
    /// selects every injected pod of the namespace.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Accepted and ignored, so a flagd file with a `$schema` line pastes unchanged.
    #[serde(default, rename = "$schema", skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub schema: Option<String>,
    /// The flags, by key, exactly as in a flagd flag-definition file.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 256))]
    #[x_kube(validation = Rule::new("self.all(k, k.matches('^[A-Za-z0-9_.-]{1,128}$'))").message("flag keys are 1-128 characters of letters, digits, '_', '.' and '-'"))]
    pub flags: BTreeMap<String, Flag>,
    /// Shared JsonLogic fragments that targeting rules reference with `{"$ref": "name"}`.
    #[serde(
        default,
        rename = "$evaluators",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    #[schemars(extend("maxProperties" = 128))]
    pub evaluators: BTreeMap<String, JsonLogic>,
    /// Flag-set metadata, returned with every evaluation (flagd `metadata`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub metadata: BTreeMap<String, MetadataValue>,
    /// How the sidecar builds the evaluation context of a proxied request (for gates and
    /// injected headers). OFREP callers send their own context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<EvaluationContext>,
    /// Route gates: for matching requests, evaluate a flag and let the request through only when
    /// the variant is allowed. Names are unique.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub gates: Vec<RouteGate>,
    /// Pass flag variants to the app as request headers, so it needs no SDK.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["header".into()]))]
    pub inject_headers: Vec<InjectHeader>,
}

/// One flag, in flagd's format.
///
/// CEL cannot see inside `variants` (their values are untyped JSON, which Kubernetes hides from
/// CEL), so that `defaultVariant` names a variant, that variants share one type and that
/// `targeting` is valid JsonLogic are checked by the operator's validating webhook (and by
/// standalone sidecars), which refuses the flag naming the field.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Flag {
    /// `ENABLED` or `DISABLED`. A disabled flag evaluates to the caller's default with reason
    /// `DISABLED`.
    pub state: FlagState,
    /// Variant names and their values; all values have one type: boolean, string, number or
    /// object.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 64))]
    pub variants: BTreeMap<String, VariantValue>,
    /// The variant served when targeting is absent or does not pick one.
    #[schemars(length(min = 1, max = 128))]
    pub default_variant: String,
    /// A JsonLogic rule that returns a variant name, with flagd's operators (`fractional`,
    /// `sem_ver`, `starts_with`, `ends_with`) and `$ref` to `$evaluators`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting: Option<JsonLogic>,
    /// Flag metadata, returned with the evaluation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub metadata: BTreeMap<String, MetadataValue>,
}

/// flagd flag states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum FlagState {
    Enabled,
    Disabled,
}

macro_rules! any_json {
    ($name:ident, $schema_name:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Value);

        impl JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $schema_name.into()
            }
            fn inline_schema() -> bool {
                true
            }
            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                // Structural schemas allow untyped values only where unknown fields are preserved.
                json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
            }
        }
    };
}

any_json!(
    VariantValue,
    "VariantValue",
    "A variant's value: boolean, string, number or object."
);
any_json!(
    JsonLogic,
    "JsonLogic",
    "A JsonLogic expression (any JSON value)."
);
any_json!(
    MetadataValue,
    "MetadataValue",
    "A metadata value: boolean, string or number."
);

/// How the evaluation context of a proxied request is built.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EvaluationContext {
    /// Where the targeting key (the user or session identity that `fractional` buckets on) is
    /// read. Without it, requests have no targeting key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub targeting_key: Option<KeySource>,
    /// Further context attributes, by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub attributes: Vec<ContextAttribute>,
    /// Where bearer tokens are read for `JWTClaim` sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSource>,
}

/// A context attribute taken from the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContextAttribute {
    /// The attribute's name in the evaluation context (e.g. `plan`, `email`).
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    /// Where its value comes from.
    pub from: KeySource,
}

/// A route gate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.deny) && has(self.routeTo))").message("set at most one of deny and routeTo"))]
pub struct RouteGate {
    /// The gate's name, unique within the resource.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Which requests the gate applies to.
    #[serde(default, rename = "match")]
    pub match_: RequestMatch,
    /// The flag evaluated for each matching request.
    #[schemars(length(min = 1, max = 128))]
    pub flag: String,
    /// Variants that let the request through unchanged.
    #[schemars(length(min = 1, max = 64))]
    pub allowed_variants: Vec<String>,
    /// The answer to a request whose variant is not allowed (default: 404, empty body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny: Option<DenyResponse>,
    /// Which requests: `Inbound` (default: clients calling the app) or `Outbound` (the app's
    /// own calls through the sidecar's outbound listener).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<TrafficDirection>,
    /// Instead of denying, send the request to this outbound upstream (a `FailoverPolicy`
    /// upstream name), e.g. a canary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub route_to: Option<String>,
}

/// A flag whose variant is passed to the app as a request header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InjectHeader {
    /// The flag to evaluate.
    #[schemars(length(min = 1, max = 128))]
    pub flag: String,
    /// The request header that carries the variant name (any client-sent value is replaced).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&*+.^_`|~-]+$")
    )]
    pub header: String,
    /// Which requests carry it: `Inbound` (default: to the app) or `Outbound` (the app's own
    /// calls to other services, so they see the variant too).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<TrafficDirection>,
}

/// Which of the sidecar's listeners a gate or header applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrafficDirection {
    /// Requests to the app (the inbound listener).
    #[default]
    Inbound,
    /// The app's calls to other services (the outbound listener).
    Outbound,
}

impl super::common::ReadsBearerTokens for FeatureFlagSpec {
    fn jwt(&self) -> Option<&JwtSource> {
        self.context.as_ref().and_then(|c| c.jwt.as_ref())
    }
}
