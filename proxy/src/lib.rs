//! mcplb: a thread-per-core proxy and load balancer for MCP servers.
//!
//! `main.rs` is a thin shell over this library: [`start`] binds one SO_REUSEPORT listener per
//! worker (refusing an address another process listens on, see `runtime/listen.rs`) and runs
//! each worker on its own monoio runtime (io_uring, or epoll where io_uring is unavailable).
//! See `ARCHITECTURE.md` for the path of one request.

pub mod auth;
pub mod balance;
pub mod bridges;
pub mod cache;
pub mod config;
pub mod control;
mod data_path;
pub mod demo;
pub mod exchange;
pub mod h2;
pub mod h3;
pub mod http;
pub mod policy;
mod runtime;
pub mod session;
pub mod telemetry;
pub mod tls;
mod virtual_server;

#[doc(hidden)]
pub mod internals;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;

pub use config::Config;
use control::{admin, health, reload};
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
    /// Switches the running proxy to a new configuration (SIGHUP, `POST /reload`).
    pub reloader: Arc<reload::Reloader>,
    /// Client TLS termination (`[proxy.tls]`): call [`tls::TlsTerminator::reload`] to load new
    /// certificate files without a restart (a config reload does it too).
    pub tls: Option<Arc<tls::TlsTerminator>>,
    /// The UDP address HTTP/3 is served on (`[proxy.http3]`).
    pub http3_addr: Option<std::net::SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

