//! Lock-free rate limits and concurrency limits for mcplb. No I/O, no clock, no runtime: time
//! is an argument (`now_ns`, nanoseconds since an epoch the caller picks and keeps).
//!
//! Every limit is global to the process: all worker cores share the same atomic words, and the
//! request path takes no lock.
//!
//! - [`Gcra`]: the generic cell rate algorithm, a token bucket in one `AtomicU64` updated by
//!   compare-and-swap. Over any window `W`, at most `rate × W + burst` checks are admitted.
//! - [`KeyedLimiter`]: one GCRA bucket per key in a fixed-capacity table of atomic
//!   `(key, TAT)` slots; idle keys are reclaimed losslessly, memory never grows.
//! - [`KeyHasher`]: seeded SipHash-1-3 turning API keys, sessions and addresses into keys, so
//!   secrets are not stored and collisions cannot be aimed.
//! - [`Rule`] / [`RateLimits`]: config-level rules (server, method, tool [`Glob`], resource
//!   prefix; keyed by [`KeySource`]); all matching rules must admit, and a request rejected by
//!   one rule spends no token of another.
//! - [`ConcurrencyLimit`]: at most N in flight per key, [`Permit`]s released on drop, and a
//!   bounded first-in, first-out queue per key ([`PermitWait`], a future woken when a released
//!   permit is handed to it) for proxies that queue.
//! - [`LeaseBucket`] / [`LeaseTable`]: cluster limits, whose bucket lives in a shared store
//!   (the proxy drives Redis): the store's step as a plain function, and per-key leases of
//!   tokens that a replica spends lock-free and refills from a background thread.
//!
//! # Cost
//!
//! `cargo bench -p mcplb-bench --bench ratelimit -- --warm-up-time 1 --measurement-time 2`,
//! two runs on the 2-vCPU development VM while other builds ran (load ≈ 3, so treat these as
//! upper bounds):
//!
//! | operation | time |
//! | --- | --- |
//! | `Gcra::check`, one thread, one key | 10–11 ns |
//! | `Gcra::check`, 2 threads on one key (wall time per check per thread) | 14–21 ns |
//! | `KeyedLimiter::check`, 1 key | 14–22 ns |
//! | `KeyedLimiter::check`, 100 000 keys in 200 000 slots (cache misses) | 70–129 ns |
//! | `KeyHasher::hash_key`, 40-byte API key (SipHash-1-3) | 20–21 ns |
//! | `RateLimits::check`, 2 of 3 rules match (peek + take on each) | 99–127 ns |
//!
//! Concurrency permits (five runs each, interleaved with the same benchmarks built before
//! the queue existed, load 6.6–8.9 on the 2 vCPUs, so the spread is the machine's; callgrind
//! counts 135 instructions per acquire + release before the queue, 140 with it):
//!
//! | operation | before the queue | with it |
//! | --- | --- | --- |
//! | `try_acquire_owned` + drop, one key, a permit free | 46–107 ns (median 69) | 41–89 ns (median 67) |
//! | the same, 2 threads on one key (wall time per acquire + release per thread) | 86–195 ns (median 143) | 80–183 ns (median 133) |
//! | a caller queues, the holder releases, the caller picks the permit up | | 280–506 ns (median 345) |

mod concurrency;
mod counter;
mod gcra;
mod glob;
mod hash;
mod keyed;
mod lease;
mod rules;
mod table;

pub use concurrency::{ConcurrencyLimit, OwnedPermit, Permit, PermitWait};
pub use gcra::{Gcra, RetryAfter};
pub use glob::Glob;
pub use hash::{hash_key, KeyHasher};
pub use keyed::KeyedLimiter;
pub use lease::{lease_size, max_batch, Grant, LeaseBucket, LeaseTable, SlotView, Take};
pub use rules::{Decision, KeySource, RateLimits, RequestInfo, Rule};

/// What is wrong with a limit's configuration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The rate is not a finite number of tokens per second above zero.
    #[error("rate must be a number of tokens per second above 0, got {rate}")]
    InvalidRate {
        /// The rate given.
        rate: f64,
    },
    /// A burst of zero would reject every request.
    #[error("burst must be at least 1 (0 would reject every request)")]
    ZeroBurst,
    /// A concurrency limit of zero would reject every request.
    #[error("a concurrency limit must allow at least 1 request in flight")]
    ZeroConcurrency,
    /// The key source is not one of the known spellings.
    #[error("key must be \"global\", \"session\", \"client-ip\", \"identity\" or \"header:NAME\", got {0:?}")]
    InvalidKeySource(String),
    /// Some rules are invalid: each with its index in the list given.
    #[error("{}", describe_rules(.0))]
    InvalidRules(Vec<(usize, LimitError)>),
}

fn describe_rules(problems: &[(usize, LimitError)]) -> String {
    problems
        .iter()
        .map(|(index, error)| format!("limits[{index}]: {error}"))
        .collect::<Vec<_>>()
        .join("; ")
}
