//! The coordinator's protocol core, without I/O (in the manner of `quinn-proto`): no sockets,
//! no clock, no tasks, no database. Each entry point takes the current time (ms) and an input —
//! a command of the party's application, a frame or gossip message from a peer, a DHT record, a
//! signer's answer, a deadline — and appends [`Effect`]s to a batch. The event loop
//! ([`crate::node`]) performs each batch in order; a deterministic simulator drives the same
//! core with a virtual clock and an in-memory network.
//!
//! Ordering rule of every batch: an [`Effect::Persist`] comes before the messages, events and
//! replies that depend on it, and the executor drops the rest of a batch when a write fails, so
//! nobody hears of a state that is not on disk. Requests to the party's own signer are the
//! exception: the event loop may start them before the batch's records are durable, since their
//! answers come back as new inputs and the signer answers a repeated request alike. A peer's
//! contribution that completes nothing is written with its session's next record, not at once;
//! its answer and events wait for that write ([`unstored`]).
//!
//! Parts: the session registry ([`sessions`]: create, join, announce, orphans, history replay,
//! retention), failover ([`failover`], on a [`deadlines::DeadlineQueue`]), discovery
//! ([`discovery`]), matchmaking ([`matchmaking`]), the guard ([`guard`]: keys per peer,
//! refusals, reputation, bans) and the inbound checks ([`inbound`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::Duration;

use libp2p_identity::{Keypair, PeerId};
use rand::SeedableRng as _;
use rand::rngs::StdRng;
use shared::election::{ElectionMethod, SessionId};
use shared::musig::PubNonce;
use shared::wire::{self, Message, SessionContext, pb};

use crate::store::{BanRecord, SessionRecord};

mod announce;
pub mod attestations;
pub mod deadlines;
pub mod discovery;
pub mod failover;
pub mod guard;
pub mod inbound;
mod joins;
pub mod matchmaking;
pub mod pools;
pub mod redial;
mod restore;
pub mod session;
pub mod sessions;
#[cfg(test)]
mod tests;
pub mod types;
pub mod unstored;

pub use session::Departed;
pub use types::{ErrorReason, NodeError, NodeEvent, PeerStatus, SessionView};

use session::Session;

