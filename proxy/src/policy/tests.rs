use super::*;
use proptest::prelude::*;

fn rule(index: usize, effect: Effect) -> Rule {
    Rule {
        index,
        effect,
        identities: Vec::new(),
        scopes: Vec::new(),
        claims: Vec::new(),
        tools: None,
        prompts: None,
        resources: None,
        methods: None,
    }
}

fn globs(v: &[&str]) -> Vec<Glob> {
    v.iter().map(|s| Glob::new(*s)).collect()
}

fn who(identity: &str) -> Subject<'_> {
    Subject {
        identity,
        ..Subject::default()
    }
}

fn issue_example() -> GroupPolicy {
    let mut alice = rule(0, Effect::Allow);
    alice.identities = globs(&["alice", "team-*"]);
    alice.tools = Some(globs(&["*"]));
    let mut bots = rule(1, Effect::Allow);
    bots.identities = globs(&["bot-*"]);
    bots.tools = Some(globs(&["search_*", "fs_read_*"]));
    let mut no_rm = rule(2, Effect::Deny);
    no_rm.identities = globs(&["team-*"]);
    no_rm.tools = Some(globs(&["rm_*"]));
    GroupPolicy::new(vec![alice, bots, no_rm], false)
}

fn call(p: &GroupPolicy, id: &str, tool: &str) -> Decision {
    p.decide(&p.classify(&who(id)), "tools/call", Target::Tool(tool))
}

#[test]
fn the_issue_example() {
    let p = issue_example();
    assert_eq!(call(&p, "alice", "rm_rf").rule, Some(0));
    assert!(call(&p, "alice", "rm_rf").allowed());
    assert!(call(&p, "bot-ci", "search_web").allowed());
    assert!(call(&p, "bot-ci", "fs_read_file").allowed());
    // Default deny: no rule allows it.
    let d = call(&p, "bot-ci", "fs_write_file");
    assert_eq!((d.effect, d.rule), (Effect::Deny, None));
    // Deny wins over the allow of rule 0.
    let d = call(&p, "team-ops", "rm_rf");
    assert_eq!((d.effect, d.rule), (Effect::Deny, Some(2)));
    assert!(call(&p, "team-ops", "ls").allowed());
    // A stranger may do nothing but the plumbing.
    assert!(!call(&p, "mallory", "search_web").allowed());
    let c = p.classify(&who("mallory"));
    assert!(p.decide(&c, "initialize", Target::Method).allowed());
    assert!(p.decide(&c, "tools/list", Target::Method).allowed());
    assert!(!p
        .decide(&c, "completion/complete", Target::Method)
        .allowed());
}

#[test]
fn policy_default_allow_flips_the_default() {
    let mut deny = rule(0, Effect::Deny);
    deny.tools = Some(globs(&["rm_*"]));
    let p = GroupPolicy::new(vec![deny], true);
    assert!(call(&p, "anyone", "ls").allowed());
    assert!(!call(&p, "anyone", "rm_rf").allowed());
    assert!(GroupPolicy::default()
        .decide(&Class::default(), "x", Target::Method)
        .allowed());
}

#[test]
fn scopes_claims_resources_prompts_and_methods() {
    let mut writers = rule(0, Effect::Allow);
    writers.scopes = vec!["tools:write".into()];
    writers.claims = vec![("team".into(), "ops".into())];
    writers.tools = Some(globs(&["write_*"]));
    let mut docs = rule(1, Effect::Allow);
    docs.resources = Some(vec!["file:///docs/".into()]);
    docs.prompts = Some(globs(&["summarize"]));
    let mut no_ping = rule(2, Effect::Deny);
    no_ping.identities = globs(&["noisy"]);
    no_ping.methods = Some(globs(&["ping"]));
    let mut ask = rule(3, Effect::Confirm);
    ask.tools = Some(globs(&["write_prod"]));
    let p = GroupPolicy::new(vec![writers, docs, no_ping, ask], false);
    let scopes: Vec<Box<str>> = vec!["tools:write".into(), "openid".into()];
    let claims: Vec<(Box<str>, Box<str>)> = vec![("team".into(), "ops".into())];
    let ops = Subject {
        identity: "u1",
        scopes: &scopes,
        claims: &claims,
    };
    let c = p.classify(&ops);
    assert!(p
        .decide(&c, "tools/call", Target::Tool("write_file"))
        .allowed());
    let d = p.decide(&c, "tools/call", Target::Tool("write_prod"));
    assert_eq!((d.effect, d.rule), (Effect::Confirm, Some(3)));
    let only_scope = Subject { claims: &[], ..ops };
    let c2 = p.classify(&only_scope);
    assert!(!p
        .decide(&c2, "tools/call", Target::Tool("write_file"))
        .allowed());
    assert!(p
        .decide(&c2, "resources/read", Target::Resource("file:///docs/a.md"))
        .allowed());
    assert!(!p
        .decide(
            &c2,
            "resources/read",
            Target::Resource("file:///etc/passwd")
        )
        .allowed());
    assert!(p
        .decide(&c2, "prompts/get", Target::Prompt("summarize"))
        .allowed());
    let noisy = p.classify(&who("noisy"));
    assert_eq!(
        p.decide(&noisy, "ping", Target::Method).rule,
        Some(2),
        "a rule naming a plumbing method governs it"
    );
    assert!(p.visible(&c2, lists::ListKind::Resources, "file:///docs/x"));
    assert!(!p.visible(&c2, lists::ListKind::Tools, "write_file"));
    assert!(p.visible(&c, lists::ListKind::Tools, "write_prod"));
}

