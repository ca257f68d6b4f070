//! `mcplb demo`: mock MCP backends and the proxy in one process, then a short MCP session
//! through the proxy that shows stickiness, sealed session ids and SSE streaming, and a
//! short load run ([`load`]).
//!
//! [`HttpClient`] (mcplb's one blocking HTTP/1.1 client, [`crate::http::client`]) is
//! re-exported here: the demo and the integration tests speak MCP to a running proxy with it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};

pub use crate::http::client::{HttpClient, Response};

mod load;

fn rpc(id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn initialize(c: &mut HttpClient) -> anyhow::Result<(String, String)> {
    let r = c.mcp(
        "/mcp",
        None,
        &rpc(
            1,
            "initialize",
            serde_json::json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "mcplb-demo", "version": "0.1"}}),
        ),
    )?;
    let sid = r
        .header("mcp-session-id")
        .ok_or_else(|| {
            anyhow!(
                "initialize answer carried no session id (status {})",
                r.status
            )
        })?
        .to_string();
    let server = r.json()?["result"]["serverInfo"]["name"]
        .as_str()
        .unwrap_or("?")
        .to_string();
    let n = c.mcp(
        "/mcp",
        Some(&sid),
        &serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )?;
    if n.status != 202 {
        bail!("notifications/initialized answered {}", n.status);
    }
    Ok((sid, server))
}

fn whoami(c: &mut HttpClient, sid: &str, id: u64) -> anyhow::Result<String> {
    let r = c.mcp(
        "/mcp",
        Some(sid),
        &rpc(
            id,
            "tools/call",
            serde_json::json!({"name": "whoami", "arguments": {}}),
        ),
    )?;
    Ok(r.json()?["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or("?")
        .to_string())
}

/// Runs the demo. With `wait`, stays up until Ctrl-C so a real MCP client can be pointed at it.
pub fn run_with(wait: bool) -> anyhow::Result<()> {
    let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut mocks = Vec::new();
    for name in ["alpha", "beta"] {
        let cfg = mock::MockConfig {
            name: name.to_string(),
            progress_events: 3,
            progress_interval: Duration::from_millis(300),
            ..Default::default()
        };
        mocks.push(mock::MockServer::start(cfg, loopback)?);
    }
    let backends: Vec<String> = mocks.iter().map(|m| format!("\"{}\"", m.url())).collect();
    let port_free = std::net::TcpListener::bind("127.0.0.1:8080").is_ok();
    let listen = if port_free {
        "127.0.0.1:8080"
    } else {
        "127.0.0.1:0"
    };
    let admin_free = std::net::TcpListener::bind("127.0.0.1:9901").is_ok();
    let admin = if admin_free {
        "127.0.0.1:9901"
    } else {
        "127.0.0.1:0"
    };
    let text = format!(
        "[proxy]\nlisten = \"{listen}\"\nworkers = 2\n\n[admin]\nlisten = \"{admin}\"\n\n[[servers]]\nname = \"demo\"\npath = \"/mcp\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let config = crate::Config::parse(&text).map_err(|e| anyhow!("{e}"))?;
    let proxy = crate::start(config, crate::Driver::Auto)?;
    let addr = proxy.local_addr;
    println!("== mcplb demo");
    println!(
        "   mock MCP backends: alpha at {}, beta at {}",
        mocks[0].url(),
        mocks[1].url()
    );
    println!(
        "   proxy: http://{addr}/mcp  ({} driver, 2 workers)\n",
        proxy.driver
    );

    let mut c = HttpClient::connect(addr)?;
    let (sid, server) = initialize(&mut c)?;
    println!("1. initialize -> served by {server}");
    println!(
        "   the client holds a sealed session id ({} chars): {}…",
        sid.len(),
        &sid[..sid.len().min(24)]
    );
    let tools = c.mcp(
        "/mcp",
        Some(&sid),
        &rpc(2, "tools/list", serde_json::json!({})),
    )?;
    let names: Vec<String> = tools.json()?["result"]["tools"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    println!("2. tools/list -> {}", names.join(", "));
    let who: Vec<String> = (0..3)
        .map(|i| whoami(&mut c, &sid, 10 + i))
        .collect::<Result<_, _>>()?;
    println!(
        "3. tools/call whoami x3 in this session -> {} (sticky)",
        who.join(", ")
    );
    let mut c2 = HttpClient::connect(addr)?;
    let (sid2, server2) = initialize(&mut c2)?;
    println!(
        "4. a second session starts on {server2}; its whoami -> {}",
        whoami(&mut c2, &sid2, 20)?
    );

    let start = Instant::now();
    let r = c.mcp(
        "/mcp",
        Some(&sid),
        &serde_json::json!({"jsonrpc": "2.0", "id": 30, "method": "tools/call",
            "params": {"name": "progress", "arguments": {}, "_meta": {"progressToken": "demo-1"}}}),
    )?;
    println!("5. tools/call progress answered as an SSE stream, forwarded event by event:");
    for (at, data) in &r.events {
        let v: serde_json::Value = serde_json::from_str(data).unwrap_or_default();
        let what = if v.get("method").is_some() {
            format!(
                "progress {}/{}",
                v["params"]["progress"], v["params"]["total"]
            )
        } else {
            "final result".to_string()
        };
        println!("   +{:>4} ms  {what}", at.duration_since(start).as_millis());
    }
    let bad = c.mcp(
        "/mcp",
        Some("not-a-session"),
        &rpc(40, "ping", serde_json::json!({})),
    )?;
    println!(
        "6. an unknown session id -> HTTP {} (the client re-initializes, as with a real server)",
        bad.status
    );
    let d = c.request("DELETE", "/mcp", &[("mcp-session-id", sid.as_str())], b"")?;
    println!("7. DELETE ends the session -> HTTP {}", d.status);

    let run = load::DemoLoad {
        rate: 2000.0,
        sessions: 8,
        warmup: Duration::from_millis(500),
        duration: Duration::from_secs(3),
    };
    println!(
        "8. a short open-loop load through the proxy: {} tools/call per second for {} s, {} sessions",
        run.rate,
        run.duration.as_secs(),
        run.sessions
    );
    println!("{}", load::run(addr, run)?);
    println!(
        "   (a blocking client thread per session; for real measurements: \
         mcplb-load run --url http://{addr}/mcp --rate {})",
        run.rate
    );
    println!("\nPoint any MCP client (Streamable HTTP) at http://{addr}/mcp");
    if let Some(a) = proxy.admin_addr {
        println!("Latency percentiles per backend, method and tool: http://{a}/ (live page), /stats, /metrics, or `mcplb stats --admin {a}`");
    }
    if wait {
        println!("mcplb demo is running; press Ctrl-C to stop.");
        proxy.join();
    }
    drop(mocks);
    Ok(())
}

/// Runs the demo and stays up until Ctrl-C.
pub fn run() -> anyhow::Result<()> {
    run_with(true)
}
