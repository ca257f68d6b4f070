//! `mcplb demo`: mock MCP backends and the proxy in one process, then a short MCP session
//! through the proxy that shows stickiness, sealed session ids and SSE streaming, and a
//! short load run ([`load`]).
//!
//! Also home of [`HttpClient`], the small blocking HTTP/1.1 client the demo and the
//! integration tests use to speak MCP to a running proxy.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};

use crate::http::ChunkedDecoder;

mod load;

/// One HTTP response as the test client saw it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
    /// For `text/event-stream` bodies: each `data:` payload with the time it arrived.
    pub events: Vec<(Instant, String)>,
}

impl Response {
    /// The first header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON (for SSE answers: the last event's data).
    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        if let Some((_, last)) = self.events.last() {
            return Ok(serde_json::from_str(last)?);
        }
        Ok(serde_json::from_slice(&self.body)?)
    }
}

/// The client's socket: plain, or TLS (rustls) over it.
enum ClientIo {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for ClientIo {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            ClientIo::Plain(s) => s.read(buf),
            ClientIo::Tls(s) => s.read(buf),
        }
    }
}

impl Write for ClientIo {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            ClientIo::Plain(s) => s.write(buf),
            ClientIo::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ClientIo::Plain(s) => s.flush(),
            ClientIo::Tls(s) => s.flush(),
        }
    }
}

/// A blocking keep-alive HTTP/1.1 client on one connection (plain or TLS).
pub struct HttpClient {
    stream: ClientIo,
    host: String,
    buf: Vec<u8>,
}

impl HttpClient {
    /// Connects to `addr`.
    pub fn connect(addr: SocketAddr) -> anyhow::Result<HttpClient> {
        Self::connect_timeout(addr, Duration::from_secs(30))
    }

