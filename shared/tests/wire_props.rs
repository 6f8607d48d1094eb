//! Wire decoding never panics on any input, valid messages round-trip byte for byte, and every
//! stateless rule rejects what it should.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use proptest::prelude::*;
use prost::Message as _;
use shared::election::{ElectionMethod, SessionId};
use shared::musig::{
    AggNonce, KeyAggContext, SecretKey, SignatureFormat, SigningSession, Tweak, nonce_gen,
};
use shared::wire::{
    self, Abort, AbortCode, Announce, Attestation, Body, Header, Message, SessionContext,
    WireError, decode_canonical, pb,
};

const NOW: i64 = 1_766_329_380_000;

fn keys(n: usize) -> (Vec<SecretKey>, Vec<[u8; 33]>) {
    let mut sks: Vec<SecretKey> = (1..=n)
        .map(|i| SecretKey::from_bytes(&[i as u8; 32]).unwrap())
        .collect();
    sks.sort_by_key(|k| k.public_key());
    let pks = sks.iter().map(SecretKey::public_key).collect();
    (sks, pks)
}

fn context(format: SignatureFormat, n: usize) -> SessionContext {
    SessionContext {
        signer_keys: keys(n).1,
        message: vec![7u8; 32],
        format,
        tweaks: vec![Tweak::Taproot { merkle_root: None }],
        batch: Vec::new(),
    }
}

fn announce(n: usize) -> Message {
    let ctx = context(SignatureFormat::Lotus, n);
    let entropy = [9u8; 16];
    let id = SessionId::derive(&ctx.signer_keys, &ctx.message, NOW, &entropy);
    Message {
        header: Header {
            session_id: id,
            sender: ctx.signer_keys[0],
            sequence: 1,
            timestamp_ms: NOW,
        },
        body: Body::Announce(Box::new(Announce {
            context: ctx,
            election_method: ElectionMethod::HashBased,
            created_at_ms: NOW,
            entropy,
            expires_at_ms: NOW + 7_200_000,
            pool_slot: false,
            uses_pool_slot: None,
            pool_nonces: Vec::new(),
        })),
    }
}

/// One valid message of every body type.
fn samples() -> Vec<Message> {
    let (sks, pks) = keys(3);
    let ctx = KeyAggContext::new(SignatureFormat::Bip340, &pks).unwrap();
    let mut rng = rand::rng();
    let (sec, pubn) = nonce_gen(&mut rng, &sks[0], &ctx, b"msg").unwrap();
    let mut nonces = vec![pubn];
    let mut others = Vec::new();
    for sk in &sks[1..] {
        let (s, p) = nonce_gen(&mut rng, sk, &ctx, b"msg").unwrap();
        nonces.push(p);
        others.push(s);
    }
    let agg = AggNonce::sum(SignatureFormat::Bip340, &nonces).unwrap();
    let session = SigningSession::new(&ctx, &agg, b"msg").unwrap();
    let psig = session.sign(sec, &sks[0]).unwrap();
    let header = |seq| Header {
        session_id: SessionId([1; 16]),
        sender: pks[0],
        sequence: seq,
        timestamp_ms: NOW,
    };
    let bodies = vec![
        Body::Join,
        Body::NonceShare(vec![pubn]),
        Body::NonceShare(vec![pubn; 3]),
        Body::PartialSigShare(vec![psig]),
        Body::PartialSigShare(vec![psig; 256]),
        Body::Abort(Abort {
            code: AbortCode::InvalidPartialSignature,
            reason: "bad psig".into(),
            culprits: vec![pks[1]],
        }),
        Body::ValidationError {
            rejected_sequence: 4,
            reason: "stale".into(),
        },
        Body::SignatureFinalized(vec![shared::musig::Signature([5; 64])]),
        Body::SignatureFinalized(vec![shared::musig::Signature([5; 64]); 2]),
        Body::BroadcastConfirmed {
            reference: "txid".into(),
            attempt: 1,
        },
        Body::Advertisement(wire::Advertisement {
            transaction_types: vec![pb::TransactionType::Spend, pb::TransactionType::Swap],
            min_amount: 1,
            max_amount: 10,
            expires_at_ms: NOW + 60_000,
            description: "desk".into(),
        }),
        Body::SigningRequest(Box::new(wire::SigningRequest {
            request_id: [3; 16],
            context: context(SignatureFormat::Bip340, 2),
            transaction_type: pb::TransactionType::Custody,
            amount: 5,
            expires_at_ms: NOW + 1000,
        })),
        Body::SigningResponse {
            request_id: [3; 16],
            accept: true,
        },
    ];
    let mut out: Vec<Message> = bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Message {
            header: header(i as u64 + 1),
            body,
        })
        .collect();
    out.push(announce(3));
    out
}

