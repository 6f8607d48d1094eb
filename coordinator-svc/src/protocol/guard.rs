//! The guard: what each peer is attested to speak for, what it did wrong, and who is banned.
//! Pure bookkeeping; the core turns its verdicts into effects (block, persist, events).
//!
//! Bounded: a new identity costs an attacker nothing, so the per-peer tables (keys, refusals,
//! reputation, tolerated refusals) keep at most [`MAX_TRACKED_PEERS`] peers, evicting the one
//! heard from longest ago; bans are bounded apart ([`MAX_BANS`], see `Core::ban`).

use shared::security::Reason;
use std::collections::BTreeMap;

use libp2p_identity::PeerId;
use shared::security::{Offence, Reputation, TOLERATED_REFUSALS_PER_MINUTE, Verdict};
use shared::wire::MAX_KEYS_PER_PEER;

use crate::envelope::Refusal;
use crate::store::BanRecord;

/// Peers whose keys, refusals and reputation are kept.
pub const MAX_TRACKED_PEERS: usize = 4096;
/// Bans kept (in memory and in the store).
pub const MAX_BANS: usize = 8192;

/// Per-peer security state.
#[derive(Debug)]
pub struct Guard {
    /// Attested signer keys per peer.
    pub peer_keys: BTreeMap<PeerId, Vec<[u8; 33]>>,
    /// Refusals per peer and reason.
    pub rejections: BTreeMap<PeerId, BTreeMap<&'static str, u64>>,
    /// Offence counters.
    pub reputation: Reputation<PeerId>,
    /// Bans in force.
    pub bans: BTreeMap<PeerId, BanRecord>,
    /// Tolerated refusals per peer in the current minute: (minute start, count).
    tolerated: BTreeMap<PeerId, (i64, u32)>,
    /// When each tracked peer was last heard from (a counter), and the reverse index.
    seen: BTreeMap<PeerId, u64>,
    by_age: BTreeMap<u64, PeerId>,
    tick: u64,
}

impl Default for Guard {
    fn default() -> Self {
        Guard {
            peer_keys: BTreeMap::new(),
            rejections: BTreeMap::new(),
            reputation: Reputation::new(),
            bans: BTreeMap::new(),
            tolerated: BTreeMap::new(),
            seen: BTreeMap::new(),
            by_age: BTreeMap::new(),
            tick: 0,
        }
    }
}

impl Guard {
    /// `peer` was heard from: it becomes the most recent; past [`MAX_TRACKED_PEERS`] the peer
    /// heard from longest ago is forgotten (not its ban).
    fn touch(&mut self, peer: PeerId) {
        self.tick += 1;
        if let Some(old) = self.seen.insert(peer, self.tick) {
            self.by_age.remove(&old);
        }
        self.by_age.insert(self.tick, peer);
        while self.seen.len() > MAX_TRACKED_PEERS {
            let Some((_, oldest)) = self.by_age.pop_first() else {
                break;
            };
            self.seen.remove(&oldest);
            self.peer_keys.remove(&oldest);
            self.rejections.remove(&oldest);
            self.reputation.remove(&oldest);
            self.tolerated.remove(&oldest);
        }
    }

    /// Peers whose state is kept.
    pub fn tracked(&self) -> usize {
        self.seen.len()
    }

    /// Record that `peer` speaks for `keys`. Returns the peer's full key list when it grew.
    ///
    /// # Errors
    /// `too_many_keys` past [`MAX_KEYS_PER_PEER`] (nothing is recorded then).
    pub fn note_keys(
        &mut self,
        peer: PeerId,
        keys: &[[u8; 33]],
    ) -> Result<Option<Vec<[u8; 33]>>, Refusal> {
        self.touch(peer);
        let known = self.peer_keys.entry(peer).or_default();
        let fresh: Vec<[u8; 33]> =
            keys.iter()
                .filter(|k| !known.contains(k))
                .copied()
                .fold(Vec::new(), |mut v, k| {
                    if !v.contains(&k) {
                        v.push(k);
                    }
                    v
                });
        if fresh.is_empty() {
            return Ok(None);
        }
        if known.len() + fresh.len() > MAX_KEYS_PER_PEER {
            return Err(Refusal(
                Reason::TooManyKeys,
                format!("a peer may speak for at most {MAX_KEYS_PER_PEER} keys"),
            ));
        }
        known.extend(fresh);
        Ok(Some(known.clone()))
    }

