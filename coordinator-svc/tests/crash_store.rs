//! Crash consistency of the store with fsync taken seriously. SIGKILL (the chaos harness) keeps
//! the page cache, so it never tests what a power cut does: here the store runs on a disk that
//! keeps only what was fsynced. At a crash, every write since the last `sync_data` is either lost,
//! or — to model a disk that reorders and tears writes — a random subset of them, in any order,
//! reaches the platter. After each crash the store must open without repair errors, every write
//! the store acknowledged (a `put`, a group commit `put_many`, `put_ban`, `delete` or `prune`
//! that returned) must be there, every record must decode, and a group commit cut in progress
//! lands whole or not at all. `MUSIG2_CRASH_ROUNDS` sets the number of crashes (default 300).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use coordinator_svc::store::{BanRecord, FailoverRecord, SessionRecord, Store};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

#[derive(Debug, Clone)]
enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

/// What the platter holds, the writes since the last fsync, and the power cut to come: after
/// `countdown` more operations the image of the platter is taken (what was synced, plus a
/// random subset of the rest when `torn`) and later writes never reach it.
#[derive(Debug, Default)]
struct Platter {
    durable: Vec<u8>,
    unsynced: Vec<Op>,
    countdown: Option<usize>,
    torn: bool,
    seed: u64,
    image: Option<Vec<u8>>,
}

impl Platter {
    fn tick(&mut self) {
        let Some(n) = self.countdown.as_mut() else {
            return;
        };
        if *n > 0 {
            *n -= 1;
            return;
        }
        self.countdown = None;
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut image = self.durable.clone();
        if self.torn {
            let mut ops: Vec<Op> = self
                .unsynced
                .iter()
                .filter(|_| rng.random_bool(0.5))
                .cloned()
                .collect();
            for i in (1..ops.len()).rev() {
                ops.swap(i, rng.random_range(0..=i));
            }
            for op in &ops {
                apply(&mut image, op);
            }
        }
        self.image = Some(image);
    }
}

fn apply(data: &mut Vec<u8>, op: &Op) {
    match op {
        Op::Write(offset, bytes) => {
            let end = usize::try_from(*offset).unwrap() + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[usize::try_from(*offset).unwrap()..end].copy_from_slice(bytes);
        }
        Op::SetLen(len) => data.resize(usize::try_from(*len).unwrap(), 0),
    }
}

/// A disk that loses what was not fsynced. The database sees `durable` plus its unsynced ops.
#[derive(Debug, Clone)]
struct LossyDisk(Arc<Mutex<Platter>>);

impl LossyDisk {
    fn view(p: &Platter) -> Vec<u8> {
        let mut data = p.durable.clone();
        for op in &p.unsynced {
            apply(&mut data, op);
        }
        data
    }

    /// Arm the power cut: after `ops` more operations.
    fn arm(&self, ops: usize, torn: bool, seed: u64) {
        let mut p = self.0.lock().unwrap();
        p.countdown = Some(ops);
        p.torn = torn;
        p.seed = seed;
        p.image = None;
    }

    fn crashed(&self) -> bool {
        self.0.lock().unwrap().image.is_some()
    }

    /// The power is cut now if it was not yet; a fresh disk holding the platter's image (the
    /// old handle is abandoned with the store on it).
    fn after_crash(&self) -> LossyDisk {
        let mut p = self.0.lock().unwrap();
        if p.image.is_none() {
            p.countdown = Some(0);
            p.tick();
        }
        LossyDisk(Arc::new(Mutex::new(Platter {
            durable: p.image.take().unwrap_or_default(),
            ..Platter::default()
        })))
    }
}