/// Messages kept for sessions not known yet (they may cross the announcement), per session.
pub const MAX_ORPHANS_PER_SESSION: usize = 64;
/// Unknown sessions for which messages are kept.
pub const MAX_ORPHAN_SESSIONS: usize = 256;
/// Messages for an unknown session are kept this long, ms.
pub const ORPHAN_TTL_MS: i64 = 120_000;
/// Sessions announced by peers and not joined here yet, per announcing peer (a batch session
/// counts as [`session::Session::weight`] sessions).
pub const MAX_UNJOINED_PER_PEER: usize = 64;
/// Sessions announced by peers and not joined here yet, in total (weighed the same way).
pub const MAX_UNJOINED: usize = 1024;
/// Ids of ended sessions that left memory remembered so that a join of one says it ended
/// rather than waiting for an announcement that will not come (oldest forgotten first).
pub const MAX_ENDED_REMEMBERED: usize = 1024;
/// Values (nonces, partial signatures, signatures) in messages kept for unknown sessions, in
/// total: a batch's messages carry up to 256 each (found in review: 256 × 64 such messages
/// could hold half a gigabyte).
pub const MAX_ORPHAN_VALUES: usize = 65_536;
/// How long finished sessions stay in memory by default, ms (then they are read from the
/// store): [`Settings::finished_in_memory_ms`].
pub const FINISHED_RETENTION_MS: i64 = 3600 * 1000;
/// Values (signers × messages) of the finished sessions kept in memory, by default: about
/// 90 MB at the ~700 bytes a value costs there (its nonce, partial signature and signature,
/// the messages kept, the view). Without it, memory grew with the rate for an hour (found by
/// `musig2-bench --messages 256 --duration-s`: +84 MB per coordinator in 50 s; and 200
/// sessions/s of three parties for the hour would hold ~3.6 GB, past the deployment's 1 GiB).
pub const MAX_FINISHED_VALUES: usize = 131_072;
/// Sequence numbers a restart skips, per local key, in each unfinished session it resumes. Our
/// signer's nonce or partial signature leaves before a write holds its sequence number
/// (`Core::apply_own`): at most one such number per key is unwritten at a crash. After the
/// restart the session's next message takes a higher number, so members that received the
/// lost one do not refuse the next as a replay (with a different body, such as an abort). A
/// configured `max_sequence_gap` must leave room for it ([`MIN_SEQUENCE_GAP`]).
pub const RESTART_SEQUENCE_SKIP: u64 = 2;
/// The smallest `max_sequence_gap` that lets a restarted member's next message through.
pub const MIN_SEQUENCE_GAP: u64 = RESTART_SEQUENCE_SKIP + 2;
/// How long a join of an unknown session waits for its announcement, ms.
pub const JOIN_WAIT_MS: i64 = 2_000;
/// A join of an unknown session looks it up in the DHT only after waiting this long for its
/// announcement, ms. The direct announcement usually comes within a millisecond or two (an
/// application that calls `Sign` on every party right after `CreateSession` overtakes it); a
/// lookup for each such join cost ~8 % of a coordinator's CPU under load (found by a profile).
pub const DHT_LOOKUP_AFTER_MS: i64 = 250;
/// Unknown sessions joins may wait for at once.
pub const MAX_AWAITED_JOINS: usize = 1_024;
/// Joins that may wait for one unknown session.
pub const MAX_JOINS_PER_AWAITED: usize = 16;
/// The store is pruned of sessions past their retention at most this often, ms.
pub const PRUNE_EVERY_MS: i64 = 3600 * 1000;
/// Sessions deleted per prune (one transaction).
pub const PRUNE_BATCH: usize = 10_000;
pub use crate::envelope::{
    ENVELOPE_TAG, SESSION_KEY_PREFIX, SESSION_RESOURCE_TYPE, SIGNER_KEY_PREFIX,
};

/// The protocol settings (the reference's names and defaults, in ms).
#[derive(Debug, Clone)]
pub struct Settings {
    /// sessionTimeout.
    pub session_timeout_ms: i64,
    /// stuckSessionTimeout.
    pub stuck_timeout_ms: i64,
    /// maxSequenceGap.
    pub max_sequence_gap: u64,
    /// enableReplayProtection.
    pub enable_replay_protection: bool,
    /// electionMethod.
    pub election_method: ElectionMethod,
    /// enableCoordinatorElection: after completion the elected party is told to broadcast
    /// (false: nobody is; the application decides who broadcasts).
    pub enable_election: bool,
    /// enableCoordinatorFailover.
    pub enable_failover: bool,
    /// broadcastTimeout.
    pub broadcast_timeout_ms: i64,
    /// Most unfinished sessions at once.
    pub max_active_sessions: usize,
    /// enableSessionDiscovery.
    pub enable_session_discovery: bool,
    /// Whether the node runs a DHT (records are put and looked up).
    pub dht: bool,
    /// sessionResourceType: DHT keys of announcements are `<type>:<session id>`.
    pub session_resource_type: String,
    /// Lifetime of the attestations asked of the signer.
    pub attestation_ttl_ms: i64,
    /// Attestations are renewed this long before they expire.
    pub attestation_renew_before_ms: i64,
    /// Finished sessions (with their final signatures) stay in the store this long, ms.
    pub retention_ms: i64,
    /// Finished sessions stay in memory this long, ms (then they are read from the store).
    pub finished_in_memory_ms: i64,
    /// ... and the oldest leave earlier once those in memory hold more values (signers ×
    /// messages each) than this: [`MAX_FINISHED_VALUES`] by default.
    pub finished_in_memory_values: usize,
}

