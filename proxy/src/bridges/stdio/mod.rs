//! stdio backends: MCP servers that exist only as a command, served to mcplb's workers as an
//! ordinary Streamable HTTP backend.
//!
//! mcplb's data path speaks HTTP/1.1 to backends, so a command backend is a [`StdioBridge`]: an
//! in-process HTTP server on `127.0.0.1:0` (path `/mcp`) that talks newline-delimited JSON-RPC
//! to supervised child processes. It is not on the hot path of HTTP backends, so it uses std
//! threads and blocking I/O: an accept thread, a thread per HTTP connection, and per child a
//! stdout reader, a stdin writer (bounded queue) and a stderr logger.
//!
//! - Every request written to a child gets a bridge-unique integer id (and its
//!   `_meta.progressToken`, if any, becomes that same integer); the client's own id and token
//!   are restored, with their JSON type, on the way out. `notifications/cancelled` from a
//!   client is rewritten to the bridge id.
//! - A request is answered with JSON when the child answers with nothing in between; as soon
//!   as the child sends a notification or request first (progress, logging, sampling), or after
//!   [`SSE_AFTER`] of silence, the answer becomes an SSE stream, so progress reaches the client
//!   live and long tool calls keep the connection alive.
//! - Server messages with no request in flight go to the session's GET stream, or wait in a
//!   bounded queue for one.
//! - [`StdioMode::PerSession`]: each `initialize` takes a pre-started process from a pool; the
//!   session dies with it (404 afterwards, so the client initializes again).
//!   [`StdioMode::Shared`]: sessions share the processes; the first `initialize` is forwarded,
//!   later ones are answered with its result; a process that exits is restarted with backoff and
//!   initialized again with the stored parameters. Sessions whose client accepts server
//!   requests take turns on a shared process ([`gate`]), so that a server request has exactly
//!   one possible destination.

mod gate;
mod http;
mod process;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{json, Value};

use gate::{Arrival, Caller, Gate, Turn};
use process::{Event, Owner, Pending, Process, SendError, Spawner};

/// How long a request waits in silence before its answer switches to SSE with keepalives.
pub const SSE_AFTER: Duration = Duration::from_secs(5);
/// Interval of `: keepalive` comments on idle SSE streams.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Messages buffered per in-flight request between the child and its HTTP connection.
const REQUEST_QUEUE: usize = 64;
/// Server messages held per session while no GET stream is open.
const OUTBOX: usize = 256;
/// How long the stdout reader waits for a slow HTTP client before dropping a message.
const DELIVER_PATIENCE: Duration = Duration::from_secs(10);
/// Most HTTP connections served at once.
const MAX_CONNECTIONS: usize = 4096;
/// Calls waiting for their turn on one shared process (see [`gate`]).
const GATE_QUEUE: usize = 1024;
/// Client capabilities that let a server send the client requests.
const SERVER_REQUEST_CAPABILITIES: [&str; 3] = ["sampling", "elicitation", "roots"];

/// How a command backend's processes map to client sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdioMode {
    /// A process per client session, taken from a pool of pre-started ones.
    PerSession,
    /// All sessions share a few processes; JSON-RPC ids are rewritten.
    Shared,
}

/// A command backend.
#[derive(Clone, Debug)]
pub struct StdioConfig {
    /// Backend name for logs.
    pub name: String,
    /// argv; `command[0]` is looked up in `PATH`.
    pub command: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory of the children.
    pub cwd: Option<PathBuf>,
    /// Per-session or shared.
    pub mode: StdioMode,
    /// Pre-started idle processes (per-session) or the process count (shared).
    pub min: usize,
    /// Cap on processes.
    pub max: usize,
    /// Longest stdout line accepted; longer ones are logged, dropped, and the request they
    /// answered gets a JSON-RPC error. Also the cap on request bodies.
    pub max_line_bytes: usize,
    /// How long a request may go without any message from the child before it is answered
    /// with 504.
    pub request_timeout: Duration,
}

