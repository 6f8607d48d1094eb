//! Reads that combine the store and the core: pages of sessions for `ListSessions`.

use shared::election::SessionId;

use super::{ErrorReason, Node, NodeError, SessionPage};
use crate::protocol::session::Phase;
use crate::store::CreatedKey;

/// Records looked at per page at most (a phase filter that matches few sessions returns a
/// shorter page with a token to go on, rather than scanning the whole store).
const MAX_SCAN: usize = 20_000;

impl Node {
    /// A page of sessions, newest first: the store lists them (every session is stored before
    /// it is reported), the core's view is used where the session is in memory.
    pub(super) fn page(
        &self,
        now: i64,
        phase: Option<Phase>,
        before: Option<CreatedKey>,
        limit: usize,
    ) -> Result<SessionPage, NodeError> {
        let core = &self.core;
        let (records, next) = self
            .store
            .page(before, limit, MAX_SCAN, |id, rec| {
                phase.is_none_or(|p| match core.session(SessionId(*id)) {
                    Some(v) => v.phase == p,
                    None => rec.phase == p.as_str(),
                })
            })
            .map_err(|e| NodeError::Unavailable(ErrorReason::StoreFailed, e.to_string()))?;
        let views = records
            .iter()
            .filter_map(|(id, rec)| {
                let id = SessionId(*id);
                core.session(id).or_else(|| core.stored_view(now, id, rec))
            })
            .collect();
        Ok((views, next))
    }
}
