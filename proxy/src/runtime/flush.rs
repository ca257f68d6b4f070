//! A worker's periodic work, done only while there is some: once a second its statistics fold
//! into the hub (the only cross-core lock, never taken while a request waits on it) and the
//! summaries of repeated warnings go out; every 250 ms its access-log and audit lines go to
//! the writer thread; pooled upstream connections idle past `upstream_idle_timeout` are
//! closed (off the request path: a request only leaves them, see `Core::pooled`); a state a
//! reload replaced is flushed one last time and dropped once nothing holds it; in a shutdown,
//! the worker says when its connections have closed and their lines are handed over.
//!
//! With nothing recorded since the last flush the flusher waits with no timer, so an idle
//! worker is not woken at all (measured: 12 wake-ups a second from three 250 ms ticks, about
//! 290 µs of CPU a second, which an agent calling a tool every few seconds paid per call).
//! The first request, connection or reload after that wakes it ([`note`]: a thread-local
//! waker, no syscall). Then a flush rides on a wake-up the worker has anyway: the end of the
//! first request that began once a tick has passed since the last flush ([`note_request`],
//! after its answer was written) runs it; only when no such request comes within [`SLACK`]
//! does a timer wake the worker for it. An agent that calls a tool every few seconds has its
//! statistics folded at the end of each call, one calling a few times a second about once a
//! second at the end of one of its calls, and neither pays a wake-up for them (measured: the
//! timer's wake-up a second after a call was a fifth of the wake-ups per call of an agent
//! calling four times a second, and one more wake-up per call, on top of two, for one calling
//! every two seconds).

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::control::stats::{Counter, Gauge};
use crate::runtime::core::Core;
use crate::runtime::kernel_timer::KernelTimer;
use crate::runtime::shutdown::ShutdownSignal;
use crate::runtime::{CORE_OPEN, FLUSHED_AT_SHUTDOWN, SHUTDOWN};

thread_local! {
    /// This worker's flusher, while it waits with nothing to do.
    static DORMANT: Cell<Option<Waker>> = const { Cell::new(None) };
    /// This worker's flusher, while it waits for its next flush to come due.
    static WAITING: Cell<Option<Waker>> = const { Cell::new(None) };
    /// When the next flush may run at the end of a request: a tick after the last one.
    static DUE: Cell<Option<Instant>> = const { Cell::new(None) };
    /// A request that began at or after [`DUE`] has ended: flush now.
    static REQUESTED: Cell<bool> = const { Cell::new(false) };
}

/// How long after a flush comes due the flusher waits for a request to end before a timer
/// wakes the worker for it (so a flush runs at most a tick and this late): longer than the
/// gap between an agent's calls when it calls about four times a second.
const SLACK: Duration = Duration::from_millis(300);

/// Something may need flushing (a connection opened or closed, a reload built a new state,
/// the first record since a flush): wakes this worker's flusher if it waits with nothing to
/// do.
#[inline]
pub(crate) fn note() {
    DORMANT.with(|w| {
        if let Some(w) = w.take() {
            w.wake();
        }
    });
}

/// A request that began at `start` has ended (its answer written): when a flush is due, it
/// runs now, on this wake-up, rather than on a timer's later.
#[inline]
pub(crate) fn note_request(start: Instant) {
    note();
    if DUE.with(Cell::get).is_none_or(|due| start >= due) {
        REQUESTED.with(|r| r.set(true));
        WAITING.with(|w| {
            if let Some(w) = w.take() {
                w.wake();
            }
        });
    }
}

