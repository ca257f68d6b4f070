//! The demo's short load run through the proxy: a few client threads, one MCP session
//! each, send `tools/call` on a fixed schedule (open loop), and latency is measured from
//! each call's scheduled time, so a call that waits behind a slow one counts its wait.
//!
//! It drives the demo's blocking [`HttpClient`] so that the `mcplb` binary does not link
//! the load generator; `mcplb-load run` (io_uring, no allocation per request) is the tool
//! for real measurements. Every answer is checked as `mcplb-load` checks it: HTTP status,
//! JSON-RPC envelope and id with the proxy's own scanner, error object, `isError`.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use protocol::MessageKind;

use super::{initialize, HttpClient, Response};

/// Highest latency recorded (10 s, in µs); larger values saturate.
const MAX_LATENCY_US: u64 = 10_000_000;
/// Deadline for a connect and for each read and write.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How far past the end of its schedule a session still sends; calls it has not sent
/// by then count as transport failures.
const LATE_LIMIT: Duration = Duration::from_secs(2);

/// What the load run does.
#[derive(Debug, Clone, Copy)]
pub struct DemoLoad {
    /// `tools/call` per second, over all sessions.
    pub rate: f64,
    /// Sessions, each on its own connection and thread.
    pub sessions: usize,
    /// Time before the measured window whose calls are not counted.
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
}

/// How the calls of the measured window ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcomes {
    /// A result, without `isError: true`.
    pub ok: u64,
    /// A JSON-RPC error object.
    pub jsonrpc: u64,
    /// A result with `isError: true`: the tool ran and failed.
    pub tool: u64,
    /// An HTTP status other than 200.
    pub http: u64,
    /// No answer (connect, reset, timeout), or one that is not the call's response.
    pub transport: u64,
}

impl Outcomes {
    /// Every call that did not succeed.
    pub fn errors(&self) -> u64 {
        self.jsonrpc + self.tool + self.http + self.transport
    }

    fn add(&mut self, o: &Outcomes) {
        self.ok += o.ok;
        self.jsonrpc += o.jsonrpc;
        self.tool += o.tool;
        self.http += o.http;
        self.transport += o.transport;
    }
}

/// The result of a demo load run.
#[derive(Debug)]
pub struct DemoReport {
    /// Calls of the measured window, by outcome.
    pub outcomes: Outcomes,
    /// Latency of successful calls from their scheduled time, µs.
    pub latency: Histogram<u64>,
    /// The measured window.
    pub elapsed: Duration,
}

impl std::fmt::Display for DemoReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.outcomes;
        let secs = self.elapsed.as_secs_f64();
        let rate = if secs > 0.0 { o.ok as f64 / secs } else { 0.0 };
        writeln!(
            f,
            "   {} ok, {} errors (jsonrpc {}, tool isError {}, http {}, transport {}) in {secs:.2} s: {rate:.0} calls/s",
            o.ok,
            o.errors(),
            o.jsonrpc,
            o.tool,
            o.http,
            o.transport
        )?;
        let h = &self.latency;
        write!(
            f,
            "   latency µs from the scheduled send: p50 {}, p90 {}, p99 {}, p99.9 {}, max {}",
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        )
    }
}

/// Runs the load against the MCP endpoint `/mcp` at `addr` and waits for it to end.
pub fn run(addr: SocketAddr, load: DemoLoad) -> anyhow::Result<DemoReport> {
    let sessions = load.sessions.max(1);
    if !(load.rate.is_finite() && load.rate > 0.0) {
        anyhow::bail!("the demo's load rate must be a positive number");
    }
    let interval = Duration::from_secs_f64(sessions as f64 / load.rate);
    let start = Arc::new(OnceLock::new());
    let ready = Arc::new(Barrier::new(sessions));
    let mut threads = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let (start, ready) = (start.clone(), ready.clone());
        // Stagger the sessions over one interval.
        let offset = interval.mul_f64(i as f64 / sessions as f64);
        let session = Session {
            addr,
            interval,
            offset,
            load,
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("demo-load-{i}"))
                .spawn(move || session.run(&ready, &start))?,
        );
    }
    let mut report = DemoReport {
        outcomes: Outcomes::default(),
        latency: histogram()?,
        elapsed: load.duration,
    };
    for t in threads {
        let (outcomes, latency) = t
            .join()
            .map_err(|_| anyhow!("a demo load thread panicked"))??;
        report.outcomes.add(&outcomes);
        report
            .latency
            .add(&latency)
            .map_err(|e| anyhow!("histogram merge: {e}"))?;
    }
    Ok(report)
}

