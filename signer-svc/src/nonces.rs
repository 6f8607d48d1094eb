//! The secret nonce store: memory only, never written anywhere.
//!
//! Each (session id, key) has one slot behind its own async mutex, so requests for different
//! nonces run in parallel while requests for the same nonce are serialised. A slot moves
//! `Pending -> Burned -> Used` (or stays `Burned` if signing failed): the secret nonce is taken
//! out of the slot *before* the partial signature is computed, so at most one partial signature
//! can ever exist per nonce. `Used` keeps the request hash and the partial signature so that a
//! byte-identical retry gets the same answer. Slots expire after the TTL; the number of slots
//! is capped, and when the cap is reached answered slots make room, oldest first, so only
//! unused nonces can fill it. Nonce-pool slots (one-round signing) have their own, longer TTL and their own cap
//! within the total.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An answered slot younger than this is never evicted to make room (retries get their answer).
pub const MIN_ANSWER_AGE: Duration = Duration::from_secs(60);

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
    /// The same for pooled slots (their TTL is constant too).
    pool_order: VecDeque<(Instant, SlotKey)>,
    /// Live pooled slots.
    pooled: std::collections::HashSet<SlotKey>,
}

/// Why a slot could not be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    /// The store is full.
    #[error("nonce store is full ({0} nonces); retry later")]
    Full(usize),
    /// The pooled nonces reached their cap.
    #[error(
        "nonce pool is full ({0} pooled nonces, nonces.pool_capacity); use or release some first"
    )]
    PoolFull(usize),
}

/// The store.
#[derive(Debug)]
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    pool_ttl: Duration,
    pool_capacity: usize,
    // Short critical sections only: map lookups and inserts, never I/O or signing.
    map: Mutex<Map>,
}

