//! Blocking HTTP/1.1 plumbing shared by the two bridges: URL handling, a thread-per-connection
//! server loop, response writers (plain and chunked event streams), and upstream exchanges on
//! mcplb's one blocking client ([`crate::http::client`]), one connection each, whose bodies and
//! event streams are read as they come.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use serde_json::Value;

pub(crate) use crate::http::client::EventReader;
use crate::http::client::HttpClient;
/// An upstream answer: status and headers read, body still on the wire.
pub(crate) use crate::http::client::StreamingResponse as UpResponse;
use crate::http::ChunkedDecoder;

/// Largest request or upstream JSON body the bridges accept.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;
/// Largest request head.
const MAX_HEAD: usize = 64 * 1024;
/// Deadline for connecting to an upstream.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline for writing to a peer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// An idle keep-alive client connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Locks a mutex, ignoring poisoning (the data stays usable: every critical section is short
/// and leaves it consistent).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new random id (128 bits, hex).
pub(crate) fn new_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

// ---------------------------------------------------------------------------------------------
// URLs

/// An `http://` URL split into what a request needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Url {
    /// `host:port` as written (the `Host` header).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub target: String,
}

impl Url {
    /// Parses `http://host[:port][/path][?query]` (https is not supported).
    pub fn parse(s: &str) -> anyhow::Result<Url> {
        let rest = s
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{s}: only http:// URLs are supported"))?;
        let (authority, target) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() {
            bail!("{s}: no host");
        }
        let target = if target.starts_with('?') {
            format!("/{target}")
        } else {
            target.to_string()
        };
        let target = match target.find('#') {
            Some(i) => target[..i].to_string(),
            None => target,
        };
        Ok(Url {
            authority: authority.to_string(),
            target,
        })
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(i) => &self.target[..i],
            None => &self.target,
        }
    }

    /// Resolves a reference found in an `endpoint` event against this URL: absolute
    /// (`http://...`), scheme-relative (`//host/...`), absolute path or relative path.
    pub fn join(&self, reference: &str) -> anyhow::Result<Url> {
        let r = reference.trim();
        if r.starts_with("http://") {
            return Url::parse(r);
        }
        if r.contains("://") {
            bail!("{r}: only http:// URLs are supported");
        }
        if let Some(rest) = r.strip_prefix("//") {
            return Url::parse(&format!("http://{rest}"));
        }
        let target = if r.starts_with('/') {
            r.to_string()
        } else if r.starts_with('?') {
            format!("{}{r}", self.path())
        } else {
            let path = self.path();
            let dir = match path.rfind('/') {
                Some(i) => &path[..=i],
                None => "/",
            };
            format!("{dir}{r}")
        };
        Url::parse(&format!("http://{}{target}", self.authority))
    }
}

// ---------------------------------------------------------------------------------------------
// Server side

/// One request read from a client connection.
#[derive(Debug)]
pub(crate) struct Request {
    pub method: String,
    pub target: String,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The client asked to close the connection after this exchange.
    pub close: bool,
}

impl Request {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query.
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(i) => &self.target[..i],
            None => &self.target,
        }
    }

    /// A query parameter, percent-decoded.
    pub fn query(&self, name: &str) -> Option<String> {
        let q = &self.target[self.target.find('?')? + 1..];
        q.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (crate::http::percent_decode(k) == name).then(|| crate::http::percent_decode(v))
        })
    }

    /// Whether the `Accept` header allows `text/event-stream`.
    pub fn accepts_sse(&self) -> bool {
        self.header("accept")
            .is_some_and(|a| a.to_ascii_lowercase().contains("text/event-stream"))
    }
}

/// What a handler wants done with the connection afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
}

