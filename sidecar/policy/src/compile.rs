//! What compiling a snapshot needs, and its errors.
//!
//! Compiling is pure: it reads the snapshot, the metrics its rules resolve their handles in,
//! the Redis client it is given and the state registry, and changes none of them. Connections,
//! fast-sync targets and the registry change only when a compiled policy is installed
//! ([`crate::runtime::Runtime::install`]), so a snapshot that fails leaves everything as it was.
//!
//! A spec that passed the apiserver can still fail here (e.g. a regular expression the engine
//! rejects, or standalone files that never met an apiserver): the error names the field so the
//! user can find it.

use std::fmt;

use bulwark_api::crd::common::Scope;

use crate::{
    matching::RegexBudget, metrics::PolicyMetrics, redis_client::RedisClient, state::StateClaims,
};

/// Compiling's environment.
pub struct CompileEnv<'a> {
    pub metrics: &'a PolicyMetrics,
    /// The Redis that `Global` policies use; without one they are refused.
    pub redis: Option<&'a RedisClient>,
    /// Long-lived state to reuse or create (the registry itself is not changed).
    pub state: StateClaims<'a>,
    /// What the snapshot's regular expressions may take together.
    pub regexes: RegexBudget,
    /// The zone this pod runs in (`--zone`), for zone-aware failover.
    pub zone: Option<&'a str>,
}

impl<'a> CompileEnv<'a> {
    /// No Redis, nothing held: for checking a snapshot alone, and tests.
    pub fn local(metrics: &'a PolicyMetrics) -> Self {
        Self {
            metrics,
            redis: None,
            state: StateClaims::fresh(),
            regexes: RegexBudget::default(),
            zone: None,
        }
    }

    /// Refuses `Global` scope without Redis, rather than silently enforcing per pod what the
    /// user declared for the whole workload.
    pub fn require_redis(&self, scope: Scope) -> Result<(), CompileError> {
        if scope == Scope::Global && self.redis.is_none() {
            return Err(CompileError::new(
                "scope",
                "Global scope needs Redis: give the operator one (chart value redis.url) or start the sidecar with --redis-url or --redis-cluster",
            ));
        }
        Ok(())
    }
}

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
