//! Matchmaking: signing requests to the holders of the other keys, their answers, and the
//! session created (and joined) once everyone accepted.

use shared::security::Reason;
use std::collections::{BTreeMap, BTreeSet};

use libp2p_identity::PeerId;
use rand::RngCore as _;
use shared::wire::{self, Body, Message, SessionContext, pb};

use super::{Core, Effect, ErrorReason, NodeError, NodeEvent};
use crate::envelope::Refusal;

/// Minimum time between two signing requests of one peer, ms.
pub const SIGNING_REQUEST_INTERVAL_MS: i64 = 30_000;
/// Lifetime of a signing request, ms.
pub const SIGNING_REQUEST_TTL_MS: i64 = 5 * 60_000;
/// Most open requests, each way.
pub const MAX_REQUESTS: usize = 1000;

/// One of our signing requests: context, keys that accepted, expiry (ms).
type OutRequest = (SessionContext, BTreeSet<[u8; 33]>, i64);

/// Open requests both ways.
#[derive(Debug, Default)]
pub struct Matchmaking {
    out_requests: BTreeMap<[u8; 16], OutRequest>,
    /// Requests from others: requester peer, context, expiry.
    in_requests: BTreeMap<[u8; 16], (PeerId, SessionContext, i64)>,
    /// Accepted requests: join the matching session when it is announced.
    auto_join: Vec<(SessionContext, i64)>,
    /// Last signing request per peer (rate limit), ms.
    request_times: BTreeMap<PeerId, i64>,
    /// Our requests by the client's request id (retries return the same request): signing
    /// request id, context, expiry.
    client_ids: BTreeMap<String, ([u8; 16], SessionContext, i64)>,
}

/// An open signing request, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenRequest {
    /// Its id.
    pub id: [u8; 16],
    /// Requesting peer (None: ours).
    pub from: Option<PeerId>,
    /// The proposed context.
    pub context: SessionContext,
    /// Expiry, ms.
    pub expires_at_ms: i64,
    /// Keys that accepted so far (ours).
    pub accepted: Vec<[u8; 33]>,
}

impl Matchmaking {
    /// Requests received and sent, and per-peer rate-limit entries.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            self.in_requests.len(),
            self.out_requests.len(),
            self.request_times.len(),
        )
    }

    /// Drop expired requests and rate-limit entries.
    pub fn cleanup(&mut self, now: i64) {
        self.in_requests.retain(|_, (_, _, e)| *e > now);
        self.out_requests.retain(|_, (_, _, e)| *e > now);
        self.auto_join.retain(|(_, e)| *e > now);
        self.client_ids.retain(|_, (_, _, e)| *e > now);
        self.request_times
            .retain(|_, t| now - *t < SIGNING_REQUEST_INTERVAL_MS);
    }

    /// Open requests: received ones (by id), then ours (by id).
    pub fn open(&self, now: i64) -> Vec<OpenRequest> {
        let received = self
            .in_requests
            .iter()
            .filter(|(_, (_, _, e))| *e > now)
            .map(|(id, (peer, context, e))| OpenRequest {
                id: *id,
                from: Some(*peer),
                context: context.clone(),
                expires_at_ms: *e,
                accepted: Vec::new(),
            });
        let sent = self
            .out_requests
            .iter()
            .filter(|(_, (_, _, e))| *e > now)
            .map(|(id, (context, accepted, e))| OpenRequest {
                id: *id,
                from: None,
                context: context.clone(),
                expires_at_ms: *e,
                accepted: accepted.iter().copied().collect(),
            });
        received.chain(sent).collect()
    }

    /// Whether a session with this context was accepted through a request (consumed).
    pub fn take_auto_join(&mut self, now: i64, context: &SessionContext) -> bool {
        self.auto_join.retain(|(_, exp)| *exp > now);
        match self.auto_join.iter().position(|(c, _)| c == context) {
            Some(pos) => {
                self.auto_join.remove(pos);
                true
            }
            None => false,
        }
    }
}