/// Milliseconds of a duration, saturating.
pub fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// What the event loop (or the simulator) must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Store a session. Everything after it in the batch depends on it.
    Persist {
        /// Session.
        id: SessionId,
        /// Its record.
        record: Box<SessionRecord>,
    },
    /// Store a ban.
    PersistBan {
        /// Peer.
        peer: PeerId,
        /// Ban.
        ban: BanRecord,
    },
    /// Remove a stored ban.
    RemoveBan(PeerId),
    /// Send a signed envelope to a peer on the direct protocol (queued, in order, per peer).
    Send {
        /// Peer.
        peer: PeerId,
        /// Envelope.
        bytes: Vec<u8>,
    },
    /// Publish a signed envelope on a GossipSub topic.
    Publish {
        /// Topic name.
        topic: String,
        /// Envelope.
        bytes: Vec<u8>,
    },
    /// Put a record in the DHT.
    PutRecord {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Expiry, ms.
        expires_at_ms: i64,
    },
    /// Drop a record from this node's own DHT store (its session ended here; nobody needs to
    /// find it through us any more). Records of sessions this node is not part of are dropped
    /// at their expiry.
    RemoveRecord {
        /// Key.
        key: Vec<u8>,
    },
    /// Look a record up; the answer comes back through [`Core::on_record`] with `query`.
    GetRecord {
        /// Token.
        query: u64,
        /// Key.
        key: Vec<u8>,
    },
    /// Ask the signer for a public nonce for each message of `context` (one request per
    /// message, [`SessionContext::items`]); the answer, one nonce per message, comes back
    /// through [`Core::on_nonce`].
    Nonce {
        /// Session.
        id: SessionId,
        /// Signer index.
        index: usize,
        /// Signer key.
        key: [u8; 33],
        /// What will be signed.
        context: SessionContext,
        /// A pooled nonce for a nonce-pool slot (the context has no message).
        pooled: bool,
    },
    /// Ask the signer for a partial signature for each message of `context` (one request per
    /// message, [`SessionContext::items`] of `nonce_session`); the answer comes back through
    /// [`Core::on_partial_signature`].
    PartialSign {
        /// Session.
        id: SessionId,
        /// Signer index.
        index: usize,
        /// Signer key.
        key: [u8; 33],
        /// What is signed.
        context: SessionContext,
        /// Per message, every signer's public nonce by index.
        nonces: Vec<Vec<PubNonce>>,
        /// The session the signer's nonce is filed under: `id`, or for a one-round session
        /// the pool slot it uses.
        nonce_session: SessionId,
    },
    /// Ask the signer to attest our peer id for `keys` until `expires_at_ms`; the answer comes
    /// back through [`Core::on_attestations`].
    Attest {
        /// Keys.
        keys: Vec<[u8; 33]>,
        /// Expiry of the new attestations.
        expires_at_ms: i64,
    },
    /// Dial a peer (a participant of an unfinished session whose connection closed), at the
    /// addresses known for it.
    Dial(PeerId),
    /// The session ended without this party's partial signatures: the signer destroys the
    /// secret nonces it still holds for these local keys (`ReleaseNonce`).
    ReleaseNonces {
        /// The signer's sessions: the session, or each message's of a batch.
        ids: Vec<SessionId>,
        /// Local keys whose nonce was issued and not used.
        keys: Vec<[u8; 33]>,
    },
    /// Delete a stored session (one announced by a peer, never joined here, that ended: it
    /// holds nothing worth keeping, and keeping it would let announcements fill the store).
    Forget(SessionId),
    /// Read a finished session back from the store (it left memory while its broadcast clock
    /// still runs, and the clock fired or a message for it came); the record, or `None`, goes
    /// to [`Core::on_loaded`].
    Load(SessionId),
    /// Delete stored sessions that finished before this time (up to [`PRUNE_BATCH`]).
    Prune {
        /// Cut-off, ms.
        finished_before_ms: i64,
    },
    /// Refuse a peer's connections (and drop what is queued for it).
    Block(PeerId),
    /// Accept a peer's connections again.
    Unblock(PeerId),
    /// Tell the application.
    Emit(NodeEvent),
    /// Answer a join that waited for a DHT lookup.
    JoinAnswer {
        /// The token [`Core::join`] returned.
        query: u64,
        /// Answer.
        result: Box<Result<SessionView, NodeError>>,
    },
}

