//! The global rate-limit script (`sidecar/policy/src/ratelimit/redis_counters.lua`) on a real Redis against
//! the Rust algorithms it ports: for random rates, arrivals and costs on the microsecond grid,
//! every decision (admission, remaining, reset, Retry-After, deciding rate) and every state is
//! the same. TokenBucket rates have whole-microsecond emission intervals, where the script's
//! doubles are exact integers; other rates are checked against the limit's bound below.

use std::{sync::Arc, time::Duration};

use bulwark_e2e::redis::Redis;
use bulwark_policy::{
    metrics::PolicyMetrics,
    ratelimit::{
        algorithm::{self, Algorithm, Rate, State},
        redis_counters::{Counter, call},
    },
    redis_client::{RedisClient, RedisTarget},
};
use proptest::prelude::*;

const US: u64 = 1_000;
const MS: u64 = 1_000_000;
const T0: u64 = 1_764_000_000_000 * MS;
const TIMEOUT: Duration = Duration::from_secs(5);

struct Fixture {
    _redis: Redis,
    runtime: tokio::runtime::Runtime,
    store: RedisClient,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: std::sync::OnceLock<Fixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path());
        redis.kill_when_this_process_exits();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(PolicyMetrics::unregistered());
        let store = {
            let _entered = runtime.enter();
            RedisClient::connect(RedisTarget::Single(redis.url()), &metrics.stores).unwrap()
        };
        Fixture {
            _redis: redis,
            runtime,
            store,
            _dir: dir,
        }
    })
}

fn algorithm() -> impl Strategy<Value = Algorithm> {
    prop_oneof![
        Just(Algorithm::TokenBucket),
        Just(Algorithm::SlidingWindow),
        Just(Algorithm::FixedWindow)
    ]
}

/// Windows of whole milliseconds (as the CRD's durations are); limits that divide the window
/// in microseconds, so TokenBucket's interval is whole.
fn rate() -> impl Strategy<Value = Rate> {
    (
        prop_oneof![Just(1u64), Just(10), 1..=2000u64],
        1..=8u64,
        0..3u64,
    )
        .prop_map(|(window_ms, divisor, burst_mode)| {
            let window_us = window_ms * 1000;
            let limit = [1, 2, 4, 5, 8, 10, 20, 25][divisor as usize - 1];
            let burst = match burst_mode {
                0 => limit,
                1 => (limit / 2).max(1),
                _ => limit * 3,
            };
            debug_assert_eq!(window_us % limit, 0);
            Rate {
                limit,
                window_nanos: window_us * US,
                burst,
            }
        })
}

fn unique_key() -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    format!(
        "test:{}",
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// Equal states, or both idle at `now` (Redis deletes an idle counter; Rust may still hold
/// it): either way every later decision is the same.
fn same_counts(a: Algorithm, rates: &[Rate], redis: &[State], rust: &[State], now: u64) -> bool {
    redis.len() == rust.len()
        && rates
            .iter()
            .zip(redis.iter().zip(rust))
            .all(|(rate, (x, y))| {
                x == y
                    || (algorithm::is_idle(a, *rate, *x, now)
                        && algorithm::is_idle(a, *rate, *y, now))
            })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn script_decides_as_the_rust_algorithms(
        a in algorithm(),
        rates in proptest::collection::vec(rate(), 1..=2),
        steps in proptest::collection::vec((0..=400u64, 0..=3u64, any::<bool>()), 1..40),
    ) {
        let f = fixture();
        let key = unique_key();
        let counter = Counter { redis_key: &key, algorithm: a, rates: &rates };
        let mut states = vec![State::default(); rates.len()];
        let mut now = T0;
        for (gap_ms_tenths, cost, consume) in steps {
            now += gap_ms_tenths * 100 * US;
            let reply = f
                .runtime
                .block_on(call(&f.store, counter, cost, Some(now), consume, TIMEOUT))
                .expect("Redis answers");
            if consume {
                for (state, rate) in states.iter_mut().zip(&rates) {
                    *state = algorithm::consume(a, *rate, *state, now, cost);
                }
                prop_assert!(same_counts(a, &rates, &reply.states, &states, now), "consume at +{}us: {:?} vs {:?}", (now - T0) / US, reply.states, states);
                continue;
            }
            let (expected, index) = algorithm::decide_all(a, &rates, &mut states, now, cost);
            prop_assert_eq!(reply.outcome, expected, "cost {} at +{}us", cost, (now - T0) / US);
            prop_assert_eq!(reply.index, index);
            prop_assert!(same_counts(a, &rates, &reply.states, &states, now), "{:?} vs {:?}", reply.states, states);
        }
    }
}

/// Limits whose interval is not a whole microsecond (3 per second): the script rounds, but a
/// burst of exactly `burst` still passes, and over many windows it never admits more than
/// the limit allows.
#[test]
fn fractional_intervals_keep_the_limit() {
    let f = fixture();
    let key = unique_key();
    let rates = [Rate {
        limit: 3,
        window_nanos: 1_000 * MS,
        burst: 3,
    }];
    let counter = Counter {
        redis_key: &key,
        algorithm: Algorithm::TokenBucket,
        rates: &rates,
    };
    let decide = |now: u64| {
        f.runtime
            .block_on(call(&f.store, counter, 1, Some(now), false, TIMEOUT))
            .unwrap()
            .outcome
    };
    for i in 0..3 {
        assert!(decide(T0).allowed, "burst request {i}");
    }
    assert!(!decide(T0).allowed, "the fourth at once");
    // Every 10 ms for 10 s: at most burst + 3 per second.
    let mut admitted = 0;
    for step in 1..=1000 {
        if decide(T0 + step * 10 * MS).allowed {
            admitted += 1;
        }
    }
    assert!(
        (29..=30).contains(&admitted),
        "admitted {admitted} in 10 s at 3/s"
    );
}

/// Without a `now`, the script reads the Redis server's clock: two calls a moment apart on a
/// 1-per-hour limit give one admission, and the reset is about an hour.
#[test]
fn server_clock_is_used_by_default() {
    let f = fixture();
    let key = unique_key();
    let rates = [Rate {
        limit: 1,
        window_nanos: 3_600_000 * MS,
        burst: 1,
    }];
    let counter = Counter {
        redis_key: &key,
        algorithm: Algorithm::FixedWindow,
        rates: &rates,
    };
    let first = f
        .runtime
        .block_on(call(&f.store, counter, 1, None, false, TIMEOUT))
        .unwrap();
    let second = f
        .runtime
        .block_on(call(&f.store, counter, 1, None, false, TIMEOUT))
        .unwrap();
    assert!(first.outcome.allowed);
    assert!(!second.outcome.allowed);
    assert!(second.outcome.retry_after_nanos <= 3_600_000 * MS);
    assert!(second.outcome.retry_after_nanos > 0);
}
