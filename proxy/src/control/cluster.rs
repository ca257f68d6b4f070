//! Cluster rate limits (`scope = "cluster"`, `[cluster] redis = ...`): rules whose bucket is
//! shared by every replica through Redis.
//!
//! The request path never waits for Redis: each rule keeps a [`LeaseTable`] of tokens leased
//! from the shared bucket, one slot per caller key, and a request spends one with an atomic
//! decrement. A thread (`mcplb-cluster`) looks at every slot each [`SCAN`], and leases a batch
//! for slots whose demand will soon outrun what they hold, with one atomic Lua script
//! ([`LEASE_LUA`], the arithmetic of [`ratelimit::LeaseBucket::grant`] on the Redis clock). A
//! request that finds its slot empty and not yet refused by Redis waits for the thread, up
//! to [`LEASE_WAIT`], polling every millisecond (the only waiting, and only on a miss). A
//! slot is topped up to one batch at most, which bounds what the fleet admits (see
//! `ratelimit::lease`).
//!
//! Redis unreachable (or answering garbage, which is an error, never a panic): reconnect with
//! backoff (100 ms doubling to 5 s); meanwhile each rule applies `on_unavailable`: `local`, a
//! bucket in this process at the rule's rate and burst divided by the replicas last seen in
//! Redis (each replica heartbeats into a sorted set), or `deny`. Every change of state is one
//! log line and counted; leases, grants and errors are counters on `/stats` and `/metrics`.
//!
//! Keys: rules keyed per caller hash the caller with a seed every replica reads from Redis
//! (`SET NX` by the first), so replicas agree on keys without configuring another secret.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use ratelimit::{KeyHasher, KeySource, LeaseBucket, LeaseTable, RequestInfo, Rule, Take};

use crate::config::{ClusterConfig, Config, LimitScope, OnUnavailable, MAX_CLUSTER_LIMITS};

/// How often the lease thread looks at every slot.
pub const SCAN: Duration = Duration::from_millis(10);
/// How far ahead of demand a slot is filled (tokens for this long at the rate it is asked).
const HORIZON_S: f64 = 0.1;
/// Longest a request waits for a first lease before it is refused (429).
pub const LEASE_WAIT: Duration = Duration::from_millis(250);
/// A slot with no demand and no token for this long is freed.
const IDLE: Duration = Duration::from_secs(10);
/// Heartbeat period; a replica not seen for [`REPLICA_TTL`] no longer counts.
const HEARTBEAT: Duration = Duration::from_secs(1);
const REPLICA_TTL: Duration = Duration::from_secs(5);

/// Leases up to ARGV[3] tokens from the GCRA bucket at KEYS[1] (interval ARGV[1] µs,
/// tolerance ARGV[2] µs) on the Redis clock: `{granted, retry_us}`. Exactly
/// `ratelimit::LeaseBucket::grant`; a bucket holding something that is not a number is an
/// error, not a reset.
pub const LEASE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local raw = redis.call('GET', KEYS[1])
local tat = 0
if raw then
  tat = tonumber(raw)
  if not tat then return redis.error_reply('mcplb: lease bucket ' .. KEYS[1] .. ' holds no number') end
end
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval)
if room < 0 then room = 0 end
local granted = math.min(want, room)
if granted <= 0 then
  return {0, tat + interval - tolerance - now}
end
tat = tat + granted * interval
redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
return {granted, 0}
"#;

/// Registers this replica (ARGV[1]) in the sorted set KEYS[1] on the Redis clock, forgets
/// replicas silent for ARGV[2] ms, and returns `{replicas, seed}`: the key seed at KEYS[2],
/// set to ARGV[3] by the first replica.
const HEARTBEAT_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
redis.call('SET', KEYS[2], ARGV[3], 'NX')
return {redis.call('ZCARD', KEYS[1]), redis.call('GET', KEYS[2])}
"#;

/// One `cluster` rule.
struct ClusterRule {
    /// Its place in `[[limits]]`.
    index: usize,
    rule: Rule,
    bucket: LeaseBucket,
    table: LeaseTable,
    on_unavailable: OnUnavailable,
    /// Redis key of the rule's buckets (a caller's key is appended).
    redis_key: String,
    max_batch: u32,
    admitted: AtomicU64,
    rejected: AtomicU64,
}

