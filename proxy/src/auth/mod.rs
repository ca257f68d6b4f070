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
//!
//! Files: `api_key` (digests, constant-time compare), `jwt` (the `[servers.auth.jwt]` settings
//! and one token's full verification, claims checked here), `jwk` (one key, parsed strictly
//! for `ring`, and the signature algorithms), `jwks` (key sets, their fetch and refresh thread),
//! `cache` (the per-core verdict cache), `budget` (failed verifications per client address), `metadata` (the protected-resource document).

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;

pub(crate) use api_key::RawApiKeyTable;
pub(crate) use budget::RawBudget;
pub(crate) use jwt::RawJwt;
pub(crate) use metadata::RawMetadata;

mod api_key;
mod budget;
mod cache;
mod jwk;
mod jwks;
mod jwt;
mod metadata;

pub use api_key::ApiKeys;
pub use budget::{BudgetSettings, FailureBudget};
pub use jwk::Alg;
pub use jwks::{key_ids, start_refresh, JwksRefresh, JwksSource};
pub use jwt::{verify, JwtVerifier, Verdict};
pub use metadata::{is_metadata_path, metadata_for, MetadataAnswer, ResourceMetadata};

// ---------------------------------------------------------------- raw config

/// `[servers.auth]` as written. Unknown keys are not refused here but collected, every one,
/// when the file is read (`config::read`), which also lists the keys of these tables.
#[derive(Debug, Deserialize)]
pub(crate) struct RawAuth {
    api_keys: Option<Vec<api_key::RawApiKey>>,
    jwt: Option<RawJwt>,
    resource_metadata: Option<RawMetadata>,
    resource_metadata_passthrough: Option<bool>,
    forward_authorization: Option<bool>,
    upstream_authorization: Option<RawSecret>,
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
    /// The API keys this group accepts (`Authorization: Bearer KEY` or `X-Api-Key: KEY`):
    /// SHA-256 digests and the identities they stand for.
    pub api_keys: ApiKeys,
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
            api_keys: ApiKeys::default(),
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
        !self.api_keys.is_empty() || self.jwt.is_some()
    }
}

// ---------------------------------------------------------------- validation

/// Validates `[servers.auth]` into an [`AuthConfig`], pushing every problem with its key path.
/// A `jwks_file` is read here (a bad one is a config error); a `jwks_url` is fetched by
/// [`start_refresh`].
pub(crate) fn validate(raw: Option<RawAuth>, key: &str, errs: &mut Vec<String>) -> AuthConfig {
    let Some(raw) = raw else {
        return AuthConfig::default();
    };
    let key = format!("{key}.auth");
    let api_keys = api_key::validate(raw.api_keys, &key, errs);
    let metadata = raw
        .resource_metadata
        .and_then(|m| metadata::validate(m, &format!("{key}.resource_metadata"), errs))
        .map(Arc::new);
    let jwt = raw
        .jwt
        .and_then(|j| jwt::validate(j, &format!("{key}.jwt"), errs))
        .map(Arc::new);
    let checks = !api_keys.is_empty() || jwt.is_some();
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
        api_keys,
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

pub(super) fn is_http_url(u: &str) -> bool {
    (u.starts_with("https://") || u.starts_with("http://")) && !u.contains(char::is_whitespace)
}
pub(super) fn duration(
    v: Option<&String>,
    key: &str,
    default: Duration,
    errs: &mut Vec<String>,
) -> Duration {
    match v.map(|s| crate::config::parse_duration(s)) {
        None => default,
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errs.push(format!("{key}: {e}"));
            default
        }
    }
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

pub(super) const fn deny(
    status: u16,
    error: Option<&'static str>,
    message: &'static str,
) -> Denial {
    Denial {
        status,
        error,
        message,
    }
}

pub(super) const MISSING: Denial = deny(401, None, "authentication required");

/// How a request's JWT was checked (for the `jwt_verifications`, `jwt_cache_hits` and
/// `auth_throttled` counters).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum JwtCheck {
    /// No JWT was checked.
    #[default]
    None,
    /// Found in this core's cache of verified tokens.
    Cached,
    /// Verified in full.
    Verified,
    /// Refused unverified (429): the client address spent its budget of failed verifications.
    Throttled,
}

/// What a JWT says of its caller beyond its identity, for `[[policies]]` rules: kept with the
/// token in this core's verdict cache, so a cached token hands it over without a copy.
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct CallerAttrs {
    /// The token's scopes.
    pub scopes: Box<[Box<str>]>,
    /// Its string claims (`iss`, `sub`, `team`...), array claims as one pair per string.
    pub claims: Box<[(Box<str>, Box<str>)]>,
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
    /// A JWT caller's scopes and claims (`None` for API keys and without authentication).
    pub attrs: Option<std::rc::Rc<CallerAttrs>>,
    /// Which callers decide alike under every policy: a keyed hash of the identity and, for
    /// a JWT, its scopes and claims (the key of the per-core cache of policy classes); 0
    /// when there is no identity.
    pub class_key: u64,
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
        self.attrs = None;
        self.class_key = 0;
    }

    pub(super) fn set(&mut self, key: u64, name: &str) {
        self.key = key;
        self.class_key = key;
        self.name.clear();
        self.name.push_str(name);
    }
}

pub(super) fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks a request's credentials against the group's `[servers.auth]`. On success `caller`
/// holds who it is (empty for groups without authentication). `client` is the address whose
/// budget of failed JWT verifications a token that needs a signature check draws on.
pub fn check(
    cfg: &AuthConfig,
    authorization: Option<&[u8]>,
    x_api_key: Option<&[u8]>,
    client: std::net::IpAddr,
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
            let verdict = cache::verify_cached(v, token, client, hasher, caller);
            if verdict.is_ok() {
                caller.principal = Principal::Jwt;
            }
            return verdict;
        }
    }
    let Some(key) = bearer.or(x_api_key.map(<[u8]>::trim_ascii)) else {
        return Err(MISSING);
    };
    api_key::check(&cfg.api_keys, key, hasher, caller)
}

// ---------------------------------------------------------------- challenges and metadata

/// The header lines (each ending in CRLF) for a refusal: `WWW-Authenticate`, or for a client
/// address whose budget of failed verifications is spent (429), `Retry-After`.
pub fn challenge(cfg: &AuthConfig, d: &Denial) -> String {
    if d.status == 429 {
        let secs = cfg.jwt.as_ref().map_or(1, |v| v.budget.retry_after_secs());
        return format!("retry-after: {secs}\r\n");
    }
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
                v.budget.settings,
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

/// SHA-256 of `data` (API key digests, JWKS fingerprints), with `ring` like every other
/// digest and signature in the binary.
pub(super) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
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
}
