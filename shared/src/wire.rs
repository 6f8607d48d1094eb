//! Peer-to-peer wire messages (DESIGN §5): one canonical binary encoding (protobuf, see
//! `proto/musig2/v1/p2p.proto`, accepted only when re-encoding reproduces the received bytes)
//! and stateless validation into typed messages. Stateful checks (phase, sequence windows,
//! membership, reputation) belong to the coordinator; the helpers for sequence windows live
//! here so that every node applies the same rule.
//!
//! Decoding never panics on any input (property-tested in `tests/wire_props.rs`).

use prost::Message as _;
use sha2::{Digest, Sha256};

use crate::election::{ElectionMethod, SessionId};
use crate::musig::{
    self, KeyAggContext, PartialSignature, PubNonce, Signature, SignatureFormat, Tweak,
};

mod attestation;
mod context;
mod memo;
pub use attestation::{ATTESTATION_TAG, Attestation, VerifiedAttestations, attestation_digest};
pub use context::{SessionContext, election_from_pb, election_to_pb, format_from_pb, format_to_pb};

/// Generated protobuf types of package `musig2.v1` (shared types and peer-to-peer messages).
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::indexing_slicing
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/musig2.v1.rs"));
}

/// Largest direct message (a frame on a lane between two coordinators), bytes.
pub const MAX_DIRECT_MESSAGE_BYTES: usize = 100_000;
/// Largest message on GossipSub, bytes.
pub const MAX_GOSSIP_MESSAGE_BYTES: usize = 10_000;
/// Allowed clock difference between sender and receiver, ms (±5 min).
pub const MAX_TIMESTAMP_SKEW_MS: i64 = 5 * 60 * 1000;
/// Default largest jump of a sequence number.
pub const DEFAULT_MAX_SEQUENCE_GAP: u64 = 100;
/// Most signers in a session.
pub const MAX_SIGNERS: usize = 100;
/// Longest BIP340 message, bytes.
pub const MAX_BIP340_MESSAGE_BYTES: usize = 1024;
/// Most messages in a batch session (issue 17).
pub const MAX_BATCH_MESSAGES: usize = 256;
/// Most bytes of all a batch session's messages together: the announcement, with 100 keys,
/// stays well inside [`MAX_DIRECT_MESSAGE_BYTES`] (and the DHT's record limit, the same).
pub const MAX_BATCH_BYTES: usize = 65_536;
/// Most values one contribution round of a batch session holds: signers × messages (100
/// signers and 64 messages, or 25 signers and 256). Bounds what one session costs a node in
/// memory and in its store (found in review: 100 signers × 256 messages made a session's
/// nonces alone 3.2 MB).
pub const MAX_SESSION_VALUES: usize = 6_400;
/// Most tweaks on a session.
pub const MAX_TWEAKS: usize = 8;
/// Longest human-readable reason, bytes.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest broadcast reference, bytes.
pub const MAX_REFERENCE_BYTES: usize = 128;
/// Longest advertisement description, bytes.
pub const MAX_DESCRIPTION_BYTES: usize = 256;
/// Longest binary peer id, bytes.
pub const MAX_PEER_ID_BYTES: usize = 128;
/// Longest advertisement lifetime, ms (24 h).
pub const MAX_ADVERTISEMENT_TTL_MS: i64 = 24 * 3600 * 1000;
/// Most keys one peer may speak for.
pub const MAX_KEYS_PER_PEER: usize = 10;
/// Longest lifetime of a peer attestation, ms (30 days): signers refuse to attest further ahead,
/// and verifiers refuse an attestation whose expiry lies more than this (plus
/// [`MAX_TIMESTAMP_SKEW_MS`]) ahead of the time of checking, so a forged or leaked long-lived
/// attestation is worthless.
pub const MAX_ATTESTATION_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// Why a message was rejected. [`WireError::reason`] gives a stable label for metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Larger than the transport's limit.
    #[error("message of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Bytes received.
        size: usize,
        /// Limit.
        limit: usize,
    },
    /// Not valid protobuf.
    #[error("undecodable message: {0}")]
    Decode(String),
    /// Valid protobuf but not the canonical encoding (unknown fields, field order, defaults).
    #[error("message is not canonically encoded")]
    NonCanonical,
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A field has the wrong length.
    #[error("{field} must be {expected} bytes, got {actual}")]
    Length {
        /// Field.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A field is longer than allowed.
    #[error("{field} exceeds {max}")]
    TooLong {
        /// Field.
        field: &'static str,
        /// Limit (bytes or entries).
        max: usize,
    },
    /// A key or nonce is not a valid curve point.
    #[error("{0} is not a valid curve point")]
    InvalidPoint(&'static str),
    /// A scalar is not below the group order.
    #[error("{0} is not a valid scalar")]
    InvalidScalar(&'static str),
    /// An enum field is unspecified or unknown.
    #[error("{0} has an unspecified or unknown value")]
    InvalidEnum(&'static str),
    /// Keys are not sorted ascending or repeat.
    #[error("signer keys must be sorted ascending without duplicates")]
    UnsortedKeys,
    /// The timestamp is too far from the receiver's clock.
    #[error("timestamp is {skew_ms} ms away from local time (limit ±{MAX_TIMESTAMP_SKEW_MS} ms)")]
    TimestampSkew {
        /// Signed difference, ms.
        skew_ms: i64,
    },
    /// Expired, or an expiry that is not after creation.
    #[error("{0} is expired or out of range")]
    Expired(&'static str),
    /// The announced session id does not match its derivation.
    #[error("session id does not match the announced fields")]
    SessionIdMismatch,
    /// The sender of an announcement is not one of the session's signers.
    #[error("the sender key is not a signer of the session")]
    NotMember,
    /// A sequence number of zero.
    #[error("sequence numbers start at 1")]
    ZeroSequence,
    /// The session context cannot be signed (bad tweak, message length for the format).
    #[error("invalid session context: {0}")]
    Context(musig::Error),
    /// An attestation does not verify or is expired.
    #[error("invalid attestation: {0}")]
    Attestation(&'static str),
    /// A batch of messages that is malformed or not allowed where it appears.
    #[error("batch_messages: {0}")]
    Batch(&'static str),
}

impl WireError {
    /// Why a peer is refused for this error.
    pub fn kind(&self) -> crate::security::Reason {
        use crate::security::Reason;
        match self {
            WireError::TooLarge { .. } => Reason::TooLarge,
            WireError::Decode(_) => Reason::Decode,
            WireError::NonCanonical => Reason::NonCanonical,
            WireError::Missing(_) => Reason::MissingField,
            WireError::Length { .. } => Reason::Length,
            WireError::TooLong { .. } => Reason::TooLong,
            WireError::InvalidPoint(_) => Reason::InvalidPoint,
            WireError::InvalidScalar(_) => Reason::InvalidScalar,
            WireError::InvalidEnum(_) => Reason::InvalidEnum,
            WireError::UnsortedKeys => Reason::UnsortedKeys,
            WireError::TimestampSkew { .. } => Reason::TimestampSkew,
            WireError::Expired(_) => Reason::Expired,
            WireError::SessionIdMismatch => Reason::SessionIdMismatch,
            WireError::NotMember => Reason::NotMember,
            WireError::ZeroSequence => Reason::ZeroSequence,
            WireError::Context(_) => Reason::Context,
            WireError::Attestation(_) => Reason::Attestation,
            WireError::Batch(_) => Reason::Context,
        }
    }

    /// Stable short label (for metrics and peer scoring).
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }
}

fn arr<const N: usize>(field: &'static str, b: &[u8]) -> Result<[u8; N], WireError> {
    b.try_into().map_err(|_| WireError::Length {
        field,
        expected: N,
        actual: b.len(),
    })
}

/// One value per message of a session: 1 to [`MAX_BATCH_MESSAGES`] values of `N` bytes,
/// concatenated.
fn chunks<'a, const N: usize>(
    field: &'static str,
    b: &'a [u8],
) -> Result<impl Iterator<Item = &'a [u8; N]>, WireError> {
    let (values, rest) = b.as_chunks::<N>();
    if values.is_empty() || !rest.is_empty() {
        return Err(WireError::Length {
            field,
            expected: N,
            actual: b.len(),
        });
    }
    if values.len() > MAX_BATCH_MESSAGES {
        return Err(WireError::TooLong {
            field,
            max: MAX_BATCH_MESSAGES,
        });
    }
    Ok(values.iter())
}

/// A compressed point that parses (on the curve, valid prefix).
///
/// Every message names its sender's key and every session context its signers' keys: the
/// same few keys, again and again, and parsing one takes a square root (5 µs; 3 % of a
/// coordinator's and 4 % of a signer's CPU at 48 sessions in flight, by `perf`). Keys that
/// parsed are remembered: only successes, exact bytes, at most 4,096, then it starts
/// over (a flood of distinct keys costs what it did before, and no more memory).
fn point(field: &'static str, b: &[u8]) -> Result<[u8; 33], WireError> {
    static VALID: memo::Memo<[u8; 33], ()> = memo::Memo::new(4096);
    let k: [u8; 33] = arr(field, b)?;
    if VALID.get(&k).is_some() {
        return Ok(k);
    }
    secp256k1::PublicKey::from_byte_array_compressed(k)
        .map_err(|_| WireError::InvalidPoint(field))?;
    VALID.insert(k, ());
    Ok(k)
}

fn text(field: &'static str, s: &str, max: usize) -> Result<String, WireError> {
    if s.len() > max {
        return Err(WireError::TooLong { field, max });
    }
    Ok(s.to_owned())
}

/// Decode canonical protobuf bytes with a size limit.
///
/// # Errors
/// [`WireError::TooLarge`], [`WireError::Decode`], [`WireError::NonCanonical`].
pub fn decode_canonical<M: prost::Message + Default>(
    bytes: &[u8],
    limit: usize,
) -> Result<M, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let m = M::decode(bytes).map_err(|e| WireError::Decode(e.to_string()))?;
    if m.encode_to_vec() != bytes {
        return Err(WireError::NonCanonical);
    }
    Ok(m)
}

/// The header every message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Session (all zeros for advertisements).
    pub session_id: SessionId,
    /// Signer key the sender speaks for.
    pub sender: [u8; 33],
    /// Per-(sender, session) sequence number, from 1.
    pub sequence: u64,
    /// Send time, ms since the epoch.
    pub timestamp_ms: i64,
}

/// SESSION_ANNOUNCE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// What is signed.
    pub context: SessionContext,
    /// Election method.
    pub election_method: ElectionMethod,
    /// Creation time (session id input).
    pub created_at_ms: i64,
    /// Session id entropy.
    pub entropy: [u8; 16],
    /// Expiry.
    pub expires_at_ms: i64,
    /// A nonce-pool slot: no message, nonces only.
    pub pool_slot: bool,
    /// A one-round session using the creator's pool slot with this id.
    pub uses_pool_slot: Option<SessionId>,
    /// With `uses_pool_slot`: the slot's public nonces, in key order.
    pub pool_nonces: Vec<PubNonce>,
}

