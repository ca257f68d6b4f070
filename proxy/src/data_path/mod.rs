//! The data path: one MCP request, from the bytes of its head to the last byte of its answer.
//!
//! The stages, in order (each a module; decisions are plain functions, the async code only
//! moves bytes between them):
//! 1. [`head`]: read and parse the request head (bounded in size and time).
//! 2. [`route::target`]: which server group the path names (or the 2024-11-05 bridge, or
//!    OAuth metadata), then [`admission::check_access`]: `Origin` and credentials, decided on
//!    the head before any body is read.
//! 3. [`body`]: the body, capped; the request then owns exactly its bytes.
//! 4. [`admission::envelope`]: the JSON-RPC envelope, the 2026-07-28 mirror headers, rate
//!    limits; then the concurrency permits.
//! 5. [`route::session_route`] and [`attempt`]: where the request goes, each attempt's typed
//!    outcome and the one retry rule ([`lb::retry_decision`]).
//! 6. [`response`]: the answer head rewritten, the body forwarded as it arrives.
//! 7. [`record`]: statistics and the access log.
//!
//! [`request`] holds the types every stage shares; [`reply`] writes answers mcplb makes
//! itself. `runtime::conn` drives a connection's requests through [`handle_request`].

pub(crate) mod admission;
pub(crate) mod attempt;
pub(crate) mod audit;
pub(crate) mod body;
pub(crate) mod cache;
pub(crate) mod client_address;
pub(crate) mod confirm;
pub(crate) mod era_ask;
pub(crate) mod era_bridge;
pub(crate) mod era_listen;
pub(crate) mod era_sessions;
pub(crate) mod failover;
pub(crate) mod gather;
pub(crate) mod head;
pub(crate) mod legacy_front;
pub(crate) mod metadata;
pub(crate) mod policy;
pub(crate) mod record;
pub(crate) mod reply;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod route;
pub(crate) mod upstream;
pub(crate) mod views;
pub(crate) mod waiting;

use std::borrow::Cow;
use std::time::Instant;

use crate::config::SessionFailover;
use crate::control::stats::Counter;
use crate::data_path::admission::{Admitted, Permits};
use crate::data_path::attempt::{EraPlan, Plan};
use crate::data_path::request::{offset_of, ClientConn, HttpMethod, Next, Refusal, ReqMeta, Stop};
use crate::data_path::route::{NotOwner, SessionRoute, Target};
use crate::policy::Effect;
use crate::runtime::core::{Core, BUF_SIZE};
use crate::session::{Opened, SCRATCH};

/// Bytes asked of the kernel per read.
pub(crate) const READ_SIZE: usize = BUF_SIZE;

/// Reads one request (head and body), routes it, forwards it and its answer, and records it.
pub(crate) async fn handle_request(core: &Core, c: &mut ClientConn) -> Next {
    let start = crate::runtime::clock::now();
    let first_poll = crate::runtime::clock::poll_id();
    // The worker's loop gaps ride on the clock reads of the statistics. Their durations are
    // taken in nanoseconds (`clock::now_ns`, the same reading): a subtraction, not a call.
    let stats = core.shared.config.proxy.stats;
    let start_ns = stats.then(crate::runtime::clock::now_ns);
    let begun = start_ns.map(crate::runtime::loop_gap::Begun::at);
    c.meta = ReqMeta::default();
    c.trace = None;
    let next = match head::read_head(&core.shared.config.proxy, c).await {
        Ok(()) => {
            c.identify(&core.shared.config.proxy.client_address);
            match serve(core, c).await {
                Ok(next) => next,
                Err(stop) => stopped(c, stop).await,
            }
        }
        // The client closed a connection on which no request had begun (an idle keep-alive
        // one, or a new one that never sent a byte): no request, nothing to count or log.
        Err(Stop::Closed) if c.req.buf.is_empty() => {
            c.next_request();
            return Next::Close;
        }
        Err(stop) => stopped(c, stop).await,
    };
    // One clock read for the statistics and the audit line (`now_ns` is the same reading,
    // cached for this poll as `now` is): a fresh one when the whole request ran in the poll
    // it began in (a refusal or a cached answer written at once on the epoll driver), whose
    // cached time is `start`.
    let end = (stats || core.audit.is_some()).then(|| crate::runtime::clock::now_after(first_poll));
    if let (Some(start_ns), Some(_)) = (start_ns, end) {
        let end_ns = crate::runtime::clock::now_ns();
        record::record(core, &c.meta, end_ns.saturating_sub(start_ns) / 1_000);
        if let Some(b) = begun {
            b.end(end_ns);
        }
    }
    if core.access_log.is_some() {
        record::write_access_log(core, c, start);
    }
    if let Some(end) = end.filter(|_| core.audit.is_some()) {
        audit::write(core, c, start, end);
    }
    if core.shared.tracer.is_some() {
        record::span(core, c, start);
    }
    crate::runtime::flush::note_request(start);
    c.next_request();
    next
}

