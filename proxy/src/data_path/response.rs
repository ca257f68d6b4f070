//! Stage 6: the backend's answer, forwarded. The response head is classified and rewritten
//! by a plain function ([`rewrite_response_head`]: hop-by-hop headers dropped, a new
//! `Mcp-Session-Id` sealed, SSE marked unbuffered); the body is forwarded as it arrives:
//! `Content-Length` by count, chunked (every SSE stream) byte for byte through a chunk scanner
//! that finds its end, so the upstream connection can go back to the pool.

use std::future::Future as _;
use std::task::Poll;

use crate::control::stats::Gauge;
use crate::data_path::gather::{self, Gathered};
use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::data_path::{reply, upstream};
use crate::http::{self, ChunkedDecoder};
use crate::runtime::core::Core;
use crate::runtime::shutdown::ShutdownSignal;
use crate::runtime::SHUTDOWN;
use crate::session::{Owner, SessionSealer};
use crate::tls::{Conn, Incoming};

/// How the upstream response body is framed.
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// The parts of an upstream response head the body loop needs.
pub(crate) struct RespHead {
    pub status: u16,
    pub new_session: bool,
    pub framing: Framing,
    pub up_close: bool,
    pub is_sse: bool,
}

/// What a complete upstream head turned out to be.
pub(crate) enum HeadKind {
    /// An interim 1xx answer to skip.
    Interim,
    /// The final head; the rewritten client head (without its framing lines) is in `out`.
    Final(RespHead),
}

/// Parses an upstream response head and writes the client's head into `out`: hop-by-hop
/// headers dropped, a new `Mcp-Session-Id` sealed (with `owner`, the caller's, in groups with
/// authentication). Sync, so that the header array never lives across an await (it would
/// bloat every connection's task).
pub(crate) fn rewrite_response_head(
    sealer: &SessionSealer,
    owner: Option<&Owner>,
    head: &[u8],
    backend_tag: u32,
    current: Option<(&[u8], &[u8])>,
    out: &mut Vec<u8>,
) -> Result<HeadKind, &'static str> {
    rewrite_head(
        sealer,
        owner,
        head,
        backend_tag,
        current,
        (false, false, false),
        out,
    )
}

