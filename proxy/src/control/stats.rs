//! Latency distributions and counters: recorded per core with no shared state on the request
//! path, merged when read.
//!
//! Each worker owns a [`CoreRecorder`] (plain fields, `RefCell` on its own thread). Once a
//! second the worker moves it into the process-wide [`StatsHub`] under a mutex that only these
//! moves and admin reads touch, never a request. The hub keeps everything since start and a
//! ring of six 10-second slots for the rolling last 60 s. Distributions (µs, buckets at most
//! 0.78 % wide, see [`distribution`](super::distribution)) are kept of the total time (first
//! request byte in to last response byte out), the upstream time (request sent to response
//! complete) and the proxy's own share (total minus upstream), per backend, server group,
//! method and tool name (at most [`MAX_TOOLS`] names; the rest are counted as `other`). They
//! are allocated only for the dimensions that see traffic, and hold memory only for the
//! magnitudes of latency they saw: with 64 tools called, a core's recorder holds about 1 KiB
//! per dimension plus 512 bytes per power of two of latency seen (measured figures in
//! `bench/results/*-stats-memory.md`). The per-second move reads and zeroes only what was
//! written in that second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::distribution::{Count, Distribution, Point};

/// Distinct tool names tracked; further names are recorded as `other`.
pub const MAX_TOOLS: usize = 64;
/// Rolling window: this many slots of [`SLOT`].
const SLOTS: usize = 6;
const SLOT: Duration = Duration::from_secs(10);

/// Methods tracked by name; anything else is `other`.
pub const METHODS: [&str; 16] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "server/discover",
    "notification",
    "response",
    "GET",
    "other",
];
/// Index of `notification` (any notification) in [`METHODS`].
pub const M_NOTIFICATION: usize = 12;
/// Index of `response` (a client's answer to a server request).
pub const M_RESPONSE: usize = 13;
/// Index of `GET` (standalone stream) / DELETE.
pub const M_GET: usize = 14;
/// Index of `other`.
pub const M_OTHER: usize = 15;

/// Index of a request's method in [`METHODS`], whose first twelve names are
/// [`protocol::Method::NAMED`] in its order.
pub fn method_row(m: protocol::Method) -> usize {
    match m {
        protocol::Method::Other => M_OTHER,
        named => named as usize,
    }
}

