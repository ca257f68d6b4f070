//! What a virtual server's client sees of its members, as plain functions over JSON values:
//! names prefixed as `prefix_mode` says, filtered by the members' allow/deny globs, renamed and
//! overridden; lists merged with the routes back to each member; resource URIs claimed by
//! members (exactly or by a template); list cursors that carry every member's position; and
//! the ids of server-to-client requests, wrapped so the client's answer finds its member.
//! No I/O and no clock.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};

use crate::config::{Member, PrefixMode, VirtualServer};

/// A list method a virtual server fans out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Tools,
    Prompts,
    Resources,
    Templates,
}

impl Kind {
    /// The list method.
    pub fn method(self) -> &'static str {
        match self {
            Kind::Tools => "tools/list",
            Kind::Prompts => "prompts/list",
            Kind::Resources => "resources/list",
            Kind::Templates => "resources/templates/list",
        }
    }

    /// The result member that holds the items.
    pub fn key(self) -> &'static str {
        match self {
            Kind::Tools => "tools",
            Kind::Prompts => "prompts",
            Kind::Resources => "resources",
            Kind::Templates => "resourceTemplates",
        }
    }

    /// The item member that names it.
    pub fn name_field(self) -> &'static str {
        match self {
            Kind::Tools | Kind::Prompts => "name",
            Kind::Resources => "uri",
            Kind::Templates => "uriTemplate",
        }
    }

    fn filter(self, m: &Member) -> &crate::config::NameFilter {
        match self {
            Kind::Tools => &m.tools,
            Kind::Prompts => &m.prompts,
            Kind::Resources | Kind::Templates => &m.resources,
        }
    }
}

/// One member's page of a list.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct MemberPage {
    /// The member's index.
    pub member: usize,
    /// The member answered with an SSE stream.
    pub sse: bool,
    /// The items, as the member sent them.
    pub items: Vec<Value>,
    /// The member's next cursor.
    pub next: Option<String>,
    /// The member's `ttlMs` hint.
    pub ttl_ms: Option<u64>,
    /// The member said `cacheScope: "private"`.
    pub private: bool,
}

impl MemberPage {
    /// The page in a list `result`.
    pub fn from_result(member: usize, kind: Kind, result: &Value) -> MemberPage {
        MemberPage {
            member,
            sse: false,
            items: result
                .get(kind.key())
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
            next: result
                .get("nextCursor")
                .and_then(Value::as_str)
                .map(str::to_string),
            ttl_ms: result.get("ttlMs").and_then(Value::as_u64),
            private: result.get("cacheScope").and_then(Value::as_str) == Some("private"),
        }
    }
}

/// Where a name the client sees leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    /// The member's index.
    pub member: usize,
    /// The member's own name (or URI).
    pub name: String,
}

/// Lists merged for the client.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Merged {
    /// The items the client sees, members in config order.
    pub items: Vec<Value>,
    /// Name (tools, prompts) or URI (resources) the client sees → its member.
    pub routes: HashMap<String, Route>,
    /// Resource templates: (member, template), members in config order.
    pub templates: Vec<(usize, String)>,
    /// Names (or URIs) two members both show, and the member left out for each.
    pub clashes: Vec<(String, usize)>,
    /// The shortest `ttlMs` the members gave (`None`: none gave one).
    pub ttl_ms: Option<u64>,
    /// Some member said `cacheScope: "private"`.
    pub private: bool,
    /// The members whose pages it holds (bit `m` for member `m`).
    pub members: u64,
    /// The members answered as SSE streams (the client is answered alike).
    pub sse: bool,
}

/// The name a member's tool or prompt `own` has for the client, before `prefix_mode`: its
/// rename (tools), if any.
fn base_name<'a>(kind: Kind, m: &'a Member, own: &'a str) -> &'a str {
    if kind != Kind::Tools {
        return own;
    }
    m.renames
        .iter()
        .find(|(from, _)| from == own)
        .map_or(own, |(_, to)| to.as_str())
}

/// `prefix ‖ separator ‖ name`.
pub(crate) fn prefixed(vs: &VirtualServer, m: &Member, name: &str) -> String {
    let mut s = String::with_capacity(m.prefix.len() + vs.separator.len() + name.len());
    s.push_str(&m.prefix);
    s.push_str(&vs.separator);
    s.push_str(name);
    s
}

