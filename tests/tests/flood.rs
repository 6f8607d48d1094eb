//! Bounded memory under a Sybil flood (issue 13): 1,000 fresh identities — each a new libp2p
//! key and a new secp256k1 key attested for it, which costs an attacker nothing — flood one
//! coordinator core for a simulated hour with hellos, session announcements that include its
//! key, signing requests, advertisements and messages of sessions nobody announced. Every table
//! must stay under its cap the whole time, and an honest session must still complete at the end.
//! `MUSIG2_FLOOD_IDENTITIES` changes the number of identities.

use std::collections::VecDeque;

use coordinator_svc::protocol::inbound::Frame;
use coordinator_svc::protocol::{
    Core, Effect, MAX_ENDED_REMEMBERED, MAX_ORPHAN_SESSIONS, MAX_ORPHANS_PER_SESSION, MAX_UNJOINED,
    NodeEvent, Settings, TableSizes,
};
use coordinator_svc::protocol::{discovery, guard, matchmaking};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use shared::discipline::MemorySigner;
use shared::election::{ElectionMethod, SessionId};
use shared::musig::{SecretKey, SignatureFormat};
use shared::wire::{
    Advertisement, Announce, Body, Header, Message, SessionContext, SigningRequest, pb,
};

const T0: i64 = 1_800_000_000_000;
const HOUR: i64 = 3600 * 1000;

fn settings() -> Settings {
    Settings {
        session_timeout_ms: 10 * 60_000,
        stuck_timeout_ms: 60_000,
        max_sequence_gap: 100,
        enable_replay_protection: true,
        election_method: ElectionMethod::Lexicographic,
        enable_election: true,
        enable_failover: false,
        broadcast_timeout_ms: 30_000,
        max_active_sessions: 1000,
        enable_session_discovery: false,
        dht: false,
        session_resource_type: coordinator_svc::protocol::SESSION_RESOURCE_TYPE.into(),
        attestation_ttl_ms: 7 * 24 * HOUR,
        attestation_renew_before_ms: 24 * HOUR,
        retention_ms: 90 * 24 * HOUR,
        finished_in_memory_ms: HOUR,
        finished_in_memory_values: coordinator_svc::protocol::MAX_FINISHED_VALUES,
    }
}

/// A party: libp2p identity, signer key and its attestation (its signer apart).
struct Party {
    kp: Keypair,
    peer: PeerId,
    key: [u8; 33],
    attestation: pb::PeerAttestation,
}

fn party(seed: &[u8]) -> (Party, MemorySigner) {
    let bytes: [u8; 32] = Sha256::digest(seed).into();
    let sk = SecretKey::from_bytes(&bytes).unwrap_or_else(|_| unreachable!());
    let key = sk.public_key();
    let signer = MemorySigner::new(vec![sk]);
    let kp = Keypair::ed25519_from_bytes(bytes).unwrap_or_else(|_| unreachable!());
    let peer = kp.public().to_peer_id();
    let expires = T0 + 7 * 24 * HOUR;
    let signature = signer
        .attest(&key, &peer.to_bytes(), expires, &bytes)
        .unwrap_or_else(|_| unreachable!());
    let attestation = pb::PeerAttestation {
        signer_key: key.to_vec(),
        peer_id: peer.to_bytes(),
        expires_at_ms: expires,
        signature: signature.to_vec(),
    };
    (
        Party {
            kp,
            peer,
            key,
            attestation,
        },
        signer,
    )
}

fn core(p: &Party) -> Core {
    Core::new(
        settings(),
        p.kp.clone(),
        vec![p.key],
        [(p.key, p.attestation.clone())].into(),
        [1; 32],
        T0,
    )
}

fn seal(p: &Party, session_id: SessionId, seq: u64, now: i64, body: Body) -> Vec<u8> {
    let msg = Message {
        header: Header {
            session_id,
            sender: p.key,
            sequence: seq,
            timestamp_ms: now,
        },
        body,
    };
    coordinator_svc::envelope::seal(&p.kp, &msg.to_pb(), p.attestation.clone())
        .unwrap_or_else(|e| panic!("{e}"))
}

fn context(a: [u8; 33], b: [u8; 33], message: [u8; 32]) -> SessionContext {
    let mut keys = vec![a, b];
    keys.sort_unstable();
    SessionContext {
        signer_keys: keys,
        message: message.to_vec(),
        format: SignatureFormat::Bip340,
        tweaks: Vec::new(),
        batch: Vec::new(),
    }
}

fn announce(p: &Party, ctx: SessionContext, now: i64, entropy: [u8; 16]) -> (SessionId, Vec<u8>) {
    let id = SessionId::derive(&ctx.signer_keys, &ctx.message, now, &entropy);
    let body = Body::Announce(Box::new(Announce {
        context: ctx,
        election_method: ElectionMethod::Lexicographic,
        created_at_ms: now,
        entropy,
        expires_at_ms: now + 10 * 60_000,
        pool_slot: false,
        uses_pool_slot: None,
        pool_nonces: Vec::new(),
    }));
    (id, seal(p, id, 1, now, body))
}

