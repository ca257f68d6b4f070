//! Who gets in, per server group: API keys (SHA-256 digests in the config, compared in constant
//! time) and JWT bearer tokens verified locally against a JWKS (a file read at start, or a URL
//! fetched at start and refreshed in the background); the OAuth protected-resource metadata
//! document (RFC 9728) and the `WWW-Authenticate` challenges MCP clients start their OAuth flow
//! from; and which credential, if any, goes upstream.
//!
//! A verified token is cached on the core that verified it (thread-local: nothing shared
//! between cores), bounded, keyed by a 128-bit keyed hash of the token, until it expires; a
//! client that re-sends the same token pays a hash and a lookup, not a signature check.
//! A key set change (refresh) invalidates the cache.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;

// ---------------------------------------------------------------- raw config

/// `[servers.auth]` as written. Unknown keys are not refused here but collected, every one,
/// when the file is read (`config::read`), which also lists the keys of these tables.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAuth {
    api_keys: Option<Vec<String>>,
    jwt: Option<RawJwt>,
    resource_metadata: Option<RawMetadata>,
    resource_metadata_passthrough: Option<bool>,
    forward_authorization: Option<bool>,
    upstream_authorization: Option<RawSecret>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawJwt {
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    jwks_file: Option<String>,
    jwks_url: Option<String>,
    jwks_ca: Option<String>,
    algorithms: Option<Vec<String>>,
    leeway: Option<String>,
    refresh: Option<String>,
    min_refresh: Option<String>,
    identity_claim: Option<String>,
    required_scopes: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawMetadata {
    resource: Option<String>,
    authorization_servers: Option<Vec<String>>,
    scopes_supported: Option<Vec<String>>,
    resource_name: Option<String>,
    resource_documentation: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RawSecret {
    env: Option<String>,
    file: Option<String>,
}

// ---------------------------------------------------------------- typed config

/// A secret read from the environment or a file; never printed (`Debug` says `<redacted>`).
#[derive(Clone)]
pub struct Secret(Arc<str>);

impl Secret {
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Which credential a backend receives in `Authorization`.
#[derive(Debug, Clone)]
pub enum UpstreamCredential {
    /// None: the caller's `Authorization` and `X-Api-Key` are removed (the default for groups
    /// where mcplb checks credentials: no token passthrough).
    Strip,
    /// The caller's headers, unchanged (the default for groups without `[servers.auth]`, where
    /// the backend does its own authentication).
    Forward,
    /// The configured value replaces whatever the caller sent.
    Inject(Secret),
}

/// Where an upstream credential came from (for `/config`; the value is never shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable, by name.
    Env(String),
    /// A file, by path.
    File(String),
}

/// `[servers.auth]`, validated.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// SHA-256 digests of the API keys this group accepts (`Authorization: Bearer KEY` or
    /// `X-Api-Key: KEY`).
    pub api_key_digests: Vec<[u8; 32]>,
    /// JWT bearer tokens, when configured.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// The protected-resource metadata document served for this group, when configured.
    pub metadata: Option<Arc<ResourceMetadata>>,
    /// Relay the protected-resource metadata document from a backend (for backends that do
    /// their own OAuth) instead of serving one.
    pub metadata_passthrough: bool,
    /// What goes upstream in `Authorization`.
    pub upstream: UpstreamCredential,
    /// Where an injected upstream credential was read from.
    pub upstream_source: Option<SecretSource>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_key_digests: Vec::new(),
            jwt: None,
            metadata: None,
            metadata_passthrough: false,
            upstream: UpstreamCredential::Forward,
            upstream_source: None,
        }
    }
}

impl AuthConfig {
    /// Whether callers must present a credential.
    pub fn required(&self) -> bool {
        !self.api_key_digests.is_empty() || self.jwt.is_some()
    }
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

/// Where a group's JWKS comes from.
#[derive(Clone)]
pub enum JwksSource {
    /// A file, read at start.
    File(String),
    /// A URL, fetched at start and every `refresh`.
    Url(String),
}

impl fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksSource::File(p) => write!(f, "File({p:?})"),
            JwksSource::Url(u) => write!(f, "Url({:?})", redact_url(u)),
        }
    }
}

/// One verification key from a JWKS.
struct Key {
    kid: Option<String>,
    alg: Option<Algorithm>,
    family: AlgorithmFamily,
    key: DecodingKey,
}

/// The keys in use, replaced whole on refresh.
struct KeySet {
    keys: Vec<Key>,
    /// Changes whenever the keys change: cached verdicts of another generation are dropped.
    generation: u64,
    /// Fingerprint of the JWKS text, to tell a refresh that changed nothing.
    digest: [u8; 32],
}

