//! `[[servers]]`: the server groups, each an MCP server at its own path with its backends, its
//! balancing, failover, health checks, allowed origins and auth. Names and paths are unique.

use std::collections::HashSet;

use super::backends;
use super::virtual_server::RawVirtual;
use crate::config::fields::TableCheck;
use crate::config::raw::RawServer;
use crate::config::types::{BackendEra, Balance, HashKey, ServerGroup, SessionFailover};

/// Validates every group, in order.
pub(super) fn validate(raw: Vec<RawServer>, errs: &mut Vec<String>) -> Vec<ServerGroup> {
    if raw.is_empty() {
        errs.push("servers: at least one [[servers]] group is required".to_string());
    }
    let mut taken = Taken::default();
    let mut members = Vec::new();
    let mut groups: Vec<ServerGroup> = raw
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            members.push(s.members.take().map(|list| RawVirtual {
                members: list,
                prefix_mode: s.prefix_mode.take(),
                separator: s.separator.take(),
                list_cache_ttl: s.list_cache_ttl.take(),
            }));
            let is_virtual = members.last().is_some_and(Option::is_some);
            group(s, is_virtual, &format!("servers[{i}]"), &mut taken, errs)
        })
        .collect();
    // Members name other groups, earlier or later in the file: resolved once all are read.
    let virtuals: Vec<bool> = members.iter().map(Option::is_some).collect();
    for (i, m) in members.into_iter().enumerate() {
        let Some(raw) = m else {
            continue;
        };
        let v = super::virtual_server::validate(
            raw,
            i,
            &groups,
            &virtuals,
            &format!("servers[{i}]"),
            errs,
        );
        if let Some(g) = groups.get_mut(i) {
            g.virtual_server = v.map(std::sync::Arc::new);
        }
    }
    groups
}

/// Names and paths used by the groups validated so far.
#[derive(Default)]
struct Taken {
    names: HashSet<String>,
    paths: HashSet<String>,
}

