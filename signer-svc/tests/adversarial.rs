//! The signer driven as a fully compromised coordinator would drive it: a caller holding the
//! coordinator's client certificate, real mutual TLS on loopback, trying to make the signer
//! sign what the operator did not intend. One test (or more) per class of defect; each asserts
//! the refusal *and* that the attack is real (the construction reaches its target), so the test
//! fails if the defence is removed.
//!
//! The own-key oracle through key sets and tweaks has its own file: `adversarial_oracle.rs`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{Harness, nonce_req, now_ms, sign_req};
use musig2_proto::v1::AttestPeerRequest;
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, SecretKey, SignatureFormat,
    SigningSession, Tweak, nonce_gen,
};
use shared::wire::{MAX_ATTESTATION_LIFETIME_MS, SessionContext};
use signer_svc::journal::{self, RecordKind};
use tonic::Code;

#[tokio::test]
async fn attestations_are_capped_in_lifetime_and_rate_and_journaled() {
    let extra = r#"
[attestation]
max_per_window = 5
window_secs = 3600
"#;
    let h = Harness::start(1, extra).await;
    let key = h.keys[0].public_key().to_vec();
    let mut client = h.client().await;
    let req = |expires_at_ms: i64| AttestPeerRequest {
        public_key: key.clone(),
        peer_id: b"\x00\x24peer".to_vec(),
        expires_at_ms,
    };
    // Lifetime beyond the protocol's maximum: refused, nothing journaled, nothing counted.
    let err = client
        .attest_peer(req(now_ms() + MAX_ATTESTATION_LIFETIME_MS + 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    for _ in 0..5 {
        client.attest_peer(req(now_ms() + 60_000)).await.unwrap();
    }
    let err = client
        .attest_peer(req(now_ms() + 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().contains("builtin_attest_rate"),
        "{}",
        err.message()
    );
    let count = |h: &Harness| {
        let (_, records) = journal::records("j", &std::fs::read(h.journal()).unwrap()).unwrap();
        records
            .iter()
            .filter(|r| r.kind == RecordKind::Attestation)
            .inspect(|r| {
                assert_eq!(
                    r.event.peer_id.as_deref(),
                    Some(hex::encode(b"\x00\x24peer").as_str())
                );
                assert!(r.event.expires_at_ms.is_some());
            })
            .count()
    };
    assert_eq!(count(&h), 5, "one record per released attestation only");
    // The limit survives a restart: the window is refilled from the journal.
    let h = h.restart().await;
    let mut client = h.client().await;
    let err = client
        .attest_peer(req(now_ms() + 60_000))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(count(&h), 5);
}

#[tokio::test]
async fn attest_peer_policy_rule_limits_lifetime() {
    let extra = r#"
[[policy.rules]]
id = "short-attestations"
kind = "attest_peer"
max_ttl_secs = 3600
"#;
    let h = Harness::start(1, extra).await;
    let mut client = h.client().await;
    let req = |ttl: i64| AttestPeerRequest {
        public_key: h.keys[0].public_key().to_vec(),
        peer_id: b"\x00\x24peer".to_vec(),
        expires_at_ms: now_ms() + ttl,
    };
    client.attest_peer(req(3_000_000)).await.unwrap();
    let err = client.attest_peer(req(7_200_000)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().starts_with("policy rule short-attestations:"));
}

/// Run nonce + partial signature for `key` with a co-signer the test plays itself.
async fn sign_once(
    h: &Harness,
    client: &mut musig2_proto::v1::signer_service_client::SignerServiceClient<
        tonic::transport::Channel,
    >,
    session: [u8; 16],
    tweaks: Vec<Tweak>,
) -> Result<PartialSignature, tonic::Status> {
    let ours = &h.keys[0];
    let other = SecretKey::from_bytes(&[0x77; 32]).unwrap();
    let mut keys = vec![ours.public_key(), other.public_key()];
    keys.sort_unstable();
    let ctx = SessionContext {
        signer_keys: keys.clone(),
        message: vec![9; 32],
        format: SignatureFormat::Bip340,
        tweaks,
        batch: Vec::new(),
    };
    let key_agg = ctx.key_agg().unwrap();
    let own_nonce = client
        .generate_nonce(nonce_req(ours, session, &ctx))
        .await?
        .into_inner()
        .public_nonce;
    let (_sn, pn) = nonce_gen(&mut rand::rng(), &other, &key_agg, &ctx.message).unwrap();
    let nonces: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            if *k == ours.public_key() {
                own_nonce.clone()
            } else {
                pn.to_bytes().to_vec()
            }
        })
        .collect();
    let r = client
        .partial_sign(sign_req(ours, session, &ctx, &nonces))
        .await?
        .into_inner();
    Ok(PartialSignature::from_slice(&r.partial_signature).unwrap())
}

#[tokio::test]
async fn tweaks_and_output_keys_are_visible_to_policy() {
    let other = SecretKey::from_bytes(&[0x77; 32]).unwrap();
    let ours = common::secret_keys(1).remove(0);
    let mut keys = vec![ours.public_key(), other.public_key()];
    keys.sort_unstable();
    let taproot = KeyAggContext::with_tweaks(
        SignatureFormat::Bip340,
        &keys,
        &[Tweak::Taproot { merkle_root: None }],
    )
    .unwrap()
    .output_key();
    // Only Taproot-tweaked sessions, and only to one output key (given x-only).
    let extra = format!(
        r#"
[[policy.rules]]
id = "taproot-only"
kind = "allowed_tweaks"
tweaks = ["taproot"]

[[policy.rules]]
id = "treasury-address"
kind = "allowed_output_keys"
output_keys = ["{}"]
"#,
        hex::encode(&taproot[1..])
    );
    let h = Harness::start(1, &extra).await;
    let mut client = h.client().await;
    sign_once(
        &h,
        &mut client,
        [1; 16],
        vec![Tweak::Taproot { merkle_root: None }],
    )
    .await
    .unwrap();
    for (i, tweaks, rule) in [
        (2u8, vec![], "taproot-only"),
        (3, vec![Tweak::Plain([5; 32])], "taproot-only"),
        (4, vec![Tweak::XOnly([5; 32])], "taproot-only"),
        (
            5,
            vec![Tweak::Taproot {
                merkle_root: Some([1; 32]),
            }],
            "treasury-address",
        ),
    ] {
        let err = sign_once(&h, &mut client, [i; 16], tweaks)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
        assert!(
            err.message().starts_with(&format!("policy rule {rule}:")),
            "{}",
            err.message()
        );
    }
}

#[tokio::test]
async fn rate_limit_counts_released_signatures_across_a_restart() {
    let extra = r#"
[[policy.rules]]
id = "two-per-hour"
kind = "rate_limit"
max_signatures = 2
window_secs = 3600
"#;
    let h = Harness::start(1, extra).await;
    let mut client = h.client().await;
    sign_once(&h, &mut client, [1; 16], vec![]).await.unwrap();
    sign_once(&h, &mut client, [2; 16], vec![]).await.unwrap();
    let err = sign_once(&h, &mut client, [3; 16], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // A restart must not reset the window: the two signatures are in the journal.
    let h = h.restart().await;
    let mut client = h.client().await;
    let err = sign_once(&h, &mut client, [4; 16], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().starts_with("policy rule two-per-hour:"));
}

#[tokio::test]
async fn default_deny_refuses_keys_no_rule_names() {
    let keys = common::secret_keys(2);
    let extra = format!(
        r#"
[policy]
default_deny = true

[[policy.rules]]
id = "k0"
kind = "allowed_formats"
formats = ["bip340"]
keys = ["{}"]
"#,
        hex::encode(keys[0].public_key())
    );
    let h = Harness::start(2, &extra).await;
    let mut client = h.client().await;
    let ctx = common::context(&h.keys, SignatureFormat::Bip340, false, &[1; 32]);
    client
        .generate_nonce(nonce_req(&h.keys[0], [1; 16], &ctx))
        .await
        .unwrap();
    let err = client
        .generate_nonce(nonce_req(&h.keys[1], [1; 16], &ctx))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(
        err.message().starts_with("policy rule default_deny:"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn journal_records_what_was_signed() {
    let h = Harness::start(1, "").await;
    let mut client = h.client().await;
    sign_once(
        &h,
        &mut client,
        [1; 16],
        vec![Tweak::Taproot { merkle_root: None }],
    )
    .await
    .unwrap();
    let (_, records) = journal::records("j", &std::fs::read(h.journal()).unwrap()).unwrap();
    let psig = records
        .iter()
        .find(|r| r.kind == RecordKind::PartialSignature)
        .unwrap();
    let e = &psig.event;
    assert_eq!(e.format.as_deref(), Some("bip340"));
    assert_eq!(e.message.as_deref(), Some(hex::encode([9u8; 32]).as_str()));
    assert_eq!(e.message_len, Some(32));
    assert_eq!(e.tweaks.as_deref(), Some(&["taproot".to_string()][..]));
    assert_eq!(e.signer_keys.as_ref().map(Vec::len), Some(2));
    let other = SecretKey::from_bytes(&[0x77; 32]).unwrap();
    let mut keys = vec![h.keys[0].public_key(), other.public_key()];
    keys.sort_unstable();
    let output = KeyAggContext::with_tweaks(
        SignatureFormat::Bip340,
        &keys,
        &[Tweak::Taproot { merkle_root: None }],
    )
    .unwrap()
    .output_key();
    assert_eq!(e.output_key.as_deref(), Some(hex::encode(output).as_str()));
    assert!(e.partial_signature.is_some());
}

#[tokio::test]
async fn cancelled_partial_sign_finishes_and_the_retry_gets_the_stored_signature() {
    let faults = signer_svc::service::Faults {
        delay_after_journal: std::time::Duration::from_millis(600),
    };
    let h = Harness::start_with_faults(1, "", faults).await;
    let mut client = h.client().await;
    let ours = &h.keys[0];
    let other = SecretKey::from_bytes(&[0x77; 32]).unwrap();
    let mut keys = vec![ours.public_key(), other.public_key()];
    keys.sort_unstable();
    let ctx = SessionContext {
        signer_keys: keys.clone(),
        message: vec![3; 32],
        format: SignatureFormat::Bip340,
        tweaks: vec![],
        batch: Vec::new(),
    };
    let key_agg = ctx.key_agg().unwrap();
    let session = [0x33; 16];
    let own = client
        .generate_nonce(nonce_req(ours, session, &ctx))
        .await
        .unwrap()
        .into_inner()
        .public_nonce;
    let (_sn, pn) = nonce_gen(&mut rand::rng(), &other, &key_agg, &ctx.message).unwrap();
    let nonces: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| {
            if *k == ours.public_key() {
                own.clone()
            } else {
                pn.to_bytes().to_vec()
            }
        })
        .collect();
    // The caller gives up while the signer sits between its journal write and its state change
    // (the client drops the call; the server sees the stream reset).
    let call = client.partial_sign(sign_req(ours, session, &ctx, &nonces));
    let gave_up = tokio::time::timeout(std::time::Duration::from_millis(200), call).await;
    assert!(gave_up.is_err(), "the call should still be in flight");
    // The identical retry gets the partial signature the journal holds.
    let r = client
        .partial_sign(sign_req(ours, session, &ctx, &nonces))
        .await
        .unwrap()
        .into_inner();
    assert!(r.replayed, "the retry must replay the stored answer");
    let (_, records) = journal::records("j", &std::fs::read(h.journal()).unwrap()).unwrap();
    let journaled: Vec<_> = records
        .iter()
        .filter(|r| r.kind == RecordKind::PartialSignature)
        .collect();
    assert_eq!(journaled.len(), 1);
    assert_eq!(
        journaled[0].event.partial_signature.as_deref(),
        Some(hex::encode(&r.partial_signature).as_str())
    );
    let agg = AggNonce::sum(
        SignatureFormat::Bip340,
        &nonces
            .iter()
            .map(|n| PubNonce::from_slice(n).unwrap())
            .collect::<Vec<_>>(),
    )
    .unwrap();
    let s = SigningSession::new(&key_agg, &agg, &ctx.message).unwrap();
    let idx = keys.iter().position(|k| *k == ours.public_key()).unwrap();
    s.verify_partial(
        &PartialSignature::from_slice(&r.partial_signature).unwrap(),
        &PubNonce::from_slice(&own).unwrap(),
        idx,
    )
    .unwrap();
}

/// Open `idle` TCP connections that never send a byte and `slow` ones that send the first bytes
/// of a TLS record and stall, all from 127.0.0.1 like the legitimate client.
async fn pre_auth_flood(
    addr: std::net::SocketAddr,
    idle: usize,
    slow: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let mut socks = Vec::new();
    for i in 0..idle + slow {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        if i >= idle {
            // A handshake record header announcing 512 bytes, then nothing.
            s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
                .await
                .unwrap();
        }
        socks.push(s);
    }
    socks
}

#[tokio::test]
async fn idle_and_slow_connections_do_not_starve_an_allowed_client() {
    let h = Harness::start(1, "").await;
    let _flood = pre_auth_flood(h.addr, 250, 50).await;
    let started = std::time::Instant::now();
    let served = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let mut client = h.client().await;
        client
            .list_keys(musig2_proto::v1::ListKeysRequest {})
            .await
            .unwrap()
            .into_inner()
    })
    .await
    .expect("an allowed client must be served while 300 unauthenticated connections are open");
    assert_eq!(served.keys.len(), 1);
    eprintln!(
        "served in {:?} with 300 unauthenticated connections open",
        started.elapsed()
    );
}

#[cfg(unix)]
#[test]
fn key_files_are_never_written_through_planted_links() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let stolen = dir.path().join("stolen");
    let final_target = dir.path().join("elsewhere.json");
    std::fs::write(&final_target, b"operator's other file").unwrap();
    let path = dir.path().join("keys.json");
    // Links at the temporary name the signer used to use and at the final path.
    std::os::unix::fs::symlink(&stolen, dir.path().join(".keys.json.tmp")).unwrap();
    std::os::unix::fs::symlink(&final_target, &path).unwrap();
    let mut store = signer_svc::keystore::KeyStore::empty();
    store
        .add("k".into(), SecretKey::from_bytes(&[0x31; 32]).unwrap())
        .unwrap();
    store
        .save(&path, b"a long passphrase", 8 * 1024, 1)
        .unwrap();
    assert!(
        !stolen.exists(),
        "the key file was written through the temp-path link"
    );
    assert_eq!(
        std::fs::read(&final_target).unwrap(),
        b"operator's other file"
    );
    let meta = std::fs::symlink_metadata(&path).unwrap();
    assert!(meta.is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // It is a real key file.
    let back = signer_svc::keystore::KeyStore::open(&path, b"a long passphrase").unwrap();
    assert_eq!(back.keys().len(), 1);
    // A loose 0644 file at the path ends 0600 after the next save.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    store
        .save(&path, b"a long passphrase", 8 * 1024, 1)
        .unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// Whether a client with `leaf` completes a ListKeys call.
async fn admitted(h: &Harness, leaf: &musig2_proto::pki::LeafFiles) -> bool {
    match h.client_with(leaf).await {
        Ok(mut c) => c
            .list_keys(musig2_proto::v1::ListKeysRequest {})
            .await
            .is_ok(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn allow_list_names_are_unambiguous_and_keys_survive_renewal() {
    use musig2_proto::pki::{self, LeafSpec};
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let spiffe = "spiffe://party-a/coordinator";
    // A client key pinned by its SPKI (computed from any certificate carrying it).
    let key_pem = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let throwaway = musig2_proto::pki::Ca::new("throwaway")
        .unwrap()
        .issue(&LeafSpec {
            key_pem: Some(key_pem.clone()),
            ..pki::client("x")
        })
        .unwrap();
    let spki = musig2_proto::transport::spki_fingerprint(
        &CertificateDer::from_pem_slice(throwaway.cert_pem.as_bytes()).unwrap(),
    )
    .unwrap();
    // A fresh signer whose PKI we control fully: entries by CN, URI SAN and SPKI.
    let h = Harness::start_allowing(1, &format!("\"cn:coordinator\", \"uri:{spiffe}\"")).await;
    let d = h.dir.path();
    let ca = &h.pki.issuer;
    // Exactly one CN, the allowed one: admitted (the harness's own client).
    assert!(admitted(&h, &h.pki.client).await);
    // The allowed CN beside another CN: refused (it used to pass).
    let two_cns = ca
        .issue_to(
            d,
            "two-cns",
            &LeafSpec {
                extra_common_names: vec!["intruder".into()],
                ..pki::client("coordinator")
            },
        )
        .unwrap();
    assert!(
        !admitted(&h, &two_cns).await,
        "a certificate with two CNs must not match cn:"
    );
    // URI SAN: the SPIFFE id admits a certificate whatever its CN; another id does not.
    let by_uri = ca
        .issue_to(
            d,
            "by-uri",
            &LeafSpec {
                uris: vec![spiffe.into()],
                ..pki::client("workload-7")
            },
        )
        .unwrap();
    assert!(admitted(&h, &by_uri).await);
    let other_uri = ca
        .issue_to(
            d,
            "other-uri",
            &LeafSpec {
                uris: vec!["spiffe://party-a/app".into()],
                ..pki::client("workload-8")
            },
        )
        .unwrap();
    assert!(!admitted(&h, &other_uri).await);

    // SPKI pinning: a renewed certificate with the same key passes, a new key with the same
    // name does not.
    let h = Harness::start_allowing(1, &format!("\"spki:{spki}\"")).await;
    // Issue the pinned key from the signer's CA twice (a renewal that keeps the key).
    let d = h.dir.path();
    let renewed = |name: &str| {
        h.pki
            .issuer
            .issue_to(
                d,
                name,
                &LeafSpec {
                    key_pem: Some(key_pem.clone()),
                    ..pki::client("renamed-too")
                },
            )
            .unwrap()
    };
    let first = renewed("pinned-1");
    let second = renewed("pinned-2");
    assert_ne!(
        first.fingerprint, second.fingerprint,
        "two distinct certificates"
    );
    assert!(admitted(&h, &first).await);
    assert!(admitted(&h, &second).await);
    assert!(
        !admitted(&h, &h.pki.client).await,
        "same CA, other key: refused"
    );
}

/// Random key sets (1–10 keys, some ours, some the attacker's) with tweak lists that include
/// tweaks *constructed* to cancel the attacker's share: the signer never releases a partial
/// signature for a session whose output (or aggregate) key is one of its own keys. Drives the

#[tokio::test]
async fn audit_show_answers_what_a_key_signed_and_when() {
    let h = Harness::start(1, "").await;
    let mut client = h.client().await;
    sign_once(
        &h,
        &mut client,
        [1; 16],
        vec![Tweak::Taproot { merkle_root: None }],
    )
    .await
    .unwrap();
    client
        .attest_peer(AttestPeerRequest {
            public_key: h.keys[0].public_key().to_vec(),
            peer_id: b"\x00\x24peer".to_vec(),
            expires_at_ms: now_ms() + 60_000,
        })
        .await
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_musig2-signer");
    let key = hex::encode(h.keys[0].public_key());
    let show = |args: &[&str]| {
        std::process::Command::new(bin)
            .args(["audit", "show"])
            .arg(h.journal())
            .args(["--key", &key])
            .args(args)
            .output()
            .unwrap()
    };
    let out = show(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.lines().count(),
        3,
        "nonce, partial signature, attestation:\n{text}"
    );
    let psig_line = text
        .lines()
        .find(|l| l.contains("PartialSignature"))
        .unwrap();
    assert!(
        psig_line.contains(&format!("message {}", hex::encode([9u8; 32]))),
        "{psig_line}"
    );
    assert!(psig_line.contains("tweaks taproot"), "{psig_line}");
    assert!(psig_line.contains("output_key 0"), "{psig_line}");
    assert!(text.contains("peer_id 0024"), "{text}");
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("1 partial signatures, 1 nonces, 1 attestations")
    );
    // JSON bodies, one per line.
    let out = show(&["--json"]);
    let bodies: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bodies.len(), 3);
    assert_eq!(bodies[1]["format"], "bip340");
    // --since in the future: nothing; in the past (RFC 3339): everything.
    let later = (now_ms() + 3_600_000).to_string();
    assert_eq!(show(&["--since", &later]).stdout.len(), 0);
    let out = show(&["--since", "2020-01-01T00:00:00Z"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 3);
    // Bad input is refused with a clear message.
    let out = show(&["--since", "yesterday"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--since"));
    // An edited journal is refused, not shown.
    let path = h.journal();
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("bip340", "lotus", 1)).unwrap();
    let out = show(&[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED"));
}