static SAMPLES: std::sync::LazyLock<Vec<Vec<u8>>> =
    std::sync::LazyLock::new(|| samples().iter().map(Message::encode).collect());

#[test]
fn every_body_type_round_trips_canonically() {
    let all = samples();
    assert_eq!(all.len(), 14);
    for m in all {
        let bytes = m.encode();
        let back = Message::decode(&bytes, wire::MAX_DIRECT_MESSAGE_BYTES, NOW).unwrap();
        assert_eq!(back, m, "{}", m.body.kind());
        assert_eq!(back.encode(), bytes);
    }
}

#[test]
fn non_canonical_encodings_are_rejected() {
    let bytes = samples()[1].encode();
    // An unknown field appended (field 99, varint 1) decodes in protobuf but is not canonical.
    let mut extra = bytes.clone();
    extra.extend_from_slice(&[0x98, 0x06, 0x01]);
    assert_eq!(
        Message::decode(&extra, 100_000, NOW).unwrap_err(),
        WireError::NonCanonical
    );
    // A default value written explicitly (sequence = 0 is omitted canonically).
    let mut pbm = samples()[0].to_pb();
    pbm.sequence = 0;
    let mut with_zero = vec![0x18, 0x00];
    with_zero.extend(pbm.encode_to_vec());
    assert_eq!(
        decode_canonical::<pb::WireMessage>(&with_zero, 100_000).unwrap_err(),
        WireError::NonCanonical
    );
}