/// Verifies JWT bearer tokens for one group. Shared by every core: its key set is swapped
/// whole (lock-free reads); its verdicts are cached per core.
pub struct JwtVerifier {
    id: u64,
    /// Accepted `iss`.
    pub issuer: String,
    /// Accepted `aud` values (any one must be in the token's).
    pub audience: Vec<String>,
    /// Accepted signature algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
    /// The claim that names the caller (default `sub`).
    pub identity_claim: String,
    /// Scopes a token must carry (403 `insufficient_scope` otherwise).
    pub required_scopes: Vec<String>,
    /// Where the keys come from.
    pub source: JwksSource,
    /// How often a JWKS URL is fetched again.
    pub refresh: Duration,
    /// Least time between two fetches (an unknown `kid` asks for one early).
    pub min_refresh: Duration,
    /// For an `https://` JWKS URL: the CA file its certificate must chain to (`jwks_ca`), and
    /// the certificates read from it; `None`: the system roots.
    pub jwks_ca: Option<(String, Vec<rustls_pki_types::CertificateDer<'static>>)>,
    validations: Vec<(Algorithm, Validation)>,
    keys: ArcSwap<KeySet>,
    /// A token named a key the set lacks: fetch early (rate-limited by `min_refresh`).
    kid_miss: AtomicBool,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("algorithms", &self.algorithms)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

static NEXT_VERIFIER: AtomicU64 = AtomicU64::new(1);
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

/// Signature algorithms a verifier may accept (public-key only: HMAC is never accepted, so a
/// public key can never be used as an HMAC secret).
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

// ---------------------------------------------------------------- validation

/// Validates `[servers.auth]` into an [`AuthConfig`], pushing every problem with its key path.
/// A `jwks_file` is read here (a bad one is a config error); a `jwks_url` is fetched by
/// [`start_refresh`].
pub(crate) fn validate(raw: Option<RawAuth>, key: &str, errs: &mut Vec<String>) -> AuthConfig {
    let Some(raw) = raw else {
        return AuthConfig::default();
    };
    let key = format!("{key}.auth");
    let mut api_key_digests = Vec::new();
    if let Some(keys) = raw.api_keys {
        if keys.is_empty() {
            errs.push(format!(
                "{key}.api_keys: empty list (remove it to accept no API key)"
            ));
        }
        for (k, v) in keys.iter().enumerate() {
            match v.strip_prefix("sha256:").and_then(crate::config::decode_hex32) {
                Some(d) => api_key_digests.push(d),
                None => errs.push(format!(
                    "{key}.api_keys[{k}]: must be \"sha256:\" and 64 hex digits (the key itself never goes in the config: `printf %s KEY | sha256sum`)"
                )),
            }
        }
    }
    let metadata = raw
        .resource_metadata
        .and_then(|m| validate_metadata(m, &format!("{key}.resource_metadata"), errs))
        .map(Arc::new);
    let jwt = raw
        .jwt
        .and_then(|j| validate_jwt(j, &format!("{key}.jwt"), errs))
        .map(Arc::new);
    let checks = !api_key_digests.is_empty() || jwt.is_some();
    let (upstream, upstream_source) = match (raw.forward_authorization, raw.upstream_authorization)
    {
        (Some(true), Some(_)) => {
            errs.push(format!(
                "{key}.upstream_authorization: cannot be combined with forward_authorization = true"
            ));
            (UpstreamCredential::Strip, None)
        }
        (_, Some(s)) => match read_secret(&s, &format!("{key}.upstream_authorization"), errs) {
            Some((v, src)) => (UpstreamCredential::Inject(v), Some(src)),
            None => (UpstreamCredential::Strip, None),
        },
        (Some(true), None) => (UpstreamCredential::Forward, None),
        (Some(false), None) => (UpstreamCredential::Strip, None),
        (None, None) if checks => (UpstreamCredential::Strip, None),
        (None, None) => (UpstreamCredential::Forward, None),
    };
    let metadata_passthrough = raw.resource_metadata_passthrough.unwrap_or(false);
    if metadata_passthrough && metadata.is_some() {
        errs.push(format!(
            "{key}.resource_metadata_passthrough: give either this or [servers.auth.resource_metadata], not both"
        ));
    }
    if metadata.is_some() && jwt.is_none() {
        errs.push(format!(
            "{key}.resource_metadata: only useful with [servers.auth.jwt] (clients would get tokens mcplb cannot verify)"
        ));
    }
    AuthConfig {
        api_key_digests,
        jwt,
        metadata,
        metadata_passthrough,
        upstream,
        upstream_source,
    }
}

fn read_secret(s: &RawSecret, key: &str, errs: &mut Vec<String>) -> Option<(Secret, SecretSource)> {
    let (value, src) = match (&s.env, &s.file) {
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => (v, SecretSource::Env(var.clone())),
            Err(_) => {
                errs.push(format!(
                    "{key}.env: environment variable `{var}` is not set"
                ));
                return None;
            }
        },
        (None, Some(path)) => match std::fs::read_to_string(path) {
            Ok(v) => (v, SecretSource::File(path.clone())),
            Err(e) => {
                errs.push(format!("{key}.file: cannot read `{path}`: {}", e.kind()));
                return None;
            }
        },
        _ => {
            errs.push(format!("{key}: give exactly one of `env` or `file`"));
            return None;
        }
    };
    let value = value.trim();
    // A header value: visible ASCII and spaces, no line breaks (the value is never echoed).
    if value.is_empty()
        || !value
            .bytes()
            .all(|b| b == b' ' || b == b'\t' || b.is_ascii_graphic())
    {
        errs.push(format!(
            "{key}: the credential is empty or not a valid header value (e.g. \"Bearer abc...\")"
        ));
        return None;
    }
    Some((Secret(value.into()), src))
}

fn is_http_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(char::is_whitespace)
}

