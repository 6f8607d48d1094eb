//! The invariants, checked on every event and at the end of a run:
//!
//! 1. Every honest node that reports COMPLETE holds the same signature, and it verifies under the
//!    session's output key.
//! 2. No signer produces two partial signatures from one nonce.
//! 3. No honest peer is banned by an honest peer (reported apart: see [`super::Report`]).
//! 4. Every abort names a reason; an abort for an invalid contribution names its culprits (or,
//!    when another member's abort ended it first, reports that member's blame as a claim), and
//!    the culprits are byzantine.
//! 5. At the end, every session an honest live node has heard of has ended there (complete or
//!    aborted), and one it has not seen end is still known to it: nothing unfinished is
//!    forgotten (finished ones may be pruned by retention) and nothing is stuck.
//! 6. With no faults, every session completes on every member.
//! 7. At the end, no broadcast clock runs on an honest live node for a session complete there:
//!    each was confirmed or ran out, whether the session stayed in memory or left it.

use std::collections::{BTreeMap, BTreeSet};

use coordinator_svc::protocol::{Core, NodeEvent};
use libp2p::PeerId;
use shared::discipline::MemorySigner;
use shared::election::SessionId;
use shared::musig::{Signature, SignatureFormat, verify};
use shared::wire::AbortCode;

/// A broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Virtual time since the start, ms.
    pub at_ms: i64,
    /// What broke.
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {} ms: {}", self.at_ms, self.what)
    }
}

#[derive(Debug, Default)]
struct Track {
    members: Vec<usize>,
    output_key: Option<[u8; 33]>,
    messages: Vec<Vec<u8>>,
    format: Option<SignatureFormat>,
    signatures: Option<Vec<Signature>>,
    known: BTreeSet<usize>,
    complete: BTreeSet<usize>,
    aborted: BTreeSet<usize>,
}

pub(super) struct Checker {
    byzantine_keys: BTreeSet<[u8; 33]>,
    honest_peers: BTreeSet<PeerId>,
    sessions: BTreeMap<SessionId, Track>,
    pub(super) violations: Vec<Violation>,
    pub(super) honest_bans: Vec<String>,
}

impl Checker {
    pub(super) fn new(byzantine_keys: BTreeSet<[u8; 33]>, honest_peers: BTreeSet<PeerId>) -> Self {
        Checker {
            byzantine_keys,
            honest_peers,
            sessions: BTreeMap::new(),
            violations: Vec::new(),
            honest_bans: Vec::new(),
        }
    }

    fn fail(&mut self, at_ms: i64, what: String) {
        if self.violations.len() < 100 {
            self.violations.push(Violation { at_ms, what });
        }
    }

    pub(super) fn created(&mut self, id: SessionId, members: Vec<usize>) {
        self.sessions.entry(id).or_default().members = members;
    }

