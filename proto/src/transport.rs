//! Mutual TLS for both services, and their small HTTP metrics endpoint.
//!
//! Servers speak TLS 1.3 only (rustls with the ring provider), require a client certificate that
//! chains to the configured CA **and** is on an allow-list (SHA-256 fingerprint of the DER
//! certificate, or subject common name). A client that fails either check never completes the
//! handshake, so no handler ever sees it. There is no plaintext listener and no switch to turn
//! client authentication off.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use sha2::{Digest, Sha256};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// TLS setup failures, each naming the file or setting at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built (e.g. an empty CA file).
    #[error("client CA: {0}")]
    Verifier(String),
    /// An allow-list entry is malformed.
    #[error(
        "allow-list entry {0:?} is malformed (sha256:<64 hex>, spki:<64 hex>, cn:<name>, uri:<uri>, dns:<name>)"
    )]
    AllowList(String),
}

/// Install the ring crypto provider for the process (idempotent). Call at the start of every
/// binary and test helper: two providers in one build make rustls refuse to guess.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Read every certificate of a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] naming the file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_err = |reason: String| TlsError::Pem {
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_err("no certificate found".into()));
    }
    Ok(certs)
}

/// Read a private key from a PEM file.
///
/// # Errors
/// [`TlsError::Pem`] naming the file (the key itself never appears in the error).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Who may connect. Entries:
///
/// - `sha256:<64 hex>` (or bare 64 hex digits, colons allowed): SHA-256 of the whole DER
///   certificate. Changes with every renewal.
/// - `spki:<64 hex>`: SHA-256 of the certificate's SubjectPublicKeyInfo (its public key).
///   Survives renewal when the key is kept; a new key needs a new entry.
/// - `uri:<uri>` / `dns:<name>`: a URI or DNS subject alternative name the certificate carries
///   (e.g. a SPIFFE id).
/// - `cn:<name>` (or any other text): the subject common name. Matches only a certificate with
///   exactly one common name, so a certificate carrying an allowed name beside another one is
///   not mistaken for the allowed client.
///
/// Revocation: remove the entry (and, for names, rotate the CA that issued the certificate; see
/// `deploy/README.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    fingerprints: HashSet<[u8; 32]>,
    spki: HashSet<[u8; 32]>,
    common_names: HashSet<String>,
    uris: HashSet<String>,
    dns_names: HashSet<String>,
}

impl AllowList {
    /// Build from entries (see the type's documentation).
    ///
    /// # Errors
    /// [`TlsError::AllowList`] for an empty entry or a malformed fingerprint.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, TlsError> {
        let mut list = AllowList::default();
        for e in entries {
            let e = e.as_ref().trim();
            let bad = || TlsError::AllowList(e.to_string());
            let nonempty = |v: &str| {
                if v.is_empty() {
                    Err(bad())
                } else {
                    Ok(v.to_string())
                }
            };
            if let Some(fp) = e.strip_prefix("sha256:") {
                list.fingerprints
                    .insert(parse_fingerprint(fp).ok_or_else(bad)?);
            } else if let Some(fp) = e.strip_prefix("spki:") {
                list.spki.insert(parse_fingerprint(fp).ok_or_else(bad)?);
            } else if let Some(cn) = e.strip_prefix("cn:") {
                list.common_names.insert(nonempty(cn)?);
            } else if let Some(u) = e.strip_prefix("uri:") {
                list.uris.insert(nonempty(u)?);
            } else if let Some(d) = e.strip_prefix("dns:") {
                list.dns_names.insert(nonempty(d)?.to_ascii_lowercase());
            } else if let Some(fp) = parse_fingerprint(e) {
                list.fingerprints.insert(fp);
            } else if e.is_empty() {
                return Err(bad());
            } else {
                list.common_names.insert(e.to_string());
            }
        }
        Ok(list)
    }

    /// Whether the list is empty (which would admit nobody).
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
            && self.spki.is_empty()
            && self.common_names.is_empty()
            && self.uris.is_empty()
            && self.dns_names.is_empty()
    }

    /// Whether an end-entity certificate is allowed.
    pub fn permits(&self, cert: &CertificateDer<'_>) -> bool {
        let fp: [u8; 32] = Sha256::digest(cert.as_ref()).into();
        if self.fingerprints.contains(&fp) {
            return true;
        }
        let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
            return false;
        };
        if !self.spki.is_empty() {
            let spki: [u8; 32] = Sha256::digest(parsed.public_key().raw).into();
            if self.spki.contains(&spki) {
                return true;
            }
        }
        if !self.common_names.is_empty() {
            let cns: Vec<&str> = parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .collect();
            if let [only] = cns.as_slice()
                && self.common_names.contains(*only)
            {
                return true;
            }
        }
        if !(self.uris.is_empty() && self.dns_names.is_empty())
            && let Ok(Some(san)) = parsed.subject_alternative_name()
        {
            use x509_parser::extensions::GeneralName;
            return san.value.general_names.iter().any(|n| match n {
                GeneralName::URI(u) => self.uris.contains(*u),
                GeneralName::DNSName(d) => self.dns_names.contains(&d.to_ascii_lowercase()),
                _ => false,
            });
        }
        false
    }
}

