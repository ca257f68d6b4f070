//! API keys: only SHA-256 digests are configured, each with the identity it stands for; a
//! presented key is hashed and compared with every digest in constant time.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::{deny, Caller, Denial};

const BAD_KEY: Denial = deny(401, Some("invalid_token"), "invalid API key");

/// One entry of `api_keys`: `"sha256:HEX"` (identity `api-key:N`), or a table
/// `{ sha256 = "HEX", identity = "alice" }`.
#[derive(Debug)]
pub(crate) enum RawApiKey {
    Digest(String),
    Table(RawApiKeyTable),
}

/// An `api_keys` entry written as a table.
#[derive(Debug, Deserialize)]
pub(crate) struct RawApiKeyTable {
    sha256: Option<String>,
    identity: Option<String>,
}

/// By hand rather than `#[serde(untagged)]`, as `RawBackend`: an untagged enum would read the
/// table out of sight of the unknown-key collector.
impl<'de> Deserialize<'de> for RawApiKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawApiKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"sha256:HEX\" or a table { sha256 = \"HEX\", identity = \"NAME\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawApiKey, E> {
                Ok(RawApiKey::Digest(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawApiKey, A::Error> {
                RawApiKeyTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawApiKey::Table)
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}

/// The validated keys: digests and, at the same positions, the identities they stand for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiKeys {
    /// SHA-256 digests of the keys.
    pub digests: Vec<[u8; 32]>,
    /// The identity of each key: its configured `identity`, or `api-key:N`.
    pub identities: Vec<String>,
}

impl ApiKeys {
    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// Validates `api_keys` into digests and identities, pushing every problem with its key path.
pub(super) fn validate(keys: Option<Vec<RawApiKey>>, key: &str, errs: &mut Vec<String>) -> ApiKeys {
    let mut out = ApiKeys::default();
    let Some(keys) = keys else {
        return out;
    };
    if keys.is_empty() {
        errs.push(format!(
            "{key}.api_keys: empty list (remove it to accept no API key)"
        ));
    }
    const HOW: &str = "the key itself never goes in the config: `printf %s KEY | sha256sum`";
    for (k, v) in keys.into_iter().enumerate() {
        let (digest, identity) = match v {
            RawApiKey::Digest(s) => match s
                .strip_prefix("sha256:")
                .and_then(crate::config::decode_hex32)
            {
                Some(d) => (d, format!("api-key:{k}")),
                None => {
                    errs.push(format!(
                        "{key}.api_keys[{k}]: must be \"sha256:\" and 64 hex digits ({HOW})"
                    ));
                    continue;
                }
            },
            RawApiKey::Table(t) => {
                let hex = t.sha256.as_deref().unwrap_or_default();
                let digest = hex.strip_prefix("sha256:").unwrap_or(hex);
                let Some(d) = crate::config::decode_hex32(digest) else {
                    errs.push(format!(
                        "{key}.api_keys[{k}].sha256: missing or not 64 hex digits ({HOW})"
                    ));
                    continue;
                };
                match t.identity {
                    Some(id) if valid_identity(&id) => (d, id),
                    Some(_) => {
                        errs.push(format!(
                            "{key}.api_keys[{k}].identity: 1 to 128 visible ASCII characters, no spaces"
                        ));
                        continue;
                    }
                    None => (d, format!("api-key:{k}")),
                }
            }
        };
        if out.digests.contains(&digest) {
            errs.push(format!("{key}.api_keys[{k}]: the same key is listed twice"));
            continue;
        }
        out.digests.push(digest);
        out.identities.push(identity);
    }
    out
}

/// An identity as it appears in logs and policies.
fn valid_identity(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// Checks `key` against the configured digests; on success `caller` is the key's identity,
/// its principal the key's digest.
pub(super) fn check(
    keys: &ApiKeys,
    key: &[u8],
    hasher: &ratelimit::KeyHasher,
    caller: &mut Caller,
) -> Result<(), Denial> {
    if keys.is_empty() {
        return Err(deny(401, Some("invalid_token"), "malformed token"));
    }
    let digest = super::sha256(key);
    // Compare with every configured digest in constant time, without stopping early.
    let mut found = usize::MAX;
    for (i, d) in keys.digests.iter().enumerate() {
        let eq = d.iter().zip(&digest).fold(0u8, |x, (a, b)| x | (a ^ b)) == 0;
        found = if eq { i } else { found };
    }
    let Some(identity) = keys.identities.get(found) else {
        return Err(BAD_KEY);
    };
    caller.set(
        hasher.hash_key(&digest).rotate_left(17) ^ 0x006b_6579,
        identity,
    );
    caller.principal = super::Principal::ApiKey(digest);
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Vec<RawApiKey> {
        #[derive(Deserialize)]
        struct T {
            api_keys: Vec<RawApiKey>,
        }
        toml::from_str::<T>(text)
            .map(|t| t.api_keys)
            .unwrap_or_default()
    }

    #[test]
    fn named_and_plain_keys() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let text =
            format!("api_keys = [\"sha256:{a}\", {{ sha256 = \"{b}\", identity = \"alice\" }}]");
        let mut errs = Vec::new();
        let keys = validate(Some(raw(&text)), "servers[0].auth", &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(keys.identities, ["api-key:0", "alice"]);
        let text = format!(
            "api_keys = [{{ sha256 = \"{a}\", identity = \"has space\" }}, {{ identity = \"x\" }}, \"sha256:{a}\", \"sha256:{a}\"]"
        );
        validate(Some(raw(&text)), "s", &mut errs);
        assert_eq!(
            errs,
            [
                "s.api_keys[0].identity: 1 to 128 visible ASCII characters, no spaces",
                "s.api_keys[1].sha256: missing or not 64 hex digits (the key itself never goes in the config: `printf %s KEY | sha256sum`)",
                "s.api_keys[3]: the same key is listed twice",
            ]
        );
    }
}
