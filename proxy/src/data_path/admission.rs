//! Who and what may come in: the `Origin` allow-list and credentials (decided on the head,
//! before any body is read), the JSON-RPC envelope and its 2026-07-28 mirror headers, rate
//! limits and the concurrency rules' keys. Plain functions over the request and the shared
//! configuration; the only waiting here is for a concurrency permit.

use std::borrow::Cow;
use std::sync::Arc;

use protocol::{Envelope, MessageKind, Method};

use crate::auth::{AuthConfig, Caller, Denial, JwtCheck, Principal};
use crate::config::{ConcurrencyPer, ConcurrencyRule, MAX_CONCURRENCY_RULES};
use crate::control::stats::{self, Counter};
use crate::data_path::request::{offset_of, ClientConn, Refusal, Request, Stop};
use crate::data_path::route;
use crate::runtime::core::Core;

/// Largest body read from a request whose credential was refused (to answer with its id).
pub(crate) const DENIED_BODY_MAX: u64 = 64 * 1024;

/// Refuses a request whose `Origin` is not allowed (403) or whose credential the group does not
/// accept (401, or 403 for missing scopes); on success `c.caller` says who it is and `c.owner`
/// which sessions are its own.
pub(crate) fn check_access(core: &Core, c: &mut ClientConn, gi: usize) -> Result<(), Denial> {
    c.owner = None;
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Ok(());
    };
    if let Some(allowed) = &group.allowed_origins {
        if let Some(origin) = c.req.header(b"origin") {
            let origin = origin.strip_suffix(b"/").unwrap_or(origin);
            if !allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin))
            {
                return Err(Denial {
                    status: 403,
                    error: None,
                    message: "Origin not allowed",
                });
            }
        }
    }
    if !group.auth.required() {
        // No credential checked in this group: no header scan on the request path.
        c.caller.reset();
        return Ok(());
    }
    let verdict = crate::auth::check(
        &group.auth,
        c.req.header(b"authorization"),
        c.req.header(b"x-api-key"),
        c.client_ip,
        &core.shared.key_hasher,
        &mut c.caller,
    );
    let jwt = match c.caller.jwt {
        JwtCheck::None => None,
        JwtCheck::Cached => Some(Counter::JwtCacheHits),
        JwtCheck::Verified => Some(Counter::JwtVerifications),
        JwtCheck::Throttled => Some(Counter::AuthThrottled),
    };
    if let Some(k) = jwt {
        core.rec.borrow_mut().count(k, 1);
    }
    if verdict.is_ok() {
        c.owner = session_owner(&core.shared.sealer, 0, &group.auth, &c.caller);
    }
    verdict
}

/// The owner sealed into the sessions `caller` starts, and required of the sessions it uses:
/// a digest of the API key's digest, or of the JWT's issuer and identity claim (so a refreshed
/// token of the same identity keeps its sessions). `None` in groups without authentication,
/// whose sessions stay unowned as before. `key`: which session key digests it (0, the sealing
/// key, for new sessions; an older one for an id that key opened).
pub(crate) fn session_owner(
    sealer: &crate::session::SessionSealer,
    key: usize,
    auth: &AuthConfig,
    caller: &Caller,
) -> Option<crate::session::Owner> {
    if !auth.required() {
        return None;
    }
    match caller.principal {
        Principal::ApiKey(digest) => sealer.owner_under(key, &[b"api-key", &digest]),
        Principal::Jwt => {
            let issuer = auth.jwt.as_ref().map_or("", |v| v.issuer.as_str());
            sealer.owner_under(key, &[b"jwt", issuer.as_bytes(), caller.name.as_bytes()])
        }
        // Not reached (a caller admitted by a group with authentication has a principal);
        // without an owner, its sessions would be refused, never shared.
        Principal::None => None,
    }
}

/// The caller's owner digest under session key `key` (the one that opened its session id):
/// `c.owner` for the sealing key, computed again for an id an older key sealed.
pub(crate) fn owner_under_key(
    core: &Core,
    c: &ClientConn,
    group: &crate::config::ServerGroup,
    key: usize,
) -> Option<crate::session::Owner> {
    if key == 0 || c.owner.is_none() {
        return c.owner;
    }
    session_owner(&core.shared.sealer, key, &group.auth, &c.caller)
}

