//! `musig2-bench`: what users get through the gRPC API. Starts N real signer and coordinator
//! processes on loopback (mutual TLS everywhere, journals and stores fsynced), drives sessions
//! through the coordinators' API (`CreateSession` on a rotating creator, then `Sign` on every
//! party), with K sessions in flight, and prints sessions/s, latency percentiles per phase, CPU
//! per process, and, measured in the same run, the in-process crypto-only rate for the same N
//! (the machine's limit for this work on one core) with the ratio between the two.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use e2e_tests::localnet::{Binaries, LocalParty};
use musig2_proto::v1 as pb;
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, SecretKey, SignatureFormat, SigningSession,
    nonce_gen,
};

/// Load generator over the real services' gRPC API.
#[derive(Debug, Parser)]
#[command(name = "musig2-bench", version, about)]
struct Args {
    /// Parties.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=20))]
    parties: u8,
    /// Sessions to measure (after a warm-up of 10).
    #[arg(long, default_value_t = 300)]
    sessions: usize,
    /// Sessions in flight at once.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// bip340 or lotus.
    #[arg(long, default_value = "bip340")]
    format: String,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Soak: run for this many seconds instead of `--sessions`, sampling every `--sample-s`
    /// each process's memory (RSS) and open descriptors, the stores' and journals' sizes and the
    /// window's latency percentiles (one JSON line per sample on stderr; all samples in the
    /// `--json` object).
    #[arg(long)]
    duration_s: Option<u64>,
    /// Seconds between soak samples.
    #[arg(long, default_value_t = 60)]
    sample_s: u64,
    /// Start at most this many sessions per second (steady load); unlimited when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// TOML added to every coordinator's configuration (e.g. `finished_in_memory_ms = 300000`).
    #[arg(long, default_value = "")]
    coordinator_toml: String,
    /// One-round signing from nonce pools: every party's application enables a pool of
    /// `--pool-size` slots (and every signer's policy allows it), the run waits until the pools
    /// are full, then each session is `CreateSession` with `one_round` plus `Sign` on every
    /// party. A call that finds the pool empty (POOL_EXHAUSTED) is retried after 1 ms and
    /// counted in `pool_waits`; its latency counts from the first attempt.
    #[arg(long)]
    one_round: bool,
    /// Slots per party for `--one-round`.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pool_size: u32,
    /// Messages per session: above 1, each session is a batch session (issue 17) signing this
    /// many distinct 32-byte messages with one round trip per round; every signature the
    /// creator's party returns is verified here. Reports signatures/s besides sessions/s.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    messages: u16,
}

type Client = pb::coordinator_service_client::CoordinatorServiceClient<tonic::transport::Channel>;

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or(0.0)
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 (1-based), i.e. 11 and 12 after the state.
    (ticks(11) + ticks(12)) / 100.0
}

/// Resident memory of a process in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of a process, from /proc.
fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// Bytes of every file under `path` (a file or a directory).
fn disk_bytes(path: &std::path::Path) -> u64 {
    let Ok(meta) = std::fs::metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path).map_or(0, |entries| {
        entries
            .filter_map(Result::ok)
            .map(|e| disk_bytes(&e.path()))
            .sum()
    })
}

/// What one soak sample records.
struct Watched {
    pids: Vec<(String, u32)>,
    stores: Vec<std::path::PathBuf>,
    journals: Vec<std::path::PathBuf>,
}

