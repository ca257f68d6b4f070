//! Requests that go to one member: `tools/call` and `prompts/get` by name, `resources/read`,
//! `resources/subscribe` and `resources/unsubscribe` by URI, `completion/complete` by its
//! ref; and the client's answers to a member's server-to-client requests, by their wrapped
//! id. A tool name no member lists goes to the one member that could own it
//! ([`naming::unlisted_tool_route`]); otherwise, and for a prompt or URI no member shows, it
//! is answered here, as the spec says for an unknown tool, prompt or resource, and nothing
//! reaches a member. The member's answer goes back as it
//! arrives: JSON whole, SSE event by event (progress as it comes), with the ids of its
//! server-to-client requests wrapped ([`naming::wrap_id`]) and `*/list_changed` evicting the
//! merged lists.

use std::io::Write as _;

use serde_json::Value;

use super::cache;
use super::fanout::{self, Listed};
use super::member::{self, Answered, MemberError, MemberHead, Origin, ReachedParts};
use super::naming::{self, Kind};
use super::{error, log_member_failure, SessionCx};
use crate::config::VirtualServer;
use crate::data_path::cache as response_cache;
use crate::data_path::request::{ClientConn, Next, Refusal, Stop};
use crate::data_path::response::{self, Framing, Waited, Watch};
use crate::data_path::upstream::Held;
use crate::data_path::{confirm, era_bridge, upstream};
use crate::http;
use crate::runtime::core::Core;
use crate::tls::Conn;

/// Where a routed request goes.
struct Target {
    member: usize,
    /// The body for the member (the name rewritten to the member's own).
    body: Vec<u8>,
    /// The member's own name (the `Mcp-Name` mirror), for named requests.
    name: Option<String>,
}

/// A request for one member: routed, sent, and its answer forwarded. `streaming`: the
/// client's SSE answer is open already (mcplb asked it to approve the call there; `Some(close)`
/// says whether its head said `connection: close`), so the answer, or the error, goes into it.
pub(super) async fn call(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
    streaming: Option<bool>,
) -> Result<Next, Stop> {
    // A call its user approved is never answered from a cache (as in a plain group).
    let cacheable = streaming.is_none() && c.meta.confirm.is_none();
    let failed = match reach(core, c, vs, cx, method, msg, cacheable).await {
        Ok(Ok((m, answered, fill))) => {
            return Ok(forward(core, c, m, answered, streaming, fill).await)
        }
        Ok(Err(Unrouted::Done(next))) => return Ok(next),
        Ok(Err(Unrouted::Error(code, message))) => {
            if streaming.is_none() {
                return Ok(error(c, code, &message).await);
            }
            (code, message)
        }
        Err(Stop::Refuse(r)) if streaming.is_some() => (i64::from(r.code), r.message.to_string()),
        Err(stop) => return Err(stop),
    };
    let code = i32::try_from(failed.0).unwrap_or(-32603);
    confirm::fail_event(c, code, &failed.1).await;
    Ok(Next::Close)
}

/// A routed request that reached no member.
enum Unrouted {
    /// Answered here (a subscription no member lists, asked of every member).
    Done(Next),
    /// No member shows its name or URI: this JSON-RPC error answers it.
    Error(i64, String),
}

