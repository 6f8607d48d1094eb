//! A deadline queue (mini-redis style): `BTreeSet<(deadline, key)>` plus each key's current
//! deadline, so the event loop sleeps until the earliest one instead of polling every entry.

use std::collections::{BTreeMap, BTreeSet};

/// At most one deadline per key; rescheduling a key replaces its deadline.
#[derive(Debug)]
pub struct DeadlineQueue<K: Ord + Copy> {
    queue: BTreeSet<(i64, K)>,
    at: BTreeMap<K, i64>,
}

impl<K: Ord + Copy> Default for DeadlineQueue<K> {
    fn default() -> Self {
        DeadlineQueue {
            queue: BTreeSet::new(),
            at: BTreeMap::new(),
        }
    }
}

impl<K: Ord + Copy> DeadlineQueue<K> {
    /// Set (or move) `key`'s deadline.
    pub fn schedule(&mut self, at_ms: i64, key: K) {
        if let Some(old) = self.at.insert(key, at_ms) {
            self.queue.remove(&(old, key));
        }
        self.queue.insert((at_ms, key));
    }

    /// Drop `key`'s deadline, if any.
    pub fn cancel(&mut self, key: K) {
        if let Some(old) = self.at.remove(&key) {
            self.queue.remove(&(old, key));
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<i64> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// Remove and return every key due at `now_ms`, earliest first.
    pub fn pop_due(&mut self, now_ms: i64) -> Vec<K> {
        let mut due = Vec::new();
        while let Some(&(t, k)) = self.queue.first() {
            if t > now_ms {
                break;
            }
            self.queue.pop_first();
            self.at.remove(&k);
            due.push(k);
        }
        due
    }

    /// Number of scheduled keys.
    pub fn len(&self) -> usize {
        self.at.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.at.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (operations, now, expected due, expected next afterwards)
        type Op = (&'static str, i64, u8);
        type Case = (&'static [Op], i64, &'static [u8], Option<i64>);
        let cases: &[Case] = &[
            (&[], 100, &[], None),
            (&[("s", 10, 1), ("s", 20, 2)], 15, &[1], Some(20)),
            (&[("s", 10, 1), ("s", 20, 2)], 20, &[1, 2], None),
            // Rescheduling moves the deadline: only the new one counts.
            (&[("s", 10, 1), ("s", 30, 1)], 15, &[], Some(30)),
            (&[("s", 30, 1), ("s", 10, 1)], 15, &[1], None),
            // Cancelled keys never fire.
            (&[("s", 10, 1), ("c", 0, 1), ("s", 12, 2)], 50, &[2], None),
            // Ties fire in key order.
            (
                &[("s", 10, 3), ("s", 10, 1), ("s", 10, 2)],
                10,
                &[1, 2, 3],
                None,
            ),
        ];
        for (ops, now, due, next) in cases {
            let mut q = DeadlineQueue::default();
            for (op, at, k) in *ops {
                match *op {
                    "s" => q.schedule(*at, *k),
                    _ => q.cancel(*k),
                }
            }
            assert_eq!(q.pop_due(*now), due.to_vec(), "{ops:?} at {now}");
            assert_eq!(q.next(), *next, "{ops:?} at {now}");
            assert_eq!(q.len(), usize::from(next.is_some()), "{ops:?}");
        }
    }
}
