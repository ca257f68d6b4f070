//! `[servers.health]`: active MCP health checks of a group's backends (on unless
//! `enabled = false`), sending only read-only methods.

use std::time::Duration;

use crate::config::fields::TableCheck;
use crate::config::raw::RawHealth;
use crate::config::types::{HealthCheck, READ_ONLY_CHECKS};

/// Validates the health table of the group at `group` (`servers[N]`); absent means defaults.
pub(super) fn validate(
    raw: Option<RawHealth>,
    group: &str,
    errs: &mut Vec<String>,
) -> Option<HealthCheck> {
    let h = raw.unwrap_or_default();
    if !h.enabled.unwrap_or(true) {
        return None;
    }
    let mut t = TableCheck::new(format!("{group}.health"), errs);
    Some(HealthCheck {
        interval: t.duration("interval", h.interval.as_deref(), Duration::from_secs(5)),
        timeout: t.duration("timeout", h.timeout.as_deref(), Duration::from_secs(2)),
        healthy_threshold: t.int_u32("healthy_threshold", h.healthy_threshold, 2, 1..=100),
        unhealthy_threshold: t.int_u32("unhealthy_threshold", h.unhealthy_threshold, 3, 1..=100),
        discover: h.method.as_deref() == Some("server/discover"),
        method: match h.method.as_deref() {
            None => "ping".to_string(),
            Some(m) if READ_ONLY_CHECKS.contains(&m) => m.to_string(),
            Some(m) => {
                t.problem(
                    "method",
                    format!("`{m}` (use one of {})", READ_ONLY_CHECKS.join(", ")),
                );
                "ping".to_string()
            }
        },
    })
}
