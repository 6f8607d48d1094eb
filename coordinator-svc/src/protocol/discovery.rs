//! Discovery: our own signer advertisement (GossipSub per transaction type and the DHT) and the
//! advertisements received from other peers.

use shared::security::Reason;
use std::collections::BTreeMap;

use libp2p_identity::PeerId;
use shared::election::SessionId;
use shared::wire::{self, Body, Header, MAX_KEYS_PER_PEER, Message};

use super::{Core, Effect, ErrorReason, NodeError, NodeEvent};
use crate::envelope::Refusal;

/// Minimum time between two advertisements of one peer, ms.
pub const ADVERTISEMENT_INTERVAL_MS: i64 = 60_000;
/// Most advertisements kept.
pub const MAX_ADVERTS: usize = 10_000;
/// Most DHT lookups of advertisements at once.
pub const MAX_ADVERT_LOOKUPS: usize = 256;

pub use crate::p2p::names::{advert_record_key, all_topics, signer_topic};

/// What this node advertises.
#[derive(Debug, Clone)]
struct OwnAdvert {
    keys: Vec<[u8; 33]>,
    body: wire::Advertisement,
    topics: Vec<String>,
    last_ms: i64,
}

/// Advertisements, ours and the others'.
#[derive(Debug)]
pub struct Discovery {
    /// Discovered advertisements by signer key.
    adverts: BTreeMap<[u8; 33], (PeerId, wire::Advertisement)>,
    /// Last accepted advertisement time per (peer, key) (rate limit), ms.
    times: BTreeMap<(PeerId, [u8; 33]), i64>,
    own: Option<OwnAdvert>,
    /// Sequence numbers of messages outside sessions (advertisements, matchmaking).
    pub(super) seq: u64,
    /// DHT lookups of advertisements of keys learned from peers.
    lookups: BTreeMap<u64, [u8; 33]>,
}

impl Discovery {
    /// Empty; sequence numbers start at `seq`.
    pub fn new(seq: u64) -> Self {
        Discovery {
            adverts: BTreeMap::new(),
            times: BTreeMap::new(),
            own: None,
            seq,
            lookups: BTreeMap::new(),
        }
    }

    /// Advertisements kept, and per-(peer, key) rate-limit entries.
    pub fn sizes(&self) -> (usize, usize) {
        (self.adverts.len(), self.times.len())
    }

    /// Drop expired advertisements and rate-limit entries.
    pub fn cleanup(&mut self, now: i64) {
        self.adverts.retain(|_, (_, a)| a.expires_at_ms > now);
        self.times
            .retain(|_, t| now - *t < ADVERTISEMENT_INTERVAL_MS);
    }
}

impl Core {
    /// A message outside any session (session id zero), signed for `from`.
    pub(super) fn zero_message(
        &mut self,
        now: i64,
        from: [u8; 33],
        body: Body,
    ) -> Result<Vec<u8>, NodeError> {
        self.discovery.seq += 1;
        let msg = Message {
            header: Header {
                session_id: SessionId([0; 16]),
                sender: from,
                sequence: self.discovery.seq,
                timestamp_ms: now,
            },
            body,
        };
        self.envelope(&msg.to_pb(), &from)
    }

