//! HTTP/2 on the client side: h2c with prior knowledge on the plain listener (a connection
//! whose first bytes are the client preface) and ALPN `h2` on the TLS listener. The `h2`
//! crate speaks the protocol ([`io`] adapts monoio's sockets to it); each stream runs the
//! same data path as an HTTP/1.1 request ([`stream`]: the stream as the data path's client
//! connection), in a task of its own on the connection's core; backends stay HTTP/1.1.
//!
//! Limits per connection (`[proxy.http2]`): concurrent streams, header list size, HPACK
//! table size, flow-control windows, and the flood guard ([`guard`]).

pub(crate) mod guard;
pub(crate) mod io;
pub(crate) mod stream;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;

use crate::control::stats::Counter;
use crate::data_path::request::ClientConn;
use crate::runtime::core::Core;
use crate::runtime::{spawn_client, SHUTDOWN};
use crate::tls::Conn;

pub use guard::FloodLimits;
pub(crate) use guard::PREFACE;
pub use stream::{H2Stream, H2Wire};

/// `[proxy.http2]`: the HTTP/2 front and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Config {
    /// Serve HTTP/2 (h2c with prior knowledge, ALPN `h2` with TLS); on by default.
    pub enabled: bool,
    /// Streams a client may have open at once on one connection (SETTINGS).
    pub max_concurrent_streams: u32,
    /// Largest request header list accepted, in HPACK's accounting (SETTINGS).
    pub max_header_list_size: u32,
    /// The HPACK dynamic table the client's encoder may use (SETTINGS).
    pub header_table_size: u32,
    /// Each stream's receive window; the connection's is four times it.
    pub initial_window_size: u32,
    /// The flood guard's limits.
    pub floods: FloodLimits,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            enabled: true,
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            header_table_size: 4096,
            initial_window_size: 256 * 1024,
            floods: FloodLimits {
                max_resets_per_second: 100,
                max_continuation_frames: 4,
                max_pings_per_second: 20,
                max_settings_per_second: 20,
            },
        }
    }
}

/// A stream the client opened: its request and the handle its answer goes out on.
type Opened = (http::Request<RecvStream>, SendResponse<Bytes>);

/// What ended a wait of the connection driver.
enum Event {
    Accepted(Option<Result<Box<Opened>, h2::Error>>),
    Flood(guard::Flood),
    Tick,
}

/// Serves one HTTP/2 connection until it ends: `replay`, bytes already read from it (the
/// preface of an h2c connection). Returns once every stream has ended or the connection
/// failed.
pub(crate) async fn serve(
    core: Rc<Core>,
    transport: io::Transport,
    replay: Vec<u8>,
    peer: SocketAddr,
    tls: bool,
) {
    let cfg = core.shared.config.proxy.http2;
    let proxy = &core.shared.config.proxy;
    let (header_timeout, idle_timeout) = (proxy.header_timeout, proxy.client_idle_timeout);
    core.rec.borrow_mut().count(Counter::H2Connections, 1);
    let flood = Rc::new(Cell::new(None));
    let scan = guard::FrameScan::new(cfg.floods, Instant::now());
    let transport = Rc::new(RefCell::new(transport));
    let io = io::H2Io::new(transport.clone(), replay, scan, flood.clone());
    let mut b = h2::server::Builder::new();
    b.max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(cfg.max_header_list_size)
        .header_table_size(cfg.header_table_size)
        .initial_window_size(cfg.initial_window_size)
        .initial_connection_window_size(cfg.initial_window_size.saturating_mul(4))
        // h2's own count of streams reset before they were accepted never passes the guard's
        // count of RST_STREAM frames, which sees them first: a rapid reset is counted as one.
        .max_pending_accept_reset_streams(
            (cfg.floods.max_resets_per_second as usize).saturating_mul(2),
        );
    let mut conn = match monoio::time::timeout(header_timeout, b.handshake::<_, Bytes>(io)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            if let Some(f) = flood.get() {
                count_flood(&core, f, peer);
                linger(&core, transport).await;
            } else {
                tracing::debug!(%peer, error = %e, "HTTP/2 handshake failed");
                core.rec.borrow_mut().count(Counter::H2ProtocolErrors, 1);
            }
            return;
        }
        Err(_) => {
            core.rec.borrow_mut().count(Counter::SlowClients, 1);
            return;
        }
    };
    let mut idle_since = Instant::now();
    let mut going_away = false;
    // Ended by an error or a flood: input may be left unread.
    let mut failed = false;
    loop {
        let next = std::future::poll_fn(|cx| {
            if let Some(f) = flood.get() {
                return Poll::Ready(Event::Flood(f));
            }
            if let Poll::Ready(a) = conn.poll_accept(cx) {
                return Poll::Ready(Event::Accepted(a.map(|r| r.map(Box::new))));
            }
            match flood.get() {
                Some(f) => Poll::Ready(Event::Flood(f)),
                None => Poll::Pending,
            }
        });
        let event = monoio::time::timeout(Duration::from_millis(250), next)
            .await
            .unwrap_or(Event::Tick);
        match event {
            Event::Accepted(Some(Ok(opened))) => {
                let (req, respond) = *opened;
                core.rec.borrow_mut().count(Counter::H2Streams, 1);
                let core = if core.stale() || core.next.borrow().is_some() {
                    core.latest()
                } else {
                    core.clone()
                };
                spawn_client(core.clone(), serve_stream(core, req, respond, peer, tls));
            }
            Event::Accepted(Some(Err(e))) => {
                if let Some(f) = flood.get() {
                    // The guard saw it in the bytes that led h2 to its own refusal.
                    count_flood(&core, f, peer);
                } else if e.is_io() {
                    tracing::debug!(%peer, error = %e, "HTTP/2 connection failed");
                } else {
                    // h2's own guards (reset streams pending accept, CONTINUATION frames,
                    // header list size) and protocol errors end here.
                    tracing::debug!(%peer, error = %e, "HTTP/2 connection error");
                    core.rec.borrow_mut().count(Counter::H2ProtocolErrors, 1);
                }
                failed = true;
                break;
            }
            Event::Accepted(None) => break,
            Event::Flood(f) => {
                count_flood(&core, f, peer);
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                // GOAWAY goes out; nothing more is read.
                let closed = std::future::poll_fn(|cx| conn.poll_closed(cx));
                let _ = monoio::time::timeout(Duration::from_secs(1), closed).await;
                failed = true;
                break;
            }
            Event::Tick => {}
        }

        if conn.has_streams() {
            idle_since = Instant::now();
        }
        if !going_away && (SHUTDOWN.load(Ordering::Relaxed) || idle_since.elapsed() >= idle_timeout)
        {
            // GOAWAY: the streams under way finish, no new ones start.
            conn.graceful_shutdown();
            going_away = true;
        }
    }
    if failed {
        drop(conn);
        linger(&core, transport).await;
    }
}

