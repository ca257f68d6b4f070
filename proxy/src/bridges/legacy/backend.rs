//! [`LegacyBackend`]: an old (2024-11-05 HTTP+SSE) server behind mcplb, for new clients.
//!
//! Each Streamable HTTP session owns one SSE connection to the old server. A reader thread
//! per session routes what arrives on it: a response goes to the POST waiting for its id; a
//! `notifications/progress` goes to the POST whose request carried its `progressToken`;
//! anything else server-initiated goes to the one POST in flight that can stream (when there
//! is exactly one), else to the session's GET stream, else to the oldest streaming POST, else
//! to a small backlog that the next GET stream receives first.

use std::collections::VecDeque;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::Value;

use super::net::{
    self, begin, error_body, exchange, id_key, kind, lock, messages, write_json, write_response,
    After, Conn, EventReader, Kind, Out, Registry, Request, Server, Url,
};
use super::KEEPALIVE_INTERVAL;

/// How long the old server may take to send its `endpoint` event.
const ENDPOINT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for the old server's answer to a POST (it answers 202 before working).
const POST_TIMEOUT: Duration = Duration::from_secs(30);
/// Server-initiated messages kept for a GET stream that is not open yet.
const BACKLOG_MAX: usize = 1024;

/// Serves Streamable HTTP at `/mcp` on 127.0.0.1:0 and translates it to an old HTTP+SSE
/// server. Dropping it stops accepting and closes every old-server connection.
pub struct LegacyBackend {
    shared: Arc<Shared>,
    server: Server,
}

struct Shared {
    sse_url: Url,
    sessions: Registry<Session>,
}

/// A POST waiting for responses.
struct Waiter {
    key: String,
    tx: Sender<Value>,
    /// The client accepts an event stream, so intermediate messages may go to it.
    streams: bool,
    seq: u64,
}

#[derive(Default)]
struct Routes {
    waiters: Vec<Waiter>,
    /// progressToken key → the waiter's channel.
    progress: Vec<(String, Sender<Value>)>,
    /// The open GET stream: its number and channel.
    get: Option<(u64, Sender<Out>)>,
    backlog: VecDeque<Value>,
}

/// One Streamable HTTP session = one SSE connection to the old server.
struct Session {
    id: String,
    endpoint: Url,
    /// The old server's SSE connection (to shut it down on DELETE).
    conn: Option<TcpStream>,
    alive: AtomicBool,
    routes: Mutex<Routes>,
    seq: AtomicU64,
}

impl Session {
    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Ends the session: its waiters see their channels close, its GET stream ends.
    fn kill(&self) {
        self.alive.store(false, Ordering::Relaxed);
        if let Some(c) = &self.conn {
            let _ = c.shutdown(Shutdown::Both);
        }
        let mut r = lock(&self.routes);
        r.waiters.clear();
        r.progress.clear();
        if let Some((_, tx)) = r.get.take() {
            let _ = tx.send(Out::Close);
        }
    }

    /// Routes one message that arrived on the old server's stream.
    fn route(&self, msg: Value) {
        let mut r = lock(&self.routes);
        match kind(&msg) {
            Kind::Response => {
                let key = msg.get("id").map(id_key).unwrap_or_default();
                if let Some(i) = r.waiters.iter().position(|w| w.key == key) {
                    let w = r.waiters.remove(i);
                    let _ = w.tx.send(msg);
                } else {
                    tracing::debug!(id = %key, "legacy backend: response for no waiting request dropped");
                }
                return;
            }
            Kind::Invalid => {
                tracing::debug!("legacy backend: invalid message from the old server dropped");
                return;
            }
            _ => {}
        }
        if msg.get("method").and_then(Value::as_str) == Some("notifications/progress") {
            if let Some(token) = msg.pointer("/params/progressToken").map(id_key) {
                if let Some((_, tx)) = r.progress.iter().find(|(t, _)| *t == token) {
                    if tx.send(msg.clone()).is_ok() {
                        return;
                    }
                }
            }
        }
        let streaming: Vec<usize> = (0..r.waiters.len())
            .filter(|&i| r.waiters[i].streams)
            .collect();
        if streaming.len() == 1 {
            let i = streaming[0];
            if r.waiters[i].tx.send(msg.clone()).is_ok() {
                return;
            }
        }
        if let Some((_, tx)) = &r.get {
            if tx.send(Out::Msg(msg.to_string())).is_ok() {
                return;
            }
        }
        if let Some(w) = r.waiters.iter().filter(|w| w.streams).min_by_key(|w| w.seq) {
            if w.tx.send(msg.clone()).is_ok() {
                return;
            }
        }
        if r.backlog.len() >= BACKLOG_MAX {
            r.backlog.pop_front();
        }
        r.backlog.push_back(msg);
    }
}

