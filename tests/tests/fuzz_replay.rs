//! Every committed fuzz corpus and regression input (`fuzz/corpus/<target>/`,
//! `fuzz/regressions/<target>/`) replayed through its target: a target that stops building or a
//! fixed crash that returns fails `cargo test`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};

use e2e_tests::fuzzing::{TARGETS, seeds};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn committed_corpora_replay_without_a_crash() {
    let mut total = 0;
    let mut failures = Vec::new();
    for (name, target) in TARGETS {
        let corpus = files(&fuzz_dir().join("corpus").join(name));
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let regressions = files(&fuzz_dir().join("regressions").join(name));
        for f in corpus.iter().chain(&regressions) {
            let data = std::fs::read(f).unwrap();
            if std::panic::catch_unwind(|| target(&data)).is_err() {
                failures.push(f.display().to_string());
            }
            total += 1;
        }
        // Every target has a fuzz binary.
        assert!(
            fuzz_dir().join(format!("fuzz_targets/{name}.rs")).exists(),
            "fuzz/fuzz_targets/{name}.rs missing"
        );
    }
    assert!(failures.is_empty(), "crashing inputs: {failures:?}");
    eprintln!("replayed {total} inputs through {} targets", TARGETS.len());
}

#[test]
fn seeds_are_accepted_where_they_should_be() {
    // The seeds are valid inputs: decoding them must succeed, so the corpus starts deep.
    let now = e2e_tests::fuzzing::NOW;
    for (name, data) in seeds() {
        match name {
            "wire_message" => {
                shared::wire::Message::decode(&data, shared::wire::MAX_DIRECT_MESSAGE_BYTES, now)
                    .unwrap();
            }
            "envelope" => {
                let peer = libp2p::identity::Keypair::ed25519_from_bytes([7u8; 32])
                    .unwrap()
                    .public()
                    .to_peer_id();
                coordinator_svc::envelope::open(&data, Some(peer), now).unwrap();
            }
            "key_file" => {
                signer_svc::keystore::KeyStore::open_bytes(&data, b"fuzz passphrase", "seed")
                    .unwrap();
            }
            "journal" => {
                signer_svc::journal::verify_bytes("seed", &data).unwrap();
            }
            _ => {}
        }
    }
}

/// Write the seed inputs into `fuzz/corpus/<target>/seed-<n>` (run by hand after adding to
/// `seeds()`; the files are committed). Existing files are kept: seeds holding fresh nonces
/// differ at every run, and the committed ones stay as they are.
#[test]
#[ignore = "writes files into fuzz/corpus; run by hand"]
fn write_seed_corpus() {
    let mut n = std::collections::HashMap::new();
    for (name, data) in seeds() {
        let i = n.entry(name).or_insert(0);
        let dir = fuzz_dir().join("corpus").join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("seed-{i}"));
        if !path.exists() {
            std::fs::write(path, data).unwrap();
        }
        *i += 1;
    }
}
