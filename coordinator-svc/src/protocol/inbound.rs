//! Inbound checks: every frame, gossip message and DHT record from a peer goes through the
//! envelope checks ([`crate::envelope`]), the attestation of its sender key (at most 10 keys per
//! peer), then to the part it is for. Every refusal is counted against the peer that provably
//! sent it, and the guard's verdict becomes a ban.

use libp2p_identity::PeerId;
use shared::election::SessionId;
use shared::security::Reason;
use shared::security::Verdict;
use shared::wire::{Body, Header, MAX_DIRECT_MESSAGE_BYTES, Message};

use super::{Core, Effect, ErrorReason, NodeError, NodeEvent};
use crate::envelope::Refusal;

/// A frame from the direct protocol.
#[derive(Debug, Clone, Copy)]
pub enum Frame<'a> {
    /// Its bytes.
    Bytes(&'a [u8]),
    /// Its bytes, whose envelope signature the node proved in a batch with others
    /// ([`crate::envelope::verify_signatures`]): every other check is made.
    Proven(&'a [u8]),
    /// It exceeded the frame limit (its size).
    TooLarge(usize),
}

/// What GossipSub should do with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// Valid and new: deliver and propagate.
    Accept,
    /// Valid but nothing new: drop without penalty.
    Ignore,
    /// Invalid: drop and penalise in the mesh.
    Reject,
}

impl Core {
    /// Count a refusal against `peer` and enforce the verdict.
    pub(super) fn reject(&mut self, now: i64, peer: PeerId, r: &Refusal, fx: &mut Vec<Effect>) {
        tracing::debug!(%peer, reason = r.0.as_str(), detail = %r.1, "message refused");
        Self::emit(
            fx,
            NodeEvent::Rejected {
                peer,
                reason: r.0.as_str(),
            },
        );
        match self.guard.offend(peer, r, now) {
            Verdict::None => {}
            Verdict::Graylist { until_ms, reason } => self.ban(peer, Some(until_ms), reason, fx),
            Verdict::Blacklist { reason } => self.ban(peer, None, reason, fx),
        }
    }

    /// A frame on the direct protocol. `Ok` = accepted (the answer is empty); a refusal has
    /// been counted against `peer` and is returned for the answer.
    ///
    /// # Errors
    /// The refusal.
    pub fn on_direct(
        &mut self,
        now: i64,
        peer: PeerId,
        frame: Frame<'_>,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        self.swap_hold(None);
        let outcome = match frame {
            Frame::Bytes(bytes) => self.on_request(now, peer, bytes, false, fx),
            Frame::Proven(bytes) => self.on_request(now, peer, bytes, true, fx),
            Frame::TooLarge(n) => Err(Refusal(
                Reason::TooLarge,
                format!("frame of {n} bytes over {MAX_DIRECT_MESSAGE_BYTES}"),
            )),
        };
        match &outcome {
            Ok(()) => self.guard.accept(peer),
            Err(r) => {
                self.swap_hold(None);
                self.reject(now, peer, r, fx);
            }
        }
        outcome
    }

    fn on_request(
        &mut self,
        now: i64,
        peer: PeerId,
        bytes: &[u8],
        signature_proven: bool,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let (pid, msg) = crate::envelope::open_checked(
            bytes,
            Some(peer),
            now,
            &mut self.verified,
            signature_proven,
        )?;
        self.note_keys(pid, &[msg.header.sender], fx)?;
        match &msg.body {
            Body::Hello(atts) => {
                let mut keys = Vec::new();
                for a in atts {
                    let a = self
                        .verified
                        .verify_pb(a, &pid.to_bytes(), now)
                        .map_err(|e| Refusal(Reason::Unattested, e.to_string()))?;
                    keys.push(a.signer_key);
                }
                self.note_keys(pid, &keys, fx)
            }
            Body::Announce(_) => self.on_announce(now, pid, bytes, msg, fx),
            Body::SigningRequest(_) | Body::SigningResponse { .. } => {
                self.on_matchmaking(now, pid, msg, fx)
            }
            Body::Advertisement(_) => Err(Refusal(
                Reason::Unsupported,
                format!("{} is not served on this protocol", msg.body.kind()),
            )),
            _ => self.on_session_message(now, pid, msg, fx),
        }
    }

    /// A GossipSub message (`author` = its signed source, `relay` = who passed it on).
    pub fn on_gossip(
        &mut self,
        now: i64,
        author: Option<PeerId>,
        relay: PeerId,
        bytes: &[u8],
        fx: &mut Vec<Effect>,
    ) -> Acceptance {
        let verdict = match author {
            Some(author) => self.on_advertisement(now, author, bytes, fx),
            None => Err(Refusal(Reason::Unattested, "unsigned gossip".into())),
        };
        match verdict {
            Ok(true) => Acceptance::Accept,
            Ok(false) => Acceptance::Ignore,
            // Anyone can re-inject an old signed message: staleness proves nothing about its
            // author (nor, on its own, about the relay). Dropped without penalty.
            Err(r) if matches!(r.0, Reason::TimestampSkew | Reason::Expired) => {
                tracing::debug!(%relay, reason = r.0.as_str(), "stale gossip dropped");
                Acceptance::Ignore
            }
            Err(r) => {
                self.reject(now, author.unwrap_or(relay), &r, fx);
                Acceptance::Reject
            }
        }
    }

