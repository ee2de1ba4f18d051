//! Circuit breaker: Resilience4j's count-based model, as a pure state machine.
//!
//! One [`Breaker`] per upstream: [`Breaker::try_acquire`] before a call, [`Breaker::record`]
//! after it; `now` is in nanoseconds from any monotonic origin. Nothing here reads a clock,
//! locks or panics; only `new` allocates (the outcome ring); arithmetic saturates, and time
//! going backwards only keeps it open longer.
//!
//! - **Closed**: calls pass. The last `window_size` outcomes sit in a ring with running counts
//!   of failures and slow calls (duration ≥ `slow_call_nanos`): a record is O(1). Once the
//!   window holds `minimum_calls` outcomes and a rate reaches its threshold
//!   (`failures·100 ≥ failure_rate_percent·calls`, same for slow calls), it opens, emptied.
//! - **Open**: calls are rejected with the exact time left until `opened_at + open_nanos`;
//!   outcomes recorded meanwhile (calls admitted before it opened) are ignored.
//! - **HalfOpen**: the first `try_acquire` after `open_nanos` moves there, taking the first of
//!   at most `half_open_calls` trial permits. A failed trial reopens it, and so do slow trials
//!   reaching the slow-call rate of `half_open_calls` (at the default 100 %, all of them: a
//!   slow success is a success); `half_open_calls` successes close it, emptied.
//!
//! The state changes only inside `try_acquire` and `record`, so comparing [`Breaker::state`]
//! before and after each shows every transition (an idle breaker reads Open past
//! `open_nanos`, as Resilience4j's without its automatic transition).
//!
//! Edge cases: a rate threshold of 0 disables that detector (not: trips on anything), above
//! 100 reads as 100; `window_size` is clamped to `1..=`[`MAX_WINDOW`], `minimum_calls` to
//! `1..=window_size` (as Resilience4j); `half_open_calls` 0 reads as 1, `slow_call_nanos` 0
//! as no call slow. Caller contract: each `Ok` from `try_acquire` gets exactly one `record`,
//! or one `release` for a call that ended with no outcome, or the breaker may stay half-open. A HalfOpen record with no
//! permit outstanding (a late call admitted while Closed) is ignored.

/// The largest window, in calls: the ring costs one byte per call.
pub const MAX_WINDOW: u32 = 65_536;

const FAILED: u8 = 1;
const SLOW: u8 = 2;

/// Thresholds and timings of one breaker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Opens when failures are at least this share of the window (0 = never).
    pub failure_rate_percent: u8,
    /// Opens when slow calls are at least this share of the window (0 = never).
    pub slow_call_rate_percent: u8,
    /// A call lasting at least this long is slow (0 = none is).
    pub slow_call_nanos: u64,
    /// How many of the latest outcomes the rates are computed over.
    pub window_size: u32,
    /// No rate is judged on fewer outcomes than this.
    pub minimum_calls: u32,
    /// How long the breaker stays open before trial calls.
    pub open_nanos: u64,
    /// Trial calls in HalfOpen; that many successes close the breaker.
    pub half_open_calls: u32,
}

impl Default for BreakerConfig {
    /// Resilience4j's defaults, except a 5 s slow call (theirs is 60 s, too long for a proxy).
    fn default() -> Self {
        Self {
            failure_rate_percent: 50,
            slow_call_rate_percent: 100,
            slow_call_nanos: 5_000_000_000,
            window_size: 100,
            minimum_calls: 20,
            open_nanos: 30_000_000_000,
            half_open_calls: 5,
        }
    }
}

/// Discriminants are the gauge values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    Open = 1,
    HalfOpen = 2,
}

impl BreakerState {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> i64 {
        self as i64
    }
}

/// A call refused by the breaker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    /// Until the breaker lets a trial through; 0 when half-open with every permit out (when a
    /// permit frees up depends on the trials).
    pub retry_after_nanos: u64,
}

