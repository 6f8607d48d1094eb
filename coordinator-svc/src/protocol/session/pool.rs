//! A session as a nonce-pool slot, and a one-round session that uses one (issue 17): the
//! slot's nonces are the session's round 1, and the slot is used exactly once.

use super::*;

impl Session {
    /// Mark this session a nonce-pool slot (or not).
    pub fn set_pool_slot(&mut self, slot: bool) {
        self.pool_slot = slot;
        self.pool_hash = slot.then(|| self.context.pool_hash());
    }

    /// Make this new session a one-round session using pool slot `slot`'s `nonces` (key
    /// order): round 1 is done, and the local application's join asks the signer for partial
    /// signatures at once.
    ///
    /// # Errors
    /// Not one nonce per signer, or the nonces do not aggregate.
    pub fn use_slot(&mut self, slot: SessionId, nonces: &[PubNonce]) -> Result<(), String> {
        if nonces.len() != self.n() {
            return Err("the pool slot does not hold every nonce".into());
        }
        if self.count() != 1 {
            return Err("a one-round session signs one message".into());
        }
        self.aggnonce = Some(vec![
            AggNonce::sum(self.context.format, nonces).map_err(|e| e.to_string())?,
        ]);
        self.nonces = nonces.iter().map(|n| Some(vec![*n])).collect();
        self.uses_slot = Some(slot);
        self.phase = Phase::PartialSigExchange;
        Ok(())
    }

    /// The session id the signer's nonces of this session are filed under.
    pub fn nonce_session(&self) -> SessionId {
        self.uses_slot.unwrap_or(self.id)
    }

    /// A slot is used by a one-round session: CLOSED without a word to anyone (every member
    /// closes it on the session's announcement, also one whose copy was still filling) and
    /// without releasing its nonces, which the session signs with.
    pub fn consume_slot(&mut self, now: i64) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        if self.pool_slot
            && matches!(
                self.phase,
                Phase::Init | Phase::NonceExchange | Phase::Pooled
            )
        {
            self.set_phase(Phase::Closed, &mut actions);
        }
        actions
    }
}
