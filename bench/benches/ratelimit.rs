//! What a rate-limit check costs on the request path: one GCRA check uncontended and with two
//! threads on one key, keyed-table checks with 1 and 100 000 keys, hashing a 40-byte API key,
//! a full `RateLimits::check` with two matching rules, and a concurrency permit taken and
//! released (uncontended, and two threads on one key) or handed to a queued caller.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ratelimit::{
    ConcurrencyLimit, Decision, Gcra, Glob, KeyHasher, KeySource, KeyedLimiter, RateLimits,
    RequestInfo, Rule,
};

/// A limit loose enough that every check is admitted (the common case on the hot path).
fn loose() -> Gcra {
    Gcra::new(1e9, 1_000_000).unwrap()
}

fn gcra(c: &mut Criterion) {
    let g = loose();
    let cell = AtomicU64::new(0);
    let mut now = 0u64;
    c.bench_function("ratelimit/gcra_check_1_thread", |b| {
        b.iter(|| {
            now += 10;
            black_box(g.check(black_box(&cell), now))
        })
    });

    // Two threads on one cell: each does `iters` checks; the time reported is the wall time
    // per check per thread (so the pair does two checks in that time).
    c.bench_function("ratelimit/gcra_check_2_threads_one_key", |b| {
        b.iter_custom(|iters| {
            let cell = AtomicU64::new(0);
            on_two_threads(iters, |i| {
                black_box(g.check(&cell, i * 10)).ok();
            })
        })
    });
}

/// Runs `step(0..iters)` on two threads at once; the slower thread's wall time.
fn on_two_threads(iters: u64, step: impl Fn(u64) + Sync) -> Duration {
    let barrier = Barrier::new(2);
    let elapsed: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let start = Instant::now();
                    for i in 0..iters {
                        step(i);
                    }
                    start.elapsed()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    elapsed.into_iter().max().unwrap_or_default()
}

fn keyed(c: &mut Criterion) {
    let one = KeyedLimiter::new(loose(), 1024);
    let mut now = 0u64;
    c.bench_function("ratelimit/keyed_check_1_key", |b| {
        b.iter(|| {
            now += 10;
            black_box(one.check(black_box(0x1234_5678_9abc_def0), now))
        })
    });

    let hasher = KeyHasher::new([7, 11]);
    let keys: Vec<u64> = (0..100_000u64)
        .map(|i| hasher.hash_key(&i.to_le_bytes()))
        .collect();
    // Twice the keys in slots, as the docs advise.
    let many = KeyedLimiter::new(loose(), 200_000);
    for &k in &keys {
        many.check(k, 0).unwrap();
    }
    assert!(many.tracked_keys() >= 99_000);
    let mut i = 0usize;
    // A stride coprime with 100 000 walks all keys in a cache-unfriendly order.
    c.bench_function("ratelimit/keyed_check_100k_keys", |b| {
        b.iter(|| {
            i = (i + 7919) % keys.len();
            now += 10;
            black_box(many.check(keys[i], now))
        })
    });
}

fn hashing(c: &mut Criterion) {
    let hasher = KeyHasher::new([0x0123_4567, 0x89ab_cdef]);
    let api_key = b"sk-live-4f9c2a7e1b8d3f6a0c5e9b2d7a4f1c8e";
    assert_eq!(api_key.len(), 40);
    c.bench_function("ratelimit/hash_key_40_bytes", |b| {
        b.iter(|| black_box(hasher.hash_key(black_box(api_key))))
    });
}

fn rules(c: &mut Criterion) {
    let any = |key| Rule {
        server: None,
        method: None,
        tool: None,
        resource_prefix: None,
        key,
        rate: 1e9,
        burst: 1_000_000,
    };
    let limits = RateLimits::new(
        vec![
            Rule {
                server: Some("demo".into()),
                method: Some("tools/call".into()),
                tool: Some(Glob::new("search*")),
                ..any(KeySource::Header("x-api-key".into()))
            },
            any(KeySource::Global),
            Rule {
                resource_prefix: Some("file:///".into()),
                ..any(KeySource::Session)
            },
        ],
        4096,
    )
    .unwrap();
    let req = RequestInfo {
        server: "demo",
        method: "tools/call",
        tool: Some("search_web"),
        uri: None,
    };
    let mut now = 0u64;
    c.bench_function("ratelimit/rate_limits_check_2_of_3_rules", |b| {
        b.iter(|| {
            now += 10;
            let d = limits.check(black_box(&req), |_| Some(0xfeed_f00d), now);
            debug_assert_eq!(d, Decision::Admit);
            black_box(d)
        })
    });
}

fn concurrency(c: &mut Criterion) {
    // The path of nearly every request: a permit is free and nobody waits.
    let limit = Arc::new(ConcurrencyLimit::new(1_000, 1024, 64).unwrap());
    c.bench_function("ratelimit/concurrency_acquire_release_1_key", |b| {
        b.iter(|| {
            drop(black_box(
                limit.try_acquire_owned(black_box(0x1234_5678_9abc_def0)),
            ))
        })
    });

    // Two threads taking and releasing permits of one key, never at the limit: the wall time
    // per acquire+release per thread.
    c.bench_function(
        "ratelimit/concurrency_acquire_release_2_threads_one_key",
        |b| {
            b.iter_custom(|iters| {
                on_two_threads(iters, |_| drop(black_box(limit.try_acquire_owned(7))))
            })
        },
    );

    // The slow path, one thread: a caller queues behind the held permit, the holder releases
    // (handing it over and waking the caller), the caller picks it up and becomes the holder.
    let limit = Arc::new(ConcurrencyLimit::new(1, 1024, 64).unwrap());
    let mut held = limit.try_acquire_owned(9);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    c.bench_function("ratelimit/concurrency_queue_and_hand_over", |b| {
        b.iter(|| {
            let mut wait = limit.acquire_owned(9).unwrap();
            assert!(std::pin::Pin::new(&mut wait).poll(&mut cx).is_pending());
            drop(held.take());
            match std::pin::Pin::new(&mut wait).poll(&mut cx) {
                std::task::Poll::Ready(permit) => held = Some(permit),
                std::task::Poll::Pending => panic!("the released permit was not handed over"),
            }
        })
    });
}

criterion_group!(benches, gcra, keyed, hashing, rules, concurrency);
criterion_main!(benches);
