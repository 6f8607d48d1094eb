//! Thin adapters over the two well-kept curve libraries this crate builds on.
//!
//! Points are `secp256k1::PublicKey` (libsecp256k1): parsing, serialisation, point addition and
//! multiplication. The point at infinity, which `PublicKey` cannot hold, is `None`. Scalars are
//! `k256::Scalar` (RustCrypto): exact arithmetic modulo the group order, including zero, which
//! libsecp256k1's API does not expose. The field is touched in one place only, the Lotus
//! quadratic-residue test, through k256's `FieldElement::sqrt`. No arithmetic is written here.

use k256::elliptic_curve::PrimeField;
use k256::elliptic_curve::ops::Reduce;
use k256::{FieldBytes, FieldElement, U256};
use secp256k1::{PublicKey, SecretKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

pub(crate) use k256::Scalar;

/// A curve point where `None` stands for the point at infinity.
pub(crate) type Point = Option<PublicKey>;

/// `int(bytes) mod n`.
pub(crate) fn scalar_reduce(bytes: &[u8; 32]) -> Scalar {
    <Scalar as Reduce<U256>>::reduce_bytes(&FieldBytes::from(*bytes))
}

/// `int(bytes)` if it is below the group order `n`.
pub(crate) fn scalar_checked(bytes: &[u8; 32]) -> Option<Scalar> {
    Option::from(Scalar::from_repr(FieldBytes::from(*bytes)))
}

pub(crate) fn scalar_bytes(s: &Scalar) -> [u8; 32] {
    s.to_bytes().into()
}

pub(crate) fn is_zero(s: &Scalar) -> bool {
    bool::from(s.is_zero())
}

/// `s * G` for a scalar that may be secret: the temporary libsecp256k1 key is wiped.
pub(crate) fn base_mul(s: &Scalar) -> Point {
    let mut bytes = scalar_bytes(s);
    let point = SecretKey::from_secret_bytes(bytes).ok().map(|mut sk| {
        let p = PublicKey::from_secret_key(&sk);
        sk.non_secure_erase();
        p
    });
    bytes.zeroize();
    point
}

/// The generator `G`.
static GENERATOR: std::sync::LazyLock<Point> =
    std::sync::LazyLock::new(|| parse33(&join(&[&[0x02], &secp256k1::constants::GENERATOR_X])));

/// `s * G` for a public scalar (verification, tweaks): `G + (s - 1) * G` through
/// libsecp256k1's tweak-add, which multiplies with the precomputed tables of `G` in variable
/// time. [`base_mul`] goes through the secret-key path instead, which also re-randomises the
/// global context on every call; that doubles its cost and protects nothing when `s` is public.
pub(crate) fn base_mul_public(s: &Scalar) -> Point {
    if is_zero(s) {
        return None;
    }
    let Some(g) = *GENERATOR else {
        return base_mul(s);
    };
    let tweak = secp256k1::Scalar::from_be_bytes(scalar_bytes(&(*s - Scalar::ONE))).ok()?;
    g.add_exp_tweak(&tweak).ok()
}

/// `s * P` (public inputs only).
pub(crate) fn mul(p: &PublicKey, s: &Scalar) -> Point {
    let tweak = secp256k1::Scalar::from_be_bytes(scalar_bytes(s)).ok()?;
    p.mul_tweak(&tweak).ok()
}

/// `s * P` where `P` may be infinity.
pub(crate) fn mul_point(p: &Point, s: &Scalar) -> Point {
    p.as_ref().and_then(|p| mul(p, s))
}

pub(crate) fn add(a: &Point, b: &Point) -> Point {
    match (a, b) {
        (None, x) | (x, None) => *x,
        (Some(a), Some(b)) => a.combine(b).ok(),
    }
}

pub(crate) fn neg(p: &Point) -> Point {
    p.map(PublicKey::negate)
}

/// Sum of a list of points; `None` if the sum (or the list) is empty/infinity. One call into
/// libsecp256k1, which adds in Jacobian coordinates and normalises once.
pub(crate) fn sum<'a>(points: impl IntoIterator<Item = &'a PublicKey>) -> Point {
    let refs: Vec<&PublicKey> = points.into_iter().collect();
    PublicKey::combine_keys(&refs).ok()
}

pub(crate) fn ser33(p: &PublicKey) -> [u8; 33] {
    p.serialize()
}

/// `cbytes_ext`: 33 zero bytes for infinity (BIP327).
pub(crate) fn ser33_ext(p: &Point) -> [u8; 33] {
    p.as_ref().map_or([0u8; 33], ser33)
}

