//! The one blocking HTTP/1.1 client of mcplb, for everything off the data path: the active
//! health checks, `mcplb stats` and `mcplb probe`, the demo and the integration tests, and
//! the 2024-11-05 bridges.
//!
//! One connection (plain, or rustls with the caller's `ClientConfig`), kept alive across
//! requests; the answer's head is read and parsed in one place ([`ResponseHead::parse`]), and
//! its body is decoded in one place (by length, chunked, or until close), read either whole
//! ([`HttpClient::read_response`], with each SSE event and the time it arrived) or piece by
//! piece ([`HttpClient::into_streaming`]: a [`BodyReader`] that owns the connection, for event
//! streams that last as long as a session, whose socket another thread may shut down).
//! Whatever the server sends, a bad head, a huge head or bad chunking is an error, not a panic.
//!
//! Why not `ureq` (already used for JWKS URLs): it builds its own rustls configuration from
//! roots and a client certificate (ours carry ALPN and are shared with the data path), pools
//! connections behind the caller's back (tests need one connection they can watch, write raw
//! bytes to and read pipelined answers from), and exposes no socket to shut down from another
//! thread or to ask for the peer's certificate.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{SseEvent, SseParser};

use super::ChunkedDecoder;

/// Largest answer head the client reads.
pub const MAX_HEAD: usize = 64 * 1024;
/// Largest body [`HttpClient::read_response`] reads unless told otherwise.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024 * 1024;
/// Most header lines an answer head may carry.
const MAX_HEADERS: usize = 64;

/// What went wrong in an exchange.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The host name did not resolve.
    #[error("cannot resolve {authority}: {error}")]
    Resolve {
        /// `host:port` as given.
        authority: String,
        /// Why.
        error: io::Error,
    },
    /// The host name resolved to no address.
    #[error("{0}: no address")]
    NoAddress(String),
    /// The TCP connect failed (refused, timed out, unreachable).
    #[error("cannot connect to {addr}: {error}")]
    Connect {
        /// The address or `host:port`.
        addr: String,
        /// Why.
        error: io::Error,
    },
    /// The TLS handshake failed or timed out.
    #[error("TLS handshake with {addr} failed: {error}")]
    Handshake {
        /// The server's address.
        addr: SocketAddr,
        /// Why (a rustls error comes as `InvalidData`).
        error: io::Error,
    },
    /// rustls refused to start a connection with this configuration.
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// Writing the request failed.
    #[error("write failed: {0}")]
    Write(io::Error),
    /// Reading the answer failed (reset, read timeout, ...).
    #[error("read failed: {0}")]
    Read(io::Error),
    /// The server closed the connection before a complete answer head.
    #[error("connection closed before a response head")]
    ClosedBeforeHead,
    /// The answer head exceeds [`MAX_HEAD`].
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// The answer head is not HTTP/1.x.
    #[error("malformed response head: {0}")]
    BadHead(String),
    /// `Content-Length` is not a number.
    #[error("bad content-length {0:?}")]
    BadContentLength(String),
    /// The chunked framing is broken.
    #[error("bad chunked body: {0}")]
    BadChunked(&'static str),
    /// The server closed the connection inside a body.
    #[error("connection closed inside a body")]
    ClosedInBody,
    /// The body exceeds the limit the reader was given.
    #[error("body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The connection closed before the bytes [`HttpClient::wait_for`] waited for arrived.
    #[error("connection closed before {0:?} arrived")]
    ClosedBefore(String),
}

impl ClientError {
    /// The kind of the I/O error behind this one, if any (to tell a refused connection or a
    /// timeout from a broken answer).
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        match self {
            ClientError::Resolve { error, .. }
            | ClientError::Connect { error, .. }
            | ClientError::Handshake { error, .. }
            | ClientError::Write(error)
            | ClientError::Read(error) => Some(error.kind()),
            _ => None,
        }
    }
}

/// The first header with this (lower-case) name.
fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// Whether a `content-type` value is an event stream.
fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|v| {
        v.get(..17)
            .is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream"))
    })
}

