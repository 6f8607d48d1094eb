//! Sessions between coordinators over real libp2p on 127.0.0.1, each backed by its own signer
//! over mutual TLS.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use common::{Party, context, parties, wait_event};
use coordinator_svc::node::NodeEvent;
use coordinator_svc::session::Phase;
use shared::election::SessionId;
use shared::musig::{SignatureFormat, verify};

/// Create on party 0, everyone else joins when the announcement arrives; every node reaches
/// COMPLETE with the same signature, which verifies.
async fn run(ps: &mut [Party], format: SignatureFormat, taproot: bool, msg: [u8; 32]) {
    let refs: Vec<&Party> = ps.iter().collect();
    let ctx = context(&refs, format, taproot, msg);
    let view = ps[0]
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap();
    let id = view.id;
    for p in ps.iter_mut().skip(1) {
        wait_event(&mut p.events, |e| {
            matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
        })
        .await;
        p.node.join_session(id).await.unwrap();
    }
    let mut sigs = Vec::new();
    for p in ps.iter_mut() {
        let sig = wait_event(&mut p.events, |e| match e {
            NodeEvent::Complete {
                id: i, signatures, ..
            } if *i == id => signatures.first().copied(),
            NodeEvent::Aborted { id: i, info } if *i == id => panic!("aborted: {}", info.reason),
            _ => None,
        })
        .await;
        sigs.push(sig);
    }
    assert!(
        sigs.windows(2).all(|w| w[0] == w[1]),
        "every node has the same signature"
    );
    verify(format, &view.output_key, &msg, &sigs[0]).unwrap();
    for p in ps.iter() {
        let v = p.node.session(id).await.unwrap().unwrap();
        assert_eq!(v.phase, Phase::Complete);
        assert_eq!(v.psig_keys.len(), ps.len());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_three_and_five_party_sessions_in_both_formats() {
    for n in [2usize, 3, 5] {
        let mut ps = parties(n).await;
        let mut m = 0u8;
        for format in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
            for taproot in [false, true] {
                m += 1;
                run(&mut ps, format, taproot, [m + 10 * n as u8; 32]).await;
            }
        }
        for p in &ps {
            p.stop();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_found_only_through_the_dht_completes() {
    let mut a = Party::start(21, common::fast_config()).await;
    let mut b = Party::start(22, common::fast_config()).await;
    let mut d = Party::start(23, common::fast_config()).await;
    common::connect(&a, &b).await;
    let ctx = context(&[&a, &b, &d], SignatureFormat::Lotus, true, [9; 32]);
    let view = a.node.create_session(ctx, None, None).await.unwrap();
    let id: SessionId = view.id;
    // The record reaches B through Kademlia replication (B validates and stores it).
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    // D was told nothing; it knows only B. (Kademlia's automatic bootstrap would dial A through
    // B, and A would replay its announcement: D refuses A until it has joined.)
    d.node
        .blacklist(a.node.peer_id(), "test: reach A only later")
        .await
        .unwrap();
    common::connect(&d, &b).await;
    assert!(d.node.session(id).await.unwrap().is_none());
    let joined = d.node.join_session(id).await.unwrap();
    assert_eq!(joined.id, id);
    d.node.unblacklist(a.node.peer_id()).await.unwrap();
    common::connect(&d, &a).await;
    b.node.join_session(id).await.unwrap();
    for p in [&mut a, &mut b, &mut d] {
        let sig = wait_event(&mut p.events, |e| match e {
            NodeEvent::Complete {
                id: i, signatures, ..
            } if *i == id => signatures.first().copied(),
            NodeEvent::Aborted { id: i, info } if *i == id => panic!("aborted: {}", info.reason),
            _ => None,
        })
        .await;
        verify(SignatureFormat::Lotus, &view.output_key, &[9; 32], &sig).unwrap();
    }
    // An unknown id is a clear NOT_FOUND, not a hang.
    let e = d
        .node
        .join_session(SessionId([0x42; 16]))
        .await
        .unwrap_err();
    assert!(
        matches!(e, coordinator_svc::node::NodeError::NotFound(..)),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_tells_the_others_and_expiry_aborts() {
    let mut ps = parties(2).await;
    let ctx = context(&[&ps[0], &ps[1]], SignatureFormat::Bip340, false, [3; 32]);
    let id = ps[0]
        .node
        .create_session(ctx.clone(), None, None)
        .await
        .unwrap()
        .id;
    wait_event(&mut ps[1].events, |e| {
        matches!(e, NodeEvent::SessionCreated(v) if v.id == id).then_some(())
    })
    .await;
    assert_eq!(
        ps[0]
            .node
            .close_session(id, "operator request")
            .await
            .unwrap(),
        Phase::Aborted
    );
    let info = wait_event(&mut ps[1].events, |e| match e {
        NodeEvent::Aborted { id: i, info } if *i == id => Some(info.clone()),
        _ => None,
    })
    .await;
    assert_eq!(info.code, shared::wire::AbortCode::Closed);
    assert!(info.reason.contains("operator request"), "{}", info.reason);
    // Joining an aborted session is refused.
    let e = ps[1].node.join_session(id).await.unwrap_err();
    assert!(
        matches!(e, coordinator_svc::node::NodeError::FailedPrecondition(..)),
        "{e}"
    );

    // A session nobody joins expires at its timeout.
    let id = ps[0]
        .node
        .create_session(ctx, None, Some(std::time::Duration::from_millis(600)))
        .await
        .unwrap()
        .id;
    let info = wait_event(&mut ps[0].events, |e| match e {
        NodeEvent::Aborted { id: i, info } if *i == id => Some(info.clone()),
        _ => None,
    })
    .await;
    assert_eq!(info.code, shared::wire::AbortCode::Timeout);
    assert!(info.reason.contains("expired"), "{}", info.reason);
    // A completed session closes cleanly.
    run(&mut ps, SignatureFormat::Lotus, false, [4; 32]).await;
}
