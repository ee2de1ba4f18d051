//! The policy being enforced: a snapshot compiled into runtime structures, swapped atomically.
//!
//! A new snapshot is compiled whole before it replaces the current one; if any part fails, the
//! current one stays. Counter stores live outside the compiled policy, so a reload keeps counts.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use arc_swap::ArcSwap;
use bulwark_api::snapshot::{PolicySource, RedisConnection, Snapshot};

use crate::{
    compile::CompileError,
    global::{GlobalStore, RedisTarget},
    metrics::Metrics,
    quota::engine::Quotas,
    ratelimit::{engine::RateLimits, global::FastSync},
};

/// What compiling a snapshot needs besides the snapshot: the metrics its rules resolve their
/// counters in, and the shared stores that exist (a `Global` policy without Redis is refused).
pub struct PolicyEnv {
    pub metrics: Arc<Metrics>,
    /// Redis from the sidecar's own flags; used for every snapshot when set.
    pub global: Option<GlobalStore>,
    /// Otherwise, the Redis a snapshot names (operator mode), connected on first use.
    pub from_snapshot: Option<SnapshotRedis>,
}

/// Connects the Redis that snapshots name, once per distinct connection.
pub struct SnapshotRedis {
    /// The Redis runtime, where connection tasks live.
    runtime: tokio::runtime::Handle,
    /// Fast-mode syncs follow the store in use.
    fast: Arc<FastSync>,
    connected: Mutex<Option<(RedisConnection, GlobalStore)>>,
}

impl SnapshotRedis {
    pub fn new(runtime: tokio::runtime::Handle, fast: Arc<FastSync>) -> Self {
        Self {
            runtime,
            fast,
            connected: Mutex::new(None),
        }
    }
}

impl PolicyEnv {
    /// No shared store: `Global` policies are refused.
    pub fn local_only(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics,
            global: None,
            from_snapshot: None,
        }
    }

    /// The Redis `snapshot` is compiled against: the flags' one, else the one it names.
    fn store_for(&self, snapshot: &Snapshot) -> Result<Option<GlobalStore>, String> {
        if self.global.is_some() {
            return Ok(self.global.clone());
        }
        let (Some(source), Some(wanted)) = (&self.from_snapshot, &snapshot.redis) else {
            return Ok(None);
        };
        let mut connected = source.connected.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((current, store)) = connected.as_ref()
            && current == wanted
        {
            return Ok(Some(store.clone()));
        }
        let target = RedisTarget::from(wanted);
        let _entered = source.runtime.enter();
        // The connection is lazy: an unreachable Redis is the policies' failureMode at request
        // time, not a refused snapshot. Only a malformed URL fails here (never echoed: it may
        // hold a password).
        let store = GlobalStore::connect(target, &self.metrics)
            .map_err(|_| "the Redis connection in the snapshot is not a valid Redis URL")?;
        source.fast.set_store(store.clone());
        *connected = Some((wanted.clone(), store.clone()));
        tracing::info!("connected the Redis named by the operator for Global scope");
        Ok(Some(store))
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
        let global = env.store_for(&snapshot).map_err(|e| PolicyError {
            kind: "Snapshot",
            source: PolicySource::default(),
            error: CompileError::new("redis", e),
        })?;
        let env = &PolicyEnv {
            metrics: env.metrics.clone(),
            global,
            from_snapshot: None,
        };
        let rate_limits = RateLimits::compile(&snapshot.rate_limits, &snapshot.jwt_keys, env)
            .map_err(|(source, error)| PolicyError {
                kind: "RateLimitPolicy",
                source,
                error,
            })?;
        let quotas = Quotas::compile(&snapshot.quotas, &snapshot.jwt_keys, env).map_err(
            |(source, error)| PolicyError {
                kind: "QuotaPolicy",
                source,
                error,
            },
        )?;
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
