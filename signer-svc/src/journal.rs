//! The audit journal: one line per event (nonce issued, partial signature produced, peer
//! attested, signer started, torn tail recovered), append-only, each line carrying the SHA-256
//! chain hash `H(previous hash || body)`, written and fsynced before the reply leaves.
//!
//! Line format: `<body JSON>\t<chain hash hex>\n`. The body holds a sequence number (from 1,
//! consecutive) and the previous hash, so an edited, removed or reordered line breaks the chain
//! at that line. A torn final line (a crash mid-write) is reported by `verify`; on start the
//! signer cuts it off, fsyncs, and journals a `recovered_torn_tail` record naming its length and
//! hash, so the journal is never silently extended past a torn record.
//!
//! Removing the *last* whole lines is not detectable from the file alone: compare the head
//! (`audit verify` prints it; the signer logs it at start and exports the sequence number) with
//! a copy kept elsewhere, or pass `--expect-head`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// The signer started (and the journal head it found).
    Start,
    /// A nonce was issued.
    Nonce,
    /// A partial signature was produced.
    PartialSignature,
    /// A peer attestation was signed.
    Attestation,
    /// An unused secret nonce was destroyed on request (`ReleaseNonce`).
    NonceReleased,
    /// A torn final line was cut off at start.
    RecoveredTornTail,
}

/// Event fields (public data only: never a secret).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// Session id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Signer key (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Session context hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_hash: Option<String>,
    /// Public nonce (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_nonce: Option<String>,
    /// Partial signature (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partial_signature: Option<String>,
    /// Attested peer id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_id: Option<String>,
    /// Expiry of an attestation, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    /// Free-form detail (recovery).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Signature format of the session (`bip340`, `lotus`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// The session's signer keys (hex), in context order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_keys: Option<Vec<String>>,
    /// The session's tweaks in order: `plain:<hex>`, `xonly:<hex>`, `taproot` or
    /// `taproot:<merkle root hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tweaks: Option<Vec<String>>,
    /// Aggregate key before tweaks (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_key: Option<String>,
    /// Output key after every tweak (hex): the key the final signature verifies under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_key: Option<String>,
    /// A pooled nonce (one-round signing), issued without a message; on a partial signature:
    /// it was made with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooled: Option<bool>,
    /// The message (hex), when at most [`INLINE_MESSAGE_BYTES`] long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// SHA-256 of the message (hex), when longer than [`INLINE_MESSAGE_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_sha256: Option<String>,
    /// Message length, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_len: Option<usize>,
}

/// Messages up to this length are journaled in full; longer ones by SHA-256 and length.
pub const INLINE_MESSAGE_BYTES: usize = 256;

/// One journal record: what a line's body holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// Sequence number, from 1.
    pub seq: u64,
    /// Wall-clock time of the append, ms since the Unix epoch.
    pub time_ms: i64,
    /// What the record is about.
    pub kind: RecordKind,
    /// Chain hash of the previous record (hex).
    pub prev: String,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

type Body = Record;

/// Journal errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// File system error.
    #[error("audit journal {path}: {source}")]
    Io {
        /// File.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// Another process holds the journal: two signers must never share one journal (or one key
    /// set), since each would hand out nonces the other does not know of.
    #[error(
        "audit journal {path} is locked by another process (is a second signer running on this journal?); refusing to start"
    )]
    Locked {
        /// File.
        path: String,
    },
    /// The chain is broken.
    #[error("audit journal {path}: line {line}: {reason}")]
    Broken {
        /// File.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

/// Result of verifying a journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Whole records.
    pub records: u64,
    /// Hash of the last whole record (hex), or the genesis value.
    pub head: String,
    /// Bytes of a torn final line, if any.
    pub torn_tail: Option<usize>,
    /// Byte length of the whole records.
    pub valid_len: u64,
}

const GENESIS: [u8; 32] = [0u8; 32];

fn chain(prev: &[u8; 32], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// Verify a journal's bytes.
///
/// # Errors
/// [`JournalError::Broken`] at the first line that does not continue the chain.
pub fn verify_bytes(path: &str, data: &[u8]) -> Result<Report, JournalError> {
    walk(path, data, |_| {})
}

/// Verify a journal's bytes and return its whole records in order.
///
/// # Errors
/// [`JournalError::Broken`] at the first line that does not continue the chain.
pub fn records(path: &str, data: &[u8]) -> Result<(Report, Vec<Record>), JournalError> {
    let mut out = Vec::new();
    let report = walk(path, data, |r| out.push(r))?;
    Ok((report, out))
}

fn walk(path: &str, data: &[u8], mut each: impl FnMut(Record)) -> Result<Report, JournalError> {
    let mut prev = GENESIS;
    let mut seq = 0u64;
    let mut offset = 0usize;
    let broken = |line: usize, reason: String| JournalError::Broken {
        path: path.to_string(),
        line,
        reason,
    };
    let mut rest = data;
    let mut line_no = 0usize;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        line_no += 1;
        let (line, tail) = rest.split_at(nl);
        rest = tail.get(1..).unwrap_or(&[]);
        let text = std::str::from_utf8(line).map_err(|_| broken(line_no, "not UTF-8".into()))?;
        let (body, hash) = text
            .rsplit_once('\t')
            .ok_or_else(|| broken(line_no, "no chain hash".into()))?;
        let parsed: Body = serde_json::from_str(body)
            .map_err(|e| broken(line_no, format!("unreadable record: {e}")))?;
        if parsed.seq != seq + 1 {
            return Err(broken(
                line_no,
                format!(
                    "sequence {} follows {seq} (record removed or reordered)",
                    parsed.seq
                ),
            ));
        }
        if parsed.prev != hex::encode(prev) {
            return Err(broken(
                line_no,
                "previous-hash link does not match (record removed, reordered or edited)".into(),
            ));
        }
        let expected = chain(&prev, body.as_bytes());
        if hash != hex::encode(expected) {
            return Err(broken(
                line_no,
                "chain hash does not match the record (record edited)".into(),
            ));
        }
        prev = expected;
        seq = parsed.seq;
        offset += nl + 1;
        each(parsed);
    }
    Ok(Report {
        records: seq,
        head: hex::encode(prev),
        torn_tail: (!rest.is_empty()).then_some(rest.len()),
        valid_len: offset as u64,
    })
}