/// A client connection with its read buffer.
pub(crate) struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn fill(&mut self) -> io::Result<usize> {
        fill(&mut self.stream, &mut self.buf)
    }

    /// Reads the next request; `Ok(None)` when the client closed the connection between
    /// requests. Errors are answered (400, 413) where possible by the caller closing.
    fn read_request(&mut self) -> Result<Option<Request>, (u16, String)> {
        let head_len = loop {
            if let Some(n) = crate::http::head_len(&self.buf) {
                break n;
            }
            if self.buf.len() > MAX_HEAD {
                return Err((431, "request head too large".into()));
            }
            match self.fill() {
                Ok(0) if self.buf.is_empty() => return Ok(None),
                Ok(0) => return Err((400, "connection closed inside a request head".into())),
                Ok(_) => {}
                Err(_) if self.buf.is_empty() => return Ok(None),
                Err(e) => return Err((400, format!("read: {e}"))),
            }
        };
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut storage);
        match req.parse(&self.buf[..head_len]) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return Err((400, "malformed request head".into())),
        }
        let method = req.method.unwrap_or("").to_string();
        let target = req.path.unwrap_or("/").to_string();
        let http10 = req.version == Some(0);
        let headers = crate::http::owned_headers(req.headers);
        self.buf.drain(..head_len);
        let find = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        let conn_hdr = find("connection").map(str::to_ascii_lowercase);
        let close = conn_hdr.as_deref().is_some_and(|c| c.contains("close"))
            || (http10
                && !conn_hdr
                    .as_deref()
                    .is_some_and(|c| c.contains("keep-alive")));
        let mut body = Vec::new();
        if find("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
            let mut dec = ChunkedDecoder::new();
            loop {
                let mut too_big = false;
                let used = dec
                    .feed(&self.buf, |d| {
                        if body.len() + d.len() > MAX_BODY {
                            too_big = true;
                        } else {
                            body.extend_from_slice(d);
                        }
                    })
                    .map_err(|e| (400, format!("bad chunked body: {}", e.0)))?;
                self.buf.drain(..used);
                if too_big {
                    return Err((413, "request body too large".into()));
                }
                if dec.is_done() {
                    break;
                }
                match self.fill() {
                    Ok(n) if n > 0 => {}
                    _ => return Err((400, "connection closed inside a body".into())),
                }
            }
        } else if let Some(v) = find("content-length") {
            let n: usize = v
                .parse()
                .map_err(|_| (400, "bad content-length".to_string()))?;
            if n > MAX_BODY {
                return Err((413, "request body too large".into()));
            }
            while self.buf.len() < n {
                match self.fill() {
                    Ok(k) if k > 0 => {}
                    _ => return Err((400, "connection closed inside a body".into())),
                }
            }
            body = self.buf.drain(..n).collect();
        }
        Ok(Some(Request {
            method,
            target,
            headers,
            body,
            close,
        }))
    }
}

fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut tmp = [0u8; 16384];
    loop {
        match stream.read(&mut tmp) {
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A request handler: answers `req` on `conn.stream`.
pub(crate) type Handler = dyn Fn(&mut Conn, Request) -> io::Result<After> + Send + Sync;

/// A listening bridge: its address and the accept loop.
pub(crate) struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `127.0.0.1:0` and serves each connection on its own thread.
    pub fn start(name: &str, handler: Arc<Handler>) -> anyhow::Result<Server> {
        let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread_name = name.to_string();
        let accept = std::thread::Builder::new()
            .name(format!("{name}-accept"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let stream = match conn {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "legacy bridge: accept failed");
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    let handler = handler.clone();
                    let spawned = std::thread::Builder::new()
                        .name(format!("{thread_name}-conn"))
                        .spawn(move || serve_conn(stream, &*handler));
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "legacy bridge: cannot spawn a thread");
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            accept: Some(accept),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

fn serve_conn(stream: TcpStream, handler: &Handler) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
    };
    loop {
        match conn.read_request() {
            Ok(None) => break,
            Ok(Some(req)) => {
                let close = req.close;
                match handler(&mut conn, req) {
                    Ok(After::KeepAlive) if !close => {}
                    _ => break,
                }
            }
            Err((status, why)) => {
                let body = error_body(&Value::Null, -32600, &why);
                let _ = write_response(
                    &mut conn.stream,
                    status,
                    &[
                        ("content-type", "application/json"),
                        ("connection", "close"),
                    ],
                    body.as_bytes(),
                );
                break;
            }
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
}

/// Writes a whole response with a `content-length`.
pub(crate) fn write_response(
    stream: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {status} {}\r\n", crate::http::reason(status));
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)
}

/// A JSON answer.
pub(crate) fn write_json(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(&str, &str)],
    body: &str,
) -> io::Result<()> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(extra);
    write_response(stream, status, &h, body.as_bytes())
}

/// A JSON-RPC error object as text.
pub(crate) fn error_body(id: &Value, code: i64, message: &str) -> String {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
        .to_string()
}

/// Starts a chunked `text/event-stream` answer.
pub(crate) fn start_sse(stream: &mut TcpStream, extra: &[(&str, &str)]) -> io::Result<()> {
    let mut head = String::from(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n",
    );
    for (n, v) in extra {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())
}

/// Writes one chunk (never an empty one, which would end the body).
pub(crate) fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut bytes = format!("{:x}\r\n", data.len()).into_bytes();
    bytes.extend_from_slice(data);
    bytes.extend_from_slice(b"\r\n");
    stream.write_all(&bytes)
}

