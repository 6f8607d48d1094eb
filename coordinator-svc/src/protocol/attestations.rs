//! Renewal of this node's attestations (DESIGN §4 `AttestPeer`).
//!
//! Every envelope carries the attestation of its sender key, and receivers refuse an expired
//! one, so a node that kept the attestations it got at start would be refused by every honest
//! peer once they expire (7 days by default). The core asks the signer for new ones
//! `attestation_renew_before_ms` before the earliest expiry ([`Effect::Attest`]), keeps
//! sending the old ones until the answer ([`Core::on_attestations`]) replaces them — no gap —
//! and retries with a short delay when the signer cannot answer. Receivers need nothing: each
//! envelope is checked against the attestation it carries, so the new one replaces the old at
//! the first message that carries it.

use shared::wire::{Attestation, pb};

use super::{Core, Effect, NodeEvent};

/// Longest wait before asking again after a failed renewal (or one that got no answer), ms.
pub const RENEWAL_RETRY_MAX_MS: i64 = 30_000;

/// Where the renewal stands.
#[derive(Debug, Default)]
pub(super) struct Renewal {
    /// A request is out since this time.
    asked_at: Option<i64>,
    /// The last request failed: ask again at this time.
    retry_at: Option<i64>,
    /// Failed requests in a row.
    failures: u32,
}

impl Core {
    /// The earliest expiry of our attestations.
    pub fn attestations_expire_at(&self) -> Option<i64> {
        self.attestations.values().map(|a| a.expires_at_ms).min()
    }

    fn renewal_retry_ms(&self) -> i64 {
        (self.settings.attestation_renew_before_ms / 4).clamp(1_000, RENEWAL_RETRY_MAX_MS)
    }

    /// When the attestations we hold are due for renewal.
    fn renew_at(&self) -> Option<i64> {
        Some(
            self.attestations_expire_at()?
                .saturating_sub(self.settings.attestation_renew_before_ms),
        )
    }

    /// When the renewal has work: ask (before the earliest expiry), or ask again.
    pub(super) fn renewal_deadline(&self) -> Option<i64> {
        if let Some(t) = self.renewal.asked_at {
            return Some(t.saturating_add(self.renewal_retry_ms()));
        }
        self.renewal.retry_at.or_else(|| self.renew_at())
    }

    /// Ask the signer for new attestations when it is time.
    pub(super) fn on_renewal_due(&mut self, now: i64, fx: &mut Vec<Effect>) {
        if self.renewal_deadline().is_none_or(|d| d > now) {
            return;
        }
        self.renewal.asked_at = Some(now);
        self.renewal.retry_at = None;
        if self.planted.skip_attestation_renewal {
            return;
        }
        fx.push(Effect::Attest {
            keys: self.keys.clone(),
            expires_at_ms: now.saturating_add(self.settings.attestation_ttl_ms),
        });
    }

    /// The signer's answer to [`Effect::Attest`]: new attestations for our keys, or why there
    /// are none. Each is checked (our peer id, our key, valid signature, later expiry than the
    /// one it replaces) before it replaces the old one; our advertisement is re-signed with
    /// them.
    pub fn on_attestations(
        &mut self,
        now: i64,
        result: Result<Vec<pb::PeerAttestation>, String>,
        fx: &mut Vec<Effect>,
    ) {
        self.renewal.asked_at = None;
        let me = self.me.to_bytes();
        let problem = match result {
            Err(e) => Some(e),
            Ok(list) => {
                let mut bad = None;
                for a in list {
                    match Attestation::verify_pb(&a, &me, now) {
                        Ok(v) if !self.keys.contains(&v.signer_key) => {
                            bad = Some("an attestation for a key this node does not hold".into());
                        }
                        Ok(v) => {
                            let newer = self
                                .attestations
                                .get(&v.signer_key)
                                .is_none_or(|old| old.expires_at_ms < v.expires_at_ms);
                            if newer {
                                self.attestations.insert(v.signer_key, a);
                            }
                        }
                        Err(e) => bad = Some(format!("invalid attestation: {e}")),
                    }
                }
                let due = self.renew_at().is_some_and(|d| d <= now);
                match bad {
                    Some(b) => Some(b),
                    None if due => Some("the signer's attestations expire too soon".into()),
                    None => None,
                }
            }
        };
        match problem {
            None => {
                self.renewal.failures = 0;
                self.renewal.retry_at = None;
                let until = self.attestations_expire_at().unwrap_or(now);
                tracing::info!(expires_at_ms = until, "attestations renewed");
                Self::emit(
                    fx,
                    NodeEvent::AttestationsRenewed {
                        expires_at_ms: until,
                    },
                );
                self.publish_advertisement(now, fx);
            }
            Some(error) => {
                self.renewal.failures = self.renewal.failures.saturating_add(1);
                self.renewal.retry_at = Some(now.saturating_add(self.renewal_retry_ms()));
                let expires_at_ms = self.attestations_expire_at().unwrap_or(now);
                tracing::warn!(
                    %error,
                    failures = self.renewal.failures,
                    expires_in_ms = expires_at_ms - now,
                    "attestation renewal failed; retrying"
                );
                Self::emit(
                    fx,
                    NodeEvent::AttestationRenewalFailed {
                        error,
                        expires_at_ms,
                    },
                );
            }
        }
    }
}