#[test]
fn stateless_rules_reject() {
    let ok = samples()[1].clone();
    let lim = wire::MAX_DIRECT_MESSAGE_BYTES;
    let reason = |m: &pb::WireMessage| Message::from_pb(m, NOW).unwrap_err().reason();

    // Size limits: gossip and direct.
    let largest = announce(100).encode();
    assert!(
        Message::decode(&largest, wire::MAX_GOSSIP_MESSAGE_BYTES, NOW).is_ok(),
        "100 signers fit gossip"
    );
    let big = vec![0u8; wire::MAX_GOSSIP_MESSAGE_BYTES + 1];
    assert!(matches!(
        Message::decode(&big, wire::MAX_GOSSIP_MESSAGE_BYTES, NOW),
        Err(WireError::TooLarge { .. })
    ));
    assert!(
        !matches!(
            Message::decode(&big, lim, NOW),
            Err(WireError::TooLarge { .. })
        ),
        "fits a direct stream"
    );
    assert!(matches!(
        Message::decode(&vec![0u8; lim + 1], lim, NOW),
        Err(WireError::TooLarge { .. })
    ));

    // Timestamp skew ±5 min, both directions; the boundary is accepted.
    for (delta, accepted) in [
        (300_000, true),
        (-300_000, true),
        (300_001, false),
        (-300_001, false),
    ] {
        let mut m = ok.to_pb();
        m.timestamp_ms = NOW + delta;
        assert_eq!(Message::from_pb(&m, NOW).is_ok(), accepted, "delta {delta}");
    }
    let mut m = ok.to_pb();
    m.sequence = 0;
    assert_eq!(reason(&m), "zero_sequence");
    let mut m = ok.to_pb();
    m.session_id = vec![1; 15];
    assert_eq!(reason(&m), "length");
    let mut m = ok.to_pb();
    m.sender_key = vec![2; 33];
    m.sender_key[1..].copy_from_slice(&[0xff; 32]);
    assert_eq!(reason(&m), "invalid_point");
    let mut m = ok.to_pb();
    m.body = None;
    assert_eq!(reason(&m), "missing_field");
    let mut m = ok.to_pb();
    m.body = Some(pb::wire_message::Body::NonceShare(pb::NonceShare {
        public_nonce: [[2u8].as_slice(), &[0xff; 32], &[2], &[0xff; 32]].concat(),
    }));
    assert_eq!(reason(&m), "invalid_point");
    let mut m = ok.to_pb();
    m.body = Some(pb::wire_message::Body::PartialSigShare(
        pb::PartialSigShare {
            partial_signature: vec![0xff; 32],
        },
    ));
    assert_eq!(reason(&m), "invalid_scalar");

    // Announcements: id must match, expiry after now, context sorted, Lotus message 32 bytes.
    let a = announce(3).to_pb();
    let mut m = a.clone();
    m.session_id[0] ^= 1;
    assert_eq!(reason(&m), "session_id_mismatch");
    let with_announce = |f: &dyn Fn(&mut pb::SessionAnnounce)| {
        let mut m = a.clone();
        if let Some(pb::wire_message::Body::Announce(x)) = m.body.as_mut() {
            f(x);
        }
        m
    };
    assert_eq!(
        reason(&with_announce(&|x| x.expires_at_ms = NOW - 1)),
        "expired"
    );
    assert_eq!(
        reason(&with_announce(&|x| x
            .context
            .as_mut()
            .unwrap()
            .signer_keys
            .reverse())),
        "unsorted_keys"
    );
    assert_eq!(
        reason(&with_announce(&|x| x.context.as_mut().unwrap().format = 0)),
        "invalid_enum"
    );
    let dup = with_announce(&|x| {
        let k = x.context.as_ref().unwrap().signer_keys[0].clone();
        x.context.as_mut().unwrap().signer_keys[1] = k;
    });
    assert_eq!(reason(&dup), "unsorted_keys");
    let short = with_announce(&|x| x.context.as_mut().unwrap().message = vec![1; 31]);
    assert!(matches!(
        Message::from_pb(&short, NOW).unwrap_err(),
        WireError::Length {
            field: "message",
            ..
        } | WireError::SessionIdMismatch
    ));
}

#[test]
fn long_lived_attestations_are_refused_by_verifiers() {
    use shared::wire::{MAX_ATTESTATION_LIFETIME_MS, MAX_TIMESTAMP_SKEW_MS};
    let sk = SecretKey::from_bytes(&[4; 32]).unwrap();
    let peer = b"\x00\x24peer-id-bytes";
    let signed = |expires: i64| Attestation {
        signer_key: sk.public_key(),
        peer_id: peer.to_vec(),
        expires_at_ms: expires,
        signature: sk.sign_attestation(peer, expires, &[0; 32]).unwrap(),
    };
    // The longest lifetime the protocol allows, plus the skew allowance: accepted.
    let limit = NOW + MAX_ATTESTATION_LIFETIME_MS + MAX_TIMESTAMP_SKEW_MS;
    Attestation::verify_pb(&signed(limit).to_pb(), peer, NOW).unwrap();
    // One millisecond further, or years ahead: a valid signature, refused all the same.
    for expires in [limit + 1, NOW + 10 * 365 * 24 * 3600 * 1000, i64::MAX] {
        let err = Attestation::verify_pb(&signed(expires).to_pb(), peer, NOW).unwrap_err();
        assert!(
            err.to_string().contains("maximum attestation lifetime"),
            "{err}"
        );
    }
}