impl RunningProxy {
    /// Graceful shutdown: stop accepting, let calls in flight finish (SSE answers included;
    /// keep-alive connections close after their current request), end standalone GET streams
    /// at once and cleanly (their clients resume elsewhere) and close idle connections; return
    /// as soon as no connection is left, or at `timeout`; then stop stdio children. Returns the
    /// number of connections still open at the deadline.
    pub fn shutdown(self, timeout: std::time::Duration) -> usize {
        use std::sync::atomic::Ordering;
        runtime::shutdown::begin();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            // No connection open counts only once every live worker has seen the shutdown
            // and counted what it still has to finish (else a worker not yet woken, whose era
            // bridge sessions still await their DELETE, would be cut off).
            let live = self.threads.iter().filter(|t| !t.is_finished()).count();
            let seen = runtime::SHUTDOWN_SEEN.load(Ordering::SeqCst) >= live;
            let open = runtime::OPEN_CONNECTIONS.load(Ordering::SeqCst);
            if (open == 0 && seen) || std::time::Instant::now() >= deadline {
                if open == 0 && control::access_log::in_use() {
                    // The last requests' access-log lines: each worker hands them over once
                    // its connections are closed; then the writer writes them out.
                    let wait = std::time::Instant::now() + std::time::Duration::from_secs(1);
                    while runtime::FLUSHED_AT_SHUTDOWN.load(Ordering::SeqCst) < self.threads.len()
                        && std::time::Instant::now() < wait
                    {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    control::access_log::drain(std::time::Duration::from_secs(1));
                }
                self.reloader.stop_all();
                // The last requests' spans (a partial batch waits at most half a second).
                telemetry::flush(std::time::Duration::from_secs(3));
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
        self.reloader.stop_all();
    }
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
pub fn start(config: Config, driver: Driver) -> anyhow::Result<RunningProxy> {
    start_with(config, driver, None)
}

/// [`start`], remembering the config file's path so that SIGHUP and `POST /reload` can read
/// it again.
pub fn start_with(
    mut config: Config,
    driver: Driver,
    path: Option<std::path::PathBuf>,
) -> anyhow::Result<RunningProxy> {
    // Without configured keys, one generated now serves until a reload configures some.
    let generated_key = if config.proxy.session_keys.is_empty() {
        tracing::warn!(
            "no proxy.session_keys configured: generated a random key; sessions will not \
             survive a restart and replicas of mcplb cannot share sessions"
        );
        Some(SessionSealer::random_key())
    } else {
        None
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
    // The admin port first: a second instance sharing the client port on purpose
    // (`proxy.reuse_port`) must not join it, even briefly, when its admin port is taken.
    let admin_listener = config
        .admin_listen
        .map(|a| {
            std::net::TcpListener::bind(a).with_context(|| format!("admin.listen: cannot bind {a}"))
        })
        .transpose()?;
    let workers = config.proxy.workers;
    let listeners =
        runtime::listen::bind_workers(config.proxy.listen, workers, config.proxy.reuse_port)?;
    let local_addr = listeners
        .first()
        .context("proxy.listen: no listener")?
        .local_addr()?;
    // HTTP/3: one UDP socket per worker, and the QUIC settings they all share.
    let mut h3_bound = Vec::new();
    let mut http3_addr = None;
    if let (Some(h3), Some(_)) = (config.proxy.http3.as_mut(), config.proxy.tls.as_ref()) {
        let endpoints = h3::endpoint_configs(workers);
        let sockets = h3::bind_workers(h3.listen, workers)?;
        let bound = sockets
            .first()
            .context("proxy.http3.listen: no socket")?
            .local_addr()?;
        h3.listen = bound;
        http3_addr = Some(bound);
        h3_bound = sockets.into_iter().zip(endpoints).collect();
    }
    // stdio backends and old (2024-11-05) servers get their supervised bridges, which workers
    // reach over loopback HTTP like any other backend; old clients get a front per group.
    let mut running = reload::Running::default();
    let (fronts, _) = running.attach(&mut config, local_addr)?;
    let shared = Arc::new(runtime::shared::build_shared(
        config,
        None,
        fronts,
        generated_key.as_ref(),
    )?);
    running.set_checkers(health::start(
        &shared.config,
        shared.groups.clone(),
        shared.hub.clone(),
    ));
    running.set_jwks(auth::start_refresh(&shared.config, None));
    // The QUIC settings (built with the shared state: a reload builds them again).
    let mut h3_sockets = match &shared.h3_server {
        Some(server) => h3_bound
            .into_iter()
            .map(|(socket, endpoint)| h3::H3Socket {
                socket,
                server: server.clone(),
                endpoint,
            })
            .collect(),
        None => Vec::new(),
    }
    .into_iter();
    let tls = shared.tls.clone();
    let live = Arc::new(reload::Live::new(shared));
    let reloader = Arc::new(reload::Reloader::new(
        path,
        live.clone(),
        running,
        local_addr,
        generated_key,
    ));
    reload::start_watch(&reloader).context("proxy.watch_interval: cannot start its thread")?;
    let worker_status = runtime::WorkerStatus::new(listeners.len());
    let admin_addr = match admin_listener {
        Some(l) => {
            let state = Arc::new(admin::AdminState {
                reloader: reloader.clone(),
                driver: driver_name,
                workers: worker_status.clone(),
            });
            Some(admin::serve_on(l, state).context("admin.listen")?)
        }
        None => None,
    };
    let mut threads = Vec::new();
    for (i, l) in listeners.into_iter().enumerate() {
        let live = live.clone();
        let h3 = h3_sockets.next();
        let legacy = driver_name.starts_with("legacy");
        let status = worker_status.clone();
        let t = std::thread::Builder::new()
            .name(format!("mcplb-worker-{i}"))
            .spawn(move || {
                // Marks the worker dead for /readyz when the thread ends, even by a panic.
                let _alive = status.running(i);
                let res = if legacy {
                    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                        .enable_timer()
                        .build()
                        .map(|mut rt| rt.block_on(runtime::run_worker(live, l, i, h3)))
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
                        .map(|mut rt| rt.block_on(runtime::run_worker(live, l, i, h3)))
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
        local_addr,
        http3_addr,
        admin_addr,
        tls,
        driver: driver_name,
        reloader,
        threads,
    })
}
