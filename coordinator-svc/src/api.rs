//! The `CoordinatorService` gRPC API (DESIGN §5): every operation of the reference
//! coordinator, a one-call `Sign`, and `WatchEvents`. Inputs are validated here, before any
//! command reaches the node, so a malformed call changes nothing.

use std::pin::Pin;
use std::time::Duration;

use musig2_proto::v1::coordinator_service_server::CoordinatorService;
use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use shared::election::{ElectionMethod, SessionId, elect};
use shared::wire::{self, SessionContext};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::node::{NodeError, NodeEvent, NodeHandle, SessionView};
use crate::session::Phase;

mod convert;
pub use convert::{discovered_pb, event_pb, session_pb};
use convert::{event_session, phase_pb, u32s};

/// Default wait of a one-call `Sign`.
pub const DEFAULT_SIGN_TIMEOUT: Duration = Duration::from_secs(300);

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

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::InvalidArgument(m) => Status::invalid_argument(m),
            NodeError::NotFound(m) => Status::not_found(m),
            NodeError::FailedPrecondition(m) => Status::failed_precondition(m),
            NodeError::Unavailable(m) => Status::unavailable(m),
            NodeError::ResourceExhausted(m) => Status::resource_exhausted(m),
            NodeError::Stopped => Status::unavailable("the node is stopping"),
        }
    }
}

fn session_id(s: &str) -> Result<SessionId, Status> {
    if s.len() != 32 {
        return Err(Status::invalid_argument(format!(
            "session_id must be 32 hex characters, got {}",
            s.len()
        )));
    }
    SessionId::from_hex(s)
        .map_err(|_| Status::invalid_argument("session_id must be 32 hex characters"))
}

fn method(v: i32) -> Result<Option<ElectionMethod>, Status> {
    if v == 0 {
        return Ok(None);
    }
    wire::election_from_pb(v, ElectionMethod::Lexicographic)
        .map(Some)
        .map_err(|_| Status::invalid_argument("election_method: unknown value"))
}

fn keys(list: &[Vec<u8>], field: &str) -> Result<Vec<[u8; 33]>, Status> {
    if list.is_empty() || list.len() > wire::MAX_SIGNERS {
        return Err(Status::invalid_argument(format!(
            "{field}: 1 to {} keys",
            wire::MAX_SIGNERS
        )));
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, k) in list.iter().enumerate() {
        let a: [u8; 33] = k.as_slice().try_into().map_err(|_| {
            Status::invalid_argument(format!("{field}[{i}] must be 33 bytes, got {}", k.len()))
        })?;
        out.push(a);
    }
    Ok(out)
}

/// Keys in any order → a validated context (sorted).
fn context(
    signer_keys: &[Vec<u8>],
    message: &[u8],
    format: i32,
    tweaks: &[pb::Tweak],
) -> Result<SessionContext, Status> {
    let mut k = keys(signer_keys, "signer_keys")?;
    k.sort_unstable();
    let raw = pb::SessionContext {
        signer_keys: k.iter().map(|k| k.to_vec()).collect(),
        message: message.to_vec(),
        format,
        tweaks: tweaks.to_vec(),
    };
    SessionContext::from_pb(&raw).map_err(|e| Status::invalid_argument(e.to_string()))
}

impl Api {
    async fn view(&self, id: SessionId) -> Result<SessionView, Status> {
        self.node
            .session(id)
            .await?
            .ok_or_else(|| Status::not_found(format!("session {id} is unknown")))
    }

