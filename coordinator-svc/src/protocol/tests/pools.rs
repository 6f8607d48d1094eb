//! Nonce pools (one-round signing): slots fill from every opted-in member, a one-round session
//! takes one slot and signs in one round, every slot serves one session only (also after a
//! restore), a member without the opt-in refuses the slots, a peer cannot use another's slot,
//! and a signer that lost its pooled nonces aborts the session with its reason and the pool
//! refills.

use super::*;
use crate::protocol::ErrorReason;
use crate::protocol::pools::PoolStatus;

fn pool_context(net: &Net) -> SessionContext {
    let mut c = net.context();
    c.message.clear();
    c
}

fn enable(net: &mut Net, node: usize, size: usize) -> PoolStatus {
    let mut fx = Vec::new();
    let ctx = pool_context(net);
    let st = net.cores[node]
        .set_pool(net.now, ctx, size, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(node, fx);
    st
}

/// Every node enables the pool; the slots refused while some had not yet are made again after
/// the back-off.
fn enable_all(net: &mut Net, size: usize) {
    for i in 0..net.cores.len() {
        enable(net, i, size);
    }
    net.advance(net.now + crate::protocol::pools::REFUSED_BACKOFF_MS + 1);
}

fn status(net: &Net, node: usize) -> PoolStatus {
    net.cores[node].pool_status(&pool_context(net).pool_hash())
}

fn one_round(net: &mut Net, node: usize, msg: u8) -> Result<SessionId, ErrorReason> {
    let mut ctx = net.context();
    ctx.message = vec![msg; 32];
    let mut fx = Vec::new();
    let r = net.cores[node].create_one_round(net.now, ctx, None, None, &mut fx);
    net.run(node, fx);
    r.map(|v| v.id).map_err(|e| e.reason())
}

#[test]
fn one_round_sessions_use_each_slot_once_and_complete_on_every_member() {
    let mut net = Net::new(3, false);
    enable_all(&mut net, 2);
    // Every node keeps two slots of its own ready (every member contributed to each).
    for i in 0..3 {
        assert_eq!(
            status(&net, i),
            PoolStatus {
                size: 2,
                ready: 2,
                filling: 0
            }
        );
    }
    let mut used = std::collections::BTreeSet::new();
    for round in 0..5u8 {
        let node = usize::from(round) % 3;
        let id = one_round(&mut net, node, round).unwrap_or_else(|e| panic!("{e:?}"));
        let slot = net.cores[node].sessions.get(&id).and_then(|s| s.uses_slot);
        let slot = slot.unwrap_or_else(|| panic!("a one-round session"));
        assert!(used.insert(slot), "slot {slot} used twice");
        for c in &net.cores {
            let v = c.session(id).unwrap_or_else(|| panic!("known everywhere"));
            assert_eq!(v.phase, Phase::Complete);
            let sig = v.signature().unwrap_or_else(|| panic!("signed"));
            shared::musig::verify(v.context.format, &v.output_key, &v.context.message, &sig)
                .unwrap_or_else(|e| panic!("{e}"));
            // The slot is closed on every member (never used again) and refilled.
            assert_eq!(c.session(slot).map(|s| s.phase), Some(Phase::Closed));
        }
        assert_eq!(status(&net, node).ready, 2, "refilled");
        // The slot index holds live slots only (ended ones are pruned as the pool refills), so
        // it does not grow with the sessions a pool served.
        for c in &net.cores {
            let indexed: usize = c.pool_slots.values().map(|ids| ids.len()).sum();
            let live = c
                .sessions
                .values()
                .filter(|s| s.pool_slot && !s.phase.is_terminal())
                .count();
            assert_eq!(indexed, live, "round {round}");
        }
    }
    // One round only: no NONCE_SHARE of a one-round session went over the wire.
    let mut last = net.context();
    last.message = vec![9; 32];
    let before = net.delivered.len();
    let id = one_round(&mut net, 0, 9).unwrap_or_else(|e| panic!("{e:?}"));
    let kinds: Vec<&str> = net.delivered[before..]
        .iter()
        .filter(|(from, _, b)| {
            crate::envelope::open(b, Some(net.peers[*from]), T0)
                .is_ok_and(|(_, m)| m.header.session_id == id)
        })
        .map(|(from, _, b)| kind(net.peers[*from], b))
        .collect();
    assert!(
        kinds
            .iter()
            .all(|k| *k == "SESSION_ANNOUNCE" || *k == "PARTIAL_SIG_SHARE"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.iter().filter(|k| **k == "PARTIAL_SIG_SHARE").count(),
        6
    );
    for s in &net.signers {
        assert_eq!(s.max_signatures_per_nonce(), 1);
    }
    // A restored node knows its used slots as used: the next session takes another one.
    let mut fresh = Net::new(3, false);
    let records: Vec<([u8; 16], crate::store::SessionRecord)> = net.cores[0]
        .sessions
        .keys()
        .filter_map(|id| Some((id.0, net.cores[0].record(*id)?)))
        .collect();
    let mut fx = Vec::new();
    fresh.cores[0].restore(net.now, records, Vec::new(), &mut fx);
    for s in fresh.cores[0].sessions.values().filter(|s| s.pool_slot) {
        if used.contains(&s.id) {
            assert_eq!(s.phase, Phase::Closed, "a used slot stays used");
        }
    }
}

#[test]
fn without_the_opt_in_a_member_refuses_slots_and_a_peer_cannot_use_anothers_slot() {
    let mut net = Net::new(3, false);
    enable(&mut net, 0, 2);
    enable(&mut net, 1, 2);
    // Node 2's application did not opt in: node 0's slots abort at once, nothing is ready,
    // node 2's signer issued no pooled nonce, and a one-round session is refused.
    assert_eq!(status(&net, 0).ready, 0);
    let slot_aborts = net.cores[0]
        .sessions
        .values()
        .filter(|s| s.pool_slot && s.phase == Phase::Aborted)
        .count();
    assert!(slot_aborts >= 2, "{slot_aborts}");
    assert_eq!(one_round(&mut net, 0, 1), Err(ErrorReason::PoolExhausted));
    // Without an enabled pool at all: refused too, never two rounds instead.
    assert_eq!(one_round(&mut net, 2, 1), Err(ErrorReason::PoolExhausted));
    // With node 2 in, node 0's slots fill (after the back-off).
    enable(&mut net, 2, 1);
    net.advance(net.now + crate::protocol::pools::REFUSED_BACKOFF_MS + 1);
    assert_eq!(status(&net, 0).ready, 2);
    // Node 1 announces a one-round session on node 0's slot: refused by every member.
    let slot = net.cores[0]
        .sessions
        .values()
        .find(|s| s.pool_slot && s.phase == Phase::Pooled && s.creator == net.keys[0])
        .map(|s| s.id)
        .unwrap_or_else(|| panic!("a ready slot"));
    let mut ctx = net.context();
    ctx.message = vec![3; 32];
    let mut fx = Vec::new();
    let r = net.cores[1].create_inner(
        net.now,
        ctx,
        None,
        None,
        None,
        crate::protocol::pools::PoolRole::Uses(slot),
        &mut fx,
    );
    let id = r.map(|v| v.id).unwrap_or_else(|e| panic!("{e}"));
    net.run(1, fx);
    assert_eq!(
        net.cores[0].session(id).map(|s| s.phase),
        Some(Phase::Aborted)
    );
    assert_eq!(
        net.cores[2].session(id).map(|s| s.phase),
        Some(Phase::Aborted)
    );
    // Node 0's slot is untouched where it was refused, and no honest signer signed anything.
    for i in [0, 2] {
        assert_eq!(
            net.cores[i].session(slot).map(|s| s.phase),
            Some(Phase::Pooled)
        );
        assert_eq!(net.signers[i].max_signatures_per_nonce(), 0);
    }
}

#[test]
fn a_signer_restart_aborts_with_its_reason_and_the_pool_refills() {
    let mut net = Net::new(3, false);
    enable_all(&mut net, 2);
    net.signers[1].restart();
    let id = one_round(&mut net, 0, 1).unwrap_or_else(|e| panic!("{e:?}"));
    let v = net.cores[1].session(id).unwrap_or_else(|| panic!("known"));
    assert_eq!(v.phase, Phase::Aborted);
    let reason = v.abort.map(|a| a.reason).unwrap_or_default();
    assert!(reason.contains("no nonce"), "{reason}");
    // Every slot holding a lost nonce was aborted; fresh ones are ready and sign.
    assert_eq!(status(&net, 0).ready, 2);
    let id = one_round(&mut net, 0, 2).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(
        net.cores[2].session(id).map(|s| s.phase),
        Some(Phase::Complete)
    );
}

#[test]
fn a_member_whose_slot_copy_is_still_filling_takes_the_nonces_from_the_announcement() {
    let mut net = Net::new(3, false);
    // Node 1 never hears the others' pooled nonces: its copies of the slots stay in
    // NONCE_EXCHANGE while node 0's are POOLED.
    net.lose = Some((1, "NONCE_SHARE"));
    enable_all(&mut net, 1);
    assert_eq!(status(&net, 0).ready, 1);
    let slot = net.cores[0]
        .sessions
        .values()
        .find(|s| s.pool_slot && s.phase == Phase::Pooled && s.creator == net.keys[0])
        .map(|s| s.id)
        .unwrap_or_else(|| panic!("a ready slot"));
    assert_eq!(
        net.cores[1].session(slot).map(|s| s.phase),
        Some(Phase::NonceExchange)
    );
    let id = one_round(&mut net, 0, 5).unwrap_or_else(|e| panic!("{e:?}"));
    for c in &net.cores {
        assert_eq!(c.session(id).map(|s| s.phase), Some(Phase::Complete));
    }
    // Its copy of the slot is closed: never used again.
    assert_eq!(
        net.cores[1].session(slot).map(|s| s.phase),
        Some(Phase::Closed)
    );
}

/// Found in review: a peer's one-round session starts in PARTIAL_SIG_EXCHANGE before our
/// application joins, and a restore resumed sessions by phase: after a restart the node asked
/// its signer to sign a message its application never approved. A session is only ever signed
/// once the local application joined; a restored, unjoined one waits for it.
#[test]
fn a_restored_one_round_session_is_not_signed_before_the_application_joins() {
    let mut net = Net::new(3, false);
    enable_all(&mut net, 1);
    let id = one_round(&mut net, 0, 6).unwrap_or_else(|e| panic!("{e:?}"));
    // Node 1's record as it was before its application joined.
    let mut rec = net.cores[1].record(id).unwrap_or_else(|| panic!("stored"));
    rec.phase = "PARTIAL_SIG_EXCHANGE".into();
    rec.locally_joined = false;
    rec.joined = vec![false; 3];
    rec.psigs = vec![None; 3];
    rec.signature = None;
    rec.finished_at_ms = None;
    let mut fresh = Net::new(3, false);
    let mut fx = Vec::new();
    fresh.cores[1].restore(net.now, vec![(id.0, rec)], Vec::new(), &mut fx);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::PartialSign { .. })),
        "{fx:?}"
    );
    // Its application joins: now the signer is asked, with the slot's nonces.
    let mut fx = Vec::new();
    let joined = fresh.cores[1].join(net.now, id, &mut fx);
    assert!(matches!(joined, super::super::Pending::Ready(Ok(_))));
    let slot = net.cores[1].sessions.get(&id).and_then(|s| s.uses_slot);
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::PartialSign { nonce_session, .. } if Some(*nonce_session) == slot
    )));
}

