//! Rust code generated from `proto/musig2/v1`: the gRPC services of the signer
//! (`SignerService`) and the coordinator (`CoordinatorService`, `CoordinatorAdminService`).
//! Types shared with the peer-to-peer messages are re-exported from `shared::wire::pb`.
#![allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    missing_debug_implementations
)]

/// Package `musig2.v1`.
pub mod v1 {
    tonic::include_proto!("musig2.v1");
    pub use shared::wire::pb::{
        ElectionMethod, SessionContext, SessionPhase, SignatureFormat, TaprootTweak,
        TransactionType, Tweak,
    };
}

/// The encoded file descriptor set of every `musig2.v1` file (for gRPC reflection).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/musig2_descriptor.bin"));

pub mod files;
pub mod pki;
pub mod transport;
