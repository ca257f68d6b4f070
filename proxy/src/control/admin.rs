//! The admin port: statistics as JSON (`/stats`), Prometheus text (`/metrics`), backends
//! (`/backends`), the effective configuration with secrets redacted (`/config`), liveness and
//! readiness (`/healthz`, `/readyz`) and a self-contained live page
//! (`/`). It runs on its own thread with its own event loop, never on a worker's listener:
//! admin traffic cannot slow client traffic. Connections are bounded in number and in time
//! (see [`start`]). Bound to a non-loopback address it requires the configured token
//! (`Authorization: Bearer TOKEN`), checked on every request.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};

use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::control::stats::{self, Dim, Triple, COUNTER_NAMES, GAUGE_NAMES, METHODS};

/// What the admin thread reads.
pub struct AdminState {
    /// The running configuration (read anew for every admin request) and its reloading.
    pub reloader: Arc<crate::control::reload::Reloader>,
    /// Name of the event driver in use.
    pub driver: &'static str,
    /// Which worker threads run (`/readyz` turns 503 when one died).
    pub workers: Arc<crate::runtime::WorkerStatus>,
}

/// One admin request's view: the configuration current when it arrived, with its statistics,
/// limits and backend health (`Deref` to the workers' [`Shared`](crate::runtime::shared::Shared)).
pub(crate) struct View<'a> {
    shared: Arc<crate::runtime::shared::Shared>,
    driver: &'static str,
    reloader: &'a crate::control::reload::Reloader,
    workers: &'a crate::runtime::WorkerStatus,
}

impl std::ops::Deref for View<'_> {
    type Target = crate::runtime::shared::Shared;
    fn deref(&self) -> &Self::Target {
        &self.shared
    }
}

/// Admin connections open at once. At the cap, the connection that has waited longest for its
/// request head is closed (503) to make room, so a flood of idle connections never keeps out a
/// client that sends its request at once; when every connection is past its head (slow
/// readers of big answers), the newcomer is answered 503. Past twice the cap (503s still being
/// written), no connection is accepted until one closes: new clients wait in the backlog.
const MAX_CONNECTIONS: usize = 128;
/// A request head must arrive whole within this, however slowly its bytes come (408).
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// The answer must be taken by the client within this; a client that reads no further is cut
/// off.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// A refused or evicted client gets this long to take its 503.
const REFUSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest request head read (431 past it).
const MAX_HEAD: usize = 16 * 1024;
/// Largest answer `mcplb stats` and `mcplb probe` read from an admin port.
const MAX_ADMIN_ANSWER: usize = 16 * 1024 * 1024;

/// Binds the admin listener and serves it on a new thread; returns the bound address.
///
/// The thread runs its own event loop (monoio's epoll driver: admin traffic is rare, and it
/// works wherever io_uring is off): every connection is a task, not a thread. Connections are
/// bounded in number ([`MAX_CONNECTIONS`]) and in time ([`HEAD_TIMEOUT`], [`WRITE_TIMEOUT`]),
/// so idle or slow clients cost a task each, never a thread, and cannot keep out a client
/// that sends its request promptly. The token is checked on the head, before anything else.
pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
    serve_on(TcpListener::bind(addr)?, state)
}

/// Serves an admin listener bound beforehand (without `SO_REUSEPORT`: the admin port is never
/// shared) on a new thread; returns its address.
pub fn serve_on(listener: TcpListener, state: Arc<AdminState>) -> anyhow::Result<SocketAddr> {
    let local = listener.local_addr()?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("mcplb-admin".into())
        .spawn(move || {
            match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(mut rt) => rt.block_on(accept_loop(listener, state)),
                Err(e) => tracing::error!(error = %e, "admin port: cannot start its event loop"),
            }
        })?;
    Ok(local)
}

/// Counts a connection as open while it lives.
struct Open(Rc<Cell<usize>>);