impl Watched {
    fn sample(&self, at_s: f64, window: &[Outcome], total_done: usize) -> serde_json::Value {
        let mut lat: Vec<f64> = window
            .iter()
            .filter_map(|o| o.result.as_ref().ok().map(|r| r.1))
            .collect();
        let errors = window.iter().filter(|o| o.result.is_err()).count();
        serde_json::json!({
            "t_s": at_s.round(),
            "completed_total": total_done,
            "window_completed": lat.len(),
            "window_errors": errors,
            "p50_ms": pct(&mut lat, 0.50),
            "p99_ms": pct(&mut lat, 0.99),
            "rss_kib": self.pids.iter().map(|(k, pid)| (k.clone(), serde_json::json!(rss_kib(*pid)))).collect::<serde_json::Map<_, _>>(),
            "fds": self.pids.iter().map(|(k, pid)| (k.clone(), serde_json::json!(fd_count(*pid)))).collect::<serde_json::Map<_, _>>(),
            "store_bytes": self.stores.iter().map(|p| disk_bytes(p)).sum::<u64>(),
            "journal_bytes": self.journals.iter().map(|p| disk_bytes(p)).sum::<u64>(),
        })
    }
}

/// One finished session: when, and its latencies or error.
struct Outcome {
    result: Result<(f64, f64), String>,
}

/// Whether a status is the pool's "no slot ready" (POOL_EXHAUSTED as RESOURCE_EXHAUSTED).
fn pool_empty(e: &tonic::Status) -> bool {
    use tonic_types::StatusExt as _;
    e.code() == tonic::Code::ResourceExhausted
        && e.get_error_details()
            .error_info()
            .is_some_and(|i| i.reason == "POOL_EXHAUSTED")
}

/// Pool retries (POOL_EXHAUSTED) over the run.
static POOL_WAITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What every session of the run is.
#[derive(Clone, Copy)]
struct Kind {
    format: SignatureFormat,
    one_round: bool,
    /// Messages per session (above 1: a batch session).
    messages: usize,
}

