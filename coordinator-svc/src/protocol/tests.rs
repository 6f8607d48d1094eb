//! Table-driven tests of the core as a whole: inputs in, effects out, with N cores wired
//! synchronously (every message delivered at once, in order) and in-memory signers running the
//! real nonce discipline. Faults and randomness are the simulator's business
//! (`e2e_tests::sim`); here each test states exact effects.

use std::collections::{BTreeMap, VecDeque};

use libp2p_identity::{Keypair, PeerId};
use rand::SeedableRng as _;
use shared::discipline::MemorySigner;
use shared::election::{ElectionMethod, SessionId};
use shared::musig::{SecretKey, SignatureFormat};
use shared::wire::{SessionContext, pb};

use super::inbound::Frame;
use super::session::Phase;
use super::{Core, Effect, NodeEvent, Settings};

const T0: i64 = 1_800_000_000_000;
const TIMEOUT: i64 = 30_000;
const DAY: i64 = 24 * 3600 * 1000;

/// The next deadline of sessions and failover (the renewal of attestations, a day before they
/// expire after 7 days, left out).
fn session_clock(c: &Core) -> Option<i64> {
    c.next_deadline().filter(|d| *d < T0 + 6 * DAY)
}

fn settings(failover: bool) -> Settings {
    Settings {
        session_timeout_ms: 600_000,
        stuck_timeout_ms: 60_000,
        max_sequence_gap: 100,
        enable_replay_protection: true,
        election_method: ElectionMethod::Lexicographic,
        enable_election: true,
        enable_failover: failover,
        broadcast_timeout_ms: TIMEOUT,
        max_active_sessions: 100,
        enable_session_discovery: false,
        dht: false,
        session_resource_type: super::SESSION_RESOURCE_TYPE.into(),
        attestation_ttl_ms: 7 * 24 * 3600 * 1000,
        attestation_renew_before_ms: 24 * 3600 * 1000,
        retention_ms: 90 * 24 * 3600 * 1000,
    }
}

/// N cores, each with its signer; effects run at once, in order.
struct Net {
    now: i64,
    cores: Vec<Core>,
    signers: Vec<MemorySigner>,
    peers: Vec<PeerId>,
    keys: Vec<[u8; 33]>,
    events: Vec<Vec<NodeEvent>>,
    rng: rand::rngs::StdRng,
    /// Messages of this kind to this node are lost.
    lose: Option<(usize, &'static str)>,
    /// Every frame delivered: from, to, bytes.
    delivered: Vec<(usize, usize, Vec<u8>)>,
}

/// The kind of message an envelope from `from` carries.
fn kind(from: PeerId, bytes: &[u8]) -> &'static str {
    crate::envelope::open(bytes, Some(from), T0)
        .map(|(_, m)| m.body.kind())
        .unwrap_or("undecodable")
}

impl Net {
    fn new(n: usize, failover: bool) -> Self {
        let mut net = Net {
            now: T0,
            cores: Vec::new(),
            signers: Vec::new(),
            peers: Vec::new(),
            keys: Vec::new(),
            events: vec![Vec::new(); n],
            rng: rand::rngs::StdRng::seed_from_u64(5),
            lose: None,
            delivered: Vec::new(),
        };
        for i in 0..n {
            let b = u8::try_from(i).unwrap_or(0) + 1;
            let sk = SecretKey::from_bytes(&[b; 32]).unwrap_or_else(|_| unreachable!());
            let key = sk.public_key();
            let signer = MemorySigner::new(vec![sk]);
            let kp = Keypair::ed25519_from_bytes([b; 32]).unwrap_or_else(|_| unreachable!());
            let peer = kp.public().to_peer_id();
            let expires = T0 + 7 * 24 * 3600 * 1000;
            let sig = signer
                .attest(&key, &peer.to_bytes(), expires, &[b; 32])
                .unwrap_or_else(|_| unreachable!());
            let att = pb::PeerAttestation {
                signer_key: key.to_vec(),
                peer_id: peer.to_bytes(),
                expires_at_ms: expires,
                signature: sig.to_vec(),
            };
            let core = Core::new(
                settings(failover),
                kp,
                vec![key],
                BTreeMap::from([(key, att)]),
                [b; 32],
                T0,
            );
            net.cores.push(core);
            net.signers.push(signer);
            net.peers.push(peer);
            net.keys.push(key);
        }
        for i in 0..n {
            for j in 0..n {
                if i != j {
                    let mut fx = Vec::new();
                    let (now, peer) = (net.now, net.peers[j]);
                    net.cores[i].on_connected(now, peer, true, &mut fx);
                    net.run(i, fx);
                }
            }
        }
        net
    }