impl Open {
    fn new(count: &Rc<Cell<usize>>) -> Open {
        count.set(count.get() + 1);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The connections still waiting for their request head, oldest first.
#[derive(Default)]
struct Waiting(RefCell<VecDeque<Rc<Wait>>>);

/// One connection's wait for its head: set (and woken) when it is closed to make room.
#[derive(Default)]
struct Wait {
    evicted: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

/// A connection's place in [`Waiting`], left when dropped (head read, or the task ends).
struct InLine {
    line: Rc<Waiting>,
    wait: Rc<Wait>,
}

impl Waiting {
    fn join(line: &Rc<Waiting>) -> InLine {
        let wait = Rc::new(Wait::default());
        line.0.borrow_mut().push_back(wait.clone());
        InLine {
            line: line.clone(),
            wait,
        }
    }

    /// Closes the connection that has waited longest for its head; false when none waits.
    fn evict_oldest(&self) -> bool {
        let Some(w) = self.0.borrow_mut().pop_front() else {
            return false;
        };
        w.evicted.set(true);
        if let Some(waker) = w.waker.take() {
            waker.wake();
        }
        true
    }
}

impl Drop for InLine {
    fn drop(&mut self) {
        self.line
            .0
            .borrow_mut()
            .retain(|w| !Rc::ptr_eq(w, &self.wait));
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AdminState>) {
    let listener = match monoio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin port: cannot watch its listener");
            return;
        }
    };
    let open = Rc::new(Cell::new(0usize));
    let waiting = Rc::new(Waiting::default());
    let mut refused: u64 = 0;
    loop {
        // Past the hard cap no connection is accepted until one closes: clients wait in the
        // kernel's backlog (as with nginx's worker_connections) rather than being reset.
        while open.get() >= 2 * MAX_CONNECTIONS {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
        let conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be given back.
                tracing::warn!(error = %e, "admin port: accept failed");
                monoio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let n = open.get();
        let slot = Open::new(&open);
        if n < MAX_CONNECTIONS {
            monoio::spawn(serve_conn(conn, state.clone(), waiting.clone(), slot));
        } else if waiting.evict_oldest() {
            monoio::spawn(serve_conn(conn, state.clone(), waiting.clone(), slot));
            // Let the evicted connection answer and give its slot back before the next
            // accept: a burst already in the backlog would otherwise be accepted with no
            // task running in between, and pass the hard cap.
            yield_once().await;
        } else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    open = n,
                    refused,
                    "admin port: too many connections; answering 503"
                );
            }
            monoio::spawn(refuse(conn, slot));
        }
    }
}

/// Lets every other ready task of this thread run once.
async fn yield_once() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

const BUSY: &str = "admin port busy: too many connections\n";

async fn refuse(mut conn: monoio::net::TcpStream, _slot: Open) {
    let answer = Answer::text(503, BUSY);
    let _ = monoio::time::timeout(REFUSE_TIMEOUT, conn.write_all(answer.into_bytes())).await;
}

/// What a connection sent before its head was complete.
enum Head {
    /// The head ends at this offset of the buffer.
    Complete(Vec<u8>, usize),
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// The client closed before a whole head.
    Closed,
}

async fn read_head(conn: &mut monoio::net::TcpStream) -> std::io::Result<Head> {
    let mut buf = Vec::with_capacity(1024);
    loop {
        if let Some(n) = crate::http::head_len(&buf) {
            return Ok(Head::Complete(buf, n));
        }
        if buf.len() >= MAX_HEAD {
            return Ok(Head::TooLarge);
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len().min(MAX_HEAD - buf.len()).max(1024));
        }
        // Appended after what arrived so far (a Vec by itself is read into from its start).
        let len = buf.len();
        let (res, slice) = conn.read(buf.slice_mut(len..)).await;
        buf = slice.into_inner();
        if res? == 0 {
            return Ok(Head::Closed);
        }
    }
}

async fn serve_conn(
    mut conn: monoio::net::TcpStream,
    state: Arc<AdminState>,
    waiting: Rc<Waiting>,
    _slot: Open,
) {
    let head = {
        let in_line = Waiting::join(&waiting);
        let mut read = std::pin::pin!(monoio::time::timeout(HEAD_TIMEOUT, read_head(&mut conn)));
        std::future::poll_fn(|cx| {
            if in_line.wait.evicted.get() {
                return Poll::Ready(None);
            }
            in_line.wait.waker.set(Some(cx.waker().clone()));
            std::future::Future::poll(read.as_mut(), cx).map(Some)
        })
        .await
    };
    let (answer, limit) = match head {
        None => (Answer::text(503, BUSY), REFUSE_TIMEOUT),
        Some(Err(_)) => (
            Answer::text(408, "request head not received in time\n"),
            REFUSE_TIMEOUT,
        ),
        Some(Ok(Err(_)) | Ok(Ok(Head::Closed))) => return,
        Some(Ok(Ok(Head::TooLarge))) => (Answer::text(431, "head too large\n"), REFUSE_TIMEOUT),
        Some(Ok(Ok(Head::Complete(buf, head_len)))) => {
            (handle(&buf[..head_len], &state), WRITE_TIMEOUT)
        }
    };
    let _ = monoio::time::timeout(limit, conn.write_all(answer.into_bytes())).await;
}

/// An admin answer: always `connection: close`.
struct Answer {
    status: u16,
    ctype: &'static str,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16, ctype: &'static str, body: impl Into<Vec<u8>>) -> Answer {
        Answer {
            status,
            ctype,
            body: body.into(),
        }
    }

    fn text(status: u16, body: &'static str) -> Answer {
        Answer::new(status, "text/plain", body)
    }

    fn json(status: u16, body: &Value) -> Answer {
        Answer::new(status, "application/json", body.to_string())
    }

    fn into_bytes(self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
            self.status,
            crate::http::reason(self.status),
            self.ctype,
            self.body.len()
        )
        .into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