fn validate_metadata(
    m: RawMetadata,
    key: &str,
    errs: &mut Vec<String>,
) -> Option<ResourceMetadata> {
    let resource = match m.resource {
        Some(r) if is_http_url(&r) && !r.contains('#') => r,
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
        if !is_http_url(a) {
            errs.push(format!(
                "{key}.authorization_servers[{i}]: must be an http(s) URL"
            ));
        }
    }
    if let Some(d) = &m.resource_documentation {
        if !is_http_url(d) {
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

fn duration(v: Option<&String>, key: &str, default: Duration, errs: &mut Vec<String>) -> Duration {
    match v.map(|s| crate::config::parse_duration(s)) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(format!("{key}: {e}"));
            default
        }
    }
}

fn validate_jwt(j: RawJwt, key: &str, errs: &mut Vec<String>) -> Option<JwtVerifier> {
    let before = errs.len();
    let issuer = j.issuer.unwrap_or_else(|| {
        errs.push(format!(
            "{key}.issuer: missing (the `iss` tokens must carry, e.g. \"https://auth.example.com\")"
        ));
        String::new()
    });
    let audience = match j.audience {
        Some(OneOrMany::One(a)) => vec![a],
        Some(OneOrMany::Many(v)) => v,
        None => Vec::new(),
    };
    if audience.is_empty() || audience.iter().any(String::is_empty) {
        errs.push(format!(
            "{key}.audience: missing (tokens must be issued for this server: its resource URL, e.g. \"https://mcp.example.com/mcp\")"
        ));
    }
    let names = j
        .algorithms
        .unwrap_or_else(|| vec!["RS256".into(), "ES256".into(), "EdDSA".into()]);
    if names.is_empty() {
        errs.push(format!("{key}.algorithms: empty list"));
    }
    let mut algorithms = Vec::new();
    for (i, n) in names.iter().enumerate() {
        match n.parse::<Algorithm>() {
            Ok(a) if ASYMMETRIC.contains(&n.as_str()) => {
                if !algorithms.contains(&a) {
                    algorithms.push(a);
                }
            }
            Ok(_) => errs.push(format!(
                "{key}.algorithms[{i}]: `{n}` is an HMAC algorithm; mcplb verifies with public keys only"
            )),
            Err(_) => errs.push(format!(
                "{key}.algorithms[{i}]: `{n}` (use RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA)"
            )),
        }
    }
    let leeway = duration(
        j.leeway.as_ref(),
        &format!("{key}.leeway"),
        Duration::from_secs(30),
        errs,
    );
    if leeway > Duration::from_secs(600) {
        errs.push(format!("{key}.leeway: at most 10m"));
    }
    let refresh = duration(
        j.refresh.as_ref(),
        &format!("{key}.refresh"),
        Duration::from_secs(600),
        errs,
    );
    let min_refresh = duration(
        j.min_refresh.as_ref(),
        &format!("{key}.min_refresh"),
        Duration::from_secs(30),
        errs,
    );
    if refresh.is_zero() || min_refresh.is_zero() {
        errs.push(format!("{key}.refresh: must be greater than zero"));
    }
    let identity_claim = j.identity_claim.unwrap_or_else(|| "sub".to_string());
    if identity_claim.is_empty() {
        errs.push(format!("{key}.identity_claim: empty"));
    }
    let source = match (j.jwks_file, j.jwks_url) {
        (Some(f), None) => {
            for (k, set) in [
                ("refresh", j.refresh.is_some()),
                ("min_refresh", j.min_refresh.is_some()),
            ] {
                if set {
                    errs.push(format!(
                        "{key}.{k}: only for jwks_url (a jwks_file is read at start)"
                    ));
                }
            }
            JwksSource::File(f)
        }
        (None, Some(u)) if u.starts_with("http://") || u.starts_with("https://") => {
            JwksSource::Url(u)
        }
        (None, Some(u)) => {
            errs.push(format!(
                "{key}.jwks_url: `{}` must be an https:// (or http://) URL",
                redact_url(&u)
            ));
            JwksSource::Url(u)
        }
        (Some(_), Some(_)) => {
            errs.push(format!(
                "{key}: give either jwks_file or jwks_url, not both"
            ));
            return None;
        }
        (None, None) => {
            errs.push(format!("{key}: needs jwks_file or jwks_url"));
            return None;
        }
    };
    let jwks_ca = match (&j.jwks_ca, &source) {
        (None, _) => None,
        (Some(ca), JwksSource::Url(u)) if u.starts_with("https://") => {
            match crate::tls::load_certs(std::path::Path::new(ca)) {
                Ok(certs) => Some((ca.clone(), certs)),
                Err(e) => {
                    errs.push(format!("{key}.jwks_ca: {e}"));
                    None
                }
            }
        }
        (Some(_), _) => {
            errs.push(format!("{key}.jwks_ca: only for an https:// jwks_url"));
            None
        }
    };
    let initial = match &source {
        JwksSource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => match parse_jwks(&text) {
                Ok((keys, skipped)) => {
                    for s in skipped {
                        tracing::warn!(file = %path, "{key}: JWKS key skipped: {s}");
                    }
                    if keys.is_empty() {
                        errs.push(format!(
                            "{key}.jwks_file: `{path}` holds no usable signature key"
                        ));
                    }
                    KeySet::new(keys, &text)
                }
                Err(e) => {
                    errs.push(format!("{key}.jwks_file: `{path}`: {e}"));
                    KeySet::empty()
                }
            },
            Err(e) => {
                errs.push(format!(
                    "{key}.jwks_file: cannot read `{path}`: {}",
                    e.kind()
                ));
                KeySet::empty()
            }
        },
        JwksSource::Url(_) => KeySet::empty(),
    };
    if errs.len() > before {
        return None;
    }
    let validations = algorithms
        .iter()
        .map(|&alg| {
            let mut v = Validation::new(alg);
            v.leeway = leeway.as_secs();
            v.validate_nbf = true;
            v.validate_exp = true;
            v.set_issuer(&[issuer.as_str()]);
            v.set_audience(&audience);
            v.set_required_spec_claims(&["exp", "iss", "aud"]);
            (alg, v)
        })
        .collect();
    Some(JwtVerifier {
        id: NEXT_VERIFIER.fetch_add(1, Ordering::Relaxed),
        issuer,
        audience,
        algorithms,
        leeway,
        identity_claim,
        required_scopes: j.required_scopes.unwrap_or_default(),
        source,
        refresh,
        min_refresh,
        jwks_ca,
        validations,
        keys: ArcSwap::from_pointee(initial),
        kid_miss: AtomicBool::new(false),
    })
}

