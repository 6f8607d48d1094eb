//! Nonce pools (one-round signing, issue 17). For a key set whose application opted in
//! ([`Core::set_pool`]), this node keeps up to `size` *slots* of its own filled: a slot is a
//! session without a message (`pool_slot`) in which every member whose application opted in
//! for the same key set contributes a pooled nonce, ending in POOLED. A one-round session
//! ([`Core::create_one_round`]) takes one of our POOLED slots, copies its nonces and goes
//! straight to the partial-signature round; the announcement carries the slot's nonces (a
//! member whose copy is still filling takes the missing ones from it; those it holds, its own
//! above all, must match), and every member closes the slot on it, in the same commit that
//! stores the session, so a slot serves one session only. Only a slot's creator may use it (no two parties race for one slot), and a member
//! without the opt-in refuses the slot at once, so no remote peer can make our signer spend
//! pooled nonces without our application.
//!
//! The nonces are the signer's (kept `nonces.pool_ttl_secs`, lost when it restarts): when the
//! signer no longer holds a slot's nonce, the one-round session aborts with the signer's
//! reason and every POOLED slot of that key set is aborted too, so the pool refills with
//! fresh nonces.

use shared::election::SessionId;
use shared::wire::{self, Announce, SessionContext};

use super::session::{Phase, Session};
use super::{Core, Effect, ErrorReason, NodeError, SessionView};

/// How long a slot lives, ms (below the signer's `nonces.pool_ttl_secs`, at least 3,000 s).
pub const SLOT_TTL_MS: i64 = 50 * 60 * 1000;
/// A slot is not used with less than this left before it expires, ms.
pub const SLOT_MIN_LEFT_MS: i64 = 60_000;
/// Most slots of one pool filling at once.
pub const MAX_FILLING: usize = 8;
/// Largest pool size.
pub const MAX_POOL_SIZE: usize = 1024;
/// After a member refused one of our slots, no new slot for this long, ms.
pub const REFUSED_BACKOFF_MS: i64 = 30_000;
/// The reason a member without the opt-in refuses a slot with (its creator backs off).
pub const NOT_ENABLED: &str =
    "nonce pool not enabled here for this key set (the application did not opt in)";
/// How a member that lost its pooled nonces aborts the slots holding them.
const LOST: &str = "the local signer no longer holds its pooled nonce";

/// What a new session is, for the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    /// An ordinary two-round session.
    None,
    /// A nonce-pool slot.
    Slot,
    /// A one-round session using this slot of ours.
    Uses(SessionId),
}

/// One pool this node's application enabled.
#[derive(Debug, Clone)]
pub struct PoolConf {
    /// The key set, format and tweaks (no message).
    pub context: SessionContext,
    /// Slots of ours to keep filled.
    pub size: usize,
    /// No new slot before this time (a member refused one), ms.
    pub backoff_until_ms: i64,
}

/// A pool's state as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStatus {
    /// Slots to keep (0: disabled).
    pub size: usize,
    /// Our slots ready for a one-round session.
    pub ready: usize,
    /// Our slots still collecting nonces.
    pub filling: usize,
}

