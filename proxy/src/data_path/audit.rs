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
//!
//! Every line has `ts`, `id`, `identity`, `client`, `server`, `method`, `decision`, `status`
//! and `duration_us` (`identity` and `server` may be `null`); the other keys (`backend`,
//! `name`/`uri`, `rule`, `code`, `upstream_error`, `session`, `trace_id`, `era_input`,
//! `arguments_sha256`/`arguments`) are left out when there is nothing to say (the README's
//! audit section says what each absence means): a quarter of the usual line's bytes were
//! `null`s and `false`, which the writer thread paid for in kernel time.

use std::cell::RefCell;
use std::time::Instant;

use protocol::Method;

use crate::config::AuditArguments;
use crate::control::access_log::AccessLog;
use crate::data_path::request::{ClientConn, ReqMeta};
use crate::policy::Effect;
use crate::runtime::core::Core;

/// One core state's audit trail: its line log, and the parts of a line that are the same for
/// every request of a group and backend, written as JSON once when the state is built rather
/// than on every line.
pub(crate) struct AuditLog {
    pub(crate) log: AccessLog,
    /// `","id":"<core>-`: the text between the time and the line's sequence number.
    id_prefix: Box<[u8]>,
    /// Per group: `,"server":…,"method":` (no backend reached) and
    /// `,"server":…,"backend":…,"method":` per backend.
    places: Vec<Places>,
    /// An instant and the wall clock then (ms since the epoch): a line's time is the
    /// request's end from it, with no second clock read (renewed every second).
    anchor: Option<(Instant, u64)>,
    /// `{"ts":<ms>,"id":"<core>-` and its ms: the same for the lines of one ms.
    start: (u64, Vec<u8>),
}

/// A group's `,"server":…,"method":` text with no backend, and per backend its
/// `,"server":…,"backend":…,"method":`.
type Places = (Box<[u8]>, Vec<Box<[u8]>>);

/// `places`' text when the request reached no group.
const NOWHERE: &[u8] = b",\"server\":null,\"method\":";

/// How long a wall-clock reading stands for the lines' times (then read again, so a clock
/// step shows within a second).
const ANCHOR_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl AuditLog {
    /// The audit trail of `config` for core `index`, when it has one (an error opening it is
    /// logged).
    pub(crate) fn open(config: &crate::config::Config, index: usize) -> Option<RefCell<AuditLog>> {
        let log = AccessLog::open_or_say(&config.audit.as_ref()?.target, "audit log")?;
        let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "null".into());
        let place = |server: &str, backend: Option<&str>| {
            match backend {
                Some(b) => format!(",\"server\":{server},\"backend\":{b},\"method\":"),
                None => format!(",\"server\":{server},\"method\":"),
            }
            .into_bytes()
            .into_boxed_slice()
        };
        Some(RefCell::new(AuditLog {
            log,
            id_prefix: format!(",\"id\":\"{index}-").into_bytes().into(),
            places: config
                .servers
                .iter()
                .map(|g| {
                    let server = json(&g.name);
                    (
                        place(&server, None),
                        g.backends
                            .iter()
                            .map(|b| place(&server, Some(&json(&b.name))))
                            .collect(),
                    )
                })
                .collect(),
            anchor: None,
            start: (0, Vec::with_capacity(64)),
        }))
    }

    /// The wall-clock time of `end` in ms since the epoch.
    fn time_of(&mut self, end: Instant) -> u64 {
        if let Some((at, ms)) = self.anchor {
            if let Some(since) = end.checked_duration_since(at).filter(|d| *d < ANCHOR_FOR) {
                return ms + since.as_millis() as u64;
            }
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.anchor = Some((end, ms));
        ms
    }
}

/// What became of the request, for the `decision` field.
fn decision(m: &ReqMeta) -> &'static str {
    if let Some(o) = m.confirm {
        return o.as_str();
    }
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

