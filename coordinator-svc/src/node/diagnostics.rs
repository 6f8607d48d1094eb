//! Diagnostics used by tests and operators' tools: raw frames, raw gossip, raw DHT records and
//! envelopes signed by this node. Nothing here can speak for another peer or key: the bytes leave
//! as this node, and every receiver checks them like any other input. Kept apart from the node's
//! protocol API ([`super::NodeHandle`]'s other methods).

use libp2p::PeerId;
use shared::wire::pb;

use libp2p::kad::{self, Record};
use tokio::sync::oneshot;

use super::handle::Command;
use super::{ErrorReason, Node, NodeError, NodeHandle};

impl NodeHandle {
    /// Diagnostics: send raw bytes on the direct protocol to a connected peer and return its
    /// answer (empty = accepted, otherwise the refusal). The bytes leave as this node; nothing
    /// here can speak for another peer or key.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn send_raw(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.call(|reply| Command::SendRaw { peer, bytes, reply })
            .await?
    }

    /// Diagnostics: publish raw bytes on a GossipSub topic as this node.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when nobody is subscribed.
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Result<(), NodeError> {
        let topic = topic.to_string();
        self.call(|reply| Command::PublishRaw {
            topic,
            bytes,
            reply,
        })
        .await?
    }

    /// Diagnostics: publish an arbitrary DHT record as this node (other nodes validate it and
    /// refuse anything that is not a signed, attested announcement under its own id).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NodeError> {
        self.call(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// Diagnostics: wrap a message in this node's signed envelope with its attestation for
    /// `from` (a key this node speaks for).
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for a key this node does not hold.
    pub async fn envelope(
        &self,
        message: pb::WireMessage,
        from: [u8; 33],
    ) -> Result<Vec<u8>, NodeError> {
        self.call(|reply| Command::Envelope {
            message: Box::new(message),
            from,
            reply,
        })
        .await?
    }
}

impl Node {
    pub(super) fn send_raw(
        &mut self,
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    ) {
        if !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(NodeError::Unavailable(
                ErrorReason::NetworkUnavailable,
                format!("not connected to {peer}"),
            )));
            return;
        }
        let id = self.lanes.send(peer, bytes);
        self.raw_replies.insert(id, reply);
    }

    pub(super) fn publish_raw(
        &mut self,
        topic: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        let r = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(libp2p::gossipsub::IdentTopic::new(topic), bytes)
            .map(|_| ())
            .map_err(|e| NodeError::Unavailable(ErrorReason::NetworkUnavailable, e.to_string()));
        let _ = reply.send(r);
    }

    pub(super) fn put_raw_record(
        &mut self,
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    ) {
        let r = match self.swarm.behaviour_mut().kad.as_mut() {
            None => Err(NodeError::FailedPrecondition(
                ErrorReason::DhtDisabled,
                "the DHT is disabled".into(),
            )),
            Some(kad) => kad
                .put_record(Record::new(key, value), kad::Quorum::One)
                .map(|_| ())
                .map_err(|e| {
                    NodeError::Unavailable(ErrorReason::NetworkUnavailable, e.to_string())
                }),
        };
        let _ = reply.send(r);
    }
}