/// Ends a chunked body.
pub(crate) fn end_chunks(stream: &mut TcpStream) -> io::Result<()> {
    stream.write_all(b"0\r\n\r\n")
}

/// One `event: message` with a JSON-RPC message as its data.
pub(crate) fn sse_message(json: &str) -> String {
    let mut s = String::with_capacity(json.len() + 32);
    s.push_str("event: message\n");
    for line in json.split('\n') {
        s.push_str("data: ");
        s.push_str(line.strip_suffix('\r').unwrap_or(line));
        s.push('\n');
    }
    s.push('\n');
    s
}

/// What a writer thread sends down a client's event stream.
#[derive(Debug)]
pub(crate) enum Out {
    /// A JSON-RPC message (compact JSON text).
    Msg(String),
    /// End the stream.
    Close,
}

/// Writes `Out` messages to a started event stream until `Close`, a write error, or every
/// sender is gone; sends a keepalive comment after `keepalive` of silence. A watcher thread
/// notices the client closing the connection and sends `Close` through `tx`.
pub(crate) fn pump_sse(
    stream: &mut TcpStream,
    tx: &Sender<Out>,
    rx: &Receiver<Out>,
    keepalive: Duration,
) {
    watch_close(stream, tx.clone());
    loop {
        let res = match rx.recv_timeout(keepalive) {
            Ok(Out::Msg(m)) => write_chunk(stream, sse_message(&m).as_bytes()),
            Ok(Out::Close) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => write_chunk(stream, b": keepalive\n\n"),
        };
        if res.is_err() {
            break;
        }
    }
}

/// Sends `Close` on `tx` when the peer of `stream` closes its side (or the socket breaks).
pub(crate) fn watch_close(stream: &TcpStream, tx: Sender<Out>) {
    let Ok(mut clone) = stream.try_clone() else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("legacy-watch".into())
        .spawn(move || {
            let mut tmp = [0u8; 1024];
            loop {
                match clone.read(&mut tmp) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Out::Close);
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "legacy bridge: cannot spawn a watcher thread");
    }
}

// ---------------------------------------------------------------------------------------------
// Client side

/// A request written to an upstream whose answer has not been read yet.
pub(crate) struct Pending {
    client: HttpClient,
}

