//! Start the coordinator service: load and validate everything, then bind the libp2p node,
//! the gRPC API (mutual TLS) and the optional metrics endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use musig2_proto::transport::{AllowList, ServerTls, tls_incoming};
use musig2_proto::v1::coordinator_service_server::CoordinatorServiceServer;
use tokio_util::sync::CancellationToken;

use crate::api::Api;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::node::NodeHandle;
use crate::signer::{SignerClient, SignerEndpoint};
use crate::store::Store;

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    /// gRPC API address.
    pub api_addr: SocketAddr,
    /// Metrics address, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The node.
    pub node: NodeHandle,
    /// Resolves when the API server stops.
    pub task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

/// The libp2p identity kept in `data_dir/node.key` (created 0600 on first start).
///
/// # Errors
/// Unreadable or corrupt key file.
pub fn load_identity(data_dir: &std::path::Path) -> anyhow::Result<libp2p::identity::Keypair> {
    let path = data_dir.join("node.key");
    if path.exists() {
        let bytes = std::fs::read(&path)?;
        return libp2p::identity::Keypair::from_protobuf_encoding(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: not a libp2p key: {e}", path.display()));
    }
    let kp = libp2p::identity::Keypair::generate_ed25519();
    let bytes = kp.to_protobuf_encoding()?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    use std::io::Write;
    let mut f = opts.open(&path)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    Ok(kp)
}

/// Start everything; runs until `shutdown`.
///
/// # Errors
/// Any startup failure, with its cause (the signer is waited for up to 30 s).
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Running> {
    musig2_proto::transport::install_crypto_provider();
    let tls = ServerTls {
        cert: config.api.cert.clone(),
        key: config.api.key.clone(),
        client_ca: config.api.client_ca.clone(),
        allow: AllowList::parse(&config.api.allowed_clients)?,
    }
    .server_config()?;
    std::fs::create_dir_all(&config.data_dir)?;
    let identity = load_identity(&config.data_dir)?;
    let store = Store::open_with_cache(
        &config.data_dir.join("coordinator.redb"),
        usize::try_from(config.store_cache_mib.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX),
    )?;
    let metrics = Arc::new(Metrics::new());
    let signer = SignerClient::connect_lazy(&SignerEndpoint {
        url: config.signer.url.clone(),
        server_name: config.signer.server_name.clone(),
        ca: config.signer.ca.clone(),
        cert: config.signer.cert.clone(),
        key: config.signer.key.clone(),
    })?
    .with_metrics(metrics.signer_calls.clone());
    // The signer may start after us (Kubernetes, the demo): wait for it, bounded.
    let mut waited = Duration::ZERO;
    while let Err(e) = signer.list_keys().await {
        if waited >= Duration::from_secs(30) {
            anyhow::bail!("the signer at {} does not answer: {e}", config.signer.url);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        waited += Duration::from_millis(250);
    }
    let (node, _node_task) = crate::node::start(
        config.node_config()?,
        identity,
        signer.clone(),
        store,
        shutdown.clone(),
    )
    .await?;
    metrics.follow(&node);

    let listener = tokio::net::TcpListener::bind(config.api.listen).await?;
    let api_addr = listener.local_addr()?;
    // Mirrors the gRPC health status for kubelet (`/readyz` on the metrics port).
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let metrics_addr = match &config.metrics {
        Some(m) => {
            let metrics = metrics.clone();
            let ready = ready.clone();
            let node = node.clone();
            Some(
                musig2_proto::transport::serve_metrics(
                    m.listen,
                    move || {
                        metrics.note_tables(&node);
                        metrics.render()
                    },
                    move || ready.load(std::sync::atomic::Ordering::Relaxed),
                    shutdown.clone(),
                )
                .await?,
            )
        }
        None => None,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    {
        // Serving only while the node listens and the signer answers.
        let (node, signer, shutdown) = (node.clone(), signer.clone(), shutdown.clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            loop {
                let listening = node
                    .info()
                    .await
                    .map(|i| !i.listen_addresses.is_empty())
                    .unwrap_or(false);
                let signer_ok = signer.list_keys().await.is_ok();
                ready.store(listening && signer_ok, std::sync::atomic::Ordering::Relaxed);
                if listening && signer_ok {
                    health.set_serving::<CoordinatorServiceServer<Api>>().await;
                } else {
                    health
                        .set_not_serving::<CoordinatorServiceServer<Api>>()
                        .await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(musig2_proto::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let incoming = tls_incoming(listener, tls, shutdown.clone());
    let info = node.info().await?;
    tracing::info!(%api_addr, peer_id = %info.peer_id, addresses = ?info.listen_addresses, "coordinator serving");
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .concurrency_limit_per_connection(config.limits.max_api_calls_per_connection)
            .load_shed(true)
            .add_service(health_service)
            .add_service(reflection)
            .add_service(CoordinatorServiceServer::new(Api::new(node.clone())))
            .add_service(musig2_proto::v1::coordinator_admin_service_server::CoordinatorAdminServiceServer::new(
                crate::admin::Admin::new(node.clone()),
            ))
            .serve_with_incoming_shutdown(incoming, async move { shutdown.cancelled().await }),
    );
    Ok(Running {
        api_addr,
        metrics_addr,
        node,
        task,
    })
}
