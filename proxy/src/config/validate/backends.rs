//! A group's `backends`: each entry is an HTTP(S) URL, a stdio `command` mcplb starts, or an
//! old-transport `sse` URL. The kinds differ only in how the backend is reached ([`Reached`]);
//! the tag, the duplicate check, the name and the [`Backend`] itself are made in one place.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use super::names::{self, GroupNames};
use crate::bridges::stdio::{StdioConfig, StdioMode};
use crate::config::fields::{fnv1a32, resolve, TableCheck};
use crate::config::raw::{RawBackend, RawBackendTable};
use crate::config::types::Backend;

/// Validates the backends of the group checked by `group` (`servers[N]`).
pub(super) fn validate(raw: Vec<RawBackend>, group: &mut TableCheck<'_>) -> Vec<Backend> {
    if raw.is_empty() {
        group.problem("backends", "at least one backend is required");
    }
    if raw.len() > usize::from(u16::MAX) {
        group.problem("backends", "too many backends");
    }
    let tables: Vec<RawBackendTable> = raw.into_iter().map(RawBackend::into_table).collect();
    let mut names = GroupNames::new(tables.iter().filter_map(|t| t.name.clone()));
    let key = group.key("backends");
    let mut backends: Vec<Backend> = Vec::new();
    for (j, table) in tables.into_iter().enumerate() {
        let mut t = TableCheck::new(format!("{key}[{j}]"), group.errs());
        if let Some(b) = backend(table, &mut t, &backends, &mut names) {
            backends.push(b);
        }
    }
    backends
}

/// How one entry is reached, whatever its kind.
struct Reached {
    /// What the tag is a hash of: the URL, `stdio:ARGV` or `sse:URL`.
    url: String,
    /// The entry as the "listed twice" message shows it.
    shown: String,
    /// The name when the entry gives none (made unique in the group by [`GroupNames`]).
    default_name: String,
    authority: String,
    addr: SocketAddr,
    path: String,
    stdio: Option<StdioConfig>,
    legacy_sse: Option<String>,
    tls: Option<Arc<crate::tls::UpstreamTls>>,
}

impl Reached {
    /// A backend reached through an in-process bridge, whose address fills `authority` and
    /// `addr` when mcplb starts.
    fn bridged(url: String, shown: String, default_name: String) -> Self {
        Reached {
            url,
            shown,
            default_name,
            authority: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            path: "/mcp".to_string(),
            stdio: None,
            legacy_sse: None,
            tls: None,
        }
    }
}

/// One entry into a [`Backend`], or `None` (problems recorded) when it cannot be one.
fn backend(
    mut table: RawBackendTable,
    t: &mut TableCheck<'_>,
    others: &[Backend],
    names: &mut GroupNames,
) -> Option<Backend> {
    let weight = t.int_u32("weight", table.weight, 1, 1..=10_000);
    let given_name = table.name.take();
    let mut r = reached(table, t)?;
    let tag = fnv1a32(r.url.as_bytes());
    if others.iter().any(|o| o.tag == tag) {
        t.problem("", format!("`{}` is listed twice", r.shown));
        return None;
    }
    let name = given_name.unwrap_or_else(|| names.claim(&r.default_name));
    if let Some(sc) = &mut r.stdio {
        sc.name = name.clone();
    }
    Some(Backend {
        name,
        url: r.url,
        authority: r.authority,
        addr: r.addr,
        path: r.path,
        weight,
        stdio: r.stdio,
        legacy_sse: r.legacy_sse,
        tag,
        tls: r.tls,
    })
}

/// The entry's kind (exactly one of `url`, `command`, `sse`) and how it is reached.
fn reached(mut table: RawBackendTable, t: &mut TableCheck<'_>) -> Option<Reached> {
    match (table.url.take(), table.command.take(), table.sse.take()) {
        (Some(url), None, None) => {
            command_only_keys(&table, t);
            http(url, &table, t)
        }
        (None, Some(command), None) => {
            https_only_keys(&table, t);
            stdio(command, table, t)
        }
        (None, None, Some(sse)) => {
            command_only_keys(&table, t);
            https_only_keys(&table, t);
            legacy_sse(sse, t)
        }
        (None, None, None) => {
            t.problem("", "needs `url`, `command` or `sse`");
            None
        }
        _ => {
            t.problem("", "give only one of `url`, `command` or `sse`");
            None
        }
    }
}

