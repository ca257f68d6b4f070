//! Configuration: TOML read into raw `serde` structs, then validated once, up front, into the
//! typed [`Config`] the workers use. Every problem is reported at once, each with its key path
//! (`servers[1].backends[0]: ...`): unknown keys (all of them, not only the first) and the
//! problems of every section, together.
//!
//! The files follow that path: `raw` (the file as written), `read` (TOML in, unknown keys
//! collected), `validate/` (one validator per section), `types` (the result), `fields`
//! (single values: durations, ranges, keys), `view` (the redacted JSON of `GET /config`).

mod fields;
mod raw;
mod read;
mod types;
mod validate;
pub mod view;

use std::fmt;
use std::path::Path;

pub use fields::parse_duration;
pub(crate) use fields::{decode_hex32, fnv1a32};
pub use types::{
    AuditArguments, AuditConfig, Backend, BackendEra, Balance, ClientAddress, ClusterConfig,
    ConcurrencyPer, ConcurrencyRule, Config, ForwardedHeader, ForwardedMode, HashKey, HealthCheck,
    LimitScope, Member, NameFilter, OnUnavailable, PrefixMode, ProxyConfig, ServerGroup,
    SessionFailover, TelemetryConfig, ToolOverride, TrustedProxies, VirtualServer,
    DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS_PER_IP, MAX_CLUSTER_LIMITS, MAX_CONCURRENCY_RULES,
    READ_ONLY_CHECKS,
};

/// The host of a `host:port` authority (brackets of an IPv6 address kept off).
pub fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !authority.ends_with(']') => h,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

/// `url` with any user and password replaced (for logs and `GET /config`).
pub fn redact_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
            format!("{scheme}://<redacted>@{host}")
        }
        _ => url.to_string(),
    }
}

/// Every problem found in a config file, each with its key path.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<String>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Config::parse(&text)
    }

    /// Parses and validates config text: the unknown keys are listed first, then the problems
    /// validation finds (or the TOML error that stopped reading).
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let (raw, mut errs) = read::read(text);
        let config = raw.and_then(|raw| validate::validate(raw, &mut errs));
        config.ok_or(ConfigErrors(errs))
    }

    /// Backend `bi` of group `gi`.
    pub fn backend(&self, gi: usize, bi: usize) -> Option<&Backend> {
        self.servers.get(gi)?.backends.get(bi)
    }
}

