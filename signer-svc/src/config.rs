//! Signer configuration: a TOML file with `MUSIG2_SIGNER__SECTION__KEY` environment overrides,
//! parsed strictly (unknown keys refused) and validated as a whole before anything binds. Every
//! problem is reported at once, each naming its key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::PolicyConfig;

/// Prefix of environment overrides: `MUSIG2_SIGNER__NONCES__TTL_SECS=60` sets `nonces.ttl_secs`.
pub const ENV_PREFIX: &str = "MUSIG2_SIGNER__";

/// The whole configuration (see `signer-svc/signer.example.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address (TLS only).
    pub listen: SocketAddr,
    /// Mutual TLS.
    pub tls: TlsConfig,
    /// Key file and passphrase source.
    pub keys: KeysConfig,
    /// Secret nonce store.
    #[serde(default)]
    pub nonces: NonceConfig,
    /// Audit journal.
    pub audit: AuditConfig,
    /// Optional Prometheus endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// Built-in limit on `AttestPeer` (holds with no policy configured).
    #[serde(default)]
    pub attestation: AttestationConfig,
    /// Signing policy.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
}

/// Mutual TLS settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Server certificate chain (PEM).
    pub cert: PathBuf,
    /// Server private key (PEM).
    pub key: PathBuf,
    /// CA that client certificates must chain to (PEM).
    pub client_ca: PathBuf,
    /// Allowed clients: `sha256:<hex fingerprint>` or `cn:<common name>`. At least one.
    pub allowed_clients: Vec<String>,
}

/// Where the keys are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// Encrypted key file (made by `musig2-signer keygen`).
    pub file: PathBuf,
    /// File holding the passphrase (e.g. a mounted Kubernetes secret). Exactly one source.
    pub passphrase_file: Option<PathBuf>,
    /// Environment variable holding the passphrase. Exactly one source. The variable stays in
    /// the process environment (readable in `/proc/<pid>/environ` by the same user and in core
    /// dumps) for the signer's whole life: prefer `passphrase_file`.
    pub passphrase_env: Option<String>,
}

/// Secret nonce store limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceConfig {
    /// Seconds an unused nonce (and a completed signature kept for retries) lives.
    #[serde(default = "default_ttl_secs")]
    pub ttl_secs: u64,
    /// Most nonces held at once; past it GenerateNonce answers RESOURCE_EXHAUSTED.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Seconds a pooled nonce (one-round signing) lives unused.
    #[serde(default = "default_pool_ttl_secs")]
    pub pool_ttl_secs: u64,
    /// Most secret pooled nonces held at once (unused ones; all count within `capacity` too,
    /// answered ones only there); 0 refuses every pooled nonce.
    #[serde(default = "default_pool_capacity")]
    pub pool_capacity: usize,
}

fn default_ttl_secs() -> u64 {
    600
}
/// Answered nonces are kept [`crate::nonces::MIN_ANSWER_AGE`] (60 s) for retries, so the
/// capacity bounds the sustained rate at capacity / 60 nonces per second: 1,666/s here (a
/// batch session takes one nonce per message). Found by `musig2-bench --messages 256`: the old
/// 10,000 refused nonces past 166/s. About 40 MB when full.
fn default_capacity() -> usize {
    100_000
}
fn default_pool_ttl_secs() -> u64 {
    3600
}
fn default_pool_capacity() -> usize {
    1024
}

impl Default for NonceConfig {
    fn default() -> Self {
        NonceConfig {
            ttl_secs: default_ttl_secs(),
            capacity: default_capacity(),
            pool_ttl_secs: default_pool_ttl_secs(),
            pool_capacity: default_pool_capacity(),
        }
    }
}

/// `[attestation]`: the built-in rate limit on `AttestPeer`, per key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationConfig {
    /// Most attestations per key per window (default 720: one every 5 s sustained).
    #[serde(default = "default_attest_max")]
    pub max_per_window: u32,
    /// Window, seconds (default 3600).
    #[serde(default = "default_attest_window")]
    pub window_secs: u64,
}

fn default_attest_max() -> u32 {
    crate::policy::AttestLimit::default().max
}
fn default_attest_window() -> u64 {
    u64::try_from(crate::policy::AttestLimit::default().window_ms / 1000).unwrap_or(3600)
}

impl Default for AttestationConfig {
    fn default() -> Self {
        AttestationConfig {
            max_per_window: default_attest_max(),
            window_secs: default_attest_window(),
        }
    }
}

