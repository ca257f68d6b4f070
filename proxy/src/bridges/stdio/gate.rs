//! Who may have calls in flight on one shared stdio process, so that a server request
//! (`sampling/createMessage`, `elicitation/create`, `roots/list`) has exactly one possible
//! destination.
//!
//! stdio messages do not say which call caused a server request, so the bridge makes the
//! question moot: a *capable* session (its client declared sampling, elicitation or roots in
//! `initialize`) runs its calls on a shared process only while no other session has calls
//! there; *plain* sessions (none of the three declared) run together, any number at once. A
//! server request that arrives while a capable session has calls in flight is that session's;
//! one that arrives while only plain sessions have calls in flight has no client that could
//! answer it. Callers wait in one FIFO queue, so neither kind starves the other; a capable
//! session that already has calls in flight adds more at once (its calls stay concurrent, and
//! a call its client makes while answering a server request cannot deadlock).
//!
//! A plain state machine (no locks, no clocks): the bridge keeps it in a mutex per shared
//! process, and waits on a condvar between [`Gate::poll`] calls.

use std::collections::VecDeque;

/// The kind of session a call comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    /// Declared none of sampling, elicitation, roots: can never be sent a server request.
    Plain,
    /// Declared at least one of them; the session's number.
    Capable(u64),
}

/// The answer to a call arriving at the gate.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// In flight now; call [`Gate::leave`] when it ends.
    Entered,
    /// Waiting in the queue under this ticket; call [`Gate::poll`] after each wake-up.
    Queued,
    /// The queue is full.
    Full,
}

/// The state of a queued call.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Turn {
    /// It is in flight now; call [`Gate::leave`] when it ends.
    Entered,
    /// Still waiting.
    Waiting,
    /// It was cancelled while waiting (and is out of the queue).
    Cancelled,
    /// No such ticket (already entered, left or cancelled).
    Unknown,
}

struct Waiter {
    ticket: u64,
    caller: Caller,
    cancelled: bool,
}

/// Calls in flight on one shared process, and the queue of calls waiting for their turn.
#[derive(Default)]
pub(super) struct Gate {
    /// The capable session with calls in flight (then `plain` is 0).
    owner: Option<u64>,
    owner_calls: usize,
    /// Calls in flight from plain sessions (then `owner` is `None`).
    plain: usize,
    queue: VecDeque<Waiter>,
}

impl Gate {
    /// The capable session with calls in flight, if any: the only possible destination of a
    /// server request.
    pub(super) fn owner(&self) -> Option<u64> {
        self.owner
    }

    /// Calls in flight from plain sessions.
    pub(super) fn plain_calls(&self) -> usize {
        self.plain
    }

    /// Calls waiting for their turn.
    pub(super) fn queued(&self) -> usize {
        self.queue.len()
    }

    fn admissible(&self, caller: Caller) -> bool {
        match caller {
            Caller::Plain => self.owner.is_none(),
            Caller::Capable(s) => self.plain == 0 && self.owner.is_none_or(|o| o == s),
        }
    }

    fn enter(&mut self, caller: Caller) {
        match caller {
            Caller::Plain => self.plain += 1,
            Caller::Capable(s) => {
                self.owner = Some(s);
                self.owner_calls += 1;
            }
        }
    }

    /// A call arrives; `ticket` (unique among waiting calls) names it in the queue. The owner
    /// adds calls at once; anyone else enters only if nobody waits before it.
    pub(super) fn arrive(&mut self, caller: Caller, ticket: u64, max_queue: usize) -> Arrival {
        let joins_owner = matches!(caller, Caller::Capable(s) if self.owner == Some(s));
        if joins_owner || (self.queue.is_empty() && self.admissible(caller)) {
            self.enter(caller);
            return Arrival::Entered;
        }
        if self.queue.len() >= max_queue {
            return Arrival::Full;
        }
        self.queue.push_back(Waiter {
            ticket,
            caller,
            cancelled: false,
        });
        Arrival::Queued
    }

    /// A queued call checks whether its turn has come: it enters when it is first in the queue
    /// and may run with the calls in flight.
    pub(super) fn poll(&mut self, ticket: u64) -> Turn {
        let Some(at) = self.queue.iter().position(|w| w.ticket == ticket) else {
            return Turn::Unknown;
        };
        if self.queue.get(at).is_some_and(|w| w.cancelled) {
            self.queue.remove(at);
            return Turn::Cancelled;
        }
        match self.queue.front() {
            Some(w) if at == 0 && self.admissible(w.caller) => {
                let caller = w.caller;
                self.queue.pop_front();
                self.enter(caller);
                Turn::Entered
            }
            _ => Turn::Waiting,
        }
    }

