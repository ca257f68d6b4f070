//! A deadline the kernel keeps (a `timerfd`, watched through the ring like a socket) for a
//! worker's background waits that are always pending while it serves: the flusher's.
//!
//! monoio's timer wheel (tokio's design) files an entry at the level given by the highest bit
//! in which its deadline and the wheel's time differ, and wakes the worker at the start of
//! the entry's slot at that level to move it down a level. So an entry only a second ahead
//! whose deadline lies past one of the wheel's 4.096 s boundaries (a level-2 slot) wakes the
//! worker at that boundary, with nothing to do, even when the entry is dropped before it is
//! due. The flusher always has such a deadline pending while requests come (its next flush a
//! tick and some slack ahead), so a worker serving an agent that calls a tool every 250 ms was
//! woken every 4.096 s for nothing (seen with a wheel that logs its slots: one level-2 slot
//! per 4.096 s, its one entry moved 0.1-1 s on). A timerfd wakes the worker only when its
//! deadline comes: setting it is one syscall per flush, and the wait one poll.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

/// A worker's kernel timer (see the module's notes). One wait at a time.
pub(crate) struct KernelTimer {
    /// The timerfd, as a stream the runtime can wait on for readability (only ever polled and
    /// read with `read(2)`, never through the runtime); `None` when none could be made: then
    /// waits are on the runtime's wheel, as before.
    fd: Option<TcpStream>,
}

impl KernelTimer {
    /// A disarmed timer (a non-blocking `CLOCK_MONOTONIC` timerfd, the clock of `Instant`), or
    /// one on the runtime's wheel if no timerfd can be had (logged).
    pub(crate) fn new() -> KernelTimer {
        let fd = timerfd()
            .inspect_err(|e| tracing::warn!(error = %e, "no timerfd: using the runtime's timer"))
            .ok();
        KernelTimer { fd }
    }

    /// A timer on the runtime's wheel (what [`KernelTimer::new`] falls back to).
    #[cfg(test)]
    pub(crate) fn on_wheel() -> KernelTimer {
        KernelTimer { fd: None }
    }

    /// Waits until `at` (at once if it has passed). Dropping the wait before then leaves the
    /// timer armed but unwatched: its expiry wakes nothing, and the next wait sets it anew.
    pub(crate) async fn until(&self, at: Instant) {
        if let Some(fd) = &self.fd {
            // A failure is not expected of a valid timerfd; the wheel then keeps the deadline.
            if set(fd, at).is_ok() {
                while fd.readable(false).await.is_ok() {
                    // Readiness left over from an expiry before the timer was set again reads
                    // nothing (setting it clears the count): wait on.
                    if expired(fd) || Instant::now() >= at {
                        return;
                    }
                }
            }
        }
        monoio::time::sleep_until(monoio::time::Instant::from_std(at)).await;
    }
}

/// A fresh timerfd, watchable by the runtime.
#[allow(unsafe_code)]
fn timerfd() -> io::Result<TcpStream> {
    // SAFETY: timerfd_create takes no pointer; the returned fd is owned below.
    let fd = unsafe {
        libc::timerfd_create(
            libc::CLOCK_MONOTONIC,
            libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    crate::runtime::watched(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Arms the timer `fd` to expire once, at `at` (1 ns from now if that has passed: 0 would
/// disarm it).
#[allow(unsafe_code)]
fn set(fd: &TcpStream, at: Instant) -> io::Result<()> {
    let left = at
        .saturating_duration_since(Instant::now())
        .max(Duration::from_nanos(1));
    let spec = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: libc::time_t::try_from(left.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: left.subsec_nanos().into(),
        },
    };
    // SAFETY: `spec` is a valid itimerspec; the old value is not asked for (null).
    let r = unsafe { libc::timerfd_settime(fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads (and so clears) the expiry count of the timer `fd`: whether it expired since it
/// was set.
#[allow(unsafe_code)]
fn expired(fd: &TcpStream) -> bool {
    let mut count = 0u64;
    // SAFETY: reads at most 8 bytes into `count`, which has them.
    let n = unsafe {
        libc::read(
            fd.as_raw_fd(),
            std::ptr::addr_of_mut!(count).cast(),
            std::mem::size_of::<u64>(),
        )
    };
    n == 8 && count > 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn run<F: std::future::Future>(uring: bool, f: impl FnOnce() -> F) -> F::Output {
        if uring {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(f())
        } else {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(f())
        }
    }

    /// A wait ends at its deadline, never before; a wait dropped early leaves nothing that
    /// ends the next wait early (its expiry is read as stale); a passed deadline ends at once.
    #[test]
    fn waits_until_the_deadline_and_not_before() {
        for uring in [true, false] {
            if uring && !monoio::utils::detect_uring() {
                continue;
            }
            run(uring, || async {
                let t = KernelTimer::new();
                assert!(t.fd.is_some(), "a timerfd ({uring})");
                let start = Instant::now();
                t.until(start + Duration::from_millis(30)).await;
                assert!(start.elapsed() >= Duration::from_millis(30), "{uring}");

                // Dropped before its deadline, then a later deadline: not ended by the first.
                let first = Instant::now() + Duration::from_millis(10);
                let early = monoio::time::timeout(Duration::from_millis(2), t.until(first)).await;
                assert!(early.is_err(), "{uring}");
                monoio::time::sleep(Duration::from_millis(20)).await;
                let second = Instant::now() + Duration::from_millis(40);
                t.until(second).await;
                assert!(Instant::now() >= second, "{uring}");

                // A deadline that has passed: at once (bounded, so a hang fails the test).
                let passed = monoio::time::timeout(Duration::from_secs(5), t.until(start)).await;
                assert!(passed.is_ok(), "{uring}");
            });
        }
    }
}
