//! A fast mock MCP server speaking Streamable HTTP on `/mcp`, built on monoio
//! and httparse. It is the test peer of the proxy's integration tests, the
//! backend of `mcplb demo`, and the target of `mcplb-load run`.
//!
//! Tools: `echo`, `whoami`, `slow`, `progress` (SSE with progress
//! notifications), `big`, `fail` (a JSON-RPC error), `tool_error` (a result
//! with `isError: true`) and `wrong_id` (a misbehaving server that echoes the
//! id as a string). Sessions are issued on `initialize`
//! unless the server is stateless. Counters and last-seen headers let tests
//! check what reached the backend.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Value};

use crate::fast::Answers;
use crate::http::{self, Chunked};
use crate::rpc::{rpc_error, rpc_result, text_content, tools_list};
use crate::state::{
    Counts, HeaderCache, RecordedHeaders, Sessions, ThreadCounts, RECORDED_HEADERS,
};

/// Largest request head + body the mock accepts.
pub(crate) const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// The stateless protocol revision.
pub(crate) const STATELESS_VERSION: &str = "2026-07-28";

/// Configuration of a [`MockServer`].
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Who the backend says it is (`serverInfo.name`, the `whoami` tool and the
    /// prefix of the session ids it issues).
    pub name: String,
    /// No `Mcp-Session-Id` is issued and any request is accepted without one.
    pub stateless: bool,
    /// Delay added before answering every `tools/call`.
    pub latency: Duration,
    /// Number of `notifications/progress` events the `progress` tool sends.
    pub progress_events: usize,
    /// Gap between two progress events.
    pub progress_interval: Duration,
    /// A GET with a session opens an SSE stream (true) or is answered 405.
    pub get_stream: bool,
    /// monoio worker threads, all listening on the same port (SO_REUSEPORT).
    pub threads: usize,
    /// Answer a `tools/call` as an SSE stream when the client accepts one, as the MCP SDKs'
    /// servers do by default: the head, the result event and the end of the stream, each
    /// written on its own (the way the Python SDK's server, over uvicorn, sends them).
    pub sse_calls: bool,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            name: "mock".to_string(),
            stateless: false,
            latency: Duration::ZERO,
            progress_events: 3,
            progress_interval: Duration::from_millis(50),
            get_stream: true,
            threads: 1,
            sse_calls: false,
        }
    }
}

/// State shared by all worker threads of one mock server (see [`crate::state`] for how
/// the request path avoids locks in it).
pub(crate) struct Shared {
    pub(crate) cfg: MockConfig,
    stop: AtomicBool,
    pub(crate) counts: Counts,
    pub(crate) sessions: Sessions,
    pub(crate) event_seq: AtomicU64,
    headers: RecordedHeaders,
    pub(crate) tools_list: Value,
    /// The fast path's answers (None: every request goes the general way).
    pub(crate) answers: Option<Answers>,
}

