//! Requests to a virtual server's members, through the data path's own attempt loop
//! ([`attempt::reach`]): each member group keeps its balancing, health, retries and sessions.
//! A fan-out collects each member's whole answer ([`collect`]); a routed call hands the
//! reached connection to the stream that forwards it ([`send`]). Across protocol eras, as for
//! a plain group: a 2026-07-28 request to a 2025-era member goes in a backend session of the
//! era bridge (`data_path::era_bridge`, whose relay then forwards the answer), and a 2025-era
//! client's request to a member of the 2026-07-28 era alone is made a 2026-07-28 one.

use std::rc::Rc;
use std::time::Duration;

use serde_json::Value;

use crate::balance;
use crate::config::{Backend, BackendEra, Member};
use crate::data_path::admission::ConcKeys;
use crate::data_path::attempt::{self, AttemptIo, Plan, Reached};
use crate::data_path::client_address::Hop;
use crate::data_path::request::{ClientConn, Refusal, ReqMeta, Request};
use crate::data_path::response::Framing;
use crate::data_path::upstream::{self, Mirror};
use crate::data_path::{era_bridge, route};
use crate::http::{self, ChunkedDecoder};
use crate::runtime::core::Core;
use crate::session::{era, Owner};
use crate::tls::Conn;

use super::session::{issued, MODERN_ONLY};
use super::SessionCx;

/// The client request on whose behalf mcplb asks members: its headers (passed on as a plain
/// group's are), where it came from (the forwarding headers), who sends it, and whether it is
/// a 2026-07-28 request outside any session (the era bridge takes it to 2025-era members).
pub(crate) struct Origin<'a> {
    pub req: &'a Request,
    pub hop: Hop,
    pub owner: Option<&'a Owner>,
    pub modern: bool,
    /// The capabilities the client declared at `initialize` (`{}` outside a session): what
    /// a 2026-07-28 request made for a member of that era alone declares.
    pub capabilities: &'a [u8],
}

impl<'a> Origin<'a> {
    /// The client's current request, in the session `cx`.
    pub fn of(c: &'a ClientConn, cx: &'a SessionCx) -> Self {
        Origin {
            req: &c.req,
            hop: c.hop(),
            owner: c.owner.as_ref(),
            modern: cx.modern,
            capabilities: cx.session.as_ref().map_or(b"{}", |s| &s.capabilities),
        }
    }
}

/// One request mcplb sends a member.
#[derive(Clone, Copy)]
pub(crate) struct Outbound<'a> {
    /// The member.
    pub member: &'a Member,
    /// Its session: (backend tag, backend's session id; empty for a stateless member).
    pub session: Option<(u32, &'a [u8])>,
    /// `POST`, `GET` or `DELETE`.
    pub http_method: &'static [u8],
    /// The JSON-RPC message (empty for GET and DELETE).
    pub body: &'a [u8],
    /// The mirror headers' values for it.
    pub mirror: Mirror<'a>,
    /// Sending it again cannot run anything twice.
    pub read_only: bool,
    /// How long its answer head may take.
    pub timeout: Duration,
}

/// Why a member could not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MemberError {
    /// Its session's backend is gone, or it answered 404: the session must open again.
    SessionGone,
    /// Unreachable, timed out, or a broken answer.
    Unreachable(Refusal),
}

impl MemberError {
    /// What a client is told when this member's failure fails its request.
    pub fn refusal(&self) -> Refusal {
        match self {
            MemberError::SessionGone => Refusal::new(502, -32603, "a member lost its session"),
            MemberError::Unreachable(r) => r.clone(),
        }
    }
}

/// The parts of a member's answer head the virtual server uses.
#[derive(Debug, Default, Clone)]
pub(crate) struct MemberHead {
    pub status: u16,
    pub sse: bool,
    pub content_type: Vec<u8>,
    /// The `Mcp-Session-Id` it carried.
    pub session: Option<Vec<u8>>,
    pub length: Option<u64>,
    pub chunked: bool,
    pub close: bool,
}

