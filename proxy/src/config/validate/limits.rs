//! `[[limits]]`: rate limit rules (token buckets per caller key), checked in order.

use super::server_must_exist;
use crate::config::fields::TableCheck;
use crate::config::raw::RawLimit;
use crate::config::types::{
    ClusterConfig, LimitScope, OnUnavailable, ServerGroup, MAX_CLUSTER_LIMITS,
};

/// Validates the rate limit rules; `servers` are the validated groups a rule may name,
/// `cluster` the store `scope = "cluster"` rules need. Returns the rules and their scopes.
pub(super) fn validate(
    raw: Vec<RawLimit>,
    servers: &[ServerGroup],
    cluster: Option<&ClusterConfig>,
    errs: &mut Vec<String>,
) -> (Vec<ratelimit::Rule>, Vec<LimitScope>) {
    let mut limits = Vec::new();
    let mut scopes = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let mut t = TableCheck::new(format!("limits[{i}]"), errs);
        let on_unavailable = match l.on_unavailable.as_deref() {
            None => cluster.map_or(OnUnavailable::Local, |c| c.on_unavailable),
            Some(s) => super::cluster::on_unavailable(s).unwrap_or_else(|e| {
                t.problem("on_unavailable", e);
                OnUnavailable::Local
            }),
        };
        let scope = match l.scope.as_deref() {
            None | Some("local") => {
                if l.on_unavailable.is_some() {
                    t.problem("on_unavailable", "only for scope = \"cluster\"");
                }
                LimitScope::Local
            }
            Some("cluster") => {
                if cluster.is_none() {
                    t.problem(
                        "scope",
                        "\"cluster\" needs a [cluster] table with redis = \"redis://HOST:PORT\"",
                    );
                }
                LimitScope::Cluster(on_unavailable)
            }
            Some(s) => {
                t.problem("scope", format!("{s:?}: must be \"local\" or \"cluster\""));
                LimitScope::Local
            }
        };
        if matches!(scope, LimitScope::Cluster(_))
            && scopes
                .iter()
                .filter(|s| matches!(s, LimitScope::Cluster(_)))
                .count()
                == MAX_CLUSTER_LIMITS
        {
            t.problem(
                "scope",
                format!("at most {MAX_CLUSTER_LIMITS} rules may be \"cluster\""),
            );
        }
        scopes.push(scope);
        server_must_exist(&mut t, l.server.as_deref(), servers);
        let source = match l
            .key
            .as_deref()
            .unwrap_or("global")
            .parse::<ratelimit::KeySource>()
        {
            Ok(k) => k,
            Err(e) => {
                t.problem("key", e);
                ratelimit::KeySource::Global
            }
        };
        let rate = match l.rate {
            Some(r) if r.is_finite() && r > 0.0 => r,
            Some(r) => {
                t.problem(
                    "rate",
                    format!("{r} must be a number of requests per second above 0"),
                );
                1.0
            }
            None => {
                t.problem("rate", "missing (requests per second)");
                1.0
            }
        };
        let burst = match l.burst {
            None => rate.ceil().max(1.0) as u32,
            Some(b) if (1..=1_000_000).contains(&b) => b as u32,
            Some(b) => {
                t.problem("burst", format!("{b} is out of range (1..=1000000)"));
                1
            }
        };
        limits.push(ratelimit::Rule {
            server: l.server,
            method: l.method,
            tool: l.tool.map(ratelimit::Glob::new),
            resource_prefix: l.resource_prefix,
            key: source,
            rate,
            burst,
        });
    }
    (limits, scopes)
}
