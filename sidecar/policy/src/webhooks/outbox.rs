//! The sidecar's outbox: what the admin API calls (accept, dead letters, replay, status) over
//! the durable store and the in-memory queues that the dispatcher ([`super::dispatch`]) works
//! through. One per process, made once in `main.rs`; the installed policy says which
//! endpoints exist.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
    time::Instant,
};

use serde::Serialize;
use tokio::sync::Notify;

use super::{
    dispatch::Transport,
    message::{InvalidMessage, NewMessage, format_id, id_time_ms},
    metrics::WebhookMetrics,
    queue::EndpointQueue,
    shared::{self, SharedAccept},
    store::{
        Accepted, Counts, DeadLetter, DeliveryState, Pending, ReplaySelector, Retention, Store,
        StoreError,
    },
};
use crate::{
    clock::unix_nanos,
    failover::breaker::{Breaker, BreakerConfig, BreakerState},
    lock::lock,
    ratelimit::algorithm,
    redis_client::RedisClient,
    runtime::Runtime,
};

/// Where the store lives and how big it may grow.
#[derive(Clone, Debug)]
pub struct OutboxConfig {
    /// `webhooks.redb` in `--state-dir`.
    pub path: PathBuf,
    /// New messages are refused (507) once the file is this large.
    pub max_bytes: u64,
    pub retention: Retention,
    /// In-flight attempts across all endpoints.
    pub max_in_flight: usize,
}

/// The breaker of an endpoint: opens when half of the last 50 attempts (at least 20) failed
/// with a network error, a timeout or a 5xx; stays open 10 s; one trial attempt closes it.
/// While open, due deliveries wait without spending an attempt of their schedule.
pub const BREAKER: BreakerConfig = BreakerConfig {
    failure_rate_percent: 50,
    slow_call_rate_percent: 0,
    slow_call_nanos: 0,
    window_size: 50,
    minimum_calls: 20,
    open_nanos: 10_000_000_000,
    half_open_calls: 1,
};

/// Why a submission was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error(transparent)]
    Invalid(#[from] InvalidMessage),
    /// 507: the store is at its limit; nothing was accepted.
    #[error("{0}")]
    Full(String),
    /// 503: the store is not open (yet), or failed; nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
}

/// An accepted message, as the API answers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedMessage {
    pub id: String,
    /// The endpoints it will be delivered to (none for a duplicate: the first one's are).
    pub endpoints: Vec<String>,
    /// The idempotency key was seen within its retention: `id` is the first message's, and
    /// nothing new will be delivered.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// An endpoint's delivery state since this sidecar started (and what the store holds).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointReport {
    pub endpoint: String,
    pub url: String,
    pub disabled: bool,
    /// `scope: Global`: the queue is shared by the endpoint's sidecars (Redis Streams).
    pub shared: bool,
    pub pending: usize,
    pub in_flight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_seconds: Option<u64>,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub dead_letters: u64,
    pub circuit_breaker: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<LastFailure>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    pub at_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    pub reason: String,
}

/// The in-memory state of one endpoint's deliveries.
pub(super) struct Lane {
    pub queue: EndpointQueue,
    pub in_flight: u32,
    pub rate: algorithm::State,
    pub breaker: Breaker,
    pub dead_letters: u64,
    pub last_failure: Option<LastFailure>,
}

impl Default for Lane {
    fn default() -> Self {
        Self {
            queue: EndpointQueue::default(),
            in_flight: 0,
            rate: algorithm::State::default(),
            breaker: Breaker::new(BREAKER),
            dead_letters: 0,
            last_failure: None,
        }
    }
}

pub struct Outbox {
    pub(super) config: OutboxConfig,
    pub(super) runtime: Arc<Runtime>,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) metrics: Arc<crate::metrics::PolicyMetrics>,
    /// Set once the store is open (the dispatcher opens it, retrying while another process
    /// holds it during an upgrade).
    pub(super) store: OnceLock<Store>,
    pub(super) lanes: Mutex<HashMap<String, Lane>>,
    /// Wakes the dispatcher: new deliveries, a finished attempt, a replay.
    pub(super) wake: Notify,
    /// This sidecar's consumer name in shared queues: the pod (host) name and a random part,
    /// unique per process.
    pub(super) consumer: String,
    ids: Mutex<ulid::Generator>,
}

