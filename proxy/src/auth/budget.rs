//! The budget of failed JWT verifications per client address, checked *before* a token's
//! signature is: a flood of distinct forged tokens from one address costs a table lookup each
//! once the budget is spent, not a signature check (tens of microseconds of one core).
//!
//! Why this design: the budget is a GCRA bucket per address in the `ratelimit` crate's bounded
//! lock-free table ([`ratelimit::KeyedLimiter`]), shared by every core of one verifier: a peek
//! (a few atomic loads) before a full verification, a compare-and-swap after a failed one.
//! Successful verifications and cached verdicts cost nothing from it. A per-core table would
//! multiply the budget by the number of cores; a locked map would share a lock between cores.
//!
//! An address is an IPv4 address, or the /64 prefix of an IPv6 one (a host usually holds a
//! whole /64, so counting single IPv6 addresses would let it spread a flood over 2^64 keys).
//! When the table is full of addresses still in debt, a new address is not tracked and so not
//! limited: the budget fails open for addresses it cannot hold, never refusing one that made
//! no failed verification. A reload builds new verifiers, so budgets start afresh then.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use ratelimit::{Gcra, KeyHasher, KeyedLimiter};
use serde::Deserialize;

/// `[servers.auth.jwt.failure_budget]` as written (unknown keys are collected by
/// `config::read`).
#[derive(Debug, Deserialize)]
pub(crate) struct RawBudget {
    enabled: Option<bool>,
    burst: Option<u32>,
    rate: Option<f64>,
    addresses: Option<usize>,
}

/// The settings of a failure budget (shown by `/config`, compared on reload).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSettings {
    /// Whether the budget applies at all.
    pub enabled: bool,
    /// Failed verifications an address may make at once.
    pub burst: u32,
    /// Failed verifications per second an address regains after that.
    pub rate: f64,
    /// Addresses tracked at once (16 bytes each, allocated at start).
    pub addresses: usize,
}

impl Default for BudgetSettings {
    fn default() -> Self {
        BudgetSettings {
            enabled: true,
            burst: 20,
            rate: 1.0,
            addresses: 8192,
        }
    }
}

/// A failure budget per client address; see the module docs.
#[derive(Debug)]
pub struct FailureBudget {
    /// As configured.
    pub settings: BudgetSettings,
    limiter: Option<KeyedLimiter>,
}

/// Most addresses a budget may track (16 MiB of table).
const MAX_ADDRESSES: usize = 1 << 20;

impl FailureBudget {
    /// A budget with these settings (`None` limiter when disabled).
    fn new(settings: BudgetSettings) -> Result<Self, ratelimit::LimitError> {
        let limiter = if settings.enabled {
            let gcra = Gcra::new(settings.rate, settings.burst)?;
            Some(KeyedLimiter::new(gcra, settings.addresses))
        } else {
            None
        };
        Ok(FailureBudget { settings, limiter })
    }

    /// Validates `failure_budget` (absent: the defaults), pushing every problem with its key
    /// path (`key` names the table).
    pub(super) fn validate(raw: Option<RawBudget>, key: &str, errs: &mut Vec<String>) -> Self {
        let mut s = BudgetSettings::default();
        if let Some(raw) = raw {
            s.enabled = raw.enabled.unwrap_or(true);
            s.burst = raw.burst.unwrap_or(s.burst);
            s.rate = raw.rate.unwrap_or(s.rate);
            s.addresses = raw.addresses.unwrap_or(s.addresses);
        }
        if s.burst == 0 {
            errs.push(format!(
                "{key}.burst: must be at least 1 (to turn the budget off: enabled = false)"
            ));
        }
        if !(s.rate.is_finite() && s.rate > 0.0) {
            errs.push(format!(
                "{key}.rate: must be a number of failures per second above 0 (e.g. 1 or 0.1)"
            ));
        }
        if !(8..=MAX_ADDRESSES).contains(&s.addresses) {
            errs.push(format!(
                "{key}.addresses: must be from 8 to {MAX_ADDRESSES} (16 bytes each)"
            ));
        }
        // Settings refused above leave no limiter; the configuration is refused anyway.
        FailureBudget::new(s).unwrap_or(FailureBudget {
            settings: s,
            limiter: None,
        })
    }

