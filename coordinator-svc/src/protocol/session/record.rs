//! The session as the store keeps it: conversion to and from `SessionRecord` (the store's
//! schema stays out of the state machine's logic).

use std::collections::HashMap;

use super::*;

fn code_name(c: AbortCode) -> &'static str {
    match c {
        AbortCode::Closed => "closed",
        AbortCode::InvalidPartialSignature => "invalid_partial_signature",
        AbortCode::InvalidNonce => "invalid_nonce",
        AbortCode::Timeout => "timeout",
        AbortCode::SignerRefused => "signer_refused",
    }
}

fn code_of(s: &str) -> AbortCode {
    match s {
        "closed" => AbortCode::Closed,
        "invalid_partial_signature" => AbortCode::InvalidPartialSignature,
        "invalid_nonce" => AbortCode::InvalidNonce,
        "timeout" => AbortCode::Timeout,
        _ => AbortCode::SignerRefused,
    }
}

fn phase_of(s: &str) -> Option<Phase> {
    Some(match s {
        "INIT" => Phase::Init,
        "NONCE_EXCHANGE" => Phase::NonceExchange,
        "PARTIAL_SIG_EXCHANGE" => Phase::PartialSigExchange,
        "POOLED" => Phase::Pooled,
        "COMPLETE" => Phase::Complete,
        "CLOSED" => Phase::Closed,
        "ABORTED" => Phase::Aborted,
        _ => return None,
    })
}

fn key_of(h: &str) -> Option<[u8; 33]> {
    hex::decode(h).ok()?.try_into().ok()
}

/// Lower-case hex through `hex`'s byte table. `hex::encode` collects characters one by one,
/// and every commit re-encodes the whole record: at 100 parties that was 2 % of a node's CPU.
fn to_hex(bytes: impl AsRef<[u8]>) -> String {
    let bytes = bytes.as_ref();
    let mut out = vec![0u8; bytes.len() * 2];
    match hex::encode_to_slice(bytes, &mut out) {
        Ok(()) => String::from_utf8(out).unwrap_or_else(|_| hex::encode(bytes)),
        Err(_) => hex::encode(bytes),
    }
}

/// One value per message, concatenated in message order, as hex (one message: the value's hex,
/// as before batch sessions).
fn hex_values<const N: usize>(values: &[impl ToBytes<N>]) -> String {
    to_hex(values.iter().flat_map(ToBytes::bytes).collect::<Vec<u8>>())
}

/// The reverse of [`hex_values`]: exactly `count` values of `N` bytes.
fn values_of<const N: usize, T>(
    h: &str,
    count: usize,
    parse: impl Fn(&[u8; N]) -> Result<T, String>,
) -> Result<Vec<T>, String> {
    let b = hex::decode(h).map_err(|e| e.to_string())?;
    let (values, rest) = b.as_chunks::<N>();
    if values.len() != count || !rest.is_empty() {
        return Err(format!(
            "{} bytes where {count} values of {N} bytes belong",
            b.len()
        ));
    }
    values.iter().map(parse).collect()
}

trait ToBytes<const N: usize> {
    fn bytes(&self) -> [u8; N];
}

impl ToBytes<66> for PubNonce {
    fn bytes(&self) -> [u8; 66] {
        self.to_bytes()
    }
}

impl ToBytes<32> for PartialSignature {
    fn bytes(&self) -> [u8; 32] {
        self.to_bytes()
    }
}

impl ToBytes<64> for Signature {
    fn bytes(&self) -> [u8; 64] {
        self.0
    }
}

/// A stored announcement: its bytes, its sender and what it says.
type Announcement = (Vec<u8>, [u8; 33], Box<shared::wire::Announce>);

/// The stored announcement of session `id`.
fn announcement(id: SessionId, rec: &SessionRecord) -> Result<Announcement, String> {
    use prost::Message as _;
    let announce = hex::decode(&rec.announce).map_err(|e| e.to_string())?;
    let env =
        shared::wire::pb::SignedEnvelope::decode(announce.as_slice()).map_err(|e| e.to_string())?;
    let pbm =
        shared::wire::pb::WireMessage::decode(env.payload.as_slice()).map_err(|e| e.to_string())?;
    let msg = shared::wire::Message::from_pb(&pbm, pbm.timestamp_ms).map_err(|e| e.to_string())?;
    let Body::Announce(a) = msg.body else {
        return Err("not an announcement".into());
    };
    if msg.header.session_id != id {
        return Err("announcement of another session".into());
    }
    Ok((announce, msg.header.sender, a))
}

/// A finished session a restart leaves in the store: what the core keeps of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departed {
    /// Session.
    pub id: SessionId,
    /// When it finished (while its broadcast clock runs the record has no finish time: its
    /// creation then).
    pub finished_at_ms: i64,
    /// When its announcement expires.
    pub expires_at_ms: i64,
    /// Its broadcast deadline while its clock runs here.
    pub clock_ms: Option<i64>,
    /// Signers × messages (the unit of the memory cap).
    pub values: usize,
    /// Our application joined it (only then is it remembered: [`crate::protocol::Core`]'s
    /// departed table).
    pub joined: bool,
}

