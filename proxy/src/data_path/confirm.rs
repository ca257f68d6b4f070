//! Human approval on the data path (`effect = "confirm"`; what the bytes mean is
//! `policy::confirm`'s plain functions).
//!
//! A call a `confirm` rule matches is asked about, never forwarded unasked:
//! - a 2025-era session whose client declared `elicitation` ([`ask_on_stream`]): the call's
//!   answer becomes an SSE stream carrying mcplb's `elicitation/create`; the client's answer,
//!   POSTed in the same session and reaching any core ([`deliver`]), wakes the waiting call
//!   through a process-wide table (`data_path::waiting`, shared with `era_ask`). Accept forwards the call, whose
//!   answer goes on in the same stream; anything else answers a tool error.
//! - a 2026-07-28 request that declares `elicitation` ([`approve`]): an `input_required`
//!   result whose sealed `requestState` binds the call; the retry carrying the answer goes on
//!   (stripped of mcplb's state) only when the state opens, matches and has not expired and
//!   the answer approves. No state is kept: any replica sharing the session key serves the
//!   retry.
//! - anyone else is denied, told which rule asked and why the client cannot be asked.

use std::collections::HashMap;
use std::future::Future as _;
use std::sync::Mutex;
use std::task::Poll;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ServerGroup;
use crate::data_path::admission::{ConcKeys, Permits};
use crate::data_path::attempt::{self, Plan, Reached};
use crate::data_path::request::{offset_of, ClientConn, Next, Refusal, RpcSpans, Stop};
use crate::data_path::response::{self, Answer, Framing, Waited as StreamWaited, Watch};
use crate::data_path::upstream::Held;
use crate::data_path::waiting::{Registered, Table};
use crate::data_path::{reply, upstream};
use crate::policy::confirm::{self, Channel, Outcome, Verdict, Waited};
use crate::runtime::core::Core;
use crate::session::era;
use crate::tls::Incoming;

/// What becomes of a call that needs approval, once [`approve`] has looked at it.
pub(crate) enum Approval {
    /// Approved (a 2026-07-28 retry): forward it as usual.
    Forward,
    /// Ask on the call's own SSE answer ([`ask_on_stream`]).
    Stream,
    /// Answered here.
    Answered(Next),
}

/// The refusal of a call that needs approval from a client that cannot be asked, naming the
/// rule and the reason (`why`) in the error's data.
pub(crate) fn unavailable(c: &mut ClientConn, why: &'static str) -> Refusal {
    c.meta.confirm = Some(Outcome::Unavailable);
    let rule = confirm::rule_name(c.meta.policy.and_then(|d| d.rule));
    let data = serde_json::json!({"rule": rule, "reason": why}).to_string();
    Refusal::new(
        200,
        -32602,
        "denied: this call needs the user's approval (a policy `confirm` rule) and mcplb cannot ask this client for it (error.data says why)",
    )
    .with_data(data)
}

/// Decides how to ask for the approval of the call in `c` (its policy said confirm; only a
/// `tools/call` is asked about, anything else denied as unavailable):
/// `modern` for a 2026-07-28 request outside any session, `session` for a plain session
/// (whether its client declared `elicitation`).
pub(crate) async fn approve(
    core: &Core,
    c: &mut ClientConn,
    group: &ServerGroup,
    modern: bool,
    session: Option<bool>,
) -> Result<Approval, Stop> {
    if c.meta.method != protocol::Method::ToolsCall {
        return Err(unavailable(
            c,
            "mcplb asks for approval of tools/call only; a confirm rule matching another method denies it",
        )
        .into());
    }
    let modern_elicits = modern
        && era::declared(c.req.body())
            .is_some_and(|d| confirm::declares_elicitation(d.capabilities));
    match confirm::channel(
        modern,
        modern_elicits,
        session.is_some(),
        session == Some(true),
    ) {
        Channel::Stream => Ok(Approval::Stream),
        Channel::Unavailable(why) => Err(unavailable(c, why).into()),
        Channel::InputRequired => input_round(core, c, group).await,
    }
}

