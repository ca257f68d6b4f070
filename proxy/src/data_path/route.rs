//! Routing decisions, as plain functions: which server group a path names, where a sealed
//! session lives (or whether it must fail over), and the key a hashing group balances on. No
//! I/O: the data path calls these and then moves bytes.

use std::net::{IpAddr, SocketAddr};

use crate::auth::MetadataAnswer;
use crate::balance::GroupRuntime;
use crate::config::{Balance, HashKey, ServerGroup, SessionFailover};
use crate::data_path::request::{HttpMethod, Request};
use crate::runtime::shared::Shared;
use crate::session::{Opened, Owner};

/// What a request's path names.
pub(crate) enum Target<'a> {
    /// A server group (index into the configuration's servers).
    Group(usize),
    /// `{path}/sse` or `{path}/messages` of a group with `legacy_sse = true`: the group's
    /// 2024-11-05 transport bridge.
    LegacyFront(usize, SocketAddr),
    /// OAuth protected-resource metadata (RFC 9728), answered or relayed; `None`: no group
    /// has any.
    Metadata(Option<MetadataAnswer<'a>>),
    /// Nothing is served here.
    NotFound,
}

/// What `path` names, for a request with this method.
pub(crate) fn target<'a>(shared: &'a Shared, path: &[u8], method: HttpMethod) -> Target<'a> {
    let servers = &shared.config.servers;
    if let Some(gi) = servers.iter().position(|g| g.path.as_bytes() == path) {
        return Target::Group(gi);
    }
    let legacy = shared.legacy_fronts.iter().enumerate().find_map(|(i, f)| {
        let f = (*f)?;
        let rest = path.strip_prefix(servers.get(i)?.path.as_bytes())?;
        (rest == b"/sse" || rest == b"/messages").then_some((i, f))
    });
    if let Some((gi, front)) = legacy {
        return Target::LegacyFront(gi, front);
    }
    if method == HttpMethod::Get && crate::auth::is_metadata_path(path) {
        return Target::Metadata(crate::auth::metadata_for(servers, path));
    }
    Target::NotFound
}

/// Where a request with a session id goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SessionRoute<'s> {
    /// The session lives on backend `bi`; `sid` is the backend's own session id.
    Pinned { bi: usize, sid: &'s [u8] },
    /// An earlier failover moved the session to backend `bi`, where its id is `sid`.
    Moved { bi: usize, sid: Vec<u8> },
    /// The session's backend cannot serve it and the group fails sessions over: replay the
    /// client's `initialize` on another backend first.
    FailOver { from: usize },
    /// The id does not open, names no backend of this group, or its backend is unavailable
    /// and the group does not fail sessions over: 404, as from a server that does not know
    /// the session (the client re-initializes). `unavailable`: the backend that was.
    NotFound { unavailable: Option<usize> },
}

/// A session id that is not the caller's, in a group that binds sessions to callers: answered
/// 404 like an unknown session, so an id says nothing to anyone but its owner.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotOwner {
    /// The id carries no owner (sealed before sessions were bound to callers, or before a
    /// reload added authentication to the group); else it is another caller's.
    pub unowned: bool,
}

/// Whether `caller` (its owner digest; `None` without one) may use the session `opened` in
/// `group`. Groups without authentication accept any id that opens, as before; groups with it
/// only the ids sealed with the caller's owner.
pub(crate) fn check_owner(
    group: &ServerGroup,
    opened: &Opened<'_>,
    caller: Option<&Owner>,
) -> Result<(), NotOwner> {
    if !group.auth.required() {
        return Ok(());
    }
    match (&opened.owner, caller) {
        (Some(owner), Some(me)) if owner.matches(me) => Ok(()),
        (owner, _) => Err(NotOwner {
            unowned: owner.is_none(),
        }),
    }
}

/// Whether requests of a session living on backend `i` may go there: it is eligible, or
/// draining with its deadline still ahead.
pub(crate) fn session_backend_usable(rt: &GroupRuntime, i: usize, now: u64) -> bool {
    rt.health.is_eligible(i, now)
        || (matches!(rt.health.state(i, now), Some(lb::HealthState::Draining))
            && !rt.drain_expired(i, now))
}

/// Decides where a request with the sealed id `sealed` goes; `opened`: what the id holds
/// (`None` when it did not open), its owner already checked ([`check_owner`]).
pub(crate) fn session_route<'s>(
    shared: &Shared,
    gi: usize,
    sealed: &[u8],
    opened: Option<Opened<'s>>,
    now: u64,
) -> SessionRoute<'s> {
    let (Some(group), Some(rt)) = (shared.config.servers.get(gi), shared.groups.get(gi)) else {
        return SessionRoute::NotFound { unavailable: None };
    };
    let reinit = group.session_failover == SessionFailover::Reinitialize;
    let Some(Opened { tag, sid, .. }) = opened else {
        return SessionRoute::NotFound { unavailable: None };
    };
    let Some(bi) = group.backends.iter().position(|b| b.tag == tag) else {
        return SessionRoute::NotFound { unavailable: None };
    };
    if reinit {
        // A session already moved by an earlier failover goes where it was moved (moves are
        // remembered by backend tag, so they survive a reload).
        if let Some((tag, moved_sid)) = shared.failover.remapped(sealed) {
            let to = group.backends.iter().position(|b| b.tag == tag);
            return match to.filter(|&to| session_backend_usable(rt, to, now)) {
                Some(to) => SessionRoute::Moved {
                    bi: to,
                    sid: moved_sid,
                },
                None => SessionRoute::FailOver { from: bi },
            };
        }
    }
    if session_backend_usable(rt, bi, now) {
        SessionRoute::Pinned { bi, sid }
    } else if reinit {
        SessionRoute::FailOver { from: bi }
    } else {
        SessionRoute::NotFound {
            unavailable: Some(bi),
        }
    }
}

/// The key `balance = "hash"` hashes for this request, if the group hashes and the request
/// has one. `tool`: the name from the JSON-RPC body, when it was read.
pub(crate) fn balance_key(
    group: &ServerGroup,
    req: &Request,
    client_ip: IpAddr,
    tool: Option<&[u8]>,
) -> Option<u64> {
    let Balance::Hash(key) = &group.balance else {
        return None;
    };
    match key {
        HashKey::Tool => tool.or_else(|| req.mcp_name()).map(lb::hash_key),
        HashKey::Session => req.session_id().map(lb::hash_key),
        HashKey::ClientIp => Some(ip_key(client_ip, lb::hash_key)),
        HashKey::Header(name) => req.header(name.as_bytes()).map(lb::hash_key),
    }
}

/// A client address hashed with `hash` (v4 and v6 by their octets).
pub(crate) fn ip_key(ip: IpAddr, hash: impl Fn(&[u8]) -> u64) -> u64 {
    match ip {
        std::net::IpAddr::V4(a) => hash(&a.octets()),
        std::net::IpAddr::V6(a) => hash(&a.octets()),
    }
}
