//! Address-validation tokens (NEW_TOKEN, RFC 9000 §8.1.3): after a connection's handshake,
//! mcplb gives the client a token bound to its IP address, sealed with the process's token
//! key; a client that comes back with it within [`LIFETIME`] is validated at once and skips
//! the Retry round trip.
//!
//! A token should be accepted once. quinn's own log of used tokens (a Bloom filter behind a
//! mutex) would be a lock every worker takes on each new connection; [`UsedTokens`] is a
//! table of atomics instead: each used token's nonce (random, chosen by mcplb) picks a slot
//! and leaves its fingerprint there, and the same fingerprint found again is a reuse. A slot
//! keeps only the last token that landed on it, so a reuse goes unseen once about as many
//! other tokens as the table has slots were used since; quinn allows such misses (the token
//! still only validates the address it was issued to, within its lifetime).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use quinn_proto::{TokenLog, TokenReuseError, ValidationTokenConfig};

/// How long a NEW_TOKEN token validates its address.
pub(crate) const LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// Slots of [`UsedTokens`] (8 bytes each).
const SLOTS: usize = 1 << 16;

/// The tokens used lately, shared by every worker (lock-free).
pub(crate) struct UsedTokens {
    slots: Box<[AtomicU64]>,
}

impl UsedTokens {
    fn with_slots(n: usize) -> Self {
        UsedTokens {
            slots: (0..n.max(1)).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl TokenLog for UsedTokens {
    fn check_and_insert(
        &self,
        nonce: u128,
        _issued: SystemTime,
        _lifetime: Duration,
    ) -> Result<(), TokenReuseError> {
        let slot = ((nonce >> 64) as u64 % self.slots.len() as u64) as usize;
        // Never 0, the empty slot's value.
        let print = (nonce as u64) | 1;
        match self.slots.get(slot) {
            Some(s) if s.swap(print, Ordering::Relaxed) == print => Err(TokenReuseError),
            _ => Ok(()),
        }
    }
}

/// What seals and checks tokens, one for the process (kept across reloads, so a token or a
/// Retry issued before a reload still validates after it).
#[derive(Clone)]
pub(crate) struct TokenKeys {
    /// Seals Retry and NEW_TOKEN tokens.
    pub(crate) key: Arc<dyn quinn_proto::crypto::HandshakeTokenKey>,
    used: Arc<UsedTokens>,
}

impl TokenKeys {
    /// A new random key and an empty log.
    pub(crate) fn new() -> Self {
        let mut secret = [0u8; 64];
        rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
        TokenKeys {
            key: Arc::new(ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(&secret)),
            used: Arc::new(UsedTokens::with_slots(SLOTS)),
        }
    }

    /// quinn's NEW_TOKEN settings: one token per connection, checked against the log.
    pub(crate) fn validation(&self) -> ValidationTokenConfig {
        let mut v = ValidationTokenConfig::default();
        v.log(self.used.clone()).sent(1).lifetime(LIFETIME);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(log: &UsedTokens, nonce: u128) -> bool {
        log.check_and_insert(nonce, SystemTime::now(), LIFETIME)
            .is_err()
    }

    #[test]
    fn a_token_is_accepted_once() {
        let log = UsedTokens::with_slots(1024);
        let nonces: Vec<u128> = (0..100).map(|_| rand::random()).collect();
        for &n in &nonces {
            assert!(!used(&log, n));
        }
        for &n in &nonces {
            // Unless another of the hundred took its slot since (1024 slots: rare, but
            // possible; then it is accepted again, once).
            let slot_shared = nonces
                .iter()
                .filter(|&&m| (m >> 64) as u64 % 1024 == (n >> 64) as u64 % 1024)
                .count()
                > 1;
            assert!(used(&log, n) || slot_shared);
        }
        assert!(used(&log, nonces[99]));
    }

    #[test]
    fn a_slot_keeps_the_last_token() {
        let log = UsedTokens::with_slots(1);
        assert!(!used(&log, 1 << 70 | 2));
        assert!(!used(&log, 1 << 71 | 4));
        // The first was pushed out: accepted again.
        assert!(!used(&log, 1 << 70 | 2));
        assert!(used(&log, 1 << 70 | 2));
    }
}