/// A 2026-07-28 call: the retry of an earlier round (its sealed state and the answer), or a
/// new question (an `input_required` result).
async fn input_round(
    core: &Core,
    c: &mut ClientConn,
    group: &ServerGroup,
) -> Result<Approval, Stop> {
    let sealer = &core.shared.sealer;
    let body = c.req.body();
    let Some(call) = confirm::call(body) else {
        return Err(Refusal::new(200, -32602, "tools/call without params.name").into());
    };
    let binding = confirm::binding_hash(&confirm::Binding {
        group: &group.name,
        tool: &call.tool,
        arguments: call.arguments,
        identity: &c.caller.name,
    });
    let now = now_ms();
    let facts = call.state.and_then(|s| confirm::open_state(sealer, s));
    let rule_no = c
        .meta
        .policy
        .and_then(|d| d.rule)
        .map_or(confirm::DESTRUCTIVE_RULE, |r| {
            u16::try_from(r).unwrap_or(confirm::DESTRUCTIVE_RULE)
        });
    let Some(facts) = facts else {
        if call.state.is_some_and(|s| is_bridge_state(core, s)) {
            // The era bridge's own round of a call that was forwarded (so approved) already:
            // `era_bridge::resume` hands the input to it and never forwards the call anew.
            return Ok(Approval::Forward);
        }
        if let Some((facts, backend)) = call.state.and_then(|s| confirm::open_wrapped(sealer, s)) {
            // The backend's own round of a call its user approved: it goes on, the backend
            // getting its own state back (and the next round wrapped again).
            match confirm::check_state(&facts, now, &binding) {
                Err(confirm::StateError::Mismatch) => {
                    return Err(rebound(c));
                }
                Err(confirm::StateError::Expired) => {
                    c.meta.confirm = Some(Outcome::TimedOut);
                    let out = confirm::refused_result(
                        c.req.id().unwrap_or_default(),
                        &call.tool,
                        Outcome::TimedOut,
                        true,
                    );
                    return Ok(Approval::Answered(reply::document(c, 200, &out, "").await));
                }
                Ok(()) => {}
            }
            let Some(body) = confirm::with_state(body, backend) else {
                return Err(
                    Refusal::new(400, -32602, "the retry's params could not be read").into(),
                );
            };
            c.meta.confirm = Some(Outcome::Confirmed);
            c.confirm_wrap = Some(Box::new(confirm::StateFacts {
                expires_ms: 0,
                rule: facts.rule,
                binding,
            }));
            replace_body(core, c, body);
            return Ok(Approval::Forward);
        }
        let rule = confirm::rule_name(c.meta.policy.and_then(|d| d.rule));
        let question = confirm::question(&call.tool, call.arguments, &rule);
        let state = confirm::seal_state(
            sealer,
            &confirm::StateFacts {
                expires_ms: now.saturating_add(group.confirm_timeout.as_millis() as u64),
                rule: rule_no,
                binding,
            },
        )
        .ok_or(Refusal::new(
            500,
            -32603,
            "the request state could not be sealed",
        ))?;
        let mut out = Vec::with_capacity(512 + state.len());
        let input = confirm::input_request(&question);
        era::input_required(
            &mut out,
            c.req.id().unwrap_or_default(),
            &input,
            state.as_bytes(),
        );
        c.meta.confirm = Some(Outcome::Asked);
        return Ok(Approval::Answered(reply::document(c, 200, &out, "").await));
    };
    let checked = confirm::check_state(&facts, now, &binding);
    if checked.is_ok() && !spend(call.state.unwrap_or_default(), facts.expires_ms, now) {
        c.meta.confirm = Some(Outcome::Declined);
        return Err(Refusal::new(
            400,
            -32602,
            "this requestState was answered already: call again without it to be asked again",
        )
        .into());
    }
    let outcome = match checked {
        Err(confirm::StateError::Mismatch) => {
            return Err(rebound(c));
        }
        Err(confirm::StateError::Expired) => Outcome::TimedOut,
        Ok(()) => match confirm::retry_verdict(call.responses, era::INPUT_KEY) {
            Verdict::Accept => Outcome::Confirmed,
            _ => Outcome::Declined,
        },
    };
    c.meta.confirm = Some(outcome);
    if outcome != Outcome::Confirmed {
        let out =
            confirm::refused_result(c.req.id().unwrap_or_default(), &call.tool, outcome, true);
        return Ok(Approval::Answered(reply::document(c, 200, &out, "").await));
    }
    let Some(stripped) = confirm::strip_retry(body) else {
        return Err(Refusal::new(400, -32602, "the retry's params could not be read").into());
    };
    c.confirm_wrap = Some(Box::new(confirm::StateFacts {
        expires_ms: 0,
        rule: rule_no,
        binding,
    }));
    replace_body(core, c, stripped);
    Ok(Approval::Forward)
}

