//! The node's event loop: the I/O shell around the protocol core ([`crate::protocol::Core`]).
//! One task owns the swarm, the core, the outboxes and the pending replies; the rest of the
//! program talks to it through a cloneable [`NodeHandle`] (commands with a oneshot reply) and
//! receives [`NodeEvent`]s from a broadcast channel. Signer calls run as spawned tasks whose
//! results come back to the loop, so the loop never waits on the network.
//!
//! Every input goes to the core with the current time; the core's effects are performed in
//! order by [`Node::execute`], which stops a batch at the first write that fails (nothing is
//! sent or reported that the store does not hold). The loop sleeps until the core's next
//! deadline, and runs housekeeping every `cleanup_interval`.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{FutureExt as _, StreamExt};
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, Record, RecordKey};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, identity};
use shared::election::SessionId;
use shared::musig::{PartialSignature, PubNonce};
use shared::wire::{MAX_KEYS_PER_PEER, pb};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::net::{self, Behaviour, BehaviourEvent, DirectRequest};
use crate::p2p::lanes::{Answer, LaneEvent, Lanes, RequestId, SendError, UNSTORED};
use crate::protocol::inbound::{Acceptance, Frame};
use crate::protocol::{Core, Effect, Pending, ms};
use crate::signer::{SignerClient, SignerError};

mod commands;
mod diagnostics;
mod effects;
pub mod events;
mod handle;
mod queries;
mod settings;

pub use settings::NodeConfig;

pub use crate::protocol::{
    ENVELOPE_TAG, ErrorReason, NodeError, NodeEvent, PeerStatus, SESSION_KEY_PREFIX,
    SIGNER_KEY_PREFIX, SessionView,
};
use handle::Command;
pub use handle::{NodeHandle, NodeInfo, SessionPage, SessionWatch};

pub use crate::p2p::outbox::MAX_OUTBOX;

/// GossipSub topic of a transaction type.
pub fn signer_topic(t: pb::TransactionType) -> libp2p::gossipsub::IdentTopic {
    libp2p::gossipsub::IdentTopic::new(crate::protocol::discovery::signer_topic(t))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

enum Internal {
    Nonce {
        id: shared::election::SessionId,
        index: usize,
        result: Result<Vec<PubNonce>, SignerError>,
    },
    Psig {
        id: shared::election::SessionId,
        index: usize,
        result: Result<Vec<PartialSignature>, SignerError>,
    },
    Attested(Result<Vec<pb::PeerAttestation>, SignerError>),
    /// A session read back from the store ([`Effect::Load`]).
    Loaded {
        id: shared::election::SessionId,
        record: Option<Box<crate::store::SessionRecord>>,
    },
}

/// How long a failed `connect` waits for another connection to the same peer.
const DIAL_GRACE: Duration = Duration::from_secs(2);

struct ParkedDial {
    peer: PeerId,
    until: tokio::time::Instant,
    reply: oneshot::Sender<Result<PeerId, NodeError>>,
    error: String,
}

/// What waits for the batch it belongs to be performed.
enum Deferred {
    /// An application's command: its answer.
    Reply(Box<dyn FnOnce(bool) + Send>),
    /// A peer's frame: accepted (once stored) or refused.
    Frame {
        channel: Answer,
        verdict: Result<(), crate::envelope::Refusal>,
    },
    /// A held frame no write covered: the sender sends it again.
    SendAgain(Answer),
}

/// Inputs handled together before their effects are performed (one commit for all).
const MAX_BATCH: usize = 64;

/// A held answer not covered by a write this long (its session left memory some other way)
/// tells the sender to send again. A safety net: the core writes held contributions within
/// [`crate::protocol::unstored::HOLD_MS`].
const HELD_AT_MOST: Duration = Duration::from_secs(5);

/// The answer to a peer's accepted frame whose change is in memory only: it waits for a write
/// of its session placed after it (`batch`, `pos` in that batch's effects).
struct HeldFrame {
    channel: Answer,
    batch: u64,
    pos: usize,
    since: tokio::time::Instant,
}

struct Node {
    deferred: Vec<Deferred>,
    /// Answers waiting for a write of their session ([`crate::protocol::unstored`]).
    held: HashMap<SessionId, Vec<HeldFrame>>,
    /// Batches performed so far.
    batch: u64,
    swarm: Swarm<Behaviour>,
    core: Core,
    signer: SignerClient,
    store: crate::store::Store,
    outbox: crate::p2p::outbox::Outboxes,
    /// Ed25519 keys of envelopes, decompressed once.
    keys_seen: crate::envelope::KeyCache,
    /// The streams direct messages travel on.
    lanes: Lanes,
    addresses: crate::p2p::addresses::AddressBook,
    raw_replies: HashMap<RequestId, oneshot::Sender<Result<Vec<u8>, NodeError>>>,
    /// Dials of `connect` callers by connection: the reply goes to the caller when any
    /// connection to the peer opens, or when *this* dial fails (a failed redial of an old
    /// address, e.g. by Kademlia, must not answer a dial that may still succeed).
    dials:
        HashMap<libp2p::swarm::ConnectionId, (PeerId, oneshot::Sender<Result<PeerId, NodeError>>)>,
    /// Dials of `connect` callers that failed while another connection to the same peer may
    /// still be opening (e.g. our own redial of a session participant, or the peer dialling
    /// us): answered when a connection opens, or with the error at the deadline.
    parked_dials: Vec<ParkedDial>,
    /// Joins waiting for a DHT lookup, by the core's query token.
    joins: BTreeMap<u64, oneshot::Sender<Result<SessionView, NodeError>>>,
    /// DHT queries by libp2p id → the core's query token.
    queries: HashMap<kad::QueryId, u64>,
    internal_tx: mpsc::Sender<Internal>,
    events: broadcast::Sender<NodeEvent>,
    /// Calls waiting for one session's events ([`NodeHandle::watch_session`]).
    waiters: std::sync::Arc<handle::SessionWaiters>,
    log: std::sync::Arc<events::EventLog>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Store transactions committed, and session records they wrote.
    writes: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    /// The core's memory tables after the last cleanup ([`NodeHandle::memory_tables`]).
    tables: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]>,
    /// Direct frames' envelope signatures: proven in batches, proven one by one, left to the
    /// core's full check ([`NodeHandle::signature_checks`]).
    signature_checks: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]>,
}

