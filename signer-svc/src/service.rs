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
    ReleaseNonceRequest, ReleaseNonceResponse,
};
use rand::RngCore;
use sha2::{Digest, Sha256};
use shared::musig::{AggNonce, PubNonce, SecretKey, SigningSession, Tweak, nonce_gen};
use shared::wire::SessionContext;
use tonic::{Request, Response, Status};

use crate::journal::{Event, INLINE_MESSAGE_BYTES, Journal, RecordKind};
use crate::keystore::KeyStore;
use crate::metrics::Metrics;
use crate::nonces::{NonceStore, SlotState};
use crate::policy::{Admission, Policy, Stage};
use shared::discipline::SignCheck;

pub use shared::wire::MAX_ATTESTATION_LIFETIME_MS;

/// The signer service. Every call runs to completion in a task of its own, so a client that
/// disconnects (or a cancelled call) can never leave a nonce half-used: once the journal holds a
/// partial signature, the stored answer is in place for the identical retry.
#[derive(Debug, Clone)]
pub struct Signer {
    inner: Arc<Inner>,
}

/// Fault injection for tests: delays at points where a crash or a cancellation is rare.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Pause after a partial signature is journaled, before its slot is marked used.
    pub delay_after_journal: std::time::Duration,
}

/// The signer's state shared by all requests.
#[derive(Debug)]
struct Inner {
    keys: Arc<KeyStore>,
    /// Our public keys, for the built-in own-key check.
    own_keys: Vec<[u8; 33]>,
    nonces: NonceStore,
    policy: Arc<Policy>,
    journal: Arc<Journal>,
    metrics: Arc<Metrics>,
    faults: Faults,
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
    key_agg: shared::musig::KeyAggContext,
}

fn tweak_text(t: &Tweak) -> String {
    match t {
        Tweak::Plain(b) => format!("plain:{}", hex::encode(b)),
        Tweak::XOnly(b) => format!("xonly:{}", hex::encode(b)),
        Tweak::Taproot { merkle_root: None } => "taproot".into(),
        Tweak::Taproot {
            merkle_root: Some(r),
        } => format!("taproot:{}", hex::encode(r)),
    }
}

impl Checked<'_> {
    /// The journal event describing this request: what the key is asked to sign.
    fn event(&self) -> Event {
        let m = &self.context.message;
        let long = m.len() > INLINE_MESSAGE_BYTES;
        Event {
            session_id: Some(hex::encode(self.session_id)),
            key: Some(hex::encode(self.key)),
            context_hash: Some(hex::encode(self.context_hash)),
            format: Some(self.context.format.as_str().to_string()),
            signer_keys: Some(self.context.signer_keys.iter().map(hex::encode).collect()),
            tweaks: Some(self.context.tweaks.iter().map(tweak_text).collect()),
            aggregate_key: Some(hex::encode(self.key_agg.aggregate_key())),
            output_key: Some(hex::encode(self.key_agg.output_key())),
            message: (!long).then(|| hex::encode(m)),
            message_sha256: long.then(|| hex::encode(Sha256::digest(m))),
            message_len: Some(m.len()),
            ..Event::default()
        }
    }
}

impl Signer {
    /// Assemble the service.
    pub fn new(
        keys: Arc<KeyStore>,
        nonces: NonceStore,
        policy: Arc<Policy>,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self::with_faults(keys, nonces, policy, journal, metrics, Faults::default())
    }

    /// Assemble the service with fault injection (tests only).
    pub fn with_faults(
        keys: Arc<KeyStore>,
        nonces: NonceStore,
        policy: Arc<Policy>,
        journal: Arc<Journal>,
        metrics: Arc<Metrics>,
        faults: Faults,
    ) -> Self {
        let own_keys = keys.keys().iter().map(|k| k.secret.public_key()).collect();
        Signer {
            inner: Arc::new(Inner {
                keys,
                own_keys,
                nonces,
                policy,
                journal,
                metrics,
                faults,
            }),
        }
    }

    /// Run one call in a task of its own: it finishes its state changes even when the caller's
    /// future is dropped (client gone, deadline passed).
    async fn detached<T, F>(&self, f: impl FnOnce(Arc<Inner>) -> F) -> Result<T, Status>
    where
        F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
        T: Send + 'static,
    {
        tokio::spawn(f(self.inner.clone()))
            .await
            .unwrap_or_else(|_| Err(Status::internal("signer task failed; nothing was released")))
    }
}

