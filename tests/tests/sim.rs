//! The deterministic simulator (`e2e_tests::sim`) over many seeds: the coordinator's protocol
//! cores with in-memory signers and network, a virtual clock and faults. CI runs 1,200 seeds
//! across {3, 5, 10 parties} × {BIP340, Lotus} × {no faults, network faults, all faults}; the long
//! runs are ignored here and run on demand (`cargo test -p e2e-tests --test sim -- --ignored`, or
//! `musig2-sim --seeds 100000`).

use coordinator_svc::protocol::PlantedBugs;
use e2e_tests::sim::{self, Config, Faults, Report};
use shared::musig::SignatureFormat;

fn config(seed: u64, faults: Faults) -> Config {
    let parties = [3, 5, 10][usize::try_from(seed % 3).unwrap_or(0)];
    let format = if seed.is_multiple_of(2) {
        SignatureFormat::Bip340
    } else {
        SignatureFormat::Lotus
    };
    Config::new(seed, parties, format, faults)
}

/// Run seeds; panic with the replay command of the first failing one. Returns the reports.
fn sweep(seeds: std::ops::Range<u64>, faults: Faults) -> Vec<Report> {
    let mut reports = Vec::new();
    for seed in seeds {
        let cfg = config(seed, faults);
        let r = sim::run(&cfg);
        assert!(
            r.passed(),
            "seed {seed} failed; replay with: {}\n{}",
            cfg.replay_command(),
            r.violations
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        reports.push(r);
    }
    reports
}

fn totals(name: &str, reports: &[Report]) {
    let created: usize = reports.iter().map(|r| r.created).sum();
    let completed: usize = reports.iter().map(|r| r.completed).sum();
    let aborted: usize = reports.iter().map(|r| r.aborted).sum();
    let bans = reports.iter().filter(|r| !r.honest_bans.is_empty()).count();
    eprintln!(
        "{name}: {} seeds, {created} sessions, {completed} complete everywhere, {aborted} aborted somewhere, {bans} runs with an honest peer banned",
        reports.len()
    );
}

#[test]
fn same_seed_same_run_different_seed_different_run() {
    for faults in [Faults::NONE, Faults::NETWORK, Faults::ALL] {
        for seed in [11, 12, 13] {
            let a = sim::run(&config(seed, faults));
            let b = sim::run(&config(seed, faults));
            assert_eq!(
                a.log_hash,
                b.log_hash,
                "seed {seed}, faults {}",
                faults.name()
            );
            assert_eq!(a.events, b.events);
            let c = sim::run(&config(seed + 3, faults));
            assert_ne!(a.log_hash, c.log_hash, "seeds {seed} and {}", seed + 3);
        }
    }
}

#[test]
fn without_faults_every_session_completes_on_every_member() {
    let reports = sweep(0..200, Faults::NONE);
    totals("no faults", &reports);
    for r in &reports {
        assert_eq!(r.completed, r.created, "seed {}", r.seed);
        assert!(
            r.honest_bans.is_empty(),
            "seed {}: {:?}",
            r.seed,
            r.honest_bans
        );
    }
}

#[test]
fn without_faults_more() {
    totals("no faults", &sweep(200..400, Faults::NONE));
}

#[test]
fn network_faults_and_byzantine_members() {
    let reports = sweep(1000..1200, Faults::NETWORK);
    totals("network", &reports);
    for r in &reports {
        assert!(
            r.honest_bans.is_empty(),
            "seed {}: {:?}",
            r.seed,
            r.honest_bans
        );
    }
    assert!(
        reports.iter().any(|r| r.aborted > 0),
        "no byzantine member was ever caught"
    );
    assert!(
        reports.iter().any(|r| r.messages.1 > 0),
        "no message was ever lost"
    );
}

#[test]
fn network_faults_more() {
    totals("network", &sweep(1200..1400, Faults::NETWORK));
}

#[test]
fn all_faults() {
    let reports = sweep(2000..2200, Faults::ALL);
    totals("all faults", &reports);
    assert!(reports.iter().any(|r| r.crashes.0 > 0 && r.crashes.1 > 0));
    assert!(reports.iter().any(|r| r.messages.2 > 0));
    // Finished sessions left memory with their clocks running and came back (invariant 7
    // checks that their clocks stopped by the end).
    assert!(reports.iter().filter(|r| r.loads > 0).count() > reports.len() / 5);
}

#[test]
fn all_faults_more() {
    totals("all faults", &sweep(2200..2400, Faults::ALL));
}

/// Seeds the 100,000-seed sweep failed on the code before announcements were stored: a node
/// heard of a session and crashed before its application joined, and forgot it.
#[test]
fn regressions_from_the_large_sweep() {
    for seed in [87_211, 87_514, 87_728, 88_964] {
        sweep(seed..seed + 1, Faults::ALL);
    }
}

/// A planted bug must fail a seed within the CI sweep.
fn catches(bugs: PlantedBugs, faults: Faults) -> (u64, String) {
    for seed in 0..200 {
        let mut cfg = config(seed, faults);
        cfg.planted = bugs;
        let r = sim::run(&cfg);
        if let Some(v) = r.violations.first() {
            return (seed, v.to_string());
        }
    }
    panic!("the planted bug {bugs:?} survived 200 seeds");
}

#[test]
fn a_core_that_accepts_unverified_partial_signatures_is_caught() {
    let (seed, v) = catches(
        PlantedBugs {
            skip_partial_signature_check: true,
            ..PlantedBugs::default()
        },
        Faults::NETWORK,
    );
    eprintln!("caught at seed {seed}: {v}");
    assert!(v.contains("without naming a culprit"), "{v}");
}

#[test]
fn a_core_that_forgets_sessions_on_restart_is_caught() {
    let (seed, v) = catches(
        PlantedBugs {
            forget_unfinished_on_restore: true,
            ..PlantedBugs::default()
        },
        Faults::ALL,
    );
    eprintln!("caught at seed {seed}: {v}");
    assert!(v.contains("forgot unfinished session"), "{v}");
}

#[test]
#[ignore = "long: 100,000 seeds (about 3 h in a debug build; use `musig2-sim --seeds 100000` in release)"]
fn one_hundred_thousand_seeds() {
    for faults in [Faults::NONE, Faults::NETWORK, Faults::ALL] {
        totals(faults.name(), &sweep(0..33_334, faults));
    }
}

/// A virtual day of sessions every half minute with restarts every few hours. Before refusals an
/// honest peer can cause were tolerated, an honest peer ended up banned here in each of seeds
/// 30-32 (seed 30 after 3.5 virtual hours): `replay_or_sequence` refusals of reordered and re-sent
/// messages counted as spam.
fn a_virtual_day(seed: u64) -> Config {
    let mut cfg = Config::new(seed, 3, SignatureFormat::Bip340, Faults::ALL);
    cfg.sessions = 24 * 60;
    cfg.session_every_ms = 30_000;
    cfg.restart_every_ms = 3 * 3600 * 1000;
    cfg
}

#[test]
fn no_honest_peer_is_banned_under_restarts_and_duplication() {
    for seed in 30..33 {
        let cfg = a_virtual_day(seed);
        let r = sim::run(&cfg);
        assert!(r.passed(), "{:#?}", r.violations);
        assert!(
            r.honest_bans.is_empty(),
            "seed {seed} ({}): {:#?}",
            cfg.replay_command(),
            r.honest_bans
        );
    }
}

#[test]
#[ignore = "long: 30 virtual days, a session a minute, restarts every few virtual hours"]
fn thirty_virtual_days() {
    let mut cfg = Config::new(30, 3, SignatureFormat::Bip340, Faults::ALL);
    cfg.faults.drop = 0.01;
    cfg.faults.byzantine = 0.33;
    cfg.sessions = 30 * 24 * 60;
    cfg.session_every_ms = 30_000;
    cfg.restart_every_ms = 3 * 3600 * 1000;
    let r = sim::run(&cfg);
    eprintln!(
        "30 days: {} sessions, {} complete, {} aborted, {} honest bans, {} violations",
        r.created,
        r.completed,
        r.aborted,
        r.honest_bans.len(),
        r.violations.len()
    );
    assert!(r.passed(), "{:#?}", r.violations);
    assert!(r.honest_bans.is_empty(), "{:#?}", r.honest_bans);
}

/// Six virtual hours without a restart, attestations living one hour: each node must renew its
/// own before they expire, or every peer refuses it and no session completes.
fn outliving_attestations(planted: PlantedBugs) -> Report {
    let mut cfg = Config::new(7, 3, SignatureFormat::Bip340, Faults::NONE);
    cfg.attestation_ttl_ms = 3600 * 1000;
    cfg.sessions = 6 * 60;
    cfg.session_every_ms = 60_000;
    cfg.planted = planted;
    sim::run(&cfg)
}

#[test]
fn attestations_are_renewed_before_they_expire() {
    let r = outliving_attestations(PlantedBugs::default());
    assert!(r.passed(), "{:#?}", r.violations);
    assert!(r.honest_bans.is_empty(), "{:#?}", r.honest_bans);
    assert_eq!(r.completed, r.created);
    assert!(r.virtual_ms > 5 * 3600 * 1000, "{} ms", r.virtual_ms);
}

#[test]
fn a_core_that_never_renews_its_attestations_is_caught() {
    let r = outliving_attestations(PlantedBugs {
        skip_attestation_renewal: true,
        ..PlantedBugs::default()
    });
    let v = r
        .violations
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    eprintln!("caught: {v} ({} violations)", r.violations.len());
    assert!(v.contains("did not complete"), "{v}");
}
