//! A fixed-capacity table of `(key, value)` atomic slots shared by every core: the storage
//! behind [`KeyedLimiter`](crate::KeyedLimiter) and [`ConcurrencyLimit`](crate::ConcurrencyLimit).
//!
//! Layout: `ceil(max_keys / 8)` groups of 8 slots (two cache lines each). A key may live in
//! one of two groups picked by its hash ("two choices"): it goes to the emptier one, which
//! keeps groups evenly filled, so the table refuses new keys only when it is nearly full
//! (with a single choice, at half load ~2 % of groups would already be full). A lookup reads
//! at most 16 key words, usually 8. Memory is allocated once, at construction, and never grows:
//! a flood of distinct keys can only *replace* idle keys, never add slots.
//!
//! Concurrency protocol (no lock on the path of a key already present):
//! - Readers find their key with plain loads, then update the value word with CAS.
//! - Inserting a key (new key, or reclaiming an idle one) takes the mutex of the key's first
//!   group, so two threads can never give one key two slots. Only new keys pay for it.
//!   Inserts of different keys may race for one slot of a shared second group: an empty slot
//!   is claimed by CAS on its key word, an idle one by CAS on its value word.
//! - Reclaiming an idle slot first swaps its value to [`RECLAIMING`] (so no reader can CAS a
//!   stale value in), then stores the new key, then the fresh value, both with `Release`.
//! - After its CAS, a reader re-reads the slot's key. If the key changed, the CAS landed in a
//!   slot that now belongs to someone else: the caller treats that as a lost race and starts
//!   again (the stray charge only makes the other key *more* limited, never less).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::counter::StripedCounter;

/// Slots per group: two 64-byte cache lines of 16-byte slots.
pub(crate) const GROUP: usize = 8;

/// Key word of a slot nobody has claimed yet. Hashes equal to it are stored as 1.
const EMPTY: u64 = 0;

/// Value word of a slot whose key is being replaced; never a valid value.
pub(crate) const RECLAIMING: u64 = u64::MAX;

/// One `(key, value)` pair.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    key: AtomicU64,
    /// The GCRA TAT or the in-flight count, depending on the table's user.
    pub(crate) value: AtomicU64,
}

impl Slot {
    /// Whether this slot still belongs to `key` (call after acting on `value`).
    pub(crate) fn owned_by(&self, key: u64) -> bool {
        self.key.load(Ordering::Acquire) == key
    }
}

/// Eight slots on their own cache lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Group {
    slots: [Slot; GROUP],
}

/// Why no slot could be given to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full {
    /// The smallest value among the group's slots (for a GCRA table: the earliest instant at
    /// which one of them becomes idle).
    pub(crate) min_value: u64,
}

/// The shared table; see the module documentation for the protocol.
#[derive(Debug)]
pub(crate) struct SlotTable {
    groups: Box<[Group]>,
    /// One insertion lock per group; never taken by a key already present.
    locks: Box<[Mutex<()>]>,
    occupied: AtomicUsize,
    evictions: StripedCounter,
    overflows: StripedCounter,
}

impl SlotTable {
    /// A table able to hold at least `max_keys` keys (rounded up to a multiple of 8, at least 8).
    pub(crate) fn new(max_keys: usize) -> Self {
        let groups = max_keys.div_ceil(GROUP).max(1);
        SlotTable {
            groups: (0..groups).map(|_| Group::default()).collect(),
            locks: (0..groups).map(|_| Mutex::new(())).collect(),
            occupied: AtomicUsize::new(0),
            evictions: StripedCounter::default(),
            overflows: StripedCounter::default(),
        }
    }

    /// The number of slots.
    pub(crate) fn capacity(&self) -> usize {
        self.groups.len() * GROUP
    }

    /// Slots that hold a key (idle ones included; they are reclaimed, not freed).
    pub(crate) fn occupied(&self) -> usize {
        self.occupied.load(Ordering::Relaxed)
    }

