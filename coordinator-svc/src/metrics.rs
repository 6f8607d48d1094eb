//! Prometheus metrics of the coordinator, fed from node events (no key or session material in
//! labels): sessions by phase, round latencies, rejected messages by reason, accepted
//! messages, signer call latency, failovers, failed attestation renewals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use shared::election::SessionId;

use crate::node::{NodeEvent, NodeHandle};
use crate::session::Phase;

pub use crate::labels::{NameLabel, PhaseLabel, ReasonLabel};

/// The metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    sessions: Family<PhaseLabel, Gauge>,
    rejected: Family<ReasonLabel, Counter>,
    accepted: Gauge,
    /// Store transactions committed, and session records written by them.
    store: Family<NameLabel, Gauge>,
    rounds: Family<NameLabel, Histogram>,
    /// Signer call latency by call (observed by the signer client).
    pub signer_calls: Family<NameLabel, Histogram>,
    failovers: Counter,
    attestation_failures: Counter,
    /// The node's session tables at the last cleanup.
    tables: Family<NameLabel, Gauge>,
    /// Direct frames' envelope signatures by how they were checked.
    signature_checks: Family<NameLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Register everything.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("musig2_coordinator");
        let sessions = Family::<PhaseLabel, Gauge>::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let accepted = Gauge::default();
        let store = Family::<NameLabel, Gauge>::default();
        let buckets = || {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ])
        };
        let rounds = Family::<NameLabel, Histogram>::new_with_constructor(buckets);
        let signer_calls = Family::<NameLabel, Histogram>::new_with_constructor(buckets);
        let failovers = Counter::default();
        let tables = Family::<NameLabel, Gauge>::default();
        registry.register(
            "memory_tables",
            "Entries of the node's session tables at the last cleanup: sessions (in memory), clocks_out_of_memory (finished sessions whose broadcast clock runs, read back from the store when it fires), departed (finished sessions remembered until their announcement expires)",
            tables.clone(),
        );
        let signature_checks = Family::<NameLabel, Gauge>::default();
        registry.register(
            "envelope_signature_checks",
            "Direct frames' envelope signatures by how they were checked: batched (proven in one batch), one_by_one (proven alone, or after a batch failed), full_check (left to the core's full check: bad, or unreadable to the batch)",
            signature_checks.clone(),
        );
        let attestation_failures = Counter::default();
        registry.register("sessions", "Sessions in memory by phase", sessions.clone());
        registry.register(
            "messages_rejected",
            "Peer messages refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "messages_accepted",
            "Peer messages accepted",
            accepted.clone(),
        );
        registry.register(
            "store_writes",
            "Store writes: transactions committed (name=commits) and session records written (name=records); group commit puts several records in one transaction",
            store.clone(),
        );
        registry.register(
            "round_duration_seconds",
            "Round durations (nonce, partial_signature, total)",
            rounds.clone(),
        );
        registry.register(
            "signer_call_duration_seconds",
            "Signer call latency by call",
            signer_calls.clone(),
        );
        registry.register(
            "attestation_renewal_failures",
            "Failed renewals of this node's attestations (retried; alert well before they expire)",
            attestation_failures.clone(),
        );
        registry.register(
            "failovers",
            "Coordinator failovers (broadcast not confirmed in time)",
            failovers.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            sessions,
            rejected,
            accepted,
            store,
            rounds,
            signer_calls,
            failovers,
            attestation_failures,
            tables,
            signature_checks,
        }
    }

    /// Set the memory-table gauges ([`NodeHandle::memory_tables`]).
    pub fn note_tables(&self, node: &NodeHandle) {
        for (name, v) in node.memory_tables() {
            self.tables
                .get_or_create(&NameLabel { name: name.into() })
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }

    /// Follow a node's events until it stops.
    pub fn follow(self: &Arc<Self>, node: &NodeHandle) {
        let me = self.clone();
        let mut rx = node.events();
        let node = node.clone();
        tokio::spawn(async move {
            let mut started: HashMap<SessionId, (Instant, Option<Instant>)> = HashMap::new();
            loop {
                let ev = match rx.recv().await {
                    Ok(e) => e,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => break,
                };
                me.accepted
                    .set(i64::try_from(node.accepted_messages()).unwrap_or(i64::MAX));
                for (name, v) in node.signature_checks() {
                    me.signature_checks
                        .get_or_create(&NameLabel { name: name.into() })
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                let (commits, records) = node.store_writes();
                for (name, v) in [("commits", commits), ("records", records)] {
                    me.store
                        .get_or_create(&NameLabel { name: name.into() })
                        .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
                match ev {
                    NodeEvent::SessionCreated(v) => {
                        me.sessions
                            .get_or_create(&PhaseLabel {
                                phase: v.phase.as_str().into(),
                            })
                            .inc();
                    }
                    NodeEvent::PhaseChanged { id, from, to } => {
                        me.sessions
                            .get_or_create(&PhaseLabel {
                                phase: from.as_str().into(),
                            })
                            .dec();
                        me.sessions
                            .get_or_create(&PhaseLabel {
                                phase: to.as_str().into(),
                            })
                            .inc();
                        let now = Instant::now();
                        match to {
                            Phase::NonceExchange => {
                                started.insert(id, (now, None));
                            }
                            Phase::PartialSigExchange => {
                                if let Some((t0, t1)) = started.get_mut(&id) {
                                    me.rounds
                                        .get_or_create(&NameLabel {
                                            name: "nonce".into(),
                                        })
                                        .observe((now - *t0).as_secs_f64());
                                    *t1 = Some(now);
                                }
                            }
                            Phase::Complete => {
                                if let Some((t0, Some(t1))) = started.remove(&id) {
                                    me.rounds
                                        .get_or_create(&NameLabel {
                                            name: "partial_signature".into(),
                                        })
                                        .observe((now - t1).as_secs_f64());
                                    me.rounds
                                        .get_or_create(&NameLabel {
                                            name: "total".into(),
                                        })
                                        .observe((now - t0).as_secs_f64());
                                }
                            }
                            _ if to.is_terminal() => {
                                started.remove(&id);
                            }
                            _ => {}
                        }
                    }
                    NodeEvent::Rejected { reason, .. } => {
                        me.rejected
                            .get_or_create(&ReasonLabel {
                                reason: reason.into(),
                            })
                            .inc();
                    }
                    NodeEvent::CoordinatorFailed { .. } => {
                        me.failovers.inc();
                    }
                    NodeEvent::AttestationRenewalFailed { .. } => {
                        me.attestation_failures.inc();
                    }
                    _ => {}
                }
            }
        });
    }

    /// OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let r = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        out
    }
}
