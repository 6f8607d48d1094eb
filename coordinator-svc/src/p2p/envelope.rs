//! Signed envelopes and DHT records: the checks every byte string from a peer goes through
//! before any session logic sees it. Pure functions of (bytes, expected sender, now), so they
//! can be fuzzed and tested without a swarm.

use libp2p_identity::{self as identity, PeerId};
use shared::election::SessionId;
use shared::security::Reason;
use shared::wire::{self, Body, MAX_DIRECT_MESSAGE_BYTES, Message, VerifiedAttestations, pb};

pub use super::names::{
    ENVELOPE_TAG, SESSION_KEY_PREFIX, SESSION_RESOURCE_TYPE, SIGNER_KEY_PREFIX,
};

/// A refusal: why (typed; its label is the metric label and maps to an offence) and a detail
/// for the sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub Reason, pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl From<wire::WireError> for Refusal {
    fn from(e: wire::WireError) -> Self {
        Refusal(e.kind(), e.to_string())
    }
}

/// Sign `message` as the peer `keypair` speaking for the key `attestation` attests: the
/// encoding every direct message, gossip message and DHT record carries.
///
/// # Errors
/// The key pair cannot sign (not for Ed25519 or secp256k1 peer keys).
pub fn seal(
    keypair: &identity::Keypair,
    message: &pb::WireMessage,
    attestation: pb::PeerAttestation,
) -> Result<Vec<u8>, identity::SigningError> {
    use prost::Message as _;
    let payload = message.encode_to_vec();
    let signature = keypair.sign(&[ENVELOPE_TAG, payload.as_slice()].concat())?;
    Ok(pb::SignedEnvelope {
        payload,
        peer_public_key: keypair.public().encode_protobuf(),
        signature,
        attestation: Some(attestation),
    }
    .encode_to_vec())
}

/// Check an envelope: canonical, signed by the peer whose key it carries (and, for direct and
/// gossip messages, the peer that sent it), a valid message, attested for its sender key.
/// `expected = None` is a DHT record: judged by its expiry instead of the ±5 min window.
///
/// # Errors
/// The first check that fails, as a [`Refusal`].
pub fn open(
    bytes: &[u8],
    expected: Option<PeerId>,
    now: i64,
) -> Result<(PeerId, Message), Refusal> {
    open_with(bytes, expected, now, &mut VerifiedAttestations::default())
}

/// [`open`], skipping the signature check of an attestation `verified` holds (a node keeps
/// one: every message of a peer carries the same attestation).
///
/// # Errors
/// As [`open`].
pub fn open_with(
    bytes: &[u8],
    expected: Option<PeerId>,
    now: i64,
    verified: &mut VerifiedAttestations,
) -> Result<(PeerId, Message), Refusal> {
    let env: pb::SignedEnvelope = wire::decode_canonical(bytes, MAX_DIRECT_MESSAGE_BYTES)?;
    let pk = identity::PublicKey::try_decode_protobuf(&env.peer_public_key).map_err(|_| {
        Refusal(
            Reason::BadEnvelope,
            "peer public key does not decode".into(),
        )
    })?;
    let pid = pk.to_peer_id();
    if expected.is_some_and(|p| p != pid) {
        return Err(Refusal(
            Reason::BadEnvelope,
            "envelope key is not the sending peer's".into(),
        ));
    }
    if !pk.verify(
        &[ENVELOPE_TAG, env.payload.as_slice()].concat(),
        &env.signature,
    ) {
        return Err(Refusal(
            Reason::InvalidSignature,
            "envelope signature does not verify".into(),
        ));
    }
    let pbm: pb::WireMessage = wire::decode_canonical(&env.payload, MAX_DIRECT_MESSAGE_BYTES)?;
    let msg = if expected.is_some() {
        Message::from_pb(&pbm, now)?
    } else {
        // A DHT record (no sending peer): it may be older than the ±5 min window; it is
        // valid while its announcement or advertisement has not expired.
        let msg = Message::from_pb(&pbm, pbm.timestamp_ms)?;
        let expires = match &msg.body {
            Body::Announce(a) => a.expires_at_ms,
            Body::Advertisement(a) => a.expires_at_ms,
            _ => {
                return Err(Refusal(
                    Reason::BadRecord,
                    "only announcements and advertisements are stored".into(),
                ));
            }
        };
        if expires <= now {
            return Err(Refusal(Reason::Expired, "the record has expired".into()));
        }
        msg
    };
    let att = env.attestation.as_ref().ok_or(Refusal(
        Reason::Unattested,
        "no attestation for the sender key".into(),
    ))?;
    let att = verified
        .verify_pb(att, &pid.to_bytes(), now)
        .map_err(|e| Refusal(Reason::Unattested, e.to_string()))?;
    if att.signer_key != msg.header.sender {
        return Err(Refusal(
            Reason::Unattested,
            "attestation is for another key".into(),
        ));
    }
    Ok((pid, msg))
}

/// A DHT record must be a valid, signed, attested announcement stored under its own session id
/// (`musig2-session:<id>`), or an advertisement stored under its own key (`musig2-signer:<key>`).
///
/// # Errors
/// A [`Refusal`] (`bad_record` and the envelope's refusals).
pub fn validate_record(key: &[u8], value: &[u8], now: i64) -> Result<(), Refusal> {
    validate_record_in(
        SESSION_RESOURCE_TYPE,
        key,
        value,
        now,
        &mut VerifiedAttestations::default(),
    )
}

/// [`validate_record`] with session announcements under `resource_type` (`sessionResourceType`)
/// and the node's attestations verified before.
///
/// # Errors
/// A [`Refusal`] (`bad_record` and the envelope's refusals).
pub fn validate_record_in(
    resource_type: &str,
    key: &[u8],
    value: &[u8],
    now: i64,
    verified: &mut VerifiedAttestations,
) -> Result<(), Refusal> {
    let key = std::str::from_utf8(key)
        .map_err(|_| Refusal(Reason::BadRecord, "key is not text".into()))?;
    if let Some(hex_key) = key.strip_prefix(SIGNER_KEY_PREFIX) {
        let (_, msg) = open_with(value, None, now, verified)?;
        if hex::encode(msg.header.sender) != hex_key || !matches!(msg.body, Body::Advertisement(_))
        {
            return Err(Refusal(
                Reason::BadRecord,
                "record value is not this key's advertisement".into(),
            ));
        }
        return Ok(());
    }
    let hex_id = key
        .strip_prefix(resource_type)
        .and_then(|k| k.strip_prefix(':'))
        .ok_or(Refusal(Reason::BadRecord, "unknown key namespace".into()))?;
    let id = SessionId::from_hex(hex_id)
        .map_err(|_| Refusal(Reason::BadRecord, "bad session id".into()))?;
    let (_, msg) = open_with(value, None, now, verified)?;
    if msg.header.session_id != id || !matches!(msg.body, Body::Announce(_)) {
        return Err(Refusal(
            Reason::BadRecord,
            "record value is not this session's announcement".into(),
        ));
    }
    Ok(())
}
