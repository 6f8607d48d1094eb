//! Direct messages on one long-lived stream per peer and direction (`/musig2/direct/2.0.0`).
//!
//! Before, every direct message was a request-response exchange on a stream of its own: a new
//! Yamux stream, a protocol negotiation, three or four timers on libp2p's global timer thread
//! and the connection's idle timer armed and disarmed around it. A profile of a coordinator at
//! one session in flight counted 205 context switches on its worker thread and 117 wake-ups of
//! the timer thread per session, and a message took 0.8 ms (p50) from our send to the peer's
//! event loop on loopback, where a TCP round trip takes 0.05–0.1 ms.
//!
//! Now each peer we send to has a lane: one outbound stream opened once, on which requests are
//! written as frames `[id: u64][len: u32][bytes]`, and answers come back on the same stream
//! as `[id][len][answer]`, in any order (an answer the receiver holds until its write does not
//! hold up the others). The receiver reads a stream's frames one after the other and hands
//! them to its event loop in that order, so what a sender wrote in order is handled in order.
//! A lane that breaks (connection closed, a write or an answer not done within
//! [`ANSWER_TIMEOUT`]) fails every request in flight on it, which the outbox sends again, and
//! the next request opens a new stream. Every request handed to [`Lanes::send`] gets exactly
//! one [`LaneEvent::Answered`]: whoever takes it out of the lane's table of accepted requests
//! reports it (the lane's task, or, if that task ends some other way, its supervisor). A lane
//! unused for [`LANE_IDLE`] closes its stream, which ends the peer's side of it too: an open
//! stream keeps its connection alive on both sides, so a connection idles (and closes after the
//! swarm's idle timeout) only once neither side has sent for that long. Limits:
//! [`MAX_INBOUND_STREAMS_PER_PEER`] streams from one peer, [`MAX_UNANSWERED`] frames of one
//! stream handed over and not yet answered (the reader waits beyond it), frames of at most
//! [`MAX_DIRECT_MESSAGE_BYTES`] (a longer one is reported as [`DirectRequest::TooLarge`],
//! answered, and ends the stream: what follows it is not read).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use shared::wire::MAX_DIRECT_MESSAGE_BYTES;
use tokio::sync::{mpsc, oneshot};

use crate::net::{DirectRequest, MAX_RESPONSE_BYTES};

/// Protocol of the direct-message lanes.
pub const LANE_PROTOCOL: &str = "/musig2/direct/2.0.0";
/// A request not answered within this long breaks its lane (its requests are sent again).
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Opening a lane (dialling included) gives up after this long.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Inbound lanes one peer may hold open at once (further ones are closed at once).
pub const MAX_INBOUND_STREAMS_PER_PEER: usize = 4;
/// Frames of one inbound lane handed to the event loop and not answered yet.
pub const MAX_UNANSWERED: usize = 64;
/// Why what a lane still held failed when its peer disconnected.
const DISCONNECTED: &str = "the peer disconnected";
/// Requests waiting for a lane's writer.
const LANE_QUEUE: usize = 256;
/// An outbound lane with nothing in flight for this long closes its stream.
pub const LANE_IDLE: Duration = Duration::from_secs(300);

/// A request's number, unique in this process and increasing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the answer to a received frame goes.
pub type Answer = oneshot::Sender<Vec<u8>>;

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The peer does not speak [`LANE_PROTOCOL`]: it never will.
    #[error("the peer does not support {LANE_PROTOCOL}")]
    Unsupported,
    /// The lane could not be opened or broke before the answer.
    #[error("{0}")]
    Failed(String),
}

/// What the lanes report to the event loop.
#[derive(Debug)]
pub enum LaneEvent {
    /// A peer's frame, to be answered through `answer`.
    Request {
        /// The sender.
        peer: PeerId,
        /// The frame (or the size of one over the limit).
        frame: DirectRequest,
        /// The answer's way back (dropped unanswered: "not stored, send again").
        answer: Answer,
    },
    /// Our request `id` to `peer` was answered, or failed.
    Answered {
        /// The peer.
        peer: PeerId,
        /// The request.
        id: RequestId,
        /// The answer.
        result: Result<Vec<u8>, SendError>,
    },
}

/// The answer to a frame accepted but not stored (or whose answer the event loop dropped): the
/// sender must send it again.
pub const UNSTORED: &[u8] = b"unavailable: not stored; send again";

/// Requests a lane accepted, by id: `None` while queued, the answer's deadline once written.
type Accepted = Arc<Mutex<HashMap<u64, Option<tokio::time::Instant>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One peer's outbound lane as [`Lanes`] holds it.
struct Lane {
    requests: mpsc::Sender<(RequestId, Vec<u8>)>,
    accepted: Accepted,
}

