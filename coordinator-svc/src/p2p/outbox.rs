//! Messages waiting for a peer: one request in flight per peer keeps each sender's messages in
//! order; at most [`MAX_OUTBOX`] wait (older ones are kept, newer ones dropped with a warning).
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

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;

/// Messages kept per peer waiting to be sent.
pub const MAX_OUTBOX: usize = 1024;
/// First delay before a failed message is sent again.
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// Longest delay between two attempts.
pub const RETRY_MAX: Duration = Duration::from_secs(30);
/// A peer's queue is dropped after failing this long without a single answer.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Vec<u8>>,
    in_flight: Option<(OutboundRequestId, Vec<u8>)>,
    failures: u32,
    retry_at: Option<Instant>,
    failing_since: Option<Instant>,
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
        q.waiting.push_back(bytes);
        true
    }

    /// The next message to send to `peer`, if none is in flight and no retry delay runs.
    pub fn next(&mut self, peer: &PeerId, now: Instant) -> Option<Vec<u8>> {
        let q = self.queues.get_mut(peer)?;
        if q.in_flight.is_some() || q.retry_at.is_some_and(|t| t > now) {
            return None;
        }
        q.waiting.front().cloned()
    }

    /// The message [`Outboxes::next`] returned left as request `id`.
    pub fn sent(&mut self, peer: PeerId, id: OutboundRequestId) {
        let q = self.queues.entry(peer).or_default();
        if let Some(bytes) = q.waiting.pop_front() {
            q.in_flight = Some((id, bytes));
        }
    }

    /// Request `id` to `peer` was answered (`delivered`) or failed. `false` if it was not ours.
    pub fn done(&mut self, peer: &PeerId, id: OutboundRequestId, delivered: bool) -> bool {
        let now = Instant::now();
        let Some(q) = self.queues.get_mut(peer) else {
            return false;
        };
        let Some((_, bytes)) = q.in_flight.take_if(|(i, _)| *i == id) else {
            return false;
        };
        if delivered {
            q.failures = 0;
            q.retry_at = None;
            q.failing_since = None;
            if q.waiting.is_empty() {
                self.queues.remove(peer);
            }
            return true;
        }
        q.waiting.push_front(bytes);
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
        if let Some(q) = self.queues.get_mut(peer)
            && let Some((_, bytes)) = q.in_flight.take()
        {
            q.waiting.push_front(bytes);
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
                if q.in_flight.is_none() && !q.waiting.is_empty() {
                    due.push(*p);
                }
            }
        }
        due
    }

    /// The earliest retry time.
    pub fn next_retry(&self) -> Option<Instant> {
        self.queues
            .values()
            .filter(|q| q.in_flight.is_none() && !q.waiting.is_empty())
            .filter_map(|q| q.retry_at)
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

    /// The `n`th request id (ids are numbered per behaviour, from 1).
    fn id(n: u64) -> OutboundRequestId {
        let mut behaviour = libp2p::request_response::Behaviour::with_codec(
            crate::p2p::behaviour::DirectCodec,
            [(
                libp2p::StreamProtocol::new("/t"),
                libp2p::request_response::ProtocolSupport::Full,
            )],
            libp2p::request_response::Config::default(),
        );
        let peer = PeerId::random();
        let mut last = None;
        for _ in 0..=n {
            last =
                Some(behaviour.send_request(&peer, crate::net::DirectRequest::Frame(Vec::new())));
        }
        last.unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn a_failed_message_is_sent_again_first_and_leaves_only_when_answered() {
        let peer = PeerId::random();
        let mut o = Outboxes::default();
        assert!(o.push(peer, vec![1]));
        assert!(o.push(peer, vec![2]));
        let t0 = Instant::now();
        assert_eq!(o.next(&peer, t0), Some(vec![1]));
        o.sent(peer, id(0));
        assert_eq!(o.next(&peer, t0), None, "one in flight at a time");
        // The connection closes while it is in flight: it goes back to the front.
        o.disconnected(&peer);
        assert_eq!(o.next(&peer, t0), Some(vec![1]));
        o.sent(peer, id(1));
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
        assert_eq!(o.next(&peer, retry), Some(vec![1]));
        o.sent(peer, id(2));
        assert!(
            !o.done(&peer, id(1), true),
            "a stale request id is not ours"
        );
        assert!(o.done(&peer, id(2), true));
        assert_eq!(o.next(&peer, retry), Some(vec![2]));
        o.sent(peer, id(3));
        assert!(o.done(&peer, id(3), true));
        assert_eq!(o.next(&peer, retry), None);
        assert_eq!(o.next_retry(), None);
    }
}
