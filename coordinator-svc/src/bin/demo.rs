//! `musig2-demo`: a real multi-party signing on loopback. It makes a throwaway mutual-TLS PKI,
//! starts N `musig2-signer` and N `musig2-coordinator` processes, connects them, signs through
//! the coordinators' gRPC API while showing progress, verifies the signature, and stops every
//! process (also on Ctrl-C). Progress goes to stderr; the result to stdout (`--json`: one
//! object).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use musig2_proto::pki::{self, Ca};
use musig2_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use shared::musig::{Signature, SignatureFormat};
use tonic::transport::Channel;

/// Run a real N-party MuSig2 signing between separate signer and coordinator processes.
#[derive(Debug, Parser)]
#[command(name = "musig2-demo", version, about)]
struct Args {
    /// Number of parties (each: one signer process and one coordinator process).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=100))]
    parties: u8,
    /// Signature format: bip340 or lotus.
    #[arg(long, default_value = "bip340")]
    format: String,
    /// Message to sign, hex (Lotus: exactly 32 bytes). Default: SHA-256("musig2 demo").
    #[arg(long)]
    message: Option<String>,
    /// Sign for the Taproot key-path output of the aggregate key.
    #[arg(long)]
    taproot: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

struct Proc {
    name: String,
    child: std::process::Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first for a clean shutdown, then make sure.
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            for _ in 0..50 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = &self.name;
    }
}

fn say(json: bool, line: &str) {
    let _ = json;
    eprintln!("{line}");
}

/// The sibling binaries, built first when run through cargo.
fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable directory")?.to_path_buf();
    let no_build = std::env::var_os("MUSIG2_DEMO_NO_BUILD").is_some();
    if let (Ok(cargo), false) = (std::env::var("CARGO"), no_build) {
        let release = dir.ends_with("release");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "-q",
            "-p",
            "signer-svc",
            "-p",
            "coordinator-svc",
            "--bins",
        ]);
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .context("running cargo build for the service binaries")?;
        if !st.success() {
            bail!("building musig2-signer and musig2-coordinator failed");
        }
    }
    let (s, c) = (dir.join("musig2-signer"), dir.join("musig2-coordinator"));
    for b in [&s, &c] {
        if !b.exists() {
            bail!(
                "{} not found; build it first (cargo build --release --bins)",
                b.display()
            );
        }
    }
    Ok((s, c))
}

fn spawn(
    name: &str,
    cmd: &mut Command,
    want: &[&str],
) -> anyhow::Result<(Proc, Vec<(String, String)>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("stdout")?;
    let proc_ = Proc {
        name: name.to_string(),
        child,
    };
    let mut out = std::io::BufReader::new(stdout);
    let mut lines = Vec::new();
    let mut seen = 0;
    while seen < want.len() {
        let mut l = String::new();
        if out.read_line(&mut l)? == 0 {
            bail!("{name} exited during start-up");
        }
        let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
        if want.contains(&k) && !lines.iter().any(|(x, _): &(String, String)| x == k) {
            seen += 1;
        }
        lines.push((k.to_string(), v.to_string()));
    }
    std::thread::spawn(move || for _ in out.lines() {});
    Ok((proc_, lines))
}

fn value<'a>(lines: &'a [(String, String)], key: &str) -> anyhow::Result<&'a str> {
    lines
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .with_context(|| format!("no {key} line"))
}

struct Party {
    key: String,
    client: CoordinatorServiceClient<Channel>,
    listen: String,
}

