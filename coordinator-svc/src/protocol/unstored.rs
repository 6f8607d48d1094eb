//! Peers' contributions accepted but not stored yet (issue 15).
//!
//! A member's nonce or partial signature that does not complete its phase changes nothing
//! anyone acts on yet. It is kept in memory and written with the session's next record: the
//! phase change it helps complete, our own contribution, or at the latest [`HOLD_MS`] later.
//! Before, each one took a commit of its own, about a third of a 3-party session's commits and
//! nearly all of a 100-party one's.
//!
//! An answer to a peer still means "on disk": the event loop holds the answer to such a frame
//! ([`Core::take_hold`]) until a write of its session that comes after it is durable. After a
//! crash here the sender, unanswered, sends the message again, as for any message in flight.
//! Events the message causes (a member joined) wait for the same write: nobody hears of a
//! state that is not on disk.

use std::collections::{BTreeMap, VecDeque};

use shared::election::SessionId;

use super::{Core, Effect, NodeEvent};

/// Longest a session's accepted contributions stay in memory only.
pub const HOLD_MS: i64 = 100;

/// Sessions with accepted changes no record holds yet.
#[derive(Debug, Default)]
pub(super) struct Unstored {
    /// Since when, and the events waiting for the write.
    sessions: BTreeMap<SessionId, (i64, Vec<NodeEvent>)>,
    /// The same sessions in the order they became unstored (entries of sessions stored since
    /// are skipped; the first is always one still waiting).
    order: VecDeque<(i64, SessionId)>,
    /// The session of the frame being handled, when its answer must wait for a write.
    hold: Option<SessionId>,
}

impl Unstored {
    /// Drop entries of sessions stored since from the front, so that the front is the oldest
    /// session still waiting (the deadline).
    fn drop_stale(&mut self) {
        while let Some((t, id)) = self.order.front() {
            if self.sessions.get(id).is_some_and(|(s, _)| s == t) {
                break;
            }
            self.order.pop_front();
        }
    }
}

impl Core {
    /// The frame being handled changed session `id` in memory only: its answer, and `events`,
    /// wait for the session's next write.
    pub(super) fn keep_unstored(&mut self, now: i64, id: SessionId, events: Vec<NodeEvent>) {
        self.mark_unstored(now, id, events);
        self.unstored.hold = Some(id);
    }

    /// Session `id` changed in memory only; `events` wait for its next write.
    pub(super) fn mark_unstored(&mut self, now: i64, id: SessionId, events: Vec<NodeEvent>) {
        let u = &mut self.unstored;
        match u.sessions.get_mut(&id) {
            Some((_, waiting)) => waiting.extend(events),
            None => {
                u.sessions.insert(id, (now, events));
                u.order.push_back((now, id));
            }
        }
    }

    /// The frame being handled repeats one already accepted: its answer waits too while what
    /// the first one changed is not stored.
    pub(super) fn hold_if_unstored(&mut self, id: SessionId) {
        if self.unstored.sessions.contains_key(&id) {
            self.unstored.hold = Some(id);
        }
    }

    /// Whether session `id` has accepted changes no record holds yet.
    pub(super) fn is_unstored(&self, id: &SessionId) -> bool {
        self.unstored.sessions.contains_key(id)
    }

    /// A record of `id` was just written to the batch: the events that waited for it follow it.
    pub(super) fn now_stored(&mut self, id: SessionId, fx: &mut Vec<Effect>) {
        if let Some((_, events)) = self.unstored.sessions.remove(&id) {
            fx.extend(events.into_iter().map(Effect::Emit));
            self.unstored.drop_stale();
        }
    }

    /// Called by the event loop right after [`Core::on_direct`]: the session whose next write
    /// the frame's answer must wait for (`None`: answer with the batch, as usual). A write of
    /// that session placed later in the same batch, or in a later one, covers the frame.
    pub fn take_hold(&mut self) -> Option<SessionId> {
        self.unstored.hold.take()
    }

    /// Forget a hold set by a message handled on behalf of another input (a kept message
    /// replayed when its session became known), returning the one to restore after.
    pub(super) fn swap_hold(&mut self, hold: Option<SessionId>) -> Option<SessionId> {
        std::mem::replace(&mut self.unstored.hold, hold)
    }

    /// When the oldest unstored session must be written.
    pub(super) fn unstored_deadline(&self) -> Option<i64> {
        self.unstored.order.front().map(|(t, _)| t + HOLD_MS)
    }

    /// Write the sessions unstored for [`HOLD_MS`].
    pub(super) fn flush_unstored(&mut self, now: i64, fx: &mut Vec<Effect>) {
        while let Some(&(t, id)) = self.unstored.order.front() {
            if t + HOLD_MS > now {
                break;
            }
            self.unstored.order.pop_front();
            if self
                .unstored
                .sessions
                .get(&id)
                .is_some_and(|(s, _)| *s == t)
            {
                self.persist(id, fx);
                // A session no longer in memory has no record to write: what waited goes.
                self.now_stored(id, fx);
            }
        }
    }

    /// Sessions waiting to be written, and their events (metrics, tests).
    pub fn unstored_sessions(&self) -> usize {
        self.unstored.sessions.len()
    }
}
