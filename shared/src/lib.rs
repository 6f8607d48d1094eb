//! The pure core of the MuSig2 coordination system: MuSig2 math for BIP340 and Lotus
//! ([`musig`]), coordinator election ([`election`]), and the peer-to-peer wire messages with their
//! stateless validation ([`wire`]). No I/O, no async runtime, no network stack.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod config;
pub mod discipline;
pub mod election;
pub mod musig;
pub mod security;
pub mod wire;
