//! The simulated world: nodes (core + store + signer), links with outboxes, a DHT, the parties'
//! applications, the fault schedule and the virtual clock. Every decision draws from one seeded
//! generator and every collection iterated is ordered, so a seed reproduces the run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use coordinator_svc::protocol::{Core, Effect, NodeEvent, Settings};
use coordinator_svc::store::{BanRecord, SessionRecord};
use libp2p::PeerId;
use libp2p::identity::Keypair;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};
use shared::discipline::MemorySigner;
use shared::election::{ElectionMethod, SessionId};
use shared::musig::SecretKey;
use shared::wire::{SessionContext, pb};

use super::check::Checker;

mod events;
use super::{Config, Report};

/// Virtual time at the start (a fixed date), ms since the epoch.
const T0: i64 = 1_800_000_000_000;
/// Housekeeping interval of every node, ms (the real node's is 60 s; more often here, so that
/// finished sessions leave memory while their broadcast clocks run, and come back).
const CLEANUP_MS: i64 = 10_000;
/// Messages kept per link while it is down (the real outbox's limit).
const MAX_OUTBOX: usize = 1024;

/// The protocol settings of every simulated node (short timeouts keep virtual runs short).
/// A node's signer attests its peer id until `expires`.
fn attest(node: &Node, expires: i64, aux: &[u8; 32]) -> pb::PeerAttestation {
    let signature = node
        .signer
        .attest(&node.key, &node.peer.to_bytes(), expires, aux)
        .unwrap_or_else(|_| unreachable!("the key is the signer's"));
    pb::PeerAttestation {
        signer_key: node.key.to_vec(),
        peer_id: node.peer.to_bytes(),
        expires_at_ms: expires,
        signature: signature.to_vec(),
    }
}

/// The protocol settings of every simulated node (short timeouts; attestations renewed a
/// seventh of their lifetime before they expire).
pub fn settings(cfg: &Config) -> Settings {
    Settings {
        session_timeout_ms: 10 * 60_000,
        stuck_timeout_ms: 60_000,
        max_sequence_gap: 100,
        enable_replay_protection: true,
        election_method: ElectionMethod::Lexicographic,
        enable_election: true,
        enable_failover: true,
        broadcast_timeout_ms: 30_000,
        max_active_sessions: 1000,
        enable_session_discovery: true,
        dht: true,
        session_resource_type: coordinator_svc::protocol::SESSION_RESOURCE_TYPE.into(),
        attestation_ttl_ms: cfg.attestation_ttl_ms,
        attestation_renew_before_ms: cfg.attestation_ttl_ms / 7,
        retention_ms: 90 * 24 * 3600 * 1000,
        finished_in_memory_ms: coordinator_svc::protocol::FINISHED_RETENTION_MS,
        // A few sessions' worth: finished sessions leave memory while their broadcast clocks
        // run, and are read back from the store when a clock fires or a message comes.
        finished_in_memory_values: 4,
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        bytes: Vec<u8>,
        link_epoch: u64,
    },
    Nonce {
        node: usize,
        epoch: u64,
        id: SessionId,
        index: usize,
        key: [u8; 33],
        context: SessionContext,
        pooled: bool,
    },
    Sign {
        node: usize,
        epoch: u64,
        id: SessionId,
        index: usize,
        key: [u8; 33],
        context: SessionContext,
        nonces: Vec<Vec<shared::musig::PubNonce>>,
        nonce_session: SessionId,
    },
    Record {
        node: usize,
        epoch: u64,
        query: u64,
        key: Vec<u8>,
    },
    Attest {
        node: usize,
        epoch: u64,
        expires_at_ms: i64,
    },
    Timer {
        node: usize,
        epoch: u64,
    },
    Cleanup {
        node: usize,
        epoch: u64,
    },
    Create {
        plan: usize,
    },
    Join {
        node: usize,
        epoch: u64,
        id: SessionId,
    },
    Confirm {
        node: usize,
        epoch: u64,
        id: SessionId,
    },
    /// A finished session read back from the store (`Effect::Load`).
    Load {
        node: usize,
        epoch: u64,
        id: SessionId,
    },
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    SignerRestart {
        node: usize,
    },
    Partition {
        side: Vec<bool>,
    },
    Heal,
}

