//! `musig2-coordinator`: the party's network-facing node (DESIGN §5). This build only parses its
//! command line; libp2p, sessions, the store and the gRPC API are the coordinator issues' work.

use clap::Parser;

/// The MuSig2 coordinator: libp2p node, session state machine, election and failover, security
/// manager, durable store and the gRPC API for applications. Holds no private key.
#[derive(Debug, Parser)]
#[command(name = "musig2-coordinator", version, about, long_about = None)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    anyhow::bail!(
        "musig2-coordinator: the service is not built yet (see the coordinator issues); only --help and --version work"
    )
}
