//! Batch sessions (issue 17): one session signs M messages with one nonce per party and
//! message, one round trip per round for all of them; each message is its own session for the
//! signer; a wrong partial signature names the party and the message; a batch survives the
//! store.

use super::*;
use crate::protocol::session::{Reject, Session};
use shared::wire::{AbortCode, Body};

fn batch_context(net: &Net, format: SignatureFormat, messages: Vec<Vec<u8>>) -> SessionContext {
    let mut c = net.context();
    c.format = format;
    c.message.clear();
    c.batch = messages;
    c
}

/// BIP340 messages of every allowed length class: empty, short, a sighash, long.
fn bip340_messages() -> Vec<Vec<u8>> {
    vec![
        Vec::new(),
        vec![1],
        vec![2; 32],
        vec![3; 100],
        vec![4; shared::wire::MAX_BIP340_MESSAGE_BYTES],
    ]
}

fn delivered(net: &Net, what: &str) -> usize {
    net.delivered
        .iter()
        .filter(|(from, _, bytes)| kind(net.peers[*from], bytes) == what)
        .count()
}

#[test]
fn a_batch_signs_every_message_in_one_round_trip_per_round() {
    for (format, messages) in [
        (SignatureFormat::Bip340, bip340_messages()),
        (
            SignatureFormat::Lotus,
            (0..16u8).map(|i| vec![i; 32]).collect(),
        ),
    ] {
        let mut net = Net::new(3, false);
        let ctx = batch_context(&net, format, messages.clone());
        let id = net.create_and_run(ctx.clone());
        let mut first = None;
        for c in &net.cores {
            let v = c.session(id).unwrap_or_else(|| panic!("known everywhere"));
            assert_eq!(v.phase, Phase::Complete, "{format:?}");
            let sigs = v.signatures.clone().unwrap_or_default();
            assert_eq!(sigs.len(), messages.len());
            for (m, sig) in messages.iter().zip(&sigs) {
                shared::musig::verify(format, &v.output_key, m, sig)
                    .unwrap_or_else(|e| panic!("{format:?}: {e}"));
            }
            // A batch has no single signature.
            assert_eq!(v.signature(), None);
            assert_eq!(
                *first.get_or_insert(sigs.clone()),
                sigs,
                "same on every node"
            );
        }
        // The signatures differ per message (each its own nonce and challenge).
        let sigs = first.unwrap_or_default();
        for (i, a) in sigs.iter().enumerate() {
            assert!(sigs.iter().skip(i + 1).all(|b| b != a));
        }
        // One nonce message and one partial-signature message per party and peer, for all M.
        assert_eq!(delivered(&net, "NONCE_SHARE"), 6, "{format:?}");
        assert_eq!(delivered(&net, "PARTIAL_SIG_SHARE"), 6, "{format:?}");
        // Each message was its own signer session, its nonce spent: asking again is refused.
        for (i, signer) in net.signers.iter_mut().enumerate() {
            for (item, item_ctx) in ctx.items(id) {
                let r = signer.nonce(&mut net.rng, &item.0, &net.keys[i], &item_ctx);
                assert_eq!(
                    r,
                    Err(shared::discipline::Refused::NonceUsed),
                    "node {i}, {item}"
                );
            }
            assert_eq!(signer.max_signatures_per_nonce(), 1);
        }
    }
}

#[test]
fn a_wrong_partial_signature_names_the_party_and_the_message() {
    let mut net = Net::new(3, false);
    // Node 2's signer answers message 3 of 5 with a wrong partial signature.
    net.corrupt = Some((2, 3));
    let ctx = batch_context(&net, SignatureFormat::Bip340, bip340_messages());
    let index = ctx
        .signer_keys
        .iter()
        .position(|k| *k == net.keys[2])
        .unwrap_or_else(|| unreachable!());
    let id = net.create_and_run(ctx);
    let mut checked = 0;
    for (i, c) in net.cores.iter().enumerate() {
        let v = c.session(id).unwrap_or_else(|| panic!("known everywhere"));
        assert_eq!(v.phase, Phase::Aborted, "node {i}");
        let abort = v.abort.unwrap_or_else(|| panic!("a reason"));
        if abort.is_claim() {
            // Told by another before its own check: that member's claim, not its own blame.
            assert!(abort.culprits.is_empty());
            continue;
        }
        checked += 1;
        assert_eq!(abort.code, AbortCode::InvalidPartialSignature, "node {i}");
        assert_eq!(abort.culprits, vec![net.keys[2]], "node {i}");
        assert!(
            abort.reason.contains(&format!(
                "signer {index} ({}) on message 3",
                hex::encode(net.keys[2])
            )),
            "node {i}: {}",
            abort.reason
        );
        assert!(v.signatures.is_none());
    }
    assert!(checked >= 2, "{checked} nodes found the culprit themselves");
}

