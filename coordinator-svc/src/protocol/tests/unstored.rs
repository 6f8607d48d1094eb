//! Peers' contributions that complete nothing are written with the session's next record,
//! not each in a commit of its own, and their answers wait for that write
//! ([`crate::protocol::unstored`]).

use super::*;

/// A 3-party session in which node 2 got none of the others' nonces (it holds its own, and
/// their partial signatures wait for the nonces), and the envelopes of nodes 0 and 1's nonce
/// shares (the same bytes went to every member). Sequence numbers are not checked here: the
/// partial signatures got ahead of the lost nonces, which lanes prevent in the real network.
fn nonces_missing_at_node_2() -> (Net, SessionId, [Vec<u8>; 2]) {
    let (net, id) = session_losing_nonces_at_node_2(Settings {
        enable_replay_protection: false,
        ..settings(false)
    });
    let share = |net: &Net, from: usize| {
        net.delivered
            .iter()
            .find(|(f, _, b)| *f == from && kind(net.peers[from], b) == "NONCE_SHARE")
            .map(|(_, _, b)| b.clone())
            .unwrap_or_else(|| panic!("node {from} sent no nonce share"))
    };
    let shares = [share(&net, 0), share(&net, 1)];
    assert_eq!(
        net.cores[2].session(id).map(|s| s.phase),
        Some(Phase::NonceExchange)
    );
    (net, id, shares)
}

/// Node 0 creates a 3-party session that runs to its end, except that node 2 gets none of the
/// others' nonce shares.
fn session_losing_nonces_at_node_2(settings: Settings) -> (Net, SessionId) {
    let mut net = Net::with_settings(3, settings);
    net.lose = Some((2, "NONCE_SHARE"));
    let id = net.create_and_run(net.context());
    net.lose = None;
    (net, id)
}

fn stored_nonces(net: &Net, node: usize, id: SessionId) -> usize {
    net.stores[node]
        .get(&id)
        .map_or(0, |r| r.nonces.iter().flatten().count())
}

fn persisted(fx: &[Effect], id: SessionId) -> Option<usize> {
    fx.iter()
        .position(|e| matches!(e, Effect::Persist { id: i, .. } if *i == id))
}

