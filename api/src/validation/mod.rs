//! Checking resources outside the apiserver, with its messages: [`bounds`] applies a CRD's
//! structural schema (the same schema the apiserver enforces, generated from the same types,
//! so the two cannot drift); kind-specific checks that CEL cannot express live with their kind
//! (`crd::feature_flag::checks`).

pub mod bounds;

/// A problem with one field, named by its path in the resource
/// (`spec.flags[new-checkout].defaultVariant`, as the apiserver writes paths).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: String, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}
