//! The per-core cache of verified (and refused) tokens: a client re-sending its token pays a
//! keyed hash and a lookup, not a signature check.

use std::cell::RefCell;
use std::collections::HashMap;

use super::budget::address_key;
use super::jwt::{verify_at, JwtVerifier, INSUFFICIENT_SCOPE, NOT_YET_VALID};
use super::{deny, now_unix, Caller, Denial, JwtCheck};

/// A cached verdict on one token.
struct Cached {
    verifier: u64,
    generation: u64,
    exp: u64,
    nbf: u64,
    scope_ok: bool,
    key: u64,
    name: Box<str>,
    attrs: std::rc::Rc<super::CallerAttrs>,
    class_key: u64,
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

/// Refused unverified: the client address spent its budget of failed verifications.
const THROTTLED: Denial = deny(
    429,
    None,
    "too many failed token verifications from this address; retry later",
);

/// The policy class key of a JWT caller: its identity's key and everything rules may ask of
/// its token (never 0, so it cannot collide with "no identity").
fn class_key(hasher: &ratelimit::KeyHasher, identity: u64, attrs: &super::CallerAttrs) -> u64 {
    let mut bytes = identity.to_le_bytes().to_vec();
    for s in attrs.scopes.iter() {
        bytes.extend_from_slice(s.as_bytes());
        bytes.push(0);
    }
    bytes.push(1);
    for (k, v) in attrs.claims.iter() {
        bytes.extend_from_slice(k.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(v.as_bytes());
        bytes.push(0);
    }
    hasher.hash_key(&bytes) | 1
}

/// Checks `token` from the cache of this core, or else, when `client` has budget left, in full
/// (a failed full verification is charged to `client`).
pub(super) fn verify_cached(
    v: &JwtVerifier,
    token: &[u8],
    client: std::net::IpAddr,
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
        caller.class_key = e.class_key;
        caller.attrs = Some(e.attrs.clone());
        Some(Ok(()))
    });
    if let Some(r) = hit {
        caller.jwt = JwtCheck::Cached;
        return r;
    }
    // Not seen on this core: a signature check, unless this address has failed too often.
    let address = address_key(hasher, client);
    if !v.budget.admit(address) {
        caller.jwt = JwtCheck::Throttled;
        return Err(THROTTLED);
    }
    caller.jwt = JwtCheck::Verified;
    let verdict = match verify_at(v, token, now) {
        Ok(verdict) => verdict,
        Err(denial) => {
            v.budget.charge(address);
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
    let class_key = class_key(hasher, key, &verdict.attrs);
    let attrs = std::rc::Rc::new(verdict.attrs);
    if verdict.scope_ok {
        caller.set(key, &verdict.name);
        caller.class_key = class_key;
        caller.attrs = Some(attrs.clone());
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
                attrs,
                class_key,
            },
        );
    });
    if verdict.scope_ok {
        Ok(())
    } else {
        Err(INSUFFICIENT_SCOPE)
    }
}