/// Counters of the store (all since start of this rule set).
#[derive(Default)]
pub struct ClusterCounters {
    /// Lease scripts run.
    pub leases: AtomicU64,
    /// Tokens Redis granted.
    pub tokens_granted: AtomicU64,
    /// Failed Redis calls (connect, I/O, error replies, garbage).
    pub errors: AtomicU64,
    /// Changes between available and unavailable.
    pub state_changes: AtomicU64,
    /// Requests decided by `on_unavailable` while Redis was unreachable.
    pub unavailable_decisions: AtomicU64,
}

/// The `cluster` rules of a configuration and their leases; shared by every core.
pub struct ClusterLimits {
    rules: Vec<ClusterRule>,
    cfg: ClusterConfig,
    available: AtomicBool,
    /// Whether a state (either) was ever told: the first failure at start is logged too.
    told: AtomicBool,
    /// Why Redis was last unavailable (for `/stats`; written by the lease thread only).
    last_error: ArcSwapOption<String>,
    /// The seed replicas share (from Redis); until then the process's own.
    shared_hasher: OnceLock<KeyHasher>,
    own_hasher: KeyHasher,
    /// Replicas last seen in Redis (at least 1).
    replicas: AtomicU32,
    /// The `on_unavailable = "local"` rules at this replica's share, rebuilt when the count of
    /// replicas changes; its rule `i` is `local_rules[i]` of `rules`.
    fallback: ArcSwapOption<ratelimit::RateLimits>,
    local_rules: Vec<usize>,
    /// The lease thread (woken when a request waits).
    thread: OnceLock<std::thread::Thread>,
    /// Counters.
    pub counters: ClusterCounters,
}

/// What the cluster rules say of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted by every matching cluster rule (tokens taken: see [`ClusterLimits::refund`]).
    Admit(Taken),
    /// Refused by the rule at `rule` (its place in `[[limits]]`).
    Reject {
        /// The rule's place in `[[limits]]`.
        rule: usize,
        /// Nanoseconds until a token is expected.
        retry_ns: u64,
    },
    /// A matching rule has no lease yet: wait for the lease thread and ask again.
    Pending,
}

// `Taken::rules` has a bit per cluster rule.
const _: () = assert!(MAX_CLUSTER_LIMITS <= 16);

/// Tokens taken from leases by one request, to give back if a local rule refuses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Taken {
    /// Per rule (its place in the cluster rules): the key a token was taken from.
    keys: [u64; MAX_CLUSTER_LIMITS],
    /// Bit `i`: rule `i` took a token.
    rules: u16,
}

impl Taken {
    fn each(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.keys
            .iter()
            .enumerate()
            .filter(|(i, _)| self.rules & (1 << i) != 0)
            .map(|(i, k)| (i, *k))
    }
}

