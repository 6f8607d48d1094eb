//! The reference's election vectors (2 to 10 signers, all four methods) and the session id
//! example of LOTUS.md §4.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, missing_docs)]

use serde::Deserialize;
use shared::election::{ElectionMethod, SessionId, elect};
use std::collections::BTreeMap;

#[derive(Deserialize)]
struct File {
    cases: Vec<Case>,
}
#[derive(Deserialize)]
struct Case {
    sorted_pubkeys: Vec<String>,
    methods: BTreeMap<String, Method>,
    election_proof: String,
}
#[derive(Deserialize)]
struct Method {
    coordinator_index: usize,
    priority_list: Vec<usize>,
    backup_of_coordinator: Option<usize>,
}

#[test]
fn election_vectors() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/lotus/election_vectors.json"
    );
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut hash_indices = std::collections::BTreeSet::new();
    for (i, c) in file.cases.iter().enumerate() {
        let mut keys: Vec<[u8; 33]> = c
            .sorted_pubkeys
            .iter()
            .map(|k| hex::decode(k).unwrap().try_into().unwrap())
            .collect();
        // Order of input must not matter.
        keys.reverse();
        assert_eq!(c.methods.len(), 4, "case {i}: four methods");
        for (name, want) in &c.methods {
            let method: ElectionMethod = name.parse().unwrap();
            assert_eq!(method.as_str(), name);
            let e = elect(method, &keys).unwrap();
            assert_eq!(e.proof_hex(), c.election_proof, "case {i} {name}: proof");
            assert_eq!(
                e.coordinator_index, want.coordinator_index,
                "case {i} {name}: index"
            );
            assert_eq!(
                e.priority_list, want.priority_list,
                "case {i} {name}: priority"
            );
            assert_eq!(
                e.backup(),
                want.backup_of_coordinator,
                "case {i} {name}: backup"
            );
            if method == ElectionMethod::HashBased {
                hash_indices.insert(e.coordinator_index);
            }
            // Failover walks the priority list and then stops.
            let n = keys.len();
            assert_eq!(
                e.responsible_after(n - 1),
                want.priority_list.last().copied()
            );
            assert_eq!(e.responsible_after(n), None);
        }
    }
    assert_eq!(
        hash_indices.into_iter().collect::<Vec<_>>(),
        vec![0, 2, 3, 4]
    );
}

#[test]
fn session_id_example_of_lotus_md() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/testdata/lotus/lotus_musig2_vectors.json"
    );
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let three = v["musig2"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "3 signers")
        .unwrap();
    let keys: Vec<[u8; 33]> = three["signers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            hex::decode(s["pubkey"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let msg = hex::decode(three["message"].as_str().unwrap()).unwrap();
    let id = SessionId::derive(&keys, &msg, 1_766_329_380_000, &[0xab; 16]);
    assert_eq!(id.to_string(), "660695437c11451bc7bf9e147379c3e9");
    assert_eq!(SessionId::from_hex(&id.to_string()).unwrap(), id);
    // Any input change changes the id.
    assert_ne!(
        SessionId::derive(&keys, &msg, 1_766_329_380_001, &[0xab; 16]),
        id
    );
    assert_ne!(
        SessionId::derive(&keys, &msg, 1_766_329_380_000, &[0xac; 16]),
        id
    );
}
