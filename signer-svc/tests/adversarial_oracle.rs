//! The own-key signing oracle, played as a compromised coordinator would: a key set holding an
//! attacker key and one of ours, plus tweaks that cancel the attacker's share, so that the
//! session's output key would be our own key and the MuSig2 signature a single-signer signature
//! by it. Each test first shows the construction is real (it reaches our key and would verify),
//! then that the signer refuses it; the property test covers random key sets and tweak lists.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{Harness, nonce_req, now_ms, sign_req};
use shared::musig::{
    AggNonce, KeyAggContext, SecretKey, SignatureFormat, SigningSession, Tweak, nonce_gen,
};
use shared::wire::{Attestation, SessionContext, attestation_digest};
use signer_svc::journal::{self, RecordKind};
use tonic::Code;

// ---- scalar arithmetic mod n, for the attacker (libsecp256k1's tweak API) ----

fn sk(b: [u8; 32]) -> secp256k1::SecretKey {
    secp256k1::SecretKey::from_secret_bytes(b).unwrap()
}
fn scalar(b: [u8; 32]) -> secp256k1::Scalar {
    secp256k1::Scalar::from_be_bytes(b).unwrap()
}
fn mul(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    sk(a).mul_tweak(&scalar(b)).unwrap().to_secret_bytes()
}
fn neg(a: [u8; 32]) -> [u8; 32] {
    sk(a).negate().to_secret_bytes()
}

/// sorted pair and gets coefficient 1 in BIP340 KeyAgg).
fn attacker_key_below(target: &[u8; 33], seed: u8) -> ([u8; 32], SecretKey) {
    for i in 0u32.. {
        let mut b = [seed; 32];
        b[..4].copy_from_slice(&i.to_be_bytes());
        let k = SecretKey::from_bytes(&b).unwrap();
        if k.public_key() < *target {
            return (b, k);
        }
    }
    unreachable!()
}

/// The attack on `ours`: key set {attacker, ours} with a tweak cancelling the attacker's share.
/// Returns the context and the attacker's secret.
fn oracle_context(ours: &[u8; 33], xonly: bool, msg: &[u8]) -> (SessionContext, SecretKey) {
    let (a_bytes, attacker) = attacker_key_below(ours, 0x42);
    let keys = vec![attacker.public_key(), *ours];
    let plain = KeyAggContext::new(SignatureFormat::Bip340, &keys).unwrap();
    assert_eq!(
        plain.coefficient(1).unwrap(),
        {
            let mut one = [0u8; 32];
            one[31] = 1;
            one
        },
        "BIP327 gives the second distinct key coefficient 1"
    );
    // Q = a·A + S, so Q - S = (a·x_A)·G, which the attacker knows.
    let d = mul(plain.coefficient(0).unwrap(), a_bytes);
    let tweak = if xonly {
        // ApplyTweak negates Q first when its y is odd: -Q + d·G = -S (same x as S).
        let odd = plain.aggregate_key()[0] == 0x03;
        Tweak::XOnly(if odd { d } else { neg(d) })
    } else {
        Tweak::Plain(neg(d))
    };
    let ctx = SessionContext {
        signer_keys: keys,
        message: msg.to_vec(),
        format: SignatureFormat::Bip340,
        tweaks: vec![tweak],
        batch: Vec::new(),
    };
    (ctx, attacker)
}

/// Without the signer's check, the attack yields a BIP340 signature by our key alone on a
/// message the attacker chose. Reproduced here with the victim's secret in-process, to show the
/// construction is real (the signer's refusal below is what stops it).
fn forge_with_victim_secret(
    ctx: &SessionContext,
    attacker: &SecretKey,
    victim: &SecretKey,
) -> [u8; 64] {
    let key_agg = ctx.key_agg().unwrap();
    let mut rng = rand::rng();
    let (sn_a, pn_a) = nonce_gen(&mut rng, attacker, &key_agg, &ctx.message).unwrap();
    let (sn_v, pn_v) = nonce_gen(&mut rng, victim, &key_agg, &ctx.message).unwrap();
    let agg = AggNonce::sum(SignatureFormat::Bip340, &[pn_a, pn_v]).unwrap();
    let s = SigningSession::new(&key_agg, &agg, &ctx.message).unwrap();
    let pa = s.sign_at(sn_a, attacker, 0).unwrap();
    let pv = s.sign_at(sn_v, victim, 1).unwrap();
    s.aggregate(&[pa, pv]).unwrap().to_bytes()
}