/// Why a session was aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortCode {
    /// Closed on request.
    Closed,
    /// Invalid partial signature (culprits named).
    InvalidPartialSignature,
    /// Invalid nonce (culprits named).
    InvalidNonce,
    /// Timed out.
    Timeout,
    /// A signer refused.
    SignerRefused,
}

impl AbortCode {
    /// Its protobuf value.
    pub fn to_pb(self) -> pb::AbortCode {
        match self {
            AbortCode::Closed => pb::AbortCode::Closed,
            AbortCode::InvalidPartialSignature => pb::AbortCode::InvalidPartialSignature,
            AbortCode::InvalidNonce => pb::AbortCode::InvalidNonce,
            AbortCode::Timeout => pb::AbortCode::Timeout,
            AbortCode::SignerRefused => pb::AbortCode::SignerRefused,
        }
    }
}

/// SESSION_ABORT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Abort {
    /// Machine-readable reason.
    pub code: AbortCode,
    /// Human-readable reason.
    pub reason: String,
    /// Blamed keys.
    pub culprits: Vec<[u8; 33]>,
}

/// A signer advertisement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertisement {
    /// Accepted transaction types (distinct, non-empty).
    pub transaction_types: Vec<pb::TransactionType>,
    /// Minimum amount.
    pub min_amount: u64,
    /// Maximum amount (0 = none).
    pub max_amount: u64,
    /// Expiry.
    pub expires_at_ms: i64,
    /// Free text.
    pub description: String,
}

