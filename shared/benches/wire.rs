//! What validating a session context's keys costs: every message names its sender's key and
//! every announcement and signer request carries the signers' keys. Parsed keys are
//! remembered (`shared::wire`), so a context of keys seen before costs lookups, not square
//! roots; the uncached parse of the same keys is measured beside it.
//!
//! `cargo bench -p shared --bench wire` (add `-- --quick` for a shorter run).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use criterion::{BenchmarkId, Criterion};
use shared::musig::SecretKey;
use shared::wire::{SessionContext, pb};
use std::hint::black_box;

fn keys(n: usize) -> Vec<[u8; 33]> {
    let mut k: Vec<[u8; 33]> = (1..=n)
        .map(|i| {
            let mut b = [0u8; 32];
            b[24..].copy_from_slice(&(i as u64).to_be_bytes());
            SecretKey::from_bytes(&b).unwrap().public_key()
        })
        .collect();
    k.sort_unstable();
    k
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("context_keys");
    for n in [3usize, 100] {
        let keys = keys(n);
        let pb = pb::SessionContext {
            signer_keys: keys.iter().map(|k| k.to_vec()).collect(),
            message: vec![7u8; 32],
            format: pb::SignatureFormat::Bip340 as i32,
            ..Default::default()
        };
        g.bench_with_input(BenchmarkId::new("remembered", n), &n, |b, _| {
            b.iter(|| SessionContext::from_pb(black_box(&pb)).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("parsed_each_time", n), &n, |b, _| {
            b.iter(|| {
                for k in black_box(&keys) {
                    secp256k1::PublicKey::from_byte_array_compressed(*k).unwrap();
                }
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
