//! Clients in other languages, generated or loaded from `proto/`, drive a full 3-party session
//! against the running services (real signer and coordinator processes): Python (grpcio-tools
//! generated stubs) and TypeScript/Node (@grpc/grpc-js + @grpc/proto-loader). The tools come
//! from PyPI and npm (`.ci/run` installs the Python ones; this test runs `npm install`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::Command;

use procs::{ProcParty, mesh};
use shared::musig::{Signature, SignatureFormat, verify};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

async fn parties(base: &Path, first: u8) -> Vec<ProcParty> {
    let mut ps = Vec::new();
    for s in first..first + 3 {
        ps.push(ProcParty::start(base, s, "").await);
    }
    mesh(&ps).await;
    ps
}

fn config(ps: &[ProcParty], dir: &Path, format: &str, msg: [u8; 32]) -> PathBuf {
    let parties: Vec<serde_json::Value> = ps
        .iter()
        .map(|p| {
            serde_json::json!({
                "api": format!("localhost:{}", p.api_addr.rsplit(':').next().unwrap()),
                "key": hex::encode(p.key),
                "ca": p.ca, "cert": p.app.cert, "tls_key": p.app.key,
            })
        })
        .collect();
    let path = dir.join(format!("client-{format}.json"));
    std::fs::write(
        &path,
        serde_json::json!({"message": hex::encode(msg), "format": format, "parties": parties})
            .to_string(),
    )
    .unwrap();
    path
}

fn check(out: std::process::Output, format: SignatureFormat, msg: [u8; 32]) {
    assert!(
        out.status.success(),
        "client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["message"].as_str().unwrap(), hex::encode(msg));
    let key: [u8; 33] = hex::decode(v["output_key"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let sig = Signature(
        hex::decode(v["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    );
    verify(format, &key, &msg, &sig).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_completes_a_session() {
    let base = tempfile::tempdir().unwrap();
    let stubs_dir = base.path().join("py");
    std::fs::create_dir_all(&stubs_dir).unwrap();
    let proto = repo().join("proto");
    let st = Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs_dir.display()))
        .arg(format!("--grpc_python_out={}", stubs_dir.display()))
        .args([
            "musig2/v1/types.proto",
            "musig2/v1/coordinator.proto",
            "musig2/v1/signer.proto",
        ])
        .current_dir(&proto)
        .status()
        .expect("python3 with grpcio-tools (pip install grpcio grpcio-tools)");
    assert!(st.success(), "grpc_tools.protoc failed");
    let ps = parties(base.path(), 91).await;
    let msg = [0x51; 32];
    let cfg = config(&ps, base.path(), "lotus", msg);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg(repo().join("tests/clients/python/sign.py"))
            .arg(&stubs_dir)
            .arg(&cfg)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    check(out, SignatureFormat::Lotus, msg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_completes_a_session() {
    let base = tempfile::tempdir().unwrap();
    let app = base.path().join("node");
    std::fs::create_dir_all(&app).unwrap();
    for f in ["package.json", "sign.js"] {
        std::fs::copy(repo().join("tests/clients/node").join(f), app.join(f)).unwrap();
    }
    let st = Command::new("npm")
        .args(["install", "--silent", "--no-audit", "--no-fund"])
        .current_dir(&app)
        .status()
        .expect("npm");
    assert!(st.success(), "npm install failed");
    let ps = parties(base.path(), 95).await;
    let msg = [0x52; 32];
    let cfg = config(&ps, base.path(), "bip340", msg);
    let proto = repo().join("proto");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(app.join("sign.js"))
            .arg(&proto)
            .arg(&cfg)
            .current_dir(&app)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    check(out, SignatureFormat::Bip340, msg);
}
