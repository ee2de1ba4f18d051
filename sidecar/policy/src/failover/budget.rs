//! Retry budget, as Linkerd's and Finagle's: retries may be at most `percent` % of the recent
//! requests, plus a floor of `min_per_second` retries per second, so that retries cannot
//! multiply the load of an upstream in trouble (with 2 retries per call, an outage would
//! otherwise triple it), while a quiet upstream still gets its few retries.
//!
//! "Recent" is the last [`BUCKETS`] whole seconds: ten one-second buckets in a fixed array,
//! bucket `s % 10` holding second `s = ⌊now / 1 s⌋`, and a bucket still holding an older second
//! cleared when it is next written (the window is the buckets whose second is within the last
//! ten). [`RetryBudget::try_retry`] grants a retry iff
//!
//! `retries_in_window < ⌊requests_in_window · percent / 100⌋ + min_per_second · 10`
//!
//! and counts it when granted; so after every grant, the window holds at most that many
//! retries. `percent` may exceed 100 (more than one retry per request). Time is `now` in
//! nanoseconds from any monotonic origin; nothing here reads a clock, allocates, locks or
//! panics, and counts saturate. A `now` earlier than the latest seen counts as the latest
//! second (so time going backwards never reopens a bucket already reused).

/// Seconds in the window, one bucket each.
pub const BUCKETS: usize = 10;

const SECOND: u64 = 1_000_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BudgetConfig {
    /// Retries allowed per 100 requests in the window.
    pub percent: u8,
    /// Retries allowed per second whatever the requests (×10 over the window).
    pub min_per_second: u32,
}

impl Default for BudgetConfig {
    /// Linkerd's defaults.
    fn default() -> Self {
        Self {
            percent: 20,
            min_per_second: 10,
        }
    }
}

#[derive(Clone, Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    /// The second each bucket counts; its counts are stale when that is not in the window.
    seconds: [u64; BUCKETS],
    requests: [u64; BUCKETS],
    retries: [u64; BUCKETS],
    /// The latest second written.
    latest: u64,
}

