//! Active health checks that speak MCP: per backend, on an interval with jitter, the checker
//! initializes a session of its own and sends `ping` in it (or `server/discover` for
//! 2026-07-28 servers), and expects a JSON-RPC answer with its id before a deadline. Verdicts
//! pass through healthy/unhealthy thresholds (`lb::ActiveCheck`) into the group's shared health,
//! which every core reads lock-free. Runs on its own threads with blocking I/O, away from the
//! workers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lb::{ActiveCheck, ActiveCheckConfig, ActiveVerdict};
use rand::Rng;

use crate::balance::GroupRuntime;
use crate::config::{Backend, Config, HealthCheck};
use crate::demo::HttpClient;

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
    for (gi, g) in config.servers.iter().enumerate() {
        let Some(hc) = g.health.clone() else { continue };
        // Backends that expect mcplb's own credential get it on health checks too.
        let auth = match &g.auth.upstream {
            crate::auth::UpstreamCredential::Inject(s) => Some(s.clone()),
            _ => None,
        };
        for (bi, b) in g.backends.iter().enumerate() {
            let (b, hc, rts, group) = (b.clone(), hc.clone(), runtimes.clone(), g.name.clone());
            let (hub, stop, auth) = (hub.clone(), stop.clone(), auth.clone());
            let _ = std::thread::Builder::new()
                .name(format!("mcplb-check-{}", b.name))
                .spawn(move || {
                    check_loop(&group, gi, bi, &b, &hc, &rts, &hub, &stop, auth.as_ref())
                });
        }
    }
    Checkers { stop }
}

#[allow(clippy::too_many_arguments)]
fn check_loop(
    group: &str,
    gi: usize,
    bi: usize,
    b: &Backend,
    hc: &HealthCheck,
    rts: &[GroupRuntime],
    hub: &crate::control::stats::StatsHub,
    stop: &AtomicBool,
    auth: Option<&crate::auth::Secret>,
) {
    let Some(rt) = rts.get(gi) else { return };
    let verdict = rt
        .health
        .backend(bi)
        .map_or(ActiveVerdict::Healthy, |h| h.verdict());
    let mut state = ActiveCheck::starting(
        ActiveCheckConfig {
            healthy_threshold: hc.healthy_threshold,
            unhealthy_threshold: hc.unhealthy_threshold,
        },
        verdict,
    );
    let mut session: Option<String> = None;
    let mut rng = rand::thread_rng();
    loop {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ok = match check_once(b, hc, &mut session, auth) {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(backend = %b.name, error = %e, "health check failed");
                session = None;
                false
            }
        };
        let change = if ok {
            state.record_success()
        } else {
            state.record_failure()
        };
        if let Some(v) = change {
            rt.health.set_active(bi, v);
            hub.health_changes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if v == ActiveVerdict::Healthy {
                // Passing its active checks again brings a backend back at once, whatever
                // passive ejection it was serving.
                if let Some(h) = rt.health.backend(bi) {
                    h.uneject();
                }
            }
            match v {
                ActiveVerdict::Healthy => {
                    tracing::info!(server = group, backend = %b.name, "backend healthy")
                }
                _ => {
                    tracing::warn!(server = group, backend = %b.name, verdict = ?v, "backend unhealthy")
                }
            }
        }
        let jitter = hc.interval.mul_f64(rng.gen_range(0.0..0.1));
        // Sleep in short slices so that a reload stops this thread promptly.
        let wake = Instant::now() + hc.interval + jitter;
        while !stop.load(Ordering::Relaxed) {
            let left = wake.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(std::time::Duration::from_millis(200)));
        }
    }
}

/// One check: a JSON-RPC answer to `ping` (in the checker's own session) or `server/discover`.
fn check_once(
    b: &Backend,
    hc: &HealthCheck,
    session: &mut Option<String>,
    auth: Option<&crate::auth::Secret>,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + hc.timeout;
    let mut c = match &b.tls {
        None => HttpClient::connect_timeout(b.addr, hc.timeout)?,
        Some(t) => {
            HttpClient::connect_tls(b.addr, hc.timeout, t.config.clone(), t.server_name.clone())?
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
    };
    if hc.discover {
        let body = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "server/discover",
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
        let extra = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "server/discover"),
        ];
        let r = post(None, &extra, &body)?;
        return expect_answer(&r, id);
    }
    if session.is_none() {
        let init = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "mcplb-health-check", "version": env!("CARGO_PKG_VERSION")}}});
        let r = post(None, &[], &init)?;
        expect_answer(&r, id)?;
        let sid = r.header("mcp-session-id").map(str::to_string);
        let note = serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let n = post(sid.as_deref(), &[], &note)?;
        if !(200..300).contains(&n.status) {
            anyhow::bail!("notifications/initialized answered {}", n.status);
        }
        // A server that issues no session (stateless) is pinged without one.
        *session = Some(sid.unwrap_or_default());
    }
    if Instant::now() > deadline {
        anyhow::bail!("timed out");
    }
    let sid = session.as_deref().filter(|s| !s.is_empty());
    let ping = serde_json::json!({"jsonrpc": "2.0", "id": id + 1, "method": hc.method});
    let r = post(sid, &[], &ping)?;
    if r.status == 404 {
        // Our session expired: start a new one next time.
        *session = None;
        anyhow::bail!("health-check session expired");
    }
    expect_answer(&r, id + 1)
}

fn expect_answer(r: &crate::demo::Response, id: u64) -> anyhow::Result<()> {
    if r.status != 200 {
        anyhow::bail!("HTTP {}", r.status);
    }
    let v = r.json()?;
    if v["id"] != id || (v.get("result").is_none() && v.get("error").is_none()) {
        anyhow::bail!("no JSON-RPC answer with id {id}");
    }
    Ok(())
}
