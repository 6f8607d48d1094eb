//! Parties as real processes on loopback, for the harnesses that drive them (`musig2-chaos`):
//! a throwaway mutual-TLS PKI per party, a key made with `musig2-signer keygen`, configuration
//! files with **fixed ports** (so a restarted process comes back at the same addresses), and
//! process handles that can be SIGKILLed and restarted. Harness code: not used by the services.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use musig2_proto::pki::{self, Ca, LeafFiles};
use musig2_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use tonic::transport::Channel;

/// The two service binaries.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// `musig2-signer`.
    pub signer: PathBuf,
    /// `musig2-coordinator`.
    pub coordinator: PathBuf,
}

impl Binaries {
    /// The binaries beside the running executable; under `cargo run` they are built first
    /// (same profile), unless `MUSIG2_NO_BUILD` is set.
    ///
    /// # Errors
    /// A failed build or a missing binary.
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("executable directory")?.to_path_buf();
        if let (Ok(cargo), None) = (std::env::var("CARGO"), std::env::var_os("MUSIG2_NO_BUILD")) {
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
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            if !cmd.status().context("running cargo build")?.success() {
                bail!("building musig2-signer and musig2-coordinator failed");
            }
        }
        let b = Binaries {
            // A harness may substitute a signer (e.g. the chaos audit's deliberately broken one).
            signer: std::env::var_os("MUSIG2_SIGNER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("musig2-signer")),
            // ... or wrap the coordinator (e.g. in a heap profiler).
            coordinator: std::env::var_os("MUSIG2_COORDINATOR_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| dir.join("musig2-coordinator")),
        };
        for p in [&b.signer, &b.coordinator] {
            if !p.exists() {
                bail!(
                    "{} not found; build it first (cargo build --bins)",
                    p.display()
                );
            }
        }
        Ok(b)
    }
}

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    reaped: bool,
}

