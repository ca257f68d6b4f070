//! Configuration: TOML read into raw `serde` structs (unknown keys rejected), then validated
//! once, up front, into the typed [`Config`] the workers use. Validation reports every problem
//! at once, each with its key path (`servers[1].backends[0]: ...`).

pub mod view;

use std::collections::HashSet;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

/// Default cap on a request body (MCP tool results of several MiB are normal).
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;

// ---------------------------------------------------------------- raw (as written)

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    proxy: Option<RawProxy>,
    admin: Option<RawAdmin>,
    #[serde(default)]
    servers: Vec<RawServer>,
    #[serde(default)]
    limits: Vec<RawLimit>,
    #[serde(default)]
    concurrency: Vec<RawConcurrency>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConcurrency {
    server: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    resource_prefix: Option<String>,
    per: Option<String>,
    key: Option<String>,
    max: Option<i64>,
    queue: Option<i64>,
    queue_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    server: Option<String>,
    method: Option<String>,
    tool: Option<String>,
    resource_prefix: Option<String>,
    key: Option<String>,
    rate: Option<f64>,
    burst: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProxy {
    listen: Option<String>,
    workers: Option<i64>,
    session_key: Option<String>,
    max_body_bytes: Option<i64>,
    max_header_bytes: Option<i64>,
    max_headers: Option<i64>,
    max_url_bytes: Option<i64>,
    max_json_depth: Option<i64>,
    header_timeout: Option<String>,
    client_idle_timeout: Option<String>,
    connect_timeout: Option<String>,
    upstream_timeout: Option<String>,
    upstream_idle_timeout: Option<String>,
    upstream_max_idle: Option<i64>,
    limit_max_keys: Option<i64>,
    access_log: Option<String>,
    shutdown_timeout: Option<String>,
    max_connections: Option<i64>,
    max_connections_per_ip: Option<i64>,
    stats: Option<bool>,
    reuse_port: Option<bool>,
    tls: Option<RawTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    reload_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<String>,
    path: Option<String>,
    #[serde(default)]
    backends: Vec<RawBackend>,
    balance: Option<String>,
    hash_key: Option<String>,
    hash_bound: Option<f64>,
    max_ejection_percent: Option<i64>,
    session_failover: Option<String>,
    health: Option<RawHealth>,
    allowed_origins: Option<Vec<String>>,
    auth: Option<crate::auth::RawAuth>,
    legacy_sse: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    enabled: Option<bool>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy_threshold: Option<i64>,
    unhealthy_threshold: Option<i64>,
    method: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBackend {
    Url(String),
    Table(Box<RawBackendTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackendTable {
    url: Option<String>,
    sse: Option<String>,
    command: Option<Vec<String>>,
    mode: Option<String>,
    env: Option<std::collections::BTreeMap<String, String>>,
    cwd: Option<String>,
    min: Option<i64>,
    max: Option<i64>,
    max_line_bytes: Option<i64>,
    ca: Option<String>,
    client_cert: Option<String>,
    client_key: Option<String>,
    name: Option<String>,
    weight: Option<i64>,
}

// ---------------------------------------------------------------- typed (validated)

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Client-facing listener and data-path limits.
    pub proxy: ProxyConfig,
    /// Admin listener address, if configured.
    pub admin_listen: Option<SocketAddr>,
    /// Token the admin port requires (`Authorization: Bearer ...`); mandatory off loopback.
    pub admin_token: Option<String>,
    /// Server groups, each with its own path and backends.
    pub servers: Vec<ServerGroup>,
    /// Rate limit rules (`[[limits]]`), in order.
    pub limits: Vec<ratelimit::Rule>,
    /// Concurrency limits (`[[concurrency]]`), in order.
    pub concurrency: Vec<ConcurrencyRule>,
}

/// Most concurrency rules (each request checks every one).
pub const MAX_CONCURRENCY_RULES: usize = 8;

/// What a concurrency limit counts in-flight requests per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConcurrencyPer {
    /// Per backend (checked when the backend is chosen; new sessions try another).
    Backend,
    /// Per tool name.
    Tool,
    /// Per caller (the rule's `key`: session, client-ip or header:NAME).
    Caller,
    /// One count for every matching request.
    Global,
}

/// At most `max` matching requests in flight per `per`; past it, wait in a bounded queue
/// until `queue_timeout`, or be rejected (429).
#[derive(Debug, Clone)]
pub struct ConcurrencyRule {
    /// Which requests (server, method, tool glob, resource prefix) and, for `per = caller`,
    /// the caller key. Its rate fields are unused.
    pub filter: ratelimit::Rule,
    /// What is counted.
    pub per: ConcurrencyPer,
    /// Requests in flight allowed per counted thing.
    pub max: u32,
    /// Requests allowed to wait (0: reject at once).
    pub queue: u32,
    /// Longest wait before rejection.
    pub queue_timeout: Duration,
}

/// Client-facing listener settings and limits.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address every worker binds (SO_REUSEPORT).
    pub listen: SocketAddr,
    /// Worker threads, one per core by default.
    pub workers: usize,
    /// Key that seals session ids; `None` means generate one at start.
    pub session_key: Option<[u8; 32]>,
    /// Largest request body accepted (413 past it).
    pub max_body_bytes: usize,
    /// Largest request head accepted (431 past it).
    pub max_header_bytes: usize,
    /// Most header lines accepted in a request head.
    pub max_headers: usize,
    /// Longest request target (path and query) accepted (414 past it).
    pub max_url_bytes: usize,
    /// Deepest nesting of JSON objects and arrays accepted in a request body (400 past it).
    pub max_json_depth: usize,
    /// Time allowed for a request head to arrive once its first byte has.
    pub header_timeout: Duration,
    /// Idle keep-alive client connections are closed after this long.
    pub client_idle_timeout: Duration,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// Time allowed for a backend's response head (not the body: SSE streams may run for hours).
    pub upstream_timeout: Duration,
    /// Pooled upstream connections idle longer than this are closed, not reused.
    pub upstream_idle_timeout: Duration,
    /// Idle upstream connections kept per backend per worker.
    pub upstream_max_idle: usize,
    /// Distinct callers tracked per rate-limit rule (idle ones are evicted first).
    pub limit_max_keys: usize,
    /// JSON access log: `None` (off, the default), `-` for stderr, or a file path.
    pub access_log: Option<String>,
    /// On SIGTERM/SIGINT, how long open requests and streams may take to finish.
    pub shutdown_timeout: Duration,
    /// Client connections open at once, in all (past it new ones are closed at once).
    pub max_connections: usize,
    /// Client connections open at once from one IP address.
    pub max_connections_per_ip: u32,
    /// `[proxy.tls]`: TLS termination for clients (off when absent).
    pub tls: Option<crate::tls::ServerTlsFiles>,
    /// Record latency histograms and counters (on by default; off only to measure their cost).
    pub stats: bool,
    /// Join listeners another process already has on `listen` (a deliberate hand-over between
    /// two mcplb processes); off by default: an address in use is then a start error.
    pub reuse_port: bool,
}

/// One `[[servers]]` group: an MCP server reachable at `path`, served by `backends`.
#[derive(Debug, Clone)]
pub struct ServerGroup {
    /// Group name (logs, metrics).
    pub name: String,
    /// Client-facing path, e.g. `/mcp`.
    pub path: String,
    /// The replicas of this server.
    pub backends: Vec<Backend>,
    /// How new sessions and stateless requests choose a backend.
    pub balance: Balance,
    /// Bounded-load factor for `hash` (no backend above this times the mean).
    pub hash_bound: f64,
    /// Most backends (percent of the group) passive outlier detection may eject at once.
    pub max_ejection_percent: u8,
    /// Active MCP health checks (on by default; `[servers.health] enabled = false` turns
    /// them off).
    pub health: Option<HealthCheck>,
    /// What happens to a session whose backend becomes unavailable.
    pub session_failover: SessionFailover,
    /// When set, a request whose `Origin` is not in this list is refused (403).
    pub allowed_origins: Option<Vec<String>>,
    /// Who gets in (API keys, JWTs), the protected-resource metadata, and what credential goes
    /// upstream (`[servers.auth]`); the default lets everyone in.
    pub auth: crate::auth::AuthConfig,
    /// Serve the 2024-11-05 HTTP+SSE transport for old clients at `{path}/sse` and
    /// `{path}/messages`.
    pub legacy_sse: bool,
}

/// What happens to a session whose backend becomes unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionFailover {
    /// Answer 404 so the client re-initializes (what the MCP spec prescribes).
    NotFound,
    /// Replay the client's `initialize` on a healthy backend and keep its session id.
    Reinitialize,
}

