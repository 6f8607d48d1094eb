//! Restore after a restart and history replay to a peer that reconnects.

use libp2p_identity::PeerId;
use shared::election::SessionId;

use super::session::{Action, Departed, Phase, Session};
use super::{Core, Effect};
use crate::store::SessionRecord;

impl Core {
    /// Send our past messages of live sessions to a participant that was not connected then;
    /// also of sessions that aborted here meanwhile, so that it hears of the abort rather than
    /// waiting for the session to time out (a restart that finds its signer's nonce lost aborts
    /// before any peer has reconnected). Messages it holds already change nothing there.
    pub(super) fn replay_history(&mut self, peer: PeerId, fx: &mut Vec<Effect>) {
        let Some(keys) = self.guard.peer_keys.get(&peer).cloned() else {
            return;
        };
        for (id, (msgs, delivered)) in &mut self.sent {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            if (s.phase.is_terminal() && s.phase != Phase::Aborted)
                || delivered.contains(&peer)
                || !keys.iter().any(|k| s.index_of(k).is_some())
            {
                continue;
            }
            delivered.insert(peer);
            for bytes in msgs.iter() {
                fx.push(Effect::Send {
                    peer,
                    bytes: bytes.clone(),
                });
            }
        }
    }

    /// A restart from a store: `scan` hands over its records one at a time (unfinished ones
    /// and those finished recently), `get` reads one back. Unfinished sessions are restored
    /// whole, finished ones as [`Core::finished_to_restore`] chooses; of the others only their
    /// ids, expiries and running clocks are kept ([`Core::restore_departed`]).
    ///
    /// # Errors
    /// The store's.
    pub fn restart<E>(
        &mut self,
        now: i64,
        scan: impl FnOnce(&mut dyn FnMut([u8; 16], SessionRecord)) -> Result<(), E>,
        get: impl Fn(&[u8; 16]) -> Result<Option<SessionRecord>, E>,
        bans: Vec<(PeerId, crate::store::BanRecord)>,
        fx: &mut Vec<Effect>,
    ) -> Result<(), E> {
        let (mut records, mut departed) = (Vec::new(), Vec::new());
        scan(&mut |id, rec| match Departed::of(SessionId(id), &rec) {
            Ok(Some(d)) => departed.push(d),
            // Unfinished, or not decodable (the restore logs it).
            Ok(None) | Err(_) => records.push((id, rec)),
        })?;
        for id in self.finished_to_restore(now, &mut departed) {
            if let Some(rec) = get(&id.0)? {
                records.push((id.0, rec));
            }
        }
        self.restore(now, records, bans, fx);
        self.restore_departed(now, departed);
        Ok(())
    }

    /// A restart's choice among the finished sessions it found (`departed`): the newest,
    /// finished within `finished_in_memory_ms` and holding at most `finished_in_memory_values`
    /// between them, come back into memory (their ids are returned and they leave the list);
    /// the others stay in the store ([`Core::restore_departed`]). Before, a restart read every
    /// session of the last hour back into memory, whatever the cap.
    pub fn finished_to_restore(&self, now: i64, departed: &mut Vec<Departed>) -> Vec<SessionId> {
        departed.sort_unstable_by_key(|d| std::cmp::Reverse((d.finished_at_ms, d.id)));
        let since = now.saturating_sub(self.settings.finished_in_memory_ms);
        let mut held = 0usize;
        let mut keep = 0;
        for d in departed.iter() {
            if d.finished_at_ms < since || held + d.values > self.settings.finished_in_memory_values
            {
                break;
            }
            held += d.values;
            keep += 1;
        }
        departed.drain(..keep).map(|d| d.id).collect()
    }

    /// Finished sessions a restart left in the store: their announcements start nothing until
    /// they expire, and broadcast clocks that still run go on (read back when they fire).
    pub fn restore_departed(&mut self, now: i64, departed: Vec<Departed>) {
        for d in departed {
            if self.sessions.contains_key(&d.id) {
                continue;
            }
            if d.joined && d.expires_at_ms > now {
                self.departed.insert(d.id, d.expires_at_ms);
            }
            if let Some(deadline) = d.clock_ms {
                self.unloaded.insert(d.id, (d.finished_at_ms, false));
                self.failover.schedule(deadline, d.id);
            }
        }
    }