/// Counter kinds (monotonic).
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Counter {
    /// Requests completed (answered by a backend or by mcplb).
    Requests,
    /// Answers with HTTP status 4xx from a backend.
    Upstream4xx,
    /// Answers with HTTP status 5xx from a backend.
    Upstream5xx,
    /// Requests mcplb rejected as malformed (400/405/413/431/408/501), or that their client
    /// abandoned part-way (499); not a client closing an idle connection.
    BadRequest,
    /// Unknown session ids (404 by mcplb).
    UnknownSession,
    /// No backend could be reached (502/503).
    NoBackend,
    /// Upstream timeouts (504).
    Timeout,
    /// Requests rejected by a rate or concurrency limit (429).
    RateLimited,
    /// Retries on another connection or backend.
    Retries,
    /// Request bytes received from clients.
    BytesIn,
    /// Response bytes sent to clients.
    BytesOut,
    /// Client connections accepted.
    ConnectionsAccepted,
    /// Upstream connections opened.
    UpstreamConnects,
    /// Sessions started (initialize answered with a session id).
    SessionsStarted,
    /// Sessions ended by DELETE.
    SessionsEnded,
    /// SSE answers forwarded.
    SseStreams,
    /// Connections closed at accept by `max_connections` or `max_connections_per_ip`.
    ConnectionsRefused,
    /// Request heads that took longer than `header_timeout` (slowloris) or bodies too slow.
    SlowClients,
    /// Request heads over `max_header_bytes` or `max_headers`.
    HeadersTooLarge,
    /// Request bodies over `max_body_bytes`.
    BodiesTooLarge,
    /// Backend answers that were JSON-RPC error objects (JSON answers read whole).
    JsonRpcErrors,
    /// Client TLS handshakes that failed (plain HTTP or garbage on a TLS port, bad certs).
    TlsHandshakeErrors,
    /// Request targets over `max_url_bytes` (414).
    UrlsTooLong,
    /// Request bodies nested deeper than `max_json_depth` (400).
    JsonTooDeep,
    /// Requests refused by `[servers.auth]` or `allowed_origins` (401, 403).
    AuthRefused,
    /// Full JWT verifications (signature and claims), successful or not.
    JwtVerifications,
    /// JWTs accepted from the per-core cache of verified tokens.
    JwtCacheHits,
    /// Connection tasks that panicked (each closed its connection; the worker went on).
    WorkerPanics,
    /// Tokens refused unverified (429): their client address had spent its budget of failed
    /// JWT verifications.
    AuthThrottled,
    /// Session ids refused (404) in groups with authentication because they are not the
    /// caller's: another caller's, or sealed before sessions were bound to callers. Also
    /// counted in `unknown_session`.
    SessionOwnerMismatch,
    /// Connections closed with a lingering close: answered before their request was read,
    /// then what the client still sent was read and dropped until it closed.
    LingeringCloses,
    /// Lingering closes a bound ended (`linger_time`, `linger_timeout`, 64 MiB) before the
    /// client closed: that client may have missed its answer.
    LingersCut,
    /// Connections from trusted balancers closed for a missing or bad PROXY protocol header.
    ProxyProtocolErrors,
    /// HTTP/2 client connections (h2c with prior knowledge, or ALPN `h2`).
    H2Connections,
    /// HTTP/2 streams (requests) accepted.
    H2Streams,
    /// HTTP/2 connections ended by a protocol error, including h2's own guards.
    H2ProtocolErrors,
    /// HTTP/2 connections refused for a rapid-reset flood (RST_STREAM frames).
    H2RapidResets,
    /// HTTP/2 connections refused for a CONTINUATION flood.
    H2ContinuationFloods,
    /// HTTP/2 connections refused for a PING flood.
    H2PingFloods,
    /// HTTP/2 connections refused for a SETTINGS flood.
    H2SettingsFloods,
    /// Requests answered from the response cache (`[servers.cache]`).
    CacheHits,
    /// Cacheable requests the cache could not answer (sent to a backend).
    CacheMisses,
    /// Cached answers dropped: expired, evicted by a backend's change notification, or
    /// pushed out for room.
    CacheEvictions,
    /// Requests that waited for an identical one in flight on their core and were answered
    /// with its result (no backend call of their own).
    CacheCoalesced,
    /// HTTP/3 (QUIC) connections accepted.
    H3Connections,
    /// HTTP/3 request streams accepted.
    H3Streams,
    /// Retry packets sent to new QUIC clients whose address no token validated yet.
    H3Retries,
    /// HTTP/3 connections whose HTTP/3 set-up or control streams failed.
    H3ProtocolErrors,
    /// New QUIC connections refused (CONNECTION_REFUSED) by `max_connections` or
    /// `max_connections_per_ip`; also counted in `connections_refused`.
    H3ConnectionsRefused,
    /// HTTP/3 connections closed (H3_EXCESSIVE_LOAD) for a rapid-reset flood: more
    /// RESET_STREAM or STOP_SENDING frames, or unidirectional streams past HTTP/3's three, in
    /// a second than `max_resets_per_second`.
    H3RapidResets,
    /// HTTP/3 connections closed (H3_EXCESSIVE_LOAD) for a PING flood.
    H3PingFloods,
    /// HTTP/3 connections closed (H3_EXCESSIVE_LOAD) for a flood of connection-id and path
    /// frames (NEW_CONNECTION_ID, RETIRE_CONNECTION_ID, PATH_CHALLENGE).
    H3MigrationFloods,
    /// HTTP/3 request header sections over `max_header_list_size` (answered 431).
    H3HeadersTooLarge,
    /// Cached lists filtered for a class of callers under a policy (kept, so that the next
    /// caller of the class on the core gets the same bytes without a parse).
    CacheListsFiltered,
    /// Access-log lines dropped because the writer thread fell behind.
    AccessLogLinesDropped,
    /// Audit-trail lines dropped because the writer thread fell behind.
    AuditLinesDropped,
    /// 2026-07-28 retries whose input went to the bridged call waiting here for it.
    EraInputsResumed,
    /// 2026-07-28 retries whose bridged call waited nowhere here: replayed from the rounds
    /// their request state carries.
    EraInputsReplayed,
    /// Bridged calls that waited for their input past the limit (no retry came back here):
    /// cancelled on their backend.
    EraCallsAbandoned,
    /// Backend list answers filtered for a class of callers under a policy (an answer with
    /// the same bytes as the class's last one on the core is not filtered again).
    ListsFiltered,
    /// Backend answers cut at a bound on what mcplb holds of them: an SSE event over
    /// `max_sse_event_bytes`, or a JSON answer over 64 MiB, that the era bridge reads whole.
    UpstreamTooLarge,
}
const COUNTERS: usize = 61;
/// Names of the counters, in order.
pub const COUNTER_NAMES: [&str; COUNTERS] = [
    "requests",
    "upstream_4xx",
    "upstream_5xx",
    "bad_request",
    "unknown_session",
    "no_backend",
    "upstream_timeout",
    "rate_limited",
    "retries",
    "bytes_in",
    "bytes_out",
    "connections_accepted",
    "upstream_connects",
    "sessions_started",
    "sessions_ended",
    "sse_streams",
    "connections_refused",
    "slow_clients",
    "headers_too_large",
    "bodies_too_large",
    "jsonrpc_errors",
    "tls_handshake_errors",
    "urls_too_long",
    "json_too_deep",
    "auth_refused",
    "jwt_verifications",
    "jwt_cache_hits",
    "worker_panics",
    "auth_throttled",
    "session_owner_mismatch",
    "lingering_closes",
    "lingers_cut",
    "proxy_protocol_errors",
    "h2_connections",
    "h2_streams",
    "h2_protocol_errors",
    "h2_rapid_resets",
    "h2_continuation_floods",
    "h2_ping_floods",
    "h2_settings_floods",
    "cache_hits",
    "cache_misses",
    "cache_evictions",
    "cache_coalesced",
    "h3_connections",
    "h3_streams",
    "h3_retries",
    "h3_protocol_errors",
    "h3_connections_refused",
    "h3_rapid_resets",
    "h3_ping_floods",
    "h3_migration_floods",
    "h3_headers_too_large",
    "cache_lists_filtered",
    "access_log_lines_dropped",
    "audit_lines_dropped",
    "era_inputs_resumed",
    "era_inputs_replayed",
    "era_calls_abandoned",
    "lists_filtered",
    "upstream_too_large",
];

