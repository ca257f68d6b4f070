//! `[cluster]`: the Redis that `scope = "cluster"` rate limits share, its password (from the
//! environment or a file, never required in the file itself) and the lease settings.

use std::time::Duration;

use crate::config::fields::TableCheck;
use crate::config::raw::RawCluster;
use crate::config::types::{ClusterConfig, OnUnavailable};

/// The spelling of `on_unavailable`.
pub(super) fn on_unavailable(s: &str) -> Result<OnUnavailable, String> {
    match s {
        "local" => Ok(OnUnavailable::Local),
        "deny" => Ok(OnUnavailable::Deny),
        _ => Err(format!("{s:?}: must be \"local\" or \"deny\"")),
    }
}

/// Validates `[cluster]`.
pub(super) fn validate(c: RawCluster, errs: &mut Vec<String>) -> ClusterConfig {
    let mut t = TableCheck::new("cluster", errs);
    let redis = match c.redis {
        None => {
            t.problem("redis", "missing (e.g. \"redis://127.0.0.1:6379\")");
            String::new()
        }
        Some(url) => {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                t.problem(
                    "redis",
                    format!(
                        "{}: must start with redis:// or rediss:// (TLS)",
                        crate::config::redact_url(&url)
                    ),
                );
            } else if let Err(e) = redis::parse_redis_url(&url)
                .ok_or("not a URL")
                .and_then(|u| {
                    redis::IntoConnectionInfo::into_connection_info(u)
                        .map_err(|_| "not a Redis URL")
                })
            {
                t.problem("redis", format!("{}: {e}", crate::config::redact_url(&url)));
            }
            url
        }
    };
    let password = match (c.password_env, c.password_file) {
        (Some(_), Some(_)) => {
            t.problem(
                "password_env",
                "set password_env or password_file, not both",
            );
            None
        }
        (Some(var), None) => match std::env::var(&var) {
            Ok(p) if !p.is_empty() => Some(p),
            _ => {
                t.problem(
                    "password_env",
                    format!("the environment variable {var} is not set (or empty)"),
                );
                None
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(p) if !p.trim().is_empty() => Some(p.trim().to_string()),
            Ok(_) => {
                t.problem("password_file", format!("{path}: empty"));
                None
            }
            Err(e) => {
                t.problem("password_file", format!("{path}: cannot read it: {e}"));
                None
            }
        },
        (None, None) => None,
    };
    let prefix = c.prefix.unwrap_or_else(|| "mcplb".to_string());
    if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
        t.problem(
            "prefix",
            "must be printable ASCII without spaces, not empty",
        );
    }
    let on_unavailable = match c.on_unavailable.as_deref() {
        None => OnUnavailable::Local,
        Some(s) => on_unavailable(s).unwrap_or_else(|e| {
            t.problem("on_unavailable", e);
            OnUnavailable::Local
        }),
    };
    let lease_ttl = t.duration("lease_ttl", c.lease_ttl.as_deref(), Duration::from_secs(1));
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&lease_ttl) {
        t.problem("lease_ttl", "must be between 100ms and 60s");
    }
    let timeout = t.duration("timeout", c.timeout.as_deref(), Duration::from_millis(500));
    if !(Duration::from_millis(10)..=Duration::from_secs(30)).contains(&timeout) {
        t.problem("timeout", "must be between 10ms and 30s");
    }
    ClusterConfig {
        redis,
        password,
        prefix,
        on_unavailable,
        max_keys: t.int("max_keys", c.max_keys, 4096, 8..=1 << 20),
        lease_ttl,
        timeout,
    }
}
