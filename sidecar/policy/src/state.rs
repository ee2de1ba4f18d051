//! Long-lived state of the policy features, kept across snapshots by identity.
//!
//! A snapshot is compiled whole and swapped whole, but some of what the features hold must not
//! start over with every policy change: a JWT policy's verified tokens, upstream health,
//! ejections, circuit breakers and retry budgets (webhook queues live in the outbox, one per
//! process, not here: they outlive every policy). Each such state has an
//! identity (a hash of whatever makes it valid: a policy's key material, an upstream's
//! address); compiling a snapshot asks the registry for the state of each identity it needs
//! (reusing what is held, creating what is not, changing nothing), and installing the compiled
//! policy reconciles the registry to exactly what that policy uses. A snapshot that fails to
//! compile therefore leaves the registry as it was. Background services started once (health
//! probes, delivery) read the registry, since the proxy cannot add services once it serves.
//!
//! (Rate-limit counters and quota usage are the same idea in their own stores, keyed per key
//! and bounded by size, with their own eviction.)

use std::{
    any::{Any, TypeId},
    cell::RefCell,
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::lock::lock;

type Entry = Arc<dyn Any + Send + Sync>;

/// A state's identity: its type and a hash of what makes it valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StateKey {
    kind: TypeId,
    id: u64,
}

impl StateKey {
    fn of<T: Any>(id: u64) -> Self {
        Self {
            kind: TypeId::of::<T>(),
            id,
        }
    }
}

/// The states the installed policy uses.
#[derive(Default)]
pub struct StateRegistry {
    held: Mutex<HashMap<StateKey, Entry>>,
}

impl StateRegistry {
    /// The held state of type `T` with identity `id`.
    pub fn get<T: Any + Send + Sync>(&self, id: u64) -> Option<Arc<T>> {
        let entry = lock(&self.held).get(&StateKey::of::<T>(id))?.clone();
        entry.downcast().ok()
    }

    /// Every held state of type `T`, with its identity (for background services).
    pub fn all<T: Any + Send + Sync>(&self) -> Vec<(u64, Arc<T>)> {
        lock(&self.held)
            .iter()
            .filter(|(key, _)| key.kind == TypeId::of::<T>())
            .filter_map(|(key, entry)| Some((key.id, entry.clone().downcast().ok()?)))
            .collect()
    }

    /// Holds exactly `used`: states no longer used are dropped, new ones kept.
    pub fn reconcile(&self, used: &StateSet) {
        *lock(&self.held) = used.entries.clone();
    }

    pub fn len(&self) -> usize {
        lock(&self.held).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The states one compiled policy uses, found in the registry or new.
#[derive(Clone, Default)]
pub struct StateSet {
    entries: HashMap<StateKey, Entry>,
}

impl StateSet {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Compiling's view of the registry: read-only lookups, and the states the snapshot uses.
pub struct StateClaims<'a> {
    registry: Option<&'a StateRegistry>,
    used: RefCell<StateSet>,
}

impl<'a> StateClaims<'a> {
    pub fn new(registry: &'a StateRegistry) -> Self {
        Self {
            registry: Some(registry),
            used: RefCell::default(),
        }
    }

    /// Nothing held: every state starts new (tools that only check a snapshot, tests).
    pub fn fresh() -> Self {
        Self {
            registry: None,
            used: RefCell::default(),
        }
    }

    /// The state of identity `id`: the one the registry holds, or one two rules of this
    /// snapshot already share, or `new()`; the registry itself is not changed.
    pub fn claim<T: Any + Send + Sync>(&self, id: u64, new: impl FnOnce() -> T) -> Arc<T> {
        let key = StateKey::of::<T>(id);
        if let Some(entry) = self.used.borrow().entries.get(&key)
            && let Ok(state) = entry.clone().downcast::<T>()
        {
            return state;
        }
        let state = self
            .registry
            .and_then(|r| r.get::<T>(id))
            .unwrap_or_else(|| Arc::new(new()));
        self.used
            .borrow_mut()
            .entries
            .insert(key, state.clone() as Entry);
        state
    }

    /// The states claimed.
    pub fn into_used(self) -> StateSet {
        self.used.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Cache(Mutex<Vec<u32>>);

    #[test]
    fn state_survives_while_its_identity_is_used_and_only_install_changes_the_registry() {
        let registry = StateRegistry::default();
        let first = StateClaims::new(&registry);
        let a = first.claim::<Cache>(1, Cache::default);
        lock(&a.0).push(7);
        assert!(registry.is_empty(), "claiming does not change the registry");
        registry.reconcile(&first.into_used());

        // The next snapshot uses identity 1 again and a new identity 2.
        let second = StateClaims::new(&registry);
        let again = second.claim::<Cache>(1, Cache::default);
        assert_eq!(*lock(&again.0), vec![7], "the same state");
        assert!(Arc::ptr_eq(&a, &again));
        second.claim::<Cache>(2, Cache::default);
        // Not installed (say it failed to compile): the registry still holds only 1.
        drop(second);
        assert_eq!(registry.len(), 1);

        // A snapshot without identity 1 drops it once installed.
        let third = StateClaims::new(&registry);
        third.claim::<Cache>(2, Cache::default);
        registry.reconcile(&third.into_used());
        assert!(registry.get::<Cache>(1).is_none());
        assert_eq!(registry.all::<Cache>().len(), 1);
    }

    #[test]
    fn rules_of_one_snapshot_share_a_state_and_types_do_not_collide() {
        let claims = StateClaims::fresh();
        let a = claims.claim::<Cache>(5, Cache::default);
        let b = claims.claim::<Cache>(5, Cache::default);
        assert!(Arc::ptr_eq(&a, &b));
        let other = claims.claim::<Mutex<u8>>(5, Mutex::default);
        assert_eq!(*lock(&other), 0);
        assert_eq!(claims.into_used().len(), 2);
    }
}
