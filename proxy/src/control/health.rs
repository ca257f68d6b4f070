//! Active health checks that speak MCP: per backend, on an interval with jitter, the checker
//! initializes a session of its own and sends `ping` in it (or `server/discover` for
//! 2026-07-28 servers), and expects a JSON-RPC result with its id before a deadline (an error
//! answer fails the check: the server is up but refuses it). Verdicts pass through
//! healthy/unhealthy thresholds (`lb::ActiveCheck`) into the group's shared health, which every
//! core reads lock-free. Runs on its own threads with blocking I/O, away from the workers.
//!
//! The log tells each change of a backend's state with the reason of the check that caused
//! it (refused, timeout, HTTP status, JSON-RPC error, ...), at warn for the worse and info for
//! the better; failures that change nothing are counted, not printed (each is at debug), and
//! a backend that stays unhealthy is told again only when the reason changes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb::{ActiveCheck, ActiveCheckConfig, ActiveVerdict};
use rand::Rng;

use crate::balance::GroupRuntime;
use crate::config::{Backend, Config, HealthCheck};
use crate::http::client::{ClientError, HttpClient, Response};

/// Stops the checker threads of one configuration when dropped (a reload starts new ones);
/// each thread notices at its next wake-up.
pub struct Checkers {
    stop: Arc<AtomicBool>,
}

impl Drop for Checkers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts one checker thread per backend of every group that configures `[servers.health]`.
/// A backend's checks start from the verdict its shared health already holds (a reload keeps
/// an unhealthy backend unhealthy until it passes its checks again).
pub fn start(
    config: &Config,
    runtimes: Arc<Vec<GroupRuntime>>,
    hub: Arc<crate::control::stats::StatsHub>,
) -> Checkers {
    let stop = Arc::new(AtomicBool::new(false));
    for (group, g) in config.servers.iter().enumerate() {
        let Some(hc) = &g.health else { continue };
        // Backends that expect mcplb's own credential get it on health checks too.
        let auth = match &g.auth.upstream {
            crate::auth::UpstreamCredential::Inject(s) => Some(s.clone()),
            _ => None,
        };
        for (index, b) in g.backends.iter().enumerate() {
            let checker = Checker {
                server: g.name.clone(),
                backend: b.clone(),
                check: hc.clone(),
                auth: auth.clone(),
                runtimes: runtimes.clone(),
                group,
                index,
                hub: hub.clone(),
                stop: stop.clone(),
            };
            let _ = std::thread::Builder::new()
                .name(format!("mcplb-check-{}", b.name))
                .spawn(move || checker.run());
        }
    }
    Checkers { stop }
}

/// One backend's checker thread: what it checks, and where its verdicts go.
struct Checker {
    /// The server group's name (for the log).
    server: String,
    backend: Backend,
    check: HealthCheck,
    /// mcplb's own credential, for backends that expect it.
    auth: Option<crate::auth::Secret>,
    runtimes: Arc<Vec<GroupRuntime>>,
    /// The group's index in `runtimes`, and the backend's in the group.
    group: usize,
    index: usize,
    hub: Arc<crate::control::stats::StatsHub>,
    stop: Arc<AtomicBool>,
}

impl Checker {
    /// Checks until the configuration is replaced.
    fn run(self) {
        let Some(rt) = self.runtimes.get(self.group) else {
            return;
        };
        let verdict = rt
            .health
            .backend(self.index)
            .map_or(ActiveVerdict::Healthy, |h| h.verdict());
        let mut state = ActiveCheck::starting(
            ActiveCheckConfig {
                healthy_threshold: self.check.healthy_threshold,
                unhealthy_threshold: self.check.unhealthy_threshold,
            },
            verdict,
        );
        let mut session: Option<String> = None;
        let mut rng = rand::thread_rng();
        let mut narrator = Narrator::default();
        while !self.stop.load(Ordering::Relaxed) {
            let outcome = check_once(&self.backend, &self.check, &mut session, self.auth.as_ref());
            if let Err(f) = &outcome {
                tracing::debug!(server = self.server, backend = %self.backend.name, reason = f.kind(), "health check failed: {f}");
                session = None;
            }
            let change = match outcome {
                Ok(()) => state.record_success(),
                Err(_) => state.record_failure(),
            };
            if let Some(v) = change {
                self.apply(rt, v);
            }
            self.tell(narrator.after(outcome.as_ref().err(), change, state.verdict()));
            let jitter = self.check.interval.mul_f64(rng.gen_range(0.0..0.1));
            self.sleep(self.check.interval + jitter);
        }
    }

