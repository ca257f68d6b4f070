//! The validated configuration the workers read: plain data, every value checked and every
//! default filled in. Built only by `validate` (see `super::validate`); nothing here parses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Default cap on a request body (MCP tool results of several MiB are normal).
pub const DEFAULT_MAX_BODY: usize = 4 * 1024 * 1024;
/// Default `max_sse_event_bytes`: the bound the SSE readers of the protocol crate keep
/// ([`protocol::sse::DEFAULT_MAX_EVENT_BYTES`]), 16 MiB.
pub const DEFAULT_MAX_SSE_EVENT: usize = protocol::sse::DEFAULT_MAX_EVENT_BYTES;

/// Default cap on client connections open at once from one address. One MCP session holds
/// one or two connections (its POST requests and its GET stream), so 256 lets a host, or an
/// office behind one NAT address, run a hundred sessions and more, while one address can no
/// longer hold thousands of idle sockets. Peers in `trusted_proxies` (a balancer in front,
/// carrying everyone's traffic) are exempt.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 256;

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
    /// Per rate limit rule (same order as `limits`): where its bucket lives.
    pub limit_scopes: Vec<LimitScope>,
    /// The store of `cluster` rate limits (`[cluster]`).
    pub cluster: Option<ClusterConfig>,
    /// The audit trail (`[audit]`), when configured.
    pub audit: Option<AuditConfig>,
    /// OpenTelemetry traces (`[telemetry]`), when configured.
    pub telemetry: Option<TelemetryConfig>,
}

/// `[telemetry]`: where spans go and which traces are recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The OTLP/HTTP traces endpoint as written (`http://127.0.0.1:4318/v1/traces`).
    pub otlp_endpoint: String,
    /// Its `host:port`.
    pub authority: String,
    /// Its path.
    pub path: String,
    /// `https://`: spans go over TLS, verified against `ca` or the system roots.
    pub https: bool,
    /// `ca`: PEM roots the collector's certificate must chain to (default: the system's).
    pub ca: Option<std::path::PathBuf>,
    /// The `service.name` of mcplb's spans.
    pub service_name: String,
    /// Share of the traces mcplb starts that are recorded (a caller's `traceparent` decides
    /// for the traces it continues).
    pub sample_ratio: f64,
}

/// Where a rate limit's bucket lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitScope {
    /// In this process (each replica applies the rule on its own).
    Local,
    /// In the `[cluster]` store, shared by every replica; with what to do while it is
    /// unreachable.
    Cluster(OnUnavailable),
}

/// What a `cluster` rule does while its store is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUnavailable {
    /// Each replica applies its share of the rule (rate and burst divided by the number of
    /// replicas last seen in the store).
    Local,
    /// Refuse what the rule matches (429).
    Deny,
}

/// Most `cluster` rate limit rules.
pub const MAX_CLUSTER_LIMITS: usize = 16;

/// `[cluster]`: the Redis that `cluster` rate limits share.
#[derive(Clone, PartialEq)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` URL (a password in it is kept, never shown).
    pub redis: String,
    /// Password from `password_env` or `password_file` (overrides one in the URL).
    pub password: Option<String>,
    /// Prefix of every key mcplb writes.
    pub prefix: String,
    /// Default of the rules' `on_unavailable`.
    pub on_unavailable: OnUnavailable,
    /// Callers tracked per rule (slots of leases).
    pub max_keys: usize,
    /// How long leased tokens stay spendable.
    pub lease_ttl: Duration,
    /// Connect, read and write timeout of one Redis call.
    pub timeout: Duration,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: neither it nor the password is printed.
        f.debug_struct("ClusterConfig")
            .field("redis", &crate::config::redact_url(&self.redis))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("prefix", &self.prefix)
            .field("on_unavailable", &self.on_unavailable)
            .field("max_keys", &self.max_keys)
            .field("lease_ttl", &self.lease_ttl)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `[audit]`: one JSON line per MCP operation that matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// A file path (appended to, reopened on reload and SIGHUP), or `-` for stderr.
    pub target: String,
    /// What a line says of a call's arguments.
    pub arguments: AuditArguments,
}