impl Outbox {
    pub fn new(
        config: OutboxConfig,
        runtime: Arc<Runtime>,
        transport: Arc<dyn Transport>,
    ) -> Arc<Self> {
        let metrics = runtime.metrics.clone();
        Arc::new(Self {
            config,
            runtime,
            transport,
            metrics,
            store: OnceLock::new(),
            lanes: Mutex::default(),
            wake: Notify::new(),
            consumer: format!(
                "{}-{:08x}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "sidecar".into()),
                fastrand::u32(..)
            ),
            ids: Mutex::new(ulid::Generator::new()),
        })
    }

    pub(super) fn metrics(&self) -> &WebhookMetrics {
        &self.metrics.webhooks
    }

    fn store(&self) -> Result<&Store, AcceptError> {
        self.store.get().ok_or_else(|| {
            AcceptError::Unavailable("the webhook store is not open yet; try again".into())
        })
    }

    /// Accepts messages durably (all or none) and queues their deliveries. Returns once they
    /// are on disk.
    pub async fn accept(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AcceptedMessage>, AcceptError> {
        let started = Instant::now();
        let result = self.accept_inner(messages).await;
        let metrics = self.metrics();
        match &result {
            Ok(accepted) => {
                metrics
                    .accept_seconds
                    .observe(started.elapsed().as_secs_f64());
                for a in accepted {
                    let label = if a.duplicate { "duplicate" } else { "accepted" };
                    metrics.accepted.with_label_values(&[label]).inc();
                }
            }
            Err(e) => {
                let reason = match e {
                    AcceptError::Invalid(_) => "invalid",
                    AcceptError::Full(_) => "full",
                    AcceptError::Unavailable(_) => "unavailable",
                };
                metrics.refused.with_label_values(&[reason]).inc();
            }
        }
        result
    }

    async fn accept_inner(
        &self,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<AcceptedMessage>, AcceptError> {
        let store = self.store()?;
        let policy = self.runtime.policy();
        let now_ms = unix_nanos() / 1_000_000;
        let mut shared_endpoints: Vec<Vec<String>> = Vec::with_capacity(messages.len());
        let pending: Vec<Pending> = {
            let mut ids = lock(&self.ids);
            messages
                .into_iter()
                .map(|m| {
                    // Overflow (2^80 ids in one millisecond) borrows from the next one.
                    let id = match ids.generate() {
                        Ok(u) => u.0,
                        Err(overflow) => overflow.commit_overflow_increment().0,
                    };
                    let (shared, local): (Vec<_>, Vec<_>) = policy
                        .webhooks
                        .matching(&m.event_type)
                        .partition(|e| e.shared);
                    shared_endpoints.push(shared.iter().map(|e| e.id.clone()).collect());
                    let deliveries = local
                        .iter()
                        .map(|e| {
                            let first = e.schedule.first(fastrand::f64()).as_millis() as u64;
                            (e.id.clone(), now_ms + first)
                        })
                        .collect();
                    Pending {
                        id,
                        event_type: m.event_type,
                        payload: m.payload,
                        idempotency_key: m.idempotency_key,
                        deliveries,
                    }
                })
                .collect()
        };
        // Shared queues first: Redis being away refuses the submission before anything is
        // stored here (a message may then be in some shared queues: an idempotency key makes
        // the client's retry safe).
        let mut shared_duplicates: Vec<Option<u128>> = vec![None; pending.len()];
        if shared_endpoints.iter().any(|s| !s.is_empty()) {
            let redis = policy.redis.as_ref().ok_or_else(|| {
                AcceptError::Unavailable("no Redis for the shared webhook queue".into())
            })?;
            for ((message, endpoints), duplicate) in pending
                .iter()
                .zip(&shared_endpoints)
                .zip(shared_duplicates.iter_mut())
            {
                for endpoint in endpoints {
                    let key = message
                        .idempotency_key
                        .as_deref()
                        .map(|k| (k, self.config.retention.idempotency));
                    match shared::accept(
                        redis,
                        endpoint,
                        message.id,
                        &message.event_type,
                        &message.payload,
                        key,
                    )
                    .await
                    {
                        Ok(SharedAccept::New) => {}
                        Ok(SharedAccept::Duplicate(first)) => *duplicate = Some(first),
                        Err(e) => {
                            return Err(AcceptError::Unavailable(format!(
                                "the shared webhook queue did not take the message: {e}"
                            )));
                        }
                    }
                }
            }
        }
        let accepted = store.accept(pending.clone()).await.map_err(|e| match e {
            StoreError::Full(m) => AcceptError::Full(format!(
                "the webhook store is full ({m}); messages it holds are kept and delivered"
            )),
            StoreError::Failed(m) => AcceptError::Unavailable(m),
        })?;
        let mut answers = Vec::with_capacity(accepted.len());
        // Whether the dispatcher has anything to start: not when every endpoint the messages
        // went to is paused or at its concurrency (a finished attempt wakes it then). A wake
        // per accept with nothing to start cost ~5 µs of a pass each.
        let mut startable = false;
        {
            let mut lanes = lock(&self.lanes);
            for (((message, result), shared), shared_duplicate) in pending
                .into_iter()
                .zip(accepted)
                .zip(shared_endpoints)
                .zip(shared_duplicates)
            {
                let first = match (result, shared_duplicate) {
                    (Accepted::Duplicate(first), _) | (Accepted::New(_), Some(first)) => first,
                    (Accepted::New(id), None) => {
                        if message.deliveries.is_empty() && shared.is_empty() {
                            self.metrics().unrouted.inc();
                        }
                        // A shared queue's new entry is taken by the next poll.
                        startable |= !shared.is_empty();
                        for (endpoint, due) in &message.deliveries {
                            let lane = lanes.entry(endpoint.clone()).or_default();
                            lane.queue.push(id, *due, 0);
                            startable |= policy
                                .webhooks
                                .get(endpoint)
                                .is_some_and(|e| !e.disabled && lane.in_flight < e.max_concurrency);
                        }
                        let mut endpoints: Vec<String> =
                            message.deliveries.into_iter().map(|(e, _)| e).collect();
                        endpoints.extend(shared);
                        endpoints.sort();
                        answers.push(AcceptedMessage {
                            id: format_id(id),
                            endpoints,
                            duplicate: false,
                        });
                        continue;
                    }
                };
                answers.push(AcceptedMessage {
                    id: format_id(first),
                    endpoints: Vec::new(),
                    duplicate: true,
                });
            }
        }
        if startable {
            self.wake.notify_one();
        }
        Ok(answers)
    }

    /// An endpoint's dead letters, oldest first, after `after`, at most `limit`.
    pub async fn dead_letters(
        &self,
        endpoint: &str,
        after: Option<u128>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, AcceptError> {
        if let Some(redis) = self.shared_redis(endpoint)? {
            let letters = shared::dead_letters(&redis, endpoint, after, limit)
                .await
                .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
            return Ok(letters
                .into_iter()
                .map(|l| DeadLetter {
                    id: l.id,
                    event_type: l.event_type,
                    state: DeliveryState {
                        attempts: l.attempts,
                        next_at_ms: 0,
                        dead_at_ms: Some(l.dead_at_ms),
                        last_error: Some(l.reason),
                    },
                })
                .collect());
        }
        self.store()?
            .dead_letters(endpoint, after, limit)
            .map_err(|e| AcceptError::Unavailable(e.to_string()))
    }

    /// The Redis of `endpoint` when it is a shared one of the installed policy.
    fn shared_redis(&self, endpoint: &str) -> Result<Option<RedisClient>, AcceptError> {
        let policy = self.runtime.policy();
        if !policy.webhooks.get(endpoint).is_some_and(|e| e.shared) {
            return Ok(None);
        }
        policy
            .redis
            .clone()
            .map(Some)
            .ok_or_else(|| AcceptError::Unavailable("no Redis for the shared webhook queue".into()))
    }

    /// Delivers dead letters again (their schedule starts over); returns their ids.
    pub async fn replay(
        &self,
        endpoint: &str,
        which: ReplaySelector,
    ) -> Result<Vec<String>, AcceptError> {
        if let Some(redis) = self.shared_redis(endpoint)? {
            let ids = shared::replay(&redis, endpoint, which)
                .await
                .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
            self.wake.notify_one();
            return Ok(ids.into_iter().map(format_id).collect());
        }
        let now_ms = unix_nanos() / 1_000_000;
        let ids = self
            .store()?
            .replay(endpoint, which, now_ms)
            .await
            .map_err(|e| AcceptError::Unavailable(e.to_string()))?;
        {
            let mut lanes = lock(&self.lanes);
            let lane = lanes.entry(endpoint.to_owned()).or_default();
            for &id in &ids {
                lane.queue.push(id, now_ms, 0);
            }
            lane.dead_letters = lane.dead_letters.saturating_sub(ids.len() as u64);
        }
        self.wake.notify_one();
        Ok(ids.into_iter().map(format_id).collect())
    }

    /// A message's attempts: (endpoint, number, record).
    pub fn attempts(
        &self,
        id: u128,
    ) -> Result<Vec<(String, u32, super::store::AttemptRecord)>, AcceptError> {
        self.store()?
            .attempts(id)
            .map_err(|e| AcceptError::Unavailable(e.to_string()))
    }

    /// Each endpoint's most recent failed attempt on this sidecar (since it started).
    pub fn last_failures(&self) -> BTreeMap<String, LastFailure> {
        lock(&self.lanes)
            .iter()
            .filter_map(|(id, lane)| Some((id.clone(), lane.last_failure.clone()?)))
            .collect()
    }

    /// Each endpoint's delivery counts on this sidecar (kept across restarts), for the
    /// WebhookEndpoint's status; empty until the store is open.
    pub fn counts(&self) -> BTreeMap<String, Counts> {
        self.store
            .get()
            .and_then(|s| s.counts().ok())
            .unwrap_or_default()
    }

    pub fn is_open(&self) -> bool {
        self.store.get().is_some()
    }

    /// Every endpoint of the installed policy, and any other the store still holds work for.
    /// `delivered` and `failedAttempts` are this sidecar's counts from its store (as recorded:
    /// up to [`super::store::SYNC_EVERY`] behind); for a shared endpoint, `pending`,
    /// `deadLetters` and the oldest message are the shared queue's.
    pub async fn report(&self) -> Vec<EndpointReport> {
        let policy = self.runtime.policy();
        let now_ms = unix_nanos() / 1_000_000;
        let counts = self.counts();
        let mut shared_stats = HashMap::new();
        if let Some(redis) = &policy.redis {
            for endpoint in policy.webhooks.iter().filter(|e| e.shared) {
                if let Ok(stats) = shared::stats(redis, &endpoint.id).await {
                    shared_stats.insert(endpoint.id.clone(), stats);
                }
            }
        }
        let lanes = lock(&self.lanes);
        let mut ids: Vec<&str> = policy.webhooks.iter().map(|e| e.id.as_str()).collect();
        ids.extend(lanes.keys().map(String::as_str));
        ids.sort_unstable();
        ids.dedup();
        ids.into_iter()
            .map(|id| {
                let endpoint = policy.webhooks.get(id);
                let lane = lanes.get(id);
                let shared = shared_stats.get(id);
                let oldest = match shared {
                    Some(stats) => stats.oldest,
                    None => lane.and_then(|l| l.queue.oldest()),
                };
                EndpointReport {
                    endpoint: id.to_owned(),
                    url: endpoint.map(|e| e.url.to_string()).unwrap_or_default(),
                    disabled: endpoint.is_none_or(|e| e.disabled),
                    shared: endpoint.is_some_and(|e| e.shared),
                    pending: match shared {
                        Some(stats) => (stats.ready + stats.waiting) as usize,
                        None => lane.map_or(0, |l| l.queue.len()),
                    },
                    in_flight: lane.map_or(0, |l| l.in_flight),
                    oldest_pending_seconds: oldest
                        .map(|o| now_ms.saturating_sub(id_time_ms(o)) / 1000),
                    delivered: counts.get(id).map_or(0, |c| c.delivered),
                    failed_attempts: counts.get(id).map_or(0, |c| c.failed_attempts),
                    dead_letters: match shared {
                        Some(stats) => stats.dead,
                        None => lane.map_or(0, |l| l.dead_letters),
                    },
                    circuit_breaker: lane
                        .map_or(BreakerState::Closed, |l| l.breaker.state(unix_nanos()))
                        .as_str(),
                    last_failure: lane.and_then(|l| l.last_failure.clone()),
                }
            })
            .collect()
    }
}