/// Answers a request a stage stopped.
async fn stopped(c: &mut ClientConn, stop: Stop) -> Next {
    match stop {
        Stop::Refuse(r) => reply::refuse(c, &r).await,
        // `wait_for_lease` turns it into a refusal; answered the same if one ever escapes.
        Stop::LeasePending => {
            let r = Refusal::new(429, -32000, "rate limit exceeded")
                .with_headers("retry-after: 1\r\n".to_string());
            reply::refuse(c, &r).await
        }
        Stop::Closed => {
            // Part of a request arrived, then the client went away: an incomplete request,
            // logged as 499 (nginx's "client closed request"), counted as bad_request.
            c.meta.status = 499;
            c.meta.by_proxy = true;
            Next::Close
        }
        Stop::DroppedNotification => {
            // A notification over a rate limit is dropped (counted as 429), not answered with
            // an error: clients do not expect one.
            let next = reply::must_close(c, false);
            c.out.clear();
            c.out
                .extend_from_slice(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n");
            c.meta.status = 429;
            c.meta.by_proxy = true;
            reply::send_out(c, next).await
        }
    }
}

/// The stages after the head: where, who, the body, the envelope, limits, route, attempts.
async fn serve(core: &Core, c: &mut ClientConn) -> Result<Next, Stop> {
    #[cfg(debug_assertions)]
    crate::runtime::test_hooks::panic_on_path(c.req.path());
    let method = c.req.method();
    let (gi, legacy) = match route::target(&core.shared, c.req.path(), method) {
        Target::Group(gi) => (gi, None),
        Target::LegacyFront(gi, front) => (gi, Some(front)),
        Target::Metadata(doc) => return Ok(metadata::answer(core, c, doc).await),
        Target::NotFound => return Err(Refusal::invalid(404, "no MCP server at this path").into()),
    };
    c.meta.group = Some(gi);
    if method == HttpMethod::Other {
        return Err(Refusal::invalid(405, "method not allowed").into());
    }
    if let Err(d) = admission::check_access(core, c, gi) {
        let (refusal, read_body_first) = admission::denial(core, gi, &c.req, &d);
        if read_body_first {
            // Small bodies are read so the refusal can carry the request's id.
            read_body(core, c).await?;
            note_id(core, c);
        }
        return Err(refusal.into());
    }
    read_body(core, c).await?;
    if let Some(front) = legacy {
        return Ok(legacy_front::forward(core, c, gi, front).await);
    }
    let virtual_server = core
        .shared
        .config
        .servers
        .get(gi)
        .and_then(|g| g.virtual_server.clone());
    if let Some(vs) = virtual_server {
        // Boxed: the virtual server's future is large (about 18 KiB when this was measured,
        // 8 448 bytes at 3f09708); inlined here it made every plain request's future that
        // size, and conn.rs boxes that future per request (a 10 000 instruction memcpy per
        // request, 32 300 vs 23 500 instructions: bench/instructions.sh).
        return crate::runtime::boxed(|| crate::virtual_server::serve(core, c, gi, &vs)).await;
    }
    let mut scratch = [0u8; SCRATCH];
    let opened = open_session(core, c, gi, &mut scratch)?;
    // mcplb's own id for the client of a server that issues no session (it names no backend
    // session: `response::rewrite_head`), given only where approval may be asked.
    let own_sessionless = opened.as_ref().is_some_and(|o| o.sid.is_empty());
    if own_sessionless && method == HttpMethod::Delete {
        // Nothing to end at the backend.
        return Ok(reply::document(c, 200, b"", "").await);
    }
    let admitted = match method {
        HttpMethod::Post => Some(match admission::envelope(core, c, gi) {
            // Boxed: the waiting future lives on the heap only when a request waits, not in
            // every request's future.
            Err(Stop::LeasePending) => Box::pin(wait_for_lease(core, c, gi)).await?,
            verdict => verdict?,
        }),
        _ => None,
    };
    let (asks, watch_tools) = core
        .shared
        .config
        .servers
        .get(gi)
        .map_or((false, false), |g| {
            (
                g.policy.confirms() || g.confirm_destructive,
                g.confirm_destructive,
            )
        });
    if asks {
        c.meta.watch_tools = watch_tools;
        // Only where a policy asks for approval: the session's `elicitation` capability is
        // remembered in its id, and a client's answer to mcplb's question goes to its call.
        c.meta.elicits = match c.meta.method {
            protocol::Method::Initialize => {
                crate::policy::confirm::initialize_elicits(c.req.body())
            }
            _ => opened.as_ref().is_some_and(|o| o.elicits),
        };
        if c.meta.row == crate::control::stats::M_RESPONSE {
            if let Some(next) = Box::pin(confirm::deliver(c)).await {
                return Ok(next);
            }
        }
    }
    // The response cache: answered here, or marked to fill it (boxed: only cached groups'
    // requests carry its future).
    let mut _flight = None;
    // A call that waits for the user's approval is never answered from the cache.
    let confirming = c.meta.policy.is_some_and(|d| d.effect == Effect::Confirm);
    if admitted.is_some() && !confirming && core.caches.has(gi) {
        // mcplb's own sessions (for a 2025-era client of a 2026-07-28 backend, or naming no
        // backend session) hold no backend state: their answers are a sessionless request's.
        let in_session = opened.as_ref().map_or(c.req.session_id().is_some(), |o| {
            !o.sid.is_empty() && crate::session::era::parse_session_payload(o.sid).is_none()
        });
        let declared = opened
            .as_ref()
            .and_then(|o| crate::session::era::parse_session_payload(o.sid));
        match Box::pin(cache::lookup(core, c, gi, in_session, declared.as_ref())).await {
            cache::Lookup::Answered(next) => return Ok(next),
            cache::Lookup::Miss(guard) => _flight = guard,
            cache::Lookup::Pass => {}
        }
    }
    let mut permits: Permits = Default::default();
    if let Some(a) = &admitted {
        admission::acquire_permits(core, &a.conc, &mut permits).await?;
    }
    if let Some(t) = &core.shared.config.telemetry {
        let body = c.req.body();
        let meta = admitted
            .as_ref()
            .and_then(|a| a.traceparent.clone())
            .and_then(|r| body.get(r));
        let trace = crate::telemetry::decide(c.req.header(b"traceparent"), meta, t.sample_ratio);
        c.trace = Some(trace);
    }
    let (plan, mut era) = plan(core, c, gi, admitted.as_ref(), opened)?;
    let conc = admitted.map(|a| a.conc).unwrap_or_default();
    if c.meta.policy.is_some_and(|d| d.effect == Effect::Confirm) {
        // Boxed, as the era bridge's answers below: asking is off every plain request's future.
        // mcplb's own session for a 2026-07-28 backend carries what its client declared.
        let session = match era.legacy_client {
            Some(p) => Some(
                crate::session::era::parse_session_payload(p)
                    .is_some_and(|d| crate::policy::confirm::declares_elicitation(d.capabilities)),
            ),
            None => (plan.sid.is_some() || own_sessionless).then_some(c.meta.elicits),
        };
        match Box::pin(ask(core, c, gi, era.modern, session)).await? {
            confirm::Approval::Forward => {}
            confirm::Approval::Answered(next) => return Ok(next),
            confirm::Approval::Stream => {
                let Some(group) = core.shared.config.servers.get(gi) else {
                    return Err(Refusal::new(503, -32603, "no backend available").into());
                };
                if let Some(p) = era.legacy_client {
                    let asked =
                        confirm::ask_on_bridged_stream(core, c, group, gi, p, &conc, &mut permits);
                    return Box::pin(asked).await;
                }
                let asked = confirm::ask_on_stream(core, c, group, plan, &conc, &mut permits);
                return Box::pin(asked).await;
            }
        }
    }
    // The era bridge's own answers, boxed (as the virtual server's above).
    if era.modern && crate::session::era::has_request_state(c.req.body()) {
        // A 2026-07-28 retry carrying the input a bridged call waits for goes to that call.
        match Box::pin(era_bridge::resume(core, c, true)).await {
            era_bridge::Resumed::Done(next) => return Ok(next),
            era_bridge::Resumed::Replay(rounds) => era.replay = Some(Box::new(rounds)),
            era_bridge::Resumed::Not => {}
        }
    }
    if era.legacy_client.is_some() {
        // What a 2026-07-28 backend has no use for is answered here.
        if let Some(next) = Box::pin(era_bridge::answer_locally(c)).await {
            return Ok(next);
        }
    }
    Ok(attempt::send(core, c, plan, era, &conc, &mut permits).await)
}

/// How a call that needs approval is asked about ([`confirm::approve`]); `session`: whether
/// the client of its session (if it has one) declared `elicitation`.
async fn ask(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    modern: bool,
    session: Option<bool>,
) -> Result<confirm::Approval, Stop> {
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Err(Refusal::new(503, -32603, "no backend available").into());
    };
    confirm::approve(core, c, group, modern, session).await
}