/// SHA-256 of a DER certificate's SubjectPublicKeyInfo, lowercase hex (an `spki:` entry).
///
/// # Errors
/// The certificate does not parse.
pub fn spki_fingerprint(cert: &CertificateDer<'_>) -> Result<String, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    Ok(Sha256::digest(parsed.public_key().raw)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// SHA-256 fingerprint of a DER certificate, lowercase hex (what allow-lists hold).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    Sha256::digest(cert.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The subject of a certificate, for logs (`?` when unparsable).
fn subject(cert: &CertificateDer<'_>) -> String {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// WebPKI chain verification to the configured CA, then the allow-list.
#[derive(Debug)]
struct AllowListVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allow: AllowList,
}

impl ClientCertVerifier for AllowListVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = match self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            Ok(v) => v,
            Err(e) => {
                if refusal_log_permit() {
                    tracing::warn!(fingerprint = %fingerprint(end_entity), subject = %subject(end_entity), reason = %e, "client certificate refused: it does not chain to the configured client CA or is not valid now");
                }
                return Err(e);
            }
        };
        if self.allow.permits(end_entity) {
            Ok(verified)
        } else {
            if refusal_log_permit() {
                tracing::warn!(fingerprint = %fingerprint(end_entity), subject = %subject(end_entity), "client certificate chains to the CA but is not on the allow-list");
            }
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Files and rules of a mutual-TLS server.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// Server certificate chain (PEM).
    pub cert: std::path::PathBuf,
    /// Server private key (PEM).
    pub key: std::path::PathBuf,
    /// CA that client certificates must chain to (PEM).
    pub client_ca: std::path::PathBuf,
    /// Allowed clients.
    pub allow: AllowList,
}

impl ServerTls {
    /// Build the rustls configuration: TLS 1.3 only, ALPN h2, client certificate mandatory,
    /// chained to `client_ca` and on the allow-list. The server certificate and key are
    /// re-read when their files change ([`CertFiles`]), so a renewed certificate is presented
    /// to new connections without a restart; the client CA is read once (a CA rollover is a
    /// restart, see `deploy/README.md`).
    ///
    /// # Errors
    /// Any [`TlsError`], naming the file at fault; an empty allow-list is refused.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        if self.allow.is_empty() {
            return Err(TlsError::AllowList(
                "<empty list: nobody could connect>".into(),
            ));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for ca in load_certs(&self.client_ca)? {
            roots
                .add(ca)
                .map_err(|e| TlsError::Verifier(e.to_string()))?;
        }
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let verifier = AllowListVerifier {
            inner,
            allow: self.allow.clone(),
        };
        let certs = Arc::new(CertFiles::load(&self.cert, &self.key, provider.clone())?);
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_cert_resolver(certs);
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(config))
    }
}

/// How often certificate files are checked for a rotation, at most.
pub const CERT_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Loaded {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    certified: Arc<rustls::sign::CertifiedKey>,
    checked: std::time::Instant,
}

/// A certificate chain and its key, read from PEM files and re-read when the files change
/// (checked at most every [`CERT_RECHECK`], on use): cert-manager renews certificates in place
/// (a Kubernetes Secret volume swaps the files), and new handshakes then present the new chain.
/// A pair that fails to load (half-written, key and certificate mismatched) is logged and the
/// previous one kept.
#[derive(Debug)]
pub struct CertFiles {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    loaded: std::sync::Mutex<Loaded>,
}

impl CertFiles {
    /// Load the pair now (errors name the file).
    ///
    /// # Errors
    /// [`TlsError`] for unreadable files, no certificate, or a key that does not match.
    pub fn load(
        cert: &Path,
        key: &Path,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, TlsError> {
        let (cert_pem, key_pem) = Self::read(cert, key)?;
        let certified = Self::certify(cert, key, &cert_pem, &key_pem, &provider)?;
        Ok(CertFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            provider,
            loaded: std::sync::Mutex::new(Loaded {
                cert_pem,
                key_pem,
                certified,
                checked: std::time::Instant::now(),
            }),
        })
    }