    /// Another peer stores a record in our part of the DHT. `true` = store it.
    pub fn on_dht_put(
        &mut self,
        now: i64,
        source: PeerId,
        key: &[u8],
        value: &[u8],
        fx: &mut Vec<Effect>,
    ) -> bool {
        match crate::envelope::validate_record_in(
            &self.settings.session_resource_type,
            key,
            value,
            now,
            &mut self.verified,
        ) {
            Ok(()) => true,
            Err(r) => {
                self.reject(now, source, &r, fx);
                false
            }
        }
    }

    /// The answer to an [`Effect::GetRecord`]: the record's key and value, or why none came.
    pub fn on_record(
        &mut self,
        now: i64,
        query: u64,
        found: Result<(Vec<u8>, Vec<u8>), String>,
        fx: &mut Vec<Effect>,
    ) {
        if let Some(key) = self.take_advert_lookup(query) {
            if let Ok((record_key, value)) = found {
                self.on_advert_record(now, key, &record_key, &value, fx);
            }
            return;
        }
        let Some(sid) = self.dht_joins.remove(&query) else {
            return;
        };
        // Not found (yet): the join keeps waiting for the announcement until its deadline, and
        // the DHT is asked again a little later.
        if found.is_err()
            && let Some(a) = self.awaited.get_mut(&sid)
        {
            a.lookup_at = Some(now.saturating_add(super::DHT_LOOKUP_AFTER_MS));
            return;
        }
        if let Some(a) = self.awaited.get_mut(&sid) {
            a.queries.retain(|q| *q != query);
            if a.queries.is_empty() {
                self.awaited.remove(&sid);
            }
        }
        let result = match found {
            Ok((record_key, value)) => {
                let outcome = crate::envelope::validate_record_in(
                    &self.settings.session_resource_type,
                    &record_key,
                    &value,
                    now,
                    &mut self.verified,
                )
                .and_then(|()| {
                    let (author, msg) =
                        crate::envelope::open_with(&value, None, now, &mut self.verified)?;
                    if msg.header.session_id != sid {
                        return Err(Refusal(
                            Reason::BadRecord,
                            "record is for another session".into(),
                        ));
                    }
                    self.on_announce(now, author, &value, msg, fx)
                });
                match outcome {
                    Ok(()) if self.sessions.contains_key(&sid) => self.join_known(now, sid, fx),
                    Ok(()) => Err(NodeError::FailedPrecondition(
                        ErrorReason::NoLocalKey,
                        "the local signer holds none of the session's keys".into(),
                    )),
                    Err(r) => Err(NodeError::NotFound(
                        ErrorReason::SessionNotFound,
                        format!("session {sid}: DHT record refused ({}: {})", r.0, r.1),
                    )),
                }
            }
            Err(e) => Err(NodeError::NotFound(
                ErrorReason::SessionNotFound,
                format!(
                    "session {sid} not found in the DHT{}",
                    if e.is_empty() {
                        String::new()
                    } else {
                        format!(": {e}")
                    }
                ),
            )),
        };
        fx.push(Effect::JoinAnswer {
            query,
            result: Box::new(result),
        });
    }

    /// Record the keys `peer` is attested for; new keys trigger advertisement lookups and the
    /// replay of our messages of its sessions.
    pub(super) fn note_keys(
        &mut self,
        peer: PeerId,
        keys: &[[u8; 33]],
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        if let Some(all) = self.guard.note_keys(peer, keys)? {
            self.look_up_adverts(&all, fx);
            Self::emit(fx, NodeEvent::PeerIdentified { peer, keys: all });
            self.replay_history(peer, fx);
        }
        Ok(())
    }

    /// Tell a newly connected peer which keys we speak for.
    pub(super) fn send_hello(&mut self, now: i64, peer: PeerId, fx: &mut Vec<Effect>) {
        self.hello_seq += 1;
        let Some(first) = self.keys.first().copied() else {
            return;
        };
        let msg = Message {
            header: Header {
                session_id: SessionId([0; 16]),
                sender: first,
                sequence: self.hello_seq,
                timestamp_ms: now,
            },
            body: Body::Hello(
                self.keys
                    .iter()
                    .filter_map(|k| self.attestations.get(k).cloned())
                    .collect(),
            ),
        };
        if let Ok(bytes) = self.envelope(&msg.to_pb(), &first) {
            fx.push(Effect::Send { peer, bytes });
        }
    }
}
