//! The signer's nonce discipline as pure, synchronous code: what signer-svc enforces around its
//! journal and locks, and what the coordinator's simulator runs as its in-memory signers.
//!
//! - **Context checks**: the key is among the session's keys, the session cannot end in one of
//!   the signer's own keys ([`check_context`]).
//! - **One nonce per (session, key)**: a slot moves `Pending -> Burned -> Used`. The secret
//!   nonce is taken out of the slot (burned) *before* the partial signature is computed, so at
//!   most one partial signature can ever exist per nonce ([`SlotState::burn`]).
//! - **Idempotent retries**: a nonce request for a pending slot with the same context returns the
//!   same public nonce; a signing request byte-identical to the one that used the slot returns
//!   the same partial signature ([`SlotState::check_nonce_request`],
//!   [`SlotState::check_sign_request`]).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use crate::election::SessionId;
use crate::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, SecNonce, SecretKey, SigningSession,
    nonce_gen,
};
use crate::wire::SessionContext;

/// Why the discipline refuses a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A nonce for this session and key exists for another context.
    #[error("a nonce for this session and key was already issued for a different context")]
    OtherContext,
    /// The slot's nonce was used (or burned).
    #[error(
        "the nonce for this session and key was already used; a session gets one nonce per key"
    )]
    NonceUsed,
    /// A signing request differs from the one that used the nonce.
    #[error("this nonce was already used for a different request; it can never sign again")]
    DifferentRequest,
    /// The signing request's context is not the nonce's.
    #[error("the session context differs from the one this nonce was issued for")]
    ContextDiffers,
    /// The signing request does not carry this signer's nonce at its index.
    #[error("public_nonces[{0}] is not this signer's nonce for the session")]
    NotOurNonce(usize),
    /// A nonce was issued for this session and key before the signer restarted; its secret is
    /// gone, and another would be a second nonce for the same session and key.
    #[error(
        "a nonce for this session and key was issued before the signer restarted and is lost; a session gets one nonce per key"
    )]
    NonceLost,
    /// No nonce was issued (or it expired, or the signer restarted).
    #[error(
        "no nonce for this session and key: never issued, expired, or lost when the signer restarted"
    )]
    NoNonce,
    /// The key is not held.
    #[error("this signer holds no key {0}")]
    UnknownKey(String),
    /// The key is not among the session's keys.
    #[error("public_key is not among context.signer_keys")]
    NotMember,
    /// The session ends in one of our keys.
    #[error("{0}")]
    OwnKey(OwnKeyCollision),
    /// Malformed input (context, nonces).
    #[error("{0}")]
    Invalid(String),
}

/// A context whose aggregate or output key collides with one of our keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OwnKeyCollision {
    /// Which key of the session: `"aggregate key"` or `"output key"`.
    pub which: &'static str,
    /// Our key it collides with.
    pub own_key: [u8; 33],
}

impl std::fmt::Display for OwnKeyCollision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the session's {} has the x coordinate of this signer's own key {}: a MuSig2 signature \
             for it would be a single-signer signature by that key, so the signer refuses the context",
            self.which,
            hex::encode(self.own_key)
        )
    }
}

/// Whether `aggregate` or `output` has the x coordinate of a key in `own` (both parities: BIP340
/// verifiers see only x).
pub fn own_key_collision<'a>(
    own: impl IntoIterator<Item = &'a [u8; 33]>,
    aggregate: &[u8; 33],
    output: &[u8; 33],
) -> Option<OwnKeyCollision> {
    let x = |k: &[u8; 33]| -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(k.get(1..).unwrap_or(&[0u8; 32]));
        out
    };
    let (xa, xo) = (x(aggregate), x(output));
    own.into_iter().find_map(|k| {
        let xk = x(k);
        if xk == xo {
            Some(OwnKeyCollision {
                which: "output key",
                own_key: *k,
            })
        } else if xk == xa {
            Some(OwnKeyCollision {
                which: "aggregate key",
                own_key: *k,
            })
        } else {
            None
        }
    })
}

