//! Built-in invariants that hold with no policy configured at all.
//!
//! **No MuSig2 session may end in a key this signer holds.** A caller that picks a key set with a
//! key it controls and one of ours, plus tweaks, can steer the *output key* onto our own key: in
//! BIP340 the second distinct key of the list gets coefficient 1, so `Q = a·A + S`, and a plain
//! (or x-only) tweak `t = -a·x_A` cancels the attacker's share, leaving `Q + t·G = S`. The final
//! MuSig2 signature would then be an ordinary single-signer BIP340 signature by `S` on a message
//! the caller chose (for example a peer attestation that lives for years). The signer therefore
//! refuses any context whose aggregate key or output key has the x coordinate of one of its own
//! keys — both formats, both parities (BIP340 verifiers see only x).

pub use shared::discipline::{OwnKeyCollision, check_context, own_key_collision};

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn negate(k: &[u8; 33]) -> [u8; 33] {
        let mut n = *k;
        n[0] ^= 1; // 0x02 <-> 0x03: the same x, the other y
        n
    }

    #[test]
    fn collisions_by_x_coordinate_in_either_slot_and_parity() {
        let ours = [[2u8; 33], [3u8; 33]];
        let other = [9u8; 33];
        // Table: (aggregate, output) -> expected slot.
        let cases: [([u8; 33], [u8; 33], Option<&str>); 5] = [
            (other, other, None),
            (other, ours[0], Some("output key")),
            (other, negate(&ours[1]), Some("output key")),
            (ours[1], other, Some("aggregate key")),
            (negate(&ours[0]), other, Some("aggregate key")),
        ];
        for (agg, out, want) in cases {
            let got = own_key_collision(&ours, &agg, &out).map(|c| c.which);
            assert_eq!(got, want, "aggregate {agg:?} output {out:?}");
        }
    }

    #[test]
    fn lotus_context_equal_to_our_key_is_refused_whatever_the_format() {
        // The check looks only at points: a Lotus output key equal to ours (which the Lotus
        // construction cannot reach, see the adversarial suite) is refused like a BIP340 one.
        use shared::musig::{KeyAggContext, SecretKey, SignatureFormat};
        let ours = SecretKey::from_bytes(&[7; 32]).unwrap().public_key();
        let ctx = KeyAggContext::new(SignatureFormat::Lotus, &[ours]).unwrap();
        assert!(check_context([&ours], &ctx).is_ok(), "a·S is not S");
        assert_eq!(
            own_key_collision([&ours], &ctx.aggregate_key(), &ours)
                .unwrap()
                .which,
            "output key"
        );
        assert!(check_context([&ctx.output_key()], &ctx).is_err());
    }
}