/// After a flood or a protocol error: bytes left unread would make closing the socket send a
/// reset, which can destroy the GOAWAY in the client's receive buffer; so the connection
/// closes lingering, as an HTTP/1.1 one answered before its request was read.
async fn linger(core: &Core, transport: Rc<RefCell<io::Transport>>) {
    if let Ok(t) = Rc::try_unwrap(transport) {
        let tcp = t.into_inner().into_tcp();
        crate::runtime::linger::close(core, Conn::Plain(tcp)).await;
    }
}

fn count_flood(core: &Core, f: guard::Flood, peer: SocketAddr) {
    let counter = match f {
        guard::Flood::RapidReset => Counter::H2RapidResets,
        guard::Flood::Continuation => Counter::H2ContinuationFloods,
        guard::Flood::Ping => Counter::H2PingFloods,
        guard::Flood::Settings => Counter::H2SettingsFloods,
    };
    core.rec.borrow_mut().count(counter, 1);
    let what = "HTTP/2 flood: connection refused with GOAWAY (ENHANCE_YOUR_CALM)";
    let kind = match f {
        guard::Flood::RapidReset => "rapid reset",
        guard::Flood::Continuation => "CONTINUATION",
        guard::Flood::Ping => "PING",
        guard::Flood::Settings => "SETTINGS",
    };
    if crate::control::logs::first_in_window_info(what, kind, "") {
        tracing::info!(%peer, flood = kind, "{what}");
    }
}

/// Runs one stream through the data path.
async fn serve_stream(
    core: Rc<Core>,
    req: http::Request<RecvStream>,
    respond: SendResponse<Bytes>,
    peer: SocketAddr,
    tls: bool,
) {
    let (parts, body) = req.into_parts();
    let body = (!body.is_end_stream()).then_some(body);
    let s = H2Stream::h2(&parts, body, respond, tls, core.take_buf());
    crate::exchange::serve(&core, Conn::H2(Box::new(s)), peer).await;
}

/// Whether a new plain connection begins with the HTTP/2 client preface (h2c with prior
/// knowledge). Reads only while what arrived could still be the preface, so an HTTP/1.1
/// request costs no extra read: its first byte already differs. What was read stays in
/// `c.req.buf` either way.
pub(crate) async fn sniff_preface(core: &Core, c: &mut ClientConn) -> bool {
    let deadline = monoio::time::Instant::now() + core.shared.config.proxy.header_timeout;
    while c.req.buf.len() < PREFACE.len() && PREFACE.starts_with(&c.req.buf) {
        let buf = std::mem::take(&mut c.req.buf);
        let read = monoio::time::timeout_at(
            deadline,
            c.stream.read_more(buf, crate::data_path::READ_SIZE),
        );
        let Ok((r, buf)) = read.await else {
            return false;
        };
        c.req.buf = buf;
        if !matches!(r, Ok(n) if n > 0) {
            return false;
        }
    }
    c.req.buf.starts_with(PREFACE)
}
