//! The bytes of the era bridge; what they mean is decided by the plain functions of
//! `session::era`.
//!
//! A 2026-07-28 request to a 2025-era backend: this module sends mcplb's own requests (the era
//! probe, `initialize`, `notifications/initialized`, the answers to the backend's requests)
//! and keeps, per core, what it learned: each backend's era and the backend sessions bridged
//! requests share (keyed by what the request's `_meta` declares and who sends it; re-opened
//! when the backend drops one, see `attempt::EraHook`). It relays the answers, rewritten event by
//! event, and parks a call whose backend asks for input until the client's retry (`resume`).
//!
//! A 2025-era client of a 2026-07-28-only backend: its `initialize` answered from the
//! backend's `server/discover` ([`answer_initialize`]), and what such a backend has no use for
//! answered here ([`answer_locally`]).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use lb::{UpstreamError, UpstreamErrorKind};
use protocol::sse::PendingEvents;
use protocol::Method;

use crate::auth::UpstreamCredential;
use crate::config::{Backend, BackendEra, ServerGroup};
use crate::data_path::cache as response_cache;
use crate::data_path::request::EraInput;
use crate::data_path::request::{ClientConn, Next, Refusal, Request};
use crate::data_path::response::{self, Answer, Framing};
use crate::data_path::upstream::Held;
use crate::data_path::{policy, reply, upstream};
use crate::runtime::core::Core;
use crate::session::era::{self, CallState, EraRoute, Learned, SessionKey};
use crate::session::Owner;
use crate::tls::Conn;

/// Most backend sessions a core keeps for bridged requests (past it, the least recently used
/// is ended: `era_sessions`).
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
    /// When a request last took it (or a call of it last waited for input).
    pub(super) last_used: Cell<Instant>,
}

impl BridgeSession {
    /// The session a call resumed on another core goes on in (not pooled there).
    pub(super) fn detached(sid: Option<Vec<u8>>, version: String) -> BridgeSession {
        BridgeSession {
            key: SessionKey::of(&[b"", b"", b"", b"", b""]),
            sid,
            version,
            discover: Vec::new(),
            last_used: Cell::new(Instant::now()),
        }
    }
}

/// What one core knows about its backends' eras and the sessions it holds on them.
pub(crate) struct Bridges {
    /// `learned[group][backend]`.
    learned: Vec<Vec<Cell<Learned>>>,
    pub(super) sessions: RefCell<HashMap<(usize, usize, u64), Rc<BridgeSession>>>,
    /// Calls waiting for their client's input, by token.
    parked: RefCell<HashMap<u64, Parked>>,
    /// A task ends this core's idle sessions (`era_sessions::sweep`).
    pub(super) sweeping: Cell<bool>,
}

impl Bridges {
    /// Nothing learned or held yet, for the groups of `config`.
    pub(crate) fn new(config: &crate::config::Config) -> Bridges {
        Bridges {
            learned: config
                .servers
                .iter()
                .map(|g| vec![Cell::new(Learned::Unknown); g.backends.len()])
                .collect(),
            sessions: Default::default(),
            parked: Default::default(),
            sweeping: Cell::new(false),
        }
    }

    fn learned(&self, gi: usize, bi: usize) -> Learned {
        self.learned
            .get(gi)
            .and_then(|g| g.get(bi))
            .map_or(Learned::Unknown, Cell::get)
    }

    /// Whether this core has learned that every backend of group `gi` serves 2026-07-28
    /// requests itself (`era = "auto"`): its 2026-07-28 requests then take the plain path.
    pub(crate) fn all_stateless(&self, gi: usize) -> bool {
        self.learned
            .get(gi)
            .is_some_and(|g| g.iter().all(|l| l.get() == Learned::Stateless))
    }

    fn learn(&self, gi: usize, bi: usize, l: Learned) {
        if let Some(cell) = self.learned.get(gi).and_then(|g| g.get(bi)) {
            cell.set(l);
        }
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

/// The 2026-07-28 request a backend session is for: the client's request (its forwarded
/// credentials), the JSON-RPC body going to the backend (what its `_meta` declares), and the
/// caller's owner digest.
pub(crate) struct Asker<'a> {
    pub req: &'a Request,
    pub body: &'a [u8],
    pub owner: Option<&'a Owner>,
}

/// A backend session a request goes through, and the request's `params._meta` (raw) as
/// read to find it: the body the session takes is made from it without a second parse
/// (`session::era::session_request_at`).
pub(crate) struct Bridged<'a> {
    pub session: Rc<BridgeSession>,
    pub meta: Option<&'a [u8]>,
}

/// The backend session a request to backend `bi` of group `gi` goes through: `None` when it
/// goes as it is (not a 2026-07-28 request, bridging off, or a backend that serves
/// 2026-07-28 itself). Learns the backend's era first when the group says `auto` and this core
/// has not yet; opens a session when none matches. A plain group's requests and a virtual
/// server's requests to its members (each a group of its own) share these sessions.
pub(crate) async fn session_for<'a>(
    core: &Core,
    c: &Asker<'a>,
    gi: usize,
    bi: usize,
    modern: bool,
) -> Result<Option<Bridged<'a>>, Failed> {
    if !modern {
        return Ok(None);
    }
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return Ok(None);
    };
    if !group.era_bridge || group.era == BackendEra::Stateless {
        return Ok(None);
    }
    let learned = core.bridges.learned(gi, bi);
    match era::route(group.era_bridge, group.era, learned, Some(era::MODERN)) {
        EraRoute::Plain => return Ok(None),
        EraRoute::Bridge => {}
        EraRoute::Probe => {
            let learned = probe(core, gi, bi, group, backend).await?;
            core.bridges.learn(gi, bi, learned);
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
    let Some(declared) = era::declared(c.body) else {
        return Err(Failed::Refuse(Refusal::new(
            400,
            -32602,
            "params._meta of this 2026-07-28 request is not an object of the spec's shape \
             (clientCapabilities must be an object): mcplb cannot open a 2025-era backend \
             session for it",
        )));
    };
    let forwarded = matches!(group.auth.upstream, UpstreamCredential::Forward);
    let owner = c.owner.map_or(&[][..], |o| &o.as_bytes()[..]);
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
            s.last_used.set(Instant::now());
            return Ok(Some(Bridged {
                session: s.clone(),
                meta: declared.meta,
            }));
        }
    }
    let init = era::initialize_body(&declared);
    let answer = own_exchange(
        core,
        c.req,
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
            c.req,
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
        last_used: Cell::new(Instant::now()),
    });
    let evicted = {
        let mut sessions = core.bridges.sessions.borrow_mut();
        let evicted = if sessions.len() >= MAX_SESSIONS {
            super::era_sessions::evict(&mut sessions)
        } else {
            None
        };
        sessions.insert((gi, bi, hash), session.clone());
        evicted
    };
    if let Some(old) = evicted {
        super::era_sessions::end_later(core, old);
    }
    super::era_sessions::start_sweeping(core);
    Ok(Some(Bridged {
        session,
        meta: declared.meta,
    }))
}

