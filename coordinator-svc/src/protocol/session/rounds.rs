//! The signing rounds of a session: nonces in, aggregate nonces, partial signatures in, the
//! final signatures aggregated and verified (one per message), blame when one fails, and the
//! local signer's contributions.

use super::*;

impl Session {
    pub(super) fn after_nonce(&mut self, actions: &mut Vec<Action>) {
        if self.phase != Phase::NonceExchange || self.nonces.iter().any(Option::is_none) {
            return;
        }
        if self.pool_slot {
            // Nothing to sign yet: the slot waits for its one-round session.
            return self.set_phase(Phase::Pooled, actions);
        }
        match self.aggregate_nonces() {
            Ok(agg) => {
                self.aggnonce = Some(agg);
                self.set_phase(Phase::PartialSigExchange, actions);
                actions.push(Action::RequestPartialSignatures);
                for i in 0..self.n() {
                    if let Some(p) = self.pending_psigs.get_mut(i).and_then(Option::take) {
                        self.accept_psig(i, p, actions);
                        if self.phase.is_terminal() {
                            return;
                        }
                    }
                }
            }
            Err(e) => self.fail(
                self.now,
                AbortCode::InvalidNonce,
                format!("nonce aggregation failed: {e}"),
                Vec::new(),
                actions,
            ),
        }
    }

    /// The aggregate nonce of every message, from every signer's nonces.
    pub(crate) fn aggregate_nonces(&self) -> Result<Vec<AggNonce>, shared::musig::Error> {
        (0..self.count())
            .map(|item| {
                let nonces: Vec<PubNonce> = self
                    .nonces
                    .iter()
                    .filter_map(|n| n.as_ref().and_then(|n| n.get(item)).copied())
                    .collect();
                AggNonce::sum(self.context.format, &nonces)
            })
            .collect()
    }

    /// Every signer's nonce for message `item`, in signer order (all nonces are in).
    pub fn nonces_for(&self, item: usize) -> Vec<PubNonce> {
        self.nonces
            .iter()
            .filter_map(|n| n.as_ref().and_then(|n| n.get(item)).copied())
            .collect()
    }

    /// Record a partial signature. It is checked with the others once all are in: the common
    /// path costs one verification of the final signature, not one per signer (issue 15).
    pub(super) fn accept_psig(
        &mut self,
        index: usize,
        psig: Vec<PartialSignature>,
        actions: &mut Vec<Action>,
    ) {
        if self.aggnonce.is_none() || self.nonces.get(index).is_none_or(Option::is_none) {
            return;
        }
        self.psigs[index] = Some(psig);
        self.after_psig(actions);
    }

