//! Stage 5: attempts. A request goes to the backend its session lives on, or to the one the
//! group's balancer picks; each attempt ends in an answer head or a typed
//! [`lb::UpstreamError`], and [`lb::retry_decision`] alone says what follows a failure: a
//! fresh connection to the same backend, another backend (within the retry budget when the
//! request may have run), a session failover, or the error to the client. A `tools/call`
//! that may have reached a backend is never sent again.

use std::borrow::Cow;

use lb::{retry_decision, Retry, RetryContext, UpstreamError, UpstreamErrorKind};
use protocol::Method;

use crate::balance;
use crate::config::{Backend, BackendEra, SessionFailover};
use crate::control::logs;
use crate::control::stats::Gauge;
use crate::data_path::admission::{self, ConcKeys, Permits};
use crate::data_path::request::{ClientConn, HttpMethod, Next, Refusal, ReqMeta};
use crate::data_path::response::{forward_response, Answer};
use crate::data_path::{era_ask, era_bridge, era_listen, failover, reply, upstream};
use crate::runtime::core::Core;
use crate::runtime::timer::Timer;
use crate::session::era;
use crate::tls::Conn;

/// Where a request may go, as routing decided.
pub(crate) struct Plan<'s> {
    /// The group.
    pub gi: usize,
    /// The backend a session is pinned to (during a failover: the one it leaves).
    pub pinned: Option<usize>,
    /// The backend's own session id, when the request belongs to a session.
    pub sid: Option<Cow<'s, [u8]>>,
    /// The session must move before anything is sent.
    pub needs_failover: bool,
    /// The key a hashing group balances on.
    pub hash_key: Option<u64>,
    /// Sending the request again cannot run anything twice.
    pub read_only: bool,
    /// The session may move to another backend (`session_failover = "reinitialize"`).
    pub can_fail_over: bool,
    /// How long the backend may take to send its answer head.
    pub head_timeout: std::time::Duration,
}

/// Ends a request's in-flight count on its backend however the attempt ends.
pub(crate) struct InFlight<'a> {
    core: &'a Core,
    gi: usize,
    bi: usize,
}

impl<'a> InFlight<'a> {
    fn start(core: &'a Core, gi: usize, bi: usize) -> Self {
        core.bal.start(gi, bi);
        let mut rec = core.rec.borrow_mut();
        rec.gauge(Gauge::UpstreamBusy, 1);
        rec.backend_gauge(gi, bi, 0, 1);
        InFlight { core, gi, bi }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.core.bal.end(self.gi, self.bi);
        if let Ok(mut rec) = self.core.rec.try_borrow_mut() {
            rec.gauge(Gauge::UpstreamBusy, -1);
            rec.backend_gauge(self.gi, self.bi, 0, -1);
        }
    }
}

/// What the era bridge has to do with a request, as routing found it.
pub(crate) struct EraPlan<'s> {
    /// A 2026-07-28 request outside any session: bridged where its backend is of the 2025 era.
    pub modern: bool,
    /// A request in a session mcplb made for a 2025-era client of a 2026-07-28 backend: what
    /// the session carries (`session::era::parse_session_payload`).
    pub legacy_client: Option<&'s [u8]>,
    /// A 2026-07-28 retry whose bridged call waits nowhere here: the rounds to replay it
    /// with (`era_bridge::resume`).
    pub replay: Option<Box<era_bridge::Rounds>>,
}

