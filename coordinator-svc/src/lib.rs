//! The MuSig2 coordinator (DESIGN §5): the party's network-facing node. libp2p stack
//! ([`net`]), per-session state machine ([`session`]), the node event loop that owns the swarm
//! and every session ([`node`]), and the client of the party's signer ([`signer`]). It holds
//! no private key and no secret nonce.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod admin;
pub mod api;
pub mod config;
pub mod labels;
pub mod metrics;
pub mod p2p;
pub use p2p::{behaviour as net, envelope};
pub mod node;
pub mod protocol;
pub mod server;
pub use protocol::session;
pub mod signer;
pub mod store;