    /// Advertise local keys; at most once per 60 s. Returns the expiry.
    ///
    /// # Errors
    /// [`NodeError::InvalidArgument`] for keys this node does not hold,
    /// [`NodeError::ResourceExhausted`] within 60 s of the last one.
    pub fn advertise(
        &mut self,
        now: i64,
        keys: Vec<[u8; 33]>,
        body: wire::Advertisement,
        fx: &mut Vec<Effect>,
    ) -> Result<i64, NodeError> {
        if keys.is_empty() || keys.len() > MAX_KEYS_PER_PEER {
            return Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!("signer_keys: 1 to {MAX_KEYS_PER_PEER} keys"),
            ));
        }
        if let Some(k) = keys.iter().find(|k| !self.keys.contains(k)) {
            return Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!("this node does not speak for {}", hex::encode(k)),
            ));
        }
        if let Some(a) = &self.discovery.own
            && now - a.last_ms < ADVERTISEMENT_INTERVAL_MS
        {
            return Err(NodeError::ResourceExhausted(
                ErrorReason::RateLimited {
                    retry_after_ms: ADVERTISEMENT_INTERVAL_MS - (now - a.last_ms),
                },
                format!(
                    "one advertisement per {} s; retry in {} s",
                    ADVERTISEMENT_INTERVAL_MS / 1000,
                    (ADVERTISEMENT_INTERVAL_MS - (now - a.last_ms)) / 1000 + 1
                ),
            ));
        }
        let topics = body
            .transaction_types
            .iter()
            .map(|t| signer_topic(*t))
            .collect();
        let expires = body.expires_at_ms;
        self.discovery.own = Some(OwnAdvert {
            keys,
            body,
            topics,
            last_ms: now,
        });
        self.publish_advertisement(now, fx);
        Ok(expires)
    }

    /// Stop advertising.
    pub fn withdraw(&mut self) {
        self.discovery.own = None;
    }

    /// Unexpired advertisements of other peers, by key.
    pub fn discovered(&self, now: i64) -> Vec<([u8; 33], PeerId, wire::Advertisement)> {
        self.discovery
            .adverts
            .iter()
            .filter(|(_, (_, a))| a.expires_at_ms > now)
            .map(|(k, (p, a))| (*k, *p, a.clone()))
            .collect()
    }

    /// A peer subscribed to `topic`: publishing needs subscribers, so refresh ours.
    pub fn on_subscribed(&mut self, now: i64, topic: &str, fx: &mut Vec<Effect>) {
        if self
            .discovery
            .own
            .as_ref()
            .is_some_and(|a| a.topics.iter().any(|t| t == topic))
        {
            self.publish_advertisement(now, fx);
        }
    }

    /// (Re-)publish our advertisement, one message per key, on every topic of its types, and
    /// store it in the DHT under `musig2-signer:<key>`. Each message is signed anew.
    pub(super) fn publish_advertisement(&mut self, now: i64, fx: &mut Vec<Effect>) {
        let Some(own) = self.discovery.own.clone() else {
            return;
        };
        if own.body.expires_at_ms <= now {
            self.discovery.own = None;
            return;
        }
        for key in &own.keys {
            let Ok(bytes) = self.zero_message(now, *key, Body::Advertisement(own.body.clone()))
            else {
                continue;
            };
            for topic in &own.topics {
                fx.push(Effect::Publish {
                    topic: topic.clone(),
                    bytes: bytes.clone(),
                });
            }
            if self.settings.dht {
                fx.push(Effect::PutRecord {
                    key: advert_record_key(key),
                    value: bytes,
                    expires_at_ms: own.body.expires_at_ms,
                });
            }
        }
    }

    /// Look up the advertisements of keys we just learned (bounded).
    pub(super) fn look_up_adverts(&mut self, keys: &[[u8; 33]], fx: &mut Vec<Effect>) {
        if !self.settings.dht {
            return;
        }
        for k in keys {
            if self.discovery.lookups.len() >= MAX_ADVERT_LOOKUPS {
                return;
            }
            if !self.discovery.adverts.contains_key(k) {
                let query = self.query();
                self.discovery.lookups.insert(query, *k);
                fx.push(Effect::GetRecord {
                    query,
                    key: advert_record_key(k),
                });
            }
        }
    }

    /// The key a lookup was for, if `query` is an advertisement lookup.
    pub(super) fn take_advert_lookup(&mut self, query: u64) -> Option<[u8; 33]> {
        self.discovery.lookups.remove(&query)
    }

    /// A GossipSub message: a signed, attested, unexpired advertisement, at most one per peer
    /// and key per 60 s, at most 10 keys per peer.
    /// `Ok(true)` = new, accept and propagate; `Ok(false)` = an identical refresh, ignore.
    pub(super) fn on_advertisement(
        &mut self,
        now: i64,
        author: PeerId,
        bytes: &[u8],
        fx: &mut Vec<Effect>,
    ) -> Result<bool, Refusal> {
        if bytes.len() > wire::MAX_GOSSIP_MESSAGE_BYTES {
            return Err(Refusal(
                Reason::TooLarge,
                format!("gossip message of {} bytes", bytes.len()),
            ));
        }
        let (pid, msg) = crate::envelope::open_with(bytes, Some(author), now, &mut self.verified)?;
        let Body::Advertisement(ad) = msg.body else {
            return Err(Refusal(
                Reason::Unsupported,
                "only signer advertisements travel on GossipSub".into(),
            ));
        };
        let slot = (pid, msg.header.sender);
        if let Some(last) = self.discovery.times.get(&slot)
            && now - last < ADVERTISEMENT_INTERVAL_MS
        {
            // A refresh of the same criteria (re-published for a new subscriber) is ignored
            // without penalty; a different advertisement within 60 s is a violation.
            if self
                .discovery
                .adverts
                .get(&msg.header.sender)
                .is_some_and(|(p, a)| *p == pid && *a == ad)
            {
                return Ok(false);
            }
            return Err(Refusal(
                Reason::RateLimited,
                "more than one advertisement per key per 60 s".into(),
            ));
        }
        self.note_keys(pid, &[msg.header.sender], fx)?;
        if self.discovery.adverts.len() >= MAX_ADVERTS
            && !self.discovery.adverts.contains_key(&msg.header.sender)
        {
            return Err(Refusal(
                Reason::TooManyAdverts,
                "advertisement table full".into(),
            ));
        }
        self.discovery.times.insert(slot, now);
        self.discovery
            .adverts
            .insert(msg.header.sender, (pid, ad.clone()));
        Self::emit(
            fx,
            NodeEvent::SignerDiscovered {
                key: msg.header.sender,
                peer: pid,
                advertisement: ad,
            },
        );
        Ok(true)
    }

    /// An advertisement found in the DHT (e.g. after this node restarted).
    pub(super) fn on_advert_record(
        &mut self,
        now: i64,
        key: [u8; 33],
        record_key: &[u8],
        value: &[u8],
        fx: &mut Vec<Effect>,
    ) {
        if self.discovery.adverts.contains_key(&key)
            || crate::envelope::validate_record(record_key, value, now).is_err()
        {
            return;
        }
        let Ok((pid, msg)) = crate::envelope::open_with(value, None, now, &mut self.verified)
        else {
            return;
        };
        let Body::Advertisement(ad) = msg.body else {
            return;
        };
        if msg.header.sender != key
            || ad.expires_at_ms <= now
            || self.discovery.adverts.len() >= MAX_ADVERTS
        {
            return;
        }
        self.discovery.adverts.insert(key, (pid, ad.clone()));
        Self::emit(
            fx,
            NodeEvent::SignerDiscovered {
                key,
                peer: pid,
                advertisement: ad,
            },
        );
    }
}