impl RetryBudget {
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            seconds: [0; BUCKETS],
            requests: [0; BUCKETS],
            retries: [0; BUCKETS],
            latest: 0,
        }
    }

    /// Counts an original request (not a retry) at `now`.
    pub fn record_request(&mut self, now: u64) {
        let i = self.bucket(now);
        self.requests[i] = self.requests[i].saturating_add(1);
    }

    /// Whether a retry may be made at `now`; a granted one is counted.
    pub fn try_retry(&mut self, now: u64) -> bool {
        let (requests, retries) = self.snapshot(now);
        let allowed = requests.saturating_mul(u64::from(self.config.percent)) / 100;
        let floor = u64::from(self.config.min_per_second).saturating_mul(BUCKETS as u64);
        if retries >= allowed.saturating_add(floor) {
            return false;
        }
        let i = self.bucket(now);
        self.retries[i] = self.retries[i].saturating_add(1);
        true
    }

    /// (requests, retries) in the window at `now`.
    pub fn snapshot(&self, now: u64) -> (u64, u64) {
        let second = self.latest.max(now / SECOND);
        let mut totals = (0u64, 0u64);
        for i in 0..BUCKETS {
            if second.saturating_sub(self.seconds[i]) < BUCKETS as u64 {
                totals.0 = totals.0.saturating_add(self.requests[i]);
                totals.1 = totals.1.saturating_add(self.retries[i]);
            }
        }
        totals
    }

    /// The bucket to count in at `now`, cleared first if it held an older second.
    fn bucket(&mut self, now: u64) -> usize {
        self.latest = self.latest.max(now / SECOND);
        let i = (self.latest % BUCKETS as u64) as usize;
        if self.seconds[i] != self.latest {
            self.seconds[i] = self.latest;
            self.requests[i] = 0;
            self.retries[i] = 0;
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn budget(percent: u8, min_per_second: u32) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            percent,
            min_per_second,
        })
    }

    #[test]
    fn outage() {
        // 1000 requests over 10 s, each wanting 2 retries: 20 % + 1/s allows 200 + 10.
        let mut b = budget(20, 1);
        let mut granted = 0;
        for n in 0..1000 {
            let now = n * 10_000_000;
            b.record_request(now);
            granted += (0..2).filter(|_| b.try_retry(now)).count();
        }
        assert_eq!(granted, 210);
        assert_eq!(b.snapshot(9 * SECOND), (1000, 210));
    }

    #[test]
    fn floor_and_sliding() {
        let mut b = budget(50, 2);
        // No requests: the floor alone, 2/s over 10 s.
        assert_eq!((0..30).filter(|_| b.try_retry(SECOND)).count(), 20);
        (0..10).for_each(|_| b.record_request(3 * SECOND));
        assert_eq!((0..30).filter(|_| b.try_retry(4 * SECOND)).count(), 5);
        // At 11 s the first retries (second 1) leave the window; at 13 s the requests do.
        assert_eq!(b.snapshot(10 * SECOND), (10, 25));
        assert_eq!(b.snapshot(11 * SECOND), (10, 5));
        assert_eq!(b.snapshot(13 * SECOND), (0, 5));
        assert_eq!((0..30).filter(|_| b.try_retry(13 * SECOND)).count(), 15);
        // Backwards: counted in the latest second, which stays in the window.
        b.record_request(0);
        assert_eq!(b.snapshot(0), (1, 20));
        assert_eq!(b.snapshot(22 * SECOND), (1, 15));
        assert_eq!(b.snapshot(23 * SECOND), (0, 0));
    }

    #[test]
    fn extremes() {
        let mut b = budget(255, u32::MAX);
        (0..3).for_each(|_| b.record_request(u64::MAX));
        assert!(b.try_retry(u64::MAX) && b.try_retry(0));
        let mut b = budget(0, 0);
        (0..100).for_each(|_| b.record_request(5));
        assert!(!b.try_retry(5));
        let d = BudgetConfig::default();
        assert_eq!((d.percent, d.min_per_second), (20, 10));
    }

    // Property tests: events a few hundred milliseconds apart, so windows slide often.

    fn config(cases: u32) -> ProptestConfig {
        let mut c = ProptestConfig::with_cases(cases);
        c.failure_persistence = None;
        c
    }

    /// (gap, is a retry attempt) steps.
    fn steps() -> impl Strategy<Value = Vec<(u64, bool)>> {
        let gap = prop_oneof![3 => Just(0u64), 3 => 0..SECOND / 2, 1 => 0..4 * SECOND];
        prop::collection::vec((gap, any::<bool>()), 0..300)
    }

    proptest! {
        #![proptest_config(config(500))]

        /// Every decision is the one a recount over the window's events makes: granted iff the
        /// window's retries stay within percent % of its requests + the floor. So the bound
        /// always holds, and no retry under it is refused.
        #[test]
        fn agrees_with_recount(percent in 0..=150u8, floor in 0..=3u32, steps in steps()) {
            let mut b = budget(percent, floor);
            let (mut now, mut events) = (0u64, Vec::<(u64, bool)>::new());
            for (gap, retry) in steps {
                now += gap;
                let s = now / SECOND;
                let recent = |e: &&(u64, bool)| s - e.0 < BUCKETS as u64;
                let requests = events.iter().filter(recent).filter(|e| !e.1).count() as u64;
                let retries = events.iter().filter(recent).filter(|e| e.1).count() as u64;
                prop_assert_eq!(b.snapshot(now), (requests, retries));
                let allowance = requests * u64::from(percent) / 100 + u64::from(floor) * 10;
                if !retry {
                    b.record_request(now);
                    events.push((s, false));
                } else if b.try_retry(now) {
                    prop_assert!(retries < allowance);
                    events.push((s, true));
                } else {
                    prop_assert!(retries >= allowance);
                }
            }
        }

        /// Plenty of requests, few retries: each second's requests come first, then at most
        /// percent % of them retry. All are granted, floor or not.
        #[test]
        fn no_false_refusals(
            percent in 1..=100u8,
            floor in 0..=2u32,
            seconds in prop::collection::vec((0..=3u64, 0..=300u64), 1..40),
        ) {
            let mut b = budget(percent, floor);
            let mut s = 0;
            for (gap, requests) in seconds {
                s += gap;
                let now = s * SECOND;
                (0..requests).for_each(|i| b.record_request(now + i));
                for i in 0..requests * u64::from(percent) / 100 {
                    prop_assert!(b.try_retry(now + requests + i));
                }
            }
        }

        /// Any times at all, backwards included: no panic, and the snapshot never counts more
        /// retries than were granted.
        #[test]
        fn never_panics(
            c in any::<(u8, u32)>(),
            steps in prop::collection::vec(any::<(u64, bool)>(), 0..60),
        ) {
            let mut b = budget(c.0, c.1);
            let mut granted = 0;
            for (now, retry) in steps {
                if retry {
                    granted += u64::from(b.try_retry(now));
                } else {
                    b.record_request(now);
                }
                prop_assert!(b.snapshot(now).1 <= granted);
            }
        }
    }
}
