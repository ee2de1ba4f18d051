//! The mutating admission webhook that adds the Bulwark sidecar to pods (`POST /mutate`).
//!
//! [`mutation`] is the pure decision: the JSON patch for one pod, or `None` to leave it alone.
//! [`handle`] wraps it in the AdmissionReview protocol; [`crate::admission`] serves it. What is
//! injected and why: `docs/injection.md`.

use std::{collections::BTreeMap, fmt, sync::Arc};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use k8s_openapi::{
    api::core::v1::{
        Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
        HTTPGetAction, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
        ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection,
        Volume, VolumeMount, VolumeProjection,
    },
    apimachinery::pkg::{api::resource::Quantity, util::intstr::IntOrString},
};
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::{Value, json};

use crate::{admission, cli::Args};

/// Name of the injected container (and the mark of an injected pod).
pub const SIDECAR_NAME: &str = "bulwark-sidecar";
/// Pod annotation (or label): `"false"` opts a pod out, `"true"` opts it in explicitly.
pub const INJECT_ANNOTATION: &str = "bulwark.dev/inject";
/// Pod annotation: the port the app listens on (a number, or the name of a containerPort), when
/// not the first containerPort of the first container.
pub const APP_PORT_ANNOTATION: &str = "bulwark.dev/app-port";
/// How many proxies in front of the pod append to X-Forwarded-For (the sidecar's
/// `--trusted-proxy-hops`): `ClientIP` keys then use the client those proxies saw.
pub const TRUSTED_PROXY_HOPS_ANNOTATION: &str = "bulwark.dev/trusted-proxy-hops";
/// What the app speaks on its port (the sidecar's `--app-protocol`): `auto`, `http1` or `h2c`.
/// Set, it wins over what the operator resolves from the pod's Services (docs/http2-grpc.md).
pub const APP_PROTOCOL_ANNOTATION: &str = "bulwark.dev/app-protocol";
/// The values [`APP_PROTOCOL_ANNOTATION`] takes (any case, surrounding spaces ignored).
pub const APP_PROTOCOLS: [&str; 3] = ["auto", "http1", "h2c"];
/// Label set on injected pods; the operator watches pods with it.
pub const INJECTED_LABEL: &str = "bulwark.dev/injected";
/// Annotation recording the injected image.
pub const IMAGE_ANNOTATION: &str = "bulwark.dev/sidecar-image";
/// Audience of the projected ServiceAccount token the sidecar presents to the operator.
pub const TOKEN_AUDIENCE: &str = "bulwark";
pub const TOKEN_VOLUME: &str = "bulwark-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/bulwark";
pub const STATE_VOLUME: &str = "bulwark-state";
pub const STATE_DIR: &str = "/var/run/bulwark";
/// Names of the sidecar's container ports.
pub const INBOUND_PORT_NAME: &str = "bulwark-http";
pub const ADMIN_PORT_NAME: &str = "bulwark-admin";
/// The app port when neither the annotation nor a containerPort says.
pub const DEFAULT_APP_PORT: u16 = 8080;
/// The UID the sidecar runs as (distroless "nonroot").
pub const SIDECAR_UID: i64 = 65532;

/// What the injector puts into pods; built from the flags and the operator's CA.
#[derive(Debug)]
pub struct InjectConfig {
    pub image: String,
    pub image_pull_policy: String,
    pub operator_url: String,
    /// The operator's CA (PEM), kept current by the TLS rotation
    /// ([`crate::tls::CertResolver::ca_pem`]).
    pub ca_pem: Arc<ArcSwap<String>>,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub cpu_request: String,
    pub memory_request: String,
    pub memory_limit: String,
}

impl InjectConfig {
    pub fn from_args(args: &Args, ca_pem: Arc<ArcSwap<String>>) -> Self {
        Self {
            image: args.sidecar_image.clone(),
            image_pull_policy: args.sidecar_image_pull_policy.clone(),
            operator_url: args.sidecar_operator_url(),
            ca_pem,
            inbound_port: args.sidecar_inbound_port,
            admin_port: args.sidecar_admin_port,
            cpu_request: args.sidecar_cpu_request.clone(),
            memory_request: args.sidecar_memory_request.clone(),
            memory_limit: args.sidecar_memory_limit.clone(),
        }
    }
}

