//! Local quota usage in memory: one entry per (quota, key) used in its current period.
//!
//! Each entry remembers the period it counts for, so a request in a later period starts from
//! zero without any reset job, and entries of ended periods are dropped by [`UsageStore::sweep`].
//! Entries changed since the last flush are marked dirty; the flusher writes them to the on-disk
//! store ([`super::store::QuotaDb`]).

use crate::lock::lock;
use std::{
    collections::HashMap,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::period::Period;

/// The key value of a Local quota's usage key, as it is kept in memory and on disk: the first
/// 128 bits of its SHA-256, in hex. The value itself is never needed back (overrides and
/// `/quota` lookups digest the value they are given), and the store must not hold API keys or
/// bearer tokens. A cryptographic hash because a fast one (xxh3) can be inverted for short
/// inputs. Low-entropy values (client IPs, user ids) can still be guessed by hashing
/// candidates: the digest hides secrets, not identities (docs/security.md).
pub fn push_value_digest(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, value.as_bytes());
    for b in &digest.as_ref()[..DIGEST_BYTES] {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

const DIGEST_BYTES: usize = 16;

/// Usage of one (quota, key) in one period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    pub period: Period,
    pub used: u64,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    usage: Usage,
    /// Changed since it was last handed to the flusher.
    dirty: bool,
}

/// The result of charging a key: usage before and after, and whether it was admitted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Charge {
    pub admitted: bool,
    pub before: u64,
    pub after: u64,
}

/// Whether a request of `cost` fits a budget of `limit` with `used` spent. A request costs at
/// least one unit for this check, so a used-up budget refuses even requests charged later
/// (response bytes) or charged nothing (an empty body).
pub fn fits(used: u64, cost: u64, limit: u64) -> bool {
    used.saturating_add(cost.max(1)) <= limit
}

const SHARDS: usize = 16;

/// The default bound on (quota, key) entries (each roughly 100 to 200 bytes with its key).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Sharded by key hash so concurrent requests rarely contend on one lock. Bounded: once
/// `max_keys` entries exist, a key not yet charged this period is not taken in (see
/// [`UsageStore::charge`]); entries of ended periods make room again when swept.
pub struct UsageStore {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    max_keys: usize,
    /// Entries held, kept beside the maps so the bound costs no lock walk.
    len: AtomicUsize,
}

impl Default for UsageStore {
    fn default() -> Self {
        Self::new()
    }
}