/// The answer `body` (JSON, or an SSE stream) of a 2026-07-28 call its user approved (`f`):
/// each `input_required` round of the backend's own with its `requestState` wrapped
/// ([`confirm::seal_wrapped`], valid for `confirm_timeout`), so the client's retry goes on
/// unasked; the rest as it came.
pub(crate) fn wrap_rounds(
    core: &Core,
    gi: Option<usize>,
    f: &confirm::StateFacts,
    body: Vec<u8>,
    is_sse: bool,
) -> Vec<u8> {
    let timeout = gi
        .and_then(|g| core.shared.config.servers.get(g))
        .map_or(confirm::DEFAULT_TIMEOUT, |g| g.confirm_timeout);
    let facts = confirm::StateFacts {
        expires_ms: now_ms().saturating_add(timeout.as_millis() as u64),
        ..*f
    };
    let wrap = |s: &str| confirm::seal_wrapped(&core.shared.sealer, &facts, s);
    if !is_sse {
        return confirm::wrap_round(&body, wrap).unwrap_or(body);
    }
    let mut out = Vec::with_capacity(body.len() + 128);
    let mut rest = protocol::sse::strip_bom(&body);
    while let Some(n) = protocol::sse::event_end(rest) {
        let (event, after) = rest.split_at(n.min(rest.len()));
        match confirm::wrap_round(&era::event_data(event), wrap) {
            Some(msg) => {
                out.extend_from_slice(b"event: message\n");
                protocol::sse::write_data(&mut out, &msg);
            }
            None => out.extend_from_slice(event),
        }
        rest = after;
    }
    out.extend_from_slice(rest);
    out
}

/// The refusal of a retry whose state mcplb issued for another call (declined).
fn rebound(c: &mut ClientConn) -> Stop {
    c.meta.confirm = Some(Outcome::Declined);
    Refusal::new(
        400,
        -32602,
        "requestState was issued for another call (tool, arguments or caller): call again without it",
    )
    .into()
}

/// Most answered states remembered at once (past it, after the expired ones are dropped, a
/// retry is refused: never a second forward).
const MAX_SPENT: usize = 16_384;

/// The states this process has seen answered, with their expiry: a state is used once here
/// (a replica that never saw it cannot tell; the expiry bounds that window).
static SPENT: Mutex<Option<HashMap<Box<str>, u64>>> = Mutex::new(None);

/// Marks `state` (valid until `expires_ms`) answered: whether it was not before.
fn spend(state: &str, expires_ms: u64, now_ms: u64) -> bool {
    let Ok(mut spent) = SPENT.lock() else {
        return false;
    };
    let spent = spent.get_or_insert_with(HashMap::new);
    if spent.contains_key(state) {
        return false;
    }
    if spent.len() >= MAX_SPENT {
        spent.retain(|_, exp| *exp >= now_ms);
        if spent.len() >= MAX_SPENT {
            return false;
        }
    }
    spent.insert(state.into(), expires_ms);
    true
}

