//! Backend health shared by every core: the state each pick reads (one atomic load), the
//! active-check state machine that the health checker drives, and passive outlier detection
//! that workers feed from live traffic.
//!
//! A backend's state is the combination of three inputs, kept in one `AtomicU64` so that a
//! pick reads it in one load and writers change one input without losing another:
//! the draining flag (admin or config), the active check's verdict, and the end of a passive
//! ejection. Passive ejections go through [`GroupHealth`], which enforces the share of a group
//! that may be ejected at once. Nothing here blocks: writers use atomic read-modify-write, and
//! the one group-wide step (deciding an ejection) is a try-lock that a losing thread skips.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::ConfigError;

/// How a backend looks to a pick at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HealthState {
    /// Passing checks, not ejected: gets traffic.
    Healthy,
    /// Eligible but failing some active checks (fewer than the unhealthy threshold): gets
    /// traffic; a policy may prefer healthy backends.
    Degraded,
    /// Gets no new work. `until_ns` is when a passive (outlier) ejection ends; `None` when the
    /// active check has marked it unhealthy, which lasts until it passes the healthy threshold.
    Ejected {
        /// End of the passive ejection on the caller's clock, or `None` for an active one.
        until_ns: Option<u64>,
    },
    /// Being taken out of service: no new sessions or stateless requests; existing sessions
    /// stay until they end or the proxy's deadline passes.
    Draining,
}

/// The active health check's verdict on a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ActiveVerdict {
    /// Passing.
    Healthy,
    /// Failed at least one check since the last success, but fewer than the threshold.
    Degraded,
    /// Failed the unhealthy threshold in a row and not yet passed the healthy threshold.
    Unhealthy,
}

impl ActiveVerdict {
    fn bits(self) -> u64 {
        match self {
            ActiveVerdict::Healthy => 0,
            ActiveVerdict::Degraded => 1,
            ActiveVerdict::Unhealthy => 2,
        }
    }

    fn from_bits(bits: u64) -> Self {
        match bits & 0b11 {
            0 => ActiveVerdict::Healthy,
            1 => ActiveVerdict::Degraded,
            _ => ActiveVerdict::Unhealthy,
        }
    }
}

/// Thresholds of the active check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveCheckConfig {
    /// Consecutive successes that bring an unhealthy backend back (0 is taken as 1).
    pub healthy_threshold: u32,
    /// Consecutive failures that mark a backend unhealthy (0 is taken as 1).
    pub unhealthy_threshold: u32,
}

