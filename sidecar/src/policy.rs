//! The policy being enforced: a snapshot compiled into runtime structures, swapped atomically.
//!
//! A new snapshot is compiled whole before it replaces the current one; if any part fails, the
//! current one stays. Counter stores live outside the compiled policy, so a reload keeps counts.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use arc_swap::ArcSwap;
use bulwark_api::snapshot::{PolicySource, Snapshot};

use crate::{
    compile::CompileError, global::GlobalStore, metrics::Metrics, quota::engine::Quotas,
    ratelimit::engine::RateLimits,
};

/// What compiling a snapshot needs besides the snapshot: the metrics its rules resolve their
/// counters in, and the shared stores that exist (a `Global` policy without Redis is refused).
pub struct PolicyEnv {
    pub metrics: Arc<Metrics>,
    pub global: Option<GlobalStore>,
}

impl PolicyEnv {
    /// No shared store: `Global` policies are refused.
    pub fn local_only(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            global: None,
        }
    }
}

/// A snapshot and its compiled form.
pub struct CompiledPolicy {
    pub snapshot: Snapshot,
    pub rate_limits: RateLimits,
    pub quotas: Quotas,
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
        write!(
            f,
            "{} {}/{}: {}",
            self.kind, self.source.namespace, self.source.name, self.error
        )
    }
}

impl std::error::Error for PolicyError {}

impl CompiledPolicy {
    pub fn compile(snapshot: Snapshot, env: &PolicyEnv) -> Result<Self, PolicyError> {
        let rate_limits =
            RateLimits::compile(&snapshot.rate_limits, env).map_err(|(source, error)| {
                PolicyError {
                    kind: "RateLimitPolicy",
                    source,
                    error,
                }
            })?;
        let quotas =
            Quotas::compile(&snapshot.quotas, env).map_err(|(source, error)| PolicyError {
                kind: "QuotaPolicy",
                source,
                error,
            })?;
        for (kind, count) in [
            ("FeatureFlag", snapshot.feature_flags.len()),
            ("FailoverPolicy", snapshot.failover.len()),
            ("WebhookEndpoint", snapshot.webhooks.len()),
        ] {
            if count > 0 {
                tracing::warn!(
                    kind,
                    count,
                    "policies of this kind are accepted but not enforced by this sidecar version"
                );
            }
        }
        Ok(Self {
            snapshot,
            rate_limits,
            quotas,
        })
    }

    pub fn empty() -> Self {
        Self {
            snapshot: Snapshot::empty(),
            rate_limits: RateLimits::default(),
            quotas: Quotas::default(),
        }
    }
}

/// The current policy, read lock-free on every request.
pub struct ActivePolicy {
    current: ArcSwap<CompiledPolicy>,
    ready: AtomicBool,
}

impl ActivePolicy {
    /// Starts empty (pass-through); `ready` says whether that is the intended state (no policy
    /// source configured) or the sidecar still waits for its first snapshot.
    pub fn new(ready: bool) -> Self {
        Self {
            current: ArcSwap::from_pointee(CompiledPolicy::empty()),
            ready: AtomicBool::new(ready),
        }
    }

    pub fn load(&self) -> Arc<CompiledPolicy> {
        self.current.load_full()
    }

    /// Installs `policy` and marks the sidecar ready.
    pub fn install(&self, policy: CompiledPolicy, metrics: &Metrics) {
        metrics
            .snapshot_version
            .set(i64::try_from(policy.snapshot.version).unwrap_or(i64::MAX));
        self.current.store(Arc::new(policy));
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }
}
