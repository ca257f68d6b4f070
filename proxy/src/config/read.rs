//! Reading TOML text into the raw structs. Every key the structs do not know is collected
//! with its key path (`serde_ignored` sees each key serde skips), instead of stopping at the
//! first as `deny_unknown_fields` would: a file with three typos is fixed in one round. Each
//! unknown key is reported with the closest known key of its table, or the table's keys.

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde_ignored::Path;

use super::raw::{
    RawAdmin, RawAudit, RawBackendTable, RawConcurrency, RawConfig, RawHealth, RawHttp2, RawHttp3,
    RawLimit, RawMember, RawPolicy, RawProxy, RawServer, RawTelemetry, RawTls, RawToolOverride,
};

/// The raw config (or `None` when the text is not TOML of the expected shape) and the
/// problems found while reading: every unknown key, then the TOML error if there was one.
pub(super) fn read(text: &str) -> (Option<RawConfig>, Vec<String>) {
    let doc = match toml::Deserializer::parse(text) {
        Ok(doc) => doc,
        Err(e) => return (None, vec![toml_error(&e, text)]),
    };
    let mut problems = Vec::new();
    // The path of a value of the wrong type is tracked as the raw structs are read, so the
    // error names its key as the validators' messages do.
    let mut track = serde_path_to_error::Track::new();
    let tracked = serde_path_to_error::Deserializer::new(doc, &mut track);
    let raw = serde_ignored::deserialize(tracked, |path| problems.push(unknown_key(&path)));
    match raw {
        Ok(raw) => (Some(raw), problems),
        Err(e) => {
            let path = track.path().to_string();
            problems.push(type_error(&e, text, &path));
            (None, problems)
        }
    }
}

/// A syntax error, with its line.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    format!("TOML: {}{}", e.message(), line_of(e, text))
}

/// ` (line N)` for where `e` happened, if it says.
fn line_of(e: &toml::de::Error, text: &str) -> String {
    e.span()
        .map(|s| {
            let line = text.get(..s.start).map_or(0, |p| p.matches('\n').count()) + 1;
            format!(" (line {line})")
        })
        .unwrap_or_default()
}

/// A value of the wrong shape (`confirm_destructive = "yes"`), named by its key path
/// (`servers[0].confirm_destructive: invalid type: ...`); `path`: where the reading stopped
/// (`.` when at the top).
fn type_error(e: &toml::de::Error, text: &str, path: &str) -> String {
    let message = e.message().trim_end();
    if path.is_empty() || path == "." {
        return format!("TOML: {message}{}", line_of(e, text));
    }
    format!("{path}: {message}{}", line_of(e, text))
}

/// `servers[1].backends[0].nmae: unknown key (did you mean `name`?)`.
fn unknown_key(path: &Path<'_>) -> String {
    let mut shown = String::new();
    write_path(path, &mut shown, true);
    let (table, key) = match path {
        Path::Map { parent, key } => {
            let mut table = String::new();
            write_path(parent, &mut table, false);
            (table, key.as_str())
        }
        _ => (String::new(), ""),
    };
    let known = known_keys(&table);
    // A typo (a letter or two off, or swapped) or a known key cut short or run on.
    let near = |k: &str| {
        strsim::osa_distance(k, key) <= (key.len() / 3).max(1)
            || (k.len().min(key.len()) >= 3 && (k.starts_with(key) || key.starts_with(k)))
    };
    let closest = known
        .iter()
        .filter(|k| near(k))
        .min_by_key(|k| strsim::osa_distance(k, key));
    match closest {
        Some(k) => format!("{shown}: unknown key (did you mean `{k}`?)"),
        None if known.is_empty() => format!("{shown}: unknown key"),
        None => format!("{shown}: unknown key (keys here: {})", known.join(", ")),
    }
}

/// Writes a path as the config's messages name keys (`servers[1].health`); without
/// `indices`, as the table's place in the schema (`servers.health`).
fn write_path(path: &Path<'_>, out: &mut String, indices: bool) {
    match path {
        Path::Root => {}
        Path::Seq { parent, index } => {
            write_path(parent, out, indices);
            if indices {
                out.push_str(&format!("[{index}]"));
            }
        }
        Path::Map { parent, key } => {
            write_path(parent, out, indices);
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(key);
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => write_path(parent, out, indices),
    }
}

/// The keys of the table at `table` (indices left out), or none for a place with no table.
fn known_keys(table: &str) -> &'static [&'static str] {
    match table {
        "" => keys_of::<RawConfig>(),
        "proxy" => keys_of::<RawProxy>(),
        "proxy.tls" => keys_of::<RawTls>(),
        "proxy.http2" => keys_of::<RawHttp2>(),
        "proxy.http3" => keys_of::<RawHttp3>(),
        "admin" => keys_of::<RawAdmin>(),
        "servers" => keys_of::<RawServer>(),
        "servers.backends" => keys_of::<RawBackendTable>(),
        "servers.health" => keys_of::<RawHealth>(),
        "servers.cache" => keys_of::<super::raw::RawCache>(),
        "servers.members" => keys_of::<RawMember>(),
        t if t.starts_with("servers.members.overrides.") => keys_of::<RawToolOverride>(),
        "servers.auth" => keys_of::<crate::auth::RawAuth>(),
        "servers.auth.jwt" => keys_of::<crate::auth::RawJwt>(),
        "servers.auth.jwt.failure_budget" => keys_of::<crate::auth::RawBudget>(),
        "servers.auth.resource_metadata" => keys_of::<crate::auth::RawMetadata>(),
        "servers.auth.upstream_authorization" => keys_of::<crate::auth::RawSecret>(),
        "limits" => keys_of::<RawLimit>(),
        "concurrency" => keys_of::<RawConcurrency>(),
        "cluster" => keys_of::<super::raw::RawCluster>(),
        "policies" => keys_of::<RawPolicy>(),
        "audit" => keys_of::<RawAudit>(),
        "servers.auth.api_keys" => keys_of::<crate::auth::RawApiKeyTable>(),
        "telemetry" => keys_of::<RawTelemetry>(),
        _ => &[],
    }
}

