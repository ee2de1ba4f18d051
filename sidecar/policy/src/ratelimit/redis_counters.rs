//! `scope: Global` rate limits, shared by every selected pod through Redis.
//!
//! - **Exact**: each decision is one call of `global.lua`, which runs the rule's algorithm
//!   atomically in Redis on the Redis server's clock. Never over the limit.
//! - **Fast**: decisions are local (the [`LocalStore`] counter of the same key); every
//!   `syncInterval` the sidecar pushes what it admitted to Redis with the same script in
//!   "consume" mode and takes back the global state, on top of which it re-applies what it
//!   admitted meanwhile. Between two syncs a pod does not see the others' admissions, so the
//!   workload can exceed the limit by what the other pods admit in that time (docs/rate-limits.md
//!   states the bound); each pod alone never exceeds it.
//!
//! Redis failing or slower than `timeout`: `failureMode` decides (`Open` admits, `Closed`
//! rejects); fast mode keeps deciding locally when `Open`, and rejects while the last sync
//! failed when `Closed`.

use crate::lock::lock;
use std::{
    collections::HashMap,
    sync::{
        Arc, LazyLock, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{Script, ScriptInvocation};

use super::{
    algorithm::{Algorithm, NEVER, Outcome, Rate, STATE_WORDS, State},
    store::{CounterKey, LocalStore},
};
use crate::redis_client::{CallError, RedisClient};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis_counters.lua")));

const MICROS: u64 = 1_000;

/// How a `Global` rule talks to Redis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GlobalRule {
    pub fast: bool,
    /// `Fast` only: how often local admissions are pushed.
    pub sync_interval: Duration,
    /// How long a decision (exact) or a sync (fast) may wait for Redis.
    pub timeout: Duration,
    /// `failureMode: Closed`.
    pub fail_closed: bool,
    /// Prefix of this rule's Redis keys: the key value follows it.
    pub key_prefix: String,
}

impl GlobalRule {
    pub fn redis_key(&self, key: &str) -> String {
        let mut k = String::with_capacity(self.key_prefix.len() + key.len());
        k.push_str(&self.key_prefix);
        k.push_str(key);
        k
    }
}

/// What Redis answered: the outcome, the index of the deciding rate, and the counter's state
/// for every rate after the call (in the local store's units).
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub outcome: Outcome,
    pub index: usize,
    pub states: Vec<State>,
}

fn invocation<'a>(
    redis_key: &str,
    algorithm: Algorithm,
    rates: &[Rate],
    cost: u64,
    now_micros: u64,
    consume: bool,
) -> ScriptInvocation<'a> {
    let mut inv = SCRIPT.prepare_invoke();
    inv.key(redis_key)
        .arg(match algorithm {
            Algorithm::TokenBucket => "T",
            Algorithm::SlidingWindow => "S",
            Algorithm::FixedWindow => "F",
        })
        .arg(cost)
        .arg(now_micros)
        .arg(if consume { "1" } else { "0" });
    for rate in rates {
        inv.arg(rate.limit)
            .arg(rate.window_nanos.div_ceil(MICROS).max(1))
            .arg(rate.burst);
    }
    inv
}

/// One Redis counter: its key, and the rule's algorithm and rates (for this key).
#[derive(Clone, Copy, Debug)]
pub struct Counter<'a> {
    pub redis_key: &'a str,
    pub algorithm: Algorithm,
    pub rates: &'a [Rate],
}

/// Runs the script on `counter`: decides a request of `cost`, or with `consume` spends it
/// unconditionally. `now_nanos` = `None` uses the Redis server's clock.
pub async fn call(
    store: &RedisClient,
    counter: Counter<'_>,
    cost: u64,
    now_nanos: Option<u64>,
    consume: bool,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let now_micros = now_nanos.map_or(0, |n| n / MICROS);
    let inv = invocation(
        counter.redis_key,
        counter.algorithm,
        counter.rates,
        cost,
        now_micros,
        consume,
    );
    let words: Vec<i64> = store.invoke(&inv, timeout).await?;
    parse_reply(counter.algorithm, &words).ok_or_else(|| {
        CallError::Redis((redis::ErrorKind::Parse, "unexpected script reply").into())
    })
}

fn parse_reply(algorithm: Algorithm, words: &[i64]) -> Option<Reply> {
    let (head, states) = words.split_at_checked(6)?;
    let nanos = |us: i64| u64::try_from(us).unwrap_or(0).saturating_mul(MICROS);
    let outcome = Outcome {
        allowed: head[0] == 1,
        remaining: u64::try_from(head[2]).unwrap_or(0),
        reset_nanos: nanos(head[3]),
        retry_after_nanos: if head[4] < 0 { NEVER } else { nanos(head[4]) },
    };
    let states = states
        .chunks_exact(STATE_WORDS)
        .map(|w| {
            let mut words = [0u64; STATE_WORDS];
            for (out, &v) in words.iter_mut().zip(w) {
                *out = u64::try_from(v).unwrap_or(0);
            }
            // Redis keeps TokenBucket's TAT in microseconds; window indices are the same in
            // both units because windows are whole microseconds.
            if algorithm == Algorithm::TokenBucket {
                words[0] = words[0].saturating_mul(MICROS);
            }
            State::from_words(words)
        })
        .collect();
    Some(Reply {
        outcome,
        index: usize::try_from(head[1]).unwrap_or(0),
        states,
    })
}

