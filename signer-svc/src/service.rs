//! The `SignerService` gRPC implementation (DESIGN §4). Every guarantee holds when the caller is
//! hostile: the signer recomputes key and nonce aggregation itself, binds each nonce to one
//! (session, key, context), removes the secret nonce before signing, verifies its own partial
//! signature, and journals before answering.

use std::sync::Arc;
use std::time::Instant;

use musig2_proto::v1::signer_service_server::SignerService;
use musig2_proto::v1::{
    AttestPeerRequest, AttestPeerResponse, GenerateNonceRequest, GenerateNonceResponse, KeyInfo,
    ListKeysRequest, ListKeysResponse, PartialSignRequest, PartialSignResponse,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use shared::musig::{AggNonce, PubNonce, SecretKey, SigningSession, nonce_gen};
use shared::wire::SessionContext;
use tonic::{Request, Response, Status};

use crate::journal::{Event, Journal, RecordKind};
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::nonces::{InsertError, NonceStore, SlotState};
use crate::policy::{Policy, Stage};

/// Longest attestation lifetime accepted.
pub const MAX_ATTESTATION_TTL_MS: i64 = 30 * 24 * 3600 * 1000;

/// The signer's state shared by all requests.
#[derive(Debug)]
pub struct Signer {
    keys: Arc<KeyStore>,
    nonces: NonceStore,
    policy: Policy,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn key33(field: &str, b: &[u8]) -> Result<[u8; 33], Status> {
    b.try_into()
        .map_err(|_| Status::invalid_argument(format!("{field} must be 33 bytes, got {}", b.len())))
}

fn session16(b: &[u8]) -> Result<[u8; 16], Status> {
    b.try_into().map_err(|_| {
        Status::invalid_argument(format!("session_id must be 16 bytes, got {}", b.len()))
    })
}

/// A request decoded and checked against the key store: what both nonce and sign calls need.
struct Checked<'a> {
    key: [u8; 33],
    secret: &'a SecretKey,
    session_id: [u8; 16],
    context: SessionContext,
    context_hash: [u8; 32],
    index: usize,
    aggregate_key: [u8; 33],
    key_agg: shared::musig::KeyAggContext,
}

impl Signer {
    /// Assemble the service.
    pub fn new(
        keys: Arc<KeyStore>,
        nonces: NonceStore,
        policy: Policy,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Signer {
            keys,
            nonces,
            policy,
            journal,
            metrics,
        }
    }

    fn check<'a>(
        &'a self,
        public_key: &[u8],
        session_id: &[u8],
        context: Option<&musig2_proto::v1::SessionContext>,
    ) -> Result<Checked<'a>, Status> {
        let key = key33("public_key", public_key)?;
        let session_id = session16(session_id)?;
        let context = context.ok_or_else(|| Status::invalid_argument("context is missing"))?;
        let context = SessionContext::from_pb(context)
            .map_err(|e| Status::invalid_argument(format!("context: {e}")))?;
        let secret = self.keys.get(&key).ok_or_else(|| {
            Status::not_found(format!("this signer holds no key {}", hex::encode(key)))
        })?;
        let index = context
            .signer_keys
            .iter()
            .position(|k| *k == key)
            .ok_or_else(|| {
                Status::invalid_argument("public_key is not among context.signer_keys")
            })?;
        let key_agg = context
            .key_agg()
            .map_err(|e| Status::invalid_argument(format!("context: {e}")))?;
        Ok(Checked {
            key,
            secret,
            session_id,
            context_hash: context.hash(),
            aggregate_key: key_agg.aggregate_key(),
            context,
            index,
            key_agg,
        })
    }

    fn policy(&self, stage: Stage, c: &Checked<'_>) -> Result<(), Status> {
        self.policy
            .check(stage, &c.key, &c.context, &c.aggregate_key)
            .map_err(|r| {
                self.metrics.refusal(&r.rule);
                Status::permission_denied(r.to_string())
            })
    }

    async fn journal(&self, kind: RecordKind, event: Event) -> Result<(), Status> {
        let journal = self.journal.clone();
        let res = tokio::task::spawn_blocking(move || journal.append(kind, event)).await;
        match res {
            Ok(Ok(seq)) => {
                self.metrics.journal_seq(seq);
                Ok(())
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "audit journal write failed");
                Err(Status::unavailable(
                    "audit journal write failed; nothing was released",
                ))
            }
            Err(_) => Err(Status::internal(
                "audit journal task failed; nothing was released",
            )),
        }
    }

    async fn generate_nonce_inner(
        &self,
        req: GenerateNonceRequest,
    ) -> Result<GenerateNonceResponse, Status> {
        let c = self.check(&req.public_key, &req.session_id, req.context.as_ref())?;
        self.policy(Stage::Nonce, &c)?;
        let expires_at_ms = now_ms()
            .saturating_add(i64::try_from(self.nonces.ttl().as_millis()).unwrap_or(i64::MAX));
        // Made before taking the store lock; dropped (zeroized) if the slot already exists.
        let (secnonce, public) =
            nonce_gen(&mut rand::rng(), c.secret, &c.key_agg, &c.context.message)
                .map_err(|e| Status::internal(format!("nonce generation failed: {e}")))?;
        let public_nonce = public.to_bytes();
        let slot_key = (c.session_id, c.key);
        let (slot, created) = self
            .nonces
            .get_or_insert(slot_key, || SlotState::Pending {
                secnonce: Box::new(secnonce),
                context_hash: c.context_hash,
                public_nonce,
            })
            .map_err(|InsertError::Full(n)| {
                Status::resource_exhausted(format!("nonce store is full ({n} nonces); retry later"))
            })?;
        let state = slot.state.lock().await;
        match &*state {
            SlotState::Pending {
                context_hash,
                public_nonce: existing,
                ..
            } => {
                if *context_hash != c.context_hash {
                    return Err(Status::failed_precondition(
                        "a nonce for this session and key was already issued for a different context",
                    ));
                }
                if !created {
                    // Idempotent retry of a lost reply: the same public nonce, no new secret.
                    return Ok(GenerateNonceResponse {
                        public_nonce: existing.to_vec(),
                        context_hash: c.context_hash.to_vec(),
                        expires_at_ms,
                    });
                }
            }
            SlotState::Burned { .. } | SlotState::Used { .. } => {
                return Err(Status::failed_precondition(
                    "the nonce for this session and key was already used; a session gets one nonce per key",
                ));
            }
        }
        let event = Event {
            session_id: Some(hex::encode(c.session_id)),
            key: Some(hex::encode(c.key)),
            context_hash: Some(hex::encode(c.context_hash)),
            public_nonce: Some(hex::encode(public_nonce)),
            ..Event::default()
        };
        if let Err(e) = self.journal(RecordKind::Nonce, event).await {
            drop(state);
            self.nonces.remove(&slot_key);
            return Err(e);
        }
        self.metrics
            .nonce_issued(c.context.format, self.nonces.len());
        Ok(GenerateNonceResponse {
            public_nonce: public_nonce.to_vec(),
            context_hash: c.context_hash.to_vec(),
            expires_at_ms,
        })
    }

    async fn partial_sign_inner(
        &self,
        req: PartialSignRequest,
    ) -> Result<PartialSignResponse, Status> {
        let c = self.check(&req.public_key, &req.session_id, req.context.as_ref())?;
        let n = c.context.signer_keys.len();
        if req.public_nonces.len() != n {
            return Err(Status::invalid_argument(format!(
                "public_nonces must hold one nonce per signer ({n}), got {}",
                req.public_nonces.len()
            )));
        }
        let mut nonces = Vec::with_capacity(n);
        for (i, b) in req.public_nonces.iter().enumerate() {
            let arr: [u8; 66] = b.as_slice().try_into().map_err(|_| {
                Status::invalid_argument(format!(
                    "public_nonces[{i}] must be 66 bytes, got {}",
                    b.len()
                ))
            })?;
            nonces.push(PubNonce::from_bytes(&arr).map_err(|_| {
                Status::invalid_argument(format!("public_nonces[{i}] is not two valid points"))
            })?);
        }
        let request_hash: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(c.session_id);
            h.update(c.key);
            h.update(c.context_hash);
            for b in &req.public_nonces {
                h.update(b);
            }
            h.finalize().into()
        };
        let slot_key = (c.session_id, c.key);
        let slot = self.nonces.get(&slot_key).ok_or_else(|| {
            Status::not_found(format!(
                "no nonce for session {} and key {}: never issued, expired after {} s, or lost when the signer restarted",
                hex::encode(c.session_id),
                hex::encode(c.key),
                self.nonces.ttl().as_secs()
            ))
        })?;
        let mut state = slot.state.lock().await;
        let secnonce = match &*state {
            SlotState::Used {
                request_hash: h,
                partial_signature,
            } if *h == request_hash => {
                return Ok(PartialSignResponse {
                    partial_signature: partial_signature.to_vec(),
                    replayed: true,
                });
            }
            SlotState::Used { .. } | SlotState::Burned { .. } => {
                return Err(Status::failed_precondition(
                    "this nonce was already used for a different request; it can never sign again",
                ));
            }
            SlotState::Pending {
                context_hash,
                public_nonce,
                ..
            } => {
                if *context_hash != c.context_hash {
                    return Err(Status::failed_precondition(
                        "the session context differs from the one this nonce was issued for",
                    ));
                }
                let own = req.public_nonces.get(c.index).map(Vec::as_slice);
                if own != Some(public_nonce.as_slice()) {
                    return Err(Status::failed_precondition(format!(
                        "public_nonces[{}] is not this signer's nonce for the session",
                        c.index
                    )));
                }
                self.policy(Stage::Sign, &c)?;
                // Take the secret nonce out before computing anything with it.
                match std::mem::replace(&mut *state, SlotState::Burned { request_hash }) {
                    SlotState::Pending { secnonce, .. } => *secnonce,
                    _ => return Err(Status::internal("nonce state changed under its lock")),
                }
            }
        };
        let aggnonce = AggNonce::sum(c.context.format, &nonces).map_err(|e| {
            Status::invalid_argument(format!("public_nonces: {e}; the nonce is now spent"))
        })?;
        let session =
            SigningSession::new(&c.key_agg, &aggnonce, &c.context.message).map_err(|e| {
                Status::invalid_argument(format!("session: {e}; the nonce is now spent"))
            })?;
        let psig = session
            .sign_at(secnonce, c.secret, c.index)
            .map_err(|e| Status::internal(format!("signing failed: {e}; the nonce is now spent")))?
            .to_bytes();
        let event = Event {
            session_id: Some(hex::encode(c.session_id)),
            key: Some(hex::encode(c.key)),
            context_hash: Some(hex::encode(c.context_hash)),
            public_nonce: req.public_nonces.get(c.index).map(hex::encode),
            partial_signature: Some(hex::encode(psig)),
            ..Event::default()
        };
        self.journal(RecordKind::PartialSignature, event).await?;
        *state = SlotState::Used {
            request_hash,
            partial_signature: psig,
        };
        self.metrics.partial_signed(c.context.format);
        Ok(PartialSignResponse {
            partial_signature: psig.to_vec(),
            replayed: false,
        })
    }

    async fn attest_inner(&self, req: AttestPeerRequest) -> Result<AttestPeerResponse, Status> {
        let key = key33("public_key", &req.public_key)?;
        if req.peer_id.is_empty() || req.peer_id.len() > shared::wire::MAX_PEER_ID_BYTES {
            return Err(Status::invalid_argument(format!(
                "peer_id must be 1 to {} bytes, got {}",
                shared::wire::MAX_PEER_ID_BYTES,
                req.peer_id.len()
            )));
        }
        let now = now_ms();
        if req.expires_at_ms <= now
            || req.expires_at_ms > now.saturating_add(MAX_ATTESTATION_TTL_MS)
        {
            return Err(Status::invalid_argument(
                "expires_at_ms must be in the future and at most 30 days ahead",
            ));
        }
        let secret = self.keys.get(&key).ok_or_else(|| {
            Status::not_found(format!("this signer holds no key {}", hex::encode(key)))
        })?;
        let mut aux = [0u8; 32];
        rand::rng().fill_bytes(&mut aux);
        let sig = secret
            .sign_attestation(&req.peer_id, req.expires_at_ms, &aux)
            .map_err(|e| Status::internal(format!("attestation failed: {e}")))?;
        let event = Event {
            key: Some(hex::encode(key)),
            peer_id: Some(hex::encode(&req.peer_id)),
            expires_at_ms: Some(req.expires_at_ms),
            ..Event::default()
        };
        self.journal(RecordKind::Attestation, event).await?;
        Ok(AttestPeerResponse {
            signature: sig.to_vec(),
        })
    }

    fn observe<T>(&self, method: &'static str, started: Instant, r: &Result<T, Status>) {
        let code = match r {
            Ok(_) => "OK".to_string(),
            Err(s) => format!("{:?}", s.code()),
        };
        if let Err(s) = r {
            tracing::info!(method, code = %code, message = %s.message(), "request refused");
        }
        self.metrics.request(method, &code, started.elapsed());
    }
}

