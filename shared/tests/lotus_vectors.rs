//! The Lotus vectors (`../shared/vectors/lotus/lotus_musig2_vectors.json`): lotusd's own
//! single-signer Schnorr signatures and reference MuSig2 sessions (2, 3, 5 signers), plain and as
//! Taproot key-path spends, every intermediate value checked.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use serde::Deserialize;
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, SecretKey, Signature,
    SignatureFormat::{Bip340, Lotus},
    SigningSession, Tweak, lotus_nonce_gen, lotus_schnorr_verify, verify,
};

#[derive(Deserialize)]
struct File {
    lotusd_single_signer_schnorr: Vec<Single>,
    musig2: Vec<Case>,
}
#[derive(Deserialize)]
struct Single {
    seckey: String,
    pubkey: String,
    message: String,
    signature: String,
}
#[derive(Deserialize)]
struct Signer {
    seckey: String,
    pubkey: String,
    extra_input: String,
    k1: String,
    k2: String,
    pubnonce_r1: String,
    pubnonce_r2: String,
}
#[derive(Deserialize)]
struct Round {
    nonce_coefficient: String,
    final_nonce: String,
    final_nonce_y_is_square: bool,
    challenge: String,
    partial_sigs_sorted_order: Vec<String>,
    signature: String,
    tweak: Option<String>,
    commitment: Option<String>,
    script_pubkey: Option<String>,
    tx_signature_sighash_all_lotus: Option<String>,
}
#[derive(Deserialize)]
struct Case {
    name: String,
    signers: Vec<Signer>,
    message: String,
    sorted_pubkeys: Vec<String>,
    keyagg_coefficients: Vec<String>,
    aggregate_key: String,
    aggnonce_r1: String,
    aggnonce_r2: String,
    plain: Round,
    taproot_key_path: Round,
}