impl Core {
    /// Enable (size > 0) or disable (0) this node's pool for `context`'s key set, format and
    /// tweaks (its message is ignored); starts filling at once.
    ///
    /// # Errors
    /// A context that does not validate, no local key, a size over [`MAX_POOL_SIZE`].
    pub fn set_pool(
        &mut self,
        now: i64,
        mut context: SessionContext,
        size: usize,
        fx: &mut Vec<Effect>,
    ) -> Result<PoolStatus, NodeError> {
        context.message.clear();
        let context = SessionContext::from_pb_pool(&context.to_pb())
            .map_err(|e| NodeError::InvalidArgument(ErrorReason::InvalidField, e.to_string()))?;
        if size > MAX_POOL_SIZE {
            return Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!("size: at most {MAX_POOL_SIZE}"),
            ));
        }
        if !context.signer_keys.iter().any(|k| self.keys.contains(k)) {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
                "the local signer holds none of the key set's keys".into(),
            ));
        }
        let hash = context.pool_hash();
        if size == 0 {
            self.pools.remove(&hash);
            // Its slots end now (their pooled nonces are released), ours and the members'.
            let live: Vec<SessionId> = self.live_slots(&hash).map(|s| s.id).collect();
            for id in live {
                if let Some(s) = self.sessions.get_mut(&id) {
                    let mut actions = Vec::new();
                    s.fail(
                        now,
                        wire::AbortCode::Closed,
                        "nonce pool disabled by this party's application".into(),
                        Vec::new(),
                        &mut actions,
                    );
                    self.apply(now, id, actions, fx);
                }
            }
        } else {
            let conf = self.pools.entry(hash).or_insert(PoolConf {
                context,
                size,
                backoff_until_ms: 0,
            });
            conf.size = size;
            conf.backoff_until_ms = 0;
            self.refill(now, fx);
        }
        Ok(self.pool_status(&hash))
    }

    /// When a pool's back-off ends (a deadline: the pool refills then).
    pub(super) fn pool_deadline(&self) -> Option<i64> {
        self.pools
            .values()
            .map(|p| p.backoff_until_ms)
            .filter(|t| *t > 0)
            .min()
    }

    /// A pool's state (by its key set's pool hash).
    pub fn pool_status(&self, hash: &[u8; 32]) -> PoolStatus {
        let mut st = PoolStatus {
            size: self.pools.get(hash).map_or(0, |p| p.size),
            ..PoolStatus::default()
        };
        for s in self.own_slots(hash) {
            match s.phase {
                Phase::Pooled => st.ready += 1,
                Phase::Init | Phase::NonceExchange => st.filling += 1,
                _ => {}
            }
        }
        st
    }

    /// Keep a session, indexing it when it is a live pool slot (a slot leaves the index when
    /// it ends, in [`Core::apply`]).
    pub(super) fn insert_session(&mut self, s: Session) {
        if let Some(hash) = s.pool_hash
            && !s.phase.is_terminal()
        {
            self.pool_slots.entry(hash).or_default().insert(s.id);
        }
        if s.locally_joined && !s.pool_slot && !s.phase.is_terminal() {
            self.joined_live.insert(s.id);
        }
        self.sessions.insert(s.id, s);
    }

    /// The pool's slots that have not ended, any creator's.
    fn live_slots<'a>(&'a self, hash: &[u8; 32]) -> impl Iterator<Item = &'a Session> + 'a {
        self.pool_slots
            .get(hash)
            .into_iter()
            .flatten()
            .filter_map(|id| self.sessions.get(id))
            .filter(|s| !s.phase.is_terminal())
    }

    /// The pool's slots of ours that have not ended.
    fn own_slots<'a>(&'a self, hash: &[u8; 32]) -> impl Iterator<Item = &'a Session> + 'a {
        self.live_slots(hash)
            .filter(|s| self.keys.contains(&s.creator))
    }

    /// Start slots where a pool has fewer than its size (at most [`MAX_FILLING`] filling).
    pub(super) fn refill(&mut self, now: i64, fx: &mut Vec<Effect>) {
        for p in self.pools.values_mut() {
            if p.backoff_until_ms <= now {
                p.backoff_until_ms = 0;
            }
        }
        let wanted: Vec<(SessionContext, usize)> = self
            .pools
            .iter()
            .filter(|(_, p)| p.backoff_until_ms <= now)
            .filter_map(|(hash, p)| {
                let st = self.pool_status(hash);
                let missing = p.size.saturating_sub(st.ready + st.filling);
                let room = MAX_FILLING.saturating_sub(st.filling);
                let n = missing.min(room);
                (n > 0).then(|| (p.context.clone(), n))
            })
            .collect();
        for (context, n) in wanted {
            for _ in 0..n {
                if let Err(e) = self.create_inner(
                    now,
                    context.clone(),
                    None,
                    Some(SLOT_TTL_MS),
                    None,
                    PoolRole::Slot,
                    fx,
                ) {
                    tracing::warn!(error = %e, "nonce pool slot not created");
                    break;
                }
            }
        }
    }

    /// A one-round session: `context` (with its message) signed with the next POOLED slot of
    /// ours for its key set.
    ///
    /// # Errors
    /// [`ErrorReason::PoolExhausted`] when the pool is not enabled or has no slot ready; the
    /// errors of [`Core::create_for`].
    pub fn create_one_round(
        &mut self,
        now: i64,
        context: SessionContext,
        timeout_ms: Option<i64>,
        request_id: Option<String>,
        fx: &mut Vec<Effect>,
    ) -> Result<SessionView, NodeError> {
        if let Some(rid) = &request_id
            && let Some(s) = self.requests.get(rid).and_then(|id| self.sessions.get(id))
        {
            return if s.context == context && s.uses_slot.is_some() {
                Ok(SessionView::of(s))
            } else {
                Err(NodeError::InvalidArgument(
                    ErrorReason::RequestIdReused,
                    format!(
                        "request_id {rid:?} created session {} with other parameters",
                        s.id
                    ),
                ))
            };
        }
        let hash = context.pool_hash();
        if !self.pools.contains_key(&hash) {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::PoolExhausted,
                "no nonce pool is enabled here for this key set, format and tweaks (SetNoncePool)"
                    .into(),
            ));
        }
        // The oldest ready slot with time left to sign (members expire it at the same moment).
        let slot = self
            .own_slots(&hash)
            .filter(|s| {
                s.phase == Phase::Pooled && s.expires_at_ms.saturating_sub(now) > SLOT_MIN_LEFT_MS
            })
            .min_by_key(|s| (s.created_at_ms, s.id))
            .map(|s| s.id);
        let Some(slot) = slot else {
            let st = self.pool_status(&hash);
            self.refill(now, fx);
            return Err(NodeError::ResourceExhausted(
                ErrorReason::PoolExhausted,
                format!(
                    "the nonce pool has no slot ready ({} filling, size {}); retry shortly, or sign in two rounds",
                    st.filling, st.size
                ),
            ));
        };
        let view = self.create_inner(
            now,
            context,
            None,
            timeout_ms,
            request_id,
            PoolRole::Uses(slot),
            fx,
        )?;
        self.refill(now, fx);
        Ok(view)
    }

    /// Whether a peer's slot or one-round announcement may go on here: `None`, or why this
    /// node refuses it (the session is then aborted with that reason). A one-round session
    /// that may go on takes the slot's nonces.
    pub(super) fn check_pool_announce(
        &self,
        session: &mut Session,
        a: &Announce,
    ) -> Option<String> {
        if a.pool_slot {
            let hash = a.context.pool_hash();
            let Some(conf) = self.pools.get(&hash) else {
                return Some(NOT_ENABLED.into());
            };
            // A member cannot fill our signer's pool with its slots (found in review): at most
            // our own pool size (plus those filling) of one creator's live slots.
            let cap = conf.size + MAX_FILLING;
            let live = self
                .live_slots(&hash)
                .filter(|s| s.creator == session.creator)
                .count();
            return (live >= cap).then(|| {
                format!(
                    "this party keeps at most {cap} live nonce-pool slots of one creator for a key set (its pool size {} plus {MAX_FILLING} filling)",
                    conf.size
                )
            });
        }
        let slot_id = a.uses_pool_slot?;
        let Some(slot) = self.sessions.get(&slot_id) else {
            return Some(format!("pool slot {slot_id} is unknown here"));
        };
        if !slot.pool_slot
            || slot.creator != session.creator
            || slot.pool_hash != Some(a.context.pool_hash())
        {
            return Some(format!(
                "pool slot {slot_id} is not the creator's slot for this key set"
            ));
        }
        if !matches!(
            slot.phase,
            Phase::Init | Phase::NonceExchange | Phase::Pooled
        ) {
            return Some(format!(
                "pool slot {slot_id} is {} here (used or ended)",
                slot.phase.as_str()
            ));
        }
        // The nonces held here must be the announced ones, and ours must be among them (our
        // signer issued them for this slot); a copy still filling takes the others from the
        // announcement.
        for (i, held) in slot.nonces.iter().enumerate() {
            let ours = slot.local.contains(&i);
            match (held, a.pool_nonces.get(i)) {
                (Some(h), Some(n)) if h.as_slice() == [*n] => {}
                (None, Some(_)) if !ours => {}
                _ => {
                    return Some(format!(
                        "pool slot {slot_id}: the announced nonce of signer {i} is not the slot's"
                    ));
                }
            }
        }
        session.use_slot(slot_id, &a.pool_nonces).err()
    }

    /// One of our slots aborted (a member without the opt-in refused it, it expired, or a
    /// signer lost its nonces): back off that pool when a member refused, else refill.
    pub(super) fn slot_aborted(&mut self, now: i64, slot: SessionId, fx: &mut Vec<Effect>) {
        let Some(s) = self.sessions.get(&slot) else {
            return;
        };
        if !self.keys.contains(&s.creator) {
            return;
        }
        // A member refused (no opt-in, its signer's policy): no new slot for a while, or the
        // pool would spin. A signer that lost its nonces, or an expired slot: refill now.
        let refused = s
            .abort
            .as_ref()
            .is_some_and(|a| a.code == wire::AbortCode::SignerRefused && !a.reason.contains(LOST));
        if refused && let Some(p) = s.pool_hash.and_then(|h| self.pools.get_mut(&h)) {
            p.backoff_until_ms = now.saturating_add(REFUSED_BACKOFF_MS);
        }
        self.refill(now, fx);
    }

    /// Our signer no longer holds a pooled nonce (it restarted): every POOLED slot of that key
    /// set is aborted (the members hear it), and the pool refills.
    pub(super) fn pool_nonces_lost(&mut self, now: i64, hash: [u8; 32], fx: &mut Vec<Effect>) {
        let slots: Vec<SessionId> = self
            .live_slots(&hash)
            .filter(|s| s.phase == Phase::Pooled)
            .map(|s| s.id)
            .collect();
        for id in slots {
            if let Some(s) = self.sessions.get_mut(&id) {
                let mut actions = Vec::new();
                s.fail(
                    now,
                    wire::AbortCode::SignerRefused,
                    format!("{LOST} (restarted?); the pool refills"),
                    Vec::new(),
                    &mut actions,
                );
                self.apply(now, id, actions, fx);
            }
        }
        if let Some(p) = self.pools.get_mut(&hash) {
            p.backoff_until_ms = 0;
        }
        self.refill(now, fx);
    }
}