/// A command's answer, now or after a lookup.
#[derive(Debug)]
pub enum Pending<T> {
    /// Answered.
    Ready(T),
    /// The answer comes as [`Effect::JoinAnswer`] with this token.
    Waiting(u64),
}

/// Bugs that can be switched on to prove that the simulator finds them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlantedBugs {
    /// Accept partial signatures without verifying them.
    pub skip_partial_signature_check: bool,
    /// Forget unfinished sessions when restoring from the store.
    pub forget_unfinished_on_restore: bool,
    /// Never renew attestations (keep the ones from the start).
    pub skip_attestation_renewal: bool,
}

/// How full the core's tables are (bounded-memory checks and diagnostics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableSizes {
    /// Sessions in memory.
    pub sessions: usize,
    /// Finished sessions out of memory whose broadcast clock still runs.
    pub unloaded: usize,
    /// Finished sessions out of memory whose announcement has not expired.
    pub departed: usize,
    /// Ended sessions out of memory remembered for joins ([`MAX_ENDED_REMEMBERED`]).
    pub ended: usize,
    /// Of them, announced by peers and not joined here.
    pub unjoined: usize,
    /// Unknown sessions with buffered messages, and the messages.
    pub orphans: (usize, usize),
    /// Peers whose keys, refusals and reputation are tracked.
    pub tracked_peers: usize,
    /// Peers with known keys / refusal counters / reputation records.
    pub peer_tables: (usize, usize, usize),
    /// Bans.
    pub bans: usize,
    /// Advertisements, and advertisement rate-limit entries.
    pub adverts: (usize, usize),
    /// Signing requests received, sent, and request rate-limit entries.
    pub requests: (usize, usize, usize),
    /// Participants being dialled again.
    pub redials: usize,
}

