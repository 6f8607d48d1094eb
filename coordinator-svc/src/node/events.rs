//! The event log applications read (`WatchEvents`): every event they may see gets a sequence
//! number and the time it happened, and the latest [`RETAINED_EVENTS`] stay in memory so that a
//! subscriber that reconnects with a cursor misses nothing in between.
//!
//! Sequence numbers increase across restarts: a process starts at its start time in ms × 1000
//! (so a restart continues above the previous process unless that one emitted more than 1,000
//! events per ms of its lifetime on average).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::NodeEvent;

/// Events kept for subscribers that resume with a cursor.
pub const RETAINED_EVENTS: usize = 65_536;
/// At most this many bytes (estimated) are kept: announcements of large sessions, which peers
/// can send, cannot make the log hold more.
pub const RETAINED_BYTES: usize = 64 << 20;
/// Live events buffered per subscriber before it lags (it then resumes from the log).
const LIVE_BUFFER: usize = 4096;

/// One event as applications see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    /// Sequence number.
    pub sequence: u64,
    /// When it happened, ms since the epoch.
    pub at_ms: i64,
    /// The event.
    pub event: NodeEvent,
}

/// What a subscription starts with.
#[derive(Debug)]
pub struct Subscription {
    /// Retained events after the cursor, oldest first.
    pub backlog: Vec<Arc<Logged>>,
    /// Events after the cursor that are no longer retained: `Some(None)` when their number is
    /// unknown (the cursor predates this process), `Some(Some(n))` when known, `None` when
    /// nothing was lost.
    pub lost: Option<Option<u64>>,
    /// Events from now on.
    pub live: broadcast::Receiver<Arc<Logged>>,
}

#[derive(Debug)]
struct Inner {
    first_of_process: u64,
    next: u64,
    retained: VecDeque<(usize, Arc<Logged>)>,
    bytes: usize,
}

/// An estimate of an event's size in memory.
fn size_of(e: &NodeEvent) -> usize {
    let base = 160;
    match e {
        NodeEvent::SessionCreated(v) => {
            base + v.context.message.len()
                + v.context.batch.iter().map(|m| m.len() + 24).sum::<usize>()
                + 33 * 6 * v.context.signer_keys.len()
        }
        NodeEvent::Complete { signatures, .. } | NodeEvent::ShouldBroadcast { signatures, .. } => {
            base + 64 * signatures.len()
        }
        NodeEvent::SigningRequestReceived { context, .. } => {
            base + context.message.len() + 33 * context.signer_keys.len()
        }
        _ => base,
    }
}

/// The log.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Logged>>,
    capacity: usize,
}