    /// Whether `address` may have one more full verification now (false when its budget is
    /// spent). Takes nothing from the budget.
    pub(super) fn admit(&self, address: u64) -> bool {
        self.limiter
            .as_ref()
            .is_none_or(|l| l.peek(address, now_ns()).is_ok())
    }

    /// Charges one failed verification to `address`. An address the table cannot hold is not
    /// charged (see the module docs).
    pub(super) fn charge(&self, address: u64) {
        if let Some(l) = &self.limiter {
            let _ = l.check(address, now_ns());
        }
    }

    /// Seconds until a spent budget allows one more verification: one emission interval,
    /// rounded up (what a client is told in `Retry-After`).
    pub fn retry_after_secs(&self) -> u64 {
        let interval = self.limiter.as_ref().map_or(0, |l| l.gcra().interval_ns());
        interval.div_ceil(1_000_000_000).max(1)
    }
}

/// The budget key of a client address: the IPv4 address (IPv4-mapped IPv6 included), or the
/// /64 prefix of an IPv6 address, hashed with the process's secret seed.
pub(super) fn address_key(hasher: &KeyHasher, ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(a) => hasher.hash_key(&a.octets()),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) => hasher.hash_key(&v4.octets()),
            None => {
                let o = a.octets();
                hasher.hash_key(o.get(..8).unwrap_or(&o))
            }
        },
    }
}

/// Monotonic nanoseconds since the first call (the budget's clock).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(burst: u32, rate: f64) -> FailureBudget {
        let mut errs = Vec::new();
        let b = FailureBudget::validate(
            Some(RawBudget {
                enabled: None,
                burst: Some(burst),
                rate: Some(rate),
                addresses: Some(64),
            }),
            "b",
            &mut errs,
        );
        assert!(errs.is_empty(), "{errs:?}");
        b
    }

    #[test]
    fn spent_after_burst_failures_and_other_addresses_unaffected() {
        let b = budget(3, 0.001);
        let h = KeyHasher::new([1, 2]);
        let one = address_key(&h, "192.0.2.1".parse().unwrap_or(IpAddr::from([0; 4])));
        let two = address_key(&h, "192.0.2.2".parse().unwrap_or(IpAddr::from([0; 4])));
        for _ in 0..3 {
            assert!(b.admit(one));
            b.charge(one);
        }
        assert!(!b.admit(one));
        assert_eq!(b.retry_after_secs(), 1000);
        assert!(b.admit(two));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let h = KeyHasher::new([1, 2]);
        let key = |s: &str| address_key(&h, s.parse().unwrap_or(IpAddr::from([0; 4])));
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
    }

    #[test]
    fn disabled_admits_everything_and_bad_settings_name_their_key() {
        let mut errs = Vec::new();
        let off = FailureBudget::validate(
            Some(RawBudget {
                enabled: Some(false),
                burst: None,
                rate: None,
                addresses: None,
            }),
            "b",
            &mut errs,
        );
        assert!(errs.is_empty());
        for _ in 0..100 {
            off.charge(7);
        }
        assert!(off.admit(7));
        let _ = FailureBudget::validate(
            Some(RawBudget {
                enabled: None,
                burst: Some(0),
                rate: Some(-1.0),
                addresses: Some(1),
            }),
            "servers[0].auth.jwt.failure_budget",
            &mut errs,
        );
        assert_eq!(errs.len(), 3, "{errs:?}");
        for (e, k) in errs.iter().zip(["burst", "rate", "addresses"]) {
            assert!(
                e.starts_with(&format!("servers[0].auth.jwt.failure_budget.{k}:")),
                "{e}"
            );
        }
    }
}