/// Sends the complete request in `c.req` as `plan` allows, and forwards the answer. A request
/// the era bridge may have to handle (`era`) takes [`era_send`].
pub(crate) async fn send(
    core: &Core,
    c: &mut ClientConn,
    mut plan: Plan<'_>,
    era: EraPlan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Next {
    let gi = plan.gi;
    let Some(group) = core.shared.config.servers.get(gi) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let bridging = group.era_bridge
        && ((era.modern && group.era != BackendEra::Stateless && !core.bridges.all_stateless(gi))
            || era.legacy_client.is_some()
            || (c.meta.method == Method::Initialize
                && plan.sid.is_none()
                && group.era != BackendEra::Sessions));
    if bridging {
        // Boxed: inlined, the bridge's states would grow every request's future (copied into
        // the connection's per-request box), bridged or not.
        return crate::runtime::boxed(|| era_send(core, c, plan, era, conc, permits)).await;
    }
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    if c.out.capacity() == 0 {
        // A pooled buffer: growing an empty one to a request's size took six reallocations
        // (callgrind: about 2 500 instructions per request, 10 % of mcplb's own).
        c.out = core.take_buf();
    }
    let is_delete = c.req.method() == HttpMethod::Delete;
    c.meta.ended_session = is_delete && plan.sid.is_some();
    let reached = reach_as_sent(core, c, group, &mut plan, conc, permits, &mut ubuf).await;
    c.meta.ended_session = is_delete && plan.sid.is_some();
    let Reached {
        mut up,
        head_len,
        bi,
        in_flight,
        backend_tag,
    } = match reached {
        Ok(r) => r,
        Err(last) => {
            c.ubuf = ubuf;
            return reply::refuse(c, &last).await;
        }
    };
    let rtt = c
        .meta
        .sent
        .map(|s| crate::runtime::clock::now_ns().saturating_sub(s));
    let answer = plain_answer(c, &mut up, ubuf, head_len, backend_tag, plan.sid.as_deref());
    let keep = !c.req.head.close;
    let (next, reusable) = forward_response(core, c, answer, keep).await;
    drop(in_flight);
    if reusable {
        core.put_upstream(gi, bi, up);
    }
    finish(core, c, gi, bi, rtt);
    next
}

/// The attempt loop for the client's request as it came (with the forwarding headers and the
/// request's trace): [`reach`] writing [`upstream::build_request`]. The answer head is in
/// `ubuf` when it returns `Ok`.
pub(crate) async fn reach_as_sent<'a>(
    core: &'a Core,
    c: &mut ClientConn,
    group: &crate::config::ServerGroup,
    plan: &mut Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
    ubuf: &mut Vec<u8>,
) -> Result<Reached<'a>, Refusal> {
    let hop = c.hop();
    let forwarding = (&core.shared.config.proxy.client_address, &hop);
    let ClientConn {
        req,
        out,
        meta,
        trace,
        head_timer,
        ..
    } = &mut *c;
    let req: &crate::data_path::request::Request = req;
    let trace = trace.as_ref();
    let write = |out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>| {
        let plain = upstream::Rewrite {
            trace,
            ..Default::default()
        };
        let cred = &group.auth.upstream;
        upstream::build_request(out, req, backend, sid, &plain, cred, forwarding);
    };
    let mut io = AttemptIo {
        out,
        ubuf,
        meta,
        sealed: req.session_id(),
        timer: head_timer,
    };
    reach(core, plan, conc, permits, &mut io, &write).await
}