/// The core of one coordinator.
pub struct Core {
    settings: Settings,
    keypair: Keypair,
    me: PeerId,
    keys: Vec<[u8; 33]>,
    attestations: BTreeMap<[u8; 33], pb::PeerAttestation>,
    renewal: attestations::Renewal,
    redial: redial::Redial,
    rng: StdRng,
    connected: BTreeSet<PeerId>,
    next_query: u64,
    hello_seq: u64,
    // Session registry.
    sessions: BTreeMap<SessionId, Session>,
    /// Sessions in memory by the request that created them (retries return them).
    requests: std::collections::HashMap<String, SessionId>,
    /// Our sent envelopes per session and the peers they reached, replayed to participants
    /// that connect later.
    sent: BTreeMap<SessionId, (Vec<Vec<u8>>, BTreeSet<PeerId>)>,
    finished_at: BTreeMap<SessionId, i64>,
    /// Finished sessions that left memory while their broadcast clock still runs (its
    /// deadline stays in `failover`): read back from the store when it fires or a message for
    /// them comes. When they finished, and `true` once the read is asked for.
    unloaded: HashMap<SessionId, (i64, bool)>,
    /// Finished sessions that left memory, until their announcement expires: the announcement
    /// again (re-delivered, replayed, a DHT answer) must not start one over, which would
    /// overwrite its stored outcome (found by the simulator: a COMPLETE record replaced by a
    /// new INIT one, then ABORTED by its timeout). Sessions our application joined only,
    /// ~28 bytes each.
    departed: HashMap<SessionId, i64>,
    /// Ended sessions that left memory, newest last ([`MAX_ENDED_REMEMBERED`]): a join of one
    /// says it ended. Unlike `departed`, also those announced by peers and not joined here.
    ended: (HashSet<SessionId>, VecDeque<SessionId>),
    /// Peers sent the final signature of a session they had not completed.
    finalized_to: BTreeSet<(SessionId, PeerId)>,
    /// When the store was last pruned.
    pruned_at: i64,
    /// Messages of sessions not known yet: when the first arrived, and the messages.
    orphans: BTreeMap<SessionId, (i64, Vec<(PeerId, Message)>)>,
    /// Values held in `orphans` ([`MAX_ORPHAN_VALUES`]).
    orphan_values: usize,
    /// Who announced each session created from a peer's announcement that is still unjoined
    /// here and live (its budget; pruned at each announcement).
    announced_by: BTreeMap<SessionId, PeerId>,
    /// Sessions our application joined, not pool slots, that may not have ended: what counts
    /// against `max_active_sessions` (pruned when counted). Counting them over every session
    /// in memory at each creation took ~10 % of a coordinator's CPU after two minutes at
    /// 230 sessions/s, and grew with the sessions kept (found by a profile of the sustained
    /// run).
    joined_live: BTreeSet<SessionId>,
    timeouts: deadlines::DeadlineQueue<SessionId>,
    dht_joins: BTreeMap<u64, SessionId>,
    /// Ended sessions whose DHT record this node dropped from its store.
    unlisted: BTreeSet<SessionId>,
    /// Joins of sessions not known yet, waiting for the announcement: deadline, queries.
    awaited: BTreeMap<SessionId, joins::Awaited>,
    // The other parts.
    failover: deadlines::DeadlineQueue<SessionId>,
    guard: guard::Guard,
    discovery: discovery::Discovery,
    matchmaking: matchmaking::Matchmaking,
    planted: PlantedBugs,
    /// Nonce pools this node's application enabled, by pool hash.
    pools: BTreeMap<[u8; 32], pools::PoolConf>,
    /// Live pool slots (any creator's) by pool hash; a slot leaves when it ends.
    pool_slots: HashMap<[u8; 32], BTreeSet<SessionId>>,
    /// Peer attestations whose signature verified (checked once, not per message).
    verified: shared::wire::VerifiedAttestations,
    /// Peers' contributions accepted but not stored yet, and answers waiting for their write.
    unstored: unstored::Unstored,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("peer", &self.me)
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core speaking for `keys` (with their attestations for `keypair`'s peer id). `seed`
    /// seeds the randomness of session entropy and request ids.
    pub fn new(
        settings: Settings,
        keypair: Keypair,
        keys: Vec<[u8; 33]>,
        attestations: BTreeMap<[u8; 33], pb::PeerAttestation>,
        seed: [u8; 32],
        now_ms: i64,
    ) -> Self {
        let me = keypair.public().to_peer_id();
        let start = u64::try_from(now_ms).unwrap_or(1);
        Core {
            settings,
            keypair,
            me,
            keys,
            attestations,
            renewal: attestations::Renewal::default(),
            redial: redial::Redial::default(),
            rng: StdRng::from_seed(seed),
            connected: BTreeSet::new(),
            next_query: 0,
            hello_seq: start,
            sessions: BTreeMap::new(),
            requests: std::collections::HashMap::new(),
            sent: BTreeMap::new(),
            finished_at: BTreeMap::new(),
            unloaded: HashMap::new(),
            departed: HashMap::new(),
            ended: (HashSet::new(), VecDeque::new()),
            finalized_to: BTreeSet::new(),
            pruned_at: now_ms,
            orphans: BTreeMap::new(),
            orphan_values: 0,
            announced_by: BTreeMap::new(),
            joined_live: BTreeSet::new(),
            timeouts: deadlines::DeadlineQueue::default(),
            dht_joins: BTreeMap::new(),
            failover: deadlines::DeadlineQueue::default(),
            guard: guard::Guard::default(),
            discovery: discovery::Discovery::new(start),
            matchmaking: matchmaking::Matchmaking::default(),
            planted: PlantedBugs::default(),
            pools: BTreeMap::new(),
            pool_slots: HashMap::new(),
            verified: shared::wire::VerifiedAttestations::default(),
            awaited: BTreeMap::new(),
            unlisted: BTreeSet::new(),
            unstored: unstored::Unstored::default(),
        }
    }

    /// Switch planted bugs on (simulator tests only).
    pub fn plant(&mut self, bugs: PlantedBugs) {
        self.planted = bugs;
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.me
    }

    /// Signer keys this node speaks for.
    pub fn keys(&self) -> &[[u8; 33]] {
        &self.keys
    }

    /// Restore sessions and bans from the store (at start).
    pub fn restore(
        &mut self,
        now: i64,
        records: Vec<([u8; 16], SessionRecord)>,
        bans: Vec<(PeerId, BanRecord)>,
        fx: &mut Vec<Effect>,
    ) {
        for (peer, ban) in bans {
            if ban.until_ms.is_some_and(|u| u <= now) {
                fx.push(Effect::RemoveBan(peer));
                continue;
            }
            fx.push(Effect::Block(peer));
            self.guard.bans.insert(peer, ban);
        }
        self.restore_sessions(now, records, fx);
    }

    /// The earliest time [`Core::on_deadline`] has work.
    pub fn next_deadline(&self) -> Option<i64> {
        [
            self.timeouts.next(),
            self.failover.next(),
            self.renewal_deadline(),
            self.redial.next(),
            self.pool_deadline(),
            self.awaited.values().map(joins::Awaited::next).min(),
            self.unstored_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Deadlines that passed: session timeouts, failover, the renewal of attestations and
    /// dialling participants again.
    pub fn on_deadline(&mut self, now: i64, fx: &mut Vec<Effect>) {
        for id in self.timeouts.pop_due(now) {
            let stuck = self.settings.stuck_timeout_ms;
            let actions = match self.sessions.get_mut(&id) {
                Some(s) => s.tick(now, stuck),
                None => continue,
            };
            self.apply(now, id, actions, fx);
            self.schedule_timeout(id);
        }
        self.on_failover_due(now, fx);
        self.on_renewal_due(now, fx);
        self.on_redial_due(now, fx);
        self.expire_awaited(now, fx);
        self.flush_unstored(now, fx);
        self.refill(now, fx);
    }

    /// Periodic housekeeping (cleanupInterval): retention, expired bans and tables.
    pub fn on_cleanup(&mut self, now: i64, fx: &mut Vec<Effect>) {
        // One a peer announced that ended without our application joining goes at once (it
        // holds nothing, and announcements must not fill memory for an hour). A session whose
        // broadcast clock still runs leaves like the others: its deadline stays, and it is read
        // back from the store when the deadline passes or a message for it comes (kept in
        // memory, sessions nobody confirms pinned every value for the whole failover, N × 5
        // minutes: found by an 11-minute batch run, +263 KB per session on every coordinator).
        let (mut expired, mut kept): (Vec<_>, Vec<_>) = self
            .finished_at
            .iter()
            .map(|(id, t)| (*t, *id))
            .partition(|(t, id)| {
                now - *t > self.settings.finished_in_memory_ms
                    || self.sessions.get(id).is_some_and(|s| !s.locally_joined)
            });
        // The oldest of the others leave once they hold too many values (they are read from
        // the store from then on, like those past their time).
        let values = |id: &SessionId| self.sessions.get(id).map_or(0, Session::values);
        let mut held: usize = kept.iter().map(|(_, id)| values(id)).sum();
        if held > self.settings.finished_in_memory_values {
            kept.sort_unstable();
            for (t, id) in kept {
                if held <= self.settings.finished_in_memory_values {
                    break;
                }
                held = held.saturating_sub(values(&id));
                expired.push((t, id));
            }
        }
        if now - self.pruned_at >= PRUNE_EVERY_MS {
            self.pruned_at = now;
            fx.push(Effect::Prune {
                finished_before_ms: now.saturating_sub(self.settings.retention_ms),
            });
        }
        for (t, id) in expired {
            self.finished_at.remove(&id);
            // Never out of memory with an answer to a peer waiting for its write.
            if self.is_unstored(&id) {
                self.persist(id, fx);
            }
            let gone = self.sessions.remove(&id);
            if gone.is_some() {
                self.remember_ended(id);
            }
            // Only sessions our application joined: one a peer announced and nobody joined
            // holds nothing (its record is forgotten), and a remembered id per such session,
            // kept until an expiry the peer chooses, would let peers grow this table forever.
            if let Some(s) = &gone
                && s.locally_joined
            {
                self.departed.insert(id, s.expires_at_ms);
            }
            if let Some(rid) = gone.as_ref().and_then(|s| s.request_id.as_ref()) {
                self.requests.remove(rid);
            }
            if let Some(s) = &gone
                && failover::running(s)
            {
                if s.locally_joined {
                    self.unloaded.insert(id, (t, false));
                } else {
                    self.failover.cancel(id);
                }
            }
            if gone.is_some_and(|s| !s.locally_joined) {
                fx.push(Effect::Forget(id));
            }
            self.sent.remove(&id);
            self.timeouts.cancel(id);
        }
        self.departed.retain(|_, expires| *expires > now);
        let sessions = &self.sessions;
        self.orphans
            .retain(|id, (since, _)| !sessions.contains_key(id) && now - *since < ORPHAN_TTL_MS);
        self.orphan_values = self
            .orphans
            .values()
            .flat_map(|(_, q)| q.iter().map(|(_, m)| sessions::values_in(m)))
            .sum();
        self.announced_by.retain(|id, _| sessions.contains_key(id));
        self.unlisted.retain(|id| sessions.contains_key(id));
        self.finalized_to
            .retain(|(id, _)| sessions.contains_key(id));
        for p in self.guard.expired_bans(now) {
            self.unban(p, fx);
        }
        self.discovery.cleanup(now);
        self.matchmaking.cleanup(now);
        self.guard.cleanup(now);
        self.refill(now, fx);
    }

    /// A connection to `peer` opened (`first` = no other connection to it was open).
    pub fn on_connected(&mut self, now: i64, peer: PeerId, first: bool, fx: &mut Vec<Effect>) {
        self.connected.insert(peer);
        self.cancel_redial(peer);
        if first {
            self.send_hello(now, peer, fx);
        }
    }

    /// The last connection to `peer` closed: dialled again while a session needs it.
    pub fn on_disconnected(&mut self, now: i64, peer: PeerId) {
        self.connected.remove(&peer);
        self.schedule_redial(now, peer);
    }

    fn query(&mut self) -> u64 {
        self.next_query += 1;
        self.next_query
    }

    fn emit(fx: &mut Vec<Effect>, e: NodeEvent) {
        fx.push(Effect::Emit(e));
    }

    // ---------------------------------------------------------------- envelopes

    /// Wrap a message in this node's signed envelope with its attestation for `from`.
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for a key this node does not speak for.
    pub fn envelope(&self, msg: &pb::WireMessage, from: &[u8; 33]) -> Result<Vec<u8>, NodeError> {
        let attestation = self.attestations.get(from).cloned().ok_or_else(|| {
            NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!("this node does not speak for {}", hex::encode(from)),
            )
        })?;
        crate::envelope::seal(&self.keypair, msg, attestation).map_err(|e| {
            NodeError::Unavailable(ErrorReason::NetworkUnavailable, format!("signing: {e}"))
        })
    }

    // ---------------------------------------------------------------- bans

    /// Ban a peer (until a time, or for good): persisted, its connections closed and refused.
    fn ban(&mut self, peer: PeerId, until_ms: Option<i64>, reason: String, fx: &mut Vec<Effect>) {
        if !self.guard.is_banned(&peer)
            && let Some(evicted) = self.guard.ban_to_evict()
        {
            tracing::info!(%evicted, "ban dropped to make room (ban table full)");
            self.unban(evicted, fx);
        }
        let ban = BanRecord {
            until_ms,
            reason: reason.clone(),
        };
        self.guard.bans.insert(peer, ban.clone());
        fx.push(Effect::PersistBan { peer, ban });
        fx.push(Effect::Block(peer));
        tracing::warn!(%peer, %reason, ?until_ms, "peer banned");
        Self::emit(
            fx,
            NodeEvent::PeerShouldBan {
                peer,
                reason: reason.clone(),
            },
        );
        Self::emit(
            fx,
            match until_ms {
                Some(until_ms) => NodeEvent::PeerGraylisted {
                    peer,
                    reason,
                    until_ms,
                },
                None => NodeEvent::PeerBlacklisted { peer, reason },
            },
        );
    }

    fn unban(&mut self, peer: PeerId, fx: &mut Vec<Effect>) {
        self.guard.forgive(peer);
        fx.push(Effect::RemoveBan(peer));
        fx.push(Effect::Unblock(peer));
        tracing::info!(%peer, "peer unbanned");
    }

    /// Ban a peer permanently by hand.
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for an oversized reason.
    pub fn blacklist(
        &mut self,
        peer: PeerId,
        reason: &str,
        fx: &mut Vec<Effect>,
    ) -> Result<(), NodeError> {
        if reason.len() > wire::MAX_REASON_BYTES {
            return Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!("reason exceeds {} bytes", wire::MAX_REASON_BYTES),
            ));
        }
        self.ban(peer, None, format!("manual: {reason}"), fx);
        Ok(())
    }