    /// Wait (bounded) until `done` holds for the session, or it ends.
    async fn wait_view(
        &self,
        id: SessionId,
        mut done: impl FnMut(&SessionView) -> bool,
    ) -> Result<SessionView, Status> {
        let mut rx = self.node.events();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let v = self.view(id).await?;
            if done(&v) {
                return Ok(v);
            }
            if v.phase.is_terminal() {
                return Err(Status::failed_precondition(format!(
                    "session {id} is {}{}",
                    v.phase.as_str(),
                    v.abort
                        .map(|a| format!(": {}", a.reason))
                        .unwrap_or_default()
                )));
            }
            if next_event_of(&mut rx, id, deadline).await.is_err() {
                return Err(Status::deadline_exceeded(
                    "the local signer did not answer in 30 s",
                ));
            }
        }
    }

    async fn wait_complete(
        &self,
        id: SessionId,
        rx: &mut broadcast::Receiver<NodeEvent>,
        timeout: Duration,
    ) -> Result<SessionView, Status> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.view(id).await?;
            match v.phase {
                Phase::Complete | Phase::Closed => return Ok(v),
                Phase::Aborted => {
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
                    return Err(Status::aborted(format!(
                        "session {id} aborted: {reason}{blame}"
                    )));
                }
                _ => {}
            }
            if next_event_of(rx, id, deadline).await.is_err() {
                return Err(Status::deadline_exceeded(format!(
                    "session {id} did not complete in time; it goes on"
                )));
            }
        }
    }
}

