//! Messages waiting for a peer. Each session is a *lane*: a session's messages to a peer leave
//! one at a time, in order (its sequence numbers must arrive in order), while different
//! sessions' messages are in flight together, up to [`MAX_IN_FLIGHT`] per peer, so a peer's
//! link is not one round trip (and one remote commit) per message. Messages outside sessions
//! (hello, advertisements, signing requests) go alone: nothing overtakes them and they
//! overtake nothing. At most [`MAX_OUTBOX`] wait (older ones are kept, newer ones dropped with
//! a warning).
//!
//! A message leaves the queue only when the peer answered it (accepted or refused: an answer
//! means it arrived and was handled). One that was in flight when the connection closed, or
//! whose request failed, goes back to the front and is sent again after a growing delay
//! ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]); a peer that stays unreachable for
//! [`GIVE_UP_AFTER`] has its queue dropped (its sessions have timed out by then). Receivers
//! acknowledge a byte-identical copy of a message they already accepted, so sending one twice
//! (a request that timed out after it arrived) costs nothing.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::p2p::lanes::RequestId;
use libp2p::PeerId;

/// Messages kept per peer waiting to be sent.
pub const MAX_OUTBOX: usize = 1024;
/// Messages in flight to one peer at once (each of another session).
pub const MAX_IN_FLIGHT: usize = 32;
/// First delay before a failed message is sent again.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// A peer's queue is dropped after failing this long without a single answer.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);

/// A message's lane: its session, or `None` for a message outside sessions.
pub type Lane = Option<[u8; 16]>;

/// The lane of an envelope: the session id of a session message, `None` otherwise (and for
/// bytes that do not decode, which then go alone).
pub fn lane(bytes: &[u8]) -> Lane {
    use prost::Message as _;
    use shared::wire::pb;
    use shared::wire::pb::wire_message::Body as B;
    let env = pb::SignedEnvelope::decode(bytes).ok()?;
    let msg = pb::WireMessage::decode(env.payload.as_slice()).ok()?;
    match msg.body? {
        B::Announce(_)
        | B::Join(_)
        | B::NonceShare(_)
        | B::PartialSigShare(_)
        | B::Abort(_)
        | B::ValidationError(_)
        | B::SignatureFinalized(_)
        | B::BroadcastConfirmed(_) => msg.session_id.try_into().ok(),
        B::Advertisement(_) | B::SigningRequest(_) | B::SigningResponse(_) | B::Hello(_) => None,
    }
}

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<(Lane, Vec<u8>)>,
    in_flight: HashMap<RequestId, (Lane, Vec<u8>)>,
    failures: u32,
    retry_at: Option<Instant>,
    failing_since: Option<Instant>,
}

impl Queue {
    /// Where the next message to send waits: the first whose lane is free, unless a message
    /// outside sessions is in flight or first in line (it goes alone).
    fn ready(&self) -> Option<usize> {
        if self.in_flight.len() >= MAX_IN_FLIGHT
            || self.in_flight.values().any(|(l, _)| l.is_none())
        {
            return None;
        }
        let mut blocked: Vec<[u8; 16]> = self.in_flight.values().filter_map(|(l, _)| *l).collect();
        for (i, (l, _)) in self.waiting.iter().enumerate() {
            match l {
                None if i == 0 && self.in_flight.is_empty() => return Some(0),
                None => return None,
                Some(s) if blocked.contains(s) => {}
                Some(_) => return Some(i),
            }
            if let Some(s) = l {
                blocked.push(*s);
            }
        }
        None
    }
}

/// A message [`Outboxes::next`] picked, to hand back to [`Outboxes::sent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked {
    index: usize,
    /// The envelope.
    pub bytes: Vec<u8>,
}

/// Every peer's queue.
#[derive(Debug, Default)]
pub struct Outboxes {
    queues: HashMap<PeerId, Queue>,
}

impl Outboxes {
    /// Queue a message; `false` when the peer's queue is full (the message is dropped).
    pub fn push(&mut self, peer: PeerId, bytes: Vec<u8>) -> bool {
        let q = self.queues.entry(peer).or_default();
        if q.waiting.len() >= MAX_OUTBOX {
            return false;
        }
        q.waiting.push_back((lane(&bytes), bytes));
        true
    }