/// Routes `msg` to its member and sends it there: the member, its answer's head and, with
/// `cacheable`, what its answer fills in the member group's response cache (a hit is
/// answered here).
async fn reach<'a>(
    core: &'a Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
    cacheable: bool,
) -> Result<Result<(usize, Answered<'a>, Option<response_cache::Fill>), Unrouted>, Stop> {
    let target = match route(core, &Origin::of(c, cx), vs, cx, method, msg).await? {
        Ok(t) => t,
        // A resource no member lists may still be watched (it may appear later): every
        // member whose filter shows the URI is asked.
        Err(_) if matches!(method, "resources/subscribe" | "resources/unsubscribe") => {
            let next = subscribe_anywhere(core, c, vs, cx, method, msg).await?;
            return Ok(Err(Unrouted::Done(next)));
        }
        Err((code, message)) => return Ok(Err(Unrouted::Error(code, message))),
    };
    let Some(member) = vs.members.get(target.member) else {
        return Err(Refusal::new(502, -32603, "no such member").into());
    };
    let mut fill = None;
    if cacheable && core.caches.has(member.group) {
        let ids = (c.meta.group.unwrap_or_default(), member.group);
        let looked =
            response_cache::member_lookup(core, c, ids, &target.body, cx.session.is_some());
        match Box::pin(looked).await {
            Ok(next) => return Ok(Err(Unrouted::Done(next))),
            Err(f) => fill = f,
        }
    }
    let read_only = protocol::Method::from_name(method).is_read_only();
    let mut again = true;
    let mut session = fanout::session_for(core, &Origin::of(c, cx), vs, cx, target.member)
        .await
        .map_err(|e| e.refusal())?;
    loop {
        let s = session.as_ref().map(|(t, sid)| (*t, sid.as_slice()));
        let o = member::Outbound {
            timeout: core.shared.config.proxy.upstream_timeout,
            ..fanout::outbound(
                member,
                s,
                &target.body,
                method,
                target.name.as_deref(),
                read_only,
            )
        };
        match member::send(core, &Origin::of(c, cx), &o).await {
            // The member lost the session (it restarted): the request did not run there.
            Err(MemberError::SessionGone) if again && cx.session.is_some() => {
                again = false;
                session = Some(
                    fanout::reopen(core, &Origin::of(c, cx), vs, cx, target.member)
                        .await
                        .map_err(|e| e.refusal())?,
                );
            }
            Err(e) => {
                log_member_failure(&member.server, "routed request failed", &e);
                return Err(e.refusal().into());
            }
            Ok(a) => return Ok(Ok((target.member, a, fill))),
        }
    }
}

/// `resources/subscribe` (or `unsubscribe`) of a URI no member lists: to every member whose
/// filter shows it; done when one of them took it.
async fn subscribe_anywhere(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
) -> Result<Next, Stop> {
    let uri = msg
        .pointer("/params/uri")
        .and_then(Value::as_str)
        .unwrap_or("");
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let body = c.req.body().to_vec();
    let which: Vec<usize> = (0..vs.members.len())
        .filter(|m| vs.members[*m].resources.admits(uri))
        .collect();
    let a = fanout::Ask {
        body: &body,
        method,
        name: Some(uri),
        read_only: false,
        id: &id,
    };
    let answers = fanout::ask_each(core, &Origin::of(c, cx), vs, cx, which.into_iter(), &a).await;
    let took = answers.iter().any(|(_, got)| {
        got.as_ref()
            .is_ok_and(|g| matches!(g.response(&id), Some(Ok(_))))
    });
    if took {
        let empty = super::empty_result(&c.req, msg);
        return Ok(super::result(c, &empty).await);
    }
    Ok(error(c, -32002, &format!("Resource not found: {uri}")).await)
}

/// Where `msg` goes: `Ok(Err((code, message)))` when no member shows its name or URI.
async fn route(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
) -> Result<Result<Target, (i64, String)>, Refusal> {
    let params = msg.get("params");
    let str_param = |k: &str| params.and_then(|p| p.get(k)).and_then(Value::as_str);
    match method {
        "tools/call" | "prompts/get" => {
            let (kind, what) = if method == "tools/call" {
                (Kind::Tools, "tool")
            } else {
                (Kind::Prompts, "prompt")
            };
            let Some(name) = str_param("name") else {
                return Ok(Err((
                    -32602,
                    format!("Invalid params: missing {what} name"),
                )));
            };
            let listed = fanout::whole(core, req, vs, cx, kind, msg, true).await?;
            let unlisted = || {
                (kind == Kind::Tools)
                    .then(|| naming::unlisted_tool_route(vs, name))
                    .flatten()
            };
            let Some(r) = listed.merged().routes.get(name).cloned().or_else(unlisted) else {
                return Ok(Err((-32602, format!("Unknown {what}: {name}"))));
            };
            let mut body = msg.clone();
            body["params"]["name"] = Value::String(r.name.clone());
            Ok(Ok(Target {
                member: r.member,
                body: serde_json::to_vec(&body).unwrap_or_default(),
                name: Some(r.name.clone()),
            }))
        }
        "completion/complete" => {
            let Some(reference) = params.and_then(|p| p.get("ref")) else {
                return Ok(Err((-32602, "Invalid params: missing ref".to_string())));
            };
            match reference.get("type").and_then(Value::as_str) {
                Some("ref/prompt") => {
                    let name = reference.get("name").and_then(Value::as_str).unwrap_or("");
                    let listed = fanout::whole(core, req, vs, cx, Kind::Prompts, msg, true).await?;
                    let Some(r) = listed.merged().routes.get(name) else {
                        return Ok(Err((-32602, format!("Unknown prompt: {name}"))));
                    };
                    let mut body = msg.clone();
                    body["params"]["ref"]["name"] = Value::String(r.name.clone());
                    Ok(Ok(Target {
                        member: r.member,
                        body: serde_json::to_vec(&body).unwrap_or_default(),
                        name: None,
                    }))
                }
                _ => {
                    let uri = reference.get("uri").and_then(Value::as_str).unwrap_or("");
                    by_uri(core, req, vs, cx, msg, uri).await
                }
            }
        }
        _ => {
            let uri = str_param("uri").unwrap_or("");
            by_uri(core, req, vs, cx, msg, uri).await
        }
    }
}

