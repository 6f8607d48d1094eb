//! Hostile inputs over real libp2p: every kind of bad message is refused and counted against
//! its sender; a wrong partial signature is blamed on its signer by every honest node; a
//! participant that dies ends the session by timeout without any nonce being used twice.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::{Party, context, msg, now_ms, wait_event, wait_until};
use coordinator_svc::node::NodeEvent;
use coordinator_svc::session::Phase;
use libp2p::PeerId;
use prost::Message as _;
use shared::election::SessionId;
use shared::musig::SignatureFormat;
use shared::wire::pb;

fn join() -> pb::wire_message::Body {
    pb::wire_message::Body::Join(pb::SessionJoin {})
}

/// Send `m` as `from` (a key of `party`) to `to`, return the answer text (empty = accepted).
async fn send(party: &Party, to: PeerId, m: pb::WireMessage) -> String {
    let env = party.node.envelope(m, party.key).await.unwrap();
    String::from_utf8(party.node.send_raw(to, env).await.unwrap()).unwrap()
}

async fn count(p: &Party, from: PeerId, reason: &str) -> u64 {
    p.node
        .rejections()
        .await
        .unwrap()
        .get(&from)
        .and_then(|m| m.get(reason))
        .copied()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_refused_and_counted() {
    // A creates a session with B and C; C never joins, so the session stays in INIT.
    let a = Party::start(31, common::fast_config()).await;
    let mut b = Party::start(32, common::fast_config()).await;
    let c = Party::start(33, common::fast_config()).await;
    let x = Party::start(34, common::fast_config()).await; // outsider with its own attested key
    for (p, q) in [(&a, &b), (&a, &c), (&b, &c), (&x, &a), (&x, &b)] {
        common::connect(p, q).await;
    }
    let ctx = context(&[&a, &b, &c], SignatureFormat::Bip340, false, [5; 32]);
    let view = a
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap();
    let id = view.id;
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    let (pa, pb_, px) = (a.node.peer_id(), b.node.peer_id(), x.node.peer_id());
    // B joins by hand (its node would send its nonce share, which says the join): a Join is
    // B's sequence 1, and A holds no nonce of B's.
    assert_eq!(send(&b, pa, msg(id, b.key, 1, now_ms(), join())).await, "");
    wait_until(|| async { a.node.session(id).await.unwrap().unwrap().joined.len() == 2 }).await;

    // Replayed message: sequence 1 again (a nonce share, allowed in INIT).
    let nonce = shared::musig::nonce_gen(
        &mut rand::rng(),
        &b.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let share = || {
        pb::wire_message::Body::NonceShare(pb::NonceShare {
            public_nonce: nonce.to_bytes().to_vec(),
        })
    };
    let r = send(&b, pa, msg(id, b.key, 1, now_ms(), share())).await;
    assert!(r.contains("replay_or_sequence"), "{r}");
    // Too far ahead: sequence 1 + 101.
    let r = send(&b, pa, msg(id, b.key, 102, now_ms(), share())).await;
    assert!(r.contains("replay_or_sequence"), "{r}");
    assert_eq!(count(&a, pb_, "replay_or_sequence").await, 2);
    // Out of phase: a partial signature in INIT. A joined with the creation (its phase is
    // NONCE_EXCHANGE, where a partial signature that comes early is kept); C never joins.
    let psig = pb::wire_message::Body::PartialSigShare(pb::PartialSigShare {
        partial_signature: vec![1; 32],
    });
    let pc = c.node.peer_id();
    wait_until(|| async { c.node.session(id).await.unwrap().is_some() }).await;
    let r = send(&b, pc, msg(id, b.key, 2, now_ms(), psig)).await;
    assert!(r.contains("out_of_phase"), "{r}");
    assert_eq!(count(&c, pb_, "out_of_phase").await, 1);
    assert_eq!(
        c.node.session(id).await.unwrap().unwrap().phase,
        Phase::Init
    );
    // Stale and future timestamps.
    let r = send(&b, pa, msg(id, b.key, 3, now_ms() - 6 * 60_000, share())).await;
    assert!(r.contains("timestamp_skew"), "{r}");
    let r = send(&b, pa, msg(id, b.key, 3, now_ms() + 6 * 60_000, share())).await;
    assert!(r.contains("timestamp_skew"), "{r}");
    assert_eq!(count(&a, pb_, "timestamp_skew").await, 2);
    // Non-member: X is attested for its own key, which is not in the session.
    let r = send(&x, pa, msg(id, x.key, 1, now_ms(), join())).await;
    assert!(r.contains("not_member"), "{r}");
    // Unattested key: X claims to speak for B's key.
    let env = pb::SignedEnvelope::decode(
        x.node
            .envelope(msg(id, x.key, 1, now_ms(), join()), x.key)
            .await
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let mut claim = msg(id, b.key, 50, now_ms(), join());
    claim.sender_key = b.key.to_vec();
    let mut forged = x.node.envelope(claim, x.key).await.unwrap();
    let r = String::from_utf8(x.node.send_raw(pa, forged.clone()).await.unwrap()).unwrap();
    assert!(r.contains("unattested"), "{r}");
    // Altered envelope: flip a payload byte of a valid one (signature no longer matches).
    let mut altered = env.clone();
    altered.payload[5] ^= 1;
    let r = String::from_utf8(x.node.send_raw(pa, altered.encode_to_vec()).await.unwrap()).unwrap();
    assert!(r.contains("invalid_signature"), "{r}");
    // Someone else's envelope replayed by X: the envelope key is not the sending peer.
    let stolen = b
        .node
        .envelope(msg(id, b.key, 60, now_ms(), share()), b.key)
        .await
        .unwrap();
    let r = String::from_utf8(x.node.send_raw(pa, stolen).await.unwrap()).unwrap();
    assert!(r.contains("bad_envelope"), "{r}");
    // Not canonical: an unknown field appended.
    forged.extend_from_slice(&[0x98, 0x06, 0x01]);
    let r = String::from_utf8(x.node.send_raw(pa, forged).await.unwrap()).unwrap();
    assert!(r.contains("non_canonical"), "{r}");
    // Oversized: the codec refuses to read it; it is answered and counted.
    let r = String::from_utf8(x.node.send_raw(pa, vec![0u8; 100_001]).await.unwrap()).unwrap();
    assert!(r.contains("too_large"), "{r}");
    assert_eq!(count(&a, px, "too_large").await, 1);
    // A forged announcement for a session X is not part of: refused (sender not a signer).
    let ann = pb::wire_message::Body::Announce(pb::SessionAnnounce {
        context: Some(ctx.to_pb()),
        election_method: 1,
        created_at_ms: now_ms(),
        entropy: vec![1; 16],
        expires_at_ms: now_ms() + 60_000,
        ..Default::default()
    });
    let fake_id = SessionId::derive(&ctx.signer_keys, &ctx.message, now_ms(), &[1; 16]);
    let r = send(&x, pa, msg(fake_id, x.key, 1, now_ms(), ann)).await;
    assert!(
        r.contains("not_member") || r.contains("session_id_mismatch"),
        "{r}"
    );
    // DHT poisoning: X publishes an altered copy of A's announcement under the real key.
    let mut poisoned =
        pb::SignedEnvelope::decode(a.node.announcement(id).await.unwrap().as_slice()).unwrap();
    let mut inner = pb::WireMessage::decode(poisoned.payload.as_slice()).unwrap();
    if let Some(pb::wire_message::Body::Announce(an)) = inner.body.as_mut() {
        an.expires_at_ms += 1;
    }
    poisoned.payload = inner.encode_to_vec();
    let key = format!("musig2-session:{id}").into_bytes();
    x.node
        .put_record(key, poisoned.encode_to_vec())
        .await
        .unwrap();
    wait_until(|| async {
        count(&a, px, "invalid_signature").await + count(&b, px, "invalid_signature").await >= 2
    })
    .await;
    // Every refusal left the session as it was: A's own nonce is the only one in.
    wait_until(|| async {
        !a.node
            .session(id)
            .await
            .unwrap()
            .unwrap()
            .nonce_keys
            .is_empty()
    })
    .await;
    let v = a.node.session(id).await.unwrap().unwrap();
    assert_eq!(v.phase, Phase::NonceExchange);
    assert_eq!(v.joined.len(), 2);
    assert_eq!(v.nonce_keys, vec![a.key]);
    let all = a.node.rejections().await.unwrap();
    let total: u64 = all.values().flat_map(|m| m.values()).sum();
    assert!(total >= 11, "{all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_partial_signature_is_blamed_on_every_honest_node() {
    let mut a = Party::start(41, common::fast_config()).await;
    let mut b = Party::start(42, common::fast_config()).await;
    let m = Party::start(43, common::fast_config()).await; // malicious: driven by hand
    common::connect_refs(&[&a, &b, &m]).await;
    let ctx = context(&[&a, &b, &m], SignatureFormat::Lotus, false, [6; 32]);
    let id = a
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap()
        .id;
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    b.node.join_session(id).await.unwrap();
    wait_until(|| async { a.node.session(id).await.unwrap().unwrap().joined.len() == 2 }).await;
    let (pa, pb_) = (a.node.peer_id(), b.node.peer_id());
    // M joins and shares a real nonce from its signer, then a wrong partial signature.
    for to in [pa, pb_] {
        assert_eq!(send(&m, to, msg(id, m.key, 1, now_ms(), join())).await, "");
    }
    let nonce = m.signer.nonce(&m.key, &id, &ctx, false).await.unwrap();
    for to in [pa, pb_] {
        let body = pb::wire_message::Body::NonceShare(pb::NonceShare {
            public_nonce: nonce.to_bytes().to_vec(),
        });
        assert_eq!(send(&m, to, msg(id, m.key, 2, now_ms(), body)).await, "");
    }
    for to in [pa, pb_] {
        let body = pb::wire_message::Body::PartialSigShare(pb::PartialSigShare {
            partial_signature: [7u8; 32].to_vec(),
        });
        let _ = send(&m, to, msg(id, m.key, 3, now_ms(), body)).await;
    }
    for p in [&mut a, &mut b] {
        let info = wait_event(&mut p.events, |e| match e {
            NodeEvent::Aborted { id: i, info } if *i == id => Some(info.clone()),
            NodeEvent::Complete { id: i, .. } if *i == id => {
                panic!("completed with a wrong partial signature")
            }
            _ => None,
        })
        .await;
        // Found here, or (when the other honest node's abort arrived first) reported as its
        // claim, never as a culprit this node did not verify.
        let claimed = info.is_claim() && info.reason.contains(&hex::encode(m.key));
        assert!(
            info.culprits == vec![m.key] || (info.culprits.is_empty() && claimed),
            "{:?}: {}",
            info.culprits,
            info.reason
        );
        assert!(
            info.reason.contains("invalid partial signature"),
            "{}",
            info.reason
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_participant_ends_the_session_by_timeout_and_no_nonce_signs_twice() {
    let mut a = Party::start(51, common::fast_config()).await;
    let mut b = Party::start(52, common::fast_config()).await;
    let mut c = Party::start(53, common::fast_config()).await;
    common::connect_refs(&[&a, &b, &c]).await;
    let ctx = context(&[&a, &b, &c], SignatureFormat::Bip340, true, [8; 32]);
    let id = a
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap()
        .id;
    for p in [&mut b, &mut c] {
        wait_event(&mut p.events, |e| {
            matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
        })
        .await;
    }
    b.node.join_session(id).await.unwrap();
    c.node.join_session(id).await.unwrap();
    // Kill C (node and signer) the moment round 1 starts there.
    wait_event(&mut c.events, |e| {
        matches!(e, NodeEvent::PhaseChanged { id: i, to: Phase::NonceExchange, .. } if *i == id)
            .then_some(())
    })
    .await;
    c.stop();
    for p in [&mut a, &mut b] {
        let info = wait_event(&mut p.events, |e| match e {
            NodeEvent::Aborted { id: i, info } if *i == id => Some(info.clone()),
            NodeEvent::Complete { id: i, .. } if *i == id => panic!("completed without C"),
            _ => None,
        })
        .await;
        assert!(info.reason.contains("stuck in phase"), "{}", info.reason);
        assert!(
            info.reason.contains(&hex::encode(c.key)),
            "names the missing signer: {}",
            info.reason
        );
    }
    // Whether A got to round 1 depends on when C died. If it had its nonce, the abort released
    // it at the signer (ReleaseNonce): no partial signature, ever, and no new nonce replaces
    // it. If not, the nonce made now can produce at most one partial signature.
    let issued = a.node.session(id).await.unwrap().unwrap().local_nonces;
    let (a_nonce, most) = match issued.first() {
        Some(n) => {
            wait_until(|| async { a.signer.nonce(&a.key, &id, &ctx, false).await.is_err() }).await;
            (shared::musig::PubNonce::from_slice(n).unwrap(), 0)
        }
        None => (a.signer.nonce(&a.key, &id, &ctx, false).await.unwrap(), 1),
    };
    let mut fake = shared::musig::nonce_gen(
        &mut rand::rng(),
        &c.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let b_nonce = shared::musig::nonce_gen(
        &mut rand::rng(),
        &b.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let mut ok = 0;
    for _ in 0..2 {
        let mut list = Vec::new();
        for k in &ctx.signer_keys {
            list.push(if *k == a.key {
                a_nonce
            } else if *k == b.key {
                b_nonce
            } else {
                fake
            });
        }
        if a.signer
            .partial_sign(&a.key, &id, &ctx, &list)
            .await
            .is_ok()
        {
            ok += 1;
        }
        fake = shared::musig::nonce_gen(
            &mut rand::rng(),
            &c.secret,
            &ctx.key_agg().unwrap(),
            &ctx.message,
        )
        .unwrap()
        .1;
    }
    assert!(
        ok <= most,
        "{ok} partial signatures from one nonce (at most {most})"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Ten invalid signatures get a peer blacklisted: its connection is closed, new ones are
/// refused, events are emitted, and the ban survives a restart of the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_sending_invalid_signatures_is_banned_and_the_ban_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let secret = shared::musig::SecretKey::from_bytes(&[0x35; 32]).unwrap();
    let (ep, _signer_stop) = common::start_signer(dir.path(), &secret).await;
    let identity = libp2p::identity::Keypair::generate_ed25519();
    let start = |stop: tokio_util::sync::CancellationToken| {
        let (ep, identity, path) = (ep.clone(), identity.clone(), dir.path().join("a.redb"));
        async move {
            let signer = coordinator_svc::signer::SignerClient::connect_lazy(&ep).unwrap();
            let store = coordinator_svc::store::Store::open(&path).unwrap();
            coordinator_svc::node::start(common::fast_config(), identity, signer, store, stop)
                .await
                .unwrap()
        }
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let (a, task) = start(stop.clone()).await;
    let mut a_events = a.events();
    let x = Party::start(36, common::fast_config()).await;
    let a_addr = a.info().await.unwrap().listen_addresses[0].clone();
    x.node.connect(a_addr).await.unwrap();
    let pa = a.peer_id();
    let px = x.node.peer_id();
    wait_until(|| async { a.peer_keys().await.unwrap().contains_key(&px) }).await;
    let good = pb::SignedEnvelope::decode(
        x.node
            .envelope(msg(SessionId([1; 16]), x.key, 1, now_ms(), join()), x.key)
            .await
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    for i in 0..10u8 {
        let mut bad = good.clone();
        bad.payload[3] ^= i + 1;
        let _ = x.node.send_raw(pa, bad.encode_to_vec()).await;
    }
    let reason = wait_event(&mut a_events, |e| match e {
        NodeEvent::PeerBlacklisted { peer, reason } if *peer == px => Some(reason.clone()),
        _ => None,
    })
    .await;
    assert!(reason.contains("invalid signatures"), "{reason}");
    wait_until(|| async { a.info().await.unwrap().connected_peers == 0 }).await;
    assert!(
        x.node.send_raw(pa, good.encode_to_vec()).await.is_err(),
        "the banned peer is disconnected"
    );
    let status = a
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer == px)
        .unwrap();
    assert!(status.ban.as_ref().is_some_and(|b| b.until_ms.is_none()));
    assert!(status.score < 50);
    // Restart A on the same store: the ban holds, the dial is refused.
    stop.cancel();
    let _ = task.await;
    let stop = tokio_util::sync::CancellationToken::new();
    let (a, _task) = start(stop.clone()).await;
    let a_addr = a.info().await.unwrap().listen_addresses[0].clone();
    // The handshake may finish on X's side before A's block list drops it; nothing gets through.
    let _ = x.node.connect(a_addr).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        a.info().await.unwrap().connected_peers,
        0,
        "a banned peer cannot reconnect after a restart"
    );
    assert!(x.node.send_raw(pa, good.encode_to_vec()).await.is_err());
    assert!(!a.peer_keys().await.unwrap().contains_key(&px));
    assert!(
        a.peers()
            .await
            .unwrap()
            .iter()
            .any(|p| p.peer == px && p.ban.is_some())
    );
    // Lifting the ban lets it back in.
    a.unblacklist(px).await.unwrap();
    let a_addr = a.info().await.unwrap().listen_addresses[0].clone();
    x.node.connect(a_addr).await.unwrap();
    stop.cancel();
}

/// A peer flooding an honest node with junk does not stop a concurrent honest session; the
/// flooder is cut off once its refusals cross the spam threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_honest_session_completes_while_a_peer_floods() {
    let mut a = Party::start(37, common::fast_config()).await;
    let mut b = Party::start(38, common::fast_config()).await;
    let mut c = Party::start(39, common::fast_config()).await;
    let x = Party::start(40, common::fast_config()).await;
    common::connect_refs(&[&a, &b, &c]).await;
    common::connect(&x, &b).await;
    let (pb_, px) = (b.node.peer_id(), x.node.peer_id());
    let flooder = x.node.clone();
    let xkey = x.key;
    let flood = tokio::spawn(async move {
        let mut sent = 0u32;
        loop {
            let m = msg(SessionId([9; 16]), xkey, 1, now_ms() - 10 * 60_000, join());
            let Ok(env) = flooder.envelope(m, xkey).await else {
                break;
            };
            if flooder.send_raw(pb_, env).await.is_err() {
                break;
            }
            sent += 1;
        }
        sent
    });
    let ctx = context(&[&a, &b, &c], SignatureFormat::Lotus, false, [0x44; 32]);
    let id = a.node.create_session(ctx, None, None).await.unwrap().id;
    for p in [&mut b, &mut c] {
        wait_event(&mut p.events, |e| {
            matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
        })
        .await;
        p.node.join_session(id).await.unwrap();
    }
    for p in [&mut a, &mut b, &mut c] {
        wait_event(&mut p.events, |e| match e {
            NodeEvent::Complete { id: i, .. } if *i == id => Some(()),
            NodeEvent::Aborted { id: i, info } if *i == id => panic!("aborted: {}", info.reason),
            _ => None,
        })
        .await;
    }
    let sent = tokio::time::timeout(std::time::Duration::from_secs(20), flood)
        .await
        .unwrap()
        .unwrap();
    assert!(sent >= 49, "the flood was cut off after {sent} messages");
    let status = b
        .node
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer == px)
        .unwrap();
    assert!(status.ban.is_some(), "{status:?}");
    assert!(status.record.spam_events >= 50);
}

/// A peer may speak for at most 10 keys: an eleventh attested key is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_claiming_more_than_ten_keys_is_refused() {
    let b = Party::start(45, common::fast_config()).await;
    let dir = tempfile::tempdir().unwrap();
    let secrets: Vec<shared::musig::SecretKey> = (0..11u8)
        .map(|i| shared::musig::SecretKey::from_bytes(&[0x90 + i; 32]).unwrap())
        .collect();
    let (ep, _stop) = common::start_signer_with(dir.path(), &secrets).await;
    let signer = coordinator_svc::signer::SignerClient::connect_lazy(&ep).unwrap();
    let store = coordinator_svc::store::Store::open(&dir.path().join("x.redb")).unwrap();
    let identity = libp2p::identity::Keypair::generate_ed25519();
    let stop = tokio_util::sync::CancellationToken::new();
    let (x, _task) = coordinator_svc::node::start(
        common::fast_config(),
        identity.clone(),
        signer.clone(),
        store,
        stop.clone(),
    )
    .await
    .unwrap();
    assert_eq!(
        x.keys().len(),
        10,
        "the node itself speaks for at most 10 keys"
    );
    x.connect(b.addr().await).await.unwrap();
    let px = x.peer_id();
    wait_until(|| async {
        b.node
            .peer_keys()
            .await
            .unwrap()
            .get(&px)
            .is_some_and(|k| k.len() == 10)
    })
    .await;
    // The eleventh key, attested by the same signer, in a hand-made hello.
    let eleventh = secrets
        .iter()
        .map(|s| s.public_key())
        .find(|k| !x.keys().contains(k))
        .unwrap();
    let expires = now_ms() + 60_000;
    let sig = signer
        .attest(&eleventh, &px.to_bytes(), expires)
        .await
        .unwrap();
    let att = pb::PeerAttestation {
        signer_key: eleventh.to_vec(),
        peer_id: px.to_bytes(),
        expires_at_ms: expires,
        signature: sig.to_vec(),
    };
    let hello = pb::wire_message::Body::Hello(pb::PeerHello {
        attestations: vec![att],
    });
    let first = x.keys()[0];
    let env = x
        .envelope(
            msg(SessionId([0; 16]), first, u64::MAX / 2, now_ms(), hello),
            first,
        )
        .await
        .unwrap();
    let answer = String::from_utf8(x.send_raw(b.node.peer_id(), env).await.unwrap()).unwrap();
    assert!(answer.contains("too_many_keys"), "{answer}");
    assert_eq!(b.node.peer_keys().await.unwrap()[&px].len(), 10);
    stop.cancel();
}

/// Honest duplicates are not offences (issue: honest restarts got peers banned). A peer that
/// restarts re-sends its stored, byte-identical messages; concurrent closes make aborts cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_duplicates_and_late_aborts_cost_nothing() {
    let a = Party::start(41, common::fast_config()).await;
    let mut b = Party::start(42, common::fast_config()).await;
    let c = Party::start(43, common::fast_config()).await;
    for (p, q) in [(&a, &b), (&a, &c), (&b, &c)] {
        common::connect(p, q).await;
    }
    let ctx = context(&[&a, &b, &c], SignatureFormat::Bip340, false, [6; 32]);
    let id = a
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap()
        .id;
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    let pb_ = b.node.peer_id();
    // B joins by hand (its node would send its own nonce share): B's sequence 1.
    let pa = a.node.peer_id();
    assert_eq!(send(&b, pa, msg(id, b.key, 1, now_ms(), join())).await, "");
    wait_until(|| async { a.node.session(id).await.unwrap().unwrap().joined.len() == 2 }).await;
    // B's nonce share (sequence 2), then the very same bytes again, as after B's restart.
    let nonce = shared::musig::nonce_gen(
        &mut rand::rng(),
        &b.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let share = msg(
        id,
        b.key,
        2,
        now_ms(),
        pb::wire_message::Body::NonceShare(pb::NonceShare {
            public_nonce: nonce.to_bytes().to_vec(),
        }),
    );
    let env = b.node.envelope(share, b.key).await.unwrap();
    assert_eq!(
        String::from_utf8(b.node.send_raw(pa, env.clone()).await.unwrap()).unwrap(),
        ""
    );
    for _ in 0..60 {
        // Sixty copies: before the fix, 50 of these blacklisted an honest peer.
        let r = String::from_utf8(b.node.send_raw(pa, env.clone()).await.unwrap()).unwrap();
        assert_eq!(r, "", "a byte-identical copy must be acknowledged");
    }
    let rejected: u64 = a
        .node
        .rejections()
        .await
        .unwrap()
        .get(&pb_)
        .map(|m| m.values().sum())
        .unwrap_or(0);
    assert_eq!(rejected, 0, "duplicates counted against an honest peer");
    // A repeated join is as harmless; a *different* nonce from B is equivocation, refused.
    assert_eq!(send(&b, pa, msg(id, b.key, 3, now_ms(), join())).await, "");
    let other = shared::musig::nonce_gen(
        &mut rand::rng(),
        &b.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let equivocation = msg(
        id,
        b.key,
        4,
        now_ms(),
        pb::wire_message::Body::NonceShare(pb::NonceShare {
            public_nonce: other.to_bytes().to_vec(),
        }),
    );
    let r = send(&b, pa, equivocation).await;
    assert!(r.contains("duplicate"), "{r}");
    // Close on A, then B's abort arrives after: a no-op, not an offence.
    let phase = a.node.close_session(id, "closed by A").await.unwrap();
    assert!(phase.is_terminal(), "{phase:?}");
    let abort = msg(
        id,
        b.key,
        5,
        now_ms(),
        pb::wire_message::Body::Abort(pb::SessionAbort {
            code: pb::AbortCode::Closed as i32,
            reason: "closed by B too".into(),
            culprits: vec![],
        }),
    );
    assert_eq!(send(&b, pa, abort).await, "");
    assert_eq!(count(&a, pb_, "out_of_phase").await, 0);
    assert_eq!(
        count(&a, pb_, "duplicate").await,
        1,
        "only the equivocation counted"
    );
    let _ = c;
}

/// Contributions that arrive after the session ended here (our signer was down, the session was
/// closed) come from members who have not heard of it yet: no effect, no offence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contributions_to_an_ended_session_cost_nothing() {
    let a = Party::start(44, common::fast_config()).await;
    let mut b = Party::start(45, common::fast_config()).await;
    let c = Party::start(46, common::fast_config()).await;
    for (p, q) in [(&a, &b), (&a, &c), (&b, &c)] {
        common::connect(p, q).await;
    }
    let ctx = context(&[&a, &b, &c], SignatureFormat::Bip340, false, [8; 32]);
    let id = a
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap()
        .id;
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    let phase = a.node.close_session(id, "ended here").await.unwrap();
    assert!(phase.is_terminal());
    let pa = a.node.peer_id();
    let nonce = shared::musig::nonce_gen(
        &mut rand::rng(),
        &b.secret,
        &ctx.key_agg().unwrap(),
        &ctx.message,
    )
    .unwrap()
    .1;
    let bodies = [
        join(),
        pb::wire_message::Body::NonceShare(pb::NonceShare {
            public_nonce: nonce.to_bytes().to_vec(),
        }),
        pb::wire_message::Body::PartialSigShare(pb::PartialSigShare {
            partial_signature: vec![1; 32],
        }),
    ];
    // Sixty of them (before the fix, fifty blacklisted the honest sender).
    for i in 0..60u64 {
        let body = bodies[(i % 3) as usize].clone();
        let r = send(&b, pa, msg(id, b.key, i + 1, now_ms(), body)).await;
        assert_eq!(r, "", "message {i}");
    }
    assert_eq!(count(&a, b.node.peer_id(), "out_of_phase").await, 0);
    let _ = c;
}