#[test]
fn a_refused_message_releases_the_nonces_of_the_others() {
    let mut net = Net::new(3, false);
    // Node 1's signer issues nonces for messages 0 to 2 of 5, then refuses message 3.
    net.refuse_nonce = Some((1, 3));
    let ctx = batch_context(&net, SignatureFormat::Bip340, bip340_messages());
    let id = net.create_and_run(ctx.clone());
    for c in &net.cores {
        let v = c.session(id).unwrap_or_else(|| panic!("known everywhere"));
        assert_eq!(v.phase, Phase::Aborted);
    }
    let reason = net.cores[1]
        .session(id)
        .and_then(|v| v.abort)
        .map(|a| a.reason)
        .unwrap_or_default();
    assert!(reason.contains("policy refuses message 3"), "{reason}");
    // Every nonce any signer issued for the session is gone: released, never left pending.
    for (i, signer) in net.signers.iter_mut().enumerate() {
        for (item, item_ctx) in ctx.items(id) {
            let r = signer.nonce(&mut net.rng, &item.0, &net.keys[i], &item_ctx);
            assert!(
                matches!(r, Err(shared::discipline::Refused::NonceUsed) | Ok(_)),
                "{r:?}"
            );
            if i == 1 && item != id.batch_item(3) && item != id.batch_item(4) {
                // Issued before the refusal: released.
                assert_eq!(r, Err(shared::discipline::Refused::NonceUsed), "{item}");
            }
        }
    }
}

