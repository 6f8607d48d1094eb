//! Test harness: a throwaway PKI, a key file, a config, an in-process signer on 127.0.0.1:0 with
//! real TLS, and clients with various certificates.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::path::{Path, PathBuf};

use musig2_proto::pki::{self, Ca, LeafFiles};
use musig2_proto::v1::signer_service_client::SignerServiceClient;
use musig2_proto::v1::{self as pb, GenerateNonceRequest, PartialSignRequest};
use shared::musig::{SecretKey, SignatureFormat, Tweak};
use shared::wire::SessionContext;
use signer_svc::config::Config;
use signer_svc::keystore::KeyStore;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub const PASSPHRASE: &str = "correct horse battery staple";

pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    /// The CA itself, to issue more client certificates in a test.
    pub issuer: Ca,
    pub server: LeafFiles,
    pub client: LeafFiles,
    pub intruder: LeafFiles,
    pub expired: LeafFiles,
    pub foreign: LeafFiles,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let ca = Ca::new("test CA").unwrap();
        let other = Ca::new("other CA").unwrap();
        let expired_spec = pki::LeafSpec {
            expired: true,
            ..pki::client("coordinator")
        };
        Pki {
            dir: dir.to_path_buf(),
            ca: ca.write_cert(dir, "ca").unwrap(),
            server: ca
                .issue_to(dir, "server", &pki::loopback_server("signer"))
                .unwrap(),
            client: ca
                .issue_to(dir, "client", &pki::client("coordinator"))
                .unwrap(),
            intruder: ca
                .issue_to(dir, "intruder", &pki::client("intruder"))
                .unwrap(),
            // Same common name as the allowed client, but expired.
            expired: ca.issue_to(dir, "expired", &expired_spec).unwrap(),
            // Same common name, other CA.
            foreign: other
                .issue_to(dir, "foreign", &pki::client("coordinator"))
                .unwrap(),
            issuer: ca,
        }
    }
}

/// Deterministic test keys, sorted by public key.
pub fn secret_keys(n: usize) -> Vec<SecretKey> {
    let mut v: Vec<SecretKey> = (0..n)
        .map(|i| SecretKey::from_bytes(&[0x11 + i as u8; 32]).unwrap())
        .collect();
    v.sort_by_key(|k| k.public_key());
    v
}

pub fn write_keyfile(dir: &Path, keys: &[SecretKey]) -> PathBuf {
    let mut store = KeyStore::empty();
    for (i, k) in keys.iter().enumerate() {
        store
            .add(
                format!("key-{i}"),
                SecretKey::from_bytes(&k.dangerous_to_bytes()).unwrap(),
            )
            .unwrap();
    }
    let path = dir.join("keys.json");
    store
        .save(&path, PASSPHRASE.as_bytes(), 8 * 1024, 1)
        .unwrap();
    std::fs::write(dir.join("passphrase"), format!("{PASSPHRASE}\n")).unwrap();
    path
}

/// A config TOML with `extra` appended (policy, nonces…).
pub fn write_config(dir: &Path, pki: &Pki, allowed: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"
listen = "127.0.0.1:0"

[tls]
cert = "{}"
key = "{}"
client_ca = "{}"
allowed_clients = [{allowed}]

[keys]
file = "keys.json"
passphrase_file = "passphrase"

[audit]
journal = "journal.log"

[log]
level = "warn"
{extra}
"#,
        pki.server.cert.display(),
        pki.server.key.display(),
        pki.ca.display(),
    );
    let path = dir.join("signer.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub pki: Pki,
    pub keys: Vec<SecretKey>,
    pub addr: std::net::SocketAddr,
    pub metrics_addr: Option<std::net::SocketAddr>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    pub config: Config,
}

impl Harness {
    pub async fn start(n_keys: usize, extra: &str) -> Self {
        Self::start_with_faults(n_keys, extra, signer_svc::service::Faults::default()).await
    }

    pub async fn start_with_faults(
        n_keys: usize,
        extra: &str,
        faults: signer_svc::service::Faults,
    ) -> Self {
        Self::start_full(n_keys, None, extra, faults).await
    }

