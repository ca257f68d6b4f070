//! The time as a client connection's task sees it: read from the OS at most once per poll of
//! that task (a request's steps between two waits share one read). A paced request read the
//! clock 15-17 times (about 3.5 % of its CPU). Outside a client task's poll every call reads
//! the clock.
//!
//! A poll runs for microseconds (the largest, a 4 MiB body's parse, a few milliseconds), so a
//! deadline set from this time starts at most that much early and a duration measured with it
//! ends where the poll began.
//!
//! [`now_ns`] is the same reading as nanoseconds since the process's [`anchor`], a `u64` that
//! request timing subtracts with one instruction: each `Instant` difference is a call into std
//! (`Timespec::sub_timespec`, ~37 instructions), and a session call made about 12 of them
//! (bench/instructions.sh, 2026-12-07-user-instr.md). The conversion is made once per poll,
//! when first asked for.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Instant;

thread_local! {
    /// Whether a client task's poll is running on this thread (caching allowed).
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
    /// The time read during the current poll, if any.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
    /// That time as [`now_ns`], once asked for.
    static NOW_NS: Cell<Option<u64>> = const { Cell::new(None) };
    /// Client-task polls begun on this thread ([`poll_id`]).
    static POLLS: Cell<u64> = const { Cell::new(0) };
}

/// The origin of [`now_ns`]: the first time anything asked for it in this process.
pub(crate) fn anchor() -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    *ANCHOR.get_or_init(Instant::now)
}

/// The current time: the first read of this poll of a client task, or a fresh one outside.
pub(crate) fn now() -> Instant {
    if let Some(t) = NOW.with(Cell::get) {
        return t;
    }
    let t = Instant::now();
    if IN_POLL.with(Cell::get) {
        NOW.with(|n| n.set(Some(t)));
    }
    t
}

/// [`now`] as nanoseconds since [`anchor`] (the clock the `lb` and `ratelimit` crates take as
/// an argument, and request timing's): cached with it for the rest of the poll.
#[inline]
pub(crate) fn now_ns() -> u64 {
    if let Some(ns) = NOW_NS.with(Cell::get) {
        return ns;
    }
    let ns = ns_of(now());
    if IN_POLL.with(Cell::get) {
        NOW_NS.with(|n| n.set(Some(ns)));
    }
    ns
}

/// A fresh reading (never the poll's cached one) as nanoseconds since [`anchor`]: for the
/// places that read the OS clock on purpose (the era bridge's and the virtual servers'
/// timings), so that a reading taken late in a long poll is not moved back to its start.
pub(crate) fn fresh_ns() -> u64 {
    ns_of(Instant::now())
}

/// `t` as nanoseconds since [`anchor`] (0 before it).
pub(crate) fn ns_of(t: Instant) -> u64 {
    t.saturating_duration_since(anchor()).as_nanos() as u64
}

/// Which poll of a client task this is (a count of them on this thread): a step that may or may
/// not have waited tells, by comparing it before and after, whether [`now`] is still the time
/// read before the step ([`now_after`]).
pub(crate) fn poll_id() -> u64 {
    POLLS.with(Cell::get)
}

/// [`now`], read afresh when this is still poll `poll` (a step since then did not wait, so the
/// cached time is from before it, by however long the poll has run): an operation that
/// completes at once (the epoll driver writes to a writable socket in the poll that asks) is
/// timed at its end, not at the start of the poll that read, parsed and routed the request. The
/// fresh reading replaces the poll's cached one (later readings in this poll agree with it).
pub(crate) fn now_after(poll: u64) -> Instant {
    if poll_id() != poll {
        return now();
    }
    let t = Instant::now();
    if IN_POLL.with(Cell::get) {
        NOW.with(|n| n.set(Some(t)));
        NOW_NS.with(|n| n.set(None));
    }
    t
}

/// [`now`] as monoio's timer instant (for `timeout_at`).
pub(crate) fn monoio_now() -> monoio::time::Instant {
    monoio::time::Instant::from_std(now())
}

/// Marks the start (`true`) or end (`false`) of a client task's poll: either way the cached
/// time is dropped, so no other task and no later poll sees it.
pub(crate) fn poll_edge(start: bool) {
    if start {
        POLLS.with(|p| p.set(p.get().wrapping_add(1)));
    }
    IN_POLL.with(|p| p.set(start));
    NOW.with(|n| n.set(None));
    NOW_NS.with(|n| n.set(None));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_only_inside_a_poll() {
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(now() > a, "outside a poll every call reads the clock");
        poll_edge(true);
        let b = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(now(), b, "inside a poll the first read is kept");
        assert_eq!(now_ns(), ns_of(b), "the same reading in nanoseconds");
        poll_edge(false);
        assert!(now() > b, "the end of the poll drops it");
        assert!(now_ns() > ns_of(b), "in nanoseconds too");
        poll_edge(true);
        let ns = now_ns();
        assert!(
            ns > ns_of(b),
            "the next poll reads again, whichever form comes first"
        );
        assert_eq!(ns_of(now()), ns, "and both forms are one reading");
        poll_edge(false);
    }

    #[test]
    fn now_after_reads_again_only_in_the_same_poll() {
        poll_edge(true);
        let poll = poll_id();
        let a = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = now_after(poll);
        assert!(b > a, "still the poll that cached `a`: a fresh reading");
        assert_eq!(now(), b, "which the rest of the poll sees");
        assert_eq!(now_ns(), ns_of(b), "in nanoseconds too");
        poll_edge(false);
        poll_edge(true);
        assert_ne!(poll_id(), poll, "a new poll, a new id");
        let c = now();
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(now_after(poll), c, "another poll since: its cached time");
        poll_edge(false);
    }
}
