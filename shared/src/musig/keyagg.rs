//! Key aggregation and tweaking (BIP327 "Key Generation and Aggregation"; LOTUS.md §2 KeyAgg and
//! Taproot key path).

use secp256k1::PublicKey;

use super::arith::{
    self, Scalar, add, base_mul_public, has_even_y, mul, parse33, scalar_checked, scalar_reduce,
    ser33, tagged, tags, x32,
};
use super::{Contribution, Error, SignatureFormat, invalid};

/// A tweak applied to the aggregate key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tweak {
    /// BIP327 plain tweak `Q + t*G` (BIP340 format only).
    Plain([u8; 32]),
    /// BIP327 x-only tweak (BIP340 format only).
    XOnly([u8; 32]),
    /// Taproot key-path tweak with an optional script tree merkle root.
    ///
    /// BIP340: the BIP341 x-only tweak `TH("TapTweak", x(Q) [|| root])`. Lotus: the commitment
    /// `C = Q + TH("TapTweak", ser33(Q) || root)*G` with a 32-zero-byte root when absent.
    Taproot {
        /// Merkle root of the script tree, if any.
        merkle_root: Option<[u8; 32]>,
    },
}

/// BIP327 `KeySort`: sort 33-byte keys bytewise ascending.
pub fn key_sort(keys: &[[u8; 33]]) -> Vec<[u8; 33]> {
    let mut sorted = keys.to_vec();
    sorted.sort_unstable();
    sorted
}

/// The output of KeyAgg plus any tweaks (BIP327 `KeyGen Context`).
#[derive(Debug, Clone)]
pub struct KeyAggContext {
    format: SignatureFormat,
    keys: Vec<[u8; 33]>,
    points: Vec<PublicKey>,
    coefs: Vec<Scalar>,
    aggregate: PublicKey,
    /// Current (tweaked) key: BIP327 `Q`; Lotus: `Q` or the Taproot commitment `C`.
    tweaked: PublicKey,
    gacc: Scalar,
    tacc: Scalar,
    lotus_taproot: Option<Scalar>,
}

impl KeyAggContext {
    /// KeyAgg. BIP340 keeps the order given (sort first with [`key_sort`] if wanted); Lotus sorts
    /// the keys itself as its specification requires, so signer indices are sorted positions.
    ///
    /// # Errors
    /// [`Error::NoKeys`], [`Error::InvalidContribution`] naming the first key that is not a
    /// valid point, [`Error::AggregateKeyInfinity`].
    pub fn new(format: SignatureFormat, keys: &[[u8; 33]]) -> Result<Self, Error> {
        if keys.is_empty() {
            return Err(Error::NoKeys);
        }
        let keys = match format {
            SignatureFormat::Bip340 => keys.to_vec(),
            SignatureFormat::Lotus => key_sort(keys),
        };
        let points = keys
            .iter()
            .enumerate()
            .map(|(i, k)| parse33(k).ok_or(invalid(Some(i), Contribution::PubKey)))
            .collect::<Result<Vec<_>, _>>()?;
        let list_hash = {
            let mut h = tags::KEYAGG_LIST.clone();
            for k in &keys {
                sha2::Digest::update(&mut h, k);
            }
            <[u8; 32]>::from(sha2::Digest::finalize(h))
        };
        let coef_hash = |k: &[u8; 33]| scalar_reduce(&tagged(&tags::KEYAGG_COEF, &[&list_hash, k]));
        let coefs: Vec<Scalar> = match format {
            SignatureFormat::Bip340 => {
                // GetSecondKey: the first key that differs from key 0.
                let first = keys.first();
                let second = keys.iter().skip(1).find(|k| Some(*k) != first);
                keys.iter()
                    .map(|k| {
                        if Some(k) == second {
                            Scalar::ONE
                        } else {
                            coef_hash(k)
                        }
                    })
                    .collect()
            }
            SignatureFormat::Lotus => keys
                .iter()
                .enumerate()
                .map(|(i, k)| {
                    if i == 1 && Some(k) == keys.first() {
                        Scalar::ONE
                    } else {
                        coef_hash(k)
                    }
                })
                .collect(),
        };
        // A coefficient is never zero (a hash output reduced mod n is zero with negligible
        // probability, and such a term would be infinity, which the sum then skips).
        let terms: Vec<PublicKey> = points
            .iter()
            .zip(&coefs)
            .filter_map(|(p, a)| mul(p, a))
            .collect();
        let aggregate = arith::sum(&terms).ok_or(Error::AggregateKeyInfinity)?;
        Ok(KeyAggContext {
            format,
            keys,
            points,
            coefs,
            aggregate,
            tweaked: aggregate,
            gacc: Scalar::ONE,
            tacc: Scalar::ZERO,
            lotus_taproot: None,
        })
    }

    /// KeyAgg followed by the tweaks in order.
    ///
    /// # Errors
    /// As [`KeyAggContext::new`] and [`KeyAggContext::apply_tweak`].
    pub fn with_tweaks(
        format: SignatureFormat,
        keys: &[[u8; 33]],
        tweaks: &[Tweak],
    ) -> Result<Self, Error> {
        let mut ctx = Self::new(format, keys)?;
        for t in tweaks {
            ctx.apply_tweak(t)?;
        }
        Ok(ctx)
    }