/// Answers one request head (a pure function of the head and the running state).
fn handle(head: &[u8], state: &AdminState) -> Answer {
    let view = View {
        shared: state.reloader.live.load(),
        driver: state.driver,
        reloader: &state.reloader,
        workers: &state.workers,
    };
    let st = &view;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Answer::text(400, "bad request\n");
    }
    let method = req.method.unwrap_or("");
    let full_path = req.path.unwrap_or("/");
    let path = full_path.split('?').next().unwrap_or("/");
    let query = full_path.split_once('?').map_or("", |(_, q)| q);
    if let Some(token) = &st.config.admin_token {
        let given = req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("authorization"))
            .map(|h| h.value)
            .and_then(|v| v.strip_prefix(b"Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g, token.as_bytes())) {
            return Answer::text(401, "admin token required\n");
        }
    }
    if method == "POST" && path == "/reload" {
        // Reads the config file again: a valid one goes live (answer: what changed); an
        // invalid one is refused with every problem, and the running configuration stays.
        return match st.reloader.reload() {
            Ok(changes) => Answer::json(200, &json!({"reloaded": true, "changes": changes})),
            Err(errors) => {
                tracing::warn!(
                    problems = errors.len(),
                    "reload refused; the running configuration stays"
                );
                for e in &errors {
                    tracing::warn!(problem = %e, "reload refused");
                }
                Answer::json(400, &json!({"reloaded": false, "errors": errors}))
            }
        };
    }
    if method == "POST" {
        // POST /backends/{name}/drain (or /undrain): no new sessions or stateless requests go
        // to a draining backend; its existing sessions keep being served.
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let ["backends", name, action @ ("drain" | "undrain")] = parts.as_slice() {
            let mut found = 0;
            for (gi, g) in st.config.servers.iter().enumerate() {
                for (bi, b) in g.backends.iter().enumerate() {
                    if b.name == *name {
                        if let Some(rt) = st.groups.get(gi) {
                            // ?timeout=30s: after it, the backend's remaining sessions are
                            // treated as on an unavailable backend (404 or failover).
                            let deadline = query
                                .split('&')
                                .find_map(|kv| kv.strip_prefix("timeout="))
                                .and_then(|t| crate::config::parse_duration(t).ok())
                                .map(|d| {
                                    crate::balance::now_ns()
                                        .saturating_add(d.as_nanos() as u64)
                                        .max(1)
                                });
                            rt.set_draining(bi, *action == "drain", deadline);
                            found += 1;
                        }
                    }
                }
            }
            if found == 0 {
                return Answer::text(404, "no such backend\n");
            }
            tracing::info!(backend = name, action, "admin");
            return Answer::json(200, &backends_json(st));
        }
        return Answer::text(404, "not found\n");
    }
    if method != "GET" {
        return Answer::text(405, "method not allowed\n");
    }
    let now = Instant::now();
    match path {
        "/healthz" => Answer::text(200, "ok\n"),
        "/readyz" => {
            let (ready, body) = readiness(st);
            Answer::json(if ready { 200 } else { 503 }, &body)
        }
        "/stats" => Answer::json(200, &stats_json(st, now)),
        "/metrics" => Answer::new(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics_text(st, now),
        ),
        "/backends" => Answer::json(200, &backends_json(st)),
        "/config" => Answer::json(200, &crate::config::view::redacted_json(&st.config)),
        "/policy" => match super::policy_admin::policy_json(&st.config, query) {
            Ok(v) => Answer::json(200, &v),
            Err((status, text)) => Answer::text(status, text),
        },
        "/" => Answer::new(200, "text/html; charset=utf-8", PAGE),
        _ => Answer::text(404, "not found\n"),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A statistics dimension's kind and name; `None` for a group or backend the running
/// configuration no longer lists (removed by a reload).
fn dim_label(cfg: &Config, d: &Dim) -> Option<(&'static str, String)> {
    let group = |k: u32| cfg.servers.iter().find(|g| stats::group_key(&g.name) == k);
    Some(match d {
        Dim::Backend(g, tag) => (
            "backend",
            group(*g)?
                .backends
                .iter()
                .find(|b| b.tag == *tag)?
                .name
                .clone(),
        ),
        Dim::Group(g) => ("server", group(*g)?.name.clone()),
        Dim::Method(m) => ("method", METHODS.get(*m).unwrap_or(&"other").to_string()),
        Dim::Tool(t) => ("tool", t.clone()),
    })
}

fn triple_json(t: &Triple) -> Value {
    json!({
        "total": stats::summary(&t.total),
        "upstream": stats::summary(&t.upstream),
        "own": stats::summary(&t.own),
        "first_event": stats::summary(&t.first_event),
    })
}

fn window_json(st: &View<'_>, rolling: bool, now: Instant) -> Value {
    let view = st.hub.view(rolling, now);
    let mut out = Map::new();
    for kind in ["backend", "server", "method", "tool"] {
        out.insert(format!("{kind}s"), Value::Object(Map::new()));
    }
    for (d, t) in &view.hists {
        let Some((kind, name)) = dim_label(&st.config, d) else {
            continue;
        };
        if let Some(Value::Object(m)) = out.get_mut(&format!("{kind}s")) {
            m.insert(name, triple_json(t));
        }
    }
    Value::Object(out)
}

/// The `/stats` document.
pub(crate) fn stats_json(st: &View<'_>, now: Instant) -> Value {
    let (counters, gauges) = st.hub.counters();
    let mut c: Map<String, Value> = COUNTER_NAMES
        .iter()
        .zip(counters)
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    c.insert(
        "health_changes".into(),
        json!(st
            .hub
            .health_changes
            .load(std::sync::atomic::Ordering::Relaxed)),
    );
    let g: Map<String, Value> = GAUGE_NAMES
        .iter()
        .zip(gauges)
        .map(|(n, v)| (n.to_string(), json!(v)))
        .collect();
    json!({
        "uptime_seconds": now.saturating_duration_since(st.hub.started).as_secs(),
        "driver": st.driver,
        // Bumped by every applied reload (SIGHUP, POST /reload, a watched file's change).
        "config_generation": st.reloader.live.generation(),
        "workers": st.config.proxy.workers,
        // A debug build honours the MCPLB_TEST_* failure and timing hooks
        // (`runtime::test_hooks`); the tests that need one skip on a build without them.
        "build": {"test_hooks": cfg!(debug_assertions)},
        "unit": "microseconds",
        "counters": c,
        "gauges": g,
        "loop_gaps": loop_gaps_json(&st.hub.gaps()),
        "limits": limits_json(st),
        "cluster": cluster_json(st),
        "since_start": window_json(st, false, now),
        "last_60s": window_json(st, true, now),
    })
}

/// The workers' loop gaps since start (`runtime::loop_gap`): counts per bucket by upper bound
/// in µs (`null`: longer than the last bound), their sum and the longest.
fn loop_gaps_json(g: &stats::GapCounts) -> Value {
    let buckets: Vec<Value> = g
        .buckets
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"le_us": stats::GAP_BOUNDS_US.get(i), "count": n}))
        .collect();
    json!({
        "count": g.count(),
        "sum_us": g.sum_us,
        "max_us": g.max_us,
        "buckets": buckets,
    })
}

