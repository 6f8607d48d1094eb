//! Three parties as real processes (signer + coordinator each), driven purely through the
//! coordinator's gRPC API over mutual TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

#[path = "common/procs.rs"]
mod procs;

use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use procs::ProcParty;
use shared::musig::{Signature, SignatureFormat, verify};
use tonic::Code;

use std::time::Duration;

use procs::{keys, mesh, next_event, session, watch};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_coordinators_through_the_api_in_both_formats() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    for s in 61..64u8 {
        ps.push(ProcParty::start(base.path(), s, "").await);
    }
    mesh(&ps).await;
    session(&ps, SignatureFormat::Bip340, [1; 32], false).await;
    session(&ps, SignatureFormat::Lotus, [2; 32], true).await;
    // The one-call Sign drives both rounds (others join from their event streams).
    let mut a = ps[0].client().await;
    let mut helpers = Vec::new();
    for p in &ps[1..] {
        let mut c = p.client().await;
        let mut s = watch(&mut c).await;
        helpers.push(tokio::spawn(async move {
            let id = next_event(&mut s, |e| match e {
                Ev::SessionCreated(x) => x.session.as_ref().map(|s| s.session_id.clone()),
                _ => None,
            })
            .await;
            c.sign(pb::SignRequest {
                session_id: id,
                timeout_ms: Some(30_000),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
        }));
    }
    let r = a
        .sign(pb::SignRequest {
            signer_keys: keys(&ps),
            message: vec![3; 32],
            format: pb::SignatureFormat::Lotus as i32,
            timeout_ms: Some(30_000),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    for h in helpers {
        assert_eq!(h.await.unwrap().signature, r.signature);
    }
    let s = r.session.unwrap();
    assert_eq!(s.phase, pb::SessionPhase::Complete as i32);
    verify(
        SignatureFormat::Lotus,
        &s.output_key.try_into().unwrap(),
        &[3; 32],
        &Signature(r.signature.try_into().unwrap()),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_api_calls_get_specific_errors_and_change_nothing() {
    let base = tempfile::tempdir().unwrap();
    let p = ProcParty::start(base.path(), 65, "").await;
    let mut c = p.client().await;
    let other = shared::musig::SecretKey::from_bytes(&[0x66; 32])
        .unwrap()
        .public_key()
        .to_vec();
    let good = pb::CreateSessionRequest {
        signer_keys: vec![p.key.to_vec(), other.clone()],
        message: vec![1; 32],
        format: pb::SignatureFormat::Lotus as i32,
        ..Default::default()
    };
    let cases: Vec<(pb::CreateSessionRequest, Code, &str)> = vec![
        (
            pb::CreateSessionRequest {
                signer_keys: vec![],
                ..good.clone()
            },
            Code::InvalidArgument,
            "1 to 100 keys",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: vec![vec![2; 32], other.clone()],
                ..good.clone()
            },
            Code::InvalidArgument,
            "signer_keys[0]: must be 33 bytes",
        ),
        (
            pb::CreateSessionRequest {
                message: vec![1; 31],
                ..good.clone()
            },
            Code::InvalidArgument,
            "message must be 32 bytes",
        ),
        (
            pb::CreateSessionRequest {
                format: 0,
                ..good.clone()
            },
            Code::InvalidArgument,
            "format",
        ),
        (
            pb::CreateSessionRequest {
                format: 9,
                ..good.clone()
            },
            Code::InvalidArgument,
            "format",
        ),
        (
            pb::CreateSessionRequest {
                election_method: 42,
                ..good.clone()
            },
            Code::InvalidArgument,
            "election_method",
        ),
        (
            pb::CreateSessionRequest {
                timeout_ms: Some(-1),
                ..good.clone()
            },
            Code::InvalidArgument,
            "timeout_ms",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: vec![p.key.to_vec(), p.key.to_vec()],
                ..good.clone()
            },
            Code::InvalidArgument,
            "without duplicates",
        ),
        (
            pb::CreateSessionRequest {
                signer_keys: vec![
                    other.clone(),
                    shared::musig::SecretKey::from_bytes(&[0x67; 32])
                        .unwrap()
                        .public_key()
                        .to_vec(),
                ],
                ..good.clone()
            },
            Code::FailedPrecondition,
            "holds none",
        ),
        (
            pb::CreateSessionRequest {
                tweaks: vec![pb::Tweak {
                    kind: Some(shared::wire::pb::tweak::Kind::Plain(vec![1; 32])),
                }],
                ..good.clone()
            },
            Code::InvalidArgument,
            "Taproot",
        ),
    ];
    for (i, (req, code, text)) in cases.into_iter().enumerate() {
        let e = c.create_session(req).await.unwrap_err();
        assert_eq!(e.code(), code, "case {i}: {e}");
        assert!(
            e.message().contains(text),
            "case {i}: {:?} lacks {text:?}",
            e.message()
        );
        // Machine-readable: a reason, and the field for a bad argument.
        let (reason, meta) = procs::error_info(&e);
        if code == Code::InvalidArgument {
            assert_eq!(reason, "INVALID_FIELD", "case {i}");
            use tonic_types::StatusExt as _;
            let bad = e.get_error_details();
            let v = &bad.bad_request().expect("BadRequest").field_violations[0];
            assert_eq!(Some(&v.field), meta.get("field"), "case {i}");
        } else {
            assert_eq!(reason, "NO_LOCAL_KEY", "case {i}");
        }
    }
    for bad in ["", "zz", "00112233445566778899aabbccddeeff00"] {
        let e = c
            .get_session(pb::GetSessionRequest {
                session_id: bad.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
    }
    let unknown = "00112233445566778899aabbccddeeff".to_string();
    let e = c
        .get_session(pb::GetSessionRequest {
            session_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    let (reason, meta) = procs::error_info(&e);
    assert_eq!(reason, "SESSION_NOT_FOUND");
    assert_eq!(meta.get("session_id"), Some(&unknown));
    assert_eq!(
        c.get_final_signature(pb::GetFinalSignatureRequest {
            session_id: unknown.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.close_session(pb::CloseSessionRequest {
            session_id: unknown.clone(),
            reason: String::new()
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    assert_eq!(
        c.list_sessions(pb::ListSessionsRequest {
            phase: 99,
            ..Default::default()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    assert_eq!(
        c.connect_peer(pb::ConnectPeerRequest {
            multiaddr: "not an address".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::InvalidArgument
    );
    let e = c
        .get_backup_coordinator(pb::GetBackupCoordinatorRequest {
            signer_keys: vec![p.key.to_vec()],
            method: 0,
            current_index: 5,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A valid session waiting for the other signer: calls of later phases are
    // FAILED_PRECONDITION.
    let s = c
        .create_session(good)
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    let id = s.session_id;
    // The creator joined with the creation, so round 1 has started for it: StartRound1
    // returns its nonce (one per local key) once its signer answered. Round 2 cannot start
    // while a nonce is missing: at once without a wait, after the stated wait with one,
    // saying what is missing.
    let r1 = c
        .start_round1(pb::StartRound1Request {
            session_id: id.clone(),
            wait_ms: 10_000,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r1.public_nonces.len(), 1);
    assert_eq!(r1.public_nonces[0].len(), 66);
    for wait_ms in [0, 300] {
        let e = c
            .start_round2(pb::StartRound2Request {
                session_id: id.clone(),
                wait_ms,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
        assert!(e.message().contains("1 of 2 nonces in"), "{e}");
        let (reason, meta) = procs::error_info(&e);
        assert_eq!(reason, "ROUND_NOT_READY");
        assert_eq!(meta.get("session_id"), Some(&id));
    }
    assert_eq!(
        c.get_final_signature(pb::GetFinalSignatureRequest {
            session_id: id.clone()
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    assert_eq!(
        c.notify_broadcast_complete(pb::NotifyBroadcastCompleteRequest {
            session_id: id.clone(),
            broadcast_reference: "x".into()
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );
    // Nothing else was stored: exactly the one valid session exists.
    let all = c
        .list_sessions(pb::ListSessionsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .sessions;
    assert_eq!(all.len(), 1);
    // Election helpers agree with the reference vectors' rules.
    let e = c
        .elect_coordinator(pb::ElectCoordinatorRequest {
            signer_keys: vec![p.key.to_vec(), other],
            method: pb::ElectionMethod::LastSigner as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.coordinator_index, 1);
    assert_eq!(e.priority_list, vec![1, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_overload() {
    let base = tempfile::tempdir().unwrap();
    let extra = "[limits]\nmax_active_sessions = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
    let mut ps = Vec::new();
    for s in 101..103u8 {
        ps.push(procs::ProcParty::start(base.path(), s, extra).await);
    }
    mesh(&ps).await;
    session(
        &ps,
        shared::musig::SignatureFormat::Bip340,
        [0x61; 32],
        false,
    )
    .await;
    // Health: SERVING (the node listens, the signer answers).
    let mut admin = ps[0].admin().await;
    let mut a = ps[0].client().await;
    let mut b = ps[1].client().await;
    let peers = admin
        .list_peers(pb::ListPeersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .peers;
    let pb_ = peers
        .iter()
        .find(|p| p.peer_id == ps[1].peer_id)
        .expect("B is listed");
    assert!(pb_.connected && !pb_.blacklisted);
    assert_eq!(pb_.signer_keys, vec![ps[1].key.to_vec()]);
    let score = admin
        .get_peer_score(pb::GetPeerScoreRequest {
            peer_id: ps[1].peer_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(score.score >= 50);
    // Ban B: the connection drops at once, B cannot come back.
    admin
        .blacklist_peer(pb::BlacklistPeerRequest {
            peer_id: ps[1].peer_id.clone(),
            reason: "operator".into(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .connected_peers
        != 0
    {
        assert!(tokio::time::Instant::now() < deadline, "still connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = b
        .connect_peer(pb::ConnectPeerRequest {
            multiaddr: ps[0].listen[0].clone(),
        })
        .await;
    // Dialling a banned peer is refused as such.
    let e = a
        .connect_peer(pb::ConnectPeerRequest {
            multiaddr: ps[1].listen[0].clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(procs::error_info(&e).0, "PEER_BANNED");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        a.get_node_info(pb::GetNodeInfoRequest {})
            .await
            .unwrap()
            .into_inner()
            .connected_peers,
        0
    );
    let m = admin
        .get_security_metrics(pb::GetSecurityMetricsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.blacklisted_peers, 1);
    let info = admin
        .get_peer_score(pb::GetPeerScoreRequest {
            peer_id: ps[1].peer_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .peer
        .unwrap();
    assert!(info.blacklisted && info.ban_reason.contains("operator"));
    // Bad inputs.
    assert_eq!(
        admin
            .blacklist_peer(pb::BlacklistPeerRequest {
                peer_id: "nope".into(),
                reason: String::new()
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    assert_eq!(
        admin
            .blacklist_peer(pb::BlacklistPeerRequest {
                peer_id: ps[0].peer_id.clone(),
                reason: String::new()
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::InvalidArgument
    );
    // Lift it: B connects again at once.
    admin
        .unblacklist_peer(pb::UnblacklistPeerRequest {
            peer_id: ps[1].peer_id.clone(),
        })
        .await
        .unwrap();
    b.connect_peer(pb::ConnectPeerRequest {
        multiaddr: ps[0].listen[0].clone(),
    })
    .await
    .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a
        .get_node_info(pb::GetNodeInfoRequest {})
        .await
        .unwrap()
        .into_inner()
        .connected_peers
        != 1
    {
        assert!(tokio::time::Instant::now() < deadline, "not reconnected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        admin
            .unblacklist_peer(pb::UnblacklistPeerRequest {
                peer_id: ps[1].peer_id.clone()
            })
            .await
            .unwrap_err()
            .code(),
        tonic::Code::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertise_and_discover_through_the_api() {
    let base = tempfile::tempdir().unwrap();
    let mut ps = Vec::new();
    for s in 121..123u8 {
        ps.push(procs::ProcParty::start(base.path(), s, "").await);
    }
    mesh(&ps).await;
    let mut a = ps[0].client().await;
    let mut b = ps[1].client().await;
    let mut events = watch(&mut b).await;
    let r = a
        .advertise_signer(pb::AdvertiseSignerRequest {
            signer_keys: vec![ps[0].key.to_vec()],
            transaction_types: vec![
                pb::TransactionType::Spend as i32,
                pb::TransactionType::Custody as i32,
            ],
            min_amount: 100,
            max_amount: Some(10_000),
            ttl_ms: Some(60_000),
            description: "treasury desk".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.expires_at_ms > 0);
    let found = next_event(&mut events, |e| match e {
        pb::watch_events_response::Event::SignerDiscovered(d) => d.signer.clone(),
        _ => None,
    })
    .await;
    assert_eq!(found.signer_key, ps[0].key.to_vec());
    assert_eq!(found.peer_id, ps[0].peer_id);
    let discover = |t: pb::TransactionType, amount: u64| pb::DiscoverSignersRequest {
        transaction_type: t as i32,
        amount: (amount != 0).then_some(amount),
        ..Default::default()
    };
    let n = |r: pb::DiscoverSignersResponse| r.signers.len();
    assert_eq!(
        n(
            b.discover_signers(discover(pb::TransactionType::Spend, 500))
                .await
                .unwrap()
                .into_inner()
        ),
        1
    );
    assert_eq!(
        n(
            b.discover_signers(discover(pb::TransactionType::Unspecified, 0))
                .await
                .unwrap()
                .into_inner()
        ),
        1
    );
    assert_eq!(
        n(b.discover_signers(discover(pb::TransactionType::Swap, 500))
            .await
            .unwrap()
            .into_inner()),
        0
    );
    assert_eq!(
        n(
            b.discover_signers(discover(pb::TransactionType::Spend, 50_000))
                .await
                .unwrap()
                .into_inner()
        ),
        0
    );
    assert_eq!(
        n(b.discover_signers(discover(pb::TransactionType::Spend, 50))
            .await
            .unwrap()
            .into_inner()),
        0
    );
    // Rate limit and bad input.
    let again = a
        .advertise_signer(pb::AdvertiseSignerRequest {
            signer_keys: vec![ps[0].key.to_vec()],
            transaction_types: vec![pb::TransactionType::Swap as i32],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::ResourceExhausted);
    // When to retry: the rest of the minute, in a RetryInfo.
    assert_eq!(procs::error_info(&again).0, "RATE_LIMITED");
    {
        use tonic_types::StatusExt as _;
        let delay = again
            .get_error_details()
            .retry_info()
            .and_then(|r| r.retry_delay)
            .expect("RetryInfo");
        assert!(
            delay > std::time::Duration::from_secs(50)
                && delay <= std::time::Duration::from_secs(60),
            "{delay:?}"
        );
    }
    let bad = a
        .advertise_signer(pb::AdvertiseSignerRequest {
            signer_keys: vec![ps[0].key.to_vec()],
            transaction_types: vec![],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    // A discovered signer can be signed with right away.
    session(
        &ps,
        shared::musig::SignatureFormat::Bip340,
        [0x71; 32],
        false,
    )
    .await;
}
