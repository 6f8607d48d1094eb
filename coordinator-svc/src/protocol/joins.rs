//! Joins by the local application: a known session at once, an unknown one after waiting up
//! to [`JOIN_WAIT_MS`] for its announcement (or its DHT record, looked up after
//! [`DHT_LOOKUP_AFTER_MS`]).

use shared::election::SessionId;

use super::sessions::session_record_key;
use super::{
    Core, DHT_LOOKUP_AFTER_MS, Effect, ErrorReason, JOIN_WAIT_MS, MAX_AWAITED_JOINS,
    MAX_ENDED_REMEMBERED, MAX_JOINS_PER_AWAITED, NodeError, Pending, SessionView,
};

/// Joins waiting for an unknown session.
#[derive(Debug)]
pub(super) struct Awaited {
    /// When they fail.
    pub deadline: i64,
    /// The waiting joins' queries.
    pub queries: Vec<u64>,
    /// When the session is looked up in the DHT (`None`: done, or discovery off).
    pub lookup_at: Option<i64>,
}

impl Awaited {
    /// Its next deadline.
    pub fn next(&self) -> i64 {
        self.lookup_at
            .map_or(self.deadline, |at| at.min(self.deadline))
    }
}

impl Core {
    /// Join a session. An unknown one may be announced in a moment (an application that
    /// heard of it from another party can be faster than the announcement): the join waits up
    /// to [`JOIN_WAIT_MS`] for it, and looks it up in the DHT meanwhile when discovery is on.
    /// (Found by the soak run: a join that lost that race failed at once whenever the DHT had
    /// no record.)
    pub fn join(
        &mut self,
        now: i64,
        id: SessionId,
        fx: &mut Vec<Effect>,
    ) -> Pending<Result<SessionView, NodeError>> {
        if self.sessions.contains_key(&id) {
            return Pending::Ready(self.join_known(now, id, fx));
        }
        if self.departed.contains_key(&id) || self.ended.0.contains(&id) {
            return Pending::Ready(Err(NodeError::FailedPrecondition(
                ErrorReason::SessionEnded,
                format!("session {id} has ended"),
            )));
        }
        if self.awaited.len() >= MAX_AWAITED_JOINS && !self.awaited.contains_key(&id) {
            return Pending::Ready(Err(NodeError::NotFound(
                ErrorReason::SessionNotFound,
                format!("session {id} is unknown"),
            )));
        }
        let query = self.query();
        let lookup_at = (self.settings.dht && self.settings.enable_session_discovery)
            .then(|| now.saturating_add(DHT_LOOKUP_AFTER_MS));
        let waiting = &mut self
            .awaited
            .entry(id)
            .or_insert_with(|| Awaited {
                deadline: now.saturating_add(JOIN_WAIT_MS),
                queries: Vec::new(),
                lookup_at,
            })
            .queries;
        if waiting.len() >= MAX_JOINS_PER_AWAITED {
            return Pending::Ready(Err(NodeError::ResourceExhausted(
                ErrorReason::TooManyRequests,
                format!("too many joins waiting for session {id}; retry later"),
            )));
        }
        waiting.push(query);
        Pending::Waiting(query)
    }

    /// An ended session left memory: remember its id for joins (bounded, oldest forgotten).
    pub(super) fn remember_ended(&mut self, id: SessionId) {
        let (set, order) = &mut self.ended;
        if !set.insert(id) {
            return;
        }
        order.push_back(id);
        while order.len() > MAX_ENDED_REMEMBERED {
            if let Some(old) = order.pop_front() {
                set.remove(&old);
            }
        }
    }

    /// The session is known now: joins waiting for it go on.
    pub(super) fn answer_awaited(&mut self, now: i64, id: SessionId, fx: &mut Vec<Effect>) {
        let Some(Awaited { queries, .. }) = self.awaited.remove(&id) else {
            return;
        };
        for query in queries {
            self.dht_joins.remove(&query);
            let result = self.join_known(now, id, fx);
            fx.push(Effect::JoinAnswer {
                query,
                result: Box::new(result),
            });
        }
    }

    /// Joins whose session did not appear in time fail; those waiting long enough look it up
    /// in the DHT (one lookup per session, answered through its first join's query).
    pub(super) fn expire_awaited(&mut self, now: i64, fx: &mut Vec<Effect>) {
        for (id, a) in &mut self.awaited {
            if a.lookup_at.is_some_and(|at| at <= now)
                && let Some(&query) = a.queries.first()
            {
                a.lookup_at = None;
                self.dht_joins.insert(query, *id);
                fx.push(Effect::GetRecord {
                    query,
                    key: session_record_key(&self.settings.session_resource_type, id),
                });
            }
        }
        let due: Vec<SessionId> = self
            .awaited
            .iter()
            .filter(|(_, a)| a.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            for query in self
                .awaited
                .remove(&id)
                .map(|a| a.queries)
                .unwrap_or_default()
            {
                self.dht_joins.remove(&query);
                fx.push(Effect::JoinAnswer {
                    query,
                    result: Box::new(Err(NodeError::NotFound(
                        ErrorReason::SessionNotFound,
                        format!(
                            "session {id} is unknown: no announcement arrived within {} ms{}",
                            JOIN_WAIT_MS,
                            if self.settings.dht && self.settings.enable_session_discovery {
                                " and the DHT has no record of it"
                            } else {
                                " (the DHT is disabled)"
                            }
                        ),
                    ))),
                });
            }
        }
    }

    pub(super) fn join_known(
        &mut self,
        now: i64,
        id: SessionId,
        fx: &mut Vec<Effect>,
    ) -> Result<SessionView, NodeError> {
        let s = self.sessions.get_mut(&id).ok_or_else(|| {
            NodeError::NotFound(ErrorReason::SessionNotFound, format!("session {id}"))
        })?;
        if s.local.is_empty() {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::NoLocalKey,
                "the local signer holds none of the session's keys".into(),
            ));
        }
        if s.phase.is_terminal() {
            return Err(NodeError::FailedPrecondition(
                ErrorReason::SessionEnded,
                format!("session {id} is {}", s.phase.as_str()),
            ));
        }
        let first = !s.locally_joined;
        let actions = s.join_local(now);
        if !s.pool_slot {
            self.joined_live.insert(id);
        }
        if first && actions.is_empty() {
            // Joining changed the session without anything to tell (the creator's own join):
            // still state a restart must find.
            self.persist(id, fx);
        }
        self.apply(now, id, actions, fx);
        self.sessions
            .get(&id)
            .map(SessionView::of)
            .ok_or(NodeError::Stopped)
    }
}
