//! A worker's loop gaps: how long it went without handling any of its requests while it had
//! some in flight. An operator's stall metric (like Node's event-loop lag): a worker that
//! stalls (a long statistics fold, a burst of accepts, a big memset, the thread descheduled)
//! delays every request it holds, and the stall shows here as a gap even when no request's
//! latency is recorded yet.
//!
//! The gaps are measured between the request events the data path reads the clock for anyway
//! (a request begun, its answer written: [`Begun`]), so this adds no clock read:
//! two thread-local updates per request. A gap counts only when at least one request was in
//! flight on this worker through it (an idle worker has no gaps). At load, events are tens of
//! µs apart, so a gap of a millisecond or more means the worker did not get to any completion
//! for that long: its own work, its thread descheduled, or every request it held waiting on a
//! backend that stalled (`perf sched` tells these apart). The counts stay in the thread until
//! the worker's once-a-second flush moves them into its statistics ([`take`]).

use std::cell::{Cell, RefCell};

use crate::control::stats::GapCounts;

thread_local! {
    /// The last request event on this worker (`clock::now_ns`).
    static LAST: Cell<Option<u64>> = const { Cell::new(None) };
    /// Requests begun and not yet ended on this worker ([`Begun`]s alive).
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
    /// Gaps since the last [`take`].
    static GAPS: RefCell<GapCounts> = const { RefCell::new(GapCounts::EMPTY) };
}

/// A request in flight on this worker, from [`Begun::at`] to [`Begun::end`] (or its drop: a
/// request abandoned, its task dropped or panicking, ends uncounted).
pub(crate) struct Begun(());

impl Begun {
    /// A request began at `now` (the clock read its latency starts from, as
    /// [`crate::runtime::clock::now_ns`]).
    #[inline]
    pub(crate) fn at(now: u64) -> Begun {
        event(now);
        IN_FLIGHT.with(|n| n.set(n.get().saturating_add(1)));
        Begun(())
    }

    /// The request ended at `now` (its answer written; nanoseconds, as [`Begun::at`]).
    #[inline]
    pub(crate) fn end(self, now: u64) {
        event(now);
    }
}

impl Drop for Begun {
    #[inline]
    fn drop(&mut self) {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

#[inline]
fn event(now: u64) {
    let last = LAST.with(|l| l.replace(Some(now)));
    if IN_FLIGHT.with(Cell::get) == 0 {
        return;
    }
    if let Some(last) = last {
        let us = now.saturating_sub(last) / 1_000;
        GAPS.with(|g| g.borrow_mut().add(us));
    }
}

/// Whether gaps were counted since the last [`take`].
pub(crate) fn any() -> bool {
    GAPS.with(|g| g.borrow().count() > 0)
}

/// The gaps counted since the last call, which starts a new count.
pub(crate) fn take() -> GapCounts {
    GAPS.with(|g| g.replace(GapCounts::EMPTY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::stats::GAP_BOUNDS_US;

    #[test]
    fn counts_gaps_only_while_requests_are_in_flight() {
        let _ = take();
        let t0 = crate::runtime::clock::now_ns();
        let at = |us: u64| t0 + us * 1_000;
        // Idle before the first request: no gap.
        let a = Begun::at(at(0));
        // A second request begins 50 µs later, while the first is in flight.
        let b = Begun::at(at(50));
        a.end(at(2_050)); // 2 ms with two in flight: a stall
        b.end(at(2_100));
        // Idle for a second: no gap.
        let c = Begun::at(at(1_002_100));
        c.end(at(1_002_400));
        // An abandoned request leaves nothing in flight.
        drop(Begun::at(at(1_002_500)));
        let d = Begun::at(at(2_000_000));
        d.end(at(2_000_010));
        let g = take();
        assert_eq!(g.count(), 5);
        // 50, 50 and 10 µs at most 100; 300 at most 500; 2 000 at most 2 500.
        assert_eq!(g.buckets, [3, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(GAP_BOUNDS_US[2], 500);
        assert_eq!(GAP_BOUNDS_US[4], 2_500);
        assert_eq!(g.max_us, 2_000);
        assert_eq!(g.sum_us, 50 + 2_000 + 50 + 300 + 10);
        assert_eq!(take().count(), 0);
    }
}
