//! The runtime shell around the data path: one worker thread per core, each with its own
//! monoio runtime, listener (`SO_REUSEPORT`), per-core state and idle-connection parking. The
//! accept loop here admits connections (counted, limited per client address) and gives each
//! a task ([`conn`]); a panic in a connection's task closes that connection only.

pub(crate) mod clock;
pub(crate) mod conn;
pub(crate) mod core;
pub(crate) mod flush;
pub(crate) mod kernel_timer;
pub(crate) mod linger;
pub(crate) mod listen;
pub(crate) mod loop_gap;
pub(crate) mod park;
pub(crate) mod proxy_protocol;
pub(crate) mod reuse;
pub(crate) mod shared;
pub(crate) mod shutdown;
pub(crate) mod slots;
pub(crate) mod timer;

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use monoio::io::Canceller;
use monoio::net::{TcpListener, TcpStream};

use crate::control::stats::Counter;
use crate::runtime::core::Core;

/// Set once a graceful shutdown has begun: listeners close, keep-alive connections close
/// after their current request, idle ones and standalone GET streams at once (see
/// [`shutdown`]).
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Client connections open in the whole process (shutdown waits for them).
pub static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
/// Workers that, in a shutdown, handed their last access-log lines to the writer once their
/// connections had closed (the exit waits for them, briefly, then drains the writer).
pub static FLUSHED_AT_SHUTDOWN: AtomicUsize = AtomicUsize::new(0);
/// Workers that, in a shutdown, stopped accepting and counted in [`OPEN_CONNECTIONS`] what the
/// shutdown must still wait for (the era bridge's DELETEs, a connection that raced the
/// shutdown): until every worker has, no connections open does not yet mean done.
pub static SHUTDOWN_SEEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Client connections open on this worker: the `client_connections` gauge, read by the
    /// statistics flush.
    static CORE_OPEN: Cell<i64> = const { Cell::new(0) };
}

/// An open client connection's place in the connection counts, and its per-client-address
/// permit: released when dropped, however the connection ends (closed, expired while parked,
/// or its task panicked).
pub(crate) struct ClientSlot {
    _permit: Option<ratelimit::OwnedPermit>,
}

impl ClientSlot {
    pub(crate) fn open(permit: Option<ratelimit::OwnedPermit>) -> Self {
        OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed);
        CORE_OPEN.with(|n| n.set(n.get() + 1));
        flush::note();
        ClientSlot { _permit: permit }
    }

    /// Holds `permit` for the connection's life (its client became known after accept: a
    /// PROXY protocol header named it).
    pub(crate) fn set_permit(&mut self, permit: ratelimit::OwnedPermit) {
        self._permit = Some(permit);
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
        CORE_OPEN.with(|n| n.set(n.get() - 1));
        flush::note();
    }
}

/// Which workers are running: `/readyz` reports one that died.
pub struct WorkerStatus {
    alive: Vec<AtomicBool>,
}

impl WorkerStatus {
    /// `n` workers, counted as running from the start (each thread marks itself dead when
    /// it ends).
    pub(crate) fn new(n: usize) -> Arc<Self> {
        Arc::new(WorkerStatus {
            alive: (0..n).map(|_| AtomicBool::new(true)).collect(),
        })
    }

    /// The workers that are not running (their indices).
    pub fn dead(&self) -> Vec<usize> {
        (0..self.alive.len())
            .filter(|&i| !self.alive[i].load(Ordering::Relaxed))
            .collect()
    }

    /// Keeps worker `i` marked running until the returned guard drops (its thread ends,
    /// however).
    pub(crate) fn running(self: &Arc<Self>, i: usize) -> WorkerAlive {
        if let Some(a) = self.alive.get(i) {
            a.store(true, Ordering::Relaxed);
        }
        WorkerAlive {
            status: self.clone(),
            index: i,
        }
    }
}

/// Held by a worker thread while it runs.
pub(crate) struct WorkerAlive {
    status: Arc<WorkerStatus>,
    index: usize,
}

impl Drop for WorkerAlive {
    fn drop(&mut self) {
        if let Some(a) = self.status.alive.get(self.index) {
            a.store(false, Ordering::Relaxed);
        }
        if !SHUTDOWN.load(Ordering::Relaxed) {
            tracing::error!(worker = self.index, "worker stopped: /readyz reports it");
        }
    }
}

/// Failure injection for the containment tests, in debug builds only (compiled out of release
/// builds): `MCPLB_TEST_PANIC_PATH=/p` makes a request for path `/p` panic inside its
/// connection's task; `MCPLB_TEST_KILL_WORKER=N` ends worker N's thread with a panic as it
/// starts; `MCPLB_TEST_ERA_IDLE_MS=N` lets bridged backend sessions idle N ms (not 5 min).
/// Read once.
#[cfg(debug_assertions)]
pub(crate) mod test_hooks {
    use std::sync::OnceLock;

