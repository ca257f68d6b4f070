//! mcplb: a thread-per-core proxy and load balancer for MCP servers.
//!
//! `main.rs` is a thin shell over this library: [`start`] binds one SO_REUSEPORT listener per
//! worker and runs each worker on its own monoio runtime (io_uring, or epoll where io_uring is
//! unavailable). See `ARCHITECTURE.md` for the path of one request.

pub mod admin;
pub mod balance;
pub mod checker;
pub mod config;
pub mod demo;
pub mod failover;
pub mod http;
pub mod legacy;
pub mod session;
pub mod stats;
pub mod stdio;
mod worker;

#[doc(hidden)]
pub mod fuzzing;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

pub use config::Config;
use session::SessionSealer;

/// Which monoio driver the workers run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Driver {
    /// io_uring when the kernel allows it, else epoll.
    #[default]
    Auto,
    /// io_uring only (fails to start without it).
    IoUring,
    /// epoll (monoio's legacy driver).
    Legacy,
}

/// A running proxy: its bound address and worker threads.
pub struct RunningProxy {
    /// The address clients connect to (the real port when the config said 0).
    pub local_addr: SocketAddr,
    /// The driver in use.
    pub driver: &'static str,
    /// The admin port's address, when one is configured.
    pub admin_addr: Option<SocketAddr>,
    /// Supervisors of stdio backends (dropping them stops the children).
    bridges: Vec<stdio::StdioBridge>,
    /// Bridges of the 2024-11-05 transport (old servers as backends, old clients in front).
    legacy: (Vec<legacy::LegacyBackend>, Vec<legacy::LegacyFront>),
    threads: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Graceful shutdown: stop accepting, let open requests and streams finish (keep-alive
    /// connections close after their current request, idle ones at once), up to `timeout`;
    /// then stop stdio children. Returns the number of connections still open at the deadline.
    pub fn shutdown(self, timeout: std::time::Duration) -> usize {
        use std::sync::atomic::Ordering;
        worker::SHUTDOWN.store(true, Ordering::SeqCst);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let open = worker::OPEN_CONNECTIONS.load(Ordering::SeqCst);
            if open == 0 || std::time::Instant::now() >= deadline {
                drop(self.bridges);
                drop(self.legacy);
                return open;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Blocks until every worker has exited (they run until the process ends).
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        drop(self.bridges);
        drop(self.legacy);
    }
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// io_uring setup for a worker's ring. `COOP_TASKRUN` stops the kernel from interrupting the
/// worker to run completion work (it runs when the worker enters the kernel anyway), and the
/// ring has a single issuer. Measured on this machine (wrk, 64 connections, 200-byte
/// `tools/call`, one pinned worker): 15.3 µs of CPU per request without the flags, 10.7 µs
/// with them. Kernels before 5.19 lack them: `plain` builds a ring without.
fn uring_setup(plain: bool) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if !plain {
        b.setup_coop_taskrun().setup_single_issuer();
    }
    b
}

/// Starts the workers and returns once every listener is bound.
pub fn start(mut config: Config, driver: Driver) -> anyhow::Result<RunningProxy> {
    // stdio backends: start each one's supervised bridge; workers then reach it over
    // loopback HTTP like any other backend.
    let mut bridges = Vec::new();
    let mut legacy_backends = Vec::new();
    for g in &mut config.servers {
        for b in &mut g.backends {
            if let Some(sse) = b.legacy_sse.clone() {
                let bridge = legacy::LegacyBackend::start(&sse)
                    .with_context(|| format!("servers.{}: backend {}", g.name, b.name))?;
                b.addr = bridge.addr();
                b.authority = bridge.addr().to_string();
                b.path = "/mcp".to_string();
                tracing::info!(backend = %b.name, sse = %sse, bridge = %b.addr, "2024-11-05 (HTTP+SSE) backend bridged");
                legacy_backends.push(bridge);
            }
            if let Some(sc) = b.stdio.clone() {
                let bridge = stdio::StdioBridge::start(sc)
                    .with_context(|| format!("servers.{}: backend {}", g.name, b.name))?;
                b.addr = bridge.addr();
                b.authority = bridge.addr().to_string();
                b.path = "/mcp".to_string();
                tracing::info!(backend = %b.name, command = %b.url, bridge = %b.addr, "stdio backend started");
                bridges.push(bridge);
            }
        }
    }
    let key = match config.proxy.session_key {
        Some(k) => k,
        None => {
            tracing::warn!(
                "no proxy.session_key configured: generated a random one; sessions will not \
                 survive a restart and replicas of mcplb cannot share sessions"
            );
            SessionSealer::random_key()
        }
    };
    let uring = monoio::utils::detect_uring();
    let driver_name = match (driver, uring) {
        (Driver::Legacy, _) | (Driver::Auto, false) => "legacy (epoll)",
        (Driver::IoUring, false) => anyhow::bail!("io_uring is not available on this kernel"),
        _ => "io_uring",
    };
    if driver == Driver::Auto && !uring {
        tracing::warn!("io_uring unavailable: falling back to the legacy epoll driver");
    }
    let workers = config.proxy.workers;
    let first = bind_listener(config.proxy.listen)
        .with_context(|| format!("proxy.listen: cannot bind {}", config.proxy.listen))?;
    let local_addr = first.local_addr()?;
    // Old (2024-11-05) clients: a bridge per group with legacy_sse = true, translating to the
    // group's own Streamable HTTP endpoint on this listener.
    let mut legacy_fronts = Vec::new();
    let mut legacy_front_addrs = Vec::new();
    for g in &config.servers {
        if g.legacy_sse {
            let front =
                legacy::LegacyFront::start(&format!("http://{local_addr}{}", g.path), &g.path)
                    .with_context(|| format!("servers.{}: legacy_sse bridge", g.name))?;
            legacy_front_addrs.push(Some(front.addr()));
            legacy_fronts.push(front);
        } else {
            legacy_front_addrs.push(None);
        }
    }
    let mut listeners = vec![first];
    for _ in 1..workers {
        listeners.push(
            bind_listener(local_addr)
                .with_context(|| format!("cannot bind another listener on {local_addr}"))?,
        );
    }
    let limits = if config.limits.is_empty() {
        None
    } else {
        Some(Arc::new(
            ratelimit::RateLimits::new(config.limits.clone(), config.proxy.limit_max_keys)
                .map_err(|e| anyhow::anyhow!("limits: {e}"))?,
        ))
    };
    let concurrency = config
        .concurrency
        .iter()
        .map(|r| {
            ratelimit::ConcurrencyLimit::new(r.max, config.proxy.limit_max_keys, r.queue)
                .map(Arc::new)
                .map_err(|e| anyhow::anyhow!("concurrency: {e}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let per_ip = Arc::new(
        ratelimit::ConcurrencyLimit::new(
            config.proxy.max_connections_per_ip,
            (config.proxy.max_connections.saturating_mul(2)).clamp(1 << 12, 1 << 23),
            0,
        )
        .map_err(|e| anyhow::anyhow!("proxy.max_connections_per_ip: {e}"))?,
    );
    let hub = Arc::new(stats::StatsHub::new());
    let groups = balance::runtimes(&config);
    let epoch = std::time::Instant::now();
    let admin_addr = match config.admin_listen {
        Some(addr) => {
            let state = Arc::new(admin::AdminState {
                config: config.clone(),
                hub: hub.clone(),
                limits: limits.clone(),
                groups: groups.clone(),
                epoch,
                driver: driver_name,
            });
            Some(
                admin::start(addr, state)
                    .with_context(|| format!("admin.listen: cannot bind {addr}"))?,
            )
        }
        None => None,
    };
    let shared = Arc::new(worker::Shared {
        sealer: SessionSealer::new(&key),
        config,
        hub,
        limits,
        key_hasher: ratelimit::KeyHasher::new(rand::random::<[u64; 2]>()),
        epoch,
        groups: groups.clone(),
        failover: failover::FailoverStore::new(100_000),
        concurrency,
        legacy_fronts: legacy_front_addrs,
        per_ip,
    });
    checker::start(&shared.config, groups, shared.hub.clone());
    let mut threads = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let shared = shared.clone();
        let legacy = driver_name.starts_with("legacy");
        let t = std::thread::Builder::new()
            .name(format!("mcplb-worker-{i}"))
            .spawn(move || {
                let res = if legacy {
                    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(worker::run_worker(shared, l, i)))
                } else {
                    let build = |plain| {
                        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                            .enable_timer()
                            .with_entries(4096)
                            .uring_builder(uring_setup(plain))
                            .build()
                    };
                    build(false)
                        .or_else(|_| build(true))
                        .map(|mut rt| rt.block_on(worker::run_worker(shared, l, i)))
                };
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(worker = i, error = %e, "worker stopped"),
                    Err(e) => tracing::error!(worker = i, error = %e, "cannot build runtime"),
                }
            })?;
        threads.push(t);
    }
    tracing::info!(%local_addr, workers, driver = driver_name, "mcplb started");
    Ok(RunningProxy {
        legacy: (legacy_backends, legacy_fronts),
        bridges,
        local_addr,
        admin_addr,
        driver: driver_name,
        threads,
    })
}