#[tonic::async_trait]
impl SignerService for Signer {
    #[tracing::instrument(skip_all)]
    async fn list_keys(
        &self,
        _req: Request<ListKeysRequest>,
    ) -> Result<Response<ListKeysResponse>, Status> {
        let started = Instant::now();
        let r = Ok(ListKeysResponse {
            keys: self
                .keys
                .keys()
                .iter()
                .map(|k| KeyInfo {
                    public_key: k.secret.public_key().to_vec(),
                    label: k.label.clone(),
                })
                .collect(),
        });
        self.observe("ListKeys", started, &r);
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn generate_nonce(
        &self,
        req: Request<GenerateNonceRequest>,
    ) -> Result<Response<GenerateNonceResponse>, Status> {
        let started = Instant::now();
        let r = self.generate_nonce_inner(req.into_inner()).await;
        self.observe("GenerateNonce", started, &r);
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn partial_sign(
        &self,
        req: Request<PartialSignRequest>,
    ) -> Result<Response<PartialSignResponse>, Status> {
        let started = Instant::now();
        let r = self.partial_sign_inner(req.into_inner()).await;
        self.observe("PartialSign", started, &r);
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn attest_peer(
        &self,
        req: Request<AttestPeerRequest>,
    ) -> Result<Response<AttestPeerResponse>, Status> {
        let started = Instant::now();
        let r = self.attest_inner(req.into_inner()).await;
        self.observe("AttestPeer", started, &r);
        r.map(Response::new)
    }
}
