//! Talking HTTP/1.1 to a backend: the request mcplb writes (hop-by-hop headers dropped,
//! `Host` and the backend's own session id set, credentials as the group says), the one reader
//! of a response head every path uses, and a whole small exchange for mcplb's own requests
//! (replaying an `initialize` on failover).

use std::io::Write as _;

use lb::{UpstreamError, UpstreamErrorKind};
use protocol::sse::PendingEvents;

use crate::auth::UpstreamCredential;
use crate::config::{Backend, ClientAddress};
use crate::data_path::client_address::{self, Hop};
use crate::data_path::request::{HttpMethod, Request};
use crate::data_path::response::{body_step_with, Framing};
use crate::http::{self, ChunkedDecoder};
use crate::runtime::core::Core;
use crate::runtime::timer::Timer;
use crate::telemetry::TraceContext;
use crate::tls::Conn;

/// Largest response head accepted from a backend.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Why no response head could be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadReadError {
    /// The connection closed or failed; `bytes`: some answer bytes had arrived.
    Closed { bytes: bool },
    /// No complete head before the deadline; `bytes`: some answer bytes had arrived.
    TimedOut { bytes: bool },
    /// Over [`MAX_RESPONSE_HEAD`] without a blank line.
    TooLarge,
}

impl HeadReadError {
    /// As the error of an attempt whose request was written on a `reused` connection.
    pub fn upstream(self, reused: bool) -> UpstreamError {
        match self {
            HeadReadError::Closed { bytes: false } => {
                UpstreamError::new(UpstreamErrorKind::ResetBeforeAnswer, reused, false)
            }
            HeadReadError::Closed { bytes: true } => {
                UpstreamError::new(UpstreamErrorKind::ResetInHead, reused, true)
            }
            HeadReadError::TimedOut { bytes } => {
                UpstreamError::new(UpstreamErrorKind::HeadTimeout, reused, bytes)
            }
            HeadReadError::TooLarge => UpstreamError::new(UpstreamErrorKind::BadHead, reused, true),
        }
    }
}

/// Reads from `up` into `buf` (which may already hold bytes) until it holds a complete
/// response head, before `deadline`: the head's length.
pub(crate) async fn read_head(
    up: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: Option<monoio::time::Instant>,
) -> Result<usize, HeadReadError> {
    read_head_with(up, buf, deadline, &mut Timer::default()).await
}

/// [`read_head`], timed by `timer` (a connection's, kept between its requests).
pub(crate) async fn read_head_with(
    up: &mut Conn,
    buf: &mut Vec<u8>,
    deadline: Option<monoio::time::Instant>,
    timer: &mut Timer,
) -> Result<usize, HeadReadError> {
    loop {
        if let Some(n) = http::head_len(buf) {
            return Ok(n);
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(HeadReadError::TooLarge);
        }
        let had = !buf.is_empty();
        let b = std::mem::take(buf);
        // Pinned where it is built and timed out through a reference: moved by value into
        // `timeout_at` (and that into this future), the read (sized for `Conn`'s largest
        // variant) was copied twice per answer head (callgrind: memcpy ~350 instructions a
        // request).
        let mut read = std::pin::pin!(up.read_more(b, super::READ_SIZE));
        let (r, b) = match deadline {
            None => read.await,
            Some(d) => match timer.before(d, read.as_mut()).await {
                Some(x) => x,
                // The buffer goes with the read, cancelled as it drops.
                None => return Err(HeadReadError::TimedOut { bytes: had }),
            },
        };
        *buf = b;
        if !matches!(r, Ok(n) if n > 0) {
            return Err(HeadReadError::Closed {
                bytes: !buf.is_empty(),
            });
        }
    }
}