    fn var(name: &str, cell: &'static OnceLock<Option<String>>) -> Option<&'static str> {
        cell.get_or_init(|| std::env::var(name).ok()).as_deref()
    }

    /// Panics when `path` is the configured panic path (reported at the caller).
    #[track_caller]
    pub(crate) fn panic_on_path(path: &[u8]) {
        static PATH: OnceLock<Option<String>> = OnceLock::new();
        if var("MCPLB_TEST_PANIC_PATH", &PATH).is_some_and(|p| p.as_bytes() == path) {
            panic!("MCPLB_TEST_PANIC_PATH: injected panic in a connection's task");
        }
    }

    /// How long a bridged backend session may idle (`MCPLB_TEST_ERA_IDLE_MS`), when set.
    pub(crate) fn era_idle() -> Option<std::time::Duration> {
        static IDLE: OnceLock<Option<String>> = OnceLock::new();
        let ms = var("MCPLB_TEST_ERA_IDLE_MS", &IDLE)?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    }

    /// How long a bridged call waits for its client's retry (`MCPLB_TEST_ERA_PARK_MS`), when
    /// set.
    pub(crate) fn era_park() -> Option<std::time::Duration> {
        static PARK: OnceLock<Option<String>> = OnceLock::new();
        let ms = var("MCPLB_TEST_ERA_PARK_MS", &PARK)?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    }

    /// Panics when worker `index` is the one configured to die.
    pub(crate) fn kill_worker(index: usize) {
        static WORKER: OnceLock<Option<String>> = OnceLock::new();
        if var("MCPLB_TEST_KILL_WORKER", &WORKER).and_then(|w| w.parse().ok()) == Some(index) {
            panic!("MCPLB_TEST_KILL_WORKER: injected panic ending worker {index}");
        }
    }
}

/// Runs `fut`, containing a panic inside it: `None` when it panicked. The future is dropped
/// either way, so what it holds (its connection, buffers, counts) is released. No allocation.
pub(crate) async fn contained<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        // Each poll of a client task shares one clock read (`clock`).
        clock::poll_edge(true);
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx)));
        clock::poll_edge(false);
        match polled {
            Ok(Poll::Ready(v)) => Poll::Ready(Some(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(None),
        }
    })
    .await
}

/// Spawns the task that serves a client connection, with its panics contained: a panic closes
/// that connection only, is counted (`worker_panics`) and logged (the panic message, with its
/// source location, went to stderr first).
pub(crate) fn spawn_client(core: Rc<Core>, fut: impl Future<Output = ()> + 'static) {
    monoio::spawn(async move {
        if contained(fut).await.is_none() {
            core.latest()
                .rec
                .borrow_mut()
                .count(Counter::WorkerPanics, 1);
            tracing::error!(
                worker = core.index,
                "a connection's task panicked: that connection was closed, the worker goes on"
            );
        }
    });
}