/// A matchmaking signing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRequest {
    /// Request id.
    pub request_id: [u8; 16],
    /// Proposed context.
    pub context: SessionContext,
    /// Transaction type.
    pub transaction_type: pb::TransactionType,
    /// Amount.
    pub amount: u64,
    /// Expiry.
    pub expires_at_ms: i64,
}

/// Message bodies (DESIGN §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// SESSION_ANNOUNCE.
    Announce(Box<Announce>),
    /// SESSION_JOIN.
    Join,
    /// NONCE_SHARE: one nonce per message of the session (one, or a batch's count).
    NonceShare(Vec<PubNonce>),
    /// PARTIAL_SIG_SHARE: one partial signature per message of the session.
    PartialSigShare(Vec<PartialSignature>),
    /// SESSION_ABORT.
    Abort(Abort),
    /// VALIDATION_ERROR.
    ValidationError {
        /// Rejected sequence.
        rejected_sequence: u64,
        /// Reason.
        reason: String,
    },
    /// SIGNATURE_FINALIZED: one signature per message of the session.
    SignatureFinalized(Vec<Signature>),
    /// BROADCAST_CONFIRMED.
    BroadcastConfirmed {
        /// Application reference.
        reference: String,
        /// Failover attempt.
        attempt: u32,
    },
    /// Signer advertisement.
    Advertisement(Advertisement),
    /// Matchmaking request.
    SigningRequest(Box<SigningRequest>),
    /// Matchmaking answer.
    SigningResponse {
        /// Request id.
        request_id: [u8; 16],
        /// Accepted.
        accept: bool,
    },
    /// Peer introduction: attestations for the keys the peer speaks for (signatures are
    /// verified by the receiver, which knows the peer id).
    Hello(Vec<pb::PeerAttestation>),
}

