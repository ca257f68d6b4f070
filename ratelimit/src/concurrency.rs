//! [`ConcurrencyLimit`]: at most N requests in flight per key (a backend, a tool, a caller),
//! counted in the same bounded lock-free table as [`KeyedLimiter`](crate::KeyedLimiter), with a
//! bounded first-in, first-out queue for callers that wait instead of failing.
//!
//! A key with nothing in flight and nobody waiting is idle and its slot can be reclaimed for a
//! new key; a key holding permits or with callers queued is never evicted, so a [`Permit`]
//! always releases the counter it took. When a key's two groups have no slot to give,
//! `try_acquire` refuses (fails closed), counted in [`overflows`](ConcurrencyLimit::overflows).
//!
//! # Waiting in line
//!
//! A key's slot holds one word: the permits held (low 32 bits) and the callers queued for that
//! key (high 32 bits). [`try_acquire`](ConcurrencyLimit::try_acquire) compares the whole word
//! with the limit, so while anybody is queued the word is above it and a newcomer is refused:
//! it cannot take a permit from the callers in line. Callers queue only when the word is at
//! or above the limit, and a release that finds callers queued hands the freed permit to the
//! first of them. The path of a free permit stays what it was before there was a queue: one
//! load and one compare-and-swap to take it, one `fetch_sub` to give it back, no lock, no
//! allocation.
//!
//! The queues themselves (one per key, in arrival order, shared by every core) sit in a few
//! mutex-guarded shards that only callers who must wait, and releases of a key with callers
//! queued, ever touch. A queued caller is a [`PermitWait`] future holding its task's
//! [`Waker`]; the release that hands it a permit wakes it from whatever thread released (the
//! runtime must carry wakes across threads). This crate has no clock: the caller bounds the
//! wait with its own timer and drops the future to stop waiting (a timeout, or the request
//! abandoned). Dropping it leaves the queue; a permit handed to it in the meantime goes on to
//! the next caller in line, so no permit is ever lost. The waiter bound (`max_waiters`) is for
//! the whole limit, not per key.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::table::{Slot, SlotTable, GROUP, RECLAIMING};
use crate::LimitError;

/// One caller queued, in the high half of a slot's word.
const ONE_QUEUED: u64 = 1 << 32;

/// The low half of a slot's word: permits held (handed-over ones included).
const HELD: u64 = ONE_QUEUED - 1;

/// The most callers a limit lets wait: the queued half of a word then never reaches its top
/// bit, so no word is ever mistaken for [`RECLAIMING`].
const MAX_WAITERS: u32 = (1 << 31) - 1;

/// Queue shards (one mutex each) of a limit that lets callers wait.
const SHARDS: usize = 64;

/// Why the fast path gave no permit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Every permit of the key is held (or callers are queued for one).
    Busy,
    /// The key has no slot and none could be reclaimed.
    NoSlot,
}

/// Callers queued in a slot's word.
fn queued_in(word: u64) -> u64 {
    word >> 32
}

/// The callers queued for the keys of one shard, by slot position, first in line first.
type Shard = HashMap<usize, VecDeque<Arc<Waiting>>>;

/// At most `max_in_flight` permits per key, shared by all cores; see the module docs.
#[derive(Debug)]
pub struct ConcurrencyLimit {
    max_in_flight: u64,
    max_waiters: u64,
    waiters: AtomicU64,
    table: SlotTable,
    /// Empty when nobody may wait (`max_waiters` = 0).
    queues: Box<[Mutex<Shard>]>,
}

impl ConcurrencyLimit {
    /// A limit of `max_in_flight` per key for up to `max_keys` keys (rounded up to a multiple
    /// of 8), letting up to `max_waiters` callers queue (0: never queue; at most 2³¹ − 1).
    ///
    /// # Errors
    /// [`LimitError::ZeroConcurrency`] when `max_in_flight` is 0.
    pub fn new(max_in_flight: u32, max_keys: usize, max_waiters: u32) -> Result<Self, LimitError> {
        if max_in_flight == 0 {
            return Err(LimitError::ZeroConcurrency);
        }
        let max_waiters = max_waiters.min(MAX_WAITERS);
        let shards = if max_waiters == 0 { 0 } else { SHARDS };
        Ok(ConcurrencyLimit {
            max_in_flight: u64::from(max_in_flight),
            max_waiters: u64::from(max_waiters),
            waiters: AtomicU64::new(0),
            table: SlotTable::new(max_keys),
            queues: (0..shards).map(|_| Mutex::default()).collect(),
        })
    }

