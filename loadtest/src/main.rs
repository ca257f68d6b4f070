//! `mcplb-load`: command-line shell over the `loadtest` library: `mock` runs a
//! mock MCP backend, `run` drives load against an MCP endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use loadtest::scenario::parse_duration;
use loadtest::{run_h3, run_load, H3Options, LoadOptions, Scenario};
use mock::{MockConfig, MockServer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// MCP load generator and mock MCP backend.
#[derive(Parser, Debug)]
#[command(name = "mcplb-load", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run a mock MCP server (Streamable HTTP on /mcp) until Ctrl-C or SIGTERM.
    Mock {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:3001")]
        listen: SocketAddr,
        /// Backend name (serverInfo.name, whoami, session id prefix).
        #[arg(long, default_value = "mock")]
        name: String,
        /// Delay added to every tools/call, in ms.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Issue no sessions; accept any request without one.
        #[arg(long)]
        stateless: bool,
        /// Worker threads (SO_REUSEPORT on the same port).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Answer GET with 405 instead of opening an SSE stream.
        #[arg(long)]
        no_get_stream: bool,
        /// Answer tools/call as an SSE stream when the client accepts one (as the SDKs'
        /// servers do): head, result event and end of stream, each written on its own.
        #[arg(long)]
        sse: bool,
    },
    /// Drive load (tools/call, or a scenario's method mix) against an MCP
    /// endpoint and report latency.
    Run(Box<RunArgs>),
    /// Drive MCP over HTTP/3 (QUIC): initialize (unless stateless), then tools/call one at a
    /// time on each connection; prints the answered calls. The server's certificate is not
    /// verified (loopback use).
    H3(H3Args),
}

/// Options of `mcplb-load h3`.
#[derive(Args, Debug)]
struct H3Args {
    /// MCP endpoint URL (https://host:port/path; the UDP port of `[proxy.http3]`).
    #[arg(long)]
    url: String,
    /// QUIC connections, one request in flight each.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// How long calls are sent (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many calls in all, if sooner than the duration.
    #[arg(long)]
    requests: Option<u64>,
    /// Tool to call.
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Tool arguments as JSON.
    #[arg(long, default_value = r#"{"text":"hello"}"#)]
    args: String,
    /// 2026-07-28 stateless requests: no initialize, no session.
    #[arg(long)]
    stateless: bool,
    /// Close a connection after this many calls and open a new one (new handshake and
    /// session); 0: keep it.
    #[arg(long, default_value_t = 0)]
    calls_per_connection: u64,
    /// Per-exchange timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    json: bool,
}

/// Options of `mcplb-load run`. Flags given on the command line override the
/// scenario file; the file overrides the defaults.
#[derive(Args, Debug)]
struct RunArgs {
    /// MCP endpoint URL.
    #[arg(long, default_value = "http://127.0.0.1:8080/mcp")]
    url: String,
    /// Concurrent connections (virtual users).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Measured duration (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "requests")]
    duration: Duration,
    /// Stop after this many measured requests instead.
    #[arg(long)]
    requests: Option<u64>,
    /// Open loop: total requests per second (latency from scheduled time).
    #[arg(long)]
    rate: Option<f64>,
    /// Warm-up time whose results are discarded.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Tool to call (overrides a scenario's method mix).
    #[arg(long, default_value = "echo")]
    tool: String,
    /// Tool arguments as JSON (overrides a scenario's method mix).
    #[arg(long, default_value = r#"{"text":"hello"}"#)]
    args: String,
    /// 2026-07-28 stateless requests: no initialize, no session.
    #[arg(long)]
    stateless: bool,
    /// MCP sessions, spread over the connections (default: one per connection).
    #[arg(long, conflicts_with = "stateless")]
    sessions: Option<usize>,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Per-request timeout.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Scenario file (TOML): run options and a weighted method mix.
    #[arg(long, value_name = "FILE.toml")]
    scenario: Option<PathBuf>,
    /// Write the latency percentile distribution (HdrHistogram .hgrm text, ms).
    #[arg(long, value_name = "FILE")]
    hgrm: Option<PathBuf>,
    /// Write an SVG plot of the latency percentile spectrum.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// No per-second progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// A process (the proxy under test) whose CPU time and context switches over the measured
    /// window the report gives (`watched` in --json): a benchmark's CPU per call without the
    /// sessions' set-up, the warm-up and the closing.
    #[arg(long, value_name = "PID")]
    watch_pid: Option<u32>,
}

