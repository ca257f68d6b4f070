//! Per-tool policy: who may use which tools, prompts, resources and methods of a server group.
//!
//! Plain data and pure functions, no I/O and no locks: a decision is a function of the
//! caller (identity, JWT scopes and claims), the JSON-RPC method and the name it targets.
//! The `[[policies]]` rules are validated into a [`GroupPolicy`] per group when the config is
//! loaded (and again on each reload). A caller's *class* ([`Class`]: which rules' subjects it
//! matches) is computed once per caller and cached per core (`runtime::core`), so a request
//! pays only the rules that concern its caller, each a glob match on a short name.
//!
//! Rules, in short: deny wins over confirm, confirm over allow; in a group with any rule,
//! what no rule allows is denied (`policy_default = "allow"` flips that). The protocol's
//! plumbing (`initialize`, `ping`, the `*/list` methods, `logging/setLevel`,
//! `server/discover`) is governed only by rules that name it in `methods` (or name nothing):
//! a default deny never locks a caller out of its session. Lists are filtered instead
//! ([`lists`]).

pub mod confirm;
pub mod lists;

use std::borrow::Cow;

use ratelimit::Glob;

/// What a rule does to the requests it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The request goes on.
    Allow,
    /// The request is answered like one for an unknown tool; nothing reaches a backend.
    Deny,
    /// The request needs the approval of the human behind the client.
    Confirm,
}

impl Effect {
    /// As written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Confirm => "confirm",
        }
    }
}

/// One validated `[[policies]]` rule. An empty subject list matches every caller; a rule
/// with no target list (`tools`, `prompts`, `resources`, `methods`) matches every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its position in the file (`policies[N]`), for explanations and the audit trail.
    pub index: usize,
    /// What it does.
    pub effect: Effect,
    /// Globs on the caller's identity (any of them).
    pub identities: Vec<Glob>,
    /// JWT scopes the caller must all carry.
    pub scopes: Vec<String>,
    /// JWT claims the caller must all carry (a string claim equal to the value, or an array
    /// claim holding it).
    pub claims: Vec<(String, String)>,
    /// Globs on tool names (`tools/call`, and the entries of `tools/list`).
    pub tools: Option<Vec<Glob>>,
    /// Globs on prompt names (`prompts/get`, `prompts/list`).
    pub prompts: Option<Vec<Glob>>,
    /// URI prefixes (`resources/read`, `resources/subscribe`, `resources/list`).
    pub resources: Option<Vec<String>>,
    /// Globs on JSON-RPC method names (any request).
    pub methods: Option<Vec<Glob>>,
}

/// The caller as rules see it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The identity: a named API key's `identity`, `api-key:N` for an unnamed one, a JWT's
    /// identity claim; empty in a group without authentication.
    pub identity: &'a str,
    /// The JWT's scopes (`scope`, space separated, and `scp`).
    pub scopes: &'a [Box<str>],
    /// The JWT's string claims (array claims as one pair per string).
    pub claims: &'a [(Box<str>, Box<str>)],
}

