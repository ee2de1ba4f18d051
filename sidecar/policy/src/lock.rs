//! The one way the sidecar takes a lock.
//!
//! A poisoned mutex means some thread panicked while holding it. Every value behind the
//! sidecar's locks is left consistent at each step (caches, counters, handles), so the right
//! answer is to carry on with it rather than to turn one failed request into a failure of
//! every later one.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, recovering the value if a panicking thread poisoned it.
pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
