//! Policy rules over the real service, and the audit journal against tampering and crashes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Harness, context, nonce_req, sign_req};
use shared::musig::SignatureFormat;
use signer_svc::journal;
use tonic::Code;

async fn nonces(
    h: &Harness,
    session: [u8; 16],
    ctx: &shared::wire::SessionContext,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let mut client = h.client().await;
    let mut out = Vec::new();
    for k in &h.keys {
        out.push(
            client
                .generate_nonce(nonce_req(k, session, ctx))
                .await?
                .into_inner()
                .public_nonce,
        );
    }
    Ok(out)
}

fn rule(id: &str, body: &str, warn_only: bool) -> String {
    format!("[[policy.rules]]\nid = \"{id}\"\nwarn_only = {warn_only}\n{body}\n")
}

/// Each rule refuses what it should (PERMISSION_DENIED naming the rule) and warn-only passes it.
#[tokio::test]
async fn each_policy_rule_refuses_and_warn_only_passes() {
    let keys = common::secret_keys(2);
    let other = shared::musig::SecretKey::from_bytes(&[0x42; 32]).unwrap();
    let agg = shared::musig::KeyAggContext::new(
        SignatureFormat::Bip340,
        &keys.iter().map(|k| k.public_key()).collect::<Vec<_>>(),
    )
    .unwrap()
    .aggregate_key();
    let set_rule = format!(
        "kind = \"allowed_key_sets\"\nkey_sets = [[\"{}\", \"{}\"]]",
        hex::encode(keys[1].public_key()),
        hex::encode(keys[0].public_key())
    );
    let agg_rule = format!(
        "kind = \"allowed_key_sets\"\naggregate_keys = [\"{}\"]",
        hex::encode(agg)
    );
    let _ = other;
    let cases: Vec<(&str, String)> = vec![
        (
            "formats-bip340-only",
            "kind = \"allowed_formats\"\nformats = [\"bip340\"]".into(),
        ),
        ("treasury-set", set_rule),
        ("treasury-aggregate", agg_rule),
        (
            "short-messages",
            "kind = \"max_message_length\"\nmax_bytes = 32".into(),
        ),
        (
            "velocity",
            "kind = \"rate_limit\"\nmax_signatures = 1\nwindow_secs = 3600".into(),
        ),
    ];
    for (id, body) in &cases {
        for warn_only in [false, true] {
            let h = Harness::start(2, &rule(id, body, warn_only)).await;
            // An allowed request first (BIP340, the allowed set, a 32-byte message).
            let ok_ctx = context(&h.keys, SignatureFormat::Bip340, false, &[1; 32]);
            let n = nonces(&h, [1; 16], &ok_ctx).await.unwrap();
            let mut client = h.client().await;
            client
                .partial_sign(sign_req(&h.keys[0], [1; 16], &ok_ctx, &n))
                .await
                .unwrap();
            // Then the request this rule is about.
            let result = match *id {
                "formats-bip340-only" => {
                    let ctx = context(&h.keys, SignatureFormat::Lotus, false, &[1; 32]);
                    nonces(&h, [2; 16], &ctx).await.map(|_| ())
                }
                "treasury-set" | "treasury-aggregate" => {
                    let mut three = h.keys.iter().map(|k| k.public_key()).collect::<Vec<_>>();
                    three.push(
                        shared::musig::SecretKey::from_bytes(&[0x42; 32])
                            .unwrap()
                            .public_key(),
                    );
                    three.sort_unstable();
                    let ctx = shared::wire::SessionContext {
                        signer_keys: three,
                        ..ok_ctx.clone()
                    };
                    client
                        .generate_nonce(nonce_req(&h.keys[0], [3; 16], &ctx))
                        .await
                        .map(|_| ())
                }
                "short-messages" => {
                    let ctx = context(&h.keys, SignatureFormat::Bip340, false, &[1; 33]);
                    nonces(&h, [4; 16], &ctx).await.map(|_| ())
                }
                _ => {
                    let n = nonces(&h, [5; 16], &ok_ctx).await.unwrap();
                    client
                        .partial_sign(sign_req(&h.keys[0], [5; 16], &ok_ctx, &n))
                        .await
                        .map(|_| ())
                }
            };
            if warn_only {
                result.unwrap_or_else(|e| panic!("{id} warn-only refused: {e}"));
            } else {
                let e = result.expect_err(id);
                assert_eq!(e.code(), Code::PermissionDenied, "{id}: {e}");
                assert!(
                    e.message().starts_with(&format!("policy rule {id}:")),
                    "{id}: {}",
                    e.message()
                );
            }
        }
    }
}