    /// Lift a ban by hand.
    ///
    /// # Errors
    /// [`NodeError::NotFound`] when the peer is not banned.
    pub fn unblacklist(&mut self, peer: PeerId, fx: &mut Vec<Effect>) -> Result<(), NodeError> {
        if !self.guard.is_banned(&peer) {
            return Err(NodeError::NotFound(
                ErrorReason::PeerNotBanned,
                format!("peer {peer} is not banned"),
            ));
        }
        self.unban(peer, fx);
        Ok(())
    }

    /// Refused messages per peer and reason.
    pub fn rejections(
        &self,
    ) -> std::collections::HashMap<PeerId, std::collections::HashMap<&'static str, u64>> {
        self.guard
            .rejections
            .iter()
            .map(|(p, m)| (*p, m.iter().map(|(r, n)| (*r, *n)).collect()))
            .collect()
    }

    /// How full the tables are.
    pub fn table_sizes(&self) -> TableSizes {
        TableSizes {
            sessions: self.sessions.len(),
            unloaded: self.unloaded.len(),
            departed: self.departed.len(),
            ended: self.ended.1.len(),
            unjoined: self
                .sessions
                .values()
                .filter(|s| !s.phase.is_terminal() && !s.locally_joined)
                .count(),
            orphans: (
                self.orphans.len(),
                self.orphans.values().map(|(_, q)| q.len()).sum(),
            ),
            tracked_peers: self.guard.tracked(),
            peer_tables: (
                self.guard.peer_keys.len(),
                self.guard.rejections.len(),
                self.guard.reputation.len(),
            ),
            bans: self.guard.bans.len(),
            adverts: self.discovery.sizes(),
            requests: self.matchmaking.sizes(),
            redials: self.redial.len(),
        }
    }

    /// Attested keys of known peers.
    pub fn peer_keys(&self) -> std::collections::HashMap<PeerId, Vec<[u8; 33]>> {
        self.guard
            .peer_keys
            .iter()
            .map(|(p, k)| (*p, k.clone()))
            .collect()
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.guard.is_banned(peer)
    }

    /// Every peer the guard knows, in peer id order.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let mut ids: BTreeSet<PeerId> = self.connected.iter().copied().collect();
        ids.extend(self.guard.reputation.iter().map(|(p, _)| *p));
        ids.extend(self.guard.bans.keys().copied());
        ids.extend(self.guard.rejections.keys().copied());
        ids.into_iter()
            .map(|peer| {
                let record = self
                    .guard
                    .reputation
                    .get(&peer)
                    .cloned()
                    .unwrap_or_default();
                PeerStatus {
                    peer,
                    connected: self.connected.contains(&peer),
                    score: record.score(),
                    record,
                    ban: self.guard.bans.get(&peer).cloned(),
                    keys: self.guard.peer_keys.get(&peer).cloned().unwrap_or_default(),
                    rejections: self
                        .guard
                        .rejections
                        .get(&peer)
                        .map(|m| m.iter().map(|(r, n)| (*r, *n)).collect())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }
}