impl EventLog {
    /// A log for a process started at `start_ms`, keeping `capacity` events.
    pub fn new(start_ms: i64, capacity: usize) -> Self {
        let first = u64::try_from(start_ms)
            .unwrap_or(0)
            .saturating_mul(1000)
            .max(1);
        EventLog {
            inner: Mutex::new(Inner {
                first_of_process: first,
                next: first,
                retained: VecDeque::with_capacity(capacity.min(4096)),
                bytes: 0,
            }),
            live: broadcast::channel(LIVE_BUFFER).0,
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record an event (numbered, kept, sent to subscribers).
    pub fn push(&self, at_ms: i64, event: NodeEvent) {
        let mut inner = self.lock();
        let logged = Arc::new(Logged {
            sequence: inner.next,
            at_ms,
            event,
        });
        inner.next += 1;
        let size = size_of(&logged.event);
        while inner.retained.len() >= self.capacity
            || (inner.bytes + size > RETAINED_BYTES && !inner.retained.is_empty())
        {
            if let Some((s, _)) = inner.retained.pop_front() {
                inner.bytes -= s;
            }
        }
        inner.bytes += size;
        inner.retained.push_back((size, logged.clone()));
        // Sent under the lock, so that a subscription sees each event once: in its backlog or
        // live, never both or neither.
        let _ = self.live.send(logged);
    }

    /// The last sequence number given (0 before the first event).
    pub fn last_sequence(&self) -> u64 {
        let inner = self.lock();
        if inner.next == inner.first_of_process {
            0
        } else {
            inner.next - 1
        }
    }

    /// Subscribe; with `after`, the retained events after that sequence number come first.
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let inner = self.lock();
        let live = self.live.subscribe();
        let Some(after) = after else {
            return Subscription {
                backlog: Vec::new(),
                lost: None,
                live,
            };
        };
        let oldest = inner
            .retained
            .front()
            .map_or(inner.next, |(_, e)| e.sequence);
        let lost = if after.saturating_add(1) >= oldest || after.saturating_add(1) >= inner.next {
            None
        } else if after + 1 >= inner.first_of_process {
            Some(Some(oldest - after - 1))
        } else {
            Some(None)
        };
        let backlog = inner
            .retained
            .iter()
            .filter(|(_, e)| e.sequence > after)
            .map(|(_, e)| e.clone())
            .collect();
        Subscription {
            backlog,
            lost,
            live,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use shared::election::SessionId;

    fn ev(i: u8) -> NodeEvent {
        NodeEvent::Closed {
            id: SessionId([i; 16]),
        }
    }

    #[test]
    fn a_cursor_resumes_without_gap_or_duplicate_and_reports_what_was_dropped() {
        let log = EventLog::new(5, 4);
        assert_eq!(log.last_sequence(), 0);
        for i in 0..3 {
            log.push(100, ev(i));
        }
        let first = 5000;
        assert_eq!(log.last_sequence(), first + 2);
        // From the start of this process: everything, nothing lost.
        let s = log.subscribe(Some(0));
        assert_eq!(s.backlog.len(), 3);
        assert_eq!(s.lost, Some(None), "a cursor from before this process");
        let s = log.subscribe(Some(first - 1));
        assert_eq!(s.lost, None);
        assert_eq!(s.backlog[0].sequence, first);
        // Resume after the second: only the third, then live ones.
        let mut s = log.subscribe(Some(first + 1));
        assert_eq!(s.backlog.len(), 1);
        assert_eq!(s.backlog[0].sequence, first + 2);
        log.push(101, ev(9));
        let live = s.live.try_recv().unwrap();
        assert_eq!((live.sequence, live.at_ms), (first + 3, 101));
        // Past the capacity: the oldest are gone, and the subscriber is told how many.
        for i in 0..3 {
            log.push(102, ev(i));
        }
        let s = log.subscribe(Some(first - 1));
        assert_eq!(s.lost, Some(Some(3)));
        assert_eq!(s.backlog.len(), 4);
        assert_eq!(s.backlog[0].sequence, first + 3);
        // No cursor: only new events.
        let s = log.subscribe(None);
        assert!(s.backlog.is_empty() && s.lost.is_none());
        // A cursor at the newest: nothing lost, nothing to replay.
        let s = log.subscribe(Some(log.last_sequence()));
        assert!(s.backlog.is_empty() && s.lost.is_none());
    }

    #[test]
    fn large_events_are_bounded_by_bytes_not_only_by_count() {
        // Signing requests with 100-key contexts and long messages, as peers may send them.
        let log = EventLog::new(1, RETAINED_EVENTS);
        let context = shared::wire::SessionContext {
            signer_keys: (0..100u8).map(|i| [i; 33]).collect(),
            message: vec![0; 1024],
            format: shared::musig::SignatureFormat::Bip340,
            tweaks: Vec::new(),
            batch: Vec::new(),
        };
        let event = NodeEvent::SigningRequestReceived {
            request_id: [0; 16],
            peer: libp2p::PeerId::random(),
            context,
            transaction_type: shared::wire::pb::TransactionType::Spend,
            amount: 1,
        };
        let each = size_of(&event);
        for _ in 0..20_000 {
            log.push(1, event.clone());
        }
        let kept = log.subscribe(Some(0)).backlog.len();
        assert!(
            kept * each <= RETAINED_BYTES,
            "{kept} events of {each} bytes"
        );
        assert!(kept > RETAINED_BYTES / each - 2, "{kept}");
        assert!(kept < 20_000);
    }
}
