//! A virtual server's session, carried whole in the id its client holds: the members'
//! own sessions (backend tag and session id, per member), the owner of the session in groups
//! with authentication, and what a member session opened later needs (the client's protocol
//! version and capabilities). Sealed like every other id (`SessionSealer::seal_virtual`), so
//! any core and any replica with the same key serves it, with no table.
//!
//! Payload: `group tag (u32 LE) ‖ flags (bit 0: owner) ‖ [owner (16)] ‖ version length (u8) ‖
//! version ‖ capabilities length (u16 LE) ‖ capabilities JSON ‖ count (u8) ‖ count × (member
//! index (u8) ‖ backend tag (u32 LE) ‖ id length (u16 LE) ‖ id)`. Plain functions, no I/O.

use crate::session::{Owner, SessionSealer, MAX_VIRTUAL_PAYLOAD, OWNER};

/// Longest client capabilities object carried (a longer one is carried as `{}`).
const MAX_CAPABILITIES: usize = 384;

/// The id a member session carries for a member of the 2026-07-28 era alone: none the member
/// issued (no server issues this one: a session id is visible ASCII), marking that each
/// request to it goes as a 2026-07-28 one, with what the client declared at `initialize`.
pub(crate) const MODERN_ONLY: &[u8] = b"\0";

/// Whether `sid` is a session id the member issued (not none, not [`MODERN_ONLY`]).
pub(crate) fn issued(sid: &[u8]) -> bool {
    !sid.is_empty() && sid != MODERN_ONLY
}

/// One member's own session inside a virtual session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MemberSession {
    /// The member's index in the virtual server's `members`.
    pub member: u8,
    /// The tag of the member's backend that holds the session.
    pub backend_tag: u32,
    /// The backend's session id (empty: the member issued none, it is stateless;
    /// [`MODERN_ONLY`]: a member of the 2026-07-28 era alone).
    pub sid: Vec<u8>,
}

/// What a virtual session id holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct VirtualSession {
    /// The virtual group's tag: an id of another virtual server does not open here.
    pub group_tag: u32,
    /// The caller the session belongs to (groups with authentication).
    pub owner: Option<[u8; OWNER]>,
    /// The protocol version the client asked for in `initialize`.
    pub protocol_version: String,
    /// The client's `capabilities` (JSON), replayed when a member session opens later.
    pub capabilities: Vec<u8>,
    /// The members' sessions, in member order; a member without one was not reachable when
    /// the session began (or its session is opened per request).
    pub members: Vec<MemberSession>,
}

impl VirtualSession {
    /// The member session of member `m`, if the client's session carries one.
    pub fn member(&self, m: usize) -> Option<&MemberSession> {
        self.members.iter().find(|s| usize::from(s.member) == m)
    }

    /// The payload bytes, or `None` when they would not fit [`MAX_VIRTUAL_PAYLOAD`] (member
    /// sessions are left out from the last until they do).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.clone();
        if s.capabilities.len() > MAX_CAPABILITIES {
            s.capabilities = b"{}".to_vec();
        }
        s.protocol_version.truncate(64);
        loop {
            let out = s.encode_all();
            if out.len() <= MAX_VIRTUAL_PAYLOAD || s.members.is_empty() {
                return out;
            }
            s.members.pop();
        }
    }

    fn encode_all(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&self.group_tag.to_le_bytes());
        out.push(u8::from(self.owner.is_some()));
        if let Some(o) = &self.owner {
            out.extend_from_slice(o);
        }
        let v = self.protocol_version.as_bytes();
        out.push(v.len() as u8);
        out.extend_from_slice(v);
        out.extend_from_slice(&(self.capabilities.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.capabilities);
        let members: Vec<&MemberSession> = self
            .members
            .iter()
            .filter(|m| m.sid.len() <= usize::from(u16::MAX))
            .take(255)
            .collect();
        out.push(members.len() as u8);
        for m in members {
            out.push(m.member);
            out.extend_from_slice(&m.backend_tag.to_le_bytes());
            out.extend_from_slice(&(m.sid.len() as u16).to_le_bytes());
            out.extend_from_slice(&m.sid);
        }
        out
    }

    /// Reads a payload; `None` when it is not one (never panics on any bytes).
    pub fn decode(mut b: &[u8]) -> Option<VirtualSession> {
        let group_tag = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
        let flags = *take(&mut b, 1)?.first()?;
        let owner = if flags & 1 == 1 {
            Some(take(&mut b, OWNER)?.try_into().ok()?)
        } else {
            None
        };
        let vlen = usize::from(*take(&mut b, 1)?.first()?);
        let protocol_version = String::from_utf8(take(&mut b, vlen)?.to_vec()).ok()?;
        let clen = usize::from(u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?));
        let capabilities = take(&mut b, clen)?.to_vec();
        let n = *take(&mut b, 1)?.first()?;
        let mut members = Vec::with_capacity(usize::from(n));
        for _ in 0..n {
            let member = *take(&mut b, 1)?.first()?;
            let backend_tag = u32::from_le_bytes(take(&mut b, 4)?.try_into().ok()?);
            let slen = usize::from(u16::from_le_bytes(take(&mut b, 2)?.try_into().ok()?));
            let sid = take(&mut b, slen)?.to_vec();
            members.push(MemberSession {
                member,
                backend_tag,
                sid,
            });
        }
        b.is_empty().then_some(VirtualSession {
            group_tag,
            owner,
            protocol_version,
            capabilities,
            members,
        })
    }

    /// Seals the session into the id the client holds (appended to `out`).
    pub fn seal(&self, sealer: &SessionSealer, out: &mut Vec<u8>) -> bool {
        sealer.seal_virtual(&self.encode(), out).is_ok()
    }

    /// Opens a client's id: the session, if it was sealed by `sealer` for the virtual group
    /// `group_tag`, and which session key opened it (its owner is digested under that key:
    /// see `SessionSealer::owner_under`).
    pub fn open_keyed(
        sealer: &SessionSealer,
        sealed: &[u8],
        group_tag: u32,
    ) -> Option<(VirtualSession, usize)> {
        let mut buf = Vec::new();
        let (payload, key) = sealer.open_virtual_keyed(sealed, &mut buf)?;
        VirtualSession::decode(payload)
            .filter(|s| s.group_tag == group_tag)
            .map(|s| (s, key))
    }

    /// Whether the session is `caller`'s to use (always, when the group has no
    /// authentication: `required` false).
    pub fn owned_by(&self, required: bool, caller: Option<&Owner>) -> bool {
        if !required {
            return true;
        }
        match (&self.owner, caller) {
            (Some(o), Some(me)) => me.matches_bytes(o),
            _ => false,
        }
    }
}

