//! The MCP load generator behind `mcplb-load run`.
//!
//! Each connection is a virtual user on a monoio runtime: it opens a
//! keep-alive connection, initializes a session (unless stateless), sends
//! `notifications/initialized`, then calls one tool again and again (or, with
//! [`LoadOptions::calls`], a weighted mix of methods picked by a deterministic
//! smooth weighted round robin). Closed
//! loop sends the next call when the previous answer arrived; open loop
//! (`rate`) schedules calls at fixed intervals per connection whatever the
//! answers, and measures latency from the scheduled time, so a queue in front
//! of a busy connection shows up in the numbers (no coordinated omission).
//!
//! In open loop each connection waits for its send times on a timerfd read
//! through io_uring ([`crate::pace`]), so a call leaves within microseconds
//! of its schedule on an idle connection (monoio's own timer ticks once a
//! millisecond; the epoll driver falls back to it). How late each call left
//! is part of its latency and is also reported on its own (`send_lag`), so it
//! can be told apart from the target's queueing.
//!
//! The request path allocates nothing for JSON answers (SSE answers go through
//! [`protocol::SseParser`], which does): each connection renders its calls
//! once (per session) with a fixed-width integer id that is patched in place,
//! and checks each answer (status, JSON-RPC envelope, id bytes, result or
//! error, and for `tools/call` the result's `isError`) with mcplb's zero-copy
//! scanner, [`protocol::parse_message`], in the one pass that validates it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use monoio::net::TcpStream;
use protocol::{MessageKind, SseParser};
use serde::Deserialize;
use serde_json::{json, Value};

use mock::http::{self, Chunked};

use crate::pace::Pacer;
use crate::procstat::{self, ProcCounters, Snapshot};
use crate::url::HttpUrl;

/// Percentiles printed in reports.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 95.0, 99.0, 99.9, 99.99];
/// Highest latency the histogram tracks (1 hour, in µs); larger values saturate.
const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Protocol revision sent on stateful sessions.
pub(crate) const STATEFUL_VERSION: &str = "2025-06-18";
/// Protocol revision sent in stateless mode.
pub(crate) const STATELESS_VERSION: &str = "2026-07-28";

/// The `initialize` request a session opens with (id `id`), over HTTP/1.1 and HTTP/3 alike.
pub(crate) fn initialize_request(id: u64) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": STATEFUL_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "mcplb-load", "version": env!("CARGO_PKG_VERSION")},
        },
    })
}

/// The `_meta` a 2026-07-28 stateless request carries in its params.
pub(crate) fn stateless_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": STATELESS_VERSION,
        "io.modelcontextprotocol/clientCapabilities": {},
    })
}

/// What a load run does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// MCP endpoint, `http://host:port/path`.
    pub url: String,
    /// Concurrent connections (virtual users).
    pub connections: usize,
    /// Length of the measured window (ignored when `requests` is set).
    pub duration: Duration,
    /// Stop after this many measured requests instead of after `duration`.
    pub requests: Option<u64>,
    /// Open loop: total requests per second, spread evenly over connections.
    /// `None` is closed loop (each connection sends as fast as answers come).
    pub rate: Option<f64>,
    /// Time before the measured window whose results are discarded.
    pub warmup: Duration,
    /// Tool to call.
    pub tool: String,
    /// The tool's `arguments`.
    pub arguments: Value,
    /// A weighted mix of calls; when empty, every call is `tools/call` of
    /// `tool` with `arguments`.
    pub calls: Vec<CallSpec>,
    /// 2026-07-28 style: no initialize, no session, `_meta` on every request.
    pub stateless: bool,
    /// MCP sessions, spread over the connections (each connection takes its
    /// sessions in turn, one call each); `None` is one per connection. At
    /// least `connections`; not with `stateless`.
    pub sessions: Option<usize>,
    /// monoio worker threads; connections are spread over them.
    pub threads: usize,
    /// Per-request timeout; a timed-out connection is closed and reopened.
    pub timeout: Duration,
    /// Print a progress line per second on stderr.
    pub progress: bool,
    /// A process (a proxy under test) whose CPU time and context switches over the measured
    /// window the report gives ([`LoadReport::watched`]).
    pub watch_pid: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            url: "http://127.0.0.1:8080/mcp".to_string(),
            connections: 64,
            duration: Duration::from_secs(10),
            requests: None,
            rate: None,
            warmup: Duration::from_secs(1),
            tool: "echo".to_string(),
            arguments: json!({"text": "hello"}),
            calls: Vec::new(),
            stateless: false,
            sessions: None,
            threads: 1,
            timeout: Duration::from_secs(30),
            progress: false,
            watch_pid: None,
        }
    }
}

/// One entry of a method mix (a `[[calls]]` table of a scenario file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallSpec {
    /// JSON-RPC method, e.g. `tools/call`, `tools/list`, `resources/read`.
    pub method: String,
    /// Tool name (`params.name` of `tools/call`).
    #[serde(default)]
    pub tool: Option<String>,
    /// `params.name` for other methods (e.g. `prompts/get`).
    #[serde(default)]
    pub name: Option<String>,
    /// `params.arguments` (defaults to `{}` for `tools/call`).
    #[serde(default)]
    pub arguments: Option<Value>,
    /// `params.uri` (e.g. `resources/read`).
    #[serde(default)]
    pub uri: Option<String>,
    /// Extra params merged into the request's `params` object.
    #[serde(default)]
    pub params: Option<Value>,
    /// Relative weight in the mix (0 disables the entry).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