impl NonceStore {
    /// A store with a TTL and a capacity.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        NonceStore {
            ttl,
            capacity,
            pool_ttl: ttl,
            pool_capacity: 0,
            map: Mutex::new(Map::default()),
        }
    }

    /// Allow up to `capacity` pooled slots (within the total), each living `ttl`.
    #[must_use]
    pub fn with_pool(mut self, ttl: Duration, capacity: usize) -> Self {
        self.pool_ttl = ttl;
        self.pool_capacity = capacity;
        self
    }

    /// The pooled slots' TTL.
    pub fn pool_ttl(&self) -> Duration {
        self.pool_ttl
    }

    /// Live pooled slots.
    pub fn pooled_len(&self) -> usize {
        let mut map = self.lock();
        Self::purge(&mut map, Instant::now());
        map.pooled.len()
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
        for pool in [false, true] {
            loop {
                let queue = if pool {
                    &mut map.pool_order
                } else {
                    &mut map.order
                };
                let Some((exp, key)) = queue.front().copied() else {
                    break;
                };
                if exp > now {
                    break;
                }
                queue.pop_front();
                // The same key may have been removed and created again since: only drop the
                // slot this queue entry describes. A request holding it keeps its Arc until it
                // is done.
                if map.slots.get(&key).is_some_and(|s| s.expires == exp) {
                    map.slots.remove(&key);
                    map.pooled.remove(&key);
                }
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
        self.insert_inner(key, false, make)
    }

    /// [`NonceStore::get_or_insert`] for a pooled slot (pool TTL and cap).
    ///
    /// # Errors
    /// [`InsertError::Full`] past the total or the pool capacity.
    pub fn get_or_insert_pooled(
        &self,
        key: SlotKey,
        make: impl FnOnce() -> SlotState,
    ) -> Result<(SlotRef, bool), InsertError> {
        self.insert_inner(key, true, make)
    }

    fn insert_inner(
        &self,
        key: SlotKey,
        pooled: bool,
        make: impl FnOnce() -> SlotState,
    ) -> Result<(SlotRef, bool), InsertError> {
        let now = Instant::now();
        let mut map = self.lock();
        Self::purge(&mut map, now);
        if let Some(s) = map.slots.get(&key) {
            return Ok((s.clone(), false));
        }
        if map.slots.len() >= self.capacity {
            let cutoffs = self.answered_cutoffs(now);
            Self::evict_answered(&mut map, (self.capacity / 16).max(1), cutoffs);
        }
        if map.slots.len() >= self.capacity {
            return Err(InsertError::Full(self.capacity));
        }
        if pooled && map.pooled.len() >= self.pool_capacity {
            // The pool's cap bounds the *secret* pooled nonces: an answered one (used, or its
            // secret taken) keeps only its public answer for a retry, within the total
            // capacity like any answer. (Found by `musig2-bench --one-round --concurrency 8`:
            // answers held the cap for their 60 s, so one-round signing stopped dead past
            // 1,024 / 60 ≈ 17 pooled nonces per second.)
            Self::forget_answered_pooled(&mut map);
        }
        if pooled && map.pooled.len() >= self.pool_capacity {
            return Err(InsertError::PoolFull(self.pool_capacity));
        }
        let ttl = if pooled { self.pool_ttl } else { self.ttl };
        let expires = now + ttl;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(ttl);
        let slot = Arc::new(Slot {
            expires,
            expires_at_ms: i64::try_from(wall.as_millis()).unwrap_or(i64::MAX),
            state: tokio::sync::Mutex::new(make()),
        });
        map.slots.insert(key, slot.clone());
        if pooled {
            map.pooled.insert(key);
            map.pool_order.push_back((expires, key));
        } else {
            map.order.push_back((expires, key));
        }
        Ok((slot, true))
    }

    /// Take answered slots out of the pooled set (they stay in the store for retries). A slot
    /// a request holds right now counts as still secret.
    fn forget_answered_pooled(map: &mut Map) {
        let Map { slots, pooled, .. } = map;
        pooled.retain(|key| {
            slots.get(key).is_some_and(|s| {
                s.state
                    .try_lock()
                    .map_or(true, |st| matches!(*st, SlotState::Pending { .. }))
            })
        });
    }

    /// Make room: drop up to `n` answered slots (used or burned: no secret left, kept only so
    /// a retry gets the same answer) issued before the
    /// `cutoffs` (ordinary, pooled expiries), oldest first. Unused nonces, slots in use by a
    /// request and recent answers stay. (Found by the soak run: answered slots held the
    /// capacity for their whole TTL, so the defaults refused every nonce past capacity / TTL =
    /// 16.7 sessions/s.)
    fn evict_answered(map: &mut Map, n: usize, cutoffs: (Instant, Instant)) {
        let mut gone = Vec::new();
        let ordinary = map.order.iter().take_while(|(exp, _)| *exp <= cutoffs.0);
        let pooled = map
            .pool_order
            .iter()
            .take_while(|(exp, _)| *exp <= cutoffs.1);
        for (exp, key) in ordinary.chain(pooled) {
            if gone.len() >= n {
                break;
            }
            let answered = map.slots.get(key).is_some_and(|s| {
                s.expires == *exp
                    && s.state
                        .try_lock()
                        .is_ok_and(|st| !matches!(*st, SlotState::Pending { .. }))
            });
            if answered {
                gone.push(*key);
            }
        }
        for key in gone {
            map.slots.remove(&key);
            map.pooled.remove(&key);
        }
    }

    /// Expiries of slots issued at least [`MIN_ANSWER_AGE`] (or half the TTL, if shorter) ago
    /// (ordinary, pooled): only those may be evicted, so a retry within that time still gets its
    /// stored answer.
    fn answered_cutoffs(&self, now: Instant) -> (Instant, Instant) {
        let cut = |ttl: Duration| {
            (now + ttl)
                .checked_sub(MIN_ANSWER_AGE.min(ttl / 2))
                .unwrap_or(now)
        };
        (cut(self.ttl), cut(self.pool_ttl))
    }

    /// Remove a slot (e.g. when journaling its issue failed).
    pub fn remove(&self, key: &SlotKey) {
        let mut map = self.lock();
        map.slots.remove(key);
        map.pooled.remove(key);
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