/// The member that serves resource `uri`: by the merged resource list, then the templates.
async fn by_uri(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    msg: &Value,
    uri: &str,
) -> Result<Result<Target, (i64, String)>, Refusal> {
    let resources = fanout::whole(core, req, vs, cx, Kind::Resources, msg, true).await?;
    let mut member = naming::route_uri(vs, Some(resources.merged()), None, uri);
    if member.is_none() {
        let templates: Listed =
            fanout::whole(core, req, vs, cx, Kind::Templates, msg, true).await?;
        member = naming::route_uri(vs, None, Some(templates.merged()), uri);
    }
    match member {
        Some(m) => Ok(Ok(Target {
            member: m,
            body: serde_json::to_vec(msg).unwrap_or_default(),
            name: Some(uri.to_string()),
        })),
        None => Ok(Err((-32002, format!("Resource not found: {uri}")))),
    }
}

/// Forwards a member's answer to the client: JSON whole, SSE event by event; into the
/// client's open SSE answer when `streaming` (see [`call`]).
async fn forward(
    core: &Core,
    c: &mut ClientConn,
    m: usize,
    mut a: Answered<'_>,
    streaming: Option<bool>,
    fill: Option<response_cache::Fill>,
) -> Next {
    let keep = !c.req.head.close && streaming != Some(true);
    if a.bridged.is_some() && streaming.is_some() {
        // Not reached: the era bridge serves 2026-07-28 clients, who are asked through
        // `input_required`, never on an open stream.
        a.reached.finish(core, None, 502);
        confirm::fail_event(c, -32603, "the member's answer cannot go into this stream").await;
        return Next::Close;
    }
    if let Some((mut leg, mut buf)) = a.bridged.take() {
        if let Some(rounds) = c.era_replay.take() {
            // A retry replayed here: the member's questions answered from its state.
            leg.rounds = *rounds;
        }
        // Through the era bridge: the answer made what the 2026-07-28 wire requires, a
        // member's server-to-client request an `input_required` result (the call waits for
        // the client's retry, `era_bridge::resume`).
        let head_len = buf.len();
        buf.extend_from_slice(&a.early);
        // The member group's cache keeps the answer as the client gets it.
        c.cache_fill = fill;
        let (next, up) = era_bridge::forward(core, c, a.up, buf, head_len, keep, leg).await;
        a.reached.finish(core, up, c.meta.status);
        return next;
    }
    c.meta.status = a.head.status;
    let r = Reading {
        framing: a.head.framing(),
        head: a.head,
        up: a.up,
        avail: a.early,
        reached: a.reached,
    };
    if r.head.sse {
        forward_sse(core, c, m, r, streaming, fill, keep).await
    } else {
        forward_whole(core, c, r, streaming, fill, keep).await
    }
}

/// A member's answer as [`forward_whole`] and [`forward_sse`] read its body.
struct Reading<'a> {
    head: MemberHead,
    up: Conn,
    framing: Framing,
    /// Body bytes read and not yet decoded (first those read with the head).
    avail: Vec<u8>,
    reached: ReachedParts<'a>,
}