impl ClusterLimits {
    /// The cluster rules of `config` (none: `None`), with the lease thread started.
    pub fn start(config: &Config) -> anyhow::Result<Option<Arc<Self>>> {
        let Some(cfg) = config.cluster.clone() else {
            return Ok(None);
        };
        let mut rules = Vec::new();
        for (index, (rule, scope)) in config.limits.iter().zip(&config.limit_scopes).enumerate() {
            let LimitScope::Cluster(on_unavailable) = *scope else {
                continue;
            };
            let bucket = LeaseBucket::new(rule.rate, rule.burst)
                .map_err(|e| anyhow::anyhow!("limits[{index}]: {e}"))?;
            rules.push(ClusterRule {
                index,
                redis_key: format!("{}:limit:{:016x}", cfg.prefix, fingerprint(rule)),
                max_batch: ratelimit::max_batch(rule.rate, rule.burst),
                table: LeaseTable::new(cfg.max_keys),
                rule: rule.clone(),
                bucket,
                on_unavailable,
                admitted: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
            });
        }
        if rules.is_empty() {
            return Ok(None);
        }
        let local_rules: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| r.on_unavailable == OnUnavailable::Local)
            .map(|(i, _)| i)
            .collect();
        let limits = Arc::new(ClusterLimits {
            rules,
            cfg,
            available: AtomicBool::new(false),
            told: AtomicBool::new(false),
            last_error: ArcSwapOption::empty(),
            shared_hasher: OnceLock::new(),
            own_hasher: KeyHasher::new(rand::random::<[u64; 2]>()),
            replicas: AtomicU32::new(1),
            fallback: ArcSwapOption::empty(),
            local_rules,
            thread: OnceLock::new(),
            counters: ClusterCounters::default(),
        });
        limits.rebuild_fallback(1)?;
        let weak = Arc::downgrade(&limits);
        let handle = std::thread::Builder::new()
            .name("mcplb-cluster".into())
            .spawn(move || lease_thread(weak))?;
        let _ = limits.thread.set(handle.thread().clone());
        Ok(Some(limits))
    }

    /// Whether `self` serves the same rules and store as `config` would (a reload keeps it).
    pub fn same_as(&self, config: &Config) -> bool {
        config.cluster.as_ref() == Some(&self.cfg)
            && self
                .rules
                .iter()
                .map(|r| (r.index, &r.rule, LimitScope::Cluster(r.on_unavailable)))
                .eq(config
                    .limits
                    .iter()
                    .zip(&config.limit_scopes)
                    .enumerate()
                    .filter(|(_, (_, s))| matches!(s, LimitScope::Cluster(_)))
                    .map(|(i, (r, s))| (i, r, *s)))
    }

    /// The hasher of caller keys for cluster rules (shared by replicas once Redis answered).
    pub fn hasher(&self) -> &KeyHasher {
        self.shared_hasher.get().unwrap_or(&self.own_hasher)
    }

    /// Whether Redis is reachable (as of the lease thread's last call).
    pub fn available(&self) -> bool {
        self.available.load(Ordering::Acquire)
    }

    /// Replicas last seen in Redis.
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed)
    }

    /// Checks `req` against every matching cluster rule at `now_ns`. Lock-free; `key_of`
    /// gives a rule's caller key, hashed with [`hasher`](Self::hasher).
    pub fn check(
        &self,
        req: &RequestInfo<'_>,
        key_of: impl Fn(&KeySource) -> Option<u64>,
        now_ns: u64,
    ) -> Verdict {
        let available = self.available();
        let mut taken = Taken::default();
        let mut fallback = false;
        for (i, r) in self.rules.iter().enumerate() {
            if !r.rule.matches(req) {
                continue;
            }
            if !available {
                self.counters
                    .unavailable_decisions
                    .fetch_add(1, Ordering::Relaxed);
                match r.on_unavailable {
                    OnUnavailable::Local => fallback = true,
                    OnUnavailable::Deny => {
                        return self.reject(&taken, i, 1_000_000_000);
                    }
                }
                continue;
            }
            let key = match r.rule.key {
                KeySource::Global => 0,
                ref ks => key_of(ks).unwrap_or(0),
            };
            match r.table.take(key, now_ns) {
                Take::Admit => {
                    if let Some(slot) = taken.keys.get_mut(i) {
                        *slot = key;
                        taken.rules |= 1 << i;
                    }
                }
                Take::Denied { retry_ns } => return self.reject(&taken, i, retry_ns),
                Take::Full => return self.reject(&taken, i, 1_000_000_000),
                Take::Pending => {
                    self.refund(&taken);
                    return Verdict::Pending;
                }
            }
        }
        if fallback {
            if let Some(f) = self.fallback.load().as_ref() {
                if let ratelimit::Decision::Reject {
                    rule,
                    retry_after_ns,
                } = f.check(req, &key_of, now_ns)
                {
                    let i = self.local_rules.get(rule).copied().unwrap_or(0);
                    return self.reject(&taken, i, retry_after_ns);
                }
            }
        }
        for (i, _) in taken.each() {
            if let Some(r) = self.rules.get(i) {
                r.admitted.fetch_add(1, Ordering::Relaxed);
            }
        }
        Verdict::Admit(taken)
    }

    fn reject(&self, taken: &Taken, i: usize, retry_ns: u64) -> Verdict {
        self.refund(taken);
        let Some(r) = self.rules.get(i) else {
            return Verdict::Pending;
        };
        r.rejected.fetch_add(1, Ordering::Relaxed);
        Verdict::Reject {
            rule: r.index,
            retry_ns,
        }
    }

    /// Gives back the tokens of an admitted request another rule refused.
    pub fn refund(&self, taken: &Taken) {
        for (i, key) in taken.each() {
            if let Some(r) = self.rules.get(i) {
                r.table.refund(key);
            }
        }
    }

    /// Wakes the lease thread (a request waits for a first lease).
    pub fn nudge(&self) {
        if let Some(t) = self.thread.get() {
            t.unpark();
        }
    }

    /// Per rule: (place in `[[limits]]`, the rule, admitted, rejected).
    pub fn rule_counts(&self) -> impl Iterator<Item = (usize, &Rule, u64, u64)> {
        self.rules.iter().map(|r| {
            (
                r.index,
                &r.rule,
                r.admitted.load(Ordering::Relaxed),
                r.rejected.load(Ordering::Relaxed),
            )
        })
    }

    /// The `on_unavailable = "local"` rules at a share of `replicas`.
    fn rebuild_fallback(&self, replicas: u32) -> anyhow::Result<()> {
        if self.local_rules.is_empty() {
            return Ok(());
        }
        let n = f64::from(replicas.max(1));
        let rules = self
            .local_rules
            .iter()
            .filter_map(|&i| self.rules.get(i))
            .map(|r| {
                let mut share = r.rule.clone();
                share.rate = r.rule.rate / n;
                share.burst = r.rule.burst.div_ceil(replicas.max(1)).max(1);
                share
            })
            .collect();
        let limits = ratelimit::RateLimits::new(rules, self.cfg.max_keys)
            .map_err(|e| anyhow::anyhow!("limits: {e}"))?;
        self.fallback.store(Some(Arc::new(limits)));
        Ok(())
    }

    /// Why Redis was last unavailable, if it ever was.
    pub fn last_error(&self) -> Option<Arc<String>> {
        self.last_error.load_full()
    }

    fn set_available(&self, up: bool, why: &str) {
        if !up {
            self.last_error.store(Some(Arc::new(why.to_string())));
        }
        let changed = self.available.swap(up, Ordering::AcqRel) != up;
        // Unavailable from the start (a wrong password, Redis not up yet) is no change of the
        // flag, but an operator must hear of it once.
        let first = !self.told.swap(true, Ordering::AcqRel);
        if changed || first {
            if changed {
                self.counters.state_changes.fetch_add(1, Ordering::Relaxed);
            }
            if up {
                tracing::info!(
                    redis = %crate::config::redact_url(&self.cfg.redis),
                    replicas = self.replicas(),
                    "cluster limits: Redis reachable, leasing tokens"
                );
            } else {
                tracing::warn!(
                    redis = %crate::config::redact_url(&self.cfg.redis),
                    error = %why,
                    replicas = self.replicas(),
                    "cluster limits: Redis unavailable, applying on_unavailable"
                );
            }
        }
    }
}