impl LegacyBackend {
    /// Serves Streamable HTTP on 127.0.0.1:0 at path `/mcp`, translating to an old HTTP+SSE
    /// server whose SSE endpoint is `sse_url` (e.g. `http://127.0.0.1:PORT/sse`).
    pub fn start(sse_url: &str) -> anyhow::Result<LegacyBackend> {
        let shared = Arc::new(Shared {
            sse_url: Url::parse(sse_url)?,
            sessions: Registry::default(),
        });
        let s2 = shared.clone();
        let server = Server::start(
            "legacy-backend",
            Arc::new(move |conn: &mut Conn, req: Request| handle(&s2, conn, req)),
        )?;
        Ok(LegacyBackend { shared, server })
    }

    /// The bridge's address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The Streamable HTTP endpoint: `http://ADDR/mcp`.
    pub fn url(&self) -> String {
        format!("http://{}/mcp", self.server.addr)
    }

    /// How many sessions (old-server SSE connections) are open.
    pub fn sessions(&self) -> usize {
        lock(&self.shared.sessions).len()
    }
}

impl Drop for LegacyBackend {
    fn drop(&mut self) {
        let all: Vec<Arc<Session>> = lock(&self.shared.sessions)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for s in all {
            s.kill();
        }
    }
}

fn handle(shared: &Arc<Shared>, conn: &mut Conn, req: Request) -> std::io::Result<After> {
    if req.path() != "/mcp" && req.path() != "/mcp/" {
        write_response(
            &mut conn.stream,
            404,
            &[("content-type", "text/plain")],
            b"not found",
        )?;
        return Ok(After::KeepAlive);
    }
    let session = match req.header("mcp-session-id") {
        None => None,
        Some(id) => match lock(&shared.sessions).get(id).cloned() {
            Some(s) if s.alive.load(Ordering::Relaxed) => Some(s),
            _ => {
                write_json(
                    &mut conn.stream,
                    404,
                    &[],
                    &error_body(&Value::Null, -32001, "Session not found"),
                )?;
                return Ok(After::KeepAlive);
            }
        },
    };
    match (req.method.as_str(), session) {
        ("POST", s) => post(shared, conn, &req, s),
        ("GET", Some(s)) => {
            get_stream(&s, conn);
            Ok(After::Close)
        }
        ("DELETE", Some(s)) => {
            lock(&shared.sessions).remove(&s.id);
            s.kill();
            write_response(&mut conn.stream, 200, &[], b"")?;
            Ok(After::KeepAlive)
        }
        ("GET" | "DELETE", None) => {
            write_json(
                &mut conn.stream,
                400,
                &[],
                &error_body(
                    &Value::Null,
                    -32600,
                    "Bad Request: Mcp-Session-Id header is required",
                ),
            )?;
            Ok(After::KeepAlive)
        }
        _ => {
            write_response(
                &mut conn.stream,
                405,
                &[("allow", "GET, POST, DELETE")],
                b"",
            )?;
            Ok(After::KeepAlive)
        }
    }
}