    /// Whether a finished session is out of memory with its broadcast clock running: a
    /// command for it reads it back first ([`Core::on_loaded`]).
    pub fn needs_load(&self, id: SessionId) -> bool {
        self.unloaded.contains_key(&id)
    }

    /// A finished session read back from the store ([`Effect::Load`], or before a command):
    /// it is in memory again, a broadcast deadline that passed meanwhile takes its step now,
    /// and the messages kept for it are handled.
    pub fn on_loaded(
        &mut self,
        now: i64,
        id: SessionId,
        record: Option<SessionRecord>,
        fx: &mut Vec<Effect>,
    ) {
        let Some((finished_at, _)) = self.unloaded.remove(&id) else {
            return;
        };
        if self.sessions.contains_key(&id) {
            return;
        }
        let restored = record
            .ok_or_else(|| "not in the store".to_string())
            .and_then(|r| Session::from_record(id, &r, &self.keys, now));
        let s = match restored {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::error!(session = %id, error = %e, "a finished session could not be read back; its broadcast clock stops");
                self.failover.cancel(id);
                return;
            }
        };
        let due = s
            .failover
            .deadline_ms
            .filter(|d| *d <= now && super::failover::running(&s));
        self.finished_at.insert(id, finished_at);
        if let Some(rid) = &s.request_id {
            self.requests.entry(rid.clone()).or_insert(id);
        }
        self.insert_session(s);
        if due.is_some() {
            self.failover.cancel(id);
            self.failover_step(now, id, fx);
        }
        self.replay_orphans(now, id, fx);
    }

    /// The messages kept for a session before it was known (or while it was out of memory).
    pub(super) fn replay_orphans(&mut self, now: i64, id: SessionId, fx: &mut Vec<Effect>) {
        if let Some((_, orphans)) = self.orphans.remove(&id) {
            let values: usize = orphans
                .iter()
                .map(|(_, m)| super::sessions::values_in(m))
                .sum();
            self.orphan_values = self.orphan_values.saturating_sub(values);
            // Their senders heard back when they were kept: what they change is written now.
            let outer = self.swap_hold(None);
            for (p, m) in orphans {
                if let Err(r) = self.on_session_message(now, p, m, fx) {
                    self.reject(now, p, &r, fx);
                }
            }
            if self.is_unstored(&id) {
                self.persist(id, fx);
            }
            self.swap_hold(outer);
        }
    }

    /// Rebuild sessions from the store; resume unfinished ones by asking the signer again
    /// (it answers the same nonce / partial signature if it still holds the nonce, otherwise
    /// the session aborts with the reason).
    pub(super) fn restore_sessions(
        &mut self,
        now: i64,
        records: Vec<([u8; 16], SessionRecord)>,
        fx: &mut Vec<Effect>,
    ) {
        let mut resume = Vec::new();
        for (id, rec) in records {
            let id = SessionId(id);
            match Session::from_record(id, &rec, &self.keys, now) {
                Ok((mut s, sent)) => {
                    if self.planted.forget_unfinished_on_restore && !s.phase.is_terminal() {
                        continue;
                    }
                    if s.phase.is_terminal() {
                        self.finished_at
                            .insert(id, rec.finished_at_ms.unwrap_or(now).min(now));
                    } else {
                        s.skip_sequences(super::RESTART_SEQUENCE_SKIP);
                        // A slot still filling is not resumed: the pool setting is not restored
                        // with it, so asking the signer for a pooled nonce again would happen
                        // without the application's opt-in. It times out; filled slots stay.
                        if !s.pool_slot {
                            resume.push((id, s.phase));
                        }
                    }
                    if s.failover.confirmed.is_none()
                        && !s.failover.exhausted
                        && let Some(d) = s.failover.deadline_ms
                    {
                        self.failover.schedule(d, id);
                    }
                    self.sent.insert(id, (sent, Default::default()));
                    if let Some(rid) = &s.request_id {
                        self.requests.insert(rid.clone(), id);
                    }
                    self.insert_session(s);
                    self.schedule_timeout(id);
                }
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "stored session does not decode; skipped")
                }
            }
        }
        tracing::info!(
            sessions = self.sessions.len(),
            unfinished = resume.len(),
            "store loaded"
        );
        for (id, phase) in resume {
            let actions = match phase {
                Phase::NonceExchange => vec![Action::RequestNonces],
                Phase::PartialSigExchange => vec![Action::RequestPartialSignatures],
                _ => Vec::new(),
            };
            self.apply(now, id, actions, fx);
        }
    }
}
