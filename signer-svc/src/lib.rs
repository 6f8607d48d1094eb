//! The isolated MuSig2 signer (DESIGN §4): key store, secret nonce store, policy, audit journal
//! and the mutual-TLS gRPC service. It must stay safe when its caller is fully compromised.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod config;
pub mod guard;
pub mod journal;
pub mod keystore;
pub mod metrics;
pub mod nonces;
pub mod policy;
pub mod server;
pub mod service;

/// Start `tracing` (text or JSON lines) with a filter.
pub fn init_tracing(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
