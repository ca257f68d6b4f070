//! The target of a load run: an `http://host:port/path` URL (HTTP/1.1 and HTTP/2 runs) or an
//! `https://` one (`mcplb-load h3`), read by one parser whose scheme says the default port.

use std::net::{SocketAddr, ToSocketAddrs};

/// The scheme a run's URL must have, and the port it implies when none is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`, port 80.
    Http,
    /// `https://`, port 443.
    Https,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Scheme::Http => "http://",
            Scheme::Https => "https://",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `scheme://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` (the port written or the scheme's default; an IPv6 host in brackets): the
    /// `Host` header or the `:authority`.
    pub authority: String,
    /// The host without its port or brackets: the name to resolve, and TLS's server name.
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses an `http://` URL (no TLS). The port defaults to 80.
    pub fn parse(url: &str) -> anyhow::Result<HttpUrl> {
        Self::parse_as(Scheme::Http, url)
    }

    /// Parses a URL of `scheme`: `host` a name, an IPv4 address or an IPv6 address in
    /// brackets; no user information.
    pub fn parse_as(scheme: Scheme, url: &str) -> anyhow::Result<HttpUrl> {
        let rest = url.strip_prefix(scheme.prefix()).ok_or_else(|| {
            anyhow::anyhow!("only {} URLs are supported here: {url}", scheme.prefix())
        })?;
        let (auth, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
        let (host, port) = if let Some(inside) = auth.strip_prefix('[') {
            // `[v6]` or `[v6]:port`.
            let (host, after) = inside
                .split_once(']')
                .ok_or_else(|| anyhow::anyhow!("URL's IPv6 host has no closing ']': {url}"))?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                anyhow::bail!("URL's host in brackets is not an IPv6 address: {url}");
            }
            match after {
                "" => (host, None),
                _ => match after.strip_prefix(':') {
                    Some(port) => (host, Some(port)),
                    None => anyhow::bail!("URL has bytes after its IPv6 host: {url}"),
                },
            }
        } else {
            let (host, port) = match auth.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (auth, None),
            };
            if let Some(bad) = host.chars().find(|c| "@?#[]".contains(*c)) {
                anyhow::bail!("URL's host has a '{bad}' (IPv6 addresses go in brackets): {url}");
            }
            (host, port)
        };
        if host.is_empty() {
            anyhow::bail!("URL has no host: {url}");
        }
        let port = match port {
            None => scheme.default_port(),
            Some(p) => p
                .parse::<u16>()
                .map_err(|_| anyhow::anyhow!("URL's port is not a number to 65535: {url}"))?,
        };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        Ok(HttpUrl {
            authority: format!("{bracketed}:{port}"),
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// Resolves the host to a socket address (first result).
    pub fn resolve(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("{} resolves to no address", self.host))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn scheme_of(url: &str) -> Scheme {
        if url.starts_with("https://") {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }

    #[test]
    fn hosts_ports_and_paths() {
        // The URL, then what it reads as: authority, host, port, path.
        let cases = [
            "http://127.0.0.1:8080/mcp 127.0.0.1:8080 127.0.0.1 8080 /mcp",
            "http://localhost localhost:80 localhost 80 /",
            "https://localhost localhost:443 localhost 443 /",
            "https://127.0.0.1:8443/mcp 127.0.0.1:8443 127.0.0.1 8443 /mcp",
            "http://[::1]:9/a/b?c=d [::1]:9 ::1 9 /a/b?c=d",
            "http://[::1]/ [::1]:80 ::1 80 /",
            "https://[::1] [::1]:443 ::1 443 /",
            "https://[fe80::1:2]:65535/x [fe80::1:2]:65535 fe80::1:2 65535 /x",
        ];
        for case in cases {
            let want: Vec<&str> = case.split(' ').collect();
            let u = HttpUrl::parse_as(scheme_of(want[0]), want[0]).unwrap();
            let port = u.port.to_string();
            let got = [u.authority.as_str(), &u.host, &port, &u.path];
            assert_eq!(got[..], want[1..], "{case}");
        }
        let addr = HttpUrl::parse("http://[::1]:1/")
            .and_then(|u| u.resolve())
            .ok();
        assert_eq!(
            addr,
            Some(SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 1)))
        );
    }

    #[test]
    fn bad_urls_are_errors() {
        use Scheme::{Http, Https};
        let bad = [
            (Http, "https://x/mcp"),
            (Https, "http://127.0.0.1:1/mcp"),
            (Https, "https://:1/mcp"),
            (Http, "http://"),
            (Http, "http:///mcp"),
            (Http, "http://[]:80/"),
            (Http, "http://[::1/mcp"),
            (Http, "http://[::1]x/mcp"),
            (Http, "http://[::1]:/mcp"),
            (Http, "http://[example.com]/"),
            (Http, "http://::1:80/"),
            (Http, "http://host:99999/"),
            (Http, "http://host:-1/"),
            (Http, "http://host:8a/"),
            (Http, "http://user@host/"),
            (Http, "http://host?x/"),
            (Https, "HTTPS://host/"),
            (Https, ""),
        ];
        for (scheme, url) in bad {
            assert!(HttpUrl::parse_as(scheme, url).is_err(), "{url} parsed");
        }
    }

    #[test]
    fn any_bytes_parse_or_fail_without_a_panic() {
        // Every URL of four of these pieces, for both schemes: an error, or a URL that reads
        // the same again when written from its authority and path.
        let pieces = [
            "https://", "http://", "[", "]", ":", "::1", "/", "8080", "h", "@", "",
        ];
        for a in pieces {
            for b in pieces {
                for c in pieces {
                    for d in pieces {
                        let url = format!("{a}{b}{c}{d}");
                        for scheme in [Scheme::Http, Scheme::Https] {
                            if let Ok(u) = HttpUrl::parse_as(scheme, &url) {
                                assert!(u.path.starts_with('/') && !u.host.is_empty(), "{url}");
                                let again = format!("{}{}{}", scheme.prefix(), u.authority, u.path);
                                assert_eq!(HttpUrl::parse_as(scheme, &again).ok(), Some(u));
                            }
                        }
                    }
                }
            }
        }
    }
}
