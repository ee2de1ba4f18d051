//! The evaluation API's unary calls over the Connect protocol with JSON (HTTP/1.1 or h2c, on the
//! same port as gRPC): `POST /flagd.evaluation.v{1,2}.Service/Resolve…` with
//! `Content-Type: application/json`, as flagd serves them (connect-go) for clients without gRPC,
//! `curl` included. Fields use proto3's JSON names (`flagKey`, `boolValue`); an int64 value is a
//! string, as proto3 JSON writes it. v1 writes zero values where v2 leaves a field out. Errors
//! are Connect's: the HTTP status of the code and `{"code", "message"}`. EventStream, a server
//! stream, uses Connect's streaming form ([`event_stream`]): `application/connect+json`, each
//! message in a 5-byte envelope (flags, big-endian length), as flagd's web provider reads it.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use prost_types::Struct;
use serde_json::{Map, Value, json};
use tonic::{Code, Status};

use super::{
    resolve::{Answer, Kind, Typed, from_struct, json_number, to_struct},
    service::EvaluationApi,
};

/// Largest request body read.
pub const MAX_BODY: usize = 1 << 20;

/// Whether `path` is a Connect call this module answers.
pub fn is_connect_call(path: &str) -> bool {
    method(path).is_some()
}

/// (version 1 or 2, the method's name) of a path such as `/flagd.evaluation.v2.Service/ResolveInt`.
fn method(path: &str) -> Option<(u8, &str)> {
    let rest = path.strip_prefix("/flagd.evaluation.v")?;
    let (version, method) = rest.split_once(".Service/")?;
    let version = match version {
        "1" => 1,
        "2" => 2,
        _ => return None,
    };
    matches!(
        method,
        "ResolveAll"
            | "ResolveBoolean"
            | "ResolveString"
            | "ResolveFloat"
            | "ResolveInt"
            | "ResolveObject"
    )
    .then_some((version, method))
}

/// Whether `path` is EventStream (either version), which Connect serves as a server stream.
pub fn is_event_stream(path: &str) -> bool {
    matches!(
        path,
        "/flagd.evaluation.v1.Service/EventStream" | "/flagd.evaluation.v2.Service/EventStream"
    )
}

/// EventStream over Connect: `provider_ready` at once, then `configuration_change` whenever the
/// flags change, each `{"type", "data"}` in an envelope; the stream ends when the client goes.
pub fn event_stream(api: &EvaluationApi) -> Response<tonic::body::Body> {
    use futures::StreamExt;
    let frames = api
        .events(|kind, data| (kind, data))
        .filter_map(|event| async move {
            let (kind, data) = event.ok()?;
            let mut message = json!({ "type": kind });
            if let Some(data) = data {
                message["data"] = Value::Object(from_struct(&data));
            }
            let frame = hyper::body::Frame::data(envelope(0, &message.to_string().into_bytes()));
            Some(Ok::<_, std::convert::Infallible>(frame))
        });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/connect+json")
        .body(tonic::body::Body::new(http_body_util::StreamBody::new(
            frames,
        )))
        .expect("a valid response")
}

/// A Connect streaming envelope: `flags`, the length (big-endian u32), the message.
fn envelope(flags: u8, message: &[u8]) -> Bytes {
    let mut framed = Vec::with_capacity(5 + message.len());
    framed.push(flags);
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(message);
    framed.into()
}

/// Answers one Connect call with a JSON body.
pub fn answer(api: &EvaluationApi, path: &str, body: &[u8]) -> Response<Bytes> {
    let Some((version, method)) = method(path) else {
        return error(&Status::unimplemented("no such method"));
    };
    let request: Map<String, Value> = match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => map,
        Ok(_) | Err(_) if body.is_empty() => Map::new(),
        _ => return error(&Status::invalid_argument("the body is not a JSON object")),
    };
    let context = match request.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(to_struct(map)),
        Some(_) => return error(&Status::invalid_argument("context must be an object")),
    };
    let key = request.get("flagKey").and_then(Value::as_str).unwrap_or("");
    let result = match method {
        "ResolveAll" => api.resolve_all(context.as_ref()).map(|all| {
            let flags: Map<String, Value> = all
                .into_iter()
                .map(|(key, answer)| (key, any_flag(version, answer)))
                .collect();
            json!({"flags": flags, "metadata": {}})
        }),
        _ => {
            let kind = match method {
                "ResolveBoolean" => Kind::Boolean,
                "ResolveString" => Kind::String,
                "ResolveFloat" => Kind::Float,
                "ResolveInt" => Kind::Int,
                _ => Kind::Object,
            };
            api.resolve(key, kind, context.as_ref())
                .map(|answer| typed(version, kind, answer))
        }
    };
    match result {
        Ok(value) => json_response(StatusCode::OK, &value),
        Err(status) => error(&status),
    }
}