/// Gauges (up/down).
#[derive(Debug, Clone, Copy)]
#[repr(usize)]
pub enum Gauge {
    /// Client connections open.
    ClientConnections,
    /// SSE streams being forwarded.
    SseOpen,
    /// Idle pooled upstream connections.
    UpstreamIdle,
    /// Upstream connections carrying a request now (open = idle + busy).
    UpstreamBusy,
    /// Sessions started through mcplb and not ended by DELETE (sessions a backend expires on
    /// its own are not seen, so this is an upper bound).
    ActiveSessions,
    /// Bytes held by the response caches (all groups and cores).
    CacheBytes,
}
const GAUGES: usize = 6;
/// Names of the gauges, in order.
pub const GAUGE_NAMES: [&str; GAUGES] = [
    "client_connections",
    "sse_streams_open",
    "upstream_idle",
    "upstream_busy",
    "active_sessions",
    "cache_bytes",
];

/// Total, upstream and own-time distributions of one dimension. Counted in `u32` on a core
/// (one second) and in the hub's 10-second slots, `u64` since start.
#[derive(Clone, Default)]
pub struct Triple<C: Count = u64> {
    /// First request byte in to last response byte out.
    pub total: Distribution<C>,
    /// Request sent upstream to response complete.
    pub upstream: Distribution<C>,
    /// The proxy's own share (total minus upstream).
    pub own: Distribution<C>,
    /// SSE answers only: request sent upstream to its first event forwarded.
    pub first_event: Distribution<C>,
}

/// One request's values for a [`Triple`], each with its bucket worked out once for all the
/// dimensions it is recorded in.
#[derive(Clone, Copy)]
struct Points {
    total: Point,
    upstream: Point,
    own: Point,
    first_event: Option<Point>,
}

impl Points {
    fn new(total_us: u64, upstream_us: u64, first_event_us: Option<u64>) -> Points {
        Points {
            total: Point::new(total_us.max(1)),
            upstream: Point::new(upstream_us.max(1)),
            own: Point::new(total_us.saturating_sub(upstream_us).max(1)),
            first_event: first_event_us.map(|f| Point::new(f.max(1))),
        }
    }
}

impl<C: Count> Triple<C> {
    #[inline]
    fn record(&mut self, p: &Points) {
        self.total.record_point(p.total);
        self.upstream.record_point(p.upstream);
        self.own.record_point(p.own);
        if let Some(f) = p.first_event {
            self.first_event.record_point(f);
        }
    }

    fn add<D: Count>(&mut self, o: &Triple<D>) {
        self.total.add(&o.total);
        self.upstream.add(&o.upstream);
        self.own.add(&o.own);
        self.first_event.add(&o.first_event);
    }

    /// Moves this core's second into the hub's current slot and empties it.
    fn move_into<D: Count>(&mut self, into: &mut Triple<D>) {
        self.total.move_into(&mut into.total);
        self.upstream.move_into(&mut into.upstream);
        self.own.move_into(&mut into.own);
        self.first_event.move_into(&mut into.first_event);
    }

    /// Bytes held by the four distributions.
    pub fn footprint(&self) -> usize {
        self.total.footprint()
            + self.upstream.footprint()
            + self.own.footprint()
            + self.first_event.footprint()
    }
}

/// A dimension's name as the hub keys it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    /// A backend, by its group's key ([`group_key`]) and its tag: stable across reloads,
    /// whatever the backends' order.
    Backend(u32, u32),
    /// A server group, by [`group_key`].
    Group(u32),
    /// A method, index into [`METHODS`].
    Method(usize),
    /// A tool name (or `other`).
    Tool(String),
}

