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

impl Offence {
    /// Classify a refusal reason label (as counted by the coordinator).
    pub fn of_reason(reason: &str) -> Offence {
        match reason {
            "invalid_signature" | "unattested" | "bad_envelope" | "bad_record" => {
                Offence::InvalidSignature
            }
            "rate_limited" => Offence::RateLimit,
            _ => Offence::Spam,
        }
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
            Offence::of_reason("invalid_signature"),
            Offence::InvalidSignature
        );
        assert_eq!(Offence::of_reason("too_large"), Offence::Spam);
    }
}
