//! Latency of GenerateNonce and PartialSign over mutual TLS on loopback, with the fsynced audit
//! journal on the real disk. Prints p50/p90/p99/max per call.
//!
//! `cargo bench -p signer-svc --bench latency` (env `SIGNER_BENCH_N` = sessions, default 2000).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::time::{Duration, Instant};

use musig2_proto::pki::{self, Ca};
use musig2_proto::v1::{GenerateNonceRequest, PartialSignRequest};
use shared::musig::{KeyAggContext, SecretKey, SignatureFormat, nonce_gen};
use shared::wire::SessionContext;
use signer_svc::keystore::KeyStore;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn report(name: &str, mut v: Vec<Duration>) {
    let max = v.iter().max().copied().unwrap_or_default().as_secs_f64() * 1e3;
    println!(
        "{name:<14} n={:<6} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        v.len(),
        pct(&mut v, 0.50),
        pct(&mut v, 0.90),
        pct(&mut v, 0.99),
        max
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    musig2_proto::transport::install_crypto_provider();
    let n: usize = std::env::var("SIGNER_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    // On the real disk (not tmpfs) so fsync costs what it costs.
    let base = std::env::var("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let d = dir.path();
    let ca = Ca::new("bench CA").unwrap();
    let ca_path = ca.write_cert(d, "ca").unwrap();
    let server = ca
        .issue_to(d, "server", &pki::loopback_server("signer"))
        .unwrap();
    let client = ca
        .issue_to(d, "client", &pki::client("coordinator"))
        .unwrap();
    let me = SecretKey::from_bytes(&[0x21; 32]).unwrap();
    let others = [
        SecretKey::from_bytes(&[0x22; 32]).unwrap(),
        SecretKey::from_bytes(&[0x23; 32]).unwrap(),
    ];
    let mut store = KeyStore::empty();
    store
        .add(
            "bench".into(),
            SecretKey::from_bytes(&me.dangerous_to_bytes()).unwrap(),
        )
        .unwrap();
    store
        .save(&d.join("keys.json"), b"bench passphrase", 8192, 1)
        .unwrap();
    std::fs::write(d.join("pass"), "bench passphrase").unwrap();
    let toml = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\nclient_ca = \"{}\"\nallowed_clients = [\"sha256:{}\"]\n[keys]\nfile = \"keys.json\"\npassphrase_file = \"pass\"\n[audit]\njournal = \"journal.log\"\n[nonces]\ncapacity = 1000000\n[log]\nlevel = \"error\"\n",
        server.cert.display(),
        server.key.display(),
        ca_path.display(),
        client.fingerprint
    );
    std::fs::write(d.join("signer.toml"), toml).unwrap();
    let config = signer_svc::config::Config::load(&d.join("signer.toml")).unwrap();
    let keys = KeyStore::open(&config.keys.file, b"bench passphrase").unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = signer_svc::server::start(&config, keys, shutdown.clone())
        .await
        .unwrap();
    let tls = musig2_proto::transport::client_tls(&ca_path, &client.cert, &client.key, "localhost")
        .unwrap();
    let ch = tonic::transport::Channel::from_shared(format!(
        "https://localhost:{}",
        running.addr.port()
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut c = musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch);

    for format in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
        let mut keys: Vec<[u8; 33]> = vec![
            me.public_key(),
            others[0].public_key(),
            others[1].public_key(),
        ];
        keys.sort_unstable();
        let ctx = SessionContext {
            signer_keys: keys.clone(),
            message: vec![7; 32],
            format,
            tweaks: vec![],
            batch: Vec::new(),
        };
        let key_agg = KeyAggContext::new(format, &keys).unwrap();
        let (mut gen_lat, mut sign_lat) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let warmup = 50;
        for i in 0..n + warmup {
            let mut sid = [0u8; 16];
            sid[..8].copy_from_slice(&(i as u64).to_be_bytes());
            sid[15] = format as u8;
            let t = Instant::now();
            let mine = c
                .generate_nonce(GenerateNonceRequest {
                    public_key: me.public_key().to_vec(),
                    session_id: sid.to_vec(),
                    context: Some(ctx.to_pb()),
                    pooled: false,
                })
                .await
                .unwrap()
                .into_inner()
                .public_nonce;
            let g = t.elapsed();
            let mut nonces = Vec::new();
            for k in &keys {
                if *k == me.public_key() {
                    nonces.push(mine.clone());
                } else {
                    let sk = others.iter().find(|o| o.public_key() == *k).unwrap();
                    nonces.push(
                        nonce_gen(&mut rand::rng(), sk, &key_agg, &ctx.message)
                            .unwrap()
                            .1
                            .to_bytes()
                            .to_vec(),
                    );
                }
            }
            let t = Instant::now();
            c.partial_sign(PartialSignRequest {
                public_key: me.public_key().to_vec(),
                session_id: sid.to_vec(),
                context: Some(ctx.to_pb()),
                public_nonces: nonces,
            })
            .await
            .unwrap();
            let s = t.elapsed();
            if i >= warmup {
                gen_lat.push(g);
                sign_lat.push(s);
            }
        }
        println!(
            "== {format} (3 signers, journal fsynced on {}):",
            d.display()
        );
        report("GenerateNonce", gen_lat);
        report("PartialSign", sign_lat);
    }
    // A new mutual-TLS connection and one ListKeys, without and with 300 unauthenticated
    // connections held open by an attacker on the same address (250 silent, 50 stalled
    // mid-record): accepting never waits for them.
    let connect_and_list = || {
        let tls =
            musig2_proto::transport::client_tls(&ca_path, &client.cert, &client.key, "localhost")
                .unwrap();
        let url = format!("https://localhost:{}", running.addr.port());
        async move {
            let t = Instant::now();
            let ch = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .tls_config(tls)
                .unwrap()
                .connect()
                .await
                .unwrap();
            musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch)
                .list_keys(musig2_proto::v1::ListKeysRequest {})
                .await
                .unwrap();
            t.elapsed()
        }
    };
    let rounds = 200;
    let mut quiet = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        quiet.push(connect_and_list().await);
    }
    println!("== new connection + ListKeys:");
    report("quiet", quiet);
    let mut flood = Vec::new();
    for i in 0..300 {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        if i >= 250 {
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        flood.push(s);
    }
    let mut flooded = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        flooded.push(connect_and_list().await);
    }
    report("300 pre-auth", flooded);
    drop(flood);
    shutdown.cancel();
}
