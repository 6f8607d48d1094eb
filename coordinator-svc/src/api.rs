//! The `CoordinatorService` gRPC API (DESIGN §5): every operation of the reference
//! coordinator, a one-call `Sign`, `WatchEvents`, `ListSigningRequests` and `CombineKeys`.
//! Inputs are validated here, before any command reaches the node, so a malformed call changes
//! nothing; every error carries machine-readable details ([`errors`]).

use std::pin::Pin;
use std::time::Duration;

use musig2_proto::v1::coordinator_service_server::CoordinatorService;
use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use shared::election::{ElectionMethod, SessionId, elect};
use shared::wire::{self, SessionContext};
use tokio_stream::Stream;
use tonic::{Code, Request, Response, Status};

use crate::node::{ErrorReason, NodeEvent, NodeHandle, SessionView};
use crate::session::Phase;

mod convert;
pub mod errors;
mod keys;
mod watch;
pub use convert::{discovered_pb, event_pb, session_pb};
use convert::{phase_pb, u32s};
use errors::{abort_metadata, invalid, node_status, session_not_found, status};

/// Default wait of a one-call `Sign`.
pub const DEFAULT_SIGN_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest wait of `StartRound1`/`StartRound2`, ms.
pub const MAX_ROUND_WAIT_MS: u32 = 300_000;
/// Longest session lifetime and `Sign` wait a call may ask for, ms.
pub const MAX_TIMEOUT_MS: i64 = 24 * 3600 * 1000;
/// Largest page of a list call.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The API service.
#[derive(Debug, Clone)]
pub struct Api {
    node: NodeHandle,
}

impl Api {
    /// Serve a node.
    pub fn new(node: NodeHandle) -> Self {
        Api { node }
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn session_id(s: &str) -> Result<SessionId, Status> {
    if s.len() != 32 {
        return Err(invalid(
            "session_id",
            format!("must be 32 hex characters, got {}", s.len()),
        ));
    }
    SessionId::from_hex(s).map_err(|_| invalid("session_id", "must be 32 hex characters"))
}

/// A client's request id: 1 to 64 printable ASCII characters (None when empty).
fn request_id(s: &str) -> Result<Option<String>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    if s.len() > 64 || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "request_id",
            "1 to 64 printable ASCII characters without spaces",
        ));
    }
    Ok(Some(s.to_string()))
}

/// A page size: 0 = 100, at most [`MAX_PAGE_SIZE`].
pub(crate) fn page_size(n: u32) -> Result<usize, Status> {
    match n {
        0 => Ok(100),
        n if n <= MAX_PAGE_SIZE => Ok(n as usize),
        _ => Err(invalid("page_size", format!("at most {MAX_PAGE_SIZE}"))),
    }
}

fn method(v: i32) -> Result<Option<ElectionMethod>, Status> {
    if v == 0 {
        return Ok(None);
    }
    wire::election_from_pb(v, ElectionMethod::Lexicographic)
        .map(Some)
        .map_err(|_| invalid("election_method", "unknown value"))
}

fn keys(list: &[Vec<u8>], field: &str) -> Result<Vec<[u8; 33]>, Status> {
    if list.is_empty() || list.len() > wire::MAX_SIGNERS {
        return Err(invalid(field, format!("1 to {} keys", wire::MAX_SIGNERS)));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let a: [u8; 33] = k.as_slice().try_into().map_err(|_| {
            invalid(
                &format!("{field}[{i}]"),
                format!("must be 33 bytes, got {}", k.len()),
            )
        })?;
        out.push(a);
    }
    Ok(out)
}

/// Keys in any order → a validated context (sorted); `batch`: a batch session's messages
/// (empty for one message).
fn context(
    signer_keys: &[Vec<u8>],
    message: &[u8],
    format: i32,
    tweaks: &[pb::Tweak],
    batch: &[Vec<u8>],
) -> Result<SessionContext, Status> {
    let mut k = keys(signer_keys, "signer_keys")?;
    k.sort_unstable();
    let raw = pb::SessionContext {
        signer_keys: k.iter().map(|k| k.to_vec()).collect(),
        message: message.to_vec(),
        format,
        tweaks: tweaks.to_vec(),
        batch_messages: batch.to_vec(),
    };
    SessionContext::from_pb_session(&raw).map_err(|e| invalid("context", e.to_string()))
}

