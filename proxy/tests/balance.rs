//! Load balancing, health and failover through a real `mcplb`: active MCP health checks,
//! passive outlier ejection, draining from the admin port, hashing by tool and least-request.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn admin_json(p: &Proxy, method: &str, path: &str) -> (u16, serde_json::Value) {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request(method, path, &[], b"").unwrap();
    (r.status, r.json().unwrap_or_default())
}

fn state_of(p: &Proxy, name: &str) -> String {
    let (_, v) = admin_json(p, "GET", "/backends");
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn group_config(backends: &[String], group_extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|u| format!("{{ url = \"{u}\", name = \"{}\" }}", &u[7..u.len() - 4]))
        .collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nconnect_timeout = \"1s\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\n{group_extra}\n",
        list.join(", ")
    )
}

#[test]
fn active_checks_take_a_dead_backend_out_and_its_sessions_get_404() {
    let a = mock("a");
    let b = mock("b");
    let (au, bu) = (a.url(), b.url());
    let bname = b.addr().to_string();
    let cfg = group_config(
        &[au, bu],
        "[servers.health]\ninterval = \"200ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 2\nmethod = \"tools/list\"\n",
    );
    let p = start_proxy(&cfg, "auto");
    wait_for("both healthy", || {
        admin_json(&p, "GET", "/readyz").0 == 200 && state_of(&p, &bname) == "healthy"
    });
    // The checker initialized a session of its own on each backend and pings in it.
    wait_for("checker sessions", || {
        a.sessions() >= 1 && b.sessions() >= 1
    });
    // A client session that lands on b.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let mut on_b = None;
    for _ in 0..6 {
        let (sid, name) = init_session(&mut c);
        if name == "b" {
            on_b = Some(sid);
        }
    }
    let on_b = on_b.expect("a session on b");
    drop(b);
    wait_for("b unhealthy", || state_of(&p, &bname) == "unhealthy");
    // New sessions avoid b; b's session gets 404 (the client re-initializes).
    for _ in 0..6 {
        let (_, name) = init_session(&mut c);
        assert_eq!(name, "a");
    }
    let r = c
        .mcp("/mcp", Some(&on_b), &rpc(9, "ping", json!({})))
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(admin_json(&p, "GET", "/readyz").0, 200);
    drop(a);
    wait_for("not ready", || admin_json(&p, "GET", "/readyz").0 == 503);
}

