//! Peer reputation (DESIGN §5 security manager, LOTUS.md §5 constants): pure bookkeeping of
//! what each peer did wrong and the verdict that follows. The coordinator feeds it refusals and
//! enforces the verdicts (connection block list, persisted bans, events).

use std::collections::HashMap;

/// Invalid signatures before a permanent ban.
pub const MAX_INVALID_SIGNATURES: u32 = 10;
/// Rate-limit violations before a temporary ban.
pub const MAX_RATE_LIMIT_VIOLATIONS: u32 = 10;
/// Spam events before a permanent ban.
pub const MAX_SPAM_EVENTS: u32 = 50;
/// Refusals an honest peer can cause ([`Reason::is_tolerated`]) accepted per peer per minute
/// before they count as rate-limit offences.
pub const TOLERATED_REFUSALS_PER_MINUTE: u32 = 120;
/// Length of a temporary ban, ms (1 h).
pub const GRAYLIST_MS: i64 = 3600 * 1000;
/// Counters are forgotten after this long without incidents, ms (24 h).
pub const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// Kinds of misbehaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Offence {
    /// A signature, envelope or attestation that does not verify.
    InvalidSignature,
    /// Faster than a rate limit allows.
    RateLimit,
    /// Anything else refused: malformed, oversized, replayed, stale, out of phase…
    Spam,
}

