//! In-process counters (`Local` scope): sharded maps, bounded in size, with idle keys evicted.
//!
//! A counter is keyed by a string that starts with its rule's id, so rules never share state and
//! lookups need no allocation. Memory is bounded: when a shard is full, an arbitrary counter is
//! dropped to make room (`evictions`). Forgetting a counter only forgets a client's history, which
//! is more permissive, never stricter; bounded memory under a flood of distinct keys matters more.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use super::algorithm::{self, Algorithm, Outcome, Rate, State};

/// The most rates a rule may have (the CRD allows 4).
pub const MAX_RATES: usize = 4;

struct Entry {
    states: [State; MAX_RATES],
    /// From this instant (Unix nanoseconds) the counter is back to its initial state, so a
    /// sweep may drop it (`algorithm::idle_at`, exact).
    idle_after: u64,
}

type Shard = Mutex<HashMap<Box<str>, Entry>>;

pub struct LocalStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    max_per_shard: usize,
    evictions: AtomicU64,
}

impl LocalStore {
    /// `shards` maps (a power of two keeps shard selection cheap) holding at most `max_keys`
    /// counters in all.
    pub fn new(shards: usize, max_keys: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            max_per_shard: (max_keys / shards).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: &str) -> &Shard {
        &self.shards[(self.hasher.hash_one(key) as usize) & (self.shards.len() - 1)]
    }

    /// Decides a request of `cost` against every rate of the counter `key`, all-or-nothing.
    pub fn decide(
        &self,
        key: &str,
        algorithm: Algorithm,
        rates: &[Rate],
        now: u64,
        cost: u64,
    ) -> (Outcome, usize) {
        let rates = &rates[..rates.len().min(MAX_RATES)];
        let idle_after = |states: &[State]| {
            rates
                .iter()
                .zip(states)
                .map(|(rate, state)| algorithm::idle_at(algorithm, *rate, *state))
                .max()
                .unwrap_or(0)
        };
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(entry) = shard.get_mut(key) {
            let result = algorithm::decide_all(
                algorithm,
                rates,
                &mut entry.states[..rates.len()],
                now,
                cost,
            );
            entry.idle_after = idle_after(&entry.states);
            return result;
        }
        let mut states = [State::default(); MAX_RATES];
        let result = algorithm::decide_all(algorithm, rates, &mut states[..rates.len()], now, cost);
        if states != [State::default(); MAX_RATES] {
            if shard.len() >= self.max_per_shard {
                let victim = shard.keys().next().cloned();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            shard.insert(
                key.into(),
                Entry {
                    states,
                    idle_after: idle_after(&states),
                },
            );
        }
        result
    }

    /// Drops every counter idle at `now`. Run periodically.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let before = shard.len();
            shard.retain(|_, entry| entry.idle_after > now);
            removed += before - shard.len();
        }
        removed
    }

    /// Counters held now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.len()).unwrap_or(0))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Counters dropped because a shard was full, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn per_second(limit: u64) -> [Rate; 1] {
        [Rate {
            limit,
            window_nanos: SECOND,
            burst: limit,
        }]
    }

    #[test]
    fn keys_are_counted_apart() {
        let store = LocalStore::new(4, 1000);
        let rates = per_second(2);
        for key in ["a", "b"] {
            for _ in 0..2 {
                assert!(
                    store
                        .decide(key, Algorithm::FixedWindow, &rates, 0, 1)
                        .0
                        .allowed
                );
            }
            assert!(
                !store
                    .decide(key, Algorithm::FixedWindow, &rates, 0, 1)
                    .0
                    .allowed,
                "{key}"
            );
        }
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let store = LocalStore::new(4, 100);
        let rates = per_second(10);
        for i in 0..10_000 {
            store.decide(&format!("client-{i}"), Algorithm::TokenBucket, &rates, 0, 1);
        }
        assert!(store.len() <= 100, "{}", store.len());
        assert!(store.evictions() >= 9_900);
    }

    #[test]
    fn sweep_drops_only_idle_counters() {
        let store = LocalStore::new(2, 100);
        let rates = per_second(10);
        store.decide("old", Algorithm::SlidingWindow, &rates, 0, 1);
        store.decide("new", Algorithm::SlidingWindow, &rates, 3 * SECOND, 1);
        assert_eq!(store.sweep(3 * SECOND), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.sweep(10 * SECOND), 1);
        assert!(store.is_empty());
    }
}