/// Largest error body read to tell whether a 400 answer is about the session.
const MAX_REFUSAL: u64 = 64 * 1024;

/// Whether the answer whose head (`head_len` bytes) is in `buf` says the backend does not know
/// the bridged session (`session::era::session_lost`). For a 400, its body (by
/// `Content-Length`, up to 64 KiB) is read into `buf` after the head first, so the answer can
/// still be forwarded from `buf` when it is not.
pub(crate) async fn session_lost(
    core: &Core,
    up: &mut Conn,
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

/// Answers a bridged `server/discover` from the session's `initialize` (kept in the group's
/// cache when it has one: the backend gave no hints, so under the group's defaults).
pub(crate) async fn answer_discover(core: &Core, c: &mut ClientConn, s: &BridgeSession) -> Next {
    let mut body = Vec::with_capacity(s.discover.len() + 48);
    era::result_answer(&mut body, c.req.id().unwrap_or_default(), &s.discover);
    if let Some(fill) = c.cache_fill.take() {
        response_cache::store_bridged(core, c, fill, None, (&body, false));
    }
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
pub(super) enum Own<'a> {
    Probe,
    Initialize,
    /// `notifications/initialized`, at the negotiated revision (and any request in the
    /// session at that revision).
    Initialized(&'a str),
    /// The session's standalone stream (a GET, no body), at the negotiated revision.
    Stream(&'a str),
    /// The session's end (a DELETE, no body), at the negotiated revision.
    End(&'a str),
    /// A 2026-07-28 `subscriptions/listen`.
    Listen,
}

/// Sends one of mcplb's own requests for the client's request in `c` (its forwarded
/// credentials go along).
#[allow(clippy::too_many_arguments)]
pub(super) async fn own_exchange(
    core: &Core,
    c: &Request,
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
pub(super) async fn own_exchange_on(
    core: &Core,
    gi: usize,
    bi: usize,
    group: &ServerGroup,
    backend: &Backend,
    own: Own<'_>,
    sid: Option<&[u8]>,
    body: &[u8],
    client: Option<&Request>,
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
pub(super) fn own_request(
    backend: &Backend,
    group: &ServerGroup,
    own: Own<'_>,
    sid: Option<&[u8]>,
    body: &[u8],
    client: Option<&Request>,
) -> Vec<u8> {
    let mut req = Vec::with_capacity(body.len() + 384);
    if let Own::Stream(v) | Own::End(v) = own {
        let (method, accept) = match own {
            Own::Stream(_) => ("GET", "text/event-stream"),
            _ => ("DELETE", "application/json, text/event-stream"),
        };
        let _ = write!(
            req,
            "{method} {} HTTP/1.1\r\nhost: {}\r\naccept: {accept}\r\nmcp-protocol-version: {v}\r\n",
            backend.path, backend.authority
        );
    } else {
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\n",
            backend.path, backend.authority
        );
    }
    match own {
        Own::Stream(_) | Own::End(_) => {}
        Own::Listen => {
            let _ = write!(
                req,
                "mcp-protocol-version: {}\r\nmcp-method: subscriptions/listen\r\n",
                era::MODERN
            );
        }
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
                if let Some(v) = c.header(name) {
                    req.extend_from_slice(name);
                    req.extend_from_slice(b": ");
                    req.extend_from_slice(v);
                    req.extend_from_slice(b"\r\n");
                }
            }
        }
        _ => {}
    }
    // The client's Origin goes along, so that a backend's DNS-rebinding check applies to the
    // requests mcplb makes for it as to the client's own.
    if let Some(origin) = client.and_then(|c| c.header(b"origin")) {
        req.extend_from_slice(b"origin: ");
        req.extend_from_slice(origin);
        req.extend_from_slice(b"\r\n");
    }
    if matches!(own, Own::Stream(_) | Own::End(_)) {
        req.extend_from_slice(b"\r\n");
        return req;
    }
    let _ = write!(req, "content-length: {}\r\n\r\n", body.len());
    req.extend_from_slice(body);
    req
}

/// Most calls one core keeps waiting for their client's input.
const MAX_PARKED: usize = 128;
/// How long a call waits for the client's retry with its input.
const PARK_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a bridged call's answer comes from.
pub(crate) struct Leg {
    pub gi: usize,
    pub bi: usize,
    pub session: Rc<BridgeSession>,
    pub backend_tag: u32,
    /// The backend's input requests answered so far, and those a replay answers.
    pub rounds: Rounds,
}

/// The input rounds of one bridged call: those answered (each new request state carries
/// them, so another replica can replay the call) and, in a replay, the answers the client
/// gave in earlier rounds, for the backend's input requests as they come again.
#[derive(Default)]
pub(crate) struct Rounds {
    answered: Vec<era::Answered>,
    script: std::collections::VecDeque<era::Answered>,
    /// The call's JSON-RPC id as its backend knows it, when that is not the id of the request
    /// being answered (a call resumed by a retry).
    call_id: Option<Vec<u8>>,
}

impl Rounds {
    /// The rounds of a replay: the answers of `r` and the retry's `input` to its last request.
    fn replay(r: era::Replay, input: &serde_json::value::RawValue) -> Rounds {
        let mut script: std::collections::VecDeque<era::Answered> = r.done.into();
        script.push_back(era::Answered {
            m: r.ask.m,
            p: r.ask.p,
            r: input.to_owned(),
        });
        Rounds {
            answered: Vec::new(),
            script,
            call_id: None,
        }
    }

    /// The client's answer, from an earlier round, to the backend's next input request
    /// (`sig`), in order: `None` when the replay holds none for it (the backend asks
    /// something else: the rest of the script is dropped, the client is asked).
    fn answer(&mut self, sig: &era::Sig) -> Option<Box<serde_json::value::RawValue>> {
        let next = self.script.pop_front()?;
        if !next.answers(sig) {
            self.script.clear();
            return None;
        }
        let r = next.r.clone();
        self.answered.push(next);
        Some(r)
    }
}

/// A backend's SSE answer being relayed: the connection, its framing, and the de-chunked bytes
/// not yet relayed.
pub(super) struct Source {
    pub up: Conn,
    pub framing: Framing,
    pub pending: PendingEvents,
    pub avail: Vec<u8>,
    pub up_close: bool,
}

/// A bridged call whose backend asked its client for input: it waits here, its stream open,
/// for the client's retry (`resume`).
pub(crate) struct Parked {
    src: Source,
    leg: Leg,
    method: Method,
    /// The backend's request (raw id) the client's input answers.
    ask_id: Vec<u8>,
    /// What that request was (the round answered goes into the next state).
    ask_sig: era::Sig,
    /// The call's JSON-RPC id as the backend knows it (for its cancellation).
    call_id: Vec<u8>,
    since: Instant,
}

/// A parked call whose backend connection is plain TCP, held for every core (a retry may reach
/// any worker): the connection as a file descriptor of its own, the rest as plain data.
struct Waiting {
    fd: std::os::fd::OwnedFd,
    framing: Framing,
    pending: PendingEvents,
    up_close: bool,
    gi: usize,
    bi: usize,
    backend_tag: u32,
    sid: Option<Vec<u8>>,
    version: String,
    method: Method,
    ask_id: Vec<u8>,
    ask_sig: era::Sig,
    answered: Vec<era::Answered>,
    call_id: Vec<u8>,
    since: Instant,
}

/// Calls waiting for input whose backend connection any core can take over, by token. A
/// mutex, off the request path: touched only when a backend asks for input and at the retry.
static WAITING: std::sync::Mutex<Option<HashMap<u64, Waiting>>> = std::sync::Mutex::new(None);

/// Holds `w` for any core.
fn hold(token: u64, w: Waiting) {
    let Ok(mut held) = WAITING.lock() else {
        return;
    };
    let held = held.get_or_insert_with(HashMap::new);
    if held.len() >= MAX_PARKED * 8 {
        if let Some(k) = held.keys().next().copied() {
            held.remove(&k);
        }
    }
    held.insert(token, w);
}

/// Takes the call held under `token`, if it is still waiting.
fn take_held(token: u64) -> Option<Waiting> {
    let w = WAITING.lock().ok()?.as_mut()?.remove(&token)?;
    (w.since.elapsed() < park_timeout()).then_some(w)
}

/// How long a call waits for the client's retry (a debug build's tests may shorten it:
/// `MCPLB_TEST_ERA_PARK_MS`).
fn park_timeout() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(d) = crate::runtime::test_hooks::era_park() {
        return d;
    }
    PARK_TIMEOUT
}

/// Once the call parked under `token` has waited [`park_timeout`] without its retry coming
/// back here (it never came, or it reached another replica, which replayed the call): takes
/// it, tells its backend it is cancelled (`notifications/cancelled` in its session, so the
/// backend's run ends before it gets its input and goes no further) and closes its
/// connection.
fn abandon_later(core: &Core, token: u64) {
    let Some(core) = super::era_sessions::rc_of(core) else {
        return;
    };
    monoio::spawn(async move {
        monoio::time::sleep(park_timeout()).await;
        let taken = WAITING
            .lock()
            .ok()
            .and_then(|mut h| h.as_mut()?.remove(&token));
        let (gi, bi, sid, version, call_id) = match taken {
            Some(w) => (w.gi, w.bi, w.sid, w.version, w.call_id),
            None => match core.bridges.take_parked(token) {
                Some(p) => (
                    p.leg.gi,
                    p.leg.bi,
                    p.leg.session.sid.clone(),
                    p.leg.session.version.clone(),
                    p.call_id,
                ),
                // Resumed (or, past the bound, dropped): nothing waits.
                None => return,
            },
        };
        core.rec
            .borrow_mut()
            .count(crate::control::stats::Counter::EraCallsAbandoned, 1);
        cancel(&core, gi, bi, sid.as_deref(), &version, &call_id).await;
    });
}

/// Sends backend `bi` a `notifications/cancelled` for the call `call_id` (raw) in session
/// `sid`.
async fn cancel(
    core: &Core,
    gi: usize,
    bi: usize,
    sid: Option<&[u8]>,
    version: &str,
    call_id: &[u8],
) {
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return;
    };
    let body = era::cancelled(
        call_id,
        "the client did not come back with the input this call waited for",
    );
    let own = Own::Initialized(version);
    let sent = own_exchange_on(core, gi, bi, group, backend, own, sid, &body, None).await;
    let what = "era bridge: a call waiting for its client's input was abandoned (no retry came \
                back here in time; perhaps another replica replayed it): cancelled on its backend";
    if crate::control::logs::first_in_window_info(what, &backend.name, "") {
        tracing::info!(backend = %backend.name, cancelled = matches!(sent, Ok(x) if x.ok), "{what}");
    }
}

/// A descriptor of its own for a plain connection's socket (so the connection can move to
/// another core's runtime), or `None`.
fn own_fd(tcp: &monoio::net::TcpStream) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for as long as `tcp` lives, which outlives this borrow;
    // `try_clone_to_owned` duplicates it (F_DUPFD_CLOEXEC) into a descriptor of its own.
    #[allow(unsafe_code)]
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    borrowed.try_clone_to_owned().ok()
}

