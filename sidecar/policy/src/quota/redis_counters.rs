//! `scope: Global` quota usage in Redis: one counter per (quota, key, period), changed by one
//! atomic script call (`quota.lua`), so every pod sees one budget and no two pods can both
//! spend its last unit.
//!
//! The period is computed by each sidecar from its own clock and is part of the Redis key, so a
//! new period simply starts a new counter; the old one expires an hour after its period ended
//! (the slack covers clocks a little behind). Pods' clocks therefore need to agree (NTP) to
//! within the precision wanted at period boundaries.

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{period::Period, usage::Charge};
use crate::redis_client::{CallError, RedisClient};

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("redis_counters.lua")));

/// How long a quota call may wait for Redis. The CRD has no `timeout` field for quotas: this is
/// the rate limits' default, documented in docs/quotas.md.
pub const TIMEOUT: Duration = Duration::from_millis(50);

/// How long a counter outlives its period.
const EXPIRY_SLACK_MS: i64 = 3_600_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Charge if it fits the limit.
    Check,
    /// Charge unconditionally.
    Add,
    /// Read only.
    Read,
}

/// The Redis key of a quota counter: the period's start, then the usage key (policy, quota,
/// identity hash, key value).
pub fn redis_key(period: Period, usage_key: &str) -> String {
    format!("bulwark:quota:{}:{usage_key}", period.start)
}

/// Runs the script on one counter.
pub async fn call(
    store: &RedisClient,
    redis_key: &str,
    period: Period,
    mode: Mode,
    cost: u64,
    limit: u64,
) -> Result<Charge, CallError> {
    let mut inv = SCRIPT.prepare_invoke();
    inv.key(redis_key)
        .arg(match mode {
            Mode::Check => "check",
            Mode::Add => "add",
            Mode::Read => "read",
        })
        .arg(cost)
        .arg(limit)
        .arg(
            period
                .end
                .saturating_mul(1000)
                .saturating_add(EXPIRY_SLACK_MS),
        );
    let reply: Vec<i64> = store.invoke(&inv, TIMEOUT).await?;
    match reply.as_slice() {
        [admitted, before, after] => Ok(Charge {
            admitted: *admitted == 1,
            before: u64::try_from(*before).unwrap_or(0),
            after: u64::try_from(*after).unwrap_or(0),
        }),
        _ => Err(CallError::Redis(
            (redis::ErrorKind::Parse, "unexpected quota script reply").into(),
        )),
    }
}