    /// A permit for `key_hash` if fewer than `max_in_flight` are held and nobody waits for
    /// one; released on drop.
    pub fn try_acquire(&self, key_hash: u64) -> Option<Permit<'_>> {
        self.acquire_slot(key_hash).ok().map(|position| Permit {
            limit: self,
            position,
        })
    }

    /// Like [`try_acquire`](Self::try_acquire), but the permit owns a handle on the limit, for
    /// tasks that must be `'static`.
    pub fn try_acquire_owned(self: &Arc<Self>, key_hash: u64) -> Option<OwnedPermit> {
        let position = self.acquire_slot(key_hash).ok()?;
        Some(OwnedPermit {
            limit: Arc::clone(self),
            position,
        })
    }

    /// A permit for `key_hash` now if one is free and nobody waits, or else a place at the
    /// back of the key's queue: the returned future resolves when a released permit reaches
    /// it. Drop the future to stop waiting (see the module docs).
    ///
    /// `None` when `max_waiters` callers already wait (or none may), or when the key has no
    /// slot (counted in [`overflows`](Self::overflows)).
    pub fn acquire_owned(self: &Arc<Self>, key_hash: u64) -> Option<PermitWait> {
        match self.acquire_slot(key_hash) {
            Ok(position) => {
                return Some(PermitWait {
                    stage: Stage::Free(OwnedPermit {
                        limit: Arc::clone(self),
                        position,
                    }),
                })
            }
            Err(Refusal::NoSlot) => return None,
            Err(Refusal::Busy) => {}
        }
        self.waiters
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_waiters).then_some(n + 1)
            })
            .ok()?;
        let wait = self.enqueue(key_hash);
        if !matches!(
            wait,
            Some(PermitWait {
                stage: Stage::Queued { .. }
            })
        ) {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
        wait
    }

    /// The fast path: one more permit on `key_hash`'s slot if its word is below the limit
    /// (which also means nobody is queued). Returns the slot's position.
    #[inline]
    fn acquire_slot(&self, key_hash: u64) -> Result<usize, Refusal> {
        let key = SlotTable::stored_key(key_hash);
        'lookup: loop {
            let Ok((position, slot)) = self.table.find_or_insert(key, |word| word == 0) else {
                return Err(Refusal::NoSlot);
            };
            let mut current = slot.value.load(Ordering::Acquire);
            loop {
                if current == RECLAIMING {
                    self.table.wait_for_reclaim();
                    continue 'lookup;
                }
                if current >= self.max_in_flight {
                    if slot.owned_by(key) {
                        return Err(Refusal::Busy);
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
                            return Ok(position);
                        }
                        // We counted ourselves in a slot reclaimed for another key: undo and
                        // look again (while our count was there it could not be reclaimed).
                        self.release(position);
                        continue 'lookup;
                    }
                    Err(actual) => current = actual,
                }
            }
        }
    }

    /// The slow path of [`acquire_owned`](Self::acquire_owned), with a place in the waiter
    /// bound already taken: under the key's shard lock, join the queue, or take a permit that
    /// was released since the fast path looked.
    fn enqueue(self: &Arc<Self>, key_hash: u64) -> Option<PermitWait> {
        let key = SlotTable::stored_key(key_hash);
        'lookup: loop {
            let (position, slot) = self.table.find_or_insert(key, |word| word == 0).ok()?;
            let mut shard = self.shard(position)?;
            let mut current = slot.value.load(Ordering::Acquire);
            let added = loop {
                if current == RECLAIMING {
                    drop(shard);
                    self.table.wait_for_reclaim();
                    continue 'lookup;
                }
                // Below the limit means nobody is queued: the permit is ours.
                let added = if current < self.max_in_flight {
                    1
                } else {
                    ONE_QUEUED
                };
                match slot.value.compare_exchange_weak(
                    current,
                    current + added,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break added,
                    Err(actual) => current = actual,
                }
            };
            if !slot.owned_by(key) {
                // The slot was reclaimed for another key. Queued counts change only under this
                // lock, so nothing can have acted on our stray count yet: take it back.
                slot.value.fetch_sub(added, Ordering::AcqRel);
                drop(shard);
                continue 'lookup;
            }
            let limit = Arc::clone(self);
            if added == 1 {
                return Some(PermitWait {
                    stage: Stage::Free(OwnedPermit { limit, position }),
                });
            }
            let node = Arc::new(Waiting::default());
            shard
                .entry(position)
                .or_default()
                .push_back(Arc::clone(&node));
            return Some(PermitWait {
                stage: Stage::Queued {
                    limit,
                    position,
                    node,
                },
            });
        }
    }

    /// The queue shard of the slot at `position`, locked (`None` when nobody may wait).
    fn shard(&self, position: usize) -> Option<MutexGuard<'_, Shard>> {
        let index = (position / GROUP).checked_rem(self.queues.len())?;
        // Nothing under these locks can panic, so a poisoned one protects nothing broken.
        self.queues
            .get(index)
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Gives back one permit of the slot at `position`; if callers are queued, it goes to the
    /// first in line.
    #[inline]
    fn release(&self, position: usize) {
        if self.give_back(position) {
            self.serve_first(position);
        }
    }

    /// The first half of a release: one permit fewer held. True if callers were queued (the
    /// caller must then [`serve_first`](Self::serve_first)).
    #[inline]
    fn give_back(&self, position: usize) -> bool {
        self.table
            .slot_at(position)
            .is_some_and(|slot| queued_in(slot.value.fetch_sub(1, Ordering::AcqRel)) > 0)
    }

    /// The second half of a release that found callers queued. The word stayed at or above
    /// the limit meanwhile (callers are queued), so no newcomer could take the freed permit.
    #[cold]
    #[inline(never)]
    fn serve_first(&self, position: usize) {
        let Some(slot) = self.table.slot_at(position) else {
            return;
        };
        let woken = self
            .shard(position)
            .and_then(|mut shard| self.hand_over(&mut shard, position, slot));
        if let Some(waker) = woken {
            waker.wake();
        }
    }

    /// With the shard locked: if `slot` has a free permit and callers queued, the first of them
    /// gets the permit. Returns the waker to wake once unlocked.
    ///
    /// This looks at the state, not at who calls, so it is right whichever release arrives
    /// first: two releases with one caller queued hand over one permit and free the other;
    /// a caller that left meanwhile leaves the permit free (and if a newcomer took it since,
    /// nothing is handed over).
    fn hand_over(&self, shard: &mut Shard, position: usize, slot: &Slot) -> Option<Waker> {
        // Queued counts change only under this lock, and while one is above zero no
        // fast-path acquire can raise the held count: the test below holds until we act.
        let word = slot.value.load(Ordering::Acquire);
        if queued_in(word) == 0 || word & HELD >= self.max_in_flight {
            return None;
        }
        let first = pop_first(shard, position)?;
        // One fewer queued, one more held: the first in line's permit.
        slot.value.fetch_sub(ONE_QUEUED - 1, Ordering::AcqRel);
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        first.grant()
    }

    /// A queued caller stops waiting: out of the queue, or, if a permit reached it already,
    /// that permit goes on to the next in line.
    fn leave_queue(&self, position: usize, node: &Arc<Waiting>) {
        let Some(mut shard) = self.shard(position) else {
            return;
        };
        // Grants happen under this lock: what we read now is final.
        if node.is_granted() {
            drop(shard);
            self.release(position);
            return;
        }
        if remove_waiting(&mut shard, position, node) {
            if let Some(slot) = self.table.slot_at(position) {
                slot.value.fetch_sub(ONE_QUEUED, Ordering::AcqRel);
            }
            self.waiters.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Permits currently held for `key_hash`, those handed to a caller that has not yet
    /// picked them up included (0 for a key not tracked).
    pub fn in_flight(&self, key_hash: u64) -> u64 {
        self.word(key_hash) & HELD
    }

    /// Callers queued for `key_hash`.
    pub fn queued(&self, key_hash: u64) -> u64 {
        queued_in(self.word(key_hash))
    }

    fn word(&self, key_hash: u64) -> u64 {
        match self.table.find(SlotTable::stored_key(key_hash)) {
            Some((_, slot)) => match slot.value.load(Ordering::Acquire) {
                RECLAIMING => 0,
                word => word,
            },
            None => 0,
        }
    }

    /// Callers currently queued, all keys together.
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

/// Takes the first caller queued at `position`, forgetting the queue once empty.
fn pop_first(shard: &mut Shard, position: usize) -> Option<Arc<Waiting>> {
    let queue = shard.get_mut(&position)?;
    let first = queue.pop_front();
    if queue.is_empty() {
        shard.remove(&position);
    }
    first
}

/// Takes `node` out of the queue at `position`; false if it was not there.
fn remove_waiting(shard: &mut Shard, position: usize, node: &Arc<Waiting>) -> bool {
    let Some(queue) = shard.get_mut(&position) else {
        return false;
    };
    // Callers usually give up in the order they came (one timeout per rule): near the front.
    let found = queue
        .iter()
        .position(|queued| Arc::ptr_eq(queued, node))
        .and_then(|index| queue.remove(index))
        .is_some();
    if queue.is_empty() {
        shard.remove(&position);
    }
    found
}

/// One queued caller, shared by its [`PermitWait`] and the queue.
#[derive(Debug, Default)]
struct Waiting {
    state: Mutex<WaitingState>,
}

#[derive(Debug, Default)]
struct WaitingState {
    /// A permit was handed over (the slot's held count includes it).
    granted: bool,
    /// The task to wake when it is.
    waker: Option<Waker>,
}

impl Waiting {
    fn lock(&self) -> MutexGuard<'_, WaitingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_granted(&self) -> bool {
        self.lock().granted
    }

    /// Marks the permit handed over; returns the waker to wake.
    fn grant(&self) -> Option<Waker> {
        let mut state = self.lock();
        state.granted = true;
        state.waker.take()
    }

    /// Whether the permit was handed over; if not, `waker` will be woken when it is.
    fn granted_or_register(&self, waker: &Waker) -> bool {
        let mut state = self.lock();
        if state.granted {
            return true;
        }
        match &mut state.waker {
            Some(registered) if registered.will_wake(waker) => {}
            registered => *registered = Some(waker.clone()),
        }
        false
    }
}

/// A caller waiting for a permit of a [`ConcurrencyLimit`] (from
/// [`acquire_owned`](ConcurrencyLimit::acquire_owned)); resolves to the permit. Dropping it
/// before then leaves the queue without losing a permit.
#[derive(Debug)]
#[must_use = "a queued caller leaves the queue as soon as this is dropped"]
pub struct PermitWait {
    stage: Stage,
}

#[derive(Debug)]
enum Stage {
    /// A permit was free at once.
    Free(OwnedPermit),
    /// In line for the slot at `position`.
    Queued {
        limit: Arc<ConcurrencyLimit>,
        position: usize,
        node: Arc<Waiting>,
    },
    /// The permit was returned by `poll`.
    Done,
}

impl PermitWait {
    /// Whether this caller is in line (false once a permit was free or returned).
    pub fn is_queued(&self) -> bool {
        matches!(self.stage, Stage::Queued { .. })
    }
}

impl Future for PermitWait {
    type Output = OwnedPermit;

    /// Ready with the permit once one is free or handed over; a `PermitWait` polled again
    /// after that stays pending.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<OwnedPermit> {
        let stage = &mut self.get_mut().stage;
        if let Stage::Queued { node, .. } = stage {
            if !node.granted_or_register(cx.waker()) {
                return Poll::Pending;
            }
        }
        match std::mem::replace(stage, Stage::Done) {
            Stage::Free(permit) => Poll::Ready(permit),
            Stage::Queued {
                limit, position, ..
            } => Poll::Ready(OwnedPermit { limit, position }),
            Stage::Done => Poll::Pending,
        }
    }
}

