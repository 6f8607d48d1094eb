//! Election, failover and crash recovery, with every party as real processes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::time::Duration;

use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use procs::{Events, ProcParty, mesh, session, watch};
use shared::musig::{Signature, SignatureFormat, verify};

/// Events of one session until `stop` returns true, collected.
async fn collect(
    s: &mut Events,
    id: &str,
    within: Duration,
    mut stop: impl FnMut(&Ev) -> bool,
) -> Vec<Ev> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    while let Ok(Ok(Some(m))) = tokio::time::timeout_at(deadline, s.message()).await {
        let Some(e) = m.event else { continue };
        let ours = match &e {
            Ev::ShouldBroadcast(x) => x.session_id == id,
            Ev::CoordinatorFailed(x) => x.session_id == id,
            Ev::FailoverExhausted(x) => x.session_id == id,
            Ev::BroadcastConfirmed(x) => x.session_id == id,
            _ => false,
        };
        if ours {
            let done = stop(&e);
            out.push(e);
            if done {
                break;
            }
        }
    }
    out
}

fn sorted_index(ps: &[ProcParty], i: usize) -> usize {
    let mut k: Vec<[u8; 33]> = ps.iter().map(|p| p.key).collect();
    k.sort_unstable();
    k.iter().position(|x| *x == ps[i].key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_walks_the_priority_list_and_a_confirmation_stops_it() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    for s in 71..74u8 {
        ps.push(ProcParty::start(base.path(), s, "broadcast_timeout_ms = 700").await);
    }
    mesh(&ps).await;
    let mut streams = Vec::new();
    for p in &ps {
        streams.push(watch(&mut p.client().await).await);
    }
    // Nobody confirms: index 0, then 1, then 2 are told; then failover is exhausted.
    let (id, _) = session(&ps, SignatureFormat::Bip340, [7; 32], false).await;
    for (i, s) in streams.iter_mut().enumerate() {
        let evs = collect(s, &id, Duration::from_secs(15), |e| {
            matches!(e, Ev::FailoverExhausted(_))
        })
        .await;
        let me = sorted_index(&ps, i);
        let told: Vec<u32> = evs
            .iter()
            .filter_map(|e| {
                if let Ev::ShouldBroadcast(x) = e {
                    Some(x.attempt)
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            told,
            vec![me as u32],
            "party at sorted index {me} is told exactly at its attempt"
        );
        let failed: Vec<(u32, u32, u32)> = evs
            .iter()
            .filter_map(|e| {
                if let Ev::CoordinatorFailed(x) = e {
                    Some((x.failed_index, x.attempt, x.next_index))
                } else {
                    None
                }
            })
            .collect();
        assert_eq!(
            &failed[..2],
            &[(0, 1, 1), (1, 2, 2)],
            "every node sees the same failovers"
        );
        assert!(matches!(evs.last(), Some(Ev::FailoverExhausted(x)) if x.attempts == 3));
    }
    // A confirmation by the backup stops every timer.
    let (id, _) = session(&ps, SignatureFormat::Lotus, [8; 32], false).await;
    let backup = (0..3).find(|i| sorted_index(&ps, *i) == 1).unwrap();
    let evs = collect(&mut streams[backup], &id, Duration::from_secs(10), |e| {
        matches!(e, Ev::ShouldBroadcast(_))
    })
    .await;
    assert!(matches!(evs.last(), Some(Ev::ShouldBroadcast(x)) if x.attempt == 1));
    let mut c = ps[backup].client().await;
    c.notify_broadcast_complete(pb::NotifyBroadcastCompleteRequest {
        session_id: id.clone(),
        broadcast_reference: "txid-1".into(),
    })
    .await
    .unwrap();
    for (i, s) in streams.iter_mut().enumerate() {
        let evs = collect(s, &id, Duration::from_secs(3), |_| false).await;
        assert!(
            evs.iter().any(|e| matches!(e, Ev::BroadcastConfirmed(x) if x.broadcast_reference == "txid-1" && x.confirmed_by == ps[backup].key.to_vec())),
            "party {i} saw the confirmation: {evs:?}"
        );
        let after = evs
            .iter()
            .skip_while(|e| !matches!(e, Ev::BroadcastConfirmed(_)))
            .filter(|e| matches!(e, Ev::CoordinatorFailed(_)))
            .count();
        assert_eq!(after, 0, "party {i}: no failover after the confirmation");
        let s = ps[i]
            .client()
            .await
            .get_session(pb::GetSessionRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        assert!(s.broadcast_confirmed);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_signatures_survive_sigkill() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    for s in 81..84u8 {
        ps.push(ProcParty::start(base.path(), s, "").await);
    }
    mesh(&ps).await;
    let mut done: Vec<(String, Vec<u8>, SignatureFormat, [u8; 32])> = Vec::new();
    for round in 0..4u8 {
        let format = if round % 2 == 0 {
            SignatureFormat::Bip340
        } else {
            SignatureFormat::Lotus
        };
        let msg = [0x40 + round; 32];
        let (id, sig) = session(&ps, format, msg, round == 3).await;
        done.push((id, sig, format, msg));
        // SIGKILL right after completion.
        ps[0].kill_coordinator();
        ps[0].start_coordinator();
        mesh(&ps).await;
        // And at a random point of a session in flight.
        let mut c = ps[0].client().await;
        let _ = c
            .create_session(pb::CreateSessionRequest {
                signer_keys: procs::keys(&ps),
                message: vec![0x80 + round; 32],
                format: pb::SignatureFormat::Lotus as i32,
                ..Default::default()
            })
            .await;
        let delay = u64::from(rand::random::<u8>() % 40);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        ps[0].kill_coordinator();
        ps[0].start_coordinator();
        mesh(&ps).await;
    }
    let mut c = ps[0].client().await;
    for (id, sig, format, msg) in &done {
        let f = c
            .get_final_signature(pb::GetFinalSignatureRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(&f.signature, sig, "session {id}");
        assert_eq!(&f.message, msg);
        verify(
            *format,
            &f.output_key.try_into().unwrap(),
            msg,
            &Signature(f.signature.try_into().unwrap()),
        )
        .unwrap();
    }
    // Unfinished sessions after a crash are listed with a phase; aborted ones carry a reason.
    let all = c
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert!(all.len() >= done.len());
    for s in all {
        if s.phase == pb::SessionPhase::Aborted as i32 {
            assert!(s.abort_reason.as_deref().is_some_and(|r| !r.is_empty()));
        }
    }
    // The node still signs after all that.
    session(&ps, SignatureFormat::Bip340, [0x99; 32], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signer_killed_mid_session_aborts_it_cleanly_and_the_next_session_succeeds() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    for s in 85..88u8 {
        ps.push(ProcParty::start(base.path(), s, "").await);
    }
    mesh(&ps).await;
    let mut streams = Vec::new();
    for p in &ps {
        streams.push(watch(&mut p.client().await).await);
    }
    let mut a = ps[0].client().await;
    let id = a
        .create_session(pb::CreateSessionRequest {
            signer_keys: procs::keys(&ps),
            message: vec![0x33; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
        .session_id;
    // Party 0's signer dies right after the creation (its nonce may or may not be out: the
    // creator asks for it at once).
    ps[0].signer = None;
    for i in 1..3 {
        let sid = id.clone();
        procs::next_event(&mut streams[i], |e| matches!(e, Ev::SessionCreated(s) if s.session.as_ref().is_some_and(|s| s.session_id == sid)).then_some(())).await;
        let joined = ps[i]
            .client()
            .await
            .join_session(pb::JoinSessionRequest {
                session_id: id.clone(),
            })
            .await;
        // The creator's abort may be here first: joining an ended session says so.
        if let Err(e) = joined {
            assert_eq!(procs::error_info(&e).0, "SESSION_ENDED", "{e}");
        }
    }
    for (i, s) in streams.iter_mut().enumerate() {
        let sid = id.clone();
        let reason = procs::next_event(s, |e| match e {
            Ev::SessionError(x) if x.session_id == sid => Some(x.reason.clone()),
            Ev::SessionComplete(x) if x.session_id == sid => panic!("completed without a signer"),
            _ => None,
        })
        .await;
        assert!(reason.contains("signer"), "party {i}: {reason}");
    }
    // The signer comes back (same port); the next session completes.
    ps[0].start_signer();
    session(&ps, SignatureFormat::Lotus, [0x34; 32], false).await;
}

/// A session the API reported as created is on disk before the reply: a creator SIGKILLed right
/// after `CreateSession` (nobody else joined, so nothing else changed it) still knows it, with
/// its own join, after the restart; once the parties are connected, the other one joins and the
/// session completes on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_created_session_survives_an_immediate_sigkill() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    // A stuck timeout longer than a loaded machine's restart.
    for s in 91..93u8 {
        ps.push(ProcParty::start(base.path(), s, "stuck_session_timeout_ms = 120000").await);
    }
    // Not meshed: the announcement cannot reach anyone yet.
    let mut c = ps[0].client().await;
    let created = c
        .create_session(pb::CreateSessionRequest {
            signer_keys: procs::keys(&ps),
            message: vec![0x31; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    ps[0].kill_coordinator();
    ps[0].start_coordinator();
    let mut c = ps[0].client().await;
    let after = c
        .get_session(pb::GetSessionRequest {
            session_id: created.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    // The creator's join (said by its nonce share) started round 1 with the creation.
    assert_eq!(after.phase, pb::SessionPhase::NonceExchange as i32);
    assert_eq!(after.joined_keys, vec![ps[0].key.to_vec()]);
    mesh(&ps).await;
    join_when_known(&ps[1], &created.session_id).await;
    for p in &ps {
        wait_for_phase(p, &created.session_id, pb::SessionPhase::Complete).await;
    }
}

/// Join `id` on `p` as soon as the node knows it (the announcement may still be on its way).
async fn join_when_known(p: &ProcParty, id: &str) {
    let mut c = p.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match c
            .join_session(pb::JoinSessionRequest {
                session_id: id.to_string(),
            })
            .await
        {
            Ok(_) => return,
            Err(e) if e.code() == tonic::Code::NotFound => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{id} never reached the node: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("join {id}: {e}"),
        }
    }
}

/// Wait until `p` reports session `id` in `phase` (panics on another terminal phase, or after
/// 60 s).
async fn wait_for_phase(p: &ProcParty, id: &str, phase: pb::SessionPhase) {
    let mut c = p.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let s = c
            .get_session(pb::GetSessionRequest {
                session_id: id.to_string(),
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().session);
        match &s {
            Some(s) if s.phase == phase as i32 => return,
            Some(s) if s.phase == pb::SessionPhase::Aborted as i32 => {
                panic!(
                    "{id} aborted: {}",
                    s.abort_reason.clone().unwrap_or_default()
                )
            }
            _ => {}
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never reached {phase:?} on {}: {s:?}",
            p.peer_id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A party SIGKILLed while a session waits for it, restarted on the same address with no
/// bootstrap peers of its own, is dialled again by the others (nobody calls `ConnectPeer`), gets
/// what it missed, joins, and the session completes everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_party_restarted_without_bootstrap_peers_is_dialled_again_and_the_session_completes() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    // Without a DHT: its queries would dial the restarted party by chance; here only the
    // participants' own redialling can.
    for s in 95..98u8 {
        ps.push(
            ProcParty::start(
                base.path(),
                s,
                "stuck_session_timeout_ms = 120000\nenable_dht = false",
            )
            .await,
        );
    }
    mesh(&ps).await;
    let mut c = ps[0].client().await;
    let created = c
        .create_session(pb::CreateSessionRequest {
            signer_keys: procs::keys(&ps),
            message: vec![0x32; 32],
            format: pb::SignatureFormat::Lotus as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let id = created.session_id;
    join_when_known(&ps[1], &id).await;
    ps[2].pin_listen_port();
    ps[2].kill_coordinator();
    ps[2].start_coordinator();
    join_when_known(&ps[2], &id).await;
    for p in &ps {
        wait_for_phase(p, &id, pb::SessionPhase::Complete).await;
    }
}

/// A gauge of the coordinator's `/metrics` (plain HTTP/1.0 GET on loopback).
async fn gauge(p: &ProcParty, series: &str) -> Option<i64> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(p.metrics.as_deref()?)
        .await
        .ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).await.ok()?;
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

/// Wait until a gauge has the value (re-read every 50 ms, up to `within`).
async fn until_gauge(p: &ProcParty, series: &str, want: i64, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = gauge(p, series).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} is {got:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A finished session whose broadcast clock runs leaves memory (found by a heap profile: kept
/// for the whole failover, such sessions grew every coordinator by 263 KB per 256-message
/// batch); its clock goes on from the store, and a confirmation for it still lands, on the
/// party that confirms (read back before the command) and on the others (read back when the
/// confirmation comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_sessions_leave_memory_and_their_clocks_go_on() {
    let base = tempfile::tempdir().unwrap();
    let extra = "broadcast_timeout_ms = 2500\nfinished_in_memory_ms = 1000\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let mut ps = Vec::new();
    for s in 91..94u8 {
        ps.push(ProcParty::start(base.path(), s, extra).await);
    }
    mesh(&ps).await;
    let mut streams = Vec::new();
    for p in &ps {
        streams.push(watch(&mut p.client().await).await);
    }
    let out = "musig2_coordinator_memory_tables{name=\"clocks_out_of_memory\"}";
    let (id, _) = session(&ps, SignatureFormat::Bip340, [9; 32], false).await;
    for p in &ps {
        until_gauge(p, out, 1, Duration::from_secs(10)).await;
    }
    // Out of memory on every party, the first deadline passes: read back, the backup is told.
    let backup = (0..3).find(|i| sorted_index(&ps, *i) == 1).unwrap();
    let evs = collect(
        &mut streams[backup],
        &id,
        Duration::from_secs(10),
        |e| matches!(e, Ev::ShouldBroadcast(x) if x.attempt == 1),
    )
    .await;
    assert!(
        evs.iter().any(
            |e| matches!(e, Ev::CoordinatorFailed(x) if (x.failed_index, x.attempt) == (0, 1))
        ),
        "{evs:?}"
    );
    // Out of memory again (its hour in memory is long past), the backup's application confirms.
    for p in &ps {
        until_gauge(p, out, 1, Duration::from_secs(10)).await;
    }
    let mut c = ps[backup].client().await;
    c.notify_broadcast_complete(pb::NotifyBroadcastCompleteRequest {
        session_id: id.clone(),
        broadcast_reference: "txid-9".into(),
    })
    .await
    .unwrap();
    for (i, s) in streams.iter_mut().enumerate() {
        let evs = collect(s, &id, Duration::from_secs(10), |e| {
            matches!(e, Ev::BroadcastConfirmed(_))
        })
        .await;
        assert!(
            evs.iter().any(
                |e| matches!(e, Ev::BroadcastConfirmed(x) if x.broadcast_reference == "txid-9")
            ),
            "party {i}: {evs:?}"
        );
    }
    // Every clock stopped, and the sessions leave memory for good.
    for p in &ps {
        until_gauge(p, out, 0, Duration::from_secs(10)).await;
        let s = p
            .client()
            .await
            .get_session(pb::GetSessionRequest {
                session_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .session
            .unwrap();
        assert!(s.broadcast_confirmed);
    }
}
