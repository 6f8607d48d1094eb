//! What the protocol core reports: session snapshots, events, errors of commands, peer status.

use std::collections::HashMap;

use libp2p_identity::PeerId;
use shared::election::SessionId;
use shared::musig::Signature;
use shared::wire::{self, SessionContext, pb};

use super::session::{AbortInfo, Phase, Session};

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
    /// Final signatures, one per message (in order), once complete.
    pub signatures: Option<Vec<Signature>>,
    /// Abort.
    pub abort: Option<AbortInfo>,
    /// Creation, ms.
    pub created_at_ms: i64,
    /// Expiry, ms.
    pub expires_at_ms: i64,
    /// Failover progress.
    pub failover: crate::store::FailoverRecord,
    /// This node's public nonces (by local key order; each key's nonces for every message,
    /// concatenated in message order).
    pub local_nonces: Vec<Vec<u8>>,
    /// This node's partial signatures (by local key order; each key's for every message,
    /// concatenated).
    pub local_psigs: Vec<Vec<u8>>,
    /// The request that created it here.
    pub request_id: Option<String>,
}

impl SessionView {
    /// The final signature of a complete single-message session (None for a batch: see
    /// [`SessionView::signatures`]).
    pub fn signature(&self) -> Option<Signature> {
        match self.signatures.as_deref() {
            Some([one]) => Some(*one),
            _ => None,
        }
    }

    pub(crate) fn of(s: &Session) -> Self {
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
            signatures: s.signatures.clone(),
            abort: s.abort.clone(),
            created_at_ms: s.created_at_ms,
            expires_at_ms: s.expires_at_ms,
            failover: s.failover.clone(),
            local_nonces: s
                .local
                .iter()
                .filter_map(|i| s.nonces.get(*i).and_then(Option::as_ref))
                .map(|n| n.iter().flat_map(|n| n.to_bytes()).collect())
                .collect(),
            local_psigs: s
                .local
                .iter()
                .filter_map(|i| s.psigs.get(*i).and_then(Option::as_ref))
                .map(|p| p.iter().flat_map(|p| p.to_bytes()).collect())
                .collect(),
            request_id: s.request_id.clone(),
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
        /// Signatures, one per message in order.
        signatures: Vec<Signature>,
        /// The key they verify under.
        output_key: [u8; 33],
    },
    /// Our signer's nonce or partial signature for the session is in (API calls waiting for
    /// it look again).
    Contributed {
        /// Session.
        id: SessionId,
    },
    /// A complete session was closed by the application (CLOSED).
    Closed {
        /// Session.
        id: SessionId,
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
        /// The signatures to broadcast (one per message).
        signatures: Vec<Signature>,
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
    /// This node's attestations were renewed.
    AttestationsRenewed {
        /// Their earliest expiry, ms.
        expires_at_ms: i64,
    },
    /// Renewing this node's attestations failed (it is retried).
    AttestationRenewalFailed {
        /// Why.
        error: String,
        /// When the current ones expire, ms.
        expires_at_ms: i64,
    },
    /// A peer's attested keys are known.
    PeerIdentified {
        /// Peer.
        peer: PeerId,
        /// Keys.
        keys: Vec<[u8; 33]>,
    },
}

impl NodeEvent {
    /// The session an event is about, if any.
    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            NodeEvent::SessionCreated(v) => Some(v.id),
            NodeEvent::Joined { id, .. }
            | NodeEvent::PhaseChanged { id, .. }
            | NodeEvent::Contributed { id }
            | NodeEvent::Complete { id, .. }
            | NodeEvent::Closed { id }
            | NodeEvent::Aborted { id, .. }
            | NodeEvent::ShouldBroadcast { id, .. }
            | NodeEvent::CoordinatorFailed { id, .. }
            | NodeEvent::FailoverExhausted { id, .. }
            | NodeEvent::BroadcastConfirmed { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// Whether applications see it (`WatchEvents`); the others are the node's own signals.
    pub fn for_applications(&self) -> bool {
        !matches!(
            self,
            NodeEvent::Rejected { .. }
                | NodeEvent::PeerIdentified { .. }
                | NodeEvent::Contributed { .. }
                | NodeEvent::AttestationsRenewed { .. }
                | NodeEvent::AttestationRenewalFailed { .. }
        )
    }
}

/// Errors of node commands: a gRPC-like kind, a machine-readable reason and a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Bad input.
    #[error("invalid argument: {1}")]
    InvalidArgument(ErrorReason, String),
    /// Unknown session, peer or request.
    #[error("not found: {1}")]
    NotFound(ErrorReason, String),
    /// Wrong state for the call.
    #[error("failed precondition: {1}")]
    FailedPrecondition(ErrorReason, String),
    /// The network, signer or store is unavailable.
    #[error("unavailable: {1}")]
    Unavailable(ErrorReason, String),
    /// Too much work in progress.
    #[error("resource exhausted: {1}")]
    ResourceExhausted(ErrorReason, String),
    /// Not allowed (a banned peer).
    #[error("permission denied: {1}")]
    PermissionDenied(ErrorReason, String),
    /// The node is shutting down.
    #[error("the node stopped")]
    Stopped,
}

impl NodeError {
    /// The machine-readable reason.
    pub fn reason(&self) -> ErrorReason {
        match self {
            NodeError::InvalidArgument(r, _)
            | NodeError::NotFound(r, _)
            | NodeError::FailedPrecondition(r, _)
            | NodeError::Unavailable(r, _)
            | NodeError::ResourceExhausted(r, _)
            | NodeError::PermissionDenied(r, _) => *r,
            NodeError::Stopped => ErrorReason::NodeStopping,
        }
    }
}

/// Why a command failed, as the API reports it (`google.rpc.ErrorInfo.reason`; the list is in
/// `coordinator.proto`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorReason {
    /// A malformed or out-of-range field.
    InvalidField,
    /// A request id used before with different parameters.
    RequestIdReused,
    /// Unknown session.
    SessionNotFound,
    /// Unknown or unreachable peer.
    PeerNotFound,
    /// Unknown, answered or expired signing request.
    SigningRequestNotFound,
    /// Unban of a peer that is not banned.
    PeerNotBanned,
    /// The local signer holds none of the keys.
    NoLocalKey,
    /// The session is not in the phase the call needs.
    WrongPhase,
    /// The session has ended (complete, closed or aborted).
    SessionEnded,
    /// The session is not complete.
    NotComplete,
    /// The DHT is disabled.
    DhtDisabled,
    /// Too many unfinished sessions.
    TooManySessions,
    /// Too many open signing requests.
    TooManyRequests,
    /// Called again too soon.
    RateLimited {
        /// When a retry can succeed, ms from now.
        retry_after_ms: i64,
    },
    /// The network is unavailable (dial, send, DHT).
    NetworkUnavailable,
    /// A change could not be stored.
    StoreFailed,
    /// The node is stopping.
    NodeStopping,
    /// A round's result was not ready within the wait.
    RoundNotReady,
    /// A one-call `Sign` did not complete in its time (the session goes on).
    SignTimeout,
    /// The session aborted.
    SessionAborted,
    /// The peer is banned.
    PeerBanned,
    /// No nonce-pool slot is ready (or no pool is enabled) for a one-round session.
    PoolExhausted,
}