#[test]
fn a_contribution_for_another_count_of_messages_is_refused() {
    let mut net = Net::new(3, false);
    let ctx = batch_context(&net, SignatureFormat::Bip340, bip340_messages());
    let mut fx = Vec::new();
    let view = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    // Node 0's own copy, before anything is delivered.
    let s = net.cores[0]
        .sessions
        .get_mut(&view.id)
        .unwrap_or_else(|| unreachable!());
    let sk = SecretKey::from_bytes(&[2; 32]).unwrap_or_else(|_| unreachable!());
    let (_, nonce) = shared::musig::nonce_gen(&mut net.rng, &sk, &s.key_agg, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    for count in [1, 4, 6] {
        let r = s.on_remote(
            net.now,
            1,
            2,
            &Body::NonceShare(vec![nonce; count]),
            100,
            true,
        );
        assert_eq!(
            r,
            Err(Reject::Count {
                kind: "NONCE_SHARE",
                expected: 5,
                actual: count
            })
        );
    }
    // Five is right.
    let r = s.on_remote(net.now, 1, 2, &Body::NonceShare(vec![nonce; 5]), 100, true);
    assert!(r.is_ok(), "{r:?}");
}

#[test]
fn a_batch_survives_the_store_in_every_phase() {
    let mut net = Net::new(3, false);
    // Node 1 never sees partial signatures: it stays in PARTIAL_SIG_EXCHANGE.
    net.lose = Some((1, "PARTIAL_SIG_SHARE"));
    let ctx = batch_context(&net, SignatureFormat::Bip340, bip340_messages());
    let id = net.create_and_run(ctx);
    let keys = |i: usize| vec![net.keys[i]];
    for (i, want) in [(0, Phase::Complete), (1, Phase::PartialSigExchange)] {
        let rec = net.cores[i].record(id).unwrap_or_else(|| panic!("stored"));
        let (restored, _) =
            Session::from_record(id, &rec, &keys(i), net.now).unwrap_or_else(|e| panic!("{e}"));
        let live = net.cores[i]
            .sessions
            .get(&id)
            .unwrap_or_else(|| unreachable!());
        assert_eq!(restored.phase, want);
        assert_eq!(restored.nonces, live.nonces);
        assert_eq!(restored.psigs, live.psigs);
        assert_eq!(restored.signatures, live.signatures);
        assert_eq!(
            restored.aggregate_nonces().ok(),
            live.aggregate_nonces().ok()
        );
        // A record whose values do not match the count of messages is refused.
        let mut bad = rec.clone();
        if let Some(Some(h)) = bad.nonces.first_mut() {
            h.truncate(h.len() - 132);
        }
        assert!(Session::from_record(id, &bad, &keys(i), net.now).is_err());
    }
    // Restored into a fresh core, it resumes where it was.
    let rec = net.cores[1].record(id).unwrap_or_else(|| panic!("stored"));
    let mut fresh = Net::new(3, false);
    let mut fx = Vec::new();
    fresh.cores[1].restore(net.now, vec![(id.0, rec)], Vec::new(), &mut fx);
    let v = fresh.cores[1]
        .session(id)
        .unwrap_or_else(|| panic!("restored"));
    assert_eq!(v.phase, Phase::PartialSigExchange);
    assert_eq!(v.nonce_keys.len(), 3);
}

/// What peers can make a node hold is bounded as before batches: a peer's unjoined batch
/// sessions count by their values in its budget, and messages kept for unknown sessions by
/// the values they carry.
#[test]
fn a_peer_s_batches_count_by_their_values() {
    use super::super::{MAX_ORPHAN_VALUES, MAX_UNJOINED_PER_PEER};
    use shared::wire::{Header, Message};
    let mut net = Net::new(2, true);
    let now = net.now;
    let from = net.peers[1];
    let messages: Vec<Vec<u8>> = (0..256u16).map(|i| i.to_be_bytes().repeat(16)).collect();
    // Two signers, 256 messages: 512 values, the weight of 6 sessions.
    let weight = Session::weight_of(2, 256);
    assert_eq!(weight, 6);
    assert_eq!(Session::weight_of(100, 1), 1);
    let fits = MAX_UNJOINED_PER_PEER / weight;
    for k in 0..fits + 2 {
        let at = now + i64::try_from(k).unwrap_or(0);
        let mut ctx = batch_context(&net, SignatureFormat::Bip340, messages.clone());
        ctx.batch[0] = vec![u8::try_from(k).unwrap_or(0); 32];
        let mut fx = Vec::new();
        net.cores[1]
            .create(at, ctx, None, None, &mut fx)
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(announce) = fx.iter().find_map(|e| match e {
            Effect::Send { bytes, .. } => Some(bytes.clone()),
            _ => None,
        }) else {
            panic!("no announcement")
        };
        let r = net.cores[0].on_direct(at, from, Frame::Bytes(&announce), &mut Vec::new());
        if k < fits {
            assert!(r.is_ok(), "batch {k}: {r:?}");
        } else {
            assert!(
                matches!(&r, Err(e) if e.0 == shared::security::Reason::TooManySessions),
                "batch {k}: {r:?}"
            );
        }
    }
    // Messages of 256 nonces for unknown sessions: kept up to MAX_ORPHAN_VALUES values.
    let ctx = batch_context(&net, SignatureFormat::Bip340, messages);
    let sk = SecretKey::from_bytes(&[2; 32]).unwrap_or_else(|_| unreachable!());
    let key_agg = ctx.key_agg().unwrap_or_else(|e| panic!("{e}"));
    let (_, nonce) = shared::musig::nonce_gen(&mut net.rng, &sk, &key_agg, &[])
        .unwrap_or_else(|e| panic!("{e}"));
    let kept = MAX_ORPHAN_VALUES / 256;
    for k in 0..kept + 1 {
        let msg = Message {
            header: Header {
                // 64 per unknown session (MAX_ORPHANS_PER_SESSION).
                session_id: SessionId([u8::try_from(k / 64).unwrap_or(0xFF); 16]),
                sender: net.keys[1],
                sequence: 2,
                timestamp_ms: now,
            },
            body: Body::NonceShare(vec![nonce; 256]),
        };
        let bytes = net.cores[1]
            .envelope(&msg.to_pb(), &net.keys[1])
            .unwrap_or_else(|e| panic!("{e}"));
        let r = net.cores[0].on_direct(now, from, Frame::Bytes(&bytes), &mut Vec::new());
        if k < kept {
            assert!(r.is_ok(), "message {k}: {r:?}");
        } else {
            assert!(
                matches!(&r, Err(e) if e.0 == shared::security::Reason::UnknownSession),
                "message {k}: {r:?}"
            );
        }
    }
    // Room again once they expire.
    net.cores[0].on_cleanup(now + super::super::ORPHAN_TTL_MS, &mut Vec::new());
    assert_eq!(net.cores[0].orphan_values, 0);
}

/// Finished sessions leave memory, oldest first, once they hold more values than the setting
/// allows (they are read from the store from then on), whatever their age.
#[test]
fn finished_batches_leave_memory_by_their_values() {
    let mut s = settings(false);
    // Two finished batches of 3 signers × 5 messages.
    s.finished_in_memory_values = 30;
    let mut net = Net::with_settings(3, s);
    let mut ids = Vec::new();
    for k in 0..4u8 {
        net.now += 10;
        let mut messages = bip340_messages();
        messages[0] = vec![k];
        let ctx = batch_context(&net, SignatureFormat::Bip340, messages);
        ids.push(net.create_and_run(ctx));
    }
    for c in &mut net.cores {
        for id in &ids {
            assert_eq!(c.session(*id).map(|v| v.phase), Some(Phase::Complete));
        }
        c.on_cleanup(net.now + 1, &mut Vec::new());
        let held: Vec<bool> = ids.iter().map(|id| c.session(*id).is_some()).collect();
        assert_eq!(held, [false, false, true, true]);
    }
}