impl AttestationConfig {
    /// The limit the policy enforces.
    pub fn limit(&self) -> crate::policy::AttestLimit {
        crate::policy::AttestLimit {
            max: self.max_per_window,
            window_ms: i64::try_from(self.window_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }
}

/// Audit journal location.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append-only, hash-chained journal file (created if missing, with its directory, 0700).
    pub journal: PathBuf,
}

/// Prometheus endpoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Plain-HTTP listen address serving `/metrics` (no secrets in it).
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// JSON lines instead of text.
    #[serde(default)]
    pub json: bool,
    /// `tracing` filter, e.g. `info` or `signer_svc=debug`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            json: false,
            level: default_level(),
        }
    }
}

/// Configuration errors, all collected.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigError(pub Vec<String>);

impl Config {
    /// Read the file, apply environment overrides, parse and validate.
    ///
    /// # Errors
    /// [`ConfigError`] listing every problem with its key.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(vec![format!("{}: {e}", path.display())]))?;
        let vars = shared::config::prefixed_env(ENV_PREFIX);
        Self::parse(&text, &vars, path.parent().unwrap_or(Path::new(".")))
    }

    /// Parse TOML text with the given environment; relative paths resolve against `base`.
    ///
    /// # Errors
    /// [`ConfigError`].
    pub fn parse(text: &str, env: &[(String, String)], base: &Path) -> Result<Self, ConfigError> {
        let mut config: Config =
            shared::config::parse_toml(text, env, ENV_PREFIX).map_err(ConfigError)?;
        config.resolve(base);
        config.validate()?;
        Ok(config)
    }

    fn resolve(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut self.tls.cert);
        abs(&mut self.tls.key);
        abs(&mut self.tls.client_ca);
        abs(&mut self.keys.file);
        if let Some(p) = self.keys.passphrase_file.as_mut() {
            abs(p);
        }
        abs(&mut self.audit.journal);
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        for (key, p) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
            ("keys.file", &self.keys.file),
        ] {
            if !p.is_file() {
                errs.push(format!("{key}: {} is not a readable file", p.display()));
            }
        }
        if self.tls.allowed_clients.is_empty() {
            errs.push("tls.allowed_clients: at least one client must be allowed".into());
        } else if let Err(e) = musig2_proto::transport::AllowList::parse(&self.tls.allowed_clients)
        {
            errs.push(format!("tls.allowed_clients: {e}"));
        }
        match (&self.keys.passphrase_file, &self.keys.passphrase_env) {
            (Some(_), Some(_)) | (None, None) => {
                errs.push("keys: set exactly one of passphrase_file and passphrase_env".into())
            }
            (Some(p), None) if !p.is_file() => {
                errs.push(format!(
                    "keys.passphrase_file: {} is not a readable file",
                    p.display()
                ));
            }
            _ => {}
        }
        if self.nonces.ttl_secs == 0 || self.nonces.ttl_secs > 86_400 {
            errs.push("nonces.ttl_secs: must be between 1 and 86400".into());
        }
        if self.nonces.capacity == 0 || self.nonces.capacity > 10_000_000 {
            errs.push("nonces.capacity: must be between 1 and 10000000".into());
        }
        if self.nonces.pool_ttl_secs < 3000 || self.nonces.pool_ttl_secs > 7 * 86_400 {
            errs.push(
                "nonces.pool_ttl_secs: must be between 3000 (a coordinator's nonce-pool slots live 50 minutes) and 604800 (7 days)"
                    .into(),
            );
        }

        if let Some(dir) = self.audit.journal.parent()
            && dir.exists()
            && !dir.is_dir()
        {
            errs.push(format!(
                "audit.journal: {} is not a directory",
                dir.display()
            ));
        }
        if let Some(m) = &self.metrics
            && m.listen == self.listen
            && m.listen.port() != 0
        {
            errs.push("metrics.listen: must differ from listen".into());
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            errs.push(format!(
                "log.level: {:?} is not a valid filter",
                self.log.level
            ));
        }
        if self.attestation.max_per_window == 0 || self.attestation.max_per_window > 1_000_000 {
            errs.push("attestation.max_per_window: must be between 1 and 1000000".into());
        }
        if self.attestation.window_secs == 0 || self.attestation.window_secs > 30 * 86_400 {
            errs.push("attestation.window_secs: must be between 1 and 2592000 (30 days)".into());
        }
        errs.extend(self.policy.validate());
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errs))
        }
    }
}
