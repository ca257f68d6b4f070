//! A 2026-07-28 request to a 2025-era backend: the bytes of the era bridge. Which requests
//! are bridged, the session key, the `initialize` and what its answer means are decided by the
//! plain functions of `session::era`; this module sends mcplb's own requests (the era probe,
//! `initialize` and `notifications/initialized`) and keeps, per core, what it learned: each
//! backend's era and the backend sessions bridged requests share (keyed by what the request's
//! `_meta` declares and who sends it; re-opened when the backend drops one, see
//! `attempt::send`).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write as _;
use std::rc::Rc;

use lb::{UpstreamError, UpstreamErrorKind};

use crate::auth::UpstreamCredential;
use crate::config::{Backend, ServerGroup};
use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::data_path::{reply, upstream};
use crate::runtime::core::Core;
use crate::session::era::{self, EraRoute, Learned, SessionKey};

/// Most backend sessions a core keeps for bridged requests (past it, one is dropped; the
/// backend ends it when it expires).
const MAX_SESSIONS: usize = 256;

/// A backend session mcplb opened for 2026-07-28 requests.
pub(crate) struct BridgeSession {
    key: SessionKey,
    /// The backend's `Mcp-Session-Id` (none when it issued no session: stateless 2025 servers).
    pub sid: Option<Vec<u8>>,
    /// The revision the backend chose (the bridged requests' `MCP-Protocol-Version`).
    pub version: String,
    /// The `server/discover` result made from its `initialize` answer.
    pub discover: Vec<u8>,
}

/// What one core knows about its backends' eras and the sessions it holds on them.
#[derive(Default)]
pub(crate) struct Bridges {
    learned: RefCell<HashMap<(usize, usize), Learned>>,
    sessions: RefCell<HashMap<(usize, usize, u64), Rc<BridgeSession>>>,
}

impl Bridges {
    fn learned(&self, gi: usize, bi: usize) -> Learned {
        self.learned
            .borrow()
            .get(&(gi, bi))
            .copied()
            .unwrap_or_default()
    }

    /// Drops `s` (its backend answered 404: it no longer knows the session).
    pub(crate) fn forget(&self, gi: usize, bi: usize, s: &Rc<BridgeSession>) {
        let mut sessions = self.sessions.borrow_mut();
        let k = (gi, bi, s.key.hash);
        if sessions.get(&k).is_some_and(|held| Rc::ptr_eq(held, s)) {
            sessions.remove(&k);
        }
    }
}

/// Why a request could not be bridged.
pub(crate) enum Failed {
    /// The backend could not be reached or did not answer: as a failed attempt (the request
    /// itself was not sent).
    Upstream(UpstreamError),
    /// What to answer the client.
    Refuse(Refusal),
}

