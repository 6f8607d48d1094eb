//! The node: one task owns the swarm and every session; the rest of the program talks to it
//! through a cloneable [`NodeHandle`] (commands with a oneshot reply) and receives
//! [`NodeEvent`]s from a broadcast channel. Signer calls run as spawned tasks whose results
//! come back to the loop, so the loop never waits on the network.
//!
//! Every inbound message is checked in order: size and canonical encoding; envelope signature by
//! the sending peer's libp2p key; stateless validation (lengths, points, scalars, ±5 min,
//! expiry); an unexpired attestation binding the peer to the claimed signer key (at most 10 keys
//! per peer); membership in the session; then the session's phase, duplicate and sequence
//! rules. Every refusal is counted per peer and reason.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::kad::store::RecordStore;
use libp2p::kad::{self, Record, RecordKey};
use libp2p::request_response::{self, OutboundRequestId};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, identify, identity};
use rand::RngCore;
use shared::election::{ElectionMethod, SessionId, elect};
use shared::musig::{PartialSignature, PubNonce, Signature};
use shared::wire::{
    self, Announce, Attestation, Body, Header, MAX_DIRECT_MESSAGE_BYTES, MAX_KEYS_PER_PEER,
    Message, SessionContext, pb,
};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::net::{self, Behaviour, BehaviourEvent, DirectRequest, NetConfig};
use crate::session::{AbortInfo, Action, Phase, Session};
use crate::signer::{Signer, SignerError};

/// Domain tag of envelope signatures.
pub const ENVELOPE_TAG: &[u8] = b"musig2/v1/envelope";
/// DHT key prefix of signer advertisements.
pub const SIGNER_KEY_PREFIX: &str = "musig2-signer:";
/// DHT key prefix of session announcements.
pub const SESSION_KEY_PREFIX: &str = "musig2-session:";
/// Messages kept per peer waiting to be sent.
pub const MAX_OUTBOX: usize = 1024;
/// Messages kept for sessions not known yet (they may cross the announcement).
pub const MAX_ORPHANS_PER_SESSION: usize = 64;
/// Unknown sessions for which messages are kept.
pub const MAX_ORPHAN_SESSIONS: usize = 256;
/// Finished sessions stay in memory this long.
pub const FINISHED_RETENTION: Duration = Duration::from_secs(3600);

/// Node settings (the reference's names and defaults).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start (with `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses announced to other parties (behind a load balancer or NAT).
    pub external: Vec<Multiaddr>,
    /// libp2p limits and Kademlia settings.
    pub net: NetConfig,
    /// sessionTimeout (2 h).
    pub session_timeout: Duration,
    /// stuckSessionTimeout (10 min).
    pub stuck_timeout: Duration,
    /// cleanupInterval (60 s).
    pub cleanup_interval: Duration,
    /// maxSequenceGap (100).
    pub max_sequence_gap: u64,
    /// enableReplayProtection (true).
    pub enable_replay_protection: bool,
    /// electionMethod (lexicographic).
    pub election_method: ElectionMethod,
    /// Lifetime of the attestations obtained from the signer.
    pub attestation_ttl: Duration,
    /// enableCoordinatorFailover (true).
    pub enable_failover: bool,
    /// broadcastTimeout (5 min).
    pub broadcast_timeout: Duration,
    /// Most unfinished sessions at once; past it creation answers RESOURCE_EXHAUSTED.
    pub max_active_sessions: usize,
    /// enableSessionDiscovery: `join` looks unknown sessions up in the DHT.
    pub enable_session_discovery: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            net: NetConfig::default(),
            session_timeout: Duration::from_secs(2 * 3600),
            stuck_timeout: Duration::from_secs(600),
            cleanup_interval: Duration::from_secs(60),
            max_sequence_gap: wire::DEFAULT_MAX_SEQUENCE_GAP,
            enable_replay_protection: true,
            election_method: ElectionMethod::Lexicographic,
            attestation_ttl: Duration::from_secs(7 * 24 * 3600),
            enable_failover: true,
            broadcast_timeout: Duration::from_secs(300),
            max_active_sessions: 1000,
            enable_session_discovery: true,
        }
    }
}

/// A snapshot of a session for callers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionView {
    /// Id.
    pub id: SessionId,
    /// Phase.
    pub phase: Phase,
    /// Context.
    pub context: SessionContext,
    /// Creator key.
    pub creator: [u8; 33],
    /// Election result.
    pub election: shared::election::Election,
    /// Aggregate key before tweaks.
    pub aggregate_key: [u8; 33],
    /// Key the signature verifies under.
    pub output_key: [u8; 33],
    /// Joined keys.
    pub joined: Vec<[u8; 33]>,
    /// Keys whose nonce arrived.
    pub nonce_keys: Vec<[u8; 33]>,
    /// Keys whose verified partial signature arrived.
    pub psig_keys: Vec<[u8; 33]>,
    /// Local keys.
    pub local_keys: Vec<[u8; 33]>,
    /// Final signature.
    pub signature: Option<Signature>,
    /// Abort.
    pub abort: Option<AbortInfo>,
    /// Creation, ms.
    pub created_at_ms: i64,
    /// Expiry, ms.
    pub expires_at_ms: i64,
    /// Failover progress.
    pub failover: crate::store::FailoverRecord,
    /// This node's public nonces (by local key order).
    pub local_nonces: Vec<[u8; 66]>,
    /// This node's partial signatures (by local key order).
    pub local_psigs: Vec<[u8; 32]>,
}