/// What one finished request recorded.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// Server group index.
    pub group: usize,
    /// Backend index when a backend was used.
    pub backend: Option<usize>,
    /// Method index into [`METHODS`].
    pub method: usize,
    /// Tool slot from [`CoreRecorder::tool_slot`], for `tools/call`.
    pub tool: Option<usize>,
    /// Total µs.
    pub total_us: u64,
    /// Upstream µs (0 when answered by mcplb).
    pub upstream_us: u64,
    /// SSE answers: µs from the request sent to its first event forwarded.
    pub first_event_us: Option<u64>,
}

/// One dimension's distributions on a core, allocated when it first sees traffic.
/// Upper bounds (µs, inclusive) of the loop-gap buckets ([`GapCounts`]); a last bucket holds
/// the longer gaps.
pub const GAP_BOUNDS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
];

/// A worker's loop gaps (see `runtime::loop_gap`): how many fell in each bucket of
/// [`GAP_BOUNDS_US`] (and the one past it), their sum and the longest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GapCounts {
    /// Per bucket of [`GAP_BOUNDS_US`], then the gaps longer than its last bound.
    pub buckets: [u64; GAP_BOUNDS_US.len() + 1],
    /// Sum of the gaps, µs.
    pub sum_us: u64,
    /// The longest gap, µs.
    pub max_us: u64,
}

impl GapCounts {
    /// No gaps.
    pub const EMPTY: GapCounts = GapCounts {
        buckets: [0; GAP_BOUNDS_US.len() + 1],
        sum_us: 0,
        max_us: 0,
    };

    /// Counts one gap of `us` µs.
    #[inline]
    pub fn add(&mut self, us: u64) {
        let i = if us <= GAP_BOUNDS_US[0] {
            0
        } else {
            GAP_BOUNDS_US
                .iter()
                .position(|b| us <= *b)
                .unwrap_or(GAP_BOUNDS_US.len())
        };
        if let Some(b) = self.buckets.get_mut(i) {
            *b += 1;
        }
        self.sum_us += us;
        self.max_us = self.max_us.max(us);
    }

    /// Adds another count to this one.
    pub fn merge(&mut self, o: &GapCounts) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_us += o.sum_us;
        self.max_us = self.max_us.max(o.max_us);
    }

    /// Gaps counted.
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

type CoreDim = Option<Box<Triple<u32>>>;

/// One core's recording since its last flush.
pub struct CoreRecorder {
    groups: Vec<CoreDim>,
    backends: Vec<Vec<CoreDim>>,
    methods: Vec<CoreDim>,
    /// Hashed with foldhash under a random per-process seed (tool names come from clients;
    /// the table is capped at `MAX_TOOLS`): SipHash cost ~240 instructions per `tools/call`.
    tool_names: HashMap<Box<str>, usize, foldhash::fast::RandomState>,
    tools: Vec<(Box<str>, CoreDim)>,
    /// The slot [`Self::tool_slot`] returned last: the same tool again (an agent's loop)
    /// costs one comparison instead of a hash and a probe.
    last_tool: usize,
    counters: [u64; COUNTERS],
    gauges: [i64; GAUGES],
    /// Per backend (`[group][backend]`): requests in flight and sessions, as deltas.
    backend_gauges: Vec<Vec<[i64; 2]>>,
    /// This worker's loop gaps since the last flush.
    gaps: GapCounts,
    /// Per group: its key and its backends' tags, by index (the hub's keys).
    ids: Vec<(u32, Vec<u32>)>,
    dirty: bool,
}

/// The key a server group's statistics go under: a hash of its name, so that a reload that
/// adds, removes or reorders groups keeps each one's figures.
pub fn group_key(name: &str) -> u32 {
    crate::config::fnv1a32(name.as_bytes())
}

impl CoreRecorder {
    /// A recorder for groups with these backend counts, keyed by index (tests, benchmarks).
    pub fn new(backends_per_group: &[usize]) -> Self {
        Self::keyed(
            backends_per_group
                .iter()
                .enumerate()
                .map(|(g, n)| (g as u32, (0..*n as u32).collect()))
                .collect(),
        )
    }

    /// A recorder for the groups of `config`, keyed by group name and backend tag.
    pub fn for_config(config: &crate::config::Config) -> Self {
        Self::keyed(
            config
                .servers
                .iter()
                .map(|g| {
                    (
                        group_key(&g.name),
                        g.backends.iter().map(|b| b.tag).collect(),
                    )
                })
                .collect(),
        )
    }