/// [`forward`] for a whole (JSON) answer, or an error's.
async fn forward_whole(
    core: &Core,
    c: &mut ClientConn,
    mut r: Reading<'_>,
    streaming: Option<bool>,
    fill: Option<response_cache::Fill>,
    keep: bool,
) -> Next {
    let mut body = Vec::new();
    let mut err = false;
    // Whole: a JSON answer, or an error's.
    loop {
        let (_, done) = upstream::collect_step(&mut r.framing, &r.avail, &mut body, &mut err);
        if done || err {
            break;
        }
        if upstream::over_bound(core, r.reached.gi, r.reached.bi, body.len(), Held::Json) {
            r.reached.finish(core, None, 502);
            let why = "a member's answer is too large for mcplb to read whole (over 64 MiB)";
            return crate::data_path::reply::refuse(c, &Refusal::new(502, -32603, why)).await;
        }
        r.avail.clear();
        let timeout = core.shared.config.proxy.upstream_timeout;
        let read = r.up.read_more(r.avail, crate::data_path::READ_SIZE);
        let Ok((n, b)) = monoio::time::timeout(timeout, read).await else {
            r.reached.finish(core, None, 504);
            return crate::data_path::reply::refuse(
                c,
                &Refusal::new(504, -32603, "a member did not finish its answer in time"),
            )
            .await;
        };
        r.avail = b;
        if !matches!(n, Ok(n) if n > 0) {
            if matches!(r.framing, Framing::UntilClose) {
                break;
            }
            err = true;
            break;
        }
    }
    if err {
        r.reached.finish(core, None, 502);
        return crate::data_path::reply::refuse(
            c,
            &Refusal::new(502, -32603, "a member broke off its answer"),
        )
        .await;
    }
    let head = r.head;
    let reusable = !head.close && !matches!(r.framing, Framing::UntilClose);
    r.reached
        .finish(core, reusable.then_some(r.up), head.status);
    c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
    if let Some(f) = fill.filter(|_| head.status == 200) {
        response_cache::store(core, c, f, &body, false);
    }
    if streaming.is_some() {
        return whole_event(c, &body, keep).await;
    }
    // A member's own input round in the answer to a call its user approved carries the
    // approval on (`data_path::confirm`).
    let body = match c.confirm_wrap.take() {
        Some(f) => confirm::wrap_rounds(core, c.meta.group, &f, body, false),
        None => body,
    };
    let ctype = if head.content_type.is_empty() {
        b"application/json".to_vec()
    } else {
        head.content_type
    };
    whole_answer(c, head.status, &ctype, &body, keep).await
}

/// [`forward`] for an SSE answer: event by event, each relayed as member `m`'s.
async fn forward_sse(
    core: &Core,
    c: &mut ClientConn,
    m: usize,
    mut r: Reading<'_>,
    streaming: Option<bool>,
    fill: Option<response_cache::Fill>,
    keep: bool,
) -> Next {
    let mut body = Vec::new();
    let mut err = false;
    c.meta.sse = true;
    c.out.clear();
    if streaming.is_none() {
        let _ = write!(
            c.out,
            "HTTP/1.1 {} {}\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
             x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n{}\r\n",
            r.head.status,
            http::reason(r.head.status),
            if keep { "" } else { "connection: close\r\n" }
        );
        if !send(c).await {
            r.reached.finish(core, None, r.head.status);
            return Next::Close;
        }
    }
    let mut parser = protocol::sse::SseParser::new();
    let mut events = Vec::new();
    let wrap = c.confirm_wrap.take();
    // A copy for the member group's cache (bounded: a longer answer is not kept).
    let mut copy = fill
        .filter(|_| r.head.status == 200)
        .map(|f| (f, Vec::new()));
    let mut watch = Watch {
        client: true,
        shutdown: None,
    };
    loop {
        body.clear();
        let (_, done) = upstream::collect_step(&mut r.framing, &r.avail, &mut body, &mut err);
        if err {
            break;
        }
        parser.push(&body);
        if let Some((_, kept)) = &mut copy {
            if kept.len() + body.len() > response_cache::MAX_COPY {
                copy = None;
            } else {
                kept.extend_from_slice(&body);
            }
        }
        events.clear();
        while let Some(mut ev) = parser.next_event() {
            if let Some(f) = &wrap {
                let wrapped = confirm::wrap_rounds(core, c.meta.group, f, ev.data.into(), false);
                ev.data = String::from_utf8(wrapped).unwrap_or_default();
            }
            relay_event(m, &ev.data, &mut events);
            note_member_changes(core, Some(r.reached.gi), &ev.data);
        }
        if !events.is_empty() {
            if c.meta.first_event.is_none() {
                c.meta.first_event = Some(crate::runtime::clock::fresh_ns());
            }
            c.out.clear();
            chunk(&mut c.out, &events);
            if !send(c).await {
                break;
            }
        }
        if done {
            c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
            if let Some((f, kept)) = copy.take() {
                response_cache::store(core, c, f, &kept, true);
            }
            c.out.clear();
            c.out.extend_from_slice(http::LAST_CHUNK);
            let ok = send(c).await;
            let reusable = !r.head.close;
            r.reached
                .finish(core, reusable.then_some(r.up), r.head.status);
            return if ok && keep {
                Next::KeepAlive
            } else {
                Next::Close
            };
        }
        r.avail.clear();
        match response::next_event(&mut r.up, r.avail, &mut c.stream, &mut watch).await {
            Waited::Read(Ok(n), b) if n > 0 => r.avail = b,
            Waited::Read(_, b) if matches!(r.framing, Framing::UntilClose) => {
                r.avail = b;
                r.avail.clear();
                // An until-close stream ended: the client's chunked answer ends cleanly.
                c.out.clear();
                c.out.extend_from_slice(http::LAST_CHUNK);
                let ok = send(c).await;
                r.reached.finish(core, None, r.head.status);
                return if ok && keep {
                    Next::KeepAlive
                } else {
                    Next::Close
                };
            }
            _ => break,
        }
    }
    // Cut short (a side failed or the client left): the client's connection closes, and so
    // does the member's, which tells the member to stop.
    r.reached.finish(core, None, r.head.status);
    Next::Close
}