/// Why a peer's message was refused: one label per check, each mapped to the offence it counts
/// as. The labels are stable (metrics, the answer sent back to the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Over a size limit.
    TooLarge,
    /// Not a protobuf message.
    Decode,
    /// Not the canonical encoding.
    NonCanonical,
    /// A required field is missing.
    MissingField,
    /// A field of the wrong length.
    Length,
    /// A field over its length limit.
    TooLong,
    /// Not a curve point.
    InvalidPoint,
    /// Not a scalar.
    InvalidScalar,
    /// An unknown enum value.
    InvalidEnum,
    /// Keys not sorted or not distinct.
    UnsortedKeys,
    /// A timestamp outside the ±5 min window.
    TimestampSkew,
    /// Expired.
    Expired,
    /// A session id that does not match its derivation.
    SessionIdMismatch,
    /// The sender is not a member.
    NotMember,
    /// Sequence number zero.
    ZeroSequence,
    /// A context that cannot be signed.
    Context,
    /// An attestation that does not verify.
    Attestation,
    /// An envelope whose signature does not verify.
    InvalidSignature,
    /// Sender key not attested for the sending peer.
    Unattested,
    /// A malformed envelope.
    BadEnvelope,
    /// A malformed or misplaced DHT record.
    BadRecord,
    /// A second, different announcement of a session.
    ConflictingAnnounce,
    /// Faster than a rate limit.
    RateLimited,
    /// More keys than a peer may speak for.
    TooManyKeys,
    /// The advertisement table is full.
    TooManyAdverts,
    /// The signing-request table is full.
    TooManyRequests,
    /// A response to no request of ours.
    UnknownRequest,
    /// A message for an unknown session (and no room to keep it).
    UnknownSession,
    /// A message type not served where it arrived.
    Unsupported,
    /// A replayed sequence number, or one too far ahead.
    ReplayOrSequence,
    /// A message not allowed in the session's phase.
    OutOfPhase,
    /// A second, different contribution.
    Duplicate,
    /// A broadcast confirmation from a party not responsible for the attempt it names.
    NotResponsible,
    /// Our budget of sessions announced by peers and not joined here is used up.
    TooManySessions,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 34] = [
        Reason::TooLarge,
        Reason::Decode,
        Reason::NonCanonical,
        Reason::MissingField,
        Reason::Length,
        Reason::TooLong,
        Reason::InvalidPoint,
        Reason::InvalidScalar,
        Reason::InvalidEnum,
        Reason::UnsortedKeys,
        Reason::TimestampSkew,
        Reason::Expired,
        Reason::SessionIdMismatch,
        Reason::NotMember,
        Reason::ZeroSequence,
        Reason::Context,
        Reason::Attestation,
        Reason::InvalidSignature,
        Reason::Unattested,
        Reason::BadEnvelope,
        Reason::BadRecord,
        Reason::ConflictingAnnounce,
        Reason::RateLimited,
        Reason::TooManyKeys,
        Reason::TooManyAdverts,
        Reason::TooManyRequests,
        Reason::UnknownRequest,
        Reason::UnknownSession,
        Reason::Unsupported,
        Reason::ReplayOrSequence,
        Reason::OutOfPhase,
        Reason::Duplicate,
        Reason::NotResponsible,
        Reason::TooManySessions,
    ];

    /// Stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TooLarge => "too_large",
            Reason::Decode => "decode",
            Reason::NonCanonical => "non_canonical",
            Reason::MissingField => "missing_field",
            Reason::Length => "length",
            Reason::TooLong => "too_long",
            Reason::InvalidPoint => "invalid_point",
            Reason::InvalidScalar => "invalid_scalar",
            Reason::InvalidEnum => "invalid_enum",
            Reason::UnsortedKeys => "unsorted_keys",
            Reason::TimestampSkew => "timestamp_skew",
            Reason::Expired => "expired",
            Reason::SessionIdMismatch => "session_id_mismatch",
            Reason::NotMember => "not_member",
            Reason::ZeroSequence => "zero_sequence",
            Reason::Context => "context",
            Reason::Attestation => "attestation",
            Reason::InvalidSignature => "invalid_signature",
            Reason::Unattested => "unattested",
            Reason::BadEnvelope => "bad_envelope",
            Reason::BadRecord => "bad_record",
            Reason::ConflictingAnnounce => "conflicting_announce",
            Reason::RateLimited => "rate_limited",
            Reason::TooManyKeys => "too_many_keys",
            Reason::TooManyAdverts => "too_many_adverts",
            Reason::TooManyRequests => "too_many_requests",
            Reason::UnknownRequest => "unknown_request",
            Reason::UnknownSession => "unknown_session",
            Reason::Unsupported => "unsupported",
            Reason::ReplayOrSequence => "replay_or_sequence",
            Reason::OutOfPhase => "out_of_phase",
            Reason::Duplicate => "duplicate",
            Reason::NotResponsible => "not_responsible",
            Reason::TooManySessions => "too_many_sessions",
        }
    }

    /// The offence a refusal for this reason counts as.
    pub fn offence(self) -> Offence {
        match self {
            Reason::InvalidSignature
            | Reason::Unattested
            | Reason::BadEnvelope
            | Reason::BadRecord => Offence::InvalidSignature,
            Reason::RateLimited => Offence::RateLimit,
            _ => Offence::Spam,
        }
    }

    /// Whether an honest peer can cause this refusal: messages reordered or re-sent after a
    /// reconnection or a restart (sequence window), concurrent phase changes (a contribution
    /// crossing an abort), or one of *our* tables being full. Such refusals prove nothing about
    /// the sender: they are counted, not held against it, up to
    /// [`TOLERATED_REFUSALS_PER_MINUTE`] a minute (beyond that, a flood is a rate-limit offence).
    pub fn is_tolerated(self) -> bool {
        matches!(
            self,
            Reason::ReplayOrSequence
                | Reason::OutOfPhase
                | Reason::UnknownSession
                | Reason::TooManyAdverts
                | Reason::TooManyRequests
                | Reason::TooManySessions
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to do about a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing.
    None,
    /// Temporary ban until the time given (ms).
    Graylist {
        /// Until, ms.
        until_ms: i64,
        /// Why.
        reason: String,
    },
    /// Permanent ban.
    Blacklist {
        /// Why.
        reason: String,
    },
}

/// One peer's record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRecord {
    /// Invalid signatures.
    pub invalid_signatures: u32,
    /// Rate-limit violations.
    pub rate_limit_violations: u32,
    /// Spam events.
    pub spam_events: u32,
    /// Messages accepted.
    pub accepted: u64,
    /// Last incident, ms.
    pub last_incident_ms: i64,
}

impl PeerRecord {
    /// Reputation 0..=100: starts at 50, −5 per invalid signature, −2 per rate-limit
    /// violation, −1 per spam event, +1 per 10 accepted messages.
    pub fn score(&self) -> i32 {
        let s = 50i64
            - 5 * i64::from(self.invalid_signatures)
            - 2 * i64::from(self.rate_limit_violations)
            - i64::from(self.spam_events)
            + i64::try_from(self.accepted / 10).unwrap_or(i64::MAX);
        i32::try_from(s.clamp(0, 100)).unwrap_or(0)
    }
}

/// Every peer's record, keyed by an opaque peer id.
#[derive(Debug, Default)]
pub struct Reputation<P: std::hash::Hash + Eq + Clone> {
    peers: HashMap<P, PeerRecord>,
}

impl<P: std::hash::Hash + Eq + Clone> Reputation<P> {
    /// Empty.
    pub fn new() -> Self {
        Reputation {
            peers: HashMap::new(),
        }
    }

