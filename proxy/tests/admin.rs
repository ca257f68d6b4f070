//! The admin port reports what really went through a real `mcplb`: known traffic against a
//! mock backend with a fixed delay, then `/stats`, `/metrics`, `/backends`, `/healthz`,
//! `/readyz`, the live page and `mcplb stats` are checked against it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn get(admin: std::net::SocketAddr, path: &str, token: Option<&str>) -> mcplb::demo::Response {
    let mut c = HttpClient::connect(admin).unwrap();
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut h = vec![];
    if let Some(a) = &auth {
        h.push(("authorization", a.as_str()));
    }
    c.request("GET", path, &h, b"").unwrap()
}

fn config_with_admin(m: &MockServer, admin_extra: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n",
        config_for(&[m], "")
    )
    .replace("[[servers]]", "[[servers]]")
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a test: one scenario, sent traffic then every counter it must have moved, read top to bottom"
)]
fn stats_match_known_traffic() {
    let m = mock_with(MockConfig {
        name: "slow".into(),
        latency: Duration::from_millis(20),
        ..Default::default()
    });
    // The admin table must come after [[servers]] entries or before; TOML tables are fine anywhere.
    let p = start_proxy(&config_with_admin(&m, ""), "auto");
    let admin = p.admin.unwrap();
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    for i in 0..40 {
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &rpc(i, "tools/call", json!({"name": "echo", "arguments": {}})),
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for i in 0..10 {
        c.mcp("/mcp", Some(&sid), &rpc(100 + i, "tools/list", json!({})))
            .unwrap();
    }
    for _ in 0..3 {
        let r = c
            .mcp("/mcp", Some("bogus"), &rpc(1, "ping", json!({})))
            .unwrap();
        assert_eq!(r.status, 404);
    }
    // Two answers that are JSON-RPC errors from the backend.
    for i in 0..2 {
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &rpc(
                    200 + i,
                    "tools/call",
                    json!({"name": "fail", "arguments": {}}),
                ),
            )
            .unwrap();
        assert!(r.json().unwrap()["error"].is_object());
    }
    // One SSE answer (3 progress events 50 ms apart, then the result).
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc": "2.0", "id": 300, "method": "tools/call",
                "params": {"name": "progress", "arguments": {}, "_meta": {"progressToken": 1}}}),
        )
        .unwrap();
    assert_eq!(r.events.len(), 4);
    // Cores flush once a second: poll until the counts are in.
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let s = get(admin, "/stats", None).json().unwrap();
        if s["since_start"]["tools"]["echo"]["total"]["count"] == 40
            && s["counters"]["unknown_session"] == 3
            && s["counters"]["jsonrpc_errors"] == 2
            && s["since_start"]["tools"]["progress"]["total"]["count"] == 1
            && s["since_start"]["methods"]["tools/list"]["total"]["count"] == 10
        {
            break s;
        }
        assert!(Instant::now() < deadline, "stats never matched: {s}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let echo = &stats["since_start"]["tools"]["echo"];
    let p50 = echo["total"]["p50"].as_u64().unwrap();
    let up50 = echo["upstream"]["p50"].as_u64().unwrap();
    let own50 = echo["own"]["p50"].as_u64().unwrap();
    // The mock sleeps 20 ms per tools/call: total and upstream sit just above it (HDR
    // precision is 0.1 %), mcplb's own share is small.
    // (Upper bounds loose: a busy CI machine delays everything, never below the mock's sleep.)
    assert!((20_000..1_000_000).contains(&p50), "total p50 {p50}");
    assert!((20_000..1_000_000).contains(&up50), "upstream p50 {up50}");
    assert!(up50 <= p50 + p50 / 500, "upstream {up50} > total {p50}");
    assert!(own50 < 20_000, "own p50 {own50}");
    assert_eq!(stats["since_start"]["tools"]["echo"]["total"]["count"], 40);
    // initialize + notification + 40 calls + 10 lists + 2 failing calls through the backend;
    // 3 rejected by mcplb.
    let backend = &stats["since_start"]["backends"][m.addr().to_string()];
    assert_eq!(backend["total"]["count"], 55, "{stats}");
    assert_eq!(stats["since_start"]["servers"]["t"]["total"]["count"], 58);
    assert_eq!(stats["counters"]["requests"], 58);
    // The SSE answer's time to first event is recorded, and comes before its end (how long
    // before depends on the machine's load, so it is not asserted).
    let prog = &stats["since_start"]["tools"]["progress"];
    assert_eq!(prog["first_event"]["count"], 1);
    let first = prog["first_event"]["max"].as_u64().unwrap();
    let total = prog["total"]["max"].as_u64().unwrap();
    assert!(first < total, "first event {first} µs, total {total} µs");
    assert_eq!(echo["first_event"]["count"], 0);
    assert_eq!(stats["gauges"]["active_sessions"], 1);
    assert_eq!(stats["gauges"]["upstream_busy"], 0);
    assert_eq!(stats["counters"]["sessions_started"], 1);
    assert_eq!(stats["last_60s"]["tools"]["echo"]["total"]["count"], 40);
    assert!(stats["counters"]["bytes_in"].as_u64().unwrap() > 40 * 80);

    // Prometheus text: the echo histogram's +Inf bucket and count are 40, buckets monotonic.
    let metrics = String::from_utf8(get(admin, "/metrics", None).body).unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("mcplb_request_total_seconds_count{dimension=\"tool\",name=\"echo\"}")
        })
        .expect("echo count line");
    assert!(line.ends_with(" 40"), "{line}");
    assert!(metrics.contains("# TYPE mcplb_requests_total counter"));

    // Loop gaps: each tools/call held its worker's one request in flight for the mock's 20 ms
    // with nothing else to do, so each left a gap of at least 20 ms.
    let gaps = &stats["loop_gaps"];
    let long: u64 = gaps["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["le_us"].as_u64().is_none_or(|le| le >= 25_000))
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert!(long >= 40, "{gaps}");
    assert!(gaps["sum_us"].as_u64().unwrap() >= 40 * 20_000, "{gaps}");
    assert!(gaps["max_us"].as_u64().unwrap() >= 20_000, "{gaps}");
    let count = gaps["count"].as_u64().unwrap();
    assert_eq!(
        gaps["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        count
    );
    let inf = metrics
        .lines()
        .find(|l| l.starts_with("mcplb_loop_gap_seconds_bucket{le=\"+Inf\"}"))
        .expect("loop gap +Inf line");
    let inf: u64 = inf.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(inf >= count, "{inf} < {count}");
    assert!(metrics.contains("# TYPE mcplb_loop_gap_seconds histogram"));
    assert!(metrics.contains("mcplb_loop_gap_max_seconds "));

    let backends = get(admin, "/backends", None).json().unwrap();
    assert_eq!(backends["backends"][0]["requests"], 55);
    assert_eq!(backends["backends"][0]["sessions"], 1);
    assert_eq!(backends["backends"][0]["in_flight"], 0);
    // A slow call shows as in flight on its backend (cores report once a second).
    let addr = p.addr;
    let sid2 = sid.clone();
    let slow = std::thread::spawn(move || {
        HttpClient::connect(addr)
            .unwrap()
            .mcp(
                "/mcp",
                Some(&sid2),
                &rpc(
                    400,
                    "tools/call",
                    json!({"name": "slow", "arguments": {"ms": 2500}}),
                ),
            )
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    while get(admin, "/backends", None).json().unwrap()["backends"][0]["in_flight"] != 1 {
        assert!(Instant::now() < deadline, "in-flight request not shown");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(get(admin, "/healthz", None).status, 200);
    assert_eq!(get(admin, "/readyz", None).status, 200);
    let page = get(admin, "/", None);
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<script>") && !html.contains("src=\"http"));

    // The terminal view.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcplb"))
        .args(["stats", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.contains("echo") && text.contains("p99"), "{text}");
}

#[test]
fn admin_token_is_checked_on_every_request() {
    let m = mock("a");
    let p = start_proxy(&config_with_admin(&m, "token = \"s3cret\""), "auto");
    let admin = p.admin.unwrap();
    assert_eq!(get(admin, "/stats", None).status, 401);
    assert_eq!(get(admin, "/stats", Some("wrong")).status, 401);
    assert_eq!(get(admin, "/stats", Some("s3cret")).status, 200);
    // A non-loopback admin address without a token is a config error.
    let bad = "[proxy]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"0.0.0.0:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n";
    let err = mcplb::Config::parse(bad)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("admin.token"), "{err}");
}

/// Idle admin connections (nothing sent, or half a head) cost a task each, not a thread: past
/// the cap the one that has waited longest for its head is closed with a 503 to make room, so
/// a client that sends its request at once is still answered, the process's thread count
/// stays put, and a head that never completes is answered 408 after the head timeout.
#[test]
fn idle_admin_connections_add_no_thread_and_keep_no_request_out() {
    use std::io::{Read, Write};
    let m = mock("a");
    let p = start_proxy(&config_with_admin(&m, ""), "legacy");
    let admin = p.admin.unwrap();
    assert_eq!(get(admin, "/healthz", None).status, 200);
    let tasks = || {
        std::fs::read_dir(format!("/proc/{}/task", p.child.id()))
            .unwrap()
            .count()
    };
    let before = tasks();
    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = std::net::TcpStream::connect(admin).unwrap();
        if i % 3 == 0 {
            s.write_all(b"GET /stats HTTP/1.1\r\nhost: x\r\n").unwrap();
        }
        idle.push(s);
    }
    for path in ["/stats", "/metrics", "/healthz"] {
        assert_eq!(get(admin, path, None).status, 200, "{path}");
    }
    assert_eq!(
        tasks(),
        before,
        "threads of mcplb before and after 300 idle connections"
    );
    // The oldest were closed to make room (503; or 408 if the head timeout came first).
    let answer = |s: &mut std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out)
            .lines()
            .next()
            .unwrap_or("")
            .to_string()
    };
    let first = answer(&mut idle[0]);
    assert!(
        first.starts_with("HTTP/1.1 503") || first.starts_with("HTTP/1.1 408"),
        "{first:?}"
    );
    // A head that arrives in pieces is answered once whole.
    idle[294].write_all(b"\r\n").unwrap();
    let done = answer(&mut idle[294]);
    assert!(done.starts_with("HTTP/1.1 200"), "{done:?}");
    // The newest half head is still open, and gets its 408 once the head timeout passes.
    let last = answer(&mut idle[297]);
    assert!(last.starts_with("HTTP/1.1 408"), "{last:?}");
    assert_eq!(get(admin, "/healthz", None).status, 200);
}