    /// Connects to `addr` with a deadline for the connect and for every read and write.
    pub fn connect_timeout(addr: SocketAddr, timeout: Duration) -> anyhow::Result<HttpClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        Self::from_stream(stream, timeout)
    }

    /// A client on a connected socket (e.g. one bound to another local address first), with a
    /// deadline for every read and write.
    pub fn from_stream(stream: TcpStream, timeout: Duration) -> anyhow::Result<HttpClient> {
        let host = stream.peer_addr()?.to_string();
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(HttpClient {
            stream: ClientIo::Plain(stream),
            host,
            buf: Vec::new(),
        })
    }

    /// Connects to `addr` and runs a TLS handshake (`name`: SNI and the name the server's
    /// certificate must carry), with a deadline for every step.
    pub fn connect_tls(
        addr: SocketAddr,
        timeout: Duration,
        config: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> anyhow::Result<HttpClient> {
        let mut c = Self::connect_timeout(addr, timeout)?;
        let ClientIo::Plain(sock) = c.stream else {
            bail!("not a plain socket");
        };
        let conn = rustls::ClientConnection::new(config, name)?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .with_context(|| format!("TLS handshake with {addr}"))?;
        }
        c.stream = ClientIo::Tls(Box::new(tls));
        Ok(c)
    }

    /// The server's certificate (DER) on a TLS connection.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        match &self.stream {
            ClientIo::Plain(_) => None,
            ClientIo::Tls(t) => t
                .conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.to_vec()),
        }
    }

    /// The underlying socket (to watch it from a test).
    pub fn into_stream(self) -> TcpStream {
        match self.stream {
            ClientIo::Plain(s) => s,
            ClientIo::Tls(t) => t.sock,
        }
    }

    /// Sets the `Host` header sent with each request.
    pub fn set_host(&mut self, host: &str) {
        self.host = host.to_string();
    }

    /// Sends raw bytes (for tests of broken input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Sends a request and reads its response.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<Response> {
        let bytes = crate::http::client_request(method, path, &self.host, false, headers, body);
        self.stream.write_all(&bytes)?;
        self.read_response()
    }

    /// POSTs one JSON-RPC message as an MCP client would.
    pub fn mcp(
        &mut self,
        path: &str,
        session: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<Response> {
        let mut h = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        if let Some(s) = session {
            h.push(("mcp-session-id", s));
        }
        self.request("POST", path, &h, body.to_string().as_bytes())
    }

    fn fill(&mut self) -> anyhow::Result<usize> {
        let mut tmp = [0u8; 16384];
        // A read interrupted before any byte (EINTR) is retried, not taken for a failure:
        // this client also runs the health checks, where it would fail a healthy backend.
        let n = loop {
            match self.stream.read(&mut tmp) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads until the bytes received so far contain `needle`; they stay buffered for
    /// [`HttpClient::read_response`] (for tests that act in the middle of a streamed answer).
    pub fn wait_for(&mut self, needle: &[u8]) -> anyhow::Result<()> {
        while memchr::memmem::find(&self.buf, needle).is_none() {
            if self.fill()? == 0 {
                bail!(
                    "connection closed before {:?} arrived",
                    String::from_utf8_lossy(needle)
                );
            }
        }
        Ok(())
    }

    /// Reads one response (content-length, chunked or until close).
    pub fn read_response(&mut self) -> anyhow::Result<Response> {
        let head_len = loop {
            if let Some(n) = crate::http::head_len(&self.buf) {
                break n;
            }
            if self.fill()? == 0 {
                bail!("connection closed before a response head");
            }
        };
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut storage);
        resp.parse(&self.buf[..head_len])?;
        let status = resp.code.ok_or_else(|| anyhow!("no status"))?;
        let headers: Vec<(String, String)> = resp
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        self.buf.drain(..head_len);
        let find = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let sse = find("content-type").is_some_and(|v| v.starts_with("text/event-stream"));
        let mut body = Vec::new();
        let mut events = Vec::new();
        let mut sse_parser = protocol::SseParser::new();
        if find("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut dec = ChunkedDecoder::new();
            loop {
                let mut piece = Vec::new();
                let used = dec
                    .feed(&self.buf, |d| piece.extend_from_slice(d))
                    .map_err(|e| anyhow!("bad chunked body: {}", e.0))?;
                self.buf.drain(..used);
                if sse && !piece.is_empty() {
                    sse_parser.push(&piece);
                    while let Some(ev) = sse_parser.next_event() {
                        events.push((Instant::now(), ev.data));
                    }
                }
                body.extend_from_slice(&piece);
                if dec.is_done() {
                    break;
                }
                if self.fill()? == 0 {
                    bail!("connection closed inside a chunked body");
                }
            }
        } else if let Some(n) = find("content-length") {
            let n: usize = n.trim().parse()?;
            while self.buf.len() < n {
                if self.fill()? == 0 {
                    bail!("connection closed inside a body");
                }
            }
            body = self.buf.drain(..n).collect();
        } else if status != 204 && status != 304 && !(100..200).contains(&status) {
            while self.fill()? > 0 {}
            body = std::mem::take(&mut self.buf);
        }
        if sse && events.is_empty() && !body.is_empty() {
            sse_parser.push(&body);
            while let Some(ev) = sse_parser.next_event() {
                events.push((Instant::now(), ev.data));
            }
        }
        Ok(Response {
            status,
            headers,
            body,
            events,
        })
    }
}

fn rpc(id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn initialize(c: &mut HttpClient) -> anyhow::Result<(String, String)> {
    let r = c.mcp(
        "/mcp",
        None,
        &rpc(
            1,
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "mcplb-demo", "version": "0.1"}}),
        ),
    )?;
    let sid = r
        .header("mcp-session-id")
        .ok_or_else(|| {
            anyhow!(
                "initialize answer carried no session id (status {})",
                r.status
            )
        })?
        .to_string();
    let server = r.json()?["result"]["serverInfo"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let n = c.mcp(
        "/mcp",
        Some(&sid),
        &serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )?;
    if n.status != 202 {
        bail!("notifications/initialized answered {}", n.status);
    }
    Ok((sid, server))
}

