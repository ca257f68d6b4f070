//! Cluster leases: whatever several replicas ask of one store bucket, and whenever, the store
//! grants at most `W / interval + burst` tokens over any window `W`; tokens spent through a
//! lease table never exceed the tokens deposited.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use mcplb_ratelimit::{LeaseBucket, LeaseTable, Take};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_store_grants_at_most_rate_times_window_plus_burst(
        rate in 0.5f64..5_000.0,
        burst in 1u32..500,
        // (gap since the previous ask in µs, tokens asked): from any replica, in any order.
        asks in prop::collection::vec((0u64..200_000, 1u32..64), 1..200),
    ) {
        let b = LeaseBucket::new(rate, burst).unwrap();
        let mut tat = 0u64;
        let mut now = 1_000_000_000u64;
        let mut grants: Vec<(u64, u64)> = Vec::new();
        for (gap, want) in asks {
            now += gap;
            let g = b.grant(tat, now, want);
            prop_assert!(g.granted <= want);
            prop_assert!(g.tat_us >= tat);
            if g.granted == 0 {
                prop_assert!(g.retry_us > 0);
                // Asking again once the retry has passed gets a token.
                prop_assert!(b.grant(g.tat_us, now + g.retry_us, 1).granted == 1);
            }
            tat = g.tat_us;
            grants.push((now, u64::from(g.granted)));
        }
        for i in 0..grants.len() {
            let mut sum = 0u64;
            for j in i..grants.len() {
                sum += grants[j].1;
                let window = grants[j].0 - grants[i].0;
                prop_assert!(
                    sum <= window / b.interval_us + u64::from(burst),
                    "{sum} tokens in {window} µs (interval {} µs, burst {burst})",
                    b.interval_us
                );
            }
        }
    }

    #[test]
    fn a_table_spends_no_more_than_was_deposited(
        deposits in prop::collection::vec(0u32..20, 1..20),
        takes_per_round in 0usize..40,
    ) {
        let t = LeaseTable::new(64);
        let (mut deposited, mut admitted) = (0u64, 0u64);
        for (round, d) in deposits.into_iter().enumerate() {
            let now = round as u64 * 10;
            let _ = t.take(7, now);
            let mut views = Vec::new();
            t.scan(now, u64::MAX / 2, |v| views.push(v));
            for v in views {
                t.deposit(v.index, v.key, d, u64::MAX / 4, 0);
                deposited += u64::from(d);
            }
            for _ in 0..takes_per_round {
                if t.take(7, now) == Take::Admit {
                    admitted += 1;
                }
            }
        }
        prop_assert!(admitted <= deposited);
    }
}

#[test]
fn replicas_sharing_a_bucket_are_held_to_its_rate_under_threads() {
    // Three replicas' tables filled from one store bucket by lease batches, spent by two
    // threads each: the total admitted is what the store granted, never more.
    let b = LeaseBucket::new(1_000.0, 10).unwrap();
    let tables: Vec<LeaseTable> = (0..3).map(|_| LeaseTable::new(16)).collect();
    let mut tat = 0u64;
    let mut granted = 0u64;
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in &tables {
            for _ in 0..2 {
                let admitted = &admitted;
                s.spawn(move || {
                    for i in 0..20_000u64 {
                        if t.take(1, i) == Take::Admit {
                            admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        for step in 0..200u64 {
            let now = 1_000_000 + step * 1_000;
            for t in &tables {
                let mut views = Vec::new();
                t.scan(step, u64::MAX / 2, |v| views.push(v));
                for v in views {
                    let g = b.grant(tat, now, 3);
                    tat = g.tat_us;
                    granted += u64::from(g.granted);
                    t.deposit(v.index, v.key, g.granted, u64::MAX / 4, 0);
                }
            }
            std::thread::yield_now();
        }
    });
    let admitted = admitted.into_inner();
    assert!(
        admitted <= granted,
        "{admitted} admitted of {granted} granted"
    );
    // 200 ms of a 1000/s bucket with a burst of 10.
    assert!(granted <= 200 + 10, "{granted}");
}
