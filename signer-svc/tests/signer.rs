//! The signer over real mutual TLS on loopback, certificates generated per test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::collections::HashSet;

use common::{Harness, context, nonce_req, sign_req};
use musig2_proto::v1::{AttestPeerRequest, ListKeysRequest};
use shared::musig::{
    AggNonce, PartialSignature, PubNonce, SignatureFormat, SigningSession, verify,
};
use signer_svc::journal;
use tonic::Code;

async fn run_session(h: &Harness, format: SignatureFormat, taproot: bool, session: [u8; 16]) {
    let msg = [0x5a; 32];
    let ctx = context(&h.keys, format, taproot, &msg);
    let mut client = h.client().await;
    let mut nonces = Vec::new();
    for k in &h.keys {
        let r = client
            .generate_nonce(nonce_req(k, session, &ctx))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.public_nonce.len(), 66);
        assert_eq!(r.context_hash, ctx.hash().to_vec());
        nonces.push(r.public_nonce);
    }
    let key_agg = ctx.key_agg().unwrap();
    let parsed: Vec<PubNonce> = nonces
        .iter()
        .map(|n| PubNonce::from_slice(n).unwrap())
        .collect();
    let agg = AggNonce::sum(format, &parsed).unwrap();
    let s = SigningSession::new(&key_agg, &agg, &msg).unwrap();
    let mut psigs = Vec::new();
    for (i, k) in h.keys.iter().enumerate() {
        let r = client
            .partial_sign(sign_req(k, session, &ctx, &nonces))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.replayed);
        let p = PartialSignature::from_slice(&r.partial_signature).unwrap();
        s.verify_partial(&p, &parsed[i], i).unwrap();
        psigs.push(p);
    }
    let sig = s.aggregate(&psigs).unwrap();
    verify(format, &key_agg.output_key(), &msg, &sig).unwrap();
}

#[tokio::test]
async fn three_key_sessions_in_both_formats_verify() {
    let h = Harness::start(3, "").await;
    let keys = h
        .client()
        .await
        .list_keys(ListKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys.len(), 3);
    let mut n = 0u8;
    for format in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
        for taproot in [false, true] {
            n += 1;
            run_session(&h, format, taproot, [n; 16]).await;
        }
    }
    let report = journal::verify_file(&h.journal()).unwrap();
    // start + 4 sessions × 3 keys × (nonce + partial signature)
    assert_eq!(report.records, 1 + 4 * 3 * 2);
    assert_eq!(report.torn_tail, None);
}

