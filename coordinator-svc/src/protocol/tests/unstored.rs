//! Peers' contributions that complete nothing are written with the session's next record,
//! not each in a commit of its own, and their answers wait for that write
//! ([`crate::protocol::unstored`]).

use super::*;

/// A 3-party session in which node 2 got none of the others' nonces (it holds its own, and
/// their partial signatures wait for the nonces), and the envelopes of nodes 0 and 1's nonce
/// shares (the same bytes went to every member). Sequence numbers are not checked here: the
/// partial signatures got ahead of the lost nonces, which lanes prevent in the real network.
fn nonces_missing_at_node_2() -> (Net, SessionId, [Vec<u8>; 2]) {
    let mut net = Net::with_settings(
        3,
        Settings {
            enable_replay_protection: false,
            ..settings(false)
        },
    );
    net.lose = Some((2, "NONCE_SHARE"));
    let mut fx = Vec::new();
    let ctx = net.context();
    let id = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    net.run(0, fx);
    net.lose = None;
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
    assert_eq!(stored_nonces(&net, 2, id), 1, "its own nonce only");
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
