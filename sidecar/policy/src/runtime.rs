//! The policy runtime: the policy enforced now, and everything that outlives one snapshot.
//!
//! The flow is one way: a snapshot is compiled ([`Runtime::compile`], pure), then installed
//! ([`Runtime::install`]: the only step that connects a new Redis, repoints fast syncs,
//! reconciles the state registry and swaps the policy), then each request is admitted against
//! whatever is installed ([`Runtime::admit`], in [`crate::admission`]).

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, Ordering},
};

use arc_swap::ArcSwap;
use bulwark_api::snapshot::{PolicySource, RedisConnection, Snapshot};

use crate::{
    compile::{CompileEnv, CompileError},
    compiled::{CompiledPolicy, PolicyError},
    lock::lock,
    metrics::PolicyMetrics,
    quota::usage::UsageStore,
    ratelimit::{redis_counters::FastSync, store::LocalStore},
    redis_client::{RedisClient, RedisTarget},
    state::{StateClaims, StateRegistry},
};

/// Shards of the local counter store: enough that two cores rarely contend on one lock.
const COUNTER_SHARDS: usize = 64;

/// Where `Global` policies find Redis.
pub enum RedisSource {
    /// None: `Global` policies are refused.
    None,
    /// The sidecar's own flags: used for every snapshot (already started).
    Flags(RedisClient),
    /// The Redis each snapshot names (operator mode), started on `runtime` once a snapshot
    /// naming it is installed.
    FromSnapshot(tokio::runtime::Handle),
}

/// Sizes of the stores that outlive snapshots.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Local rate-limit counters held at most.
    pub max_counters: usize,
    /// Local quota usage entries held at most.
    pub max_quota_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_counters: 1_000_000,
            max_quota_keys: crate::quota::usage::DEFAULT_MAX_KEYS,
        }
    }
}

pub struct Runtime {
    current: ArcSwap<CompiledPolicy>,
    ready: AtomicBool,
    state: StateRegistry,
    redis: RedisSource,
    /// The snapshot-named Redis in use, with the connection it was made for.
    named_redis: Mutex<Option<(RedisConnection, RedisClient)>>,
    pub metrics: Arc<PolicyMetrics>,
    /// Local rate-limit counters.
    pub counters: Arc<LocalStore>,
    /// Fast-mode global counters' syncs with Redis.
    pub fast: Arc<FastSync>,
    /// Local quota usage (persisted by the flusher, reported by `/quota`).
    pub quota_usage: Arc<UsageStore>,
}

impl Runtime {
    /// Starts with an empty policy (pass-through), not ready until a first install.
    pub fn new(metrics: Arc<PolicyMetrics>, redis: RedisSource, limits: Limits) -> Self {
        let flags_redis = match &redis {
            RedisSource::Flags(client) => Some(client.clone()),
            _ => None,
        };
        Self {
            current: ArcSwap::from_pointee(CompiledPolicy::empty()),
            ready: AtomicBool::new(false),
            state: StateRegistry::default(),
            redis,
            named_redis: Mutex::new(None),
            metrics,
            counters: Arc::new(LocalStore::new(COUNTER_SHARDS, limits.max_counters)),
            fast: Arc::new(FastSync::new(flags_redis)),
            quota_usage: Arc::new(UsageStore::with_max_keys(limits.max_quota_keys)),
        }
    }

    /// No Redis, default sizes: tests and tools.
    pub fn local(metrics: Arc<PolicyMetrics>) -> Self {
        Self::new(metrics, RedisSource::None, Limits::default())
    }

    /// Marks the empty policy as the intended one (no policy source is configured).
    pub fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The policy enforced now; requests keep the one they started with.
    pub fn policy(&self) -> Arc<CompiledPolicy> {
        self.current.load_full()
    }

    /// The long-lived feature states the installed policy uses.
    pub fn state(&self) -> &StateRegistry {
        &self.state
    }

    /// Compiles `snapshot` against this runtime's Redis and state, changing neither.
    pub fn compile(&self, snapshot: Snapshot) -> Result<CompiledPolicy, PolicyError> {
        let redis = self.redis_for(&snapshot).map_err(|error| PolicyError {
            kind: "Snapshot",
            source: PolicySource::default(),
            error,
        })?;
        CompiledPolicy::compile(
            snapshot,
            CompileEnv {
                metrics: &self.metrics,
                redis: redis.as_ref(),
                state: StateClaims::new(&self.state),
            },
        )
    }

    /// The Redis `snapshot` is compiled against: the flags' one; else the one it names, the
    /// client in use if it names the same, or a new client not yet started.
    fn redis_for(&self, snapshot: &Snapshot) -> Result<Option<RedisClient>, CompileError> {
        match (&self.redis, &snapshot.redis) {
            (RedisSource::Flags(client), _) => Ok(Some(client.clone())),
            (RedisSource::FromSnapshot(_), Some(wanted)) => {
                if let Some((current, client)) = lock(&self.named_redis).as_ref()
                    && current == wanted
                {
                    return Ok(Some(client.clone()));
                }
                // An unreachable Redis is the policies' failureMode at request time, not a
                // refused snapshot; only a malformed URL fails (never echoed: it may hold a
                // password).
                RedisClient::new(RedisTarget::from(wanted), &self.metrics.stores)
                    .map(Some)
                    .map_err(|_| {
                        CompileError::new(
                            "redis",
                            "the Redis connection in the snapshot is not a valid Redis URL",
                        )
                    })
            }
            _ => Ok(None),
        }
    }

    /// Enforces `policy` from now on, and marks the sidecar ready. The only step with effects:
    /// a Redis the policy names is started and fast syncs follow it, and the state registry
    /// keeps exactly the states the policy uses.
    pub fn install(&self, policy: CompiledPolicy) {
        if let (RedisSource::FromSnapshot(runtime), Some(client), Some(connection)) =
            (&self.redis, &policy.redis, &policy.snapshot.redis)
        {
            let mut named = lock(&self.named_redis);
            if !named.as_ref().is_some_and(|(_, c)| c.same_as(client)) {
                let _entered = runtime.enter();
                client.start();
                self.fast.set_store(client.clone());
                *named = Some((connection.clone(), client.clone()));
                tracing::info!("connected the Redis named by the operator for Global scope");
            }
        }
        self.state.reconcile(&policy.state);
        self.metrics
            .snapshot_version
            .set(i64::try_from(policy.snapshot.version).unwrap_or(i64::MAX));
        self.current.store(Arc::new(policy));
        self.ready.store(true, Ordering::Release);
    }
}
