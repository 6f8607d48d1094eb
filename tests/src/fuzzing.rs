//! Fuzz targets: one function per decoder or validator that takes bytes from outside, each
//! calling exactly the code the services run on those bytes. `fuzz/` wraps each in a libFuzzer
//! target (`cargo fuzz run --sanitizer none <name>`); `tests/fuzz_replay.rs` replays every
//! committed corpus and regression file through the same functions in `cargo test`, so a target
//! that stops building or a fixed crash that returns fails CI.
//!
//! A target panics only on a real defect: a crash of the code under test, or a broken round-trip
//! property it asserts. Every input is otherwise fine to refuse.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::Path;
use std::sync::OnceLock;

use libp2p::{PeerId, identity};
use prost::Message as _;
use shared::wire::{self, MAX_DIRECT_MESSAGE_BYTES, Message, pb};

/// The fixed clock of every target (fuzzing must be deterministic).
pub const NOW: i64 = 1_766_329_380_000;

/// A target: its name (the `fuzz/fuzz_targets/<name>.rs` binary and the corpus directory) and
/// its function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("wire_message", wire_message),
    ("envelope", envelope),
    ("dht_record", dht_record),
    ("attestation", attestation),
    ("session_context", session_context),
    ("direct_frame", direct_frame),
    ("signer_request", signer_request),
    ("journal", journal),
    ("key_file", key_file),
    ("signer_config", signer_config),
    ("coordinator_config", coordinator_config),
];

/// A wire message (direct or gossip): canonical decoding and stateless validation; a message
/// that validates re-encodes to one that validates and is equal.
pub fn wire_message(data: &[u8]) {
    if let Ok(m) = Message::decode(data, MAX_DIRECT_MESSAGE_BYTES, NOW) {
        let again = Message::decode(&m.encode(), MAX_DIRECT_MESSAGE_BYTES, NOW)
            .expect("a valid message re-encodes to a valid message");
        assert_eq!(again, m, "re-encoding changed the message");
    }
}

fn fuzz_peer() -> &'static (identity::Keypair, PeerId) {
    static P: OnceLock<(identity::Keypair, PeerId)> = OnceLock::new();
    P.get_or_init(|| {
        let k = identity::Keypair::ed25519_from_bytes([7u8; 32]).unwrap();
        let id = k.public().to_peer_id();
        (k, id)
    })
}

/// A signed envelope as a direct message from a known peer and as a DHT record (no sender).
pub fn envelope(data: &[u8]) {
    let (_, peer) = fuzz_peer();
    let _ = coordinator_svc::envelope::open(data, Some(*peer), NOW);
    let _ = coordinator_svc::envelope::open(data, None, NOW);
}

/// A DHT record: `key '\n' value`, through the record filter every inbound record passes.
pub fn dht_record(data: &[u8]) {
    let (key, value) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let _ = coordinator_svc::envelope::validate_record(key, value, NOW);
}

/// A peer attestation: canonical decoding, then verification for the peer id it names.
pub fn attestation(data: &[u8]) {
    if let Ok(a) = wire::decode_canonical::<pb::PeerAttestation>(data, 10_000) {
        let peer = a.peer_id.clone();
        let _ = wire::Attestation::verify_pb(&a, &peer, NOW);
    }
}

/// A session context (what the signer and the announcement carry): validation, KeyAgg with
/// tweaks, and the context hash.
pub fn session_context(data: &[u8]) {
    if let Ok(pbc) = wire::decode_canonical::<pb::SessionContext>(data, MAX_DIRECT_MESSAGE_BYTES)
        && let Ok(ctx) = wire::SessionContext::from_pb(&pbc)
    {
        ctx.key_agg().expect("from_pb checked KeyAgg");
        let _ = ctx.hash();
    }
}

/// The lanes' frame reader ([`coordinator_svc::p2p::lanes::read_frame`]) on a byte stream, with
/// the requests' limit and the answers' limit.
pub fn direct_frame(data: &[u8]) {
    use coordinator_svc::net::DirectRequest;
    use coordinator_svc::p2p::lanes::read_frame;
    for limit in [
        MAX_DIRECT_MESSAGE_BYTES,
        coordinator_svc::net::MAX_RESPONSE_BYTES,
    ] {
        let mut cursor = futures::io::Cursor::new(data);
        // Every frame in the input, as a lane reads them one after the other.
        while let Ok(Some((id, frame))) =
            futures::executor::block_on(read_frame(&mut cursor, limit))
        {
            let at = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
            match frame {
                DirectRequest::Frame(f) => {
                    assert!(f.len() <= limit);
                    assert_eq!(f.as_slice(), &data[at - f.len()..at]);
                    assert_eq!(id.to_be_bytes(), data[at - f.len() - 12..at - f.len() - 4]);
                }
                DirectRequest::TooLarge(n) => {
                    assert!(n > limit);
                    break;
                }
            }
        }
    }
}

