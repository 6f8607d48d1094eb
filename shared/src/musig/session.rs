//! Session values, signing, partial signature verification and aggregation (BIP327 "Session
//! Context", "Signing", "Partial Signature Verification", "Partial Signature Aggregation";
//! LOTUS.md §2 Sign, PartialSigVerify, Aggregate).

use secp256k1::PublicKey;
use zeroize::{Zeroize, Zeroizing};

use super::arith::{
    Point, Scalar, add, base_mul_public, has_even_y, has_square_y, is_zero, join, mul, mul_point,
    neg, scalar_bytes, scalar_checked, scalar_reduce, ser33, sha256, tagged, tags, x32,
};
use super::nonce::{AggNonce, PubNonce, SecNonce, SecretKey};
use super::{Contribution, Error, KeyAggContext, SignatureFormat, Tweak, invalid};

/// A partial signature: one scalar below n (32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartialSignature(Scalar);

impl PartialSignature {
    /// Parse 32 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] (`PartialSig`, no signer named) when not below n.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, Error> {
        scalar_checked(bytes)
            .map(PartialSignature)
            .ok_or(invalid(None, Contribution::PartialSig))
    }

    /// Parse from a slice of any length.
    ///
    /// # Errors
    /// [`Error::Length`] or as [`PartialSignature::from_bytes`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self, Error> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| Error::Length {
            what: "partial signature",
            expected: 32,
            actual: bytes.len(),
        })?;
        Self::from_bytes(arr)
    }

    /// Parse a list, naming the first out-of-range index (BIP327 PartialSigAgg errors).
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] with the signer index.
    pub fn parse_all(list: &[[u8; 32]]) -> Result<Vec<Self>, Error> {
        list.iter()
            .enumerate()
            .map(|(i, b)| {
                Self::from_bytes(b).map_err(|_| invalid(Some(i), Contribution::PartialSig))
            })
            .collect()
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; 32] {
        scalar_bytes(&self.0)
    }
}

/// A final 64-byte Schnorr signature `x(R) || s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Signature(pub [u8; 64]);

impl Signature {
    /// The 64 bytes.
    pub fn to_bytes(&self) -> [u8; 64] {
        self.0
    }
}

/// The per-session values every signer derives from the key context, the aggregate nonce and
/// the message (BIP327 `GetSessionValues`): nonce coefficient `b`, final nonce `R`, challenge
/// `e`, and whether nonces are negated.
#[derive(Debug, Clone)]
pub struct SigningSession<'a> {
    ctx: &'a KeyAggContext,
    b: Scalar,
    e: Scalar,
    r: PublicKey,
    negate_nonce: bool,
}

impl<'a> SigningSession<'a> {
    /// Derive the session values.
    ///
    /// # Errors
    /// Lotus: [`Error::MessageLength`] unless the message is 32 bytes, [`Error::NonceInfinity`].
    pub fn new(ctx: &'a KeyAggContext, aggnonce: &AggNonce, msg: &[u8]) -> Result<Self, Error> {
        let key = ctx.tweaked_point();
        match ctx.format() {
            SignatureFormat::Bip340 => {
                let xq = x32(key);
                let b = scalar_reduce(&tagged(
                    &tags::NONCE_COEF,
                    &[&aggnonce.to_bytes(), &xq, msg],
                ));
                let r = add(&aggnonce.r1, &mul_point(&aggnonce.r2, &b));
                // BIP327: an infinite final nonce is replaced by G.
                let r = match r {
                    Some(r) => r,
                    None => base_mul_public(&Scalar::ONE).ok_or(Error::NonceInfinity)?,
                };
                let e = scalar_reduce(&tagged(&tags::CHALLENGE, &[&x32(&r), &xq, msg]));
                Ok(SigningSession {
                    ctx,
                    b,
                    e,
                    r,
                    negate_nonce: !has_even_y(&r),
                })
            }
            SignatureFormat::Lotus => {
                if msg.len() != 32 {
                    return Err(Error::MessageLength {
                        expected: 32,
                        actual: msg.len(),
                    });
                }
                let (Some(r1), Some(r2)) = (aggnonce.r1, aggnonce.r2) else {
                    return Err(Error::NonceInfinity);
                };
                let k = ser33(key);
                let b = scalar_reduce(&tagged(
                    &tags::NONCE_COEF,
                    &[&k, &ser33(&r1), &ser33(&r2), msg],
                ));
                let r = add(&Some(r1), &mul(&r2, &b)).ok_or(Error::NonceInfinity)?;
                let e = scalar_reduce(&sha256(&[&x32(&r), &k, msg]));
                Ok(SigningSession {
                    ctx,
                    b,
                    e,
                    r,
                    negate_nonce: !has_square_y(&r),
                })
            }
        }
    }