/// Wait for the next event about session `id` (or a lag, which may have hidden one): a waiting
/// call looks at its session again only when something happened to it, not on every event of
/// every session. `Err` at the deadline.
async fn next_event_of(
    rx: &mut broadcast::Receiver<NodeEvent>,
    id: SessionId,
    deadline: tokio::time::Instant,
) -> Result<(), tokio::time::error::Elapsed> {
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await? {
            Ok(ev) if ev.session_id() != Some(id) => {}
            _ => return Ok(()),
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
        let ctx = context(&r.signer_keys, &r.message, r.format, &r.tweaks)?;
        let election = method(r.election_method)?;
        if r.timeout_ms < 0 {
            return Err(Status::invalid_argument("timeout_ms must not be negative"));
        }
        let timeout =
            (r.timeout_ms > 0).then(|| Duration::from_millis(r.timeout_ms.unsigned_abs()));
        let v = self.node.create_session(ctx, election, timeout).await?;
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
        let v = self.node.join_session(id).await?;
        Ok(Response::new(pb::JoinSessionResponse {
            session: Some(session_pb(&v)),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn start_round1(
        &self,
        r: Request<pb::StartRound1Request>,
    ) -> Result<Response<pb::StartRound1Response>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        if !v.local_keys.iter().all(|k| v.joined.contains(k)) {
            return Err(Status::failed_precondition(
                "join the session first (JoinSession)",
            ));
        }
        // Round 1 starts by itself once every signer joined; wait (bounded) for our nonces.
        let v = self
            .wait_view(id, |v| v.local_nonces.len() == v.local_keys.len())
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
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        if v.local_nonces.len() != v.local_keys.len() {
            return Err(Status::failed_precondition(format!(
                "round 1 has not produced this party's nonce yet (nonces in: {} of {}); call StartRound1",
                v.nonce_keys.len(),
                v.context.signer_keys.len()
            )));
        }
        // Round 2 starts by itself once every nonce is in; wait (bounded) for our signatures.
        let v = self
            .wait_view(id, |v| v.local_psigs.len() == v.local_keys.len())
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
        if r.timeout_ms < 0 {
            return Err(Status::invalid_argument("timeout_ms must not be negative"));
        }
        let timeout = if r.timeout_ms > 0 {
            Duration::from_millis(r.timeout_ms.unsigned_abs())
        } else {
            DEFAULT_SIGN_TIMEOUT
        };
        let mut rx = self.node.events();
        let id = if r.session_id.is_empty() {
            let ctx = context(&r.signer_keys, &r.message, r.format, &r.tweaks)?;
            let election = method(r.election_method)?;
            self.node.create_session(ctx, election, None).await?.id
        } else {
            let id = session_id(&r.session_id)?;
            if !r.signer_keys.is_empty()
                || !r.message.is_empty()
                || r.format != 0
                || !r.tweaks.is_empty()
                || r.election_method != 0
            {
                return Err(Status::invalid_argument(
                    "with session_id, the session fields must be empty",
                ));
            }
            match self.node.session(id).await? {
                Some(v) if v.phase.is_terminal() => {}
                _ => {
                    self.node.join_session(id).await?;
                }
            }
            id
        };
        let v = self.wait_complete(id, &mut rx, timeout).await?;
        let signature = v.signature.map(|s| s.0.to_vec()).unwrap_or_default();
        Ok(Response::new(pb::SignResponse {
            session: Some(session_pb(&v)),
            signature,
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
        let phase = pb::SessionPhase::try_from(r.phase)
            .map_err(|_| Status::invalid_argument("phase: unknown value"))?;
        if r.limit > 1000 {
            return Err(Status::invalid_argument("limit must be at most 1000"));
        }
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let sessions = self
            .node
            .sessions()
            .await?
            .iter()
            .filter(|v| phase == pb::SessionPhase::Unspecified || phase_pb(v.phase) == phase)
            .take(limit)
            .map(session_pb)
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn get_final_signature(
        &self,
        r: Request<pb::GetFinalSignatureRequest>,
    ) -> Result<Response<pb::GetFinalSignatureResponse>, Status> {
        let id = session_id(&r.into_inner().session_id)?;
        let v = self.view(id).await?;
        let sig = v.signature.ok_or_else(|| {
            Status::failed_precondition(format!(
                "session {id} is {}, not complete",
                v.phase.as_str()
            ))
        })?;
        Ok(Response::new(pb::GetFinalSignatureResponse {
            signature: sig.0.to_vec(),
            output_key: v.output_key.to_vec(),
            message: v.context.message.clone(),
            format: wire::format_to_pb(v.context.format) as i32,
        }))
    }

    async fn close_session(
        &self,
        r: Request<pb::CloseSessionRequest>,
    ) -> Result<Response<pb::CloseSessionResponse>, Status> {
        let r = r.into_inner();
        let id = session_id(&r.session_id)?;
        if r.reason.len() > wire::MAX_REASON_BYTES {
            return Err(Status::invalid_argument(format!(
                "reason exceeds {} bytes",
                wire::MAX_REASON_BYTES
            )));
        }
        let reason = if r.reason.is_empty() {
            "closed by the application"
        } else {
            r.reason.as_str()
        };
        let phase = self.node.close_session(id, reason).await?;
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
        let responsible = v.election.responsible_after(attempt);
        let is = responsible
            .and_then(|i| v.context.signer_keys.get(i))
            .is_some_and(|k| v.local_keys.contains(k));
        Ok(Response::new(pb::IsCoordinatorResponse {
            is_coordinator: is && !v.failover.exhausted,
            responsible_index: responsible
                .map_or(u32::MAX, |i| u32::try_from(i).unwrap_or(u32::MAX)),
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
            .await?;
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
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
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
            return Err(Status::invalid_argument(format!(
                "current_index {} is outside the {} keys",
                r.current_index,
                k.len()
            )));
        }
        let e = elect(
            method(r.method)?.unwrap_or(ElectionMethod::Lexicographic),
            &k,
        )
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let b = e.backup_of(r.current_index as usize);
        Ok(Response::new(pb::GetBackupCoordinatorResponse {
            has_backup: b.is_some(),
            backup_index: b.map_or(0, |i| u32::try_from(i).unwrap_or(u32::MAX)),
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
            .map_err(|e| Status::invalid_argument(format!("multiaddr: {e}")))?;
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
            return Err(Status::invalid_argument("transaction_types: at least one"));
        }
        let mut types = Vec::new();
        for t in &r.transaction_types {
            match pb::TransactionType::try_from(*t) {
                Ok(pb::TransactionType::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(
                        "transaction_types: unknown or unspecified value",
                    ));
                }
                Ok(t) if !types.contains(&t) => types.push(t),
                Ok(_) => return Err(Status::invalid_argument("transaction_types: duplicate")),
            }
        }
        if r.max_amount != 0 && r.max_amount < r.min_amount {
            return Err(Status::invalid_argument("max_amount is below min_amount"));
        }
        if r.ttl_ms < 0 || r.ttl_ms > wire::MAX_ADVERTISEMENT_TTL_MS {
            return Err(Status::invalid_argument("ttl_ms: 0 (1 h) to 24 h"));
        }
        if r.description.len() > wire::MAX_DESCRIPTION_BYTES {
            return Err(Status::invalid_argument(format!(
                "description exceeds {} bytes",
                wire::MAX_DESCRIPTION_BYTES
            )));
        }
        let ttl = if r.ttl_ms == 0 { 3_600_000 } else { r.ttl_ms };
        let body = wire::Advertisement {
            transaction_types: types,
            min_amount: r.min_amount,
            max_amount: r.max_amount,
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
            Err(_) => return Err(Status::invalid_argument("transaction_type: unknown value")),
        };
        let limit = if r.limit == 0 { 100 } else { r.limit as usize };
        let signers = self
            .node
            .discovered()
            .await?
            .iter()
            .filter(|(_, _, a)| wanted.is_none_or(|t| a.transaction_types.contains(&t)))
            .filter(|(_, _, a)| {
                r.amount == 0
                    || (r.amount >= a.min_amount && (a.max_amount == 0 || r.amount <= a.max_amount))
            })
            .take(limit)
            .map(|(k, p, a)| discovered_pb(k, p, a))
            .collect();
        Ok(Response::new(pb::DiscoverSignersResponse { signers }))
    }
    async fn send_signing_request(
        &self,
        r: Request<pb::SendSigningRequestRequest>,
    ) -> Result<Response<pb::SendSigningRequestResponse>, Status> {
        let r = r.into_inner();
        let ctx = context(&r.signer_keys, &r.message, r.format, &r.tweaks)?;
        let t = match pb::TransactionType::try_from(r.transaction_type) {
            Ok(pb::TransactionType::Unspecified) | Err(_) => {
                return Err(Status::invalid_argument(
                    "transaction_type: unknown or unspecified value",
                ));
            }
            Ok(t) => t,
        };
        let id = self.node.send_signing_request(ctx, t, r.amount).await?;
        Ok(Response::new(pb::SendSigningRequestResponse {
            request_id: hex::encode(id),
        }))
    }
    async fn respond_signing_request(
        &self,
        r: Request<pb::RespondSigningRequestRequest>,
    ) -> Result<Response<pb::RespondSigningRequestResponse>, Status> {
        let r = r.into_inner();
        let mut id = [0u8; 16];
        hex::decode_to_slice(&r.request_id, &mut id)
            .map_err(|_| Status::invalid_argument("request_id must be 32 hex characters"))?;
        self.node.respond_signing_request(id, r.accept).await?;
        Ok(Response::new(pb::RespondSigningRequestResponse {}))
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
            Some(session_id(&r.session_id)?.to_string())
        };
        let mut rx = self.node.events();
        let (tx, out) = tokio::sync::mpsc::channel::<Result<pb::WatchEventsResponse, Status>>(256);
        if r.replay_completed {
            for v in self.node.sessions().await? {
                if let (Some(sig), true) = (
                    v.signature,
                    filter.as_deref().is_none_or(|f| f == v.id.to_string()),
                ) {
                    let ev = Ev::SessionComplete(pb::SessionComplete {
                        session_id: v.id.to_string(),
                        signature: sig.0.to_vec(),
                        output_key: v.output_key.to_vec(),
                    });
                    let _ = tx
                        .send(Ok(pb::WatchEventsResponse {
                            timestamp_ms: now_ms(),
                            event: Some(ev),
                        }))
                        .await;
                }
            }
        }
        let node = self.node.clone();
        tokio::spawn(async move {
            loop {
                let ev = match rx.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let lag = Ev::EventLagged(pb::EventLagged { dropped: n });
                        if tx
                            .send(Ok(pb::WatchEventsResponse {
                                timestamp_ms: now_ms(),
                                event: Some(lag),
                            }))
                            .await
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                let Some(mut pbe) = event_pb(&ev) else {
                    continue;
                };
                if let Some(f) = &filter
                    && event_session(&pbe) != Some(f.as_str())
                {
                    continue;
                }
                if let (Ev::SessionComplete(c), NodeEvent::Complete { id, .. }) = (&mut pbe, &ev)
                    && let Ok(Some(v)) = node.session(*id).await
                {
                    c.output_key = v.output_key.to_vec();
                }
                if tx
                    .send(Ok(pb::WatchEventsResponse {
                        timestamp_ms: now_ms(),
                        event: Some(pbe),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }
}
