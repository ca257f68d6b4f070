//! Merged lists, kept per core (no lock, no sharing): per virtual server, list kind and
//! scope (every caller, or one session when a member said `cacheScope: "private"`). An entry
//! lives for the shortest `ttlMs` its members gave (the server's `list_cache_ttl` when none
//! did), until a reload, or until any member's `*/list_changed` is seen on any core (one
//! process-wide counter, written only then).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::naming::{Kind, Merged};

/// Bumped by every `*/list_changed` a member sends: entries filled before it are stale.
static LIST_CHANGED: AtomicU64 = AtomicU64::new(0);

/// Most entries per core (a private scope per session could grow without bound).
const MAX_ENTRIES: usize = 4096;

/// Notes that a member's lists changed (evicts every core's merged lists).
pub(crate) fn list_changed() {
    LIST_CHANGED.fetch_add(1, Ordering::Relaxed);
}

/// Which cached merged list: the virtual server (its tag), the kind, the scope (0: every
/// caller; else a hash of the session), and the client capabilities the members were asked
/// under ([`capabilities_key`]: a member may list tools only to clients that declare, say,
/// elicitation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub server: u32,
    pub kind: Kind,
    pub scope: u64,
    pub caps: u64,
}

/// The [`Key::caps`] of a client's capabilities (its JSON as carried; FNV-1a 64).
pub(crate) fn capabilities_key(json: &[u8]) -> u64 {
    json.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Entry {
    generation: u64,
    changed: u64,
    expires: Instant,
    merged: Rc<Merged>,
}

thread_local! {
    static LISTS: RefCell<HashMap<Key, Entry>> = RefCell::new(HashMap::new());
}

/// The merged list for `key`, when fresh (filled under configuration `generation`, before
/// `now` passed its lifetime, no list changed since, and every member it holds is still
/// `up`: a member found down leaves the lists at once).
pub(crate) fn get(
    key: &Key,
    generation: u64,
    now: Instant,
    up: impl Fn(usize) -> bool,
) -> Option<Rc<Merged>> {
    let changed = LIST_CHANGED.load(Ordering::Relaxed);
    LISTS.with(|l| {
        let mut l = l.borrow_mut();
        let e = l.get(key)?;
        let members_up = (0..64)
            .filter(|m| e.merged.members & (1 << m) != 0)
            .all(&up);
        if e.generation == generation && e.changed == changed && now < e.expires && members_up {
            return Some(e.merged.clone());
        }
        l.remove(key);
        None
    })
}

/// Keeps `merged` for `key` for `ttl`. `changed`: the counter read before the fan-out began
/// (a change seen during it leaves the entry stale).
pub(crate) fn put(key: Key, generation: u64, changed: u64, ttl: Duration, merged: Rc<Merged>) {
    if ttl.is_zero() {
        return;
    }
    LISTS.with(|l| {
        let mut l = l.borrow_mut();
        if l.len() >= MAX_ENTRIES {
            l.clear();
        }
        l.insert(
            key,
            Entry {
                generation,
                changed,
                expires: Instant::now() + ttl,
                merged,
            },
        );
    });
}

/// The counter's value now (read before a fan-out that may fill an entry).
pub(crate) fn changes() -> u64 {
    LIST_CHANGED.load(Ordering::Relaxed)
}

/// Member sessions opened again for a client session whose own copy is gone (the member
/// restarted, or was unreachable when the session began): per core, by the client's session
/// (hashed) and member. Another core opens its own when it needs one.
type Reopened = HashMap<(u64, u8), (u32, Vec<u8>)>;

thread_local! {
    static REOPENED: RefCell<Reopened> = RefCell::new(HashMap::new());
}

/// The member session opened again for this client session and member, if any.
pub(crate) fn reopened(session: u64, member: u8) -> Option<(u32, Vec<u8>)> {
    REOPENED.with(|r| r.borrow().get(&(session, member)).cloned())
}

/// Remembers (or, with `None`, forgets) a member session opened again.
pub(crate) fn set_reopened(session: u64, member: u8, to: Option<(u32, Vec<u8>)>) {
    REOPENED.with(|r| {
        let mut r = r.borrow_mut();
        match to {
            Some(s) => {
                if r.len() >= MAX_ENTRIES {
                    r.clear();
                }
                r.insert((session, member), s);
            }
            None => {
                r.remove(&(session, member));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_change_and_follow_reloads() {
        let key = Key {
            server: 1,
            kind: Kind::Tools,
            scope: 0,
            caps: capabilities_key(b"{}"),
        };
        let now = Instant::now();
        let m = Rc::new(Merged {
            members: 0b101,
            ..Merged::default()
        });
        // Whether a fresh entry is served when `get` is called at once (another test may
        // note a list change at any moment: a read that met one is tried again).
        let served = |generation: u64, at: Instant, up: &dyn Fn(usize) -> bool| {
            for _ in 0..100 {
                let before = changes();
                put(key, 3, before, Duration::from_secs(60), m.clone());
                let got = get(&key, generation, at, up).is_some();
                if got || changes() == before {
                    return got;
                }
            }
            false
        };
        assert!(served(3, now, &|_| true));
        assert!(served(3, now, &|m| m != 1), "member 1 is not in it");
        assert!(!served(3, now, &|m| m != 2), "member 2 is down");
        assert!(!served(4, now, &|_| true), "another generation");
        let later = now + Duration::from_secs(61);
        assert!(!served(3, later, &|_| true), "expired");
        put(key, 3, changes(), Duration::from_secs(60), m.clone());
        list_changed();
        assert!(get(&key, 3, now, |_| true).is_none(), "a list changed");
        let before = changes();
        list_changed();
        put(key, 3, before, Duration::from_secs(60), m.clone());
        assert!(
            get(&key, 3, now, |_| true).is_none(),
            "changed during the fan-out"
        );
    }
}
