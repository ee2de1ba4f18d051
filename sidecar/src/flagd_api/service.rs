//! The generated `flagd.evaluation.v1` and `v2` services, answered by one [`EvaluationApi`]:
//! the two versions differ only in v2's optional value and variant (unset for DISABLED), which
//! v1 sends as zero values.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Instant, SystemTime},
};

use bulwark_policy::runtime::Runtime;
use futures::Stream;
use prost_types::Struct;
use serde_json::json;
use tonic::{Request, Response, Status};

use super::{
    proto::{v1, v2},
    resolve::{self, Answer, Kind, Typed, to_struct},
};

/// Answers both versions from the installed policy's flags.
#[derive(Clone)]
pub struct EvaluationApi {
    runtime: Arc<Runtime>,
}

impl EvaluationApi {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }

    pub(super) fn resolve(
        &self,
        key: &str,
        kind: Kind,
        context: Option<&Struct>,
    ) -> Result<Answer, Status> {
        let started = Instant::now();
        let result = resolve::resolve(&self.runtime.policy().flags, key, kind, context, now());
        self.observe(kind.method(), result.as_ref().err(), started);
        result
    }

    pub(super) fn resolve_all(
        &self,
        context: Option<&Struct>,
    ) -> Result<Vec<(String, Answer)>, Status> {
        let started = Instant::now();
        let result = resolve::resolve_all(&self.runtime.policy().flags, context, now());
        self.observe("ResolveAll", result.as_ref().err(), started);
        result
    }

    /// Counts a call (`bulwark_flagd_api_*`).
    fn observe(&self, method: &str, error: Option<&Status>, started: Instant) {
        let metrics = &self.runtime.metrics.flags;
        let code = match error {
            None => "Ok".to_owned(),
            Some(status) => format!("{:?}", status.code()),
        };
        metrics.api_calls.with_label_values(&[method, &code]).inc();
        metrics
            .api_seconds
            .with_label_values(&[method])
            .observe(started.elapsed().as_secs_f64());
    }

    /// `provider_ready` at once, then `configuration_change` whenever the flags change.
    pub fn events<E: Send + 'static>(
        &self,
        event: fn(&'static str, Option<Struct>) -> E,
    ) -> Pin<Box<dyn Stream<Item = Result<E, Status>> + Send>> {
        let changes = self.runtime.flag_changes();
        Box::pin(futures::stream::unfold(
            (true, changes),
            move |(first, mut changes)| async move {
                if first {
                    changes.mark_unchanged();
                    return Some((Ok(event("provider_ready", None)), (false, changes)));
                }
                changes.changed().await.ok()?;
                let data = json!({"flags": {}});
                let data = to_struct(data.as_object().expect("an object"));
                Some((
                    Ok(event("configuration_change", Some(data))),
                    (false, changes),
                ))
            },
        ))
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// v1 has no "unset": zero values.
fn v1<T: Default>(value: Option<T>) -> T {
    value.unwrap_or_default()
}

/// v2 keeps "unset".
fn v2<T>(value: Option<T>) -> Option<T> {
    value
}

macro_rules! typed_value {
    ($answer:expr, $kind:ident) => {
        match $answer.value {
            Some(Typed::$kind(value)) => Some(value),
            _ => None,
        }
    };
}

macro_rules! evaluation_service {
    ($version:ident) => {
        #[tonic::async_trait]
        impl $version::service_server::Service for EvaluationApi {
            type EventStreamStream =
                Pin<Box<dyn Stream<Item = Result<$version::EventStreamResponse, Status>> + Send>>;

            async fn resolve_all(
                &self,
                request: Request<$version::ResolveAllRequest>,
            ) -> Result<Response<$version::ResolveAllResponse>, Status> {
                use $version::any_flag::Value;
                let flags = self
                    .resolve_all(request.get_ref().context.as_ref())?
                    .into_iter()
                    .map(|(key, answer)| {
                        let value = answer.value.map(|value| match value {
                            Typed::Boolean(b) => Value::BoolValue(b),
                            Typed::String(s) => Value::StringValue(s),
                            Typed::Float(f) => Value::DoubleValue(f),
                            Typed::Int(i) => Value::DoubleValue(i as f64),
                            Typed::Object(o) => Value::ObjectValue(o),
                        });
                        let flag = $version::AnyFlag {
                            reason: answer.reason.into(),
                            variant: $version(answer.variant),
                            value,
                            metadata: Some(answer.metadata),
                        };
                        (key, flag)
                    })
                    .collect();
                Ok(Response::new($version::ResolveAllResponse {
                    flags,
                    metadata: Some(Struct::default()),
                }))
            }

            async fn resolve_boolean(
                &self,
                request: Request<$version::ResolveBooleanRequest>,
            ) -> Result<Response<$version::ResolveBooleanResponse>, Status> {
                let r = request.get_ref();
                let answer = self.resolve(&r.flag_key, Kind::Boolean, r.context.as_ref())?;
                Ok(Response::new($version::ResolveBooleanResponse {
                    value: $version(typed_value!(answer, Boolean)),
                    reason: answer.reason.into(),
                    variant: $version(answer.variant),
                    metadata: Some(answer.metadata),
                }))
            }

            async fn resolve_string(
                &self,
                request: Request<$version::ResolveStringRequest>,
            ) -> Result<Response<$version::ResolveStringResponse>, Status> {
                let r = request.get_ref();
                let answer = self.resolve(&r.flag_key, Kind::String, r.context.as_ref())?;
                Ok(Response::new($version::ResolveStringResponse {
                    value: $version(typed_value!(answer, String)),
                    reason: answer.reason.into(),
                    variant: $version(answer.variant),
                    metadata: Some(answer.metadata),
                }))
            }

            async fn resolve_float(
                &self,
                request: Request<$version::ResolveFloatRequest>,
            ) -> Result<Response<$version::ResolveFloatResponse>, Status> {
                let r = request.get_ref();
                let answer = self.resolve(&r.flag_key, Kind::Float, r.context.as_ref())?;
                Ok(Response::new($version::ResolveFloatResponse {
                    value: $version(typed_value!(answer, Float)),
                    reason: answer.reason.into(),
                    variant: $version(answer.variant),
                    metadata: Some(answer.metadata),
                }))
            }

            async fn resolve_int(
                &self,
                request: Request<$version::ResolveIntRequest>,
            ) -> Result<Response<$version::ResolveIntResponse>, Status> {
                let r = request.get_ref();
                let answer = self.resolve(&r.flag_key, Kind::Int, r.context.as_ref())?;
                Ok(Response::new($version::ResolveIntResponse {
                    value: $version(typed_value!(answer, Int)),
                    reason: answer.reason.into(),
                    variant: $version(answer.variant),
                    metadata: Some(answer.metadata),
                }))
            }

            async fn resolve_object(
                &self,
                request: Request<$version::ResolveObjectRequest>,
            ) -> Result<Response<$version::ResolveObjectResponse>, Status> {
                let r = request.get_ref();
                let answer = self.resolve(&r.flag_key, Kind::Object, r.context.as_ref())?;
                Ok(Response::new($version::ResolveObjectResponse {
                    // A message field: optional in both versions.
                    value: typed_value!(answer, Object),
                    reason: answer.reason.into(),
                    variant: $version(answer.variant),
                    metadata: Some(answer.metadata),
                }))
            }

            async fn event_stream(
                &self,
                _request: Request<$version::EventStreamRequest>,
            ) -> Result<Response<Self::EventStreamStream>, Status> {
                Ok(Response::new(self.events(|kind, data| {
                    $version::EventStreamResponse {
                        r#type: kind.into(),
                        data,
                    }
                })))
            }
        }
    };
}

evaluation_service!(v1);
evaluation_service!(v2);