#[test]
fn bad_policy_and_config_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    common::write_keyfile(dir.path(), &common::secret_keys(1));
    let allowed = format!("\"sha256:{}\"", pki.client.fingerprint);
    let cases = [
        (
            rule(
                "x",
                "kind = \"allowed_formats\"\nformats = [\"ecdsa\"]",
                false,
            ),
            "unknown format",
        ),
        (
            rule(
                "x",
                "kind = \"rate_limit\"\nmax_signatures = 0\nwindow_secs = 1",
                false,
            ),
            "must both be positive",
        ),
        (rule("x", "kind = \"nope\"", false), "unknown kind"),
        (
            rule(
                "x",
                "kind = \"max_message_length\"\nmax_bytes = 1\nformats = [\"lotus\"]",
                false,
            ),
            "not a field of kind",
        ),
        (
            format!(
                "{}{}",
                rule("d", "kind = \"max_message_length\"\nmax_bytes = 1", false),
                rule("d", "kind = \"max_message_length\"\nmax_bytes = 1", false)
            ),
            "duplicate rule id",
        ),
        ("[nonces]\nttl_secs = 0\n".to_string(), "nonces.ttl_secs"),
        ("[nonces]\nttl = 5\n".to_string(), "unknown field"),
    ];
    for (extra, want) in cases {
        let path = common::write_config(dir.path(), &pki, &allowed, &extra);
        let e = signer_svc::config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
    // Environment overrides name their key too, and apply.
    let path = common::write_config(dir.path(), &pki, &allowed, "");
    let text = std::fs::read_to_string(&path).unwrap();
    let env = vec![(
        "MUSIG2_SIGNER__NONCES__CAPACITY".to_string(),
        "7".to_string(),
    )];
    let c = signer_svc::config::Config::parse(&text, &env, dir.path()).unwrap();
    assert_eq!(c.nonces.capacity, 7);
    let env = vec![(
        "MUSIG2_SIGNER__NONCES__CAPACITY".to_string(),
        "many".to_string(),
    )];
    let e = signer_svc::config::Config::parse(&text, &env, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nonces.capacity"), "{e}");
    let missing = common::write_config(dir.path(), &pki, "", "");
    let e = signer_svc::config::Config::load(&missing)
        .unwrap_err()
        .to_string();
    assert!(e.contains("tls.allowed_clients"), "{e}");
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn verify_lines(l: &[String]) -> Result<journal::Report, journal::JournalError> {
    let mut data = l.join("\n");
    data.push('\n');
    journal::verify_bytes("test", data.as_bytes())
}

#[tokio::test]
async fn journal_detects_edits_removals_and_reordering() {
    let h = Harness::start(2, "").await;
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, &[8; 32]);
    let n = nonces(&h, [1; 16], &ctx).await.unwrap();
    let mut client = h.client().await;
    for k in &h.keys {
        client
            .partial_sign(sign_req(k, [1; 16], &ctx, &n))
            .await
            .unwrap();
    }
    let l = lines(&h.journal());
    assert_eq!(l.len(), 5);
    assert_eq!(verify_lines(&l).unwrap().records, 5);
    // Edit a field of a middle record.
    let mut edited = l.clone();
    edited[2] = edited[2].replacen("\"nonce\"", "\"partial_signature\"", 1);
    assert!(edited[2] != l[2]);
    assert!(verify_lines(&edited).is_err(), "edit undetected");
    // Edit a single hex digit of a partial signature.
    let mut digit = l.clone();
    let at = digit[4].find("partial_signature\":\"").unwrap() + 21;
    let c = if &digit[4][at..=at] == "0" { "1" } else { "0" };
    digit[4].replace_range(at..=at, c);
    assert!(verify_lines(&digit).is_err(), "digit edit undetected");
    // Remove a record.
    let mut removed = l.clone();
    removed.remove(1);
    assert!(verify_lines(&removed).is_err(), "removal undetected");
    // Reorder two records.
    let mut reordered = l.clone();
    reordered.swap(1, 2);
    assert!(verify_lines(&reordered).is_err(), "reordering undetected");
    // The CLI agrees, and reports the line.
    let bin = env!("CARGO_BIN_EXE_musig2-signer");
    let tampered = h.dir.path().join("tampered.log");
    std::fs::write(&tampered, format!("{}\n", removed.join("\n"))).unwrap();
    let out = Command::new(bin)
        .args(["audit", "verify"])
        .arg(&tampered)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin)
        .args(["audit", "verify"])
        .arg(h.journal())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = journal::verify_file(&h.journal()).unwrap().head;
    assert!(String::from_utf8_lossy(&out.stdout).contains(&head));
    // Truncating whole final records is caught against the expected head.
    let short = h.dir.path().join("short.log");
    std::fs::write(&short, format!("{}\n", l[..4].join("\n"))).unwrap();
    let out = Command::new(bin)
        .args(["audit", "verify", "--expect-head", &head])
        .arg(&short)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Start the real binary, hammer it with nonce requests, SIGKILL it mid-stream: the journal
/// still verifies (a torn final record is reported and tolerated), and on restart the torn
/// tail is cut off and recorded, never extended.
#[tokio::test]
async fn journal_survives_sigkill_mid_write() {
    musig2_proto::transport::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    let keys = common::secret_keys(3);
    common::write_keyfile(dir.path(), &keys);
    let allowed = format!("\"sha256:{}\"", pki.client.fingerprint);
    let config = common::write_config(dir.path(), &pki, &allowed, "");
    let journal_path = dir.path().join("journal.log");
    let bin = env!("CARGO_BIN_EXE_musig2-signer");
    for round in 0..3u8 {
        let mut child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(&config)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        let port: u16 = line.trim().rsplit(':').next().unwrap().parse().unwrap();
        let tls = musig2_proto::transport::client_tls(
            &pki.ca,
            &pki.client.cert,
            &pki.client.key,
            "localhost",
        )
        .unwrap();
        let ch = tonic::transport::Channel::from_shared(format!("https://localhost:{port}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch);
        let ctx = context(&keys, SignatureFormat::Lotus, false, &[round; 32]);
        let mut tasks = Vec::new();
        for t in 0..4u8 {
            let mut c = client.clone();
            let ctx = ctx.clone();
            let key = shared::musig::SecretKey::from_bytes(
                &keys[usize::from(t) % 3].dangerous_to_bytes(),
            )
            .unwrap();
            tasks.push(tokio::spawn(async move {
                for i in 0..10_000u32 {
                    let mut sid = [t; 16];
                    sid[..4].copy_from_slice(&i.to_be_bytes());
                    sid[15] = round;
                    if c.generate_nonce(nonce_req(&key, sid, &ctx)).await.is_err() {
                        break;
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 150 * u64::from(round))).await;
        child.kill().unwrap();
        child.wait().unwrap();
        for t in tasks {
            t.await.unwrap();
        }
        let report = journal::verify_file(&journal_path).unwrap();
        assert!(report.records > 1, "round {round}: records were written");
        let out = Command::new(bin)
            .args(["audit", "verify"])
            .arg(&journal_path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Force a torn tail by hand, as a crash between write and fsync could leave it.
    let mut data = std::fs::read(&journal_path).unwrap();
    let whole = journal::verify_file(&journal_path).unwrap();
    let partial = b"{\"seq\":99999,\"time_ms\":1,\"ki";
    data.extend_from_slice(partial);
    std::fs::write(&journal_path, &data).unwrap();
    let torn = journal::verify_file(&journal_path).unwrap();
    assert_eq!(torn.torn_tail, Some(partial.len()));
    assert_eq!(torn.records, whole.records);
    let out = Command::new(bin)
        .args(["audit", "verify"])
        .arg(&journal_path)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("torn final record"));
    // Opening cuts it and records the recovery; the chain continues.
    let j = journal::Journal::open(&journal_path).unwrap();
    drop(j);
    let after = journal::verify_file(&journal_path).unwrap();
    assert_eq!(after.torn_tail, None);
    assert_eq!(
        after.records,
        whole.records + 2,
        "recovered_torn_tail + start records"
    );
    assert!(
        std::fs::read_to_string(&journal_path)
            .unwrap()
            .contains("recovered_torn_tail")
    );
}

#[test]
fn cli_keygen_import_list() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_musig2-signer");
    let file = dir.path().join("keys.json");
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "a long enough passphrase\n").unwrap();
    let run = |args: &[&str]| Command::new(bin).args(args).output().unwrap();
    let f = file.to_str().unwrap();
    let p = pass.to_str().unwrap();
    let out = run(&[
        "keygen",
        "--file",
        f,
        "--label",
        "treasury",
        "--passphrase-file",
        p,
        "--kdf-memory-kib",
        "8192",
        "--kdf-iterations",
        "1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(public.len(), 66, "prints only the 33-byte public key");
    // --if-missing (the dev overlay's init container): the existing key, no second one.
    let again = run(&[
        "keygen",
        "--if-missing",
        "--file",
        f,
        "--label",
        "treasury",
        "--passphrase-file",
        p,
        "--kdf-memory-kib",
        "8192",
        "--kdf-iterations",
        "1",
    ]);
    assert!(again.status.success());
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), public);
    assert_eq!(signer_svc::keystore::list_public(&file).unwrap().len(), 1);
    // Import a known key.
    let secret = dir.path().join("secret.hex");
    std::fs::write(&secret, hex::encode([0x33u8; 32])).unwrap();
    let out = run(&[
        "import",
        "--file",
        f,
        "--label",
        "ops",
        "--passphrase-file",
        p,
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = shared::musig::SecretKey::from_bytes(&[0x33; 32])
        .unwrap()
        .public_key();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        hex::encode(imported)
    );
    // Duplicate label refused.
    let out = run(&[
        "import",
        "--file",
        f,
        "--label",
        "ops",
        "--passphrase-file",
        p,
        "--secret-file",
        secret.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    // List without the passphrase.
    let out = run(&["list", "--file", f]);
    let listing = String::from_utf8(out.stdout).unwrap();
    assert!(
        listing.contains(&public)
            && listing.contains("treasury")
            && listing.contains(&hex::encode(imported))
    );
    // No secret in the file in clear.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&hex::encode([0x33u8; 32])));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // Wrong passphrase refused; so is an edited public entry.
    std::fs::write(&pass, "another long passphrase").unwrap();
    let store = signer_svc::keystore::KeyStore::open(&file, b"another long passphrase");
    assert!(matches!(
        store,
        Err(signer_svc::keystore::KeyStoreError::Decrypt(_))
    ));
    let edited = text.replace("treasury", "treasurx");
    std::fs::write(&file, edited).unwrap();
    let store = signer_svc::keystore::KeyStore::open(&file, b"a long enough passphrase");
    assert!(matches!(
        store,
        Err(signer_svc::keystore::KeyStoreError::Decrypt(_))
    ));
}

#[test]
fn example_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/signer.example.toml"))
        .unwrap();
    // Point the example's files at real ones; every other key is as shipped.
    common::write_keyfile(dir.path(), &common::secret_keys(1));
    std::fs::create_dir_all(dir.path().join("audit")).unwrap();
    let env: Vec<(String, String)> = [
        ("TLS__CERT", pki.server.cert.display().to_string()),
        ("TLS__KEY", pki.server.key.display().to_string()),
        ("TLS__CLIENT_CA", pki.ca.display().to_string()),
        (
            "KEYS__PASSPHRASE_FILE",
            dir.path().join("passphrase").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("MUSIG2_SIGNER__{k}"), format!("\"{v}\"")))
    .collect();
    let c = signer_svc::config::Config::parse(&text, &env, dir.path()).unwrap();
    assert_eq!(c.policy.rules.len(), 3);
    c.policy.compile().unwrap();
}