impl CallSpec {
    /// A `tools/call` of `tool` with `arguments`, weight 1.
    pub fn tool_call(tool: &str, arguments: Value) -> CallSpec {
        CallSpec {
            method: "tools/call".to_string(),
            tool: Some(tool.to_string()),
            name: None,
            arguments: Some(arguments),
            uri: None,
            params: None,
            weight: 1,
        }
    }

    /// Short label for reports: the method, plus the tool, name or uri.
    pub fn label(&self) -> String {
        match self
            .tool
            .as_ref()
            .or(self.name.as_ref())
            .or(self.uri.as_ref())
        {
            Some(n) => format!("{} {n}", self.method),
            None => self.method.clone(),
        }
    }

    /// The request's `params` (without the stateless `_meta`).
    fn params(&self) -> anyhow::Result<serde_json::Map<String, Value>> {
        let mut p = match &self.params {
            None => serde_json::Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => anyhow::bail!("{}: params must be a table/object", self.label()),
        };
        if let Some(n) = self.tool.as_ref().or(self.name.as_ref()) {
            p.insert("name".into(), json!(n));
        }
        if let Some(u) = &self.uri {
            p.insert("uri".into(), json!(u));
        }
        match &self.arguments {
            Some(a) => {
                p.insert("arguments".into(), a.clone());
            }
            None if self.method == "tools/call" => {
                p.insert("arguments".into(), json!({}));
            }
            None => {}
        }
        if self.method == "tools/call" && !p.contains_key("name") {
            anyhow::bail!("tools/call needs a tool name");
        }
        Ok(p)
    }
}

/// A prepared call of the mix: everything of its request except the id and
/// the session, rendered once per run.
#[derive(Debug)]
struct PreparedCall {
    /// The body after the id: `,"method":"…","params":{…}}`.
    body_tail: Vec<u8>,
    /// Header lines of this call (stateless: protocol version, `Mcp-Method`,
    /// `Mcp-Name`), each ending in CRLF.
    headers: String,
    /// A `tools/call`: a result with `isError: true` is a failed call.
    tool_call: bool,
}

/// The call mix of a run: prepared calls and the deterministic order in which
/// a virtual user goes through them.
#[derive(Debug)]
struct Plan {
    calls: Vec<PreparedCall>,
    labels: Vec<String>,
    /// One period of the smooth weighted round robin (indexes into `calls`).
    schedule: Vec<usize>,
}

impl Plan {
    fn new(opts: &LoadOptions) -> anyhow::Result<Plan> {
        let specs = if opts.calls.is_empty() {
            vec![CallSpec::tool_call(&opts.tool, opts.arguments.clone())]
        } else {
            opts.calls.clone()
        };
        let mut calls = Vec::with_capacity(specs.len());
        for c in &specs {
            let mut params = c.params()?;
            let mcp_name = params
                .get(if c.method == "resources/read" {
                    "uri"
                } else {
                    "name"
                })
                .and_then(Value::as_str)
                .map(str::to_string);
            // Header values must not break the request head.
            let printable = |t: &str| !t.bytes().any(|b| b.is_ascii_control());
            if !printable(&c.method) || !mcp_name.as_deref().is_none_or(printable) {
                anyhow::bail!("{}: control characters in a method or name", c.label());
            }
            let mut headers = String::new();
            if opts.stateless {
                params.insert("_meta".into(), stateless_meta());
                headers = format!(
                    "MCP-Protocol-Version: {STATELESS_VERSION}\r\nMcp-Method: {}\r\n",
                    c.method
                );
                if let Some(n) = &mcp_name {
                    headers.push_str(&format!("Mcp-Name: {n}\r\n"));
                }
            }
            let mut body_tail = format!(",\"method\":{}", Value::from(c.method.as_str()));
            if !params.is_empty() {
                body_tail.push_str(",\"params\":");
                body_tail.push_str(&Value::Object(params).to_string());
            }
            body_tail.push('}');
            calls.push(PreparedCall {
                body_tail: body_tail.into_bytes(),
                headers,
                tool_call: c.method == "tools/call",
            });
        }
        let weights: Vec<u64> = specs.iter().map(|c| u64::from(c.weight)).collect();
        let schedule = smooth_wrr(&weights)?;
        Ok(Plan {
            calls,
            labels: specs.iter().map(CallSpec::label).collect(),
            schedule,
        })
    }
}

/// One period of nginx-style smooth weighted round robin over `weights`:
/// each index appears `weight` times, spread as evenly as possible.
fn smooth_wrr(weights: &[u64]) -> anyhow::Result<Vec<usize>> {
    let total: u64 = weights.iter().sum();
    if total == 0 {
        anyhow::bail!("the call mix has no entry with a positive weight");
    }
    if total > 1_000_000 {
        anyhow::bail!("call weights sum to {total}; keep them below 1000000");
    }
    let mut current = vec![0i64; weights.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        out.push(best);
    }
    Ok(out)
}

/// Per-call counts of the measured window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallCount {
    /// The call's label (method plus tool, name or uri).
    pub label: String,
    /// Successful answers.
    pub ok: u64,
    /// Failures.
    pub errors: u64,
}

/// Failures counted by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// TCP connect failed.
    pub connect: u64,
    /// HTTP status other than 200 (202 for notifications).
    pub http_status: u64,
    /// The answer was a JSON-RPC error object.
    pub jsonrpc: u64,
    /// The answer to a `tools/call` was a result with `isError: true`: the
    /// server took the call and the tool failed (MCP servers answer bad
    /// arguments this way too).
    pub tool: u64,
    /// The answer's id did not match the request's.
    pub id_mismatch: u64,
    /// No answer within the timeout.
    pub timeout: u64,
    /// Connection closed or reset mid-request, or an unreadable answer.
    pub io: u64,
}