/// Whether `state` is one the era bridge sealed for a call that asked for input.
fn is_bridge_state(core: &Core, state: &str) -> bool {
    let mut buf = Vec::new();
    core.shared
        .sealer
        .open_kind(
            crate::session::VERSION_ERA_STATE,
            state.as_bytes(),
            &mut buf,
        )
        .is_some()
}

/// Makes `body` the request's body (the id and the audit trail's spans found in it again).
pub(crate) fn replace_body(core: &Core, c: &mut ClientConn, body: Vec<u8>) {
    c.req.decoded = body;
    c.req.set_body_decoded();
    let depth = core.shared.config.proxy.max_json_depth;
    let body = c.req.body();
    let (id, spans) = match protocol::parse_message_with_depth(body, depth) {
        Ok(env) => (
            env.id.map(|id| offset_of(body, id)),
            core.audit.is_some().then(|| RpcSpans::of(body, &env)),
        ),
        Err(_) => (None, None),
    };
    c.req.set_id(id);
    if let Some(s) = spans {
        c.meta.rpc = s;
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Most questions waiting at once in the process (past it, a call is denied as unavailable).
const MAX_WAITING: usize = 4096;

/// The questions waiting for an answer (the verdict once it came), by token: any core may
/// receive the answer.
static WAITING: Table<Option<Verdict>> = Table::new(MAX_WAITING);

/// Hands `verdict` to the question `token` asked in `session`: whether one was waiting.
fn hand_over(token: u64, session: &[u8], verdict: Verdict) -> bool {
    WAITING.hand_over(token, session, |v| {
        v.is_none() && v.replace(verdict).is_none()
    })
}

/// A client's JSON-RPC response to one of mcplb's questions (its id says so): handed to the
/// waiting call and answered 202 here (no backend asked it). `None`: not such a response.
pub(crate) async fn deliver(c: &mut ClientConn) -> Option<Next> {
    let token = confirm::token_of(c.req.id()?)?;
    let verdict = confirm::response_verdict(c.req.body()).unwrap_or(Verdict::Cancel);
    let session = c.req.session_id().unwrap_or_default();
    if !hand_over(token, session, verdict) {
        let what = "an answer to an approval question no call waits for (answered, timed out, or another session's)";
        if crate::control::logs::first_in_window_info(what, "", "") {
            tracing::info!("{what}");
        }
    }
    Some(reply::accepted(c).await)
}

/// Waits for the answer to question `q`, at most `timeout`, watching the client's side.
async fn wait(
    q: &Registered<Option<Verdict>>,
    timeout: std::time::Duration,
    client: &mut crate::tls::Conn,
) -> Waited {
    let mut sleep = std::pin::pin!(monoio::time::sleep(timeout));
    let mut peer = std::pin::pin!(client.peer_event());
    let mut watching = true;
    std::future::poll_fn(|cx| {
        if let Some(v) = q.poll(cx.waker(), |v| *v) {
            return Poll::Ready(Waited::Answer(v));
        }
        if sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Waited::TimedOut);
        }
        if watching {
            match peer.as_mut().poll(cx) {
                Poll::Ready(Incoming::Bytes) => watching = false,
                Poll::Ready(_) => return Poll::Ready(Waited::ClientLeft),
                Poll::Pending => {}
            }
        }
        Poll::Pending
    })
    .await
}

/// What became of the question [`ask_first`] asked on the call's SSE answer.
pub(crate) enum Asked {
    /// The user approved: the SSE head and the question went out, and the call's answer
    /// goes on in the same stream (`close`: the head said `connection: close`).
    Approved { close: bool },
    /// Answered (declined, timed out, or the client left).
    Done(Next),
}

