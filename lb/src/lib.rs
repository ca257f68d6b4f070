//! Backend choice for mcplb: consistent hashing with bounded loads, least outstanding requests
//! with the power of two choices, round robin, per-backend health shared by every core, and a
//! retry budget. No I/O, no clock, no runtime: time (`now_ns`, nanoseconds on the caller's
//! monotonic clock) and randomness are arguments, so every decision is reproducible in tests.
//!
//! # Which consistent-hashing scheme, by measurement
//!
//! Balance (most-loaded backend over the mean) and keys moved, over 1M session-id keys hashed
//! with [`hash_key`], equal weights (`lb/tests/measure.rs`: `cargo test -p mcplb-lb --release
//! --test measure -- --ignored --nocapture`). "Leave" removes backend N/2 of N (ideal: 1/N of
//! the keys move); "join" adds an (N+1)-th (ideal: 1/(N+1)).
//!
//! | scheme | N | max/mean | moved on leave | moved on join | ideal leave / join |
//! |---|---|---|---|---|---|
//! | Rendezvous | 3 | 1.001 | 33.28 % | 25.01 % | 33.33 % / 25.00 % |
//! | Rendezvous | 10 | 1.006 | 9.99 % | 9.09 % | 10.00 % / 9.09 % |
//! | Rendezvous | 100 | 1.024 | 0.98 % | 0.99 % | 1.00 % / 0.99 % |
//! | Maglev (65537) | 3 | 1.000 | 33.34 % | 25.07 % | 33.33 % / 25.00 % |
//! | Maglev (65537) | 10 | 1.004 | 10.36 % | 9.43 % | 10.00 % / 9.09 % |
//! | Maglev (65537) | 100 | 1.028 | 1.65 % | 1.55 % | 1.00 % / 0.99 % |
//! | Ring (160 vnodes) | 3 | 1.006 | 33.16 % | 25.97 % | 33.33 % / 25.00 % |
//! | Ring (160 vnodes) | 10 | 1.164 | 10.68 % | 7.91 % | 10.00 % / 9.09 % |
//! | Ring (160 vnodes) | 100 | 1.211 | 0.95 % | 0.95 % | 1.00 % / 0.99 % |
//!
//! (With 10k keys per backend at N = 100, about 2 % of max/mean is sampling noise.)
//!
//! Nanoseconds per pick (criterion, `cargo bench -p mcplb-bench --bench lb -- --warm-up-time 1
//! --measurement-time 2`, shared 2-core VM, so ±20 %). "pick" is [`HashRing::pick`] with every
//! backend eligible (read from a [`GroupHealth`]); "bounded" is [`HashRing::pick_bounded`] with
//! c = 1.25 and adversarial loads (uniform 0–199, so about a third of backends are over the
//! bound and the walk goes on), which costs an O(N) pass over eligibility and loads whatever
//! the scheme.
//!
//! | backends | 3 | 4 | 10 | 64 | 100 |
//! |---|---|---|---|---|---|
//! | rendezvous, pick | 9 | 9 | 16 | 104 | 151 |
//! | rendezvous, bounded | 30 | 28 | 64 | 284 | 378 |
//! | maglev, pick | 3.9 | 3.9 | 3.7 | 3.8 | 4.4 |
//! | maglev, bounded | 17 | 37 | 46 | 137 | 135 |
//! | ring, pick | 10 | 18 | 20 | 30 | 29 |
//! | ring, bounded | 56 | 80 | 57 | 165 | 181 |
//! | p2c over peak EWMA | 53 | 75 | 57 | 66 | 61 |
//! | round robin | 6.5 | 5.8 | 6.0 | 6.4 | 5.6 |
//! | smooth weighted round robin | 8.3 | 12 | 24 | 118 | 194 |
//!
//! Also: [`hash_key`] of a 36-byte session id 5.5 ns; [`GroupHealth::is_eligible`] 1.2 ns;
//! [`GroupHealth::record_success`] 1.1 ns; [`RetryBudget::deposit`] + [`RetryBudget::try_withdraw`]
//! 25 ns.
//!
//! **The proxy uses weighted rendezvous hashing** ([`HashScheme::default`]): it is the only
//! scheme that moves exactly the keys of the backend that left (so the minimal-disruption
//! property holds exactly, not within a few percent), has the best balance, honours weights
//! exactly, gives the same mapping whatever the order of the backend list, and needs no
//! table (Maglev's is 256 KiB per group). Its O(N) cost is 10–60 ns for the 2–10 replicas an
//! MCP server group usually has, paid once per new session (sessions are sticky afterwards)
//! or per keyed request, next to tens of µs of proxying. For groups of more than about 50
//! backends, configure Maglev: 4 ns at any size, for about 0.6 points more keys moved and a
//! balance just as good. The ring with virtual nodes loses on every count (balance 1.16–1.21
//! at 10–100 backends with 160 vnodes) and is kept only for comparison.
//!
//! Where to start: [`HashRing::pick_bounded`] for keyed requests, [`p2c_pick`] with
//! [`PeakEwma::cost`] for the rest, [`GroupHealth::is_eligible`] as the `eligible` argument of
//! both, and [`RetryBudget`] before any retry.

