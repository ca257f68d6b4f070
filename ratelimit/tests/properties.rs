//! Seeded property tests of the rate limit's promises: the `rate × window + burst` bound, no
//! rejection of a caller keeping to its rate, lossless eviction of idle keys, bounded memory.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicU64;

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use mcplb_ratelimit::{Gcra, KeyedLimiter};

const SEC: u64 = 1_000_000_000;

fn config(cases: u32, seed: u64) -> ProptestConfig {
    ProptestConfig {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        ..ProptestConfig::default()
    }
}

/// Arrival times: sorted offsets within ~3 s, in clumps so bursts and idle gaps both occur.
fn arrivals() -> impl Strategy<Value = Vec<u64>> {
    proptest::collection::vec((0u64..3 * SEC, 1usize..20), 1..60).prop_map(|clumps| {
        let mut times: Vec<u64> = clumps
            .into_iter()
            .flat_map(|(at, n)| (0..n as u64).map(move |i| at + i * 997))
            .collect();
        times.sort_unstable();
        times
    })
}

/// Checks the bound over every window [a, b] whose ends are admission instants (the tightest
/// windows): admitted in it ≤ rate × (b − a) + burst.
fn assert_bound(admitted: &[u64], rate: f64, burst: u32) -> Result<(), TestCaseError> {
    for (i, &start) in admitted.iter().enumerate() {
        for (j, &end) in admitted.iter().enumerate().skip(i) {
            let count = (j - i + 1) as f64;
            let window_s = (end - start) as f64 / SEC as f64;
            let bound = rate * window_s + f64::from(burst);
            prop_assert!(
                count <= bound + 1e-9,
                "{count} admitted in {window_s}s window, bound {bound}"
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(300, 0x6c72_0001))]

    #[test]
    fn admitted_never_exceed_rate_times_window_plus_burst(
        rate in 0.5f64..5000.0,
        burst in 1u32..20,
        times in arrivals(),
    ) {
        let gcra = Gcra::new(rate, burst).unwrap();
        let cell = AtomicU64::new(0);
        let admitted: Vec<u64> = times.iter().copied().filter(|&t| gcra.check(&cell, t).is_ok()).collect();
        assert_bound(&admitted, rate, burst)?;
    }

    #[test]
    fn keyed_table_keeps_the_bound_per_key_under_a_flood(
        rate in 1.0f64..1000.0,
        burst in 1u32..10,
        times in arrivals(),
        noise in proptest::collection::vec(any::<u64>(), 0..400),
    ) {
        // A small table so that the flood forces evictions and overflows around our key.
        let limiter = KeyedLimiter::new(Gcra::new(rate, burst).unwrap(), 16);
        let mut admitted = Vec::new();
        let mut noise = noise.into_iter().cycle();
        for &t in &times {
            for _ in 0..3 {
                if let Some(k) = noise.next() {
                    let _ = limiter.check(k | 1 << 63, t);
                }
            }
            if limiter.check(42, t).is_ok() {
                admitted.push(t);
            }
        }
        assert_bound(&admitted, rate, burst)?;
        prop_assert!(limiter.tracked_keys() <= limiter.capacity());
    }

    #[test]
    fn a_caller_at_its_rate_is_never_rejected(
        rate in 0.1f64..100_000.0,
        burst in 1u32..5,
        start in 0u64..1_000 * SEC,
        extra_gap in 0u64..1000,
        n in 1usize..500,
    ) {
        let gcra = Gcra::new(rate, burst).unwrap();
        let cell = AtomicU64::new(0);
        // Evenly spaced at exactly the (whole-nanosecond) interval, or slower.
        let gap = gcra.interval_ns() + extra_gap;
        for i in 0..n as u64 {
            let t = start + i * gap;
            prop_assert!(gcra.check(&cell, t).is_ok(), "request {i} at {t} rejected");
        }
    }

    #[test]
    fn idle_keys_are_evicted_for_new_ones(
        seed in any::<u64>(),
        capacity in 8usize..256,
    ) {
        let limiter = KeyedLimiter::new(Gcra::new(10.0, 1).unwrap(), capacity);
        let slots = limiter.capacity();
        // Fill every slot: keep inserting distinct keys until the table refuses.
        let mut key = seed;
        let mut inserted = 0;
        while limiter.tracked_keys() < slots && inserted < slots * 50 {
            key = key.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let _ = limiter.check(key, 0);
            inserted += 1;
        }
        prop_assert_eq!(limiter.tracked_keys(), slots);
        prop_assert_eq!(limiter.evictions(), 0);
        // 1 s later every key is idle: new keys take their slots, by eviction, until every old
        // key has been replaced; a new key is refused only when its group is all new keys.
        let later = SEC;
        let mut fresh = seed ^ 0xdead_beef;
        let mut tries = 0;
        while limiter.evictions() < slots as u64 && tries < slots * 50 {
            fresh = fresh.wrapping_mul(6364136223846793005).wrapping_add(1);
            let evictions = limiter.evictions();
            let overflows = limiter.overflows();
            match limiter.check(fresh, later) {
                Ok(()) => prop_assert_eq!(limiter.evictions(), evictions + 1),
                Err(_) => prop_assert_eq!(limiter.overflows(), overflows + 1),
            }
            tries += 1;
        }
        prop_assert_eq!(limiter.evictions(), slots as u64);
        prop_assert_eq!(limiter.tracked_keys(), slots);
    }

    #[test]
    fn a_flood_of_distinct_keys_never_exceeds_capacity(
        keys in proptest::collection::vec(any::<u64>(), 1..5000),
        max_keys in 1usize..300,
        step in 0u64..SEC,
    ) {
        let limiter = KeyedLimiter::new(Gcra::new(1.0, 1).unwrap(), max_keys);
        let mut now = 0u64;
        for k in keys {
            let _ = limiter.check(k, now);
            now += step;
            prop_assert!(limiter.tracked_keys() <= limiter.capacity());
        }
        prop_assert!(limiter.capacity() < max_keys + 8);
    }
}
