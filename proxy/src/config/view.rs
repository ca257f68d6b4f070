//! The effective configuration as JSON, for the admin port's `GET /config`, with every secret
//! redacted: the session key, the admin token, API key digests, credentials and queries in
//! JWKS URLs, upstream credentials and stdio backends' environment values.
//!
//! The view is written out field by field rather than derived, so that a secret added to the
//! config later cannot appear here by accident: a field shows only once it is listed.

use serde_json::{json, Value};

use crate::auth::{JwksSource, SecretSource, UpstreamCredential};
use crate::config::{
    BackendEra, Balance, ConcurrencyPer, Config, ForwardedHeader, ForwardedMode, HashKey,
    LimitScope, OnUnavailable, SessionFailover,
};

/// What a redacted secret looks like.
pub const REDACTED: &str = "<redacted>";

fn secs(d: std::time::Duration) -> Value {
    json!(d.as_secs_f64())
}

fn key_source(k: &ratelimit::KeySource) -> String {
    match k {
        ratelimit::KeySource::Global => "global".into(),
        ratelimit::KeySource::Session => "session".into(),
        ratelimit::KeySource::ClientIp => "client-ip".into(),
        ratelimit::KeySource::Identity => "identity".into(),
        ratelimit::KeySource::Header(h) => format!("header:{h}"),
    }
}

fn rule_filter(r: &ratelimit::Rule) -> Value {
    json!({
        "server": r.server, "method": r.method,
        "tool": r.tool.as_ref().map(|g| g.as_str()),
        "resource_prefix": r.resource_prefix, "key": key_source(&r.key),
    })
}

fn auth_json(a: &crate::auth::AuthConfig) -> Value {
    let jwt = a.jwt.as_ref().map(|v| {
        let (file, url) = match &v.source {
            JwksSource::File(p) => (Some(p.clone()), None),
            JwksSource::Url(u) => (None, Some(crate::auth::redact_url(u))),
        };
        json!({
            "issuer": v.issuer, "audience": v.audience,
            "algorithms": v.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "jwks_file": file, "jwks_url": url,
            "jwks_ca": v.jwks_ca.as_ref().map(|(p, _)| p.clone()),
            "leeway_s": secs(v.leeway), "refresh_s": secs(v.refresh),
            "min_refresh_s": secs(v.min_refresh),
            "identity_claim": v.identity_claim, "required_scopes": v.required_scopes,
            "key_ids_in_use": crate::auth::key_ids(v),
            "failure_budget": {
                "enabled": v.budget.settings.enabled, "burst": v.budget.settings.burst,
                "rate": v.budget.settings.rate, "addresses": v.budget.settings.addresses,
            },
        })
    });
    let upstream = match (&a.upstream, &a.upstream_source) {
        (UpstreamCredential::Forward, _) => json!("forward"),
        (UpstreamCredential::Strip, _) => json!("strip"),
        (UpstreamCredential::Inject(_), Some(SecretSource::Env(var))) => {
            json!({"inject": {"env": var, "value": REDACTED}})
        }
        (UpstreamCredential::Inject(_), Some(SecretSource::File(p))) => {
            json!({"inject": {"file": p, "value": REDACTED}})
        }
        (UpstreamCredential::Inject(_), None) => json!({"inject": {"value": REDACTED}}),
    };
    json!({
        "required": a.required(),
        "api_keys": a.api_keys.identities.iter().map(|id| json!({ "sha256": REDACTED, "identity": id })).collect::<Vec<_>>(),
        "jwt": jwt,
        "resource_metadata": a.metadata.as_ref().and_then(|m| serde_json::from_str::<Value>(&m.document).ok()),
        "resource_metadata_url": a.metadata.as_ref().map(|m| m.url.clone()),
        "resource_metadata_passthrough": a.metadata_passthrough,
        "upstream_authorization": upstream,
    })
}