/// [`admission::envelope`] again while a `cluster` rate limit has no lease for the caller
/// yet, polling each millisecond up to [`cluster::LEASE_WAIT`](crate::control::cluster::LEASE_WAIT)
/// (then 429): only a caller's first request after a pause waits, for one Redis round trip of
/// the lease thread.
async fn wait_for_lease(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
) -> Result<admission::Admitted, Stop> {
    let start = Instant::now();
    loop {
        monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        match admission::envelope(core, c, gi) {
            Err(Stop::LeasePending) if start.elapsed() < crate::control::cluster::LEASE_WAIT => {}
            Err(Stop::LeasePending) => {
                return Err(Refusal::new(429, -32000, "rate limit exceeded")
                    .with_headers("retry-after: 1\r\n".to_string())
                    .with_data("{\"cluster\":\"no lease in time\"}".to_string())
                    .into());
            }
            other => return other,
        }
    }
}

/// Notes the JSON-RPC id of a request refused before its envelope was read, so that the
/// refusal carries it.
fn note_id(core: &Core, c: &mut ClientConn) {
    let body = c.req.body();
    let id = protocol::parse_message_with_depth(body, core.shared.config.proxy.max_json_depth)
        .ok()
        .and_then(|e| e.id)
        .map(|id| offset_of(body, id));
    c.req.set_id(id);
}