/// Merges the members' pages of one list. Items the member's filter hides are left out;
/// tools are renamed and overridden; tool and prompt names are prefixed as `prefix_mode`
/// says. A name (or URI) two members show goes to the first of them (config order); the
/// others are in `clashes`.
pub(crate) fn merge(vs: &VirtualServer, kind: Kind, pages: &[MemberPage]) -> Merged {
    let mut pages: Vec<&MemberPage> = pages.iter().collect();
    pages.sort_by_key(|p| p.member);
    // Which base names more than one member shows (for "conflict").
    let mut seen: HashMap<&str, usize> = HashMap::new();
    if vs.prefix_mode == PrefixMode::Conflict {
        for p in &pages {
            let Some(m) = vs.members.get(p.member) else {
                continue;
            };
            let mut mine: Vec<&str> = visible(kind, m, p)
                .map(|(own, _)| base_name(kind, m, own))
                .collect();
            mine.sort_unstable();
            mine.dedup();
            for n in mine {
                *seen.entry(n).or_default() += 1;
            }
        }
    }
    let mut out = Merged {
        ttl_ms: pages.iter().filter_map(|p| p.ttl_ms).min(),
        private: pages.iter().any(|p| p.private),
        sse: pages.iter().any(|p| p.sse),
        members: pages
            .iter()
            .filter(|p| p.member < 64)
            .fold(0, |acc, p| acc | 1 << p.member),
        ..Merged::default()
    };
    for p in &pages {
        let Some(m) = vs.members.get(p.member) else {
            continue;
        };
        for (own, item) in visible(kind, m, p) {
            if kind == Kind::Templates {
                out.templates.push((p.member, own.to_string()));
                out.items.push(item.clone());
                continue;
            }
            let base = base_name(kind, m, own);
            let exposed = match (kind, vs.prefix_mode) {
                (Kind::Resources, _) | (_, PrefixMode::Never) => base.to_string(),
                (_, PrefixMode::Always) => prefixed(vs, m, base),
                (_, PrefixMode::Conflict) => {
                    if seen.get(base).copied().unwrap_or(0) > 1 {
                        prefixed(vs, m, base)
                    } else {
                        base.to_string()
                    }
                }
            };
            if out.routes.contains_key(&exposed) {
                out.clashes.push((exposed, p.member));
                continue;
            }
            let mut item = item.clone();
            if let Some(obj) = item.as_object_mut() {
                if kind != Kind::Resources {
                    obj.insert("name".into(), Value::String(exposed.clone()));
                }
                if kind == Kind::Tools {
                    apply_override(m, own, obj);
                }
            }
            out.routes.insert(
                exposed,
                Route {
                    member: p.member,
                    name: own.to_string(),
                },
            );
            out.items.push(item);
        }
    }
    out
}

/// Where a tool name that no member lists goes: to the one member that could own it (it
/// shows names without a prefix, `prefix_mode` "never" or "conflict", and its filter admits
/// the name, after its renames), so that the member's own answer reaches the client (a
/// member's lists may be stale, or its tools dynamic). `None` when no member or several could
/// (under "always" every name the client sees carries its member's prefix).
pub(crate) fn unlisted_tool_route(vs: &VirtualServer, name: &str) -> Option<Route> {
    if vs.prefix_mode == PrefixMode::Always {
        return None;
    }
    let mut owners = vs.members.iter().enumerate().filter_map(|(i, m)| {
        // The member's own name for it: a rename's source, else the name itself unless the
        // member shows that one under another name.
        let own = match m.renames.iter().find(|(_, to)| to == name) {
            Some((from, _)) => from.as_str(),
            None if m.renames.iter().any(|(from, _)| from == name) => return None,
            None => name,
        };
        m.tools.admits(own).then(|| Route {
            member: i,
            name: own.to_string(),
        })
    });
    let first = owners.next()?;
    owners.next().is_none().then_some(first)
}

/// A member's items its filter shows, with their own names.
fn visible<'p>(
    kind: Kind,
    m: &'p Member,
    p: &'p MemberPage,
) -> impl Iterator<Item = (&'p str, &'p Value)> {
    p.items.iter().filter_map(move |item| {
        let own = item.get(kind.name_field())?.as_str()?;
        kind.filter(m).admits(own).then_some((own, item))
    })
}

/// Applies the member's override of tool `own` to its JSON object.
fn apply_override(m: &Member, own: &str, obj: &mut Map<String, Value>) {
    let Some((_, o)) = m.overrides.iter().find(|(t, _)| t == own) else {
        return;
    };
    if let Some(t) = &o.title {
        obj.insert("title".into(), Value::String(t.clone()));
    }
    if let Some(d) = &o.description {
        obj.insert("description".into(), Value::String(d.clone()));
    }
    if let Some(a) = &o.annotations {
        let slot = obj
            .entry("annotations")
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        if let Some(ann) = slot.as_object_mut() {
            for (k, v) in a {
                ann.insert(k.clone(), v.clone());
            }
        }
    }
}