#[test]
fn explain_lists_the_rules_of_an_identity() {
    let p = issue_example();
    let lines = explain(&p, "team-a");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("policies[0]: allow tools=[\"*\"]"));
    assert!(lines[1].starts_with("policies[2]: deny tools=[\"rm_*\"]"));
    assert!(explain(&p, "nobody").is_empty());
}

// ---------------------------------------------------------------- properties

/// The obvious definition: every rule of the file looked at for every request.
fn reference(p: &GroupPolicy, who: &Subject<'_>, method: &str, target: Target<'_>) -> Decision {
    let plumbing = target == Target::Method && is_plumbing(method);
    let hits: Vec<&Rule> = p
        .rules()
        .iter()
        .filter(|r| subject_matches(r, who) && target_matches(r, method, target, plumbing))
        .collect();
    for effect in [Effect::Deny, Effect::Confirm, Effect::Allow] {
        if let Some(r) = hits.iter().find(|r| r.effect == effect) {
            return Decision {
                effect,
                rule: Some(r.index),
            };
        }
    }
    let effect = if plumbing {
        Effect::Allow
    } else {
        p.default_effect()
    };
    Decision { effect, rule: None }
}

const NAMES: [&str; 6] = ["alice", "bob", "bot-ci", "search_web", "rm_rf", "a"];
const PATTERNS: [&str; 8] = ["*", "a*", "bot-*", "search_*", "rm_?f", "*_*", "bob", "?"];
const METHODS: [&str; 5] = [
    "tools/call",
    "prompts/get",
    "resources/read",
    "ping",
    "completion/complete",
];

fn arb_globs() -> impl Strategy<Value = Option<Vec<Glob>>> {
    prop::option::of(prop::collection::vec(
        (0..PATTERNS.len()).prop_map(|i| Glob::new(PATTERNS[i])),
        0..3,
    ))
}

/// A generated rule: effect, identities, whether it needs a scope, tools, methods.
type RawRule = (u8, Vec<Glob>, bool, Option<Vec<Glob>>, Option<Vec<Glob>>);

fn arb_rule() -> impl Strategy<Value = RawRule> {
    (
        0u8..3,
        arb_globs().prop_map(Option::unwrap_or_default),
        any::<bool>(),
        arb_globs(),
        arb_globs(),
    )
}

fn build(raw: Vec<RawRule>) -> Vec<Rule> {
    raw.into_iter()
        .enumerate()
        .map(|(i, (e, ids, scoped, tools, methods))| {
            let effect = [Effect::Allow, Effect::Deny, Effect::Confirm][usize::from(e)];
            let mut r = rule(i, effect);
            r.identities = ids;
            if scoped {
                r.scopes = vec!["s".into()];
            }
            r.tools = tools;
            r.methods = methods;
            r
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The cached class decides exactly as every rule looked at anew would, and a deny that
    /// matches always wins.
    #[test]
    fn class_decisions_match_the_reference(
        raw in prop::collection::vec(arb_rule(), 0..12),
        default_allow in any::<bool>(),
        id in 0..NAMES.len(),
        scoped in any::<bool>(),
        m in 0..METHODS.len(),
        name in 0..NAMES.len(),
    ) {
        let p = GroupPolicy::new(build(raw), default_allow);
        let scopes: Vec<Box<str>> = if scoped { vec!["s".into()] } else { Vec::new() };
        let w = Subject { identity: NAMES[id], scopes: &scopes, claims: &[] };
        let target = Target::of(METHODS[m], Some(NAMES[name]));
        let class = p.classify(&w);
        let got = p.decide(&class, METHODS[m], target);
        prop_assert_eq!(got, reference(&p, &w, METHODS[m], target));
        // Pure: the same question, the same answer.
        prop_assert_eq!(got, p.decide(&p.classify(&w), METHODS[m], target));
        let any_deny = p.rules().iter().any(|r| {
            r.effect == Effect::Deny && subject_matches(r, &w)
                && target_matches(r, METHODS[m], target, false)
        });
        prop_assert_eq!(any_deny, got.effect == Effect::Deny && got.rule.is_some());
        if p.rules().is_empty() {
            prop_assert!(got.allowed());
        }
    }
}