impl Core {
    /// Ask the (connected, attested) holders of the other keys of `context` to sign. Returns
    /// the request id.
    ///
    /// # Errors
    /// [`NodeError`].
    pub fn send_signing_request(
        &mut self,
        now: i64,
        context: SessionContext,
        transaction_type: pb::TransactionType,
        amount: u64,
        fx: &mut Vec<Effect>,
    ) -> Result<[u8; 16], NodeError> {
        self.send_signing_request_for(now, context, transaction_type, amount, None, fx)
    }

    /// [`Core::send_signing_request`] for a client's request: a request id seen before (in the
    /// last [`SIGNING_REQUEST_TTL_MS`]) returns the signing request it sent.
    ///
    /// # Errors
    /// [`NodeError`]; [`ErrorReason::RequestIdReused`] for the same request id with another
    /// context.
    pub fn send_signing_request_for(
        &mut self,
        now: i64,
        context: SessionContext,
        transaction_type: pb::TransactionType,
        amount: u64,
        client_id: Option<String>,
        fx: &mut Vec<Effect>,
    ) -> Result<[u8; 16], NodeError> {
        let context = SessionContext::from_pb(&context.to_pb())
            .map_err(|e| NodeError::InvalidArgument(ErrorReason::InvalidField, e.to_string()))?;
        if let Some(cid) = &client_id
            && let Some((id, c, e)) = self.matchmaking.client_ids.get(cid)
            && *e > now
        {
            if *c == context {
                return Ok(*id);
            }
            return Err(NodeError::InvalidArgument(
                ErrorReason::RequestIdReused,
                format!(
                    "request_id {cid:?} sent signing request {} with another context",
                    hex::encode(id)
                ),
            ));
        }
        let Some(&from) = context.signer_keys.iter().find(|k| self.keys.contains(k)) else {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
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
                .guard
                .peer_keys
                .iter()
                .find(|(p, keys)| keys.contains(k) && self.connected.contains(p))
                .map(|(p, _)| *p)
                .ok_or_else(|| {
                    NodeError::NotFound(
                        ErrorReason::PeerNotFound,
                        format!("no connected peer speaks for {}", hex::encode(k)),
                    )
                })?;
            if !peers.contains(&peer) {
                peers.push(peer);
            }
        }
        if self.matchmaking.out_requests.len() >= MAX_REQUESTS
            || self.matchmaking.client_ids.len() >= MAX_REQUESTS
        {
            return Err(NodeError::ResourceExhausted(
                ErrorReason::TooManyRequests,
                "too many open signing requests".into(),
            ));
        }
        let mut request_id = [0u8; 16];
        self.rng.fill_bytes(&mut request_id);
        let expires_at_ms = now + SIGNING_REQUEST_TTL_MS;
        let body = Body::SigningRequest(Box::new(wire::SigningRequest {
            request_id,
            context: context.clone(),
            transaction_type,
            amount,
            expires_at_ms,
        }));
        let bytes = self.zero_message(now, from, body)?;
        let mine: BTreeSet<[u8; 33]> = context
            .signer_keys
            .iter()
            .filter(|k| self.keys.contains(k))
            .copied()
            .collect();
        if let Some(cid) = client_id {
            self.matchmaking
                .client_ids
                .insert(cid, (request_id, context.clone(), expires_at_ms));
        }
        self.matchmaking
            .out_requests
            .insert(request_id, (context, mine, expires_at_ms));
        for peer in peers {
            fx.push(Effect::Send {
                peer,
                bytes: bytes.clone(),
            });
        }
        Ok(request_id)
    }

    /// Open signing requests, received and sent.
    pub fn signing_requests(&self, now: i64) -> Vec<OpenRequest> {
        self.matchmaking.open(now)
    }

