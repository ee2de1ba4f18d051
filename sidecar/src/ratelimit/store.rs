//! In-process counters (`Local` scope): sharded maps, bounded in size, with idle keys evicted.
//!
//! A counter is keyed by a 128-bit hash of its rule and key (xxh3, seeded with the rule's id), as
//! pingora-limits keys its estimators: no key strings are stored or compared, so a lookup is one
//! probe in a map of fixed-size entries. Two distinct keys share a counter only if their 128-bit
//! hashes collide, which at a million live keys has a probability below 10^-26. Memory is bounded: when a shard is full, an arbitrary counter is
//! dropped to make room (`evictions`). Forgetting a counter only forgets a client's history, which
//! is more permissive, never stricter; bounded memory under a flood of distinct keys matters more.

use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
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

/// The counter key: already a uniform hash, so the map uses its low bits as they are.
pub type CounterKey = u128;

/// Hashes a key that is already a hash: takes its low 64 bits.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` keys are hashed; this path is for completeness.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

type Shard = Mutex<HashMap<CounterKey, Entry, BuildHasherDefault<IdentityHasher>>>;

/// The counter key of `key` (the key parts as the engine writes them) under rule `rule_id`.
pub fn counter_key(rule_id: u64, key: &str) -> CounterKey {
    xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), rule_id)
}

pub struct LocalStore {
    shards: Box<[Shard]>,
    max_per_shard: usize,
    evictions: AtomicU64,
}

impl LocalStore {
    /// `shards` maps (a power of two keeps shard selection cheap) holding at most `max_keys`
    /// counters in all.
    pub fn new(shards: usize, max_keys: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            max_per_shard: (max_keys / shards).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: CounterKey) -> &Shard {
        // The high bits pick the shard; the map uses the low ones.
        &self.shards[((key >> 64) as usize) & (self.shards.len() - 1)]
    }

    /// Decides a request of `cost` against every rate of the counter `key`, all-or-nothing.
    pub fn decide(
        &self,
        key: CounterKey,
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
        if let Some(entry) = shard.get_mut(&key) {
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
                let victim = shard.keys().next().copied();
                if let Some(victim) = victim {
                    shard.remove(&victim);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                }
            }
            shard.insert(
                key,
                Entry {
                    states,
                    idle_after: idle_after(&states),
                },
            );
        }
        result
    }

    /// Sets the counter `key` to `states` (fast global mode: the state Redis returned), then
    /// spends `cost` on it at `now` (what was admitted here while Redis answered).
    pub fn replace(
        &self,
        key: CounterKey,
        algorithm: Algorithm,
        rates: &[Rate],
        states: &[State],
        now: u64,
        cost: u64,
    ) {
        let rates = &rates[..rates.len().min(MAX_RATES).min(states.len())];
        let mut entry = Entry {
            states: [State::default(); MAX_RATES],
            idle_after: 0,
        };
        for (i, rate) in rates.iter().enumerate() {
            let state = algorithm::consume(algorithm, *rate, states[i], now, cost);
            entry.states[i] = state;
            entry.idle_after = entry
                .idle_after
                .max(algorithm::idle_at(algorithm, *rate, state));
        }
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entry.idle_after <= now {
            shard.remove(&key);
        } else {
            shard.insert(key, entry);
        }
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
        let allowed = |key| {
            store
                .decide(key, Algorithm::FixedWindow, &rates, 0, 1)
                .0
                .allowed
        };
        for name in ["a", "b"] {
            let key = counter_key(1, name);
            assert!(allowed(key) && allowed(key), "{name}");
            assert!(!allowed(key), "{name}");
        }
        // The same key under another rule is another counter.
        assert!(allowed(counter_key(2, "a")));
        assert_eq!(store.len(), 3);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_keys() {
        let store = LocalStore::new(4, 100);
        let rates = per_second(10);
        for i in 0..10_000 {
            store.decide(
                counter_key(1, &format!("client-{i}")),
                Algorithm::TokenBucket,
                &rates,
                0,
                1,
            );
        }
        assert!(store.len() <= 100, "{}", store.len());
        assert!(store.evictions() >= 9_900);
    }

    #[test]
    fn sweep_drops_only_idle_counters() {
        let store = LocalStore::new(2, 100);
        let rates = per_second(10);
        store.decide(
            counter_key(1, "old"),
            Algorithm::SlidingWindow,
            &rates,
            0,
            1,
        );
        store.decide(
            counter_key(1, "new"),
            Algorithm::SlidingWindow,
            &rates,
            3 * SECOND,
            1,
        );
        assert_eq!(store.sweep(3 * SECOND), 1);
        assert_eq!(store.len(), 1);
        assert_eq!(store.sweep(10 * SECOND), 1);
        assert!(store.is_empty());
    }
}
