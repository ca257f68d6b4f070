//! A virtual server's `members` and naming options. Members name other groups (earlier or
//! later in the file), so this runs once every group has been read.

use std::collections::HashMap;
use std::time::Duration;

use crate::config::fields::{fnv1a32, TableCheck};
use crate::config::raw::{RawMember, RawToolOverride};
use crate::config::types::{Member, NameFilter, PrefixMode, ServerGroup, ToolOverride};
use crate::config::VirtualServer;

/// Most members of one virtual server (a member's index travels in one byte).
pub(crate) const MAX_MEMBERS: usize = 64;
/// Default time a member may take to answer a fan-out (or a routed call's head).
const DEFAULT_MEMBER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default reuse of merged lists that carry no `ttlMs` hint.
const DEFAULT_LIST_TTL: Duration = Duration::from_secs(30);

/// The virtual-server keys of one `[[servers]]` table.
pub(super) struct RawVirtual {
    pub members: Vec<RawMember>,
    pub prefix_mode: Option<String>,
    pub separator: Option<String>,
    pub list_cache_ttl: Option<String>,
}

/// Validates the virtual server of group `gi` (checked as `key`), whose members are among
/// `groups` (`virtuals[i]`: group `i` is a virtual server too).
pub(super) fn validate(
    raw: RawVirtual,
    gi: usize,
    groups: &[ServerGroup],
    virtuals: &[bool],
    key: &str,
    errs: &mut Vec<String>,
) -> Option<VirtualServer> {
    let mut t = TableCheck::new(key, errs);
    let prefix_mode = match raw.prefix_mode.as_deref() {
        None | Some("always") => PrefixMode::Always,
        Some("conflict") => PrefixMode::Conflict,
        Some("never") => PrefixMode::Never,
        Some(v) => {
            t.problem(
                "prefix_mode",
                format!("`{v}` (use \"always\", \"conflict\" or \"never\")"),
            );
            PrefixMode::Always
        }
    };
    let separator = raw.separator.unwrap_or_else(|| "_".to_string());
    if separator
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        t.problem("separator", "must have no spaces or control characters");
    }
    // "0s": no merged list is kept.
    let list_cache_ttl = t.duration_or_zero(
        "list_cache_ttl",
        raw.list_cache_ttl.as_deref(),
        DEFAULT_LIST_TTL,
    );
    if raw.members.is_empty() {
        t.problem("members", "at least one member is required");
    }
    if raw.members.len() > MAX_MEMBERS {
        t.problem("members", format!("at most {MAX_MEMBERS} members"));
    }
    let name = groups.get(gi).map_or("", |g| g.name.as_str());
    let mut members: Vec<Member> = Vec::new();
    for (j, m) in raw.members.into_iter().enumerate() {
        let mut mt = TableCheck::new(format!("{key}.members[{j}]"), t.errs());
        if let Some(m) = member(m, gi, groups, virtuals, &mut mt) {
            if members.iter().any(|o| o.group == m.group) {
                mt.problem("server", format!("`{}` is a member twice", m.server));
            } else if members.iter().any(|o| o.prefix == m.prefix) {
                mt.problem(
                    "prefix",
                    format!("`{}` is another member's prefix too", m.prefix),
                );
            } else {
                members.push(m);
            }
        }
    }
    if prefix_mode == PrefixMode::Never {
        exact_clashes(&members, &mut t);
    }
    Some(VirtualServer {
        members,
        prefix_mode,
        separator,
        list_cache_ttl,
        tag: fnv1a32(format!("virtual:{name}").as_bytes()),
    })
}