impl Default for ActiveCheckConfig {
    fn default() -> Self {
        ActiveCheckConfig {
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// The active check's state machine for one backend, owned by the health checker (one
/// writer, so plain fields). Feed it each check's outcome; apply the returned verdict with
/// [`GroupHealth::set_active`] (or [`BackendHealth::set_active`]).
///
/// Healthy —failure→ Degraded —(unhealthy_threshold failures in a row)→ Unhealthy
/// —(healthy_threshold successes in a row)→ Healthy; Degraded —success→ Healthy.
#[derive(Debug, Clone)]
pub struct ActiveCheck {
    config: ActiveCheckConfig,
    verdict: ActiveVerdict,
    successes: u32,
    failures: u32,
}

impl ActiveCheck {
    /// A check that starts Healthy, so traffic flows before the first check completes.
    pub fn new(config: ActiveCheckConfig) -> Self {
        Self::starting(config, ActiveVerdict::Healthy)
    }

    /// A check that starts with the given verdict (e.g. Unhealthy for a backend added at
    /// run time that must pass the healthy threshold first).
    pub fn starting(config: ActiveCheckConfig, verdict: ActiveVerdict) -> Self {
        ActiveCheck {
            config,
            verdict,
            successes: 0,
            failures: 0,
        }
    }

    /// The current verdict.
    pub fn verdict(&self) -> ActiveVerdict {
        self.verdict
    }

    /// Records a passing check; returns the new verdict when it changed.
    pub fn record_success(&mut self) -> Option<ActiveVerdict> {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        let next = match self.verdict {
            ActiveVerdict::Unhealthy if self.successes < self.config.healthy_threshold.max(1) => {
                ActiveVerdict::Unhealthy
            }
            _ => ActiveVerdict::Healthy,
        };
        self.transition(next)
    }

    /// Records a failed or timed-out check; returns the new verdict when it changed.
    pub fn record_failure(&mut self) -> Option<ActiveVerdict> {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        let next = if self.failures >= self.config.unhealthy_threshold.max(1)
            || self.verdict == ActiveVerdict::Unhealthy
        {
            ActiveVerdict::Unhealthy
        } else {
            ActiveVerdict::Degraded
        };
        self.transition(next)
    }

    fn transition(&mut self, next: ActiveVerdict) -> Option<ActiveVerdict> {
        (next != self.verdict).then(|| {
            self.verdict = next;
            next
        })
    }
}

/// What went wrong on a request, for passive outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// The TCP connect was refused or failed.
    Connect,
    /// The connection was reset or closed before a complete response.
    Reset,
    /// The backend answered with a 5xx status.
    Status5xx,
    /// The backend did not answer in time.
    Timeout,
}

impl FailureKind {
    /// Every kind, in counter order.
    pub const ALL: [FailureKind; 4] = [
        FailureKind::Connect,
        FailureKind::Reset,
        FailureKind::Status5xx,
        FailureKind::Timeout,
    ];

    fn index(self) -> usize {
        match self {
            FailureKind::Connect => 0,
            FailureKind::Reset => 1,
            FailureKind::Status5xx => 2,
            FailureKind::Timeout => 3,
        }
    }
}

/// Passive outlier detection settings for one group (validated by [`OutlierConfig::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierConfig {
    /// Consecutive connect failures that eject a backend (0: never on this kind).
    pub consecutive_connect: u32,
    /// Consecutive resets that eject a backend (0: never).
    pub consecutive_reset: u32,
    /// Consecutive 5xx answers that eject a backend (0: never).
    pub consecutive_5xx: u32,
    /// Consecutive timeouts that eject a backend (0: never).
    pub consecutive_timeout: u32,
    /// Length of a first ejection; the n-th in a row lasts `base × 2^(n-1)`.
    pub base_ejection_ns: u64,
    /// Longest ejection.
    pub max_ejection_ns: u64,
    /// Largest share of the group (percent, rounded down) ejected at once; at least one
    /// backend always stays.
    pub max_ejection_percent: u8,
    /// A backend whose last ejection ended this long ago starts again at the base time.
    pub backoff_reset_ns: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_connect: 3,
            consecutive_reset: 5,
            consecutive_5xx: 5,
            consecutive_timeout: 5,
            base_ejection_ns: 30_000_000_000,
            max_ejection_ns: 300_000_000_000,
            max_ejection_percent: 50,
            backoff_reset_ns: 300_000_000_000,
        }
    }
}

impl OutlierConfig {
    /// Checks the settings, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let mut errors = Vec::new();
        if self.base_ejection_ns == 0 {
            errors.push(ConfigError::ZeroEjectionTime);
        }
        if self.max_ejection_ns < self.base_ejection_ns {
            errors.push(ConfigError::MaxEjectionBelowBase {
                base_ns: self.base_ejection_ns,
                max_ns: self.max_ejection_ns,
            });
        }
        if self.max_ejection_percent > 100 {
            errors.push(ConfigError::EjectionPercent(self.max_ejection_percent));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn threshold(&self, kind: FailureKind) -> u32 {
        match kind {
            FailureKind::Connect => self.consecutive_connect,
            FailureKind::Reset => self.consecutive_reset,
            FailureKind::Status5xx => self.consecutive_5xx,
            FailureKind::Timeout => self.consecutive_timeout,
        }
    }

    /// Length of the `n`-th ejection in a row (`n` ≥ 1): `base × 2^(n-1)`, capped.
    pub fn ejection_ns(&self, n: u32) -> u64 {
        let doublings = n.saturating_sub(1).min(63);
        self.base_ejection_ns
            .saturating_mul(1u64 << doublings)
            .min(self.max_ejection_ns.max(self.base_ejection_ns))
    }
}

/// Per-backend passive counters: consecutive failures of each kind since the last success,
/// and how many ejections in a row the backend has had (for the backoff). Any thread may
/// record; a success only writes when there is something to reset, so a healthy backend's
/// counters stay in every core's cache.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    consecutive: [AtomicU32; 4],
    ejections: AtomicU32,
}