/// The backend session a request to backend `bi` of group `gi` goes through: `None` when it
/// goes as it is (not a 2026-07-28 request, bridging off, or a backend that serves
/// 2026-07-28 itself). Learns the backend's era first when the group says `auto` and this core
/// has not yet; opens a session when none matches.
pub(crate) async fn session_for(
    core: &Core,
    c: &ClientConn,
    gi: usize,
    bi: usize,
    modern: bool,
) -> Result<Option<Rc<BridgeSession>>, Failed> {
    if !modern {
        return Ok(None);
    }
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return Ok(None);
    };
    let learned = core.bridges.learned(gi, bi);
    match era::route(group.era_bridge, group.era, learned, Some(era::MODERN)) {
        EraRoute::Plain => return Ok(None),
        EraRoute::Bridge => {}
        EraRoute::Probe => {
            let learned = probe(core, gi, bi, group, backend).await?;
            core.bridges.learned.borrow_mut().insert((gi, bi), learned);
            tracing::info!(
                server = %group.name,
                backend = %backend.name,
                era = if learned == Learned::Stateless { "2026-07-28" } else { "2025" },
                "backend era learned (era = \"auto\")"
            );
            if learned == Learned::Stateless {
                return Ok(None);
            }
        }
    }
    let Some(declared) = era::declared(c.req.body()) else {
        return Err(Failed::Refuse(Refusal::new(
            400,
            -32602,
            "params._meta of this 2026-07-28 request is not an object of the spec's shape \
             (clientCapabilities must be an object): mcplb cannot open a 2025-era backend \
             session for it",
        )));
    };
    let forwarded = matches!(group.auth.upstream, UpstreamCredential::Forward);
    let owner = c.owner.as_ref().map_or(&[][..], |o| &o.as_bytes()[..]);
    let cred = |name: &[u8]| {
        forwarded
            .then(|| c.req.header(name))
            .flatten()
            .unwrap_or_default()
    };
    let parts = era::key_parts(
        &declared,
        [owner, cred(b"authorization"), cred(b"x-api-key")],
    );
    let hash = era::key_hash(&parts);
    if let Some(s) = core.bridges.sessions.borrow().get(&(gi, bi, hash)) {
        if s.key.matches(&parts) {
            return Ok(Some(s.clone()));
        }
    }
    let init = era::initialize_body(&declared);
    let answer = own_exchange(
        core,
        c,
        gi,
        bi,
        group,
        backend,
        Own::Initialize,
        None,
        &init,
    )
    .await?;
    let message = era::answer_message(&answer.body, answer.sse);
    let opened = match (answer.ok, message) {
        (true, Some(m)) => era::initialized(&m),
        (_, Some(m)) if m.get("error").is_some() => era::initialized(&m),
        _ => Err(format!(
            "the backend answered initialize with HTTP {} and no JSON-RPC answer",
            answer.status
        )),
    };
    let opened = opened.map_err(|why| {
        let what = "era bridge: cannot open a backend session";
        if crate::control::logs::first_in_window(what, &backend.name, "") {
            tracing::warn!(backend = %backend.name, error = %why, "{what}");
        }
        Failed::Refuse(Refusal::new(
            502,
            -32603,
            "the 2025-era backend refused the session mcplb opens to bridge this 2026-07-28 \
             request (see mcplb's log)",
        ))
    })?;
    if let Some(sid) = &answer.session {
        let note = own_exchange(
            core,
            c,
            gi,
            bi,
            group,
            backend,
            Own::Initialized(&opened.protocol_version),
            Some(sid),
            era::INITIALIZED,
        )
        .await?;
        if !note.ok {
            return Err(Failed::Refuse(Refusal::new(
                502,
                -32603,
                "the 2025-era backend refused notifications/initialized on the session mcplb \
                 opened to bridge this 2026-07-28 request",
            )));
        }
    }
    let session = Rc::new(BridgeSession {
        key: SessionKey::of(&parts),
        sid: answer.session,
        version: opened.protocol_version,
        discover: opened.discover,
    });
    let mut sessions = core.bridges.sessions.borrow_mut();
    if sessions.len() >= MAX_SESSIONS {
        if let Some(k) = sessions.keys().next().copied() {
            sessions.remove(&k);
        }
    }
    sessions.insert((gi, bi, hash), session.clone());
    Ok(Some(session))
}

/// Largest error body read to tell whether a 400 answer is about the session.
const MAX_REFUSAL: u64 = 64 * 1024;

/// Whether the answer whose head (`head_len` bytes) is in `buf` says the backend does not know
/// the bridged session (`session::era::session_lost`). For a 400, its body (by
/// `Content-Length`, up to 64 KiB) is read into `buf` after the head first, so the answer can
/// still be forwarded from `buf` when it is not.
pub(crate) async fn session_lost(
    core: &Core,
    up: &mut crate::tls::Conn,
    buf: &mut Vec<u8>,
    head_len: usize,
) -> bool {
    let head = buf.get(..head_len).unwrap_or_default();
    match era::status_of(head) {
        Some(404) => return true,
        Some(400) => {}
        _ => return false,
    }
    let mut storage = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut storage);
    if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let Some(len) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| crate::http::parse_content_length(h.value))
        .filter(|n| *n <= MAX_REFUSAL)
    else {
        return false;
    };
    let want = head_len + len as usize;
    let deadline = monoio::time::Instant::now() + core.shared.config.proxy.upstream_timeout;
    while buf.len() < want {
        let b = std::mem::take(buf);
        match monoio::time::timeout_at(deadline, up.read_more(b, super::READ_SIZE)).await {
            Ok((r, b)) => {
                *buf = b;
                if !matches!(r, Ok(n) if n > 0) {
                    return false;
                }
            }
            // The buffer went with the cancelled read: the answer cannot be forwarded either.
            Err(_) => return true,
        }
    }
    era::session_lost(400, buf.get(head_len..want).unwrap_or_default())
}

/// Answers a bridged `server/discover` from the session's `initialize`.
pub(crate) async fn answer_discover(c: &mut ClientConn, s: &BridgeSession) -> Next {
    let mut body = Vec::with_capacity(s.discover.len() + 48);
    era::discover_answer(&mut body, c.req.id().unwrap_or_default(), &s.discover);
    let next = reply::document(c, 200, &body, "").await;
    // Answered by mcplb, but for the backend it stands for.
    c.meta.by_proxy = false;
    next
}