/// A URL with any `user:password@` and any query (either may carry a credential) replaced by
/// `***`, for logs, errors and `/config`.
pub fn redact_url(u: &str) -> String {
    let after_scheme = u.find("://").map_or(0, |i| i + 3);
    let host_end = u[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(u.len(), |i| after_scheme + i);
    let mut out = match u[after_scheme..host_end].rfind('@') {
        Some(at) => format!("{}***@{}", &u[..after_scheme], &u[after_scheme + at + 1..]),
        None => u.to_string(),
    };
    if let Some(q) = out.find('?') {
        out.truncate(q);
        out.push_str("?***");
    }
    out
}

// ---------------------------------------------------------------- JWKS

impl KeySet {
    fn empty() -> Self {
        KeySet {
            keys: Vec::new(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            digest: [0; 32],
        }
    }

    fn new(keys: Vec<Key>, text: &str) -> Self {
        use sha2::Digest;
        KeySet {
            keys,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            digest: sha2::Sha256::digest(text.as_bytes()).into(),
        }
    }
}

/// Parses a JWKS document: the usable signature keys, and why others were skipped. Symmetric
/// (`oct`) keys and keys whose `use` is not `sig` are never used.
fn parse_jwks(text: &str) -> Result<(Vec<Key>, Vec<String>), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWKS (no \"keys\" array)".into());
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let kid = k
            .get("kid")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let label = if kid.is_empty() {
            format!("keys[{i}]")
        } else {
            format!("keys[{i}] (kid {kid:?})")
        };
        if k.get("kty").and_then(|v| v.as_str()) == Some("oct") {
            skipped.push(format!("{label}: symmetric keys are never accepted"));
            continue;
        }
        let jwk: jsonwebtoken::jwk::Jwk = match serde_json::from_value(k.clone()) {
            Ok(j) => j,
            Err(e) => {
                skipped.push(format!("{label}: {e}"));
                continue;
            }
        };
        if matches!(
            jwk.common.public_key_use,
            Some(
                jsonwebtoken::jwk::PublicKeyUse::Encryption
                    | jsonwebtoken::jwk::PublicKeyUse::Other(_)
            )
        ) {
            skipped.push(format!("{label}: not a signature key (`use`)"));
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            None => None,
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(a) => Some(a),
                Err(_) => {
                    skipped.push(format!("{label}: `alg` {ka} is not a signature algorithm"));
                    continue;
                }
            },
        };
        let key = match DecodingKey::from_jwk(&jwk) {
            Ok(d) => d,
            Err(e) => {
                skipped.push(format!("{label}: {e}"));
                continue;
            }
        };
        let family = key.family();
        if family == AlgorithmFamily::Hmac || alg.is_some_and(|a| a.family() != family) {
            skipped.push(format!("{label}: key type and `alg` disagree"));
            continue;
        }
        keys.push(Key {
            kid: jwk.common.key_id,
            alg,
            family,
            key,
        });
    }
    Ok((keys, skipped))
}

impl JwtVerifier {
    fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// Installs a freshly fetched JWKS; returns whether the keys changed. A JWKS that does not
    /// parse or holds no usable key leaves the old keys in place.
    fn install(&self, text: &str) -> Result<bool, String> {
        use sha2::Digest;
        let digest: [u8; 32] = sha2::Sha256::digest(text.as_bytes()).into();
        if self.keys.load().digest == digest {
            return Ok(false);
        }
        let (keys, skipped) = parse_jwks(text)?;
        for s in skipped {
            tracing::warn!(issuer = %self.issuer, "JWKS key skipped: {s}");
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable signature key".into());
        }
        let n = keys.len();
        self.keys.store(Arc::new(KeySet::new(keys, text)));
        tracing::info!(issuer = %self.issuer, keys = n, "JWKS installed");
        Ok(true)
    }
}

// ---------------------------------------------------------------- verification

/// Why a request was refused; the worker answers with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Denial {
    /// 401 (no or bad credential), 403 (insufficient scope).
    pub status: u16,
    /// The RFC 6750 error code for `WWW-Authenticate`, if any.
    pub error: Option<&'static str>,
    /// What was wrong, for the JSON-RPC error message and `error_description` (never secret).
    pub message: &'static str,
}