impl MemberHead {
    /// Reads a response head (through its blank line).
    pub fn parse(head: &[u8]) -> Option<MemberHead> {
        let mut storage = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut storage);
        if !matches!(resp.parse(head), Ok(httparse::Status::Complete(_))) {
            return None;
        }
        let mut h = MemberHead {
            status: resp.code?,
            close: resp.version == Some(0),
            ..MemberHead::default()
        };
        for hd in resp.headers.iter() {
            let name = hd.name.as_bytes();
            if name.eq_ignore_ascii_case(b"content-type") {
                h.content_type = hd.value.to_vec();
                h.sse = hd
                    .value
                    .get(..17)
                    .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"));
            } else if name.eq_ignore_ascii_case(b"mcp-session-id") {
                h.session = Some(hd.value.trim_ascii().to_vec());
            } else if name.eq_ignore_ascii_case(b"content-length") {
                h.length = Some(http::parse_content_length(hd.value)?);
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                h.chunked = http::has_token(hd.value, b"chunked");
            } else if name.eq_ignore_ascii_case(b"connection")
                && http::has_token(hd.value, b"close")
            {
                h.close = true;
            }
        }
        Some(h)
    }

    /// How the body after this head is framed.
    pub fn framing(&self) -> Framing {
        if self.status == 204
            || self.status == 304
            || (self.status == 202 && self.length.is_none() && !self.chunked)
        {
            Framing::None
        } else if self.chunked {
            Framing::Chunked(ChunkedDecoder::new())
        } else if let Some(n) = self.length {
            Framing::Length(n)
        } else {
            Framing::UntilClose
        }
    }
}

/// A member that answered: its head parsed, the connection and the bytes read after the head.
pub(crate) struct Answered<'a> {
    pub head: MemberHead,
    pub up: Conn,
    /// Body bytes read with the head.
    pub early: Vec<u8>,
    pub reached: ReachedParts<'a>,
    /// The request went through the era bridge: where its answer comes from, and the answer's
    /// head as it came (the bridge rewrites the answer for the 2026-07-28 client).
    pub bridged: Option<(era_bridge::Leg, Vec<u8>)>,
}

/// Where a 2026-07-28 request to a member goes: the backend `bi` the member group's balancer
/// picked (the request is pinned to it: one pick per request), and the era bridge's backend
/// session there when that backend speaks the 2025 era (`None`: it serves 2026-07-28 itself).
struct Bridge {
    bi: usize,
    session: Option<Rc<era_bridge::BridgeSession>>,
}

/// Where `o` goes when it is a 2026-07-28 request outside any session (a POST of a JSON-RPC
/// request) to a member group that may need the era bridge: the backend its balancer picks,
/// and the bridge's session there when that backend speaks the 2025 era (learned with a probe
/// once per core with `era = "auto"`). `None`: `o` goes as it is, the attempt loop picking.
/// The sessions are the plain groups' ([`era_bridge::session_for`]): pooled per core by what
/// the request declares and who sends it.
async fn bridge_for(
    core: &Core,
    req: &Origin<'_>,
    o: &Outbound<'_>,
) -> Result<Option<Bridge>, MemberError> {
    if !req.modern || o.session.is_some() || o.http_method != b"POST" || o.mirror.method.is_empty()
    {
        return Ok(None);
    }
    let gi = o.member.group;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return Ok(None);
    };
    // A group that never bridges (or whose backends this core found to serve 2026-07-28
    // every one) is left to the attempt loop's own pick: a second pick here would skew its
    // balancing (round robin advancing twice per request).
    let never = !group.era_bridge || group.era == BackendEra::Stateless;
    if never || core.bridges.all_stateless(gi) {
        return Ok(None);
    }
    let now = balance::now_ns();
    // None eligible: the attempt loop says so.
    let Some(bi) = core.bal.pick(gi, group, rt, None, 0, now) else {
        return Ok(None);
    };
    let asker = era_bridge::Asker {
        req: req.req,
        body: o.body,
        owner: req.owner,
    };
    match era_bridge::session_for(core, &asker, gi, bi, true).await {
        Ok(session) => Ok(Some(Bridge {
            bi,
            session: session.map(|b| b.session),
        })),
        Err(era_bridge::Failed::Refuse(r)) => Err(MemberError::Unreachable(r)),
        Err(era_bridge::Failed::Upstream(e)) => {
            let (status, message) = e.status();
            Err(MemberError::Unreachable(Refusal::new(
                status, -32603, message,
            )))
        }
    }
}

