//! `musig2-signer`: the isolated signer (DESIGN §4). This build only parses its command line;
//! the gRPC service, key store, nonce store, policy and audit journal are the signer issue's work.

use clap::Parser;

/// The isolated MuSig2 signer: holds private keys and secret nonces, answers key listing, nonce
/// generation and partial signing over gRPC with mutual TLS. No other network.
#[derive(Debug, Parser)]
#[command(name = "musig2-signer", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "musig2-signer: the service is not built yet (see the signer issue); only --help and --version work"
    )
}
