//! A client connection's life: the TLS handshake (bounded like a slow head), then requests
//! one after another through `data_path::handle_request`, and between them the wait for the
//! next one: for a connection whose requests follow each other closely, a short hot wait with
//! a buffer lent to the kernel, then parking with no task and no buffer (see `park.rs`); one
//! that idles between requests (an agent thinking between tool calls) parks at once. Buffers
//! go back to the core's free lists whenever the connection is idle.

use std::cell::RefCell;
use std::future::Future as _;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::control::stats::Counter;
use crate::data_path::request::{ClientConn, Next};
use crate::runtime::core::Core;
use crate::runtime::park::{self, IdleSet, Woke};
use crate::runtime::reuse::Reused;
use crate::runtime::shutdown::ShutdownSignal;
use crate::runtime::timer::Timer;
use crate::runtime::{proxy_protocol, spawn_client, ClientSlot, SHUTDOWN};
use crate::tls::Conn;

/// How a connection came to its task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arrival {
    /// Just accepted.
    Accepted,
    /// Parked, and now readable: it had been idle for `idle` since its last request ended.
    Woken { idle: Duration },
}

/// Serves a client connection until it closes or idles; an idle one is parked, its task ends.
/// TLS connections shake hands first (bounded like a slow head); they are never parked (rustls
/// may hold decrypted bytes).
pub(crate) async fn serve_client(
    core: Rc<Core>,
    mut stream: TcpStream,
    peer: SocketAddr,
    mut client: ClientSlot,
    arrival: Arrival,
) {
    // A trusted balancer's PROXY header names the peer (a woken connection read it before).
    let (peer, mut first) =
        if matches!(arrival, Arrival::Accepted) && proxy_protocol::expected(&core, peer) {
            // Boxed: only these connections carry the header reader's state.
            let header = proxy_protocol::accept(&core, &mut stream, peer, &mut client);
            match Box::pin(header).await {
                Some(x) => x,
                None => return,
            }
        } else {
            (peer, Vec::new())
        };
    let conn = match &core.shared.tls {
        Some(tls) if matches!(arrival, Arrival::Accepted) => {
            let timeout = core.shared.config.proxy.header_timeout;
            let accepted = Box::pin(monoio::time::timeout(
                timeout,
                Conn::accept(stream, tls.config(), std::mem::take(&mut first)),
            ))
            .await;
            match accepted {
                Ok(Ok(conn)) => Some(conn),
                Ok(Err(e)) => {
                    // Plain HTTP, garbage, an unknown client CA: counted and closed.
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    core.rec.borrow_mut().count(Counter::TlsHandshakeErrors, 1);
                    None
                }
                Err(_) => {
                    core.rec.borrow_mut().count(Counter::SlowClients, 1);
                    None
                }
            }
        }
        _ => Some(Conn::Plain(stream)),
    };
    let Some(conn) = conn else {
        return;
    };
    // A TLS client that chose HTTP/2 by ALPN.
    let conn = match conn.into_h2() {
        Ok((tcp, tls, pending)) => {
            let io = crate::h2::io::TlsIo::new(tcp, tls, pending);
            let t = crate::h2::io::Transport::Tls(Box::new(io));
            Box::pin(crate::h2::serve(core, t, Vec::new(), peer, true)).await;
            return;
        }
        Err(conn) => conn,
    };
    serve_connection(core, conn, peer, client, arrival, first).await;
}

