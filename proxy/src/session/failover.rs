//! Session failover by replaying `initialize` (`session_failover = "reinitialize"`).
//!
//! Sealed session ids need no table to route. Failing a session over does: the client keeps
//! the id it holds, so mcplb remembers, per sealed id, the client's original `initialize` body
//! (to replay it) and, once a session has moved, where it lives now. The table is consulted
//! only on initialize answers and for sessions whose backend is unavailable, never on the
//! normal request path, and it is bounded (oldest entries are dropped first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

struct Entry {
    init_body: Vec<u8>,
    moved_to: Option<(u32, Vec<u8>)>,
}

struct Inner {
    map: HashMap<Vec<u8>, Entry>,
    order: VecDeque<Vec<u8>>,
}

/// Remembered initialize bodies and moved sessions, shared by every core.
pub struct FailoverStore {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl FailoverStore {
    /// A store for at most `capacity` sessions.
    pub fn new(capacity: usize) -> Self {
        FailoverStore {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                order: VecDeque::new(),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Remembers the `initialize` body of the session the client knows as `sealed`.
    pub fn remember(&self, sealed: &[u8], init_body: Vec<u8>) {
        if sealed.is_empty() || self.capacity == 0 {
            return;
        }
        let mut g = self.lock();
        while g.map.len() >= self.capacity {
            let Some(old) = g.order.pop_front() else {
                break;
            };
            g.map.remove(&old);
        }
        g.order.push_back(sealed.to_vec());
        g.map.insert(
            sealed.to_vec(),
            Entry {
                init_body,
                moved_to: None,
            },
        );
    }

    /// The `initialize` body to replay for `sealed`, if remembered.
    pub fn init_body(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.lock().map.get(sealed).map(|e| e.init_body.clone())
    }

    /// Where `sealed` lives after a failover: backend index and that backend's session id.
    pub fn remapped(&self, sealed: &[u8]) -> Option<(u32, Vec<u8>)> {
        self.lock().map.get(sealed).and_then(|e| e.moved_to.clone())
    }

    /// Records that `sealed` now lives on the backend tagged `to` as `sid`.
    pub fn remap(&self, sealed: &[u8], to: u32, sid: &[u8]) {
        if let Some(e) = self.lock().map.get_mut(sealed) {
            e.moved_to = Some((to, sid.to_vec()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_moves_and_stays_bounded() {
        let s = FailoverStore::new(2);
        s.remember(b"a", b"init-a".to_vec());
        s.remember(b"b", b"init-b".to_vec());
        assert_eq!(s.init_body(b"a").as_deref(), Some(&b"init-a"[..]));
        s.remap(b"a", 3, b"sid-3");
        assert_eq!(s.remapped(b"a"), Some((3, b"sid-3".to_vec())));
        s.remember(b"c", b"init-c".to_vec());
        assert!(
            s.init_body(b"a").is_none(),
            "oldest entry dropped at capacity"
        );
        assert!(s.init_body(b"c").is_some());
        assert!(s.remapped(b"zzz").is_none());
    }
}
