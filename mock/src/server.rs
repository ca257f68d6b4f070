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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};
use serde_json::{json, Value};

use crate::http::{self, Chunked};

/// Largest request head + body the mock accepts.
const MAX_REQUEST: usize = 16 * 1024 * 1024;
/// Headers recorded for [`MockServer::last_header`] (lowercase).
const RECORDED_HEADERS: [&str; 4] = [
    "host",
    "authorization",
    "mcp-protocol-version",
    "last-event-id",
];
/// The stateless protocol revision.
const STATELESS_VERSION: &str = "2026-07-28";

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
        }
    }
}

/// State shared by all worker threads of one mock server.
struct Shared {
    cfg: MockConfig,
    stop: AtomicBool,
    requests: AtomicU64,
    session_seq: AtomicU64,
    event_seq: AtomicU64,
    sessions: Mutex<HashSet<String>>,
    tool_calls: Mutex<HashMap<String, u64>>,
    last_headers: Mutex<HashMap<&'static str, String>>,
    tools_list: Value,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    fn new_session(&self) -> String {
        let n = self.session_seq.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}-{}", self.cfg.name, n);
        lock(&self.sessions).insert(id.clone());
        id
    }

    fn count_tool(&self, name: &str) {
        let mut map = lock(&self.tool_calls);
        match map.get_mut(name) {
            Some(n) => *n += 1,
            None => {
                map.insert(name.to_string(), 1);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
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
        let shared = Arc::new(Shared {
            tools_list: tools_list(),
            cfg,
            stop: AtomicBool::new(false),
            requests: AtomicU64::new(0),
            session_seq: AtomicU64::new(0),
            event_seq: AtomicU64::new(0),
            sessions: Mutex::new(HashSet::new()),
            tool_calls: Mutex::new(HashMap::new()),
            last_headers: Mutex::new(HashMap::new()),
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
                .spawn(move || worker(l, sh, tx))?;
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
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// How many `tools/call` requests named `tool` were received.
    pub fn tool_calls(&self, tool: &str) -> u64 {
        lock(&self.shared.tool_calls)
            .get(tool)
            .copied()
            .unwrap_or(0)
    }

    /// Number of sessions currently open.
    pub fn sessions(&self) -> usize {
        lock(&self.shared.sessions).len()
    }

    /// The last value seen of one of the headers `Host`, `Authorization`,
    /// `MCP-Protocol-Version` and `Last-Event-ID` (name case-insensitive), on
    /// any request. A request without the header leaves the value unchanged.
    pub fn last_header(&self, name: &str) -> Option<String> {
        let name = name.to_ascii_lowercase();
        lock(&self.shared.last_headers).get(name.as_str()).cloned()
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

fn worker(l: std::net::TcpListener, sh: Arc<Shared>, ready: mpsc::Sender<Result<(), String>>) {
    let mut rt = match monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.to_string()));
            return;
        }
    };
    rt.block_on(async move {
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
                        Conn::new(stream, sh, cancel).serve().await;
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
}

/// The parts of a request head the mock needs, owned.
struct Head {
    method: String,
    path_ok: bool,
    session: Option<String>,
    accept_sse: bool,
    protocol_version: Option<String>,
    close: bool,
}

enum Parsed {
    Partial,
    Bad,
    Done(Head, usize),
}

/// One HTTP connection.
struct Conn {
    stream: TcpStream,
    sh: Arc<Shared>,
    cancel: CancelHandle,
    inbuf: Vec<u8>,
    body: Vec<u8>,
    out: Vec<u8>,
    scratch: Vec<u8>,
}

/// What to do after a request was handled.
enum Next {
    KeepAlive,
    Close,
}

impl Conn {
    fn new(stream: TcpStream, sh: Arc<Shared>, cancel: CancelHandle) -> Conn {
        Conn {
            stream,
            sh,
            cancel,
            inbuf: Vec::with_capacity(16 * 1024),
            body: Vec::new(),
            out: Vec::with_capacity(16 * 1024),
            scratch: Vec::with_capacity(4 * 1024),
        }
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
                Parsed::Done(head, consumed) => {
                    let next = self.handle(&head).await;
                    self.inbuf.drain(..consumed);
                    match next {
                        Ok(Next::KeepAlive) if !head.close && !self.sh.stopped() => {}
                        _ => return,
                    }
                }
            }
        }
    }

    /// Tries to parse one complete request from `inbuf`; the body goes to
    /// `self.body`.
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
        let hdrs = &*req.headers;
        let chunked =
            http::header(hdrs, "transfer-encoding").map(|v| http::has_token(v, "chunked"));
        let consumed = match chunked {
            Some(true) => match http::decode_chunked(&self.inbuf[head_len..], &mut self.body) {
                Chunked::Done(n) => head_len + n,
                Chunked::Partial => return Parsed::Partial,
                Chunked::Invalid => return Parsed::Bad,
            },
            Some(false) => return Parsed::Bad,
            None => {
                let len = match http::header(hdrs, "content-length") {
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
        let text = |name: &str| {
            http::header(hdrs, name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|s| s.trim().to_string())
        };
        let mut seen = Vec::new();
        for name in RECORDED_HEADERS {
            if let Some(v) = text(name) {
                seen.push((name, v));
            }
        }
        if !seen.is_empty() {
            let mut map = lock(&self.sh.last_headers);
            for (k, v) in seen {
                map.insert(k, v);
            }
        }
        let conn_hdr = http::header(hdrs, "connection");
        let close = match req.version {
            Some(0) => !conn_hdr.is_some_and(|v| http::has_token(v, "keep-alive")),
            _ => conn_hdr.is_some_and(|v| http::has_token(v, "close")),
        };
        let path_only = path.split('?').next().unwrap_or(path);
        Parsed::Done(
            Head {
                method: method.to_string(),
                path_ok: path_only == "/mcp",
                session: text("mcp-session-id"),
                accept_sse: http::header(hdrs, "accept")
                    .is_some_and(|v| http::has_token(v, "text/event-stream")),
                protocol_version: text("mcp-protocol-version"),
                close,
            },
            consumed,
        )
    }

    async fn handle(&mut self, head: &Head) -> std::io::Result<Next> {
        if !head.path_ok {
            self.plain(404, "Not Found", "not found\n", head.close);
            return self.flush_keep().await;
        }
        match head.method.as_str() {
            "POST" => self.post(head).await,
            "GET" => self.get(head).await,
            "DELETE" => {
                if self.sh.cfg.stateless {
                    self.method_not_allowed(head);
                } else {
                    match self.check_session(head) {
                        Ok(id) => {
                            lock(&self.sh.sessions).remove(&id);
                            self.head(200, "OK", None, &[], Some(0), head.close);
                        }
                        Err((status, reason, body)) => {
                            self.json_error(status, reason, &body, head.close)
                        }
                    }
                }
                self.flush_keep().await
            }
            _ => {
                self.method_not_allowed(head);
                self.flush_keep().await
            }
        }
    }

    /// Ok(session id) or Err(status, reason, JSON-RPC error body).
    fn check_session(&self, head: &Head) -> Result<String, (u16, &'static str, Value)> {
        match &head.session {
            None => Err((
                400,
                "Bad Request",
                rpc_error(
                    &Value::Null,
                    -32600,
                    "Bad Request: missing Mcp-Session-Id header",
                ),
            )),
            Some(id) if lock(&self.sh.sessions).contains(id) => Ok(id.clone()),
            Some(_) => Err((
                404,
                "Not Found",
                rpc_error(&Value::Null, -32001, "Session not found"),
            )),
        }
    }

    async fn post(&mut self, head: &Head) -> std::io::Result<Next> {
        let msg: Value = match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(_) => {
                self.sh.requests.fetch_add(1, Ordering::Relaxed);
                let body = rpc_error(&Value::Null, -32700, "Parse error");
                self.json_error(400, "Bad Request", &body, head.close);
                return self.flush_keep().await;
            }
        };
        match msg {
            Value::Array(items) => self.post_batch(head, items).await,
            Value::Object(_) => self.post_one(head, msg).await,
            _ => {
                self.sh.requests.fetch_add(1, Ordering::Relaxed);
                let body = rpc_error(&Value::Null, -32600, "Invalid Request");
                self.json_error(400, "Bad Request", &body, head.close);
                self.flush_keep().await
            }
        }
    }

    /// Session check for a message that is not `initialize`; None if allowed.
    fn session_gate(&self, head: &Head, msg: &Value) -> Option<(u16, &'static str, Value)> {
        if self.sh.cfg.stateless || is_init_request(msg) || is_stateless_style(head, msg) {
            return None;
        }
        self.check_session(head).err().map(|(s, r, mut body)| {
            if let Some(id) = request_id(msg) {
                body["id"] = id.clone();
            }
            (s, r, body)
        })
    }

    async fn post_one(&mut self, head: &Head, msg: Value) -> std::io::Result<Next> {
        self.sh.requests.fetch_add(1, Ordering::Relaxed);
        if let Some((status, reason, body)) = self.session_gate(head, &msg) {
            self.json_error(status, reason, &body, head.close);
            return self.flush_keep().await;
        }
        let Some(id) = request_id(&msg).cloned() else {
            // Notification or response.
            self.head(202, "Accepted", None, &[], Some(0), head.close);
            return self.flush_keep().await;
        };
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        if method == "tools/call" && tool_name(&msg) == Some("progress") && head.accept_sse {
            self.sh.count_tool("progress");
            return self.progress_stream(head, &id, &msg).await;
        }
        let (resp, mut session) = self.dispatch(&id, &msg).await;
        if session.is_none() && method == "ping" {
            // Like several real servers, repeat the session id on later answers (here: ping),
            // so tests can check the proxy hands the client back the id it holds.
            session = head.session.clone();
        }
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, &resp).map_err(std::io::Error::other)?;
        let owned;
        let extra: &[(&str, &str)] = match &session {
            Some(s) => {
                owned = [("Mcp-Session-Id", s.as_str())];
                &owned
            }
            None => &[],
        };
        let len = self.scratch.len();
        self.head(
            200,
            "OK",
            Some("application/json"),
            extra,
            Some(len),
            head.close,
        );
        let body = std::mem::take(&mut self.scratch);
        self.out.extend_from_slice(&body);
        self.scratch = body;
        self.flush_keep().await
    }

    async fn post_batch(&mut self, head: &Head, items: Vec<Value>) -> std::io::Result<Next> {
        self.sh
            .requests
            .fetch_add(items.len().max(1) as u64, Ordering::Relaxed);
        if items.is_empty() {
            let body = rpc_error(&Value::Null, -32600, "Invalid Request: empty batch");
            self.json_error(400, "Bad Request", &body, head.close);
            return self.flush_keep().await;
        }
        if let Some((status, reason, body)) = items.iter().find_map(|m| self.session_gate(head, m))
        {
            self.json_error(status, reason, &body, head.close);
            return self.flush_keep().await;
        }
        let mut responses = Vec::new();
        let mut session = None;
        for msg in &items {
            let Some(id) = request_id(msg).cloned() else {
                continue;
            };
            if msg.get("method").and_then(Value::as_str) == Some("tools/call")
                && tool_name(msg) == Some("progress")
            {
                self.sh.count_tool("progress");
                let wait = self.sh.cfg.latency
                    + self.sh.cfg.progress_interval * self.sh.cfg.progress_events as u32;
                monoio::time::sleep(wait).await;
                responses.push(rpc_result(&id, text_content("progress done")));
                continue;
            }
            let (resp, s) = self.dispatch(&id, msg).await;
            if s.is_some() {
                session = s;
            }
            responses.push(resp);
        }
        if responses.is_empty() {
            self.head(202, "Accepted", None, &[], Some(0), head.close);
            return self.flush_keep().await;
        }
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, &responses).map_err(std::io::Error::other)?;
        let owned;
        let extra: &[(&str, &str)] = match &session {
            Some(s) => {
                owned = [("Mcp-Session-Id", s.as_str())];
                &owned
            }
            None => &[],
        };
        let len = self.scratch.len();
        self.head(
            200,
            "OK",
            Some("application/json"),
            extra,
            Some(len),
            head.close,
        );
        let body = std::mem::take(&mut self.scratch);
        self.out.extend_from_slice(&body);
        self.scratch = body;
        self.flush_keep().await
    }

    /// Answers one request; returns the response and a new session id if one
    /// was issued.
    async fn dispatch(&mut self, id: &Value, msg: &Value) -> (Value, Option<String>) {
        let method = msg.get("method").and_then(Value::as_str).unwrap_or("");
        let params = msg.get("params").unwrap_or(&Value::Null);
        let cfg = &self.sh.cfg;
        match method {
            "initialize" => {
                let version = params
                    .get("protocolVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("2025-06-18");
                let result = json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": true}},
                    "serverInfo": {"name": cfg.name, "version": "0.1"},
                });
                let session = (!cfg.stateless).then(|| self.sh.new_session());
                (rpc_result(id, result), session)
            }
            "ping" => (rpc_result(id, json!({})), None),
            "tools/list" => (rpc_result(id, self.sh.tools_list.clone()), None),
            "server/discover" => (
                rpc_result(
                    id,
                    json!({
                        "supportedVersions": [STATELESS_VERSION],
                        "capabilities": {"tools": {"listChanged": true}},
                        "serverInfo": {"name": cfg.name, "version": "0.1"},
                    }),
                ),
                None,
            ),
            "tools/call" => (self.call_tool(id, params).await, None),
            _ => (
                rpc_error(id, -32601, &format!("Method not found: {method}")),
                None,
            ),
        }
    }

    async fn call_tool(&mut self, id: &Value, params: &Value) -> Value {
        let name = params.get("name").and_then(Value::as_str).unwrap_or("");
        let args = params
            .get("arguments")
            .cloned()
            .unwrap_or_else(|| json!({}));
        self.sh.count_tool(name);
        let latency = self.sh.cfg.latency;
        if !latency.is_zero() {
            monoio::time::sleep(latency).await;
        }
        match name {
            "echo" => rpc_result(id, text_content(&args.to_string())),
            "whoami" => rpc_result(id, text_content(&self.sh.cfg.name)),
            "slow" => {
                let ms = args
                    .get("ms")
                    .and_then(Value::as_u64)
                    .unwrap_or(100)
                    .min(600_000);
                monoio::time::sleep(Duration::from_millis(ms)).await;
                rpc_result(id, text_content(&format!("slept {ms} ms")))
            }
            "progress" => {
                let wait = self.sh.cfg.progress_interval * self.sh.cfg.progress_events as u32;
                monoio::time::sleep(wait).await;
                rpc_result(id, text_content("progress done"))
            }
            "big" => {
                let n = args
                    .get("bytes")
                    .and_then(Value::as_u64)
                    .unwrap_or(1024)
                    .min(MAX_REQUEST as u64) as usize;
                rpc_result(id, text_content(&"x".repeat(n)))
            }
            "fail" => rpc_error(id, -32603, "tool failed on purpose"),
            // How MCP servers report a tool that ran and failed, bad arguments included.
            "tool_error" => rpc_result(
                id,
                json!({"content": [{"type": "text", "text": "tool failed on purpose"}], "isError": true}),
            ),
            // A server bug a client must notice: the id comes back with another type.
            "wrong_id" => rpc_result(&Value::String(id.to_string()), text_content("wrong id")),
            _ => rpc_error(id, -32602, &format!("Unknown tool: {name}")),
        }
    }

    /// The `progress` tool answered as an SSE stream.
    async fn progress_stream(
        &mut self,
        head: &Head,
        id: &Value,
        msg: &Value,
    ) -> std::io::Result<Next> {
        let token = msg
            .pointer("/params/_meta/progressToken")
            .cloned()
            .unwrap_or_else(|| json!(0));
        self.sse_head(head.close);
        self.flush().await?;
        let latency = self.sh.cfg.latency;
        if !latency.is_zero() {
            monoio::time::sleep(latency).await;
        }
        let total = self.sh.cfg.progress_events;
        for i in 1..=total {
            if i > 1 {
                monoio::time::sleep(self.sh.cfg.progress_interval).await;
            }
            if self.sh.stopped() {
                return Ok(Next::Close);
            }
            let note = json!({
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": token, "progress": i, "total": total},
            });
            self.sse_event(&note);
            self.flush().await?;
        }
        if total > 0 {
            monoio::time::sleep(self.sh.cfg.progress_interval).await;
        }
        let resp = rpc_result(id, text_content("progress done"));
        self.sse_event(&resp);
        self.out.extend_from_slice(http::LAST_CHUNK);
        self.flush_keep().await
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

    fn sse_head(&mut self, close: bool) {
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
    fn sse_event(&mut self, v: &Value) {
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

    fn method_not_allowed(&mut self, head: &Head) {
        self.head(
            405,
            "Method Not Allowed",
            None,
            &[("Allow", "GET, POST, DELETE")],
            Some(0),
            head.close,
        );
    }

    fn plain(&mut self, status: u16, reason: &str, body: &str, close: bool) {
        self.head(
            status,
            reason,
            Some("text/plain"),
            &[],
            Some(body.len()),
            close,
        );
        self.out.extend_from_slice(body.as_bytes());
    }

    fn json_error(&mut self, status: u16, reason: &str, body: &Value, close: bool) {
        let text = body.to_string();
        self.head(
            status,
            reason,
            Some("application/json"),
            &[],
            Some(text.len()),
            close,
        );
        self.out.extend_from_slice(text.as_bytes());
    }

    /// Appends a response head to `out`. `len` None means the caller set
    /// `Transfer-Encoding` itself.
    fn head(
        &mut self,
        status: u16,
        reason: &str,
        ctype: Option<&str>,
        extra: &[(&str, &str)],
        len: Option<usize>,
        close: bool,
    ) {
        use std::io::Write;
        let o = &mut self.out;
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

    async fn flush(&mut self) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.out);
        let (res, mut buf) = http::write_all(&mut self.stream, buf, Some(&self.cancel)).await;
        buf.clear();
        self.out = buf;
        res
    }

    async fn flush_keep(&mut self) -> std::io::Result<Next> {
        self.flush().await.map(|_| Next::KeepAlive)
    }
}

fn request_id(msg: &Value) -> Option<&Value> {
    msg.get("method")?;
    msg.get("id").filter(|id| !id.is_null())
}

fn is_init_request(msg: &Value) -> bool {
    request_id(msg).is_some() && msg.get("method").and_then(Value::as_str) == Some("initialize")
}

fn is_stateless_style(head: &Head, msg: &Value) -> bool {
    msg.get("method").and_then(Value::as_str) == Some("server/discover")
        || head.protocol_version.as_deref() == Some(STATELESS_VERSION)
        || msg
            .pointer("/params/_meta")
            .and_then(|m| m.get("io.modelcontextprotocol/protocolVersion"))
            .is_some()
}

fn tool_name(msg: &Value) -> Option<&str> {
    msg.pointer("/params/name").and_then(Value::as_str)
}

fn rpc_result(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

fn text_content(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": false})
}

fn tools_list() -> Value {
    let obj = |props: Value| json!({"type": "object", "properties": props});
    json!({"tools": [
        {"name": "echo", "description": "Returns its arguments as text.", "inputSchema": obj(json!({}))},
        {"name": "whoami", "description": "Returns the backend's name.", "inputSchema": obj(json!({}))},
        {"name": "slow", "description": "Sleeps `ms` milliseconds, then answers.",
         "inputSchema": obj(json!({"ms": {"type": "integer"}}))},
        {"name": "progress", "description": "Sends progress notifications over SSE, then answers.",
         "inputSchema": obj(json!({}))},
        {"name": "big", "description": "Returns a text of `bytes` bytes.",
         "inputSchema": obj(json!({"bytes": {"type": "integer"}}))},
        {"name": "fail", "description": "Always fails with JSON-RPC error -32603.", "inputSchema": obj(json!({}))},
        {"name": "tool_error", "description": "Always answers a result with `isError: true`.", "inputSchema": obj(json!({}))},
        {"name": "wrong_id", "description": "Answers with the request's id turned into a string (a broken server).", "inputSchema": obj(json!({}))},
    ]})
}
