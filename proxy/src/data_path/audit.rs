//! The audit trail (`[audit]`): one JSON line per MCP operation that matters (`initialize`,
//! `tools/call`, `prompts/get`, `resources/read`, and every request a policy denied, a limit
//! refused or that failed), written like the access log (per-core buffers handed to the one
//! writer thread, `control::access_log`), so a worker never waits for the disk.
//!
//! A line names who (identity, client address), where (server group, backend), what
//! (method, tool, prompt or URI, with credentials in the URI redacted), the decision and the
//! rule that made it, the JSON-RPC error code of an answer mcplb made, the duration, a keyed
//! hash of the session id and the W3C trace id if the request had one. Arguments: off, their
//! SHA-256, or in full, as configured. Never a credential: no header but `traceparent` is read.

use std::io::Write as _;
use std::time::Instant;

use protocol::{MessageKind, Method};

use crate::config::AuditArguments;
use crate::data_path::request::{ClientConn, HttpMethod, ReqMeta};
use crate::policy::Effect;
use crate::runtime::core::Core;

/// What became of the request, for the `decision` field.
fn decision(m: &ReqMeta) -> &'static str {
    match m.policy.map(|d| d.effect) {
        Some(Effect::Deny) => return "denied",
        Some(Effect::Confirm) => return "confirm_unavailable",
        _ => {}
    }
    match (m.by_proxy, m.status) {
        (true, 429) => "rate_limited",
        (true, 401 | 403) => "unauthenticated",
        (true, 502..=504) => "failed",
        (true, s) if s >= 400 => "refused",
        (_, s) if s >= 400 || m.jsonrpc_error => "failed",
        (true, 200) if m.code != 0 => "refused",
        _ => "allowed",
    }
}

/// Whether an operation is audited even when it went well.
fn always_audited(method: Method) -> bool {
    matches!(
        method,
        Method::Initialize | Method::ToolsCall | Method::PromptsGet | Method::ResourcesRead
    )
}

/// Appends the audit line of the request just finished, if it matters.
pub(crate) fn write(core: &Core, c: &ClientConn, start: Instant) {
    let (Some(log), Some(cfg)) = (&core.audit, &core.shared.config.audit) else {
        return;
    };
    let m = &c.meta;
    let body = c.req.body();
    let env = match c.req.method() {
        HttpMethod::Post => {
            protocol::parse_message_with_depth(body, core.shared.config.proxy.max_json_depth).ok()
        }
        _ => None,
    };
    let method = env.as_ref().and_then(|e| e.method);
    let decision = decision(m);
    let matters = decision != "allowed" || method.is_some_and(|mt| always_audited(Method::of(&mt)));
    if !matters
        || env
            .as_ref()
            .is_some_and(|e| e.kind == MessageKind::Response)
    {
        return;
    }
    let mut l = log.borrow_mut();
    let (seq, ts) = l.stamp();
    let server = m.group.and_then(|g| core.shared.config.servers.get(g));
    let backend = m
        .backend
        .and_then(|b| server?.backends.get(b))
        .map(|b| b.name.as_str());
    let buf = &mut l.buf;
    let _ = write!(
        buf,
        "{{\"ts\":{ts},\"id\":\"{}-{seq}\",\"identity\":",
        core.index
    );
    json_str(
        buf,
        Some(&c.caller.name)
            .filter(|n| !n.is_empty())
            .map(String::as_str),
    );
    let _ = write!(buf, ",\"client\":\"{}\",\"server\":", c.client_ip);
    json_str(buf, server.map(|s| s.name.as_str()));
    buf.extend_from_slice(b",\"backend\":");
    json_str(buf, backend);
    buf.extend_from_slice(b",\"method\":");
    match method {
        Some(mt) => json_str(buf, Some(&mt.decode())),
        None => json_str(buf, std::str::from_utf8(c.req.method_bytes()).ok()),
    }
    let (key, name) = match env.as_ref() {
        Some(e) if e.uri.is_some() => ("uri", e.uri.map(|u| crate::auth::redact_url(&u.decode()))),
        Some(e) => ("name", e.name.map(|n| n.decode().into_owned())),
        None => ("name", None),
    };
    let _ = write!(buf, ",\"{key}\":");
    json_str(buf, name.as_deref());
    let _ = write!(buf, ",\"decision\":\"{decision}\",\"rule\":");
    // The rule that decided (`policies[N]`, `policy_default`), or `null` without a policy
    // and for session plumbing no rule names.
    let method_name = method.map(|mt| mt.decode()).unwrap_or_default();
    let by = m
        .policy
        .map(|d| d.by(&method_name))
        .filter(|b| b != "plumbing");
    json_str(buf, by.as_deref());
    let _ = write!(
        buf,
        ",\"status\":{},\"code\":{},\"upstream_error\":{},\"duration_us\":{}",
        m.status,
        if m.by_proxy && m.code != 0 {
            m.code.to_string()
        } else {
            "null".to_string()
        },
        m.jsonrpc_error,
        start.elapsed().as_micros()
    );
    buf.extend_from_slice(b",\"session\":");
    match c.req.session_id() {
        Some(s) => {
            let _ = write!(buf, "\"{:016x}\"", core.shared.key_hasher.hash_key(s));
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"trace_id\":");
    json_str(buf, trace_id(c.req.header(b"traceparent")));
    let args = env.as_ref().and_then(|e| e.arguments);
    match (cfg.arguments, args) {
        (AuditArguments::Hash, Some(a)) => {
            let d = ring::digest::digest(&ring::digest::SHA256, a);
            buf.extend_from_slice(b",\"arguments_sha256\":\"");
            for b in d.as_ref() {
                let _ = write!(buf, "{b:02x}");
            }
            buf.push(b'"');
        }
        (AuditArguments::Full, Some(a)) => {
            // Re-written compact (the raw bytes may span lines); they were parsed already.
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(a) {
                buf.extend_from_slice(b",\"arguments\":");
                let _ = serde_json::to_writer(&mut *buf, &v);
            }
        }
        _ => {}
    }
    buf.extend_from_slice(b"}\n");
    if l.buf.len() >= crate::control::access_log::FLUSH_BYTES {
        l.flush();
    }
}

/// A JSON string (escaped), or `null`.
fn json_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => {
            let _ = serde_json::to_writer(&mut *buf, s);
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// The trace id of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(h: Option<&[u8]>) -> Option<&str> {
    let id = h?.get(3..35)?;
    let ok = h?.starts_with(b"00-")
        && id.iter().all(|b| b.is_ascii_hexdigit())
        && h?.get(35) == Some(&b'-');
    ok.then(|| std::str::from_utf8(id).ok()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        let tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(trace_id(Some(tp)), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(trace_id(Some(b"00-xyz")), None);
        assert_eq!(trace_id(None), None);
    }

    #[test]
    fn decisions() {
        let mut m = ReqMeta {
            status: 200,
            ..ReqMeta::default()
        };
        assert_eq!(decision(&m), "allowed");
        m.policy = Some(crate::policy::Decision {
            effect: Effect::Deny,
            rule: Some(2),
        });
        assert_eq!(decision(&m), "denied");
        m.policy = None;
        m.by_proxy = true;
        m.status = 429;
        assert_eq!(decision(&m), "rate_limited");
        m.status = 503;
        assert_eq!(decision(&m), "failed");
    }
}
