//! The binary starts and documents itself.
#![allow(clippy::unwrap_used, missing_docs)]

use rustls_pki_types::pem::PemObject;

#[test]
fn help_and_version() {
    let bin = env!("CARGO_BIN_EXE_musig2-coordinator");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("Usage: musig2-coordinator"), "{text}");
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        concat!("musig2-coordinator ", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn certs_command_makes_a_working_pki() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    let bin = env!("CARGO_BIN_EXE_musig2-coordinator");
    let r = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(&out)
        .args(["--app", "wallet"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let text = String::from_utf8(r.stdout).unwrap();
    assert!(
        text.contains("sha256:") && text.contains("cn:wallet"),
        "{text}"
    );
    // The server and client certificates chain to the CA and have the right key usages:
    // a signer TLS config builds with them and the client fingerprint allow-list parses.
    musig2_proto::transport::install_crypto_provider();
    let tls = musig2_proto::transport::ServerTls {
        cert: out.join("signer.pem"),
        key: out.join("signer.key"),
        client_ca: out.join("ca.pem"),
        allow: musig2_proto::transport::AllowList::parse(&["cn:coordinator"]).unwrap(),
    };
    tls.server_config().unwrap();
    let cert = std::fs::read_to_string(out.join("coordinator-client.pem")).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
    let parsed = x509_parser::parse_x509_certificate(der.as_ref()).unwrap().1;
    let eku = parsed.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(out.join("signer.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }
    // Refuses to overwrite.
    let again = std::process::Command::new(bin)
        .args(["certs", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[cfg(unix)]
#[test]
fn certs_refuses_a_planted_symlink_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pki");
    std::fs::create_dir(&out).unwrap();
    let stolen = dir.path().join("stolen-key");
    // An attacker with write access to the directory plants a link where a private key goes.
    std::os::unix::fs::symlink(&stolen, out.join("app-wallet.key")).unwrap();
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_musig2-coordinator"))
        .args(["certs", "--out"])
        .arg(&out)
        .args(["--app", "wallet"])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("app-wallet.key exists"), "{err}");
    assert!(
        !stolen.exists(),
        "a private key was written through the link"
    );
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        1,
        "nothing may be written when the command refuses"
    );
}
