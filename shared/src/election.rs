//! Coordinator election and session ids, exactly as the reference computes them (LOTUS.md §3
//! and §4). Every index is a position in the bytewise-sorted list of 33-byte signer keys.

use sha2::{Digest, Sha256};

/// The four deterministic election methods of the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElectionMethod {
    /// Index 0; priority `[0, 1, …, n-1]` (the reference's default).
    Lexicographic,
    /// `h = uint32_be(proof[0..4]) mod n`; priority `[h, h+1, …]` wrapping.
    HashBased,
    /// Index 0; priority `[0 … n-1]`, no wrap.
    FirstSigner,
    /// Index n-1; priority `[n-1 … 0]`.
    LastSigner,
}

impl ElectionMethod {
    /// The reference's name (`lexicographic`, `hash-based`, `first-signer`, `last-signer`).
    pub fn as_str(self) -> &'static str {
        match self {
            ElectionMethod::Lexicographic => "lexicographic",
            ElectionMethod::HashBased => "hash-based",
            ElectionMethod::FirstSigner => "first-signer",
            ElectionMethod::LastSigner => "last-signer",
        }
    }
}

impl std::str::FromStr for ElectionMethod {
    type Err = ElectionError;
    fn from_str(s: &str) -> Result<Self, ElectionError> {
        Ok(match s {
            "lexicographic" => ElectionMethod::Lexicographic,
            "hash-based" => ElectionMethod::HashBased,
            "first-signer" => ElectionMethod::FirstSigner,
            "last-signer" => ElectionMethod::LastSigner,
            _ => return Err(ElectionError::UnknownMethod),
        })
    }
}

/// Election failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ElectionError {
    /// No signers.
    #[error("cannot elect a coordinator among zero signers")]
    NoSigners,
    /// Unknown method name.
    #[error(
        "unknown election method (expected lexicographic, hash-based, first-signer or last-signer)"
    )]
    UnknownMethod,
}

/// The result of an election: who coordinates, who follows, and the proof every node can
/// recompute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Election {
    /// Method used.
    pub method: ElectionMethod,
    /// Sorted index of the elected coordinator.
    pub coordinator_index: usize,
    /// Sorted indices in failover order, the coordinator first.
    pub priority_list: Vec<usize>,
    /// `SHA256(ascii(concatenation of the sorted keys as lowercase hex)))`.
    pub proof: [u8; 32],
}

impl Election {
    /// The next entry after `index` in the priority list (`None` after the last).
    pub fn backup_of(&self, index: usize) -> Option<usize> {
        let pos = self.priority_list.iter().position(|i| *i == index)?;
        self.priority_list.get(pos + 1).copied()
    }

    /// The backup of the elected coordinator.
    pub fn backup(&self) -> Option<usize> {
        self.backup_of(self.coordinator_index)
    }

    /// Who is responsible after `failures` coordinators failed (0 = the elected one); `None`
    /// once the list is exhausted.
    pub fn responsible_after(&self, failures: usize) -> Option<usize> {
        self.priority_list.get(failures).copied()
    }

    /// The proof as lowercase hex (the reference's representation).
    pub fn proof_hex(&self) -> String {
        hex::encode(self.proof)
    }
}

/// Sort keys bytewise ascending (the order every index refers to).
pub fn sorted_keys(keys: &[[u8; 33]]) -> Vec<[u8; 33]> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted
}

/// Run an election over the signer keys (sorted here; indices are sorted positions).
///
/// # Errors
/// [`ElectionError::NoSigners`].
pub fn elect(method: ElectionMethod, keys: &[[u8; 33]]) -> Result<Election, ElectionError> {
    let sorted = sorted_keys(keys);
    let n = sorted.len();
    if n == 0 {
        return Err(ElectionError::NoSigners);
    }
    let mut h = Sha256::new();
    for k in &sorted {
        h.update(hex::encode(k).as_bytes());
    }
    let proof: [u8; 32] = h.finalize().into();
    let (coordinator_index, priority_list): (usize, Vec<usize>) = match method {
        ElectionMethod::Lexicographic | ElectionMethod::FirstSigner => (0, (0..n).collect()),
        ElectionMethod::LastSigner => (n - 1, (0..n).rev().collect()),
        ElectionMethod::HashBased => {
            let [a, b, c, d, ..] = proof;
            let start = u32::from_be_bytes([a, b, c, d]) as usize % n;
            (start, (0..n).map(|i| (start + i) % n).collect())
        }
    };
    Ok(Election {
        method,
        coordinator_index,
        priority_list,
        proof,
    })
}

/// A 16-byte session id, shown as 32 lowercase hex characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// `first 16 bytes of H(H(sorted ser33 keys) || H(message) || int64_be(created_ms) ||
    /// entropy16)` (LOTUS.md §4). Keys are sorted here.
    pub fn derive(keys: &[[u8; 33]], message: &[u8], created_ms: i64, entropy: &[u8; 16]) -> Self {
        let mut kh = Sha256::new();
        for k in sorted_keys(keys) {
            kh.update(k);
        }
        let mut h = Sha256::new();
        h.update(kh.finalize());
        h.update(Sha256::digest(message));
        h.update(created_ms.to_be_bytes());
        h.update(entropy);
        let digest: [u8; 32] = h.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
        SessionId(id)
    }

    /// A batch session's id: `first 16 bytes of H(H(sorted ser33 keys) || "musig2/v1/batch" ||
    /// digest || int64_be(created_ms) || entropy16)`, `digest` committing to every message in
    /// order. The tag makes the hashed input longer than any single-message session's, so no
    /// single-message session can take a batch's id (found in review: with the digest in place
    /// of the message, a member could announce a one-message session of that digest under the
    /// same id).
    pub fn derive_batch(
        keys: &[[u8; 33]],
        digest: &[u8; 32],
        created_ms: i64,
        entropy: &[u8; 16],
    ) -> Self {
        let mut kh = Sha256::new();
        for k in sorted_keys(keys) {
            kh.update(k);
        }
        let mut h = Sha256::new();
        h.update(kh.finalize());
        h.update(b"musig2/v1/batch");
        h.update(digest);
        h.update(created_ms.to_be_bytes());
        h.update(entropy);
        let digest: [u8; 32] = h.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
        SessionId(id)
    }

    /// The id under which a signer signs message `item` of a batch session with this id: the
    /// first 16 bytes of `SHA-256("musig2/v1/batch-item" || id || uint32_be(item))`. Each
    /// message of a batch is its own session for the signer (its own nonce, checked and
    /// journaled alone).
    pub fn batch_item(&self, item: u32) -> Self {
        let mut h = Sha256::new();
        h.update(b"musig2/v1/batch-item");
        h.update(self.0);
        h.update(item.to_be_bytes());
        let digest: [u8; 32] = h.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
        SessionId(id)
    }

    /// Parse 32 hex characters.
    ///
    /// # Errors
    /// When the text is not 32 hex characters.
    pub fn from_hex(s: &str) -> Result<Self, hex::FromHexError> {
        let mut id = [0u8; 16];
        hex::decode_to_slice(s, &mut id)?;
        Ok(SessionId(id))
    }

    /// Parse 16 raw bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        b.try_into().ok().map(SessionId)
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