fn post(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    req: &Request,
    session: Option<Arc<Session>>,
) -> std::io::Result<After> {
    let parsed: Value = match serde_json::from_slice(&req.body) {
        Ok(v) => v,
        Err(e) => {
            write_json(
                &mut conn.stream,
                400,
                &[],
                &error_body(&Value::Null, -32700, &format!("Parse error: {e}")),
            )?;
            return Ok(After::KeepAlive);
        }
    };
    let msgs = messages(parsed.clone());
    if msgs.is_empty() || msgs.iter().any(|m| kind(m) == Kind::Invalid) {
        write_json(
            &mut conn.stream,
            400,
            &[],
            &error_body(&Value::Null, -32600, "Invalid Request"),
        )?;
        return Ok(After::KeepAlive);
    }
    let auth = req.header("authorization");
    let session = match session {
        Some(s) => s,
        None => {
            let init = msgs.iter().find(|m| {
                kind(m) == Kind::Request
                    && m.get("method").and_then(Value::as_str) == Some("initialize")
            });
            let Some(init) = init else {
                let id = msgs
                    .first()
                    .and_then(|m| m.get("id"))
                    .cloned()
                    .unwrap_or(Value::Null);
                write_json(
                    &mut conn.stream,
                    400,
                    &[],
                    &error_body(
                        &id,
                        -32600,
                        "Bad Request: no session; this server needs `initialize` first",
                    ),
                )?;
                return Ok(After::KeepAlive);
            };
            match connect_old(shared, auth) {
                Ok(s) => {
                    let id = s.id.clone();
                    let (after, ok) = answer(
                        conn,
                        &s,
                        &parsed,
                        &msgs,
                        auth,
                        false,
                        &[("mcp-session-id", &id)],
                    )?;
                    if !ok {
                        lock(&shared.sessions).remove(&s.id);
                        s.kill();
                    }
                    return Ok(after);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "legacy backend: cannot open the old server's stream");
                    let id = init.get("id").cloned().unwrap_or(Value::Null);
                    write_json(
                        &mut conn.stream,
                        502,
                        &[],
                        &error_body(&id, -32603, &format!("legacy server unreachable: {e:#}")),
                    )?;
                    return Ok(After::KeepAlive);
                }
            }
        }
    };
    answer(conn, &session, &parsed, &msgs, auth, req.accepts_sse(), &[]).map(|(after, _)| after)
}

/// Opens the old server's SSE stream, reads its `endpoint` event and starts the session's
/// reader thread.
fn connect_old(shared: &Arc<Shared>, auth: Option<&str>) -> anyhow::Result<Arc<Session>> {
    let mut headers = vec![
        ("accept", "text/event-stream"),
        ("cache-control", "no-cache"),
    ];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let resp = begin(&shared.sse_url, "GET", &headers, b"")?.finish(Some(ENDPOINT_TIMEOUT))?;
    if resp.head.status != 200 {
        bail!(
            "GET {} answered HTTP {}",
            shared.sse_url.target,
            resp.head.status
        );
    }
    if !resp.head.is_sse() {
        bail!(
            "GET {} did not answer an event stream",
            shared.sse_url.target
        );
    }
    let conn = resp.body.shutdown_handle();
    resp.body.set_read_timeout(Some(ENDPOINT_TIMEOUT))?;
    let mut events = EventReader::new(resp.body);
    let mut early = Vec::new();
    let endpoint = loop {
        let ev = events
            .next_event()?
            .ok_or_else(|| anyhow!("the stream ended before an endpoint event"))?;
        match ev.event.as_deref() {
            Some("endpoint") => break shared.sse_url.join(&ev.data)?,
            Some("message") | None => early.extend(net::compact(&ev.data).map(messages)),
            Some(_) => {}
        }
    };
    events.body.set_read_timeout(None)?;
    let session = Arc::new(Session {
        id: net::new_id(),
        endpoint,
        conn,
        alive: AtomicBool::new(true),
        routes: Mutex::new(Routes::default()),
        seq: AtomicU64::new(0),
    });
    for m in early.into_iter().flatten() {
        session.route(m);
    }
    lock(&shared.sessions).insert(session.id.clone(), session.clone());
    let (shared2, s2) = (shared.clone(), session.clone());
    let spawned = std::thread::Builder::new()
        .name("legacy-backend-read".into())
        .spawn(move || read_old(&shared2, &s2, events));
    if let Err(e) = spawned {
        lock(&shared.sessions).remove(&session.id);
        session.kill();
        bail!("cannot spawn a thread: {e}");
    }
    tracing::debug!(session = %session.id, endpoint = %session.endpoint.target, "legacy backend: session opened");
    Ok(session)
}

