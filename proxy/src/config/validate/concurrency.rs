//! `[[concurrency]]`: limits on requests in flight per backend, tool, caller or in all, each
//! with a bounded wait queue.

use std::time::Duration;

use super::server_must_exist;
use crate::config::fields::TableCheck;
use crate::config::raw::RawConcurrency;
use crate::config::types::{ConcurrencyPer, ConcurrencyRule, ServerGroup, MAX_CONCURRENCY_RULES};

/// Validates the concurrency rules; `servers` are the validated groups a rule may name.
pub(super) fn validate(
    raw: Vec<RawConcurrency>,
    servers: &[ServerGroup],
    errs: &mut Vec<String>,
) -> Vec<ConcurrencyRule> {
    if raw.len() > MAX_CONCURRENCY_RULES {
        errs.push(format!(
            "concurrency: at most {MAX_CONCURRENCY_RULES} [[concurrency]] rules"
        ));
    }
    let mut rules = Vec::new();
    for (i, l) in raw.into_iter().enumerate() {
        let mut t = TableCheck::new(format!("concurrency[{i}]"), errs);
        server_must_exist(&mut t, l.server.as_deref(), servers);
        let per = match l.per.as_deref().unwrap_or("backend") {
            "backend" => ConcurrencyPer::Backend,
            "tool" => ConcurrencyPer::Tool,
            "caller" => ConcurrencyPer::Caller,
            "global" => ConcurrencyPer::Global,
            p => {
                t.problem(
                    "per",
                    format!("`{p}` (use \"backend\", \"tool\", \"caller\" or \"global\")"),
                );
                ConcurrencyPer::Global
            }
        };
        let source = caller_key(&mut t, &per, l.key.as_deref());
        let max = match l.max {
            Some(m) if (1..=1_000_000).contains(&m) => m as u32,
            Some(m) => {
                t.problem("max", format!("{m} is out of range (1..=1000000)"));
                1
            }
            None => {
                t.problem("max", "missing (requests in flight)");
                1
            }
        };
        rules.push(ConcurrencyRule {
            queue: t.int_u32("queue", l.queue, 0, 0..=1_000_000),
            queue_timeout: t.duration(
                "queue_timeout",
                l.queue_timeout.as_deref(),
                Duration::from_secs(5),
            ),
            filter: ratelimit::Rule {
                server: l.server,
                method: l.method,
                tool: l.tool.map(ratelimit::Glob::new),
                resource_prefix: l.resource_prefix,
                key: source,
                rate: 1.0,
                burst: 1,
            },
            per,
            max,
        });
    }
    rules
}

/// The caller key of a `per = "caller"` rule (required there, refused elsewhere).
fn caller_key(
    t: &mut TableCheck<'_>,
    per: &ConcurrencyPer,
    key: Option<&str>,
) -> ratelimit::KeySource {
    match (per, key) {
        (ConcurrencyPer::Caller, None) => {
            t.problem("key", "required with per = \"caller\"");
            ratelimit::KeySource::Global
        }
        (ConcurrencyPer::Caller, Some(k)) => match k.parse::<ratelimit::KeySource>() {
            Ok(ks) => ks,
            Err(e) => {
                t.problem("key", e);
                ratelimit::KeySource::Global
            }
        },
        (_, Some(_)) => {
            t.problem("key", "only used with per = \"caller\"");
            ratelimit::KeySource::Global
        }
        (_, None) => ratelimit::KeySource::Global,
    }
}
