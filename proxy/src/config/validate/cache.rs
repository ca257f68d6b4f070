//! `[servers.cache]`: the group's response cache (see `crate::cache`): its size per core, the
//! lifetime and scope of results without hints, whether answers inside backend sessions may be
//! shared, and which tools' results may be kept.

use std::time::Duration;

use crate::cache::{CacheConfig, Scope};
use crate::config::fields::{parse_duration, TableCheck};
use crate::config::raw::RawCache;

/// Per core, unless configured.
const DEFAULT_MAX_BYTES: usize = 16 << 20;

/// Validates the cache table of the group at `group` (`servers[N]`).
pub(super) fn validate(c: RawCache, group: &str, errs: &mut Vec<String>) -> CacheConfig {
    let mut t = TableCheck::new(format!("{group}.cache"), errs);
    let max_bytes = t.int("max_bytes", c.max_bytes, DEFAULT_MAX_BYTES, 4096..=1 << 40);
    // Zero is allowed here: it is the default (results without `ttlMs` are not kept).
    let default_ttl = match c.default_ttl.as_deref().map(parse_duration) {
        None => Duration::ZERO,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            t.problem("default_ttl", e);
            Duration::ZERO
        }
    };
    let default_scope = scope(&mut t, "default_scope", c.default_scope.as_deref());
    let share_sessions = match c.sessions.as_deref() {
        None | Some("public-only") => false,
        Some("share") => true,
        Some(v) => {
            t.problem(
                "sessions",
                format!("`{v}` (use \"public-only\" or \"share\")"),
            );
            false
        }
    };
    let tools = c.tools.unwrap_or_default();
    if tools.iter().any(String::is_empty) {
        t.problem("tools", "an empty entry (use \"*\" to match every tool)");
    }
    let tool_ttl = t.duration("tool_ttl", c.tool_ttl.as_deref(), Duration::from_secs(60));
    let tool_scope = scope(&mut t, "tool_scope", c.tool_scope.as_deref());
    CacheConfig {
        max_bytes,
        default_ttl,
        default_scope,
        share_sessions,
        tools: tools.into_iter().map(ratelimit::Glob::new).collect(),
        tool_ttl,
        tool_scope,
    }
}

fn scope(t: &mut TableCheck<'_>, key: &str, v: Option<&str>) -> Scope {
    match v {
        None | Some("private") => Scope::Private,
        Some("public") => Scope::Public,
        Some(v) => {
            t.problem(key, format!("`{v}` (use \"private\" or \"public\")"));
            Scope::Private
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::time::Duration;

    use crate::cache::Scope;
    use crate::config::Config;

    fn parse(cache: &str) -> Result<Config, Vec<String>> {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"g\"\n\
             backends = [\"http://127.0.0.1:9/mcp\"]\n[servers.health]\nenabled = false\n\
             [servers.cache]\n{cache}"
        );
        Config::parse(&text).map_err(|e| e.0)
    }

    #[test]
    fn cache_defaults_and_keys() {
        let c = parse("").expect("valid");
        let cache = c.servers[0].cache.as_deref().expect("cache");
        assert_eq!(cache.max_bytes, 16 << 20);
        assert_eq!(cache.default_ttl, Duration::ZERO, "off by default");
        assert_eq!(cache.default_scope, Scope::Private);
        assert!(!cache.share_sessions && cache.tools.is_empty());
        let c = parse(
            "max_bytes = 65536\ndefault_ttl = \"5s\"\ndefault_scope = \"public\"\n\
             sessions = \"share\"\ntools = [\"get_*\"]\ntool_ttl = \"2s\"\ntool_scope = \"public\"\n",
        )
        .expect("valid");
        let cache = c.servers[0].cache.as_deref().expect("cache");
        assert_eq!(cache.max_bytes, 65536);
        assert_eq!(cache.default_ttl, Duration::from_secs(5));
        assert_eq!(
            (cache.default_scope, cache.tool_scope),
            (Scope::Public, Scope::Public)
        );
        assert!(cache.share_sessions && cache.tools[0].matches("get_x"));
        assert_eq!(cache.tool_ttl, Duration::from_secs(2));
    }

    #[test]
    fn cache_problems_name_their_keys() {
        let errs = parse(
            "max_bytes = 10\ndefault_scope = \"all\"\nsessions = \"yes\"\ntools = [\"\"]\n\
             tool_ttl = \"0s\"\ndefault_ttl = \"soon\"\nmax_byte = 1\n",
        )
        .expect_err("invalid");
        for key in [
            "servers[0].cache.max_bytes",
            "servers[0].cache.default_scope",
            "servers[0].cache.sessions",
            "servers[0].cache.tools",
            "servers[0].cache.tool_ttl",
            "servers[0].cache.default_ttl",
            "servers[0].cache.max_byte",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(key)), "{key}: {errs:?}");
        }
    }
}