/// Learns backend `bi`'s era: a `server/discover` of mcplb's own.
async fn probe(
    core: &Core,
    gi: usize,
    bi: usize,
    group: &ServerGroup,
    backend: &Backend,
) -> Result<Learned, Failed> {
    let body = era::probe_body();
    let answer =
        own_exchange_on(core, gi, bi, group, backend, Own::Probe, None, &body, None).await?;
    let message = era::answer_message(&answer.body, answer.sse);
    Ok(era::probe_verdict(answer.ok, message.as_ref()))
}

/// Which of mcplb's own requests.
#[derive(Clone, Copy)]
enum Own<'a> {
    Probe,
    Initialize,
    /// `notifications/initialized`, at the negotiated revision.
    Initialized(&'a str),
}

/// Sends one of mcplb's own requests for the client's request in `c` (its forwarded
/// credentials go along).
#[allow(clippy::too_many_arguments)]
async fn own_exchange(
    core: &Core,
    c: &ClientConn,
    gi: usize,
    bi: usize,
    group: &ServerGroup,
    backend: &Backend,
    own: Own<'_>,
    sid: Option<&[u8]>,
    body: &[u8],
) -> Result<upstream::Exchanged, Failed> {
    own_exchange_on(core, gi, bi, group, backend, own, sid, body, Some(c)).await
}

/// Sends one of mcplb's own requests to backend `bi` and reads its whole answer: on a pooled
/// connection, then once more on a new one if that one had closed (the keep-alive race).
#[allow(clippy::too_many_arguments)]
async fn own_exchange_on(
    core: &Core,
    gi: usize,
    bi: usize,
    group: &ServerGroup,
    backend: &Backend,
    own: Own<'_>,
    sid: Option<&[u8]>,
    body: &[u8],
    client: Option<&ClientConn>,
) -> Result<upstream::Exchanged, Failed> {
    let mut fresh = false;
    loop {
        let (mut up, reused) = core
            .upstream(gi, bi, fresh)
            .await
            .map_err(Failed::Upstream)?;
        let req = own_request(backend, group, own, sid, body, client);
        let deadline = monoio::time::Instant::now() + core.shared.config.proxy.upstream_timeout;
        let answer = upstream::exchange(&mut up, req, deadline).await;
        if answer.answered {
            if answer.ok {
                core.put_upstream(gi, bi, up);
            }
            return Ok(answer);
        }
        if reused && !fresh {
            fresh = true;
            continue;
        }
        // The client's request was not written: as a write that failed (it may go to a new
        // connection or another backend; never as one that may have run).
        return Err(Failed::Upstream(UpstreamError::new(
            UpstreamErrorKind::WriteFailed,
            reused,
            false,
        )));
    }
}

/// The bytes of one of mcplb's own requests: the backend's path and authority, the upstream
/// credential the group says (the client's own when it forwards them), the revision and
/// session headers, the body.
fn own_request(
    backend: &Backend,
    group: &ServerGroup,
    own: Own<'_>,
    sid: Option<&[u8]>,
    body: &[u8],
    client: Option<&ClientConn>,
) -> Vec<u8> {
    let mut req = Vec::with_capacity(body.len() + 384);
    let _ = write!(
        req,
        "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n",
        backend.path, backend.authority
    );
    match own {
        Own::Probe => {
            let _ = write!(
                req,
                "mcp-protocol-version: {}\r\nmcp-method: server/discover\r\n",
                era::MODERN
            );
        }
        Own::Initialize => {}
        Own::Initialized(v) => {
            let _ = write!(req, "mcp-protocol-version: {v}\r\n");
        }
    }
    if let Some(sid) = sid {
        req.extend_from_slice(b"mcp-session-id: ");
        req.extend_from_slice(sid);
        req.extend_from_slice(b"\r\n");
    }
    match (&group.auth.upstream, client) {
        (UpstreamCredential::Inject(secret), _) => {
            let _ = write!(req, "authorization: {}\r\n", secret.expose());
        }
        (UpstreamCredential::Forward, Some(c)) => {
            for name in [&b"authorization"[..], b"x-api-key"] {
                if let Some(v) = c.req.header(name) {
                    req.extend_from_slice(name);
                    req.extend_from_slice(b": ");
                    req.extend_from_slice(v);
                    req.extend_from_slice(b"\r\n");
                }
            }
        }
        _ => {}
    }
    let _ = write!(req, "content-length: {}\r\n\r\n", body.len());
    req.extend_from_slice(body);
    req
}

