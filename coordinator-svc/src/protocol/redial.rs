//! Keeping session participants connected: when the last connection to a peer that holds a key
//! of one of our unfinished sessions closes, the core asks for it to be dialled again
//! ([`Effect::Dial`]) with a growing delay (1 s, 2 s, 4 s … at most [`REDIAL_MAX_MS`]) until a
//! connection opens or no unfinished session needs the peer any more. Without this, a party
//! restarted on the same address was never dialled again by its peers unless it had bootstrap
//! peers of its own, and sessions waiting on it stayed stuck.

use libp2p_identity::PeerId;

use super::deadlines::DeadlineQueue;
use super::{Core, Effect};

/// First delay before dialling a participant whose connection closed, ms.
pub const REDIAL_FIRST_MS: i64 = 1_000;
/// Longest delay between two dials of the same participant, ms.
pub const REDIAL_MAX_MS: i64 = 30_000;

/// Participants to dial again, and how often each was tried.
#[derive(Debug, Default)]
pub(super) struct Redial {
    queue: DeadlineQueue<PeerId>,
    attempts: std::collections::BTreeMap<PeerId, u32>,
}

impl Redial {
    pub(super) fn next(&self) -> Option<i64> {
        self.queue.next()
    }

    pub(super) fn len(&self) -> usize {
        self.attempts.len()
    }
}

fn delay(attempts: u32) -> i64 {
    REDIAL_FIRST_MS
        .saturating_mul(1_i64 << attempts.min(16))
        .min(REDIAL_MAX_MS)
}

impl Core {
    /// Whether an unfinished session we take part in needs `peer` (it speaks for another of
    /// its keys) and the peer is not banned.
    fn needs(&self, peer: &PeerId) -> bool {
        if self.guard.is_banned(peer) {
            return false;
        }
        let Some(keys) = self.guard.peer_keys.get(peer) else {
            return false;
        };
        self.sessions.values().any(|s| {
            !s.phase.is_terminal()
                && !s.local.is_empty()
                && keys
                    .iter()
                    .any(|k| s.index_of(k).is_some() && !self.keys.contains(k))
        })
    }

    /// The last connection to `peer` closed: dial it again later if a session needs it.
    pub(super) fn schedule_redial(&mut self, now: i64, peer: PeerId) {
        if self.needs(&peer) {
            self.redial.attempts.insert(peer, 0);
            self.redial.queue.schedule(now + delay(0), peer);
        }
    }

    /// A connection to `peer` opened: no more dialling.
    pub(super) fn cancel_redial(&mut self, peer: PeerId) {
        self.redial.queue.cancel(peer);
        self.redial.attempts.remove(&peer);
    }

    /// Dial the participants whose time came, and schedule the next try.
    pub(super) fn on_redial_due(&mut self, now: i64, fx: &mut Vec<Effect>) {
        for peer in self.redial.queue.pop_due(now) {
            if self.connected.contains(&peer) || !self.needs(&peer) {
                self.redial.attempts.remove(&peer);
                continue;
            }
            let attempts = self.redial.attempts.entry(peer).or_insert(0);
            *attempts = attempts.saturating_add(1);
            let next = now + delay(*attempts);
            tracing::debug!(%peer, attempts = *attempts, "dialling a session participant again");
            fx.push(Effect::Dial(peer));
            self.redial.queue.schedule(next, peer);
        }
    }
}
