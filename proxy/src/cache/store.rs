//! One group's cached answers on one core: least recently used first out, bounded in bytes
//! (messages and keys, plus a fixed overhead per entry). No lock: each core has its own.

use std::ops::Range;
use std::time::Instant;

use lru::LruCache;

/// Bytes counted per entry beyond its key and message (the map's node, the entry's fields).
pub const ENTRY_OVERHEAD: usize = 96;

/// A cached response message.
#[derive(Debug)]
pub struct Entry {
    /// The message as the backend sent it (one line of JSON).
    pub msg: std::rc::Rc<[u8]>,
    /// Where the id the backend answered is in `msg`.
    pub id: Range<usize>,
    /// When it stops being fresh.
    pub expires: Instant,
    /// The change stamp it was filled under ([`super::stamp`], read before the request went
    /// to the backend): a different stamp now means a notification evicted it.
    pub stamp: u64,
}

impl Entry {
    fn cost(&self, key: &[u8]) -> usize {
        self.msg.len() + key.len() + ENTRY_OVERHEAD
    }
}

/// What a store's operation did to its size, for the statistics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// Entries dropped (expired, evicted by a change, or pushed out for room).
    pub evicted: u64,
    /// Change in bytes held.
    pub bytes: i64,
}

/// The entries of one group on one core.
#[derive(Debug)]
pub struct Store {
    map: LruCache<Box<[u8]>, Entry>,
    bytes: usize,
    max_bytes: usize,
}

impl Store {
    /// An empty store holding at most `max_bytes`.
    pub fn new(max_bytes: usize) -> Self {
        Store {
            map: LruCache::unbounded(),
            bytes: 0,
            max_bytes,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The fresh entry under `key` (`stamp`: the change stamp of its kind now), made the most
    /// recently used; a stale one is dropped.
    pub fn get(
        &mut self,
        key: &[u8],
        now: Instant,
        stamp: u64,
        moved: &mut Moved,
    ) -> Option<&Entry> {
        let fresh = {
            let e = self.map.peek(key)?;
            now < e.expires && e.stamp == stamp
        };
        if !fresh {
            if let Some((k, e)) = self.map.pop_entry(key) {
                self.forget(&k, &e, moved);
            }
            return None;
        }
        self.map.get(key)
    }

    /// Keeps `entry` under `key`, pushing out the least recently used entries until it fits.
    /// An entry larger than an eighth of the store is not kept.
    pub fn put(&mut self, key: Box<[u8]>, entry: Entry, moved: &mut Moved) {
        let cost = entry.cost(&key);
        if cost > self.max_bytes / 8 {
            return;
        }
        if let Some(old) = self.map.pop(&key) {
            let c = old.cost(&key);
            self.bytes -= c;
            moved.bytes -= c as i64;
        }
        while self.bytes + cost > self.max_bytes {
            let Some((k, e)) = self.map.pop_lru() else {
                break;
            };
            self.forget(&k, &e, moved);
        }
        self.bytes += cost;
        moved.bytes += cost as i64;
        self.map.put(key, entry);
    }

    fn forget(&mut self, key: &[u8], e: &Entry, moved: &mut Moved) {
        let c = e.cost(key);
        self.bytes -= c;
        moved.bytes -= c as i64;
        moved.evicted += 1;
    }
}
