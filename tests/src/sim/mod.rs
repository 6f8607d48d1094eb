//! A deterministic simulator of N coordinators (FoundationDB / TigerBeetle style): the real
//! protocol cores ([`coordinator_svc::protocol::Core`]), in-memory signers running the real nonce
//! discipline ([`shared::discipline::MemorySigner`]), an in-memory network and a virtual clock,
//! all driven from one seed. The same seed gives the same run: the event log's hash is part of the
//! [`Report`], and a failing seed comes with the command that replays it.
//!
//! Faults ([`Faults`]): message loss, delay and reordering, duplication, partitions that heal,
//! coordinator crashes with a restart from what the store held, signer restarts (nonces lost),
//! clock skew, and a byzantine party (wrong partial signatures, replays, forged and garbage
//! frames). Invariants ([`check`]) are checked as the run goes and at its end.

mod check;
mod world;

pub use check::Violation;
use coordinator_svc::protocol::PlantedBugs;
use shared::musig::SignatureFormat;

/// What can go wrong in a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Messages of one link may overtake each other.
    pub reorder: bool,
    /// Largest network latency, ms (the smallest is 1 ms).
    pub max_latency_ms: i64,
    /// Partitions that split the parties in two and heal.
    pub partitions: bool,
    /// Coordinators crash and restart from their stores.
    pub crashes: bool,
    /// Signers restart and lose their nonces.
    pub signer_restarts: bool,
    /// Largest clock offset of a node, ms (either way).
    pub clock_skew_ms: i64,
    /// Share of sessions with a byzantine member (0..=1).
    pub byzantine: f64,
    /// Probability that the responsible party's application confirms the broadcast.
    pub confirm: f64,
}

impl Faults {
    /// No faults at all: every session must complete on every party.
    pub const NONE: Faults = Faults {
        drop: 0.0,
        duplicate: 0.0,
        reorder: false,
        max_latency_ms: 20,
        partitions: false,
        crashes: false,
        signer_restarts: false,
        clock_skew_ms: 0,
        byzantine: 0.0,
        confirm: 1.0,
    };

    /// Everything at once, in moderation.
    pub const ALL: Faults = Faults {
        drop: 0.02,
        duplicate: 0.05,
        reorder: true,
        max_latency_ms: 200,
        partitions: true,
        crashes: true,
        signer_restarts: true,
        clock_skew_ms: 30_000,
        byzantine: 0.3,
        confirm: 0.7,
    };

    /// The faults whose consequences the coordinator already handles without penalising an
    /// honest peer (loss, delay, reordering, skew, byzantine members, unconfirmed broadcasts).
    pub const NETWORK: Faults = Faults {
        drop: 0.02,
        duplicate: 0.0,
        reorder: true,
        max_latency_ms: 200,
        partitions: false,
        crashes: false,
        signer_restarts: false,
        clock_skew_ms: 30_000,
        byzantine: 0.3,
        confirm: 0.7,
    };

    /// A short name for the command line.
    pub fn name(&self) -> &'static str {
        if *self == Faults::NONE {
            "none"
        } else if *self == Faults::ALL {
            "all"
        } else if *self == Faults::NETWORK {
            "network"
        } else {
            "custom"
        }
    }

    /// By name.
    pub fn by_name(name: &str) -> Option<Faults> {
        Some(match name {
            "none" => Faults::NONE,
            "all" => Faults::ALL,
            "network" => Faults::NETWORK,
            _ => return None,
        })
    }
}

/// One run.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed everything derives from.
    pub seed: u64,
    /// Parties (each a coordinator with its signer holding one key).
    pub parties: usize,
    /// Signature format.
    pub format: SignatureFormat,
    /// Sessions created.
    pub sessions: usize,
    /// Mean time between two sessions, ms.
    pub session_every_ms: i64,
    /// Faults.
    pub faults: Faults,
    /// Bugs planted in every honest core.
    pub planted: PlantedBugs,
    /// Lifetime of the attestations, ms.
    pub attestation_ttl_ms: i64,
    /// Mean time between coordinator restarts when crashes are on, ms.
    pub restart_every_ms: i64,
    /// Print the event log to stderr as it is written.
    pub trace: bool,
    /// Messages of the batch sessions: the second of every three sessions signs this many
    /// (issue 17); 1 makes every session a single-message one.
    pub batch: usize,
}

impl Config {
    /// A short run: `sessions` sessions a few seconds apart.
    pub fn new(seed: u64, parties: usize, format: SignatureFormat, faults: Faults) -> Self {
        Config {
            seed,
            parties,
            format,
            sessions: 3,
            session_every_ms: 2_000,
            faults,
            planted: PlantedBugs::default(),
            attestation_ttl_ms: 7 * 24 * 3600 * 1000,
            restart_every_ms: 20_000,
            trace: false,
            batch: 3,
        }
    }

    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run --release -p e2e-tests --bin musig2-sim -- --seed {} --parties {} --format {} --sessions {} --every-ms {} --restart-every-ms {} --attestation-ttl-ms {} --batch {} --faults {}{}",
            self.seed,
            self.parties,
            match self.format {
                SignatureFormat::Bip340 => "bip340",
                SignatureFormat::Lotus => "lotus",
            },
            self.sessions,
            self.session_every_ms,
            self.restart_every_ms,
            self.attestation_ttl_ms,
            self.batch,
            self.faults.name(),
            if self.planted == PlantedBugs::default() {
                ""
            } else {
                " (with planted bugs)"
            }
        )
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Events processed.
    pub events: u64,
    /// SHA-256 of the event log.
    pub log_hash: [u8; 32],
    /// Virtual time at the end, ms since the start.
    pub virtual_ms: i64,
    /// Sessions created.
    pub created: usize,
    /// Sessions complete on every honest member.
    pub completed: usize,
    /// Sessions aborted somewhere.
    pub aborted: usize,
    /// Invariant violations (empty = the run passed).
    pub violations: Vec<Violation>,
    /// Honest peers banned by honest peers (a violation the next issue's fixes must remove; kept
    /// apart so that runs with restarts and duplication can report it without failing).
    pub honest_bans: Vec<String>,
    /// Messages delivered, lost, duplicated.
    pub messages: (u64, u64, u64),
    /// Crashes and signer restarts.
    pub crashes: (u64, u64),
    /// Finished sessions read back from a store (they had left memory while their broadcast
    /// clocks ran).
    pub loads: u64,
}

impl Report {
    /// Whether every invariant held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Run one simulation.
pub fn run(cfg: &Config) -> Report {
    world::World::new(cfg).run()
}