impl SessionView {
    fn of(s: &Session) -> Self {
        let keys = |f: &dyn Fn(usize) -> bool| -> Vec<[u8; 33]> {
            (0..s.n())
                .filter(|i| f(*i))
                .filter_map(|i| s.key(i))
                .collect()
        };
        SessionView {
            id: s.id,
            phase: s.phase,
            context: s.context.clone(),
            creator: s.creator,
            election: s.election.clone(),
            aggregate_key: s.key_agg.aggregate_key(),
            output_key: s.key_agg.output_key(),
            joined: keys(&|i| s.joined[i]),
            nonce_keys: keys(&|i| s.nonces[i].is_some()),
            psig_keys: keys(&|i| s.psigs[i].is_some()),
            local_keys: s.local.iter().filter_map(|i| s.key(*i)).collect(),
            signature: s.signature,
            abort: s.abort.clone(),
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            failover: s.failover.clone(),
            local_nonces: s
                .local
                .iter()
                .filter_map(|i| s.nonces.get(*i).copied().flatten())
                .map(|n| n.to_bytes())
                .collect(),
            local_psigs: s
                .local
                .iter()
                .filter_map(|i| s.psigs.get(*i).copied().flatten())
                .map(|p| p.to_bytes())
                .collect(),
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A session was created here or discovered.
    SessionCreated(Box<SessionView>),
    /// A signer joined.
    Joined {
        /// Session.
        id: SessionId,
        /// Signer.
        key: [u8; 33],
    },
    /// Phase change.
    PhaseChanged {
        /// Session.
        id: SessionId,
        /// Before.
        from: Phase,
        /// After.
        to: Phase,
    },
    /// Final signature verified.
    Complete {
        /// Session.
        id: SessionId,
        /// Signature.
        signature: Signature,
    },
    /// Session aborted.
    Aborted {
        /// Session.
        id: SessionId,
        /// Details.
        info: AbortInfo,
    },
    /// A message from a peer was refused.
    Rejected {
        /// Peer.
        peer: PeerId,
        /// Reason label.
        reason: &'static str,
    },
    /// This node is responsible for broadcasting (elected, or after failovers).
    ShouldBroadcast {
        /// Session.
        id: SessionId,
        /// Sorted index responsible.
        index: usize,
        /// Failover attempt (0 = the elected coordinator).
        attempt: usize,
        /// The signature to broadcast.
        signature: Signature,
    },
    /// The responsible coordinator did not confirm in time.
    CoordinatorFailed {
        /// Session.
        id: SessionId,
        /// Index that failed.
        failed_index: usize,
        /// Attempt now starting.
        attempt: usize,
        /// Index now responsible.
        next_index: usize,
    },
    /// Every coordinator failed to confirm.
    FailoverExhausted {
        /// Session.
        id: SessionId,
        /// Attempts made.
        attempts: usize,
    },
    /// A broadcast was confirmed (by us or a participant).
    BroadcastConfirmed {
        /// Session.
        id: SessionId,
        /// Confirming signer.
        by: [u8; 33],
        /// Reference.
        reference: String,
    },
    /// Another party asks our signers to sign.
    SigningRequestReceived {
        /// Request id.
        request_id: [u8; 16],
        /// Requesting peer.
        peer: PeerId,
        /// What would be signed.
        context: SessionContext,
        /// Transaction type.
        transaction_type: pb::TransactionType,
        /// Amount.
        amount: u64,
    },
    /// A signer answered one of our signing requests.
    SigningResponseReceived {
        /// Request id.
        request_id: [u8; 16],
        /// Answering signer.
        key: [u8; 33],
        /// Accepted.
        accept: bool,
    },
    /// A signer advertisement arrived.
    SignerDiscovered {
        /// Advertised key.
        key: [u8; 33],
        /// Advertising peer.
        peer: PeerId,
        /// Criteria.
        advertisement: wire::Advertisement,
    },
    /// A peer was banned temporarily.
    PeerGraylisted {
        /// Peer.
        peer: PeerId,
        /// Why.
        reason: String,
        /// Until, ms.
        until_ms: i64,
    },
    /// A peer was banned permanently.
    PeerBlacklisted {
        /// Peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A peer crossed a ban threshold (emitted with the ban).
    PeerShouldBan {
        /// Peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A peer's attested keys are known.
    PeerIdentified {
        /// Peer.
        peer: PeerId,
        /// Keys.
        keys: Vec<[u8; 33]>,
    },
}

/// Errors of node commands.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad input.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Unknown session.
    #[error("not found: {0}")]
    NotFound(String),
    /// Wrong state for the call.
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// The network or signer is unavailable.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Too much work in progress.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The node is shutting down.
    #[error("the node stopped")]
    Stopped,
}

enum Command {
    Create {
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout: Option<Duration>,
        reply: oneshot::Sender<Result<SessionView, NodeError>>,
    },
    Join {
        id: SessionId,
        reply: oneshot::Sender<Result<SessionView, NodeError>>,
    },
    Get {
        id: SessionId,
        reply: oneshot::Sender<Option<SessionView>>,
    },
    List {
        reply: oneshot::Sender<Vec<SessionView>>,
    },
    Close {
        id: SessionId,
        reason: String,
        reply: oneshot::Sender<Result<Phase, NodeError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, NodeError>>,
    },
    Info {
        reply: oneshot::Sender<NodeInfo>,
    },
    Rejections {
        reply: oneshot::Sender<HashMap<PeerId, HashMap<&'static str, u64>>>,
    },
    SendRaw {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    Envelope {
        message: Box<pb::WireMessage>,
        from: [u8; 33],
        reply: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    PeerKeys {
        reply: oneshot::Sender<HashMap<PeerId, Vec<[u8; 33]>>>,
    },
    Announcement {
        id: SessionId,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    NotifyBroadcast {
        id: SessionId,
        reference: String,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Ban {
        peer: PeerId,
        reason: String,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Unban {
        peer: PeerId,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerStatus>>,
    },
    SendRequest {
        context: SessionContext,
        transaction_type: pb::TransactionType,
        amount: u64,
        reply: oneshot::Sender<Result<[u8; 16], NodeError>>,
    },
    Respond {
        request_id: [u8; 16],
        accept: bool,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    Advertise {
        keys: Vec<[u8; 33]>,
        body: wire::Advertisement,
        reply: oneshot::Sender<Result<i64, NodeError>>,
    },
    Withdraw {
        reply: oneshot::Sender<()>,
    },
    Discover {
        reply: oneshot::Sender<Vec<([u8; 33], PeerId, wire::Advertisement)>>,
    },
    PublishRaw {
        topic: String,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        reply: oneshot::Sender<Result<(), NodeError>>,
    },
}

/// What the security manager knows about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    /// Peer.
    pub peer: PeerId,
    /// Connected now.
    pub connected: bool,
    /// Reputation 0..=100.
    pub score: i32,
    /// Counters.
    pub record: shared::security::PeerRecord,
    /// Ban: until (None = permanent) and reason.
    pub ban: Option<crate::store::BanRecord>,
    /// Attested keys.
    pub keys: Vec<[u8; 33]>,
    /// Refusals by reason.
    pub rejections: HashMap<&'static str, u64>,
}

/// Node identity and addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Peer id.
    pub peer_id: PeerId,
    /// Listen addresses (with `/p2p/<id>`).
    pub listen_addresses: Vec<Multiaddr>,
    /// Addresses announced to other parties (with `/p2p/<id>`).
    pub external_addresses: Vec<Multiaddr>,
    /// Signer keys this node speaks for.
    pub keys: Vec<[u8; 33]>,
    /// Connected peers.
    pub connected_peers: usize,
}

/// Cloneable handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Command>,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    events: broadcast::Sender<NodeEvent>,
    peer_id: PeerId,
    keys: Vec<[u8; 33]>,
}

impl NodeHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        rx.await.map_err(|_| NodeError::Stopped)
    }

    /// Messages from peers accepted so far.
    pub fn accepted_messages(&self) -> u64 {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Signer keys this node speaks for.
    pub fn keys(&self) -> &[[u8; 33]] {
        &self.keys
    }

    /// Subscribe to events (slow subscribers lose the oldest ones).
    pub fn events(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    /// Create and announce a session (the local signer must hold one of the keys).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn create_session(
        &self,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout: Option<Duration>,
    ) -> Result<SessionView, NodeError> {
        self.call(|reply| Command::Create {
            context,
            election,
            timeout,
            reply,
        })
        .await?
    }

    /// Join a session (fetched from the DHT when not known yet).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn join_session(&self, id: SessionId) -> Result<SessionView, NodeError> {
        self.call(|reply| Command::Join { id, reply }).await?
    }

    /// One session.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn session(&self, id: SessionId) -> Result<Option<SessionView>, NodeError> {
        self.call(|reply| Command::Get { id, reply }).await
    }

    /// Every session in memory.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn sessions(&self) -> Result<Vec<SessionView>, NodeError> {
        self.call(|reply| Command::List { reply }).await
    }

    /// Close a session (abort it if unfinished, telling the others).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn close_session(&self, id: SessionId, reason: &str) -> Result<Phase, NodeError> {
        let reason = reason.to_string();
        self.call(|reply| Command::Close { id, reason, reply })
            .await?
    }

    /// Dial a peer (`…/p2p/<id>`); resolves when connected.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn connect(&self, addr: Multiaddr) -> Result<PeerId, NodeError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    /// Identity, addresses and keys.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn info(&self) -> Result<NodeInfo, NodeError> {
        self.call(|reply| Command::Info { reply }).await
    }

    /// Refused messages per peer and reason.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn rejections(
        &self,
    ) -> Result<HashMap<PeerId, HashMap<&'static str, u64>>, NodeError> {
        self.call(|reply| Command::Rejections { reply }).await
    }

    /// Diagnostics: send raw bytes on the direct protocol to a connected peer and return its
    /// answer (empty = accepted, otherwise the refusal). The bytes leave as this node; nothing
    /// here can speak for another peer or key.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn send_raw(&self, peer: PeerId, bytes: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        self.call(|reply| Command::SendRaw { peer, bytes, reply })
            .await?
    }

    /// Attested keys of connected peers.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn peer_keys(&self) -> Result<HashMap<PeerId, Vec<[u8; 33]>>, NodeError> {
        self.call(|reply| Command::PeerKeys { reply }).await
    }

    /// The application broadcast the transaction: tell every participant (signed
    /// BROADCAST_CONFIRMED) so their failover timers stop.
    ///
    /// # Errors
    /// [`NodeError::NotFound`], [`NodeError::FailedPrecondition`] unless COMPLETE.
    pub async fn notify_broadcast_complete(
        &self,
        id: SessionId,
        reference: &str,
    ) -> Result<(), NodeError> {
        let reference = reference.to_string();
        self.call(|reply| Command::NotifyBroadcast {
            id,
            reference,
            reply,
        })
        .await?
    }

    /// Ban a peer permanently (persisted; its connections are closed).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn blacklist(&self, peer: PeerId, reason: &str) -> Result<(), NodeError> {
        let reason = reason.to_string();
        self.call(|reply| Command::Ban {
            peer,
            reason,
            reply,
        })
        .await?
    }

    /// Lift a ban or graylisting.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] when the peer is not banned.
    pub async fn unblacklist(&self, peer: PeerId) -> Result<(), NodeError> {
        self.call(|reply| Command::Unban { peer, reply }).await?
    }

    /// Advertise local keys on GossipSub (topics `musig2:signers:<type>`) and in the DHT; at
    /// most once per 60 s. Returns the expiry.
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for keys this node does not hold,
    /// [`NodeError::ResourceExhausted`] when called again within 60 s.
    pub async fn advertise(
        &self,
        keys: Vec<[u8; 33]>,
        body: wire::Advertisement,
    ) -> Result<i64, NodeError> {
        self.call(|reply| Command::Advertise { keys, body, reply })
            .await?
    }

    /// Matchmaking: ask the (connected, attested) holders of the other keys of `context` to sign;
    /// when all accept, the session is created and they join it. Returns the request id.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn send_signing_request(
        &self,
        context: SessionContext,
        transaction_type: pb::TransactionType,
        amount: u64,
    ) -> Result<[u8; 16], NodeError> {
        self.call(|reply| Command::SendRequest {
            context,
            transaction_type,
            amount,
            reply,
        })
        .await?
    }

    /// Answer a signing request received from another party.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] for an unknown or expired request.
    pub async fn respond_signing_request(
        &self,
        request_id: [u8; 16],
        accept: bool,
    ) -> Result<(), NodeError> {
        self.call(|reply| Command::Respond {
            request_id,
            accept,
            reply,
        })
        .await?
    }

    /// Stop advertising.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn withdraw(&self) -> Result<(), NodeError> {
        self.call(|reply| Command::Withdraw { reply }).await
    }

    /// Unexpired advertisements of other peers.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn discovered(
        &self,
    ) -> Result<Vec<([u8; 33], PeerId, wire::Advertisement)>, NodeError> {
        self.call(|reply| Command::Discover { reply }).await
    }

    /// Diagnostics: publish raw bytes on a GossipSub topic as this node.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when nobody is subscribed.
    pub async fn publish_raw(&self, topic: &str, bytes: Vec<u8>) -> Result<(), NodeError> {
        let topic = topic.to_string();
        self.call(|reply| Command::PublishRaw {
            topic,
            bytes,
            reply,
        })
        .await?
    }

    /// Every peer the security manager knows.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn peers(&self) -> Result<Vec<PeerStatus>, NodeError> {
        self.call(|reply| Command::Peers { reply }).await
    }

    /// The signed announcement envelope of a known session (public data; what the DHT holds).
    ///
    /// # Errors
    /// [`NodeError::NotFound`].
    pub async fn announcement(&self, id: SessionId) -> Result<Vec<u8>, NodeError> {
        self.call(|reply| Command::Announcement { id, reply })
            .await?
            .ok_or_else(|| NodeError::NotFound(format!("session {id}")))
    }

    /// Diagnostics: publish an arbitrary DHT record as this node (other nodes validate it and
    /// refuse anything that is not a signed, attested announcement under its own id).
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn put_record(&self, key: Vec<u8>, value: Vec<u8>) -> Result<(), NodeError> {
        self.call(|reply| Command::PutRecord { key, value, reply })
            .await?
    }

    /// Diagnostics: wrap a message in this node's signed envelope with its attestation for
    /// `from` (a key this node speaks for).
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for a key this node does not hold.
    pub async fn envelope(
        &self,
        message: pb::WireMessage,
        from: [u8; 33],
    ) -> Result<Vec<u8>, NodeError> {
        self.call(|reply| Command::Envelope {
            message: Box::new(message),
            from,
            reply,
        })
        .await?
    }
}

