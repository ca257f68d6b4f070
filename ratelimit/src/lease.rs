//! Cluster rate limits by leases: the pieces with no I/O.
//!
//! A `cluster` rule's bucket lives in a shared store (Redis, driven by the proxy): a GCRA
//! bucket whose step [`LeaseBucket::grant`] hands out up to `want` tokens at once. Each
//! replica leases small batches ([`lease_size`]) into a [`LeaseTable`] slot per key and spends
//! them on its request path with one atomic decrement, no I/O and no lock; a background thread
//! refills slots ahead of need and drops tokens held longer than the lease's lifetime.
//!
//! Bound: every admitted request spent a token the store granted, and the store grants at
//! most `rate × W + burst` tokens over any window `W` ([`LeaseBucket::grant`], property
//! tested). A replica holds at most one batch ([`max_batch`]) per key at any time
//! ([`lease_size`] tops a slot up to it, never past it), so over any window `W` the `R`
//! replicas together admit at most `rate × W + burst + R × batch`: the tokens they held when
//! the window opened, granted before it. Tokens unspent after the lease's lifetime lapse.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::counter::Padded;
use crate::LimitError;

/// Microseconds per second: the store's clock (Redis `TIME`) is read in microseconds.
const MICROS_PER_SEC: f64 = 1_000_000.0;

/// A cluster bucket: a rate and a burst in whole microseconds, as the store's script uses
/// them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseBucket {
    /// Microseconds between two tokens (at least 1; rounded up, so the rate is at most the
    /// configured one).
    pub interval_us: u64,
    /// `interval_us × burst`: how far ahead of now the bucket's TAT may run.
    pub tolerance_us: u64,
}

/// What one [`LeaseBucket::grant`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The bucket's new theoretical arrival time (µs).
    pub tat_us: u64,
    /// Tokens granted (at most the `want` asked).
    pub granted: u32,
    /// When none was granted: microseconds until one will be.
    pub retry_us: u64,
}

impl LeaseBucket {
    /// A bucket of `rate` tokens per second, `burst` at once.
    ///
    /// # Errors
    /// [`LimitError::InvalidRate`] and [`LimitError::ZeroBurst`], as [`crate::Gcra::new`].
    pub fn new(rate: f64, burst: u32) -> Result<Self, LimitError> {
        if !rate.is_finite() || rate <= 0.0 {
            return Err(LimitError::InvalidRate { rate });
        }
        if burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let interval_us = ((MICROS_PER_SEC / rate).ceil() as u64).clamp(1, 1 << 52);
        Ok(LeaseBucket {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst)).min(1 << 52),
        })
    }

    /// The store's step: up to `want` tokens from a bucket whose TAT is `tat_us` (0: never
    /// used, full), at `now_us`. The Redis script runs exactly this arithmetic.
    pub fn grant(&self, tat_us: u64, now_us: u64, want: u32) -> Grant {
        let tat = tat_us.max(now_us);
        let room = now_us.saturating_add(self.tolerance_us).saturating_sub(tat) / self.interval_us;
        let granted = room.min(u64::from(want));
        if granted == 0 {
            return Grant {
                tat_us: tat,
                granted: 0,
                retry_us: (tat + self.interval_us).saturating_sub(now_us + self.tolerance_us),
            };
        }
        Grant {
            tat_us: tat + granted * self.interval_us,
            #[allow(clippy::cast_possible_truncation)]
            granted: granted as u32,
            retry_us: 0,
        }
    }
}

/// How many tokens a replica asks for when it refills a slot holding `held`: enough for
/// `horizon_s` of the demand it sees (`demand_per_sec`), at least 1; and never so many that
/// the slot would hold more than `max_batch` (so that tokens one replica holds unspent stay
/// few: the bound of the module docs). 0 when the slot is full.
pub fn lease_size(demand_per_sec: f64, horizon_s: f64, held: u32, max_batch: u32) -> u32 {
    let need = (demand_per_sec * horizon_s).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let need = if need.is_finite() && need > 0.0 {
        need.min(f64::from(u32::MAX)) as u32
    } else {
        0
    };
    let cap = max_batch.max(1);
    need.clamp(1, cap).saturating_sub(held)
}

/// The largest batch a replica leases for a rule: a tenth of a second of its rate, at most a
/// quarter of its burst, at least 1.
pub fn max_batch(rate: f64, burst: u32) -> u32 {
    let tenth = (rate / 10.0).ceil();
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let tenth = if tenth.is_finite() && tenth >= 1.0 {
        tenth.min(f64::from(u32::MAX)) as u32
    } else {
        1
    };
    tenth.min(burst / 4).max(1)
}

