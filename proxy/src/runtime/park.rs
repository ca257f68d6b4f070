//! Idle keep-alive client connections, parked with no task.
//!
//! A connection between requests needs nothing but its socket, its client's address and its
//! per-IP permit. Keeping its task alive while it idles costs about 2 KiB (the task's future,
//! a boxed readiness wait and a timer: measured 3 356 bytes per idle connection in
//! `bench/results/2026-11-25-idle-memory.md`, against nginx's 526). So an idle connection
//! leaves its task and waits here instead: a slot in a per-core table, and its socket in a
//! per-core epoll set (`EPOLLONESHOT`) that the core's runtime watches as one file (one
//! io_uring poll, or one registration with the epoll driver). When a parked socket turns
//! readable (a request, or the client closing) its slot is emptied and a warm task (below)
//! or a new one serves it. The table is swept when its oldest connection may have idled past
//! `client_idle_timeout` (and, on shutdown, all of them go), so an idle set with nothing due
//! costs no wake-up. One `epoll_ctl` per park (two the first time) and one `epoll_wait` per
//! batch of wake-ups: connections that keep sending never park (see `hot_wait` in the
//! worker).
//!
//! A woken connection is handed to a warm task when one waits ([`WarmPool`]): a task whose
//! own connection just parked waits here for the next one to wake (its own first, so its
//! per-connection state, the session-id memo, carries over), instead of ending and a new task
//! being spawned. A few per core at most: a parked connection holds no more than before.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::runtime::slots::{per_chunk, SlotTable};
use crate::runtime::timer::Timer;
use crate::runtime::ClientSlot;

/// One parked connection.
pub(crate) struct Parked {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The connection's place in the connection counts (and its per-client-address permit),
    /// released when it closes.
    pub client: ClientSlot,
    /// When its last request ended: it has been idle since.
    pub since: Instant,
}

/// A core's parked connections.
pub(crate) struct IdleSet {
    /// The epoll instance, as a stream the runtime can wait on for readability (it is only
    /// ever polled, never read or written).
    waiter: TcpStream,
    /// The parked connections, in chunks (`slots.rs`): a late event for an earlier occupant of
    /// a slot is recognised by its generation and ignored.
    slots: RefCell<SlotTable<Parked, PARKED_PER_CHUNK>>,
    /// When the oldest parked connection may be due to close (no earlier than the truth: a
    /// sweep then finds out); `None` while nothing is parked.
    next_sweep: Cell<Option<Instant>>,
    /// The task in [`IdleSet::wait`], woken when a park brings the next sweep forward.
    waiter_task: Cell<Option<Waker>>,
    /// Tasks waiting to be handed a woken connection.
    pub(crate) warm: WarmPool,
}

/// Which parked connection: its slot and the slot's generation while it was parked there
/// (unique to that stay, up to the generation's wrap).
pub(crate) use crate::runtime::slots::Ticket;

/// A parked connection that turned readable, with its ticket.
pub(crate) struct Woken {
    pub parked: Parked,
    pub ticket: Ticket,
}

/// Why [`IdleSet::wait`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woke {
    /// Parked connections turned readable (they are in `out`).
    Ready,
    /// A parked connection may have idled past its timeout: time to sweep.
    Sweep,
    /// A shutdown began.
    Shutdown,
    /// The next sweep moved forward: wait again.
    Rearm,
}

const BATCH: usize = 64;

/// Parked connections per chunk of the idle set's table: 16 KiB chunks.
const PARKED_PER_CHUNK: usize = per_chunk::<Parked>(16 * 1024);

