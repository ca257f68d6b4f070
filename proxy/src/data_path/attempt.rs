//! Stage 5: attempts. A request goes to the backend its session lives on, or to the one the
//! group's balancer picks; each attempt ends in an answer head or a typed
//! [`lb::UpstreamError`], and [`lb::retry_decision`] alone says what follows a failure: a
//! fresh connection to the same backend, another backend (within the retry budget when the
//! request may have run), a session failover, or the error to the client. A `tools/call`
//! that may have reached a backend is never sent again.

use std::borrow::Cow;
use std::time::Instant;

use lb::{retry_decision, Retry, RetryContext, UpstreamError, UpstreamErrorKind};
use protocol::Method;

use crate::balance;
use crate::config::{Backend, BackendEra, SessionFailover};
use crate::control::logs;
use crate::control::stats::Gauge;
use crate::data_path::admission::{self, ConcKeys, Permits};
use crate::data_path::request::{ClientConn, HttpMethod, Next, Refusal, ReqMeta};
use crate::data_path::response::{forward_response, Answer};
use crate::data_path::{era_bridge, failover, reply, upstream};
use crate::runtime::core::Core;
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
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let bridging = group.era_bridge
        && ((era.modern && group.era != BackendEra::Stateless && !core.bridges.all_stateless(gi))
            || era.legacy_client.is_some()
            || (c.meta.method == Method::Initialize
                && plan.sid.is_none()
                && group.era != BackendEra::Sessions));
    if bridging {
        // A bridged answer is relayed in the client's era, not kept.
        c.cache_fill = None;
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
    let rtt = c.meta.sent.map(|s| s.elapsed().as_nanos() as u64);
    let answer = Answer {
        up: &mut up,
        buf: ubuf,
        head_len,
        backend_tag,
        backend_sid: plan.sid.as_deref(),
        end_on_shutdown: c.req.method() == HttpMethod::Get,
        sessionless: false,
    };
    let keep = !c.req.head.close;
    let (next, reusable) = forward_response(core, c, answer, keep).await;
    drop(in_flight);
    if reusable {
        core.put_upstream(gi, bi, up);
    }
    let now = balance::now_ns(core.shared.epoch);
    let failure = (c.meta.status >= 500).then_some(lb::FailureKind::Status5xx);
    balance::record_outcome(&core.shared.hub, rt, group, bi, failure, now);
    core.bal.end_rtt(gi, bi, rtt, now);
    if group.session_failover == SessionFailover::Reinitialize {
        remember_initialize(core, c);
    }
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
    };
    reach(core, plan, conc, permits, &mut io, &write).await
}