    /// A recorder for groups given as (group key, backend tags by index).
    pub fn keyed(ids: Vec<(u32, Vec<u32>)>) -> Self {
        CoreRecorder {
            groups: ids.iter().map(|_| None).collect(),
            backends: ids
                .iter()
                .map(|(_, tags)| tags.iter().map(|_| None).collect())
                .collect(),
            methods: METHODS.iter().map(|_| None).collect(),
            tool_names: HashMap::default(),
            tools: Vec::new(),
            last_tool: 0,
            counters: [0; COUNTERS],
            gauges: [0; GAUGES],
            backend_gauges: ids
                .iter()
                .map(|(_, tags)| vec![[0; 2]; tags.len()])
                .collect(),
            ids,
            gaps: GapCounts::EMPTY,
            dirty: false,
        }
    }

    /// The slot for a tool name; allocates only the first time a core sees a name, and past
    /// [`MAX_TOOLS`] names everything goes to `other`.
    pub fn tool_slot(&mut self, name: &str) -> usize {
        if self
            .tools
            .get(self.last_tool)
            .is_some_and(|(n, _)| **n == *name)
        {
            return self.last_tool;
        }
        let i = self.tool_slot_lookup(name);
        self.last_tool = i;
        i
    }

    fn tool_slot_lookup(&mut self, name: &str) -> usize {
        if let Some(i) = self.tool_names.get(name) {
            return *i;
        }
        let key: &str = if self.tool_names.len() >= MAX_TOOLS {
            "other"
        } else {
            name
        };
        if let Some(i) = self.tool_names.get(key) {
            return *i;
        }
        let i = self.tools.len();
        self.tools.push((key.into(), None));
        self.tool_names.insert(key.into(), i);
        i
    }

    /// The name of a tool slot (`other` past the cap).
    pub fn tool_name(&self, slot: usize) -> &str {
        self.tools.get(slot).map_or("", |(n, _)| n)
    }

    /// Records one finished request.
    pub fn record(&mut self, s: Sample) {
        fn slot(t: &mut CoreDim) -> &mut Triple<u32> {
            t.get_or_insert_with(Box::default)
        }
        self.mark_dirty();
        self.counters[Counter::Requests as usize] += 1;
        let p = Points::new(s.total_us, s.upstream_us, s.first_event_us);
        if let Some(t) = self.groups.get_mut(s.group) {
            slot(t).record(&p);
        }
        if let Some(b) = s.backend {
            if let Some(t) = self.backends.get_mut(s.group).and_then(|g| g.get_mut(b)) {
                slot(t).record(&p);
            }
        }
        if let Some(t) = self.methods.get_mut(s.method) {
            slot(t).record(&p);
        }
        if let Some(ti) = s.tool {
            if let Some((_, t)) = self.tools.get_mut(ti) {
                slot(t).record(&p);
            }
        }
    }

    /// Something was recorded: the first record since a flush wakes this worker's flusher,
    /// which waits with no timer while nothing is (a counter moved outside any request, such
    /// as a refused connection, is folded a second later like the rest).
    #[inline]
    fn mark_dirty(&mut self) {
        if !self.dirty {
            self.dirty = true;
            crate::runtime::flush::note();
        }
    }

    /// Whether anything was recorded since the last [`CoreRecorder::flush_into`].
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Adds to a counter.
    pub fn count(&mut self, c: Counter, n: u64) {
        self.mark_dirty();
        self.counters[c as usize] += n;
    }

    /// Adds a worker's loop gaps (moved here by its flush).
    pub fn gaps(&mut self, g: &GapCounts) {
        self.mark_dirty();
        self.gaps.merge(g);
    }

    /// Moves a gauge.
    pub fn gauge(&mut self, g: Gauge, delta: i64) {
        self.mark_dirty();
        self.gauges[g as usize] += delta;
    }

    /// Moves a backend's gauges: requests in flight (`which = 0`) or sessions (`which = 1`).
    pub fn backend_gauge(&mut self, group: usize, backend: usize, which: usize, delta: i64) {
        self.mark_dirty();
        if let Some(g) = self
            .backend_gauges
            .get_mut(group)
            .and_then(|g| g.get_mut(backend))
            .and_then(|g| g.get_mut(which))
        {
            *g += delta;
        }
    }

    /// Bytes held by this core's latency distributions (the tables of names and counters
    /// aside).
    pub fn footprint(&self) -> usize {
        let each = |t: &CoreDim| t.as_ref().map_or(0, |t| t.footprint());
        self.groups.iter().map(each).sum::<usize>()
            + self.backends.iter().flatten().map(each).sum::<usize>()
            + self.methods.iter().map(each).sum::<usize>()
            + self.tools.iter().map(|(_, t)| each(t)).sum::<usize>()
    }

