//! Requests that go to every member at once: `initialize` (which opens the member sessions
//! the client's id will carry), the list methods (merged, cached, paged by a cursor that
//! carries each member's position), `logging/setLevel`, `server/discover`, notifications and
//! the end of a session. Members are asked concurrently, each within its own timeout; one
//! that fails is left out and logged (`fail_open`) or fails the request (`fail_closed`).

use std::rc::Rc;
use std::time::Instant;

use futures_util::future::join_all;
use serde_json::{json, Map, Value};

use super::cache::{self, Key};
use super::member::{self, Collected, MemberError, Origin, Outbound};
use super::naming::{self, Kind, MemberPage, Merged};
use super::session::{MemberSession, VirtualSession};
use super::{answer_bytes, error, log_member_failure, result, SessionCx};
use crate::config::{Member, VirtualServer};
use crate::data_path::reply;
use crate::data_path::request::{ClientConn, Next, Refusal, Stop};
use crate::data_path::upstream::Mirror;
use crate::runtime::core::Core;

/// Most pages read from one member to fill a list used for routing.
const MAX_PAGES: usize = 16;

/// A member's session for this client session: the one its id carries (or one opened again
/// on this core), else one opened now when the client has a session; `None` for requests
/// without a session (sent as they are: stateless).
pub(super) async fn session_for(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    m: usize,
) -> Result<Option<(u32, Vec<u8>)>, MemberError> {
    if cx.session.is_none() {
        return Ok(None);
    }
    match existing_session(cx, m) {
        Some(s) => Ok(Some(s)),
        None => reopen(core, req, vs, cx, m).await.map(Some),
    }
}

/// Member `m`'s session for this client session if it has one already (in its id, or opened
/// again on this core); none is opened.
pub(super) fn existing_session(cx: &SessionCx, m: usize) -> Option<(u32, Vec<u8>)> {
    let s = cx.session.as_ref()?;
    cache::reopened(cx.key, m as u8)
        .or_else(|| s.member(m).map(|ms| (ms.backend_tag, ms.sid.clone())))
}

/// Opens member `m`'s session again for this client session (its own is gone, or it was
/// never opened), replaying the client's protocol version and capabilities, and remembers it
/// on this core.
pub(super) async fn reopen(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    m: usize,
) -> Result<(u32, Vec<u8>), MemberError> {
    let (Some(s), Some(member)) = (&cx.session, vs.members.get(m)) else {
        return Err(MemberError::SessionGone);
    };
    let caps: Value = serde_json::from_slice(&s.capabilities).unwrap_or_else(|_| json!({}));
    let body = json!({
        "jsonrpc": "2.0", "id": "mcplb-open", "method": "initialize",
        "params": {
            "protocolVersion": s.protocol_version,
            "capabilities": caps,
            "clientInfo": {"name": "mcplb", "version": env!("CARGO_PKG_VERSION")},
        }
    });
    let body = serde_json::to_vec(&body).unwrap_or_default();
    let opened = open_member(core, req, member, &body, &json!("mcplb-open")).await?;
    let to = (opened.backend_tag, opened.sid);
    cache::set_reopened(cx.key, m as u8, Some(to.clone()));
    Ok(to)
}

/// A member session just opened.
struct Opened {
    backend_tag: u32,
    /// Empty: the member issued no session id (stateless).
    sid: Vec<u8>,
    result: Value,
}

