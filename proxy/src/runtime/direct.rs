//! Plain syscalls instead of io_uring operations while a core is lightly loaded.
//!
//! With one call in flight per session an io_uring operation batches nothing: each send or
//! read is its own submission, its own `io_uring_enter` round trip and a poll of its task
//! again, and the kernel's per-operation cost is above the plain syscall's (measured: the
//! epoll driver cost 7-18 % less CPU per request with 1-8 connections busy, io_uring 4.6 %
//! less at 64; `bench/results/2026-12-06-onecall-kernel.md`). So while few requests are in
//! flight on the core ([`light`]), a send to a plain TCP socket goes out with one
//! non-blocking `send` (`MSG_DONTWAIT | MSG_NOSIGNAL`: a closed peer is an error, never a
//! SIGPIPE), and only what does not fit now (EAGAIN, or the rest of a partial send) goes
//! through io_uring; under load every operation stays on io_uring, where submissions batch.
//! With the epoll driver nothing changes here: its operations are plain syscalls already.

use std::cell::Cell;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

/// Requests in flight on a core up to which it counts as lightly loaded. One to eight busy
/// connections were cheaper on plain syscalls, 64 on io_uring (see the module's doc).
const LIGHT_MAX: u32 = 8;

thread_local! {
    /// This worker runs on io_uring (set once when its runtime starts).
    static URING: Cell<bool> = const { Cell::new(false) };
    /// Requests in flight on this worker (each [`InFlight`] alive).
    static IN_FLIGHT: Cell<u32> = const { Cell::new(0) };
}

/// Marks the calling worker thread as running on io_uring.
pub(crate) fn set_uring(on: bool) {
    URING.with(|u| u.set(on));
}

/// Whether an operation on this worker should try a plain syscall first: it runs on io_uring
/// and at most [`LIGHT_MAX`] requests are in flight on it.
pub(crate) fn light() -> bool {
    URING.with(Cell::get) && IN_FLIGHT.with(Cell::get) <= LIGHT_MAX
}

/// A request in flight on this worker, counted while it lives (dropped however the request
/// ends, a cancelled task included).
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn begin() -> InFlight {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_add(1)));
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Sends what of `data` fits now without waiting (one `send` with `MSG_DONTWAIT |
/// MSG_NOSIGNAL`): the bytes sent, 0 when none fit (EAGAIN), or the error (EPIPE,
/// ECONNRESET, ...).
#[allow(unsafe_code)]
pub(crate) fn send_now(s: &TcpStream, data: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: send on a valid fd from `data`, `data.len()` initialised bytes.
        let n = unsafe {
            libc::send(
                s.as_raw_fd(),
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Ok(n) = usize::try_from(n) {
            return Ok(n);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Writes all of `buf[range]` to a plain socket, giving the buffer back: while the core is
/// [`light`], first with a non-blocking `send`, then the rest (if any) through the runtime's
/// write; under load, through the runtime's write alone.
pub(crate) async fn write_all(
    s: &mut TcpStream,
    buf: Vec<u8>,
    mut range: Range<usize>,
) -> (io::Result<()>, Vec<u8>) {
    if range.is_empty() {
        return (Ok(()), buf);
    }
    if light() {
        let now = buf.get(range.clone()).unwrap_or_default();
        match send_now(s, now) {
            Ok(n) if n >= now.len() => return (Ok(()), buf),
            Ok(n) => range.start += n,
            Err(e) => return (Err(e), buf),
        }
    }
    let (r, slice) = s.write_all(monoio::buf::IoBuf::slice(buf, range)).await;
    (r.map(|_| ()), slice.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_counts_while_alive_and_light_needs_io_uring() {
        set_uring(false);
        assert!(!light());
        set_uring(true);
        assert!(light());
        let held: Vec<InFlight> = (0..LIGHT_MAX).map(|_| InFlight::begin()).collect();
        assert!(light());
        let one_more = InFlight::begin();
        assert!(!light());
        drop(one_more);
        assert!(light());
        drop(held);
        assert_eq!(IN_FLIGHT.with(Cell::get), 0);
        set_uring(false);
    }
}