/// One member.
fn member(
    m: RawMember,
    gi: usize,
    groups: &[ServerGroup],
    virtuals: &[bool],
    t: &mut TableCheck<'_>,
) -> Option<Member> {
    let Some(server) = m.server else {
        t.problem("server", "missing (the name of another [[servers]] group)");
        return None;
    };
    let Some(group) = groups.iter().position(|g| g.name == server) else {
        t.problem(
            "server",
            format!("no [[servers]] group is named `{server}`"),
        );
        return None;
    };
    if group == gi {
        t.problem("server", "a virtual server cannot be its own member");
        return None;
    }
    if virtuals.get(group).copied().unwrap_or(false) {
        t.problem(
            "server",
            format!("`{server}` is a virtual server itself (members must have backends)"),
        );
        return None;
    }
    let prefix = m.prefix.unwrap_or_else(|| server.clone());
    let fail_closed = match m.failure.as_deref() {
        None | Some("fail_open") => false,
        Some("fail_closed") => true,
        Some(v) => {
            t.problem(
                "failure",
                format!("`{v}` (use \"fail_open\" or \"fail_closed\")"),
            );
            false
        }
    };
    let timeout = t.duration("timeout", m.timeout.as_deref(), DEFAULT_MEMBER_TIMEOUT);
    let renames: Vec<(String, String)> = m.rename.unwrap_or_default().into_iter().collect();
    for (from, to) in &renames {
        if to.is_empty() {
            t.problem(&format!("rename.{from}"), "the new name is empty");
        }
    }
    let overrides = m
        .overrides
        .unwrap_or_default()
        .into_iter()
        .map(|(tool, o)| (tool, tool_override(o)))
        .collect();
    Some(Member {
        server,
        group,
        prefix,
        tools: filter(m.tools, m.deny_tools),
        prompts: filter(m.prompts, m.deny_prompts),
        resources: filter(m.resources, m.deny_resources),
        renames,
        overrides,
        fail_closed,
        timeout,
    })
}

fn filter(allow: Option<Vec<String>>, deny: Option<Vec<String>>) -> NameFilter {
    let globs = |v: Option<Vec<String>>| {
        v.unwrap_or_default()
            .into_iter()
            .map(ratelimit::Glob::new)
            .collect()
    };
    NameFilter {
        allow: globs(allow),
        deny: globs(deny),
    }
}

fn tool_override(o: RawToolOverride) -> ToolOverride {
    ToolOverride {
        title: o.title,
        description: o.description,
        annotations: o.annotations.map(|a| {
            a.into_iter()
                .filter_map(|(k, v)| Some((k, serde_json::to_value(v).ok()?)))
                .collect()
        }),
    }
}