    /// The next message to send to `peer`: its lane is free, fewer than [`MAX_IN_FLIGHT`] are
    /// in flight, and no retry delay runs.
    pub fn next(&mut self, peer: &PeerId, now: Instant) -> Option<Picked> {
        let q = self.queues.get_mut(peer)?;
        if q.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        let index = q.ready()?;
        Some(Picked {
            index,
            bytes: q.waiting.get(index)?.1.clone(),
        })
    }

    /// The message [`Outboxes::next`] picked left as request `id`.
    pub fn sent(&mut self, peer: PeerId, picked: Picked, id: RequestId) {
        let q = self.queues.entry(peer).or_default();
        if let Some(m) = q.waiting.remove(picked.index) {
            q.in_flight.insert(id, m);
        }
    }

    /// Request `id` to `peer` was answered (`delivered`) or failed. `false` if it was not ours.
    pub fn done(&mut self, peer: &PeerId, id: RequestId, delivered: bool) -> bool {
        let now = Instant::now();
        let Some(q) = self.queues.get_mut(peer) else {
            return false;
        };
        let Some(m) = q.in_flight.remove(&id) else {
            return false;
        };
        if delivered {
            q.failures = 0;
            q.retry_at = None;
            q.failing_since = None;
            if q.waiting.is_empty() && q.in_flight.is_empty() {
                self.queues.remove(peer);
            }
            return true;
        }
        // Back to the front: before its lane's later messages.
        q.waiting.push_front(m);
        q.failures = q.failures.saturating_add(1);
        let delay = RETRY_FIRST
            .saturating_mul(1 << q.failures.min(10).saturating_sub(1))
            .min(RETRY_MAX);
        q.retry_at = Some(now + delay);
        let since = *q.failing_since.get_or_insert(now);
        if now.duration_since(since) > GIVE_UP_AFTER {
            tracing::warn!(%peer, dropped = q.waiting.len(), "peer unreachable for 15 min; its messages are dropped");
            self.queues.remove(peer);
        }
        true
    }

    /// The last connection to `peer` closed: what was in flight goes back to the front, to be
    /// sent again when a connection opens.
    pub fn disconnected(&mut self, peer: &PeerId) {
        if let Some(q) = self.queues.get_mut(peer) {
            let mut back: Vec<(RequestId, (Lane, Vec<u8>))> = q.in_flight.drain().collect();
            // Request ids increase: the oldest goes first again.
            back.sort_by_key(|(id, _)| *id);
            for (_, m) in back.into_iter().rev() {
                q.waiting.push_front(m);
            }
        }
    }

    /// Peers whose retry delay has passed with messages waiting; their delay is cleared, so
    /// what a peer that is not connected now waits for is its next connection (no timer spins
    /// on it).
    pub fn take_due(&mut self, now: Instant) -> Vec<PeerId> {
        let mut due = Vec::new();
        for (p, q) in &mut self.queues {
            if q.retry_at.is_some_and(|t| t <= now) {
                q.retry_at = None;
                if q.ready().is_some() {
                    due.push(*p);
                }
            }
        }
        due
    }

    /// The earliest retry time. Asked on every turn of the event loop: only queues with a
    /// retry pending are looked into (at 100 peers, checking every queue's lanes each turn
    /// was 3 % of a node's CPU).
    pub fn next_retry(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter_map(|q| q.retry_at.filter(|_| q.ready().is_some()))
            .min()
    }

