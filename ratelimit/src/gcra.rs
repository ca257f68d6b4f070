//! The generic cell rate algorithm (GCRA): a token bucket kept in ONE `AtomicU64` per key.
//!
//! The word holds the key's *theoretical arrival time* (TAT) in nanoseconds: the instant at
//! which the bucket would be full again. A request at `now` is admitted when
//! `max(TAT, now) + interval - tolerance <= now`, and then the TAT moves to
//! `max(TAT, now) + interval`; one compare-and-swap makes that atomic, so every core shares the
//! same bucket without a lock. A TAT at or before `now` means "bucket full", exactly like a key
//! never seen, which is what lets the keyed table reclaim such keys without losing anything.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::LimitError;

/// Nanoseconds per second, the unit of every `now_ns`.
pub(crate) const NANOS_PER_SEC: f64 = 1_000_000_000.0;

/// The largest TAT ever stored; `u64::MAX` is reserved by the keyed table as a "slot being
/// reclaimed" marker, so saturating arithmetic stops one short of it.
pub(crate) const MAX_TAT: u64 = u64::MAX - 1;

/// How long a rejected caller should wait before one token is available.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RetryAfter {
    /// Nanoseconds from the `now_ns` of the rejected check until a token is available.
    pub nanos: u64,
}

impl RetryAfter {
    /// Whole seconds, rounded up (at least 1), as HTTP `Retry-After` wants them.
    pub fn secs_ceil(self) -> u64 {
        self.nanos.div_ceil(1_000_000_000).max(1)
    }
}

/// A rate (tokens per second) and a burst, compiled into integer nanoseconds.
///
/// Guarantee: over any window of `W` seconds, at most `rate * W + burst` checks on one cell are
/// admitted. The emission interval is rounded *up* to whole nanoseconds, so the effective rate
/// is at most the configured one (the difference is below 1 ns per token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Nanoseconds between two tokens (at least 1).
    interval: u64,
    /// `interval * burst`: how far ahead of `now` the TAT may run.
    tolerance: u64,
}

impl Gcra {
    /// A limiter admitting `rate_per_sec` checks per second on average, `burst` at once.
    ///
    /// Rates above 10⁹ per second are clamped to one token per nanosecond.
    ///
    /// # Errors
    /// [`LimitError::InvalidRate`] when the rate is not a finite number above zero;
    /// [`LimitError::ZeroBurst`] when `burst` is 0 (nothing could ever be admitted).
    pub fn new(rate_per_sec: f64, burst: u32) -> Result<Self, LimitError> {
        if !rate_per_sec.is_finite() || rate_per_sec <= 0.0 {
            return Err(LimitError::InvalidRate { rate: rate_per_sec });
        }
        if burst == 0 {
            return Err(LimitError::ZeroBurst);
        }
        let interval_f = (NANOS_PER_SEC / rate_per_sec).ceil();
        // `as` saturates for floats beyond u64::MAX; a tiny positive rate becomes "one token
        // per 584 years", which is what the caller asked for.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let interval = (interval_f as u64).clamp(1, MAX_TAT);
        Ok(Gcra {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst)),
        })
    }

    /// Nanoseconds between two tokens.
    pub fn interval_ns(&self) -> u64 {
        self.interval
    }

    /// The burst expressed in nanoseconds of tokens (`interval * burst`).
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance
    }

    /// Takes one token from `cell` at `now_ns`, or says how long until one is available.
    ///
    /// `cell` starts at 0 (a full bucket) and must only ever be changed by this limiter.
    ///
    /// # Errors
    /// [`RetryAfter`] when the bucket is empty; the cell is then left unchanged.
    pub fn check(&self, cell: &AtomicU64, now_ns: u64) -> Result<(), RetryAfter> {
        let mut current = cell.load(Ordering::Acquire);
        loop {
            let next = self.decide(current, now_ns)?;
            match cell.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(()),
                Err(actual) => current = actual,
            }
        }
    }

    /// Whether a [`check`](Self::check) at `now_ns` would admit, without taking a token.
    ///
    /// # Errors
    /// [`RetryAfter`] when the bucket is empty.
    pub fn peek(&self, cell: &AtomicU64, now_ns: u64) -> Result<(), RetryAfter> {
        self.decide(cell.load(Ordering::Acquire), now_ns)
            .map(|_| ())
    }

    /// The pure GCRA step: the new TAT if a request at `now` is admitted given `tat`.
    pub(crate) fn decide(&self, tat: u64, now: u64) -> Result<u64, RetryAfter> {
        let next = tat.max(now).saturating_add(self.interval).min(MAX_TAT);
        let allowed_at = next.saturating_sub(self.tolerance);
        if allowed_at > now {
            Err(RetryAfter {
                nanos: allowed_at - now,
            })
        } else {
            Ok(next)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_one_per_interval() {
        let g = Gcra::new(10.0, 3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(g.interval_ns(), 100_000_000);
        let cell = AtomicU64::new(0);
        let t0 = 5_000_000_000;
        for _ in 0..3 {
            assert_eq!(g.check(&cell, t0), Ok(()));
        }
        assert_eq!(g.check(&cell, t0), Err(RetryAfter { nanos: 100_000_000 }));
        assert_eq!(
            g.check(&cell, t0 + 40_000_000),
            Err(RetryAfter { nanos: 60_000_000 })
        );
        assert_eq!(g.check(&cell, t0 + 100_000_000), Ok(()));
        assert!(g.peek(&cell, t0 + 100_000_000).is_err());
    }

    #[test]
    fn rejects_bad_parameters() {
        assert!(matches!(
            Gcra::new(0.0, 1),
            Err(LimitError::InvalidRate { .. })
        ));
        assert!(matches!(
            Gcra::new(f64::NAN, 1),
            Err(LimitError::InvalidRate { .. })
        ));
        assert!(matches!(
            Gcra::new(-3.0, 1),
            Err(LimitError::InvalidRate { .. })
        ));
        assert!(matches!(Gcra::new(1.0, 0), Err(LimitError::ZeroBurst)));
        // Extreme but valid values saturate instead of overflowing.
        let slow = Gcra::new(1e-300, u32::MAX).unwrap_or_else(|e| panic!("{e}"));
        let cell = AtomicU64::new(0);
        assert_eq!(slow.check(&cell, u64::MAX), Ok(()));
        let fast = Gcra::new(1e300, 1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fast.interval_ns(), 1);
    }

    #[test]
    fn retry_after_rounds_up_to_seconds() {
        assert_eq!(RetryAfter { nanos: 1 }.secs_ceil(), 1);
        assert_eq!(RetryAfter { nanos: 0 }.secs_ceil(), 1);
        assert_eq!(
            RetryAfter {
                nanos: 1_000_000_001
            }
            .secs_ceil(),
            2
        );
    }
}