const fn deny(status: u16, error: Option<&'static str>, message: &'static str) -> Denial {
    Denial {
        status,
        error,
        message,
    }
}

const MISSING: Denial = deny(401, None, "authentication required");
const BAD_KEY: Denial = deny(401, Some("invalid_token"), "invalid API key");

/// How a request's JWT was checked (for the `jwt_verifications` and `jwt_cache_hits`
/// counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum JwtCheck {
    /// No JWT was checked.
    #[default]
    None,
    /// Found in this core's cache of verified tokens.
    Cached,
    /// Verified in full.
    Verified,
}

/// The authenticated caller of the current request, reused across a connection's requests.
#[derive(Debug, Default)]
pub struct Caller {
    /// How its JWT, if any, was checked.
    pub jwt: JwtCheck,
    /// Keyed hash of the identity (the rate-limit key `identity`); 0 when there is none.
    pub key: u64,
    /// The identity for the access log: the token's identity claim, or `api-key:N` (the
    /// N-th configured key); empty when there is none.
    pub name: String,
    /// What the caller's sessions are bound to (see [`Principal`]).
    pub principal: Principal,
}

/// The caller's identity as sessions are bound to it: stable across processes and restarts
/// (never a per-process hash), and independent of which token of that identity was presented,
/// so that a client refreshing its JWT keeps its session.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// No identity (a group without authentication).
    #[default]
    None,
    /// An API key, by its SHA-256 digest (the value the config lists; not its position in
    /// the list, which an edit of the list would shift).
    ApiKey([u8; 32]),
    /// A JWT: its identity claim ([`Caller::name`]) under the group's configured issuer.
    Jwt,
}

impl Caller {
    /// No identity (before each request's check).
    pub fn reset(&mut self) {
        self.key = 0;
        self.name.clear();
        self.jwt = JwtCheck::None;
        self.principal = Principal::None;
    }