/// A stable name of a rule's settings, so that replicas with the same rule share its bucket and
/// a changed rule starts a new one.
fn fingerprint(rule: &Rule) -> u64 {
    let text = format!("{rule:?}");
    let half = |salt: &str| u64::from(crate::config::fnv1a32(format!("{salt}{text}").as_bytes()));
    half("a") << 32 | half("b")
}

/// Why a Redis call failed.
#[derive(Debug, thiserror::Error)]
enum StoreError {
    #[error("{0}")]
    Redis(#[from] redis::RedisError),
    #[error("unexpected answer from Redis: {0}")]
    Garbage(String),
}

/// The lease thread: connects, heartbeats, refills; ends when the rule set is dropped.
fn lease_thread(weak: Weak<ClusterLimits>) {
    let Some(me) = weak.upgrade() else { return };
    let client = match redis_client(&me.cfg) {
        Ok(c) => c,
        Err(e) => {
            me.set_available(false, &e.to_string());
            tracing::error!(error = %e, "cluster limits: cannot use [cluster] redis");
            return;
        }
    };
    let replica_id = format!("{:016x}", rand::random::<u64>());
    let seed = format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    );
    let lease = redis::Script::new(LEASE_LUA);
    let heartbeat = redis::Script::new(HEARTBEAT_LUA);
    let timeout = me.cfg.timeout;
    drop(me);
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut last_beat: Option<Instant> = None;
    let epoch = Instant::now();
    loop {
        let Some(me) = weak.upgrade() else { return };
        if conn.is_none() {
            match connect(&client, timeout) {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    me.counters.errors.fetch_add(1, Ordering::Relaxed);
                    me.set_available(false, &e.to_string());
                    drop(me);
                    std::thread::park_timeout(backoff + jitter(backoff));
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
            last_beat = None;
        }
        let Some(c) = conn.as_mut() else { continue };
        let result = (|| -> Result<(), StoreError> {
            if last_beat.is_none_or(|t| t.elapsed() >= HEARTBEAT) {
                beat(&me, c, &heartbeat, &replica_id, &seed)?;
                last_beat = Some(Instant::now());
                me.set_available(true, "");
            }
            refill(&me, c, &lease, epoch)
        })();
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                me.counters.errors.fetch_add(1, Ordering::Relaxed);
                me.set_available(false, &e.to_string());
                conn = None;
            }
        }
        drop(me);
        if conn.is_none() {
            std::thread::park_timeout(backoff + jitter(backoff));
            backoff = (backoff * 2).min(Duration::from_secs(5));
        } else {
            std::thread::park_timeout(SCAN);
        }
    }
}

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::random::<f64>() * 0.2)
}