/// Whether backend `bi` of member group `gi` is of the 2026-07-28 era alone as far as the era
/// bridge goes: the group bridges eras (`era_bridge`) and says `era = "2026"`, or says "auto"
/// and this core learned (with one probe) that it serves 2026-07-28 requests itself.
pub(crate) async fn modern_only(core: &Core, gi: usize, bi: usize) -> bool {
    let Some(group) = core.shared.config.servers.get(gi) else {
        return false;
    };
    if !group.era_bridge {
        return false;
    }
    match group.era {
        BackendEra::Stateless => true,
        BackendEra::Sessions => false,
        BackendEra::Auto => era_bridge::serves_2026(core, gi, bi).await,
    }
}

/// A 2025-era client's request in the member session of a member of the 2026-07-28 era alone
/// (its id [`MODERN_ONLY`], set when the member refused `initialize`): its body made a
/// 2026-07-28 request, `_meta` declaring the revision and what the client declared at
/// `initialize` (`session::era::modern_request`). `None`: it goes as it is.
fn modern_form(req: &Origin<'_>, o: &Outbound<'_>) -> Option<Vec<u8>> {
    let (_, sid) = o.session?;
    if sid != MODERN_ONLY || req.modern || o.http_method != b"POST" || o.mirror.method.is_empty() {
        return None;
    }
    let declared = era::Declared {
        capabilities: req.capabilities,
        client_info: None,
        meta: None,
    };
    era::modern_request(o.body, &declared).map(|(body, _)| body)
}

/// The `server/discover` result a bridged member's session was opened with, for a 2026-07-28
/// `server/discover` (`None`: the request goes to the member).
async fn bridged_discover(
    core: &Core,
    req: &Origin<'_>,
    o: &Outbound<'_>,
) -> Result<Option<Value>, MemberError> {
    if o.mirror.method != "server/discover" {
        return Ok(None);
    }
    let Some(s) = bridge_for(core, req, o).await?.and_then(|b| b.session) else {
        return Ok(None);
    };
    Ok(serde_json::from_slice(&s.discover).ok())
}

/// What must go back to the member group's pool and balancer when the answer ends.
pub(crate) struct ReachedParts<'a> {
    pub gi: usize,
    pub bi: usize,
    pub in_flight: attempt::InFlight<'a>,
    /// When the request was written ([`clock::now_ns`](crate::runtime::clock::now_ns)).
    pub sent: Option<u64>,
}

impl ReachedParts<'_> {
    /// Records the answer's outcome and pools the connection when it can be reused.
    pub fn finish(self, core: &Core, up: Option<Conn>, status: u16) {
        let ReachedParts {
            gi,
            bi,
            in_flight,
            sent,
        } = self;
        drop(in_flight);
        if let Some(up) = up {
            core.put_upstream(gi, bi, up);
        }
        let rtt = sent.map(|s| crate::runtime::clock::fresh_ns().saturating_sub(s));
        attempt::record_answer(core, gi, bi, status, rtt);
    }
}

/// Sends `o` to its member (on behalf of the client's request `req`) and reads the answer
/// head. A 2026-07-28 request to a 2025-era member goes in the era bridge's backend session
/// (opened again once when the member no longer knows it).
pub(crate) async fn send<'a>(
    core: &'a Core,
    req: &Origin<'_>,
    o: &Outbound<'_>,
) -> Result<Answered<'a>, MemberError> {
    let rewritten;
    let o = match modern_form(req, o) {
        Some(body) => {
            rewritten = body;
            Outbound {
                body: &rewritten,
                mirror: Mirror {
                    version: Some(era::MODERN.as_bytes()),
                    ..o.mirror
                },
                ..*o
            }
        }
        None => *o,
    };
    let o = &o;
    let mut again = true;
    loop {
        let bridge = bridge_for(core, req, o).await?;
        match send_once(core, req, o, bridge.as_ref()).await {
            Err(MemberError::SessionGone)
                if again && bridge.as_ref().is_some_and(|b| b.session.is_some()) =>
            {
                again = false
            }
            other => return other,
        }
    }
}

