//! The coordinator's client certificate towards its signer rotates without a restart: new
//! connections present the renewed certificate. Proven with a signer that admits only the
//! *renewed* certificate (by fingerprint), so success means the new one was presented.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "../../signer-svc/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use coordinator_svc::signer::{SignerClient, SignerEndpoint};

#[tokio::test]
async fn a_renewed_client_certificate_is_presented_without_a_restart() {
    musig2_proto::transport::install_crypto_provider();
    let staging = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    // The certificate the coordinator will be renewed to; the signer admits only it.
    let renewed = pki
        .issuer
        .issue_to(
            staging.path(),
            "renewed",
            &musig2_proto::pki::client("coordinator"),
        )
        .unwrap();
    common::write_keyfile(dir.path(), &common::secret_keys(1));
    let config = common::write_config(
        dir.path(),
        &pki,
        &format!("\"sha256:{}\"", renewed.fingerprint),
        "",
    );
    let config = signer_svc::config::Config::load(&config).unwrap();
    let keys =
        signer_svc::keystore::KeyStore::open(&config.keys.file, common::PASSPHRASE.as_bytes())
            .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = signer_svc::server::start(&config, keys, shutdown.clone())
        .await
        .unwrap();
    let client = SignerClient::connect_lazy(&SignerEndpoint {
        url: format!("https://localhost:{}", running.addr.port()),
        server_name: "localhost".into(),
        ca: pki.ca.clone(),
        cert: pki.client.cert.clone(),
        key: pki.client.key.clone(),
    })
    .unwrap();
    // The current certificate chains to the CA but is not admitted.
    assert!(client.list_keys().await.is_err());
    // Renewal in place (cert-manager swaps the Secret's files).
    std::fs::rename(&renewed.key, &pki.client.key).unwrap();
    std::fs::rename(&renewed.cert, &pki.client.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.list_keys().await {
            Ok(keys) => {
                assert_eq!(keys.len(), 1);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "the renewed certificate was never presented: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shutdown.cancel();
}