/// How a refused credential is answered: the refusal, and whether the (small) body is read
/// first so the JSON-RPC error can carry the request's id. A refused `Origin` and large or
/// chunked bodies are answered at once.
pub(crate) fn denial(core: &Core, gi: usize, req: &Request, d: &Denial) -> (Refusal, bool) {
    if d.status == 403 && d.error.is_none() {
        return (Refusal::invalid(d.status, d.message), false);
    }
    let h = &req.head;
    let read_first =
        !(h.chunked || h.content_length.unwrap_or(0) > DENIED_BODY_MAX || h.expect_continue);
    let challenge = core
        .shared
        .config
        .servers
        .get(gi)
        .map(|g| crate::auth::challenge(&g.auth, d))
        .unwrap_or_default();
    let mut r = Refusal::invalid(d.status, d.message).with_headers(challenge);
    r.close = !read_first;
    (r, read_first)
}

/// What the envelope stage learned of a JSON-RPC request that may go on.
pub(crate) struct Admitted {
    /// Sending it again cannot run anything twice.
    pub read_only: bool,
    /// The key a hashing group balances on.
    pub hash_key: Option<u64>,
    /// The concurrency rules it counts under.
    pub conc: ConcKeys,
    /// A 2026-07-28 request (its `_meta` declares that revision): bridged to 2025-era
    /// backends.
    pub modern: bool,
    /// Where `params._meta.traceparent` is in the body.
    pub traceparent: Option<std::ops::Range<usize>>,
}

/// Reads the JSON-RPC envelope of a POST body and applies every check that needs it: the
/// frame itself (400 -32700/-32600), the 2026-07-28 `Mcp-Method`/`Mcp-Name` mirror headers
/// (400 -32020), rate limits (429, or a dropped notification). Notes the request's id, method
/// and tool in `c`.
pub(crate) fn envelope(core: &Core, c: &mut ClientConn, gi: usize) -> Result<Admitted, Stop> {
    let cfg = &core.shared.config;
    let body = c.req.body();
    let env = match protocol::parse_message_with_depth(body, cfg.proxy.max_json_depth) {
        Ok(env) => env,
        Err(e) => {
            if e.kind == protocol::FrameErrorKind::TooDeep {
                core.rec.borrow_mut().count(Counter::JsonTooDeep, 1);
            }
            let id = (e.jsonrpc_code() != -32700)
                .then(|| e.id_in(body))
                .flatten()
                .map(|id| offset_of(body, id));
            let r = Refusal::new(400, e.jsonrpc_code(), e.message());
            c.req.set_id(id);
            return Err(r.into());
        }
    };
    let id = env.id.map(|id| offset_of(body, id));
    let method = match (env.kind, env.method) {
        (MessageKind::Request, Some(m)) => Method::of(&m),
        _ => Method::Other,
    };
    let row = match env.kind {
        MessageKind::Notification => stats::M_NOTIFICATION,
        MessageKind::Response => stats::M_RESPONSE,
        // Only a request has a method `Method::of` names (a batch has none: `other`).
        MessageKind::Request | MessageKind::Batch => stats::method_row(method),
    };
    let mut policy = super::policy::check(core, &c.caller, &mut c.policy_class, gi, &env, method);
    let verdict = match policy.refusal.take() {
        None => check_envelope(core, c, gi, &env),
        Some(r) => Err(r.into()),
    };
    let admitted = verdict.map(|conc| Admitted {
        read_only: method.is_read_only(),
        hash_key: cfg
            .servers
            .get(gi)
            .and_then(|g| route::balance_key(g, &c.req, c.client_ip, env.name.map(|n| n.raw()))),
        conc,
        // The revision as the body's `_meta` declares it (every 2026-07-28 request carries
        // it; the header alone does not make one). Never a handshake.
        modern: env.kind == MessageKind::Request
            && method != Method::Initialize
            && env
                .protocol_version
                .is_some_and(|v| v.eq_str(crate::session::era::MODERN)),
        traceparent: env.traceparent.map(|t| offset_of(body, t.raw())),
    });
    let tool = (method == Method::ToolsCall)
        .then_some(env.name)
        .flatten()
        .map(|n| core.rec.borrow_mut().tool_slot(&n.decode()));
    if core.audit.is_some() {
        c.meta.rpc = crate::data_path::request::RpcSpans::of(body, &env);
    }
    c.req.set_id(id);
    c.meta.method = method;
    c.meta.row = row;
    c.meta.tool = tool;
    c.meta.policy = policy.decision;
    c.list_filter = policy.filter;
    admitted
}