impl Drop for PermitWait {
    fn drop(&mut self) {
        if let Stage::Queued {
            limit,
            position,
            node,
        } = &self.stage
        {
            limit.leave_queue(*position, node);
        }
    }
}

/// One request in flight; dropping it frees the place (or hands it to the next in line).
#[derive(Debug)]
#[must_use = "the permit is released as soon as it is dropped"]
pub struct Permit<'a> {
    limit: &'a ConcurrencyLimit,
    /// The slot position in `limit`'s table (a slot with permits held is never reclaimed).
    position: usize,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.limit.release(self.position);
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
        self.limit.release(self.position);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(wait: &mut PermitWait, wakes: &Arc<Wakes>) -> Poll<OwnedPermit> {
        let waker = Waker::from(Arc::clone(wakes));
        Pin::new(wait).poll(&mut Context::from_waker(&waker))
    }

    fn limit(max: u32, waiters: u32) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(max, 8, waiters).unwrap_or_else(|e| panic!("{e}")))
    }

    #[test]
    fn zero_is_refused() {
        assert!(matches!(
            ConcurrencyLimit::new(0, 8, 0),
            Err(LimitError::ZeroConcurrency)
        ));
    }

    #[test]
    fn owned_permit_outlives_the_borrow() {
        let limit = limit(1, 0);
        let permit = limit.try_acquire_owned(3);
        assert!(permit.is_some());
        let handle = std::thread::spawn(move || drop(permit));
        assert!(handle.join().is_ok());
        assert_eq!(limit.in_flight(3), 0);
        assert!(limit.try_acquire(3).is_some());
    }

    /// A permit of key 3 held, and two callers in line behind it, polled once.
    fn two_in_line(limit: &Arc<ConcurrencyLimit>) -> (OwnedPermit, [(PermitWait, Arc<Wakes>); 2]) {
        let held = limit.try_acquire_owned(3).unwrap_or_else(|| panic!("free"));
        let caller = || {
            let wakes = Arc::new(Wakes::default());
            let mut wait = limit.acquire_owned(3).unwrap_or_else(|| panic!("room"));
            assert!(poll(&mut wait, &wakes).is_pending());
            (wait, wakes)
        };
        let line = [caller(), caller()];
        (held, line)
    }

    #[test]
    fn a_released_permit_goes_to_the_first_in_line_not_a_newcomer() {
        let limit = limit(1, 4);
        let (held, [(mut a, wa), (mut b, wb)]) = two_in_line(&limit);
        assert_eq!((limit.queued(3), limit.waiters()), (2, 2));
        drop(held);
        // Handed to `a`: held count unchanged, a newcomer refused, `a` woken, `b` not.
        assert_eq!(limit.in_flight(3), 1);
        assert!(limit.try_acquire(3).is_none());
        assert_eq!(wa.0.load(Ordering::SeqCst), 1);
        assert_eq!(wb.0.load(Ordering::SeqCst), 0);
        assert!(poll(&mut b, &wb).is_pending());
        let permit = poll(&mut a, &wa);
        assert!(permit.is_ready());
        assert_eq!((limit.queued(3), limit.waiters()), (1, 1));
        drop(permit);
        assert_eq!(wb.0.load(Ordering::SeqCst), 1);
        assert!(poll(&mut b, &wb).is_ready());
        assert_eq!((limit.in_flight(3), limit.waiters()), (0, 0));
    }

    #[test]
    fn a_waiter_dropped_as_its_permit_arrives_passes_it_on() {
        let limit = limit(1, 4);
        let (held, [(a, _), (mut b, wb)]) = two_in_line(&limit);
        drop(held);
        // `a` times out just as the permit reached it: it goes on to `b`.
        drop(a);
        assert_eq!(wb.0.load(Ordering::SeqCst), 1);
        assert_eq!(limit.in_flight(3), 1);
        let permit = poll(&mut b, &wb);
        assert!(permit.is_ready());
        drop(permit);
        assert_eq!(
            (limit.in_flight(3), limit.queued(3), limit.waiters()),
            (0, 0, 0)
        );
    }

    #[test]
    fn a_key_without_a_slot_is_refused_not_queued() {
        let limit = limit(1, 4);
        let held: Vec<_> = (1..=8u64).map(|k| limit.try_acquire_owned(k)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(limit.acquire_owned(100).is_none());
        assert_eq!((limit.overflows(), limit.waiters()), (1, 0));
    }

    #[test]
    fn the_waiter_bound_counts_every_key() {
        let limit = limit(1, 2);
        let held = (limit.try_acquire_owned(1), limit.try_acquire_owned(2));
        let a = limit.acquire_owned(1);
        let b = limit.acquire_owned(2);
        assert!(a.as_ref().is_some_and(PermitWait::is_queued));
        assert!(b.as_ref().is_some_and(PermitWait::is_queued));
        assert!(limit.acquire_owned(1).is_none());
        drop(a);
        assert_eq!(limit.waiters(), 1);
        assert!(limit.acquire_owned(1).is_some());
        drop(held);
        // With no waiting allowed, acquire_owned is try_acquire_owned.
        let never = self::limit(1, 0);
        let free = never.acquire_owned(1);
        assert!(free.as_ref().is_some_and(|w| !w.is_queued()));
        assert!(never.acquire_owned(1).is_none());
    }

    /// Releases split in two (the count, then the hand-over) and interleaved with everything
    /// else, as threads may interleave them: the line stays first in, first out, no newcomer
    /// jumps it, and once no release is half-done no caller waits while a permit is free.
    mod interleaved {
        use super::*;
        use proptest::prelude::*;
        use proptest::test_runner::RngSeed;

        const KEYS: [u64; 2] = [10, 20];

        #[derive(Debug, Clone)]
        enum Op {
            Arrive(usize),
            TryAcquire(usize),
            Release(usize),
            /// The first half of a release (the count).
            BeginRelease(usize),
            /// The second half of a half-done release (the hand-over).
            FinishRelease(usize),
            Poll(usize),
            Leave(usize),
        }

        fn ops() -> impl Strategy<Value = Vec<Op>> {
            let op = prop_oneof![
                3 => (0..KEYS.len()).prop_map(Op::Arrive),
                1 => (0..KEYS.len()).prop_map(Op::TryAcquire),
                1 => any::<usize>().prop_map(Op::Release),
                2 => any::<usize>().prop_map(Op::BeginRelease),
                2 => any::<usize>().prop_map(Op::FinishRelease),
                2 => any::<usize>().prop_map(Op::Poll),
                1 => any::<usize>().prop_map(Op::Leave),
            ];
            proptest::collection::vec(op, 1..100)
        }

        struct Caller {
            id: usize,
            key: usize,
            wait: PermitWait,
            wakes: Arc<Wakes>,
            granted: bool,
        }

        fn run(max: u32, max_waiters: u32, ops: Vec<Op>) -> Result<(), TestCaseError> {
            let limit = limit(max, max_waiters);
            let max = u64::from(max);
            let mut held: Vec<(usize, OwnedPermit)> = Vec::new();
            // Half-done releases: (key, slot position).
            let mut pending: Vec<(usize, usize)> = Vec::new();
            let mut callers: Vec<Caller> = Vec::new();
            let mut next_id = 0;
            for op in ops {
                // Per key, the callers in line before this step, first first.
                let line = |callers: &[Caller], key: usize| -> Vec<usize> {
                    let mut ids: Vec<usize> = callers
                        .iter()
                        .filter(|c| c.key == key && !c.granted)
                        .map(|c| c.id)
                        .collect();
                    ids.sort_unstable();
                    ids
                };
                let lines = [line(&callers, 0), line(&callers, 1)];
                match op {
                    Op::Arrive(key) => {
                        let free = limit.queued(KEYS[key]) == 0 && limit.in_flight(KEYS[key]) < max;
                        if let Some(mut wait) = limit.acquire_owned(KEYS[key]) {
                            prop_assert_eq!(wait.is_queued(), !free, "a newcomer jumped the line");
                            let wakes = Arc::new(Wakes::default());
                            match poll(&mut wait, &wakes) {
                                Poll::Ready(permit) => held.push((key, permit)),
                                Poll::Pending => {
                                    callers.push(Caller {
                                        id: next_id,
                                        key,
                                        wait,
                                        wakes,
                                        granted: false,
                                    });
                                    next_id += 1;
                                }
                            }
                        } else {
                            prop_assert!(!free, "refused a free permit");
                        }
                    }
                    Op::TryAcquire(key) => {
                        let free = limit.queued(KEYS[key]) == 0 && limit.in_flight(KEYS[key]) < max;
                        let permit = limit.try_acquire_owned(KEYS[key]);
                        prop_assert_eq!(permit.is_some(), free);
                        if let Some(permit) = permit {
                            held.push((key, permit));
                        }
                    }
                    Op::Release(n) if !held.is_empty() => drop(held.swap_remove(n % held.len())),
                    Op::BeginRelease(n) if !held.is_empty() => {
                        let (key, permit) = held.swap_remove(n % held.len());
                        let position = permit.position;
                        // Its release is done by hand below (this leaks one count of the
                        // limit's `Arc`, nothing else).
                        std::mem::forget(permit);
                        if limit.give_back(position) {
                            pending.push((key, position));
                        }
                    }
                    Op::FinishRelease(n) if !pending.is_empty() => {
                        let (_, position) = pending.swap_remove(n % pending.len());
                        limit.serve_first(position);
                    }
                    Op::Poll(n) if !callers.is_empty() => {
                        let i = n % callers.len();
                        let c = &mut callers[i];
                        let woken = c.wakes.0.load(Ordering::SeqCst) > 0;
                        match poll(&mut c.wait, &c.wakes) {
                            Poll::Ready(permit) => {
                                prop_assert!(woken, "ready but never woken");
                                held.push((c.key, permit));
                                callers.swap_remove(i);
                            }
                            Poll::Pending => prop_assert!(!woken, "woken but not ready"),
                        }
                    }
                    Op::Leave(n) if !callers.is_empty() => {
                        drop(callers.swap_remove(n % callers.len()));
                    }
                    _ => {}
                }
                // Whoever was served in this step was first in line (of those still there).
                let alive: Vec<usize> = callers.iter().map(|c| c.id).collect();
                for c in &mut callers {
                    prop_assert!(c.wakes.0.load(Ordering::SeqCst) <= 1, "woken twice");
                    if !c.granted && c.wakes.0.load(Ordering::SeqCst) > 0 {
                        c.granted = true;
                        let first = lines[c.key].iter().find(|id| alive.contains(id));
                        prop_assert_eq!(first, Some(&c.id), "served out of turn");
                    }
                }
                for (k, &key) in KEYS.iter().enumerate() {
                    let holding = held.iter().filter(|(hk, _)| *hk == k).count() as u64;
                    let granted = callers.iter().filter(|c| c.key == k && c.granted).count() as u64;
                    let in_line = callers.iter().filter(|c| c.key == k && !c.granted).count();
                    prop_assert_eq!(limit.in_flight(key), holding + granted, "held, key {}", k);
                    prop_assert!(limit.in_flight(key) <= max);
                    prop_assert_eq!(limit.queued(key), in_line as u64, "queued, key {}", k);
                    if pending.iter().all(|(pk, _)| *pk != k) && in_line > 0 {
                        prop_assert_eq!(
                            limit.in_flight(key),
                            max,
                            "a caller waits, a permit is free"
                        );
                    }
                }
                let in_line = callers.iter().filter(|c| !c.granted).count() as u64;
                prop_assert_eq!(limit.waiters(), in_line);
            }
            for (_, position) in pending {
                limit.serve_first(position);
            }
            drop(held);
            drop(callers);
            prop_assert_eq!(limit.waiters(), 0);
            for key in KEYS {
                prop_assert_eq!((limit.in_flight(key), limit.queued(key)), (0, 0));
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 2000,
                rng_seed: RngSeed::Fixed(0x1f0_2f0),
                ..ProptestConfig::default()
            })]

            #[test]
            fn half_done_releases_keep_the_line_in_order(
                max in 1u32..4,
                max_waiters in 0u32..6,
                ops in ops(),
            ) {
                run(max, max_waiters, ops)?;
            }
        }
    }
}