    /// The key context this session signs for.
    pub fn key_context(&self) -> &KeyAggContext {
        self.ctx
    }

    /// The nonce coefficient `b`.
    pub fn nonce_coefficient(&self) -> [u8; 32] {
        scalar_bytes(&self.b)
    }

    /// The final nonce `R = R1 + b*R2`, compressed.
    pub fn final_nonce(&self) -> [u8; 33] {
        ser33(&self.r)
    }

    /// The challenge `e`.
    pub fn challenge(&self) -> [u8; 32] {
        scalar_bytes(&self.e)
    }

    /// Whether signers negate their nonces (BIP340: R has odd Y; Lotus: R.y is not a square).
    pub fn nonce_negated(&self) -> bool {
        self.negate_nonce
    }

    /// Sign with the first position of `sk`'s key in the key list (BIP327 `Sign`), then verify
    /// the partial signature before returning it.
    ///
    /// # Errors
    /// [`Error::SignerNotInKeySet`], [`Error::SecNonceKeyMismatch`],
    /// [`Error::OwnPartialSigInvalid`].
    pub fn sign(&self, secnonce: SecNonce, sk: &SecretKey) -> Result<PartialSignature, Error> {
        let index = self
            .ctx
            .signer_index(&sk.public_key())
            .ok_or(Error::SignerNotInKeySet)?;
        self.sign_at(secnonce, sk, index)
    }

    /// Sign as the signer at `index` (matters for Lotus, whose coefficients are positional when
    /// keys repeat, and whose index 0 carries the Taproot term), then verify the result.
    ///
    /// # Errors
    /// As [`SigningSession::sign`], plus [`Error::SignerIndexOutOfRange`].
    pub fn sign_at(
        &self,
        secnonce: SecNonce,
        sk: &SecretKey,
        index: usize,
    ) -> Result<PartialSignature, Error> {
        let pubnonce = secnonce.public_nonce();
        let psig = self.dangerous_sign_unverified(secnonce, sk, index)?;
        self.verify_partial(&psig, &pubnonce, index)
            .map_err(|_| Error::OwnPartialSigInvalid)?;
        Ok(psig)
    }

    /// The signing computation alone, without the self-check that [`SigningSession::sign`]
    /// adds. It is what libsecp256k1's `musig_partial_sign` does, exposed so benchmarks compare
    /// like with like; production code calls [`SigningSession::sign`].
    ///
    /// # Errors
    /// As [`SigningSession::sign_at`] without the verification.
    pub fn dangerous_sign_unverified(
        &self,
        secnonce: SecNonce,
        sk: &SecretKey,
        index: usize,
    ) -> Result<PartialSignature, Error> {
        let key = self
            .ctx
            .keys()
            .get(index)
            .ok_or(Error::SignerIndexOutOfRange(index))?;
        if *key != sk.public_key() {
            return Err(Error::SignerNotInKeySet);
        }
        if secnonce.pk != sk.public_key() {
            return Err(Error::SecNonceKeyMismatch);
        }
        let a = *self
            .ctx
            .coef(index)
            .ok_or(Error::SignerIndexOutOfRange(index))?;
        let mut k = Zeroizing::new(*secnonce.k1 + self.b * *secnonce.k2);
        drop(secnonce);
        if self.negate_nonce {
            *k = -*k;
        }
        let s = match self.ctx.format() {
            SignatureFormat::Bip340 => {
                let mut d = *sk.scalar() * *self.ctx.gacc();
                if !has_even_y(self.ctx.tweaked_point()) {
                    d = -d;
                }
                let s = *k + self.e * a * d;
                d.zeroize();
                s
            }
            SignatureFormat::Lotus => {
                let mut s = *k + self.e * a * *sk.scalar();
                if let (0, Some(t)) = (index, self.ctx.lotus_taproot_scalar()) {
                    s += self.e * t;
                }
                s
            }
        };
        Ok(PartialSignature(s))
    }

