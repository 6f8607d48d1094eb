//! `musig2-chaos` on real processes: a short run in CI (signers and coordinators SIGKILLed and
//! restarted while sessions run through the API) must end with every promised counter at zero;
//! and, on demand, a deliberately broken signer (one that replies without journaling its
//! partial signature; built only for this check, with a feature no other build enables) must
//! make the audit fail, proving the audit can fail.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

fn chaos(args: &[&str], signer_bin: Option<&std::path::Path>) -> (bool, serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_musig2-chaos"));
    cmd.args(args).arg("--json").env("MUSIG2_NO_BUILD", "1");
    if let Some(b) = signer_bin {
        cmd.env("MUSIG2_SIGNER_BIN", b);
    }
    // The signer binary beside ours must be current (cargo builds only this package's bins).
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.success(), v, stderr)
}

fn build_signer(
    features: Option<&str>,
    target_dir: Option<&std::path::Path>,
) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let target = target_dir
        .map(std::path::Path::to_path_buf)
        .unwrap_or_else(|| profile_dir.parent().unwrap().to_path_buf());
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["build", "-q", "-p", "signer-svc", "--bin", "musig2-signer"]);
    if features.is_none() {
        // The coordinator beside us must be current too.
        cmd.args(["-p", "coordinator-svc", "--bin", "musig2-coordinator"]);
    }
    cmd.arg("--target-dir").arg(&target);
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    assert!(cmd.status().unwrap().success(), "building musig2-signer");
    target
        .join(profile_dir.file_name().unwrap())
        .join("musig2-signer")
}

#[test]
fn short_chaos_run_keeps_every_promise() {
    build_signer(None, None);
    let (ok, v, stderr) = chaos(
        &[
            "--parties",
            "3",
            "--sessions",
            "40",
            "--concurrency",
            "3",
            "--seed",
            "7",
            "--kill-every-ms",
            "400",
        ],
        None,
    );
    assert!(ok, "chaos failed: {v}\n{stderr}");
    for k in [
        "nonce_reuse",
        "nonce_reissued",
        "unjournaled",
        "journal_broken",
        "lost_signatures",
        "unverified_signatures",
        "stuck",
        "aborted_without_reason",
    ] {
        assert_eq!(v[k], 0, "{k}: {v}");
    }
    assert!(
        v["kills"].as_u64().unwrap() > 0,
        "no process was killed: {v}"
    );
    assert!(
        v["completed"].as_u64().unwrap() > 0,
        "nothing completed: {v}"
    );
}

#[test]
#[ignore = "builds a deliberately broken signer in a separate target directory (minutes); run on demand"]
fn a_signer_that_does_not_journal_is_caught_by_the_audit() {
    let exe = std::env::current_exe().unwrap();
    let target = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("chaos-broken");
    let broken = build_signer(Some("chaos-broken-journal"), Some(&target));
    let (ok, v, stderr) = chaos(
        &[
            "--parties",
            "3",
            "--sessions",
            "10",
            "--concurrency",
            "2",
            "--seed",
            "3",
            "--kill-every-ms",
            "0",
        ],
        Some(&broken),
    );
    assert!(
        !ok,
        "the audit passed a signer that journals nothing: {v}\n{stderr}"
    );
    assert!(v["unjournaled"].as_u64().unwrap() > 0, "{v}");
}
