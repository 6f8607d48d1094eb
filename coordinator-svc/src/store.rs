//! The durable store: an embedded redb database (no server), one table of session records
//! (phase, contributions, sequence windows, our sent messages, failover state, final
//! signature). Every write is its own transaction committed with immediate durability (fsync)
//! before the caller goes on: a completed signature is on disk before completion is reported.
//!
//! Retention: a finished session (ended, its failover over) is indexed by the time it finished
//! (`finished_at`), so that a restart loads only unfinished and recently finished sessions
//! ([`Store::live`]) and [`Store::prune`] deletes those past the retention (90 days by default)
//! without decoding every record.

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sessions");
const BANS: TableDefinition<&str, &[u8]> = TableDefinition::new("bans");
const FINISHED: TableDefinition<&[u8], i64> = TableDefinition::new("finished_at");

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
    /// When the session finished (ended, and its failover over), ms; None while it runs (and
    /// in records written before this field existed, which are never pruned).
    #[serde(default)]
    pub finished_at_ms: Option<i64>,
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
        Self::init(Database::create(path).map_err(dberr)?)
    }

    /// Open or create the database on another storage (crash-consistency tests run it on a
    /// disk that loses every write after the last fsync).
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn with_backend(backend: impl redb::StorageBackend) -> Result<Self, StoreError> {
        Self::init(
            Database::builder()
                .create_with_backend(backend)
                .map_err(dberr)?,
        )
    }

    fn init(db: Database) -> Result<Self, StoreError> {
        let txn = db.begin_write().map_err(dberr)?;
        txn.open_table(SESSIONS).map_err(dberr)?;
        txn.open_table(BANS).map_err(dberr)?;
        txn.open_table(FINISHED).map_err(dberr)?;
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
            // The index follows the record (a record rewritten without a finish time leaves
            // it: found by the power-cut test, where a stale entry made `prune` delete a live
            // session).
            let mut f = txn.open_table(FINISHED).map_err(dberr)?;
            match record.finished_at_ms {
                Some(at) => f.insert(id.as_slice(), at).map_err(dberr)?,
                None => f.remove(id.as_slice()).map_err(dberr)?,
            };
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
        self.live(i64::MIN)
    }

    /// What a restart needs: every session except those finished before `finished_since_ms`
    /// (those stay on disk, readable with [`Store::get`], until pruned).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn live(
        &self,
        finished_since_ms: i64,
    ) -> Result<Vec<([u8; 16], SessionRecord)>, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(SESSIONS).map_err(dberr)?;
        let f = txn.open_table(FINISHED).map_err(dberr)?;
        let mut out = Vec::new();
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            if f.get(k.value())
                .map_err(dberr)?
                .is_some_and(|at| at.value() < finished_since_ms)
            {
                continue;
            }
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

    /// Delete one session durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete(&self, id: &[u8; 16]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            txn.open_table(SESSIONS)
                .map_err(dberr)?
                .remove(id.as_slice())
                .map_err(dberr)?;
            txn.open_table(FINISHED)
                .map_err(dberr)?
                .remove(id.as_slice())
                .map_err(dberr)?;
        }
        txn.commit().map_err(dberr)
    }

    /// Delete up to `limit` sessions finished before `before_ms`, in one durable transaction.
    /// Returns how many were deleted.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn prune(&self, before_ms: i64, limit: usize) -> Result<usize, StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        let n;
        {
            let mut f = txn.open_table(FINISHED).map_err(dberr)?;
            let mut t = txn.open_table(SESSIONS).map_err(dberr)?;
            let mut old = Vec::new();
            for entry in f.iter().map_err(dberr)? {
                let (k, at) = entry.map_err(dberr)?;
                if at.value() < before_ms {
                    old.push(k.value().to_vec());
                    if old.len() >= limit {
                        break;
                    }
                }
            }
            n = old.len();
            for k in old {
                f.remove(k.as_slice()).map_err(dberr)?;
                t.remove(k.as_slice()).map_err(dberr)?;
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(n)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn record(finished_at_ms: Option<i64>) -> SessionRecord {
        SessionRecord {
            announce: String::new(),
            phase: if finished_at_ms.is_some() {
                "COMPLETE"
            } else {
                "NONCE_EXCHANGE"
            }
            .into(),
            locally_joined: true,
            joined: vec![true, true],
            nonces: vec![None, None],
            psigs: vec![None, None],
            signature: None,
            abort: None,
            last_seq: Vec::new(),
            next_seq: Vec::new(),
            sent: Vec::new(),
            failover: FailoverRecord::default(),
            finished_at_ms,
        }
    }

    #[test]
    fn a_restart_loads_only_live_sessions_and_pruning_deletes_only_expired_ones() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let ids: Vec<[u8; 16]> = (0..4u8).map(|b| [b; 16]).collect();
        // Running, finished long ago, finished an hour ago, finished just now.
        let finished = [None, Some(1_000), Some(100_000), Some(190_000)];
        for (id, f) in ids.iter().zip(finished) {
            store.put(id, &record(f)).unwrap_or_else(|e| panic!("{e}"));
        }
        drop(store);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        let live: Vec<[u8; 16]> = store
            .live(150_000)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(live, vec![ids[0], ids[3]]);
        // Not loaded, still readable.
        assert!(
            store
                .get(&ids[1])
                .unwrap_or_else(|e| panic!("{e}"))
                .is_some()
        );
        assert_eq!(store.prune(150_000, 1).unwrap_or_else(|e| panic!("{e}")), 1);
        assert_eq!(
            store.prune(150_000, 10).unwrap_or_else(|e| panic!("{e}")),
            1
        );
        assert_eq!(
            store.prune(150_000, 10).unwrap_or_else(|e| panic!("{e}")),
            0
        );
        for (i, id) in ids.iter().enumerate() {
            let kept = store.get(id).unwrap_or_else(|e| panic!("{e}")).is_some();
            assert_eq!(kept, i == 0 || i == 3, "session {i}");
        }
    }
}
