//! `musig2-chaos`: sessions driven through the gRPC API of real signer and coordinator processes
//! while signers and coordinators are SIGKILLed and restarted at random, then an audit of what
//! the promises say can never happen:
//!
//! - from every signer's journal: no secret nonce produced two partial signatures
//!   (`nonce_reuse`), no public nonce was issued twice (`nonce_reissued`), the chain verifies;
//! - every partial signature behind a completed session is in its signer's journal
//!   (`unjournaled`);
//! - from the coordinators, after everything is back: every session the API ever reported
//!   complete still returns its final signature (`lost_signatures`) and it verifies
//!   (`unverified_signatures`); every other session ended with a reason (`stuck` counts those
//!   that did not).
//!
//! One seed chooses the creators, messages, kill targets and intervals (timing is the machine's).
//! Progress on stderr; `--json` prints one object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use e2e_tests::localnet::{Binaries, LocalParty};
use musig2_proto::v1 as pb;
use rand::{Rng, SeedableRng};
use shared::musig::{Signature, SignatureFormat};
use tokio::sync::Mutex;

/// Kill -9 chaos against real processes, audited from the journals and the coordinators.
#[derive(Debug, Parser)]
#[command(name = "musig2-chaos", version, about)]
struct Args {
    /// Parties (one signer and one coordinator process each).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=10))]
    parties: u8,
    /// Sessions to run.
    #[arg(long, default_value_t = 200)]
    sessions: usize,
    /// Sessions in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Mean time between kills, ms (0: no kills).
    #[arg(long, default_value_t = 400)]
    kill_every_ms: u64,
    /// bip340 or lotus.
    #[arg(long, default_value = "bip340")]
    format: String,
    /// Keep the parties' files here instead of a temporary directory.
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Extra TOML for every coordinator's configuration (e.g. `[metrics]` to watch them).
    #[arg(long, default_value = "")]
    coordinator_extra: String,
    /// Above 1: every second session is a batch session of this many messages (issue 17),
    /// audited per message (each is its own session in the signers' journals).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    batch: u16,
}

/// What the API told us about one session.
#[derive(Debug, Default, Clone)]
struct Outcome {
    /// Its messages: one, or a batch's.
    messages: Vec<Vec<u8>>,
    /// Per party: the signatures (one per message) and output key its API returned as complete.
    complete: BTreeMap<usize, (Vec<Vec<u8>>, Vec<u8>)>,
}

impl Outcome {
    fn batch(&self) -> bool {
        self.messages.len() > 1
    }

    /// The session ids under which the signers journal this session's messages.
    fn journal_ids(&self, id: &str) -> Vec<String> {
        let Ok(sid) = shared::election::SessionId::from_hex(id) else {
            return vec![id.to_string()];
        };
        if !self.batch() {
            return vec![id.to_string()];
        }
        (0..self.messages.len())
            .map(|i| {
                sid.batch_item(u32::try_from(i).unwrap_or(u32::MAX))
                    .to_string()
            })
            .collect()
    }
}

struct Net {
    parties: Mutex<Vec<LocalParty>>,
    clients:
        Vec<pb::coordinator_service_client::CoordinatorServiceClient<tonic::transport::Channel>>,
    bins: Binaries,
    keys: Vec<Vec<u8>>,
}

fn lazy_client(
    p: &LocalParty,
) -> anyhow::Result<
    pb::coordinator_service_client::CoordinatorServiceClient<tonic::transport::Channel>,
> {
    let tls = musig2_proto::transport::client_tls(&p.ca, &p.app.cert, &p.app.key, "localhost")?;
    let ch = tonic::transport::Channel::from_shared(format!("https://localhost:{}", p.api_port))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(60))
        .connect_lazy();
    Ok(pb::coordinator_service_client::CoordinatorServiceClient::new(ch))
}

/// Ask party `p` to sign session `id` until it answers or `deadline` passes (its coordinator
/// may be down for a while).
async fn sign_on(
    net: &Net,
    p: usize,
    id: &str,
    deadline: Instant,
) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
    let not_found_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut c = net.clients[p].clone();
        match c
            .sign(pb::SignRequest {
                session_id: id.to_string(),
                timeout_ms: Some(20_000),
                ..Default::default()
            })
            .await
        {
            Ok(r) => {
                let r = r.into_inner();
                let out = r.session.map(|s| s.output_key).unwrap_or_default();
                return Some((r.signatures, out));
            }
            // Coordinator down: try again until the deadline.
            Err(e)
                if matches!(
                    e.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                ) =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            // It has not heard of the session yet (the announcement is on its way, or was lost
            // with a killed creator): give it a few seconds, not the whole deadline.
            Err(e) if e.code() == tonic::Code::NotFound && Instant::now() < not_found_until => {
                // Coordinator down, or it has not heard of the session yet: try again.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return None, // aborted (with a reason) or refused
        }
    }
    None
}

