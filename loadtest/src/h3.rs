//! `mcplb-load h3`: MCP over HTTP/3 (QUIC, quinn and the `h3` crate on a tokio runtime), for
//! the release build's training (`scripts/pgo-train.sh`) and `bench/instructions.sh
//! LOADER=h3`. Each of `connections` QUIC connections initializes a session (unless
//! stateless: 2026-07-28 requests, no session), sends `notifications/initialized`, then calls
//! one tool again and again, one request stream at a time, until the duration is over. With
//! `calls_per_connection`, a connection is closed after that many calls and a new one (a new
//! QUIC and TLS handshake, and a new session) takes its place. The server's certificate is not
//! verified (loopback benchmarks and tests with a certificate made for the run).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{json, Value};

use crate::load::{initialize_request, stateless_meta, STATEFUL_VERSION, STATELESS_VERSION};
use crate::url::{HttpUrl, Scheme};

/// What an HTTP/3 load run does.
#[derive(Debug, Clone)]
pub struct H3Options {
    /// `https://host:port/path` (the port defaults to 443).
    pub url: String,
    /// QUIC connections, each with one request in flight.
    pub connections: usize,
    /// How long calls are sent.
    pub duration: Duration,
    /// Stop after this many calls in all (sent, answered or not) instead, if sooner.
    pub requests: Option<u64>,
    /// 2026-07-28 requests: no initialize, no session.
    pub stateless: bool,
    /// Tool to call and its arguments.
    pub tool: String,
    pub arguments: Value,
    /// Calls a connection makes before it is closed and replaced (0: no limit).
    pub calls_per_connection: u64,
    /// Per-exchange timeout (connecting, or one request and its answer).
    pub timeout: Duration,
}

/// What an HTTP/3 load run saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct H3Report {
    /// Tool calls answered 200 with a JSON-RPC result.
    pub ok: u64,
    /// Calls answered otherwise, failed setups and lost connections.
    pub errors: u64,
    /// QUIC connections whose handshake completed.
    pub connections: u64,
    /// Setup exchanges answered (initialize and notifications/initialized).
    pub setup: u64,
    /// Measured time, in ms.
    pub millis: u64,
}

impl H3Report {
    fn add(&mut self, o: &H3Report) {
        self.ok += o.ok;
        self.errors += o.errors;
        self.connections += o.connections;
        self.setup += o.setup;
    }

    /// One JSON object (the last line `mcplb-load h3 --json` prints).
    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok, "errors": self.errors, "connections": self.connections,
            "setup": self.setup, "secs": self.millis as f64 / 1000.0,
        })
    }
}

/// Where the requests go: the URL and the address its host resolved to.
struct Target {
    addr: SocketAddr,
    url: HttpUrl,
}

impl Target {
    fn parse(url: &str) -> anyhow::Result<Target> {
        let url = HttpUrl::parse_as(Scheme::Https, url)?;
        Ok(Target {
            addr: url.resolve()?,
            url,
        })
    }
}

/// When the run ends: the duration, or the calls left in all.
struct End {
    deadline: Instant,
    left: Option<AtomicU64>,
}

impl End {
    fn open(&self) -> bool {
        Instant::now() < self.deadline
            && self
                .left
                .as_ref()
                .is_none_or(|l| l.load(Ordering::Relaxed) > 0)
    }

    /// Takes one call from what is left; false when the run is over.
    fn take(&self) -> bool {
        Instant::now() < self.deadline
            && self.left.as_ref().is_none_or(|l| {
                l.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_ok()
            })
    }
}

/// Accepts any server certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> anyhow::Result<quinn::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Runs the load on one thread; returns what it saw.
pub fn run_h3(opts: &H3Options) -> anyhow::Result<H3Report> {
    let target = Arc::new(Target::parse(&opts.url)?);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let bind: SocketAddr = if target.addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind)?;
        endpoint.set_default_client_config(client_config()?);
        let start = Instant::now();
        let end = Arc::new(End {
            deadline: start + opts.duration,
            left: opts.requests.map(AtomicU64::new),
        });
        let tasks: Vec<_> = (0..opts.connections.max(1))
            .map(|_| {
                let (endpoint, target, opts, end) =
                    (endpoint.clone(), target.clone(), opts.clone(), end.clone());
                tokio::spawn(async move { connection_loop(&endpoint, &target, &opts, &end).await })
            })
            .collect();
        let mut report = H3Report::default();
        for t in tasks {
            report.add(&t.await?);
        }
        report.millis = u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        endpoint.close(0u32.into(), b"done");
        endpoint.wait_idle().await;
        Ok(report)
    })
}

