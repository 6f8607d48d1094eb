//! Every kustomize overlay renders (`kubectl kustomize`) and validates against the Kubernetes
//! schemas (`kubernetes-validate`), the signer's NetworkPolicy admits only the coordinator and
//! allows no egress, and a broken policy is caught. Needs `kubectl`; the PyPI package
//! `kubernetes-validate` is installed on first use into a virtual environment in the build cache
//! (`e2e_tests::tools`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("deploy")
}

fn validate(k8s_root: Option<&Path>) -> std::process::Output {
    let mut cmd = Command::new(e2e_tests::tools::python(e2e_tests::tools::PY_KUBE));
    cmd.arg(root().join("tests/validate.py"));
    if let Some(r) = k8s_root {
        cmd.env("MUSIG2_K8S_ROOT", r);
    }
    cmd.output().expect("python3 runs")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn overlays_render_and_validate() {
    let out = validate(None);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("'dev'"));
}

#[test]
fn a_signer_with_egress_is_caught() {
    let tmp = tempdir();
    copy_dir(&root().join("k8s"), &tmp);
    let pol = tmp.join("base/network-policy.yaml");
    let text = std::fs::read_to_string(&pol).unwrap();
    std::fs::write(
        &pol,
        text.replacen("  egress: []", "  egress:\n    - {}", 1),
    )
    .unwrap();
    let out = validate(Some(&tmp));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("the signer has egress"));
    let _ = std::fs::remove_dir_all(&tmp);
}

fn tempdir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("musig2-k8s-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
