//! Telling a worker's waiting tasks that a graceful shutdown has begun. [`begin`] sets the
//! flag ([`SHUTDOWN`]) and wakes each worker's accept loop (waiting on a [`WorkerNotice`]:
//! the one wake-up that crosses threads, so no worker polls the flag on a timer), which calls
//! [`wake_all`]: that wakes every task of its worker waiting on a [`ShutdownSignal`]: standalone
//! GET streams (ended at once, cleanly), connections idle before a request (closed), the idle
//! set and the flusher. Per worker thread, so no lock; a waiting task costs one slot.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
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

/// Each worker's accept loop, while it waits for a connection (a slot each). Locked when a
/// worker starts waiting and once per shutdown or reload, never per request.
static WORKERS: Mutex<Vec<Option<Waker>>> = Mutex::new(Vec::new());
/// Bumped by every [`wake_workers`]: a [`WorkerNotice`] resolves when it moved.
static NOTICES: AtomicU64 = AtomicU64::new(0);

fn workers() -> std::sync::MutexGuard<'static, Vec<Option<Waker>>> {
    match WORKERS.lock() {
        Ok(w) => w,
        Err(p) => p.into_inner(),
    }
}

/// Begins a graceful shutdown: sets [`SHUTDOWN`] and wakes every worker's accept loop (which
/// then wakes its worker's waiting tasks with [`wake_all`]).
pub(crate) fn begin() {
    SHUTDOWN.store(true, Ordering::SeqCst);
    wake_workers();
}

/// Wakes every worker's accept loop, from any thread: a shutdown began, or a reload published
/// a new configuration (the worker then builds its new state at once, closing pooled
/// connections to backends that left).
pub(crate) fn wake_workers() {
    NOTICES.fetch_add(1, Ordering::SeqCst);
    let wakers: Vec<Waker> = workers().iter_mut().filter_map(Option::take).collect();
    for w in wakers {
        w.wake();
    }
}

/// Resolves at the next [`wake_workers`] (at once while a shutdown is under way): what a
/// worker's accept loop waits on beside its accept, so an idle worker wakes for nothing else.
pub(crate) struct WorkerNotice {
    /// The [`NOTICES`] count last answered.
    seen: u64,
    /// Its place in [`WORKERS`], and the waker registered there (registered again only when
    /// the task's waker changes or a wake took it).
    registered: Option<(usize, Waker)>,
}

impl WorkerNotice {
    /// A notice for what happens from now on (registration happens at the first poll).
    pub(crate) fn new() -> Self {
        WorkerNotice {
            seen: NOTICES.load(Ordering::SeqCst),
            registered: None,
        }
    }

    fn moved(&mut self) -> bool {
        let n = NOTICES.load(Ordering::SeqCst);
        let moved = n != self.seen || SHUTDOWN.load(Ordering::SeqCst);
        self.seen = n;
        moved
    }
}

impl Future for WorkerNotice {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.moved() {
            // The wake took the registered waker: register again at the next wait.
            if let Some((i, _)) = self.registered.take() {
                self.registered = Some((i, Waker::noop().clone()));
            }
            return Poll::Ready(());
        }
        let slot = match &self.registered {
            Some((_, w)) if w.will_wake(cx.waker()) => return Poll::Pending,
            Some((i, _)) => Some(*i),
            None => None,
        };
        let waker = cx.waker().clone();
        let index = {
            let mut w = workers();
            match slot.and_then(|i| w.get_mut(i).map(|s| (i, s))) {
                Some((i, s)) => {
                    *s = Some(waker.clone());
                    i
                }
                None => {
                    w.push(Some(waker.clone()));
                    w.len() - 1
                }
            }
        };
        self.registered = Some((index, waker));
        // A wake that came while this registered may have taken the list before: its count,
        // bumped first, is seen now.
        if self.moved() {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for WorkerNotice {
    fn drop(&mut self) {
        if let Some((i, _)) = self.registered.take() {
            if let Some(s) = workers().get_mut(i) {
                *s = None;
            }
        }
    }
}