/// `ca`, `client_cert` and `client_key` where the backend is not `https://`.
fn https_only_keys(table: &RawBackendTable, t: &mut TableCheck<'_>) {
    for (k, set) in [
        ("ca", table.ca.is_some()),
        ("client_cert", table.client_cert.is_some()),
        ("client_key", table.client_key.is_some()),
    ] {
        if set {
            t.problem(k, "only for https:// backends");
        }
    }
}

/// The process options where the backend is not a `command`.
fn command_only_keys(table: &RawBackendTable, t: &mut TableCheck<'_>) {
    for (k, set) in [
        ("mode", table.mode.is_some()),
        ("env", table.env.is_some()),
        ("cwd", table.cwd.is_some()),
        ("min", table.min.is_some()),
        ("max", table.max.is_some()),
        ("max_line_bytes", table.max_line_bytes.is_some()),
    ] {
        if set {
            t.problem(k, "only for `command` backends");
        }
    }
}

/// `url = "http://..."` or `"https://..."`: resolved now; an https backend's TLS client
/// config is built now too, so a bad CA or client certificate is a config error.
fn http(url: String, table: &RawBackendTable, t: &mut TableCheck<'_>) -> Option<Reached> {
    let u = parse_backend_url(&url).map_err(|e| t.problem("", e)).ok()?;
    let tls = match &u.tls_host {
        None => {
            https_only_keys(table, t);
            None
        }
        Some(host) => match crate::tls::UpstreamTls::build(
            host,
            table.ca.as_deref().map(Path::new),
            table.client_cert.as_deref().map(Path::new),
            table.client_key.as_deref().map(Path::new),
        ) {
            Ok(tls) => Some(Arc::new(tls)),
            Err(e) => {
                t.problem("", e);
                None
            }
        },
    };
    Some(Reached {
        shown: url.clone(),
        default_name: u.authority.clone(),
        url,
        authority: u.authority,
        addr: u.addr,
        path: u.path,
        stdio: None,
        legacy_sse: None,
        tls,
    })
}

/// `command = [...]`: a stdio server mcplb starts and supervises.
fn stdio(command: Vec<String>, table: RawBackendTable, t: &mut TableCheck<'_>) -> Option<Reached> {
    if command.first().is_none_or(String::is_empty) {
        t.problem("command", "must name a program");
        return None;
    }
    let mode = match table.mode.as_deref() {
        None | Some("per-session") => StdioMode::PerSession,
        Some("shared") => StdioMode::Shared,
        Some(m) => {
            t.problem("mode", format!("`{m}` (use \"per-session\" or \"shared\")"));
            StdioMode::PerSession
        }
    };
    let label = command.join(" ");
    let default_name = names::for_command(&command);
    // The name is set with the backend's (see `backend`).
    let mut sc = StdioConfig::new(String::new(), command, mode);
    sc.env = table.env.unwrap_or_default().into_iter().collect();
    sc.cwd = table.cwd.map(std::path::PathBuf::from);
    sc.min = t.int("min", table.min, sc.min, 0..=1024);
    sc.max = t.int("max", table.max, sc.max, 1..=65_536);
    if sc.min > sc.max {
        t.problem("min", format!("{} is above max {}", sc.min, sc.max));
    }
    sc.max_line_bytes = t.int(
        "max_line_bytes",
        table.max_line_bytes,
        sc.max_line_bytes,
        1024..=1 << 30,
    );
    let mut r = Reached::bridged(format!("stdio:{label}"), label, default_name);
    r.stdio = Some(sc);
    Some(r)
}

