//! The secret nonce store: memory only, never written anywhere.
//!
//! Each (session id, key) has one slot behind its own async mutex, so requests for different
//! nonces run in parallel while requests for the same nonce are serialised. A slot moves
//! `Pending -> Burned -> Used` (or stays `Burned` if signing failed): the secret nonce is taken
//! out of the slot *before* the partial signature is computed, so at most one partial signature
//! can ever exist per nonce. `Used` keeps the request hash and the partial signature so that a
//! byte-identical retry gets the same answer. Slots expire after the TTL; the number of slots
//! is capped.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Slot key: session id and signer key.
pub type SlotKey = ([u8; 16], [u8; 33]);

pub use shared::discipline::SlotState;

/// One slot.
#[derive(Debug)]
pub struct Slot {
    /// When it is discarded.
    pub expires: Instant,
    /// The same, ms since the epoch (what callers are told).
    pub expires_at_ms: i64,
    /// State; held across signing and journaling of this one nonce.
    pub state: tokio::sync::Mutex<SlotState>,
}

/// A shared slot.
pub type SlotRef = Arc<Slot>;

#[derive(Debug, Default)]
struct Map {
    slots: HashMap<SlotKey, SlotRef>,
    /// Insertion order with expiry (the TTL is constant, so this is expiry order).
    order: VecDeque<(Instant, SlotKey)>,
}

/// Why a slot could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The store is full.
    #[error("nonce store is full ({0} nonces); retry later")]
    Full(usize),
}

/// The store.
#[derive(Debug)]
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    // Short critical sections only: map lookups and inserts, never I/O or signing.
    map: Mutex<Map>,
}

impl NonceStore {
    /// A store with a TTL and a capacity.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        NonceStore {
            ttl,
            capacity,
            map: Mutex::new(Map::default()),
        }
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drop expired slots (their secret nonces are zeroized on drop).
    fn purge(map: &mut Map, now: Instant) {
        while let Some((exp, key)) = map.order.front().copied() {
            if exp > now {
                break;
            }
            map.order.pop_front();
            // The same key may have been removed and created again since: only drop the slot
            // this queue entry describes. A request holding it keeps its Arc until it is done.
            if map.slots.get(&key).is_some_and(|s| s.expires == exp) {
                map.slots.remove(&key);
            }
        }
    }

    /// The slot for a key, if present and unexpired.
    pub fn get(&self, key: &SlotKey) -> Option<SlotRef> {
        let mut map = self.lock();
        Self::purge(&mut map, Instant::now());
        map.slots.get(key).cloned()
    }

    /// Get the slot for `key`, or create it with `make` when absent.
    ///
    /// # Errors
    /// [`InsertError::Full`] when a new slot would pass the capacity.
    pub fn get_or_insert(
        &self,
        key: SlotKey,
        make: impl FnOnce() -> SlotState,
    ) -> Result<(SlotRef, bool), InsertError> {
        let now = Instant::now();
        let mut map = self.lock();
        Self::purge(&mut map, now);
        if let Some(s) = map.slots.get(&key) {
            return Ok((s.clone(), false));
        }
        if map.slots.len() >= self.capacity {
            return Err(InsertError::Full(self.capacity));
        }
        let expires = now + self.ttl;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(self.ttl);
        let slot = Arc::new(Slot {
            expires,
            expires_at_ms: i64::try_from(wall.as_millis()).unwrap_or(i64::MAX),
            state: tokio::sync::Mutex::new(make()),
        });
        map.slots.insert(key, slot.clone());
        map.order.push_back((expires, key));
        Ok((slot, true))
    }

    /// Remove a slot (e.g. when journaling its issue failed).
    pub fn remove(&self, key: &SlotKey) {
        self.lock().slots.remove(key);
    }

    /// Number of live slots.
    pub fn len(&self) -> usize {
        let mut map = self.lock();
        Self::purge(&mut map, Instant::now());
        map.slots.len()
    }

    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
