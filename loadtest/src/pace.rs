//! Waiting until a request's scheduled send time with microsecond accuracy.
//!
//! monoio's timer wheel ticks once a millisecond, so an open-loop request
//! scheduled between two ticks would leave up to 1 ms late. On io_uring a
//! connection instead arms its own `timerfd` at the absolute send time
//! (`CLOCK_MONOTONIC`, the clock of [`Instant`]) and reads it through the
//! ring: the read completes when the kernel's high-resolution timer fires.
//! Where that is not possible (the epoll driver, whose file reads block, or
//! no file descriptor left) the pacer falls back to monoio's timer.

use std::os::fd::OwnedFd;
use std::time::Instant;

use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
    TimerfdFlags, TimerfdTimerFlags, Timespec,
};

/// Sleeps until given instants; one per connection.
pub struct Pacer {
    timer: Option<TimerFd>,
}

/// A timerfd, the same file as a monoio file to read it through the ring,
/// and the offset between [`Instant`] and `CLOCK_MONOTONIC` readings.
struct TimerFd {
    settable: OwnedFd,
    file: monoio::fs::File,
    buf: Vec<u8>,
    base_instant: Instant,
    base_ns: i128,
}

impl Pacer {
    /// A pacer for a connection; `precise` only on the io_uring driver.
    pub fn new(precise: bool) -> Pacer {
        Pacer {
            timer: precise.then(TimerFd::new).flatten(),
        }
    }

    /// Whether waits are precise to microseconds (a timerfd) rather than to
    /// monoio's 1 ms timer.
    pub fn precise(&self) -> bool {
        self.timer.is_some()
    }

    /// Returns at `at` (at once when it has passed).
    pub async fn until(&mut self, at: Instant) {
        let now = Instant::now();
        if at <= now {
            return;
        }
        if let Some(t) = self.timer.as_mut() {
            if t.wait(at).await {
                return;
            }
            // The timerfd failed: from now on, the coarse timer.
            self.timer = None;
        }
        monoio::time::sleep(at.saturating_duration_since(Instant::now())).await;
    }
}

impl TimerFd {
    fn new() -> Option<TimerFd> {
        let fd = timerfd_create(
            TimerfdClockId::Monotonic,
            // Blocking: io_uring answers a read of a non-blocking file that
            // has nothing yet with EAGAIN instead of waiting for it.
            TimerfdFlags::CLOEXEC,
        )
        .ok()?;
        let settable = fd.try_clone().ok()?;
        let file = monoio::fs::File::from_std(std::fs::File::from(fd)).ok()?;
        // The two readings are a few dozen ns apart: that is the error of
        // every deadline, far below the microsecond the pacer aims at.
        let base_instant = Instant::now();
        let ts = clock_gettime(ClockId::Monotonic);
        Some(TimerFd {
            settable,
            file,
            buf: Vec::with_capacity(8),
            base_instant,
            base_ns: i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec),
        })
    }

    /// Arms the timer at `at` and waits for it; false when the timerfd failed.
    async fn wait(&mut self, at: Instant) -> bool {
        let since = at.saturating_duration_since(self.base_instant);
        let ns = self.base_ns + since.as_nanos() as i128;
        let Ok(tv_sec) = i64::try_from(ns / 1_000_000_000) else {
            return false;
        };
        let spec = Itimerspec {
            it_interval: Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: Timespec {
                tv_sec,
                tv_nsec: (ns % 1_000_000_000) as _,
            },
        };
        if timerfd_settime(&self.settable, TimerfdTimerFlags::ABSTIME, &spec).is_err() {
            return false;
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let (res, buf) = self.file.read_at(buf, 0).await;
        self.buf = buf;
        // 8 bytes: the number of expirations.
        matches!(res, Ok(8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mock::runtime::{block_on, Driver};
    use std::time::Duration;

    /// A wait never ends before its deadline (a deadline mapped wrongly onto
    /// `CLOCK_MONOTONIC` would end early or hang), on the timerfd and on the
    /// coarse timer alike.
    #[test]
    fn never_early() {
        let res = block_on(|driver| async move {
            let mut failures = Vec::new();
            for precise in [true, false] {
                let mut p = Pacer::new(precise);
                if precise && driver == Driver::IoUring && !p.precise() {
                    failures.push("no timerfd on io_uring".to_string());
                }
                let gaps = [300u64, 0, 1500, 50, 2300];
                for us in gaps {
                    let at = Instant::now() + Duration::from_micros(us);
                    p.until(at).await;
                    let now = Instant::now();
                    if now < at {
                        failures.push(format!("precise={precise}: woke {:?} early", at - now));
                    }
                }
                // A deadline in the past returns at once.
                p.until(Instant::now() - Duration::from_millis(5)).await;
            }
            failures
        });
        assert_eq!(res.ok(), Some(Vec::new()));
    }
}