/// Routes everything the old server sends until its stream ends; then the session is gone.
fn read_old(shared: &Shared, session: &Arc<Session>, mut events: EventReader) {
    loop {
        match events.next_event() {
            Ok(Some(ev)) => match ev.event.as_deref() {
                Some("message") | None => match net::compact(&ev.data) {
                    Some(v) => messages(v).into_iter().for_each(|m| session.route(m)),
                    None => {
                        tracing::debug!("legacy backend: non-JSON event data from the old server")
                    }
                },
                Some(other) => tracing::debug!(event = other, "legacy backend: event ignored"),
            },
            Ok(None) => break,
            Err(e) => {
                if session.alive.load(Ordering::Relaxed) {
                    tracing::info!(error = %e, "legacy backend: old server stream broke");
                }
                break;
            }
        }
    }
    lock(&shared.sessions).remove(&session.id);
    session.kill();
    tracing::debug!(session = %session.id, "legacy backend: session ended");
}

/// POSTs `body` to the old server's endpoint and answers the client: 202 for notifications
/// and responses; for requests, JSON when the first thing back is the last response, else an
/// event stream carrying intermediate messages then the responses. The flag tells whether the
/// old server answered every request (rather than the bridge answering errors for it).
fn answer(
    conn: &mut Conn,
    session: &Arc<Session>,
    body: &Value,
    msgs: &[Value],
    auth: Option<&str>,
    sse_ok: bool,
    extra: &[(&str, &str)],
) -> std::io::Result<(After, bool)> {
    let (tx, rx) = mpsc::channel();
    let mut keys = Vec::new();
    let mut tokens = Vec::new();
    {
        let mut r = lock(&session.routes);
        for m in msgs.iter().filter(|m| kind(m) == Kind::Request) {
            let key = m.get("id").map(id_key).unwrap_or_default();
            r.waiters.push(Waiter {
                key: key.clone(),
                tx: tx.clone(),
                streams: sse_ok,
                seq: session.next_seq(),
            });
            keys.push(key);
            let token = m.pointer("/params/_meta/progressToken").filter(|_| sse_ok);
            if let Some(t) = token.map(id_key) {
                r.progress.push((t.clone(), tx.clone()));
                tokens.push(t);
            }
        }
    }
    drop(tx);
    let unregister = |session: &Session| {
        let mut r = lock(&session.routes);
        r.waiters.retain(|w| !keys.contains(&w.key));
        r.progress.retain(|(t, _)| !tokens.contains(t));
    };
    let first_id = msgs
        .iter()
        .find(|m| kind(m) == Kind::Request)
        .and_then(|m| m.get("id"))
        .cloned()
        .unwrap_or(Value::Null);
    // One POST per message, in order: old servers need not take batches.
    if let Err((status, why)) = msgs.iter().try_for_each(|m| post_old(session, m, auth)) {
        unregister(session);
        if status == 404 {
            session.kill();
        }
        write_json(
            &mut conn.stream,
            status,
            &[],
            &error_body(&first_id, if status == 404 { -32001 } else { -32603 }, &why),
        )?;
        return Ok((After::KeepAlive, false));
    }
    if keys.is_empty() {
        write_response(&mut conn.stream, 202, extra, b"")?;
        return Ok((After::KeepAlive, true));
    }
    let batch = body.is_array();
    let mut remaining = keys.clone();
    let mut responses = Vec::new();
    let mut early = Vec::new();
    // Phase 1: wait for the first message; a lone final answer goes out as JSON.
    let streaming = loop {
        let timeout = if sse_ok {
            KEEPALIVE_INTERVAL
        } else {
            Duration::from_secs(3600)
        };
        match rx.recv_timeout(timeout) {
            Ok(m) => {
                if kind(&m) == Kind::Response {
                    let key = m.get("id").map(id_key).unwrap_or_default();
                    remaining.retain(|k| *k != key);
                    responses.push(m);
                    if remaining.is_empty() {
                        break false;
                    }
                } else if sse_ok {
                    early.push(m);
                    break true;
                }
            }
            Err(RecvTimeoutError::Timeout) if sse_ok => break true,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break false,
        }
    };
    if !streaming {
        unregister(session);
        let ok = remaining.is_empty();
        fail_remaining(&mut responses, &remaining);
        let text = if batch {
            Value::Array(responses).to_string()
        } else {
            responses.pop().unwrap_or(Value::Null).to_string()
        };
        write_json(&mut conn.stream, 200, extra, &text)?;
        return Ok((After::KeepAlive, ok));
    }
    // Phase 2: an event stream, each message as it arrives.
    let mut ok = true;
    let res = (|| -> std::io::Result<()> {
        net::start_sse(&mut conn.stream, extra)?;
        for m in responses.iter().chain(early.iter()) {
            net::write_chunk(
                &mut conn.stream,
                net::sse_message(&m.to_string()).as_bytes(),
            )?;
        }
        if early.is_empty() {
            net::write_chunk(&mut conn.stream, b": keepalive\n\n")?;
        }
        while !remaining.is_empty() {
            match rx.recv_timeout(KEEPALIVE_INTERVAL) {
                Ok(m) => {
                    if kind(&m) == Kind::Response {
                        let key = m.get("id").map(id_key).unwrap_or_default();
                        remaining.retain(|k| *k != key);
                    }
                    net::write_chunk(
                        &mut conn.stream,
                        net::sse_message(&m.to_string()).as_bytes(),
                    )?;
                }
                Err(RecvTimeoutError::Timeout) => {
                    net::write_chunk(&mut conn.stream, b": keepalive\n\n")?
                }
                Err(RecvTimeoutError::Disconnected) => {
                    ok = false;
                    let mut failed = Vec::new();
                    fail_remaining(&mut failed, &remaining);
                    for m in failed {
                        net::write_chunk(
                            &mut conn.stream,
                            net::sse_message(&m.to_string()).as_bytes(),
                        )?;
                    }
                    remaining.clear();
                }
            }
        }
        net::end_chunks(&mut conn.stream)
    })();
    unregister(session);
    match res {
        Ok(()) => Ok((After::KeepAlive, ok)),
        Err(_) => Ok((After::Close, false)),
    }
}

