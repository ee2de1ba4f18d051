//! The operator's admission webhooks, on one TLS listener (`--webhook-listen`) with one
//! certificate: `POST /mutate` injects the sidecar into pods ([`crate::inject`]), `POST /validate`
//! refuses Bulwark resources the CRD schemas cannot fully check ([`crate::validate`]). Reading
//! the AdmissionReview is shared here.

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use kube::core::{
    DynamicObject, Resource,
    admission::{AdmissionRequest, AdmissionResponse, AdmissionReview},
};
use serde::de::DeserializeOwned;

use crate::{
    inject::{self, InjectConfig},
    validate,
};

/// Largest AdmissionReview body read.
const MAX_REVIEW_BYTES: usize = 8 << 20;

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

pub fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// The review's response, 200.
pub fn review_response(response: AdmissionResponse) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&response.into_review()).expect("a review serialises");
    json_response(StatusCode::OK, body)
}

/// The request of a `POST`ed AdmissionReview of `T`, or the error answer (405, 400) with why.
pub async fn read_review<T, B>(
    req: Request<B>,
) -> Result<AdmissionRequest<T>, (Response<Full<Bytes>>, String)>
where
    T: Resource + DeserializeOwned,
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if req.method() != Method::POST {
        return Err((
            text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST an AdmissionReview\n".into(),
            ),
            format!("method {}", req.method()),
        ));
    }
    let body = match Limited::new(req.into_body(), MAX_REVIEW_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let why = format!("reading the request body: {e}");
            return Err((
                text_response(StatusCode::BAD_REQUEST, format!("{why}\n")),
                why,
            ));
        }
    };
    serde_json::from_slice::<AdmissionReview<T>>(&body)
        .map_err(|e| e.to_string())
        .and_then(|r| {
            let request: Result<AdmissionRequest<T>, _> = r.try_into();
            request.map_err(|_| "no request in the review".to_string())
        })
        .map_err(|why| {
            tracing::warn!(error = %why, "malformed AdmissionReview");
            let review: AdmissionReview<DynamicObject> =
                AdmissionResponse::invalid(&why).into_review();
            let body = serde_json::to_vec(&review).unwrap_or_default();
            (json_response(StatusCode::BAD_REQUEST, body), why)
        })
}

/// The webhooks as one hyper service for [`crate::tls::serve_tls`]; `observe_injection` and
/// `observe_validation` see every outcome (for metrics).
pub fn service<I, V>(
    inject_config: Arc<InjectConfig>,
    observe_injection: Arc<I>,
    observe_validation: Arc<V>,
) -> impl hyper::service::Service<
    Request<hyper::body::Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static
where
    I: Fn(&inject::Outcome) + Send + Sync + 'static + ?Sized,
    V: Fn(&validate::Verdict) + Send + Sync + 'static + ?Sized,
{
    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let inject_config = inject_config.clone();
        let observe_injection = observe_injection.clone();
        let observe_validation = observe_validation.clone();
        async move {
            let response = match req.uri().path() {
                "/mutate" => {
                    let (response, outcome) = inject::handle(req, &inject_config).await;
                    observe_injection(&outcome);
                    response
                }
                "/validate" => {
                    let (response, verdict) = validate::handle(req).await;
                    observe_validation(&verdict);
                    response
                }
                other => {
                    tracing::debug!(path = %other, "unknown webhook path");
                    text_response(
                        StatusCode::NOT_FOUND,
                        "not found: POST /mutate (sidecar injection) or /validate (validation)\n"
                            .into(),
                    )
                }
            };
            Ok::<_, Infallible>(response)
        }
    })
}