impl Shared {
    pub(crate) fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running mock MCP server. Dropping it stops it.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl MockServer {
    /// Binds `addr` (port 0 picks a free port) on `cfg.threads` threads and
    /// returns once every thread is listening.
    pub fn start(cfg: MockConfig, addr: SocketAddr) -> anyhow::Result<MockServer> {
        let threads = cfg.threads.max(1);
        let list = tools_list();
        let shared = Arc::new(Shared {
            answers: Answers::new(rpc_result, &list, text_content, &cfg.name),
            tools_list: list,
            counts: Counts::new(threads),
            sessions: Sessions::new(&cfg.name),
            cfg,
            stop: AtomicBool::new(false),
            event_seq: AtomicU64::new(0),
            headers: RecordedHeaders::new(),
        });
        let mut bound = addr;
        let mut listeners = Vec::with_capacity(threads);
        for _ in 0..threads {
            let l = bind_reuseport(bound)?;
            bound = l.local_addr()?;
            listeners.push(l);
        }
        let mut server = MockServer {
            addr: bound,
            shared: shared.clone(),
            threads: Vec::with_capacity(threads),
        };
        let (tx, rx) = mpsc::channel::<Result<(), String>>();
        for (i, l) in listeners.into_iter().enumerate() {
            let tx = tx.clone();
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("mock-{}-{i}", sh.cfg.name))
                .spawn(move || worker(l, sh, i, tx))?;
            server.threads.push(h);
        }
        drop(tx);
        for _ in 0..threads {
            match rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => anyhow::bail!("mock worker failed to start: {e}"),
                Err(_) => anyhow::bail!("mock worker exited during start"),
            }
        }
        Ok(server)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The MCP endpoint URL, `http://ADDR/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// JSON-RPC messages received so far (all methods, notifications and
    /// responses included; each element of a batch counts).
    pub fn requests(&self) -> u64 {
        self.shared.counts.requests()
    }

    /// How many `tools/call` requests named `tool` were received.
    pub fn tool_calls(&self, tool: &str) -> u64 {
        self.shared.counts.tool_calls(tool)
    }

    /// Number of sessions currently open.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.open_count()
    }

    /// The last value seen of one of the headers `Host`, `Authorization`,
    /// `MCP-Protocol-Version` and `Last-Event-ID` (name case-insensitive), on
    /// any request. A request without the header leaves the value unchanged.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.shared.headers.get(&name.to_ascii_lowercase())
    }

    /// Stops the server and waits for its threads to end.
    pub fn stop(self) {
        drop(self);
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("name", &self.shared.cfg.name)
            .field("addr", &self.addr)
            .finish()
    }
}

fn bind_reuseport(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

fn worker(
    l: std::net::TcpListener,
    sh: Arc<Shared>,
    index: usize,
    ready: mpsc::Sender<Result<(), String>>,
) {
    let failed = ready.clone();
    let ran = crate::runtime::block_on(|_| async move {
        let listener = match TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                let _ = ready.send(Err(e.to_string()));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let canceller = Canceller::new();
        let cancel = canceller.handle();
        let live = std::rc::Rc::new(std::cell::Cell::new(0usize));
        let watch = sh.clone();
        monoio::spawn(async move {
            while !watch.stopped() {
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            canceller.cancel();
        });
        loop {
            if sh.stopped() {
                break;
            }
            match listener.cancelable_accept(cancel.clone()).await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let sh = sh.clone();
                    let cancel = cancel.clone();
                    let live = live.clone();
                    live.set(live.get() + 1);
                    monoio::spawn(async move {
                        Conn::new(stream, sh, index, cancel).serve().await;
                        live.set(live.get() - 1);
                    });
                }
                Err(_) => {
                    if sh.stopped() {
                        break;
                    }
                    // EMFILE and friends: back off a little.
                    monoio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        // Let connection tasks see the cancellation and close their sockets
        // (the runtime does not drop leftover tasks).
        for _ in 0..200 {
            if live.get() == 0 {
                break;
            }
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    if let Err(e) = ran {
        let _ = failed.send(Err(e.to_string()));
    }
}

/// The request methods the mock tells apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum Method {
    Post,
    Get,
    Delete,
    #[default]
    Other,
}

/// The parts of a request head the mock needs, owned, kept from one request to the next
/// so that reading a head allocates nothing once the connection is warm.
#[derive(Default)]
pub(crate) struct Head {
    pub(crate) method: Method,
    pub(crate) path_ok: bool,
    /// `Mcp-Session-Id` (trimmed), when `has_session`.
    session: String,
    has_session: bool,
    pub(crate) accept_sse: bool,
    /// `MCP-Protocol-Version` is the stateless revision.
    pub(crate) stateless_version: bool,
    pub(crate) close: bool,
}

impl Head {
    /// The `Mcp-Session-Id` header, if any.
    pub(crate) fn session(&self) -> Option<&str> {
        self.has_session.then_some(self.session.as_str())
    }
}

enum Parsed {
    Partial,
    Bad,
    /// A request was read into `Conn::head` and `Conn::body`; the value is the number of
    /// input bytes it took.
    Done(usize),
}

/// Where `MCP-Protocol-Version` sits in [`RECORDED_HEADERS`].
pub(crate) const PROTOCOL_VERSION: usize = 2;

/// The request headers the mock reads, found in one pass (the first of each name).
#[derive(Default)]
struct HeadFields<'a> {
    transfer_encoding: Option<&'a [u8]>,
    content_length: Option<&'a [u8]>,
    connection: Option<&'a [u8]>,
    session: Option<&'a [u8]>,
    accept: Option<&'a [u8]>,
    recorded: [Option<&'a [u8]>; RECORDED_HEADERS.len()],
}

impl<'a> HeadFields<'a> {
    fn take(&mut self, h: &httparse::Header<'a>) {
        let name = h.name;
        let slot = if name.eq_ignore_ascii_case("content-length") {
            &mut self.content_length
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            &mut self.transfer_encoding
        } else if name.eq_ignore_ascii_case("connection") {
            &mut self.connection
        } else if name.eq_ignore_ascii_case("mcp-session-id") {
            &mut self.session
        } else if name.eq_ignore_ascii_case("accept") {
            &mut self.accept
        } else if let Some(i) = RECORDED_HEADERS
            .iter()
            .position(|r| name.eq_ignore_ascii_case(r))
        {
            &mut self.recorded[i]
        } else {
            return;
        };
        if slot.is_none() {
            *slot = Some(h.value);
        }
    }
}

/// One HTTP connection.
pub(crate) struct Conn {
    stream: TcpStream,
    pub(crate) sh: Arc<Shared>,
    /// The worker thread this connection lives on (its counters).
    pub(crate) index: usize,
    cancel: CancelHandle,
    inbuf: Vec<u8>,
    head: Head,
    pub(crate) body: Vec<u8>,
    pub(crate) out: Vec<u8>,
    pub(crate) scratch: Vec<u8>,
    headers_seen: HeaderCache,
}

/// What to do after a request was handled.
pub(crate) enum Next {
    KeepAlive,
    Close,
}

impl Conn {
    fn new(stream: TcpStream, sh: Arc<Shared>, index: usize, cancel: CancelHandle) -> Conn {
        Conn {
            stream,
            sh,
            index,
            cancel,
            inbuf: Vec::with_capacity(16 * 1024),
            head: Head::default(),
            body: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
            scratch: Vec::with_capacity(4 * 1024),
            headers_seen: HeaderCache::default(),
        }
    }

    /// This connection's thread's counters.
    pub(crate) fn counts(&self) -> &ThreadCounts {
        self.sh.counts.thread(self.index)
    }

    async fn serve(mut self) {
        loop {
            match self.parse() {
                Parsed::Partial => {
                    if self.inbuf.len() > MAX_REQUEST {
                        self.plain(413, "Payload Too Large", "request too large\n", true);
                        let _ = self.flush().await;
                        return;
                    }
                    let buf = std::mem::take(&mut self.inbuf);
                    let (res, buf) =
                        http::read_more(&mut self.stream, buf, 16 * 1024, Some(&self.cancel)).await;
                    self.inbuf = buf;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
                Parsed::Bad => {
                    self.plain(400, "Bad Request", "bad request\n", true);
                    let _ = self.flush().await;
                    return;
                }
                Parsed::Done(consumed) => {
                    let head = std::mem::take(&mut self.head);
                    let next = self.handle(&head).await;
                    self.inbuf.drain(..consumed);
                    let close = head.close;
                    self.head = head;
                    match next {
                        Ok(Next::KeepAlive) if !close && !self.sh.stopped() => {}
                        _ => return,
                    }
                }
            }
        }
    }

    /// Tries to parse one complete request from `inbuf`; the head goes to `self.head`,
    /// the body to `self.body`.
    fn parse(&mut self) -> Parsed {
        if self.inbuf.is_empty() {
            return Parsed::Partial;
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&self.inbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Bad,
        };
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Parsed::Bad;
        };
        let mut f = HeadFields::default();
        for h in req.headers.iter() {
            f.take(h);
        }
        let chunked = f.transfer_encoding.map(|v| http::has_token(v, "chunked"));
        let consumed = match chunked {
            Some(true) => match http::decode_chunked(&self.inbuf[head_len..], &mut self.body) {
                Chunked::Done(n) => head_len + n,
                Chunked::Partial => return Parsed::Partial,
                Chunked::Invalid => return Parsed::Bad,
            },
            Some(false) => return Parsed::Bad,
            None => {
                let len = match f.content_length {
                    None => 0,
                    Some(v) => match std::str::from_utf8(v)
                        .ok()
                        .and_then(|s| s.trim().parse::<usize>().ok())
                    {
                        Some(n) if n <= MAX_REQUEST => n,
                        _ => return Parsed::Bad,
                    },
                };
                if self.inbuf.len() < head_len + len {
                    return Parsed::Partial;
                }
                self.body.clear();
                self.body
                    .extend_from_slice(&self.inbuf[head_len..head_len + len]);
                head_len + len
            }
        };
        fn text(v: Option<&[u8]>) -> Option<&str> {
            v.and_then(|v| std::str::from_utf8(v).ok()).map(str::trim)
        }
        let seen = f.recorded.map(text);
        self.sh.headers.record(&mut self.headers_seen, &seen);
        let close = match req.version {
            Some(0) => !f
                .connection
                .is_some_and(|v| http::has_token(v, "keep-alive")),
            _ => f.connection.is_some_and(|v| http::has_token(v, "close")),
        };
        let path_only = path.split('?').next().unwrap_or(path);
        let head = &mut self.head;
        head.method = match method {
            "POST" => Method::Post,
            "GET" => Method::Get,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        };
        head.path_ok = path_only == "/mcp";
        head.session.clear();
        head.has_session = false;
        if let Some(s) = text(f.session) {
            head.session.push_str(s);
            head.has_session = true;
        }
        head.accept_sse = f
            .accept
            .is_some_and(|v| http::has_token(v, "text/event-stream"));
        head.stateless_version = seen[PROTOCOL_VERSION] == Some(STATELESS_VERSION);
        head.close = close;
        Parsed::Done(consumed)
    }

    async fn handle(&mut self, head: &Head) -> std::io::Result<Next> {
        if !head.path_ok {
            self.plain(404, "Not Found", "not found\n", head.close);
            return self.flush_keep().await;
        }
        match head.method {
            Method::Post => self.post(head).await,
            Method::Get => self.get(head).await,
            Method::Delete => {
                if self.sh.cfg.stateless {
                    self.method_not_allowed(head);
                } else {
                    match self.check_session(head) {
                        Ok(()) => {
                            if let Some(id) = head.session() {
                                self.sh.sessions.end(id);
                            }
                            self.head(200, "OK", None, &[], Some(0), head.close);
                        }
                        Err((status, reason, body)) => {
                            self.json_error(status, reason, &body, head.close)
                        }
                    }
                }
                self.flush_keep().await
            }
            Method::Other => {
                self.method_not_allowed(head);
                self.flush_keep().await
            }
        }
    }

    /// Ok if the request's session is open, else Err(status, reason, JSON-RPC error body).
    pub(crate) fn check_session(&self, head: &Head) -> Result<(), (u16, &'static str, Value)> {
        match head.session() {
            None => Err((
                400,
                "Bad Request",
                rpc_error(
                    &Value::Null,
                    -32600,
                    "Bad Request: missing Mcp-Session-Id header",
                ),
            )),
            Some(id) if self.sh.sessions.is_open(id) => Ok(()),
            Some(_) => Err((
                404,
                "Not Found",
                rpc_error(&Value::Null, -32001, "Session not found"),
            )),
        }
    }

    async fn get(&mut self, head: &Head) -> std::io::Result<Next> {
        if self.sh.cfg.stateless || !self.sh.cfg.get_stream || !head.accept_sse {
            self.method_not_allowed(head);
            return self.flush_keep().await;
        }
        if let Err((status, reason, body)) = self.check_session(head) {
            self.json_error(status, reason, &body, head.close);
            return self.flush_keep().await;
        }
        self.sse_head(true);
        let hello = json!({
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "data": format!("hello from {}", self.sh.cfg.name)},
        });
        self.sse_event(&hello);
        self.flush().await?;
        'outer: loop {
            for _ in 0..10 {
                monoio::time::sleep(Duration::from_millis(100)).await;
                if self.sh.stopped() {
                    break 'outer;
                }
            }
            http::push_chunk(&mut self.out, b": keepalive\n\n");
            self.flush().await?;
        }
        self.out.extend_from_slice(http::LAST_CHUNK);
        let _ = self.flush().await;
        Ok(Next::Close)
    }

    pub(crate) fn sse_head(&mut self, close: bool) {
        self.head(
            200,
            "OK",
            Some("text/event-stream"),
            &[
                ("Cache-Control", "no-cache"),
                ("Transfer-Encoding", "chunked"),
            ],
            None,
            close,
        );
    }

    /// Appends one SSE event (with an id) as one chunk.
    pub(crate) fn sse_event(&mut self, v: &Value) {
        let n = self.sh.event_seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.scratch.clear();
        self.scratch
            .extend_from_slice(format!("id: {n}\nevent: message\ndata: ").as_bytes());
        let _ = serde_json::to_writer(&mut self.scratch, v);
        self.scratch.extend_from_slice(b"\n\n");
        let ev = std::mem::take(&mut self.scratch);
        http::push_chunk(&mut self.out, &ev);
        self.scratch = ev;
    }

    pub(crate) fn method_not_allowed(&mut self, head: &Head) {
        self.head(
            405,
            "Method Not Allowed",
            None,
            &[("Allow", "GET, POST, DELETE")],
            Some(0),
            head.close,
        );
    }

    pub(crate) fn plain(&mut self, status: u16, reason: &str, body: &str, close: bool) {
        self.whole(status, reason, "text/plain", body.as_bytes(), close);
    }

    pub(crate) fn json_error(&mut self, status: u16, reason: &str, body: &Value, close: bool) {
        let text = body.to_string();
        self.whole(status, reason, "application/json", text.as_bytes(), close);
    }

    /// Appends an answer with a body of `ctype`.
    fn whole(&mut self, status: u16, reason: &str, ctype: &str, body: &[u8], close: bool) {
        self.head(status, reason, Some(ctype), &[], Some(body.len()), close);
        self.out.extend_from_slice(body);
    }

    /// Appends a response head to `out` ([`write_head`]).
    pub(crate) fn head(
        &mut self,
        status: u16,
        reason: &str,
        ctype: Option<&str>,
        extra: &[(&str, &str)],
        len: Option<usize>,
        close: bool,
    ) {
        write_head(&mut self.out, status, reason, ctype, extra, len, close);
    }

    pub(crate) async fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.out);
        let (res, mut buf) = http::write_all(&mut self.stream, buf, Some(&self.cancel)).await;
        buf.clear();
        self.out = buf;
        res
    }

    pub(crate) async fn flush_keep(&mut self) -> std::io::Result<Next> {
        self.flush().await.map(|_| Next::KeepAlive)
    }
}

/// Appends a response head to `o`. `len` None means the caller set `Transfer-Encoding`
/// itself.
pub(crate) fn write_head(
    o: &mut Vec<u8>,
    status: u16,
    reason: &str,
    ctype: Option<&str>,
    extra: &[(&str, &str)],
    len: Option<usize>,
    close: bool,
) {
    use std::io::Write;
    let _ = write!(o, "HTTP/1.1 {status} {reason}\r\n");
    if let Some(ct) = ctype {
        let _ = write!(o, "Content-Type: {ct}\r\n");
    }
    for (k, v) in extra {
        let _ = write!(o, "{k}: {v}\r\n");
    }
    if let Some(n) = len {
        let _ = write!(o, "Content-Length: {n}\r\n");
    }
    if close {
        o.extend_from_slice(b"Connection: close\r\n");
    }
    o.extend_from_slice(b"\r\n");
}