/// Sends `initialize` (`body`, whose id is `id`) to a member, then `notifications/initialized`
/// in the session it opened. A member of the 2026-07-28 era alone (`era = "2026"`, or one
/// that refuses `initialize` and is found to serve 2026-07-28) is asked `server/discover`
/// instead ([`open_modern`]).
async fn open_member(
    core: &Core,
    req: &Origin<'_>,
    member: &Member,
    body: &[u8],
    id: &Value,
) -> Result<Opened, MemberError> {
    let group = core.shared.config.servers.get(member.group);
    if group.is_some_and(|g| g.era_bridge && g.era == crate::config::BackendEra::Stateless) {
        return open_modern(core, req, member, body, id).await;
    }
    let o = outbound(member, None, body, "initialize", None, false);
    let got = member::collect(core, req, &o, Some(id)).await?;
    let result = match got.response(id) {
        Some(Ok(r)) if got.status == 200 => r.clone(),
        _ if refused_as_2026_only(core, member, &got).await => {
            return open_modern(core, req, member, body, id).await;
        }
        _ => {
            let status = if (400..500).contains(&got.status) {
                got.status
            } else {
                502
            };
            return Err(MemberError::Unreachable(Refusal::new(
                status,
                -32603,
                "a member refused initialize",
            )));
        }
    };
    let sid = got.session.clone().unwrap_or_default();
    if sid.len() > crate::session::MAX_BACKEND_SID {
        return Err(MemberError::Unreachable(Refusal::new(
            502,
            -32603,
            "a member's session id is too long",
        )));
    }
    let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
    let session = Some((got.backend_tag, sid.as_slice()));
    let o = outbound(
        member,
        session,
        note,
        "notifications/initialized",
        None,
        false,
    );
    member::collect(core, req, &o, None).await?;
    Ok(Opened {
        backend_tag: got.backend_tag,
        sid,
        result,
    })
}

/// Whether a member that did not take `initialize` (its answer `got`) refused it as a server
/// of the 2026-07-28 era alone: a 4xx or a JSON-RPC error, from a backend that serves
/// 2026-07-28 requests (`member::modern_only`).
async fn refused_as_2026_only(core: &Core, member: &Member, got: &Collected) -> bool {
    let refused =
        (400..500).contains(&got.status) || got.messages.iter().any(|m| m.get("error").is_some());
    let bi = core
        .shared
        .config
        .servers
        .get(member.group)
        .and_then(|g| g.backends.iter().position(|b| b.tag == got.backend_tag));
    match bi {
        Some(bi) if refused => member::modern_only(core, member.group, bi).await,
        _ => false,
    }
}

/// Opens a member of the 2026-07-28 era alone for a 2025-era client's `initialize` (`body`,
/// id `id`): its `server/discover`, sent with what the client declares, stands for the
/// `initialize` answer (`session::era::initialize_answer`, at the revision the spec
/// negotiates); the member session's id is [`MODERN_ONLY`](super::session::MODERN_ONLY) (its
/// requests are made 2026-07-28 ones, each with that declaration, by `member::send`).
async fn open_modern(
    core: &Core,
    req: &Origin<'_>,
    member: &Member,
    body: &[u8],
    id: &Value,
) -> Result<Opened, MemberError> {
    let refused = |why: &'static str| MemberError::Unreachable(Refusal::new(502, -32603, why));
    let Some(hello) = crate::session::era::hello(body) else {
        return Err(refused(
            "initialize has no params mcplb can declare to a 2026-07-28 member",
        ));
    };
    let discover = crate::session::era::discover_body(&hello.declared);
    let own_id: Value = serde_json::from_slice::<Value>(&discover)
        .ok()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(Value::Null);
    let plain = outbound(member, None, &discover, "server/discover", None, true);
    // At 2026-07-28, with its mirror headers.
    let o = Outbound {
        mirror: Mirror {
            version: Some(crate::session::era::MODERN.as_bytes()),
            ..plain.mirror
        },
        ..plain
    };
    let got = member::collect(core, req, &o, Some(&own_id)).await?;
    let Some(answer) = got
        .messages
        .iter()
        .find(|m| m.get("id") == Some(&own_id) && m.get("result").is_some())
        .filter(|_| got.status == 200)
    else {
        return Err(refused(
            "a 2026-07-28 member did not answer server/discover",
        ));
    };
    let raw_id = serde_json::to_vec(id).unwrap_or_default();
    let version = crate::session::era::negotiate(hello.version);
    let made = crate::session::era::initialize_answer(&raw_id, version, answer)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
    let Some(result) = made.and_then(|mut v| v.get_mut("result").map(Value::take)) else {
        return Err(refused(
            "a 2026-07-28 member's server/discover has no result",
        ));
    };
    Ok(Opened {
        backend_tag: got.backend_tag,
        sid: super::session::MODERN_ONLY.to_vec(),
        result,
    })
}

