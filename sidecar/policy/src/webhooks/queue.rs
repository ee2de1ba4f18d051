//! An endpoint's pending deliveries in memory: by due time (which to attempt next) and by
//! message id (acceptance order, for `ordered` endpoints and the oldest-pending age). The store
//! is the truth; this is rebuilt from it at start.

use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Default)]
pub struct EndpointQueue {
    by_due: BTreeSet<(u64, u128)>,
    /// id → (due, attempts made).
    by_id: BTreeMap<u128, (u64, u32)>,
}

/// The delivery to attempt next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub id: u128,
    pub due_ms: u64,
    pub attempts: u32,
}

impl EndpointQueue {
    /// Adds a delivery, or moves it if it is already queued.
    pub fn push(&mut self, id: u128, due_ms: u64, attempts: u32) {
        if let Some((old, _)) = self.by_id.insert(id, (due_ms, attempts)) {
            self.by_due.remove(&(old, id));
        }
        self.by_due.insert((due_ms, id));
    }

    /// The earliest due delivery; with `ordered`, the oldest message's, however late it is due
    /// (a message waiting for its retry holds back the ones accepted after it).
    pub fn head(&self, ordered: bool) -> Option<Head> {
        let (id, due_ms, attempts) = if ordered {
            let (&id, &(due, attempts)) = self.by_id.first_key_value()?;
            (id, due, attempts)
        } else {
            let &(due, id) = self.by_due.first()?;
            (id, due, self.by_id.get(&id).map_or(0, |&(_, a)| a))
        };
        Some(Head {
            id,
            due_ms,
            attempts,
        })
    }

    pub fn remove(&mut self, id: u128) {
        if let Some((due, _)) = self.by_id.remove(&id) {
            self.by_due.remove(&(due, id));
        }
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The oldest message waiting (ids sort by acceptance time).
    pub fn oldest(&self) -> Option<u128> {
        self.by_id.keys().next().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unordered_takes_the_earliest_due_and_ordered_the_oldest_message() {
        let mut q = EndpointQueue::default();
        q.push(1, 500, 2); // the oldest message, waiting for a retry
        q.push(2, 100, 0);
        q.push(3, 300, 0);
        assert_eq!(q.head(false).map(|h| h.id), Some(2));
        assert_eq!(
            q.head(true),
            Some(Head {
                id: 1,
                due_ms: 500,
                attempts: 2
            })
        );
        assert_eq!(q.oldest(), Some(1));
    }

    #[test]
    fn pushing_again_moves_a_delivery_and_remove_forgets_it() {
        let mut q = EndpointQueue::default();
        q.push(1, 100, 0);
        q.push(2, 200, 0);
        q.push(1, 300, 1);
        assert_eq!(q.len(), 2);
        assert_eq!(q.head(false).map(|h| (h.id, h.attempts)), Some((2, 0)));
        q.remove(2);
        assert_eq!(
            q.head(false).map(|h| (h.id, h.due_ms, h.attempts)),
            Some((1, 300, 1))
        );
        q.remove(1);
        assert!(q.is_empty() && q.head(true).is_none());
    }
}
