//! The core over long uptimes and lost connections: attestation renewal, the final signature
//! for a member that missed the end, redialling participants, retention, the election switch
//! and the DHT namespace of announcements.

use super::*;

#[test]
fn attestations_are_renewed_a_day_before_they_expire_and_sessions_go_on_after_the_old_expiry() {
    let mut net = Net::new(3, false);
    assert_eq!(net.cores[0].next_deadline(), Some(T0 + 6 * DAY));
    net.advance(T0 + 6 * DAY);
    for (i, c) in net.cores.iter().enumerate() {
        assert_eq!(c.attestations_expire_at(), Some(T0 + 13 * DAY), "node {i}");
        assert_eq!(c.next_deadline(), Some(T0 + 12 * DAY), "node {i}");
    }
    net.advance(T0 + 8 * DAY);
    net.complete_a_session();
}

#[test]
fn a_failed_or_invalid_renewal_keeps_the_old_attestations_and_is_retried() {
    let mut net = Net::new(2, false);
    let due = T0 + 6 * DAY;
    let mut fx = Vec::new();
    net.cores[0].on_deadline(due, &mut fx);
    let expires = due + 7 * DAY;
    assert_eq!(
        fx,
        vec![Effect::Attest {
            keys: vec![net.keys[0]],
            expires_at_ms: expires
        }]
    );
    // Asked: nothing more until the answer, or the retry delay without one.
    assert_eq!(net.cores[0].next_deadline(), Some(due + 30_000));
    let failed = |fx: &[Effect]| {
        fx.iter()
            .any(|e| matches!(e, Effect::Emit(NodeEvent::AttestationRenewalFailed { .. })))
    };
    let answers = [
        Err("signer unreachable".to_string()),
        // Another node's peer id, a key this node does not hold, an expired one.
        Ok(vec![net.attestation(0, 1, expires)]),
        Ok(vec![net.attestation(1, 0, expires)]),
        Ok(vec![net.attestation(0, 0, due - 1)]),
    ];
    let mut now = due;
    for answer in answers {
        let mut fx = Vec::new();
        net.cores[0].on_attestations(now, answer, &mut fx);
        assert!(failed(&fx), "{fx:?}");
        assert_eq!(net.cores[0].attestations_expire_at(), Some(T0 + 7 * DAY));
        assert_eq!(net.cores[0].next_deadline(), Some(now + 30_000));
        now += 30_000;
        let mut fx = Vec::new();
        net.cores[0].on_deadline(now, &mut fx);
        assert!(matches!(fx.as_slice(), [Effect::Attest { .. }]), "{fx:?}");
    }
    let mut fx = Vec::new();
    let renewed = net.attestation(0, 0, now + 7 * DAY);
    net.cores[0].on_attestations(now, Ok(vec![renewed]), &mut fx);
    assert!(!failed(&fx), "{fx:?}");
    assert_eq!(net.cores[0].attestations_expire_at(), Some(now + 7 * DAY));
}

#[test]
fn a_member_that_missed_the_end_gets_the_final_signature_when_it_sends_again() {
    let mut net = Net::new(3, false);
    net.lose = Some((2, "PARTIAL_SIG_SHARE"));
    let id = net.create_and_run(net.context());
    let phase = |net: &Net, i: usize| net.cores[i].session(id).map(|s| s.phase);
    assert_eq!(phase(&net, 0), Some(Phase::Complete));
    assert_eq!(phase(&net, 1), Some(Phase::Complete));
    assert_eq!(phase(&net, 2), Some(Phase::PartialSigExchange));
    net.lose = None;
    // Node 2 sends its partial signature again (as after a reconnection or a restart).
    let (_, _, resent) = net
        .delivered
        .iter()
        .find(|(from, to, b)| {
            *from == 2 && *to == 0 && kind(net.peers[2], b) == "PARTIAL_SIG_SHARE"
        })
        .cloned()
        .unwrap_or_else(|| panic!("node 2 sent no partial signature"));
    for round in 0..2 {
        let mut fx = Vec::new();
        let r = net.cores[0].on_direct(net.now, net.peers[2], Frame::Bytes(&resent), &mut fx);
        assert!(r.is_ok(), "{r:?}");
        let replies: Vec<&'static str> = fx
            .iter()
            .filter_map(|e| match e {
                Effect::Send { peer, bytes } if *peer == net.peers[2] => {
                    Some(kind(net.peers[0], bytes))
                }
                _ => None,
            })
            .collect();
        let expected: &[&str] = if round == 0 {
            &["SIGNATURE_FINALIZED"]
        } else {
            &[]
        };
        assert_eq!(
            replies, expected,
            "round {round}: once per session and peer"
        );
        let persisted = fx.iter().position(|e| matches!(e, Effect::Persist { .. }));
        let sent = fx.iter().position(|e| matches!(e, Effect::Send { .. }));
        if round == 0 {
            assert!(
                persisted < sent,
                "its sequence number is stored first: {fx:?}"
            );
        }
        net.run(0, fx);
    }
    assert_eq!(phase(&net, 2), Some(Phase::Complete));
    let signature = |net: &Net, i: usize| net.cores[i].session(id).and_then(|s| s.signature());
    assert_eq!(signature(&net, 2), signature(&net, 0));
}

