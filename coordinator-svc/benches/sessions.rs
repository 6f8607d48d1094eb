//! 3-party session latency (create → COMPLETE on every node) and throughput over real libp2p on
//! loopback, each party with its own signer over mutual TLS (fsynced audit journals).
//!
//! `cargo bench -p coordinator-svc --bench sessions` (env `SESSIONS_N`, default 300).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs,
    dead_code
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use coordinator_svc::node::NodeEvent;
use shared::election::SessionId;
use shared::musig::SignatureFormat;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("SESSIONS_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let ps = common::parties(3).await;
    // Every non-creator joins as soon as it hears of a session.
    for p in ps.iter().skip(1) {
        let node = p.node.clone();
        let mut rx = p.node.events();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                if let NodeEvent::SessionCreated(v) = e {
                    let node = node.clone();
                    tokio::spawn(async move {
                        let _ = node.join_session(v.id).await;
                    });
                }
            }
        });
    }
    // Completion watcher: session id -> number of nodes complete.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<SessionId>();
    for p in &ps {
        let mut rx = p.node.events();
        let tx = done_tx.clone();
        tokio::spawn(async move {
            while let Ok(e) = rx.recv().await {
                match e {
                    NodeEvent::Complete { id, .. } => {
                        let _ = tx.send(id);
                    }
                    NodeEvent::Aborted { id, info } => {
                        panic!("session {id} aborted: {}", info.reason)
                    }
                    _ => {}
                }
            }
        });
    }
    let refs: Vec<&common::Party> = ps.iter().collect();
    for format in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
        let mut lat = Vec::with_capacity(n);
        for i in 0..n + 20 {
            let mut msg = [0u8; 32];
            msg[..8].copy_from_slice(&(i as u64).to_be_bytes());
            msg[31] = format as u8;
            let ctx = common::context(&refs, format, false, msg);
            let t = Instant::now();
            let id = ps[0].node.create_session(ctx, None, None).await.unwrap().id;
            let mut seen = 0;
            while seen < 3 {
                if done_rx.recv().await.unwrap() == id {
                    seen += 1;
                }
            }
            if i >= 20 {
                lat.push(t.elapsed());
            }
        }
        println!(
            "3-party {format} session, sequential (n={n}): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.9),
            pct(&mut lat, 0.99)
        );
        // Throughput: 16 sessions in flight at a time.
        let total = n;
        let window = 16;
        let t = Instant::now();
        let mut outstanding: HashMap<SessionId, u8> = HashMap::new();
        let mut started = 0;
        let mut finished = 0;
        while finished < total {
            while started < total && outstanding.len() < window {
                let mut msg = [0xffu8; 32];
                msg[..8].copy_from_slice(&(started as u64).to_be_bytes());
                msg[30] = format as u8;
                let ctx = common::context(&refs, format, false, msg);
                let id = ps[0].node.create_session(ctx, None, None).await.unwrap().id;
                outstanding.insert(id, 0);
                started += 1;
            }
            let id = done_rx.recv().await.unwrap();
            if let Some(c) = outstanding.get_mut(&id) {
                *c += 1;
                if *c == 3 {
                    outstanding.remove(&id);
                    finished += 1;
                }
            }
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "3-party {format} sessions, 16 in flight: {total} in {secs:.2} s = {:.1} sessions/s",
            total as f64 / secs
        );
    }
    // The same sequential run while peers flood party 1 with junk (stale messages, refused as
    // spam): each flooder is banned after 50 refusals, so a new one takes over, all run long.
    let mut flooders = Vec::new();
    for i in 0..4u8 {
        let x = common::Party::start(200 + i, common::fast_config()).await;
        common::connect(&x, &ps[1]).await;
        flooders.push(x);
    }
    let target = ps[1].node.peer_id();
    let flood_started = Instant::now();
    let mut flood_tasks = Vec::new();
    for x in &flooders {
        let (node, key) = (x.node.clone(), x.key);
        flood_tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let m = shared::wire::pb::WireMessage {
                    session_id: vec![9; 16],
                    sender_key: key.to_vec(),
                    sequence: 1,
                    timestamp_ms: 0,
                    body: Some(shared::wire::pb::wire_message::Body::Join(
                        shared::wire::pb::SessionJoin {},
                    )),
                };
                let Ok(env) = node.envelope(m, key).await else {
                    break;
                };
                if node.send_raw(target, env).await.is_err() {
                    break;
                }
                sent += 1;
            }
            (sent, Instant::now())
        }));
    }
    let mut lat = Vec::new();
    for i in 0..n {
        let mut msg = [0x77u8; 32];
        msg[..8].copy_from_slice(&(i as u64).to_be_bytes());
        let ctx = common::context(&refs, SignatureFormat::Bip340, false, msg);
        let t = Instant::now();
        let id = ps[0].node.create_session(ctx, None, None).await.unwrap().id;
        let mut seen = 0;
        while seen < 3 {
            if done_rx.recv().await.unwrap() == id {
                seen += 1;
            }
        }
        lat.push(t.elapsed());
    }
    let mut total = 0;
    let mut last = flood_started;
    for t in flood_tasks {
        let (sent, ended) = t.await.unwrap();
        total += sent;
        last = last.max(ended);
    }
    println!(
        "3-party bip340 session, sequential, under a flood of 4 peers (n={n}): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms; the flooders sent {total} messages and were all banned within {:.0} ms",
        pct(&mut lat, 0.5),
        pct(&mut lat, 0.9),
        pct(&mut lat, 0.99),
        (last - flood_started).as_secs_f64() * 1e3
    );
    for p in ps.iter().chain(&flooders) {
        p.stop();
    }
}
