//! Health recorded from several threads while another reads it: the shape of the proxy, where
//! every core's worker reports outcomes and the admin port reads the whole group.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use mcplb_lb::{
    FailureKind, GroupHealth, HealthState, OutlierConfig, RetryBudget, RetryBudgetConfig,
};

/// Sets its flag when dropped, also while a panic unwinds.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

#[test]
fn two_writers_one_reader() {
    let g = Arc::new(GroupHealth::new(
        4,
        OutlierConfig {
            consecutive_5xx: 5,
            ..OutlierConfig::default()
        },
    ));
    let stop = Arc::new(AtomicBool::new(false));
    // The writers start once the reader has read: else, on a busy machine, they could finish
    // (and stop it) before its first read, and nothing would have been read concurrently.
    let reading = Arc::new(AtomicBool::new(false));
    let now = 1_000_000_000u64;
    let reader = {
        let (g, stop, reading) = (g.clone(), stop.clone(), reading.clone());
        thread::spawn(move || {
            // A reader that fails its assertion still lets the writers go (and the test fail).
            let _go = SetOnDrop(reading.clone());
            let mut reads = 0u64;
            let mut worst = 0usize;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..g.len() {
                    let eligible = g.is_eligible(i, now);
                    let state = g.state(i, now);
                    // The clock stands still and nothing drains, so a backend that is not
                    // eligible can only be passively ejected (and stays so).
                    if !eligible {
                        assert!(matches!(state, Some(HealthState::Ejected { .. })));
                    }
                    reads += 1;
                }
                worst = worst.max(g.ejected_count(now));
                reading.store(true, Ordering::Release);
            }
            (reads, worst)
        })
    };
    let writers: Vec<_> = (0..2)
        .map(|t| {
            let (g, reading) = (g.clone(), reading.clone());
            thread::spawn(move || {
                while !reading.load(Ordering::Acquire) {
                    thread::yield_now();
                }
                let mut ejections = 0;
                for round in 0..20_000usize {
                    // Both threads hammer every backend, 5xx mostly, with some successes.
                    let i = (round + t) % 4;
                    if round % 97 == 0 {
                        g.record_success(i);
                    } else if g.record_failure(i, FailureKind::Status5xx, now).is_some() {
                        ejections += 1;
                    }
                }
                ejections
            })
        })
        .collect();
    let ejections: usize = writers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    stop.store(true, Ordering::Relaxed);
    let (reads, worst) = reader.join().unwrap_or((0, usize::MAX));
    println!("ejections {ejections}, reads {reads}, most ejected seen {worst}");
    assert_eq!(ejections, 2, "exactly the 50 % share of 4 is ejected");
    assert_eq!(g.ejected_count(now), 2);
    assert!(worst <= 2);
    assert!(reads > 0);
}

#[test]
fn shared_retry_budget_is_exact_within_one_slot() {
    let b = Arc::new(
        RetryBudget::new(RetryBudgetConfig {
            ttl_ns: 10_000_000_000,
            ratio: 0.2,
            min_per_sec: 1,
        })
        .unwrap_or_else(|e| panic!("{e:?}")),
    );
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let b = b.clone();
            thread::spawn(move || {
                let mut granted = 0;
                for _ in 0..10_000 {
                    b.deposit(5);
                    if b.try_withdraw(5) {
                        granted += 1;
                    }
                }
                granted
            })
        })
        .collect();
    let granted: u64 = workers.into_iter().map(|w| w.join().unwrap_or(0)).sum();
    // 20 000 deposits × 0.2 + 10 reserve, and every retry was asked for after its deposit.
    assert!(granted <= 4010, "{granted}");
    assert!(granted >= 3990, "{granted}");
}
