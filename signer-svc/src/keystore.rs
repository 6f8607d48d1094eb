//! Keys at rest: one file holding any number of secp256k1 secret keys, encrypted with
//! XChaCha20-Poly1305 under a key derived from a passphrase with Argon2id. Public keys and labels
//! are stored in clear (so `list` needs no passphrase) and bound to the ciphertext as associated
//! data, so swapping or editing them fails decryption. Files are written 0600, fsynced, renamed
//! into place, and the directory fsynced.

use std::path::Path;

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use shared::musig::SecretKey;
use zeroize::Zeroizing;

/// Default Argon2id memory, KiB (64 MiB).
pub const DEFAULT_KDF_MEMORY_KIB: u32 = 64 * 1024;
/// Default Argon2id passes.
pub const DEFAULT_KDF_ITERATIONS: u32 = 3;
/// Smallest memory accepted when reading or writing a key file, KiB.
pub const MIN_KDF_MEMORY_KIB: u32 = 8 * 1024;
/// Largest memory a key file may ask for, KiB (1 GiB): a crafted file cannot make the signer
/// allocate more.
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// Most Argon2id passes a key file may ask for.
pub const MAX_KDF_ITERATIONS: u32 = 16;
/// Most Argon2id lanes a key file may ask for.
pub const MAX_KDF_PARALLELISM: u32 = 16;
/// Largest key file read, bytes (far above 1,000 keys).
pub const MAX_KEY_FILE_BYTES: usize = 1024 * 1024;
/// Shortest passphrase accepted.
pub const MIN_PASSPHRASE_LEN: usize = 8;

/// Key store failures. None carries secret material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyStoreError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not a key file of a known version.
    #[error("{path}: not a valid key file: {reason}")]
    Format {
        /// File.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Wrong passphrase, or the file was altered.
    #[error("{0}: cannot decrypt: wrong passphrase or the file was modified")]
    Decrypt(String),
    /// The passphrase source is unusable.
    #[error("passphrase: {0}")]
    Passphrase(String),
    /// A secret key is invalid.
    #[error("invalid secret key: {0}")]
    InvalidKey(String),
    /// Label already used, or key already present.
    #[error("{0}")]
    Duplicate(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct KdfParams {
    algorithm: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    salt: String,
}

/// Public part of one key entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicEntry {
    /// Operator label.
    pub label: String,
    /// 33-byte compressed key, hex.
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    version: u32,
    kdf: KdfParams,
    cipher: String,
    nonce: String,
    keys: Vec<PublicEntry>,
    ciphertext: String,
}

/// A loaded key.
pub struct StoredKey {
    /// Operator label.
    pub label: String,
    /// The key.
    pub secret: SecretKey,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("label", &self.label)
            .field("secret", &self.secret)
            .finish()
    }
}

/// The decrypted keys, looked up by public key.
#[derive(Debug)]
pub struct KeyStore {
    keys: Vec<StoredKey>,
}

impl KeyStore {
    /// Keys in file order.
    pub fn keys(&self) -> &[StoredKey] {
        &self.keys
    }

    /// The secret for a public key.
    pub fn get(&self, public: &[u8; 33]) -> Option<&SecretKey> {
        self.keys
            .iter()
            .find(|k| k.secret.public_key() == *public)
            .map(|k| &k.secret)
    }

    /// An empty store (for creating a new file).
    pub fn empty() -> Self {
        KeyStore { keys: Vec::new() }
    }

    /// Add a key with a unique label.
    ///
    /// # Errors
    /// [`KeyStoreError::Duplicate`].
    pub fn add(&mut self, label: String, secret: SecretKey) -> Result<(), KeyStoreError> {
        if self.keys.iter().any(|k| k.label == label) {
            return Err(KeyStoreError::Duplicate(format!(
                "label {label:?} already used"
            )));
        }
        if self.get(&secret.public_key()).is_some() {
            return Err(KeyStoreError::Duplicate(format!(
                "key {} already present",
                hex::encode(secret.public_key())
            )));
        }
        self.keys.push(StoredKey { label, secret });
        Ok(())
    }

    /// Read and decrypt a key file.
    ///
    /// # Errors
    /// Any [`KeyStoreError`].
    pub fn open(path: &Path, passphrase: &[u8]) -> Result<Self, KeyStoreError> {
        let p = path.display().to_string();
        Self::open_bytes(&read_bytes(path)?, passphrase, &p)
    }

