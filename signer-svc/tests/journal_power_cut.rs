//! Power cuts during journal appends. The journal is append-only and fsyncs every record before
//! the signer answers; a cut can only damage the append in progress. Here, in each round, the
//! signer (re)opens the journal, appends records (each one acknowledged: `append` returned after
//! its fsync), and the power is cut during one more append: the file keeps the acknowledged
//! bytes plus any prefix of the record in progress, and in half the cuts a hole of zeros inside
//! that prefix (pages reaching the platter out of order). The next open must succeed, keep every
//! acknowledged record byte for byte, and either keep the record in progress whole or cut it off
//! and journal `recovered_torn_tail`; the chain must verify. `MUSIG2_CRASH_ROUNDS` sets the rounds
//! (default 200).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use signer_svc::journal::{self, Event, Journal, RecordKind};

fn event(rng: &mut StdRng) -> Event {
    Event {
        session_id: Some(hex::encode(rng.random::<[u8; 16]>())),
        key: Some(hex::encode([2u8; 33])),
        public_nonce: Some(hex::encode(vec![3u8; 66])),
        detail: Some("x".repeat(rng.random_range(0..600))),
        ..Event::default()
    }
}

/// `MUSIG2_CRASH_ROUNDS`, or `default`.
fn crash_rounds(default: usize) -> usize {
    std::env::var("MUSIG2_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_power_cut_during_an_append_never_loses_an_acknowledged_record() {
    let rounds = crash_rounds(200);
    let mut rng = StdRng::seed_from_u64(11);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    let name = path.display().to_string();
    let mut acked: Vec<u8> = Vec::new();
    let (mut appends, mut torn, mut whole, mut holes) = (0u64, 0u64, 0u64, 0u64);
    // Whether the previous cut left a torn record (to be cut off and recorded at the next open).
    let mut expect_recovery = false;
    for round in 0..rounds {
        let j = Journal::open(&path).unwrap_or_else(|e| {
            panic!("round {round}: the journal does not open after a cut: {e}")
        });
        let data = std::fs::read(&path).unwrap();
        assert!(
            data.starts_with(&acked),
            "round {round}: an acknowledged record was lost or changed"
        );
        let (report, records) = journal::records(&name, &data).unwrap();
        assert_eq!(report.torn_tail, None, "round {round}");
        // After the acknowledged records (a record in progress kept whole counts among them): a
        // recovery record if the cut tore one, then this start.
        let (_, before) = journal::records(&name, &acked).unwrap();
        let mut next = before.len();
        if expect_recovery {
            assert_eq!(
                records[next].kind,
                RecordKind::RecoveredTornTail,
                "round {round}"
            );
            next += 1;
        }
        assert_eq!(records[next].kind, RecordKind::Start, "round {round}");
        assert_eq!(records.len(), next + 1, "round {round}");
        // Acknowledged appends.
        for _ in 0..rng.random_range(0..5) {
            j.append(RecordKind::Nonce, event(&mut rng)).unwrap();
            appends += 1;
        }
        acked = std::fs::read(&path).unwrap();
        // The append in progress at the cut.
        j.append(RecordKind::Nonce, event(&mut rng)).unwrap();
        let full = std::fs::read(&path).unwrap();
        drop(j);
        let extra = &full[acked.len()..];
        // Nothing of it, all of it, or any prefix.
        let keep = match rng.random_range(0..6) {
            0 => 0,
            1 => extra.len(),
            _ => rng.random_range(1..extra.len()),
        };
        let mut tail = extra[..keep].to_vec();
        let kept_whole = keep == extra.len();
        if !kept_whole && keep > 1 && rng.random_bool(0.5) {
            let a = rng.random_range(0..keep - 1);
            let b = rng.random_range(a + 1..keep);
            tail[a..b].fill(0);
            holes += 1;
        }
        let mut image = acked.clone();
        image.extend_from_slice(&tail);
        std::fs::write(&path, &image).unwrap();
        expect_recovery = keep > 0 && !kept_whole;
        if kept_whole {
            whole += 1;
            acked = image;
        } else if keep > 0 {
            torn += 1;
        }
    }
    let report = journal::verify_file(&path).unwrap();
    eprintln!(
        "{rounds} power cuts during appends ({torn} left a torn record, {holes} of them with a hole of zeros, {whole} a whole one), {appends} acknowledged appends, {} records at the end; nothing acknowledged lost",
        report.records
    );
}

/// The power, as the journal's writer sees it: writes reach the real file, `sync` records how
/// much of it is durable, and after `syncs_left` more syncs the power goes (that sync and every
/// later operation fail). Counts records per sync to see the batches.
#[derive(Debug, Default)]
struct Power {
    written: u64,
    synced: u64,
    syncs_left: usize,
    cut: bool,
    unsynced_records: usize,
    batches: Vec<usize>,
}

struct CutFile {
    file: std::fs::File,
    power: std::sync::Arc<std::sync::Mutex<Power>>,
}

fn cut_error() -> std::io::Error {
    std::io::Error::other("power cut")
}

impl journal::JournalFile for CutFile {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut p = self.power.lock().unwrap();
        if p.cut {
            return Err(cut_error());
        }
        std::io::Write::write_all(&mut self.file, bytes)?;
        p.written += bytes.len() as u64;
        p.unsynced_records += bytes.iter().filter(|b| **b == b'\n').count();
        Ok(())
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        let mut p = self.power.lock().unwrap();
        if p.cut || p.syncs_left == 0 {
            p.cut = true;
            return Err(cut_error());
        }
        p.syncs_left -= 1;
        self.file.sync_data()?;
        p.synced = p.written;
        let n = std::mem::take(&mut p.unsynced_records);
        p.batches.push(n);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        if self.power.lock().unwrap().cut {
            return Err(cut_error());
        }
        self.file.set_len(len)
    }
}

