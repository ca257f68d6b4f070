//! API keys: only SHA-256 digests are configured; a presented key is hashed and compared with
//! every digest in constant time.

use super::{deny, Caller, Denial};

const BAD_KEY: Denial = deny(401, Some("invalid_token"), "invalid API key");

/// Validates `api_keys` (each `"sha256:"` and 64 hex digits) into digests, pushing every
/// problem with its key path.
pub(super) fn validate(
    keys: Option<Vec<String>>,
    key: &str,
    errs: &mut Vec<String>,
) -> Vec<[u8; 32]> {
    let mut api_key_digests = Vec::new();
    if let Some(keys) = keys {
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
    api_key_digests
}

/// Checks `key` against the configured digests; on success `caller` is `api-key:N` (the N-th
/// configured key), its principal the key's digest.
pub(super) fn check(
    digests: &[[u8; 32]],
    key: &[u8],
    hasher: &ratelimit::KeyHasher,
    caller: &mut Caller,
) -> Result<(), Denial> {
    if digests.is_empty() {
        return Err(deny(401, Some("invalid_token"), "malformed token"));
    }
    let digest = super::sha256(key);
    // Compare with every configured digest in constant time, without stopping early.
    let mut found = usize::MAX;
    for (i, d) in digests.iter().enumerate() {
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
    caller.principal = super::Principal::ApiKey(digest);
    Ok(())
}