/// `xbytes`: the 32-byte X coordinate.
pub(crate) fn x32(p: &PublicKey) -> [u8; 32] {
    p.x_only_public_key().0.to_byte_array()
}

pub(crate) fn has_even_y(p: &PublicKey) -> bool {
    p.serialize()[0] == 0x02
}

/// `cpoint`: parse a 33-byte compressed point.
pub(crate) fn parse33(bytes: &[u8; 33]) -> Option<PublicKey> {
    PublicKey::from_byte_array_compressed(*bytes).ok()
}

/// `cpoint_ext`: 33 zero bytes are infinity (`Some(None)`), otherwise a valid point.
pub(crate) fn parse33_ext(bytes: &[u8; 33]) -> Option<Point> {
    if bytes.iter().all(|b| *b == 0) {
        Some(None)
    } else {
        parse33(bytes).map(Some)
    }
}

/// Whether the Y coordinate of `p` is a quadratic residue modulo p (Jacobi symbol 1).
pub(crate) fn has_square_y(p: &PublicKey) -> bool {
    let uncompressed = p.serialize_uncompressed();
    let mut y = [0u8; 32];
    y.copy_from_slice(uncompressed.get(33..65).unwrap_or(&[0u8; 32]));
    let Some(fe) = Option::<FieldElement>::from(FieldElement::from_bytes(&FieldBytes::from(y)))
    else {
        return false;
    };
    !bool::from(fe.normalizes_to_zero()) && bool::from(fe.sqrt().is_some())
}

/// Whether 32 big-endian bytes are a field element (below p).
pub(crate) fn is_field_element(bytes: &[u8; 32]) -> bool {
    bool::from(FieldElement::from_bytes(&FieldBytes::from(*bytes)).is_some())
}

/// Concatenate byte strings into a fixed-size array (extra input is ignored, missing input
/// stays zero; callers pass exactly `N` bytes).
pub(crate) fn join<const N: usize>(parts: &[&[u8]]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(parts.iter().flat_map(|p| p.iter())) {
        *o = *b;
    }
    out
}

/// A SHA-256 state that has absorbed `SHA256(tag) || SHA256(tag)` (BIP340 tagged hash prefix).
pub(crate) fn tagged_prefix(tag: &str) -> Sha256 {
    let t = Sha256::digest(tag.as_bytes());
    let mut h = Sha256::new();
    h.update(t);
    h.update(t);
    h
}

/// Tagged hash helper over a cached prefix.
pub(crate) fn tagged(prefix: &Sha256, parts: &[&[u8]]) -> [u8; 32] {
    let mut h = prefix.clone();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

pub(crate) fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// Cached tagged-hash prefixes for every tag the protocols use.
pub(crate) mod tags {
    use super::tagged_prefix;
    use sha2::Sha256;
    use std::sync::LazyLock;

    pub(crate) static KEYAGG_LIST: LazyLock<Sha256> =
        LazyLock::new(|| tagged_prefix("KeyAgg list"));
    pub(crate) static KEYAGG_COEF: LazyLock<Sha256> =
        LazyLock::new(|| tagged_prefix("KeyAgg coefficient"));
    pub(crate) static NONCE_COEF: LazyLock<Sha256> =
        LazyLock::new(|| tagged_prefix("MuSig/noncecoef"));
    pub(crate) static AUX: LazyLock<Sha256> = LazyLock::new(|| tagged_prefix("MuSig/aux"));
    pub(crate) static NONCE: LazyLock<Sha256> = LazyLock::new(|| tagged_prefix("MuSig/nonce"));
    pub(crate) static DET_NONCE: LazyLock<Sha256> =
        LazyLock::new(|| tagged_prefix("MuSig/deterministic/nonce"));
    pub(crate) static CHALLENGE: LazyLock<Sha256> =
        LazyLock::new(|| tagged_prefix("BIP0340/challenge"));
    pub(crate) static TAP_TWEAK: LazyLock<Sha256> = LazyLock::new(|| tagged_prefix("TapTweak"));
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The public path agrees with the secret-key path on the edge scalars and random ones.
    #[test]
    fn base_mul_public_agrees_with_base_mul() {
        let mut scalars = vec![
            Scalar::ZERO,
            Scalar::ONE,
            -Scalar::ONE,
            Scalar::ONE + Scalar::ONE,
        ];
        for i in 0..64u8 {
            scalars.push(scalar_reduce(&sha256(&[b"base_mul", &[i]])));
        }
        for s in &scalars {
            assert_eq!(base_mul_public(s), base_mul(s), "{:?}", scalar_bytes(s));
        }
        assert_eq!(base_mul_public(&Scalar::ZERO), None);
    }
}