/// [`own_key_collision`] for a key aggregation context.
///
/// # Errors
/// The collision.
pub fn check_context<'a>(
    own: impl IntoIterator<Item = &'a [u8; 33]>,
    key_agg: &KeyAggContext,
) -> Result<(), OwnKeyCollision> {
    match own_key_collision(own, &key_agg.aggregate_key(), &key_agg.output_key()) {
        Some(c) => Err(c),
        None => Ok(()),
    }
}

/// The hash a signing request is recognised by (for idempotent retries).
pub fn request_hash<B: AsRef<[u8]>>(
    session_id: &[u8; 16],
    key: &[u8; 33],
    context_hash: &[u8; 32],
    public_nonces: &[B],
) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(session_id);
    h.update(key);
    h.update(context_hash);
    for b in public_nonces {
        h.update(b.as_ref());
    }
    h.finalize().into()
}

/// The request hash a released slot is burned with (no signing request hashes to it).
pub const RELEASED: [u8; 32] = [0xff; 32];

/// What a slot holds.
pub enum SlotState {
    /// Issued, not used. The secret nonce lives only here.
    Pending {
        /// The secret nonce (boxed: the other states are small).
        secnonce: Box<SecNonce>,
        /// Hash of the session context it is bound to.
        context_hash: [u8; 32],
        /// Its public nonce.
        public_nonce: [u8; 66],
        /// A nonce-pool slot: `context_hash` is [`SessionContext::pool_hash`], and any message
        /// may be signed with it (once).
        pooled: bool,
    },
    /// The secret nonce was taken for a request (being signed, or signing failed): never usable
    /// again.
    Burned {
        /// Hash of the request that took it.
        request_hash: [u8; 32],
    },
    /// Signed.
    Used {
        /// Hash of the request that was signed.
        request_hash: [u8; 32],
        /// The partial signature returned.
        partial_signature: [u8; 32],
    },
}

impl std::fmt::Debug for SlotState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SlotState::Pending { .. } => "Pending(<secret nonce>)",
            SlotState::Burned { .. } => "Burned",
            SlotState::Used { .. } => "Used",
        })
    }
}

/// What a signing request may do with a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignCheck {
    /// A byte-identical retry: answer this partial signature again.
    Replay([u8; 32]),
    /// The nonce may be burned and used.
    Fresh,
}

impl SlotState {
    /// A new pending slot.
    pub fn pending(secnonce: SecNonce, context_hash: [u8; 32], public_nonce: [u8; 66]) -> Self {
        SlotState::Pending {
            secnonce: Box::new(secnonce),
            context_hash,
            public_nonce,
            pooled: false,
        }
    }

    /// A new pending nonce-pool slot, bound to `context.pool_hash()` (no message).
    pub fn pending_pooled(secnonce: SecNonce, pool_hash: [u8; 32], public_nonce: [u8; 66]) -> Self {
        SlotState::Pending {
            secnonce: Box::new(secnonce),
            context_hash: pool_hash,
            public_nonce,
            pooled: true,
        }
    }

    /// The hash a signing request's `context` must match for this slot: the context's hash, or
    /// for a pooled slot its pool hash (the message is the one being signed).
    pub fn binding_for(&self, context: &SessionContext) -> [u8; 32] {
        match self {
            SlotState::Pending { pooled: true, .. } => context.pool_hash(),
            _ => context.hash(),
        }
    }

    /// A nonce request finds this slot: the public nonce to answer again (a retry).
    ///
    /// # Errors
    /// [`Refused::OtherContext`], [`Refused::NonceUsed`].
    pub fn check_nonce_request(&self, context_hash: &[u8; 32]) -> Result<[u8; 66], Refused> {
        match self {
            SlotState::Pending {
                context_hash: c,
                public_nonce,
                ..
            } if c == context_hash => Ok(*public_nonce),
            SlotState::Pending { .. } => Err(Refused::OtherContext),
            SlotState::Burned { .. } | SlotState::Used { .. } => Err(Refused::NonceUsed),
        }
    }

