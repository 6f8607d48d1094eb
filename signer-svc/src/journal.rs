//! The audit journal: one line per event (nonce issued, partial signature produced, peer
//! attested, signer started, torn tail recovered), append-only, each line carrying the SHA-256
//! chain hash `H(previous hash || body)`, written and fsynced before the reply leaves.
//!
//! Line format: `<body JSON>\t<chain hash hex>\n`. The body holds a sequence number (from 1,
//! consecutive) and the previous hash, so an edited, removed or reordered line breaks the chain
//! at that line. A torn tail (a crash mid-write) is reported by `verify`; on start the signer
//! cuts it off, fsyncs, and journals a `recovered_torn_tail` record naming its length and hash,
//! so the journal is never silently extended past a torn record. A torn tail is a final line
//! without its newline, or everything from the first line holding a zero byte on: records never
//! hold one (JSON escapes control characters), and a power cut during a group commit can leave
//! several unsynced lines on disk with a hole of zeros in any of them. Every byte from such a
//! hole on was written after the last completed fsync, so none of it was acknowledged.
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
    /// Bytes of a torn tail, if any: a final line without its newline, or everything from the
    /// first line holding a zero byte (a power cut's hole) on.
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
    // From the line of the first zero byte on: a hole left by a power cut (see the module).
    let whole = data.iter().position(|b| *b == 0).map_or(data, |z| {
        let start = data
            .get(..z)
            .and_then(|d| d.iter().rposition(|b| *b == b'\n'));
        data.get(..start.map_or(0, |n| n + 1)).unwrap_or(&[])
    });
    let mut rest = whole;
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
        torn_tail: (offset < data.len()).then_some(data.len() - offset),
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

/// Where the journal's bytes go: the journal file in production, a model of a disk that
/// keeps only what was synced in the power-cut tests. Appends only; `set_len` cuts back a
/// failed batch.
pub trait JournalFile: Send + 'static {
    /// Append bytes at the end.
    ///
    /// # Errors
    /// I/O errors.
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Make everything written so far durable.
    ///
    /// # Errors
    /// I/O errors.
    fn sync_data(&mut self) -> std::io::Result<()>;
    /// Cut the file back to `len` bytes.
    ///
    /// # Errors
    /// I/O errors.
    fn set_len(&mut self, len: u64) -> std::io::Result<()>;
}

impl JournalFile for std::fs::File {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        std::fs::File::sync_data(self)
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        std::fs::File::set_len(self, len)
    }
}

/// Who waits for a record to be durable.
enum Waiter {
    Blocking(std::sync::mpsc::SyncSender<Result<u64, JournalError>>),
    Async(tokio::sync::oneshot::Sender<Result<u64, JournalError>>),
}

impl Waiter {
    fn send(self, r: Result<u64, JournalError>) {
        // A waiter that went away (a cancelled request) needs no answer; its record is written
        // all the same.
        match self {
            Waiter::Blocking(tx) => {
                let _ = tx.send(r);
            }
            Waiter::Async(tx) => {
                let _ = tx.send(r);
            }
        }
    }
}

/// The chain as queued and as durable, and the batch the writer takes next.
struct Queue {
    /// Chain hash and sequence number of the last record queued.
    prev: [u8; 32],
    seq: u64,
    /// Chain hash and sequence number of the last record fsynced.
    durable_prev: [u8; 32],
    durable_seq: u64,
    /// Lines queued and not yet taken by the writer, with who waits for each.
    lines: Vec<u8>,
    waiting: Vec<(u64, Waiter)>,
    /// Set by `Drop`: the writer writes what is queued, then stops.
    closing: bool,
    /// The writer thread died (a panic, a bug): nothing queued would ever be answered.
    dead: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer sleeps on it while nothing is queued.
    wake: std::sync::Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An open journal. Appends are chained in the order they are queued and made durable by group
/// commit: one writer thread writes every record queued while the previous fsync ran, fsyncs
/// once, then answers each of them. No append is answered before its bytes are durable; when a
/// write or fsync fails, the file is cut back to the last durable record and every record
/// queued since fails (each chained on one that was lost).
pub struct Journal {
    path: PathBuf,
    shared: std::sync::Arc<Shared>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Set when an append failed: the signer releases nothing until it is restarted and the
    /// operator has looked (readiness reports it).
    broken: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Journal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("path", &self.path).finish()
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(w) = self.writer.take() {
            // The writer answers what is queued and closes the file (its lock with it).
            let _ = w.join();
        }
    }
}

