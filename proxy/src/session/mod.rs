//! Sealed session ids: the `Mcp-Session-Id` a client sees carries its own route, and in groups
//! with authentication, its owner.
//!
//! The id is `base64url(nonce ‖ ChaCha20-Poly1305(version ‖ backend tag ‖ [owner] ‖ backend's
//! session id))`, so any core, and any replica of mcplb sharing the key, routes it with no
//! shared table; the backend's own id stays hidden from the client, and an id that does not
//! open is answered 404, exactly as a server answers an unknown session.
//!
//! Version 1 ids carry no owner (groups without authentication, and every id sealed before
//! sessions were bound to callers); version 2 ids carry an [`Owner`]: a keyed digest of the
//! identity of the caller whose request started the session, so that a leaked id is useless to
//! anyone else. The digest's key is derived from the session key, so every replica sharing the
//! session key computes the same owner for the same caller, across restarts too.

pub(crate) mod era;
pub(crate) mod era_input;
pub(crate) mod era_listen;
pub mod failover;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use ring::{aead, hmac};

/// An id without an owner.
const VERSION: u8 = 1;
/// An id with an owner after the backend tag.
const VERSION_OWNED: u8 = 2;
const NONCE: usize = 12;
const TAG: usize = 16;
/// The AEAD's associated data: every sealed kind (session, virtual, state) shares it; the
/// kind byte inside the body tells them apart.
const AAD: &[u8] = b"mcplb-session";
/// Bytes of an [`Owner`] digest.
pub const OWNER: usize = 16;
/// Longest backend session id we seal (ids are visible ASCII and short in practice).
pub const MAX_BACKEND_SID: usize = 256;
/// Scratch space needed to open a sealed id.
pub const SCRATCH: usize = NONCE + 1 + 4 + OWNER + MAX_BACKEND_SID + TAG;
/// A virtual server's id: its payload is laid out by `crate::virtual_server::session`.
const VERSION_VIRTUAL: u8 = 3;
/// Largest virtual-server payload sealed (the sealed id is about 4/3 of it, plus 40 bytes).
pub const MAX_VIRTUAL_PAYLOAD: usize = 1024;
/// A sealed `requestState` of a call awaiting its user's approval (`policy::confirm`): its
/// payload is laid out there.
pub const VERSION_CONFIRM: u8 = 4;
/// A sealed `requestState` of a bridged call waiting for its client's input
/// (`session::era::CallState`): what a replay of the call needs.
pub const VERSION_ERA_STATE: u8 = 5;
/// Largest era-bridge request state sealed (the answers of the rounds it carries).
pub const MAX_ERA_STATE_PAYLOAD: usize = 12 * 1024;
/// Set on the version byte of a plain id (1 or 2) whose client declared the `elicitation`
/// capability in its `initialize` (mcplb may ask it to approve a call).
const ELICITS: u8 = 0x40;
/// What the owner digest's key is derived for (the session key also keys the AEAD).
const OWNER_KEY_LABEL: &[u8] = b"mcplb session owner v1";

/// Largest payload sealed as `kind` ([`SessionSealer::seal_kind`]).
fn max_payload(kind: u8) -> usize {
    if kind == VERSION_ERA_STATE {
        MAX_ERA_STATE_PAYLOAD
    } else {
        MAX_VIRTUAL_PAYLOAD
    }
}

/// Who a session belongs to: the first [`OWNER`] bytes of an HMAC-SHA256 of the caller's
/// identity (never the identity or a credential), under a key derived from the session key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Owner([u8; OWNER]);

impl Owner {
    /// Whether `other` is the same owner (compared in constant time).
    pub fn matches(&self, other: &Owner) -> bool {
        self.0
            .iter()
            .zip(&other.0)
            .fold(0u8, |x, (a, b)| x | (a ^ b))
            == 0
    }

    /// Whether `other` (a digest's bytes) is this owner (compared in constant time).
    pub fn matches_bytes(&self, other: &[u8; OWNER]) -> bool {
        self.matches(&Owner(*other))
    }

    /// The digest's bytes (for carrying it over mcplb's own loopback hops).
    pub fn as_bytes(&self) -> &[u8; OWNER] {
        &self.0
    }
}

impl std::fmt::Debug for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not secret, but nothing an operator needs in a log either.
        f.write_str("Owner(..)")
    }
}

