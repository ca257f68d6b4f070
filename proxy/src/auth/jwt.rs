//! JWT bearer tokens: `[servers.auth.jwt]` validated into a [`JwtVerifier`], and one token's
//! full verification (signature, `alg`, `kid`, claims) with no cache.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;

use super::jwks::{self, JwksSource, Key, KeySet};
use super::{deny, duration, redact_url, Denial};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJwt {
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
/// Verifies JWT bearer tokens for one group. Shared by every core: its key set is swapped
/// whole (lock-free reads); its verdicts are cached per core.
pub struct JwtVerifier {
    pub(super) id: u64,
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
    pub(super) validations: Vec<(Algorithm, Validation)>,
    pub(super) keys: ArcSwap<KeySet>,
    /// A token named a key the set lacks: fetch early (rate-limited by `min_refresh`).
    pub(super) kid_miss: AtomicBool,
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

/// Signature algorithms a verifier may accept (public-key only: HMAC is never accepted, so a
/// public key can never be used as an HMAC secret).
const ASYMMETRIC: [&str; 9] = [
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

pub(super) fn validate(j: RawJwt, key: &str, errs: &mut Vec<String>) -> Option<JwtVerifier> {
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
            Ok(text) => match jwks::parse_jwks(&text) {
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
pub(super) const INSUFFICIENT_SCOPE: Denial =
    deny(403, Some("insufficient_scope"), "insufficient scope");
pub(super) const NOT_YET_VALID: Denial = deny(401, Some("invalid_token"), "token not yet valid");

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
