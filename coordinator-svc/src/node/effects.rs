//! Effects of the core performed: signer requests at once, then the batch's store writes, in
//! one transaction (group commit), then sends, DHT operations, the other signer calls and
//! events, in order.

use super::*;

impl Node {
    /// Perform a batch of effects (of one input, or of several drained together). Group
    /// commit: the session records of the batch are written in one transaction — one fsync —
    /// keeping only each session's last record, before anything else of the batch happens;
    /// the other store operations keep their order with those records. `false` when a write
    /// failed: nothing that depends on it is sent or reported (the rest of the batch is
    /// dropped).
    pub(super) fn execute(&mut self, fx: Vec<Effect>) -> bool {
        let mut pending: Vec<(SessionId, Box<crate::store::SessionRecord>)> = Vec::new();
        let mut slot: HashMap<SessionId, usize> = HashMap::new();
        let mut rest = Vec::with_capacity(fx.len());
        for effect in fx {
            match effect {
                Effect::Persist { id, record } => match slot.get(&id) {
                    Some(&i) => pending[i].1 = record,
                    None => {
                        slot.insert(id, pending.len());
                        pending.push((id, record));
                    }
                },
                // Signer requests start before the batch's records are durable, so the
                // signer's round trip overlaps the fsync (both were on every session's critical
                // path, one after the other). Safe: the answer is a new input, handled after
                // this batch (its records on disk by then), and the signer answers a repeated
                // request (after a crash here) with the same nonce or partial signature. A
                // one-round partial signature waits: its pool slot's use must be on disk first.
                e @ Effect::Nonce { .. } => self.perform(e),
                e @ Effect::PartialSign { .. } if early_partial_sign(&e) => self.perform(e),
                e @ (Effect::Forget(_)
                | Effect::Prune { .. }
                | Effect::PersistBan { .. }
                | Effect::RemoveBan(_)) => {
                    if !self.commit(&mut pending, rest.len()) {
                        return false;
                    }
                    slot.clear();
                    self.perform(e);
                }
                e => rest.push(e),
            }
        }
        if !self.commit(&mut pending, rest.len()) {
            return false;
        }
        for e in rest {
            self.perform(e);
        }
        true
    }

    /// Write the pending records in one durable transaction (emptying the list).
    fn commit(
        &mut self,
        pending: &mut Vec<(SessionId, Box<crate::store::SessionRecord>)>,
        dependents: usize,
    ) -> bool {
        if pending.is_empty() {
            return true;
        }
        let records: Vec<([u8; 16], &crate::store::SessionRecord)> =
            pending.iter().map(|(id, r)| (id.0, r.as_ref())).collect();
        let store = &self.store;
        let started = std::time::Instant::now();
        // The fsync blocks this thread: let the runtime move its other tasks elsewhere.
        let result = if tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread
        {
            tokio::task::block_in_place(|| store.put_many(&records))
        } else {
            store.put_many(&records)
        };
        drop(records);
        let sessions = pending.len();
        tracing::trace!(
            sessions,
            us = started.elapsed().as_micros(),
            "records committed"
        );
        pending.clear();
        match result {
            Ok(()) => {
                use std::sync::atomic::Ordering::Relaxed;
                self.writes[0].fetch_add(1, Relaxed);
                self.writes[1].fetch_add(sessions as u64, Relaxed);
                true
            }
            Err(e) => {
                tracing::error!(sessions, dropped = dependents, error = %e, "session state not stored; what depends on it is not sent or reported");
                false
            }
        }
    }