    /// Publishes a new verdict to the group's shared health.
    fn apply(&self, rt: &GroupRuntime, v: ActiveVerdict) {
        rt.health.set_active(self.index, v);
        self.hub.health_changes.fetch_add(1, Ordering::Relaxed);
        if v == ActiveVerdict::Healthy {
            // Passing its active checks again brings a backend back at once, whatever
            // passive ejection it was serving.
            if let Some(h) = rt.health.backend(self.index) {
                h.uneject();
            }
        }
    }

    /// Logs what the narrator says.
    fn tell(&self, say: Say<'_>) {
        let (server, backend) = (self.server.as_str(), self.backend.name.as_str());
        match say {
            Say::Nothing => {}
            Say::Degraded(f) => tracing::warn!(
                server,
                backend,
                reason = f.kind(),
                "backend degraded: health check failed: {f} (unhealthy after {} failures in a row)",
                self.check.unhealthy_threshold
            ),
            Say::Unhealthy(f, n) | Say::StillUnhealthy(f, n) => {
                let what = if matches!(say, Say::Unhealthy(..)) {
                    format!("backend unhealthy after {n} failed health checks: {f}")
                } else {
                    format!("backend still unhealthy, now: {f} ({n} failed health checks since it was last healthy)")
                };
                tracing::warn!(
                    server,
                    backend,
                    reason = f.kind(),
                    failed_checks = n,
                    "{what}"
                );
            }
            Say::Healthy(0) => tracing::info!(server, backend, "backend healthy"),
            Say::Healthy(n) => tracing::info!(
                server,
                backend,
                failed_checks = n,
                "backend healthy again after {n} failed health checks"
            ),
        }
    }

    /// Sleeps `d` in short slices, so that a reload stops this thread promptly.
    fn sleep(&self, d: Duration) {
        let wake = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) {
            let left = wake.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(200)));
        }
    }
}

/// Why one health check failed: what the log says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// The connection was refused: nothing listens at the backend's address.
    Refused,
    /// No connection, handshake or answer within the check's timeout.
    Timeout(Duration),
    /// The connection failed or broke otherwise (reset, unreachable, TLS, closed early).
    Connection(String),
    /// `method` was answered with an HTTP status other than 200 (2xx for a notification).
    Status { method: String, status: u16 },
    /// `method` was answered with a JSON-RPC error object.
    JsonRpc {
        method: String,
        code: i64,
        message: String,
    },
    /// `method` was answered with something other than a JSON-RPC answer with the check's id.
    BadAnswer { method: String, detail: String },
}

impl Failure {
    /// A stable word for the `reason` field of the log.
    fn kind(&self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Timeout(_) => "timeout",
            Failure::Connection(_) => "connection",
            Failure::Status { .. } => "http_status",
            Failure::JsonRpc { .. } => "jsonrpc_error",
            Failure::BadAnswer { .. } => "bad_answer",
        }
    }

    /// A failure of the connection or of the exchange, from the HTTP client's error.
    fn of_io(e: &ClientError, timeout: Duration) -> Failure {
        match e.io_kind() {
            Some(std::io::ErrorKind::ConnectionRefused) => Failure::Refused,
            Some(std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock) => {
                Failure::Timeout(timeout)
            }
            _ => Failure::Connection(e.to_string()),
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused => write!(f, "connection refused (is the backend running?)"),
            Failure::Timeout(d) => write!(f, "no answer within the check's timeout ({d:?})"),
            Failure::Connection(e) => write!(f, "connection failed: {e}"),
            Failure::Status { method, status } => write!(f, "`{method}` answered HTTP {status}"),
            Failure::JsonRpc {
                method,
                code,
                message,
            } => write!(f, "`{method}` answered JSON-RPC error {code}: {message}"),
            Failure::BadAnswer { method, detail } => write!(f, "`{method}` answer: {detail}"),
        }
    }
}

/// What the log says after a check: each change of state with its reason, and a backend that
/// stays unhealthy again only when the reason changes. Failures since the backend was last
/// healthy are counted.
#[derive(Default)]
struct Narrator {
    failed: u64,
    /// The reason last told for a backend that is unhealthy now.
    told: Option<&'static str>,
}

