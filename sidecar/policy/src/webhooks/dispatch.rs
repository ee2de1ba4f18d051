//! The dispatcher: one background task that opens the store, resumes what it held, and starts
//! each due delivery's attempt within its endpoint's limits (concurrency, rate, circuit
//! breaker, and the process-wide in-flight bound); each attempt signs, sends through the
//! [`Transport`], decides what comes next ([`super::retry`]) and records it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use http::{HeaderMap, HeaderName, HeaderValue, header};

use super::{
    endpoint::Endpoint,
    message::{format_id, id_time_ms},
    outbox::{LastFailure, Outbox},
    retry::{AttemptResult, FailureKind, Next},
    shared::{self, Settle, Taken},
    signature,
    store::{AfterAttempt, AttemptDone, AttemptRecord, Counts, Store},
};
use crate::{
    clock::unix_nanos,
    lock::lock,
    ratelimit::algorithm::{self, Algorithm, Rate},
    redis_client::RedisClient,
    task::{BackgroundTask, Shutdown},
};

/// What a transport got for one attempt.
#[derive(Clone, Debug)]
pub struct Sent {
    pub result: AttemptResult,
    /// The start of the response body, for the attempt record.
    pub excerpt: Option<String>,
}

/// Sends one attempt: a POST of `body` with `headers` to the endpoint's URL, honouring its
/// network rules (the SSRF guard, redirects). The caller bounds the time.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    async fn post(&self, endpoint: &Endpoint, headers: HeaderMap, body: Vec<u8>) -> Sent;
}

/// How often a sidecar looks for work in the shared queues when it is not woken.
const SHARED_POLL: Duration = Duration::from_millis(100);
/// How often retention runs.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// How often the queue gauges are set (they are read by scrapes, seconds apart; setting them on
/// every pass cost each accept a pass's worth of label lookups).
const GAUGES_EVERY: Duration = Duration::from_millis(500);
/// How long shutdown waits for attempts in flight to finish (their results are then made
/// durable; an attempt cut off is made again after restart).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Runs the outbox's deliveries (a [`BackgroundTask`]).
pub struct Dispatcher(pub Arc<Outbox>);

#[async_trait]
impl BackgroundTask for Dispatcher {
    async fn run(&self, mut shutdown: Shutdown) {
        let outbox = &self.0;
        let Some(store) = open(outbox, &mut shutdown).await else {
            return;
        };
        let mut next_sweep = Instant::now();
        let mut next_gauges = Instant::now();
        loop {
            if Instant::now() >= next_sweep {
                next_sweep = Instant::now() + SWEEP_EVERY;
                sweep(outbox, &store).await;
            }
            if Instant::now() >= next_gauges {
                next_gauges = Instant::now() + GAUGES_EVERY;
                set_gauges(outbox);
            }
            let mut wait = start_due(outbox);
            if poll_shared(outbox).await {
                // Shared queues are polled: other sidecars add work this one is not told of.
                wait = wait.min(SHARED_POLL);
            }
            tokio::select! {
                _ = outbox.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => break,
            }
        }
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while in_flight(outbox) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = store.flush().await {
            tracing::warn!(error = %e, "webhook store: the last results were not made durable");
        }
    }
}