/// The outcome when Redis cannot answer: admitted (`Open`) or rejected (`Closed`) as if the
/// limit were reached, retrying after a second.
pub fn failure_outcome(fail_closed: bool) -> Outcome {
    Outcome {
        allowed: !fail_closed,
        remaining: 0,
        reset_nanos: 0,
        retry_after_nanos: if fail_closed { 1_000_000_000 } else { 0 },
    }
}

/// Fast-mode counters awaiting a sync. Survives reloads, like the local store.
pub struct FastSync {
    /// The Redis synced with: from the flags at start, or from the first snapshot naming one
    /// (operator mode). `None`: no fast rule can exist yet, so nothing is synced.
    store: arc_swap::ArcSwapOption<RedisClient>,
    entries: Mutex<HashMap<CounterKey, FastEntry>>,
    /// False while the last sync failed: `failureMode: Closed` rules reject meanwhile.
    healthy: AtomicBool,
}

struct FastEntry {
    redis_key: String,
    algorithm: Algorithm,
    rates: Vec<Rate>,
    rule: GlobalRule,
    /// Admitted here since the last sync was sent.
    pending: u64,
    /// Decided here since the last sync (admitted or not): the key is still in use.
    touched: bool,
    next_sync: u64,
}

impl FastSync {
    pub fn new(store: Option<RedisClient>) -> Self {
        Self {
            store: arc_swap::ArcSwapOption::from(store.map(Arc::new)),
            entries: Mutex::new(HashMap::new()),
            healthy: AtomicBool::new(true),
        }
    }

    /// Points syncs at `store` (a snapshot named a Redis).
    pub fn set_store(&self, store: RedisClient) {
        self.store.store(Some(Arc::new(store)));
    }

    /// The Redis synced with now.
    pub fn store(&self) -> Option<Arc<RedisClient>> {
        self.store.load_full()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// True when `key` was used since its last sync (or is being synced): its local view is
    /// at most one `syncInterval` old.
    pub fn is_warm(&self, key: CounterKey) -> bool {
        lock(&self.entries).contains_key(&key)
    }

    /// Records a local decision on a fast counter (`cost` = 0 when it was not admitted).
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        key: CounterKey,
        rule: &GlobalRule,
        key_value: &str,
        algorithm: Algorithm,
        rates: &[Rate],
        cost: u64,
        now: u64,
    ) {
        let mut entries = lock(&self.entries);
        let entry = entries.entry(key).or_insert_with(|| FastEntry {
            redis_key: rule.redis_key(key_value),
            algorithm,
            rates: rates.to_vec(),
            rule: rule.clone(),
            pending: 0,
            touched: false,
            // The first decision on a key syncs at once: it learns the global count.
            next_sync: now,
        });
        entry.pending = entry.pending.saturating_add(cost);
        entry.touched = true;
    }

    /// Syncs every counter whose interval has passed, concurrently; forgets counters not used
    /// since their last sync.
    pub async fn sync_due(&self, local: &LocalStore, now: u64) {
        let Some(store) = self.store.load_full() else {
            return;
        };
        let due: Vec<(CounterKey, String, Algorithm, Vec<Rate>, u64, Duration)> = {
            let mut entries = lock(&self.entries);
            entries.retain(|_, e| e.touched || e.pending > 0 || e.next_sync > now);
            entries
                .iter_mut()
                .filter(|(_, e)| e.next_sync <= now)
                .map(|(key, e)| {
                    let sent = std::mem::take(&mut e.pending);
                    e.touched = false;
                    e.next_sync = now.saturating_add(duration_nanos(e.rule.sync_interval));
                    (
                        *key,
                        e.redis_key.clone(),
                        e.algorithm,
                        e.rates.clone(),
                        sent,
                        e.rule.timeout,
                    )
                })
                .collect()
        };
        if due.is_empty() {
            return;
        }
        let calls = due
            .iter()
            .map(|(_, redis_key, algorithm, rates, sent, timeout)| {
                let counter = Counter {
                    redis_key,
                    algorithm: *algorithm,
                    rates,
                };
                call(&store, counter, *sent, Some(now), true, *timeout)
            });
        let replies = futures::future::join_all(calls).await;
        let mut healthy = true;
        let mut entries = lock(&self.entries);
        for ((key, _, algorithm, rates, sent, _), reply) in due.into_iter().zip(replies) {
            let Some(entry) = entries.get_mut(&key) else {
                continue;
            };
            match reply {
                // The global state, plus what was admitted here while Redis answered.
                Ok(reply) => {
                    local.replace(key, algorithm, &rates, &reply.states, now, entry.pending)
                }
                Err(e) => {
                    healthy = false;
                    // Not lost: sent again with the next sync.
                    entry.pending = entry.pending.saturating_add(sent);
                    tracing::debug!(error = %e, "fast rate-limit sync failed");
                }
            }
        }
        self.healthy.store(healthy, Ordering::Relaxed);
    }
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
