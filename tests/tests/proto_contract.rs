//! The gRPC contract (`proto/`) is a baseline clients rely on: it passes `buf lint`, and
//! `buf breaking` finds no breaking change against the committed image `proto/baseline.binpb`.
//! A copy with a field renumbered is refused, proving the check can fail. `buf` comes from the
//! npm package `@bufbuild/buf`, installed on first use into the build cache
//! (`e2e_tests::tools`).
//!
//! After a deliberate, announced breaking change, rebuild the baseline:
//! `buf build -o baseline.binpb` in `proto/`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn proto() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../proto")
}

fn buf(dir: &Path, args: &[&str]) -> std::process::Output {
    let bin =
        e2e_tests::tools::node_modules(e2e_tests::tools::NPM_BUF).join("node_modules/.bin/buf");
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .env(
            "BUF_CACHE_DIR",
            e2e_tests::tools::tools_dir().join("buf-cache"),
        )
        .output()
        .expect("buf runs")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn the_contract_lints_and_keeps_its_baseline() {
    let lint = buf(&proto(), &["lint"]);
    assert!(lint.status.success(), "buf lint:\n{}", text(&lint));
    let baseline = proto().join("baseline.binpb");
    let against = baseline.to_str().unwrap();
    let breaking = buf(&proto(), &["breaking", "--against", against]);
    assert!(
        breaking.status.success(),
        "buf breaking against proto/baseline.binpb:\n{}",
        text(&breaking)
    );
    // The same check on a copy with one field renumbered fails, naming the field.
    let dir = tempfile::tempdir().unwrap();
    let v1 = dir.path().join("musig2/v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(proto().join("buf.yaml"), dir.path().join("buf.yaml")).unwrap();
    for e in std::fs::read_dir(proto().join("musig2/v1")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), v1.join(e.file_name())).unwrap();
    }
    let file = v1.join("coordinator.proto");
    let src = std::fs::read_to_string(&file).unwrap();
    let changed = src.replacen(
        "SessionPhase from_phase = 2;",
        "SessionPhase from_phase = 9;",
        1,
    );
    assert_ne!(src, changed);
    std::fs::write(&file, changed).unwrap();
    let broken = buf(dir.path(), &["breaking", "--against", against]);
    assert!(!broken.status.success(), "a renumbered field passed");
    assert!(text(&broken).contains("from_phase"), "{}", text(&broken));
}
