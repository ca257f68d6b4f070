//! A worker's periodic work, done only while there is some: once a second its statistics fold
//! into the hub (the only cross-core lock, never taken on the request path) and the summaries
//! of repeated warnings go out; every 250 ms its access-log and audit lines go to the writer
//! thread; a state a reload replaced is flushed one last time and dropped once nothing holds
//! it; in a shutdown, the worker says when its connections have closed and their lines are
//! handed over.
//!
//! With nothing recorded since the last flush the flusher waits with no timer, so an idle
//! worker is not woken at all (measured: 12 wake-ups a second from three 250 ms ticks, about
//! 290 µs of CPU a second, which an agent calling a tool every few seconds paid per call).
//! The first request, connection or reload after that wakes it ([`note`]: a thread-local
//! waker, no syscall), and it flushes a second later.

use std::cell::{Cell, RefCell};
use std::future::Future as _;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use crate::control::stats::{Counter, Gauge};
use crate::runtime::core::Core;
use crate::runtime::shutdown::ShutdownSignal;
use crate::runtime::{CORE_OPEN, FLUSHED_AT_SHUTDOWN, SHUTDOWN};

thread_local! {
    /// This worker's flusher, while it waits with nothing to do.
    static DORMANT: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// Something may need flushing (a request ended, a connection opened or closed, a reload built
/// a new state): wakes this worker's flusher if it waits with nothing to do.
#[inline]
pub(crate) fn note() {
    DORMANT.with(|w| {
        if let Some(w) = w.take() {
            w.wake();
        }
    });
}

/// Runs a worker's flusher over its states (`cores`: every state still in use, newest last).
pub(crate) async fn flush_loop(cores: Rc<RefCell<Vec<Rc<Core>>>>) {
    let mut reported_open = 0i64;
    let mut last_fold = Instant::now();
    let mut flushed_at_shutdown = false;
    let mut shutdown = std::pin::pin!(ShutdownSignal::new());
    loop {
        let stopping = SHUTDOWN.load(Ordering::Relaxed);
        if !stopping && nothing_to_do(&cores.borrow(), reported_open) {
            dormant(shutdown.as_mut()).await;
        }
        let tick = if SHUTDOWN.load(Ordering::Relaxed) {
            Duration::from_millis(50)
        } else if cores
            .borrow()
            .iter()
            .any(|c| c.access_log.is_some() || c.audit.is_some())
        {
            Duration::from_millis(250)
        } else {
            Duration::from_secs(1)
        };
        monoio::time::sleep(tick).await;
        let shutdown = SHUTDOWN.load(Ordering::Relaxed);
        let now = Instant::now();
        let open = CORE_OPEN.with(Cell::get);
        let fold = now.saturating_duration_since(last_fold) >= Duration::from_secs(1);
        if fold {
            last_fold = now;
            if let Some(newest) = cores.borrow().last() {
                let delta = open - reported_open;
                newest
                    .rec
                    .borrow_mut()
                    .gauge(Gauge::ClientConnections, delta);
                reported_open = open;
            }
            crate::control::logs::summarize(now);
        }
        cores.borrow_mut().retain(|c| {
            if let Some(l) = &c.access_log {
                let dropped = l.borrow_mut().flush();
                if dropped > 0 {
                    c.rec
                        .borrow_mut()
                        .count(Counter::AccessLogLinesDropped, dropped);
                }
            }
            if let Some(a) = &c.audit {
                let dropped = a.borrow_mut().log.flush();
                if dropped > 0 {
                    c.rec
                        .borrow_mut()
                        .count(Counter::AuditLinesDropped, dropped);
                }
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

/// Waits, with no timer, until [`note`] is called or a shutdown begins.
async fn dormant(mut shutdown: Pin<&mut ShutdownSignal>) {
    let mut registered = false;
    std::future::poll_fn(|cx| {
        if shutdown.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        DORMANT.with(|w| {
            let held = w.take();
            if registered && held.is_none() {
                // Taken by `note`.
                return Poll::Ready(());
            }
            w.set(Some(cx.waker().clone()));
            registered = true;
            Poll::Pending
        })
    })
    .await;
    DORMANT.with(|w| w.set(None));
}