#[tokio::test]
async fn mutual_tls_admits_only_the_allowed_client() {
    let h = Harness::start(1, "").await;
    h.client()
        .await
        .list_keys(ListKeysRequest {})
        .await
        .unwrap();
    let rejected = |r: Result<(), String>, what: &str| assert!(r.is_err(), "{what} was admitted");
    for (leaf, what) in [
        (
            &h.pki.intruder,
            "a CA-signed certificate not on the allow-list",
        ),
        (&h.pki.expired, "an expired certificate"),
        (&h.pki.foreign, "a certificate from another CA"),
    ] {
        let r = match h.client_with(leaf).await {
            Err(e) => Err(e.to_string()),
            Ok(mut c) => c
                .list_keys(ListKeysRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        rejected(r, what);
    }
    // No client certificate at all.
    let ca = std::fs::read(&h.pki.ca).unwrap();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .domain_name("localhost");
    let r = async {
        let ch =
            tonic::transport::Channel::from_shared(format!("https://localhost:{}", h.addr.port()))
                .unwrap()
                .tls_config(tls)
                .map_err(|e| e.to_string())?
                .connect()
                .await
                .map_err(|e| e.to_string())?;
        musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch)
            .list_keys(ListKeysRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    rejected(r, "a client without certificate");
    // Plaintext HTTP/2.
    let r = async {
        let ch =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{}", h.addr.port()))
                .unwrap()
                .connect()
                .await
                .map_err(|e| e.to_string())?;
        musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch)
            .list_keys(ListKeysRequest {})
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
    .await;
    rejected(r, "a plaintext connection");
    // The allowed client still works afterwards.
    h.client()
        .await
        .list_keys(ListKeysRequest {})
        .await
        .unwrap();
}

#[tokio::test]
async fn allow_list_by_common_name() {
    musig2_proto::transport::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let pki = common::Pki::new(dir.path());
    let keys = common::secret_keys(1);
    common::write_keyfile(dir.path(), &keys);
    let path = common::write_config(dir.path(), &pki, "\"cn:coordinator\"", "");
    let config = signer_svc::config::Config::load(&path).unwrap();
    let store =
        signer_svc::keystore::KeyStore::open(&config.keys.file, common::PASSPHRASE.as_bytes())
            .unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = signer_svc::server::start(&config, store, shutdown.clone())
        .await
        .unwrap();
    let connect = |leaf: musig2_proto::pki::LeafFiles| {
        let ca = pki.ca.clone();
        async move {
            let tls = musig2_proto::transport::client_tls(&ca, &leaf.cert, &leaf.key, "localhost")
                .unwrap();
            let ch = tonic::transport::Channel::from_shared(format!(
                "https://localhost:{}",
                running.addr.port()
            ))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
            musig2_proto::v1::signer_service_client::SignerServiceClient::new(ch)
                .list_keys(ListKeysRequest {})
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    };
    connect(pki.client.clone()).await.unwrap();
    assert!(
        connect(pki.intruder.clone()).await.is_err(),
        "other common name admitted"
    );
    assert!(
        connect(pki.foreign.clone()).await.is_err(),
        "same name from another CA admitted"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn one_partial_signature_per_nonce_under_concurrency() {
    let h = Harness::start(3, "").await;
    let session = [7u8; 16];
    let msg = [1u8; 32];
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, &msg);
    let mut client = h.client().await;
    let mut nonces = Vec::new();
    for k in &h.keys {
        nonces.push(
            client
                .generate_nonce(nonce_req(k, session, &ctx))
                .await
                .unwrap()
                .into_inner()
                .public_nonce,
        );
    }
    let req = sign_req(&h.keys[0], session, &ctx, &nonces);
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = client.clone();
        let r = req.clone();
        tasks.push(tokio::spawn(async move { c.partial_sign(r).await }));
    }
    let mut distinct = HashSet::new();
    let mut fresh = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap().into_inner();
        if !r.replayed {
            fresh += 1;
        }
        distinct.insert(r.partial_signature);
    }
    assert_eq!(distinct.len(), 1, "exactly one distinct partial signature");
    assert_eq!(
        fresh, 1,
        "exactly one call computed it; the others are retries"
    );
    // An identical retry later returns it again.
    let again = client.partial_sign(req.clone()).await.unwrap().into_inner();
    assert!(again.replayed);
    assert!(distinct.contains(&again.partial_signature));
    // Anything else for that nonce is refused.
    let mut changed_msg = ctx.clone();
    changed_msg.message = vec![2u8; 32];
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &changed_msg, &nonces))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let mut changed_set = ctx.clone();
    changed_set.signer_keys.pop();
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &changed_set, &nonces[..2]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let mut other_nonces = nonces.clone();
    other_nonces.swap(1, 2);
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &other_nonces))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains("different request"), "{e}");
    // The journal holds exactly one partial signature for key 0.
    let text = std::fs::read_to_string(h.journal()).unwrap();
    let key0 = hex::encode(h.keys[0].public_key());
    let sigs = text
        .lines()
        .filter(|l| {
            l.contains("\"partial_signature\"")
                && l.contains(&key0)
                && l.contains("partial_signature\":\"")
        })
        .count();
    assert_eq!(sigs, 1);
}

