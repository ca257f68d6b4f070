//! A timer a connection's task keeps from one request to the next, moved rather than made
//! anew for each timed wait.
//!
//! `monoio::time::timeout_at` builds a timer entry, inserts it into the core's timer wheel on
//! its first poll and removes it when the I/O wins, which it almost always does: about 450
//! instructions per timed wait (callgrind, io_uring driver), two per request (the hot wait
//! for the next request and the wait for the backend's answer head). A [`Timer`] keeps its
//! entry registered between waits: moving its deadline later only records the new deadline
//! (the wheel finds the entry at the old slot and files it again then, once per slot, not
//! once per request), and only a deadline moved earlier, or one set after the timer fired,
//! goes through the wheel again. Its entry lives in a block the thread reuses (`Reused`), so
//! a connection whose task ends (parked, closed) hands it back without a 128-aligned free.
//!
//! One timer serves one wait at a time, in one task: a monoio timer keeps the waker of its
//! first poll until it fires, so it must never be polled from another task. A deadline that
//! passes while nothing waits on it wakes its task once for nothing (a poll that finds
//! nothing ready), which a task must (and does) bear anyway.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, RawWakerVTable};
use std::time::Duration;

use monoio::time::{Instant, Sleep};

use crate::runtime::reuse::Reused;

/// How much later than its entry's a deadline may be for the entry to stay as it is (see
/// [`Timer::arm`]).
const LAZY: Duration = Duration::from_millis(10);

/// A reusable deadline for the timed waits of one task (see the module's notes).
#[derive(Default)]
pub(crate) struct Timer {
    sleep: Option<Reused<Sleep>>,
    /// The deadline of the current wait: the entry's, or up to [`LAZY`] later.
    due: Option<Instant>,
    /// The latest deadline the entry serves as it is: its own plus [`LAZY`].
    lazy_until: Option<Instant>,
    /// Whom the timer's entry wakes: the waker it was first polled with (its data and vtable
    /// pointers, compared as `Waker::will_wake` does; no reference is held).
    waker: Option<(*const (), *const RawWakerVTable)>,
}

/// A timed wait's deadline passed before its future completed.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Elapsed;

impl Timer {
    /// Sets the timer for a wait until `deadline`: a new entry for the first wait, then the
    /// same one. A deadline moved later by at most [`LAZY`] leaves the entry where it is, as
    /// nginx's lazy timers do (a connection's next deadline is its last one plus the time its
    /// request took: usually far less). Such an entry fires early, and is then moved to the
    /// real deadline ([`Timer::poll_elapsed`]): no wait ends before its deadline.
    fn arm(&mut self, deadline: Instant) {
        self.due = Some(deadline);
        match &mut self.sleep {
            Some(sleep) => {
                let mut sleep = sleep.as_mut();
                let keep = !sleep.is_elapsed()
                    && sleep.deadline() <= deadline
                    && self.lazy_until.is_some_and(|l| deadline <= l);
                if !keep {
                    sleep.as_mut().reset(deadline);
                    self.lazy_until = deadline.checked_add(LAZY);
                }
            }
            None => {
                self.sleep = Some(Reused::new(|| monoio::time::sleep_until(deadline)));
                self.lazy_until = deadline.checked_add(LAZY);
                self.waker = None;
            }
        }
    }

    /// Whether `deadline` has passed, polled with `cx` (to be polled beside other futures in
    /// a hand-written poll; the timer then waits for `deadline` alone).
    pub(crate) fn poll_deadline(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        self.arm(deadline);
        self.poll_elapsed(cx)
    }

    /// Drops the timer's entry (a task about to wait long with no deadline: a deadline that
    /// no longer matters would still wake it).
    pub(crate) fn disarm(&mut self) {
        self.sleep = None;
    }

