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
    /// Slots whose nonces were issued before a restart (from the journal), until they would
    /// have expired: never issued again ([`NonceStore::is_lost`]).
    lost: HashMap<SlotKey, Instant>,
    /// The same in expiry order.
    lost_order: VecDeque<(Instant, SlotKey)>,
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

/// Nonces the journal says were issued and would still live (a restart's replay, for
/// [`NonceStore::with_lost`]): the newest `keep`, in journal order.
#[derive(Debug)]
pub struct IssuedBefore {
    ttls: (Duration, Duration),
    keep: usize,
    now_ms: i64,
    slots: VecDeque<(SlotKey, i64)>,
}

impl IssuedBefore {
    /// Collect with the ordinary and pooled TTLs, keeping at most `keep`.
    pub fn new(ttls: (Duration, Duration), keep: usize) -> Self {
        IssuedBefore {
            ttls,
            keep,
            now_ms: crate::journal::now_ms(),
            slots: VecDeque::new(),
        }
    }

    /// One journal record (only issued nonces count).
    pub fn note(&mut self, r: &crate::journal::Record) {
        if r.kind != crate::journal::RecordKind::Nonce {
            return;
        }
        let ttl = if r.event.pooled == Some(true) {
            self.ttls.1
        } else {
            self.ttls.0
        };
        let expires_ms = r
            .time_ms
            .saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
        if expires_ms <= self.now_ms {
            return;
        }
        let (Some(session), Some(key)) = (r.event.session_id.as_deref(), r.event.key.as_deref())
        else {
            return;
        };
        let (mut id, mut k) = ([0u8; 16], [0u8; 33]);
        if hex::decode_to_slice(session, &mut id).is_err()
            || hex::decode_to_slice(key, &mut k).is_err()
        {
            return;
        }
        self.slots.push_back(((id, k), expires_ms));
        if self.slots.len() > self.keep {
            self.slots.pop_front();
        }
    }

    /// The slots with when they would expire, on this process's clock.
    pub fn into_slots(self) -> Vec<(SlotKey, Instant)> {
        let now = Instant::now();
        self.slots
            .into_iter()
            .map(|(key, exp_ms)| {
                let left = u64::try_from(exp_ms.saturating_sub(self.now_ms)).unwrap_or(0);
                (key, now + Duration::from_millis(left))
            })
            .collect()
    }
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

    /// Nonces issued before a restart (slot, when it would have expired), newest last: their
    /// slots are never issued a nonce again while they would have lived. At most half the
    /// capacity is kept, the newest (the sessions in flight at the restart), so that new
    /// nonces always have room.
    #[must_use]
    pub fn with_lost(self, mut issued: Vec<(SlotKey, Instant)>) -> Self {
        issued.sort_by_key(|(_, exp)| *exp);
        let keep = issued.len().saturating_sub(self.capacity / 2);
        {
            let mut map = self.lock();
            for (key, exp) in issued.drain(keep..) {
                map.lost.insert(key, exp);
                map.lost_order.push_back((exp, key));
            }
        }
        self
    }

    /// Whether the slot's nonce was issued before a restart (and would still live): a request
    /// for it must be refused, not answered with a second nonce.
    pub fn is_lost(&self, key: &SlotKey) -> bool {
        let mut map = self.lock();
        Self::purge(&mut map, Instant::now());
        map.lost.contains_key(key)
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
        while let Some((exp, key)) = map.lost_order.front().copied() {
            if exp > now {
                break;
            }
            map.lost_order.pop_front();
            map.lost.remove(&key);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_issued_before_a_restart_stay_refused_until_they_would_have_expired() {
        let now = Instant::now();
        let key = |b: u8| ([b; 16], [2u8; 33]);
        // 0..7 would have expired by now (7 - b seconds ago), 7..10 live on.
        let issued: Vec<(SlotKey, Instant)> = (0..10u8)
            .map(|b| {
                let exp = match 7u64.checked_sub(u64::from(b)).filter(|s| *s > 0) {
                    Some(ago) => now.checked_sub(Duration::from_secs(ago)).unwrap_or(now),
                    None => now + Duration::from_secs(60 + u64::from(b)),
                };
                (key(b), exp)
            })
            .collect();
        // Capacity 8: the newest 4 are kept (6, 7, 8, 9), and 6 has expired.
        let store = NonceStore::new(Duration::from_secs(60), 8).with_lost(issued);
        for b in 0..7 {
            assert!(
                !store.is_lost(&key(b)),
                "{b}: expired or not among the newest half"
            );
        }
        for b in 7..10 {
            assert!(store.is_lost(&key(b)), "{b}");
        }
        assert!(!store.is_lost(&key(11)));
    }
}