/// The tokens of the calls parked on one core (their TLS connection cannot move): a retry
/// that reaches another core of this process must not replay such a call while it waits.
static ON_A_CORE: std::sync::Mutex<Option<std::collections::HashSet<u64>>> =
    std::sync::Mutex::new(None);

/// Notes (`held`) or forgets the call parked on a core under `token`.
fn on_a_core(token: u64, held: bool) {
    if let Ok(mut set) = ON_A_CORE.lock() {
        let set = set.get_or_insert_with(Default::default);
        if held {
            set.insert(token);
        } else {
            set.remove(&token);
        }
    }
}

/// Whether a core of this process holds the call parked under `token`.
fn held_on_a_core(token: u64) -> bool {
    ON_A_CORE
        .lock()
        .is_ok_and(|set| set.as_ref().is_some_and(|s| s.contains(&token)))
}

impl Bridges {
    fn park(&self, token: u64, p: Parked) {
        let mut parked = self.parked.borrow_mut();
        if parked.len() >= MAX_PARKED {
            if let Some(k) = parked.keys().next().copied() {
                parked.remove(&k);
                on_a_core(k, false);
            }
        }
        parked.insert(token, p);
        on_a_core(token, true);
    }

    /// Takes the call parked under `token` (however long it waited).
    fn take_parked(&self, token: u64) -> Option<Parked> {
        let p = self.parked.borrow_mut().remove(&token)?;
        on_a_core(token, false);
        Some(p)
    }