/// A POST to `member`.
pub(super) fn outbound<'a>(
    member: &'a Member,
    session: Option<(u32, &'a [u8])>,
    body: &'a [u8],
    method: &'a str,
    name: Option<&'a str>,
    read_only: bool,
) -> Outbound<'a> {
    Outbound {
        member,
        session,
        http_method: b"POST",
        body,
        mirror: Mirror {
            method,
            name,
            version: None,
        },
        read_only,
        timeout: member.timeout,
    }
}

/// `initialize`: opens every member's session at once, merges their capabilities and
/// instructions, and answers with a virtual session id that carries them all.
pub(super) async fn initialize(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    msg: &Value,
) -> Result<Next, Stop> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let params = msg.get("params").cloned().unwrap_or_else(|| json!({}));
    let asked = params
        .get("protocolVersion")
        .and_then(Value::as_str)
        .unwrap_or("2025-06-18")
        .to_string();
    let body = c.req.body().to_vec();
    let opened = {
        let none = SessionCx::none(false);
        let req = &Origin::of(c, &none);
        join_all(
            vs.members
                .iter()
                .map(|m| open_member(core, req, m, &body, &id)),
        )
        .await
    };
    let mut members = Vec::new();
    let mut results = Vec::new();
    let mut refused = None;
    for (i, (m, o)) in vs.members.iter().zip(opened).enumerate() {
        match o {
            Ok(o) => {
                members.push(MemberSession {
                    member: i as u8,
                    backend_tag: o.backend_tag,
                    sid: o.sid,
                });
                results.push((i, o.result));
            }
            Err(e) => {
                if let MemberError::Unreachable(r) = &e {
                    refused = refused.or(Some(r.status));
                }
                log_member_failure(&m.server, "member left out of a new session", &e);
                if m.fail_closed {
                    return Err(Refusal::new(
                        502,
                        -32603,
                        "a member the virtual server needs (fail_closed) could not be reached",
                    )
                    .into());
                }
            }
        }
    }
    if results.is_empty() {
        // Every member refused: a refusal of the request itself (a 4xx, such as a server's
        // DNS-rebinding check) is the client's answer, not an unreachable member.
        let status = refused.filter(|s| (400..500).contains(s)).unwrap_or(502);
        return Err(Refusal::new(
            status,
            -32603,
            "no member of the virtual server could be reached",
        )
        .into());
    }
    let merged = merge_initialize(
        vs,
        c.meta.group.map_or("", |gi| {
            core.shared
                .config
                .servers
                .get(gi)
                .map_or("", |g| g.name.as_str())
        }),
        &asked,
        &results,
    );
    let session = VirtualSession {
        group_tag: vs.tag,
        owner: c.owner.map(|o| *o.as_bytes()),
        protocol_version: asked,
        capabilities: serde_json::to_vec(params.get("capabilities").unwrap_or(&json!({})))
            .unwrap_or_default(),
        members,
    };
    let mut header = b"mcp-session-id: ".to_vec();
    if !session.seal(&core.shared.sealer, &mut header) {
        return Err(Refusal::new(502, -32603, "the session could not be sealed").into());
    }
    header.extend_from_slice(b"\r\n");
    c.meta.new_session = true;
    let answer = answer_bytes(c.req.id(), "result", &merged);
    let extra = String::from_utf8(header).unwrap_or_default();
    Ok(reply::document(c, 200, &answer, &extra).await)
}

