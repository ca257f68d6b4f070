//! `[[limits]]`: rate limit rules (token buckets per caller key), checked in order.

use super::server_must_exist;
use crate::config::fields::TableCheck;
use crate::config::raw::RawLimit;
use crate::config::types::ServerGroup;

/// Validates the rate limit rules; `servers` are the validated groups a rule may name.
pub(super) fn validate(
    raw: Vec<RawLimit>,
    servers: &[ServerGroup],
    errs: &mut Vec<String>,
) -> Vec<ratelimit::Rule> {
    let mut limits = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let mut t = TableCheck::new(format!("limits[{i}]"), errs);
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
    limits
}