/// The configuration as JSON, secrets redacted.
pub fn redacted_json(cfg: &Config) -> Value {
    let p = &cfg.proxy;
    let servers: Vec<Value> = cfg
        .servers
        .iter()
        .map(|g| {
            let balance = match &g.balance {
                Balance::RoundRobin => json!({"kind": "round-robin"}),
                Balance::LeastRequest => json!({"kind": "least-request"}),
                Balance::Hash(k) => json!({"kind": "hash", "key": match k {
                    HashKey::Tool => "tool".to_string(),
                    HashKey::ClientIp => "client-ip".to_string(),
                    HashKey::Session => "session".to_string(),
                    HashKey::Header(h) => format!("header:{h}"),
                }}),
            };
            let backends: Vec<Value> = g
                .backends
                .iter()
                .map(|b| match (&b.stdio, &b.legacy_sse) {
                    (Some(s), _) => json!({
                        "name": b.name, "weight": b.weight, "command": s.command,
                        "mode": format!("{:?}", s.mode),
                        "env": s.env.iter().map(|(k, _)| (k.clone(), json!(REDACTED))).collect::<serde_json::Map<_, _>>(),
                        "cwd": s.cwd, "min": s.min, "max": s.max,
                        "max_line_bytes": s.max_line_bytes,
                    }),
                    (None, Some(sse)) => json!({"name": b.name, "weight": b.weight, "sse": crate::auth::redact_url(sse)}),
                    (None, None) => json!({"name": b.name, "weight": b.weight, "url": crate::auth::redact_url(&b.url)}),
                })
                .collect();
            json!({
                "name": g.name, "path": g.path, "backends": backends, "balance": balance,
                "hash_bound": g.hash_bound, "max_ejection_percent": g.max_ejection_percent,
                "session_failover": match g.session_failover {
                    SessionFailover::NotFound => "404",
                    SessionFailover::Reinitialize => "reinitialize",
                },
                "health": g.health.as_ref().map(|h| json!({
                    "interval_s": secs(h.interval), "timeout_s": secs(h.timeout),
                    "healthy_threshold": h.healthy_threshold,
                    "unhealthy_threshold": h.unhealthy_threshold, "method": h.method,
                })),
                "allowed_origins": g.allowed_origins, "legacy_sse": g.legacy_sse,
                "era": match g.era {
                    BackendEra::Auto => "auto",
                    BackendEra::Sessions => "2025",
                    BackendEra::Stateless => "2026",
                },
                "era_bridge": g.era_bridge,
                "policy_default": if g.policy_default_allow { "allow" } else { "deny" },
                "confirm_timeout_s": g.confirm_timeout.as_secs_f64(),
                "confirm_destructive": g.confirm_destructive,
                "policies": g.policy.rules().iter().map(|r| r.index).collect::<Vec<_>>(),
                "auth": auth_json(&g.auth),
                "members": g.virtual_server.as_deref().map(virtual_json),
                "cache": g.cache.as_deref().map(cache_json),
            })
        })
        .collect();
    json!({
        "proxy": {
            "listen": p.listen.to_string(), "workers": p.workers,
            "session_keys": p.session_keys.iter().map(|_| REDACTED).collect::<Vec<_>>(),
            "session_keys_file": p.session_keys_file.as_ref().map(|f| f.display().to_string()),
            "watch_interval_s": p.watch_interval.map(secs),
            "max_body_bytes": p.max_body_bytes, "max_header_bytes": p.max_header_bytes,
            "max_headers": p.max_headers, "max_sse_event_bytes": p.max_sse_event_bytes,
            "header_timeout_s": secs(p.header_timeout),
            "body_timeout_s": secs(p.body_timeout),
            "forwarded": match p.client_address.forwarded {
                ForwardedMode::Append => "append",
                ForwardedMode::Replace => "replace",
                ForwardedMode::Off => "off",
            },
            "forwarded_header": match p.client_address.header {
                ForwardedHeader::XForwardedFor => "x-forwarded-for",
                ForwardedHeader::Forwarded => "forwarded",
            },
            "trusted_proxies": p.client_address.trusted.0.iter().map(|n| n.to_string())
                .collect::<Vec<_>>(),
            "proxy_protocol": p.client_address.proxy_protocol,
            "client_idle_timeout_s": secs(p.client_idle_timeout),
            "linger_time_s": secs(p.linger_time), "linger_timeout_s": secs(p.linger_timeout),
            "connect_timeout_s": secs(p.connect_timeout),
            "upstream_timeout_s": secs(p.upstream_timeout),
            "upstream_idle_timeout_s": secs(p.upstream_idle_timeout),
            "sse_head_waits": p.sse_head_waits,
            "upstream_max_idle": p.upstream_max_idle, "limit_max_keys": p.limit_max_keys,
            "access_log": p.access_log, "shutdown_timeout_s": secs(p.shutdown_timeout),
            "max_connections": p.max_connections,
            "max_connections_per_ip": p.max_connections_per_ip, "stats": p.stats,
        },
        "admin": {
            "listen": cfg.admin_listen.map(|a| a.to_string()),
            "token": cfg.admin_token.as_ref().map(|_| REDACTED),
        },
        "servers": servers,
        "audit": cfg.audit.as_ref().map(|a| json!({
            "log": a.target,
            "arguments": format!("{:?}", a.arguments).to_ascii_lowercase(),
        })),
        "limits": cfg.limits.iter().zip(&cfg.limit_scopes).map(|(r, scope)| {
            let mut v = rule_filter(r);
            v["rate"] = json!(r.rate);
            v["burst"] = json!(r.burst);
            match scope {
                LimitScope::Local => v["scope"] = json!("local"),
                LimitScope::Cluster(on) => {
                    v["scope"] = json!("cluster");
                    v["on_unavailable"] = json!(on_unavailable(*on));
                }
            }
            v
        }).collect::<Vec<_>>(),
        "cluster": cfg.cluster.as_ref().map(|c| json!({
            "redis": crate::config::redact_url(&c.redis),
            "password": c.password.as_ref().map(|_| REDACTED),
            "prefix": c.prefix,
            "on_unavailable": on_unavailable(c.on_unavailable),
            "max_keys": c.max_keys,
            "lease_ttl_s": secs(c.lease_ttl),
            "timeout_s": secs(c.timeout),
        })),
        "concurrency": cfg.concurrency.iter().map(|c| {
            let mut v = rule_filter(&c.filter);
            v["per"] = json!(match c.per {
                ConcurrencyPer::Backend => "backend",
                ConcurrencyPer::Tool => "tool",
                ConcurrencyPer::Caller => "caller",
                ConcurrencyPer::Global => "global",
            });
            v["max"] = json!(c.max);
            v["queue"] = json!(c.queue);
            v["queue_timeout_s"] = secs(c.queue_timeout);
            v
        }).collect::<Vec<_>>(),
    })
}