    /// Count a refusal against `peer`; the verdict it triggers, if any. A refusal an honest
    /// peer can cause costs nothing until the peer passes the tolerated rate.
    pub fn offend(&mut self, peer: PeerId, r: &Refusal, now_ms: i64) -> Verdict {
        self.touch(peer);
        *self
            .rejections
            .entry(peer)
            .or_default()
            .entry(r.0.as_str())
            .or_insert(0) += 1;
        if r.0.is_tolerated() {
            let (start, n) = self.tolerated.entry(peer).or_insert((now_ms, 0));
            if now_ms - *start >= 60_000 {
                (*start, *n) = (now_ms, 0);
            }
            *n += 1;
            if *n <= TOLERATED_REFUSALS_PER_MINUTE {
                return Verdict::None;
            }
            return self.reputation.offend(&peer, Offence::RateLimit, now_ms);
        }
        self.reputation.offend(&peer, r.0.offence(), now_ms)
    }

    /// Forget per-minute counters that ran out.
    pub fn cleanup(&mut self, now_ms: i64) {
        self.tolerated
            .retain(|_, (start, _)| now_ms - *start < 60_000);
    }

    /// Count an accepted message.
    pub fn accept(&mut self, peer: PeerId) {
        self.touch(peer);
        self.reputation.accept(&peer);
    }

    /// Whether `peer` is banned.
    pub fn is_banned(&self, peer: &PeerId) -> bool {
        self.bans.contains_key(peer)
    }

    /// Lift a ban and forget the counters that led to it.
    pub fn forgive(&mut self, peer: PeerId) -> bool {
        self.reputation.forgive(&peer);
        self.rejections.remove(&peer);
        self.bans.remove(&peer).is_some()
    }

    /// The ban to drop to make room for a new one: the temporary ban ending first, else the
    /// first permanent one in peer order.
    pub fn ban_to_evict(&self) -> Option<PeerId> {
        if self.bans.len() < MAX_BANS {
            return None;
        }
        self.bans
            .iter()
            .filter_map(|(p, b)| b.until_ms.map(|u| (u, *p)))
            .min()
            .map(|(_, p)| p)
            .or_else(|| self.bans.keys().next().copied())
    }

