//! The target of a load run: a plain `http://host:port/path` URL.

/// A parsed `http://host:port/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `host:port` as written (used for the `Host` header and to resolve).
    pub authority: String,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses a plain `http://` URL (no TLS). The port defaults to 80.
    pub fn parse(url: &str) -> anyhow::Result<HttpUrl> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow::anyhow!("only http:// URLs are supported: {url}"))?;
        let (auth, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if auth.is_empty() {
            anyhow::bail!("URL has no host: {url}");
        }
        let has_port = if auth.starts_with('[') {
            auth.contains("]:")
        } else {
            auth.contains(':')
        };
        let authority = if has_port {
            auth.to_string()
        } else {
            format!("{auth}:80")
        };
        Ok(HttpUrl {
            authority,
            path: path.to_string(),
        })
    }

    /// Resolves the authority to a socket address (first result).
    pub fn resolve(&self) -> anyhow::Result<std::net::SocketAddr> {
        use std::net::ToSocketAddrs;
        self.authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| anyhow::anyhow!("cannot resolve {}", self.authority))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://127.0.0.1:8080/mcp").ok();
        assert_eq!(
            u,
            Some(HttpUrl {
                authority: "127.0.0.1:8080".into(),
                path: "/mcp".into()
            })
        );
        assert!(HttpUrl::parse("https://x/mcp").is_err());
        let u = HttpUrl::parse("http://localhost").ok().map(|u| u.authority);
        assert_eq!(u.as_deref(), Some("localhost:80"));
    }
}