fn limits_json(st: &View<'_>) -> Value {
    let mut rows: Vec<Value> = Vec::new();
    if let Some(cl) = &st.cluster {
        for (i, r, admitted, rejected) in cl.rule_counts() {
            rows.push(json!({
                "rule": i,
                "scope": "cluster",
                "server": r.server,
                "method": r.method,
                "tool": r.tool.as_ref().map(|g| g.as_str().to_string()),
                "rate": r.rate,
                "burst": r.burst,
                "admitted": admitted,
                "rejected": rejected,
            }));
        }
    }
    let Some(l) = &st.limits else {
        return Value::Array(rows);
    };
    let mut local: Vec<Value> = (0..l.len())
        .map(|i| {
            let r = l.rule(i);
            json!({
                "rule": st.limit_index.get(i).copied().unwrap_or(i),
                "server": r.and_then(|r| r.server.clone()),
                "method": r.and_then(|r| r.method.clone()),
                "tool": r.and_then(|r| r.tool.as_ref().map(|g| g.as_str().to_string())),
                "rate": r.map(|r| r.rate),
                "burst": r.map(|r| r.burst),
                "admitted": l.admissions(i),
                "rejected": l.rejections(i),
                "tracked_keys": l.tracked_keys(i),
                "evictions": l.evictions(i),
                "overflows": l.overflows(i),
            })
        })
        .collect();
    local.append(&mut rows);
    local.sort_by_key(|v| v["rule"].as_u64());
    Value::Array(local)
}

/// The cluster limits' store, on `/stats` (`null` without `[cluster]` rules).
fn cluster_json(st: &View<'_>) -> Value {
    let Some(cl) = &st.cluster else {
        return Value::Null;
    };
    let c = &cl.counters;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
    json!({
        "available": cl.available(),
        "replicas": cl.replicas(),
        "leases": load(&c.leases),
        "tokens_granted": load(&c.tokens_granted),
        "errors": load(&c.errors),
        "state_changes": load(&c.state_changes),
        "unavailable_decisions": load(&c.unavailable_decisions),
        "last_error": cl.last_error().map(|e| e.to_string()),
    })
}