/// What a sealed id holds.
#[derive(Debug, PartialEq, Eq)]
pub struct Opened<'s> {
    /// The backend's tag.
    pub tag: u32,
    /// The owner, for ids sealed with one (version 2).
    pub owner: Option<Owner>,
    /// The backend's own session id (a slice of the scratch space).
    pub sid: &'s [u8],
    /// Which key opened it (its place in the list; 0 is the key that seals new ids).
    pub key: usize,
    /// The client declared the `elicitation` capability when the session began.
    pub elicits: bool,
}

/// Seals session ids with the first of its keys and opens them with any.
pub struct SessionSealer {
    /// Never empty: [`SessionSealer::with_keys`] refuses an empty list.
    keys: Vec<SealKey>,
    /// Unique to this sealer in the process (a reload builds a new one): an [`OpenMemo`]
    /// filled by another sealer, whose keys may differ, is never taken.
    id: u64,
}

/// The sealers built so far (for [`SessionSealer::id`]).
static SEALERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_sealer_id() -> u64 {
    SEALERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A connection's memo of its last session id ([`SessionSealer::open_memo`]). Filled from the
/// second id opened on a connection: a connection that idles past the hot wait is parked
/// without its per-request state, and its memo carries over only when the warm task that
/// parked it serves it again (`runtime/park.rs`); one served by another task starts with a
/// new slot, and would only pay for filling a memo it might never read (two allocations a
/// call, measured in the paced `bench/one_call.sh` cell).
#[derive(Default)]
pub struct MemoSlot {
    /// An id was opened with this slot already.
    armed: bool,
    memo: Option<Box<OpenMemo>>,
}

/// A connection's last session id that opened, and what it opened to: a keep-alive client
/// sends the same id with every request of its session, and comparing its bytes costs ~100
/// instructions where opening it again costs ~5 000 (ChaCha20-Poly1305 and base64).
/// Any other id (altered by one byte, another session's, or the same bytes under another
/// sealer, i.e. after a reload or key rotation) is opened and checked in full.
#[derive(Default)]
struct OpenMemo {
    /// The [`SessionSealer::id`] that opened it.
    sealer: u64,
    /// Which of that sealer's keys opened it.
    key: usize,
    /// Bytes of the sealed id at the start of `bytes`.
    sealed_len: usize,
    /// The sealed id, then its opened body (version ‖ tag ‖ [owner] ‖ backend sid).
    bytes: Vec<u8>,
}

/// One session key, prepared.
struct SealKey {
    /// ChaCha20-Poly1305 (RFC 8439), AAD "mcplb-session". ring's (BoringSSL's assembly) opens a
    /// 48-byte body in ~210 ns where the RustCrypto `chacha20poly1305` crate it replaced took
    /// ~1 700 ns on this machine: the same algorithm and layout, so ids sealed by either open
    /// with the other (the test `ids_sealed_before_owners_still_open` seals with RustCrypto's).
    aead: aead::LessSafeKey,
    /// The HMAC-SHA256 key of owner digests (its prepared inner and outer states: a digest
    /// copies them, no allocation).
    owner_key: hmac::Key,
}

impl SealKey {
    fn new(key: &[u8; 32]) -> Self {
        // The owner key is HMAC(session key, label): a PRF output no other use of the session
        // key produces, identical in every process given the same session key.
        let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), OWNER_KEY_LABEL);
        SealKey {
            // A 32-byte key is what CHACHA20_POLY1305 takes: `new` cannot fail on it.
            aead: aead::LessSafeKey::new(
                aead::UnboundKey::new(&aead::CHACHA20_POLY1305, key)
                    .unwrap_or_else(|_| unreachable!("a 32-byte ChaCha20-Poly1305 key")),
            ),
            owner_key: hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref()),
        }
    }

    /// Encrypts `body` in place under `nonce` (NONCE bytes); the tag, or `None` when ring
    /// refuses (a body longer than the algorithm's limit, far above any id's).
    fn seal(&self, nonce: &[u8], body: &mut [u8]) -> Option<[u8; TAG]> {
        let nonce = aead::Nonce::try_assume_unique_for_key(nonce).ok()?;
        let tag = self
            .aead
            .seal_in_place_separate_tag(nonce, aead::Aad::from(AAD), body)
            .ok()?;
        tag.as_ref().try_into().ok()
    }

    /// Decrypts `body` in place if `tag` authenticates it under `nonce`. On `false` the body
    /// may have been overwritten (ring's contract): a caller trying another key decodes the
    /// ciphertext again first.
    fn open(&self, nonce: &[u8], body: &mut [u8], tag: &[u8]) -> bool {
        let (Ok(nonce), Ok(tag)) = (
            aead::Nonce::try_assume_unique_for_key(nonce),
            <[u8; TAG]>::try_from(tag),
        ) else {
            return false;
        };
        self.aead
            .open_in_place_separate_tag(
                nonce,
                aead::Aad::from(AAD),
                aead::Tag::from(tag),
                body,
                0..,
            )
            .is_ok()
    }

    fn owner(&self, parts: &[&[u8]]) -> Owner {
        let mut mac = hmac::Context::with_key(&self.owner_key);
        for p in parts {
            mac.update(&(p.len() as u64).to_le_bytes());
            mac.update(p);
        }
        let full = mac.sign();
        let mut o = [0u8; OWNER];
        o.copy_from_slice(&full.as_ref()[..OWNER]);
        Owner(o)
    }
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
            keys: vec![SealKey::new(key)],
            id: next_sealer_id(),
        }
    }

    /// A sealer whose first key seals and every key opens (a rotation: `[new, old, ...]`);
    /// `None` for an empty list.
    pub fn with_keys(keys: &[[u8; 32]]) -> Option<Self> {
        if keys.is_empty() {
            return None;
        }
        Some(SessionSealer {
            keys: keys.iter().map(SealKey::new).collect(),
            id: next_sealer_id(),
        })
    }

    /// The key that seals new ids (the list is never empty).
    fn sealing(&self) -> &SealKey {
        // `keys` is never empty: `new` builds one, `with_keys` refuses an empty list.
        &self.keys[0]
    }

    /// A fresh random key (used when the config sets none).
    pub fn random_key() -> [u8; 32] {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        k
    }

    /// The owner digest of an identity given as parts (each length-prefixed, so that no two
    /// different lists of parts digest alike), under the sealing key. Allocates nothing.
    pub fn owner(&self, parts: &[&[u8]]) -> Owner {
        self.sealing().owner(parts)
    }

    /// The owner digest under key `key` (as [`Opened::key`] names it): an id opened by an
    /// older key carries its owner digested under that key. `None` past the list.
    pub fn owner_under(&self, key: usize, parts: &[&[u8]]) -> Option<Owner> {
        self.keys.get(key).map(|k| k.owner(parts))
    }

    /// Seals `(backend_tag, owner, backend_sid)` into the id the client will hold, appended to
    /// `out`. Without an owner, the id is the unowned version 1.
    pub fn seal(
        &self,
        backend_tag: u32,
        owner: Option<&Owner>,
        backend_sid: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        self.seal_session(backend_tag, owner, false, backend_sid, out)
    }

    /// [`seal`](Self::seal), remembering in the id whether the session's client declared the
    /// `elicitation` capability ([`Opened::elicits`]).
    pub fn seal_session(
        &self,
        backend_tag: u32,
        owner: Option<&Owner>,
        elicits: bool,
        backend_sid: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), SealError> {
        if backend_sid.len() > MAX_BACKEND_SID {
            return Err(SealError::TooLong);
        }
        let mut buf = [0u8; SCRATCH];
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let owner_len = if owner.is_some() { OWNER } else { 0 };
        let plain_len = 1 + 4 + owner_len + backend_sid.len();
        buf[..NONCE].copy_from_slice(&nonce);
        buf[NONCE] = if owner.is_some() {
            VERSION_OWNED
        } else {
            VERSION
        } | if elicits { ELICITS } else { 0 };
        buf[NONCE + 1..NONCE + 5].copy_from_slice(&backend_tag.to_le_bytes());
        if let Some(o) = owner {
            buf[NONCE + 5..NONCE + 5 + OWNER].copy_from_slice(&o.0);
        }
        buf[NONCE + 5 + owner_len..NONCE + plain_len].copy_from_slice(backend_sid);
        let (head, rest) = buf.split_at_mut(NONCE);
        let Some(tag) = self.sealing().seal(head, &mut rest[..plain_len]) else {
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

    /// Seals a virtual server's session payload (at most [`MAX_VIRTUAL_PAYLOAD`] bytes) into
    /// the id its client holds, appended to `out`: `base64url(nonce ‖ ChaCha20-Poly1305(3 ‖
    /// payload))`, with the same (sealing) key and AAD as every other id; any listed key opens
    /// it. Its version byte keeps it from
    /// opening as a plain group's id, and theirs from opening as its.
    pub fn seal_virtual(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        self.seal_kind(VERSION_VIRTUAL, payload, out)
    }

    /// Seals `payload` (at most [`MAX_VIRTUAL_PAYLOAD`] bytes, [`MAX_ERA_STATE_PAYLOAD`] for an
    /// era-bridge request state) after the version byte `kind` (a virtual server's id, a
    /// confirmation's request state, a bridged call's): no kind opens as another.
    pub fn seal_kind(&self, kind: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        if payload.len() > max_payload(kind) {
            return Err(SealError::TooLong);
        }
        let mut nonce = [0u8; NONCE];
        rand::thread_rng().fill_bytes(&mut nonce);
        let mut buf = Vec::with_capacity(NONCE + 1 + payload.len() + TAG);
        buf.extend_from_slice(&nonce);
        buf.push(kind);
        buf.extend_from_slice(payload);
        let (head, rest) = buf.split_at_mut(NONCE);
        let Some(tag) = self.sealing().seal(head, rest) else {
            return Err(SealError::TooLong);
        };
        buf.extend_from_slice(&tag);
        let start = out.len();
        out.resize(
            start + base64::encoded_len(buf.len(), false).unwrap_or(0),
            0,
        );
        let n = URL_SAFE_NO_PAD
            .encode_slice(&buf, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + n);
        Ok(())
    }

    /// Opens a virtual server's sealed id into `buf`: its payload (a slice of `buf`), or `None`
    /// when it was not sealed with this key, was altered, or is another kind of id.
    pub fn open_virtual<'b>(&self, sealed: &[u8], buf: &'b mut Vec<u8>) -> Option<&'b [u8]> {
        self.open_virtual_keyed(sealed, buf)
            .map(|(payload, _)| payload)
    }

    /// [`open_virtual`](Self::open_virtual), and which key opened it (0: the sealing key).
    pub fn open_virtual_keyed<'b>(
        &self,
        sealed: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Option<(&'b [u8], usize)> {
        self.open_kind(VERSION_VIRTUAL, sealed, buf)
    }

    /// Opens what [`seal_kind`](Self::seal_kind) sealed with `kind` into `buf`: the payload (a
    /// slice of `buf`) and which key opened it, or `None` when no key opens it, it was
    /// altered, or it is another kind.
    pub fn open_kind<'b>(
        &self,
        kind: u8,
        sealed: &[u8],
        buf: &'b mut Vec<u8>,
    ) -> Option<(&'b [u8], usize)> {
        let max = NONCE + 1 + max_payload(kind) + TAG;
        if sealed.len() > base64::encoded_len(max, false)? {
            return None;
        }
        buf.clear();
        buf.resize(max, 0);
        let n = URL_SAFE_NO_PAD.decode_slice(sealed, buf).ok()?;
        if n < NONCE + 1 + TAG {
            return None;
        }
        buf.truncate(n);
        let key = self.open_decoded(sealed, buf, n)?;
        match buf[NONCE..n - TAG].split_first() {
            Some((&v, payload)) if v == kind => Some((payload, key)),
            _ => None,
        }
    }

    /// Opens a sealed id: the backend tag, the owner (if it was sealed with one) and the
    /// backend's session id (a slice of `scratch`) and which key opened it, or `None` when the
    /// id was not sealed with any of the keys or was altered.
    pub fn open<'s>(&self, sealed: &[u8], scratch: &'s mut [u8; SCRATCH]) -> Option<Opened<'s>> {
        let (body, key) = self.decrypt(sealed, scratch)?;
        parse_body(body, key)
    }

    /// [`open`](Self::open), remembering in `slot` the id that opened (from the slot's second
    /// open on, [`MemoSlot`]): the same bytes again (the connection's next request in its
    /// session) are not decrypted again but copied from the memo, which only this sealer's
    /// opens fill. An id that does not open leaves the memo as it was.
    pub fn open_memo<'s>(
        &self,
        sealed: &[u8],
        scratch: &'s mut [u8; SCRATCH],
        slot: &mut MemoSlot,
    ) -> Option<Opened<'s>> {
        if let Some(m) = slot.memo.as_deref() {
            if m.sealer == self.id && m.bytes.get(..m.sealed_len) == Some(sealed) {
                let body = &m.bytes[m.sealed_len..];
                let out = scratch.get_mut(..body.len())?;
                out.copy_from_slice(body);
                return parse_body(out, m.key);
            }
        }
        let (body, key) = self.decrypt(sealed, scratch)?;
        // Remembered only when it parses, so a hit gives what a full open gives.
        let opened = parse_body(body, key)?;
        if !slot.armed {
            slot.armed = true;
            return Some(opened);
        }
        let m = slot.memo.get_or_insert_with(Box::default);
        m.sealer = self.id;
        m.key = key;
        m.sealed_len = sealed.len();
        m.bytes.clear();
        m.bytes.extend_from_slice(sealed);
        m.bytes.extend_from_slice(body);
        Some(opened)
    }

    /// Decodes and decrypts a sealed id in `scratch`: its body (version ‖ tag ‖ [owner] ‖
    /// backend sid, a slice of `scratch`) and which key opened it.
    fn decrypt<'s>(
        &self,
        sealed: &[u8],
        scratch: &'s mut [u8; SCRATCH],
    ) -> Option<(&'s [u8], usize)> {
        if sealed.len() > base64::encoded_len(SCRATCH, false)? {
            return None;
        }
        let n = URL_SAFE_NO_PAD.decode_slice(sealed, scratch).ok()?;
        if n < NONCE + 1 + 4 + TAG {
            return None;
        }
        let key = self.open_decoded(sealed, &mut scratch[..], n)?;
        Some((&scratch[NONCE..n - TAG], key))
    }

    /// Opens the id `sealed` decoded at the start of `buf` (`n` bytes: nonce ‖ body ‖ tag)
    /// with each key in turn (a rotation): which key opened it, the body then decrypted in
    /// place. A failed try may leave the body overwritten (ring's contract), so a later key
    /// decodes `sealed` into `buf` again first.
    fn open_decoded(&self, sealed: &[u8], buf: &mut [u8], n: usize) -> Option<usize> {
        let body_len = n.checked_sub(NONCE + TAG)?;
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                URL_SAFE_NO_PAD.decode_slice(sealed, &mut *buf).ok()?;
            }
            let (nonce, rest) = buf.split_at_mut(NONCE);
            let (body, tail) = rest.split_at_mut(body_len);
            if k.open(nonce, body, tail.get(..TAG)?) {
                return Some(i);
            }
        }
        None
    }
}

