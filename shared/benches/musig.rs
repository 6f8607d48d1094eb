//! MuSig2 operation costs for both formats at 3 and 100 signers, with libsecp256k1's own
//! `musig` module measured in the same run for BIP340. After the criterion runs, a table of mean
//! times and the ratio ours / libsecp256k1 is printed.
//!
//! `cargo bench -p shared` (add `-- --quick` for a shorter run).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    missing_docs
)]

use criterion::{BatchSize, BenchmarkId, Criterion};
use secp256k1::musig as lib;
use shared::musig::{
    AggNonce, KeyAggContext, PartialSignature, PubNonce, SecNonce, SecretKey, SignatureFormat,
    SigningSession, key_sort, nonce_gen,
};
use std::hint::black_box;

const SIZES: [usize; 2] = [3, 100];
const MSG: [u8; 32] = [0x42; 32];

struct Fixture {
    sks: Vec<SecretKey>,
    keys: Vec<[u8; 33]>,
}

fn fixture(n: usize) -> Fixture {
    let mut sks: Vec<SecretKey> = (0..n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            b[31] = 1;
            SecretKey::from_bytes(&b).unwrap()
        })
        .collect();
    sks.sort_by_key(|s| s.public_key());
    let keys = key_sort(&sks.iter().map(SecretKey::public_key).collect::<Vec<_>>());
    Fixture { sks, keys }
}

fn format_name(f: SignatureFormat) -> &'static str {
    f.as_str()
}

/// Ours: everything a signer does from the aggregate nonce to its partial signature.
fn prepared(format: SignatureFormat, fx: &Fixture) -> (KeyAggContext, Vec<PubNonce>, AggNonce) {
    let ctx = KeyAggContext::new(format, &fx.keys).unwrap();
    let mut rng = rand::rng();
    let nonces: Vec<PubNonce> = fx
        .sks
        .iter()
        .map(|sk| nonce_gen(&mut rng, sk, &ctx, &MSG).unwrap().1)
        .collect();
    let agg = AggNonce::sum(format, &nonces).unwrap();
    (ctx, nonces, agg)
}