    /// Peers whose temporary ban has run out.
    pub fn expired_bans(&self, now_ms: i64) -> Vec<PeerId> {
        self.bans
            .iter()
            .filter(|(_, b)| b.until_ms.is_some_and(|u| u <= now_ms))
            .map(|(p, _)| *p)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::security::{MAX_INVALID_SIGNATURES, MAX_RATE_LIMIT_VIOLATIONS, MAX_SPAM_EVENTS};

    fn peer(n: u8) -> PeerId {
        let kp = libp2p_identity::Keypair::ed25519_from_bytes([n; 32])
            .unwrap_or_else(|_| unreachable!());
        kp.public().to_peer_id()
    }

    #[test]
    fn thresholds_by_reason() {
        // (reason, offences before the verdict, verdict is permanent)
        let table: &[(Reason, u32, bool)] = &[
            (Reason::InvalidSignature, MAX_INVALID_SIGNATURES, true),
            (Reason::Unattested, MAX_INVALID_SIGNATURES, true),
            (Reason::BadEnvelope, MAX_INVALID_SIGNATURES, true),
            (Reason::BadRecord, MAX_INVALID_SIGNATURES, true),
            (Reason::RateLimited, MAX_RATE_LIMIT_VIOLATIONS, false),
            (Reason::TooLarge, MAX_SPAM_EVENTS, true),
            (Reason::Attestation, MAX_SPAM_EVENTS, true),
        ];
        for (i, (reason, n, permanent)) in table.iter().enumerate() {
            let mut g = Guard::default();
            let p = peer(u8::try_from(i).unwrap_or(0) + 1);
            let r = Refusal(*reason, String::new());
            for k in 1..*n {
                assert_eq!(
                    g.offend(p, &r, i64::from(k)),
                    Verdict::None,
                    "{reason} #{k}"
                );
            }
            match g.offend(p, &r, 1000) {
                Verdict::Blacklist { .. } => assert!(permanent, "{reason}"),
                Verdict::Graylist { until_ms, .. } => {
                    assert!(!permanent, "{reason}");
                    assert_eq!(until_ms, 1000 + shared::security::GRAYLIST_MS);
                }
                Verdict::None => panic!("{reason}: no verdict after {n}"),
            }
            assert_eq!(g.rejections[&p][reason.as_str()], u64::from(*n));
        }
    }

    #[test]
    fn the_peer_heard_from_longest_ago_is_forgotten_past_the_cap_but_not_its_ban() {
        let mut g = Guard::default();
        let first = peer(1);
        let r = Refusal(Reason::Decode, "x".into());
        let _ = g.offend(first, &r, 0);
        g.bans.insert(
            first,
            BanRecord {
                until_ms: None,
                reason: "test".into(),
            },
        );
        let others: Vec<PeerId> = (0..MAX_TRACKED_PEERS).map(|_| PeerId::random()).collect();
        for (i, p) in others.iter().enumerate() {
            if i == 10 {
                // An active peer stays: it is heard from again.
                g.accept(others[0]);
            }
            g.accept(*p);
        }
        assert_eq!(g.tracked(), MAX_TRACKED_PEERS);
        assert!(!g.rejections.contains_key(&first) && g.reputation.get(&first).is_none());
        assert!(g.is_banned(&first), "bans are bounded apart");
        assert!(g.reputation.get(&others[0]).is_some());
    }

    #[test]
    fn keys_per_peer() {
        let mut g = Guard::default();
        let p = peer(9);
        let keys: Vec<[u8; 33]> = (0..=MAX_KEYS_PER_PEER)
            .map(|i| [u8::try_from(i).unwrap_or(0); 33])
            .collect();
        assert_eq!(
            g.note_keys(p, &keys[..2])
                .unwrap_or_default()
                .map(|v| v.len()),
            Some(2)
        );
        // Known keys change nothing.
        assert_eq!(g.note_keys(p, &keys[..2]), Ok(None));
        // One over the limit is refused as a whole.
        let err = g.note_keys(p, &keys[1..]);
        assert!(
            matches!(err, Err(Refusal(Reason::TooManyKeys, _))),
            "{err:?}"
        );
        assert_eq!(g.peer_keys[&p].len(), 2);
        assert_eq!(
            g.note_keys(p, &keys[2..MAX_KEYS_PER_PEER])
                .unwrap_or_default()
                .map(|v| v.len()),
            Some(MAX_KEYS_PER_PEER)
        );
    }

    #[test]
    fn bans_expire_and_forgiveness_resets() {
        let mut g = Guard::default();
        let (a, b) = (peer(1), peer(2));
        g.bans.insert(
            a,
            BanRecord {
                until_ms: Some(100),
                reason: "x".into(),
            },
        );
        g.bans.insert(
            b,
            BanRecord {
                until_ms: None,
                reason: "y".into(),
            },
        );
        assert_eq!(g.expired_bans(99), Vec::<PeerId>::new());
        assert_eq!(g.expired_bans(100), vec![a]);
        g.offend(b, &Refusal(Reason::TooLarge, String::new()), 1);
        assert!(g.forgive(b));
        assert!(!g.is_banned(&b));
        assert!(!g.rejections.contains_key(&b));
        assert!(!g.forgive(b));
    }
}

#[cfg(test)]
mod tolerated {
    use super::*;

    #[test]
    fn refusals_an_honest_peer_causes_cost_nothing_until_they_flood() {
        let kp = libp2p_identity::Keypair::ed25519_from_bytes([4; 32])
            .unwrap_or_else(|_| unreachable!());
        let p = kp.public().to_peer_id();
        for reason in [
            Reason::ReplayOrSequence,
            Reason::OutOfPhase,
            Reason::UnknownSession,
        ] {
            let mut g = Guard::default();
            let r = Refusal(reason, String::new());
            // A steady trickle, minute after minute: never an offence.
            for minute in 0..30i64 {
                for k in 0..TOLERATED_REFUSALS_PER_MINUTE {
                    assert_eq!(
                        g.offend(p, &r, minute * 60_000 + i64::from(k)),
                        Verdict::None
                    );
                }
            }
            assert!(g.reputation.get(&p).is_none_or(|x| x.spam_events == 0));
            // A flood within one minute: rate-limit offences, then a temporary ban.
            let verdicts: Vec<Verdict> = (0..shared::security::MAX_RATE_LIMIT_VIOLATIONS)
                .map(|k| g.offend(p, &r, 30 * 60_000 + 1 + i64::from(k)))
                .collect();
            assert!(
                verdicts.iter().all(|v| *v == Verdict::None),
                "{reason}: within the budget of a fresh minute"
            );
            let mut banned = false;
            for k in 0..(TOLERATED_REFUSALS_PER_MINUTE + 20) {
                if let Verdict::Graylist { .. } = g.offend(p, &r, 30 * 60_000 + 100 + i64::from(k))
                {
                    banned = true;
                }
            }
            assert!(banned, "{reason}: a flood is cut off");
            assert_eq!(
                g.rejections[&p][reason.as_str()],
                u64::from(
                    31 * TOLERATED_REFUSALS_PER_MINUTE
                        + shared::security::MAX_RATE_LIMIT_VIOLATIONS
                        + 20
                )
            );
        }
    }
}
