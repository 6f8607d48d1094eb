//! README's "Run three parties by hand", executed as written: every shell block of that section
//! runs in order from the repository root, with only these substitutions: the parties'
//! directory (a temporary one) and the client's virtual environment (one kept in the build
//! cache), the port numbers (free ones), the peer ids the coordinators print, the binaries'
//! location (the ones this test was built with; `cargo build --release` is not re-run), and the
//! `serve` commands run in the background. The signature the client prints must verify.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use shared::musig::{Signature, SignatureFormat, verify};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The shell blocks of README's section.
fn blocks() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let start = readme
        .find("## Run three parties by hand")
        .expect("README has the section");
    let rest = &readme[start..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    let section = &rest[..end];
    let mut out = Vec::new();
    let mut it = section.split("```sh\n").skip(1);
    for b in it.by_ref() {
        out.push(b.split("\n```").next().unwrap().to_string());
    }
    assert!(
        out.len() >= 6,
        "expected the section's shell blocks, got {}",
        out.len()
    );
    out
}

/// A 4-digit prefix `p` such that ports `p1`, `p2`, `p3` are free (below the ephemeral range).
fn free_prefix(taken: &[u32]) -> u32 {
    let start = 2000 + (std::process::id() % 1000);
    (start..3270)
        .chain(2000..start)
        .find(|p| {
            !taken.contains(p)
                && (1..=3).all(|n| {
                    std::net::TcpListener::bind(("127.0.0.1", (p * 10 + n) as u16)).is_ok()
                })
        })
        .expect("free ports")
}

struct Bg(Child);
impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a `serve` line in the background; wait for `want` on stdout; return its `key value` lines.
fn serve(line: &str, path: &str, want: &[&str]) -> (Bg, Vec<(String, String)>) {
    let mut child = Command::new("bash")
        .arg("-c")
        .arg(format!("exec {line}"))
        .current_dir(repo())
        .env("PATH", path)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    while !want
        .iter()
        .all(|w| lines.iter().any(|(k, _): &(String, String)| k == w))
    {
        let mut l = String::new();
        if out.read_line(&mut l).unwrap() == 0 {
            panic!("`{line}` exited early; printed {lines:?}");
        }
        let (k, v) = l.trim().split_once(' ').unwrap_or((l.trim(), ""));
        lines.push((k.to_string(), v.to_string()));
    }
    std::thread::spawn(move || for _ in out.lines() {});
    (Bg(child), lines)
}

#[test]
fn readme_three_parties_by_hand() {
    let base = tempfile::tempdir().unwrap();
    let parties = base.path().join("musig2-parties");
    let venv = e2e_tests::tools::tools_dir().join("byhand-venv");
    let bin_dir = procs::signer_bin().parent().unwrap().to_path_buf();
    assert!(bin_dir.join("musig2-coordinator").exists());
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let signer_p = free_prefix(&[]);
    let api_p = free_prefix(&[signer_p]);
    let p2p_p = free_prefix(&[signer_p, api_p]);
    let mut subst: Vec<(String, String)> = vec![
        ("~/musig2-parties/venv".into(), venv.display().to_string()),
        ("$HOME/musig2-parties".into(), parties.display().to_string()),
        ("~/musig2-parties".into(), parties.display().to_string()),
        ("$PWD/target/release".into(), bin_dir.display().to_string()),
        ("5015".into(), signer_p.to_string()),
        ("5025".into(), api_p.to_string()),
        ("4015".into(), p2p_p.to_string()),
    ];
    let mut procs: Vec<Bg> = Vec::new();
    let mut printed = String::new();
    for block in blocks() {
        let mut text = block.clone();
        for (from, to) in &subst {
            text = text.replace(from.as_str(), to);
        }
        if text.contains(" serve --config") {
            // Line by line: `serve` in the background, the rest in order.
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                if line.contains(" serve --config") {
                    let want: &[&str] = if line.starts_with("musig2-signer") {
                        &["listening"]
                    } else {
                        &["api", "peer", "listen"]
                    };
                    let (p, lines) = serve(line, &path, want);
                    procs.push(p);
                    if let Some((_, id)) = lines.iter().find(|(k, _)| k == "peer") {
                        let n = line
                            .split("/party")
                            .nth(1)
                            .and_then(|r| r.chars().next())
                            .unwrap();
                        subst.push((format!("PEER_ID_OF_PARTY_{n}"), id.clone()));
                    }
                } else {
                    let mut line = line.to_string();
                    for (from, to) in &subst {
                        line = line.replace(from.as_str(), to);
                    }
                    let st = Command::new("bash")
                        .args(["-euo", "pipefail", "-c", &line])
                        .current_dir(repo())
                        .env("PATH", &path)
                        .status()
                        .unwrap();
                    assert!(st.success(), "`{line}` failed");
                }
            }
            continue;
        }
        if text.starts_with("cargo build") {
            // The binaries this test was built with stand in for `cargo build --release`.
            text = text.lines().skip(1).collect::<Vec<_>>().join("\n");
        }
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &text])
            .current_dir(repo())
            .env("PATH", &path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "block failed:\n{text}\n--- stdout\n{}\n--- stderr\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        printed = String::from_utf8(out.stdout).unwrap();
    }
    assert_eq!(procs.len(), 6, "three signers and three coordinators ran");
    // The client's last line: the session's result, which must verify.
    let v: serde_json::Value = serde_json::from_str(printed.lines().last().unwrap()).unwrap();
    let msg: [u8; 32] = {
        use sha2::Digest;
        sha2::Sha256::digest(b"pay 1 BTC to bc1q...").into()
    };
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
    verify(SignatureFormat::Bip340, &key, &msg, &sig).unwrap();
    // The journal's directory was created private.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(parties.join("party1/audit"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