/// Runs a worker's flusher over its states (`cores`: every state still in use, newest last).
pub(crate) async fn flush_loop(cores: Rc<RefCell<Vec<Rc<Core>>>>) {
    let mut reported_open = 0i64;
    let mut last_fold = Instant::now();
    let mut flushed_at_shutdown = false;
    let mut shutdown = std::pin::pin!(ShutdownSignal::new());
    // The flusher's deadlines, kept by the kernel: a wheel entry always pending would wake the
    // worker at each of the wheel's slot boundaries it straddles (`kernel_timer.rs`).
    let clock = KernelTimer::new();
    let tick = |cores: &[Rc<Core>]| {
        if cores
            .iter()
            .any(|c| c.access_log.is_some() || c.audit.is_some())
        {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        }
    };
    DUE.with(|d| d.set(Some(last_fold + tick(&cores.borrow()))));
    loop {
        let stopping = SHUTDOWN.load(Ordering::Relaxed);
        if !stopping && nothing_to_do(&cores.borrow(), reported_open) {
            let sweep_at = pool_sweep_at(&cores.borrow());
            if dormant(shutdown.as_mut(), sweep_at, &clock).await {
                // Pooled connections idled past their timeout with no request to end:
                // closed now, and the statistics (their gauge) folded on this wake-up.
                REQUESTED.with(|r| r.set(true));
            }
        }
        if SHUTDOWN.load(Ordering::Relaxed) {
            monoio::time::sleep(Duration::from_millis(50)).await;
        } else if !REQUESTED.with(Cell::get) {
            let due = DUE.with(Cell::get).unwrap_or_else(Instant::now);
            let latest = due.max(Instant::now()) + SLACK;
            until_requested(latest, shutdown.as_mut(), &clock).await;
        }
        let shutdown = SHUTDOWN.load(Ordering::Relaxed);
        let now = Instant::now();
        REQUESTED.with(|r| r.set(false));
        DUE.with(|d| d.set(Some(now + tick(&cores.borrow()))));
        let open = CORE_OPEN.with(Cell::get);
        let fold = now.saturating_duration_since(last_fold) >= Duration::from_secs(1);
        if fold {
            last_fold = now;
            if let Some(newest) = cores.borrow().last() {
                let delta = open - reported_open;
                let mut rec = newest.rec.borrow_mut();
                rec.gauge(Gauge::ClientConnections, delta);
                if crate::runtime::loop_gap::any() {
                    rec.gaps(&crate::runtime::loop_gap::take());
                }
                reported_open = open;
            }
            crate::control::logs::summarize(now);
        }
        cores.borrow_mut().retain(|c| {
            c.sweep_pools(now);
            if let Some(l) = &c.access_log {
                c.flush_log(&mut l.borrow_mut(), Counter::AccessLogLinesDropped);
            }
            if let Some(a) = &c.audit {
                c.flush_log(&mut a.borrow_mut().log, Counter::AuditLinesDropped);
            }
            if !fold {
                return true;
            }
            c.rec.borrow_mut().flush_into(&c.shared.hub, now);
            c.next.borrow().is_none() || Rc::strong_count(c) > 1
        });
        if shutdown && open == 0 && !flushed_at_shutdown {
            flushed_at_shutdown = true;
            FLUSHED_AT_SHUTDOWN.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Whether a flush now would do nothing: nothing recorded or logged, the connection count as
/// last reported, no warnings to summarize, no replaced state to drop.
fn nothing_to_do(cores: &[Rc<Core>], reported_open: i64) -> bool {
    cores.len() <= 1
        && CORE_OPEN.with(Cell::get) == reported_open
        && !crate::control::logs::tracking()
        && !crate::runtime::loop_gap::any()
        && cores.iter().all(|c| {
            !c.rec.borrow().is_dirty()
                && c.access_log
                    .as_ref()
                    .is_none_or(|l| l.borrow().buf.is_empty())
                && c.audit
                    .as_ref()
                    .is_none_or(|a| a.borrow().log.buf.is_empty())
        })
}

/// Waits until a request ends that began once the flush came due ([`note_request`]), until
/// `latest`, or until a shutdown begins.
async fn until_requested(
    latest: Instant,
    mut shutdown: Pin<&mut ShutdownSignal>,
    clock: &KernelTimer,
) {
    let mut timer = std::pin::pin!(clock.until(latest));
    std::future::poll_fn(|cx| {
        if REQUESTED.with(Cell::get)
            || shutdown.as_mut().poll(cx).is_ready()
            || timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(());
        }
        WAITING.with(|w| w.set(Some(cx.waker().clone())));
        Poll::Pending
    })
    .await;
    WAITING.with(|w| w.set(None));
}

/// When a dormant flusher wakes to close pooled upstream connections no request came to use
/// ([`Core::pool_sweep_due`], the earliest of the worker's states). None pooled: no timer.
fn pool_sweep_at(cores: &[Rc<Core>]) -> Option<Instant> {
    cores.iter().filter_map(|c| c.pool_sweep_due()).min()
}

/// Waits until [`note`] is called, a shutdown begins or `until` (with no timer when `None`);
/// whether `until` came.
async fn dormant(
    mut shutdown: Pin<&mut ShutdownSignal>,
    until: Option<Instant>,
    clock: &KernelTimer,
) -> bool {
    let mut registered = false;
    let mut timer = std::pin::pin!(until.map(|t| clock.until(t)));
    let timed_out = std::future::poll_fn(|cx| {
        if shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        if let Some(t) = timer.as_mut().as_pin_mut() {
            if t.poll(cx).is_ready() {
                return Poll::Ready(true);
            }
        }
        DORMANT.with(|w| {
            let held = w.take();
            if registered && held.is_none() {
                // Taken by `note`.
                return Poll::Ready(false);
            }
            w.set(Some(cx.waker().clone()));
            registered = true;
            Poll::Pending
        })
    })
    .await;
    DORMANT.with(|w| w.set(None));
    timed_out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use monoio::io::AsyncReadRent;
    use std::io::Write as _;

    /// The voluntary context switches of the calling thread (its sleeps in the runtime).
    fn my_wakeups() -> u64 {
        let s = std::fs::read_to_string("/proc/thread-self/status").unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map_or(0, |v| v.trim().parse().unwrap())
    }

    /// The flusher's pattern while an agent calls every 250 ms: a deadline 1.3 s ahead is
    /// always pending and dropped when the next call ends. Calls come as bytes on a socket
    /// (no timer of the runtime's own), for 12.5 s from the runtime's start: past three of its
    /// wheel's 4.096 s boundaries. Each call wakes the thread once; on the wheel, the pending
    /// entry woke it again at each boundary it straddled (36 for 34 calls over 8.5 s).
    fn wakeups_over_calls(uring: bool, kernel: bool) -> (u64, u64) {
        async fn body(kernel: bool) -> (u64, u64) {
            let clock = if kernel {
                KernelTimer::new()
            } else {
                KernelTimer::on_wheel()
            };
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let calls = 50u64;
            let sender = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                for _ in 0..calls {
                    std::thread::sleep(Duration::from_millis(250));
                    s.write_all(b"x").unwrap();
                }
            });
            let mut conn = monoio::net::TcpStream::connect(addr).await.unwrap();
            let before = my_wakeups();
            let mut buf = vec![0u8; 16];
            let (mut seen, mut reads) = (0, 0);
            while seen < calls {
                let mut timer =
                    std::pin::pin!(clock.until(Instant::now() + Duration::from_millis(1300)));
                let mut read = std::pin::pin!(conn.read(buf));
                let (n, b) = std::future::poll_fn(|cx| {
                    use std::future::Future as _;
                    let _ = timer.as_mut().poll(cx);
                    read.as_mut().poll(cx)
                })
                .await;
                buf = b;
                seen += n.unwrap() as u64;
                // Calls that came together (a thread late on a loaded machine) are one wake-up.
                reads += 1;
            }
            let woken = my_wakeups() - before;
            sender.join().unwrap();
            (reads, woken)
        }
        if uring {
            monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(body(kernel))
        } else {
            monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
                .unwrap()
                .block_on(body(kernel))
        }
    }

    #[test]
    fn a_pending_flush_deadline_wakes_nothing_at_the_wheels_boundaries() {
        let uring = monoio::utils::detect_uring();
        let runs: Vec<_> = [(uring, true), (false, true), (uring, false)]
            .into_iter()
            .map(|(u, k)| std::thread::spawn(move || (u, k, wakeups_over_calls(u, k))))
            .collect();
        for r in runs {
            let (u, kernel, (calls, woken)) = r.join().unwrap(); // calls: reads that found bytes
            if kernel {
                assert!(
                    woken <= calls + 1,
                    "{calls} calls woke the thread {woken} times with the kernel's timer (uring {u})"
                );
            } else {
                // Why the flusher does not use the wheel: if this fails, monoio's wheel no longer
                // wakes for straddling entries and `KernelTimer` may be dropped.
                assert!(
                    woken >= calls + 2,
                    "{calls} calls woke the thread {woken} times with the wheel's timer (uring {u})"
                );
            }
        }
    }
}