/// One thing to log (see [`Narrator::after`]).
#[derive(Debug, PartialEq, Eq)]
enum Say<'a> {
    Nothing,
    Degraded(&'a Failure),
    /// Unhealthy, after this many failed checks.
    Unhealthy(&'a Failure, u64),
    StillUnhealthy(&'a Failure, u64),
    /// Healthy (again), after this many failed checks.
    Healthy(u64),
}

impl Narrator {
    /// What to log after a check that failed (`failure`) or passed, given the verdict change
    /// it caused and the verdict now.
    fn after<'a>(
        &mut self,
        failure: Option<&'a Failure>,
        change: Option<ActiveVerdict>,
        now: ActiveVerdict,
    ) -> Say<'a> {
        let Some(f) = failure else {
            return match change {
                Some(ActiveVerdict::Healthy) => {
                    self.told = None;
                    Say::Healthy(std::mem::take(&mut self.failed))
                }
                _ => Say::Nothing,
            };
        };
        self.failed += 1;
        let n = self.failed;
        match (change, now) {
            (Some(ActiveVerdict::Unhealthy), _) => {
                self.told = Some(f.kind());
                Say::Unhealthy(f, n)
            }
            (Some(ActiveVerdict::Degraded), _) => Say::Degraded(f),
            (None, ActiveVerdict::Unhealthy) if self.told != Some(f.kind()) => {
                // Unhealthy from the start (a reload keeps the verdict): told once as such.
                match self.told.replace(f.kind()) {
                    None => Say::Unhealthy(f, n),
                    Some(_) => Say::StillUnhealthy(f, n),
                }
            }
            _ => Say::Nothing,
        }
    }
}

/// One check: a JSON-RPC result to `ping` (in the checker's own session, opened anew when the
/// backend forgot it) or `server/discover`.
fn check_once(
    b: &Backend,
    hc: &HealthCheck,
    session: &mut Option<String>,
    auth: Option<&crate::auth::Secret>,
) -> Result<(), Failure> {
    let deadline = Instant::now() + hc.timeout;
    let io = |e: ClientError| Failure::of_io(&e, hc.timeout);
    let mut c = match &b.tls {
        None => HttpClient::connect_timeout(b.addr, hc.timeout).map_err(io)?,
        Some(t) => {
            HttpClient::connect_tls(b.addr, hc.timeout, t.config.clone(), t.server_name.clone())
                .map_err(io)?
        }
    };
    c.set_host(&b.authority);
    let id = 1_000_000 + u64::from(rand::random::<u16>());
    let mut post = |sid: Option<&str>, extra: &[(&str, &str)], body: &serde_json::Value| {
        let mut h = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        h.extend_from_slice(extra);
        if let Some(s) = sid {
            h.push(("mcp-session-id", s));
        }
        if let Some(a) = auth {
            h.push(("authorization", a.expose()));
        }
        c.request("POST", &b.path, &h, body.to_string().as_bytes())
            .map_err(io)
    };
    if hc.discover {
        // The envelope keys 2026-07-28 requires (a server may refuse a request without its
        // client's capabilities).
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "server/discover",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo": {"name": "mcplb-health", "version": env!("CARGO_PKG_VERSION")}}}});
        let extra = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ];
        let r = post(None, &extra, &body)?;
        return expect_result(&r, id, "server/discover");
    }
    // A session the backend forgot (404) is opened again once, within the same deadline.
    for attempt in 0..2 {
        if session.is_none() {
            let init = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
                "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "mcplb-health-check", "version": env!("CARGO_PKG_VERSION")}}});
            let r = post(None, &[], &init)?;
            expect_result(&r, id, "initialize")?;
            let sid = r.header("mcp-session-id").map(str::to_string);
            let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
            let n = post(sid.as_deref(), &[], &note)?;
            if !(200..300).contains(&n.status) {
                return Err(Failure::Status {
                    method: "notifications/initialized".into(),
                    status: n.status,
                });
            }
            // A server that issues no session (stateless) is pinged without one.
            *session = Some(sid.unwrap_or_default());
        }
        if Instant::now() > deadline {
            return Err(Failure::Timeout(hc.timeout));
        }
        let sid = session.as_deref().filter(|s| !s.is_empty());
        let ping = serde_json::json!({"jsonrpc": "2.0", "id": id + 1, "method": hc.method});
        let r = post(sid, &[], &ping)?;
        if r.status == 404 && sid.is_some() && attempt == 0 {
            *session = None;
            continue;
        }
        return expect_result(&r, id + 1, &hc.method);
    }
    Err(Failure::Status {
        method: hc.method.clone(),
        status: 404,
    })
}