fn load() -> File {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/lotus/lotus_musig2_vectors.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
fn h<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

#[test]
fn lotusd_single_signer_signatures_verify() {
    let file = load();
    assert!(!file.lotusd_single_signer_schnorr.is_empty());
    for (i, c) in file.lotusd_single_signer_schnorr.iter().enumerate() {
        let sk = SecretKey::from_bytes(&h(&c.seckey)).unwrap();
        assert_eq!(hex::encode(sk.public_key()), c.pubkey, "case {i} pubkey");
        let key: [u8; 33] = h(&c.pubkey);
        let msg: [u8; 32] = h(&c.message);
        let sig = Signature(h(&c.signature));
        lotus_schnorr_verify(&key, &msg, &sig).unwrap();
        // Not a BIP340 signature.
        assert!(
            verify(Bip340, &key, &msg, &sig).is_err(),
            "case {i} passes BIP340"
        );
        // Any flipped bit breaks it.
        for bit in [0usize, 100, 255, 256, 300, 511] {
            let mut bad = sig;
            bad.0[bit / 8] ^= 1 << (bit % 8);
            assert!(
                lotus_schnorr_verify(&key, &msg, &bad).is_err(),
                "case {i} bit {bit}"
            );
        }
        let mut other = msg;
        other[0] ^= 1;
        assert!(
            lotus_schnorr_verify(&key, &other, &sig).is_err(),
            "case {i} other message"
        );
    }
}

fn run_round(c: &Case, round: &Round, taproot: bool) {
    let ctx_name = format!("{} ({})", c.name, if taproot { "taproot" } else { "plain" });
    let keys: Vec<[u8; 33]> = c.signers.iter().map(|s| h(&s.pubkey)).collect();
    let tweaks: Vec<Tweak> = if taproot {
        vec![Tweak::Taproot { merkle_root: None }]
    } else {
        vec![]
    };
    let ctx = KeyAggContext::with_tweaks(Lotus, &keys, &tweaks).unwrap();
    let sorted: Vec<String> = ctx.keys().iter().map(hex::encode).collect();
    assert_eq!(sorted, c.sorted_pubkeys, "{ctx_name}: sorted keys");
    for (i, a) in c.keyagg_coefficients.iter().enumerate() {
        assert_eq!(
            hex::encode(ctx.coefficient(i).unwrap()),
            *a,
            "{ctx_name}: coefficient {i}"
        );
    }
    assert_eq!(
        hex::encode(ctx.aggregate_key()),
        c.aggregate_key,
        "{ctx_name}: Q"
    );
    if taproot {
        assert_eq!(
            ctx.lotus_taproot_tweak().map(hex::encode),
            round.tweak,
            "{ctx_name}: t"
        );
        assert_eq!(
            Some(hex::encode(ctx.output_key())),
            round.commitment,
            "{ctx_name}: C"
        );
        assert_eq!(
            ctx.lotus_taproot_script().map(hex::encode),
            round.script_pubkey,
            "{ctx_name}: script"
        );
    } else {
        assert_eq!(ctx.output_key(), ctx.aggregate_key());
    }
    let msg: [u8; 32] = h(&c.message);

    // Nonces from the reference's NonceGen inputs; in sorted order for the session.
    let mut by_sorted: Vec<Option<(SecretKey, shared::musig::SecNonce, PubNonce)>> =
        (0..keys.len()).map(|_| None).collect();
    for (j, s) in c.signers.iter().enumerate() {
        let sk = SecretKey::from_bytes(&h(&s.seckey)).unwrap();
        let extra: [u8; 32] = h(&s.extra_input);
        let (sec, public) =
            lotus_nonce_gen(&sk, &ctx.aggregate_key(), Some(&msg), Some(&extra)).unwrap();
        let sec_bytes = sec.dangerous_to_bytes();
        assert_eq!(
            hex::encode(&sec_bytes[..32]),
            s.k1,
            "{ctx_name}: signer {j} k1"
        );
        assert_eq!(
            hex::encode(&sec_bytes[32..64]),
            s.k2,
            "{ctx_name}: signer {j} k2"
        );
        let pn = public.to_bytes();
        assert_eq!(
            hex::encode(&pn[..33]),
            s.pubnonce_r1,
            "{ctx_name}: signer {j} R1"
        );
        assert_eq!(
            hex::encode(&pn[33..]),
            s.pubnonce_r2,
            "{ctx_name}: signer {j} R2"
        );
        let at = ctx.signer_index(&sk.public_key()).unwrap();
        by_sorted[at] = Some((sk, sec, public));
    }
    let mut signers: Vec<_> = by_sorted.into_iter().map(Option::unwrap).collect();
    let nonces: Vec<PubNonce> = signers.iter().map(|s| s.2).collect();
    let agg = AggNonce::sum(Lotus, &nonces).unwrap();
    assert_eq!(
        hex::encode(&agg.to_bytes()[..33]),
        c.aggnonce_r1,
        "{ctx_name}: aggnonce R1"
    );
    assert_eq!(
        hex::encode(&agg.to_bytes()[33..]),
        c.aggnonce_r2,
        "{ctx_name}: aggnonce R2"
    );

    let session = SigningSession::new(&ctx, &agg, &msg).unwrap();
    assert_eq!(
        hex::encode(session.nonce_coefficient()),
        round.nonce_coefficient,
        "{ctx_name}: b"
    );
    assert_eq!(
        hex::encode(session.final_nonce()),
        round.final_nonce,
        "{ctx_name}: R"
    );
    assert_eq!(
        !session.nonce_negated(),
        round.final_nonce_y_is_square,
        "{ctx_name}: square(R.y)"
    );
    assert_eq!(
        hex::encode(session.challenge()),
        round.challenge,
        "{ctx_name}: e"
    );

    let mut psigs = Vec::new();
    for (i, (sk, sec, _)) in signers.drain(..).enumerate() {
        let psig = session.sign_at(sec, &sk, i).unwrap();
        assert_eq!(
            hex::encode(psig.to_bytes()),
            round.partial_sigs_sorted_order[i],
            "{ctx_name}: s_{i}"
        );
        session.verify_partial(&psig, &nonces[i], i).unwrap();
        // Blame: the partial signature does not verify for any other signer.
        let other = (i + 1) % nonces.len();
        let blamed = session
            .verify_partial(&psig, &nonces[other], other)
            .unwrap_err();
        assert_eq!(blamed.culprit(), Some(other));
        psigs.push(psig);
    }
    let sig = session.aggregate(&psigs).unwrap();
    assert_eq!(
        hex::encode(sig.to_bytes()),
        round.signature,
        "{ctx_name}: signature"
    );
    lotus_schnorr_verify(&ctx.output_key(), &msg, &sig).unwrap();
    assert!(
        verify(Bip340, &ctx.output_key(), &msg, &sig).is_err(),
        "{ctx_name}: passes BIP340"
    );
    if let Some(tx) = &round.tx_signature_sighash_all_lotus {
        assert_eq!(
            *tx,
            format!("{}61", round.signature),
            "{ctx_name}: sighash form"
        );
    }
    // A tampered partial signature is caught on arrival and blamed.
    let mut bad = psigs[0].to_bytes();
    bad[31] ^= 1;
    let bad = PartialSignature::from_bytes(&bad).unwrap();
    assert_eq!(
        session
            .verify_partial(&bad, &nonces[0], 0)
            .unwrap_err()
            .culprit(),
        Some(0)
    );
}

#[test]
fn lotus_musig2_sessions_match_reference() {
    let file = load();
    assert_eq!(file.musig2.len(), 3);
    let mut square_branches = std::collections::HashSet::new();
    for c in &file.musig2 {
        run_round(c, &c.plain, false);
        run_round(c, &c.taproot_key_path, true);
        square_branches.insert(c.plain.final_nonce_y_is_square);
        square_branches.insert(c.taproot_key_path.final_nonce_y_is_square);
    }
    assert_eq!(
        square_branches.len(),
        2,
        "both quadratic-residue branches exercised"
    );
}