struct FuzzSigner {
    rt: tokio::runtime::Runtime,
    signer: signer_svc::service::Signer,
    _dir: tempfile::TempDir,
}

/// The keys of the fuzzed signer (and of the seeds that address it).
pub fn signer_secret(i: u8) -> shared::musig::SecretKey {
    shared::musig::SecretKey::from_bytes(&[0x11 + i; 32]).unwrap()
}

fn fuzz_signer() -> &'static FuzzSigner {
    static S: OnceLock<FuzzSigner> = OnceLock::new();
    S.get_or_init(|| {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let mut store = signer_svc::keystore::KeyStore::empty();
        for i in 0..2 {
            store.add(format!("k{i}"), signer_secret(i)).unwrap();
        }
        let journal =
            Arc::new(signer_svc::journal::Journal::open(&dir.path().join("j.log")).unwrap());
        let signer = signer_svc::service::Signer::new(
            Arc::new(store),
            signer_svc::nonces::NonceStore::new(std::time::Duration::from_secs(600), 10_000),
            Arc::new(signer_svc::policy::Policy::allow_all()),
            journal,
            Arc::new(signer_svc::metrics::Metrics::new()),
        );
        FuzzSigner {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            signer,
            _dir: dir,
        }
    })
}

/// A signer gRPC request after prost decoding (first byte: 0 GenerateNonce, 1 PartialSign,
/// 2 AttestPeer, 3 ReleaseNonce, other ListKeys), through the real service handlers.
pub fn signer_request(data: &[u8]) {
    use musig2_proto::v1 as v;
    use musig2_proto::v1::signer_service_server::SignerService;
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let s = fuzz_signer();
    match which {
        0 => {
            if let Ok(r) = v::GenerateNonceRequest::decode(rest) {
                let _ =
                    s.rt.block_on(s.signer.generate_nonce(tonic::Request::new(r)));
            }
        }
        1 => {
            if let Ok(r) = v::PartialSignRequest::decode(rest) {
                let _ = s.rt.block_on(s.signer.partial_sign(tonic::Request::new(r)));
            }
        }
        2 => {
            if let Ok(r) = v::AttestPeerRequest::decode(rest) {
                let _ = s.rt.block_on(s.signer.attest_peer(tonic::Request::new(r)));
            }
        }
        3 => {
            if let Ok(r) = v::ReleaseNonceRequest::decode(rest) {
                let _ =
                    s.rt.block_on(s.signer.release_nonce(tonic::Request::new(r)));
            }
        }
        _ => {
            if let Ok(r) = v::ListKeysRequest::decode(rest) {
                let _ = s.rt.block_on(s.signer.list_keys(tonic::Request::new(r)));
            }
        }
    }
}

/// The audit journal's line parser and chain verification (`audit verify`, start-up).
pub fn journal(data: &[u8]) {
    let verified = signer_svc::journal::verify_bytes("fuzz", data);
    let listed = signer_svc::journal::records("fuzz", data);
    assert_eq!(
        verified.is_ok(),
        listed.is_ok(),
        "verify and records agree on the chain"
    );
}

/// A key file: parsing, the KDF parameter caps, key derivation and decryption.
pub fn key_file(data: &[u8]) {
    let _ = signer_svc::keystore::KeyStore::open_bytes(data, b"fuzz passphrase", "fuzz");
}

/// The signer's TOML configuration.
pub fn signer_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let env = [(
            "MUSIG2_SIGNER__NONCES__TTL_SECS".to_string(),
            "60".to_string(),
        )];
        let _ = signer_svc::config::Config::parse(text, &[], Path::new("/nonexistent"));
        let _ = signer_svc::config::Config::parse(text, &env, Path::new("/nonexistent"));
    }
}

/// The coordinator's TOML configuration.
pub fn coordinator_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = coordinator_svc::config::Config::parse(text, &[], Path::new("/nonexistent"));
    }
}

