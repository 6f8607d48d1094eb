//! MuSig2 for two signature formats behind one API.
//!
//! * [`SignatureFormat::Bip340`]: BIP327 exactly (x-only output keys, even-y nonces, tagged
//!   BIP340 challenge, plain and x-only tweaks). Proven by the official BIP327 vectors.
//! * [`SignatureFormat::Lotus`]: the Lotus flavour of LOTUS.md §2 (33-byte keys in the
//!   challenge, untagged challenge hash, quadratic-residue nonce rule, Taproot commitment
//!   tweak added by the signer at sorted index 0). Proven by the reference's vectors.
//!
//! The stages follow BIP327: [`KeyAggContext`] (KeyAgg, tweaks), [`nonce_gen`] (NonceGen),
//! [`AggNonce::sum`] (NonceAgg), [`SigningSession`] (session values, Sign, PartialSigVerify,
//! PartialSigAgg), and [`verify`] for the final signature.
//!
//! # Security
//! Secret keys and secret nonces live in [`SecretKey`] and [`SecNonce`]: zeroized on drop, no
//! `Clone`, no `Display`, a redacted `Debug`. A [`SecNonce`] is consumed by value when it signs.

mod arith;
mod keyagg;
mod nonce;
mod session;
mod verify;

pub use keyagg::{KeyAggContext, Tweak, key_sort};
pub use nonce::{
    AggNonce, PubNonce, SecNonce, SecretKey, bip327_nonce_gen, lotus_nonce_gen, nonce_gen,
    nonce_gen_pooled,
};
pub use session::{PartialSignature, Signature, SigningSession, deterministic_sign};
pub use verify::{lotus_schnorr_verify, verify};

/// Length of a compressed public key.
pub const PUBLIC_KEY_LEN: usize = 33;
/// Length of a public nonce (two compressed points).
pub const PUB_NONCE_LEN: usize = 66;
/// Length of a partial signature (one scalar).
pub const PARTIAL_SIG_LEN: usize = 32;
/// Length of a final signature.
pub const SIGNATURE_LEN: usize = 64;

/// Which Schnorr signature the session produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SignatureFormat {
    /// BIP340 (Bitcoin / Taproot) through BIP327.
    Bip340,
    /// Lotus Schnorr (Bitcoin Cash 2019 rules) through the Lotus MuSig2 flavour.
    Lotus,
}

impl SignatureFormat {
    /// Stable lowercase name (`bip340`, `lotus`).
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureFormat::Bip340 => "bip340",
            SignatureFormat::Lotus => "lotus",
        }
    }
}

impl std::fmt::Display for SignatureFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SignatureFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "bip340" => Ok(SignatureFormat::Bip340),
            "lotus" => Ok(SignatureFormat::Lotus),
            _ => Err(Error::UnknownFormat),
        }
    }
}

/// What a misbehaving or broken participant contributed (BIP327 `InvalidContributionError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contribution {
    /// A public key that does not parse as a point.
    PubKey,
    /// A public nonce that does not parse, or whose contribution sums to infinity (Lotus).
    PubNonce,
    /// An aggregate nonce that does not parse.
    AggNonce,
    /// The aggregate of the other signers' nonces (deterministic signing) does not parse.
    AggOtherNonce,
    /// A partial signature that is out of range or fails verification.
    PartialSig,
}

impl std::fmt::Display for Contribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Contribution::PubKey => "public key",
            Contribution::PubNonce => "public nonce",
            Contribution::AggNonce => "aggregate nonce",
            Contribution::AggOtherNonce => "aggregate of the other nonces",
            Contribution::PartialSig => "partial signature",
        })
    }
}

/// Every way the MuSig2 operations can fail. Blame is data: see [`Error::culprit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A participant's contribution is invalid; `signer` is its index in the key list (or `None`
    /// when the bad value is not attributable to one signer, e.g. an aggregate nonce).
    #[error("invalid {contrib} from {}", signer.map_or("an unattributable party".to_string(), |i| format!("signer {i}")))]
    InvalidContribution {
        /// Index of the culprit in the key list.
        signer: Option<usize>,
        /// What was wrong.
        contrib: Contribution,
    },
    /// The key list is empty.
    #[error("the key list is empty")]
    NoKeys,
    /// A tweak is not below the group order ("The tweak must be less than n.").
    #[error("the tweak must be less than n")]
    TweakOutOfRange,
    /// Tweaking produced the point at infinity.
    #[error("the result of tweaking cannot be infinity")]
    TweakInfinity,
    /// The format does not support this tweak (Lotus supports one Taproot tweak only).
    #[error("{0}")]
    UnsupportedTweak(&'static str),
    /// The aggregate key is the point at infinity.
    #[error("the aggregate key is the point at infinity")]
    AggregateKeyInfinity,
    /// The signer's public key is not in the key list.
    #[error("the signer's public key must be included in the list of public keys")]
    SignerNotInKeySet,
    /// The signer index is outside the key list.
    #[error("signer index {0} is outside the key list")]
    SignerIndexOutOfRange(usize),
    /// A secret nonce value is zero or not below n (may indicate nonce reuse).
    #[error("secret nonce value is out of range")]
    SecNonceOutOfRange,
    /// The secret nonce was generated for a different public key.
    #[error("the public key does not match the one the nonce was generated for")]
    SecNonceKeyMismatch,
    /// A secret key is zero or not below n.
    #[error("invalid secret key")]
    InvalidSecretKey,
    /// The message has the wrong length for the format.
    #[error("message must be {expected} bytes for this format, got {actual}")]
    MessageLength {
        /// Required length.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// A byte string has the wrong length.
    #[error("{what} must be {expected} bytes, got {actual}")]
    Length {
        /// Which field.
        what: &'static str,
        /// Required length.
        expected: usize,
        /// Length given.
        actual: usize,
    },
    /// The nonce generator produced a zero nonce (negligible probability).
    #[error("nonce generation produced zero")]
    ZeroNonce,
    /// The Lotus aggregate nonce (or the final nonce) is the point at infinity.
    #[error("the aggregate nonce is the point at infinity")]
    NonceInfinity,
    /// Our own partial signature did not verify: never returned to a caller.
    #[error("own partial signature failed verification")]
    OwnPartialSigInvalid,
    /// The aggregate signature's scalar is zero (Lotus).
    #[error("the aggregate signature scalar is zero")]
    ZeroSignature,
    /// The final signature does not verify.
    #[error("signature does not verify")]
    InvalidSignature,
    /// The number of partial signatures or nonces does not match the key list.
    #[error("expected {expected} {what}, got {actual}")]
    Count {
        /// Which list.
        what: &'static str,
        /// Number of signers.
        expected: usize,
        /// Number given.
        actual: usize,
    },
    /// Unknown signature format name.
    #[error("unknown signature format (expected bip340 or lotus)")]
    UnknownFormat,
}

impl Error {
    /// The signer index to blame, when the error names one.
    pub fn culprit(&self) -> Option<usize> {
        match self {
            Error::InvalidContribution { signer, .. } => *signer,
            _ => None,
        }
    }
}

pub(crate) fn invalid(signer: Option<usize>, contrib: Contribution) -> Error {
    Error::InvalidContribution { signer, contrib }
}
