//! Virtual servers: one MCP endpoint over several member groups (`members`), each keeping
//! its own balancing, health checks, limits and sessions.
//!
//! A request to a virtual server takes the data path's first stages as any other (head,
//! access, body, envelope, rate limits, permits), then comes here instead of the attempt
//! stage. The decisions are plain functions: [`naming`] (prefixes, filters, renames,
//! overrides, merged lists, cursors, URI claims, wrapped ids), [`session`] (the member
//! sessions sealed in the client's id). The async parts only move messages:
//! - [`fanout`]: `initialize`, the list methods, `logging/setLevel`, `server/discover` and
//!   notifications go to every member at once, each with its own timeout; a member that fails
//!   is left out (`fail_open`, logged) or fails the request (`fail_closed`).
//! - [`routed`]: `tools/call` and `prompts/get` by name, `resources/*` by URI,
//!   `completion/complete` by its ref, and the client's answers to server-to-client requests
//!   by their wrapped id, each to one member; its answer streams back as it arrives, server
//!   requests with their ids wrapped, `*/list_changed` evicting the merged lists.
//!
//! - [`listen`]: the client's GET stream, merged from one in each member session.
//!
//! Member requests go through [`member`], which uses the data path's attempt loop.

mod cache;
mod fanout;
mod listen;
mod member;
pub(crate) mod naming;
mod routed;
pub(crate) mod session;

pub use routed::relay_event;

use serde_json::Value;

use crate::config::VirtualServer;
use crate::data_path::request::{ClientConn, HttpMethod, Next, Refusal, Stop};
use crate::data_path::{admission, confirm, era_bridge};
use crate::data_path::{record, reply};
use crate::runtime::core::Core;
use member::Origin;
use session::VirtualSession;

/// The client's session, opened.
pub(crate) struct SessionCx {
    /// What its id holds (`None`: a request without a session, such as a 2026-07-28 one).
    pub session: Option<VirtualSession>,
    /// A keyed hash of the id (per-core caches of this session).
    pub key: u64,
    /// A 2026-07-28 request outside any session (its `_meta` declares that revision): the
    /// era bridge takes it to members of the 2025 era.
    pub modern: bool,
    /// The client capabilities its member sessions were opened with (the session's, or what
    /// a 2026-07-28 request declares), as a key of the merged lists ([`cache::Key`]).
    pub caps: u64,
}

impl SessionCx {
    /// No session (`modern`: a 2026-07-28 request).
    pub(crate) fn none(modern: bool) -> SessionCx {
        SessionCx {
            session: None,
            key: 0,
            modern,
            caps: 0,
        }
    }
}

/// Serves one request (its body read) to the virtual server of group `gi`.
pub(crate) async fn serve(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    vs: &VirtualServer,
) -> Result<Next, Stop> {
    let method = c.req.method();
    let mut cx = open_session(core, c, gi, vs)?;
    match method {
        HttpMethod::Post => {}
        HttpMethod::Delete => {
            if cx.session.is_none() {
                return Err(Refusal::invalid(400, "Mcp-Session-Id header required").into());
            }
            fanout::end_sessions(core, &Origin::of(c, &cx), vs, &cx).await;
            c.meta.ended_session = true;
            return Ok(reply::document(c, 200, b"", "").await);
        }
        HttpMethod::Get => return listen::stream(core, c, vs, &cx).await,
        HttpMethod::Other => return Err(Refusal::invalid(405, "method not allowed").into()),
    }
    let admitted = admission::envelope(core, c, gi)?;
    cx.modern = admitted.modern && cx.session.is_none();
    if cx.modern {
        let declared = crate::session::era::declared(c.req.body());
        cx.caps = declared.map_or(0, |d| cache::capabilities_key(d.capabilities));
    }
    let asks = core
        .shared
        .config
        .servers
        .get(gi)
        .is_some_and(|g| g.policy.confirms());
    if asks && c.meta.row == crate::control::stats::M_RESPONSE {
        // A client's answer to mcplb's own approval question goes to the waiting call.
        if let Some(next) = Box::pin(confirm::deliver(c)).await {
            return Ok(next);
        }
    }
    let mut permits: admission::Permits = Default::default();
    admission::acquire_permits(core, &admitted.conc, &mut permits).await?;
    if c.meta
        .policy
        .is_some_and(|d| d.effect == crate::policy::Effect::Confirm)
    {
        // Boxed: only a call that needs approval pays for the question's future.
        return Box::pin(approved_call(core, c, gi, vs, &cx)).await;
    }
    if cx.modern && crate::session::era::has_request_state(c.req.body()) {
        // A 2026-07-28 retry carrying the input a bridged member's call waits for goes to
        // that call (boxed: as in the data path, only such a retry pays for its future).
        // A call no member holds here (another replica's, or one whose wait ran out) is
        // routed again as the call, its member's bridged answer replayed from the rounds.
        match Box::pin(era_bridge::resume(core, c, true)).await {
            era_bridge::Resumed::Done(next) => return Ok(next),
            era_bridge::Resumed::Replay(rounds) => c.era_replay = Some(Box::new(rounds)),
            era_bridge::Resumed::Not => {}
        }
    }
    let msg = message(c)?;
    let Some(obj) = msg.as_object() else {
        return Err(Refusal::invalid(400, "batches are not served by a virtual server").into());
    };
    let method_name = obj
        .get("method")
        .and_then(Value::as_str)
        .map(str::to_string);
    let has_id = obj.get("id").is_some_and(|i| !i.is_null());
    match (method_name.as_deref(), has_id) {
        (Some(m), true) => request(core, c, vs, &cx, m, &msg).await,
        (Some(m), false) => {
            fanout::notification(core, &Origin::of(c, &cx), vs, &cx, m, &msg).await;
            Ok(reply::accepted(c).await)
        }
        (None, true) => {
            routed::client_answer(core, &Origin::of(c, &cx), vs, &cx, &msg).await;
            Ok(reply::accepted(c).await)
        }
        (None, false) => Err(Refusal::invalid(400, "Invalid Request").into()),
    }
}