/// Wakes parked connections that turned readable (each handed to a warm task, or else given a
/// new one) and closes those idle past `client_idle_timeout` when one may be due (all of them
/// on shutdown, then it ends).
/// Nothing else wakes it: an idle worker sleeps. It holds no per-core state between wake-ups
/// (`newest` gives the current one), so a reload's old state is not kept alive here.
pub(crate) async fn park_loop(park: Rc<IdleSet>, newest: impl Fn() -> Option<Rc<Core>>) {
    let mut ready = Vec::new();
    let mut shutdown = pin!(ShutdownSignal::new());
    let mut sweep = Timer::default();
    loop {
        let woke = park.wait(&mut ready, shutdown.as_mut(), &mut sweep).await;
        let core = newest();
        let now = Instant::now();
        for w in ready.drain(..) {
            // With no state at all (the worker is going away) they close.
            if let Some(core) = &core {
                let Some(w) = park.warm.hand(w) else {
                    continue;
                };
                let p = w.parked;
                let idle = now.saturating_duration_since(p.since);
                let fut = serve_client(
                    core.clone(),
                    p.stream,
                    p.peer,
                    p.client,
                    Arrival::Woken { idle },
                );
                spawn_client(core.clone(), fut);
            }
        }
        match woke {
            Woke::Shutdown => {
                // Dropping them closes their sockets and releases their slots; the warm tasks
                // end. Nothing parks after this: a connection checks the flag first.
                park.warm.release_all();
                park.expire(Duration::ZERO, &mut ready);
                ready.clear();
                return;
            }
            Woke::Sweep => {
                let idle = core.map_or(Duration::ZERO, |c| {
                    c.shared.config.proxy.client_idle_timeout
                });
                park.expire(idle, &mut ready);
                ready.clear();
            }
            Woke::Ready | Woke::Rearm => {}
        }
        // A burst (thousands woken or swept at once) leaves no large list behind.
        if ready.capacity() > READY_KEEP {
            ready = Vec::new();
        }
    }
}

/// The most wake-ups [`park_loop`]'s list keeps room for between batches.
const READY_KEEP: usize = 256;

