//! In-process counters (`Local` scope): sharded maps, bounded in size, with idle keys evicted.
//!
//! A counter is keyed by a 128-bit hash of its rule and key (xxh3, seeded with the rule's id), as
//! pingora-limits keys its estimators: no key strings are stored or compared, so a lookup is one
//! probe in a map of fixed-size slots, sized to the counter's shape (a single-rate token bucket
//! or fixed window needs two words). Two distinct keys share a counter only if their 128-bit
//! hashes collide, which at a million live keys has a probability below 10^-26. Memory is
//! bounded: when a shard is full, an arbitrary counter is dropped to make room (`evictions`).
//! Forgetting a counter only forgets a client's history, which is more permissive, never
//! stricter; bounded memory under a flood of distinct keys matters more.

use crate::lock::lock;
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

/// A counter of any shape: up to [`MAX_RATES`] states of any algorithm.
#[derive(Clone, Copy)]
struct Entry {
    states: [State; MAX_RATES],
    /// From this instant (Unix nanoseconds) the counter is back to its initial state, so a
    /// sweep may drop it (`algorithm::idle_at`, exact).
    idle_after: u64,
}

/// A counter of a single-rate `TokenBucket` or `FixedWindow` rule, the common shape: its state
/// is two words ([`State::to_pair`]), so a map slot (with its `u128` key) is 48 bytes instead of
/// [`Entry`]'s 224. With 100k live keys that is ~5 MB instead of ~22: the decision's cost is the
/// cache miss on the slot, and fewer bytes miss less.
#[derive(Clone, Copy)]
struct Pair {
    state: [u64; 2],
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

type CounterMap<V> = HashMap<CounterKey, V, BuildHasherDefault<IdentityHasher>>;

/// One shard's counters, by shape. A counter key always has one shape: its rule's id covers
/// the algorithm and every rate set its keys are decided with.
#[derive(Default)]
struct Counters {
    pairs: CounterMap<Pair>,
    entries: CounterMap<Entry>,
}

impl Counters {
    fn len(&self) -> usize {
        self.pairs.len() + self.entries.len()
    }

