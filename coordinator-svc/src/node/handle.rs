//! The handle the rest of the program holds: commands with a oneshot reply to the node task,
//! and the event subscription.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};
use shared::election::{ElectionMethod, SessionId};
use shared::wire::{self, SessionContext, pb};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::events::{EventLog, Subscription};
use super::{ErrorReason, NodeError, NodeEvent, PeerStatus, SessionView};
use crate::protocol::matchmaking::OpenRequest;
use crate::protocol::session::Phase;
use crate::store::CreatedKey;

/// A page of sessions, newest first, and where the next one starts (None: the last page).
pub type SessionPage = (Vec<SessionView>, Option<CreatedKey>);

pub(super) enum Command {
    Create {
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout: Option<Duration>,
        request_id: Option<String>,
        one_round: bool,
        reply: oneshot::Sender<Result<SessionView, NodeError>>,
    },
    SetPool {
        context: SessionContext,
        size: usize,
        reply: oneshot::Sender<Result<crate::protocol::pools::PoolStatus, NodeError>>,
    },
    Page {
        phase: Option<Phase>,
        before: Option<CreatedKey>,
        limit: usize,
        reply: oneshot::Sender<Result<SessionPage, NodeError>>,
    },
    SigningRequests {
        reply: oneshot::Sender<Vec<OpenRequest>>,
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
        request_id: Option<String>,
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
    pub(super) tx: mpsc::Sender<Command>,
    pub(super) accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) writes: std::sync::Arc<[std::sync::atomic::AtomicU64; 2]>,
    pub(super) tables: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]>,
    pub(super) signature_checks: std::sync::Arc<[std::sync::atomic::AtomicU64; 3]>,
    pub(super) events: broadcast::Sender<NodeEvent>,
    pub(super) log: std::sync::Arc<EventLog>,
    pub(super) peer_id: PeerId,
    pub(super) keys: Vec<[u8; 33]>,
}

impl NodeHandle {
    pub(super) async fn call<T>(
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

    /// The core's session tables after the last cleanup: sessions in memory, finished sessions
    /// out of memory whose broadcast clock runs, departed sessions remembered until their
    /// announcement expires.
    pub fn memory_tables(&self) -> [(&'static str, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        let names = ["sessions", "clocks_out_of_memory", "departed"];
        std::array::from_fn(|i| (names[i], self.tables[i].load(Relaxed)))
    }

    /// Store transactions committed so far, and the session records they wrote (group commit:
    /// several records per transaction).
    pub fn store_writes(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.writes[0].load(Relaxed), self.writes[1].load(Relaxed))
    }

    /// Direct frames' envelope signatures so far: proven in batches, proven one by one, and
    /// left to the full check (bad, or unreadable to the batch).
    pub fn signature_checks(&self) -> [(&'static str, u64); 3] {
        use std::sync::atomic::Ordering::Relaxed;
        let names = ["batched", "one_by_one", "full_check"];
        std::array::from_fn(|i| (names[i], self.signature_checks[i].load(Relaxed)))
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

    /// Subscribe to the numbered events applications see, resuming after `after`.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        self.log.subscribe(after)
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
        self.create_session_for(context, election, timeout, None)
            .await
    }

    /// [`NodeHandle::create_session`] for a client request id: a retry returns the session the
    /// first call created.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn create_session_for(
        &self,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout: Option<Duration>,
        request_id: Option<String>,
    ) -> Result<SessionView, NodeError> {
        self.call(|reply| Command::Create {
            context,
            election,
            timeout,
            request_id,
            one_round: false,
            reply,
        })
        .await?
    }

    /// A one-round session signed with the next ready slot of this party's nonce pool for the
    /// context's key set, format and tweaks.
    ///
    /// # Errors
    /// [`NodeError`] ([`crate::protocol::ErrorReason::PoolExhausted`] when no slot is ready).
    pub async fn create_one_round(
        &self,
        context: SessionContext,
        timeout: Option<Duration>,
        request_id: Option<String>,
    ) -> Result<SessionView, NodeError> {
        self.call(|reply| Command::Create {
            context,
            election: None,
            timeout,
            request_id,
            one_round: true,
            reply,
        })
        .await?
    }

    /// Enable, resize or (size 0) disable this party's nonce pool for `context`'s key set,
    /// format and tweaks.
    ///
    /// # Errors
    /// [`NodeError`].
    pub async fn set_nonce_pool(
        &self,
        context: SessionContext,
        size: usize,
    ) -> Result<crate::protocol::pools::PoolStatus, NodeError> {
        self.call(|reply| Command::SetPool {
            context,
            size,
            reply,
        })
        .await?
    }

    /// A page of sessions from the store (current state from memory where present), newest
    /// first, optionally of one phase.
    ///
    /// # Errors
    /// [`NodeError::Unavailable`] when the store fails.
    pub async fn session_page(
        &self,
        phase: Option<Phase>,
        before: Option<CreatedKey>,
        limit: usize,
    ) -> Result<SessionPage, NodeError> {
        self.call(|reply| Command::Page {
            phase,
            before,
            limit,
            reply,
        })
        .await?
    }

    /// Open signing requests, received and sent.
    ///
    /// # Errors
    /// [`NodeError::Stopped`].
    pub async fn signing_requests(&self) -> Result<Vec<OpenRequest>, NodeError> {
        self.call(|reply| Command::SigningRequests { reply }).await
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
        request_id: Option<String>,
    ) -> Result<[u8; 16], NodeError> {
        self.call(|reply| Command::SendRequest {
            context,
            transaction_type,
            amount,
            request_id,
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
            .ok_or_else(|| {
                NodeError::NotFound(ErrorReason::SessionNotFound, format!("session {id}"))
            })
    }
}
