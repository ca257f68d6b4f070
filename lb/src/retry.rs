//! A retry budget (Finagle's `RetryBudget`, linkerd's retry budgets): retries are allowed up
//! to a ratio of the requests of the last `ttl` plus a small reserve per second, so that when
//! a backend fails, retries add at most that ratio to the load instead of multiplying it.
//!
//! The window is ten slots of `ttl / 10`, each one `AtomicU64` holding the slot's epoch, its
//! deposits and its withdrawals, so a deposit or withdrawal is one compare-and-swap and the
//! budget can be shared between threads. Share one per group, or keep one per core (then the
//! reserve applies per core) to keep its cache line off the other cores.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::ConfigError;

const SLOTS: u64 = 10;
const COUNT_BITS: u32 = 21;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_BITS: u32 = 64 - 2 * COUNT_BITS;
const EPOCH_MASK: u64 = (1 << EPOCH_BITS) - 1;

/// Settings of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudgetConfig {
    /// How long a deposit counts, in ns (at least 10 ms; default 10 s).
    pub ttl_ns: u64,
    /// Retries allowed per deposited request (default 0.2, i.e. 20 %).
    pub ratio: f64,
    /// Retries allowed per second of `ttl` even with no deposits (default 10).
    pub min_per_sec: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ttl_ns: 10_000_000_000,
            ratio: 0.2,
            min_per_sec: 10,
        }
    }
}

/// Retries allowed: at most `ratio × deposits + min_per_sec × ttl` within the last `ttl`
/// (counted in slots of `ttl / 10`). Each slot counts up to about two million deposits, past
/// which further deposits in that slot are not counted (a stricter budget, never a looser one).
#[derive(Debug)]
pub struct RetryBudget {
    slots: [AtomicU64; SLOTS as usize],
    slot_ns: u64,
    /// Ratio in millionths.
    ratio_ppm: u64,
    reserve: u64,
}

impl RetryBudget {
    /// A budget with these settings, or every problem with them.
    pub fn new(config: RetryBudgetConfig) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if !(config.ratio.is_finite() && (0.0..=1000.0).contains(&config.ratio)) {
            errors.push(ConfigError::RetryRatio(config.ratio));
        }
        if config.ttl_ns < 10_000_000 {
            errors.push(ConfigError::RetryTtl(config.ttl_ns));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let reserve = (u128::from(config.min_per_sec) * u128::from(config.ttl_ns) / 1_000_000_000)
            .min(u128::from(COUNT_MAX)) as u64;
        Ok(RetryBudget {
            slots: Default::default(),
            slot_ns: config.ttl_ns / SLOTS,
            ratio_ppm: (config.ratio * 1e6).round() as u64,
            reserve,
        })
    }

