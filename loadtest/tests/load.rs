//! Tests of the load generator against the mock backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use loadtest::{run_load, CallSpec, LoadOptions};
use mock::{MockConfig, MockServer};
use serde_json::json;

fn mock(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn opts(url: String) -> LoadOptions {
    LoadOptions {
        url,
        connections: 4,
        warmup: Duration::ZERO,
        threads: 2,
        timeout: Duration::from_secs(5),
        ..LoadOptions::default()
    }
}

#[test]
fn closed_loop_fixed_requests() {
    let server = mock(MockConfig::default());
    let report = run_load(LoadOptions {
        requests: Some(500),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 500, "{report}");
    assert_eq!(report.errors.total(), 0, "{report}");
    assert_eq!(server.tool_calls("echo"), 500);
    // 4 initializes + 4 notifications/initialized + 500 calls.
    assert_eq!(server.requests(), 508);
    assert!(report.throughput() > 0.0);
    assert!(report.percentile(50.0) > 0);
    let j = report.to_json();
    assert_eq!(j["ok"], 500);
    assert_eq!(j["errors"]["total"], 0);
    assert!(j["latency_us"]["p99.9"].is_u64());
    let text = report.to_string();
    assert!(text.contains("p99.99"), "{text}");
}

#[test]
fn open_loop_rate_and_latency_from_schedule() {
    let server = mock(MockConfig {
        latency: Duration::from_millis(20),
        ..MockConfig::default()
    });
    // 1 connection, 100 req/s but each call takes >= 20 ms: the connection
    // keeps up; latency must be at least the server's latency.
    let report = run_load(LoadOptions {
        connections: 1,
        threads: 1,
        rate: Some(40.0),
        duration: Duration::from_millis(1000),
        ..opts(server.url())
    })
    .unwrap();
    assert!((35..=45).contains(&report.ok), "{report}");
    assert!(report.percentile(50.0) >= 20_000, "{report}");
    // Overload one connection: 200 req/s at 20 ms each can't be served, so
    // queueing must show in the latency (coordinated omission not hidden).
    let report = run_load(LoadOptions {
        connections: 1,
        threads: 1,
        rate: Some(200.0),
        duration: Duration::from_millis(1000),
        ..opts(server.url())
    })
    .unwrap();
    assert!(report.histogram.max() > 300_000, "{report}");
}

#[test]
fn sessions_spread_over_connections() {
    let server = mock(MockConfig::default());
    // 10 sessions over 3 connections (4, 3 and 3 each), every call in turn.
    let report = run_load(LoadOptions {
        connections: 3,
        sessions: Some(10),
        requests: Some(300),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 300, "{report}");
    assert_eq!(report.errors.total(), 0, "{report}");
    assert_eq!(report.sessions, 10);
    assert_eq!(server.sessions(), 10);
    // 10 initialize + 10 notifications/initialized + 300 calls.
    assert_eq!(server.requests(), 320);
    assert!(report.to_string().contains("3 connections, 10 sessions"));
}

#[test]
fn stateless_mode() {
    let server = mock(MockConfig {
        stateless: true,
        ..MockConfig::default()
    });
    let report = run_load(LoadOptions {
        requests: Some(100),
        stateless: true,
        tool: "whoami".into(),
        arguments: json!({}),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 100, "{report}");
    assert_eq!(server.requests(), 100);
    assert_eq!(
        server.last_header("mcp-protocol-version").as_deref(),
        Some("2026-07-28")
    );
}

#[test]
fn errors_by_kind() {
    let server = mock(MockConfig::default());
    let report = run_load(LoadOptions {
        requests: Some(50),
        tool: "fail".into(),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 0);
    assert_eq!(report.errors.jsonrpc, 50, "{report}");
    assert_eq!(report.errors.http_status, 0, "{report}");

    // A tool that ran and failed (`isError: true` in a JSON-RPC result) is a
    // failure of its own kind, not a success.
    let report = run_load(LoadOptions {
        requests: Some(40),
        tool: "tool_error".into(),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 0, "{report}");
    assert_eq!(report.errors.tool, 40, "{report}");
    assert_eq!(report.errors.jsonrpc, 0, "{report}");
    assert_eq!(report.errors.total(), 40, "{report}");
    assert_eq!(report.to_json()["errors"]["tool"], 40);
    let text = report.to_string();
    assert!(text.contains("0 ok, 40 errors"), "{text}");
    assert!(text.contains("tool (isError) 40"), "{text}");
    // In a mix, only the failing call's answers count against it (one
    // connection, so the mix alternates exactly).
    let report = run_load(LoadOptions {
        requests: Some(40),
        connections: 1,
        threads: 1,
        calls: vec![
            CallSpec::tool_call("echo", json!({})),
            CallSpec::tool_call("tool_error", json!({})),
        ],
        ..opts(server.url())
    })
    .unwrap();
    let counts: Vec<(u64, u64)> = report.calls.iter().map(|c| (c.ok, c.errors)).collect();
    assert_eq!(counts, [(20, 0), (0, 20)], "{report}");
    assert_eq!((report.ok, report.errors.tool), (20, 20), "{report}");

    // An answer whose id is not the request's (here: the same digits as a
    // string) is an id mismatch, not a success.
    let report = run_load(LoadOptions {
        requests: Some(20),
        tool: "wrong_id".into(),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 0, "{report}");
    assert_eq!(report.errors.id_mismatch, 20, "{report}");

    // HTTP errors are counted apart from JSON-RPC errors: a path the server
    // does not serve gets 404 (stateless, so no initialize fails first).
    let report = run_load(LoadOptions {
        requests: Some(30),
        stateless: true,
        ..opts(server.url().replace("/mcp", "/elsewhere"))
    })
    .unwrap();
    assert_eq!(report.ok, 0, "{report}");
    assert_eq!(report.errors.http_status, 30, "{report}");
    assert_eq!(report.errors.jsonrpc, 0, "{report}");

    // Progress tool answers over SSE: the final response is found.
    let report = run_load(LoadOptions {
        requests: Some(8),
        tool: "progress".into(),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 8, "{report}");

    // Timeouts.
    let report = run_load(LoadOptions {
        requests: Some(4),
        tool: "slow".into(),
        arguments: json!({"ms": 2000}),
        timeout: Duration::from_millis(200),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.errors.timeout, 4, "{report}");

    // Nothing listening.
    let addr = server.addr();
    drop(server);
    let report = run_load(LoadOptions {
        duration: Duration::from_millis(300),
        ..opts(format!("http://{addr}/mcp"))
    })
    .unwrap();
    assert_eq!(report.ok, 0);
    assert!(report.errors.connect > 0, "{report}");
}

#[test]
fn watched_process_cpu_over_the_window() {
    // The mock runs in this process: the window's calls cost this process CPU time.
    let server = mock(MockConfig::default());
    let report = run_load(LoadOptions {
        requests: Some(300),
        warmup: Duration::from_millis(50),
        watch_pid: Some(std::process::id()),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 300, "{report}");
    let (pid, w) = report.watched.expect("watched counters");
    assert_eq!(pid, std::process::id());
    assert!(w.run_ns > 0, "{w:?}");
    let j = report.to_json();
    assert_eq!(j["watched"]["run_ns"], w.run_ns);
    assert!(report.to_string().contains("µs CPU"), "{report}");

    // A process that is not there: the run goes on, with no figure.
    let report = run_load(LoadOptions {
        requests: Some(20),
        watch_pid: Some(u32::MAX),
        ..opts(server.url())
    })
    .unwrap();
    assert_eq!(report.ok, 20);
    assert!(report.watched.is_none());
    assert!(report.to_json()["watched"].is_null());
}