impl RunArgs {
    /// The run's options: scenario file (if any) over defaults, command-line
    /// flags over both. `given(id)` tells whether a flag was on the command line.
    fn options(&self, given: impl Fn(&str) -> bool) -> anyhow::Result<LoadOptions> {
        let arguments: serde_json::Value = serde_json::from_str(&self.args)
            .map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?;
        let cli = LoadOptions {
            url: self.url.clone(),
            connections: self.connections,
            duration: self.duration,
            requests: self.requests,
            rate: self.rate,
            warmup: self.warmup,
            tool: self.tool.clone(),
            arguments,
            calls: Vec::new(),
            stateless: self.stateless,
            sessions: self.sessions,
            threads: self.threads,
            timeout: self.timeout,
            progress: !self.quiet,
            watch_pid: self.watch_pid,
        };
        let Some(path) = &self.scenario else {
            return Ok(cli);
        };
        let scenario = Scenario::load(path)?;
        let mut o = scenario.apply(cli.clone())?;
        if given("url") {
            o.url = cli.url.clone();
        }
        if given("connections") {
            o.connections = cli.connections;
        }
        if given("requests") {
            o.requests = cli.requests;
        } else if given("duration") {
            o.duration = cli.duration;
            o.requests = None;
        }
        if given("rate") {
            o.rate = cli.rate;
        }
        if given("warmup") {
            o.warmup = cli.warmup;
        }
        if given("stateless") {
            o.stateless = true;
            o.sessions = None;
        }
        if given("sessions") {
            o.sessions = cli.sessions;
        }
        if given("threads") {
            o.threads = cli.threads;
        }
        if given("timeout") {
            o.timeout = cli.timeout;
        }
        if given("tool") || given("args") {
            o.calls.clear();
            if given("tool") {
                o.tool = cli.tool.clone();
            }
            if given("args") {
                o.arguments = cli.arguments.clone();
            }
        }
        Ok(o)
    }
}

fn main() -> anyhow::Result<()> {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.cmd {
        Cmd::Mock {
            listen,
            name,
            latency_ms,
            stateless,
            threads,
            no_get_stream,
            sse,
        } => {
            let stop = Arc::new(AtomicBool::new(false));
            let flag = stop.clone();
            ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))?;
            let cfg = MockConfig {
                name,
                stateless,
                latency: Duration::from_millis(latency_ms),
                threads,
                get_stream: !no_get_stream,
                sse_calls: sse,
                ..MockConfig::default()
            };
            let server = MockServer::start(cfg, listen)?;
            eprintln!("mock MCP server listening on {}", server.url());
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            server.stop();
            Ok(())
        }
        Cmd::Run(args) => {
            let sub = matches.subcommand_matches("run");
            let given =
                |id: &str| sub.and_then(|m| m.value_source(id)) == Some(ValueSource::CommandLine);
            let opts = args.options(given)?;
            let report = run_load(opts)?;
            if let Some(p) = &args.hgrm {
                std::fs::write(p, loadtest::output::hgrm(&report.histogram))
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
            }
            if let Some(p) = &args.svg {
                std::fs::write(p, loadtest::output::svg(&report))
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", p.display()))?;
            }
            if args.json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Cmd::H3(a) => {
            let arguments: serde_json::Value = serde_json::from_str(&a.args)
                .map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?;
            let report = run_h3(&H3Options {
                url: a.url,
                connections: a.connections,
                duration: a.duration,
                requests: a.requests,
                stateless: a.stateless,
                tool: a.tool,
                arguments,
                calls_per_connection: a.calls_per_connection,
                timeout: a.timeout,
            })?;
            if a.json {
                println!("{}", report.to_json());
            } else {
                println!(
                    "{} calls answered, {} errors, {} connections, {} setup exchanges in {:.1} s",
                    report.ok,
                    report.errors,
                    report.connections,
                    report.setup,
                    report.millis as f64 / 1000.0
                );
            }
            Ok(())
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{parse_duration, Cli, Cmd};
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};
    use std::time::Duration;

    #[test]
    fn flags_override_scenario() {
        let dir = std::env::temp_dir().join(format!("mcplb-load-sc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let path = dir.join("s.toml");
        std::fs::write(
            &path,
            "url = \"http://10.0.0.1:9/mcp\"\nconnections = 8\nrequests = 50\nrate = 100\n\
             [[calls]]\nmethod = \"tools/list\"\n",
        )
        .unwrap_or_default();
        let opts = |extra: &[&str]| {
            let mut argv = vec![
                "mcplb-load",
                "run",
                "--scenario",
                path.to_str().unwrap_or(""),
            ];
            argv.extend_from_slice(extra);
            let m = Cli::command().try_get_matches_from(argv).ok()?;
            let cli = Cli::from_arg_matches(&m).ok()?;
            let sub = m.subcommand_matches("run")?;
            let Cmd::Run(args) = cli.cmd else { return None };
            args.options(|id| sub.value_source(id) == Some(ValueSource::CommandLine))
                .ok()
        };
        let o = opts(&[]).expect("scenario only");
        assert_eq!(o.url, "http://10.0.0.1:9/mcp");
        assert_eq!(
            (o.connections, o.requests, o.rate),
            (8, Some(50), Some(100.0))
        );
        assert_eq!(o.calls.len(), 1);
        assert_eq!(o.warmup, Duration::from_secs(1));
        let o = opts(&["--connections", "2", "--duration", "3s", "--tool", "whoami"])
            .expect("with flags");
        assert_eq!((o.connections, o.requests), (2, None));
        assert_eq!(o.duration, Duration::from_secs(3));
        assert!(o.calls.is_empty());
        assert_eq!(o.tool, "whoami");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
    }
}