/// Asks the client of a 2025-era session on the call's SSE answer and waits for its answer
/// (`confirm_timeout`): approved, the caller forwards the call into the same stream
/// ([`ask_on_stream`] for a plain group, the virtual server's routed call for its members);
/// otherwise the stream ends here with a tool error.
pub(crate) async fn ask_first(c: &mut ClientConn, group: &ServerGroup) -> Result<Asked, Stop> {
    let body = c.req.body();
    let Some(call) = confirm::call(body) else {
        return Err(Refusal::new(200, -32602, "tools/call without params.name").into());
    };
    let tool = call.tool.clone();
    let rule = confirm::rule_name(c.meta.policy.and_then(|d| d.rule));
    let question = confirm::question(&call.tool, call.arguments, &rule);
    let token: u64 = rand::random();
    let session = c.req.session_id().unwrap_or_default();
    let Some(q) = WAITING.register(token, session, None) else {
        return Err(unavailable(c, "too many calls are waiting for their users' approval").into());
    };
    let close = reply::must_close(c, false) != Next::KeepAlive
        || crate::runtime::SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    reply::sse_head(c, close);
    event(c, &confirm::elicitation_request(token, &question));
    c.meta.by_proxy = true;
    if reply::send_out(c, Next::KeepAlive).await != Next::KeepAlive {
        c.meta.confirm = Some(Outcome::Declined);
        return Ok(Asked::Done(Next::Close));
    }
    let waited = wait(&q, group.confirm_timeout, &mut c.stream).await;
    drop(q);
    let outcome = confirm::settle(waited);
    c.meta.confirm = Some(outcome);
    if waited == Waited::ClientLeft {
        return Ok(Asked::Done(Next::Close));
    }
    if outcome == Outcome::Confirmed {
        c.meta.by_proxy = false;
        return Ok(Asked::Approved { close });
    }
    let answer = confirm::refused_result(c.req.id().unwrap_or_default(), &tool, outcome, false);
    event(c, &answer);
    c.out.extend_from_slice(crate::http::LAST_CHUNK);
    Ok(Asked::Done(
        reply::send_out(c, Next::keep_unless(close)).await,
    ))
}