    /// Perform effects (and everything they cause) until nothing is left.
    fn run(&mut self, node: usize, fx: Vec<Effect>) {
        let mut queue: VecDeque<(usize, Effect)> = fx.into_iter().map(|e| (node, e)).collect();
        while let Some((i, e)) = queue.pop_front() {
            let now = self.now;
            let mut out = Vec::new();
            match e {
                Effect::Send { peer, bytes } => {
                    let Some(j) = self.peers.iter().position(|p| *p == peer) else {
                        continue;
                    };
                    if self
                        .lose
                        .is_some_and(|(to, k)| to == j && kind(self.peers[i], &bytes) == k)
                    {
                        continue;
                    }
                    let from = self.peers[i];
                    let r = self.cores[j].on_direct(now, from, Frame::Bytes(&bytes), &mut out);
                    self.delivered.push((i, j, bytes));
                    assert!(r.is_ok(), "node {j} refused a message of node {i}: {r:?}");
                    queue.extend(out.into_iter().map(|e| (j, e)));
                    continue;
                }
                Effect::Nonce {
                    id,
                    index,
                    key,
                    context,
                } => {
                    let r = self.signers[i]
                        .nonce(&mut self.rng, &id.0, &key, &context)
                        .map_err(|e| e.to_string());
                    self.cores[i].on_nonce(now, id, index, r, &mut out);
                }
                Effect::PartialSign {
                    id,
                    index,
                    key,
                    context,
                    nonces,
                } => {
                    let r = self.signers[i]
                        .partial_sign(&id.0, &key, &context, &nonces)
                        .map_err(|e| e.to_string());
                    self.cores[i].on_partial_signature(now, id, index, r, &mut out);
                }
                Effect::Attest { expires_at_ms, .. } => {
                    let a = self.attestation(i, i, expires_at_ms);
                    self.cores[i].on_attestations(now, Ok(vec![a]), &mut out);
                }
                Effect::Emit(ev) => {
                    if let NodeEvent::SessionCreated(v) = &ev {
                        let id = v.id;
                        let mut fx = Vec::new();
                        let _ = self.cores[i].join(now, id, &mut fx);
                        out.extend(fx);
                    }
                    self.events[i].push(ev);
                }
                _ => {}
            }
            queue.extend(out.into_iter().map(|e| (i, e)));
        }
    }

    /// Signer `signer`'s attestation of node `node`'s peer id until `expires`.
    fn attestation(&self, signer: usize, node: usize, expires: i64) -> pb::PeerAttestation {
        let (key, peer) = (self.keys[signer], self.peers[node]);
        let sig = self.signers[signer]
            .attest(&key, &peer.to_bytes(), expires, &[9; 32])
            .unwrap_or_else(|_| unreachable!());
        pb::PeerAttestation {
            signer_key: key.to_vec(),
            peer_id: peer.to_bytes(),
            expires_at_ms: expires,
            signature: sig.to_vec(),
        }
    }

    fn context(&self) -> SessionContext {
        let mut keys = self.keys.clone();
        keys.sort_unstable();
        SessionContext {
            signer_keys: keys,
            message: vec![7; 32],
            format: SignatureFormat::Bip340,
            tweaks: Vec::new(),
        }
    }

    fn complete_a_session(&mut self) -> SessionId {
        let mut fx = Vec::new();
        let ctx = self.context();
        let view = self.cores[0]
            .create(self.now, ctx, None, None, &mut fx)
            .unwrap_or_else(|e| panic!("{e}"));
        self.run(0, fx);
        for c in &self.cores {
            assert_eq!(c.session(view.id).map(|s| s.phase), Some(Phase::Complete));
        }
        view.id
    }

    fn advance(&mut self, to: i64) {
        self.now = to;
        for i in 0..self.cores.len() {
            let mut fx = Vec::new();
            self.cores[i].on_deadline(to, &mut fx);
            self.run(i, fx);
        }
    }