/// Start a node: ask the signer for its keys and attestations, bind, dial bootstrap peers and
/// run until `shutdown`.
///
/// # Errors
/// Signer unreachable, no keys, or the network cannot start.
pub async fn start(
    cfg: NodeConfig,
    keypair: identity::Keypair,
    signer: SignerClient,
    store: crate::store::Store,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(NodeHandle, tokio::task::JoinHandle<()>)> {
    let keys = signer
        .list_keys()
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the signer's keys: {e}"))?;
    if keys.is_empty() {
        anyhow::bail!("the signer holds no key");
    }
    let keys: Vec<[u8; 33]> = keys.into_iter().take(MAX_KEYS_PER_PEER).collect();
    let peer_id = keypair.public().to_peer_id();
    let now = now_ms();
    let expires = now.saturating_add(ms(cfg.attestation_ttl));
    let attestations = signer
        .attestations(&keys, &peer_id.to_bytes(), expires)
        .await
        .map_err(|e| anyhow::anyhow!("attestation: {e}"))?
        .into_iter()
        .zip(&keys)
        .map(|(a, k)| (*k, a))
        .collect();
    let mut swarm = net::build(keypair.clone(), &cfg.net)?;
    for addr in &cfg.listen {
        swarm.listen_on(addr.clone())?;
    }
    // Wait for the listeners so that `info()` reports real addresses.
    let mut pending = cfg.listen.len();
    while pending > 0 {
        match swarm.select_next_some().await {
            SwarmEvent::NewListenAddr { .. } => pending -= 1,
            SwarmEvent::ListenerError { error, .. } => anyhow::bail!("listen: {error}"),
            SwarmEvent::ListenerClosed { reason: Err(e), .. } => anyhow::bail!("listen: {e}"),
            _ => {}
        }
    }
    for addr in &cfg.external {
        swarm.add_external_address(addr.clone());
    }
    for addr in &cfg.bootstrap {
        if let Some(libp2p::multiaddr::Protocol::P2p(p)) = addr.iter().last()
            && let Some(kad) = swarm.behaviour_mut().kad.as_mut()
        {
            kad.add_address(&p, addr.clone());
        }
        swarm.dial(addr.clone())?;
    }
    for topic in crate::protocol::discovery::all_topics() {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&libp2p::gossipsub::IdentTopic::new(topic))?;
    }
    let mut seed = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut seed);
    let mut core = Core::new(
        cfg.settings(),
        keypair,
        keys.clone(),
        attestations,
        seed,
        now,
    );
    let bans = store
        .bans()?
        .into_iter()
        .filter_map(|(p, b)| Some((p.parse::<PeerId>().ok()?, b)))
        .collect();
    // Unfinished sessions, and the newest finished ones within the memory cap; the others
    // are read from the store on demand. One record at a time: of a finished one only a few
    // numbers are kept (all of the last hour's records at once could exceed the memory limit).
    let mut fx = Vec::new();
    let since = now - ms(cfg.finished_in_memory);
    core.restart(
        now,
        |f| store.scan_live(since, f),
        |id| store.get(id),
        bans,
        &mut fx,
    )?;
    let (tx, rx) = mpsc::channel(256);
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let writes = std::sync::Arc::new([
        std::sync::atomic::AtomicU64::new(0),
        std::sync::atomic::AtomicU64::new(0),
    ]);
    let tables = std::sync::Arc::new(std::array::from_fn(|_| {
        std::sync::atomic::AtomicU64::new(0)
    }));
    let signature_checks = std::sync::Arc::new(std::array::from_fn(|_| {
        std::sync::atomic::AtomicU64::new(0)
    }));
    let (events, _) = broadcast::channel(4096);
    let waiters = std::sync::Arc::new(handle::SessionWaiters::default());
    let log = std::sync::Arc::new(events::EventLog::new(now, events::RETAINED_EVENTS));
    let (internal_tx, internal_rx) = mpsc::channel(1024);
    let (lane_tx, lane_rx) = mpsc::channel(1024);
    let lanes = Lanes::start(swarm.behaviour().lanes.new_control(), lane_tx)?;
    let mut node = Node {
        deferred: Vec::new(),
        held: HashMap::new(),
        batch: 0,
        swarm,
        core,
        signer,
        store,
        outbox: Default::default(),
        keys_seen: Default::default(),
        lanes,
        addresses: Default::default(),
        raw_replies: HashMap::new(),
        dials: HashMap::new(),
        parked_dials: Vec::new(),
        joins: BTreeMap::new(),
        queries: HashMap::new(),
        internal_tx,
        events: events.clone(),
        waiters: waiters.clone(),
        log: log.clone(),
        accepted: accepted.clone(),
        writes: writes.clone(),
        tables: tables.clone(),
        signature_checks: signature_checks.clone(),
    };
    node.note_tables();
    node.execute(fx);
    let task = tokio::spawn(node.run(rx, internal_rx, lane_rx, cfg.cleanup_interval, shutdown));
    Ok((
        NodeHandle {
            waiters,
            tx,
            accepted,
            writes,
            tables,
            signature_checks,
            events,
            log,
            peer_id,
            keys,
        },
        task,
    ))
}

