//! Parties for tests: each with its own signer-svc (in-process, real mutual TLS on 127.0.0.1)
//! and its own coordinator node (real libp2p on 127.0.0.1).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::Duration;

use coordinator_svc::node::{self, NodeConfig, NodeEvent, NodeHandle};
use coordinator_svc::signer::{SignerClient, SignerEndpoint};
use musig2_proto::pki::{self, Ca};
use shared::musig::{SecretKey, SignatureFormat, Tweak};
use shared::wire::SessionContext;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub struct Party {
    pub dir: tempfile::TempDir,
    pub secret: SecretKey,
    pub key: [u8; 33],
    pub node: NodeHandle,
    pub events: broadcast::Receiver<NodeEvent>,
    pub node_stop: CancellationToken,
    pub signer_stop: CancellationToken,
    pub signer: SignerClient,
    pub signer_endpoint: SignerEndpoint,
}

pub fn fast_config() -> NodeConfig {
    NodeConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        stuck_timeout: Duration::from_secs(3),
        cleanup_interval: Duration::from_millis(250),
        ..NodeConfig::default()
    }
}

pub async fn start_signer(
    dir: &std::path::Path,
    secret: &SecretKey,
) -> (SignerEndpoint, CancellationToken) {
    start_signer_with(dir, std::slice::from_ref(secret)).await
}

/// A signer holding several keys.
pub async fn start_signer_with(
    dir: &std::path::Path,
    secrets: &[SecretKey],
) -> (SignerEndpoint, CancellationToken) {
    musig2_proto::transport::install_crypto_provider();
    let ca = Ca::new("party CA").unwrap();
    let ca_path = ca.write_cert(dir, "ca").unwrap();
    let server = ca
        .issue_to(dir, "signer", &pki::loopback_server("signer"))
        .unwrap();
    let client = ca
        .issue_to(dir, "coordinator", &pki::client("coordinator"))
        .unwrap();
    let mut store = signer_svc::keystore::KeyStore::empty();
    for (i, secret) in secrets.iter().enumerate() {
        store
            .add(
                format!("party-{i}"),
                SecretKey::from_bytes(&secret.dangerous_to_bytes()).unwrap(),
            )
            .unwrap();
    }
    store
        .save(&dir.join("keys.json"), b"party passphrase", 8192, 1)
        .unwrap();
    std::fs::write(dir.join("pass"), "party passphrase").unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"cn:coordinator\"]\n[keys]\nfile = \"keys.json\"\npassphrase_file = \"pass\"\n[audit]\njournal = \"journal.log\"\n[log]\nlevel = \"warn\"\n",
        server.cert.display(),
        server.key.display(),
        ca_path.display()
    );
    std::fs::write(dir.join("signer.toml"), toml).unwrap();
    let config = signer_svc::config::Config::load(&dir.join("signer.toml")).unwrap();
    let keys =
        signer_svc::keystore::KeyStore::open(&config.keys.file, b"party passphrase").unwrap();
    let stop = CancellationToken::new();
    let running = signer_svc::server::start(&config, keys, stop.clone())
        .await
        .unwrap();
    let ep = SignerEndpoint {
        url: format!("https://localhost:{}", running.addr.port()),
        server_name: "localhost".into(),
        ca: ca_path,
        cert: client.cert,
        key: client.key,
    };
    (ep, stop)
}

impl Party {
    pub async fn start(seed: u8, config: NodeConfig) -> Party {
        let dir = tempfile::tempdir().unwrap();
        let secret = SecretKey::from_bytes(&[seed; 32]).unwrap();
        let (ep, signer_stop) = start_signer(dir.path(), &secret).await;
        let signer = SignerClient::connect_lazy(&ep).unwrap();
        let node_stop = CancellationToken::new();
        let identity = libp2p::identity::Keypair::generate_ed25519();
        let store =
            coordinator_svc::store::Store::open(&dir.path().join("coordinator.redb")).unwrap();
        let (node, _task) = node::start(config, identity, signer.clone(), store, node_stop.clone())
            .await
            .unwrap();
        let events = node.events();
        Party {
            dir,
            key: secret.public_key(),
            secret,
            node,
            events,
            node_stop,
            signer_stop,
            signer,
            signer_endpoint: ep,
        }
    }

    pub async fn addr(&self) -> libp2p::Multiaddr {
        self.node.info().await.unwrap().listen_addresses[0].clone()
    }

    pub fn stop(&self) {
        self.node_stop.cancel();
        self.signer_stop.cancel();
    }
}

/// Start `n` parties (keys from seeds 1..=n) and connect every pair.
pub async fn parties(n: usize) -> Vec<Party> {
    let mut v = Vec::new();
    for i in 0..n {
        v.push(Party::start(i as u8 + 1, fast_config()).await);
    }
    connect_all(&v).await;
    v
}

pub async fn connect(a: &Party, b: &Party) {
    a.node.connect(b.addr().await).await.unwrap();
    wait_until(|| async {
        a.node
            .peer_keys()
            .await
            .unwrap()
            .values()
            .any(|k| k.contains(&b.key))
    })
    .await;
    wait_until(|| async {
        b.node
            .peer_keys()
            .await
            .unwrap()
            .values()
            .any(|k| k.contains(&a.key))
    })
    .await;
}

pub async fn connect_all(v: &[Party]) {
    for i in 0..v.len() {
        for j in 0..i {
            connect(&v[i], &v[j]).await;
        }
    }
}

pub async fn wait_until<F, Fut>(f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_until_within(Duration::from_secs(20), f).await;
}

/// [`wait_until`] with another liveness bound (the 100-party test on a loaded 2-core machine).
#[allow(dead_code)]
pub async fn wait_until_within<F, Fut>(bound: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + bound;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first event matching `f`, within 20 s.
pub async fn wait_event<T>(
    rx: &mut broadcast::Receiver<NodeEvent>,
    mut f: impl FnMut(&NodeEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ev = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("event not seen in 20 s")
            .expect("event channel");
        if let Some(t) = f(&ev) {
            return t;
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A wire message of session `id` from `sender` (for tests that speak as a peer by hand).
pub fn msg(
    id: shared::election::SessionId,
    sender: [u8; 33],
    seq: u64,
    ts: i64,
    body: shared::wire::pb::wire_message::Body,
) -> shared::wire::pb::WireMessage {
    shared::wire::pb::WireMessage {
        session_id: id.0.to_vec(),
        sender_key: sender.to_vec(),
        sequence: seq,
        timestamp_ms: ts,
        body: Some(body),
    }
}

pub fn context(
    parties: &[&Party],
    format: SignatureFormat,
    taproot: bool,
    msg: [u8; 32],
) -> SessionContext {
    let mut keys: Vec<[u8; 33]> = parties.iter().map(|p| p.key).collect();
    keys.sort_unstable();
    SessionContext {
        signer_keys: keys,
        message: msg.to_vec(),
        format,
        tweaks: if taproot {
            vec![Tweak::Taproot { merkle_root: None }]
        } else {
            vec![]
        },
        batch: Vec::new(),
    }
}

pub async fn connect_refs(v: &[&Party]) {
    for i in 0..v.len() {
        for j in 0..i {
            connect(v[i], v[j]).await;
        }
    }
}