impl StdioConfig {
    /// A config with the defaults: `min` 1, `max` 64 (per-session) or 1 (shared), 4 MiB lines,
    /// 300 s request timeout.
    pub fn new(name: impl Into<String>, command: Vec<String>, mode: StdioMode) -> Self {
        StdioConfig {
            name: name.into(),
            command,
            env: Vec::new(),
            cwd: None,
            mode,
            min: 1,
            max: match mode {
                StdioMode::PerSession => 64,
                StdioMode::Shared => 1,
            },
            max_line_bytes: 4 * 1024 * 1024,
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// A running bridge: an HTTP endpoint for mcplb's workers, and the children behind it.
/// Dropping it stops the children like [`StdioBridge::shutdown`].
pub struct StdioBridge {
    inner: Arc<Inner>,
    addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    stopped: bool,
}

impl StdioBridge {
    /// Binds `127.0.0.1:0`, starts `min` processes (per-session) or the shared ones, and
    /// returns once it is listening. Fails when the command cannot be started.
    pub fn start(cfg: StdioConfig) -> anyhow::Result<StdioBridge> {
        if cfg.command.is_empty() {
            anyhow::bail!("backend {}: command is empty", cfg.name);
        }
        if cfg.max == 0 {
            anyhow::bail!("backend {}: max must be at least 1", cfg.name);
        }
        if cfg.max_line_bytes == 0 {
            anyhow::bail!("backend {}: max_line_bytes must be at least 1", cfg.name);
        }
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .with_context(|| format!("backend {}: cannot bind the stdio bridge", cfg.name))?;
        let addr = listener.local_addr()?;
        let slots = match cfg.mode {
            StdioMode::PerSession => 0,
            StdioMode::Shared => cfg.min.clamp(1, cfg.max),
        };
        let inner = Arc::new(Inner {
            spawner: Spawner::new()?,
            next_id: AtomicU64::new(1),
            sessions: Mutex::new(HashMap::new()),
            pool: Mutex::new(Pool::default()),
            slots: (0..slots).map(|_| Slot::default()).collect(),
            init_params: Mutex::new(None),
            procs: Mutex::new(HashMap::new()),
            shutdown: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            round_robin: AtomicUsize::new(0),
            cfg,
        });
        let mut bridge = StdioBridge {
            inner: inner.clone(),
            addr,
            accept: None,
            stopped: false,
        };
        let what = || {
            format!(
                "backend {}: cannot start `{}`",
                inner.cfg.name,
                inner.cfg.command.join(" ")
            )
        };
        match inner.cfg.mode {
            StdioMode::PerSession => {
                for _ in 0..inner.cfg.min.min(inner.cfg.max) {
                    lock(&inner.pool).live += 1;
                    match Process::start(&inner, Owner::Pool) {
                        Ok(p) => lock(&inner.pool).idle.push_back(p),
                        Err(e) => {
                            lock(&inner.pool).live -= 1;
                            return Err(e).with_context(what);
                        }
                    }
                }
            }
            StdioMode::Shared => {
                for (i, slot) in inner.slots.iter().enumerate() {
                    let p = Process::start(&inner, Owner::Slot(i)).with_context(what)?;
                    *lock(&slot.proc) = Some(p);
                }
            }
        }
        let acceptor = inner.clone();
        bridge.accept = Some(
            std::thread::Builder::new()
                .name("stdio-accept".into())
                .spawn(move || acceptor.accept_loop(listener))?,
        );
        tracing::info!(backend = %inner.cfg.name, %addr, "stdio bridge listening");
        Ok(bridge)
    }

    /// The bridge's bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The backend URL for mcplb's workers: `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Process ids of the running children (for tests and the admin port).
    pub fn child_pids(&self) -> Vec<u32> {
        lock(&self.inner.procs).values().map(|p| p.pid).collect()
    }

    /// Calls waiting for their turn on a shared process (see the `gate` module): capable
    /// sessions take turns with each other and with plain ones.
    pub fn queued_calls(&self) -> usize {
        self.inner
            .slots
            .iter()
            .map(|s| lock(&s.gate).queued())
            .sum()
    }

    /// Stops accepting, stops every child (stdin closed, SIGTERM, SIGKILL after 2 s) and
    /// waits for them; no child outlives the bridge.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let inner = &self.inner;
        {
            let _procs = lock(&inner.procs);
            inner.shutdown.store(true, Ordering::SeqCst);
        }
        // Wake the accept thread.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let sessions: Vec<Arc<Session>> = lock(&inner.sessions).drain().map(|(_, s)| s).collect();
        for s in sessions {
            s.close();
        }
        for slot in &inner.slots {
            slot.cond.notify_all();
            slot.gate_cv.notify_all();
        }
        let procs: Vec<Arc<Process>> = lock(&inner.procs).values().cloned().collect();
        std::thread::scope(|scope| {
            for p in &procs {
                let spawned = std::thread::Builder::new()
                    .name("stdio-stop".into())
                    .spawn_scoped(scope, || p.stop());
                if spawned.is_err() {
                    p.stop();
                }
            }
        });
        for c in lock(&inner.conns).values() {
            let _ = c.shutdown(Shutdown::Both);
        }
        inner.spawner.stop();
        tracing::info!(backend = %inner.cfg.name, "stdio bridge stopped");
    }
}

impl Drop for StdioBridge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: no code panics while holding
/// these locks on purpose, and a stuck bridge is worse than a poisoned map).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A JSON-RPC error response.
fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Whether an `initialize` request's client declared a capability that lets the server send
/// it requests (sampling, elicitation, roots).
fn declares_server_requests(initialize: &Value) -> bool {
    initialize
        .pointer("/params/capabilities")
        .and_then(Value::as_object)
        .is_some_and(|caps| {
            SERVER_REQUEST_CAPABILITIES
                .iter()
                .any(|c| caps.get(*c).is_some_and(|v| !v.is_null()))
        })
}

/// The key of a client's request id in a session's in-flight map: the id's JSON text, so that
/// `1` and `"1"` differ.
/// Carries the trace context of an HTTP request to a stdio server, which has no headers:
/// `params._meta.traceparent` (the W3C form MCP uses in `_meta`) becomes the request's
/// `traceparent` header, whose parent is mcplb's span when traces are on.
fn put_traceparent(msg: &mut Value, traceparent: &str) {
    let Some(o) = msg.as_object_mut() else { return };
    let params = o.entry("params").or_insert_with(|| json!({}));
    let Some(p) = params.as_object_mut() else {
        return;
    };
    let meta = p.entry("_meta").or_insert_with(|| json!({}));
    if let Some(m) = meta.as_object_mut() {
        m.insert("traceparent".into(), Value::String(traceparent.to_string()));
    }
}

fn id_key(id: &Value) -> String {
    id.to_string()
}

/// Backoff before restart `n` (1-based): 100 ms doubling, at most 10 s.
fn backoff(n: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    Duration::from_millis(ms.min(10_000))
}

/// Hands an event to a waiting request, waiting a while for a slow client (backpressure on
/// the child) but never forever. Gives the event back when it could not be delivered.
fn deliver(tx: &SyncSender<Event>, mut ev: Event) -> Result<(), Event> {
    let deadline = Instant::now() + DELIVER_PATIENCE;
    loop {
        match tx.try_send(ev) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Disconnected(e)) => return Err(e),
            Err(TrySendError::Full(e)) => {
                if Instant::now() >= deadline {
                    return Err(e);
                }
                ev = e;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// A client session.
struct Session {
    id: String,
    /// Bridge-unique number (names the session in [`Gate`] and [`Pending`]).
    seq: u64,
    binding: Binding,
    /// Its client declared sampling, elicitation or roots: it may be sent server requests.
    capable: bool,
    /// Client request id (as JSON text) → bridge id, for `notifications/cancelled`.
    inflight: Mutex<HashMap<String, u64>>,
    outbox: Mutex<Outbox>,
    cond: Condvar,
}

enum Binding {
    Process(Arc<Process>),
    Slot(usize),
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Value>,
    closed: bool,
    /// Bumped by each GET, so that a newer stream replaces an older one.
    stream_gen: u64,
    dropped: u64,
}

impl Session {
    /// Queues a server message for the GET stream; false when the queue is full or closed.
    fn push(&self, msg: Value, backend: &str) -> bool {
        let mut o = lock(&self.outbox);
        if o.closed {
            return false;
        }
        if o.queue.len() >= OUTBOX {
            o.dropped += 1;
            if o.dropped == 1 || o.dropped.is_multiple_of(1000) {
                tracing::warn!(backend, session = %self.id, dropped = o.dropped,
                    "server message dropped: no GET stream open and {OUTBOX} already queued");
            }
            return false;
        }
        o.queue.push_back(msg);
        drop(o);
        self.cond.notify_all();
        true
    }

    fn close(&self) {
        lock(&self.outbox).closed = true;
        self.cond.notify_all();
    }
}

#[derive(Default)]
struct Pool {
    idle: VecDeque<Arc<Process>>,
    /// Processes started and not exited (idle, bound, or being started).
    live: usize,
    /// Consecutive failures to start a usable process (backoff for refilling).
    failures: u32,
    refilling: bool,
}

#[derive(Default)]
struct Slot {
    /// The usable process, `None` while restarting.
    proc: Mutex<Option<Arc<Process>>>,
    cond: Condvar,
    /// Serializes the first `initialize` of a process.
    init_lock: Mutex<()>,
    /// Consecutive quick exits (restart backoff).
    failures: Mutex<u32>,
    /// Which sessions may have calls in flight (so a server request has one destination).
    gate: Mutex<Gate>,
    gate_cv: Condvar,
    /// Capable sessions bound to this slot (new capable sessions go to the slot with fewest).
    capable_sessions: AtomicUsize,
    /// The capable session that sent the latest message: target of server requests that
    /// arrive while no call is in flight.
    last_capable: Mutex<Weak<Session>>,
}

/// State shared by the accept thread, connection threads and child threads.
struct Inner {
    cfg: StdioConfig,
    spawner: Spawner,
    /// Bridge ids for requests and processes.
    next_id: AtomicU64,
    sessions: Mutex<HashMap<String, Arc<Session>>>,
    pool: Mutex<Pool>,
    slots: Vec<Slot>,
    /// Shared mode: the first client's `initialize` params, replayed after a restart.
    init_params: Mutex<Option<Value>>,
    /// Every started child not yet reaped (its lock also orders spawning against shutdown).
    procs: Mutex<HashMap<u64, Arc<Process>>>,
    shutdown: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    round_robin: AtomicUsize,
}

/// A call's turn on a shared process (see [`gate`]); dropping it lets waiting calls in.
struct InFlight<'a> {
    slot: &'a Slot,
    caller: Caller,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(&self.slot.gate).leave(self.caller);
        self.slot.gate_cv.notify_all();
    }
}

/// An answer to an HTTP request: where to write and whether the connection stays open.
struct Reply<'a> {
    w: &'a mut TcpStream,
    keep: bool,
}

impl Reply<'_> {
    fn json(&mut self, status: u16, body: &Value, extra: &[(&str, &str)]) -> io::Result<()> {
        let bytes = serde_json::to_vec(body).unwrap_or_default();
        let mut headers = vec![("content-type", "application/json")];
        headers.extend_from_slice(extra);
        http::write_full(self.w, status, &headers, &bytes, self.keep)
    }