/// One `initialize` result for the client from the members' (`(member, result)`): the
/// protocol version the client asked for when every member agreed (else the oldest they
/// answered), the union of their capabilities, their instructions (each under its member's
/// prefix), and the virtual server's own name.
pub(super) fn merge_initialize(
    vs: &VirtualServer,
    name: &str,
    asked: &str,
    results: &[(usize, Value)],
) -> Value {
    let mut version = asked.to_string();
    for (_, r) in results {
        if let Some(v) = r.get("protocolVersion").and_then(Value::as_str) {
            if v < version.as_str() {
                version = v.to_string();
            }
        }
    }
    let caps = merge_capabilities(results.iter().map(|(_, r)| r.get("capabilities")));
    let instructions: Vec<String> = results
        .iter()
        .filter_map(|(i, r)| {
            let text = r.get("instructions")?.as_str()?;
            let m = vs.members.get(*i)?;
            Some(format!("[{}] {text}", m.prefix))
        })
        .collect();
    let mut out = json!({
        "protocolVersion": version,
        "capabilities": caps,
        "serverInfo": {"name": name, "version": env!("CARGO_PKG_VERSION")},
    });
    if !instructions.is_empty() {
        out["instructions"] = Value::String(instructions.join("\n\n"));
    }
    out
}

/// The union of members' capabilities: a feature any member has, with each boolean flag
/// (`listChanged`, `subscribe`) true when any member's is.
pub(super) fn merge_capabilities<'a>(all: impl Iterator<Item = Option<&'a Value>>) -> Value {
    let mut out = Map::new();
    for caps in all.flatten().filter_map(Value::as_object) {
        for (feature, v) in caps {
            let slot = out
                .entry(feature.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            let (Some(slot), Some(v)) = (slot.as_object_mut(), v.as_object()) else {
                continue;
            };
            for (k, flag) in v {
                match (slot.get(k), flag) {
                    (Some(Value::Bool(true)), _) => {}
                    _ => {
                        slot.insert(k.clone(), flag.clone());
                    }
                }
            }
        }
    }
    Value::Object(out)
}

/// The outcome of asking every member (or those a cursor names) for one page.
struct Pages {
    pages: Vec<MemberPage>,
    /// A member failed (the answer is partial and is not cached).
    partial: bool,
}

/// Asks members for a page of `kind`: each `(member, cursor)` of `which`. A member that
/// does not know the method (-32601) lists nothing; one that fails is left out (logged), or
/// fails the request when it is `fail_closed`.
async fn pages(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    kind: Kind,
    msg: &Value,
    which: &[(usize, Option<String>)],
) -> Result<Pages, Refusal> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let asks = which.iter().map(|(m, cursor)| {
        // The client's `_meta` (2026-07-28 requests carry their version and capabilities
        // there), and the member's own cursor.
        let mut params = Map::new();
        if let Some(meta) = msg.get("params").and_then(|p| p.get("_meta")) {
            params.insert("_meta".into(), meta.clone());
        }
        if let Some(c) = cursor {
            params.insert("cursor".into(), Value::String(c.clone()));
        }
        let body = json!({"jsonrpc": "2.0", "id": id, "method": kind.method(), "params": params});
        let id = &id;
        async move {
            let body = serde_json::to_vec(&body).unwrap_or_default();
            let a = Ask {
                body: &body,
                method: kind.method(),
                name: None,
                read_only: true,
                id,
            };
            let got = ask(core, req, vs, cx, *m, &a).await;
            (*m, got)
        }
    });
    let answers = join_all(asks).await;
    let mut out = Pages {
        pages: Vec::new(),
        partial: false,
    };
    for (m, got) in answers {
        let Some(member) = vs.members.get(m) else {
            continue;
        };
        let outcome = got.and_then(|got| match got.response(&id) {
            Some(Ok(r)) => Ok(Some(MemberPage {
                sse: got.sse,
                ..MemberPage::from_result(m, kind, r)
            })),
            Some(Err(e)) if e.get("code").and_then(Value::as_i64) == Some(-32601) => Ok(None),
            _ => Err(MemberError::Unreachable(Refusal::new(
                502,
                -32603,
                "a member answered a list with an error",
            ))),
        });
        match outcome {
            Ok(Some(p)) => out.pages.push(p),
            Ok(None) => {}
            Err(e) => {
                log_member_failure(&member.server, "member left out of a list", &e);
                if member.fail_closed {
                    return Err(e.refusal());
                }
                out.partial = true;
            }
        }
    }
    Ok(out)
}

