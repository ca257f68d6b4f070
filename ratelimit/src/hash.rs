//! Keyed hashing of caller identities (API keys, session ids, addresses) into the 64-bit keys
//! the limiters use, so that secrets are never stored in clear.
//!
//! SipHash-1-3 (the hash `std`'s `HashMap` uses) with a 128-bit seed the caller draws once per
//! process: without the seed an attacker cannot compute which keys collide or land in the same
//! table group, so it cannot aim a flood at one caller. Written out here (std's keyed SipHash
//! is not public) so that the seed is an argument and tests are deterministic.

/// A seeded SipHash-1-3 hasher for limiter keys.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyHasher {
    k0: u64,
    k1: u64,
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed is a secret.
        f.write_str("KeyHasher { .. }")
    }
}

impl KeyHasher {
    /// A hasher with the given secret seed. Draw it from a random source once per process
    /// (for example two `u64` from `std::collections::hash_map::RandomState`-seeded hashers,
    /// or `getrandom`); the same seed gives the same hashes.
    pub fn new(seed: [u64; 2]) -> Self {
        KeyHasher {
            k0: seed[0],
            k1: seed[1],
        }
    }

    /// The 64-bit key of `bytes` (an API key, a session id, an address...).
    pub fn hash_key(&self, bytes: &[u8]) -> u64 {
        siphash::<1, 3>(self.k0, self.k1, bytes)
    }
}

/// Hashes `bytes` under `hasher`; a free-function spelling of [`KeyHasher::hash_key`].
pub fn hash_key(hasher: &KeyHasher, bytes: &[u8]) -> u64 {
    hasher.hash_key(bytes)
}

#[inline(always)]
fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13);
    v[1] ^= v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16);
    v[3] ^= v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21);
    v[3] ^= v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17);
    v[1] ^= v[2];
    v[2] = v[2].rotate_left(32);
}

/// SipHash-C-D of `bytes` under the key `(k0, k1)`, per the reference description.
fn siphash<const C: usize, const D: usize>(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let m = u64::from_le_bytes(word);
        v[3] ^= m;
        for _ in 0..C {
            sip_round(&mut v);
        }
        v[0] ^= m;
    }
    let mut last = [0u8; 8];
    let tail = chunks.remainder();
    for (dst, src) in last.iter_mut().zip(tail) {
        *dst = *src;
    }
    // The message length modulo 256 goes in the top byte.
    last[7] = bytes.len() as u8;
    let m = u64::from_le_bytes(last);
    v[3] ^= m;
    for _ in 0..C {
        sip_round(&mut v);
    }
    v[0] ^= m;
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const K0: u64 = u64::from_le_bytes([0, 1, 2, 3, 4, 5, 6, 7]);
    const K1: u64 = u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]);

    #[test]
    fn siphash24_reference_vectors() {
        // From the SipHash paper (appendix A): key 00..0f, message 00..0e.
        let msg: Vec<u8> = (0u8..15).collect();
        assert_eq!(siphash::<2, 4>(K0, K1, &msg), 0xa129_ca61_49be_45e5);
        assert_eq!(siphash::<2, 4>(K0, K1, &[]), 0x726f_db47_dd0e_0e31);
    }

    #[allow(deprecated)]
    fn std_siphash24(k0: u64, k1: u64, bytes: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = std::hash::SipHasher::new_with_keys(k0, k1);
        h.write(bytes);
        h.finish()
    }

    #[test]
    fn seeds_change_hashes() {
        let a = KeyHasher::new([1, 2]);
        let b = KeyHasher::new([1, 3]);
        assert_ne!(a.hash_key(b"sk-123"), b.hash_key(b"sk-123"));
        assert_eq!(a.hash_key(b"sk-123"), hash_key(&a, b"sk-123"));
        assert_ne!(a.hash_key(b"sk-123"), a.hash_key(b"sk-124"));
        assert_eq!(format!("{a:?}"), "KeyHasher { .. }");
    }

    proptest! {
        #![proptest_config(ProptestConfig { rng_seed: proptest::test_runner::RngSeed::Fixed(0x5eed), ..ProptestConfig::default() })]

        /// The shared round code is checked against std's (deprecated but public) SipHash-2-4.
        #[test]
        fn matches_std_siphash24(k0: u64, k1: u64, bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(siphash::<2, 4>(k0, k1, &bytes), std_siphash24(k0, k1, &bytes));
        }
    }
}