    fn set(&mut self, key: u64, name: &str) {
        self.key = key;
        self.name.clear();
        self.name.push_str(name);
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a request's credentials against the group's `[servers.auth]`. On success `caller`
/// holds who it is (empty for groups without authentication).
pub fn check(
    cfg: &AuthConfig,
    authorization: Option<&[u8]>,
    x_api_key: Option<&[u8]>,
    hasher: &ratelimit::KeyHasher,
    caller: &mut Caller,
) -> Result<(), Denial> {
    caller.reset();
    if !cfg.required() {
        return Ok(());
    }
    let bearer = authorization.and_then(|v| {
        v.get(..7)
            .filter(|p| p.eq_ignore_ascii_case(b"bearer "))
            .and_then(|_| v.get(7..))
            .map(<[u8]>::trim_ascii)
    });
    if let (Some(v), Some(token)) = (&cfg.jwt, bearer) {
        // A JWT is three dot-separated parts; an API key that happened to look like one
        // would be checked as a token and refused.
        if token.iter().filter(|&&b| b == b'.').count() == 2 {
            let verdict = verify_cached(v, token, hasher, caller);
            if verdict.is_ok() {
                caller.principal = Principal::Jwt;
            }
            return verdict;
        }
    }
    let Some(key) = bearer.or(x_api_key.map(<[u8]>::trim_ascii)) else {
        return Err(MISSING);
    };
    if cfg.api_key_digests.is_empty() {
        return Err(deny(401, Some("invalid_token"), "malformed token"));
    }
    use sha2::Digest;
    let digest: [u8; 32] = sha2::Sha256::digest(key).into();
    // Compare with every configured digest in constant time, without stopping early.
    let mut found = usize::MAX;
    for (i, d) in cfg.api_key_digests.iter().enumerate() {
        let eq = d.iter().zip(&digest).fold(0u8, |x, (a, b)| x | (a ^ b)) == 0;
        found = if eq { i } else { found };
    }
    if found == usize::MAX {
        return Err(BAD_KEY);
    }
    let mut name = [0u8; 24];
    let n = {
        use std::io::Write;
        let mut w = &mut name[..];
        let _ = write!(w, "api-key:{found}");
        24 - w.len()
    };
    let label = std::str::from_utf8(&name[..n]).unwrap_or("api-key");
    caller.set(
        hasher.hash_key(&digest).rotate_left(17) ^ 0x006b_6579,
        label,
    );
    caller.principal = Principal::ApiKey(digest);
    Ok(())
}

/// A cached verdict on one token.
struct Cached {
    verifier: u64,
    generation: u64,
    exp: u64,
    nbf: u64,
    scope_ok: bool,
    key: u64,
    name: Box<str>,
}

/// A cached refusal: a client re-sending a token that cannot pass (expired, wrong audience,
/// bad signature...) costs no signature check either.
struct Refused {
    verifier: u64,
    generation: u64,
    denial: Denial,
}

/// Verified (and refused) tokens of this core, keyed by a 128-bit keyed hash of the token.
struct TokenCache {
    map: HashMap<(u64, u64), Cached>,
    refused: HashMap<(u64, u64), Refused>,
    hashers: [ratelimit::KeyHasher; 2],
}

impl TokenCache {
    fn key(&self, token: &[u8]) -> (u64, u64) {
        (
            self.hashers[0].hash_key(token),
            self.hashers[1].hash_key(token),
        )
    }
}

/// Most tokens cached per core; when full, expired ones go first, then all.
const CACHE_MAX: usize = 8192;
/// Most refused tokens remembered per core (kept apart, so a flood of bad tokens cannot push
/// good ones out); when full, all are forgotten.
const REFUSED_MAX: usize = 1024;

thread_local! {
    static CACHE: RefCell<TokenCache> = RefCell::new(TokenCache {
        map: HashMap::new(),
        refused: HashMap::new(),
        hashers: [
            ratelimit::KeyHasher::new(rand::random::<[u64; 2]>()),
            ratelimit::KeyHasher::new(rand::random::<[u64; 2]>()),
        ],
    });
}

fn verify_cached(
    v: &JwtVerifier,
    token: &[u8],
    hasher: &ratelimit::KeyHasher,
    caller: &mut Caller,
) -> Result<(), Denial> {
    let now = now_unix();
    let leeway = v.leeway.as_secs();
    let generation = v.generation();
    let mut key_of_token = None;
    let hit = CACHE.with(|c| {
        let Ok(mut c) = c.try_borrow_mut() else {
            return None;
        };
        let k = c.key(token);
        key_of_token = Some(k);
        if let Some(r) = c.refused.get(&k) {
            if r.verifier == v.id && r.generation == generation {
                return Some(Err(r.denial));
            }
        }
        let e = c.map.get(&k)?;
        if e.verifier != v.id || e.generation != generation {
            c.map.remove(&k);
            return None;
        }
        if now > e.exp.saturating_add(leeway) {
            c.map.remove(&k);
            return Some(Err(deny(401, Some("invalid_token"), "token expired")));
        }
        if now.saturating_add(leeway) < e.nbf {
            return Some(Err(NOT_YET_VALID));
        }
        if !e.scope_ok {
            return Some(Err(INSUFFICIENT_SCOPE));
        }
        caller.set(e.key, &e.name);
        Some(Ok(()))
    });
    if let Some(r) = hit {
        caller.jwt = JwtCheck::Cached;
        return r;
    }
    caller.jwt = JwtCheck::Verified;
    let verdict = match verify(v, token) {
        Ok(verdict) => verdict,
        Err(denial) => {
            // A token refused for what it is stays refused under these keys; one refused for
            // the time (not yet valid) may pass later.
            if let (Some(k), false) = (key_of_token, denial.message == NOT_YET_VALID.message) {
                CACHE.with(|c| {
                    let Ok(mut c) = c.try_borrow_mut() else {
                        return;
                    };
                    if c.refused.len() >= REFUSED_MAX {
                        c.refused.clear();
                    }
                    c.refused.insert(
                        k,
                        Refused {
                            verifier: v.id,
                            generation,
                            denial,
                        },
                    );
                });
            }
            return Err(denial);
        }
    };
    let key = hasher.hash_key(verdict.name.as_bytes());
    if verdict.scope_ok {
        caller.set(key, &verdict.name);
    }
    CACHE.with(|c| {
        let (Ok(mut c), Some(k)) = (c.try_borrow_mut(), key_of_token) else {
            return;
        };
        if c.map.len() >= CACHE_MAX {
            c.map.retain(|_, e| e.exp.saturating_add(leeway) >= now);
            if c.map.len() >= CACHE_MAX {
                c.map.clear();
            }
        }
        c.map.insert(
            k,
            Cached {
                verifier: v.id,
                generation,
                exp: verdict.exp,
                nbf: verdict.nbf,
                scope_ok: verdict.scope_ok,
                key,
                name: verdict.name.into_boxed_str(),
            },
        );
    });
    if verdict.scope_ok {
        Ok(())
    } else {
        Err(INSUFFICIENT_SCOPE)
    }
}

const INSUFFICIENT_SCOPE: Denial = deny(403, Some("insufficient_scope"), "insufficient scope");
const NOT_YET_VALID: Denial = deny(401, Some("invalid_token"), "token not yet valid");

/// What a full verification found.
pub struct Verdict {
    /// The caller's identity (the identity claim).
    pub name: String,
    /// `exp` and `nbf` (0 when absent).
    pub exp: u64,
    /// See `exp`.
    pub nbf: u64,
    /// Whether the token carries every required scope.
    pub scope_ok: bool,
}

/// Verifies one token fully (signature, `alg`, `kid`, `iss`, `aud`, `exp`, `nbf`), with no
/// cache. Public for the benchmark.
pub fn verify(v: &JwtVerifier, token: &[u8]) -> Result<Verdict, Denial> {
    const MALFORMED: Denial = deny(401, Some("invalid_token"), "malformed token");
    let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
        // `alg: none` and unknown algorithms do not parse as a header.
        jsonwebtoken::errors::ErrorKind::Json(_) => deny(
            401,
            Some("invalid_token"),
            "malformed token or algorithm not allowed",
        ),
        _ => MALFORMED,
    })?;
    let alg = header.alg;
    let Some((_, validation)) = v.validations.iter().find(|(a, _)| *a == alg) else {
        return Err(deny(401, Some("invalid_token"), "algorithm not allowed"));
    };
    let keys = v.keys.load();
    let usable = |k: &&Key| k.family == alg.family() && k.alg.is_none_or(|ka| ka == alg);
    let key = match &header.kid {
        Some(kid) => keys
            .keys
            .iter()
            .filter(usable)
            .find(|k| k.kid.as_deref() == Some(kid.as_str())),
        None => {
            let mut it = keys.keys.iter().filter(usable);
            match (it.next(), it.next()) {
                (Some(k), None) => Some(k),
                (Some(_), Some(_)) => {
                    return Err(deny(
                        401,
                        Some("invalid_token"),
                        "token has no kid and several keys match",
                    ))
                }
                _ => None,
            }
        }
    };
    let Some(key) = key else {
        if matches!(v.source, JwksSource::Url(_)) {
            v.kid_miss.store(true, Ordering::Relaxed);
        }
        return Err(deny(401, Some("invalid_token"), "unknown signing key"));
    };
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
        token, &key.key, validation,
    )
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        let msg = match e.kind() {
            K::ExpiredSignature => "token expired",
            K::ImmatureSignature => NOT_YET_VALID.message,
            K::InvalidIssuer => "wrong issuer",
            K::InvalidAudience => "wrong audience",
            K::InvalidSignature => "bad signature",
            K::InvalidAlgorithm => "algorithm not allowed",
            K::MissingRequiredClaim(_) => "token lacks exp, iss or aud",
            _ => "malformed token",
        };
        deny(401, Some("invalid_token"), msg)
    })?;
    let claims = data.claims;
    let name = match claims.get(&v.identity_claim) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => {
            return Err(deny(
                401,
                Some("invalid_token"),
                "token lacks the identity claim",
            ))
        }
    };
    let int = |k: &str| {
        claims
            .get(k)
            .and_then(|x| x.as_f64())
            .map_or(0, |f| f as u64)
    };
    let scope_ok = v.required_scopes.iter().all(|want| {
        let in_scope = claims
            .get("scope")
            .and_then(|s| s.as_str())
            .is_some_and(|s| s.split(' ').any(|x| x == want));
        let in_scp = match claims.get("scp") {
            Some(serde_json::Value::String(s)) => s.split(' ').any(|x| x == want),
            Some(serde_json::Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
            _ => false,
        };
        in_scope || in_scp
    });
    Ok(Verdict {
        name,
        exp: int("exp"),
        nbf: int("nbf"),
        scope_ok,
    })
}