    fn error(&mut self, status: u16, id: Value, code: i64, message: &str) -> io::Result<()> {
        self.json(status, &rpc_error(id, code, message), &[])
    }

    fn empty(&mut self, status: u16) -> io::Result<()> {
        http::write_full(self.w, status, &[], b"", self.keep)
    }

    fn sse_start(&mut self) -> io::Result<()> {
        http::write_chunked_head(
            self.w,
            200,
            &[
                ("content-type", "text/event-stream"),
                ("cache-control", "no-cache"),
                ("x-accel-buffering", "no"),
            ],
            self.keep,
        )
    }

    fn sse_event(&mut self, msg: &Value) -> io::Result<()> {
        let mut ev = b"event: message\ndata: ".to_vec();
        ev.extend_from_slice(&serde_json::to_vec(msg).unwrap_or_default());
        ev.extend_from_slice(b"\n\n");
        http::write_chunk(self.w, &ev)
    }

    fn sse_keepalive(&mut self) -> io::Result<()> {
        http::write_chunk(self.w, b": keepalive\n\n")
    }

    fn sse_end(&mut self) -> io::Result<()> {
        http::write_last_chunk(self.w)
    }
}

impl Inner {
    fn is_shutdown(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn name(&self) -> &str {
        &self.cfg.name
    }

    /// How long `initialize` may take: a process may still be starting (`npx`, `uvx`, a
    /// cold interpreter), so at least 30 s whatever `request_timeout` says.
    fn init_timeout(&self) -> Duration {
        self.cfg.request_timeout.max(Duration::from_secs(30))
    }

    // ---- HTTP side -------------------------------------------------------------------------

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            if self.is_shutdown() {
                return;
            }
            let stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(backend = %self.name(), error = %e, "stdio bridge: accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            {
                let mut conns = lock(&self.conns);
                if conns.len() >= MAX_CONNECTIONS {
                    drop(conns);
                    let mut s = stream;
                    let _ = http::write_full(&mut s, 503, &[], b"", false);
                    continue;
                }
                if let Ok(c) = stream.try_clone() {
                    conns.insert(id, c);
                }
            }
            let inner = self.clone();
            let spawned = std::thread::Builder::new()
                .name("stdio-http".into())
                .spawn(move || {
                    inner.serve_connection(stream);
                    lock(&inner.conns).remove(&id);
                });
            if spawned.is_err() {
                lock(&self.conns).remove(&id);
            }
        }
    }

    fn serve_connection(self: &Arc<Self>, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let mut conn = http::Conn::new(stream);
        while !self.is_shutdown() {
            let req = match conn.read_request(self.cfg.max_line_bytes) {
                Ok(r) => r,
                Err(http::ReadError::Closed | http::ReadError::Io) => return,
                Err(http::ReadError::TooLarge) => {
                    let mut r = Reply {
                        w: &mut conn.stream,
                        keep: false,
                    };
                    let _ = r.error(413, Value::Null, -32600, "request body too large");
                    return;
                }
                Err(http::ReadError::Bad(why)) => {
                    let mut r = Reply {
                        w: &mut conn.stream,
                        keep: false,
                    };
                    let _ = r.error(400, Value::Null, -32600, why);
                    return;
                }
            };
            let mut reply = Reply {
                w: &mut conn.stream,
                keep: req.keep_alive,
            };
            if self.handle(&mut reply, &req).is_err() || !req.keep_alive {
                return;
            }
        }
    }

    fn handle(self: &Arc<Self>, reply: &mut Reply<'_>, req: &http::Request) -> io::Result<()> {
        let path = req.path.split('?').next().unwrap_or_default();
        if path != "/mcp" {
            return reply.error(
                404,
                Value::Null,
                -32600,
                "not found: the stdio bridge serves /mcp",
            );
        }
        match req.method.as_str() {
            "POST" => self.handle_post(reply, req),
            "GET" => self.handle_get(reply, req),
            "DELETE" => self.handle_delete(reply, req),
            _ => http::write_full(
                reply.w,
                405,
                &[("allow", "GET, POST, DELETE")],
                b"",
                reply.keep,
            ),
        }
    }

    /// The session named by the request's `Mcp-Session-Id`, or the error already written.
    fn session_of(
        &self,
        reply: &mut Reply<'_>,
        req: &http::Request,
        id: &Value,
    ) -> io::Result<Option<Arc<Session>>> {
        let Some(sid) = req.header("mcp-session-id") else {
            reply.error(
                400,
                id.clone(),
                -32600,
                "missing Mcp-Session-Id header: send initialize first",
            )?;
            return Ok(None);
        };
        match lock(&self.sessions).get(sid.trim()).cloned() {
            Some(s) => Ok(Some(s)),
            None => {
                reply.error(
                    404,
                    id.clone(),
                    -32001,
                    "session not found: initialize again",
                )?;
                Ok(None)
            }
        }
    }

    fn handle_post(self: &Arc<Self>, reply: &mut Reply<'_>, req: &http::Request) -> io::Result<()> {
        let mut msg: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => {
                return reply.error(
                    400,
                    Value::Null,
                    -32700,
                    "parse error: the body is not JSON",
                )
            }
        };
        let Some(obj) = msg.as_object() else {
            return reply.error(
                400,
                Value::Null,
                -32600,
                "invalid request: one JSON-RPC object expected (stdio backends take no batches)",
            );
        };
        let method = obj.get("method").and_then(Value::as_str).map(str::to_owned);
        let id = obj.get("id").filter(|v| !v.is_null()).cloned();
        if let (Some(_), Some(tp)) = (&method, req.header("traceparent")) {
            put_traceparent(&mut msg, tp);
        }
        if let (Some("initialize"), Some(id)) = (method.as_deref(), &id) {
            return self.initialize(reply, msg, id.clone());
        }
        let id_or_null = id.clone().unwrap_or(Value::Null);
        let Some(session) = self.session_of(reply, req, &id_or_null)? else {
            return Ok(());
        };
        if let (Binding::Slot(i), true) = (&session.binding, session.capable) {
            if let Some(slot) = self.slots.get(*i) {
                *lock(&slot.last_capable) = Arc::downgrade(&session);
            }
        }
        if let (Some(_), Some(id)) = (&method, &id) {
            return self.forward_request(reply, &session, msg, id.clone(), req.accepts_sse());
        }
        let proc = match self.process_of(&session) {
            Ok(p) => p,
            Err((status, code, why)) => return reply.error(status, id_or_null, code, why),
        };
        match (method, id) {
            (Some(_), Some(_)) => Ok(()), // forwarded above
            (Some(method), None) => self.forward_notification(reply, &session, &proc, msg, &method),
            (None, Some(_)) => {
                // A client's answer to a server request: the child's ids are not rewritten.
                self.send_or_reply(reply, &proc, &msg, Value::Null)?
                    .map_or(Ok(()), |()| reply.empty(202))
            }
            (None, None) => reply.error(
                400,
                Value::Null,
                -32600,
                "invalid request: neither method nor id",
            ),
        }
    }

    /// Queues `msg` for the child; on failure writes the error answer and returns `None`.
    fn send_or_reply(
        &self,
        reply: &mut Reply<'_>,
        proc: &Process,
        msg: &Value,
        id: Value,
    ) -> io::Result<Option<()>> {
        match proc.send(msg) {
            Ok(()) => Ok(Some(())),
            Err(SendError::Busy) => {
                tracing::warn!(backend = %self.name(), pid = proc.pid, "stdio server is not reading its input");
                reply
                    .error(503, id, -32603, "stdio server is not reading its input")
                    .map(|()| None)
            }
            Err(SendError::Gone) => reply
                .error(502, id, -32603, "stdio server exited")
                .map(|()| None),
        }
    }

    /// The process serving a session; waits for a restarting shared process.
    fn process_of(&self, s: &Session) -> Result<Arc<Process>, (u16, i64, &'static str)> {
        match &s.binding {
            Binding::Process(p) if p.has_exited() => {
                self.close_session(&s.id);
                Err((
                    404,
                    -32001,
                    "session not found: its stdio server exited; initialize again",
                ))
            }
            Binding::Process(p) => Ok(p.clone()),
            Binding::Slot(i) => self.wait_slot(*i),
        }
    }

    fn wait_slot(&self, i: usize) -> Result<Arc<Process>, (u16, i64, &'static str)> {
        let restarting = (503, -32603, "stdio server is restarting");
        let slot = self.slots.get(i).ok_or(restarting)?;
        let deadline = Instant::now() + self.cfg.request_timeout.min(Duration::from_secs(30));
        let mut g = lock(&slot.proc);
        loop {
            if let Some(p) = g.as_ref().filter(|p| !p.has_exited()) {
                return Ok(p.clone());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.is_shutdown() {
                return Err(restarting);
            }
            g = match slot
                .cond
                .wait_timeout(g, left.min(Duration::from_millis(200)))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn new_session(&self, binding: Binding, capable: bool) -> Arc<Session> {
        let id = format!("{:032x}", rand::random::<u128>());
        let s = Arc::new(Session {
            id: id.clone(),
            seq: self.next_id.fetch_add(1, Ordering::Relaxed),
            binding,
            capable,
            inflight: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Outbox::default()),
            cond: Condvar::new(),
        });
        lock(&self.sessions).insert(id, s.clone());
        s
    }

    fn close_session(&self, id: &str) -> Option<Arc<Session>> {
        let s = lock(&self.sessions).remove(id)?;
        s.close();
        if let (Binding::Slot(i), true) = (&s.binding, s.capable) {
            if let Some(slot) = self.slots.get(*i) {
                slot.capable_sessions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Some(s)
    }

    fn initialize(
        self: &Arc<Self>,
        reply: &mut Reply<'_>,
        msg: Value,
        client_id: Value,
    ) -> io::Result<()> {
        let capable = declares_server_requests(&msg);
        match self.cfg.mode {
            StdioMode::PerSession => {
                let proc = match self.take_idle() {
                    Ok(p) => p,
                    Err(why) => return reply.error(503, client_id, -32603, &why),
                };
                self.refill();
                let (status, resp) = self.request_sync(&proc, msg, client_id, self.init_timeout());
                if status == 200 && resp.get("result").is_some() {
                    let s = self.new_session(Binding::Process(proc.clone()), capable);
                    *lock(&proc.session) = Arc::downgrade(&s);
                    lock(&self.pool).failures = 0;
                    reply.json(200, &resp, &[("mcp-session-id", &s.id)])
                } else {
                    stop_in_background(proc);
                    reply.json(status, &resp, &[])
                }
            }
            StdioMode::Shared => {
                let i = self.pick_slot(capable);
                let proc = match self.wait_slot(i) {
                    Ok(p) => p,
                    Err((status, code, why)) => return reply.error(status, client_id, code, why),
                };
                let Some(slot) = self.slots.get(i) else {
                    return reply.error(503, client_id, -32603, "stdio server is restarting");
                };
                let _init = lock(&slot.init_lock);
                let cached = lock(&proc.init_result).clone();
                let resp = match cached {
                    Some(result) => json!({"jsonrpc": "2.0", "id": client_id, "result": result}),
                    None => {
                        let params = msg.get("params").cloned().unwrap_or(Value::Null);
                        let (status, resp) =
                            self.request_sync(&proc, msg, client_id, self.init_timeout());
                        let Some(result) = resp.get("result").filter(|_| status == 200) else {
                            return reply.json(status, &resp, &[]);
                        };
                        *lock(&proc.init_result) = Some(result.clone());
                        lock(&self.init_params).get_or_insert(params);
                        resp
                    }
                };
                let s = self.new_session(Binding::Slot(i), capable);
                if capable {
                    slot.capable_sessions.fetch_add(1, Ordering::Relaxed);
                    *lock(&slot.last_capable) = Arc::downgrade(&s);
                }
                reply.json(200, &resp, &[("mcp-session-id", &s.id)])
            }
        }
    }

    /// A new bridge id for a request.
    fn new_bid(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a request of session number `session` (0: the bridge's own) as pending on
    /// `proc` under bridge id `bid`: rewrites its id and progress token to `bid`. Returns where
    /// its answer arrives.
    fn register(
        &self,
        proc: &Process,
        msg: &mut Value,
        client_id: Value,
        bid: u64,
        session: Option<&Session>,
    ) -> Receiver<Event> {
        let mut progress_token = None;
        if let Some(o) = msg.as_object_mut() {
            o.insert("id".into(), json!(bid));
            if let Some(t) = o
                .get_mut("params")
                .and_then(|p| p.get_mut("_meta"))
                .and_then(|m| m.get_mut("progressToken"))
            {
                progress_token = Some(std::mem::replace(t, json!(bid)));
            }
        }
        let (tx, rx) = mpsc::sync_channel(REQUEST_QUEUE);
        lock(&proc.pending).insert(
            bid,
            Pending {
                client_id,
                progress_token,
                tx,
                streamable: session.is_some(),
                session: session.map_or(0, |s| s.seq),
            },
        );
        rx
    }

    /// Sends a request and waits for its answer, ignoring messages in between. Returns the HTTP
    /// status and the answer (a JSON-RPC error on failure).
    fn request_sync(
        &self,
        proc: &Process,
        mut msg: Value,
        client_id: Value,
        timeout: Duration,
    ) -> (u16, Value) {
        let bid = self.new_bid();
        let rx = self.register(proc, &mut msg, client_id.clone(), bid, None);
        let out = match proc.send(&msg) {
            Err(SendError::Busy) => (
                503,
                rpc_error(client_id, -32603, "stdio server is not reading its input"),
            ),
            Err(SendError::Gone) => (502, rpc_error(client_id, -32603, "stdio server exited")),
            Ok(()) => {
                let deadline = Instant::now() + timeout;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match rx.recv_timeout(left) {
                        Ok(Event::Final { msg, status }) => break (status, msg),
                        Ok(Event::Message(_)) => continue,
                        Err(RecvTimeoutError::Timeout) => {
                            self.cancel_on_child(proc, bid, "request_timeout");
                            break (
                                504,
                                rpc_error(
                                    client_id,
                                    -32001,
                                    "stdio server did not answer within request_timeout",
                                ),
                            );
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            break (502, rpc_error(client_id, -32603, "stdio server exited"))
                        }
                    }
                }
            }
        };
        lock(&proc.pending).remove(&bid);
        out
    }

    fn cancel_on_child(&self, proc: &Process, bid: u64, reason: &str) {
        let _ = proc.send(&json!({
            "jsonrpc": "2.0",
            "method": "notifications/cancelled",
            "params": {"requestId": bid, "reason": reason},
        }));
    }

    /// Forwards a client's request: in shared mode it first waits for its turn on the process
    /// (see [`gate`]), then it is written to the child and its answer streamed back.
    fn forward_request(
        &self,
        reply: &mut Reply<'_>,
        session: &Session,
        msg: Value,
        client_id: Value,
        sse_ok: bool,
    ) -> io::Result<()> {
        let bid = self.new_bid();
        let key = id_key(&client_id);
        lock(&session.inflight).insert(key.clone(), bid);
        let res = self.take_turn_and_forward(reply, session, msg, client_id, bid, sse_ok);
        let mut inflight = lock(&session.inflight);
        if inflight.get(&key) == Some(&bid) {
            inflight.remove(&key);
        }
        res
    }

    fn take_turn_and_forward(
        &self,
        reply: &mut Reply<'_>,
        session: &Session,
        mut msg: Value,
        client_id: Value,
        bid: u64,
        sse_ok: bool,
    ) -> io::Result<()> {
        // A ping cannot make the server ask the client anything: it needs no turn.
        let gated = msg.get("method").and_then(Value::as_str) != Some("ping");
        let _turn = match (&session.binding, gated) {
            (Binding::Slot(i), true) => match self.take_turn(*i, session, bid) {
                Ok(turn) => Some(turn),
                Err((status, code, why)) => return reply.error(status, client_id, code, &why),
            },
            _ => None,
        };
        let proc = match self.process_of(session) {
            Ok(p) => p,
            Err((status, code, why)) => return reply.error(status, client_id, code, why),
        };
        let rx = self.register(&proc, &mut msg, client_id.clone(), bid, Some(session));
        let res = match self.send_or_reply(reply, &proc, &msg, client_id.clone()) {
            Ok(Some(())) => self.stream_answer(reply, &proc, bid, &rx, client_id, sse_ok),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        lock(&proc.pending).remove(&bid);
        res
    }

    /// Waits until a call of `session` (bridge id `bid`) may be in flight on shared slot `i`:
    /// at once for a plain session with no capable one busy, or for the capable session
    /// already busy; otherwise in FIFO order, up to `request_timeout`, until cancelled.
    fn take_turn(
        &self,
        i: usize,
        session: &Session,
        bid: u64,
    ) -> Result<InFlight<'_>, (u16, i64, String)> {
        let busy = (503, -32603, "stdio server is restarting".to_owned());
        let slot = self.slots.get(i).ok_or(busy)?;
        let caller = if session.capable {
            Caller::Capable(session.seq)
        } else {
            Caller::Plain
        };
        let mut gate = lock(&slot.gate);
        match gate.arrive(caller, bid, GATE_QUEUE) {
            Arrival::Entered => return Ok(InFlight { slot, caller }),
            Arrival::Full => {
                return Err((
                    503,
                    -32603,
                    format!("stdio server busy: {GATE_QUEUE} calls already wait for their turn"),
                ))
            }
            Arrival::Queued => {}
        }
        let deadline = Instant::now() + self.cfg.request_timeout;
        let refused = loop {
            match gate.poll(bid) {
                Turn::Entered => return Ok(InFlight { slot, caller }),
                Turn::Cancelled | Turn::Unknown => {
                    break (200, -32800, "request cancelled".to_owned());
                }
                Turn::Waiting => {}
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.is_shutdown() {
                gate.withdraw(bid);
                break (
                    504,
                    -32001,
                    "stdio server busy: the call waited request_timeout for its turn (sessions \
                     that accept sampling, elicitation or roots take turns on a shared process)"
                        .to_owned(),
                );
            }
            gate = match slot
                .gate_cv
                .wait_timeout(gate, left.min(Duration::from_millis(200)))
            {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        };
        // The queue changed: the next waiter may be first now.
        drop(gate);
        slot.gate_cv.notify_all();
        Err(refused)
    }

    /// The slot for a new shared-mode session: round robin, but a capable session goes to the
    /// slot with the fewest capable sessions (they take turns on a process).
    fn pick_slot(&self, capable: bool) -> usize {
        let n = self.slots.len().max(1);
        let start = self.round_robin.fetch_add(1, Ordering::Relaxed) % n;
        if !capable {
            return start;
        }
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&j| {
                self.slots
                    .get(j)
                    .map_or(usize::MAX, |s| s.capable_sessions.load(Ordering::Relaxed))
            })
            .unwrap_or(start)
    }

    /// Answers a forwarded request: JSON when the answer comes first, else an SSE stream.
    fn stream_answer(
        &self,
        reply: &mut Reply<'_>,
        proc: &Process,
        bid: u64,
        rx: &Receiver<Event>,
        client_id: Value,
        sse_ok: bool,
    ) -> io::Result<()> {
        let mut sse = false;
        let mut last = Instant::now();
        loop {
            let idle_left = self.cfg.request_timeout.saturating_sub(last.elapsed());
            let wait = if sse {
                KEEPALIVE
            } else if sse_ok {
                SSE_AFTER
            } else {
                idle_left
            };
            match rx.recv_timeout(wait.min(idle_left)) {
                Ok(Event::Message(m)) => {
                    last = Instant::now();
                    if !sse_ok {
                        continue; // a JSON-only client cannot receive it
                    }
                    if !sse {
                        reply.sse_start()?;
                        sse = true;
                    }
                    reply.sse_event(&m)?;
                }
                Ok(Event::Final { msg, status }) => {
                    return if sse {
                        reply.sse_event(&msg)?;
                        reply.sse_end()
                    } else {
                        reply.json(status, &msg, &[])
                    };
                }
                Err(RecvTimeoutError::Timeout) if last.elapsed() >= self.cfg.request_timeout => {
                    tracing::warn!(backend = %self.name(), pid = proc.pid,
                        "stdio server did not answer within request_timeout");
                    self.cancel_on_child(proc, bid, "request_timeout");
                    let err = rpc_error(
                        client_id,
                        -32001,
                        "stdio server did not answer within request_timeout",
                    );
                    return if sse {
                        reply.sse_event(&err)?;
                        reply.sse_end()
                    } else {
                        reply.json(504, &err, &[])
                    };
                }
                Err(RecvTimeoutError::Timeout) => {
                    if sse {
                        reply.sse_keepalive()?;
                    } else if sse_ok {
                        reply.sse_start()?;
                        reply.sse_keepalive()?;
                        sse = true;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let err = rpc_error(client_id, -32603, "stdio server exited");
                    return if sse {
                        reply.sse_event(&err)?;
                        reply.sse_end()
                    } else {
                        reply.json(502, &err, &[])
                    };
                }
            }
        }
    }

    fn forward_notification(
        &self,
        reply: &mut Reply<'_>,
        session: &Session,
        proc: &Process,
        mut msg: Value,
        method: &str,
    ) -> io::Result<()> {
        match method {
            "notifications/cancelled" => {
                let rid = msg.pointer("/params/requestId").map(id_key);
                let bid = rid.and_then(|k| lock(&session.inflight).get(&k).copied());
                let Some(bid) = bid else {
                    return reply.empty(202); // already answered, or never sent
                };
                // Still waiting for its turn: it never reached the child.
                if let Binding::Slot(i) = session.binding {
                    if let Some(slot) = self.slots.get(i) {
                        if lock(&slot.gate).cancel(bid) {
                            slot.gate_cv.notify_all();
                            return reply.empty(202);
                        }
                    }
                }
                if let Some(r) = msg.pointer_mut("/params/requestId") {
                    *r = json!(bid);
                }
                // The server need not answer a cancelled request (and usually does not): end
                // the client's wait now, so its connection (and a shutdown) is not held open.
                if let Some(p) = lock(&proc.pending).remove(&bid) {
                    let msg = rpc_error(p.client_id, -32800, "request cancelled");
                    let _ = deliver(&p.tx, Event::Final { msg, status: 200 });
                }
            }
            // Shared: the process was initialized once; later sessions' copies are dropped.
            "notifications/initialized"
                if self.cfg.mode == StdioMode::Shared
                    && proc.initialized_sent.swap(true, Ordering::SeqCst) =>
            {
                return reply.empty(202);
            }
            _ => {}
        }
        match self.send_or_reply(reply, proc, &msg, Value::Null)? {
            Some(()) => reply.empty(202),
            None => Ok(()),
        }
    }

    fn handle_get(&self, reply: &mut Reply<'_>, req: &http::Request) -> io::Result<()> {
        let Some(session) = self.session_of(reply, req, &Value::Null)? else {
            return Ok(());
        };
        if !req.accepts_sse() {
            return reply.error(
                406,
                Value::Null,
                -32600,
                "GET needs Accept: text/event-stream",
            );
        }
        let gen = {
            let mut o = lock(&session.outbox);
            o.stream_gen += 1;
            o.stream_gen
        };
        session.cond.notify_all();
        reply.sse_start()?;
        loop {
            let batch: Option<Vec<Value>> = {
                let mut o = lock(&session.outbox);
                loop {
                    if o.closed || o.stream_gen != gen || self.is_shutdown() {
                        break None;
                    }
                    if !o.queue.is_empty() {
                        break Some(o.queue.drain(..).collect());
                    }
                    let (g, t) = match session.cond.wait_timeout(o, KEEPALIVE) {
                        Ok(x) => x,
                        Err(p) => p.into_inner(),
                    };
                    o = g;
                    if t.timed_out() {
                        break Some(Vec::new());
                    }
                }
            };
            match batch {
                None => return reply.sse_end(),
                Some(b) if b.is_empty() => reply.sse_keepalive()?,
                Some(b) => {
                    for m in &b {
                        reply.sse_event(m)?;
                    }
                }
            }
        }
    }

    fn handle_delete(&self, reply: &mut Reply<'_>, req: &http::Request) -> io::Result<()> {
        let Some(session) = self.session_of(reply, req, &Value::Null)? else {
            return Ok(());
        };
        self.close_session(&session.id);
        if let Binding::Process(p) = &session.binding {
            stop_in_background(p.clone());
        }
        reply.empty(200)
    }

    // ---- per-session pool ------------------------------------------------------------------

    /// An idle process, or a new one when none is idle and `max` allows.
    fn take_idle(self: &Arc<Self>) -> Result<Arc<Process>, String> {
        {
            let mut pool = lock(&self.pool);
            while let Some(p) = pool.idle.pop_front() {
                if !p.has_exited() {
                    return Ok(p);
                }
            }
            if pool.live >= self.cfg.max {
                return Err(format!(
                    "all {} stdio server processes of backend {} are in use",
                    self.cfg.max, self.cfg.name
                ));
            }
            pool.live += 1;
        }
        Process::start(self, Owner::Pool).map_err(|e| {
            let mut pool = lock(&self.pool);
            pool.live = pool.live.saturating_sub(1);
            pool.failures = pool.failures.saturating_add(1);
            tracing::warn!(backend = %self.name(), error = %e, "cannot start stdio server");
            format!("cannot start the stdio server: {e}")
        })
    }

    /// Starts processes in the background until `min` are idle (or `max` run).
    fn refill(self: &Arc<Self>) {
        if self.cfg.mode != StdioMode::PerSession || self.is_shutdown() {
            return;
        }
        {
            let mut pool = lock(&self.pool);
            if pool.refilling || pool.idle.len() >= self.cfg.min || pool.live >= self.cfg.max {
                return;
            }
            pool.refilling = true;
        }
        let inner = self.clone();
        let spawned = std::thread::Builder::new()
            .name("stdio-refill".into())
            .spawn(move || inner.refill_loop());
        if spawned.is_err() {
            lock(&self.pool).refilling = false;
        }
    }

    fn refill_loop(self: &Arc<Self>) {
        loop {
            let failures = {
                let mut pool = lock(&self.pool);
                if self.is_shutdown()
                    || pool.idle.len() >= self.cfg.min
                    || pool.live >= self.cfg.max
                {
                    pool.refilling = false;
                    return;
                }
                pool.live += 1;
                pool.failures
            };
            if failures > 0 {
                self.sleep_unless_shutdown(backoff(failures));
            }
            match Process::start(self, Owner::Pool) {
                Ok(p) => {
                    let mut pool = lock(&self.pool);
                    if !p.has_exited() {
                        pool.idle.push_back(p);
                    }
                }
                Err(e) => {
                    let mut pool = lock(&self.pool);
                    pool.live = pool.live.saturating_sub(1);
                    pool.failures = pool.failures.saturating_add(1);
                    if !self.is_shutdown() {
                        tracing::warn!(backend = %self.name(), error = %e, "cannot start stdio server");
                    }
                }
            }
        }
    }

    fn sleep_unless_shutdown(&self, d: Duration) {
        let deadline = Instant::now() + d;
        while !self.is_shutdown() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }

    // ---- shared-mode supervision -----------------------------------------------------------

    fn restart_slot(self: &Arc<Self>, i: usize) {
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        loop {
            let n = *lock(&slot.failures);
            self.sleep_unless_shutdown(backoff(n.max(1)));
            if self.is_shutdown() {
                return;
            }
            let proc = match Process::start(self, Owner::Slot(i)) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(backend = %self.name(), error = %e, "cannot restart stdio server");
                    let mut f = lock(&slot.failures);
                    *f = f.saturating_add(1);
                    continue;
                }
            };
            let params = lock(&self.init_params).clone();
            if let Some(params) = params {
                let init =
                    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params});
                let (status, resp) =
                    self.request_sync(&proc, init, json!(0), Duration::from_secs(30));
                let Some(result) = resp.get("result").filter(|_| status == 200) else {
                    tracing::warn!(backend = %self.name(), pid = proc.pid, answer = %resp,
                        "restarted stdio server did not initialize");
                    proc.stop();
                    let mut f = lock(&slot.failures);
                    *f = f.saturating_add(1);
                    continue;
                };
                *lock(&proc.init_result) = Some(result.clone());
                let _ =
                    proc.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
                proc.initialized_sent.store(true, Ordering::SeqCst);
            }
            if proc.has_exited() {
                continue;
            }
            tracing::info!(backend = %self.name(), pid = proc.pid, "stdio server restarted");
            *lock(&slot.proc) = Some(proc);
            slot.cond.notify_all();
            return;
        }
    }

    // ---- child side ------------------------------------------------------------------------

    /// One line from a child's stdout.
    fn on_stdout_line(self: &Arc<Self>, proc: &Arc<Process>, line: &[u8]) {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        let mut msg: Value = match serde_json::from_slice(line) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                if proc.log_junk() {
                    let preview = String::from_utf8_lossy(
                        line.get(..200.min(line.len())).unwrap_or_default(),
                    )
                    .into_owned();
                    tracing::warn!(backend = %self.name(), pid = proc.pid, line = %preview,
                        "stdio server wrote a line that is not a JSON-RPC object to stdout; skipped");
                }
                return;
            }
        };
        let has_method = msg.get("method").is_some_and(Value::is_string);
        let is_request = has_method && msg.get("id").is_some_and(|v| !v.is_null());
        if !has_method {
            if msg.get("id").is_some()
                && (msg.get("result").is_some() || msg.get("error").is_some())
            {
                self.on_response(proc, msg);
            } else if proc.log_junk() {
                tracing::warn!(backend = %self.name(), pid = proc.pid, "stdio server wrote a JSON object that is not JSON-RPC; skipped");
            }
            return;
        }
        if !is_request
            && msg.get("method").and_then(Value::as_str) == Some("notifications/progress")
        {
            let bid = msg.pointer("/params/progressToken").and_then(Value::as_u64);
            let target = bid.and_then(|b| {
                lock(&proc.pending)
                    .get(&b)
                    .and_then(|p| p.progress_token.clone().map(|t| (t, p.tx.clone())))
            });
            if let Some((token, tx)) = target {
                if let Some(t) = msg.pointer_mut("/params/progressToken") {
                    *t = token;
                }
                let _ = deliver(&tx, Event::Message(msg));
            } else {
                tracing::debug!(backend = %self.name(), "progress for a request no longer in flight dropped");
            }
            return;
        }
        self.route_server_message(proc, msg, is_request);
    }

    fn on_response(&self, proc: &Process, mut msg: Value) {
        let Some(bid) = msg.get("id").and_then(Value::as_u64) else {
            tracing::warn!(backend = %self.name(), pid = proc.pid, "stdio server answered an id the bridge never sent; dropped");
            return;
        };
        let Some(p) = lock(&proc.pending).remove(&bid) else {
            tracing::debug!(backend = %self.name(), bid, "answer to a request no longer in flight dropped");
            return;
        };
        if let Some(o) = msg.as_object_mut() {
            o.insert("id".into(), p.client_id);
        }
        let _ = deliver(&p.tx, Event::Final { msg, status: 200 });
    }

    /// A notification or request from the child, other than progress.
    fn route_server_message(&self, proc: &Process, msg: Value, is_request: bool) {
        if let (Owner::Slot(i), true) = (proc.owner, is_request) {
            return self.route_shared_request(proc, i, msg);
        }
        // A shared process's notification reaches other clients only when it cannot be
        // another client's: a `list_changed` is news for every session on the process; any
        // other (a log message, a resource update) goes to the one session with calls in
        // flight, and is dropped when several sessions have (it could belong to any of them:
        // delivering it to the wrong client would leak what it says) or none has.
        if let (Owner::Slot(_), false) = (proc.owner, is_request) {
            let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
            if !method.ends_with("/list_changed") {
                let busy: std::collections::HashSet<u64> =
                    lock(&proc.pending).values().map(|p| p.session).collect();
                let only = (busy.len() == 1).then(|| busy.into_iter().next()).flatten();
                let Some(seq) = only else {
                    tracing::debug!(backend = %self.name(), method, "shared stdio notification with no single owner dropped");
                    return;
                };
                if let Some(msg) = to_latest_call(proc, msg, |p| p.session == seq) {
                    let session = lock(&self.sessions)
                        .values()
                        .find(|s| s.seq == seq)
                        .cloned();
                    if let Some(s) = session {
                        s.push(msg, self.name());
                    }
                }
                return;
            }
        }
        // Tied to the most recent request in flight when there is one: it is the likeliest
        // origin (logging during a tool call; any request of a per-session process). A shared
        // process's `list_changed` goes to every session's stream instead.
        let shared_news = matches!(proc.owner, Owner::Slot(_)) && !is_request;
        let msg = if shared_news {
            msg
        } else {
            let Some(msg) = to_latest_call(proc, msg, |_| true) else {
                return;
            };
            msg
        };
        let delivered = match proc.owner {
            Owner::Pool => lock(&proc.session)
                .upgrade()
                .is_some_and(|s| s.push(msg.clone(), self.name())),
            Owner::Slot(i) => {
                let sessions: Vec<Arc<Session>> = lock(&self.sessions)
                    .values()
                    .filter(|s| matches!(s.binding, Binding::Slot(j) if j == i))
                    .cloned()
                    .collect();
                let mut any = false;
                for s in sessions {
                    any |= s.push(msg.clone(), self.name());
                }
                any
            }
        };
        if is_request && !delivered {
            // Answer it so the child does not wait forever.
            if let Some(id) = msg.get("id").cloned() {
                tracing::warn!(backend = %self.name(), pid = proc.pid, "server request with no client to deliver it to; refused");
                let _ = proc.send(&rpc_error(
                    id,
                    -32603,
                    "mcplb: no client session to deliver the request to",
                ));
            }
        }
    }

    /// A request from shared process `i` (sampling, elicitation, roots, ping). The gate lets
    /// calls of at most one capable session be in flight on it at a time, so the destination
    /// is certain:
    /// - `ping` is answered by the bridge itself;
    /// - with a capable session's calls in flight, that session (its latest call's stream, or
    ///   its GET stream);
    /// - with only plain sessions' calls in flight, none of them can answer it: the child gets
    ///   -32601, what a client that did not declare the capability answers;
    /// - with no call in flight (a request not tied to one, e.g. `roots/list` after
    ///   `notifications/initialized`), the GET stream of the capable session that sent the
    ///   latest message; with none, the child gets -32603.
    fn route_shared_request(&self, proc: &Process, i: usize, msg: Value) {
        let Some(id) = msg.get("id").cloned() else {
            return;
        };
        if msg.get("method").and_then(Value::as_str) == Some("ping") {
            let _ = proc.send(&json!({"jsonrpc": "2.0", "id": id, "result": {}}));
            return;
        }
        let Some(slot) = self.slots.get(i) else {
            return;
        };
        let (owner, plain) = {
            let g = lock(&slot.gate);
            (g.owner(), g.plain_calls())
        };
        let (code, why) = match owner {
            Some(seq) => {
                let Some(msg) = to_latest_call(proc, msg, |p| p.session == seq) else {
                    return;
                };
                let session = lock(&self.sessions)
                    .values()
                    .find(|s| s.seq == seq)
                    .cloned();
                if session.is_some_and(|s| s.push(msg, self.name())) {
                    return;
                }
                (
                    -32603,
                    "mcplb: the client session with calls in flight cannot be reached",
                )
            }
            None if plain > 0 => (
                -32601,
                "mcplb: no client with a call in flight on this process declared the capability \
                 for this request",
            ),
            None => {
                let last = lock(&slot.last_capable).upgrade();
                if last.is_some_and(|s| s.push(msg, self.name())) {
                    return;
                }
                (-32603, "mcplb: no client session to deliver the request to")
            }
        };
        tracing::warn!(backend = %self.name(), pid = proc.pid, reason = why, "server request refused");
        let _ = proc.send(&rpc_error(id, code, why));
    }

    /// A stdout line over `max_line_bytes`: answer the request it was for with an error.
    fn on_too_long(&self, proc: &Process, head: &[u8], len: usize) {
        tracing::warn!(backend = %self.name(), pid = proc.pid, len, max = self.cfg.max_line_bytes,
            "stdio server wrote a line longer than max_line_bytes; dropped");
        let bid = find_id(head)
            .filter(|b| lock(&proc.pending).contains_key(b))
            .or_else(|| {
                let pending = lock(&proc.pending);
                (pending.len() == 1)
                    .then(|| pending.keys().next().copied())
                    .flatten()
            });
        let Some(p) = bid.and_then(|b| lock(&proc.pending).remove(&b)) else {
            return;
        };
        let msg = rpc_error(
            p.client_id,
            -32603,
            &format!(
                "stdio server answer of {len} bytes is over the backend's max_line_bytes ({})",
                self.cfg.max_line_bytes
            ),
        );
        let _ = deliver(&p.tx, Event::Final { msg, status: 502 });
    }

    /// A child exited (called once, by its stdout thread, after reaping it).
    fn on_exit(self: &Arc<Self>, proc: &Arc<Process>, status: &str) {
        proc.mark_exited();
        lock(&self.procs).remove(&proc.seq);
        let expected = proc.stopping.load(Ordering::SeqCst) || self.is_shutdown();
        if expected {
            tracing::info!(backend = %self.name(), pid = proc.pid, %status, "stdio server stopped");
        } else {
            tracing::warn!(backend = %self.name(), pid = proc.pid, %status, "stdio server exited");
        }
        let pending: Vec<Pending> = lock(&proc.pending).drain().map(|(_, p)| p).collect();
        for p in pending {
            let msg = rpc_error(p.client_id, -32603, "stdio server exited");
            let _ = deliver(&p.tx, Event::Final { msg, status: 502 });
        }
        match proc.owner {
            Owner::Pool => {
                {
                    let mut pool = lock(&self.pool);
                    pool.live = pool.live.saturating_sub(1);
                    let before = pool.idle.len();
                    pool.idle.retain(|p| !Arc::ptr_eq(p, proc));
                    if pool.idle.len() != before && !expected {
                        pool.failures = pool.failures.saturating_add(1);
                    }
                }
                let session = lock(&proc.session).upgrade();
                if let Some(s) = session {
                    self.close_session(&s.id);
                }
                self.refill();
            }
            Owner::Slot(i) => {
                let Some(slot) = self.slots.get(i) else {
                    return;
                };
                let mut current = lock(&slot.proc);
                if !current.as_ref().is_some_and(|p| Arc::ptr_eq(p, proc)) {
                    return;
                }
                *current = None;
                drop(current);
                {
                    let mut f = lock(&slot.failures);
                    *f = if proc.started.elapsed() > Duration::from_secs(30) {
                        1
                    } else {
                        f.saturating_add(1)
                    };
                }
                if self.is_shutdown() {
                    return;
                }
                let inner = self.clone();
                let spawned = std::thread::Builder::new()
                    .name("stdio-restart".into())
                    .spawn(move || inner.restart_slot(i));
                if let Err(e) = spawned {
                    tracing::error!(backend = %self.name(), error = %e, "cannot restart stdio server");
                }
            }
        }
    }
}

