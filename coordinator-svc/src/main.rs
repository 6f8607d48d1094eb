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
    /// Make a mutual-TLS PKI for one party: a CA, server certificates (signer, coordinator API)
    /// and client certificates (the coordinator towards its signer, applications). Prints the
    /// fingerprints for allow-lists. In Kubernetes, cert-manager does the same (deploy/).
    Certs {
        /// Output directory (created; existing files are not overwritten).
        #[arg(long)]
        out: PathBuf,
        /// DNS name(s) of the signer's server certificate.
        #[arg(long, default_value = "signer")]
        signer_name: Vec<String>,
        /// DNS name(s) of the coordinator API's server certificate.
        #[arg(long, default_value = "coordinator")]
        coordinator_name: Vec<String>,
        /// Common names of application client certificates (files `app-<name>.pem/.key`; the
        /// default matches `allowed_clients = ["cn:wallet-backend"]` of the example config).
        #[arg(long, default_value = "wallet-backend")]
        app: Vec<String>,
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
    if let Some(m) = running.metrics_addr {
        println!("metrics {m}");
    }
    for a in &info.external_addresses {
        println!("external {a}");
    }
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

fn certs(
    out: &std::path::Path,
    signer: &[String],
    coordinator: &[String],
    apps: &[String],
) -> anyhow::Result<()> {
    use musig2_proto::pki::{self, Ca, LeafSpec};
    std::fs::create_dir_all(out)?;
    // Every file this command writes; refuse before writing any if one exists (a file or a
    // symbolic link: private keys are never written through a planted link).
    let mut files: Vec<String> = vec!["ca.pem".into()];
    for name in ["signer", "coordinator", "coordinator-client"]
        .into_iter()
        .map(String::from)
        .chain(apps.iter().map(|a| format!("app-{a}")))
    {
        files.push(format!("{name}.pem"));
        files.push(format!("{name}.key"));
    }
    for f in &files {
        let p = out.join(f);
        if std::fs::symlink_metadata(&p).is_ok() {
            anyhow::bail!(
                "{} exists; refusing to overwrite a PKI (nothing was written)",
                p.display()
            );
        }
    }
    let ca = Ca::new("musig2 party CA")?;
    let ca_path = ca.write_cert(out, "ca")?;
    let server = |names: &[String]| LeafSpec {
        common_name: names.first().cloned().unwrap_or_default(),
        dns_names: names.to_vec(),
        ips: vec![std::net::IpAddr::from([127, 0, 0, 1])],
        server: true,
        ..LeafSpec::default()
    };
    let s = ca.issue_to(out, "signer", &server(signer))?;
    let c = ca.issue_to(out, "coordinator", &server(coordinator))?;
    let cc = ca.issue_to(out, "coordinator-client", &pki::client("coordinator"))?;
    println!("ca                 {}", ca_path.display());
    println!(
        "signer server      {}  sha256:{}",
        s.cert.display(),
        s.fingerprint
    );
    println!(
        "coordinator API    {}  sha256:{}",
        c.cert.display(),
        c.fingerprint
    );
    println!(
        "coordinator→signer {}  sha256:{}  (signer allowed_clients: \"cn:coordinator\")",
        cc.cert.display(),
        cc.fingerprint
    );
    for a in apps {
        let l = ca.issue_to(out, &format!("app-{a}"), &pki::client(a))?;
        println!(
            "application {a:<6} {}  sha256:{}  (coordinator api.allowed_clients: \"cn:{a}\")",
            l.cert.display(),
            l.fingerprint
        );
    }
    println!(
        "private keys (*.key) are written 0600; the CA key is not kept: issue new leaves by re-running into a new directory"
    );
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
        Command::Certs {
            out,
            signer_name,
            coordinator_name,
            app,
        } => certs(&out, &signer_name, &coordinator_name, &app),
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