    fn unpark(&self, token: u64) -> Option<Parked> {
        let p = self.take_parked(token)?;
        (p.since.elapsed() < park_timeout()).then_some(p)
    }
}

/// Forwards a 2025-era backend's answer (`up`, its head in `buf`) to a bridged request, made
/// what the 2026-07-28 wire requires (`session::era::modern_answer`): a JSON answer whole, an
/// SSE stream event by event as the events arrive (progress and other notifications
/// unchanged; a server-to-client request ends the client's answer with an `input_required`
/// result, the call waiting for the retry). Returns what to do with the client connection and
/// the upstream connection when it may be pooled.
pub(crate) async fn forward(
    core: &Core,
    c: &mut ClientConn,
    up: Conn,
    buf: Vec<u8>,
    head_len: usize,
    keep: bool,
    leg: Leg,
) -> (Next, Option<Conn>) {
    let opened = open_answer(core, c, up, buf, head_len, keep, leg.backend_tag).await;
    let Opened {
        mut src,
        is_sse,
        client_close,
    } = match opened {
        Ok(o) => o,
        Err(done) => return done,
    };
    if is_sse {
        return relay(core, c, src, leg, client_close).await;
    }
    // A whole JSON answer.
    let mut err = false;
    loop {
        let (_, done) =
            upstream::collect_events_step(&mut src.framing, &src.avail, &mut src.pending, &mut err);
        let held = src.pending.rest().len();
        if err || upstream::over_bound(core, leg.gi, leg.bi, held, Held::Json) {
            err = true;
            break;
        }
        if done {
            break;
        }
        match read(core, &mut src, false).await {
            Read::Bytes => {}
            Read::End => break,
            Read::Failed => {
                err = true;
                break;
            }
        }
    }
    c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
    if err {
        let r = Refusal::new(502, -32603, "the backend's answer was cut short");
        return (reply::refuse(c, &r).await, None);
    }
    let ok = c.meta.status == 200;
    let answer = src.pending.take_rest();
    let rewritten = era::modern_answer(c.meta.method, &answer, None);
    if let Some(fill) = c.cache_fill.take().filter(|_| ok) {
        let sent = rewritten.as_deref().unwrap_or(&answer);
        let backend = Some((answer.as_slice(), false));
        response_cache::store_bridged(core, c, fill, backend, (sent, false));
    }
    let body = rewritten.unwrap_or(answer);
    // A list the caller's policy filters (kept whole in the cache above).
    let body = match c.list_filter.take().filter(|_| ok) {
        Some(f) => match policy::filter_seen(core, &f, body, false, c.req.id()) {
            Ok(b) => b,
            Err(r) => return (reply::refuse(c, &r).await, None),
        },
        None => body,
    };
    let _ = write!(c.out, "content-length: {}\r\n", body.len());
    if client_close {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(&body);
    if !send(c).await {
        return (Next::Close, None);
    }
    let reusable = !src.up_close && !matches!(src.framing, Framing::UntilClose);
    (Next::keep_unless(client_close), reusable.then_some(src.up))
}

impl Source {
    /// The source of an answer whose head (`head_len` bytes of `buf`) is `head`: the bytes
    /// after the head are its first; the rest of `buf` (the head) is handed back.
    pub(super) fn after_head(
        up: Conn,
        head: response::RespHead,
        mut buf: Vec<u8>,
        head_len: usize,
    ) -> (Source, Vec<u8>) {
        let avail = buf.split_off(head_len.min(buf.len()));
        let src = Source {
            up,
            framing: head.framing,
            pending: PendingEvents::new(),
            avail,
            up_close: head.up_close,
        };
        (src, buf)
    }
}

/// A backend's answer (head in `buf`) to a request the era bridge made or rewrote: the
/// backend's session id, if any, stays with mcplb.
pub(super) fn era_answer(
    up: &mut Conn,
    buf: Vec<u8>,
    head_len: usize,
    backend_tag: u32,
    end_on_shutdown: bool,
) -> Answer<'_> {
    Answer {
        up,
        buf,
        head_len,
        backend_tag,
        backend_sid: None,
        end_on_shutdown,
        sessionless: true,
    }
}

/// The head of an SSE answer of mcplb's making (chunked) sent: whether it went.
pub(super) async fn start_stream(c: &mut ClientConn, client_close: bool) -> bool {
    reply::sse_head(c, client_close);
    send(c).await
}

/// A backend's answer to a request mcplb made for another era, opened for relaying.
pub(super) struct Opened {
    pub src: Source,
    pub is_sse: bool,
    /// The client's connection closes after this answer.
    pub client_close: bool,
}

/// Opens a backend's answer (`up`, its head of `head_len` bytes in `buf`) to a request the
/// era bridge rewrote: its head made the client's (in `c.out`; for an SSE stream, chunked and
/// sent already), its body's source. `Err`: the client's answer is over (what to return).
pub(super) async fn open_answer(
    core: &Core,
    c: &mut ClientConn,
    mut up: Conn,
    buf: Vec<u8>,
    head_len: usize,
    keep: bool,
    backend_tag: u32,
) -> Result<Opened, (Next, Option<Conn>)> {
    let mut a = era_answer(&mut up, buf, head_len, backend_tag, false);
    let (head, head_len) = match response::final_head(core, c, &mut a).await {
        Ok(x) => x,
        Err(r) => {
            c.ubuf = a.buf;
            return Err((reply::refuse(c, &r).await, None));
        }
    };
    c.meta.status = head.status;
    c.meta.sse = head.is_sse;
    let client_close = !keep || crate::runtime::SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    let is_sse = head.is_sse;
    let buf = a.buf;
    let (src, rest) = Source::after_head(up, head, buf, head_len);
    c.ubuf = rest;
    if is_sse {
        c.out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        if client_close {
            c.out.extend_from_slice(b"connection: close\r\n");
        }
        c.out.extend_from_slice(b"\r\n");
        if !send(c).await {
            return Err((Next::Close, None));
        }
    }
    Ok(Opened {
        src,
        is_sse,
        client_close,
    })
}