/// Why a pod cannot be injected; the pod is denied with this message (it names what to fix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    #[error(
        "annotation {APP_PORT_ANNOTATION}: {0:?} is neither a port number (1-65535) nor the name of a port of the pod's containers: set it to the port the app listens on"
    )]
    InvalidAppPort(String),
    #[error(
        "annotation {TRUSTED_PROXY_HOPS_ANNOTATION}: {0:?} must be a number of proxies from 0 to 10"
    )]
    InvalidTrustedProxyHops(String),
    #[error(
        "annotation {APP_PROTOCOL_ANNOTATION}: {0:?} must be \"auto\", \"http1\" or \"h2c\" (what the app speaks on its port)"
    )]
    InvalidAppProtocol(String),
    #[error("annotation {INJECT_ANNOTATION}: {0:?} must be \"true\" or \"false\"")]
    InvalidInjectAnnotation(String),
    #[error(
        "the app port {0} is the Bulwark sidecar's {1} port: move the app (or set {APP_PORT_ANNOTATION}) or change the operator's sidecar ports"
    )]
    PortClash(u16, &'static str),
    #[error(
        "the pod already has a volume named {0}, which the Bulwark sidecar needs: rename it or set {INJECT_ANNOTATION}: \"false\""
    )]
    VolumeClash(String),
    #[error("the pod has no spec")]
    NoSpec,
}

/// Why a pod was left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// `bulwark.dev/inject: "false"`.
    OptedOut,
    /// A container or init container is already named `bulwark-sidecar`.
    AlreadyInjected,
    /// `hostNetwork: true`: the sidecar's ports would be the node's, clashing between pods.
    HostNetwork,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SkipReason::OptedOut => "opted_out",
            SkipReason::AlreadyInjected => "already_injected",
            SkipReason::HostNetwork => "host_network",
        })
    }
}

/// Whether to inject `pod`: `Ok(None)` to inject, `Ok(Some(reason))` to leave it alone.
pub fn skip_reason(pod: &Pod) -> Result<Option<SkipReason>, InjectError> {
    // The label form is what the webhook's objectSelector filters on (so such pods are not even
    // sent while the operator is down); honoured here too, whatever the configuration says.
    let label = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(INJECT_ANNOTATION));
    if label.is_some_and(|v| v.trim().eq_ignore_ascii_case("false")) {
        return Ok(Some(SkipReason::OptedOut));
    }
    if let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT_ANNOTATION))
    {
        match value.trim().to_ascii_lowercase().as_str() {
            "false" => return Ok(Some(SkipReason::OptedOut)),
            "true" => {}
            _ => return Err(InjectError::InvalidInjectAnnotation(value.clone())),
        }
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let injected = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == SIDECAR_NAME);
    if injected {
        return Ok(Some(SkipReason::AlreadyInjected));
    }
    Ok((spec.host_network == Some(true)).then_some(SkipReason::HostNetwork))
}

/// The app's port: the annotation (a number, or the name of an app container's port), else the
/// first containerPort of the first container, else 8080.
pub fn app_port(pod: &Pod) -> Result<u16, InjectError> {
    if let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APP_PORT_ANNOTATION))
    {
        let wanted = value.trim();
        if let Ok(p) = wanted.parse::<i64>() {
            return u16::try_from(p)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| InjectError::InvalidAppPort(value.clone()));
        }
        return pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| p.name.as_deref() == Some(wanted))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .filter(|p| *p > 0)
            .ok_or_else(|| InjectError::InvalidAppPort(value.clone()));
    }
    let first = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.ports.as_ref())
        .and_then(|p| p.first())
        .map(|p| p.container_port);
    Ok(first
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .unwrap_or(DEFAULT_APP_PORT))
}

/// The annotation's number of trusted proxies, if set (0 to 10).
pub fn trusted_proxy_hops(pod: &Pod) -> Result<Option<u8>, InjectError> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRUSTED_PROXY_HOPS_ANNOTATION))
    else {
        return Ok(None);
    };
    value
        .trim()
        .parse::<u8>()
        .ok()
        .filter(|h| *h <= 10)
        .map(Some)
        .ok_or_else(|| InjectError::InvalidTrustedProxyHops(value.clone()))
}

/// The annotation's app protocol, if set: one of [`APP_PROTOCOLS`], in lower case.
pub fn app_protocol(pod: &Pod) -> Result<Option<&'static str>, InjectError> {
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APP_PROTOCOL_ANNOTATION))
    else {
        return Ok(None);
    };
    APP_PROTOCOLS
        .into_iter()
        .find(|p| value.trim().eq_ignore_ascii_case(p))
        .map(Some)
        .ok_or_else(|| InjectError::InvalidAppProtocol(value.clone()))
}

