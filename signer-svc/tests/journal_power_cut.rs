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

#[test]
fn a_power_cut_during_an_append_never_loses_an_acknowledged_record() {
    let rounds: usize = std::env::var("MUSIG2_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
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