/// Group commit under power cuts: 8 threads append at once, so records share fsyncs; the power
/// goes during one of the fsyncs, and the disk keeps what was synced plus any prefix (in half
/// the cuts with a hole of zeros) of what was written after. Every append that returned `Ok`
/// must be on disk, byte for byte at its sequence number, after the restart; every append not
/// yet synced at the cut must have returned an error (none is reported done); the journal must
/// open and its chain verify. Records must have shared fsyncs (fewer syncs than appends), or
/// this tested nothing. `MUSIG2_CRASH_ROUNDS` sets the rounds (default 40 here).
#[test]
fn a_power_cut_during_a_group_commit_loses_nothing_acknowledged() {
    let rounds = crash_rounds(40);
    let mut rng = StdRng::seed_from_u64(12);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    let name = path.display().to_string();
    // Every acknowledged append: sequence number -> its session id.
    let mut acked: std::collections::BTreeMap<u64, String> = Default::default();
    let (mut appends, mut refused, mut syncs, mut widest) = (0usize, 0usize, 0usize, 0usize);
    for round in 0..rounds {
        let power = std::sync::Arc::new(std::sync::Mutex::new(Power {
            syncs_left: rng.random_range(0..25),
            ..Power::default()
        }));
        let j = {
            let power = power.clone();
            Journal::open_on(
                &path,
                |_| {},
                move |file| {
                    let len = file.metadata().unwrap().len();
                    let mut p = power.lock().unwrap();
                    p.written = len;
                    p.synced = len;
                    CutFile {
                        file,
                        power: power.clone(),
                    }
                },
            )
        }
        .unwrap_or_else(|e| panic!("round {round}: the journal does not open after a cut: {e}"));
        let data = std::fs::read(&path).unwrap();
        let (report, records) = journal::records(&name, &data).unwrap();
        assert_eq!(report.torn_tail, None, "round {round}");
        for (seq, id) in &acked {
            let r = records
                .get(usize::try_from(*seq).unwrap() - 1)
                .unwrap_or_else(|| panic!("round {round}: acknowledged record {seq} lost"));
            assert_eq!(r.seq, *seq, "round {round}");
            assert_eq!(
                r.event.session_id.as_ref(),
                Some(id),
                "round {round}: record {seq} changed"
            );
        }
        let seeds: Vec<u64> = (0..8).map(|_| rng.random()).collect();
        let results: Vec<Vec<(Result<u64, String>, String)>> = std::thread::scope(|s| {
            let handles: Vec<_> = seeds
                .iter()
                .map(|seed| {
                    let j = &j;
                    s.spawn(move || {
                        let mut rng = StdRng::seed_from_u64(*seed);
                        let mut out = Vec::new();
                        loop {
                            let e = event(&mut rng);
                            let id = e.session_id.clone().unwrap();
                            let r = j.append(RecordKind::Nonce, e).map_err(|e| e.to_string());
                            let failed = r.is_err();
                            out.push((r, id));
                            if failed {
                                return out;
                            }
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        drop(j);
        let p = std::mem::take(&mut *power.lock().unwrap());
        syncs += p.batches.len();
        widest = widest.max(p.batches.iter().copied().max().unwrap_or(0));
        let full = std::fs::read(&path).unwrap();
        let synced = usize::try_from(p.synced).unwrap();
        let (_, durable) = journal::records(&name, &full[..synced]).unwrap();
        for (r, id) in results.into_iter().flatten() {
            match r {
                Ok(seq) => {
                    appends += 1;
                    let on_disk = durable.get(usize::try_from(seq).unwrap() - 1);
                    assert!(
                        on_disk.is_some_and(
                            |d| d.seq == seq && d.event.session_id.as_ref() == Some(&id)
                        ),
                        "round {round}: append {seq} was acknowledged before it was synced"
                    );
                    assert!(
                        acked.insert(seq, id).is_none(),
                        "round {round}: {seq} twice"
                    );
                }
                Err(e) => {
                    refused += 1;
                    assert!(e.contains("power cut"), "round {round}: {e}");
                }
            }
        }
        // The disk after the cut: what was synced, plus any prefix of the rest, maybe holed.
        let extra = &full[synced..];
        let keep = if extra.is_empty() {
            0
        } else {
            rng.random_range(0..=extra.len())
        };
        let mut image = full[..synced].to_vec();
        let mut tail = extra[..keep].to_vec();
        if keep > 1 && rng.random_bool(0.5) {
            let a = rng.random_range(0..keep - 1);
            let b = rng.random_range(a + 1..keep);
            tail[a..b].fill(0);
        }
        image.extend_from_slice(&tail);
        std::fs::write(&path, &image).unwrap();
    }
    let j = Journal::open(&path).unwrap();
    drop(j);
    let report = journal::verify_file(&path).unwrap();
    assert!(
        syncs < appends,
        "{appends} acknowledged appends took {syncs} fsyncs: no group commit happened"
    );
    eprintln!(
        "{rounds} power cuts during group commits: {appends} acknowledged appends in {syncs} fsyncs (up to {widest} records in one), {refused} refused at the cuts, {} records at the end; nothing acknowledged lost",
        report.records
    );
}

/// A disk whose every write panics: the writer thread dies with the first batch.
struct PanickingFile(std::fs::File);

impl journal::JournalFile for PanickingFile {
    fn write_all(&mut self, _: &[u8]) -> std::io::Result<()> {
        panic!("the disk driver panicked (test)");
    }

    fn sync_data(&mut self) -> std::io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&mut self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}

/// If the writer thread ever dies (a bug), no append hangs or is reported done, and readiness
/// says the journal is broken.
#[test]
fn a_journal_whose_writer_died_fails_every_append_and_reports_broken() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.log");
    let j = Journal::open_on(&path, |_| {}, PanickingFile).unwrap();
    let broken = j.broken_flag();
    let mut rng = StdRng::seed_from_u64(13);
    let first = j.append(RecordKind::Nonce, event(&mut rng));
    assert!(
        first.is_err(),
        "an append was reported done by a dead writer"
    );
    assert!(broken.load(std::sync::atomic::Ordering::Relaxed));
    // Later appends fail at once instead of waiting for a writer that is gone.
    for _ in 0..3 {
        let e = j.append(RecordKind::Nonce, event(&mut rng)).unwrap_err();
        assert!(e.to_string().contains("writer stopped"), "{e}");
    }
    let report = journal::verify_file(&path).unwrap();
    assert_eq!(report.records, 1, "only the start record is on disk");
}