/// What an audit line says of a call's arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditArguments {
    /// Nothing.
    Off,
    /// Their SHA-256, as sent (the same arguments give the same hash).
    Hash,
    /// The arguments themselves (compact JSON).
    Full,
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
    /// Keys of session ids (`session_keys`, or the one `session_key`): the first seals new
    /// ids, every one opens. Empty: generate one at start.
    pub session_keys: Vec<[u8; 32]>,
    /// `session_keys_file`: where the keys were read (read again on every reload).
    pub session_keys_file: Option<std::path::PathBuf>,
    /// `watch_interval`: how often the config file and the files it names for keys are
    /// checked; a change reloads, as SIGHUP does. `None`: never.
    pub watch_interval: Option<Duration>,
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
    /// Largest SSE event from a backend that mcplb reads whole to relay it (the era bridge's
    /// rewrites): past it the stream is cut (502 before the client's head went out).
    pub max_sse_event_bytes: usize,
    /// Time allowed for a request head to arrive once its first byte has.
    pub header_timeout: Duration,
    /// Time allowed for a request body to arrive once its head has.
    pub body_timeout: Duration,
    /// Idle keep-alive client connections are closed after this long.
    pub client_idle_timeout: Duration,
    /// A lingering close (an answer sent before the request was read) reads and drops what
    /// the client still sends for at most this long in all.
    pub linger_time: Duration,
    /// ... and stops after this long without a byte from the client.
    pub linger_timeout: Duration,
    /// Time allowed to connect to a backend.
    pub connect_timeout: Duration,
    /// Time allowed for a backend's response head (not the body: SSE streams may run for hours).
    pub upstream_timeout: Duration,
    /// Pooled upstream connections idle longer than this are closed, not reused.
    pub upstream_idle_timeout: Duration,
    /// The head of an SSE answer to a request waits for the answer's first event and goes
    /// out with it (and what already follows it) in one send.
    pub sse_head_waits: bool,
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
    /// `[proxy.http2]`: the HTTP/2 front and its limits.
    pub http2: crate::h2::Http2Config,
    /// `[proxy.http3]`: the HTTP/3 front (off when absent).
    pub http3: Option<crate::h3::Http3Config>,
    /// Record latency histograms and counters (on by default; off only to measure their cost).
    pub stats: bool,
    /// The client's address: what backends are told, and which proxies are believed about it.
    pub client_address: ClientAddress,
    /// Join listeners another process already has on `listen` (a deliberate hand-over between
    /// two mcplb processes); off by default: an address in use is then a start error.
    pub reuse_port: bool,
}

/// How the client's address reaches backends (`proxy.forwarded`, `proxy.forwarded_header`),
/// and whose word about it is believed (`proxy.trusted_proxies`, `proxy.proxy_protocol`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddress {
    /// What is done with the forwarding header on the way to a backend.
    pub forwarded: ForwardedMode,
    /// Which header carries the address (and is read from trusted proxies).
    pub header: ForwardedHeader,
    /// Peers whose forwarding header and PROXY protocol header are believed (and that are
    /// exempt from `max_connections_per_ip`: many clients arrive through them).
    pub trusted: TrustedProxies,
    /// Connections from trusted peers start with a PROXY protocol (v1 or v2) header.
    pub proxy_protocol: bool,
}

/// What happens to the client's forwarding header on the way to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedMode {
    /// The peer's address is appended to the list the request carries (the right-most entry
    /// is always the one mcplb saw).
    Append,
    /// The request's own forwarding headers are dropped; only the peer's address is sent
    /// (for an edge proxy: clients cannot put anything in the list).
    Replace,
    /// Nothing is added or removed.
    Off,
}

/// Which header carries the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (and `X-Forwarded-Proto`), the de facto standard.
    XForwardedFor,
    /// `Forwarded: for=...;proto=...` (RFC 7239).
    Forwarded,
}

/// Addresses and networks of trusted proxies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(pub Vec<ipnet::IpNet>);

impl TrustedProxies {
    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 one) is trusted.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        !self.0.is_empty() && {
            let ip = ip.to_canonical();
            self.0.iter().any(|n| n.contains(&ip))
        }
    }

    /// Whether no proxy is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
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
    /// The protocol era the group's backends speak (`era`).
    pub era: BackendEra,
    /// Bridge a 2026-07-28 client's requests to 2025-era backends (`era_bridge`, on by
    /// default).
    pub era_bridge: bool,
    /// Who may use which tools, prompts, resources and methods (`[[policies]]` naming this
    /// group or none); inactive without rules.
    pub policy: Arc<crate::policy::GroupPolicy>,
    /// `policy_default = "allow"`: what no rule allows is allowed (default deny otherwise).
    pub policy_default_allow: bool,
    /// How long a call that needs its user's approval waits for the answer
    /// (`confirm_timeout`, 60 s by default); a 2026-07-28 client's sealed state lives as long.
    pub confirm_timeout: Duration,
    /// `confirm_destructive = true`: a call the policy allows of a tool whose annotations say
    /// `destructiveHint: true` (or that no `tools/list` answer has shown since the start, a
    /// reload or the last `tools/list_changed`) is asked about as a `confirm` rule's would be.
    pub confirm_destructive: bool,
    /// A virtual server (`members`): no backends of its own; it combines other groups.
    pub virtual_server: Option<Arc<VirtualServer>>,
    /// `[servers.cache]`: the response cache (off without the table).
    pub cache: Option<Arc<crate::cache::CacheConfig>>,
}

