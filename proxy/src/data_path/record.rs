//! When a request ends: it is folded into this core's statistics and, when configured,
//! written as one JSON access-log line. Per core, no lock: the hub merges cores once a second.

use std::io::Write as _;
use std::time::Instant;

use crate::control::stats::{self, Counter, Gauge, Sample};
use crate::data_path::request::{ClientConn, ReqMeta};
use crate::runtime::core::Core;

/// Appends one JSON access-log line for the request just finished.
pub(crate) fn write_access_log(core: &Core, c: &ClientConn, start: Instant) {
    let Some(log) = &core.access_log else { return };
    let m = &c.meta;
    let mut l = log.borrow_mut();
    let (seq, ts) = l.stamp();
    let total_us = start.elapsed().as_micros();
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_micros(),
        _ => 0,
    };
    let cfg = &core.shared.config;
    let server = m.group.and_then(|g| cfg.servers.get(g));
    let backend = m
        .backend
        .and_then(|b| server.and_then(|s| s.backends.get(b)))
        .map_or("", |b| b.name.as_str());
    let rec = core.rec.borrow();
    let tool = m.tool.map_or("", |t| rec.tool_name(t));
    let method = stats::METHODS.get(m.row).copied().unwrap_or("other");
    // Names come from the config and the tool table (JSON-escaped by serde_json); the
    // session is a keyed hash, never the id itself.
    let _ = writeln!(
        l.buf,
        "{{\"ts\":{ts},\"id\":\"{}-{seq}\",\"client\":\"{}\",\"peer\":\"{}\",\"server\":{},\"session\":\"{:016x}\",\"method\":\"{method}\",\"tool\":{},\"backend\":{},\"caller\":{},\"status\":{},\"by_proxy\":{},\"total_us\":{total_us},\"upstream_us\":{upstream_us},\"bytes_out\":{}}}",
        core.index,
        c.client_ip,
        c.peer,
        serde_json::Value::from(server.map_or("", |s| s.name.as_str())),
        m.session_hash,
        serde_json::Value::from(tool),
        serde_json::Value::from(backend),
        serde_json::Value::from(c.caller.name.as_str()),
        m.status,
        m.by_proxy,
        m.bytes_out,
    );
    if l.buf.len() >= 64 * 1024 {
        l.flush();
    }
}

/// A session id refused because it is not the caller's: counted, and logged with the server
/// and the caller who presented it (never the id or a credential).
pub(crate) fn not_owner(core: &Core, server: &str, caller: &str, unowned: bool) {
    core.rec
        .borrow_mut()
        .count(Counter::SessionOwnerMismatch, 1);
    if unowned {
        tracing::info!(
            server,
            caller,
            "session id sealed before sessions were bound to callers: 404 (the client \
             initializes again)"
        );
    } else {
        tracing::warn!(
            server,
            caller,
            "session id of another caller refused (404); nothing was forwarded"
        );
    }
}

/// Folds one finished request into this core's statistics.
pub(crate) fn record(core: &Core, m: &ReqMeta, start: Instant) {
    if m.by_proxy {
        let limit = match m.status {
            408 => Some(Counter::SlowClients),
            431 => Some(Counter::HeadersTooLarge),
            413 => Some(Counter::BodiesTooLarge),
            414 => Some(Counter::UrlsTooLong),
            _ => None,
        };
        if let Some(k) = limit {
            core.rec.borrow_mut().count(k, 1);
        }
    }
    let Some(group) = m.group else {
        // Rejected before a server group was known (bad head, unknown path): count only.
        let mut rec = core.rec.borrow_mut();
        rec.count(Counter::BadRequest, 1);
        rec.count(Counter::BytesOut, m.bytes_out);
        return;
    };
    let end = Instant::now();
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_micros() as u64,
        _ => 0,
    };
    let mut rec = core.rec.borrow_mut();
    rec.record(Sample {
        group,
        backend: m.backend,
        method: m.row,
        tool: m.tool,
        total_us: end.saturating_duration_since(start).as_micros() as u64,
        upstream_us,
        first_event_us: match (m.sent, m.first_event) {
            (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_micros() as u64),
            _ => None,
        },
    });
    rec.count(Counter::BytesOut, m.bytes_out);
    if m.by_proxy {
        let c = match m.status {
            404 => Counter::UnknownSession,
            429 => Counter::RateLimited,
            502 | 503 => Counter::NoBackend,
            504 => Counter::Timeout,
            401 | 403 => Counter::AuthRefused,
            _ => Counter::BadRequest,
        };
        rec.count(c, 1);
    } else if (400..500).contains(&m.status) {
        rec.count(Counter::Upstream4xx, 1);
    } else if m.status >= 500 {
        rec.count(Counter::Upstream5xx, 1);
    }
    if m.new_session {
        rec.count(Counter::SessionsStarted, 1);
        rec.gauge(Gauge::ActiveSessions, 1);
        if let Some(b) = m.backend {
            rec.backend_gauge(group, b, 1, 1);
        }
    }
    if m.ended_session && (200..300).contains(&m.status) {
        rec.count(Counter::SessionsEnded, 1);
        rec.gauge(Gauge::ActiveSessions, -1);
        if let Some(b) = m.backend {
            rec.backend_gauge(group, b, 1, -1);
        }
    }
    if m.sse {
        rec.count(Counter::SseStreams, 1);
    }
    if m.retried {
        rec.count(Counter::Retries, 1);
    }
    if m.jsonrpc_error {
        rec.count(Counter::JsonRpcErrors, 1);
    }
}