impl ErrorCounts {
    /// Sum of all kinds.
    pub fn total(&self) -> u64 {
        self.transport() + self.http_status + self.jsonrpc + self.tool + self.id_mismatch
    }

    /// Failures below HTTP: connect, timeout and I/O (closed, reset or
    /// unreadable answers).
    pub fn transport(&self) -> u64 {
        self.connect + self.timeout + self.io
    }

    fn add(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.http_status += o.http_status;
        self.jsonrpc += o.jsonrpc;
        self.tool += o.tool;
        self.id_mismatch += o.id_mismatch;
        self.timeout += o.timeout;
        self.io += o.io;
    }

    fn bump(&mut self, kind: ErrKind) {
        match kind {
            ErrKind::Connect => self.connect += 1,
            ErrKind::Status(_) => self.http_status += 1,
            ErrKind::JsonRpc => self.jsonrpc += 1,
            ErrKind::Tool => self.tool += 1,
            ErrKind::IdMismatch => self.id_mismatch += 1,
            ErrKind::Timeout => self.timeout += 1,
            ErrKind::Io => self.io += 1,
        }
    }
}

/// The result of a load run.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Target URL.
    pub url: String,
    /// Connections used.
    pub connections: usize,
    /// MCP sessions used (0 in stateless mode).
    pub sessions: usize,
    /// Worker threads used.
    pub threads: usize,
    /// Open-loop rate, if any.
    pub rate: Option<f64>,
    /// Length of the measured window (until the last answer came).
    pub elapsed: Duration,
    /// Successful calls in the measured window (a result, and for `tools/call`
    /// one without `isError: true`).
    pub ok: u64,
    /// Failures in the measured window, by kind.
    pub errors: ErrorCounts,
    /// Counts per entry of the call mix, in the mix's order.
    pub calls: Vec<CallCount>,
    /// Latency of successful calls, µs, 3 significant figures.
    pub histogram: Histogram<u64>,
    /// Open loop only: how late each call was actually written compared to
    /// its schedule (busy connection plus timer resolution), µs.
    pub send_lag: Histogram<u64>,
    /// Requests written over the whole run (session set-up, warm-up and the measured
    /// window, answered or not): what a server's CPU over the run divides by.
    pub exchanges: u64,
    /// The watched process's ([`LoadOptions::watch_pid`]) counters from the start of the
    /// measured window (less [`procstat::LEAD`]) until the last answer was read: what the
    /// window's calls (`ok` + errors) cost it, with its pid. `None` when not asked or not
    /// readable.
    pub watched: Option<(u32, ProcCounters)>,
}

impl LoadReport {
    /// Successful calls per second.
    pub fn throughput(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ok as f64 / s
        } else {
            0.0
        }
    }

    /// Latency at percentile `p` (0..=100), µs.
    pub fn percentile(&self, p: f64) -> u64 {
        self.histogram.value_at_percentile(p)
    }

    /// The report as one JSON object (what `--json` prints).
    pub fn to_json(&self) -> Value {
        let mut lat = serde_json::Map::new();
        for p in PERCENTILES {
            lat.insert(format!("p{p}"), json!(self.percentile(p)));
        }
        lat.insert("max".into(), json!(self.histogram.max()));
        lat.insert("mean".into(), json!(self.histogram.mean()));
        let lag = self.rate.map(|_| {
            json!({
                "p50": self.send_lag.value_at_percentile(50.0),
                "p99": self.send_lag.value_at_percentile(99.0),
                "max": self.send_lag.max(),
            })
        });
        let e = &self.errors;
        json!({
            "url": self.url,
            "connections": self.connections,
            "sessions": self.sessions,
            "threads": self.threads,
            "rate": self.rate,
            "elapsed_s": self.elapsed.as_secs_f64(),
            "ok": self.ok,
            "throughput_rps": self.throughput(),
            "errors": {
                "total": e.total(),
                "connect": e.connect,
                "http_status": e.http_status,
                "jsonrpc": e.jsonrpc,
                "tool": e.tool,
                "id_mismatch": e.id_mismatch,
                "timeout": e.timeout,
                "io": e.io,
            },
            "calls": self
                .calls
                .iter()
                .map(|c| json!({"call": c.label, "ok": c.ok, "errors": c.errors}))
                .collect::<Vec<_>>(),
            "latency_us": lat,
            "send_lag_us": lag,
            "exchanges": self.exchanges,
            "watched": self.watched.map(|(pid, w)| json!({
                "pid": pid,
                "run_ns": w.run_ns,
                "switches": w.switches,
            })),
        })
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "closed loop".to_string(),
        };
        writeln!(
            f,
            "target      {} ({} connections, {} sessions, {} threads, {mode})",
            self.url, self.connections, self.sessions, self.threads
        )?;
        let e = &self.errors;
        writeln!(
            f,
            "requests    {} ok, {} errors in {:.2} s",
            self.ok,
            e.total(),
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "throughput  {:.1} req/s", self.throughput())?;
        if let Some((pid, w)) = self.watched {
            let calls = (self.ok + e.total()).max(1) as f64;
            writeln!(
                f,
                "pid {pid}   {:.1} µs CPU and {:.2} context switches per call in the window",
                w.run_ns as f64 / 1000.0 / calls,
                w.switches as f64 / calls
            )?;
        }
        writeln!(
            f,
            "errors      jsonrpc {}, tool (isError) {}, http status {}, id mismatch {}, \
             transport {} (connect {}, timeout {}, io {})",
            e.jsonrpc,
            e.tool,
            e.http_status,
            e.id_mismatch,
            e.transport(),
            e.connect,
            e.timeout,
            e.io
        )?;
        if self.calls.len() > 1 {
            writeln!(f, "calls")?;
            for c in &self.calls {
                writeln!(
                    f,
                    "  {:<30} {:>10} ok {:>8} errors",
                    c.label, c.ok, c.errors
                )?;
            }
        }
        writeln!(f, "latency     µs")?;
        for p in PERCENTILES {
            writeln!(f, "  p{:<8} {:>10}", p, self.percentile(p))?;
        }
        writeln!(f, "  {:<9} {:>10}", "max", self.histogram.max())?;
        write!(f, "  {:<9} {:>10.0}", "mean", self.histogram.mean())?;
        if self.rate.is_some() {
            write!(
                f,
                "\nsend lag    µs p50 {}, p99 {}, max {} (included in latency)",
                self.send_lag.value_at_percentile(50.0),
                self.send_lag.value_at_percentile(99.0),
                self.send_lag.max()
            )?;
        }
        Ok(())
    }
}