impl Proc {
    /// SIGKILL now (no clean shutdown: what a crash or an OOM kill does).
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.reaped || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(self.child.id().to_string())
                .status();
            for _ in 0..100 {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Spawn and read `key value` lines from stdout until every key of `want` was seen.
///
/// # Errors
/// The process could not start or exited before printing them.
pub fn spawn(cmd: &mut Command, want: &[&str]) -> anyhow::Result<(Proc, Vec<(String, String)>)> {
    spawn_logging(cmd, want, None)
}

/// [`spawn`], appending the process's stderr (its log) to `log` when given.
///
/// # Errors
/// As [`spawn`].
pub fn spawn_logging(
    cmd: &mut Command,
    want: &[&str],
    log: Option<&Path>,
) -> anyhow::Result<(Proc, Vec<(String, String)>)> {
    let stderr = match log {
        Some(p) => Stdio::from(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => Stdio::null(),
    };
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .context("spawning")?;
    let stdout = child.stdout.take().context("stdout")?;
    let proc_ = Proc {
        child,
        reaped: false,
    };
    let mut out = std::io::BufReader::new(stdout);
    let mut lines: Vec<(String, String)> = Vec::new();
    while !want.iter().all(|w| lines.iter().any(|(k, _)| k == w)) {
        let mut l = String::new();
        if out.read_line(&mut l)? == 0 {
            bail!("exited before printing {want:?}; printed {lines:?}");
        }
        let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
        lines.push((k.to_string(), v.to_string()));
    }
    std::thread::spawn(move || for _ in out.lines() {});
    Ok((proc_, lines))
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race, acceptable on loopback).
///
/// # Errors
/// Binding failed.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One party: files, fixed ports, and its two processes when running.
#[derive(Debug)]
pub struct LocalParty {
    /// Index.
    pub index: usize,
    /// Its directory (PKI, keys, configs, journal, store).
    pub dir: PathBuf,
    /// Its signer key (hex).
    pub key: String,
    /// Signer gRPC port.
    pub signer_port: u16,
    /// Coordinator API port.
    pub api_port: u16,
    /// Coordinator libp2p port.
    pub p2p_port: u16,
    /// Peer id, once the coordinator has started (stable: `data/node.key`).
    pub peer_id: String,
    /// The application's client certificate.
    pub app: LeafFiles,
    /// The party's CA certificate.
    pub ca: PathBuf,
    /// The signer process.
    pub signer: Option<Proc>,
    /// The coordinator process.
    pub coordinator: Option<Proc>,
    coordinator_extra: String,
}

impl LocalParty {
    /// Make the party's files: PKI, key (`musig2-signer keygen`), both configurations.
    /// `coordinator_extra` is TOML added to the coordinator's top level. Each process's log
    /// (stderr) is appended to `signer.log` / `coordinator.log` in the party's directory.
    ///
    /// # Errors
    /// File, PKI or keygen failures.
    pub fn prepare(
        index: usize,
        base: &Path,
        bins: &Binaries,
        coordinator_extra: &str,
    ) -> anyhow::Result<Self> {
        let dir = base.join(format!("party-{index}"));
        std::fs::create_dir_all(dir.join("data"))?;
        let ca = Ca::new(&format!("party {index} CA"))?;
        let ca_path = ca.write_cert(&dir, "ca")?;
        let signer_tls = ca.issue_to(&dir, "signer", &pki::loopback_server("signer"))?;
        let coord_client = ca.issue_to(&dir, "coordinator-client", &pki::client("coordinator"))?;
        let api_tls = ca.issue_to(&dir, "api", &pki::loopback_server("coordinator"))?;
        let app = ca.issue_to(&dir, "app", &pki::client("app"))?;
        std::fs::write(
            dir.join("passphrase"),
            format!("party {index} passphrase (throwaway)"),
        )?;
        let out = Command::new(&bins.signer)
            .args(["keygen", "--label", "party", "--kdf-memory-kib", "8192"])
            .args(["--kdf-iterations", "1", "--file"])
            .arg(dir.join("keys.json"))
            .arg("--passphrase-file")
            .arg(dir.join("passphrase"))
            .output()?;
        if !out.status.success() {
            bail!("keygen: {}", String::from_utf8_lossy(&out.stderr));
        }
        let key = String::from_utf8(out.stdout)?.trim().to_string();
        let (signer_port, api_port, p2p_port) = (free_port()?, free_port()?, free_port()?);
        std::fs::write(
            dir.join("signer.toml"),
            format!(
                "listen = \"127.0.0.1:{signer_port}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"cn:coordinator\"]\n[keys]\nfile = \"keys.json\"\npassphrase_file = \"passphrase\"\n[audit]\njournal = \"journal.log\"\n[log]\nlevel = \"error\"\n",
                signer_tls.cert.display(),
                signer_tls.key.display(),
                ca_path.display()
            ),
        )?;
        let party = LocalParty {
            index,
            dir,
            key,
            signer_port,
            api_port,
            p2p_port,
            peer_id: String::new(),
            app,
            ca: ca_path,
            signer: None,
            coordinator: None,
            coordinator_extra: coordinator_extra.to_string(),
        };
        party.write_coordinator_config(&[], &coord_client, &api_tls)?;
        Ok(party)
    }

    fn write_coordinator_config(
        &self,
        bootstrap: &[String],
        coord_client: &LeafFiles,
        api_tls: &LeafFiles,
    ) -> anyhow::Result<()> {
        let boot: Vec<String> = bootstrap.iter().map(|b| format!("\"{b}\"")).collect();
        std::fs::write(
            self.dir.join("coordinator.toml"),
            format!(
                "listen = [\"/ip4/127.0.0.1/tcp/{}\"]\nbootstrap_peers = [{}]\ndata_dir = \"data\"\n{}\n[signer]\nurl = \"https://localhost:{}\"\nca = \"{ca}\"\ncert = \"{}\"\nkey = \"{}\"\n[api]\nlisten = \"127.0.0.1:{}\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{ca}\"\nallowed_clients = [\"cn:app\"]\n[log]\nlevel = \"error\"\n",
                self.p2p_port,
                boot.join(", "),
                self.coordinator_extra,
                self.signer_port,
                coord_client.cert.display(),
                coord_client.key.display(),
                self.api_port,
                api_tls.cert.display(),
                api_tls.key.display(),
                ca = self.ca.display(),
            ),
        )?;
        Ok(())
    }

    /// Make the coordinator dial `peers` (multiaddresses with `/p2p/…`) whenever it starts.
    ///
    /// # Errors
    /// File errors.
    pub fn set_bootstrap(&self, peers: &[String]) -> anyhow::Result<()> {
        let files = |name: &str| LeafFiles {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
            fingerprint: String::new(),
        };
        self.write_coordinator_config(peers, &files("coordinator-client"), &files("api"))
    }

    /// This party's libp2p address with its peer id.
    pub fn p2p_addr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}/p2p/{}", self.p2p_port, self.peer_id)
    }

    /// Start the signer (waits for `listening`).
    ///
    /// # Errors
    /// It did not start.
    pub fn start_signer(&mut self, bins: &Binaries) -> anyhow::Result<()> {
        let (p, _) = spawn_logging(
            one_worker(&mut Command::new(&bins.signer))
                .args(["serve", "--config"])
                .arg(self.dir.join("signer.toml")),
            &["listening"],
            Some(&self.dir.join("signer.log")),
        )
        .with_context(|| format!("signer {}", self.index))?;
        self.signer = Some(p);
        Ok(())
    }

    /// Start the coordinator (waits for `api`, `peer`, `listen`; needs its signer up within
    /// 30 s).
    ///
    /// # Errors
    /// It did not start.
    pub fn start_coordinator(&mut self, bins: &Binaries) -> anyhow::Result<()> {
        let (p, lines) = spawn_logging(
            one_worker(&mut Command::new(&bins.coordinator))
                .args(["serve", "--config"])
                .arg(self.dir.join("coordinator.toml")),
            &["api", "peer", "listen"],
            Some(&self.dir.join("coordinator.log")),
        )
        .with_context(|| format!("coordinator {}", self.index))?;
        self.peer_id = lines
            .iter()
            .find(|(k, _)| k == "peer")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        self.coordinator = Some(p);
        Ok(())
    }

    /// A client of the coordinator's API with the application's certificate.
    ///
    /// # Errors
    /// TLS files or the connection.
    pub async fn client(&self) -> anyhow::Result<CoordinatorServiceClient<Channel>> {
        let tls = musig2_proto::transport::client_tls(
            &self.ca,
            &self.app.cert,
            &self.app.key,
            "localhost",
        )?;
        let channel = Channel::from_shared(format!("https://localhost:{}", self.api_port))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(90))
            .connect()
            .await?;
        Ok(CoordinatorServiceClient::new(channel))
    }
}

/// Every party's processes share this machine: each runs one tokio worker thread unless
/// `TOKIO_WORKER_THREADS` says otherwise. Measured with `musig2-bench` (3 parties, 16 in
/// flight, 2 cores): one worker each does the same work with about a sixth less CPU (fewer
/// thread hand-offs and wake-ups), 156 → 183 sessions/s.
fn one_worker(cmd: &mut Command) -> &mut Command {
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        cmd.env("TOKIO_WORKER_THREADS", "1");
    }
    cmd
}