#[test]
fn passive_ejection_and_failover_of_new_sessions() {
    let a = mock("a");
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/mcp", dead.local_addr().unwrap());
    let dead_name = dead.local_addr().unwrap().to_string();
    drop(dead);
    let p = start_proxy(&group_config(&[a.url(), dead_url], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    // Every new session succeeds: refused connects are retried on the live backend.
    for _ in 0..8 {
        let (_, name) = init_session(&mut c);
        assert_eq!(name, "a");
    }
    // Three consecutive connect failures eject the dead backend (on at least one core).
    wait_for("ejection", || state_of(&p, &dead_name) == "ejected");
    let (_, v) = admin_json(&p, "GET", "/backends");
    let dead_entry = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == dead_name.as_str())
        .cloned()
        .unwrap();
    assert!(dead_entry["ejections"].as_u64().unwrap() >= 1);
    assert_eq!(dead_entry["eligible"], false);
}

#[test]
fn draining_sends_new_sessions_elsewhere_and_keeps_old_ones() {
    let a = mock("a");
    let b = mock("b");
    let bname = b.addr().to_string();
    let p = start_proxy(&group_config(&[a.url(), b.url()], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let mut on_b = None;
    for _ in 0..4 {
        let (sid, name) = init_session(&mut c);
        if name == "b" {
            on_b = Some(sid);
        }
    }
    let on_b = on_b.expect("a session on b");
    let (status, _) = admin_json(&p, "POST", &format!("/backends/{bname}/drain"));
    assert_eq!(status, 200);
    assert_eq!(state_of(&p, &bname), "draining");
    for _ in 0..6 {
        assert_eq!(init_session(&mut c).1, "a");
    }
    assert_eq!(
        whoami(&mut c, &on_b),
        "b",
        "a draining backend keeps its sessions"
    );
    assert_eq!(admin_json(&p, "POST", "/backends/nope/drain").0, 404);
    admin_json(&p, "POST", &format!("/backends/{bname}/undrain"));
    assert_eq!(state_of(&p, &bname), "healthy");
}

fn stateless_call(c: &mut HttpClient, tool: &str, id: u64) -> serde_json::Value {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {"ms": 30}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", tool),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    r.json().unwrap()
}

#[test]
fn hashing_by_tool_keeps_each_tool_on_one_backend() {
    let ms: Vec<MockServer> = ["x", "y", "z"]
        .iter()
        .map(|n| {
            mock_with(MockConfig {
                name: (*n).into(),
                stateless: true,
                ..Default::default()
            })
        })
        .collect();
    let urls: Vec<String> = ms.iter().map(|m| m.url()).collect();
    let p = start_proxy(
        &group_config(&urls, "balance = \"hash\"\nhash_key = \"tool\"\n"),
        "auto",
    );
    for tool in ["echo", "whoami", "big"] {
        for i in 0..10 {
            // Fresh connections: any core must hash the tool to the same backend.
            let mut c = HttpClient::connect(p.addr).unwrap();
            stateless_call(&mut c, tool, i);
        }
        let per_backend: Vec<u64> = ms.iter().map(|m| m.tool_calls(tool)).collect();
        assert_eq!(per_backend.iter().sum::<u64>(), 10);
        assert!(
            per_backend.contains(&10),
            "{tool} spread over backends: {per_backend:?}"
        );
    }
}

#[test]
fn least_request_prefers_the_faster_backend() {
    let fast = mock_with(MockConfig {
        name: "fast".into(),
        stateless: true,
        ..Default::default()
    });
    let slow = mock_with(MockConfig {
        name: "slow".into(),
        stateless: true,
        latency: Duration::from_millis(40),
        ..Default::default()
    });
    let p = start_proxy(
        &group_config(&[fast.url(), slow.url()], "balance = \"least-request\"\n"),
        "auto",
    );
    let mut c = HttpClient::connect(p.addr).unwrap();
    for i in 0..60 {
        stateless_call(&mut c, "echo", i);
    }
    let (f, s) = (fast.tool_calls("echo"), slow.tool_calls("echo"));
    assert_eq!(f + s, 60);
    assert!(f >= 45, "fast {f}, slow {s}");
}

/// A health-check warning says why, once per change of state, without debug logging: a
/// backend that refuses connections and one whose server lacks the check's method are told
/// degraded, then unhealthy, with their reason at warn; their further failed checks are
/// counted, not printed.
#[test]
fn health_warnings_say_why_once_per_change() {
    let m = mock("no-prompts");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let health =
        "[servers.health]\ninterval = \"100ms\"\ntimeout = \"1s\"\nunhealthy_threshold = 2\n";
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"down\"\npath = \"/down\"\nbackends = [{{ url = \"http://{closed}/mcp\", name = \"gone\" }}]\n{health}\n\
         [[servers]]\nname = \"up\"\npath = \"/mcp\"\nbackends = [{{ url = \"{}\", name = \"noprompts\" }}]\n{health}method = \"prompts/list\"\n",
        m.url()
    );
    let log = std::env::temp_dir().join(format!("mcplb-health-{}.log", std::process::id()));
    let p = start_proxy_logged(&cfg, "auto", Some(("warn", &log)));
    let read = || std::fs::read_to_string(&log).unwrap_or_default();
    let refused = "backend unhealthy after 2 failed health checks: connection refused";
    let jsonrpc = "backend unhealthy after 2 failed health checks: `prompts/list` answered \
                   JSON-RPC error -32601: Method not found";
    wait_for("both backends told unhealthy", || {
        let l = read();
        l.contains(refused) && l.contains(jsonrpc)
    });
    // Ten more failed checks of the backend that answers (three messages each: initialize,
    // notifications/initialized, prompts/list), and as many of the other on the same interval.
    let seen = m.requests();
    wait_for("ten more checks", || m.requests() >= seen + 30);
    let l = read();
    let lines = |what: &str| l.lines().filter(|x| x.contains(what)).count();
    assert_eq!(lines(refused), 1, "{l}");
    assert_eq!(lines(jsonrpc), 1, "{l}");
    assert_eq!(
        lines("backend degraded: health check failed: connection refused"),
        1,
        "{l}"
    );
    assert_eq!(
        lines("backend degraded: health check failed: `prompts/list` answered"),
        1,
        "{l}"
    );
    assert!(l.lines().all(|x| !x.contains("DEBUG")), "{l}");
    assert!(
        l.contains("reason=\"refused\"") || l.contains("reason=refused"),
        "{l}"
    );
    drop(p);
    let _ = std::fs::remove_file(&log);
}