/// The checks on a parsed envelope: mirror headers, rate limits, then the concurrency keys.
fn check_envelope(
    core: &Core,
    c: &ClientConn,
    gi: usize,
    env: &Envelope<'_>,
) -> Result<ConcKeys, Stop> {
    if let Some(msg) = header_mismatch(&c.req, env) {
        return Err(Refusal::new(400, -32020, msg).into());
    }
    let shared = &core.shared;
    if shared.limits.is_none() && shared.cluster.is_none() && shared.config.concurrency.is_empty() {
        // No rule to match: nothing to decode.
        return Ok(ConcKeys::default());
    }
    let facts = RequestFacts::of(core, gi, env);
    if let Some((rule, retry_ns)) = check_limits(core, c, &facts)? {
        if env.kind == MessageKind::Notification {
            // Over a limit, a notification is dropped (counted), not answered with an error.
            return Err(Stop::DroppedNotification);
        }
        let secs = retry_ns.div_ceil(1_000_000_000).max(1);
        let data = format!(
            "{{\"limit\":{rule},\"retryAfterMs\":{}}}",
            retry_ns.div_ceil(1_000_000)
        );
        return Err(Refusal::new(429, -32000, "rate limit exceeded")
            .with_headers(format!("retry-after: {secs}\r\n"))
            .with_data(data)
            .into());
    }
    let mut conc = ConcKeys::default();
    if env.kind == MessageKind::Request {
        concurrency_keys(core, c, &facts, &mut conc);
    }
    Ok(conc)
}

/// Checks the 2026-07-28 mirror headers against the body.
fn header_mismatch(req: &Request, env: &Envelope<'_>) -> Option<&'static str> {
    if let Some(hv) = req.mcp_method() {
        let ok = env
            .method
            .is_some_and(|m| std::str::from_utf8(hv).is_ok_and(|s| m.eq_str(s)));
        if !ok {
            return Some("Mcp-Method header does not match the body's method");
        }
    }
    if let Some(hv) = req.mcp_name() {
        let target = env.name.or(env.uri);
        let ok = target.is_some_and(|n| std::str::from_utf8(hv).is_ok_and(|s| n.eq_str(s)));
        if !ok {
            return Some("Mcp-Name header does not match the body's name");
        }
    }
    None
}

/// The routing facts rate and concurrency rules match on, decoded once per request (no
/// allocation unless a name carries JSON escapes).
struct RequestFacts<'a> {
    server: &'a str,
    method: Cow<'a, str>,
    tool: Option<Cow<'a, str>>,
    uri: Option<Cow<'a, str>>,
}

impl<'a> RequestFacts<'a> {
    fn of(core: &'a Core, gi: usize, env: &Envelope<'a>) -> Self {
        let method = env.method.map(|m| m.decode()).unwrap_or_default();
        let tool = if Method::from_name(&method).has_name() {
            env.name.map(|n| n.decode())
        } else {
            None
        };
        RequestFacts {
            server: core
                .shared
                .config
                .servers
                .get(gi)
                .map_or("", |g| g.name.as_str()),
            method,
            tool,
            uri: env.uri.map(|u| u.decode()),
        }
    }

    fn info(&self) -> ratelimit::RequestInfo<'_> {
        ratelimit::RequestInfo {
            server: self.server,
            method: &self.method,
            tool: self.tool.as_deref(),
            uri: self.uri.as_deref(),
        }
    }
}

