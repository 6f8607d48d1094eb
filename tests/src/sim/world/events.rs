//! What happens when an event of the queue comes due: deliveries, signer answers, timers, the
//! applications' calls, crashes, restarts and partitions, and a byzantine member's extras.

use coordinator_svc::protocol::inbound::Frame;
use coordinator_svc::protocol::{Core, Effect, Pending};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use shared::musig::PartialSignature;
use shared::wire::SessionContext;

use super::{CLEANUP_MS, Ev, T0, World};

impl World<'_> {
    fn with_core(
        &mut self,
        i: usize,
        epoch: Option<u64>,
        f: impl FnOnce(&mut Core, i64, &mut Vec<Effect>),
    ) {
        if epoch.is_some_and(|e| e != self.nodes[i].epoch) {
            return;
        }
        let now = self.local_now(i);
        let mut fx = Vec::new();
        match self.nodes[i].core.as_mut() {
            Some(c) => f(c, now, &mut fx),
            None => return,
        }
        self.execute(i, fx);
        self.arm(i);
    }

    pub(super) fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                from,
                to,
                bytes,
                link_epoch,
            } => {
                if !self
                    .links
                    .get(&(from, to))
                    .is_some_and(|l| l.up && l.epoch == link_epoch)
                {
                    self.messages.1 += 1;
                    return;
                }
                self.messages.0 += 1;
                let peer = self.nodes[from].peer;
                self.note(&format!("deliver {from}->{to}"));
                let (mut refusal, mut hold) = (None, None);
                self.with_core(to, None, |c, now, fx| {
                    refusal = c.on_direct(now, peer, Frame::Bytes(&bytes), fx).err();
                    hold = c.take_hold();
                });
                if let Some(id) = hold {
                    self.held.push((from, to, id, bytes));
                }
                if let Some(r) = refusal {
                    self.note(&format!("refused {from}->{to} {}", r.0));
                }
                if self.nodes[from].byzantine {
                    self.misbehave(from);
                }
            }
            Ev::Nonce {
                node,
                epoch,
                id,
                index,
                key,
                context,
                pooled,
            } => {
                if epoch != self.nodes[node].epoch {
                    return;
                }
                let mut rng = StdRng::from_seed(self.rng.random());
                let result = self.nodes[node]
                    .signer
                    .session_nonces(&mut rng, id, &key, &context, pooled)
                    .map_err(|e| e.to_string());
                self.note(&format!("nonce {node} {id} {}", result.is_ok()));
                self.with_core(node, Some(epoch), |c, now, fx| {
                    c.on_nonce(now, id, index, result, fx)
                });
            }
            Ev::Attest {
                node,
                epoch,
                expires_at_ms,
            } => {
                if epoch != self.nodes[node].epoch {
                    return;
                }
                let aux = self.rng.random();
                let attestation = Ok(vec![super::attest(&self.nodes[node], expires_at_ms, &aux)]);
                self.note(&format!("attest {node} {}", attestation.is_ok()));
                self.with_core(node, Some(epoch), |c, now, fx| {
                    c.on_attestations(now, attestation, fx)
                });
            }
            Ev::Sign {
                node,
                epoch,
                id,
                index,
                key,
                context,
                nonces,
                nonce_session,
            } => {
                if epoch != self.nodes[node].epoch {
                    return;
                }
                let mut result = self.nodes[node]
                    .signer
                    .session_partial_signs(nonce_session, &key, &context, &nonces)
                    .map_err(|e| e.to_string());
                self.check
                    .signer(self.now - T0, node, &self.nodes[node].signer);
                if self.nodes[node].byzantine && result.is_ok() {
                    // A wrong partial signature (a valid scalar, the wrong one).
                    result = Ok(vec![
                        loop {
                            if let Ok(p) = PartialSignature::from_bytes(&self.rng.random()) {
                                break p;
                            }
                        };
                        context.count()
                    ]);
                }
                self.note(&format!("sign {node} {id} {}", result.is_ok()));
                self.with_core(node, Some(epoch), |c, now, fx| {
                    c.on_partial_signature(now, id, index, result, fx);
                });
            }
            Ev::Record {
                node,
                epoch,
                query,
                key,
            } => {
                let found = self
                    .dht
                    .get(&key)
                    .map(|v| (key.clone(), v.clone()))
                    .ok_or_else(String::new);
                self.with_core(node, Some(epoch), |c, now, fx| {
                    c.on_record(now, query, found, fx)
                });
            }
            Ev::Timer { node, epoch } => {
                if epoch != self.nodes[node].epoch {
                    return;
                }
                self.nodes[node].timer_at = None;
                self.with_core(node, Some(epoch), |c, now, fx| c.on_deadline(now, fx));
            }
            Ev::Cleanup { node, epoch } => {
                if epoch != self.nodes[node].epoch || !self.alive(node) {
                    return;
                }
                self.with_core(node, Some(epoch), |c, now, fx| c.on_cleanup(now, fx));
                if let Some(t) = self.nodes[node].core.as_ref().map(Core::table_sizes) {
                    self.note(&format!(
                        "cleanup {node}: {} sessions in memory, {} out with their clocks running",
                        t.sessions, t.unloaded
                    ));
                }
                self.at(self.now + CLEANUP_MS, Ev::Cleanup { node, epoch });
            }
            Ev::Create { plan } => self.create(plan),
            Ev::Join { node, epoch, id } => {
                let mut outcome = None;
                self.with_core(node, Some(epoch), |c, now, fx| {
                    outcome = Some(match c.join(now, id, fx) {
                        Pending::Ready(r) => r.map(|_| ()).map_err(|e| e.to_string()),
                        Pending::Waiting(_) => Ok(()),
                    });
                });
                if let Some(Err(e)) = outcome {
                    self.note(&format!("join {node} {id} refused: {e}"));
                }
            }
            Ev::Confirm { node, epoch, id } => {
                let reference = format!("tx-{id}");
                // As the node does: a session out of memory is read back first.
                let record = self.nodes[node].store.get(&id.0).cloned();
                self.with_core(node, Some(epoch), |c, now, fx| {
                    if c.needs_load(id) {
                        c.on_loaded(now, id, record, fx);
                    }
                    let _ = c.notify_broadcast(now, id, reference, fx);
                });
            }
            Ev::Load { node, epoch, id } => {
                self.loads += 1;
                let record = self.nodes[node].store.get(&id.0).cloned();
                self.with_core(node, Some(epoch), |c, now, fx| {
                    c.on_loaded(now, id, record, fx);
                });
            }
            Ev::Crash { node } => {
                if !self.alive(node) {
                    return;
                }
                self.crashes.0 += 1;
                self.note(&format!("crash {node}"));
                for j in 0..self.nodes.len() {
                    self.disconnect(node, j);
                }
                // Unanswered frames it held: their senders send them again once it is back;
                // those it sent are gone with its outbox.
                let dropped: Vec<_> = self
                    .held
                    .extract_if(.., |h| h.0 == node || h.1 == node)
                    .collect();
                for (from, to, _, bytes) in dropped {
                    if to == node && self.alive(from) {
                        self.links
                            .entry((from, to))
                            .or_default()
                            .outbox
                            .push_back(bytes);
                    }
                }
                let n = &mut self.nodes[node];
                n.core = None;
                n.epoch += 1;
                n.blocked.clear();
            }
            Ev::Restart { node } => {
                if self.alive(node) {
                    return;
                }
                self.start_node(node);
                for p in self.nodes[node].bans.keys().copied().collect::<Vec<_>>() {
                    self.nodes[node].blocked.insert(p);
                }
                self.reconnect_all();
            }
            Ev::SignerRestart { node } => {
                self.crashes.1 += 1;
                self.note(&format!("signer restart {node}"));
                self.nodes[node].signer.restart();
            }
            Ev::Partition { side } => {
                self.note(&format!("partition {side:?}"));
                self.side = Some(side);
                self.reconnect_all();
            }
            Ev::Heal => {
                self.note("heal");
                self.side = None;
                self.reconnect_all();
            }
        }
    }

    fn create(&mut self, plan: usize) {
        let p = self.plans[plan].clone();
        let mut keys: Vec<[u8; 33]> = p.members.iter().map(|m| self.nodes[*m].key).collect();
        keys.sort_unstable();
        let context = SessionContext {
            signer_keys: keys,
            message: p.message.clone(),
            format: self.cfg.format,
            tweaks: Vec::new(),
            batch: p.batch.clone(),
        };
        let mut created = None;
        self.with_core(p.creator, None, |c, now, fx| {
            created = Some(c.create(now, context, None, None, fx));
        });
        match created {
            Some(Ok(view)) => {
                self.note(&format!("created {plan} {}", view.id));
                self.check.created(view.id, p.members.clone());
            }
            Some(Err(e)) => self.note(&format!("create {plan} refused: {e}")),
            None => {
                // The creator is down: its application retries a little later.
                let t = self.now + 1_000;
                self.at(t, Ev::Create { plan });
            }
        }
    }

    /// A byzantine node also replays old frames and sends forged and garbage ones.
    fn misbehave(&mut self, from: usize) {
        let roll: f64 = self.rng.random();
        if roll > 0.1 || self.nodes[from].sent.is_empty() {
            return;
        }
        let k = self.rng.random_range(0..self.nodes[from].sent.len());
        let (to, mut bytes) = self.nodes[from].sent[k].clone();
        match self.rng.random_range(0..3) {
            0 => {}
            1 => {
                let pos = self.rng.random_range(0..bytes.len().max(1));
                if let Some(b) = bytes.get_mut(pos) {
                    *b ^= 0x40;
                }
            }
            _ => {
                let len = self.rng.random_range(0..200);
                bytes = (0..len).map(|_| self.rng.random()).collect();
            }
        }
        self.note(&format!("byzantine {from}->{to}"));
        self.send(from, self.nodes[to].peer, bytes);
    }
}