/// A member's whole JSON answer as the last event of the client's open SSE answer (see
/// [`call`]); a body that is no JSON ends the stream with an error.
async fn whole_event(c: &mut ClientConn, body: &[u8], keep: bool) -> Next {
    let line = serde_json::from_slice::<Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_default();
    if line.is_empty() {
        confirm::fail_event(
            c,
            -32603,
            "the member's answer to the approved call is not JSON",
        )
        .await;
        return Next::Close;
    }
    c.meta.jsonrpc_error = protocol::response_outcome(&line) == Some(true);
    c.out.clear();
    confirm::event(c, &line);
    c.out.extend_from_slice(http::LAST_CHUNK);
    if send(c).await && keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Appends `events` as one chunk of a chunked body (nothing when empty).
pub(super) fn chunk(out: &mut Vec<u8>, events: &[u8]) {
    if events.is_empty() {
        return;
    }
    let _ = write!(out, "{:x}\r\n", events.len());
    out.extend_from_slice(events);
    out.extend_from_slice(b"\r\n");
}

/// Sends `c.out`; false when the client is gone.
pub(super) async fn send(c: &mut ClientConn) -> bool {
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    let (r, out) = c.stream.write_range(out, 0..len).await;
    c.meta.bytes_out += len as u64;
    c.out = out;
    r.is_ok()
}

/// Answers with a whole body.
async fn whole_answer(
    c: &mut ClientConn,
    status: u16,
    ctype: &[u8],
    body: &[u8],
    keep: bool,
) -> Next {
    c.out.clear();
    let _ = write!(
        c.out,
        "HTTP/1.1 {status} {}\r\ncontent-length: {}\r\n{}",
        http::reason(status),
        body.len(),
        if keep { "" } else { "connection: close\r\n" }
    );
    if !body.is_empty() || status == 200 {
        c.out.extend_from_slice(b"content-type: ");
        c.out.extend_from_slice(ctype);
        c.out.extend_from_slice(b"\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.out.extend_from_slice(body);
    c.meta.jsonrpc_error = protocol::response_outcome(body) == Some(true);
    if send(c).await && keep {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// What a member's SSE event (its data) changes, as for any backend's stream
/// ([`note_message`](crate::data_path::cache::note_message)): a change notification evicts
/// what it names in the member group's response cache (`gi`, when it has one), and a list
/// change the merged lists of every virtual server, cached member or not.
pub(super) fn note_member_changes(core: &Core, gi: Option<usize>, data: &str) {
    let bits = crate::data_path::cache::note_message(core, gi, data.as_bytes());
    if bits & LIST_CHANGES != 0 {
        cache::list_changed();
    }
}

/// The change notifications that make a merged list stale.
const LIST_CHANGES: u8 =
    crate::cache::TOOLS_CHANGED | crate::cache::PROMPTS_CHANGED | crate::cache::RESOURCES_CHANGED;

/// One member SSE event for the client, appended to `out`: a server-to-client request with
/// its id wrapped (so the client's answer finds member `m`), anything else as it came (what
/// it changes: [`note_member_changes`]).
///
/// Read with the zero-copy scanner (`protocol::parse_message`), not parsed into a `Value`:
/// only a request's id is replaced, in place, so the member's bytes go on as they were and
/// only a server-to-client request (rare) is copied. A message the scanner refuses (no
/// `"jsonrpc": "2.0"`, a repeated key, an id that is neither a string nor an integer) is
/// relayed as it came: the official SDKs refuse such a message too, and `naming::unwrap_id`
/// would not route an answer to an id of another type.
pub fn relay_event(m: usize, data: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: message\n");
    let data = data.as_bytes();
    let parts = request_id(data).and_then(|id| {
        Some((
            data.get(..id.start)?,
            data.get(id.clone())?,
            data.get(id.end..)?,
        ))
    });
    let Some((before, raw, after)) = parts else {
        protocol::sse::write_data(out, data);
        return;
    };
    let wrapped = naming::wrap_id(m, raw);
    let mut msg = Vec::with_capacity(data.len() + wrapped.len());
    msg.extend_from_slice(before);
    // A wrapped id is a prefix, digits, `:` and URL-safe base64: nothing to escape.
    msg.push(b'"');
    msg.extend_from_slice(wrapped.as_bytes());
    msg.push(b'"');
    msg.extend_from_slice(after);
    protocol::sse::write_data(out, &msg);
}

/// Where the id of `data` lies when it is a JSON-RPC request (a method and an id).
fn request_id(data: &[u8]) -> Option<std::ops::Range<usize>> {
    // A request has a `method` key, which only an escape could spell without the word: an
    // answer that has neither (a long tool result, often) is not read further.
    if memchr::memmem::find(data, b"method").is_none() && memchr::memchr(b'\\', data).is_none() {
        return None;
    }
    let env = protocol::parse_message(data).ok()?;
    if env.kind != protocol::MessageKind::Request {
        return None;
    }
    let id = env.id?;
    let start = (id.as_ptr() as usize).checked_sub(data.as_ptr() as usize)?;
    Some(start..start + id.len())
}

/// The client's answer to a member's server-to-client request: to that member's session,
/// with the member's own id back in place.
pub(super) async fn client_answer(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    msg: &Value,
) {
    let Some((m, raw)) = msg
        .get("id")
        .and_then(Value::as_str)
        .and_then(naming::unwrap_id)
    else {
        return;
    };
    let (Some(member), Ok(id)) = (vs.members.get(m), serde_json::from_slice::<Value>(&raw)) else {
        return;
    };
    let mut body = msg.clone();
    body["id"] = id;
    let Ok(body) = serde_json::to_vec(&body) else {
        return;
    };
    // The member asked in a session of its own, or (stateless) in none.
    let session = fanout::existing_session(cx, m);
    let s = session.as_ref().map(|(t, sid)| (*t, sid.as_slice()));
    let o = fanout::outbound(member, s, &body, "", None, false);
    if let Err(e) = member::collect(core, req, &o, None).await {
        log_member_failure(&member.server, "client answer not delivered", &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_requests_are_wrapped_and_the_rest_passes() {
        let mut out = Vec::new();
        relay_event(
            2,
            r#"{"jsonrpc":"2.0","id":7,"method":"sampling/createMessage","params":{}}"#,
            &mut out,
        );
        let text = String::from_utf8(out).unwrap_or_default();
        let data = text
            .lines()
            .find_map(|l| l.strip_prefix("data: "))
            .unwrap_or_default();
        let v: Value = serde_json::from_str(data).unwrap_or_default();
        let id = v["id"].as_str().unwrap_or_default();
        assert_eq!(naming::unwrap_id(id), Some((2, b"7".to_vec())));
        assert!(text.ends_with("\n\n"));

        // Only the id changes: the member's key order, spacing and lines stay as they came.
        let asked = "{ \"method\": \"elicitation/create\",\n \"id\" : \"a\\\"b\", \"params\":{}, \"jsonrpc\":\"2.0\"}";
        let mut out = Vec::new();
        relay_event(1, asked, &mut out);
        let wrapped = naming::wrap_id(1, br#""a\"b""#);
        assert_eq!(
            String::from_utf8(out).unwrap_or_default(),
            format!("event: message\ndata: {{ \"method\": \"elicitation/create\",\ndata:  \"id\" : \"{wrapped}\", \"params\":{{}}, \"jsonrpc\":\"2.0\"}}\n\n")
        );
        assert_eq!(
            naming::unwrap_id(&wrapped),
            Some((1, br#""a\"b""#.to_vec()))
        );

        for passing in [
            r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
            "not json",
            // Not JSON-RPC 2.0, or an id no answer could be routed by: as they came.
            r#"{"id":7,"method":"sampling/createMessage","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":{"k":1},"method":"sampling/createMessage","params":{}}"#,
        ] {
            let mut out = Vec::new();
            relay_event(0, passing, &mut out);
            assert_eq!(
                out,
                format!("event: message\ndata: {passing}\n\n").into_bytes()
            );
        }
    }
}