/// What one read of the backend's answer gave.
pub(super) enum Read {
    Bytes,
    /// The connection closed where that ends the body (an until-close body).
    End,
    Failed,
}

/// Reads the next bytes of `src` into its `avail` (a stream waits as long as it takes; a
/// whole answer at most `upstream_timeout` per read).
pub(super) async fn read(core: &Core, src: &mut Source, stream: bool) -> Read {
    let mut avail = std::mem::take(&mut src.avail);
    avail.clear();
    let read = src.up.read_more(avail, super::READ_SIZE);
    let (r, b) = if stream {
        read.await
    } else {
        let timeout = core.shared.config.proxy.upstream_timeout;
        match monoio::time::timeout(timeout, read).await {
            Ok(x) => x,
            Err(_) => return Read::Failed,
        }
    };
    src.avail = b;
    if matches!(r, Ok(n) if n > 0) {
        Read::Bytes
    } else if matches!(src.framing, Framing::UntilClose) {
        src.avail.clear();
        Read::End
    } else {
        Read::Failed
    }
}

/// Relays the SSE stream of a bridged call to the client (whose answer head went out), event
/// by event, until the call's answer (the stream's end), or until the backend asks the client
/// for input: then the client's answer ends with an `input_required` result and the call is
/// parked for the retry. `ping` from the backend is answered by mcplb; another request it
/// cannot bridge gets a method-not-found error.
async fn relay(
    core: &Core,
    c: &mut ClientConn,
    mut src: Source,
    mut leg: Leg,
    client_close: bool,
) -> (Next, Option<Conn>) {
    let method = c.meta.method;
    let mut chunk = Vec::new();
    let mut err = false;
    // The answer for the cache as the backend sent it and as the client gets it.
    let mut fill = c.cache_fill.take().map(|f| (f, Vec::new(), Vec::new()));
    let filter = c.list_filter.take();
    loop {
        let (_, done) =
            upstream::collect_events_step(&mut src.framing, &src.avail, &mut src.pending, &mut err);
        src.avail.clear();
        if err {
            return (Next::Close, None);
        }
        chunk.clear();
        let mut ask = None;
        while let Some(event) = src.pending.next_event() {
            response_cache::note_event(core, leg.gi, event);
            let from = chunk.len();
            let verdict = era::rewrite_event(method, event, c.req.id(), &mut chunk);
            if let Some((_, orig, sent)) = &mut fill {
                orig.extend_from_slice(event);
                sent.extend_from_slice(chunk.get(from..).unwrap_or_default());
            }
            if fill
                .as_ref()
                .is_some_and(|(_, o, _)| o.len() > response_cache::MAX_COPY)
            {
                fill = None;
            }
            if let era::EventVerdict::Ask(a) = verdict {
                ask = Some(a);
                break;
            }
        }
        let asked = ask.is_some();
        if let Some(a) = ask {
            match era::ask_kind(&a.method) {
                era::AskKind::Input => {
                    let Some(given) = leg.rounds.answer(&a.sig) else {
                        return park(core, c, src, leg, a, chunk, client_close).await;
                    };
                    // A replay: the client answered this request in an earlier round.
                    let answer = era::server_response(&a.id, given.get().as_bytes());
                    if !answer_backend(core, c, &leg, &answer).await {
                        return (Next::Close, None);
                    }
                }
                kind => {
                    let answer = if kind == era::AskKind::Ping {
                        era::server_response(&a.id, b"{}")
                    } else {
                        era::server_error(
                            &a.id,
                            -32601,
                            "mcplb bridges this call for a 2026-07-28 client, which cannot \
                             answer this request",
                        )
                    };
                    if !answer_backend(core, c, &leg, &answer).await {
                        return (Next::Close, None);
                    }
                }
            }
        }
        // Not asked: every whole event that had come was cut out above.
        let finished = done && !asked;
        if finished {
            // An event the stream did not end with a blank line goes as it is.
            let rest = src.pending.rest();
            if let Some((f, mut orig, mut sent)) = fill.take() {
                orig.extend_from_slice(rest);
                sent.extend_from_slice(rest);
                response_cache::store_bridged(core, c, f, Some((&orig, true)), (&sent, true));
            }
            chunk.extend_from_slice(rest);
            src.pending.take_rest();
        }
        if let Some(f) = filter.as_ref().filter(|_| !chunk.is_empty()) {
            // A list the caller's policy filters (its events whole in `chunk`).
            match policy::filter_body(core, f, std::mem::take(&mut chunk), true) {
                Ok(b) => chunk = b,
                Err(_) => return (Next::Close, None),
            }
        }
        if !chunk.is_empty() {
            c.meta
                .first_event
                .get_or_insert_with(crate::runtime::clock::fresh_ns);
            put_chunk(c, &chunk);
        }
        if finished {
            c.out.extend_from_slice(crate::http::LAST_CHUNK);
            c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
        }
        if !c.out.is_empty() && !send(c).await {
            return (Next::Close, None);
        }
        if finished {
            let reusable = !src.up_close && !matches!(src.framing, Framing::UntilClose);
            return (Next::keep_unless(client_close), reusable.then_some(src.up));
        }
        if asked {
            // More events may wait in `pending`: look again before reading.
            continue;
        }
        // What is left is one event's first bytes: past the bound the stream closes without
        // them (the client's answer is cut short, as when the backend's breaks).
        let held = src.pending.rest().len();
        if upstream::over_bound(core, leg.gi, leg.bi, held, Held::Event) {
            return (Next::Close, None);
        }
        match read(core, &mut src, true).await {
            Read::Bytes | Read::End => {}
            Read::Failed => return (Next::Close, None),
        }
    }
}

/// Writes `data` as one chunk of the client's chunked answer into `c.out`.
pub(crate) fn put_chunk(c: &mut ClientConn, data: &[u8]) {
    let _ = write!(c.out, "{:x}\r\n", data.len());
    c.out.extend_from_slice(data);
    c.out.extend_from_slice(b"\r\n");
}

