//! Messages waiting for a peer: one request in flight per peer keeps each sender's messages in
//! order; at most [`MAX_OUTBOX`] wait (older ones are kept, newer ones dropped with a warning).

use std::collections::{HashMap, VecDeque};

use libp2p::PeerId;
use libp2p::request_response::OutboundRequestId;

/// Messages kept per peer waiting to be sent.
pub const MAX_OUTBOX: usize = 1024;

#[derive(Debug, Default)]
struct Queue {
    waiting: VecDeque<Vec<u8>>,
    in_flight: Option<OutboundRequestId>,
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

    /// The next message to send to `peer`, if none is in flight.
    pub fn next(&mut self, peer: &PeerId) -> Option<Vec<u8>> {
        let q = self.queues.get_mut(peer)?;
        if q.in_flight.is_some() {
            return None;
        }
        q.waiting.pop_front()
    }

    /// The message taken by [`Outboxes::next`] left as request `id`.
    pub fn sent(&mut self, peer: PeerId, id: OutboundRequestId) {
        self.queues.entry(peer).or_default().in_flight = Some(id);
    }

    /// Request `id` to `peer` was answered or failed. `false` if it was not ours.
    pub fn done(&mut self, peer: &PeerId, id: OutboundRequestId) -> bool {
        match self.queues.get_mut(peer) {
            Some(q) if q.in_flight == Some(id) => {
                q.in_flight = None;
                true
            }
            _ => false,
        }
    }

    /// The last connection to `peer` closed: what was in flight is gone.
    pub fn disconnected(&mut self, peer: &PeerId) {
        if let Some(q) = self.queues.get_mut(peer) {
            q.in_flight = None;
        }
    }

    /// Drop everything for `peer` (it is blocked).
    pub fn remove(&mut self, peer: &PeerId) {
        self.queues.remove(peer);
    }
}
