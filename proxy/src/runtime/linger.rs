//! The lingering close (nginx's `lingering_close`). A connection answered before its request
//! was read (413, 414, 431, 408, 400, 401/403 with a body) must not simply be closed: a socket
//! closed with unread input makes the kernel send a reset, and a client still writing its body
//! (an async HTTP client writes all of it before reading) then sees "connection reset" in
//! place of the answer, which the reset may have destroyed in its receive buffer. So the write
//! side is shut (after a TLS close_notify), what the client still sends is read and dropped,
//! and the socket closes once the client closes or a bound passes: `linger_time` in all,
//! `linger_timeout` without a byte, [`MAX_BYTES`] dropped, or a second into a shutdown. No
//! pooled buffer is held: the wait is for readiness, and the reads go into a stack buffer and
//! are dropped at once.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

use crate::control::stats::Counter;
use crate::runtime::core::Core;
use crate::runtime::SHUTDOWN;
use crate::tls::Conn;

/// Most bytes a lingering close reads and drops before it gives up on the client.
pub(crate) const MAX_BYTES: usize = 64 << 20;

/// How much longer a linger may go on once a shutdown has begun.
const AT_SHUTDOWN: Duration = Duration::from_secs(1);

/// Bytes asked of the kernel per read while lingering (on the stack, dropped at once).
const READ: usize = 16 * 1024;

/// How a lingering close ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lingered {
    /// The client closed (or reset) its side: nothing it sent was left unread.
    ClientClosed,
    /// A bound passed first; the socket closed with the client perhaps still sending.
    Cut,
}

/// Closes `conn` lingering (see the module comment), counted in `lingering_closes` and, when a
/// bound ended it, `lingers_cut`.
pub(crate) async fn close(core: &Core, conn: Conn) {
    let cfg = &core.shared.config.proxy;
    let how = linger(conn, cfg.linger_time, cfg.linger_timeout).await;
    let mut rec = core.rec.borrow_mut();
    rec.count(Counter::LingeringCloses, 1);
    if how == Lingered::Cut {
        rec.count(Counter::LingersCut, 1);
    }
}

/// Shuts the write side of `conn`, then reads and drops its input until the peer closes, or
/// `total` passes, or `quiet` passes without a byte, or [`MAX_BYTES`] were dropped. In a
/// shutdown it lingers [`AT_SHUTDOWN`] more at most, so it does not hold up the exit.
pub(crate) async fn linger(conn: Conn, total: Duration, quiet: Duration) -> Lingered {
    let mut deadline = Instant::now() + total;
    let tcp = match monoio::time::timeout_at(deadline, conn.into_tcp()).await {
        Ok(Ok(tcp)) => tcp,
        // The connection failed: nothing is left to protect.
        Ok(Err(_)) => return Lingered::ClientClosed,
        Err(_) => return Lingered::Cut,
    };
    shut_write(&tcp);
    let mut dropped = 0usize;
    let mut silent_until = Instant::now() + quiet;
    loop {
        let now = Instant::now();
        if SHUTDOWN.load(Ordering::Relaxed) {
            deadline = deadline.min(now + AT_SHUTDOWN);
        }
        let until = deadline.min(silent_until);
        if now >= until {
            return Lingered::Cut;
        }
        // In slices of a second at most, so a shutdown is noticed.
        let slice = (until - now).min(Duration::from_secs(1));
        match monoio::time::timeout(slice, tcp.readable(false)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Lingered::ClientClosed,
            Err(_) => continue,
        }
        let (n, eof) = drop_input(&tcp, MAX_BYTES.saturating_sub(dropped));
        if eof {
            return Lingered::ClientClosed;
        }
        if n > 0 {
            dropped += n;
            silent_until = Instant::now() + quiet;
        }
        if dropped >= MAX_BYTES {
            return Lingered::Cut;
        }
    }
}

/// Sends the FIN: the client sees the answer end, and a well-behaved one closes its side.
fn shut_write(tcp: &TcpStream) {
    // SAFETY: shutdown on a valid, owned socket fd; it only changes the socket's state.
    #[allow(unsafe_code)]
    unsafe {
        libc::shutdown(tcp.as_raw_fd(), libc::SHUT_WR);
    }
}

/// Reads and drops, without waiting, up to `budget` bytes the socket holds. Returns the bytes
/// dropped and whether the peer closed (EOF) or the socket failed.
fn drop_input(tcp: &TcpStream, budget: usize) -> (usize, bool) {
    let mut buf = [0u8; READ];
    let mut dropped = 0usize;
    while dropped < budget {
        // SAFETY: a non-blocking recv on a valid fd into a stack buffer of `buf.len()` bytes.
        #[allow(unsafe_code)]
        let n = unsafe {
            libc::recv(
                tcp.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return (dropped, true),
            n if n > 0 => dropped += n.unsigned_abs(),
            _ => match io::Error::last_os_error().kind() {
                io::ErrorKind::WouldBlock => return (dropped, false),
                io::ErrorKind::Interrupted => {}
                _ => return (dropped, true),
            },
        }
    }
    (dropped, false)
}
