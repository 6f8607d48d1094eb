//! A process-wide memo of results computed from public inputs: kept up to a capacity, then
//! all dropped at once, so a flood of distinct inputs costs what it did without the memo and
//! no more memory. Callers insert only successes.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{LazyLock, Mutex, MutexGuard, PoisonError};

pub(crate) struct Memo<K, V> {
    map: LazyLock<Mutex<HashMap<K, V>>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    /// An empty memo of at most `capacity` entries (usable in a `static`).
    pub(crate) const fn new(capacity: usize) -> Self {
        Memo {
            map: LazyLock::new(|| Mutex::new(HashMap::new())),
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, V>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The value remembered for `k`.
    pub(crate) fn get(&self, k: &K) -> Option<V> {
        self.lock().get(k).cloned()
    }

    /// Remember `v` for `k` (everything is forgotten first if the memo is full).
    pub(crate) fn insert(&self, k: K, v: V) {
        let mut map = self.lock();
        if map.len() >= self.capacity {
            map.clear();
        }
        map.insert(k, v);
    }
}
