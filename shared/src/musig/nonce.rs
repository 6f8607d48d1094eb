//! Secret keys, nonce generation and nonce aggregation (BIP327 "Nonce Generation" and "Nonce
//! Aggregation"; LOTUS.md §2 NonceGen and NonceAgg).

use rand::{CryptoRng, RngCore};
use secp256k1::PublicKey;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

use super::arith::{
    Point, Scalar, base_mul, is_zero, join, parse33, parse33_ext, scalar_bytes, scalar_checked,
    scalar_reduce, ser33, ser33_ext, tagged, tags,
};
use super::{Contribution, Error, KeyAggContext, SignatureFormat, invalid};

/// A signer's secret key.
///
/// # Security
/// Zeroized on drop; no `Clone`, `Display` or serde; its debug output shows only the public
/// key.
pub struct SecretKey {
    /// Boxed: moving a `SecretKey` (into a `Vec` that grows, out of a function) copies the
    /// pointer, never the secret.
    scalar: Box<Scalar>,
    public: [u8; 33],
}

/// Move a scalar onto the heap and wipe the stack copy it came from.
fn boxed(mut s: Scalar) -> Box<Scalar> {
    let b = Box::new(s);
    s.zeroize();
    b
}

impl SecretKey {
    /// Parse 32 big-endian bytes (must be in `1..n`).
    ///
    /// # Errors
    /// [`Error::InvalidSecretKey`].
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        let scalar = boxed(scalar_checked(bytes).ok_or(Error::InvalidSecretKey)?);
        let public = base_mul(&scalar).ok_or(Error::InvalidSecretKey)?;
        Ok(SecretKey {
            scalar,
            public: ser33(&public),
        })
    }

    /// A fresh random key.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        loop {
            let mut bytes = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(bytes.as_mut());
            if let Ok(k) = SecretKey::from_bytes(&bytes) {
                return k;
            }
        }
    }

    /// The 33-byte compressed public key.
    pub fn public_key(&self) -> [u8; 33] {
        self.public
    }

    /// The secret as 32 bytes, in a zeroizing buffer, for encryption at rest.
    pub fn dangerous_to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(scalar_bytes(&self.scalar))
    }

    /// Sign a peer attestation (DESIGN §4 `AttestPeer`): BIP340 over
    /// [`crate::wire::attestation_digest`], a tagged hash that no transaction sighash can equal.
    /// This is the only non-MuSig2 signature the key can make.
    ///
    /// # Errors
    /// [`Error::InvalidSecretKey`] (unreachable for a constructed key).
    pub fn sign_attestation(
        &self,
        peer_id: &[u8],
        expires_at_ms: i64,
        aux_rand: &[u8; 32],
    ) -> Result<[u8; 64], Error> {
        let digest = crate::wire::attestation_digest(&self.public, peer_id, expires_at_ms);
        let bytes = self.dangerous_to_bytes();
        let mut keypair =
            secp256k1::Keypair::from_secret_bytes(*bytes).map_err(|_| Error::InvalidSecretKey)?;
        let sig = secp256k1::schnorr::sign_with_aux_rand(&digest, &keypair, aux_rand);
        keypair.non_secure_erase();
        Ok(sig.to_byte_array())
    }

    /// Constant-time comparison of two secret keys.
    pub fn ct_eq(&self, other: &SecretKey) -> bool {
        bool::from(self.scalar.ct_eq(&other.scalar))
    }

    pub(crate) fn scalar(&self) -> &Scalar {
        &self.scalar
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.scalar.as_mut().zeroize();
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "SecretKey(<redacted>, public {})",
            hex::encode(self.public)
        )
    }
}

/// A secret nonce `(k1, k2)` bound to the public key it was made for (BIP327 `secnonce`).
///
/// # Security
/// Zeroized on drop, no `Clone`, consumed by value by [`super::SigningSession::sign`]: one
/// secret nonce can produce at most one partial signature. The scalars are boxed, so moving a
/// `SecNonce` copies pointers, never the secret.
pub struct SecNonce {
    pub(crate) k1: Box<Scalar>,
    pub(crate) k2: Box<Scalar>,
    pub(crate) pk: [u8; 33],
    /// `k1*G || k2*G`, kept so that signing can verify its own output cheaply.
    pub(crate) public: PubNonce,
}