impl UsageStore {
    pub fn new() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }

    pub fn with_max_keys(max_keys: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            max_keys,
            len: AtomicUsize::new(0),
        }
    }

    /// Inserts or replaces `key`'s entry, keeping `len` right.
    fn put(&self, shard: &mut HashMap<String, Entry>, key: String, entry: Entry) {
        if shard.insert(key, entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let i = (xxhash_rust::xxh3::xxh3_64(key.as_bytes()) % SHARDS as u64) as usize;
        // A panic while holding the lock leaves plain counters behind: still usable.
        lock(&self.shards[i])
    }

    /// Charges `cost` to `key` in `period` if it [`fits`] within `limit`; with `force`,
    /// charges it unconditionally (usage counted after the fact). `None` when the store is full
    /// and `key` has no entry: nothing is charged, and the caller decides (the engine admits
    /// the request uncounted, so filling the store cannot lock new clients out).
    pub fn charge(
        &self,
        key: &str,
        period: Period,
        cost: u64,
        limit: u64,
        force: bool,
    ) -> Option<Charge> {
        let mut shard = self.shard(key);
        let existing = shard.get(key);
        if existing.is_none() && cost > 0 && self.len.load(Ordering::Relaxed) >= self.max_keys {
            return None;
        }
        let used = existing
            .filter(|e| e.usage.period == period)
            .map_or(0, |e| e.usage.used);
        let admitted = force || fits(used, cost, limit);
        let after = if admitted {
            used.saturating_add(cost)
        } else {
            used
        };
        if admitted && cost > 0 {
            self.put(
                &mut shard,
                key.to_owned(),
                Entry {
                    usage: Usage {
                        period,
                        used: after,
                    },
                    dirty: true,
                },
            );
        }
        Some(Charge {
            admitted,
            before: used,
            after,
        })
    }

    /// The usage of `key` in `period` (0 if none).
    pub fn used(&self, key: &str, period: Period) -> u64 {
        self.shard(key)
            .get(key)
            .filter(|e| e.usage.period == period)
            .map_or(0, |e| e.usage.used)
    }

    /// Adds usage read back from disk (or from a previous process): added, not replaced, so
    /// counts made before the store was opened are kept.
    pub fn merge(&self, key: String, usage: Usage) {
        let mut shard = self.shard(&key);
        match shard.get_mut(&key) {
            Some(e) if e.usage.period == usage.period => {
                e.usage.used = e.usage.used.saturating_add(usage.used);
                e.dirty = true;
            }
            // A newer period in memory wins over an older one on disk.
            Some(e) if e.usage.period.start > usage.period.start => {}
            _ => self.put(
                &mut shard,
                key,
                Entry {
                    usage,
                    dirty: false,
                },
            ),
        }
    }

    /// Entries changed since the last call, now marked clean.
    pub fn take_dirty(&self) -> Vec<(String, Usage)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut shard = lock(shard);
            for (key, entry) in shard.iter_mut().filter(|(_, e)| e.dirty) {
                entry.dirty = false;
                out.push((key.clone(), entry.usage));
            }
        }
        out
    }

    /// Marks entries dirty again (their write failed), unless they changed meanwhile.
    pub fn restore_dirty(&self, entries: &[(String, Usage)]) {
        for (key, usage) in entries {
            if let Some(e) = self.shard(key).get_mut(key)
                && e.usage.period == usage.period
            {
                e.dirty = true;
            }
        }
    }

    /// Drops entries whose period ended before `now_seconds`.
    pub fn sweep(&self, now_seconds: i64) {
        for shard in &self.shards {
            let mut shard = lock(shard);
            let before = shard.len();
            shard.retain(|_, e| e.usage.period.end > now_seconds);
            self.len.fetch_sub(before - shard.len(), Ordering::Relaxed);
        }
    }

    /// Up to `max` keys starting with `prefix`, sorted, with their usage.
    pub fn list(&self, prefix: &str, max: usize) -> Vec<(String, Usage)> {
        let mut out: Vec<(String, Usage)> = self
            .shards
            .iter()
            .flat_map(|shard| {
                lock(shard)
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(k, e)| (k.clone(), e.usage))
                    .collect::<Vec<_>>()
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.truncate(max);
        out
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P1: Period = Period { start: 0, end: 100 };

    #[test]
    fn value_digest_is_the_first_half_of_sha256_in_hex() {
        let digest = |v: &str| {
            let mut out = String::new();
            push_value_digest(&mut out, v);
            out
        };
        // FIPS 180-2's "abc" vector, and `printf demo-key | sha256sum` (docs/quotas.md).
        assert_eq!(digest("abc"), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(digest("demo-key"), "c48a01f49fd0f2cc404bc3cbbc80e914");
    }
    const P2: Period = Period {
        start: 100,
        end: 200,
    };

    #[test]
    fn charges_within_the_limit_and_resets_with_the_period() {
        let store = UsageStore::new();
        assert!(store.charge("k", P1, 3, 5, false).unwrap().admitted);
        let c = store.charge("k", P1, 3, 5, false).unwrap();
        assert_eq!(
            c,
            Charge {
                admitted: false,
                before: 3,
                after: 3
            }
        );
        assert!(store.charge("k", P1, 2, 5, false).unwrap().admitted);
        assert!(
            !store.charge("k", P1, 0, 5, false).unwrap().admitted,
            "used up"
        );
        assert_eq!(store.used("k", P1), 5);
        assert!(
            store.charge("k", P2, 5, 5, false).unwrap().admitted,
            "a new period"
        );
        assert_eq!(store.used("k", P1), 0, "the old period is gone");
    }

    #[test]
    fn forced_charges_go_over_the_limit() {
        let store = UsageStore::new();
        let c = store.charge("k", P1, 10, 5, true).unwrap();
        assert_eq!(c.after, 10);
        assert!(!store.charge("k", P1, 0, 5, false).unwrap().admitted);
    }

    #[test]
    fn dirty_entries_are_handed_out_once_and_merges_add() {
        let store = UsageStore::new();
        store.charge("a", P1, 1, 10, false).unwrap();
        store.charge("b", P1, 2, 10, false).unwrap();
        let mut dirty = store.take_dirty();
        dirty.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(dirty.len(), 2);
        assert!(store.take_dirty().is_empty());
        store.restore_dirty(&dirty);
        assert_eq!(store.take_dirty().len(), 2);

        store.merge(
            "a".into(),
            Usage {
                period: P1,
                used: 4,
            },
        );
        assert_eq!(store.used("a", P1), 5);
        // An older period on disk does not replace the current one in memory.
        store.charge("c", P2, 1, 10, false).unwrap();
        store.merge(
            "c".into(),
            Usage {
                period: P1,
                used: 7,
            },
        );
        assert_eq!(store.used("c", P2), 1);
    }

    #[test]
    fn sweep_drops_ended_periods() {
        let store = UsageStore::new();
        store.charge("old", P1, 1, 10, false).unwrap();
        store.charge("new", P2, 1, 10, false).unwrap();
        store.sweep(100);
        assert_eq!(store.len(), 1);
        assert_eq!(store.list("", 10)[0].0, "new");
    }

    #[test]
    fn the_bound_refuses_new_keys_until_a_sweep_makes_room() {
        let store = UsageStore::with_max_keys(2);
        store.charge("a", P1, 1, 10, false).unwrap();
        store.charge("b", P1, 1, 10, false).unwrap();
        assert_eq!(store.charge("c", P1, 1, 10, false), None, "full");
        assert!(
            store.charge("a", P1, 1, 10, false).unwrap().admitted,
            "keys already held are charged as before"
        );
        assert_eq!(store.len(), 2);
        store.sweep(P1.end);
        assert_eq!(store.len(), 0);
        assert!(store.charge("c", P2, 1, 10, false).unwrap().admitted);
    }
}