/// One record's line (`<body JSON>\t<chain hash hex>\n`) and chain hash.
fn line(
    path: &str,
    prev: &[u8; 32],
    seq: u64,
    kind: RecordKind,
    event: Event,
) -> Result<(Vec<u8>, [u8; 32]), JournalError> {
    let body = Body {
        seq,
        time_ms: now_ms(),
        kind,
        prev: hex::encode(prev),
        event,
    };
    let body = serde_json::to_string(&body).map_err(|e| JournalError::Io {
        path: path.to_string(),
        source: std::io::Error::other(e),
    })?;
    let hash = chain(prev, body.as_bytes());
    Ok((
        format!("{body}\t{}\n", hex::encode(hash)).into_bytes(),
        hash,
    ))
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
        Self::open_on(path, each, |f| f)
    }

    /// [`Journal::open_replaying`], with the appends after the opening going through `wrap`
    /// of the file: how the power-cut tests see which bytes were synced when.
    ///
    /// # Errors
    /// As [`Journal::open`].
    pub fn open_on<F: JournalFile>(
        path: &Path,
        each: impl FnMut(Record),
        wrap: impl FnOnce(std::fs::File) -> F,
    ) -> Result<Self, JournalError> {
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
        let mut seq = report.records;
        let mut len = report.valid_len;
        let mut opening = Vec::new();
        if let Some(torn) = report.torn_tail {
            let tail = data
                .get(usize::try_from(report.valid_len).unwrap_or(usize::MAX)..)
                .unwrap_or(&[]);
            let digest = hex::encode(Sha256::digest(tail));
            tracing::warn!(journal = %p, bytes = torn, sha256 = %digest, "audit journal ends in a torn record (crash mid-write); cutting it off");
            file.set_len(report.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(io)?;
            opening.push((
                RecordKind::RecoveredTornTail,
                Event {
                    detail: Some(format!("cut {torn} bytes, sha256 {digest}")),
                    ..Event::default()
                },
            ));
        }
        opening.push((
            RecordKind::Start,
            Event {
                detail: Some(format!("head {} at seq {}", report.head, report.records)),
                ..Event::default()
            },
        ));
        // Written here, before the writer starts, so that opening never waits on a thread.
        for (kind, event) in opening {
            let (bytes, hash) = line(&p, &prev, seq + 1, kind, event)?;
            Write::write_all(&mut file, &bytes)
                .and_then(|()| file.sync_data())
                .map_err(io)?;
            prev = hash;
            seq += 1;
            len += bytes.len() as u64;
        }
        let shared = std::sync::Arc::new(Shared {
            queue: Mutex::new(Queue {
                prev,
                seq,
                durable_prev: prev,
                durable_seq: seq,
                lines: Vec::new(),
                waiting: Vec::new(),
                closing: false,
                dead: false,
            }),
            wake: std::sync::Condvar::new(),
        });
        let broken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (shared, broken, path) = (shared.clone(), broken.clone(), p.clone());
            let file = wrap(file);
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || write_batches(&shared, file, len, &broken, &path))
                .map_err(io)?
        };
        Ok(Journal {
            path: path.to_path_buf(),
            shared,
            writer: Some(writer),
            broken,
        })
    }

    /// Chain one record onto the queue for the writer.
    fn queue(&self, kind: RecordKind, event: Event, waiter: Waiter) {
        let mut q = self.shared.lock();
        if q.dead {
            // Nobody would ever answer a record queued now.
            drop(q);
            return waiter.send(Err(self.stopped()));
        }
        match line(
            &self.path.display().to_string(),
            &q.prev,
            q.seq + 1,
            kind,
            event,
        ) {
            Ok((bytes, hash)) => {
                q.seq += 1;
                q.prev = hash;
                q.lines.extend_from_slice(&bytes);
                let seq = q.seq;
                q.waiting.push((seq, waiter));
                drop(q);
                self.shared.wake.notify_one();
            }
            Err(e) => {
                drop(q);
                waiter.send(Err(e));
            }
        }
    }

    /// Append one record and wait until it is durable (fsynced, possibly together with
    /// others). Blocks the calling thread: async code uses [`Journal::append_async`].
    ///
    /// # Errors
    /// I/O errors; the caller must then not release what the record was about.
    pub fn append(&self, kind: RecordKind, event: Event) -> Result<u64, JournalError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.queue(kind, event, Waiter::Blocking(tx));
        rx.recv().unwrap_or_else(|_| Err(self.stopped()))
    }

    /// [`Journal::append`] for async code: resolves once the record is durable.
    ///
    /// # Errors
    /// As [`Journal::append`].
    pub async fn append_async(&self, kind: RecordKind, event: Event) -> Result<u64, JournalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(kind, event, Waiter::Async(tx));
        rx.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// The writer is gone (it never returns early; a panic would be a bug): readiness must
    /// say so, as for a failed write.
    fn stopped(&self) -> JournalError {
        writer_stopped(&self.broken, &self.path.display().to_string())
    }

    /// A flag that turns true once an append has failed (for readiness).
    pub fn broken_flag(&self) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
        self.broken.clone()
    }

    /// Sequence number of the last durable record.
    pub fn head_seq(&self) -> u64 {
        self.shared.lock().durable_seq
    }
}

