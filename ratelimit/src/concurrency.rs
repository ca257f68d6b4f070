//! [`ConcurrencyLimit`]: at most N requests in flight per key (a backend, a tool, a caller),
//! counted in the same bounded lock-free table as [`KeyedLimiter`](crate::KeyedLimiter), with a
//! bounded count of waiters for callers that queue instead of failing.
//!
//! A key with nothing in flight is idle and its slot can be reclaimed for a new key; a key
//! holding permits is never evicted, so a [`Permit`] always releases the counter it took. When a
//! key's two groups have no slot to give, `try_acquire` refuses (fails closed), counted in
//! [`overflows`](ConcurrencyLimit::overflows).
//!
//! Queueing policy: this crate has no clock or timer. A proxy that queues calls
//! [`try_enqueue`](ConcurrencyLimit::try_enqueue) (refused past `max_waiters`), keeps the
//! returned [`Waiter`] while it waits on its own timer up to its deadline, retries
//! `try_acquire` as it sees fit, and drops the `Waiter` when it stops waiting (admitted or
//! timed out). The waiter count is for the whole limit, not per key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::table::{SlotTable, RECLAIMING};
use crate::LimitError;

/// At most `max_in_flight` permits per key, shared by all cores; see the module docs.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max_in_flight: u64,
    max_waiters: u64,
    waiters: AtomicU64,
    table: SlotTable,
}

impl ConcurrencyLimit {
    /// A limit of `max_in_flight` per key for up to `max_keys` keys (rounded up to a multiple
    /// of 8), letting up to `max_waiters` callers queue (0: never queue).
    ///
    /// # Errors
    /// [`LimitError::ZeroConcurrency`] when `max_in_flight` is 0.
    pub fn new(max_in_flight: u32, max_keys: usize, max_waiters: u32) -> Result<Self, LimitError> {
        if max_in_flight == 0 {
            return Err(LimitError::ZeroConcurrency);
        }
        Ok(ConcurrencyLimit {
            max_in_flight: u64::from(max_in_flight),
            max_waiters: u64::from(max_waiters),
            waiters: AtomicU64::new(0),
            table: SlotTable::new(max_keys),
        })
    }

    /// A permit for `key_hash` if fewer than `max_in_flight` are held; released on drop.
    pub fn try_acquire(&self, key_hash: u64) -> Option<Permit<'_>> {
        self.acquire_slot(key_hash).map(|(_, cell)| Permit { cell })
    }

    /// Like [`try_acquire`](Self::try_acquire), but the permit owns a handle on the limit, for
    /// tasks that must be `'static`.
    pub fn try_acquire_owned(self: &Arc<Self>, key_hash: u64) -> Option<OwnedPermit> {
        let (position, _) = self.acquire_slot(key_hash)?;
        Some(OwnedPermit {
            limit: Arc::clone(self),
            position,
        })
    }

    fn acquire_slot(&self, key_hash: u64) -> Option<(usize, &AtomicU64)> {
        let key = SlotTable::stored_key(key_hash);
        'lookup: loop {
            let (position, slot) = self.table.find_or_insert(key, |count| count == 0).ok()?;
            let mut current = slot.value.load(Ordering::Acquire);
            loop {
                if current == RECLAIMING {
                    self.table.wait_for_reclaim();
                    continue 'lookup;
                }
                if current >= self.max_in_flight {
                    if slot.owned_by(key) {
                        return None;
                    }
                    continue 'lookup;
                }
                match slot.value.compare_exchange_weak(
                    current,
                    current + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        if slot.owned_by(key) {
                            return Some((position, &slot.value));
                        }
                        // We counted ourselves in a slot reclaimed for another key: undo and
                        // look again (while our count was there it could not be reclaimed).
                        slot.value.fetch_sub(1, Ordering::AcqRel);
                        continue 'lookup;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// Permits currently held for `key_hash` (0 for a key not tracked).
    pub fn in_flight(&self, key_hash: u64) -> u64 {
        match self.table.find(SlotTable::stored_key(key_hash)) {
            Some((_, slot)) => match slot.value.load(Ordering::Acquire) {
                RECLAIMING => 0,
                count => count,
            },
            None => 0,
        }
    }

    /// Registers one more waiter if fewer than `max_waiters` are waiting; the waiter leaves
    /// the queue when the returned [`Waiter`] is dropped.
    pub fn try_enqueue(&self) -> Option<Waiter<'_>> {
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiters).then_some(n + 1)
            })
            .ok()
            .map(|_| Waiter {
                waiters: &self.waiters,
            })
    }

    /// Callers currently waiting (holding a [`Waiter`]).
    pub fn waiters(&self) -> u64 {
        self.waiters.load(Ordering::Acquire)
    }

    /// Slots holding a key, idle ones included (approximate under concurrent inserts).
    pub fn tracked_keys(&self) -> usize {
        self.table.occupied()
    }

    /// Idle keys whose slot was given to a new key, since construction.
    pub fn evictions(&self) -> u64 {
        self.table.evictions()
    }

    /// Acquisitions refused because the key's groups held no reclaimable slot.
    pub fn overflows(&self) -> u64 {
        self.table.overflows()
    }
}

/// One request in flight; dropping it frees the place.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit<'a> {
    cell: &'a AtomicU64,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        // A slot with permits out is never reclaimed, so this is still our key's counter.
        self.cell.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A [`Permit`] that keeps its [`ConcurrencyLimit`] alive, for `'static` tasks.
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct OwnedPermit {
    limit: Arc<ConcurrencyLimit>,
    /// The slot position in `limit`'s table (slots never move).
    position: usize,
}

impl Drop for OwnedPermit {
    fn drop(&mut self) {
        if let Some(slot) = self.limit.table.slot_at(self.position) {
            slot.value.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// One caller waiting for a permit; dropping it leaves the queue.
#[derive(Debug)]
#[must_use = "the caller leaves the queue as soon as this is dropped"]
pub struct Waiter<'a> {
    waiters: &'a AtomicU64,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.waiters.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_is_refused() {
        assert!(matches!(
            ConcurrencyLimit::new(0, 8, 0),
            Err(LimitError::ZeroConcurrency)
        ));
    }

    #[test]
    fn owned_permit_outlives_the_borrow() {
        let limit = Arc::new(ConcurrencyLimit::new(1, 8, 0).unwrap_or_else(|e| panic!("{e}")));
        let permit = limit.try_acquire_owned(3);
        assert!(permit.is_some());
        let handle = std::thread::spawn(move || drop(permit));
        assert!(handle.join().is_ok());
        assert_eq!(limit.in_flight(3), 0);
        assert!(limit.try_acquire(3).is_some());
    }
}