#[test]
fn json_access_log_records_each_request() {
    let m = mock("alpha");
    let log = std::env::temp_dir().join(format!("mcplb-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let cfg = config_for(&[&m], &format!("access_log = \"{}\"", log.display()));
    let p = start_proxy(&cfg, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    for i in 0..5 {
        c.mcp(
            "/mcp",
            Some(&sid),
            &rpc(i, "tools/call", json!({"name": "echo", "arguments": {}})),
        )
        .unwrap();
    }
    c.mcp("/mcp", Some("bogus"), &rpc(9, "ping", json!({})))
        .unwrap();
    // Lines are written once a second.
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<serde_json::Value> = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect();
        if lines.len() >= 8 || Instant::now() > deadline {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 8, "{lines:?}");
    let calls: Vec<_> = lines.iter().filter(|l| l["tool"] == "echo").collect();
    assert_eq!(calls.len(), 5);
    for l in &calls {
        assert_eq!(l["method"], "tools/call");
        assert_eq!(l["status"], 200);
        assert_eq!(l["server"], "t");
        assert_eq!(l["backend"], m.addr().to_string());
        assert!(l["total_us"].as_u64().unwrap() >= l["upstream_us"].as_u64().unwrap());
        // The session appears only as a keyed hash, never the id itself.
        assert!(!l.to_string().contains(&sid));
        assert_eq!(l["session"], calls[0]["session"]);
    }
    let rejected = lines.iter().find(|l| l["status"] == 404).unwrap();
    assert_eq!(rejected["by_proxy"], true);
}