/// A request the era bridge may handle, through [`reach_with`] and its [`EraHook`], then
/// relayed as the client's era needs it (`era_bridge::forward`) or as it is.
async fn era_send(
    core: &Core,
    c: &mut ClientConn,
    mut plan: Plan<'_>,
    era_plan: EraPlan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Next {
    let gi = plan.gi;
    let Some(group) = core.shared.config.servers.get(gi) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    // A 2025-era client's request to a 2026-07-28 backend: its body with the `_meta` its
    // session declares, and the mirror headers.
    let legacy = era_plan
        .legacy_client
        .and_then(era::parse_session_payload)
        .and_then(|d| era::modern_request(c.req.body(), &d));
    let new_handshake = c.meta.method == Method::Initialize
        && plan.sid.is_none()
        && era_plan.legacy_client.is_none()
        && group.era_bridge;
    // A 2025-era client's GET stream, served from a `subscriptions/listen`.
    let stream_for = era_plan
        .legacy_client
        .and_then(era::parse_session_payload)
        .filter(|_| c.req.method() == HttpMethod::Get);
    let listen = era_plan.modern
        && c.meta.method == Method::Other
        && crate::session::era_listen::is_listen(c.req.body());
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    if c.out.capacity() == 0 {
        c.out = core.take_buf();
    }
    let hop = c.hop();
    let reached = {
        let ClientConn {
            req,
            out,
            meta,
            trace,
            owner,
            head_timer,
            ..
        } = &mut *c;
        let mut hook = EraHook {
            req,
            owner: owner.as_ref(),
            trace: trace.as_ref(),
            forwarding: (&core.shared.config.proxy.client_address, &hop),
            group,
            modern: era_plan.modern,
            method: meta.method,
            legacy: legacy.as_ref(),
            new_handshake,
            stream_for: stream_for.is_some(),
            listen,
            bridge: None,
            reopened: false,
            session_body: None,
        };
        let mut io = AttemptIo {
            out,
            ubuf: &mut ubuf,
            meta,
            sealed: req.session_id(),
            timer: head_timer,
        };
        let r = reach_with(core, &mut plan, conc, permits, &mut io, &mut hook).await;
        r.map(|r| (r, hook.bridge))
    };
    let (reached, bridge) = match reached {
        Ok(r) => r,
        Err(stop) => {
            c.ubuf = ubuf;
            return match stop {
                Stop::Refuse(last) => reply::refuse(c, &last).await,
                Stop::Local(EraLocal::Initialize(bi)) => {
                    era_bridge::answer_initialize(core, c, gi, bi).await
                }
                Stop::Local(EraLocal::Discover(s)) => {
                    era_bridge::answer_discover(core, c, &s).await
                }
                Stop::Local(EraLocal::Listen(bi, s)) => {
                    era_listen::listen_on_session(core, c, gi, bi, s).await
                }
                Stop::Local(EraLocal::Stream(bi)) => match &stream_for {
                    Some(d) => era_listen::stream_for_client(core, c, gi, bi, d).await,
                    None => reply::refuse(c, &Refusal::new(503, -32603, "no stream")).await,
                },
            };
        }
    };
    let Reached {
        mut up,
        head_len,
        bi,
        in_flight,
        backend_tag,
    } = reached;
    let rtt = c
        .meta
        .sent
        .map(|s| crate::runtime::clock::now_ns().saturating_sub(s));
    let keep = !c.req.head.close;
    let (next, pool) = if let Some(session) = bridge {
        let leg = era_bridge::Leg {
            gi,
            bi,
            session,
            backend_tag,
            rounds: era_plan.replay.map(|r| *r).unwrap_or_default(),
        };
        era_bridge::forward(core, c, up, ubuf, head_len, keep, leg).await
    } else if let Some((body, headers)) =
        legacy.as_ref().filter(|_| era_ask::may_ask(c.meta.method))
    {
        // A 2025-era client's call: its 2026-07-28 backend may ask for input (its answer is
        // kept only when it came at once: `era_ask::rounds`).
        let call = era_ask::Call {
            gi,
            bi,
            backend_tag,
            body,
            headers,
        };
        era_ask::forward(core, c, up, ubuf, head_len, keep, call).await
    } else {
        let answer = plain_answer(c, &mut up, ubuf, head_len, backend_tag, plan.sid.as_deref());
        let (next, reusable) = forward_response(core, c, answer, keep).await;
        (next, reusable.then_some(up))
    };
    drop(in_flight);
    if let Some(up) = pool {
        core.put_upstream(gi, bi, up);
    }
    finish(core, c, gi, bi, rtt);
    next
}

/// A backend's answer to forward as it is (its head in `buf`); `sid`: the backend session it
/// belongs to.
fn plain_answer<'a>(
    c: &ClientConn,
    up: &'a mut Conn,
    buf: Vec<u8>,
    head_len: usize,
    backend_tag: u32,
    sid: Option<&'a [u8]>,
) -> Answer<'a> {
    Answer {
        up,
        buf,
        head_len,
        backend_tag,
        backend_sid: sid,
        end_on_shutdown: c.req.method() == HttpMethod::Get,
        sessionless: false,
    }
}