// ---------------------------------------------------------------- challenges and metadata

/// The `WWW-Authenticate` header line (ending in CRLF) for a refusal.
pub fn challenge(cfg: &AuthConfig, d: &Denial) -> String {
    let mut h = String::from("www-authenticate: Bearer realm=\"mcplb\"");
    if let Some(e) = d.error {
        h.push_str(&format!(
            ", error=\"{e}\", error_description=\"{}\"",
            d.message
        ));
    }
    if d.status == 403 {
        if let Some(v) = &cfg.jwt {
            h.push_str(&format!(", scope=\"{}\"", v.required_scopes.join(" ")));
        }
    }
    if let Some(m) = &cfg.metadata {
        h.push_str(&format!(", resource_metadata=\"{}\"", m.url));
    }
    h.push_str("\r\n");
    h
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

// ---------------------------------------------------------------- JWKS refresh

/// Stops the JWKS refresh thread of one configuration when dropped (a reload starts another).
pub struct JwksRefresh {
    stop: Arc<AtomicBool>,
}

impl Drop for JwksRefresh {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Fetches every `jwks_url` once (so the first requests find keys), then refreshes them on a
/// background thread: every `refresh`, and early (at most once per `min_refresh`) when a token
/// names a key the set lacks. A failed fetch keeps the old keys and is logged. On a reload,
/// `prev` is the running configuration: a verifier whose JWKS URL it already fetched starts
/// from those keys (so an unreachable JWKS endpoint during a reload refuses no token).
/// The fetch is a small blocking HTTP client (`ureq`) on this thread; `https://` URLs are
/// verified with rustls (the `ring` provider, as for https backends) against `jwks_ca` or the
/// system roots.
pub fn start_refresh(
    config: &crate::config::Config,
    prev: Option<&crate::config::Config>,
) -> Option<JwksRefresh> {
    let verifiers: Vec<Arc<JwtVerifier>> = config
        .servers
        .iter()
        .filter_map(|g| g.auth.jwt.clone())
        .filter(|v| matches!(v.source, JwksSource::Url(_)))
        .collect();
    if verifiers.is_empty() {
        return None;
    }
    if let Some(prev) = prev {
        for v in &verifiers {
            let JwksSource::Url(url) = &v.source else {
                continue;
            };
            let old = prev
                .servers
                .iter()
                .filter_map(|g| g.auth.jwt.as_ref())
                .find(|o| matches!(&o.source, JwksSource::Url(u) if u == url));
            if let Some(o) = old {
                v.keys.store(o.keys.load_full());
            }
        }
    }
    let agents: Vec<ureq::Agent> = verifiers.iter().map(|v| agent_for(v)).collect();
    let mut last: Vec<Instant> = Vec::with_capacity(verifiers.len());
    for (v, agent) in verifiers.iter().zip(&agents) {
        fetch(agent, v);
        last.push(Instant::now());
    }
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("mcplb-jwks".into())
        .spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                for ((v, at), agent) in verifiers.iter().zip(last.iter_mut()).zip(&agents) {
                    let since = at.elapsed();
                    let due = since >= v.refresh
                        || (since >= v.min_refresh && v.kid_miss.load(Ordering::Relaxed));
                    if due && !stopped.load(Ordering::Relaxed) {
                        v.kid_miss.store(false, Ordering::Relaxed);
                        fetch(agent, v);
                        *at = Instant::now();
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the JWKS refresh thread: keys will not be refreshed");
    }
    Some(JwksRefresh { stop })
}

/// The names of the `[servers.auth]` settings (besides `api_keys`) that differ, for the
/// reload log; never a value.
pub fn changed_keys(old: &AuthConfig, new: &AuthConfig) -> Vec<&'static str> {
    let jwt = |a: &AuthConfig| {
        a.jwt.as_ref().map(|v| {
            let src = match &v.source {
                JwksSource::File(p) => format!("file:{p}"),
                JwksSource::Url(u) => format!("url:{u}"),
            };
            (
                v.issuer.clone(),
                v.audience.clone(),
                format!("{:?}", v.algorithms),
                v.leeway,
                v.identity_claim.clone(),
                v.required_scopes.clone(),
                src,
                (v.refresh, v.min_refresh),
            )
        })
    };
    let upstream = |a: &AuthConfig| match &a.upstream {
        UpstreamCredential::Strip => "strip".to_string(),
        UpstreamCredential::Forward => "forward".to_string(),
        UpstreamCredential::Inject(s) => format!("inject:{}", s.expose()),
    };
    let doc = |a: &AuthConfig| a.metadata.as_ref().map(|m| m.document.clone());
    let mut out = Vec::new();
    if jwt(old) != jwt(new) {
        out.push("jwt");
    }
    if upstream(old) != upstream(new) {
        out.push("upstream_authorization");
    }
    if doc(old) != doc(new) || old.metadata_passthrough != new.metadata_passthrough {
        out.push("resource_metadata");
    }
    out
}

/// The HTTP client of one verifier: 5 s for a whole fetch, at most 3 redirects, and for https
/// rustls verifying against `jwks_ca` or the system roots (read once per process).
fn agent_for(v: &JwtVerifier) -> ureq::Agent {
    static SYSTEM: OnceLock<Arc<Vec<ureq::tls::Certificate<'static>>>> = OnceLock::new();
    let roots = match &v.jwks_ca {
        Some((_, certs)) => Arc::new(
            certs
                .iter()
                .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                .collect(),
        ),
        None => SYSTEM
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                Arc::new(
                    found
                        .certs
                        .iter()
                        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
                        .collect(),
                )
            })
            .clone(),
    };
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::Specific(roots))
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(true)
        .max_redirects(3)
        .tls_config(tls)
        .build()
        .into()
}

