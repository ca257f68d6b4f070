//! [`LegacyFront`]: old (2024-11-05 HTTP+SSE) clients in front of a Streamable HTTP upstream.
//!
//! Per client session: the `GET {prefix}/sse` connection's thread writes the event stream; a
//! dispatcher thread forwards the client's POSTed messages upstream in the order they came
//! (a request is handed to its own reader thread once written, so a long tool call never
//! blocks the next message; `initialize`, notifications and responses are waited for, so the
//! upstream sees `initialize` → `notifications/initialized` → requests in order); and, once
//! the upstream issued a session, a thread relays the upstream's standalone GET stream.
//!
//! The client's credentials (`Authorization`, `X-Api-Key`) go with its messages to the
//! upstream (mcplb's own listener, which checks them again and binds the upstream session to
//! the caller). A session opened with an id minted by mcplb's worker
//! ([`super::LEGACY_SESSION_HEADER`], in groups with authentication) is the caller's own: the worker
//! lets only that caller's POSTs reach it, so the newest credential a POST carries (a
//! refreshed token) also serves the session's GET stream and final DELETE.

use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use serde_json::Value;

use super::net::{
    self, begin, error_body, exchange, kind, lock, messages, write_json, write_response, After,
    Conn, EventReader, Kind, Out, Registry, Request, Server, UpResponse, Url, MAX_BODY,
};
use super::KEEPALIVE_INTERVAL;

/// Deadline for the upstream's answer to a notification, a response or a DELETE.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for the head of the upstream's answer to `initialize`.
const INIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves the 2024-11-05 HTTP+SSE transport to old clients and translates it to Streamable
/// HTTP at an upstream URL. Dropping it stops accepting and ends every client stream.
pub struct LegacyFront {
    shared: Arc<Shared>,
    server: Server,
}

struct Shared {
    upstream: Url,
    prefix: String,
    sessions: Registry<Session>,
}

/// What the dispatcher thread receives.
enum Inbound {
    Msg { msg: Value, creds: Credentials },
    Stop,
}

/// The credential headers a client sent, passed on to the upstream.
#[derive(Clone, Default)]
struct Credentials {
    authorization: Option<String>,
    api_key: Option<String>,
}

impl Credentials {
    fn of(req: &Request) -> Credentials {
        Credentials {
            authorization: req.header("authorization").map(str::to_string),
            api_key: req.header("x-api-key").map(str::to_string),
        }
    }

    fn is_empty(&self) -> bool {
        self.authorization.is_none() && self.api_key.is_none()
    }
}

/// One old-transport client session (one `GET /sse` connection).
struct Session {
    id: String,
    out: Sender<Out>,
    inbox: Sender<Inbound>,
    up: Mutex<UpState>,
    /// Credentials of the `GET /sse` request, used when a POST carries none (and for the
    /// upstream GET stream and DELETE); in a session minted by the worker, the newest a POST
    /// carried.
    creds: Mutex<Credentials>,
    /// The worker minted the id: only the caller who opened the session can reach it.
    owned: bool,
    closed: AtomicBool,
    /// Open upstream connections, shut down when the session ends.
    streams: Mutex<Vec<TcpStream>>,
}

#[derive(Default)]
struct UpState {
    sid: Option<String>,
    version: Option<String>,
    get_started: bool,
}

impl Session {
    fn send(&self, v: &Value) {
        let _ = self.out.send(Out::Msg(v.to_string()));
    }

    fn send_error(&self, id: &Value, code: i64, message: &str) {
        let _ = self.out.send(Out::Msg(error_body(id, code, message)));
    }

    /// Registers an upstream connection; returns false (and shuts it) when the session ended.
    fn track(&self, resp: &UpResponse) -> bool {
        if let Some(h) = resp.body.shutdown_handle() {
            lock(&self.streams).push(h);
        }
        if self.closed.load(Ordering::Relaxed) {
            if let Some(h) = resp.body.shutdown_handle() {
                let _ = h.shutdown(Shutdown::Both);
            }
            return false;
        }
        true
    }

    fn untrack(&self, resp: &UpResponse) {
        if let Some(h) = resp.body.shutdown_handle() {
            let Ok(addr) = h.local_addr() else { return };
            lock(&self.streams).retain(|s| s.local_addr().ok() != Some(addr));
        }
    }