/// The attempt loop of a request the era bridge may handle: per backend, its era (a probe
/// when unknown), a backend session for a 2026-07-28 request to a 2025-era backend (re-opened
/// once when the backend has dropped it), a 2025-era client's `initialize` answered from a
/// 2026-07-28-only backend's `server/discover`, the request rewritten on its way, and the
/// answer relayed as the client's era needs it. The retry rule is [`reach`]'s.
#[allow(clippy::too_many_lines)]
async fn era_send(
    core: &Core,
    c: &mut ClientConn,
    mut plan: Plan<'_>,
    era_plan: EraPlan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Next {
    let gi = plan.gi;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let mut tried: u64 = 0;
    let mut last = Refusal::new(503, -32603, "no backend available");
    let mut fresh_retry: Option<usize> = None;
    let mut fresh_retry_used = false;
    // A bridged request's backend session was re-opened after a 404 (once only).
    let mut reopened = false;
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
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    if c.out.capacity() == 0 {
        c.out = core.take_buf();
    }
    let hop = c.hop();
    let forwarding = (&core.shared.config.proxy.client_address, &hop);
    core.bal.deposit(gi, balance::now_ns(core.shared.epoch));
    for _ in 0..group.backends.len().max(1) + 1 {
        let now = balance::now_ns(core.shared.epoch);
        if plan.needs_failover {
            // No request the era bridge handles belongs to a backend's session.
            break;
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
        c.meta.backend = Some(bi);
        c.meta.ended_session = c.req.method() == HttpMethod::Delete && plan.sid.is_some();
        let in_flight = InFlight::start(core, gi, bi);
        if new_handshake && group.era == BackendEra::Stateless {
            // A 2026-07-28 backend: the client's initialize is answered from its discover.
            drop(in_flight);
            c.ubuf = ubuf;
            return era_bridge::answer_initialize(core, c, gi, bi).await;
        }
        let bridged =
            match era_bridge::session_for(core, &era_bridge::Asker::of(c), gi, bi, era_plan.modern)
                .await
            {
                Ok(b) => Ok(b),
                Err(era_bridge::Failed::Refuse(r)) => {
                    last = r;
                    break;
                }
                Err(era_bridge::Failed::Upstream(e)) => Err(e),
            };
        let bridge = bridged.as_ref().ok().and_then(Option::as_ref);
        if let Some(s) = bridge.filter(|_| c.meta.method == Method::ServerDiscover) {
            drop(in_flight);
            c.ubuf = ubuf;
            return era_bridge::answer_discover(c, s).await;
        }
        let sid = match bridge {
            Some(s) => s.sid.as_deref(),
            None => plan.sid.as_deref(),
        };
        let trace = c.trace;
        let rewrite = match (bridge, &legacy) {
            (Some(s), _) => upstream::Rewrite {
                version: Some(s.version.as_bytes()),
                trace: trace.as_ref(),
                ..Default::default()
            },
            (None, Some((body, headers))) => upstream::Rewrite {
                version: Some(era::MODERN.as_bytes()),
                body: Some(body),
                headers,
                trace: trace.as_ref(),
            },
            (None, None) => upstream::Rewrite {
                trace: trace.as_ref(),
                ..Default::default()
            },
        };
        let result = match &bridged {
            Err(e) => Err(*e),
            Ok(_) => {
                let ClientConn { req, out, meta, .. } = &mut *c;
                let req: &crate::data_path::request::Request = req;
                let write = |out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>| {
                    let cred = &group.auth.upstream;
                    upstream::build_request(out, req, backend, sid, &rewrite, cred, forwarding);
                };
                let mut io = AttemptIo {
                    out,
                    ubuf: &mut ubuf,
                    meta,
                    sealed: req.session_id(),
                };
                let timeout = plan.head_timeout;
                attempt(core, backend, gi, bi, sid, fresh, &mut io, timeout, &write).await
            }
        };
        match result {
            Ok((mut up, head_len)) => {
                if let Some(s) = bridge.filter(|_| !reopened) {
                    if era_bridge::session_lost(core, &mut up, &mut ubuf, head_len).await {
                        // The backend no longer knows mcplb's session (expired, restarted):
                        // it ran nothing. Once more, on a new session.
                        core.bridges.forget(gi, bi, s);
                        reopened = true;
                        fresh_retry = Some(bi);
                        c.meta.retried = true;
                        continue;
                    }
                }
                if new_handshake && group.era == BackendEra::Auto {
                    let head = ubuf.get(..head_len).unwrap_or_default();
                    let refused = era::status_of(head).is_some_and(|s| (400..500).contains(&s));
                    if refused && era_bridge::serves_2026(core, gi, bi).await {
                        // It refused the handshake and serves 2026-07-28: a server of that
                        // revision alone. The client's initialize is answered from its discover.
                        drop(up);
                        drop(in_flight);
                        c.ubuf = ubuf;
                        return era_bridge::answer_initialize(core, c, gi, bi).await;
                    }
                }
                let rtt = c.meta.sent.map(|s| s.elapsed().as_nanos() as u64);
                let keep = !c.req.head.close;
                let (next, pool) = if let Some(s) = bridge {
                    let leg = era_bridge::Leg {
                        gi,
                        bi,
                        session: s.clone(),
                        backend_tag: backend.tag,
                    };
                    era_bridge::forward(core, c, up, ubuf, head_len, keep, leg).await
                } else {
                    let answer = Answer {
                        up: &mut up,
                        buf: ubuf,
                        head_len,
                        backend_tag: backend.tag,
                        backend_sid: sid,
                        end_on_shutdown: c.req.method() == HttpMethod::Get,
                        sessionless: false,
                    };
                    let (next, reusable) = forward_response(core, c, answer, keep).await;
                    (next, reusable.then_some(up))
                };
                drop(in_flight);
                if let Some(up) = pool {
                    core.put_upstream(gi, bi, up);
                }
                let now = balance::now_ns(core.shared.epoch);
                let failure = (c.meta.status >= 500).then_some(lb::FailureKind::Status5xx);
                balance::record_outcome(&core.shared.hub, rt, group, bi, failure, now);
                core.bal.end_rtt(gi, bi, rtt, now);
                if group.session_failover == SessionFailover::Reinitialize {
                    remember_initialize(core, c);
                }
                return next;
            }
            Err(e) => {
                drop(in_flight);
                let (status, message) = e.status();
                if logs::first_in_window("upstream failure", &backend.name, message) {
                    tracing::warn!(backend = %backend.name, error = message, "upstream failure");
                }
                let now = balance::now_ns(core.shared.epoch);
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
                c.meta.retried = true;
            }
        }
    }
    c.ubuf = ubuf;
    reply::refuse(c, &last).await
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

/// The attempt loop: picks the backend (the session's, or the balancer's), takes the
/// per-backend permits, writes the request with `write` (given the backend and its session
/// id) and reads the answer head; after a failure, [`lb::retry_decision`] alone says what
/// follows. `Err`: the refusal for the client.
pub(crate) async fn reach<'a>(
    core: &'a Core,
    plan: &mut Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
    io: &mut AttemptIo<'_>,
    write: &impl Fn(&mut Vec<u8>, &Backend, Option<&[u8]>),
) -> Result<Reached<'a>, Refusal> {
    let gi = plan.gi;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return Err(Refusal::new(503, -32603, "no backend available"));
    };
    let mut tried: u64 = 0;
    let mut last = Refusal::new(503, -32603, "no backend available");
    let mut fresh_retry: Option<usize> = None;
    let mut fresh_retry_used = false;
    core.bal.deposit(gi, balance::now_ns(core.shared.epoch));
    for _ in 0..group.backends.len().max(1) + 1 {
        let now = balance::now_ns(core.shared.epoch);
        if plan.needs_failover {
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
        let sid = plan.sid.as_deref();
        match attempt(
            core,
            backend,
            gi,
            bi,
            sid,
            fresh,
            io,
            plan.head_timeout,
            write,
        )
        .await
        {
            Ok((up, head_len)) => {
                return Ok(Reached {
                    up,
                    head_len,
                    bi,
                    backend_tag: backend.tag,
                    in_flight,
                })
            }
            Err(e) => {
                drop(in_flight);
                let (status, message) = e.status();
                if logs::first_in_window("upstream failure", &backend.name, message) {
                    tracing::warn!(backend = %backend.name, error = message, "upstream failure");
                }
                let now = balance::now_ns(core.shared.epoch);
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
    Err(last)
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
    let (w, out) = up.write_range(out, 0..len).await;
    *io.out = out;
    io.meta.sent = Some(Instant::now());
    if w.is_err() {
        return Err(UpstreamError::new(
            UpstreamErrorKind::WriteFailed,
            reused,
            false,
        ));
    }
    let deadline = monoio::time::Instant::now() + head_timeout;
    match upstream::read_head(&mut up, io.ubuf, Some(deadline)).await {
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
