//! Parties as real processes: a `musig2-signer` and a `musig2-coordinator` per party, mutual
//! TLS everywhere, driven through the coordinator's gRPC API.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use musig2_proto::pki::{self, Ca};
use musig2_proto::v1::coordinator_service_client::CoordinatorServiceClient;
use shared::musig::SecretKey;
use tonic::transport::Channel;

/// The `musig2-signer` binary beside this test's binaries, built (or brought up to date) once
/// per test process: Cargo builds only this package's binaries for its tests, and a stale
/// signer from an earlier build must never stand in for the current code.
pub fn signer_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
            let target_dir = profile_dir.parent().unwrap();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "signer-svc", "--bin", "musig2-signer"])
                .arg("--target-dir")
                .arg(target_dir);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let st = cmd.status().unwrap();
            assert!(st.success(), "building musig2-signer");
            profile_dir.join("musig2-signer")
        })
        .clone()
}

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Spawn and read `key value` lines from stdout until `want` keys were seen.
fn spawn(cmd: &mut Command, want: &[&str]) -> (Proc, Vec<(String, String)>) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    while seen.len() < want.len() {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            panic!("process exited early; got {lines:?}");
        }
        let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
        if want.contains(&k) && !seen.contains(&k) {
            seen.push(want[want.iter().position(|w| *w == k).unwrap()]);
        }
        lines.push((k.to_string(), v.to_string()));
    }
    // Keep draining stdout so the process never blocks on a full pipe.
    std::thread::spawn(move || for _ in out.lines() {});
    (Proc(child), lines)
}

pub struct ProcParty {
    pub dir: PathBuf,
    pub key: [u8; 33],
    pub secret: SecretKey,
    pub signer: Option<Proc>,
    pub coordinator: Option<Proc>,
    pub api_addr: String,
    pub listen: Vec<String>,
    pub peer_id: String,
    pub ca: PathBuf,
    pub app: pki::LeafFiles,
    pub extra: String,
    pub metrics: Option<String>,
}

impl ProcParty {
    /// Files and the signer process; then the coordinator.
    pub async fn start(base: &Path, seed: u8, extra: &str) -> ProcParty {
        Self::start_with_signer(base, seed, extra, "").await
    }

