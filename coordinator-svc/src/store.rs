//! The durable store: an embedded redb database (no server), one table of session records
//! (phase, contributions, sequence windows, our sent messages, failover state, final
//! signature). Every write is its own transaction committed with immediate durability (fsync)
//! before the caller goes on: a completed signature is on disk before completion is reported.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");

/// A persisted ban.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRecord {
    /// Until (ms) for a graylisting; None = permanent.
    pub until_ms: Option<i64>,
    /// Why.
    pub reason: String,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database failed.
    #[error("store: {0}")]
    Db(String),
    /// A record does not decode.
    #[error("store: corrupt record for session {0}: {1}")]
    Corrupt(String, String),
}

fn dberr<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Db(e.to_string())
}

/// Failover progress of a completed session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    /// Failover attempts so far (0 = the elected coordinator is responsible).
    pub attempt: usize,
    /// When the responsible coordinator's time runs out, ms (None = not running).
    pub deadline_ms: Option<i64>,
    /// Who confirmed the broadcast (hex key) and their reference.
    pub confirmed: Option<(String, String)>,
    /// Every coordinator failed.
    pub exhausted: bool,
}

/// Everything needed to rebuild a session after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The signed announcement envelope, hex (rebuilds context, election, expiry).
    pub announce: String,
    /// Phase name.
    pub phase: String,
    /// Whether the local application joined.
    pub locally_joined: bool,
    /// Joined flags by index.
    pub joined: Vec<bool>,
    /// Public nonces by index, hex.
    pub nonces: Vec<Option<String>>,
    /// Verified partial signatures by index, hex.
    pub psigs: Vec<Option<String>>,
    /// Final signature, hex.
    pub signature: Option<String>,
    /// Abort: code, reason, culprit keys (hex).
    pub abort: Option<(String, String, Vec<String>)>,
    /// Last accepted inbound sequence per key (hex).
    pub last_seq: Vec<(String, u64)>,
    /// Next outbound sequence per local key (hex).
    pub next_seq: Vec<(String, u64)>,
    /// Our envelopes, hex, in order (re-sent to participants that reconnect).
    pub sent: Vec<String>,
    /// Failover.
    pub failover: FailoverRecord,
}

/// The database.
#[derive(Debug)]
pub struct Store {
    db: Database,
}

impl Store {
    /// Open or create the database file.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(dberr)?;
        let txn = db.begin_write().map_err(dberr)?;
        txn.open_table(SESSIONS).map_err(dberr)?;
        txn.open_table(BANS).map_err(dberr)?;
        txn.commit().map_err(dberr)?;
        Ok(Store { db })
    }

    /// Write one session record durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put(&self, id: &[u8; 16], record: &SessionRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(dberr)?;
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = txn.open_table(SESSIONS).map_err(dberr)?;
            t.insert(id.as_slice(), bytes.as_slice()).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    }

    /// One record.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn get(&self, id: &[u8; 16]) -> Result<Option<SessionRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(SESSIONS).map_err(dberr)?;
        match t.get(id.as_slice()).map_err(dberr)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(v.value())
                .map(Some)
                .map_err(|e| StoreError::Corrupt(hex::encode(id), e.to_string())),
        }
    }

    /// Every record.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn all(&self) -> Result<Vec<([u8; 16], SessionRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(SESSIONS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let id: [u8; 16] = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt(hex::encode(k.value()), "key".into()))?;
            let rec = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(hex::encode(id), e.to_string()))?;
            out.push((id, rec));
        }
        Ok(out)
    }

    /// Store (or replace) a ban durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_ban(&self, peer: &str, ban: &BanRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(ban).map_err(dberr)?;
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = txn.open_table(BANS).map_err(dberr)?;
            t.insert(peer, bytes.as_slice()).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    }

    /// Remove a ban durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn remove_ban(&self, peer: &str) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let mut t = txn.open_table(BANS).map_err(dberr)?;
            t.remove(peer).map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    }

    /// Every ban.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn bans(&self) -> Result<Vec<(String, BanRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(BANS).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            let ban = serde_json::from_slice(v.value())
                .map_err(|e| StoreError::Corrupt(k.value().to_string(), e.to_string()))?;
            out.push((k.value().to_string(), ban));
        }
        Ok(out)
    }
}
