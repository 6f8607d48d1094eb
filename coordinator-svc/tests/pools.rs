//! One-round signing from nonce pools (issue 17) through the real API of real processes
//! (signer and coordinator per party, mutual TLS, fsynced store and journals): slots fill once
//! every application opted in and every signer's policy allows it, a one-round session signs
//! and verifies on every party, concurrent sessions never share a pooled nonce (checked in the
//! signers' journals), a party without a pool gets POOL_EXHAUSTED, and a signer restart aborts
//! the session with the signer's reason, after which the pool refills and signs again.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::collections::HashMap;
use std::time::Duration;

use musig2_proto::v1 as pb;
use procs::{Client, ProcParty, error_info, keys, mesh};
use shared::musig::{SecretKey, Signature, SignatureFormat, verify};
use tonic::Code;

const SIZE: u32 = 4;

fn pool_req(ps: &[ProcParty], size: u32) -> pb::SetNoncePoolRequest {
    pb::SetNoncePoolRequest {
        signer_keys: keys(ps),
        format: pb::SignatureFormat::Bip340 as i32,
        tweaks: Vec::new(),
        size,
    }
}

/// Wait until party `c`'s pool has `want` slots ready.
async fn ready(c: &mut Client, ps: &[ProcParty], want: u32) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let st = c
            .set_nonce_pool(pool_req(ps, SIZE))
            .await
            .unwrap()
            .into_inner();
        if st.ready >= want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "pool not ready: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-round session created on party 0 and signed on every party: the signature (the same
/// everywhere), or the first party's error.
async fn one_round(ps: &[ProcParty], msg: u8) -> Result<(pb::Session, Vec<u8>), tonic::Status> {
    let mut c0 = ps[0].client().await;
    let s = c0
        .create_session(pb::CreateSessionRequest {
            signer_keys: keys(ps),
            message: vec![msg; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            one_round: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .session
        .unwrap();
    let mut calls = Vec::new();
    for p in ps {
        let mut c = p.client().await;
        let id = s.session_id.clone();
        calls.push(tokio::spawn(async move {
            c.sign(pb::SignRequest {
                session_id: id,
                timeout_ms: Some(30_000),
                ..Default::default()
            })
            .await
        }));
    }
    let mut sig: Option<Vec<u8>> = None;
    for c in calls {
        let r = c.await.unwrap()?.into_inner();
        if let Some(prev) = &sig {
            assert_eq!(prev, &r.signature, "parties returned different signatures");
        }
        sig = Some(r.signature);
    }
    Ok((s, sig.unwrap()))
}

fn check(s: &pb::Session, sig: &[u8], msg: u8) {
    let output: [u8; 33] = s.output_key.as_slice().try_into().unwrap();
    let sig = Signature(sig.try_into().unwrap());
    verify(SignatureFormat::Bip340, &output, &[msg; 32], &sig).unwrap();
}

/// Public nonces that signed more than one partial signature, from a signer's journal.
fn reused_nonces(p: &ProcParty) -> Vec<String> {
    let text = std::fs::read_to_string(p.dir.join("journal.log")).unwrap();
    let mut signed: HashMap<String, u32> = HashMap::new();
    for line in text.lines() {
        let body = line.split('\t').next().unwrap_or("");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
            continue;
        };
        if v["kind"] == "partial_signature"
            && let Some(n) = v["public_nonce"].as_str()
        {
            *signed.entry(n.to_string()).or_default() += 1;
        }
    }
    signed
        .into_iter()
        .filter(|(_, c)| *c > 1)
        .map(|(n, _)| n)
        .collect()
}

fn pooled_signatures(p: &ProcParty) -> usize {
    std::fs::read_to_string(p.dir.join("journal.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("\"partial_signature\"") && l.contains("\"pooled\":true"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_signing_from_nonce_pools() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = [0x61u8, 0x62, 0x63];
    let set: Vec<String> = seeds
        .iter()
        .map(|s| {
            format!(
                "\"{}\"",
                hex::encode(SecretKey::from_bytes(&[*s; 32]).unwrap().public_key())
            )
        })
        .collect();
    let policy = format!(
        "[policy]\n[[policy.rules]]\nid = \"pools\"\nkind = \"nonce_pool\"\nkey_sets = [[{}]]\n",
        set.join(", ")
    );
    let mut ps = Vec::new();
    for s in seeds {
        ps.push(ProcParty::start_with_signer(dir.path(), s, "", &policy).await);
    }
    mesh(&ps).await;
    // Before anyone opted in: refused, never two rounds instead.
    let e = one_round(&ps, 1).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert_eq!(error_info(&e).0, "POOL_EXHAUSTED");
    for p in &ps {
        let st = p
            .client()
            .await
            .set_nonce_pool(pool_req(&ps, SIZE))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.size, SIZE);
    }
    let mut c0 = ps[0].client().await;
    ready(&mut c0, &ps, SIZE).await;
    // One round: the session starts in PARTIAL_SIG_EXCHANGE and verifies.
    let (s, sig) = one_round(&ps, 2).await.unwrap();
    assert_eq!(s.phase, pb::SessionPhase::PartialSigExchange as i32);
    check(&s, &sig, 2);
    // Concurrent one-round sessions (more than the pool holds: the pool refills meanwhile, or
    // the call says POOL_EXHAUSTED and is retried).
    let mut calls = Vec::new();
    let ps = std::sync::Arc::new(ps);
    for i in 0..8u8 {
        let ps = ps.clone();
        calls.push(tokio::spawn(async move {
            loop {
                match one_round(&ps, 10 + i).await {
                    Ok(r) => return r,
                    Err(e) if error_info(&e).0 == "POOL_EXHAUSTED" => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(e) => panic!("{e}"),
                }
            }
        }));
    }
    for (i, c) in calls.into_iter().enumerate() {
        let (s, sig) = c.await.unwrap();
        check(&s, &sig, 10 + i as u8);
    }
    for p in ps.iter() {
        assert!(reused_nonces(p).is_empty(), "a pooled nonce signed twice");
        assert!(pooled_signatures(p) >= 9, "{}", pooled_signatures(p));
    }
    let mut ps = std::sync::Arc::try_unwrap(ps).unwrap_or_else(|_| panic!("shared"));
    // Party 2's signer restarts: its pooled nonces are gone. The next one-round session aborts
    // with the signer's reason; the pool refills and signs again.
    ready(&mut c0, &ps, SIZE).await;
    ps[2].signer = None;
    ps[2].start_signer();
    let e = one_round(&ps, 30).await.unwrap_err();
    assert!(
        e.message().contains("no nonce") || e.message().contains("no longer holds"),
        "{e}"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (s, sig) = loop {
        match one_round(&ps, 31).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "never signed again: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    check(&s, &sig, 31);
    // Party 1's application disables its pool: party 1 cannot sign in one round any more.
    let mut c1 = ps[1].client().await;
    c1.set_nonce_pool(pool_req(&ps, 0)).await.unwrap();
    let e = c1
        .create_session(pb::CreateSessionRequest {
            signer_keys: keys(&ps),
            message: vec![40; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            one_round: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&e).0, "POOL_EXHAUSTED", "{e}");
}
