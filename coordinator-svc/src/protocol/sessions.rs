//! The session registry: create, messages of members, orphans, signer answers. Peers'
//! announcements live in `announce.rs`, joins in `joins.rs`, restore and history replay in
//! `restore.rs`; each session's own rules in [`super::session`].

use rand::RngCore as _;
use shared::election::{ElectionMethod, SessionId, elect};
use shared::musig::{PartialSignature, PubNonce};
use shared::security::Reason;
use shared::wire::{self, Announce, Body, Header, Message, SessionContext};

use super::pools::PoolRole;
use super::session::{Action, Phase, Session};
use super::{
    Core, Effect, ErrorReason, MAX_ORPHAN_SESSIONS, MAX_ORPHAN_VALUES, MAX_ORPHANS_PER_SESSION,
    NodeError, NodeEvent, SessionView,
};
use crate::envelope::Refusal;
use crate::store::SessionRecord;
use libp2p_identity::PeerId;

pub use crate::p2p::names::session_record_key;

impl Core {
    pub(super) fn schedule_timeout(&mut self, id: SessionId) {
        let stuck = self.settings.stuck_timeout_ms;
        match self.sessions.get(&id).and_then(|s| s.deadline(stuck)) {
            Some(at) => self.timeouts.schedule(at, id),
            None => self.timeouts.cancel(id),
        }
    }