/// Appends the audit line of the request just finished (at `end`), if it matters. Written
/// from the spans the envelope stage noted (no second parse); names go out as their JSON
/// string text as received (already valid JSON), numbers and hashes without `fmt`, the parts
/// the same for every line of a group and backend as text made once (the line is ~30 short
/// copies: measured per piece, `bench/results/2026-12-06-audit-perf.md`).
pub(crate) fn write(core: &Core, c: &ClientConn, start: Instant, end: Instant) {
    let (Some(log), Some(cfg)) = (&core.audit, &core.shared.config.audit) else {
        return;
    };
    let m = &c.meta;
    let body = c.req.body();
    let part = |s: Option<(u32, u32)>| s.and_then(|(a, b)| body.get(a as usize..b as usize));
    let method = part(m.rpc.method);
    let decision = decision(m);
    let is_response = m.rpc.method.is_none() && m.row == crate::control::stats::M_RESPONSE;
    let matters = decision != "allowed" || (m.rpc.request && always_audited(m.method));
    if !matters || is_response {
        return;
    }
    let mut audit = log.borrow_mut();
    let ts = audit.time_of(end);
    let AuditLog {
        log: l,
        id_prefix,
        places,
        start: (start_ms, start_text),
        ..
    } = &mut *audit;
    let mut num = itoa::Buffer::new();
    if *start_ms != ts || start_text.is_empty() {
        start_text.clear();
        start_text.extend_from_slice(b"{\"ts\":");
        start_text.extend_from_slice(num.format(ts).as_bytes());
        start_text.extend_from_slice(id_prefix);
        *start_ms = ts;
    }
    l.seq += 1;
    let place = match m.group.and_then(|g| places.get(g)) {
        Some((none, backends)) => m.backend.and_then(|b| backends.get(b)).unwrap_or(none),
        None => NOWHERE,
    };
    let name = part(m.rpc.name);
    // One capacity check for the usual line (the pieces below then only copy). A buffer that
    // cannot take it is handed to the writer first: growing it would copy its 64 KiB (once a
    // buffer, ~200 instructions a line: bench/results/2026-12-06-audit-lean.md).
    let need =
        256 + start_text.len() + place.len() + name.map_or(0, <[u8]>::len) + c.caller.name.len();
    if l.buf.len() + need > l.buf.capacity() {
        core.flush_log(l, crate::control::stats::Counter::AuditLinesDropped);
    }
    let buf = &mut l.buf;
    buf.reserve(need);
    buf.extend_from_slice(start_text);
    buf.extend_from_slice(num.format(l.seq).as_bytes());
    buf.extend_from_slice(b"\",\"identity\":");
    json_str(buf, Some(c.caller.name.as_str()).filter(|n| !n.is_empty()));
    buf.extend_from_slice(b",\"client\":\"");
    buf.extend_from_slice(c.client_text.of(c.client_ip).as_bytes());
    buf.push(b'"');
    buf.extend_from_slice(place);
    match method {
        Some(raw) => raw_json_str(buf, raw),
        None => json_str(buf, std::str::from_utf8(c.req.method_bytes()).ok()),
    }
    match part(m.rpc.uri) {
        Some(raw) => {
            // Decoded to redact a credential in it, then escaped again (resources only).
            let quoted = body.get(m.rpc.uri.map_or(0, |(a, _)| a as usize).saturating_sub(1)..);
            let uri = quoted
                .and_then(|q| q.get(..raw.len() + 2))
                .and_then(|q| serde_json::from_slice::<String>(q).ok());
            if let Some(u) = uri {
                buf.extend_from_slice(b",\"uri\":");
                json_str(buf, Some(&crate::auth::redact_url(&u)));
            }
        }
        // No name (`initialize`, a denied `tools/list`...): no key.
        None => {
            if let Some(raw) = name {
                buf.extend_from_slice(b",\"name\":\"");
                buf.extend_from_slice(raw);
                buf.push(b'"');
            }
        }
    }
    match decision_field(decision) {
        Some(field) => buf.extend_from_slice(field),
        None => {
            buf.extend_from_slice(b",\"decision\":\"");
            buf.extend_from_slice(decision.as_bytes());
            buf.push(b'"');
        }
    }
    rule_field(buf, m, method, &mut num);
    let duration_us = end.saturating_duration_since(start).as_micros() as u64;
    status_fields(buf, m, duration_us, &mut num);
    if let Some(s) = c.req.session_id() {
        buf.extend_from_slice(b",\"session\":\"");
        hex(buf, &core.shared.key_hasher.hash_key(s).to_be_bytes());
        buf.push(b'"');
    }
    if let Some(t) = trace_id(c.req.header(b"traceparent")) {
        // 32 hex digits (checked): no escape.
        buf.extend_from_slice(b",\"trace_id\":\"");
        buf.extend_from_slice(t.as_bytes());
        buf.push(b'"');
    }
    if let Some(e) = m.era_input {
        // A retry with a bridged call's input: the waiting call went on, or was replayed.
        buf.extend_from_slice(b",\"era_input\":\"");
        buf.extend_from_slice(e.as_str().as_bytes());
        buf.push(b'"');
    }
    arguments_field(buf, cfg.arguments, part(m.rpc.arguments));
    buf.extend_from_slice(b"}\n");
    // A line longer than the usual (full arguments) may have grown the buffer past it.
    if l.buf.len() >= crate::control::access_log::FLUSH_BYTES {
        core.flush_log(l, crate::control::stats::Counter::AuditLinesDropped);
    }
}

