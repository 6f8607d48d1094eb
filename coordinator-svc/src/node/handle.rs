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

/// Calls waiting for news of one session (`Sign`, a round's wait), by session: the node wakes
/// those of an event's session only. Before, each waiting call took every event of every
/// session from the broadcast channel and looked at its id: with K calls waiting, every event
/// woke K tasks (and re-armed K timers).
#[derive(Debug, Default)]
pub(crate) struct SessionWaiters(
    std::sync::Mutex<HashMap<SessionId, (std::sync::Arc<tokio::sync::Notify>, usize)>>,
);

impl SessionWaiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<SessionId, (std::sync::Arc<tokio::sync::Notify>, usize)>>
    {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn watch(this: &std::sync::Arc<Self>, id: SessionId) -> SessionWatch {
        let notify = {
            let mut w = this.lock();
            let e = w.entry(id).or_default();
            e.1 += 1;
            e.0.clone()
        };
        SessionWatch {
            id,
            notify,
            waiters: this.clone(),
        }
    }

    /// Something happened to session `id`: wake the calls waiting for it.
    pub(crate) fn wake(&self, id: SessionId) {
        if let Some((n, _)) = self.lock().get(&id) {
            n.notify_waiters();
        }
    }
}

/// A call's interest in one session's events ([`NodeHandle::watch_session`]); dropped, it
/// stops being woken.
#[derive(Debug)]
pub struct SessionWatch {
    id: SessionId,
    notify: std::sync::Arc<tokio::sync::Notify>,
    waiters: std::sync::Arc<SessionWaiters>,
}

impl SessionWatch {
    /// Resolves at the session's next event after this future is enabled (enable it, then
    /// read the session, then await it: nothing in between is missed).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
    }
}

impl Drop for SessionWatch {
    fn drop(&mut self) {
        let mut w = self.waiters.lock();
        if let Some((_, n)) = w.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                w.remove(&self.id);
            }
        }
    }
}

/// Cloneable handle to a running node.
#[derive(Debug, Clone)]
pub struct NodeHandle {
    pub(super) waiters: std::sync::Arc<SessionWaiters>,
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

    /// Be woken by session `id`'s events only (see [`SessionWatch::notified`]).
    pub fn watch_session(&self, id: SessionId) -> SessionWatch {
        SessionWaiters::watch(&self.waiters, id)
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

#[cfg(test)]
mod tests {
    use std::future::Future as _;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn ready(f: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>) -> bool {
        matches!(
            f.poll(&mut Context::from_waker(Waker::noop())),
            Poll::Ready(())
        )
    }

    #[test]
    fn a_session_s_event_wakes_only_its_own_waiters_and_a_dropped_watch_is_forgotten() {
        let waiters = std::sync::Arc::new(SessionWaiters::default());
        let (a, b) = (SessionId([1; 16]), SessionId([2; 16]));
        let (wa, wa2, wb) = (
            SessionWaiters::watch(&waiters, a),
            SessionWaiters::watch(&waiters, a),
            SessionWaiters::watch(&waiters, b),
        );
        let mut na = Box::pin(wa.notified());
        let mut na2 = Box::pin(wa2.notified());
        let mut nb = Box::pin(wb.notified());
        for n in [na.as_mut(), na2.as_mut(), nb.as_mut()] {
            n.enable();
        }
        waiters.wake(a);
        assert!(ready(na.as_mut()) && ready(na2.as_mut()));
        assert!(!ready(nb.as_mut()), "b's waiter woke for a's event");
        // An event before a waiter enabled its future is not replayed to it (the caller reads
        // the session after enabling, so nothing is missed).
        waiters.wake(b);
        assert!(ready(nb.as_mut()));
        drop((na, na2, nb));
        drop((wa, wa2));
        assert!(
            !waiters.lock().contains_key(&a),
            "a's entry outlived its watches"
        );
        assert!(waiters.lock().contains_key(&b));
        drop(wb);
        assert!(waiters.lock().is_empty());
    }
}