/// Streams a server message to the answer of the most recent streamable request on `proc`
/// that `which` accepts. Gives the message back when there is none or it could not be
/// delivered.
fn to_latest_call(proc: &Process, msg: Value, which: impl Fn(&Pending) -> bool) -> Option<Value> {
    let target = lock(&proc.pending)
        .iter()
        .filter(|(_, p)| p.streamable && which(p))
        .max_by_key(|(bid, _)| **bid)
        .map(|(_, p)| p.tx.clone());
    match target {
        Some(tx) => deliver(&tx, Event::Message(msg))
            .err()
            .map(Event::into_message),
        None => Some(msg),
    }
}

/// Stops a process without blocking the caller.
fn stop_in_background(p: Arc<Process>) {
    p.stopping.store(true, Ordering::SeqCst);
    let spawned = std::thread::Builder::new()
        .name("stdio-stop".into())
        .spawn({
            let p = p.clone();
            move || p.stop()
        });
    if spawned.is_err() {
        p.stop();
    }
}

/// The bridge id in the first bytes of a JSON-RPC response (`"id":123`), if it is there.
fn find_id(head: &[u8]) -> Option<u64> {
    let at = memchr::memmem::find(head, b"\"id\"")?;
    let rest = head.get(at + 4..)?;
    let rest = rest.get(rest.iter().position(|b| !b.is_ascii_whitespace())?..)?;
    let rest = rest.strip_prefix(b":")?;
    let digits: Vec<u8> = rest
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_id_reads_the_leading_id() {
        assert_eq!(
            find_id(br#"{"jsonrpc":"2.0","id":42,"result":{"x":"#),
            Some(42)
        );
        assert_eq!(find_id(br#"{"jsonrpc":"2.0", "id" : 7 ,"#), Some(7));
        assert_eq!(find_id(br#"{"jsonrpc":"2.0","id":"s","#), None);
        assert_eq!(find_id(b"garbage"), None);
    }

    #[test]
    fn backoff_doubles_to_ten_seconds() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(8), Duration::from_millis(10_000));
        assert_eq!(backoff(100), Duration::from_millis(10_000));
    }

    #[test]
    fn capable_clients_are_told_by_their_initialize() {
        let init = |caps: Value| json!({"method": "initialize", "params": {"capabilities": caps}});
        assert!(declares_server_requests(&init(json!({"sampling": {}}))));
        assert!(declares_server_requests(&init(
            json!({"roots": {"listChanged": true}})
        )));
        assert!(declares_server_requests(&init(
            json!({"elicitation": {"form": {}}})
        )));
        assert!(!declares_server_requests(&init(
            json!({"experimental": {}, "sampling": null})
        )));
        assert!(!declares_server_requests(&init(json!("nonsense"))));
        assert!(!declares_server_requests(&json!({"method": "initialize"})));
    }

    #[test]
    fn traceparent_goes_into_meta() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut m = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
        put_traceparent(&mut m, tp);
        assert_eq!(m["params"]["_meta"]["traceparent"], tp);
        let mut m = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "t", "_meta": {"progressToken": 3, "traceparent": "old"}}});
        put_traceparent(&mut m, tp);
        assert_eq!(m["params"]["_meta"]["traceparent"], tp);
        assert_eq!(m["params"]["_meta"]["progressToken"], 3);
        assert_eq!(m["params"]["name"], "t");
        // Params that are not an object are left alone.
        let mut m = json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": [1]});
        put_traceparent(&mut m, tp);
        assert_eq!(m["params"], json!([1]));
    }

    #[test]
    fn id_keys_keep_the_type() {
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
    }
}
