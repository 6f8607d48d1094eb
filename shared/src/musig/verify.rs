//! Final signature verification for both formats (BIP340; LOTUS.md §1 Lotus Schnorr).

use secp256k1::XOnlyPublicKey;

use super::arith::{
    add, base_mul_public, has_square_y, is_field_element, mul, neg, parse33, scalar_checked,
    scalar_reduce, sha256, x32,
};
use super::{Error, Signature, SignatureFormat};

/// Verify a final signature under a 33-byte key (BIP340 uses its X coordinate).
///
/// # Errors
/// [`Error::InvalidSignature`], [`Error::MessageLength`] (Lotus needs 32 bytes).
pub fn verify(
    format: SignatureFormat,
    key: &[u8; 33],
    msg: &[u8],
    sig: &Signature,
) -> Result<(), Error> {
    match format {
        SignatureFormat::Bip340 => {
            let p = parse33(key).ok_or(Error::InvalidSignature)?;
            let xonly =
                XOnlyPublicKey::from_byte_array(x32(&p)).map_err(|_| Error::InvalidSignature)?;
            let sig = secp256k1::schnorr::Signature::from_byte_array(sig.0);
            xonly.verify(msg, &sig).map_err(|_| Error::InvalidSignature)
        }
        SignatureFormat::Lotus => lotus_schnorr_verify(key, msg, sig),
    }
}

/// Lotus Schnorr verification exactly as lotusd: reject `s >= n` or `r >= p`;
/// `e = SHA256(r || ser33(P) || m)`; `R = s*G - e*P`; reject infinity or non-square `R.y`;
/// accept iff `R.x == r`.
///
/// # Errors
/// [`Error::InvalidSignature`], [`Error::MessageLength`].
pub fn lotus_schnorr_verify(key: &[u8; 33], msg: &[u8], sig: &Signature) -> Result<(), Error> {
    if msg.len() != 32 {
        return Err(Error::MessageLength {
            expected: 32,
            actual: msg.len(),
        });
    }
    let (r_bytes, s_bytes) = sig.0.split_at(32);
    let r: [u8; 32] = r_bytes.try_into().map_err(|_| Error::InvalidSignature)?;
    let s: [u8; 32] = s_bytes.try_into().map_err(|_| Error::InvalidSignature)?;
    if !is_field_element(&r) {
        return Err(Error::InvalidSignature);
    }
    let s = scalar_checked(&s).ok_or(Error::InvalidSignature)?;
    let p = parse33(key).ok_or(Error::InvalidSignature)?;
    let e = scalar_reduce(&sha256(&[&r, key, msg]));
    let big_r = add(&base_mul_public(&s), &neg(&mul(&p, &e))).ok_or(Error::InvalidSignature)?;
    if has_square_y(&big_r) && x32(&big_r) == r {
        Ok(())
    } else {
        Err(Error::InvalidSignature)
    }
}
