//! The node's settings: network, timers and limits (the reference's names and defaults).

use std::time::Duration;

use libp2p::Multiaddr;
use shared::election::ElectionMethod;
use shared::wire;

use crate::net::NetConfig;
use crate::protocol::{Settings, ms};

/// Node settings (the reference's names and defaults).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Peers dialled at start (with `/p2p/<id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses announced to other parties (behind a load balancer or NAT).
    pub external: Vec<Multiaddr>,
    /// libp2p limits and Kademlia settings.
    pub net: NetConfig,
    /// sessionTimeout (2 h).
    pub session_timeout: Duration,
    /// stuckSessionTimeout (10 min).
    pub stuck_timeout: Duration,
    /// cleanupInterval (60 s).
    pub cleanup_interval: Duration,
    /// maxSequenceGap (100).
    pub max_sequence_gap: u64,
    /// enableReplayProtection (true).
    pub enable_replay_protection: bool,
    /// electionMethod (lexicographic).
    pub election_method: ElectionMethod,
    /// Lifetime of the attestations obtained from the signer (7 days).
    pub attestation_ttl: Duration,
    /// They are renewed this long before they expire (1 day).
    pub attestation_renew_before: Duration,
    /// Finished sessions and their final signatures stay in the store this long (90 days).
    pub retention: Duration,
    /// Finished sessions stay in memory this long (1 hour).
    pub finished_in_memory: Duration,
    /// enableCoordinatorElection (true here; the reference defaults to false).
    pub enable_election: bool,
    /// enableCoordinatorFailover (true).
    pub enable_failover: bool,
    /// broadcastTimeout (5 min).
    pub broadcast_timeout: Duration,
    /// Most unfinished sessions at once; past it creation answers RESOURCE_EXHAUSTED.
    pub max_active_sessions: usize,
    /// enableSessionDiscovery: `join` looks unknown sessions up in the DHT.
    pub enable_session_discovery: bool,
    /// sessionResourceType (`musig2-session`).
    pub session_resource_type: String,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            external: Vec::new(),
            net: NetConfig::default(),
            session_timeout: Duration::from_secs(2 * 3600),
            stuck_timeout: Duration::from_secs(600),
            cleanup_interval: Duration::from_secs(60),
            max_sequence_gap: wire::DEFAULT_MAX_SEQUENCE_GAP,
            enable_replay_protection: true,
            election_method: ElectionMethod::Lexicographic,
            attestation_ttl: Duration::from_secs(7 * 24 * 3600),
            attestation_renew_before: Duration::from_secs(24 * 3600),
            retention: Duration::from_secs(90 * 24 * 3600),
            finished_in_memory: Duration::from_secs(3600),
            enable_election: true,
            enable_failover: true,
            broadcast_timeout: Duration::from_secs(300),
            max_active_sessions: 1000,
            enable_session_discovery: true,
            session_resource_type: crate::protocol::SESSION_RESOURCE_TYPE.into(),
        }
    }
}

impl NodeConfig {
    /// The protocol core's settings.
    pub fn settings(&self) -> Settings {
        Settings {
            session_timeout_ms: ms(self.session_timeout),
            stuck_timeout_ms: ms(self.stuck_timeout),
            max_sequence_gap: self.max_sequence_gap,
            enable_replay_protection: self.enable_replay_protection,
            election_method: self.election_method,
            enable_election: self.enable_election,
            enable_failover: self.enable_failover,
            broadcast_timeout_ms: ms(self.broadcast_timeout),
            max_active_sessions: self.max_active_sessions,
            enable_session_discovery: self.enable_session_discovery,
            dht: self.net.enable_dht,
            session_resource_type: self.session_resource_type.clone(),
            attestation_ttl_ms: ms(self.attestation_ttl),
            attestation_renew_before_ms: ms(self.attestation_renew_before),
            retention_ms: ms(self.retention),
            finished_in_memory_ms: ms(self.finished_in_memory),
            finished_in_memory_values: crate::protocol::MAX_FINISHED_VALUES,
        }
    }
}
