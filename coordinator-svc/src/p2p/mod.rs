//! The peer-to-peer layer: the libp2p behaviour and its limits ([`behaviour`]), the signed
//! envelopes and DHT record checks every byte from a peer goes through ([`envelope`], pure), and
//! the per-peer outbox that keeps each sender's messages in order ([`outbox`]). GossipSub topics,
//! DHT keys and the envelope's domain tag are named in [`names`].

pub mod addresses;
pub mod behaviour;
pub mod envelope;
pub mod lanes;
pub mod names;
pub mod outbox;
