//! Signer advertisements over GossipSub: discovery by criteria, expiry, and the rate limit that
//! graylists a spamming peer.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::{Party, wait_event, wait_until};
use coordinator_svc::node::{NodeError, NodeEvent, signer_topic};
use shared::election::SessionId;
use shared::wire::{self, pb};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn advert(
    types: Vec<pb::TransactionType>,
    min: u64,
    max: u64,
    ttl_ms: i64,
    description: &str,
) -> wire::Advertisement {
    wire::Advertisement {
        transaction_types: types,
        min_amount: min,
        max_amount: max,
        expires_at_ms: now_ms() + ttl_ms,
        description: description.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertised_signer_is_discovered_through_gossipsub() {
    let a = Party::start(111, common::fast_config()).await;
    let mut b = Party::start(112, common::fast_config()).await;
    common::connect(&a, &b).await;
    // GossipSub needs the subscription exchange first; the node re-publishes when it sees one.
    let started = std::time::Instant::now();
    a.node
        .advertise(
            vec![a.key],
            advert(
                vec![pb::TransactionType::Spend, pb::TransactionType::Custody],
                1,
                1000,
                60_000,
                "desk A",
            ),
        )
        .await
        .unwrap();
    let (key, ad) = wait_event(&mut b.events, |e| match e {
        NodeEvent::SignerDiscovered {
            key, advertisement, ..
        } => Some((*key, advertisement.clone())),
        _ => None,
    })
    .await;
    println!("discovered in {:?}", started.elapsed());
    assert_eq!(key, a.key);
    assert_eq!(ad.description, "desk A");
    let found = b.node.discovered().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].1, a.node.peer_id());
    // A second advertisement within 60 s is refused locally.
    let e = a
        .node
        .advertise(
            vec![a.key],
            advert(vec![pb::TransactionType::Swap], 0, 0, 60_000, ""),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, NodeError::ResourceExhausted(..)), "{e}");
    // Keys the node does not hold cannot be advertised.
    let other = shared::musig::SecretKey::from_bytes(&[0x7f; 32])
        .unwrap()
        .public_key();
    assert!(matches!(
        a.node
            .advertise(
                vec![other],
                advert(vec![pb::TransactionType::Spend], 0, 0, 1000, "")
            )
            .await,
        Err(NodeError::InvalidArgument(..))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advertisement_spam_is_rate_limited_then_graylisted() {
    let x = Party::start(113, common::fast_config()).await;
    let mut b = Party::start(114, common::fast_config()).await;
    common::connect(&x, &b).await;
    let topic = signer_topic(pb::TransactionType::Swap).to_string();
    let pb_ = b.node.peer_id();
    let px = x.node.peer_id();
    let mut sent = 0u64;
    // Different advertisements for the same key, as fast as possible.
    for i in 0..40u64 {
        let body = advert(
            vec![pb::TransactionType::Swap],
            i,
            0,
            60_000,
            &format!("spam {i}"),
        );
        let m = wire::Message {
            header: wire::Header {
                session_id: SessionId([0; 16]),
                sender: x.key,
                sequence: 1000 + i,
                timestamp_ms: now_ms(),
            },
            body: wire::Body::Advertisement(body),
        };
        let env = x.node.envelope(m.to_pb(), x.key).await.unwrap();
        let banned = || async {
            b.node
                .peers()
                .await
                .unwrap()
                .iter()
                .any(|p| p.peer == px && p.ban.is_some())
        };
        // Until the subscription is known, publishing fails: retry. Once b banned x (it may
        // have done so on the messages still in flight), there is nobody to publish to.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut published = false;
        loop {
            match x.node.publish_raw(&topic, env.clone()).await {
                Ok(()) => {
                    published = true;
                    break;
                }
                Err(_) if banned().await => break,
                Err(_) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("{e}"),
            }
        }
        sent += u64::from(published);
        if banned().await {
            break;
        }
    }
    let until = wait_event(&mut b.events, |e| match e {
        NodeEvent::PeerGraylisted { peer, until_ms, .. } if *peer == px => Some(*until_ms),
        _ => None,
    })
    .await;
    assert!(until > now_ms() + 3_500_000, "graylisted for about an hour");
    let status = b
        .node
        .peers()
        .await
        .unwrap()
        .into_iter()
        .find(|p| p.peer == px)
        .unwrap();
    assert!(status.record.rate_limit_violations >= 10, "{status:?}");
    assert_eq!(
        status.rejections.get("rate_limited").copied().unwrap_or(0),
        u64::from(status.record.rate_limit_violations)
    );
    assert!(sent >= 11);
    // Only the first advertisement was kept.
    let found = b.node.discovered().await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].2.description, "spam 0");
    wait_until(|| async { b.node.info().await.unwrap().connected_peers == 0 }).await;
    let _ = pb_;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_advertisements_disappear() {
    let a = Party::start(115, common::fast_config()).await;
    let mut b = Party::start(116, common::fast_config()).await;
    common::connect(&a, &b).await;
    a.node
        .advertise(
            vec![a.key],
            advert(vec![pb::TransactionType::Escrow], 0, 0, 1500, "short"),
        )
        .await
        .unwrap();
    wait_event(&mut b.events, |e| {
        matches!(e, NodeEvent::SignerDiscovered { .. }).then_some(())
    })
    .await;
    assert_eq!(b.node.discovered().await.unwrap().len(), 1);
    tokio::time::sleep(Duration::from_millis(1700)).await;
    assert!(b.node.discovered().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signing_request_accepted_ends_in_a_completed_session() {
    let mut a = Party::start(117, common::fast_config()).await;
    let mut b = Party::start(118, common::fast_config()).await;
    common::connect(&a, &b).await;
    // A advertises; B finds it and asks it to co-sign.
    a.node
        .advertise(
            vec![a.key],
            advert(
                vec![pb::TransactionType::Custody],
                0,
                0,
                60_000,
                "custody desk",
            ),
        )
        .await
        .unwrap();
    let (key, _) = wait_event(&mut b.events, |e| match e {
        NodeEvent::SignerDiscovered {
            key, advertisement, ..
        } => Some((*key, advertisement.clone())),
        _ => None,
    })
    .await;
    let ctx = common::context(
        &[&a, &b],
        shared::musig::SignatureFormat::Lotus,
        false,
        [0x5c; 32],
    );
    assert!(ctx.signer_keys.contains(&key));
    let request = b
        .node
        .send_signing_request(ctx.clone(), pb::TransactionType::Custody, 2500, None)
        .await
        .unwrap();
    let (rid, amount) = wait_event(&mut a.events, |e| match e {
        NodeEvent::SigningRequestReceived {
            request_id,
            amount,
            context,
            ..
        } if *context == ctx => Some((*request_id, *amount)),
        _ => None,
    })
    .await;
    assert_eq!(rid, request);
    assert_eq!(amount, 2500);
    a.node.respond_signing_request(rid, true).await.unwrap();
    // B creates the session once everyone accepted; A joins it by itself.
    for p in [&mut a, &mut b] {
        let sig = wait_event(&mut p.events, |e| match e {
            NodeEvent::Complete { signatures, .. } => match signatures.as_slice() {
                [one] => Some(*one),
                other => panic!("{} signatures for one message", other.len()),
            },
            NodeEvent::Aborted { info, .. } => panic!("aborted: {}", info.reason),
            _ => None,
        })
        .await;
        let key_agg = ctx.key_agg().unwrap();
        shared::musig::verify(ctx.format, &key_agg.output_key(), &ctx.message, &sig).unwrap();
    }
    // Answering twice, or an unknown request, is refused.
    assert!(matches!(
        a.node.respond_signing_request(rid, true).await,
        Err(NodeError::NotFound(..))
    ));
    // A second request within 30 s is rate limited at A.
    b.node
        .send_signing_request(ctx, pb::TransactionType::Custody, 1, None)
        .await
        .unwrap();
    let pb_ = b.node.peer_id();
    wait_until(|| async {
        a.node
            .rejections()
            .await
            .unwrap()
            .get(&pb_)
            .and_then(|m| m.get("rate_limited"))
            .copied()
            == Some(1)
    })
    .await;
}

/// A node that was not listening when the advertisement was gossiped (or restarted since)
/// finds it in the DHT as soon as it learns the advertiser's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advertisement_is_found_through_the_dht_by_a_node_that_missed_the_gossip() {
    let a = Party::start(119, common::fast_config()).await;
    a.node
        .advertise(
            vec![a.key],
            advert(vec![pb::TransactionType::Spend], 0, 0, 60_000, "in the DHT"),
        )
        .await
        .unwrap();
    // Stop the gossip refresh: only the DHT record is left.
    a.node.withdraw().await.unwrap();
    // Let GossipSub's message cache (5 heartbeats of 1 s) forget it, so that only the DHT has it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut c = Party::start(120, common::fast_config()).await;
    common::connect(&c, &a).await;
    let (key, ad) = wait_event(&mut c.events, |e| match e {
        NodeEvent::SignerDiscovered {
            key, advertisement, ..
        } => Some((*key, advertisement.clone())),
        _ => None,
    })
    .await;
    assert_eq!(key, a.key);
    assert_eq!(ad.description, "in the DHT");
    assert_eq!(c.node.discovered().await.unwrap().len(), 1);
}