    fn read(cert: &Path, key: &Path) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let rd = |p: &Path| {
            std::fs::read(p).map_err(|e| TlsError::Pem {
                path: p.display().to_string(),
                reason: e.to_string(),
            })
        };
        Ok((rd(cert)?, rd(key)?))
    }

    fn certify(
        cert: &Path,
        key: &Path,
        cert_pem: &[u8],
        key_pem: &[u8],
        provider: &rustls::crypto::CryptoProvider,
    ) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let pem_err = |p: &Path, reason: String| TlsError::Pem {
            path: p.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(cert, "no certificate found".into()));
        }
        let der =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err(key, e.to_string()))?;
        Ok(Arc::new(
            rustls::sign::CertifiedKey::from_der(chain, der, provider)
                .map_err(|e| pem_err(key, format!("does not fit the certificate: {e}")))?,
        ))
    }

    /// The current pair, re-read first if the files changed.
    pub fn current(&self) -> Arc<rustls::sign::CertifiedKey> {
        let mut l = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if l.checked.elapsed() >= CERT_RECHECK {
            l.checked = std::time::Instant::now();
            match Self::read(&self.cert, &self.key) {
                Ok((c, k)) if c != l.cert_pem || k != l.key_pem => {
                    match Self::certify(&self.cert, &self.key, &c, &k, &self.provider) {
                        Ok(certified) => {
                            tracing::info!(cert = %self.cert.display(), fingerprint = %certified.end_entity_cert().map(fingerprint).unwrap_or_default(), "certificate files changed: new connections use the new certificate");
                            *l = Loaded {
                                cert_pem: c,
                                key_pem: k,
                                certified,
                                checked: l.checked,
                            };
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "certificate files changed but do not load (yet); keeping the previous certificate");
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "certificate files unreadable; keeping the previous certificate")
                }
            }
        }
        l.certified.clone()
    }
}

impl rustls::server::ResolvesServerCert for CertFiles {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
}

