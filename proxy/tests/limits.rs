//! Rate limits through a real `mcplb`: per caller, per tool, with the right `Retry-After`,
//! before any byte reaches the backend; other callers and tools untouched; notifications over
//! a limit dropped, not answered with an error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;

fn call(c: &mut HttpClient, sid: &str, key: &str, tool: &str, id: u64) -> mcplb::demo::Response {
    let body = rpc(id, "tools/call", json!({"name": tool, "arguments": {}})).to_string();
    c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-session-id", sid),
            ("x-api-key", key),
        ],
        body.as_bytes(),
    )
    .unwrap()
}

#[test]
fn one_caller_over_its_limit_on_one_tool() {
    let m = mock("alpha");
    let limits = r#"
[[limits]]
tool = "ec*"
key = "header:x-api-key"
rate = 0.5
burst = 2

[[limits]]
method = "notifications/cancelled"
key = "global"
rate = 0.001
burst = 1
"#;
    for driver in DRIVERS {
        let before = m.tool_calls("echo");
        // Health checks off: this test counts every message the backend receives.
        let cfg = format!(
            "{}[servers.health]\nenabled = false\n{limits}",
            config_for(&[&m], "")
        );
        let p = start_proxy(&cfg, driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        assert_eq!(call(&mut c, &sid, "alice", "echo", 1).status, 200);
        assert_eq!(call(&mut c, &sid, "alice", "echo", 2).status, 200);
        let r = call(&mut c, &sid, "alice", "echo", 3);
        assert_eq!(r.status, 429, "driver {driver}");
        let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&retry), "Retry-After {retry}");
        let v = r.json().unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["error"]["data"]["limit"], 0);
        let ms = v["error"]["data"]["retryAfterMs"].as_u64().unwrap();
        assert!((1000..=2000).contains(&ms), "{ms}");
        // Another caller on the same tool, and the same caller on another tool: untouched.
        assert_eq!(call(&mut c, &sid, "bob", "echo", 4).status, 200);
        assert_eq!(call(&mut c, &sid, "bob", "echo", 5).status, 200);
        for i in 0..5 {
            assert_eq!(call(&mut c, &sid, "alice", "whoami", 10 + i).status, 200);
        }
        // The rejected call never reached the backend.
        assert_eq!(m.tool_calls("echo") - before, 4);

        // Notifications over a limit are dropped with 202, not forwarded.
        let note = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
            "params": {"requestId": 1}});
        let seen = m.requests();
        assert_eq!(c.mcp("/mcp", Some(&sid), &note).unwrap().status, 202);
        assert_eq!(m.requests(), seen + 1);
        assert_eq!(c.mcp("/mcp", Some(&sid), &note).unwrap().status, 202);
        assert_eq!(
            m.requests(),
            seen + 1,
            "a notification over its limit was forwarded"
        );
    }
}