/// `sse = "http://..."`: a 2024-11-05 HTTP+SSE server, reached through a bridge.
fn legacy_sse(sse: String, t: &mut TableCheck<'_>) -> Option<Reached> {
    match parse_backend_url(&sse) {
        Err(e) => {
            t.problem("sse", e);
            return None;
        }
        Ok(u) if u.tls_host.is_some() => {
            t.problem(
                "sse",
                format!("`{sse}`: https is not supported for old SSE servers; use http://"),
            );
            return None;
        }
        Ok(_) => {}
    }
    let mut r = Reached::bridged(format!("sse:{sse}"), sse.clone(), sse.clone());
    r.legacy_sse = Some(sse);
    Some(r)
}

/// A backend URL split up.
struct BackendUrl {
    authority: String,
    addr: SocketAddr,
    path: String,
    /// `https://`: the host (SNI and the certificate's name).
    tls_host: Option<String>,
}

/// Splits `http://host:port/path` or `https://...` into its parts.
fn parse_backend_url(url: &str) -> Result<BackendUrl, String> {
    let (rest, tls, default_port) = if let Some(r) = url.strip_prefix("http://") {
        (r, false, 80)
    } else if let Some(r) = url.strip_prefix("https://") {
        (r, true, 443)
    } else {
        return Err(format!("`{url}` must start with http:// or https://"));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(format!("`{url}` has no host"));
    }
    if authority.contains('@') {
        return Err(format!(
            "`{url}`: credentials in backend URLs are not supported"
        ));
    }
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = resolve(&with_port)?;
    let tls_host = tls.then(|| {
        with_port
            .rsplit_once(':')
            .map_or(with_port.as_str(), |(h, _)| h)
            .to_string()
    });
    Ok(BackendUrl {
        authority: authority.to_string(),
        addr,
        path: path.to_string(),
        tls_host,
    })
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn names(backends: &str) -> Vec<String> {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"g\"\nbackends = [{backends}]\n\
             [servers.health]\nenabled = false\n"
        );
        match Config::parse(&text) {
            Ok(c) => c.servers[0]
                .backends
                .iter()
                .map(|b| b.name.clone())
                .collect(),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn stdio_backends_get_distinct_default_names() {
        let got = names(
            r#"{ command = ["python3", "-m", "a"] }, { command = ["python3", "-m", "b"] },
               { command = ["python3", "server.py", "--x"] }, { command = ["python3", "server.py"] },
               { command = ["uvx", "mcp-server-fetch"] }"#,
        );
        assert_eq!(got, ["a", "b", "server", "server-2", "mcp-server-fetch"]);
    }

    #[test]
    fn the_stdio_bridge_is_named_like_its_backend() {
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"g\"\n\
                    backends = [{ command = [\"cat\"] }, { command = [\"cat\", \"-u\"] }]\n";
        let c = Config::parse(text).map_err(|e| e.to_string());
        let names: Vec<(String, String)> = c
            .iter()
            .flat_map(|c| &c.servers[0].backends)
            .map(|b| {
                (
                    b.name.clone(),
                    b.stdio.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("cat".into(), "cat".into()),
                ("cat-2".into(), "cat-2".into())
            ]
        );
    }

    #[test]
    fn a_default_name_never_takes_a_given_one() {
        let got = names(
            r#"{ command = ["cat"] }, { url = "http://127.0.0.1:1/a" },
               { url = "http://127.0.0.1:1/b" }, { command = ["cat", "-u"], name = "cat" },
               { sse = "http://127.0.0.1:2/sse", name = "old" }"#,
        );
        assert_eq!(got, ["cat-2", "127.0.0.1:1", "127.0.0.1:1-2", "cat", "old"]);
    }

    #[test]
    fn process_options_on_an_sse_backend_are_refused() {
        let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"g\"\n\
                    backends = [{ sse = \"http://127.0.0.1:2/sse\", min = 1 }]\n";
        let err = Config::parse(text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("servers[0].backends[0].min: only for `command` backends"),
            "{err}"
        );
    }
}
