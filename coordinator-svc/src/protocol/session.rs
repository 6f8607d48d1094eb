//! One signing session's state machine (DESIGN §5): `INIT -> NONCE_EXCHANGE ->
//! PARTIAL_SIG_EXCHANGE -> COMPLETE -> CLOSED` (or `ABORTED`). Pure: it takes validated inputs
//! (remote messages already authenticated, attested and checked for membership; results of
//! local signer calls) and returns the actions the node must perform. Phase rules per message
//! type, per-(signer, session) sequence windows, partial signatures verified on arrival with
//! blame, and timeouts all live here.

use std::collections::HashMap;

use shared::election::{Election, SessionId};
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, Signature, SigningSession,
};
use shared::wire::{Abort, AbortCode, Body, SessionContext};

use crate::store::{FailoverRecord, SessionRecord};

mod pool;
mod record;
pub use record::Departed;
mod rounds;

/// Session phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Announced; waiting for every signer to join.
    Init,
    /// Round 1.
    NonceExchange,
    /// Round 2.
    PartialSigExchange,
    /// A nonce-pool slot holding every member's pooled nonce, waiting to be used by one
    /// one-round session of its creator (then CLOSED) or to expire.
    Pooled,
    /// Final signature verified.
    Complete,
    /// Closed after completion.
    Closed,
    /// Aborted.
    Aborted,
}

impl Phase {
    /// Upper-case name as in DESIGN §5.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Init => "INIT",
            Phase::NonceExchange => "NONCE_EXCHANGE",
            Phase::PartialSigExchange => "PARTIAL_SIG_EXCHANGE",
            Phase::Pooled => "POOLED",
            Phase::Complete => "COMPLETE",
            Phase::Closed => "CLOSED",
            Phase::Aborted => "ABORTED",
        }
    }

    /// No further protocol messages are processed.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Complete | Phase::Closed | Phase::Aborted)
    }
}

/// Why a remote message was refused (counted against the sender).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    /// Sequence number not in `(last, last + max_gap]`.
    #[error("sequence {seq} outside ({last}, {last} + {gap}] (replayed or too far ahead)")]
    Sequence {
        /// Received.
        seq: u64,
        /// Last accepted.
        last: u64,
        /// Window.
        gap: u64,
    },
    /// The message type is not allowed in the current phase.
    #[error("{kind} is not allowed in phase {phase}")]
    OutOfPhase {
        /// Message type.
        kind: &'static str,
        /// Phase.
        phase: &'static str,
    },
    /// A second contribution from the same signer.
    #[error("duplicate {0} from this signer")]
    Duplicate(&'static str),
    /// Not one value per message of the session (a batch signs several).
    #[error("{kind} holds {actual} values for a session of {expected} messages")]
    Count {
        /// Message type.
        kind: &'static str,
        /// Messages in the session.
        expected: usize,
        /// Values received.
        actual: usize,
    },
    /// A broadcast confirmation for an attempt its sender is not responsible for.
    #[error("signer {index} is not responsible for broadcast attempt {attempt}")]
    NotResponsible {
        /// Sender's index.
        index: usize,
        /// Claimed attempt.
        attempt: u32,
    },
}

impl Reject {
    /// Why, as a refusal reason.
    pub fn reason(&self) -> shared::security::Reason {
        use shared::security::Reason;
        match self {
            Reject::Sequence { .. } => Reason::ReplayOrSequence,
            Reject::OutOfPhase { .. } => Reason::OutOfPhase,
            Reject::Duplicate(_) => Reason::Duplicate,
            Reject::Count { .. } => Reason::Length,
            Reject::NotResponsible { .. } => Reason::NotResponsible,
        }
    }
}

/// Why a session ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbortInfo {
    /// Code.
    pub code: AbortCode,
    /// Human-readable reason.
    pub reason: String,
    /// Blamed keys.
    pub culprits: Vec<[u8; 33]>,
}

/// How an abort's reason marks blame that another member claimed and this node did not verify.
pub const CLAIM_NOTE: &str = "claimed by that signer, not verified here";

impl AbortInfo {
    /// Whether the blame in this abort is another member's unverified claim.
    pub fn is_claim(&self) -> bool {
        self.reason.contains(CLAIM_NOTE)
    }
}

