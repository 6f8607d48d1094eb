//! Coordinator failover after completion (DESIGN §5): the elected party must confirm the
//! broadcast within `broadcastTimeout`; otherwise the next one in the election's backup order
//! becomes responsible, until someone confirms or every party has failed. Deadlines sit in a
//! [`super::deadlines::DeadlineQueue`]; nothing is polled.

use shared::election::SessionId;
use shared::wire::{self, Body};

use super::session::{Action, Phase, Session};
use super::{Core, Effect, ErrorReason, NodeError, NodeEvent};

fn responsible_is_local(s: &Session, attempt: usize) -> Option<usize> {
    s.election
        .responsible_after(attempt)
        .filter(|i| s.local.contains(i))
}

/// Whether a broadcast clock still runs for the session (it is kept until it stops).
pub(super) fn running(s: &Session) -> bool {
    s.failover.deadline_ms.is_some() && s.failover.confirmed.is_none() && !s.failover.exhausted
}

impl Core {
    /// The session completed: the responsible party's clock starts.
    pub(super) fn start_failover(&mut self, now: i64, id: SessionId, out: &mut Vec<Effect>) {
        if !self.settings.enable_election || !self.settings.enable_failover {
            return;
        }
        let deadline = now.saturating_add(self.settings.broadcast_timeout_ms);
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.failover.confirmed.is_some()
            || s.failover.deadline_ms.is_some()
            || s.failover.exhausted
        {
            return;
        }
        s.failover.deadline_ms = Some(deadline);
        self.failover.schedule(deadline, id);
        let attempt = s.failover.attempt;
        if let (Some(index), Some(signatures)) =
            (responsible_is_local(s, attempt), s.signatures.clone())
        {
            Self::emit(
                out,
                NodeEvent::ShouldBroadcast {
                    id,
                    index,
                    attempt,
                    signatures,
                },
            );
        }
    }

    /// Deadlines that passed: the responsible party did not confirm; the next one takes over.
    pub(super) fn on_failover_due(&mut self, now: i64, fx: &mut Vec<Effect>) {
        for id in self.failover.pop_due(now) {
            // Out of memory: read back first; the step runs once it is (its deadline passed).
            if !self.sessions.contains_key(&id) {
                self.load(id, fx);
                continue;
            }
            self.failover_step(now, id, fx);
        }
    }

    /// Ask for a session that left memory with its clock running (once per absence).
    pub(super) fn load(&mut self, id: SessionId, fx: &mut Vec<Effect>) {
        if let Some((_, asked)) = self.unloaded.get_mut(&id)
            && !*asked
        {
            *asked = true;
            fx.push(Effect::Load(id));
        }
    }

    /// A deadline passed: the responsible party did not confirm; the next one takes over.
    pub(super) fn failover_step(&mut self, now: i64, id: SessionId, fx: &mut Vec<Effect>) {
        let timeout = self.settings.broadcast_timeout_ms;
        let Some(s) = self.sessions.get_mut(&id) else {
            return;
        };
        if s.failover.confirmed.is_some() || s.failover.deadline_ms.is_none() {
            return;
        }
        let failed_index = s
            .election
            .responsible_after(s.failover.attempt)
            .unwrap_or(0);
        s.failover.attempt += 1;
        let attempt = s.failover.attempt;
        let mut out = Vec::new();
        match s.election.responsible_after(attempt) {
            Some(next_index) => {
                let deadline = now.saturating_add(timeout);
                s.failover.deadline_ms = Some(deadline);
                self.failover.schedule(deadline, id);
                tracing::warn!(session = %id, failed_index, attempt, next_index, "coordinator failed to confirm the broadcast");
                Self::emit(
                    &mut out,
                    NodeEvent::CoordinatorFailed {
                        id,
                        failed_index,
                        attempt,
                        next_index,
                    },
                );
                if let (Some(index), Some(signatures)) =
                    (responsible_is_local(s, attempt), s.signatures.clone())
                {
                    Self::emit(
                        &mut out,
                        NodeEvent::ShouldBroadcast {
                            id,
                            index,
                            attempt,
                            signatures,
                        },
                    );
                }
            }
            None => {
                s.failover.deadline_ms = None;
                s.failover.exhausted = true;
                tracing::error!(session = %id, attempts = attempt, "failover exhausted: nobody confirmed the broadcast");
                Self::emit(
                    &mut out,
                    NodeEvent::CoordinatorFailed {
                        id,
                        failed_index,
                        attempt,
                        next_index: failed_index,
                    },
                );
                Self::emit(
                    &mut out,
                    NodeEvent::FailoverExhausted {
                        id,
                        attempts: attempt,
                    },
                );
            }
        }
        self.persist(id, fx);
        fx.extend(out);
    }

    /// Whether the session's broadcast clock still runs here (in memory or out of it).
    pub fn clock_running(&self, id: SessionId) -> bool {
        self.unloaded.contains_key(&id) || self.sessions.get(&id).is_some_and(running)
    }

    /// The application broadcast the transaction: tell every participant (signed
    /// BROADCAST_CONFIRMED) so their failover clocks stop.
    ///
    /// # Errors
    /// [`NodeError::NotFound`], [`NodeError::FailedPrecondition`] unless COMPLETE.
    pub fn notify_broadcast(
        &mut self,
        now: i64,
        id: SessionId,
        reference: String,
        fx: &mut Vec<Effect>,
    ) -> Result<(), NodeError> {
        if reference.len() > wire::MAX_REFERENCE_BYTES {
            return Err(NodeError::InvalidArgument(
                ErrorReason::InvalidField,
                format!(
                    "broadcast_reference exceeds {} bytes",
                    wire::MAX_REFERENCE_BYTES
                ),
            ));
        }
        let s = self.sessions.get_mut(&id).ok_or_else(|| {
            NodeError::NotFound(ErrorReason::SessionNotFound, format!("session {id}"))
        })?;
        if !matches!(s.phase, Phase::Complete | Phase::Closed) {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NotComplete,
                format!("session {id} is {}, not COMPLETE", s.phase.as_str()),
            ));
        }
        let Some(&local) = s.local.first() else {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
                "no local key in the session".into(),
            ));
        };
        let Some(&from) = s.context.signer_keys.get(local) else {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
                "no local key in the session".into(),
            ));
        };
        // The attempt this party is responsible for (receivers accept a confirmation only from
        // the party responsible for the attempt it names).
        let position = s
            .election
            .priority_list
            .iter()
            .position(|i| *i == local)
            .unwrap_or(0);
        let attempt = u32::try_from(position).unwrap_or(u32::MAX);
        if s.failover.confirmed.is_none() {
            s.failover.confirmed = Some((hex::encode(from), reference.clone()));
            s.failover.deadline_ms = None;
        }
        self.failover.cancel(id);
        let actions = vec![
            Action::Broadcast {
                from,
                body: Body::BroadcastConfirmed {
                    reference: reference.clone(),
                    attempt,
                },
            },
            Action::BroadcastConfirmed {
                by: from,
                reference,
            },
        ];
        self.apply(now, id, actions, fx);
        Ok(())
    }
}
