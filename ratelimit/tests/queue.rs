//! The concurrency limit's wait queue: first in, first out per key; a released permit goes to
//! the first caller in line (woken through its `Waker`), never to a newcomer; callers that stop
//! waiting (timeout, cancellation) leave cleanly and never take a permit with them. Checked
//! against a model over random sequences of arrivals, releases, polls and drops, and with real
//! threads.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use mcplb_ratelimit::{ConcurrencyLimit, OwnedPermit, PermitWait};

/// A waker that counts its wakes.
#[derive(Default)]
struct Wakes(AtomicUsize);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Wakes {
    fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

fn poll(wait: &mut PermitWait, wakes: &Arc<Wakes>) -> Poll<OwnedPermit> {
    let waker = Waker::from(Arc::clone(wakes));
    Pin::new(wait).poll(&mut Context::from_waker(&waker))
}

const KEYS: [u64; 3] = [10, 20, 30];

#[derive(Debug, Clone)]
enum Op {
    /// A caller for `KEYS[k]` that waits if it must.
    Arrive(usize),
    /// A caller for `KEYS[k]` that does not wait.
    TryAcquire(usize),
    /// The n-th (modulo) permit held is released.
    Release(usize),
    /// The n-th (modulo) waiting caller is polled.
    Poll(usize),
    /// The n-th (modulo) waiting caller stops waiting (timeout or cancellation).
    Leave(usize),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => (0..KEYS.len()).prop_map(Op::Arrive),
        1 => (0..KEYS.len()).prop_map(Op::TryAcquire),
        3 => any::<usize>().prop_map(Op::Release),
        2 => any::<usize>().prop_map(Op::Poll),
        1 => any::<usize>().prop_map(Op::Leave),
    ];
    proptest::collection::vec(op, 1..120)
}

struct Caller {
    id: usize,
    key: usize,
    wait: PermitWait,
    wakes: Arc<Wakes>,
}

/// What the limit should hold: per key, permits held (handed-over ones included) and the line
/// of caller ids; the callers a permit was handed to but who have not picked it up.
#[derive(Default)]
struct Model {
    held: [u64; 3],
    line: [VecDeque<usize>; 3],
    granted: HashSet<usize>,
}

impl Model {
    fn waiting(&self) -> usize {
        self.line.iter().map(VecDeque::len).sum()
    }

    fn release(&mut self, key: usize) {
        match self.line[key].pop_front() {
            Some(first) => {
                self.granted.insert(first);
            }
            None => self.held[key] -= 1,
        }
    }
}

fn run(max: u32, max_waiters: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let limit = Arc::new(ConcurrencyLimit::new(max, 8, max_waiters).unwrap());
    let mut model = Model::default();
    let mut held: Vec<(usize, OwnedPermit)> = Vec::new();
    let mut callers: Vec<Caller> = Vec::new();
    let mut next_id = 0;
    for op in ops {
        match op {
            Op::Arrive(key) => {
                let free = model.line[key].is_empty() && model.held[key] < u64::from(max);
                let room = model.waiting() < max_waiters as usize;
                match limit.acquire_owned(KEYS[key]) {
                    None => prop_assert!(!free && !room, "refused with free={free} room={room}"),
                    Some(mut wait) => {
                        let wakes = Arc::new(Wakes::default());
                        prop_assert_eq!(wait.is_queued(), !free);
                        match poll(&mut wait, &wakes) {
                            Poll::Ready(permit) => {
                                prop_assert!(free, "a newcomer jumped the line");
                                model.held[key] += 1;
                                held.push((key, permit));
                            }
                            Poll::Pending => {
                                prop_assert!(!free && room);
                                model.line[key].push_back(next_id);
                                callers.push(Caller {
                                    id: next_id,
                                    key,
                                    wait,
                                    wakes,
                                });
                                next_id += 1;
                            }
                        }
                    }
                }
            }
            Op::TryAcquire(key) => {
                let free = model.line[key].is_empty() && model.held[key] < u64::from(max);
                let permit = limit.try_acquire_owned(KEYS[key]);
                prop_assert_eq!(permit.is_some(), free, "try_acquire with free={}", free);
                if let Some(permit) = permit {
                    model.held[key] += 1;
                    held.push((key, permit));
                }
            }
            Op::Release(n) if !held.is_empty() => {
                let (key, permit) = held.swap_remove(n % held.len());
                drop(permit);
                model.release(key);
            }
            Op::Poll(n) if !callers.is_empty() => {
                let i = n % callers.len();
                let c = &mut callers[i];
                let granted = model.granted.contains(&c.id);
                match poll(&mut c.wait, &c.wakes) {
                    Poll::Ready(permit) => {
                        prop_assert!(granted, "caller {} served out of turn", c.id);
                        model.granted.remove(&c.id);
                        held.push((c.key, permit));
                        callers.swap_remove(i);
                    }
                    Poll::Pending => prop_assert!(!granted, "caller {} not served", c.id),
                }
            }
            Op::Leave(n) if !callers.is_empty() => {
                let c = callers.swap_remove(n % callers.len());
                drop(c.wait);
                if model.granted.remove(&c.id) {
                    model.release(c.key);
                } else {
                    model.line[c.key].retain(|&id| id != c.id);
                }
            }
            _ => {}
        }
        for (k, &key) in KEYS.iter().enumerate() {
            prop_assert_eq!(limit.in_flight(key), model.held[k], "held, key {}", k);
            prop_assert_eq!(limit.queued(key), model.line[k].len() as u64, "queued");
        }
        prop_assert_eq!(limit.waiters(), model.waiting() as u64);
        // Exactly the callers a permit was handed to were woken, once each.
        for c in &callers {
            let expected = usize::from(model.granted.contains(&c.id));
            prop_assert_eq!(c.wakes.count(), expected, "wakes of caller {}", c.id);
        }
    }
    drop(held);
    drop(callers);
    prop_assert_eq!(limit.waiters(), 0);
    for key in KEYS {
        prop_assert_eq!((limit.in_flight(key), limit.queued(key)), (0, 0));
        let all: Vec<_> = (0..max).map(|_| limit.try_acquire(key)).collect();
        prop_assert!(all.iter().all(Option::is_some), "a permit was lost");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        rng_seed: RngSeed::Fixed(0x5eed_f1f0),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_queue_matches_a_first_in_first_out_model(
        max in 1u32..4,
        max_waiters in 0u32..6,
        ops in ops(),
    ) {
        run(max, max_waiters, ops)?;
    }
}

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