/// Opens the store, retrying while another process holds it (the old sidecar during an
/// upgrade), and queues what it held.
async fn open(outbox: &Arc<Outbox>, shutdown: &mut Shutdown) -> Option<Store> {
    let config = &outbox.config;
    let mut logged = false;
    loop {
        match Store::open(&config.path, config.max_bytes, config.retention) {
            Ok((store, recovered)) => {
                let pending = recovered.pending.len();
                {
                    let mut lanes = lock(&outbox.lanes);
                    for due in recovered.pending {
                        lanes.entry(due.endpoint).or_default().queue.push(
                            due.id,
                            due.due_ms,
                            due.attempts,
                        );
                    }
                    for (endpoint, dead) in recovered.dead {
                        lanes.entry(endpoint).or_default().dead_letters = dead;
                    }
                }
                tracing::info!(pending, path = %config.path.display(), "webhook store open");
                let _ = outbox.store.set(store.clone());
                return Some(store);
            }
            Err(e) => {
                if !logged {
                    tracing::warn!(error = %e, "cannot open the webhook store yet; retrying");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.changed() => return None,
        }
    }
}

async fn sweep(outbox: &Outbox, store: &Store) {
    match store.sweep(unix_nanos() / 1_000_000).await {
        Ok(counts) if counts.dead_letters > 0 => {
            // Which endpoints' letters went is not tracked per endpoint: count again.
            let dead = store.dead_counts().unwrap_or_default();
            let mut lanes = lock(&outbox.lanes);
            for (id, lane) in lanes.iter_mut() {
                lane.dead_letters = dead.get(id).copied().unwrap_or(0);
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "webhook store retention sweep failed"),
    }
}

fn in_flight(outbox: &Outbox) -> u32 {
    lock(&outbox.lanes).values().map(|l| l.in_flight).sum()
}

/// Sets each endpoint's queue gauges: depth, oldest pending, dead letters, breaker state.
fn set_gauges(outbox: &Outbox) {
    let now = unix_nanos();
    let now_ms = now / 1_000_000;
    let metrics = outbox.metrics();
    for (id, lane) in lock(&outbox.lanes).iter() {
        metrics
            .queue_depth
            .with_label_values(&[id])
            .set(lane.queue.len() as i64);
        metrics.oldest_pending_seconds.with_label_values(&[id]).set(
            lane.queue
                .oldest()
                .map_or(0, |o| now_ms.saturating_sub(id_time_ms(o)) / 1000) as i64,
        );
        metrics
            .dead_letters
            .with_label_values(&[id])
            .set(lane.dead_letters as i64);
        metrics
            .breaker_state
            .with_label_values(&[id])
            .set(lane.breaker.state(now).gauge_value());
    }
}

/// Starts every attempt that is due and allowed; returns how long until one may be.
fn start_due(outbox: &Arc<Outbox>) -> Duration {
    let policy = outbox.runtime.policy();
    let now = unix_nanos();
    let now_ms = now / 1_000_000;
    let mut wait_ms: u64 = 1_000;
    let mut lanes = lock(&outbox.lanes);
    let mut total: usize = lanes.values().map(|l| l.in_flight as usize).sum();
    for (id, lane) in lanes.iter_mut() {
        // An endpoint no longer in the policy, or disabled: its deliveries wait.
        let Some(endpoint) = policy.webhooks.get(id) else {
            continue;
        };
        if endpoint.disabled || endpoint.shared {
            continue;
        }
        while lane.in_flight < endpoint.max_concurrency && total < outbox.config.max_in_flight {
            if endpoint.ordered && lane.in_flight > 0 {
                break;
            }
            let Some(head) = lane.queue.head(endpoint.ordered) else {
                break;
            };
            if head.due_ms > now_ms {
                wait_ms = wait_ms.min(head.due_ms - now_ms);
                break;
            }
            if let Some(per_second) = endpoint.rate_per_second {
                let (outcome, state) = algorithm::decide(
                    Algorithm::TokenBucket,
                    per_second_rate(per_second),
                    lane.rate,
                    now,
                    1,
                );
                if !outcome.allowed {
                    wait_ms = wait_ms.min(outcome.retry_after_nanos / 1_000_000 + 1);
                    break;
                }
                lane.rate = state;
            }
            if lane.breaker.try_acquire(now).is_err() {
                wait_ms = wait_ms.min(250);
                break;
            }
            lane.queue.remove(head.id);
            lane.in_flight += 1;
            total += 1;
            tokio::spawn(attempt(
                outbox.clone(),
                endpoint.clone(),
                head.id,
                head.attempts + 1,
            ));
        }
    }
    Duration::from_millis(wait_ms.max(1))
}

/// One attempt of delivering message `id` to `endpoint`; `number` is 1 for the first.
async fn attempt(outbox: Arc<Outbox>, endpoint: Arc<Endpoint>, id: u128, number: u32) {
    let Some(store) = outbox.store.get() else {
        return;
    };
    let message = match store.message(id) {
        Ok(Some(message)) => message,
        Ok(None) => {
            // Swept (retention) or never stored: nothing to deliver.
            if let Some(lane) = lock(&outbox.lanes).get_mut(&endpoint.id) {
                lane.in_flight -= 1;
                lane.breaker.release();
            }
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook store read failed; retrying the delivery in 1 s");
            let mut lanes = lock(&outbox.lanes);
            if let Some(lane) = lanes.get_mut(&endpoint.id) {
                lane.in_flight -= 1;
                lane.breaker.release();
                lane.queue
                    .push(id, unix_nanos() / 1_000_000 + 1_000, number - 1);
            }
            return;
        }
    };
    let done = perform(&outbox, &endpoint, id, number, message.payload).await;
    if let AfterAttempt::Retry { at_ms } = &done.after
        && let Some(lane) = lock(&outbox.lanes).get_mut(&endpoint.id)
    {
        lane.queue.push(id, *at_ms, number);
    }
    store.record(done);
    outbox.wake.notify_one();
}

/// One attempt of a shared endpoint's entry, settled in its Redis queue.
async fn attempt_shared(
    outbox: Arc<Outbox>,
    endpoint: Arc<Endpoint>,
    redis: RedisClient,
    taken: Taken,
) {
    let number = taken.attempts + 1;
    let done = perform(&outbox, &endpoint, taken.id, number, taken.payload.clone()).await;
    let settle = match &done.after {
        AfterAttempt::Delivered => Settle::Delivered,
        AfterAttempt::Retry { at_ms } => Settle::Retry { at_ms: *at_ms },
        AfterAttempt::Dead { reason } => Settle::Dead { reason },
    };
    match shared::settle(
        &redis,
        &endpoint.id,
        &taken,
        number,
        settle,
        done.record.at_ms,
    )
    .await
    {
        Ok(true) => {
            if let Some(store) = outbox.store.get() {
                store.count(&endpoint.id, Counts::of(&done.after));
            }
        }
        // Taken over by another sidecar (this attempt outlasted the idle bound): it settles.
        Ok(false) => {}
        // Left in this consumer's pending list: another sidecar (or this one) takes it again
        // once it has been idle long enough, and attempts it again (at least once).
        Err(e) => {
            tracing::warn!(endpoint = %endpoint.id, error = %e, "cannot settle a shared webhook delivery")
        }
    }
    outbox.wake.notify_one();
}

/// Signs and sends one attempt, decides what comes next, and updates the endpoint's lane
/// (in-flight count, breaker, last failure) and metrics; the caller records the result.
async fn perform(
    outbox: &Outbox,
    endpoint: &Endpoint,
    id: u128,
    number: u32,
    payload: Vec<u8>,
) -> AttemptDone {
    let webhook_id = format_id(id);
    let timestamp = (unix_nanos() / 1_000_000_000) as i64;
    let headers = headers(endpoint, &webhook_id, timestamp, &payload);
    let started = Instant::now();
    let sent = match tokio::time::timeout(
        endpoint.timeout,
        outbox.transport.post(endpoint, headers, payload),
    )
    .await
    {
        Ok(sent) => sent,
        Err(_) => Sent {
            result: AttemptResult::Failed {
                kind: FailureKind::Timeout,
                detail: format!("no response within {:?}", endpoint.timeout),
            },
            excerpt: None,
        },
    };
    let latency = started.elapsed();
    let now = unix_nanos();
    let now_ms = now / 1_000_000;
    let age = Duration::from_millis(now_ms.saturating_sub(id_time_ms(id)));
    let next = endpoint
        .schedule
        .next(number, &sent.result, age, fastrand::f64());

    let metrics = outbox.metrics();
    let label = [endpoint.id.as_str()];
    metrics
        .attempts
        .with_label_values(&[endpoint.id.as_str(), sent.result.label()])
        .inc();
    metrics
        .attempt_seconds
        .with_label_values(&label)
        .observe(latency.as_secs_f64());
    let status = match &sent.result {
        AttemptResult::Response { status, .. } => Some(*status),
        AttemptResult::Failed { .. } => None,
    };
    let after = match next {
        Next::Delivered => {
            metrics
                .deliveries
                .with_label_values(&[endpoint.id.as_str(), "delivered"])
                .inc();
            AfterAttempt::Delivered
        }
        Next::RetryAfter(delay) => {
            metrics.retries.with_label_values(&label).inc();
            AfterAttempt::Retry {
                at_ms: now_ms + delay.as_millis() as u64,
            }
        }
        Next::DeadLetter(reason) => {
            metrics
                .deliveries
                .with_label_values(&[endpoint.id.as_str(), "dead_lettered"])
                .inc();
            tracing::warn!(endpoint = %endpoint.id, id = %webhook_id, %reason, "webhook message dead-lettered");
            AfterAttempt::Dead { reason }
        }
    };
    {
        let mut lanes = lock(&outbox.lanes);
        let lane = lanes.entry(endpoint.id.clone()).or_default();
        lane.in_flight -= 1;
        // The breaker judges the receiver's health: refusals and 4xx say nothing about it.
        let unhealthy = match &sent.result {
            AttemptResult::Response { status, .. } => *status >= 500,
            AttemptResult::Failed { kind, .. } => *kind != FailureKind::Refused,
        };
        lane.breaker
            .record(unhealthy, latency.as_nanos() as u64, now);
        if matches!(after, AfterAttempt::Dead { .. }) && !endpoint.shared {
            lane.dead_letters += 1;
        }
        if !sent.result.is_success() {
            lane.last_failure = Some(LastFailure {
                at_unix_ms: now_ms,
                status,
                reason: sent.result.describe(),
            });
        }
    }
    AttemptDone {
        id,
        endpoint: endpoint.id.clone(),
        number,
        record: AttemptRecord {
            at_ms: now_ms,
            result: sent.result.label().to_owned(),
            status,
            latency_ms: latency.as_secs_f64() * 1000.0,
            error: (!sent.result.is_success()).then(|| sent.result.describe()),
            response: sent.excerpt,
        },
        after,
    }
}

/// Takes work from the shared queues of `scope: Global` endpoints, as much as each endpoint's
/// free slots (concurrency, rate, breaker) allow; returns whether there is any such endpoint.
async fn poll_shared(outbox: &Arc<Outbox>) -> bool {
    let policy = outbox.runtime.policy();
    let Some(redis) = policy.redis.clone() else {
        return false;
    };
    let mut any = false;
    for endpoint in policy.webhooks.iter().filter(|e| e.shared) {
        any = true;
        if endpoint.disabled {
            continue;
        }
        let now = unix_nanos();
        let free = {
            let mut lanes = lock(&outbox.lanes);
            let total: u32 = lanes.values().map(|l| l.in_flight).sum();
            let lane = lanes.entry(endpoint.id.clone()).or_default();
            let mut free = endpoint
                .max_concurrency
                .saturating_sub(lane.in_flight)
                .min((outbox.config.max_in_flight as u32).saturating_sub(total));
            if let Some(per_second) = endpoint.rate_per_second {
                // What the bucket holds now, without spending it: spent per attempt below.
                let (outcome, _) = algorithm::decide(
                    Algorithm::TokenBucket,
                    per_second_rate(per_second),
                    lane.rate,
                    now,
                    0,
                );
                free = free.min(outcome.remaining as u32);
            }
            free
        };
        if free == 0 {
            continue;
        }
        // An attempt can last `timeout`: an entry idle longer belongs to a sidecar that died.
        let min_idle = endpoint.timeout + Duration::from_secs(15);
        let taken = match shared::take(
            &redis,
            &endpoint.id,
            &outbox.consumer,
            now / 1_000_000,
            free as usize,
            min_idle,
        )
        .await
        {
            Ok(taken) => taken,
            Err(e) => {
                tracing::debug!(endpoint = %endpoint.id, error = %e, "cannot read the shared webhook queue");
                continue;
            }
        };
        let mut lanes = lock(&outbox.lanes);
        let lane = lanes.entry(endpoint.id.clone()).or_default();
        for entry in taken {
            // Over the breaker: the entry stays in this consumer's pending list until it is
            // taken again (by any sidecar) once idle; nothing is lost.
            if lane.breaker.try_acquire(now).is_err() {
                continue;
            }
            if let Some(per_second) = endpoint.rate_per_second {
                lane.rate = algorithm::consume(
                    Algorithm::TokenBucket,
                    per_second_rate(per_second),
                    lane.rate,
                    now,
                    1,
                );
            }
            lane.in_flight += 1;
            tokio::spawn(attempt_shared(
                outbox.clone(),
                endpoint.clone(),
                redis.clone(),
                entry,
            ));
        }
    }
    any
}

fn per_second_rate(per_second: u32) -> Rate {
    Rate {
        limit: u64::from(per_second),
        window_nanos: 1_000_000_000,
        burst: u64::from(per_second),
    }
}

/// The request headers of one attempt: the endpoint's own, then the Standard Webhooks ones.
fn headers(endpoint: &Endpoint, webhook_id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(endpoint.headers.len() + 5);
    for (name, value) in &endpoint.headers {
        headers.append(name.clone(), value.clone());
    }
    let value = |v: String| HeaderValue::from_str(&v).expect("ids, numbers and base64 are valid");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::USER_AGENT,
        HeaderValue::from_static(concat!("Bulwark-Webhooks/", env!("CARGO_PKG_VERSION"))),
    );
    headers.insert(
        HeaderName::from_static("webhook-id"),
        value(webhook_id.to_owned()),
    );
    headers.insert(
        HeaderName::from_static("webhook-timestamp"),
        value(timestamp.to_string()),
    );
    headers.insert(
        HeaderName::from_static("webhook-signature"),
        value(signature::sign(&endpoint.keys, webhook_id, timestamp, body)),
    );
    headers
}
