//! Sealed session ids: the `Mcp-Session-Id` a client sees carries its own route.
//!
//! The id is `base64url(nonce ‖ ChaCha20-Poly1305(version ‖ backend tag ‖ backend's session id))`,
//! so any core, and any replica of mcplb sharing the key, routes it with no shared table; the
//! backend's own id stays hidden from the client, and an id that does not open is answered 404,
//! exactly as a server answers an unknown session.

pub mod failover;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use rand::RngCore;

const VERSION: u8 = 1;
const NONCE: usize = 12;
const TAG: usize = 16;
/// Longest backend session id we seal (ids are visible ASCII and short in practice).
pub const MAX_BACKEND_SID: usize = 256;
/// Scratch space needed to open a sealed id.
pub const SCRATCH: usize = NONCE + 1 + 4 + MAX_BACKEND_SID + TAG;

/// Seals and opens session ids with one key.
pub struct SessionSealer {
    aead: ChaCha20Poly1305,
}

/// Why a backend's session id could not be sealed.
#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// Longer than [`MAX_BACKEND_SID`].
    TooLong,
}

impl SessionSealer {
    /// A sealer with the given 32-byte key.
    pub fn new(key: &[u8; 32]) -> Self {
        SessionSealer {
            aead: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// A fresh random key (used when the config sets none).
    pub fn random_key() -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        k
    }

    /// Seals `(backend_tag, backend_sid)` into the id the client will hold, appended to `out`.
    pub fn seal(
        &self,
        backend_tag: u32,
        backend_sid: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if backend_sid.len() > MAX_BACKEND_SID {
            return Err(SealError::TooLong);
        }
        let mut buf = [0u8; SCRATCH];
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let plain_len = 1 + 4 + backend_sid.len();
        buf[..NONCE].copy_from_slice(&nonce);
        buf[NONCE] = VERSION;
        buf[NONCE + 1..NONCE + 5].copy_from_slice(&backend_tag.to_le_bytes());
        buf[NONCE + 5..NONCE + plain_len].copy_from_slice(backend_sid);
        let (head, rest) = buf.split_at_mut(NONCE);
        let Ok(tag) = self.aead.encrypt_in_place_detached(
            Nonce::from_slice(head),
            b"mcplb-session",
            &mut rest[..plain_len],
        ) else {
            return Err(SealError::TooLong);
        };
        rest[plain_len..plain_len + TAG].copy_from_slice(&tag);
        let total = NONCE + plain_len + TAG;
        let start = out.len();
        out.resize(start + base64::encoded_len(total, false).unwrap_or(0), 0);
        let n = URL_SAFE_NO_PAD
            .encode_slice(&buf[..total], &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + n);
        Ok(())
    }

    /// Opens a sealed id: returns the backend tag and the backend's session id (a slice of
    /// `scratch`), or `None` when the id was not sealed with this key or was altered.
    pub fn open<'s>(
        &self,
        sealed: &[u8],
        scratch: &'s mut [u8; SCRATCH],
    ) -> Option<(u32, &'s [u8])> {
        if sealed.len() > base64::encoded_len(SCRATCH, false)? {
            return None;
        }
        let n = URL_SAFE_NO_PAD.decode_slice(sealed, scratch).ok()?;
        if n < NONCE + 1 + 4 + TAG {
            return None;
        }
        let (nonce, rest) = scratch.split_at_mut(NONCE);
        let body_len = n - NONCE - TAG;
        let (body, tail) = rest.split_at_mut(body_len);
        let tag = Tag::clone_from_slice(&tail[..TAG]);
        self.aead
            .decrypt_in_place_detached(Nonce::from_slice(nonce), b"mcplb-session", body, &tag)
            .ok()?;
        if body[0] != VERSION {
            return None;
        }
        let backend_tag = u32::from_le_bytes([body[1], body[2], body[3], body[4]]);
        Some((backend_tag, &body[5..]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let s = SessionSealer::new(&[7u8; 32]);
        let mut out = Vec::new();
        assert_eq!(s.seal(0xdead_beef, b"backend-session-42", &mut out), Ok(()));
        assert!(out.iter().all(|b| (0x21..0x7f).contains(b)));
        let mut scratch = [0u8; SCRATCH];
        let opened = s.open(&out, &mut scratch).map(|(t, sid)| (t, sid.to_vec()));
        assert_eq!(opened, Some((0xdead_beef, b"backend-session-42".to_vec())));

        // Two seals of the same route differ (random nonce), both open.
        let mut out2 = Vec::new();
        assert_eq!(
            s.seal(0xdead_beef, b"backend-session-42", &mut out2),
            Ok(())
        );
        assert_ne!(out, out2);

        // Any flipped character fails to open.
        for i in 0..out.len() {
            let mut bad = out.clone();
            bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
            assert!(s.open(&bad, &mut scratch).is_none(), "flip at {i} opened");
        }
        // Another key fails.
        let other = SessionSealer::new(&[8u8; 32]);
        assert!(other.open(&out, &mut scratch).is_none());
        // Garbage and empty fail, never panic.
        for g in [&b""[..], b"!!!!", b"abc", &[0xffu8; 600][..]] {
            assert!(s.open(g, &mut scratch).is_none());
        }
        assert_eq!(s.seal(1, &[b'a'; 300], &mut out), Err(SealError::TooLong));
        let mut empty = Vec::new();
        assert_eq!(s.seal(3, b"", &mut empty), Ok(()));
        assert_eq!(
            s.open(&empty, &mut scratch).map(|(t, sid)| (t, sid.len())),
            Some((3, 0))
        );
    }
}