/// Asks the client of a 2025-era session on the call's SSE answer ([`ask_first`]), then
/// forwards the approved call into the same stream.
pub(crate) async fn ask_on_stream(
    core: &Core,
    c: &mut ClientConn,
    group: &ServerGroup,
    mut plan: Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Result<Next, Stop> {
    let close = match ask_first(c, group).await? {
        Asked::Approved { close } => close,
        Asked::Done(next) => return Ok(next),
    };
    let ok = forward_on_stream(core, c, group, &mut plan, conc, permits).await;
    Ok(if ok {
        Next::keep_unless(close)
    } else {
        Next::Close
    })
}

/// Asks the client of mcplb's own session for a 2026-07-28 backend (a 2025-era client through
/// the era bridge; `payload`: what the session's id carries, the client's declared
/// capabilities among it) on the call's SSE answer ([`ask_first`]), then sends the approved
/// call to a backend of the group as the bridge makes it (`_meta` and mirror headers of
/// 2026-07-28) and relays its answer into the same stream, the backend's own
/// `input_required` rounds asked of the client as on any bridged call
/// (`era_ask::continue_stream`).
pub(crate) async fn ask_on_bridged_stream(
    core: &Core,
    c: &mut ClientConn,
    group: &ServerGroup,
    gi: usize,
    payload: &[u8],
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Result<Next, Stop> {
    let close = match ask_first(c, group).await? {
        Asked::Approved { close } => close,
        Asked::Done(next) => return Ok(next),
    };
    let modern =
        era::parse_session_payload(payload).and_then(|d| era::modern_request(c.req.body(), &d));
    let Some((body, headers)) = modern else {
        fail_event(
            c,
            -32603,
            "mcplb could not make the call a 2026-07-28 request",
        )
        .await;
        return Ok(Next::Close);
    };
    let mut plan = Plan {
        gi,
        pinned: None,
        sid: None,
        needs_failover: false,
        hash_key: None,
        read_only: false,
        can_fail_over: false,
        head_timeout: core.shared.config.proxy.upstream_timeout,
    };
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    let mut out = core.take_buf();
    let hop = c.hop();
    let reached = {
        let forwarding = (&core.shared.config.proxy.client_address, &hop);
        let ClientConn {
            req, meta, trace, ..
        } = &mut *c;
        let req: &crate::data_path::request::Request = req;
        let rewrite = upstream::Rewrite {
            version: Some(era::MODERN.as_bytes()),
            body: Some(&body),
            headers: &headers,
            trace: trace.as_ref(),
        };
        let write = |out: &mut Vec<u8>, backend: &crate::config::Backend, sid: Option<&[u8]>| {
            let cred = &group.auth.upstream;
            upstream::build_request(out, req, backend, sid, &rewrite, cred, forwarding);
        };
        let mut io = attempt::AttemptIo {
            out: &mut out,
            ubuf: &mut ubuf,
            meta,
            sealed: None,
            timer: &mut Default::default(),
        };
        attempt::reach(core, &mut plan, conc, permits, &mut io, &write).await
    };
    core.give_buf(out);
    let Reached {
        up,
        head_len,
        backend_tag,
        in_flight,
        bi,
    } = match reached {
        Ok(r) => r,
        Err(r) => {
            c.ubuf = ubuf;
            fail_event(c, r.code, r.message).await;
            return Ok(Next::Close);
        }
    };
    let call = crate::data_path::era_ask::Call {
        gi,
        bi,
        backend_tag,
        body: &body,
        headers: &headers,
    };
    let relayed =
        crate::data_path::era_ask::continue_stream(core, c, up, ubuf, head_len, close, call).await;
    drop(in_flight);
    c.meta
        .upstream_done
        .get_or_insert_with(crate::runtime::clock::fresh_ns);
    if let Some(rt) = core.shared.groups.get(gi) {
        let now = crate::balance::now_ns();
        crate::balance::record_outcome(&core.shared.hub, rt, group, bi, None, now);
    }
    match relayed {
        Ok((next, pool)) => {
            if let Some(up) = pool {
                core.put_upstream(gi, bi, up);
            }
            Ok(next)
        }
        Err(why) => {
            let what = format!("the backend did not answer the approved call: {why}");
            fail_event(c, -32603, &what).await;
            Ok(Next::Close)
        }
    }
}

/// Appends one SSE `message` event carrying `json` (one line) as a chunk to `c.out`.
pub(crate) fn event(c: &mut ClientConn, json: &[u8]) {
    let mut data = Vec::with_capacity(json.len() + 24);
    data.extend_from_slice(b"event: message\n");
    protocol::sse::write_data(&mut data, json);
    crate::data_path::era_bridge::put_chunk(c, &data);
}

/// Forwards the approved call and relays its answer into the client's open SSE stream: an SSE
/// answer as it arrives, a JSON one as one event; a failure as a JSON-RPC error event. Whether
/// the stream ended cleanly.
async fn forward_on_stream(
    core: &Core,
    c: &mut ClientConn,
    group: &ServerGroup,
    plan: &mut Plan<'_>,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> bool {
    let mut ubuf = std::mem::take(&mut c.ubuf);
    if ubuf.capacity() == 0 {
        ubuf = core.take_buf();
    }
    let reached = attempt::reach_as_sent(core, c, group, plan, conc, permits, &mut ubuf).await;
    let Reached {
        mut up,
        head_len,
        backend_tag,
        in_flight,
        bi,
    } = match reached {
        Ok(r) => r,
        Err(r) => {
            c.ubuf = ubuf;
            return fail_event(c, r.code, r.message).await;
        }
    };
    let mut a = Answer {
        up: &mut up,
        buf: ubuf,
        head_len,
        backend_tag,
        backend_sid: plan.sid.as_deref(),
        end_on_shutdown: false,
        sessionless: false,
    };
    let head = response::final_head(core, c, &mut a).await;
    c.out.clear();
    let (head, head_len) = match head {
        Ok(h) if h.0.status == 200 => h,
        Ok(_) | Err(_) => {
            c.ubuf = a.buf;
            return fail_event(c, -32603, "the backend did not answer the approved call").await;
        }
    };
    let avail = a.buf.split_off(head_len.min(a.buf.len()));
    c.ubuf = std::mem::take(&mut a.buf);
    let from = (plan.gi, bi);
    let relayed = relay(core, c, a.up, from, head.framing, head.is_sse, avail).await;
    drop(in_flight);
    c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
    if relayed == Some(true) && !head.up_close {
        core.put_upstream(plan.gi, bi, up);
    }
    if let Some(rt) = core.shared.groups.get(plan.gi) {
        let now = crate::balance::now_ns();
        crate::balance::record_outcome(&core.shared.hub, rt, group, bi, None, now);
    }
    relayed.is_some()
}

/// Relays a backend's answer body (`avail`: its first bytes) into the open stream: `None`
/// when it failed, else whether the upstream connection may be pooled (the body ended by its
/// framing with nothing after it).
async fn relay(
    core: &Core,
    c: &mut ClientConn,
    up: &mut crate::tls::Conn,
    (gi, bi): (usize, usize),
    mut framing: Framing,
    is_sse: bool,
    mut avail: Vec<u8>,
) -> Option<bool> {
    let mut pending = Vec::new();
    let mut reusable = false;
    let mut watch = Watch {
        client: true,
        shutdown: None,
    };
    loop {
        let mut err = false;
        let (take, done) = upstream::collect_step(&mut framing, &avail, &mut pending, &mut err);
        if err {
            return None;
        }
        if !is_sse && upstream::over_bound(core, gi, bi, pending.len(), Held::Json) {
            fail_event(
                c,
                -32603,
                "the backend's answer to the approved call is too large",
            )
            .await;
            return None;
        }
        if is_sse && !pending.is_empty() {
            crate::data_path::era_bridge::put_chunk(c, &pending);
            pending.clear();
            if reply::send_out(c, Next::KeepAlive).await != Next::KeepAlive {
                return None;
            }
        }
        if done {
            reusable = take == avail.len();
            break;
        }
        avail.clear();
        let buf = std::mem::take(&mut avail);
        let waited = if is_sse {
            response::next_event(up, buf, &mut c.stream, &mut watch).await
        } else {
            let timeout = core.shared.config.proxy.upstream_timeout;
            match monoio::time::timeout(timeout, up.read_more(buf, super::READ_SIZE)).await {
                Ok((r, b)) => StreamWaited::Read(r, b),
                Err(_) => StreamWaited::TimedOut,
            }
        };
        match waited {
            StreamWaited::Read(Ok(n), b) if n > 0 => avail = b,
            StreamWaited::Read(_, _) if matches!(framing, Framing::UntilClose) => break,
            _ => return None,
        }
    }
    if !is_sse {
        // One event: the answer compacted to a line.
        let line = serde_json::from_slice::<serde_json::Value>(&pending)
            .map(|v| v.to_string().into_bytes())
            .unwrap_or_default();
        if line.is_empty() {
            let what = "the backend's answer to the approved call is not JSON";
            fail_event(c, -32603, what).await;
            return None;
        }
        event(c, &line);
    }
    c.out.extend_from_slice(crate::http::LAST_CHUNK);
    (reply::send_out(c, Next::KeepAlive).await == Next::KeepAlive).then_some(reusable)
}

/// Ends the open stream with a JSON-RPC error for the call (always `false`: the stream
/// did not end with the call's answer).
pub(crate) async fn fail_event(c: &mut ClientConn, code: i32, message: &str) -> bool {
    let id = c.req.id().unwrap_or(b"null");
    let msg = serde_json::Value::from(message).to_string();
    let err = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{msg}}}}}",
        String::from_utf8_lossy(id)
    );
    c.meta.status = 502;
    event(c, err.as_bytes());
    c.out.extend_from_slice(crate::http::LAST_CHUNK);
    reply::send_out(c, Next::KeepAlive).await;
    false
}
