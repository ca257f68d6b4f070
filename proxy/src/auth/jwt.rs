//! JWT bearer tokens: `[servers.auth.jwt]` validated into a [`JwtVerifier`], and one token's
//! full verification with no cache.
//!
//! The compact JWS is read strictly, with `ring` (rustls' crypto library) doing the
//! signature: exactly three unpadded base64url parts; a header whose `alg` is one of the
//! group's algorithms and whose `crit`, if any, is refused (mcplb implements no extension);
//! the key chosen by `kid`; the signature checked over the first two parts *before* the claims
//! are even decoded; then the claims, checked here rather than by a library: `iss` a single
//! string equal to the issuer (RFC 7519 §4.1.1: a list is refused even if it holds the issuer),
//! `aud` a string or a list of strings holding one of the audiences, `exp` required, `nbf`
//! honoured, both NumericDates, with `leeway`. Nothing here panics on any input.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::budget::{FailureBudget, RawBudget};
use super::jwk::{b64url, Alg};
use super::jwks::{self, JwksSource, KeySet};
use super::{deny, duration, now_unix, redact_url, Denial};

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[servers.auth.jwt]` as written (unknown keys are collected by `config::read`).
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
    failure_budget: Option<RawBudget>,
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
    pub algorithms: Vec<Alg>,
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
    /// Failed verifications each client address may make; checked before a signature is.
    pub budget: FailureBudget,
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

/// Validates `[servers.auth.jwt]` into a verifier, pushing every problem with its key path; a
/// `jwks_file` is read here.
#[expect(
    clippy::too_many_lines,
    reason = "config validation: every `[servers.auth.jwt]` key checked in order, each problem reported with its key path; runs once at load, not on the request path"
)]
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
        match Alg::from_name(n) {
            Some(a) => {
                if !algorithms.contains(&a) {
                    algorithms.push(a);
                }
            }
            None if matches!(n.as_str(), "HS256" | "HS384" | "HS512") => errs.push(format!(
                "{key}.algorithms[{i}]: `{n}` is an HMAC algorithm; mcplb verifies with public keys only"
            )),
            None => errs.push(format!(
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
    let budget = FailureBudget::validate(j.failure_budget, &format!("{key}.failure_budget"), errs);
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
        budget,
        keys: ArcSwap::from_pointee(initial),
        kid_miss: AtomicBool::new(false),
    })
}
pub(super) const INSUFFICIENT_SCOPE: Denial =
    deny(403, Some("insufficient_scope"), "insufficient scope");
pub(super) const NOT_YET_VALID: Denial = deny(401, Some("invalid_token"), "token not yet valid");
const MALFORMED: Denial = deny(401, Some("invalid_token"), "malformed token");

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
    /// What policies may ask of the caller: its scopes and string claims.
    pub attrs: super::CallerAttrs,
}

/// The JOSE header fields mcplb reads; others (`typ`, `cty`, `jku`, `jwk`, `x5u`, `x5c`...)
/// are ignored: keys come from the configured JWKS only. A field given twice is malformed.
#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(default, borrow)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// A compact JWS cut at its two dots; each part still base64url.
struct Parts<'a> {
    /// `header.payload`: what the signature covers.
    signed: &'a [u8],
    header: &'a [u8],
    payload: &'a [u8],
    signature: &'a [u8],
}

impl<'a> Parts<'a> {
    /// `None` unless the token has exactly two dots.
    fn split(token: &'a [u8]) -> Option<Self> {
        let first = memchr::memchr(b'.', token)?;
        let rest = token.get(first + 1..)?;
        let second = first + 1 + memchr::memchr(b'.', rest)?;
        let signature = token.get(second + 1..)?;
        if memchr::memchr(b'.', signature).is_some() {
            return None;
        }
        Some(Parts {
            signed: token.get(..second)?,
            header: token.get(..first)?,
            payload: token.get(first + 1..second)?,
            signature,
        })
    }
}

/// Verifies one token fully (signature, `alg`, `kid`, `iss`, `aud`, `exp`, `nbf`), with no
/// cache and no failure budget. Public for the benchmark.
pub fn verify(v: &JwtVerifier, token: &[u8]) -> Result<Verdict, Denial> {
    verify_at(v, token, now_unix())
}

/// [`verify`] at `now` (seconds since the epoch).
pub(super) fn verify_at(v: &JwtVerifier, token: &[u8], now: u64) -> Result<Verdict, Denial> {
    let parts = Parts::split(token).ok_or(MALFORMED)?;
    let header = b64url(parts.header).ok_or(MALFORMED)?;
    let header: Header<'_> = serde_json::from_slice(&header).map_err(|_| MALFORMED)?;
    if header.crit.is_some() {
        return Err(deny(
            401,
            Some("invalid_token"),
            "token requires header extensions (crit) mcplb does not implement",
        ));
    }
    let Some(alg) = Alg::from_name(&header.alg).filter(|a| v.algorithms.contains(a)) else {
        return Err(deny(401, Some("invalid_token"), "algorithm not allowed"));
    };
    let keys = v.keys.load();
    let mut usable = keys.keys.iter().filter(|k| k.usable_for(alg));
    let key = match header.kid.as_deref() {
        Some(kid) => usable.find(|k| k.kid.as_deref() == Some(kid)),
        None => match (usable.next(), usable.next()) {
            (Some(k), None) => Some(k),
            (Some(_), Some(_)) => {
                return Err(deny(
                    401,
                    Some("invalid_token"),
                    "token has no kid and several keys match",
                ))
            }
            _ => None,
        },
    };
    let Some(key) = key else {
        if matches!(v.source, JwksSource::Url(_)) {
            v.kid_miss.store(true, Ordering::Relaxed);
        }
        return Err(deny(401, Some("invalid_token"), "unknown signing key"));
    };
    let signature = b64url(parts.signature).ok_or(MALFORMED)?;
    if !key.key.verify(alg, parts.signed, &signature) {
        return Err(deny(401, Some("invalid_token"), "bad signature"));
    }
    // Signed by a trusted key: only now is the payload decoded.
    let payload = b64url(parts.payload).ok_or(MALFORMED)?;
    let claims: Map<String, Value> = serde_json::from_slice(&payload).map_err(|_| MALFORMED)?;
    check_claims(v, &claims, now)
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, fractions allowed; negative ones
/// count as 0 (long past), huge ones saturate.
fn numeric_date(v: &Value) -> Option<u64> {
    let n = v.as_number()?;
    Some(match (n.as_u64(), n.as_i64()) {
        (Some(u), _) => u,
        (None, Some(_)) => 0,
        // `as` saturates and maps NaN to 0; serde_json never yields NaN or infinities.
        (None, None) => n.as_f64().map_or(0, |f| f as u64),
    })
}

/// Checks the claims of a correctly signed token at `now`.
fn check_claims(v: &JwtVerifier, claims: &Map<String, Value>, now: u64) -> Result<Verdict, Denial> {
    let invalid = |message| deny(401, Some("invalid_token"), message);
    let (Some(exp), Some(iss), Some(aud)) =
        (claims.get("exp"), claims.get("iss"), claims.get("aud"))
    else {
        return Err(invalid("token lacks exp, iss or aud"));
    };
    // `iss` is one StringOrURI, compared as a whole (RFC 7519 §4.1.1): a list is refused even
    // when it holds the issuer.
    match iss {
        Value::String(s) if *s == v.issuer => {}
        Value::String(_) => return Err(invalid("wrong issuer")),
        _ => return Err(invalid("`iss` is not a single string")),
    }
    let audience_ok = match aud {
        Value::String(s) => v.audience.contains(s),
        Value::Array(list) => {
            let mut found = false;
            for a in list {
                let Value::String(s) = a else {
                    return Err(invalid("`aud` holds a value that is not a string"));
                };
                found |= v.audience.contains(s);
            }
            found
        }
        _ => return Err(invalid("`aud` is not a string or a list of strings")),
    };
    if !audience_ok {
        return Err(invalid("wrong audience"));
    }
    let exp = numeric_date(exp).ok_or(invalid("`exp` is not a number"))?;
    let nbf = match claims.get("nbf") {
        None => 0,
        Some(n) => numeric_date(n).ok_or(invalid("`nbf` is not a number"))?,
    };
    let leeway = v.leeway.as_secs();
    if now > exp.saturating_add(leeway) {
        return Err(invalid("token expired"));
    }
    if now.saturating_add(leeway) < nbf {
        return Err(NOT_YET_VALID);
    }
    let name = match claims.get(&v.identity_claim) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(invalid("token lacks the identity claim")),
    };
    let scope_ok = v.required_scopes.iter().all(|want| {
        let in_scope = claims
            .get("scope")
            .and_then(|s| s.as_str())
            .is_some_and(|s| s.split(' ').any(|x| x == want));
        let in_scp = match claims.get("scp") {
            Some(Value::String(s)) => s.split(' ').any(|x| x == want),
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(want)),
            _ => false,
        };
        in_scope || in_scp
    });
    Ok(Verdict {
        name,
        exp,
        nbf,
        scope_ok,
        attrs: attrs_of(claims),
    })
}

/// Most claims (and scopes) kept for policies per token: the rest are not seen by rules.
const MAX_ATTRS: usize = 64;

/// The scopes (`scope`, space separated, and `scp`) and the string claims of a token (an
/// array of strings as one pair per string), for `[[policies]]` rules.
fn attrs_of(claims: &Map<String, Value>) -> super::CallerAttrs {
    let mut scopes: Vec<Box<str>> = Vec::new();
    let mut add_scopes = |v: &Value| match v {
        Value::String(s) => scopes.extend(s.split(' ').filter(|x| !x.is_empty()).map(Into::into)),
        Value::Array(a) => scopes.extend(a.iter().filter_map(Value::as_str).map(Into::into)),
        _ => {}
    };
    for k in ["scope", "scp"] {
        if let Some(v) = claims.get(k) {
            add_scopes(v);
        }
    }
    scopes.truncate(MAX_ATTRS);
    let mut pairs: Vec<(Box<str>, Box<str>)> = Vec::new();
    for (k, v) in claims {
        match v {
            Value::String(s) => pairs.push((k.as_str().into(), s.as_str().into())),
            Value::Array(a) => pairs.extend(
                a.iter()
                    .filter_map(Value::as_str)
                    .map(|s| (k.as_str().into(), s.into())),
            ),
            _ => {}
        }
        if pairs.len() >= MAX_ATTRS {
            pairs.truncate(MAX_ATTRS);
            break;
        }
    }
    super::CallerAttrs {
        scopes: scopes.into(),
        claims: pairs.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::jwk::{Jwk, PublicKey};
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine as _;
    use proptest::prelude::*;
    use ring::rand::SystemRandom;
    use ring::signature::{self as sig, KeyPair as _};
    use serde_json::json;

    const ISS: &str = "https://idp.example";
    const AUD: &str = "https://mcp.example/mcp";
    const NOW: u64 = 1_800_000_000;

    /// Keys made here with ring, and a verifier trusting their public halves.
    struct Signers {
        ed: sig::Ed25519KeyPair,
        es: sig::EcdsaKeyPair,
        verifier: JwtVerifier,
    }

    fn signers() -> Signers {
        let rng = SystemRandom::new();
        let ed = sig::Ed25519KeyPair::generate_pkcs8(&rng)
            .and_then(|d| {
                sig::Ed25519KeyPair::from_pkcs8(d.as_ref()).map_err(|_| ring::error::Unspecified)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let alg = &sig::ECDSA_P256_SHA256_FIXED_SIGNING;
        let es = sig::EcdsaKeyPair::generate_pkcs8(alg, &rng)
            .and_then(|d| {
                sig::EcdsaKeyPair::from_pkcs8(alg, d.as_ref(), &rng)
                    .map_err(|_| ring::error::Unspecified)
            })
            .unwrap_or_else(|e| panic!("{e}"));
        let mut x = [0u8; 32];
        x.copy_from_slice(ed.public_key().as_ref());
        let keys = vec![
            Jwk {
                kid: Some("ed".into()),
                alg: None,
                key: PublicKey::Ed25519(x),
            },
            Jwk {
                kid: Some("es".into()),
                alg: Some(Alg::Es256),
                key: PublicKey::P256(es.public_key().as_ref().into()),
            },
        ];
        let verifier = JwtVerifier {
            id: NEXT_VERIFIER.fetch_add(1, Ordering::Relaxed),
            issuer: ISS.into(),
            audience: vec![AUD.into(), "https://other.example/mcp".into()],
            algorithms: vec![Alg::EdDsa, Alg::Es256, Alg::Rs256],
            leeway: Duration::from_secs(30),
            identity_claim: "sub".into(),
            required_scopes: Vec::new(),
            source: JwksSource::File("test".into()),
            refresh: Duration::from_secs(600),
            min_refresh: Duration::from_secs(30),
            jwks_ca: None,
            budget: FailureBudget::validate(None, "test", &mut Vec::new()),
            keys: ArcSwap::from_pointee(KeySet::new(keys, "test")),
            kid_miss: AtomicBool::new(false),
        };
        Signers { ed, es, verifier }
    }

    impl Signers {
        /// A compact JWS of `header` and `claims` (JSON as written), signed with the key `kid`.
        fn sign_raw(&self, kid: &str, header: &str, claims: &str) -> String {
            let input = format!("{}.{}", B64.encode(header), B64.encode(claims));
            let signature = if kid == "ed" {
                self.ed.sign(input.as_bytes()).as_ref().to_vec()
            } else {
                self.es
                    .sign(&SystemRandom::new(), input.as_bytes())
                    .unwrap_or_else(|e| panic!("{e}"))
                    .as_ref()
                    .to_vec()
            };
            format!("{input}.{}", B64.encode(signature))
        }

        fn sign(&self, kid: &str, claims: &Value) -> String {
            let alg = if kid == "ed" { "EdDSA" } else { "ES256" };
            let header = json!({"alg": alg, "typ": "JWT", "kid": kid}).to_string();
            self.sign_raw(kid, &header, &claims.to_string())
        }

        fn check(&self, token: &str) -> Result<Verdict, &'static str> {
            verify_at(&self.verifier, token.as_bytes(), NOW).map_err(|d| d.message)
        }
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": NOW + 60})
    }

    #[test]
    fn good_tokens_pass_and_every_claim_is_checked_here() {
        let s = signers();
        for kid in ["ed", "es"] {
            let v = s
                .check(&s.sign(kid, &claims()))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!((v.name.as_str(), v.exp, v.nbf), ("alice", NOW + 60, 0));
        }
        let with = |k: &str, v: Value| {
            let mut c = claims();
            c[k] = v;
            s.check(&s.sign("ed", &c)).map(|v| v.name)
        };
        let without = |k: &str| {
            let mut c = claims();
            c.as_object_mut().map(|o| o.remove(k));
            s.check(&s.sign("ed", &c)).map(|v| v.name)
        };
        // `iss`: one string, exactly the issuer; a list holding it is refused.
        let not_one = Err("`iss` is not a single string");
        assert_eq!(with("iss", json!(["https://other.example", ISS])), not_one);
        assert_eq!(with("iss", json!([ISS])), not_one);
        assert_eq!(with("iss", json!({"iss": ISS})), not_one);
        assert_eq!(with("iss", json!(format!("{ISS}/"))), Err("wrong issuer"));
        assert_eq!(with("iss", json!(ISS.to_uppercase())), Err("wrong issuer"));
        // `aud`: a string or a list of strings, one of them configured.
        let alice = Ok("alice".to_string());
        assert_eq!(
            with("aud", json!(["x", "https://other.example/mcp"])),
            alice
        );
        assert_eq!(with("aud", json!(["x", "y"])), Err("wrong audience"));
        assert_eq!(with("aud", json!([])), Err("wrong audience"));
        assert!(with("aud", json!([AUD, 7])).is_err());
        assert!(with("aud", json!(7)).is_err());
        // Times: NumericDates with 30 s leeway.
        assert_eq!(with("exp", json!(NOW - 31)), Err("token expired"));
        assert_eq!(with("exp", json!(NOW - 29)), alice);
        assert_eq!(with("exp", json!((NOW + 60) as f64 + 0.5)), alice);
        assert_eq!(with("exp", json!(-5)), Err("token expired"));
        assert_eq!(with("exp", json!("tomorrow")), Err("`exp` is not a number"));
        assert_eq!(with("nbf", json!(NOW + 31)), Err(NOT_YET_VALID.message));
        assert_eq!(with("nbf", json!(NOW + 29)), alice);
        for k in ["exp", "iss", "aud"] {
            assert_eq!(without(k), Err("token lacks exp, iss or aud"), "{k}");
        }
        assert_eq!(without("sub"), Err("token lacks the identity claim"));
        assert_eq!(with("sub", json!(42)), Ok("42".to_string()));
    }

    #[test]
    fn headers_keys_and_signatures_are_checked_strictly() {
        let s = signers();
        let c = claims().to_string();
        let h = |v: Value| v.to_string();
        // The key's `alg` binds it; another key type never fits.
        let es_as_ed = s.sign_raw("es", &h(json!({"alg": "EdDSA", "kid": "es"})), &c);
        assert_eq!(s.check(&es_as_ed).err(), Some("unknown signing key"));
        // Algorithms not configured, HMAC, `none`, or a name in the wrong case.
        for alg in ["ES384", "HS256", "none", "eddsa"] {
            let t = s.sign_raw("ed", &h(json!({"alg": alg, "kid": "ed"})), &c);
            assert_eq!(s.check(&t).err(), Some("algorithm not allowed"), "{alg}");
        }
        // `crit` names extensions mcplb does not implement.
        let crit = s.sign_raw(
            "ed",
            &h(json!({"alg": "EdDSA", "kid": "ed", "crit": ["b64"], "b64": false})),
            &c,
        );
        assert!(s.check(&crit).is_err());
        // A header field given twice is malformed, not "the last one wins".
        let twice = s.sign_raw("ed", r#"{"alg":"EdDSA","alg":"ES256","kid":"ed"}"#, &c);
        assert_eq!(s.check(&twice).err(), Some("malformed token"));
        // No kid: accepted only when exactly one key fits the algorithm.
        let no_kid = s.sign_raw("ed", &h(json!({"alg": "EdDSA"})), &c);
        assert!(s.check(&no_kid).is_ok());
        // Padding, another alphabet, extra parts: malformed.
        let good = s.sign("ed", &claims());
        let padded = format!("{good}==");
        let std_alphabet = good.replace('-', "+").replace('_', "/");
        for bad in [
            padded.as_str(),
            &format!("{good}.x"),
            &format!(".{good}"),
            "a.b",
            "...",
            "",
        ] {
            assert!(s.check(bad).is_err(), "{bad}");
        }
        if std_alphabet != good {
            assert!(s.check(&std_alphabet).is_err());
        }
        // The claims are only read once the signature holds: garbage under a bad signature
        // says "bad signature", not "malformed".
        let (head, _) = good.rsplit_once('.').unwrap_or_default();
        let forged = format!(
            "{}.{}.{}",
            head.split('.').next().unwrap_or(""),
            "!!!",
            "AAAA"
        );
        assert_eq!(s.check(&forged).err(), Some("bad signature"));
    }

    proptest! {
        #![proptest_config(ProptestConfig {
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6a77),
            cases: 256,
            ..ProptestConfig::default()
        })]

        #[test]
        fn garbage_is_refused_without_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let s = signers();
            prop_assert!(verify_at(&s.verifier, &bytes, NOW).is_err());
        }

        #[test]
        fn token_shaped_garbage_is_refused_without_panic(
            t in "[A-Za-z0-9_=+/-]{0,60}\\.[A-Za-z0-9_-]{0,120}\\.[A-Za-z0-9_-]{0,90}",
            header in "\\{\"alg\":\"(EdDSA|ES256|RS256|none)\"(,\"kid\":\"(ed|es|x)\")?[^}]{0,20}\\}",
        ) {
            let s = signers();
            prop_assert!(verify_at(&s.verifier, t.as_bytes(), NOW).is_err());
            let (_, rest) = t.split_once('.').unwrap_or_default();
            let with_header = format!("{}.{rest}", B64.encode(&header));
            prop_assert!(verify_at(&s.verifier, with_header.as_bytes(), NOW).is_err());
        }

        #[test]
        fn a_changed_or_cut_token_never_verifies(
            ed in any::<bool>(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let s = signers();
            let good = s.sign(if ed { "ed" } else { "es" }, &claims());
            prop_assert!(s.check(&good).is_ok());
            let mut changed = good.clone().into_bytes();
            let i = at.index(changed.len());
            prop_assume!(changed[i] != byte);
            changed[i] = byte;
            prop_assert!(verify_at(&s.verifier, &changed, NOW).is_err());
            let cut = &good.as_bytes()[..cut.index(good.len())];
            prop_assert!(verify_at(&s.verifier, cut, NOW).is_err());
        }
    }
}