/// [`send`], once: in `bridge`'s session when it is given.
async fn send_once<'a>(
    core: &'a Core,
    req: &Origin<'_>,
    o: &Outbound<'_>,
    bridge: Option<&Bridge>,
) -> Result<Answered<'a>, MemberError> {
    let gi = o.member.group;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return Err(MemberError::Unreachable(Refusal::new(
            503,
            -32603,
            "no backend available",
        )));
    };
    let now = balance::now_ns();
    let mut plan = Plan {
        gi,
        pinned: None,
        sid: None,
        needs_failover: false,
        hash_key: None,
        read_only: o.read_only,
        can_fail_over: false,
        head_timeout: o.timeout,
    };
    if let Some((tag, sid)) = o.session {
        let Some(bi) = group.backends.iter().position(|b| b.tag == tag) else {
            return Err(MemberError::SessionGone);
        };
        if !route::session_backend_usable(rt, bi, now) {
            return Err(MemberError::SessionGone);
        }
        plan.pinned = Some(bi);
        // The marker of a 2026-07-28 member is no id to send.
        plan.sid = issued(sid).then_some(std::borrow::Cow::Borrowed(sid));
    }
    let session = bridge.and_then(|b| Some((b.bi, b.session.as_ref()?)));
    if let Some(b) = bridge {
        plan.pinned = Some(b.bi);
    }
    if let Some((_, s)) = session {
        plan.sid = s.sid.as_deref().map(std::borrow::Cow::Borrowed);
    }
    let mirror = Mirror {
        version: session
            .map(|(_, s)| s.version.as_bytes())
            .or(o.mirror.version),
        ..o.mirror
    };
    let mut out = core.take_buf();
    let mut ubuf = core.take_buf();
    let mut meta = ReqMeta::default();
    let write = |out: &mut Vec<u8>, backend: &Backend, sid: Option<&[u8]>| {
        upstream::build_member_request(
            out,
            req.req,
            (&core.shared.config.proxy.client_address, &req.hop),
            o.http_method,
            o.body,
            backend,
            sid,
            &group.auth.upstream,
            &mirror,
        );
    };
    let reached = {
        let mut io = AttemptIo {
            out: &mut out,
            ubuf: &mut ubuf,
            meta: &mut meta,
            sealed: None,
            timer: &mut Default::default(),
        };
        let mut permits = Default::default();
        attempt::reach(
            core,
            &mut plan,
            &ConcKeys::default(),
            &mut permits,
            &mut io,
            &write,
        )
        .await
    };
    core.give_buf(out);
    let Reached {
        mut up,
        head_len,
        bi,
        in_flight,
        backend_tag,
    } = reached.map_err(MemberError::Unreachable)?;
    let parts = ReachedParts {
        gi,
        bi,
        in_flight,
        sent: meta.sent,
    };
    let Some(head) = MemberHead::parse(ubuf.get(..head_len).unwrap_or_default()) else {
        parts.finish(core, None, 502);
        return Err(MemberError::Unreachable(Refusal::new(
            502,
            -32603,
            "malformed response from a member",
        )));
    };
    // The member no longer knows the session (it restarted; 404, or the TypeScript SDK's 400
    // "No valid session ID"): it ran nothing, and the session opens again.
    let in_session = o.session.is_some_and(|(_, sid)| issued(sid)) || session.is_some();
    if in_session && era_bridge::session_lost(core, &mut up, &mut ubuf, head_len).await {
        if let Some((bbi, s)) = session {
            core.bridges.forget(gi, bbi, s);
        }
        parts.finish(core, None, head.status);
        return Err(MemberError::SessionGone);
    }
    let early = ubuf.split_off(head_len.min(ubuf.len()));
    let bridged = session.map(|(_, s)| {
        let leg = era_bridge::Leg {
            gi,
            bi,
            session: s.clone(),
            backend_tag,
            rounds: Default::default(),
        };
        (leg, ubuf.clone())
    });
    core.give_buf(ubuf);
    Ok(Answered {
        head,
        up,
        early,
        reached: parts,
        bridged,
    })
}