/// Ends the client's answer with an `input_required` result for `ask` (after the events in
/// `chunk`) and parks the call for the retry, under a token the sealed request state names.
async fn park(
    core: &Core,
    c: &mut ClientConn,
    src: Source,
    mut leg: Leg,
    ask: era::ServerRequest,
    mut chunk: Vec<u8>,
    client_close: bool,
) -> (Next, Option<Conn>) {
    let token: u64 = rand::random();
    // A call waiting for input keeps its session from counting as idle.
    leg.session.last_used.set(Instant::now());
    let call = CallState {
        w: u16::try_from(core.index).unwrap_or(u16::MAX),
        t: token,
        b: leg.backend_tag,
        x: super::confirm::now_ms().saturating_add(SPENT_FOR.as_millis() as u64),
        o: c.owner.as_ref().map(|o| *o.as_bytes()),
        r: era::call_digest(c.req.body()).map(|call| era::Replay {
            call,
            done: leg.rounds.answered.clone(),
            ask: ask.sig.clone(),
        }),
    };
    let mut state = Vec::new();
    let sealed = era::state_bytes(&call, crate::session::MAX_ERA_STATE_PAYLOAD).map(|p| {
        core.shared
            .sealer
            .seal_kind(crate::session::VERSION_ERA_STATE, &p, &mut state)
    });
    if !matches!(sealed, Some(Ok(()))) {
        return (Next::Close, None);
    }
    let call_id = leg
        .rounds
        .call_id
        .take()
        .unwrap_or_else(|| c.req.id().unwrap_or(b"null").to_vec());
    let mut answer = Vec::with_capacity(ask.input.len() + state.len() + 96);
    era::input_required(
        &mut answer,
        c.req.id().unwrap_or_default(),
        &ask.input,
        &state,
    );
    chunk.extend_from_slice(b"event: message\n");
    protocol::sse::write_data(&mut chunk, &answer);
    let fd = match &src.up {
        Conn::Plain(tcp) => own_fd(tcp),
        _ => None,
    };
    match fd {
        // Any core may take the call over: the retry can reach any worker.
        Some(fd) => hold(
            token,
            Waiting {
                fd,
                framing: src.framing,
                pending: src.pending,
                up_close: src.up_close,
                gi: leg.gi,
                bi: leg.bi,
                backend_tag: leg.backend_tag,
                sid: leg.session.sid.clone(),
                version: leg.session.version.clone(),
                method: c.meta.method,
                ask_id: ask.id,
                ask_sig: ask.sig,
                answered: leg.rounds.answered,
                call_id,
                since: Instant::now(),
            },
        ),
        // A TLS connection stays with this core.
        None => core.bridges.park(
            token,
            Parked {
                src,
                leg,
                method: c.meta.method,
                ask_id: ask.id,
                ask_sig: ask.sig,
                call_id,
                since: Instant::now(),
            },
        ),
    }
    abandon_later(core, token);
    put_chunk(c, &chunk);
    c.out.extend_from_slice(crate::http::LAST_CHUNK);
    if !send(c).await {
        return (Next::Close, None);
    }
    (Next::keep_unless(client_close), None)
}

/// Sends `answer` (a JSON-RPC response to one of the backend's requests) in the call's
/// backend session: whether the backend took it.
async fn answer_backend(core: &Core, c: &ClientConn, leg: &Leg, answer: &[u8]) -> bool {
    let group = core.shared.config.servers.get(leg.gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(leg.bi))) else {
        return false;
    };
    let s = &leg.session;
    let own = Own::Initialized(&s.version);
    let sent = own_exchange(
        core,
        &c.req,
        leg.gi,
        leg.bi,
        group,
        backend,
        own,
        s.sid.as_deref(),
        answer,
    );
    matches!(sent.await, Ok(x) if x.ok)
}

/// What became of a 2026-07-28 request carrying a `requestState` ([`resume`]).
pub(crate) enum Resumed {
    /// Answered: the waiting call went on into this request's answer, or a refusal.
    Done(Next),
    /// No call waits for it here (another replica asked, or this one forgot): the request,
    /// made the plain call again, goes its usual way and the bridge answers the backend's
    /// input requests from these rounds.
    Replay(Rounds),
    /// Not a request state of the era bridge's.
    Not,
}

/// Most request states remembered as answered (a second retry with one is refused here).
const MAX_SPENT: usize = 16_384;
/// How long a request state is good for, and an answered one remembered (so that within
/// its life it is answered once per process).
const SPENT_FOR: Duration = Duration::from_secs(600);

/// The tokens of the request states this process has seen answered (resumed or replayed).
static SPENT: std::sync::Mutex<Option<HashMap<u64, Instant>>> = std::sync::Mutex::new(None);

/// Marks `token`'s state answered: whether it was not before (a full table refuses).
fn spend(token: u64) -> bool {
    let Ok(mut spent) = SPENT.lock() else {
        return false;
    };
    let spent = spent.get_or_insert_with(HashMap::new);
    if spent.len() >= MAX_SPENT {
        spent.retain(|_, at| at.elapsed() < SPENT_FOR);
    }
    if spent.len() >= MAX_SPENT {
        return false;
    }
    match spent.entry(token) {
        std::collections::hash_map::Entry::Occupied(mut e) => {
            if e.get().elapsed() < SPENT_FOR {
                return false;
            }
            e.insert(Instant::now());
        }
        std::collections::hash_map::Entry::Vacant(e) => {
            e.insert(Instant::now());
        }
    }
    true
}