impl IdleSet {
    /// A new, empty set (one epoll file descriptor).
    #[allow(unsafe_code)]
    pub(crate) fn new() -> io::Result<IdleSet> {
        // SAFETY: epoll_create1 takes no pointer; the returned fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        Ok(IdleSet {
            waiter: crate::runtime::watched(fd)?,
            slots: RefCell::new(SlotTable::default()),
            next_sweep: Cell::new(None),
            waiter_task: Cell::new(None),
            warm: WarmPool::default(),
        })
    }

    fn epfd(&self) -> RawFd {
        self.waiter.as_raw_fd()
    }

    /// Parks a connection idle `since` then, to be closed once idle for `idle_timeout` (its
    /// ticket, see [`Woken`]); closes it if its socket cannot be watched (`None`).
    #[allow(unsafe_code)]
    pub(crate) fn park(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        client: ClientSlot,
        since: Instant,
        idle_timeout: Duration,
    ) -> Option<Ticket> {
        let fd = stream.as_raw_fd();
        let mut slots = self.slots.borrow_mut();
        let parked = Parked {
            stream,
            peer,
            client,
            since,
        };
        let ticket = slots.insert(parked).ok()?;
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: ticket,
        };
        // A socket parked before is still in the set (disabled by EPOLLONESHOT): re-arm it;
        // a new one is added. Readiness is checked at once either way, so bytes that arrived
        // before this call wake it straight away.
        // SAFETY: epoll_ctl on our epoll fd and a valid socket fd, with a stack event.
        let rc = unsafe {
            let mut rc = libc::epoll_ctl(self.epfd(), libc::EPOLL_CTL_MOD, fd, &mut ev);
            if rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOENT) {
                rc = libc::epoll_ctl(self.epfd(), libc::EPOLL_CTL_ADD, fd, &mut ev);
            }
            rc
        };
        if rc != 0 {
            // It closes (and releases its slot of the connection counts) as it drops.
            drop(slots.remove(ticket));
            return None;
        }
        drop(slots);
        let due = since + idle_timeout;
        if self.next_sweep.get().is_none_or(|n| due < n) {
            self.next_sweep.set(Some(due));
            if let Some(w) = self.waiter_task.take() {
                w.wake();
            }
        }
        Some(ticket)
    }

    /// Waits until some parked connections turn readable (moved into `out`), a sweep is due,
    /// a shutdown begins or a park brings the next sweep forward. Between those it costs no
    /// wake-up: no timer runs while nothing is parked.
    /// `timer` is the sweep's, kept from one wait to the next (`runtime::timer`): moved, not
    /// made anew, for each batch of wake-ups.
    pub(crate) async fn wait(
        &self,
        out: &mut Vec<Woken>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        timer: &mut Timer,
    ) -> Woke {
        let due = self.next_sweep.get();
        let sweep_at = due.map(monoio::time::Instant::from_std);
        if sweep_at.is_none() {
            timer.disarm();
        }
        let mut readable = std::pin::pin!(self.waiter.readable(false));
        let woke = std::future::poll_fn(|cx| {
            if readable.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Ready);
            }
            if shutdown.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Woke::Shutdown);
            }
            if let Some(at) = sweep_at {
                if timer.poll_deadline(at, cx).is_ready() {
                    return Poll::Ready(Woke::Sweep);
                }
            }
            if self.next_sweep.get() != due {
                return Poll::Ready(Woke::Rearm);
            }
            self.waiter_task.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        self.waiter_task.set(None);
        if woke == Woke::Ready {
            self.drain(out);
        }
        woke
    }

    /// Moves the parked connections the epoll set reports readable into `out` (one batch of
    /// [`BATCH`] at most: more wait for the next [`IdleSet::wait`], which returns at once), and
    /// closes at once those that the client closed or reset with nothing left to read
    /// ([`gone`]): they cost no task and no buffer (10 000 parked connections reset at once
    /// took a task each, about 4 KiB, all at the same time). One batch at a time, so a burst's
    /// closes (one io_uring operation each) and tasks are not all in flight together.
    #[allow(unsafe_code)]
    fn drain(&self, out: &mut Vec<Woken>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: epoll_wait into a stack array of BATCH events, never blocking.
        let n =
            unsafe { libc::epoll_wait(self.epfd(), events.as_mut_ptr(), BATCH as libc::c_int, 0) };
        let Ok(n) = usize::try_from(n) else { return };
        for ev in events.iter().take(n) {
            let (flags, ticket) = (ev.events, ev.u64);
            let Some(parked) = self.slots.borrow_mut().remove(ticket) else {
                continue;
            };
            if gone(flags, parked.stream.as_raw_fd()) {
                // Dropped: the socket closes and its slot of the connection counts goes.
                continue;
            }
            out.push(Woken { parked, ticket });
        }
    }

    /// Moves into `out` every connection idle for `idle` or longer (all of them when `idle`
    /// is zero), and sets the next sweep by the oldest left.
    pub(crate) fn expire(&self, idle: Duration, out: &mut Vec<Woken>) {
        let now = Instant::now();
        let mut oldest: Option<Instant> = None;
        self.slots.borrow_mut().take_where(
            |p| {
                let due = now.saturating_duration_since(p.since) >= idle;
                if !due && oldest.is_none_or(|o| p.since < o) {
                    oldest = Some(p.since);
                }
                due
            },
            |ticket, parked| out.push(Woken { parked, ticket }),
        );
        self.next_sweep.set(oldest.map(|o| o + idle));
    }
}

