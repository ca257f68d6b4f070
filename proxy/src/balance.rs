//! Backend choice on the request path: the shared, lock-free health of every backend
//! ([`GroupRuntime`], seen by every core) and each core's own balancer state ([`CoreBalancer`]:
//! in-flight counts, latency estimates, round-robin cursors). The decisions themselves live in
//! the I/O-free `lb` crate; this module feeds it the proxy's facts.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use lb::{FailureKind, GroupHealth, HashRing, OutlierConfig, PeakEwma, WeightedRoundRobin};
use rand::SeedableRng;

use crate::config::{Balance, Config, ServerGroup};

/// What every core shares about one server group: health (atomics) and the hash ring.
pub struct GroupRuntime {
    /// Per-backend health: active verdicts, passive ejections, draining.
    pub health: GroupHealth,
    /// Consistent-hash ring over the group's backends (weighted rendezvous).
    pub ring: HashRing,
    /// Per backend: when its drain ends (ns on the balancer clock; 0 = no deadline).
    drain_deadline: Vec<std::sync::atomic::AtomicU64>,
}

impl GroupRuntime {
    /// Starts (or stops) draining backend `i`; after `deadline_ns` its remaining sessions
    /// are treated as on an unavailable backend.
    pub fn set_draining(&self, i: usize, on: bool, deadline_ns: Option<u64>) {
        self.health.set_draining(i, on);
        if let Some(d) = self.drain_deadline.get(i) {
            d.store(
                if on { deadline_ns.unwrap_or(0) } else { 0 },
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    }

    /// Whether backend `i`'s drain deadline has passed.
    pub fn drain_expired(&self, i: usize, now_ns: u64) -> bool {
        self.drain_deadline.get(i).is_some_and(|d| {
            let v = d.load(std::sync::atomic::Ordering::Relaxed);
            v != 0 && now_ns >= v
        })
    }
}

/// Builds the shared runtime of every group.
pub fn runtimes(config: &Config) -> Arc<Vec<GroupRuntime>> {
    Arc::new(
        config
            .servers
            .iter()
            .map(|g| GroupRuntime {
                health: GroupHealth::new(
                    g.backends.len(),
                    OutlierConfig {
                        max_ejection_percent: g.max_ejection_percent,
                        ..OutlierConfig::default()
                    },
                ),
                drain_deadline: g
                    .backends
                    .iter()
                    .map(|_| std::sync::atomic::AtomicU64::new(0))
                    .collect(),
                ring: HashRing::new(
                    &g.backends
                        .iter()
                        .map(|b| (b.tag, b.weight))
                        .collect::<Vec<_>>(),
                ),
            })
            .collect(),
    )
}

/// Builds the shared runtime of every group of a reloaded `config`: a backend the previous
/// configuration also listed (same group name, same tag) keeps its health (active verdict,
/// passive ejection and backoff, draining) and its drain deadline; new ones start healthy.
pub fn runtimes_after(
    config: &Config,
    old_config: &Config,
    old: &[GroupRuntime],
) -> Arc<Vec<GroupRuntime>> {
    let new = runtimes(config);
    for (g, rt) in config.servers.iter().zip(new.iter()) {
        let Some((og, ort)) = old_config
            .servers
            .iter()
            .zip(old)
            .find(|(og, _)| og.name == g.name)
        else {
            continue;
        };
        for (bi, b) in g.backends.iter().enumerate() {
            let Some(obi) = og.backends.iter().position(|o| o.tag == b.tag) else {
                continue;
            };
            if let (Some(h), Some(oh)) = (rt.health.backend(bi), ort.health.backend(obi)) {
                h.copy_from(oh);
            }
            if let (Some(d), Some(od)) = (rt.drain_deadline.get(bi), ort.drain_deadline.get(obi)) {
                d.store(
                    od.load(std::sync::atomic::Ordering::Relaxed),
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
    }
    new
}

/// Nanoseconds since the process's clock anchor: the clock the `lb` and `ratelimit` crates
/// take as an argument ([`crate::runtime::clock::now_ns`]).
pub fn now_ns() -> u64 {
    crate::runtime::clock::now_ns()
}

/// One core's balancing state for one group (no atomics shared with other cores, except the
/// latency estimates' own, which only this core touches).
struct CoreGroup {
    retry: lb::RetryBudget,
    in_flight: Vec<Cell<u32>>,
    /// The backends' latency estimates; none where nothing reads them (see [`reads_ewma`]):
    /// then a request's round trip is not observed either.
    ewma: Vec<PeakEwma>,
    wrr: WeightedRoundRobin,
}

/// Whether [`CoreBalancer::pick`] ever reads `group`'s latency estimates: only the power of
/// two choices does (least-request, and hashing for requests with no key), and only between
/// two or more backends. A reload builds every core's balancer anew from the new config
/// (`Core::new`), estimates included, so a group that gains a second backend starts its
/// estimates then, as a new group would; none is carried over that could have gone stale.
fn reads_ewma(group: &ServerGroup) -> bool {
    group.backends.len() > 1 && !matches!(group.balance, Balance::RoundRobin)
}

/// One core's balancers, one per group.
pub struct CoreBalancer {
    groups: Vec<CoreGroup>,
    rng: RefCell<rand::rngs::StdRng>,
    loads: RefCell<Vec<u32>>,
}

impl CoreBalancer {
    /// A balancer for `config`'s groups; `core` spreads the first picks of different cores.
    pub fn new(config: &Config, core: usize, now_ns: u64) -> Self {
        CoreBalancer {
            groups: config
                .servers
                .iter()
                .map(|g| {
                    let wrr = WeightedRoundRobin::new(
                        &g.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
                    );
                    // Advance each core's cursor so cores do not all start on backend 0.
                    for _ in 0..core % g.backends.len().max(1) {
                        let _ = wrr.pick(|_| true);
                    }
                    CoreGroup {
                        retry: lb::RetryBudget::new(lb::RetryBudgetConfig::default())
                            .unwrap_or_else(|_| unreachable_budget()),
                        in_flight: g.backends.iter().map(|_| Cell::new(0)).collect(),
                        ewma: if reads_ewma(g) {
                            g.backends.iter().map(|_| PeakEwma::new(now_ns)).collect()
                        } else {
                            Vec::new()
                        },
                        wrr,
                    }
                })
                .collect(),
            rng: RefCell::new(rand::rngs::StdRng::seed_from_u64(
                0x6d63_706c_6200 ^ core as u64,
            )),
            loads: RefCell::new(Vec::new()),
        }
    }

    /// Chooses a backend for a new session or a stateless request: by the group's policy,
    /// among eligible backends (not ejected, not draining, not actively unhealthy), skipping
    /// those in `tried`. When none is eligible it fails open to any untried backend that is
    /// not draining (a health signal that takes every backend out must not take the service
    /// down with it).
    pub fn pick(
        &self,
        gi: usize,
        group: &ServerGroup,
        rt: &GroupRuntime,
        key: Option<u64>,
        tried: u64,
        now_ns: u64,
    ) -> Option<usize> {
        let cg = self.groups.get(gi)?;
        let n = group.backends.len();
        let untried = |i: usize| i >= 64 || tried & (1u64 << i) == 0;
        let eligible = |i: usize| untried(i) && rt.health.is_eligible(i, now_ns);
        let least = |eligible: &dyn Fn(usize) -> bool| {
            let mut rng = self.rng.borrow_mut();
            lb::p2c_pick(
                &mut *rng,
                n,
                |i| {
                    let out = cg.in_flight.get(i).map_or(0, Cell::get);
                    cg.ewma.get(i).map_or(f64::MAX, |e| e.cost(now_ns, out))
                },
                eligible,
            )
        };
        let chosen = match (&group.balance, key) {
            (Balance::RoundRobin, _) => cg.wrr.pick(eligible),
            (Balance::LeastRequest, _) | (Balance::Hash(_), None) => least(&eligible),
            (Balance::Hash(_), Some(k)) => {
                let mut loads = self.loads.borrow_mut();
                loads.clear();
                loads.extend(cg.in_flight.iter().map(Cell::get));
                rt.ring.pick_bounded(k, &loads, group.hash_bound, eligible)
            }
        };
        chosen.or_else(|| {
            let fallback = |i: usize| {
                untried(i) && !matches!(rt.health.state(i, now_ns), Some(lb::HealthState::Draining))
            };
            cg.wrr.pick(fallback)
        })
    }

    /// Counts a request towards the group's retry budget (this core's share).
    pub fn deposit(&self, gi: usize, now_ns: u64) {
        if let Some(g) = self.groups.get(gi) {
            g.retry.deposit(now_ns);
        }
    }

    /// Takes a retry from the budget: false when retries would multiply an outage.
    pub fn try_withdraw(&self, gi: usize, now_ns: u64) -> bool {
        self.groups
            .get(gi)
            .is_some_and(|g| g.retry.try_withdraw(now_ns))
    }

    /// A request to backend `bi` starts; the guard ends it.
    pub fn start(&self, gi: usize, bi: usize) {
        if let Some(c) = self.groups.get(gi).and_then(|g| g.in_flight.get(bi)) {
            c.set(c.get().saturating_add(1));
        }
    }

    /// A request to backend `bi` ended (its in-flight count falls).
    pub fn end(&self, gi: usize, bi: usize) {
        if let Some(c) = self.groups.get(gi).and_then(|g| g.in_flight.get(bi)) {
            c.set(c.get().saturating_sub(1));
        }
    }

    /// Feeds a response time (request sent to response head) to `bi`'s latency estimate, where
    /// the group keeps one.
    pub fn end_rtt(&self, gi: usize, bi: usize, rtt_ns: Option<u64>, now_ns: u64) {
        if let (Some(rtt), Some(e)) = (rtt_ns, self.groups.get(gi).and_then(|g| g.ewma.get(bi))) {
            e.observe(rtt, now_ns);
        }
    }
}

#[allow(clippy::expect_used)]
fn unreachable_budget() -> lb::RetryBudget {
    // The default budget config is valid (checked by lb's tests); this never runs.
    lb::RetryBudget::new(lb::RetryBudgetConfig {
        ttl_ns: 10_000_000_000,
        ratio: 0.2,
        min_per_sec: 10,
    })
    .expect("valid retry budget")
}

/// Records a passive outcome of one request; logs an ejection when it happens.
pub fn record_outcome(
    hub: &crate::control::stats::StatsHub,
    rt: &GroupRuntime,
    group: &ServerGroup,
    bi: usize,
    failure: Option<FailureKind>,
    now_ns: u64,
) {
    match failure {
        None => rt.health.record_success(bi),
        Some(kind) => {
            if let Some(e) = rt.health.record_failure(bi, kind, now_ns) {
                hub.health_changes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let name = group.backends.get(bi).map_or("?", |b| b.name.as_str());
                tracing::warn!(
                    server = %group.name,
                    backend = name,
                    failure = ?kind,
                    ejection = e.nth,
                    seconds = (e.until_ns.saturating_sub(now_ns)) / 1_000_000_000,
                    "backend ejected by outlier detection"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config with one group per `(backends, balance)`.
    fn config(groups: &[(usize, &str)]) -> Config {
        let mut t = String::from("[proxy]\nlisten = \"127.0.0.1:8080\"\n");
        for (g, (n, balance)) in groups.iter().enumerate() {
            let backends: Vec<String> = (0..*n)
                .map(|b| format!("\"http://127.0.0.1:{}/mcp\"", 3001 + b))
                .collect();
            t.push_str(&format!(
                "[[servers]]\nname = \"g{g}\"\npath = \"/g{g}\"\nbalance = \"{balance}\"\nbackends = [{}]\n",
                backends.join(", ")
            ));
        }
        match Config::parse(&t) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n{t}"),
        }
    }

    #[test]
    fn estimates_only_where_the_pick_reads_them() {
        let cfg = config(&[
            (1, "least-request"),
            (2, "least-request"),
            (3, "round-robin"),
            (2, "hash"),
        ]);
        let bal = CoreBalancer::new(&cfg, 0, 0);
        let kept: Vec<usize> = bal.groups.iter().map(|g| g.ewma.len()).collect();
        assert_eq!(kept, [0, 2, 0, 2]);
        // A round trip fed to a group without estimates is dropped, one with them moves.
        bal.end_rtt(0, 0, Some(5_000_000), 1);
        bal.end_rtt(1, 1, Some(90_000_000), 1);
        let e = &bal.groups[1].ewma;
        assert_eq!(
            e[1].estimate(1),
            90_000_000.0,
            "a peak replaces the estimate"
        );
        assert_eq!(e[0].estimate(0), lb::DEFAULT_INITIAL_RTT_NS as f64);
        // The single backend is still picked.
        let rts = runtimes(&cfg);
        assert_eq!(bal.pick(0, &cfg.servers[0], &rts[0], None, 0, 1), Some(0));
        // Two backends with estimates: the one with the lower (the other's) is chosen.
        assert_eq!(bal.pick(1, &cfg.servers[1], &rts[1], None, 0, 1), Some(0));
    }
}