/// Serves requests on a connection until it closes or, a plain one, goes idle between
/// requests: then it is parked, and this task waits among the core's warm ones
/// ([`park::WarmPool`]) to serve the next parked connection that wakes (the same loop, with no
/// new task), or ends when enough wait already. `first`: bytes of the first request already
/// read (after a PROXY protocol header).
///
/// One async function on purpose: the per-connection part awaited as a future of its own was
/// moved into place for every connection the task serves (measured with callgrind, +100 to
/// +500 instructions per paced call); the steps without an await are plain functions instead
/// ([`open`], [`settle`], [`resume`]).
async fn serve_connection(
    mut core: Rc<Core>,
    mut stream: Conn,
    mut peer: SocketAddr,
    mut client: ClientSlot,
    mut arrival: Arrival,
    mut first: Vec<u8>,
) {
    let mut canceller = Some(Canceller::new());
    // The session-id memo of the connection this task served last: it carries over when the
    // same connection is handed back (see `open_memo`); any other starts with an empty one.
    let mut memo = crate::session::MemoSlot::default();
    // This task's place among the warm ones, made when it first waits there.
    let mut waiter: Option<Rc<park::Waiter>> = None;
    // The hot wait's timer, moved from one wait to the next rather than made anew (`timer.rs`),
    // for every connection this task serves.
    let mut hot_timer = Timer::default();
    loop {
        // One connection: its state ends with this block, before the wait below (it may hold
        // what the configuration it was served under held).
        let (s, since) = {
            let mut c = ClientConn::new(stream, peer);
            open(&core, &mut c, &mut memo, &mut first);
            // Requests served on this connection: after its first one a plain connection parks when
            // idle (before it, it waits for readiness in its task).
            let mut woken = matches!(arrival, Arrival::Woken { .. });
            let mut served: u32 = u32::from(woken);
            // How long the connection waits for its next request with a read buffer lent to the
            // kernel before it parks, if at all ([`hot_wait`]): a new one never (one that sends a
            // single request and goes quiet lends no buffer even for a hot period; measured, with
            // 10 000 such connections the transient buffers cost ~0.2 KiB each); a woken one from
            // the gap it just idled. One that idled long parks right after its answer: its hot wait
            // would only expire, costing a timer, a wake-up and a cancelled read per request (an
            // agent thinking between tool calls).
            let hot = match arrival {
                Arrival::Woken { idle } => hot_wait(idle),
                Arrival::Accepted => None,
            };
            let end = loop {
                if woken {
                    // A parked connection that turned readable: its request (or EOF) is waiting,
                    // and the request path reads it into this buffer.
                    woken = false;
                    c.req.buf = core.take_buf();
                } else if c.req.buf.is_empty() {
                    let core = &core;
                    // Between requests: hand every buffer back.
                    give_back(core, &mut c);
                    // Boxed for the same reason as the request below: the hot wait's I/O and timer
                    // state would otherwise sit in every idle connection's task.
                    let waited = match hot {
                        Some(wait) => {
                            let t = &mut hot_timer;
                            Reused::new(|| wait_request(core, &mut c, &mut canceller, t, wait))
                                .await
                        }
                        None => Wait::Idle,
                    };
                    match waited {
                        Wait::Bytes => {}
                        Wait::Idle if served > 0 && matches!(c.stream, Conn::Plain(_)) => {
                            // Idle between requests: the connection is parked with no task (see
                            // `park.rs`), and served again by a warm or new task when it turns
                            // readable.
                            let now = crate::runtime::clock::now();
                            // Idle since its answer: the hot wait (if any) was part of the gap.
                            break End::Park(hot.and_then(|w| now.checked_sub(w)).unwrap_or(now));
                        }
                        Wait::Idle => {
                            // A new connection (or a TLS one): wait for a request holding no
                            // buffer. Boxed: the timer and poll state then live only while it
                            // idles.
                            let cfg = &core.shared.config.proxy;
                            if !Box::pin(wait_idle(cfg.client_idle_timeout, &mut c.stream)).await {
                                break End::Close;
                            }
                            c.req.buf = core.take_buf();
                        }
                        Wait::Closed => break End::Close,
                    }
                }
                if core.stale() || core.next.borrow().is_some() {
                    // A reload happened: this and later requests use the new configuration.
                    core = core.latest();
                }
                let core = &core;
                if c.req.head.headers.capacity() == 0 {
                    c.req.head.headers = core.take_headers();
                }
                if served == 0
                    && core.shared.config.proxy.http2.enabled
                    && matches!(c.stream, Conn::Plain(_))
                    && Box::pin(crate::h2::sniff_preface(core, &mut c)).await
                {
                    // h2c with prior knowledge: the connection is HTTP/2's from here on.
                    break End::H2(std::mem::take(&mut c.req.buf));
                }
                served = served.saturating_add(1);
                // Boxed so that an idle connection's task holds only this loop's small state, not
                // the request path's (about 3 KiB), in a block the core reuses from one request to
                // the next (`reuse`): idle connections near nginx's footprint.
                match Reused::new(|| crate::data_path::handle_request(core, &mut c)).await {
                    Next::KeepAlive if !SHUTDOWN.load(Ordering::Relaxed) => {}
                    Next::Linger => break End::Linger,
                    _ => break End::Close,
                }
            };
            give_back(&core, &mut c);
            match settle(&core, c.stream, end, peer) {
                Settled::Park(s, since) => {
                    memo = c.session_memo;
                    (s, since)
                }
                Settled::Close => return,
                Settled::Then(last) => return last.await,
            }
        };
        // Parked, the connection keeps its slot; if it cannot be, both drop here.
        let timeout = core.shared.config.proxy.client_idle_timeout;
        let set = core.park.clone();
        let Some(ticket) = set.park(s, peer, client, since, timeout) else {
            return;
        };
        // Waiting, the task holds no per-core state (a reload's old one is not kept alive).
        let states = core.states.clone();
        drop(core);
        let w = waiter.get_or_insert_with(Rc::default);
        let Some(next) = set.warm.wait(w, ticket).await else {
            return;
        };
        let Some(newest) = resume(&states, &next, ticket, &mut memo) else {
            return;
        };
        core = newest;
        let p = next.parked;
        let idle = crate::runtime::clock::now().saturating_duration_since(p.since);
        (stream, peer, client) = (Conn::Plain(p.stream), p.peer, p.client);
        arrival = Arrival::Woken { idle };
    }
}