    /// [`ProcParty::start`] with `signer_extra` TOML appended to the signer's configuration.
    pub async fn start_with_signer(
        base: &Path,
        seed: u8,
        extra: &str,
        signer_extra: &str,
    ) -> ProcParty {
        musig2_proto::transport::install_crypto_provider();
        let dir = base.join(format!("party-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Ca::new(&format!("party {seed} CA")).unwrap();
        let ca_path = ca.write_cert(&dir, "ca").unwrap();
        let signer_tls = ca
            .issue_to(&dir, "signer", &pki::loopback_server("signer"))
            .unwrap();
        let coord_client = ca
            .issue_to(&dir, "coordinator-client", &pki::client("coordinator"))
            .unwrap();
        let api_tls = ca
            .issue_to(&dir, "api", &pki::loopback_server("coordinator"))
            .unwrap();
        let app = ca.issue_to(&dir, "app", &pki::client("app")).unwrap();
        let secret = SecretKey::from_bytes(&[seed; 32]).unwrap();
        let mut store = signer_svc::keystore::KeyStore::empty();
        store
            .add(
                "party".into(),
                SecretKey::from_bytes(&secret.dangerous_to_bytes()).unwrap(),
            )
            .unwrap();
        store
            .save(&dir.join("keys.json"), b"party passphrase", 8192, 1)
            .unwrap();
        std::fs::write(dir.join("pass"), "party passphrase").unwrap();
        std::fs::write(
            dir.join("signer.toml"),
            format!(
                "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"cn:coordinator\"]\n[keys]\nfile = \"keys.json\"\npassphrase_file = \"pass\"\n[audit]\njournal = \"journal.log\"\n[log]\nlevel = \"warn\"\n{signer_extra}\n",
                signer_tls.cert.display(),
                signer_tls.key.display(),
                ca_path.display()
            ),
        )
        .unwrap();
        let mut p = ProcParty {
            dir,
            key: secret.public_key(),
            secret,
            signer: None,
            coordinator: None,
            api_addr: String::new(),
            listen: Vec::new(),
            peer_id: String::new(),
            ca: ca_path,
            app,
            extra: extra.to_string(),
            metrics: None,
        };
        p.start_signer();
        let signer_port = p.signer_port();
        std::fs::write(
            p.dir.join("coordinator.toml"),
            format!(
                "listen = [\"/ip4/127.0.0.1/tcp/0\"]\ndata_dir = \"data\"\ncleanup_interval_ms = 200\n{}\n{}\n[signer]\nurl = \"https://localhost:{signer_port}\"\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"cn:app\"]\n[log]\nlevel = \"warn\"\n",
                if p.extra.contains("stuck_session_timeout_ms") {
                    ""
                } else {
                    "stuck_session_timeout_ms = 5000"
                },
                p.extra,
                p.ca.display(),
                coord_client.cert.display(),
                coord_client.key.display(),
                api_tls.cert.display(),
                api_tls.key.display(),
                p.ca.display()
            ),
        )
        .unwrap();
        p.start_coordinator();
        p
    }

    fn signer_port(&self) -> u16 {
        std::fs::read_to_string(self.dir.join("signer.port"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub fn start_signer(&mut self) {
        let (proc_, lines) = spawn(
            Command::new(signer_bin())
                .args(["serve", "--config"])
                .arg(self.dir.join("signer.toml")),
            &["listening"],
        );
        let addr = &lines.iter().find(|(k, _)| k == "listening").unwrap().1;
        let port = addr.rsplit(':').next().unwrap();
        // The coordinator's config names the signer's port; keep it stable across restarts.
        if !self.dir.join("signer.port").exists() {
            std::fs::write(self.dir.join("signer.port"), port).unwrap();
            let toml = std::fs::read_to_string(self.dir.join("signer.toml")).unwrap();
            std::fs::write(
                self.dir.join("signer.toml"),
                toml.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
            )
            .unwrap();
        }
        self.signer = Some(proc_);
    }

    pub fn start_coordinator(&mut self) {
        let (proc_, lines) = spawn(
            Command::new(env!("CARGO_BIN_EXE_musig2-coordinator"))
                .args(["serve", "--config"])
                .arg(self.dir.join("coordinator.toml")),
            &["api", "peer", "listen"],
        );
        self.api_addr = lines.iter().find(|(k, _)| k == "api").unwrap().1.clone();
        self.peer_id = lines.iter().find(|(k, _)| k == "peer").unwrap().1.clone();
        self.metrics = lines
            .iter()
            .find(|(k, _)| k == "metrics")
            .map(|(_, v)| v.clone());
        self.listen = lines
            .iter()
            .filter(|(k, _)| k == "listen")
            .map(|(_, v)| v.clone())
            .collect();
        self.coordinator = Some(proc_);
    }

    /// Keep the libp2p port the coordinator listens on now across restarts (a restart then
    /// comes back on the same address, as a pod behind a fixed service address does).
    #[allow(dead_code)]
    pub fn pin_listen_port(&self) {
        let addr: libp2p::Multiaddr = self.listen[0].parse().unwrap();
        let port = addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let path = self.dir.join("coordinator.toml");
        let text = std::fs::read_to_string(&path).unwrap().replace(
            "listen = [\"/ip4/127.0.0.1/tcp/0\"]",
            &format!("listen = [\"/ip4/127.0.0.1/tcp/{port}\"]"),
        );
        std::fs::write(path, text).unwrap();
    }

    /// SIGKILL the coordinator.
    pub fn kill_coordinator(&mut self) {
        self.coordinator = None;
    }

    pub async fn client(&self) -> CoordinatorServiceClient<Channel> {
        CoordinatorServiceClient::new(self.channel().await)
    }

    #[allow(dead_code)]
    pub async fn admin(
        &self,
    ) -> musig2_proto::v1::coordinator_admin_service_client::CoordinatorAdminServiceClient<Channel>
    {
        musig2_proto::v1::coordinator_admin_service_client::CoordinatorAdminServiceClient::new(
            self.channel().await,
        )
    }

    async fn channel(&self) -> Channel {
        let tls = musig2_proto::transport::client_tls(
            &self.ca,
            &self.app.cert,
            &self.app.key,
            "localhost",
        )
        .unwrap();
        let port = self.api_addr.rsplit(':').next().unwrap();
        Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

// ------------------------------------------------------------------ API helpers

use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use shared::musig::{Signature, SignatureFormat, verify};
use std::time::Duration;

pub type Client = musig2_proto::v1::coordinator_service_client::CoordinatorServiceClient<
    tonic::transport::Channel,
>;
pub type Events = tonic::Streaming<pb::WatchEventsResponse>;

/// The ErrorInfo of a status: reason and metadata (panics without one: every error has it).
pub fn error_info(e: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt as _;
    let d = e.get_error_details();
    let info = d
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {e:?}"));
    assert_eq!(info.domain, "coordinator.musig2", "{e:?}");
    (info.reason.clone(), info.metadata.clone())
}

pub async fn watch(c: &mut Client) -> Events {
    c.watch_events(pb::WatchEventsRequest::default())
        .await
        .unwrap()
        .into_inner()
}

pub async fn next_event<T>(s: &mut Events, mut f: impl FnMut(&Ev) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let m = tokio::time::timeout_at(deadline, s.message())
            .await
            .expect("event within 30 s")
            .unwrap()
            .unwrap();
        if let Some(t) = m.event.as_ref().and_then(&mut f) {
            return t;
        }
    }
}

pub async fn mesh(ps: &[ProcParty]) {
    for i in 0..ps.len() {
        for j in 0..i {
            let mut c = ps[i].client().await;
            c.connect_peer(pb::ConnectPeerRequest {
                multiaddr: ps[j].listen[0].clone(),
            })
            .await
            .unwrap();
        }
    }
    // Wait until every node is connected to every other one.
    for p in ps {
        let mut c = p.client().await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while (c
            .get_node_info(pb::GetNodeInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .connected_peers as usize)
            < ps.len() - 1
        {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
}

pub fn keys(ps: &[ProcParty]) -> Vec<Vec<u8>> {
    ps.iter().map(|p| p.key.to_vec()).collect()
}

/// Create on the first, join on the others when SessionCreated arrives, run both rounds
/// explicitly, and return the session id once every node reports completion.
pub async fn session(
    ps: &[ProcParty],
    format: SignatureFormat,
    msg: [u8; 32],
    taproot: bool,
) -> (String, Vec<u8>) {
    let mut clients = Vec::new();
    let mut streams = Vec::new();
    for p in ps {
        let mut c = p.client().await;
        streams.push(watch(&mut c).await);
        clients.push(c);
    }
    let tweaks = if taproot {
        vec![pb::Tweak {
            kind: Some(shared::wire::pb::tweak::Kind::Taproot(pb::TaprootTweak {
                merkle_root: vec![],
            })),
        }]
    } else {
        vec![]
    };
    let created = clients[0]
        .create_session(pb::CreateSessionRequest {
            signer_keys: keys(ps),
            message: msg.to_vec(),
            format: shared::wire::format_to_pb(format) as i32,
            tweaks,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let id = created.session_id.clone();
    for i in 1..ps.len() {
        let sid = id.clone();
        next_event(&mut streams[i], |e| match e {
            Ev::SessionCreated(s) if s.session.as_ref().is_some_and(|s| s.session_id == sid) => {
                Some(())
            }
            _ => None,
        })
        .await;
        clients[i]
            .join_session(pb::JoinSessionRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap();
    }
    for c in clients.iter_mut() {
        let n = c
            .start_round1(pb::StartRound1Request {
                session_id: id.clone(),
                wait_ms: 30_000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(n.public_nonces.len(), 1);
        assert_eq!(n.public_nonces[0].len(), 66);
    }
    for c in clients.iter_mut() {
        let p = c
            .start_round2(pb::StartRound2Request {
                session_id: id.clone(),
                wait_ms: 30_000,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.partial_signatures[0].len(), 32);
    }
    let mut sig = Vec::new();
    for s in streams.iter_mut() {
        let sid = id.clone();
        sig = next_event(s, |e| match e {
            Ev::SessionComplete(c) if c.session_id == sid => Some(c.signature.clone()),
            Ev::SessionError(x) if x.session_id == sid => panic!("aborted: {}", x.reason),
            _ => None,
        })
        .await;
    }
    for c in clients.iter_mut() {
        let f = c
            .get_final_signature(pb::GetFinalSignatureRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(f.signature, sig);
        let key: [u8; 33] = f.output_key.try_into().unwrap();
        verify(
            format,
            &key,
            &f.message,
            &Signature(f.signature.try_into().unwrap()),
        )
        .unwrap();
    }
    (id, sig)
}