/// One session through the API: create on `creator` (one round from its nonce pool when
/// `one_round`; a batch of `messages` when above 1), `Sign` on every party. Returns (create
/// latency, total latency) in ms.
async fn session(
    clients: &[Client],
    keys: &[Vec<u8>],
    creator: usize,
    i: usize,
    kind: Kind,
) -> anyhow::Result<(f64, f64)> {
    let Kind {
        format,
        one_round,
        messages,
    } = kind;
    let t0 = Instant::now();
    let digest =
        |m: usize| <sha2::Sha256 as sha2::Digest>::digest(format!("bench {i} {m}")).to_vec();
    let (msg, batch) = if messages > 1 {
        (Vec::new(), (0..messages).map(digest).collect())
    } else {
        (digest(0), Vec::new())
    };
    let s = loop {
        let r = clients[creator]
            .clone()
            .create_session(pb::CreateSessionRequest {
                signer_keys: keys.to_vec(),
                message: msg.clone(),
                format: shared::wire::format_to_pb(format) as i32,
                timeout_ms: Some(30_000),
                one_round,
                batch_messages: batch.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(r) => break r.into_inner().session.context("no session")?,
            Err(e) if one_round && pool_empty(&e) && t0.elapsed() < Duration::from_secs(30) => {
                POOL_WAITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let created = t0.elapsed().as_secs_f64() * 1e3;
    let mut calls = Vec::new();
    for c in clients {
        let mut c = c.clone();
        let id = s.session_id.clone();
        calls.push(tokio::spawn(async move {
            c.sign(pb::SignRequest {
                session_id: id,
                timeout_ms: Some(30_000),
                ..Default::default()
            })
            .await
        }));
    }
    let mut sigs = None;
    for c in calls {
        let r = c.await??.into_inner();
        if let Some(prev) = &sigs {
            anyhow::ensure!(
                prev == &r.signatures,
                "parties returned different signatures"
            );
        }
        sigs = Some(r.signatures);
    }
    let total = t0.elapsed().as_secs_f64() * 1e3;
    let sigs = sigs.unwrap_or_default();
    anyhow::ensure!(
        sigs.len() == messages,
        "{} signatures for {messages} messages",
        sigs.len()
    );
    if messages > 1 {
        let key: [u8; 33] = s.output_key.as_slice().try_into().context("output key")?;
        for (m, sig) in batch.iter().zip(&sigs) {
            let sig = shared::musig::Signature(sig.as_slice().try_into().context("signature")?);
            shared::musig::verify(format, &key, m, &sig)
                .map_err(|e| anyhow::anyhow!("a batch signature does not verify: {e}"))?;
        }
    }
    Ok((created, total))
}

/// The in-process, crypto-only rate for n signers on one core: KeyAgg, n NonceGen, NonceAgg, n
/// partial signatures (each self-verified, as the signer does), n partial verifications (as
/// the coordinators do), aggregation and the final verification.
fn crypto_limit(n: usize, format: SignatureFormat, for_secs: f64) -> f64 {
    let sks: Vec<SecretKey> = (0..n)
        .map(|i| SecretKey::from_bytes(&[0x30 + i as u8; 32]).unwrap_or_else(|_| unreachable!()))
        .collect();
    let mut keys: Vec<[u8; 33]> = sks.iter().map(SecretKey::public_key).collect();
    keys.sort_unstable();
    let msg = [7u8; 32];
    let started = Instant::now();
    let mut done = 0u64;
    let mut rng = rand::rng();
    while started.elapsed().as_secs_f64() < for_secs {
        let ctx = KeyAggContext::new(format, &keys).unwrap_or_else(|_| unreachable!());
        let mut secs = Vec::new();
        let mut pubs = Vec::new();
        for k in &keys {
            let sk = sks
                .iter()
                .find(|s| s.public_key() == *k)
                .unwrap_or_else(|| unreachable!());
            let (s, p) = nonce_gen(&mut rng, sk, &ctx, &msg).unwrap_or_else(|_| unreachable!());
            secs.push(s);
            pubs.push(p);
        }
        let agg = AggNonce::sum(format, &pubs).unwrap_or_else(|_| unreachable!());
        let session = SigningSession::new(&ctx, &agg, &msg).unwrap_or_else(|_| unreachable!());
        let mut psigs: Vec<PartialSignature> = Vec::new();
        for (i, (s, k)) in secs.into_iter().zip(&keys).enumerate() {
            let sk = sks
                .iter()
                .find(|x| x.public_key() == *k)
                .unwrap_or_else(|| unreachable!());
            psigs.push(session.sign_at(s, sk, i).unwrap_or_else(|_| unreachable!()));
        }
        for (i, p) in psigs.iter().enumerate() {
            session
                .verify_partial(p, &pubs[i], i)
                .unwrap_or_else(|_| unreachable!());
        }
        let sig = session.aggregate(&psigs).unwrap_or_else(|_| unreachable!());
        shared::musig::verify(format, &ctx.output_key(), &msg, &sig)
            .unwrap_or_else(|_| unreachable!());
        done += 1;
    }
    done as f64 / started.elapsed().as_secs_f64()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Growth between the sample at a quarter of the run (after caches and in-memory retention
/// have filled) and the last sample, per process, plus what each retained session costs on
/// disk per party over the same span.
fn soak_summary(samples: &[serde_json::Value], parties: usize) -> serde_json::Value {
    let (Some(first), Some(last)) = (samples.get(samples.len() / 4), samples.last()) else {
        return serde_json::Value::Null;
    };
    let delta = |field: &str| -> serde_json::Map<String, serde_json::Value> {
        last[field]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                let a = first[field][k].as_i64().unwrap_or(0);
                (k.clone(), serde_json::json!(v.as_i64().unwrap_or(0) - a))
            })
            .collect()
    };
    let grew = |field: &str| {
        let d = last[field].as_f64().unwrap_or(0.0) - first[field].as_f64().unwrap_or(0.0);
        let sessions = last["completed_total"].as_f64().unwrap_or(0.0)
            - first["completed_total"].as_f64().unwrap_or(0.0);
        d / sessions.max(1.0) / parties.max(1) as f64
    };
    serde_json::json!({
        "from_t_s": first["t_s"],
        "to_t_s": last["t_s"],
        "rss_growth_kib": delta("rss_kib"),
        "fd_growth": delta("fds"),
        "max_window_p99_ms": samples.iter().filter_map(|s| s["p99_ms"].as_f64()).fold(0.0, f64::max),
        "store_bytes_per_session_per_party": grew("store_bytes"),
        "journal_bytes_per_session_per_party": grew("journal_bytes"),
    })
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let format: SignatureFormat = args
        .format
        .parse()
        .map_err(|_| anyhow::anyhow!("--format must be bip340 or lotus"))?;
    anyhow::ensure!(
        args.concurrency >= 1 && args.sessions >= 1,
        "--sessions and --concurrency must be positive"
    );
    anyhow::ensure!(
        !(args.one_round && args.messages > 1),
        "--one-round signs one message per session: not with --messages above 1"
    );
    let kind = Kind {
        format,
        one_round: args.one_round,
        messages: usize::from(args.messages),
    };
    let n = usize::from(args.parties);
    let bins = Binaries::beside_current_exe()?;
    let mut dir = tempfile::tempdir_in(
        std::env::var_os("MUSIG2_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into),
    )?;
    // The parties' files and logs stay for a post-mortem when asked.
    dir.disable_cleanup(std::env::var_os("MUSIG2_BENCH_KEEP").is_some());
    if std::env::var_os("MUSIG2_BENCH_KEEP").is_some() {
        eprintln!("bench: keeping {}", dir.path().display());
    }
    eprintln!("bench: starting {n} signers and {n} coordinators …");
    let mut parties = Vec::new();
    for i in 0..n {
        parties.push(LocalParty::prepare(
            i,
            dir.path(),
            &bins,
            &args.coordinator_toml,
        )?);
    }
    if args.one_round {
        // Every signer's policy allows pooled nonces for exactly this key set.
        let set: Vec<String> = parties.iter().map(|p| format!("\"{}\"", p.key)).collect();
        for p in &parties {
            let path = p.dir.join("signer.toml");
            let mut toml = std::fs::read_to_string(&path)?;
            toml.push_str(&format!(
                "[nonces]\npool_capacity = {}\n[policy]\n[[policy.rules]]\nid = \"bench-pool\"\nkind = \"nonce_pool\"\nkey_sets = [[{}]]\n",
                (args.pool_size as usize * n * 2).max(1024),
                set.join(", ")
            ));
            std::fs::write(&path, toml)?;
        }
    }
    for p in &mut parties {
        p.start_signer(&bins)?;
        p.start_coordinator(&bins)?;
    }
    let mut clients = Vec::new();
    for p in &parties {
        clients.push(p.client().await?);
    }
    let addrs: Vec<String> = parties.iter().map(LocalParty::p2p_addr).collect();
    let mesh_started = Instant::now();
    for (i, c) in clients.iter_mut().enumerate() {
        for a in addrs.iter().take(i) {
            c.connect_peer(pb::ConnectPeerRequest {
                multiaddr: a.clone(),
            })
            .await?;
        }
    }
    for c in &clients {
        while (c
            .clone()
            .get_node_info(pb::GetNodeInfoRequest {})
            .await?
            .into_inner()
            .connected_peers as usize)
            < n - 1
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mesh_ms = mesh_started.elapsed().as_secs_f64() * 1e3;
    let mut keys: Vec<Vec<u8>> = parties
        .iter()
        .map(|p| hex::decode(&p.key))
        .collect::<Result<_, _>>()?;
    keys.sort();
    let pool_fill_ms = if args.one_round {
        let started = Instant::now();
        eprintln!(
            "bench: filling {} nonce-pool slots per party …",
            args.pool_size
        );
        let req = pb::SetNoncePoolRequest {
            signer_keys: keys.clone(),
            format: shared::wire::format_to_pb(format) as i32,
            tweaks: Vec::new(),
            size: args.pool_size,
        };
        for c in &mut clients {
            c.set_nonce_pool(req.clone()).await?;
        }
        for c in &mut clients {
            while c.set_nonce_pool(req.clone()).await?.into_inner().ready < args.pool_size {
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(120),
                    "the nonce pools did not fill in 120 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Some(started.elapsed().as_secs_f64() * 1e3)
    } else {
        None
    };
    let clients = Arc::new(clients);
    let keys = Arc::new(keys);
    // Warm-up (connections, HTTP/2 streams, caches).
    for i in 0..10 {
        session(&clients, &keys, i % n, usize::MAX - i, kind).await?;
    }
    let pids: Vec<(String, u32)> = parties
        .iter()
        .flat_map(|p| {
            [
                (
                    format!("signer-{}", p.index),
                    p.signer.as_ref().map_or(0, |x| x.id()),
                ),
                (
                    format!("coordinator-{}", p.index),
                    p.coordinator.as_ref().map_or(0, |x| x.id()),
                ),
            ]
        })
        .collect();
    let cpu_before: Vec<f64> = pids.iter().map(|(_, pid)| cpu_seconds(*pid)).collect();
    let watched = Watched {
        pids: pids.clone(),
        stores: parties.iter().map(|p| p.dir.join("data")).collect(),
        journals: parties.iter().map(|p| p.dir.join("journal.log")).collect(),
    };
    let duration = args.duration_s.map(Duration::from_secs);
    let total = if duration.is_some() {
        usize::MAX
    } else {
        args.sessions
    };
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let results: Arc<std::sync::Mutex<Vec<Outcome>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (clients, keys, next, results) =
            (clients.clone(), keys.clone(), next.clone(), results.clone());
        let rate = args.rate;
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total || duration.is_some_and(|d| started.elapsed() >= d) {
                    return;
                }
                if let Some(rate) = rate {
                    let due = started + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let r = session(&clients, &keys, i % n, i, kind).await;
                lock(&results).push(Outcome {
                    result: r.map_err(|e| e.to_string()),
                });
            }
        }));
    }
    let samples: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let progress = {
        let (results, samples) = (results.clone(), samples.clone());
        let sample_every = Duration::from_secs(args.sample_s.max(1));
        tokio::spawn(async move {
            let mut seen = 0;
            let mut next_sample = started + sample_every;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let done = lock(&results).len();
                if let Some(d) = duration {
                    let el = started.elapsed();
                    if el.as_secs_f64() > 0.0 {
                        let pct = (el.as_secs_f64() / d.as_secs_f64() * 100.0).min(100.0);
                        eprint!("\rbench: soak {pct:5.1}% {done} sessions");
                    }
                    if Instant::now() >= next_sample {
                        next_sample += sample_every;
                        let sample = {
                            let r = lock(&results);
                            let s = watched.sample(el.as_secs_f64(), &r[seen..], r.len());
                            seen = r.len();
                            s
                        };
                        eprintln!("\n{sample}");
                        lock(&samples).push(sample);
                    }
                } else {
                    let bar = "#".repeat(done * 40 / total.max(1));
                    eprint!("\rbench: [{bar:<40}] {done}/{total}");
                }
            }
        })
    };
    for w in workers {
        w.await?;
    }
    progress.abort();
    eprintln!();
    let elapsed = started.elapsed().as_secs_f64();
    let cpu: Vec<(String, f64)> = pids
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| (name.clone(), cpu_seconds(*pid) - before))
        .collect();
    let results = std::mem::take(&mut *lock(&results));
    let errors: Vec<&String> = results
        .iter()
        .filter_map(|r| r.result.as_ref().err())
        .collect();
    let (mut create, mut total): (Vec<f64>, Vec<f64>) = results
        .iter()
        .filter_map(|r| r.result.as_ref().ok().copied())
        .unzip();
    let completed = total.len();
    let sessions_per_s = completed as f64 / elapsed;
    eprintln!("bench: measuring the in-process crypto-only limit for {n} signers …");
    let limit = tokio::task::spawn_blocking(move || crypto_limit(n, format, 3.0)).await?;
    let out = serde_json::json!({
        "parties": n,
        "sessions": results.len(),
        "concurrency": args.concurrency,
        "format": format.as_str(),
        "completed": completed,
        "errors": errors.len(),
        "first_error": errors.first().map(|e| e.to_string()),
        "seconds": elapsed,
        "sessions_per_s": sessions_per_s,
        "p50_ms": pct(&mut total, 0.50),
        "p90_ms": pct(&mut total, 0.90),
        "p99_ms": pct(&mut total, 0.99),
        "create_p50_ms": pct(&mut create, 0.50),
        "create_p99_ms": pct(&mut create, 0.99),
        "mesh_setup_ms": mesh_ms,
        "one_round": args.one_round,
        "pool_size": args.one_round.then_some(args.pool_size),
        "pool_fill_ms": pool_fill_ms,
        "pool_waits": POOL_WAITS.load(std::sync::atomic::Ordering::Relaxed),
        "messages": kind.messages,
        "signatures_per_s": sessions_per_s * kind.messages as f64,
        "signature_p50_ms": pct(&mut total.clone(), 0.50) / kind.messages as f64,
        "signatures_ratio_to_limit": sessions_per_s * kind.messages as f64 / limit,
        "cpu_seconds": cpu.iter().map(|(k, v)| (k.clone(), serde_json::json!((v * 1000.0).round() / 1000.0))).collect::<serde_json::Map<_, _>>(),
        "cpu_total_seconds": cpu.iter().map(|(_, v)| v).sum::<f64>(),
        "limit_sessions_per_s": limit,
        "ratio_to_limit": sessions_per_s / limit,
    });
    let mut out = out;
    let samples = std::mem::take(&mut *lock(&samples));
    if !samples.is_empty() {
        out["soak"] = soak_summary(&samples, n);
        out["samples"] = serde_json::Value::Array(samples);
    }
    drop(parties);
    Ok(out)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let json = args.json;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("musig2-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(out) => {
            if json {
                println!("{out}");
            } else {
                println!(
                    "{} parties, {} sessions, {} in flight ({}): {:.1} sessions/s, total p50 {:.2} / p90 {:.2} / p99 {:.2} ms (create p50 {:.2} ms); limit {:.1} sessions/s in-process on one core: ratio {:.3}",
                    out["parties"],
                    out["completed"],
                    out["concurrency"],
                    out["format"].as_str().unwrap_or(""),
                    out["sessions_per_s"].as_f64().unwrap_or(0.0),
                    out["p50_ms"].as_f64().unwrap_or(0.0),
                    out["p90_ms"].as_f64().unwrap_or(0.0),
                    out["p99_ms"].as_f64().unwrap_or(0.0),
                    out["create_p50_ms"].as_f64().unwrap_or(0.0),
                    out["limit_sessions_per_s"].as_f64().unwrap_or(0.0),
                    out["ratio_to_limit"].as_f64().unwrap_or(0.0)
                );
                if out["messages"].as_u64().unwrap_or(1) > 1 {
                    println!(
                        "{} messages per session: {:.1} signatures/s (ratio to the limit {:.3})",
                        out["messages"],
                        out["signatures_per_s"].as_f64().unwrap_or(0.0),
                        out["signatures_ratio_to_limit"].as_f64().unwrap_or(0.0)
                    );
                }
                println!("cpu seconds per process: {}", out["cpu_seconds"]);
            }
            if out["errors"].as_u64().unwrap_or(1) == 0 {
                std::process::ExitCode::SUCCESS
            } else {
                eprintln!(
                    "musig2-bench: {} sessions failed, first: {}",
                    out["errors"], out["first_error"]
                );
                std::process::ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("musig2-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
