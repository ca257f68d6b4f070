//! JSON Web Key Sets: parsing a JWKS into verification keys, installing a new set, and the
//! background thread that fetches `jwks_url`s and refreshes them.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::jwk::{self, Jwk};
use super::jwt::JwtVerifier;
use super::{redact_url, sha256};

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

/// The keys in use, replaced whole on refresh.
pub(super) struct KeySet {
    pub(super) keys: Vec<Jwk>,
    /// Changes whenever the keys change: cached verdicts of another generation are dropped.
    pub(super) generation: u64,
    /// Fingerprint of the JWKS text, to tell a refresh that changed nothing.
    pub(super) digest: [u8; 32],
}

static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

impl KeySet {
    pub(super) fn empty() -> Self {
        KeySet {
            keys: Vec::new(),
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            digest: [0; 32],
        }
    }

    pub(super) fn new(keys: Vec<Jwk>, text: &str) -> Self {
        KeySet {
            keys,
            generation: NEXT_GENERATION.fetch_add(1, Ordering::Relaxed),
            digest: sha256(text.as_bytes()),
        }
    }
}

/// Parses a JWKS document: the usable signature keys, and why others were skipped (see
/// [`jwk::parse`]: symmetric and encryption keys are never used).
pub(super) fn parse_jwks(text: &str) -> Result<(Vec<Jwk>, Vec<String>), String> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
        return Err("not a JWKS (no \"keys\" array)".into());
    };
    let mut keys = Vec::new();
    let mut skipped = Vec::new();
    for (i, k) in list.iter().enumerate() {
        let kid = k.get("kid").and_then(|v| v.as_str()).unwrap_or("");
        let label = if kid.is_empty() {
            format!("keys[{i}]")
        } else {
            format!("keys[{i}] (kid {kid:?})")
        };
        let parsed = match k.as_object() {
            Some(obj) => jwk::parse(obj),
            None => Err("not a JSON object".to_string()),
        };
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => skipped.push(format!("{label}: {why}")),
        }
    }
    Ok((keys, skipped))
}

impl JwtVerifier {
    pub(super) fn generation(&self) -> u64 {
        self.keys.load().generation
    }

    /// Installs a freshly fetched JWKS; returns whether the keys changed. A JWKS that does not
    /// parse or holds no usable key leaves the old keys in place.
    fn install(&self, text: &str) -> Result<bool, String> {
        if self.keys.load().digest == sha256(text.as_bytes()) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
