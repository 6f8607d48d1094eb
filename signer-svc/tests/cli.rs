//! The binary starts and documents itself.
#![allow(clippy::unwrap_used, missing_docs)]

#[test]
fn help_and_version() {
    let bin = env!("CARGO_BIN_EXE_musig2-signer");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    assert!(text.contains("Usage: musig2-signer"), "{text}");
    let version = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        concat!("musig2-signer ", env!("CARGO_PKG_VERSION"))
    );
}