/// Whether `uri` is one an RFC 6570 template could expand to: its literal parts in order,
/// each `{...}` expression standing for any run of characters.
pub(crate) fn template_matches(template: &str, uri: &str) -> bool {
    let mut glob = String::with_capacity(template.len());
    let mut in_expr = false;
    for c in template.chars() {
        match (in_expr, c) {
            (false, '{') => {
                in_expr = true;
                glob.push('*');
            }
            (true, '}') => in_expr = false,
            (true, _) => {}
            // `*` and `?` are literal in a template, but the glob has no escape: a template
            // with them matches a little more than it should, never less.
            (false, c) => glob.push(c),
        }
    }
    ratelimit::Glob::new(glob).matches(uri)
}

/// The member that serves resource `uri`: the one whose list shows it, else the first whose
/// template matches it (and whose filter shows it).
pub(crate) fn route_uri(
    vs: &VirtualServer,
    resources: Option<&Merged>,
    templates: Option<&Merged>,
    uri: &str,
) -> Option<usize> {
    if let Some(r) = resources.and_then(|m| m.routes.get(uri)) {
        return Some(r.member);
    }
    let t = templates?;
    t.templates
        .iter()
        .find(|(m, tpl)| {
            template_matches(tpl, uri)
                && vs.members.get(*m).is_some_and(|m| m.resources.admits(uri))
        })
        .map(|(m, _)| *m)
}

/// Marks cursors mcplb made (members' own cursors never reach the client).
const CURSOR_PREFIX: &str = "mcplb1.";