    /// Moves this core's data into the hub and empties it (keeping its allocations). Costs in
    /// proportion to what was recorded since the last flush: only the chunks of buckets
    /// written are read and zeroed.
    pub fn flush_into(&mut self, hub: &StatsHub, now: Instant) {
        if !self.dirty {
            return;
        }
        let mut h = match hub.inner.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        };
        h.rotate(now);
        let mut each = |dim: Dim, t: &mut CoreDim| {
            if let Some(t) = t {
                if !t.total.is_empty() {
                    h.absorb(dim, t);
                }
            }
        };
        let ids = &self.ids;
        let key = |g: usize| ids.get(g).map_or(u32::MAX, |i| i.0);
        let tag = |g: usize, b: usize| {
            ids.get(g)
                .and_then(|i| i.1.get(b))
                .copied()
                .unwrap_or(u32::MAX)
        };
        for (g, t) in self.groups.iter_mut().enumerate() {
            each(Dim::Group(key(g)), t);
        }
        for (g, bs) in self.backends.iter_mut().enumerate() {
            for (b, t) in bs.iter_mut().enumerate() {
                each(Dim::Backend(key(g), tag(g, b)), t);
            }
        }
        for (m, t) in self.methods.iter_mut().enumerate() {
            each(Dim::Method(m), t);
        }
        for (name, t) in self.tools.iter_mut() {
            each(Dim::Tool(name.to_string()), t);
        }
        for (i, c) in self.counters.iter_mut().enumerate() {
            h.counters[i] += *c;
            *c = 0;
        }
        for (i, g) in self.gauges.iter_mut().enumerate() {
            h.gauges[i] += *g;
            *g = 0;
        }
        h.gaps.merge(&self.gaps);
        self.gaps = GapCounts::EMPTY;
        for (gi, bs) in self.backend_gauges.iter_mut().enumerate() {
            for (bi, v) in bs.iter_mut().enumerate() {
                if v.iter().any(|x| *x != 0) {
                    let e = h
                        .backend_gauges
                        .entry((key(gi), tag(gi, bi)))
                        .or_insert([0; 2]);
                    e[0] += v[0];
                    e[1] += v[1];
                    *v = [0; 2];
                }
            }
        }
        self.dirty = false;
    }
}

struct Slot {
    start: Instant,
    hists: HashMap<Dim, Triple<u32>>,
}

struct HubInner {
    /// Everything in the slots closed so far; the open slot (the ring's last) is added when
    /// it closes, so a core's flush writes each bucket once.
    since_start: HashMap<Dim, Triple>,
    ring: Vec<Slot>,
    counters: [u64; COUNTERS],
    gauges: [i64; GAUGES],
    backend_gauges: HashMap<(u32, u32), [i64; 2]>,
    /// Every worker's loop gaps since start.
    gaps: GapCounts,
}

impl HubInner {
    fn rotate(&mut self, now: Instant) {
        let needs_new = self
            .ring
            .last()
            .is_none_or(|s| now.saturating_duration_since(s.start) >= SLOT);
        if needs_new {
            if let Some(closing) = self.ring.last() {
                for (d, t) in &closing.hists {
                    self.since_start.entry(d.clone()).or_default().add(t);
                }
            }
            if self.ring.len() >= SLOTS {
                // The oldest slot's distributions are dropped, not zeroed: a dimension holds
                // memory in a slot only while it has traffic in it.
                let mut old = self.ring.remove(0);
                old.hists.clear();
                old.start = now;
                self.ring.push(old);
            } else {
                self.ring.push(Slot {
                    start: now,
                    hists: HashMap::new(),
                });
            }
        }
    }

    /// Moves a core's second of one dimension into the open slot.
    fn absorb(&mut self, dim: Dim, t: &mut Triple<u32>) {
        match self.ring.last_mut() {
            Some(slot) => t.move_into(slot.hists.entry(dim).or_default()),
            // Not reached: `rotate` runs first and always leaves an open slot.
            None => t.move_into(self.since_start.entry(dim).or_default()),
        }
    }
}

/// The process-wide merge point of every core's recordings.
pub struct StatsHub {
    inner: Mutex<HubInner>,
    /// When the process started.
    pub started: Instant,
    /// Backend health changes (active verdicts and passive ejections); rare, so a shared
    /// atomic is fine.
    pub health_changes: std::sync::atomic::AtomicU64,
}

/// Percentiles of one histogram.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Mean, µs.
    pub mean: f64,
    /// p50, µs.
    pub p50: u64,
    /// p90, µs.
    pub p90: u64,
    /// p95, µs.
    pub p95: u64,
    /// p99, µs.
    pub p99: u64,
    /// p99.9, µs.
    pub p999: u64,
    /// Max, µs.
    pub max: u64,
}

impl Summary {
    fn of(h: &Distribution) -> Summary {
        let [p50, p90, p95, p99, p999] = h.quantiles([0.50, 0.90, 0.95, 0.99, 0.999]);
        Summary {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50,
            p90,
            p95,
            p99,
            p999,
            max: h.max(),
        }
    }
}