/// What an era request's hook answers itself instead of an attempt.
enum EraLocal {
    /// A 2025-era client's `initialize`, from backend `bi`'s `server/discover`.
    Initialize(usize),
    /// A 2026-07-28 `server/discover`, from the backend session's `initialize`.
    Discover(std::rc::Rc<era_bridge::BridgeSession>),
    /// A 2026-07-28 `subscriptions/listen`, from the GET stream of backend `bi`'s session.
    Listen(usize, std::rc::Rc<era_bridge::BridgeSession>),
    /// A 2025-era client's GET stream, from a `subscriptions/listen` to backend `bi`.
    Stream(usize),
}

/// The era bridge's part of an attempt, per backend: its era (a probe when unknown), a backend
/// session for a 2026-07-28 request to a 2025-era backend (re-opened once when the backend has
/// dropped it), a 2025-era client's `initialize` answered from a 2026-07-28-only backend's
/// `server/discover`, and the request rewritten on its way.
struct EraHook<'r> {
    req: &'r crate::data_path::request::Request,
    owner: Option<&'r crate::session::Owner>,
    trace: Option<&'r crate::telemetry::TraceContext>,
    forwarding: (
        &'r crate::config::ClientAddress,
        &'r crate::data_path::client_address::Hop,
    ),
    group: &'r crate::config::ServerGroup,
    modern: bool,
    method: Method,
    /// A 2025-era client's request as its 2026-07-28 backend takes it (body, mirror headers).
    legacy: Option<&'r (Vec<u8>, Vec<u8>)>,
    /// A 2025-era client's `initialize`, outside any session.
    new_handshake: bool,
    /// A 2025-era client's GET stream in mcplb's session.
    stream_for: bool,
    /// A 2026-07-28 `subscriptions/listen`.
    listen: bool,
    /// The backend session of the current attempt.
    bridge: Option<std::rc::Rc<era_bridge::BridgeSession>>,
    /// The 2026-07-28 request as the backend session takes it (its envelope out of `_meta`),
    /// made at the first attempt that goes through a backend session; `Some(None)`: as it is.
    session_body: Option<Option<Vec<u8>>>,
    /// The backend session was re-opened after the backend lost it (once only).
    reopened: bool,
}

