//! Coordinator configuration: TOML with `MUSIG2_COORDINATOR__SECTION__KEY` environment
//! overrides, the reference's settings and defaults (snake_case names, times in ms as in the
//! reference: `enableDHT` → `enable_dht`, `sessionTimeout` → `session_timeout_ms`, …), strict
//! parsing, every error collected and named by key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Environment override prefix.
pub const ENV_PREFIX: &str = "MUSIG2_COORDINATOR__";

fn t() -> bool {
    true
}
fn default_listen() -> Vec<String> {
    vec!["/ip4/0.0.0.0/tcp/4001".into()]
}
fn default_dht_protocol() -> String {
    "/lotus/kad/1.0.0".into()
}
fn default_session_timeout() -> u64 {
    2 * 3600 * 1000
}
fn default_election() -> String {
    "lexicographic".into()
}
fn default_broadcast_timeout() -> u64 {
    5 * 60 * 1000
}
fn default_gap() -> u64 {
    100
}
fn default_cleanup() -> u64 {
    60_000
}
fn default_stuck() -> u64 {
    10 * 60 * 1000
}
fn default_resource_type() -> String {
    crate::protocol::SESSION_RESOURCE_TYPE.into()
}
fn default_in_memory() -> u64 {
    3600 * 1000
}
fn default_store_cache_mib() -> u64 {
    64
}
fn default_retention() -> u64 {
    90 * 24 * 3600 * 1000
}
fn default_attestation_ttl() -> u64 {
    7 * 24 * 3600 * 1000
}
fn default_attestation_renew_before() -> u64 {
    24 * 3600 * 1000
}

/// The whole configuration (see `coordinator-svc/coordinator.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// libp2p listen multiaddresses.
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Peers dialled at start (`…/p2p/<peer id>`).
    #[serde(default)]
    pub bootstrap_peers: Vec<String>,
    /// Addresses other parties reach this node at (e.g. a LoadBalancer's address and port in
    /// front of the pod), announced through Identify and the DHT instead of the pod's own
    /// listen address.
    #[serde(default)]
    pub external_addresses: Vec<String>,
    /// enableDHT.
    #[serde(default = "t")]
    pub enable_dht: bool,
    /// enableDHTServer.
    #[serde(default = "t")]
    pub enable_dht_server: bool,
    /// dhtProtocol.
    #[serde(default = "default_dht_protocol")]
    pub dht_protocol: String,
    /// sessionTimeout, ms.
    #[serde(default = "default_session_timeout")]
    pub session_timeout_ms: u64,
    /// enableSessionDiscovery (join looks the session up in the DHT).
    #[serde(default = "t")]
    pub enable_session_discovery: bool,
    /// sessionResourceType: DHT keys of session announcements are `<type>:<session id>`
    /// (default `musig2-session`; parties must agree on it).
    #[serde(default = "default_resource_type")]
    pub session_resource_type: String,
    /// electionMethod: lexicographic, hash-based, first-signer, last-signer.
    #[serde(default = "default_election")]
    pub election_method: String,
    /// enableCoordinatorElection: the elected party's application is told to broadcast after
    /// completion (default true, unlike the reference's false: the API documents should-broadcast).
    #[serde(default = "t")]
    pub enable_coordinator_election: bool,
    /// enableCoordinatorFailover.
    #[serde(default = "t")]
    pub enable_coordinator_failover: bool,
    /// broadcastTimeout, ms.
    #[serde(default = "default_broadcast_timeout")]
    pub broadcast_timeout_ms: u64,
    /// enableReplayProtection.
    #[serde(default = "t")]
    pub enable_replay_protection: bool,
    /// maxSequenceGap.
    #[serde(default = "default_gap")]
    pub max_sequence_gap: u64,
    /// enableAutoCleanup.
    #[serde(default = "t")]
    pub enable_auto_cleanup: bool,
    /// cleanupInterval, ms.
    #[serde(default = "default_cleanup")]
    pub cleanup_interval_ms: u64,
    /// stuckSessionTimeout, ms.
    #[serde(default = "default_stuck")]
    pub stuck_session_timeout_ms: u64,
    /// Finished sessions and their final signatures stay in the store this long, ms (90 days;
    /// at least 1 hour). After it they are deleted.
    #[serde(default = "default_retention")]
    pub session_retention_ms: u64,
    /// Finished sessions stay in memory this long, ms (1 hour; 1 s to 1 day); then they are
    /// read from the store. Retries with a request id are recognised while the session is in
    /// memory.
    #[serde(default = "default_in_memory")]
    pub finished_in_memory_ms: u64,
    /// Memory the store may use to cache database pages, MiB (64; redb's own default, 1 GiB,
    /// let the process grow with the database: found by the soak run).
    #[serde(default = "default_store_cache_mib")]
    pub store_cache_mib: u64,
    /// Lifetime of the attestations the signer gives this node, ms (7 days; at most 30 days,
    /// the protocol's maximum, and the signer's policy may allow less).
    #[serde(default = "default_attestation_ttl")]
    pub attestation_ttl_ms: u64,
    /// The attestations are renewed this long before they expire, ms (1 day; less than
    /// `attestation_ttl_ms`).
    #[serde(default = "default_attestation_renew_before")]
    pub attestation_renew_before_ms: u64,
    /// Directory of the store (`coordinator.redb`) and the libp2p identity (`node.key`).
    pub data_dir: PathBuf,
    /// The party's signer.
    pub signer: SignerConfig,
    /// The gRPC API for applications.
    pub api: ApiConfig,
    /// Optional Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Signer connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// `https://host:port`.
    pub url: String,
    /// Name on the signer's certificate.
    #[serde(default = "localhost")]
    pub server_name: String,
    /// CA of the signer's certificate.
    pub ca: PathBuf,
    /// Our client certificate.
    pub cert: PathBuf,
    /// Our client key.
    pub key: PathBuf,
}