    /// An event of node `node`; `banned` = the node index a ban event names.
    pub(super) fn observe(
        &mut self,
        at: i64,
        node: usize,
        honest: bool,
        e: &NodeEvent,
        banned: Option<usize>,
    ) {
        match e {
            NodeEvent::SessionCreated(view) => {
                let t = self.sessions.entry(view.id).or_default();
                t.known.insert(node);
                t.output_key = Some(view.output_key);
                t.messages = view.context.messages().map(<[u8]>::to_vec).collect();
                t.format = Some(view.context.format);
            }
            NodeEvent::Complete { id, signatures, .. } if honest => {
                let t = self.sessions.entry(*id).or_default();
                t.complete.insert(node);
                let verdict = match (t.format, t.output_key) {
                    (Some(f), Some(k)) => {
                        signatures.len() == t.messages.len()
                            && t.messages
                                .iter()
                                .zip(signatures)
                                .all(|(m, s)| verify(f, &k, m, s).is_ok())
                    }
                    _ => false,
                };
                let previous = t
                    .signatures
                    .get_or_insert_with(|| signatures.clone())
                    .clone();
                if !verdict {
                    self.fail(at, format!("node {node}: session {id} completed with a signature that does not verify"));
                }
                if previous != *signatures {
                    self.fail(at, format!("node {node}: session {id} completed with a different signature than another node"));
                }
            }
            NodeEvent::Aborted { id, info } if honest => {
                self.sessions.entry(*id).or_default().aborted.insert(node);
                if info.reason.trim().is_empty() {
                    self.fail(
                        at,
                        format!("node {node}: session {id} aborted without a reason"),
                    );
                }
                let blame = matches!(
                    info.code,
                    AbortCode::InvalidPartialSignature | AbortCode::InvalidNonce
                );
                if blame && info.culprits.is_empty() && !info.is_claim() {
                    self.fail(at, format!("node {node}: session {id} aborted for an invalid contribution without naming a culprit: {}", info.reason));
                }
                if let Some(c) = info
                    .culprits
                    .iter()
                    .find(|c| !self.byzantine_keys.contains(*c))
                {
                    self.fail(
                        at,
                        format!(
                            "node {node}: session {id} blames honest signer {}: {}",
                            hex::encode(c),
                            info.reason
                        ),
                    );
                }
            }
            NodeEvent::PeerBlacklisted { peer, reason }
            | NodeEvent::PeerGraylisted { peer, reason, .. }
                if honest && self.honest_peers.contains(peer) =>
            {
                self.honest_bans.push(format!(
                    "at {at} ms node {node} banned honest node {} ({reason})",
                    banned.map_or_else(|| peer.to_string(), |b| b.to_string())
                ));
            }
            _ => {}
        }
    }

    /// After every signing: at most one partial signature per nonce.
    pub(super) fn signer(&mut self, at: i64, node: usize, signer: &MemorySigner) {
        let n = signer.max_signatures_per_nonce();
        if n > 1 {
            self.fail(
                at,
                format!("signer of node {node} produced {n} partial signatures from one nonce"),
            );
        }
    }

    /// The end of the run.
    pub(super) fn finish(
        &mut self,
        at: i64,
        cores: &[Option<&Core>],
        signers: &[&MemorySigner],
        byzantine: &[bool],
        no_faults: bool,
    ) {
        for (i, s) in signers.iter().enumerate() {
            self.signer(at, i, s);
        }
        let ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        for id in ids {
            let (known, members, complete, aborted) = {
                let t = &self.sessions[&id];
                (
                    t.known.clone(),
                    t.members.clone(),
                    t.complete.clone(),
                    t.aborted.clone(),
                )
            };
            for &node in &known {
                if byzantine.get(node).copied().unwrap_or(true) {
                    continue;
                }
                let Some(core) = cores.get(node).copied().flatten() else {
                    continue;
                };
                let ended = complete.contains(&node) || aborted.contains(&node);
                match core.session(id) {
                    None if ended => {}
                    None => self.fail(at, format!("node {node} forgot unfinished session {id}")),
                    Some(v) if !v.phase.is_terminal() => self.fail(
                        at,
                        format!(
                            "node {node}: session {id} still in {} at the end",
                            v.phase.as_str()
                        ),
                    ),
                    Some(_) => {}
                }
                if complete.contains(&node) && core.clock_running(id) {
                    self.fail(
                        at,
                        format!("node {node}: the broadcast clock of session {id} still runs"),
                    );
                }
            }
            if no_faults {
                for &m in &members {
                    if !complete.contains(&m) {
                        self.fail(
                            at,
                            format!("no faults, yet session {id} did not complete on node {m}"),
                        );
                    }
                }
            }
        }
    }

    /// Sessions created, complete on every honest member, aborted somewhere.
    pub(super) fn stats(&self) -> (usize, usize, usize) {
        let created = self
            .sessions
            .values()
            .filter(|t| !t.members.is_empty())
            .count();
        let completed = self
            .sessions
            .values()
            .filter(|t| !t.members.is_empty() && t.aborted.is_empty() && !t.complete.is_empty())
            .count();
        let aborted = self
            .sessions
            .values()
            .filter(|t| !t.aborted.is_empty())
            .count();
        (created, completed, aborted)
    }
}