/// The injected container.
pub fn sidecar_container(cfg: &InjectConfig, app_port: u16) -> Container {
    let env = |name: &str, value: String| EnvVar {
        name: name.into(),
        value: Some(value),
        ..Default::default()
    };
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ADMIN_PORT_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    };
    let quantity = |q: &str| Quantity(q.to_string());
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        // A native sidecar (Kubernetes >= 1.29): an init container that keeps running.
        restart_policy: Some("Always".into()),
        env: Some(vec![
            env("BULWARK_OPERATOR_URL", cfg.operator_url.clone()),
            env("BULWARK_OPERATOR_CA", (**cfg.ca_pem.load()).clone()),
            env("BULWARK_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
            env("BULWARK_STATE_DIR", STATE_DIR.into()),
            env(
                "BULWARK_INBOUND_LISTEN",
                format!("0.0.0.0:{}", cfg.inbound_port),
            ),
            env(
                "BULWARK_ADMIN_LISTEN",
                format!("0.0.0.0:{}", cfg.admin_port),
            ),
            env("BULWARK_APP", format!("127.0.0.1:{app_port}")),
            // The pod's zone, for zone-aware failover: the label Kubernetes' PodTopologyLabels
            // admission copies from the node at binding (empty where it does not).
            EnvVar {
                name: "BULWARK_ZONE".into(),
                value_from: Some(EnvVarSource {
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels['topology.kubernetes.io/zone']".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(INBOUND_PORT_NAME.into()),
                container_port: cfg.inbound_port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some(ADMIN_PORT_NAME.into()),
                container_port: cfg.admin_port.into(),
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        readiness_probe: Some(probe("/readyz", 5, 3)),
        liveness_probe: Some(probe("/healthz", 10, 3)),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".to_string(), quantity(&cfg.cpu_request)),
                ("memory".to_string(), quantity(&cfg.memory_request)),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".to_string(),
                quantity(&cfg.memory_limit),
            )])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SIDECAR_UID),
            run_as_group: Some(SIDECAR_UID),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: TOKEN_VOLUME.into(),
                mount_path: TOKEN_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: STATE_VOLUME.into(),
                mount_path: STATE_DIR.into(),
                ..Default::default()
            },
        ]),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

/// The sidecar's volumes: its projected ServiceAccount token (audience `bulwark`, one hour) and
/// an emptyDir for its state.
pub fn sidecar_volumes() -> Vec<Volume> {
    vec![
        Volume {
            name: TOKEN_VOLUME.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(TOKEN_AUDIENCE.into()),
                        expiration_seconds: Some(3600),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: STATE_VOLUME.into(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Default::default()
        },
    ]
}

/// RFC 6901: `~` → `~0`, `/` → `~1`.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("Kubernetes types serialise")
}

/// Appends `items` to the array at `path`, creating it when the pod has none.
fn append(ops: &mut Vec<Value>, path: &str, exists: bool, items: Vec<Value>) {
    if exists {
        for item in items {
            ops.push(json!({"op": "add", "path": format!("{path}/-"), "value": item}));
        }
    } else {
        ops.push(json!({"op": "add", "path": path, "value": items}));
    }
}

/// Sets `key` in the map at `path` (labels, annotations), creating the map when absent.
fn set_key(ops: &mut Vec<Value>, path: &str, exists: bool, key: &str, value: &str) {
    if exists {
        ops.push(json!({"op": "add", "path": format!("{path}/{}", escape(key)), "value": value}));
    } else {
        ops.push(json!({"op": "add", "path": path, "value": {key: value}}));
    }
}