fn localhost() -> String {
    "localhost".into()
}

/// gRPC API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address (TLS 1.3 with client certificates only).
    pub listen: SocketAddr,
    /// Server certificate.
    pub cert: PathBuf,
    /// Server key.
    pub key: PathBuf,
    /// CA of application client certificates.
    pub client_ca: PathBuf,
    /// Allowed applications: `sha256:<fingerprint>` or `cn:<name>`.
    pub allowed_clients: Vec<String>,
}

/// Metrics.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP `/metrics` address.
    pub listen: SocketAddr,
}

/// Limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most libp2p connections.
    #[serde(default = "max_conn")]
    pub max_connections: u32,
    /// Most connections per peer.
    #[serde(default = "per_peer")]
    pub max_connections_per_peer: u32,
    /// Most unfinished sessions.
    #[serde(default = "max_sessions")]
    pub max_active_sessions: usize,
    /// Most gRPC calls in flight per API connection.
    #[serde(default = "max_calls")]
    pub max_api_calls_per_connection: usize,
}

fn max_conn() -> u32 {
    256
}
fn per_peer() -> u32 {
    2
}
fn max_sessions() -> usize {
    1000
}
fn max_calls() -> usize {
    64
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: max_conn(),
            max_connections_per_peer: per_peer(),
            max_active_sessions: max_sessions(),
            max_api_calls_per_connection: max_calls(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// JSON lines.
    #[serde(default)]
    pub json: bool,
    /// Filter.
    #[serde(default = "info")]
    pub level: String,
}

fn info() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            json: false,
            level: info(),
        }
    }
}