/// One request asked of members: its body, what the mirror headers say of it, whether it only
/// reads, and its JSON-RPC id (the answer to look for).
pub(super) struct Ask<'a> {
    pub body: &'a [u8],
    pub method: &'a str,
    pub name: Option<&'a str>,
    pub read_only: bool,
    pub id: &'a Value,
}

/// Asks each of the members `which` at once (each in the client's session): their answers.
pub(super) async fn ask_each(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    which: impl Iterator<Item = usize>,
    a: &Ask<'_>,
) -> Vec<(usize, Result<Collected, MemberError>)> {
    join_all(which.map(|m| async move { (m, ask(core, req, vs, cx, m, a).await) })).await
}

/// Sends one request to member `m` in the client's session (opening the member's session
/// again once when it is gone) and collects the answer.
pub(super) async fn ask(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    m: usize,
    a: &Ask<'_>,
) -> Result<Collected, MemberError> {
    let Some(member) = vs.members.get(m) else {
        return Err(MemberError::SessionGone);
    };
    let mut again = true;
    let mut session = session_for(core, req, vs, cx, m).await?;
    loop {
        let s = session.as_ref().map(|(t, sid)| (*t, sid.as_slice()));
        let o = outbound(member, s, a.body, a.method, a.name, a.read_only);
        match member::collect(core, req, &o, Some(a.id)).await {
            Err(MemberError::SessionGone) if again && cx.session.is_some() => {
                again = false;
                session = Some(reopen(core, req, vs, cx, m).await?);
            }
            other => return other,
        }
    }
}

/// A list method: from this core's merged lists when fresh (first pages only), else asked of
/// the members (those the cursor names, at their positions), merged, and cached when whole.
pub(super) async fn list(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    kind: Kind,
    msg: &Value,
) -> Result<Next, Stop> {
    let cursor = msg
        .get("params")
        .and_then(|p| p.get("cursor"))
        .and_then(Value::as_str);
    let which: Vec<(usize, Option<String>)> = match cursor {
        None => (0..vs.members.len()).map(|m| (m, None)).collect(),
        Some(cur) => match naming::decode_cursor(cur, vs.members.len()) {
            Some(p) => p.into_iter().map(|(m, c)| (m, Some(c))).collect(),
            None => return Ok(error(c, -32602, "Invalid params: unknown cursor").await),
        },
    };
    let listed = match cursor {
        None => Some(whole(core, &Origin::of(c, cx), vs, cx, kind, msg, false).await?),
        Some(_) => None,
    };
    let (merged, next) = match listed {
        Some(Listed::Whole(m)) => (m, None),
        Some(Listed::Paged(m, next)) => (m, next),
        None => {
            let got = pages(core, &Origin::of(c, cx), vs, cx, kind, msg, &which).await?;
            let next: Vec<(usize, String)> = got
                .pages
                .iter()
                .filter_map(|p| Some((p.member, p.next.clone()?)))
                .collect();
            let merged = naming::merge(vs, kind, &got.pages);
            log_clashes(vs, kind, &merged);
            (Rc::new(merged), naming::encode_cursor(&next))
        }
    };
    let mut items = merged.items.clone();
    if let Some(filter) = c.list_filter.take() {
        // The virtual group's own `[[policies]]`, on the names its clients see.
        crate::data_path::policy::retain_visible(core, &filter, &mut items);
    }
    let mut result_obj = Map::new();
    result_obj.insert(kind.key().into(), Value::Array(items));
    if let Some(n) = next {
        result_obj.insert("nextCursor".into(), Value::String(n));
    }
    if super::stateless_era(&c.req, msg) {
        // 2026-07-28 requires the caching hints (SEP-2549): the members' shortest, else
        // immediately stale and private.
        result_obj.insert("resultType".into(), json!("complete"));
        result_obj.insert("ttlMs".into(), json!(merged.ttl_ms.unwrap_or(0)));
        let public = merged.ttl_ms.is_some() && !merged.private;
        let scope = if public { "public" } else { "private" };
        result_obj.insert("cacheScope".into(), json!(scope));
    }
    // Framed as the members framed theirs (a virtual server of one member answers as it).
    let body = answer_bytes(c.req.id(), "result", &Value::Object(result_obj));
    Ok(super::answer(c, &body, merged.sse).await)
}