mod attempt;
mod hash;
mod health;
mod least;
mod retry;

pub use attempt::{retry_decision, Retry, RetryContext, UpstreamError, UpstreamErrorKind, Written};
pub use hash::{
    hash_key, HashRing, HashScheme, DEFAULT_LOAD_FACTOR, DEFAULT_MAGLEV_TABLE, DEFAULT_RING_VNODES,
};
pub use health::{
    ActiveCheck, ActiveCheckConfig, ActiveVerdict, BackendHealth, Ejection, FailureKind,
    GroupHealth, HealthState, OutlierConfig, OutlierDetector,
};
pub use least::{
    p2c_pick, PeakEwma, WeightedRoundRobin, DEFAULT_EWMA_DECAY_NS, DEFAULT_INITIAL_RTT_NS,
};
pub use retry::{RetryBudget, RetryBudgetConfig};

/// A setting of this crate that cannot work; the proxy reports these with the key path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The outlier ejection base time is zero.
    #[error("outlier ejection base time must be greater than zero")]
    ZeroEjectionTime,
    /// The longest ejection is shorter than the first.
    #[error(
        "outlier max ejection time ({max_ns} ns) must be at least the base time ({base_ns} ns)"
    )]
    MaxEjectionBelowBase {
        /// The configured base time.
        base_ns: u64,
        /// The configured maximum.
        max_ns: u64,
    },
    /// The ejection share is above 100 %.
    #[error("max_ejection_percent must be from 0 to 100, got {0}")]
    EjectionPercent(u8),
    /// The retry ratio is negative, not a number or absurd.
    #[error("retry budget ratio must be a number from 0 to 1000 (0.2 = 20 %), got {0}")]
    RetryRatio(f64),
    /// The retry window is too short to count anything.
    #[error("retry budget ttl must be at least 10 ms, got {0} ns")]
    RetryTtl(u64),
}

use std::cell::Cell;

/// Round-robin cursor over `n` backends, one per core (not shared, so no atomics).
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: Cell<usize>,
}

impl RoundRobin {
    /// A cursor whose first pick is `start % n`; workers start at their own index so that
    /// the first sessions on different cores do not all land on backend 0.
    pub fn starting_at(start: usize) -> Self {
        RoundRobin {
            next: Cell::new(start),
        }
    }

    /// Picks the next index in `0..n`, or `None` when `n` is zero.
    pub fn pick(&self, n: usize) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let i = self.next.get() % n;
        self.next.set(i.wrapping_add(1));
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_through_all_backends() {
        let rr = RoundRobin::default();
        let picks: Vec<_> = (0..6).map(|_| rr.pick(3)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2].map(Some));
        assert_eq!(rr.pick(0), None);
    }
}