    /// Headers for an upstream request of this session: with `creds` when a message carried
    /// any, else with the session's.
    fn headers(&self, creds: Option<&Credentials>) -> Vec<(String, String)> {
        let mut h = vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "accept".to_string(),
                "application/json, text/event-stream".to_string(),
            ),
        ];
        let up = lock(&self.up);
        if let Some(s) = &up.sid {
            h.push(("mcp-session-id".into(), s.clone()));
        }
        if let Some(v) = &up.version {
            h.push(("mcp-protocol-version".into(), v.clone()));
        }
        let stored;
        let creds = match creds.filter(|c| !c.is_empty()) {
            Some(c) => c,
            None => {
                stored = lock(&self.creds).clone();
                &stored
            }
        };
        if let Some(a) = &creds.authorization {
            h.push(("authorization".into(), a.clone()));
        }
        if let Some(k) = &creds.api_key {
            h.push(("x-api-key".into(), k.clone()));
        }
        h
    }
}

fn as_refs(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect()
}

impl LegacyFront {
    /// Serves the 2024-11-05 transport on 127.0.0.1:0 for clients, translating to Streamable
    /// HTTP at `upstream` (a URL such as `http://127.0.0.1:PORT/mcp`: mcplb's own
    /// client-facing listener and group path). The bridge answers `{public_prefix}/sse` and
    /// `{public_prefix}/messages`, `public_prefix` being the group path as clients see it
    /// (e.g. `/mcp`).
    pub fn start(upstream: &str, public_prefix: &str) -> anyhow::Result<LegacyFront> {
        let upstream = Url::parse(upstream)?;
        let prefix = public_prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() && !prefix.starts_with('/') {
            return Err(anyhow!(
                "public prefix {public_prefix:?} must start with '/'"
            ));
        }
        let shared = Arc::new(Shared {
            upstream,
            prefix,
            sessions: Registry::default(),
        });
        let s2 = shared.clone();
        let server = Server::start(
            "legacy-front",
            Arc::new(move |conn: &mut Conn, req: Request| handle(&s2, conn, req)),
        )?;
        Ok(LegacyFront { shared, server })
    }

    /// The address old clients (or mcplb's worker, forwarding them) connect to.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// The URL of the SSE endpoint: `http://ADDR{public_prefix}/sse`.
    pub fn sse_url(&self) -> String {
        format!("http://{}{}/sse", self.server.addr, self.shared.prefix)
    }

    /// How many client sessions are open.
    pub fn sessions(&self) -> usize {
        lock(&self.shared.sessions).len()
    }
}

impl Drop for LegacyFront {
    fn drop(&mut self) {
        let all: Vec<Arc<Session>> = lock(&self.shared.sessions).values().cloned().collect();
        for s in all {
            let _ = s.out.send(Out::Close);
        }
    }
}

fn handle(shared: &Arc<Shared>, conn: &mut Conn, req: Request) -> std::io::Result<After> {
    let path = req.path();
    let sse_path = format!("{}/sse", shared.prefix);
    let msg_path = format!("{}/messages", shared.prefix);
    if path == sse_path || path == format!("{sse_path}/") {
        if req.method != "GET" {
            write_response(
                &mut conn.stream,
                405,
                &[("allow", "GET"), ("content-type", "text/plain")],
                b"method not allowed",
            )?;
            return Ok(After::KeepAlive);
        }
        open_stream(shared, conn, &req);
        return Ok(After::Close);
    }
    if path == msg_path || path == format!("{msg_path}/") {
        if req.method != "POST" {
            write_response(
                &mut conn.stream,
                405,
                &[("allow", "POST"), ("content-type", "text/plain")],
                b"method not allowed",
            )?;
            return Ok(After::KeepAlive);
        }
        return post_message(shared, conn, &req);
    }
    write_response(
        &mut conn.stream,
        404,
        &[("content-type", "text/plain")],
        b"not found",
    )?;
    Ok(After::KeepAlive)
}

