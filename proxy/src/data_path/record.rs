//! When a request ends: it is folded into this core's statistics and, when configured,
//! written as one JSON access-log line. Per core, no lock: the hub merges cores once a second.

use std::io::Write as _;
use std::time::Instant;

use crate::control::stats::{self, Counter, Gauge, Sample};
use crate::data_path::audit::json_str;
use crate::data_path::request::{ClientConn, ReqMeta};
use crate::runtime::core::Core;

/// Appends one JSON access-log line for the request just finished.
pub(crate) fn write_access_log(core: &Core, c: &ClientConn, start: Instant) {
    let Some(log) = &core.access_log else { return };
    let m = &c.meta;
    let mut l = log.borrow_mut();
    let (seq, ts) = l.stamp();
    let total_us = crate::runtime::clock::now()
        .saturating_duration_since(start)
        .as_micros();
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_sub(a) / 1_000,
        _ => 0,
    };
    let cfg = &core.shared.config;
    let server = m.group.and_then(|g| cfg.servers.get(g));
    let backend = m
        .backend
        .and_then(|b| server.and_then(|s| s.backends.get(b)))
        .map_or("", |b| b.name.as_str());
    // A buffer that cannot take the usual line is handed to the writer first (growing it
    // would copy its 64 KiB); before the statistics are borrowed, which counting dropped
    // lines borrows mutably. A tool name longer than the margin may still grow it.
    let need = 512 + backend.len() + c.caller.name.len() + server.map_or(0, |s| s.name.len());
    if l.buf.len() + need > l.buf.capacity() {
        core.flush_log(&mut l, Counter::AccessLogLinesDropped);
    }
    let rec = core.rec.borrow();
    let tool = m.tool.map_or("", |t| rec.tool_name(t));
    let method = stats::METHODS.get(m.row).copied().unwrap_or("other");
    // Names come from the config and the tool table (JSON-escaped where they need it, no
    // allocation); the session is a keyed hash, never the id itself.
    let buf = &mut l.buf;
    let _ = write!(
        buf,
        "{{\"ts\":{ts},\"id\":\"{}-{seq}\",\"client\":\"{}\",\"peer\":\"{}\",\"server\":",
        core.index, c.client_ip, c.peer,
    );
    json_str(buf, Some(server.map_or("", |s| s.name.as_str())));
    let _ = write!(
        buf,
        ",\"session\":\"{:016x}\",\"method\":\"{method}\",\"tool\":",
        m.session_hash
    );
    json_str(buf, Some(tool));
    buf.extend_from_slice(b",\"backend\":");
    json_str(buf, Some(backend));
    buf.extend_from_slice(b",\"caller\":");
    json_str(buf, Some(c.caller.name.as_str()));
    let _ = writeln!(
        buf,
        ",\"status\":{},\"by_proxy\":{},\"total_us\":{total_us},\"upstream_us\":{upstream_us},\"bytes_out\":{}}}",
        m.status, m.by_proxy, m.bytes_out,
    );
    drop(rec);
    if l.buf.len() >= crate::control::access_log::FLUSH_BYTES {
        core.flush_log(&mut l, Counter::AccessLogLinesDropped);
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

/// Folds one finished request (`total_us` from its start to its end) into this core's
/// statistics.
pub(crate) fn record(core: &Core, m: &ReqMeta, total_us: u64) {
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
    let upstream_us = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_sub(a) / 1_000,
        _ => 0,
    };
    let mut rec = core.rec.borrow_mut();
    rec.record(Sample {
        group,
        backend: m.backend,
        method: m.row,
        tool: m.tool,
        total_us,
        upstream_us,
        first_event_us: match (m.sent, m.first_event) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a) / 1_000),
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

/// Hands the span of the request just finished to the exporter when its trace is sampled
/// (`[telemetry]`). A request refused before its trace was decided (credentials, limits)
/// decides it now from its `traceparent` header. Requests with no server group (a bad head,
/// an unknown path) have no span.
pub(crate) fn span(core: &Core, c: &ClientConn, start: Instant) {
    use crate::telemetry::{AttrValue as V, SpanRecord};
    let (Some(tracer), Some(cfg)) = (&core.shared.tracer, &core.shared.config.telemetry) else {
        return;
    };
    let Some(gi) = c.meta.group else { return };
    let trace = match c.trace {
        Some(t) => t,
        None => crate::telemetry::decide(c.req.header(b"traceparent"), None, cfg.sample_ratio),
    };
    if !trace.sampled {
        return;
    }
    let m = &c.meta;
    let total_ns = start.elapsed().as_nanos() as u64;
    let end_unix_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let upstream_ns = match (m.sent, m.upstream_done) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        (Some(a), None) => crate::runtime::clock::fresh_ns().saturating_sub(a),
        _ => 0,
    };
    let shared = &core.shared;
    let group = shared.config.servers.get(gi);
    let backend = m
        .backend
        .and_then(|b| group.and_then(|g| g.backends.get(b)));
    // The envelope again, for the names (a sampled request only).
    let env =
        protocol::parse_message_with_depth(c.req.body(), shared.config.proxy.max_json_depth).ok();
    let method = env
        .as_ref()
        .and_then(|e| e.method)
        .map(|m| m.decode().into_owned());
    let mut attrs = Vec::with_capacity(16);
    let mut target = None;
    if let (Some(e), Some(name)) = (&env, method.as_deref()) {
        attrs.push(("mcp.method.name", V::Str(name.to_string())));
        let named = match name {
            "tools/call" => Some(("gen_ai.tool.name", e.name)),
            "prompts/get" => Some(("gen_ai.prompt.name", e.name)),
            _ if e.uri.is_some() => Some(("mcp.resource.uri", e.uri)),
            _ => None,
        };
        if let Some((key, Some(v))) = named {
            let v = v.decode().into_owned();
            target = Some(v.clone());
            attrs.push((key, V::Str(v)));
        }
        if let Some(id) = c.req.id() {
            let id = id
                .strip_prefix(b"\"")
                .and_then(|i| i.strip_suffix(b"\""))
                .unwrap_or(id);
            attrs.push((
                "jsonrpc.request.id",
                V::Str(String::from_utf8_lossy(id).into_owned()),
            ));
        }
    }
    let http_method = String::from_utf8_lossy(c.req.method_bytes()).into_owned();
    attrs.push(("http.request.method", V::Str(http_method.clone())));
    attrs.push(("http.response.status_code", V::Int(i64::from(m.status))));
    if let Some(g) = group {
        attrs.push(("mcplb.server_group", V::Str(g.name.clone())));
    }
    if let Some(b) = backend {
        attrs.push(("mcplb.backend", V::Str(b.name.clone())));
    }
    if let Some(sid) = c.req.session_id() {
        let mut hex = Vec::with_capacity(16);
        crate::telemetry::context::write_hex(
            &mut hex,
            &shared.key_hasher.hash_key(sid).to_be_bytes(),
        );
        let hex = String::from_utf8(hex).unwrap_or_default();
        attrs.push(("mcplb.session.hash", V::Str(hex)));
    }
    if let Some(code) = m.rpc_code {
        attrs.push(("rpc.jsonrpc.error_code", V::Int(code)));
    }
    attrs.push(("mcplb.retries", V::Int(i64::from(m.retries))));
    attrs.push(("mcplb.by_proxy", V::Bool(m.by_proxy)));
    attrs.push(("mcplb.upstream_us", V::Int((upstream_ns / 1000) as i64)));
    attrs.push((
        "mcplb.own_us",
        V::Int((total_ns.saturating_sub(upstream_ns) / 1000) as i64),
    ));
    let error = if m.status >= 500 {
        Some(format!("HTTP {}", m.status))
    } else {
        m.rpc_code.map(|code| format!("JSON-RPC error {code}"))
    };
    let name = match (&method, &target) {
        (Some(m), Some(t)) => format!("{m} {t}"),
        (Some(m), None) => m.clone(),
        _ => http_method,
    };
    tracer.submit(SpanRecord {
        trace_id: trace.trace_id,
        span_id: trace.span_id,
        parent: trace.parent,
        name,
        start_unix_ns: end_unix_ns.saturating_sub(total_ns),
        end_unix_ns,
        error,
        attrs,
    });
}
