//! `WatchEvents`: numbered events from the node's log, resumable with a cursor. The stream is
//! handed back at once; replays and the backlog are sent from inside it, so a node with many
//! completed sessions answers as fast as one with none.

use std::sync::Arc;

use musig2_proto::v1::{self as pb, watch_events_response::Event as Ev};
use shared::election::SessionId;
use tokio::sync::{broadcast, mpsc};

use super::EventStream;
use super::convert::{event_pb, event_session};
use crate::node::NodeHandle;
use crate::node::events::{Logged, Subscription};

/// Events queued per stream before the task waits for the client.
const STREAM_BUFFER: usize = 256;

fn lagged(dropped: Option<u64>, resume_after: u64) -> pb::WatchEventsResponse {
    pb::WatchEventsResponse {
        timestamp_ms: super::now_ms(),
        sequence: 0,
        event: Some(Ev::EventLagged(pb::EventLagged {
            dropped,
            resume_after_sequence: resume_after,
        })),
    }
}

/// The stream of one subscriber.
pub(super) fn stream(
    node: NodeHandle,
    filter: Option<SessionId>,
    replay_completed: bool,
    after: Option<u64>,
) -> EventStream {
    // Subscribed before the call returns: nothing that happens after it is missed.
    let sub = node.subscribe(after);
    let (tx, out) = mpsc::channel(STREAM_BUFFER);
    let filter = filter.map(|id| id.to_string());
    tokio::spawn(async move {
        let mut w = Writer {
            tx,
            filter,
            last: after.unwrap_or(0),
            rx: None,
        };
        if replay_completed && w.replay(&node).await.is_err() {
            return;
        }
        let mut sub = sub;
        loop {
            if w.start(sub).await.is_err() {
                return;
            }
            let Some(resumed) = w.live(&node).await else {
                return;
            };
            sub = resumed;
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
}

struct Writer {
    tx: mpsc::Sender<Result<pb::WatchEventsResponse, tonic::Status>>,
    filter: Option<String>,
    /// The last sequence number sent (or skipped by the filter).
    last: u64,
    rx: Option<broadcast::Receiver<Arc<Logged>>>,
}

/// The client went away.
struct Gone;

impl Writer {
    async fn send(&self, ev: pb::WatchEventsResponse) -> Result<(), Gone> {
        self.tx.send(Ok(ev)).await.map_err(|_| Gone)
    }

    async fn replay(&mut self, node: &NodeHandle) -> Result<(), Gone> {
        let Ok(views) = node.sessions().await else {
            return Ok(());
        };
        for v in views {
            let Some(sigs) = v.signatures.as_deref() else {
                continue;
            };
            if self.filter.as_ref().is_some_and(|f| *f != v.id.to_string()) {
                continue;
            }
            self.send(pb::WatchEventsResponse {
                timestamp_ms: v.created_at_ms,
                sequence: 0,
                event: Some(Ev::SessionComplete(pb::SessionComplete {
                    session_id: v.id.to_string(),
                    signature: super::convert::single_signature(sigs).unwrap_or_default(),
                    output_key: v.output_key.to_vec(),
                    signatures: super::convert::signatures_pb(sigs),
                })),
            })
            .await?;
        }
        Ok(())
    }

    async fn logged(&mut self, e: &Arc<Logged>) -> Result<(), Gone> {
        if e.sequence <= self.last {
            return Ok(());
        }
        self.last = e.sequence;
        let Some(ev) = event_pb(&e.event) else {
            return Ok(());
        };
        if let Some(f) = &self.filter
            && event_session(&ev) != Some(f.as_str())
        {
            return Ok(());
        }
        self.send(pb::WatchEventsResponse {
            timestamp_ms: e.at_ms,
            sequence: e.sequence,
            event: Some(ev),
        })
        .await
    }

    /// Live events until the client goes away (None) or falls behind: then a subscription
    /// that resumes from the log after the last event sent.
    async fn live(&mut self, node: &NodeHandle) -> Option<Subscription> {
        let mut rx = self.rx.take()?;
        loop {
            match rx.recv().await {
                Ok(e) => self.logged(&e).await.ok()?,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Some(node.subscribe(Some(self.last)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// What was lost, then the backlog; the live receiver is kept for [`Writer::live`].
    async fn start(&mut self, sub: Subscription) -> Result<(), Gone> {
        let Subscription {
            backlog,
            lost,
            live,
        } = sub;
        self.rx = Some(live);
        if let Some(dropped) = lost {
            self.send(lagged(dropped, self.last)).await?;
        }
        for e in &backlog {
            self.logged(e).await?;
        }
        Ok(())
    }
}
