//! Test support: start a real `mcplb` process on port 0 with a given config and find its port.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub mod h2;
pub mod sse;

pub use mcplb::demo::HttpClient;
pub use mock::{MockConfig, MockServer};
pub use serde_json::json;

/// Drivers every data-path test runs on.
pub const DRIVERS: [&str; 2] = ["auto", "legacy"];

/// A running `mcplb` child process, killed (by its PID) on drop.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub config_path: PathBuf,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.config_path);
    }
}

static SEQ: AtomicU64 = AtomicU64::new(0);

/// Writes `config` to a temp file.
pub fn write_config(config: &str) -> PathBuf {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("mcplb-test-{}-{n}.toml", std::process::id()));
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts `mcplb run` with `config` (which must listen on port 0) and waits until it listens.
pub fn start_proxy(config: &str, driver: &str) -> Proxy {
    start_proxy_logged(config, driver, None)
}

/// [`start_proxy`], with mcplb's log at `level` written to `file` when given.
pub fn start_proxy_logged(
    config: &str,
    driver: &str,
    log: Option<(&str, &std::path::Path)>,
) -> Proxy {
    start_proxy_env(config, driver, log, &[])
}

/// [`start_proxy_logged`], with extra environment variables for mcplb.
pub fn start_proxy_env(
    config: &str,
    driver: &str,
    log: Option<(&str, &std::path::Path)>,
    env: &[(&str, &str)],
) -> Proxy {
    let config_path = write_config(config);
    let (level, stderr) = match log {
        Some((level, file)) => (
            level.to_string(),
            Stdio::from(std::fs::File::create(file).unwrap()),
        ),
        None => (
            std::env::var("TEST_MCPLB_LOG").unwrap_or("error".into()),
            Stdio::inherit(),
        ),
    };
    let child = Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["run", "--config"])
        .arg(&config_path)
        .args(["--driver", driver])
        .env("MCPLB_LOG", level)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("spawn mcplb");
    proxy_from(child, config_path, config.contains("[admin]"))
}

/// A `mcplb run` child spawned with its stdout piped, in a [`Proxy`] (killed on drop, so a
/// test that fails from here on leaves no process behind) once it reported its address (and
/// its admin address with `admin`), each within 20 s.
pub fn proxy_from(child: Child, config_path: PathBuf, admin: bool) -> Proxy {
    let mut p = Proxy {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: None,
        config_path,
    };
    let stdout = p.child.stdout.take().expect("mcplb's stdout is piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.split("listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            } else if let Some(rest) = line.split("admin on http://").nth(1) {
                let addr = rest.split('/').next().unwrap_or("").to_string();
                let _ = tx.send(addr);
            }
        }
    });
    p.addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("mcplb did not report its address")
        .parse()
        .unwrap();
    p.admin = admin.then(|| {
        rx.recv_timeout(Duration::from_secs(20))
            .expect("mcplb did not report its admin address")
            .parse()
            .unwrap()
    });
    p
}

/// Reads one HTTP/1.1 request (its head, then a `content-length` body) from `s`, `buf`
/// holding bytes read before: its head, lower-cased, and its body, both taken out of `buf`;
/// `None` at EOF or on an error.
pub fn read_request(s: &mut impl std::io::Read, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut tmp = [0u8; 8192];
    let head_len = loop {
        if let Some(n) = mcplb::http::head_len(buf) {
            break n;
        }
        let n = s.read(&mut tmp).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_len]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    while buf.len() < head_len + len {
        let n = s.read(&mut tmp).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&tmp[..n]);
    }
    let body = buf.drain(..head_len + len).skip(head_len).collect();
    Some((head, body))
}

/// Starts a mock backend named `name` on a free loopback port.
pub fn mock(name: &str) -> MockServer {
    mock_with(MockConfig {
        name: name.to_string(),
        ..Default::default()
    })
}

/// Starts a mock backend with a custom config.
pub fn mock_with(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap()
}

/// A config with one group at `/mcp` over the given backends, plus `extra` lines in `[proxy]`.
pub fn config_for(backends: &[&MockServer], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|m| format!("\"{}\"", m.url()))
        .collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n{extra}\n\n[[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\n",
        list.join(", ")
    )
}