/// An answer's status line and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    /// Parses a complete head (through its blank line).
    pub fn parse(head: &[u8]) -> Result<ResponseHead, ClientError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut storage);
        match resp.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(ClientError::BadHead("incomplete".to_string()))
            }
            Err(e) => return Err(ClientError::BadHead(e.to_string())),
        }
        let status = resp
            .code
            .ok_or_else(|| ClientError::BadHead("no status".to_string()))?;
        Ok(ResponseHead {
            status,
            headers: super::owned_headers(resp.headers),
        })
    }

    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// Whether the body is an event stream.
    pub fn is_sse(&self) -> bool {
        is_event_stream(self.header("content-type"))
    }

    /// How the body is delimited (RFC 9112 §6.3: no body for 1xx, 204 and 304; chunked before
    /// `Content-Length`; else until the connection closes).
    fn framing(&self) -> Result<Framing, ClientError> {
        if matches!(self.status, 100..=199 | 204 | 304) {
            return Ok(Framing::Length(0));
        }
        if self
            .header("transfer-encoding")
            .is_some_and(|v| super::has_token(v.as_bytes(), b"chunked"))
        {
            return Ok(Framing::Chunked(ChunkedDecoder::new()));
        }
        match self.header("content-length") {
            Some(v) => super::parse_content_length(v.as_bytes())
                .map(Framing::Length)
                .ok_or_else(|| ClientError::BadContentLength(v.to_string())),
            None => Ok(Framing::Close),
        }
    }
}

/// One whole answer as the client read it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// For `text/event-stream` bodies: each event's data with the time it arrived.
    pub events: Vec<(Instant, String)>,
}

impl Response {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The body parsed as JSON (for SSE answers: the last event's data).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        if let Some((_, last)) = self.events.last() {
            return Ok(serde_json::from_str(last)?);
        }
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// How an answer's body ends.
#[derive(Debug)]
enum Framing {
    /// This many bytes are left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// At the end of the connection.
    Close,
}

/// Where the client is in one answer's body.
#[derive(Debug)]
struct BodyState {
    framing: Framing,
    done: bool,
}

/// The client's socket: plain, or rustls over it.
enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Io {
    fn socket(&self) -> &TcpStream {
        match self {
            Io::Plain(s) => s,
            Io::Tls(t) => &t.sock,
        }
    }
}

impl Read for Io {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf),
            Io::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Io {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Io::Plain(s) => s.write(buf),
            Io::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Io::Plain(s) => s.flush(),
            Io::Tls(s) => s.flush(),
        }
    }
}

/// A blocking HTTP/1.1 client on one connection (plain or TLS), kept alive across requests.
pub struct HttpClient {
    io: Io,
    /// The `Host` header.
    host: String,
    /// Bytes read and not yet consumed (the rest of an answer, or a pipelined next one).
    buf: Vec<u8>,
    /// Say `connection: close` with each request.
    close: bool,
    max_body: usize,
}

impl HttpClient {
    /// Connects to `addr`, with a 30 s deadline for the connect and every read and write.
    pub fn connect(addr: SocketAddr) -> Result<HttpClient, ClientError> {
        Self::connect_timeout(addr, Duration::from_secs(30))
    }

