//! Clients in other languages, generated or loaded from `proto/`, drive a full 3-party session
//! against the running services (real signer and coordinator processes): Python (grpcio-tools
//! generated stubs) and TypeScript/Node (@grpc/grpc-js + @grpc/proto-loader). The tools come
//! from PyPI and npm, pinned, installed on first use into the build cache (`e2e_tests::tools`).
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
    // The client read the reason of a failed call from its machine-readable details.
    assert_eq!(v["error_reason"], "SESSION_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_completes_a_session() {
    let base = tempfile::tempdir().unwrap();
    let stubs_dir = base.path().join("py");
    std::fs::create_dir_all(&stubs_dir).unwrap();
    let proto = repo().join("proto");
    let python = e2e_tests::tools::python(e2e_tests::tools::PY_GRPC);
    let st = Command::new(&python)
        .args(["-m", "grpc_tools.protoc", "-I"])
        .arg(&proto)
        .arg(format!("--python_out={}", stubs_dir.display()))
        .arg(format!("--grpc_python_out={}", stubs_dir.display()))
        .args([
            "musig2/v1/types.proto",
            "musig2/v1/p2p.proto",
            "musig2/v1/coordinator.proto",
            "musig2/v1/signer.proto",
        ])
        .current_dir(&proto)
        .status()
        .expect("python with grpcio-tools");
    assert!(st.success(), "grpc_tools.protoc failed");
    let ps = parties(base.path(), 91).await;
    let msg = [0x51; 32];
    let cfg = config(&ps, base.path(), "lotus", msg);
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
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
    std::fs::copy(
        repo().join("tests/clients/node/sign.js"),
        app.join("sign.js"),
    )
    .unwrap();
    // The pinned packages of tests/clients/node/package.json, installed once in the build cache.
    let package: serde_json::Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/clients/node/package.json")).unwrap(),
    )
    .unwrap();
    for (name, version) in e2e_tests::tools::NPM_GRPC {
        assert_eq!(
            package["dependencies"][name], *version,
            "package.json and NPM_GRPC agree"
        );
    }
    let modules = e2e_tests::tools::node_modules(e2e_tests::tools::NPM_GRPC).join("node_modules");
    let ps = parties(base.path(), 95).await;
    let msg = [0x52; 32];
    let cfg = config(&ps, base.path(), "bip340", msg);
    let proto = repo().join("proto");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(app.join("sign.js"))
            .arg(&proto)
            .arg(&cfg)
            .env("NODE_PATH", &modules)
            .current_dir(&app)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    check(out, SignatureFormat::Bip340, msg);
}
