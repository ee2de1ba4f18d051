//! A snapshot compiled into the structures that decide requests.
//!
//! Compiled whole before it replaces the current one; if any part fails, nothing changes
//! (see [`crate::compile`]). What outlives a snapshot (counters, usage, the states in
//! [`crate::state`]) lives outside it.

use std::sync::Arc;

use bulwark_api::snapshot::{PolicySource, Snapshot};

use crate::{
    compile::{CompileEnv, CompileError},
    failover::Failover,
    flags::{FlagGates, FlagSet},
    quota::engine::Quotas,
    ratelimit::engine::RateLimits,
    redis_client::RedisClient,
    request::headers::ReadHeaders,
    state::StateSet,
    webhooks::Webhooks,
};

/// A snapshot and its compiled form. The compiled parts are shared (`Arc`), so a snapshot that
/// changes only endpoints reuses them as they are ([`CompiledPolicy::with_endpoints_of`]).
pub struct CompiledPolicy {
    pub snapshot: Snapshot,
    pub rate_limits: Arc<RateLimits>,
    pub quotas: Arc<Quotas>,
    pub flags: Arc<FlagSet>,
    /// What the flags do to proxied requests (gates, injected headers).
    pub flag_gates: Arc<FlagGates>,
    /// Where outbound calls go (rebuilt, not recompiled, when only endpoints change).
    pub failover: Arc<Failover>,
    /// Where the app's events are delivered.
    pub webhooks: Arc<Webhooks>,
    /// The headers the policies read: each must be sent once, and not also with `_`.
    pub read_headers: ReadHeaders,
    /// The long-lived states this policy uses (the registry holds exactly these once installed).
    pub state: StateSet,
    /// The Redis client this policy's `Global` rules use, if any.
    pub redis: Option<RedisClient>,
}

/// Why a snapshot cannot be enforced: which policy, and which field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub kind: &'static str,
    pub source: PolicySource,
    pub error: CompileError,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let PolicySource {
            namespace, name, ..
        } = &self.source;
        write!(f, "{} {namespace}/{name}: {}", self.kind, self.error)
    }
}

impl std::error::Error for PolicyError {}

impl CompiledPolicy {
    pub fn compile(snapshot: Snapshot, env: CompileEnv<'_>) -> Result<Self, PolicyError> {
        let rate_limits = RateLimits::compile(&snapshot.rate_limits, &snapshot.jwt_keys, &env)
            .map_err(|(source, error)| PolicyError {
                kind: "RateLimitPolicy",
                source,
                error,
            })?;
        let quotas = Quotas::compile(&snapshot.quotas, &snapshot.jwt_keys, &env).map_err(
            |(source, error)| PolicyError {
                kind: "QuotaPolicy",
                source,
                error,
            },
        )?;
        let flags = FlagSet::compile(&snapshot.feature_flags, &env.metrics.flags).map_err(
            |(source, error)| PolicyError {
                kind: "FeatureFlag",
                source,
                error,
            },
        )?;
        let flag_gates = FlagGates::compile(&snapshot.feature_flags, &snapshot.jwt_keys, &env)
            .map_err(|(source, error)| PolicyError {
                kind: "FeatureFlag",
                source,
                error,
            })?;
        let failover = Failover::compile(
            &snapshot.failover,
            &snapshot.endpoints,
            &snapshot.ca_bundles,
            &env,
        )
        .map_err(|(source, error)| PolicyError {
            kind: "FailoverPolicy",
            source,
            error,
        })?;
        let webhooks =
            Webhooks::compile(&snapshot.webhooks, &env).map_err(|(source, error)| PolicyError {
                kind: "WebhookEndpoint",
                source,
                error,
            })?;
        let read_headers = ReadHeaders::new(
            rate_limits
                .headers_read()
                .chain(quotas.headers_read())
                .chain(flag_gates.headers_read())
                .chain(failover.headers_read()),
        );
        Ok(Self {
            snapshot,
            rate_limits: Arc::new(rate_limits),
            quotas: Arc::new(quotas),
            flags: Arc::new(flags),
            flag_gates: Arc::new(flag_gates),
            failover: Arc::new(failover),
            webhooks: Arc::new(webhooks),
            read_headers,
            state: env.state.into_used(),
            redis: env.redis.cloned(),
        })
    }

    /// `snapshot`, whose policies are those of `self` ([`Snapshot::same_policies`]): the same
    /// compiled parts and state with the new endpoints and version, compiling nothing.
    pub fn with_endpoints_of(&self, snapshot: Snapshot) -> Self {
        debug_assert!(self.snapshot.same_policies(&snapshot));
        let failover = Arc::new(self.failover.with_endpoints(&snapshot.endpoints));
        Self {
            snapshot,
            rate_limits: self.rate_limits.clone(),
            quotas: self.quotas.clone(),
            flags: self.flags.clone(),
            flag_gates: self.flag_gates.clone(),
            failover,
            webhooks: self.webhooks.clone(),
            read_headers: self.read_headers.clone(),
            state: self.state.clone(),
            redis: self.redis.clone(),
        }
    }

    pub fn empty() -> Self {
        Self {
            snapshot: Snapshot::empty(),
            rate_limits: Arc::default(),
            quotas: Arc::default(),
            flags: Arc::default(),
            flag_gates: Arc::default(),
            failover: Arc::default(),
            webhooks: Arc::default(),
            read_headers: ReadHeaders::default(),
            state: StateSet::default(),
            redis: None,
        }
    }
}