#[test]
fn attestations_verify_and_bind_the_peer() {
    attestation_checks(&mut |a, peer, now| Attestation::verify_pb(a, peer, now));
}

/// The cache of verified attestations skips only the signature check of one seen byte for byte
/// before: with the good attestation cached, every altered one is still refused, and so is the
/// cached one itself for another peer or once expired.
#[test]
fn cached_attestations_are_checked_all_the_same() {
    let mut cache = wire::VerifiedAttestations::default();
    attestation_checks(&mut |a, peer, now| cache.verify_pb(a, peer, now));
    attestation_checks(&mut |a, peer, now| cache.verify_pb(a, peer, now));
}

type Verify<'a> =
    dyn FnMut(&wire::pb::PeerAttestation, &[u8], i64) -> Result<Attestation, wire::WireError> + 'a;

fn attestation_checks(verify: &mut Verify<'_>) {
    let sk = SecretKey::from_bytes(&[4; 32]).unwrap();
    let peer = b"\x00\x24peer-id-bytes";
    let sig = sk.sign_attestation(peer, NOW + 1000, &[0; 32]).unwrap();
    let att = Attestation {
        signer_key: sk.public_key(),
        peer_id: peer.to_vec(),
        expires_at_ms: NOW + 1000,
        signature: sig,
    };
    assert_eq!(verify(&att.to_pb(), peer, NOW).unwrap(), att);
    assert!(verify(&att.to_pb(), b"other", NOW).is_err(), "other peer");
    assert!(verify(&att.to_pb(), peer, NOW + 1000).is_err(), "expired");
    let mut forged = att.to_pb();
    forged.expires_at_ms += 1;
    assert!(verify(&forged, peer, NOW).is_err(), "altered expiry");
    let other = SecretKey::from_bytes(&[5; 32]).unwrap();
    let mut wrong_key = att.to_pb();
    wrong_key.signer_key = other.public_key().to_vec();
    assert!(verify(&wrong_key, peer, NOW).is_err(), "other key");
    let mut bad_sig = att.to_pb();
    bad_sig.signature[7] ^= 1;
    assert!(verify(&bad_sig, peer, NOW).is_err(), "altered signature");
    assert!(
        verify(&bad_sig, peer, NOW).is_err(),
        "altered signature, again"
    );
    // Another peer's attestation by the same key: its own signature, checked.
    let mut other_peer = att.to_pb();
    other_peer.peer_id = b"other".to_vec();
    assert!(
        verify(&other_peer, b"other", NOW).is_err(),
        "peer id swapped"
    );
}

/// KeyAgg results are cached per key set, format and tweaks: the cached result is the one
/// computed afresh, for contexts that differ only in tweaks or format, and a context KeyAgg
/// refuses is refused every time.
#[test]
fn cached_key_aggregation_matches_a_fresh_one() {
    use shared::musig::{KeyAggContext, SignatureFormat, Tweak};
    let keys: Vec<[u8; 33]> = {
        let mut k: Vec<[u8; 33]> = (1u8..=3)
            .map(|i| SecretKey::from_bytes(&[i; 32]).unwrap().public_key())
            .collect();
        k.sort();
        k
    };
    let variants = [
        (SignatureFormat::Bip340, vec![]),
        (SignatureFormat::Bip340, vec![Tweak::XOnly([7; 32])]),
        (SignatureFormat::Bip340, vec![Tweak::Plain([7; 32])]),
        (
            SignatureFormat::Bip340,
            vec![Tweak::Taproot { merkle_root: None }],
        ),
        (SignatureFormat::Lotus, vec![]),
        (
            SignatureFormat::Lotus,
            vec![Tweak::Taproot {
                merkle_root: Some([9; 32]),
            }],
        ),
    ];
    for _ in 0..2 {
        for (format, tweaks) in &variants {
            let ctx = SessionContext {
                signer_keys: keys.clone(),
                message: vec![0; 32],
                format: *format,
                tweaks: tweaks.clone(),
                batch: Vec::new(),
            };
            let fresh = KeyAggContext::with_tweaks(*format, &keys, tweaks).unwrap();
            let cached = ctx.key_agg().unwrap();
            assert_eq!(
                cached.output_key(),
                fresh.output_key(),
                "{format:?} {tweaks:?}"
            );
            assert_eq!(cached.aggregate_key(), fresh.aggregate_key());
        }
    }
    let refused = SessionContext {
        signer_keys: keys.clone(),
        message: vec![0; 32],
        format: SignatureFormat::Lotus,
        tweaks: vec![Tweak::Plain([7; 32])],
        batch: Vec::new(),
    };
    assert!(refused.key_agg().is_err());
    assert!(refused.key_agg().is_err());
}

