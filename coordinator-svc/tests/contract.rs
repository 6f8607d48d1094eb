//! The API contract clients rely on (issue 11, items 5–10), through the real gRPC API of real
//! processes: safe retries with request ids (also across a restart), machine-readable errors,
//! resumable event streams, signatures read back after they left memory, pages, signing
//! requests both ways, and key aggregation without a session.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use std::collections::BTreeSet;
use std::time::Duration;

use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use procs::{Client, ProcParty, error_info, keys, mesh};
use shared::musig::{Signature, SignatureFormat, verify};
use tonic::Code;

fn taproot() -> Vec<pb::Tweak> {
    vec![pb::Tweak {
        kind: Some(shared::wire::pb::tweak::Kind::Taproot(pb::TaprootTweak {
            merkle_root: Vec::new(),
        })),
    }]
}

fn create(ps: &[ProcParty], msg: u8, request_id: &str) -> pb::CreateSessionRequest {
    pb::CreateSessionRequest {
        signer_keys: keys(ps),
        message: vec![msg; 32],
        format: pb::SignatureFormat::Bip340 as i32,
        tweaks: taproot(),
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn created(c: &mut Client, r: pb::CreateSessionRequest) -> pb::Session {
    c.create_session(r)
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap()
}

async fn watch_from(c: &mut Client, after: Option<u64>) -> procs::Events {
    c.watch_events(pb::WatchEventsRequest {
        start_after_sequence: after,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

/// The next event for which `f` gives a value, with its sequence number.
async fn next<T>(s: &mut procs::Events, mut f: impl FnMut(&Ev) -> Option<T>) -> (u64, T) {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let ev = s.message().await.unwrap().expect("stream open");
            if let Some(t) = ev.event.as_ref().and_then(&mut f) {
                return (ev.sequence, t);
            }
        }
    })
    .await
    .expect("event within 60 s")
}

async fn sign_join(c: &mut Client, id: &str) -> pb::SignResponse {
    c.sign(pb::SignRequest {
        session_id: id.into(),
        timeout_ms: Some(60_000),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
}

async fn list_all(c: &mut Client, page_size: u32) -> Vec<pb::Session> {
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let r = c
            .list_sessions(pb::ListSessionsRequest {
                page_size,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.sessions.len() <= page_size as usize);
        out.extend(r.sessions);
        if r.next_page_token.is_empty() {
            return out;
        }
        token = r.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_errors_cursors_pages_and_key_aggregation_through_the_api() {
    let base = tempfile::tempdir().unwrap();
    let extra = "finished_in_memory_ms = 1000\nenable_coordinator_election = false";
    let mut ps = vec![
        ProcParty::start(base.path(), 91, extra).await,
        ProcParty::start(base.path(), 92, extra).await,
    ];
    ps[0].pin_listen_port();
    mesh(&ps).await;
    let mut a = ps[0].client().await;
    let mut b = ps[1].client().await;

    // CombineKeys: the aggregate and output key a session of this key set will have, and the
    // Taproot address of the latter.
    let combined = a
        .combine_keys(pb::CombineKeysRequest {
            signer_keys: keys(&ps).into_iter().rev().collect(),
            format: 0,
            tweaks: taproot(),
            bitcoin_network: "regtest".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(combined.address.starts_with("bcrt1p"), "{combined:?}");
    assert_eq!(combined.output_key_xonly, combined.output_key[1..]);

    // A lost reply: the first call's deadline passes (the session may or may not have been
    // created); the retries return one and the same session.
    let mut lost = tonic::Request::new(create(&ps, 1, "order-1"));
    lost.set_timeout(Duration::from_millis(1));
    let _ = a.create_session(lost).await;
    let s1 = created(&mut a, create(&ps, 1, "order-1")).await;
    let again = created(&mut a, create(&ps, 1, "order-1")).await;
    assert_eq!(again.session_id, s1.session_id);
    assert_eq!(s1.request_id, "order-1");
    assert_eq!(s1.aggregate_key, combined.aggregate_key);
    assert_eq!(s1.output_key, combined.output_key);
    let e = a
        .create_session(create(&ps, 2, "order-1"))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(error_info(&e).0, "REQUEST_ID_REUSED");
    let e = a
        .create_session(create(&ps, 2, "has space"))
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&e).1.get("field").map(String::as_str),
        Some("request_id")
    );

    // A late subscriber with a cursor still hears of the session created before it came.
    let mut late = watch_from(&mut b, Some(0)).await;
    let (created_seq, _) = next(&mut late, |e| match e {
        Ev::SessionCreated(x) if x.session.as_ref().unwrap().session_id == s1.session_id => {
            Some(())
        }
        _ => None,
    })
    .await;
    assert!(created_seq > 0);
    drop(late);
    let done = sign_join(&mut b, &s1.session_id).await;
    let pk: [u8; 33] = done
        .session
        .as_ref()
        .unwrap()
        .output_key
        .clone()
        .try_into()
        .unwrap();
    verify(
        SignatureFormat::Bip340,
        &pk,
        &[1; 32],
        &Signature(done.signature.clone().try_into().unwrap()),
    )
    .unwrap();
    // Reconnecting after the creation: everything after it, in order, nothing before it.
    let mut resumed = watch_from(&mut b, Some(created_seq)).await;
    let mut last = created_seq;
    loop {
        let ev = resumed.message().await.unwrap().unwrap();
        assert!(ev.sequence > last, "{} after {last}", ev.sequence);
        last = ev.sequence;
        match ev.event.unwrap() {
            Ev::SessionCreated(x) => {
                assert_ne!(
                    x.session.unwrap().session_id,
                    s1.session_id,
                    "replayed twice"
                );
            }
            Ev::SessionComplete(x) if x.session_id == s1.session_id => {
                assert_eq!(x.signature, done.signature);
                assert_eq!(x.output_key, combined.output_key);
                break;
            }
            _ => {}
        }
    }

    // A Sign that times out names its session in the error; the retry with the same request
    // id finishes that session, not a second one.
    let all_keys = keys(&ps);
    let sign2 = move |timeout_ms| pb::SignRequest {
        signer_keys: all_keys.clone(),
        message: vec![2; 32],
        format: pb::SignatureFormat::Bip340 as i32,
        request_id: "order-2".into(),
        timeout_ms: Some(timeout_ms),
        ..Default::default()
    };
    let e = a.sign(sign2(300)).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    let (reason, meta) = error_info(&e);
    assert_eq!(reason, "SIGN_TIMEOUT");
    let id2 = meta.get("session_id").unwrap().clone();
    let mut a2 = a.clone();
    let retry_request = sign2(60_000);
    let retry = tokio::spawn(async move { a2.sign(retry_request).await });
    let joined = sign_join(&mut b, &id2).await;
    let retried = retry.await.unwrap().unwrap().into_inner();
    assert_eq!(retried.session.unwrap().session_id, id2);
    assert_eq!(retried.signature, joined.signature);

    // An unfinished session created with a request id, then a restart of the coordinator: the
    // retry still finds it.
    let s3 = created(&mut a, create(&ps, 3, "order-3")).await;
    // Long enough for the finished sessions to leave memory (1 s here, cleanup every 200 ms).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ps[0].kill_coordinator();
    ps[0].start_coordinator();
    let mut a = ps[0].client().await;
    let again = created(&mut a, create(&ps, 3, "order-3")).await;
    assert_eq!(again.session_id, s3.session_id);
    // The signature of a session no longer in memory is read from the store.
    let f = a
        .get_final_signature(pb::GetFinalSignatureRequest {
            session_id: s1.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(f.signature, done.signature);
    assert_eq!(f.output_key, combined.output_key);

    // Pages: every stored session exactly once, newest first, whatever the page size.
    let all = list_all(&mut a, 1000).await;
    let ids: Vec<&str> = all.iter().map(|s| s.session_id.as_str()).collect();
    for id in [&s1.session_id, &id2, &s3.session_id] {
        assert_eq!(ids.iter().filter(|x| **x == id.as_str()).count(), 1, "{id}");
    }
    assert!(
        all.windows(2)
            .all(|w| w[0].created_at_ms >= w[1].created_at_ms)
    );
    assert_eq!(
        all.iter().filter(|s| s.request_id == "order-1").count(),
        1,
        "one session for the retried request"
    );
    let paged = list_all(&mut a, 1).await;
    assert_eq!(
        paged.iter().map(|s| &s.session_id).collect::<Vec<_>>(),
        all.iter().map(|s| &s.session_id).collect::<Vec<_>>()
    );
    let complete = a
        .list_sessions(pb::ListSessionsRequest {
            phase: pb::SessionPhase::Complete as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .sessions;
    let complete: BTreeSet<_> = complete.into_iter().map(|s| s.session_id).collect();
    assert!(complete.contains(&s1.session_id) && complete.contains(&id2));
    assert!(!complete.contains(&s3.session_id));
    let e = a
        .list_sessions(pb::ListSessionsRequest {
            page_token: "nonsense".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        error_info(&e).1.get("field").map(String::as_str),
        Some("page_token")
    );
    // After the restart the nodes find each other again before the next part.
    mesh(&ps).await;

    // Signing requests: retried with a request id, listed on both sides, answered, and the
    // requester hears the answer and gets the session.
    let mut events = watch_from(&mut a, None).await;
    let send = || pb::SendSigningRequestRequest {
        signer_keys: keys(&ps),
        message: vec![4; 32],
        format: pb::SignatureFormat::Bip340 as i32,
        transaction_type: pb::TransactionType::Custody as i32,
        amount: 7,
        request_id: "sr-1".into(),
        ..Default::default()
    };
    let sr = a
        .send_signing_request(send())
        .await
        .unwrap()
        .into_inner()
        .signing_request_id;
    let sr_again = a
        .send_signing_request(send())
        .await
        .unwrap()
        .into_inner()
        .signing_request_id;
    assert_eq!(sr, sr_again);
    let sent = a
        .list_signing_requests(pb::ListSigningRequestsRequest {})
        .await
        .unwrap()
        .into_inner()
        .requests;
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].direction, pb::SigningRequestDirection::Sent as i32);
    assert_eq!(sent[0].accepted_keys, vec![ps[0].key.to_vec()]);
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let r = b
                .list_signing_requests(pb::ListSigningRequestsRequest {})
                .await
                .unwrap()
                .into_inner()
                .requests;
            if !r.is_empty() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(received[0].signing_request_id, sr);
    assert_eq!(
        received[0].direction,
        pb::SigningRequestDirection::Received as i32
    );
    assert_eq!(received[0].from_peer_id, ps[0].peer_id);
    b.respond_signing_request(pb::RespondSigningRequestRequest {
        signing_request_id: sr.clone(),
        accept: true,
    })
    .await
    .unwrap();
    let (_, answer) = next(&mut events, |e| match e {
        Ev::SigningRequestAnswered(x) => Some(x.clone()),
        _ => None,
    })
    .await;
    assert_eq!(answer.signing_request_id, sr);
    assert!(answer.accepted);
    assert_eq!(answer.signer_key, ps[1].key.to_vec());
    let (_, from_request) = next(&mut events, |e| match e {
        Ev::SessionCreated(x) => x.session.clone(),
        _ => None,
    })
    .await;
    assert_eq!(from_request.request_id, sr);
    let e = b
        .respond_signing_request(pb::RespondSigningRequestRequest {
            signing_request_id: sr,
            accept: true,
        })
        .await
        .unwrap_err();
    assert_eq!(error_info(&e).0, "SIGNING_REQUEST_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_answers_at_once_with_thousands_of_completed_sessions() {
    const SESSIONS: usize = 5000;
    let base = tempfile::tempdir().unwrap();
    let p = ProcParty::start(base.path(), 93, "[limits]\nmax_active_sessions = 64").await;
    let ps = std::slice::from_ref(&p);
    let c = p.client().await;
    // One-party sessions complete without a network: 5,000 of them, 16 at a time.
    let mut tasks = Vec::new();
    for w in 0..16usize {
        let mut c = c.clone();
        let signer_keys = keys(ps);
        tasks.push(tokio::spawn(async move {
            for i in (w..SESSIONS).step_by(16) {
                let mut message = [0u8; 32];
                message[..8].copy_from_slice(&(i as u64).to_be_bytes());
                c.sign(pb::SignRequest {
                    signer_keys: signer_keys.clone(),
                    message: message.to_vec(),
                    format: pb::SignatureFormat::Bip340 as i32,
                    request_id: format!("bulk-{i}"),
                    timeout_ms: Some(60_000),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut c = c;
    // Replaying every completed session, and every retained event, happens inside the stream:
    // the call answers, and the first event arrives, without waiting for the rest.
    for (replay, after) in [(true, None), (false, Some(0))] {
        let started = std::time::Instant::now();
        let mut s = tokio::time::timeout(
            Duration::from_secs(10),
            c.watch_events(pb::WatchEventsRequest {
                replay_completed: replay,
                start_after_sequence: after,
                ..Default::default()
            }),
        )
        .await
        .expect("WatchEvents answers")
        .unwrap()
        .into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("a first event")
            .unwrap()
            .unwrap();
        eprintln!(
            "WatchEvents(replay_completed={replay}, start_after_sequence={after:?}) with {SESSIONS} completed sessions: first event after {:?}",
            started.elapsed()
        );
        // Then all of them, each once.
        let mut completed = BTreeSet::new();
        let mut ev = Some(first);
        loop {
            let e = ev.take().unwrap_or_else(|| panic!("stream ended"));
            if let Some(Ev::SessionComplete(x)) = e.event {
                assert!(completed.insert(x.session_id), "a completion twice");
            }
            if completed.len() == SESSIONS {
                break;
            }
            ev = tokio::time::timeout(Duration::from_secs(30), s.message())
                .await
                .expect("next event")
                .unwrap();
        }
    }
}
