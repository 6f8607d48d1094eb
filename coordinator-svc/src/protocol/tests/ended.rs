//! Joining a session that ended and left memory says so at once (found by CI: a party whose
//! application joined right after the creator's abort, once housekeeping had dropped the
//! announced session, waited two seconds and heard "unknown session").

use super::*;
use crate::protocol::{ErrorReason, NodeError, SessionView};

fn ended(r: Pending<Result<SessionView, NodeError>>) -> String {
    match r {
        Pending::Ready(Err(NodeError::FailedPrecondition(ErrorReason::SessionEnded, m))) => m,
        Pending::Ready(Err(e)) => panic!("another error: {e}"),
        Pending::Ready(Ok(v)) => panic!("joined, phase {}", v.phase.as_str()),
        Pending::Waiting(_) => panic!("waits for an announcement"),
    }
}

/// Node 1 announces a session and aborts it; node 0's application had not joined, so
/// housekeeping drops it at once. A join afterwards is told it ended.
#[test]
fn joining_an_announced_session_that_ended_and_left_memory_says_it_ended() {
    let mut net = Net::new(2, false);
    let now = net.now;
    let (id, announce) = announce_from_node_1(&mut net, now, vec![0x33; 32]);
    let from = net.peers[1];
    let mut fx = Vec::new();
    let r = net.cores[0].on_direct(now, from, Frame::Bytes(&announce), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    let mut fx = Vec::new();
    let closed = net.cores[1].close(now, id, "the signer died", &mut fx);
    assert!(closed.is_ok(), "{closed:?}");
    net.run(1, fx);
    assert_eq!(
        net.cores[0].session(id).map(|s| s.phase),
        Some(Phase::Aborted)
    );
    net.cores[0].on_cleanup(now + 1, &mut Vec::new());
    assert!(net.cores[0].session(id).is_none(), "dropped from memory");
    let m = ended(net.cores[0].join(now + 2, id, &mut Vec::new()));
    assert!(m.contains(&id.to_string()), "{m}");
}

/// A session our application joined and that completed leaves memory after its time; a join
/// afterwards is told it ended, not made to wait for an announcement.
#[test]
fn joining_a_finished_session_that_left_memory_says_it_ended() {
    let mut net = Net::new(2, false);
    let id = net.complete_a_session();
    let later = net.now + FINISHED_RETENTION_MS + 1;
    net.cores[0].on_cleanup(later, &mut Vec::new());
    assert!(net.cores[0].session(id).is_none(), "left memory");
    ended(net.cores[0].join(later, id, &mut Vec::new()));
}

/// The ids remembered for that are bounded: peers announcing and aborting sessions without end
/// cannot grow the table.
#[test]
fn the_ended_ids_remembered_are_bounded() {
    use super::super::MAX_ENDED_REMEMBERED;
    let mut net = Net::new(2, false);
    let from = net.peers[1];
    let mut first = None;
    for k in 0..(MAX_ENDED_REMEMBERED + 3) {
        net.now += 1000;
        let at = net.now;
        let mut message = vec![0x44; 32];
        message[..8].copy_from_slice(&u64::try_from(k).unwrap_or(0).to_be_bytes());
        let (id, announce) = announce_from_node_1(&mut net, at, message);
        first.get_or_insert(id);
        let r = net.cores[0].on_direct(at, from, Frame::Bytes(&announce), &mut Vec::new());
        assert!(r.is_ok(), "announcement {k}: {r:?}");
        let mut fx = Vec::new();
        let _ = net.cores[1].close(at, id, "over", &mut fx);
        net.run(1, fx);
        net.cores[0].on_cleanup(at, &mut Vec::new());
    }
    assert_eq!(net.cores[0].table_sizes().ended, MAX_ENDED_REMEMBERED);
    // The oldest was forgotten: a join for it waits for an announcement again.
    let Some(first) = first else { unreachable!() };
    assert!(matches!(
        net.cores[0].join(net.now, first, &mut Vec::new()),
        Pending::Waiting(_)
    ));
}