    /// Peers attested for another member's key.
    fn participant_peers(&self, session: &Session) -> Vec<PeerId> {
        self.guard
            .peer_keys
            .iter()
            .filter(|(p, keys)| {
                **p != self.me
                    && keys
                        .iter()
                        .any(|k| session.index_of(k).is_some() && !self.keys.contains(k))
            })
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether every signer key of the session that is not ours belongs to a peer we know
    /// (by its attestation) and are connected to.
    fn all_members_connected(&self, id: SessionId) -> bool {
        let Some(session) = self.sessions.get(&id) else {
            return false;
        };
        session
            .context
            .signer_keys
            .iter()
            .filter(|k| !self.keys.contains(*k))
            .all(|k| {
                self.guard
                    .peer_keys
                    .iter()
                    .any(|(p, keys)| keys.contains(k) && self.connected.contains(p))
            })
    }

    /// Send to every participant and remember the message for those who connect later.
    fn broadcast_session(&mut self, id: SessionId, bytes: Vec<u8>, out: &mut Vec<Effect>) {
        let Some(session) = self.sessions.get(&id) else {
            return;
        };
        let peers = self.participant_peers(session);
        let entry = self.sent.entry(id).or_default();
        entry.0.push(bytes.clone());
        entry.1.extend(peers.iter().copied());
        for peer in peers {
            out.push(Effect::Send {
                peer,
                bytes: bytes.clone(),
            });
        }
    }

    pub(super) fn record(&self, id: SessionId) -> Option<SessionRecord> {
        let s = self.sessions.get(&id)?;
        let sent = self.sent.get(&id).map(|x| x.0.as_slice()).unwrap_or(&[]);
        // Our sent messages are kept to be sent again to members that missed them, which only
        // an unfinished session needs: a finished one is stored without them (they were most
        // of a stored session's size: found by the soak run).
        let sent = if s.phase.is_terminal() { &[] } else { sent };
        let mut rec = s.to_record(sent);
        if s.phase.is_terminal() && !super::failover::running(s) {
            rec.finished_at_ms = self.finished_at.get(&id).copied();
        }
        Some(rec)
    }

    /// A session no longer in memory, from its stored record (finished sessions are read from
    /// the store until the retention prunes them).
    pub fn stored_view(&self, now: i64, id: SessionId, rec: &SessionRecord) -> Option<SessionView> {
        Session::from_record(id, rec, &self.keys, now)
            .ok()
            .map(|(s, _)| SessionView::of(&s))
    }

    /// A session ended without signing: the signer may destroy the nonces it issued for our
    /// keys and that were not used for a partial signature.
    fn release_nonces(s: &Session, out: &mut Vec<Effect>) {
        let keys: Vec<[u8; 33]> = s
            .local
            .iter()
            .filter(|i| s.nonces[**i].is_some() && s.psigs[**i].is_none())
            .filter_map(|i| s.key(*i))
            .collect();
        if !keys.is_empty() && s.signatures.is_none() {
            out.push(Effect::ReleaseNonces {
                ids: s.context.item_ids(s.nonce_session()),
                keys,
            });
        }
    }

    /// Persist a session now (first in what follows), with the events that waited for it
    /// ([`super::unstored`]).
    pub(super) fn persist(&mut self, id: SessionId, fx: &mut Vec<Effect>) {
        if let Some(record) = self.record(id) {
            fx.push(Effect::Persist {
                id,
                record: Box::new(record),
            });
            self.now_stored(id, fx);
        }
    }

    /// Perform a session's actions: the session is stored first, then its messages, signer
    /// requests and events follow.
    pub(super) fn apply(
        &mut self,
        now: i64,
        id: SessionId,
        actions: Vec<Action>,
        fx: &mut Vec<Effect>,
    ) {
        self.apply_storing(now, id, actions, true, fx);
    }

    /// [`Core::apply`] for our signer's nonce or partial signature. When all it causes is its
    /// broadcast, the broadcast does not wait for a write of its own: the session is written
    /// with its next record (the phase change its peers' contributions complete, or at the
    /// latest [`super::unstored::HOLD_MS`] later), as a peer's contribution is. What a crash
    /// before that write loses is recomputed, not lost: a restart resumes the session by its
    /// phase and asks the signer again, which answers a repeated request with the same nonce or
    /// partial signature (or refuses, and the session aborts with the reason), and the restart
    /// skips [`super::RESTART_SEQUENCE_SKIP`] sequence numbers, so that no number leaves twice with
    /// different messages. Anything else (a phase change) is written first, as always.
    fn apply_own(&mut self, now: i64, id: SessionId, actions: Vec<Action>, fx: &mut Vec<Effect>) {
        let only_broadcasts = !actions.is_empty()
            && actions
                .iter()
                .all(|a| matches!(a, Action::Broadcast { .. }));
        if only_broadcasts {
            self.mark_unstored(now, id, Vec::new());
        }
        self.apply_storing(now, id, actions, !only_broadcasts, fx);
    }

    fn apply_storing(
        &mut self,
        now: i64,
        id: SessionId,
        actions: Vec<Action>,
        store: bool,
        fx: &mut Vec<Effect>,
    ) {
        if actions.is_empty() {
            self.schedule_timeout(id);
            return;
        }
        let mut out = Vec::new();
        for action in actions {
            match action {
                Action::Broadcast { from, body } => {
                    let Some(session) = self.sessions.get_mut(&id) else {
                        continue;
                    };
                    let sequence = session.next_sequence(&from);
                    let msg = Message {
                        header: Header {
                            session_id: id,
                            sender: from,
                            sequence,
                            timestamp_ms: now,
                        },
                        body,
                    };
                    match self.envelope(&msg.to_pb(), &from) {
                        Ok(bytes) => self.broadcast_session(id, bytes, &mut out),
                        Err(e) => tracing::error!(session = %id, error = %e, "cannot wrap message"),
                    }
                }
                // Never for a session our application has not joined: a peer's one-round
                // session starts in PARTIAL_SIG_EXCHANGE before our join, and a restore resumes
                // by phase (found in review: after a restart the node signed a peer's one-round
                // session its application never approved).
                Action::RequestNonces => {
                    let Some(s) = self.sessions.get(&id).filter(|s| s.locally_joined) else {
                        continue;
                    };
                    for &index in &s.local {
                        if let Some(key) = s.key(index) {
                            out.push(Effect::Nonce {
                                id,
                                index,
                                key,
                                context: s.context.clone(),
                                pooled: s.pool_slot,
                            });
                        }
                    }
                }
                Action::RequestPartialSignatures => {
                    let Some(s) = self.sessions.get(&id).filter(|s| s.locally_joined) else {
                        continue;
                    };
                    let nonces: Vec<Vec<PubNonce>> =
                        (0..s.count()).map(|item| s.nonces_for(item)).collect();
                    for &index in &s.local {
                        if let Some(key) = s.key(index) {
                            out.push(Effect::PartialSign {
                                id,
                                index,
                                key,
                                context: s.context.clone(),
                                nonces: nonces.clone(),
                                nonce_session: s.nonce_session(),
                            });
                        }
                    }
                }
                Action::PhaseChanged { from, to } => {
                    tracing::info!(session = %id, from = from.as_str(), to = to.as_str(), "phase");
                    Self::emit(&mut out, NodeEvent::PhaseChanged { id, from, to });
                    let Some(s) = self.sessions.get(&id) else {
                        continue;
                    };
                    if to.is_terminal()
                        && let Some(hash) = s.pool_hash
                        && let Some(ids) = self.pool_slots.get_mut(&hash)
                    {
                        ids.remove(&id);
                        if ids.is_empty() {
                            // Refused slots of pools never enabled here leave no trace.
                            self.pool_slots.remove(&hash);
                        }
                    }
                    match to {
                        Phase::Complete => {
                            if let Some(signatures) = s.signatures.clone() {
                                let output_key = s.key_agg.output_key();
                                Self::emit(
                                    &mut out,
                                    NodeEvent::Complete {
                                        id,
                                        signatures,
                                        output_key,
                                    },
                                );
                            }
                            self.finished_at.insert(id, now);
                            self.start_failover(now, id, &mut out);
                        }
                        Phase::Closed if s.pool_slot => {
                            // Used by a one-round session, which signs with its nonces.
                            self.finished_at.insert(id, now);
                            Self::emit(&mut out, NodeEvent::Closed { id });
                        }
                        Phase::Closed => {
                            Self::release_nonces(s, &mut out);
                            Self::emit(&mut out, NodeEvent::Closed { id });
                        }
                        Phase::Aborted => {
                            Self::release_nonces(s, &mut out);
                            if let Some(info) = s.abort.clone() {
                                Self::emit(&mut out, NodeEvent::Aborted { id, info });
                            }
                            self.finished_at.insert(id, now);
                            if s.pool_slot {
                                self.slot_aborted(now, id, &mut out);
                            }
                        }
                        _ => {}
                    }
                }
                Action::Joined(key) => Self::emit(&mut out, NodeEvent::Joined { id, key }),
                Action::BroadcastConfirmed { by, reference } => {
                    self.failover.cancel(id);
                    Self::emit(
                        &mut out,
                        NodeEvent::BroadcastConfirmed { id, by, reference },
                    );
                }
            }
        }
        self.schedule_timeout(id);
        // On disk before anyone hears of it.
        if store {
            self.persist(id, fx);
        }
        if self.settings.dht
            && self
                .sessions
                .get(&id)
                .is_some_and(|s| s.phase.is_terminal())
            && !self.unlisted.contains(&id)
        {
            self.unlisted.insert(id);
            out.push(Effect::RemoveRecord {
                key: session_record_key(&self.settings.session_resource_type, &id),
            });
        }
        fx.extend(out);
    }

    /// Create and announce a session (the local signer must hold one of the keys), then join.
    ///
    /// # Errors
    /// [`NodeError`].
    pub fn create(
        &mut self,
        now: i64,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout_ms: Option<i64>,
        fx: &mut Vec<Effect>,
    ) -> Result<SessionView, NodeError> {
        self.create_for(now, context, election, timeout_ms, None, fx)
    }

    /// [`Core::create`] for a request: a request id seen before returns the session it created
    /// (while that session is in memory: unfinished, or finished less than
    /// [`Settings::finished_in_memory_ms`](super::Settings) ago, also after a restart) instead of a second one.
    ///
    /// # Errors
    /// [`NodeError`]; [`ErrorReason::RequestIdReused`] when the request id created a session
    /// with another context or election method.
    pub fn create_for(
        &mut self,
        now: i64,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout_ms: Option<i64>,
        request_id: Option<String>,
        fx: &mut Vec<Effect>,
    ) -> Result<SessionView, NodeError> {
        self.create_inner(
            now,
            context,
            election,
            timeout_ms,
            request_id,
            PoolRole::None,
            fx,
        )
    }

    /// [`Core::create_for`] of an ordinary session, a nonce-pool slot, or a one-round session
    /// using one of our POOLED slots.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn create_inner(
        &mut self,
        now: i64,
        context: SessionContext,
        election: Option<ElectionMethod>,
        timeout_ms: Option<i64>,
        request_id: Option<String>,
        pool: PoolRole,
        fx: &mut Vec<Effect>,
    ) -> Result<SessionView, NodeError> {
        if let Some(rid) = &request_id
            && let Some(s) = self.requests.get(rid).and_then(|id| self.sessions.get(id))
        {
            let method = election.unwrap_or(self.settings.election_method);
            if s.context == context && s.election.method == method {
                return Ok(SessionView::of(s));
            }
            return Err(NodeError::InvalidArgument(
                ErrorReason::RequestIdReused,
                format!(
                    "request_id {rid:?} created session {} with other parameters",
                    s.id
                ),
            ));
        }
        // Sessions this party takes part in; sessions peers announced and nobody here joined
        // have their own budget and cannot crowd out the party's own work.
        let sessions = &self.sessions;
        self.joined_live.retain(|id| {
            sessions
                .get(id)
                .is_some_and(|s| !s.phase.is_terminal() && s.locally_joined && !s.pool_slot)
        });
        let active = self.joined_live.len();
        if active >= self.settings.max_active_sessions && pool != PoolRole::Slot {
            return Err(NodeError::ResourceExhausted(
                ErrorReason::TooManySessions,
                format!("{active} unfinished sessions; retry later"),
            ));
        }
        // Re-validate as a peer would (sorted distinct keys, lengths, tweaks).
        let context = match pool {
            PoolRole::Slot => SessionContext::from_pb_pool(&context.to_pb()),
            // One round: one message (a slot holds one nonce per party).
            PoolRole::Uses(_) => SessionContext::from_pb(&context.to_pb()),
            _ => SessionContext::from_pb_session(&context.to_pb()),
        }
        .map_err(|e| NodeError::InvalidArgument(ErrorReason::InvalidField, e.to_string()))?;
        let local: Vec<usize> = (0..context.signer_keys.len())
            .filter(|i| self.keys.contains(&context.signer_keys[*i]))
            .collect();
        let Some(&first) = local.first() else {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
                "the local signer holds none of the session's keys".into(),
            ));
        };
        let creator = context.signer_keys[first];
        let key_agg = context
            .key_agg()
            .map_err(|e| NodeError::InvalidArgument(ErrorReason::InvalidField, e.to_string()))?;
        let method = election.unwrap_or(self.settings.election_method);
        let election = elect(method, &context.signer_keys)
            .map_err(|e| NodeError::InvalidArgument(ErrorReason::InvalidField, e.to_string()))?;
        let timeout = timeout_ms.unwrap_or(self.settings.session_timeout_ms);
        let expires_at_ms = now.saturating_add(timeout);
        let mut entropy = [0u8; 16];
        self.rng.fill_bytes(&mut entropy);
        let id = context.session_id(now, &entropy);
        let announce = Message {
            header: Header {
                session_id: id,
                sender: creator,
                sequence: 1,
                timestamp_ms: now,
            },
            body: Body::Announce(Box::new(Announce {
                context: context.clone(),
                election_method: method,
                created_at_ms: now,
                entropy,
                expires_at_ms,
                pool_slot: pool == PoolRole::Slot,
                uses_pool_slot: match pool {
                    PoolRole::Uses(slot) => Some(slot),
                    _ => None,
                },
                pool_nonces: Vec::new(),
            })),
        };
        let mut announce = announce;
        let mut slot_nonces = Vec::new();
        if let PoolRole::Uses(slot_id) = pool {
            slot_nonces = self
                .sessions
                .get(&slot_id)
                .filter(|s| s.phase == Phase::Pooled)
                .map(|s| s.nonces_for(0))
                .unwrap_or_default();
            if let Body::Announce(a) = &mut announce.body {
                a.pool_nonces.clone_from(&slot_nonces);
            }
        }
        let bytes = self.envelope(&announce.to_pb(), &creator)?;
        let session = Session::new(
            id,
            context,
            key_agg,
            election,
            creator,
            now,
            expires_at_ms,
            bytes.clone(),
            local,
            now,
        );
        let mut session = session;
        session.set_pool_slot(pool == PoolRole::Slot);
        if let PoolRole::Uses(slot_id) = pool {
            session.use_slot(slot_id, &slot_nonces).map_err(|e| {
                NodeError::FailedPrecondition(ErrorReason::PoolExhausted, format!("pool slot: {e}"))
            })?;
        }
        if let Some(rid) = request_id {
            self.requests.insert(rid.clone(), id);
            session.request_id = Some(rid);
        }
        self.insert_session(session);
        self.schedule_timeout(id);
        if let PoolRole::Uses(slot_id) = pool
            && let Some(slot) = self.sessions.get_mut(&slot_id)
        {
            // Used up in the same batch as the session is stored: never used twice.
            let actions = slot.consume_slot(now);
            self.apply(now, slot_id, actions, fx);
        }
        let mut out = Vec::new();
        // The DHT record is how a member the announcement cannot reach directly finds the
        // session. When every other member's peer is known and connected, the direct
        // announcement reaches them (its queue keeps it until they answer), and the record
        // would cost a lookup and a store on each of them for nobody (~10 % of a
        // coordinator's CPU at 3 parties: found by a profile under load).
        if self.settings.dht && !self.all_members_connected(id) {
            out.push(Effect::PutRecord {
                key: session_record_key(&self.settings.session_resource_type, &id),
                value: bytes.clone(),
                expires_at_ms,
            });
        }
        self.broadcast_session(id, bytes, &mut out);
        let view = self
            .sessions
            .get(&id)
            .map(SessionView::of)
            .ok_or(NodeError::Stopped)?;
        Self::emit(&mut out, NodeEvent::SessionCreated(Box::new(view)));
        // The session is stored before its announcement leaves (the join that follows stores
        // it again with the join).
        self.persist(id, fx);
        fx.extend(out);
        self.join_known(now, id, fx)
    }

    /// One session.
    pub fn session(&self, id: SessionId) -> Option<SessionView> {
        self.sessions.get(&id).map(SessionView::of)
    }

    /// Every session in memory, newest first.
    pub fn sessions(&self) -> Vec<SessionView> {
        let mut v: Vec<SessionView> = self.sessions.values().map(SessionView::of).collect();
        v.sort_by_key(|s| std::cmp::Reverse(s.created_at_ms));
        v
    }

    /// The signed announcement of a known session.
    pub fn announcement(&self, id: SessionId) -> Option<Vec<u8>> {
        self.sessions.get(&id).map(|s| s.announce.clone())
    }

    /// Close a session (abort it if unfinished, telling the others).
    ///
    /// # Errors
    /// [`NodeError::NotFound`].
    pub fn close(
        &mut self,
        now: i64,
        id: SessionId,
        reason: &str,
        fx: &mut Vec<Effect>,
    ) -> Result<Phase, NodeError> {
        let s = self.sessions.get_mut(&id).ok_or_else(|| {
            NodeError::NotFound(ErrorReason::SessionNotFound, format!("session {id}"))
        })?;
        let actions = s.close(now, reason);
        let phase = s.phase;
        self.apply(now, id, actions, fx);
        Ok(phase)
    }

    /// The signer answered a nonce request.
    pub fn on_nonce(
        &mut self,
        now: i64,
        id: SessionId,
        index: usize,
        result: Result<Vec<PubNonce>, String>,
        fx: &mut Vec<Effect>,
    ) {
        self.on_signer(now, id, index, result.map(Ok), fx);
    }

    /// The signer answered a partial-signature request.
    pub fn on_partial_signature(
        &mut self,
        now: i64,
        id: SessionId,
        index: usize,
        result: Result<Vec<PartialSignature>, String>,
        fx: &mut Vec<Effect>,
    ) {
        self.on_signer(now, id, index, result.map(Err), fx);
    }

    /// Answer a signer effect (`Nonce`, `PartialSign`) at once with an in-memory signer (the
    /// lockstep tests and harnesses); any other effect is handed back.
    pub fn answer_in_memory<R: rand::RngCore + rand::CryptoRng>(
        &mut self,
        now: i64,
        signer: &mut shared::discipline::MemorySigner,
        rng: &mut R,
        effect: Effect,
        fx: &mut Vec<Effect>,
    ) -> Option<Effect> {
        match effect {
            Effect::Nonce {
                id,
                index,
                key,
                context,
                pooled,
            } => {
                let r = signer
                    .session_nonces(rng, id, &key, &context, pooled)
                    .map_err(|e| e.to_string());
                self.on_nonce(now, id, index, r, fx);
                None
            }
            Effect::PartialSign {
                id,
                index,
                key,
                context,
                nonces,
                nonce_session,
            } => {
                let r = signer
                    .session_partial_signs(nonce_session, &key, &context, &nonces)
                    .map_err(|e| e.to_string());
                self.on_partial_signature(now, id, index, r, fx);
                None
            }
            other => Some(other),
        }
    }

    fn on_signer(
        &mut self,
        now: i64,
        id: SessionId,
        index: usize,
        result: Result<Result<Vec<PubNonce>, Vec<PartialSignature>>, String>,
        fx: &mut Vec<Effect>,
    ) {
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let contributed = result.is_ok();
        // Our signer refused one of the session's requests for this key: the session aborts,
        // and every nonce it may have issued for the key (a batch's other messages, requests
        // still in flight when one was refused) is released, not left to hold the signer's
        // capacity until its TTL (found in review: a policy refusing one message of a batch
        // left the others' nonces behind).
        let release = match (&result, s.key(index)) {
            (Err(_), Some(key)) => Some(Effect::ReleaseNonces {
                ids: s.context.item_ids(s.nonce_session()),
                keys: vec![key],
            }),
            _ => None,
        };
        let lost_pool = match &result {
            Err(e) if s.uses_slot.is_some() && e.contains("no nonce for") => {
                Some(s.context.pool_hash())
            }
            _ => None,
        };
        let actions = match result {
            Ok(Ok(nonce)) => s.on_local_nonce(now, index, nonce),
            Ok(Err(psig)) => s.on_local_psig(now, index, psig),
            Err(e) => {
                let mut a = Vec::new();
                s.fail(
                    now,
                    wire::AbortCode::SignerRefused,
                    format!("local signer refused: {e}"),
                    Vec::new(),
                    &mut a,
                );
                a
            }
        };
        if contributed {
            self.apply_own(now, id, actions, fx);
        } else {
            self.apply(now, id, actions, fx);
        }
        fx.extend(release);
        if contributed {
            Self::emit(fx, NodeEvent::Contributed { id });
        }
        if let Some(hash) = lost_pool {
            self.pool_nonces_lost(now, hash, fx);
        }
    }

    /// A message of a session from a member (envelope already opened and attested).
    pub(super) fn on_session_message(
        &mut self,
        now: i64,
        peer: PeerId,
        msg: Message,
        fx: &mut Vec<Effect>,
    ) -> Result<(), Refusal> {
        let id = msg.header.session_id;
        let Some(s) = self.sessions.get_mut(&id) else {
            // Messages of different senders can cross the announcement: keep a few.
            // Checked before anything is inserted: a refused message must not leave an empty
            // entry behind (found by the Sybil flood test: the table grew past its cap).
            if self.orphans.len() >= MAX_ORPHAN_SESSIONS && !self.orphans.contains_key(&id) {
                return Err(Refusal(
                    Reason::UnknownSession,
                    format!("session {id} is unknown"),
                ));
            }
            let values = values_in(&msg);
            if self.orphan_values + values > MAX_ORPHAN_VALUES {
                return Err(Refusal(
                    Reason::UnknownSession,
                    format!("session {id} is unknown"),
                ));
            }
            let (_, q) = self.orphans.entry(id).or_insert((now, Vec::new()));
            if q.len() >= MAX_ORPHANS_PER_SESSION {
                return Err(Refusal(
                    Reason::UnknownSession,
                    format!("session {id} is unknown"),
                ));
            }
            q.push((peer, msg));
            self.orphan_values += values;
            // A finished session out of memory (its broadcast clock runs): read it back, and
            // the kept message is handled then.
            self.load(id, fx);
            return Ok(());
        };
        let index = s.index_of(&msg.header.sender).ok_or_else(|| {
            Refusal(
                Reason::NotMember,
                "the sender key is not a signer of this session".into(),
            )
        })?;
        let digest: [u8; 32] = {
            use sha2::Digest as _;
            sha2::Sha256::digest(msg.encode()).into()
        };
        s.skip_partial_signature_check = self.planted.skip_partial_signature_check;
        // A member still sending contributions of a session complete here has not completed:
        // it missed messages (a lost connection, a restart). It gets the final signature.
        let terminal = s.phase.is_terminal();
        let behind = s.phase == Phase::Complete
            && matches!(
                msg.body,
                Body::Join | Body::NonceShare(_) | Body::PartialSigShare(_)
            );
        // A copy of a contribution held already changes nothing: answered once what the
        // first changed is on disk.
        let copy = !behind && s.already_holds(index, &msg.body);
        let actions = match s.on_remote(
            now,
            index,
            msg.header.sequence,
            &msg.body,
            self.settings.max_sequence_gap,
            self.settings.enable_replay_protection,
        ) {
            Ok(a) => {
                s.note_accepted(digest);
                Some(a)
            }
            // A byte-identical copy of a message we accepted: an honest re-send (the peer
            // restarted, or a delivery was retried). Acknowledged, not applied, not penalised,
            // nothing stored.
            Err(_) if s.was_accepted(&digest) => None,
            Err(r) => return Err(Refusal(r.reason(), r.to_string())),
        };
        if behind {
            self.send_finalized(now, id, peer, fx);
            return Ok(());
        }
        let Some(actions) = actions.filter(|_| !copy) else {
            self.hold_if_unstored(id);
            return Ok(());
        };
        let only_joins = actions.iter().all(|a| matches!(a, Action::Joined(_)));
        if only_joins && !terminal {
            // A contribution that completes nothing (a member's nonce or partial signature
            // while others are missing): kept in memory and written with the session's next
            // record; its answer and its events wait for that write.
            let events = actions
                .into_iter()
                .filter_map(|a| match a {
                    Action::Joined(key) => Some(NodeEvent::Joined { id, key }),
                    _ => None,
                })
                .collect();
            self.keep_unstored(now, id, events);
            self.schedule_timeout(id);
        } else if actions.is_empty() {
            // Accepted without visible effect in an ended session: still state to keep.
            self.persist(id, fx);
        } else {
            self.apply(now, id, actions, fx);
        }
        Ok(())
    }

    /// Send SIGNATURE_FINALIZED of a complete session to a member's peer that has not
    /// completed (once per session and peer while the session is in memory). The sequence
    /// number it takes is stored before it leaves.
    fn send_finalized(&mut self, now: i64, id: SessionId, peer: PeerId, fx: &mut Vec<Effect>) {
        if !self.finalized_to.insert((id, peer)) {
            return;
        }
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        let (Some(signatures), Some(from)) = (
            s.signatures.clone(),
            s.local.first().and_then(|i| s.key(*i)),
        ) else {
            return;
        };
        let msg = Message {
            header: Header {
                session_id: id,
                sender: from,
                sequence: s.next_sequence(&from),
                timestamp_ms: now,
            },
            body: Body::SignatureFinalized(signatures),
        };
        self.persist(id, fx);
        match self.envelope(&msg.to_pb(), &from) {
            Ok(bytes) => {
                tracing::debug!(session = %id, %peer, "final signature sent to a member behind");
                fx.push(Effect::Send { peer, bytes });
            }
            Err(e) => tracing::error!(session = %id, error = %e, "cannot wrap message"),
        }
    }
}

/// The values (nonces, partial signatures, signatures) a message carries, at least 1: what a
/// kept message for an unknown session costs ([`super::MAX_ORPHAN_VALUES`]).
pub(super) fn values_in(m: &Message) -> usize {
    match &m.body {
        Body::NonceShare(v) => v.len(),
        Body::PartialSigShare(v) => v.len(),
        Body::SignatureFinalized(v) => v.len(),
        _ => 1,
    }
}