#[tokio::test]
async fn malformed_requests_are_refused_and_change_nothing() {
    let h = Harness::start(3, "").await;
    let session = [9u8; 16];
    let msg = [3u8; 32];
    let ctx = context(&h.keys, SignatureFormat::Lotus, false, &msg);
    let mut client = h.client().await;
    let before = journal::verify_file(&h.journal()).unwrap().records;
    let good = nonce_req(&h.keys[0], session, &ctx);
    let invalid_point = {
        let mut k = vec![0x02];
        k.extend([0xff; 32]);
        k
    };
    let unknown = shared::musig::SecretKey::from_bytes(&[0x77; 32])
        .unwrap()
        .public_key()
        .to_vec();
    let mut cases: Vec<(musig2_proto::v1::GenerateNonceRequest, Code, &str)> = Vec::new();
    let mut r = good.clone();
    r.public_key = vec![2; 32];
    cases.push((r, Code::InvalidArgument, "public_key must be 33 bytes"));
    let mut r = good.clone();
    r.public_key = invalid_point.clone();
    cases.push((r, Code::NotFound, "holds no key"));
    let mut r = good.clone();
    r.public_key = unknown;
    cases.push((r, Code::NotFound, "holds no key"));
    let mut r = good.clone();
    r.session_id = vec![1; 17];
    cases.push((r, Code::InvalidArgument, "session_id must be 16 bytes"));
    let mut r = good.clone();
    r.context = None;
    cases.push((r, Code::InvalidArgument, "context is missing"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().signer_keys[1] = invalid_point.clone();
    cases.push((r, Code::InvalidArgument, "not a valid curve point"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().signer_keys.reverse();
    cases.push((r, Code::InvalidArgument, "sorted"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().message = vec![0; 33];
    cases.push((r, Code::InvalidArgument, "message must be 32 bytes"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().format = 0;
    cases.push((r, Code::InvalidArgument, "format"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().signer_keys = vec![h.keys[0].public_key().to_vec(); 101];
    cases.push((r, Code::InvalidArgument, "exceeds 100"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().format = musig2_proto::v1::SignatureFormat::Bip340 as i32;
    r.context.as_mut().unwrap().message = vec![0; 2000];
    cases.push((r, Code::InvalidArgument, "exceeds 1024"));
    let mut r = good.clone();
    r.context.as_mut().unwrap().signer_keys.remove(0);
    cases.push((r, Code::InvalidArgument, "not among context.signer_keys"));
    for (i, (req, code, text)) in cases.into_iter().enumerate() {
        let e = client.generate_nonce(req).await.unwrap_err();
        assert_eq!(e.code(), code, "case {i}: {e}");
        assert!(
            e.message().contains(text),
            "case {i}: {:?} lacks {text:?}",
            e.message()
        );
    }
    // PartialSign: unknown session, wrong nonce count, wrong nonce length, invalid nonce point.
    let not_points = [invalid_point.clone(), invalid_point.clone()].concat();
    let e = client
        .partial_sign(sign_req(
            &h.keys[0],
            [0xee; 16],
            &ctx,
            &[not_points.clone(), not_points.clone(), not_points],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut nonces = Vec::new();
    for k in &h.keys {
        nonces.push(
            client
                .generate_nonce(nonce_req(k, session, &ctx))
                .await
                .unwrap()
                .into_inner()
                .public_nonce,
        );
    }
    let after_nonces = journal::verify_file(&h.journal()).unwrap().records;
    assert_eq!(
        after_nonces,
        before + 3,
        "refused requests journaled nothing"
    );
    let e = client
        .partial_sign(sign_req(&h.keys[0], [0xee; 16], &ctx, &nonces))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    assert!(e.message().contains("never issued, expired"), "{e}");
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &nonces[..2]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    let mut bad = nonces.clone();
    bad[1].pop();
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &bad))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    assert!(
        e.message().contains("public_nonces[1] must be 66 bytes"),
        "{e}"
    );
    let mut bad = nonces.clone();
    bad[2] = [invalid_point.clone(), invalid_point.clone()].concat();
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &bad))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e}");
    // Own nonce missing from its index: refused, nonce kept.
    let mut swapped = nonces.clone();
    swapped.swap(0, 1);
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &swapped))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // Oversized request: refused by the transport limit.
    let mut huge = sign_req(&h.keys[0], session, &ctx, &nonces);
    huge.context.as_mut().unwrap().message = vec![0; 300 * 1024];
    assert!(client.partial_sign(huge).await.is_err());
    // Attestation: bad inputs.
    let e = client
        .attest_peer(AttestPeerRequest {
            public_key: h.keys[0].public_key().to_vec(),
            peer_id: vec![],
            expires_at_ms: i64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // Nothing changed: the journal grew by nothing, and the session still signs.
    assert_eq!(
        journal::verify_file(&h.journal()).unwrap().records,
        after_nonces
    );
    for k in &h.keys {
        client
            .partial_sign(sign_req(k, session, &ctx, &nonces))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn nonces_do_not_survive_a_restart_and_are_not_issued_again() {
    let h = Harness::start(2, "").await;
    let session = [4u8; 16];
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, b"restart");
    let mut client = h.client().await;
    let mut nonces = Vec::new();
    for k in &h.keys {
        nonces.push(
            client
                .generate_nonce(nonce_req(k, session, &ctx))
                .await
                .unwrap()
                .into_inner()
                .public_nonce,
        );
    }
    let h = h.restart().await;
    let mut client = h.client().await;
    let e = client
        .partial_sign(sign_req(&h.keys[0], session, &ctx, &nonces))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(
        e.message().contains("lost when the signer restarted"),
        "{e}"
    );
    // Nor is a second nonce issued for the same session and key: a coordinator that sent the
    // first one and restarted before writing it would otherwise send a different nonce for
    // the same session (found by review of the coordinator's unwritten own contributions).
    for k in &h.keys {
        let e = client
            .generate_nonce(nonce_req(k, session, &ctx))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(
            e.message().contains("issued before the signer restarted"),
            "{e}"
        );
    }
    // Another session gets its nonce.
    client
        .generate_nonce(nonce_req(&h.keys[0], [5u8; 16], &ctx))
        .await
        .unwrap();
    // And a second restart still knows the first session's nonces (the journal holds them).
    let h = h.restart().await;
    let mut client = h.client().await;
    let e = client
        .generate_nonce(nonce_req(&h.keys[1], session, &ctx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(
        std::fs::read_to_string(h.journal())
            .unwrap()
            .lines()
            .all(|l| !l.contains("secnonce"))
    );
    journal::verify_file(&h.journal()).unwrap();
}

#[tokio::test]
async fn nonce_ttl_and_capacity() {
    let h = Harness::start(3, "[nonces]\nttl_secs = 1\ncapacity = 2\n").await;
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, b"cap");
    let mut client = h.client().await;
    let n0 = client
        .generate_nonce(nonce_req(&h.keys[0], [1; 16], &ctx))
        .await
        .unwrap()
        .into_inner()
        .public_nonce;
    client
        .generate_nonce(nonce_req(&h.keys[1], [1; 16], &ctx))
        .await
        .unwrap();
    // Idempotent retry does not use capacity.
    let again = client
        .generate_nonce(nonce_req(&h.keys[0], [1; 16], &ctx))
        .await
        .unwrap()
        .into_inner()
        .public_nonce;
    assert_eq!(n0, again);
    let e = client
        .generate_nonce(nonce_req(&h.keys[2], [1; 16], &ctx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Expired: gone, and room again.
    let e = client
        .partial_sign(sign_req(
            &h.keys[0],
            [1; 16],
            &ctx,
            &[n0.clone(), n0.clone(), n0],
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e}");
    client
        .generate_nonce(nonce_req(&h.keys[2], [1; 16], &ctx))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_retry_reports_the_same_expiry_and_a_released_nonce_never_signs() {
    use musig2_proto::v1::ReleaseNonceRequest;
    let h = Harness::start(2, "").await;
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, b"release");
    let mut client = h.client().await;
    let first = client
        .generate_nonce(nonce_req(&h.keys[0], [7; 16], &ctx))
        .await
        .unwrap()
        .into_inner();
    let retry = client
        .generate_nonce(nonce_req(&h.keys[0], [7; 16], &ctx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry.public_nonce, first.public_nonce);
    assert_eq!(retry.expires_at_ms, first.expires_at_ms, "the real expiry");
    let other = client
        .generate_nonce(nonce_req(&h.keys[1], [7; 16], &ctx))
        .await
        .unwrap()
        .into_inner()
        .public_nonce;
    let release = |key: &[u8; 33], session: [u8; 16]| ReleaseNonceRequest {
        public_key: key.to_vec(),
        session_id: session.to_vec(),
    };
    let r = client
        .release_nonce(release(&h.keys[0].public_key(), [7; 16]))
        .await
        .unwrap()
        .into_inner();
    assert!(r.released);
    // Idempotent, and nothing to release where nothing was issued.
    let mine = h.keys[0].public_key();
    for session in [[7; 16], [8; 16]] {
        assert!(
            !client
                .release_nonce(release(&mine, session))
                .await
                .unwrap()
                .into_inner()
                .released
        );
    }
    // The released nonce signs nothing, and no new nonce replaces it.
    let nonces = vec![first.public_nonce.clone(), other];
    let e = client
        .partial_sign(sign_req(&h.keys[0], [7; 16], &ctx, &nonces))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    let e = client
        .generate_nonce(nonce_req(&h.keys[0], [7; 16], &ctx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    // The other key's nonce of the same session still signs.
    client
        .partial_sign(sign_req(&h.keys[1], [7; 16], &ctx, &nonces))
        .await
        .unwrap();
    // Bad input and unknown keys are refused.
    let e = client
        .release_nonce(ReleaseNonceRequest {
            public_key: vec![2; 32],
            session_id: vec![7; 16],
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    let stranger = shared::musig::SecretKey::from_bytes(&[0x55; 32])
        .unwrap()
        .public_key();
    let e = client
        .release_nonce(release(&stranger, [7; 16]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // Journaled, with no secret.
    let (_, records) = journal::records("j", &std::fs::read(h.journal()).unwrap()).unwrap();
    let released: Vec<_> = records
        .iter()
        .filter(|r| r.kind == journal::RecordKind::NonceReleased)
        .collect();
    assert_eq!(released.len(), 1);
    assert_eq!(
        released[0].event.public_nonce.as_deref(),
        Some(hex::encode(&first.public_nonce).as_str())
    );
    journal::verify_file(&h.journal()).unwrap();
}

#[tokio::test]
async fn attestation_is_domain_separated_and_verifies() {
    let h = Harness::start(1, "").await;
    let mut client = h.client().await;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 60_000;
    let peer = b"\x00\x24some-peer-id".to_vec();
    let r = client
        .attest_peer(AttestPeerRequest {
            public_key: h.keys[0].public_key().to_vec(),
            peer_id: peer.clone(),
            expires_at_ms: expires,
        })
        .await
        .unwrap()
        .into_inner();
    let att = shared::wire::Attestation {
        signer_key: h.keys[0].public_key(),
        peer_id: peer.clone(),
        expires_at_ms: expires,
        signature: r.signature.try_into().unwrap(),
    };
    att.verify_signature().unwrap();
    // It is a signature over the tagged attestation digest, not over anything a caller chose.
    let digest = shared::wire::attestation_digest(&h.keys[0].public_key(), &peer, expires);
    assert_ne!(digest.as_slice(), peer.as_slice());
}

#[tokio::test]
async fn health_reflection_and_metrics_without_secrets() {
    let h = Harness::start(2, "[metrics]\nlisten = \"127.0.0.1:0\"\n").await;
    let tls = musig2_proto::transport::client_tls(
        &h.pki.ca,
        &h.pki.client.cert,
        &h.pki.client.key,
        "localhost",
    )
    .unwrap();
    let ch = tonic::transport::Channel::from_shared(format!("https://localhost:{}", h.addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    let r = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "musig2.v1.SignerService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    // A session, so that the counters move.
    run_session(&h, SignatureFormat::Lotus, false, [0x31; 16]).await;
    let addr = h.metrics_addr.expect("metrics enabled");
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert!(
        body.contains("musig2_signer_partial_signatures_total{format=\"lotus\"} 2"),
        "{body}"
    );
    assert!(
        body.contains("musig2_signer_request_duration_seconds"),
        "{body}"
    );
    for k in &h.keys {
        let secret = hex::encode(k.dangerous_to_bytes().as_slice());
        assert!(!body.contains(&secret));
        assert!(
            !body.contains(&hex::encode(k.public_key())),
            "metrics carry no key material"
        );
    }
}

/// Found by the soak run (issue 14): answered nonces (kept only so a retry gets the same
/// partial signature) held capacity for their whole TTL, so with the defaults (10,000 nonces,
/// 600 s) a signer refused every nonce past 16.7 sessions/s sustained. Now only unused nonces
/// are capped; answered ones make room, oldest first, once older than 60 s (half the TTL when
/// shorter: here 2 s), so a retry soon after still gets its answer.
#[tokio::test]
async fn answered_nonces_make_room_and_unused_ones_stay_capped() {
    let h = Harness::start(1, "[nonces]\nttl_secs = 4\ncapacity = 2\n").await;
    let ctx = context(&h.keys, SignatureFormat::Bip340, false, b"room");
    let mut client = h.client().await;
    let shared_client = client.clone();
    let answer = |i: u8| {
        let mut client = shared_client.clone();
        let (ctx, key) = (ctx.clone(), &h.keys[0]);
        async move {
            let n = client
                .generate_nonce(nonce_req(key, [i; 16], &ctx))
                .await?
                .into_inner()
                .public_nonce;
            client
                .partial_sign(sign_req(key, [i; 16], &ctx, &[n]))
                .await
                .map(|_| ())
        }
    };
    answer(0).await.unwrap();
    answer(1).await.unwrap();
    // Both answers are recent: they stay for retries, and the store is full.
    let e = answer(2).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    for i in 2..4u8 {
        answer(i).await.unwrap();
    }
    // The latest answer is still there for a retry.
    let n3 = client
        .generate_nonce(nonce_req(&h.keys[0], [3; 16], &ctx))
        .await
        .unwrap_err();
    assert_eq!(n3.code(), Code::FailedPrecondition, "{n3}");
    // Unused nonces are still capped (once the answers are old enough to make room).
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    for i in 20..22u8 {
        client
            .generate_nonce(nonce_req(&h.keys[0], [i; 16], &ctx))
            .await
            .unwrap();
    }
    let e = client
        .generate_nonce(nonce_req(&h.keys[0], [22; 16], &ctx))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
}
