//! Circuit breaker: Resilience4j's count-based model, as a pure state machine.
//!
//! One [`Breaker`] guards one upstream: [`Breaker::try_acquire`] before a call,
//! [`Breaker::record`] after it. Time is `now` in nanoseconds from any monotonic origin.
//! Nothing here reads a clock, locks or panics; only [`Breaker::new`] allocates (the outcome
//! ring, once); arithmetic saturates, and time going backwards only keeps it open longer.
//!
//! - **Closed**: every call is admitted. The last `window_size` outcomes sit in a ring with
//!   running counts of failures and slow calls (duration ≥ `slow_call_nanos`), so a record is
//!   O(1). Once the window holds `minimum_calls` outcomes and either rate reaches its threshold
//!   (`failures·100 ≥ failure_rate_percent·calls`, likewise for slow calls), it opens, and the
//!   window is emptied.
//! - **Open**: calls are rejected with the exact time left until `opened_at + open_nanos`.
//!   Outcomes recorded meanwhile belong to calls admitted before it opened: ignored.
//! - **HalfOpen**: the first `try_acquire` once `open_nanos` has passed moves there and takes
//!   the first of at most `half_open_calls` trial permits. One failed trial (or slow one, when
//!   that detector is on) reopens it for another `open_nanos`; `half_open_calls` successful
//!   ones close it with an empty window.
//!
//! The state changes only inside `try_acquire` and `record`, so a caller comparing
//! [`Breaker::state`] before and after each sees every transition (an idle breaker reads Open
//! past `open_nanos`, like Resilience4j's without its automatic transition).
//!
//! Edge cases: a rate threshold of 0 disables that detector (0 % would trip on any window),
//! above 100 reads as 100. `window_size` is clamped to `1..=`[`MAX_WINDOW`], `minimum_calls`
//! to `1..=window_size` (as Resilience4j: a larger minimum could never trip), and
//! `half_open_calls` of 0 reads as 1 (or nothing could close it).
//!
//! Caller contract: every `Ok` from `try_acquire` is followed by exactly one `record` (a
//! cancelled call as failed), or the breaker stays half-open. A HalfOpen record with no permit
//! outstanding (a late call admitted while Closed) is ignored; with one outstanding, it cannot
//! be told apart from the trial.

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
    /// A call lasting at least this long is slow.
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
                let at = self.reopens_at();
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

    /// Records a call's outcome; `Some(state)` when this changed the state.
    pub fn record(&mut self, failed: bool, duration_nanos: u64, now: u64) -> Option<BreakerState> {
        let slow = duration_nanos >= self.config.slow_call_nanos;
        match self.state {
            BreakerState::Open => None,
            BreakerState::HalfOpen => {
                if self.successes >= self.permits {
                    return None;
                }
                if failed || (slow && self.config.slow_call_rate_percent > 0) {
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
                    && (self.reaches(self.failures, c.failure_rate_percent)
                        || self.reaches(self.slow, c.slow_call_rate_percent));
                if !trips {
                    return None;
                }
                self.open(now);
                Some(BreakerState::Open)
            }
        }
    }

    fn reopens_at(&self) -> u64 {
        self.opened_at.saturating_add(self.config.open_nanos)
    }

    /// `count` is at least `percent` % of the window; 0 % is off.
    fn reaches(&self, count: u32, percent: u8) -> bool {
        percent > 0 && u64::from(count) * 100 >= u64::from(percent) * u64::from(self.len)
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
        self.next = 0;
        self.len = 0;
        self.failures = 0;
        self.slow = 0;
        self.permits = 0;
        self.successes = 0;
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    use BreakerState::{Closed, HalfOpen, Open};

    /// (failure %, slow %, slow ns, window, minimum, open ns, half-open calls).
    fn cfg(
        (f, s, slow, window, minimum, open, trials): (u8, u8, u64, u32, u32, u64, u32),
    ) -> BreakerConfig {
        BreakerConfig {
            failure_rate_percent: f,
            slow_call_rate_percent: s,
            slow_call_nanos: slow,
            window_size: window,
            minimum_calls: minimum,
            open_nanos: open,
            half_open_calls: trials,
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
        // 100 % slow is required: the window must roll over the fast ones.
        (0..3).for_each(|_| assert_eq!(b.record(false, 500, 1), None));
        assert_eq!(b.record(false, 500, 2), Some(Open));
        assert_eq!(b.try_acquire(1_002), Ok(()));
        assert_eq!(b.record(false, 100, 1_003), Some(Open)); // a slow trial reopens
        assert_eq!(b.try_acquire(2_002), rejected(1));
    }

    #[test]
    fn normalization() {
        let mut b = Breaker::new(cfg((0, 0, 1, 0, 50, 0, 0)));
        assert_eq!(feed(&mut b, 100, true, 0), None); // both detectors off
        let huge = Breaker::new(cfg((0, 0, 1, u32::MAX, 0, 0, 0)));
        assert_eq!(huge.ring.len(), 65_536);
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
        (pct(), pct(), 1..=20u64, sizes)
            .prop_map(|(f, s, n, (w, m, o, t))| cfg((f, s, n, w, m, o, t)))
    }

    /// Would a closed breaker trip on these outcomes, recounted from scratch?
    fn naive_trips(c: &BreakerConfig, window: &[(bool, u64)]) -> bool {
        let pct = |p: u8| u64::from(p.min(100));
        let rate = |n: usize, p: u8| pct(p) > 0 && n as u64 * 100 >= pct(p) * window.len() as u64;
        let failures = window.iter().filter(|o| o.0).count();
        let slow = window.iter().filter(|o| o.1 >= c.slow_call_nanos).count();
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
        /// `half_open_calls` permits.
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
            let (mut now, mut opened_at, mut since_close, mut permits) = (0u64, 0, 0, 0);
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
                } else if before == Open {
                    prop_assert_eq!(changed, None);
                }
                match changed {
                    Some(Open) => opened_at = now,
                    Some(_) => since_close = 0,
                    None => continue,
                }
                (outcomes, permits) = (Vec::new(), 0);
            }
        }

        /// (c) and (e): after opening, nothing passes before `open_nanos`, the first call at it
        /// does; `half_open_calls` successes close, one failure among them reopens.
        #[test]
        fn half_open_trial(c in any_config(), wait in 0..=60u64, fail_at in 0..6u32) {
            let mut b = Breaker::new(BreakerConfig { failure_rate_percent: 100, ..c });
            while b.record(true, 0, 10).is_none() {}
            let (reopen, trials) = (10 + c.open_nanos, c.half_open_calls.max(1));
            let early = 10 + wait < reopen;
            let expected = if early { rejected(reopen - 10 - wait) } else { Ok(()) };
            prop_assert_eq!(b.try_acquire(10 + wait), expected);
            if early {
                prop_assert_eq!(b.try_acquire(reopen - 1), rejected(1));
            }
            for _ in u32::from(!early)..trials {
                prop_assert_eq!(b.try_acquire(reopen), Ok(()));
            }
            prop_assert_eq!(b.try_acquire(reopen), rejected(0));
            let duration = if c.slow_call_rate_percent == 0 { 1_000 } else { 0 };
            for i in 0..trials.min(fail_at + 1) {
                let (failed, last) = (fail_at == i, i + 1 == trials);
                let changed = b.record(failed, duration, reopen);
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
                let (len, ring) = (b.len, b.ring.len());
                prop_assert!(b.failures <= len && b.slow <= len && len as usize <= ring);
            }
        }
    }
}
