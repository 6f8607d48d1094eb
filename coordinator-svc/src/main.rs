//! `musig2-coordinator`: parse arguments, load config, start tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use coordinator_svc::config::Config;

/// The MuSig2 coordinator: libp2p node, session state machine, election and failover, durable
/// store and the gRPC API for applications. Holds no private key.
#[derive(Debug, Parser)]
#[command(name = "musig2-coordinator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve until SIGINT/SIGTERM.
    Serve {
        /// TOML configuration (environment overrides: MUSIG2_COORDINATOR__SECTION__KEY).
        #[arg(long)]
        config: PathBuf,
    },
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    init_tracing(config.log.json, &config.log.level);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = coordinator_svc::server::start(&config, shutdown.clone()).await?;
    let info = running.node.info().await?;
    // Machine-readable lines for supervisors, the demo and tests.
    println!("api {}", running.api_addr);
    println!("peer {}", info.peer_id);
    for a in &info.listen_addresses {
        println!("listen {a}");
    }
    musig2_proto::transport::shutdown_signal(shutdown).await;
    tracing::info!("shutting down");
    match tokio::time::timeout(std::time::Duration::from_secs(10), running.task).await {
        Ok(r) => r??,
        Err(_) => tracing::warn!("grace period over; exiting with calls in flight"),
    }
    Ok(())
}

fn init_tracing(json: bool, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|rt| rt.block_on(serve(config))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("musig2-coordinator: {e:#}");
            ExitCode::from(2)
        }
    }
}
