//! Evaluating a compiled flag against a context, with flagd's results: value, variant, reason,
//! error code and metadata (flagd v0.16.0, `core/pkg/evaluator/json.go`).

use datalogic_rs::{
    DataValue,
    bumpalo::{self, Bump},
    datavalue::NumberValue,
};
use serde_json::{Map, Value};

use super::{
    compile::{CompiledFlag, Targeting},
    go_text,
    operators::ENGINE,
};

/// Why a flag has its value (OpenFeature's reasons, as flagd gives them; flagd never answers
/// `SPLIT`: a `fractional` pick is a `TARGETING_MATCH`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Static,
    TargetingMatch,
    Default,
    Disabled,
    Error,
}

impl Reason {
    /// How many reasons there are (`reason as usize` is below it).
    pub const COUNT: usize = 5;

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Static => "STATIC",
            Reason::TargetingMatch => "TARGETING_MATCH",
            Reason::Default => "DEFAULT",
            Reason::Disabled => "DISABLED",
            Reason::Error => "ERROR",
        }
    }
}

/// OpenFeature error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TypeMismatch,
    InvalidContext,
    General,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TypeMismatch => "TYPE_MISMATCH",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// One evaluation's result; borrows the compiled flag.
#[derive(Debug, PartialEq)]
pub struct Resolution<'f> {
    pub reason: Reason,
    /// Absent for `DISABLED` and errors, as in flagd.
    pub variant: Option<&'f str>,
    pub value: Option<&'f Value>,
    pub error: Option<(ErrorCode, String)>,
    pub metadata: &'f Map<String, Value>,
}

/// An evaluation context: a JSON object's entries, held in an arena.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    entries: &'a [(&'a str, DataValue<'a>)],
}

impl<'a> Context<'a> {
    pub fn empty() -> Self {
        Self { entries: &[] }
    }

    /// A context of these entries.
    pub fn from_entries(entries: &'a [(&'a str, DataValue<'a>)]) -> Self {
        Self { entries }
    }

    /// `value` as a context: it must be an object.
    pub fn from_value(value: &DataValue<'a>) -> Option<Self> {
        value.as_object().map(|entries| Self { entries })
    }

    /// Parses a JSON object.
    pub fn parse(json: &'a str, arena: &'a Bump) -> Option<Self> {
        let value = DataValue::from_str(json, arena).ok()?;
        value.as_object().map(|entries| Self { entries })
    }

    /// The context with `key` set to `value` (replacing a given one).
    pub fn with(self, key: &'a str, value: DataValue<'a>, arena: &'a Bump) -> Self {
        let mut entries =
            bumpalo::collections::Vec::with_capacity_in(self.entries.len() + 1, arena);
        entries.extend(self.entries.iter().filter(|(k, _)| *k != key).cloned());
        entries.push((key, value));
        Self {
            entries: entries.into_bump_slice(),
        }
    }
}

impl CompiledFlag {
    /// Evaluates the flag for `context` at `now` (Unix seconds, `$flagd.timestamp`).
    pub fn evaluate<'f, 'a>(
        &'f self,
        context: Context<'a>,
        arena: &'a Bump,
        now: i64,
    ) -> Resolution<'f> {
        if !self.enabled {
            return self.resolution(Reason::Disabled, None);
        }
        let rule = match &self.targeting {
            Targeting::None => return self.default_variant(Reason::Static),
            Targeting::Invalid(why) => return self.error(ErrorCode::ParseError, why.clone()),
            Targeting::Rule(rule) => rule,
        };
        // flagd replaces any caller-given `$flagd` with its own.
        let flagd = DataValue::Object(arena.alloc_slice_fill_iter([
            ("flagKey", DataValue::String(arena.alloc_str(&self.key))),
            ("timestamp", DataValue::Number(NumberValue::Integer(now))),
        ]));
        let root = context.with("$flagd", flagd, arena);
        match ENGINE.evaluate(rule, DataValue::Object(root.entries), arena) {
            Err(e) => self.error(ErrorCode::ParseError, e.to_string()),
            Ok(result) => match go_text::variant_name(result) {
                None => self.default_variant(Reason::Default),
                Some(name) => match self.variants.get_key_value(&*name) {
                    Some((variant, value)) => Resolution {
                        variant: Some(variant),
                        value: Some(value),
                        ..self.resolution(Reason::TargetingMatch, None)
                    },
                    None => self.error(
                        ErrorCode::General,
                        format!(
                            "flag {:?}: targeting returned {name:?}, which is not a variant",
                            self.key
                        ),
                    ),
                },
            },
        }
    }

    fn default_variant(&self, reason: Reason) -> Resolution<'_> {
        let (variant, value) = self
            .variants
            .get_key_value(&self.default_variant)
            .expect("the default variant is a variant (checked when compiled)");
        Resolution {
            variant: Some(variant),
            value: Some(value),
            ..self.resolution(reason, None)
        }
    }

    fn error(&self, code: ErrorCode, message: String) -> Resolution<'_> {
        self.resolution(Reason::Error, Some((code, message)))
    }

    fn resolution(&self, reason: Reason, error: Option<(ErrorCode, String)>) -> Resolution<'_> {
        Resolution {
            reason,
            variant: None,
            value: None,
            error,
            metadata: &self.metadata,
        }
    }
}
