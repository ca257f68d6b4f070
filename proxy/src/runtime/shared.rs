//! What every worker shares: the validated configuration and the few pieces of state that are
//! global to the process on purpose (see `ARCHITECTURE.md`, "What cores share"): the session
//! sealer, the statistics hub, rate and concurrency counters (lock-free atomics), backend
//! health (lock-free), the failover table. Read-only after it is built; a reload builds a new
//! one and publishes it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::balance::{self, GroupRuntime};
use crate::config::Config;
use crate::control::stats::{self, StatsHub};
use crate::session::{failover, SessionSealer};
use crate::tls;

/// What every worker shares: read-only after start.
pub struct Shared {
    /// The validated configuration.
    pub config: Config,
    /// `alt-svc: h3=":PORT"; ma=86400` and its CRLF, on answers over HTTP/1.1 and HTTP/2
    /// while HTTP/3 is served.
    pub alt_svc: Option<Box<[u8]>>,
    /// Seals and opens session ids.
    pub sealer: SessionSealer,
    /// Where every core's statistics are merged.
    pub hub: Arc<StatsHub>,
    /// Rate limits shared by every core (lock-free), when `[[limits]]` with the local scope
    /// are configured; its rule `i` is `[[limits]]` number `limit_index[i]`.
    pub limits: Option<Arc<ratelimit::RateLimits>>,
    /// Place in `[[limits]]` of each rule of `limits`.
    pub limit_index: Vec<usize>,
    /// `scope = "cluster"` rules, leased from Redis (lock-free on the request path).
    pub cluster: Option<Arc<crate::control::cluster::ClusterLimits>>,
    /// Keyed hash for caller identities (API keys are hashed, never stored).
    pub key_hasher: ratelimit::KeyHasher,
    /// Per group: backend health (shared, lock-free) and the hash ring.
    pub groups: Arc<Vec<GroupRuntime>>,
    /// Initialize bodies and moved sessions, for `session_failover = "reinitialize"`.
    pub failover: Arc<crate::session::failover::FailoverStore>,
    /// Counters of the `[[concurrency]]` rules, in config order (lock-free, every core).
    pub concurrency: Vec<Arc<ratelimit::ConcurrencyLimit>>,
    /// Per group: the 2024-11-05 transport bridge for old clients (`legacy_sse = true`).
    pub legacy_fronts: Vec<Option<SocketAddr>>,
    /// Open client connections per IP address (lock-free, every core).
    pub per_ip: Arc<ratelimit::ConcurrencyLimit>,
    /// The QUIC server settings of `[proxy.http3]` for new connections (built again by each
    /// reload, with the same token key).
    pub h3_server: Option<Arc<quinn_proto::ServerConfig>>,
    /// Seals and checks QUIC address-validation tokens: one key and one log of used tokens
    /// for the process, kept across reloads.
    pub(crate) h3_tokens: crate::h3::tokens::TokenKeys,
    /// TLS termination for clients (`[proxy.tls]`), its config read once per handshake.
    pub tls: Option<Arc<crate::tls::TlsTerminator>>,
    /// The span exporter's queue (`[telemetry]`), when traces are configured.
    pub tracer: Option<Arc<crate::telemetry::Tracer>>,
    /// Per group with `confirm_destructive`: its tools' annotations as learned from
    /// `tools/list` answers (kept across a reload by the group's name).
    pub tool_hints: Vec<Option<Arc<crate::policy::confirm::ToolHints>>>,
    /// Per group with `[servers.cache]`: the tools its `tools/list` answers said only read
    /// (learned once for every core; a reload starts afresh, as the caches do).
    pub read_only_tools: Vec<Option<crate::cache::ReadOnlyTools>>,
}