    /// Perform one effect (records are written by [`Node::execute`]).
    fn perform(&mut self, effect: Effect) {
        match effect {
            Effect::Persist { id, record } => {
                self.commit(&mut vec![(id, record)], 0);
            }
            Effect::PersistBan { peer, ban } => {
                if let Err(e) = self.store.put_ban(&peer.to_string(), &ban) {
                    tracing::error!(%peer, error = %e, "ban not stored");
                }
            }
            Effect::RemoveBan(peer) => {
                if let Err(e) = self.store.remove_ban(&peer.to_string()) {
                    tracing::error!(%peer, error = %e, "unban not stored");
                }
            }
            Effect::Send { peer, bytes } => self.send_to(peer, bytes),
            Effect::Publish { topic, bytes } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(libp2p::gossipsub::IdentTopic::new(topic), bytes)
                {
                    tracing::debug!(error = %e, "not published (no subscriber yet)");
                }
            }
            Effect::PutRecord {
                key,
                value,
                expires_at_ms,
            } => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    let mut record = Record::new(RecordKey::new(&key), value);
                    record.expires =
                        Some(std::time::Instant::now() + until_duration(expires_at_ms));
                    if let Err(e) = kad.put_record(record, kad::Quorum::One) {
                        tracing::warn!(error = %e, "DHT put failed");
                    }
                }
            }
            Effect::RemoveRecord { key } => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    kad.remove_record(&RecordKey::new(&key));
                }
            }
            Effect::GetRecord { query, key } => {
                if let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() {
                    let q = kad.get_record(RecordKey::new(&key));
                    self.queries.insert(q, query);
                }
            }
            Effect::Nonce {
                id,
                index,
                key,
                context,
                pooled,
            } => {
                let (signer, tx) = (self.signer.clone(), self.internal_tx.clone());
                tracing::trace!(session = %id, "signer asked for nonces");
                tokio::spawn(async move {
                    let result = signer.nonces(&key, &id, &context, pooled).await;
                    tracing::trace!(session = %id, ok = result.is_ok(), "signer gave nonces");
                    let _ = tx.send(Internal::Nonce { id, index, result }).await;
                });
            }
            Effect::PartialSign {
                id,
                index,
                key,
                context,
                nonces,
                nonce_session,
            } => {
                let (signer, tx) = (self.signer.clone(), self.internal_tx.clone());
                tracing::trace!(session = %id, "signer asked for partial signatures");
                tokio::spawn(async move {
                    let result = signer
                        .partial_signs(&key, &nonce_session, &context, &nonces)
                        .await;
                    tracing::trace!(session = %id, ok = result.is_ok(), "signer gave partial signatures");
                    let _ = tx.send(Internal::Psig { id, index, result }).await;
                });
            }
            Effect::Attest {
                keys,
                expires_at_ms,
            } => {
                let (signer, tx) = (self.signer.clone(), self.internal_tx.clone());
                let peer_id = self.swarm.local_peer_id().to_bytes();
                tokio::spawn(async move {
                    let result = signer.attestations(&keys, &peer_id, expires_at_ms).await;
                    let _ = tx.send(Internal::Attested(result)).await;
                });
            }
            Effect::Dial(peer) => self.redial(peer),
            Effect::ReleaseNonces { ids, keys } => {
                let signer = self.signer.clone();
                tokio::spawn(async move {
                    let releases = ids
                        .iter()
                        .flat_map(|id| keys.iter().map(move |key| (id, key)))
                        .map(|(id, key)| {
                            let signer = &signer;
                            async move { (id, signer.release_nonce(key, id).await) }
                        });
                    for (id, r) in futures::future::join_all(releases).await {
                        match r {
                            Ok(released) => {
                                tracing::debug!(session = %id, released, "nonce release")
                            }
                            Err(e) => {
                                tracing::warn!(session = %id, error = %e, "the signer did not release a nonce; it expires with its TTL")
                            }
                        }
                    }
                });
            }
            Effect::Forget(id) => {
                if let Err(e) = self.store.delete(&id.0) {
                    tracing::warn!(session = %id, error = %e, "could not delete an ended, unjoined session");
                }
            }
            Effect::Prune { finished_before_ms } => {
                match self
                    .store
                    .prune(finished_before_ms, crate::protocol::PRUNE_BATCH)
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(
                        sessions = n,
                        "store pruned of sessions past their retention"
                    ),
                    Err(e) => {
                        tracing::warn!(error = %e, "store pruning failed; retried at the next cleanup")
                    }
                }
            }
            Effect::Load(id) => {
                // A point read (no fsync); the answer is an input like a signer's.
                let (record, tx) = (self.read_record(id).map(Box::new), self.internal_tx.clone());
                tokio::spawn(async move {
                    let _ = tx.send(Internal::Loaded { id, record }).await;
                });
            }
            Effect::Block(peer) => {
                self.swarm.behaviour_mut().blocked.block_peer(peer);
                self.outbox.remove(&peer);
            }
            Effect::Unblock(peer) => {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
            Effect::Emit(e) => {
                if e.for_applications() {
                    self.log.push(now_ms(), e.clone());
                }
                if let Some(id) = e.session_id() {
                    self.waiters.wake(id);
                }
                let _ = self.events.send(e);
            }
            Effect::JoinAnswer { query, result } => {
                if let Some(reply) = self.joins.remove(&query) {
                    let _ = reply.send(*result);
                }
            }
        }
    }

    /// Drop expired records from this node's DHT store. Kademlia drops them only when its
    /// hourly republication runs, so at a steady 20 sessions/s the store (10,000 records)
    /// filled with expired announcements and refused new ones (found by the soak run).
    pub(super) fn purge_expired_records(&mut self) {
        use libp2p::kad::store::RecordStore as _;
        let Some(kad) = self.swarm.behaviour_mut().kad.as_mut() else {
            return;
        };
        let now = std::time::Instant::now();
        let store = kad.store_mut();
        let expired: Vec<RecordKey> = store
            .records()
            .filter(|r| r.is_expired(now))
            .map(|r| r.key.clone())
            .collect();
        for key in &expired {
            store.remove(key);
        }
        if !expired.is_empty() {
            tracing::debug!(records = expired.len(), "expired DHT records dropped");
        }
    }

    pub(super) fn send_to(&mut self, peer: PeerId, bytes: Vec<u8>) {
        tracing::trace!(%peer, len = bytes.len(), connected = self.swarm.is_connected(&peer), "frame queued");
        if !self.outbox.push(peer, bytes) {
            tracing::warn!(%peer, "outbox full; message dropped");
        }
        self.pump(peer);
    }

    /// Send what the peer's outbox lets go now: one message per session in flight, several
    /// sessions at once (each sender's messages of a session stay in order).
    pub(super) fn pump(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer) {
            return;
        }
        while let Some(picked) = self.outbox.next(&peer, std::time::Instant::now()) {
            let id = self.lanes.send(peer, picked.bytes.clone());
            tracing::trace!(%peer, request = %id, "frame sent");
            self.outbox.sent(peer, picked, id);
        }
    }

    /// Dial a session participant again at the addresses it was reached at (and those the
    /// behaviours know), unless a connection or a dial to it exists.
    pub(super) fn redial(&mut self, peer: PeerId) {
        use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
        let opts = DialOpts::peer_id(peer)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .addresses(self.addresses.get(&peer))
            .extend_addresses_through_behaviour()
            .build();
        if let Err(e) = self.swarm.dial(opts) {
            tracing::debug!(%peer, error = %e, "redial");
        }
    }
}

/// A partial-signature request that may start before the batch's records are durable: one
/// whose nonce is the session's own (not a pool slot's).
fn early_partial_sign(e: &Effect) -> bool {
    matches!(e, Effect::PartialSign { id, nonce_session, .. } if id == nonce_session)
}