    /// Parse and decrypt the bytes of a key file; `name` names it in errors.
    ///
    /// # Errors
    /// Any [`KeyStoreError`].
    pub fn open_bytes(bytes: &[u8], passphrase: &[u8], name: &str) -> Result<Self, KeyStoreError> {
        let file = parse_file(bytes, name)?;
        let p = name.to_string();
        let key = derive(&file.kdf, passphrase, &p)?;
        let nonce: [u8; 24] = hex::decode(&file.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| format_err(&p, "nonce must be 24 bytes of hex"))?;
        let ct =
            hex::decode(&file.ciphertext).map_err(|_| format_err(&p, "ciphertext is not hex"))?;
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    &XNonce::from(nonce),
                    Payload {
                        msg: &ct,
                        aad: &aad(&file),
                    },
                )
                .map_err(|_| KeyStoreError::Decrypt(p.clone()))?,
        );
        if plain.len() != 32 * file.keys.len() {
            return Err(format_err(
                &p,
                "ciphertext length does not match the key list",
            ));
        }
        let mut store = KeyStore::empty();
        for (entry, chunk) in file.keys.iter().zip(plain.chunks_exact(32)) {
            let mut bytes = Zeroizing::new([0u8; 32]);
            bytes.copy_from_slice(chunk);
            let secret = SecretKey::from_bytes(&bytes).map_err(|_| {
                format_err(
                    &p,
                    &format!("key {:?} is not a valid secret key", entry.label),
                )
            })?;
            if hex::encode(secret.public_key()) != entry.public_key {
                return Err(format_err(
                    &p,
                    &format!("key {:?} does not match its public key", entry.label),
                ));
            }
            store.add(entry.label.clone(), secret)?;
        }
        Ok(store)
    }

    /// Encrypt and write the store atomically (0600, fsync, rename, fsync directory).
    ///
    /// # Errors
    /// Any [`KeyStoreError`].
    pub fn save(
        &self,
        path: &Path,
        passphrase: &[u8],
        memory_kib: u32,
        iterations: u32,
    ) -> Result<(), KeyStoreError> {
        let p = path.display().to_string();
        if passphrase.len() < MIN_PASSPHRASE_LEN {
            return Err(KeyStoreError::Passphrase(format!(
                "must be at least {MIN_PASSPHRASE_LEN} bytes"
            )));
        }
        if !(MIN_KDF_MEMORY_KIB..=MAX_KDF_MEMORY_KIB).contains(&memory_kib)
            || !(1..=MAX_KDF_ITERATIONS).contains(&iterations)
        {
            return Err(format_err(
                &p,
                &format!(
                    "KDF memory must be {MIN_KDF_MEMORY_KIB} to {MAX_KDF_MEMORY_KIB} KiB and passes 1 to {MAX_KDF_ITERATIONS}"
                ),
            ));
        }
        let mut rng = rand::rng();
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        let mut file = KeyFile {
            version: 1,
            kdf: KdfParams {
                algorithm: "argon2id".into(),
                memory_kib,
                iterations,
                parallelism: 1,
                salt: hex::encode(salt),
            },
            cipher: "xchacha20poly1305".into(),
            nonce: hex::encode(nonce),
            keys: self
                .keys
                .iter()
                .map(|k| PublicEntry {
                    label: k.label.clone(),
                    public_key: hex::encode(k.secret.public_key()),
                })
                .collect(),
            ciphertext: String::new(),
        };
        let key = derive(&file.kdf, passphrase, &p)?;
        let mut plain = Zeroizing::new(Vec::with_capacity(32 * self.keys.len()));
        for k in &self.keys {
            plain.extend_from_slice(k.secret.dangerous_to_bytes().as_slice());
        }
        let cipher = XChaCha20Poly1305::new(key.as_slice().into());
        let ct = cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: &aad(&file),
                },
            )
            .map_err(|_| format_err(&p, "encryption failed"))?;
        file.ciphertext = hex::encode(ct);
        let json = serde_json::to_vec_pretty(&file).map_err(|e| format_err(&p, &e.to_string()))?;
        write_atomic(path, &json).map_err(|source| KeyStoreError::Io { path: p, source })
    }
}

/// The public entries of a key file, without the passphrase.
///
/// # Errors
/// [`KeyStoreError::Io`], [`KeyStoreError::Format`].
pub fn list_public(path: &Path) -> Result<Vec<PublicEntry>, KeyStoreError> {
    Ok(read_file(path)?.keys)
}