/// The request's JSON-RPC message.
fn message(c: &ClientConn) -> Result<Value, Refusal> {
    serde_json::from_slice(c.req.body()).map_err(|_| Refusal::new(400, -32700, "Parse error"))
}

/// A `tools/call` a `confirm` rule of the virtual server matched: asked about as in a plain
/// group (`data_path::confirm`), then routed to the member that owns the tool. A 2025-era
/// session whose client declared `elicitation` (its capabilities are sealed in the virtual
/// session's id) is asked on the call's SSE answer, into which the member's answer then
/// goes; a 2026-07-28 request declaring it gets the sealed `input_required`, and its
/// approved retry (stripped of mcplb's state) is routed as any call; anyone else is denied.
async fn approved_call(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    vs: &VirtualServer,
    cx: &SessionCx,
) -> Result<Next, Stop> {
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Err(Refusal::new(503, -32603, "no backend available").into());
    };
    let session = cx
        .session
        .as_ref()
        .map(|s| crate::policy::confirm::declares_elicitation(&s.capabilities));
    let streaming = match confirm::approve(core, c, group, cx.modern, session).await? {
        confirm::Approval::Answered(next) => return Ok(next),
        confirm::Approval::Forward => None,
        confirm::Approval::Stream => match confirm::ask_first(c, group).await? {
            confirm::Asked::Approved { close } => Some(close),
            confirm::Asked::Done(next) => return Ok(next),
        },
    };
    if cx.modern && crate::session::era::has_request_state(c.req.body()) {
        // The era bridge's own round of a call approved already (its state is the bridge's;
        // as above, not replayed through a virtual server).
        if let era_bridge::Resumed::Done(next) = era_bridge::resume(core, c, false).await {
            return Ok(next);
        }
    }
    let msg = message(c)?;
    routed::call(core, c, vs, cx, "tools/call", &msg, streaming).await
}

/// A JSON-RPC request, by method.
async fn request(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
) -> Result<Next, Stop> {
    use naming::Kind;
    let kind = match method {
        "initialize" => return fanout::initialize(core, c, vs, msg).await,
        "ping" => return Ok(result(c, &empty_result(&c.req, msg)).await),
        "tools/list" => Some(Kind::Tools),
        "prompts/list" => Some(Kind::Prompts),
        "resources/list" => Some(Kind::Resources),
        "resources/templates/list" => Some(Kind::Templates),
        _ => None,
    };
    if let Some(kind) = kind {
        return fanout::list(core, c, vs, cx, kind, msg).await;
    }
    match method {
        "tools/call"
        | "prompts/get"
        | "resources/read"
        | "resources/subscribe"
        | "resources/unsubscribe"
        | "completion/complete" => routed::call(core, c, vs, cx, method, msg, None).await,
        "logging/setLevel" => fanout::set_level(core, c, vs, cx, msg).await,
        "server/discover" => fanout::discover(core, c, vs, cx, msg).await,
        _ => Ok(error(c, -32601, &format!("Method not found: {method}")).await),
    }
}