impl BackendHook for EraHook<'_> {
    type Local = EraLocal;

    const FAILS_OVER: bool = false;

    async fn before(&mut self, core: &Core, gi: usize, bi: usize) -> Before<EraLocal> {
        self.bridge = None;
        if self.new_handshake && self.group.era == BackendEra::Stateless {
            // A 2026-07-28 backend: the client's initialize is answered from its discover.
            return Before::Local(EraLocal::Initialize(bi));
        }
        if self.stream_for {
            return Before::Local(EraLocal::Stream(bi));
        }
        let asker = era_bridge::Asker {
            req: self.req,
            body: self.req.body(),
            owner: self.owner,
        };
        let got = era_bridge::session_for(core, &asker, gi, bi, self.modern).await;
        match got {
            Ok(Some(b)) if self.method == Method::ServerDiscover => {
                Before::Local(EraLocal::Discover(b.session))
            }
            Ok(Some(b)) if self.listen => Before::Local(EraLocal::Listen(bi, b.session)),
            Ok(b) => {
                if let Some(b) = b.as_ref().filter(|_| self.session_body.is_none()) {
                    // `_meta` as `session_for` read it: the body is not parsed again.
                    let body = era::session_request_at(self.req.body(), b.meta);
                    self.session_body = Some(body);
                }
                self.bridge = b.map(|b| b.session);
                Before::Go
            }
            Err(era_bridge::Failed::Refuse(r)) => Before::Refuse(r),
            Err(era_bridge::Failed::Upstream(e)) => Before::Failed(e),
        }
    }

    fn sid<'s>(&'s self, planned: Option<&'s [u8]>) -> Option<&'s [u8]> {
        match &self.bridge {
            Some(s) => s.sid.as_deref(),
            None => planned,
        }
    }

    fn write(&self, out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>) {
        let rewrite = match (&self.bridge, self.legacy) {
            (Some(s), _) => upstream::Rewrite {
                version: Some(s.version.as_bytes()),
                body: self.session_body.as_ref().and_then(|b| b.as_deref()),
                trace: self.trace,
                ..Default::default()
            },
            (None, Some((body, headers))) => upstream::Rewrite {
                version: Some(era::MODERN.as_bytes()),
                body: Some(body),
                headers,
                trace: self.trace,
            },
            (None, None) => upstream::Rewrite {
                trace: self.trace,
                ..Default::default()
            },
        };
        let cred = &self.group.auth.upstream;
        upstream::build_request(out, self.req, backend, sid, &rewrite, cred, self.forwarding);
    }

    async fn after(
        &mut self,
        core: &Core,
        (gi, bi): (usize, usize),
        up: &mut Conn,
        ubuf: &mut Vec<u8>,
        head_len: usize,
    ) -> After<EraLocal> {
        if let Some(s) = self.bridge.as_ref().filter(|_| !self.reopened) {
            if era_bridge::session_lost(core, up, ubuf, head_len).await {
                // The backend no longer knows mcplb's session (expired, restarted): it ran
                // nothing. Once more, on a new session.
                core.bridges.forget(gi, bi, s);
                self.reopened = true;
                return After::Again;
            }
        }
        if self.new_handshake && self.group.era == BackendEra::Auto {
            let head = ubuf.get(..head_len).unwrap_or_default();
            let refused = era::status_of(head).is_some_and(|s| (400..500).contains(&s));
            if refused && era_bridge::serves_2026(core, gi, bi).await {
                // It refused the handshake and serves 2026-07-28: a server of that revision
                // alone. The client's initialize is answered from its discover.
                return After::Local(EraLocal::Initialize(bi));
            }
        }
        After::Take
    }
}

/// The end of a forwarded request: the backend's outcome and round trip recorded, and a new
/// session's `initialize` kept where the group fails sessions over.
fn finish(core: &Core, c: &ClientConn, gi: usize, bi: usize, rtt: Option<u64>) {
    record_answer(core, gi, bi, c.meta.status, rtt);
    let reinit = core
        .shared
        .config
        .servers
        .get(gi)
        .is_some_and(|g| g.session_failover == SessionFailover::Reinitialize);
    if reinit {
        remember_initialize(core, c);
    }
}

/// Records how backend `bi` of group `gi` answered (`status`; a 5xx counts as a failure) and
/// the request's round trip (`rtt`, nanoseconds).
pub(crate) fn record_answer(core: &Core, gi: usize, bi: usize, status: u16, rtt: Option<u64>) {
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return;
    };
    let now = balance::now_ns();
    let failure = (status >= 500).then_some(lb::FailureKind::Status5xx);
    balance::record_outcome(&core.shared.hub, rt, group, bi, failure, now);
    core.bal.end_rtt(gi, bi, rtt, now);
}

/// The buffers and facts an attempt loop uses for one request (the client's, or one mcplb
/// sends a virtual server's member).
pub(crate) struct AttemptIo<'a> {
    /// The upstream request is written here.
    pub out: &'a mut Vec<u8>,
    /// The answer is read here (its head, then perhaps body bytes).
    pub ubuf: &'a mut Vec<u8>,
    /// Which backend, whether retried, when sent.
    pub meta: &'a mut ReqMeta,
    /// The sealed session id whose `initialize` a failover replays.
    pub sealed: Option<&'a [u8]>,
    /// Times the wait for the answer head (the connection's, when there is one).
    pub timer: &'a mut Timer,
}