/// Runs one worker's accept loop until shutdown.
pub async fn run_worker(
    live: Arc<crate::control::reload::Live>,
    listener: std::net::TcpListener,
    index: usize,
    h3: Option<crate::h3::H3Socket>,
) -> io::Result<()> {
    let listener = TcpListener::from_std(listener)?;
    #[cfg(debug_assertions)]
    test_hooks::kill_worker(index);
    // Every state still in use (a reload leaves the old one to the requests under way).
    let cores: Rc<RefCell<Vec<Rc<Core>>>> = Rc::new(RefCell::new(Vec::new()));
    let park = Rc::new(park::IdleSet::new()?);
    let mut core = Core::new(live, cores.clone(), park.clone(), index, None);
    let states = cores.clone();
    let newest = move || {
        let last = states.borrow().last().cloned();
        last.map(|c| c.latest())
    };
    if let Some(h3) = h3 {
        let states = cores.clone();
        let newest = move || {
            let last = states.borrow().last().cloned();
            last.map(|c| c.latest())
        };
        monoio::spawn(crate::h3::endpoint::drive(h3, newest));
    }
    monoio::spawn(conn::park_loop(park, newest));
    monoio::spawn(flush::flush_loop(cores));
    let mut canceller = Canceller::new();
    // Woken from the thread that begins a shutdown or publishes a reload: an idle worker
    // wakes for nothing else.
    let mut notice = std::pin::pin!(shutdown::WorkerNotice::new());
    loop {
        // Accept until a shutdown begins. The accept is then cancelled and awaited, so a
        // connection that raced the cancellation is still served, never lost.
        let accepted = {
            let accept = listener.cancelable_accept(canceller.handle());
            let mut accept = std::pin::pin!(accept);
            loop {
                match before(accept.as_mut(), notice.as_mut()).await {
                    Some(r) => break r,
                    None if SHUTDOWN.load(Ordering::Relaxed) => {
                        canceller = canceller.cancel();
                        break accept.await;
                    }
                    // A reload: this core's new state now (it takes over the pools; the old
                    // one closes the connections to backends that left).
                    None => core = core.latest(),
                }
            }
        };
        if core.stale() || core.next.borrow().is_some() {
            // A reload: this core's new state (connections move to it at their next
            // request, see `Core::latest`).
            core = core.latest();
        }
        if SHUTDOWN.load(Ordering::Relaxed) {
            // Stop accepting: dropping the listener closes it, so the kernel sends new
            // connections to no one (clients see a refused connection, not a hang).
            drop(listener);
            // Standalone GET streams end now, and connections idle before a request close.
            shutdown::wake_all();
            // The backend sessions the era bridge holds end with a DELETE each; the shutdown
            // waits for it as for a connection.
            let ending = ClientSlot::open(None);
            let states = core.states.borrow().clone();
            monoio::spawn(async move {
                crate::data_path::era_sessions::end_all(states).await;
                drop(ending);
            });
            if let Ok((stream, peer)) = accepted {
                // One that raced the shutdown still gets served (with connection: close).
                let slot = ClientSlot::open(None);
                let fut =
                    conn::serve_client(core.clone(), stream, peer, slot, conn::Arrival::Accepted);
                spawn_client(core.clone(), fut);
            }
            SHUTDOWN_SEEN.fetch_add(1, Ordering::SeqCst);
            // Let the open connections finish; the process exits when they have.
            std::future::pending::<()>().await;
            return Ok(());
        }
        match accepted {
            Ok((stream, peer)) => admit(&core, stream, peer),
            Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => {}
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                if crate::control::logs::first_in_window("accept failed", "", "") {
                    tracing::warn!(error = %e, "accept failed");
                }
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Admits an accepted connection within the connection limits (in all and per client
/// address, trusted proxies exempt; past them it is closed at once, counted, before any byte
/// is read) and gives it a task.
fn admit(core: &Rc<Core>, stream: TcpStream, peer: std::net::SocketAddr) {
    let cfg = &core.shared.config.proxy;
    if OPEN_CONNECTIONS.load(Ordering::Relaxed) >= cfg.max_connections {
        core.rec.borrow_mut().count(Counter::ConnectionsRefused, 1);
        return;
    }
    // A PROXY protocol header's source gets its own slot, see `proxy_protocol::accept`.
    let Ok(permit) = per_ip_slot(core, peer.ip()) else {
        return;
    };
    let _ = stream.set_nodelay(true);
    set_cloexec(&stream);
    core.rec.borrow_mut().count(Counter::ConnectionsAccepted, 1);
    let slot = ClientSlot::open(permit);
    let fut = conn::serve_client(core.clone(), stream, peer, slot, conn::Arrival::Accepted);
    spawn_client(core.clone(), fut);
}

/// The client address was over `max_connections_per_ip` (counted in `connections_refused`).
pub(crate) struct OverLimit;

/// A slot of `max_connections_per_ip` for a client connection from `ip`, shared by every core
/// and by TCP and QUIC alike: `Ok(None)` for a trusted proxy (it carries many clients'
/// connections: no cap), `Err` when `ip` holds all its slots.
pub(crate) fn per_ip_slot(
    core: &Core,
    ip: std::net::IpAddr,
) -> Result<Option<ratelimit::OwnedPermit>, OverLimit> {
    if core.shared.config.proxy.client_address.trusted.contains(ip) {
        return Ok(None);
    }
    let hasher = &core.shared.key_hasher;
    let key = crate::data_path::route::ip_key(ip.to_canonical(), |b| hasher.hash_key(b));
    match core.shared.per_ip.try_acquire_owned(key) {
        Some(p) => Ok(Some(p)),
        None => {
            core.rec.borrow_mut().count(Counter::ConnectionsRefused, 1);
            Err(OverLimit)
        }
    }
}

/// A descriptor the runtime can only wait on for readability (the idle set's epoll set, a
/// timerfd), as the stream type monoio takes one in; it is never read or written through it.
pub(crate) fn watched(fd: std::os::fd::OwnedFd) -> io::Result<monoio::net::TcpStream> {
    monoio::net::TcpStream::from_std(std::net::TcpStream::from(fd))
}

/// `Box::pin(make())`, with the future written straight into its allocation: `Box::pin` of a
/// future value builds it on the stack first and copies its full size into the box (the
/// request path's future is several KiB, the virtual server's about 18 KiB: a memcpy of that
/// size per request).
#[inline(always)]
pub(crate) fn boxed<F: Future>(make: impl FnOnce() -> F) -> std::pin::Pin<Box<F>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}

/// Polls `fut` until it completes (`Some`) or `stop` does (`None`). On `None` the future is
/// left as it is: the caller cancels its operation and awaits it, so a result that raced
/// `stop` is still taken, never lost.
pub(crate) async fn before<F: Future, S: Future>(
    mut fut: std::pin::Pin<&mut F>,
    mut stop: std::pin::Pin<&mut S>,
) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = fut.as_mut().poll(cx) {
            return Poll::Ready(Some(r));
        }
        if stop.as_mut().poll(cx).is_ready() {
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