    /// Keys replaced by another key since construction.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.sum()
    }

    /// Keys refused a slot because their whole group was busy.
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.sum()
    }

    /// The key word stored for a 64-bit hash (0 is reserved for empty slots).
    pub(crate) fn stored_key(hash: u64) -> u64 {
        if hash == EMPTY {
            1
        } else {
            hash
        }
    }

    /// The two candidate groups of a stored key. Keys are usually seeded hashes already, but
    /// callers may also use small integers (a backend index): the murmur3 finalizer spreads
    /// those, then the high half of `mixed * groups` (Lemire's reduction) picks each group
    /// uniformly, from the two halves of the mixed word.
    fn group_indexes(&self, key: u64) -> (usize, usize) {
        let mut mixed = key;
        mixed ^= mixed >> 33;
        mixed = mixed.wrapping_mul(0xff51_afd7_ed55_8ccd);
        mixed ^= mixed >> 33;
        mixed = mixed.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        mixed ^= mixed >> 33;
        let n = self.groups.len() as u128;
        // Each product's high half is < groups.len(), so it fits in usize.
        #[allow(clippy::cast_possible_truncation)]
        let first = ((u128::from(mixed) * n) >> 64) as usize;
        #[allow(clippy::cast_possible_truncation)]
        let second = ((u128::from(mixed.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15)) * n)
            >> 64) as usize;
        (first, second)
    }

    /// The slot at a position returned by [`find`](Self::find) or
    /// [`find_or_insert`](Self::find_or_insert).
    pub(crate) fn slot_at(&self, position: usize) -> Option<&Slot> {
        self.groups
            .get(position / GROUP)?
            .slots
            .get(position % GROUP)
    }

    /// The first slot of group `index` whose key satisfies `want`, with its position.
    fn find_in(&self, index: usize, want: impl Fn(u64) -> bool) -> Option<(usize, &Slot)> {
        self.groups
            .get(index)?
            .slots
            .iter()
            .enumerate()
            .find(|(_, slot)| want(slot.key.load(Ordering::Acquire)))
            .map(|(i, slot)| (index * GROUP + i, slot))
    }

    /// The position and slot of `key` if it has one (no insertion).
    pub(crate) fn find(&self, key: u64) -> Option<(usize, &Slot)> {
        let (first, second) = self.group_indexes(key);
        self.find_in(first, |k| k == key)
            .or_else(|| self.find_in(second, |k| k == key))
    }

    /// Gives a reader that saw [`RECLAIMING`] time for the reclaimer's two stores to land.
    pub(crate) fn wait_for_reclaim(&self) {
        for _ in 0..64 {
            std::hint::spin_loop();
        }
        std::thread::yield_now();
    }

    fn empty_slots(&self, index: usize) -> usize {
        self.groups.get(index).map_or(0, |group| {
            group
                .slots
                .iter()
                .filter(|slot| slot.key.load(Ordering::Acquire) == EMPTY)
                .count()
        })
    }

    /// Claims an empty slot of group `index` for `key`.
    fn claim_empty(&self, index: usize, key: u64) -> Option<(usize, &Slot)> {
        let group = self.groups.get(index)?;
        for (i, slot) in group.slots.iter().enumerate() {
            // An empty slot's value is still 0, as nobody but an owner ever writes it.
            if slot
                .key
                .compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.occupied.fetch_add(1, Ordering::Relaxed);
                return Some((index * GROUP + i, slot));
            }
        }
        None
    }

    /// Reclaims a slot of group `index` whose value satisfies `idle`, or lowers `min_value` to
    /// the smallest value seen.
    fn reclaim_idle(
        &self,
        index: usize,
        key: u64,
        idle: &impl Fn(u64) -> bool,
        min_value: &mut u64,
    ) -> Option<(usize, &Slot)> {
        let group = self.groups.get(index)?;
        for (i, slot) in group.slots.iter().enumerate() {
            let value = slot.value.load(Ordering::Acquire);
            if value == RECLAIMING {
                continue;
            }
            if idle(value)
                && slot
                    .value
                    .compare_exchange(value, RECLAIMING, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                slot.key.store(key, Ordering::Release);
                slot.value.store(0, Ordering::Release);
                self.evictions.add(1);
                return Some((index * GROUP + i, slot));
            }
            *min_value = (*min_value).min(value);
        }
        None
    }

    /// The slot of `key`, claiming an empty slot or reclaiming one whose value satisfies
    /// `idle` when the key has none. A reclaimed slot's value is reset to 0.
    ///
    /// `key` must come from [`stored_key`](Self::stored_key).
    pub(crate) fn find_or_insert(
        &self,
        key: u64,
        idle: impl Fn(u64) -> bool,
    ) -> Result<(usize, &Slot), Full> {
        if let Some(found) = self.find(key) {
            return Ok(found);
        }
        let (first, second) = self.group_indexes(key);
        let Some(lock) = self.locks.get(first) else {
            return Err(Full { min_value: 0 });
        };
        // Nothing below can panic, so a poisoned lock protects nothing broken.
        let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
        // Someone may have inserted the key while we waited for the lock.
        if let Some(found) = self.find(key) {
            return Ok(found);
        }
        // The emptier group first, so that groups fill evenly.
        let (a, b) = if self.empty_slots(second) > self.empty_slots(first) {
            (second, first)
        } else {
            (first, second)
        };
        if let Some(found) = self
            .claim_empty(a, key)
            .or_else(|| self.claim_empty(b, key))
        {
            return Ok(found);
        }
        let mut min_value = u64::MAX;
        if let Some(found) = self
            .reclaim_idle(first, key, &idle, &mut min_value)
            .or_else(|| self.reclaim_idle(second, key, &idle, &mut min_value))
        {
            return Ok(found);
        }
        self.overflows.add(1);
        Err(Full { min_value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_capacity_up_to_whole_groups() {
        assert_eq!(SlotTable::new(0).capacity(), 8);
        assert_eq!(SlotTable::new(9).capacity(), 16);
        assert_eq!(SlotTable::new(16).capacity(), 16);
    }

    #[test]
    fn small_integer_keys_spread_over_groups() {
        let table = SlotTable::new(1024);
        let mut used = std::collections::HashSet::new();
        for key in 1..=64u64 {
            used.insert(table.group_indexes(key).0);
        }
        // 64 keys into 128 groups: nearly all distinct, certainly not one group.
        assert!(used.len() > 40, "{} groups used", used.len());
    }

    #[test]
    fn zero_hash_gets_a_slot() {
        let table = SlotTable::new(8);
        let key = SlotTable::stored_key(0);
        assert!(table.find_or_insert(key, |_| false).is_ok());
        assert!(table.find(key).is_some());
        assert_eq!(table.occupied(), 1);
    }

    #[test]
    fn full_group_reclaims_only_idle_slots() {
        let table = SlotTable::new(8);
        for key in 1..=8u64 {
            let (_, slot) = table
                .find_or_insert(key, |_| false)
                .unwrap_or_else(|_| panic!("room"));
            slot.value.store(key * 10, Ordering::Relaxed);
        }
        assert_eq!(
            table.find_or_insert(100, |v| v < 10).err(),
            Some(Full { min_value: 10 })
        );
        assert_eq!(table.overflows(), 1);
        let (position, slot) = table
            .find_or_insert(100, |v| v == 30)
            .unwrap_or_else(|_| panic!("slot 3 is idle"));
        assert_eq!(slot.value.load(Ordering::Relaxed), 0);
        assert!(table.find(3).is_none());
        assert!(slot.owned_by(100));
        assert_eq!(position, 2);
        assert!(std::ptr::eq(
            table.slot_at(position).unwrap_or_else(|| panic!()),
            slot
        ));
        assert_eq!(table.evictions(), 1);
        assert_eq!(table.occupied(), 8);
    }
}
