//! The validating admission webhook (`POST /validate`): what the CRDs' schemas and CEL rules
//! cannot check, refused before it is stored. Today `FeatureFlag`, whose variant values and
//! targeting rules are JSON the apiserver cannot see into: [`checks::check`] (the same function
//! standalone loading and the sidecar's compile run) finds each problem with its field.
//!
//! A refusal is a `422 Invalid` Status with one cause per problem (field and message), which
//! the apiserver passes on, so `kubectl apply` prints it as it prints the schema's own errors:
//! `The FeatureFlag "flags" is invalid: spec.flags[beta].defaultVariant: "maybe" is not one of …`.

use bulwark_api::crd::{FeatureFlag, feature_flag::checks};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use kube::core::{
    DynamicObject, Status,
    admission::{AdmissionRequest, AdmissionResponse, Operation},
    response::{StatusCause, StatusDetails},
};

use crate::admission;

/// What the webhook did with one request (for `bulwark_operator_validations_total`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused, with the message the user sees.
    Denied(String),
    /// Not a kind or operation this webhook checks: allowed unread.
    Ignored,
    /// The request was not an AdmissionReview.
    BadRequest(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied(_) => "denied",
            Verdict::Ignored => "ignored",
            Verdict::BadRequest(_) => "bad_request",
        }
    }
}

/// Answers one admission request.
pub fn review(req: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Verdict) {
    let response = AdmissionResponse::from(req);
    let object = match (&req.operation, &req.object) {
        (Operation::Create | Operation::Update, Some(object))
            if req.kind.group == "bulwark.dev" && req.kind.kind == "FeatureFlag" =>
        {
            object
        }
        _ => return (response, Verdict::Ignored),
    };
    let name = format!(
        "{}/{}",
        req.namespace.as_deref().unwrap_or(""),
        object.metadata.name.as_deref().unwrap_or(&req.name)
    );
    let errors = match serde_json::to_value(object).and_then(serde_json::from_value::<FeatureFlag>)
    {
        Ok(flag) => checks::check(&flag.spec),
        // The schema admitted it, so this is a mismatch between the CRD and the types.
        Err(e) => vec![checks::FieldError::new("spec".into(), e.to_string())],
    };
    if errors.is_empty() {
        return (response, Verdict::Allowed);
    }
    let message = format!(
        "FeatureFlag {name} is invalid: {}",
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    );
    tracing::info!(featureflag = %name, %message, "refusing");
    let mut response = response.deny(&message);
    response.result = Status::failure(&message, "Invalid")
        .with_code(422)
        .with_details(StatusDetails {
            name: object.metadata.name.clone().unwrap_or_default(),
            group: "bulwark.dev".into(),
            kind: "FeatureFlag".into(),
            uid: String::new(),
            causes: errors
                .iter()
                .map(|e| StatusCause {
                    reason: "FieldValueInvalid".into(),
                    message: e.message.clone(),
                    field: e.field.clone(),
                })
                .collect(),
            retry_after_seconds: 0,
        });
    (response, Verdict::Denied(message))
}

/// Answers `POST /validate`.
pub async fn handle<B>(req: Request<B>) -> (Response<Full<Bytes>>, Verdict)
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match admission::read_review::<DynamicObject, B>(req).await {
        Ok(request) => {
            let (response, verdict) = review(&request);
            (admission::review_response(response), verdict)
        }
        Err((response, why)) => (response, Verdict::BadRequest(why)),
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::{Value, json};

    use super::*;

    fn review_of(kind: &str, operation: &str, object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "0d4f3c7e-1111-2222-3333-444455556666",
                "kind": {"group": "bulwark.dev", "version": "v1alpha1", "kind": kind},
                "resource": {"group": "bulwark.dev", "version": "v1alpha1", "resource": "featureflags"},
                "requestKind": {"group": "bulwark.dev", "version": "v1alpha1", "kind": kind},
                "requestResource": {"group": "bulwark.dev", "version": "v1alpha1", "resource": "featureflags"},
                "name": "flags",
                "namespace": "shop",
                "operation": operation,
                "userInfo": {"username": "ana"},
                "object": object,
                "oldObject": null,
                "dryRun": false,
                "options": null
            }
        }))
        .unwrap()
    }

    fn flag(spec: Value) -> Value {
        json!({
            "apiVersion": "bulwark.dev/v1alpha1",
            "kind": "FeatureFlag",
            "metadata": {"name": "flags", "namespace": "shop"},
            "spec": spec
        })
    }

    async fn post(body: Vec<u8>) -> (Value, Verdict) {
        let req = Request::post("/validate")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let (resp, verdict) = handle(req).await;
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            verdict,
        )
    }

    #[tokio::test]
    async fn a_flag_with_problems_is_refused_with_each_field() {
        let bad = flag(json!({"flags": {
            "beta": {"state": "ENABLED", "variants": {"on": true, "off": false},
                     "defaultVariant": "maybe",
                     "targeting": {"if": [{"$ref": "nowhere"}, "on", "off"]}}
        }}));
        let (body, verdict) = post(review_of("FeatureFlag", "CREATE", bad)).await;
        let response = &body["response"];
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 422);
        assert_eq!(response["status"]["reason"], "Invalid");
        let causes: Vec<&str> = response["status"]["details"]["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["field"].as_str().unwrap())
            .collect();
        assert_eq!(
            causes,
            [
                "spec.flags[beta].defaultVariant",
                "spec.flags[beta].targeting"
            ]
        );
        let Verdict::Denied(message) = verdict else {
            panic!("{verdict:?}")
        };
        assert!(
            message.starts_with("FeatureFlag shop/flags is invalid: spec.flags[beta].defaultVariant: \"maybe\" is not one of"),
            "{message}"
        );
        assert_eq!(response["status"]["message"], message);
    }

    #[tokio::test]
    async fn good_flags_other_kinds_and_deletes_are_allowed() {
        let good = flag(json!({"flags": {
            "beta": {"state": "ENABLED", "variants": {"on": true, "off": false},
                     "defaultVariant": "off"}
        }}));
        let (body, verdict) = post(review_of("FeatureFlag", "UPDATE", good.clone())).await;
        assert_eq!(
            (body["response"]["allowed"].clone(), verdict),
            (json!(true), Verdict::Allowed)
        );
        let (body, verdict) = post(review_of("RateLimitPolicy", "CREATE", good)).await;
        assert_eq!(
            (body["response"]["allowed"].clone(), verdict),
            (json!(true), Verdict::Ignored)
        );
        let (_, verdict) = post(b"{}".to_vec()).await;
        assert!(matches!(verdict, Verdict::BadRequest(_)), "{verdict:?}");
    }
}