#[derive(Clone, Debug)]
pub struct Breaker {
    /// Normalized (see the module docs).
    config: BreakerConfig,
    /// Outcome flags (`FAILED | SLOW`); `len` of them are live, the oldest at `next` when full.
    ring: Box<[u8]>,
    next: usize,
    len: u32,
    failures: u32,
    /// Slow calls in the window; in HalfOpen, slow trials.
    slow: u32,
    state: BreakerState,
    opened_at: u64,
    /// HalfOpen: permits issued and successes recorded in the current trial.
    permits: u32,
    successes: u32,
}

impl Breaker {
    pub fn new(config: BreakerConfig) -> Self {
        let window_size = config.window_size.clamp(1, MAX_WINDOW);
        let config = BreakerConfig {
            failure_rate_percent: config.failure_rate_percent.min(100),
            slow_call_rate_percent: config.slow_call_rate_percent.min(100),
            window_size,
            minimum_calls: config.minimum_calls.clamp(1, window_size),
            half_open_calls: config.half_open_calls.max(1),
            ..config
        };
        Self {
            config,
            ring: vec![0; window_size as usize].into_boxed_slice(),
            next: 0,
            len: 0,
            failures: 0,
            slow: 0,
            state: BreakerState::Closed,
            opened_at: 0,
            permits: 0,
            successes: 0,
        }
    }

    /// The state as of the last `try_acquire` or `record` (`now` is not read: see the module
    /// docs).
    pub fn state(&self, _now: u64) -> BreakerState {
        self.state
    }

    /// Asks to make a call at `now`; `Ok` obliges the caller to `record` its outcome.
    pub fn try_acquire(&mut self, now: u64) -> Result<(), Rejected> {
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::Open => {
                let at = self.opened_at.saturating_add(self.config.open_nanos);
                if now < at {
                    let retry_after_nanos = at - now;
                    return Err(Rejected { retry_after_nanos });
                }
                self.state = BreakerState::HalfOpen;
                self.permits = 1; // `open` zeroed the successes
                Ok(())
            }
            BreakerState::HalfOpen if self.permits < self.config.half_open_calls => {
                self.permits += 1;
                Ok(())
            }
            BreakerState::HalfOpen => Err(Rejected::default()),
        }
    }

    /// Gives back an `Ok` of `try_acquire` whose call ended with no outcome (the client went
    /// away): a half-open trial permit is freed for another call; nothing is counted.
    pub fn release(&mut self) {
        if self.state == BreakerState::HalfOpen && self.permits > self.successes {
            self.permits -= 1;
        }
    }

    /// Records a call's outcome; `Some(state)` when this changed the state.
    pub fn record(&mut self, failed: bool, duration_nanos: u64, now: u64) -> Option<BreakerState> {
        let slow = self.config.slow_call_nanos > 0 && duration_nanos >= self.config.slow_call_nanos;
        match self.state {
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if self.successes >= self.permits {
                    return None;
                }
                self.slow += u32::from(slow);
                let c = &self.config;
                if failed || reaches(self.slow, c.slow_call_rate_percent, c.half_open_calls) {
                    self.open(now);
                    return Some(BreakerState::Open);
                }
                self.successes += 1;
                if self.successes < self.config.half_open_calls {
                    return None;
                }
                self.state = BreakerState::Closed;
                self.clear_window();
                Some(BreakerState::Closed)
            }
            BreakerState::Closed => {
                self.push(u8::from(failed) | if slow { SLOW } else { 0 });
                let c = &self.config;
                let trips = self.len >= c.minimum_calls
                    && (reaches(self.failures, c.failure_rate_percent, self.len)
                        || reaches(self.slow, c.slow_call_rate_percent, self.len));
                if !trips {
                    return None;
                }
                self.open(now);
                Some(BreakerState::Open)
            }
        }
    }

    fn push(&mut self, flags: u8) {
        let full = self.len as usize == self.ring.len();
        let Some(slot) = self.ring.get_mut(self.next) else {
            return; // unreachable: `next < ring.len()` always
        };
        // Full window: the slot at `next` is the oldest outcome, leaving it.
        let evicted = if full { *slot } else { 0 };
        self.len += u32::from(!full);
        *slot = flags;
        self.failures = self.failures + u32::from(flags & FAILED) - u32::from(evicted & FAILED);
        self.slow = self.slow + u32::from(flags & SLOW != 0) - u32::from(evicted & SLOW != 0);
        self.next = (self.next + 1) % self.ring.len();
    }

    fn open(&mut self, now: u64) {
        self.state = BreakerState::Open;
        self.opened_at = now;
        self.clear_window();
    }

    /// Slots past `len` are never read: they are overwritten before the window fills again.
    fn clear_window(&mut self) {
        (self.next, self.len, self.failures, self.slow) = (0, 0, 0, 0);
        (self.permits, self.successes) = (0, 0);
    }
}