/// How a connection's request loop in [`serve_connection`] ended.
enum End {
    /// Idle between requests since then (a plain connection, after a request): it parks.
    Park(Instant),
    /// It closes (the client did, an error, a shutdown, or an answer that closes it).
    Close,
    /// Answered before its request was read: it closes lingering.
    Linger,
    /// It sent HTTP/2's preface (h2c with prior knowledge): served as HTTP/2 from here on,
    /// with what it has read so far.
    H2(Vec<u8>),
}

/// A connection's state as its first request (or its wait for one) begins: the session-id
/// memo of the connection this task served last (`memo`, see `open_memo`) and `first`, bytes of
/// a request already read (its buffer goes back to the core when there are none). In place:
/// the connection's state is large, and moving it costs a copy per connection.
#[inline(always)]
fn open(core: &Core, c: &mut ClientConn, memo: &mut crate::session::MemoSlot, first: &mut Vec<u8>) {
    c.session_memo = std::mem::take(memo);
    if matches!(c.stream, Conn::Plain(_)) && !first.is_empty() {
        c.req.buf = std::mem::take(first);
    } else {
        core.give_buf(std::mem::take(first));
    }
}

/// What becomes of a connection (`stream`, its buffers already back with the core) whose
/// request loop ended with `end`: a plain one idle between requests parks (unless a shutdown
/// began); one that lingers or turned HTTP/2 has one last (boxed) future to run; any other
/// closes.
#[inline(always)]
fn settle(core: &Rc<Core>, stream: Conn, end: End, peer: SocketAddr) -> Settled<'_> {
    match (end, stream) {
        (End::H2(first), Conn::Plain(s)) => {
            let t = crate::h2::io::Transport::Plain(Box::new(monoio_compat::StreamWrapper::new(s)));
            Settled::Then(Box::pin(crate::h2::serve(
                core.clone(),
                t,
                first,
                peer,
                false,
            )))
        }
        // Answered before its request was read: closed lingering, holding no buffer.
        (End::Linger, stream) => {
            Settled::Then(Box::pin(crate::runtime::linger::close(core, stream)))
        }
        (End::Park(since), Conn::Plain(s)) if !SHUTDOWN.load(Ordering::Relaxed) => {
            Settled::Park(s, since)
        }
        _ => Settled::Close,
    }
}

/// See [`settle`].
enum Settled<'a> {
    Park(TcpStream, Instant),
    Close,
    Then(Pin<Box<dyn std::future::Future<Output = ()> + 'a>>),
}

/// The newest per-core state for the parked connection `next` a warm task was handed (none
/// when the worker is going away); a connection other than the one it parked (`parked`) starts
/// with an empty session-id memo.
#[inline(always)]
fn resume(
    states: &RefCell<Vec<Rc<Core>>>,
    next: &park::Woken,
    parked: park::Ticket,
    memo: &mut crate::session::MemoSlot,
) -> Option<Rc<Core>> {
    let newest = states.borrow().last().cloned()?;
    if next.ticket != parked {
        // Another connection: nothing of the last one's carries over.
        *memo = crate::session::MemoSlot::default();
    }
    Some(newest.latest())
}

/// How long a connection that just finished a request keeps a read buffer lent to the kernel
/// waiting for its next request, before it idles holding none, given the gap before the
/// request that woke it: twice that gap, at least [`HOT_WAIT_MIN`], and none at all (it parks at
/// once) past [`HOT_WAIT_MAX`]. A direct read is one io_uring operation; readiness then read is
/// two (measured: about 1 µs of CPU per request on this machine's loopback), so hot keep-alive
/// connections read directly. Twice the gap, not a fixed wait: a client that sends at a steady
/// interval just under a fixed wait (10 requests a second against 100 ms) flipped between
/// waiting hot and parking on a few ms of jitter, a park and a wake-up every other request.
fn hot_wait(gap: Duration) -> Option<Duration> {
    let wait = gap.saturating_mul(2).max(HOT_WAIT_MIN);
    (wait <= HOT_WAIT_MAX).then_some(wait)
}

/// The shortest hot wait (connections whose requests follow each other closely).
const HOT_WAIT_MIN: Duration = Duration::from_millis(100);