    /// Count an offence and return the verdict it triggers (once, when a threshold is crossed).
    pub fn offend(&mut self, peer: &P, offence: Offence, now_ms: i64) -> Verdict {
        let r = self.peers.entry(peer.clone()).or_default();
        if r.last_incident_ms != 0 && now_ms - r.last_incident_ms > FORGET_AFTER_MS {
            *r = PeerRecord {
                accepted: r.accepted,
                ..PeerRecord::default()
            };
        }
        r.last_incident_ms = now_ms;
        match offence {
            Offence::InvalidSignature => {
                r.invalid_signatures += 1;
                if r.invalid_signatures == MAX_INVALID_SIGNATURES {
                    return Verdict::Blacklist {
                        reason: format!("{MAX_INVALID_SIGNATURES} invalid signatures"),
                    };
                }
            }
            Offence::RateLimit => {
                r.rate_limit_violations += 1;
                if r.rate_limit_violations
                    .is_multiple_of(MAX_RATE_LIMIT_VIOLATIONS)
                {
                    return Verdict::Graylist {
                        until_ms: now_ms + GRAYLIST_MS,
                        reason: format!("{MAX_RATE_LIMIT_VIOLATIONS} rate-limit violations"),
                    };
                }
            }
            Offence::Spam => {
                r.spam_events += 1;
                if r.spam_events == MAX_SPAM_EVENTS {
                    return Verdict::Blacklist {
                        reason: format!("{MAX_SPAM_EVENTS} spam events"),
                    };
                }
            }
        }
        Verdict::None
    }

    /// Count an accepted message.
    pub fn accept(&mut self, peer: &P) {
        self.peers.entry(peer.clone()).or_default().accepted += 1;
    }

    /// A peer's record.
    pub fn get(&self, peer: &P) -> Option<&PeerRecord> {
        self.peers.get(peer)
    }

    /// Every record.
    pub fn iter(&self) -> impl Iterator<Item = (&P, &PeerRecord)> {
        self.peers.iter()
    }

    /// Forget a peer entirely (its record was evicted to bound the table).
    pub fn remove(&mut self, peer: &P) {
        self.peers.remove(peer);
    }

    /// Peers with a record.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    /// Whether no peer has a record.
    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Forget a peer's counters (after a manual unban).
    pub fn forgive(&mut self, peer: &P) {
        if let Some(r) = self.peers.get_mut(peer) {
            *r = PeerRecord {
                accepted: r.accepted,
                ..PeerRecord::default()
            };
        }
    }

    /// Totals: invalid signatures, rate-limit violations, spam events.
    pub fn totals(&self) -> (u64, u64, u64) {
        self.peers.values().fold((0, 0, 0), |(a, b, c), r| {
            (
                a + u64::from(r.invalid_signatures),
                b + u64::from(r.rate_limit_violations),
                c + u64::from(r.spam_events),
            )
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let mut r = Reputation::new();
        for i in 1..MAX_INVALID_SIGNATURES {
            assert_eq!(
                r.offend(&1u8, Offence::InvalidSignature, i64::from(i)),
                Verdict::None
            );
        }
        assert!(matches!(
            r.offend(&1u8, Offence::InvalidSignature, 100),
            Verdict::Blacklist { .. }
        ));
        for i in 1..MAX_RATE_LIMIT_VIOLATIONS {
            assert_eq!(
                r.offend(&2u8, Offence::RateLimit, i64::from(i)),
                Verdict::None
            );
        }
        assert!(
            matches!(r.offend(&2u8, Offence::RateLimit, 50), Verdict::Graylist { until_ms, .. } if until_ms == 50 + GRAYLIST_MS)
        );
        for i in 1..MAX_SPAM_EVENTS {
            assert_eq!(r.offend(&3u8, Offence::Spam, i64::from(i)), Verdict::None);
        }
        assert!(matches!(
            r.offend(&3u8, Offence::Spam, 60),
            Verdict::Blacklist { .. }
        ));
        assert!(r.get(&1).unwrap().score() < 50);
        // Forgotten after 24 h of quiet.
        for _ in 0..5 {
            r.offend(&4u8, Offence::InvalidSignature, 1);
        }
        r.offend(&4u8, Offence::InvalidSignature, 2 + FORGET_AFTER_MS);
        assert_eq!(r.get(&4).unwrap().invalid_signatures, 1);
        assert_eq!(
            Reason::InvalidSignature.offence(),
            Offence::InvalidSignature
        );
        assert_eq!(Reason::TooLarge.offence(), Offence::Spam);
        assert_eq!(Reason::RateLimited.offence(), Offence::RateLimit);
        // Labels are distinct.
        let labels: std::collections::BTreeSet<&str> =
            Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
    }
}
