//! The monoio runtime every thread of the mock and of the load generator runs
//! on: io_uring set up as the proxy's workers set it up, else epoll.
//!
//! Without `COOP_TASKRUN` the kernel interrupts the thread (an IPI and a signal
//! check) to run io_uring completion work as soon as it is ready; with it, that
//! work waits until the thread enters the kernel anyway. `perf` on
//! `mcplb-load run` (64 connections, one thread) showed 43 % of the CPU in that
//! interrupt path before the flags were set.

use std::future::Future;

/// Submission queue size; the ring never needs more than one entry per
/// connection in flight plus timers.
const ENTRIES: u32 = 4096;

/// Which driver a runtime runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// io_uring (with or without the setup flags).
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

/// Runs the future `make` returns to completion on a new runtime on the
/// calling thread: io_uring with `COOP_TASKRUN | SINGLE_ISSUER`, io_uring
/// without them (kernels before 5.19), or the epoll driver when io_uring is not
/// available at all. `make` learns which.
pub fn block_on<F: Future>(make: impl FnOnce(Driver) -> F) -> std::io::Result<F::Output> {
    let uring = |plain: bool| {
        let mut b = io_uring::IoUring::builder();
        if !plain {
            b.setup_coop_taskrun().setup_single_issuer();
        }
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .with_entries(ENTRIES)
            .uring_builder(b)
            .build()
    };
    if let Ok(mut rt) = uring(false).or_else(|_| uring(true)) {
        return Ok(rt.block_on(make(Driver::IoUring)));
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok(rt.block_on(make(Driver::Epoll)))
}