/// What a request targets, as rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// `tools/call` of this tool.
    Tool(&'a str),
    /// `prompts/get` of this prompt.
    Prompt(&'a str),
    /// `resources/read` (or subscribe/unsubscribe) of this URI.
    Resource(&'a str),
    /// Any other method: governed only by rules that name it (or name nothing) when it is
    /// plumbing, by every rule otherwise.
    Method,
}

impl<'a> Target<'a> {
    /// The target of a request for `method` naming `name` (a tool or prompt name, or a URI).
    pub fn of(method: &str, name: Option<&'a str>) -> Target<'a> {
        match (method, name) {
            ("tools/call", Some(n)) => Target::Tool(n),
            ("prompts/get", Some(n)) => Target::Prompt(n),
            ("resources/read" | "resources/subscribe" | "resources/unsubscribe", Some(u)) => {
                Target::Resource(u)
            }
            _ => Target::Method,
        }
    }
}

/// Whether `method` only keeps a session going or lists what exists (its answers are
/// filtered instead): a default deny does not apply to it.
pub fn is_plumbing(method: &str) -> bool {
    matches!(
        method,
        "initialize"
            | "ping"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "logging/setLevel"
            | "server/discover"
    )
}

/// A decision and the rule that made it (`None`: the group's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What happens to the request.
    pub effect: Effect,
    /// The deciding rule's position in the file (`policies[N]`), or `None` for the default.
    pub rule: Option<usize>,
}

impl Decision {
    /// Whether the request may go on without asking anyone.
    pub fn allowed(&self) -> bool {
        self.effect == Effect::Allow
    }
}

impl Decision {
    /// What made the decision on a request for `method`: `policies[N]`, `policy_default`, or
    /// `plumbing` (a session-keeping method no rule named).
    pub fn by(&self, method: &str) -> Cow<'static, str> {
        match self.rule {
            Some(r) => Cow::Owned(format!("policies[{r}]")),
            None if self.effect == Effect::Allow && is_plumbing(method) => {
                Cow::Borrowed("plumbing")
            }
            None => Cow::Borrowed("policy_default"),
        }
    }
}

/// The rules of one group, in file order, and what applies when none matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    rules: Vec<Rule>,
    default: Effect,
    /// Some rule asks for approval (`effect = "confirm"`).
    confirms: bool,
}

impl Default for GroupPolicy {
    /// No rule: everything allowed, nothing to check.
    fn default() -> Self {
        GroupPolicy {
            rules: Vec::new(),
            default: Effect::Allow,
            confirms: false,
        }
    }
}

/// The rules (by position in the group's list) whose subject a caller matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Class {
    rules: Box<[u16]>,
}

impl Class {
    /// The indexes of the rules that concern the caller: callers with the same rules see the
    /// same lists (what a cache of filtered lists is keyed by).
    pub fn rules(&self) -> &[u16] {
        &self.rules
    }

    /// How many rules concern the caller.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether no rule concerns the caller.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

impl GroupPolicy {
    /// A group's policy: `rules` in file order; `default_allow` is `policy_default = "allow"`.
    /// Without rules everything is allowed.
    pub fn new(rules: Vec<Rule>, default_allow: bool) -> GroupPolicy {
        let default = if rules.is_empty() || default_allow {
            Effect::Allow
        } else {
            Effect::Deny
        };
        let confirms = rules.iter().any(|r| r.effect == Effect::Confirm);
        GroupPolicy {
            rules,
            default,
            confirms,
        }
    }

    /// Whether some rule asks for the user's approval (`effect = "confirm"`): only then do
    /// sessions remember their client's `elicitation` capability and the client's answers to
    /// mcplb's questions get looked for.
    pub fn confirms(&self) -> bool {
        self.confirms
    }

    /// Whether any rule applies to the group (otherwise nothing is checked or filtered).
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty()
    }

    /// The group's rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What applies when no rule matches.
    pub fn default_effect(&self) -> Effect {
        self.default
    }

    /// The rules whose subject `who` matches.
    pub fn classify(&self, who: &Subject<'_>) -> Class {
        let rules = self
            .rules
            .iter()
            .enumerate()
            .filter(|(_, r)| subject_matches(r, who))
            .map(|(i, _)| i as u16)
            .collect();
        Class { rules }
    }

    /// The decision on a request for `method` targeting `target`, by a caller of `class`
    /// (from [`GroupPolicy::classify`] on this policy).
    pub fn decide(&self, class: &Class, method: &str, target: Target<'_>) -> Decision {
        let plumbing = target == Target::Method && is_plumbing(method);
        let mut confirm = None;
        let mut allow = None;
        for &i in class.rules.iter() {
            let Some(r) = self.rules.get(usize::from(i)) else {
                continue;
            };
            if !target_matches(r, method, target, plumbing) {
                continue;
            }
            match r.effect {
                Effect::Deny => {
                    return Decision {
                        effect: Effect::Deny,
                        rule: Some(r.index),
                    }
                }
                Effect::Confirm => {
                    confirm = confirm.or(Some(r.index));
                }
                Effect::Allow => allow = allow.or(Some(r.index)),
            }
        }
        if let Some(rule) = confirm {
            return Decision {
                effect: Effect::Confirm,
                rule: Some(rule),
            };
        }
        if let Some(rule) = allow {
            return Decision {
                effect: Effect::Allow,
                rule: Some(rule),
            };
        }
        Decision {
            effect: if plumbing {
                Effect::Allow
            } else {
                self.default
            },
            rule: None,
        }
    }