/// What the node must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `body` from local key `from` to every other participant.
    Broadcast {
        /// Local signer key speaking.
        from: [u8; 33],
        /// Message.
        body: Body,
    },
    /// Ask the signer for a nonce for each local key.
    RequestNonces,
    /// Ask the signer for a partial signature for each local key (all nonces are in).
    RequestPartialSignatures,
    /// Phase changed.
    PhaseChanged {
        /// Before.
        from: Phase,
        /// After.
        to: Phase,
    },
    /// A signer joined.
    Joined([u8; 33]),
    /// A participant confirmed the broadcast.
    BroadcastConfirmed {
        /// Confirming signer.
        by: [u8; 33],
        /// Its reference.
        reference: String,
    },
}

/// The session.
#[derive(Debug)]
pub struct Session {
    /// Id.
    pub id: SessionId,
    /// What is signed.
    pub context: SessionContext,
    /// KeyAgg with tweaks.
    pub key_agg: KeyAggContext,
    /// Election over the signer keys.
    pub election: Election,
    /// Creator's key.
    pub creator: [u8; 33],
    /// Creation time, ms.
    pub created_at_ms: i64,
    /// Expiry, ms.
    pub expires_at_ms: i64,
    /// The signed announce envelope (to re-send and to store in the DHT).
    pub announce: Vec<u8>,
    /// Phase.
    pub phase: Phase,
    /// Indices of keys this node speaks for.
    pub local: Vec<usize>,
    /// Whether the local application joined.
    pub locally_joined: bool,
    /// Joined signers.
    pub joined: Vec<bool>,
    /// Public nonces by signer index, one per message (see [`SessionContext::count`]).
    pub nonces: Vec<Option<Vec<PubNonce>>>,
    /// Partial signatures by signer index, one per message.
    pub psigs: Vec<Option<Vec<PartialSignature>>>,
    pending_psigs: Vec<Option<Vec<PartialSignature>>>,
    /// Aggregate nonce per message.
    aggnonce: Option<Vec<AggNonce>>,
    /// Final signatures, one per message, each verified.
    pub signatures: Option<Vec<Signature>>,
    /// Abort details.
    pub abort: Option<AbortInfo>,
    /// Last time the session made progress, ms.
    pub last_progress_ms: i64,
    /// The time of the input being handled, ms (set by every public entry point).
    now: i64,
    last_seq: HashMap<[u8; 33], u64>,
    next_seq: HashMap<[u8; 33], u64>,
    /// Digests of the messages accepted for this session (a few per member): a byte-identical
    /// copy (a peer re-sending after its restart, a retried delivery) is acknowledged without
    /// being applied again or counted against the sender.
    accepted: std::collections::HashSet<[u8; 32]>,
    /// Failover progress after completion.
    pub failover: FailoverRecord,
    /// The request that created it here (a client's request id, or a signing request's id).
    pub request_id: Option<String>,
    /// A planted bug (simulator tests): partial signatures are not verified.
    pub(crate) skip_partial_signature_check: bool,
    /// A broadcast confirmation that arrived before the session completed here: applied at
    /// completion (the confirming party completed first), never held against its sender.
    held_confirmation: Option<([u8; 33], String)>,
    /// A nonce-pool slot (no message; ends in POOLED, then CLOSED when used).
    pub pool_slot: bool,
    /// A slot's pool (its context's pool hash), computed once.
    pub pool_hash: Option<[u8; 32]>,
    /// A one-round session: the pool slot whose nonces it uses (the signer's nonce session).
    pub uses_slot: Option<SessionId>,
}