/// Runs a load test and returns its report. Blocks the calling thread.
pub fn run_load(opts: LoadOptions) -> anyhow::Result<LoadReport> {
    let url = HttpUrl::parse(&opts.url)?;
    let addr = url.resolve()?;
    if opts.connections == 0 {
        anyhow::bail!("connections must be at least 1");
    }
    let sessions = match (opts.sessions, opts.stateless) {
        (None, true) => 0,
        (None, false) => opts.connections,
        (Some(_), true) => anyhow::bail!("sessions: stateless requests have no sessions"),
        (Some(s), false) if s < opts.connections => anyhow::bail!(
            "sessions = {s} is below connections = {}: each connection needs a session of its own",
            opts.connections
        ),
        (Some(s), false) => s,
    };
    if let Some(r) = opts.rate {
        if !(r > 0.0 && r.is_finite()) {
            anyhow::bail!("rate must be a positive number");
        }
    }
    let threads = opts.threads.clamp(1, opts.connections);
    let plan = Arc::new(Plan::new(&opts)?);
    let shared = Arc::new(RunShared {
        ready: AtomicUsize::new(0),
        start: OnceLock::new(),
        issued: AtomicU64::new(0),
        live: (0..threads).map(|_| Arc::default()).collect(),
        done: AtomicBool::new(false),
    });
    let opts = Arc::new(opts);
    let url = Arc::new(url);
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let ids: Vec<usize> = (0..opts.connections).filter(|i| i % threads == t).collect();
        let (opts, url, shared, plan) = (opts.clone(), url.clone(), shared.clone(), plan.clone());
        let live = shared.live[t].clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{t}"))
                .spawn(move || thread_main(&opts, &plan, &url, addr, &shared, live, ids))?,
        );
    }
    let progress = opts.progress.then(|| {
        let shared = shared.clone();
        let warmup = opts.warmup;
        std::thread::spawn(move || progress_loop(&shared, warmup))
    });
    let watch_start = opts.watch_pid.map(|pid| {
        let shared = shared.clone();
        let warmup = opts.warmup;
        std::thread::spawn(move || watch_window_start(&shared, warmup, pid))
    });
    let mut hist = new_histogram()?;
    let mut send_lag = new_histogram()?;
    let mut errors = ErrorCounts::default();
    let mut exchanges = 0;
    let mut calls: Vec<CallCount> = plan
        .labels
        .iter()
        .map(|l| CallCount {
            label: l.clone(),
            ok: 0,
            errors: 0,
        })
        .collect();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(st)) => {
                hist.add(&st.hist)
                    .map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
                send_lag
                    .add(&st.lag)
                    .map_err(|e| anyhow::anyhow!("histogram merge: {e}"))?;
                errors.add(&st.errors);
                exchanges += st.exchanges;
                for (c, (ok, err)) in calls.iter_mut().zip(&st.calls) {
                    c.ok += ok;
                    c.errors += err;
                }
            }
            Ok(Err(e)) => first_err = Some(e),
            Err(_) => first_err = Some(anyhow::anyhow!("load thread panicked")),
        }
    }
    let finished = Instant::now();
    let watched_end = opts.watch_pid.and_then(|pid| procstat::read(pid).ok());
    shared.done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    let watched = match (
        opts.watch_pid,
        watch_start.and_then(|h| h.join().ok().flatten()),
        watched_end,
    ) {
        (Some(pid), Some(a), Some(b)) => Some((pid, b.since(&a))),
        _ => None,
    };
    if let Some(e) = first_err {
        return Err(e);
    }
    let measure_start = shared.start.get().copied().unwrap_or(finished) + opts.warmup;
    let ok = hist.len();
    Ok(LoadReport {
        url: opts.url.clone(),
        connections: opts.connections,
        sessions,
        threads,
        rate: opts.rate,
        elapsed: finished.saturating_duration_since(measure_start),
        ok,
        errors,
        calls,
        histogram: hist,
        send_lag,
        exchanges,
        watched,
    })
}

/// The watched process's counters at the start of the measured window, less
/// [`procstat::LEAD`]: waits for the run to start (every connection set up), then until the
/// window opens. `None` if the run ended first or the process cannot be read.
fn watch_window_start(shared: &RunShared, warmup: Duration, pid: u32) -> Option<Snapshot> {
    let start = loop {
        if let Some(s) = shared.start.get() {
            break *s;
        }
        if shared.done.load(Ordering::Relaxed) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let at = start + warmup.saturating_sub(procstat::LEAD);
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
    procstat::read(pid).ok()
}

fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow::anyhow!("histogram: {e}"))
}

