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
use bulwark_api::snapshot::{AppProtocol, PolicySource, RedisConnection, Snapshot};

use crate::{
    compile::{CompileEnv, CompileError},
    compiled::{CompiledPolicy, PolicyError},
    lock::lock,
    matching::RegexBudget,
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
    /// Counts installs that changed the flags (flagd's EventStream follows it).
    flag_changes: tokio::sync::watch::Sender<u64>,
    /// The zone this pod runs in, for zone-aware failover.
    zone: Option<String>,
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
            flag_changes: tokio::sync::watch::Sender::new(0),
            zone: None,
        }
    }

    /// The zone this pod runs in (`--zone`): zone-aware upstreams prefer its endpoints.
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone.filter(|z| !z.is_empty());
        self
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

    /// The app port's protocol as the installed snapshot declares it (without cloning the
    /// policy: read on every request to the app).
    pub fn app_protocol(&self) -> Option<AppProtocol> {
        self.current.load().snapshot.app_protocol
    }

    /// Changes whenever an install changes the flags.
    pub fn flag_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.flag_changes.subscribe()
    }

    /// The long-lived feature states the installed policy uses.
    pub fn state(&self) -> &StateRegistry {
        &self.state
    }

    /// Compiles `snapshot` against this runtime's Redis and state, changing neither. A snapshot
    /// that changes only endpoints (a Service scaled, a pod moved) compiles nothing: it shares
    /// the installed policy's compiled parts and state.
    pub fn compile(&self, snapshot: Snapshot) -> Result<CompiledPolicy, PolicyError> {
        let installed = self.policy();
        if self.is_ready() && installed.snapshot.same_policies(&snapshot) {
            return Ok(installed.with_endpoints_of(snapshot));
        }
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
                regexes: RegexBudget::default(),
                zone: self.zone.as_deref(),
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
        policy.failover.prune_endpoints();
        self.metrics
            .snapshot_version
            .set(i64::try_from(policy.snapshot.version).unwrap_or(i64::MAX));
        let flags_changed = !Arc::ptr_eq(&self.current.load().flags, &policy.flags);
        self.current.store(Arc::new(policy));
        self.ready.store(true, Ordering::Release);
        if flags_changed {
            self.flag_changes.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use bulwark_api::snapshot::{SecretString, Sourced};

    use super::*;
    use crate::{admission::Direction, jwt::VerifiedTokens, request::testing::TestRequest};

    fn source(name: &str) -> PolicySource {
        PolicySource {
            namespace: "shop".into(),
            name: name.into(),
            generation: 1,
        }
    }

    fn snapshot(version: u64, redis: Option<&str>, rate_limits: &[&str]) -> Snapshot {
        Snapshot {
            version,
            redis: redis.map(|url| RedisConnection::Url(SecretString::new(url))),
            rate_limits: rate_limits
                .iter()
                .enumerate()
                .map(|(i, yaml)| Sourced {
                    source: source(&format!("p{i}")),
                    spec: serde_yaml::from_str(yaml).unwrap(),
                })
                .collect(),
            ..Snapshot::empty()
        }
    }

    const GLOBAL: &str = "
scope: Global
global: {mode: Fast}
rules: [{name: r, key: [{type: ClientIP}], rates: [{limit: 5, window: 1s}]}]
";
    const BAD_REGEX: &str = "
rules: [{name: r, match: {path: {type: RegularExpression, value: '('}}, key: [{type: ClientIP}], rates: [{limit: 5, window: 1s}]}]
";

    /// A runtime whose Redis comes from snapshots, with its connections driven by `tokio`.
    fn operator_mode(tokio: &tokio::runtime::Runtime) -> Runtime {
        Runtime::new(
            Arc::new(PolicyMetrics::unregistered()),
            RedisSource::FromSnapshot(tokio.handle().clone()),
            Limits::default(),
        )
    }

    #[test]
    fn a_snapshot_that_fails_to_compile_changes_no_connection_or_state() {
        let tokio = tokio::runtime::Runtime::new().unwrap();
        let runtime = operator_mode(&tokio);
        let good = runtime
            .compile(snapshot(1, Some("redis://127.0.0.1:1/0"), &[GLOBAL]))
            .unwrap();
        let first = good
            .redis
            .clone()
            .expect("a Global policy gets the named Redis");
        assert!(!first.is_started(), "compiling connects nothing");
        assert!(runtime.fast.store().is_none(), "nor repoints fast sync");
        runtime.install(good);
        assert!(first.is_started());
        assert!(runtime.fast.store().unwrap().same_as(&first));

        // Another Redis, and a policy that cannot compile: refused, and nothing moves.
        let bad = snapshot(2, Some("redis://127.0.0.1:2/0"), &[GLOBAL, BAD_REGEX]);
        let e = runtime.compile(bad).err().unwrap();
        assert_eq!(e.error.field, "rules[0].match.path.value");
        assert!(
            runtime.fast.store().unwrap().same_as(&first),
            "fast sync still on the first Redis"
        );
        assert_eq!(runtime.policy().snapshot.version, 1);
        // A malformed URL is refused too, naming no secret.
        let e = runtime
            .compile(snapshot(3, Some("not a url"), &[GLOBAL]))
            .err()
            .unwrap();
        assert_eq!(e.error.field, "redis");
        assert!(!e.to_string().contains("not a url"), "{e}");

        // The same Redis again is the same client; a good snapshot naming another moves to it.
        let same = runtime
            .compile(snapshot(4, Some("redis://127.0.0.1:1/0"), &[GLOBAL]))
            .unwrap();
        assert!(same.redis.as_ref().unwrap().same_as(&first));
        let moved = runtime
            .compile(snapshot(5, Some("redis://127.0.0.1:2/0"), &[GLOBAL]))
            .unwrap();
        let second = moved.redis.clone().unwrap();
        runtime.install(moved);
        assert!(runtime.fast.store().unwrap().same_as(&second));
    }

    const HMAC: &str = "a shared secret of enough length";

    fn jwt_policy(limit: u32) -> String {
        format!(
            "
jwt: {{verification: {{keySecretRef: {{name: jwt, key: key}}, algorithms: [HS256]}}}}
rules: [{{name: per-user, key: [{{type: JWTClaim, name: sub}}], rates: [{{limit: {limit}, window: 1m}}]}}]
"
        )
    }

    fn with_key(mut snapshot: Snapshot, key: &str) -> Snapshot {
        snapshot
            .jwt_keys
            .insert("shop/jwt/key".into(), SecretString::new(key));
        snapshot
    }

    fn verified_tokens(runtime: &Runtime) -> Vec<Arc<VerifiedTokens>> {
        runtime
            .state()
            .all::<VerifiedTokens>()
            .into_iter()
            .map(|(_, tokens)| tokens)
            .collect()
    }

    #[test]
    fn verified_tokens_outlive_a_policy_change_but_not_a_key_change() {
        let runtime = Runtime::local(Arc::new(PolicyMetrics::unregistered()));
        let install = |snapshot| runtime.install(runtime.compile(snapshot).unwrap());
        install(with_key(snapshot(1, None, &[&jwt_policy(10)]), HMAC));
        let exp = jsonwebtoken::get_current_timestamp() + 600;
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &serde_json::json!({"sub": "alice", "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(HMAC.as_bytes()),
        )
        .unwrap();
        let request = TestRequest::new("/").header("authorization", &format!("Bearer {token}"));
        let admit =
            || futures::executor::block_on(runtime.admit(Direction::Inbound, &request.view(), 0));
        assert!(admit().reply.is_none());
        let [tokens] = verified_tokens(&runtime).try_into().ok().unwrap();
        assert_eq!(tokens.len(), 1);

        // The limit changes, the key does not: the same cache, the token still remembered.
        install(with_key(snapshot(2, None, &[&jwt_policy(20)]), HMAC));
        let [kept] = verified_tokens(&runtime).try_into().ok().unwrap();
        assert!(Arc::ptr_eq(&tokens, &kept));
        assert_eq!(kept.len(), 1);

        // A new key: tokens verified with the old one are forgotten.
        install(with_key(
            snapshot(3, None, &[&jwt_policy(20)]),
            "another secret of enough length",
        ));
        let [fresh] = verified_tokens(&runtime).try_into().ok().unwrap();
        assert!(fresh.is_empty());
        // And a snapshot without the policy drops the state.
        install(snapshot(4, None, &[]));
        assert!(runtime.state().is_empty());
    }

    #[test]
    fn an_endpoint_only_change_compiles_nothing_and_keeps_everything() {
        let runtime = Runtime::local(Arc::new(PolicyMetrics::unregistered()));
        let install = |snapshot| runtime.install(runtime.compile(snapshot).unwrap());
        install(with_key(snapshot(1, None, &[&jwt_policy(10)]), HMAC));
        let before = runtime.policy();
        let mut scaled = before.snapshot.clone();
        scaled.version = 2;
        scaled.endpoints.insert(
            "shop/payments:80".into(),
            vec![bulwark_api::snapshot::Endpoint {
                address: "10.0.0.7:8080".into(),
                zone: Some("eu-west-1a".into()),
                node_name: None,
            }],
        );
        install(scaled.clone());
        let after = runtime.policy();
        assert_eq!(
            after.snapshot, scaled,
            "the new endpoints and version are installed"
        );
        assert!(
            Arc::ptr_eq(&before.rate_limits, &after.rate_limits),
            "not recompiled"
        );
        assert_eq!(verified_tokens(&runtime).len(), 1, "state kept");
        // A policy change compiles again.
        install(with_key(snapshot(3, None, &[&jwt_policy(20)]), HMAC));
        assert!(!Arc::ptr_eq(
            &after.rate_limits,
            &runtime.policy().rate_limits
        ));
    }
}