    /// Failover events since the last call, per node, in a compact form.
    fn take_failover(&mut self) -> Vec<Vec<String>> {
        self.events
            .iter_mut()
            .map(|evs| {
                evs.drain(..)
                    .filter_map(|e| match e {
                        NodeEvent::ShouldBroadcast { index, attempt, .. } => {
                            Some(format!("broadcast {index}@{attempt}"))
                        }
                        NodeEvent::CoordinatorFailed {
                            failed_index,
                            attempt,
                            next_index,
                            ..
                        } => Some(format!("failed {failed_index}->{next_index}@{attempt}")),
                        NodeEvent::FailoverExhausted { attempts, .. } => {
                            Some(format!("exhausted@{attempts}"))
                        }
                        NodeEvent::BroadcastConfirmed { .. } => Some("confirmed".into()),
                        _ => None,
                    })
                    .collect()
            })
            .collect()
    }

    /// The node holding the key at sorted index `i`.
    fn holder(&self, i: usize) -> usize {
        let sorted = self.context().signer_keys;
        self.keys
            .iter()
            .position(|k| *k == sorted[i])
            .unwrap_or_else(|| unreachable!())
    }
}

#[test]
fn failover_deadlines() {
    let mut net = Net::new(3, true);
    let id = net.complete_a_session();
    let t = net.now;
    // Lexicographic election: priority 0, 1, 2. Each step: (time, who says what).
    let h: Vec<usize> = (0..3).map(|i| net.holder(i)).collect();
    let mut first: Vec<Vec<String>> = vec![Vec::new(); 3];
    first[h[0]] = vec!["broadcast 0@0".into()];
    assert_eq!(net.take_failover(), first, "at completion");
    for c in &net.cores {
        assert_eq!(
            session_clock(c),
            Some(t + TIMEOUT),
            "one deadline per session"
        );
    }
    // Nothing happens a millisecond early.
    net.advance(t + TIMEOUT - 1);
    assert_eq!(net.take_failover(), vec![Vec::<String>::new(); 3]);
    // (when, what every node reports, which priority index is told to broadcast)
    type Step = (i64, &'static str, Option<(usize, &'static str)>);
    let steps: [Step; 3] = [
        (t + TIMEOUT, "failed 0->1@1", Some((1, "broadcast 1@1"))),
        (t + 2 * TIMEOUT, "failed 1->2@2", Some((2, "broadcast 2@2"))),
        (t + 3 * TIMEOUT, "failed 2->2@3", None),
    ];
    for (at, everyone, extra) in steps {
        net.advance(at);
        let mut expected: Vec<Vec<String>> = vec![vec![everyone.to_string()]; 3];
        if let Some((index, what)) = extra {
            expected[h[index]].push(what.to_string());
        }
        if extra.is_none() {
            for e in &mut expected {
                e.push("exhausted@3".into());
            }
        }
        assert_eq!(net.take_failover(), expected, "at +{} ms", at - t);
    }
    for c in &net.cores {
        assert_eq!(session_clock(c), None);
        let f = c.session(id).map(|s| s.failover).unwrap_or_default();
        assert!(f.exhausted && f.deadline_ms.is_none());
    }
}