/// The longest hot wait: a connection whose gap exceeds half of it parks right after each
/// answer (an agent calling a tool every 250 ms and slower holds no buffer between calls).
const HOT_WAIT_MAX: Duration = Duration::from_millis(250);

/// Hands a connection's buffers back to the core (an idle connection holds none).
pub(crate) fn give_back(core: &Core, c: &mut ClientConn) {
    core.give_buf(std::mem::take(&mut c.req.buf));
    core.give_buf(std::mem::take(&mut c.req.decoded));
    core.give_buf(std::mem::take(&mut c.pending));
    core.give_buf(std::mem::take(&mut c.out));
    core.give_buf(std::mem::take(&mut c.ubuf));
    core.give_headers(std::mem::take(&mut c.req.head.headers));
}

/// Waits, holding no buffer, until the connection turns readable (`true`), or it closes,
/// idles past `idle_timeout`, or a shutdown begins (`false`).
async fn wait_idle(idle_timeout: Duration, stream: &mut Conn) -> bool {
    let mut readable = std::pin::pin!(stream.readable());
    let mut shutdown = ShutdownSignal::new();
    let either = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = readable.as_mut().poll(cx) {
            return Poll::Ready(r.is_ok());
        }
        if Pin::new(&mut shutdown).poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    });
    monoio::time::timeout(idle_timeout, either)
        .await
        .unwrap_or(false)
}

enum Wait {
    /// Request bytes are in `c.req.buf`.
    Bytes,
    /// Nothing arrived within the hot wait; no buffer is held.
    Idle,
    /// The client closed the connection or it failed.
    Closed,
}

/// Waits up to `hot_wait` for the next request with a pooled buffer lent to a cancelable
/// read. On timeout the read is cancelled and awaited, so its buffer comes back and bytes that
/// raced the cancellation are kept, never lost.
async fn wait_request(
    core: &Core,
    c: &mut ClientConn,
    canceller: &mut Option<Canceller>,
    timer: &mut Timer,
    hot_wait: Duration,
) -> Wait {
    // TLS connections wait for readiness (rustls may hold decrypted bytes already).
    let Conn::Plain(stream) = &mut c.stream else {
        return Wait::Idle;
    };
    let Some(cn) = canceller.take() else {
        return Wait::Closed;
    };
    let mut buf = core.take_buf();
    buf.clear();
    let read = stream.cancelable_read(buf.slice_mut(0..), cn.handle());
    let mut read = std::pin::pin!(read);
    let deadline = crate::runtime::clock::monoio_now() + hot_wait;
    let (r, slice) = match timer.before(deadline, read.as_mut()).await {
        Some(done) => {
            *canceller = Some(cn);
            done
        }
        None => {
            *canceller = Some(cn.cancel());
            read.await
        }
    };
    let buf = slice.into_inner();
    match r {
        Ok(n) if n > 0 => {
            c.req.buf = buf;
            Wait::Bytes
        }
        Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {
            core.give_buf(buf);
            Wait::Idle
        }
        _ => {
            core.give_buf(buf);
            Wait::Closed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn hot_wait_is_twice_the_gap_within_its_bounds() {
        // Back to back: the shortest wait.
        assert_eq!(hot_wait(Duration::ZERO), Some(HOT_WAIT_MIN));
        assert_eq!(hot_wait(ms(30)), Some(HOT_WAIT_MIN));
        // A client sending every 100 ms waits hot for 200 ms, so a few ms of jitter around its
        // interval no longer flip it between waiting hot and parking.
        assert_eq!(hot_wait(ms(99)), Some(ms(198)));
        assert_eq!(hot_wait(ms(101)), Some(ms(202)));
        assert_eq!(hot_wait(ms(125)), Some(HOT_WAIT_MAX));
        // An agent calling every 250 ms (or slower, or idle) parks right after each answer.
        assert_eq!(hot_wait(ms(126)), None);
        assert_eq!(hot_wait(ms(250)), None);
        assert_eq!(hot_wait(Duration::from_secs(3600)), None);
        assert_eq!(hot_wait(Duration::MAX), None);
    }
}