/// Cross-thread state of one run.
struct RunShared {
    /// Connections that finished their setup.
    ready: AtomicUsize,
    /// When the run (warmup first) started; set once all connections are set up.
    start: OnceLock<Instant>,
    /// Measured requests issued (for `requests` mode).
    issued: AtomicU64,
    /// Live counters for the progress line, one per thread.
    live: Vec<Arc<LiveCounts>>,
    done: AtomicBool,
}

/// One thread's live counts for the progress line. Only that thread writes
/// them, each on its own cache line, so counting costs no locked instruction
/// and no cache line moves between cores per request.
#[derive(Default)]
#[repr(align(128))]
struct LiveCounts {
    ok: AtomicU64,
    errors: AtomicU64,
}

impl LiveCounts {
    fn bump_ok(&self) {
        self.ok
            .store(self.ok.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    fn bump_errors(&self) {
        self.errors
            .store(self.errors.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }
}

fn progress_loop(shared: &RunShared, warmup: Duration) {
    let mut last_ok = 0u64;
    let mut tick = Instant::now();
    let t0 = Instant::now();
    while !shared.done.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if tick.elapsed() < Duration::from_secs(1) {
            continue;
        }
        let dt = tick.elapsed().as_secs_f64();
        tick = Instant::now();
        let ok: u64 = shared
            .live
            .iter()
            .map(|l| l.ok.load(Ordering::Relaxed))
            .sum();
        let err: u64 = shared
            .live
            .iter()
            .map(|l| l.errors.load(Ordering::Relaxed))
            .sum();
        let phase = match shared.start.get() {
            None => "setup",
            Some(s) if s.elapsed() < warmup => "warmup",
            Some(_) => "run",
        };
        eprintln!(
            "[{:>4.0}s {phase:>6}] {:>10.0} req/s  ok {ok}  errors {err}",
            t0.elapsed().as_secs_f64(),
            (ok - last_ok) as f64 / dt
        );
        last_ok = ok;
    }
}

/// What one thread hands back.
struct ThreadStats {
    hist: Histogram<u64>,
    lag: Histogram<u64>,
    errors: ErrorCounts,
    /// (ok, errors) per call of the plan.
    calls: Vec<(u64, u64)>,
    /// This thread's entry of [`RunShared::live`].
    live: Arc<LiveCounts>,
    /// Requests written ([`LoadReport::exchanges`]).
    exchanges: u64,
}

fn thread_main(
    opts: &Arc<LoadOptions>,
    plan: &Arc<Plan>,
    url: &Arc<HttpUrl>,
    addr: SocketAddr,
    shared: &Arc<RunShared>,
    live: Arc<LiveCounts>,
    ids: Vec<usize>,
) -> anyhow::Result<ThreadStats> {
    let stats = Rc::new(RefCell::new(ThreadStats {
        hist: new_histogram()?,
        lag: new_histogram()?,
        errors: ErrorCounts::default(),
        calls: vec![(0, 0); plan.calls.len()],
        live,
        exchanges: 0,
    }));
    let vu_stats = stats.clone();
    mock::runtime::block_on(|driver| async move {
        let mut tasks = Vec::with_capacity(ids.len());
        for id in ids {
            let mut vu = Vu::new(opts, plan, url, addr, shared, &vu_stats, id);
            // Sessions spread over the connections as evenly as they go.
            let (s, c) = (opts.sessions.unwrap_or(opts.connections), opts.connections);
            let mine = s / c + usize::from(id < s % c);
            vu.slots = (0..mine.max(1)).map(|_| Slot::default()).collect();
            vu.precise = driver == mock::runtime::Driver::IoUring;
            tasks.push(monoio::spawn(vu.run()));
        }
        for t in tasks {
            t.await;
        }
    })?;
    let st = Rc::try_unwrap(stats)
        .map_err(|_| anyhow::anyhow!("load tasks still running"))?
        .into_inner();
    Ok(st)
}

/// Why one exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrKind {
    Connect,
    Status(u16),
    JsonRpc,
    Tool,
    IdMismatch,
    Timeout,
    Io,
}

/// Width of every request id: ids run from [`ID_FIRST`] to [`ID_LAST`], so an
/// id is patched into a pre-rendered request in place and the request's
/// `Content-Length` never changes.
const ID_WIDTH: usize = 10;
/// First id of a connection (the smallest `ID_WIDTH`-digit integer).
const ID_FIRST: u64 = 1_000_000_000;
/// Last id before the counter wraps back to [`ID_FIRST`] (only one request is
/// in flight per connection, so ids stay unique where it matters).
const ID_LAST: u64 = 9_999_999_999;
/// The body of a request up to its id.
const BODY_HEAD: &[u8] = br#"{"jsonrpc":"2.0","id":"#;

/// The decimal digits of `id` (between [`ID_FIRST`] and [`ID_LAST`]).
fn id_digits(mut id: u64) -> [u8; ID_WIDTH] {
    let mut d = [b'0'; ID_WIDTH];
    for b in d.iter_mut().rev() {
        *b = b'0' + (id % 10) as u8;
        id /= 10;
    }
    d
}

/// One call's request, rendered once per connection and session: only the
/// id digits at `id_at` change from one send to the next.
#[derive(Default)]
struct Rendered {
    bytes: Vec<u8>,
    id_at: usize,
}

/// What an answer to a request is checked against.
#[derive(Clone, Copy)]
struct Expect<'a> {
    /// The request's id digits.
    id: &'a [u8; ID_WIDTH],
    /// A `tools/call`: `isError: true` in the result is a failure.
    tool_call: bool,
}