impl rustls::client::ResolvesClientCert for CertFiles {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// A mutual-TLS client configuration (TLS 1.3, ALPN h2) whose own certificate is re-read when
/// its files change ([`CertFiles`]); the server must chain to `ca`.
///
/// # Errors
/// [`TlsError`] naming the file at fault.
pub fn reloading_client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots
            .add(c)
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
    }
    let certs = Arc::new(CertFiles::load(cert, key, provider.clone())?);
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Dial `host:port` with `TCP_NODELAY` and complete a TLS handshake for `server_name`: the
/// connector behind a tonic channel whose client certificate may rotate.
///
/// # Errors
/// Connection, name and handshake errors.
pub async fn connect_tls(
    config: Arc<rustls::ClientConfig>,
    server_name: String,
    host: String,
    port: u16,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<TcpStream>>> {
    let tcp = TcpStream::connect((host.as_str(), port)).await?;
    tcp.set_nodelay(true)?;
    let name = rustls_pki_types::ServerName::try_from(server_name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await?;
    Ok(hyper_util::rt::TokioIo::new(tls))
}

/// Most connections kept before they authenticate. When a new connection arrives and the table
/// is full, the oldest unauthenticated connection is closed: accepting never waits, so idle or
/// slow connections cannot keep an allowed client in the kernel backlog.
pub const MAX_UNAUTHENTICATED: usize = 1024;
/// A connection that has sent no byte by then is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);
/// A client that has not finished its handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many refused-handshake warnings per minute; the rest are counted and reported.
const REFUSAL_LOGS_PER_MINUTE: u32 = 20;

#[derive(Debug)]
struct LogBudget {
    window: std::time::Instant,
    used: u32,
    suppressed: u64,
}

static REFUSAL_LOG: std::sync::Mutex<Option<LogBudget>> = std::sync::Mutex::new(None);

/// Whether a refusal may be logged now (rate limited, so a flood of bad clients cannot flood
/// the log); reports how many were suppressed in the previous minute.
fn refusal_log_permit() -> bool {
    let mut g = REFUSAL_LOG
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let now = std::time::Instant::now();
    let b = g.get_or_insert(LogBudget {
        window: now,
        used: 0,
        suppressed: 0,
    });
    if now.duration_since(b.window) >= Duration::from_secs(60) {
        if b.suppressed > 0 {
            tracing::warn!(
                suppressed = b.suppressed,
                "refused TLS handshakes not logged in the last minute (log rate limit)"
            );
        }
        *b = LogBudget {
            window: now,
            used: 0,
            suppressed: 0,
        };
    }
    if b.used < REFUSAL_LOGS_PER_MINUTE {
        b.used += 1;
        true
    } else {
        b.suppressed += 1;
        false
    }
}

/// Connections that have not authenticated yet, oldest first.
#[derive(Debug, Default)]
struct PreAuth {
    next: u64,
    live: std::collections::BTreeMap<u64, CancellationToken>,
}

/// Accept TCP connections and complete TLS handshakes concurrently, yielding only authenticated
/// streams, until `shutdown` fires. The accept loop never waits for a handshake slot: each
/// connection gets its own task, at most [`MAX_UNAUTHENTICATED`] exist (the oldest is closed to
/// make room), a connection silent for [`FIRST_BYTE_TIMEOUT`] is closed, and a handshake must
/// finish within [`HANDSHAKE_TIMEOUT`]. Refused handshakes are logged at warn (rate limited)
/// with the peer address, the reason and, where a certificate was presented, its fingerprint
/// and subject. Accepted sockets get `TCP_NODELAY` (gRPC frames are small; Nagle's algorithm
/// with delayed ACKs would add tens of milliseconds per call).
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    let table = Arc::new(std::sync::Mutex::new(PreAuth::default()));
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of descriptors and the like: back off briefly, keep serving.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let token = shutdown.child_token();
            let id = {
                let mut t = table
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if t.live.len() >= MAX_UNAUTHENTICATED
                    && let Some((_, oldest)) = t.live.pop_first()
                {
                    oldest.cancel();
                }
                let id = t.next;
                t.next += 1;
                t.live.insert(id, token.clone());
                id
            };
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let table = table.clone();
            tokio::spawn(async move {
                let outcome = tokio::select! {
                    () = token.cancelled() => Err("closed to make room for newer connections (too many unauthenticated)".to_string()),
                    r = async {
                        match tokio::time::timeout(FIRST_BYTE_TIMEOUT, tcp.readable()).await {
                            Err(_) => return Err("sent nothing".to_string()),
                            Ok(Err(e)) => return Err(e.to_string()),
                            Ok(Ok(())) => {}
                        }
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => Ok(tls),
                            Ok(Err(e)) => Err(e.to_string()),
                            Err(_) => Err("handshake timed out".to_string()),
                        }
                    } => r,
                };
                table
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .live
                    .remove(&id);
                match outcome {
                    Ok(tls) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Err(reason) => {
                        if refusal_log_permit() {
                            tracing::warn!(%peer, %reason, "TLS connection refused before authentication");
                        }
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Client side of mutual TLS for a tonic channel.
///
/// # Errors
/// Unreadable files.
pub fn client_tls(
    ca: &Path,
    cert: &Path,
    key: &Path,
    server_name: &str,
) -> Result<tonic::transport::ClientTlsConfig, std::io::Error> {
    let ca = std::fs::read(ca)?;
    let cert = std::fs::read(cert)?;
    let key = std::fs::read(key)?;
    Ok(tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(ca))
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .domain_name(server_name))
}

/// Serve, over plain HTTP/1.1 until `shutdown`:
/// - `GET /metrics`: the text `render` produces (Prometheus exposition format; no secret in it);
/// - `GET /healthz`: 200 while the process answers (liveness, startup);
/// - `GET /readyz`: 200 when `ready()` holds, 503 otherwise (readiness: the same condition as
///   the gRPC health service's `SERVING`, which kubelet cannot query over mutual TLS).
pub async fn serve_metrics<F, R>(
    addr: SocketAddr,
    render: F,
    ready: R,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr>
where
    F: Fn() -> String + Send + Sync + 'static,
    R: Fn() -> bool + Send + Sync + 'static,
{
    use http_body_util::Full;
    use hyper::{Response, StatusCode, body::Bytes, service::service_fn};
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let render = Arc::new(render);
    let ready = Arc::new(ready);
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                () = shutdown.cancelled() => break,
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            };
            let (render, ready) = (render.clone(), ready.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (render, ready) = (render.clone(), ready.clone());
                    async move {
                        let text = |status: StatusCode, body: &'static str| {
                            Response::builder()
                                .status(status)
                                .header("content-type", "text/plain; charset=utf-8")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                        };
                        let resp = match req.uri().path() {
                            "/metrics" => Response::builder()
                                .header(
                                    "content-type",
                                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                                )
                                .body(Full::new(Bytes::from(render()))),
                            "/healthz" => text(StatusCode::OK, "ok\n"),
                            "/readyz" if ready() => text(StatusCode::OK, "ready\n"),
                            "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                            _ => text(StatusCode::NOT_FOUND, "not found\n"),
                        };
                        resp.map_err(|e| std::io::Error::other(e.to_string()))
                    }
                });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    Ok(local)
}

/// Resolve when SIGINT or SIGTERM arrives (or `token` is cancelled elsewhere), then cancel
/// `token` so every task observes shutdown.
pub async fn shutdown_signal(token: CancellationToken) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        () = term => {},
        () = token.cancelled() => {},
    }
    token.cancel();
}
