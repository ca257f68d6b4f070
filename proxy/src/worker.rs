//! One worker per core: its own listener (SO_REUSEPORT), its own upstream keep-alive pools and
//! buffers, and nothing on the request path shared with other cores but read-only config.
//!
//! The path of one request: wait for the client socket to become readable (no buffer is lent
//! while a keep-alive connection idles), read and parse the head with `httparse`, read the body
//! (Content-Length or chunked, capped), parse the JSON-RPC envelope zero-copy, check the
//! 2026-07-28 `Mcp-Method`/`Mcp-Name` headers against it, open the sealed session id (or pick a
//! backend for a new session), write the request to a pooled upstream connection, then forward
//! the response head (sealing a new `Mcp-Session-Id`) and its body as it arrives: Content-Length
//! bodies by count, chunked bodies (SSE streams included) byte for byte, event by event.

use std::cell::RefCell;
use std::future::Future as _;
use std::io;
use std::io::Write;
use std::net::SocketAddr;
use std::ops::Range;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::{TcpListener, TcpStream};

use crate::balance::{self, CoreBalancer, GroupRuntime};
use crate::config::{
    Backend, Balance, ConcurrencyPer, Config, HashKey, SessionFailover, MAX_CONCURRENCY_RULES,
};
use crate::control::stats::{self, CoreRecorder, Counter, Gauge, Sample, StatsHub};
use crate::http::{self, ChunkedDecoder};
use crate::session::{SessionSealer, SCRATCH};
use crate::tls::Conn;

/// Set once a graceful shutdown has begun: listeners close, keep-alive connections close
/// after their current request, idle ones at once.
pub static SHUTDOWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// Client connections open in the whole process (shutdown waits for them).
pub static OPEN_CONNECTIONS: std::sync::atomic::AtomicUsize =
    std::sync::atomic::AtomicUsize::new(0);

/// What every worker shares: read-only after start.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// Seals and opens session ids.
    pub sealer: SessionSealer,
    /// Where every core's statistics are merged.
    pub hub: Arc<StatsHub>,
    /// Rate limits shared by every core (lock-free), when `[[limits]]` are configured.
    pub limits: Option<Arc<ratelimit::RateLimits>>,
    /// Keyed hash for caller identities (API keys are hashed, never stored).
    pub key_hasher: ratelimit::KeyHasher,
    /// Origin of the nanosecond clock the rate limits and balancers use.
    pub epoch: Instant,
    /// Per group: backend health (shared, lock-free) and the hash ring.
    pub groups: Arc<Vec<GroupRuntime>>,
    /// Initialize bodies and moved sessions, for `session_failover = "reinitialize"`.
    pub failover: Arc<crate::session::failover::FailoverStore>,
    /// Counters of the `[[concurrency]]` rules, in config order (lock-free, every core).
    pub concurrency: Vec<Arc<ratelimit::ConcurrencyLimit>>,
    /// Per group: the 2024-11-05 transport bridge for old clients (`legacy_sse = true`).
    pub legacy_fronts: Vec<Option<SocketAddr>>,
    /// Open client connections per IP address (lock-free, every core).
    pub per_ip: Arc<ratelimit::ConcurrencyLimit>,
    /// TLS termination for clients (`[proxy.tls]`), its config read once per handshake.
    pub tls: Option<Arc<crate::tls::TlsTerminator>>,
}

const BUF_SIZE: usize = 4 * 1024;
/// Pooled upstream connections idle at least this long are checked with a peek before reuse.
const PEEK_AFTER_IDLE: Duration = Duration::from_millis(500);
/// Free buffers kept per core (16 KiB each): enough for the connections busy at once.
const MAX_FREE_BUFS: usize = 128;

struct IdleConn {
    stream: Conn,
    since: Instant,
}

/// Per-core state. Lives in an `Rc`: never crosses threads.
struct Core {
    shared: Arc<Shared>,
    /// `pools[group][backend]`: idle keep-alive connections, most recent last.
    pools: Vec<Vec<RefCell<Vec<IdleConn>>>>,
    /// Backend choice for new sessions and stateless requests (this core's loads).
    bal: CoreBalancer,
    /// Free I/O buffers, so idle connections hold none and busy ones allocate none.
    bufs: RefCell<Vec<Vec<u8>>>,
    /// Free header-range tables, so an idle connection holds none either.
    header_tables: RefCell<Vec<HeaderTable>>,
    /// This core's statistics since the last flush to the hub.
    rec: RefCell<CoreRecorder>,
    /// JSON access log lines not yet written, and where they go (off by default).
    access_log: Option<RefCell<AccessLog>>,
    /// This core's index (request ids in the access log).
    index: usize,
    /// Set when a reload has built a newer state: connections move to it at their next
    /// request, and connections to backends are no longer pooled here.
    next: RefCell<Option<Rc<Core>>>,
    /// Where reloads publish configurations, and the generation this state was built for.
    live: Arc<crate::control::reload::Live>,
    generation: u64,
    /// Every state of this worker still in use (the flusher's list).
    states: Rc<RefCell<Vec<Rc<Core>>>>,
    /// This worker's idle keep-alive connections, parked with no task.
    park: Rc<crate::runtime::park::IdleSet>,
}

/// A core's buffered JSON access log: lines are written once a second or every 64 KiB, one
/// write each, with `O_APPEND`, so cores never interleave inside a line.
struct AccessLog {
    buf: Vec<u8>,
    out: Option<std::fs::File>,
    seq: u64,
}

impl AccessLog {
    fn open(target: &str) -> io::Result<AccessLog> {
        let out = if target == "-" {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        Ok(AccessLog {
            buf: Vec::with_capacity(64 * 1024),
            out,
            seq: 0,
        })
    }

    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        let r = match &mut self.out {
            Some(f) => f.write_all(&self.buf),
            None => io::stderr().write_all(&self.buf),
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "access log write failed");
        }
        self.buf.clear();
    }
}

/// Byte ranges of one request's header names and values.
type HeaderTable = Vec<(Range<usize>, Range<usize>)>;

impl Core {
    fn take_headers(&self) -> HeaderTable {
        self.header_tables
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(16))
    }

    fn give_headers(&self, mut t: HeaderTable) {
        if t.capacity() == 0 {
            return;
        }
        t.clear();
        let mut tables = self.header_tables.borrow_mut();
        if tables.len() < MAX_FREE_BUFS {
            tables.push(t);
        }
    }

    fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    fn give_buf(&self, mut b: Vec<u8>) {
        if b.capacity() == 0 {
            return;
        }
        b.clear();
        if b.capacity() > 4 * BUF_SIZE {
            b.shrink_to(BUF_SIZE);
        }
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_FREE_BUFS {
            bufs.push(b);
        }
    }

    /// A pooled connection that is still open, or a new one.
    async fn upstream(&self, group: usize, backend: usize) -> io::Result<(Conn, bool)> {
        let cfg = &self.shared.config.proxy;
        if let Some(pool) = self.pools.get(group).and_then(|g| g.get(backend)) {
            loop {
                let Some(mut c) = pool.borrow_mut().pop() else {
                    break;
                };
                self.rec.borrow_mut().gauge(Gauge::UpstreamIdle, -1);
                let idle = c.since.elapsed();
                // The peek costs a syscall (about 2.5 µs per request measured here), so only
                // connections idle long enough for a backend to have closed them are checked.
                if idle < cfg.upstream_idle_timeout
                    && (idle < PEEK_AFTER_IDLE || still_open(&mut c.stream))
                {
                    return Ok((c.stream, true));
                }
            }
        }
        let b = self
            .shared
            .config
            .servers
            .get(group)
            .and_then(|g| g.backends.get(backend))
            .ok_or_else(|| io::Error::other("no such backend"))?;
        // The connect and, for https backends, the TLS handshake share the connect timeout.
        let connect = async {
            let s = TcpStream::connect_addr(b.addr).await?;
            let _ = s.set_nodelay(true);
            match &b.tls {
                None => Ok(Conn::Plain(s)),
                Some(tls) => Conn::connect(s, tls).await,
            }
        };
        let s = match monoio::time::timeout(cfg.connect_timeout, connect).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")),
        };
        self.rec.borrow_mut().count(Counter::UpstreamConnects, 1);
        Ok((s, false))
    }

    fn put_upstream(&self, group: usize, backend: usize, mut stream: Conn) {
        if self.next.borrow().is_some() {
            // Replaced by a reload: the connection closes rather than idle in a dead pool.
            return;
        }
        let max = self.shared.config.proxy.upstream_max_idle;
        if !stream.is_clean() {
            return;
        }
        if let Some(pool) = self.pools.get(group).and_then(|g| g.get(backend)) {
            let mut p = pool.borrow_mut();
            if p.len() < max {
                p.push(IdleConn {
                    stream,
                    since: Instant::now(),
                });
                self.rec.borrow_mut().gauge(Gauge::UpstreamIdle, 1);
            }
        }
    }
}

/// Whether an idle pooled socket is still open: a non-blocking peek sees neither EOF nor
/// unexpected bytes. Costs one syscall; saves sending a request into a socket the backend
/// already closed (which for a `tools/call` could not be safely retried).
fn still_open(s: &mut Conn) -> bool {
    use std::os::fd::AsRawFd;
    if !s.is_clean() {
        return false;
    }
    let s = s.tcp();
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd into a 1-byte stack buffer.
    #[allow(unsafe_code)]
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
}

impl Core {
    /// This core's state for `shared`. After a reload, `prev` (the state it replaces) hands
    /// over its free buffers and its idle upstream connections to backends still listed at the
    /// same address.
    fn new(
        live: Arc<crate::control::reload::Live>,
        states: Rc<RefCell<Vec<Rc<Core>>>>,
        park: Rc<crate::runtime::park::IdleSet>,
        index: usize,
        prev: Option<&Core>,
    ) -> Rc<Core> {
        let generation = live.generation();
        let shared = live.load();
        let pools: Vec<Vec<RefCell<Vec<IdleConn>>>> = shared
            .config
            .servers
            .iter()
            .map(|g| {
                g.backends
                    .iter()
                    .map(|_| RefCell::new(Vec::new()))
                    .collect()
            })
            .collect();
        let mut bufs = Vec::new();
        let mut header_tables = Vec::new();
        if let Some(p) = prev {
            bufs = std::mem::take(&mut *p.bufs.borrow_mut());
            header_tables = std::mem::take(&mut *p.header_tables.borrow_mut());
            let mut moved = 0i64;
            for (g, og) in shared.config.servers.iter().zip(&pools) {
                let Some((pgi, pg)) = p
                    .shared
                    .config
                    .servers
                    .iter()
                    .enumerate()
                    .find(|(_, o)| o.name == g.name)
                else {
                    continue;
                };
                for (b, pool) in g.backends.iter().zip(og) {
                    let same = pg
                        .backends
                        .iter()
                        .position(|o| o.tag == b.tag && o.addr == b.addr);
                    if let Some(old) = same.and_then(|pbi| p.pools.get(pgi)?.get(pbi)) {
                        let conns = std::mem::take(&mut *old.borrow_mut());
                        moved += conns.len() as i64;
                        *pool.borrow_mut() = conns;
                    }
                }
            }
            // The rest close; the idle gauge follows what stays pooled.
            let mut closed = 0i64;
            for g in &p.pools {
                for pool in g {
                    closed += pool.borrow_mut().drain(..).count() as i64;
                }
            }
            p.rec
                .borrow_mut()
                .gauge(Gauge::UpstreamIdle, -(closed + moved));
        }
        let access_log = match shared.config.proxy.access_log.as_deref() {
            None => None,
            Some(t) => match AccessLog::open(t) {
                Ok(l) => Some(RefCell::new(l)),
                Err(e) => {
                    tracing::error!(path = t, error = %e, "cannot open the access log");
                    None
                }
            },
        };
        let rec = CoreRecorder::for_config(&shared.config);
        let core = Core {
            pools,
            bal: CoreBalancer::new(&shared.config, index, balance::now_ns(shared.epoch)),
            bufs: RefCell::new(bufs),
            header_tables: RefCell::new(header_tables),
            access_log,
            index,
            rec: RefCell::new(rec),
            shared,
            next: RefCell::new(None),
            live,
            generation,
            states: states.clone(),
            park,
        };
        if prev.is_some() {
            let n: i64 = core
                .pools
                .iter()
                .flatten()
                .map(|p| p.borrow().len() as i64)
                .sum();
            core.rec.borrow_mut().gauge(Gauge::UpstreamIdle, n);
        }
        let core = Rc::new(core);
        states.borrow_mut().push(core.clone());
        core
    }

