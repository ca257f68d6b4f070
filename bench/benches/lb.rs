//! Nanoseconds per backend pick for each policy of the `lb` crate: the three consistent-hash
//! schemes (plain and with bounded loads), power of two choices over peak-EWMA costs, round
//! robin and smooth weighted round robin, plus the health read and the retry budget that sit
//! on the same request path. Backend counts: 3, 4, 10, 64 and 100.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use lb::{
    hash_key, p2c_pick, GroupHealth, HashRing, HashScheme, OutlierConfig, PeakEwma, RetryBudget,
    RetryBudgetConfig, RoundRobin, WeightedRoundRobin, DEFAULT_LOAD_FACTOR,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

const SIZES: [usize; 5] = [3, 4, 10, 64, 100];
const NOW: u64 = 1_000_000_000_000;

fn backends(n: usize) -> Vec<(u32, u32)> {
    (0..n)
        .map(|i| (hash_key(format!("10.0.0.{i}:8080").as_bytes()) as u32, 1))
        .collect()
}

/// 1024 distinct session-id hashes, cycled through so that the branch predictor and the
/// caches see a realistic spread of keys.
fn keys() -> Vec<u64> {
    (0..1024u32)
        .map(|i| hash_key(format!("8f14e45f-ceea-467f-a0f6-{i:012x}").as_bytes()))
        .collect()
}

fn schemes() -> [(&'static str, HashScheme); 3] {
    [
        ("rendezvous", HashScheme::Rendezvous),
        ("maglev", HashScheme::MAGLEV),
        ("ring", HashScheme::RING),
    ]
}

fn hashing(c: &mut Criterion) {
    let keys = keys();
    let session = b"8f14e45f-ceea-467f-a0f6-1b2c3d4e5f60";
    c.bench_function("hash_key/session-id-36B", |b| {
        b.iter(|| hash_key(black_box(session)))
    });
    let health = GroupHealth::new(100, OutlierConfig::default());
    for (name, scheme) in schemes() {
        let mut g = c.benchmark_group(format!("hash-pick/{name}"));
        for n in SIZES {
            let ring = HashRing::with_scheme(scheme, &backends(n));
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    ring.pick(black_box(keys[k]), |i| health.is_eligible(i, NOW))
                })
            });
        }
        g.finish();
        let mut g = c.benchmark_group(format!("hash-pick-bounded/{name}"));
        for n in SIZES {
            let ring = HashRing::with_scheme(scheme, &backends(n));
            let mut rng = StdRng::seed_from_u64(7);
            let loads: Vec<u32> = (0..n).map(|_| rng.gen_range(0..200)).collect();
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::from_parameter(n), &ring, |b, ring| {
                b.iter(|| {
                    k = (k + 1) & 1023;
                    ring.pick_bounded(black_box(keys[k]), &loads, DEFAULT_LOAD_FACTOR, |i| {
                        health.is_eligible(i, NOW)
                    })
                })
            });
        }
        g.finish();
    }
}

fn least_request(c: &mut Criterion) {
    let mut g = c.benchmark_group("p2c-peak-ewma");
    for n in SIZES {
        let health = GroupHealth::new(n, OutlierConfig::default());
        let ewma: Vec<PeakEwma> = (0..n).map(|_| PeakEwma::new(0)).collect();
        for (i, e) in ewma.iter().enumerate() {
            e.observe(1_000_000 + i as u64 * 10_000, NOW - 1_000_000);
        }
        let outstanding: Vec<u32> = (0..n as u32).map(|i| i % 7).collect();
        let mut rng = StdRng::seed_from_u64(1);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                p2c_pick(
                    &mut rng,
                    black_box(n),
                    |i| ewma[i].cost(NOW, outstanding[i]),
                    |i| health.is_eligible(i, NOW),
                )
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("round-robin");
    for n in SIZES {
        let rr = RoundRobin::starting_at(0);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| rr.pick(black_box(n)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("weighted-round-robin");
    for n in SIZES {
        let health = GroupHealth::new(n, OutlierConfig::default());
        let weights: Vec<u32> = (0..n as u32).map(|i| 1 + i % 3).collect();
        let wrr = WeightedRoundRobin::new(&weights);
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| wrr.pick(|i| health.is_eligible(black_box(i), NOW)))
        });
    }
    g.finish();
}

fn health_and_budget(c: &mut Criterion) {
    let health = GroupHealth::new(64, OutlierConfig::default());
    health.set_draining(3, true);
    let mut i = 0usize;
    c.bench_function("health/is_eligible", |b| {
        b.iter(|| {
            i = (i + 1) & 63;
            health.is_eligible(black_box(i), black_box(NOW))
        })
    });
    c.bench_function("health/record_success", |b| {
        b.iter(|| health.record_success(black_box(5)))
    });
    let budget = RetryBudget::new(RetryBudgetConfig::default()).unwrap();
    let mut now = NOW;
    c.bench_function("retry-budget/deposit+try_withdraw", |b| {
        b.iter(|| {
            now += 1_000;
            budget.deposit(now);
            budget.try_withdraw(black_box(now))
        })
    });
}

criterion_group!(benches, hashing, least_request, health_and_budget);
criterion_main!(benches);
