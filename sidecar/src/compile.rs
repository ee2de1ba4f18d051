//! Errors from compiling policy specs into runtime structures. A spec that passed the apiserver
//! can still fail here (e.g. a regular expression the engine rejects, or standalone files that
//! never met an apiserver): the error names the field so the user can find it.

use std::fmt;

/// A spec that cannot be enforced, with the field path relative to `spec`
/// (e.g. `rules[0].match.path.value`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileError {
    pub field: String,
    pub message: String,
}

impl CompileError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error, located under `prefix` (`rules[2]` + `match.path` → `rules[2].match.path`).
    pub fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spec.{}: {}", self.field, self.message)
    }
}

impl std::error::Error for CompileError {}
