//! The OAuth 2.0 protected-resource metadata document of a group (RFC 9728): validated and
//! rendered once at config time, and which group answers a well-known path.

use serde::Deserialize;

/// `[servers.auth.resource_metadata]` as written (unknown keys are collected by
/// `config::read`).
#[derive(Debug, Deserialize)]
pub(crate) struct RawMetadata {
    resource: Option<String>,
    authorization_servers: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
}

/// The OAuth 2.0 protected-resource metadata of a group (RFC 9728), rendered once.
#[derive(Debug)]
pub struct ResourceMetadata {
    /// The resource identifier: the URL clients use for this group.
    pub resource: String,
    /// Authorization servers that issue tokens for it.
    pub authorization_servers: Vec<String>,
    /// Scopes clients may ask for.
    pub scopes_supported: Vec<String>,
    /// Where the document is served (the `resource_metadata` hint of a 401).
    pub url: String,
    /// The well-known path it answers on (`/.well-known/oauth-protected-resource{path}`).
    pub path: String,
    /// The JSON document.
    pub document: String,
}

pub(super) fn validate(
    m: RawMetadata,
    key: &str,
    errs: &mut Vec<String>,
) -> Option<ResourceMetadata> {
    let resource = match m.resource {
        Some(r) if super::is_http_url(&r) && !r.contains('#') => r,
        Some(_) => {
            errs.push(format!(
                "{key}.resource: must be the absolute http(s) URL clients use for this group, without a fragment"
            ));
            return None;
        }
        None => {
            errs.push(format!(
                "{key}.resource: missing (the URL clients use, e.g. \"https://mcp.example.com/mcp\")"
            ));
            return None;
        }
    };
    let authorization_servers = m.authorization_servers.unwrap_or_default();
    if authorization_servers.is_empty() {
        errs.push(format!(
            "{key}.authorization_servers: at least one issuer URL is required"
        ));
    }
    for (i, a) in authorization_servers.iter().enumerate() {
        if !super::is_http_url(a) {
            errs.push(format!(
                "{key}.authorization_servers[{i}]: must be an http(s) URL"
            ));
        }
    }
    if let Some(d) = &m.resource_documentation {
        if !super::is_http_url(d) {
            errs.push(format!(
                "{key}.resource_documentation: must be an http(s) URL"
            ));
        }
    }
    // RFC 9728 §3.1: the well-known segment goes between the host and the resource's path.
    let after_scheme = resource.find("://").map_or(0, |i| i + 3);
    let (origin, rpath) = match resource[after_scheme..].find('/') {
        Some(i) => resource.split_at(after_scheme + i),
        None => (resource.as_str(), ""),
    };
    let rpath = rpath.split('?').next().unwrap_or("").trim_end_matches('/');
    let path = format!("/.well-known/oauth-protected-resource{rpath}");
    let url = format!("{origin}{path}");
    let scopes_supported = m.scopes_supported.unwrap_or_default();
    let mut doc = serde_json::json!({
        "resource": resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
    });
    if !scopes_supported.is_empty() {
        doc["scopes_supported"] = serde_json::json!(scopes_supported);
    }
    if let Some(n) = &m.resource_name {
        doc["resource_name"] = serde_json::json!(n);
    }
    if let Some(d) = &m.resource_documentation {
        doc["resource_documentation"] = serde_json::json!(d);
    }
    Some(ResourceMetadata {
        resource,
        authorization_servers,
        scopes_supported,
        url,
        path,
        document: doc.to_string(),
    })
}

/// How a `/.well-known/oauth-protected-resource...` request is answered.
pub enum MetadataAnswer<'a> {
    /// With this group's configured document.
    Document(&'a ResourceMetadata),
    /// With the document of a backend of this group (by index), relayed.
    Passthrough(usize),
}

/// Who answers a `/.well-known/oauth-protected-resource...` path: the group whose resource
/// path it names (the path-suffixed form; for pass-through groups, the group's own path), or,
/// for the bare form, the only group with metadata.
pub fn metadata_for<'a>(
    servers: &'a [crate::config::ServerGroup],
    path: &[u8],
) -> Option<MetadataAnswer<'a>> {
    const PREFIX: &[u8] = b"/.well-known/oauth-protected-resource";
    let answer = |(i, g): (usize, &'a crate::config::ServerGroup)| match &g.auth.metadata {
        Some(m) => Some(MetadataAnswer::Document(m)),
        None if g.auth.metadata_passthrough => Some(MetadataAnswer::Passthrough(i)),
        None => None,
    };
    let named = servers
        .iter()
        .enumerate()
        .find(|(_, g)| match &g.auth.metadata {
            Some(m) => m.path.as_bytes() == path,
            None => {
                g.auth.metadata_passthrough
                    && path.strip_prefix(PREFIX) == Some(g.path.trim_end_matches('/').as_bytes())
            }
        });
    if let Some(found) = named {
        return answer(found);
    }
    if path == PREFIX {
        let mut with = servers
            .iter()
            .enumerate()
            .filter(|(_, g)| g.auth.metadata.is_some() || g.auth.metadata_passthrough);
        if let (Some(only), None) = (with.next(), with.next()) {
            return answer(only);
        }
    }
    None
}

/// Whether a request path is under the protected-resource metadata prefix.
pub fn is_metadata_path(path: &[u8]) -> bool {
    path.starts_with(b"/.well-known/oauth-protected-resource")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_url_inserts_the_well_known_segment() {
        let mut errs = Vec::new();
        let m = validate(
            RawMetadata {
                resource: Some("https://mcp.example.com/tools/mcp".into()),
                authorization_servers: Some(vec!["https://auth.example.com".into()]),
                scopes_supported: None,
                resource_name: None,
                resource_documentation: None,
            },
            "k",
            &mut errs,
        );
        let Some(m) = m else { panic!("{errs:?}") };
        assert_eq!(
            m.url,
            "https://mcp.example.com/.well-known/oauth-protected-resource/tools/mcp"
        );
        assert_eq!(m.path, "/.well-known/oauth-protected-resource/tools/mcp");
    }
}