/// The keyed hash of a caller identity (`session`, `client-ip`, `header:NAME`, `identity`) for
/// this request, or `None` when it has none; `global` has no caller and is the caller's to map.
fn caller_key(core: &Core, c: &ClientConn, ks: &ratelimit::KeySource) -> Option<u64> {
    let hasher = &core.shared.key_hasher;
    match ks {
        ratelimit::KeySource::Global => None,
        ratelimit::KeySource::Session => c.req.session_id().map(|s| hasher.hash_key(s)),
        ratelimit::KeySource::ClientIp => Some(route::ip_key(c.client_ip, |b| hasher.hash_key(b))),
        ratelimit::KeySource::Header(name) => {
            c.req.header(name.as_bytes()).map(|v| hasher.hash_key(v))
        }
        ratelimit::KeySource::Identity => (c.caller.key != 0).then_some(c.caller.key),
    }
}

/// The key of a `cluster` rule's caller: as [`caller_key`], hashed with the seed replicas share
/// (an identity by its principal, which every replica derives alike).
fn cluster_caller_key(
    hasher: &ratelimit::KeyHasher,
    c: &ClientConn,
    ks: &ratelimit::KeySource,
) -> Option<u64> {
    match ks {
        ratelimit::KeySource::Global => Some(0),
        ratelimit::KeySource::Session => c.req.session_id().map(|s| hasher.hash_key(s)),
        ratelimit::KeySource::ClientIp => Some(route::ip_key(c.client_ip, |b| hasher.hash_key(b))),
        ratelimit::KeySource::Header(name) => {
            c.req.header(name.as_bytes()).map(|v| hasher.hash_key(v))
        }
        ratelimit::KeySource::Identity => match c.caller.principal {
            Principal::ApiKey(digest) => Some(hasher.hash_key(&digest)),
            Principal::Jwt => Some(hasher.hash_key(c.caller.name.as_bytes()) ^ 1),
            Principal::None => None,
        },
    }
}

/// Applies the configured rate limits: `Some((rule, retry_after_ns))` (the rule's place in
/// `[[limits]]`) when a limit rejects the request; [`Stop::LeasePending`] when a `cluster` rule
/// waits for its first lease. Lock-free (the limits are atomics shared by every core).
fn check_limits(
    core: &Core,
    c: &ClientConn,
    facts: &RequestFacts<'_>,
) -> Result<Option<(usize, u64)>, Stop> {
    if core.shared.limits.is_none() && core.shared.cluster.is_none() {
        return Ok(None);
    }
    let now_ns = crate::balance::now_ns();
    let info = facts.info();
    let taken = match &core.shared.cluster {
        None => None,
        Some(cl) => {
            let hasher = cl.hasher();
            match cl.check(&info, |ks| cluster_caller_key(hasher, c, ks), now_ns) {
                crate::control::cluster::Verdict::Admit(t) => Some((cl, t)),
                crate::control::cluster::Verdict::Reject { rule, retry_ns } => {
                    return Ok(Some((rule, retry_ns)))
                }
                crate::control::cluster::Verdict::Pending => {
                    cl.nudge();
                    return Err(Stop::LeasePending);
                }
            }
        }
    };
    let Some(limits) = core.shared.limits.as_ref() else {
        return Ok(None);
    };
    let key_of = |ks: &ratelimit::KeySource| match ks {
        ratelimit::KeySource::Global => Some(0),
        ks => caller_key(core, c, ks),
    };
    match limits.check(&info, key_of, now_ns) {
        ratelimit::Decision::Reject {
            rule,
            retry_after_ns,
        } => {
            if let Some((cl, t)) = taken {
                cl.refund(&t);
            }
            let rule = core.shared.limit_index.get(rule).copied().unwrap_or(rule);
            Ok(Some((rule, retry_after_ns)))
        }
        _ => Ok(None),
    }
}

/// Concurrency keys of one request: which `[[concurrency]]` rules match and their keys.
#[derive(Default)]
pub(crate) struct ConcKeys {
    keys: [(usize, u64); MAX_CONCURRENCY_RULES],
    n: usize,
    /// Rules counted per backend (applied once the backend is chosen).
    pub backend_rules: [bool; MAX_CONCURRENCY_RULES],
}