    /// Every partial signature is in: aggregate and verify each message's final signature;
    /// when one fails, verify that message's partial signatures to name every signer whose
    /// one is invalid (and, in a batch, the message).
    pub(super) fn after_psig(&mut self, actions: &mut Vec<Action>) {
        if self.phase != Phase::PartialSigExchange || self.psigs.iter().any(Option::is_none) {
            return;
        }
        let Some(aggs) = self.aggnonce.clone() else {
            return;
        };
        let mut signatures = Vec::with_capacity(self.count());
        let mut invalid: Vec<(usize, usize)> = Vec::new();
        let mut failure = None;
        for (item, agg) in aggs.iter().enumerate() {
            let Some(message) = self.context.message_at(item) else {
                return;
            };
            let session = match SigningSession::new(&self.key_agg, agg, message) {
                Ok(s) => s,
                Err(e) => {
                    return self.fail(
                        self.now,
                        AbortCode::InvalidNonce,
                        format!("signing session: {e}"),
                        Vec::new(),
                        actions,
                    );
                }
            };
            let psigs: Vec<PartialSignature> = self
                .psigs
                .iter()
                .filter_map(|p| p.as_ref().and_then(|p| p.get(item)).copied())
                .collect();
            let result = session.aggregate(&psigs).and_then(|sig| {
                shared::musig::verify(
                    self.context.format,
                    &self.key_agg.output_key(),
                    message,
                    &sig,
                )
                .map(|()| sig)
            });
            let e = match result {
                Ok(sig) => {
                    signatures.push(sig);
                    continue;
                }
                Err(e) => e,
            };
            failure.get_or_insert(e);
            if !self.skip_partial_signature_check {
                let nonces = self.nonces_for(item);
                invalid.extend(
                    psigs
                        .iter()
                        .zip(&nonces)
                        .enumerate()
                        .filter(|(i, (p, n))| session.verify_partial(p, n, *i).is_err())
                        .map(|(i, _)| (item, i)),
                );
            }
        }
        let Some(e) = failure else {
            return self.complete(signatures, actions);
        };
        let mut culprits: Vec<[u8; 33]> = Vec::new();
        for (_, i) in &invalid {
            if let Some(k) = self.key(*i)
                && !culprits.contains(&k)
            {
                culprits.push(k);
            }
        }
        let reason = if invalid.is_empty() {
            format!("final signature failed: {e}")
        } else {
            let batch = self.count() > 1;
            let who: Vec<String> = invalid
                .iter()
                .map(|(item, i)| {
                    let key = self.key(*i).map(hex::encode).unwrap_or_default();
                    if batch {
                        format!("signer {i} ({key}) on message {item}")
                    } else {
                        format!("signer {i} ({key})")
                    }
                })
                .collect();
            format!("invalid partial signature from {}", who.join(", "))
        };
        self.fail(
            self.now,
            AbortCode::InvalidPartialSignature,
            reason,
            culprits,
            actions,
        );
    }

    /// The final signature verified: COMPLETE, and a confirmation that came first applies now.
    pub(super) fn complete(&mut self, signatures: Vec<Signature>, actions: &mut Vec<Action>) {
        self.signatures = Some(signatures);
        self.set_phase(Phase::Complete, actions);
        if let Some((by, reference)) = self.held_confirmation.take()
            && self.failover.confirmed.is_none()
        {
            self.failover.confirmed = Some((hex::encode(by), reference.clone()));
            self.failover.deadline_ms = None;
            actions.push(Action::BroadcastConfirmed { by, reference });
        }
    }

    /// The signer produced the nonces (one per message) for local index `index`.
    pub fn on_local_nonce(&mut self, now: i64, index: usize, nonce: Vec<PubNonce>) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        if self.phase != Phase::NonceExchange || self.nonces.get(index).is_none_or(Option::is_some)
        {
            return actions;
        }
        if nonce.len() != self.count() {
            self.fail(
                now,
                AbortCode::SignerRefused,
                format!(
                    "the signer gave {} nonces for {} messages",
                    nonce.len(),
                    self.count()
                ),
                Vec::new(),
                &mut actions,
            );
            return actions;
        }
        self.nonces[index] = Some(nonce.clone());
        if let Some(key) = self.key(index) {
            actions.push(Action::Broadcast {
                from: key,
                body: Body::NonceShare(nonce),
            });
        }
        self.after_nonce(&mut actions);
        actions
    }

    /// The signer produced the partial signatures (one per message) for local index `index`.
    pub fn on_local_psig(
        &mut self,
        now: i64,
        index: usize,
        psig: Vec<PartialSignature>,
    ) -> Vec<Action> {
        self.now = now;
        let mut actions = Vec::new();
        if self.phase != Phase::PartialSigExchange
            || self.psigs.get(index).is_none_or(Option::is_some)
        {
            return actions;
        }
        if psig.len() != self.count() {
            self.fail(
                now,
                AbortCode::SignerRefused,
                format!(
                    "the signer gave {} partial signatures for {} messages",
                    psig.len(),
                    self.count()
                ),
                Vec::new(),
                &mut actions,
            );
            return actions;
        }
        if let Some(key) = self.key(index) {
            actions.push(Action::Broadcast {
                from: key,
                body: Body::PartialSigShare(psig.clone()),
            });
        }
        self.accept_psig(index, psig, &mut actions);
        actions
    }
}