fn group(
    s: RawServer,
    is_virtual: bool,
    key: &str,
    taken: &mut Taken,
    errs: &mut Vec<String>,
) -> ServerGroup {
    let mut t = TableCheck::new(key, errs);
    let name = s.name.unwrap_or_else(|| {
        t.problem("name", "missing");
        String::new()
    });
    if !name.is_empty() && !taken.names.insert(name.clone()) {
        t.problem("name", format!("`{name}` is used by another group"));
    }
    let path = s.path.unwrap_or_else(|| "/mcp".to_string());
    if !path.starts_with('/') || path.contains('?') || path.contains(char::is_whitespace) {
        t.problem(
            "path",
            format!("`{path}` must start with / and have no query or spaces"),
        );
    } else if !taken.paths.insert(path.clone()) {
        t.problem("path", format!("`{path}` is used by another group"));
    }
    let backends = if is_virtual {
        if !s.backends.is_empty() {
            t.problem(
                "backends",
                "a virtual server (with `members`) has no backends of its own",
            );
        }
        Vec::new()
    } else {
        for k in [
            ("prefix_mode", s.prefix_mode.is_some()),
            ("separator", s.separator.is_some()),
            ("list_cache_ttl", s.list_cache_ttl.is_some()),
        ]
        .iter()
        .filter(|k| k.1)
        {
            t.problem(
                k.0,
                "only used by a virtual server (a group with `members`)",
            );
        }
        backends::validate(s.backends, &mut t)
    };
    let balance = balance(s.balance.as_deref(), s.hash_key.as_deref(), &mut t);
    let hash_bound = match s.hash_bound {
        None => 1.25,
        Some(c) if c.is_finite() && c >= 1.0 => c,
        Some(c) => {
            t.problem("hash_bound", format!("{c} must be at least 1.0"));
            1.25
        }
    };
    let max_ejection_percent = match s.max_ejection_percent {
        None => 50,
        Some(p) if (0..=100).contains(&p) => p as u8,
        Some(p) => {
            t.problem(
                "max_ejection_percent",
                format!("{p} is out of range (0..=100)"),
            );
            50
        }
    };
    let session_failover = match s.session_failover.as_deref() {
        None | Some("404") => SessionFailover::NotFound,
        Some("reinitialize") => SessionFailover::Reinitialize,
        Some(v) => {
            t.problem(
                "session_failover",
                format!("`{v}` (use \"404\" or \"reinitialize\")"),
            );
            SessionFailover::NotFound
        }
    };
    let era = match s.era.as_deref() {
        None | Some("auto") => BackendEra::Auto,
        Some("2025") => BackendEra::Sessions,
        Some("2026") => BackendEra::Stateless,
        Some(v) => {
            t.problem("era", format!("`{v}` (use \"auto\", \"2025\" or \"2026\")"));
            BackendEra::Auto
        }
    };
    let health = super::health::validate(s.health, key, t.errs());
    let auth = crate::auth::validate(s.auth, key, t.errs());
    if is_virtual && s.cache.is_some() {
        t.problem(
            "cache",
            "not available on a virtual server (its merged lists follow `list_cache_ttl`)",
        );
    }
    let cache = s
        .cache
        .filter(|_| !is_virtual)
        .map(|c| std::sync::Arc::new(super::cache::validate(c, key, t.errs())));
    let allowed_origins = s.allowed_origins.map(|v| {
        v.into_iter()
            .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
            .collect()
    });
    let policy_default_allow = match s.policy_default.as_deref() {
        None | Some("deny") => false,
        Some("allow") => true,
        Some(v) => {
            t.problem(
                "policy_default",
                format!("`{v}` (use \"deny\" or \"allow\")"),
            );
            false
        }
    };
    let confirm_timeout = t.duration(
        "confirm_timeout",
        s.confirm_timeout.as_deref(),
        crate::policy::confirm::DEFAULT_TIMEOUT,
    );
    if is_virtual && s.legacy_sse == Some(true) {
        t.problem("legacy_sse", "not available on a virtual server");
    }
    if is_virtual && s.confirm_destructive == Some(true) {
        t.problem(
            "confirm_destructive",
            "not available on a virtual server (set it on its members' groups)",
        );
    }
    ServerGroup {
        virtual_server: None,
        cache,
        legacy_sse: s.legacy_sse.unwrap_or(false),
        era,
        era_bridge: s.era_bridge.unwrap_or(true),
        // Filled in by `[[policies]]` (validated after the groups).
        policy: Default::default(),
        policy_default_allow,
        confirm_timeout,
        confirm_destructive: s.confirm_destructive.unwrap_or(false),
        allowed_origins,
        auth,
        name,
        path,
        backends,
        balance,
        hash_bound,
        max_ejection_percent,
        health,
        session_failover,
    }
}

/// `balance` and `hash_key` (the key only with `balance = "hash"`).
fn balance(balance: Option<&str>, hash_key: Option<&str>, t: &mut TableCheck<'_>) -> Balance {
    match (balance, hash_key) {
        (None | Some("round-robin"), None) => Balance::RoundRobin,
        (Some("least-request"), None) => Balance::LeastRequest,
        (Some("hash"), k) => match k.unwrap_or("tool") {
            "tool" => Balance::Hash(HashKey::Tool),
            "client-ip" => Balance::Hash(HashKey::ClientIp),
            "session" => Balance::Hash(HashKey::Session),
            k => match k.strip_prefix("header:") {
                Some(h) if !h.is_empty() => Balance::Hash(HashKey::Header(h.to_ascii_lowercase())),
                _ => {
                    t.problem(
                        "hash_key",
                        format!(
                            "`{k}` (use \"session\", \"tool\", \"client-ip\" or \"header:NAME\")"
                        ),
                    );
                    Balance::RoundRobin
                }
            },
        },
        (Some(b), None) => {
            t.problem(
                "balance",
                format!("`{b}` (use \"round-robin\", \"least-request\" or \"hash\")"),
            );
            Balance::RoundRobin
        }
        (_, Some(_)) => {
            t.problem("hash_key", "only used with balance = \"hash\"");
            Balance::RoundRobin
        }
    }
}
