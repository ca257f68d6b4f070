//! `mcplb-load`: command-line shell over the `loadtest` library: `mock` runs a
//! mock MCP backend, `run` drives load against an MCP endpoint.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use loadtest::{run_load, LoadOptions, MockConfig};

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
    },
    /// Drive tools/call load against an MCP endpoint and report latency.
    Run {
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
        /// Tool to call.
        #[arg(long, default_value = "echo")]
        tool: String,
        /// Tool arguments as JSON.
        #[arg(long, default_value = r#"{"text":"hello"}"#)]
        args: String,
        /// 2026-07-28 stateless requests: no initialize, no session.
        #[arg(long)]
        stateless: bool,
        /// Worker threads.
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Per-request timeout.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// No per-second progress lines on stderr.
        #[arg(long)]
        quiet: bool,
    },
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration: {s}"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s}: {e}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Mock {
            listen,
            name,
            latency_ms,
            stateless,
            threads,
            no_get_stream,
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
                ..MockConfig::default()
            };
            let server = loadtest::MockServer::start(cfg, listen)?;
            eprintln!("mock MCP server listening on {}", server.url());
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            server.stop();
            Ok(())
        }
        Cmd::Run {
            url,
            connections,
            duration,
            requests,
            rate,
            warmup,
            tool,
            args,
            stateless,
            threads,
            timeout,
            json,
            quiet,
        } => {
            let arguments: serde_json::Value = serde_json::from_str(&args)
                .map_err(|e| anyhow::anyhow!("--args is not JSON: {e}"))?;
            let report = run_load(LoadOptions {
                url,
                connections,
                duration,
                requests,
                rate,
                warmup,
                tool,
                arguments,
                stateless,
                threads,
                timeout,
                progress: !quiet,
            })?;
            if json {
                println!("{}", report.to_json());
            } else {
                println!("{report}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

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
