//! What a platform team relies on, on the running signer: one signer per journal (an exclusive
//! lock), certificates that rotate without a restart (new handshakes present the new
//! certificate), and HTTP health endpoints kubelet can probe.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Harness;

fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `musig2-signer serve` on `config`; `Ok` once it prints `listening`, `Err(stderr)` if it
/// exits first.
fn spawn_signer(config: &std::path::Path) -> Result<Proc, String> {
    spawn_signer_at(config).map(|(p, _)| p)
}

fn spawn_signer_at(config: &std::path::Path) -> Result<(Proc, std::net::SocketAddr), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_musig2-signer"))
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    if out.read_line(&mut line).unwrap() > 0 && line.starts_with("listening") {
        std::thread::spawn(move || for _ in out.lines() {});
        let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
        return Ok((Proc(child), addr));
    }
    let _ = child.wait();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    Err(err)
}

#[test]
fn a_second_signer_on_the_same_journal_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    common::write_keyfile(dir.path(), &common::secret_keys(1));
    let config = common::write_config(dir.path(), &pki, "\"cn:coordinator\"", "");
    let first = spawn_signer(&config).expect("the first signer starts");
    let err = spawn_signer(&config).err().expect("the second must refuse");
    assert!(err.contains("locked by another process"), "{err}");
    // The lock dies with its holder, also on SIGKILL: the next signer starts.
    drop(first);
    spawn_signer(&config).expect("after the first is gone, a signer starts");
}

/// The fingerprint of the certificate the server at `port` presents on a new handshake.
async fn presented(pki: &common::Pki, port: u16) -> String {
    let config = musig2_proto::transport::reloading_client_config(
        &pki.ca,
        &pki.client.cert,
        &pki.client.key,
    )
    .unwrap();
    let io =
        musig2_proto::transport::connect_tls(config, "localhost".into(), "127.0.0.1".into(), port)
            .await
            .unwrap();
    let (_, conn) = io.inner().get_ref();
    musig2_proto::transport::fingerprint(&conn.peer_certificates().unwrap()[0])
}

#[tokio::test]
async fn a_renewed_server_certificate_is_presented_without_a_restart() {
    // The real signer process.
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    common::write_keyfile(dir.path(), &common::secret_keys(1));
    let config = common::write_config(dir.path(), &pki, "\"cn:coordinator\"", "");
    let (_signer, addr) = spawn_signer_at(&config).unwrap();
    let old = presented(&pki, addr.port()).await;
    assert_eq!(old, pki.server.fingerprint);
    // cert-manager renews in place: same CA, same names, a new key; files swapped atomically.
    // Old and new chain to the same CA, so only the fingerprint tells them apart.
    let staging = tempfile::tempdir().unwrap();
    let renewed = pki
        .issuer
        .issue_to(
            staging.path(),
            "server",
            &musig2_proto::pki::loopback_server("signer"),
        )
        .unwrap();
    std::fs::rename(&renewed.key, &pki.server.key).unwrap();
    std::fs::rename(&renewed.cert, &pki.server.cert).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = presented(&pki, addr.port()).await;
        if now == renewed.fingerprint {
            break;
        }
        assert_eq!(now, old, "only the old or the new certificate");
        assert!(
            Instant::now() < deadline,
            "the renewed certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_endpoints_for_kubelet() {
    let h = Harness::start(1, "[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let addr = h.metrics_addr.unwrap();
    let (a, b) = tokio::task::spawn_blocking(move || {
        (http_get(addr, "/healthz"), http_get(addr, "/readyz"))
    })
    .await
    .unwrap();
    assert_eq!(a.0, 200, "{}", a.1);
    assert_eq!(b.0, 200, "{}", b.1);
    let c = tokio::task::spawn_blocking(move || http_get(addr, "/nope"))
        .await
        .unwrap();
    assert_eq!(c.0, 404);
}