/// A backend that answered: its connection, with a complete answer head in the attempt's
/// `ubuf`. The request counts as in flight on the backend until `in_flight` drops.
pub(crate) struct Reached<'a> {
    pub up: Conn,
    pub head_len: usize,
    pub bi: usize,
    pub backend_tag: u32,
    pub in_flight: InFlight<'a>,
}

/// The attempt loop with no per-backend part beyond writing the request (`write`, given the
/// backend and its session id): [`reach_with`] and [`PlainHook`].
pub(crate) async fn reach<'a>(
    core: &'a Core,
    plan: &mut Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
    io: &mut AttemptIo<'_>,
    write: &impl Fn(&mut Vec<u8>, &Backend, Option<&[u8]>),
) -> Result<Reached<'a>, Refusal> {
    let mut hook = PlainHook(write);
    match reach_with(core, plan, conc, permits, io, &mut hook).await {
        Ok(r) => Ok(r),
        Err(Stop::Refuse(r)) => Err(r),
        Err(Stop::Local(never)) => match never {},
    }
}

/// What a [`BackendHook`] decided before an attempt on a backend.
pub(crate) enum Before<L> {
    /// Send the request.
    Go,
    /// The backend failed before the request was written (as a write that failed: the retry
    /// rule decides what follows).
    Failed(UpstreamError),
    /// The request ends with this refusal.
    Refuse(Refusal),
    /// The request is answered by the hook's caller, as `L` says.
    Local(L),
}

/// What a [`BackendHook`] made of an answer head.
pub(crate) enum After<L> {
    /// It is the request's answer.
    Take,
    /// The backend ran nothing: once more, on a new connection to the same backend.
    Again,
    /// The request is answered by the hook's caller, as `L` says.
    Local(L),
}

/// Why [`reach_with`] reached no answer.
pub(crate) enum Stop<L> {
    /// The refusal for the client.
    Refuse(Refusal),
    /// A hook's own answer.
    Local(L),
}

/// The per-backend part of an attempt loop: what happens before each attempt, how the request
/// is written, and what an answer head means. [`reach_with`] keeps the loop and the retry rule.
pub(crate) trait BackendHook {
    /// What the hook answers itself.
    type Local;
    /// A failure that asks for a session failover replays the session's `initialize`
    /// (`false`: the loop ends with the last refusal instead).
    const FAILS_OVER: bool = true;

    /// Before an attempt on backend `bi` of group `gi`.
    async fn before(&mut self, _core: &Core, _gi: usize, _bi: usize) -> Before<Self::Local> {
        Before::Go
    }

    /// The backend session id the request goes in (`planned`: the route's).
    fn sid<'s>(&'s self, planned: Option<&'s [u8]>) -> Option<&'s [u8]> {
        planned
    }

    /// Writes the request for `backend` and its session id `sid` into `out`.
    fn write(&self, out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>);

    /// What the answer head in `ubuf` (`head_len` bytes) of backend `(gi, bi)` means.
    async fn after(
        &mut self,
        _core: &Core,
        _at: (usize, usize),
        _up: &mut Conn,
        _ubuf: &mut Vec<u8>,
        _head_len: usize,
    ) -> After<Self::Local> {
        After::Take
    }
}

/// The hook of a request written by a closure and otherwise sent as it is.
pub(crate) struct PlainHook<'w, W>(pub &'w W);

impl<W: Fn(&mut Vec<u8>, &Backend, Option<&[u8]>)> BackendHook for PlainHook<'_, W> {
    type Local = std::convert::Infallible;

    fn write(&self, out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>) {
        (self.0)(out, backend, sid);
    }
}

