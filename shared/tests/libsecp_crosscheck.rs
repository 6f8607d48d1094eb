//! Our BIP327 engine against libsecp256k1's own `musig` module: same aggregate keys (plain and
//! Taproot-tweaked), and partial signatures made by libsecp256k1 verify and aggregate under our
//! code into the signature libsecp256k1 produces.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use secp256k1::musig as lib;
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, SecretKey, SignatureFormat::Bip340,
    SigningSession, Tweak, key_sort, verify,
};

fn run(n: usize, taproot: bool, seed: u8) {
    let sks: Vec<SecretKey> = (0..n)
        .map(|i| SecretKey::from_bytes(&[seed.wrapping_add(i as u8 + 1); 32]).unwrap())
        .collect();
    let keys = key_sort(&sks.iter().map(SecretKey::public_key).collect::<Vec<_>>());
    let pks: Vec<secp256k1::PublicKey> = keys
        .iter()
        .map(|k| secp256k1::PublicKey::from_byte_array_compressed(*k).unwrap())
        .collect();
    let mut cache = lib::KeyAggCache::new(&pks.iter().collect::<Vec<_>>());
    let tweaks = if taproot {
        vec![Tweak::Taproot { merkle_root: None }]
    } else {
        vec![]
    };
    let ctx = KeyAggContext::with_tweaks(Bip340, &keys, &tweaks).unwrap();
    if taproot {
        let untweaked = KeyAggContext::new(Bip340, &keys).unwrap();
        let tag = shared_taptweak(&untweaked.xonly_output_key());
        cache
            .pubkey_xonly_tweak_add(&secp256k1::Scalar::from_be_bytes(tag).unwrap())
            .unwrap();
    }
    assert_eq!(
        cache.agg_pk().to_byte_array(),
        ctx.xonly_output_key(),
        "aggregate key n={n} taproot={taproot}"
    );

    let msg = [seed; 32];
    let mut rng = rand::rng();
    let mut secs = Vec::new();
    let mut pubs = Vec::new();
    for k in &keys {
        let sk = sks.iter().find(|s| s.public_key() == *k).unwrap();
        let kp = secp256k1::Keypair::from_secret_bytes(*sk.dangerous_to_bytes()).unwrap();
        let (s, p) = lib::new_nonce_pair(
            lib::SessionSecretRand::from_rng(&mut rng),
            Some(&cache),
            Some(kp.secret_key()),
            kp.public_key(),
            Some(&msg),
            None,
        );
        secs.push((s, kp));
        pubs.push(p);
    }
    let agg_lib = lib::AggregatedNonce::new(&pubs.iter().collect::<Vec<_>>());
    let session_lib = lib::Session::new(&cache, agg_lib, &msg);
    let psigs_lib: Vec<lib::PartialSignature> = secs
        .into_iter()
        .map(|(s, kp)| session_lib.partial_sign(s, &kp, &cache))
        .collect();
    let sig_lib = session_lib.partial_sig_agg(&psigs_lib.iter().collect::<Vec<_>>());

    let ours: Vec<PubNonce> = pubs
        .iter()
        .map(|p| PubNonce::from_bytes(&p.serialize()).unwrap())
        .collect();
    let agg = AggNonce::sum(Bip340, &ours).unwrap();
    assert_eq!(agg.to_bytes(), agg_lib.serialize(), "aggregate nonce");
    let session = SigningSession::new(&ctx, &agg, &msg).unwrap();
    let psigs: Vec<PartialSignature> = psigs_lib
        .iter()
        .map(|p| PartialSignature::from_bytes(&p.serialize()).unwrap())
        .collect();
    for (i, p) in psigs.iter().enumerate() {
        session.verify_partial(p, &ours[i], i).unwrap();
    }
    let sig = session.aggregate(&psigs).unwrap();
    assert_eq!(
        sig.to_bytes(),
        *sig_lib.assume_valid().as_byte_array(),
        "final signature"
    );
    verify(Bip340, &ctx.output_key(), &msg, &sig).unwrap();
}

fn shared_taptweak(x: &[u8; 32]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let tag = Sha256::digest(b"TapTweak");
    Sha256::new()
        .chain_update(tag)
        .chain_update(tag)
        .chain_update(x)
        .finalize()
        .into()
}

#[test]
fn matches_libsecp256k1_musig() {
    for (n, seed) in [(2, 10u8), (3, 40), (5, 90)] {
        run(n, false, seed);
        run(n, true, seed);
    }
}