    /// Drops an arbitrary counter to make room.
    fn evict_one(&mut self) -> bool {
        if let Some(victim) = self.pairs.keys().next().copied() {
            return self.pairs.remove(&victim).is_some();
        }
        let victim = self.entries.keys().next().copied();
        victim.is_some_and(|victim| self.entries.remove(&victim).is_some())
    }
}

type Shard = Mutex<Counters>;

/// The counter key of `key` (the key parts as the engine writes them) under rule `rule_id`.
pub fn counter_key(rule_id: u64, key: &str) -> CounterKey {
    xxhash_rust::xxh3::xxh3_128_with_seed(key.as_bytes(), rule_id)
}

pub struct LocalStore {
    shards: Box<[Shard]>,
    max_per_shard: usize,
    evictions: AtomicU64,
}

/// The instant from which all of `states` are idle.
fn idle_after(algorithm: Algorithm, rates: &[Rate], states: &[State]) -> u64 {
    rates
        .iter()
        .zip(states)
        .map(|(rate, state)| algorithm::idle_at(algorithm, *rate, *state))
        .max()
        .unwrap_or(0)
}

/// True when counters of `rates` under `algorithm` are kept as a [`Pair`].
fn is_pair(algorithm: Algorithm, rates: &[Rate]) -> bool {
    rates.len() == 1 && State::fits_pair(algorithm)
}

impl LocalStore {
    /// `shards` maps (a power of two keeps shard selection cheap) holding at most `max_keys`
    /// counters in all.
    pub fn new(shards: usize, max_keys: usize) -> Self {
        let shards = shards.max(1).next_power_of_two();
        Self {
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            max_per_shard: (max_keys / shards).max(1),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard(&self, key: CounterKey) -> std::sync::MutexGuard<'_, Counters> {
        // The high bits pick the shard; the map uses the low ones.
        lock(&self.shards[((key >> 64) as usize) & (self.shards.len() - 1)])
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
        let mut shard = self.shard(key);
        if is_pair(algorithm, rates) {
            if let Some(pair) = shard.pairs.get_mut(&key) {
                let mut state = [State::from_pair(pair.state)];
                let result = algorithm::decide_all(algorithm, rates, &mut state, now, cost);
                *pair = Pair {
                    state: state[0].to_pair(),
                    idle_after: idle_after(algorithm, rates, &state),
                };
                return result;
            }
        } else if let Some(entry) = shard.entries.get_mut(&key) {
            let states = &mut entry.states[..rates.len()];
            let result = algorithm::decide_all(algorithm, rates, states, now, cost);
            entry.idle_after = idle_after(algorithm, rates, states);
            return result;
        }
        let mut states = [State::default(); MAX_RATES];
        let result = algorithm::decide_all(algorithm, rates, &mut states[..rates.len()], now, cost);
        if states != [State::default(); MAX_RATES] {
            let entry = Entry {
                idle_after: idle_after(algorithm, rates, &states),
                states,
            };
            self.insert(&mut shard, key, algorithm, rates, entry);
        }
        result
    }

    /// Stores a new counter, evicting another when the shard is full.
    fn insert(
        &self,
        shard: &mut Counters,
        key: CounterKey,
        algorithm: Algorithm,
        rates: &[Rate],
        entry: Entry,
    ) {
        let present = if is_pair(algorithm, rates) {
            shard.pairs.contains_key(&key)
        } else {
            shard.entries.contains_key(&key)
        };
        if !present && shard.len() >= self.max_per_shard && shard.evict_one() {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        if is_pair(algorithm, rates) {
            let pair = Pair {
                state: entry.states[0].to_pair(),
                idle_after: entry.idle_after,
            };
            shard.pairs.insert(key, pair);
        } else {
            shard.entries.insert(key, entry);
        }
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
            entry.states[i] = algorithm::consume(algorithm, *rate, states[i], now, cost);
        }
        entry.idle_after = idle_after(algorithm, rates, &entry.states);
        let mut shard = self.shard(key);
        if entry.idle_after <= now {
            shard.pairs.remove(&key);
            shard.entries.remove(&key);
        } else {
            self.insert(&mut shard, key, algorithm, rates, entry);
        }
    }

    /// Drops every counter idle at `now`. Run periodically.
    pub fn sweep(&self, now: u64) -> usize {
        let mut removed = 0;
        for shard in self.shards.iter() {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.pairs.retain(|_, pair| pair.idle_after > now);
            shard.entries.retain(|_, entry| entry.idle_after > now);
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
    fn the_bound_holds_across_counter_shapes() {
        let store = LocalStore::new(1, 10);
        let two_rates = [per_second(5)[0], per_second(50)[0]];
        for i in 0..100 {
            let (algorithm, rates): (_, &[Rate]) = match i % 3 {
                0 => (Algorithm::TokenBucket, &per_second(5)),
                1 => (Algorithm::SlidingWindow, &per_second(5)),
                _ => (Algorithm::FixedWindow, &two_rates),
            };
            store.decide(counter_key(1, &format!("k{i}")), algorithm, rates, 0, 1);
            assert!(store.len() <= 10, "{}", store.len());
        }
        assert_eq!(store.evictions(), 90);
    }

    proptest::proptest! {
        /// A two-word counter decides exactly as the algorithm does on a whole state.
        #[test]
        fn pairs_decide_as_whole_states_do(
            token_bucket in proptest::bool::ANY,
            limit in 1u64..20,
            steps in proptest::collection::vec((0u64..400_000_000, 0u64..5), 1..60),
        ) {
            let algorithm = if token_bucket { Algorithm::TokenBucket } else { Algorithm::FixedWindow };
            let rates = per_second(limit);
            let store = LocalStore::new(1, 10);
            let key = counter_key(1, "k");
            let mut reference = [State::default()];
            let mut now = 0;
            for (elapsed, cost) in steps {
                now += elapsed;
                let expected = algorithm::decide_all(algorithm, &rates, &mut reference, now, cost);
                proptest::prop_assert_eq!(store.decide(key, algorithm, &rates, now, cost), expected);
            }
        }
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
