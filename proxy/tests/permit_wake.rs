//! A concurrency permit released on one core wakes the caller queued for it on another: the
//! limit's queue wakes tasks through their `std::task::Waker`, and monoio (built with its
//! `sync` feature) carries such a wake to the runtime that owns the task. Checked on both
//! drivers, with the release made from another runtime's thread and from a plain thread.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use ratelimit::{ConcurrencyLimit, OwnedPermit};

/// Only a lost wake comes near this.
const PATIENCE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Driver {
    Uring,
    Legacy,
}

/// Runs `f` to completion on a new thread with its own runtime on `driver` (the io_uring one
/// set up as mcplb's workers set it up). `None` when io_uring is not available here.
fn on_runtime<T: Send + 'static>(
    driver: Driver,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<Option<T>> {
    std::thread::spawn(move || match driver {
        Driver::Legacy => Some(
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(f()),
        ),
        Driver::Uring => {
            let mut setup = io_uring::IoUring::builder();
            setup.setup_coop_taskrun().setup_single_issuer();
            let rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .uring_builder(setup)
                .build();
            match rt {
                Ok(mut rt) => Some(rt.block_on(f())),
                Err(e) => {
                    eprintln!("io_uring unavailable here ({e}): skipped");
                    None
                }
            }
        }
    })
}

/// Three tasks of one runtime queue, in order, behind a permit held elsewhere, then `release`
/// drops it from another thread: the first is woken across threads, each hands the permit on
/// as it finishes, and they are served in the order they queued.
fn wakes_across_threads(driver: Driver, release: impl FnOnce(OwnedPermit) + Send + 'static) {
    let limit = Arc::new(ConcurrencyLimit::new(1, 64, 8).unwrap());
    let held = limit.try_acquire_owned(1).unwrap();
    let (queued_tx, queued_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let waiting = Arc::clone(&limit);
    let waiter = on_runtime(driver, move || {
        Box::pin(async move {
            let served = Rc::new(RefCell::new(Vec::new()));
            let tasks: Vec<_> = (0..3)
                .map(|i| {
                    let wait = waiting.acquire_owned(1).unwrap();
                    assert!(wait.is_queued());
                    let served = served.clone();
                    monoio::spawn(async move {
                        let permit = wait.await;
                        served.borrow_mut().push(i);
                        monoio::time::sleep(Duration::from_millis(5)).await;
                        drop(permit);
                    })
                })
                .collect();
            queued_tx.send(()).unwrap();
            for task in tasks {
                task.await;
            }
            done_tx.send(served.borrow().clone()).unwrap();
        })
    });
    if queued_rx.recv_timeout(PATIENCE).is_err() {
        // No runtime on this driver here: the waiter ended without queueing.
        assert!(waiter.join().unwrap().is_none(), "{driver:?}");
        return;
    }
    release(held);
    let served = done_rx.recv_timeout(PATIENCE);
    assert_eq!(
        served.as_deref(),
        Ok(&[0, 1, 2][..]),
        "{driver:?}: the queued tasks were not all woken, in order"
    );
    assert!(waiter.join().unwrap().is_some());
    assert_eq!((limit.in_flight(1), limit.waiters()), (0, 0));
}

#[test]
fn a_permit_released_on_another_runtime_wakes_the_queued_task() {
    for driver in [Driver::Uring, Driver::Legacy] {
        wakes_across_threads(driver, move |held| {
            let releaser = on_runtime(driver, move || {
                Box::pin(async move {
                    monoio::time::sleep(Duration::from_millis(20)).await;
                    drop(held);
                })
            });
            releaser.join().unwrap();
        });
    }
}

#[test]
fn a_permit_released_on_a_plain_thread_wakes_the_queued_task() {
    for driver in [Driver::Uring, Driver::Legacy] {
        wakes_across_threads(driver, |held| {
            std::thread::spawn(move || drop(held)).join().unwrap();
        });
    }
}