/// [`rewrite_response_head`]; with `sessionless`, the backend's `Mcp-Session-Id` is dropped
/// (the answer to a bridged 2026-07-28 request: the session is mcplb's, not the client's);
/// with `elicits`, a new session id remembers that its client declared `elicitation`; with
/// `own`, a successful answer that carries no `Mcp-Session-Id` (a server that issues no
/// session) gets one of mcplb's, naming no backend session, so that the client's later
/// requests say it declared `elicitation` (human approval can ask it).
fn rewrite_head(
    sealer: &SessionSealer,
    owner: Option<&Owner>,
    head: &[u8],
    backend_tag: u32,
    current: Option<(&[u8], &[u8])>,
    (sessionless, elicits, own): (bool, bool, bool),
    out: &mut Vec<u8>,
) -> Result<HeadKind, &'static str> {
    // Left uninitialised: initialising 128 headers wrote 4 KiB per answer (a cold wake-up
    // after an idle gap pays for every cache line of it).
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 128];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        head,
        &mut storage,
    );
    match parsed {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err("malformed response from backend"),
    }
    let status = resp.code.unwrap_or(502);
    if status < 100 {
        // httparse reads any three digits: "020" would go out as the two-digit "20".
        return Err("bad status code from backend");
    }
    if (100..200).contains(&status) && status != 101 {
        return Ok(HeadKind::Interim);
    }
    let mut up_close = resp.version == Some(0);
    let mut is_sse = false;
    let mut has_accel_header = false;
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut cl = None;
    let mut codings = http::TransferCodings::default();
    let mut new_session = false;
    let mut has_session = false;
    // Fields the backend's `Connection` names describe its hop only (RFC 9110 §7.6.1).
    let conn_fields = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("connection") && http::connection_names_fields(h.value)
    });
    for hd in resp.headers.iter() {
        let name = hd.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            cl = Some(
                http::parse_content_length(hd.value).ok_or("bad content-length from backend")?,
            );
            continue;
        }
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.add(hd.value);
            continue;
        }
        if name.eq_ignore_ascii_case(b"connection") {
            if http::has_token(hd.value, b"close") {
                up_close = true;
            } else if http::has_token(hd.value, b"keep-alive") && resp.version == Some(0) {
                up_close = false;
            }
            continue;
        }
        if name.eq_ignore_ascii_case(b"content-type")
            && hd
                .value
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
        {
            is_sse = true;
        }
        if name.eq_ignore_ascii_case(b"mcp-session-id") {
            if sessionless {
                continue;
            }
            has_session = true;
            out.extend_from_slice(b"mcp-session-id: ");
            match current {
                // The backend repeats the session's own id (some servers do on every
                // answer): give the client back the id it sent, not a fresh sealing of it.
                Some((sealed, backend_sid)) if backend_sid == hd.value.trim_ascii() => {
                    out.extend_from_slice(sealed);
                }
                _ => {
                    sealer
                        .seal_session(backend_tag, owner, elicits, hd.value.trim_ascii(), out)
                        .map_err(|_| "backend session id too long")?;
                    new_session = true;
                }
            }
            out.extend_from_slice(b"\r\n");
            continue;
        }
        if http::is_hop_by_hop(name) || (conn_fields && named_in_connection(resp.headers, name)) {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-accel-buffering") {
            has_accel_header = true;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(hd.value);
        out.extend_from_slice(b"\r\n");
    }
    if own && !has_session && !sessionless && (200..300).contains(&status) {
        out.extend_from_slice(b"mcp-session-id: ");
        sealer
            .seal_session(backend_tag, owner, elicits, b"", out)
            .map_err(|_| "session id could not be sealed")?;
        out.extend_from_slice(b"\r\n");
    }
    if is_sse && !has_accel_header {
        // Tell intermediaries (nginx and friends) not to buffer the stream.
        out.extend_from_slice(b"x-accel-buffering: no\r\n");
    }
    // Only a lone `chunked` is forwarded as such: another coding would reach the client
    // undeclared.
    let chunked = match codings.verdict() {
        http::TransferVerdict::Absent => false,
        http::TransferVerdict::Chunked => true,
        _ => return Err("unsupported transfer-encoding from backend"),
    };
    let framing = if status == 204 || status == 304 {
        Framing::None
    } else if chunked {
        Framing::Chunked(ChunkedDecoder::new())
    } else if let Some(n) = cl {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    Ok(HeadKind::Final(RespHead {
        status,
        new_session,
        framing,
        up_close,
        is_sse,
    }))
}

/// Whether a `Connection` field among `headers` names `name`.
fn named_in_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && http::has_token(h.value, name))
}

/// A backend's answer whose head has arrived.
pub(crate) struct Answer<'a> {
    /// The upstream connection it arrives on.
    pub up: &'a mut Conn,
    /// The bytes read so far: the head, then perhaps body bytes.
    pub buf: Vec<u8>,
    /// Length of the head in `buf`.
    pub head_len: usize,
    /// The backend's tag (sealed into new session ids).
    pub backend_tag: u32,
    /// The backend's session id the request carried.
    pub backend_sid: Option<&'a [u8]>,
    /// A standalone (GET) SSE stream, resumable by design: a shutdown ends it at once,
    /// cleanly, instead of waiting for it.
    pub end_on_shutdown: bool,
    /// The answer to a bridged 2026-07-28 request: the backend's session id stays with mcplb.
    pub sessionless: bool,
}