/// A member's whole answer: its status, session id, and the JSON-RPC messages of its body
/// (one, a batch, or each SSE event's), in order.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub status: u16,
    /// The member answered with an SSE stream.
    pub sse: bool,
    /// The tag of the member's backend that answered.
    pub backend_tag: u32,
    pub session: Option<Vec<u8>>,
    pub messages: Vec<Value>,
}

impl Collected {
    /// The response to the request with id `id` (its `result`, or `Err` with its `error`).
    pub fn response(&self, id: &Value) -> Option<Result<&Value, &Value>> {
        self.messages.iter().find_map(|m| {
            if m.get("id") != Some(id) || m.get("method").is_some() {
                return None;
            }
            match (m.get("result"), m.get("error")) {
                (Some(r), _) => Some(Ok(r)),
                (None, Some(e)) => Some(Err(e)),
                _ => None,
            }
        })
    }
}

/// Longest member answer a fan-out reads (its lists are merged in memory).
const MAX_COLLECTED: usize = 16 * 1024 * 1024;

/// Sends `o` and reads the whole answer before the member's timeout. An SSE answer is read
/// until the response to `id` (the stream may go on with other requests' traffic).
pub(crate) async fn collect(
    core: &Core,
    req: &Origin<'_>,
    o: &Outbound<'_>,
    id: Option<&Value>,
) -> Result<Collected, MemberError> {
    if let Some(result) = bridged_discover(core, req, o).await? {
        let id = id.cloned().unwrap_or(Value::Null);
        return Ok(Collected {
            status: 200,
            messages: vec![serde_json::json!({"jsonrpc": "2.0", "id": id, "result": result})],
            ..Collected::default()
        });
    }
    let deadline = monoio::time::Instant::now() + o.timeout;
    let Answered {
        head,
        mut up,
        early,
        reached,
        ..
    } = send(core, req, o).await?;
    let mut framing = head.framing();
    let mut body = Vec::new();
    let mut sse = protocol::sse::SseParser::new();
    let mut messages = Vec::new();
    let mut avail = early;
    let mut done = false;
    let mut err = false;
    loop {
        let (take, complete) =
            crate::data_path::upstream::collect_step(&mut framing, &avail, &mut body, &mut err);
        let _ = take;
        if head.sse {
            sse.push(&body);
            body.clear();
            while let Some(ev) = sse.next_event() {
                if let Ok(v) = serde_json::from_str::<Value>(&ev.data) {
                    let answers_us =
                        id.is_some_and(|id| v.get("id") == Some(id) && v.get("method").is_none());
                    messages.push(v);
                    done |= answers_us;
                }
            }
        }
        if complete || err || done || body.len() > MAX_COLLECTED {
            done = complete;
            break;
        }
        avail.clear();
        let read =
            monoio::time::timeout_at(deadline, up.read_more(avail, crate::data_path::READ_SIZE));
        let Ok((r, b)) = read.await else {
            reached.finish(core, None, 504);
            return Err(MemberError::Unreachable(Refusal::new(
                504,
                -32603,
                "a member did not answer in time",
            )));
        };
        avail = b;
        if !matches!(r, Ok(n) if n > 0) {
            if matches!(framing, Framing::UntilClose) {
                break;
            }
            reached.finish(core, None, 502);
            return Err(MemberError::Unreachable(Refusal::new(
                502,
                -32603,
                "a member closed the connection mid-answer",
            )));
        }
    }
    if !head.sse && !body.is_empty() {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Array(items)) => messages.extend(items),
            Ok(v) => messages.push(v),
            Err(_) => {}
        }
    }
    let reusable = done && !err && !head.close && !matches!(framing, Framing::UntilClose);
    let backend_tag = core
        .shared
        .config
        .servers
        .get(reached.gi)
        .and_then(|g| g.backends.get(reached.bi))
        .map_or(0, |b| b.tag);
    reached.finish(core, reusable.then_some(up), head.status);
    Ok(Collected {
        backend_tag,
        sse: head.sse,
        status: head.status,
        session: head.session,
        messages,
    })
}