fn redis_client(cfg: &ClusterConfig) -> Result<redis::Client, redis::RedisError> {
    let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.redis.as_str())?;
    if let Some(p) = &cfg.password {
        info.redis.password = Some(p.clone());
    }
    redis::Client::open(info)
}

fn connect(client: &redis::Client, timeout: Duration) -> Result<redis::Connection, StoreError> {
    let c = client.get_connection_with_timeout(timeout)?;
    c.set_read_timeout(Some(timeout))?;
    c.set_write_timeout(Some(timeout))?;
    Ok(c)
}

/// Heartbeat: this replica counted, the replicas seen, the shared key seed.
fn beat(
    me: &ClusterLimits,
    c: &mut redis::Connection,
    script: &redis::Script,
    replica_id: &str,
    seed: &str,
) -> Result<(), StoreError> {
    let v: redis::Value = script
        .key(format!("{}:replicas", me.cfg.prefix))
        .key(format!("{}:seed", me.cfg.prefix))
        .arg(replica_id)
        .arg(REPLICA_TTL.as_millis() as u64)
        .arg(seed)
        .invoke(c)?;
    let (replicas, seed) = parse_heartbeat(&v)?;
    if me.shared_hasher.get().is_none() {
        let _ = me.shared_hasher.set(KeyHasher::new(seed));
    }
    if me.replicas.swap(replicas, Ordering::Relaxed) != replicas {
        tracing::info!(replicas, "cluster limits: replicas seen in Redis");
        me.rebuild_fallback(replicas)
            .map_err(|e| StoreError::Garbage(e.to_string()))?;
    }
    Ok(())
}

/// `{replicas, seed}` of the heartbeat script.
fn parse_heartbeat(v: &redis::Value) -> Result<(u32, [u64; 2]), StoreError> {
    let garbage = || StoreError::Garbage(format!("heartbeat answered {v:?}"));
    let redis::Value::Array(items) = v else {
        return Err(garbage());
    };
    let [redis::Value::Int(n), seed] = items.as_slice() else {
        return Err(garbage());
    };
    let seed: String = match seed {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).map_err(|_| garbage())?,
        _ => return Err(garbage()),
    };
    let parse = |s: Option<&str>| s.and_then(|s| u64::from_str_radix(s, 16).ok());
    let (Some(a), Some(b)) = (parse(seed.get(..16)), parse(seed.get(16..32))) else {
        return Err(garbage());
    };
    let replicas = u32::try_from(*n).map_err(|_| garbage())?.max(1);
    Ok((replicas, [a, b]))
}