    /// Whether a list entry (a tool, a prompt, a resource URI or template) is shown to a
    /// caller of `class`: unless a request for it would be denied.
    pub fn visible(&self, class: &Class, kind: lists::ListKind, name: &str) -> bool {
        let (method, target) = match kind {
            lists::ListKind::Tools => ("tools/call", Target::Tool(name)),
            lists::ListKind::Prompts => ("prompts/get", Target::Prompt(name)),
            lists::ListKind::Resources | lists::ListKind::ResourceTemplates => {
                ("resources/read", Target::Resource(name))
            }
        };
        self.decide(class, method, target).effect != Effect::Deny
    }
}

/// Whether rule `r` concerns the caller `who`.
fn subject_matches(r: &Rule, who: &Subject<'_>) -> bool {
    (r.identities.is_empty() || r.identities.iter().any(|g| g.matches(who.identity)))
        && r.scopes
            .iter()
            .all(|s| who.scopes.iter().any(|have| **have == **s))
        && r.claims
            .iter()
            .all(|(k, v)| who.claims.iter().any(|(hk, hv)| **hk == **k && **hv == **v))
}

/// Whether rule `r` covers a request for `method` targeting `target`.
fn target_matches(r: &Rule, method: &str, target: Target<'_>, plumbing: bool) -> bool {
    if r.tools.is_none() && r.prompts.is_none() && r.resources.is_none() && r.methods.is_none() {
        return true;
    }
    if r.methods
        .as_ref()
        .is_some_and(|ms| ms.iter().any(|g| g.matches(method)))
    {
        return true;
    }
    if plumbing {
        return false;
    }
    match target {
        Target::Tool(n) => r
            .tools
            .as_ref()
            .is_some_and(|gs| gs.iter().any(|g| g.matches(n))),
        Target::Prompt(n) => r
            .prompts
            .as_ref()
            .is_some_and(|gs| gs.iter().any(|g| g.matches(n))),
        Target::Resource(u) => r
            .resources
            .as_ref()
            .is_some_and(|ps| ps.iter().any(|p| u.starts_with(p.as_str()))),
        Target::Method => false,
    }
}

/// One line per rule of `policy` that concerns `identity` (JWT scope and claim conditions
/// are shown, not evaluated), for the admin port's `/policy`.
pub fn explain(policy: &GroupPolicy, identity: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in &policy.rules {
        if !(r.identities.is_empty() || r.identities.iter().any(|g| g.matches(identity))) {
            continue;
        }
        let mut line = format!("policies[{}]: {}", r.index, r.effect.as_str());
        let list = |name: &str, v: &[String]| format!(" {name}={v:?}");
        let globs = |gs: &[Glob]| gs.iter().map(|g| g.as_str().to_owned()).collect::<Vec<_>>();
        if let Some(t) = &r.tools {
            line.push_str(&list("tools", &globs(t)));
        }
        if let Some(p) = &r.prompts {
            line.push_str(&list("prompts", &globs(p)));
        }
        if let Some(p) = &r.resources {
            line.push_str(&list("resources", p));
        }
        if let Some(m) = &r.methods {
            line.push_str(&list("methods", &globs(m)));
        }
        if r.tools.is_none() && r.prompts.is_none() && r.resources.is_none() && r.methods.is_none()
        {
            line.push_str(" everything");
        }
        if !r.scopes.is_empty() {
            line.push_str(&format!(" if scopes={:?}", r.scopes));
        }
        for (k, v) in &r.claims {
            line.push_str(&format!(" if claim {k}={v:?}"));
        }
        out.push(line);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