    /// Whether a reload has published a configuration newer than this state's: one atomic
    /// load, per request and per accepted connection.
    #[inline]
    fn stale(&self) -> bool {
        self.generation != self.live.generation()
    }

    /// The newest state: `self`, the one a reload put after it, or (when the configuration
    /// moved on since) a new one built now.
    fn latest(self: &Rc<Core>) -> Rc<Core> {
        let mut c = self.clone();
        loop {
            let next = c.next.borrow().clone();
            match next {
                Some(n) => c = n,
                None => break,
            }
        }
        if c.stale() {
            let new = Core::new(
                c.live.clone(),
                c.states.clone(),
                c.park.clone(),
                c.index,
                Some(&c),
            );
            *c.next.borrow_mut() = Some(new.clone());
            return new;
        }
        c
    }
}

/// Runs one worker's accept loop forever.
pub async fn run_worker(
    live: Arc<crate::control::reload::Live>,
    listener: std::net::TcpListener,
    index: usize,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    // Every state still in use (a reload leaves the old one to the requests under way).
    let cores: Rc<RefCell<Vec<Rc<Core>>>> = Rc::new(RefCell::new(Vec::new()));
    let park = Rc::new(crate::runtime::park::IdleSet::new()?);
    let mut core = Core::new(live, cores.clone(), park, index, None);
    monoio::spawn(park_loop(core.clone()));
    // Once a second, fold this core's statistics into the hub (the only cross-core lock,
    // never taken on the request path). A replaced state is flushed one last time and
    // dropped once nothing else holds it.
    let flushed = cores.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_secs(1)).await;
            let now = Instant::now();
            flushed.borrow_mut().retain(|c| {
                c.rec.borrow_mut().flush_into(&c.shared.hub, now);
                if let Some(l) = &c.access_log {
                    l.borrow_mut().flush();
                }
                c.next.borrow().is_none() || Rc::strong_count(c) > 1
            });
        }
    });
    let mut canceller = Canceller::new();
    loop {
        // Accept, waking every 250 ms to notice a shutdown. The accept is cancelled and then
        // awaited, so a connection that raced the cancellation is still served, never lost.
        let accepted = {
            let accept = listener.cancelable_accept(canceller.handle());
            let mut accept = std::pin::pin!(accept);
            match ready_within(accept.as_mut(), Duration::from_millis(250)).await {
                Some(r) => r,
                None => {
                    canceller = canceller.cancel();
                    accept.await
                }
            }
        };
        if core.stale() || core.next.borrow().is_some() {
            // A reload: this core's new state (connections move to it at their next
            // request, see `Core::latest`).
            core = core.latest();
        }
        if SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed) {
            // Stop accepting: dropping the listener closes it, so the kernel sends new
            // connections to no one (clients see a refused connection, not a hang).
            drop(listener);
            if let Ok((stream, peer)) = accepted {
                // One that raced the shutdown still gets served (with connection: close).
                OPEN_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                core.rec.borrow_mut().gauge(Gauge::ClientConnections, 1);
                serve_client(core.clone(), stream, peer, None, false).await;
            }
            // Let the open connections finish; the process exits when they have.
            std::future::pending::<()>().await;
            return Ok(());
        }
        match accepted {
            Ok((stream, peer)) => {
                // Connection limits, in all and per client address: past them the connection
                // is closed at once (counted), before any byte is read.
                let cfg = &core.shared.config.proxy;
                if OPEN_CONNECTIONS.load(std::sync::atomic::Ordering::Relaxed)
                    >= cfg.max_connections
                {
                    core.rec.borrow_mut().count(Counter::ConnectionsRefused, 1);
                    continue;
                }
                let ip_key = match peer.ip() {
                    std::net::IpAddr::V4(a) => core.shared.key_hasher.hash_key(&a.octets()),
                    std::net::IpAddr::V6(a) => core.shared.key_hasher.hash_key(&a.octets()),
                };
                let Some(permit) = core.shared.per_ip.try_acquire_owned(ip_key) else {
                    core.rec.borrow_mut().count(Counter::ConnectionsRefused, 1);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                set_cloexec(&stream);
                {
                    let mut rec = core.rec.borrow_mut();
                    rec.count(Counter::ConnectionsAccepted, 1);
                    rec.gauge(Gauge::ClientConnections, 1);
                }
                OPEN_CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                monoio::spawn(serve_client(
                    core.clone(),
                    stream,
                    peer,
                    Some(permit),
                    false,
                ));
            }
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Polls `fut` until it completes (`Some`) or `after` passes (`None`). On `None` the future
/// is left as it is: the caller cancels its operation and awaits it, so a result that raced
/// the timeout is still taken, never lost.
async fn ready_within<F: std::future::Future>(
    mut fut: std::pin::Pin<&mut F>,
    after: Duration,
) -> Option<F::Output> {
    let mut tick = std::pin::pin!(monoio::time::sleep(after));
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if tick.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Marks an accepted socket close-on-exec (monoio's accept does not), so stdio children that
/// mcplb starts never inherit client connections. One syscall per connection.
fn set_cloexec(s: &TcpStream) {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a valid, owned fd; only the FD_CLOEXEC flag changes.
    #[allow(unsafe_code)]
    unsafe {
        libc::fcntl(s.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
}

/// Reads more bytes from `s`, appending to `buf`. Returns bytes read (0 = EOF).
async fn read_more(s: &mut Conn, buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
    s.read_more(buf, BUF_SIZE).await
}

/// Writes all of `buf[range]`, giving the buffer back.
async fn write_range(s: &mut Conn, buf: Vec<u8>, range: Range<usize>) -> (io::Result<()>, Vec<u8>) {
    s.write_range(buf, range).await
}

/// The request head as offsets into the client buffer (so the buffer can grow while the body
/// is read).
#[derive(Default)]
struct ReqHead {
    method: Range<usize>,
    path: Range<usize>,
    query: Range<usize>,
    minor: u8,
    headers: Vec<(Range<usize>, Range<usize>)>,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
    expect_continue: bool,
    session: Option<Range<usize>>,
    mcp_method: Option<Range<usize>>,
    mcp_name: Option<Range<usize>>,
    len: usize,
}

enum HeadError {
    Bad(&'static str),
    TooManyHeaders,
}

fn offset_of(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

fn parse_head(
    buf: &[u8],
    len: usize,
    max_headers: usize,
    h: &mut ReqHead,
) -> Result<(), HeadError> {
    let mut storage = [httparse::EMPTY_HEADER; 512];
    let headers = &mut storage[..max_headers.min(512)];
    let mut req = httparse::Request::new(headers);
    match req.parse(&buf[..len]) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request line"));
    };
    h.method = offset_of(buf, method.as_bytes());
    let t = offset_of(buf, target.as_bytes());
    let q = target.find('?').map_or(t.end, |i| t.start + i);
    h.path = t.start..q;
    h.query = q..t.end;
    h.minor = minor;
    h.headers.clear();
    h.content_length = None;
    h.chunked = false;
    h.close = minor == 0;
    h.expect_continue = false;
    h.session = None;
    h.mcp_method = None;
    h.mcp_name = None;
    h.len = len;
    for hd in req.headers.iter() {
        let name = hd.name.as_bytes();
        let value = hd.value;
        let (nr, vr) = (offset_of(buf, name), offset_of(buf, value));
        if name.eq_ignore_ascii_case(b"content-length") {
            let v =
                http::parse_content_length(value).ok_or(HeadError::Bad("bad content-length"))?;
            if h.content_length.is_some_and(|old| old != v) {
                return Err(HeadError::Bad("conflicting content-length"));
            }
            h.content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !http::has_token(value, b"chunked") {
                return Err(HeadError::Bad("unsupported transfer-encoding"));
            }
            h.chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            if http::has_token(value, b"close") {
                h.close = true;
            } else if http::has_token(value, b"keep-alive") {
                h.close = false;
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            h.expect_continue = http::has_token(value, b"100-continue");
        } else if name.eq_ignore_ascii_case(b"mcp-session-id") {
            h.session = Some(vr.clone());
        } else if name.eq_ignore_ascii_case(b"mcp-method") {
            h.mcp_method = Some(vr.clone());
        } else if name.eq_ignore_ascii_case(b"mcp-name") {
            h.mcp_name = Some(vr.clone());
        }
        h.headers.push((nr, vr));
    }
    if h.chunked && h.content_length.is_some() {
        // Request smuggling guard (RFC 9112 §6.1): refuse rather than guess.
        return Err(HeadError::Bad("both content-length and transfer-encoding"));
    }
    Ok(())
}

/// Per-client-connection state, reused across its requests.
struct ClientConn {
    stream: Conn,
    /// Bytes read from the client: the current request, then any pipelined ones.
    buf: Vec<u8>,
    /// Decoded body when the request was chunked.
    body: Vec<u8>,
    /// Outgoing bytes (upstream request, then response head).
    out: Vec<u8>,
    /// Bytes read from upstream.
    ubuf: Vec<u8>,
    head: ReqHead,
    /// The client's address (rate-limit key `client-ip`).
    peer: SocketAddr,
    /// The sealed session id of the last answer that started a session.
    new_sid: Vec<u8>,
    /// The sealed session id the current request carried.
    req_sid: Vec<u8>,
    /// What the current request did, for statistics.
    meta: ReqMeta,
    /// Who the current request's credential says it is (`[servers.auth]`).
    caller: crate::auth::Caller,
}

/// Per-request facts gathered along the path and recorded when it ends.
#[derive(Default, Clone, Copy)]
struct ReqMeta {
    group: Option<usize>,
    backend: Option<usize>,
    method: usize,
    tool: Option<usize>,
    status: u16,
    by_proxy: bool,
    sent: Option<Instant>,
    upstream_done: Option<Instant>,
    bytes_out: u64,
    new_session: bool,
    ended_session: bool,
    sse: bool,
    retried: bool,
    /// The backend's answer was a JSON-RPC error object.
    jsonrpc_error: bool,
    /// SSE answers: when the first event bytes were forwarded.
    first_event: Option<Instant>,
    /// Keyed hash of the session id (access log only; the id itself is never logged).
    session_hash: u64,
}

/// What became of one request.
enum Next {
    /// Keep the client connection for the next request.
    KeepAlive,
    /// Close the client connection.
    Close,
}

/// Serves a client connection (`woken`: one that was parked and is now readable) until it
/// closes or idles; an idle one is parked, its task ends. TLS connections shake hands first
/// (bounded like a slow head); they are never parked (rustls may hold decrypted bytes).
async fn serve_client(
    core: Rc<Core>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<ratelimit::OwnedPermit>,
    woken: bool,
) {
    let conn = match &core.shared.tls {
        Some(tls) if !woken => {
            let timeout = core.shared.config.proxy.header_timeout;
            let accepted = Box::pin(monoio::time::timeout(
                timeout,
                Conn::accept(stream, tls.config()),
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
        connection_closed(&core);
        return;
    };
    let (core, idle) = serve_connection(core, conn, peer, woken).await;
    if let Some(stream) = idle {
        if !SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed) {
            match core.park.park(stream, peer, permit) {
                Ok(()) => return,
                Err((stream, permit)) => {
                    drop((stream, permit));
                }
            }
        }
    }
    connection_closed(&core);
}

/// Accounting for a client connection that closed (its socket and permit are dropped by the
/// caller).
fn connection_closed(core: &Core) {
    OPEN_CONNECTIONS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    core.rec.borrow_mut().gauge(Gauge::ClientConnections, -1);
}

/// Wakes parked connections that turned readable (each gets a new task) and, once a second,
/// closes those idle past `client_idle_timeout` (all of them on shutdown).
async fn park_loop(mut core: Rc<Core>) {
    let mut ready = Vec::new();
    let mut last_sweep = Instant::now();
    loop {
        core.park.wait(Duration::from_millis(250), &mut ready).await;
        if core.stale() || core.next.borrow().is_some() {
            core = core.latest();
        }
        for p in ready.drain(..) {
            monoio::spawn(serve_client(core.clone(), p.stream, p.peer, p.permit, true));
        }
        let shutdown = SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
        if shutdown || last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            let idle = if shutdown {
                Duration::ZERO
            } else {
                core.shared.config.proxy.client_idle_timeout
            };
            core.park.expire(idle, &mut ready);
            for p in ready.drain(..) {
                drop(p);
                connection_closed(&core);
            }
        }
    }
}

/// Serves requests on a connection until it closes (returns `None`) or, a plain one, goes
/// idle between requests (returns its socket, to be parked). `woken`: bytes are waiting.
async fn serve_connection(
    mut core: Rc<Core>,
    stream: Conn,
    peer: SocketAddr,
    woken: bool,
) -> (Rc<Core>, Option<TcpStream>) {
    let mut c = ClientConn {
        stream,
        buf: Vec::new(),
        body: Vec::new(),
        out: Vec::new(),
        ubuf: Vec::new(),
        head: ReqHead::default(),
        peer,
        new_sid: Vec::new(),
        req_sid: Vec::new(),
        meta: ReqMeta::default(),
        caller: crate::auth::Caller::default(),
    };
    let mut canceller = Some(Canceller::new());
    // Requests served on this connection. Only a connection that has shown it reuses itself
    // (two requests or more) gets the hot direct read; one that sent a single request and
    // went quiet waits for readiness at once, lending no buffer even for the hot period
    // (measured: with 10 000 such connections the transient buffers cost ~0.2 KiB each).
    // A woken connection has served a request before (it was parked after one): its next
    // one makes it a reused connection that earns the hot direct read, instead of parking
    // again after every request.
    let mut served: u32 = u32::from(woken);
    let mut woken = woken;
    let mut park = false;
    loop {
        if woken {
            // A parked connection that turned readable: its request (or EOF) is waiting, and
            // the request path reads it into this buffer.
            woken = false;
            c.buf = core.take_buf();
        } else if c.buf.is_empty() {
            let core = &core;
            let cfg = &core.shared.config.proxy;
            // Between requests: hand every buffer back.
            core.give_buf(std::mem::take(&mut c.buf));
            core.give_buf(std::mem::take(&mut c.body));
            core.give_buf(std::mem::take(&mut c.out));
            core.give_buf(std::mem::take(&mut c.ubuf));
            core.give_headers(std::mem::take(&mut c.head.headers));
            // Boxed for the same reason as the request below: the hot wait's I/O and timer
            // state would otherwise sit in every idle connection's task.
            let waited = if served >= 2 {
                Box::pin(wait_request(core, &mut c, &mut canceller)).await
            } else {
                Wait::Idle
            };
            match waited {
                Wait::Bytes => {}
                Wait::Idle if served > 0 && matches!(c.stream, Conn::Plain(_)) => {
                    // Idle between requests: the connection is parked with no task (see
                    // `park.rs`), and served again by a new task when it turns readable.
                    park = true;
                    break;
                }
                Wait::Idle => {
                    // A new connection (or a TLS one): wait for a request holding no buffer,
                    // in one-second slices so a shutdown closes idle connections promptly.
                    // Boxed too: the timer and poll state then live only while it idles.
                    let stream = &mut c.stream;
                    let ready = Box::pin(async move {
                        let idle_since = Instant::now();
                        loop {
                            if SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed)
                                || idle_since.elapsed() >= cfg.client_idle_timeout
                            {
                                break false;
                            }
                            let slice = cfg
                                .client_idle_timeout
                                .saturating_sub(idle_since.elapsed())
                                .min(Duration::from_secs(1));
                            match monoio::time::timeout(slice, stream.readable()).await {
                                Ok(Ok(())) => break true,
                                Ok(Err(_)) => break false,
                                Err(_) => {}
                            }
                        }
                    })
                    .await;
                    if !ready {
                        break;
                    }
                    c.buf = core.take_buf();
                }
                Wait::Closed => break,
            }
        }
        if core.stale() || core.next.borrow().is_some() {
            // A reload happened: this and later requests use the new configuration.
            core = core.latest();
        }
        let core = &core;
        if c.head.headers.capacity() == 0 {
            c.head.headers = core.take_headers();
        }
        // Boxed so that an idle connection's task holds only this loop's small state, not
        // the request path's (about 3 KiB): one allocation per request (a few tens of ns with
        // mimalloc's per-thread free lists) buys idle connections near nginx's footprint.
        served = served.saturating_add(1);
        match Box::pin(handle_request(core, &mut c)).await {
            Next::KeepAlive if !SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed) => {}
            _ => break,
        }
    }
    core.give_buf(std::mem::take(&mut c.buf));
    core.give_buf(std::mem::take(&mut c.body));
    core.give_buf(std::mem::take(&mut c.out));
    core.give_buf(std::mem::take(&mut c.ubuf));
    core.give_headers(std::mem::take(&mut c.head.headers));
    let idle = match c.stream {
        Conn::Plain(s) if park => Some(s),
        _ => None,
    };
    (core, idle)
}

/// How long a connection that just finished a request keeps a read buffer lent to the kernel
/// waiting for its next request, before it idles holding none. A direct read is one io_uring
/// operation; readiness then read is two (measured: about 1 µs of CPU per request on this
/// machine's loopback), so hot keep-alive connections read directly.
const HOT_WAIT: Duration = Duration::from_millis(100);

enum Wait {
    /// Request bytes are in `c.buf`.
    Bytes,
    /// Nothing arrived within [`HOT_WAIT`]; no buffer is held.
    Idle,
    /// The client closed the connection or it failed.
    Closed,
}

/// Waits up to [`HOT_WAIT`] for the next request with a pooled buffer lent to a cancelable
/// read. On timeout the read is cancelled and awaited, so its buffer comes back and bytes that
/// raced the cancellation are kept, never lost.
async fn wait_request(core: &Core, c: &mut ClientConn, canceller: &mut Option<Canceller>) -> Wait {
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
    let (r, slice) = match ready_within(read.as_mut(), HOT_WAIT).await {
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
            c.buf = buf;
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

/// Sends `c.out` to the client and says what next.
async fn send_out(c: &mut ClientConn, next: Next) -> Next {
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    let (r, out) = write_range(&mut c.stream, out, 0..len).await;
    c.meta.bytes_out += len as u64;
    c.out = out;
    c.out.clear();
    match r {
        Ok(()) => next,
        Err(_) => Next::Close,
    }
}

/// Answers with a JSON-RPC error object and says whether to keep the connection.
async fn reply_error(
    c: &mut ClientConn,
    status: u16,
    id: Option<&[u8]>,
    code: i32,
    msg: &str,
    close: bool,
) -> Next {
    reply_error_with(c, status, id, code, msg, close, "", None).await
}

/// [`reply_error`] with extra header lines (each ending in CRLF) and a JSON `data` member.
#[allow(clippy::too_many_arguments)]
async fn reply_error_with(
    c: &mut ClientConn,
    status: u16,
    id: Option<&[u8]>,
    code: i32,
    msg: &str,
    close: bool,
    extra_headers: &str,
    data: Option<&str>,
) -> Next {
    c.out.clear();
    http::write_jsonrpc_error_with(
        &mut c.out,
        status,
        id,
        code,
        msg,
        close,
        extra_headers,
        data,
    );
    c.meta.status = status;
    c.meta.by_proxy = true;
    send_out(c, if close { Next::Close } else { Next::KeepAlive }).await
}

/// Reads one request (head and body), routes it, forwards it and its answer.
async fn handle_request(core: &Core, c: &mut ClientConn) -> Next {
    let start = Instant::now();
    c.meta = ReqMeta::default();
    let next = read_and_forward(core, c).await;
    if core.shared.config.proxy.stats {
        record(core, &c.meta, start);
    }
    if core.access_log.is_some() {
        write_access_log(core, c, start);
    }
    next
}

/// Appends one JSON access-log line for the request just finished.
fn write_access_log(core: &Core, c: &ClientConn, start: Instant) {
    let Some(log) = &core.access_log else { return };
    let m = &c.meta;
    let mut l = log.borrow_mut();
    l.seq += 1;
    let seq = l.seq;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let total_us = start.elapsed().as_micros();
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_micros(),
        _ => 0,
    };
    let cfg = &core.shared.config;
    let server = m.group.and_then(|g| cfg.servers.get(g));
    let backend = m
        .backend
        .and_then(|b| server.and_then(|s| s.backends.get(b)))
        .map_or("", |b| b.name.as_str());
    let rec = core.rec.borrow();
    let tool = m.tool.map_or("", |t| rec.tool_name(t));
    let method = stats::METHODS.get(m.method).copied().unwrap_or("other");
    // Names come from the config and the tool table (JSON-escaped by serde_json); the
    // session is a keyed hash, never the id itself.
    let _ = writeln!(
        l.buf,
        "{{\"ts\":{ts},\"id\":\"{}-{seq}\",\"client\":\"{}\",\"server\":{},\"session\":\"{:016x}\",\"method\":\"{method}\",\"tool\":{},\"backend\":{},\"caller\":{},\"status\":{},\"by_proxy\":{},\"total_us\":{total_us},\"upstream_us\":{upstream_us},\"bytes_out\":{}}}",
        core.index,
        c.peer,
        serde_json::Value::from(server.map_or("", |s| s.name.as_str())),
        m.session_hash,
        serde_json::Value::from(tool),
        serde_json::Value::from(backend),
        serde_json::Value::from(c.caller.name.as_str()),
        m.status,
        m.by_proxy,
        m.bytes_out,
    );
    if l.buf.len() >= 64 * 1024 {
        l.flush();
    }
}

/// Folds one finished request into this core's statistics.
fn record(core: &Core, m: &ReqMeta, start: Instant) {
    if m.by_proxy {
        let limit = match m.status {
            408 => Some(Counter::SlowClients),
            431 => Some(Counter::HeadersTooLarge),
            413 => Some(Counter::BodiesTooLarge),
            414 => Some(Counter::UrlsTooLong),
            _ => None,
        };
        if let Some(k) = limit {
            core.rec.borrow_mut().count(k, 1);
        }
    }
    let Some(group) = m.group else {
        // Rejected before a server group was known (bad head, unknown path): count only.
        let mut rec = core.rec.borrow_mut();
        rec.count(Counter::BadRequest, 1);
        rec.count(Counter::BytesOut, m.bytes_out);
        return;
    };
    let end = Instant::now();
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_micros() as u64,
        _ => 0,
    };
    let mut rec = core.rec.borrow_mut();
    rec.record(Sample {
        group,
        backend: m.backend,
        method: m.method,
        tool: m.tool,
        total_us: end.saturating_duration_since(start).as_micros() as u64,
        upstream_us,
        first_event_us: match (m.sent, m.first_event) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_micros() as u64),
            _ => None,
        },
    });
    rec.count(Counter::BytesOut, m.bytes_out);
    if m.by_proxy {
        let c = match m.status {
            404 => Counter::UnknownSession,
            429 => Counter::RateLimited,
            502 | 503 => Counter::NoBackend,
            504 => Counter::Timeout,
            401 | 403 => Counter::AuthRefused,
            _ => Counter::BadRequest,
        };
        rec.count(c, 1);
    } else if (400..500).contains(&m.status) {
        rec.count(Counter::Upstream4xx, 1);
    } else if m.status >= 500 {
        rec.count(Counter::Upstream5xx, 1);
    }
    if m.new_session {
        rec.count(Counter::SessionsStarted, 1);
        rec.gauge(Gauge::ActiveSessions, 1);
        if let Some(b) = m.backend {
            rec.backend_gauge(group, b, 1, 1);
        }
    }
    if m.ended_session && (200..300).contains(&m.status) {
        rec.count(Counter::SessionsEnded, 1);
        rec.gauge(Gauge::ActiveSessions, -1);
        if let Some(b) = m.backend {
            rec.backend_gauge(group, b, 1, -1);
        }
    }
    if m.sse {
        rec.count(Counter::SseStreams, 1);
    }
    if m.retried {
        rec.count(Counter::Retries, 1);
    }
    if m.jsonrpc_error {
        rec.count(Counter::JsonRpcErrors, 1);
    }
}

/// Reads one request (head and body), routes it, forwards it and its answer.
async fn read_and_forward(core: &Core, c: &mut ClientConn) -> Next {
    let cfg = &core.shared.config.proxy;
    // ---- head
    let deadline = monoio::time::Instant::now() + cfg.header_timeout;
    let head_len = loop {
        if let Some(n) = http::head_len(&c.buf) {
            break n;
        }
        if c.buf.len() > cfg.max_header_bytes {
            return reply_error(c, 431, None, -32600, "request head too large", true).await;
        }
        let buf = std::mem::take(&mut c.buf);
        let (r, buf) = match monoio::time::timeout_at(deadline, read_more(&mut c.stream, buf)).await
        {
            Ok(x) => x,
            Err(_) => {
                // Slow or stalled head (slowloris): answer if anything arrived, then close.
                return reply_error(c, 408, None, -32600, "request head timed out", true).await;
            }
        };
        c.buf = buf;
        match r {
            Ok(0) | Err(_) => return Next::Close,
            Ok(_) => {}
        }
    };
    if head_len > cfg.max_header_bytes {
        return reply_error(c, 431, None, -32600, "request head too large", true).await;
    }
    let mut head = std::mem::take(&mut c.head);
    let parsed = parse_head(&c.buf, head_len, cfg.max_headers, &mut head);
    let next = match parsed {
        Ok(()) if head.path.start.abs_diff(head.query.end) > cfg.max_url_bytes => {
            reply_error(c, 414, None, -32600, "request target too long", true).await
        }
        Ok(()) => handle_parsed(core, c, &head).await,
        Err(HeadError::TooManyHeaders) => {
            reply_error(c, 431, None, -32600, "too many request headers", true).await
        }
        Err(HeadError::Bad(why)) => reply_error(c, 400, None, -32600, why, true).await,
    };
    c.head = head;
    next
}

/// For an answer made before the body is read: whether the connection must close (a body we do
/// not read would be taken for the next request). When it stays open, the request head is
/// dropped from the buffer, so that the next read starts at the next request and this one is
/// not handled again.
fn answer_before_body(c: &mut ClientConn, h: &ReqHead, keep: bool) -> bool {
    let close = !keep || h.content_length.unwrap_or(0) > 0 || h.chunked;
    if !close {
        c.buf.drain(..h.len.min(c.buf.len()));
    }
    close
}

/// Where the request's raw JSON-RPC id is: in the client buffer or the de-chunked body.
#[derive(Clone)]
enum IdAt {
    Buf(Range<usize>),
    Body(Range<usize>),
}

/// Which part of the client buffer or decoded body holds the request body.
enum BodyAt {
    Buf(Range<usize>),
    Decoded,
}

async fn handle_parsed(core: &Core, c: &mut ClientConn, h: &ReqHead) -> Next {
    let cfg = &core.shared.config.proxy;
    let (is_post, is_get, is_delete) = {
        let m = &c.buf[h.method.clone()];
        (m == b"POST", m == b"GET", m == b"DELETE")
    };
    let keep = !h.close;

    // ---- which server group
    let path = &c.buf[h.path.clone()];
    // `{path}/sse` and `{path}/messages` of a group with `legacy_sse = true` go to its
    // 2024-11-05 transport bridge.
    let mut legacy_front = None;
    let found = core
        .shared
        .config
        .servers
        .iter()
        .position(|g| g.path.as_bytes() == path)
        .or_else(|| {
            core.shared
                .legacy_fronts
                .iter()
                .enumerate()
                .find_map(|(i, f)| {
                    let f = (*f)?;
                    let g = core.shared.config.servers.get(i)?;
                    let rest = path.strip_prefix(g.path.as_bytes())?;
                    (rest == b"/sse" || rest == b"/messages").then(|| {
                        legacy_front = Some(f);
                        i
                    })
                })
        });
    if found.is_none() && is_get && crate::auth::is_metadata_path(path) {
        // OAuth protected-resource metadata (RFC 9728), for MCP clients' OAuth discovery.
        let doc = crate::auth::metadata_for(&core.shared.config.servers, path);
        let close = answer_before_body(c, h, keep);
        let m = match doc {
            Some(crate::auth::MetadataAnswer::Document(m)) => m,
            Some(crate::auth::MetadataAnswer::Passthrough(gi)) => {
                return relay_metadata(core, c, gi, close).await
            }
            None => {
                return reply_error(c, 404, None, -32600, "no protected resource here", close).await
            }
        };
        c.out.clear();
        let _ = write!(
            c.out,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: public, max-age=300\r\naccess-control-allow-origin: *\r\n{}\r\n{}",
            m.document.len(),
            if close { "connection: close\r\n" } else { "" },
            m.document
        );
        c.meta.status = 200;
        c.meta.by_proxy = true;
        return send_out(c, if close { Next::Close } else { Next::KeepAlive }).await;
    }
    let Some(gi) = found else {
        let close = answer_before_body(c, h, keep);
        return reply_error(c, 404, None, -32600, "no MCP server at this path", close).await;
    };
    c.meta.group = Some(gi);
    c.meta.method = stats::M_GET;
    if !(is_post || is_get || is_delete) {
        let close = answer_before_body(c, h, keep);
        return reply_error(c, 405, None, -32600, "method not allowed", close).await;
    }
    // ---- who may come in: Origin allow-list, API keys and tokens, before reading any body.
    // A refused credential is answered after a small body is read, so the JSON-RPC error can
    // carry the request's id; a large or chunked one is not read.
    let denied = match check_access(core, c, h, gi) {
        Err(d) if d.status != 403 || d.error.is_some() => Some(d),
        Err(d) => {
            let close = answer_before_body(c, h, keep);
            return reply_error(c, d.status, None, -32600, d.message, close).await;
        }
        Ok(()) => None,
    };
    if let Some(d) = denied {
        if h.chunked || h.content_length.unwrap_or(0) > DENIED_BODY_MAX || h.expect_continue {
            let auth = &core.shared.config.servers[gi].auth;
            let extra = crate::auth::challenge(auth, &d);
            return reply_error_with(c, d.status, None, -32600, d.message, true, &extra, None)
                .await;
        }
    }

    // ---- body
    if h.expect_continue && (h.chunked || h.content_length.unwrap_or(0) > 0) {
        if h.content_length
            .is_some_and(|n| n > cfg.max_body_bytes as u64)
        {
            return reply_error(c, 413, None, -32600, "request body too large", true).await;
        }
        c.out.clear();
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        if let Next::Close = send_out(c, Next::KeepAlive).await {
            return Next::Close;
        }
    }
    let body_deadline = monoio::time::Instant::now() + cfg.upstream_timeout.max(cfg.header_timeout);
    let (body_at, consumed) = if h.chunked {
        let mut dec = ChunkedDecoder::new();
        let mut pos = h.len;
        c.body.clear();
        loop {
            let before = c.body.len();
            let r = {
                let body = &mut c.body;
                dec.feed(&c.buf[pos..], |d| body.extend_from_slice(d))
            };
            match r {
                Ok(n) => pos += n,
                Err(_) => return reply_error(c, 400, None, -32700, "bad chunked body", true).await,
            }
            if c.body.len() > cfg.max_body_bytes {
                return reply_error(c, 413, None, -32600, "request body too large", true).await;
            }
            let _ = before;
            if dec.is_done() {
                break;
            }
            // Keep the head, drop chunk bytes already decoded, read more.
            c.buf.drain(h.len..pos);
            pos = h.len;
            let buf = std::mem::take(&mut c.buf);
            let Ok((r, buf)) =
                monoio::time::timeout_at(body_deadline, read_more(&mut c.stream, buf)).await
            else {
                return reply_error(c, 408, None, -32600, "request body timed out", true).await;
            };
            c.buf = buf;
            match r {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            }
        }
        (BodyAt::Decoded, pos)
    } else {
        let n = h.content_length.unwrap_or(0);
        if n > cfg.max_body_bytes as u64 {
            return reply_error(c, 413, None, -32600, "request body too large", true).await;
        }
        let end = h.len + n as usize;
        while c.buf.len() < end {
            let need = end - c.buf.len();
            if c.buf.capacity() - c.buf.len() < need {
                c.buf.reserve(need);
            }
            let buf = std::mem::take(&mut c.buf);
            let Ok((r, buf)) =
                monoio::time::timeout_at(body_deadline, read_more(&mut c.stream, buf)).await
            else {
                return reply_error(c, 408, None, -32600, "request body timed out", true).await;
            };
            c.buf = buf;
            match r {
                Ok(0) | Err(_) => return Next::Close,
                Ok(_) => {}
            }
        }
        (BodyAt::Buf(h.len..end), end)
    };

    core.rec
        .borrow_mut()
        .count(Counter::BytesIn, consumed as u64);
    if let Some(d) = denied {
        let body = match &body_at {
            BodyAt::Buf(r) => &c.buf[r.clone()],
            BodyAt::Decoded => &c.body,
        };
        let id = protocol::parse_message_with_depth(body, cfg.max_json_depth)
            .ok()
            .and_then(|e| e.id)
            .map(<[u8]>::to_vec);
        c.buf.drain(..consumed);
        let extra = crate::auth::challenge(&core.shared.config.servers[gi].auth, &d);
        return reply_error_with(
            c,
            d.status,
            id.as_deref(),
            -32600,
            d.message,
            !keep,
            &extra,
            None,
        )
        .await;
    }
    if let Some(front) = legacy_front {
        return forward_to_legacy_front(core, c, h, front, consumed, keep).await;
    }
    // ---- envelope
    let mut read_only = is_get || is_delete;
    let mut req_id: Option<IdAt> = None;
    let mut hash_key: Option<u64> = None;
    let mut conc = ConcKeys::default();
    if is_post {
        let body: &[u8] = match &body_at {
            BodyAt::Buf(r) => &c.buf[r.clone()],
            BodyAt::Decoded => &c.body,
        };
        let env = match protocol::parse_message_with_depth(body, cfg.max_json_depth) {
            Ok(env) => env,
            Err(e) => {
                if e.kind == protocol::FrameErrorKind::TooDeep {
                    core.rec.borrow_mut().count(Counter::JsonTooDeep, 1);
                }
                let id = if e.jsonrpc_code() == -32700 {
                    None
                } else {
                    e.id_in(body)
                };
                let (code, msg) = (e.jsonrpc_code(), e.message());
                let id = id.map(<[u8]>::to_vec);
                c.buf.drain(..consumed);
                return reply_error(c, 400, id.as_deref(), code, msg, !keep).await;
            }
        };
        // 2026-07-28: Mcp-Method / Mcp-Name must mirror the body.
        let mismatch = header_mismatch(&c.buf, h, &env);
        if let Some(msg) = mismatch {
            let id = env.id.map(<[u8]>::to_vec);
            c.buf.drain(..consumed);
            return reply_error(c, 400, id.as_deref(), -32020, msg, !keep).await;
        }
        let limited = check_limits(core, c, h, gi, &env);
        if let Some((rule, retry_ns)) = limited {
            let notification = env.kind == protocol::MessageKind::Notification;
            let id = env.id.map(<[u8]>::to_vec);
            c.buf.drain(..consumed);
            if notification {
                // Over a limit, a notification is dropped (counted), not answered with an error.
                c.out.clear();
                c.out
                    .extend_from_slice(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
                c.meta.status = 429;
                c.meta.by_proxy = true;
                return send_out(c, if keep { Next::KeepAlive } else { Next::Close }).await;
            }
            let secs = retry_ns.div_ceil(1_000_000_000).max(1);
            let headers = format!("retry-after: {secs}\r\n");
            let data = format!(
                "{{\"limit\":{rule},\"retryAfterMs\":{}}}",
                retry_ns.div_ceil(1_000_000)
            );
            let msg = "rate limit exceeded";
            return reply_error_with(
                c,
                429,
                id.as_deref(),
                -32000,
                msg,
                !keep,
                &headers,
                Some(&data),
            )
            .await;
        }
        hash_key = balance_key(core, c, h, gi, Some(&env));
        if env.kind == protocol::MessageKind::Request {
            concurrency_keys(core, c, h, gi, &env, &mut conc);
        }
        c.meta.method = match (env.kind, env.method) {
            (protocol::MessageKind::Notification, _) => stats::M_NOTIFICATION,
            (protocol::MessageKind::Response, _) => stats::M_RESPONSE,
            (_, Some(m)) => stats::method_index(&m),
            _ => stats::M_OTHER,
        };
        if c.meta.method == 3 {
            if let Some(name) = env.name {
                c.meta.tool = Some(core.rec.borrow_mut().tool_slot(&name.decode()));
            }
        }
        read_only = env.method.is_some_and(|m| {
            [
                "ping",
                "tools/list",
                "resources/list",
                "resources/read",
                "resources/templates/list",
                "prompts/list",
                "prompts/get",
                "server/discover",
                "completion/complete",
            ]
            .iter()
            .any(|x| m.eq_str(x))
        });
        req_id = env.id.map(|id| match &body_at {
            BodyAt::Buf(_) => IdAt::Buf(offset_of(&c.buf, id)),
            BodyAt::Decoded => IdAt::Body(offset_of(&c.body, id)),
        });
    }
    let id_bytes = |c: &ClientConn| -> Option<Vec<u8>> {
        req_id.clone().map(|at| {
            let found = match at {
                IdAt::Buf(r) => c.buf.get(r),
                IdAt::Body(r) => c.body.get(r),
            };
            found.unwrap_or(b"null").to_vec()
        })
    };

    // ---- concurrency limits per tool, caller or in all (per backend: once it is chosen)
    let mut permits: [Option<ratelimit::OwnedPermit>; MAX_CONCURRENCY_RULES] =
        [const { None }; MAX_CONCURRENCY_RULES];
    for &(ri, key) in conc.keys.iter().take(conc.n) {
        let (Some(limit), Some(rule)) = (
            core.shared.concurrency.get(ri),
            core.shared.config.concurrency.get(ri),
        ) else {
            continue;
        };
        match acquire_permit(limit, key, rule).await {
            Some(p) => permits[ri] = Some(p),
            None => {
                let id = id_bytes(c);
                c.buf.drain(..consumed);
                return reply_concurrency(c, ri, id.as_deref(), keep).await;
            }
        }
    }

    // ---- route: sealed session or a new pick
    let group = &core.shared.config.servers[gi];
    let mut scratch = [0u8; SCRATCH];
    let mut failover_sid: Vec<u8> = Vec::new();
    let mut backend_sid: Option<&[u8]> = None;
    let rt = &core.shared.groups[gi];
    let now = balance::now_ns(core.shared.epoch);
    let reinit = group.session_failover == SessionFailover::Reinitialize;
    // The sealed id as the client sent it (the key of the failover table).
    let sealed: Option<Range<usize>> = h
        .session
        .clone()
        .map(|r| offset_of(&c.buf, c.buf[r].trim_ascii()));
    if core.access_log.is_some() {
        if let Some(sr) = sealed.clone() {
            c.meta.session_hash = core.shared.key_hasher.hash_key(&c.buf[sr]);
        }
    }
    let mut sticky_bi = None;
    let mut needs_failover = false;
    if let Some(sr) = sealed.clone() {
        let opened = core.shared.sealer.open(&c.buf[sr.clone()], &mut scratch);
        match opened.and_then(|(tag, sid)| {
            group
                .backends
                .iter()
                .position(|b| b.tag == tag)
                .map(|i| (i, sid))
        }) {
            // A session whose backend is ejected or failing its health checks: by default
            // 404, so the client re-initializes on a healthy backend (as the spec prescribes);
            // with session_failover = "reinitialize", the client's initialize is replayed on
            // a healthy backend. A draining backend keeps serving its sessions until its
            // drain deadline.
            Some((i, sid)) if !session_backend_usable(rt, i, now) => {
                if reinit {
                    needs_failover = true;
                    sticky_bi = Some(i);
                    let _ = sid;
                } else {
                    let id = id_bytes(c);
                    c.buf.drain(..consumed);
                    tracing::info!(backend = %group.backends[i].name, "session on an unavailable backend: 404");
                    return reply_error(c, 404, id.as_deref(), -32600, "Session not found", !keep)
                        .await;
                }
            }
            Some((i, sid)) => {
                backend_sid = Some(sid);
                sticky_bi = Some(i);
            }
            None => {
                let id = id_bytes(c);
                c.buf.drain(..consumed);
                return reply_error(c, 404, id.as_deref(), -32600, "Session not found", !keep)
                    .await;
            }
        }
        // A session already moved by an earlier failover goes where it was moved.
        if reinit {
            // Moves are remembered by backend tag, so they survive a reload.
            let moved = core.shared.failover.remapped(&c.buf[sr.clone()]);
            if let Some((tag, sid)) = moved {
                let to = group.backends.iter().position(|b| b.tag == tag);
                if let Some(to) = to.filter(|to| session_backend_usable(rt, *to, now)) {
                    failover_sid = sid;
                    sticky_bi = Some(to);
                    needs_failover = false;
                } else {
                    needs_failover = true;
                }
            }
        }
    }
    if !is_post && sticky_bi.is_none() {
        hash_key = balance_key(core, c, h, gi, None);
    }
    // The client's initialize, kept (in groups that fail over by replaying it) until its
    // answer carries the session id it belongs to.
    let init_copy: Option<Vec<u8>> = (reinit && c.meta.method == 0).then(|| match &body_at {
        BodyAt::Buf(r) => c.buf[r.clone()].to_vec(),
        BodyAt::Decoded => c.body.clone(),
    });

    // ---- attempts: a request that provably never reached a backend goes to another one;
    // a read-only stateless request may also be retried after a failure, within the retry
    // budget; a `tools/call` is never sent twice.
    let mut tried: u64 = 0;
    let mut last_error: (u16, &'static str) = (503, "no backend available");
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    core.bal.deposit(gi, now);
    let attempts = group.backends.len().max(1) + 1;
    for _attempt in 0..attempts {
        let now = balance::now_ns(core.shared.epoch);
        if needs_failover {
            let Some(sr) = sealed.clone() else { break };
            let Some(body) = core.shared.failover.init_body(&c.buf[sr.clone()]) else {
                // Nothing to replay (the session predates this process, or was evicted).
                last_error = (404, "Session not found");
                break;
            };
            let from = sticky_bi.unwrap_or(usize::MAX);
            match reinitialize(core, gi, &body, from, tried, now).await {
                Some((to, sid)) => {
                    tracing::warn!(
                        server = %group.name,
                        from = group.backends.get(from).map_or("?", |b| b.name.as_str()),
                        to = %group.backends[to].name,
                        "session failed over by replaying its initialize; server-to-client \
                         messages of that session in flight on the old backend are lost"
                    );
                    let tag = group.backends[to].tag;
                    core.shared.failover.remap(&c.buf[sr.clone()], tag, &sid);
                    failover_sid = sid;
                    sticky_bi = Some(to);
                    needs_failover = false;
                    c.meta.retried = true;
                }
                None => {
                    last_error = (503, "no healthy backend to fail the session over to");
                    break;
                }
            }
        }
        let backend_sid: Option<&[u8]> = if failover_sid.is_empty() {
            backend_sid
        } else {
            Some(&failover_sid)
        };
        let bi = match sticky_bi {
            Some(b) => b,
            None => match core.bal.pick(gi, group, rt, hash_key, tried, now) {
                Some(b) => b,
                None => break,
            },
        };
        if bi < 64 {
            tried |= 1 << bi;
        }
        let backend = &group.backends[bi];
        let (mut up, mut reused) = match core.upstream(gi, bi).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(backend = %backend.name, error = %e, "backend unreachable");
                let timed_out = e.kind() == io::ErrorKind::TimedOut;
                let kind = if timed_out {
                    lb::FailureKind::Timeout
                } else {
                    lb::FailureKind::Connect
                };
                balance::record_outcome(&core.shared.hub, rt, group, bi, Some(kind), now);
                last_error = if timed_out {
                    (504, "backend connect timed out")
                } else {
                    (502, "backend unreachable")
                };
                if sticky_bi.is_some() {
                    if reinit && sealed.is_some() {
                        needs_failover = true;
                        continue;
                    }
                    break;
                }
                // Never reached the backend: any method may go to another one.
                continue;
            }
        };
        // Per-backend concurrency: a new session or stateless request tries another backend;
        // a session's request waits (or is rejected) as the rule says.
        let mut backend_full = None;
        for (ri, &on) in conc.backend_rules.iter().enumerate() {
            if !on {
                continue;
            }
            let (Some(limit), Some(rule)) = (
                core.shared.concurrency.get(ri),
                core.shared.config.concurrency.get(ri),
            ) else {
                continue;
            };
            // Hashed: the limit table reserves small raw values (0 marks an empty slot).
            let key = core
                .shared
                .key_hasher
                .hash_key(&(((gi as u64) << 32) | bi as u64).to_le_bytes());
            let permit = if sticky_bi.is_some() {
                acquire_permit(limit, key, rule).await
            } else {
                limit.try_acquire_owned(key)
            };
            match permit {
                Some(p) => permits[ri] = Some(p),
                None => {
                    backend_full = Some(ri);
                    break;
                }
            }
        }
        if let Some(ri) = backend_full {
            if sticky_bi.is_none() && tried.count_ones() < group.backends.len() as u32 {
                continue;
            }
            c.ubuf = ubuf;
            let id = id_bytes(c);
            c.buf.drain(..consumed);
            return reply_concurrency(c, ri, id.as_deref(), keep).await;
        }
        c.meta.backend = Some(bi);
        c.meta.ended_session = is_delete && backend_sid.is_some();
        core.bal.start(gi, bi);
        {
            let mut rec = core.rec.borrow_mut();
            rec.gauge(Gauge::UpstreamBusy, 1);
            rec.backend_gauge(gi, bi, 0, 1);
        }
        let _in_flight = InFlight { core, gi, bi };

        let mut out = std::mem::take(&mut c.out);
        out.clear();
        {
            let body: &[u8] = match &body_at {
                BodyAt::Buf(r) => &c.buf[r.clone()],
                BodyAt::Decoded => &c.body,
            };
            build_upstream_request(
                &mut out,
                &c.buf,
                h,
                backend,
                backend_sid,
                body,
                is_post,
                &group.auth.upstream,
            );
        }
        c.out = out;
        ubuf.clear();
        // Send; a pooled connection that turns out dead before any answer byte is retried on
        // a fresh one only when that cannot run the request twice.
        let mut same_conn_retry = true;
        let outcome = loop {
            let out = std::mem::take(&mut c.out);
            let len = out.len();
            let (w, out) = write_range(&mut up, out, 0..len).await;
            c.out = out;
            c.meta.sent = Some(Instant::now());
            let write_failed = w.is_err();
            let mut failed_before_answer = write_failed;
            let mut got = Attempt::Reset;
            if !write_failed {
                loop {
                    if let Some(n) = http::head_len(&ubuf) {
                        got = Attempt::Head(n);
                        break;
                    }
                    if ubuf.len() > 64 * 1024 {
                        break;
                    }
                    let b = std::mem::take(&mut ubuf);
                    match monoio::time::timeout(cfg.upstream_timeout, read_more(&mut up, b)).await {
                        Err(_) => {
                            ubuf = core.take_buf();
                            got = Attempt::Timeout;
                            break;
                        }
                        Ok((r, b)) => {
                            ubuf = b;
                            if !matches!(r, Ok(n) if n > 0) {
                                failed_before_answer = ubuf.is_empty();
                                break;
                            }
                        }
                    }
                }
            }
            if !matches!(got, Attempt::Reset) {
                break got;
            }
            // A write that failed delivered nothing usable; a reused connection that died
            // before any answer byte may have been closed by the backend while idle, which is
            // retried on a fresh connection only for methods that only read.
            let retry_safe = write_failed || (failed_before_answer && reused && read_only);
            if same_conn_retry && retry_safe {
                same_conn_retry = false;
                if let Ok((s, r)) = core.upstream(gi, bi).await {
                    up = s;
                    reused = r;
                    ubuf.clear();
                    c.meta.retried = true;
                    continue;
                }
            }
            break if write_failed {
                Attempt::NotSent
            } else {
                Attempt::Reset
            };
        };
        let head_len = match outcome {
            Attempt::Head(n) => n,
            failed => {
                let (kind, err) = match failed {
                    Attempt::Timeout => (lb::FailureKind::Timeout, (504, "upstream timed out")),
                    _ => (
                        lb::FailureKind::Reset,
                        (502, "backend closed the connection before answering"),
                    ),
                };
                tracing::warn!(backend = %backend.name, error = err.1, "upstream failure");
                balance::record_outcome(
                    &core.shared.hub,
                    rt,
                    group,
                    bi,
                    Some(kind),
                    balance::now_ns(core.shared.epoch),
                );
                last_error = err;
                let never_sent = matches!(failed, Attempt::NotSent);
                let may_retry = if sticky_bi.is_some() {
                    // A session's request can only be retried where its session lives: after a
                    // failover, and only if it never reached the dead backend or only reads.
                    reinit && sealed.is_some() && (never_sent || read_only)
                } else {
                    never_sent
                        || (read_only
                            && core
                                .bal
                                .try_withdraw(gi, balance::now_ns(core.shared.epoch)))
                };
                if may_retry {
                    if sticky_bi.is_some() {
                        needs_failover = true;
                    }
                    c.meta.retried = true;
                    continue;
                }
                break;
            }
        };
        // The client's sealed id, to echo if the backend repeats the session's id.
        c.req_sid.clear();
        if let Some(sr) = sealed.clone() {
            c.req_sid.extend_from_slice(&c.buf[sr]);
        }
        // The request is no longer needed: drop it, keep any pipelined bytes.
        c.buf.drain(..consumed);
        let rtt = c.meta.sent.map(|s| s.elapsed().as_nanos() as u64);
        let (next, reusable) = forward_response(
            core,
            c,
            &mut up,
            ubuf,
            head_len,
            backend.tag,
            backend_sid,
            keep,
        )
        .await;
        if reusable {
            core.put_upstream(gi, bi, up);
        }
        let now = balance::now_ns(core.shared.epoch);
        let failure = (c.meta.status >= 500).then_some(lb::FailureKind::Status5xx);
        balance::record_outcome(&core.shared.hub, rt, group, bi, failure, now);
        core.bal.end_rtt(gi, bi, rtt, now);
        if let (Some(body), true) = (init_copy, c.meta.new_session) {
            core.shared.failover.remember(&c.new_sid, body);
        }
        return next;
    }
    c.ubuf = ubuf;
    let id = id_bytes(c);
    c.buf.drain(..consumed);
    let (status, msg) = last_error;
    reply_error(c, status, id.as_deref(), -32603, msg, !keep).await
}

/// Concurrency keys of one request: which `[[concurrency]]` rules match and their keys.
#[derive(Default)]
struct ConcKeys {
    keys: [(usize, u64); MAX_CONCURRENCY_RULES],
    n: usize,
    backend_rules: [bool; MAX_CONCURRENCY_RULES],
}

/// Finds the concurrency rules that match a request and the key each counts it under.
fn concurrency_keys(
    core: &Core,
    c: &ClientConn,
    h: &ReqHead,
    gi: usize,
    env: &protocol::Envelope<'_>,
    out: &mut ConcKeys,
) {
    let rules = &core.shared.config.concurrency;
    if rules.is_empty() {
        return;
    }
    let facts = RequestFacts::of(core, gi, env);
    let info = facts.info();
    let hasher = &core.shared.key_hasher;
    for (ri, rule) in rules.iter().enumerate().take(MAX_CONCURRENCY_RULES) {
        if !rule.filter.matches(&info) {
            continue;
        }
        let key = match &rule.per {
            ConcurrencyPer::Backend => {
                out.backend_rules[ri] = true;
                continue;
            }
            ConcurrencyPer::Global => 1,
            ConcurrencyPer::Tool => hasher.hash_key(info.tool.unwrap_or("").as_bytes()),
            // A caller without the key (no such header or session) shares one count.
            ConcurrencyPer::Caller => caller_key(core, c, h, &rule.filter.key).unwrap_or(1),
        };
        if let Some(slot) = out.keys.get_mut(out.n) {
            *slot = (ri, key);
            out.n += 1;
        }
    }
}

/// A permit now, or after waiting in the rule's bounded queue until its timeout. The queue is
/// first in, first out across cores: a released permit is handed to the first caller in line
/// and wakes its task (on whichever core it waits), so nothing polls. A caller that times out
/// leaves the line; a permit handed to it at that moment goes on to the next.
async fn acquire_permit(
    limit: &Arc<ratelimit::ConcurrencyLimit>,
    key: u64,
    rule: &crate::config::ConcurrencyRule,
) -> Option<ratelimit::OwnedPermit> {
    if let Some(p) = limit.try_acquire_owned(key) {
        return Some(p);
    }
    if rule.queue == 0 {
        return None;
    }
    let wait = limit.acquire_owned(key)?;
    monoio::time::timeout(rule.queue_timeout, wait).await.ok()
}

/// 429 for a request over a concurrency limit, with a JSON-RPC error naming the rule.
async fn reply_concurrency(c: &mut ClientConn, rule: usize, id: Option<&[u8]>, keep: bool) -> Next {
    let data = format!("{{\"concurrency\":{rule}}}");
    let msg = "concurrency limit exceeded";
    reply_error_with(
        c,
        429,
        id,
        -32000,
        msg,
        !keep,
        "retry-after: 1\r\n",
        Some(&data),
    )
    .await
}

/// Passes a 2024-11-05 transport request (`GET {path}/sse`, `POST {path}/messages`) to the
/// group's bridge unchanged and streams its answer back. Old clients are rare and their
/// streams long-lived, so a fresh loopback connection serves each request.
async fn forward_to_legacy_front(
    core: &Core,
    c: &mut ClientConn,
    h: &ReqHead,
    front: SocketAddr,
    consumed: usize,
    keep: bool,
) -> Next {
    let Ok(mut up) = TcpStream::connect_addr(front).await.map(Conn::Plain) else {
        c.buf.drain(..consumed);
        return reply_error(
            c,
            502,
            None,
            -32603,
            "legacy transport bridge unreachable",
            !keep,
        )
        .await;
    };
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    out.extend_from_slice(&c.buf[h.method.clone()]);
    out.push(b' ');
    out.extend_from_slice(&c.buf[h.path.start..h.query.end]);
    let _ = write!(out, " HTTP/1.1\r\nhost: {front}\r\n");
    for (n, v) in &h.headers {
        let name = &c.buf[n.clone()];
        if http::is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"mcp-session-id") {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&c.buf[v.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    let body = if h.chunked {
        &c.body[..]
    } else {
        &c.buf[h.len..consumed]
    };
    let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
    c.buf.drain(..consumed);
    let len = out.len();
    let (w, out) = write_range(&mut up, out, 0..len).await;
    c.out = out;
    if w.is_err() {
        return reply_error(
            c,
            502,
            None,
            -32603,
            "legacy transport bridge unreachable",
            !keep,
        )
        .await;
    }
    let mut ubuf = core.take_buf();
    let head_len = loop {
        if let Some(n) = http::head_len(&ubuf) {
            break n;
        }
        let (r, b) = read_more(&mut up, ubuf).await;
        ubuf = b;
        if !matches!(r, Ok(n) if n > 0) || ubuf.len() > 64 * 1024 {
            core.give_buf(ubuf);
            return reply_error(
                c,
                502,
                None,
                -32603,
                "legacy transport bridge failed",
                !keep,
            )
            .await;
        }
    };
    let (next, _) = forward_response(core, c, &mut up, ubuf, head_len, 0, None, keep).await;
    next
}

/// How one attempt to get a response head from a backend ended.
enum Attempt {
    /// A complete head of this length is in the upstream buffer.
    Head(usize),
    /// The request could not be written: it never reached the backend.
    NotSent,
    /// The connection closed or failed after the request was written.
    Reset,
    /// No head before `upstream_timeout`.
    Timeout,
}

/// Whether requests of a session living on backend `i` may go there.
fn session_backend_usable(rt: &GroupRuntime, i: usize, now: u64) -> bool {
    rt.health.is_eligible(i, now)
        || (matches!(rt.health.state(i, now), Some(lb::HealthState::Draining))
            && !rt.drain_expired(i, now))
}

/// Replays a session's `initialize` (then `notifications/initialized`) on a healthy backend
/// other than `from`: the new backend and its session id.
async fn reinitialize(
    core: &Core,
    gi: usize,
    init_body: &[u8],
    from: usize,
    tried: u64,
    now: u64,
) -> Option<(usize, Vec<u8>)> {
    let group = core.shared.config.servers.get(gi)?;
    let rt = core.shared.groups.get(gi)?;
    let exclude = tried | if from < 64 { 1 << from } else { 0 };
    for _ in 0..group.backends.len() {
        let to = core.bal.pick(gi, group, rt, None, exclude, now)?;
        if to == from || !rt.health.is_eligible(to, now) {
            return None;
        }
        let b = &group.backends[to];
        let Ok((mut up, _)) = core.upstream(gi, to).await else {
            balance::record_outcome(
                &core.shared.hub,
                rt,
                group,
                to,
                Some(lb::FailureKind::Connect),
                now,
            );
            continue;
        };
        let mut req = Vec::with_capacity(init_body.len() + 256);
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n",
            b.path, b.authority, init_body.len()
        );
        req.extend_from_slice(init_body);
        let (sid, ok) = exchange(core, &mut up, req).await;
        let Some(sid) = sid.filter(|_| ok) else {
            continue;
        };
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let mut req = Vec::with_capacity(256);
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: ",
            b.path, b.authority
        );
        req.extend_from_slice(&sid);
        let _ = write!(req, "\r\ncontent-length: {}\r\n\r\n", note.len());
        req.extend_from_slice(note);
        let (_, ok) = exchange(core, &mut up, req).await;
        if ok {
            return Some((to, sid));
        }
    }
    None
}

/// Sends one request on `up` and reads its whole answer (bounded by `upstream_timeout`):
/// the `Mcp-Session-Id` it carried, and whether the status was 2xx.
async fn exchange(core: &Core, up: &mut Conn, req: Vec<u8>) -> (Option<Vec<u8>>, bool) {
    let len = req.len();
    let (w, _) = write_range(up, req, 0..len).await;
    if w.is_err() {
        return (None, false);
    }
    let deadline = monoio::time::Instant::now() + core.shared.config.proxy.upstream_timeout;
    let mut buf = Vec::with_capacity(4096);
    let head_len = loop {
        if let Some(n) = http::head_len(&buf) {
            break n;
        }
        let Ok((r, b)) = monoio::time::timeout_at(deadline, read_more(up, buf)).await else {
            return (None, false);
        };
        buf = b;
        if !matches!(r, Ok(n) if n > 0) || buf.len() > 64 * 1024 {
            return (None, false);
        }
    };
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut storage);
    if !matches!(
        resp.parse(&buf[..head_len]),
        Ok(httparse::Status::Complete(_))
    ) {
        return (None, false);
    }
    let ok = resp.code.is_some_and(|c| (200..300).contains(&c));
    let mut sid = None;
    let mut framing = Framing::UntilClose;
    for hd in resp.headers.iter() {
        if hd.name.eq_ignore_ascii_case("mcp-session-id") {
            sid = Some(hd.value.trim_ascii().to_vec());
        } else if hd.name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(http::parse_content_length(hd.value).unwrap_or(0));
        } else if hd.name.eq_ignore_ascii_case("transfer-encoding")
            && http::has_token(hd.value, b"chunked")
        {
            framing = Framing::Chunked(ChunkedDecoder::new());
        }
    }
    if matches!(resp.code, Some(202 | 204)) && matches!(framing, Framing::UntilClose) {
        framing = Framing::None;
    }
    let mut err = false;
    let mut avail = buf.split_off(head_len);
    loop {
        let (_, done) = body_step(&mut framing, &avail, &mut err);
        if done || err {
            break;
        }
        avail.clear();
        let Ok((r, b)) = monoio::time::timeout_at(deadline, read_more(up, avail)).await else {
            return (sid, false);
        };
        avail = b;
        if !matches!(r, Ok(n) if n > 0) {
            break;
        }
    }
    (sid, ok && !err)
}

/// Ends a request's in-flight count on its backend however the request ends.
struct InFlight<'a> {
    core: &'a Core,
    gi: usize,
    bi: usize,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.core.bal.end(self.gi, self.bi);
        if let Ok(mut rec) = self.core.rec.try_borrow_mut() {
            rec.gauge(Gauge::UpstreamBusy, -1);
            rec.backend_gauge(self.gi, self.bi, 0, -1);
        }
    }
}

/// The key `balance = "hash"` hashes for this request, if the group hashes and the request
/// has one.
fn balance_key(
    core: &Core,
    c: &ClientConn,
    h: &ReqHead,
    gi: usize,
    env: Option<&protocol::Envelope<'_>>,
) -> Option<u64> {
    let group = core.shared.config.servers.get(gi)?;
    let Balance::Hash(key) = &group.balance else {
        return None;
    };
    match key {
        HashKey::Tool => {
            if let Some(n) = env.and_then(|e| e.name) {
                return Some(lb::hash_key(n.raw()));
            }
            h.mcp_name
                .clone()
                .map(|r| lb::hash_key(c.buf[r].trim_ascii()))
        }
        HashKey::Session => h
            .session
            .clone()
            .map(|r| lb::hash_key(c.buf[r].trim_ascii())),
        HashKey::ClientIp => Some(match c.peer.ip() {
            std::net::IpAddr::V4(a) => lb::hash_key(&a.octets()),
            std::net::IpAddr::V6(a) => lb::hash_key(&a.octets()),
        }),
        HashKey::Header(name) => h
            .headers
            .iter()
            .find(|(n, _)| c.buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| lb::hash_key(c.buf[v.clone()].trim_ascii())),
    }
}

/// The routing facts rate and concurrency rules match on, decoded once per request (no
/// allocation unless a name carries JSON escapes).
struct RequestFacts<'a> {
    server: &'a str,
    method: std::borrow::Cow<'a, str>,
    tool: Option<std::borrow::Cow<'a, str>>,
    uri: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> RequestFacts<'a> {
    fn of(core: &'a Core, gi: usize, env: &protocol::Envelope<'a>) -> Self {
        let method = env.method.map(|m| m.decode()).unwrap_or_default();
        let tool = if method == "tools/call" || method == "prompts/get" {
            env.name.map(|n| n.decode())
        } else {
            None
        };
        RequestFacts {
            server: core
                .shared
                .config
                .servers
                .get(gi)
                .map_or("", |g| g.name.as_str()),
            method,
            tool,
            uri: env.uri.map(|u| u.decode()),
        }
    }

    fn info(&self) -> ratelimit::RequestInfo<'_> {
        ratelimit::RequestInfo {
            server: self.server,
            method: &self.method,
            tool: self.tool.as_deref(),
            uri: self.uri.as_deref(),
        }
    }
}