/// A planned session: creator and members (node indices).
#[derive(Debug, Clone)]
struct Plan {
    creator: usize,
    members: Vec<usize>,
    message: Vec<u8>,
    /// A batch session's messages (then `message` is empty).
    batch: Vec<Vec<u8>>,
}

struct Node {
    keypair: Keypair,
    peer: PeerId,
    key: [u8; 33],
    signer: MemorySigner,
    core: Option<Core>,
    /// What the store holds (written only by `Effect::Persist` / bans).
    store: BTreeMap<[u8; 16], SessionRecord>,
    bans: BTreeMap<PeerId, BanRecord>,
    skew: i64,
    byzantine: bool,
    epoch: u64,
    timer_at: Option<i64>,
    blocked: BTreeSet<PeerId>,
    /// Frames this node sent (a byzantine node replays them).
    sent: Vec<(usize, Vec<u8>)>,
}

#[derive(Debug, Default)]
struct Link {
    up: bool,
    epoch: u64,
    outbox: VecDeque<Vec<u8>>,
    last_delivery: i64,
}

pub(super) struct World<'a> {
    cfg: &'a Config,
    rng: StdRng,
    now: i64,
    seq: u64,
    queue: BTreeMap<(i64, u64), Ev>,
    nodes: Vec<Node>,
    links: BTreeMap<(usize, usize), Link>,
    side: Option<Vec<bool>>,
    dht: BTreeMap<Vec<u8>, Vec<u8>>,
    plans: Vec<Plan>,
    log: Sha256,
    events: u64,
    check: Checker,
    messages: (u64, u64, u64),
    crashes: (u64, u64),
    loads: u64,
    end: i64,
    /// Frames a node accepted without storing them yet, unanswered until a write of their
    /// session (`from`, `to`, session, bytes): the sender sends them again when the receiver
    /// crashes first, as its outbox does.
    held: Vec<(usize, usize, SessionId, Vec<u8>)>,
}

fn peer_index(nodes: &[Node], peer: &PeerId) -> Option<usize> {
    nodes.iter().position(|n| n.peer == *peer)
}

impl<'a> World<'a> {
    pub(super) fn new(cfg: &'a Config) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let byzantine_node =
            (cfg.faults.byzantine > 0.0 && cfg.parties >= 3).then_some(cfg.parties - 1);
        let mut nodes = Vec::new();
        for i in 0..cfg.parties {
            let sk = loop {
                if let Ok(k) = SecretKey::from_bytes(&rng.random::<[u8; 32]>()) {
                    break k;
                }
            };
            let mut seed = rng.random::<[u8; 32]>();
            let keypair = Keypair::ed25519_from_bytes(&mut seed).unwrap_or_else(|_| unreachable!());
            let skew = if cfg.faults.clock_skew_ms > 0 {
                rng.random_range(-cfg.faults.clock_skew_ms..=cfg.faults.clock_skew_ms)
            } else {
                0
            };
            nodes.push(Node {
                peer: keypair.public().to_peer_id(),
                keypair,
                key: sk.public_key(),
                signer: MemorySigner::new(vec![sk]),
                core: None,
                store: BTreeMap::new(),
                bans: BTreeMap::new(),
                skew,
                byzantine: byzantine_node == Some(i),
                epoch: 0,
                timer_at: None,
                blocked: BTreeSet::new(),
                sent: Vec::new(),
            });
        }
        let honest: Vec<usize> = (0..cfg.parties)
            .filter(|i| Some(*i) != byzantine_node)
            .collect();
        let mut plans = Vec::new();
        for s in 0..cfg.sessions {
            let mut members = honest.clone();
            if let Some(b) = byzantine_node
                && rng.random_bool(cfg.faults.byzantine.clamp(0.0, 1.0))
            {
                members.push(b);
            }
            let creator = members[rng.random_range(0..members.len())];
            let digest = |m: usize| {
                Sha256::digest(format!("sim {} session {s} message {m}", cfg.seed)).to_vec()
            };
            // The second of every three sessions is a batch (drawing nothing from the RNG).
            let (message, batch) = if s % 3 == 1 && cfg.batch > 1 {
                (Vec::new(), (0..cfg.batch).map(digest).collect())
            } else {
                (
                    Sha256::digest(format!("sim {} session {s}", cfg.seed)).to_vec(),
                    Vec::new(),
                )
            };
            plans.push(Plan {
                creator,
                members,
                message,
                batch,
            });
        }
        let byz_keys = nodes
            .iter()
            .filter(|n| n.byzantine)
            .map(|n| n.key)
            .collect();
        let honest_peers = nodes
            .iter()
            .filter(|n| !n.byzantine)
            .map(|n| n.peer)
            .collect();
        World {
            cfg,
            rng,
            now: T0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            links: BTreeMap::new(),
            side: None,
            dht: BTreeMap::new(),
            plans,
            log: Sha256::new(),
            events: 0,
            check: Checker::new(byz_keys, honest_peers),
            messages: (0, 0, 0),
            crashes: (0, 0),
            loads: 0,
            held: Vec::new(),
            end: T0,
        }
    }