/// Reads past interim (1xx) answers and rewrites the final head into `c.out`: the head's
/// parts and its length in `a.buf`.
pub(crate) async fn final_head(
    core: &Core,
    c: &mut ClientConn,
    a: &mut Answer<'_>,
) -> Result<(RespHead, usize), Refusal> {
    let mut deadline = None;
    let mut head_len = a.head_len;
    loop {
        c.out.clear();
        let current = a.backend_sid.zip(c.req.session_id()).map(|(b, s)| (s, b));
        let head = a.buf.get(..head_len).unwrap_or_default();
        match rewrite_head(
            &core.shared.sealer,
            c.owner.as_ref(),
            head,
            a.backend_tag,
            current,
            (
                a.sessionless,
                c.meta.elicits,
                // A client that can be asked for approval, of a server that issues no session.
                c.meta.elicits && c.meta.method == protocol::Method::Initialize,
            ),
            &mut c.out,
        ) {
            Ok(HeadKind::Final(h)) => return Ok((h, head_len)),
            Ok(HeadKind::Interim) => {
                // Skip interim 1xx answers (we never send Expect upstream, but 103 may come).
                a.buf.drain(..head_len.min(a.buf.len()));
                let timeout = core.shared.config.proxy.upstream_timeout;
                let deadline =
                    *deadline.get_or_insert_with(|| crate::runtime::clock::monoio_now() + timeout);
                head_len = upstream::read_head(a.up, &mut a.buf, Some(deadline))
                    .await
                    .map_err(|_| Refusal::new(502, -32603, "backend closed the connection"))?;
            }
            Err(msg) => {
                let backend = c
                    .meta
                    .group
                    .zip(c.meta.backend)
                    .and_then(|(g, b)| core.shared.config.servers.get(g)?.backends.get(b));
                let name = backend.map_or("", |b| b.name.as_str());
                let what = "bad response head from backend";
                if crate::control::logs::first_in_window(what, name, msg) {
                    tracing::warn!(backend = name, error = msg, "{what}");
                }
                return Err(Refusal::new(502, -32603, msg));
            }
        }
    }
}

/// Advertises HTTP/3 (`Alt-Svc`) on an answer going out over HTTP/1.1 or HTTP/2.
fn alt_svc(core: &Core, c: &mut ClientConn) {
    if let Some(line) = &core.shared.alt_svc {
        if !matches!(c.stream, Conn::H3(_)) {
            c.out.extend_from_slice(line);
        }
    }
}