/// `GET {prefix}/sse`: a new session; the connection's thread writes the event stream.
fn open_stream(shared: &Arc<Shared>, conn: &mut Conn, req: &Request) {
    let (out_tx, out_rx) = mpsc::channel();
    let (in_tx, in_rx) = mpsc::channel();
    // The id mcplb's worker minted for the caller (a sealed id, URL-safe), if any.
    let minted = req
        .header(super::LEGACY_SESSION_HEADER)
        .filter(|id| {
            !id.is_empty()
                && id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                && !lock(&shared.sessions).contains_key(*id)
        })
        .map(str::to_string);
    let session = Arc::new(Session {
        owned: minted.is_some(),
        id: minted.unwrap_or_else(net::new_id),
        out: out_tx.clone(),
        inbox: in_tx,
        up: Mutex::new(UpState::default()),
        creds: Mutex::new(Credentials::of(req)),
        closed: AtomicBool::new(false),
        streams: Mutex::new(Vec::new()),
    });
    let endpoint = format!(
        "event: endpoint\ndata: {}/messages?sessionId={}\n\n",
        shared.prefix, session.id
    );
    // Registered before the client learns the id, so its first POST finds the session.
    lock(&shared.sessions).insert(session.id.clone(), session.clone());
    if net::start_sse(&mut conn.stream, &[])
        .and_then(|()| net::write_chunk(&mut conn.stream, endpoint.as_bytes()))
        .is_err()
    {
        lock(&shared.sessions).remove(&session.id);
        return;
    }
    tracing::debug!(session = %session.id, "legacy front: client stream opened");
    let (shared2, session2) = (shared.clone(), session.clone());
    let spawned = std::thread::Builder::new()
        .name("legacy-front-dispatch".into())
        .spawn(move || dispatch(&shared2, &session2, &in_rx));
    if spawned.is_err() {
        close_session(shared, &session);
        return;
    }
    net::pump_sse(&mut conn.stream, &out_tx, &out_rx, KEEPALIVE_INTERVAL);
    close_session(shared, &session);
    let _ = net::end_chunks(&mut conn.stream);
}

/// Ends a session: forget it, stop its threads and upstream streams, DELETE the upstream
/// session.
fn close_session(shared: &Shared, session: &Arc<Session>) {
    if session.closed.swap(true, Ordering::Relaxed) {
        return;
    }
    lock(&shared.sessions).remove(&session.id);
    let _ = session.inbox.send(Inbound::Stop);
    let _ = session.out.send(Out::Close);
    for s in lock(&session.streams).drain(..) {
        let _ = s.shutdown(Shutdown::Both);
    }
    let headers = session.headers(None);
    if lock(&session.up).sid.is_some() {
        let upstream = shared.upstream.clone();
        let _ = std::thread::Builder::new()
            .name("legacy-front-delete".into())
            .spawn(move || {
                let h: Vec<(&str, &str)> = as_refs(&headers)
                    .into_iter()
                    .filter(|(n, _)| *n != "content-type")
                    .collect();
                if let Err(e) = exchange(&upstream, "DELETE", &h, b"", Some(SHORT_TIMEOUT)) {
                    tracing::debug!(error = %e, "legacy front: DELETE of the upstream session failed");
                }
            });
    }
    tracing::debug!(session = %session.id, "legacy front: client stream closed");
}

/// `POST {prefix}/messages?sessionId=X`: 202 at once, the message goes to the dispatcher.
fn post_message(shared: &Shared, conn: &mut Conn, req: &Request) -> std::io::Result<After> {
    let id = req.query("sessionId").or_else(|| req.query("session_id"));
    let session = id.and_then(|id| lock(&shared.sessions).get(&id).cloned());
    let Some(session) = session else {
        write_response(
            &mut conn.stream,
            404,
            &[("content-type", "text/plain")],
            b"unknown session",
        )?;
        return Ok(After::KeepAlive);
    };
    let parsed: Result<Value, _> = serde_json::from_slice(&req.body);
    let msgs = match parsed {
        Ok(v) => messages(v),
        Err(e) => {
            write_json(
                &mut conn.stream,
                400,
                &[],
                &error_body(&Value::Null, -32700, &format!("parse error: {e}")),
            )?;
            return Ok(After::KeepAlive);
        }
    };
    if msgs.is_empty() || msgs.iter().any(|m| kind(m) == Kind::Invalid) {
        write_json(
            &mut conn.stream,
            400,
            &[],
            &error_body(&Value::Null, -32600, "invalid JSON-RPC message"),
        )?;
        return Ok(After::KeepAlive);
    }
    let creds = Credentials::of(req);
    if session.owned && !creds.is_empty() {
        // Only the session's caller gets here: keep its newest credential (a refreshed token
        // outlives the one the stream was opened with).
        *lock(&session.creds) = creds.clone();
    }
    for msg in msgs {
        let _ = session.inbox.send(Inbound::Msg {
            msg,
            creds: creds.clone(),
        });
    }
    write_response(
        &mut conn.stream,
        202,
        &[("content-type", "text/plain")],
        b"Accepted",
    )?;
    Ok(After::KeepAlive)
}

