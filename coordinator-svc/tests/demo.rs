//! README's demo command works: real signer and coordinator processes, both formats, and the
//! `--json` object has the documented fields and a verifying signature.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::process::Command;

use shared::musig::{Signature, SignatureFormat, verify};

fn demo(args: &[&str]) -> serde_json::Value {
    procs::signer_bin();
    let out = Command::new(env!("CARGO_BIN_EXE_musig2-demo"))
        .args(args)
        .arg("--json")
        .env("MUSIG2_DEMO_NO_BUILD", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn check(v: &serde_json::Value, parties: usize, format: SignatureFormat, taproot: bool) {
    assert_eq!(v["format"], format.as_str());
    let signers = v["signers"].as_array().unwrap();
    assert_eq!(signers.len(), parties);
    let keys: Vec<[u8; 33]> = signers
        .iter()
        .map(|s| {
            hex::decode(s.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    assert!(
        keys.windows(2).all(|w| w[0] < w[1]),
        "sorted for key aggregation"
    );
    let agg = shared::musig::KeyAggContext::new(format, &keys).unwrap();
    assert_eq!(
        v["aggregate_key"].as_str().unwrap(),
        hex::encode(agg.aggregate_key())
    );
    let msg = hex::decode(v["message"].as_str().unwrap()).unwrap();
    let sig = Signature(
        hex::decode(v["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap(),
    );
    let key: [u8; 33] = if taproot {
        let t: [u8; 33] = hex::decode(v["tweaked_key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let mut tweaked = shared::musig::KeyAggContext::new(format, &keys).unwrap();
        tweaked
            .apply_tweak(&shared::musig::Tweak::Taproot { merkle_root: None })
            .unwrap();
        assert_eq!(t, tweaked.output_key());
        t
    } else {
        assert!(v.get("tweaked_key").is_none());
        agg.aggregate_key()
    };
    verify(format, &key, &msg, &sig).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["session_id"].as_str().unwrap().len(), 32);
}

#[test]
fn demo_three_parties_bip340() {
    check(
        &demo(&["--parties", "3"]),
        3,
        SignatureFormat::Bip340,
        false,
    );
}

#[test]
fn demo_five_parties_lotus_taproot() {
    check(
        &demo(&["--parties", "5", "--format", "lotus", "--taproot"]),
        5,
        SignatureFormat::Lotus,
        true,
    );
}

#[test]
fn demo_refuses_bad_input() {
    let out = Command::new(env!("CARGO_BIN_EXE_musig2-demo"))
        .args(["--format", "lotus", "--message", "abcd"])
        .env("MUSIG2_DEMO_NO_BUILD", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("32 bytes"));
}

/// The party count is bounded by the wire protocol's 100 signers (`MAX_SIGNERS`); the demo was
/// run with 50 and 100 parties (see README "The two commands").
#[test]
fn demo_refuses_party_counts_outside_two_to_a_hundred() {
    for n in ["1", "101"] {
        let out = Command::new(env!("CARGO_BIN_EXE_musig2-demo"))
            .args(["--parties", n])
            .env("MUSIG2_DEMO_NO_BUILD", "1")
            .output()
            .unwrap();
        assert!(!out.status.success(), "--parties {n} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("2..=100") || err.contains("--parties"),
            "{err}"
        );
    }
}
