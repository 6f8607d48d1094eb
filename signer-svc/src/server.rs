//! Start the signer: everything is loaded and validated before anything binds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use musig2_proto::transport::{AllowList, ServerTls, tls_incoming};
use musig2_proto::v1::signer_service_server::SignerServiceServer;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::journal::{Journal, RecordKind};
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::nonces::{IssuedBefore, NonceStore};
use crate::policy::Released;
use crate::service::{Faults, Signer};

/// Largest gRPC request accepted, bytes (100 keys, 100 nonces and a 1 KiB message fit easily).
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// A running signer.
#[derive(Debug)]
pub struct Running {
    /// gRPC (mutual TLS) address.
    pub addr: SocketAddr,
    /// Metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// Resolves when the server has stopped.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Load TLS, journal and policy, bind, and serve until `shutdown` is cancelled.
///
/// # Errors
/// Any configuration, TLS, journal or bind error, with its cause.
pub async fn start(
    config: &Config,
    keys: KeyStore,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    start_with_faults(config, keys, shutdown, Faults::default()).await
}

/// [`start`] with fault injection (tests only).
///
/// # Errors
/// As [`start`].
pub async fn start_with_faults(
    config: &Config,
    keys: KeyStore,
    shutdown: CancellationToken,
    faults: Faults,
) -> anyhow::Result<Running> {
    musig2_proto::transport::install_crypto_provider();
    let tls = ServerTls {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        allow: AllowList::parse(&config.tls.allowed_clients)?,
    }
    .server_config()?;
    let policy = Arc::new(
        config
            .policy
            .compile_with(config.attestation.limit())
            .map_err(|e| anyhow::anyhow!("policy: {}", e.join("; ")))?,
    );
    let journal_path = config.audit.journal.clone();
    if let Some(dir) = journal_path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        let mut b = std::fs::DirBuilder::new();
        b.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir)
            .map_err(|e| anyhow::anyhow!("audit.journal: creating {}: {e}", dir.display()))?;
        tracing::info!(dir = %dir.display(), "created the audit journal's directory (0700)");
    }
    let replay = policy.clone();
    let keep_lost = config.nonces.capacity / 2;
    let ttls = (
        Duration::from_secs(config.nonces.ttl_secs),
        Duration::from_secs(config.nonces.pool_ttl_secs),
    );
    let (journal, replayed, issued) = tokio::task::spawn_blocking(move || {
        let mut replayed = 0u64;
        let mut issued = IssuedBefore::new(ttls, keep_lost);
        let journal = Journal::open_replaying(&journal_path, |r| {
            issued.note(&r);
            let what = match r.kind {
                RecordKind::PartialSignature => Released::PartialSignature,
                RecordKind::Attestation => Released::Attestation,
                _ => return,
            };
            let key = r.event.key.as_deref().and_then(|k| {
                let mut out = [0u8; 33];
                hex::decode_to_slice(k, &mut out).ok().map(|()| out)
            });
            if let Some(key) = key {
                replay.replay_released(what, &key, r.time_ms);
                replayed += 1;
            }
        })?;
        Ok::<_, crate::journal::JournalError>((journal, replayed, issued.into_slots()))
    })
    .await??;
    let journal = Arc::new(journal);
    tracing::info!(journal = %config.audit.journal.display(), head_seq = journal.head_seq(), released_records = replayed, counted_in_rate_windows = policy.counted(), "audit journal open; rate windows refilled from it");
    let metrics = Arc::new(Metrics::new());
    metrics.journal_seq(journal.head_seq());
    let nonces = NonceStore::new(
        Duration::from_secs(config.nonces.ttl_secs),
        config.nonces.capacity,
    )
    .with_pool(
        Duration::from_secs(config.nonces.pool_ttl_secs),
        config.nonces.pool_capacity,
    );
    let lost = issued.len();
    let nonces = nonces.with_lost(issued);
    tracing::info!(
        lost,
        "nonces issued before this start that would still live: never issued again"
    );
    let keys = Arc::new(keys);
    for k in keys.keys() {
        tracing::info!(label = %k.label, public_key = %hex::encode(k.secret.public_key()), "key loaded");
    }
    let journal_broken = journal.broken_flag();
    let signer = Signer::with_faults(keys, nonces, policy, journal, metrics.clone(), faults);

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let metrics_addr = match &config.metrics {
        Some(m) => {
            let metrics = metrics.clone();
            let journal_broken = journal_broken.clone();
            Some(
                musig2_proto::transport::serve_metrics(
                    m.listen,
                    move || metrics.render(),
                    // Ready once serving: keys decrypted, journal verified and locked, policy
                    // compiled (all done before this point), and the journal still writable.
                    move || !journal_broken.load(std::sync::atomic::Ordering::Relaxed),
                    shutdown.clone(),
                )
                .await?,
            )
        }
        None => None,
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SignerServiceServer<Signer>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(musig2_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = SignerServiceServer::new(signer).max_decoding_message_size(MAX_REQUEST_BYTES);
    let incoming = tls_incoming(listener, tls, shutdown.clone());
    tracing::info!(%addr, metrics = ?metrics_addr, "signer serving (TLS 1.3, client certificates required)");
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(256)
            .timeout(Duration::from_secs(30))
            .add_service(health_service)
            .add_service(reflection)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await }),
    );
    Ok(Running {
        addr,
        metrics_addr,
        task,
    })
}