/// How long to sleep for a deadline in ms since the epoch (now if it passed).
fn until(deadline_ms: i64) -> tokio::time::Instant {
    let wait = u64::try_from(deadline_ms.saturating_sub(now_ms())).unwrap_or(0);
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

impl Node {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        mut lane_events: mpsc::Receiver<LaneEvent>,
        cleanup_interval: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut cleanup = tokio::time::interval(cleanup_interval);
        cleanup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self.core.next_deadline();
            let retry = self.outbox.next_retry();
            let parked = self.parked_dials.iter().map(|d| d.until).min();
            let sleep = tokio::time::sleep_until(deadline.map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                until,
            ));
            let mut fx = Vec::new();
            let mut lanes = Vec::new();
            tokio::select! {
                () = shutdown.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_swarm(ev, &mut fx),
                Some(cmd) = commands.recv() => self.on_command(cmd, &mut fx),
                Some(i) = internal.recv() => self.on_internal(i, &mut fx),
                Some(ev) = lane_events.recv() => lanes.push(ev),
                _ = cleanup.tick() => {
                    self.core.on_cleanup(now_ms(), &mut fx);
                    self.purge_expired_records();
                    self.note_tables();
                }
                () = sleep, if deadline.is_some() => self.core.on_deadline(now_ms(), &mut fx),
                () = tokio::time::sleep_until(parked.unwrap_or_else(tokio::time::Instant::now)), if parked.is_some() => {
                    let now = tokio::time::Instant::now();
                    for d in self.parked_dials.extract_if(.., |d| d.until <= now) {
                        let _ = d.reply.send(Err(NodeError::Unavailable(ErrorReason::NetworkUnavailable, d.error)));
                    }
                }
                () = tokio::time::sleep_until(retry.map_or_else(tokio::time::Instant::now, Into::into)), if retry.is_some() => {
                    for peer in self.outbox.take_due(std::time::Instant::now()) {
                        self.pump(peer);
                    }
                }
            }
            // Group commit: inputs that are already waiting join this batch.
            for _ in 1..MAX_BATCH {
                if let Ok(cmd) = commands.try_recv() {
                    self.on_command(cmd, &mut fx);
                } else if let Ok(i) = internal.try_recv() {
                    self.on_internal(i, &mut fx);
                } else if let Ok(ev) = lane_events.try_recv() {
                    lanes.push(ev);
                } else if let Some(ev) = self.swarm.select_next_some().now_or_never() {
                    self.on_swarm(ev, &mut fx);
                } else {
                    break;
                }
            }
            self.on_lanes(&mut lanes, &mut fx);
            self.release_held(&fx);
            let stored = self.execute(fx);
            self.settle(stored);
        }
        tracing::info!("node stopped");
    }

    // ---------------------------------------------------------------- the executor

    // ---------------------------------------------------------------- inputs

    fn on_internal(&mut self, i: Internal, fx: &mut Vec<Effect>) {
        let now = now_ms();
        match i {
            Internal::Nonce { id, index, result } => {
                self.core
                    .on_nonce(now, id, index, result.map_err(|e| e.to_string()), fx);
            }
            Internal::Psig { id, index, result } => {
                self.core.on_partial_signature(
                    now,
                    id,
                    index,
                    result.map_err(|e| e.to_string()),
                    fx,
                );
            }
            Internal::Attested(result) => {
                self.core
                    .on_attestations(now, result.map_err(|e| e.to_string()), fx);
            }
            Internal::Loaded { id, record } => self.core.on_loaded(now, id, record.map(|r| *r), fx),
        }
    }

    /// Publish the sizes of the core's session tables (metrics).
    fn note_tables(&self) {
        let t = self.core.table_sizes();
        for (cell, v) in self.tables.iter().zip([t.sessions, t.unloaded, t.departed]) {
            cell.store(v as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// A stored session, for [`Core::on_loaded`] (`None` when absent or unreadable: logged).
    pub(super) fn read_record(&self, id: SessionId) -> Option<crate::store::SessionRecord> {
        self.store.get(&id.0).unwrap_or_else(|e| {
            tracing::error!(session = %id, error = %e, "stored session not readable");
            None
        })
    }

    /// Answer a command once its batch is performed: the caller never hears of a change that
    /// is not stored (a failed write answers UNAVAILABLE, and what depended on it was not
    /// sent).
    fn answer<T: Send + 'static>(
        &mut self,
        _fx: &mut Vec<Effect>,
        reply: oneshot::Sender<Result<T, NodeError>>,
        result: Result<T, NodeError>,
    ) {
        self.deferred.push(Deferred::Reply(Box::new(move |stored| {
            let _ = reply.send(if stored {
                result
            } else {
                Err(NodeError::Unavailable(
                    ErrorReason::StoreFailed,
                    "the change could not be stored; nothing depending on it was sent".into(),
                ))
            });
        })));
    }

    /// Before a batch is performed: held answers its writes cover join what waits for it
    /// (answered once they are durable); those no write covered for [`HELD_AT_MOST`] are
    /// told to send again.
    fn release_held(&mut self, fx: &[Effect]) {
        let batch = self.batch;
        self.batch += 1;
        if self.held.is_empty() {
            return;
        }
        let mut written: HashMap<SessionId, usize> = HashMap::new();
        for (i, e) in fx.iter().enumerate() {
            if let Effect::Persist { id, .. } = e
                && self.held.contains_key(id)
            {
                written.insert(*id, i);
            }
        }
        let now = tokio::time::Instant::now();
        let deferred = &mut self.deferred;
        self.held.retain(|id, frames| {
            let at = written.get(id).copied();
            for f in frames.extract_if(.., |f| {
                at.is_some_and(|p| f.batch < batch || f.pos <= p)
                    || now.duration_since(f.since) >= HELD_AT_MOST
            }) {
                if at.is_some_and(|p| f.batch < batch || f.pos <= p) {
                    deferred.push(Deferred::Frame {
                        channel: f.channel,
                        verdict: Ok(()),
                    });
                } else {
                    tracing::warn!(session = %id, "a held answer was not covered by a write: the peer sends again");
                    deferred.push(Deferred::SendAgain(f.channel));
                }
            }
            !frames.is_empty()
        });
    }

    /// The batch was performed (`stored`: its writes are on disk): answer what waited for it.
    fn settle(&mut self, stored: bool) {
        for d in std::mem::take(&mut self.deferred) {
            match d {
                Deferred::Reply(f) => f(stored),
                Deferred::SendAgain(channel) => {
                    let _ = channel.send(UNSTORED.to_vec());
                }
                Deferred::Frame { channel, verdict } => {
                    let answer = match verdict {
                        Ok(()) if !stored => UNSTORED.to_vec(),
                        Ok(()) => {
                            self.accepted
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            Vec::new()
                        }
                        Err(r) => format!("rejected: {}: {}", r.0, r.1)
                            .into_bytes()
                            .into_iter()
                            .take(net::MAX_RESPONSE_BYTES)
                            .collect(),
                    };
                    let _ = channel.send(answer);
                }
            }
        }
    }

    fn dial(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, NodeError>>) {
        let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
            let _ = reply.send(Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                "the address must end in /p2p/<peer id>".into(),
            )));
            return;
        };
        if self.core.is_banned(&peer) {
            let _ = reply.send(Err(NodeError::PermissionDenied(
                ErrorReason::PeerBanned,
                format!("peer {peer} is banned (UnblacklistPeer lifts it)"),
            )));
            return;
        }
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(peer));
            return;
        }
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            kad.add_address(&peer, addr.clone());
        }
        let opts = libp2p::swarm::dial_opts::DialOpts::from(addr);
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.dials.insert(connection, (peer, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(NodeError::Unavailable(
                    ErrorReason::NetworkUnavailable,
                    format!("dial: {e}"),
                )));
            }
        }
    }

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>, fx: &mut Vec<Effect>) {
        let now = now_ms();
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                endpoint,
                ..
            } => {
                if endpoint.is_dialer() {
                    self.addresses
                        .note(peer_id, endpoint.get_remote_address().clone());
                }
                let answered: Vec<libp2p::swarm::ConnectionId> = self
                    .dials
                    .iter()
                    .filter(|(_, (p, _))| *p == peer_id)
                    .map(|(c, _)| *c)
                    .collect();
                for c in answered {
                    if let Some((_, w)) = self.dials.remove(&c) {
                        let _ = w.send(Ok(peer_id));
                    }
                }
                for parked in self.parked_dials.extract_if(.., |d| d.peer == peer_id) {
                    let _ = parked.reply.send(Ok(peer_id));
                }
                self.core
                    .on_connected(now, peer_id, num_established.get() == 1, fx);
                self.pump(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                self.core.on_disconnected(now, peer_id);
                self.outbox.disconnected(&peer_id);
                self.lanes.disconnected(&peer_id);
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                if let Some((peer, reply)) = self.dials.remove(&connection_id) {
                    if self.swarm.is_connected(&peer) {
                        let _ = reply.send(Ok(peer));
                    } else {
                        self.parked_dials.push(ParkedDial {
                            peer,
                            until: tokio::time::Instant::now() + DIAL_GRACE,
                            reply,
                            error: format!("dial {peer}: {error}"),
                        });
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs.iter().rev() {
                    self.addresses.note(peer_id, addr.clone());
                }
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(now, ev, fx),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                libp2p::gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                },
            )) => {
                let acceptance = match self.core.on_gossip(
                    now,
                    message.source,
                    propagation_source,
                    &message.data,
                    fx,
                ) {
                    Acceptance::Accept => libp2p::gossipsub::MessageAcceptance::Accept,
                    Acceptance::Ignore => libp2p::gossipsub::MessageAcceptance::Ignore,
                    Acceptance::Reject => libp2p::gossipsub::MessageAcceptance::Reject,
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                libp2p::gossipsub::Event::Subscribed { topic, .. },
            )) => self.core.on_subscribed(now, topic.as_str(), fx),
            _ => {}
        }
    }

    /// The lanes' events of one turn of the loop, in order. The envelope signatures of its
    /// frames are checked first, together ([`crate::envelope::verify_signatures`]): at 100
    /// parties, Ed25519 was a sixth of a node's CPU.
    fn on_lanes(&mut self, events: &mut Vec<LaneEvent>, fx: &mut Vec<Effect>) {
        let frames: Vec<&[u8]> = events
            .iter()
            .filter_map(|ev| match ev {
                LaneEvent::Request {
                    frame: DirectRequest::Frame(bytes),
                    ..
                } => Some(bytes.as_slice()),
                _ => None,
            })
            .collect();
        let checked = crate::envelope::verify_signatures(&frames, &mut self.keys_seen);
        let proven_count = checked.proven.iter().filter(|p| **p).count() as u64;
        let slot = usize::from(!checked.batched);
        if let Some(c) = self.signature_checks.get(slot) {
            c.fetch_add(proven_count, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(c) = self.signature_checks.get(2) {
            c.fetch_add(
                checked.proven.len() as u64 - proven_count,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        let mut proven = checked.proven.into_iter();
        for ev in events.drain(..) {
            let is_frame = matches!(
                ev,
                LaneEvent::Request {
                    frame: DirectRequest::Frame(_),
                    ..
                }
            );
            let signature_proven = is_frame && proven.next().unwrap_or(false);
            self.on_lane(ev, signature_proven, fx);
        }
    }

    /// A peer's frame, or the answer to one of ours.
    fn on_lane(&mut self, ev: LaneEvent, signature_proven: bool, fx: &mut Vec<Effect>) {
        match ev {
            LaneEvent::Request {
                peer,
                frame,
                answer: channel,
            } => {
                let frame = match &frame {
                    DirectRequest::Frame(bytes) if signature_proven => Frame::Proven(bytes),
                    DirectRequest::Frame(bytes) => Frame::Bytes(bytes),
                    DirectRequest::TooLarge(n) => Frame::TooLarge(*n),
                };
                // What the message changed is performed (stored) before the sender hears
                // that it was accepted: the answer waits for the batch.
                let verdict = self.core.on_direct(now_ms(), peer, frame, fx);
                tracing::trace!(%peer, ok = verdict.is_ok(), "frame received");
                match (self.core.take_hold(), verdict) {
                    (Some(id), Ok(())) => self.held.entry(id).or_default().push(HeldFrame {
                        channel,
                        batch: self.batch,
                        pos: fx.len(),
                        since: tokio::time::Instant::now(),
                    }),
                    (_, verdict) => self.deferred.push(Deferred::Frame { channel, verdict }),
                }
            }
            LaneEvent::Answered { peer, id, result } => self.on_outbound_done(peer, id, result),
        }
    }

    fn on_outbound_done(
        &mut self,
        peer: PeerId,
        id: RequestId,
        result: Result<Vec<u8>, SendError>,
    ) {
        if let Some(reply) = self.raw_replies.remove(&id) {
            let _ = reply.send(result.map_err(|e| {
                NodeError::Unavailable(ErrorReason::NetworkUnavailable, e.to_string())
            }));
            return;
        }
        // An answer, even a refusal, means the message arrived and was handled; a failure
        // (closed connection, failed dial, timeout) sends it again later. A peer that does not
        // speak the protocol never will: that message is dropped.
        // "Not stored, send again" (the peer's write failed, or it never wrote what it
        // held) is not delivered either: found in review, such messages were dropped.
        let delivered = match &result {
            Ok(answer) => !answer.starts_with(UNSTORED),
            Err(e) => *e == SendError::Unsupported,
        };
        self.outbox.done(&peer, id, delivered);
        tracing::trace!(%peer, request = %id, delivered, "frame answered");
        match result {
            Ok(answer) if !answer.is_empty() => {
                tracing::debug!(%peer, answer = %String::from_utf8_lossy(&answer), "peer refused our message");
            }
            Err(e) => tracing::debug!(%peer, error = %e, "message not delivered"),
            _ => {}
        }
        self.pump(peer);
    }

    fn on_kad(&mut self, now: i64, ev: kad::Event, fx: &mut Vec<Effect>) {
        match ev {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => {
                if self
                    .core
                    .on_dht_put(now, source, record.key.as_ref(), &record.value, fx)
                    && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                    && let Err(e) = kad.store_mut().put(record)
                {
                    tracing::warn!(error = %e, "DHT store refused a record");
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                ..
            } => {
                let Some(query) = self.queries.remove(&id) else {
                    return;
                };
                let found = match result {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        Ok((found.record.key.to_vec(), found.record.value))
                    }
                    // Finished without (more) records.
                    Ok(_) => Err(String::new()),
                    Err(e) => Err(e.to_string()),
                };
                self.core.on_record(now, query, found, fx);
            }
            _ => {}
        }
    }
}

/// Time left until `deadline_ms` (zero if it passed).
fn until_duration(deadline_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(deadline_ms.saturating_sub(now_ms())).unwrap_or(0))
}