    /// Answer a signing request received from another party.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] for an unknown or expired request.
    pub fn respond_signing_request(
        &mut self,
        now: i64,
        request_id: [u8; 16],
        accept: bool,
        fx: &mut Vec<Effect>,
    ) -> Result<(), NodeError> {
        let (peer, context, expires) = self
            .matchmaking
            .in_requests
            .remove(&request_id)
            .ok_or_else(|| {
                NodeError::NotFound(
                    ErrorReason::SigningRequestNotFound,
                    format!(
                        "signing request {} is unknown or expired",
                        hex::encode(request_id)
                    ),
                )
            })?;
        let from = context
            .signer_keys
            .iter()
            .find(|k| self.keys.contains(k))
            .copied()
            .ok_or_else(|| {
                NodeError::FailedPrecondition(
                    ErrorReason::NoLocalKey,
                    "no local key in the request".into(),
                )
            })?;
        if accept {
            self.matchmaking.auto_join.push((context, expires));
        }
        let bytes = self.zero_message(now, from, Body::SigningResponse { request_id, accept })?;
        fx.push(Effect::Send { peer, bytes });
        Ok(())
    }

    /// A signing request or response from a peer.
    pub(super) fn on_matchmaking(
        &mut self,
        now: i64,
        peer: PeerId,
        msg: Message,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        match msg.body {
            Body::SigningRequest(r) => {
                if !r.context.signer_keys.contains(&msg.header.sender) {
                    return Err(Refusal(
                        Reason::NotMember,
                        "the requester is not among the signers".into(),
                    ));
                }
                if !r.context.signer_keys.iter().any(|k| self.keys.contains(k)) {
                    return Err(Refusal(
                        Reason::NotMember,
                        "no key of this node is asked".into(),
                    ));
                }
                let mm = &mut self.matchmaking;
                if mm
                    .request_times
                    .get(&peer)
                    .is_some_and(|t| now - t < SIGNING_REQUEST_INTERVAL_MS)
                {
                    return Err(Refusal(
                        Reason::RateLimited,
                        "more than one signing request per 30 s".into(),
                    ));
                }
                if mm.in_requests.len() >= MAX_REQUESTS {
                    return Err(Refusal(
                        Reason::TooManyRequests,
                        "request table full".into(),
                    ));
                }
                mm.request_times.insert(peer, now);
                // The requester chooses the expiry; we keep a request no longer than our own
                // lifetime of requests (a far-future expiry would hold a table entry for good).
                let expires = r.expires_at_ms.min(now + SIGNING_REQUEST_TTL_MS);
                mm.in_requests
                    .insert(r.request_id, (peer, r.context.clone(), expires));
                Self::emit(
                    fx,
                    NodeEvent::SigningRequestReceived {
                        request_id: r.request_id,
                        peer,
                        context: r.context,
                        transaction_type: r.transaction_type,
                        amount: r.amount,
                    },
                );
                Ok(())
            }
            Body::SigningResponse { request_id, accept } => {
                let Some((context, accepted, _)) =
                    self.matchmaking.out_requests.get_mut(&request_id)
                else {
                    return Err(Refusal(
                        Reason::UnknownRequest,
                        "no such signing request".into(),
                    ));
                };
                if !context.signer_keys.contains(&msg.header.sender) {
                    return Err(Refusal(
                        Reason::NotMember,
                        "the responder was not asked".into(),
                    ));
                }
                let response = NodeEvent::SigningResponseReceived {
                    request_id,
                    key: msg.header.sender,
                    accept,
                };
                if !accept {
                    self.matchmaking.out_requests.remove(&request_id);
                    Self::emit(fx, response);
                    return Ok(());
                }
                accepted.insert(msg.header.sender);
                let complete = accepted.len() == context.signer_keys.len();
                let context = context.clone();
                Self::emit(fx, response);
                if complete {
                    self.matchmaking.out_requests.remove(&request_id);
                    let rid = Some(hex::encode(request_id));
                    if let Err(e) = self.create_for(now, context, None, None, rid, fx) {
                        tracing::warn!(error = %e, "session from an accepted signing request not created");
                    }
                }
                Ok(())
            }
            _ => Err(Refusal(
                Reason::Unsupported,
                "not a matchmaking message".into(),
            )),
        }
    }
}
