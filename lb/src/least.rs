//! Choosing a backend for requests with no key: least outstanding requests with the power of
//! two choices over a peak-EWMA latency estimate (as in Finagle and linkerd), and smooth
//! weighted round robin (as in nginx) for operators who want plain rotation with weights.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, RngCore};

/// Default time constant of [`PeakEwma`]: an observation's weight halves in about 7 s.
pub const DEFAULT_EWMA_DECAY_NS: u64 = 10_000_000_000;

/// Latency a [`PeakEwma`] assumes before its first observation (linkerd's default is of this
/// order): high enough that a new backend is not flooded, low enough that it gets tried.
pub const DEFAULT_INITIAL_RTT_NS: u64 = 30_000_000;

/// Peak-sensitive exponentially weighted moving average of a backend's round-trip time.
///
/// A slower response than the estimate replaces it at once (the peak); faster ones pull it
/// down with weight `1 - exp(-Δt/τ)`, and it decays towards 0 while nothing is observed, so
/// a backend that was slow gets tried again. Atomics make it `Sync`: workers on any core may
/// observe; two observations racing may blend in either order, which only blurs an estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// The estimate in ns, as `f64` bits.
    rtt_bits: AtomicU64,
    /// When the estimate was last updated (caller's clock, ns).
    stamp_ns: AtomicU64,
    decay_ns: f64,
}