/// Forwards the answer to the client. Returns what to do with the client connection and
/// whether the upstream connection may be pooled.
pub(crate) async fn forward_response(
    core: &Core,
    c: &mut ClientConn,
    mut a: Answer<'_>,
    keep: bool,
) -> (Next, bool) {
    let (head, head_len) = match final_head(core, c, &mut a).await {
        Ok(x) => x,
        Err(r) => {
            c.ubuf = a.buf;
            return (reply::refuse(c, &r).await, false);
        }
    };
    let RespHead {
        status,
        new_session,
        mut framing,
        up_close,
        is_sse,
    } = head;
    c.meta.status = status;
    c.meta.new_session = new_session;
    if new_session {
        keep_new_session_id(c);
    }
    c.meta.sse = is_sse;
    let _sse_open = is_sse.then(|| SseOpen::new(core));
    // During a shutdown the answer tells the client this connection ends with it.
    let mut client_close = !keep || SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    let mut fill = c.cache_fill.take().filter(|_| status == 200);
    let filter = c.list_filter.take().filter(|_| status == 200);
    let wrap = c.confirm_wrap.take().filter(|_| status == 200);
    // A cached group's SSE answers are tapped as they pass (notifications evict; an answer
    // to keep is copied), and a `confirm_destructive` group's (a tools/list_changed makes its
    // tools unknown again), unless they are read whole below.
    let mut tap = None;
    if is_sse && filter.is_none() && wrap.is_none() {
        tap = super::cache::tap(core, gi_of(c), fill.take(), c.meta.watch_tools);
    }
    if fill.is_some() || filter.is_some() || wrap.is_some() {
        // A JSON answer the cache may keep, or a list the caller's policy filters: read
        // whole, sent with its (new) length.
        let (body, extra) = match read_whole(core, c, &mut a, head_len, &mut framing).await {
            Ok(x) => x,
            Err(r) => {
                c.ubuf = a.buf;
                return (reply::refuse(c, &r).await, false);
            }
        };
        if is_sse {
            if let Some(mut t) = super::cache::tap(core, gi_of(c), None, c.meta.watch_tools) {
                t.take(&body);
            }
        }
        if let Some(fill) = fill {
            super::cache::store(core, c, fill, &body, is_sse);
        }
        let body = match filter {
            Some(f) => match super::policy::filter_seen(core, &f, body, is_sse, c.req.id()) {
                Ok(b) => b,
                Err(r) => {
                    c.ubuf = a.buf;
                    return (reply::refuse(c, &r).await, false);
                }
            },
            None => body,
        };
        // The backend's own input rounds of a call its user approved carry the approval on.
        let body = match wrap {
            Some(f) => super::confirm::wrap_rounds(core, c.meta.group, &f, body, is_sse),
            None => body,
        };
        c.out.extend_from_slice(b"content-length: ");
        c.out
            .extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
        c.out.extend_from_slice(b"\r\n");
        alt_svc(core, c);
        if client_close {
            c.out.extend_from_slice(b"connection: close\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
        c.out.extend_from_slice(&body);
        c.ubuf = a.buf;
        let next = reply::send_out(c, Next::keep_unless(client_close)).await;
        let reusable = !up_close && !extra && !matches!(framing, Framing::UntilClose);
        return (next, reusable);
    }
    end_head(core, c, &framing, &mut client_close);

    // The rest of the body may already wait in the socket (a server that writes its head, its
    // event and its stream's end one right after the other, as the Python SDK's does): taken
    // with recvs that do not wait, it goes out with the head in one send instead of two or
    // three, and an answer that is then complete arms no upstream read (nor, for SSE, a client
    // watch).
    if let Conn::Plain(s) = &*a.up {
        take_waiting(s, &mut a.buf, head_len, &framing);
    }

    // Body bytes that came with the head (or right behind it).
    let mut framing_error = false;
    let avail = a.buf.get(head_len..).unwrap_or_default();
    // The tap sees de-chunked bytes: a notification's name is never cut by a chunk's size line.
    let (take, body_done) = match &mut tap {
        None => body_step(&mut framing, avail, &mut framing_error),
        Some(t) => body_step_with(&mut framing, avail, &mut framing_error, |d| t.take(d)),
    };
    let first = avail.get(..take).unwrap_or_default();
    let sniff_error = note_first_bytes(core, c, &framing, is_sse, body_done, first);
    c.out.extend_from_slice(first);
    let extra = body_done && take < avail.len();
    if body_done {
        c.meta.upstream_done = Some(crate::runtime::clock::now_ns());
    }
    if is_sse && take > 0 {
        c.meta.first_event = Some(crate::runtime::clock::now_ns());
    }
    // The head of an SSE answer to a request goes out with its first event (`gather`).
    let gathered = if is_sse && take == 0 && !body_done && !framing_error && holds_head(core, c, &a)
    {
        gather::first_bytes(core, c, a.up, &mut a.buf, &mut framing, tap.as_mut()).await
    } else {
        Gathered::Open
    };
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    c.meta.bytes_out += len as u64;
    let (w, mut out) = c.stream.write_range(out, 0..len).await;
    out.clear();
    c.out = out;
    if w.is_err() {
        c.ubuf = a.buf;
        return (Next::Close, false);
    }
    let streamed = if framing_error || gathered == Gathered::Cut {
        Err(())
    } else if body_done {
        Ok(extra)
    } else if let Gathered::Done { extra } = gathered {
        Ok(extra)
    } else {
        let watch = is_sse.then_some(Watch {
            client: true,
            shutdown: a.end_on_shutdown.then(ShutdownSignal::new),
        });
        let streamed = stream_body(
            core,
            c,
            a.up,
            &mut a.buf,
            &mut framing,
            watch,
            sniff_error,
            tap.as_mut(),
        );
        streamed.await
    };
    c.ubuf = a.buf;
    if let (Ok(_), Some(t)) = (&streamed, tap) {
        t.finish(core, c);
    }
    match streamed {
        Ok(extra) => {
            let reusable = !up_close && !extra && !matches!(framing, Framing::UntilClose);
            (Next::keep_unless(client_close), reusable)
        }
        Err(()) => (Next::Close, false),
    }
}

/// Whether an SSE answer's head waits for its first body bytes (see `gather`): an answer to
/// a POST of a method one response answers, with `proxy.sse_head_waits` on.
#[inline(always)]
fn holds_head(core: &Core, c: &ClientConn, a: &Answer<'_>) -> bool {
    core.shared.config.proxy.sse_head_waits
        && !a.end_on_shutdown
        && c.meta.method != protocol::Method::Other
}

/// Keeps the session id of a new session's answer, from the head written in `c.out`, for the
/// failover table (initialize answers only: off the hot path).
fn keep_new_session_id(c: &mut ClientConn) {
    c.new_sid.clear();
    if let Some(i) = memchr::memmem::find(&c.out, b"mcp-session-id: ") {
        let v = c.out.get(i + 16..).unwrap_or_default();
        let end = memchr::memchr(b'\r', v).unwrap_or(v.len());
        c.new_sid.extend_from_slice(&v[..end]);
    }
}

/// Ends the client's answer head in `c.out` for a body forwarded as it comes: its framing as
/// the backend's (an until-close body closes the client connection too: `client_close`), then
/// `alt-svc` and `connection: close` when they apply.
#[inline(always)]
fn end_head(core: &Core, c: &mut ClientConn, framing: &Framing, client_close: &mut bool) {
    match framing {
        Framing::None => c.out.extend_from_slice(b"content-length: 0\r\n"),
        Framing::Length(n) => {
            c.out.extend_from_slice(b"content-length: ");
            c.out
                .extend_from_slice(itoa::Buffer::new().format(*n).as_bytes());
            c.out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked(_) => c.out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::UntilClose => *client_close = true,
    }
    alt_svc(core, c);
    if *client_close {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
}

/// Notes what the body bytes that came with the head (`first`) say of the answer; returns
/// whether the JSON-RPC error code is still to be read, at the body's first read (a sampled
/// trace whose head came alone).
#[inline(always)]
fn note_first_bytes(
    core: &Core,
    c: &mut ClientConn,
    framing: &Framing,
    is_sse: bool,
    body_done: bool,
    first: &[u8],
) -> bool {
    // A JSON answer that arrived whole: note whether it is a JSON-RPC error. Only up to its
    // first `result`/`error` member is read (criterion, `--bench parse`: 54 ns on a small
    // answer and on an 8 KiB one, where the validating parse took 200 ns and 2.5 µs). SSE
    // answers and bodies spread over reads are not looked at.
    if body_done
        && !is_sse
        && matches!(framing, Framing::Length(_))
        && core.shared.config.proxy.stats
    {
        c.meta.jsonrpc_error = protocol::response_outcome(first) == Some(true);
    }
    // A sampled trace's span carries the JSON-RPC error code: read from the body's first
    // bytes, here or at its first read when the head came alone.
    let traced =
        !is_sse && matches!(framing, Framing::Length(_)) && c.trace.is_some_and(|t| t.sampled);
    if traced && !first.is_empty() {
        c.meta.rpc_code = protocol::response_error_code(first);
    }
    traced && first.is_empty()
}

/// What an SSE stream watches while it waits for its backend's next bytes (no total timeout
/// applies to it).
pub(crate) struct Watch {
    /// The client's side of the connection, until the client sends bytes (a pipelined
    /// request: from then on they wait in the socket and a close is noticed at the next write).
    pub client: bool,
    /// A standalone GET stream: the shutdown signal.
    pub shutdown: Option<ShutdownSignal>,
}

/// What ended the wait for a stream's next upstream bytes.
pub(crate) enum Waited {
    /// The upstream read completed.
    Read(std::io::Result<usize>, Vec<u8>),
    /// The client closed the connection or reset it.
    ClientLeft,
    /// A shutdown began (standalone GET streams only).
    Shutdown,
    /// No bytes within `upstream_timeout` (bodies that are not SSE streams).
    TimedOut,
}

/// Forwards the rest of a body as it arrives, until its framing says it ended: `Ok(extra)`
/// (whether bytes followed the body on the upstream connection), or `Err` when the body was
/// cut short (the client connection must close: mid-body, that is the only honest way to say
/// so): a side failed, the client left an SSE stream (noticed at once, not at the next
/// write: the upstream connection then closes, so the backend can stop its work), or a
/// shutdown ended a standalone GET stream (with its last chunk when it stood between chunks,
/// so the client sees a clean end and resumes elsewhere).
#[allow(clippy::too_many_arguments)]
async fn stream_body(
    core: &Core,
    c: &mut ClientConn,
    up: &mut Conn,
    ubuf: &mut Vec<u8>,
    framing: &mut Framing,
    mut watch: Option<Watch>,
    mut sniff_error: bool,
    mut tap: Option<&mut super::cache::Tap<'_>>,
) -> Result<bool, ()> {
    let is_sse = watch.is_some();
    loop {
        ubuf.clear();
        let b = std::mem::take(ubuf);
        let waited = match &mut watch {
            Some(w) => next_event(up, b, &mut c.stream, w).await,
            None => {
                let timeout = core.shared.config.proxy.upstream_timeout;
                match monoio::time::timeout(timeout, up.read_more(b, super::READ_SIZE)).await {
                    Ok((r, b)) => Waited::Read(r, b),
                    Err(_) => Waited::TimedOut,
                }
            }
        };
        let r = match waited {
            Waited::Read(r, b) => {
                *ubuf = b;
                r
            }
            Waited::Shutdown => {
                // The upstream read went with the wait, and its buffer with it.
                *ubuf = core.take_buf();
                end_cleanly(c, framing).await;
                return Err(());
            }
            Waited::ClientLeft | Waited::TimedOut => {
                *ubuf = core.take_buf();
                return Err(());
            }
        };
        if !matches!(r, Ok(n) if n > 0) {
            // EOF ends an until-close body; any other body is cut short.
            return Err(());
        }
        let Some((take, done)) = step_read(c, framing, tap.as_deref_mut(), ubuf, is_sse) else {
            return Err(());
        };
        if std::mem::take(&mut sniff_error) {
            c.meta.rpc_code = protocol::response_error_code(ubuf.get(..take).unwrap_or_default());
        }
        c.meta.bytes_out += take as u64;
        let (w, b) = c.stream.write_range(std::mem::take(ubuf), 0..take).await;
        *ubuf = b;
        if w.is_err() {
            return Err(());
        }
        if done {
            return Ok(take < ubuf.len());
        }
    }
}

/// One upstream read's body bytes (`bytes`) through the framing (and the tap, which sees them
/// de-chunked): `(take, done)`, how many of them to forward and whether the body ended, noted
/// in `c.meta` (`upstream_done`; an SSE stream's `first_event`); `None` on a framing error.
pub(crate) fn step_read(
    c: &mut ClientConn,
    framing: &mut Framing,
    tap: Option<&mut super::cache::Tap<'_>>,
    bytes: &[u8],
    is_sse: bool,
) -> Option<(usize, bool)> {
    let mut framing_error = false;
    let (take, done) = match tap {
        None => body_step(framing, bytes, &mut framing_error),
        Some(t) => body_step_with(framing, bytes, &mut framing_error, |d| t.take(d)),
    };
    if framing_error {
        return None;
    }
    if done {
        c.meta.upstream_done = Some(crate::runtime::clock::now_ns());
    }
    if is_sse && c.meta.first_event.is_none() && take > 0 {
        c.meta.first_event = Some(crate::runtime::clock::now_ns());
    }
    Some((take, done))
}

/// Waits for the next bytes of an SSE stream from `up` while watching the client and, for a
/// standalone GET stream, the shutdown signal. Only what the stream waits for costs anything:
/// short answers never come here.
pub(crate) async fn next_event(
    up: &mut Conn,
    mut buf: Vec<u8>,
    client: &mut Conn,
    w: &mut Watch,
) -> Waited {
    // Bytes already there (an answer's body right behind its head, a burst of events) are
    // taken without waiting, so no watch is armed for them: on io_uring the watch is a
    // POLL_ADD on the client socket and its ASYNC_CANCEL once the read completed, per read.
    if let Conn::Plain(s) = up {
        if let Some(r) = crate::tls::recv_now(s, &mut buf, super::READ_SIZE) {
            return Waited::Read(r, buf);
        }
    }
    let mut read = std::pin::pin!(up.read_more(buf, super::READ_SIZE));
    // Created lazily by the first poll; once it has answered it is never polled again.
    let mut peer = std::pin::pin!(client.peer_event());
    std::future::poll_fn(|cx| {
        if let Poll::Ready((r, b)) = read.as_mut().poll(cx) {
            return Poll::Ready(Waited::Read(r, b));
        }
        if w.client {
            match peer.as_mut().poll(cx) {
                Poll::Ready(Incoming::Bytes) => w.client = false,
                Poll::Ready(_) => return Poll::Ready(Waited::ClientLeft),
                Poll::Pending => {}
            }
        }
        if let Some(s) = &mut w.shutdown {
            if std::pin::Pin::new(s).poll(cx).is_ready() {
                return Poll::Ready(Waited::Shutdown);
            }
        }
        Poll::Pending
    })
    .await
}

/// Appends to `buf` (an answer's head, `head_len` bytes, then the body bytes read so far)
/// what `s` has already received of the body, while the body may not be complete yet (by a
/// cheap look: [`may_go_on`]), with at most [`TAKE_WAITING_RECVS`] recvs that do not wait
/// and never growing `buf`. An answer still incomplete costs one recv that finds nothing.
/// EOF or an error is left for the body's next read, which sees it again (a reset socket
/// reads as EOF after reporting the reset once: either way the body is cut short).
///
/// The first look is made in place: an answer that came whole with its head (the usual JSON
/// answer) makes no call. Out of line, that look cost 46 instructions a request, most of them
/// saving and restoring the registers of the recv path (callgrind, stateless, 64 connections).
#[inline(always)]
pub(crate) fn take_waiting(
    s: &monoio::net::TcpStream,
    buf: &mut Vec<u8>,
    head_len: usize,
    f: &Framing,
) {
    if may_go_on(f, buf.get(head_len..).unwrap_or_default()) {
        take_waiting_recvs(s, buf, head_len, f);
    }
}

/// [`take_waiting`]'s recvs, once its first look found that the body may go on.
#[inline(never)]
fn take_waiting_recvs(s: &monoio::net::TcpStream, buf: &mut Vec<u8>, head_len: usize, f: &Framing) {
    for _ in 0..TAKE_WAITING_RECVS {
        let body = buf.get(head_len..).unwrap_or_default();
        if !may_go_on(f, body) || buf.capacity() - buf.len() < 1024 {
            return;
        }
        match crate::tls::recv_now(s, buf, 0) {
            Some(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// How many recvs [`take_waiting`] makes at most (a head, an event and an end written apart
/// need two after the head's read).
const TAKE_WAITING_RECVS: usize = 3;

/// Whether a body whose first bytes are `body` may go on past them, by a look that costs
/// nothing: a length not reached yet; a chunked body that does not end with its last chunk
/// (a body that ends with those bytes inside a chunk only loses the early read); any body
/// framed by the connection's end.
#[inline(always)]
fn may_go_on(framing: &Framing, body: &[u8]) -> bool {
    match framing {
        Framing::None => false,
        Framing::Length(n) => (body.len() as u64) < *n,
        Framing::Chunked(_) => !body.ends_with(b"0\r\n\r\n"),
        Framing::UntilClose => true,
    }
}

/// Ends a stream the client may resume elsewhere: a chunked one that stands between chunks
/// gets its last chunk (a clean end of the answer); any other is only closed (an until-close
/// body ends that way; one cut inside a chunk cannot end cleanly).
async fn end_cleanly(c: &mut ClientConn, framing: &Framing) {
    if let Framing::Chunked(dec) = framing {
        if dec.at_chunk_start() {
            c.out.clear();
            c.out.extend_from_slice(http::LAST_CHUNK);
            reply::send_out(c, Next::Close).await;
        }
    }
}

/// Counts an SSE stream as open while it is forwarded (the gauge falls when this drops).
struct SseOpen<'a>(&'a Core);

impl<'a> SseOpen<'a> {
    fn new(core: &'a Core) -> Self {
        core.rec.borrow_mut().gauge(Gauge::SseOpen, 1);
        SseOpen(core)
    }
}

impl Drop for SseOpen<'_> {
    fn drop(&mut self) {
        if let Ok(mut rec) = self.0.rec.try_borrow_mut() {
            rec.gauge(Gauge::SseOpen, -1);
        }
    }
}

/// Advances the body framing over `avail`: how many bytes belong to the body, and whether the
/// body is complete.
pub(crate) fn body_step(framing: &mut Framing, avail: &[u8], error: &mut bool) -> (usize, bool) {
    body_step_with(framing, avail, error, |_| {})
}

/// [`body_step`], handing the body's bytes (de-chunked) to `data` as they are found.
pub(crate) fn body_step_with(
    framing: &mut Framing,
    avail: &[u8],
    error: &mut bool,
    mut data: impl FnMut(&[u8]),
) -> (usize, bool) {
    match framing {
        Framing::None => (0, true),
        Framing::Length(rem) => {
            let take = (*rem).min(avail.len() as u64);
            *rem -= take;
            data(avail.get(..take as usize).unwrap_or_default());
            (take as usize, *rem == 0)
        }
        Framing::Chunked(dec) => match dec.feed(avail, data) {
            Ok(n) => (n, dec.is_done()),
            Err(_) => {
                *error = true;
                (0, false)
            }
        },
        Framing::UntilClose => {
            data(avail);
            (avail.len(), false)
        }
    }
}

/// The group of the request being answered (every forwarded request has one).
fn gi_of(c: &ClientConn) -> usize {
    c.meta.group.unwrap_or(usize::MAX)
}

/// Largest answer read whole (to be kept by the cache or filtered by a policy); beyond it the
/// answer is refused (a filtered list must not reach the caller unfiltered).
const MAX_WHOLE_BYTES: usize = 16 * 1024 * 1024;

/// Reads an answer's whole body (after `head_len` in `a.buf`, framed by `framing`): the body,
/// de-chunked, and whether bytes followed it upstream.
async fn read_whole(
    core: &Core,
    c: &mut ClientConn,
    a: &mut Answer<'_>,
    head_len: usize,
    framing: &mut Framing,
) -> Result<(Vec<u8>, bool), Refusal> {
    let refused = |msg| Refusal::new(502, -32603, msg);
    let mut body = Vec::new();
    let mut start = head_len;
    let extra = loop {
        let avail = a.buf.get(start..).unwrap_or_default();
        let mut framing_error = false;
        let (take, done) = upstream::collect_step(framing, avail, &mut body, &mut framing_error);
        if framing_error {
            return Err(refused("bad chunked framing from backend"));
        }
        if done {
            break take < avail.len();
        }
        if body.len() > MAX_WHOLE_BYTES {
            return Err(refused("answer from backend too large to read whole"));
        }
        a.buf.clear();
        start = 0;
        let timeout = core.shared.config.proxy.upstream_timeout;
        let buf = std::mem::take(&mut a.buf);
        let read = monoio::time::timeout(timeout, a.up.read_more(buf, super::READ_SIZE)).await;
        match read {
            Ok((Ok(n), b)) if n > 0 => a.buf = b,
            Ok((_, b)) if matches!(framing, Framing::UntilClose) => {
                a.buf = b;
                break false;
            }
            Ok((_, b)) => {
                a.buf = b;
                return Err(refused("backend closed the connection"));
            }
            Err(_) => {
                a.buf = core.take_buf();
                return Err(refused("backend timed out"));
            }
        }
    };
    c.meta.upstream_done = Some(crate::runtime::clock::now_ns());
    Ok((body, extra))
}