impl Body {
    /// Stable name of the message type (DESIGN §5 names).
    pub fn kind(&self) -> &'static str {
        match self {
            Body::Announce(_) => "SESSION_ANNOUNCE",
            Body::Join => "SESSION_JOIN",
            Body::NonceShare(_) => "NONCE_SHARE",
            Body::PartialSigShare(_) => "PARTIAL_SIG_SHARE",
            Body::Abort(_) => "SESSION_ABORT",
            Body::ValidationError { .. } => "VALIDATION_ERROR",
            Body::SignatureFinalized(_) => "SIGNATURE_FINALIZED",
            Body::BroadcastConfirmed { .. } => "BROADCAST_CONFIRMED",
            Body::Advertisement(_) => "SIGNER_ADVERTISEMENT",
            Body::SigningRequest(_) => "SIGNING_REQUEST",
            Body::SigningResponse { .. } => "SIGNING_RESPONSE",
            Body::Hello(_) => "PEER_HELLO",
        }
    }
}

/// A statelessly validated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Header.
    pub header: Header,
    /// Body.
    pub body: Body,
}

impl Message {
    /// Decode canonical bytes and validate them against the receiver's clock.
    ///
    /// # Errors
    /// Any [`WireError`].
    pub fn decode(bytes: &[u8], limit: usize, now_ms: i64) -> Result<Self, WireError> {
        Self::from_pb(&decode_canonical::<pb::WireMessage>(bytes, limit)?, now_ms)
    }