#[tokio::test]
async fn key_set_plus_tweak_cannot_turn_a_session_into_our_own_signature() {
    let h = Harness::start(1, "").await;
    let victim = &h.keys[0];
    let ours = victim.public_key();
    let mut client = h.client().await;
    let peer_id = b"\x00\x24attacker-peer".to_vec();
    let forever = now_ms() + 10 * 365 * 24 * 3600 * 1000;
    let digest = attestation_digest(&ours, &peer_id, forever);
    for (i, xonly) in [false, true].into_iter().enumerate() {
        let (ctx, attacker) = oracle_context(&ours, xonly, &digest);
        let key_agg = ctx.key_agg().unwrap();
        // The construction reaches our key (x coordinate) ...
        assert_eq!(key_agg.output_key()[1..], ours[1..], "xonly={xonly}");
        // ... and the resulting MuSig2 signature *is* an attestation by our key alone, living
        // ten years (the signer's own AttestPeer caps lifetimes at 30 days).
        let sig = forge_with_victim_secret(&ctx, &attacker, victim);
        let forged = Attestation {
            signer_key: ours,
            peer_id: peer_id.clone(),
            expires_at_ms: forever,
            signature: sig,
        };
        forged.verify_signature().unwrap();
        // Verifiers refuse it anyway: its expiry lies beyond the protocol's maximum lifetime.
        let err = Attestation::verify_pb(&forged.to_pb(), &peer_id, now_ms()).unwrap_err();
        assert!(
            err.to_string().contains("maximum attestation lifetime"),
            "{err}"
        );

        // The signer refuses the context outright: no nonce, no partial signature.
        let session = [0x60 + i as u8; 16];
        let err = client
            .generate_nonce(nonce_req(victim, session, &ctx))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("own key"), "{}", err.message());
        assert!(err.message().contains("output key"), "{}", err.message());
        let fake_nonces = vec![vec![2u8; 66], vec![2u8; 66]];
        let err = client
            .partial_sign(sign_req(victim, session, &ctx, &fake_nonces))
            .await
            .unwrap_err();
        assert_ne!(err.code(), Code::Ok);
    }
    // Nothing about these sessions reached the journal.
    let (_, records) = journal::records("j", &std::fs::read(h.journal()).unwrap()).unwrap();
    assert!(
        records
            .iter()
            .all(|r| !matches!(r.kind, RecordKind::Nonce | RecordKind::PartialSignature)),
        "{records:?}"
    );
}

#[tokio::test]
async fn lotus_construction_does_not_reach_our_key_and_is_refused_anyway() {
    let h = Harness::start(1, "").await;
    let victim = &h.keys[0];
    let ours = victim.public_key();
    let (a_bytes, attacker) = attacker_key_below(&ours, 0x43);
    let keys = vec![attacker.public_key(), ours];
    // Lotus gives every distinct key a hashed coefficient: ours is not 1, so no known tweak
    // can cancel the attacker's share ...
    let lotus = KeyAggContext::new(SignatureFormat::Lotus, &keys).unwrap();
    let mut one = [0u8; 32];
    one[31] = 1;
    assert_ne!(lotus.coefficient(1).unwrap(), one);
    // ... and Lotus allows no plain or x-only tweak at all: the same construction is refused
    // as malformed before any key work.
    let d = mul(lotus.coefficient(0).unwrap(), a_bytes);
    let mut client = h.client().await;
    for tweak in [Tweak::Plain(neg(d)), Tweak::XOnly(d)] {
        let ctx = SessionContext {
            signer_keys: keys.clone(),
            message: vec![7; 32],
            format: SignatureFormat::Lotus,
            tweaks: vec![tweak],
            batch: Vec::new(),
        };
        let err = client
            .generate_nonce(nonce_req(victim, [0x70; 16], &ctx))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains("Taproot"), "{}", err.message());
    }
    // The Taproot commitment is hash-derived: the output key is not ours either.
    let ctx = SessionContext {
        signer_keys: keys.clone(),
        message: vec![7; 32],
        format: SignatureFormat::Lotus,
        tweaks: vec![Tweak::Taproot { merkle_root: None }],
        batch: Vec::new(),
    };
    assert_ne!(ctx.key_agg().unwrap().output_key()[1..], ours[1..]);
    client
        .generate_nonce(nonce_req(victim, [0x71; 16], &ctx))
        .await
        .unwrap();
    // The check itself is format-blind: see `guard::tests` for a Lotus context whose output
    // key equals ours being refused.
    let _ = attacker;
}

