//! Client request ids: a retry returns what the first call created, in memory and after a
//! restore, until the session leaves memory; another request under the same id is refused.

use super::*;
use crate::protocol::ErrorReason;

#[test]
fn a_request_id_returns_its_session_until_it_leaves_memory_also_after_a_restart() {
    let mut net = Net::new(2, false);
    let ctx = net.context();
    let now = net.now;
    let mut fx = Vec::new();
    let first = net.cores[0]
        .create_for(
            now,
            ctx.clone(),
            None,
            None,
            Some("order-1".into()),
            &mut fx,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    assert_eq!(first.request_id.as_deref(), Some("order-1"));
    // The retry: the same session, nothing sent or stored again.
    let mut fx = Vec::new();
    let again = net.cores[0]
        .create_for(
            now,
            ctx.clone(),
            None,
            None,
            Some("order-1".into()),
            &mut fx,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.id, first.id);
    assert!(fx.is_empty(), "{fx:?}");
    // Another message (or election method) under the same id.
    let mut other = ctx.clone();
    other.message = vec![8; 32];
    let e = net.cores[0]
        .create_for(now, other, None, None, Some("order-1".into()), &mut fx)
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert_eq!(e.reason(), ErrorReason::RequestIdReused);
    let e = net.cores[0]
        .create_for(
            now,
            ctx.clone(),
            Some(shared::election::ElectionMethod::HashBased),
            None,
            Some("order-1".into()),
            &mut fx,
        )
        .err()
        .unwrap_or_else(|| panic!("refused"));
    assert_eq!(e.reason(), ErrorReason::RequestIdReused);
    // Without an id, or under another, a second session.
    let mut fx = Vec::new();
    let second = net.cores[0]
        .create_for(now, ctx.clone(), None, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(second.id, first.id);
    // The stored record carries the id: a restarted core recognises the retry.
    let record = net.cores[0]
        .record(first.id)
        .unwrap_or_else(|| panic!("stored"));
    assert_eq!(record.request_id.as_deref(), Some("order-1"));
    let mut fresh = Net::new(2, false);
    let mut fx = Vec::new();
    fresh.cores[0].restore(now, vec![(first.id.0, record)], Vec::new(), &mut fx);
    let mut fx = Vec::new();
    let after_restart = fresh.cores[0]
        .create_for(
            now,
            ctx.clone(),
            None,
            None,
            Some("order-1".into()),
            &mut fx,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(after_restart.id, first.id);
    // Once the finished session has left memory, the id is free again.
    let later = now + FINISHED_RETENTION_MS + 10 * 60_000;
    let mut fx = Vec::new();
    net.cores[0]
        .close(now, first.id, "done", &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    let mut fx = Vec::new();
    net.cores[0].on_cleanup(later, &mut fx);
    assert!(net.cores[0].session(first.id).is_none());
    let mut fx = Vec::new();
    let new = net.cores[0]
        .create_for(later, ctx, None, None, Some("order-1".into()), &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(new.id, first.id);
}

#[test]
fn a_session_ended_before_signing_releases_the_nonces_it_obtained_and_only_those() {
    let mut net = Net::new(2, false);
    // Node 0 never hears node 1's nonce: it holds its own and waits.
    net.lose = Some((0, "NONCE_SHARE"));
    let ctx = net.context();
    let now = net.now;
    let mut fx = Vec::new();
    let v = net.cores[0]
        .create(now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    assert_eq!(
        net.cores[0].session(v.id).map(|s| s.local_nonces.len()),
        Some(1)
    );
    let mut fx = Vec::new();
    net.cores[0]
        .close(now, v.id, "given up", &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let released: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::ReleaseNonces { ids, keys } => Some((ids.clone(), keys.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(released, vec![(vec![v.id], vec![net.keys[0]])]);
    // The signer destroys it: that nonce can no longer sign.
    assert!(net.signers[0].release(&v.id.0, &net.keys[0]));
    assert!(!net.signers[0].release(&v.id.0, &net.keys[0]));
    // A completed session releases nothing.
    net.lose = None;
    let id = net.complete_a_session();
    let mut fx = Vec::new();
    let _ = net.cores[0].close(now, id, "done", &mut fx);
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::ReleaseNonces { .. })),
        "{fx:?}"
    );
}

/// Found by the soak run: an application that heard of a session from another party (or a
/// `Sign` sent to every party at once) can be faster than the announcement; the join failed
/// at once. Now it waits up to JOIN_WAIT_MS for the announcement, then fails naming why.
#[test]
fn a_join_waits_for_an_announcement_that_is_on_its_way_then_gives_up() {
    use super::super::{JOIN_WAIT_MS, Pending};
    let mut net = Net::new(2, false);
    net.lose = Some((1, "SESSION_ANNOUNCE"));
    let ctx = net.context();
    let now = net.now;
    let mut fx = Vec::new();
    let v = net.cores[0]
        .create(now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    assert!(net.cores[1].session(v.id).is_none());
    let mut fx = Vec::new();
    let Pending::Waiting(query) = net.cores[1].join(now, v.id, &mut fx) else {
        panic!("an unknown session is waited for");
    };
    // The announcement arrives: the join is answered with the joined session.
    let bytes = net.cores[0]
        .announcement(v.id)
        .unwrap_or_else(|| panic!("announced"));
    let mut fx = Vec::new();
    let from = net.peers[0];
    assert!(
        net.cores[1]
            .on_direct(now + 5, from, Frame::Bytes(&bytes), &mut fx)
            .is_ok()
    );
    let answered = fx.iter().any(|e| {
        matches!(e, Effect::JoinAnswer { query: q, result } if *q == query
            && result.as_ref().as_ref().is_ok_and(|s| s.id == v.id))
    });
    assert!(answered, "{fx:?}");
    // A session that never comes: NOT_FOUND after the wait, not before.
    let ghost = SessionId([0x77; 16]);
    let mut fx = Vec::new();
    let Pending::Waiting(query) = net.cores[1].join(now, ghost, &mut fx) else {
        panic!("waited for");
    };
    let mut fx = Vec::new();
    net.cores[1].on_deadline(now + JOIN_WAIT_MS - 1, &mut fx);
    assert!(!fx.iter().any(|e| matches!(e, Effect::JoinAnswer { .. })));
    net.cores[1].on_deadline(now + JOIN_WAIT_MS, &mut fx);
    let failed = fx.iter().any(|e| {
        matches!(e, Effect::JoinAnswer { query: q, result } if *q == query
            && result.as_ref().as_ref().is_err_and(|e| e.reason() == ErrorReason::SessionNotFound))
    });
    assert!(failed, "{fx:?}");
}

/// Found by the soak run: the DHT store (10,000 records) filled with the announcements of
/// finished sessions, because Kademlia drops expired records only at its hourly republication,
/// and every session failed after 10,000. Each node now drops its copy of a session's record
/// when the session ends there (once), completed or aborted.
#[test]
fn an_ended_session_drops_its_dht_record_once_on_every_node() {
    let mut s = settings(false);
    s.dht = true;
    let mut net = Net::with_settings(3, s);
    let removed = |fx: &[Effect]| -> Vec<Vec<u8>> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::RemoveRecord { key } => Some(key.clone()),
                _ => None,
            })
            .collect()
    };
    // Completed: each node drops the record as the session completes there.
    let ctx = net.context();
    let mut fx = Vec::new();
    let v = net.cores[0]
        .create(net.now, ctx.clone(), None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(removed(&fx).is_empty(), "not while it runs");
    net.run(0, fx);
    for c in &net.cores {
        assert_eq!(c.session(v.id).map(|s| s.phase), Some(Phase::Complete));
        // `unlisted` is set exactly where the RemoveRecord effect is emitted.
        assert!(c.unlisted.contains(&v.id));
    }
    // Closing it later does not drop it again.
    let mut fx = Vec::new();
    net.cores[0]
        .close(net.now, v.id, "done", &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(removed(&fx).is_empty(), "{fx:?}");
    // Aborted: dropped too.
    net.lose = Some((1, "NONCE_SHARE"));
    let mut fx = Vec::new();
    let w = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    let mut fx = Vec::new();
    net.cores[0]
        .close(net.now, w.id, "given up", &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let wkey =
        crate::protocol::sessions::session_record_key(super::super::SESSION_RESOURCE_TYPE, &w.id);
    assert_eq!(removed(&fx), vec![wkey]);
}

/// Found by the soak run: stored sessions kept every message sent for them (to re-send to
/// members that missed them), most of a record's size, also once finished, when nobody needs
/// them. A finished session's record has none; an unfinished one keeps them.
#[test]
fn a_finished_session_is_stored_without_the_messages_kept_for_re_sending() {
    let mut net = Net::new(2, false);
    net.lose = Some((1, "NONCE_SHARE"));
    let ctx = net.context();
    let mut fx = Vec::new();
    let v = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(0, fx);
    let unfinished = net.cores[0]
        .record(v.id)
        .unwrap_or_else(|| panic!("stored"));
    assert!(!unfinished.sent.is_empty(), "kept while unfinished");
    net.lose = None;
    let id = net.complete_a_session();
    let done = net.cores[0].record(id).unwrap_or_else(|| panic!("stored"));
    assert_eq!(done.phase, "COMPLETE");
    assert!(done.sent.is_empty(), "{} messages kept", done.sent.len());
}