async fn run_session(
    net: Arc<Net>,
    i: usize,
    creator: usize,
    format: SignatureFormat,
    seed: u64,
    batch: usize,
) -> (String, Outcome) {
    let digest = |m: String| <sha2::Sha256 as sha2::Digest>::digest(m.as_bytes()).to_vec();
    let messages: Vec<Vec<u8>> = if batch > 1 && i % 2 == 1 {
        (0..batch)
            .map(|m| digest(format!("chaos {seed} {i} {m}")))
            .collect()
    } else {
        vec![digest(format!("chaos {seed} {i}"))]
    };
    let (message, batch_messages) = match messages.as_slice() {
        [one] => (one.clone(), Vec::new()),
        _ => (Vec::new(), messages.clone()),
    };
    let deadline = Instant::now() + Duration::from_secs(25);
    let mut outcome = Outcome {
        messages,
        ..Outcome::default()
    };
    // Create on the creator (retrying while its coordinator is down).
    let id = loop {
        if Instant::now() >= deadline {
            return (String::new(), outcome);
        }
        let mut c = net.clients[creator].clone();
        match c
            .create_session(pb::CreateSessionRequest {
                signer_keys: net.keys.clone(),
                message: message.clone(),
                batch_messages: batch_messages.clone(),
                format: shared::wire::format_to_pb(format) as i32,
                timeout_ms: Some(30_000),
                ..Default::default()
            })
            .await
        {
            Ok(r) => match r.into_inner().session {
                Some(s) => break s.session_id,
                None => return (String::new(), outcome),
            },
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let n = net.clients.len();
    let mut calls = Vec::new();
    for p in 0..n {
        let (net, id) = (net.clone(), id.clone());
        calls.push(tokio::spawn(async move {
            (p, sign_on(&net, p, &id, deadline).await)
        }));
    }
    for c in calls {
        if let Ok((p, Some(r))) = c.await {
            outcome.complete.insert(p, r);
        }
    }
    (id, outcome)
}

async fn restart(net: &Net, p: usize, signer: bool) {
    let mut parties = net.parties.lock().await;
    let party = &mut parties[p];
    for _ in 0..50 {
        let r = if signer {
            party.start_signer(&net.bins)
        } else {
            party.start_coordinator(&net.bins)
        };
        if r.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "chaos: could not restart party {p} ({})",
        if signer { "signer" } else { "coordinator" }
    );
}

#[derive(Debug, Default)]
struct Audit {
    nonce_reuse: usize,
    nonce_reissued: usize,
    unjournaled: usize,
    journal_broken: usize,
    partial_signatures: usize,
}

/// `completed`: per completed session, the ids its messages are journaled under.
fn audit_journals(parties: &[LocalParty], completed: &[Vec<String>]) -> Audit {
    use signer_svc::journal::RecordKind;
    let mut a = Audit::default();
    for p in parties {
        let path = p.dir.join("journal.log");
        let data = std::fs::read(&path).unwrap_or_default();
        let records = match signer_svc::journal::records(&path.display().to_string(), &data) {
            Ok((_, r)) => r,
            Err(e) => {
                eprintln!("chaos: party {} journal: {e}", p.index);
                a.journal_broken += 1;
                continue;
            }
        };
        let mut issued: HashMap<String, usize> = HashMap::new();
        let mut signed: HashMap<String, usize> = HashMap::new();
        let mut signed_sessions: std::collections::HashSet<String> = Default::default();
        for r in &records {
            let nonce = r.event.public_nonce.clone().unwrap_or_default();
            match r.kind {
                RecordKind::Nonce => *issued.entry(nonce).or_default() += 1,
                RecordKind::PartialSignature => {
                    *signed.entry(nonce).or_default() += 1;
                    a.partial_signatures += 1;
                    if let Some(s) = &r.event.session_id {
                        signed_sessions.insert(s.clone());
                    }
                }
                _ => {}
            }
        }
        a.nonce_reissued += issued.values().filter(|c| **c > 1).count();
        a.nonce_reuse += signed.values().filter(|c| **c > 1).count();
        a.unjournaled += completed
            .iter()
            .filter(|ids| ids.iter().any(|s| !signed_sessions.contains(s)))
            .count();
    }
    a
}

async fn run(args: Args) -> anyhow::Result<serde_json::Value> {
    let format: SignatureFormat = args
        .format
        .parse()
        .map_err(|_| anyhow::anyhow!("--format must be bip340 or lotus"))?;
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let started = Instant::now();
    let bins = Binaries::beside_current_exe()?;
    let tmp = tempfile::tempdir()?;
    let base = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&base)?;
    let n = usize::from(args.parties);
    eprintln!(
        "chaos: {n} parties in {} (seed {})",
        base.display(),
        args.seed
    );
    let extra = format!(
        "stuck_session_timeout_ms = 8000\ncleanup_interval_ms = 500\nbroadcast_timeout_ms = 600000\n{}\n",
        args.coordinator_extra
    );
    let mut parties = Vec::new();
    for i in 0..n {
        let mut p = LocalParty::prepare(i, &base, &bins, &extra)?;
        p.start_signer(&bins)?;
        p.start_coordinator(&bins)?;
        parties.push(p);
    }
    // Every coordinator dials every other at each (re)start.
    let addrs: Vec<String> = parties.iter().map(LocalParty::p2p_addr).collect();
    for p in &parties {
        let others: Vec<String> = addrs
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != p.index)
            .map(|(_, a)| a.clone())
            .collect();
        p.set_bootstrap(&others)?;
    }
    let mut clients = Vec::new();
    for p in &parties {
        clients.push(lazy_client(p)?);
    }
    for (i, client) in clients.iter_mut().enumerate() {
        for addr in addrs.iter().take(i) {
            client
                .connect_peer(pb::ConnectPeerRequest {
                    multiaddr: addr.clone(),
                })
                .await
                .context("connecting the parties")?;
        }
    }
    let mut keys: Vec<Vec<u8>> = parties
        .iter()
        .map(|p| hex::decode(&p.key))
        .collect::<Result<_, _>>()?;
    keys.sort();
    let net = Arc::new(Net {
        parties: Mutex::new(parties),
        clients,
        bins,
        keys,
    });
    // Wait for the mesh.
    for c in &net.clients {
        for _ in 0..200 {
            if c.clone()
                .get_node_info(pb::GetNodeInfoRequest {})
                .await?
                .into_inner()
                .connected_peers as usize
                >= n - 1
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let creators: Vec<usize> = (0..args.sessions).map(|_| rng.random_range(0..n)).collect();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let kills = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // The killer.
    let killer = {
        let (net, done, kills) = (net.clone(), done.clone(), kills.clone());
        let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0x6b69_6c6c);
        let every = args.kill_every_ms;
        tokio::spawn(async move {
            if every == 0 {
                return;
            }
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let wait: f64 = -(every as f64) * (1.0 - rng.random::<f64>()).ln();
                tokio::time::sleep(Duration::from_millis(wait as u64)).await;
                let p = rng.random_range(0..n);
                let signer = rng.random_bool(0.5);
                let down_for = Duration::from_millis(rng.random_range(0..800));
                {
                    let mut parties = net.parties.lock().await;
                    let proc_ = if signer {
                        parties[p].signer.take()
                    } else {
                        parties[p].coordinator.take()
                    };
                    if let Some(pr) = proc_ {
                        pr.kill9();
                        kills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(down_for).await;
                restart(&net, p, signer).await;
            }
        })
    };
    // The driver: `concurrency` workers over the session list, with progress.
    let outcomes = Arc::new(Mutex::new(Vec::<(String, Outcome)>::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (net, outcomes, next, creators) = (
            net.clone(),
            outcomes.clone(),
            next.clone(),
            creators.clone(),
        );
        let (seed, batch) = (args.seed, usize::from(args.batch));
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= creators.len() {
                    return;
                }
                let r = run_session(net.clone(), i, creators[i], format, seed, batch).await;
                outcomes.lock().await.push(r);
            }
        }));
    }
    let progress = {
        let (outcomes, kills, done) = (outcomes.clone(), kills.clone(), done.clone());
        let total = args.sessions;
        tokio::spawn(async move {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let o = outcomes.lock().await;
                let complete = o.iter().filter(|(_, x)| !x.complete.is_empty()).count();
                eprintln!(
                    "chaos: {}/{total} sessions, {complete} complete somewhere, {} kills",
                    o.len(),
                    kills.load(std::sync::atomic::Ordering::Relaxed)
                );
            }
        })
    };
    for w in workers {
        w.await?;
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    killer.await?;
    progress.abort();
    // Everything back up.
    {
        let n_parties = net.parties.lock().await.len();
        for p in 0..n_parties {
            let (s_down, c_down) = {
                let ps = net.parties.lock().await;
                (ps[p].signer.is_none(), ps[p].coordinator.is_none())
            };
            if s_down {
                restart(&net, p, true).await;
            }
            if c_down {
                restart(&net, p, false).await;
            }
        }
    }
    eprintln!("chaos: all processes back; settling and auditing …");
    let outcomes = outcomes.lock().await.clone();
    // Settle: every party that knows a session must see it end (complete or aborted with a
    // reason) within the stuck timeout and some slack.
    let settle_deadline = Instant::now() + Duration::from_secs(30);
    let mut stuck = 0usize;
    let mut aborted = 0usize;
    let mut aborted_without_reason = 0usize;
    let mut lost = 0usize;
    let mut unverified = 0usize;
    let mut completed_ids = Vec::new();
    let mut never_created = 0usize;
    for (id, o) in &outcomes {
        if id.is_empty() {
            never_created += 1;
            continue;
        }
        let mut complete_somewhere = !o.complete.is_empty();
        let mut open = false;
        for p in 0..n {
            loop {
                let r = net.clients[p]
                    .clone()
                    .get_session(pb::GetSessionRequest {
                        session_id: id.clone(),
                    })
                    .await;
                let Ok(r) = r else {
                    if r.as_ref()
                        .err()
                        .is_some_and(|e| e.code() == tonic::Code::NotFound)
                    {
                        break; // this party never heard of it (or forgot it after completion)
                    }
                    if Instant::now() > settle_deadline {
                        open = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                let s = r.into_inner().session.unwrap_or_default();
                let phase =
                    pb::SessionPhase::try_from(s.phase).unwrap_or(pb::SessionPhase::Unspecified);
                match phase {
                    pb::SessionPhase::Complete => {
                        complete_somewhere = true;
                        break;
                    }
                    pb::SessionPhase::Aborted | pb::SessionPhase::Closed => {
                        if s.abort_reason.as_deref().unwrap_or_default().is_empty() {
                            aborted_without_reason += 1;
                        }
                        break;
                    }
                    _ if Instant::now() > settle_deadline => {
                        open = true;
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        }
        if open {
            stuck += 1;
        } else if !complete_somewhere {
            aborted += 1;
        }
        // Every signature an API reported must still be there and verify.
        for (p, (sig, out)) in &o.complete {
            match net.clients[*p]
                .clone()
                .get_final_signature(pb::GetFinalSignatureRequest {
                    session_id: id.clone(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    let stored = if o.batch() {
                        r.batch_signatures
                    } else {
                        vec![r.signature]
                    };
                    if stored != *sig {
                        lost += 1;
                    }
                }
                Err(e) => {
                    eprintln!("chaos: party {p} lost the signature of {id}: {e}");
                    lost += 1;
                }
            }
            let ok = sig.len() == o.messages.len()
                && o.messages.iter().zip(sig).all(|(m, sig)| {
                    <[u8; 33]>::try_from(out.as_slice())
                        .ok()
                        .zip(<[u8; 64]>::try_from(sig.as_slice()).ok())
                        .is_some_and(|(k, s)| {
                            shared::musig::verify(format, &k, m, &Signature(s)).is_ok()
                        })
                });
            if !ok {
                unverified += 1;
            }
        }
        if complete_somewhere && !o.complete.is_empty() {
            completed_ids.push(o.journal_ids(id));
        }
    }
    let audit = {
        let parties = net.parties.lock().await;
        audit_journals(&parties, &completed_ids)
    };
    let out = serde_json::json!({
        "parties": n,
        "sessions": args.sessions,
        "concurrency": args.concurrency,
        "batch": args.batch,
        "seed": args.seed,
        "format": format.as_str(),
        "completed": completed_ids.len(),
        "aborted": aborted,
        "never_created": never_created,
        "stuck": stuck,
        "aborted_without_reason": aborted_without_reason,
        "kills": kills.load(std::sync::atomic::Ordering::Relaxed),
        "nonce_reuse": audit.nonce_reuse,
        "nonce_reissued": audit.nonce_reissued,
        "unjournaled": audit.unjournaled,
        "journal_broken": audit.journal_broken,
        "partial_signatures_journaled": audit.partial_signatures,
        "lost_signatures": lost,
        "unverified_signatures": unverified,
        "seconds": started.elapsed().as_secs_f64(),
    });
    // Stop everything before the temporary directory goes.
    net.parties.lock().await.clear();
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
            eprintln!("musig2-chaos: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(out) => {
            if json {
                println!("{out}");
            } else {
                println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
            }
            let bad = [
                "nonce_reuse",
                "nonce_reissued",
                "unjournaled",
                "journal_broken",
                "lost_signatures",
                "unverified_signatures",
                "stuck",
                "aborted_without_reason",
            ]
            .iter()
            .any(|k| out[*k].as_u64().unwrap_or(1) != 0);
            if bad {
                eprintln!("musig2-chaos: a promise was broken (see the non-zero counters)");
                std::process::ExitCode::FAILURE
            } else {
                std::process::ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("musig2-chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
