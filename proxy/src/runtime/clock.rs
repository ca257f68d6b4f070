//! The time as a client connection's task sees it: read from the OS at most once per poll of
//! that task (a request's steps between two waits share one read). A paced request read the
//! clock 15-17 times (about 3.5 % of its CPU). Outside a client task's poll every call reads
//! the clock.
//!
//! A poll runs for microseconds (the largest, a 4 MiB body's parse, a few milliseconds), so a
//! deadline set from this time starts at most that much early and a duration measured with it
//! ends where the poll began.

use std::cell::Cell;
use std::time::Instant;

thread_local! {
    /// Whether a client task's poll is running on this thread (caching allowed).
    static IN_POLL: Cell<bool> = const { Cell::new(false) };
    /// The time read during the current poll, if any.
    static NOW: Cell<Option<Instant>> = const { Cell::new(None) };
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

/// [`now`] as monoio's timer instant (for `timeout_at`).
pub(crate) fn monoio_now() -> monoio::time::Instant {
    monoio::time::Instant::from_std(now())
}

/// Marks the start (`true`) or end (`false`) of a client task's poll: either way the cached
/// time is dropped, so no other task and no later poll sees it.
pub(crate) fn poll_edge(start: bool) {
    IN_POLL.with(|p| p.set(start));
    NOW.with(|n| n.set(None));
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
        poll_edge(false);
        assert!(now() > b, "the end of the poll drops it");
        poll_edge(true);
        assert!(now() > b, "the next poll reads again");
        poll_edge(false);
    }
}