/// Finds the concurrency rules that match a request and the key each counts it under.
fn concurrency_keys(core: &Core, c: &ClientConn, facts: &RequestFacts<'_>, out: &mut ConcKeys) {
    let rules = &core.shared.config.concurrency;
    if rules.is_empty() {
        return;
    }
    let info = facts.info();
    let hasher = &core.shared.key_hasher;
    for (ri, rule) in rules.iter().enumerate().take(MAX_CONCURRENCY_RULES) {
        if !rule.filter.matches(&info) {
            continue;
        }
        let key = match &rule.per {
            ConcurrencyPer::Backend => {
                out.backend_rules[ri] = true;
                continue;
            }
            ConcurrencyPer::Global => 1,
            ConcurrencyPer::Tool => hasher.hash_key(info.tool.unwrap_or("").as_bytes()),
            // A caller without the key (no such header or session) shares one count.
            ConcurrencyPer::Caller => caller_key(core, c, &rule.filter.key).unwrap_or(1),
        };
        if let Some(slot) = out.keys.get_mut(out.n) {
            *slot = (ri, key);
            out.n += 1;
        }
    }
}

/// The concurrency permits one request holds (released when dropped).
pub(crate) type Permits = [Option<ratelimit::OwnedPermit>; MAX_CONCURRENCY_RULES];

/// 429 for a request over the concurrency rule `rule`.
pub(crate) fn concurrency_refusal(rule: usize) -> Refusal {
    Refusal::new(429, -32000, "concurrency limit exceeded")
        .with_headers("retry-after: 1\r\n".to_owned())
        .with_data(format!("{{\"concurrency\":{rule}}}"))
}

/// Takes the permits of every matching rule that is not per backend, waiting in a rule's
/// queue where it has one.
pub(crate) async fn acquire_permits(
    core: &Core,
    conc: &ConcKeys,
    permits: &mut Permits,
) -> Result<(), Refusal> {
    for &(ri, key) in conc.keys.iter().take(conc.n) {
        let (Some(limit), Some(rule), Some(slot)) = (
            core.shared.concurrency.get(ri),
            core.shared.config.concurrency.get(ri),
            permits.get_mut(ri),
        ) else {
            continue;
        };
        match acquire_permit(limit, key, rule).await {
            Some(p) => *slot = Some(p),
            None => return Err(concurrency_refusal(ri)),
        }
    }
    Ok(())
}

/// Takes the per-backend permits for backend `bi` of group `gi`. A session's request waits in
/// the rule's queue; a new one (`wait` false) does not, so that another backend can be tried.
/// `Err(rule)`: the rule whose backend is full.
pub(crate) async fn acquire_backend_permits(
    core: &Core,
    conc: &ConcKeys,
    gi: usize,
    bi: usize,
    wait: bool,
    permits: &mut Permits,
) -> Result<(), usize> {
    for (ri, &on) in conc.backend_rules.iter().enumerate() {
        let (true, Some(limit), Some(rule), Some(slot)) = (
            on,
            core.shared.concurrency.get(ri),
            core.shared.config.concurrency.get(ri),
            permits.get_mut(ri),
        ) else {
            continue;
        };
        // Hashed: the limit table reserves small raw values (0 marks an empty slot).
        let key = core
            .shared
            .key_hasher
            .hash_key(&(((gi as u64) << 32) | bi as u64).to_le_bytes());
        let permit = if wait {
            acquire_permit(limit, key, rule).await
        } else {
            limit.try_acquire_owned(key)
        };
        match permit {
            Some(p) => *slot = Some(p),
            None => return Err(ri),
        }
    }
    Ok(())
}

/// A permit now, or after waiting in the rule's bounded queue until its timeout. The queue is
/// first in, first out across cores: a released permit is handed to the first caller in line
/// and wakes its task (on whichever core it waits), so nothing polls. A caller that times out
/// leaves the line; a permit handed to it at that moment goes on to the next.
async fn acquire_permit(
    limit: &Arc<ratelimit::ConcurrencyLimit>,
    key: u64,
    rule: &ConcurrencyRule,
) -> Option<ratelimit::OwnedPermit> {
    if let Some(p) = limit.try_acquire_owned(key) {
        return Some(p);
    }
    if rule.queue == 0 {
        return None;
    }
    let wait = limit.acquire_owned(key)?;
    monoio::time::timeout(rule.queue_timeout, wait).await.ok()
}