/// A merged view of every dimension, in one window.
pub struct View {
    /// Distributions by dimension.
    pub hists: Vec<(Dim, Triple)>,
}

impl Default for StatsHub {
    fn default() -> Self {
        Self::new()
    }
}

impl StatsHub {
    /// An empty hub.
    pub fn new() -> Self {
        StatsHub {
            inner: Mutex::new(HubInner {
                since_start: HashMap::new(),
                ring: Vec::new(),
                counters: [0; COUNTERS],
                gauges: [0; GAUGES],
                backend_gauges: HashMap::new(),
                gaps: GapCounts::EMPTY,
            }),
            started: Instant::now(),
            health_changes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubInner> {
        match self.inner.lock() {
            Ok(h) => h,
            Err(p) => p.into_inner(),
        }
    }

    /// Everything since start (`rolling = false`) or in the last 60 s.
    pub fn view(&self, rolling: bool, now: Instant) -> View {
        let h = self.lock();
        let mut out: HashMap<Dim, Triple> = HashMap::new();
        if rolling {
            for s in &h.ring {
                if now.saturating_duration_since(s.start) < SLOT * SLOTS as u32 {
                    for (d, t) in &s.hists {
                        if !t.total.is_empty() {
                            out.entry(d.clone()).or_default().add(t);
                        }
                    }
                }
            }
        } else {
            for (d, t) in &h.since_start {
                out.insert(d.clone(), t.clone());
            }
            if let Some(open) = h.ring.last() {
                for (d, t) in &open.hists {
                    out.entry(d.clone()).or_default().add(t);
                }
            }
        }
        let mut hists: Vec<(Dim, Triple)> = out.into_iter().collect();
        hists.sort_by(|a, b| a.0.cmp(&b.0));
        View { hists }
    }

    /// Counter values and gauge levels.
    pub fn counters(&self) -> ([u64; COUNTERS], [i64; GAUGES]) {
        let h = self.lock();
        (h.counters, h.gauges)
    }

    /// Every worker's loop gaps since start.
    pub fn gaps(&self) -> GapCounts {
        self.lock().gaps
    }

    /// Bytes held by the hub's distributions: since start and the rolling window's slots.
    pub fn footprint(&self) -> usize {
        let h = self.lock();
        h.since_start.values().map(Triple::footprint).sum::<usize>()
            + h.ring
                .iter()
                .flat_map(|s| s.hists.values())
                .map(Triple::footprint)
                .sum::<usize>()
    }

    /// A backend's requests in flight and sessions (as of the last flush of every core), by
    /// group key and backend tag.
    pub fn backend_gauges(&self, group_key: u32, tag: u32) -> [i64; 2] {
        self.lock()
            .backend_gauges
            .get(&(group_key, tag))
            .copied()
            .unwrap_or([0; 2])
    }
}

/// Summary of a distribution (for rendering).
pub fn summary(h: &Distribution) -> Summary {
    Summary::of(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_rows_name_their_methods() {
        for m in protocol::Method::NAMED {
            assert_eq!(METHODS[method_row(m)], m.name());
        }
        assert_eq!(METHODS[method_row(protocol::Method::Other)], "other");
    }

    #[test]
    fn cores_merge_and_percentiles_match() {
        let hub = StatsHub::new();
        let now = Instant::now();
        let mut a = CoreRecorder::new(&[2]);
        let mut b = CoreRecorder::new(&[2]);
        let ta = a.tool_slot("search");
        let tb = b.tool_slot("search");
        for i in 1..=100u64 {
            let rec = if i % 2 == 0 { &mut a } else { &mut b };
            let tool = if i % 2 == 0 { ta } else { tb };
            rec.record(Sample {
                group: 0,
                backend: Some((i % 2) as usize),
                method: 3,
                tool: Some(tool),
                total_us: i * 100,
                upstream_us: i * 90,
                first_event_us: None,
            });
        }
        a.count(Counter::BytesIn, 10);
        b.count(Counter::BytesIn, 5);
        a.flush_into(&hub, now);
        b.flush_into(&hub, now);
        let v = hub.view(false, now);
        let tool = v
            .hists
            .iter()
            .find(|(d, _)| *d == Dim::Tool("search".into()))
            .map(|(_, t)| t.clone());
        let Some(tool) = tool else {
            panic!("no tool dim")
        };
        assert_eq!(tool.total.len(), 100);
        let s = Summary::of(&tool.total);
        // Percentiles are the top of their bucket: at most 1/128 above the true value.
        assert!((5000..=5000 + 5000 / 128).contains(&s.p50), "{s:?}");
        assert_eq!(s.max, 10_000, "{s:?}");
        assert_eq!(s.mean, 5050.0, "{s:?}");
        let own = Summary::of(&tool.own);
        assert!((990..=1010).contains(&own.max), "{own:?}");
        let (c, _) = hub.counters();
        assert_eq!(c[Counter::Requests as usize], 100);
        assert_eq!(c[Counter::BytesIn as usize], 15);
        // Rolling window holds the same data now, and forgets it after 60 s.
        assert_eq!(hub.view(true, now).hists.len(), v.hists.len());
        assert!(hub
            .view(true, now + Duration::from_secs(61))
            .hists
            .is_empty());
    }

    /// A second of 64 tools over 4 backends with latencies from 50 µs to 20 ms: the core's
    /// recorder stays small, and flushing keeps its chunks but leaves nothing behind.
    #[test]
    fn memory_with_64_tools_is_small() {
        let hub = StatsHub::new();
        let mut rec = CoreRecorder::new(&[4]);
        let tools: Vec<usize> = (0..64).map(|t| rec.tool_slot(&format!("t{t}"))).collect();
        let start = Instant::now();
        let mut i = 0u64;
        for second in 1..=3 {
            for _ in 0..20_000 {
                i = i.wrapping_add(7919);
                let total = 50 + (i % 997) * (1 + i % 20);
                rec.record(Sample {
                    group: 0,
                    backend: Some((i % 4) as usize),
                    method: 3,
                    tool: Some(tools[(i % 64) as usize]),
                    total_us: total,
                    upstream_us: total * 9 / 10,
                    first_event_us: None,
                });
            }
            let held = rec.footprint();
            rec.flush_into(&hub, start + Duration::from_secs(second));
            assert_eq!(rec.footprint(), held);
        }
        let core = rec.footprint();
        // 70 dimensions (64 tools, 4 backends, a group, a method).
        assert!(core < 1024 * 1024, "core recorder holds {core} bytes");
        let hub_bytes = hub.footprint();
        assert!(hub_bytes < 4 * 1024 * 1024, "hub holds {hub_bytes} bytes");
        let v = hub.view(false, start);
        assert_eq!(v.hists.len(), 70);
        assert!(v.hists.iter().all(|(_, t)| !t.total.is_empty()));
    }

    /// Since start is the closed slots plus the open one; the rolling window forgets a slot
    /// 60 s after it opened.
    #[test]
    fn since_start_outlives_the_rolling_window() {
        let hub = StatsHub::new();
        let t0 = Instant::now();
        let mut rec = CoreRecorder::new(&[1]);
        let one = |rec: &mut CoreRecorder, us| {
            rec.record(Sample {
                group: 0,
                backend: Some(0),
                method: 3,
                tool: None,
                total_us: us,
                upstream_us: 0,
                first_event_us: None,
            })
        };
        let count = |rolling, at| {
            hub.view(rolling, at)
                .hists
                .iter()
                .find(|(d, _)| *d == Dim::Group(0))
                .map_or(0, |(_, t)| t.total.len())
        };
        for s in 0..100u64 {
            one(&mut rec, 100 + s);
            one(&mut rec, 100 + s);
            rec.flush_into(&hub, t0 + Duration::from_secs(s));
            assert_eq!(count(false, t0 + Duration::from_secs(s)), 2 * (s + 1));
        }
        // At 99 s the window holds the slots opened at 40, 50, .., 90 s: 60 seconds' worth;
        // at 101 s the one opened at 40 s has left it.
        assert_eq!(count(true, t0 + Duration::from_secs(99)), 120);
        assert_eq!(count(true, t0 + Duration::from_secs(101)), 100);
        let since = hub.view(false, t0);
        let g = &since.hists[0].1.total;
        assert_eq!((g.len(), g.max()), (200, 199));
    }

    #[test]
    fn tool_names_are_capped() {
        let mut r = CoreRecorder::new(&[1]);
        let slots: Vec<usize> = (0..MAX_TOOLS + 10)
            .map(|i| r.tool_slot(&format!("t{i}")))
            .collect();
        assert_eq!(r.tools.len(), MAX_TOOLS + 1);
        assert_eq!(slots[MAX_TOOLS], slots[MAX_TOOLS + 9]);
        assert_eq!(&*r.tools[slots[MAX_TOOLS]].0, "other");
        // The memo of the last slot answers as the table does, repeated or alternating.
        for name in ["t3", "t3", "t5", "t3", "other", "t7", "t7"] {
            let want = r.tool_names.get(name).copied();
            assert_eq!(Some(r.tool_slot(name)), want, "{name}");
        }
        let past_cap = format!("t{}", MAX_TOOLS + 20);
        assert_eq!(r.tool_slot(&past_cap), slots[MAX_TOOLS]);
        assert_eq!(r.tool_slot(&past_cap), slots[MAX_TOOLS]);
        assert_eq!(r.tool_slot("t3"), slots[3]);
    }
}