/// Every table's cap (the sums of the per-part caps).
fn assert_within_caps(t: &TableSizes, at: i64) {
    let at = (at - T0) / 1000;
    assert!(t.unjoined <= MAX_UNJOINED, "at {at} s: {t:?}");
    // Sessions the victim's application never joined leave nothing behind when they end.
    assert_eq!((t.unloaded, t.departed), (0, 0), "at {at} s: {t:?}");
    // Unjoined sessions that ended leave at the next cleanup: at most one more budget's worth.
    assert!(t.sessions <= 2 * MAX_UNJOINED + 1, "at {at} s: {t:?}");
    assert!(t.ended <= MAX_ENDED_REMEMBERED, "at {at} s: {t:?}");
    assert!(t.orphans.0 <= MAX_ORPHAN_SESSIONS, "at {at} s: {t:?}");
    assert!(
        t.orphans.1 <= MAX_ORPHAN_SESSIONS * MAX_ORPHANS_PER_SESSION,
        "at {at} s: {t:?}"
    );
    assert!(
        t.tracked_peers <= guard::MAX_TRACKED_PEERS,
        "at {at} s: {t:?}"
    );
    let (keys, refusals, reputation) = t.peer_tables;
    assert!(
        keys.max(refusals).max(reputation) <= guard::MAX_TRACKED_PEERS,
        "at {at} s: {t:?}"
    );
    assert!(t.bans <= guard::MAX_BANS, "at {at} s: {t:?}");
    assert!(t.adverts.0 <= discovery::MAX_ADVERTS, "at {at} s: {t:?}");
    assert!(
        t.requests.0 <= matchmaking::MAX_REQUESTS,
        "at {at} s: {t:?}"
    );
}

/// The victim (0) and the honest party (1), with their signers.
struct Pair {
    cores: [Core; 2],
    signers: [MemorySigner; 2],
    peers: [PeerId; 2],
    honest_key: [u8; 33],
    writes: usize,
}

impl Pair {
    /// Deliver effects between the two, answering signer requests; what goes to anyone else
    /// is dropped; store writes are counted.
    fn run(&mut self, now: i64, from: usize, fx: Vec<Effect>) {
        let mut rng = StdRng::seed_from_u64(9);
        let mut queue: VecDeque<(usize, Effect)> = fx.into_iter().map(|e| (from, e)).collect();
        while let Some((i, e)) = queue.pop_front() {
            let mut out = Vec::new();
            let Some(e) =
                self.cores[i].answer_in_memory(now, &mut self.signers[i], &mut rng, e, &mut out)
            else {
                queue.extend(out.into_iter().map(|e| (i, e)));
                continue;
            };
            match e {
                Effect::Persist { .. } => self.writes += 1,
                Effect::Send { peer, bytes } => {
                    let Some(j) = self.peers.iter().position(|p| *p == peer) else {
                        continue;
                    };
                    let r =
                        self.cores[j].on_direct(now, self.peers[i], Frame::Bytes(&bytes), &mut out);
                    assert!(r.is_ok(), "party {j} refused party {i}: {r:?}");
                    queue.extend(out.into_iter().map(|e| (j, e)));
                    continue;
                }
                // The victim's application joins only what the honest party created.
                Effect::Emit(NodeEvent::SessionCreated(v)) if v.creator == self.honest_key => {
                    let _ = self.cores[i].join(now, v.id, &mut out);
                }
                _ => {}
            }
            queue.extend(out.into_iter().map(|e| (i, e)));
        }
    }
}