/// If the writer thread panics (a bug), fail what is queued and everything queued later
/// instead of leaving it waiting forever, and mark the journal broken (readiness).
struct Dying<'a> {
    shared: &'a Shared,
    broken: &'a std::sync::atomic::AtomicBool,
    path: &'a str,
}

impl Drop for Dying<'_> {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.broken
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let waiting = {
            let mut q = self.shared.lock();
            q.dead = true;
            q.lines.clear();
            std::mem::take(&mut q.waiting)
        };
        for (_, w) in waiting {
            w.send(Err(writer_stopped(self.broken, self.path)));
        }
    }
}

/// The error of an append the writer thread will never answer; marks the journal broken
/// (readiness), as a failed write does.
fn writer_stopped(broken: &std::sync::atomic::AtomicBool, path: &str) -> JournalError {
    broken.store(true, std::sync::atomic::Ordering::Relaxed);
    JournalError::Io {
        path: path.to_string(),
        source: std::io::Error::other("the journal writer stopped"),
    }
}

/// The writer thread: take every queued line, write them, fsync once, answer them; until the
/// journal is dropped and its queue is empty. `len` is the length of the durable records.
fn write_batches(
    shared: &Shared,
    mut file: impl JournalFile,
    mut len: u64,
    broken: &std::sync::atomic::AtomicBool,
    path: &str,
) {
    let _dying = Dying {
        shared,
        broken,
        path,
    };
    loop {
        let (bytes, waiters, seq, prev) = {
            let mut q = shared.lock();
            while q.lines.is_empty() && !q.closing {
                q = shared
                    .wake
                    .wait(q)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            if q.lines.is_empty() {
                return;
            }
            (
                std::mem::take(&mut q.lines),
                std::mem::take(&mut q.waiting),
                q.seq,
                q.prev,
            )
        };
        match file.write_all(&bytes).and_then(|()| file.sync_data()) {
            Ok(()) => {
                len += bytes.len() as u64;
                {
                    let mut q = shared.lock();
                    q.durable_seq = seq;
                    q.durable_prev = prev;
                }
                for (seq, w) in waiters {
                    w.send(Ok(seq));
                }
            }
            Err(source) => {
                // Never leave a partial line for the next record to extend.
                let _ = file.set_len(len).and_then(|()| file.sync_data());
                broken.store(true, std::sync::atomic::Ordering::Relaxed);
                let later = {
                    let mut q = shared.lock();
                    q.lines.clear();
                    q.seq = q.durable_seq;
                    q.prev = q.durable_prev;
                    std::mem::take(&mut q.waiting)
                };
                tracing::error!(journal = %path, records = waiters.len() + later.len(), error = %source, "audit journal write failed; the batch and everything queued after it fail");
                for (_, w) in waiters.into_iter().chain(later) {
                    w.send(Err(JournalError::Io {
                        path: path.to_string(),
                        source: std::io::Error::new(source.kind(), source.to_string()),
                    }));
                }
            }
        }
    }
}