/// Backend choice for new sessions and stateless requests (sessions are always sticky).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// Least outstanding requests, power of two choices over a peak-EWMA latency estimate.
    LeastRequest,
    /// Consistent hashing with bounded loads on a key.
    Hash(HashKey),
}

/// What `balance = "hash"` hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The tool (`Mcp-Name` / `params.name`); other requests use least-request.
    Tool,
    /// The client's IP address.
    ClientIp,
    /// The `Mcp-Session-Id` the request carries (requests without one use least-request).
    Session,
    /// A request header's value (e.g. the caller's identity); name lower-cased.
    Header(String),
}

/// Methods a health check may send: `ping`, `server/discover`, or a read-only call.
pub const READ_ONLY_CHECKS: [&str; 6] = [
    "ping",
    "server/discover",
    "tools/list",
    "resources/list",
    "prompts/list",
    "resources/templates/list",
];

/// Active MCP health checks of a group's backends.
#[derive(Debug, Clone)]
pub struct HealthCheck {
    /// Time between checks (each check adds up to 10 % jitter).
    pub interval: Duration,
    /// Deadline for one check's answer.
    pub timeout: Duration,
    /// Consecutive successes that make an unhealthy backend healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures that make a healthy backend unhealthy.
    pub unhealthy_threshold: u32,
    /// `ping` in a session of the checker's own, or `server/discover` (2026-07-28 servers).
    pub discover: bool,
    /// The method sent in the checker's session: `ping` or a read-only call.
    pub method: String,
}