fn backends_json(st: &View<'_>) -> Value {
    let now = Instant::now();
    let view = st.hub.view(false, now);
    let mut list = Vec::new();
    for (gi, g) in st.config.servers.iter().enumerate() {
        let gk = stats::group_key(&g.name);
        for (bi, b) in g.backends.iter().enumerate() {
            let requests = view
                .hists
                .iter()
                .find(|(d, _)| *d == Dim::Backend(gk, b.tag))
                .map_or(0, |(_, t)| t.total.len());
            let now_ns = crate::balance::now_ns();
            let rt = st.groups.get(gi);
            let state = state_name(rt.and_then(|r| r.health.state(bi, now_ns)));
            let ejections = rt.map_or(0, |r| {
                r.health.backend(bi).map_or(0, |h| h.outlier().ejections())
            });
            list.push(json!({
                "server": g.name, "name": b.name, "url": b.url, "weight": b.weight,
                "state": state, "eligible": rt.is_some_and(|r| r.health.is_eligible(bi, now_ns)),
                "ejections": ejections, "requests": requests,
                "in_flight": st.hub.backend_gauges(gk, b.tag)[0],
                "sessions": st.hub.backend_gauges(gk, b.tag)[1],
            }));
        }
    }
    json!({ "backends": list })
}

/// The states `/backends` and `mcplb_backend_state` name.
const STATE_NAMES: [&str; 6] = [
    "healthy",
    "degraded",
    "draining",
    "unhealthy",
    "ejected",
    "unknown",
];

/// A backend's state as `/backends` and `/metrics` name it: "unhealthy" for the active
/// checks' verdict, "ejected" for a passive (outlier) ejection.
fn state_name(state: Option<lb::HealthState>) -> &'static str {
    match state {
        Some(lb::HealthState::Healthy) => "healthy",
        Some(lb::HealthState::Degraded) => "degraded",
        Some(lb::HealthState::Draining) => "draining",
        Some(lb::HealthState::Ejected { until_ns: None }) => "unhealthy",
        Some(lb::HealthState::Ejected { until_ns: Some(_) }) => "ejected",
        _ => "unknown",
    }
}

fn readiness(st: &View<'_>) -> (bool, Value) {
    let now_ns = crate::balance::now_ns();
    let healthy: Vec<usize> = st
        .config
        .servers
        .iter()
        .enumerate()
        .map(|(gi, g)| {
            (0..g.backends.len())
                .filter(|bi| {
                    st.groups
                        .get(gi)
                        .is_some_and(|r| r.health.is_eligible(*bi, now_ns))
                })
                .count()
        })
        .collect();
    let groups: Vec<Value> = st
        .config
        .servers
        .iter()
        .zip(&healthy)
        .map(|(g, n)| json!({"server": g.name, "healthy_backends": n}))
        .collect();
    let dead = st.workers.dead();
    let ready = healthy.iter().all(|n| *n > 0) && dead.is_empty();
    (
        ready,
        json!({"ready": ready, "servers": groups, "dead_workers": dead}),
    )
}