fn read_bytes(path: &Path) -> Result<Vec<u8>, KeyStoreError> {
    use std::io::Read;
    let p = path.display().to_string();
    let io = |source| KeyStoreError::Io {
        path: p.clone(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(MAX_KEY_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

fn read_file(path: &Path) -> Result<KeyFile, KeyStoreError> {
    parse_file(&read_bytes(path)?, &path.display().to_string())
}

/// Parse a key file and check its parameters before any key derivation: a crafted file can ask
/// for neither more memory nor more passes than the caps.
fn parse_file(bytes: &[u8], p: &str) -> Result<KeyFile, KeyStoreError> {
    if bytes.len() > MAX_KEY_FILE_BYTES {
        return Err(format_err(
            p,
            &format!("larger than {MAX_KEY_FILE_BYTES} bytes"),
        ));
    }
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| format_err(p, &e.to_string()))?;
    if file.version != 1 || file.cipher != "xchacha20poly1305" || file.kdf.algorithm != "argon2id" {
        return Err(format_err(p, "unsupported version, cipher or KDF"));
    }
    let k = &file.kdf;
    if !(MIN_KDF_MEMORY_KIB..=MAX_KDF_MEMORY_KIB).contains(&k.memory_kib) {
        return Err(format_err(
            p,
            &format!("KDF memory must be {MIN_KDF_MEMORY_KIB} to {MAX_KDF_MEMORY_KIB} KiB"),
        ));
    }
    if !(1..=MAX_KDF_ITERATIONS).contains(&k.iterations)
        || !(1..=MAX_KDF_PARALLELISM).contains(&k.parallelism)
    {
        return Err(format_err(
            p,
            &format!(
                "KDF passes must be 1 to {MAX_KDF_ITERATIONS} and lanes 1 to {MAX_KDF_PARALLELISM}"
            ),
        ));
    }
    Ok(file)
}

fn format_err(path: &str, reason: &str) -> KeyStoreError {
    KeyStoreError::Format {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Associated data: everything in clear, so none of it can be swapped.
fn aad(f: &KeyFile) -> Vec<u8> {
    let mut out = b"musig2-signer keyfile v1\0".to_vec();
    let k = &f.kdf;
    out.extend(
        format!(
            "{}|{}|{}|{}|{}|{}|{}\0",
            k.algorithm, k.memory_kib, k.iterations, k.parallelism, k.salt, f.cipher, f.nonce
        )
        .as_bytes(),
    );
    for e in &f.keys {
        out.extend((e.label.len() as u32).to_be_bytes());
        out.extend(e.label.as_bytes());
        out.extend(e.public_key.as_bytes());
    }
    out
}

fn derive(
    k: &KdfParams,
    passphrase: &[u8],
    path: &str,
) -> Result<Zeroizing<[u8; 32]>, KeyStoreError> {
    let salt = hex::decode(&k.salt).map_err(|_| format_err(path, "salt is not hex"))?;
    let params = Params::new(k.memory_kib, k.iterations, k.parallelism, Some(32))
        .map_err(|e| format_err(path, &format!("KDF parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase, &salt, key.as_mut())
        .map_err(|e| format_err(path, &format!("KDF: {e}")))?;
    Ok(key)
}

/// Write a file atomically with mode 0600, never following a link at the temporary or final
/// path ([`musig2_proto::files::write_private_atomic`]).
///
/// # Errors
/// I/O errors.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    musig2_proto::files::write_private_atomic(path, data)
}

/// Read the passphrase from a file (trailing newline removed) or an environment variable.
///
/// # Errors
/// [`KeyStoreError::Passphrase`] naming the source, never the content.
pub fn read_passphrase(
    file: Option<&Path>,
    env: Option<&str>,
) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    let mut raw = match (file, env) {
        (Some(f), None) => Zeroizing::new(
            std::fs::read(f)
                .map_err(|e| KeyStoreError::Passphrase(format!("{}: {e}", f.display())))?,
        ),
        (None, Some(var)) => Zeroizing::new(
            std::env::var(var)
                .map_err(|_| {
                    KeyStoreError::Passphrase(format!("environment variable {var} is not set"))
                })?
                .into_bytes(),
        ),
        _ => {
            return Err(KeyStoreError::Passphrase(
                "give exactly one of a file and a variable".into(),
            ));
        }
    };
    while raw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        raw.pop();
    }
    if raw.len() < MIN_PASSPHRASE_LEN {
        return Err(KeyStoreError::Passphrase(format!(
            "must be at least {MIN_PASSPHRASE_LEN} bytes"
        )));
    }
    Ok(raw)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn file_with(memory_kib: u64, iterations: u64, parallelism: u64) -> Vec<u8> {
        format!(
            r#"{{"version":1,"kdf":{{"algorithm":"argon2id","memory_kib":{memory_kib},"iterations":{iterations},"parallelism":{parallelism},"salt":"00"}},"cipher":"xchacha20poly1305","nonce":"{}","keys":[],"ciphertext":""}}"#,
            "00".repeat(24)
        )
        .into_bytes()
    }

    #[test]
    fn crafted_kdf_parameters_are_refused_before_any_derivation() {
        // Each would allocate gigabytes or run for hours if derived; each is refused at once.
        for (m, i, p) in [
            (u64::from(u32::MAX), 3, 1),
            (u64::from(MAX_KDF_MEMORY_KIB) + 1, 3, 1),
            (65_536, 1_000_000, 1),
            (65_536, 3, 255),
            (65_536, 0, 1),
        ] {
            let started = std::time::Instant::now();
            let err =
                KeyStore::open_bytes(&file_with(m, i, p), b"passphrase!", "crafted").unwrap_err();
            assert!(
                matches!(err, KeyStoreError::Format { .. }),
                "{m}/{i}/{p}: {err}"
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(1));
        }
        let huge = vec![b' '; MAX_KEY_FILE_BYTES + 1];
        assert!(KeyStore::open_bytes(&huge, b"passphrase!", "huge").is_err());
        // Saving with parameters a reader would refuse is refused too.
        let d = std::env::temp_dir().join(format!("ks-cap-{}", std::process::id()));
        assert!(
            KeyStore::empty()
                .save(&d, b"passphrase!", MAX_KDF_MEMORY_KIB + 1, 1)
                .is_err()
        );
        assert!(!d.exists());
    }
}