    /// A signing request (`own_nonce` = the nonce at our index in it) finds this slot.
    ///
    /// # Errors
    /// [`Refused::DifferentRequest`], [`Refused::ContextDiffers`], [`Refused::NotOurNonce`].
    pub fn check_sign_request(
        &self,
        request_hash: &[u8; 32],
        context_hash: &[u8; 32],
        index: usize,
        own_nonce: Option<&[u8]>,
    ) -> Result<SignCheck, Refused> {
        match self {
            SlotState::Used {
                request_hash: h,
                partial_signature,
            } if h == request_hash => Ok(SignCheck::Replay(*partial_signature)),
            SlotState::Used { .. } | SlotState::Burned { .. } => Err(Refused::DifferentRequest),
            SlotState::Pending {
                context_hash: c,
                public_nonce,
                ..
            } => {
                if c != context_hash {
                    return Err(Refused::ContextDiffers);
                }
                if own_nonce != Some(public_nonce.as_slice()) {
                    return Err(Refused::NotOurNonce(index));
                }
                Ok(SignCheck::Fresh)
            }
        }
    }

    /// Take the secret nonce out: the slot is burned for `request_hash` before anything is
    /// computed with it. `None` if it was not pending.
    pub fn burn(&mut self, request_hash: [u8; 32]) -> Option<SecNonce> {
        match std::mem::replace(self, SlotState::Burned { request_hash }) {
            SlotState::Pending { secnonce, .. } => Some(*secnonce),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The partial signature was produced (and journaled): retries get it again.
    pub fn finish(&mut self, request_hash: [u8; 32], partial_signature: [u8; 32]) {
        *self = SlotState::Used {
            request_hash,
            partial_signature,
        };
    }
}

/// A signer in memory with the full discipline (no journal, no policy, no expiry): the
/// simulator's signer. Its slots are lost with it, like a restarted signer's.
pub struct MemorySigner {
    keys: BTreeMap<[u8; 33], SecretKey>,
    slots: BTreeMap<([u8; 16], [u8; 33]), SlotState>,
    /// Partial signatures produced, per public nonce (an audit: more than one is a violation).
    signed: BTreeMap<[u8; 66], u32>,
    /// Slots whose nonces a restart lost: never issued again (as the signer service does from
    /// its journal).
    lost: std::collections::BTreeSet<([u8; 16], [u8; 33])>,
}

impl std::fmt::Debug for MemorySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySigner")
            .field(
                "keys",
                &self.keys.keys().map(hex::encode).collect::<Vec<_>>(),
            )
            .field("slots", &self.slots.len())
            .finish()
    }
}

impl MemorySigner {
    /// A signer holding `keys`.
    pub fn new(keys: Vec<SecretKey>) -> Self {
        MemorySigner {
            keys: keys.into_iter().map(|k| (k.public_key(), k)).collect(),
            slots: BTreeMap::new(),
            signed: BTreeMap::new(),
            lost: std::collections::BTreeSet::new(),
        }
    }

    /// Public keys held.
    pub fn public_keys(&self) -> Vec<[u8; 33]> {
        self.keys.keys().copied().collect()
    }

    /// Forget every nonce (a restart). A slot's nonce is not issued again: a request for it is
    /// refused ([`Refused::NonceLost`]), signing with it finds no nonce.
    pub fn restart(&mut self) {
        self.lost.extend(self.slots.keys().copied());
        self.slots.clear();
    }

    /// Most partial signatures produced from one nonce (the discipline says at most 1).
    pub fn max_signatures_per_nonce(&self) -> u32 {
        self.signed.values().copied().max().unwrap_or(0)
    }

    /// Sign a peer attestation.
    ///
    /// # Errors
    /// Unknown key.
    pub fn attest(
        &self,
        key: &[u8; 33],
        peer_id: &[u8],
        expires_at_ms: i64,
        aux_rand: &[u8; 32],
    ) -> Result<[u8; 64], Refused> {
        let sk = self
            .keys
            .get(key)
            .ok_or_else(|| Refused::UnknownKey(hex::encode(key)))?;
        sk.sign_attestation(peer_id, expires_at_ms, aux_rand)
            .map_err(|e| Refused::Invalid(e.to_string()))
    }