/// Our lanes: one writer task per peer we send to, and the acceptor of peers' lanes.
pub struct Lanes {
    control: libp2p_stream::Control,
    out: HashMap<PeerId, Lane>,
    events: mpsc::Sender<LaneEvent>,
    next: u64,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes")
            .field("peers", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Lanes {
    /// Start accepting peers' lanes; events go to `events`.
    ///
    /// # Errors
    /// The protocol is already accepted on this control.
    pub fn start(
        mut control: libp2p_stream::Control,
        events: mpsc::Sender<LaneEvent>,
    ) -> anyhow::Result<Self> {
        let incoming = control
            .accept(StreamProtocol::new(LANE_PROTOCOL))
            .map_err(|e| anyhow::anyhow!("{LANE_PROTOCOL}: {e}"))?;
        tokio::spawn(accept(incoming, events.clone()));
        Ok(Lanes {
            control,
            out: HashMap::new(),
            events,
            next: 0,
        })
    }

    /// Send `bytes` to `peer` on its lane (opened when needed); the answer comes as
    /// [`LaneEvent::Answered`] with the id returned.
    pub fn send(&mut self, peer: PeerId, bytes: Vec<u8>) -> RequestId {
        self.next += 1;
        let id = RequestId(self.next);
        let (control, events) = (&self.control, &self.events);
        let lane = self
            .out
            .entry(peer)
            .or_insert_with(|| open_lane(control.clone(), peer, events.clone()));
        lock(&lane.accepted).insert(id.0, None);
        let closed = match lane.requests.try_send((id, bytes)) {
            Ok(()) => return id,
            Err(mpsc::error::TrySendError::Full(_)) => false,
            Err(mpsc::error::TrySendError::Closed(_)) => true,
        };
        let accepted = lane.accepted.clone();
        if closed {
            self.out.remove(&peer);
        }
        let reason = if closed {
            "the lane stopped"
        } else {
            "the lane's queue is full"
        };
        let events = self.events.clone();
        tokio::spawn(async move {
            fail(&events, &accepted, peer, [id.0], reason).await;
        });
        id
    }

    /// The last connection to `peer` closed: its lane ends, and what it had accepted fails
    /// without being sent (the outbox sends it again on the next connection).
    pub fn disconnected(&mut self, peer: &PeerId) {
        self.out.remove(peer);
    }
}

/// Start a peer's lane task, and its supervisor: whatever the task leaves in the table when it
/// ends (a panic included) is reported failed.
fn open_lane(
    control: libp2p_stream::Control,
    peer: PeerId,
    events: mpsc::Sender<LaneEvent>,
) -> Lane {
    let (tx, rx) = mpsc::channel(LANE_QUEUE);
    let accepted = Accepted::default();
    let task = tokio::spawn(outbound(
        control,
        peer,
        rx,
        events.clone(),
        accepted.clone(),
    ));
    let table = accepted.clone();
    tokio::spawn(async move {
        if let Err(e) = task.await
            && e.is_panic()
        {
            tracing::error!(%peer, "a lane task panicked; its messages are sent again");
        }
        let ids: Vec<u64> = lock(&table).keys().copied().collect();
        fail(&events, &table, peer, ids, "the lane stopped").await;
    });
    Lane {
        requests: tx,
        accepted,
    }
}

/// Report the requests `ids` failed with `error`, each only if it is still in `accepted`
/// (taken out here).
async fn fail_with(
    events: &mpsc::Sender<LaneEvent>,
    accepted: &Accepted,
    peer: PeerId,
    ids: impl IntoIterator<Item = u64>,
    error: &SendError,
) {
    let taken: Vec<u64> = {
        let mut table = lock(accepted);
        ids.into_iter()
            .filter(|id| table.remove(id).is_some())
            .collect()
    };
    for id in taken {
        let (id, result) = (RequestId(id), Err(error.clone()));
        let _ = events.send(LaneEvent::Answered { peer, id, result }).await;
    }
}

/// [`fail_with`] a [`SendError::Failed`] of `reason`.
async fn fail(
    events: &mpsc::Sender<LaneEvent>,
    accepted: &Accepted,
    peer: PeerId,
    ids: impl IntoIterator<Item = u64>,
    reason: &str,
) {
    let error = SendError::Failed(reason.to_string());
    fail_with(events, accepted, peer, ids, &error).await;
}

/// Fail `first` (already taken from the channel, if any) and everything still queued on the
/// lane, with `error`.
async fn fail_queued(
    requests: &mut mpsc::Receiver<(RequestId, Vec<u8>)>,
    events: &mpsc::Sender<LaneEvent>,
    accepted: &Accepted,
    peer: PeerId,
    first: Option<RequestId>,
    error: &SendError,
) {
    let mut ids: Vec<u64> = first.map(|id| id.0).into_iter().collect();
    while let Ok((id, _)) = requests.try_recv() {
        ids.push(id.0);
    }
    fail_with(events, accepted, peer, ids, error).await;
}

/// Write one frame: id, length and bytes in one write (one Yamux and one Noise frame).
async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u64,
    data: &[u8],
) -> std::io::Result<()> {
    let len = u32::try_from(data.len()).map_err(|_| std::io::Error::other("frame too large"))?;
    let mut buf = Vec::with_capacity(12 + data.len());
    buf.extend_from_slice(&id.to_be_bytes());
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(data);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Read one frame of at most `limit` bytes: `None` at a clean end of the stream; a frame over
/// the limit is returned as [`DirectRequest::TooLarge`] with its bytes not read.
///
/// # Errors
/// The stream failed or ended inside a frame.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> std::io::Result<Option<(u64, DirectRequest)>> {
    let mut head = [0u8; 12];
    let mut got = 0;
    while got < head.len() {
        let n = r.read(&mut head[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        got += n;
    }
    let (id, len) = head.split_at(8);
    let id = u64::from_be_bytes(id.try_into().map_err(std::io::Error::other)?);
    let len = u32::from_be_bytes(len.try_into().map_err(std::io::Error::other)?) as usize;
    if len > limit {
        return Ok(Some((id, DirectRequest::TooLarge(len))));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some((id, DirectRequest::Frame(buf))))
}

/// One peer's outbound lane: writes requests in the order given, reports answers as they come.
async fn outbound(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut requests: mpsc::Receiver<(RequestId, Vec<u8>)>,
    events: mpsc::Sender<LaneEvent>,
    accepted: Accepted,
) {
    let protocol = StreamProtocol::new(LANE_PROTOCOL);
    while let Some((first, bytes)) = requests.recv().await {
        if requests.is_closed() {
            // The peer disconnected: nothing more is sent on this lane.
            let error = SendError::Failed(DISCONNECTED.into());
            fail_queued(&mut requests, &events, &accepted, peer, Some(first), &error).await;
            return;
        }
        let opened =
            tokio::time::timeout(OPEN_TIMEOUT, control.open_stream(peer, protocol.clone())).await;
        // What waits fails at once, so the outbox's backoff applies to all of it ("unsupported"
        // is never delivered, and never will be).
        let error = match opened {
            Ok(Ok(stream)) => {
                let first = (first, bytes);
                let error = run_lane(stream, peer, &mut requests, &events, &accepted, first).await;
                // What was written and not answered fails; what is still queued goes on a new
                // stream, unless the peer disconnected.
                let written: Vec<u64> = lock(&accepted)
                    .iter()
                    .filter(|(_, d)| d.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                if let Some(reason) = &error {
                    fail(&events, &accepted, peer, written, reason).await;
                }
                if requests.is_closed() {
                    let error = SendError::Failed(DISCONNECTED.into());
                    fail_queued(&mut requests, &events, &accepted, peer, None, &error).await;
                    return;
                }
                continue;
            }
            Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
                SendError::Unsupported
            }
            Ok(Err(e)) => SendError::Failed(e.to_string()),
            Err(_) => SendError::Failed("opening the lane timed out".into()),
        };
        fail_queued(&mut requests, &events, &accepted, peer, Some(first), &error).await;
    }
}

/// Drive one stream of a lane until it breaks (`Some(reason)`) or idles (`None`, nothing in
/// flight).
async fn run_lane(
    stream: libp2p::Stream,
    peer: PeerId,
    requests: &mut mpsc::Receiver<(RequestId, Vec<u8>)>,
    events: &mpsc::Sender<LaneEvent>,
    accepted: &Accepted,
    first: (RequestId, Vec<u8>),
) -> Option<String> {
    let (mut reader, mut writer) = stream.split();
    // Answers, read by a task of their own (a read is not cancel-safe in a select).
    let (answers_tx, mut answers) = mpsc::channel::<std::io::Result<(u64, Vec<u8>)>>(64);
    let read_task = tokio::spawn(async move {
        loop {
            let r = match read_frame(&mut reader, MAX_RESPONSE_BYTES).await {
                Ok(Some((id, DirectRequest::Frame(a)))) => Ok((id, a)),
                Ok(Some((_, DirectRequest::TooLarge(n)))) => Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("answer of {n} bytes over {MAX_RESPONSE_BYTES}"),
                )),
                Ok(None) => Err(std::io::ErrorKind::UnexpectedEof.into()),
                Err(e) => Err(e),
            };
            let stop = r.is_err();
            if answers_tx.send(r).await.is_err() || stop {
                return;
            }
        }
    });
    let mut next = Some(first);
    let outcome = loop {
        if let Some((id, bytes)) = next.take() {
            if requests.is_closed() {
                // Disconnected meanwhile: this one is failed with the queue, unsent.
                fail(events, accepted, peer, [id.0], DISCONNECTED).await;
                break Some(DISCONNECTED.to_string());
            }
            let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
            if let Some(d) = lock(accepted).get_mut(&id.0) {
                *d = Some(deadline);
            }
            // A peer that stops reading fills the stream's window: the write stalls, and the
            // lane breaks at the deadline like an answer that does not come.
            match tokio::time::timeout_at(deadline, write_frame(&mut writer, id.0, &bytes)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Some(e.to_string()),
                Err(_) => break Some("the peer does not read (write timed out)".into()),
            }
        }
        let oldest = lock(accepted).values().flatten().min().copied();
        tokio::select! {
            biased;
            a = answers.recv() => match a {
                Some(Ok((id, answer))) => {
                    let ours = lock(accepted).remove(&id).is_some();
                    if ours {
                        let (id, result) = (RequestId(id), Ok(answer));
                        let _ = events.send(LaneEvent::Answered { peer, id, result }).await;
                    }
                }
                Some(Err(e)) => break Some(e.to_string()),
                None => break Some("the lane's reader stopped".into()),
            },
            r = requests.recv() => match r {
                Some(req) => next = Some(req),
                None => break Some(DISCONNECTED.into()),
            },
            () = tokio::time::sleep_until(oldest.unwrap_or_else(tokio::time::Instant::now)), if oldest.is_some() => {
                break Some(format!("no answer within {} s", ANSWER_TIMEOUT.as_secs()));
            }
            () = tokio::time::sleep(LANE_IDLE), if oldest.is_none() => break None,
        }
    };
    read_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
    outcome
}

/// An inbound lane's place in its peer's count, given back when the lane ends (even by a
/// panic).
struct Slot {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(n) = open.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Accept peers' lanes, at most [`MAX_INBOUND_STREAMS_PER_PEER`] per peer at once.
async fn accept(mut incoming: libp2p_stream::IncomingStreams, events: mpsc::Sender<LaneEvent>) {
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    while let Some((peer, stream)) = incoming.next().await {
        {
            let mut open = lock(&open);
            let n = open.entry(peer).or_default();
            if *n >= MAX_INBOUND_STREAMS_PER_PEER {
                tracing::debug!(%peer, "too many lanes from one peer; closed");
                continue;
            }
            *n += 1;
        }
        let slot = Slot {
            open: open.clone(),
            peer,
        };
        let events = events.clone();
        tokio::spawn(async move {
            let _slot = slot;
            inbound(peer, stream, events).await;
        });
    }
}

/// One peer's inbound lane: frames handed over in order, answers written as they come; at most
/// [`MAX_UNANSWERED`] frames wait for their answers (reading waits beyond that).
async fn inbound(peer: PeerId, stream: libp2p::Stream, events: mpsc::Sender<LaneEvent>) {
    let (mut reader, mut writer) = stream.split();
    let (pending_tx, mut pending_rx) = mpsc::channel::<(u64, oneshot::Receiver<Vec<u8>>)>(1);
    let write_task = tokio::spawn(async move {
        let mut waiting = FuturesUnordered::new();
        let mut more = true;
        while more || !waiting.is_empty() {
            tokio::select! {
                p = pending_rx.recv(), if more && waiting.len() < MAX_UNANSWERED => match p {
                    Some((id, rx)) => waiting.push(async move {
                        (id, rx.await.unwrap_or_else(|_| UNSTORED.to_vec()))
                    }),
                    None => more = false,
                },
                Some((id, answer)) = waiting.next(), if !waiting.is_empty() => {
                    if write_frame(&mut writer, id, &answer).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = writer.close().await;
    });
    loop {
        let (id, frame) = match read_frame(&mut reader, MAX_DIRECT_MESSAGE_BYTES).await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "lane read failed");
                break;
            }
        };
        let too_large = matches!(frame, DirectRequest::TooLarge(_));
        let (answer, rx) = oneshot::channel();
        // Backpressure: with MAX_UNANSWERED frames waiting for answers, this waits.
        if pending_tx.send((id, rx)).await.is_err() {
            break;
        }
        let event = LaneEvent::Request {
            peer,
            frame,
            answer,
        };
        if events.send(event).await.is_err() || too_large {
            break;
        }
    }
    drop(pending_tx);
    let _ = write_task.await;
}