/// Whether a parked socket that the epoll set reported (`flags`) was closed or reset by its
/// client with nothing left to read: then no request can follow, and it closes without a task.
/// A socket reported only readable holds a request (or its start) and costs nothing here; one
/// the client shut (`EPOLLRDHUP`) or reset (`EPOLLHUP`, `EPOLLERR`) is peeked at, one byte,
/// since a client may send a request and then shut its side: that one is served as before.
#[allow(unsafe_code)]
fn gone(flags: u32, fd: RawFd) -> bool {
    let closing = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32;
    if flags & closing == 0 {
        return false;
    }
    let mut byte = 0u8;
    // SAFETY: recv on a valid socket fd into one byte on the stack; MSG_PEEK leaves it queued.
    let n = unsafe {
        libc::recv(
            fd,
            (&raw mut byte).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => true,
        n if n > 0 => false,
        // Nothing to read after all (or interrupted): the task's read finds out.
        _ => !matches!(
            io::Error::last_os_error().raw_os_error(),
            Some(libc::EAGAIN | libc::EINTR)
        ),
    }
}

/// The most tasks a core keeps waiting for a woken connection (a task past it ends when its
/// connection parks): each holds its task while it waits (the task's future measured 1 912
/// bytes before the warm loop; not measured since), whatever the number of parked
/// connections. The spawn saved needs only one; the session-id memo carries over for as many
/// connections as there are tasks waiting (callgrind, 8 paced sessions on one core: with 4,
/// about a fifth of the calls found their memo, 25 304 instructions per call; with 8 all of
/// them, 23 958).
pub(crate) const WARM_TASKS: usize = 8;

/// Tasks whose connection parked, waiting to serve the next woken one: a woken connection
/// handed to one costs no spawn, no copy of a new task's future into place and no cold first
/// poll. Each waits holding no buffer and no per-core state (a reload's old state is not kept
/// alive by it); at most [`WARM_TASKS`] per core.
#[derive(Default)]
pub(crate) struct WarmPool {
    waiting: RefCell<Vec<Rc<Waiter>>>,
}

/// One warm task's place in the pool (the task keeps it for its life: no allocation per
/// wait).
#[derive(Default)]
pub(crate) struct Waiter {
    /// The ticket of the connection the task parked last: that one is handed back to it
    /// first.
    last: Cell<Ticket>,
    handed: RefCell<Option<Woken>>,
    /// The pool let it go with no connection (a shutdown).
    released: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl WarmPool {
    /// Hands `w` to a waiting task (the one that parked it, if it waits, or else the one
    /// that began waiting last); gives it back when none waits.
    pub(crate) fn hand(&self, w: Woken) -> Option<Woken> {
        let mut waiting = self.waiting.borrow_mut();
        let i = match waiting.iter().rposition(|t| t.last.get() == w.ticket) {
            Some(i) => i,
            None if waiting.is_empty() => return Some(w),
            None => waiting.len() - 1,
        };
        let t = waiting.remove(i);
        *t.handed.borrow_mut() = Some(w);
        if let Some(k) = t.waker.take() {
            k.wake();
        }
        None
    }

    /// Lets every waiting task go with no connection (they end): a shutdown.
    pub(crate) fn release_all(&self) {
        for t in self.waiting.borrow_mut().drain(..) {
            t.released.set(true);
            if let Some(k) = t.waker.take() {
                k.wake();
            }
        }
    }

    /// Tasks waiting now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Waits, as the task that just parked the connection `last`, to be handed a woken
    /// connection; `None` at once when [`WARM_TASKS`] already wait, and when the pool lets it
    /// go (a shutdown). `waiter` is the task's own, kept from one wait to the next.
    pub(crate) async fn wait(&self, waiter: &Rc<Waiter>, last: Ticket) -> Option<Woken> {
        {
            let mut waiting = self.waiting.borrow_mut();
            if waiting.len() >= WARM_TASKS {
                return None;
            }
            waiter.last.set(last);
            waiter.released.set(false);
            waiting.push(waiter.clone());
        }
        // Leaves the pool if the task is dropped while it waits (a connection handed to it
        // and not yet taken closes then).
        let enlisted = Enlisted { pool: self, waiter };
        let got = std::future::poll_fn(|cx| {
            if let Some(w) = waiter.handed.borrow_mut().take() {
                return Poll::Ready(Some(w));
            }
            if waiter.released.get() {
                return Poll::Ready(None);
            }
            waiter.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        })
        .await;
        drop(enlisted);
        got
    }
}

struct Enlisted<'a> {
    pool: &'a WarmPool,
    waiter: &'a Rc<Waiter>,
}

impl Drop for Enlisted<'_> {
    fn drop(&mut self) {
        let mut waiting = self.pool.waiting.borrow_mut();
        if let Some(i) = waiting.iter().position(|t| Rc::ptr_eq(t, self.waiter)) {
            waiting.swap_remove(i);
        }
        drop(waiting);
        self.waiter.waker.take();
        self.waiter.handed.borrow_mut().take();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::task::Context;

    /// Runs `f` on a monoio runtime (the sockets below need one).
    fn on_runtime(f: impl FnOnce()) {
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        rt.block_on(async { f() });
    }

    /// A parked connection for the pool (a real loopback socket).
    fn woken(ticket: Ticket) -> Woken {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = s.local_addr().unwrap();
        let stream = TcpStream::from_std(s).unwrap();
        Woken {
            parked: Parked {
                stream,
                peer,
                client: ClientSlot::open(None),
                since: Instant::now(),
            },
            ticket,
        }
    }

    fn poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_woken_connection_goes_back_to_the_task_that_parked_it_else_to_the_last_one() {
        on_runtime(handed_in_order);
    }

    fn handed_in_order() {
        let pool = WarmPool::default();
        let (t1, t2, t3) = (Rc::default(), Rc::default(), Rc::default());
        let mut w1 = std::pin::pin!(pool.wait(&t1, 1));
        let mut w2 = std::pin::pin!(pool.wait(&t2, 2));
        let mut w3 = std::pin::pin!(pool.wait(&t3, 3));
        assert!(poll(w1.as_mut()).is_pending());
        assert!(poll(w2.as_mut()).is_pending());
        assert!(poll(w3.as_mut()).is_pending());
        assert_eq!(pool.len(), 3);
        // Its own connection, wherever the task waits in the pool.
        assert!(pool.hand(woken(2)).is_none());
        assert!(matches!(poll(w2.as_mut()), Poll::Ready(Some(w)) if w.ticket == 2));
        // Another one: the task that began waiting last.
        assert!(pool.hand(woken(9)).is_none());
        assert!(matches!(poll(w3.as_mut()), Poll::Ready(Some(w)) if w.ticket == 9));
        assert!(pool.hand(woken(8)).is_none());
        assert!(matches!(poll(w1.as_mut()), Poll::Ready(Some(w)) if w.ticket == 8));
        // None waits: the caller spawns a task for it.
        assert!(matches!(pool.hand(woken(1)), Some(w) if w.ticket == 1));
    }

    #[test]
    fn the_pool_keeps_a_few_tasks_and_lets_them_all_go_on_shutdown() {
        on_runtime(bounded_and_released);
    }

    fn bounded_and_released() {
        let pool = WarmPool::default();
        let tasks: Vec<Rc<Waiter>> = (0..=WARM_TASKS).map(|_| Rc::default()).collect();
        let mut waits: Vec<_> = tasks
            .iter()
            .enumerate()
            .map(|(i, t)| Box::pin(pool.wait(t, i as Ticket)))
            .collect();
        let polled: Vec<_> = waits.iter_mut().map(|w| poll(w.as_mut())).collect();
        // Past WARM_TASKS a task is not kept: it ends.
        assert!(polled[..WARM_TASKS].iter().all(|p| p.is_pending()));
        assert!(matches!(polled[WARM_TASKS], Poll::Ready(None)));
        assert_eq!(pool.len(), WARM_TASKS);
        // A task dropped while it waits leaves the pool.
        drop(waits.remove(0));
        assert_eq!(pool.len(), WARM_TASKS - 1);
        // A shutdown lets the others go, with no connection.
        pool.release_all();
        assert_eq!(pool.len(), 0);
        for w in waits.iter_mut().take(WARM_TASKS - 1) {
            assert!(matches!(poll(w.as_mut()), Poll::Ready(None)));
        }
        // A task waiting again after that (a new wait) is kept again.
        let t = Rc::default();
        let mut again = std::pin::pin!(pool.wait(&t, 7));
        assert!(poll(again.as_mut()).is_pending());
        assert_eq!(pool.len(), 1);
    }
}