/// Histogram bucket bounds (seconds) for Prometheus, derived from the distributions' buckets.
const BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 10_000_000, 60_000_000,
];

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The `/metrics` Prometheus text exposition.
#[expect(
    clippy::too_many_lines,
    reason = "the `/metrics` exposition on the admin port: a table of every metric family in the order it is written, not the request path"
)]
pub(crate) fn metrics_text(st: &View<'_>, now: Instant) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let (counters, gauges) = st.hub.counters();
    for (n, v) in COUNTER_NAMES.iter().zip(counters) {
        let _ = writeln!(o, "# HELP mcplb_{n}_total mcplb counter {n}.");
        let _ = writeln!(o, "# TYPE mcplb_{n}_total counter");
        let _ = writeln!(o, "mcplb_{n}_total {v}");
    }
    let _ = writeln!(
        o,
        "# HELP mcplb_health_changes_total Backend health changes (checks and ejections)."
    );
    let _ = writeln!(o, "# TYPE mcplb_health_changes_total counter");
    let _ = writeln!(
        o,
        "mcplb_health_changes_total {}",
        st.hub
            .health_changes
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    for (n, help, v) in crate::telemetry::counters() {
        let _ = writeln!(o, "# HELP mcplb_{n}_total {help}");
        let _ = writeln!(o, "# TYPE mcplb_{n}_total counter");
        let _ = writeln!(o, "mcplb_{n}_total {v}");
    }
    for (n, v) in GAUGE_NAMES.iter().zip(gauges) {
        let _ = writeln!(o, "# HELP mcplb_{n} mcplb gauge {n}.");
        let _ = writeln!(o, "# TYPE mcplb_{n} gauge");
        let _ = writeln!(o, "mcplb_{n} {v}");
    }
    // Per rule (its place in `[[limits]]`): local rules from their table, cluster rules
    // from their leases (they have no evictions).
    let mut per_rule: Vec<(usize, [Option<u64>; 3])> = Vec::new();
    if let Some(l) = &st.limits {
        for i in 0..l.len() {
            let rule = st.limit_index.get(i).copied().unwrap_or(i);
            per_rule.push((
                rule,
                [
                    Some(l.rejections(i)),
                    Some(l.admissions(i)),
                    Some(l.evictions(i)),
                ],
            ));
        }
    }
    if let Some(cl) = &st.cluster {
        for (rule, _, admitted, rejected) in cl.rule_counts() {
            per_rule.push((rule, [Some(rejected), Some(admitted), None]));
        }
    }
    per_rule.sort_by_key(|(rule, _)| *rule);
    if !per_rule.is_empty() {
        let families = [
            ("rejected", "Requests rejected per rate-limit rule."),
            ("admitted", "Requests admitted per rate-limit rule."),
            (
                "evictions",
                "Idle caller keys evicted per rate-limit rule (a flood of new keys).",
            ),
        ];
        for (f, (name, help)) in families.iter().enumerate() {
            let _ = writeln!(o, "# HELP mcplb_limit_{name}_total {help}");
            let _ = writeln!(o, "# TYPE mcplb_limit_{name}_total counter");
            for (rule, values) in &per_rule {
                if let Some(v) = values.get(f).copied().flatten() {
                    let _ = writeln!(o, "mcplb_limit_{name}_total{{rule=\"{rule}\"}} {v}");
                }
            }
        }
    }
    if let Some(cl) = &st.cluster {
        let c = &cl.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        for (name, kind, help, v) in [
            (
                "cluster_available",
                "gauge",
                "1 while the cluster limits' Redis answers, 0 while on_unavailable applies.",
                u64::from(cl.available()),
            ),
            (
                "cluster_replicas",
                "gauge",
                "Replicas of mcplb last seen in the cluster limits' Redis.",
                u64::from(cl.replicas()),
            ),
            (
                "cluster_leases_total",
                "counter",
                "Token leases asked of Redis.",
                load(&c.leases),
            ),
            (
                "cluster_tokens_granted_total",
                "counter",
                "Tokens Redis granted to this replica.",
                load(&c.tokens_granted),
            ),
            (
                "cluster_errors_total",
                "counter",
                "Failed Redis calls (connect, I/O, error replies, unexpected answers).",
                load(&c.errors),
            ),
            (
                "cluster_state_changes_total",
                "counter",
                "Changes between Redis available and unavailable.",
                load(&c.state_changes),
            ),
            (
                "cluster_unavailable_decisions_total",
                "counter",
                "Rule checks decided by on_unavailable while Redis was unavailable.",
                load(&c.unavailable_decisions),
            ),
        ] {
            let _ = writeln!(o, "# HELP mcplb_{name} {help}");
            let _ = writeln!(o, "# TYPE mcplb_{name} {kind}");
            let _ = writeln!(o, "mcplb_{name} {v}");
        }
    }
    loop_gaps_text(&st.hub.gaps(), &mut o);
    let view = st.hub.view(false, now);
    for (part, help) in [
        ("total", "first request byte in to last response byte out"),
        ("upstream", "request sent upstream to response complete"),
        ("own", "time spent in mcplb itself (total minus upstream)"),
        (
            "first_event",
            "SSE answers: request sent upstream to first event forwarded",
        ),
    ] {
        let name = format!("mcplb_request_{part}_seconds");
        let _ = writeln!(o, "# HELP {name} Request latency: {help}.");
        let _ = writeln!(o, "# TYPE {name} histogram");
        for (d, t) in &view.hists {
            let h = match part {
                "total" => &t.total,
                "upstream" => &t.upstream,
                "own" => &t.own,
                _ => &t.first_event,
            };
            let Some((kind, label)) = dim_label(&st.config, d) else {
                continue;
            };
            let lbl = format!("dimension=\"{kind}\",name=\"{}\"", escape_label(&label));
            for le in BUCKETS_US {
                let n = h.count_at_or_below(le);
                let _ = writeln!(o, "{name}_bucket{{{lbl},le=\"{}\"}} {n}", le as f64 / 1e6);
            }
            let _ = writeln!(o, "{name}_bucket{{{lbl},le=\"+Inf\"}} {}", h.len());
            let sum: f64 = h.sum() as f64 / 1e6;
            let _ = writeln!(o, "{name}_sum{{{lbl}}} {sum}");
            let _ = writeln!(o, "{name}_count{{{lbl}}} {}", h.len());
        }
    }
    backend_states_text(st, &mut o);
    o
}

/// `mcplb_loop_gap_seconds`: the workers' loop gaps (`runtime::loop_gap`) as a histogram, and
/// the longest since start.
fn loop_gaps_text(g: &stats::GapCounts, o: &mut String) {
    let name = "mcplb_loop_gap_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Time a worker went without handling any of its requests while it had \
         some in flight (a stall of the worker, its thread or every backend it waited on)."
    );
    let _ = writeln!(o, "# TYPE {name} histogram");
    let mut below = 0;
    for (le, n) in stats::GAP_BOUNDS_US.iter().zip(g.buckets) {
        below += n;
        let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {below}", *le as f64 / 1e6);
    }
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {}", g.count());
    let _ = writeln!(o, "{name}_sum {}", g.sum_us as f64 / 1e6);
    let _ = writeln!(o, "{name}_count {}", g.count());
    let _ = writeln!(
        o,
        "# HELP mcplb_loop_gap_max_seconds The longest loop gap of any worker since start."
    );
    let _ = writeln!(o, "# TYPE mcplb_loop_gap_max_seconds gauge");
    let _ = writeln!(o, "mcplb_loop_gap_max_seconds {}", g.max_us as f64 / 1e6);
}

