//! `CombineKeys`: key aggregation without a session (the aggregate, the key signatures verify
//! under, and a Taproot address).

use musig2_proto::v1 as pb;
use shared::wire::SessionContext;

use super::{invalid, keys};

/// The aggregate of a key set with its tweaks, as a session of that set would compute it.
pub(super) fn combine(
    r: &pb::CombineKeysRequest,
) -> Result<pb::CombineKeysResponse, tonic::Status> {
    let mut sorted = keys(&r.signer_keys, "signer_keys")?;
    sorted.sort_unstable();
    let format = if r.format == 0 {
        pb::SignatureFormat::Bip340 as i32
    } else {
        r.format
    };
    // A session's own validation of keys, format and tweaks (the message plays no part in key
    // aggregation; a 32-byte one is valid in both formats).
    let ctx = SessionContext::from_pb(&pb::SessionContext {
        signer_keys: sorted.iter().map(|k| k.to_vec()).collect(),
        message: vec![0; 32],
        format,
        tweaks: r.tweaks.clone(),
        batch_messages: Vec::new(),
    })
    .map_err(|e| invalid("request", e.to_string()))?;
    let agg = ctx
        .key_agg()
        .map_err(|e| invalid("signer_keys", e.to_string()))?;
    let output = agg.output_key();
    let xonly: [u8; 32] = output[1..].try_into().unwrap_or([0; 32]);
    let address = match r.bitcoin_network.as_str() {
        "" => String::new(),
        net => {
            if format != pb::SignatureFormat::Bip340 as i32 {
                return Err(invalid(
                    "bitcoin_network",
                    "an address is only derived for the BIP340 format",
                ));
            }
            taproot_address(net, &xonly)?
        }
    };
    Ok(pb::CombineKeysResponse {
        sorted_keys: sorted.iter().map(|k| k.to_vec()).collect(),
        aggregate_key: agg.aggregate_key().to_vec(),
        output_key: output.to_vec(),
        output_key_xonly: xonly.to_vec(),
        address,
    })
}

/// The segwit v1 (bech32m, BIP350) address of an x-only output key.
pub(super) fn taproot_address(network: &str, xonly: &[u8; 32]) -> Result<String, tonic::Status> {
    let hrp = match network {
        "bitcoin" => bech32::hrp::BC,
        "testnet" | "signet" => bech32::hrp::TB,
        "regtest" => bech32::hrp::BCRT,
        _ => {
            return Err(invalid(
                "bitcoin_network",
                "one of bitcoin, testnet, signet, regtest",
            ));
        }
    };
    bech32::segwit::encode_v1(hrp, xonly).map_err(|e| invalid("bitcoin_network", e.to_string()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_address_of_an_x_only_key_is_the_bip350_vector() {
        // BIP350's valid segwit v1 address: OP_1 <79be…1798> (the x of the generator).
        let g: [u8; 32] =
            hex::decode("79be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798")
                .unwrap()
                .try_into()
                .unwrap();
        assert_eq!(
            taproot_address("bitcoin", &g).unwrap(),
            "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0"
        );
        assert!(taproot_address("mainnet", &g).is_err());
    }
}
