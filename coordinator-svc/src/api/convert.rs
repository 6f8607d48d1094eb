//! Node views and events as the API's protobuf messages.

use super::*;

pub(super) fn phase_pb(p: Phase) -> pb::SessionPhase {
    match p {
        Phase::Init => pb::SessionPhase::Init,
        Phase::NonceExchange => pb::SessionPhase::NonceExchange,
        Phase::PartialSigExchange => pb::SessionPhase::PartialSigExchange,
        Phase::Pooled => pb::SessionPhase::Pooled,
        Phase::Complete => pb::SessionPhase::Complete,
        Phase::Closed => pb::SessionPhase::Closed,
        Phase::Aborted => pb::SessionPhase::Aborted,
    }
}

/// The phase a protobuf phase names (not UNSPECIFIED).
pub(super) fn phase_of(p: pb::SessionPhase) -> Phase {
    match p {
        pb::SessionPhase::Init | pb::SessionPhase::Unspecified => Phase::Init,
        pb::SessionPhase::NonceExchange => Phase::NonceExchange,
        pb::SessionPhase::PartialSigExchange => Phase::PartialSigExchange,
        pb::SessionPhase::Pooled => Phase::Pooled,
        pb::SessionPhase::Complete => Phase::Complete,
        pb::SessionPhase::Closed => Phase::Closed,
        pb::SessionPhase::Aborted => Phase::Aborted,
    }
}

/// The protobuf form of an open signing request.
pub(super) fn open_request_pb(
    r: &crate::protocol::matchmaking::OpenRequest,
) -> pb::OpenSigningRequest {
    pb::OpenSigningRequest {
        signing_request_id: hex::encode(r.id),
        direction: if r.from.is_some() {
            pb::SigningRequestDirection::Received
        } else {
            pb::SigningRequestDirection::Sent
        } as i32,
        from_peer_id: r.from.map(|p| p.to_string()).unwrap_or_default(),
        context: Some(r.context.to_pb()),
        expires_at_ms: r.expires_at_ms,
        accepted_keys: r.accepted.iter().map(|k| k.to_vec()).collect(),
    }
}

pub(super) fn u32s(v: &[usize]) -> Vec<u32> {
    v.iter()
        .map(|i| u32::try_from(*i).unwrap_or(u32::MAX))
        .collect()
}

/// The one signature of a single-message session (none for a batch).
pub fn single_signature(sigs: &[shared::musig::Signature]) -> Option<Vec<u8>> {
    match sigs {
        [one] => Some(one.0.to_vec()),
        _ => None,
    }
}

/// Every signature, in message order.
pub fn signatures_pb(sigs: &[shared::musig::Signature]) -> Vec<Vec<u8>> {
    sigs.iter().map(|s| s.0.to_vec()).collect()
}

/// The protobuf view of a session.
pub fn session_pb(v: &SessionView) -> pb::Session {
    let list = |k: &[[u8; 33]]| k.iter().map(|k| k.to_vec()).collect::<Vec<_>>();
    pb::Session {
        session_id: v.id.to_string(),
        context: Some(v.context.to_pb()),
        phase: phase_pb(v.phase) as i32,
        creator_key: v.creator.to_vec(),
        election_method: wire::election_to_pb(v.election.method) as i32,
        coordinator_index: u32::try_from(v.election.coordinator_index).unwrap_or(u32::MAX),
        priority_list: u32s(&v.election.priority_list),
        election_proof: v.election.proof_hex(),
        aggregate_key: v.aggregate_key.to_vec(),
        output_key: v.output_key.to_vec(),
        joined_keys: list(&v.joined),
        nonce_keys: list(&v.nonce_keys),
        partial_signature_keys: list(&v.psig_keys),
        final_signature: v
            .signatures
            .as_deref()
            .and_then(single_signature)
            .filter(|_| v.context.batch.is_empty()),
        final_signatures: v
            .signatures
            .iter()
            .flatten()
            .map(|s| s.0.to_vec())
            .collect(),
        abort_reason: v.abort.as_ref().map(|a| a.reason.clone()),
        abort_code: v.abort.as_ref().map_or(0, |a| a.code.to_pb() as i32),
        request_id: v.request_id.clone().unwrap_or_default(),
        culprits: v
            .abort
            .as_ref()
            .map(|a| list(&a.culprits))
            .unwrap_or_default(),
        created_at_ms: v.created_at_ms,
        expires_at_ms: v.expires_at_ms,
        local_keys: list(&v.local_keys),
        failover_attempt: u32::try_from(v.failover.attempt).unwrap_or(u32::MAX),
        broadcast_confirmed: v.failover.confirmed.is_some(),
    }
}

/// The protobuf form of a discovered signer.
pub fn discovered_pb(
    key: &[u8; 33],
    peer: &libp2p::PeerId,
    a: &wire::Advertisement,
) -> pb::DiscoveredSigner {
    pb::DiscoveredSigner {
        signer_key: key.to_vec(),
        peer_id: peer.to_string(),
        transaction_types: a.transaction_types.iter().map(|t| *t as i32).collect(),
        min_amount: a.min_amount,
        max_amount: (a.max_amount != 0).then_some(a.max_amount),
        expires_at_ms: a.expires_at_ms,
        description: a.description.clone(),
    }
}