/// Opens the client's session id: 404 (as for an unknown session) when it does not open for
/// this virtual server, or is another caller's in a group with authentication.
fn open_session(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    vs: &VirtualServer,
) -> Result<SessionCx, Refusal> {
    let Some(sealed) = c.req.session_id() else {
        return Ok(SessionCx::none(false));
    };
    let key = core.shared.key_hasher.hash_key(sealed);
    if core.access_log.is_some() {
        c.meta.session_hash = key;
    }
    let Some((s, sealed_with)) = VirtualSession::open_keyed(&core.shared.sealer, sealed, vs.tag)
    else {
        return Err(Refusal::invalid(404, "Session not found"));
    };
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Err(Refusal::invalid(404, "Session not found"));
    };
    // An id an older session key sealed carries its owner digested under that key.
    let me = crate::data_path::admission::owner_under_key(core, c, group, sealed_with);
    if !s.owned_by(group.auth.required(), me.as_ref()) {
        record::not_owner(core, &group.name, &c.caller.name, s.owner.is_none());
        return Err(Refusal::invalid(404, "Session not found"));
    }
    Ok(SessionCx {
        caps: cache::capabilities_key(&s.capabilities),
        session: Some(s),
        key,
        modern: false,
    })
}

/// Whether a request belongs to the 2026-07-28 (stateless) era: its `MCP-Protocol-Version`
/// header, or the version in its `_meta`.
pub(crate) fn stateless_era(req: &crate::data_path::request::Request, msg: &Value) -> bool {
    let header = req
        .header(b"mcp-protocol-version")
        .is_some_and(|v| v >= &b"2026-07-28"[..]);
    header
        || msg
            .pointer("/params/_meta/io.modelcontextprotocol~1protocolVersion")
            .and_then(Value::as_str)
            .is_some_and(|v| v >= "2026-07-28")
}

/// An empty result: `{}`, with `resultType` on 2026-07-28 requests (which require it;
/// older peers validate `{}` strictly).
fn empty_result(req: &crate::data_path::request::Request, msg: &Value) -> Value {
    if stateless_era(req, msg) {
        serde_json::json!({"resultType": "complete"})
    } else {
        Value::Object(Default::default())
    }
}

/// `{"jsonrpc":"2.0","id":ID,"MEMBER":VALUE}`: an answer to the client's request.
fn answer_bytes(id: Option<&[u8]>, member: &str, value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id.unwrap_or(b"null"));
    out.extend_from_slice(b",\"");
    out.extend_from_slice(member.as_bytes());
    out.extend_from_slice(b"\":");
    if serde_json::to_writer(&mut out, value).is_err() {
        out.extend_from_slice(b"null");
    }
    out.push(b'}');
    out
}

/// Answers the client's request with `result`.
async fn result(c: &mut ClientConn, value: &Value) -> Next {
    let body = answer_bytes(c.req.id(), "result", value);
    reply::document(c, 200, &body, "").await
}

/// Answers with the JSON-RPC message `body`: as JSON, or (`sse`) as an SSE stream of one
/// event, for clients of members that answer so.
async fn answer(c: &mut ClientConn, body: &[u8], sse: bool) -> Next {
    if !sse {
        return reply::document(c, 200, body, "").await;
    }
    use std::io::Write as _;
    let next = reply::must_close(c, false);
    c.out.clear();
    let event_len = body.len() + "event: message\ndata: \n\n".len();
    let _ = write!(
        c.out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         content-length: {event_len}\r\n{}\r\nevent: message\ndata: ",
        if next == Next::KeepAlive {
            ""
        } else {
            "connection: close\r\n"
        },
    );
    c.out.extend_from_slice(body);
    c.out.extend_from_slice(b"\n\n");
    c.meta.status = 200;
    c.meta.by_proxy = true;
    c.meta.sse = true;
    reply::send_out(c, next).await
}

/// Answers the client's request with a JSON-RPC error (HTTP 200: the request was served).
async fn error(c: &mut ClientConn, code: i64, message: &str) -> Next {
    let e = serde_json::json!({"code": code, "message": message});
    let body = answer_bytes(c.req.id(), "error", &e);
    c.meta.jsonrpc_error = true;
    reply::document(c, 200, &body, "").await
}

/// Logs a member that failed a request (once a minute per member and reason).
fn log_member_failure(member: &str, what: &'static str, err: &member::MemberError) {
    let why = match err {
        member::MemberError::SessionGone => "its session is gone",
        member::MemberError::Unreachable(r) => r.message,
    };
    if crate::control::logs::first_in_window(what, member, why) {
        tracing::warn!(member, error = why, "virtual server: {what}");
    }
}