    /// BIP327 `PartialSigVerifyInternal` for the signer at `index` with its public nonce.
    ///
    /// # Errors
    /// [`Error::InvalidContribution`] naming `index` (identifiable abort).
    pub fn verify_partial(
        &self,
        psig: &PartialSignature,
        pubnonce: &PubNonce,
        index: usize,
    ) -> Result<(), Error> {
        let fail = invalid(Some(index), Contribution::PartialSig);
        let p = self.ctx.point(index).ok_or(fail.clone())?;
        let a = *self.ctx.coef(index).ok_or(fail.clone())?;
        let mut re: Point = add(&Some(pubnonce.r1), &mul(&pubnonce.r2, &self.b));
        if self.negate_nonce {
            re = neg(&re);
        }
        let mut s = psig.0;
        let factor = match self.ctx.format() {
            SignatureFormat::Bip340 => {
                let g = if has_even_y(self.ctx.tweaked_point()) {
                    Scalar::ONE
                } else {
                    -Scalar::ONE
                };
                self.e * a * g * *self.ctx.gacc()
            }
            SignatureFormat::Lotus => {
                if let (0, Some(t)) = (index, self.ctx.lotus_taproot_scalar()) {
                    s -= self.e * t;
                }
                self.e * a
            }
        };
        let rhs = add(&re, &mul(p, &factor));
        let lhs = base_mul_public(&s);
        if lhs.map(|p| p.serialize()) == rhs.map(|p| p.serialize()) {
            Ok(())
        } else {
            Err(fail)
        }
    }

    /// PartialSigAgg: sum the partial signatures into the final signature.
    ///
    /// # Errors
    /// [`Error::Count`] unless there is one partial signature per key; Lotus:
    /// [`Error::ZeroSignature`].
    pub fn aggregate(&self, psigs: &[PartialSignature]) -> Result<Signature, Error> {
        if psigs.len() != self.ctx.len() {
            return Err(Error::Count {
                what: "partial signatures",
                expected: self.ctx.len(),
                actual: psigs.len(),
            });
        }
        let mut s = psigs.iter().fold(Scalar::ZERO, |acc, p| acc + p.0);
        match self.ctx.format() {
            SignatureFormat::Bip340 => {
                let g = if has_even_y(self.ctx.tweaked_point()) {
                    Scalar::ONE
                } else {
                    -Scalar::ONE
                };
                s += self.e * g * *self.ctx.tacc();
            }
            SignatureFormat::Lotus => {
                if is_zero(&s) {
                    return Err(Error::ZeroSignature);
                }
            }
        }
        Ok(Signature(join(&[&x32(&self.r), &scalar_bytes(&s)])))
    }
}

/// BIP327 `DeterministicSign` (BIP340 format): a stateless signer that speaks last, given the
/// aggregate of every other signer's public nonce. Returns its public nonce and partial
/// signature.
///
/// # Errors
/// KeyAgg and tweak errors, [`Error::InvalidContribution`] (`AggOtherNonce`),
/// [`Error::SignerNotInKeySet`].
pub fn deterministic_sign(
    sk: &SecretKey,
    aggothernonce: &[u8; 66],
    keys: &[[u8; 33]],
    tweaks: &[Tweak],
    msg: &[u8],
    rand: Option<&[u8; 32]>,
) -> Result<(PubNonce, PartialSignature), Error> {
    let mut sk_prime = sk.dangerous_to_bytes();
    if let Some(rand) = rand {
        let mask = tagged(&tags::AUX, &[rand]);
        for (b, m) in sk_prime.iter_mut().zip(mask) {
            *b ^= m;
        }
    }
    let ctx = KeyAggContext::with_tweaks(SignatureFormat::Bip340, keys, tweaks)?;
    let aggpk = ctx.xonly_output_key();
    let msg_len = (msg.len() as u64).to_be_bytes();
    let k = |i: u8| {
        scalar_reduce(&tagged(
            &tags::DET_NONCE,
            &[
                sk_prime.as_slice(),
                aggothernonce,
                &aggpk,
                &msg_len,
                msg,
                &[i],
            ],
        ))
    };
    let secnonce = SecNonce::from_scalars(k(0), k(1), sk.public_key())?;
    let pubnonce = secnonce.public_nonce();
    let other = PubNonce::from_bytes(aggothernonce)
        .map_err(|_| invalid(None, Contribution::AggOtherNonce))?;
    let aggnonce = AggNonce::sum(SignatureFormat::Bip340, &[pubnonce, other])?;
    let session = SigningSession::new(&ctx, &aggnonce, msg)?;
    let psig = session.sign(secnonce, sk)?;
    Ok((pubnonce, psig))
}