impl PeakEwma {
    /// An estimate with the default decay (10 s) and initial RTT (30 ms), started at `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self::with_decay(DEFAULT_EWMA_DECAY_NS, DEFAULT_INITIAL_RTT_NS, now_ns)
    }

    /// An estimate with time constant `decay_ns` (0 is taken as 1 ns) that starts at
    /// `initial_rtt_ns` at `now_ns`.
    pub fn with_decay(decay_ns: u64, initial_rtt_ns: u64, now_ns: u64) -> Self {
        PeakEwma {
            rtt_bits: AtomicU64::new((initial_rtt_ns as f64).to_bits()),
            stamp_ns: AtomicU64::new(now_ns),
            decay_ns: decay_ns.max(1) as f64,
        }
    }

    /// Records one round trip of `rtt_ns` that ended at `now_ns`.
    pub fn observe(&self, rtt_ns: u64, now_ns: u64) {
        let prev = self.stamp_ns.swap(now_ns, Ordering::Relaxed);
        let decay = exp_neg(now_ns.saturating_sub(prev) as f64 / self.decay_ns);
        let rtt = rtt_ns as f64;
        let mut cur = self.rtt_bits.load(Ordering::Relaxed);
        loop {
            let est = f64::from_bits(cur);
            let next = if rtt > est {
                rtt
            } else {
                est * decay + rtt * (1.0 - decay)
            };
            match self.rtt_bits.compare_exchange_weak(
                cur,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The estimate at `now_ns` in ns, decayed for the time since the last observation.
    pub fn estimate(&self, now_ns: u64) -> f64 {
        let est = f64::from_bits(self.rtt_bits.load(Ordering::Relaxed));
        let since = now_ns.saturating_sub(self.stamp_ns.load(Ordering::Relaxed));
        est * exp_neg(since as f64 / self.decay_ns)
    }

    /// The load of the backend for [`p2c_pick`]: the estimate times `outstanding + 1`, i.e.
    /// how long a new request can expect to wait behind the ones already sent.
    pub fn cost(&self, now_ns: u64, outstanding: u32) -> f64 {
        self.estimate(now_ns) * (f64::from(outstanding) + 1.0)
    }
}

/// Below this, [`exp_neg`] sums its series instead of calling `exp` (τ/16: 625 ms at the
/// default time constant, which covers the gaps of a busy backend and of one called every
/// 250 ms).
const EXP_SERIES_BELOW: f64 = 1.0 / 16.0;

/// `exp(-x)` for `x >= 0` (a NaN or negative `x` goes to `f64::exp` as is): the time between
/// two requests to a backend is almost always a small fraction of the time constant, and
/// there the Taylor series to the 9th power, in Horner form, is within a few ulp of
/// `f64::exp` (its first term left out, `x^10/10!`, is below 3e-19) at a fraction of libm's
/// cost, which a request paid once per observation and once per estimate (1.3 % of a paced
/// call's samples).
#[inline]
fn exp_neg(x: f64) -> f64 {
    if !(0.0..EXP_SERIES_BELOW).contains(&x) {
        return (-x).exp();
    }
    // 1/k!, k = 9 down to 0: multiplications and additions only (no division, no `fma`, which
    // without the CPU feature at compile time is a libm call).
    const C: [f64; 10] = [
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let y = -x;
    C.iter().fold(0.0, |acc, c| acc * y + c)
}

/// Power of two choices: draws two distinct eligible backends out of `0..n` at random and
/// returns the one with the lower `cost` (the first drawn on a tie). Returns the only one when
/// just one is eligible and `None` when none is; never returns an index `eligible` refused.
///
/// A few random draws find eligible backends in the usual case; when most are ineligible it
/// scans from a random start, so the cost stays O(n) at worst.
pub fn p2c_pick(
    rng: &mut impl RngCore,
    n: usize,
    cost: impl Fn(usize) -> f64,
    eligible: impl Fn(usize) -> bool,
) -> Option<usize> {
    if n <= 1 {
        return (n == 1 && eligible(0)).then_some(0);
    }
    let a = random_eligible(rng, n, None, &eligible)?;
    let Some(b) = random_eligible(rng, n, Some(a), &eligible) else {
        return Some(a);
    };
    if cost(b) < cost(a) {
        Some(b)
    } else {
        Some(a)
    }
}

/// A random eligible index other than `not`: three random probes, then a scan from a random
/// start.
fn random_eligible(
    rng: &mut impl RngCore,
    n: usize,
    not: Option<usize>,
    eligible: &impl Fn(usize) -> bool,
) -> Option<usize> {
    for _ in 0..3 {
        let i = rng.gen_range(0..n);
        if Some(i) != not && eligible(i) {
            return Some(i);
        }
    }
    let start = rng.gen_range(0..n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| Some(i) != not && eligible(i))
}

/// Smooth weighted round robin (nginx): each pick adds every eligible backend's weight to its
/// running credit and takes the backend with the most credit, which then pays the total.
/// Weights 5, 1, 1 give `a a b a c a a` rather than `a a a a a b c`. One per core: it keeps
/// its credits in `Cell`s, so it is not `Sync`.
#[derive(Debug)]
pub struct WeightedRoundRobin {
    weights: Box<[u32]>,
    credit: Box<[Cell<i64>]>,
}

impl WeightedRoundRobin {
    /// A rotation over backends with these weights (by index); weight 0 is never picked.
    pub fn new(weights: &[u32]) -> Self {
        WeightedRoundRobin {
            weights: weights.into(),
            credit: weights.iter().map(|_| Cell::new(0)).collect(),
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.weights.len()
    }

    /// Whether there are no backends.
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }

    /// The next backend among those `eligible` accepts, or `None` when none of positive
    /// weight is.
    pub fn pick(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<(usize, i64)> = None;
        for (i, (&w, credit)) in self.weights.iter().zip(self.credit.iter()).enumerate() {
            if w == 0 || !eligible(i) {
                continue;
            }
            let c = credit.get() + i64::from(w);
            credit.set(c);
            total += i64::from(w);
            if best.is_none_or(|(_, bc)| c > bc) {
                best = Some((i, c));
            }
        }
        let (i, c) = best?;
        if let Some(credit) = self.credit.get(i) {
            credit.set(c - total);
        }
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    const MS: u64 = 1_000_000;

    #[test]
    fn peak_ewma_takes_peaks_at_once_and_decays() {
        let e = PeakEwma::with_decay(10_000 * MS, 5 * MS, 0);
        assert_eq!(e.estimate(0), 5.0 * MS as f64);
        e.observe(50 * MS, 1);
        assert!((e.estimate(1) - 50.0 * MS as f64).abs() < 1.0);
        // A fast answer right after only nudges the estimate down.
        e.observe(MS, 2);
        assert!(e.estimate(2) > 49.0 * MS as f64);
        // Idle for one time constant: down to 1/e.
        let later = e.estimate(2 + 10_000 * MS);
        assert!((later / e.estimate(2) - (-1.0f64).exp()).abs() < 1e-9);
        // A fast answer after a long gap mostly replaces it.
        e.observe(MS, 2 + 100_000 * MS);
        assert!(e.estimate(2 + 100_000 * MS) < 1.01 * MS as f64);
    }

    proptest::proptest! {
        /// The series agrees with `f64::exp` to a few ulp where it is used, and is `f64::exp`
        /// itself everywhere else.
        #[test]
        fn exp_neg_is_exp(x in proptest::prop_oneof![
            0.0..EXP_SERIES_BELOW,
            0.0..1e-6f64,
            proptest::num::f64::POSITIVE | proptest::num::f64::ZERO,
            proptest::num::f64::ANY,
        ]) {
            let want = (-x).exp();
            let got = exp_neg(x);
            if (0.0..EXP_SERIES_BELOW).contains(&x) {
                let err = (got - want).abs() / want;
                proptest::prop_assert!(err <= 2.0 * f64::EPSILON, "x {x}: {got} against {want}, {err:e}");
            } else {
                proptest::prop_assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()));
            }
        }
    }

    #[test]
    fn exp_neg_edges() {
        assert_eq!(exp_neg(0.0), 1.0);
        assert_eq!(exp_neg(EXP_SERIES_BELOW), (-EXP_SERIES_BELOW).exp());
        let below = f64::from_bits(EXP_SERIES_BELOW.to_bits() - 1);
        assert!((exp_neg(below) - (-below).exp()).abs() <= 2.0 * f64::EPSILON);
        assert_eq!(exp_neg(f64::INFINITY), 0.0);
        assert!(exp_neg(f64::NAN).is_nan());
        // Relative error over a dense sweep of the series' range: the worst case, printed
        // for the record, and bounded.
        let worst = (0..=100_000)
            .map(|i| EXP_SERIES_BELOW * f64::from(i) / 100_001.0)
            .map(|x| ((exp_neg(x) - (-x).exp()) / (-x).exp()).abs())
            .fold(0.0, f64::max);
        println!(
            "worst relative error {worst:e} ({} epsilon)",
            worst / f64::EPSILON
        );
        assert!(worst <= 2.0 * f64::EPSILON, "{worst:e}");
    }

    #[test]
    fn peak_ewma_cost_grows_with_outstanding() {
        let e = PeakEwma::new(0);
        let base = e.cost(0, 0);
        assert_eq!(base, DEFAULT_INITIAL_RTT_NS as f64);
        assert_eq!(e.cost(0, 3), 4.0 * base);
    }

    #[test]
    fn p2c_prefers_the_cheaper_of_two() {
        let mut rng = StdRng::seed_from_u64(1);
        // With two backends both are always drawn: the cheaper one always wins.
        for _ in 0..100 {
            assert_eq!(p2c_pick(&mut rng, 2, |i| [5.0, 1.0][i], |_| true), Some(1));
        }
        // With many, the most expensive never wins (it loses to whichever it is drawn with).
        for _ in 0..1000 {
            assert_ne!(
                p2c_pick(&mut rng, 10, |i| if i == 7 { 100.0 } else { 1.0 }, |_| true),
                Some(7)
            );
        }
    }

    #[test]
    fn p2c_edge_cases() {
        let mut rng = StdRng::seed_from_u64(2);
        assert_eq!(p2c_pick(&mut rng, 0, |_| 0.0, |_| true), None);
        assert_eq!(p2c_pick(&mut rng, 1, |_| 0.0, |_| true), Some(0));
        assert_eq!(p2c_pick(&mut rng, 1, |_| 0.0, |_| false), None);
        assert_eq!(p2c_pick(&mut rng, 50, |_| 0.0, |i| i == 42), Some(42));
        assert_eq!(p2c_pick(&mut rng, 50, |_| 0.0, |_| false), None);
        // NaN costs do not break the pick.
        assert!(p2c_pick(&mut rng, 5, |_| f64::NAN, |_| true).is_some());
    }

    #[test]
    fn smooth_wrr_interleaves() {
        let wrr = WeightedRoundRobin::new(&[5, 1, 1]);
        let picks: Vec<_> = (0..7).filter_map(|_| wrr.pick(|_| true)).collect();
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn smooth_wrr_skips_ineligible_and_zero_weight() {
        let wrr = WeightedRoundRobin::new(&[2, 0, 1]);
        let picks: Vec<_> = (0..6).filter_map(|_| wrr.pick(|_| true)).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 4);
        assert!(!picks.contains(&1));
        assert_eq!(wrr.pick(|i| i == 2), Some(2));
        assert_eq!(wrr.pick(|i| i == 1), None);
        assert_eq!(WeightedRoundRobin::new(&[]).pick(|_| true), None);
    }
}