/// The JSON patch that injects the sidecar into `pod`, or `None` when the pod is left alone
/// (opted out, already injected). An error denies the pod with a message naming the fix.
pub fn mutation(pod: &Pod, cfg: &InjectConfig) -> Result<Option<json_patch::Patch>, InjectError> {
    if skip_reason(pod)?.is_some() {
        return Ok(None);
    }
    let spec = pod.spec.as_ref().ok_or(InjectError::NoSpec)?;
    let app_port = app_port(pod)?;
    for (port, which) in [(cfg.inbound_port, "inbound"), (cfg.admin_port, "admin")] {
        let declared = spec
            .containers
            .iter()
            .chain(spec.init_containers.iter().flatten())
            .flat_map(|c| c.ports.iter().flatten())
            .any(|p| p.container_port == i32::from(port));
        if app_port == port || declared {
            return Err(InjectError::PortClash(port, which));
        }
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.name == TOKEN_VOLUME || volume.name == STATE_VOLUME {
            return Err(InjectError::VolumeClash(volume.name.clone()));
        }
    }

    let mut container = sidecar_container(cfg, app_port);
    if let Some(hops) = trusted_proxy_hops(pod)? {
        container.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: "BULWARK_TRUSTED_PROXY_HOPS".into(),
            value: Some(hops.to_string()),
            ..Default::default()
        });
    }
    if let Some(protocol) = app_protocol(pod)? {
        container.env.get_or_insert_with(Vec::new).push(EnvVar {
            name: "BULWARK_APP_PROTOCOL".into(),
            value: Some(protocol.into()),
            ..Default::default()
        });
    }
    let mut ops = Vec::new();
    append(
        &mut ops,
        "/spec/initContainers",
        spec.init_containers.is_some(),
        vec![to_value(&container)],
    );
    append(
        &mut ops,
        "/spec/volumes",
        spec.volumes.is_some(),
        sidecar_volumes().iter().map(to_value).collect(),
    );
    set_key(
        &mut ops,
        "/metadata/labels",
        pod.metadata.labels.is_some(),
        INJECTED_LABEL,
        "true",
    );
    set_key(
        &mut ops,
        "/metadata/annotations",
        pod.metadata.annotations.is_some(),
        IMAGE_ANNOTATION,
        &cfg.image,
    );
    Ok(Some(
        serde_json::from_value(Value::Array(ops)).expect("well-formed JSON patch"),
    ))
}

/// What the webhook did with one review; count these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    Skipped(SkipReason),
    /// Not a pod CREATE (or no object): allowed unchanged.
    Ignored,
    /// The pod was refused with this message.
    Denied(String),
    /// Something on our side failed; the pod was allowed unchanged.
    Error(String),
    /// The request was not an AdmissionReview (400).
    BadRequest(String),
}

impl Outcome {
    /// A short label for metrics: `injected`, `skipped`, `ignored`, `denied`, `error`,
    /// `bad_request`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Injected => "injected",
            Outcome::Skipped(_) => "skipped",
            Outcome::Ignored => "ignored",
            Outcome::Denied(_) => "denied",
            Outcome::Error(_) => "error",
            Outcome::BadRequest(_) => "bad_request",
        }
    }
}

fn pod_name(req: &AdmissionRequest<Pod>) -> String {
    let ns = req.namespace.as_deref().unwrap_or("");
    let name = req
        .object
        .as_ref()
        .and_then(|p| {
            p.metadata
                .name
                .clone()
                .or_else(|| p.metadata.generate_name.clone().map(|g| format!("{g}*")))
        })
        .unwrap_or_else(|| req.name.clone());
    format!("{ns}/{name}")
}

/// Answers one admission request.
pub fn review(req: &AdmissionRequest<Pod>, cfg: &InjectConfig) -> (AdmissionResponse, Outcome) {
    let response = AdmissionResponse::from(req);
    let pod = match (&req.operation, &req.object) {
        (Operation::Create, Some(pod)) => pod,
        _ => return (response, Outcome::Ignored),
    };
    let name = pod_name(req);
    if let Ok(Some(reason)) = skip_reason(pod) {
        tracing::debug!(pod = %name, %reason, "not injecting");
        return (response, Outcome::Skipped(reason));
    }
    match mutation(pod, cfg) {
        Ok(Some(patch)) => match response.clone().with_patch(patch) {
            Ok(r) => {
                tracing::info!(pod = %name, "injecting the Bulwark sidecar");
                (r, Outcome::Injected)
            }
            Err(e) => {
                tracing::warn!(pod = %name, error = %e, "could not serialise the patch; admitting the pod without a sidecar");
                (response, Outcome::Error(e.to_string()))
            }
        },
        Ok(None) => (response, Outcome::Ignored),
        Err(e @ InjectError::NoSpec) => {
            tracing::warn!(pod = %name, error = %e, "admitting the pod without a sidecar");
            (response, Outcome::Error(e.to_string()))
        }
        Err(e) => {
            tracing::info!(pod = %name, error = %e, "denying the pod");
            let message = format!("Bulwark sidecar injection: {e}");
            (response.deny(&message), Outcome::Denied(message))
        }
    }
}

/// Answers `POST /mutate` (an `AdmissionReview` of a Pod in, one with the response out). A body
/// that is not an AdmissionReview gets 400; anything else gets 200 with the verdict.
pub async fn handle<B>(req: Request<B>, cfg: &InjectConfig) -> (Response<Full<Bytes>>, Outcome)
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match admission::read_review::<Pod, B>(req).await {
        Ok(request) => {
            let (response, outcome) = review(&request, cfg);
            (admission::review_response(response), outcome)
        }
        Err((response, why)) => (response, Outcome::BadRequest(why)),
    }
}

#[cfg(test)]
mod tests;
