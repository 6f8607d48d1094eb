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
    open_checked(bytes, expected, now, verified, false)
}

/// [`open_with`], skipping the envelope signature check when `signature_proven` (the node
/// proved it with [`verify_signatures`]); every other check is made.
///
/// # Errors
/// As [`open`].
pub fn open_checked(
    bytes: &[u8],
    expected: Option<PeerId>,
    now: i64,
    verified: &mut VerifiedAttestations,
    signature_proven: bool,
) -> Result<(PeerId, Message), Refusal> {
    let env: pb::SignedEnvelope = wire::decode_canonical(bytes, MAX_DIRECT_MESSAGE_BYTES)?;
    // A proven envelope carries an Ed25519 key whose signature verified (so it decompressed):
    // its peer id is the identity multihash of the key's encoding, read without decompressing
    // the key again.
    let proven_pid = signature_proven
        .then(|| inline_peer_id(&env.peer_public_key))
        .flatten();
    let (pid, pk) = match proven_pid {
        Some(pid) => (pid, None),
        None => {
            let pk =
                identity::PublicKey::try_decode_protobuf(&env.peer_public_key).map_err(|_| {
                    Refusal(
                        Reason::BadEnvelope,
                        "peer public key does not decode".into(),
                    )
                })?;
            (pk.to_peer_id(), Some(pk))
        }
    };
    if expected.is_some_and(|p| p != pid) {
        return Err(Refusal(
            Reason::BadEnvelope,
            "envelope key is not the sending peer's".into(),
        ));
    }
    if let Some(pk) = pk
        && !(signature_proven
            || pk.verify(
                &[ENVELOPE_TAG, env.payload.as_slice()].concat(),
                &env.signature,
            ))
    {
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

/// The protobuf encoding of an Ed25519 libp2p public key: type 1 (Ed25519), then 32 bytes.
const ED25519_KEY_PREFIX: [u8; 4] = [0x08, 0x01, 0x12, 0x20];

/// The peer id of an Ed25519 key in libp2p's protobuf encoding: the identity multihash (code
/// 0) of the encoding, as libp2p makes it for keys this short. `None` for any other key.
fn inline_peer_id(encoded: &[u8]) -> Option<PeerId> {
    if encoded.len() != 36 || !encoded.starts_with(&ED25519_KEY_PREFIX) {
        return None;
    }
    PeerId::from_bytes(&[&[0x00, 36][..], encoded].concat()).ok()
}

/// Decompressed Ed25519 keys by their encoding (a node hears the same few keys over and over;
/// decompressing one costs a fifth of a signature check). Only valid keys are kept, at most
/// [`KeyCache::CAPACITY`], then it starts over.
#[derive(Debug, Default)]
pub struct KeyCache(std::collections::HashMap<[u8; 32], ed25519_dalek::VerifyingKey>);

impl KeyCache {
    /// Keys kept at most.
    pub const CAPACITY: usize = 4096;

    fn get(&mut self, bytes: &[u8; 32]) -> Option<ed25519_dalek::VerifyingKey> {
        if let Some(k) = self.0.get(bytes) {
            return Some(*k);
        }
        let k = ed25519_dalek::VerifyingKey::from_bytes(bytes).ok()?;
        if self.0.len() >= Self::CAPACITY {
            self.0.clear();
        }
        self.0.insert(*bytes, k);
        Some(k)
    }
}

/// Fewer envelopes than this are checked one by one: a batch's fixed cost only pays off beyond.
pub const MIN_BATCH: usize = 4;

/// What [`verify_signatures`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Per envelope, whether its signature verified.
    pub proven: Vec<bool>,
    /// Whether they were proven in one batch (else one by one).
    pub batched: bool,
}

/// Check the Ed25519 signatures of the envelopes of one turn of the event loop, with keys
/// decompressed once ([`KeyCache`]): [`MIN_BATCH`] or more at once in one multi-scalar
/// multiplication (ed25519-dalek's `verify_batch`), fewer, or those of a batch that failed,
/// one by one. Returns, per envelope, whether its signature by the key it carries over its
/// payload verified. `false` for a bad signature and for an envelope that does not decode,
/// carries no Ed25519 key, or a weak (small-order) one: those get the full check in
/// [`open_with`], which counts and names the bad one (a peer that spoils a batch costs its
/// neighbours one more check each). Nothing else about an envelope is judged here:
/// [`open_checked`] still makes every other check, the key's peer among them. Batches use the
/// cofactorless equation, as single checks do; unlike a single check, a batch could pass a
/// signature with a small-order component, which only its key's holder can make, for its own
/// messages.
pub fn verify_signatures(envelopes: &[&[u8]], keys_seen: &mut KeyCache) -> Checked {
    use ed25519_dalek::{Signature, Verifier as _};
    use prost::Message as _;
    let mut proven = vec![false; envelopes.len()];
    let mut at = Vec::with_capacity(envelopes.len());
    let mut messages = Vec::with_capacity(envelopes.len());
    let mut signatures = Vec::with_capacity(envelopes.len());
    let mut keys = Vec::with_capacity(envelopes.len());
    for (i, bytes) in envelopes.iter().enumerate() {
        let Ok(env) = pb::SignedEnvelope::decode(*bytes) else {
            continue;
        };
        let Some(key) = env
            .peer_public_key
            .strip_prefix(ED25519_KEY_PREFIX.as_slice())
            .and_then(|k| <&[u8; 32]>::try_from(k).ok())
            .and_then(|k| keys_seen.get(k))
            .filter(|k| !k.is_weak())
        else {
            continue;
        };
        let Ok(signature) = Signature::from_slice(&env.signature) else {
            continue;
        };
        at.push(i);
        messages.push([ENVELOPE_TAG, env.payload.as_slice()].concat());
        signatures.push(signature);
        keys.push(key);
    }
    let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
    let batched =
        at.len() >= MIN_BATCH && ed25519_dalek::verify_batch(&refs, &signatures, &keys).is_ok();
    for (j, i) in at.into_iter().enumerate() {
        let ok = batched
            || match (keys.get(j), refs.get(j), signatures.get(j)) {
                (Some(k), Some(m), Some(s)) => k.verify(m, s).is_ok(),
                _ => false,
            };
        if let Some(p) = proven.get_mut(i) {
            *p = ok;
        }
    }
    Checked { proven, batched }
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn sealed(keypair: &identity::Keypair, seq: u64) -> Vec<u8> {
        let msg = pb::WireMessage {
            session_id: vec![7; 16],
            sequence: seq,
            body: Some(pb::wire_message::Body::Join(pb::SessionJoin {})),
            ..Default::default()
        };
        seal(keypair, &msg, pb::PeerAttestation::default()).unwrap()
    }

    fn refs(b: &[Vec<u8>]) -> Vec<&[u8]> {
        b.iter().map(Vec::as_slice).collect()
    }

    fn tampered(bytes: &[u8]) -> Vec<u8> {
        let mut env = pb::SignedEnvelope::decode(bytes).unwrap();
        env.payload[1] ^= 1;
        env.encode_to_vec()
    }

    fn signature_refused(bytes: &[u8]) -> bool {
        let pid = identity::PublicKey::try_decode_protobuf(
            &pb::SignedEnvelope::decode(bytes).unwrap().peer_public_key,
        )
        .unwrap()
        .to_peer_id();
        matches!(
            open(bytes, Some(pid), 0),
            Err(Refusal(Reason::InvalidSignature, _))
        )
    }

    #[test]
    fn the_batch_reads_keys_in_libp2p_encoding() {
        let kp = identity::Keypair::generate_ed25519();
        let encoded = kp.public().encode_protobuf();
        assert_eq!(encoded.len(), 36);
        assert_eq!(encoded[..4], ED25519_KEY_PREFIX);
        assert_eq!(inline_peer_id(&encoded), Some(kp.public().to_peer_id()));
        let mut other = encoded.clone();
        other[1] = 2;
        assert_eq!(inline_peer_id(&other), None);
    }

    #[test]
    fn a_batch_of_good_envelopes_is_proven_and_one_bad_envelope_spoils_it() {
        let kps: Vec<_> = (0..3)
            .map(|_| identity::Keypair::generate_ed25519())
            .collect();
        let mut batch: Vec<Vec<u8>> = (0..6u64).map(|i| sealed(&kps[i as usize % 3], i)).collect();
        assert_eq!(
            verify_signatures(&refs(&batch), &mut KeyCache::default()),
            Checked {
                proven: vec![true; 6],
                batched: true
            }
        );
        // One altered payload spoils the batch: one by one, only that one is not proven, and
        // the full check refuses it for its signature, and only it.
        batch[4] = tampered(&batch[4]);
        let checked = verify_signatures(&refs(&batch), &mut KeyCache::default());
        assert_eq!(checked.proven, [true, true, true, true, false, true]);
        assert!(!checked.batched);
        let refused: Vec<bool> = batch.iter().map(|b| signature_refused(b)).collect();
        assert_eq!(refused, [false, false, false, false, true, false]);
        // A signature moved to another envelope of the same key does not verify either.
        let mut moved = pb::SignedEnvelope::decode(batch[0].as_slice()).unwrap();
        moved.signature = pb::SignedEnvelope::decode(batch[3].as_slice())
            .unwrap()
            .signature;
        batch[4] = moved.encode_to_vec();
        assert_eq!(
            verify_signatures(&refs(&batch), &mut KeyCache::default()).proven,
            [true, true, true, true, false, true]
        );
    }

    /// A proven signature skips only the signature check: the key must still be the sending
    /// peer's, and the rest is checked as ever.
    #[test]
    fn a_proven_envelope_still_gets_every_other_check() {
        let kp = identity::Keypair::generate_ed25519();
        let stranger = identity::Keypair::generate_ed25519().public().to_peer_id();
        let bytes = sealed(&kp, 1);
        let open = |bytes: &[u8], peer| {
            open_checked(bytes, Some(peer), 0, &mut Default::default(), true)
                .map(|_| ())
                .map_err(|r| r.0)
        };
        assert_eq!(open(&bytes, stranger), Err(Reason::BadEnvelope));
        // Its own peer: past the key and signature, refused further on (no attestation).
        let own = kp.public().to_peer_id();
        assert!(!matches!(
            open(&bytes, own),
            Err(Reason::BadEnvelope | Reason::InvalidSignature)
        ));
        let mut extra = bytes.clone();
        extra.extend_from_slice(&[0x98, 0x06, 0x01]);
        assert_eq!(open(&extra, own), Err(Reason::NonCanonical));
    }

    #[test]
    fn envelopes_the_batch_cannot_read_are_left_to_the_single_check() {
        let ed = identity::Keypair::generate_ed25519();
        let mut batch: Vec<Vec<u8>> = (0..5u64).map(|i| sealed(&ed, i)).collect();
        batch.push(b"not an envelope".to_vec());
        // A key of another type (secp256k1 is type 2).
        let mut other = pb::SignedEnvelope::decode(batch[1].as_slice()).unwrap();
        other.peer_public_key[1] = 2;
        batch.push(other.encode_to_vec());
        let mut no_sig = pb::SignedEnvelope::decode(batch[0].as_slice()).unwrap();
        no_sig.signature.truncate(10);
        batch.push(no_sig.encode_to_vec());
        let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        assert_eq!(
            verify_signatures(&refs, &mut KeyCache::default()).proven,
            [true, true, true, true, true, false, false, false]
        );
        // Too few to batch: checked one by one.
        assert_eq!(
            verify_signatures(&refs[..MIN_BATCH - 1], &mut KeyCache::default()).proven,
            vec![true; MIN_BATCH - 1]
        );
        let mut few = refs[..MIN_BATCH - 1].to_vec();
        let spoiled = tampered(few[1]);
        few[1] = &spoiled;
        assert_eq!(
            verify_signatures(&few, &mut KeyCache::default()).proven,
            [true, false, true]
        );
    }
}