fn bench(c: &mut Criterion) {
    for n in SIZES {
        let fx = fixture(n);
        let pks: Vec<secp256k1::PublicKey> = fx
            .keys
            .iter()
            .map(|k| secp256k1::PublicKey::from_byte_array_compressed(*k).unwrap())
            .collect();
        let pk_refs: Vec<&secp256k1::PublicKey> = pks.iter().collect();
        let kps: Vec<secp256k1::Keypair> = fx
            .sks
            .iter()
            .map(|s| secp256k1::Keypair::from_secret_bytes(*s.dangerous_to_bytes()).unwrap())
            .collect();

        let mut g = c.benchmark_group("key_agg");
        for f in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
            g.bench_with_input(BenchmarkId::new(format_name(f), n), &n, |b, _| {
                b.iter(|| KeyAggContext::new(f, black_box(&fx.keys)).unwrap())
            });
        }
        g.bench_with_input(BenchmarkId::new("libsecp", n), &n, |b, _| {
            b.iter(|| lib::KeyAggCache::new(black_box(&pk_refs)))
        });
        g.finish();

        let cache = lib::KeyAggCache::new(&pk_refs);
        let mut g = c.benchmark_group("nonce_gen");
        for f in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
            let ctx = KeyAggContext::new(f, &fx.keys).unwrap();
            let mut rng = rand::rng();
            g.bench_with_input(BenchmarkId::new(format_name(f), n), &n, |b, _| {
                b.iter(|| nonce_gen(&mut rng, &fx.sks[0], &ctx, &MSG).unwrap())
            });
        }
        let mut rng = rand::rng();
        g.bench_with_input(BenchmarkId::new("libsecp", n), &n, |b, _| {
            b.iter(|| {
                lib::new_nonce_pair(
                    lib::SessionSecretRand::from_rng(&mut rng),
                    Some(&cache),
                    Some(kps[0].secret_key()),
                    kps[0].public_key(),
                    Some(&MSG),
                    None,
                )
            })
        });
        g.finish();

        // Partial signing: session values (nonce coefficient, final nonce, challenge) plus the
        // signature, from a fresh secret nonce each iteration (made outside the timing).
        let mut g = c.benchmark_group("partial_sign");
        for f in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
            let (ctx, _, agg) = prepared(f, &fx);
            let mut rng = rand::rng();
            g.bench_with_input(BenchmarkId::new(format_name(f), n), &n, |b, _| {
                b.iter_batched(
                    || nonce_gen(&mut rng, &fx.sks[0], &ctx, &MSG).unwrap().0,
                    |sec: SecNonce| {
                        let s = SigningSession::new(&ctx, &agg, &MSG).unwrap();
                        s.dangerous_sign_unverified(sec, &fx.sks[0], 0).unwrap()
                    },
                    BatchSize::SmallInput,
                )
            });
            g.bench_with_input(
                BenchmarkId::new(format!("{}+self_verify", format_name(f)), n),
                &n,
                |b, _| {
                    b.iter_batched(
                        || nonce_gen(&mut rng, &fx.sks[0], &ctx, &MSG).unwrap().0,
                        |sec: SecNonce| {
                            let s = SigningSession::new(&ctx, &agg, &MSG).unwrap();
                            s.sign_at(sec, &fx.sks[0], 0).unwrap()
                        },
                        BatchSize::SmallInput,
                    )
                },
            );
        }
        let lib_nonces: Vec<(lib::PublicNonce,)> = kps
            .iter()
            .map(|kp| {
                let (_, p) = lib::new_nonce_pair(
                    lib::SessionSecretRand::from_rng(&mut rng),
                    Some(&cache),
                    Some(kp.secret_key()),
                    kp.public_key(),
                    Some(&MSG),
                    None,
                );
                (p,)
            })
            .collect();
        let lib_agg =
            lib::AggregatedNonce::new(&lib_nonces.iter().map(|p| &p.0).collect::<Vec<_>>());
        g.bench_with_input(BenchmarkId::new("libsecp", n), &n, |b, _| {
            b.iter_batched(
                || {
                    lib::new_nonce_pair(
                        lib::SessionSecretRand::from_rng(&mut rng),
                        Some(&cache),
                        Some(kps[0].secret_key()),
                        kps[0].public_key(),
                        Some(&MSG),
                        None,
                    )
                    .0
                },
                |sec| {
                    let s = lib::Session::new(&cache, lib_agg, &MSG);
                    s.partial_sign(sec, &kps[0], &cache)
                },
                BatchSize::SmallInput,
            )
        });
        g.finish();

        // Verification of one partial signature and aggregation of all of them.
        let mut gv = c.benchmark_group("partial_verify");
        let mut ga_inputs = Vec::new();
        for f in [SignatureFormat::Bip340, SignatureFormat::Lotus] {
            let ctx = KeyAggContext::new(f, &fx.keys).unwrap();
            let mut rng = rand::rng();
            let pairs: Vec<(SecNonce, PubNonce)> = fx
                .sks
                .iter()
                .map(|sk| nonce_gen(&mut rng, sk, &ctx, &MSG).unwrap())
                .collect();
            let nonces: Vec<PubNonce> = pairs.iter().map(|p| p.1).collect();
            let agg = AggNonce::sum(f, &nonces).unwrap();
            let session = SigningSession::new(&ctx, &agg, &MSG).unwrap();
            let psigs: Vec<PartialSignature> = pairs
                .into_iter()
                .zip(&fx.sks)
                .enumerate()
                .map(|(i, ((sec, _), sk))| session.sign_at(sec, sk, i).unwrap())
                .collect();
            gv.bench_with_input(BenchmarkId::new(format_name(f), n), &n, |b, _| {
                b.iter(|| {
                    session
                        .verify_partial(black_box(&psigs[0]), &nonces[0], 0)
                        .unwrap()
                })
            });
            ga_inputs.push((f, ctx, agg, psigs, nonces));
        }
        let lib_pairs: Vec<(lib::SecretNonce, lib::PublicNonce)> = kps
            .iter()
            .map(|kp| {
                lib::new_nonce_pair(
                    lib::SessionSecretRand::from_rng(&mut rng),
                    Some(&cache),
                    Some(kp.secret_key()),
                    kp.public_key(),
                    Some(&MSG),
                    None,
                )
            })
            .collect();
        let lib_pubs: Vec<lib::PublicNonce> = lib_pairs.iter().map(|p| p.1).collect();
        let lib_agg = lib::AggregatedNonce::new(&lib_pubs.iter().collect::<Vec<_>>());
        let lib_session = lib::Session::new(&cache, lib_agg, &MSG);
        let lib_psigs: Vec<lib::PartialSignature> = lib_pairs
            .into_iter()
            .zip(&kps)
            .map(|((sec, _), kp)| lib_session.partial_sign(sec, kp, &cache))
            .collect();
        gv.bench_with_input(BenchmarkId::new("libsecp", n), &n, |b, _| {
            b.iter(|| {
                lib_session.partial_verify(&cache, black_box(&lib_psigs[0]), &lib_pubs[0], pks[0])
            })
        });
        gv.finish();

        let mut ga = c.benchmark_group("aggregate");
        for (f, ctx, agg, psigs, nonces) in &ga_inputs {
            ga.bench_with_input(
                BenchmarkId::new(format!("{}_nonces", format_name(*f)), n),
                &n,
                |b, _| b.iter(|| AggNonce::sum(*f, black_box(nonces)).unwrap()),
            );
            let session = SigningSession::new(ctx, agg, &MSG).unwrap();
            ga.bench_with_input(
                BenchmarkId::new(format!("{}_signature", format_name(*f)), n),
                &n,
                |b, _| b.iter(|| session.aggregate(black_box(psigs)).unwrap()),
            );
        }
        ga.bench_with_input(BenchmarkId::new("libsecp_nonces", n), &n, |b, _| {
            b.iter(|| lib::AggregatedNonce::new(&lib_pubs.iter().collect::<Vec<_>>()))
        });
        ga.bench_with_input(BenchmarkId::new("libsecp_signature", n), &n, |b, _| {
            b.iter(|| lib_session.partial_sig_agg(&lib_psigs.iter().collect::<Vec<_>>()))
        });
        ga.finish();
    }
}