#[test]
fn sequence_window() {
    assert!(wire::sequence_ok(0, 1, 100));
    assert!(wire::sequence_ok(0, 100, 100));
    assert!(!wire::sequence_ok(0, 101, 100));
    assert!(!wire::sequence_ok(5, 5, 100), "replay");
    assert!(!wire::sequence_ok(5, 4, 100), "old");
    assert!(wire::sequence_ok(u64::MAX - 1, u64::MAX, 100));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = Message::decode(&bytes, wire::MAX_DIRECT_MESSAGE_BYTES, NOW);
        let _ = decode_canonical::<pb::SignedEnvelope>(&bytes, wire::MAX_DIRECT_MESSAGE_BYTES);
        let _ = decode_canonical::<pb::SessionContext>(&bytes, wire::MAX_DIRECT_MESSAGE_BYTES)
            .map(|c| SessionContext::from_pb(&c));
        if let Ok(env) = decode_canonical::<pb::SignedEnvelope>(&bytes, 100_000)
            && let Some(a) = env.attestation.as_ref()
        {
            let _ = Attestation::verify_pb(a, &env.peer_public_key, NOW);
        }
    }

    #[test]
    fn mutated_valid_messages_never_panic(which in 0usize..11, pos in any::<usize>(), val in any::<u8>(), cut in any::<usize>()) {
        let bytes = &SAMPLES[which];
        let mut m = bytes.to_vec();
        let i = pos % m.len();
        m[i] = val;
        let _ = Message::decode(&m, wire::MAX_DIRECT_MESSAGE_BYTES, NOW);
        let _ = Message::decode(&bytes[..cut % (bytes.len() + 1)], wire::MAX_DIRECT_MESSAGE_BYTES, NOW);
    }
}