/// Writes a request to `url` on a new connection (`connection: close`: every exchange has its
/// own connection, so a slow answer never blocks another).
pub(crate) fn begin(
    url: &Url,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<Pending> {
    let mut client = HttpClient::connect_host(&url.authority, CONNECT_TIMEOUT, WRITE_TIMEOUT)?;
    client.set_close(true);
    client
        .send(method, &url.target, headers, body)
        .with_context(|| format!("write to {}", url.authority))?;
    Ok(Pending { client })
}

impl Pending {
    /// Reads the answer's head (waits as long as the upstream takes: tool calls may run for
    /// minutes; `timeout` bounds the wait when given); the body then waits without deadline.
    pub fn finish(self, timeout: Option<Duration>) -> anyhow::Result<UpResponse> {
        self.client.set_read_timeout(timeout)?;
        let resp = self.client.into_streaming()?;
        resp.body.set_read_timeout(None)?;
        Ok(resp)
    }
}

/// One request/answer exchange with the whole body read (bounded by `timeout` when given).
pub(crate) fn exchange(
    url: &Url,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Option<Duration>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut resp = begin(url, method, headers, body)?.finish(timeout)?;
    if timeout.is_some() {
        resp.body.set_read_timeout(timeout)?;
    }
    let body = resp.body.read_all(MAX_BODY)?;
    Ok((resp.head.status, body))
}

// ---------------------------------------------------------------------------------------------
// JSON-RPC helpers

/// The shape of one JSON-RPC message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

/// Tells a message's shape from its keys.
pub(crate) fn kind(msg: &Value) -> Kind {
    let Some(obj) = msg.as_object() else {
        return Kind::Invalid;
    };
    match (obj.get("method").is_some(), obj.get("id").is_some()) {
        (true, true) => Kind::Request,
        (true, false) => Kind::Notification,
        (false, true) if obj.contains_key("result") || obj.contains_key("error") => Kind::Response,
        _ => Kind::Invalid,
    }
}

/// A key for an id that keeps its type (`1` and `"1"` differ).
pub(crate) fn id_key(id: &Value) -> String {
    id.to_string()
}

/// The messages of a body: one object, or each element of a batch.
pub(crate) fn messages(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        other => vec![other],
    }
}

/// Compact JSON for an event's data, when it parses.
pub(crate) fn compact(data: &str) -> Option<Value> {
    serde_json::from_str::<Value>(data).ok()
}

/// A small registry keyed by string, for sessions.
pub(crate) type Registry<T> = Mutex<HashMap<String, Arc<T>>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parse_and_join() -> anyhow::Result<()> {
        let u = Url::parse("http://127.0.0.1:8000/sse")?;
        assert_eq!(u.authority, "127.0.0.1:8000");
        assert_eq!(u.target, "/sse");
        assert_eq!(
            u.join("/messages/?session_id=ab")?.target,
            "/messages/?session_id=ab"
        );
        assert_eq!(u.join("messages?x=1")?.target, "/messages?x=1");
        let v = Url::parse("http://h:1/a/b/sse?k=v")?;
        assert_eq!(v.join("msg")?.target, "/a/b/msg");
        assert_eq!(v.join("?s=1")?.target, "/a/b/sse?s=1");
        assert_eq!(v.join("http://other:2/m")?.authority, "other:2");
        assert_eq!(v.join("//x:3/m")?.authority, "x:3");
        assert!(v.join("https://x/m").is_err());
        assert_eq!(Url::parse("http://h:1")?.target, "/");
        assert_eq!(Url::parse("http://h:1?q")?.target, "/?q");
        Ok(())
    }

    #[test]
    fn query_decoding() {
        let r = Request {
            method: "POST".into(),
            target: "/mcp/messages?a=1&sessionId=x%2By+z&bad=%zz%".into(),
            headers: vec![],
            body: vec![],
            close: false,
        };
        assert_eq!(r.query("sessionId").as_deref(), Some("x+y z"));
        assert_eq!(r.query("bad").as_deref(), Some("%zz%"));
        assert_eq!(r.query("none"), None);
        assert_eq!(r.path(), "/mcp/messages");
    }

    #[test]
    fn message_shapes() {
        use serde_json::json;
        assert_eq!(kind(&json!({"id": 1, "method": "x"})), Kind::Request);
        assert_eq!(kind(&json!({"method": "x"})), Kind::Notification);
        assert_eq!(kind(&json!({"id": 1, "result": {}})), Kind::Response);
        assert_eq!(kind(&json!({"id": 1})), Kind::Invalid);
        assert_eq!(kind(&json!([1])), Kind::Invalid);
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
        assert_eq!(sse_message("{}"), "event: message\ndata: {}\n\n");
        assert_eq!(sse_message("a\nb"), "event: message\ndata: a\ndata: b\n\n");
    }
}
