//! Reads that combine the store and the core: pages of sessions for `ListSessions`.

use shared::election::SessionId;

use super::{ErrorReason, Node, NodeError, SessionPage};
use crate::protocol::session::Phase;
use crate::store::CreatedKey;

/// Records looked at per page at most (a phase filter that matches few sessions returns a
/// shorter page with a token to go on, rather than scanning the whole store).
const MAX_SCAN: usize = 20_000;

/// A page also ends once its sessions reach about this many bytes (with a token to go on): a
/// batch session's context holds up to 64 KiB of messages, and a page of 100 of them would
/// pass the 4 MiB a gRPC client decodes by default (found in review).
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;

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
        let (mut records, mut next) = self
            .store
            .page(before, limit, MAX_SCAN, |id, rec| {
                phase.is_none_or(|p| match core.session(SessionId(*id)) {
                    Some(v) => v.phase == p,
                    None => rec.phase == p.as_str(),
                })
            })
            .map_err(|e| NodeError::Unavailable(ErrorReason::StoreFailed, e.to_string()))?;
        let mut bytes = 0;
        let fits = records
            .iter()
            .position(|(_, rec)| {
                // The announcement (context) and signatures dominate a session's size.
                bytes += rec.announce.len() / 2
                    + rec.signature.as_ref().map_or(0, |s| s.len() / 2)
                    + 1024;
                bytes > MAX_PAGE_BYTES
            })
            .map_or(records.len(), |i| i.max(1));
        if fits < records.len() {
            records.truncate(fits);
            next = records
                .last()
                .map(|(id, rec)| crate::store::created_key(id, rec));
        }
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