impl SecNonce {
    pub(crate) fn from_scalars(k1: Scalar, k2: Scalar, pk: [u8; 33]) -> Result<Self, Error> {
        if is_zero(&k1) || is_zero(&k2) {
            return Err(Error::ZeroNonce);
        }
        Self::new(k1, k2, pk)
    }

    /// Rebuild from the 97-byte BIP327 encoding `k1 || k2 || pk`. For test vectors: a secret
    /// nonce must never be stored or copied in production.
    ///
    /// # Errors
    /// [`Error::SecNonceOutOfRange`] when `k1` or `k2` is zero or not below n.
    pub fn dangerous_from_bytes(bytes: &[u8; 97]) -> Result<Self, Error> {
        let (k1, rest) = bytes.split_at(32);
        let (k2, pk) = rest.split_at(32);
        let k = |b: &[u8]| -> Result<Scalar, Error> {
            let arr: [u8; 32] = b.try_into().map_err(|_| Error::SecNonceOutOfRange)?;
            scalar_checked(&arr)
                .filter(|s| !is_zero(s))
                .ok_or(Error::SecNonceOutOfRange)
        };
        SecNonce::new(
            k(k1)?,
            k(k2)?,
            pk.try_into().map_err(|_| Error::SecNonceKeyMismatch)?,
        )
    }

    /// The 97-byte BIP327 encoding, in a zeroizing buffer. For test vectors only.
    pub fn dangerous_to_bytes(&self) -> Zeroizing<[u8; 97]> {
        let k1 = Zeroizing::new(scalar_bytes(&self.k1));
        let k2 = Zeroizing::new(scalar_bytes(&self.k2));
        Zeroizing::new(join(&[k1.as_slice(), k2.as_slice(), &self.pk]))
    }

    fn new(k1: Scalar, k2: Scalar, pk: [u8; 33]) -> Result<Self, Error> {
        let (k1, k2) = (boxed(k1), boxed(k2));
        let public = PubNonce {
            r1: base_mul(&k1).ok_or(Error::ZeroNonce)?,
            r2: base_mul(&k2).ok_or(Error::ZeroNonce)?,
        };
        Ok(SecNonce { k1, k2, pk, public })
    }

    /// The public nonce that belongs to this secret nonce.
    pub fn public_nonce(&self) -> PubNonce {
        self.public
    }

    /// The public key this nonce was generated for.
    pub fn public_key(&self) -> [u8; 33] {
        self.pk
    }
}

impl Drop for SecNonce {
    fn drop(&mut self) {
        self.k1.as_mut().zeroize();
        self.k2.as_mut().zeroize();
    }
}

impl std::fmt::Debug for SecNonce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecNonce(<redacted>)")
    }
}

/// A public nonce `R1 || R2`, two valid compressed points (66 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubNonce {
    pub(crate) r1: PublicKey,
    pub(crate) r2: PublicKey,
}

impl PubNonce {
    /// Parse 66 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] (`PubNonce`, no signer named: the caller knows who sent it).
    pub fn from_bytes(bytes: &[u8; 66]) -> Result<Self, Error> {
        let (a, b) = bytes.split_at(33);
        let p = |s: &[u8]| {
            <&[u8; 33]>::try_from(s)
                .ok()
                .and_then(parse33)
                .ok_or(invalid(None, Contribution::PubNonce))
        };
        Ok(PubNonce {
            r1: p(a)?,
            r2: p(b)?,
        })
    }

