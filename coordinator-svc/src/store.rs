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
/// Sessions by creation time then id ([`created_key`]): `ListSessions` pages, newest first.
const CREATED: TableDefinition<&[u8], ()> = TableDefinition::new("created");

/// A position in the `created` index: creation time (ms, order-preserving) then session id.
pub type CreatedKey = [u8; 24];

/// A page of stored sessions and where the next one starts (None: nothing older).
pub type StoredPage = (Vec<([u8; 16], SessionRecord)>, Option<CreatedKey>);

/// The `created` index key of a record.
pub fn created_key(id: &[u8; 16], record: &SessionRecord) -> CreatedKey {
    let mut k = [0u8; 24];
    // Flipping the sign bit makes big-endian bytes sort like the signed time.
    let t = (record.created_at_ms.unwrap_or(0) as u64) ^ (1 << 63);
    k[..8].copy_from_slice(&t.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

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
    /// Partial signatures by index, hex (checked when all are in).
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
    /// When the session was created, ms (the `created` index; None in records written before
    /// this field existed, which list as the oldest).
    #[serde(default)]
    pub created_at_ms: Option<i64>,
    /// The request that created the session here (see `Session::request_id`).
    #[serde(default)]
    pub request_id: Option<String>,
}

fn decode(key: &[u8], value: &[u8]) -> Result<([u8; 16], SessionRecord), StoreError> {
    let id: [u8; 16] = key
        .try_into()
        .map_err(|_| StoreError::Corrupt(hex::encode(key), "key".into()))?;
    let rec = serde_json::from_slice(value)
        .map_err(|e| StoreError::Corrupt(hex::encode(id), e.to_string()))?;
    Ok((id, rec))
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
        Self::open_with_cache(path, 64 * 1024 * 1024)
    }

    /// [`Store::open`] with a page cache of `cache_bytes`.
    ///
    /// # Errors
    /// [`StoreError::Db`].
    pub fn open_with_cache(path: &Path, cache_bytes: usize) -> Result<Self, StoreError> {
        Self::init(
            Database::builder()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(dberr)?,
        )
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
        {
            // Databases written before the index existed get it once.
            let mut c = txn.open_table(CREATED).map_err(dberr)?;
            if redb::ReadableTableMetadata::len(&c).map_err(dberr)? == 0 {
                let t = txn.open_table(SESSIONS).map_err(dberr)?;
                for entry in t.iter().map_err(dberr)? {
                    let (k, v) = entry.map_err(dberr)?;
                    let (id, rec) = decode(k.value(), v.value())?;
                    c.insert(created_key(&id, &rec).as_slice(), ())
                        .map_err(dberr)?;
                }
            }
        }
        txn.commit().map_err(dberr)?;
        Ok(Store { db })
    }

    /// Write one session record durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put(&self, id: &[u8; 16], record: &SessionRecord) -> Result<(), StoreError> {
        self.put_many(&[(*id, record)])
    }

    /// Write several session records in one durable transaction (group commit: one fsync for
    /// all of them). All are on disk when this returns `Ok`, none when the transaction did not
    /// commit.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn put_many(&self, records: &[([u8; 16], &SessionRecord)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        for (id, record) in records {
            Self::write(&txn, id, record)?;
        }
        txn.commit().map_err(dberr)
    }

    fn write(
        txn: &redb::WriteTransaction,
        id: &[u8; 16],
        record: &SessionRecord,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(dberr)?;
        {
            let mut t = txn.open_table(SESSIONS).map_err(dberr)?;
            let new = t
                .insert(id.as_slice(), bytes.as_slice())
                .map_err(dberr)?
                .is_none();
            if new {
                txn.open_table(CREATED)
                    .map_err(dberr)?
                    .insert(created_key(id, record).as_slice(), ())
                    .map_err(dberr)?;
            }
            // The index follows the record (a record rewritten without a finish time leaves
            // it: found by the power-cut test, where a stale entry made `prune` delete a live
            // session).
            let mut f = txn.open_table(FINISHED).map_err(dberr)?;
            match record.finished_at_ms {
                Some(at) => f.insert(id.as_slice(), at).map_err(dberr)?,
                None => f.remove(id.as_slice()).map_err(dberr)?,
            };
        }
        Ok(())
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
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    /// Every session except those finished before `finished_since_ms`, one record at a time
    /// (a restart keeps only what it needs of each: the whole list at once held every recent
    /// record in memory together).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn scan_live(
        &self,
        finished_since_ms: i64,
        mut f: impl FnMut([u8; 16], SessionRecord),
    ) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let t = txn.open_table(SESSIONS).map_err(dberr)?;
        let done = txn.open_table(FINISHED).map_err(dberr)?;
        for entry in t.iter().map_err(dberr)? {
            let (k, v) = entry.map_err(dberr)?;
            if done
                .get(k.value())
                .map_err(dberr)?
                .is_some_and(|at| at.value() < finished_since_ms)
            {
                continue;
            }
            let (id, rec) = decode(k.value(), v.value())?;
            f(id, rec);
        }
        Ok(())
    }

    /// A page of sessions, newest first: those created before `before` (None: from the
    /// newest) for which `keep` holds, at most `limit`, looking at no more than `max_scan`
    /// records. Returns the page and where the next one starts (None: nothing older).
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn page(
        &self,
        before: Option<CreatedKey>,
        limit: usize,
        max_scan: usize,
        mut keep: impl FnMut(&[u8; 16], &SessionRecord) -> bool,
    ) -> Result<StoredPage, StoreError> {
        let txn = self.db.begin_read().map_err(dberr)?;
        let c = txn.open_table(CREATED).map_err(dberr)?;
        let t = txn.open_table(SESSIONS).map_err(dberr)?;
        let range = match &before {
            Some(b) => c.range::<&[u8]>(..b.as_slice()).map_err(dberr)?,
            None => c.range::<&[u8]>(..).map_err(dberr)?,
        };
        let mut out = Vec::new();
        let mut last = None;
        for (scanned, entry) in range.rev().enumerate() {
            let (k, _) = entry.map_err(dberr)?;
            let key: CreatedKey = k
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt(hex::encode(k.value()), "index key".into()))?;
            if out.len() >= limit || scanned >= max_scan {
                return Ok((out, last));
            }
            last = Some(key);
            let Some(v) = t.get(&key[8..]).map_err(dberr)? else {
                continue;
            };
            let (id, rec) = decode(&key[8..], v.value())?;
            if keep(&id, &rec) {
                out.push((id, rec));
            }
        }
        Ok((out, None))
    }

    /// Delete one session durably.
    ///
    /// # Errors
    /// [`StoreError`].
    pub fn delete(&self, id: &[u8; 16]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(dberr)?;
        {
            let old = txn
                .open_table(SESSIONS)
                .map_err(dberr)?
                .remove(id.as_slice())
                .map_err(dberr)?
                .map(|v| decode(id, v.value()));
            if let Some(old) = old {
                let (_, rec) = old?;
                txn.open_table(CREATED)
                    .map_err(dberr)?
                    .remove(created_key(id, &rec).as_slice())
                    .map_err(dberr)?;
            }
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
            let mut c = txn.open_table(CREATED).map_err(dberr)?;
            for k in old {
                f.remove(k.as_slice()).map_err(dberr)?;
                let rec = t
                    .remove(k.as_slice())
                    .map_err(dberr)?
                    .map(|v| decode(&k, v.value()));
                if let Some(rec) = rec {
                    let (id, rec) = rec?;
                    c.remove(created_key(&id, &rec).as_slice()).map_err(dberr)?;
                }
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
            created_at_ms: None,
            request_id: None,
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
        let mut scanned = Vec::new();
        store
            .scan_live(150_000, |id, _| scanned.push(id))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(scanned, live, "one at a time, the same records");
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

    fn ids_of(page: &[([u8; 16], SessionRecord)]) -> Vec<u8> {
        page.iter().map(|(id, _)| id[0]).collect()
    }

    #[test]
    fn pages_run_newest_first_and_the_index_follows_deletes_prunes_and_old_databases() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("s.redb");
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        // Sessions 0..6 created at 10, 20, .. (5 twice: same time, ordered by id), the even
        // ones finished long ago.
        for b in 0..7u8 {
            let mut r = record((b % 2 == 0).then_some(1_000));
            r.created_at_ms = Some(10 * i64::from(b.min(5)));
            store.put(&[b; 16], &r).unwrap_or_else(|e| panic!("{e}"));
            // A rewrite keeps one index entry.
            store.put(&[b; 16], &r).unwrap_or_else(|e| panic!("{e}"));
        }
        let all = |store: &Store| {
            let mut out = Vec::new();
            let mut before = None;
            loop {
                let (page, next) = store
                    .page(before, 2, 100, |_, _| true)
                    .unwrap_or_else(|e| panic!("{e}"));
                assert!(page.len() <= 2);
                out.extend(ids_of(&page));
                match next {
                    Some(n) => before = Some(n),
                    None => return out,
                }
            }
        };
        assert_eq!(all(&store), vec![6, 5, 4, 3, 2, 1, 0]);
        // A filter; and a scan limit ends a page early with a token to go on.
        let (page, next) = store
            .page(None, 10, 100, |_, r| r.finished_at_ms.is_none())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((ids_of(&page), next), (vec![5, 3, 1], None));
        let (page, next) = store
            .page(None, 10, 2, |_, r| r.finished_at_ms.is_none())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids_of(&page), vec![5]);
        let (page, _) = store
            .page(next, 10, 100, |_, r| r.finished_at_ms.is_none())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(ids_of(&page), vec![3, 1]);
        // Deleted and pruned sessions leave the index.
        store.delete(&[3; 16]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(store.prune(2_000, 2).unwrap_or_else(|e| panic!("{e}")), 2);
        assert_eq!(all(&store).len(), 4);
        // A database written before the index: the index is built when it is opened.
        let before = all(&store);
        {
            let txn = store.db.begin_write().unwrap_or_else(|e| panic!("{e}"));
            txn.delete_table(CREATED).unwrap_or_else(|e| panic!("{e}"));
            txn.commit().unwrap_or_else(|e| panic!("{e}"));
        }
        drop(store);
        let store = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(all(&store), before);
    }
}