impl Departed {
    /// What a restart keeps of a finished session's record; `None` for an unfinished one
    /// (restored whole).
    ///
    /// # Errors
    /// A description of what does not decode.
    pub fn of(id: SessionId, rec: &SessionRecord) -> Result<Option<Departed>, String> {
        if !phase_of(&rec.phase).ok_or("unknown phase")?.is_terminal() {
            return Ok(None);
        }
        let (_, _, a) = announcement(id, rec)?;
        let f = &rec.failover;
        let running = f.deadline_ms.is_some() && f.confirmed.is_none() && !f.exhausted;
        Ok(Some(Departed {
            id,
            finished_at_ms: rec
                .finished_at_ms
                .or(rec.created_at_ms)
                .unwrap_or(a.created_at_ms),
            expires_at_ms: a.expires_at_ms,
            clock_ms: f.deadline_ms.filter(|_| running && rec.locally_joined),
            values: a.context.signer_keys.len() * a.context.count(),
            joined: rec.locally_joined,
        }))
    }
}

impl Session {
    /// The record the store keeps.
    pub fn to_record(&self, sent: &[Vec<u8>]) -> SessionRecord {
        let seqs = |m: &HashMap<[u8; 33], u64>| {
            let mut v: Vec<(String, u64)> = m.iter().map(|(k, s)| (to_hex(k), *s)).collect();
            v.sort();
            v
        };
        SessionRecord {
            announce: to_hex(&self.announce),
            phase: self.phase.as_str().into(),
            locally_joined: self.locally_joined,
            joined: self.joined.clone(),
            nonces: self
                .nonces
                .iter()
                .map(|n| n.as_deref().map(hex_values))
                .collect(),
            psigs: self
                .psigs
                .iter()
                .map(|p| p.as_deref().map(hex_values))
                .collect(),
            signature: self.signatures.as_deref().map(hex_values),
            abort: self.abort.as_ref().map(|a| {
                (
                    code_name(a.code).into(),
                    a.reason.clone(),
                    a.culprits.iter().map(to_hex).collect(),
                )
            }),
            last_seq: seqs(&self.last_seq),
            next_seq: seqs(&self.next_seq),
            sent: sent.iter().map(to_hex).collect(),
            failover: self.failover.clone(),
            finished_at_ms: None,
            created_at_ms: Some(self.created_at_ms),
            request_id: self.request_id.clone(),
        }
    }

    /// Rebuild from a record (the announcement is re-validated, except for freshness).
    ///
    /// # Errors
    /// A description of what does not decode.
    pub fn from_record(
        id: SessionId,
        rec: &SessionRecord,
        local_keys: &[[u8; 33]],
        now_ms: i64,
    ) -> Result<(Session, Vec<Vec<u8>>), String> {
        let (announce, sender, a) = announcement(id, rec)?;
        let key_agg = a.context.key_agg().map_err(|e| e.to_string())?;
        let election = shared::election::elect(a.election_method, &a.context.signer_keys)
            .map_err(|e| e.to_string())?;
        let local = (0..a.context.signer_keys.len())
            .filter(|i| local_keys.contains(&a.context.signer_keys[*i]))
            .collect();
        let mut s = Session::new(
            id,
            a.context.clone(),
            key_agg,
            election,
            sender,
            a.created_at_ms,
            a.expires_at_ms,
            announce,
            local,
            now_ms,
        );
        s.set_pool_slot(a.pool_slot);
        s.uses_slot = a.uses_pool_slot;
        let n = s.n();
        if rec.joined.len() != n || rec.nonces.len() != n || rec.psigs.len() != n {
            return Err("record lengths do not match the key list".into());
        }
        s.phase = phase_of(&rec.phase).ok_or("unknown phase")?;
        s.locally_joined = rec.locally_joined;
        s.joined = rec.joined.clone();
        let count = s.count();
        for (i, n) in rec.nonces.iter().enumerate() {
            s.nonces[i] = match n {
                Some(h) => Some(values_of(h, count, |b| {
                    PubNonce::from_bytes(b).map_err(|e| e.to_string())
                })?),
                None => None,
            };
        }
        for (i, p) in rec.psigs.iter().enumerate() {
            s.psigs[i] = match p {
                Some(h) => Some(values_of(h, count, |b| {
                    PartialSignature::from_bytes(b).map_err(|e| e.to_string())
                })?),
                None => None,
            };
        }
        if s.nonces.iter().all(Option::is_some) {
            s.aggnonce = s.aggregate_nonces().ok();
        }
        s.signatures = match &rec.signature {
            Some(h) => Some(values_of(h, count, |b| Ok(Signature(*b)))?),
            None => None,
        };
        s.abort = rec.abort.as_ref().map(|(c, r, cul)| AbortInfo {
            code: code_of(c),
            reason: r.clone(),
            culprits: cul.iter().filter_map(|k| key_of(k)).collect(),
        });
        s.last_seq = rec
            .last_seq
            .iter()
            .filter_map(|(k, v)| Some((key_of(k)?, *v)))
            .collect();
        s.next_seq = rec
            .next_seq
            .iter()
            .filter_map(|(k, v)| Some((key_of(k)?, *v)))
            .collect();
        s.failover = rec.failover.clone();
        s.request_id = rec.request_id.clone();
        let sent = rec
            .sent
            .iter()
            .filter_map(|h| hex::decode(h).ok())
            .collect();
        Ok((s, sent))
    }
}
