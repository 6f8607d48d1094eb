//! The eight official BIP327 vector files, case by case (copied from `../shared/vectors/bip327`,
//! checked against their SHA256SUMS). Each test fails on the first mismatch with the case index
//! and comment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use serde::Deserialize;
use serde_json::Value;
use shared::musig::{
    AggNonce, Contribution, Error, KeyAggContext, PartialSignature, PubNonce, SecNonce, SecretKey,
    SignatureFormat::Bip340, SigningSession, Tweak, bip327_nonce_gen, deterministic_sign, key_sort,
    verify,
};

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/bip327/");

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}{name}")).unwrap()).unwrap()
}

fn hx(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().unwrap()).unwrap()
}
fn a32(v: &Value) -> [u8; 32] {
    hx(v).try_into().unwrap()
}
fn a33(v: &Value) -> [u8; 33] {
    hx(v).try_into().unwrap()
}
fn a66(v: &Value) -> [u8; 66] {
    hx(v).try_into().unwrap()
}
fn idx(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as usize)
        .collect()
}
fn pick<T: Clone>(all: &[T], v: &Value) -> Vec<T> {
    idx(v).into_iter().map(|i| all[i].clone()).collect()
}
fn list33(v: &Value) -> Vec<[u8; 33]> {
    v.as_array().unwrap().iter().map(a33).collect()
}
fn comment(c: &Value) -> &str {
    c.get("comment").and_then(Value::as_str).unwrap_or("")
}

fn tweaks_of(all: &[[u8; 32]], c: &Value) -> Vec<Tweak> {
    let xonly: Vec<bool> = c["is_xonly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_bool().unwrap())
        .collect();
    let chosen: Vec<[u8; 32]> = match c.get("tweak_indices") {
        Some(ix) => pick(all, ix),
        None => c["tweaks"].as_array().unwrap().iter().map(a32).collect(),
    };
    chosen
        .into_iter()
        .zip(xonly)
        .map(|(t, x)| if x { Tweak::XOnly(t) } else { Tweak::Plain(t) })
        .collect()
}

/// Compare an error to the vector's expectation: `invalid_contribution` by signer and
/// contribution, `value` errors by the BIP's message mapped to our variants.
fn expect_error(got: Error, want: &Value, case: usize, comment: &str) {
    let ok = match want["type"].as_str().unwrap() {
        "invalid_contribution" => {
            let contrib = match want["contrib"].as_str().unwrap() {
                "pubkey" => Contribution::PubKey,
                "pubnonce" => Contribution::PubNonce,
                "aggnonce" => Contribution::AggNonce,
                "aggothernonce" => Contribution::AggOtherNonce,
                "psig" => Contribution::PartialSig,
                other => panic!("unknown contrib {other}"),
            };
            let signer = want["signer"].as_u64().map(|s| s as usize);
            got == Error::InvalidContribution { signer, contrib }
        }
        "value" => {
            let expected = match want["message"].as_str().unwrap() {
                "The tweak must be less than n." => Error::TweakOutOfRange,
                "The result of tweaking cannot be infinity." => Error::TweakInfinity,
                "The signer's pubkey must be included in the list of pubkeys." => {
                    Error::SignerNotInKeySet
                }
                "first secnonce value is out of range." => Error::SecNonceOutOfRange,
                other => panic!("unmapped message {other}"),
            };
            got == expected
        }
        other => panic!("unknown error type {other}"),
    };
    assert!(ok, "case {case} ({comment}): got {got:?}, want {want}");
}

#[test]
fn sha256sums_match() {
    use sha2::{Digest, Sha256};
    let sums = std::fs::read_to_string(format!("{DIR}SHA256SUMS")).unwrap();
    let mut n = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, name) = line.split_once(char::is_whitespace).unwrap();
        let name = name.trim().trim_start_matches('*');
        let data = std::fs::read(format!("{DIR}{name}")).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&data)),
            sum.to_lowercase(),
            "{name}"
        );
        n += 1;
    }
    assert_eq!(n, 8, "eight vector files");
}