    /// Validate a decoded message.
    ///
    /// # Errors
    /// Any [`WireError`] naming the field.
    pub fn from_pb(m: &pb::WireMessage, now_ms: i64) -> Result<Self, WireError> {
        use pb::wire_message::Body as B;
        let session_id = SessionId(arr("session_id", &m.session_id)?);
        let sender = point("sender_key", &m.sender_key)?;
        if m.sequence == 0 {
            return Err(WireError::ZeroSequence);
        }
        let skew_ms = m.timestamp_ms.saturating_sub(now_ms);
        if skew_ms.saturating_abs() > MAX_TIMESTAMP_SKEW_MS {
            return Err(WireError::TimestampSkew { skew_ms });
        }
        let header = Header {
            session_id,
            sender,
            sequence: m.sequence,
            timestamp_ms: m.timestamp_ms,
        };
        let body = match m.body.as_ref().ok_or(WireError::Missing("body"))? {
            B::Announce(a) => {
                let pb_context = a
                    .context
                    .as_ref()
                    .ok_or(WireError::Missing("announce.context"))?;
                let context = if a.pool_slot {
                    SessionContext::from_pb_pool(pb_context)?
                } else {
                    SessionContext::from_pb_session(pb_context)?
                };
                let uses_pool_slot = match a.uses_pool_slot.as_slice() {
                    [] => None,
                    _ if a.pool_slot => {
                        return Err(WireError::Decode(
                            "announce: pool_slot and uses_pool_slot are exclusive".into(),
                        ));
                    }
                    b => Some(SessionId(arr("uses_pool_slot", b)?)),
                };
                let pool_nonces = a
                    .pool_nonces
                    .iter()
                    .map(|n| {
                        PubNonce::from_slice(n).map_err(|_| WireError::InvalidPoint("pool_nonces"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                if uses_pool_slot.is_some() && !context.batch.is_empty() {
                    return Err(WireError::Batch("a one-round session signs one message"));
                }
                if uses_pool_slot.is_some() == pool_nonces.is_empty()
                    || (!pool_nonces.is_empty() && pool_nonces.len() != context.signer_keys.len())
                {
                    return Err(WireError::Decode(
                        "announce: pool_nonces holds one nonce per signer, with uses_pool_slot only"
                            .into(),
                    ));
                }
                let entropy: [u8; 16] = arr("entropy", &a.entropy)?;
                let expected = context.session_id(a.created_at_ms, &entropy);
                if expected != session_id {
                    return Err(WireError::SessionIdMismatch);
                }
                if a.expires_at_ms <= now_ms || a.expires_at_ms <= a.created_at_ms {
                    return Err(WireError::Expired("announce.expires_at_ms"));
                }
                if !context.signer_keys.contains(&sender) {
                    return Err(WireError::NotMember);
                }
                Body::Announce(Box::new(Announce {
                    context,
                    election_method: election_from_pb(
                        a.election_method,
                        ElectionMethod::Lexicographic,
                    )?,
                    created_at_ms: a.created_at_ms,
                    entropy,
                    pool_slot: a.pool_slot,
                    uses_pool_slot,
                    pool_nonces,
                    expires_at_ms: a.expires_at_ms,
                }))
            }
            B::Join(_) => Body::Join,
            B::NonceShare(n) => Body::NonceShare(
                chunks::<66>("public_nonce", &n.public_nonce)?
                    .map(|b| {
                        PubNonce::from_bytes(b).map_err(|_| WireError::InvalidPoint("public_nonce"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            B::PartialSigShare(p) => Body::PartialSigShare(
                chunks::<32>("partial_signature", &p.partial_signature)?
                    .map(|b| {
                        PartialSignature::from_bytes(b)
                            .map_err(|_| WireError::InvalidScalar("partial_signature"))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            B::Abort(a) => Body::Abort(Abort {
                code: match pb::AbortCode::try_from(a.code) {
                    Ok(pb::AbortCode::Closed) => AbortCode::Closed,
                    Ok(pb::AbortCode::InvalidPartialSignature) => {
                        AbortCode::InvalidPartialSignature
                    }
                    Ok(pb::AbortCode::InvalidNonce) => AbortCode::InvalidNonce,
                    Ok(pb::AbortCode::Timeout) => AbortCode::Timeout,
                    Ok(pb::AbortCode::SignerRefused) => AbortCode::SignerRefused,
                    _ => return Err(WireError::InvalidEnum("abort.code")),
                },
                reason: text("abort.reason", &a.reason, MAX_REASON_BYTES)?,
                culprits: {
                    if a.culprits.len() > MAX_SIGNERS {
                        return Err(WireError::TooLong {
                            field: "abort.culprits",
                            max: MAX_SIGNERS,
                        });
                    }
                    a.culprits
                        .iter()
                        .map(|k| point("abort.culprits", k))
                        .collect::<Result<_, _>>()?
                },
            }),
            B::ValidationError(v) => Body::ValidationError {
                rejected_sequence: v.rejected_sequence,
                reason: text("validation_error.reason", &v.reason, MAX_REASON_BYTES)?,
            },
            B::SignatureFinalized(s) => Body::SignatureFinalized(
                chunks::<64>("signature", &s.signature)?
                    .map(|b| Signature(*b))
                    .collect(),
            ),
            B::BroadcastConfirmed(b) => Body::BroadcastConfirmed {
                reference: text(
                    "broadcast_reference",
                    &b.broadcast_reference,
                    MAX_REFERENCE_BYTES,
                )?,
                attempt: b.attempt,
            },
            B::Advertisement(a) => {
                if a.transaction_types.is_empty() {
                    return Err(WireError::Missing("transaction_types"));
                }
                if a.transaction_types.len() > 6 {
                    return Err(WireError::TooLong {
                        field: "transaction_types",
                        max: 6,
                    });
                }
                let mut types = Vec::with_capacity(a.transaction_types.len());
                for t in &a.transaction_types {
                    let t = match pb::TransactionType::try_from(*t) {
                        Ok(pb::TransactionType::Unspecified) | Err(_) => {
                            return Err(WireError::InvalidEnum("transaction_types"));
                        }
                        Ok(t) => t,
                    };
                    if types.contains(&t) {
                        return Err(WireError::InvalidEnum("transaction_types (duplicate)"));
                    }
                    types.push(t);
                }
                if a.max_amount != 0 && a.max_amount < a.min_amount {
                    return Err(WireError::InvalidScalar("max_amount below min_amount"));
                }
                if a.expires_at_ms <= now_ms
                    || a.expires_at_ms > now_ms.saturating_add(MAX_ADVERTISEMENT_TTL_MS)
                {
                    return Err(WireError::Expired("advertisement.expires_at_ms"));
                }
                Body::Advertisement(Advertisement {
                    transaction_types: types,
                    min_amount: a.min_amount,
                    max_amount: a.max_amount,
                    expires_at_ms: a.expires_at_ms,
                    description: text("description", &a.description, MAX_DESCRIPTION_BYTES)?,
                })
            }
            B::SigningRequest(r) => {
                let context = SessionContext::from_pb(
                    r.context
                        .as_ref()
                        .ok_or(WireError::Missing("signing_request.context"))?,
                )?;
                let transaction_type = match pb::TransactionType::try_from(r.transaction_type) {
                    Ok(pb::TransactionType::Unspecified) | Err(_) => {
                        return Err(WireError::InvalidEnum("transaction_type"));
                    }
                    Ok(t) => t,
                };
                if r.expires_at_ms <= now_ms {
                    return Err(WireError::Expired("signing_request.expires_at_ms"));
                }
                Body::SigningRequest(Box::new(SigningRequest {
                    request_id: arr("request_id", &r.request_id)?,
                    context,
                    transaction_type,
                    amount: r.amount,
                    expires_at_ms: r.expires_at_ms,
                }))
            }
            B::Hello(h) => {
                if h.attestations.is_empty() || h.attestations.len() > MAX_KEYS_PER_PEER {
                    return Err(WireError::TooLong {
                        field: "hello.attestations (1 to 10)",
                        max: MAX_KEYS_PER_PEER,
                    });
                }
                for a in &h.attestations {
                    point("hello.attestations.signer_key", &a.signer_key)?;
                    arr::<64>("hello.attestations.signature", &a.signature)?;
                }
                Body::Hello(h.attestations.clone())
            }
            B::SigningResponse(r) => Body::SigningResponse {
                request_id: arr("request_id", &r.request_id)?,
                accept: r.accept,
            },
        };
        Ok(Message { header, body })
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::WireMessage {
        use pb::wire_message::Body as B;
        let body = match &self.body {
            Body::Announce(a) => B::Announce(pb::SessionAnnounce {
                context: Some(a.context.to_pb()),
                election_method: election_to_pb(a.election_method) as i32,
                created_at_ms: a.created_at_ms,
                entropy: a.entropy.to_vec(),
                expires_at_ms: a.expires_at_ms,
                pool_slot: a.pool_slot,
                uses_pool_slot: a.uses_pool_slot.map(|s| s.0.to_vec()).unwrap_or_default(),
                pool_nonces: a
                    .pool_nonces
                    .iter()
                    .map(|n| n.to_bytes().to_vec())
                    .collect(),
            }),
            Body::Join => B::Join(pb::SessionJoin {}),
            Body::NonceShare(n) => B::NonceShare(pb::NonceShare {
                public_nonce: n.iter().flat_map(PubNonce::to_bytes).collect(),
            }),
            Body::PartialSigShare(p) => B::PartialSigShare(pb::PartialSigShare {
                partial_signature: p.iter().flat_map(PartialSignature::to_bytes).collect(),
            }),
            Body::Abort(a) => B::Abort(pb::SessionAbort {
                code: a.code.to_pb() as i32,
                reason: a.reason.clone(),
                culprits: a.culprits.iter().map(|k| k.to_vec()).collect(),
            }),
            Body::ValidationError {
                rejected_sequence,
                reason,
            } => B::ValidationError(pb::ValidationError {
                rejected_sequence: *rejected_sequence,
                reason: reason.clone(),
            }),
            Body::SignatureFinalized(s) => B::SignatureFinalized(pb::SignatureFinalized {
                signature: s.iter().flat_map(|s| s.0).collect(),
            }),
            Body::BroadcastConfirmed { reference, attempt } => {
                B::BroadcastConfirmed(pb::BroadcastConfirmation {
                    broadcast_reference: reference.clone(),
                    attempt: *attempt,
                })
            }
            Body::Advertisement(a) => B::Advertisement(pb::SignerAdvertisement {
                transaction_types: a.transaction_types.iter().map(|t| *t as i32).collect(),
                min_amount: a.min_amount,
                max_amount: a.max_amount,
                expires_at_ms: a.expires_at_ms,
                description: a.description.clone(),
            }),
            Body::SigningRequest(r) => B::SigningRequest(pb::SigningRequest {
                request_id: r.request_id.to_vec(),
                context: Some(r.context.to_pb()),
                transaction_type: r.transaction_type as i32,
                amount: r.amount,
                expires_at_ms: r.expires_at_ms,
            }),
            Body::Hello(a) => B::Hello(pb::PeerHello {
                attestations: a.clone(),
            }),
            Body::SigningResponse { request_id, accept } => {
                B::SigningResponse(pb::SigningResponse {
                    request_id: request_id.to_vec(),
                    accept: *accept,
                })
            }
        };
        pb::WireMessage {
            session_id: self.header.session_id.0.to_vec(),
            sender_key: self.header.sender.to_vec(),
            sequence: self.header.sequence,
            timestamp_ms: self.header.timestamp_ms,
            body: Some(body),
        }
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Vec<u8> {
        self.to_pb().encode_to_vec()
    }
}

/// Outcome of checking a sequence number against the last accepted one.
///
/// A message is accepted iff `last < seq <= last + max_gap` (first value 1, `last` = 0).
pub fn sequence_ok(last: u64, seq: u64, max_gap: u64) -> bool {
    seq > last && seq <= last.saturating_add(max_gap)
}