    /// Parse from a slice of any length.
    ///
    /// # Errors
    /// [`Error::Length`] or as [`PubNonce::from_bytes`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: &[u8; 66] = bytes.try_into().map_err(|_| Error::Length {
            what: "public nonce",
            expected: 66,
            actual: bytes.len(),
        })?;
        Self::from_bytes(arr)
    }

    /// Parse a list, naming the index of the first invalid nonce (BIP327 NonceAgg errors).
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] with the signer index.
    pub fn parse_all(list: &[[u8; 66]]) -> Result<Vec<Self>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, b)| Self::from_bytes(b).map_err(|_| invalid(Some(i), Contribution::PubNonce)))
            .collect()
    }

    /// The 66-byte encoding.
    pub fn to_bytes(&self) -> [u8; 66] {
        join(&[&ser33(&self.r1), &ser33(&self.r2)])
    }
}

/// The aggregate nonce `R1 || R2`; in BIP327 either half may be infinity (33 zero bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AggNonce {
    pub(crate) r1: Point,
    pub(crate) r2: Point,
}

impl AggNonce {
    /// NonceAgg: the sums of the first and second halves.
    ///
    /// # Errors
    /// [`Error::Count`] for an empty list; Lotus: [`Error::NonceInfinity`] when a half sums to
    /// infinity (BIP327 encodes it as zeros instead).
    pub fn sum(format: SignatureFormat, nonces: &[PubNonce]) -> Result<Self, Error> {
        if nonces.is_empty() {
            return Err(Error::Count {
                what: "public nonces",
                expected: 1,
                actual: 0,
            });
        }
        let r1 = super::arith::sum(nonces.iter().map(|n| &n.r1));
        let r2 = super::arith::sum(nonces.iter().map(|n| &n.r2));
        if format == SignatureFormat::Lotus && (r1.is_none() || r2.is_none()) {
            return Err(Error::NonceInfinity);
        }
        Ok(AggNonce { r1, r2 })
    }

    /// Parse 66 bytes (`cpoint_ext` on each half).
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] (`AggNonce`, no signer).
    pub fn from_bytes(bytes: &[u8; 66]) -> Result<Self, Error> {
        let (a, b) = bytes.split_at(33);
        let p = |s: &[u8]| {
            <&[u8; 33]>::try_from(s)
                .ok()
                .and_then(parse33_ext)
                .ok_or(invalid(None, Contribution::AggNonce))
        };
        Ok(AggNonce {
            r1: p(a)?,
            r2: p(b)?,
        })
    }

    /// The 66-byte encoding (`cbytes_ext`).
    pub fn to_bytes(&self) -> [u8; 66] {
        join(&[&ser33_ext(&self.r1), &ser33_ext(&self.r2)])
    }
}

/// Production nonce generation for either format: hedged with the secret key, the aggregate
/// key, the message and 32 fresh random bytes from `rng` (DESIGN §4).
///
/// # Errors
/// [`Error::ZeroNonce`] (negligible), [`Error::MessageLength`] for a Lotus message that is not 32
/// bytes.
pub fn nonce_gen<R: RngCore + CryptoRng>(
    rng: &mut R,
    sk: &SecretKey,
    ctx: &KeyAggContext,
    msg: &[u8],
) -> Result<(SecNonce, PubNonce), Error> {
    if ctx.format() == SignatureFormat::Lotus && msg.len() != 32 {
        return Err(Error::MessageLength {
            expected: 32,
            actual: msg.len(),
        });
    }
    hedged_nonce_gen(rng, sk, ctx, Some(msg))
}

/// A nonce for a nonce pool (one-round signing): as [`nonce_gen`] but without a message, as
/// BIP327 `NonceGen` allows (and for Lotus, its nonce derivation without a message). The nonce
/// is bound to the key and the aggregate key only; its safety rests on `rng` and single use.
///
/// # Errors
/// [`Error::ZeroNonce`] (negligible).
pub fn nonce_gen_pooled<R: RngCore + CryptoRng>(
    rng: &mut R,
    sk: &SecretKey,
    ctx: &KeyAggContext,
) -> Result<(SecNonce, PubNonce), Error> {
    hedged_nonce_gen(rng, sk, ctx, None)
}

