//! Finished sessions whose broadcast clocks still run leave memory like the others (found by an
//! 11-minute batch run: pinned for the whole failover, N × the broadcast timeout, they grew every
//! coordinator by 263 KB per 256-message session), and their clocks go on: they are read back
//! from the store when a deadline passes or a message for them comes.

use super::*;

/// Three parties with failover, keeping in memory the values of one finished session (3 signers
/// × 1 message).
fn net_keeping_one() -> Net {
    let mut s = settings(true);
    s.finished_in_memory_values = 3;
    Net::with_settings(3, s)
}

fn cleanup(net: &mut Net) {
    for i in 0..net.cores.len() {
        let mut fx = Vec::new();
        let now = net.now;
        net.cores[i].on_cleanup(now, &mut fx);
        net.run(i, fx);
    }
}

/// Failover events per node, sorted (sessions out of memory take their steps as they are read
/// back, so the order across sessions may differ).
fn sorted(mut events: Vec<Vec<String>>) -> Vec<Vec<String>> {
    for e in &mut events {
        e.sort();
    }
    events
}

#[test]
fn running_clocks_do_not_pin_sessions_in_memory() {
    let mut net = net_keeping_one();
    let mut ids = Vec::new();
    for _ in 0..4 {
        net.now += 10;
        ids.push(net.complete_a_session());
    }
    net.take_failover();
    let last = net.now;
    let h: Vec<usize> = (0..3).map(|i| net.holder(i)).collect();
    // (what every node reports per session, and which priority index is told to broadcast)
    let steps: [(&str, Option<(usize, &str)>); 3] = [
        ("failed 0->1@1", Some((1, "broadcast 1@1"))),
        ("failed 1->2@2", Some((2, "broadcast 2@2"))),
        ("failed 2->2@3", None),
    ];
    for (k, (everyone, extra)) in steps.into_iter().enumerate() {
        cleanup(&mut net);
        for c in &net.cores {
            let held: Vec<bool> = ids.iter().map(|id| c.session(*id).is_some()).collect();
            assert_eq!(held, [false, false, false, true], "before step {k}");
            assert_eq!(c.table_sizes().unloaded, 3, "before step {k}");
            assert!(ids.iter().all(|id| c.clock_running(*id)));
        }
        let at = last + (i64::try_from(k).unwrap_or(0) + 1) * TIMEOUT;
        net.advance(at);
        let mut expected: Vec<Vec<String>> = vec![vec![everyone.to_string(); 4]; 3];
        match extra {
            Some((index, what)) => expected[h[index]].extend(vec![what.to_string(); 4]),
            None => {
                for e in &mut expected {
                    e.extend(vec!["exhausted@3".to_string(); 4]);
                }
            }
        }
        assert_eq!(sorted(net.take_failover()), sorted(expected), "step {k}");
    }
    for (i, c) in net.cores.iter().enumerate() {
        assert!(ids.iter().all(|id| !c.clock_running(*id)));
        assert_eq!(c.table_sizes().unloaded, 0);
        // The store has every step (what a restart would resume from).
        for id in &ids {
            let f = net.stores[i].get(id).map(|r| r.failover.clone());
            assert!(
                f.as_ref().is_some_and(|f| f.exhausted && f.attempt == 3),
                "{f:?}"
            );
        }
    }
    // Clocks stopped: they leave memory for good.
    cleanup(&mut net);
    for c in &net.cores {
        assert_eq!(c.table_sizes().unloaded, 0);
        assert_eq!(ids.iter().filter(|id| c.session(**id).is_some()).count(), 1);
    }
}