fn whoami(c: &mut HttpClient, sid: &str, id: u64) -> anyhow::Result<String> {
    let r = c.mcp(
        "/mcp",
        Some(sid),
        &rpc(
            id,
            "tools/call",
            serde_json::json!({"name": "whoami", "arguments": {}}),
        ),
    )?;
    Ok(r.json()?["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("?")
        .to_string())
}

/// Runs the demo. With `wait`, stays up until Ctrl-C so a real MCP client can be pointed at it.
pub fn run_with(wait: bool) -> anyhow::Result<()> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut mocks = Vec::new();
    for name in ["alpha", "beta"] {
        let cfg = mock::MockConfig {
            name: name.to_string(),
            progress_events: 3,
            progress_interval: Duration::from_millis(300),
            ..Default::default()
        };
        mocks.push(mock::MockServer::start(cfg, loopback)?);
    }
    let backends: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.url())).collect();
    let port_free = std::net::TcpListener::bind("127.0.0.1:8080").is_ok();
    let listen = if port_free {
        "127.0.0.1:8080"
    } else {
        "127.0.0.1:0"
    };
    let admin_free = std::net::TcpListener::bind("127.0.0.1:9901").is_ok();
    let admin = if admin_free {
        "127.0.0.1:9901"
    } else {
        "127.0.0.1:0"
    };
    let text = format!(
        "[proxy]\nlisten = \"{listen}\"\nworkers = 2\n\n[admin]\nlisten = \"{admin}\"\n\n[[servers]]\nname = \"demo\"\npath = \"/mcp\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let config = crate::Config::parse(&text).map_err(|e| anyhow!("{e}"))?;
    let proxy = crate::start(config, crate::Driver::Auto)?;
    let addr = proxy.local_addr;
    println!("== mcplb demo");
    println!(
        "   mock MCP backends: alpha at {}, beta at {}",
        mocks[0].url(),
        mocks[1].url()
    );
    println!(
        "   proxy: http://{addr}/mcp  ({} driver, 2 workers)\n",
        proxy.driver
    );

    let mut c = HttpClient::connect(addr)?;
    let (sid, server) = initialize(&mut c)?;
    println!("1. initialize -> served by {server}");
    println!(
        "   the client holds a sealed session id ({} chars): {}…",
        sid.len(),
        &sid[..sid.len().min(24)]
    );
    let tools = c.mcp(
        "/mcp",
        Some(&sid),
        &rpc(2, "tools/list", serde_json::json!({})),
    )?;
    let names: Vec<String> = tools.json()?["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    println!("2. tools/list -> {}", names.join(", "));
    let who: Vec<String> = (0..3)
        .map(|i| whoami(&mut c, &sid, 10 + i))
        .collect::<Result<_, _>>()?;
    println!(
        "3. tools/call whoami x3 in this session -> {} (sticky)",
        who.join(", ")
    );
    let mut c2 = HttpClient::connect(addr)?;
    let (sid2, server2) = initialize(&mut c2)?;
    println!(
        "4. a second session starts on {server2}; its whoami -> {}",
        whoami(&mut c2, &sid2, 20)?
    );

    let start = Instant::now();
    let r = c.mcp(
        "/mcp",
        Some(&sid),
        &serde_json::json!({"jsonrpc": "2.0", "id": 30, "method": "tools/call",
            "params": {"name": "progress", "arguments": {}, "_meta": {"progressToken": "demo-1"}}}),
    )?;
    println!("5. tools/call progress answered as an SSE stream, forwarded event by event:");
    for (at, data) in &r.events {
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        let what = if v.get("method").is_some() {
            format!(
                "progress {}/{}",
                v["params"]["progress"], v["params"]["total"]
            )
        } else {
            "final result".to_string()
        };
        println!("   +{:>4} ms  {what}", at.duration_since(start).as_millis());
    }
    let bad = c.mcp(
        "/mcp",
        Some("not-a-session"),
        &rpc(40, "ping", serde_json::json!({})),
    )?;
    println!(
        "6. an unknown session id -> HTTP {} (the client re-initializes, as with a real server)",
        bad.status
    );
    let d = c.request("DELETE", "/mcp", &[("mcp-session-id", sid.as_str())], b"")?;
    println!("7. DELETE ends the session -> HTTP {}", d.status);

    let run = load::DemoLoad {
        rate: 2000.0,
        sessions: 8,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(3),
    };
    println!(
        "8. a short open-loop load through the proxy: {} tools/call per second for {} s, {} sessions",
        run.rate,
        run.duration.as_secs(),
        run.sessions
    );
    println!("{}", load::run(addr, run)?);
    println!(
        "   (a blocking client thread per session; for real measurements: \
         mcplb-load run --url http://{addr}/mcp --rate {})",
        run.rate
    );
    println!("\nPoint any MCP client (Streamable HTTP) at http://{addr}/mcp");
    if let Some(a) = proxy.admin_addr {
        println!("Latency percentiles per backend, method and tool: http://{a}/ (live page), /stats, /metrics, or `mcplb stats --admin {a}`");
    }
    if wait {
        println!("mcplb demo is running; press Ctrl-C to stop.");
        proxy.join();
    }
    drop(mocks);
    Ok(())
}

/// Runs the demo and stays up until Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    run_with(true)
}