fn histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).map_err(|e| anyhow!("histogram: {e}"))
}

/// One session's schedule.
struct Session {
    addr: SocketAddr,
    interval: Duration,
    offset: Duration,
    load: DemoLoad,
}

impl Session {
    fn run(
        self,
        ready: &Barrier,
        start: &OnceLock<Instant>,
    ) -> anyhow::Result<(Outcomes, Histogram<u64>)> {
        let mut latency = histogram()?;
        let mut outcomes = Outcomes::default();
        // Set up before the common start, so connects and initializes are not measured.
        let mut conn = connect(self.addr).ok();
        ready.wait();
        let start = *start.get_or_init(Instant::now);
        let measure_from = start + self.load.warmup;
        let end = measure_from + self.load.duration;
        let mut scheduled = start + self.offset;
        let mut id = 1000u64;
        while scheduled < end {
            let now = Instant::now();
            if now > end + LATE_LIMIT {
                // Far behind (a stuck proxy): what was never sent failed.
                while scheduled < end {
                    outcomes.transport += u64::from(scheduled >= measure_from);
                    scheduled += self.interval;
                }
                break;
            }
            if let Some(wait) = scheduled.checked_duration_since(now) {
                std::thread::sleep(wait);
            }
            id += 1;
            let outcome = match conn.take().or_else(|| connect(self.addr).ok()) {
                None => Err(Failure::Transport),
                Some((mut client, sid)) => {
                    let outcome = call(&mut client, &sid, id);
                    // After a failed exchange or an HTTP error (a lost session is 404),
                    // the next call starts over on a new connection and session.
                    if !matches!(outcome, Err(Failure::Transport | Failure::Http)) {
                        conn = Some((client, sid));
                    }
                    outcome
                }
            };
            if scheduled >= measure_from {
                match outcome {
                    Ok(()) => {
                        outcomes.ok += 1;
                        let us = scheduled.elapsed().as_micros();
                        latency.saturating_record(u64::try_from(us).unwrap_or(u64::MAX).max(1));
                    }
                    Err(Failure::JsonRpc) => outcomes.jsonrpc += 1,
                    Err(Failure::Tool) => outcomes.tool += 1,
                    Err(Failure::Http) => outcomes.http += 1,
                    Err(Failure::Transport) => outcomes.transport += 1,
                }
            }
            scheduled += self.interval;
        }
        Ok((outcomes, latency))
    }
}

/// Why a call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    JsonRpc,
    Tool,
    Http,
    Transport,
}

/// A new connection with an initialized session.
fn connect(addr: SocketAddr) -> anyhow::Result<(HttpClient, String)> {
    let mut client = HttpClient::connect_timeout(addr, IO_TIMEOUT)?;
    let (sid, _) = initialize(&mut client)?;
    Ok((client, sid))
}

/// One `tools/call` of `echo`, checked.
fn call(client: &mut HttpClient, sid: &str, id: u64) -> Result<(), Failure> {
    let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "hello"}}});
    let r = client
        .mcp("/mcp", Some(sid), &body)
        .map_err(|_| Failure::Transport)?;
    verdict(&r, id)
}

/// Checks an answer: status 200, a JSON-RPC response with the call's id, a result, no
/// `isError: true`.
fn verdict(r: &Response, id: u64) -> Result<(), Failure> {
    if r.status != 200 {
        return Err(Failure::Http);
    }
    let payload = match r.events.last() {
        Some((_, data)) => data.as_bytes(),
        None => &r.body[..],
    };
    let env = protocol::parse_message(payload).map_err(|_| Failure::Transport)?;
    if env.kind != MessageKind::Response || env.id != Some(id.to_string().as_bytes()) {
        return Err(Failure::Transport);
    }
    if env.has_error {
        return Err(Failure::JsonRpc);
    }
    if env.tool_error {
        return Err(Failure::Tool);
    }
    Ok(())
}