/// Verify a journal file.
///
/// # Errors
/// I/O errors and [`JournalError::Broken`].
pub fn verify_file(path: &Path) -> Result<Report, JournalError> {
    let p = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| JournalError::Io {
        path: p.clone(),
        source,
    })?;
    verify_bytes(&p, &data)
}

struct Inner {
    file: std::fs::File,
    prev: [u8; 32],
    seq: u64,
    /// Length of the whole records: a failed append is cut back to it.
    len: u64,
}

/// An open journal. Appends are serialised (the chain needs an order) and fsynced.
pub struct Journal {
    path: PathBuf,
    inner: Mutex<Inner>,
    /// Set when an append failed: the signer releases nothing until it is restarted and the
    /// operator has looked (readiness reports it).
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

/// Wall-clock time, ms since the Unix epoch (0 before it).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Journal {
    /// Open (or create) the journal: verify the whole chain, cut off and record a torn tail,
    /// then journal a `start` record.
    ///
    /// # Errors
    /// A broken chain refuses the start: the operator must look at it.
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        Self::open_replaying(path, |_| {})
    }

    /// [`Journal::open`], handing every whole record found to `each` (in order) while the
    /// chain is verified: how the signer refills its rate windows after a restart.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_replaying(path: &Path, each: impl FnMut(Record)) -> Result<Self, JournalError> {
        let p = path.display().to_string();
        let io = |source| JournalError::Io {
            path: p.clone(),
            source,
        };
        let created = !path.exists();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io)?;
        // Exclusive for the life of the process (released when the file is closed, also on a
        // crash): a second signer on the same journal refuses to start.
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(JournalError::Locked { path: p.clone() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        if created {
            file.sync_all().map_err(io)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
        }
        let mut data = Vec::new();
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.read_to_end(&mut data).map_err(io)?;
        let report = walk(&p, &data, each)?;
        let mut prev = GENESIS;
        hex::decode_to_slice(&report.head, &mut prev).map_err(|_| JournalError::Broken {
            path: p.clone(),
            line: 0,
            reason: "bad head".into(),
        })?;
        let journal = Journal {
            broken: std::sync::Arc::default(),
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file,
                prev,
                seq: report.records,
                len: report.valid_len,
            }),
        };
        if let Some(torn) = report.torn_tail {
            let tail = data
                .get(usize::try_from(report.valid_len).unwrap_or(usize::MAX)..)
                .unwrap_or(&[]);
            let digest = hex::encode(Sha256::digest(tail));
            tracing::warn!(journal = %p, bytes = torn, sha256 = %digest, "audit journal ends in a torn record (crash mid-write); cutting it off");
            {
                let inner = journal.lock();
                inner.file.set_len(report.valid_len).map_err(io)?;
                inner.file.sync_all().map_err(io)?;
            }
            journal.append(
                RecordKind::RecoveredTornTail,
                Event {
                    detail: Some(format!("cut {torn} bytes, sha256 {digest}")),
                    ..Event::default()
                },
            )?;
        }
        journal.append(
            RecordKind::Start,
            Event {
                detail: Some(format!("head {} at seq {}", report.head, report.records)),
                ..Event::default()
            },
        )?;
        Ok(journal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Append one record and fsync it. Blocking: call from `spawn_blocking` in async code.
    ///
    /// # Errors
    /// I/O errors; the caller must then not release what the record was about.
    pub fn append(&self, kind: RecordKind, event: Event) -> Result<u64, JournalError> {
        let p = self.path.display().to_string();
        let mut inner = self.lock();
        let body = Body {
            seq: inner.seq + 1,
            time_ms: now_ms(),
            kind,
            prev: hex::encode(inner.prev),
            event,
        };
        let body = serde_json::to_string(&body).map_err(|e| JournalError::Io {
            path: p.clone(),
            source: std::io::Error::other(e),
        })?;
        let hash = chain(&inner.prev, body.as_bytes());
        let line = format!("{body}\t{}\n", hex::encode(hash));
        if let Err(source) = inner
            .file
            .write_all(line.as_bytes())
            .and_then(|()| inner.file.sync_data())
        {
            // Never leave a partial line for the next record to extend.
            let _ = inner
                .file
                .set_len(inner.len)
                .and_then(|()| inner.file.sync_data());
            self.broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
            return Err(JournalError::Io { path: p, source });
        }
        inner.prev = hash;
        inner.seq += 1;
        inner.len += line.len() as u64;
        Ok(inner.seq)
    }

    /// A flag that turns true once an append has failed (for readiness).
    pub fn broken_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.broken.clone()
    }

    /// Sequence number of the last record.
    pub fn head_seq(&self) -> u64 {
        self.lock().seq
    }
}
