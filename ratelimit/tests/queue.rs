//! The concurrency limit's wait queue with real threads: callers waiting on other threads are
//! woken through their `Waker` and served in the order they queued; threads queueing, giving
//! up (racing the hand-over) and releasing lose no permit. (The same promises over random
//! interleavings, against a model, are the crate's unit tests in `concurrency.rs`.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use mcplb_ratelimit::{ConcurrencyLimit, OwnedPermit, PermitWait};

/// Wakes a parked thread.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `wait` on this thread, parking between polls, until it resolves or `deadline` passes
/// (then the caller gives up: the wait is dropped, as a timeout would).
fn wait_until(mut wait: PermitWait, deadline: Instant) -> Option<OwnedPermit> {
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(permit) = Pin::new(&mut wait).poll(&mut cx) {
            return Some(permit);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        std::thread::park_timeout(deadline - now);
    }
}

/// Generous: a caller that is woken waits microseconds here; only a lost wake reaches this.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn callers_on_other_threads_are_served_in_arrival_order() {
    const CALLERS: usize = 6;
    let limit = Arc::new(ConcurrencyLimit::new(1, 8, CALLERS as u32).unwrap());
    let held = limit.try_acquire_owned(5).unwrap();
    let served = Mutex::new(Vec::new());
    let ready = Barrier::new(CALLERS + 1);
    std::thread::scope(|s| {
        for i in 0..CALLERS {
            // Queued here, in order; each then waits on its own thread.
            let wait = limit.acquire_owned(5).unwrap();
            assert!(wait.is_queued());
            let (served, ready) = (&served, &ready);
            s.spawn(move || {
                ready.wait();
                let permit = wait_until(wait, Instant::now() + PATIENCE);
                assert!(permit.is_some(), "caller {i} never woken");
                served.lock().unwrap().push(i);
            });
        }
        ready.wait();
        drop(held);
    });
    assert_eq!(*served.lock().unwrap(), (0..CALLERS).collect::<Vec<_>>());
    assert_eq!((limit.in_flight(5), limit.waiters()), (0, 0));
}

#[test]
fn threads_queueing_timing_out_and_releasing_lose_no_permit() {
    const THREADS: usize = 4;
    const ROUNDS: u64 = 3000;
    const MAX: u64 = 2;
    const HOT: u64 = 5;
    // A small table, so that churn on other keys reclaims slots around the hot key.
    let limit = Arc::new(ConcurrencyLimit::new(MAX as u32, 64, THREADS as u32).unwrap());
    let in_flight = AtomicU64::new(0);
    let peak = AtomicU64::new(0);
    let served = AtomicU64::new(0);
    let gave_up = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let queued = AtomicU64::new(0);
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS as u64 {
            let (limit, in_flight, peak, served, gave_up, lost, queued, start) = (
                &limit, &in_flight, &peak, &served, &gave_up, &lost, &queued, &start,
            );
            s.spawn(move || {
                start.wait();
                for i in 0..ROUNDS {
                    // Every third caller gives up after 0-49 µs (racing the hand-over).
                    let impatient = (i + t) % 3 == 0;
                    let patience = if impatient {
                        Duration::from_micros((i * 7 + t) % 50)
                    } else {
                        PATIENCE
                    };
                    let wait = limit
                        .acquire_owned(HOT)
                        .expect("each thread waits at most once at a time");
                    if wait.is_queued() {
                        queued.fetch_add(1, Ordering::Relaxed);
                    }
                    match wait_until(wait, Instant::now() + patience) {
                        Some(permit) => {
                            let now = in_flight.fetch_add(1, Ordering::AcqRel) + 1;
                            peak.fetch_max(now, Ordering::AcqRel);
                            // Hold it across a reschedule, so that others queue meanwhile.
                            std::thread::yield_now();
                            in_flight.fetch_sub(1, Ordering::AcqRel);
                            served.fetch_add(1, Ordering::Relaxed);
                            drop(permit);
                        }
                        None if impatient => {
                            gave_up.fetch_add(1, Ordering::Relaxed);
                        }
                        None => {
                            lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(limit.try_acquire(100 + (i * 13 + t) % 200));
                }
            });
        }
    });
    eprintln!(
        "queued {}, served {}, gave up {}, peak {}",
        queued.load(Ordering::Relaxed),
        served.load(Ordering::Relaxed),
        gave_up.load(Ordering::Relaxed),
        peak.load(Ordering::Acquire)
    );
    assert_eq!(lost.load(Ordering::Relaxed), 0, "patient callers timed out");
    assert!(peak.load(Ordering::Acquire) <= MAX);
    assert_eq!(
        served.load(Ordering::Relaxed) + gave_up.load(Ordering::Relaxed),
        THREADS as u64 * ROUNDS
    );
    assert_eq!(
        (limit.in_flight(HOT), limit.queued(HOT), limit.waiters()),
        (0, 0, 0)
    );
    let all: Vec<_> = (0..MAX).map(|_| limit.try_acquire(HOT)).collect();
    assert!(all.iter().all(Option::is_some), "a permit was lost");
}