/// One backend replica reached over HTTP.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Name used in logs (defaults to the authority).
    pub name: String,
    /// The URL as configured.
    pub url: String,
    /// `host:port` sent as the `Host` header.
    pub authority: String,
    /// Resolved socket address.
    pub addr: SocketAddr,
    /// Path (and query) requests are sent to.
    pub path: String,
    /// Relative share of new sessions (default 1).
    pub weight: u32,
    /// A stdio server mcplb starts and supervises (reached through an in-process bridge whose
    /// address fills `addr` at start), or `None` for an HTTP backend.
    pub stdio: Option<crate::bridges::stdio::StdioConfig>,
    /// An old (2024-11-05 HTTP+SSE) server's SSE URL, reached through a bridge started with
    /// mcplb, or `None`.
    pub legacy_sse: Option<String>,
    /// Stable 32-bit tag of the backend (hash of its URL), carried in sealed session ids so a
    /// reordered backend list still routes existing sessions correctly.
    pub tag: u32,
    /// For an `https://` backend: its TLS client config and server name.
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
}

/// Every problem found in a config file, each with its key path.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Config::parse(&text)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_string();
            let loc = e
                .span()
                .map(|s| {
                    let line = text.get(..s.start).map_or(0, |p| p.matches('\n').count()) + 1;
                    format!(" (line {line})")
                })
                .unwrap_or_default();
            ConfigErrors(vec![format!("TOML: {msg}{loc}")])
        })?;
        validate(raw)
    }
}

/// Parses a duration such as `500ms`, `10s`, `5m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try \"500ms\", \"10s\", \"5m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// FNV-1a, used for stable backend tags.
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("`{addr}` is not a socket address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{addr}` resolves to no address"))
}

/// A backend URL split up.
struct BackendUrl {
    authority: String,
    addr: SocketAddr,
    path: String,
    /// `https://`: the host (SNI and the certificate's name).
    tls_host: Option<String>,
}

/// Splits `http://host:port/path` or `https://...` into its parts.
fn parse_backend_url(url: &str) -> Result<BackendUrl, String> {
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, false, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true, 443)
    } else {
        return Err(format!("`{url}` must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: credentials in backend URLs are not supported"
        ));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = resolve(&with_port)?;
    let tls_host = tls.then(|| {
        with_port
            .rsplit_once(':')
            .map_or(with_port.as_str(), |(h, _)| h)
            .to_string()
    });
    Ok(BackendUrl {
        authority: authority.to_string(),
        addr,
        path: path.to_string(),
        tls_host,
    })
}

fn duration_field(
    errs: &mut Vec<String>,
    key: &str,
    v: Option<&String>,
    default: Duration,
) -> Duration {
    match v {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if d.is_zero() => {
                errs.push(format!("{key}: must be greater than zero"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                errs.push(format!("{key}: {e}"));
                default
            }
        },
    }
}

fn int_field(
    errs: &mut Vec<String>,
    key: &str,
    v: Option<i64>,
    default: usize,
    min: usize,
    max: usize,
) -> usize {
    match v {
        None => default,
        Some(n) => match usize::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                errs.push(format!("{key}: {n} is out of range ({min}..={max})"));
                default
            }
        },
    }
}

/// 64 hex digits as 32 bytes.
pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "not hex".to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| "must be 32 bytes as 64 hex digits or base64".to_string())?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must be exactly 32 bytes (got {})", bytes.len()))
}