impl Inner {
    fn check<'a>(
        &'a self,
        public_key: &[u8],
        session_id: &[u8],
        context: Option<&musig2_proto::v1::SessionContext>,
    ) -> Result<Checked<'a>, Status> {
        self.check_as(public_key, session_id, context, false)
    }

    /// [`Inner::check`]; a pooled nonce's context must have an empty message (any format).
    fn check_as<'a>(
        &'a self,
        public_key: &[u8],
        session_id: &[u8],
        context: Option<&musig2_proto::v1::SessionContext>,
        pooled: bool,
    ) -> Result<Checked<'a>, Status> {
        let key = key33("public_key", public_key)?;
        let session_id = session16(session_id)?;
        let context = context.ok_or_else(|| Status::invalid_argument("context is missing"))?;
        let context = if pooled {
            SessionContext::from_pb_pool(context)
        } else {
            SessionContext::from_pb(context)
        }
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
        crate::guard::check_context(&self.own_keys, &key_agg).map_err(|c| {
            self.metrics.refusal("builtin_own_key");
            Status::failed_precondition(c.to_string())
        })?;
        Ok(Checked {
            key,
            secret,
            session_id,
            context_hash: context.hash(),
            context,
            index,
            key_agg,
        })
    }

    fn policy(&self, stage: Stage, c: &Checked<'_>) -> Result<Admission<'_>, Status> {
        self.policy
            .check_session(stage, &c.key, &c.context, &c.key_agg)
            .map_err(|r| {
                self.metrics.refusal(&r.rule);
                Status::permission_denied(r.to_string())
            })
    }

    async fn journal(&self, kind: RecordKind, event: Event) -> Result<(), Status> {
        match self.journal.append_async(kind, event).await {
            Ok(seq) => {
                self.metrics.journal_seq(seq);
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "audit journal write failed");
                Err(Status::unavailable(
                    "audit journal write failed; nothing was released",
                ))
            }
        }
    }

    async fn generate_nonce_inner(
        &self,
        req: GenerateNonceRequest,
    ) -> Result<GenerateNonceResponse, Status> {
        let mut c = self.check_as(
            &req.public_key,
            &req.session_id,
            req.context.as_ref(),
            req.pooled,
        )?;
        if req.pooled {
            c.context_hash = c.context.pool_hash();
        }
        let stage = if req.pooled {
            Stage::PoolNonce
        } else {
            Stage::Nonce
        };
        drop(self.policy(stage, &c)?);
        if self.nonces.is_lost(&(c.session_id, c.key)) {
            return Err(Status::failed_precondition(format!(
                "session {} and key {}: {}",
                hex::encode(c.session_id),
                hex::encode(c.key),
                shared::discipline::Refused::NonceLost
            )));
        }
        // Made before taking the store lock; dropped (zeroized) if the slot already exists.
        let (secnonce, public) = if req.pooled {
            shared::musig::nonce_gen_pooled(&mut rand::rng(), c.secret, &c.key_agg)
        } else {
            nonce_gen(&mut rand::rng(), c.secret, &c.key_agg, &c.context.message)
        }
        .map_err(|e| Status::internal(format!("nonce generation failed: {e}")))?;
        let public_nonce = public.to_bytes();
        let slot_key = (c.session_id, c.key);
        let inserted = if req.pooled {
            self.nonces.get_or_insert_pooled(slot_key, || {
                SlotState::pending_pooled(secnonce, c.context_hash, public_nonce)
            })
        } else {
            self.nonces.get_or_insert(slot_key, || {
                SlotState::pending(secnonce, c.context_hash, public_nonce)
            })
        };
        let (slot, created) = inserted.map_err(|e| Status::resource_exhausted(e.to_string()))?;
        let expires_at_ms = slot.expires_at_ms;
        let state = slot.state.lock().await;
        let existing = state
            .check_nonce_request(&c.context_hash)
            .map_err(|r| Status::failed_precondition(r.to_string()))?;
        if !created {
            // Idempotent retry of a lost reply: the same public nonce, no new secret.
            return Ok(GenerateNonceResponse {
                public_nonce: existing.to_vec(),
                context_hash: c.context_hash.to_vec(),
                expires_at_ms,
            });
        }
        let event = Event {
            public_nonce: Some(hex::encode(public_nonce)),
            pooled: req.pooled.then_some(true),
            ..c.event()
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
        let request_hash = shared::discipline::request_hash(
            &c.session_id,
            &c.key,
            &c.context_hash,
            &req.public_nonces,
        );
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
        let own = req.public_nonces.get(c.index).map(Vec::as_slice);
        let pooled = matches!(&*state, SlotState::Pending { pooled: true, .. });
        match state
            .check_sign_request(&request_hash, &state.binding_for(&c.context), c.index, own)
            .map_err(|r| Status::failed_precondition(r.to_string()))?
        {
            SignCheck::Replay(partial_signature) => {
                return Ok(PartialSignResponse {
                    partial_signature: partial_signature.to_vec(),
                    replayed: true,
                });
            }
            SignCheck::Fresh => {}
        }
        let admission = self.policy(Stage::Sign, &c)?;
        // Take the secret nonce out before computing anything with it.
        let taken = match state.burn(request_hash) {
            Some(secnonce) => (secnonce, admission),
            None => return Err(Status::internal("nonce state changed under its lock")),
        };
        let (secnonce, admission) = taken;
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
            public_nonce: req.public_nonces.get(c.index).map(hex::encode),
            partial_signature: Some(hex::encode(psig)),
            pooled: pooled.then_some(true),
            ..c.event()
        };
        #[cfg(not(feature = "chaos-broken-journal"))]
        self.journal(RecordKind::PartialSignature, event).await?;
        #[cfg(feature = "chaos-broken-journal")]
        drop(event);
        if !self.faults.delay_after_journal.is_zero() {
            tokio::time::sleep(self.faults.delay_after_journal).await;
        }
        state.finish(request_hash, psig);
        admission.commit();
        self.metrics.partial_signed(c.context.format);
        Ok(PartialSignResponse {
            partial_signature: psig.to_vec(),
            replayed: false,
        })
    }

    async fn release_nonce_inner(
        &self,
        req: ReleaseNonceRequest,
    ) -> Result<ReleaseNonceResponse, Status> {
        let key = key33("public_key", &req.public_key)?;
        let session_id = session16(&req.session_id)?;
        if self.keys.get(&key).is_none() {
            return Err(Status::not_found(format!(
                "this signer holds no key {}",
                hex::encode(key)
            )));
        }
        let Some(slot) = self.nonces.get(&(session_id, key)) else {
            return Ok(ReleaseNonceResponse { released: false });
        };
        let mut state = slot.state.lock().await;
        let public_nonce = match &*state {
            SlotState::Pending { public_nonce, .. } => *public_nonce,
            _ => return Ok(ReleaseNonceResponse { released: false }),
        };
        // Destroyed (zeroized on drop) before anything else: releasing can only make the signer
        // safer, so it does not wait for the journal.
        drop(state.burn(shared::discipline::RELEASED));
        drop(state);
        let event = Event {
            session_id: Some(hex::encode(session_id)),
            key: Some(hex::encode(key)),
            public_nonce: Some(hex::encode(public_nonce)),
            ..Event::default()
        };
        self.journal(RecordKind::NonceReleased, event).await?;
        Ok(ReleaseNonceResponse { released: true })
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
        let now = crate::journal::now_ms();
        if req.expires_at_ms <= now
            || req.expires_at_ms > now.saturating_add(MAX_ATTESTATION_LIFETIME_MS)
        {
            return Err(Status::invalid_argument(
                "expires_at_ms must be in the future and at most 30 days ahead",
            ));
        }
        let secret = self.keys.get(&key).ok_or_else(|| {
            Status::not_found(format!("this signer holds no key {}", hex::encode(key)))
        })?;
        let admission = self
            .policy
            .check_attestation(&key, req.expires_at_ms.saturating_sub(now))
            .map_err(|r| {
                self.metrics.refusal(&r.rule);
                if r.rule.starts_with("builtin_") {
                    Status::resource_exhausted(r.to_string())
                } else {
                    Status::permission_denied(r.to_string())
                }
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
        admission.commit();
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
                .inner
                .keys
                .keys()
                .iter()
                .map(|k| KeyInfo {
                    public_key: k.secret.public_key().to_vec(),
                    label: k.label.clone(),
                })
                .collect(),
        });
        self.inner.observe("ListKeys", started, &r);
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn generate_nonce(
        &self,
        req: Request<GenerateNonceRequest>,
    ) -> Result<Response<GenerateNonceResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self
            .detached(|inner| async move {
                let r = inner.generate_nonce_inner(req).await;
                inner.observe("GenerateNonce", started, &r);
                r
            })
            .await;
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn partial_sign(
        &self,
        req: Request<PartialSignRequest>,
    ) -> Result<Response<PartialSignResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self
            .detached(|inner| async move {
                let r = inner.partial_sign_inner(req).await;
                inner.observe("PartialSign", started, &r);
                r
            })
            .await;
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn release_nonce(
        &self,
        req: Request<ReleaseNonceRequest>,
    ) -> Result<Response<ReleaseNonceResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self
            .detached(|inner| async move {
                let r = inner.release_nonce_inner(req).await;
                inner.observe("ReleaseNonce", started, &r);
                r
            })
            .await;
        r.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn attest_peer(
        &self,
        req: Request<AttestPeerRequest>,
    ) -> Result<Response<AttestPeerResponse>, Status> {
        let started = Instant::now();
        let req = req.into_inner();
        let r = self
            .detached(|inner| async move {
                let r = inner.attest_inner(req).await;
                inner.observe("AttestPeer", started, &r);
                r
            })
            .await;
        r.map(Response::new)
    }
}
