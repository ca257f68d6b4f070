//! The `mcplb` command: a thin shell over the library (`run`, `check`, `demo`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mcplb: a high-performance proxy and load balancer for MCP servers.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the proxy with a config file.
    Run {
        /// Path to the TOML config.
        #[arg(long, short)]
        config: PathBuf,
        /// Event driver: auto (io_uring, else epoll), io-uring, or legacy (epoll).
        #[arg(long, value_enum, default_value_t = mcplb::Driver::Auto)]
        driver: mcplb::Driver,
    },
    /// Validate a config file without starting (exit 0 when valid).
    Check {
        /// Path to the TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the admin port's latency percentile table in the terminal.
    Stats {
        /// Admin address, e.g. 127.0.0.1:9901.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Admin token, when the admin port requires one.
        #[arg(long, env = "MCPLB_ADMIN_TOKEN")]
        token: Option<String>,
    },
    /// Ask the admin port for a health path, for container health checks: exit 0 when it
    /// answers 200, 1 otherwise (what answered goes to stderr).
    Probe {
        /// `/healthz` (the process answers) or `/readyz` (every server group has a backend
        /// to send to).
        #[arg(value_parser = probe_path)]
        path: String,
        /// Take the admin address and token from this config file (the one mcplb runs
        /// with); an admin address of every interface (0.0.0.0, ::) is asked on loopback.
        #[arg(long, short, conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// Admin address, without --config.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: String,
        /// Admin token, when the admin port requires one and --config gives none.
        #[arg(long, env = "MCPLB_ADMIN_TOKEN")]
        token: Option<String>,
        /// Give up after this long without an answer (connect, and each read).
        #[arg(long, default_value = "2s", value_parser = probe_timeout)]
        timeout: std::time::Duration,
    },
    /// Start mock MCP backends and the proxy in one process, and walk through a session.
    Demo {
        /// Exit after the walk-through instead of staying up until Ctrl-C.
        #[arg(long)]
        exit: bool,
    },
}

/// A probe path: one absolute path, without spaces or control characters (it goes into the
/// request line as it is).
fn probe_path(s: &str) -> Result<String, String> {
    if s.starts_with('/') && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(s.to_string())
    } else {
        Err(format!("`{s}`: give a path such as /healthz or /readyz"))
    }
}

fn probe_timeout(s: &str) -> Result<std::time::Duration, String> {
    mcplb::config::parse_duration(s)
}

/// Logs to stderr through a writer thread (a worker never waits for stderr); the guard writes
/// out what is queued when `main` returns.
fn init_logs() -> mcplb::control::logs::LogGuard {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MCPLB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    mcplb::control::logs::init(filter)
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and every thread it starts later).
#[allow(unsafe_code)]
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain libc signal-mask calls on a zeroed, then initialized, sigset_t.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// Waits for one of the blocked signals; returns its name.
#[allow(unsafe_code)]
fn wait_signal(set: &libc::sigset_t) -> &'static str {
    let mut sig: libc::c_int = 0;
    // SAFETY: sigwait on a valid, initialized set, writing into a local int.
    let rc = unsafe { libc::sigwait(set, &mut sig) };
    match (rc, sig) {
        (0, libc::SIGINT) => "SIGINT",
        (0, libc::SIGTERM) => "SIGTERM",
        (0, libc::SIGHUP) => "SIGHUP",
        _ => "signal",
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` takes SIGINT, SIGTERM and SIGHUP with sigwait: they are blocked before any thread
    // starts (the log writer's included), so every thread inherits the mask and none of them
    // can receive one and die of its default action.
    let signals = matches!(cli.cmd, Cmd::Run { .. }).then(block_signals);
    let _logs = init_logs();
    match cli.cmd {
        Cmd::Check { config } => match mcplb::Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} server group(s), {} backend(s))",
                    config.display(),
                    c.servers.len(),
                    c.servers.iter().map(|g| g.backends.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{}: {e}", config.display());
                ExitCode::from(2)
            }
        },
        Cmd::Run { config, driver } => {
            let cfg = match mcplb::Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{}: {e}", config.display());
                    return ExitCode::from(2);
                }
            };
            let workers = cfg.proxy.workers;
            let grace = cfg.proxy.shutdown_timeout;
            let signals = signals.unwrap_or_else(block_signals);
            match mcplb::start_with(cfg, driver, Some(config.clone())) {
                Ok(p) => {
                    println!(
                        "mcplb listening on {} ({} worker(s), {} driver)",
                        p.local_addr, workers, p.driver
                    );
                    if let Some(a) = p.http3_addr {
                        println!("mcplb HTTP/3 on udp://{a}");
                    }
                    if let Some(a) = p.admin_addr {
                        println!("mcplb admin on http://{a}/ (stats: /stats, /metrics)");
                    }
                    let sig = loop {
                        match wait_signal(&signals) {
                            // SIGHUP: reload the config file (refused, with every problem
                            // logged, when it is not valid; the running one stays).
                            "SIGHUP" => match p.reloader.reload() {
                                Ok(changes) => tracing::info!(
                                    changes = changes.len(),
                                    "SIGHUP: configuration reloaded"
                                ),
                                Err(errors) => {
                                    for e in &errors {
                                        tracing::error!(problem = %e, "SIGHUP: reload refused");
                                    }
                                }
                            },
                            other => break other,
                        }
                    };
                    tracing::info!(
                        signal = sig,
                        grace_s = grace.as_secs(),
                        "shutting down: no new connections, finishing open requests"
                    );
                    let left = p.shutdown(grace);
                    if left > 0 {
                        tracing::warn!(
                            connections = left,
                            "shutdown deadline passed with connections still open"
                        );
                    } else {
                        tracing::info!("all connections finished; bye");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcplb: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Stats { admin, token } => {
            match mcplb::control::admin::print_stats(&admin, token.as_deref()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("mcplb stats: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Probe {
            path,
            config,
            admin,
            token,
            timeout,
        } => {
            let target = match config {
                Some(file) => mcplb::control::admin::probe_target(&file)
                    .map(|(addr, from_file)| (addr, from_file.or(token))),
                None => Ok((admin, token)),
            };
            let answer = target.and_then(|(addr, token)| {
                mcplb::control::admin::probe(&addr, &path, token.as_deref(), timeout)
            });
            match answer {
                Ok(body) => {
                    println!("{}", body.trim_end());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("mcplb probe: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Demo { exit } => match mcplb::demo::run_with(!exit) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("demo failed: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