impl Session {
    /// A new session in INIT. `local` are the indices of keys this node speaks for; the creator
    /// counts as joined.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: SessionId,
        context: SessionContext,
        key_agg: KeyAggContext,
        election: Election,
        creator: [u8; 33],
        created_at_ms: i64,
        expires_at_ms: i64,
        announce: Vec<u8>,
        local: Vec<usize>,
        now_ms: i64,
    ) -> Self {
        let n = context.signer_keys.len();
        let mut joined = vec![false; n];
        if let Some(i) = context.signer_keys.iter().position(|k| *k == creator) {
            joined[i] = true;
        }
        let mut next_seq = HashMap::new();
        // The creator's announce used sequence 1.
        next_seq.insert(creator, 2);
        Session {
            id,
            context,
            key_agg,
            election,
            creator,
            created_at_ms,
            expires_at_ms,
            announce,
            phase: Phase::Init,
            local,
            locally_joined: false,
            joined,
            nonces: vec![None; n],
            psigs: vec![None; n],
            pending_psigs: vec![None; n],
            aggnonce: None,
            signatures: None,
            abort: None,
            last_progress_ms: now_ms,
            now: now_ms,
            last_seq: HashMap::from([(creator, 1)]),
            next_seq,
            accepted: std::collections::HashSet::new(),
            failover: FailoverRecord::default(),
            request_id: None,
            skip_partial_signature_check: false,
            held_confirmation: None,
            pool_slot: false,
            pool_hash: None,
            uses_slot: None,
        }
    }

    /// Whether a message with this digest was accepted before.
    pub fn was_accepted(&self, digest: &[u8; 32]) -> bool {
        self.accepted.contains(digest)
    }

    /// Remember an accepted message's digest (bounded: a member sends a handful per session).
    pub fn note_accepted(&mut self, digest: [u8; 32]) {
        if self.accepted.len() < 16 * self.n() + 16 {
            self.accepted.insert(digest);
        }
    }

    /// Number of messages signed (1, or a batch's count).
    pub fn count(&self) -> usize {
        self.context.count()
    }

    /// Values the session holds per round: signers × messages.
    pub fn values(&self) -> usize {
        self.n() * self.count()
    }

    /// What the session counts for in the budgets of unjoined sessions: 1 for a session of one
    /// message, and a batch as many sessions as its values (signers × messages) would fill
    /// at 100 signers each. Keeps what peers can make a node hold as before batches.
    pub fn weight(&self) -> usize {
        Self::weight_of(self.n(), self.count())
    }

    /// [`Session::weight`] of a session of `n` signers and `count` messages.
    pub fn weight_of(n: usize, count: usize) -> usize {
        if count <= 1 {
            return 1;
        }
        (n * count).div_ceil(shared::wire::MAX_SIGNERS).max(1)
    }

    /// Number of signers.
    pub fn n(&self) -> usize {
        self.context.signer_keys.len()
    }

    /// Key at index.
    pub fn key(&self, i: usize) -> Option<[u8; 33]> {
        self.context.signer_keys.get(i).copied()
    }

    /// Index of a key.
    pub fn index_of(&self, key: &[u8; 33]) -> Option<usize> {
        self.context.signer_keys.iter().position(|k| k == key)
    }

    /// Take the next outbound sequence number for a local key.
    pub fn next_sequence(&mut self, key: &[u8; 33]) -> u64 {
        let e = self.next_seq.entry(*key).or_insert(1);
        let s = *e;
        *e += 1;
        s
    }

    /// Skip `n` outbound sequence numbers of every local key (a restart: the last ones taken
    /// may not have been written, [`super::RESTART_SEQUENCE_SKIP`]).
    pub fn skip_sequences(&mut self, n: u64) {
        for &i in &self.local {
            if let Some(key) = self.context.signer_keys.get(i) {
                *self.next_seq.entry(*key).or_insert(1) += n;
            }
        }
    }

    /// Last accepted inbound sequence per key (for persistence).
    pub fn sequences(&self) -> &HashMap<[u8; 33], u64> {
        &self.last_seq
    }

    fn set_phase(&mut self, to: Phase, actions: &mut Vec<Action>) {
        if self.phase != to {
            actions.push(Action::PhaseChanged {
                from: self.phase,
                to,
            });
            self.phase = to;
            self.last_progress_ms = self.now;
        }
    }

    fn local_keys(&self) -> Vec<[u8; 33]> {
        self.local.iter().filter_map(|i| self.key(*i)).collect()
    }

    /// The local application joins: every local key joins.
    pub fn join_local(&mut self, now: i64) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        if self.locally_joined || self.phase.is_terminal() {
            return actions;
        }
        self.locally_joined = true;
        if self.uses_slot.is_some() {
            // One round: no joins on the wire, the partial signature says it all.
            for i in self.local.clone() {
                if let Some(key) = self.key(i)
                    && let Some(j) = self.joined.get_mut(i)
                {
                    *j = true;
                    actions.push(Action::Joined(key));
                }
            }
            if self.phase == Phase::PartialSigExchange {
                actions.push(Action::RequestPartialSignatures);
            }
            return actions;
        }
        // The join is not sent on its own: our nonce share says it (a received nonce share
        // implies its sender's join). The nonces are asked for at once, not after every
        // member joined, which took a whole round trip (with a commit on each side) off every
        // session's critical path (issue 15). A session another member never joins costs its
        // signer one nonce, which expires unused in its journal.
        for i in self.local.clone() {
            if let (Some(false), Some(key)) = (self.joined.get(i).copied(), self.key(i)) {
                self.joined[i] = true;
                actions.push(Action::Joined(key));
            }
        }
        self.after_join(&mut actions);
        actions
    }

    fn after_join(&mut self, actions: &mut Vec<Action>) {
        if self.phase == Phase::Init && self.locally_joined {
            self.set_phase(Phase::NonceExchange, actions);
            actions.push(Action::RequestNonces);
        }
    }

    /// A contribution we already hold, sent again (the peer restarted and re-sends, or we
    /// restarted and it re-delivers): nothing to do and no offence, in any phase. A
    /// *different* nonce or partial signature for the same signer stays an offence.
    pub fn already_holds(&self, index: usize, body: &Body) -> bool {
        match body {
            Body::Join => self.joined.get(index).copied().unwrap_or(false),
            Body::NonceShare(n) => self
                .nonces
                .get(index)
                .is_some_and(|x| x.as_ref() == Some(n)),
            Body::PartialSigShare(p) => {
                self.psigs.get(index).is_some_and(|x| x.as_ref() == Some(p))
                    || self
                        .pending_psigs
                        .get(index)
                        .is_some_and(|x| x.as_ref() == Some(p))
            }
            _ => false,
        }
    }

    /// A message from signer `index` (authenticated, attested, a member), with its sequence
    /// number.
    ///
    /// # Errors
    /// [`Reject`] for replays, out-of-phase and duplicate contributions; nothing changes then.
    pub fn on_remote(
        &mut self,
        now: i64,
        index: usize,
        seq: u64,
        body: &Body,
        max_gap: u64,
        replay_protection: bool,
    ) -> Result<Vec<Action>, Reject> {
        self.now = now;
        let Some(key) = self.key(index) else {
            return Err(Reject::Duplicate("signer index"));
        };
        let kind = body.kind();
        let out_of_phase = || Reject::OutOfPhase {
            kind,
            phase: self.phase.as_str(),
        };
        if self.already_holds(index, body) {
            return Ok(Vec::new());
        }
        // The session has ended here (aborted when our signer was down, closed, completed)
        // while the other members, who have not heard of it yet, still send their contributions:
        // honest, and without effect. Found by musig2-chaos: these were counted as spam until
        // the honest senders were blacklisted.
        if self.phase.is_terminal()
            && matches!(
                body,
                Body::Join | Body::NonceShare(_) | Body::PartialSigShare(_)
            )
        {
            return Ok(Vec::new());
        }
        let count = |kind, actual| Reject::Count {
            kind,
            expected: self.count(),
            actual,
        };
        // Phase and duplicate rules are checked before the sequence number is consumed.
        match body {
            Body::NonceShare(v) if v.len() != self.count() => return Err(count(kind, v.len())),
            Body::PartialSigShare(v) if v.len() != self.count() => {
                return Err(count(kind, v.len()));
            }
            Body::SignatureFinalized(v) if v.len() != self.count() => {
                return Err(count(kind, v.len()));
            }
            Body::Join if !matches!(self.phase, Phase::Init | Phase::NonceExchange) => {
                return Err(out_of_phase());
            }
            Body::Join if self.joined.get(index).copied().unwrap_or(true) => {
                return Err(Reject::Duplicate("join"));
            }
            Body::NonceShare(_) if !matches!(self.phase, Phase::Init | Phase::NonceExchange) => {
                return Err(out_of_phase());
            }
            Body::NonceShare(_) if self.nonces.get(index).is_some_and(Option::is_some) => {
                return Err(Reject::Duplicate("nonce"));
            }
            Body::PartialSigShare(_)
                if !matches!(self.phase, Phase::NonceExchange | Phase::PartialSigExchange) =>
            {
                return Err(out_of_phase());
            }
            Body::PartialSigShare(_)
                if self.psigs.get(index).is_some_and(Option::is_some)
                    || self.pending_psigs.get(index).is_some_and(Option::is_some) =>
            {
                return Err(Reject::Duplicate("partial signature"));
            }
            // Concurrent closes and aborts race honestly: an abort of a session that already
            // ended changes nothing and costs the sender nothing.
            Body::Abort(_) if self.phase.is_terminal() => return Ok(Vec::new()),
            Body::SignatureFinalized(_) if self.phase == Phase::Init => return Err(out_of_phase()),
            // Only the party responsible for the attempt it names may confirm (the attempt may be
            // ahead of ours: its clock ran first).
            Body::BroadcastConfirmed { attempt, .. }
                if self
                    .election
                    .responsible_after(usize::try_from(*attempt).unwrap_or(usize::MAX))
                    != Some(index) =>
            {
                return Err(Reject::NotResponsible {
                    index,
                    attempt: *attempt,
                });
            }
            Body::BroadcastConfirmed { .. } if self.phase == Phase::Aborted => {
                return Err(out_of_phase());
            }
            Body::Announce(_)
            | Body::Advertisement(_)
            | Body::SigningRequest(_)
            | Body::SigningResponse { .. }
            | Body::Hello(_) => {
                return Err(out_of_phase());
            }
            _ => {}
        }
        if replay_protection {
            let last = self.last_seq.get(&key).copied().unwrap_or(0);
            if !shared::wire::sequence_ok(last, seq, max_gap) {
                return Err(Reject::Sequence {
                    seq,
                    last,
                    gap: max_gap,
                });
            }
            self.last_seq.insert(key, seq);
        }
        let mut actions = Vec::new();
        match body {
            Body::Join => {
                self.joined[index] = true;
                self.last_progress_ms = self.now;
                actions.push(Action::Joined(key));
                self.after_join(&mut actions);
            }
            Body::NonceShare(n) => {
                if !self.joined[index] {
                    // A nonce implies the join (messages of different senders may cross).
                    self.joined[index] = true;
                    actions.push(Action::Joined(key));
                }
                self.nonces[index] = Some(n.clone());
                self.last_progress_ms = self.now;
                self.after_join(&mut actions);
                self.after_nonce(&mut actions);
            }
            Body::PartialSigShare(p) => {
                self.last_progress_ms = self.now;
                if self.phase == Phase::NonceExchange {
                    self.pending_psigs[index] = Some(p.clone());
                } else {
                    self.accept_psig(index, p.clone(), &mut actions);
                }
            }
            // Blame in a peer's abort is its claim: reported as such, never as a culprit this
            // node verified (a byzantine member could otherwise frame an honest one).
            Body::Abort(a) => {
                let claim = if a.culprits.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; it blames {} ({CLAIM_NOTE})",
                        a.culprits
                            .iter()
                            .map(hex::encode)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                };
                self.abort = Some(AbortInfo {
                    code: a.code,
                    reason: format!(
                        "aborted by signer {index} ({}): {}{claim}",
                        hex::encode(key),
                        a.reason
                    ),
                    culprits: Vec::new(),
                });
                self.set_phase(Phase::Aborted, &mut actions);
            }
            Body::BroadcastConfirmed { reference, .. }
                if !matches!(self.phase, Phase::Complete | Phase::Closed) =>
            {
                self.held_confirmation
                    .get_or_insert_with(|| (key, reference.clone()));
            }
            Body::BroadcastConfirmed { reference, .. } if self.failover.confirmed.is_none() => {
                self.failover.confirmed = Some((hex::encode(key), reference.clone()));
                self.failover.deadline_ms = None;
                actions.push(Action::BroadcastConfirmed {
                    by: key,
                    reference: reference.clone(),
                });
            }
            Body::SignatureFinalized(sigs)
                if !self.phase.is_terminal()
                    && self.context.messages().zip(sigs).all(|(m, sig)| {
                        shared::musig::verify(
                            self.context.format,
                            &self.key_agg.output_key(),
                            m,
                            sig,
                        )
                        .is_ok()
                    }) =>
            {
                self.complete(sigs.clone(), &mut actions);
            }
            _ => {}
        }
        Ok(actions)
    }

    /// Abort with a reason and tell the others.
    pub fn fail(
        &mut self,
        now: i64,
        code: AbortCode,
        reason: String,
        culprits: Vec<[u8; 33]>,
        actions: &mut Vec<Action>,
    ) {
        self.now = now;
        if self.phase.is_terminal() {
            return;
        }
        tracing::warn!(session = %self.id, %reason, "session aborted");
        if let Some(from) = self.local_keys().first().copied() {
            actions.push(Action::Broadcast {
                from,
                body: Body::Abort(Abort {
                    code,
                    reason: truncate(&reason, 256),
                    culprits: culprits.clone(),
                }),
            });
        }
        self.abort = Some(AbortInfo {
            code,
            reason,
            culprits,
        });
        self.set_phase(Phase::Aborted, actions);
    }

    /// Close: a complete session becomes CLOSED; an unfinished one is aborted (and the others
    /// are told).
    pub fn close(&mut self, now: i64, reason: &str) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        match self.phase {
            Phase::Complete => self.set_phase(Phase::Closed, &mut actions),
            Phase::Closed | Phase::Aborted => {}
            _ => self.fail(
                self.now,
                AbortCode::Closed,
                format!("closed: {reason}"),
                Vec::new(),
                &mut actions,
            ),
        }
        actions
    }

    /// Timeouts: session expiry and no progress for `stuck`.
    pub fn tick(&mut self, now_ms: i64, stuck_ms: i64) -> Vec<Action> {
        self.now = now_ms;
        let mut actions = Vec::new();
        if self.phase.is_terminal() {
            return actions;
        }
        if now_ms >= self.expires_at_ms {
            self.fail(
                self.now,
                AbortCode::Timeout,
                format!("session expired in phase {}", self.phase.as_str()),
                Vec::new(),
                &mut actions,
            );
        } else if self.phase != Phase::Pooled
            && now_ms.saturating_sub(self.last_progress_ms) >= stuck_ms
        {
            let waiting = self.waiting_for();
            self.fail(
                self.now,
                AbortCode::Timeout,
                format!(
                    "stuck in phase {} for {} s waiting for {}",
                    self.phase.as_str(),
                    stuck_ms / 1000,
                    if waiting.is_empty() {
                        "the local signer".to_string()
                    } else {
                        waiting.join(", ")
                    }
                ),
                Vec::new(),
                &mut actions,
            );
        }
        actions
    }

    /// When [`Session::tick`] next has something to do (expiry, or no progress for `stuck_ms`).
    pub fn deadline(&self, stuck_ms: i64) -> Option<i64> {
        (!self.phase.is_terminal()).then(|| {
            if self.phase == Phase::Pooled {
                return self.expires_at_ms;
            }
            self.expires_at_ms
                .min(self.last_progress_ms.saturating_add(stuck_ms))
        })
    }

    /// Who the session waits for, as "signer i (key)".
    pub fn waiting_for(&self) -> Vec<String> {
        let missing: Vec<usize> = match self.phase {
            Phase::Init => (0..self.n()).filter(|i| !self.joined[*i]).collect(),
            Phase::NonceExchange => (0..self.n())
                .filter(|i| self.nonces[*i].is_none())
                .collect(),
            Phase::PartialSigExchange => {
                (0..self.n()).filter(|i| self.psigs[*i].is_none()).collect()
            }
            _ => Vec::new(),
        };
        missing
            .into_iter()
            .map(|i| {
                format!(
                    "signer {i} ({})",
                    self.key(i).map(hex::encode).unwrap_or_default()
                )
            })
            .collect()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests;