#[test]
fn a_participant_whose_connection_closed_is_dialled_again_with_growing_delays() {
    let mut net = Net::new(3, false);
    // A session waiting for everyone's nonce: node 2 is needed.
    let mut fx = Vec::new();
    let ctx = net.context();
    net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let sends: Vec<Effect> = fx
        .into_iter()
        .filter(|e| !matches!(e, Effect::Send { .. }))
        .collect();
    net.run(0, sends);
    let peer = net.peers[2];
    net.cores[0].on_disconnected(net.now, peer);
    let mut dials = Vec::new();
    let mut now = net.now;
    for _ in 0..8 {
        let Some(due) = net.cores[0].next_deadline().filter(|d| *d < T0 + DAY) else {
            break;
        };
        now = due;
        let mut fx = Vec::new();
        net.cores[0].on_deadline(now, &mut fx);
        if fx.contains(&Effect::Dial(peer)) {
            dials.push(now - T0);
        }
    }
    // Until the session gives up on node 2 (stuck for 60 s): then nothing needs it.
    assert_eq!(dials, vec![1_000, 3_000, 7_000, 15_000, 31_000]);
    assert_eq!(
        net.cores[0].sessions().first().map(|s| s.phase),
        Some(Phase::Aborted)
    );
    assert_eq!(net.cores[0].next_deadline().filter(|d| *d < T0 + DAY), None);
    // Connected again, disconnected again: a peer no unfinished session needs is not dialled.
    let mut fx = Vec::new();
    net.cores[0].on_connected(now, peer, true, &mut fx);
    net.cores[0].on_disconnected(now, peer);
    assert_eq!(net.cores[0].next_deadline().filter(|d| *d < T0 + DAY), None);
}

#[test]
fn dialling_stops_when_the_participant_is_back() {
    let mut net = Net::new(2, false);
    let mut fx = Vec::new();
    let ctx = net.context();
    net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let peer = net.peers[1];
    net.cores[0].on_disconnected(net.now, peer);
    let mut fx = Vec::new();
    net.cores[0].on_deadline(T0 + 1_000, &mut fx);
    assert_eq!(fx, vec![Effect::Dial(peer)]);
    net.cores[0].on_connected(T0 + 1_500, peer, true, &mut fx);
    let mut fx = Vec::new();
    net.cores[0].on_deadline(T0 + 3_000, &mut fx);
    assert!(!fx.contains(&Effect::Dial(peer)), "{fx:?}");
}

#[test]
fn without_election_nobody_is_told_to_broadcast_and_closing_is_an_event() {
    let mut net = Net::new(3, true);
    for c in &mut net.cores {
        c.settings.enable_election = false;
    }
    let id = net.complete_a_session();
    assert_eq!(net.take_failover(), vec![Vec::<String>::new(); 3]);
    for c in &net.cores {
        assert_eq!(session_clock(c), None);
    }
    let mut fx = Vec::new();
    net.cores[1]
        .close(net.now, id, "done", &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        fx.contains(&Effect::Emit(NodeEvent::Closed { id })),
        "{fx:?}"
    );
}

#[test]
fn finished_sessions_leave_memory_after_an_hour_their_clocks_go_on_and_the_store_is_pruned() {
    const HOUR: i64 = 3600 * 1000;
    // With failover: the broadcast clock runs for hours here; the session leaves memory, its
    // clock goes on (it is read back when the clock fires), and its record is not pruned.
    let mut net = Net::new(3, true);
    for c in &mut net.cores {
        c.settings.broadcast_timeout_ms = 3 * HOUR;
    }
    let held = net.complete_a_session();
    let rec = net.cores[0].record(held).unwrap_or_else(|| unreachable!());
    assert_eq!(
        rec.finished_at_ms, None,
        "not finished while its clock runs"
    );
    let mut fx = Vec::new();
    net.cores[0].on_cleanup(T0 + 2 * HOUR, &mut fx);
    assert!(net.cores[0].session(held).is_none());
    assert!(net.cores[0].needs_load(held) && net.cores[0].clock_running(held));
    assert_eq!(
        fx,
        vec![Effect::Prune {
            finished_before_ms: T0 + 2 * HOUR - 90 * DAY
        }]
    );
    // At most one prune an hour.
    let mut fx = Vec::new();
    net.cores[0].on_cleanup(T0 + 2 * HOUR + 1_000, &mut fx);
    assert!(fx.is_empty(), "{fx:?}");

    // Without failover: finished at completion, out of memory an hour later, still readable
    // from its stored record.
    let mut net = Net::new(3, false);
    let id = net.complete_a_session();
    let rec = net.cores[0].record(id).unwrap_or_else(|| unreachable!());
    assert_eq!(rec.finished_at_ms, Some(T0));
    let mut fx = Vec::new();
    net.cores[0].on_cleanup(T0 + HOUR + 1, &mut fx);
    assert!(net.cores[0].session(id).is_none());
    let view = net.cores[0]
        .stored_view(T0 + HOUR + 1, id, &rec)
        .unwrap_or_else(|| unreachable!());
    assert_eq!(view.phase, Phase::Complete);
    assert!(view.signature().is_some());
}