#[test]
fn a_confirmation_reaches_sessions_out_of_memory() {
    let mut net = net_keeping_one();
    net.now += 10;
    let first = net.complete_a_session();
    net.now += 10;
    let second = net.complete_a_session();
    net.take_failover();
    cleanup(&mut net);
    let elected = net.holder(0);
    for c in &net.cores {
        assert!(c.session(first).is_none() && c.needs_load(first));
    }
    // The application confirms the first: its node reads it back first (as `Node` does for the
    // command); the others read it back when the confirmation comes.
    net.now += 10;
    let mut fx = Vec::new();
    let now = net.now;
    let record: Option<crate::store::SessionRecord> = net.stores[elected].get(&first).cloned();
    let core = &mut net.cores[elected];
    if core.needs_load(first) {
        core.on_loaded(now, first, record, &mut fx);
    }
    core.notify_broadcast(now, first, "txid".into(), &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(elected, fx);
    assert_eq!(net.take_failover(), vec![vec!["confirmed".to_string()]; 3]);
    for c in &net.cores {
        assert!(!c.clock_running(first));
        assert!(c.clock_running(second));
    }
    // Only the second session's clock goes on.
    net.advance(net.now + TIMEOUT);
    let everyone = |e: &Vec<String>| e.iter().filter(|x| x.starts_with("failed")).count();
    assert_eq!(
        net.take_failover().iter().map(everyone).collect::<Vec<_>>(),
        [1, 1, 1]
    );
}

/// A session the store no longer holds cannot take its steps: its clock stops (logged), and
/// nothing else breaks.
#[test]
fn a_session_missing_from_the_store_stops_its_clock() {
    let mut net = net_keeping_one();
    net.now += 10;
    let first = net.complete_a_session();
    net.now += 10;
    net.complete_a_session();
    net.take_failover();
    cleanup(&mut net);
    net.stores[0] = HashMap::new();
    net.advance(net.now + TIMEOUT);
    assert!(!net.cores[0].clock_running(first));
    assert!(net.cores[0].session(first).is_none());
    for c in &net.cores[1..] {
        assert!(c.clock_running(first), "the others go on");
    }
}

/// The announcement of a finished session that left memory, delivered again (a retry, a
/// replay, a DHT answer), starts nothing: found by the simulator, where it made a new INIT
/// session that overwrote the stored COMPLETE record and then timed out as ABORTED.
#[test]
fn a_departed_session_is_not_started_over_by_its_announcement() {
    for failover in [true, false] {
        let mut s = settings(failover);
        s.finished_in_memory_values = 3;
        let mut net = Net::with_settings(3, s);
        net.now += 10;
        let first = net.complete_a_session();
        net.now += 10;
        net.complete_a_session();
        cleanup(&mut net);
        let (from, to, bytes) = net
            .delivered
            .iter()
            .find(|(i, _, b)| kind(net.peers[*i], b) == "SESSION_ANNOUNCE")
            .cloned()
            .unwrap_or_else(|| unreachable!());
        assert!(net.cores[to].session(first).is_none());
        let mut fx = Vec::new();
        let (now, peer) = (net.now + 10, net.peers[from]);
        let r = net.cores[to].on_direct(now, peer, Frame::Bytes(&bytes), &mut fx);
        assert!(r.is_ok(), "{r:?}");
        assert!(
            !fx.iter().any(|e| matches!(e, Effect::Persist { .. })),
            "failover {failover}: {fx:?}"
        );
        assert!(net.cores[to].session(first).is_none());
        net.run(to, fx);
        let phase = net.stores[to].get(&first).map(|r| r.phase.clone());
        assert_eq!(phase.as_deref(), Some("COMPLETE"));
    }
}

/// A restart holds in memory the newest finished sessions within the cap, not every session of
/// the last hour (all of them at once could exceed the memory limit right after a crash); of
/// the others it keeps their ids: their clocks go on and their announcements start nothing.
#[test]
fn a_restart_holds_only_what_the_cap_allows() {
    let mut net = net_keeping_one();
    let mut ids = Vec::new();
    for _ in 0..4 {
        net.now += 10;
        ids.push(net.complete_a_session());
    }
    net.take_failover();
    net.now += 10;
    net.restart(1);
    let c = &net.cores[1];
    let held: Vec<bool> = ids.iter().map(|id| c.session(*id).is_some()).collect();
    assert_eq!(held, [false, false, false, true]);
    let t = c.table_sizes();
    assert_eq!((t.unloaded, t.departed), (3, 3));
    assert!(ids.iter().all(|id| c.clock_running(*id)));
    // The announcement again starts nothing (node 0 created the sessions).
    let (from, bytes) = net
        .delivered
        .iter()
        .find(|(i, j, b)| *j == 1 && kind(net.peers[*i], b) == "SESSION_ANNOUNCE")
        .map(|(i, _, b)| (*i, b.clone()))
        .unwrap_or_else(|| unreachable!());
    let mut fx = Vec::new();
    let (now, peer) = (net.now, net.peers[from]);
    let r = net.cores[1].on_direct(now, peer, Frame::Bytes(&bytes), &mut fx);
    assert!(r.is_ok(), "{r:?}");
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::Persist { .. })),
        "{fx:?}"
    );
    // Every clock takes its first step, read back from the store.
    let last = net.now;
    net.advance(last + TIMEOUT);
    let steps = net.take_failover()[1]
        .iter()
        .filter(|e| e.starts_with("failed 0->1@1"))
        .count();
    assert_eq!(steps, 4);
}