/// A 200 answer carrying a JSON-RPC result with `id`.
fn expect_result(r: &Response, id: u64, method: &str) -> Result<(), Failure> {
    if r.status != 200 {
        return Err(Failure::Status {
            method: method.into(),
            status: r.status,
        });
    }
    let bad = |detail: String| Failure::BadAnswer {
        method: method.into(),
        detail,
    };
    let v = r.json().map_err(|e| bad(format!("not JSON ({e})")))?;
    if v["id"] != id {
        return Err(bad(format!("no JSON-RPC answer with id {id}")));
    }
    if let Some(e) = v.get("error") {
        return Err(Failure::JsonRpc {
            method: method.into(),
            code: e["code"].as_i64().unwrap_or(0),
            message: e["message"]
                .as_str()
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        });
    }
    if v.get("result").is_none() {
        return Err(bad(format!(
            "neither result nor error in the answer with id {id}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn narrate(thresholds: (u32, u32), outcomes: &[Option<Failure>]) -> Vec<String> {
        let mut state = ActiveCheck::new(ActiveCheckConfig {
            healthy_threshold: thresholds.0,
            unhealthy_threshold: thresholds.1,
        });
        let mut n = Narrator::default();
        outcomes
            .iter()
            .map(|o| {
                let change = match o {
                    None => state.record_success(),
                    Some(_) => state.record_failure(),
                };
                format!("{:?}", n.after(o.as_ref(), change, state.verdict()))
            })
            .collect()
    }

    #[test]
    fn state_changes_are_told_with_their_reason_and_repeats_only_counted() {
        let refused = || Some(Failure::Refused);
        let timeout = || Some(Failure::Timeout(Duration::from_millis(300)));
        let said = narrate(
            (2, 3),
            &[
                refused(),
                None,
                refused(),
                refused(),
                refused(),
                refused(),
                refused(),
                timeout(),
                timeout(),
                None,
                timeout(),
                None,
                None,
            ],
        );
        assert_eq!(
            said,
            [
                "Degraded(Refused)",
                "Healthy(1)",
                "Degraded(Refused)",
                "Nothing",
                "Unhealthy(Refused, 3)",
                "Nothing",
                "Nothing",
                "StillUnhealthy(Timeout(300ms), 6)",
                "Nothing",
                "Nothing",
                "Nothing",
                "Nothing",
                "Healthy(8)",
            ]
        );
    }

    #[test]
    fn a_backend_unhealthy_from_the_start_is_told_once() {
        let mut state = ActiveCheck::starting(
            ActiveCheckConfig {
                healthy_threshold: 1,
                unhealthy_threshold: 1,
            },
            ActiveVerdict::Unhealthy,
        );
        let mut n = Narrator::default();
        let f = Failure::Status {
            method: "ping".into(),
            status: 502,
        };
        let mut said = Vec::new();
        for _ in 0..3 {
            let change = state.record_failure();
            said.push(format!("{:?}", n.after(Some(&f), change, state.verdict())));
        }
        assert_eq!(said[0], format!("Unhealthy({f:?}, 1)"));
        assert_eq!(said[1..], ["Nothing", "Nothing"]);
    }

    fn backend_config(url: &str, method: &str) -> Config {
        let toml = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"{url}\"]\n[servers.health]\ntimeout = \"300ms\"\nmethod = \"{method}\"\n"
        );
        Config::parse(&toml).unwrap_or_else(|e| panic!("{e}"))
    }

    fn check(url: &str, method: &str) -> Result<(), Failure> {
        let c = backend_config(url, method);
        let (Some(b), Some(hc)) = (c.servers[0].backends.first(), c.servers[0].health.as_ref())
        else {
            panic!("no backend or health config")
        };
        check_once(b, hc, &mut None, None)
    }

    #[test]
    fn failures_are_classified() {
        // Nothing listens.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap_or_else(|e| panic!("{e}"));
        let r = check(&format!("http://{closed}/mcp"), "ping");
        assert_eq!(r, Err(Failure::Refused));
        // Listens (the kernel completes the handshake) but never answers.
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = mute.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let r = check(&format!("http://{addr}/mcp"), "ping");
        assert_eq!(r, Err(Failure::Timeout(Duration::from_millis(300))));
        // A real MCP server: healthy with `ping`; a method it lacks (it has no prompts) is a
        // JSON-RPC error, a path it does not serve an HTTP status.
        let m = mock::MockServer::start(mock::MockConfig::default(), ([127, 0, 0, 1], 0).into())
            .unwrap_or_else(|e| panic!("{e}"));
        let url = m.url();
        assert_eq!(check(&url, "ping"), Ok(()));
        let r = check(&url, "prompts/list");
        let Err(f @ Failure::JsonRpc { code: -32601, .. }) = &r else {
            panic!("{r:?}")
        };
        assert!(
            f.to_string()
                .starts_with("`prompts/list` answered JSON-RPC error -32601: Method not found"),
            "{f}"
        );
        let r = check(&format!("http://{}/other", m.addr()), "ping");
        assert_eq!(
            r,
            Err(Failure::Status {
                method: "initialize".into(),
                status: 404
            })
        );
    }
}