/// Both: 32 fresh random bytes, the secret key, the aggregate key and the message if any.
fn hedged_nonce_gen<R: RngCore + CryptoRng>(
    rng: &mut R,
    sk: &SecretKey,
    ctx: &KeyAggContext,
    msg: Option<&[u8]>,
) -> Result<(SecNonce, PubNonce), Error> {
    let mut rand = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(rand.as_mut());
    match ctx.format() {
        SignatureFormat::Bip340 => {
            let sk_bytes = sk.dangerous_to_bytes();
            let aggpk = ctx.xonly_output_key();
            bip327_nonce_gen(
                &rand,
                Some(&sk_bytes),
                &sk.public_key(),
                Some(&aggpk),
                msg,
                None,
            )
        }
        SignatureFormat::Lotus => lotus_nonce_gen(sk, &ctx.aggregate_key(), msg, Some(&rand)),
    }
}

/// BIP327 `NonceGen` with every optional input and the caller's `rand'` (the BIP's 32 random
/// bytes). Deterministic given its inputs: production code calls [`nonce_gen`].
///
/// # Errors
/// [`Error::ZeroNonce`] if a derived nonce is zero.
pub fn bip327_nonce_gen(
    rand_prime: &[u8; 32],
    sk: Option<&[u8; 32]>,
    pk: &[u8; 33],
    aggpk: Option<&[u8; 32]>,
    msg: Option<&[u8]>,
    extra_in: Option<&[u8]>,
) -> Result<(SecNonce, PubNonce), Error> {
    let mut rand = Zeroizing::new(*rand_prime);
    if let Some(sk) = sk {
        let mask = tagged(&tags::AUX, &[rand_prime]);
        for ((r, s), m) in rand.iter_mut().zip(sk).zip(mask) {
            *r = s ^ m;
        }
    }
    let aggpk: &[u8] = aggpk.map_or(&[], |a| a.as_slice());
    let (msg_prefix, msg_len, msg): (&[u8], [u8; 8], &[u8]) = match msg {
        None => (&[0], [0; 8], &[]),
        Some(m) => (&[1], (m.len() as u64).to_be_bytes(), m),
    };
    let msg_len: &[u8] = if msg_prefix == [1] { &msg_len } else { &[] };
    let extra = extra_in.unwrap_or(&[]);
    let extra_len = (extra.len() as u32).to_be_bytes();
    let k = |i: u8| {
        scalar_reduce(&tagged(
            &tags::NONCE,
            &[
                rand.as_slice(),
                &[33],
                pk,
                &[aggpk.len() as u8],
                aggpk,
                msg_prefix,
                msg_len,
                msg,
                &extra_len,
                extra,
                &[i],
            ],
        ))
    };
    let sec = SecNonce::new(k(0), k(1), *pk)?;
    let pubnonce = sec.public_nonce();
    Ok((sec, pubnonce))
}

/// Lotus NonceGen (LOTUS.md §2): `aux = TH("MuSig/aux", sk || ser33(Q) || m || extra)`,
/// `k_j = TH("MuSig/nonce", aux || j) mod n` (zero becomes one). `m` and `extra` are 32 zero
/// bytes when absent; production passes 32 fresh random bytes as `extra` ([`nonce_gen`]).
///
/// # Errors
/// None in practice (the scalars are never zero); kept for one signature with NonceGen.
pub fn lotus_nonce_gen(
    sk: &SecretKey,
    aggregate_key: &[u8; 33],
    msg: Option<&[u8]>,
    extra: Option<&[u8; 32]>,
) -> Result<(SecNonce, PubNonce), Error> {
    let sk_bytes = sk.dangerous_to_bytes();
    let zero = [0u8; 32];
    let aux = Zeroizing::new(tagged(
        &tags::AUX,
        &[
            sk_bytes.as_slice(),
            aggregate_key,
            msg.unwrap_or(&zero),
            extra.unwrap_or(&zero),
        ],
    ));
    let k = |j: u8| {
        let s = scalar_reduce(&tagged(&tags::NONCE, &[aux.as_slice(), &[j]]));
        if is_zero(&s) { Scalar::ONE } else { s }
    };
    let sec = SecNonce::new(k(1), k(2), sk.public_key())?;
    let pubnonce = sec.public_nonce();
    Ok((sec, pubnonce))
}