/// Longest JWKS accepted.
const MAX_JWKS_BYTES: u64 = 1 << 20;

fn fetch(agent: &ureq::Agent, v: &JwtVerifier) {
    let JwksSource::Url(url) = &v.source else {
        return;
    };
    let shown = redact_url(url);
    let text = agent.get(url).call().and_then(|mut r| {
        r.body_mut()
            .with_config()
            .limit(MAX_JWKS_BYTES)
            .read_to_string()
    });
    match text {
        Ok(text) => match v.install(&text) {
            Ok(_) => {}
            Err(e) => {
                tracing::error!(url = %shown, error = %e, "JWKS refresh failed; keeping the old keys")
            }
        },
        Err(e) => {
            // ureq's error text may quote the URL: say only what kind of failure it was.
            let why = match &e {
                ureq::Error::StatusCode(s) => format!("HTTP status {s}"),
                ureq::Error::Timeout(_) => "timed out".to_string(),
                // Its text (e.g. a certificate rustls refused) names no URL.
                ureq::Error::Io(io) => format!("I/O: {io}"),
                ureq::Error::Rustls(t) => format!("TLS: {t}"),
                ureq::Error::Tls(t) => format!("TLS: {t}"),
                ureq::Error::BodyExceedsLimit(_) => format!("larger than {MAX_JWKS_BYTES} bytes"),
                _ => "request failed".to_string(),
            };
            tracing::error!(url = %shown, error = %why, "JWKS fetch failed; keeping the old keys");
        }
    }
}

/// The `kid`s of the keys in use (tests and `/config`).
pub fn key_ids(v: &JwtVerifier) -> Vec<String> {
    v.keys
        .load()
        .keys
        .iter()
        .map(|k| k.kid.clone().unwrap_or_default())
        .collect()
}

/// A process-wide keyed hasher for places without the worker's.
pub fn process_hasher() -> &'static ratelimit::KeyHasher {
    static H: OnceLock<ratelimit::KeyHasher> = OnceLock::new();
    H.get_or_init(|| ratelimit::KeyHasher::new(rand::random::<[u64; 2]>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("http://user:pw@idp.example/jwks?x=1"),
            "http://***@idp.example/jwks?***"
        );
        assert_eq!(
            redact_url("http://idp.example/a@b"),
            "http://idp.example/a@b"
        );
    }

    #[test]
    fn jwks_skips_symmetric_and_encryption_keys() {
        let text = r#"{"keys":[
            {"kty":"oct","k":"c2VjcmV0","kid":"h"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e","use":"enc"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"s","alg":"EdDSA"}
        ]}"#;
        let Ok((keys, skipped)) = parse_jwks(text) else {
            panic!("parse")
        };
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("s"));
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(parse_jwks("{}").is_err());
    }

    #[test]
    fn metadata_url_inserts_the_well_known_segment() {
        let mut errs = Vec::new();
        let m = validate_metadata(
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