/// Mean time in µs from criterion's saved estimates.
fn mean_us(dir: &std::path::Path, group: &str, id: &str, n: usize) -> Option<f64> {
    let path = dir
        .join(group)
        .join(id)
        .join(n.to_string())
        .join("new/estimates.json");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    v["mean"]["point_estimate"].as_f64().map(|ns| ns / 1000.0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();

    let target = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").to_string());
    let dir = std::path::Path::new(&target).join("criterion");
    println!(
        "\n{:<16} {:>5} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "operation", "n", "bip340 µs", "lotus µs", "libsecp µs", "bip340/lib", "lotus/lib"
    );
    let rows: [(&str, &str, &str, &str); 6] = [
        ("key_agg", "bip340", "lotus", "libsecp"),
        ("nonce_gen", "bip340", "lotus", "libsecp"),
        ("partial_sign", "bip340", "lotus", "libsecp"),
        ("partial_verify", "bip340", "lotus", "libsecp"),
        (
            "aggregate",
            "bip340_nonces",
            "lotus_nonces",
            "libsecp_nonces",
        ),
        (
            "aggregate",
            "bip340_signature",
            "lotus_signature",
            "libsecp_signature",
        ),
    ];
    for n in SIZES {
        for (group, a, b, l) in rows {
            let (x, y, z) = (
                mean_us(&dir, group, a, n),
                mean_us(&dir, group, b, n),
                mean_us(&dir, group, l, n),
            );
            let show = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            let ratio = |v: Option<f64>| match (v, z) {
                (Some(v), Some(z)) if z > 0.0 => format!("{:.2}x", v / z),
                _ => "-".to_string(),
            };
            let label = if group == "aggregate" {
                a.trim_start_matches("bip340_")
            } else {
                group
            };
            let label = if group == "aggregate" {
                format!("agg_{label}")
            } else {
                label.to_string()
            };
            println!(
                "{label:<16} {n:>5} {:>12} {:>12} {:>12} {:>10} {:>10}",
                show(x),
                show(y),
                show(z),
                ratio(x),
                ratio(y)
            );
        }
    }
    for n in SIZES {
        for f in ["bip340", "lotus"] {
            if let (Some(s), Some(v)) = (
                mean_us(&dir, "partial_sign", &format!("{f}+self_verify"), n),
                mean_us(&dir, "partial_sign", f, n),
            ) {
                println!(
                    "partial_sign with self-verification ({f}, n={n}): {s:.2} µs ({v:.2} µs without)"
                );
            }
        }
    }
}