fn joined_at(fx: &[Effect]) -> Vec<usize> {
    fx.iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Effect::Emit(NodeEvent::Joined { .. })))
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn a_contribution_that_completes_nothing_is_written_with_the_one_that_does_and_answered_after() {
    let (mut net, id, [from_0, from_1]) = nonces_missing_at_node_2();
    assert_eq!(
        stored_nonces(&net, 2, id),
        0,
        "its own nonce left without a write of its own"
    );
    assert_eq!(net.cores[2].unstored_sessions(), 1);
    let now = net.now;

    // Node 0's nonce: nothing written, the answer waits, and so does the "joined" event.
    let mut fx = Vec::new();
    let r = net.cores[2].on_direct(now, net.peers[0], Frame::Bytes(&from_0), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(persisted(&fx, id), None, "{fx:?}");
    assert!(joined_at(&fx).is_empty(), "{fx:?}");
    assert_eq!(net.cores[2].take_hold(), Some(id));
    assert_eq!(net.cores[2].take_hold(), None, "taken once");

    // The same frame again (a retry of an unanswered request): held as well, nothing applied.
    let mut fx = Vec::new();
    let r = net.cores[2].on_direct(now, net.peers[0], Frame::Bytes(&from_0), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(persisted(&fx, id), None, "{fx:?}");
    assert_eq!(net.cores[2].take_hold(), Some(id));

    // Node 1's nonce completes the round: one record with all three nonces, then the events
    // that waited, then the partial signature request; this answer does not wait.
    let mut fx = Vec::new();
    let r = net.cores[2].on_direct(now, net.peers[1], Frame::Bytes(&from_1), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(net.cores[2].take_hold(), None);
    let at = persisted(&fx, id).unwrap_or_else(|| panic!("not written: {fx:?}"));
    let Some(Effect::Persist { record, .. }) = fx.get(at) else {
        unreachable!()
    };
    assert_eq!(record.nonces.iter().flatten().count(), 3);
    let joined = joined_at(&fx);
    // The creator's announcement said its join; node 1's nonce says node 1's.
    assert_eq!(joined.len(), 1, "node 1 joined: {fx:?}");
    assert!(
        joined.iter().all(|j| *j > at),
        "events after the write: {fx:?}"
    );
    assert!(
        fx.iter().any(|e| matches!(e, Effect::PartialSign { .. })),
        "{fx:?}"
    );
    assert_eq!(net.cores[2].unstored_sessions(), 0);
}

#[test]
fn a_held_contribution_is_written_within_the_hold_time_when_nothing_completes_it() {
    let (mut net, id, [_, from_1]) = nonces_missing_at_node_2();
    let now = net.now;
    let mut fx = Vec::new();
    let r = net.cores[2].on_direct(now, net.peers[1], Frame::Bytes(&from_1), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert!(joined_at(&fx).is_empty(), "{fx:?}");
    assert_eq!(net.cores[2].take_hold(), Some(id));
    let due = now + crate::protocol::unstored::HOLD_MS;
    assert!(
        net.cores[2].next_deadline().is_some_and(|d| d <= due),
        "{:?}",
        net.cores[2].next_deadline()
    );
    let mut fx = Vec::new();
    net.cores[2].on_deadline(due - 1, &mut fx);
    assert_eq!(persisted(&fx, id), None, "not before the hold time: {fx:?}");
    net.cores[2].on_deadline(due, &mut fx);
    let at = persisted(&fx, id).unwrap_or_else(|| panic!("not written: {fx:?}"));
    let Some(Effect::Persist { record, .. }) = fx.get(at) else {
        unreachable!()
    };
    assert_eq!(record.nonces.iter().flatten().count(), 2);
    assert!(joined_at(&fx).iter().all(|j| *j > at), "{fx:?}");
    assert_eq!(joined_at(&fx).len(), 1, "{fx:?}");
    assert_eq!(net.cores[2].unstored_sessions(), 0);
    // A copy now finds it stored: answered with its batch.
    let mut fx = Vec::new();
    let r = net.cores[2].on_direct(due, net.peers[1], Frame::Bytes(&from_1), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(net.cores[2].take_hold(), None);
}

/// Our signer's nonce left before any write held it (`Core::apply_own`): node 2 sent its nonce,
/// got none of the others', and crashes before the session's next write.
fn own_nonce_unwritten_at_node_2(settings: Settings) -> (Net, SessionId) {
    let (net, id) = session_losing_nonces_at_node_2(settings);
    // Nodes 0 and 1 hold node 2's nonce and moved on; node 2's store does not.
    for node in [0, 1] {
        assert_eq!(
            net.cores[node].session(id).map(|s| s.phase),
            Some(Phase::PartialSigExchange)
        );
    }
    assert_eq!(stored_nonces(&net, 2, id), 0);
    assert_eq!(net.cores[2].unstored_sessions(), 1);
    (net, id)
}

#[test]
fn a_restart_before_our_sent_nonce_is_written_sends_the_same_nonce_again_and_completes() {
    let (mut net, id, [from_0, from_1]) = nonces_missing_at_node_2();
    let partials: Vec<(usize, Vec<u8>)> = net
        .delivered
        .iter()
        .filter(|(from, to, b)| *to == 2 && kind(net.peers[*from], b) == "PARTIAL_SIG_SHARE")
        .map(|(from, _, b)| (*from, b.clone()))
        .collect();
    assert_eq!(partials.len(), 2, "both partial signatures reached node 2");
    let sent_before = net.delivered.len();
    net.restart(2);
    net.reconnect(2);
    // The restart asked the signer again and broadcast the same nonce: the others, holding
    // it, accepted the copy (the harness fails on any refusal).
    let again: Vec<&Vec<u8>> = net.delivered[sent_before..]
        .iter()
        .filter(|(from, _, b)| *from == 2 && kind(net.peers[2], b) == "NONCE_SHARE")
        .map(|(_, _, b)| b)
        .collect();
    assert_eq!(again.len(), 2, "sent again to both members");
    // The members that missed nothing re-send what node 2 lacked (their senders were never
    // answered by the crashed node): the session completes there with the others' signature.
    for (from, bytes) in [(0, from_0), (1, from_1)] {
        let mut fx = Vec::new();
        let r = net.cores[2].on_direct(net.now, net.peers[from], Frame::Bytes(&bytes), &mut fx);
        assert!(r.is_ok(), "{r:?}");
        net.run(2, fx);
    }
    for (from, bytes) in partials {
        let mut fx = Vec::new();
        let r = net.cores[2].on_direct(net.now, net.peers[from], Frame::Bytes(&bytes), &mut fx);
        assert!(r.is_ok(), "{r:?}");
        net.run(2, fx);
    }
    let views: Vec<_> = (0..3).map(|i| net.cores[i].session(id)).collect();
    for v in &views {
        assert_eq!(
            v.as_ref().map(|s| s.phase),
            Some(Phase::Complete),
            "{views:?}"
        );
    }
    assert_eq!(
        views[2].as_ref().and_then(|v| v.signatures.clone()),
        views[0].as_ref().and_then(|v| v.signatures.clone())
    );
    assert_eq!(net.signers[2].max_signatures_per_nonce(), 1);
}

#[test]
fn after_a_restart_lost_our_sent_nonce_and_the_signer_s_the_abort_is_not_taken_for_a_replay() {
    // Replay protection on: node 2's next message after the restart must take a sequence
    // number the others have not seen with its nonce.
    let (mut net, id) = own_nonce_unwritten_at_node_2(settings(false));
    // The signer restarted too: it refuses a second nonce for the session, so node 2 aborts
    // and tells the others, who must accept the abort (the harness fails on a refusal; before
    // the restart skipped sequence numbers, the abort reused the nonce's number and was
    // refused as a replay, and before the signer remembered its nonces it issued another).
    net.signers[2].restart();
    net.restart(2);
    net.reconnect(2);
    for node in 0..3 {
        let v = net.cores[node].session(id);
        assert_eq!(
            v.as_ref().map(|s| s.phase),
            Some(Phase::Aborted),
            "node {node}: {v:?}"
        );
        let reason = v
            .and_then(|s| s.abort)
            .map(|a| a.reason)
            .unwrap_or_default();
        assert!(
            reason.contains("issued before the signer restarted"),
            "node {node}: {reason}"
        );
    }
    assert_eq!(net.signers[2].max_signatures_per_nonce(), 0);
}

/// Node 0 creates a session; the announcement it sends node 1, not delivered yet.
fn announcement_to_node_1(net: &mut Net) -> (SessionId, Vec<u8>) {
    let mut fx = Vec::new();
    let ctx = net.context();
    let id = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    let bytes = fx
        .iter()
        .find_map(|e| match e {
            Effect::Send { peer, bytes }
                if *peer == net.peers[1] && kind(net.peers[0], bytes) == "SESSION_ANNOUNCE" =>
            {
                Some(bytes.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no announcement to node 1: {fx:?}"));
    (id, bytes)
}

#[test]
fn an_announcement_is_written_with_our_join_and_answered_after_it() {
    let mut net = Net::new(3, false);
    let (id, announce) = announcement_to_node_1(&mut net);
    let now = net.now;
    let mut fx = Vec::new();
    let r = net.cores[1].on_direct(now, net.peers[0], Frame::Bytes(&announce), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    // Not written yet, its answer waits, and the application hears of it at once.
    assert_eq!(persisted(&fx, id), None, "{fx:?}");
    assert_eq!(net.cores[1].take_hold(), Some(id));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Emit(NodeEvent::SessionCreated(v)) if v.id == id)),
        "{fx:?}"
    );
    // The application signs: one write holds the announcement and the join, and the nonce
    // request goes out.
    let mut fx = Vec::new();
    let joined = net.cores[1].join(now, id, &mut fx);
    assert!(
        matches!(joined, crate::protocol::Pending::Ready(Ok(_))),
        "{joined:?}"
    );
    let at = persisted(&fx, id).unwrap_or_else(|| panic!("not written: {fx:?}"));
    let Some(Effect::Persist { record, .. }) = fx.get(at) else {
        unreachable!()
    };
    assert!(record.locally_joined);
    assert!(
        fx.iter().any(|e| matches!(e, Effect::Nonce { .. })),
        "{fx:?}"
    );
    assert_eq!(net.cores[1].unstored_sessions(), 0);
}

#[test]
fn an_announcement_nobody_joins_is_written_within_the_hold_time_and_a_restart_before_takes_it_again()
 {
    let mut net = Net::new(3, false);
    let (id, announce) = announcement_to_node_1(&mut net);
    let now = net.now;
    let mut fx = Vec::new();
    let r = net.cores[1].on_direct(now, net.peers[0], Frame::Bytes(&announce), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(net.cores[1].take_hold(), Some(id));
    // A crash before the write: the restarted node does not know the session, and the
    // creator, never answered, sends the announcement again; it is taken as new.
    net.restart(1);
    assert!(net.cores[1].session(id).is_none());
    let mut fx = Vec::new();
    let r = net.cores[1].on_direct(now, net.peers[0], Frame::Bytes(&announce), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(net.cores[1].take_hold(), Some(id));
    // Nobody joins: written at the end of the hold time.
    let due = now + crate::protocol::unstored::HOLD_MS;
    let mut fx = Vec::new();
    net.cores[1].on_deadline(due - 1, &mut fx);
    assert_eq!(persisted(&fx, id), None, "{fx:?}");
    net.cores[1].on_deadline(due, &mut fx);
    let at = persisted(&fx, id).unwrap_or_else(|| panic!("not written: {fx:?}"));
    let Some(Effect::Persist { record, .. }) = fx.get(at) else {
        unreachable!()
    };
    assert!(!record.locally_joined);
}
