//! Every name on the wire in one place: the envelope signature's domain tag, GossipSub topics,
//! and DHT keys.

use shared::election::SessionId;
use shared::wire::pb;

/// Domain tag of envelope signatures.
pub const ENVELOPE_TAG: &[u8] = b"musig2/v1/envelope";
/// DHT key prefix of signer advertisements.
pub const SIGNER_KEY_PREFIX: &str = "musig2-signer:";
/// The reference's default `sessionResourceType`: DHT keys of session announcements are
/// `<resource type>:<session id>`.
pub const SESSION_RESOURCE_TYPE: &str = "musig2-session";
/// DHT key prefix of session announcements under the default resource type.
pub const SESSION_KEY_PREFIX: &str = "musig2-session:";

/// GossipSub topic name of a transaction type.
pub fn signer_topic(t: pb::TransactionType) -> String {
    let name = t
        .as_str_name()
        .trim_start_matches("TRANSACTION_TYPE_")
        .to_lowercase();
    format!("musig2:signers:{name}")
}

/// Every topic a node subscribes to.
pub fn all_topics() -> Vec<String> {
    [
        pb::TransactionType::Spend,
        pb::TransactionType::Swap,
        pb::TransactionType::Coinjoin,
        pb::TransactionType::Custody,
        pb::TransactionType::Escrow,
        pb::TransactionType::Channel,
    ]
    .into_iter()
    .map(signer_topic)
    .collect()
}

/// The DHT key of a key's advertisement.
pub fn advert_record_key(key: &[u8; 33]) -> Vec<u8> {
    format!("{SIGNER_KEY_PREFIX}{}", hex::encode(key)).into_bytes()
}

/// The DHT key of a session's announcement under `resource_type` (`sessionResourceType`).
pub fn session_record_key(resource_type: &str, id: &SessionId) -> Vec<u8> {
    format!("{resource_type}:{id}").into_bytes()
}