/// The protobuf form of an event (None for internal ones).
pub fn event_pb(e: &NodeEvent) -> Option<Ev> {
    Some(match e {
        NodeEvent::SessionCreated(v) => Ev::SessionCreated(pb::SessionCreated {
            session: Some(session_pb(v)),
        }),
        NodeEvent::Joined { id, key } => Ev::SessionJoined(pb::SessionJoined {
            session_id: id.to_string(),
            signer_key: key.to_vec(),
        }),
        NodeEvent::PhaseChanged { id, from, to } => Ev::PhaseChanged(pb::PhaseChanged {
            session_id: id.to_string(),
            from_phase: phase_pb(*from) as i32,
            to_phase: phase_pb(*to) as i32,
        }),
        NodeEvent::Complete {
            id,
            signatures,
            output_key,
        } => Ev::SessionComplete(pb::SessionComplete {
            session_id: id.to_string(),
            signature: single_signature(signatures).unwrap_or_default(),
            output_key: output_key.to_vec(),
            signatures: signatures_pb(signatures),
        }),
        NodeEvent::Closed { id } => Ev::SessionClosed(pb::SessionClosed {
            session_id: id.to_string(),
        }),
        NodeEvent::Aborted { id, info } => Ev::SessionError(pb::SessionError {
            session_id: id.to_string(),
            reason: info.reason.clone(),
            culprits: info.culprits.iter().map(|k| k.to_vec()).collect(),
            code: info.code.to_pb() as i32,
        }),
        NodeEvent::ShouldBroadcast {
            id,
            index,
            attempt,
            signatures,
        } => Ev::ShouldBroadcast(pb::ShouldBroadcast {
            session_id: id.to_string(),
            coordinator_index: u32::try_from(*index).unwrap_or(u32::MAX),
            attempt: u32::try_from(*attempt).unwrap_or(u32::MAX),
            signature: single_signature(signatures).unwrap_or_default(),
            signatures: signatures_pb(signatures),
        }),
        NodeEvent::CoordinatorFailed {
            id,
            failed_index,
            attempt,
            next_index,
        } => Ev::CoordinatorFailed(pb::CoordinatorFailed {
            session_id: id.to_string(),
            failed_index: u32::try_from(*failed_index).unwrap_or(u32::MAX),
            attempt: u32::try_from(*attempt).unwrap_or(u32::MAX),
            next_index: u32::try_from(*next_index).unwrap_or(u32::MAX),
        }),
        NodeEvent::FailoverExhausted { id, attempts } => {
            Ev::FailoverExhausted(pb::FailoverExhausted {
                session_id: id.to_string(),
                attempts: u32::try_from(*attempts).unwrap_or(u32::MAX),
            })
        }
        NodeEvent::BroadcastConfirmed { id, by, reference } => {
            Ev::BroadcastConfirmed(pb::BroadcastConfirmed {
                session_id: id.to_string(),
                confirmed_by: by.to_vec(),
                broadcast_reference: reference.clone(),
            })
        }
        NodeEvent::PeerGraylisted {
            peer,
            reason,
            until_ms,
        } => Ev::PeerGraylisted(pb::PeerGraylisted {
            peer_id: peer.to_string(),
            reason: reason.clone(),
            until_ms: *until_ms,
        }),
        NodeEvent::PeerBlacklisted { peer, reason } => Ev::PeerBlacklisted(pb::PeerBlacklisted {
            peer_id: peer.to_string(),
            reason: reason.clone(),
        }),
        NodeEvent::PeerShouldBan { peer, reason } => Ev::PeerShouldBan(pb::PeerShouldBan {
            peer_id: peer.to_string(),
            reason: reason.clone(),
        }),
        NodeEvent::SignerDiscovered {
            key,
            peer,
            advertisement,
        } => Ev::SignerDiscovered(pb::SignerDiscovered {
            signer: Some(discovered_pb(key, peer, advertisement)),
        }),
        NodeEvent::SigningRequestReceived {
            request_id,
            peer,
            context,
            transaction_type,
            amount,
        } => Ev::SigningRequestReceived(pb::SigningRequestReceived {
            signing_request_id: hex::encode(request_id),
            from_peer_id: peer.to_string(),
            context: Some(context.to_pb()),
            transaction_type: *transaction_type as i32,
            amount: *amount,
        }),
        NodeEvent::Rejected { .. }
        | NodeEvent::PeerIdentified { .. }
        | NodeEvent::Contributed { .. }
        | NodeEvent::AttestationsRenewed { .. }
        | NodeEvent::AttestationRenewalFailed { .. } => return None,
        NodeEvent::SigningResponseReceived {
            request_id,
            key,
            accept,
        } => Ev::SigningRequestAnswered(pb::SigningRequestAnswered {
            signing_request_id: hex::encode(request_id),
            signer_key: key.to_vec(),
            accepted: *accept,
        }),
    })
}

pub(super) fn event_session(e: &Ev) -> Option<&str> {
    Some(match e {
        Ev::SessionCreated(x) => x.session.as_ref().map(|s| s.session_id.as_str())?,
        Ev::SessionJoined(x) => &x.session_id,
        Ev::PhaseChanged(x) => &x.session_id,
        Ev::SessionComplete(x) => &x.session_id,
        Ev::SessionClosed(x) => &x.session_id,
        Ev::SessionError(x) => &x.session_id,
        Ev::ShouldBroadcast(x) => &x.session_id,
        Ev::CoordinatorFailed(x) => &x.session_id,
        Ev::FailoverExhausted(x) => &x.session_id,
        Ev::BroadcastConfirmed(x) => &x.session_id,
        _ => return None,
    })
}