    /// Counts one request (not a retry) sent at `now_ns`.
    pub fn deposit(&self, now_ns: u64) {
        let epoch = self.epoch(now_ns);
        let slot = self.slot(epoch);
        let tag = epoch & EPOCH_MASK;
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
            let (e, d, r) = unpack(w);
            Some(if e == tag {
                pack(tag, (d + 1).min(COUNT_MAX), r)
            } else {
                pack(tag, 1, 0)
            })
        });
    }

    /// Takes one retry from the budget at `now_ns` if the budget allows it.
    pub fn try_withdraw(&self, now_ns: u64) -> bool {
        let epoch = self.epoch(now_ns);
        let slot = self.slot(epoch);
        let tag = epoch & EPOCH_MASK;
        let mut cur = slot.load(Ordering::Relaxed);
        loop {
            let (e, d, r) = unpack(cur);
            let (d, r) = if e == tag { (d, r) } else { (0, 0) };
            let (old_d, old_r) = self.older(epoch);
            if r + old_r >= self.allowed(d + old_d) {
                return false;
            }
            match slot.compare_exchange_weak(
                cur,
                pack(tag, d, r + 1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }

    /// Retries the budget would allow at `now_ns` (for the admin port and tests).
    pub fn balance(&self, now_ns: u64) -> u64 {
        let epoch = self.epoch(now_ns);
        let (e, d, r) = unpack(self.slot(epoch).load(Ordering::Relaxed));
        let (d, r) = if e == epoch & EPOCH_MASK {
            (d, r)
        } else {
            (0, 0)
        };
        let (old_d, old_r) = self.older(epoch);
        self.allowed(d + old_d).saturating_sub(r + old_r)
    }

    fn allowed(&self, deposits: u64) -> u64 {
        (u128::from(deposits) * u128::from(self.ratio_ppm) / 1_000_000) as u64 + self.reserve
    }

    /// Deposits and withdrawals of the nine slots before `epoch` that are still in the window.
    fn older(&self, epoch: u64) -> (u64, u64) {
        let mut sum = (0, 0);
        for back in 1..SLOTS {
            let Some(want) = epoch.checked_sub(back) else {
                break;
            };
            let (e, d, r) = unpack(self.slot(want).load(Ordering::Relaxed));
            if e == want & EPOCH_MASK {
                sum.0 += d;
                sum.1 += r;
            }
        }
        sum
    }

    fn epoch(&self, now_ns: u64) -> u64 {
        // Slots store the epoch modulo 2²² (48 days with a 10 s ttl): a slot is only mistaken
        // for a current one if nothing touched it for exactly a multiple of that.
        now_ns / self.slot_ns.max(1)
    }

    fn slot(&self, epoch: u64) -> &AtomicU64 {
        // `epoch % SLOTS` is below the array's length.
        &self.slots[(epoch % SLOTS) as usize]
    }
}

fn pack(epoch: u64, deposits: u64, retries: u64) -> u64 {
    ((epoch & EPOCH_MASK) << (2 * COUNT_BITS)) | (deposits << COUNT_BITS) | retries.min(COUNT_MAX)
}

fn unpack(w: u64) -> (u64, u64, u64) {
    (
        w >> (2 * COUNT_BITS),
        (w >> COUNT_BITS) & COUNT_MAX,
        w & COUNT_MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn budget(ratio: f64, min_per_sec: u32) -> RetryBudget {
        RetryBudget::new(RetryBudgetConfig {
            ttl_ns: 10 * S,
            ratio,
            min_per_sec,
        })
        .unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn reserve_then_ratio() {
        let b = budget(0.2, 1);
        // Reserve: 1/s over 10 s.
        assert_eq!(b.balance(S), 10);
        assert_eq!((0..20).filter(|_| b.try_withdraw(S)).count(), 10);
        for _ in 0..50 {
            b.deposit(S);
        }
        assert_eq!((0..20).filter(|_| b.try_withdraw(S)).count(), 10);
        assert_eq!(b.balance(S), 0);
    }

    #[test]
    fn deposits_and_retries_expire_after_ttl() {
        let b = budget(0.5, 0);
        for _ in 0..10 {
            b.deposit(0);
        }
        assert!(b.try_withdraw(9 * S));
        assert_eq!(b.balance(9 * S), 4);
        // Slot of t=0 leaves the window at 10 s.
        assert_eq!(b.balance(10 * S), 0);
        assert!(!b.try_withdraw(10 * S));
        // A slot reused after a full turn starts from zero.
        b.deposit(20 * S);
        b.deposit(20 * S);
        assert_eq!(b.balance(20 * S), 1);
    }

    #[test]
    fn rejects_bad_config() {
        let errs = RetryBudget::new(RetryBudgetConfig {
            ttl_ns: 1,
            ratio: f64::NAN,
            min_per_sec: 0,
        })
        .err()
        .unwrap_or_default();
        assert_eq!(errs.len(), 2);
        assert!(RetryBudget::new(RetryBudgetConfig {
            ratio: -0.1,
            ..RetryBudgetConfig::default()
        })
        .is_err());
    }

    #[test]
    fn counts_saturate() {
        assert_eq!(
            unpack(pack(3, COUNT_MAX, COUNT_MAX + 5)),
            (3, COUNT_MAX, COUNT_MAX)
        );
        assert_eq!(unpack(pack(EPOCH_MASK + 2, 1, 2)), (1, 1, 2));
    }
}