/// The protocol era a group's backends speak (`era`): what decides whether mcplb bridges a
/// 2026-07-28 request to them through a backend session of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendEra {
    /// Learned per backend (and per core) the first time a 2026-07-28 request goes to it: mcplb
    /// sends `server/discover`; a result naming 2026-07-28 among `supportedVersions` means the
    /// backend serves it, anything else (an HTTP error, a JSON-RPC error) means 2025 era.
    Auto,
    /// 2025 era (`initialize` and `Mcp-Session-Id`): 2026-07-28 requests are bridged.
    Sessions,
    /// 2026-07-28: requests pass as they are.
    Stateless,
}

/// A virtual server: one MCP endpoint over several member groups, each keeping its own
/// balancing, health checks, limits and sessions.
#[derive(Debug, Clone)]
pub struct VirtualServer {
    /// The members, in config order (earlier members win clashes and URI claims).
    pub members: Vec<Member>,
    /// When member names get their member's prefix.
    pub prefix_mode: PrefixMode,
    /// Between a prefix and a name (`search_query`).
    pub separator: String,
    /// How long merged lists are reused when no member gives a `ttlMs` hint (any member's
    /// `*/list_changed` evicts them sooner). Zero: merged lists are not kept at all (the
    /// members' hints notwithstanding).
    pub list_cache_ttl: Duration,
    /// Stable tag of the virtual group (hash of its name), sealed into its session ids.
    pub tag: u32,
}

/// When the names of a virtual server's members carry their member's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrefixMode {
    /// Every tool and prompt name (the default).
    Always,
    /// Only names that two or more members share.
    Conflict,
    /// Never: a name two members share is kept for the first member only (and logged).
    Never,
}

/// One member of a virtual server.
#[derive(Debug, Clone)]
pub struct Member {
    /// The member group's name.
    pub server: String,
    /// Its index in the configuration's servers.
    pub group: usize,
    /// What its names are prefixed with (default: the group's name).
    pub prefix: String,
    /// Which tools (by the member's own names) are shown.
    pub tools: NameFilter,
    /// Which prompts are shown.
    pub prompts: NameFilter,
    /// Which resources and resource templates (by URI or URI template) are shown.
    pub resources: NameFilter,
    /// Tools shown under another name (member's name, new name), before the prefix.
    pub renames: Vec<(String, String)>,
    /// What some tools show instead of their own title, description or annotations.
    pub overrides: Vec<(String, ToolOverride)>,
    /// A member that cannot be reached fails the request (else it is left out and logged).
    pub fail_closed: bool,
    /// How long one request to this member may take before it counts as unreachable
    /// (fan-outs; a routed call's answer head).
    pub timeout: Duration,
}

/// Allow and deny globs over names (`*` and `?`); an empty allow list allows every name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameFilter {
    /// Names shown (all when empty).
    pub allow: Vec<ratelimit::Glob>,
    /// Names hidden, even when allowed.
    pub deny: Vec<ratelimit::Glob>,
}

impl NameFilter {
    /// Whether `name` is shown.
    pub fn admits(&self, name: &str) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|g| g.matches(name)))
            && !self.deny.iter().any(|g| g.matches(name))
    }
}

/// What a member's tool shows instead of its own.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolOverride {
    /// `title`.
    pub title: Option<String>,
    /// `description`.
    pub description: Option<String>,
    /// `annotations`, merged key by key over the tool's own.
    pub annotations: Option<serde_json::Map<String, serde_json::Value>>,
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
    /// Name used in logs, metrics and the admin port. Defaults to the authority (HTTP), the
    /// module, package or script the command runs (stdio) or the SSE URL; a default name that
    /// another backend of the group already has gets `-2`, `-3`, ... appended.
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