/// What an opened body (version ‖ backend tag ‖ [owner] ‖ backend sid) holds; `None` for
/// another kind of id or one too short.
fn parse_body(body: &[u8], key: usize) -> Option<Opened<'_>> {
    let tag: [u8; 4] = body.get(1..5)?.try_into().ok()?;
    let backend_tag = u32::from_le_bytes(tag);
    let elicits = body[0] & ELICITS != 0;
    match body[0] & !ELICITS {
        VERSION => Some(Opened {
            tag: backend_tag,
            owner: None,
            sid: &body[5..],
            key,
            elicits,
        }),
        VERSION_OWNED => {
            let o: [u8; OWNER] = body.get(5..5 + OWNER)?.try_into().ok()?;
            Some(Opened {
                tag: backend_tag,
                owner: Some(Owner(o)),
                sid: body.get(5 + OWNER..)?,
                key,
                elicits,
            })
        }
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn open_owned(s: &SessionSealer, id: &[u8]) -> Option<(u32, Option<Owner>, Vec<u8>)> {
        let mut scratch = [0u8; SCRATCH];
        s.open(id, &mut scratch)
            .map(|o| (o.tag, o.owner, o.sid.to_vec()))
    }

    /// What [`SessionSealer::open_memo`] gives, owned.
    type Got = Option<(u32, Option<Owner>, Vec<u8>, usize, bool)>;

    fn open_with(s: &SessionSealer, id: &[u8], memo: &mut MemoSlot) -> Got {
        let mut scratch = [0u8; SCRATCH];
        s.open_memo(id, &mut scratch, memo)
            .map(|o| (o.tag, o.owner, o.sid.to_vec(), o.key, o.elicits))
    }

    fn open_full(s: &SessionSealer, id: &[u8]) -> Got {
        let mut scratch = [0u8; SCRATCH];
        s.open(id, &mut scratch)
            .map(|o| (o.tag, o.owner, o.sid.to_vec(), o.key, o.elicits))
    }

    #[test]
    fn open_memo_serves_only_the_same_bytes_under_the_same_sealer() {
        let s = SessionSealer::new(&[7u8; 32]);
        let owner = s.owner(&[b"api-key", &[1u8; 32]]);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        s.seal_session(3, Some(&owner), true, b"backend-a", &mut a)
            .unwrap();
        s.seal(4, None, b"backend-b", &mut b).unwrap();
        let mut slot = MemoSlot::default();
        assert!(open_full(&s, &a).is_some());
        // The slot's first open remembers nothing (a parked connection served by another
        // task starts with a new slot), the second does.
        assert_eq!(open_with(&s, &a, &mut slot), open_full(&s, &a));
        assert!(slot.memo.is_none());
        assert_eq!(open_with(&s, &a, &mut slot), open_full(&s, &a));
        let m = slot.memo.as_deref().unwrap();
        assert_eq!(&m.bytes[..m.sealed_len], &a[..]);
        // The same bytes again are served from the memo: an altered memo shows through (the
        // test's way of seeing that the decryption was skipped).
        let last = slot.memo.as_deref().unwrap().bytes.len() - 1;
        slot.memo.as_deref_mut().unwrap().bytes[last] = b'X';
        assert_eq!(open_with(&s, &a, &mut slot).unwrap().2, b"backend-X");
        slot.memo.as_deref_mut().unwrap().bytes[last] = b'a';
        assert_eq!(open_with(&s, &a, &mut slot), open_full(&s, &a));
        // Any byte altered: opened in full, refused, and the memo stays.
        for i in 0..a.len() {
            let mut t = a.clone();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(open_with(&s, &t, &mut slot), None, "byte {i}");
        }
        // A prefix or an extension of the remembered id is another id.
        assert_eq!(open_with(&s, &a[..a.len() - 1], &mut slot), None);
        let mut longer = a.clone();
        longer.push(b'A');
        assert_eq!(open_with(&s, &longer, &mut slot), None);
        assert_eq!(open_with(&s, &a, &mut slot), open_full(&s, &a));
        // Another session's id replaces it; both keep opening to their own.
        assert_eq!(open_with(&s, &b, &mut slot), open_full(&s, &b));
        assert_eq!(open_with(&s, &a, &mut slot).unwrap().2, b"backend-a");
        assert_eq!(open_with(&s, &b, &mut slot).unwrap().0, 4);
        // Another sealer (a reload) never takes this one's memo: with other keys the id does
        // not open, though its bytes are remembered.
        let other = SessionSealer::new(&[8u8; 32]);
        assert_eq!(open_with(&other, &b, &mut slot), None);
        assert_eq!(slot.memo.as_deref().unwrap().sealer, s.id);
        // With the same key it opens in full and the memo becomes the new sealer's.
        let same = SessionSealer::new(&[7u8; 32]);
        assert_eq!(open_with(&same, &b, &mut slot), open_full(&s, &b));
        assert_eq!(slot.memo.as_deref().unwrap().sealer, same.id);
        // A rotation: the old key's id opens under key 1, from the memo too.
        let rotated = SessionSealer::with_keys(&[[9u8; 32], [7u8; 32]]).unwrap();
        let first = open_with(&rotated, &a, &mut slot);
        assert_eq!(first.as_ref().unwrap().3, 1);
        assert_eq!(open_with(&rotated, &a, &mut slot), first);
        // The key dropped: the memo of the sealer that still had it is not taken.
        let dropped = SessionSealer::with_keys(&[[9u8; 32]]).unwrap();
        assert_eq!(open_with(&dropped, &a, &mut slot), None);
    }

    #[test]
    fn round_trip_and_tamper() {
        let s = SessionSealer::new(&[7u8; 32]);
        let owner = s.owner(&[b"api-key", &[1u8; 32]]);
        for who in [None, Some(&owner)] {
            let mut out = Vec::new();
            assert_eq!(
                s.seal(0xdead_beef, who, b"backend-session-42", &mut out),
                Ok(())
            );
            assert!(out.iter().all(|b| (0x21..0x7f).contains(b)));
            assert_eq!(
                open_owned(&s, &out),
                Some((0xdead_beef, who.copied(), b"backend-session-42".to_vec()))
            );

            // Two seals of the same route differ (random nonce), both open.
            let mut out2 = Vec::new();
            assert_eq!(
                s.seal(0xdead_beef, who, b"backend-session-42", &mut out2),
                Ok(())
            );
            assert_ne!(out, out2);

            // Any flipped character fails to open.
            let mut scratch = [0u8; SCRATCH];
            for i in 0..out.len() {
                let mut bad = out.clone();
                bad[i] = if bad[i] == b'A' { b'B' } else { b'A' };
                assert!(s.open(&bad, &mut scratch).is_none(), "flip at {i} opened");
            }
            // Another key fails.
            let other = SessionSealer::new(&[8u8; 32]);
            assert!(other.open(&out, &mut scratch).is_none());
            assert_eq!(
                s.seal(1, who, &[b'a'; 300], &mut out),
                Err(SealError::TooLong)
            );
            // The longest backend id fits the scratch space.
            let mut long = Vec::new();
            assert_eq!(s.seal(2, who, &[b'z'; MAX_BACKEND_SID], &mut long), Ok(()));
            assert_eq!(
                open_owned(&s, &long).map(|(t, _, sid)| (t, sid.len())),
                Some((2, MAX_BACKEND_SID))
            );
            let mut empty = Vec::new();
            assert_eq!(s.seal(3, who, b"", &mut empty), Ok(()));
            assert_eq!(open_owned(&s, &empty), Some((3, who.copied(), Vec::new())));
        }
        // Garbage and empty fail, never panic.
        let mut scratch = [0u8; SCRATCH];
        for g in [&b""[..], b"!!!!", b"abc", &[0xffu8; 600][..]] {
            assert!(s.open(g, &mut scratch).is_none());
        }
    }

    #[test]
    fn rotated_keys_seal_with_the_first_and_open_with_any() {
        let (new, old, dropped) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        assert!(SessionSealer::with_keys(&[]).is_none());
        let before = SessionSealer::with_keys(&[old, dropped]).unwrap();
        let after = SessionSealer::with_keys(&[new, old]).unwrap();
        let parts: [&[u8]; 2] = [b"api-key", &[5u8; 32]];
        let owner_old = before.owner(&parts);
        let (mut by_old, mut by_dropped, mut by_new) = (Vec::new(), Vec::new(), Vec::new());
        before
            .seal(7, Some(&owner_old), b"s-old", &mut by_old)
            .unwrap();
        SessionSealer::new(&dropped)
            .seal(8, None, b"s-dropped", &mut by_dropped)
            .unwrap();
        after.seal(9, None, b"s-new", &mut by_new).unwrap();
        let mut scratch = [0u8; SCRATCH];
        // An id of the old key opens after the rotation, saying which key opened it, and its
        // owner is the caller's digest under that key (not under the new one).
        let o = after.open(&by_old, &mut scratch).unwrap();
        assert_eq!((o.tag, o.sid, o.key), (7, &b"s-old"[..], 1));
        assert_eq!(o.owner, after.owner_under(1, &parts));
        assert_ne!(o.owner, Some(after.owner(&parts)));
        assert_eq!(after.owner_under(2, &parts), None);
        // New ids are sealed with the first key: the old key alone does not open them.
        let o = after.open(&by_new, &mut scratch).unwrap();
        assert_eq!((o.tag, o.key), (9, 0));
        assert!(SessionSealer::new(&old)
            .open(&by_new, &mut scratch)
            .is_none());
        assert!(SessionSealer::new(&new)
            .open(&by_new, &mut scratch)
            .is_some());
        // An id of a dropped key no longer opens.
        assert!(before.open(&by_dropped, &mut scratch).is_some());
        assert!(after.open(&by_dropped, &mut scratch).is_none());
        // Virtual servers' ids rotate alike.
        let (mut v_old, mut v_dropped, mut buf) = (Vec::new(), Vec::new(), Vec::new());
        before.seal_virtual(b"payload", &mut v_old).unwrap();
        SessionSealer::new(&dropped)
            .seal_virtual(b"gone", &mut v_dropped)
            .unwrap();
        assert_eq!(
            after.open_virtual_keyed(&v_old, &mut buf),
            Some((&b"payload"[..], 1))
        );
        assert_eq!(after.open_virtual(&v_dropped, &mut buf), None);
    }

    #[test]
    fn virtual_ids_round_trip_and_never_open_as_plain_ids() {
        let s = SessionSealer::new(&[7u8; 32]);
        let mut buf = Vec::new();
        for len in [0usize, 1, 100, MAX_VIRTUAL_PAYLOAD] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut id = Vec::new();
            assert_eq!(s.seal_virtual(&payload, &mut id), Ok(()));
            assert!(id.iter().all(|b| (0x21..0x7f).contains(b)));
            assert_eq!(s.open_virtual(&id, &mut buf), Some(&payload[..]));
            let mut scratch = [0u8; SCRATCH];
            assert!(
                s.open(&id, &mut scratch).is_none(),
                "a virtual id opened as plain"
            );
            let mut bad = id.clone();
            bad[5] = if bad[5] == b'A' { b'B' } else { b'A' };
            assert!(s.open_virtual(&bad, &mut buf).is_none());
        }
        let mut plain = Vec::new();
        assert_eq!(s.seal(9, None, b"sid", &mut plain), Ok(()));
        assert!(
            s.open_virtual(&plain, &mut buf).is_none(),
            "a plain id opened as virtual"
        );
        let mut too_long = Vec::new();
        assert_eq!(
            s.seal_virtual(&[0u8; MAX_VIRTUAL_PAYLOAD + 1], &mut too_long),
            Err(SealError::TooLong)
        );
        for g in [&b""[..], b"!!!!", &[b'A'; 5000][..]] {
            assert!(s.open_virtual(g, &mut buf).is_none());
        }
    }

    #[test]
    fn owners_are_keyed_stable_and_distinct() {
        let a = SessionSealer::new(&[7u8; 32]);
        let same_key = SessionSealer::new(&[7u8; 32]);
        let other_key = SessionSealer::new(&[9u8; 32]);
        let id = |s: &SessionSealer, parts: &[&[u8]]| s.owner(parts);
        // Same session key, same identity: the same owner (another process, a replica).
        assert!(id(&a, &[b"jwt", b"https://iss", b"alice"])
            .matches(&id(&same_key, &[b"jwt", b"https://iss", b"alice"])));
        // Another session key: another owner.
        assert!(!id(&a, &[b"jwt", b"https://iss", b"alice"])
            .matches(&id(&other_key, &[b"jwt", b"https://iss", b"alice"])));
        // Parts are length-prefixed: moving a boundary changes the owner.
        assert!(!id(&a, &[b"jwt", b"https://iss", b"alice"])
            .matches(&id(&a, &[b"jwt", b"https://issa", b"lice"])));
        assert!(!id(&a, &[b"jwt", b"https://iss", b"alice"])
            .matches(&id(&a, &[b"jwt", b"https://iss", b"bob"])));
    }

    #[test]
    fn owner_digest_is_the_documented_hmac() {
        // HMAC-SHA256(HMAC-SHA256(session key, label), len ‖ part ‖ ...), first 16 bytes, as
        // computed independently (Python's hmac module) for this key and identity.
        let got = SessionSealer::new(&[0x5au8; 32]).owner(&[b"jwt", b"https://iss", b"alice"]);
        let hex: String = got.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "059ec32145fde8167aa9cdf9d377361c");
    }

    #[test]
    fn ids_remember_whether_their_client_elicits() {
        let s = SessionSealer::new(&[3u8; 32]);
        let owner = s.owner(&[b"alice"]);
        for (owner, elicits) in [
            (None, true),
            (Some(&owner), true),
            (None, false),
            (Some(&owner), false),
        ] {
            let mut id = Vec::new();
            s.seal_session(9, owner, elicits, b"sid-1", &mut id)
                .unwrap();
            let mut scratch = [0u8; SCRATCH];
            let o = s.open(&id, &mut scratch).unwrap();
            assert_eq!(
                (o.tag, o.owner.is_some(), o.elicits, o.sid),
                (9, owner.is_some(), elicits, &b"sid-1"[..])
            );
            // The flag never makes a plain id open as another kind.
            assert!(s.open_virtual(&id, &mut Vec::new()).is_none());
            assert!(s.open_kind(VERSION_CONFIRM, &id, &mut Vec::new()).is_none());
        }
        // `seal` (every id sealed before the flag) says nothing about elicitation.
        let mut id = Vec::new();
        s.seal(1, None, b"x", &mut id).unwrap();
        assert!(!s.open(&id, &mut [0u8; SCRATCH]).unwrap().elicits);
    }

    #[test]
    fn ids_sealed_before_owners_still_open() {
        // A version-1 id laid out as earlier releases sealed it, built here with the AEAD
        // directly: nonce ‖ ChaCha20-Poly1305(1 ‖ tag ‖ backend sid), AAD "mcplb-session".
        let key = [7u8; 32];
        use chacha20poly1305::aead::{AeadInPlace, KeyInit};
        use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
        let aead = ChaCha20Poly1305::new(Key::from_slice(&key));
        let nonce = [3u8; NONCE];
        let mut plain = vec![1u8];
        plain.extend_from_slice(&0x0102_0304u32.to_le_bytes());
        plain.extend_from_slice(b"sid-1");
        let tag = aead
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), b"mcplb-session", &mut plain)
            .unwrap();
        let mut raw = nonce.to_vec();
        raw.extend_from_slice(&plain);
        raw.extend_from_slice(&tag);
        let v1 = URL_SAFE_NO_PAD.encode(raw);
        let s = SessionSealer::new(&key);
        assert_eq!(
            open_owned(&s, v1.as_bytes()),
            Some((0x0102_0304, None, b"sid-1".to_vec()))
        );
    }
}
