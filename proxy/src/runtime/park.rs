//! Idle keep-alive client connections, parked with no task.
//!
//! A connection between requests needs nothing but its socket, its client's address and its
//! per-IP permit. Keeping its task alive while it idles costs about 2 KiB (the task's future,
//! a boxed readiness wait and a timer: measured 3 356 bytes per idle connection in
//! `bench/results/2026-11-25-idle-memory.md`, against nginx's 526). So an idle connection
//! leaves its task and waits here instead: a slot in a per-core table, and its socket in a
//! per-core epoll set (`EPOLLONESHOT`) that the core's runtime watches as one file (one
//! io_uring poll, or one registration with the epoll driver). When a parked socket turns
//! readable (a request, or the client closing) its slot is emptied and a new task serves
//! it. The table is swept when its oldest connection may have idled past
//! `client_idle_timeout` (and, on shutdown, all of them go), so an idle set with nothing due
//! costs no wake-up. One `epoll_ctl` per park (two the first time) and one `epoll_wait` per
//! batch of wake-ups: connections that keep sending never park (see `hot_wait` in the
//! worker).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::pin::Pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

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

struct Slot {
    /// Bumped every time the slot is emptied, so a late event for an earlier occupant is
    /// recognised and ignored.
    generation: u32,
    entry: Option<Parked>,
}

/// A core's parked connections.
pub(crate) struct IdleSet {
    /// The epoll instance, as a stream the runtime can wait on for readability (it is only
    /// ever polled, never read or written).
    waiter: TcpStream,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<u32>>,
    /// When the oldest parked connection may be due to close (no earlier than the truth: a
    /// sweep then finds out); `None` while nothing is parked.
    next_sweep: Cell<Option<Instant>>,
    /// The task in [`IdleSet::wait`], woken when a park brings the next sweep forward.
    waiter_task: Cell<Option<Waker>>,
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

fn token(index: u32, generation: u32) -> u64 {
    u64::from(index) | (u64::from(generation) << 32)
}

impl IdleSet {
    /// A new, empty set (one epoll file descriptor).
    #[allow(unsafe_code)]
    pub(crate) fn new() -> io::Result<IdleSet> {
        // SAFETY: epoll_create1 takes no pointer; the returned fd is owned below.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor owned by nothing else. The std type is only a
        // vessel to hand it to the runtime, which needs nothing but a pollable fd.
        let vessel = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        Ok(IdleSet {
            waiter: TcpStream::from_std(vessel)?,
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            next_sweep: Cell::new(None),
            waiter_task: Cell::new(None),
        })
    }

    fn epfd(&self) -> RawFd {
        self.waiter.as_raw_fd()
    }

    /// Parks a connection idle `since` then, to be closed once idle for `idle_timeout`; gives
    /// it back if its socket cannot be watched (the caller then closes it).
    #[allow(unsafe_code)]
    pub(crate) fn park(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        client: ClientSlot,
        since: Instant,
        idle_timeout: Duration,
    ) -> Result<(), (TcpStream, ClientSlot)> {
        let mut slots = self.slots.borrow_mut();
        let index = match self.free.borrow_mut().pop() {
            Some(i) => i,
            None => {
                let Ok(i) = u32::try_from(slots.len()) else {
                    return Err((stream, client));
                };
                slots.push(Slot {
                    generation: 0,
                    entry: None,
                });
                i
            }
        };
        let Some(slot) = slots.get_mut(index as usize) else {
            return Err((stream, client));
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token(index, slot.generation),
        };
        let fd = stream.as_raw_fd();
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
            self.free.borrow_mut().push(index);
            return Err((stream, client));
        }
        slot.entry = Some(Parked {
            stream,
            peer,
            client,
            since,
        });
        let due = since + idle_timeout;
        if self.next_sweep.get().is_none_or(|n| due < n) {
            self.next_sweep.set(Some(due));
            if let Some(w) = self.waiter_task.take() {
                w.wake();
            }
        }
        Ok(())
    }

    /// Waits until some parked connections turn readable (moved into `out`), a sweep is due,
    /// a shutdown begins or a park brings the next sweep forward. Between those it costs no
    /// wake-up: no timer runs while nothing is parked.
    /// `timer` is the sweep's, kept from one wait to the next (`runtime::timer`): moved, not
    /// made anew, for each batch of wake-ups.
    pub(crate) async fn wait(
        &self,
        out: &mut Vec<Parked>,
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

    /// Moves the parked connections the epoll set reports readable into `out`.
    #[allow(unsafe_code)]
    fn drain(&self, out: &mut Vec<Parked>) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        loop {
            // SAFETY: epoll_wait into a stack array of BATCH events, never blocking.
            let n = unsafe {
                libc::epoll_wait(self.epfd(), events.as_mut_ptr(), BATCH as libc::c_int, 0)
            };
            let Ok(n) = usize::try_from(n) else { return };
            for ev in events.iter().take(n) {
                let data = ev.u64;
                let (index, generation) = (data as u32, (data >> 32) as u32);
                if let Some(p) = self.take(index, generation) {
                    out.push(p);
                }
            }
            if n < BATCH {
                return;
            }
        }
    }

    fn take(&self, index: u32, generation: u32) -> Option<Parked> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.get_mut(index as usize)?;
        if slot.generation != generation {
            return None;
        }
        let p = slot.entry.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.borrow_mut().push(index);
        Some(p)
    }

    /// Moves into `out` every connection idle for `idle` or longer (all of them when `idle`
    /// is zero), and sets the next sweep by the oldest left.
    pub(crate) fn expire(&self, idle: Duration, out: &mut Vec<Parked>) {
        let now = Instant::now();
        let mut slots = self.slots.borrow_mut();
        let mut free = self.free.borrow_mut();
        let mut oldest: Option<Instant> = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            let Some(since) = slot.entry.as_ref().map(|p| p.since) else {
                continue;
            };
            if now.saturating_duration_since(since) >= idle {
                if let Some(p) = slot.entry.take() {
                    slot.generation = slot.generation.wrapping_add(1);
                    free.push(i as u32);
                    out.push(p);
                }
            } else if oldest.is_none_or(|o| since < o) {
                oldest = Some(since);
            }
        }
        self.next_sweep.set(oldest.map(|o| o + idle));
    }
}