/// A batch session's context (issue 17): 2 to 256 messages, each valid for the format, at most
/// 64 KiB in all, `message` empty; never where one message belongs (a signer's request, a
/// nonce-pool slot, a one-round session); its values one per message.
#[test]
fn batch_contexts_and_values_are_bounded() {
    let base = context(SignatureFormat::Lotus, 3);
    let with = |message: Vec<u8>, batch: Vec<Vec<u8>>| {
        let mut pb = base.to_pb();
        pb.message = message;
        pb.batch_messages = batch;
        pb
    };
    let ok = with(Vec::new(), vec![vec![1; 32], vec![2; 32], vec![3; 32]]);
    let ctx = SessionContext::from_pb_session(&ok).unwrap();
    assert_eq!(ctx.count(), 3);
    assert_eq!(
        ctx.messages().collect::<Vec<_>>(),
        [[1; 32], [2; 32], [3; 32]]
    );
    // What each message is for the signer: its own session id and a one-message context.
    let id = SessionId([9; 16]);
    let items = ctx.items(id);
    assert_eq!(items.len(), 3);
    for (i, (item, c)) in items.iter().enumerate() {
        assert_eq!(*item, id.batch_item(i as u32));
        assert_ne!(*item, id);
        assert!(c.batch.is_empty());
        assert_eq!(c.message, vec![i as u8 + 1; 32]);
        // It is what a signer accepts.
        assert_eq!(SessionContext::from_pb(&c.to_pb()).as_ref(), Ok(c));
    }
    assert_eq!(
        ctx.item_ids(id),
        items.iter().map(|(i, _)| *i).collect::<Vec<_>>()
    );
    // One message: the session itself.
    assert_eq!(base.items(id), vec![(id, base.clone())]);
    // The session id commits to every message and their order, and no single-message session
    // has a batch's id (not even one signing any 32-byte digest of the batch).
    let mut swapped = ctx.clone();
    swapped.batch.swap(0, 1);
    let (t, e) = (NOW, [4u8; 16]);
    assert_ne!(swapped.session_id(t, &e), ctx.session_id(t, &e));
    assert_eq!(
        base.session_id(t, &e),
        SessionId::derive(&base.signer_keys, &base.message, t, &e)
    );
    for m in [&ctx.batch[0], &ctx.batch[1], &ctx.batch[2]] {
        let mut single = base.clone();
        single.message.clone_from(m);
        assert_ne!(single.session_id(t, &e), ctx.session_id(t, &e));
    }
    let digest = {
        use sha2::Digest as _;
        let mut h = sha2::Sha256::new();
        h.update(b"musig2/v1/batch-messages");
        for m in &ctx.batch {
            h.update((m.len() as u32).to_be_bytes());
            h.update(m);
        }
        h.finalize().to_vec()
    };
    let mut single = base.clone();
    single.message = digest;
    assert_ne!(single.session_id(t, &e), ctx.session_id(t, &e));
    // A signer, a slot and anything else taking one message refuse a batch.
    assert!(matches!(
        SessionContext::from_pb(&ok),
        Err(WireError::Batch(_))
    ));
    assert!(matches!(
        SessionContext::from_pb_pool(&ok),
        Err(WireError::Batch(_))
    ));
    let mut signer = shared::discipline::MemorySigner::new(vec![keys(3).0.remove(0)]);
    let key = keys(3).1[0];
    let r = signer.nonce(&mut rand::rng(), &[1; 16], &key, &ctx);
    assert!(
        matches!(r, Err(shared::discipline::Refused::Invalid(_))),
        "{r:?}"
    );
    // Malformed batches.
    let refused = [
        with(vec![1; 32], vec![vec![1; 32], vec![2; 32]]),
        with(Vec::new(), vec![vec![1; 32]]),
        with(Vec::new(), vec![vec![1; 32]; wire::MAX_BATCH_MESSAGES + 1]),
        with(Vec::new(), vec![vec![1; 32], vec![2; 31]]),
    ];
    for pb in &refused {
        assert!(SessionContext::from_pb_session(pb).is_err(), "{pb:?}");
    }
    assert!(SessionContext::from_pb_session(&with(Vec::new(), vec![vec![1; 32]; 256])).is_ok());
    let mut bip = context(SignatureFormat::Bip340, 3).to_pb();
    bip.message.clear();
    bip.batch_messages = vec![vec![7; wire::MAX_BIP340_MESSAGE_BYTES]; 64];
    assert!(SessionContext::from_pb_session(&bip).is_ok());
    bip.batch_messages.push(vec![1]);
    assert_eq!(
        SessionContext::from_pb_session(&bip),
        Err(WireError::TooLong {
            field: "batch_messages (bytes in all)",
            max: wire::MAX_BATCH_BYTES
        })
    );
    bip.batch_messages = vec![vec![1; wire::MAX_BIP340_MESSAGE_BYTES + 1], vec![]];
    assert!(SessionContext::from_pb_session(&bip).is_err());
    // Signers × messages is bounded: 25 × 256 is the most with 256 messages.
    for (n, ok) in [(25, true), (26, false)] {
        let mut wide = context(SignatureFormat::Lotus, n).to_pb();
        wide.message.clear();
        wide.batch_messages = vec![vec![1; 32]; 256];
        assert_eq!(
            SessionContext::from_pb_session(&wide).is_ok(),
            ok,
            "{n} signers"
        );
    }
    // Values on the wire: 1 to 256 of them, whole.
    let header = |seq| Header {
        session_id: SessionId([1; 16]),
        sender: base.signer_keys[0],
        sequence: seq,
        timestamp_ms: NOW,
    };
    let psig = |n: usize, extra: usize| {
        let mut m = Message {
            header: header(2),
            body: Body::Join,
        }
        .to_pb();
        m.body = Some(pb::wire_message::Body::PartialSigShare(
            pb::PartialSigShare {
                partial_signature: vec![1; 32 * n + extra],
            },
        ));
        Message::from_pb(&m, NOW)
    };
    assert!(
        matches!(psig(1, 0), Ok(Message { body: Body::PartialSigShare(v), .. }) if v.len() == 1)
    );
    assert!(
        matches!(psig(256, 0), Ok(Message { body: Body::PartialSigShare(v), .. }) if v.len() == 256)
    );
    for (n, extra) in [(0, 0), (1, 1), (2, 31), (257, 0)] {
        assert!(psig(n, extra).is_err(), "{n} values and {extra} bytes");
    }
    // An announcement of a batch one-round session is refused.
    let mut a = announce(3);
    if let Body::Announce(x) = &mut a.body {
        x.context = ctx.clone();
        x.uses_pool_slot = Some(SessionId([3; 16]));
        x.pool_nonces = vec![];
    }
    let Message {
        body: Body::Announce(x),
        ..
    } = &a
    else {
        unreachable!()
    };
    a.header.session_id = x.context.session_id(x.created_at_ms, &x.entropy);
    assert!(matches!(
        Message::from_pb(&a.to_pb(), NOW),
        Err(WireError::Batch(_))
    ));
    // A batch announcement, whole: it round-trips.
    let mut a = announce(3);
    if let Body::Announce(x) = &mut a.body {
        x.context = ctx.clone();
        a.header.session_id = x.context.session_id(x.created_at_ms, &x.entropy);
    }
    assert_eq!(
        Message::decode(&a.encode(), wire::MAX_DIRECT_MESSAGE_BYTES, NOW),
        Ok(a)
    );
}