/// The attempt loop: picks the backend (the session's, or the balancer's), takes the
/// per-backend permits, lets `hook` prepare, writes the request as `hook` says and reads the
/// answer head; after a failure, [`lb::retry_decision`] alone says what follows.
pub(crate) async fn reach_with<'a, H: BackendHook>(
    core: &'a Core,
    plan: &mut Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
    io: &mut AttemptIo<'_>,
    hook: &mut H,
) -> Result<Reached<'a>, Stop<H::Local>> {
    let gi = plan.gi;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return Err(Stop::Refuse(Refusal::new(
            503,
            -32603,
            "no backend available",
        )));
    };
    let mut tried: u64 = 0;
    let mut last = Refusal::new(503, -32603, "no backend available");
    let mut fresh_retry: Option<usize> = None;
    let mut fresh_retry_used = false;
    core.bal.deposit(gi, balance::now_ns());
    for _ in 0..group.backends.len().max(1) + 1 {
        let now = balance::now_ns();
        if plan.needs_failover {
            if !H::FAILS_OVER {
                break;
            }
            if let Err(r) = fail_over(core, io, plan, tried, now).await {
                last = r;
                break;
            }
        }
        let (bi, fresh) = match fresh_retry.take() {
            Some(bi) => (bi, true),
            None => {
                let pick = || core.bal.pick(gi, group, rt, plan.hash_key, tried, now);
                match plan.pinned.or_else(pick) {
                    Some(bi) => (bi, false),
                    None => break,
                }
            }
        };
        if bi < 64 {
            tried |= 1 << bi;
        }
        let Some(backend) = group.backends.get(bi) else {
            break;
        };
        // Per-backend concurrency: a new session or stateless request tries another backend;
        // a session's request waits (or is refused) as the rule says.
        let pinned = plan.pinned.is_some();
        if let Err(ri) =
            admission::acquire_backend_permits(core, conc, gi, bi, pinned, permits).await
        {
            if !pinned && tried.count_ones() < group.backends.len() as u32 {
                continue;
            }
            last = admission::concurrency_refusal(ri);
            break;
        }
        io.meta.backend = Some(bi);
        let in_flight = InFlight::start(core, gi, bi);
        let result = match hook.before(core, gi, bi).await {
            Before::Go => {
                let sid = hook.sid(plan.sid.as_deref());
                let write = |out: &mut Vec<u8>, b: &Backend, sid: Option<&[u8]>| {
                    hook.write(out, b, sid);
                };
                let timeout = plan.head_timeout;
                attempt(core, backend, gi, bi, sid, fresh, io, timeout, &write).await
            }
            Before::Failed(e) => Err(e),
            Before::Refuse(r) => {
                last = r;
                break;
            }
            Before::Local(l) => return Err(Stop::Local(l)),
        };
        match result {
            Ok((mut up, head_len)) => {
                match hook.after(core, (gi, bi), &mut up, io.ubuf, head_len).await {
                    After::Take => {}
                    After::Again => {
                        fresh_retry = Some(bi);
                        io.meta.retried = true;
                        continue;
                    }
                    After::Local(l) => return Err(Stop::Local(l)),
                }
                return Ok(Reached {
                    up,
                    head_len,
                    bi,
                    backend_tag: backend.tag,
                    in_flight,
                });
            }
            Err(e) => {
                drop(in_flight);
                let (status, message) = e.status();
                if logs::first_in_window("upstream failure", &backend.name, message) {
                    tracing::warn!(backend = %backend.name, error = message, "upstream failure");
                }
                let now = balance::now_ns();
                let kind = Some(e.failure_kind());
                balance::record_outcome(&core.shared.hub, rt, group, bi, kind, now);
                last = Refusal::new(status, -32603, message);
                let cx = RetryContext {
                    read_only: plan.read_only,
                    sticky: plan.pinned.is_some(),
                    can_fail_over: plan.can_fail_over,
                    fresh_retry_used,
                };
                match retry_decision(&e, &cx) {
                    Retry::No => break,
                    Retry::FreshConnection => {
                        fresh_retry_used = true;
                        fresh_retry = Some(bi);
                    }
                    Retry::OtherBackend => {}
                    Retry::OtherBackendIfBudget => {
                        if !core.bal.try_withdraw(gi, now) {
                            break;
                        }
                    }
                    Retry::FailOver => plan.needs_failover = true,
                }
                io.meta.retried = true;
                io.meta.retries = io.meta.retries.saturating_add(1);
            }
        }
    }
    Err(Stop::Refuse(last))
}