#[test]
fn key_sort_vectors() {
    let v = load("key_sort_vectors.json");
    assert_eq!(
        key_sort(&list33(&v["pubkeys"])),
        list33(&v["sorted_pubkeys"])
    );
}

#[test]
fn key_agg_vectors() {
    let v = load("key_agg_vectors.json");
    let keys = list33(&v["pubkeys"]);
    let tweaks: Vec<[u8; 32]> = v["tweaks"].as_array().unwrap().iter().map(a32).collect();
    for (i, c) in v["valid_test_cases"].as_array().unwrap().iter().enumerate() {
        let ctx = KeyAggContext::new(Bip340, &pick(&keys, &c["key_indices"])).unwrap();
        assert_eq!(
            ctx.xonly_output_key(),
            a32(&c["expected"]),
            "valid case {i}"
        );
    }
    for (i, c) in v["error_test_cases"].as_array().unwrap().iter().enumerate() {
        let got = KeyAggContext::with_tweaks(
            Bip340,
            &pick(&keys, &c["key_indices"]),
            &tweaks_of(&tweaks, c),
        )
        .expect_err("must fail");
        expect_error(got, &c["error"], i, comment(c));
    }
}

#[test]
fn nonce_gen_vectors() {
    let v = load("nonce_gen_vectors.json");
    for (i, c) in v["test_cases"].as_array().unwrap().iter().enumerate() {
        let opt = |k: &str| c[k].as_str().map(|s| hex::decode(s).unwrap());
        let sk: Option<[u8; 32]> = opt("sk").map(|b| b.try_into().unwrap());
        let aggpk: Option<[u8; 32]> = opt("aggpk").map(|b| b.try_into().unwrap());
        let (sec, public) = bip327_nonce_gen(
            &a32(&c["rand_"]),
            sk.as_ref(),
            &a33(&c["pk"]),
            aggpk.as_ref(),
            opt("msg").as_deref(),
            opt("extra_in").as_deref(),
        )
        .unwrap();
        assert_eq!(
            sec.dangerous_to_bytes().to_vec(),
            hx(&c["expected_secnonce"]),
            "case {i}"
        );
        assert_eq!(
            public.to_bytes().to_vec(),
            hx(&c["expected_pubnonce"]),
            "case {i}"
        );
    }
}

#[test]
fn nonce_agg_vectors() {
    let v = load("nonce_agg_vectors.json");
    let nonces: Vec<[u8; 66]> = v["pnonces"].as_array().unwrap().iter().map(a66).collect();
    for (i, c) in v["valid_test_cases"].as_array().unwrap().iter().enumerate() {
        let parsed = PubNonce::parse_all(&pick(&nonces, &c["pnonce_indices"])).unwrap();
        let agg = AggNonce::sum(Bip340, &parsed).unwrap();
        assert_eq!(
            agg.to_bytes(),
            a66(&c["expected"]),
            "valid case {i} {}",
            comment(c)
        );
        assert_eq!(
            AggNonce::from_bytes(&agg.to_bytes()).unwrap(),
            agg,
            "round trip {i}"
        );
    }
    for (i, c) in v["error_test_cases"].as_array().unwrap().iter().enumerate() {
        let got = PubNonce::parse_all(&pick(&nonces, &c["pnonce_indices"])).expect_err("must fail");
        expect_error(got, &c["error"], i, comment(c));
    }
}

struct SignVerify {
    sk: [u8; 32],
    keys: Vec<[u8; 33]>,
    secnonces: Vec<[u8; 97]>,
    pnonces: Vec<[u8; 66]>,
    aggnonces: Vec<[u8; 66]>,
    msgs: Vec<Vec<u8>>,
}