/// `count` is at least `percent` % of `calls`; 0 % is off.
fn reaches(count: u32, percent: u8, calls: u32) -> bool {
    percent > 0 && u64::from(count) * 100 >= u64::from(percent) * u64::from(calls)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    use BreakerState::{Closed, HalfOpen, Open};

    /// (failure %, slow %, slow ns, window, minimum, open ns, half-open calls).
    fn cfg((f, s, n, w, m, o, t): (u8, u8, u64, u32, u32, u64, u32)) -> BreakerConfig {
        BreakerConfig {
            failure_rate_percent: f,
            slow_call_rate_percent: s,
            slow_call_nanos: n,
            window_size: w,
            minimum_calls: m,
            open_nanos: o,
            half_open_calls: t,
        }
    }

    fn rejected(retry_after_nanos: u64) -> Result<(), Rejected> {
        Err(Rejected { retry_after_nanos })
    }

    /// Records `n` fast outcomes at `now`; returns the last transition.
    fn feed(b: &mut Breaker, n: u32, failed: bool, now: u64) -> Option<BreakerState> {
        (0..n).fold(None, |_, _| b.record(failed, 1, now))
    }

    #[test]
    fn full_cycle() {
        let labels = [Closed, Open, HalfOpen].map(|s| (s.as_str(), s.gauge_value()));
        assert_eq!(labels, [("closed", 0), ("open", 1), ("half_open", 2)]);
        let mut b = Breaker::new(cfg((50, 100, 100, 10, 4, 1_000, 2)));
        assert_eq!(feed(&mut b, 3, true, 0), None); // below the minimum, however bad
        assert_eq!(b.record(false, 1, 5), Some(Open));
        assert_eq!(b.try_acquire(400), rejected(605));
        assert_eq!(b.record(false, 1, 400), None); // late outcome while open
        assert_eq!((b.try_acquire(1_004), b.state(1_005)), (rejected(1), Open));
        assert_eq!(b.try_acquire(1_005).and(b.try_acquire(1_006)), Ok(()));
        assert_eq!(b.state(1_006), HalfOpen);
        assert_eq!(b.try_acquire(1_007), rejected(0));
        assert_eq!(b.record(false, 1, 1_010), None);
        assert_eq!(b.record(false, 1, 1_011), Some(Closed));
        assert_eq!((b.record(true, 1, 1_012), b.len), (None, 1)); // the window starts empty
    }

    #[test]
    fn slow_calls_and_eviction() {
        let mut b = Breaker::new(cfg((50, 100, 100, 4, 4, 1_000, 2)));
        assert_eq!(b.record(false, 100, 0).or(b.record(true, 99, 0)), None);
        assert_eq!(feed(&mut b, 4, false, 0), None);
        assert_eq!((b.len, b.failures, b.slow), (4, 0, 0)); // the oldest two left
        (0..3).for_each(|_| assert_eq!(b.record(false, 500, 1), None)); // 100 % slow needed
        assert_eq!(b.record(false, 500, 2), Some(Open));
        assert_eq!(b.try_acquire(1_002), Ok(()));
        assert_eq!(b.record(false, 100, 1_003), None); // 1 of 2 trials slow: 50 %
        assert_eq!(b.try_acquire(1_004), Ok(()));
        assert_eq!(b.record(false, 100, 1_005), Some(Open)); // 100 % of the trials slow
    }

    #[test]
    fn normalization() {
        let mut b = Breaker::new(cfg((0, 100, 0, u32::MAX, 50, 0, 0)));
        assert_eq!(feed(&mut b, 100, true, 0), None); // failures off, no call slow
        assert_eq!(b.ring.len(), 65_536);
        let mut b = Breaker::new(cfg((200, 0, 1, 0, 50, 0, 0)));
        assert_eq!(b.record(true, 1, 0), Some(Open)); // window 1, minimum capped at it
        assert_eq!((b.try_acquire(0), b.try_acquire(0)), (Ok(()), rejected(0))); // one permit
        assert_eq!(b.record(false, 1, 0), Some(Closed));
    }

    // Property tests: small windows and times, so that every state is visited often.

    fn config(cases: u32) -> ProptestConfig {
        let mut c = ProptestConfig::with_cases(cases);
        c.failure_persistence = None;
        c
    }

    fn any_config() -> impl Strategy<Value = BreakerConfig> {
        let pct = || prop_oneof![Just(0u8), 1..=100u8, Just(100u8), 101..=255u8];
        let sizes = (0..=12u32, 0..=12u32, 0..=50u64, 0..=4u32);
        let slow_nanos = prop_oneof![1 => Just(0u64), 9 => 1..=20u64];
        (pct(), pct(), slow_nanos, sizes)
            .prop_map(|(f, s, n, (w, m, o, t))| cfg((f, s, n, w, m, o, t)))
    }

    fn is_slow(c: &BreakerConfig, duration: u64) -> bool {
        c.slow_call_nanos > 0 && duration >= c.slow_call_nanos
    }

    /// Would a closed breaker trip on these outcomes, recounted from scratch?
    fn naive_trips(c: &BreakerConfig, window: &[(bool, u64)]) -> bool {
        let pct = |p: u8| u64::from(p.min(100));
        let rate = |n: usize, p: u8| pct(p) > 0 && n as u64 * 100 >= pct(p) * window.len() as u64;
        let failures = window.iter().filter(|o| o.0).count();
        let slow = window.iter().filter(|o| is_slow(c, o.1)).count();
        let min = c.minimum_calls.clamp(1, c.window_size.max(1)) as usize;
        window.len() >= min
            && (rate(failures, c.failure_rate_percent) || rate(slow, c.slow_call_rate_percent))
    }

    proptest! {
        #![proptest_config(config(1000))]

        /// Steps (`None` = try_acquire, else a record) checked against a naive model:
        /// (a) Closed opens only after the minimum calls since the last close, (b) exactly when
        /// a recount over the last `window_size` outcomes trips; (c) Open rejects with the
        /// exact time left and admits the first call after it; (d) HalfOpen issues at most
        /// `half_open_calls` permits, (e) closes after that many successes, reopens on a
        /// failure (or the slow-call rate), and ignores records with no permit outstanding.
        #[test]
        fn agrees_with_naive_model(
            c in any_config(),
            steps in prop::collection::vec(
                (prop_oneof![Just(0u64), 0..=60u64], prop::option::of((any::<bool>(), 0..=25u64))),
                0..200,
            ),
        ) {
            let mut b = Breaker::new(c);
            let (window, trials) = (c.window_size.max(1) as usize, c.half_open_calls.max(1));
            let minimum = c.minimum_calls.clamp(1, window as u32) as usize;
            let (mut now, mut opened_at, mut since_close) = (0u64, 0, 0);
            let (mut permits, mut results, mut slow_trials) = (0, 0, 0);
            let mut outcomes = Vec::new();
            for (gap, step) in steps {
                now += gap;
                let before = b.state(now);
                let Some((failed, duration)) = step else {
                    let r = b.try_acquire(now);
                    match before {
                        Closed => prop_assert_eq!(r, Ok(())),
                        Open if now < opened_at + c.open_nanos => {
                            prop_assert_eq!(r, rejected(opened_at + c.open_nanos - now));
                        }
                        Open => prop_assert_eq!((r, b.state(now)), (Ok(()), HalfOpen)),
                        HalfOpen if permits < trials => prop_assert_eq!(r, Ok(())),
                        HalfOpen => prop_assert_eq!(r, rejected(0)),
                    }
                    permits += u32::from(b.state(now) == HalfOpen && r.is_ok());
                    continue;
                };
                let changed = b.record(failed, duration, now);
                if before == Closed {
                    outcomes.push((failed, duration));
                    outcomes.drain(..outcomes.len().saturating_sub(window));
                    since_close += 1;
                    let trips = naive_trips(&c, &outcomes);
                    prop_assert_eq!(changed, trips.then_some(Open));
                    prop_assert!(!trips || since_close >= minimum);
                } else if before == HalfOpen && results < permits {
                    results += 1;
                    slow_trials += u64::from(is_slow(&c, duration));
                    let pct = u64::from(c.slow_call_rate_percent.min(100));
                    let slow = pct > 0 && slow_trials * 100 >= pct * u64::from(trials);
                    let closed = (results == trials).then_some(Closed);
                    prop_assert_eq!(changed, if failed || slow { Some(Open) } else { closed });
                } else {
                    prop_assert_eq!(changed, None); // Open, or no trial permit outstanding
                }
                match changed {
                    Some(Open) => opened_at = now,
                    Some(_) => since_close = 0,
                    None => continue,
                }
                (outcomes, permits, results, slow_trials) = (Vec::new(), 0, 0, 0);
            }
        }

        /// (c), (d), (e) directed: opened at 10, no trial 1 ns before `10 + open_nanos` (nor
        /// at 9, time going backwards), one at it; then `half_open_calls` permits in all; their
        /// successes close it, a failure among them reopens.
        #[test]
        fn half_open_trial(c in any_config(), fail_at in 0..6u32) {
            let mut b = Breaker::new(BreakerConfig { failure_rate_percent: 100, ..c });
            prop_assert_eq!((0..=12).find_map(|_| b.record(true, 0, 10)), Some(Open));
            let (reopen, trials) = (10 + c.open_nanos, c.half_open_calls.max(1));
            prop_assert_eq!(b.try_acquire(reopen - 1), rejected(1));
            for _ in 0..trials {
                prop_assert_eq!(b.try_acquire(reopen), Ok(()));
            }
            prop_assert_eq!(b.try_acquire(reopen), rejected(0));
            for i in 0..trials.min(fail_at + 1) {
                let (failed, last) = (fail_at == i, i + 1 == trials);
                let changed = b.record(failed, 0, reopen);
                prop_assert_eq!(changed, if failed { Some(Open) } else { last.then_some(Closed) });
            }
        }

        /// Any input at all, time going backwards included: no panic, counts within the window.
        #[test]
        fn never_panics(
            c in any::<(u8, u8, u64, u32, u32, u64, u32)>(),
            steps in prop::collection::vec(any::<(u64, bool, u64, bool)>(), 0..50),
        ) {
            let mut b = Breaker::new(cfg(c));
            for (now, acquire, duration, failed) in steps {
                if acquire {
                    let _ = b.try_acquire(now);
                } else {
                    let _ = b.record(failed, duration, now);
                }
                prop_assert!(b.failures.max(b.slow) <= b.len && b.len as usize <= b.ring.len());
            }
        }
    }
}