#[test]
fn bad_limit_config_names_the_key() {
    let text = "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"a\"\npath = \"/mcp\"\nbackends = [\"http://127.0.0.1:1/mcp\"]\n[[limits]]\nserver = \"nope\"\nkey = \"cookie\"\nrate = -1\nburst = 0\n";
    let err = mcplb::Config::parse(text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    for k in [
        "limits[0].server",
        "limits[0].key",
        "limits[0].rate",
        "limits[0].burst",
    ] {
        assert!(err.contains(k), "missing {k} in {err}");
    }
}

fn slow_call(addr: std::net::SocketAddr, key: &str, ms: u64) -> (u16, serde_json::Value) {
    let mut c = HttpClient::connect(addr).unwrap();
    let body = json!({"jsonrpc": "2.0", "id": 77, "method": "tools/call",
        "params": {"name": "slow", "arguments": {"ms": ms},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-protocol-version", "2026-07-28"),
                ("mcp-method", "tools/call"),
                ("mcp-name", "slow"),
                ("x-api-key", key),
            ],
            body.to_string().as_bytes(),
        )
        .unwrap();
    (r.status, r.json().unwrap_or_default())
}

/// Runs slow calls that overlap, one per key, in the order given: each is sent once the one
/// before it has reached a backend (`seen`, the backends' count of `slow` calls, went up) or
/// has been answered (refused), so the order and the overlap hold however late a busy machine
/// starts a thread.
fn concurrent(
    addr: std::net::SocketAddr,
    keys: &[&'static str],
    ms: u64,
    seen: impl Fn() -> u64,
) -> Vec<(u16, serde_json::Value)> {
    let mut handles = Vec::new();
    for k in keys {
        let k = *k;
        let before = seen();
        let call = std::thread::spawn(move || slow_call(addr, k, ms));
        wait_until("the call at a backend or answered", || {
            seen() > before || call.is_finished()
        });
        handles.push(call);
    }
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// A mock backend that issues no sessions.
fn stateless(name: &str) -> MockServer {
    mock_with(MockConfig {
        name: name.into(),
        stateless: true,
        ..Default::default()
    })
}

#[test]
fn concurrency_limits_per_tool_caller_and_backend() {
    let (a, b) = (stateless("a"), stateless("b"));
    // Per caller, reject at once: the same caller's second slow call is refused, another
    // caller's is not.
    let cfg = format!(
        "{}[[concurrency]]\ntool = \"slow\"\nper = \"caller\"\nkey = \"header:x-api-key\"\nmax = 1\n",
        config_for(&[&a], "")
    );
    let p = start_proxy(&cfg, "auto");
    // alice's first call is at the backend when her second is sent: the second is refused.
    let r = concurrent(p.addr, &["alice", "alice", "bob"], 1500, || {
        a.tool_calls("slow")
    });
    assert_eq!(r[0].0, 200, "{r:?}");
    assert_eq!(r[1].0, 429, "{r:?}");
    assert_eq!(r[1].1["error"]["data"]["concurrency"], 0);
    assert_eq!(r[1].1["id"], 77);
    assert_eq!(r[2].0, 200, "{r:?}");
    drop(p);

    // Per tool with a queue: the second call waits for the first instead of failing.
    let cfg = format!(
        "{}[[concurrency]]\ntool = \"slow\"\nper = \"tool\"\nmax = 1\nqueue = 4\nqueue_timeout = \"3s\"\n",
        config_for(&[&a], "")
    );
    let p = start_proxy(&cfg, "auto");
    let t = std::time::Instant::now();
    let r = concurrent(p.addr, &["x", "y"], 300, || a.tool_calls("slow"));
    assert!(r.iter().all(|(s, _)| *s == 200), "{r:?}");
    assert!(
        t.elapsed() >= std::time::Duration::from_millis(600),
        "the second call did not wait"
    );
    drop(p);

    // Per backend: one in flight each; two calls spread over both, a third is refused.
    let cfg = format!(
        "{}[[concurrency]]\nper = \"backend\"\nmax = 1\n",
        config_for(&[&a, &b], "")
    );
    let p = start_proxy(&cfg, "auto");
    let before = (a.tool_calls("slow"), b.tool_calls("slow"));
    let r = concurrent(p.addr, &["x", "y", "z"], 1500, || {
        a.tool_calls("slow") + b.tool_calls("slow")
    });
    let ok = r.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 2, "{r:?}");
    assert_eq!(r.iter().filter(|(s, _)| *s == 429).count(), 1);
    assert_eq!(a.tool_calls("slow") - before.0, 1);
    assert_eq!(b.tool_calls("slow") - before.1, 1);
}

/// Voluntary context switches of `pid`'s worker threads: each wake of an idle worker is one.
fn wakeups(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("status")).ok())
        .filter(|status| status.starts_with("Name:\tmcplb-worker"))
        .flat_map(|status| {
            status
                .lines()
                .filter_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .map(|n| n.trim().parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .sum()
}

fn admin_stats(admin: std::net::SocketAddr) -> serde_json::Value {
    let mut c = HttpClient::connect(admin).unwrap();
    c.request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()
}

/// A mock backend, an `mcplb` (on `driver`, with an admin port and an access log) letting one
/// `slow` call at a time through (`rule`: its queue settings), and a first call holding that
/// permit for `hold_ms`, already at the backend.
struct OnePermitHeld {
    m: MockServer,
    p: Proxy,
    log: std::path::PathBuf,
    first: std::thread::JoinHandle<(u16, serde_json::Value)>,
}

fn one_permit_held(driver: &str, rule: &str, hold_ms: u64) -> OnePermitHeld {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let log = std::env::temp_dir().join(format!(
        "mcplb-fifo-{}-{driver}-{n}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&log);
    let m = stateless("q");
    let cfg = format!(
        "{}[[concurrency]]\ntool = \"slow\"\nper = \"tool\"\nmax = 1\n{rule}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config_for(&[&m], &format!("access_log = \"{}\"", log.display()))
    );
    let p = start_proxy(&cfg, driver);
    let addr = p.addr;
    let first = std::thread::spawn(move || slow_call(addr, "first", hold_ms));
    wait_until("the first call at the backend", || {
        m.tool_calls("slow") == 1
    });
    OnePermitHeld { m, p, log, first }
}

/// The access-log lines of `tool`, once `n` of them are written (lines are flushed once a
/// second).
fn access_lines(log: &std::path::Path, tool: &str, n: usize) -> Vec<serde_json::Value> {
    let mut lines = Vec::new();
    wait_until("the access log lines", || {
        lines = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["tool"] == tool)
            .collect();
        lines.len() >= n
    });
    lines
}

#[test]
fn queued_calls_are_served_in_arrival_order_and_woken_not_polled() {
    for driver in DRIVERS {
        // The first call holds the only permit; six more queue behind it, on both workers.
        let OnePermitHeld { m, p, log, first } =
            one_permit_held(driver, "queue = 8\nqueue_timeout = \"60s\"", 6000);
        let addr = p.addr;
        let queued: Vec<_> = (0..6)
            .map(|_| {
                let call = std::thread::spawn(move || slow_call(addr, "queued", 100));
                std::thread::sleep(std::time::Duration::from_millis(150));
                call
            })
            .collect();
        // Everyone waits for the first call to end: the workers sleep meanwhile, but for their
        // own timers (accept and parked connections every 250 ms, statistics every second:
        // 20-40 wakes a second seen), where six callers polling every 1-20 ms (as mcplb once
        // did) woke them 140-240 times.
        let before = wakeups(p.child.id());
        std::thread::sleep(std::time::Duration::from_secs(1));
        let woke = wakeups(p.child.id()) - before;
        eprintln!("{driver}: the workers woke {woke} times in 1 s");
        assert_eq!(
            m.tool_calls("slow"),
            1,
            "{driver}: a queued call went ahead"
        );
        assert_eq!(first.join().unwrap().0, 200);
        for call in queued {
            let (status, body) = call.join().unwrap();
            assert_eq!(status, 200, "{driver}: {body}");
        }
        assert!(
            woke < 100,
            "{driver}: the workers woke {woke} times in 1 s while calls queued"
        );

        // Served in the order mcplb received them: one at a time, so the order in which
        // they ended is the order in which they were served.
        let lines = access_lines(&log, "slow", 7);
        let _ = std::fs::remove_file(&log);
        let mut calls: Vec<(u64, u64)> = lines
            .iter()
            .map(|l| {
                let ended_ms = l["ts"].as_u64().unwrap();
                let arrived_us = ended_ms * 1000 - l["total_us"].as_u64().unwrap();
                (arrived_us, ended_ms)
            })
            .collect();
        calls.sort_unstable();
        for pair in calls.windows(2) {
            // Arrivals are ~150 ms apart; the log's clock has millisecond resolution.
            if pair[1].0 - pair[0].0 > 5_000 {
                assert!(
                    pair[0].1 < pair[1].1,
                    "{driver}: served out of order: {calls:?}"
                );
            }
        }
        assert_eq!(m.tool_calls("slow"), 7);
        let admin = p.admin.unwrap();
        wait_until("the statistics", || {
            admin_stats(admin)["since_start"]["tools"]["slow"]["total"]["count"] == 7
        });
        assert_eq!(admin_stats(admin)["counters"]["rate_limited"], 0);
    }
}

#[test]
fn a_caller_that_waits_too_long_gets_a_429_and_takes_no_permit_with_it() {
    for driver in DRIVERS {
        let OnePermitHeld { m, p, log, first } =
            one_permit_held(driver, "queue = 1\nqueue_timeout = \"300ms\"", 3000);
        let addr = p.addr;
        // One caller may wait: it waits 300 ms, then gets the JSON-RPC error; a second one,
        // while the first waits, finds the queue full and is refused at once.
        let waits = std::thread::spawn(move || slow_call(addr, "waits", 10));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let (full_status, full) = slow_call(addr, "full", 10);
        let (status, timed_out) = waits.join().unwrap();
        for (status, body) in [(status, &timed_out), (full_status, &full)] {
            assert_eq!(status, 429, "{driver}: {body}");
            assert_eq!(body["id"], 77);
            assert_eq!(body["error"]["code"], -32000);
            assert_eq!(body["error"]["data"]["concurrency"], 0);
        }
        assert_eq!(first.join().unwrap().0, 200);
        // Neither refusal kept a permit: the next call goes through at once.
        let (status, body) = slow_call(addr, "after", 10);
        assert_eq!(status, 200, "{driver}: {body}");
        assert_eq!(m.tool_calls("slow"), 2);
        let admin = p.admin.unwrap();
        wait_until("the statistics", || {
            admin_stats(admin)["counters"]["requests"] == 4
        });
        let stats = admin_stats(admin);
        assert_eq!(stats["counters"]["rate_limited"], 2, "{stats}");
        let _ = std::fs::remove_file(&log);
    }
}