enum Internal {
    Nonce {
        id: SessionId,
        index: usize,
        result: Result<PubNonce, SignerError>,
    },
    Psig {
        id: SessionId,
        index: usize,
        result: Result<PartialSignature, SignerError>,
    },
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Vec<u8>>,
    in_flight: Option<OutboundRequestId>,
}

struct Node {
    swarm: Swarm<Behaviour>,
    keypair: identity::Keypair,
    cfg: NodeConfig,
    signer: Signer,
    keys: Vec<[u8; 33]>,
    attestations: HashMap<[u8; 33], pb::PeerAttestation>,
    sessions: HashMap<SessionId, Session>,
    /// Our sent envelopes per session, replayed to participants that connect later.
    sent: HashMap<SessionId, (Vec<Vec<u8>>, HashSet<PeerId>)>,
    finished_at: HashMap<SessionId, Instant>,
    orphans: HashMap<SessionId, Vec<(PeerId, Message)>>,
    peer_keys: HashMap<PeerId, Vec<[u8; 33]>>,
    outbox: HashMap<PeerId, Outbox>,
    raw_replies: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NodeError>>>,
    dials: HashMap<PeerId, Vec<oneshot::Sender<Result<PeerId, NodeError>>>>,
    dht_joins: HashMap<kad::QueryId, (SessionId, oneshot::Sender<Result<SessionView, NodeError>>)>,
    /// DHT lookups of advertisements of keys learned from peers.
    advert_lookups: HashMap<kad::QueryId, [u8; 33]>,
    rejections: HashMap<PeerId, HashMap<&'static str, u64>>,
    internal_tx: mpsc::Sender<Internal>,
    events: broadcast::Sender<NodeEvent>,
    hello_seq: u64,
    store: crate::store::Store,
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    reputation: shared::security::Reputation<PeerId>,
    bans: HashMap<PeerId, crate::store::BanRecord>,
    /// Discovered advertisements by signer key.
    adverts: HashMap<[u8; 33], (PeerId, wire::Advertisement)>,
    /// Last accepted advertisement time per (peer, key) (rate limit), ms.
    advert_times: HashMap<(PeerId, [u8; 33]), i64>,
    /// Our own advertisement, if any.
    advertising: Option<OwnAdvert>,
    advert_seq: u64,
    /// Our signing requests: context, who accepted, expiry.
    out_requests: HashMap<[u8; 16], OutRequest>,
    /// Requests from others: requester peer, context, expiry.
    in_requests: HashMap<[u8; 16], (PeerId, SessionContext, i64)>,
    /// Accepted requests: join the matching session when it is announced.
    auto_join: Vec<(SessionContext, i64)>,
    /// Last signing request per peer (rate limit), ms.
    request_times: HashMap<PeerId, i64>,
}

/// One of our signing requests: context, keys that accepted, expiry (ms).
type OutRequest = (SessionContext, HashSet<[u8; 33]>, i64);

/// Minimum time between two signing requests of one peer, ms.
pub const SIGNING_REQUEST_INTERVAL_MS: i64 = 30_000;
/// Lifetime of a signing request, ms.
pub const SIGNING_REQUEST_TTL_MS: i64 = 5 * 60_000;

/// What this node advertises.
#[derive(Debug, Clone)]
struct OwnAdvert {
    keys: Vec<[u8; 33]>,
    body: wire::Advertisement,
    topics: Vec<libp2p::gossipsub::TopicHash>,
    last_ms: i64,
}

/// Minimum time between two advertisements of one peer, ms.
pub const ADVERTISEMENT_INTERVAL_MS: i64 = 60_000;
/// Most advertisements kept.
pub const MAX_ADVERTS: usize = 10_000;

/// GossipSub topic of a transaction type.
pub fn signer_topic(t: pb::TransactionType) -> libp2p::gossipsub::IdentTopic {
    let name = t
        .as_str_name()
        .trim_start_matches("TRANSACTION_TYPE_")
        .to_lowercase();
    libp2p::gossipsub::IdentTopic::new(format!("musig2:signers:{name}"))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn session_record_key(id: &SessionId) -> RecordKey {
    RecordKey::new(&format!("{SESSION_KEY_PREFIX}{id}"))
}

use crate::envelope::Refusal;

/// Start a node: ask the signer for its keys and attestations, bind, dial bootstrap peers and
/// run until `shutdown`.
///
/// # Errors
/// Signer unreachable, no keys, or the network cannot start.
pub async fn start(
    cfg: NodeConfig,
    keypair: identity::Keypair,
    signer: Signer,
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
    let expires =
        now_ms().saturating_add(i64::try_from(cfg.attestation_ttl.as_millis()).unwrap_or(i64::MAX));
    let mut attestations = HashMap::new();
    for k in &keys {
        let sig = signer
            .attest(k, &peer_id.to_bytes(), expires)
            .await
            .map_err(|e| anyhow::anyhow!("attestation: {e}"))?;
        attestations.insert(
            *k,
            pb::PeerAttestation {
                signer_key: k.to_vec(),
                peer_id: peer_id.to_bytes(),
                expires_at_ms: expires,
                signature: sig.to_vec(),
            },
        );
    }
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
    let (tx, rx) = mpsc::channel(256);
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (events, _) = broadcast::channel(4096);
    let (internal_tx, internal_rx) = mpsc::channel(1024);
    let mut node = Node {
        swarm,
        keypair,
        cfg,
        signer,
        keys: keys.clone(),
        attestations,
        sessions: HashMap::new(),
        sent: HashMap::new(),
        finished_at: HashMap::new(),
        orphans: HashMap::new(),
        peer_keys: HashMap::new(),
        outbox: HashMap::new(),
        raw_replies: HashMap::new(),
        dials: HashMap::new(),
        dht_joins: HashMap::new(),
        advert_lookups: HashMap::new(),
        rejections: HashMap::new(),
        internal_tx,
        events: events.clone(),
        hello_seq: u64::try_from(now_ms()).unwrap_or(1),
        store,
        accepted: accepted.clone(),
        reputation: shared::security::Reputation::new(),
        bans: HashMap::new(),
        adverts: HashMap::new(),
        advert_times: HashMap::new(),
        advertising: None,
        advert_seq: u64::try_from(now_ms()).unwrap_or(1),
        out_requests: HashMap::new(),
        in_requests: HashMap::new(),
        auto_join: Vec::new(),
        request_times: HashMap::new(),
    };
    for t in [
        pb::TransactionType::Spend,
        pb::TransactionType::Swap,
        pb::TransactionType::Coinjoin,
        pb::TransactionType::Custody,
        pb::TransactionType::Escrow,
        pb::TransactionType::Channel,
    ] {
        node.swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&signer_topic(t))?;
    }
    node.restore_bans()?;
    node.restore()?;
    let task = tokio::spawn(node.run(rx, internal_rx, shutdown));
    Ok((
        NodeHandle {
            tx,
            accepted,
            events,
            peer_id,
            keys,
        },
        task,
    ))
}

