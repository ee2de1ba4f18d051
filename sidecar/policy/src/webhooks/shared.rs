//! The shared queue of `scope: Global` endpoints: one Redis Stream per endpoint with one
//! consumer group, worked by every selected sidecar (`shared.lua`, one script per operation so
//! each is atomic). A sidecar takes ready entries with `XREADGROUP` (they stay in its pending
//! list until settled), and also takes, with `XAUTOCLAIM`, entries another consumer has held
//! longer than any attempt can last: the work of a sidecar that died is finished by another.
//! Retries wait in a sorted set by due time and return to the stream when due; dead letters go
//! to a second stream. All keys of an endpoint share a hash tag (one Cluster slot).
//!
//! Durability is Redis's: a `202` means Redis has the message; that it survives a Redis crash
//! depends on its persistence (`appendonly yes`, `appendfsync always` for the same guarantee
//! as the local store).

use std::{sync::LazyLock, time::Duration};

use redis::Script;
use serde::Serialize;

use super::{
    message::{format_id, parse_id},
    store::ReplaySelector,
};
use crate::redis_client::{CallError, RedisClient};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("shared.lua")));

/// Every call's bound: the accept path waits for it.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The most dead letters one listing or replay reads.
const MAX_DEAD: usize = 10_000;

fn keys(endpoint: &str) -> [String; 3] {
    let tag = format!("{{bulwark:webhooks:{endpoint}}}");
    [
        format!("{tag}:ready"),
        format!("{tag}:retry"),
        format!("{tag}:dead"),
    ]
}

fn idempotency_key(endpoint: &str, key: &str) -> String {
    format!("{{bulwark:webhooks:{endpoint}}}:key:{key}")
}

async fn call<T: redis::FromRedisValue>(
    redis: &RedisClient,
    endpoint: &str,
    idempotency: Option<String>,
    args: &[&str],
) -> Result<T, CallError> {
    let [ready, retry, dead] = keys(endpoint);
    let mut invocation = SCRIPT.prepare_invoke();
    invocation
        .key(ready)
        .key(retry)
        .key(dead)
        .key(idempotency.unwrap_or_else(|| format!("{{bulwark:webhooks:{endpoint}}}:none")));
    for arg in args {
        invocation.arg(*arg);
    }
    redis.invoke(&invocation, TIMEOUT).await
}

/// What accepting a message at one shared endpoint did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SharedAccept {
    New,
    /// The idempotency key was seen: the first message's id.
    Duplicate(u128),
}

pub async fn accept(
    redis: &RedisClient,
    endpoint: &str,
    id: u128,
    event_type: &str,
    payload: &[u8],
    idempotency: Option<(&str, Duration)>,
) -> Result<SharedAccept, CallError> {
    let payload = std::str::from_utf8(payload).unwrap_or_default();
    let ttl = idempotency
        .map_or(0, |(_, ttl)| ttl.as_millis() as u64)
        .to_string();
    let id_text = format_id(id);
    let reply: Vec<String> = call(
        redis,
        endpoint,
        idempotency.map(|(key, _)| idempotency_key(endpoint, key)),
        &["accept", &id_text, event_type, payload, &ttl],
    )
    .await?;
    Ok(match reply.as_slice() {
        [kind, first] if kind == "duplicate" => {
            SharedAccept::Duplicate(parse_id(first).unwrap_or(id))
        }
        _ => SharedAccept::New,
    })
}

/// An entry this sidecar took from the stream and must settle.
#[derive(Clone, Debug)]
pub struct Taken {
    pub stream_id: String,
    pub id: u128,
    pub event_type: String,
    pub payload: Vec<u8>,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Promotes due retries, then takes up to `count` entries: left by dead consumers first
/// (idle longer than `min_idle`), then new ones.
pub async fn take(
    redis: &RedisClient,
    endpoint: &str,
    consumer: &str,
    now_ms: u64,
    count: usize,
    min_idle: Duration,
) -> Result<Vec<Taken>, CallError> {
    let rows: Vec<Vec<String>> = call(
        redis,
        endpoint,
        None,
        &[
            "take",
            consumer,
            &now_ms.to_string(),
            &count.to_string(),
            &min_idle.as_millis().to_string(),
        ],
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let [stream_id, id, event_type, payload, attempts, ..] = row.as_slice() else {
                return None;
            };
            Some(Taken {
                stream_id: stream_id.clone(),
                id: parse_id(id)?,
                event_type: event_type.clone(),
                payload: payload.clone().into_bytes(),
                attempts: attempts.parse().unwrap_or(0),
            })
        })
        .collect())
}