#[test]
fn a_confirmed_broadcast_stops_every_clock() {
    let mut net = Net::new(3, true);
    let id = net.complete_a_session();
    let elected = net.holder(0);
    net.take_failover();
    let mut fx = Vec::new();
    let now = net.now + 10;
    net.cores[elected]
        .notify_broadcast(now, id, "txid".into(), &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    net.run(elected, fx);
    assert_eq!(net.take_failover(), vec![vec!["confirmed".to_string()]; 3]);
    for c in &net.cores {
        assert_eq!(session_clock(c), None);
    }
    net.advance(net.now + 10 * TIMEOUT);
    assert_eq!(net.take_failover(), vec![Vec::<String>::new(); 3]);
}

#[test]
fn without_failover_no_clock_runs() {
    let mut net = Net::new(3, false);
    net.complete_a_session();
    assert_eq!(net.take_failover(), vec![Vec::<String>::new(); 3]);
    for c in &net.cores {
        assert_eq!(session_clock(c), None);
    }
}

#[test]
fn session_timeouts_are_deadlines() {
    let mut net = Net::new(3, true);
    // A session nobody else hears of: node 0 is alone (its peers are not told).
    for j in 1..3 {
        let peer = net.peers[j];
        net.cores[0].on_disconnected(net.now, peer);
    }
    let mut keys = net.keys.clone();
    keys.sort_unstable();
    let ctx = SessionContext {
        signer_keys: keys,
        message: vec![1; 32],
        format: SignatureFormat::Lotus,
        tweaks: Vec::new(),
    };
    let mut fx = Vec::new();
    let view = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    // Deliver nothing: the announcement is lost.
    assert!(fx.iter().any(|e| matches!(e, Effect::Persist { .. })));
    let persist_first = fx.iter().position(|e| matches!(e, Effect::Persist { .. }));
    let first_send = fx.iter().position(|e| matches!(e, Effect::Send { .. }));
    assert!(
        persist_first < first_send,
        "stored before announced: {fx:?}"
    );
    assert_eq!(
        session_clock(&net.cores[0]),
        Some(T0 + 60_000),
        "stuck timeout"
    );
    let mut fx = Vec::new();
    net.cores[0].on_deadline(T0 + 59_999, &mut fx);
    assert!(fx.is_empty(), "{fx:?}");
    net.cores[0].on_deadline(T0 + 60_000, &mut fx);
    let reason = fx
        .iter()
        .find_map(|e| match e {
            Effect::Emit(NodeEvent::Aborted { info, .. }) => Some(info.reason.clone()),
            _ => None,
        })
        .unwrap_or_default();
    assert!(reason.contains("stuck in phase INIT"), "{reason}");
    assert_eq!(
        net.cores[0].session(view.id).map(|s| s.phase),
        Some(Phase::Aborted)
    );
    assert_eq!(session_clock(&net.cores[0]), None);
}

#[test]
fn matchmaking_request_accept_create_and_rate_limit() {
    let mut net = Net::new(3, true);
    let ctx = net.context();
    let mut fx = Vec::new();
    let now = net.now;
    let request = net.cores[0]
        .send_signing_request(now, ctx.clone(), pb::TransactionType::Spend, 5, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let sends = fx
        .iter()
        .filter(|e| matches!(e, Effect::Send { .. }))
        .count();
    assert_eq!(sends, 2, "one request per other holder");
    net.run(0, fx);
    for i in 1..3 {
        assert!(
            net.events[i].iter().any(|e| matches!(e,
                NodeEvent::SigningRequestReceived { request_id, amount: 5, .. } if *request_id == request)),
            "node {i}"
        );
    }
    // Both accept: the requester creates the session and everyone signs.
    for i in 1..3 {
        let mut fx = Vec::new();
        net.cores[i]
            .respond_signing_request(now, request, true, &mut fx)
            .unwrap_or_else(|e| panic!("{e}"));
        net.run(i, fx);
    }
    for c in &net.cores {
        let done = c
            .sessions()
            .iter()
            .any(|s| s.context == ctx && s.phase == Phase::Complete);
        assert!(
            done,
            "{:?}",
            c.sessions().iter().map(|s| s.phase).collect::<Vec<_>>()
        );
    }
    // A second request from the same peer within 30 s is a rate-limit offence.
    let mut fx = Vec::new();
    net.cores[0]
        .send_signing_request(now + 1_000, ctx, pb::TransactionType::Spend, 5, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(Effect::Send { bytes, .. }) = fx.iter().find(|e| matches!(e, Effect::Send { .. }))
    else {
        panic!("no request sent")
    };
    let from = net.peers[0];
    let mut out = Vec::new();
    let r = net.cores[1].on_direct(now + 1_000, from, Frame::Bytes(bytes), &mut out);
    assert!(
        matches!(&r, Err(e) if e.0 == shared::security::Reason::RateLimited),
        "{r:?}"
    );
    // An unknown request id is refused.
    assert!(
        net.cores[1]
            .respond_signing_request(now, [9; 16], true, &mut Vec::new())
            .is_err()
    );
}

#[test]
fn advertisements_one_per_minute_and_identical_refreshes_ignored() {
    use super::inbound::Acceptance;
    let mut net = Net::new(2, true);
    let now = net.now;
    let key = net.keys[0];
    let ad = shared::wire::Advertisement {
        transaction_types: vec![pb::TransactionType::Spend, pb::TransactionType::Swap],
        min_amount: 1,
        max_amount: 0,
        expires_at_ms: now + 3_600_000,
        description: "desk".into(),
    };
    let mut fx = Vec::new();
    net.cores[0]
        .advertise(now, vec![key], ad.clone(), &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let published: Vec<(String, Vec<u8>)> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { topic, bytes } => Some((topic.clone(), bytes.clone())),
            _ => None,
        })
        .collect();
    let topics: Vec<&str> = published.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(topics, ["musig2:signers:spend", "musig2:signers:swap"]);
    // Again within 60 s: refused to the caller.
    assert!(
        net.cores[0]
            .advertise(now + 59_000, vec![key], ad.clone(), &mut Vec::new())
            .is_err()
    );
    let author = net.peers[0];
    // (what arrives, when, GossipSub verdict)
    let (_, first) = &published[0];
    let (_, second) = &published[1];
    let mut fx = Vec::new();
    let table: [(&[u8], i64, Acceptance); 2] = [
        (first, now + 10, Acceptance::Accept),
        // The same advertisement again (another topic): nothing new, no penalty.
        (second, now + 20, Acceptance::Ignore),
    ];
    for (bytes, at, want) in table {
        assert_eq!(
            net.cores[1].on_gossip(at, Some(author), author, bytes, &mut fx),
            want
        );
    }
    assert_eq!(net.cores[1].discovered(now + 30).len(), 1);
    // A different advertisement within 60 s: a rate-limit offence.
    let mut other = Vec::new();
    net.cores[0]
        .advertise(
            now + 61_000,
            vec![key],
            shared::wire::Advertisement {
                min_amount: 2,
                ..ad
            },
            &mut other,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(Effect::Publish { bytes, .. }) = other.first() else {
        panic!("nothing published")
    };
    assert_eq!(
        net.cores[1].on_gossip(now + 30, Some(author), author, bytes, &mut fx),
        Acceptance::Reject
    );
    assert!(fx.iter().any(|e| matches!(
        e,
        Effect::Emit(NodeEvent::Rejected {
            reason: "rate_limited",
            ..
        })
    )));
}

#[test]
fn stale_relayed_gossip_is_dropped_without_blaming_its_author() {
    use super::inbound::Acceptance;
    let mut net = Net::new(3, true);
    let now = net.now;
    let ad = shared::wire::Advertisement {
        transaction_types: vec![pb::TransactionType::Custody],
        min_amount: 0,
        max_amount: 0,
        expires_at_ms: now + 24 * 3_600_000,
        description: String::new(),
    };
    let mut fx = Vec::new();
    let key = net.keys[0];
    net.cores[0]
        .advertise(now, vec![key], ad, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"));
    let Some(Effect::Publish { bytes, .. }) = fx.first() else {
        panic!("nothing published")
    };
    let (author, relay) = (net.peers[0], net.peers[2]);
    // Node 2 re-injects the advertisement 6 minutes later (outside the ±5 min window), many
    // times: node 1 drops it each time and holds it against nobody.
    let mut out = Vec::new();
    for k in 0..200 {
        let at = now + 6 * 60_000 + k;
        assert_eq!(
            net.cores[1].on_gossip(at, Some(author), relay, bytes, &mut out),
            Acceptance::Ignore
        );
    }
    assert!(out.is_empty(), "{out:?}");
    assert!(
        net.cores[1]
            .peers()
            .iter()
            .all(|p| p.ban.is_none() && p.record.spam_events == 0 && p.rejections.is_empty())
    );
}

#[test]
fn a_confirmation_from_a_party_not_responsible_does_not_stop_failover() {
    use shared::wire::{Body, Header, Message};
    let mut net = Net::new(3, true);
    let id = net.complete_a_session();
    net.take_failover();
    // The last in the priority list claims the elected party's attempt 0.
    let liar = net.holder(2);
    let key = net.keys[liar];
    let msg = Message {
        header: Header {
            session_id: id,
            sender: key,
            sequence: 50,
            timestamp_ms: net.now,
        },
        body: Body::BroadcastConfirmed {
            reference: "not broadcast".into(),
            attempt: 0,
        },
    };
    let bytes = net.cores[liar]
        .envelope(&msg.to_pb(), &key)
        .unwrap_or_else(|e| panic!("{e}"));
    let from = net.peers[liar];
    for i in (0..3).filter(|i| *i != liar) {
        let mut fx = Vec::new();
        let r = net.cores[i].on_direct(net.now, from, Frame::Bytes(&bytes), &mut fx);
        assert!(
            matches!(&r, Err(e) if e.0 == shared::security::Reason::NotResponsible),
            "{r:?}"
        );
        let f = net.cores[i]
            .session(id)
            .map(|s| s.failover)
            .unwrap_or_default();
        assert!(f.confirmed.is_none());
        assert_eq!(session_clock(&net.cores[i]), f.deadline_ms);
        assert!(f.deadline_ms.is_some(), "the clock still runs");
    }
}

#[test]
fn sessions_announced_by_a_peer_have_their_own_budget() {
    use super::{MAX_ORPHANS_PER_SESSION, MAX_UNJOINED_PER_PEER, ORPHAN_TTL_MS};
    let mut net = Net::new(2, true);
    let now = net.now;
    let from = net.peers[1];
    let mut keys = net.keys.clone();
    keys.sort_unstable();
    for k in 0..(MAX_UNJOINED_PER_PEER + 5) {
        let ctx = SessionContext {
            signer_keys: keys.clone(),
            message: vec![u8::try_from(k).unwrap_or(0); 32],
            format: SignatureFormat::Bip340,
            tweaks: Vec::new(),
        };
        let mut fx = Vec::new();
        let at = now + i64::try_from(k).unwrap_or(0);
        net.cores[1]
            .create(at, ctx, None, None, &mut fx)
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(announce) = fx.iter().find_map(|e| match e {
            Effect::Send { bytes, .. } => Some(bytes.clone()),
            _ => None,
        }) else {
            panic!("no announcement")
        };
        // Node 0's application never joins.
        let r = net.cores[0].on_direct(at, from, Frame::Bytes(&announce), &mut Vec::new());
        if k < MAX_UNJOINED_PER_PEER {
            assert!(r.is_ok(), "announcement {k}: {r:?}");
        } else {
            assert!(
                matches!(&r, Err(e) if e.0 == shared::security::Reason::TooManySessions),
                "announcement {k}: {r:?}"
            );
        }
    }
    // The peer is not punished for our limit, and the party's own work is not crowded out.
    assert!(!net.cores[0].is_banned(&from));
    let status = net.cores[0].peers().into_iter().find(|p| p.peer == from);
    assert_eq!(status.map(|s| s.record.spam_events), Some(0));
    let mut fx = Vec::new();
    let mut own = net.context();
    own.message = vec![0xEE; 32];
    assert!(net.cores[0].create(now, own, None, None, &mut fx).is_ok());
    // Messages for an unknown session are kept a while, then dropped.
    let orphan = shared::wire::Message {
        header: shared::wire::Header {
            session_id: SessionId([0x77; 16]),
            sender: net.keys[1],
            sequence: 2,
            timestamp_ms: now,
        },
        body: shared::wire::Body::Join,
    };
    let bytes = net.cores[1]
        .envelope(&orphan.to_pb(), &net.keys[1])
        .unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..MAX_ORPHANS_PER_SESSION {
        assert!(
            net.cores[0]
                .on_direct(now, from, Frame::Bytes(&bytes), &mut Vec::new())
                .is_ok()
        );
    }
    assert!(
        net.cores[0]
            .on_direct(now, from, Frame::Bytes(&bytes), &mut Vec::new())
            .is_err()
    );
    // Still full a moment before the buffer expires; room again once it has.
    net.cores[0].on_cleanup(now + ORPHAN_TTL_MS - 1, &mut Vec::new());
    assert!(
        net.cores[0]
            .on_direct(now, from, Frame::Bytes(&bytes), &mut Vec::new())
            .is_err()
    );
    net.cores[0].on_cleanup(now + ORPHAN_TTL_MS, &mut Vec::new());
    assert!(
        net.cores[0]
            .on_direct(
                now + ORPHAN_TTL_MS,
                from,
                Frame::Bytes(&bytes),
                &mut Vec::new()
            )
            .is_ok(),
        "the expired buffer made room"
    );
}

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
    let mut fx = Vec::new();
    let ctx = net.context();
    let id = net.cores[0]
        .create(net.now, ctx, None, None, &mut fx)
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    net.run(0, fx);
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
    let signature = |net: &Net, i: usize| net.cores[i].session(id).and_then(|s| s.signature);
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
fn finished_sessions_leave_memory_after_an_hour_unless_their_clock_runs_and_the_store_is_pruned() {
    const HOUR: i64 = 3600 * 1000;
    // With failover: the broadcast clock runs for hours here, and holds the session.
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
    assert!(net.cores[0].session(held).is_some());
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
    assert!(view.signature.is_some());
}

#[test]
fn announcements_are_stored_under_the_configured_resource_type() {
    let mut net = Net::new(2, false);
    for c in &mut net.cores {
        c.settings.dht = true;
        c.settings.session_resource_type = "lotus-sessions".into();
    }
    let mut fx = Vec::new();
    let ctx = net.context();
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