/// Adds an error response for each id still waiting (the old server's stream closed).
fn fail_remaining(out: &mut Vec<Value>, remaining: &[String]) {
    for key in remaining {
        let id: Value = serde_json::from_str(key).unwrap_or(Value::Null);
        out.push(serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {
            "code": -32603, "message": "the legacy server's stream closed before it answered"}}));
    }
}

/// POSTs a body to the session's endpoint; `Err((status to answer, why))` on failure.
fn post_old(session: &Session, body: &Value, auth: Option<&str>) -> Result<(), (u16, String)> {
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth {
        headers.push(("authorization", a));
    }
    let text = body.to_string();
    match exchange(
        &session.endpoint,
        "POST",
        &headers,
        text.as_bytes(),
        Some(POST_TIMEOUT),
    ) {
        Ok((200..=299, _)) => Ok(()),
        Ok((404, _)) => Err((404, "Session not found".into())),
        Ok((status, body)) => Err((
            502,
            format!(
                "legacy server answered HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ),
        )),
        Err(e) => Err((502, format!("legacy server unreachable: {e:#}"))),
    }
}

/// `GET /mcp` with a session: the standalone stream for server-initiated messages.
fn get_stream(session: &Arc<Session>, conn: &mut Conn) {
    let (tx, rx) = mpsc::channel();
    let me = session.next_seq();
    {
        let mut r = lock(&session.routes);
        if let Some((_, old)) = r.get.replace((me, tx.clone())) {
            let _ = old.send(Out::Close);
        }
        for m in r.backlog.drain(..) {
            let _ = tx.send(Out::Msg(m.to_string()));
        }
    }
    if net::start_sse(&mut conn.stream, &[("connection", "close")]).is_ok() {
        net::pump_sse(&mut conn.stream, &tx, &rx, KEEPALIVE_INTERVAL);
    }
    let mut r = lock(&session.routes);
    if r.get.as_ref().is_some_and(|(n, _)| *n == me) {
        r.get = None;
    }
    drop(r);
    let _ = net::end_chunks(&mut conn.stream);
}