    /// Whether the current wait's deadline has passed, polled with `cx`. An entry first
    /// polled with another waker (the same timer awaited under another task's or a
    /// combinator's waker) would wake that one, which monoio keeps until the entry fires: it is
    /// replaced by a new one. An entry that fires before the wait's deadline (left in place by
    /// [`Timer::arm`]) is moved to it.
    fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(due) = self.due else {
            return Poll::Ready(());
        };
        let w = cx.waker();
        let who = (w.data(), std::ptr::from_ref(w.vtable()));
        if self.waker.is_some_and(|was| was != who) {
            self.sleep = Some(Reused::new(|| monoio::time::sleep_until(due)));
            self.lazy_until = due.checked_add(LAZY);
        }
        self.waker = Some(who);
        let Some(sleep) = &mut self.sleep else {
            return Poll::Ready(());
        };
        let mut sleep = sleep.as_mut();
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if sleep.deadline() < due && Instant::now() < due {
            // Fired early (a lazy deadline): on to the real one.
            sleep.as_mut().reset(due);
            self.lazy_until = due.checked_add(LAZY);
            return sleep.poll(cx);
        }
        Poll::Ready(())
    }

    /// (Tests.) Runs `fut` until it completes, or `deadline` passes first (`Err`; `fut` is dropped,
    /// which cancels its operation). Like `monoio::time::timeout_at`, the future is polled
    /// before the deadline is checked.
    #[cfg(test)]
    pub(crate) async fn within<F: Future>(
        &mut self,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let mut fut = std::pin::pin!(fut);
        self.before(deadline, fut.as_mut()).await.ok_or(Elapsed)
    }

    /// Polls `fut` until it completes (`Some`) or `deadline` passes (`None`). On `None` the
    /// future is left as it is: the caller may cancel its operation and await it, so a result
    /// that raced the deadline is still taken, never lost.
    pub(crate) async fn before<F: Future>(
        &mut self,
        deadline: Instant,
        mut fut: Pin<&mut F>,
    ) -> Option<F::Output> {
        self.arm(deadline);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if self.poll_elapsed(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<F: Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
            .block_on(f)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_future_wins_and_then_the_deadline_does_on_one_timer() {
        run(async {
            let mut t = Timer::default();
            // The future first: ready at once, or after a short sleep, well before its deadline.
            assert_eq!(t.within(Instant::now() + ms(500), async { 1 }).await, Ok(1));
            let short = monoio::time::sleep(ms(5));
            assert_eq!(t.within(Instant::now() + ms(500), short).await, Ok(()));
            // Then a wait that never ends: the same timer fires at its (earlier) deadline.
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(t.within(start + ms(30), never).await, Err(Elapsed));
            assert!(
                start.elapsed() >= ms(30),
                "fired early: {:?}",
                start.elapsed()
            );
            // Fired, it is set again by the next wait: a later deadline, reached again.
            let start = Instant::now();
            let never = std::future::pending::<()>();
            assert_eq!(t.within(start + ms(20), never).await, Err(Elapsed));
            assert!(
                start.elapsed() >= ms(20),
                "fired early: {:?}",
                start.elapsed()
            );
            // A deadline already past ends a pending wait at once.
            let never = std::future::pending::<()>();
            assert_eq!(t.within(start, never).await, Err(Elapsed));
        });
    }

    #[test]
    fn a_deadline_moved_later_fires_at_the_new_time_not_the_old_one() {
        run(async {
            let mut t = Timer::default();
            // Armed for 20 ms from now, then (the future having won) moved to 80 ms from now:
            // the entry still sits at the first slot, which must not fire the second wait.
            let start = Instant::now();
            assert_eq!(t.within(start + ms(20), async { 0 }).await, Ok(0));
            let never = std::future::pending::<()>();
            assert_eq!(t.within(start + ms(80), never).await, Err(Elapsed));
            assert!(
                start.elapsed() >= ms(80),
                "fired early: {:?}",
                start.elapsed()
            );
        });
    }

    #[test]
    fn a_deadline_moved_later_within_the_lazy_margin_is_still_kept_to() {
        run(async {
            let mut t = Timer::default();
            // The entry stays at +30 ms for a wait until +30 ms plus less than LAZY: it fires at
            // +30 ms, and the wait goes on to its own deadline.
            let start = Instant::now();
            assert_eq!(t.within(start + ms(30), async { 0 }).await, Ok(0));
            let due = start + ms(30) + LAZY - ms(1);
            let never = std::future::pending::<()>();
            assert_eq!(t.within(due, never).await, Err(Elapsed));
            assert!(
                Instant::now() >= due,
                "ended {:?} early",
                due - Instant::now()
            );
        });
    }

    #[test]
    fn a_deadline_moved_earlier_fires_at_the_new_time() {
        run(async {
            let mut t = Timer::default();
            let start = Instant::now();
            assert_eq!(t.within(start + ms(60_000), async { 0 }).await, Ok(0));
            let never = std::future::pending::<()>();
            assert_eq!(t.within(start + ms(20), never).await, Err(Elapsed));
            assert!(start.elapsed() < ms(30_000), "it kept the old deadline");
        });
    }

    #[test]
    fn a_timer_awaited_in_another_task_wakes_that_task() {
        run(async {
            // First polled (and so registered) by this task, then moved to another: its deadline
            // must wake the new task, not this one.
            let mut t = Timer::default();
            let start = Instant::now();
            let once = std::future::ready(());
            let mut pending_once = std::pin::pin!(async {
                let mut first = true;
                std::future::poll_fn(|cx| {
                    if std::mem::take(&mut first) {
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    Poll::Ready(())
                })
                .await;
                once.await
            });
            assert_eq!(
                t.before(start + ms(60_000), pending_once.as_mut()).await,
                Some(())
            );
            let other = monoio::spawn(async move {
                let never = std::future::pending::<()>();
                t.within(Instant::now() + ms(20), never).await
            });
            let r = monoio::time::timeout(ms(5_000), other).await;
            assert_eq!(r, Ok(Err(Elapsed)), "the other task was never woken");
        });
    }

    #[test]
    fn before_leaves_the_future_to_the_caller() {
        run(async {
            let mut t = Timer::default();
            let mut slow = std::pin::pin!(monoio::time::sleep(ms(40)));
            let start = Instant::now();
            assert_eq!(t.before(start + ms(10), slow.as_mut()).await, None);
            // Not dropped: it can still be awaited to its end.
            slow.await;
            assert!(start.elapsed() >= ms(40));
        });
    }
}