/// Writes the upstream request for `req` to `out`: the backend's path with the client's
/// query, `Host` set to the backend, hop-by-hop headers (the fixed list, `Proxy-*` and those
/// the request's `Connection` names) and mcplb's own credentials dropped (unless the group
/// forwards them), the client's address as `forwarding` says, the backend's session id, the
/// body. `rewrite` says what the era bridge changes and which trace the request carries
/// ([`Rewrite`]).
pub(crate) fn build_request(
    out: &mut Vec<u8>,
    req: &Request,
    backend: &Backend,
    backend_sid: Option<&[u8]>,
    rewrite: &Rewrite<'_>,
    credential: &UpstreamCredential,
    forwarding: (&ClientAddress, &Hop),
) {
    let version = rewrite.version;
    let trace = rewrite.trace;
    let strip_auth = !matches!(credential, UpstreamCredential::Forward);
    out.extend_from_slice(req.method_bytes());
    out.push(b' ');
    out.extend_from_slice(backend.path.as_bytes());
    out.extend_from_slice(req.query());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let (fwd, hop) = forwarding;
    for (name, value) in req.headers() {
        if http::is_hop_by_hop(name)
            || req.connection_names(name)
            || client_address::is_replaced(fwd, name)
        {
            continue;
        }
        // A caller's mcplb API key is mcplb's credential, never passed to a backend.
        if strip_auth
            && (name.eq_ignore_ascii_case(b"authorization")
                || name.eq_ignore_ascii_case(b"x-api-key"))
        {
            continue;
        }
        if version.is_some() && name.eq_ignore_ascii_case(b"mcp-protocol-version") {
            continue;
        }
        if !rewrite.headers.is_empty()
            && (name.eq_ignore_ascii_case(b"mcp-method") || name.eq_ignore_ascii_case(b"mcp-name"))
        {
            continue;
        }
        if trace.is_some() && name.eq_ignore_ascii_case(b"traceparent") {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(v) = version {
        out.extend_from_slice(b"mcp-protocol-version: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(rewrite.headers);
    client_address::write(out, fwd, hop, req);
    if let UpstreamCredential::Inject(secret) = credential {
        out.extend_from_slice(b"authorization: ");
        out.extend_from_slice(secret.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(t) = trace {
        out.extend_from_slice(b"traceparent: ");
        t.write_traceparent(out);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(sid) = backend_sid {
        out.extend_from_slice(b"mcp-session-id: ");
        out.extend_from_slice(sid);
        out.extend_from_slice(b"\r\n");
    }
    let body = rewrite.body.unwrap_or(req.body());
    if req.method() == HttpMethod::Post || !body.is_empty() {
        content_length(out, body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Appends the `content-length` field of a body of `len` bytes (with itoa: `write!` went
/// through `core::fmt::write` and an `io::Write` adapter, ~340 instructions a request).
fn content_length(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Largest body of an answer to one of mcplb's own requests that is kept.
const MAX_EXCHANGE_BODY: usize = 1024 * 1024;

/// What mcplb changes in a request on its way to a backend (nothing by default): the era
/// bridge's rewrites and the trace the request carries.
#[derive(Default)]
pub(crate) struct Rewrite<'a> {
    /// A traced request carries mcplb's span as the backend's parent in place of the
    /// caller's `traceparent`.
    pub trace: Option<&'a TraceContext>,
    /// Replaces the client's `MCP-Protocol-Version` (a bridged request goes out at its
    /// backend's revision).
    pub version: Option<&'a [u8]>,
    /// Replaces the body (a 2025-era client's request with the `_meta` of 2026-07-28).
    pub body: Option<&'a [u8]>,
    /// Header lines to add (each ending in CRLF); when any, the client's `Mcp-Method` and
    /// `Mcp-Name` are dropped (these lines replace them).
    pub headers: &'a [u8],
}

/// The parts of a whole small answer mcplb asked for itself.
#[derive(Default)]
pub(crate) struct Exchanged {
    /// The `Mcp-Session-Id` the answer carried.
    pub session: Option<Vec<u8>>,
    /// The status was 2xx and the body was read to its end.
    pub ok: bool,
    /// An answer (a head) came; `status` is its code.
    pub answered: bool,
    /// The answer's status code.
    pub status: u16,
    /// The body is an SSE stream.
    pub sse: bool,
    /// The body, de-chunked (up to 1 MiB; past that `ok` is false).
    pub body: Vec<u8>,
}

/// Sends one request of mcplb's own on `up` and reads its whole answer before `deadline`.
pub(crate) async fn exchange(
    up: &mut Conn,
    req: Vec<u8>,
    deadline: monoio::time::Instant,
) -> Exchanged {
    let failed = Exchanged::default();
    let len = req.len();
    let (w, _) = up.write_range(req, 0..len).await;
    if w.is_err() {
        return failed;
    }
    let mut buf = Vec::with_capacity(4096);
    let Ok(head_len) = read_head(up, &mut buf, Some(deadline)).await else {
        return failed;
    };
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut storage);
    if !matches!(
        resp.parse(buf.get(..head_len).unwrap_or_default()),
        Ok(httparse::Status::Complete(_))
    ) {
        return failed;
    }
    let status = resp.code.unwrap_or(0);
    let ok = (200..300).contains(&status);
    let mut sse = false;
    let mut session = None;
    let mut framing = Framing::UntilClose;
    for hd in resp.headers.iter() {
        if hd.name.eq_ignore_ascii_case("mcp-session-id") {
            session = Some(hd.value.trim_ascii().to_vec());
        } else if hd.name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(http::parse_content_length(hd.value).unwrap_or(0));
        } else if hd.name.eq_ignore_ascii_case("transfer-encoding")
            && http::has_token(hd.value, b"chunked")
        {
            framing = Framing::Chunked(ChunkedDecoder::new());
        } else if hd.name.eq_ignore_ascii_case("content-type") {
            sse = hd
                .value
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
        }
    }
    if matches!(resp.code, Some(202 | 204)) && matches!(framing, Framing::UntilClose) {
        framing = Framing::None;
    }
    let mut err = false;
    let mut body = Vec::new();
    let mut avail = buf.split_off(head_len.min(buf.len()));
    let mut done;
    loop {
        let (_, end) = collect_step(&mut framing, &avail, &mut body, &mut err);
        done = end;
        if body.len() > MAX_EXCHANGE_BODY {
            err = true;
        }
        if done || err {
            break;
        }
        avail.clear();
        let Ok((r, b)) =
            monoio::time::timeout_at(deadline, up.read_more(avail, super::READ_SIZE)).await
        else {
            err = true;
            break;
        };
        avail = b;
        if !matches!(r, Ok(n) if n > 0) {
            // The end of an until-close body; any other body was cut short.
            err |= !matches!(framing, Framing::UntilClose);
            done = !err;
            break;
        }
    }
    Exchanged {
        session,
        ok: ok && !err && done,
        answered: true,
        status,
        sse,
        body,
    }
}

/// Like [`body_step`], keeping the body's bytes (de-chunked) in `body`.
pub(crate) fn collect_step(
    framing: &mut Framing,
    avail: &[u8],
    body: &mut Vec<u8>,
    error: &mut bool,
) -> (usize, bool) {
    body_step_with(framing, avail, error, |d| body.extend_from_slice(d))
}

/// Largest whole JSON answer mcplb reads to rewrite it (the era bridges': a bigger one is cut,
/// [`over_bound`]).
pub(crate) const MAX_JSON_ANSWER: usize = 64 * 1024 * 1024;

/// What the bytes held in an [`over_bound`] check are.
#[derive(Clone, Copy)]
pub(crate) enum Held {
    /// An SSE event's first bytes (every whole event before them cut out): bounded by
    /// `proxy.max_sse_event_bytes`.
    Event,
    /// A whole JSON answer read so far: bounded by [`MAX_JSON_ANSWER`].
    Json,
}

/// Whether `held` bytes of an answer from backend `bi` of group `gi` that mcplb holds to read
/// it whole are past their bound: then the answer must be cut (and its connection not
/// reused), which is counted (`upstream_too_large`) and logged (the first in a window per
/// backend), naming the backend and the bound. Reading stops here, so the bytes held never
/// pass the bound by more than one read.
pub(crate) fn over_bound(core: &Core, gi: usize, bi: usize, held: usize, what: Held) -> bool {
    let bound = match what {
        Held::Event => core.shared.config.proxy.max_sse_event_bytes,
        Held::Json => MAX_JSON_ANSWER,
    };
    if held <= bound {
        return false;
    }
    too_large(core, gi, bi, bound, what);
    true
}

#[cold]
#[inline(never)]
fn too_large(core: &Core, gi: usize, bi: usize, bound: usize, what: Held) {
    core.rec
        .borrow_mut()
        .count(crate::control::stats::Counter::UpstreamTooLarge, 1);
    let backend = core.shared.config.backend(gi, bi);
    let name = backend.map_or("", |b| b.name.as_str());
    let (msg, setting) = match what {
        Held::Event => (
            "backend sent an SSE event over the bound: its answer was cut",
            "proxy.max_sse_event_bytes",
        ),
        Held::Json => (
            "backend sent a JSON answer over the bound: it was cut",
            "64 MiB",
        ),
    };
    if crate::control::logs::first_in_window(msg, name, setting) {
        tracing::warn!(backend = %name, bound, setting, "{msg}");
    }
}

/// [`collect_step`] into an event stream's bytes not yet cut into events (or a JSON answer's
/// read so far: [`PendingEvents::take_rest`] takes it whole).
pub(crate) fn collect_events_step(
    framing: &mut Framing,
    avail: &[u8],
    events: &mut PendingEvents,
    error: &mut bool,
) -> (usize, bool) {
    body_step_with(framing, avail, error, |d| events.extend(d))
}

/// What a request mcplb sends a virtual server's member says in the 2026-07-28 mirror
/// headers (`Mcp-Method`, `Mcp-Name`), which must match its own body, not the client's.
#[derive(Clone, Copy)]
pub(crate) struct Mirror<'a> {
    pub method: &'a str,
    pub name: Option<&'a str>,
    /// Replaces the client's `MCP-Protocol-Version` (a request the era bridge sends in its
    /// backend session goes at that session's revision). At 2026-07-28 the mirror headers are
    /// written even when the client (of the 2025 era) sent none.
    pub version: Option<&'a [u8]>,
}

/// Writes a request mcplb sends a virtual server's member on behalf of the client's `req`:
/// `http_method` to the backend's path, `Host` set to the backend, the client's headers as
/// [`build_request`] passes them, except `Last-Event-ID` (a member's stream has its own event
/// ids) and the mirror headers (written from `mirror` when the client sent them), the
/// member backend's session id, and `body`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_member_request(
    out: &mut Vec<u8>,
    req: &Request,
    forwarding: (&ClientAddress, &Hop),
    http_method: &[u8],
    body: &[u8],
    backend: &Backend,
    backend_sid: Option<&[u8]>,
    credential: &UpstreamCredential,
    mirror: &Mirror<'_>,
) {
    let strip_auth = !matches!(credential, UpstreamCredential::Forward);
    out.extend_from_slice(http_method);
    out.push(b' ');
    out.extend_from_slice(backend.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    out.extend_from_slice(backend.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut mirrored = false;
    let (fwd, hop) = forwarding;
    for (name, value) in req.headers() {
        if http::is_hop_by_hop(name)
            || req.connection_names(name)
            || client_address::is_replaced(fwd, name)
            || name.eq_ignore_ascii_case(b"last-event-id")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"mcp-method") || name.eq_ignore_ascii_case(b"mcp-name") {
            mirrored = true;
            continue;
        }
        if mirror.version.is_some() && name.eq_ignore_ascii_case(b"mcp-protocol-version") {
            continue;
        }
        if strip_auth
            && (name.eq_ignore_ascii_case(b"authorization")
                || name.eq_ignore_ascii_case(b"x-api-key"))
        {
            continue;
        }
        if http_method == b"POST"
            && (name.eq_ignore_ascii_case(b"content-type") || name.eq_ignore_ascii_case(b"accept"))
        {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if http_method == b"POST" {
        out.extend_from_slice(
            b"content-type: application/json\r\naccept: application/json, text/event-stream\r\n",
        );
    }
    client_address::write(out, fwd, hop, req);
    if mirrored || mirror.version == Some(crate::session::era::MODERN.as_bytes()) {
        let _ = write!(out, "mcp-method: {}\r\n", mirror.method);
        // A name with control characters cannot be a header value (nor came in one).
        if let Some(n) = mirror
            .name
            .filter(|n| !n.bytes().any(|b| b < 0x20 || b == 0x7f))
        {
            let _ = write!(out, "mcp-name: {n}\r\n");
        }
    }
    if let Some(v) = mirror.version {
        out.extend_from_slice(b"mcp-protocol-version: ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    if let UpstreamCredential::Inject(secret) = credential {
        out.extend_from_slice(b"authorization: ");
        out.extend_from_slice(secret.expose().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(sid) = backend_sid.filter(|s| !s.is_empty()) {
        out.extend_from_slice(b"mcp-session-id: ");
        out.extend_from_slice(sid);
        out.extend_from_slice(b"\r\n");
    }
    if http_method == b"POST" || !body.is_empty() {
        content_length(out, body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}