fn validate(raw: RawConfig) -> Result<Config, ConfigErrors> {
    let mut errs = Vec::new();
    let p = raw.proxy.unwrap_or_default();
    let listen = match p.listen.as_deref() {
        None => {
            errs.push("proxy.listen: missing (e.g. \"127.0.0.1:8080\")".to_string());
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
        Some(s) => resolve(s).unwrap_or_else(|e| {
            errs.push(format!("proxy.listen: {e}"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = int_field(&mut errs, "proxy.workers", p.workers, cores, 1, 1024);
    let session_key = p.session_key.as_deref().and_then(|s| {
        decode_key(s)
            .map_err(|e| errs.push(format!("proxy.session_key: {e}")))
            .ok()
    });
    let tls = p.tls.and_then(|t| {
        let (Some(cert), Some(key)) = (t.cert, t.key) else {
            errs.push("proxy.tls: needs both `cert` and `key` (PEM files)".to_string());
            return None;
        };
        let files = crate::tls::ServerTlsFiles {
            cert: cert.into(),
            key: key.into(),
            client_ca: t.client_ca.map(Into::into),
            // "0s" is allowed here: never check the files (reload on demand only).
            reload_interval: match t.reload_interval.as_deref().map(parse_duration) {
                None => Duration::from_secs(5),
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    errs.push(format!("proxy.tls.reload_interval: {e}"));
                    Duration::from_secs(5)
                }
            },
        };
        // Loaded once here so that a bad file is a config error naming the key.
        match files.build() {
            Ok(_) => Some(files),
            Err(e) => {
                errs.push(format!("proxy.tls: {e}"));
                None
            }
        }
    });
    if p.reuse_port == Some(true) && listen.port() == 0 {
        errs.push(
            "proxy.reuse_port: needs a fixed port in proxy.listen (port 0 picks a free port, \
             which no other process listens on)"
                .to_string(),
        );
    }
    let proxy = ProxyConfig {
        tls,
        listen,
        workers,
        session_key,
        max_body_bytes: int_field(
            &mut errs,
            "proxy.max_body_bytes",
            p.max_body_bytes,
            DEFAULT_MAX_BODY,
            1,
            1 << 30,
        ),
        max_header_bytes: int_field(
            &mut errs,
            "proxy.max_header_bytes",
            p.max_header_bytes,
            16 * 1024,
            512,
            1 << 20,
        ),
        max_headers: int_field(&mut errs, "proxy.max_headers", p.max_headers, 64, 8, 512),
        max_url_bytes: int_field(
            &mut errs,
            "proxy.max_url_bytes",
            p.max_url_bytes,
            8192,
            16,
            1 << 20,
        ),
        max_json_depth: int_field(
            &mut errs,
            "proxy.max_json_depth",
            p.max_json_depth,
            protocol::MAX_DEPTH,
            3,
            protocol::MAX_DEPTH,
        ),
        header_timeout: duration_field(
            &mut errs,
            "proxy.header_timeout",
            p.header_timeout.as_ref(),
            Duration::from_secs(10),
        ),
        client_idle_timeout: duration_field(
            &mut errs,
            "proxy.client_idle_timeout",
            p.client_idle_timeout.as_ref(),
            Duration::from_secs(60),
        ),
        connect_timeout: duration_field(
            &mut errs,
            "proxy.connect_timeout",
            p.connect_timeout.as_ref(),
            Duration::from_secs(3),
        ),
        upstream_timeout: duration_field(
            &mut errs,
            "proxy.upstream_timeout",
            p.upstream_timeout.as_ref(),
            Duration::from_secs(300),
        ),
        upstream_idle_timeout: duration_field(
            &mut errs,
            "proxy.upstream_idle_timeout",
            p.upstream_idle_timeout.as_ref(),
            Duration::from_secs(4),
        ),
        upstream_max_idle: int_field(
            &mut errs,
            "proxy.upstream_max_idle",
            p.upstream_max_idle,
            256,
            0,
            1 << 20,
        ),
        access_log: p
            .access_log
            .filter(|v| v != "off" && !v.is_empty())
            .map(|v| if v == "stderr" { "-".to_string() } else { v }),
        stats: p.stats.unwrap_or(true),
        reuse_port: p.reuse_port.unwrap_or(false),
        max_connections: int_field(
            &mut errs,
            "proxy.max_connections",
            p.max_connections,
            100_000,
            1,
            10_000_000,
        ),
        max_connections_per_ip: int_field(
            &mut errs,
            "proxy.max_connections_per_ip",
            p.max_connections_per_ip,
            10_000,
            1,
            10_000_000,
        ) as u32,
        shutdown_timeout: duration_field(
            &mut errs,
            "proxy.shutdown_timeout",
            p.shutdown_timeout.as_ref(),
            Duration::from_secs(30),
        ),
        limit_max_keys: int_field(
            &mut errs,
            "proxy.limit_max_keys",
            p.limit_max_keys,
            100_000,
            16,
            1 << 24,
        ),
    };
    let admin = raw.admin.unwrap_or_default();
    let admin_token = admin.token.filter(|t| !t.is_empty());
    let admin_listen = admin.listen.and_then(|s| {
        resolve(&s)
            .map_err(|e| errs.push(format!("admin.listen: {e}")))
            .ok()
    });
    if let Some(a) = admin_listen {
        if !a.ip().is_loopback() && admin_token.is_none() {
            errs.push(format!(
                "admin.token: required when admin.listen ({a}) is not a loopback address"
            ));
        }
    }

    if raw.servers.is_empty() {
        errs.push("servers: at least one [[servers]] group is required".to_string());
    }
    let mut names = HashSet::new();
    let mut paths = HashSet::new();
    let mut servers = Vec::new();
    for (i, s) in raw.servers.into_iter().enumerate() {
        let key = format!("servers[{i}]");
        let name = s.name.unwrap_or_else(|| {
            errs.push(format!("{key}.name: missing"));
            String::new()
        });
        if !name.is_empty() && !names.insert(name.clone()) {
            errs.push(format!("{key}.name: `{name}` is used by another group"));
        }
        let path = s.path.unwrap_or_else(|| "/mcp".to_string());
        if !path.starts_with('/') || path.contains('?') || path.contains(char::is_whitespace) {
            errs.push(format!(
                "{key}.path: `{path}` must start with / and have no query or spaces"
            ));
        } else if !paths.insert(path.clone()) {
            errs.push(format!("{key}.path: `{path}` is used by another group"));
        }
        if s.backends.is_empty() {
            errs.push(format!("{key}.backends: at least one backend is required"));
        }
        if s.backends.len() > usize::from(u16::MAX) {
            errs.push(format!("{key}.backends: too many backends"));
        }
        let mut backends: Vec<Backend> = Vec::new();
        for (j, b) in s.backends.into_iter().enumerate() {
            let bkey = format!("{key}.backends[{j}]");
            let table = match b {
                RawBackend::Url(u) => RawBackendTable {
                    url: Some(u),
                    sse: None,
                    command: None,
                    mode: None,
                    env: None,
                    cwd: None,
                    min: None,
                    max: None,
                    max_line_bytes: None,
                    ca: None,
                    client_cert: None,
                    client_key: None,
                    name: None,
                    weight: None,
                },
                RawBackend::Table(t) => *t,
            };
            let weight = match table.weight {
                None => 1,
                Some(w) if (1..=10_000).contains(&w) => w as u32,
                Some(w) => {
                    errs.push(format!("{bkey}.weight: {w} is out of range (1..=10000)"));
                    1
                }
            };
            if table.url.is_none() {
                for (k, set) in [
                    ("ca", table.ca.is_some()),
                    ("client_cert", table.client_cert.is_some()),
                    ("client_key", table.client_key.is_some()),
                ] {
                    if set {
                        errs.push(format!("{bkey}.{k}: only for https:// backends"));
                    }
                }
            }
            if let Some(sse) = table.sse {
                if table.url.is_some() || table.command.is_some() {
                    errs.push(format!("{bkey}: give one of `url`, `command` or `sse`"));
                    continue;
                }
                match parse_backend_url(&sse) {
                    Err(e) => {
                        errs.push(format!("{bkey}.sse: {e}"));
                        continue;
                    }
                    Ok(u) if u.tls_host.is_some() => {
                        errs.push(format!(
                            "{bkey}.sse: `{sse}`: https is not supported for old SSE servers; use http://"
                        ));
                        continue;
                    }
                    Ok(_) => {}
                }
                let url = format!("sse:{sse}");
                let tag = fnv1a32(url.as_bytes());
                if backends.iter().any(|o| o.tag == tag) {
                    errs.push(format!("{bkey}: `{sse}` is listed twice"));
                    continue;
                }
                backends.push(Backend {
                    name: table.name.unwrap_or_else(|| sse.clone()),
                    url,
                    authority: String::new(),
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    path: "/mcp".to_string(),
                    weight,
                    stdio: None,
                    legacy_sse: Some(sse),
                    tag,
                    tls: None,
                });
                continue;
            }
            match (table.url, table.command) {
                (Some(url), None) => {
                    for (k, set) in [
                        ("mode", table.mode.is_some()),
                        ("env", table.env.is_some()),
                        ("cwd", table.cwd.is_some()),
                        ("min", table.min.is_some()),
                        ("max", table.max.is_some()),
                        ("max_line_bytes", table.max_line_bytes.is_some()),
                    ] {
                        if set {
                            errs.push(format!("{bkey}.{k}: only for `command` backends"));
                        }
                    }
                    match parse_backend_url(&url) {
                        Ok(BackendUrl {
                            authority,
                            addr,
                            path: bpath,
                            tls_host,
                        }) => {
                            let tls = match &tls_host {
                                None => {
                                    for (k, set) in [
                                        ("ca", table.ca.is_some()),
                                        ("client_cert", table.client_cert.is_some()),
                                        ("client_key", table.client_key.is_some()),
                                    ] {
                                        if set {
                                            errs.push(format!(
                                                "{bkey}.{k}: only for https:// backends"
                                            ));
                                        }
                                    }
                                    None
                                }
                                Some(host) => match crate::tls::UpstreamTls::build(
                                    host,
                                    table.ca.as_deref().map(Path::new),
                                    table.client_cert.as_deref().map(Path::new),
                                    table.client_key.as_deref().map(Path::new),
                                ) {
                                    Ok(t) => Some(Arc::new(t)),
                                    Err(e) => {
                                        errs.push(format!("{bkey}: {e}"));
                                        None
                                    }
                                },
                            };
                            let tag = fnv1a32(url.as_bytes());
                            if backends.iter().any(|o| o.tag == tag) {
                                errs.push(format!("{bkey}: `{url}` is listed twice"));
                                continue;
                            }
                            backends.push(Backend {
                                name: table.name.unwrap_or_else(|| authority.clone()),
                                url,
                                authority,
                                addr,
                                path: bpath,
                                weight,
                                stdio: None,
                                legacy_sse: None,
                                tag,
                                tls,
                            });
                        }
                        Err(e) => errs.push(format!("{bkey}: {e}")),
                    }
                }
                (None, Some(command)) => {
                    if command.is_empty() || command[0].is_empty() {
                        errs.push(format!("{bkey}.command: must name a program"));
                        continue;
                    }
                    let mode = match table.mode.as_deref() {
                        None | Some("per-session") => crate::bridges::stdio::StdioMode::PerSession,
                        Some("shared") => crate::bridges::stdio::StdioMode::Shared,
                        Some(m) => {
                            errs.push(format!(
                                "{bkey}.mode: `{m}` (use \"per-session\" or \"shared\")"
                            ));
                            crate::bridges::stdio::StdioMode::PerSession
                        }
                    };
                    let label = command.join(" ");
                    let name = table.name.unwrap_or_else(|| {
                        command[0].rsplit('/').next().unwrap_or("stdio").to_string()
                    });
                    let mut sc = crate::bridges::stdio::StdioConfig::new(
                        name.clone(),
                        command.clone(),
                        mode,
                    );
                    sc.env = table.env.unwrap_or_default().into_iter().collect();
                    sc.cwd = table.cwd.map(std::path::PathBuf::from);
                    let (dmin, dmax) = (sc.min, sc.max);
                    sc.min = int_field(&mut errs, &format!("{bkey}.min"), table.min, dmin, 0, 1024);
                    sc.max = int_field(
                        &mut errs,
                        &format!("{bkey}.max"),
                        table.max,
                        dmax,
                        1,
                        65_536,
                    );
                    if sc.min > sc.max {
                        errs.push(format!("{bkey}.min: {} is above max {}", sc.min, sc.max));
                    }
                    let dline = sc.max_line_bytes;
                    sc.max_line_bytes = int_field(
                        &mut errs,
                        &format!("{bkey}.max_line_bytes"),
                        table.max_line_bytes,
                        dline,
                        1024,
                        1 << 30,
                    );
                    let url = format!("stdio:{label}");
                    let tag = fnv1a32(url.as_bytes());
                    if backends.iter().any(|o| o.tag == tag) {
                        errs.push(format!("{bkey}: `{label}` is listed twice"));
                        continue;
                    }
                    backends.push(Backend {
                        name,
                        url,
                        // Filled in with the bridge's address when mcplb starts.
                        authority: String::new(),
                        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                        path: "/mcp".to_string(),
                        weight,
                        stdio: Some(sc),
                        legacy_sse: None,
                        tag,
                        tls: None,
                    });
                }
                (Some(_), Some(_)) => {
                    errs.push(format!("{bkey}: give either `url` or `command`, not both"))
                }
                (None, None) => errs.push(format!("{bkey}: needs `url` or `command`")),
            }
        }
        let balance = match (s.balance.as_deref(), s.hash_key.as_deref()) {
            (None | Some("round-robin"), None) => Balance::RoundRobin,
            (Some("least-request"), None) => Balance::LeastRequest,
            (Some("hash"), k) => match k.unwrap_or("tool") {
                "tool" => Balance::Hash(HashKey::Tool),
                "client-ip" => Balance::Hash(HashKey::ClientIp),
                "session" => Balance::Hash(HashKey::Session),
                k => match k.strip_prefix("header:") {
                    Some(h) if !h.is_empty() => {
                        Balance::Hash(HashKey::Header(h.to_ascii_lowercase()))
                    }
                    _ => {
                        errs.push(format!(
                            "{key}.hash_key: `{k}` (use \"session\", \"tool\", \"client-ip\" or \"header:NAME\")"
                        ));
                        Balance::RoundRobin
                    }
                },
            },
            (Some(b), None) => {
                errs.push(format!(
                    "{key}.balance: `{b}` (use \"round-robin\", \"least-request\" or \"hash\")"
                ));
                Balance::RoundRobin
            }
            (_, Some(_)) => {
                errs.push(format!("{key}.hash_key: only used with balance = \"hash\""));
                Balance::RoundRobin
            }
        };
        let hash_bound = match s.hash_bound {
            None => 1.25,
            Some(c) if c.is_finite() && c >= 1.0 => c,
            Some(c) => {
                errs.push(format!("{key}.hash_bound: {c} must be at least 1.0"));
                1.25
            }
        };
        let max_ejection_percent = match s.max_ejection_percent {
            None => 50,
            Some(p) if (0..=100).contains(&p) => p as u8,
            Some(p) => {
                errs.push(format!(
                    "{key}.max_ejection_percent: {p} is out of range (0..=100)"
                ));
                50
            }
        };
        let session_failover = match s.session_failover.as_deref() {
            None | Some("404") => SessionFailover::NotFound,
            Some("reinitialize") => SessionFailover::Reinitialize,
            Some(v) => {
                errs.push(format!(
                    "{key}.session_failover: `{v}` (use \"404\" or \"reinitialize\")"
                ));
                SessionFailover::NotFound
            }
        };
        let raw_health = s.health.unwrap_or(RawHealth {
            enabled: None,
            interval: None,
            timeout: None,
            healthy_threshold: None,
            unhealthy_threshold: None,
            method: None,
        });
        let health_on = raw_health.enabled.unwrap_or(true);
        let health = Some(raw_health).filter(|_| health_on).map(|h| {
            let hk = format!("{key}.health");
            HealthCheck {
                interval: duration_field(
                    &mut errs,
                    &format!("{hk}.interval"),
                    h.interval.as_ref(),
                    Duration::from_secs(5),
                ),
                timeout: duration_field(
                    &mut errs,
                    &format!("{hk}.timeout"),
                    h.timeout.as_ref(),
                    Duration::from_secs(2),
                ),
                healthy_threshold: int_field(
                    &mut errs,
                    &format!("{hk}.healthy_threshold"),
                    h.healthy_threshold,
                    2,
                    1,
                    100,
                ) as u32,
                unhealthy_threshold: int_field(
                    &mut errs,
                    &format!("{hk}.unhealthy_threshold"),
                    h.unhealthy_threshold,
                    3,
                    1,
                    100,
                ) as u32,
                discover: h.method.as_deref() == Some("server/discover"),
                method: match h.method.as_deref() {
                    None => "ping".to_string(),
                    Some(m) if READ_ONLY_CHECKS.contains(&m) => m.to_string(),
                    Some(m) => {
                        errs.push(format!(
                            "{hk}.method: `{m}` (use one of {})",
                            READ_ONLY_CHECKS.join(", ")
                        ));
                        "ping".to_string()
                    }
                },
            }
        });
        let auth = crate::auth::validate(s.auth, &key, &mut errs);
        let allowed_origins = s.allowed_origins.map(|v| {
            v.into_iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect()
        });
        servers.push(ServerGroup {
            legacy_sse: s.legacy_sse.unwrap_or(false),
            allowed_origins,
            auth,
            name,
            path,
            backends,
            balance,
            hash_bound,
            max_ejection_percent,
            health,
            session_failover,
        });
    }
    let mut limits = Vec::new();
    for (i, l) in raw.limits.into_iter().enumerate() {
        let key = format!("limits[{i}]");
        if let Some(s) = &l.server {
            if !servers.iter().any(|g| &g.name == s) {
                errs.push(format!("{key}.server: no [[servers]] group is named `{s}`"));
            }
        }
        let source = match l
            .key
            .as_deref()
            .unwrap_or("global")
            .parse::<ratelimit::KeySource>()
        {
            Ok(k) => k,
            Err(e) => {
                errs.push(format!("{key}.key: {e}"));
                ratelimit::KeySource::Global
            }
        };
        let rate = match l.rate {
            Some(r) if r.is_finite() && r > 0.0 => r,
            Some(r) => {
                errs.push(format!(
                    "{key}.rate: {r} must be a number of requests per second above 0"
                ));
                1.0
            }
            None => {
                errs.push(format!("{key}.rate: missing (requests per second)"));
                1.0
            }
        };
        let burst = match l.burst {
            None => rate.ceil().max(1.0) as u32,
            Some(b) if (1..=1_000_000).contains(&b) => b as u32,
            Some(b) => {
                errs.push(format!("{key}.burst: {b} is out of range (1..=1000000)"));
                1
            }
        };
        limits.push(ratelimit::Rule {
            server: l.server,
            method: l.method,
            tool: l.tool.map(ratelimit::Glob::new),
            resource_prefix: l.resource_prefix,
            key: source,
            rate,
            burst,
        });
    }
    let mut concurrency = Vec::new();
    if raw.concurrency.len() > MAX_CONCURRENCY_RULES {
        errs.push(format!(
            "concurrency: at most {MAX_CONCURRENCY_RULES} [[concurrency]] rules"
        ));
    }
    for (i, l) in raw.concurrency.into_iter().enumerate() {
        let key = format!("concurrency[{i}]");
        if let Some(s) = &l.server {
            if !servers.iter().any(|g| &g.name == s) {
                errs.push(format!("{key}.server: no [[servers]] group is named `{s}`"));
            }
        }
        let per = match l.per.as_deref().unwrap_or("backend") {
            "backend" => ConcurrencyPer::Backend,
            "tool" => ConcurrencyPer::Tool,
            "caller" => ConcurrencyPer::Caller,
            "global" => ConcurrencyPer::Global,
            p => {
                errs.push(format!(
                    "{key}.per: `{p}` (use \"backend\", \"tool\", \"caller\" or \"global\")"
                ));
                ConcurrencyPer::Global
            }
        };
        let source = match (&per, l.key.as_deref()) {
            (ConcurrencyPer::Caller, None) => {
                errs.push(format!("{key}.key: required with per = \"caller\""));
                ratelimit::KeySource::Global
            }
            (ConcurrencyPer::Caller, Some(k)) => match k.parse::<ratelimit::KeySource>() {
                Ok(ks) => ks,
                Err(e) => {
                    errs.push(format!("{key}.key: {e}"));
                    ratelimit::KeySource::Global
                }
            },
            (_, Some(_)) => {
                errs.push(format!("{key}.key: only used with per = \"caller\""));
                ratelimit::KeySource::Global
            }
            (_, None) => ratelimit::KeySource::Global,
        };
        let max = match l.max {
            Some(m) if (1..=1_000_000).contains(&m) => m as u32,
            Some(m) => {
                errs.push(format!("{key}.max: {m} is out of range (1..=1000000)"));
                1
            }
            None => {
                errs.push(format!("{key}.max: missing (requests in flight)"));
                1
            }
        };
        let queue = int_field(&mut errs, &format!("{key}.queue"), l.queue, 0, 0, 1_000_000) as u32;
        let queue_timeout = duration_field(
            &mut errs,
            &format!("{key}.queue_timeout"),
            l.queue_timeout.as_ref(),
            Duration::from_secs(5),
        );
        concurrency.push(ConcurrencyRule {
            filter: ratelimit::Rule {
                server: l.server,
                method: l.method,
                tool: l.tool.map(ratelimit::Glob::new),
                resource_prefix: l.resource_prefix,
                key: source,
                rate: 1.0,
                burst: 1,
            },
            per,
            max,
            queue,
            queue_timeout,
        });
    }
    if errs.is_empty() {
        Ok(Config {
            concurrency,
            limits,
            proxy,
            admin_listen,
            admin_token,
            servers,
        })
    } else {
        Err(ConfigErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
workers = 2

[admin]
listen = "127.0.0.1:9901"

[[servers]]
name = "demo"
path = "/mcp"
backends = ["http://127.0.0.1:3001/mcp", "http://127.0.0.1:3002/mcp"]
"#;

    #[test]
    fn minimal_readme_form_loads() {
        let c = Config::parse(MINIMAL).map_err(|e| e.to_string());
        let c = c.as_ref().map_err(|e| e.as_str());
        let Ok(c) = c else { panic!("{c:?}") };
        assert_eq!(c.proxy.workers, 2);
        assert_eq!(c.servers[0].backends.len(), 2);
        assert_eq!(c.servers[0].backends[1].authority, "127.0.0.1:3002");
        assert_eq!(c.servers[0].backends[1].path, "/mcp");
        assert_eq!(c.proxy.max_body_bytes, DEFAULT_MAX_BODY);
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
[proxy]
listen = "nope"
workers = 0
header_timeout = "10 parsecs"

[[servers]]
name = "a"
path = "mcp"
backends = ["ftp://x", { url = "http://127.0.0.1:1/x", name = "b" }, "http://127.0.0.1:1/x"]

[[servers]]
name = "a"
backends = []
"#;
        let Err(ConfigErrors(errs)) = Config::parse(text) else {
            panic!("should fail")
        };
        let all = errs.join("\n");
        for needle in [
            "proxy.listen",
            "proxy.workers",
            "proxy.header_timeout",
            "servers[0].path",
            "servers[0].backends[0]",
            "servers[0].backends[2]",
            "servers[1].name",
            "servers[1].backends",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("[proxy]\nlisten=\"127.0.0.1:1\"\nlisten_typo=1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen_typo"), "{err}");
    }

    #[test]
    fn health_check_methods_are_read_only() {
        let base = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n[servers.health]\n";
        let ok = Config::parse(&format!("{base}method = \"tools/list\"\n"));
        let method = ok
            .ok()
            .and_then(|c| c.servers[0].health.clone())
            .map(|h| h.method);
        assert_eq!(method.as_deref(), Some("tools/list"));
        let err = Config::parse(&format!("{base}method = \"tools/call\"\n"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("servers[0].health.method"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