    fn check(
        &self,
        key: &[u8; 33],
        context: &SessionContext,
    ) -> Result<(&SecretKey, usize, KeyAggContext), Refused> {
        if !context.batch.is_empty() {
            return Err(Refused::Invalid(
                "a batch context: a signer signs one message per request".into(),
            ));
        }
        let sk = self
            .keys
            .get(key)
            .ok_or_else(|| Refused::UnknownKey(hex::encode(key)))?;
        let index = context
            .signer_keys
            .iter()
            .position(|k| k == key)
            .ok_or(Refused::NotMember)?;
        let key_agg = context
            .key_agg()
            .map_err(|e| Refused::Invalid(format!("context: {e}")))?;
        check_context(self.keys.keys(), &key_agg).map_err(Refused::OwnKey)?;
        Ok((sk, index, key_agg))
    }

    /// A public nonce for (session, key), bound to the context.
    ///
    /// # Errors
    /// [`Refused`].
    pub fn nonce<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
        session_id: &[u8; 16],
        key: &[u8; 33],
        context: &SessionContext,
    ) -> Result<PubNonce, Refused> {
        let (sk, _, key_agg) = self.check(key, context)?;
        let context_hash = context.hash();
        let slot = (*session_id, *key);
        if self.lost.contains(&slot) {
            return Err(Refused::NonceLost);
        }
        if let Some(s) = self.slots.get(&slot) {
            let existing = s.check_nonce_request(&context_hash)?;
            return PubNonce::from_bytes(&existing).map_err(|e| Refused::Invalid(e.to_string()));
        }
        let (sec, public) = nonce_gen(rng, sk, &key_agg, &context.message)
            .map_err(|e| Refused::Invalid(e.to_string()))?;
        self.slots.insert(
            slot,
            SlotState::pending(sec, context_hash, public.to_bytes()),
        );
        Ok(public)
    }

    /// A pooled public nonce for (slot, key), bound to the context's key set, format and tweaks
    /// ([`SessionContext::pool_hash`]); `context.message` must be empty.
    ///
    /// # Errors
    /// [`Refused`].
    pub fn pool_nonce<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
        slot_id: &[u8; 16],
        key: &[u8; 33],
        context: &SessionContext,
    ) -> Result<PubNonce, Refused> {
        if !context.message.is_empty() {
            return Err(Refused::Invalid(
                "a pooled nonce's context carries no message".into(),
            ));
        }
        // Any format: a Lotus pool context has no message either.
        let (sk, _, key_agg) = self.check(key, context)?;
        let pool_hash = context.pool_hash();
        let slot = (*slot_id, *key);
        if self.lost.contains(&slot) {
            return Err(Refused::NonceLost);
        }
        if let Some(s) = self.slots.get(&slot) {
            let existing = s.check_nonce_request(&pool_hash)?;
            return PubNonce::from_bytes(&existing).map_err(|e| Refused::Invalid(e.to_string()));
        }
        let (sec, public) = crate::musig::nonce_gen_pooled(rng, sk, &key_agg)
            .map_err(|e| Refused::Invalid(e.to_string()))?;
        self.slots.insert(
            slot,
            SlotState::pending_pooled(sec, pool_hash, public.to_bytes()),
        );
        Ok(public)
    }

    /// [`MemorySigner::pool_nonce`] when `pooled`, else [`MemorySigner::nonce`] (what a
    /// coordinator's nonce request asks).
    ///
    /// # Errors
    /// [`Refused`].
    pub fn nonce_as<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
        session_id: &[u8; 16],
        key: &[u8; 33],
        context: &SessionContext,
        pooled: bool,
    ) -> Result<PubNonce, Refused> {
        if pooled {
            self.pool_nonce(rng, session_id, key, context)
        } else {
            self.nonce(rng, session_id, key, context)
        }
    }

    /// [`MemorySigner::nonce_as`] for each message of the session `session`
    /// ([`SessionContext::items`]), in message order: what a coordinator asks of its signer.
    ///
    /// # Errors
    /// The first [`Refused`].
    pub fn session_nonces<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        rng: &mut R,
        session: SessionId,
        key: &[u8; 33],
        context: &SessionContext,
        pooled: bool,
    ) -> Result<Vec<PubNonce>, Refused> {
        context
            .items(session)
            .iter()
            .map(|(item, c)| self.nonce_as(rng, &item.0, key, c, pooled))
            .collect()
    }

    /// [`MemorySigner::partial_sign`] for each message of the session whose nonces are filed
    /// under `nonce_session`, given every signer's nonces per message.
    ///
    /// # Errors
    /// The first [`Refused`]; a count of nonce lists that is not the count of messages.
    pub fn session_partial_signs(
        &mut self,
        nonce_session: SessionId,
        key: &[u8; 33],
        context: &SessionContext,
        nonces: &[Vec<PubNonce>],
    ) -> Result<Vec<PartialSignature>, Refused> {
        let items = context.items(nonce_session);
        if items.len() != nonces.len() {
            return Err(Refused::Invalid(format!(
                "{} nonce lists for {} messages",
                nonces.len(),
                items.len()
            )));
        }
        items
            .iter()
            .zip(nonces)
            .map(|((item, c), n)| self.partial_sign(&item.0, key, c, n))
            .collect()
    }

    /// Destroy the unused secret nonce of (session, key) (`ReleaseNonce`): it can never sign.
    /// True when one was destroyed.
    pub fn release(&mut self, session_id: &[u8; 16], key: &[u8; 33]) -> bool {
        match self.slots.get_mut(&(*session_id, *key)) {
            Some(s @ SlotState::Pending { .. }) => s.burn(RELEASED).is_some(),
            _ => false,
        }
    }

    /// A partial signature with the (session, key) nonce, given every signer's public nonce.
    ///
    /// # Errors
    /// [`Refused`].
    pub fn partial_sign(
        &mut self,
        session_id: &[u8; 16],
        key: &[u8; 33],
        context: &SessionContext,
        nonces: &[PubNonce],
    ) -> Result<PartialSignature, Refused> {
        let (_, index, key_agg) = self.check(key, context)?;
        let bytes: Vec<[u8; 66]> = nonces.iter().map(PubNonce::to_bytes).collect();
        let context_hash = context.hash();
        let request = request_hash(session_id, key, &context_hash, &bytes);
        let state = self
            .slots
            .get_mut(&(*session_id, *key))
            .ok_or(Refused::NoNonce)?;
        let own = bytes.get(index).map(<[u8; 66]>::as_slice);
        let bound = state.binding_for(context);
        match state.check_sign_request(&request, &bound, index, own)? {
            SignCheck::Replay(p) => {
                return PartialSignature::from_bytes(&p)
                    .map_err(|e| Refused::Invalid(e.to_string()));
            }
            SignCheck::Fresh => {}
        }
        let sec = state.burn(request).ok_or(Refused::NonceUsed)?;
        let agg = AggNonce::sum(context.format, nonces)
            .map_err(|e| Refused::Invalid(format!("public_nonces: {e}; the nonce is now spent")))?;
        let sk = self
            .keys
            .get(key)
            .ok_or_else(|| Refused::UnknownKey(hex::encode(key)))?;
        let psig = SigningSession::new(&key_agg, &agg, &context.message)
            .and_then(|s| s.sign_at(sec, sk, index))
            .map_err(|e| {
                Refused::Invalid(format!("signing failed: {e}; the nonce is now spent"))
            })?;
        if let Some(own) = bytes.get(index) {
            *self.signed.entry(*own).or_insert(0) += 1;
        }
        if let Some(state) = self.slots.get_mut(&(*session_id, *key)) {
            state.finish(request, psig.to_bytes());
        }
        Ok(psig)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::musig::SignatureFormat;

    fn context(keys: &[[u8; 33]], msg: &[u8]) -> SessionContext {
        let mut keys = keys.to_vec();
        keys.sort_unstable();
        SessionContext {
            signer_keys: keys,
            message: msg.to_vec(),
            format: SignatureFormat::Bip340,
            tweaks: Vec::new(),
            batch: Vec::new(),
        }
    }

    #[test]
    fn one_signature_per_nonce_and_idempotent_retries() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let a = SecretKey::from_bytes(&[1; 32]).unwrap();
        let b = SecretKey::from_bytes(&[2; 32]).unwrap();
        let (pa, pb) = (a.public_key(), b.public_key());
        let mut sa = MemorySigner::new(vec![a]);
        let mut sb = MemorySigner::new(vec![b]);
        let ctx = context(&[pa, pb], b"m");
        let sid = [9u8; 16];
        let na = sa.nonce(&mut rng, &sid, &pa, &ctx).unwrap();
        // Retry: the same nonce.
        assert_eq!(sa.nonce(&mut rng, &sid, &pa, &ctx).unwrap(), na);
        // Another context for the same slot: refused.
        let other = context(&[pa, pb], b"other");
        assert_eq!(
            sa.nonce(&mut rng, &sid, &pa, &other),
            Err(Refused::OtherContext)
        );
        let nb = sb.nonce(&mut rng, &sid, &pb, &ctx).unwrap();
        let nonces: Vec<PubNonce> = ctx
            .signer_keys
            .iter()
            .map(|k| if *k == pa { na } else { nb })
            .collect();
        let p1 = sa.partial_sign(&sid, &pa, &ctx, &nonces).unwrap();
        // Byte-identical retry: the same partial signature, no second signing.
        assert_eq!(sa.partial_sign(&sid, &pa, &ctx, &nonces).unwrap(), p1);
        assert_eq!(sa.max_signatures_per_nonce(), 1);
        // Different nonces for the others: refused forever.
        let fake = sb.nonce(&mut rng, &[8; 16], &pb, &ctx).unwrap();
        let changed: Vec<PubNonce> = nonces
            .iter()
            .map(|n| if *n == nb { fake } else { *n })
            .collect();
        assert_eq!(
            sa.partial_sign(&sid, &pa, &ctx, &changed),
            Err(Refused::DifferentRequest)
        );
        // After a restart, nothing to sign with.
        sa.restart();
        assert_eq!(
            sa.partial_sign(&sid, &pa, &ctx, &nonces),
            Err(Refused::NoNonce)
        );
        // A nonce request after use is refused, not re-issued (while the slot lives).
        let _ = sb.partial_sign(&sid, &pb, &ctx, &nonces).unwrap();
        assert_eq!(sb.nonce(&mut rng, &sid, &pb, &ctx), Err(Refused::NonceUsed));
    }

    #[test]
    fn slot_transitions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let sk = SecretKey::from_bytes(&[3; 32]).unwrap();
        let ctx = KeyAggContext::new(SignatureFormat::Bip340, &[sk.public_key()]).unwrap();
        let (sec, public) = nonce_gen(&mut rng, &sk, &ctx, b"m").unwrap();
        let pn = public.to_bytes();
        let mut s = SlotState::pending(sec, [1; 32], pn);
        // (request, context, own nonce) -> outcome, while pending.
        assert_eq!(
            s.check_sign_request(&[5; 32], &[2; 32], 0, Some(&pn)),
            Err(Refused::ContextDiffers)
        );
        assert_eq!(
            s.check_sign_request(&[5; 32], &[1; 32], 0, Some(&[0; 66])),
            Err(Refused::NotOurNonce(0))
        );
        assert_eq!(
            s.check_sign_request(&[5; 32], &[1; 32], 0, Some(&pn)),
            Ok(SignCheck::Fresh)
        );
        assert!(s.burn([5; 32]).is_some());
        // Burned: nothing comes out again, and no request passes.
        assert!(s.burn([5; 32]).is_none());
        assert_eq!(
            s.check_sign_request(&[5; 32], &[1; 32], 0, Some(&pn)),
            Err(Refused::DifferentRequest)
        );
        s.finish([5; 32], [7; 32]);
        assert_eq!(
            s.check_sign_request(&[5; 32], &[1; 32], 0, Some(&pn)),
            Ok(SignCheck::Replay([7; 32]))
        );
        assert_eq!(s.check_nonce_request(&[1; 32]), Err(Refused::NonceUsed));
    }

    #[test]
    fn pooled_nonces_sign_any_message_once_and_only_for_their_key_set() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let a = SecretKey::from_bytes(&[1; 32]).unwrap();
        let b = SecretKey::from_bytes(&[2; 32]).unwrap();
        let c = SecretKey::from_bytes(&[4; 32]).unwrap();
        let (pa, pb, pc) = (a.public_key(), b.public_key(), c.public_key());
        let mut sa = MemorySigner::new(vec![a]);
        let mut sb = MemorySigner::new(vec![b]);
        let slot = [3u8; 16];
        let pool = context(&[pa, pb], b"");
        // A message in the pool context is refused.
        assert!(matches!(
            sa.pool_nonce(&mut rng, &slot, &pa, &context(&[pa, pb], b"m")),
            Err(Refused::Invalid(_))
        ));
        let na = sa.pool_nonce(&mut rng, &slot, &pa, &pool).unwrap();
        assert_eq!(sa.pool_nonce(&mut rng, &slot, &pa, &pool).unwrap(), na);
        // The same slot id asked as an ordinary session nonce: another binding, refused.
        assert_eq!(
            sa.nonce(&mut rng, &slot, &pa, &pool),
            Err(Refused::OtherContext)
        );
        let nb = sb.pool_nonce(&mut rng, &slot, &pb, &pool).unwrap();
        let nonces: Vec<PubNonce> = pool
            .signer_keys
            .iter()
            .map(|k| if *k == pa { na } else { nb })
            .collect();
        // Another key set or format cannot use the slot.
        let other_set = context(&[pa, pc], b"m1");
        assert!(sa.partial_sign(&slot, &pa, &other_set, &nonces).is_err());
        let mut lotus = context(&[pa, pb], b"m1");
        lotus.format = SignatureFormat::Lotus;
        lotus.message = vec![1; 32];
        assert_eq!(
            sa.partial_sign(&slot, &pa, &lotus, &nonces),
            Err(Refused::ContextDiffers)
        );
        // A message chosen after the nonces: signs, and the signature verifies.
        let m1 = context(&[pa, pb], b"m1");
        let p1 = sa.partial_sign(&slot, &pa, &m1, &nonces).unwrap();
        let p2 = sb.partial_sign(&slot, &pb, &m1, &nonces).unwrap();
        let ka = m1.key_agg().unwrap();
        let agg = AggNonce::sum(m1.format, &nonces).unwrap();
        let session = SigningSession::new(&ka, &agg, &m1.message).unwrap();
        let ordered = if m1.signer_keys[0] == pa {
            [p1, p2]
        } else {
            [p2, p1]
        };
        let sig = session.aggregate(&ordered).unwrap();
        crate::musig::verify(m1.format, &ka.output_key(), &m1.message, &sig).unwrap();
        // The retry replays; a second message never signs with the slot.
        assert_eq!(sa.partial_sign(&slot, &pa, &m1, &nonces).unwrap(), p1);
        let m2 = context(&[pa, pb], b"m2");
        assert_eq!(
            sa.partial_sign(&slot, &pa, &m2, &nonces),
            Err(Refused::DifferentRequest)
        );
        assert_eq!(sa.max_signatures_per_nonce(), 1);
        // Lost on restart.
        sb.restart();
        assert_eq!(
            sb.partial_sign(&slot, &pb, &m2, &nonces),
            Err(Refused::NoNonce)
        );
    }

    use rand::SeedableRng as _;
}
