//! `GET /policy` on the admin port: what an identity may use and which rule decides.

use serde_json::{json, Value};

use crate::config::Config;
use crate::policy::{explain, Subject, Target};

/// `?identity=NAME[&server=GROUP][&tool=T|&prompt=P|&resource=URI|&method=M]`: the rules that
/// concern an identity in each group (JWT scope and claim conditions shown, evaluated as
/// absent), and, for a named operation, the decision and the rule that made it. `Err`: the
/// status and the text of a refusal.
pub(crate) fn policy_json(cfg: &Config, query: &str) -> Result<Value, (u16, &'static str)> {
    let param = |name: &str| {
        query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (crate::http::percent_decode(k) == name).then(|| crate::http::percent_decode(v))
        })
    };
    let Some(identity) = param("identity") else {
        return Err((
            400,
            "give ?identity=NAME (and optionally &server=, &tool=, &prompt=, &resource=, &method=)\n",
        ));
    };
    let server = param("server");
    let op = [
        ("tool", "tools/call"),
        ("prompt", "prompts/get"),
        ("resource", "resources/read"),
    ]
    .into_iter()
    .find_map(|(k, m)| param(k).map(|n| (m.to_owned(), Some(n))))
    .or_else(|| param("method").map(|m| (m, None)));
    let who = Subject {
        identity: &identity,
        ..Subject::default()
    };
    let groups: Vec<Value> = cfg
        .servers
        .iter()
        .filter(|g| server.as_deref().is_none_or(|s| s == g.name))
        .map(|g| {
            let p = &g.policy;
            let decision = op.as_ref().map(|(method, name)| {
                let target = Target::of(method, name.as_deref());
                let d = p.decide(&p.classify(&who), method, target);
                json!({
                    "method": method, "name": name, "effect": d.effect.as_str(),
                    "rule": d.rule.map(|r| format!("policies[{r}]")),
                    "explained": format!("{} by {}", d.effect.as_str(), d.by(method)),
                })
            });
            json!({
                "server": g.name,
                "active": p.is_active(),
                "default": p.default_effect().as_str(),
                "rules": explain(p, &identity),
                "decision": decision,
            })
        })
        .collect();
    if groups.is_empty() {
        return Err((404, "no such server group\n"));
    }
    Ok(json!({ "identity": identity, "servers": groups }))
}