#[test]
fn sign_verify_vectors() {
    let v = load("sign_verify_vectors.json");
    let d = SignVerify {
        sk: a32(&v["sk"]),
        keys: list33(&v["pubkeys"]),
        secnonces: v["secnonces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| hx(s).try_into().unwrap())
            .collect(),
        pnonces: v["pnonces"].as_array().unwrap().iter().map(a66).collect(),
        aggnonces: v["aggnonces"].as_array().unwrap().iter().map(a66).collect(),
        msgs: v["msgs"].as_array().unwrap().iter().map(hx).collect(),
    };
    let sk = SecretKey::from_bytes(&d.sk).unwrap();
    assert_eq!(sk.public_key(), d.keys[0]);

    for (i, c) in v["valid_test_cases"].as_array().unwrap().iter().enumerate() {
        let keys = pick(&d.keys, &c["key_indices"]);
        let nonces = PubNonce::parse_all(&pick(&d.pnonces, &c["nonce_indices"])).unwrap();
        let aggnonce =
            AggNonce::from_bytes(&d.aggnonces[c["aggnonce_index"].as_u64().unwrap() as usize])
                .unwrap();
        // The vector's aggregate nonce is NonceAgg of the listed nonces.
        assert_eq!(
            AggNonce::sum(Bip340, &nonces).unwrap(),
            aggnonce,
            "case {i} nonce agg"
        );
        let msg = &d.msgs[c["msg_index"].as_u64().unwrap() as usize];
        let signer = c["signer_index"].as_u64().unwrap() as usize;
        let ctx = KeyAggContext::new(Bip340, &keys).unwrap();
        let session = SigningSession::new(&ctx, &aggnonce, msg).unwrap();
        let secnonce = SecNonce::dangerous_from_bytes(&d.secnonces[0]).unwrap();
        let psig = session.sign(secnonce, &sk).unwrap();
        assert_eq!(
            psig.to_bytes(),
            a32(&c["expected"]),
            "case {i} {}",
            comment(c)
        );
        session
            .verify_partial(&psig, &nonces[signer], signer)
            .unwrap();
    }

    for (i, c) in v["sign_error_test_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let keys = pick(&d.keys, &c["key_indices"]);
        let msg = &d.msgs[c["msg_index"].as_u64().unwrap() as usize];
        let got = (|| {
            let ctx = KeyAggContext::new(Bip340, &keys)?;
            let aggnonce =
                AggNonce::from_bytes(&d.aggnonces[c["aggnonce_index"].as_u64().unwrap() as usize])?;
            let session = SigningSession::new(&ctx, &aggnonce, msg)?;
            let secnonce = SecNonce::dangerous_from_bytes(
                &d.secnonces[c["secnonce_index"].as_u64().unwrap() as usize],
            )?;
            session.sign(secnonce, &sk)
        })()
        .expect_err("must fail");
        expect_error(got, &c["error"], i, comment(c));
    }

    for (i, c) in v["verify_fail_test_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let keys = pick(&d.keys, &c["key_indices"]);
        let nonces = PubNonce::parse_all(&pick(&d.pnonces, &c["nonce_indices"])).unwrap();
        let msg = &d.msgs[c["msg_index"].as_u64().unwrap() as usize];
        let signer = c["signer_index"].as_u64().unwrap() as usize;
        let ctx = KeyAggContext::new(Bip340, &keys).unwrap();
        let session =
            SigningSession::new(&ctx, &AggNonce::sum(Bip340, &nonces).unwrap(), msg).unwrap();
        // A partial signature that is not below n cannot even be parsed: that is our
        // "verification fails" for the out-of-range case.
        let rejected = match PartialSignature::from_bytes(&a32(&c["sig"])) {
            Err(_) => true,
            Ok(psig) => session
                .verify_partial(&psig, &nonces[signer], signer)
                .is_err(),
        };
        assert!(
            rejected,
            "verify_fail case {i} ({}) was accepted",
            comment(c)
        );
    }

    for (i, c) in v["verify_error_test_cases"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        let keys = pick(&d.keys, &c["key_indices"]);
        let got = (|| {
            let nonces = PubNonce::parse_all(&pick(&d.pnonces, &c["nonce_indices"]))?;
            let ctx = KeyAggContext::new(Bip340, &keys)?;
            let msg = &d.msgs[c["msg_index"].as_u64().unwrap() as usize];
            let session = SigningSession::new(&ctx, &AggNonce::sum(Bip340, &nonces)?, msg)?;
            let signer = c["signer_index"].as_u64().unwrap() as usize;
            session.verify_partial(
                &PartialSignature::from_bytes(&a32(&c["sig"]))?,
                &nonces[signer],
                signer,
            )
        })()
        .expect_err("must fail");
        expect_error(got, &c["error"], i, comment(c));
    }
}

#[test]
fn tweak_vectors() {
    let v = load("tweak_vectors.json");
    let sk = SecretKey::from_bytes(&a32(&v["sk"])).unwrap();
    let keys = list33(&v["pubkeys"]);
    let tweaks: Vec<[u8; 32]> = v["tweaks"].as_array().unwrap().iter().map(a32).collect();
    let pnonces: Vec<[u8; 66]> = v["pnonces"].as_array().unwrap().iter().map(a66).collect();
    let aggnonce = AggNonce::from_bytes(&a66(&v["aggnonce"])).unwrap();
    let msg = hx(&v["msg"]);
    let secnonce_bytes: [u8; 97] = hx(&v["secnonce"]).try_into().unwrap();
    for (i, c) in v["valid_test_cases"].as_array().unwrap().iter().enumerate() {
        let nonces = PubNonce::parse_all(&pick(&pnonces, &c["nonce_indices"])).unwrap();
        assert_eq!(
            AggNonce::sum(Bip340, &nonces).unwrap(),
            aggnonce,
            "case {i} nonce agg"
        );
        let ctx = KeyAggContext::with_tweaks(
            Bip340,
            &pick(&keys, &c["key_indices"]),
            &tweaks_of(&tweaks, c),
        )
        .unwrap();
        let session = SigningSession::new(&ctx, &aggnonce, &msg).unwrap();
        let signer = c["signer_index"].as_u64().unwrap() as usize;
        let psig = session
            .sign(
                SecNonce::dangerous_from_bytes(&secnonce_bytes).unwrap(),
                &sk,
            )
            .unwrap();
        assert_eq!(
            psig.to_bytes(),
            a32(&c["expected"]),
            "case {i} {}",
            comment(c)
        );
        session
            .verify_partial(&psig, &nonces[signer], signer)
            .unwrap();
    }
    for (i, c) in v["error_test_cases"].as_array().unwrap().iter().enumerate() {
        let got = KeyAggContext::with_tweaks(
            Bip340,
            &pick(&keys, &c["key_indices"]),
            &tweaks_of(&tweaks, c),
        )
        .expect_err("must fail");
        expect_error(got, &c["error"], i, comment(c));
    }
}

#[test]
fn det_sign_vectors() {
    let v = load("det_sign_vectors.json");
    let sk = SecretKey::from_bytes(&a32(&v["sk"])).unwrap();
    let keys = list33(&v["pubkeys"]);
    let msgs: Vec<Vec<u8>> = v["msgs"].as_array().unwrap().iter().map(hx).collect();
    let run = |c: &Value| {
        let rand: Option<[u8; 32]> = c["rand"]
            .as_str()
            .map(|s| hex::decode(s).unwrap().try_into().unwrap());
        let tweaks = tweaks_of(&[], c);
        deterministic_sign(
            &sk,
            &a66(&c["aggothernonce"]),
            &pick(&keys, &c["key_indices"]),
            &tweaks,
            &msgs[c["msg_index"].as_u64().unwrap() as usize],
            rand.as_ref(),
        )
    };
    for (i, c) in v["valid_test_cases"].as_array().unwrap().iter().enumerate() {
        let (pubnonce, psig) = run(c).unwrap();
        let expected = c["expected"].as_array().unwrap();
        assert_eq!(
            pubnonce.to_bytes(),
            a66(&expected[0]),
            "case {i} pubnonce {}",
            comment(c)
        );
        assert_eq!(
            psig.to_bytes(),
            a32(&expected[1]),
            "case {i} psig {}",
            comment(c)
        );
        // The partial signature verifies against the session it belongs to.
        let ctx =
            KeyAggContext::with_tweaks(Bip340, &pick(&keys, &c["key_indices"]), &tweaks_of(&[], c))
                .unwrap();
        let other = PubNonce::from_bytes(&a66(&c["aggothernonce"])).unwrap();
        let aggnonce = AggNonce::sum(Bip340, &[pubnonce, other]).unwrap();
        let session = SigningSession::new(
            &ctx,
            &aggnonce,
            &msgs[c["msg_index"].as_u64().unwrap() as usize],
        )
        .unwrap();
        let signer = c["signer_index"].as_u64().unwrap() as usize;
        session.verify_partial(&psig, &pubnonce, signer).unwrap();
    }
    for (i, c) in v["error_test_cases"].as_array().unwrap().iter().enumerate() {
        expect_error(run(c).expect_err("must fail"), &c["error"], i, comment(c));
    }
}

#[derive(Deserialize)]
struct SigAggCase {
    aggnonce: String,
    nonce_indices: Vec<usize>,
    key_indices: Vec<usize>,
    tweak_indices: Vec<usize>,
    is_xonly: Vec<bool>,
    psig_indices: Vec<usize>,
    expected: Option<String>,
    error: Option<Value>,
    comment: Option<String>,
}

#[test]
fn sig_agg_vectors() {
    let v = load("sig_agg_vectors.json");
    let keys = list33(&v["pubkeys"]);
    let pnonces: Vec<[u8; 66]> = v["pnonces"].as_array().unwrap().iter().map(a66).collect();
    let tweaks: Vec<[u8; 32]> = v["tweaks"].as_array().unwrap().iter().map(a32).collect();
    let psigs: Vec<[u8; 32]> = v["psigs"].as_array().unwrap().iter().map(a32).collect();
    let msg = hx(&v["msg"]);
    let cases = |k: &str| -> Vec<SigAggCase> { serde_json::from_value(v[k].clone()).unwrap() };
    let setup = |c: &SigAggCase| {
        let ks: Vec<[u8; 33]> = c.key_indices.iter().map(|i| keys[*i]).collect();
        let tw: Vec<Tweak> = c
            .tweak_indices
            .iter()
            .zip(&c.is_xonly)
            .map(|(t, x)| {
                if *x {
                    Tweak::XOnly(tweaks[*t])
                } else {
                    Tweak::Plain(tweaks[*t])
                }
            })
            .collect();
        let ctx = KeyAggContext::with_tweaks(Bip340, &ks, &tw).unwrap();
        let nonces = PubNonce::parse_all(
            &c.nonce_indices
                .iter()
                .map(|i| pnonces[*i])
                .collect::<Vec<_>>(),
        )
        .unwrap();
        let aggnonce =
            AggNonce::from_bytes(&hex::decode(&c.aggnonce).unwrap().try_into().unwrap()).unwrap();
        assert_eq!(AggNonce::sum(Bip340, &nonces).unwrap(), aggnonce);
        (ctx, aggnonce)
    };
    for (i, c) in cases("valid_test_cases").iter().enumerate() {
        let (ctx, aggnonce) = setup(c);
        let session = SigningSession::new(&ctx, &aggnonce, &msg).unwrap();
        let list = PartialSignature::parse_all(
            &c.psig_indices.iter().map(|i| psigs[*i]).collect::<Vec<_>>(),
        )
        .unwrap();
        let sig = session.aggregate(&list).unwrap();
        assert_eq!(
            hex::encode_upper(sig.to_bytes()),
            *c.expected.as_ref().unwrap(),
            "case {i}"
        );
        verify(Bip340, &ctx.output_key(), &msg, &sig).unwrap();
    }
    for (i, c) in cases("error_test_cases").iter().enumerate() {
        let _ = setup(c);
        let got = PartialSignature::parse_all(
            &c.psig_indices.iter().map(|i| psigs[*i]).collect::<Vec<_>>(),
        )
        .expect_err("must fail");
        expect_error(
            got,
            c.error.as_ref().unwrap(),
            i,
            c.comment.as_deref().unwrap_or(""),
        );
    }
}