async fn start_party(
    i: usize,
    dir: &Path,
    ca: &Ca,
    ca_path: &Path,
    bins: &(PathBuf, PathBuf),
    procs: &mut Vec<Proc>,
) -> anyhow::Result<Party> {
    let d = dir.join(format!("party-{i}"));
    std::fs::create_dir_all(d.join("data"))?;
    let signer_tls = ca.issue_to(&d, "signer", &pki::loopback_server("signer"))?;
    let coord_client = ca.issue_to(
        &d,
        "coordinator-client",
        &pki::client(&format!("coordinator-{i}")),
    )?;
    let api_tls = ca.issue_to(&d, "api", &pki::loopback_server("coordinator"))?;
    let app = ca.issue_to(&d, "app", &pki::client("demo-app"))?;
    std::fs::write(
        d.join("passphrase"),
        format!("demo passphrase {i} (throwaway)"),
    )?;
    let out = Command::new(&bins.0)
        .args([
            "keygen",
            "--label",
            &format!("party-{i}"),
            "--kdf-memory-kib",
            "8192",
            "--kdf-iterations",
            "1",
            "--file",
        ])
        .arg(d.join("keys.json"))
        .arg("--passphrase-file")
        .arg(d.join("passphrase"))
        .output()?;
    if !out.status.success() {
        bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
    }
    let key = String::from_utf8(out.stdout)?.trim().to_string();
    std::fs::write(
        d.join("signer.toml"),
        format!(
            "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"cn:coordinator-{i}\"]\n[keys]\nfile = \"keys.json\"\npassphrase_file = \"passphrase\"\n[audit]\njournal = \"journal.log\"\n[log]\nlevel = \"error\"\n",
            signer_tls.cert.display(),
            signer_tls.key.display(),
            ca_path.display()
        ),
    )?;
    let (sp, lines) = spawn(
        &format!("signer {i}"),
        Command::new(&bins.0)
            .args(["serve", "--config"])
            .arg(d.join("signer.toml")),
        &["listening"],
    )?;
    procs.push(sp);
    let signer_port = value(&lines, "listening")?
        .rsplit(':')
        .next()
        .unwrap_or("0")
        .to_string();
    std::fs::write(
        d.join("coordinator.toml"),
        format!(
            "listen = [\"/ip4/127.0.0.1/tcp/0\"]\ndata_dir = \"data\"\nbroadcast_timeout_ms = 5000\n[signer]\nurl = \"https://localhost:{signer_port}\"\nca = \"{ca}\"\ncert = \"{}\"\nkey = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{ca}\"\nallowed_clients = [\"cn:demo-app\"]\n[log]\nlevel = \"error\"\n",
            coord_client.cert.display(),
            coord_client.key.display(),
            api_tls.cert.display(),
            api_tls.key.display(),
            ca = ca_path.display()
        ),
    )?;
    let (cp, lines) = spawn(
        &format!("coordinator {i}"),
        Command::new(&bins.1)
            .args(["serve", "--config"])
            .arg(d.join("coordinator.toml")),
        &["api", "peer", "listen"],
    )?;
    procs.push(cp);
    let api = value(&lines, "api")?.to_string();
    let listen = value(&lines, "listen")?.to_string();
    let tls = musig2_proto::transport::client_tls(ca_path, &app.cert, &app.key, "localhost")?;
    let port = api.rsplit(':').next().unwrap_or("0");
    let channel = Channel::from_shared(format!("https://localhost:{port}"))?
        .tls_config(tls)?
        .connect()
        .await?;
    Ok(Party {
        key,
        client: CoordinatorServiceClient::new(channel),
        listen,
    })
}