/// `mcplb_backend_state{server,backend,state}`: 1 for each backend's current state, 0 for the
/// others (the usual form of an enumeration in Prometheus), so a dashboard can count the
/// healthy backends of a group or show when one was ejected.
fn backend_states_text(st: &View<'_>, o: &mut String) {
    let _ = writeln!(
        o,
        "# HELP mcplb_backend_state Backend state: 1 for the current one (healthy, degraded, \
         draining, unhealthy: failing active checks, ejected: passive outlier ejection)."
    );
    let _ = writeln!(o, "# TYPE mcplb_backend_state gauge");
    let now_ns = crate::balance::now_ns();
    for (gi, g) in st.config.servers.iter().enumerate() {
        let rt = st.groups.get(gi);
        for (bi, b) in g.backends.iter().enumerate() {
            let current = state_name(rt.and_then(|r| r.health.state(bi, now_ns)));
            let (server, backend) = (escape_label(&g.name), escape_label(&b.name));
            for state in STATE_NAMES {
                let _ = writeln!(
                    o,
                    "mcplb_backend_state{{server=\"{server}\",backend=\"{backend}\",state=\"{state}\"}} {}",
                    u8::from(state == current)
                );
            }
        }
    }
}

/// One `GET` on the admin port, as `mcplb stats` and `mcplb probe` make it: the status code
/// and the body. `timeout` bounds the connect and each read and write.
fn admin_get(
    addr: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    use anyhow::Context as _;
    let target = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("`{addr}` is not an address (HOST:PORT)"))?
        .next()
        .with_context(|| format!("`{addr}` resolves to no address"))?;
    let mut c = crate::http::client::HttpClient::connect_timeout(target, timeout)
        .with_context(|| format!("cannot connect to the admin port at {target}"))?;
    c.set_host(addr);
    c.set_close(true);
    c.set_max_body(MAX_ADMIN_ANSWER);
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
    let r = c
        .request("GET", path, &headers, b"")
        .with_context(|| format!("no whole answer from the admin port at {target}"))?;
    Ok((r.status, String::from_utf8_lossy(&r.body).into_owned()))
}

/// `mcplb stats --admin ADDR`: fetch `/stats` and print the percentile table.
pub fn print_stats(addr: &str, token: Option<&str>) -> anyhow::Result<()> {
    let (status, body) = admin_get(addr, "/stats", token, Duration::from_secs(10))?;
    if status != 200 {
        anyhow::bail!("admin port answered {status}: {}", body.trim());
    }
    let v: Value = serde_json::from_str(&body)?;
    print!("{}", render_table(&v));
    Ok(())
}

/// Where `mcplb probe --config FILE` asks: the file's `admin.listen` (an address of every
/// interface, `0.0.0.0` or `::`, is asked on loopback) and `admin.token`. Only `[admin]` is
/// read and checked, so a probe resolves no backend name: a probe that depended on DNS could
/// fail while mcplb serves well.
pub fn probe_target(config: &std::path::Path) -> anyhow::Result<(String, Option<String>)> {
    let text = std::fs::read_to_string(config)
        .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", config.display()))?;
    let (listen, token) = crate::config::admin_endpoint(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let listen = listen.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: no admin.listen: the probe asks the admin port",
            config.display()
        )
    })?;
    Ok((asked_on(listen).to_string(), token))
}

/// The address to connect to for a listener bound to `a`: loopback for an address of every
/// interface.
fn asked_on(a: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from((Ipv4Addr::LOCALHOST, a.port())),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::from((Ipv6Addr::LOCALHOST, a.port())),
        _ => a,
    }
}

/// `mcplb probe PATH`: asks the admin port for `path` (`/healthz`, `/readyz`) for a container
/// health check; the body on 200, else an error that says what answered.
pub fn probe(
    addr: &str,
    path: &str,
    token: Option<&str>,
    timeout: Duration,
) -> anyhow::Result<String> {
    let (status, body) = admin_get(addr, path, token, timeout)?;
    if status != 200 {
        anyhow::bail!("{addr}{path} answered {status}: {}", body.trim());
    }
    Ok(body)
}