/// One answer, as far as the generator cares.
struct Answer {
    status: u16,
    close: bool,
    session: Option<String>,
    /// The JSON-RPC verdict on a 200 answer to a request (`Ok` otherwise).
    rpc: Result<(), ErrKind>,
}

/// One MCP session a connection drives, and its calls rendered for it.
#[derive(Default)]
struct Slot {
    /// `None` until initialized; `Some("")` when the server issued none.
    session: Option<String>,
    /// One pre-rendered request per call of the plan; empty until rendered
    /// for this session.
    requests: Vec<Rendered>,
}

impl Slot {
    fn forget(&mut self) {
        self.session = None;
        self.requests.clear();
    }
}

/// A virtual user: one connection and its sessions (one, unless
/// [`LoadOptions::sessions`] spreads more over the connections), taken in
/// turn, a call each.
struct Vu {
    opts: Arc<LoadOptions>,
    plan: Arc<Plan>,
    /// Position in `plan.schedule` (starts at the VU's index, to spread the
    /// mix over the connections).
    cursor: usize,
    url: Arc<HttpUrl>,
    addr: SocketAddr,
    shared: Arc<RunShared>,
    stats: Rc<RefCell<ThreadStats>>,
    index: usize,
    conn: Option<TcpStream>,
    /// This connection's sessions (one empty slot in stateless mode).
    slots: Vec<Slot>,
    /// The slot of the current call.
    cur: usize,
    next_id: u64,
    inbuf: Vec<u8>,
    /// Requests of the setup (initialize, notifications/initialized).
    out: Vec<u8>,
    /// A chunked answer's body, decoded.
    body: Vec<u8>,
    /// Open loop: wait for send times with a timerfd (io_uring only).
    precise: bool,
}

impl Vu {
    fn new(
        opts: &Arc<LoadOptions>,
        plan: &Arc<Plan>,
        url: &Arc<HttpUrl>,
        addr: SocketAddr,
        shared: &Arc<RunShared>,
        stats: &Rc<RefCell<ThreadStats>>,
        index: usize,
    ) -> Vu {
        Vu {
            opts: opts.clone(),
            plan: plan.clone(),
            cursor: index,
            url: url.clone(),
            addr,
            shared: shared.clone(),
            stats: stats.clone(),
            index,
            conn: None,
            slots: vec![Slot::default()],
            cur: 0,
            next_id: ID_FIRST,
            inbuf: Vec::with_capacity(16 * 1024),
            out: Vec::with_capacity(1024),
            body: Vec::new(),
            precise: false,
        }
    }

