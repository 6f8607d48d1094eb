//! Every kustomization renders (`kubectl kustomize`), validates against the Kubernetes schemas
//! (`kubernetes-validate`) and meets the deployment's promises (`deploy/tests/validate.py`); a
//! copy with each mistake re-introduced is caught; the production signer configuration fails
//! closed until its output-key allow-list is filled in. Needs `kubectl`; the PyPI package
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
    let text = String::from_utf8_lossy(&out.stdout);
    for rendered in [
        "overlays/dev",
        "overlays/prod",
        "party-a",
        "party-b",
        "cluster",
        "apps",
    ] {
        assert!(text.contains(rendered), "{rendered} not rendered: {text}");
    }
}

/// Each entry: a file under deploy/k8s, a text to replace, its replacement, and what the
/// validator must then report.
const MISTAKES: &[(&str, &str, &str, &str)] = &[
    (
        "base/signer.yaml",
        "kind: StatefulSet\nmetadata:\n  name: musig2-signer",
        "kind: Deployment\nmetadata:\n  name: musig2-signer",
        "signer is a Deployment",
    ),
    (
        "base/signer.yaml",
        "accessModes: [ReadWriteOncePod]",
        "accessModes: [ReadWriteOnce]",
        "is not ReadWriteOncePod",
    ),
    (
        "base/default-deny.yaml",
        "policyTypes: [Ingress, Egress]",
        "policyTypes: [Ingress]",
        "no default-deny NetworkPolicy",
    ),
    (
        "base/signer.yaml",
        "unhealthyPodEvictionPolicy: AlwaysAllow",
        "unhealthyPodEvictionPolicy: IfHealthyBudget",
        "blocks evicting an unhealthy pod",
    ),
    (
        "base/network-policy.yaml",
        "matchLabels: {musig2.io/apps: \"true\"}",
        "matchLabels: {}",
        "API is reachable from outside",
    ),
    (
        "overlays/prod/signer.toml",
        "allowed_clients = [\"uri:spiffe://musig2/coordinator\"]",
        "allowed_clients = [\"cn:coordinator\"]",
        "signer allow-list by name",
    ),
    (
        "base/signer.yaml",
        "secret: {secretName: musig2-signer-keys, defaultMode: 0400}",
        "secret: {secretName: musig2-signer-keys}",
        "defaultMode is not 0400",
    ),
    (
        "base/signer.yaml",
        "httpGet: {path: /readyz, port: metrics}",
        "httpGet: {path: /metrics, port: metrics}",
        "readinessProbe on /readyz",
    ),
    (
        "base/signer.yaml",
        "limits: {cpu: 500m, memory: 256Mi}",
        "limits: {cpu: \"1\", memory: 256Mi}",
        "not Guaranteed QoS",
    ),
    (
        "base/signer.yaml",
        "  clusterIP: None\n  selector: {app.kubernetes.io/name: musig2-signer}",
        "  selector: {app.kubernetes.io/name: musig2-signer}",
        "not a headless Service",
    ),
    (
        "base/network-policy.yaml",
        "          podSelector:\n            matchLabels: {k8s-app: kube-dns}\n",
        "",
        "DNS egress not limited to kube-dns",
    ),
    (
        "base/pki.yaml",
        "  issuerRef: {name: musig2-signer-client, kind: Issuer}",
        "  issuerRef: {name: musig2-ca, kind: Issuer}",
        "not from its dedicated issuer",
    ),
    (
        "base/pki.yaml",
        "    rotationPolicy: Never\n",
        "",
        "rotationPolicy Never",
    ),
    (
        "overlays/prod/kustomization.yaml",
        "        value: musig2-signer.musig2.svc",
        "        value: musig2-signer.other.svc",
        "lacks musig2-signer.musig2.svc",
    ),
    (
        "overlays/prod/namespace.yaml",
        "pod-security.kubernetes.io/enforce: restricted",
        "pod-security.kubernetes.io/enforce: baseline",
        "not pod-security restricted",
    ),
    (
        "base/monitoring.yaml",
        "musig2_coordinator_failovers_total",
        "musig2_coordinator_failover_count",
        "unknown metric",
    ),
    (
        "examples/two-cluster/party-b/coordinator.toml",
        "p2p.party-a.example.com",
        "p2p.party-c.example.com",
        "does not dial party-a",
    ),
    (
        "apps/apps.yaml",
        "musig2.io/apps: \"true\"",
        "musig2.io/apps: \"false\"",
        "not labelled musig2.io/apps",
    ),
];

#[test]
fn each_mistake_reintroduced_is_caught() {
    let base = tempdir("mistakes");
    copy_dir(&root().join("k8s"), &base);
    for (i, (file, from, to, expect)) in MISTAKES.iter().enumerate() {
        let copy = base.with_extension(format!("mistake{i}"));
        let _ = std::fs::remove_dir_all(&copy);
        copy_dir(&base, &copy);
        let path = copy.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} no longer contains {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        let out = validate(Some(&copy));
        let report = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: {to:?} was not caught");
        assert!(
            report.contains(expect),
            "{file}: expected {expect:?} in:\n{report}"
        );
        let _ = std::fs::remove_dir_all(&copy);
    }
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn production_signer_config_fails_closed_until_filled_in() {
    let k8s = root().join("k8s");
    let text = std::fs::read_to_string(k8s.join("overlays/prod/signer.toml")).unwrap();
    let err = signer_svc::config::Config::parse(&text, &[], Path::new("/")).unwrap_err();
    assert!(
        err.to_string().contains("treasury-output-keys")
            && err.to_string().contains("REPLACE_WITH"),
        "{err}"
    );
    // Filled in, the same file parses (apart from the files that exist only in the pod).
    let key = hex::encode(
        shared::musig::SecretKey::from_bytes(&[3; 32])
            .unwrap()
            .public_key(),
    );
    let filled = text.replace("REPLACE_WITH_THE_ALLOWED_OUTPUT_KEYS", &key);
    let err = signer_svc::config::Config::parse(&filled, &[], Path::new("/")).unwrap_err();
    assert!(!err.to_string().contains("treasury-output-keys"), "{err}");
}

#[test]
fn a_signer_with_egress_is_caught() {
    let tmp = tempdir("egress");
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

/// A fresh directory of this process for `label` (tests run in parallel: one each).
fn tempdir(label: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("musig2-k8s-{}-{label}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}
