//! `musig2-sim`: run the deterministic simulator for one seed or a sweep of seeds, and print
//! what it found. A failing seed is printed with the command that replays it.
//!
//! ```text
//! musig2-sim --seed 7 --parties 5 --format lotus --faults all      # one run, its event-log hash
//! musig2-sim --seeds 100000 --faults network                        # a sweep over {3,5,10} × formats
//! musig2-sim --days 30 --faults all                                 # 30 virtual days, a session a minute
//! ```

use std::io::Write as _;
use std::time::Instant;

use clap::Parser;
use e2e_tests::sim::{self, Config, Faults};
use shared::musig::SignatureFormat;

#[derive(Parser, Debug)]
#[command(
    name = "musig2-sim",
    about = "Deterministic simulation of MuSig2 coordinators"
)]
struct Args {
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Number of seeds (a sweep cycles parties over {3, 5, 10} and both formats unless given).
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Parties (default: cycle over 3, 5, 10).
    #[arg(long)]
    parties: Option<usize>,
    /// bip340 or lotus (default: alternate).
    #[arg(long)]
    format: Option<String>,
    /// Sessions per run.
    #[arg(long, default_value_t = 3)]
    sessions: usize,
    /// Mean time between sessions, ms.
    #[arg(long = "every-ms", default_value_t = 2_000)]
    every_ms: i64,
    /// none, network or all.
    #[arg(long, default_value = "network")]
    faults: String,
    /// A long run: this many virtual days, one session per virtual minute, restarts every few
    /// virtual hours (overrides --sessions and --every-ms).
    #[arg(long)]
    days: Option<u64>,
    /// Mean time between coordinator restarts (when the faults include crashes), ms.
    #[arg(long = "restart-every-ms")]
    restart_every_ms: Option<i64>,
    /// Print the event log of each run to stderr.
    #[arg(long)]
    trace: bool,
    /// Attestation lifetime, ms (default 7 days).
    #[arg(long = "attestation-ttl-ms")]
    attestation_ttl_ms: Option<i64>,
    /// Messages of the batch sessions (the second of every three sessions); 1 for none.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: u16,
}

fn main() {
    let args = Args::parse();
    let Some(faults) = Faults::by_name(&args.faults) else {
        eprintln!("--faults must be none, network or all");
        std::process::exit(2);
    };
    let format = match args.format.as_deref() {
        None => None,
        Some("bip340") => Some(SignatureFormat::Bip340),
        Some("lotus") => Some(SignatureFormat::Lotus),
        Some(other) => {
            eprintln!("--format must be bip340 or lotus, not {other}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let (mut failed, mut honest_bans, mut events, mut sessions) = (0u64, 0u64, 0u64, 0usize);
    for k in 0..args.seeds {
        let seed = args.seed + k;
        let parties = args
            .parties
            .unwrap_or([3, 5, 10][usize::try_from(seed % 3).unwrap_or(0)]);
        let format = format.unwrap_or(if seed.is_multiple_of(2) {
            SignatureFormat::Bip340
        } else {
            SignatureFormat::Lotus
        });
        let mut cfg = Config::new(seed, parties, format, faults);
        cfg.sessions = args.sessions;
        cfg.session_every_ms = args.every_ms;
        if let Some(days) = args.days {
            cfg.sessions = usize::try_from(days * 24 * 60).unwrap_or(usize::MAX);
            cfg.session_every_ms = 60_000 / 2;
            cfg.restart_every_ms = 3 * 3600 * 1000;
        }
        if let Some(every) = args.restart_every_ms {
            cfg.restart_every_ms = every;
        }
        cfg.trace = args.trace;
        cfg.batch = usize::from(args.batch);
        if let Some(ttl) = args.attestation_ttl_ms {
            cfg.attestation_ttl_ms = ttl;
        }
        let report = sim::run(&cfg);
        events += report.events;
        sessions += report.created;
        if !report.honest_bans.is_empty() {
            honest_bans += 1;
        }
        if args.seeds == 1 {
            println!(
                "seed {seed}: {parties} parties, {format:?}, faults {}: {} events, {:.1} virtual s, {} sessions ({} complete, {} aborted), messages delivered/lost/duplicated {:?}, crashes/signer restarts {:?}, sessions read back {}, log {}",
                faults.name(),
                report.events,
                report.virtual_ms as f64 / 1000.0,
                report.created,
                report.completed,
                report.aborted,
                report.messages,
                report.crashes,
                report.loads,
                hex::encode(report.log_hash)
            );
            for b in &report.honest_bans {
                println!("  honest ban: {b}");
            }
        }
        if !report.passed() {
            failed += 1;
            println!("FAILED seed {seed}: {}", cfg.replay_command());
            for v in report.violations.iter().take(5) {
                println!("  {v}");
            }
        }
        if args.seeds > 1 && (k + 1) % 100 == 0 {
            eprint!(
                "\r{}/{} seeds, {failed} failed, {:.0} s",
                k + 1,
                args.seeds,
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
    }
    if args.seeds > 1 {
        eprintln!();
        println!(
            "{} seeds ({sessions} sessions, {events} events) in {:.1} s: {failed} failed, {honest_bans} with an honest peer banned",
            args.seeds,
            started.elapsed().as_secs_f64()
        );
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