/// Largest whole JSON answer to a bridged request mcplb rewrites (a bigger one is cut: 502).
const MAX_JSON_ANSWER: usize = 64 * 1024 * 1024;

/// Forwards a 2025-era backend's answer to a bridged request, made what the 2026-07-28 wire
/// requires (`session::era::modern_answer`): a JSON answer whole, an SSE stream event by
/// event as the events arrive (progress and other notifications unchanged). Returns what to
/// do with the client connection and whether the upstream connection may be pooled.
pub(crate) async fn forward(
    core: &Core,
    c: &mut ClientConn,
    mut a: crate::data_path::response::Answer<'_>,
    keep: bool,
) -> (Next, bool) {
    use crate::data_path::response::{self, Framing};
    let (head, head_len) = match response::final_head(core, c, &mut a).await {
        Ok(x) => x,
        Err(r) => {
            c.ubuf = a.buf;
            return (reply::refuse(c, &r).await, false);
        }
    };
    let method = c.meta.method;
    c.meta.status = head.status;
    c.meta.sse = head.is_sse;
    let mut framing = head.framing;
    let client_close = !keep || crate::runtime::SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    let mut avail = a.buf.split_off(head_len.min(a.buf.len()));
    c.ubuf = std::mem::take(&mut a.buf);
    let mut pending = Vec::new();
    let mut err = false;
    let mut done = false;
    if head.is_sse {
        c.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if client_close && head.is_sse {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    if head.is_sse {
        c.out.extend_from_slice(b"\r\n");
        if !send(c).await {
            return (Next::Close, false);
        }
    }
    let mut chunk = Vec::new();
    loop {
        let (_, end) = upstream::collect_step(&mut framing, &avail, &mut pending, &mut err);
        done = done || end;
        if err || pending.len() > MAX_JSON_ANSWER {
            err = true;
            break;
        }
        if head.is_sse {
            chunk.clear();
            while let Some(n) = era::event_end(&pending) {
                era::rewrite_event(method, pending.get(..n).unwrap_or_default(), &mut chunk);
                pending.drain(..n);
            }
            if done {
                // An event the stream did not end with a blank line goes as it is.
                chunk.append(&mut pending);
            }
            if !chunk.is_empty() {
                c.meta
                    .first_event
                    .get_or_insert_with(std::time::Instant::now);
                let _ = write!(c.out, "{:x}\r\n", chunk.len());
                c.out.extend_from_slice(&chunk);
                c.out.extend_from_slice(b"\r\n");
            }
            if done {
                c.out.extend_from_slice(crate::http::LAST_CHUNK);
            }
            if !c.out.is_empty() && !send(c).await {
                return (Next::Close, false);
            }
        }
        if done {
            break;
        }
        avail.clear();
        let read = a.up.read_more(avail, super::READ_SIZE);
        let (r, b) = if head.is_sse {
            // No total timeout on a stream (a tool call may stream for minutes).
            read.await
        } else {
            let timeout = core.shared.config.proxy.upstream_timeout;
            match monoio::time::timeout(timeout, read).await {
                Ok(x) => x,
                Err(_) => {
                    err = true;
                    avail = Vec::new();
                    break;
                }
            }
        };
        avail = b;
        if !matches!(r, Ok(n) if n > 0) {
            if matches!(framing, Framing::UntilClose) {
                done = true;
                avail.clear();
                continue;
            }
            err = true;
            break;
        }
    }
    drop(avail);
    c.meta.upstream_done = Some(std::time::Instant::now());
    if head.is_sse {
        let reusable = done && !err && !head.up_close && !matches!(framing, Framing::UntilClose);
        let next = if err {
            Next::Close
        } else {
            Next::keep_unless(client_close)
        };
        return (next, reusable);
    }
    if err {
        let r = Refusal::new(502, -32603, "the backend's answer was cut short");
        return (reply::refuse(c, &r).await, false);
    }
    let body = match era::modern_answer(method, &pending) {
        Some(b) => b,
        None => pending,
    };
    let _ = write!(c.out, "content-length: {}\r\n", body.len());
    if client_close {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(&body);
    if !send(c).await {
        return (Next::Close, false);
    }
    let reusable = !head.up_close && !matches!(framing, Framing::UntilClose);
    (Next::keep_unless(client_close), reusable)
}

/// Writes `c.out` to the client: whether it went.
async fn send(c: &mut ClientConn) -> bool {
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    c.meta.bytes_out += len as u64;
    let (w, mut out) = c.stream.write_range(out, 0..len).await;
    out.clear();
    c.out = out;
    w.is_ok()
}