/// All configuration errors.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Read, override, parse, validate.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
        let env = shared::config::prefixed_env(ENV_PREFIX);
        Self::parse(&text, &env, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parse text with an environment; relative paths resolve against `base`.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(text: &str, env: &[(String, String)], base: &Path) -> Result<Self, ConfigError> {
        let mut c: Config =
            shared::config::parse_toml(text, env, ENV_PREFIX).map_err(ConfigError)?;
        for p in [
            &mut c.data_dir,
            &mut c.signer.ca,
            &mut c.signer.cert,
            &mut c.signer.key,
            &mut c.api.cert,
            &mut c.api.key,
            &mut c.api.client_ca,
        ] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        for (i, a) in self.listen.iter().enumerate() {
            if a.parse::<libp2p::Multiaddr>().is_err() {
                errs.push(format!("listen[{i}]: {a:?} is not a multiaddress"));
            }
        }
        if self.listen.is_empty() {
            errs.push("listen: at least one address".into());
        }
        for (i, a) in self.bootstrap_peers.iter().enumerate() {
            match a.parse::<libp2p::Multiaddr>() {
                Ok(m) if matches!(m.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) => {}
                _ => errs.push(format!(
                    "bootstrap_peers[{i}]: {a:?} must be a multiaddress ending in /p2p/<peer id>"
                )),
            }
        }
        for (i, a) in self.external_addresses.iter().enumerate() {
            match a.parse::<libp2p::Multiaddr>() {
                Ok(m) if !matches!(m.iter().last(), Some(libp2p::multiaddr::Protocol::P2p(_))) => {}
                _ => errs.push(format!(
                    "external_addresses[{i}]: {a:?} must be a multiaddress without /p2p (e.g. /dns4/party-a.example.com/tcp/4001)"
                )),
            }
        }
        if libp2p::StreamProtocol::try_from_owned(self.dht_protocol.clone()).is_err() {
            errs.push(format!(
                "dht_protocol: {:?} must start with '/'",
                self.dht_protocol
            ));
        }
        if self
            .election_method
            .parse::<shared::election::ElectionMethod>()
            .is_err()
        {
            errs.push(format!(
                "election_method: {:?} (lexicographic, hash-based, first-signer, last-signer)",
                self.election_method
            ));
        }
        for (k, v) in [
            ("session_timeout_ms", self.session_timeout_ms),
            ("broadcast_timeout_ms", self.broadcast_timeout_ms),
            ("cleanup_interval_ms", self.cleanup_interval_ms),
            ("stuck_session_timeout_ms", self.stuck_session_timeout_ms),
            ("max_sequence_gap", self.max_sequence_gap),
        ] {
            if v == 0 {
                errs.push(format!("{k}: must be positive"));
            }
        }
        if self.max_sequence_gap > 0 && self.max_sequence_gap < crate::protocol::MIN_SEQUENCE_GAP {
            errs.push(format!(
                "max_sequence_gap: at least {} (a restarted node skips {} sequence numbers of each unfinished session), got {}",
                crate::protocol::MIN_SEQUENCE_GAP,
                crate::protocol::RESTART_SEQUENCE_SKIP,
                self.max_sequence_gap
            ));
        }
        let t = &self.session_resource_type;
        if t.is_empty()
            || t.len() > 64
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || t == "musig2-signer"
        {
            errs.push(format!(
                "session_resource_type: {t:?} must be 1 to 64 characters of a-z, 0-9 and '-', and not musig2-signer"
            ));
        }
        if self.session_retention_ms < 3_600_000 {
            errs.push(format!(
                "session_retention_ms: {} must be at least 3600000 (1 hour)",
                self.session_retention_ms
            ));
        }
        if !(1..=4096).contains(&self.store_cache_mib) {
            errs.push(format!(
                "store_cache_mib: {} must be 1 to 4096",
                self.store_cache_mib
            ));
        }
        if !(1000..=86_400_000).contains(&self.finished_in_memory_ms) {
            errs.push(format!(
                "finished_in_memory_ms: {} must be 1000 (1 s) to 86400000 (1 day)",
                self.finished_in_memory_ms
            ));
        }
        let max_ttl = u64::try_from(shared::wire::MAX_ATTESTATION_LIFETIME_MS).unwrap_or(u64::MAX);
        if !(10_000..=max_ttl).contains(&self.attestation_ttl_ms) {
            errs.push(format!(
                "attestation_ttl_ms: {} must lie between 10000 (10 s) and {max_ttl} (30 days)",
                self.attestation_ttl_ms
            ));
        }
        if self.attestation_renew_before_ms < 1_000
            || self.attestation_renew_before_ms >= self.attestation_ttl_ms
        {
            errs.push(format!(
                "attestation_renew_before_ms: {} must be at least 1000 (1 s) and less than attestation_ttl_ms ({})",
                self.attestation_renew_before_ms, self.attestation_ttl_ms
            ));
        }
        if !self.signer.url.starts_with("https://") {
            errs.push("signer.url: must be https://host:port (the signer only speaks TLS)".into());
        }
        for (k, p) in [
            ("signer.ca", &self.signer.ca),
            ("signer.cert", &self.signer.cert),
            ("signer.key", &self.signer.key),
            ("api.cert", &self.api.cert),
            ("api.key", &self.api.key),
            ("api.client_ca", &self.api.client_ca),
        ] {
            if !p.is_file() {
                errs.push(format!("{k}: {} is not a readable file", p.display()));
            }
        }
        if let Err(e) = musig2_proto::transport::AllowList::parse(&self.api.allowed_clients) {
            errs.push(format!("api.allowed_clients: {e}"));
        }
        if self.api.allowed_clients.is_empty() {
            errs.push("api.allowed_clients: at least one application must be allowed".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errs.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }

    /// The node settings this configuration describes.
    ///
    /// # Errors
    /// Never after validation (addresses parse).
    pub fn node_config(&self) -> anyhow::Result<crate::node::NodeConfig> {
        let ms = Duration::from_millis;
        Ok(crate::node::NodeConfig {
            listen: self
                .listen
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            bootstrap: self
                .bootstrap_peers
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            external: self
                .external_addresses
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
            net: crate::net::NetConfig {
                enable_dht: self.enable_dht,
                dht_server: self.enable_dht_server,
                dht_protocol: self.dht_protocol.clone(),
                max_connections: self.limits.max_connections,
                max_connections_per_peer: self.limits.max_connections_per_peer,
                ..crate::net::NetConfig::default()
            },
            session_timeout: ms(self.session_timeout_ms),
            stuck_timeout: ms(self.stuck_session_timeout_ms),
            cleanup_interval: if self.enable_auto_cleanup {
                ms(self.cleanup_interval_ms)
            } else {
                Duration::from_secs(365 * 86400)
            },
            max_sequence_gap: self.max_sequence_gap,
            enable_replay_protection: self.enable_replay_protection,
            election_method: self
                .election_method
                .parse()
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            enable_election: self.enable_coordinator_election,
            enable_failover: self.enable_coordinator_failover,
            broadcast_timeout: ms(self.broadcast_timeout_ms),
            max_active_sessions: self.limits.max_active_sessions,
            enable_session_discovery: self.enable_session_discovery,
            session_resource_type: self.session_resource_type.clone(),
            attestation_ttl: ms(self.attestation_ttl_ms),
            attestation_renew_before: ms(self.attestation_renew_before_ms),
            retention: ms(self.session_retention_ms),
            finished_in_memory: ms(self.finished_in_memory_ms),
        })
    }
}