/// A merged list.
pub(super) enum Listed {
    /// Every member's every page.
    Whole(Rc<Merged>),
    /// The members' first pages, and the cursor to the rest.
    Paged(Rc<Merged>, Option<String>),
}

impl Listed {
    /// The merged items (and routes) either way.
    pub fn merged(&self) -> &Rc<Merged> {
        match self {
            Listed::Whole(m) | Listed::Paged(m, _) => m,
        }
    }
}

/// The whole merged list of `kind` (every member's every page), from this core's cache or
/// asked now and cached. With `all_pages` false, the first pages and a cursor when some
/// member has more than one page (the client pages through them).
pub(super) async fn whole(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    kind: Kind,
    msg: &Value,
    all_pages: bool,
) -> Result<Listed, Refusal> {
    let now = Instant::now();
    let shared = Key {
        server: vs.tag,
        kind,
        scope: 0,
        caps: cx.caps,
    };
    let private = Key {
        scope: cx.key,
        ..shared
    };
    let up = |m: usize| vs.members.get(m).is_some_and(|m| member_up(core, m));
    for key in [shared, private] {
        if let Some(m) = cache::get(&key, core.generation, now, up) {
            return Ok(Listed::Whole(m));
        }
    }
    let changed = cache::changes();
    let mut which: Vec<(usize, Option<String>)> =
        (0..vs.members.len()).map(|m| (m, None)).collect();
    let mut all: Vec<MemberPage> = Vec::new();
    let mut partial = false;
    for round in 0..MAX_PAGES {
        let got = pages(core, req, vs, cx, kind, msg, &which).await?;
        partial |= got.partial;
        which = got
            .pages
            .iter()
            .filter_map(|p| Some((p.member, Some(p.next.clone()?))))
            .collect();
        all.extend(got.pages);
        if which.is_empty() {
            break;
        }
        if !all_pages && round == 0 {
            let next: Vec<(usize, String)> = which
                .into_iter()
                .filter_map(|(m, c)| Some((m, c?)))
                .collect();
            let merged = naming::merge(vs, kind, &all);
            log_clashes(vs, kind, &merged);
            return Ok(Listed::Paged(Rc::new(merged), naming::encode_cursor(&next)));
        }
    }
    // Pages of one member, in order, as one page.
    let mut by_member: Vec<MemberPage> = Vec::new();
    for p in all {
        match by_member.iter_mut().find(|q| q.member == p.member) {
            Some(q) => {
                q.items.extend(p.items);
                q.ttl_ms = match (q.ttl_ms, p.ttl_ms) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                q.private |= p.private;
                q.sse |= p.sse;
            }
            None => by_member.push(p),
        }
    }
    let merged = naming::merge(vs, kind, &by_member);
    log_clashes(vs, kind, &merged);
    let merged = Rc::new(merged);
    // `list_cache_ttl = "0s"`: nothing is kept, whatever the members' hints.
    if !partial && !vs.list_cache_ttl.is_zero() {
        let ttl = by_member
            .iter()
            .filter_map(|p| p.ttl_ms)
            .min()
            .map_or(vs.list_cache_ttl, std::time::Duration::from_millis);
        let private_scope = by_member.iter().any(|p| p.private);
        let key = if private_scope { private } else { shared };
        if !private_scope || cx.key != 0 {
            cache::put(key, core.generation, changed, ttl, merged.clone());
        }
    }
    Ok(Listed::Whole(merged))
}