/// `,"rule":...`, the rule that decided (`policies[N]`, `policy_default`); no key without a
/// policy and for session plumbing no rule names.
#[inline]
fn rule_field(buf: &mut Vec<u8>, m: &ReqMeta, method: Option<&[u8]>, num: &mut itoa::Buffer) {
    if let Some(d) = m.policy {
        match d.rule {
            Some(r) if r == usize::from(crate::policy::confirm::DESTRUCTIVE_RULE) => {
                buf.extend_from_slice(b",\"rule\":\"confirm_destructive\"")
            }
            Some(r) => {
                buf.extend_from_slice(b",\"rule\":\"policies[");
                buf.extend_from_slice(num.format(r).as_bytes());
                buf.extend_from_slice(b"]\"");
            }
            None if d.effect == Effect::Allow
                && method.is_some_and(|mt| {
                    std::str::from_utf8(mt).is_ok_and(crate::policy::is_plumbing)
                }) => {}
            None => buf.extend_from_slice(b",\"rule\":\"policy_default\""),
        }
    }
}

/// `,"status":...` (with the proxy's own JSON-RPC error code, or that a backend's answer was one)
/// and `,"duration_us":...`.
#[inline]
fn status_fields(buf: &mut Vec<u8>, m: &ReqMeta, duration_us: u64, num: &mut itoa::Buffer) {
    let code = (m.by_proxy && m.code != 0).then_some(m.code);
    match (m.status, code, m.jsonrpc_error) {
        // The usual answer: one piece.
        (200, None, false) => buf.extend_from_slice(b",\"status\":200,\"duration_us\":"),
        (status, code, upstream_error) => {
            buf.extend_from_slice(b",\"status\":");
            buf.extend_from_slice(num.format(status).as_bytes());
            if let Some(code) = code {
                buf.extend_from_slice(b",\"code\":");
                buf.extend_from_slice(num.format(code).as_bytes());
            }
            buf.extend_from_slice(if upstream_error {
                b",\"upstream_error\":true,\"duration_us\":"
            } else {
                b",\"duration_us\":"
            });
        }
    }
    buf.extend_from_slice(num.format(duration_us).as_bytes());
}

/// `,"arguments_sha256":...` or `,"arguments":...` as configured (`audit.arguments`), from the
/// call's raw arguments.
#[inline]
fn arguments_field(buf: &mut Vec<u8>, how: AuditArguments, arguments: Option<&[u8]>) {
    match (how, arguments) {
        (AuditArguments::Hash, Some(a)) => {
            let d = ring::digest::digest(&ring::digest::SHA256, a);
            buf.extend_from_slice(b",\"arguments_sha256\":\"");
            hex(buf, d.as_ref());
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
}

/// `,"decision":"<decision>"` in one piece, for the decisions there are.
fn decision_field(decision: &str) -> Option<&'static [u8]> {
    macro_rules! field {
        ($($d:literal),*) => {
            match decision {
                $($d => Some(concat!(",\"decision\":\"", $d, "\"").as_bytes()),)*
                _ => None,
            }
        };
    }
    field!(
        "allowed",
        "denied",
        "confirm_unavailable",
        "confirm_asked",
        "confirmed",
        "declined",
        "timed_out",
        "rate_limited",
        "unauthenticated",
        "failed",
        "refused"
    )
}

/// A JSON string (escaped), or `null`.
pub(crate) fn json_str(buf: &mut Vec<u8>, s: Option<&str>) {
    match s {
        // Most names need no escape: copied as they are.
        Some(s) if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') => {
            raw_json_str(buf, s.as_bytes());
        }
        Some(s) => {
            let _ = serde_json::to_writer(&mut *buf, s);
        }
        None => buf.extend_from_slice(b"null"),
    }
}

/// A JSON string from the text between its quotes as received (validated JSON: its escapes
/// stay as they are).
fn raw_json_str(buf: &mut Vec<u8>, raw: &[u8]) {
    buf.push(b'"');
    buf.extend_from_slice(raw);
    buf.push(b'"');
}

/// Lowercase hex of `bytes`.
fn hex(buf: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        buf.push(DIGITS[usize::from(b >> 4)]);
        buf.push(DIGITS[usize::from(b & 15)]);
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
#[allow(clippy::unwrap_used)]
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
    fn strings() {
        let mut buf = Vec::new();
        json_str(&mut buf, Some("plain"));
        json_str(&mut buf, Some("q\"uo\\te\n"));
        json_str(&mut buf, None);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            r#""plain""q\"uo\\te\n"null"#
        );
    }

    #[test]
    fn decision_fields_are_one_piece_for_every_decision() {
        use crate::policy::confirm::Outcome;
        let outcomes = [
            Outcome::Asked,
            Outcome::Confirmed,
            Outcome::Declined,
            Outcome::TimedOut,
            Outcome::Unavailable,
        ];
        let mut all: Vec<&str> = outcomes.iter().map(|o| o.as_str()).collect();
        all.extend([
            "allowed",
            "denied",
            "rate_limited",
            "unauthenticated",
            "failed",
            "refused",
        ]);
        for d in all {
            let field = decision_field(d).unwrap();
            assert_eq!(
                std::str::from_utf8(field).unwrap(),
                format!(",\"decision\":\"{d}\"")
            );
        }
        assert_eq!(decision_field("something new"), None);
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