impl OutlierDetector {
    /// Counts a failure; returns whether it reached the kind's threshold in `config`.
    pub fn record_failure(&self, kind: FailureKind, config: &OutlierConfig) -> bool {
        let threshold = config.threshold(kind);
        let Some(counter) = self.consecutive.get(kind.index()) else {
            return false;
        };
        let n = counter.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        threshold > 0 && n >= threshold
    }

    /// Counts a success: every consecutive-failure counter goes back to zero.
    pub fn record_success(&self) {
        for c in &self.consecutive {
            if c.load(Ordering::Relaxed) != 0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Consecutive failures of `kind` since the last success or ejection.
    pub fn consecutive(&self, kind: FailureKind) -> u32 {
        self.consecutive
            .get(kind.index())
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Ejections in a row (the backoff exponent); reset by a long enough healthy period.
    pub fn ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Takes over `other`'s counters.
    pub fn copy_from(&self, other: &OutlierDetector) {
        for (a, b) in self.consecutive.iter().zip(&other.consecutive) {
            a.store(b.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.ejections
            .store(other.ejections.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

const DRAINING: u64 = 0b1;
const VERDICT_SHIFT: u32 = 1;
const VERDICT_MASK: u64 = 0b11 << VERDICT_SHIFT;
const FLAGS_MASK: u64 = 0b111;
/// `until` is kept in 8 ns units above the three flag bits.
const UNTIL_SHIFT: u32 = 3;

/// One backend's health, shared by every core (put it in an `Arc` or a [`GroupHealth`]).
/// Aligned to a cache line so that failures recorded on one backend do not slow the reads of
/// its neighbours.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct BackendHealth {
    /// Bit 0: draining; bits 1–2: active verdict; bits 3–63: end of the passive ejection in
    /// 8 ns units (0: never ejected). The end stays after it passes, for the backoff.
    word: AtomicU64,
    outlier: OutlierDetector,
}

impl BackendHealth {
    /// A healthy backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a new session or stateless request may go to this backend at `now_ns`: one
    /// atomic load. A passive ejection ends by itself when its time passes.
    #[inline]
    pub fn is_eligible(&self, now_ns: u64) -> bool {
        let w = self.word.load(Ordering::Relaxed);
        w & (DRAINING | (ActiveVerdict::Unhealthy.bits() << VERDICT_SHIFT)) == 0
            && !ejected_at(w, now_ns)
    }

    /// The state at `now_ns`, for the admin port and logs.
    pub fn state(&self, now_ns: u64) -> HealthState {
        let w = self.word.load(Ordering::Relaxed);
        let verdict = ActiveVerdict::from_bits(w >> VERDICT_SHIFT);
        if w & DRAINING != 0 {
            HealthState::Draining
        } else if verdict == ActiveVerdict::Unhealthy {
            HealthState::Ejected { until_ns: None }
        } else if ejected_at(w, now_ns) {
            HealthState::Ejected {
                until_ns: Some(until_of(w)),
            }
        } else if verdict == ActiveVerdict::Degraded {
            HealthState::Degraded
        } else {
            HealthState::Healthy
        }
    }

    /// Whether a passive ejection is in force at `now_ns`.
    pub fn is_ejected(&self, now_ns: u64) -> bool {
        ejected_at(self.word.load(Ordering::Relaxed), now_ns)
    }

    /// Marks the backend draining (or takes it back into service).
    pub fn set_draining(&self, draining: bool) {
        if draining {
            self.word.fetch_or(DRAINING, Ordering::Relaxed);
        } else {
            self.word.fetch_and(!DRAINING, Ordering::Relaxed);
        }
    }

    /// Applies the active check's verdict.
    pub fn set_active(&self, verdict: ActiveVerdict) {
        let bits = verdict.bits() << VERDICT_SHIFT;
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some((w & !VERDICT_MASK) | bits)
            });
    }

    /// The last active-check verdict applied.
    pub fn verdict(&self) -> ActiveVerdict {
        ActiveVerdict::from_bits(self.word.load(Ordering::Relaxed) >> VERDICT_SHIFT)
    }

    /// Takes over `other`'s whole state (draining, verdict, passive ejection and its backoff
    /// counters): a reloaded configuration keeps what was known of a backend it still lists.
    pub fn copy_from(&self, other: &BackendHealth) {
        self.word
            .store(other.word.load(Ordering::Relaxed), Ordering::Relaxed);
        self.outlier.copy_from(&other.outlier);
    }

    /// Ends a passive ejection now (admin action) and forgets the backoff.
    pub fn uneject(&self) {
        self.word.fetch_and(FLAGS_MASK, Ordering::Relaxed);
        self.outlier.ejections.store(0, Ordering::Relaxed);
    }

    /// The passive counters.
    pub fn outlier(&self) -> &OutlierDetector {
        &self.outlier
    }

    /// Sets the end of the passive ejection, rounded up to 8 ns; returns the stored end.
    fn eject_until(&self, until_ns: u64) -> u64 {
        let units = until_ns
            .div_ceil(1 << UNTIL_SHIFT)
            .min(u64::MAX >> UNTIL_SHIFT);
        let _ = self
            .word
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some((w & FLAGS_MASK) | (units << UNTIL_SHIFT))
            });
        units << UNTIL_SHIFT
    }

    fn last_until(&self) -> u64 {
        until_of(self.word.load(Ordering::Relaxed))
    }
}

#[inline]
fn until_of(w: u64) -> u64 {
    w & !FLAGS_MASK
}

#[inline]
fn ejected_at(w: u64, now_ns: u64) -> bool {
    now_ns < until_of(w)
}

/// A passive ejection that [`GroupHealth::record_failure`] just made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// When it ends, on the caller's clock.
    pub until_ns: u64,
    /// Which ejection in a row this is (1 for the first); its length is
    /// `base × 2^(n-1)`, capped.
    pub nth: u32,
}

/// The health of every backend of one server group, shared by all cores (`Arc`), with the
/// outlier policy of the group. Backends are identified by index, as in the pickers.
#[derive(Debug)]
pub struct GroupHealth {
    backends: Box<[BackendHealth]>,
    config: OutlierConfig,
    /// Held (by a try-lock, never waited on) while one thread decides an ejection, so two
    /// threads cannot both take the last allowed ejection.
    deciding: AtomicBool,
}

impl GroupHealth {
    /// `n` healthy backends under `config` (see [`OutlierConfig::validate`]).
    pub fn new(n: usize, config: OutlierConfig) -> Self {
        GroupHealth {
            backends: (0..n).map(|_| BackendHealth::new()).collect(),
            config,
            deciding: AtomicBool::new(false),
        }
    }

    /// Number of backends.
    pub fn len(&self) -> usize {
        self.backends.len()
    }

    /// Whether the group has no backends.
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// The outlier settings.
    pub fn config(&self) -> &OutlierConfig {
        &self.config
    }

    /// Backend `i`'s health, if it exists.
    pub fn backend(&self, i: usize) -> Option<&BackendHealth> {
        self.backends.get(i)
    }

    /// Every backend's health, by index.
    pub fn backends(&self) -> &[BackendHealth] {
        &self.backends
    }

    /// Whether backend `i` may take new work at `now_ns` (false for an unknown index).
    #[inline]
    pub fn is_eligible(&self, i: usize, now_ns: u64) -> bool {
        self.backends.get(i).is_some_and(|b| b.is_eligible(now_ns))
    }

    /// Backend `i`'s state at `now_ns`.
    pub fn state(&self, i: usize, now_ns: u64) -> Option<HealthState> {
        self.backends.get(i).map(|b| b.state(now_ns))
    }

    /// Marks backend `i` draining or back in service.
    pub fn set_draining(&self, i: usize, draining: bool) {
        if let Some(b) = self.backends.get(i) {
            b.set_draining(draining);
        }
    }

    /// Applies the active check's verdict to backend `i`.
    pub fn set_active(&self, i: usize, verdict: ActiveVerdict) {
        if let Some(b) = self.backends.get(i) {
            b.set_active(verdict);
        }
    }

    /// Records a successful request to backend `i`.
    #[inline]
    pub fn record_success(&self, i: usize) {
        if let Some(b) = self.backends.get(i) {
            b.outlier.record_success();
        }
    }

    /// Most backends passively ejected at once: the configured share, rounded down, and
    /// never all of them.
    pub fn max_ejected(&self) -> usize {
        let n = self.backends.len();
        (n * usize::from(self.config.max_ejection_percent.min(100)) / 100).min(n.saturating_sub(1))
    }

    /// Backends passively ejected at `now_ns`.
    pub fn ejected_count(&self, now_ns: u64) -> usize {
        self.backends
            .iter()
            .filter(|b| b.is_ejected(now_ns))
            .count()
    }

    /// Records a failed request to backend `i` at `now_ns`. When the failures of that kind
    /// reach the threshold, ejects the backend unless that would exceed the group's share (or
    /// leave no eligible backend) or another thread is deciding an ejection at this instant;
    /// a refused ejection is tried again on the next failure. A backend that is draining or
    /// actively unhealthy is not ejected (it gets no new work anyway). Failures reported while
    /// the backend is already ejected (requests that were in flight) are ignored.
    pub fn record_failure(&self, i: usize, kind: FailureKind, now_ns: u64) -> Option<Ejection> {
        let b = self.backends.get(i)?;
        if b.is_ejected(now_ns) || !b.outlier.record_failure(kind, &self.config) {
            return None;
        }
        if self
            .deciding
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return None;
        }
        let ejection = self.try_eject(i, b, now_ns);
        self.deciding.store(false, Ordering::Release);
        ejection
    }

    fn try_eject(&self, i: usize, b: &BackendHealth, now_ns: u64) -> Option<Ejection> {
        // A draining or actively unhealthy backend gets no new work anyway: ejecting it would
        // only take a slot of the share from a backend that needs it.
        if !b.is_eligible(now_ns) || self.ejected_count(now_ns) >= self.max_ejected() {
            return None;
        }
        let others_left = self
            .backends
            .iter()
            .enumerate()
            .any(|(j, o)| j != i && o.is_eligible(now_ns));
        if !others_left {
            return None;
        }
        let last = b.last_until();
        let nth = if last == 0 || now_ns.saturating_sub(last) >= self.config.backoff_reset_ns {
            1
        } else {
            b.outlier.ejections().saturating_add(1)
        };
        let until_ns = b.eject_until(now_ns.saturating_add(self.config.ejection_ns(nth)));
        b.outlier.ejections.store(nth, Ordering::Relaxed);
        for c in &b.outlier.consecutive {
            c.store(0, Ordering::Relaxed);
        }
        Some(Ejection { until_ns, nth })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn copy_from_carries_every_part_of_the_state() {
        let cfg = OutlierConfig::default();
        let old = GroupHealth::new(1, cfg);
        old.set_draining(0, true);
        old.set_active(0, ActiveVerdict::Unhealthy);
        let _ = old.record_failure(0, FailureKind::Connect, 1_000);
        let new = GroupHealth::new(2, cfg);
        new.backends()[1].copy_from(&old.backends()[0]);
        assert_eq!(new.backends()[1].verdict(), ActiveVerdict::Unhealthy);
        assert_eq!(new.state(1, 2_000), old.state(0, 2_000));
        assert_eq!(
            new.backends()[1]
                .outlier()
                .consecutive(FailureKind::Connect),
            old.backends()[0]
                .outlier()
                .consecutive(FailureKind::Connect)
        );
        assert_eq!(new.state(0, 2_000), Some(HealthState::Healthy));
    }
    use super::*;

    const S: u64 = 1_000_000_000;

    fn check(healthy: u32, unhealthy: u32) -> ActiveCheck {
        ActiveCheck::new(ActiveCheckConfig {
            healthy_threshold: healthy,
            unhealthy_threshold: unhealthy,
        })
    }

    #[test]
    fn active_check_goes_degraded_then_unhealthy() {
        let mut c = check(2, 3);
        assert_eq!(c.verdict(), ActiveVerdict::Healthy);
        assert_eq!(c.record_success(), None);
        assert_eq!(c.record_failure(), Some(ActiveVerdict::Degraded));
        assert_eq!(c.record_failure(), None);
        assert_eq!(c.record_failure(), Some(ActiveVerdict::Unhealthy));
        assert_eq!(c.record_failure(), None);
    }

    #[test]
    fn active_check_degraded_recovers_on_one_success() {
        let mut c = check(2, 3);
        c.record_failure();
        c.record_failure();
        assert_eq!(c.record_success(), Some(ActiveVerdict::Healthy));
        // The failure count started again: two more failures are only Degraded.
        c.record_failure();
        assert_eq!(c.record_failure(), None);
        assert_eq!(c.verdict(), ActiveVerdict::Degraded);
    }

    #[test]
    fn active_check_unhealthy_needs_healthy_threshold_in_a_row() {
        let mut c = ActiveCheck::starting(
            ActiveCheckConfig {
                healthy_threshold: 3,
                unhealthy_threshold: 2,
            },
            ActiveVerdict::Unhealthy,
        );
        assert_eq!(c.record_success(), None);
        assert_eq!(c.record_success(), None);
        // A failure in between starts the count again, and stays Unhealthy (not Degraded).
        assert_eq!(c.record_failure(), None);
        assert_eq!(c.verdict(), ActiveVerdict::Unhealthy);
        assert_eq!(c.record_success(), None);
        assert_eq!(c.record_success(), None);
        assert_eq!(c.record_success(), Some(ActiveVerdict::Healthy));
    }

    #[test]
    fn active_check_zero_thresholds_act_as_one() {
        let mut c = check(0, 0);
        assert_eq!(c.record_failure(), Some(ActiveVerdict::Unhealthy));
        assert_eq!(c.record_success(), Some(ActiveVerdict::Healthy));
    }

    #[test]
    fn backend_state_precedence() {
        let b = BackendHealth::new();
        assert_eq!(b.state(0), HealthState::Healthy);
        assert!(b.is_eligible(0));
        b.set_active(ActiveVerdict::Degraded);
        assert_eq!(b.state(0), HealthState::Degraded);
        assert!(b.is_eligible(0));
        let until = b.eject_until(10 * S);
        assert_eq!(until, 10 * S);
        assert_eq!(
            b.state(S),
            HealthState::Ejected {
                until_ns: Some(10 * S)
            }
        );
        assert!(!b.is_eligible(S));
        b.set_active(ActiveVerdict::Unhealthy);
        assert_eq!(b.state(S), HealthState::Ejected { until_ns: None });
        b.set_draining(true);
        assert_eq!(b.state(S), HealthState::Draining);
        assert!(!b.is_eligible(20 * S));
        b.set_draining(false);
        b.set_active(ActiveVerdict::Healthy);
        // The passive ejection ends by itself.
        assert!(!b.is_eligible(10 * S - 1));
        assert!(b.is_eligible(10 * S));
        assert_eq!(b.state(10 * S), HealthState::Healthy);
    }

    #[test]
    fn ejection_end_rounds_up_to_8ns() {
        let b = BackendHealth::new();
        assert_eq!(b.eject_until(13), 16);
        assert!(!b.is_eligible(15));
        assert!(b.is_eligible(16));
        assert_eq!(b.eject_until(u64::MAX), !FLAGS_MASK);
        assert_eq!(
            b.state(0),
            HealthState::Ejected {
                until_ns: Some(!FLAGS_MASK)
            }
        );
        b.uneject();
        assert!(b.is_eligible(0));
    }

    #[test]
    fn draining_and_verdict_do_not_clobber_each_other() {
        let b = BackendHealth::new();
        b.set_draining(true);
        b.set_active(ActiveVerdict::Unhealthy);
        b.eject_until(100);
        b.set_active(ActiveVerdict::Healthy);
        assert_eq!(b.state(0), HealthState::Draining);
        b.set_draining(false);
        assert_eq!(
            b.state(0),
            HealthState::Ejected {
                until_ns: Some(104)
            }
        );
    }

    #[test]
    fn outlier_counts_by_kind_and_resets_on_success() {
        let cfg = OutlierConfig {
            consecutive_connect: 2,
            consecutive_timeout: 0,
            ..OutlierConfig::default()
        };
        let d = OutlierDetector::default();
        assert!(!d.record_failure(FailureKind::Connect, &cfg));
        assert!(!d.record_failure(FailureKind::Reset, &cfg));
        assert_eq!(d.consecutive(FailureKind::Connect), 1);
        assert_eq!(d.consecutive(FailureKind::Reset), 1);
        d.record_success();
        assert_eq!(d.consecutive(FailureKind::Connect), 0);
        assert!(!d.record_failure(FailureKind::Connect, &cfg));
        assert!(d.record_failure(FailureKind::Connect, &cfg));
        // Threshold 0 means this kind never ejects.
        for _ in 0..100 {
            assert!(!d.record_failure(FailureKind::Timeout, &cfg));
        }
    }

    fn group(n: usize) -> GroupHealth {
        GroupHealth::new(
            n,
            OutlierConfig {
                consecutive_5xx: 3,
                base_ejection_ns: 10 * S,
                max_ejection_ns: 35 * S,
                backoff_reset_ns: 60 * S,
                ..OutlierConfig::default()
            },
        )
    }

    #[test]
    fn group_ejects_at_threshold_and_uneject_by_time() {
        let g = group(4);
        assert_eq!(g.record_failure(0, FailureKind::Status5xx, 0), None);
        g.record_success(0);
        assert_eq!(g.record_failure(0, FailureKind::Status5xx, 0), None);
        assert_eq!(g.record_failure(0, FailureKind::Status5xx, 0), None);
        let e = g.record_failure(0, FailureKind::Status5xx, S);
        assert_eq!(
            e,
            Some(Ejection {
                until_ns: 11 * S,
                nth: 1
            })
        );
        assert!(!g.is_eligible(0, 2 * S));
        // Stragglers from in-flight requests do not count.
        for _ in 0..10 {
            assert_eq!(g.record_failure(0, FailureKind::Status5xx, 2 * S), None);
        }
        assert_eq!(
            g.backend(0)
                .map(|b| b.outlier().consecutive(FailureKind::Status5xx)),
            Some(0)
        );
        assert!(g.is_eligible(0, 11 * S));
        assert_eq!(g.ejected_count(11 * S), 0);
    }

    #[test]
    fn group_backoff_doubles_caps_and_resets() {
        let g = group(2);
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            let e = (0..3)
                .find_map(|_| g.record_failure(1, FailureKind::Status5xx, now))
                .map(|e| (e.nth, e.until_ns - now));
            lengths.push(e);
            now += e.map_or(0, |(_, len)| len);
        }
        assert_eq!(
            lengths,
            [
                Some((1, 10 * S)),
                Some((2, 20 * S)),
                Some((3, 35 * S)),
                Some((4, 35 * S)),
                Some((5, 35 * S))
            ]
        );
        now += 60 * S;
        let e = (0..3).find_map(|_| g.record_failure(1, FailureKind::Status5xx, now));
        assert_eq!(e.map(|e| (e.nth, e.until_ns - now)), Some((1, 10 * S)));
    }

    #[test]
    fn group_never_ejects_past_its_share_or_the_last_backend() {
        let g = group(4); // 50 %: two at most
        let eject = |i| (0..3).find_map(|_| g.record_failure(i, FailureKind::Status5xx, 0));
        assert!(eject(0).is_some());
        assert!(eject(1).is_some());
        assert!(eject(2).is_none());
        assert_eq!(g.ejected_count(0), 2);
        // Refused, but counted: the next failure tries again once a slot is free.
        assert!(g
            .record_failure(2, FailureKind::Status5xx, 10 * S)
            .is_some());

        let one = group(1);
        assert_eq!(one.max_ejected(), 0);
        assert!((0..10)
            .find_map(|_| one.record_failure(0, FailureKind::Status5xx, 0))
            .is_none());

        // 100 % allowed, but the last eligible backend stays.
        let all = GroupHealth::new(
            2,
            OutlierConfig {
                max_ejection_percent: 100,
                ..OutlierConfig::default()
            },
        );
        all.set_draining(1, true);
        assert!((0..10)
            .find_map(|_| all.record_failure(0, FailureKind::Connect, 0))
            .is_none());
    }

    #[test]
    fn draining_backend_is_not_ejected_until_back_in_service() {
        let g = group(4);
        g.set_draining(0, true);
        assert!((0..5)
            .find_map(|_| g.record_failure(0, FailureKind::Status5xx, 0))
            .is_none());
        assert_eq!(g.state(0, 0), Some(HealthState::Draining));
        g.set_draining(0, false);
        // Its failures still count: the next one ejects.
        assert!(g.record_failure(0, FailureKind::Status5xx, 0).is_some());
    }

    #[test]
    fn config_validation_reports_everything() {
        let errors = OutlierConfig {
            base_ejection_ns: 0,
            max_ejection_ns: 0,
            max_ejection_percent: 101,
            ..OutlierConfig::default()
        }
        .validate()
        .err()
        .unwrap_or_default();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(OutlierConfig::default().validate().is_ok());
        let errors = OutlierConfig {
            max_ejection_ns: 1,
            ..OutlierConfig::default()
        }
        .validate()
        .err()
        .unwrap_or_default();
        assert!(errors[0].to_string().contains("at least the base time"));
    }
}