    /// Drop everything for `peer` (it is blocked).
    pub fn remove(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `n`th request id.
    fn id(n: u64) -> RequestId {
        RequestId(n)
    }

    /// An envelope of a session message (`session` = None: an advertisement).
    fn frame(session: Option<u8>, n: u8) -> Vec<u8> {
        use prost::Message as _;
        use shared::wire::pb;
        use shared::wire::pb::wire_message::Body as B;
        let body = match session {
            Some(_) => B::Join(pb::SessionJoin {}),
            None => B::Advertisement(pb::SignerAdvertisement::default()),
        };
        let msg = pb::WireMessage {
            session_id: vec![session.unwrap_or(0); 16],
            sequence: u64::from(n),
            body: Some(body),
            ..Default::default()
        };
        pb::SignedEnvelope {
            payload: msg.encode_to_vec(),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn send(o: &mut Outboxes, peer: PeerId, t: Instant, n: u64) -> Option<Vec<u8>> {
        let p = o.next(&peer, t)?;
        let bytes = p.bytes.clone();
        o.sent(peer, p, id(n));
        Some(bytes)
    }

    #[test]
    fn a_failed_message_is_sent_again_first_and_leaves_only_when_answered() {
        let peer = PeerId::random();
        let mut o = Outboxes::default();
        let (a1, a2) = (frame(Some(1), 1), frame(Some(1), 2));
        assert!(o.push(peer, a1.clone()));
        assert!(o.push(peer, a2.clone()));
        let t0 = Instant::now();
        assert_eq!(send(&mut o, peer, t0, 0), Some(a1.clone()));
        assert_eq!(o.next(&peer, t0), None, "one in flight per session");
        // The connection closes while it is in flight: it goes back to the front.
        o.disconnected(&peer);
        assert_eq!(send(&mut o, peer, t0, 1), Some(a1.clone()));
        // The request fails: back to the front, after a delay.
        assert!(o.done(&peer, id(1), false));
        assert_eq!(o.next(&peer, Instant::now()), None);
        let retry = o.next_retry().unwrap_or(t0);
        assert!(retry > t0);
        assert_eq!(o.take_due(retry), vec![peer]);
        assert_eq!(
            o.next_retry(),
            None,
            "a due peer waits for its connection, not a timer"
        );
        assert_eq!(send(&mut o, peer, retry, 2), Some(a1));
        assert!(
            !o.done(&peer, id(1), true),
            "a stale request id is not ours"
        );
        assert!(o.done(&peer, id(2), true));
        assert_eq!(send(&mut o, peer, retry, 3), Some(a2));
        assert!(o.done(&peer, id(3), true));
        assert_eq!(o.next(&peer, retry), None);
        assert_eq!(o.next_retry(), None);
    }

    #[test]
    fn sessions_travel_together_each_in_order_and_other_messages_alone() {
        let peer = PeerId::random();
        let mut o = Outboxes::default();
        let t = Instant::now();
        // Session 1 twice, session 2, an advertisement, session 3.
        let q = [
            frame(Some(1), 1),
            frame(Some(1), 2),
            frame(Some(2), 1),
            frame(None, 1),
            frame(Some(3), 1),
        ];
        for f in &q {
            assert!(o.push(peer, f.clone()));
        }
        // 1/1 and 2/1 go together; 1/2 waits for 1/1; nothing overtakes the advertisement.
        assert_eq!(send(&mut o, peer, t, 0), Some(q[0].clone()));
        assert_eq!(send(&mut o, peer, t, 1), Some(q[2].clone()));
        assert_eq!(o.next(&peer, t), None);
        assert!(o.done(&peer, id(0), true));
        assert_eq!(send(&mut o, peer, t, 2), Some(q[1].clone()));
        assert_eq!(
            o.next(&peer, t),
            None,
            "the advertisement waits for nothing in flight"
        );
        assert!(o.done(&peer, id(1), true));
        assert!(o.done(&peer, id(2), true));
        // Alone: while it is in flight, session 3 waits.
        assert_eq!(send(&mut o, peer, t, 3), Some(q[3].clone()));
        assert_eq!(o.next(&peer, t), None);
        assert!(o.done(&peer, id(3), true));
        assert_eq!(send(&mut o, peer, t, 4), Some(q[4].clone()));
        // At most MAX_IN_FLIGHT sessions at once.
        let mut o = Outboxes::default();
        for s in 0..=MAX_IN_FLIGHT {
            assert!(o.push(peer, frame(Some(u8::try_from(s).unwrap_or(0)), 1)));
        }
        for n in 0..MAX_IN_FLIGHT {
            assert!(send(&mut o, peer, t, n as u64).is_some());
        }
        assert_eq!(o.next(&peer, t), None);
    }
}
