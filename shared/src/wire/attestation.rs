//! Peer attestations (DESIGN §4 `AttestPeer`): a signer's BIP340 signature tying one of its keys to
//! a libp2p peer id until an expiry, and how every receiver verifies it (including the cap on
//! how far ahead the expiry may lie).

use super::*;

/// Tag of the BIP340 tagged hash a signer signs to attest a peer.
pub const ATTESTATION_TAG: &str = "MuSig2P2P/peer-attestation/v1";

/// The digest an attestation signs: `TH(ATTESTATION_TAG, key || u8(len(peer_id)) || peer_id ||
/// int64_be(expires_at_ms))`.
pub fn attestation_digest(key: &[u8; 33], peer_id: &[u8], expires_at_ms: i64) -> [u8; 32] {
    let tag = Sha256::digest(ATTESTATION_TAG.as_bytes());
    let mut h = Sha256::new();
    h.update(tag);
    h.update(tag);
    h.update(key);
    h.update([u8::try_from(peer_id.len()).unwrap_or(u8::MAX)]);
    h.update(peer_id);
    h.update(expires_at_ms.to_be_bytes());
    h.finalize().into()
}

/// A verified peer attestation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attestation {
    /// Attested signer key.
    pub signer_key: [u8; 33],
    /// Binary peer id.
    pub peer_id: Vec<u8>,
    /// Expiry.
    pub expires_at_ms: i64,
    /// BIP340 signature.
    pub signature: [u8; 64],
}

impl Attestation {
    /// Validate and verify a protobuf attestation for `peer_id` at `now_ms`.
    ///
    /// # Errors
    /// [`WireError::Attestation`] (wrong peer, expired, bad signature) or field errors.
    pub fn verify_pb(
        a: &pb::PeerAttestation,
        peer_id: &[u8],
        now_ms: i64,
    ) -> Result<Self, WireError> {
        let att = Self::check_pb(a, peer_id, now_ms)?;
        att.verify_signature()?;
        Ok(att)
    }

    /// Every check of [`Attestation::verify_pb`] but the signature.
    fn check_pb(a: &pb::PeerAttestation, peer_id: &[u8], now_ms: i64) -> Result<Self, WireError> {
        let signer_key = point("attestation.signer_key", &a.signer_key)?;
        if a.peer_id.is_empty() || a.peer_id.len() > MAX_PEER_ID_BYTES {
            return Err(WireError::TooLong {
                field: "attestation.peer_id",
                max: MAX_PEER_ID_BYTES,
            });
        }
        let signature: [u8; 64] = arr("attestation.signature", &a.signature)?;
        let att = Attestation {
            signer_key,
            peer_id: a.peer_id.clone(),
            expires_at_ms: a.expires_at_ms,
            signature,
        };
        att.check_claims(peer_id, now_ms)?;
        Ok(att)
    }

    /// The attested peer and the expiry, against the sender and the time.
    fn check_claims(&self, peer_id: &[u8], now_ms: i64) -> Result<(), WireError> {
        if self.peer_id != peer_id {
            return Err(WireError::Attestation(
                "attested peer id is not the sender's",
            ));
        }
        if self.expires_at_ms <= now_ms {
            return Err(WireError::Attestation("expired"));
        }
        if self.expires_at_ms
            > now_ms
                .saturating_add(MAX_ATTESTATION_LIFETIME_MS)
                .saturating_add(MAX_TIMESTAMP_SKEW_MS)
        {
            return Err(WireError::Attestation(
                "expiry lies further ahead than the protocol's maximum attestation lifetime",
            ));
        }
        Ok(())
    }

    /// Check the BIP340 signature only.
    ///
    /// # Errors
    /// [`WireError::Attestation`].
    pub fn verify_signature(&self) -> Result<(), WireError> {
        let digest = attestation_digest(&self.signer_key, &self.peer_id, self.expires_at_ms);
        let pk = secp256k1::PublicKey::from_byte_array_compressed(self.signer_key)
            .map_err(|_| WireError::InvalidPoint("attestation.signer_key"))?;
        let sig = secp256k1::schnorr::Signature::from_byte_array(self.signature);
        pk.x_only_public_key()
            .0
            .verify(&digest, &sig)
            .map_err(|_| WireError::Attestation("bad signature"))
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::PeerAttestation {
        pb::PeerAttestation {
            signer_key: self.signer_key.to_vec(),
            peer_id: self.peer_id.clone(),
            expires_at_ms: self.expires_at_ms,
            signature: self.signature.to_vec(),
        }
    }
}

/// Attestations whose signature verified: every message carries its sender's attestation, and
/// verifying the same one again for each message was a twentieth of a coordinator's CPU under
/// load. Only the signature check is skipped for an attestation seen before (byte for byte:
/// key, peer id, expiry and signature); peer, expiry and lifetime are checked every time.
#[derive(Debug, Default)]
pub struct VerifiedAttestations {
    seen: std::collections::HashSet<Attestation>,
}

impl VerifiedAttestations {
    /// Most attestations remembered (then it starts over).
    pub const CAPACITY: usize = 4096;

    /// [`Attestation::verify_pb`], without the signature check for one verified before.
    ///
    /// # Errors
    /// As [`Attestation::verify_pb`].
    pub fn verify_pb(
        &mut self,
        a: &pb::PeerAttestation,
        peer_id: &[u8],
        now_ms: i64,
    ) -> Result<Attestation, WireError> {
        // Seen byte for byte: its key is a valid point and its signature verified; only the
        // claims are checked again (no curve work at all).
        if let (Ok(signer_key), Ok(signature)) = (
            <[u8; 33]>::try_from(a.signer_key.as_slice()),
            <[u8; 64]>::try_from(a.signature.as_slice()),
        ) {
            let att = Attestation {
                signer_key,
                peer_id: a.peer_id.clone(),
                expires_at_ms: a.expires_at_ms,
                signature,
            };
            if self.seen.contains(&att) {
                att.check_claims(peer_id, now_ms)?;
                return Ok(att);
            }
        }
        // Not seen: every check, then remembered.
        let att = Attestation::verify_pb(a, peer_id, now_ms)?;
        if self.seen.len() >= Self::CAPACITY {
            self.seen.clear();
        }
        self.seen.insert(att.clone());
        Ok(att)
    }
}