    /// Apply one tweak (BIP327 `ApplyTweak`; Lotus Taproot commitment).
    ///
    /// # Errors
    /// [`Error::TweakOutOfRange`], [`Error::TweakInfinity`], [`Error::UnsupportedTweak`] for a
    /// plain/x-only tweak on Lotus or a second Lotus tweak.
    pub fn apply_tweak(&mut self, tweak: &Tweak) -> Result<(), Error> {
        match (self.format, tweak) {
            (SignatureFormat::Bip340, Tweak::Plain(t)) => self.bip327_tweak(t, false),
            (SignatureFormat::Bip340, Tweak::XOnly(t)) => self.bip327_tweak(t, true),
            (SignatureFormat::Bip340, Tweak::Taproot { merkle_root }) => {
                let x = x32(&self.tweaked);
                let t = match merkle_root {
                    Some(root) => tagged(&tags::TAP_TWEAK, &[&x, root]),
                    None => tagged(&tags::TAP_TWEAK, &[&x]),
                };
                self.bip327_tweak(&t, true)
            }
            (SignatureFormat::Lotus, Tweak::Taproot { merkle_root }) => {
                if self.lotus_taproot.is_some() {
                    return Err(Error::UnsupportedTweak(
                        "Lotus allows one Taproot tweak only",
                    ));
                }
                let root = merkle_root.unwrap_or([0u8; 32]);
                let t_bytes = tagged(&tags::TAP_TWEAK, &[&ser33(&self.aggregate), &root]);
                let t = scalar_checked(&t_bytes).ok_or(Error::TweakOutOfRange)?;
                let c =
                    add(&Some(self.aggregate), &base_mul_public(&t)).ok_or(Error::TweakInfinity)?;
                self.tweaked = c;
                self.lotus_taproot = Some(t);
                Ok(())
            }
            (SignatureFormat::Lotus, _) => Err(Error::UnsupportedTweak(
                "the Lotus format supports only the Taproot commitment tweak",
            )),
        }
    }

    fn bip327_tweak(&mut self, t: &[u8; 32], is_xonly: bool) -> Result<(), Error> {
        let t = scalar_checked(t).ok_or(Error::TweakOutOfRange)?;
        let negate = is_xonly && !has_even_y(&self.tweaked);
        let q = if negate {
            self.tweaked.negate()
        } else {
            self.tweaked
        };
        let q = add(&Some(q), &base_mul_public(&t)).ok_or(Error::TweakInfinity)?;
        let g = if negate { -Scalar::ONE } else { Scalar::ONE };
        self.tweaked = q;
        self.gacc = g * self.gacc;
        self.tacc = t + g * self.tacc;
        Ok(())
    }

    /// The format this context aggregates for.
    pub fn format(&self) -> SignatureFormat {
        self.format
    }

    /// Keys in aggregation order (Lotus: sorted).
    pub fn keys(&self) -> &[[u8; 33]] {
        &self.keys
    }

    /// Number of signers.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a context has at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Index of the first occurrence of `key` in the aggregation order.
    pub fn signer_index(&self, key: &[u8; 33]) -> Option<usize> {
        self.keys.iter().position(|k| k == key)
    }

    /// The aggregate key before any tweak, 33 bytes compressed.
    pub fn aggregate_key(&self) -> [u8; 33] {
        ser33(&self.aggregate)
    }

    /// The key the final signature verifies under, 33 bytes compressed (tweaked if tweaks were
    /// applied; the Lotus Taproot commitment `C`). For BIP340 the verifying key is its X.
    pub fn output_key(&self) -> [u8; 33] {
        ser33(&self.tweaked)
    }

    /// The BIP340 x-only output key (BIP327 `GetXonlyPubkey`).
    pub fn xonly_output_key(&self) -> [u8; 32] {
        x32(&self.tweaked)
    }

    /// KeyAgg coefficient of the signer at `index`, 32 bytes big-endian.
    pub fn coefficient(&self, index: usize) -> Option<[u8; 32]> {
        self.coefs.get(index).map(arith::scalar_bytes)
    }

    /// Lotus Taproot tweak `t`, if applied.
    pub fn lotus_taproot_tweak(&self) -> Option<[u8; 32]> {
        self.lotus_taproot.as_ref().map(arith::scalar_bytes)
    }

    /// Lotus Taproot output script `62 51 21 ser33(C)` when the Taproot tweak is applied.
    pub fn lotus_taproot_script(&self) -> Option<Vec<u8>> {
        self.lotus_taproot.as_ref()?;
        let mut script = vec![0x62, 0x51, 0x21];
        script.extend_from_slice(&ser33(&self.tweaked));
        Some(script)
    }

    pub(crate) fn point(&self, index: usize) -> Option<&PublicKey> {
        self.points.get(index)
    }
    pub(crate) fn coef(&self, index: usize) -> Option<&Scalar> {
        self.coefs.get(index)
    }
    pub(crate) fn tweaked_point(&self) -> &PublicKey {
        &self.tweaked
    }
    pub(crate) fn gacc(&self) -> &Scalar {
        &self.gacc
    }
    pub(crate) fn tacc(&self) -> &Scalar {
        &self.tacc
    }
    pub(crate) fn lotus_taproot_scalar(&self) -> Option<&Scalar> {
        self.lotus_taproot.as_ref()
    }
}