/// Reads the body and counts its bytes.
async fn read_body(core: &Core, c: &mut ClientConn) -> Result<(), Stop> {
    let consumed = body::read_body(&core.shared.config.proxy, c).await?;
    core.rec
        .borrow_mut()
        .count(Counter::BytesIn, consumed as u64);
    Ok(())
}

/// Opens the request's session id, if it has one (into `scratch`), and refuses it (404, as an
/// unknown session) when the group binds sessions to callers and it is not this caller's.
/// Before the envelope's rate limits and the permits, so that another caller's requests with
/// a session's id cannot spend that session's budget either.
fn open_session<'s>(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    scratch: &'s mut [u8; SCRATCH],
) -> Result<Option<Opened<'s>>, Refusal> {
    let (Some(sealed), Some(group)) = (c.req.session_id(), core.shared.config.servers.get(gi))
    else {
        return Ok(None);
    };
    let Some(opened) = core
        .shared
        .sealer
        .open_memo(sealed, scratch, &mut c.session_memo)
    else {
        return Ok(None);
    };
    let me = admission::owner_under_key(core, c, group, opened.key);
    match route::check_owner(group, &opened, me.as_ref()) {
        Ok(()) => Ok(Some(opened)),
        Err(NotOwner { unowned }) => {
            record::not_owner(core, &group.name, &c.caller.name, unowned);
            note_id(core, c);
            Err(Refusal::invalid(404, "Session not found"))
        }
    }
}