/// An optional timeout in ms within `min..=MAX_TIMEOUT_MS`.
fn timeout(v: Option<i64>, field: &str, min: i64) -> Result<Option<Duration>, Status> {
    match v {
        None => Ok(None),
        Some(t) if (min..=MAX_TIMEOUT_MS).contains(&t) => {
            Ok(Some(Duration::from_millis(t.unsigned_abs())))
        }
        Some(_) => Err(invalid(field, format!("{min} ms to {MAX_TIMEOUT_MS} ms"))),
    }
}

fn ended(v: &SessionView) -> Status {
    status(
        Code::FailedPrecondition,
        ErrorReason::SessionEnded,
        format!(
            "session {} is {}{}",
            v.id,
            v.phase.as_str(),
            v.abort
                .as_ref()
                .map(|a| format!(": {}", a.reason))
                .unwrap_or_default()
        ),
        &abort_metadata(v.id, v.abort.as_ref()),
    )
}

impl Api {
    async fn view(&self, id: SessionId) -> Result<SessionView, Status> {
        self.node
            .session(id)
            .await
            .map_err(|e| node_status(e, Some(id)))?
            .ok_or_else(|| session_not_found(id))
    }

    /// A round's result: at once, or after waiting up to `wait_ms` for `ready`. `missing`
    /// says what the round still lacks.
    async fn round(
        &self,
        id: SessionId,
        wait_ms: u32,
        ready: impl Fn(&SessionView) -> bool,
        missing: impl Fn(&SessionView) -> String,
    ) -> Result<SessionView, Status> {
        if wait_ms > MAX_ROUND_WAIT_MS {
            return Err(invalid("wait_ms", format!("at most {MAX_ROUND_WAIT_MS}")));
        }
        let watch = self.node.watch_session(id);
        let deadline = tokio::time::Instant::now() + Duration::from_millis(u64::from(wait_ms));
        loop {
            let mut next = std::pin::pin!(watch.notified());
            next.as_mut().enable();
            let v = self.view(id).await?;
            if ready(&v) {
                return Ok(v);
            }
            if v.phase.is_terminal() {
                return Err(ended(&v));
            }
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                return Err(status(
                    Code::DeadlineExceeded,
                    ErrorReason::RoundNotReady,
                    format!(
                        "session {id}: not ready after {wait_ms} ms: {}",
                        missing(&v)
                    ),
                    &[("session_id", id.to_string())],
                ));
            }
        }
    }

    async fn wait_complete(&self, id: SessionId, timeout: Duration) -> Result<SessionView, Status> {
        let watch = self.node.watch_session(id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut next = std::pin::pin!(watch.notified());
            next.as_mut().enable();
            let v = self.view(id).await?;
            match v.phase {
                Phase::Complete | Phase::Closed if v.signatures.is_some() => return Ok(v),
                Phase::Aborted | Phase::Closed => {
                    let (reason, culprits) = v
                        .abort
                        .as_ref()
                        .map(|a| {
                            (
                                a.reason.clone(),
                                a.culprits.iter().map(hex::encode).collect::<Vec<_>>(),
                            )
                        })
                        .unwrap_or_default();
                    let blame = if culprits.is_empty() {
                        String::new()
                    } else {
                        format!(" (culprits: {})", culprits.join(", "))
                    };
                    return Err(status(
                        Code::Aborted,
                        ErrorReason::SessionAborted,
                        format!("session {id} aborted: {reason}{blame}"),
                        &abort_metadata(id, v.abort.as_ref()),
                    ));
                }
                _ => {}
            }
            if tokio::time::timeout_at(deadline, next).await.is_err() {
                return Err(status(
                    Code::DeadlineExceeded,
                    ErrorReason::SignTimeout,
                    format!("session {id} did not complete in time; it goes on"),
                    &[("session_id", id.to_string())],
                ));
            }
        }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CoordinatorService for Api {
    #[tracing::instrument(skip_all)]
    async fn create_session(
        &self,
        r: Request<pb::CreateSessionRequest>,
    ) -> Result<Response<pb::CreateSessionResponse>, Status> {
        let r = r.into_inner();
        if r.one_round && !r.batch_messages.is_empty() {
            return Err(invalid(
                "batch_messages",
                "a one-round session signs one message: batch_messages is not allowed with one_round",
            ));
        }
        let ctx = context(
            &r.signer_keys,
            &r.message,
            r.format,
            &r.tweaks,
            &r.batch_messages,
        )?;
        let election = method(r.election_method)?;
        let timeout = timeout(r.timeout_ms, "timeout_ms", 1000)?;
        let rid = request_id(&r.request_id)?;
        let v = if r.one_round {
            self.node.create_one_round(ctx, timeout, rid).await?
        } else {
            self.node
                .create_session_for(ctx, election, timeout, rid)
                .await?
        };
        Ok(Response::new(pb::CreateSessionResponse {
            session: Some(session_pb(&v)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn join_session(
        &self,
        r: Request<pb::JoinSessionRequest>,
    ) -> Result<Response<pb::JoinSessionResponse>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self
            .node
            .join_session(id)
            .await
            .map_err(|e| node_status(e, Some(id)))?;
        Ok(Response::new(pb::JoinSessionResponse {
            session: Some(session_pb(&v)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn start_round1(
        &self,
        r: Request<pb::StartRound1Request>,
    ) -> Result<Response<pb::StartRound1Response>, Status> {
        let r = r.into_inner();
        let id = session_id(&r.session_id)?;
        let v = self.view(id).await?;
        if !v.phase.is_terminal() && !v.local_keys.iter().all(|k| v.joined.contains(k)) {
            return Err(status(
                Code::FailedPrecondition,
                ErrorReason::WrongPhase,
                "join the session first (JoinSession)",
                &[("session_id", id.to_string())],
            ));
        }
        // Round 1 starts by itself with the join: the signer's nonces are asked for at once.
        let v = self
            .round(
                id,
                r.wait_ms,
                |v| !v.local_keys.is_empty() && v.local_nonces.len() == v.local_keys.len(),
                |v| {
                    format!(
                        "this party's signer has given {} of {} nonces",
                        v.local_nonces.len(),
                        v.local_keys.len()
                    )
                },
            )
            .await?;
        Ok(Response::new(pb::StartRound1Response {
            public_nonces: v.local_nonces.iter().map(|n| n.to_vec()).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn start_round2(
        &self,
        r: Request<pb::StartRound2Request>,
    ) -> Result<Response<pb::StartRound2Response>, Status> {
        let r = r.into_inner();
        let id = session_id(&r.session_id)?;
        let v = self.view(id).await?;
        if !v.phase.is_terminal() && v.local_nonces.len() != v.local_keys.len() {
            return Err(status(
                Code::FailedPrecondition,
                ErrorReason::WrongPhase,
                format!(
                    "round 1 has not produced this party's nonces yet (nonces in: {} of {}); call StartRound1",
                    v.nonce_keys.len(),
                    v.context.signer_keys.len()
                ),
                &[("session_id", id.to_string())],
            ));
        }
        // Round 2 starts by itself once every nonce is in.
        let v = self
            .round(
                id,
                r.wait_ms,
                |v| !v.local_keys.is_empty() && v.local_psigs.len() == v.local_keys.len(),
                |v| {
                    format!(
                        "{} of {} nonces in",
                        v.nonce_keys.len(),
                        v.context.signer_keys.len()
                    )
                },
            )
            .await?;
        Ok(Response::new(pb::StartRound2Response {
            partial_signatures: v.local_psigs.iter().map(|p| p.to_vec()).collect(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn sign(
        &self,
        r: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let r = r.into_inner();
        let wait = timeout(r.timeout_ms, "timeout_ms", 1)?.unwrap_or(DEFAULT_SIGN_TIMEOUT);
        let id = if r.session_id.is_empty() {
            let ctx = context(
                &r.signer_keys,
                &r.message,
                r.format,
                &r.tweaks,
                &r.batch_messages,
            )?;
            let election = method(r.election_method)?;
            let rid = request_id(&r.request_id)?;
            self.node
                .create_session_for(ctx, election, None, rid)
                .await?
                .id
        } else {
            let id = session_id(&r.session_id)?;
            if !r.signer_keys.is_empty()
                || !r.message.is_empty()
                || !r.batch_messages.is_empty()
                || r.format != 0
                || !r.tweaks.is_empty()
                || r.election_method != 0
                || !r.request_id.is_empty()
            {
                return Err(invalid(
                    "session_id",
                    "with session_id, the session fields and request_id must be empty",
                ));
            }
            match self.view(id).await {
                Ok(v) if v.phase.is_terminal() => {}
                _ => {
                    self.node
                        .join_session(id)
                        .await
                        .map_err(|e| node_status(e, Some(id)))?;
                }
            }
            id
        };
        let v = self.wait_complete(id, wait).await?;
        let signatures: Vec<Vec<u8>> = v
            .signatures
            .iter()
            .flatten()
            .map(|s| s.0.to_vec())
            .collect();
        let signature = match signatures.as_slice() {
            [one] => one.clone(),
            _ => Vec::new(),
        };
        Ok(Response::new(pb::SignResponse {
            session: Some(session_pb(&v)),
            signature,
            signatures,
        }))
    }

    async fn get_session(
        &self,
        r: Request<pb::GetSessionRequest>,
    ) -> Result<Response<pb::GetSessionResponse>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        Ok(Response::new(pb::GetSessionResponse {
            session: Some(session_pb(&v)),
        }))
    }

    async fn list_sessions(
        &self,
        r: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let r = r.into_inner();
        let phase = match pb::SessionPhase::try_from(r.phase) {
            Ok(pb::SessionPhase::Unspecified) => None,
            Ok(p) => Some(convert::phase_of(p)),
            Err(_) => return Err(invalid("phase", "unknown value")),
        };
        let size = page_size(r.page_size)?;
        let before = if r.page_token.is_empty() {
            None
        } else {
            let mut k = [0u8; 24];
            hex::decode_to_slice(&r.page_token, &mut k)
                .map_err(|_| invalid("page_token", "not a token of this API"))?;
            Some(k)
        };
        let (views, next) = self.node.session_page(phase, before, size).await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: views.iter().map(session_pb).collect(),
            next_page_token: next.map(hex::encode).unwrap_or_default(),
        }))
    }

    async fn get_final_signature(
        &self,
        r: Request<pb::GetFinalSignatureRequest>,
    ) -> Result<Response<pb::GetFinalSignatureResponse>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        let sigs = v.signatures.as_ref().ok_or_else(|| {
            status(
                Code::FailedPrecondition,
                ErrorReason::NotComplete,
                format!("session {id} is {}, not complete", v.phase.as_str()),
                &abort_metadata(id, v.abort.as_ref()),
            )
        })?;
        let batch = !v.context.batch.is_empty();
        Ok(Response::new(pb::GetFinalSignatureResponse {
            signature: match sigs.as_slice() {
                [one] if !batch => one.0.to_vec(),
                _ => Vec::new(),
            },
            output_key: v.output_key.to_vec(),
            message: v.context.message.clone(),
            format: wire::format_to_pb(v.context.format) as i32,
            batch_signatures: if batch {
                sigs.iter().map(|s| s.0.to_vec()).collect()
            } else {
                Vec::new()
            },
            batch_messages: v.context.batch.clone(),
        }))
    }

    async fn close_session(
        &self,
        r: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let r = r.into_inner();
        let id = session_id(&r.session_id)?;
        if r.reason.len() > wire::MAX_REASON_BYTES {
            return Err(invalid(
                "reason",
                format!("exceeds {} bytes", wire::MAX_REASON_BYTES),
            ));
        }
        let reason = if r.reason.is_empty() {
            "closed by the application"
        } else {
            r.reason.as_str()
        };
        let phase = self
            .node
            .close_session(id, reason)
            .await
            .map_err(|e| node_status(e, Some(id)))?;
        Ok(Response::new(pb::CloseSessionResponse {
            phase: phase_pb(phase) as i32,
        }))
    }

    async fn is_coordinator(
        &self,
        r: Request<pb::IsCoordinatorRequest>,
    ) -> Result<Response<pb::IsCoordinatorResponse>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        let attempt = v.failover.attempt;
        let responsible = if v.failover.exhausted {
            None
        } else {
            v.election.responsible_after(attempt)
        };
        let is = responsible
            .and_then(|i| v.context.signer_keys.get(i))
            .is_some_and(|k| v.local_keys.contains(k));
        Ok(Response::new(pb::IsCoordinatorResponse {
            is_coordinator: is,
            responsible_index: responsible.map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
            attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
        }))
    }

    async fn notify_broadcast_complete(
        &self,
        r: Request<pb::NotifyBroadcastCompleteRequest>,
    ) -> Result<Response<pb::NotifyBroadcastCompleteResponse>, Status> {
        let r = r.into_inner();
        let id = session_id(&r.session_id)?;
        self.node
            .notify_broadcast_complete(id, &r.broadcast_reference)
            .await
            .map_err(|e| node_status(e, Some(id)))?;
        Ok(Response::new(pb::NotifyBroadcastCompleteResponse {}))
    }

    async fn elect_coordinator(
        &self,
        r: Request<pb::ElectCoordinatorRequest>,
    ) -> Result<Response<pb::ElectCoordinatorResponse>, Status> {
        let r = r.into_inner();
        let mut k = keys(&r.signer_keys, "signer_keys")?;
        k.sort_unstable();
        let e = elect(
            method(r.method)?.unwrap_or(ElectionMethod::Lexicographic),
            &k,
        )
        .map_err(|e| invalid("signer_keys", e.to_string()))?;
        Ok(Response::new(pb::ElectCoordinatorResponse {
            coordinator_index: u32::try_from(e.coordinator_index).unwrap_or(u32::MAX),
            coordinator_key: k
                .get(e.coordinator_index)
                .map(|k| k.to_vec())
                .unwrap_or_default(),
            priority_list: u32s(&e.priority_list),
            election_proof: e.proof_hex(),
            sorted_keys: k.iter().map(|k| k.to_vec()).collect(),
        }))
    }

    async fn get_priority_list(
        &self,
        r: Request<pb::GetPriorityListRequest>,
    ) -> Result<Response<pb::GetPriorityListResponse>, Status> {
        let r = r.into_inner();
        let k = keys(&r.signer_keys, "signer_keys")?;
        let e = elect(
            method(r.method)?.unwrap_or(ElectionMethod::Lexicographic),
            &k,
        )
        .map_err(|e| invalid("signer_keys", e.to_string()))?;
        Ok(Response::new(pb::GetPriorityListResponse {
            priority_list: u32s(&e.priority_list),
        }))
    }

    async fn get_backup_coordinator(
        &self,
        r: Request<pb::GetBackupCoordinatorRequest>,
    ) -> Result<Response<pb::GetBackupCoordinatorResponse>, Status> {
        let r = r.into_inner();
        let k = keys(&r.signer_keys, "signer_keys")?;
        if r.current_index as usize >= k.len() {
            return Err(invalid(
                "current_index",
                format!("{} is outside the {} keys", r.current_index, k.len()),
            ));
        }
        let e = elect(
            method(r.method)?.unwrap_or(ElectionMethod::Lexicographic),
            &k,
        )
        .map_err(|e| invalid("signer_keys", e.to_string()))?;
        let b = e.backup_of(r.current_index as usize);
        Ok(Response::new(pb::GetBackupCoordinatorResponse {
            backup_index: b.map(|i| u32::try_from(i).unwrap_or(u32::MAX)),
        }))
    }

    async fn connect_peer(
        &self,
        r: Request<pb::ConnectPeerRequest>,
    ) -> Result<Response<pb::ConnectPeerResponse>, Status> {
        let addr: libp2p::Multiaddr = r
            .into_inner()
            .multiaddr
            .parse()
            .map_err(|e| invalid("multiaddr", format!("{e}")))?;
        let peer = self.node.connect(addr).await?;
        Ok(Response::new(pb::ConnectPeerResponse {
            peer_id: peer.to_string(),
        }))
    }

    async fn get_node_info(
        &self,
        _r: Request<pb::GetNodeInfoRequest>,
    ) -> Result<Response<pb::GetNodeInfoResponse>, Status> {
        let i = self.node.info().await?;
        Ok(Response::new(pb::GetNodeInfoResponse {
            peer_id: i.peer_id.to_string(),
            listen_addresses: i.listen_addresses.iter().map(ToString::to_string).collect(),
            signer_keys: i.keys.iter().map(|k| k.to_vec()).collect(),
            connected_peers: u32::try_from(i.connected_peers).unwrap_or(u32::MAX),
            version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn advertise_signer(
        &self,
        r: Request<pb::AdvertiseSignerRequest>,
    ) -> Result<Response<pb::AdvertiseSignerResponse>, Status> {
        let r = r.into_inner();
        let keys = keys(&r.signer_keys, "signer_keys")?;
        if r.transaction_types.is_empty() {
            return Err(invalid("transaction_types", "at least one"));
        }
        let mut types = Vec::new();
        for t in &r.transaction_types {
            match pb::TransactionType::try_from(*t) {
                Ok(pb::TransactionType::Unspecified) | Err(_) => {
                    return Err(invalid("transaction_types", "unknown or unspecified value"));
                }
                Ok(t) if !types.contains(&t) => types.push(t),
                Ok(_) => return Err(invalid("transaction_types", "duplicate")),
            }
        }
        if r.max_amount.is_some_and(|m| m < r.min_amount) {
            return Err(invalid("max_amount", "is below min_amount"));
        }
        if r.max_amount == Some(0) {
            return Err(invalid(
                "max_amount",
                "must be positive (absent = no maximum)",
            ));
        }
        let ttl = match r.ttl_ms {
            None => 3_600_000,
            Some(t) if (1..=wire::MAX_ADVERTISEMENT_TTL_MS).contains(&t) => t,
            Some(_) => return Err(invalid("ttl_ms", "1 ms to 24 h")),
        };
        if r.description.len() > wire::MAX_DESCRIPTION_BYTES {
            return Err(invalid(
                "description",
                format!("exceeds {} bytes", wire::MAX_DESCRIPTION_BYTES),
            ));
        }
        let body = wire::Advertisement {
            transaction_types: types,
            min_amount: r.min_amount,
            max_amount: r.max_amount.unwrap_or(0),
            expires_at_ms: now_ms().saturating_add(ttl),
            description: r.description,
        };
        let expires_at_ms = self.node.advertise(keys, body).await?;
        Ok(Response::new(pb::AdvertiseSignerResponse { expires_at_ms }))
    }

    async fn withdraw_advertisement(
        &self,
        _r: Request<pb::WithdrawAdvertisementRequest>,
    ) -> Result<Response<pb::WithdrawAdvertisementResponse>, Status> {
        self.node.withdraw().await?;
        Ok(Response::new(pb::WithdrawAdvertisementResponse {}))
    }

    async fn discover_signers(
        &self,
        r: Request<pb::DiscoverSignersRequest>,
    ) -> Result<Response<pb::DiscoverSignersResponse>, Status> {
        let r = r.into_inner();
        let wanted = match pb::TransactionType::try_from(r.transaction_type) {
            Ok(pb::TransactionType::Unspecified) => None,
            Ok(t) => Some(t),
            Err(_) => return Err(invalid("transaction_type", "unknown value")),
        };
        let size = page_size(r.page_size)?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            let mut k = [0u8; 33];
            hex::decode_to_slice(&r.page_token, &mut k)
                .map_err(|_| invalid("page_token", "not a token of this API"))?;
            Some(k)
        };
        let mut found = self.node.discovered().await?;
        found.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        let mut matching = found
            .iter()
            .filter(|(k, _, _)| after.is_none_or(|a| *k > a))
            .filter(|(_, _, a)| wanted.is_none_or(|t| a.transaction_types.contains(&t)))
            .filter(|(_, _, a)| {
                r.amount.is_none_or(|amount| {
                    amount >= a.min_amount && (a.max_amount == 0 || amount <= a.max_amount)
                })
            })
            .peekable();
        let mut signers = Vec::new();
        let mut last = None;
        while signers.len() < size {
            let Some((k, p, a)) = matching.next() else {
                break;
            };
            last = Some(*k);
            signers.push(discovered_pb(k, p, a));
        }
        let more = matching.peek().is_some();
        Ok(Response::new(pb::DiscoverSignersResponse {
            signers,
            next_page_token: last.filter(|_| more).map(hex::encode).unwrap_or_default(),
        }))
    }

    async fn send_signing_request(
        &self,
        r: Request<pb::SendSigningRequestRequest>,
    ) -> Result<Response<pb::SendSigningRequestResponse>, Status> {
        let r = r.into_inner();
        let ctx = context(&r.signer_keys, &r.message, r.format, &r.tweaks, &[])?;
        let t = match pb::TransactionType::try_from(r.transaction_type) {
            Ok(pb::TransactionType::Unspecified) | Err(_) => {
                return Err(invalid("transaction_type", "unknown or unspecified value"));
            }
            Ok(t) => t,
        };
        let rid = request_id(&r.request_id)?;
        let id = self
            .node
            .send_signing_request(ctx, t, r.amount, rid)
            .await?;
        Ok(Response::new(pb::SendSigningRequestResponse {
            signing_request_id: hex::encode(id),
        }))
    }

    async fn respond_signing_request(
        &self,
        r: Request<pb::RespondSigningRequestRequest>,
    ) -> Result<Response<pb::RespondSigningRequestResponse>, Status> {
        let r = r.into_inner();
        let mut id = [0u8; 16];
        hex::decode_to_slice(&r.signing_request_id, &mut id)
            .map_err(|_| invalid("signing_request_id", "must be 32 hex characters"))?;
        self.node.respond_signing_request(id, r.accept).await?;
        Ok(Response::new(pb::RespondSigningRequestResponse {}))
    }

    async fn list_signing_requests(
        &self,
        _r: Request<pb::ListSigningRequestsRequest>,
    ) -> Result<Response<pb::ListSigningRequestsResponse>, Status> {
        let requests = self
            .node
            .signing_requests()
            .await?
            .iter()
            .map(convert::open_request_pb)
            .collect();
        Ok(Response::new(pb::ListSigningRequestsResponse { requests }))
    }

    async fn set_nonce_pool(
        &self,
        r: Request<pb::SetNoncePoolRequest>,
    ) -> Result<Response<pb::SetNoncePoolResponse>, Status> {
        let r = r.into_inner();
        let mut k = keys(&r.signer_keys, "signer_keys")?;
        k.sort_unstable();
        let ctx = SessionContext::from_pb_pool(&pb::SessionContext {
            signer_keys: k.iter().map(|k| k.to_vec()).collect(),
            message: Vec::new(),
            format: r.format,
            tweaks: r.tweaks,
            batch_messages: Vec::new(),
        })
        .map_err(|e| invalid("context", e.to_string()))?;
        let size = usize::try_from(r.size).unwrap_or(usize::MAX);
        let st = self.node.set_nonce_pool(ctx, size).await?;
        let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
        Ok(Response::new(pb::SetNoncePoolResponse {
            size: n(st.size),
            ready: n(st.ready),
            filling: n(st.filling),
        }))
    }

    async fn combine_keys(
        &self,
        r: Request<pb::CombineKeysRequest>,
    ) -> Result<Response<pb::CombineKeysResponse>, Status> {
        keys::combine(&r.into_inner()).map(Response::new)
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        r: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let r = r.into_inner();
        let filter = if r.session_id.is_empty() {
            None
        } else {
            Some(session_id(&r.session_id)?)
        };
        Ok(Response::new(watch::stream(
            self.node.clone(),
            filter,
            r.replay_completed,
            r.start_after_sequence,
        )))
    }
}