/// A 2026-07-28 retry carrying the input a bridged call waits for (`requestState` sealed by
/// this mcplb or a replica with the same session keys). Where the call waits here, the input
/// goes to the backend as the answer to its request, and the call's stream, from where it
/// stopped, becomes this request's answer. Where it does not (`may_replay`), the call is sent
/// again and the backend's input requests are answered from the state's earlier rounds and
/// this retry's input ([`Resumed::Replay`]).
pub(crate) async fn resume(core: &Core, c: &mut ClientConn, may_replay: bool) -> Resumed {
    use crate::control::stats::Counter;
    let Some(retry) = era::retry_input(c.req.body()) else {
        return Resumed::Not;
    };
    let mut buf = Vec::new();
    let sealer = &core.shared.sealer;
    let kind = crate::session::VERSION_ERA_STATE;
    let Some(state) = sealer
        .open_kind(kind, retry.state.as_bytes(), &mut buf)
        .and_then(|(payload, _)| era::parse_call_state(payload))
    else {
        return Resumed::Not;
    };
    let gone = |what: &'static str| Refusal::new(400, -32602, what);
    if state.o.is_some() && state.o.as_ref() != c.owner.as_ref().map(|o| o.as_bytes()) {
        let r = gone("requestState was not issued to this caller");
        return Resumed::Done(reply::refuse(c, &r).await);
    }
    if state
        .r
        .as_ref()
        .is_some_and(|r| era::call_digest(c.req.body()).as_ref() != Some(&r.call))
    {
        let r = gone(
            "requestState was issued for another call (its method or params differ): call \
             again without it",
        );
        return Resumed::Done(reply::refuse(c, &r).await);
    }
    if super::confirm::now_ms() > state.x {
        let r =
            gone("requestState expired (mcplb's are good for 10 minutes): call again without it");
        return Resumed::Done(reply::refuse(c, &r).await);
    }
    let Some(input) = retry.responses.get(era::INPUT_KEY).copied() else {
        let r = gone("inputResponses has no answer for the input request `mcplb-input`");
        return Resumed::Done(reply::refuse(c, &r).await);
    };
    if !spend(state.t) {
        let r = gone(
            "this requestState was answered already (the call it waited for went on): call \
             again without it",
        );
        return Resumed::Done(reply::refuse(c, &r).await);
    }
    let parked = match take_held(state.t) {
        Some(w) => taken_over(w),
        None if usize::from(state.w) == core.index => core.bridges.unpark(state.t),
        None => None,
    };
    let Some(mut p) = parked.filter(|p| p.leg.backend_tag == state.b) else {
        // Never while the call still waits on another core of this process (its backend
        // connection is TLS, which cannot move): it would run twice.
        let replay = state.r.filter(|_| may_replay && !held_on_a_core(state.t));
        let stripped = replay
            .as_ref()
            .and_then(|_| crate::policy::confirm::strip_retry(c.req.body()));
        let (Some(r), Some(stripped)) = (replay, stripped) else {
            let r = gone(
                "the call waiting for this input is not held by this worker of mcplb (it \
                 waited past 120 s, the retry reached another replica or another worker of \
                 one whose backend connection cannot move) and cannot be replayed here: call \
                 again",
            );
            return Resumed::Done(reply::refuse(c, &r).await);
        };
        let rounds = Rounds::replay(r, input);
        drop(retry);
        super::confirm::replace_body(core, c, stripped);
        c.meta.era_input = Some(EraInput::Replayed);
        core.rec.borrow_mut().count(Counter::EraInputsReplayed, 1);
        return Resumed::Replay(rounds);
    };
    let answer = era::server_response(&p.ask_id, input.get().as_bytes());
    p.leg.rounds.answered.push(era::Answered {
        m: p.ask_sig.m.clone(),
        p: p.ask_sig.p.clone(),
        r: input.to_owned(),
    });
    drop(retry);
    p.leg.rounds.call_id = Some(p.call_id.clone());
    c.meta.method = p.method;
    c.meta.backend = Some(p.leg.bi);
    c.meta.era_input = Some(EraInput::Resumed);
    core.rec.borrow_mut().count(Counter::EraInputsResumed, 1);
    if !answer_backend(core, c, &p.leg, &answer).await {
        let r = Refusal::new(
            502,
            -32603,
            "the backend did not take the input for its call",
        );
        return Resumed::Done(reply::refuse(c, &r).await);
    }
    let next = reply::must_close(c, false);
    let client_close = next != Next::KeepAlive;
    if !start_stream(c, client_close).await {
        return Resumed::Done(Next::Close);
    }
    let (gi, bi) = (p.leg.gi, p.leg.bi);
    let (next, up) = relay(core, c, p.src, p.leg, client_close).await;
    if let Some(up) = up {
        core.put_upstream(gi, bi, up);
    }
    Resumed::Done(next)
}

/// A call held for any core, on this one.
fn taken_over(w: Waiting) -> Option<Parked> {
    let tcp = monoio::net::TcpStream::from_std(std::net::TcpStream::from(w.fd)).ok()?;
    Some(Parked {
        src: Source {
            up: Conn::Plain(tcp),
            framing: w.framing,
            pending: w.pending,
            avail: Vec::new(),
            up_close: w.up_close,
        },
        leg: Leg {
            gi: w.gi,
            bi: w.bi,
            session: Rc::new(BridgeSession::detached(w.sid, w.version)),
            backend_tag: w.backend_tag,
            rounds: Rounds {
                answered: w.answered,
                script: Default::default(),
                call_id: None,
            },
        },
        method: w.method,
        ask_id: w.ask_id,
        ask_sig: w.ask_sig,
        call_id: w.call_id,
        since: w.since,
    })
}

/// Writes `c.out` to the client: whether it went.
pub(super) async fn send(c: &mut ClientConn) -> bool {
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    c.meta.bytes_out += len as u64;
    let (w, mut out) = c.stream.write_range(out, 0..len).await;
    out.clear();
    c.out = out;
    w.is_ok()
}

/// Whether backend `bi` serves 2026-07-28 requests (learned with a probe when this core has
/// not yet).
pub(crate) async fn serves_2026(core: &Core, gi: usize, bi: usize) -> bool {
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return false;
    };
    let learned = match core.bridges.learned(gi, bi) {
        Learned::Unknown => match probe(core, gi, bi, group, backend).await {
            Ok(l) => {
                core.bridges.learn(gi, bi, l);
                l
            }
            Err(_) => return false,
        },
        l => l,
    };
    learned == Learned::Stateless
}

