//! Peers' session announcements (direct, or a DHT record): checked, budgeted per peer and in
//! total, written before they are acknowledged (with the session's next record), and auto-joined for pool slots and accepted
//! signing requests.

use shared::election::elect;
use shared::security::Reason;
use shared::wire::{self, Body, Message};

use super::session::Session;
use super::{Core, Effect, MAX_UNJOINED, MAX_UNJOINED_PER_PEER, NodeEvent, SessionView};
use crate::envelope::Refusal;
use libp2p_identity::PeerId;

impl Core {
    /// A session announcement (direct, or a DHT record).
    pub(super) fn on_announce(
        &mut self,
        now: i64,
        from: PeerId,
        envelope: &[u8],
        msg: Message,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let Body::Announce(a) = msg.body else {
            return Err(Refusal(Reason::BadEnvelope, "not an announcement".into()));
        };
        let id = msg.header.session_id;
        if let Some(existing) = self.sessions.get(&id) {
            return if existing.announce == envelope {
                Ok(())
            } else {
                Err(Refusal(
                    Reason::ConflictingAnnounce,
                    format!("session {id} was announced differently"),
                ))
            };
        }
        // A finished session out of memory (read from the store): nothing to start.
        if self.departed.contains_key(&id) || self.unloaded.contains_key(&id) {
            return Ok(());
        }
        let local: Vec<usize> = (0..a.context.signer_keys.len())
            .filter(|i| self.keys.contains(&a.context.signer_keys[*i]))
            .collect();
        if local.is_empty() {
            // Not ours to sign: nothing to keep.
            return Ok(());
        }
        // Budgets of sessions peers created for us, checked before any curve work: an
        // announcement costs nothing to make, so it is bounded per peer and in total. The map
        // keeps only sessions still unjoined and live, so this costs what is pending, not
        // every retained session (a full scan per announcement showed in a profile).
        let sessions = &self.sessions;
        self.announced_by.retain(|sid, _| {
            sessions
                .get(sid)
                .is_some_and(|s| !s.phase.is_terminal() && !s.locally_joined)
        });
        let unjoined = |p: Option<PeerId>| -> usize {
            self.announced_by
                .iter()
                .filter(|(_, by)| p.is_none_or(|p| **by == p))
                .map(|(sid, _)| sessions.get(sid).map_or(1, Session::weight))
                .sum()
        };
        let weight = Session::weight_of(a.context.signer_keys.len(), a.context.count());
        if unjoined(Some(from)) + weight > MAX_UNJOINED_PER_PEER
            || unjoined(None) + weight > MAX_UNJOINED
        {
            return Err(Refusal(
                Reason::TooManySessions,
                format!("too many sessions announced and not joined here (session {id})"),
            ));
        }
        let key_agg = a
            .context
            .key_agg()
            .map_err(|e| Refusal(Reason::Context, e.to_string()))?;
        let election = elect(a.election_method, &a.context.signer_keys)
            .map_err(|e| Refusal(Reason::Context, e.to_string()))?;
        let mut session = Session::new(
            id,
            a.context.clone(),
            key_agg,
            election,
            msg.header.sender,
            a.created_at_ms,
            a.expires_at_ms,
            envelope.to_vec(),
            local,
            now,
        );
        session.set_pool_slot(a.pool_slot);
        let refused = self.check_pool_announce(&mut session, &a);
        let view = SessionView::of(&session);
        self.insert_session(session);
        self.announced_by.insert(id, from);
        self.schedule_timeout(id);
        if let Some(slot_id) = a.uses_pool_slot
            && refused.is_none()
            && let Some(slot) = self.sessions.get_mut(&slot_id)
        {
            let actions = slot.consume_slot(now);
            self.apply(now, slot_id, actions, fx);
        }
        // Written with the session's next record: our join (an application that signs calls
        // it at once), a refusal, or at the latest `HOLD_MS` later; the acknowledgement waits
        // for that write (set below), so a crash before it makes the creator send the
        // announcement again. Before, it took a commit of its own, one of the three in a row
        // before our nonce could leave. The application hears of it at once: the session is
        // the creator's, and what our application does with it (a join) is written before it
        // is answered.
        self.mark_unstored(now, id, Vec::new());
        Self::emit(fx, NodeEvent::SessionCreated(Box::new(view)));
        let was_refused = refused.is_some();
        if let Some(reason) = refused {
            // Not ours to contribute to: the creator hears why at once.
            if let Some(s) = self.sessions.get_mut(&id) {
                let mut actions = Vec::new();
                s.fail(
                    now,
                    wire::AbortCode::SignerRefused,
                    reason,
                    Vec::new(),
                    &mut actions,
                );
                self.apply(now, id, actions, fx);
            }
        }
        // Joins waiting for it go on (after a refusal: they hear that it ended).
        self.answer_awaited(now, id, fx);
        if !was_refused
            && (a.pool_slot || self.matchmaking.take_auto_join(now, &a.context))
            && let Err(e) = self.join_known(now, id, fx)
        {
            tracing::warn!(session = %id, error = %e, "auto-join failed");
        }
        self.replay_orphans(now, id, fx);
        self.hold_if_unstored(id);
        Ok(())
    }
}