/// Renders a `/stats` document as a terminal table.
pub fn render_table(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "mcplb: up {} s, {} driver, {} worker(s); latencies in µs (since start)",
        v["uptime_seconds"],
        v["driver"].as_str().unwrap_or("?"),
        v["workers"]
    );
    let _ = writeln!(
        o,
        "{:<8} {:<28} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
        "kind", "name", "count", "p50", "p90", "p99", "p99.9", "max", "own p50", "own p99"
    );
    for kind in ["servers", "backends", "methods", "tools"] {
        if let Some(m) = v["since_start"][kind].as_object() {
            for (name, t) in m {
                let tt = &t["total"];
                let n = |v: &Value| v.as_u64().unwrap_or(0);
                let _ = writeln!(
                    o,
                    "{:<8} {:<28} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}",
                    kind.trim_end_matches('s'),
                    name,
                    n(&tt["count"]),
                    n(&tt["p50"]),
                    n(&tt["p90"]),
                    n(&tt["p99"]),
                    n(&tt["p999"]),
                    n(&tt["max"]),
                    n(&t["own"]["p50"]),
                    n(&t["own"]["p99"])
                );
            }
        }
    }
    if let Some(c) = v["counters"].as_object() {
        let parts: Vec<String> = c.iter().map(|(k, x)| format!("{k}={x}")).collect();
        let _ = writeln!(o, "counters: {}", parts.join(" "));
    }
    if let Some(g) = v["gauges"].as_object() {
        let parts: Vec<String> = g.iter().map(|(k, x)| format!("{k}={x}")).collect();
        let _ = writeln!(o, "gauges: {}", parts.join(" "));
    }
    o
}

/// The live page: no external scripts or fonts; polls `/stats` every 2 s.
const PAGE: &str = r##"<!doctype html>
<html><head><meta charset="utf-8"><title>mcplb</title>
<style>
body{font:14px system-ui,sans-serif;margin:20px;color:#222;background:#fafafa}
h1{font-size:20px}h2{font-size:16px;margin-top:24px}
table{border-collapse:collapse;background:#fff}td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.bar{fill:#3b7dd8}.own{fill:#e07b39}
#meta{color:#555}
</style></head><body>
<h1>mcplb</h1><div id="meta">loading…</div>
<h2>Latency percentiles (µs, since start)</h2><table id="tbl"></table>
<h2>p50 / p99 per backend and tool (µs; blue total, orange mcplb's own share)</h2><svg id="chart" width="1100" height="40"></svg>
<h2>Counters</h2><table id="ctr"></table>
<script>
function row(cells,tag){return '<tr>'+cells.map(c=>'<'+tag+'>'+c+'</'+tag+'>').join('')+'</tr>'}
async function tick(){
 try{
  const r=await fetch('/stats');const s=await r.json();
  document.getElementById('meta').textContent='up '+s.uptime_seconds+' s · '+s.driver+' driver · '+s.workers+' worker(s)';
  let h=row(['kind','name','count','p50','p90','p95','p99','p99.9','max','own p50','own p99'],'th');
  const bars=[];
  for(const kind of ['servers','backends','methods','tools']){
   const m=s.since_start[kind]||{};
   for(const [name,t] of Object.entries(m)){
    const x=t.total;h+=row([kind.slice(0,-1),name,x.count,x.p50,x.p90,x.p95,x.p99,x.p999,x.max,t.own.p50,t.own.p99],'td');
    if(kind==='backends'||kind==='tools')bars.push([kind.slice(0,-1)+' '+name,x.p50,x.p99,t.own.p99]);
   }
  }
  document.getElementById('tbl').innerHTML=h;
  const max=Math.max(1,...bars.map(b=>b[2]));const svg=document.getElementById('chart');
  svg.setAttribute('height',String(20+bars.length*26));
  svg.innerHTML=bars.map((b,i)=>{const y=10+i*26;const w50=500*b[1]/max,w99=500*b[2]/max,wo=500*b[3]/max;
   return '<text x="0" y="'+(y+14)+'" font-size="12">'+b[0]+'</text>'+
   '<rect class="bar" opacity="0.5" x="200" y="'+y+'" width="'+w99+'" height="18"/>'+
   '<rect class="bar" x="200" y="'+y+'" width="'+w50+'" height="18"/>'+
   '<rect class="own" x="200" y="'+(y+14)+'" width="'+wo+'" height="4"/>'+
   '<text x="'+(205+w99)+'" y="'+(y+14)+'" font-size="12">p50 '+b[1]+' · p99 '+b[2]+'</text>'}).join('');
  let c=row(['counter','value'],'th');
  for(const [k,v] of Object.entries(s.counters))c+=row([k,v],'td');
  for(const [k,v] of Object.entries(s.gauges))c+=row([k,v],'td');
  document.getElementById('ctr').innerHTML=c;
 }catch(e){document.getElementById('meta').textContent='admin port unreachable: '+e}
}
tick();setInterval(tick,2000);
</script></body></html>
"##;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod probe_tests {
    use super::asked_on;

    #[test]
    fn every_interface_is_asked_on_loopback() {
        let ask = |a: &str| asked_on(a.parse().unwrap()).to_string();
        assert_eq!(ask("0.0.0.0:9901"), "127.0.0.1:9901");
        assert_eq!(ask("[::]:9901"), "[::1]:9901");
        assert_eq!(ask("10.1.2.3:9901"), "10.1.2.3:9901");
        assert_eq!(ask("127.0.0.1:9"), "127.0.0.1:9");
    }
}