/// What a slot says to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A leased token was spent.
    Admit,
    /// The store said no token until then (nanoseconds from now).
    Denied {
        /// Nanoseconds until the store has a token.
        retry_ns: u64,
    },
    /// No token held yet: the refill thread has been asked (it sees the demand); try again
    /// shortly.
    Pending,
    /// No slot free for a new key (the table is full of keys in use).
    Full,
}

/// One key's lease.
#[derive(Debug, Default)]
struct Slot {
    /// The key (0: free). Keys are made non-zero by [`LeaseTable::take`].
    key: AtomicU64,
    /// Tokens held.
    tokens: AtomicU32,
    /// Requests seen since the refill thread last looked.
    demand: AtomicU32,
    /// No token from the store before this instant (ns; 0: none known).
    denied_until: AtomicU64,
    /// Tokens held lapse at this instant (ns).
    expires: AtomicU64,
}

/// Leases of one rule, one slot per key, in a fixed table (open addressing, a few probes).
/// The request path takes tokens and notes demand; only the refill thread adds tokens,
/// drops lapsed ones and frees idle slots.
#[derive(Debug)]
pub struct LeaseTable {
    slots: Box<[Padded<Slot>]>,
    mask: usize,
}

/// Slots probed for a key before the table counts as full.
const PROBES: usize = 8;

/// What the refill thread reads of a slot in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotView {
    /// The slot's index (for [`LeaseTable::deposit`]).
    pub index: usize,
    /// The key.
    pub key: u64,
    /// Tokens held.
    pub held: u32,
    /// Requests seen since the last look (reset by the look).
    pub demand: u32,
    /// No token before this instant (ns).
    pub denied_until: u64,
}

impl LeaseTable {
    /// A table of at least `capacity` slots (a power of two).
    pub fn new(capacity: usize) -> Self {
        let n = capacity.clamp(PROBES, 1 << 24).next_power_of_two();
        LeaseTable {
            slots: (0..n).map(|_| Padded(Slot::default())).collect(),
            mask: n - 1,
        }
    }