/// The keyed hash of a caller identity (`session`, `client-ip`, `header:NAME`) for this
/// request, or `None` when it has none; `global` has no caller and is the caller's to map.
fn caller_key(core: &Core, c: &ClientConn, h: &ReqHead, ks: &ratelimit::KeySource) -> Option<u64> {
    let hasher = &core.shared.key_hasher;
    match ks {
        ratelimit::KeySource::Global => None,
        ratelimit::KeySource::Session => h
            .session
            .clone()
            .map(|r| hasher.hash_key(c.buf[r].trim_ascii())),
        ratelimit::KeySource::ClientIp => Some(match c.peer.ip() {
            std::net::IpAddr::V4(a) => hasher.hash_key(&a.octets()),
            std::net::IpAddr::V6(a) => hasher.hash_key(&a.octets()),
        }),
        ratelimit::KeySource::Header(name) => h
            .headers
            .iter()
            .find(|(n, _)| c.buf[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| hasher.hash_key(c.buf[v.clone()].trim_ascii())),
        ratelimit::KeySource::Identity => (c.caller.key != 0).then_some(c.caller.key),
    }
}

/// Applies the configured rate limits to one parsed request: `Some((rule, retry_after_ns))`
/// when a limit rejects it. Lock-free (the limits are atomics shared by every core).
fn check_limits(
    core: &Core,
    c: &ClientConn,
    h: &ReqHead,
    gi: usize,
    env: &protocol::Envelope<'_>,
) -> Option<(usize, u64)> {
    let limits = core.shared.limits.as_ref()?;
    let facts = RequestFacts::of(core, gi, env);
    let info = facts.info();
    let key_of = |ks: &ratelimit::KeySource| match ks {
        ratelimit::KeySource::Global => Some(0),
        ks => caller_key(core, c, h, ks),
    };
    let now_ns = core.shared.epoch.elapsed().as_nanos() as u64;
    match limits.check(&info, key_of, now_ns) {
        ratelimit::Decision::Reject {
            rule,
            retry_after_ns,
        } => Some((rule, retry_after_ns)),
        _ => None,
    }
}

/// Relays a backend's protected-resource metadata document (`resource_metadata_passthrough`):
/// a GET of `/.well-known/oauth-protected-resource{backend path}` to the group's first
/// eligible backend (on a connection then closed), its status and body (at most 64 KiB) passed back as JSON.
async fn relay_metadata(core: &Core, c: &mut ClientConn, gi: usize, close: bool) -> Next {
    const MAX: usize = 64 * 1024;
    let group = &core.shared.config.servers[gi];
    let now = balance::now_ns(core.shared.epoch);
    let rt = &core.shared.groups[gi];
    let bi = (0..group.backends.len())
        .find(|&i| rt.health.is_eligible(i, now))
        .unwrap_or(0);
    let Some(backend) = group.backends.get(bi) else {
        return reply_error(c, 503, None, -32603, "no backend available", close).await;
    };
    let bpath = backend.path.split('?').next().unwrap_or("");
    let req = format!(
        "GET /.well-known/oauth-protected-resource{} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        bpath.trim_end_matches('/'),
        backend.authority
    );
    let timeout = core.shared.config.proxy.upstream_timeout;
    let fetched = monoio::time::timeout(timeout, async {
        // A connection like any request's (TLS to an https backend), closed after the answer.
        let (mut s, _) = core.upstream(gi, bi).await?;
        let req = req.into_bytes();
        let len = req.len();
        let (w, _) = write_range(&mut s, req, 0..len).await;
        w?;
        let mut buf = core.take_buf();
        loop {
            let (r, b) = read_more(&mut s, buf).await;
            buf = b;
            match r {
                Ok(0) => return Ok(buf),
                Ok(_) if buf.len() <= MAX => {}
                Ok(_) => return Err(io::Error::other("metadata document too large")),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let Ok(Ok(raw)) = fetched else {
        tracing::warn!(backend = %backend.name, "protected-resource metadata: backend unreachable or too slow");
        return reply_error(c, 502, None, -32603, "backend unreachable", close).await;
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(&raw) else {
        core.give_buf(raw);
        return reply_error(c, 502, None, -32603, "bad answer from backend", close).await;
    };
    let status = resp.code.unwrap_or(502);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && http::has_token(h.value, b"chunked")
    });
    let mut body = Vec::new();
    if chunked {
        let mut dec = ChunkedDecoder::new();
        let _ = dec.feed(&raw[n..], |d| body.extend_from_slice(d));
    } else {
        body.extend_from_slice(&raw[n..]);
    }
    core.give_buf(raw);
    c.out.clear();
    let _ = write!(
        c.out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: public, max-age=300\r\naccess-control-allow-origin: *\r\n{}\r\n",
        http::reason(status),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    );
    c.out.extend_from_slice(&body);
    c.meta.status = status;
    c.meta.by_proxy = true;
    send_out(c, if close { Next::Close } else { Next::KeepAlive }).await
}

/// Largest body read from a request whose credential was refused (to answer with its id).
const DENIED_BODY_MAX: u64 = 64 * 1024;

/// Refuses a request whose `Origin` is not allowed (403) or whose credential the group does not
/// accept (401, or 403 for missing scopes); on success `c.caller` says who it is.
fn check_access(
    core: &Core,
    c: &mut ClientConn,
    h: &ReqHead,
    gi: usize,
) -> Result<(), crate::auth::Denial> {
    let group = &core.shared.config.servers[gi];
    let buf = &c.buf;
    let header = |want: &[u8]| {
        h.headers
            .iter()
            .find(|(n, _)| buf[n.clone()].eq_ignore_ascii_case(want))
            .map(|(_, v)| buf[v.clone()].trim_ascii())
    };
    if let Some(allowed) = &group.allowed_origins {
        if let Some(origin) = header(b"origin") {
            let origin = origin.strip_suffix(b"/").unwrap_or(origin);
            if !allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
            {
                return Err(crate::auth::Denial {
                    status: 403,
                    error: None,
                    message: "Origin not allowed",
                });
            }
        }
    }
    if !group.auth.required() {
        // No credential checked in this group: no header scan on the request path.
        c.caller.reset();
        return Ok(());
    }
    let verdict = crate::auth::check(
        &group.auth,
        header(b"authorization"),
        header(b"x-api-key"),
        &core.shared.key_hasher,
        &mut c.caller,
    );
    let jwt = match c.caller.jwt {
        crate::auth::JwtCheck::None => None,
        crate::auth::JwtCheck::Cached => Some(Counter::JwtCacheHits),
        crate::auth::JwtCheck::Verified => Some(Counter::JwtVerifications),
    };
    if let Some(k) = jwt {
        core.rec.borrow_mut().count(k, 1);
    }
    verdict
}

/// Checks the 2026-07-28 mirror headers against the body.
fn header_mismatch(buf: &[u8], h: &ReqHead, env: &protocol::Envelope<'_>) -> Option<&'static str> {
    if let Some(r) = h.mcp_method.clone() {
        let hv = buf[r].trim_ascii();
        let ok = env
            .method
            .is_some_and(|m| std::str::from_utf8(hv).is_ok_and(|s| m.eq_str(s)));
        if !ok {
            return Some("Mcp-Method header does not match the body's method");
        }
    }
    if let Some(r) = h.mcp_name.clone() {
        let hv = buf[r].trim_ascii();
        let target = env.name.or(env.uri);
        let ok = target.is_some_and(|n| std::str::from_utf8(hv).is_ok_and(|s| n.eq_str(s)));
        if !ok {
            return Some("Mcp-Name header does not match the body's name");
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
fn build_upstream_request(
    out: &mut Vec<u8>,
    buf: &[u8],
    h: &ReqHead,
    backend: &Backend,
    backend_sid: Option<&[u8]>,
    body: &[u8],
    has_body: bool,
    credential: &crate::auth::UpstreamCredential,
) {
    let strip_auth = !matches!(credential, crate::auth::UpstreamCredential::Forward);
    out.extend_from_slice(&buf[h.method.clone()]);
    out.push(b' ');
    out.extend_from_slice(backend.path.as_bytes());
    out.extend_from_slice(&buf[h.query.clone()]);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (n, v) in &h.headers {
        let name = &buf[n.clone()];
        if http::is_hop_by_hop(name) {
            continue;
        }
        // A caller's mcplb API key is mcplb's credential, never passed to a backend.
        if strip_auth
            && (name.eq_ignore_ascii_case(b"authorization")
                || name.eq_ignore_ascii_case(b"x-api-key"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&buf[v.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    if let crate::auth::UpstreamCredential::Inject(secret) = credential {
        out.extend_from_slice(b"authorization: ");
        out.extend_from_slice(secret.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(sid) = backend_sid {
        out.extend_from_slice(b"mcp-session-id: ");
        out.extend_from_slice(sid);
        out.extend_from_slice(b"\r\n");
    }
    if has_body || !body.is_empty() {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// How the upstream response body is framed.
enum Framing {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// The parts of an upstream response head the body loop needs.
struct RespHead {
    status: u16,
    new_session: bool,
    framing: Framing,
    up_close: bool,
    is_sse: bool,
}

/// What a complete upstream head turned out to be.
enum HeadKind {
    /// An interim 1xx answer to skip.
    Interim,
    /// The final head; the rewritten client head (without its framing lines) is in `out`.
    Final(RespHead),
}

/// Parses an upstream response head and writes the client's head into `out`: hop-by-hop
/// headers dropped, a new `Mcp-Session-Id` sealed. Sync, so that the header array never
/// lives across an await (it would bloat every connection's task).
fn rewrite_response_head(
    sealer: &SessionSealer,
    head: &[u8],
    backend_tag: u32,
    current: Option<(&[u8], &[u8])>,
    out: &mut Vec<u8>,
) -> Result<HeadKind, &'static str> {
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut storage);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("malformed response from backend"),
    }
    let status = resp.code.unwrap_or(502);
    if status < 100 {
        // httparse reads any three digits: "020" would go out as the two-digit "20".
        return Err("bad status code from backend");
    }
    if (100..200).contains(&status) && status != 101 {
        return Ok(HeadKind::Interim);
    }
    let mut up_close = resp.version == Some(0);
    let mut is_sse = false;
    let mut has_accel_header = false;
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", status, resp.reason.unwrap_or(""));
    let mut cl = None;
    let mut chunked = false;
    let mut new_session = false;
    for hd in resp.headers.iter() {
        let name = hd.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = Some(
                http::parse_content_length(hd.value).ok_or("bad content-length from backend")?,
            );
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = http::has_token(hd.value, b"chunked");
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            if http::has_token(hd.value, b"close") {
                up_close = true;
            } else if http::has_token(hd.value, b"keep-alive") && resp.version == Some(0) {
                up_close = false;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-type")
            && hd
                .value
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
        {
            is_sse = true;
        }
        if name.eq_ignore_ascii_case(b"mcp-session-id") {
            out.extend_from_slice(b"mcp-session-id: ");
            match current {
                // The backend repeats the session's own id (some servers do on every
                // answer): give the client back the id it sent, not a fresh sealing of it.
                Some((sealed, backend_sid)) if backend_sid == hd.value.trim_ascii() => {
                    out.extend_from_slice(sealed);
                }
                _ => {
                    sealer
                        .seal(backend_tag, hd.value.trim_ascii(), out)
                        .map_err(|_| "backend session id too long")?;
                    new_session = true;
                }
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        if http::is_hop_by_hop(name) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-accel-buffering") {
            has_accel_header = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(hd.value);
        out.extend_from_slice(b"\r\n");
    }
    if is_sse && !has_accel_header {
        // Tell intermediaries (nginx and friends) not to buffer the stream.
        out.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    let framing = if status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked(ChunkedDecoder::new())
    } else if let Some(n) = cl {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(HeadKind::Final(RespHead {
        status,
        new_session,
        framing,
        up_close,
        is_sse,
    }))
}

/// Forwards the response whose head is `ubuf[..head_len]`. Returns what to do with the client
/// connection and whether the upstream connection may be pooled.
#[allow(clippy::too_many_arguments)]
async fn forward_response(
    core: &Core,
    c: &mut ClientConn,
    up: &mut Conn,
    mut ubuf: Vec<u8>,
    head_len: usize,
    backend_tag: u32,
    backend_sid: Option<&[u8]>,
    keep: bool,
) -> (Next, bool) {
    let cfg = &core.shared.config.proxy;
    let mut out = std::mem::take(&mut c.out);
    let mut head_len = head_len;
    let RespHead {
        status,
        new_session,
        mut framing,
        up_close,
        is_sse,
    } = loop {
        out.clear();
        let current = backend_sid.map(|b| (c.req_sid.as_slice(), b));
        match rewrite_response_head(
            &core.shared.sealer,
            &ubuf[..head_len],
            backend_tag,
            current,
            &mut out,
        ) {
            Ok(HeadKind::Final(h)) => break h,
            Ok(HeadKind::Interim) => {
                // Skip interim 1xx answers (we never send Expect upstream, but 103 may come).
                ubuf.drain(..head_len);
                loop {
                    if let Some(n) = http::head_len(&ubuf) {
                        head_len = n;
                        break;
                    }
                    let b = std::mem::take(&mut ubuf);
                    let (r, b) = read_more(up, b).await;
                    ubuf = b;
                    if !matches!(r, Ok(n) if n > 0) {
                        c.ubuf = ubuf;
                        c.out = out;
                        let msg = "backend closed the connection";
                        return (reply_error(c, 502, None, -32603, msg, !keep).await, false);
                    }
                }
            }
            Err(msg) => {
                tracing::warn!(error = msg, "bad response head from backend");
                c.ubuf = ubuf;
                c.out = out;
                return (reply_error(c, 502, None, -32603, msg, !keep).await, false);
            }
        }
    };
    c.meta.status = status;
    c.meta.new_session = new_session;
    if new_session {
        // Kept for the failover table (initialize answers only: off the hot path).
        c.new_sid.clear();
        if let Some(i) = memchr::memmem::find(&out, b"mcp-session-id: ") {
            let v = &out[i + 16..];
            let end = memchr::memchr(b'\r', v).unwrap_or(v.len());
            c.new_sid.extend_from_slice(&v[..end]);
        }
    }
    c.meta.sse = is_sse;
    let _sse_open = is_sse.then(|| SseOpen::new(core));
    // During a shutdown the answer tells the client this connection ends with it.
    let mut client_close = !keep || SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    match &framing {
        Framing::None => out.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked(_) => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => client_close = true,
    }
    if client_close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    // Body bytes that came with the head.
    let mut pos = head_len;
    let mut body_done;
    let mut extra = false;
    let mut framing_error = false;
    {
        let avail = &ubuf[pos..];
        let (take, done) = body_step(&mut framing, avail, &mut framing_error);
        // A JSON answer that arrived whole: note whether it is a JSON-RPC error. Only up to
        // its first `result`/`error` member is read (criterion, `--bench parse`: 54 ns on a
        // small answer and on an 8 KiB one, where the validating parse took 200 ns and 2.5 µs).
        // SSE answers and bodies spread over reads are not looked at.
        if done
            && !is_sse
            && matches!(framing, Framing::Length(_))
            && core.shared.config.proxy.stats
        {
            c.meta.jsonrpc_error = protocol::response_outcome(&avail[..take]) == Some(true);
        }
        out.extend_from_slice(&avail[..take]);
        pos += take;
        body_done = done;
        if done && pos < ubuf.len() {
            extra = true;
        }
    }
    if body_done {
        c.meta.upstream_done = Some(Instant::now());
    }
    if is_sse && pos > head_len {
        c.meta.first_event = Some(Instant::now());
    }
    let len = out.len();
    c.meta.bytes_out += len as u64;
    let (w, mut out) = write_range(&mut c.stream, out, 0..len).await;
    out.clear();
    c.out = out;
    if w.is_err() {
        c.ubuf = ubuf;
        return (Next::Close, false);
    }
    // Stream the rest as it arrives.
    while !body_done && !framing_error {
        ubuf.clear();
        let b = std::mem::take(&mut ubuf);
        let read = if is_sse {
            Ok(read_more(up, b).await)
        } else {
            monoio::time::timeout(cfg.upstream_timeout, read_more(up, b)).await
        };
        let (r, b) = match read {
            Ok(x) => x,
            Err(_) => {
                c.ubuf = core.take_buf();
                return (Next::Close, false);
            }
        };
        ubuf = b;
        if !matches!(r, Ok(n) if n > 0) {
            // EOF ends an until-close body; any other body is cut short, and closing the client
            // connection is the only honest way to say so mid-body.
            c.ubuf = ubuf;
            return (Next::Close, false);
        }
        let (take, done) = body_step(&mut framing, &ubuf, &mut framing_error);
        body_done = done;
        if done {
            c.meta.upstream_done = Some(Instant::now());
            extra = take < ubuf.len();
        }
        c.meta.bytes_out += take as u64;
        if is_sse && c.meta.first_event.is_none() && take > 0 {
            c.meta.first_event = Some(Instant::now());
        }
        let (w, b) = write_range(&mut c.stream, ubuf, 0..take).await;
        ubuf = b;
        if w.is_err() {
            c.ubuf = ubuf;
            return (Next::Close, false);
        }
    }
    c.ubuf = ubuf;
    if framing_error {
        return (Next::Close, false);
    }
    let reusable = !up_close && !extra && !matches!(framing, Framing::UntilClose);
    (
        if client_close {
            Next::Close
        } else {
            Next::KeepAlive
        },
        reusable,
    )
}

/// Counts an SSE stream as open while it is forwarded (the gauge falls when this drops).
struct SseOpen<'a>(&'a Core);

impl<'a> SseOpen<'a> {
    fn new(core: &'a Core) -> Self {
        core.rec.borrow_mut().gauge(Gauge::SseOpen, 1);
        SseOpen(core)
    }
}

impl Drop for SseOpen<'_> {
    fn drop(&mut self) {
        if let Ok(mut rec) = self.0.rec.try_borrow_mut() {
            rec.gauge(Gauge::SseOpen, -1);
        }
    }
}

/// Advances the body framing over `avail`: how many bytes belong to the body, and whether the
/// body is complete.
fn body_step(framing: &mut Framing, avail: &[u8], error: &mut bool) -> (usize, bool) {
    match framing {
        Framing::None => (0, true),
        Framing::Length(rem) => {
            let take = (*rem).min(avail.len() as u64);
            *rem -= take;
            (take as usize, *rem == 0)
        }
        Framing::Chunked(dec) => match dec.feed(avail, |_| {}) {
            Ok(n) => (n, dec.is_done()),
            Err(_) => {
                *error = true;
                (0, false)
            }
        },
        Framing::UntilClose => (avail.len(), false),
    }
}

/// The data path's head handling behind plain views, for `crate::fuzzing`: the same functions
/// the workers call. Not an API.
pub(crate) mod head_views {
    use std::ops::Range;

    use super::{HeadError, HeadKind, ReqHead};
    use crate::http::{self, ChunkedDecoder};
    use crate::session::SessionSealer;

    /// What the request-head parse made of a head: ranges into the buffer it was given.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[allow(missing_docs)]
    pub struct RequestHead {
        pub method: Range<usize>,
        pub path: Range<usize>,
        pub query: Range<usize>,
        pub minor: u8,
        pub headers: Vec<(Range<usize>, Range<usize>)>,
        pub content_length: Option<u64>,
        pub chunked: bool,
        pub close: bool,
        pub expect_continue: bool,
        pub session: Option<Range<usize>>,
        pub mcp_method: Option<Range<usize>>,
        pub mcp_name: Option<Range<usize>>,
        /// Length of the head through its blank line.
        pub len: usize,
    }

    /// Why a request head was refused.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HeadRefusal {
        /// Answered 431.
        TooManyHeaders,
        /// Answered 400 with this message.
        Bad(&'static str),
    }

    /// The workers' request-head parse of the head at the start of `buf` (found as they find
    /// it, with `http::head_len`); `None` while no complete head is there.
    pub fn parse_request_head(
        buf: &[u8],
        max_headers: usize,
    ) -> Option<Result<RequestHead, HeadRefusal>> {
        let len = http::head_len(buf)?;
        let mut h = ReqHead::default();
        Some(match super::parse_head(buf, len, max_headers, &mut h) {
            Ok(()) => Ok(RequestHead {
                method: h.method,
                path: h.path,
                query: h.query,
                minor: h.minor,
                headers: h.headers,
                content_length: h.content_length,
                chunked: h.chunked,
                close: h.close,
                expect_continue: h.expect_continue,
                session: h.session,
                mcp_method: h.mcp_method,
                mcp_name: h.mcp_name,
                len: h.len,
            }),
            Err(HeadError::TooManyHeaders) => Err(HeadRefusal::TooManyHeaders),
            Err(HeadError::Bad(why)) => Err(HeadRefusal::Bad(why)),
        })
    }

    /// How the body after a response head is framed.
    #[derive(Debug)]
    pub enum ResponseFraming {
        None,
        Length(u64),
        Chunked(ChunkedDecoder),
        UntilClose,
    }

    /// What the response-head rewrite made of an upstream head.
    #[derive(Debug)]
    pub enum ResponseHead {
        /// A 1xx answer the workers skip.
        Interim,
        /// The final head; the client's head (without framing lines and the blank line) was
        /// written to `out`.
        Final {
            status: u16,
            new_session: bool,
            framing: ResponseFraming,
            up_close: bool,
            is_sse: bool,
        },
    }

    /// The workers' rewrite of an upstream response head `head` (through its blank line) for
    /// the client, written to `out`. `current` is the sealed id the client sent and the
    /// backend's id inside it.
    pub fn rewrite_response_head(
        sealer: &SessionSealer,
        head: &[u8],
        backend_tag: u32,
        current: Option<(&[u8], &[u8])>,
        out: &mut Vec<u8>,
    ) -> Result<ResponseHead, &'static str> {
        Ok(
            match super::rewrite_response_head(sealer, head, backend_tag, current, out)? {
                HeadKind::Interim => ResponseHead::Interim,
                HeadKind::Final(h) => ResponseHead::Final {
                    status: h.status,
                    new_session: h.new_session,
                    framing: match h.framing {
                        super::Framing::None => ResponseFraming::None,
                        super::Framing::Length(n) => ResponseFraming::Length(n),
                        super::Framing::Chunked(d) => ResponseFraming::Chunked(d),
                        super::Framing::UntilClose => ResponseFraming::UntilClose,
                    },
                    up_close: h.up_close,
                    is_sse: h.is_sse,
                },
            },
        )
    }
}
