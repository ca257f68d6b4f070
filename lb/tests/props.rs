//! Seeded property tests of the pickers, the health rules and the retry budget: the
//! invariants the proxy relies on, over random inputs from a fixed seed (reproducible runs).

use mcplb_lb::{
    hash_key, p2c_pick, FailureKind, GroupHealth, HashRing, HashScheme, OutlierConfig, RetryBudget,
    RetryBudgetConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use rand::{rngs::StdRng, SeedableRng};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x006d_6370_6c62),
        failure_persistence: None,
        ..Config::default()
    }
}

const SCHEMES: [HashScheme; 3] = [
    HashScheme::Rendezvous,
    HashScheme::Maglev { table_size: 4099 },
    HashScheme::RING,
];

fn backends(tags: &[u32]) -> Vec<(u32, u32)> {
    tags.iter().map(|&t| (t, 1)).collect()
}

fn distinct_tags(max: usize) -> impl Strategy<Value = Vec<u32>> {
    proptest::collection::hash_set(any::<u32>(), 1..max).prop_map(|s| s.into_iter().collect())
}

proptest! {
    #![proptest_config(config(64))]

    /// One pick: the chosen backend is eligible and, with its new load, within
    /// ceil(c × mean) where the mean counts the new load and only eligible backends.
    #[test]
    fn bounded_pick_respects_the_bound(
        loads in proptest::collection::vec(0u32..1000, 1..40),
        mask in any::<u64>(),
        c in 1.0f64..3.0,
        key in any::<u64>(),
    ) {
        let n = loads.len();
        let eligible = |i: usize| mask >> (i % 64) & 1 == 1;
        let tags: Vec<u32> = (0..n as u32).map(|i| i.wrapping_mul(2_654_435_761)).collect();
        for scheme in SCHEMES {
            let ring = HashRing::with_scheme(scheme, &backends(&tags));
            let pick = ring.pick_bounded(key, &loads, c, eligible);
            let elig: Vec<usize> = (0..n).filter(|&i| eligible(i)).collect();
            if elig.is_empty() {
                prop_assert_eq!(pick, None);
                continue;
            }
            let p = pick.unwrap_or(usize::MAX);
            prop_assert!(eligible(p), "{scheme:?} picked ineligible {p}");
            let total: u64 = elig.iter().map(|&i| u64::from(loads[i])).sum();
            let bound = (c * (total + 1) as f64 / elig.len() as f64).ceil() as u64;
            prop_assert!(u64::from(loads[p]) < bound, "{scheme:?}: load {} bound {bound}", loads[p]);
        }
    }

    /// Assigning keys one after another from empty: no backend ends above ceil(c × mean) + 1,
    /// with weights (the bound is then per unit of weight).
    #[test]
    fn bounded_assignment_stays_within_c_times_mean(
        weights in proptest::collection::vec(1u32..4, 1..20),
        c in 1.0f64..2.0,
        keys in 1usize..2000,
        seed in any::<u64>(),
    ) {
        let tags: Vec<(u32, u32)> =
            weights.iter().enumerate().map(|(i, &w)| (i as u32 * 7 + 3, w)).collect();
        let total_w: u32 = weights.iter().sum();
        for scheme in SCHEMES {
            let ring = HashRing::with_scheme(scheme, &tags);
            let mut loads = vec![0u32; weights.len()];
            for k in 0..keys as u64 {
                let key = hash_key(&(seed ^ k).to_le_bytes());
                let p = ring.pick_bounded(key, &loads, c, |_| true).unwrap_or(usize::MAX);
                prop_assert!(p < loads.len());
                loads[p] += 1;
            }
            for (i, &l) in loads.iter().enumerate() {
                let share = keys as f64 * f64::from(weights[i]) / f64::from(total_w);
                prop_assert!(
                    f64::from(l) <= (c * share).ceil() + 1.0,
                    "{scheme:?}: backend {i} has {l}, bound {}", (c * share).ceil() + 1.0
                );
            }
        }
    }

    /// Removing one of N backends moves at most 1/N + 5 % of keys; rendezvous and the ring
    /// move only the removed backend's keys.
    #[test]
    fn removing_a_backend_moves_few_keys(tags in distinct_tags(40), victim in any::<usize>()) {
        prop_assume!(tags.len() >= 2);
        let n = tags.len();
        let all = backends(&tags);
        let mut rest = all.clone();
        let gone = rest.remove(victim % n).0;
        for scheme in SCHEMES {
            let before = HashRing::with_scheme(scheme, &all);
            let after = HashRing::with_scheme(scheme, &rest);
            let mut moved = 0;
            const KEYS: u64 = 4000;
            for k in 0..KEYS {
                let key = hash_key(&k.to_le_bytes());
                let a = before.pick(key, |_| true).map(|i| all[i].0);
                let b = after.pick(key, |_| true).map(|i| rest[i].0);
                if a != b {
                    moved += 1;
                    if !matches!(scheme, HashScheme::Maglev { .. }) {
                        prop_assert_eq!(a, Some(gone), "{:?} moved a key off a staying backend", scheme);
                    }
                }
            }
            let share = f64::from(moved) / KEYS as f64;
            prop_assert!(share <= 1.0 / n as f64 + 0.05, "{scheme:?}: {share} moved of n={n}");
        }
    }

    /// The same key maps to the same backend on every core: two rings built from the same list
    /// agree, and rendezvous and the ring do not depend on the order of the list.
    #[test]
    fn same_key_same_backend_everywhere(tags in distinct_tags(30), key in any::<u64>()) {
        let list = backends(&tags);
        let mut reversed = list.clone();
        reversed.reverse();
        for scheme in SCHEMES {
            let a = HashRing::with_scheme(scheme, &list).pick(key, |_| true).map(|i| list[i].0);
            let b = HashRing::with_scheme(scheme, &list).pick(key, |_| true).map(|i| list[i].0);
            prop_assert_eq!(a, b);
            if !matches!(scheme, HashScheme::Maglev { .. }) {
                let r = HashRing::with_scheme(scheme, &reversed)
                    .pick(key, |_| true)
                    .map(|i| reversed[i].0);
                prop_assert_eq!(a, r);
            }
        }
    }

    /// P2C never picks an ineligible backend and returns None exactly when none is eligible.
    #[test]
    fn p2c_only_picks_eligible(
        n in 0usize..80,
        mask in proptest::collection::vec(any::<bool>(), 80),
        costs in proptest::collection::vec(0.0f64..100.0, 80),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        for _ in 0..20 {
            let pick = p2c_pick(&mut rng, n, |i| costs[i], |i| mask[i]);
            let any = (0..n).any(|i| mask[i]);
            match pick {
                Some(i) => prop_assert!(i < n && mask[i]),
                None => prop_assert!(!any),
            }
        }
    }

    /// Random failures, successes, drains and time steps: passive ejections never exceed the
    /// group's share and never take the last eligible backend.
    #[test]
    fn ejections_never_exceed_the_share(
        n in 1usize..12,
        percent in 0u8..=100,
        ops in proptest::collection::vec((any::<usize>(), 0u8..8, 0u64..5_000_000_000), 1..400),
    ) {
        let g = GroupHealth::new(n, OutlierConfig {
            consecutive_connect: 1,
            consecutive_reset: 2,
            consecutive_5xx: 2,
            consecutive_timeout: 3,
            base_ejection_ns: 1_000_000_000,
            max_ejection_ns: 8_000_000_000,
            max_ejection_percent: percent,
            backoff_reset_ns: 20_000_000_000,
        });
        let max = (n * usize::from(percent) / 100).min(n - 1);
        prop_assert_eq!(g.max_ejected(), max);
        let mut now = 0u64;
        for (i, op, dt) in ops {
            let i = i % n;
            now += dt;
            match op {
                0 => g.record_success(i),
                1 => g.set_draining(i, true),
                2 => g.set_draining(i, false),
                k => {
                    let kind = FailureKind::ALL[usize::from(k) % 4];
                    let before = (0..n).filter(|&j| g.is_eligible(j, now)).count();
                    if let Some(e) = g.record_failure(i, kind, now) {
                        prop_assert!(e.until_ns > now);
                        prop_assert!(before >= 2, "ejected the last eligible backend");
                    }
                }
            }
            prop_assert!(g.ejected_count(now) <= max);
        }
    }

    /// Back-to-back ejections double up to the cap; after the reset period the next one is
    /// back at the base.
    #[test]
    fn ejection_backoff_grows_then_resets(
        base in 1u64..1_000_000,
        cap_mult in 1u64..64,
        rounds in 1u32..12,
        gap in 0u64..3,
    ) {
        let max = base * cap_mult;
        let reset = max * 4;
        let g = GroupHealth::new(2, OutlierConfig {
            consecutive_connect: 1,
            base_ejection_ns: base,
            max_ejection_ns: max,
            backoff_reset_ns: reset,
            ..OutlierConfig::default()
        });
        let mut now = 1;
        for nth in 1..=rounds {
            let e = g.record_failure(0, FailureKind::Connect, now);
            let e = e.ok_or_else(|| TestCaseError::fail("not ejected"))?;
            prop_assert_eq!(e.nth, nth);
            let want = base.saturating_mul(1 << (nth - 1)).min(max);
            // Ends are rounded up to 8 ns.
            prop_assert!(e.until_ns - now >= want && e.until_ns - now < want + 8);
            now = e.until_ns + gap;
        }
        now += reset;
        let e = g.record_failure(0, FailureKind::Connect, now);
        prop_assert_eq!(e.map(|e| e.nth), Some(1));
    }

    /// Within every window the budget counts (its ten slots), retries never exceed
    /// floor(ratio × deposits) + min_per_sec × ttl.
    #[test]
    fn retry_budget_never_overdraws(
        ratio_pct in 0u32..100,
        min_per_sec in 0u32..5,
        ops in proptest::collection::vec((any::<bool>(), 0u64..300_000_000), 1..1500),
    ) {
        const SLOT: u64 = 1_000_000_000;
        let ratio = f64::from(ratio_pct) / 100.0;
        let b = RetryBudget::new(RetryBudgetConfig { ttl_ns: 10 * SLOT, ratio, min_per_sec })
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        let reserve = u64::from(min_per_sec) * 10;
        let mut now = 0u64;
        let mut deposits: Vec<u64> = Vec::new();
        let mut retries: Vec<u64> = Vec::new();
        for (deposit, dt) in ops {
            now += dt;
            if deposit {
                b.deposit(now);
                deposits.push(now);
            } else if b.try_withdraw(now) {
                retries.push(now);
                let slot = now / SLOT;
                let in_window = |t: &&u64| *t / SLOT + 10 > slot;
                let d = deposits.iter().filter(in_window).count() as f64;
                let r = retries.iter().filter(in_window).count() as u64;
                let allowed = (d * ratio_pct as f64 / 100.0).floor() as u64 + reserve;
                prop_assert!(r <= allowed, "{r} retries, {d} deposits, allowed {allowed}");
            }
        }
    }
}