    /// Connects to `addr` with a deadline for the connect and for every read and write.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> Result<HttpClient, ClientError> {
        Self::from_stream(tcp(addr, timeout)?, timeout)
    }

    /// Connects to `authority` (`host[:port]`, port 80 when none), trying each address it
    /// resolves to within `connect_timeout`; writes are bounded by `write_timeout`, reads wait
    /// until [`HttpClient::set_read_timeout`] says otherwise.
    pub fn connect_host(
        authority: &str,
        connect_timeout: Duration,
        write_timeout: Duration,
    ) -> Result<HttpClient, ClientError> {
        let addrs = resolve(authority, 80)?;
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, connect_timeout) {
                Ok(s) => {
                    let set = |r: io::Result<()>| {
                        r.map_err(|error| ClientError::Connect {
                            addr: authority.to_string(),
                            error,
                        })
                    };
                    set(s.set_nodelay(true))?;
                    set(s.set_write_timeout(Some(write_timeout)))?;
                    return Ok(Self::plain(s, authority.to_string()));
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(error) => ClientError::Connect {
                addr: authority.to_string(),
                error,
            },
            None => ClientError::NoAddress(authority.to_string()),
        })
    }

    /// [`HttpClient::connect_host`] over TLS (port 443 when `authority` names none): each
    /// address it resolves to is tried until one connects and completes the handshake (`tls`: roots, SNI and the name the
    /// certificate must carry), with `timeout` for every step.
    pub fn connect_host_tls(
        authority: &str,
        timeout: Duration,
        tls: &crate::tls::UpstreamTls,
    ) -> Result<HttpClient, ClientError> {
        let addrs = resolve(authority, 443)?;
        let mut last = ClientError::NoAddress(authority.to_string());
        for addr in addrs {
            match Self::connect_tls(addr, timeout, tls.config.clone(), tls.server_name.clone()) {
                Ok(mut c) => {
                    c.host = authority.to_string();
                    return Ok(c);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// A client on a connected socket (e.g. one bound to another local address first), with a
    /// deadline for every read and write.
    pub fn from_stream(stream: TcpStream, timeout: Duration) -> Result<HttpClient, ClientError> {
        let host = prepare(&stream, timeout)?;
        Ok(Self::plain(stream, host))
    }

    fn plain(stream: TcpStream, host: String) -> HttpClient {
        Self::on(Io::Plain(stream), host)
    }

    fn on(io: Io, host: String) -> HttpClient {
        HttpClient {
            io,
            host,
            buf: Vec::new(),
            close: false,
            max_body: DEFAULT_MAX_BODY,
        }
    }

    /// Connects to `addr` and runs a TLS handshake (`name`: SNI and the name the server's
    /// certificate must carry), with a deadline for every step.
    pub fn connect_tls(
        addr: SocketAddr,
        timeout: Duration,
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<HttpClient, ClientError> {
        let sock = tcp(addr, timeout)?;
        let host = prepare(&sock, timeout)?;
        let conn = rustls::ClientConnection::new(config, name)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .map_err(|error| ClientError::Handshake { addr, error })?;
        }
        Ok(Self::on(Io::Tls(Box::new(tls)), host))
    }

    /// The server's certificate (DER) on a TLS connection.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.io {
            Io::Plain(_) => None,
            Io::Tls(t) => t
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        }
    }

    /// The underlying socket (to watch it from a test).
    pub fn into_stream(self) -> TcpStream {
        match self.io {
            Io::Plain(s) => s,
            Io::Tls(t) => t.sock,
        }
    }

    /// Sets the `Host` header sent with each request.
    pub fn set_host(&mut self, host: &str) {
        self.host = host.to_string();
    }

    /// Asks the server to close the connection after each answer (`connection: close`).
    pub fn set_close(&mut self, close: bool) {
        self.close = close;
    }

    /// The largest body [`HttpClient::read_response`] accepts.
    pub fn set_max_body(&mut self, max: usize) {
        self.max_body = max;
    }

    /// Sets the deadline of each read (`None`: wait as long as the server takes).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.io.socket().set_read_timeout(timeout)
    }

    /// Sends raw bytes (for tests of broken input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.io.write_all(bytes).map_err(ClientError::Write)
    }

    /// Writes a request: the request line, `host`, `connection: close` when asked
    /// ([`HttpClient::set_close`]), `headers`, a `content-length` for a POST or a body, then
    /// the body.
    pub fn send(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(), ClientError> {
        let mut req = format!("{method} {target} HTTP/1.1\r\nhost: {}\r\n", self.host);
        if self.close {
            req.push_str("connection: close\r\n");
        }
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if method == "POST" || !body.is_empty() {
            req.push_str(&format!("content-length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// Sends a request and reads its whole answer.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Response, ClientError> {
        self.send(method, target, headers, body)?;
        self.read_response()
    }

    /// POSTs one JSON-RPC message as an MCP client would.
    pub fn mcp(
        &mut self,
        path: &str,
        session: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<Response, ClientError> {
        let mut h = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(s) = session {
            h.push(("mcp-session-id", s));
        }
        self.request("POST", path, &h, body.to_string().as_bytes())
    }

    /// Reads more bytes into the buffer; 0 at the end of the connection.
    fn fill(&mut self) -> Result<usize, ClientError> {
        let mut tmp = [0u8; 16384];
        // A read interrupted before any byte (EINTR) is retried, not taken for a failure:
        // this client also runs the health checks, where it would fail a healthy backend.
        let n = loop {
            match self.io.read(&mut tmp) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(ClientError::Read)?,
            }
        };
        self.buf.extend_from_slice(tmp.get(..n).unwrap_or_default());
        Ok(n)
    }

    /// Reads until the bytes received so far contain `needle`; they stay buffered for
    /// [`HttpClient::read_response`] (for tests that act in the middle of a streamed answer).
    pub fn wait_for(&mut self, needle: &[u8]) -> Result<(), ClientError> {
        while memchr::memmem::find(&self.buf, needle).is_none() {
            if self.buf.len() > self.max_body.saturating_add(MAX_HEAD) {
                return Err(ClientError::BodyTooLarge(self.max_body));
            }
            if self.fill()? == 0 {
                return Err(ClientError::ClosedBefore(
                    String::from_utf8_lossy(needle).into_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Reads the next answer's head and tells how its body ends.
    fn read_head(&mut self) -> Result<(ResponseHead, BodyState), ClientError> {
        let len = loop {
            if let Some(n) = super::head_len(&self.buf) {
                break n;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(ClientError::HeadTooLarge);
            }
            if self.fill()? == 0 {
                return Err(ClientError::ClosedBeforeHead);
            }
        };
        if len > MAX_HEAD {
            return Err(ClientError::HeadTooLarge);
        }
        let head = ResponseHead::parse(self.buf.get(..len).unwrap_or_default())?;
        self.buf.drain(..len);
        let framing = head.framing()?;
        Ok((
            head,
            BodyState {
                framing,
                done: false,
            },
        ))
    }

    /// The next piece of the body `state` describes; `None` at its end.
    fn next_piece(&mut self, state: &mut BodyState) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if state.done {
                return Ok(None);
            }
            match &mut state.framing {
                Framing::Length(rem) => {
                    if *rem == 0 {
                        state.done = true;
                        return Ok(None);
                    }
                    if !self.buf.is_empty() {
                        let take =
                            usize::try_from(*rem).map_or(self.buf.len(), |r| r.min(self.buf.len()));
                        *rem -= take as u64;
                        return Ok(Some(self.buf.drain(..take).collect()));
                    }
                    if self.fill()? == 0 {
                        return Err(ClientError::ClosedInBody);
                    }
                }
                Framing::Close => {
                    if !self.buf.is_empty() {
                        return Ok(Some(std::mem::take(&mut self.buf)));
                    }
                    if self.fill()? == 0 {
                        state.done = true;
                        return Ok(None);
                    }
                }
                Framing::Chunked(dec) => {
                    if !self.buf.is_empty() {
                        let mut out = Vec::new();
                        let used = dec
                            .feed(&self.buf, |d| out.extend_from_slice(d))
                            .map_err(|e| ClientError::BadChunked(e.0))?;
                        self.buf.drain(..used.min(self.buf.len()));
                        state.done = dec.is_done();
                        if !out.is_empty() {
                            return Ok(Some(out));
                        }
                        if state.done {
                            return Ok(None);
                        }
                    }
                    if self.fill()? == 0 {
                        return Err(ClientError::ClosedInBody);
                    }
                }
            }
        }
    }

    /// Reads one whole answer (by length, chunked or until close); the events of an event
    /// stream are parsed as they arrive, each with its arrival time.
    pub fn read_response(&mut self) -> Result<Response, ClientError> {
        let (head, mut state) = self.read_head()?;
        if let Framing::Length(n) = state.framing {
            if n > self.max_body as u64 {
                return Err(ClientError::BodyTooLarge(self.max_body));
            }
        }
        let sse = head.is_sse();
        let mut parser = SseParser::new();
        let mut body = Vec::new();
        let mut events = Vec::new();
        while let Some(piece) = self.next_piece(&mut state)? {
            if body.len() + piece.len() > self.max_body {
                return Err(ClientError::BodyTooLarge(self.max_body));
            }
            if sse {
                parser.push(&piece);
                while let Some(ev) = parser.next_event() {
                    events.push((Instant::now(), ev.data));
                }
            }
            body.extend_from_slice(&piece);
        }
        Ok(Response {
            status: head.status,
            headers: head.headers,
            body,
            events,
        })
    }

    /// Reads the next answer's head and hands back its body as a reader that owns the
    /// connection (for bodies read as they come, such as long event streams).
    pub fn into_streaming(mut self) -> Result<StreamingResponse, ClientError> {
        let (head, state) = self.read_head()?;
        Ok(StreamingResponse {
            head,
            body: BodyReader {
                client: self,
                state,
            },
        })
    }
}

/// A TCP connection to `addr` within `timeout`.
/// The addresses `authority` (`host[:port]`) resolves to, `default_port` when it names none.
fn resolve(authority: &str, default_port: u16) -> Result<Vec<SocketAddr>, ClientError> {
    authority
        .to_socket_addrs()
        .or_else(|_| format!("{authority}:{default_port}").to_socket_addrs())
        .map(Iterator::collect)
        .map_err(|error| ClientError::Resolve {
            authority: authority.to_string(),
            error,
        })
}

fn tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, ClientError> {
    TcpStream::connect_timeout(&addr, timeout).map_err(|error| ClientError::Connect {
        addr: addr.to_string(),
        error,
    })
}

/// Sets a connected socket's deadlines and `TCP_NODELAY`; returns its peer's address (the
/// default `Host`).
fn prepare(stream: &TcpStream, timeout: Duration) -> Result<String, ClientError> {
    let set = || -> io::Result<String> {
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(stream.peer_addr()?.to_string())
    };
    set().map_err(|error| ClientError::Connect {
        addr: stream
            .peer_addr()
            .map_or_else(|_| "?".to_string(), |a| a.to_string()),
        error,
    })
}

/// An answer whose head is read and whose body is still on the wire.
pub struct StreamingResponse {
    /// Status and headers.
    pub head: ResponseHead,
    /// The body, read as it comes.
    pub body: BodyReader,
}

/// An answer's body read piece by piece; it owns the connection.
pub struct BodyReader {
    client: HttpClient,
    state: BodyState,
}

impl BodyReader {
    /// Sets the deadline of each read (`None`: wait forever).
    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.client.set_read_timeout(t)
    }

    /// A handle on the socket that can shut the connection down from another thread.
    pub fn shutdown_handle(&self) -> Option<TcpStream> {
        self.client.io.socket().try_clone().ok()
    }

    /// The next piece of body data; `None` at the end.
    pub fn next_piece(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        self.client.next_piece(&mut self.state)
    }

    /// The whole (rest of the) body, at most `max` bytes.
    pub fn read_all(&mut self, max: usize) -> Result<Vec<u8>, ClientError> {
        let mut out = Vec::new();
        while let Some(p) = self.next_piece()? {
            if out.len() + p.len() > max {
                return Err(ClientError::BodyTooLarge(max));
            }
            out.extend_from_slice(&p);
        }
        Ok(out)
    }
}

/// An event-stream body read event by event.
pub struct EventReader {
    /// The body underneath.
    pub body: BodyReader,
    parser: SseParser,
}

impl EventReader {
    /// Reads `body` as an event stream.
    pub fn new(body: BodyReader) -> EventReader {
        EventReader {
            body,
            parser: SseParser::new(),
        }
    }

    /// The next event; `None` when the stream ended.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, ClientError> {
        loop {
            if let Some(ev) = self.parser.next_event() {
                return Ok(Some(ev));
            }
            match self.body.next_piece()? {
                Some(p) => self.parser.push(&p),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::thread::JoinHandle;

    /// One answer of a scripted server: pieces written after a pause each.
    type Answer = Vec<(Duration, Vec<u8>)>;

    /// A server on loopback that, for each answer of `script`, reads one request head and
    /// writes the answer; then closes the connection.
    fn serve(script: Vec<Answer>) -> (SocketAddr, JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let t = std::thread::spawn(move || {
            let Ok((mut s, _)) = l.accept() else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = Vec::new();
            for answer in script {
                loop {
                    if let Some(n) = super::super::head_len(&buf) {
                        buf.drain(..n);
                        break;
                    }
                    let mut tmp = [0u8; 4096];
                    match s.read(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&tmp[..n]),
                    }
                }
                for (pause, bytes) in answer {
                    std::thread::sleep(pause);
                    if s.write_all(&bytes).is_err() {
                        return;
                    }
                }
            }
        });
        (addr, t)
    }

    fn now(bytes: &[u8]) -> Answer {
        vec![(Duration::ZERO, bytes.to_vec())]
    }

    fn client(addr: SocketAddr) -> HttpClient {
        HttpClient::connect_timeout(addr, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The answer to one GET from a server that sends `bytes`.
    fn answer_to_get(bytes: &[u8]) -> Result<Response, ClientError> {
        let (addr, t) = serve(vec![now(bytes)]);
        let r = client(addr).request("GET", "/", &[], b"");
        let _ = t.join();
        r
    }

    #[test]
    fn bodies_by_length_chunked_and_close_on_one_connection() {
        let (addr, t) = serve(vec![
            now(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  v \r\n\r\nhello"),
            now(b"HTTP/1.1 204 No Content\r\n\r\n"),
            now(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: 1\r\n\r\n"),
            now(b"HTTP/1.1 500 Oops\r\n\r\nuntil close"),
        ]);
        let mut c = client(addr);
        let r = c
            .request("GET", "/a", &[], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        assert_eq!(r.header("x-a"), Some("v"));
        let r = c
            .request("DELETE", "/b", &[], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.len()), (204, 0));
        let r = c
            .request("POST", "/c", &[], b"{}")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.body, b"abcde");
        let r = c
            .request("GET", "/d", &[], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((r.status, r.body.as_slice()), (500, &b"until close"[..]));
        let _ = t.join();
    }

    #[test]
    fn pipelined_answers_stay_buffered_for_the_next_read() {
        let both = b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nAHTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nB";
        let (addr, t) = serve(vec![now(both)]);
        let mut c = client(addr);
        c.send("GET", "/", &[], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        let a = c.read_response().unwrap_or_else(|e| panic!("{e}"));
        let b = c.read_response().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.body, b.body), (b"A".to_vec(), b"B".to_vec()));
        let _ = t.join();
    }

    #[test]
    fn event_stream_events_carry_their_arrival_times() {
        let gap = Duration::from_millis(200);
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
        let (addr, t) = serve(vec![vec![
            (Duration::ZERO, head.to_vec()),
            (Duration::ZERO, b"d\r\ndata: first\n\n\r\n".to_vec()),
            (gap, b"11\r\ndata: {\"id\": 7}\n\n\r\n0\r\n\r\n".to_vec()),
        ]]);
        let r = client(addr)
            .request("GET", "/", &[], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        let [(t1, first), (t2, last)] = r.events.as_slice() else {
            panic!("{:?}", r.events)
        };
        assert_eq!((first.as_str(), last.as_str()), ("first", "{\"id\": 7}"));
        // The second event cannot have arrived before the server sent it.
        assert!(
            t2.duration_since(*t1) >= gap / 2,
            "{:?}",
            t2.duration_since(*t1)
        );
        assert_eq!(r.json().unwrap_or_else(|e| panic!("{e}"))["id"], 7);
        let _ = t.join();
    }

    #[test]
    fn bad_answers_are_errors() {
        let e = |bytes: &[u8]| answer_to_get(bytes).map(|r| r.status);
        type Expect = fn(&ClientError) -> bool;
        let cases: [(&[u8], Expect); 7] = [
            (b"HTTP/1.1 abc\r\n\r\n", |e| {
                matches!(e, ClientError::BadHead(_))
            }),
            (b"\x00\x01\r\n\r\n", |e| {
                matches!(e, ClientError::BadHead(_))
            }),
            (b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n", |e| {
                matches!(e, ClientError::BadContentLength(_))
            }),
            (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", |e| {
                matches!(e, ClientError::ClosedInBody)
            }),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                |e| matches!(e, ClientError::BadChunked(_)),
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab",
                |e| matches!(e, ClientError::ClosedInBody),
            ),
            (b"HTTP/1.1 200 OK\r\n", |e| {
                matches!(e, ClientError::ClosedBeforeHead)
            }),
        ];
        for (bytes, expect) in cases {
            let r = e(bytes);
            assert!(
                r.as_ref().err().is_some_and(expect),
                "{:?}: {r:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("h{i}: v\r\n"))
            .collect();
        let r = e(format!("HTTP/1.1 200 OK\r\n{many}\r\n").as_bytes());
        assert!(matches!(r, Err(ClientError::BadHead(_))), "{r:?}");
        // A head that never ends, and one that ends past the limit.
        let endless = format!("HTTP/1.1 200 OK\r\nx: {}", "a".repeat(MAX_HEAD + 1));
        assert!(matches!(
            e(endless.as_bytes()),
            Err(ClientError::HeadTooLarge)
        ));
        let long = format!("{endless}\r\n\r\n");
        assert!(matches!(e(long.as_bytes()), Err(ClientError::HeadTooLarge)));
    }

    #[test]
    fn a_body_over_the_limit_is_refused() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 11\r\n\r\nhello world"[..],
            b"HTTP/1.1 200 OK\r\n\r\nhello world",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\nhello \r\n5\r\nworld\r\n0\r\n\r\n",
        ] {
            let (addr, t) = serve(vec![now(answer)]);
            let mut c = client(addr);
            c.set_max_body(10);
            let r = c.request("GET", "/", &[], b"");
            assert!(matches!(r, Err(ClientError::BodyTooLarge(10))), "{r:?}");
            let _ = t.join();
        }
    }

    #[test]
    fn a_refused_connect_says_so() {
        let closed = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"));
        let Err(e) = HttpClient::connect_timeout(closed, Duration::from_secs(5)) else {
            panic!("connected to a closed port")
        };
        assert_eq!(e.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        let Err(e) = HttpClient::connect_host(
            &closed.to_string(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        ) else {
            panic!("connected to a closed port")
        };
        assert_eq!(e.io_kind(), Some(io::ErrorKind::ConnectionRefused));
    }

    #[test]
    fn a_streamed_body_reads_event_by_event_and_stops_when_shut_from_elsewhere() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n";
        // The server sends one event and then keeps the stream open for long.
        let (addr, t) = serve(vec![vec![
            (Duration::ZERO, head.to_vec()),
            (Duration::ZERO, b"event: endpoint\ndata: /m\n\n".to_vec()),
            (Duration::from_secs(10), Vec::new()),
        ]]);
        let mut c = HttpClient::connect_host(
            &addr.to_string(),
            Duration::from_secs(5),
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        c.set_close(true);
        c.send("GET", "/sse", &[("accept", "text/event-stream")], b"")
            .unwrap_or_else(|e| panic!("{e}"));
        let resp = c.into_streaming().unwrap_or_else(|e| panic!("{e}"));
        assert!(resp.head.is_sse());
        let handle = resp.body.shutdown_handle();
        let mut events = EventReader::new(resp.body);
        let ev = events.next_event().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            ev.map(|e| (e.event, e.data)),
            Some((Some("endpoint".into()), "/m".into()))
        );
        let Some(h) = handle else {
            panic!("no shutdown handle")
        };
        let shut = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let _ = h.shutdown(std::net::Shutdown::Both);
        });
        // Ended by the shutdown (the end of the connection ends a body read until close).
        assert!(events.next_event().map_or(true, |e| e.is_none()));
        let _ = shut.join();
        drop(events);
        drop(t);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Whatever follows a status line, reading it ends in an answer or an error.
        #[test]
        fn any_answer_bytes_end_in_an_answer_or_an_error(
            head in proptest::prop_oneof![
                proptest::strategy::Just("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"),
                proptest::strategy::Just("HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\n"),
                proptest::strategy::Just("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n"),
                proptest::strategy::Just("HTTP/1.1 200 OK\r\n"),
                proptest::strategy::Just(""),
            ],
            rest in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
        ) {
            let mut bytes = head.as_bytes().to_vec();
            bytes.extend_from_slice(&rest);
            let _ = answer_to_get(&bytes);
        }
    }
}