#[test]
fn a_thousand_fresh_identities_flooding_for_an_hour_stay_under_every_cap() {
    let n: usize = std::env::var("MUSIG2_FLOOD_IDENTITIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let (victim, victim_signer) = party(b"victim");
    let (honest, honest_signer) = party(b"honest");
    let mut pair = Pair {
        cores: [core(&victim), core(&honest)],
        signers: [victim_signer, honest_signer],
        peers: [victim.peer, honest.peer],
        honest_key: honest.key,
        writes: 0,
    };
    let mut rng = StdRng::seed_from_u64(42);
    let attackers: Vec<Party> = (0..n)
        .map(|i| party(format!("sybil {i}").as_bytes()).0)
        .collect();
    // Each identity acts 10 times over the hour, the identities interleaved.
    let steps = 10;
    let mut refused = 0u64;
    let mut accepted = 0u64;
    let mut peak = TableSizes::default();
    let mut next_cleanup = T0 + 60_000;
    for step in 0..steps {
        for (i, a) in attackers.iter().enumerate() {
            let slot = i64::try_from(step * n + i).unwrap_or(0);
            let now = T0 + slot * HOUR / i64::try_from(steps * n).unwrap_or(1);
            while next_cleanup <= now {
                let mut fx = Vec::new();
                pair.cores[0].on_cleanup(next_cleanup, &mut fx);
                pair.cores[0].on_deadline(next_cleanup, &mut fx);
                pair.run(next_cleanup, 0, fx);
                next_cleanup += 60_000;
            }
            let mut fx = Vec::new();
            if step == 0 {
                pair.cores[0].on_connected(now, a.peer, true, &mut fx);
            }
            let seq = u64::try_from(step).unwrap_or(0) + 2;
            let frame = match step % 5 {
                // A session that includes the victim's key.
                0 | 3 => {
                    let ctx = context(victim.key, a.key, rng.random());
                    announce(a, ctx, now, rng.random()).1
                }
                // A signing request to the victim.
                1 => seal(
                    a,
                    SessionId([0; 16]),
                    seq,
                    now,
                    Body::SigningRequest(Box::new(SigningRequest {
                        request_id: rng.random(),
                        context: context(victim.key, a.key, rng.random()),
                        transaction_type: pb::TransactionType::Spend,
                        amount: 1,
                        expires_at_ms: now + 5 * 60_000,
                    })),
                ),
                // A message of a session nobody announced.
                2 => {
                    let id = SessionId(rng.random());
                    let body = Body::Join;
                    seal(a, id, 1, now, body)
                }
                // An advertisement on GossipSub.
                _ => {
                    let bytes = seal(
                        a,
                        SessionId([0; 16]),
                        seq,
                        now,
                        Body::Advertisement(Advertisement {
                            transaction_types: vec![pb::TransactionType::Spend],
                            min_amount: 0,
                            max_amount: 0,
                            expires_at_ms: now + HOUR,
                            description: String::new(),
                        }),
                    );
                    let _ = pair.cores[0].on_gossip(now, Some(a.peer), a.peer, &bytes, &mut fx);
                    pair.run(now, 0, fx);
                    accepted += 1;
                    continue;
                }
            };
            match pair.cores[0].on_direct(now, a.peer, Frame::Bytes(&frame), &mut fx) {
                Ok(()) => accepted += 1,
                Err(_) => refused += 1,
            }
            pair.run(now, 0, fx);
            let t = pair.cores[0].table_sizes();
            assert_within_caps(&t, now);
            peak = TableSizes {
                sessions: peak.sessions.max(t.sessions),
                unloaded: peak.unloaded.max(t.unloaded),
                departed: peak.departed.max(t.departed),
                ended: peak.ended.max(t.ended),
                unjoined: peak.unjoined.max(t.unjoined),
                orphans: (
                    peak.orphans.0.max(t.orphans.0),
                    peak.orphans.1.max(t.orphans.1),
                ),
                tracked_peers: peak.tracked_peers.max(t.tracked_peers),
                peer_tables: (
                    peak.peer_tables.0.max(t.peer_tables.0),
                    peak.peer_tables.1.max(t.peer_tables.1),
                    peak.peer_tables.2.max(t.peer_tables.2),
                ),
                bans: peak.bans.max(t.bans),
                adverts: (
                    peak.adverts.0.max(t.adverts.0),
                    peak.adverts.1.max(t.adverts.1),
                ),
                requests: (
                    peak.requests.0.max(t.requests.0),
                    peak.requests.1.max(t.requests.1),
                    peak.requests.2.max(t.requests.2),
                ),
                redials: peak.redials.max(t.redials),
            };
        }
    }
    // The honest party connects and signs with the victim after the flood.
    let now = T0 + HOUR + 1_000;
    let mut fx = Vec::new();
    pair.cores[0].on_connected(now, honest.peer, true, &mut fx);
    pair.run(now, 0, fx);
    let mut fx = Vec::new();
    pair.cores[1].on_connected(now, victim.peer, true, &mut fx);
    pair.run(now, 1, fx);
    let mut fx = Vec::new();
    let id = pair.cores[1]
        .create(
            now,
            context(victim.key, honest.key, [7; 32]),
            None,
            None,
            &mut fx,
        )
        .unwrap_or_else(|e| panic!("{e}"))
        .id;
    pair.run(now, 1, fx);
    let end = pair.cores[0].table_sizes();
    eprintln!(
        "{n} identities, {} messages in a simulated hour ({accepted} accepted, {refused} refused), {} store writes\npeak: {peak:?}\nend: {end:?}",
        n * steps,
        pair.writes
    );
    for (i, c) in pair.cores.iter().enumerate() {
        let phase = c.session(id).map(|s| s.phase.as_str());
        assert_eq!(phase, Some("COMPLETE"), "party {i}");
    }
}