/// One virtual user: a connection at a time until the end.
async fn connection_loop(
    endpoint: &quinn::Endpoint,
    target: &Target,
    opts: &H3Options,
    end: &End,
) -> H3Report {
    let mut r = H3Report::default();
    while end.open() {
        if let Err(e) = one_connection(endpoint, target, opts, end, &mut r).await {
            r.errors += 1;
            tracing::debug!("HTTP/3 connection: {e:#}");
            // A refused or lost connection: not a busy loop.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    r
}

type Sender = h3::client::SendRequest<h3_quinn::OpenStreams, Bytes>;

/// One QUIC connection: its session's setup, then calls until the end or the
/// connection's share of calls.
async fn one_connection(
    endpoint: &quinn::Endpoint,
    target: &Target,
    opts: &H3Options,
    end: &End,
    r: &mut H3Report,
) -> anyhow::Result<()> {
    let connecting = endpoint.connect(target.addr, &target.url.host)?;
    let conn = tokio::time::timeout(opts.timeout, connecting).await??;
    r.connections += 1;
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(conn.clone())).await?;
    let drive = tokio::spawn(async move { std::future::poll_fn(|cx| driver.poll_close(cx)).await });
    let result = calls(&mut send, target, opts, end, r).await;
    conn.close(0u32.into(), b"done");
    drive.abort();
    result
}

async fn calls(
    send: &mut Sender,
    target: &Target,
    opts: &H3Options,
    end: &End,
    r: &mut H3Report,
) -> anyhow::Result<()> {
    let mut headers: Vec<(&str, String)> = Vec::new();
    if opts.stateless {
        headers.push(("mcp-protocol-version", STATELESS_VERSION.into()));
        headers.push(("mcp-method", "tools/call".into()));
        headers.push(("mcp-name", opts.tool.clone()));
    } else {
        let session = initialize(send, target, opts, r).await?;
        headers.push(("mcp-protocol-version", STATEFUL_VERSION.into()));
        if let Some(s) = session {
            headers.push(("mcp-session-id", s));
        }
    }
    let mut params = json!({"name": opts.tool, "arguments": opts.arguments});
    if opts.stateless {
        params["_meta"] = stateless_meta();
    }
    let mut made = 0u64;
    while (opts.calls_per_connection == 0 || made < opts.calls_per_connection) && end.take() {
        made += 1;
        let body = json!({"jsonrpc": "2.0", "id": made, "method": "tools/call", "params": params});
        let (status, _, answer) = exchange(send, target, opts, &headers, body.to_string()).await?;
        if status == 200 && has_result(&answer) {
            r.ok += 1;
        } else {
            r.errors += 1;
            if status == 404 {
                anyhow::bail!("the session is gone (404)");
            }
        }
    }
    Ok(())
}

/// initialize and notifications/initialized: the session id the server issued, if any.
async fn initialize(
    send: &mut Sender,
    target: &Target,
    opts: &H3Options,
    r: &mut H3Report,
) -> anyhow::Result<Option<String>> {
    let body = initialize_request(0);
    let (status, session, answer) = exchange(send, target, opts, &[], body.to_string()).await?;
    if status != 200 || !has_result(&answer) {
        anyhow::bail!("initialize answered {status}");
    }
    r.setup += 1;
    let mut headers = vec![("mcp-protocol-version", STATEFUL_VERSION.to_string())];
    if let Some(s) = &session {
        headers.push(("mcp-session-id", s.clone()));
    }
    let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let (status, _, _) = exchange(send, target, opts, &headers, note.into()).await?;
    if status != 202 && status != 200 {
        anyhow::bail!("notifications/initialized answered {status}");
    }
    r.setup += 1;
    Ok(session)
}

/// Whether an answer (JSON or SSE) carries a JSON-RPC result that is not a tool's failure
/// (`"isError":true`, as servers answer bad arguments).
fn has_result(answer: &[u8]) -> bool {
    let has = |pat: &[u8]| answer.windows(pat.len()).any(|w| w == pat);
    has(b"\"result\"") && !has(b"\"isError\":true")
}

/// One POST on its own request stream: status, `Mcp-Session-Id` and the answer's body.
async fn exchange(
    send: &mut Sender,
    target: &Target,
    opts: &H3Options,
    headers: &[(&str, String)],
    body: String,
) -> anyhow::Result<(u16, Option<String>, Vec<u8>)> {
    let mut req = http::Request::post(format!(
        "https://{}{}",
        target.url.authority, target.url.path
    ))
    .header("content-type", "application/json")
    .header("accept", "application/json, text/event-stream")
    .header("content-length", body.len());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let req = req.body(())?;
    let exchange = async {
        let mut stream = send.send_request(req).await?;
        stream.send_data(Bytes::from(body)).await?;
        stream.finish().await?;
        let resp = stream.recv_response().await?;
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut answer = Vec::new();
        while let Some(mut chunk) = stream.recv_data().await? {
            while chunk.has_remaining() {
                let part = chunk.chunk();
                answer.extend_from_slice(part);
                let n = part.len();
                chunk.advance(n);
            }
        }
        anyhow::Ok((resp.status().as_u16(), session, answer))
    };
    tokio::time::timeout(opts.timeout, exchange).await?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Target;

    #[test]
    fn targets() {
        // The URL's reading is `url::HttpUrl`'s (tested there); the address is its host's.
        let t = Target::parse("https://[::1]:9/a/b").unwrap();
        assert_eq!(
            (t.url.host.as_str(), t.addr.to_string().as_str()),
            ("::1", "[::1]:9")
        );
        let t = Target::parse("https://127.0.0.1").unwrap();
        assert_eq!(
            (t.url.authority.as_str(), t.addr.port()),
            ("127.0.0.1:443", 443)
        );
        assert!(Target::parse("http://127.0.0.1:1/mcp").is_err());
        assert!(Target::parse("https://:1/mcp").is_err());
    }
}