    /// Marks a queued call cancelled (its waiter sees [`Turn::Cancelled`]); false when no call
    /// with that ticket is waiting.
    pub(super) fn cancel(&mut self, ticket: u64) -> bool {
        match self.queue.iter_mut().find(|w| w.ticket == ticket) {
            Some(w) => {
                w.cancelled = true;
                true
            }
            None => false,
        }
    }

    /// A queued call gives up (timeout, shutdown).
    pub(super) fn withdraw(&mut self, ticket: u64) {
        self.queue.retain(|w| w.ticket != ticket);
    }

    /// A call that entered has ended.
    pub(super) fn leave(&mut self, caller: Caller) {
        match caller {
            Caller::Plain => self.plain = self.plain.saturating_sub(1),
            Caller::Capable(s) if self.owner == Some(s) => {
                self.owner_calls = self.owner_calls.saturating_sub(1);
                if self.owner_calls == 0 {
                    self.owner = None;
                }
            }
            Caller::Capable(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Caller = Caller::Capable(1);
    const B: Caller = Caller::Capable(2);
    const P: Caller = Caller::Plain;

    #[test]
    fn plain_sessions_run_together_and_a_capable_one_alone() {
        let mut g = Gate::default();
        assert_eq!(g.arrive(P, 1, 8), Arrival::Entered);
        assert_eq!(g.arrive(P, 2, 8), Arrival::Entered);
        assert_eq!(g.plain_calls(), 2);
        assert_eq!(g.arrive(A, 3, 8), Arrival::Queued);
        // A plain call arriving behind a waiting capable one waits too (no starvation).
        assert_eq!(g.arrive(P, 4, 8), Arrival::Queued);
        g.leave(P);
        assert_eq!(g.poll(3), Turn::Waiting);
        g.leave(P);
        assert_eq!(g.poll(4), Turn::Waiting, "not first in the queue");
        assert_eq!(g.poll(3), Turn::Entered);
        assert_eq!(g.owner(), Some(1));
        assert_eq!(g.poll(4), Turn::Waiting);
        g.leave(A);
        assert_eq!(g.owner(), None);
        assert_eq!(g.poll(4), Turn::Entered);
        assert_eq!(g.queued(), 0);
    }

    #[test]
    fn a_capable_sessions_own_calls_stay_concurrent_and_others_wait_their_turn() {
        let mut g = Gate::default();
        assert_eq!(g.arrive(A, 1, 8), Arrival::Entered);
        assert_eq!(g.arrive(B, 2, 8), Arrival::Queued);
        // A adds calls even with B waiting: a call made while answering a server request
        // must not wait for B, which waits for A.
        assert_eq!(g.arrive(A, 3, 8), Arrival::Entered);
        g.leave(A);
        assert_eq!(g.poll(2), Turn::Waiting);
        g.leave(A);
        assert_eq!(g.poll(2), Turn::Entered);
        assert_eq!(g.owner(), Some(2));
        assert_eq!(g.arrive(A, 4, 8), Arrival::Queued);
        assert_eq!(g.arrive(B, 5, 8), Arrival::Entered);
        g.leave(B);
        g.leave(B);
        assert_eq!(g.poll(4), Turn::Entered);
    }

    #[test]
    fn cancel_withdraw_and_a_full_queue() {
        let mut g = Gate::default();
        assert_eq!(g.arrive(A, 1, 2), Arrival::Entered);
        assert_eq!(g.arrive(B, 2, 2), Arrival::Queued);
        assert_eq!(g.arrive(P, 3, 2), Arrival::Queued);
        assert_eq!(g.arrive(P, 4, 2), Arrival::Full);
        assert!(g.cancel(2));
        assert!(!g.cancel(9));
        assert_eq!(g.poll(2), Turn::Cancelled);
        assert_eq!(g.poll(2), Turn::Unknown);
        g.withdraw(3);
        assert_eq!(g.queued(), 0);
        g.leave(A);
        assert_eq!(g.owner(), None);
        // Leaving for a session that is not the owner changes nothing.
        g.leave(B);
        assert_eq!(g.arrive(P, 5, 2), Arrival::Entered);
    }
}
