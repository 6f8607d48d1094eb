//! A small PKI for mutual TLS: a CA, server certificates (serverAuth, DNS/IP names) and client
//! certificates (clientAuth, a common name). Used by the tests, the demo, and the operators'
//! certificate command. Keys are ECDSA P-256.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

/// PKI errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
}

/// A certificate authority.
#[derive(Debug)]
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// What a leaf certificate is for.
#[derive(Debug, Clone, Default)]
pub struct LeafSpec {
    /// Subject common name (what allow-lists may name).
    pub common_name: String,
    /// DNS subject alternative names (servers).
    pub dns_names: Vec<String>,
    /// IP subject alternative names (servers).
    pub ips: Vec<IpAddr>,
    /// serverAuth extended key usage.
    pub server: bool,
    /// clientAuth extended key usage.
    pub client: bool,
    /// Validity ended in 2021 (for tests of expiry).
    pub expired: bool,
    /// URI subject alternative names (e.g. SPIFFE ids).
    pub uris: Vec<String>,
    /// Further common names beside `common_name` (tests of ambiguous subjects).
    pub extra_common_names: Vec<String>,
    /// Reuse this key (PKCS#8 PEM) instead of generating one: a renewal that keeps the key.
    pub key_pem: Option<String>,
}

/// An issued certificate with its key, in PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// Certificate PEM.
    pub cert_pem: String,
    /// Private key PEM (PKCS#8). Secret: write it 0600.
    pub key_pem: String,
    /// SHA-256 fingerprint of the DER certificate, hex.
    pub fingerprint: String,
}

/// Paths of a leaf written to disk.
#[derive(Debug, Clone)]
pub struct LeafFiles {
    /// Certificate.
    pub cert: PathBuf,
    /// Private key (0600).
    pub key: PathBuf,
    /// Fingerprint, hex.
    pub fingerprint: String,
}

impl Ca {
    /// A new self-signed CA (keyCertSign, cRLSign).
    ///
    /// # Errors
    /// [`PkiError::Rcgen`].
    pub fn new(common_name: &str) -> Result<Self, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issue a leaf certificate.
    ///
    /// # Errors
    /// [`PkiError::Rcgen`].
    pub fn issue(&self, spec: &LeafSpec) -> Result<Leaf, PkiError> {
        let mut params = CertificateParams::new(spec.dns_names.clone())?;
        for ip in &spec.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        for u in &spec.uris {
            params
                .subject_alt_names
                .push(SanType::URI(u.as_str().try_into()?));
        }
        params
            .distinguished_name
            .push(DnType::CommonName, spec.common_name.as_str());
        for cn in &spec.extra_common_names {
            // Another attribute of type commonName (2.5.4.3).
            params
                .distinguished_name
                .push(DnType::CustomDnType(vec![2, 5, 4, 3]), cn.as_str());
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if spec.server {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        if spec.client {
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ClientAuth);
        }
        if spec.expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let key = match &spec.key_pem {
            Some(pem) => KeyPair::from_pem(pem)?,
            None => KeyPair::generate()?,
        };
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint: crate::transport::fingerprint(cert.der()),
        })
    }

    /// Write the CA certificate to `dir/<name>.pem`.
    ///
    /// # Errors
    /// [`PkiError::Io`].
    pub fn write_cert(&self, dir: &Path, name: &str) -> Result<PathBuf, PkiError> {
        let path = dir.join(format!("{name}.pem"));
        write(&path, self.cert_pem().as_bytes(), false)?;
        Ok(path)
    }

    /// Issue and write `dir/<name>.pem` and `dir/<name>.key` (0600); refuses when either exists.
    ///
    /// # Errors
    /// [`PkiError`].
    pub fn issue_to(&self, dir: &Path, name: &str, spec: &LeafSpec) -> Result<LeafFiles, PkiError> {
        let leaf = self.issue(spec)?;
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        write(&cert, leaf.cert_pem.as_bytes(), false)?;
        write(&key, leaf.key_pem.as_bytes(), true)?;
        Ok(LeafFiles {
            cert,
            key,
            fingerprint: leaf.fingerprint,
        })
    }
}

/// Create a new file (0600 for private keys): refuses when anything, a symbolic link included,
/// already exists at the path.
fn write(path: &Path, data: &[u8], secret: bool) -> Result<(), PkiError> {
    crate::files::create_file(path, data, secret).map_err(|source| PkiError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A server leaf for loopback (`localhost`, 127.0.0.1, ::1).
pub fn loopback_server(common_name: &str) -> LeafSpec {
    LeafSpec {
        common_name: common_name.into(),
        dns_names: vec!["localhost".into(), common_name.into()],
        ips: vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ],
        server: true,
        ..LeafSpec::default()
    }
}

/// A client leaf.
pub fn client(common_name: &str) -> LeafSpec {
    LeafSpec {
        common_name: common_name.into(),
        client: true,
        ..LeafSpec::default()
    }
}