    fn at(&mut self, t: i64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((t.max(self.now), self.seq), ev);
    }

    fn latency(&mut self) -> i64 {
        self.rng
            .random_range(1..=self.cfg.faults.max_latency_ms.max(1))
    }

    fn local_now(&self, node: usize) -> i64 {
        self.now + self.nodes[node].skew
    }

    fn note(&mut self, line: &str) {
        if self.cfg.trace {
            eprintln!("{:>10} {line}", self.now - T0);
        }
        self.log.update(self.now.to_le_bytes());
        self.log.update(line.as_bytes());
        self.log.update(b"\n");
    }

    pub(super) fn run(mut self) -> Report {
        let cfg = self.cfg;
        for i in 0..self.nodes.len() {
            self.start_node(i);
        }
        for i in 0..self.nodes.len() {
            for j in (i + 1)..self.nodes.len() {
                self.connect(i, j);
            }
        }
        let mut t = self.now + 500;
        for plan in 0..self.plans.len() {
            self.at(t, Ev::Create { plan });
            t += self.rng.random_range(1..=cfg.session_every_ms.max(1) * 2);
        }
        let faults_until = t + 30_000;
        self.schedule_faults(faults_until);
        let s = settings(cfg);
        self.end = faults_until
            + s.session_timeout_ms
            + s.broadcast_timeout_ms * i64::try_from(cfg.parties + 1).unwrap_or(1)
            + 2 * CLEANUP_MS;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            if t > self.end {
                break;
            }
            self.now = t;
            self.events += 1;
            self.handle(ev);
        }
        self.now = self.end;
        let live: Vec<Option<&Core>> = self.nodes.iter().map(|n| n.core.as_ref()).collect();
        let signers: Vec<&MemorySigner> = self.nodes.iter().map(|n| &n.signer).collect();
        let byz: Vec<bool> = self.nodes.iter().map(|n| n.byzantine).collect();
        let no_faults = cfg.faults == super::Faults::NONE;
        self.check
            .finish(self.now - T0, &live, &signers, &byz, no_faults);
        let stats = self.check.stats();
        Report {
            seed: cfg.seed,
            events: self.events,
            log_hash: self.log.finalize().into(),
            virtual_ms: self.now - T0,
            created: stats.0,
            completed: stats.1,
            aborted: stats.2,
            violations: self.check.violations.clone(),
            honest_bans: self.check.honest_bans.clone(),
            messages: self.messages,
            crashes: self.crashes,
            loads: self.loads,
        }
    }

    fn schedule_faults(&mut self, until: i64) {
        let f = self.cfg.faults;
        let n = self.nodes.len();
        let span = until - self.now;
        if f.crashes {
            let mut t = self.now + self.rng.random_range(1..=self.cfg.restart_every_ms.max(2));
            while t < until {
                let node = self.rng.random_range(0..n);
                let down = self.rng.random_range(200..5_000);
                self.at(t, Ev::Crash { node });
                self.at(t + down, Ev::Restart { node });
                t += self
                    .rng
                    .random_range(1..=self.cfg.restart_every_ms.max(2) * 2);
            }
        }
        // Signer restarts and partitions come about as often as coordinator crashes.
        let every = self.cfg.restart_every_ms.max(1);
        if f.signer_restarts {
            for _ in 0..(span / every).max(1) {
                let t = self.now + self.rng.random_range(0..span.max(1));
                let node = self.rng.random_range(0..n);
                self.at(t, Ev::SignerRestart { node });
            }
        }
        if f.partitions && n >= 2 {
            for _ in 0..(span * 2 / (every * 3)).max(1) {
                let t = self.now + self.rng.random_range(0..span.max(1));
                let side: Vec<bool> = (0..n).map(|_| self.rng.random_bool(0.5)).collect();
                let heal = self.rng.random_range(1_000..15_000);
                self.at(t, Ev::Partition { side });
                self.at(t + heal, Ev::Heal);
            }
        }
    }

    // ---------------------------------------------------------------- nodes

    fn start_node(&mut self, i: usize) {
        let now = self.local_now(i);
        let cfg = self.cfg;
        let node = &mut self.nodes[i];
        let aux = self.rng.random::<[u8; 32]>();
        let attestation = attest(node, now + cfg.attestation_ttl_ms, &aux);
        let attestations = BTreeMap::from([(node.key, attestation)]);
        let mut core = Core::new(
            settings(cfg),
            node.keypair.clone(),
            vec![node.key],
            attestations,
            self.rng.random::<[u8; 32]>(),
            now,
        );
        if !node.byzantine {
            core.plant(cfg.planted);
        }
        let bans: Vec<(PeerId, BanRecord)> =
            node.bans.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut fx = Vec::new();
        // As the node restarts: unfinished sessions and the newest finished ones in memory.
        let store = &node.store;
        let restarted = core.restart(
            now,
            |f| {
                for (k, v) in store {
                    f(*k, v.clone());
                }
                Ok::<(), std::convert::Infallible>(())
            },
            |id| Ok(store.get(id).cloned()),
            bans,
            &mut fx,
        );
        if let Err(e) = restarted {
            match e {}
        }
        node.core = Some(core);
        node.epoch += 1;
        node.timer_at = None;
        let epoch = node.epoch;
        self.note(&format!("start {i}"));
        self.execute(i, fx);
        self.arm(i);
        let t = self.now + CLEANUP_MS;
        self.at(t, Ev::Cleanup { node: i, epoch });
        // The application resumes what it was doing: join the sessions it knows.
        let ids: Vec<SessionId> = self.nodes[i]
            .core
            .as_ref()
            .map(|c| {
                c.sessions()
                    .into_iter()
                    .filter(|s| !s.phase.is_terminal())
                    .map(|s| s.id)
                    .collect()
            })
            .unwrap_or_default();
        for id in ids {
            let d = self.rng.random_range(1..50);
            self.at(self.now + d, Ev::Join { node: i, epoch, id });
        }
    }

    fn alive(&self, i: usize) -> bool {
        self.nodes[i].core.is_some()
    }

    fn reachable(&self, i: usize, j: usize) -> bool {
        self.alive(i)
            && self.alive(j)
            && self.side.as_ref().is_none_or(|s| s[i] == s[j])
            && !self.nodes[i].blocked.contains(&self.nodes[j].peer)
            && !self.nodes[j].blocked.contains(&self.nodes[i].peer)
    }

    fn connect(&mut self, i: usize, j: usize) {
        if i == j || !self.reachable(i, j) || self.links.get(&(i, j)).is_some_and(|l| l.up) {
            return;
        }
        for (a, b) in [(i, j), (j, i)] {
            let l = self.links.entry((a, b)).or_default();
            l.up = true;
            l.epoch += 1;
        }
        self.note(&format!("connect {i} {j}"));
        for (a, b) in [(i, j), (j, i)] {
            let (now, peer) = (self.local_now(a), self.nodes[b].peer);
            let mut fx = Vec::new();
            if let Some(c) = self.nodes[a].core.as_mut() {
                c.on_connected(now, peer, true, &mut fx);
            }
            self.execute(a, fx);
        }
        for (a, b) in [(i, j), (j, i)] {
            let queued: Vec<Vec<u8>> = self
                .links
                .get_mut(&(a, b))
                .map(|l| l.outbox.drain(..).collect())
                .unwrap_or_default();
            for bytes in queued {
                self.transmit(a, b, bytes);
            }
        }
    }

    fn disconnect(&mut self, i: usize, j: usize) {
        if !self.links.get(&(i, j)).is_some_and(|l| l.up) {
            return;
        }
        for (a, b) in [(i, j), (j, i)] {
            if let Some(l) = self.links.get_mut(&(a, b)) {
                l.up = false;
                l.epoch += 1;
            }
            let (now, peer) = (self.local_now(a), self.nodes[b].peer);
            if let Some(c) = self.nodes[a].core.as_mut() {
                c.on_disconnected(now, peer);
                self.arm(a);
            }
        }
        self.note(&format!("disconnect {i} {j}"));
    }

    fn reconnect_all(&mut self) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in (i + 1)..n {
                if self.reachable(i, j) {
                    self.connect(i, j);
                } else {
                    self.disconnect(i, j);
                }
            }
        }
    }

    /// Put a frame on the wire of an up link: lost, duplicated, delayed, maybe reordered.
    fn transmit(&mut self, from: usize, to: usize, bytes: Vec<u8>) {
        let f = self.cfg.faults;
        if f.drop > 0.0 && self.rng.random_bool(f.drop) {
            self.messages.1 += 1;
            self.note(&format!("lost {from}->{to}"));
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.random_bool(f.duplicate) {
            self.messages.2 += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let lat = self.latency();
            let Some(link) = self.links.get(&(from, to)) else {
                return;
            };
            let (link_epoch, last) = (link.epoch, link.last_delivery);
            let t = if f.reorder {
                self.now + lat
            } else {
                (self.now + lat).max(last)
            };
            if let Some(l) = self.links.get_mut(&(from, to)) {
                l.last_delivery = t;
            }
            self.at(
                t,
                Ev::Deliver {
                    from,
                    to,
                    bytes: bytes.clone(),
                    link_epoch,
                },
            );
        }
    }

    fn send(&mut self, from: usize, peer: PeerId, bytes: Vec<u8>) {
        let Some(to) = peer_index(&self.nodes, &peer) else {
            return;
        };
        if self.nodes[from].byzantine {
            self.nodes[from].sent.push((to, bytes.clone()));
        }
        let up = self.links.get(&(from, to)).is_some_and(|l| l.up);
        if up {
            self.transmit(from, to, bytes);
        } else {
            let l = self.links.entry((from, to)).or_default();
            if l.outbox.len() < MAX_OUTBOX {
                l.outbox.push_back(bytes);
            }
        }
    }

    /// Schedule the node's next deadline.
    fn arm(&mut self, i: usize) {
        let Some(d) = self.nodes[i].core.as_ref().and_then(Core::next_deadline) else {
            return;
        };
        let global = d - self.nodes[i].skew;
        if self.nodes[i].timer_at.is_some_and(|t| t <= global) {
            return;
        }
        self.nodes[i].timer_at = Some(global);
        let epoch = self.nodes[i].epoch;
        self.at(global, Ev::Timer { node: i, epoch });
    }

    // ---------------------------------------------------------------- effects

    fn execute(&mut self, i: usize, fx: Vec<Effect>) {
        for effect in fx {
            match effect {
                Effect::Persist { id, record } => {
                    self.note(&format!("persist {i} {id} {}", record.phase));
                    self.nodes[i].store.insert(id.0, *record);
                    self.held.retain(|h| !(h.1 == i && h.2 == id));
                }
                Effect::PersistBan { peer, ban } => {
                    self.nodes[i].bans.insert(peer, ban);
                }
                Effect::RemoveBan(peer) => {
                    self.nodes[i].bans.remove(&peer);
                }
                Effect::Send { peer, bytes } => {
                    self.note(&format!(
                        "send {i} {peer} {}",
                        hex::encode(Sha256::digest(&bytes))
                    ));
                    self.send(i, peer, bytes);
                }
                Effect::Publish { .. } => {}
                Effect::PutRecord { key, value, .. } => {
                    self.dht.insert(key, value);
                }
                Effect::GetRecord { query, key } => {
                    let (t, epoch) = (self.now + self.latency(), self.nodes[i].epoch);
                    self.at(
                        t,
                        Ev::Record {
                            node: i,
                            epoch,
                            query,
                            key,
                        },
                    );
                }
                Effect::Nonce {
                    id,
                    index,
                    key,
                    context,
                    pooled,
                } => {
                    let (t, epoch) = (self.now + self.latency() / 4 + 1, self.nodes[i].epoch);
                    self.at(
                        t,
                        Ev::Nonce {
                            node: i,
                            epoch,
                            id,
                            index,
                            key,
                            context,
                            pooled,
                        },
                    );
                }
                Effect::PartialSign {
                    id,
                    index,
                    key,
                    context,
                    nonces,
                    nonce_session,
                } => {
                    let (t, epoch) = (self.now + self.latency() / 4 + 1, self.nodes[i].epoch);
                    self.at(
                        t,
                        Ev::Sign {
                            node: i,
                            epoch,
                            id,
                            index,
                            key,
                            context,
                            nonces,
                            nonce_session,
                        },
                    );
                }
                Effect::Attest { expires_at_ms, .. } => {
                    let (t, epoch) = (self.now + self.latency() / 4 + 1, self.nodes[i].epoch);
                    self.at(
                        t,
                        Ev::Attest {
                            node: i,
                            epoch,
                            expires_at_ms,
                        },
                    );
                }
                Effect::Load(id) => {
                    let (t, epoch) = (self.now + 1, self.nodes[i].epoch);
                    self.at(t, Ev::Load { node: i, epoch, id });
                }
                Effect::Forget(id) => {
                    self.nodes[i].store.remove(&id.0);
                }
                Effect::ReleaseNonces { ids, keys } => {
                    for (id, key) in ids.iter().flat_map(|id| keys.iter().map(move |k| (id, k))) {
                        self.nodes[i].signer.release(&id.0, key);
                    }
                }
                Effect::Prune { finished_before_ms } => {
                    self.nodes[i]
                        .store
                        .retain(|_, r| r.finished_at_ms.is_none_or(|t| t >= finished_before_ms));
                }
                Effect::Dial(peer) => {
                    if let Some(j) = peer_index(&self.nodes, &peer) {
                        self.connect(i, j);
                    }
                }
                Effect::Block(peer) => {
                    self.nodes[i].blocked.insert(peer);
                    if let Some(j) = peer_index(&self.nodes, &peer) {
                        self.disconnect(i, j);
                    }
                }
                Effect::Unblock(peer) => {
                    self.nodes[i].blocked.remove(&peer);
                    if let Some(j) = peer_index(&self.nodes, &peer) {
                        self.connect(i, j);
                    }
                }
                Effect::Emit(e) => self.on_event(i, e),
                // Each real node drops only its own copy; the simulated DHT is one shared map,
                // whose records other nodes may still look up.
                Effect::JoinAnswer { .. } | Effect::RemoveRecord { .. } => {}
            }
        }
    }

    /// The node's application reacts to its events; the checker sees them all.
    fn on_event(&mut self, i: usize, e: NodeEvent) {
        match &e {
            NodeEvent::SessionCreated(v) => self.note(&format!("event {i} created {}", v.id)),
            other => self.note(&format!("event {i} {other:?}")),
        }
        let honest = !self.nodes[i].byzantine;
        let peer_of = |p: &PeerId| peer_index(&self.nodes, p);
        let banned = match &e {
            NodeEvent::PeerBlacklisted { peer, .. } | NodeEvent::PeerGraylisted { peer, .. } => {
                peer_of(peer)
            }
            _ => None,
        };
        self.check.observe(self.now - T0, i, honest, &e, banned);
        let epoch = self.nodes[i].epoch;
        match e {
            NodeEvent::SessionCreated(view) if !view.local_keys.is_empty() => {
                let d = self.rng.random_range(1..50);
                self.at(
                    self.now + d,
                    Ev::Join {
                        node: i,
                        epoch,
                        id: view.id,
                    },
                );
            }
            NodeEvent::ShouldBroadcast { id, .. }
                if honest
                    && self
                        .rng
                        .random_bool(self.cfg.faults.confirm.clamp(0.0, 1.0)) =>
            {
                // Half confirm at once, half late: after a cleanup may have sent the session
                // out of memory with its clock running.
                let d = if self.rng.random_bool(0.5) {
                    self.rng.random_range(10..2_000)
                } else {
                    self.rng.random_range(2_000..2 * CLEANUP_MS)
                };
                self.at(self.now + d, Ev::Confirm { node: i, epoch, id });
            }
            _ => {}
        }
    }
}