    /// Takes one leased token of `key` at `now_ns`; lock-free (two atomic operations on the
    /// key's slot in the common case).
    pub fn take(&self, key: u64, now_ns: u64) -> Take {
        let key = key.max(1);
        let Some(slot) = self.slot(key) else {
            return Take::Full;
        };
        slot.demand.fetch_add(1, Ordering::Relaxed);
        let taken = slot
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| t.checked_sub(1));
        if taken.is_ok() {
            return Take::Admit;
        }
        let until = slot.denied_until.load(Ordering::Acquire);
        if until > now_ns {
            Take::Denied {
                retry_ns: until - now_ns,
            }
        } else {
            Take::Pending
        }
    }

    /// Gives back a token taken by [`take`](Self::take) (another rule refused the request).
    pub fn refund(&self, key: u64) {
        if let Some(slot) = self.find(key.max(1)) {
            slot.tokens.fetch_add(1, Ordering::AcqRel);
        }
    }

    fn find(&self, key: u64) -> Option<&Slot> {
        (0..PROBES)
            .map(|i| &self.slots[(key as usize).wrapping_add(i) & self.mask].0)
            .find(|s| s.key.load(Ordering::Acquire) == key)
    }

    /// The key's slot, claiming a free one for a new key.
    fn slot(&self, key: u64) -> Option<&Slot> {
        if let Some(s) = self.find(key) {
            return Some(s);
        }
        for i in 0..PROBES {
            let s = &self.slots[(key as usize).wrapping_add(i) & self.mask].0;
            match s
                .key
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(s),
                Err(k) if k == key => return Some(s),
                Err(_) => {}
            }
        }
        None
    }

    /// For the refill thread: every slot in use, its demand since the last call (reset now).
    /// Tokens lapsed at `now_ns` are dropped first, and a slot idle for `idle_ns` (no demand,
    /// no token) is freed.
    pub fn scan(&self, now_ns: u64, idle_ns: u64, mut each: impl FnMut(SlotView)) {
        for (index, s) in self.slots.iter().enumerate() {
            let s = &s.0;
            let key = s.key.load(Ordering::Acquire);
            if key == 0 {
                continue;
            }
            let expires = s.expires.load(Ordering::Acquire);
            if expires <= now_ns {
                s.tokens.store(0, Ordering::Release);
            }
            let demand = s.demand.swap(0, Ordering::AcqRel);
            let held = s.tokens.load(Ordering::Acquire);
            if demand == 0 && held == 0 && expires.saturating_add(idle_ns) <= now_ns {
                // Only this thread frees slots and adds tokens: a request racing this sees
                // no token either way, and claims a slot again.
                s.denied_until.store(0, Ordering::Release);
                s.key.store(0, Ordering::Release);
                continue;
            }
            each(SlotView {
                index,
                key,
                held,
                demand,
                denied_until: s.denied_until.load(Ordering::Acquire),
            });
        }
    }

    /// For the refill thread: `granted` tokens for the slot at `index` (still holding `key`),
    /// lapsing at `expires_ns`; with none granted, no token before `denied_until_ns`.
    pub fn deposit(
        &self,
        index: usize,
        key: u64,
        granted: u32,
        expires_ns: u64,
        denied_until_ns: u64,
    ) {
        let Some(s) = self.slots.get(index).map(|s| &s.0) else {
            return;
        };
        if s.key.load(Ordering::Acquire) != key {
            return;
        }
        if granted > 0 {
            s.expires.store(expires_ns, Ordering::Release);
            s.tokens.fetch_add(granted, Ordering::AcqRel);
            s.denied_until.store(0, Ordering::Release);
        } else {
            s.denied_until.store(denied_until_ns, Ordering::Release);
        }
    }

    /// Drops every token held (the store became unavailable and the rule falls back).
    pub fn clear(&self) {
        for s in self.slots.iter() {
            s.0.tokens.store(0, Ordering::Release);
            s.0.denied_until.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grant_gives_the_burst_then_the_rate() {
        let b = LeaseBucket::new(100.0, 20).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((b.interval_us, b.tolerance_us), (10_000, 200_000));
        let now = 1_000_000_000;
        let g = b.grant(0, now, 15);
        assert_eq!(g.granted, 15);
        let g = b.grant(g.tat_us, now, 15);
        assert_eq!(g.granted, 5);
        let g = b.grant(g.tat_us, now, 15);
        assert_eq!((g.granted, g.retry_us), (0, 10_000));
        // 50 ms later: 5 more tokens.
        let g = b.grant(g.tat_us, now + 50_000, 15);
        assert_eq!(g.granted, 5);
    }

    #[test]
    fn lease_sizes_follow_demand_within_the_batch() {
        assert_eq!(lease_size(0.0, 0.1, 0, 10), 1);
        assert_eq!(lease_size(50.0, 0.1, 0, 10), 5);
        assert_eq!(lease_size(50.0, 0.1, 3, 10), 2);
        assert_eq!(lease_size(1e9, 0.1, 0, 10), 10);
        assert_eq!(lease_size(1e9, 0.1, 7, 10), 3);
        assert_eq!(lease_size(1e9, 0.1, 10, 10), 0);
        assert_eq!(lease_size(50.0, 0.1, 5, 10), 0);
        assert_eq!(lease_size(f64::NAN, 0.1, 0, 10), 1);
        assert_eq!(max_batch(100.0, 200), 10);
        assert_eq!(max_batch(100.0, 8), 2);
        assert_eq!(max_batch(0.5, 1), 1);
    }

    #[test]
    fn a_slot_spends_what_was_deposited_and_no_more() {
        let t = LeaseTable::new(16);
        assert_eq!(t.take(42, 10), Take::Pending);
        let mut seen = Vec::new();
        t.scan(10, 1_000, |v| seen.push(v));
        assert_eq!(seen.len(), 1);
        assert_eq!((seen[0].key, seen[0].held, seen[0].demand), (42, 0, 1));
        t.deposit(seen[0].index, 42, 2, 1_000, 0);
        assert_eq!(t.take(42, 20), Take::Admit);
        assert_eq!(t.take(42, 20), Take::Admit);
        assert_eq!(t.take(42, 20), Take::Pending);
        t.refund(42);
        assert_eq!(t.take(42, 20), Take::Admit);
        // Refused by the store: denied until then.
        t.deposit(seen[0].index, 42, 0, 0, 500);
        assert_eq!(t.take(42, 100), Take::Denied { retry_ns: 400 });
        // Tokens lapse, and an idle slot is freed.
        t.deposit(seen[0].index, 42, 5, 600, 0);
        let mut n = 0;
        t.scan(700, 1_000, |_| n += 1);
        assert_eq!(n, 1);
        assert_eq!(t.take(42, 700), Take::Pending);
        t.scan(2_000, 1_000, |_| {});
        let mut n = 0;
        t.scan(2_000, 1_000, |_| n += 1);
        assert_eq!(n, 0, "an idle slot is freed");
    }

    #[test]
    fn a_full_table_says_so() {
        let t = LeaseTable::new(8);
        for k in 1..=8u64 {
            assert_eq!(t.take(k * 8, 0), Take::Pending);
        }
        assert_eq!(t.take(9 * 8, 0), Take::Full);
    }
}