pub fn rpc(id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Sends an `initialize` request with JSON-RPC id `id` (no session) and returns the answer.
pub fn initialize(c: &mut HttpClient, id: u64) -> mcplb::demo::Response {
    c.mcp(
        "/mcp",
        None,
        &rpc(
            id,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "t", "version": "0"}}),
        ),
    )
    .unwrap()
}

/// initialize + notifications/initialized; returns (session id, server name).
pub fn init_session(c: &mut HttpClient) -> (String, String) {
    let r = initialize(c, 1);
    assert_eq!(
        r.status,
        200,
        "initialize: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    let sid = r.header("mcp-session-id").expect("session id").to_string();
    let name = r.json().unwrap()["result"]["serverInfo"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let n = c
        .mcp(
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .unwrap();
    assert_eq!(n.status, 202);
    assert!(n.body.is_empty());
    (sid, name)
}

pub fn whoami(c: &mut HttpClient, sid: &str) -> String {
    let r = c
        .mcp(
            "/mcp",
            Some(sid),
            &rpc(7, "tools/call", json!({"name": "whoami", "arguments": {}})),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    r.json().unwrap()["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// How many `notifications/progress` events an SSE answer carried.
pub fn progress_events(r: &mcplb::demo::Response) -> usize {
    r.events
        .iter()
        .filter(|(_, d)| d.contains("notifications/progress"))
        .count()
}

/// Waits (up to 10 s after `since`) for the mcplb process to exit; returns its status.
pub fn wait_exit(p: &mut Proxy, since: std::time::Instant) -> std::process::ExitStatus {
    loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            return s;
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "mcplb did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` every 200 ms until it holds; fails after 30 s (a bound for a busy machine, not a
/// timing assertion).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `tools/call` of a tool `x` with no session (the 2025 form), POSTed to `path` accepting
/// JSON or SSE; returns the answer.
pub fn plain_tool_call(c: &mut HttpClient, path: &str) -> mcplb::demo::Response {
    let body = rpc(1, "tools/call", json!({"name": "x", "arguments": {}})).to_string();
    let headers = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    c.request("POST", path, &headers, body.as_bytes()).unwrap()
}

/// A stateless (2026-07-28) `tools/call` of `tool` with its mirror headers, plus `extra`
/// headers; returns the answer.
pub fn stateless_tool_call(
    c: &mut HttpClient,
    tool: &str,
    extra: &[(&str, &str)],
) -> mcplb::demo::Response {
    send_stateless_call(c, 1, tool, extra);
    c.read_response().unwrap()
}

/// Sends [`stateless_tool_call`]'s request with JSON-RPC id `id`; its answer is left to read.
pub fn send_stateless_call(c: &mut HttpClient, id: u64, tool: &str, extra: &[(&str, &str)]) {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", tool),
    ];
    h.extend_from_slice(extra);
    c.send("POST", "/mcp", &h, body.to_string().as_bytes())
        .unwrap();
}

/// The resident set of process `pid`, in KiB (0 when it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A self-signed certificate for `localhost` in a temp dir (removed on drop): the files for
/// `[proxy.tls]` and the roots a client trusts it with.
pub struct SelfSigned {
    pub dir: PathBuf,
    pub roots: rustls::RootCertStore,
    /// The `[proxy.tls]` table naming the files.
    pub table: String,
}

impl SelfSigned {
    pub fn new(label: &str) -> SelfSigned {
        let dir = std::env::temp_dir().join(format!("mcplb-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.cert.der().clone()).unwrap();
        let table = format!(
            "[proxy.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            cert_path.display(),
            key_path.display()
        );
        SelfSigned { dir, roots, table }
    }

    /// A client configuration (ring, default protocol versions, no client certificate) that
    /// trusts this certificate.
    pub fn client_config(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        std::sync::Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(self.roots.clone())
                .with_no_client_auth(),
        )
    }
}

impl Drop for SelfSigned {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A `redis-server` on a free loopback port, with no persistence; killed (by its PID) on drop.
pub struct RedisServer {
    pub child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one on a free port.
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        RedisServer::start_on(port)
    }

    /// Starts one on `port` (a restart on the port a stopped one had).
    pub fn start_on(port: u16) -> RedisServer {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (the Debian package redis-server; scripts/test.sh installs it)");
        let r = RedisServer { child, port };
        wait_until("redis-server to answer PING", || r.ping());
        r
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether it answers PING.
    pub fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Stops it (by its PID) and waits for it to exit.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