/// Forwards the session's messages upstream, in order.
fn dispatch(shared: &Arc<Shared>, session: &Arc<Session>, inbox: &Receiver<Inbound>) {
    while let Ok(Inbound::Msg { msg, creds }) = inbox.recv() {
        if session.closed.load(Ordering::Relaxed) {
            break;
        }
        let k = kind(&msg);
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let is_init = msg.get("method").and_then(Value::as_str) == Some("initialize");
        let headers = session.headers(Some(&creds));
        let body = msg.to_string();
        let pending = match begin(
            &shared.upstream,
            "POST",
            &as_refs(&headers),
            body.as_bytes(),
        ) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "legacy front: upstream unreachable");
                if k == Kind::Request {
                    session.send_error(&id, -32603, &format!("upstream unreachable: {e:#}"));
                }
                continue;
            }
        };
        if k == Kind::Request && !is_init {
            // Read the answer on its own thread: the next message need not wait for it.
            let (shared, session) = (shared.clone(), session.clone());
            let spawned = std::thread::Builder::new()
                .name("legacy-front-answer".into())
                .spawn(move || {
                    let res = pending.finish(None);
                    relay(&shared, &session, res, Some(&id));
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "legacy front: cannot spawn a thread");
            }
            continue;
        }
        let timeout = Some(if is_init { INIT_TIMEOUT } else { SHORT_TIMEOUT });
        let res = pending.finish(timeout);
        if is_init {
            if let Ok(resp) = &res {
                let sid = resp.head.header("mcp-session-id").map(str::to_string);
                lock(&session.up).sid = sid;
            }
        }
        let init_version = relay(shared, session, res, (k == Kind::Request).then_some(&id));
        if is_init {
            let start_get = {
                let mut up = lock(&session.up);
                up.version = init_version;
                let start = up.sid.is_some() && !up.get_started;
                up.get_started |= start;
                start
            };
            if start_get {
                let (shared, session) = (shared.clone(), session.clone());
                let _ = std::thread::Builder::new()
                    .name("legacy-front-get".into())
                    .spawn(move || get_stream(&shared, &session));
            }
        }
    }
}