/// A cursor for the client: each member that has more, with its own cursor.
pub(crate) fn encode_cursor(positions: &[(usize, String)]) -> Option<String> {
    if positions.is_empty() {
        return None;
    }
    let v: Vec<Value> = positions
        .iter()
        .map(|(m, c)| Value::Array(vec![Value::from(*m), Value::String(c.clone())]))
        .collect();
    let json = serde_json::to_vec(&v).ok()?;
    Some(format!("{CURSOR_PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
}

/// The members' positions in a client's cursor (`None`: not a cursor mcplb made; answered
/// -32602).
pub(crate) fn decode_cursor(cursor: &str, members: usize) -> Option<Vec<(usize, String)>> {
    let b = URL_SAFE_NO_PAD
        .decode(cursor.strip_prefix(CURSOR_PREFIX)?)
        .ok()?;
    let v: Vec<(usize, String)> = serde_json::from_slice(&b).ok()?;
    let mut seen = vec![false; members];
    for (m, _) in &v {
        let slot = seen.get_mut(*m)?;
        if std::mem::replace(slot, true) {
            return None;
        }
    }
    (!v.is_empty()).then_some(v)
}

/// Marks the ids of server-to-client requests mcplb relays.
const WRAPPED_ID: &str = "mcplb:";

/// The id a member's server-to-client request has for the client: a JSON string carrying
/// the member and the member's own id (`raw`: its JSON text, type and all), so that the
/// client's answer finds its way back with no table.
pub fn wrap_id(member: usize, raw: &[u8]) -> String {
    format!("{WRAPPED_ID}{member}:{}", URL_SAFE_NO_PAD.encode(raw))
}

/// The member and its own id (JSON text) of a wrapped id (its string value).
pub(crate) fn unwrap_id(id: &str) -> Option<(usize, Vec<u8>)> {
    let rest = id.strip_prefix(WRAPPED_ID)?;
    let (m, raw) = rest.split_once(':')?;
    let raw = URL_SAFE_NO_PAD.decode(raw).ok()?;
    // Only an id a member could have sent: a string or an integer.
    match serde_json::from_slice::<Value>(&raw).ok()? {
        Value::String(_) | Value::Number(_) => Some((m.parse().ok()?, raw)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NameFilter, ToolOverride};
    use proptest::prelude::*;
    use serde_json::json;
    use std::time::Duration;

    fn member(prefix: &str, allow: &[&str], deny: &[&str]) -> Member {
        Member {
            server: prefix.to_string(),
            group: 0,
            prefix: prefix.to_string(),
            tools: NameFilter {
                allow: allow.iter().map(|g| ratelimit::Glob::new(*g)).collect(),
                deny: deny.iter().map(|g| ratelimit::Glob::new(*g)).collect(),
            },
            prompts: NameFilter::default(),
            resources: NameFilter::default(),
            renames: Vec::new(),
            overrides: Vec::new(),
            fail_closed: false,
            timeout: Duration::from_secs(1),
        }
    }

    fn vs(mode: PrefixMode, members: Vec<Member>) -> VirtualServer {
        VirtualServer {
            members,
            prefix_mode: mode,
            separator: "_".to_string(),
            list_cache_ttl: Duration::from_secs(30),
            tag: 1,
        }
    }

    fn page(member: usize, names: &[&str]) -> MemberPage {
        MemberPage {
            member,
            items: names
                .iter()
                .map(|n| json!({"name": n, "inputSchema": {"type": "object"}}))
                .collect(),
            ..MemberPage::default()
        }
    }

    fn names(m: &Merged) -> Vec<&str> {
        m.items.iter().filter_map(|i| i["name"].as_str()).collect()
    }

    #[test]
    fn always_prefixes_filters_and_renames() {
        let mut fs = member("fs", &["read_*", "list_*"], &["read_secret"]);
        fs.renames = vec![("read_file".into(), "cat".into())];
        fs.overrides = vec![(
            "read_file".into(),
            ToolOverride {
                title: Some("Cat".into()),
                description: Some("Shows a file.".into()),
                annotations: Some(
                    json!({"readOnlyHint": true})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                ),
            },
        )];
        let v = vs(PrefixMode::Always, vec![member("search", &[], &[]), fs]);
        let m = merge(
            &v,
            Kind::Tools,
            &[
                page(1, &["read_file", "read_secret", "write_file", "list_dir"]),
                page(0, &["query"]),
            ],
        );
        assert_eq!(names(&m), ["search_query", "fs_cat", "fs_list_dir"]);
        assert_eq!(m.items[1]["title"], "Cat");
        assert_eq!(m.items[1]["annotations"]["readOnlyHint"], true);
        assert_eq!(
            m.routes.get("fs_cat"),
            Some(&Route {
                member: 1,
                name: "read_file".into()
            })
        );
    }

    #[test]
    fn an_unlisted_tool_goes_to_the_one_member_that_could_own_it() {
        let one = vs(PrefixMode::Never, vec![member("ev", &[], &["get-env"])]);
        let r = unlisted_tool_route(&one, "test_simple_text");
        assert_eq!(
            r.map(|r| (r.member, r.name)),
            Some((0, "test_simple_text".into()))
        );
        // Filtered out: nobody owns it.
        assert_eq!(unlisted_tool_route(&one, "get-env"), None);
        // Two members could: -32602 as before.
        let two = vs(
            PrefixMode::Conflict,
            vec![member("a", &["x_*"], &[]), member("b", &[], &[])],
        );
        assert_eq!(unlisted_tool_route(&two, "x_1"), None);
        assert_eq!(unlisted_tool_route(&two, "y").map(|r| r.member), Some(1));
        // "always": every name has its member's prefix.
        let always = vs(PrefixMode::Always, vec![member("a", &[], &[])]);
        assert_eq!(unlisted_tool_route(&always, "a_x"), None);
        // Renames: the client's name goes back to the member's own; the own name is hidden.
        let mut m = member("r", &[], &[]);
        m.renames = vec![("echo".into(), "say".into())];
        let renamed = vs(PrefixMode::Never, vec![m]);
        let r = unlisted_tool_route(&renamed, "say");
        assert_eq!(r.map(|r| r.name), Some("echo".into()));
        assert_eq!(unlisted_tool_route(&renamed, "echo"), None);
    }

    #[test]
    fn conflict_prefixes_only_shared_names_and_never_keeps_the_first() {
        let members = vec![member("a", &[], &[]), member("b", &[], &[])];
        let pages = [page(0, &["x", "y"]), page(1, &["y", "z"])];
        let m = merge(
            &vs(PrefixMode::Conflict, members.clone()),
            Kind::Tools,
            &pages,
        );
        assert_eq!(names(&m), ["x", "a_y", "b_y", "z"]);
        assert!(m.clashes.is_empty());
        let m = merge(&vs(PrefixMode::Never, members), Kind::Tools, &pages);
        assert_eq!(names(&m), ["x", "y", "z"]);
        assert_eq!(m.clashes, [("y".to_string(), 1)]);
        assert_eq!(m.routes["y"].member, 0);
    }

    #[test]
    fn resources_keep_their_uris_and_templates_route_what_they_match() {
        let mut a = member("a", &[], &[]);
        a.resources.deny = vec![ratelimit::Glob::new("secret://*")];
        let v = vs(PrefixMode::Always, vec![a, member("b", &[], &[])]);
        let res = |m: usize, uris: &[&str]| MemberPage {
            member: m,
            items: uris.iter().map(|u| json!({"uri": u, "name": u})).collect(),
            ..MemberPage::default()
        };
        let r = merge(
            &v,
            Kind::Resources,
            &[
                res(0, &["info://a", "secret://k"]),
                res(1, &["info://a", "info://b"]),
            ],
        );
        assert_eq!(r.items.len(), 2);
        assert_eq!(r.items[0]["name"], "info://a", "resources are not renamed");
        assert_eq!(r.clashes, [("info://a".to_string(), 1)]);
        let t = merge(
            &v,
            Kind::Templates,
            &[MemberPage {
                member: 1,
                items: vec![json!({"uriTemplate": "file:///{path}", "name": "f"})],
                ..MemberPage::default()
            }],
        );
        assert_eq!(route_uri(&v, Some(&r), Some(&t), "info://b"), Some(1));
        assert_eq!(route_uri(&v, Some(&r), Some(&t), "file:///etc/x"), Some(1));
        assert_eq!(route_uri(&v, Some(&r), Some(&t), "secret://k"), None);
        assert!(template_matches(
            "users://{id}/profile",
            "users://7/profile"
        ));
        assert!(!template_matches("users://{id}/profile", "users://7/posts"));
    }

    #[test]
    fn cursors_and_wrapped_ids_round_trip_and_refuse_strangers() {
        let pos = vec![(0, "abc".to_string()), (2, "p=2".to_string())];
        let c = encode_cursor(&pos).unwrap_or_default();
        assert_eq!(decode_cursor(&c, 3), Some(pos));
        assert_eq!(decode_cursor(&c, 2), None, "member 2 of 2");
        assert_eq!(decode_cursor("abc", 3), None);
        assert_eq!(encode_cursor(&[]), None);
        let dup = encode_cursor(&[(1, "a".into()), (1, "b".into())]).unwrap_or_default();
        assert_eq!(decode_cursor(&dup, 3), None);
        for raw in [&b"7"[..], b"\"s-1\"", b"\"\""] {
            assert_eq!(unwrap_id(&wrap_id(3, raw)), Some((3, raw.to_vec())));
        }
        assert_eq!(unwrap_id(&wrap_id(3, b"{}")), None);
        assert_eq!(unwrap_id("7"), None);
        assert_eq!(unwrap_id("mcplb:x:Nw"), None);
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-c_]{1,4}"
    }

    proptest! {
        /// Whatever the members list and however they are configured, every item the client
        /// sees has a unique name, and routing that name leads back to the member and its own
        /// name, which its filter shows; with "always", under its member's prefix.
        #[test]
        fn every_shown_name_routes_back(
            lists in proptest::collection::vec(proptest::collection::vec(arb_name(), 0..6), 1..4),
            mode in prop_oneof![Just(PrefixMode::Always), Just(PrefixMode::Conflict), Just(PrefixMode::Never)],
            deny in proptest::option::of(arb_name()),
            rename in proptest::option::of((arb_name(), arb_name())),
        ) {
            let members: Vec<Member> = (0..lists.len())
                .map(|i| {
                    let mut m = member(&format!("m{i}"), &[], &[]);
                    if i == 0 {
                        m.tools.deny = deny.iter().map(|d| ratelimit::Glob::new(d.clone())).collect();
                        m.renames = rename.iter().cloned().collect();
                    }
                    m
                })
                .collect();
            let v = vs(mode, members);
            let pages: Vec<MemberPage> = lists
                .iter()
                .enumerate()
                .map(|(i, l)| page(i, &l.iter().map(String::as_str).collect::<Vec<_>>()))
                .collect();
            let m = merge(&v, Kind::Tools, &pages);
            let shown = names(&m);
            let mut unique = shown.clone();
            unique.sort_unstable();
            unique.dedup();
            prop_assert_eq!(unique.len(), shown.len());
            for n in &shown {
                let r = &m.routes[*n];
                prop_assert!(lists[r.member].contains(&r.name));
                prop_assert!(v.members[r.member].tools.admits(&r.name));
                if mode == PrefixMode::Always {
                    let m = &v.members[r.member];
                    let start = format!("{}_", m.prefix);
                    prop_assert!(n.starts_with(&start), "{} without {}", n, start);
                }
            }
        }

        #[test]
        fn foreign_cursors_and_ids_never_panic(s in ".{0,60}") {
            let _ = decode_cursor(&s, 4);
            let _ = unwrap_id(&s);
            let _ = template_matches(&s, "x://y");
        }
    }
}