// ---------------------------------------------------------------- the retry rule

use mcplb_lb::{retry_decision, Retry, RetryContext, UpstreamError, UpstreamErrorKind, Written};

fn upstream_error() -> impl Strategy<Value = UpstreamError> {
    (
        proptest::sample::select(UpstreamErrorKind::ALL.to_vec()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(k, reused, answer)| UpstreamError::new(k, reused, answer))
}

fn retry_context() -> impl Strategy<Value = RetryContext> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(read_only, sticky, can_fail_over, fresh_retry_used)| RetryContext {
            read_only,
            sticky,
            can_fail_over,
            fresh_retry_used,
        },
    )
}

proptest! {
    #![proptest_config(config(2048))]

    /// For every outcome kind: a request that may have reached a backend and is not
    /// read-only is never sent again; the other answers respect what the request is.
    #[test]
    fn retry_rule_never_resends_what_may_have_run(e in upstream_error(), cx in retry_context()) {
        let d = retry_decision(&e, &cx);
        if e.may_have_reached() && !cx.read_only {
            prop_assert_eq!(d, Retry::No);
        }
        match d {
            Retry::FreshConnection => prop_assert!(!cx.fresh_retry_used),
            Retry::FailOver => prop_assert!(cx.sticky && cx.can_fail_over),
            Retry::OtherBackend => prop_assert!(!cx.sticky && !e.may_have_reached()),
            Retry::OtherBackendIfBudget => prop_assert!(!cx.sticky && cx.read_only),
            Retry::No => {}
        }
        // What the error says about itself is consistent.
        prop_assert_eq!(e.may_have_reached(), e.written() == Written::Fully);
        if e.written() == Written::Nothing {
            prop_assert!(!e.reused() && !e.answer_bytes());
        }
    }

    /// A whole attempt loop, with every attempt failing in a random way (and the budget
    /// granting at random): a request that is not read-only reaches backends fully at most
    /// once, however the failures fall.
    #[test]
    fn attempt_loop_sends_a_tool_call_whole_at_most_once(
        outcomes in proptest::collection::vec((upstream_error(), any::<bool>()), 1..12),
        read_only in any::<bool>(),
        sticky in any::<bool>(),
        can_fail_over in any::<bool>(),
    ) {
        let mut fresh_retry_used = false;
        let mut whole_sends = 0;
        for (e, budget) in outcomes {
            if e.may_have_reached() {
                whole_sends += 1;
            }
            let cx = RetryContext { read_only, sticky, can_fail_over, fresh_retry_used };
            match retry_decision(&e, &cx) {
                Retry::No => break,
                Retry::FreshConnection => fresh_retry_used = true,
                Retry::OtherBackendIfBudget if !budget => break,
                _ => {}
            }
        }
        if !read_only {
            prop_assert!(whole_sends <= 1, "sent whole {} times", whole_sends);
        }
    }
}