/// Where the request may go: its session's backend (`opened`: its id, opened), a failover
/// first, or the group's balancer; and what the era bridge has to do with it.
fn plan<'s>(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    admitted: Option<&Admitted>,
    opened: Option<Opened<'s>>,
) -> Result<(Plan<'s>, EraPlan<'s>), Refusal> {
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Err(Refusal::new(503, -32603, "no backend available"));
    };
    let reinit = group.session_failover == SessionFailover::Reinitialize;
    let mut plan = Plan {
        gi,
        pinned: None,
        sid: None,
        needs_failover: false,
        hash_key: admitted.and_then(|a| a.hash_key),
        // GET streams and DELETE only read (or end a session).
        read_only: admitted.is_none_or(|a| a.read_only),
        can_fail_over: false,
        head_timeout: core.shared.config.proxy.upstream_timeout,
    };
    let mut era = EraPlan {
        // A request in a session is of that session's era, whatever its `_meta` says.
        modern: admitted.is_some_and(|a| a.modern) && c.req.session_id().is_none(),
        legacy_client: None,
        replay: None,
    };
    let Some(sealed) = c.req.session_id() else {
        if admitted.is_none() {
            plan.hash_key = route::balance_key(group, &c.req, c.client_ip, None);
        }
        return Ok((plan, era));
    };
    if core.access_log.is_some() {
        c.meta.session_hash = core.shared.key_hasher.hash_key(sealed);
    }
    if opened.as_ref().is_some_and(|o| o.sid.is_empty()) {
        // mcplb's own id for the client of a server that issues no session: any backend
        // serves it, with no session id.
        return Ok((plan, era));
    }
    if let Some(o) = opened
        .as_ref()
        .filter(|o| crate::session::era::parse_session_payload(o.sid).is_some())
    {
        // mcplb's own session for a 2025-era client of a 2026-07-28 backend: no backend
        // state, so any backend serves it.
        era.legacy_client = Some(o.sid);
        return Ok((plan, era));
    }
    plan.can_fail_over = reinit;
    let now = crate::balance::now_ns();
    match route::session_route(&core.shared, gi, sealed, opened, now) {
        SessionRoute::Pinned { bi, sid } => {
            plan.pinned = Some(bi);
            plan.sid = Some(Cow::Borrowed(sid));
        }
        SessionRoute::Moved { bi, sid } => {
            plan.pinned = Some(bi);
            plan.sid = Some(Cow::Owned(sid));
        }
        SessionRoute::FailOver { from } => {
            plan.pinned = Some(from);
            plan.needs_failover = true;
        }
        SessionRoute::NotFound { unavailable } => {
            if let Some(b) = unavailable.and_then(|bi| group.backends.get(bi)) {
                let what = "session on an unavailable backend: 404";
                if crate::control::logs::first_in_window_info(what, &b.name, "") {
                    tracing::info!(backend = %b.name, "{what}");
                }
            }
            return Err(Refusal::invalid(404, "Session not found"));
        }
    }
    Ok((plan, era))
}