impl redb::StorageBackend for LossyDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        let p = self.0.lock().unwrap();
        Ok(u64::try_from(Self::view(&p).len()).unwrap())
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let p = self.0.lock().unwrap();
        let data = Self::view(&p);
        let start = usize::try_from(offset).unwrap();
        let end = start + out.len();
        if end > data.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "read past the end",
            ));
        }
        out.copy_from_slice(&data[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let mut p = self.0.lock().unwrap();
        p.tick();
        p.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut p = self.0.lock().unwrap();
        p.tick();
        let data = Self::view(&p);
        p.durable = data;
        p.unsynced.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut p = self.0.lock().unwrap();
        p.tick();
        p.unsynced.push(Op::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn record(rng: &mut StdRng, finished_at_ms: Option<i64>) -> SessionRecord {
    let n = rng.random_range(2..6);
    SessionRecord {
        announce: hex::encode(rng.random::<[u8; 32]>()),
        phase: if finished_at_ms.is_some() {
            "COMPLETE"
        } else {
            "NONCE_EXCHANGE"
        }
        .into(),
        locally_joined: true,
        joined: vec![true; n],
        nonces: (0..n)
            .map(|_| Some(hex::encode(rng.random::<[u8; 32]>())))
            .collect(),
        psigs: vec![None; n],
        signature: finished_at_ms.map(|_| hex::encode([7u8; 64])),
        abort: None,
        last_seq: vec![(hex::encode([2u8; 33]), rng.random_range(1..100))],
        next_seq: Vec::new(),
        sent: (0..rng.random_range(0..4))
            .map(|_| hex::encode(vec![9u8; rng.random_range(100..3000)]))
            .collect(),
        failover: FailoverRecord::default(),
        finished_at_ms,
        created_at_ms: Some(rng.random_range(0..1_000_000)),
        request_id: None,
    }
}

/// A session write in progress at the cut: its id, the record before and the record after.
type Uncertain = ([u8; 16], Option<SessionRecord>, Option<SessionRecord>);

#[test]
fn acknowledged_writes_survive_losing_everything_not_fsynced() {
    let rounds: usize = std::env::var("MUSIG2_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let mut rng = StdRng::seed_from_u64(2026);
    let mut disk = LossyDisk(Arc::new(Mutex::new(Platter::default())));
    // What the store acknowledged: the model every crash is checked against.
    let mut sessions: BTreeMap<[u8; 16], SessionRecord> = BTreeMap::new();
    let mut bans: BTreeMap<String, BanRecord> = BTreeMap::new();
    let mut clock = 1_000i64;
    let mut writes = 0u64;
    let mut landed = 0u64;
    let mut groups = 0u64;
    for round in 0..rounds {
        let store = Store::with_backend(disk.clone()).unwrap_or_else(|e| {
            panic!("round {round}: the store does not open after a crash: {e}")
        });
        // Everything acknowledged before the crash is there and decodes.
        let all = store
            .live(i64::MIN)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let got: BTreeMap<[u8; 16], SessionRecord> = all.into_iter().collect();
        assert_eq!(
            got, sessions,
            "round {round}: sessions differ from what was acknowledged"
        );
        let got_bans: BTreeMap<String, BanRecord> = store.bans().unwrap().into_iter().collect();
        assert_eq!(got_bans, bans, "round {round}: bans differ");
        // Writes until the power is cut at a random operation of the disk (often inside a
        // commit). A write that returned before the cut is acknowledged and must survive; the
        // one in progress at the cut may or may not; later ones are lost with the cut.
        disk.arm(rng.random_range(0..120), rng.random_bool(0.5), rng.random());
        let mut uncertain: Option<Vec<Uncertain>> = None;
        let mut uncertain_ban: Option<(String, Option<BanRecord>, Option<BanRecord>)> = None;
        while !disk.crashed() {
            clock += 1_000;
            let was = disk.crashed();
            // The change this write makes to the model (sessions or bans).
            let mut changes: Vec<([u8; 16], Option<SessionRecord>)> = Vec::new();
            let mut ban_change: Option<(String, Option<BanRecord>)> = None;
            match rng.random_range(0..10) {
                0..=5 => {
                    // One record, or a group commit of several sessions in one transaction
                    // (what the node does with the records of a batch of inputs).
                    let k = if rng.random_bool(0.5) {
                        1
                    } else {
                        rng.random_range(2..9)
                    };
                    let mut batch: Vec<([u8; 16], SessionRecord)> = Vec::new();
                    while batch.len() < k {
                        let id: [u8; 16] = if sessions.is_empty() || rng.random_bool(0.6) {
                            rng.random()
                        } else {
                            *sessions
                                .keys()
                                .nth(rng.random_range(0..sessions.len()))
                                .unwrap()
                        };
                        if batch.iter().any(|(b, _)| *b == id) {
                            continue;
                        }
                        let finished = rng.random_bool(0.4).then_some(clock);
                        batch.push((id, record(&mut rng, finished)));
                    }
                    if k == 1 {
                        store.put(&batch[0].0, &batch[0].1).unwrap();
                    } else {
                        let refs: Vec<([u8; 16], &SessionRecord)> =
                            batch.iter().map(|(id, r)| (*id, r)).collect();
                        store.put_many(&refs).unwrap();
                        groups += 1;
                    }
                    changes.extend(batch.into_iter().map(|(id, r)| (id, Some(r))));
                }
                6 => {
                    let peer = format!("peer-{}", rng.random_range(0..20));
                    let ban = BanRecord {
                        until_ms: rng.random_bool(0.5).then_some(clock + 60_000),
                        reason: "test".into(),
                    };
                    store.put_ban(&peer, &ban).unwrap();
                    ban_change = Some((peer, Some(ban)));
                }
                7 => {
                    if let Some(peer) = bans.keys().next().cloned() {
                        store.remove_ban(&peer).unwrap();
                        ban_change = Some((peer, None));
                    }
                }
                8 => {
                    if let Some(id) = sessions.keys().next().copied() {
                        store.delete(&id).unwrap();
                        changes.push((id, None));
                    }
                }
                _ => {
                    let before = clock - 5_000;
                    let n = store.prune(before, 100).unwrap();
                    // The store prunes in key order; the model follows it.
                    let old: Vec<[u8; 16]> = sessions
                        .iter()
                        .filter(|(_, r)| r.finished_at_ms.is_some_and(|t| t < before))
                        .map(|(id, _)| *id)
                        .take(n)
                        .collect();
                    assert_eq!(
                        old.len(),
                        n,
                        "round {round}: prune deleted what the model did not expect"
                    );
                    changes.extend(old.into_iter().map(|id| (id, None)));
                }
            }
            let now_crashed = disk.crashed();
            if was {
                break;
            }
            if now_crashed {
                // In progress at the cut: either outcome, all or nothing.
                uncertain = Some(
                    changes
                        .iter()
                        .map(|(id, new)| (*id, sessions.get(id).cloned(), new.clone()))
                        .collect(),
                );
                uncertain_ban = ban_change
                    .as_ref()
                    .map(|(p, new)| (p.clone(), bans.get(p).cloned(), new.clone()));
                break;
            }
            for (id, new) in changes {
                match new {
                    Some(r) => sessions.insert(id, r),
                    None => sessions.remove(&id),
                };
            }
            if let Some((p, new)) = ban_change {
                match new {
                    Some(b) => bans.insert(p, b),
                    None => bans.remove(&p),
                };
            }
            writes += 1;
        }
        let crashed = disk.after_crash();
        drop(store);
        disk = crashed;
        // Settle the write that was in progress: the reopened store holds all of it or none.
        if uncertain.is_some() || uncertain_ban.is_some() {
            let s = Store::with_backend(disk.clone()).unwrap_or_else(|e| {
                panic!("round {round}: the store does not open after a crash: {e}")
            });
            if let Some(changes) = uncertain {
                let got: Vec<Option<SessionRecord>> = changes
                    .iter()
                    .map(|(id, _, _)| s.get(id).unwrap())
                    .collect();
                let old: Vec<Option<SessionRecord>> = changes.iter().map(|c| c.1.clone()).collect();
                let new: Vec<Option<SessionRecord>> = changes.iter().map(|c| c.2.clone()).collect();
                assert!(
                    got == old || got == new,
                    "round {round}: a torn write (neither before nor after)"
                );
                for ((id, _, _), r) in changes.into_iter().zip(got) {
                    match r {
                        Some(r) => sessions.insert(id, r),
                        None => sessions.remove(&id),
                    };
                }
                landed += 1;
            }
            if let Some((p, old, new)) = uncertain_ban {
                let got = s
                    .bans()
                    .unwrap()
                    .into_iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, b)| b);
                assert!(got == old || got == new, "round {round}: a torn ban write");
                match got {
                    Some(b) => bans.insert(p, b),
                    None => bans.remove(&p),
                };
            }
        }
    }
    eprintln!(
        "{rounds} power cuts (half keeping a random, reordered part of the unsynced writes), {writes} acknowledged writes ({groups} group commits of 2 to 8 sessions), {landed} cut inside a write; nothing acknowledged was lost, nothing torn"
    );
}