/// Answers a 2025-era client's `initialize` for a 2026-07-28 backend from that backend's
/// `server/discover` (sent with what the client declared): the revision negotiated as the
/// spec says, and a session id of mcplb's own, sealed, carrying what the client declared (to
/// go in every later request's `_meta`) and no backend state.
pub(crate) async fn answer_initialize(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    bi: usize,
) -> Next {
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let Some(hello) = era::hello(c.req.body()) else {
        let r = Refusal::new(
            400,
            -32602,
            "initialize needs params.protocolVersion (a string) and params.capabilities (an \
             object)",
        );
        return reply::refuse(c, &r).await;
    };
    let failed = Refusal::new(
        502,
        -32603,
        "the 2026-07-28 backend did not answer the server/discover mcplb sends to answer this \
         initialize",
    );
    let body = era::discover_body(&hello.declared);
    let Ok(answer) = own_exchange_on(
        core,
        gi,
        bi,
        group,
        backend,
        Own::Probe,
        None,
        &body,
        Some(&c.req),
    )
    .await
    else {
        return reply::refuse(c, &failed).await;
    };
    if !answer.ok && (400..500).contains(&answer.status) {
        // Refused for what the client sent along (its Origin, its credentials): as it was.
        let r = Refusal::new(
            answer.status,
            -32600,
            "the 2026-07-28 backend refused the server/discover mcplb sends to answer this \
             initialize (with this client's Origin and credentials)",
        );
        return reply::refuse(c, &r).await;
    }
    let msg = era::answer_message(&answer.body, answer.sse)
        .filter(|m| answer.ok && m.get("result").is_some());
    let id = c.req.id().unwrap_or(b"null");
    let version = era::negotiate(hello.version);
    let Some(out) = msg.and_then(|m| era::initialize_answer(id, version, &m).ok()) else {
        return reply::refuse(c, &failed).await;
    };
    let Some(payload) = era::session_payload(&hello.declared, crate::session::MAX_BACKEND_SID)
    else {
        let r = Refusal::new(
            400,
            -32602,
            "the capabilities this client declares are too long for the session id mcplb \
             issues in front of a 2026-07-28 server (at most 250 bytes of JSON)",
        );
        return reply::refuse(c, &r).await;
    };
    let mut sealed = Vec::new();
    if core
        .shared
        .sealer
        .seal(backend.tag, c.owner.as_ref(), &payload, &mut sealed)
        .is_err()
    {
        return reply::refuse(c, &failed).await;
    }
    let header = format!("mcp-session-id: {}\r\n", String::from_utf8_lossy(&sealed));
    c.meta.backend = Some(bi);
    let next = reply::document(c, 200, &out, &header).await;
    c.meta.by_proxy = false;
    next
}

/// In a session mcplb made for a 2025-era client of a 2026-07-28 backend, answers here what
/// such a backend has no use for: notifications and responses (202; an answer to a request
/// mcplb sent for an `input_required` result goes to its call), `ping`, the session's end
/// (DELETE) and `resources/subscribe`/`unsubscribe` (kept for the session's GET stream,
/// `era_listen`); `None` for the rest.
pub(crate) async fn answer_locally(c: &mut ClientConn) -> Option<Next> {
    use crate::control::stats;
    use crate::data_path::request::HttpMethod;
    let empty = |c: &mut ClientConn, status: u16, reason: &str| {
        c.out.clear();
        let _ = write!(
            c.out,
            "HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\n\r\n"
        );
        c.meta.status = status;
        c.meta.by_proxy = true;
    };
    match c.req.method() {
        // The GET stream is served from a `subscriptions/listen` (`era_listen`).
        HttpMethod::Get => return None,
        HttpMethod::Delete => {
            if let Some(sid) = c.req.session_id() {
                super::era_listen::forget_subscriptions(sid);
            }
            let next = reply::must_close(c, false);
            empty(c, 200, "OK");
            return Some(reply::send_out(c, next).await);
        }
        _ => {}
    }
    if c.meta.row == stats::M_NOTIFICATION || c.meta.row == stats::M_RESPONSE {
        if c.meta.row == stats::M_RESPONSE {
            // The answer to a request mcplb sent for a call's input_required result.
            super::era_ask::deliver(c);
        }
        let next = reply::must_close(c, false);
        empty(c, 202, "Accepted");
        return Some(reply::send_out(c, next).await);
    }
    if c.meta.method == Method::Ping {
        let mut body = Vec::new();
        era::result_answer(&mut body, c.req.id().unwrap_or_default(), b"{}");
        return Some(reply::document(c, 200, &body, "").await);
    }
    if c.meta.method == Method::Other {
        // A 2026-07-28 server has no resources/subscribe: the session's GET stream asks its
        // listen for the updates of what the session subscribed to.
        let (on, uri) = crate::session::era_listen::subscription_request(c.req.body())?;
        let sid = c.req.session_id().unwrap_or_default();
        if let Err(why) = super::era_listen::subscribe(sid, &uri, on) {
            return Some(reply::refuse(c, &Refusal::new(200, -32603, why)).await);
        }
        let mut body = Vec::new();
        era::result_answer(&mut body, c.req.id().unwrap_or_default(), b"{}");
        let next = reply::document(c, 200, &body, "").await;
        // Answered by mcplb, but for the backend it stands for.
        c.meta.by_proxy = false;
        return Some(next);
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn answered(m: &str, params: &str, r: &str) -> era::Answered {
        let params: serde_json::Value = serde_json::from_str(params).unwrap();
        let s = era::sig(m, Some(&params));
        era::Answered {
            m: s.m,
            p: s.p,
            r: serde_json::value::RawValue::from_string(r.into()).unwrap(),
        }
    }

    #[test]
    fn a_replay_answers_the_same_requests_in_order_and_stops_at_another() {
        let first = answered(
            "elicitation/create",
            r#"{"message":"1"}"#,
            r#"{"action":"accept"}"#,
        );
        let replay = era::Replay {
            call: "c".into(),
            done: vec![first.clone()],
            ask: era::sig("roots/list", None),
        };
        let input = serde_json::value::RawValue::from_string(r#"{"roots":[]}"#.into()).unwrap();
        let mut r = Rounds::replay(replay.clone(), &input);
        let q1 = era::sig(
            "elicitation/create",
            Some(&serde_json::json!({"message": "1"})),
        );
        assert_eq!(r.answer(&q1).unwrap().get(), r#"{"action":"accept"}"#);
        assert_eq!(
            r.answer(&era::sig("roots/list", None)).unwrap().get(),
            r#"{"roots":[]}"#
        );
        // Both are carried into the next round's state; nothing is left to answer.
        assert_eq!(r.answered.len(), 2);
        assert!(r.answer(&q1).is_none());

        // The backend asks something else first: the client is asked, the script is dropped.
        let mut r = Rounds::replay(replay, &input);
        let other = era::sig(
            "elicitation/create",
            Some(&serde_json::json!({"message": "2"})),
        );
        assert!(r.answer(&other).is_none());
        assert!(r.answer(&era::sig("roots/list", None)).is_none());
        assert!(r.answered.is_empty());
    }
}