/// real service code in-process (the gRPC trait, without the TLS transport) for speed.
#[test]
fn property_no_partial_signature_for_a_session_ending_in_our_key() {
    use musig2_proto::v1::signer_service_server::SignerService;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    use sha2::{Digest, Sha256};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let dir = tempfile::tempdir().unwrap();
    let ours = common::secret_keys(3);
    let mut store = signer_svc::keystore::KeyStore::empty();
    for (i, k) in ours.iter().enumerate() {
        store
            .add(
                format!("k{i}"),
                SecretKey::from_bytes(&k.dangerous_to_bytes()).unwrap(),
            )
            .unwrap();
    }
    let journal = Arc::new(signer_svc::journal::Journal::open(&dir.path().join("j.log")).unwrap());
    let signer = signer_svc::service::Signer::new(
        Arc::new(store),
        signer_svc::nonces::NonceStore::new(std::time::Duration::from_secs(600), 1_000_000),
        Arc::new(signer_svc::policy::Policy::allow_all()),
        journal,
        Arc::new(signer_svc::metrics::Metrics::new()),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let own_x: Vec<[u8; 32]> = ours
        .iter()
        .map(|k| k.public_key()[1..].try_into().unwrap())
        .collect();
    let attacker_secret = |seed: u64, salt: u32| -> [u8; 32] {
        Sha256::digest([seed.to_be_bytes().as_slice(), &salt.to_be_bytes()].concat()).into()
    };
    let constructed = AtomicUsize::new(0);
    let released = AtomicUsize::new(0);
    let session_no = AtomicUsize::new(0);

    // (constructive?, which of ours is the target, attacker key count, seed, x-only cancel?,
    //  random tweak kinds, extra own keys in random mode)
    let strategy = (
        any::<bool>(),
        0usize..3,
        1usize..=8,
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(0u8..4, 0..3),
        0usize..3,
    );
    let mut runner = TestRunner::new(Config {
        cases: 192,
        ..Config::default()
    });
    runner
        .run(
            &strategy,
            |(constructive, target, n_att, seed, xonly, kinds, extra_own)| {
                let target_sk = &ours[target];
                let s_pub = target_sk.public_key();
                // Attacker keys with known secrets.
                let mut att: Vec<([u8; 32], [u8; 33])> = Vec::new();
                let mut salt = 0u32;
                while att.len() < n_att {
                    salt += 1;
                    let b = attacker_secret(seed, salt);
                    let Ok(k) = SecretKey::from_bytes(&b) else {
                        continue;
                    };
                    let p = k.public_key();
                    if constructive {
                        // Exactly one attacker key below our target, the rest above: the target
                        // is then the second key and gets coefficient 1.
                        let below = att.iter().filter(|(_, q)| *q < s_pub).count();
                        if (p < s_pub && below == 1)
                            || (p > s_pub && below == 0 && att.len() + 1 == n_att)
                        {
                            continue;
                        }
                        if p < s_pub && below == 0 || p > s_pub {
                            att.push((b, p));
                        }
                    } else {
                        att.push((b, p));
                    }
                }
                let mut keys: Vec<[u8; 33]> = att.iter().map(|(_, p)| *p).collect();
                keys.push(s_pub);
                if !constructive {
                    for o in ours.iter().take(extra_own) {
                        if !keys.contains(&o.public_key()) {
                            keys.push(o.public_key());
                        }
                    }
                }
                keys.sort_unstable();
                keys.dedup();
                // Random tweaks first (plain/x-only/Taproot, or none).
                let mut tweaks: Vec<Tweak> = kinds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, k)| {
                        let t = attacker_secret(seed ^ 0xdead, 1000 + i as u32);
                        match k {
                            0 => Some(Tweak::Plain(t)),
                            1 => Some(Tweak::XOnly(t)),
                            2 => Some(Tweak::Taproot { merkle_root: None }),
                            _ => None,
                        }
                    })
                    .collect();
                if constructive {
                    tweaks.retain(|t| !matches!(t, Tweak::Taproot { .. }));
                    // Q_cur = S + D·G with D known: D = a_A·x_A (+ the tweak sum so far, signed).
                    let base = KeyAggContext::new(SignatureFormat::Bip340, &keys).unwrap();
                    assert_eq!(keys[1], s_pub);
                    let mut d = [0u8; 32];
                    let mut have_d = false;
                    for (i, k) in keys.iter().enumerate() {
                        if *k == s_pub {
                            continue;
                        }
                        let x = att.iter().find(|(_, p)| p == k).unwrap().0;
                        let term = mul(base.coefficient(i).unwrap(), x);
                        d = if have_d { add_s(d, term) } else { term };
                        have_d = true;
                    }
                    // Follow the prefix tweaks: each may negate the running key first.
                    // Q_cur = ±S + D·G throughout.
                    let mut cur = KeyAggContext::new(SignatureFormat::Bip340, &keys).unwrap();
                    for t in &tweaks {
                        let odd = cur.output_key()[0] == 0x03;
                        let (tb, negate) = match t {
                            Tweak::Plain(b) => (*b, false),
                            Tweak::XOnly(b) => (*b, odd),
                            Tweak::Taproot { .. } => unreachable!(),
                        };
                        if negate {
                            d = neg(d);
                        }
                        d = add_s(d, tb);
                        cur.apply_tweak(t).unwrap();
                    }
                    let odd = cur.output_key()[0] == 0x03;
                    let cancel = if xonly {
                        // x-only: negated first when odd, then + t; either sign of S has our x.
                        Tweak::XOnly(if odd { d } else { neg(d) })
                    } else {
                        Tweak::Plain(neg(d))
                    };
                    tweaks.push(cancel);
                }
                tweaks.truncate(shared::wire::MAX_TWEAKS);
                let ctx = SessionContext {
                    signer_keys: keys.clone(),
                    message: vec![0x5c; 32],
                    format: SignatureFormat::Bip340,
                    tweaks,
                    batch: Vec::new(),
                };
                let Ok(key_agg) = ctx.key_agg() else {
                    return Ok(()); // a tweak out of range or to infinity: refused as malformed
                };
                let output_x: [u8; 32] = key_agg.output_key()[1..].try_into().unwrap();
                let aggregate_x: [u8; 32] = key_agg.aggregate_key()[1..].try_into().unwrap();
                let hits_ours = own_x.contains(&output_x) || own_x.contains(&aggregate_x);
                if constructive {
                    prop_assert!(hits_ours, "the construction must reach our key");
                    constructed.fetch_add(1, Ordering::Relaxed);
                }
                // Play the protocol: nonces from the signer for each of our keys in the set, the
                // attacker's own nonces for the others, then ask for partial signatures.
                let n = session_no.fetch_add(1, Ordering::Relaxed) as u64;
                let mut session = [0u8; 16];
                session[..8].copy_from_slice(&n.to_be_bytes());
                let mut nonces = Vec::new();
                let mut mine = Vec::new();
                for k in &keys {
                    if let Some(o) = ours.iter().find(|o| o.public_key() == *k) {
                        let r = rt.block_on(
                            signer.generate_nonce(tonic::Request::new(nonce_req(o, session, &ctx))),
                        );
                        match r {
                            Ok(r) => {
                                nonces.push(r.into_inner().public_nonce);
                                mine.push(o);
                            }
                            Err(e) => {
                                prop_assert!(hits_ours, "an honest context was refused: {e:?}");
                                prop_assert_eq!(e.code(), Code::FailedPrecondition);
                                return Ok(());
                            }
                        }
                    } else {
                        let x = att.iter().find(|(_, p)| p == k).unwrap().0;
                        let ask = SecretKey::from_bytes(&x).unwrap();
                        let (_s, p) =
                            nonce_gen(&mut rand::rng(), &ask, &key_agg, &ctx.message).unwrap();
                        nonces.push(p.to_bytes().to_vec());
                    }
                }
                for o in mine {
                    let r = rt
                        .block_on(signer.partial_sign(tonic::Request::new(sign_req(
                            o, session, &ctx, &nonces,
                        ))));
                    if r.is_ok() {
                        released.fetch_add(1, Ordering::Relaxed);
                        prop_assert!(
                            !hits_ours,
                            "a partial signature was released for a session ending in our key"
                        );
                    }
                }
                prop_assert!(
                    !hits_ours,
                    "nonces were issued for a session ending in our key"
                );
                Ok(())
            },
        )
        .unwrap();
    let (c, r) = (
        constructed.load(Ordering::Relaxed),
        released.load(Ordering::Relaxed),
    );
    eprintln!("constructed attacks: {c}, partial signatures released for honest contexts: {r}");
    assert!(c >= 40, "the generator must construct attacks often ({c})");
    assert!(
        r >= 40,
        "the generator must produce honest sessions too ({r})"
    );
}

fn add_s(a: [u8; 32], b: [u8; 32]) -> [u8; 32] {
    sk(a).add_tweak(&scalar(b)).unwrap().to_secret_bytes()
}