async fn run(args: Args, procs: &mut Vec<Proc>) -> anyhow::Result<serde_json::Value> {
    let format: SignatureFormat = args
        .format
        .parse()
        .map_err(|_| anyhow::anyhow!("--format must be bip340 or lotus"))?;
    let message = match &args.message {
        Some(h) => hex::decode(h).context("--message must be hex")?,
        None => <sha2::Sha256 as sha2::Digest>::digest(b"musig2 demo").to_vec(),
    };
    if format == SignatureFormat::Lotus && message.len() != 32 {
        bail!(
            "--message must be 32 bytes for the Lotus format (got {})",
            message.len()
        );
    }
    let n = usize::from(args.parties);
    let bins = binaries()?;
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("musig2 demo CA")?;
    let ca_path = ca.write_cert(dir.path(), "ca")?;
    say(
        args.json,
        &format!(
            "starting {n} signers and {n} coordinators in {} …",
            dir.path().display()
        ),
    );
    let mut parties = Vec::new();
    for i in 0..n {
        let p = start_party(i, dir.path(), &ca, &ca_path, &bins, procs).await?;
        say(args.json, &format!("  party {i}: signer key {}", p.key));
        parties.push(p);
    }
    say(args.json, "connecting the coordinators (libp2p, Noise) …");
    for i in 0..n {
        for j in 0..i {
            let addr = parties[j].listen.clone();
            parties[i]
                .client
                .connect_peer(pb::ConnectPeerRequest { multiaddr: addr })
                .await?;
        }
    }
    for p in parties.iter_mut() {
        for _ in 0..200 {
            if p.client
                .get_node_info(pb::GetNodeInfoRequest {})
                .await?
                .into_inner()
                .connected_peers as usize
                >= n - 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Progress: every party's events.
    let mut sorted: Vec<String> = parties.iter().map(|p| p.key.clone()).collect();
    sorted.sort();
    for (i, p) in parties.iter_mut().enumerate() {
        let mut stream = p
            .client
            .watch_events(pb::WatchEventsRequest::default())
            .await?
            .into_inner();
        let mut client = p.client.clone();
        let is_creator = i == 0;
        tokio::spawn(async move {
            while let Ok(Some(m)) = stream.message().await {
                match m.event {
                    Some(Ev::SessionCreated(s)) if !is_creator => {
                        if let Some(s) = s.session {
                            eprintln!("  party {i}: heard of session {}; joining", s.session_id);
                            let mut c = client.clone();
                            tokio::spawn(async move {
                                let _ = c
                                    .sign(pb::SignRequest {
                                        session_id: s.session_id,
                                        timeout_ms: Some(60_000),
                                        ..Default::default()
                                    })
                                    .await;
                            });
                        }
                    }
                    Some(Ev::PhaseChanged(x)) => {
                        let name = |v: i32| {
                            pb::SessionPhase::try_from(v)
                                .map(|p| {
                                    p.as_str_name()
                                        .trim_start_matches("SESSION_PHASE_")
                                        .to_string()
                                })
                                .unwrap_or_default()
                        };
                        eprintln!(
                            "  party {i}: {} -> {}",
                            name(x.from_phase),
                            name(x.to_phase)
                        );
                    }
                    Some(Ev::ShouldBroadcast(x)) => {
                        eprintln!(
                            "  party {i}: elected to broadcast (sorted index {}, attempt {})",
                            x.coordinator_index, x.attempt
                        );
                        let _ = client
                            .notify_broadcast_complete(pb::NotifyBroadcastCompleteRequest {
                                session_id: x.session_id,
                                broadcast_reference: "demo: not broadcast anywhere".into(),
                            })
                            .await;
                    }
                    Some(Ev::BroadcastConfirmed(_)) => {
                        eprintln!("  party {i}: broadcast confirmed")
                    }
                    Some(Ev::SessionError(x)) => {
                        eprintln!("  party {i}: session error: {}", x.reason)
                    }
                    _ => {}
                }
            }
        });
    }
    let tweaks = if args.taproot {
        vec![pb::Tweak {
            kind: Some(shared::wire::pb::tweak::Kind::Taproot(pb::TaprootTweak {
                merkle_root: vec![],
            })),
        }]
    } else {
        vec![]
    };
    say(
        args.json,
        &format!(
            "party 0 creates the session ({format}{}) and signs …",
            if args.taproot { ", Taproot" } else { "" }
        ),
    );
    let r = parties[0]
        .client
        .sign(pb::SignRequest {
            signer_keys: sorted
                .iter()
                .map(|k| hex::decode(k).unwrap_or_default())
                .collect(),
            message: message.clone(),
            format: shared::wire::format_to_pb(format) as i32,
            tweaks,
            timeout_ms: Some(60_000),
            ..Default::default()
        })
        .await
        .context("signing")?
        .into_inner();
    let s = r.session.context("no session in the answer")?;
    let output: [u8; 33] = s.output_key.as_slice().try_into().context("output key")?;
    let sig = Signature(
        r.signature
            .as_slice()
            .try_into()
            .context("signature length")?,
    );
    let verified = shared::musig::verify(format, &output, &message, &sig).is_ok();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut out = serde_json::json!({
        "format": format.as_str(),
        "signers": sorted,
        "aggregate_key": hex::encode(&s.aggregate_key),
        "message": hex::encode(&message),
        "signature": hex::encode(sig.0),
        "verified": verified,
        "session_id": s.session_id,
        "coordinator_index": s.coordinator_index,
    });
    if args.taproot {
        out["tweaked_key"] = serde_json::Value::String(hex::encode(output));
    }
    if !verified {
        bail!("the signature does not verify: {out}");
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("musig2-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut procs = Vec::new();
    let result = rt.block_on(async {
        tokio::select! {
            r = run(args, &mut procs) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    eprintln!("stopping {} processes …", procs.len());
    drop(procs);
    match result {
        Ok(out) => {
            if json {
                println!("{out}");
            } else {
                println!(
                    "signers (sorted):   {}",
                    out["signers"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(|v| v.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
                println!(
                    "aggregate key:      {}",
                    out["aggregate_key"].as_str().unwrap_or("")
                );
                if let Some(t) = out.get("tweaked_key").and_then(|v| v.as_str()) {
                    println!("taproot output key: {t}");
                }
                println!(
                    "message:            {}",
                    out["message"].as_str().unwrap_or("")
                );
                println!(
                    "signature ({}): {}",
                    out["format"].as_str().unwrap_or(""),
                    out["signature"].as_str().unwrap_or("")
                );
                println!("verified:           {}", out["verified"]);
                println!(
                    "session:            {}",
                    out["session_id"].as_str().unwrap_or("")
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("musig2-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