/// The admin port's address and token as a config file gives them, read without validating
/// the rest of the file (so no backend name is resolved): what `mcplb probe --config` needs to
/// reach the admin port of the mcplb that runs with the same file. Errors: the file is not
/// TOML of the config's shape, or `[admin]` has a problem.
pub fn admin_endpoint(
    text: &str,
) -> Result<(Option<std::net::SocketAddr>, Option<String>), ConfigErrors> {
    let (raw, errs) = read::read(text);
    let Some(raw) = raw else {
        return Err(ConfigErrors(errs));
    };
    let mut errs = Vec::new();
    let endpoint = validate::admin_endpoint(raw.admin.unwrap_or_default(), &mut errs);
    if errs.is_empty() {
        Ok(endpoint)
    } else {
        Err(ConfigErrors(errs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MINIMAL: &str = r#"
[proxy]
listen = "127.0.0.1:8080"
workers = 2

[admin]
listen = "127.0.0.1:9901"

[[servers]]
name = "demo"
path = "/mcp"
backends = ["http://127.0.0.1:3001/mcp", "http://127.0.0.1:3002/mcp"]
"#;

    #[test]
    fn minimal_readme_form_loads() {
        let c = Config::parse(MINIMAL).map_err(|e| e.to_string());
        let c = c.as_ref().map_err(|e| e.as_str());
        let Ok(c) = c else { panic!("{c:?}") };
        assert_eq!(c.proxy.workers, 2);
        assert_eq!(c.servers[0].backends.len(), 2);
        assert_eq!(c.servers[0].backends[1].authority, "127.0.0.1:3002");
        assert_eq!(c.servers[0].backends[1].path, "/mcp");
        assert_eq!(c.proxy.max_body_bytes, DEFAULT_MAX_BODY);
    }

    #[test]
    fn client_address_settings_are_checked() {
        let c = Config::parse(MINIMAL).map_err(|e| e.to_string());
        let Ok(c) = c else { panic!("{c:?}") };
        let ca = &c.proxy.client_address;
        assert_eq!(ca.forwarded, ForwardedMode::Append);
        assert_eq!(ca.header, ForwardedHeader::XForwardedFor);
        assert!(ca.trusted.is_empty() && !ca.proxy_protocol);
        assert_eq!(c.proxy.body_timeout, Duration::from_secs(10));
        assert_eq!(c.proxy.max_connections_per_ip, 256);

        let ok = MINIMAL.replace(
            "workers = 2",
            "workers = 2\nforwarded = \"replace\"\nforwarded_header = \"Forwarded\"\n\
             trusted_proxies = [\"10.1.2.3/8\", \"::1\"]\nproxy_protocol = true",
        );
        let c = Config::parse(&ok).map_err(|e| e.to_string());
        let Ok(c) = c else { panic!("{c:?}") };
        let ca = &c.proxy.client_address;
        assert_eq!(ca.forwarded, ForwardedMode::Replace);
        assert_eq!(ca.header, ForwardedHeader::Forwarded);
        assert!(ca.trusted.contains(
            "10.200.0.1"
                .parse()
                .unwrap_or(std::net::IpAddr::from([0; 4]))
        ));
        assert!(ca
            .trusted
            .contains(std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)));
        assert!(!ca.trusted.contains(std::net::IpAddr::from([11, 0, 0, 1])));

        let bad = MINIMAL.replace(
            "workers = 2",
            "workers = 2\nforwarded = \"sometimes\"\nforwarded_header = \"x-real-ip\"\n\
             trusted_proxies = [\"10.0.0.0/8\", \"lan\", \"10.0.0.0/33\"]\nbody_timeout = \"0s\"",
        );
        let Err(ConfigErrors(errs)) = Config::parse(&bad) else {
            panic!("should fail")
        };
        let all = errs.join("\n");
        for needle in [
            "proxy.forwarded: `sometimes`",
            "proxy.forwarded_header: `x-real-ip`",
            "proxy.trusted_proxies[1]: `lan`",
            "proxy.trusted_proxies[2]: `10.0.0.0/33`",
            "proxy.body_timeout",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
        let alone = MINIMAL.replace("workers = 2", "workers = 2\nproxy_protocol = true");
        let Err(ConfigErrors(errs)) = Config::parse(&alone) else {
            panic!("proxy_protocol without trusted_proxies should fail")
        };
        assert!(errs
            .join("\n")
            .contains("proxy.proxy_protocol: needs proxy.trusted_proxies"));
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let text = r#"
[proxy]
listen = "nope"
workers = 0
header_timeout = "10 parsecs"

[[servers]]
name = "a"
path = "mcp"
backends = ["ftp://x", { url = "http://127.0.0.1:1/x", name = "b" }, "http://127.0.0.1:1/x"]

[[servers]]
name = "a"
backends = []
"#;
        let Err(ConfigErrors(errs)) = Config::parse(text) else {
            panic!("should fail")
        };
        let all = errs.join("\n");
        for needle in [
            "proxy.listen",
            "proxy.workers",
            "proxy.header_timeout",
            "servers[0].path",
            "servers[0].backends[0]",
            "servers[0].backends[2]",
            "servers[1].name",
            "servers[1].backends",
        ] {
            assert!(all.contains(needle), "missing {needle} in:\n{all}");
        }
    }

    #[test]
    fn admin_endpoint_reads_only_the_admin_table() {
        // The backend's name is never looked up (`.invalid` resolves nowhere), and the
        // missing `proxy.listen` is not reported: only [admin] counts.
        let text =
            "[admin]\nlisten = \"0.0.0.0:9901\"\ntoken = \"t0k\"\n\n[[servers]]\nname = \"a\"\n\
                    path = \"/mcp\"\nbackends = [\"http://mcp-0.invalid:8000/mcp\"]\n";
        let got = admin_endpoint(text).map_err(|e| e.to_string());
        let Ok((listen, token)) = got else {
            panic!("{got:?}")
        };
        assert_eq!(listen, "0.0.0.0:9901".parse().ok());
        assert_eq!(token.as_deref(), Some("t0k"));
        let err = admin_endpoint("[admin]\nlisten = \"0.0.0.0:9901\"\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("admin.token"), "{err}");
        assert!(admin_endpoint("[admin\n").is_err());
        assert!(matches!(admin_endpoint(""), Ok((None, None))));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = Config::parse("[proxy]\nlisten=\"127.0.0.1:1\"\nlisten_typo=1\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("listen_typo"), "{err}");
    }

    #[test]
    fn health_check_methods_are_read_only() {
        let base = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n[servers.health]\n";
        let ok = Config::parse(&format!("{base}method = \"tools/list\"\n"));
        let method = ok
            .ok()
            .and_then(|c| c.servers[0].health.clone())
            .map(|h| h.method);
        assert_eq!(method.as_deref(), Some("tools/list"));
        let err = Config::parse(&format!("{base}method = \"tools/call\"\n"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("servers[0].health.method"), "{err}");
    }

    #[test]
    fn session_keys_are_checked_by_name() {
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        let with = |keys: &str| MINIMAL.replace("workers = 2", &format!("workers = 2\n{keys}"));
        let keys = |toml: &str| Config::parse(toml).map(|c| c.proxy.session_keys);
        assert_eq!(keys(MINIMAL).ok(), Some(Vec::new()));
        assert_eq!(
            keys(&with(&format!("session_key = \"{a}\""))).ok(),
            Some(vec![[0x11; 32]])
        );
        assert_eq!(
            keys(&with(&format!("session_keys = [\"{b}\", \"{a}\"]"))).ok(),
            Some(vec![[0x22; 32], [0x11; 32]])
        );
        let err = |toml: &str| keys(toml).err().map(|e| e.to_string()).unwrap_or_default();
        let both = err(&with(&format!(
            "session_key = \"{a}\"\nsession_keys = [\"{b}\"]"
        )));
        assert!(both.contains("proxy.session_keys: set one of"), "{both}");
        let empty = err(&with("session_keys = []"));
        assert!(empty.contains("proxy.session_keys: empty"), "{empty}");
        let bad = err(&with(&format!("session_keys = [\"{a}\", \"abcd\"]")));
        assert!(
            bad.contains("proxy.session_keys[1]: must be exactly 32 bytes"),
            "{bad}"
        );
        assert!(!bad.contains(&a), "{bad}");
        let many = vec![format!("\"{a}\""); 9].join(", ");
        let many = err(&with(&format!("session_keys = [{many}]")));
        assert!(
            many.contains("proxy.session_keys: 9 keys: at most 8"),
            "{many}"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("1 fortnight").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