/// `{granted, retry_us}` of the lease script, checked against what was asked.
pub fn parse_lease(v: &redis::Value, want: u32) -> Result<(u32, u64), String> {
    let garbage = || format!("lease answered {v:?}");
    let redis::Value::Array(items) = v else {
        return Err(garbage());
    };
    let [redis::Value::Int(granted), redis::Value::Int(retry)] = items.as_slice() else {
        return Err(garbage());
    };
    let granted = u32::try_from(*granted).map_err(|_| garbage())?;
    let retry = u64::try_from(*retry).map_err(|_| garbage())?;
    if granted > want || (granted == 0 && retry == 0) {
        return Err(garbage());
    }
    Ok((granted, retry))
}

/// Leases tokens for every slot whose demand will outrun what it holds.
fn refill(
    me: &ClusterLimits,
    c: &mut redis::Connection,
    script: &redis::Script,
    epoch: Instant,
) -> Result<(), StoreError> {
    let now = epoch.elapsed().as_nanos() as u64;
    let per_sec = 1.0 / SCAN.as_secs_f64();
    let ttl = me.cfg.lease_ttl.as_nanos() as u64;
    let mut wants = Vec::new();
    for (ri, r) in me.rules.iter().enumerate() {
        r.table.scan(now, IDLE.as_nanos() as u64, |v| {
            if v.demand == 0 || v.denied_until > now {
                return;
            }
            let demand = f64::from(v.demand) * per_sec;
            let want = ratelimit::lease_size(demand, HORIZON_S, v.held, r.max_batch);
            if want > 0 {
                wants.push((ri, v, want));
            }
        });
    }
    for (ri, v, want) in wants {
        let Some(r) = me.rules.get(ri) else { continue };
        let value: redis::Value = script
            .key(format!("{}:{:016x}", r.redis_key, v.key))
            .arg(r.bucket.interval_us)
            .arg(r.bucket.tolerance_us)
            .arg(want)
            .invoke(c)?;
        let (granted, retry_us) = parse_lease(&value, want).map_err(StoreError::Garbage)?;
        me.counters.leases.fetch_add(1, Ordering::Relaxed);
        me.counters
            .tokens_granted
            .fetch_add(u64::from(granted), Ordering::Relaxed);
        let now = epoch.elapsed().as_nanos() as u64;
        r.table.deposit(
            v.index,
            v.key,
            granted,
            now.saturating_add(ttl),
            now.saturating_add(retry_us.saturating_mul(1_000)),
        );
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn garbage_answers_are_errors() {
        assert_eq!(
            parse_lease(&Value::Array(vec![Value::Int(3), Value::Int(0)]), 5),
            Ok((3, 0))
        );
        assert_eq!(
            parse_lease(&Value::Array(vec![Value::Int(0), Value::Int(900)]), 5),
            Ok((0, 900))
        );
        for bad in [
            Value::Nil,
            Value::Int(3),
            Value::Array(vec![Value::Int(9), Value::Int(0)]),
            Value::Array(vec![Value::Int(-1), Value::Int(0)]),
            Value::Array(vec![Value::Int(0), Value::Int(0)]),
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::BulkString(b"1".to_vec()), Value::Int(0)]),
            Value::Array(vec![Value::Int(1), Value::Int(-5)]),
        ] {
            assert!(parse_lease(&bad, 5).is_err(), "{bad:?}");
        }
        let seed = Value::BulkString(b"00000000000000010000000000000002".to_vec());
        assert_eq!(
            parse_heartbeat(&Value::Array(vec![Value::Int(3), seed.clone()])).ok(),
            Some((3, [1, 2]))
        );
        for bad in [
            Value::Array(vec![Value::Int(3), Value::BulkString(b"xyz".to_vec())]),
            Value::Array(vec![Value::Int(-3), seed.clone()]),
            Value::Array(vec![seed]),
            Value::Okay,
        ] {
            assert!(parse_heartbeat(&bad).is_err(), "{bad:?}");
        }
    }
}