/// One attempt on backend `bi`: a connection (pooled, or new when `fresh`), the request
/// written, the answer read up to a complete head (its length in `io.ubuf`) within
/// `head_timeout`.
#[allow(clippy::too_many_arguments)]
async fn attempt(
    core: &Core,
    backend: &Backend,
    gi: usize,
    bi: usize,
    sid: Option<&[u8]>,
    fresh: bool,
    io: &mut AttemptIo<'_>,
    head_timeout: std::time::Duration,
    write: &impl Fn(&mut Vec<u8>, &Backend, Option<&[u8]>),
) -> Result<(Conn, usize), UpstreamError> {
    let (mut up, reused) = core.upstream(gi, bi, fresh).await?;
    io.out.clear();
    write(io.out, backend, sid);
    io.ubuf.clear();
    let out = std::mem::take(io.out);
    let len = out.len();
    let poll = crate::runtime::clock::poll_id();
    let (w, out) = up.write_range(out, 0..len).await;
    *io.out = out;
    // The end of the write: on the epoll driver a writable connection takes it in this same
    // poll, whose cached time is from before the request was parsed and routed.
    let sent = crate::runtime::clock::now_after(poll);
    io.meta.sent = Some(crate::runtime::clock::now_ns());
    if w.is_err() {
        return Err(UpstreamError::new(
            UpstreamErrorKind::WriteFailed,
            reused,
            false,
        ));
    }
    let deadline = monoio::time::Instant::from_std(sent) + head_timeout;
    match upstream::read_head_with(&mut up, io.ubuf, Some(deadline), io.timer).await {
        Ok(n) => Ok((up, n)),
        Err(e) => Err(e.upstream(reused)),
    }
}

/// Moves the request's session to another backend by replaying its `initialize`.
async fn fail_over(
    core: &Core,
    io: &mut AttemptIo<'_>,
    plan: &mut Plan<'_>,
    tried: u64,
    now: u64,
) -> Result<(), Refusal> {
    let group = core.shared.config.servers.get(plan.gi);
    let (Some(group), Some(sealed)) = (group, io.sealed) else {
        return Err(Refusal::new(404, -32603, "Session not found"));
    };
    let Some(body) = core.shared.failover.init_body(sealed) else {
        // Nothing to replay (the session predates this process, or was evicted).
        return Err(Refusal::new(404, -32603, "Session not found"));
    };
    let from = plan.pinned.unwrap_or(usize::MAX);
    let Some((to, sid)) = failover::reinitialize(core, plan.gi, &body, from, tried, now).await
    else {
        return Err(Refusal::new(
            503,
            -32603,
            "no healthy backend to fail the session over to",
        ));
    };
    let (Some(to_backend), from_name) = (
        group.backends.get(to),
        group.backends.get(from).map_or("?", |b| b.name.as_str()),
    ) else {
        return Err(Refusal::new(503, -32603, "no backend available"));
    };
    if logs::first_in_window("session failed over", from_name, "") {
        tracing::warn!(
            server = %group.name,
            from = from_name,
            to = %to_backend.name,
            "session failed over by replaying its initialize; server-to-client messages of \
             that session in flight on the old backend are lost"
        );
    }
    core.shared.failover.remap(sealed, to_backend.tag, &sid);
    plan.sid = Some(Cow::Owned(sid));
    plan.pinned = Some(to);
    plan.needs_failover = false;
    io.meta.retried = true;
    io.meta.retries = io.meta.retries.saturating_add(1);
    Ok(())
}

/// In groups that fail sessions over: keeps the client's `initialize` once its answer has
/// started a session (the failover replays it).
fn remember_initialize(core: &Core, c: &ClientConn) {
    if c.meta.method == Method::Initialize && c.meta.new_session {
        core.shared
            .failover
            .remember(&c.new_sid, c.req.body().to_vec());
    }
}