#[test]
fn remembered_keys_never_let_an_invalid_key_through() {
    let parse = |keys: &[[u8; 33]]| {
        SessionContext::from_pb(&pb::SessionContext {
            signer_keys: keys.iter().map(|k| k.to_vec()).collect(),
            message: vec![7u8; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            ..Default::default()
        })
    };
    let (_, good) = keys(3);
    // Keys no parse accepts, close to one that parsed: x past the field size, a prefix of an
    // uncompressed key, and an x with no point on the curve (5 is not a cube plus 7 mod p).
    let mut past = good[0];
    past[1..].copy_from_slice(&[0xff; 32]);
    let mut prefix = good[0];
    prefix[0] = 4;
    let mut off_curve = [0u8; 33];
    off_curve[0] = 2;
    off_curve[32] = 5;
    assert!(secp256k1::PublicKey::from_slice(&off_curve).is_err());
    // Many more keys than are remembered, parsed twice each; the bad ones are refused before,
    // between and after, every time.
    let many: Vec<[u8; 33]> = (1u32..=5_000)
        .map(|i| {
            let mut b = [0u8; 32];
            b[28..].copy_from_slice(&i.to_be_bytes());
            SecretKey::from_bytes(&b).unwrap().public_key()
        })
        .collect();
    for round in 0..2 {
        for bad in [past, prefix, off_curve] {
            let mut keys = vec![good[1], bad];
            keys.sort();
            assert!(
                matches!(parse(&keys), Err(WireError::InvalidPoint(_))),
                "round {round}: {}",
                hex::encode(bad)
            );
        }
        for chunk in many.chunks(50) {
            let mut keys = chunk.to_vec();
            keys.sort();
            assert_eq!(parse(&keys).unwrap().signer_keys, keys, "round {round}");
        }
        assert!(parse(&good).is_ok());
    }
}