impl Node {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut internal: mpsc::Receiver<Internal>,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.cfg.cleanup_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failover_tick = tokio::time::interval(
            (self.cfg.broadcast_timeout / 10)
                .clamp(Duration::from_millis(20), Duration::from_secs(1)),
        );
        failover_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                ev = self.swarm.select_next_some() => self.on_swarm(ev),
                Some(cmd) = commands.recv() => self.on_command(cmd),
                Some(i) = internal.recv() => self.on_internal(i),
                _ = tick.tick() => self.on_tick(),
                _ = failover_tick.tick() => self.on_failover_tick(),
            }
        }
        tracing::info!("node stopped");
    }

    fn emit(&self, e: NodeEvent) {
        let _ = self.events.send(e);
    }

    fn reject(&mut self, peer: PeerId, r: &Refusal) {
        tracing::debug!(%peer, reason = r.0, detail = %r.1, "message refused");
        *self
            .rejections
            .entry(peer)
            .or_default()
            .entry(r.0)
            .or_insert(0) += 1;
        self.emit(NodeEvent::Rejected { peer, reason: r.0 });
        let offence = shared::security::Offence::of_reason(r.0);
        match self.reputation.offend(&peer, offence, now_ms()) {
            shared::security::Verdict::None => {}
            shared::security::Verdict::Graylist { until_ms, reason } => {
                self.ban(peer, Some(until_ms), reason)
            }
            shared::security::Verdict::Blacklist { reason } => self.ban(peer, None, reason),
        }
    }

    // ---------------------------------------------------------------- envelopes and sending

    fn envelope(&self, msg: &pb::WireMessage, from: &[u8; 33]) -> Result<Vec<u8>, NodeError> {
        let attestation = self.attestations.get(from).cloned().ok_or_else(|| {
            NodeError::InvalidArgument(format!(
                "this node does not speak for {}",
                hex::encode(from)
            ))
        })?;
        crate::envelope::seal(&self.keypair, msg, attestation)
            .map_err(|e| NodeError::Unavailable(format!("signing: {e}")))
    }

    fn send_to(&mut self, peer: PeerId, bytes: Vec<u8>) {
        let outbox = self.outbox.entry(peer).or_default();
        if outbox.queue.len() >= MAX_OUTBOX {
            tracing::warn!(%peer, "outbox full; message dropped");
            return;
        }
        outbox.queue.push_back(bytes);
        self.pump(peer);
    }

    /// One request in flight per peer keeps each sender's messages in order.
    fn pump(&mut self, peer: PeerId) {
        let Some(outbox) = self.outbox.get_mut(&peer) else {
            return;
        };
        if outbox.in_flight.is_some() || !self.swarm.is_connected(&peer) {
            return;
        }
        if let Some(bytes) = outbox.queue.pop_front() {
            let id = self
                .swarm
                .behaviour_mut()
                .direct
                .send_request(&peer, DirectRequest::Frame(bytes));
            if let Some(o) = self.outbox.get_mut(&peer) {
                o.in_flight = Some(id);
            }
        }
    }

    fn participant_peers(&self, session: &Session) -> Vec<PeerId> {
        self.peer_keys
            .iter()
            .filter(|(p, keys)| {
                **p != *self.swarm.local_peer_id()
                    && keys
                        .iter()
                        .any(|k| session.index_of(k).is_some() && !self.keys.contains(k))
            })
            .map(|(p, _)| *p)
            .collect()
    }

    fn broadcast_session(&mut self, id: SessionId, bytes: Vec<u8>) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let peers = self.participant_peers(session);
        let entry = self.sent.entry(id).or_default();
        entry.0.push(bytes.clone());
        for p in &peers {
            entry.1.insert(*p);
        }
        for p in peers {
            self.send_to(p, bytes.clone());
        }
    }

    // ---------------------------------------------------------------- actions

    /// Perform a session's actions, then store the session if anything happened.
    fn apply(&mut self, id: SessionId, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        for action in actions {
            match action {
                Action::Broadcast { from, body } => {
                    let Some(session) = self.sessions.get_mut(&id) else {
                        continue;
                    };
                    let seq = session.next_sequence(&from);
                    let msg = Message {
                        header: Header {
                            session_id: id,
                            sender: from,
                            sequence: seq,
                            timestamp_ms: now_ms(),
                        },
                        body,
                    };
                    match self.envelope(&msg.to_pb(), &from) {
                        Ok(bytes) => self.broadcast_session(id, bytes),
                        Err(e) => tracing::error!(session = %id, error = %e, "cannot wrap message"),
                    }
                }
                Action::RequestNonces => {
                    let Some(s) = self.sessions.get(&id) else {
                        continue;
                    };
                    for &index in &s.local {
                        let (signer, ctx, tx) = (
                            self.signer.clone(),
                            s.context.clone(),
                            self.internal_tx.clone(),
                        );
                        let Some(key) = s.key(index) else { continue };
                        tokio::spawn(async move {
                            let result = signer.nonce(&key, &id, &ctx).await;
                            let _ = tx.send(Internal::Nonce { id, index, result }).await;
                        });
                    }
                }
                Action::RequestPartialSignatures => {
                    let Some(s) = self.sessions.get(&id) else {
                        continue;
                    };
                    let nonces: Vec<PubNonce> = s.nonces.iter().flatten().copied().collect();
                    for &index in &s.local {
                        let (signer, ctx, tx, nonces) = (
                            self.signer.clone(),
                            s.context.clone(),
                            self.internal_tx.clone(),
                            nonces.clone(),
                        );
                        let Some(key) = s.key(index) else { continue };
                        tokio::spawn(async move {
                            let result = signer.partial_sign(&key, &id, &ctx, &nonces).await;
                            let _ = tx.send(Internal::Psig { id, index, result }).await;
                        });
                    }
                }
                Action::PhaseChanged { from, to } => {
                    tracing::info!(session = %id, from = from.as_str(), to = to.as_str(), "phase");
                    self.emit(NodeEvent::PhaseChanged { id, from, to });
                    let Some(s) = self.sessions.get(&id) else {
                        continue;
                    };
                    match to {
                        Phase::Complete => {
                            let signature = s.signature;
                            // On disk before anyone hears of it.
                            if let Err(e) = self.persist(id) {
                                tracing::error!(session = %id, error = %e, "final signature not stored; completion not reported");
                                continue;
                            }
                            if let Some(signature) = signature {
                                self.emit(NodeEvent::Complete { id, signature });
                            }
                            self.finished_at.insert(id, Instant::now());
                            self.start_failover(id);
                        }
                        Phase::Aborted => {
                            if let Some(info) = s.abort.clone() {
                                self.emit(NodeEvent::Aborted { id, info });
                            }
                            self.finished_at.insert(id, Instant::now());
                        }
                        _ => {}
                    }
                }
                Action::Joined(key) => self.emit(NodeEvent::Joined { id, key }),
                Action::BroadcastConfirmed { by, reference } => {
                    self.emit(NodeEvent::BroadcastConfirmed { id, by, reference });
                }
            }
        }
        if let Err(e) = self.persist(id) {
            tracing::error!(session = %id, error = %e, "session state not stored");
        }
    }

    // ---------------------------------------------------------------- advertisements

    fn advertise(
        &mut self,
        keys: Vec<[u8; 33]>,
        body: wire::Advertisement,
    ) -> Result<i64, NodeError> {
        if keys.is_empty() || keys.len() > MAX_KEYS_PER_PEER {
            return Err(NodeError::InvalidArgument(format!(
                "signer_keys: 1 to {MAX_KEYS_PER_PEER} keys"
            )));
        }
        if let Some(k) = keys.iter().find(|k| !self.keys.contains(k)) {
            return Err(NodeError::InvalidArgument(format!(
                "this node does not speak for {}",
                hex::encode(k)
            )));
        }
        let now = now_ms();
        if let Some(a) = &self.advertising
            && now - a.last_ms < ADVERTISEMENT_INTERVAL_MS
        {
            return Err(NodeError::ResourceExhausted(format!(
                "one advertisement per {} s; retry in {} s",
                ADVERTISEMENT_INTERVAL_MS / 1000,
                (ADVERTISEMENT_INTERVAL_MS - (now - a.last_ms)) / 1000 + 1
            )));
        }
        let topics = body
            .transaction_types
            .iter()
            .map(|t| signer_topic(*t).hash())
            .collect();
        let expires = body.expires_at_ms;
        self.advertising = Some(OwnAdvert {
            keys,
            body,
            topics,
            last_ms: now,
        });
        self.publish_advertisement();
        Ok(expires)
    }

    /// (Re-)publish our advertisement, one message per key, on every topic of its types; store
    /// it in the DHT under `musig2-signer:<key>` too. Each message is signed anew (fresh
    /// sequence number and timestamp).
    fn publish_advertisement(&mut self) {
        let Some(own) = self.advertising.clone() else {
            return;
        };
        if own.body.expires_at_ms <= now_ms() {
            self.advertising = None;
            return;
        }
        for key in &own.keys {
            self.advert_seq += 1;
            let msg = Message {
                header: Header {
                    session_id: SessionId([0; 16]),
                    sender: *key,
                    sequence: self.advert_seq,
                    timestamp_ms: now_ms(),
                },
                body: Body::Advertisement(own.body.clone()),
            };
            let Ok(bytes) = self.envelope(&msg.to_pb(), key) else {
                continue;
            };
            for t in &own.body.transaction_types {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(signer_topic(*t), bytes.clone())
                {
                    tracing::debug!(error = %e, "advertisement not published (no subscriber yet)");
                }
            }
            if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                let mut record = Record::new(
                    RecordKey::new(&format!("{SIGNER_KEY_PREFIX}{}", hex::encode(key))),
                    bytes,
                );
                record.expires = Some(
                    Instant::now()
                        + Duration::from_millis(
                            u64::try_from(own.body.expires_at_ms - now_ms()).unwrap_or(0),
                        ),
                );
                let _ = kad.put_record(record, kad::Quorum::One);
            }
        }
    }

    /// A GossipSub message: a signed, attested, unexpired advertisement, at most one per peer
    /// per 60 s, at most 10 keys per peer.
    /// `Ok(true)` = new, accept and propagate; `Ok(false)` = an identical refresh, ignore.
    fn on_advertisement(&mut self, author: PeerId, bytes: &[u8]) -> Result<bool, Refusal> {
        if bytes.len() > wire::MAX_GOSSIP_MESSAGE_BYTES {
            return Err(Refusal(
                "too_large",
                format!("gossip message of {} bytes", bytes.len()),
            ));
        }
        let (pid, msg) = self.open(bytes, Some(author))?;
        let Body::Advertisement(ad) = msg.body else {
            return Err(Refusal(
                "unsupported",
                "only signer advertisements travel on GossipSub".into(),
            ));
        };
        let now = now_ms();
        let slot = (pid, msg.header.sender);
        if let Some(last) = self.advert_times.get(&slot)
            && now - last < ADVERTISEMENT_INTERVAL_MS
        {
            // A refresh of the same criteria (re-published for a new subscriber) is ignored
            // without penalty; a different advertisement within 60 s is a violation.
            if self
                .adverts
                .get(&msg.header.sender)
                .is_some_and(|(p, a)| *p == pid && *a == ad)
            {
                return Ok(false);
            }
            return Err(Refusal(
                "rate_limited",
                "more than one advertisement per key per 60 s".into(),
            ));
        }
        self.note_keys(pid, &[msg.header.sender])?;
        if self.adverts.len() >= MAX_ADVERTS && !self.adverts.contains_key(&msg.header.sender) {
            return Err(Refusal(
                "too_many_adverts",
                "advertisement table full".into(),
            ));
        }
        self.advert_times.insert(slot, now);
        self.adverts.insert(msg.header.sender, (pid, ad.clone()));
        self.emit(NodeEvent::SignerDiscovered {
            key: msg.header.sender,
            peer: pid,
            advertisement: ad,
        });
        Ok(true)
    }

    /// An advertisement found in the DHT (e.g. after this node restarted).
    fn on_advert_record(&mut self, key: [u8; 33], record: &Record) {
        if self.adverts.contains_key(&key) || self.validate_record(record).is_err() {
            return;
        }
        let Ok((pid, msg)) = self.open(&record.value, None) else {
            return;
        };
        let Body::Advertisement(ad) = msg.body else {
            return;
        };
        if msg.header.sender != key
            || ad.expires_at_ms <= now_ms()
            || self.adverts.len() >= MAX_ADVERTS
        {
            return;
        }
        self.adverts.insert(key, (pid, ad.clone()));
        self.emit(NodeEvent::SignerDiscovered {
            key,
            peer: pid,
            advertisement: ad,
        });
    }

    // ---------------------------------------------------------------- matchmaking

    fn zero_message(&mut self, from: [u8; 33], body: Body) -> Result<Vec<u8>, NodeError> {
        self.advert_seq += 1;
        let msg = Message {
            header: Header {
                session_id: SessionId([0; 16]),
                sender: from,
                sequence: self.advert_seq,
                timestamp_ms: now_ms(),
            },
            body,
        };
        self.envelope(&msg.to_pb(), &from)
    }

    fn send_request(
        &mut self,
        context: SessionContext,
        transaction_type: pb::TransactionType,
        amount: u64,
    ) -> Result<[u8; 16], NodeError> {
        let context = SessionContext::from_pb(&context.to_pb())
            .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let Some(&from) = context.signer_keys.iter().find(|k| self.keys.contains(k)) else {
            return Err(NodeError::FailedPrecondition(
                "the local signer holds none of the keys".into(),
            ));
        };
        let mut peers = Vec::new();
        for k in context
            .signer_keys
            .iter()
            .filter(|k| !self.keys.contains(k))
        {
            let peer = self
                .peer_keys
                .iter()
                .find(|(p, keys)| keys.contains(k) && self.swarm.is_connected(p))
                .map(|(p, _)| *p)
                .ok_or_else(|| {
                    NodeError::NotFound(format!("no connected peer speaks for {}", hex::encode(k)))
                })?;
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        if self.out_requests.len() >= 1000 {
            return Err(NodeError::ResourceExhausted(
                "too many open signing requests".into(),
            ));
        }
        let mut request_id = [0u8; 16];
        rand::rng().fill_bytes(&mut request_id);
        let expires_at_ms = now_ms() + SIGNING_REQUEST_TTL_MS;
        let body = Body::SigningRequest(Box::new(wire::SigningRequest {
            request_id,
            context: context.clone(),
            transaction_type,
            amount,
            expires_at_ms,
        }));
        let bytes = self.zero_message(from, body)?;
        let mine: HashSet<[u8; 33]> = context
            .signer_keys
            .iter()
            .filter(|k| self.keys.contains(k))
            .copied()
            .collect();
        self.out_requests
            .insert(request_id, (context, mine, expires_at_ms));
        for p in peers {
            self.send_to(p, bytes.clone());
        }
        Ok(request_id)
    }

    fn respond(&mut self, request_id: [u8; 16], accept: bool) -> Result<(), NodeError> {
        let (peer, context, expires) = self.in_requests.remove(&request_id).ok_or_else(|| {
            NodeError::NotFound(format!(
                "signing request {} is unknown or expired",
                hex::encode(request_id)
            ))
        })?;
        let from = context
            .signer_keys
            .iter()
            .find(|k| self.keys.contains(k))
            .copied()
            .ok_or_else(|| NodeError::FailedPrecondition("no local key in the request".into()))?;
        if accept {
            self.auto_join.push((context, expires));
        }
        let bytes = self.zero_message(from, Body::SigningResponse { request_id, accept })?;
        self.send_to(peer, bytes);
        Ok(())
    }

    fn on_matchmaking(&mut self, peer: PeerId, msg: Message) -> Result<(), Refusal> {
        let now = now_ms();
        match msg.body {
            Body::SigningRequest(r) => {
                if !r.context.signer_keys.contains(&msg.header.sender) {
                    return Err(Refusal(
                        "not_member",
                        "the requester is not among the signers".into(),
                    ));
                }
                if !r.context.signer_keys.iter().any(|k| self.keys.contains(k)) {
                    return Err(Refusal("not_member", "no key of this node is asked".into()));
                }
                if self
                    .request_times
                    .get(&peer)
                    .is_some_and(|t| now - t < SIGNING_REQUEST_INTERVAL_MS)
                {
                    return Err(Refusal(
                        "rate_limited",
                        "more than one signing request per 30 s".into(),
                    ));
                }
                if self.in_requests.len() >= 1000 {
                    return Err(Refusal("too_many_requests", "request table full".into()));
                }
                self.request_times.insert(peer, now);
                self.in_requests
                    .insert(r.request_id, (peer, r.context.clone(), r.expires_at_ms));
                self.emit(NodeEvent::SigningRequestReceived {
                    request_id: r.request_id,
                    peer,
                    context: r.context,
                    transaction_type: r.transaction_type,
                    amount: r.amount,
                });
                Ok(())
            }
            Body::SigningResponse { request_id, accept } => {
                let Some((context, accepted, _)) = self.out_requests.get_mut(&request_id) else {
                    return Err(Refusal("unknown_request", "no such signing request".into()));
                };
                if !context.signer_keys.contains(&msg.header.sender) {
                    return Err(Refusal("not_member", "the responder was not asked".into()));
                }
                if !accept {
                    self.out_requests.remove(&request_id);
                    self.emit(NodeEvent::SigningResponseReceived {
                        request_id,
                        key: msg.header.sender,
                        accept,
                    });
                    return Ok(());
                }
                accepted.insert(msg.header.sender);
                let complete = accepted.len() == context.signer_keys.len();
                let context = context.clone();
                self.emit(NodeEvent::SigningResponseReceived {
                    request_id,
                    key: msg.header.sender,
                    accept,
                });
                if complete {
                    self.out_requests.remove(&request_id);
                    if let Err(e) = self.create(context, None, None) {
                        tracing::warn!(error = %e, "session from an accepted signing request not created");
                    }
                }
                Ok(())
            }
            _ => Err(Refusal("unsupported", "not a matchmaking message".into())),
        }
    }

    // ---------------------------------------------------------------- bans

    /// Ban a peer (until a time, or for good): persisted, its connections closed and refused.
    fn ban(&mut self, peer: PeerId, until_ms: Option<i64>, reason: String) {
        let ban = crate::store::BanRecord {
            until_ms,
            reason: reason.clone(),
        };
        if let Err(e) = self.store.put_ban(&peer.to_string(), &ban) {
            tracing::error!(%peer, error = %e, "ban not stored");
        }
        self.bans.insert(peer, ban);
        self.swarm.behaviour_mut().blocked.block_peer(peer);
        self.outbox.remove(&peer);
        tracing::warn!(%peer, %reason, ?until_ms, "peer banned");
        self.emit(NodeEvent::PeerShouldBan {
            peer,
            reason: reason.clone(),
        });
        match until_ms {
            Some(until_ms) => self.emit(NodeEvent::PeerGraylisted {
                peer,
                reason,
                until_ms,
            }),
            None => self.emit(NodeEvent::PeerBlacklisted { peer, reason }),
        }
    }

    fn unban(&mut self, peer: PeerId) {
        self.bans.remove(&peer);
        if let Err(e) = self.store.remove_ban(&peer.to_string()) {
            tracing::error!(%peer, error = %e, "unban not stored");
        }
        self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        self.reputation.forgive(&peer);
        self.rejections.remove(&peer);
        tracing::info!(%peer, "peer unbanned");
    }

    fn restore_bans(&mut self) -> anyhow::Result<()> {
        let now = now_ms();
        for (p, ban) in self.store.bans()? {
            let Ok(peer) = p.parse::<PeerId>() else {
                continue;
            };
            if ban.until_ms.is_some_and(|u| u <= now) {
                let _ = self.store.remove_ban(&p);
                continue;
            }
            self.swarm.behaviour_mut().blocked.block_peer(peer);
            self.bans.insert(peer, ban);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- persistence

    fn persist(&self, id: SessionId) -> Result<(), crate::store::StoreError> {
        let Some(s) = self.sessions.get(&id) else {
            return Ok(());
        };
        let sent = self.sent.get(&id).map(|x| x.0.as_slice()).unwrap_or(&[]);
        self.store.put(&id.0, &s.to_record(sent))
    }

    /// Rebuild sessions from the store; resume unfinished ones by asking the signer again
    /// (it answers the same nonce / partial signature if it still holds the nonce, otherwise
    /// the session aborts with the reason).
    fn restore(&mut self) -> anyhow::Result<()> {
        let records = self.store.all()?;
        let mut resume = Vec::new();
        for (id, rec) in records {
            let id = SessionId(id);
            match Session::from_record(id, &rec, &self.keys) {
                Ok((s, sent)) => {
                    if !s.phase.is_terminal() {
                        resume.push((id, s.phase));
                    }
                    if s.phase.is_terminal() {
                        self.finished_at.insert(id, Instant::now());
                    }
                    self.sent.insert(id, (sent, HashSet::new()));
                    self.sessions.insert(id, s);
                }
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "stored session does not decode; skipped")
                }
            }
        }
        tracing::info!(
            sessions = self.sessions.len(),
            unfinished = resume.len(),
            "store loaded"
        );
        for (id, phase) in resume {
            let actions = match phase {
                Phase::NonceExchange => vec![Action::RequestNonces],
                Phase::PartialSigExchange => vec![Action::RequestPartialSignatures],
                _ => Vec::new(),
            };
            self.apply(id, actions);
        }
        Ok(())
    }

    // ---------------------------------------------------------------- failover

    fn responsible_is_local(&self, s: &Session, attempt: usize) -> Option<usize> {
        s.election
            .responsible_after(attempt)
            .filter(|i| s.local.contains(i))
    }

    fn start_failover(&mut self, id: SessionId) {
        if !self.cfg.enable_failover {
            return;
        }
        let deadline = now_ms().saturating_add(
            i64::try_from(self.cfg.broadcast_timeout.as_millis()).unwrap_or(i64::MAX),
        );
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.failover.confirmed.is_some()
            || s.failover.deadline_ms.is_some()
            || s.failover.exhausted
        {
            return;
        }
        s.failover.deadline_ms = Some(deadline);
        let (attempt, signature) = (s.failover.attempt, s.signature);
        let local = self
            .sessions
            .get(&id)
            .and_then(|s| self.responsible_is_local(s, attempt));
        if let (Some(index), Some(signature)) = (local, signature) {
            self.emit(NodeEvent::ShouldBroadcast {
                id,
                index,
                attempt,
                signature,
            });
        }
        let _ = self.persist(id);
    }

    fn on_failover_tick(&mut self) {
        let now = now_ms();
        let due: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.failover.confirmed.is_none() && s.failover.deadline_ms.is_some_and(|d| d <= now)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let timeout = i64::try_from(self.cfg.broadcast_timeout.as_millis()).unwrap_or(i64::MAX);
            let Some(s) = self.sessions.get_mut(&id) else {
                continue;
            };
            let failed_index = s
                .election
                .responsible_after(s.failover.attempt)
                .unwrap_or(0);
            s.failover.attempt += 1;
            let attempt = s.failover.attempt;
            match s.election.responsible_after(attempt) {
                Some(next_index) => {
                    s.failover.deadline_ms = Some(now.saturating_add(timeout));
                    let signature = s.signature;
                    tracing::warn!(session = %id, failed_index, attempt, next_index, "coordinator failed to confirm the broadcast");
                    self.emit(NodeEvent::CoordinatorFailed {
                        id,
                        failed_index,
                        attempt,
                        next_index,
                    });
                    let local = self
                        .sessions
                        .get(&id)
                        .and_then(|s| self.responsible_is_local(s, attempt));
                    if let (Some(index), Some(signature)) = (local, signature) {
                        self.emit(NodeEvent::ShouldBroadcast {
                            id,
                            index,
                            attempt,
                            signature,
                        });
                    }
                }
                None => {
                    s.failover.deadline_ms = None;
                    s.failover.exhausted = true;
                    tracing::error!(session = %id, attempts = attempt, "failover exhausted: nobody confirmed the broadcast");
                    self.emit(NodeEvent::CoordinatorFailed {
                        id,
                        failed_index,
                        attempt,
                        next_index: failed_index,
                    });
                    self.emit(NodeEvent::FailoverExhausted {
                        id,
                        attempts: attempt,
                    });
                }
            }
            let _ = self.persist(id);
        }
    }

    fn notify_broadcast(&mut self, id: SessionId, reference: String) -> Result<(), NodeError> {
        if reference.len() > wire::MAX_REFERENCE_BYTES {
            return Err(NodeError::InvalidArgument(format!(
                "broadcast_reference exceeds {} bytes",
                wire::MAX_REFERENCE_BYTES
            )));
        }
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| NodeError::NotFound(format!("session {id}")))?;
        if !matches!(s.phase, Phase::Complete | Phase::Closed) {
            return Err(NodeError::FailedPrecondition(format!(
                "session {id} is {}, not COMPLETE",
                s.phase.as_str()
            )));
        }
        let Some(&from) = s.local.first().and_then(|i| s.context.signer_keys.get(*i)) else {
            return Err(NodeError::FailedPrecondition(
                "no local key in the session".into(),
            ));
        };
        let attempt = u32::try_from(s.failover.attempt).unwrap_or(u32::MAX);
        if s.failover.confirmed.is_none() {
            s.failover.confirmed = Some((hex::encode(from), reference.clone()));
            s.failover.deadline_ms = None;
        }
        let actions = vec![
            Action::Broadcast {
                from,
                body: Body::BroadcastConfirmed {
                    reference: reference.clone(),
                    attempt,
                },
            },
            Action::BroadcastConfirmed {
                by: from,
                reference,
            },
        ];
        self.apply(id, actions);
        Ok(())
    }

    // ---------------------------------------------------------------- commands

    fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Create {
                context,
                election,
                timeout,
                reply,
            } => {
                let _ = reply.send(self.create(context, election, timeout));
            }
            Command::Join { id, reply } => {
                if self.sessions.contains_key(&id) {
                    let _ = reply.send(self.join(id));
                } else if let Some(kad) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .as_mut()
                    .filter(|_| self.cfg.enable_session_discovery)
                {
                    let q = kad.get_record(session_record_key(&id));
                    self.dht_joins.insert(q, (id, reply));
                } else {
                    let _ = reply.send(Err(NodeError::NotFound(format!(
                        "session {id} is unknown and the DHT is disabled"
                    ))));
                }
            }
            Command::Get { id, reply } => {
                let _ = reply.send(self.sessions.get(&id).map(SessionView::of));
            }
            Command::List { reply } => {
                let mut v: Vec<SessionView> = self.sessions.values().map(SessionView::of).collect();
                v.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
                let _ = reply.send(v);
            }
            Command::Close { id, reason, reply } => {
                let r = match self.sessions.get_mut(&id) {
                    None => Err(NodeError::NotFound(format!("session {id}"))),
                    Some(s) => {
                        let actions = s.close(&reason);
                        let phase = s.phase;
                        self.apply(id, actions);
                        Ok(phase)
                    }
                };
                let _ = reply.send(r);
            }
            Command::Dial { addr, reply } => {
                let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                    let _ = reply.send(Err(NodeError::InvalidArgument(
                        "the address must end in /p2p/<peer id>".into(),
                    )));
                    return;
                };
                if self.swarm.is_connected(&peer) {
                    let _ = reply.send(Ok(peer));
                    return;
                }
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.add_address(&peer, addr.clone());
                }
                match self.swarm.dial(addr) {
                    Ok(()) => self.dials.entry(peer).or_default().push(reply),
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::Unavailable(format!("dial: {e}"))));
                    }
                }
            }
            Command::Info { reply } => {
                let me = *self.swarm.local_peer_id();
                let _ = reply.send(NodeInfo {
                    peer_id: me,
                    listen_addresses: self
                        .swarm
                        .listeners()
                        .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me)))
                        .collect(),
                    external_addresses: self
                        .swarm
                        .external_addresses()
                        .map(|a| a.clone().with(libp2p::multiaddr::Protocol::P2p(me)))
                        .collect(),
                    keys: self.keys.clone(),
                    connected_peers: self.swarm.connected_peers().count(),
                });
            }
            Command::Rejections { reply } => {
                let _ = reply.send(self.rejections.clone());
            }
            Command::SendRaw { peer, bytes, reply } => {
                if !self.swarm.is_connected(&peer) {
                    let _ = reply.send(Err(NodeError::Unavailable(format!(
                        "not connected to {peer}"
                    ))));
                    return;
                }
                let id = self
                    .swarm
                    .behaviour_mut()
                    .direct
                    .send_request(&peer, DirectRequest::Frame(bytes));
                self.raw_replies.insert(id, reply);
            }
            Command::Envelope {
                message,
                from,
                reply,
            } => {
                let _ = reply.send(self.envelope(&message, &from));
            }
            Command::PeerKeys { reply } => {
                let _ = reply.send(self.peer_keys.clone());
            }
            Command::Ban {
                peer,
                reason,
                reply,
            } => {
                let r = if reason.len() > wire::MAX_REASON_BYTES {
                    Err(NodeError::InvalidArgument(format!(
                        "reason exceeds {} bytes",
                        wire::MAX_REASON_BYTES
                    )))
                } else {
                    self.ban(peer, None, format!("manual: {reason}"));
                    Ok(())
                };
                let _ = reply.send(r);
            }
            Command::Unban { peer, reply } => {
                let r = if self.bans.contains_key(&peer) {
                    self.unban(peer);
                    Ok(())
                } else {
                    Err(NodeError::NotFound(format!("peer {peer} is not banned")))
                };
                let _ = reply.send(r);
            }
            Command::SendRequest {
                context,
                transaction_type,
                amount,
                reply,
            } => {
                let _ = reply.send(self.send_request(context, transaction_type, amount));
            }
            Command::Respond {
                request_id,
                accept,
                reply,
            } => {
                let _ = reply.send(self.respond(request_id, accept));
            }
            Command::Advertise { keys, body, reply } => {
                let r = self.advertise(keys, body);
                let _ = reply.send(r);
            }
            Command::Withdraw { reply } => {
                self.advertising = None;
                let _ = reply.send(());
            }
            Command::Discover { reply } => {
                let now = now_ms();
                let mut v: Vec<([u8; 33], PeerId, wire::Advertisement)> = self
                    .adverts
                    .iter()
                    .filter(|(_, (_, a))| a.expires_at_ms > now)
                    .map(|(k, (p, a))| (*k, *p, a.clone()))
                    .collect();
                v.sort_by_key(|(k, _, _)| *k);
                let _ = reply.send(v);
            }
            Command::PublishRaw {
                topic,
                bytes,
                reply,
            } => {
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(libp2p::gossipsub::IdentTopic::new(topic), bytes)
                    .map(|_| ())
                    .map_err(|e| NodeError::Unavailable(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Peers { reply } => {
                let mut ids: HashSet<PeerId> = self.swarm.connected_peers().copied().collect();
                ids.extend(self.reputation.iter().map(|(p, _)| *p));
                ids.extend(self.bans.keys().copied());
                ids.extend(self.rejections.keys().copied());
                let list = ids
                    .into_iter()
                    .map(|peer| {
                        let record = self.reputation.get(&peer).cloned().unwrap_or_default();
                        PeerStatus {
                            peer,
                            connected: self.swarm.is_connected(&peer),
                            score: record.score(),
                            record,
                            ban: self.bans.get(&peer).cloned(),
                            keys: self.peer_keys.get(&peer).cloned().unwrap_or_default(),
                            rejections: self.rejections.get(&peer).cloned().unwrap_or_default(),
                        }
                    })
                    .collect();
                let _ = reply.send(list);
            }
            Command::NotifyBroadcast {
                id,
                reference,
                reply,
            } => {
                let _ = reply.send(self.notify_broadcast(id, reference));
            }
            Command::Announcement { id, reply } => {
                let _ = reply.send(self.sessions.get(&id).map(|s| s.announce.clone()));
            }
            Command::PutRecord { key, value, reply } => {
                let r = match self.swarm.behaviour_mut().kad.as_mut() {
                    None => Err(NodeError::FailedPrecondition("the DHT is disabled".into())),
                    Some(kad) => kad
                        .put_record(Record::new(key, value), kad::Quorum::One)
                        .map(|_| ())
                        .map_err(|e| NodeError::Unavailable(e.to_string())),
                };
                let _ = reply.send(r);
            }
        }
    }

    fn create(
        &mut self,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout: Option<Duration>,
    ) -> Result<SessionView, NodeError> {
        // Re-validate as a peer would (sorted distinct keys, lengths, tweaks).
        let active = self
            .sessions
            .values()
            .filter(|s| !s.phase.is_terminal())
            .count();
        if active >= self.cfg.max_active_sessions {
            return Err(NodeError::ResourceExhausted(format!(
                "{active} unfinished sessions; retry later"
            )));
        }
        let context = SessionContext::from_pb(&context.to_pb())
            .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let local: Vec<usize> = (0..context.signer_keys.len())
            .filter(|i| self.keys.contains(&context.signer_keys[*i]))
            .collect();
        let Some(&first) = local.first() else {
            return Err(NodeError::FailedPrecondition(
                "the local signer holds none of the session's keys".into(),
            ));
        };
        let creator = context.signer_keys[first];
        let key_agg = context
            .key_agg()
            .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let method = election.unwrap_or(self.cfg.election_method);
        let election = elect(method, &context.signer_keys)
            .map_err(|e| NodeError::InvalidArgument(e.to_string()))?;
        let created_at_ms = now_ms();
        let timeout = timeout.unwrap_or(self.cfg.session_timeout);
        let expires_at_ms =
            created_at_ms.saturating_add(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX));
        let mut entropy = [0u8; 16];
        rand::rng().fill_bytes(&mut entropy);
        let id = SessionId::derive(
            &context.signer_keys,
            &context.message,
            created_at_ms,
            &entropy,
        );
        let announce = Message {
            header: Header {
                session_id: id,
                sender: creator,
                sequence: 1,
                timestamp_ms: created_at_ms,
            },
            body: Body::Announce(Box::new(Announce {
                context: context.clone(),
                election_method: method,
                created_at_ms,
                entropy,
                expires_at_ms,
            })),
        };
        let bytes = self.envelope(&announce.to_pb(), &creator)?;
        let session = Session::new(
            id,
            context,
            key_agg,
            election,
            creator,
            created_at_ms,
            expires_at_ms,
            bytes.clone(),
            local,
        );
        self.sessions.insert(id, session);
        if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
            let mut record = Record::new(session_record_key(&id), bytes.clone());
            record.expires = Some(Instant::now() + timeout);
            if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                tracing::warn!(session = %id, error = %e, "DHT put failed");
            }
        }
        self.broadcast_session(id, bytes);
        let view = self
            .sessions
            .get(&id)
            .map(SessionView::of)
            .ok_or(NodeError::Stopped)?;
        self.emit(NodeEvent::SessionCreated(Box::new(view)));
        let joined = self.join(id)?;
        Ok(joined)
    }

    fn join(&mut self, id: SessionId) -> Result<SessionView, NodeError> {
        let s = self
            .sessions
            .get_mut(&id)
            .ok_or_else(|| NodeError::NotFound(format!("session {id}")))?;
        if s.local.is_empty() {
            return Err(NodeError::FailedPrecondition(
                "the local signer holds none of the session's keys".into(),
            ));
        }
        if s.phase.is_terminal() {
            return Err(NodeError::FailedPrecondition(format!(
                "session {id} is {}",
                s.phase.as_str()
            )));
        }
        let actions = s.join_local();
        self.apply(id, actions);
        self.sessions
            .get(&id)
            .map(SessionView::of)
            .ok_or(NodeError::Stopped)
    }

    // ---------------------------------------------------------------- internal results

    fn on_internal(&mut self, i: Internal) {
        let (id, index, result) = match i {
            Internal::Nonce { id, index, result } => (id, index, result.map(Ok)),
            Internal::Psig { id, index, result } => (id, index, result.map(Err)),
        };
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let actions = match result {
            Ok(Ok(nonce)) => s.on_local_nonce(index, nonce),
            Ok(Err(psig)) => s.on_local_psig(index, psig),
            Err(e) => {
                let mut a = Vec::new();
                s.fail(
                    wire::AbortCode::SignerRefused,
                    format!("local signer refused: {e}"),
                    Vec::new(),
                    &mut a,
                );
                a
            }
        };
        self.apply(id, actions);
    }

    fn on_tick(&mut self) {
        let (now, now_ms) = (Instant::now(), now_ms());
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let actions = match self.sessions.get_mut(&id) {
                Some(s) => s.tick(now_ms, now, self.cfg.stuck_timeout),
                None => continue,
            };
            self.apply(id, actions);
        }
        let expired: Vec<SessionId> = self
            .finished_at
            .iter()
            .filter(|(_, t)| now.duration_since(**t) > FINISHED_RETENTION)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.finished_at.remove(&id);
            self.sessions.remove(&id);
            self.sent.remove(&id);
        }
        self.orphans.retain(|id, _| !self.sessions.contains_key(id));
        let expired: Vec<PeerId> = self
            .bans
            .iter()
            .filter(|(_, b)| b.until_ms.is_some_and(|u| u <= now_ms))
            .map(|(p, _)| *p)
            .collect();
        for p in expired {
            self.unban(p);
        }
        self.adverts.retain(|_, (_, a)| a.expires_at_ms > now_ms);
        self.in_requests.retain(|_, (_, _, e)| *e > now_ms);
        self.out_requests.retain(|_, (_, _, e)| *e > now_ms);
        self.request_times
            .retain(|_, t| now_ms - *t < SIGNING_REQUEST_INTERVAL_MS);
        self.advert_times
            .retain(|_, t| now_ms - *t < ADVERTISEMENT_INTERVAL_MS);
    }

    // ---------------------------------------------------------------- swarm events

    fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                if let Some(waiters) = self.dials.remove(&peer_id) {
                    for w in waiters {
                        let _ = w.send(Ok(peer_id));
                    }
                }
                if num_established.get() == 1 {
                    self.send_hello(peer_id);
                }
                self.pump(peer_id);
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                if let Some(o) = self.outbox.get_mut(&peer_id) {
                    o.in_flight = None;
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                if let Some(waiters) = self.dials.remove(&peer) {
                    for w in waiters {
                        let _ =
                            w.send(Err(NodeError::Unavailable(format!("dial {peer}: {error}"))));
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    for addr in info.listen_addrs {
                        kad.add_address(&peer_id, addr);
                    }
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Direct(request_response::Event::Message {
                peer,
                message,
                ..
            })) => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let outcome = match request {
                        DirectRequest::Frame(bytes) => self.on_request(peer, &bytes),
                        DirectRequest::TooLarge(n) => Err(Refusal(
                            "too_large",
                            format!("frame of {n} bytes over {MAX_DIRECT_MESSAGE_BYTES}"),
                        )),
                    };
                    let answer = match outcome {
                        Ok(()) => {
                            self.accepted
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            self.reputation.accept(&peer);
                            Vec::new()
                        }
                        Err(r) => {
                            self.reject(peer, &r);
                            format!("rejected: {}: {}", r.0, r.1)
                                .into_bytes()
                                .into_iter()
                                .take(net::MAX_RESPONSE_BYTES)
                                .collect()
                        }
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_response(channel, answer);
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    self.on_outbound_done(peer, request_id, Ok(response));
                }
            },
            SwarmEvent::Behaviour(BehaviourEvent::Direct(
                request_response::Event::OutboundFailure {
                    peer,
                    request_id,
                    error,
                    ..
                },
            )) => {
                self.on_outbound_done(peer, request_id, Err(error.to_string()));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                libp2p::gossipsub::Event::Message {
                    propagation_source,
                    message_id,
                    message,
                },
            )) => {
                let verdict = match message.source {
                    Some(author) => self.on_advertisement(author, &message.data),
                    None => Err(Refusal("unattested", "unsigned gossip".into())),
                };
                let acceptance = match verdict {
                    Ok(true) => libp2p::gossipsub::MessageAcceptance::Accept,
                    Ok(false) => libp2p::gossipsub::MessageAcceptance::Ignore,
                    Err(r) => {
                        self.reject(message.source.unwrap_or(propagation_source), &r);
                        libp2p::gossipsub::MessageAcceptance::Reject
                    }
                };
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            // Publishing needs subscribers: refresh our advertisement when one appears.
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(
                libp2p::gossipsub::Event::Subscribed { topic, .. },
            )) if self
                .advertising
                .as_ref()
                .is_some_and(|a| a.topics.contains(&topic)) =>
            {
                self.publish_advertisement();
            }
            _ => {}
        }
    }

    fn on_outbound_done(
        &mut self,
        peer: PeerId,
        id: OutboundRequestId,
        result: Result<Vec<u8>, String>,
    ) {
        if let Some(reply) = self.raw_replies.remove(&id) {
            let _ = reply.send(result.map_err(NodeError::Unavailable));
            return;
        }
        if let Some(o) = self.outbox.get_mut(&peer)
            && o.in_flight == Some(id)
        {
            o.in_flight = None;
        }
        match result {
            Ok(answer) if !answer.is_empty() => {
                tracing::debug!(%peer, answer = %String::from_utf8_lossy(&answer), "peer refused our message");
            }
            Err(e) => tracing::debug!(%peer, error = %e, "message not delivered"),
            _ => {}
        }
        self.pump(peer);
    }

    fn send_hello(&mut self, peer: PeerId) {
        self.hello_seq += 1;
        let Some(first) = self.keys.first().copied() else {
            return;
        };
        let msg = Message {
            header: Header {
                session_id: SessionId([0; 16]),
                sender: first,
                sequence: self.hello_seq,
                timestamp_ms: now_ms(),
            },
            body: Body::Hello(
                self.keys
                    .iter()
                    .filter_map(|k| self.attestations.get(k).cloned())
                    .collect(),
            ),
        };
        if let Ok(bytes) = self.envelope(&msg.to_pb(), &first) {
            self.send_to(peer, bytes);
        }
    }

    // ---------------------------------------------------------------- inbound

    /// Check an envelope: canonical, signed by the peer whose key it carries (and, for direct
    /// and gossip messages, the peer that sent it), a valid message, attested for its sender
    /// key. `expected = None` is a DHT record: judged by its expiry instead of the ±5 min window.
    fn open(&self, bytes: &[u8], expected: Option<PeerId>) -> Result<(PeerId, Message), Refusal> {
        crate::envelope::open(bytes, expected, now_ms())
    }

    fn note_keys(&mut self, peer: PeerId, keys: &[[u8; 33]]) -> Result<(), Refusal> {
        let known = self.peer_keys.entry(peer).or_default();
        let mut changed = false;
        for k in keys {
            if !known.contains(k) {
                if known.len() >= MAX_KEYS_PER_PEER {
                    return Err(Refusal(
                        "too_many_keys",
                        format!("a peer may speak for at most {MAX_KEYS_PER_PEER} keys"),
                    ));
                }
                known.push(*k);
                changed = true;
            }
        }
        if changed {
            let keys = known.clone();
            if self.advert_lookups.len() < 256
                && let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
            {
                for k in &keys {
                    if !self.adverts.contains_key(k) {
                        let q = kad.get_record(RecordKey::new(&format!(
                            "{SIGNER_KEY_PREFIX}{}",
                            hex::encode(k)
                        )));
                        self.advert_lookups.insert(q, *k);
                    }
                }
            }
            self.emit(NodeEvent::PeerIdentified { peer, keys });
            self.replay_history(peer);
        }
        Ok(())
    }

    /// Send our past messages of live sessions to a participant that was not connected then.
    fn replay_history(&mut self, peer: PeerId) {
        let Some(keys) = self.peer_keys.get(&peer).cloned() else {
            return;
        };
        let mut out = Vec::new();
        for (id, (msgs, delivered)) in &mut self.sent {
            let Some(s) = self.sessions.get(id) else {
                continue;
            };
            if s.phase.is_terminal()
                || delivered.contains(&peer)
                || !keys.iter().any(|k| s.index_of(k).is_some())
            {
                continue;
            }
            delivered.insert(peer);
            out.extend(msgs.iter().cloned());
        }
        for m in out {
            self.send_to(peer, m);
        }
    }

    fn on_request(&mut self, peer: PeerId, bytes: &[u8]) -> Result<(), Refusal> {
        let (pid, msg) = self.open(bytes, Some(peer))?;
        self.note_keys(pid, &[msg.header.sender])?;
        match &msg.body {
            Body::Hello(atts) => {
                let now = now_ms();
                let mut keys = Vec::new();
                for a in atts {
                    let a = Attestation::verify_pb(a, &pid.to_bytes(), now)
                        .map_err(|e| Refusal("unattested", e.to_string()))?;
                    keys.push(a.signer_key);
                }
                self.note_keys(pid, &keys)
            }
            Body::Announce(_) => self.on_announce(Some(pid), bytes, msg),
            Body::SigningRequest(_) | Body::SigningResponse { .. } => self.on_matchmaking(pid, msg),
            Body::Advertisement(_) => Err(Refusal(
                "unsupported",
                format!("{} is not served on this protocol", msg.body.kind()),
            )),
            _ => self.on_session_message(pid, msg),
        }
    }

    fn on_session_message(&mut self, peer: PeerId, msg: Message) -> Result<(), Refusal> {
        let id = msg.header.session_id;
        let Some(s) = self.sessions.get_mut(&id) else {
            // Messages of different senders can cross the announcement: keep a few.
            if self.orphans.len() >= MAX_ORPHAN_SESSIONS && !self.orphans.contains_key(&id) {
                return Err(Refusal(
                    "unknown_session",
                    format!("session {id} is unknown"),
                ));
            }
            let q = self.orphans.entry(id).or_default();
            if q.len() >= MAX_ORPHANS_PER_SESSION {
                return Err(Refusal(
                    "unknown_session",
                    format!("session {id} is unknown"),
                ));
            }
            q.push((peer, msg));
            return Ok(());
        };
        let index = s.index_of(&msg.header.sender).ok_or_else(|| {
            Refusal(
                "not_member",
                "the sender key is not a signer of this session".into(),
            )
        })?;
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(msg.encode()).into()
        };
        let actions = match s.on_remote(
            index,
            msg.header.sequence,
            &msg.body,
            self.cfg.max_sequence_gap,
            self.cfg.enable_replay_protection,
        ) {
            Ok(a) => {
                s.note_accepted(digest);
                a
            }
            // A byte-identical copy of a message we accepted: an honest re-send (the peer
            // restarted, or a delivery was retried). Acknowledged, not applied, not penalised.
            Err(_) if s.was_accepted(&digest) => return Ok(()),
            Err(r) => return Err(Refusal(r.reason(), r.to_string())),
        };
        if actions.is_empty() {
            // Accepted without visible effect (a buffered contribution, a sequence number):
            // still state to keep.
            if let Err(e) = self.persist(id) {
                tracing::error!(session = %id, error = %e, "session state not stored");
            }
        } else {
            self.apply(id, actions);
        }
        Ok(())
    }

    /// A session announcement (direct, or a DHT record when `peer` is `None`).
    fn on_announce(
        &mut self,
        _peer: Option<PeerId>,
        envelope: &[u8],
        msg: Message,
    ) -> Result<(), Refusal> {
        let Body::Announce(a) = msg.body else {
            return Err(Refusal("bad_envelope", "not an announcement".into()));
        };
        let id = msg.header.session_id;
        if let Some(existing) = self.sessions.get(&id) {
            return if existing.announce == envelope {
                Ok(())
            } else {
                Err(Refusal(
                    "conflicting_announce",
                    format!("session {id} was announced differently"),
                ))
            };
        }
        let local: Vec<usize> = (0..a.context.signer_keys.len())
            .filter(|i| self.keys.contains(&a.context.signer_keys[*i]))
            .collect();
        if local.is_empty() {
            // Not ours to sign: nothing to keep.
            return Ok(());
        }
        let key_agg = a
            .context
            .key_agg()
            .map_err(|e| Refusal("context", e.to_string()))?;
        let election = elect(a.election_method, &a.context.signer_keys)
            .map_err(|e| Refusal("context", e.to_string()))?;
        let session = Session::new(
            id,
            a.context.clone(),
            key_agg,
            election,
            msg.header.sender,
            a.created_at_ms,
            a.expires_at_ms,
            envelope.to_vec(),
            local,
        );
        let view = SessionView::of(&session);
        self.sessions.insert(id, session);
        self.emit(NodeEvent::SessionCreated(Box::new(view)));
        let now = now_ms();
        self.auto_join.retain(|(_, exp)| *exp > now);
        if let Some(pos) = self.auto_join.iter().position(|(c, _)| *c == a.context) {
            self.auto_join.remove(pos);
            if let Err(e) = self.join(id) {
                tracing::warn!(session = %id, error = %e, "auto-join of an accepted request failed");
            }
        }
        if let Some(orphans) = self.orphans.remove(&id) {
            for (p, m) in orphans {
                if let Err(r) = self.on_session_message(p, m) {
                    self.reject(p, &r);
                }
            }
        }
        Ok(())
    }

    fn on_kad(&mut self, ev: kad::Event) {
        match ev {
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        source,
                        record: Some(record),
                        ..
                    },
            } => match self.validate_record(&record) {
                Ok(()) => {
                    if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut()
                        && let Err(e) = kad.store_mut().put(record)
                    {
                        tracing::warn!(error = %e, "DHT store refused a record");
                    }
                }
                Err(r) => self.reject(source, &r),
            },
            kad::Event::OutboundQueryProgressed {
                id: qid,
                result: kad::QueryResult::GetRecord(result),
                ..
            } => {
                if let Some(key) = self.advert_lookups.remove(&qid) {
                    if let Ok(kad::GetRecordOk::FoundRecord(found)) = result {
                        self.on_advert_record(key, &found.record);
                    }
                    return;
                }
                let Some((sid, reply)) = self.dht_joins.remove(&qid) else {
                    return;
                };
                match result {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        let outcome = self.validate_record(&found.record).and_then(|()| {
                            let (pid, msg) = self.open(&found.record.value, None)?;
                            if msg.header.session_id != sid {
                                return Err(Refusal(
                                    "bad_record",
                                    "record is for another session".into(),
                                ));
                            }
                            self.on_announce(Some(pid), &found.record.value, msg)
                        });
                        let answer = match outcome {
                            Ok(()) if self.sessions.contains_key(&sid) => self.join(sid),
                            Ok(()) => Err(NodeError::FailedPrecondition(
                                "the local signer holds none of the session's keys".into(),
                            )),
                            Err(r) => Err(NodeError::NotFound(format!(
                                "session {sid}: DHT record refused ({}: {})",
                                r.0, r.1
                            ))),
                        };
                        let _ = reply.send(answer);
                    }
                    Ok(_) => {
                        // Query finished without (more) records: keep waiting is pointless.
                        let _ = reply.send(Err(NodeError::NotFound(format!(
                            "session {sid} not found in the DHT"
                        ))));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(NodeError::NotFound(format!(
                            "session {sid} not found in the DHT: {e}"
                        ))));
                    }
                }
            }
            _ => {}
        }
    }

    /// A DHT record must be a valid, signed, attested announcement (or advertisement) stored
    /// under its own key.
    fn validate_record(&self, record: &Record) -> Result<(), Refusal> {
        crate::envelope::validate_record(record.key.as_ref(), &record.value, now_ms())
    }
}