/// Valid inputs for every target, to seed the corpora (`tests/fuzz_replay.rs` writes them with
/// `cargo test -p e2e-tests --test fuzz_replay -- --ignored write_seed_corpus`).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    use shared::election::{ElectionMethod, SessionId};
    use shared::musig::{SignatureFormat, Tweak};
    use wire::{Abort, AbortCode, Advertisement, Announce, Body, Header, SessionContext};

    let mut out: Vec<(&'static str, Vec<u8>)> = Vec::new();
    let (keypair, peer) = fuzz_peer();
    let sk = signer_secret(0);
    let others = [signer_secret(1), signer_secret(2)];
    let mut keys: Vec<[u8; 33]> = std::iter::once(&sk)
        .chain(&others)
        .map(|k| k.public_key())
        .collect();
    keys.sort_unstable();
    let att_exp = NOW + 86_400_000;
    let att = wire::Attestation {
        signer_key: sk.public_key(),
        peer_id: peer.to_bytes(),
        expires_at_ms: att_exp,
        signature: sk
            .sign_attestation(&peer.to_bytes(), att_exp, &[0; 32])
            .unwrap(),
    }
    .to_pb();
    out.push(("attestation", att.encode_to_vec()));
    for (format, tweaks) in [
        (SignatureFormat::Bip340, vec![]),
        (
            SignatureFormat::Bip340,
            vec![Tweak::XOnly([3; 32]), Tweak::Taproot { merkle_root: None }],
        ),
        (
            SignatureFormat::Lotus,
            vec![Tweak::Taproot {
                merkle_root: Some([9; 32]),
            }],
        ),
    ] {
        let ctx = SessionContext {
            signer_keys: keys.clone(),
            message: vec![0x42; 32],
            format,
            tweaks,
            batch: Vec::new(),
        };
        out.push(("session_context", ctx.to_pb().encode_to_vec()));
        let entropy = [1u8; 16];
        let id = SessionId::derive(&ctx.signer_keys, &ctx.message, NOW, &entropy);
        let header = |sequence| Header {
            session_id: id,
            sender: sk.public_key(),
            sequence,
            timestamp_ms: NOW,
        };
        let key_agg = ctx.key_agg().unwrap();
        let (_, nonce) =
            shared::musig::nonce_gen(&mut rand::rng(), &sk, &key_agg, &ctx.message).unwrap();
        let bodies = vec![
            Body::Announce(Box::new(Announce {
                context: ctx.clone(),
                election_method: ElectionMethod::Lexicographic,
                created_at_ms: NOW,
                entropy,
                expires_at_ms: NOW + 3_600_000,
                pool_slot: false,
                uses_pool_slot: None,
                pool_nonces: Vec::new(),
            })),
            Body::Join,
            Body::NonceShare(vec![nonce]),
            Body::PartialSigShare(vec![
                shared::musig::PartialSignature::from_bytes(&[5; 32]).unwrap(),
            ]),
            Body::Abort(Abort {
                code: AbortCode::InvalidPartialSignature,
                reason: "bad psig".into(),
                culprits: vec![keys[1]],
            }),
            Body::BroadcastConfirmed {
                reference: "txid".into(),
                attempt: 1,
            },
            Body::Hello(vec![att.clone()]),
        ];
        for (i, body) in bodies.into_iter().enumerate() {
            let m = Message {
                header: header(i as u64 + 1),
                body,
            };
            let bytes = m.encode();
            out.push(("wire_message", bytes));
            let sealed = coordinator_svc::envelope::seal(keypair, &m.to_pb(), att.clone()).unwrap();
            // A lane frame: request id, length, envelope.
            let mut frame = (i as u64 + 1).to_be_bytes().to_vec();
            frame.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            frame.extend_from_slice(&sealed);
            out.push(("direct_frame", frame));
            if matches!(m.body, Body::Announce(_)) {
                let mut rec = format!("musig2-session:{id}\n").into_bytes();
                rec.extend_from_slice(&sealed);
                out.push(("dht_record", rec));
            }
            out.push(("envelope", sealed));
        }
        // Signer requests for this context.
        let nonce_req = musig2_proto::v1::GenerateNonceRequest {
            public_key: sk.public_key().to_vec(),
            session_id: vec![2; 16],
            context: Some(ctx.to_pb()),
            pooled: false,
        };
        out.push((
            "signer_request",
            [&[0u8][..], &nonce_req.encode_to_vec()].concat(),
        ));
        // The same key set asked for a pooled nonce (one-round signing: no message).
        let mut pool_ctx = ctx.to_pb();
        pool_ctx.message.clear();
        let pool_req = musig2_proto::v1::GenerateNonceRequest {
            context: Some(pool_ctx),
            pooled: true,
            ..nonce_req.clone()
        };
        out.push((
            "signer_request",
            [&[0u8][..], &pool_req.encode_to_vec()].concat(),
        ));
        let release = musig2_proto::v1::ReleaseNonceRequest {
            public_key: sk.public_key().to_vec(),
            session_id: vec![2; 16],
        };
        out.push((
            "signer_request",
            [&[3u8][..], &release.encode_to_vec()].concat(),
        ));
        let sign = musig2_proto::v1::PartialSignRequest {
            public_key: sk.public_key().to_vec(),
            session_id: vec![2; 16],
            context: Some(ctx.to_pb()),
            public_nonces: vec![nonce.to_bytes().to_vec(); 3],
        };
        out.push((
            "signer_request",
            [&[1u8][..], &sign.encode_to_vec()].concat(),
        ));
    }
    // A batch session (issue 17): its context, its announcement and one value per message.
    let batch = SessionContext {
        signer_keys: keys.clone(),
        message: Vec::new(),
        format: SignatureFormat::Bip340,
        tweaks: Vec::new(),
        batch: vec![Vec::new(), vec![1; 32], vec![2; 100]],
    };
    out.push(("session_context", batch.to_pb().encode_to_vec()));
    let entropy = [2u8; 16];
    let id = batch.session_id(NOW, &entropy);
    let key_agg = batch.key_agg().unwrap();
    let (_, nonce) = shared::musig::nonce_gen(&mut rand::rng(), &sk, &key_agg, &[]).unwrap();
    let psig = shared::musig::PartialSignature::from_bytes(&[5; 32]).unwrap();
    for (sequence, body) in [
        Body::Announce(Box::new(Announce {
            context: batch.clone(),
            election_method: ElectionMethod::Lexicographic,
            created_at_ms: NOW,
            entropy,
            expires_at_ms: NOW + 3_600_000,
            pool_slot: false,
            uses_pool_slot: None,
            pool_nonces: Vec::new(),
        })),
        Body::NonceShare(vec![nonce; 3]),
        Body::PartialSigShare(vec![psig; 3]),
        Body::SignatureFinalized(vec![shared::musig::Signature([6; 64]); 3]),
    ]
    .into_iter()
    .enumerate()
    {
        let m = Message {
            header: Header {
                session_id: id,
                sender: sk.public_key(),
                sequence: sequence as u64 + 1,
                timestamp_ms: NOW,
            },
            body,
        };
        out.push(("wire_message", m.encode()));
    }
    let adv = Message {
        header: Header {
            session_id: SessionId([0; 16]),
            sender: sk.public_key(),
            sequence: 1,
            timestamp_ms: NOW,
        },
        body: Body::Advertisement(Advertisement {
            transaction_types: vec![pb::TransactionType::Spend],
            min_amount: 1,
            max_amount: 0,
            expires_at_ms: NOW + 3_600_000,
            description: "treasury".into(),
        }),
    };
    let sealed = coordinator_svc::envelope::seal(keypair, &adv.to_pb(), att.clone()).unwrap();
    let mut rec = format!("musig2-signer:{}\n", hex::encode(sk.public_key())).into_bytes();
    rec.extend_from_slice(&sealed);
    out.push(("dht_record", rec));
    out.push(("wire_message", adv.encode()));
    let attest = musig2_proto::v1::AttestPeerRequest {
        public_key: sk.public_key().to_vec(),
        peer_id: peer.to_bytes(),
        expires_at_ms: NOW + 60_000,
    };
    out.push((
        "signer_request",
        [&[2u8][..], &attest.encode_to_vec()].concat(),
    ));
    out.push(("signer_request", vec![4u8]));
    out.push((
        "direct_frame",
        [&7u64.to_be_bytes()[..], &200_000u32.to_be_bytes()].concat(),
    ));

    // A journal with every record kind, and a key file, made by the real code.
    let dir = tempfile::tempdir().unwrap();
    let jp = dir.path().join("journal.log");
    {
        use signer_svc::journal::{Event, Journal, RecordKind};
        let j = Journal::open(&jp).unwrap();
        j.append(
            RecordKind::Nonce,
            Event {
                session_id: Some("02".repeat(16)),
                key: Some(hex::encode(sk.public_key())),
                format: Some("bip340".into()),
                signer_keys: Some(keys.iter().map(hex::encode).collect()),
                tweaks: Some(vec!["taproot".into()]),
                message: Some("42".repeat(32)),
                message_len: Some(32),
                ..Event::default()
            },
        )
        .unwrap();
        j.append(
            RecordKind::Attestation,
            Event {
                key: Some(hex::encode(sk.public_key())),
                peer_id: Some(hex::encode(peer.to_bytes())),
                expires_at_ms: Some(NOW),
                ..Event::default()
            },
        )
        .unwrap();
    }
    let mut jbytes = std::fs::read(&jp).unwrap();
    out.push(("journal", jbytes.clone()));
    jbytes.extend_from_slice(b"{\"seq\":9,\"torn");
    out.push(("journal", jbytes));
    let kp = dir.path().join("keys.json");
    let mut store = signer_svc::keystore::KeyStore::empty();
    store.add("k".into(), signer_secret(0)).unwrap();
    store.save(&kp, b"fuzz passphrase", 8 * 1024, 1).unwrap();
    out.push(("key_file", std::fs::read(&kp).unwrap()));
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    out.push((
        "signer_config",
        std::fs::read(root.join("signer-svc/signer.example.toml")).unwrap(),
    ));
    out.push((
        "coordinator_config",
        std::fs::read(root.join("coordinator-svc/coordinator.example.toml")).unwrap(),
    ));
    out
}