#[test]
fn announcements_are_stored_under_the_configured_resource_type() {
    let mut net = Net::new(2, false);
    for c in &mut net.cores {
        c.settings.dht = true;
        c.settings.session_resource_type = "lotus-sessions".into();
    }
    // Every member connected: the direct announcement reaches them, no record is put.
    let mut fx = Vec::new();
    let ctx = net.context();
    net.cores[0]
        .create(net.now, ctx.clone(), None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::PutRecord { .. })),
        "{fx:?}"
    );
    assert!(fx.iter().any(|e| matches!(e, Effect::Send { .. })));
    // A member not connected: the record is how it finds the session.
    let peer = net.peers[1];
    net.cores[0].on_disconnected(net.now, peer);
    let mut fx = Vec::new();
    let id = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    let (key, value) = fx
        .iter()
        .find_map(|e| match e {
            Effect::PutRecord { key, value, .. } => Some((key.clone(), value.clone())),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no record put: {fx:?}"));
    assert_eq!(key, format!("lotus-sessions:{id}").into_bytes());
    let mut fx = Vec::new();
    let (now, from) = (net.now, net.peers[0]);
    assert!(net.cores[1].on_dht_put(now, from, &key, &value, &mut fx));
    // The same announcement under another namespace is not ours to store.
    let other = format!("musig2-session:{id}").into_bytes();
    assert!(!net.cores[1].on_dht_put(now, from, &other, &value, &mut fx));
}

/// A join that overtakes its session's announcement waits for it without asking the DHT (the
/// announcement usually comes within milliseconds); only after `DHT_LOOKUP_AFTER_MS` is the
/// session looked up, once per session, and again a little later when the DHT has no record.
#[test]
fn a_join_ahead_of_its_announcement_looks_the_dht_up_only_after_a_while() {
    let mut net = Net::new(2, false);
    for c in &mut net.cores {
        c.settings.dht = true;
        c.settings.enable_session_discovery = true;
    }
    let lookups = |fx: &[Effect]| {
        fx.iter()
            .filter_map(|e| match e {
                Effect::GetRecord { query, .. } => Some(*query),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let id = SessionId([7; 16]);
    let now = net.now;
    let mut fx = Vec::new();
    let first = net.cores[1].join(now, id, &mut fx);
    let second = net.cores[1].join(now, id, &mut fx);
    assert!(matches!(first, Pending::Waiting(_)));
    assert!(matches!(second, Pending::Waiting(_)));
    assert!(lookups(&fx).is_empty(), "{fx:?}");
    assert_eq!(
        net.cores[1].next_deadline(),
        Some(now + super::super::DHT_LOOKUP_AFTER_MS)
    );
    net.cores[1].on_deadline(now + super::super::DHT_LOOKUP_AFTER_MS - 1, &mut fx);
    assert!(lookups(&fx).is_empty(), "{fx:?}");
    let mut fx = Vec::new();
    let at = now + super::super::DHT_LOOKUP_AFTER_MS;
    net.cores[1].on_deadline(at, &mut fx);
    let asked = lookups(&fx);
    assert_eq!(asked.len(), 1, "one lookup for both joins: {fx:?}");
    // Not found: asked again later, and the joins still wait.
    let mut fx = Vec::new();
    net.cores[1].on_record(at + 5, asked[0], Err("not found".into()), &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::JoinAnswer { .. })));
    net.cores[1].on_deadline(at + 5 + super::super::DHT_LOOKUP_AFTER_MS, &mut fx);
    assert_eq!(lookups(&fx).len(), 1, "{fx:?}");
    // The join deadline still ends the wait.
    let mut fx = Vec::new();
    net.cores[1].on_deadline(now + super::super::JOIN_WAIT_MS, &mut fx);
    let failed = fx
        .iter()
        .filter(|e| matches!(e, Effect::JoinAnswer { result, .. } if result.is_err()))
        .count();
    assert_eq!(failed, 2);

    // The announcement first: the join goes on at once, nothing is looked up.
    let ctx = net.context();
    let mut fx = Vec::new();
    let view = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut fx2 = Vec::new();
    let joining = net.cores[1].join(net.now, view.id, &mut fx2);
    assert!(matches!(joining, Pending::Waiting(_)));
    net.run(0, fx);
    assert!(lookups(&fx2).is_empty(), "{fx2:?}");
    assert!(net.cores[1].session(view.id).is_some());
}