impl ErrorReason {
    /// Its name in `google.rpc.ErrorInfo.reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidField => "INVALID_FIELD",
            ErrorReason::RequestIdReused => "REQUEST_ID_REUSED",
            ErrorReason::SessionNotFound => "SESSION_NOT_FOUND",
            ErrorReason::PeerNotFound => "PEER_NOT_FOUND",
            ErrorReason::SigningRequestNotFound => "SIGNING_REQUEST_NOT_FOUND",
            ErrorReason::PeerNotBanned => "PEER_NOT_BANNED",
            ErrorReason::NoLocalKey => "NO_LOCAL_KEY",
            ErrorReason::WrongPhase => "WRONG_PHASE",
            ErrorReason::SessionEnded => "SESSION_ENDED",
            ErrorReason::NotComplete => "NOT_COMPLETE",
            ErrorReason::DhtDisabled => "DHT_DISABLED",
            ErrorReason::TooManySessions => "TOO_MANY_SESSIONS",
            ErrorReason::TooManyRequests => "TOO_MANY_REQUESTS",
            ErrorReason::RateLimited { .. } => "RATE_LIMITED",
            ErrorReason::NetworkUnavailable => "NETWORK_UNAVAILABLE",
            ErrorReason::StoreFailed => "STORE_FAILED",
            ErrorReason::NodeStopping => "NODE_STOPPING",
            ErrorReason::RoundNotReady => "ROUND_NOT_READY",
            ErrorReason::SignTimeout => "SIGN_TIMEOUT",
            ErrorReason::SessionAborted => "SESSION_ABORTED",
            ErrorReason::PeerBanned => "PEER_BANNED",
            ErrorReason::PoolExhausted => "POOL_EXHAUSTED",
        }
    }
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