    async fn run(mut self) {
        // Setup before the common start, so that connects and initializes do
        // not pollute the first measurements.
        for slot in 0..self.slots.len() {
            self.cur = slot;
            if self.ensure_ready().await.is_err() && self.conn.is_none() {
                // No connection: the other sessions would wait for it in turn.
                break;
            }
        }
        let total = self.opts.connections;
        if self.shared.ready.fetch_add(1, Ordering::AcqRel) + 1 == total {
            let _ = self.shared.start.set(Instant::now());
        }
        let setup_deadline = Instant::now() + Duration::from_secs(10);
        let start = loop {
            if let Some(s) = self.shared.start.get() {
                break *s;
            }
            if Instant::now() >= setup_deadline {
                break *self.shared.start.get_or_init(Instant::now);
            }
            monoio::time::sleep(Duration::from_millis(1)).await;
        };
        let measure_start = start + self.opts.warmup;
        let end = match self.opts.requests {
            Some(_) => None,
            None => Some(measure_start + self.opts.duration),
        };
        let interval = self
            .opts
            .rate
            .map(|r| Duration::from_secs_f64(total as f64 / r));
        // Stagger the connections over one interval.
        let mut next_at = match interval {
            Some(iv) => start + iv.mul_f64(self.index as f64 / total as f64),
            None => start,
        };
        let live = self.stats.borrow().live.clone();
        let mut pacer = Pacer::new(self.precise && interval.is_some());
        loop {
            let scheduled = match interval {
                Some(iv) => {
                    let t = next_at;
                    next_at += iv;
                    pacer.until(t).await;
                    t
                }
                None => Instant::now(),
            };
            if end.is_some_and(|e| scheduled >= e) {
                break;
            }
            let measured = scheduled >= measure_start;
            self.cur = (self.cur + 1) % self.slots.len();
            let ci = self.plan.schedule[self.cursor % self.plan.schedule.len()];
            self.cursor = self.cursor.wrapping_add(1);
            if measured {
                if let Some(n) = self.opts.requests {
                    if self.shared.issued.fetch_add(1, Ordering::Relaxed) >= n {
                        break;
                    }
                }
            }
            let res = match self.ensure_ready().await {
                Ok(()) => {
                    if measured && interval.is_some() {
                        let lag = scheduled.elapsed().as_micros().min(MAX_LATENCY_US as u128);
                        self.stats.borrow_mut().lag.saturating_record(lag as u64);
                    }
                    self.call(ci).await
                }
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {
                    live.bump_ok();
                    if measured {
                        let us = scheduled.elapsed().as_micros().min(MAX_LATENCY_US as u128) as u64;
                        let mut st = self.stats.borrow_mut();
                        st.hist.saturating_record(us.max(1));
                        st.calls[ci].0 += 1;
                    }
                }
                Err(kind) => {
                    live.bump_errors();
                    if measured {
                        let mut st = self.stats.borrow_mut();
                        st.errors.bump(kind);
                        st.calls[ci].1 += 1;
                    }
                    if kind == ErrKind::Connect && interval.is_none() {
                        // Do not spin on a dead target in closed loop.
                        monoio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
        self.conn = None;
    }

    /// Connects, and initializes the current session, if needed. Sessions
    /// outlive connections: a new connection goes on with them.
    async fn ensure_ready(&mut self) -> Result<(), ErrKind> {
        if self.conn.is_none() {
            let fut = TcpStream::connect_addr(self.addr);
            match monoio::time::timeout(self.opts.timeout, fut).await {
                Ok(Ok(s)) => {
                    let _ = s.set_nodelay(true);
                    self.conn = Some(s);
                    self.inbuf.clear();
                }
                Ok(Err(_)) => return Err(ErrKind::Connect),
                Err(_) => return Err(ErrKind::Timeout),
            }
        }
        if self.opts.stateless || self.slots[self.cur].session.is_some() {
            return Ok(());
        }
        let id = self.take_id();
        let body = initialize_request(id);
        self.render_setup(&body.to_string(), None);
        let out = std::mem::take(&mut self.out);
        let digits = id_digits(id);
        let expect = Expect {
            id: &digits,
            tool_call: false,
        };
        let (ans, out) = self.exchange(out, Some(expect)).await;
        self.out = out;
        let ans = ans?;
        if ans.status != 200 {
            return Err(self.status_error(ans.status));
        }
        ans.rpc?;
        let Some(session) = ans.session else {
            // A server without sessions: go on statelessly.
            self.slots[self.cur].session = Some(String::new());
            return Ok(());
        };
        let note = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        self.render_setup(note, Some(&session));
        self.slots[self.cur].session = Some(session);
        let out = std::mem::take(&mut self.out);
        let (ans, out) = self.exchange(out, None).await;
        self.out = out;
        let ans = ans?;
        if ans.status != 202 && ans.status != 200 {
            return Err(self.status_error(ans.status));
        }
        Ok(())
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id = if id >= ID_LAST { ID_FIRST } else { id + 1 };
        id
    }

    fn status_error(&mut self, status: u16) -> ErrKind {
        if status == 404 {
            // Session gone: start over with a new initialize.
            self.slots[self.cur].forget();
        }
        ErrKind::Status(status)
    }

    /// One call of the mix (`ci` indexes `plan.calls`).
    async fn call(&mut self, ci: usize) -> Result<(), ErrKind> {
        if self.slots[self.cur].requests.is_empty() {
            self.render_calls();
        }
        let id = id_digits(self.take_id());
        let Some(req) = self.slots[self.cur].requests.get_mut(ci) else {
            return Err(ErrKind::Io);
        };
        let at = req.id_at;
        let mut bytes = std::mem::take(&mut req.bytes);
        match bytes.get_mut(at..at + ID_WIDTH) {
            Some(slot) => slot.copy_from_slice(&id),
            None => return Err(ErrKind::Io),
        }
        let expect = Expect {
            id: &id,
            tool_call: self.plan.calls.get(ci).is_some_and(|c| c.tool_call),
        };
        let (ans, bytes) = self.exchange(bytes, Some(expect)).await;
        let slot = &mut self.slots[self.cur];
        match slot.requests.get_mut(ci) {
            // A timed-out exchange loses its buffer: render again next time.
            Some(req) if !bytes.is_empty() => req.bytes = bytes,
            _ => slot.requests.clear(),
        }
        let ans = ans?;
        if ans.status != 200 {
            return Err(self.status_error(ans.status));
        }
        ans.rpc
    }

    /// Writes the request head for a body of `body_len` bytes into `o`.
    fn write_head(&self, o: &mut Vec<u8>, body_len: usize, extra: &str, session: Option<&str>) {
        use std::io::Write;
        let _ = write!(
            o,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {body_len}\r\n{extra}",
            self.url.path, self.url.authority,
        );
        if let Some(s) = session.filter(|s| !s.is_empty()) {
            let _ = write!(
                o,
                "Mcp-Session-Id: {s}\r\nMCP-Protocol-Version: {STATEFUL_VERSION}\r\n"
            );
        }
        o.extend_from_slice(b"\r\n");
    }

    /// Renders a setup request (`body` as it is) into `self.out`.
    fn render_setup(&mut self, body: &str, session: Option<&str>) {
        let mut o = std::mem::take(&mut self.out);
        o.clear();
        self.write_head(&mut o, body.len(), "", session);
        o.extend_from_slice(body.as_bytes());
        self.out = o;
    }

    /// Renders every call of the plan for the current session, with a
    /// placeholder id.
    fn render_calls(&mut self) {
        let plan = self.plan.clone();
        let session = self.slots[self.cur].session.clone();
        let mut requests = Vec::with_capacity(plan.calls.len());
        for call in &plan.calls {
            let mut o = Vec::with_capacity(512);
            let body_len = BODY_HEAD.len() + ID_WIDTH + call.body_tail.len();
            self.write_head(&mut o, body_len, &call.headers, session.as_deref());
            o.extend_from_slice(BODY_HEAD);
            let id_at = o.len();
            o.extend_from_slice(&id_digits(ID_FIRST));
            o.extend_from_slice(&call.body_tail);
            requests.push(Rendered { bytes: o, id_at });
        }
        self.slots[self.cur].requests = requests;
    }

    /// Sends `out` and reads the answer (with the timeout); returns the
    /// buffer for reuse (empty when the exchange timed out and the buffer
    /// went with it). `expect`: what to check the answer against; `None` for
    /// a notification.
    async fn exchange(
        &mut self,
        out: Vec<u8>,
        expect: Option<Expect<'_>>,
    ) -> (Result<Answer, ErrKind>, Vec<u8>) {
        let timeout = self.opts.timeout;
        self.stats.borrow_mut().exchanges += 1;
        let Ok((res, out)) = monoio::time::timeout(timeout, self.exchange_inner(out, expect)).await
        else {
            self.reset();
            return (Err(ErrKind::Timeout), Vec::new());
        };
        match res {
            Ok(a) => {
                if a.close {
                    self.conn = None;
                }
                (Ok(a), out)
            }
            Err(e) => {
                self.reset();
                (Err(e), out)
            }
        }
    }

    fn reset(&mut self) {
        self.conn = None;
        self.slots[self.cur].forget();
        self.inbuf = Vec::with_capacity(16 * 1024);
    }

    async fn exchange_inner(
        &mut self,
        out: Vec<u8>,
        expect: Option<Expect<'_>>,
    ) -> (Result<Answer, ErrKind>, Vec<u8>) {
        let Some(stream) = self.conn.as_mut() else {
            return (Err(ErrKind::Io), out);
        };
        let (res, out) = http::write_all(stream, out, None).await;
        if res.is_err() {
            return (Err(ErrKind::Io), out);
        }
        loop {
            match self.parse_answer(expect) {
                Ok(Some(a)) => return (Ok(a), out),
                Ok(None) => {}
                Err(e) => return (Err(e), out),
            }
            let Some(stream) = self.conn.as_mut() else {
                return (Err(ErrKind::Io), out);
            };
            let buf = std::mem::take(&mut self.inbuf);
            let (res, buf) = http::read_more(stream, buf, 16 * 1024, None).await;
            self.inbuf = buf;
            match res {
                Ok(0) | Err(_) => return (Err(ErrKind::Io), out),
                Ok(_) => {}
            }
        }
    }

    /// Parses one complete answer from `inbuf`, if there is one, checks its
    /// JSON-RPC response against `expect`, and removes it from `inbuf`.
    fn parse_answer(&mut self, expect: Option<Expect<'_>>) -> Result<Option<Answer>, ErrKind> {
        if self.inbuf.is_empty() {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(&self.inbuf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ErrKind::Io),
        };
        let status = resp.code.unwrap_or(0);
        let (mut close, mut sse, mut chunked) = (false, false, false);
        let mut length = None;
        let mut session = None;
        for h in resp.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-length") {
                length = Some(
                    std::str::from_utf8(h.value)
                        .ok()
                        .and_then(|s| s.trim().parse::<usize>().ok())
                        .ok_or(ErrKind::Io)?,
                );
            } else if name.eq_ignore_ascii_case(b"content-type") {
                sse = h.value.starts_with(b"text/event-stream");
            } else if name.eq_ignore_ascii_case(b"connection") {
                close = http::has_token(h.value, "close");
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                chunked = http::has_token(h.value, "chunked");
            } else if name.eq_ignore_ascii_case(b"mcp-session-id")
                && self.slots[self.cur].session.is_none()
            {
                session = std::str::from_utf8(h.value).ok().map(str::to_string);
            }
        }
        // Where the body is: in `inbuf` (with a length) or decoded into `body`.
        let (consumed, body_in) = if chunked {
            match http::decode_chunked(&self.inbuf[head_len..], &mut self.body) {
                Chunked::Done(n) => (head_len + n, None),
                Chunked::Partial => return Ok(None),
                Chunked::Invalid => return Err(ErrKind::Io),
            }
        } else if let Some(len) = length {
            let end = head_len.checked_add(len).ok_or(ErrKind::Io)?;
            if self.inbuf.len() < end {
                return Ok(None);
            }
            (end, Some(head_len..end))
        } else if status == 200 {
            // No length: a body would run to the end of the connection; the
            // generator does not support that for MCP answers.
            return Err(ErrKind::Io);
        } else {
            (head_len, Some(head_len..head_len))
        };
        let rpc = match expect {
            Some(expect) if status == 200 => {
                let body = match body_in {
                    Some(r) => &self.inbuf[r],
                    None => &self.body[..],
                };
                if sse {
                    check_sse(body, expect)
                } else {
                    check_response(body, expect)
                }
            }
            _ => Ok(()),
        };
        self.inbuf.drain(..consumed);
        Ok(Some(Answer {
            status,
            close,
            session,
            rpc,
        }))
    }
}

/// Checks one JSON-RPC answer (the whole of `body`) against the request:
/// valid JSON-RPC, a response, the same id, a result rather than an error,
/// and for a tool call a result without `isError: true`.
fn check_response(body: &[u8], expect: Expect<'_>) -> Result<(), ErrKind> {
    let env = protocol::parse_message(body).map_err(|_| ErrKind::Io)?;
    if env.kind != MessageKind::Response {
        return Err(ErrKind::Io);
    }
    if env.id != Some(&expect.id[..]) {
        return Err(ErrKind::IdMismatch);
    }
    if env.has_error {
        return Err(ErrKind::JsonRpc);
    }
    if expect.tool_call && env.tool_error {
        return Err(ErrKind::Tool);
    }
    Ok(())
}

/// Checks an SSE answer: its last event that is a JSON-RPC response (the
/// events before it may be notifications or server requests).
fn check_sse(body: &[u8], expect: Expect<'_>) -> Result<(), ErrKind> {
    let mut parser = SseParser::new();
    parser.push(body);
    let mut last = None;
    while let Some(ev) = parser.next_event() {
        if protocol::parse_message(ev.data.as_bytes())
            .is_ok_and(|m| m.kind == MessageKind::Response)
        {
            last = Some(ev.data);
        }
    }
    match last {
        Some(data) => check_response(data.as_bytes(), expect),
        None => Err(ErrKind::Io),
    }
}