    /// A signer whose `allowed_clients` is `allowed` (TOML list items).
    pub async fn start_allowing(n_keys: usize, allowed: &str) -> Self {
        Self::start_full(n_keys, Some(allowed), "", Default::default()).await
    }

    async fn start_full(
        n_keys: usize,
        allowed: Option<&str>,
        extra: &str,
        faults: signer_svc::service::Faults,
    ) -> Self {
        musig2_proto::transport::install_crypto_provider();
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let keys = secret_keys(n_keys);
        write_keyfile(dir.path(), &keys);
        let allowed = allowed
            .map(str::to_string)
            .unwrap_or_else(|| format!("\"sha256:{}\"", pki.client.fingerprint));
        let path = write_config(dir.path(), &pki, &allowed, extra);
        let config = Config::load(&path).unwrap();
        Self::boot(dir, pki, keys, config, faults).await
    }

    async fn boot(
        dir: tempfile::TempDir,
        pki: Pki,
        keys: Vec<SecretKey>,
        config: Config,
        faults: signer_svc::service::Faults,
    ) -> Self {
        let store = KeyStore::open(&config.keys.file, PASSPHRASE.as_bytes()).unwrap();
        let shutdown = CancellationToken::new();
        let running =
            signer_svc::server::start_with_faults(&config, store, shutdown.clone(), faults)
                .await
                .unwrap();
        Harness {
            dir,
            pki,
            keys,
            addr: running.addr,
            metrics_addr: running.metrics_addr,
            shutdown,
            task: running.task,
            config,
        }
    }

    /// Stop and start again on a new port with the same files (secret nonces are lost).
    pub async fn restart(self) -> Self {
        self.shutdown.cancel();
        let _ = self.task.await;
        Self::boot(
            self.dir,
            self.pki,
            self.keys,
            self.config,
            signer_svc::service::Faults::default(),
        )
        .await
    }

    pub async fn client(&self) -> SignerServiceClient<Channel> {
        self.client_with(&self.pki.client).await.unwrap()
    }

    pub async fn client_with(
        &self,
        leaf: &LeafFiles,
    ) -> Result<SignerServiceClient<Channel>, tonic::transport::Error> {
        let tls =
            musig2_proto::transport::client_tls(&self.pki.ca, &leaf.cert, &leaf.key, "localhost")
                .unwrap();
        let channel = Channel::from_shared(format!("https://localhost:{}", self.addr.port()))
            .unwrap()
            .tls_config(tls)?
            .connect()
            .await?;
        Ok(SignerServiceClient::new(channel))
    }

    pub fn journal(&self) -> PathBuf {
        self.config.audit.journal.clone()
    }
}

pub fn context(
    keys: &[SecretKey],
    format: SignatureFormat,
    taproot: bool,
    msg: &[u8],
) -> SessionContext {
    SessionContext {
        signer_keys: keys.iter().map(SecretKey::public_key).collect(),
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

pub fn nonce_req(key: &SecretKey, session: [u8; 16], ctx: &SessionContext) -> GenerateNonceRequest {
    GenerateNonceRequest {
        public_key: key.public_key().to_vec(),
        session_id: session.to_vec(),
        context: Some(ctx.to_pb()),
        pooled: false,
    }
}

/// A pooled nonce request (one-round signing): `ctx` without its message.
pub fn pool_req(key: &SecretKey, slot: [u8; 16], ctx: &SessionContext) -> GenerateNonceRequest {
    let mut pool = ctx.clone();
    pool.message.clear();
    GenerateNonceRequest {
        public_key: key.public_key().to_vec(),
        session_id: slot.to_vec(),
        context: Some(pool.to_pb()),
        pooled: true,
    }
}

pub fn sign_req(
    key: &SecretKey,
    session: [u8; 16],
    ctx: &SessionContext,
    nonces: &[Vec<u8>],
) -> PartialSignRequest {
    PartialSignRequest {
        public_key: key.public_key().to_vec(),
        session_id: session.to_vec(),
        context: Some(ctx.to_pb()),
        public_nonces: nonces.to_vec(),
    }
}

pub fn pb_ctx(ctx: &SessionContext) -> pb::SessionContext {
    ctx.to_pb()
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}
