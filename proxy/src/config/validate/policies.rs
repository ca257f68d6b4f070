//! `[[policies]]`: who may use which tools, prompts, resources and methods. Each rule is
//! checked here and compiled into the [`GroupPolicy`] of every group it applies to (the one
//! its `server` names, or all), so the data path never parses or looks a rule up by name.

use std::sync::Arc;

use ratelimit::Glob;

use super::server_must_exist;
use crate::config::fields::TableCheck;
use crate::config::raw::RawPolicy;
use crate::config::types::ServerGroup;
use crate::policy::{Effect, GroupPolicy, Rule};

/// Most rules that may apply to one group (a caller's class holds rule positions as `u16`;
/// each request looks only at the rules of its caller's class).
pub(crate) const MAX_RULES_PER_GROUP: usize = 4096;

/// Validates the rules and gives each group its policy.
pub(super) fn validate(raw: Vec<RawPolicy>, servers: &mut [ServerGroup], errs: &mut Vec<String>) {
    let mut rules: Vec<(Option<String>, Rule)> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let mut t = TableCheck::new(format!("policies[{i}]"), errs);
        server_must_exist(&mut t, p.server.as_deref(), servers);
        let effect = match p.effect.as_deref() {
            Some("allow") => Effect::Allow,
            Some("deny") => Effect::Deny,
            Some("confirm") => Effect::Confirm,
            Some(e) => {
                t.problem(
                    "effect",
                    format!("`{e}` (use \"allow\", \"deny\" or \"confirm\")"),
                );
                Effect::Deny
            }
            None => {
                t.problem("effect", "missing (\"allow\", \"deny\" or \"confirm\")");
                Effect::Deny
            }
        };
        let rule = Rule {
            index: i,
            effect,
            identities: globs(&mut t, "identities", p.identities).unwrap_or_default(),
            scopes: strings(&mut t, "scopes", p.scopes).unwrap_or_default(),
            claims: p
                .claims
                .map(|c| c.into_iter().collect())
                .unwrap_or_default(),
            tools: globs(&mut t, "tools", p.tools),
            prompts: globs(&mut t, "prompts", p.prompts),
            resources: strings(&mut t, "resources", p.resources),
            methods: globs(&mut t, "methods", p.methods),
        };
        rules.push((p.server, rule));
    }
    for g in servers.iter_mut() {
        let mine: Vec<Rule> = rules
            .iter()
            .filter(|(server, _)| server.as_deref().is_none_or(|s| s == g.name))
            .map(|(_, r)| r.clone())
            .collect();
        if mine.len() > MAX_RULES_PER_GROUP {
            errs.push(format!(
                "policies: {} rules apply to group `{}` (at most {MAX_RULES_PER_GROUP})",
                mine.len(),
                g.name
            ));
        }
        if !mine.is_empty() && g.legacy_sse {
            // The 2024-11-05 transport's answers come on a long-lived stream the policy does
            // not see: its lists would not be filtered.
            errs.push(format!(
                "servers.{}.legacy_sse: not with [[policies]] on the group (its old-transport answers would bypass them); set legacy_sse = false or give the policies another `server`",
                g.name
            ));
        }
        g.policy = Arc::new(GroupPolicy::new(mine, g.policy_default_allow));
    }
}

/// A list of strings, none empty, the list itself not empty (an empty list would match
/// nothing, which is never what was meant).
fn strings(t: &mut TableCheck<'_>, key: &str, v: Option<Vec<String>>) -> Option<Vec<String>> {
    let v = v?;
    if v.is_empty() {
        t.problem(key, "empty list (remove the key to match everything)");
    }
    if v.iter().any(|s| s.is_empty()) {
        t.problem(key, "an empty entry (use \"*\" to match every name)");
    }
    Some(v)
}

fn globs(t: &mut TableCheck<'_>, key: &str, v: Option<Vec<String>>) -> Option<Vec<Glob>> {
    strings(t, key, v).map(|v| v.into_iter().map(Glob::new).collect())
}
