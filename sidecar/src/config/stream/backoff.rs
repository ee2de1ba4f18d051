//! Reconnect delays: exponential backoff with full jitter.
//!
//! The ceiling doubles after every failed attempt, from `base` up to `cap`; each delay is drawn
//! uniformly between `base` and the current ceiling, so a fleet of sidecars that lost the
//! operator at the same moment does not come back in lockstep, and no sidecar ever retries
//! sooner than `base` (never a tight loop). [`Backoff::reset`] starts over after a connection
//! that delivered data.

use std::{
    hash::{BuildHasher, RandomState},
    time::Duration,
};

pub struct Backoff {
    base: Duration,
    cap: Duration,
    /// Failed attempts since the last reset.
    attempts: u32,
    /// splitmix64 state: jitter needs no cryptographic randomness, only independence between
    /// processes, which the per-process random seed gives.
    rng: u64,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self::with_seed(base, cap, RandomState::new().hash_one(std::process::id()))
    }

    pub fn with_seed(base: Duration, cap: Duration, seed: u64) -> Self {
        Self {
            base,
            cap: cap.max(base),
            attempts: 0,
            rng: seed,
        }
    }

    /// The upper bound of the next delay: `base × 2^attempts`, at most `cap`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempts.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt; the ceiling then doubles.
    pub fn next_delay(&mut self) -> Duration {
        let (low, high) = (self.base, self.ceiling());
        self.attempts = self.attempts.saturating_add(1);
        let span = (high - low).as_nanos() as u64;
        if span == 0 {
            return low;
        }
        low + Duration::from_nanos(self.next_random() % (span + 1))
    }

    /// Back to the shortest delays.
    pub fn reset(&mut self) {
        self.attempts = 0;
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(200);
    const CAP: Duration = Duration::from_secs(30);

    #[test]
    fn delays_stay_between_base_and_a_doubling_ceiling_up_to_the_cap() {
        let mut backoff = Backoff::with_seed(BASE, CAP, 7);
        for attempt in 0..100u32 {
            let ceiling = BASE
                .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .min(CAP);
            assert_eq!(backoff.ceiling(), ceiling, "attempt {attempt}");
            let delay = backoff.next_delay();
            assert!(
                delay >= BASE && delay <= ceiling,
                "attempt {attempt}: {delay:?}"
            );
        }
        assert_eq!(backoff.ceiling(), CAP);
    }

    #[test]
    fn delays_are_jittered_over_the_whole_range() {
        let mut backoff = Backoff::with_seed(BASE, CAP, 42);
        for _ in 0..20 {
            backoff.next_delay();
        }
        let delays: Vec<Duration> = (0..1000).map(|_| backoff.next_delay()).collect();
        let min = *delays.iter().min().unwrap();
        let max = *delays.iter().max().unwrap();
        assert!(min < CAP / 10, "{min:?}");
        assert!(max > CAP * 9 / 10, "{max:?}");
        let mean = delays.iter().sum::<Duration>() / 1000;
        assert!(mean > CAP * 4 / 10 && mean < CAP * 6 / 10, "{mean:?}");
        // Two processes (seeds) do not draw the same delays.
        let mut other = Backoff::with_seed(BASE, CAP, 43);
        for _ in 0..20 {
            other.next_delay();
        }
        let others: Vec<Duration> = (0..1000).map(|_| other.next_delay()).collect();
        assert_ne!(delays, others);
    }

    #[test]
    fn reset_starts_over_from_base() {
        let mut backoff = Backoff::with_seed(BASE, CAP, 1);
        for _ in 0..10 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.ceiling(), BASE);
        assert_eq!(backoff.next_delay(), BASE);
        assert_eq!(backoff.ceiling(), BASE * 2);
    }

    #[test]
    fn a_cap_below_base_is_base() {
        let mut backoff = Backoff::with_seed(BASE, Duration::ZERO, 1);
        assert_eq!(backoff.next_delay(), BASE);
        assert_eq!(backoff.next_delay(), BASE);
    }
}