fn on_unavailable(o: OnUnavailable) -> &'static str {
    match o {
        OnUnavailable::Local => "local",
        OnUnavailable::Deny => "deny",
    }
}

/// A group's response cache, as configured.
fn cache_json(c: &crate::cache::CacheConfig) -> Value {
    let scope = |s| match s {
        crate::cache::Scope::Public => "public",
        crate::cache::Scope::Private => "private",
    };
    json!({
        "max_bytes": c.max_bytes,
        "default_ttl_s": c.default_ttl.as_secs_f64(),
        "default_scope": scope(c.default_scope),
        "sessions": if c.share_sessions { "share" } else { "public-only" },
        "tools": c.tools.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        "tool_ttl_s": c.tool_ttl.as_secs_f64(),
        "tool_scope": scope(c.tool_scope),
    })
}

/// A virtual server's members and naming, as configured.
fn virtual_json(v: &crate::config::VirtualServer) -> Value {
    let globs = |f: &crate::config::NameFilter| {
        json!({
            "allow": f.allow.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "deny": f.deny.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
        })
    };
    json!({
        "prefix_mode": format!("{:?}", v.prefix_mode).to_ascii_lowercase(),
        "separator": v.separator,
        "list_cache_ttl_s": v.list_cache_ttl.as_secs_f64(),
        "members": v.members.iter().map(|m| json!({
            "server": m.server, "prefix": m.prefix,
            "tools": globs(&m.tools), "prompts": globs(&m.prompts),
            "resources": globs(&m.resources),
            "rename": m.renames.iter().map(|(f, t)| (f.clone(), json!(t))).collect::<serde_json::Map<_, _>>(),
            "overrides": m.overrides.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
            "failure": if m.fail_closed { "fail_closed" } else { "fail_open" },
            "timeout_s": m.timeout.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}