/// The next `n` bytes of `b`, advancing it.
fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if b.len() < n {
        return None;
    }
    let (head, rest) = b.split_at(n);
    *b = rest;
    Some(head)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_session() -> impl Strategy<Value = VirtualSession> {
        (
            any::<u32>(),
            proptest::option::of(any::<[u8; OWNER]>()),
            "[0-9-]{0,12}",
            proptest::collection::vec(any::<u8>(), 0..100),
            proptest::collection::vec(
                (
                    any::<u8>(),
                    any::<u32>(),
                    proptest::collection::vec(any::<u8>(), 0..80),
                ),
                0..6,
            ),
        )
            .prop_map(|(group_tag, owner, v, caps, ms)| VirtualSession {
                group_tag,
                owner,
                protocol_version: v,
                capabilities: caps,
                members: ms
                    .into_iter()
                    .map(|(member, backend_tag, sid)| MemberSession {
                        member,
                        backend_tag,
                        sid,
                    })
                    .collect(),
            })
    }

    proptest! {
        #[test]
        fn payloads_round_trip(s in arb_session()) {
            prop_assert_eq!(VirtualSession::decode(&s.encode()), Some(s));
        }

        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = VirtualSession::decode(&b);
        }

        #[test]
        fn sealed_ids_open_for_their_group_only(s in arb_session()) {
            let sealer = SessionSealer::new(&[3u8; 32]);
            let mut id = Vec::new();
            prop_assert!(s.seal(&sealer, &mut id));
            prop_assert_eq!(VirtualSession::open_keyed(&sealer, &id, s.group_tag).map(|(s, _)| s), Some(s.clone()));
            prop_assert_eq!(VirtualSession::open_keyed(&sealer, &id, s.group_tag ^ 1).map(|(s, _)| s), None);
        }
    }

    #[test]
    fn the_marker_of_a_2026_member_is_no_issued_id() {
        assert!(!issued(b""));
        assert!(!issued(MODERN_ONLY));
        assert!(issued(b"abc-1"));
        let s = VirtualSession {
            members: vec![MemberSession {
                member: 0,
                backend_tag: 1,
                sid: MODERN_ONLY.to_vec(),
            }],
            ..VirtualSession::default()
        };
        assert_eq!(VirtualSession::decode(&s.encode()), Some(s));
    }

    #[test]
    fn too_many_member_sessions_are_left_out_to_fit() {
        let s = VirtualSession {
            members: (0..10)
                .map(|i| MemberSession {
                    member: i,
                    backend_tag: 7,
                    sid: vec![b'x'; 200],
                })
                .collect(),
            ..VirtualSession::default()
        };
        let enc = s.encode();
        assert!(enc.len() <= MAX_VIRTUAL_PAYLOAD);
        let Some(back) = VirtualSession::decode(&enc) else {
            panic!("does not decode")
        };
        assert_eq!(back.members.len(), 4);
        assert_eq!(back.members[..], s.members[..4]);
        let mut id = Vec::new();
        assert!(s.seal(&SessionSealer::new(&[1u8; 32]), &mut id));
        // A header a client and every server along the way accept.
        assert!(id.len() < 1500, "{}", id.len());
    }
}