/// Found in review: a member could announce slots without limit, each making our signer issue
/// a pooled nonce, until our own pool had no room. At most our pool size plus those filling of
/// one creator's live slots are accepted; more are refused (and the creator backs off).
#[test]
fn a_member_cannot_fill_our_pool_with_its_slots() {
    let mut net = Net::new(3, false);
    enable_all(&mut net, 2);
    let cap = 2 + crate::protocol::pools::MAX_FILLING;
    // Node 0 announces far more slots than its pool size, as a hostile member would.
    let ctx = pool_context(&net);
    for _ in 0..cap + 5 {
        let mut fx = Vec::new();
        let _ = net.cores[0].create_inner(
            net.now,
            ctx.clone(),
            None,
            None,
            None,
            crate::protocol::pools::PoolRole::Slot,
            &mut fx,
        );
        net.run(0, fx);
    }
    let creator = net.keys[0];
    let live = net.cores[1]
        .sessions
        .values()
        .filter(|s| s.pool_slot && s.creator == creator && !s.phase.is_terminal())
        .count();
    assert!(live <= cap, "{live} live slots of one creator (cap {cap})");
    let refused = net.cores[1]
        .sessions
        .values()
        .filter(|s| s.pool_slot && s.creator == creator && s.phase == Phase::Aborted)
        .count();
    assert!(refused >= 5, "{refused} refused");
}
