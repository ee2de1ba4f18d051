//! Typed resolution as flagd's evaluation API answers it: a flag evaluated by the policy crate,
//! then checked against the type the call asked for (`ResolveBoolean` of a string flag is
//! `TYPE_MISMATCH`), with flagd's gRPC status per error code. Values cross as protobuf
//! `Struct`s.

use bulwark_policy::flags::{ErrorCode, FlagSet, Resolution};
use prost_types::{ListValue, Struct, value::Kind as ProtoKind};
use serde_json::{Map, Number, Value};
use tonic::{Code, Status};

/// The type a call resolves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Boolean,
    String,
    Float,
    Int,
    Object,
}

impl Kind {
    /// The evaluation API's method for this type.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Boolean => "ResolveBoolean",
            Kind::String => "ResolveString",
            Kind::Float => "ResolveFloat",
            Kind::Int => "ResolveInt",
            Kind::Object => "ResolveObject",
        }
    }
}

/// A typed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Typed {
    Boolean(bool),
    String(String),
    Float(f64),
    Int(i64),
    Object(Struct),
}

/// A successful typed resolution. `value` and `variant` are absent for DISABLED, as flagd.
#[derive(Clone, Debug, PartialEq)]
pub struct Answer {
    pub value: Option<Typed>,
    pub reason: &'static str,
    pub variant: Option<String>,
    pub metadata: Struct,
}

/// Resolves `key` as `kind` for `context` at `now` (Unix seconds).
pub fn resolve(
    flags: &FlagSet,
    key: &str,
    kind: Kind,
    context: Option<&Struct>,
    now: i64,
) -> Result<Answer, Status> {
    let resolved = flags
        .evaluate_json(Some(key), &context_json(context), now)
        .ok_or_else(|| Status::invalid_argument("the context is not an object"))?;
    match resolved.into_iter().next() {
        Some((_, resolution)) => typed(resolution, kind),
        None => Err(status(
            ErrorCode::FlagNotFound,
            &format!("flag {key:?} not found"),
        )),
    }
}

/// Every flag, each resolved as its own type. Flags without a value (errors, DISABLED) are left
/// out: `AnyFlag` cannot carry them.
pub fn resolve_all(
    flags: &FlagSet,
    context: Option<&Struct>,
    now: i64,
) -> Result<Vec<(String, Answer)>, Status> {
    let resolved = flags
        .evaluate_json(None, &context_json(context), now)
        .ok_or_else(|| Status::invalid_argument("the context is not an object"))?;
    Ok(resolved
        .into_iter()
        .filter_map(|(flag, resolution)| {
            let kind = resolution.value.map(kind_of)?;
            typed(resolution, kind).ok().map(|a| (flag.key.clone(), a))
        })
        .collect())
}

fn kind_of(value: &Value) -> Kind {
    match value {
        Value::Bool(_) => Kind::Boolean,
        Value::String(_) => Kind::String,
        Value::Number(_) => Kind::Float,
        _ => Kind::Object,
    }
}

fn context_json(context: Option<&Struct>) -> String {
    context.map_or_else(
        || "{}".to_owned(),
        |c| Value::Object(from_struct(c)).to_string(),
    )
}

fn typed(resolution: Resolution<'_>, kind: Kind) -> Result<Answer, Status> {
    if let Some((code, message)) = &resolution.error {
        return Err(status(*code, message));
    }
    let value = match resolution.value {
        None => None,
        Some(value) => Some(match (kind, value) {
            (Kind::Boolean, Value::Bool(b)) => Typed::Boolean(*b),
            (Kind::String, Value::String(s)) => Typed::String(s.clone()),
            (Kind::Float, Value::Number(n)) => Typed::Float(n.as_f64().unwrap_or_default()),
            // flagd's ResolveInt: int64(float64), truncating.
            (Kind::Int, Value::Number(n)) => Typed::Int(n.as_f64().unwrap_or_default() as i64),
            (Kind::Object, Value::Object(map)) => Typed::Object(to_struct(map)),
            _ => {
                return Err(status(
                    ErrorCode::TypeMismatch,
                    &format!("the flag's value is not of the {kind:?} type asked for"),
                ));
            }
        }),
    };
    Ok(Answer {
        value,
        reason: resolution.reason.as_str(),
        variant: resolution.variant.map(str::to_owned),
        metadata: to_struct(resolution.metadata),
    })
}

/// flagd's gRPC status for an error code (`flag_evaluator.go`): FLAG_NOT_FOUND NotFound,
/// TYPE_MISMATCH InvalidArgument, PARSE_ERROR DataLoss, anything else Unknown.
fn status(code: ErrorCode, message: &str) -> Status {
    let grpc = match code {
        ErrorCode::FlagNotFound => Code::NotFound,
        ErrorCode::TypeMismatch | ErrorCode::InvalidContext => Code::InvalidArgument,
        ErrorCode::ParseError => Code::DataLoss,
        ErrorCode::General => Code::Unknown,
    };
    Status::new(grpc, format!("{}: {message}", code.as_str()))
}

pub fn to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), to_proto(v))).collect(),
    }
}

fn to_proto(value: &Value) -> prost_types::Value {
    let kind = match value {
        Value::Null => ProtoKind::NullValue(0),
        Value::Bool(b) => ProtoKind::BoolValue(*b),
        Value::Number(n) => ProtoKind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => ProtoKind::StringValue(s.clone()),
        Value::Array(items) => ProtoKind::ListValue(ListValue {
            values: items.iter().map(to_proto).collect(),
        }),
        Value::Object(map) => ProtoKind::StructValue(to_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

pub fn from_struct(s: &Struct) -> Map<String, Value> {
    s.fields
        .iter()
        .map(|(k, v)| (k.clone(), from_proto(v)))
        .collect()
}

fn from_proto(value: &prost_types::Value) -> Value {
    match &value.kind {
        None | Some(ProtoKind::NullValue(_)) => Value::Null,
        Some(ProtoKind::BoolValue(b)) => Value::Bool(*b),
        Some(ProtoKind::NumberValue(n)) => json_number(*n),
        Some(ProtoKind::StringValue(s)) => Value::String(s.clone()),
        Some(ProtoKind::ListValue(list)) => {
            Value::Array(list.values.iter().map(from_proto).collect())
        }
        Some(ProtoKind::StructValue(s)) => Value::Object(from_struct(s)),
    }
}

/// A protobuf number (always a double) as JSON: a whole number as an integer (`3`, not `3.0`),
/// as Go's encoders print it and as a JSON client most likely sent it.
pub fn json_number(n: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: larger doubles are not exact integers
    if n.fract() == 0.0 && n.abs() < EXACT {
        Value::Number(Number::from(n as i64))
    } else {
        Number::from_f64(n).map_or(Value::Null, Value::Number)
    }
}
