//! The libp2p stack: TCP + Noise + Yamux, Identify, Ping, Kademlia (application-validated
//! records), GossipSub (signed, strict, application validation) and long-lived streams for
//! direct session messages ([`crate::p2p::lanes`]), behind connection, memory and block-list limits.
// `#[derive(NetworkBehaviour)]` generates an undocumented event enum without Debug.
#![allow(missing_docs, missing_debug_implementations)]

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, allow_block_list, connection_limits, gossipsub, identify, identity, kad,
    memory_connection_limits, noise, ping, tcp, yamux,
};
use shared::wire::{MAX_DIRECT_MESSAGE_BYTES, MAX_GOSSIP_MESSAGE_BYTES};

/// Identify protocol version.
pub const IDENTIFY_PROTOCOL: &str = "/musig2/1.0.0";
/// Longest answer to a direct message.
pub const MAX_RESPONSE_BYTES: usize = 1024;

/// A frame from a peer's lane ([`crate::p2p::lanes`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectRequest {
    /// A frame within the limit.
    Frame(Vec<u8>),
    /// A peer announced a frame over the limit: it is not read, only reported (so that it can
    /// be counted against the peer) and answered with a refusal.
    TooLarge(usize),
}

/// Every behaviour of the node.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Total / per-peer / pending connection caps.
    pub limits: connection_limits::Behaviour,
    /// Refuse new connections past a process memory ceiling.
    pub memory: memory_connection_limits::Behaviour,
    /// Banned peers (their connections are closed and refused).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Identify (addresses for Kademlia).
    pub identify: identify::Behaviour,
    /// Liveness.
    pub ping: ping::Behaviour,
    /// Kademlia DHT (disabled with `enable_dht = false`).
    pub kad: Toggle<kad::Behaviour<kad::store::MemoryStore>>,
    /// GossipSub.
    pub gossipsub: gossipsub::Behaviour,
    /// Direct session messages: long-lived streams ([`crate::p2p::lanes`]).
    pub lanes: libp2p_stream::Behaviour,
}

/// Network settings.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Kademlia on.
    pub enable_dht: bool,
    /// Kademlia server mode (answer queries, store records).
    pub dht_server: bool,
    /// Kademlia protocol name.
    pub dht_protocol: String,
    /// Most established connections.
    pub max_connections: u32,
    /// Most connections per peer.
    pub max_connections_per_peer: u32,
    /// Most pending inbound connections.
    pub max_pending_incoming: u32,
    /// Process memory ceiling for accepting connections, bytes.
    pub max_memory_bytes: usize,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enable_dht: true,
            dht_server: true,
            dht_protocol: "/lotus/kad/1.0.0".into(),
            max_connections: 256,
            max_connections_per_peer: 2,
            max_pending_incoming: 64,
            max_memory_bytes: 2 << 30,
        }
    }
}

/// Build the swarm.
///
/// # Errors
/// Invalid protocol names or transport setup failures.
pub fn build(keypair: identity::Keypair, cfg: &NetConfig) -> anyhow::Result<Swarm<Behaviour>> {
    let dht_protocol = StreamProtocol::try_from_owned(cfg.dht_protocol.clone())
        .map_err(|e| anyhow::anyhow!("dht_protocol {:?}: {e}", cfg.dht_protocol))?;
    let cfg = cfg.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_dns()?
        .with_behaviour(move |key| {
            let peer_id = key.public().to_peer_id();
            let kad = cfg.enable_dht.then(|| {
                let mut kc = kad::Config::new(dht_protocol.clone());
                kc.set_record_filtering(kad::StoreInserts::FilterBoth);
                kc.set_query_timeout(Duration::from_secs(10));
                kc.set_max_packet_size(2 * MAX_DIRECT_MESSAGE_BYTES);
                let store = kad::store::MemoryStore::with_config(
                    peer_id,
                    kad::store::MemoryStoreConfig {
                        max_records: 10_000,
                        max_value_bytes: MAX_DIRECT_MESSAGE_BYTES,
                        ..Default::default()
                    },
                );
                let mut k = kad::Behaviour::with_config(peer_id, store, kc);
                k.set_mode(Some(if cfg.dht_server {
                    kad::Mode::Server
                } else {
                    kad::Mode::Client
                }));
                k
            });
            let gossip_cfg = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .max_transmit_size(MAX_GOSSIP_MESSAGE_BYTES)
                .heartbeat_interval(Duration::from_secs(1))
                .build()
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            let mut gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_cfg,
            )
            .map_err(std::io::Error::other)?;
            gossipsub
                .with_peer_score(peer_score_params(), peer_score_thresholds())
                .map_err(std::io::Error::other)?;
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(
                    connection_limits::ConnectionLimits::default()
                        .with_max_established(Some(cfg.max_connections))
                        .with_max_established_per_peer(Some(cfg.max_connections_per_peer))
                        .with_max_pending_incoming(Some(cfg.max_pending_incoming)),
                ),
                memory: memory_connection_limits::Behaviour::with_max_bytes(cfg.max_memory_bytes),
                blocked: allow_block_list::Behaviour::default(),
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                kad: Toggle::from(kad),
                gossipsub,
                lanes: libp2p_stream::Behaviour::new(),
            })
        })?
        // Protocol negotiation is plain multistream-select V1 (one round trip per stream):
        // direct messages travel on long-lived lanes, so no message waits for it, and the
        // lazy variant panics in multistream-select when a peer refuses a protocol after
        // bytes were written optimistically (found by the lanes' attack test).
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}

/// GossipSub peer scoring tuned for this protocol. Only signer advertisements travel on
/// GossipSub; they are rare (one per key per minute) and every message is validated by the
/// application, so the score is driven by invalid messages. GossipSub squares that counter
/// (weight −0.5 × count², decaying by 10 % per interval): a peer falls below the gossip
/// threshold (−10) after 5 rejected messages, below the publish threshold (−50) after 10 and
/// below the graylist threshold (−80) after 13 — by then the application has counted 10
/// violations and banned it at the connection level, which is the stronger, persisted
/// measure. Mesh-delivery rates are not scored (traffic is too sparse for them
/// to mean anything); time in mesh gives a small bonus. The application's own reputation (bans)
/// is separate and stronger: see `shared::security`.
pub fn peer_score_params() -> gossipsub::PeerScoreParams {
    let mut params = gossipsub::PeerScoreParams::default();
    let topic = gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: Duration::from_secs(1),
        time_in_mesh_cap: 10.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -0.5,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    };
    for t in super::names::all_topics() {
        params
            .topics
            .insert(gossipsub::IdentTopic::new(t).hash(), topic.clone());
    }
    // No IP co-location penalty: parties behind one NAT or Kubernetes node are normal here,
    // and Sybil resistance comes from attestations (a key needs a signer) and the ban list.
    params.ip_colocation_factor_weight = 0.0;
    params
}

/// Thresholds matching [`peer_score_params`].
pub fn peer_score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds {
        gossip_threshold: -10.0,
        publish_threshold: -50.0,
        graylist_threshold: -80.0,
        accept_px_threshold: 10.0,
        opportunistic_graft_threshold: 5.0,
    }
}
