//! Telling a worker's waiting tasks that a graceful shutdown has begun. The flag
//! ([`SHUTDOWN`]) is set by the main thread; each worker's accept loop notices it (within its
//! 250 ms tick) and calls [`wake_all`], which wakes every task of that worker waiting on a
//! [`ShutdownSignal`]: standalone GET streams (ended at once, cleanly) and connections idle
//! before a request (closed). Per worker thread, so no lock; a waiting task costs one slot.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};

use crate::runtime::SHUTDOWN;

/// This worker's tasks waiting for a shutdown: a slot each, reused.
#[derive(Default)]
struct Waiting {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

thread_local! {
    static WAITING: RefCell<Waiting> = RefCell::new(Waiting::default());
}

/// Resolves once a graceful shutdown has begun (at its first poll, if it has already).
#[derive(Default)]
pub(crate) struct ShutdownSignal {
    slot: Option<usize>,
}

impl ShutdownSignal {
    /// A signal not yet registered (registration happens at the first poll).
    pub(crate) fn new() -> Self {
        ShutdownSignal::default()
    }
}

impl Future for ShutdownSignal {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if SHUTDOWN.load(Ordering::Relaxed) {
            return Poll::Ready(());
        }
        let slot = self.slot;
        let slot = WAITING.with(|w| {
            let mut w = w.borrow_mut();
            let waker = cx.waker();
            match slot.and_then(|i| w.slots.get_mut(i).map(|s| (i, s))) {
                Some((i, s)) => {
                    if !s.as_ref().is_some_and(|old| old.will_wake(waker)) {
                        *s = Some(waker.clone());
                    }
                    i
                }
                None => match w.free.pop() {
                    Some(i) => {
                        if let Some(s) = w.slots.get_mut(i) {
                            *s = Some(waker.clone());
                        }
                        i
                    }
                    None => {
                        w.slots.push(Some(waker.clone()));
                        w.slots.len() - 1
                    }
                },
            }
        });
        self.slot = Some(slot);
        Poll::Pending
    }
}

impl Drop for ShutdownSignal {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            // During thread teardown the list may be gone already: nothing to release then.
            let _ = WAITING.try_with(|w| {
                if let Ok(mut w) = w.try_borrow_mut() {
                    if let Some(s) = w.slots.get_mut(i) {
                        *s = None;
                        w.free.push(i);
                    }
                }
            });
        }
    }
}

/// Wakes every task of this worker waiting on a [`ShutdownSignal`] (call it once
/// [`SHUTDOWN`] is set: each then finds the flag).
pub(crate) fn wake_all() {
    let wakers: Vec<Waker> = WAITING.with(|w| {
        w.borrow_mut()
            .slots
            .iter_mut()
            .filter_map(Option::take)
            .collect()
    });
    for w in wakers {
        w.wake();
    }
}