/// Builds what every worker shares for `config` (whose stdio and legacy backends already have
/// their bridges' addresses); session ids are sealed with `config.proxy.session_keys`, or with
/// `generated_key` when it configures none. On a reload, `prev` is the running configuration: statistics,
/// sessions, caller-key hashing, connection counts, backend health (by tag) and the rate and
/// concurrency counters of unchanged rules carry over.
pub(crate) fn build_shared(
    config: Config,
    prev: Option<&Shared>,
    legacy_fronts: Vec<Option<SocketAddr>>,
    generated_key: Option<&[u8; 32]>,
) -> anyhow::Result<Shared> {
    let sealer = match (config.proxy.session_keys.as_slice(), generated_key) {
        ([], Some(k)) => SessionSealer::new(k),
        (keys, _) => SessionSealer::with_keys(keys)
            .ok_or_else(|| anyhow::anyhow!("proxy.session_keys: no key configured"))?,
    };
    // Unchanged rules keep their tables (callers keep their buckets across the reload).
    let same_limits = prev.is_some_and(|p| {
        p.config.limits == config.limits
            && p.config.proxy.limit_max_keys == config.proxy.limit_max_keys
    });
    // `cluster` rules live in `cluster`, the others here.
    let limit_index: Vec<usize> = (0..config.limits.len())
        .filter(|&i| {
            !matches!(
                config.limit_scopes.get(i),
                Some(crate::config::LimitScope::Cluster(_))
            )
        })
        .collect();
    let limits = match prev.and_then(|p| p.limits.clone()) {
        _ if limit_index.is_empty() => None,
        Some(l) if same_limits && prev.is_some_and(|p| p.limit_index == limit_index) => Some(l),
        _ => Some(Arc::new(
            ratelimit::RateLimits::new(
                limit_index
                    .iter()
                    .filter_map(|&i| config.limits.get(i).cloned())
                    .collect(),
                config.proxy.limit_max_keys,
            )
            .map_err(|e| anyhow::anyhow!("limits: {e}"))?,
        )),
    };
    let cluster = match prev.and_then(|p| p.cluster.clone()) {
        Some(c) if c.same_as(&config) => Some(c),
        _ => crate::control::cluster::ClusterLimits::start(&config)?,
    };
    let concurrency = config
        .concurrency
        .iter()
        .enumerate()
        .map(|(i, r)| {
            // An unchanged rule (same place, same settings) keeps its counters, so requests in
            // flight across the reload still count.
            if let Some(p) = prev {
                if let (Some(or), Some(oc)) = (p.config.concurrency.get(i), p.concurrency.get(i)) {
                    if format!("{or:?}") == format!("{r:?}")
                        && p.config.proxy.limit_max_keys == config.proxy.limit_max_keys
                    {
                        return Ok(oc.clone());
                    }
                }
            }
            ratelimit::ConcurrencyLimit::new(r.max, config.proxy.limit_max_keys, r.queue)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("concurrency: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per_ip = match prev {
        Some(p) => p.per_ip.clone(),
        None => Arc::new(
            ratelimit::ConcurrencyLimit::new(
                config.proxy.max_connections_per_ip,
                (config.proxy.max_connections.saturating_mul(2)).clamp(1 << 12, 1 << 23),
                0,
            )
            .map_err(|e| anyhow::anyhow!("proxy.max_connections_per_ip: {e}"))?,
        ),
    };
    let groups = match prev {
        Some(p) => balance::runtimes_after(&config, &p.config, &p.groups),
        None => balance::runtimes(&config),
    };
    let tool_hints = config
        .servers
        .iter()
        .map(|g| {
            g.confirm_destructive.then(|| {
                // Kept while the group keeps the same backends (what they listed still holds).
                let same = |o: &crate::config::ServerGroup| {
                    o.name == g.name
                        && o.backends
                            .iter()
                            .map(|b| &b.name)
                            .eq(g.backends.iter().map(|b| &b.name))
                };
                let kept = prev.and_then(|p| {
                    let i = p.config.servers.iter().position(same)?;
                    p.tool_hints.get(i)?.clone()
                });
                kept.unwrap_or_default()
            })
        })
        .collect();
    // Client TLS: one terminator for the process (its certificates swap in place: a reload
    // calls `TlsTerminator::reload`, and a watcher thread follows the files).
    let tls = match (prev, &config.proxy.tls) {
        (Some(p), _) => p.tls.clone(),
        (None, None) => None,
        (None, Some(files)) => {
            let t = tls::TlsTerminator::new(files.clone())
                .map_err(|e| anyhow::anyhow!("proxy.tls: {e}"))?;
            t.watch();
            Some(t)
        }
    };
    let tracer = tracer(&config, prev)?;
    let h3_tokens = prev.map_or_else(crate::h3::tokens::TokenKeys::new, |p| p.h3_tokens.clone());
    let h3_server = match (&config.proxy.http3, &config.proxy.tls) {
        (Some(h), Some(files)) => Some(Arc::new(
            h.quic_server(files, &h3_tokens, tls.as_ref())
                .map_err(anyhow::Error::msg)?,
        )),
        _ => None,
    };
    let alt_svc = config.proxy.http3.map(|h| {
        format!("alt-svc: h3=\":{}\"; ma=86400\r\n", h.listen.port())
            .into_bytes()
            .into_boxed_slice()
    });
    let read_only_tools = config
        .servers
        .iter()
        .map(|g| g.cache.as_ref().map(|_| Default::default()))
        .collect();
    // The nanosecond clock of the rate limits and balancers starts with the first state, as
    // their `epoch` did (later states share it).
    crate::runtime::clock::anchor();
    Ok(Shared {
        alt_svc,
        h3_server,
        h3_tokens,
        tls,
        tracer,
        tool_hints,
        read_only_tools,
        sealer,
        hub: prev.map_or_else(|| Arc::new(stats::StatsHub::new()), |p| p.hub.clone()),
        limits,
        limit_index,
        cluster,
        key_hasher: prev.map_or_else(
            || ratelimit::KeyHasher::new(rand::random::<[u64; 2]>()),
            |p| p.key_hasher,
        ),
        groups,
        failover: prev.map_or_else(
            || Arc::new(failover::FailoverStore::new(100_000)),
            |p| p.failover.clone(),
        ),
        concurrency,
        legacy_fronts,
        per_ip,
        config,
    })
}

/// The span exporter for `[telemetry]`: the running one when its collector and service name
/// are unchanged (spans in its queue go on), else a new one (the old one's thread exports
/// what it holds and ends when the old configuration's last request is done).
fn tracer(
    config: &Config,
    prev: Option<&Shared>,
) -> anyhow::Result<Option<Arc<crate::telemetry::Tracer>>> {
    let Some(t) = &config.telemetry else {
        return Ok(None);
    };
    let target = crate::telemetry::ExportTarget {
        authority: t.authority.clone(),
        https: t.https,
        ca: t.ca.clone(),
        path: t.path.clone(),
        service_name: t.service_name.clone(),
    };
    if let Some(running) = prev.and_then(|p| p.tracer.as_ref()) {
        if running.target == target {
            return Ok(Some(running.clone()));
        }
    }
    let tracer = crate::telemetry::Tracer::start(target)
        .map_err(|e| anyhow::anyhow!("telemetry: cannot start the exporter: {e}"))?;
    Ok(Some(Arc::new(tracer)))
}