/// Writes every message of an upstream answer to the client's stream. For the answer to
/// `initialize`, returns the negotiated protocol version.
fn relay(
    shared: &Shared,
    session: &Arc<Session>,
    res: anyhow::Result<UpResponse>,
    req_id: Option<&Value>,
) -> Option<String> {
    let mut resp = match res {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "legacy front: upstream failed");
            if let Some(id) = req_id {
                session.send_error(id, -32603, &format!("upstream failed: {e:#}"));
            }
            return None;
        }
    };
    let mut version = None;
    let mut deliver = |v: Value| {
        if let Some(id) = req_id {
            if v.get("id") == Some(id) {
                if let Some(ver) = v.pointer("/result/protocolVersion").and_then(Value::as_str) {
                    version = Some(ver.to_string());
                }
            }
        }
        session.send(&v);
    };
    match resp.head.status {
        200..=299 if resp.head.is_sse() => {
            if !session.track(&resp) {
                return None;
            }
            let mut events = EventReader::new(resp.body);
            let mut answered = false;
            let outcome = loop {
                match events.next_event() {
                    Ok(Some(ev)) => {
                        if ev.data.is_empty() {
                            continue;
                        }
                        match net::compact(&ev.data) {
                            Some(v) => {
                                for m in messages(v) {
                                    answered |= req_id.is_some() && m.get("id") == req_id;
                                    deliver(m);
                                }
                            }
                            None => tracing::debug!("legacy front: non-JSON event data skipped"),
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(e) => break Err(e),
                }
            };
            resp.body = events.body;
            session.untrack(&resp);
            if let (Some(id), false) = (req_id, answered) {
                if !session.closed.load(Ordering::Relaxed) {
                    let why = match outcome {
                        Err(e) => format!("upstream stream broke: {e:#}"),
                        Ok(()) => "upstream stream ended without a response".to_string(),
                    };
                    session.send_error(id, -32603, &why);
                }
            }
        }
        200..=299 => match resp.body.read_all(MAX_BODY) {
            Ok(body) if body.iter().all(u8::is_ascii_whitespace) => {
                if let Some(id) = req_id {
                    if resp.head.status != 202 {
                        session.send_error(id, -32603, "upstream answered with an empty body");
                    }
                }
            }
            Ok(body) => match serde_json::from_slice::<Value>(&body) {
                Ok(v) => messages(v).into_iter().for_each(&mut deliver),
                Err(e) => {
                    if let Some(id) = req_id {
                        session.send_error(id, -32603, &format!("upstream sent bad JSON: {e}"));
                    }
                }
            },
            Err(e) => {
                if let Some(id) = req_id {
                    session.send_error(id, -32603, &format!("upstream body: {e:#}"));
                }
            }
        },
        status => {
            let body = resp.body.read_all(MAX_BODY).unwrap_or_default();
            let had_session = lock(&session.up).sid.is_some();
            // An answer that is itself the JSON-RPC error for this request goes through as is.
            let rpc: Option<Value> = serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|v| kind(v) == Kind::Response && req_id.is_some_and(|id| v["id"] == *id));
            match (rpc, req_id) {
                (Some(v), _) => session.send(&v),
                (None, Some(id)) => {
                    let mut why = format!("upstream answered HTTP {status}");
                    if let Some(after) = resp.head.header("retry-after") {
                        why.push_str(&format!(" (retry after {after} s)"));
                    }
                    session.send_error(id, -32603, &why);
                }
                (None, None) => {
                    tracing::debug!(status, "legacy front: upstream refused a notification")
                }
            }
            if status == 404 && had_session {
                // The upstream session is gone: end the client's stream so it reconnects.
                tracing::info!(session = %session.id, "legacy front: upstream session expired");
                close_session(shared, session);
            }
        }
    }
    version
}

/// Relays the upstream's standalone GET stream (server-initiated messages) while the session
/// lives; reconnects when it ends, gives up on an answer other than an event stream.
fn get_stream(shared: &Shared, session: &Arc<Session>) {
    let mut backoff = Duration::from_millis(200);
    while !session.closed.load(Ordering::Relaxed) {
        let mut headers: Vec<(String, String)> = session
            .headers(None)
            .into_iter()
            .filter(|(n, _)| n != "content-type" && n != "accept")
            .collect();
        headers.push(("accept".into(), "text/event-stream".into()));
        let res = begin(&shared.upstream, "GET", &as_refs(&headers), b"")
            .and_then(|p| p.finish(Some(SHORT_TIMEOUT)));
        let resp = match res {
            Ok(r) if r.head.status == 200 && r.head.is_sse() => r,
            Ok(r) => {
                tracing::debug!(
                    status = r.head.status,
                    "legacy front: no upstream GET stream"
                );
                return;
            }
            Err(e) => {
                tracing::debug!(error = %e, "legacy front: upstream GET stream failed");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        if !session.track(&resp) {
            return;
        }
        let handle = resp.body.shutdown_handle();
        let mut events = EventReader::new(resp.body);
        let mut got_any = false;
        while let Ok(Some(ev)) = events.next_event() {
            got_any = true;
            if let Some(v) = net::compact(&ev.data) {
                for m in messages(v) {
                    session.send(&m);
                }
            }
        }
        if let Some(h) = handle {
            if let Ok(addr) = h.local_addr() {
                lock(&session.streams).retain(|s| s.local_addr().ok() != Some(addr));
            }
        }
        if got_any {
            backoff = Duration::from_millis(200);
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