/// Whether some backend of the member's group is eligible (healthy, not ejected): a member
/// found down leaves the cached lists.
fn member_up(core: &Core, m: &Member) -> bool {
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(m.group),
        core.shared.groups.get(m.group),
    ) else {
        return false;
    };
    let now = crate::balance::now_ns();
    (0..group.backends.len()).any(|i| rt.health.is_eligible(i, now))
}

/// Logs names two members both show (once a minute per server and kind).
fn log_clashes(vs: &VirtualServer, kind: Kind, merged: &Merged) {
    for (name, m) in &merged.clashes {
        let member = vs.members.get(*m).map_or("", |m| m.server.as_str());
        let what = match kind {
            Kind::Resources | Kind::Templates => {
                "two members claim one resource URI; the first keeps it"
            }
            _ => "two members show one name; the first keeps it",
        };
        if crate::control::logs::first_in_window(what, member, "") {
            tracing::warn!(member, name = %name, "virtual server: {what}");
        }
    }
}

/// `logging/setLevel`: to every member; answered once every member that could be reached
/// took it.
pub(super) async fn set_level(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    msg: &Value,
) -> Result<Next, Stop> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let body = c.req.body().to_vec();
    let a = Ask {
        body: &body,
        method: "logging/setLevel",
        name: None,
        read_only: false,
        id: &id,
    };
    let answers = ask_each(core, &Origin::of(c, cx), vs, cx, 0..vs.members.len(), &a).await;
    for (m, got) in answers {
        let Some(member) = vs.members.get(m) else {
            continue;
        };
        let failed = match &got {
            Ok(g) => match g.response(&id) {
                Some(Ok(_)) => None,
                // A member without logging has nothing to set.
                Some(Err(e)) if e.get("code").and_then(Value::as_i64) == Some(-32601) => None,
                _ => Some(MemberError::Unreachable(Refusal::new(
                    502,
                    -32603,
                    "a member refused logging/setLevel",
                ))),
            },
            Err(e) => Some(e.clone()),
        };
        if let Some(e) = failed {
            log_member_failure(&member.server, "member did not take logging/setLevel", &e);
            if member.fail_closed {
                return Err(e.refusal().into());
            }
        }
    }
    Ok(result(c, &super::empty_result(&c.req, msg)).await)
}