/// What becomes of a taken entry.
pub enum Settle<'a> {
    Delivered,
    Retry { at_ms: u64 },
    Dead { reason: &'a str },
}

#[derive(Serialize)]
struct Member<'a> {
    id: String,
    t: &'a str,
    p: &'a str,
    n: u32,
}

/// Settles an entry after attempt number `attempts`. False when another consumer had taken it
/// over meanwhile (nothing changes then: it settles it).
pub async fn settle(
    redis: &RedisClient,
    endpoint: &str,
    taken: &Taken,
    attempts: u32,
    settle: Settle<'_>,
    now_ms: u64,
) -> Result<bool, CallError> {
    let member = serde_json::to_string(&Member {
        id: format_id(taken.id),
        t: &taken.event_type,
        p: std::str::from_utf8(&taken.payload).unwrap_or_default(),
        n: attempts,
    })
    .expect("members serialise");
    let now = now_ms.to_string();
    let (outcome, due, reason) = match settle {
        Settle::Delivered => ("delivered", String::from("0"), ""),
        Settle::Retry { at_ms } => ("retry", at_ms.to_string(), ""),
        Settle::Dead { reason } => ("dead", String::from("0"), reason),
    };
    let settled: i64 = call(
        redis,
        endpoint,
        None,
        &[
            "settle",
            &taken.stream_id,
            outcome,
            &due,
            &member,
            reason,
            &now,
        ],
    )
    .await?;
    Ok(settled == 1)
}

/// A dead letter of a shared endpoint.
#[derive(Clone, Debug)]
pub struct SharedDeadLetter {
    pub id: u128,
    pub event_type: String,
    pub attempts: u32,
    pub reason: String,
    pub dead_at_ms: u64,
}

/// Dead letters after message `after`, oldest first, at most `limit`.
pub async fn dead_letters(
    redis: &RedisClient,
    endpoint: &str,
    after: Option<u128>,
    limit: usize,
) -> Result<Vec<SharedDeadLetter>, CallError> {
    let rows: Vec<Vec<String>> =
        call(redis, endpoint, None, &["dead", "-", &MAX_DEAD.to_string()]).await?;
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let [_, id, event_type, _, attempts, reason, at] = row.as_slice() else {
                return None;
            };
            Some(SharedDeadLetter {
                id: parse_id(id)?,
                event_type: event_type.clone(),
                attempts: attempts.parse().unwrap_or(0),
                reason: reason.clone(),
                dead_at_ms: at.parse().unwrap_or(0),
            })
        })
        .filter(|l| after.is_none_or(|a| l.id > a))
        .take(limit)
        .collect())
}

/// Puts dead letters back in the stream with a fresh schedule; returns their ids.
pub async fn replay(
    redis: &RedisClient,
    endpoint: &str,
    which: ReplaySelector,
) -> Result<Vec<u128>, CallError> {
    let (want, from) = match which {
        ReplaySelector::One(id) => (format_id(id), String::new()),
        ReplaySelector::Since { unix_ms } => (
            String::new(),
            format_id(super::message::first_id_at(unix_ms)),
        ),
    };
    let ids: Vec<String> = call(redis, endpoint, None, &["replay", &want, &from]).await?;
    Ok(ids.iter().filter_map(|id| parse_id(id)).collect())
}

/// The shared queue's size: entries ready or in flight, waiting for a retry, dead letters, and
/// the oldest ready message.
#[derive(Clone, Copy, Debug, Default)]
pub struct SharedStats {
    pub ready: u64,
    pub waiting: u64,
    pub dead: u64,
    pub oldest: Option<u128>,
}

pub async fn stats(redis: &RedisClient, endpoint: &str) -> Result<SharedStats, CallError> {
    let (ready, waiting, dead, oldest): (u64, u64, u64, String) =
        call(redis, endpoint, None, &["stats"]).await?;
    Ok(SharedStats {
        ready,
        waiting,
        dead,
        oldest: parse_id(&oldest),
    })
}