/// The keys a raw struct accepts, as serde's derive lists them: it hands the list to
/// `deserialize_struct`, where this deserializer takes it and stops.
fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    struct Keys<'k>(&'k mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Keys<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a table"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("keys taken"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut keys: &'static [&'static str] = &[];
    let _ = T::deserialize(Keys(&mut keys));
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        read(text).1
    }

    #[test]
    fn every_unknown_key_is_listed_with_its_path() {
        let text = r#"
nonsense = 1
[proxy]
listen = "127.0.0.1:0"
listn = "x"
[proxy.tls]
certs = "a.pem"
[admin]
tokn = "t"
[[servers]]
name = "a"
backends = ["http://127.0.0.1:1/mcp", { url = "http://127.0.0.1:2/mcp", nmae = "b" }]
[servers.health]
intervall = "1s"
[servers.auth]
api_key = []
[servers.auth.jwt]
issuer = "i"
audiance = "x"
[[limits]]
rate = 1
per = "x"
[[concurrency]]
max = 1
que = 2
"#;
        let got = problems(text);
        let want = [
            "nonsense: unknown key (keys here: proxy, admin, servers, limits, concurrency, cluster, policies, audit, telemetry)",
            "proxy.listn: unknown key (did you mean `listen`?)",
            "proxy.tls.certs: unknown key (did you mean `cert`?)",
            "admin.tokn: unknown key (did you mean `token`?)",
            "servers[0].backends[1].nmae: unknown key (did you mean `name`?)",
            "servers[0].health.intervall: unknown key (did you mean `interval`?)",
            "servers[0].auth.api_key: unknown key (did you mean `api_keys`?)",
            "servers[0].auth.jwt.audiance: unknown key (did you mean `audience`?)",
            "limits[0].per: unknown key (keys here: server, method, tool, resource_prefix, key, rate, burst, scope, on_unavailable)",
            "concurrency[0].que: unknown key (did you mean `queue`?)",
        ];
        for w in want {
            assert!(got.iter().any(|g| g == w), "missing {w:?} in {got:#?}");
        }
        assert_eq!(got.len(), want.len(), "{got:#?}");
    }

    #[test]
    fn a_far_off_key_lists_the_table_keys() {
        let got = problems("[admin]\nlisten = \"127.0.0.1:0\"\ncompletely_different = 1\n");
        assert_eq!(
            got,
            ["admin.completely_different: unknown key (keys here: listen, token)"]
        );
    }

    #[test]
    fn every_table_knows_its_keys() {
        for table in [
            "",
            "proxy",
            "proxy.tls",
            "proxy.http2",
            "proxy.http3",
            "admin",
            "servers",
            "servers.backends",
            "servers.health",
            "servers.members",
            "servers.members.overrides.some_tool",
            "servers.auth",
            "servers.auth.jwt",
            "servers.auth.resource_metadata",
            "servers.auth.upstream_authorization",
            "limits",
            "concurrency",
            "policies",
            "audit",
            "servers.auth.api_keys",
            "telemetry",
        ] {
            assert!(!known_keys(table).is_empty(), "{table:?}");
        }
        assert!(keys_of::<RawProxy>().contains(&"max_connections_per_ip"));
    }

    #[test]
    fn a_type_error_comes_with_the_unknown_keys_before_it() {
        let (raw, got) = read("[proxy]\nlistn = 1\nworkers = \"two\"\n");
        assert!(raw.is_none());
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], "proxy.listn: unknown key (did you mean `listen`?)");
        assert!(
            got[1].starts_with("proxy.workers: invalid type: string \"two\"")
                && got[1].ends_with("(line 3)"),
            "{got:?}"
        );
    }

    #[test]
    fn type_errors_name_their_key_path() {
        for (text, want) in [
            (
                "[[servers]]\nname = \"a\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\nconfirm_destructive = \"yes\"\n",
                "servers[0].confirm_destructive: invalid type: string \"yes\", expected a boolean (line 4)",
            ),
            (
                "[[servers]]\nname = \"a\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n[[servers]]\nname = \"b\"\nbackends = [{ url = 3 }]\n",
                "servers[1].backends[0].url: invalid type: integer `3`, expected a string",
            ),
            (
                "[[policies]]\neffect = \"allow\"\ntools = \"*\"\n",
                "policies[0].tools: invalid type: string \"*\", expected a sequence",
            ),
        ] {
            let (raw, got) = read(text);
            assert!(raw.is_none());
            assert!(
                got.len() == 1 && got[0].starts_with(want),
                "{got:?} should start with {want:?}"
            );
        }
        // A syntax error has no key path.
        let (_, got) = read("[proxy\n");
        assert!(got[0].starts_with("TOML: "), "{got:?}");
    }

    #[test]
    fn env_tables_take_any_key() {
        let text = "[[servers]]\nname = \"a\"\nbackends = [{ command = [\"cat\"], env = { ANY_NAME = \"1\" } }]\n";
        assert_eq!(problems(text), Vec::<String>::new());
    }
}