fn typed(version: u8, kind: Kind, answer: Answer) -> Value {
    let mut out = Map::new();
    match (answer.value, version) {
        (Some(value), _) => {
            out.insert("value".into(), typed_json(value));
        }
        // v1 has no "unset": the zero value, as flagd writes it.
        (None, 1) => {
            let zero = match kind {
                Kind::Boolean => json!(false),
                Kind::String => json!(""),
                Kind::Float => json!(0),
                Kind::Int => json!("0"),
                Kind::Object => json!({}),
            };
            out.insert("value".into(), zero);
        }
        (None, _) => {}
    }
    out.insert("reason".into(), json!(answer.reason));
    match (answer.variant, version) {
        (Some(variant), _) => {
            out.insert("variant".into(), json!(variant));
        }
        (None, 1) => {
            out.insert("variant".into(), json!(""));
        }
        (None, _) => {}
    }
    out.insert("metadata".into(), struct_json(&answer.metadata));
    Value::Object(out)
}

fn any_flag(version: u8, answer: Answer) -> Value {
    let mut out = Map::new();
    out.insert("reason".into(), json!(answer.reason));
    if let Some(variant) = answer.variant.or((version == 1).then(String::new)) {
        out.insert("variant".into(), json!(variant));
    }
    if let Some(value) = answer.value {
        let (field, value) = match value {
            Typed::Boolean(b) => ("boolValue", json!(b)),
            Typed::String(s) => ("stringValue", json!(s)),
            Typed::Float(f) => ("doubleValue", json_number(f)),
            Typed::Int(i) => ("doubleValue", json!(i)),
            Typed::Object(o) => ("objectValue", struct_json(&o)),
        };
        out.insert(field.into(), value);
    }
    out.insert("metadata".into(), struct_json(&answer.metadata));
    Value::Object(out)
}

fn typed_json(value: Typed) -> Value {
    match value {
        Typed::Boolean(b) => json!(b),
        Typed::String(s) => json!(s),
        Typed::Float(f) => json_number(f),
        // proto3 JSON writes int64 as a string.
        Typed::Int(i) => json!(i.to_string()),
        Typed::Object(o) => struct_json(&o),
    }
}

fn struct_json(s: &Struct) -> Value {
    Value::Object(from_struct(s))
}

fn json_response(status: StatusCode, value: &Value) -> Response<Bytes> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Bytes::from(
            serde_json::to_vec(value).expect("JSON values serialise"),
        ))
        .expect("static response parts are valid")
}

/// A Connect error: the code's HTTP status, `{"code", "message"}`.
fn error(status: &Status) -> Response<Bytes> {
    let (http, code) = match status.code() {
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::InvalidArgument => (StatusCode::BAD_REQUEST, "invalid_argument"),
        Code::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "data_loss"),
        Code::Unimplemented => (StatusCode::NOT_FOUND, "unimplemented"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "resource_exhausted"),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "unknown"),
    };
    json_response(http, &json!({"code": code, "message": status.message()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_version_and_method() {
        assert_eq!(
            method("/flagd.evaluation.v2.Service/ResolveInt"),
            Some((2, "ResolveInt"))
        );
        assert_eq!(
            method("/flagd.evaluation.v1.Service/ResolveAll"),
            Some((1, "ResolveAll"))
        );
        assert_eq!(method("/flagd.evaluation.v1.Service/EventStream"), None);
        assert_eq!(method("/flagd.evaluation.v3.Service/ResolveInt"), None);
        assert_eq!(method("/other"), None);
    }
}
