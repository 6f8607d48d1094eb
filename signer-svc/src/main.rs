//! `musig2-signer`: parse arguments, load config, start tracing, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use signer_svc::config::Config;
use signer_svc::keystore::{
    self, DEFAULT_KDF_ITERATIONS, DEFAULT_KDF_MEMORY_KIB, KeyStore, MIN_KDF_MEMORY_KIB,
};
use zeroize::Zeroizing;

/// The isolated MuSig2 signer: holds private keys and secret nonces, answers key listing, nonce
/// generation and partial signing over gRPC with mutual TLS. No other network.
#[derive(Debug, Parser)]
#[command(name = "musig2-signer", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve gRPC with mutual TLS until SIGINT/SIGTERM.
    Serve {
        /// TOML configuration (environment overrides: MUSIG2_SIGNER__SECTION__KEY).
        #[arg(long)]
        config: PathBuf,
    },
    /// Create a new random key in a key file (created if missing); prints only its public key.
    Keygen {
        #[command(flatten)]
        key: KeyArgs,
        /// Do nothing if the file already holds a key with this label (print its public key):
        /// for an init container that makes a development key on first start only.
        #[arg(long)]
        if_missing: bool,
    },
    /// Import a secret key (64 hex characters in a file) into a key file.
    Import {
        #[command(flatten)]
        key: KeyArgs,
        /// File holding the secret key as 64 hex characters.
        #[arg(long)]
        secret_file: PathBuf,
    },
    /// List the public keys of a key file (no passphrase needed).
    List {
        /// Key file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Audit journal tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Verify the hash chain of a journal; exit 1 if it is broken.
    Verify {
        /// Journal file.
        file: PathBuf,
        /// Require this head hash (hex) as the last record, to detect removed final records.
        #[arg(long)]
        expect_head: Option<String>,
    },
    /// What a key did: its nonces, partial signatures (format, key set, tweaks, output key,
    /// message) and attestations, oldest first. The chain is verified first; a broken journal
    /// is refused (exit 1).
    Show {
        /// Journal file.
        file: PathBuf,
        /// The key (33-byte compressed, hex).
        #[arg(long)]
        key: String,
        /// Only records at or after this time: RFC 3339 (`2026-11-25T00:00:00Z`) or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Print each matching record as its JSON body instead of a line of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct KeyArgs {
    /// Key file.
    #[arg(long)]
    file: PathBuf,
    /// Label for the new key (unique in the file).
    #[arg(long)]
    label: String,
    /// File holding the passphrase.
    #[arg(long, conflicts_with = "passphrase_env")]
    passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase.
    #[arg(long)]
    passphrase_env: Option<String>,
    /// Argon2id memory for a new file, KiB.
    #[arg(long, default_value_t = DEFAULT_KDF_MEMORY_KIB)]
    kdf_memory_kib: u32,
    /// Argon2id passes for a new file.
    #[arg(long, default_value_t = DEFAULT_KDF_ITERATIONS)]
    kdf_iterations: u32,
}

fn add_key(args: &KeyArgs, secret: shared::musig::SecretKey) -> anyhow::Result<[u8; 33]> {
    if args.kdf_memory_kib < MIN_KDF_MEMORY_KIB || args.kdf_iterations == 0 {
        anyhow::bail!(
            "--kdf-memory-kib must be at least {MIN_KDF_MEMORY_KIB} and --kdf-iterations at least 1"
        );
    }
    let pass = keystore::read_passphrase(
        args.passphrase_file.as_deref(),
        args.passphrase_env.as_deref(),
    )?;
    let mut store = if args.file.exists() {
        KeyStore::open(&args.file, &pass)?
    } else {
        KeyStore::empty()
    };
    let public = secret.public_key();
    store.add(args.label.clone(), secret)?;
    store.save(&args.file, &pass, args.kdf_memory_kib, args.kdf_iterations)?;
    Ok(public)
}

async fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    signer_svc::init_tracing(config.log.json, &config.log.level);
    let pass = keystore::read_passphrase(
        config.keys.passphrase_file.as_deref(),
        config.keys.passphrase_env.as_deref(),
    )?;
    let file = config.keys.file.clone();
    let keys = tokio::task::spawn_blocking(move || KeyStore::open(&file, &pass)).await??;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = signer_svc::server::start(&config, keys, shutdown.clone()).await?;
    // Machine-readable line for supervisors and tests.
    println!("listening {}", running.addr);
    musig2_proto::transport::shutdown_signal(shutdown).await;
    tracing::info!("shutting down");
    match tokio::time::timeout(std::time::Duration::from_secs(10), running.task).await {
        Ok(r) => r??,
        Err(_) => tracing::warn!("grace period over; exiting with requests in flight"),
    }
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(config))?;
        }
        Command::Keygen {
            key: args,
            if_missing,
        } => {
            if if_missing
                && args.file.exists()
                && let Some(e) = keystore::list_public(&args.file)?
                    .into_iter()
                    .find(|e| e.label == args.label)
            {
                eprintln!(
                    "{} already holds key {:?}; nothing to do",
                    args.file.display(),
                    e.label
                );
                println!("{}", e.public_key);
                return Ok(ExitCode::SUCCESS);
            }
            let public = add_key(&args, shared::musig::SecretKey::generate(&mut rand::rng()))?;
            println!("{}", hex::encode(public));
        }
        Command::Import { key, secret_file } => {
            let text = Zeroizing::new(std::fs::read_to_string(&secret_file)?);
            let mut bytes = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| {
                anyhow::anyhow!("{}: expected 64 hex characters", secret_file.display())
            })?;
            let secret = shared::musig::SecretKey::from_bytes(&bytes).map_err(|_| {
                anyhow::anyhow!(
                    "{}: not a valid secp256k1 secret key",
                    secret_file.display()
                )
            })?;
            println!("{}", hex::encode(add_key(&key, secret)?));
        }
        Command::List { file } => {
            for e in keystore::list_public(&file)? {
                println!("{}\t{}", e.public_key, e.label);
            }
        }
        Command::Audit {
            command: AuditCommand::Verify { file, expect_head },
        } => {
            let report = match signer_svc::journal::verify_file(&file) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("FAILED: {e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            println!("records {}\nhead {}", report.records, report.head);
            if let Some(torn) = report.torn_tail {
                println!(
                    "warning: torn final record of {torn} bytes (crash mid-write); the whole records verify"
                );
            }
            if let Some(h) = expect_head
                && !h.eq_ignore_ascii_case(&report.head)
            {
                eprintln!(
                    "FAILED: head is {}, expected {h} (records removed from the end?)",
                    report.head
                );
                return Ok(ExitCode::FAILURE);
            }
            println!("OK");
        }
        Command::Audit {
            command:
                AuditCommand::Show {
                    file,
                    key,
                    since,
                    json,
                },
        } => return audit_show(&file, &key, since.as_deref(), json),
    }
    Ok(ExitCode::SUCCESS)
}

fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{ms}ms"))
}

fn parse_since(s: &str) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|e| anyhow::anyhow!("--since {s:?}: neither Unix ms nor RFC 3339 ({e})"))?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000)
        .map_err(|_| anyhow::anyhow!("--since {s:?}: out of range"))
}

fn audit_show(
    file: &std::path::Path,
    key: &str,
    since: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    use signer_svc::journal::RecordKind;
    let key = key.trim().to_ascii_lowercase();
    if key.len() != 66 || hex::decode(&key).is_err() {
        anyhow::bail!("--key must be a 33-byte compressed public key in hex");
    }
    let since = since.map(parse_since).transpose()?;
    let data = std::fs::read(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let (report, records) = match signer_svc::journal::records(&file.display().to_string(), &data) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("FAILED: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let (mut nonces, mut psigs, mut attests) = (0u64, 0u64, 0u64);
    for r in records.iter().filter(|r| {
        r.event.key.as_deref() == Some(key.as_str()) && since.is_none_or(|t| r.time_ms >= t)
    }) {
        match r.kind {
            RecordKind::Nonce => nonces += 1,
            RecordKind::PartialSignature => psigs += 1,
            RecordKind::Attestation => attests += 1,
            _ => {}
        }
        if json {
            println!("{}", serde_json::to_string(r)?);
            continue;
        }
        let e = &r.event;
        let mut line = format!("{}  seq {}  {:?}", rfc3339(r.time_ms), r.seq, r.kind);
        let mut field = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                line.push_str(&format!("  {name} {v}"));
            }
        };
        field("session", e.session_id.clone());
        field("format", e.format.clone());
        field("output_key", e.output_key.clone());
        field("aggregate_key", e.aggregate_key.clone());
        field(
            "signers",
            e.signer_keys.as_ref().map(|k| k.len().to_string()),
        );
        field(
            "tweaks",
            e.tweaks.as_ref().map(|t| {
                if t.is_empty() {
                    "none".into()
                } else {
                    t.join(",")
                }
            }),
        );
        field("message", e.message.clone());
        field(
            "message_sha256",
            e.message_sha256
                .clone()
                .map(|h| format!("{h} ({} bytes)", e.message_len.unwrap_or(0))),
        );
        field("partial_signature", e.partial_signature.clone());
        field("peer_id", e.peer_id.clone());
        field("expires", e.expires_at_ms.map(rfc3339));
        println!("{line}");
    }
    eprintln!(
        "key {key}: {psigs} partial signatures, {nonces} nonces, {attests} attestations{} (journal of {} records verified, head {})",
        since
            .map(|t| format!(" since {}", rfc3339(t)))
            .unwrap_or_default(),
        report.records,
        report.head
    );
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("musig2-signer: {e:#}");
            ExitCode::from(2)
        }
    }
}