/// `server/discover` (2026-07-28): every member's, merged like `initialize`.
pub(super) async fn discover(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    msg: &Value,
) -> Result<Next, Stop> {
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    let body = c.req.body().to_vec();
    // Outside any session; a bridged member answers from the session the bridge holds.
    let none = SessionCx::none(cx.modern);
    let a = Ask {
        body: &body,
        method: "server/discover",
        name: None,
        read_only: true,
        id: &id,
    };
    let answers = ask_each(
        core,
        &Origin::of(c, &none),
        vs,
        &none,
        0..vs.members.len(),
        &a,
    )
    .await;
    let mut results = Vec::new();
    for (m, got) in answers {
        let Some(member) = vs.members.get(m) else {
            continue;
        };
        match got.map(|g| g.response(&id).and_then(Result::ok).cloned()) {
            Ok(Some(r)) => results.push((m, r)),
            Ok(None) | Err(_) => {
                let e = MemberError::Unreachable(Refusal::new(502, -32603, "no discover answer"));
                log_member_failure(&member.server, "member left out of server/discover", &e);
                if member.fail_closed {
                    return Err(e.refusal().into());
                }
            }
        }
    }
    if results.is_empty() {
        return Err(Refusal::new(
            502,
            -32603,
            "no member of the virtual server could be reached",
        )
        .into());
    }
    let name = c
        .meta
        .group
        .and_then(|gi| core.shared.config.servers.get(gi))
        .map_or("", |g| g.name.as_str());
    // Versions every member supports (all of them, when they share none).
    let mut versions: Option<Vec<Value>> = None;
    for (_, r) in &results {
        let mine: Vec<Value> = r
            .get("supportedVersions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        versions = Some(match versions {
            None => mine,
            Some(v) => v.into_iter().filter(|x| mine.contains(x)).collect(),
        });
    }
    let mut out = merge_initialize(vs, name, "9999-99-99", &results);
    if let Some(o) = out.as_object_mut() {
        o.remove("protocolVersion");
        o.insert(
            "supportedVersions".into(),
            Value::Array(versions.unwrap_or_default()),
        );
    }
    Ok(result(c, &out).await)
}

/// A client notification: `notifications/initialized` was sent to each member when its
/// session opened; any other (cancellations, `roots/list_changed`, ...) goes to every
/// member in the client's session, whose members ignore what is not theirs (a cancellation
/// names a request only the member running it knows).
pub(super) async fn notification(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
    method: &str,
    msg: &Value,
) {
    if method == "notifications/initialized" {
        return;
    }
    let Ok(body) = serde_json::to_vec(msg) else {
        return;
    };
    join_all((0..vs.members.len()).map(|m| {
        let body = &body;
        async move {
            let Some(member) = vs.members.get(m) else {
                return;
            };
            // Only to member sessions that exist (without one, a member has seen nothing of
            // this client's that a notification could be about).
            let Some(session) = existing_session(cx, m) else {
                return;
            };
            // A member of the 2026-07-28 era alone has no use for them (as for a plain group,
            // where mcplb answers them).
            if session.1 == super::session::MODERN_ONLY {
                return;
            }
            let s = Some((session.0, session.1.as_slice()));
            let o = outbound(member, s, body, method, None, false);
            if let Err(e) = member::collect(core, req, &o, None).await {
                log_member_failure(&member.server, "notification not delivered", &e);
            }
        }
    }))
    .await;
}

/// DELETE: ends every member session the client's session holds.
pub(super) async fn end_sessions(
    core: &Core,
    req: &Origin<'_>,
    vs: &VirtualServer,
    cx: &SessionCx,
) {
    let Some(s) = &cx.session else {
        return;
    };
    join_all(s.members.iter().map(|ms| async move {
        let m = usize::from(ms.member);
        let Some(member) = vs.members.get(m) else {
            return;
        };
        if !super::session::issued(&ms.sid) {
            return;
        }
        let session =
            cache::reopened(cx.key, ms.member).unwrap_or_else(|| (ms.backend_tag, ms.sid.clone()));
        cache::set_reopened(cx.key, ms.member, None);
        let o = Outbound {
            http_method: b"DELETE",
            ..outbound(member, Some((session.0, &session.1)), b"", "", None, true)
        };
        let _ = member::collect(core, req, &o, None).await;
    }))
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_merge_as_a_union_of_flags() {
        let a = json!({"tools": {"listChanged": false}, "logging": {}});
        let b = json!({"tools": {"listChanged": true}, "resources": {"subscribe": true}});
        let c = json!({"tools": {"listChanged": false}});
        let m = merge_capabilities([Some(&a), Some(&b), None, Some(&c)].into_iter());
        assert_eq!(
            m,
            json!({"tools": {"listChanged": true}, "logging": {}, "resources": {"subscribe": true}})
        );
    }
}
