//! The lanes direct messages travel on ([`coordinator_svc::p2p::lanes`]), attacked by a raw
//! libp2p peer speaking the frame format by hand to a real node: extra lanes are closed, frames
//! written back to back are all answered by id, and a frame announced over the limit is refused
//! without being read and ends its lane.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

mod common;

use std::time::Duration;

use common::Party;
use coordinator_svc::p2p::lanes::{LANE_PROTOCOL, MAX_INBOUND_STREAMS_PER_PEER};
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::{PeerId, Stream, StreamProtocol, noise, tcp, yamux};
use shared::wire::MAX_DIRECT_MESSAGE_BYTES;

/// A bare libp2p peer (no behaviour but streams) connected to `victim`: its stream control,
/// the victim's peer id and its own.
async fn raw_peer(victim: &Party) -> (libp2p_stream::Control, PeerId, PeerId) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    let me = *swarm.local_peer_id();
    let addr = victim.addr().await;
    let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
        panic!("no peer id in {addr}")
    };
    swarm.dial(addr).unwrap();
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (control, peer, me)
}

async fn open(control: &mut libp2p_stream::Control, peer: PeerId) -> Stream {
    tokio::time::timeout(
        Duration::from_secs(10),
        control.open_stream(peer, StreamProtocol::new(LANE_PROTOCOL)),
    )
    .await
    .expect("lane opened in time")
    .unwrap()
}

async fn try_write(s: &mut Stream, id: u64, len: u32, body: &[u8]) -> std::io::Result<()> {
    let mut buf = id.to_be_bytes().to_vec();
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(body);
    s.write_all(&buf).await?;
    s.flush().await
}

async fn write(s: &mut Stream, id: u64, len: u32, body: &[u8]) {
    try_write(s, id, len, body).await.unwrap();
}

/// The next answer on a lane (`None`: the victim ended it).
async fn answer(s: &mut Stream) -> Option<(u64, String)> {
    let read = async {
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.ok()?;
        let id = u64::from_be_bytes(head[..8].try_into().unwrap());
        let len = u32::from_be_bytes(head[8..].try_into().unwrap()) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.ok()?;
        Some((id, String::from_utf8(body).unwrap()))
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer or the end of the lane in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_a_few_lanes_and_frames_written_back_to_back_are_each_answered() {
    let victim = Party::start(71, common::fast_config()).await;
    let (mut control, peer, _) = raw_peer(&victim).await;
    let mut lanes = Vec::new();
    for _ in 0..MAX_INBOUND_STREAMS_PER_PEER + 2 {
        lanes.push(open(&mut control, peer).await);
    }
    // Three frames written at once on the first lane: three answers, matched by id (none is a
    // valid envelope, so each is refused, and the answer says why).
    for id in [7, 8, 9] {
        write(&mut lanes[0], id, 3, &[1, 2, 3]).await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (id, text) = answer(&mut lanes[0]).await.expect("answered");
        assert!(text.starts_with("rejected: "), "{text}");
        ids.push(id);
    }
    ids.sort_unstable();
    assert_eq!(ids, [7, 8, 9]);
    // The lanes within the limit are served; those beyond it were closed at once (writing
    // on one fails, or nothing is ever answered on it).
    for (i, lane) in lanes.iter_mut().enumerate() {
        let id = 100 + i as u64;
        if i < MAX_INBOUND_STREAMS_PER_PEER {
            write(lane, id, 1, &[0]).await;
            assert_eq!(answer(lane).await.map(|(id, _)| id), Some(id), "lane {i}");
        } else if try_write(lane, id, 1, &[0]).await.is_ok() {
            assert_eq!(answer(lane).await, None, "lane {i} is over the limit");
        }
    }
    victim.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_announced_over_the_limit_is_refused_unread_and_ends_its_lane() {
    let victim = Party::start(72, common::fast_config()).await;
    let (mut control, peer, me) = raw_peer(&victim).await;
    let mut lane = open(&mut control, peer).await;
    let over = u32::try_from(MAX_DIRECT_MESSAGE_BYTES + 1).unwrap();
    // Only a few of the announced bytes follow: the victim must not wait for the rest.
    write(&mut lane, 41, over, &[0; 64]).await;
    let (id, text) = answer(&mut lane).await.expect("refused with an answer");
    assert_eq!(id, 41);
    assert!(text.starts_with("rejected: "), "{text}");
    assert_eq!(answer(&mut lane).await, None, "the lane ended");
    // It was counted against the peer.
    let counted = victim.node.rejections().await.unwrap();
    assert_eq!(
        counted.get(&me).map(|m| m.values().sum::<u64>()),
        Some(1),
        "{counted:?}"
    );
    // A new lane from the same peer is served.
    let mut again = open(&mut control, peer).await;
    write(&mut again, 42, 1, &[0]).await;
    assert_eq!(answer(&mut again).await.map(|(id, _)| id), Some(42));
    victim.stop();
}