/// With `prefix_mode = "never"`, two members that show the same tool by an exact (glob-free)
/// allow entry or a rename clash for sure: a config error. Clashes of names the config cannot
/// know are found when lists merge (the first member keeps the name; the log says so).
fn exact_clashes(members: &[Member], t: &mut TableCheck<'_>) {
    let mut seen: HashMap<String, &str> = HashMap::new();
    for m in members {
        let renamed = |n: &str| {
            m.renames
                .iter()
                .find(|(from, _)| from == n)
                .map_or(n.to_string(), |(_, to)| to.clone())
        };
        let mut names: Vec<String> = m
            .tools
            .allow
            .iter()
            .map(|g| g.as_str())
            .filter(|p| !p.contains(['*', '?']))
            .map(renamed)
            .collect();
        names.extend(m.renames.iter().map(|(_, to)| to.clone()));
        names.sort();
        names.dedup();
        for n in names {
            if let Some(other) = seen.insert(n.clone(), &m.server) {
                if other != m.server {
                    t.problem(
                        "prefix_mode",
                        format!(
                            "\"never\": members `{other}` and `{}` both show a tool named `{n}`",
                            m.server
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, PrefixMode};

    const BASE: &str = "[proxy]\nlisten = \"127.0.0.1:0\"\n\
        [[servers]]\nname = \"search\"\npath = \"/search\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n\
        [[servers]]\nname = \"files\"\npath = \"/files\"\nbackends = [\"http://127.0.0.1:2/mcp\"]\n";

    fn problems(extra: &str) -> String {
        Config::parse(&format!("{BASE}{extra}"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn the_minimal_form_loads() {
        let text = format!(
            "{BASE}[[servers]]\nname = \"workbench\"\npath = \"/mcp\"\nmembers = [\n  \
             {{ server = \"search\" }},\n  {{ server = \"files\", prefix = \"fs\", tools = [\"read_*\", \"list_*\"] }},\n]\n\
             prefix_mode = \"always\"\nseparator = \"_\"\n"
        );
        let c = Config::parse(&text).map_err(|e| e.to_string());
        let Ok(c) = c else { panic!("{c:?}") };
        let Some(v) = c.servers[2].virtual_server.as_ref() else {
            panic!("not virtual")
        };
        assert_eq!(v.prefix_mode, PrefixMode::Always);
        assert_eq!(v.members.len(), 2);
        assert_eq!(v.members[0].prefix, "search");
        assert_eq!(v.members[0].group, 0);
        assert_eq!(v.members[1].prefix, "fs");
        assert!(v.members[1].tools.admits("read_file"));
        assert!(!v.members[1].tools.admits("write_file"));
        assert!(c.servers[2].backends.is_empty());
    }

    #[test]
    fn a_zero_list_cache_ttl_means_no_cache() {
        let text = format!(
            "{BASE}[[servers]]\nname = \"v\"\npath = \"/v\"\nlist_cache_ttl = \"0s\"\n\
             members = [{{ server = \"search\" }}]\n"
        );
        let c = Config::parse(&text).map_err(|e| e.to_string());
        let Ok(c) = c else { panic!("{c:?}") };
        let ttl = c.servers[2]
            .virtual_server
            .as_ref()
            .map(|v| v.list_cache_ttl);
        assert_eq!(ttl, Some(std::time::Duration::ZERO));
        assert!(problems(
            "[[servers]]\nname = \"v\"\npath = \"/v\"\nlist_cache_ttl = \"soon\"\n\
             members = [{ server = \"search\" }]\n"
        )
        .contains("servers[2].list_cache_ttl"));
    }

    #[test]
    fn every_member_problem_is_named() {
        let err = problems(
            "[[servers]]\nname = \"v\"\npath = \"/v\"\nprefix_mode = \"sometimes\"\n\
             backends = [\"http://127.0.0.1:3/mcp\"]\n\
             members = [{ server = \"nope\" }, { prefix = \"x\" }, { server = \"v\" },\n\
             { server = \"search\", failure = \"maybe\", timeout = \"0s\" }, { server = \"search\" }]\n",
        );
        for needle in [
            "servers[2].prefix_mode: `sometimes`",
            "servers[2].backends: a virtual server",
            "servers[2].members[0].server: no [[servers]] group is named `nope`",
            "servers[2].members[1].server: missing",
            "servers[2].members[2].server: a virtual server cannot be its own member",
            "servers[2].members[3].failure: `maybe`",
            "servers[2].members[3].timeout: must be greater than zero",
            "servers[2].members[4].server: `search` is a member twice",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
    }

    #[test]
    fn unknown_member_keys_are_reported() {
        let err = problems(
            "[[servers]]\nname = \"v\"\npath = \"/v\"\n[[servers.members]]\nserver = \"search\"\n\
             tool = [\"a\"]\n[servers.members.overrides.a]\ntitel = \"A\"\n",
        );
        assert!(
            err.contains("servers[2].members[0].tool: unknown key (did you mean `tools`?)"),
            "{err}"
        );
        assert!(
            err.contains(
                "servers[2].members[0].overrides.a.titel: unknown key (did you mean `title`?)"
            ),
            "{err}"
        );
    }

    #[test]
    fn never_mode_refuses_names_two_members_surely_share() {
        let err = problems(
            "[[servers]]\nname = \"v\"\npath = \"/v\"\nprefix_mode = \"never\"\n\
             members = [{ server = \"search\", tools = [\"find\"] }, { server = \"files\", rename = { grep = \"find\" } }]\n",
        );
        assert!(
            err.contains("members `search` and `files` both show a tool named `find`"),
            "{err}"
        );
    }

    #[test]
    fn members_of_members_and_options_on_plain_groups_are_refused() {
        let err = problems(
            "[[servers]]\nname = \"v\"\npath = \"/v\"\nmembers = [{ server = \"search\" }]\n\
             [[servers]]\nname = \"w\"\npath = \"/w\"\nmembers = [{ server = \"v\" }]\n\
             [[servers]]\nname = \"p\"\npath = \"/p\"\nseparator = \"-\"\nbackends = [\"http://127.0.0.1:4/mcp\"]\n",
        );
        assert!(
            err.contains("servers[3].members[0].server: `v` is a virtual server itself"),
            "{err}"
        );
        assert!(
            err.contains("servers[4].separator: only used by a virtual server"),
            "{err}"
        );
    }
}
