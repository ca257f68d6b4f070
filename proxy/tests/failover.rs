//! Failover under steady load through a real `mcplb`: four backends, client threads running
//! sessions and stateless read-only requests; one backend dies (process gone), later another
//! hangs without answering; then the dead one comes back. Only `tools/call`s in flight on a
//! dying backend may fail, each with a JSON-RPC error; read-only requests never fail; sessions
//! recover as configured (404 then a new session, or transparently by replaying initialize).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[derive(Default)]
struct Counts {
    readonly_ok: AtomicU64,
    readonly_failed: AtomicU64,
    calls_ok: AtomicU64,
    calls_failed_with_jsonrpc_error: AtomicU64,
    calls_failed_other: AtomicU64,
    session_404: AtomicU64,
    reinitialized: AtomicU64,
}

fn stateless_list(c: &mut HttpClient, id: u64) -> anyhow::Result<u16> {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let r = c.request(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ],
        body.to_string().as_bytes(),
    )?;
    Ok(r.status)
}

/// One client thread: a session doing tools/call, plus stateless tools/list, until `stop`.
fn client(addr: SocketAddr, stop: Arc<AtomicBool>, n: Arc<Counts>, seed: u64) {
    let mut c = HttpClient::connect(addr).unwrap();
    let (mut sid, _) = init_session(&mut c);
    let mut i = seed * 1_000_000;
    while !stop.load(Relaxed) {
        i += 1;
        match stateless_list(&mut c, i) {
            Ok(200) => n.readonly_ok.fetch_add(1, Relaxed),
            Ok(s) => {
                eprintln!("read-only request failed: HTTP {s}");
                n.readonly_failed.fetch_add(1, Relaxed)
            }
            Err(e) => {
                eprintln!("read-only request failed: {e}");
                c = HttpClient::connect(addr).unwrap();
                n.readonly_failed.fetch_add(1, Relaxed)
            }
        };
        i += 1;
        let r = c.mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                i,
                "tools/call",
                json!({"name": "echo", "arguments": {"i": i}}),
            ),
        );
        match r {
            Ok(r) if r.status == 200 => {
                n.calls_ok.fetch_add(1, Relaxed);
            }
            Ok(r) if r.status == 404 => {
                n.session_404.fetch_add(1, Relaxed);
                sid = init_session(&mut c).0;
                n.reinitialized.fetch_add(1, Relaxed);
            }
            Ok(r) => {
                let v = r.json().unwrap_or_default();
                if v["id"] == i && v["error"]["code"].is_i64() {
                    n.calls_failed_with_jsonrpc_error.fetch_add(1, Relaxed);
                } else {
                    eprintln!("call failed without a JSON-RPC error: {} {v}", r.status);
                    n.calls_failed_other.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                eprintln!("call failed at the transport: {e}");
                n.calls_failed_other.fetch_add(1, Relaxed);
                c = HttpClient::connect(addr).unwrap();
            }
        }
    }
}

fn mock_at(name: &str, addr: SocketAddr) -> MockServer {
    let cfg = MockConfig {
        name: name.into(),
        latency: Duration::from_millis(3),
        ..Default::default()
    };
    // The port was just freed: retry briefly while the kernel lets go of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match MockServer::start(cfg.clone(), addr) {
            Ok(m) => return m,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("restart mock on {addr}: {e}"),
        }
    }
}

/// A backend that accepts connections and never answers.
fn black_hole(addr: SocketAddr, stop: Arc<AtomicBool>) {
    let l = loop {
        match std::net::TcpListener::bind(addr) {
            Ok(l) => break l,
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while !stop.load(Relaxed) {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
}

fn backend_state(p: &Proxy, name: &str) -> String {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let v = c
        .request("GET", "/backends", &[], b"")
        .unwrap()
        .json()
        .unwrap();
    v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .map(|b| b["state"].as_str().unwrap().to_string())
        .unwrap()
}

fn run(session_failover: &str) -> Arc<Counts> {
    let mocks: Vec<MockServer> = (0..4)
        .map(|i| mock_at(&format!("b{i}"), "127.0.0.1:0".parse().unwrap()))
        .collect();
    let addrs: Vec<SocketAddr> = mocks.iter().map(|m| m.addr()).collect();
    let list: Vec<String> = addrs
        .iter()
        .map(|a| format!("\"http://{a}/mcp\""))
        .collect();
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nupstream_timeout = \"1s\"\nconnect_timeout = \"500ms\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\nsession_failover = \"{session_failover}\"\n\n[servers.health]\ninterval = \"300ms\"\ntimeout = \"500ms\"\nhealthy_threshold = 2\nunhealthy_threshold = 2\n",
        list.join(", ")
    );
    let p = start_proxy(&cfg, "auto");
    let mut mocks: Vec<Option<MockServer>> = mocks.into_iter().map(Some).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let threads: Vec<_> = (0..6)
        .map(|t| {
            let (stop, counts) = (stop.clone(), counts.clone());
            let addr = p.addr;
            std::thread::spawn(move || client(addr, stop, counts, t))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    // 1. b1 dies: the process (here: the server) is gone.
    drop(mocks[1].take());
    std::thread::sleep(Duration::from_millis(1500));
    assert_ne!(backend_state(&p, &addrs[1].to_string()), "healthy");
    // 2. b2 hangs: it accepts connections and never answers.
    drop(mocks[2].take());
    let hole_stop = Arc::new(AtomicBool::new(false));
    black_hole(addrs[2], hole_stop.clone());
    std::thread::sleep(Duration::from_millis(2500));
    assert_ne!(backend_state(&p, &addrs[2].to_string()), "healthy");
    // 3. b1 comes back and rejoins after its healthy threshold.
    mocks[1] = Some(mock_at("b1", addrs[1]));
    let deadline = Instant::now() + Duration::from_secs(10);
    while backend_state(&p, &addrs[1].to_string()) != "healthy" {
        assert!(
            Instant::now() < deadline,
            "b1 never rejoined: {}",
            backend_state(&p, &addrs[1].to_string())
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    hole_stop.store(true, Relaxed);
    // New sessions reach the rejoined backend again.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let names: Vec<String> = (0..8).map(|_| init_session(&mut c).1).collect();
    assert!(
        names.iter().any(|n| n == "b1"),
        "b1 got no new session: {names:?}"
    );
    assert!(
        !names.iter().any(|n| n == "b2"),
        "hung b2 got a session: {names:?}"
    );
    counts
}

fn report(mode: &str, n: &Counts) {
    eprintln!(
        "[{mode}] read-only ok {} failed {} | tools/call ok {} failed-with-jsonrpc-error {} failed-otherwise {} | session 404s {} re-initialized {}",
        n.readonly_ok.load(Relaxed),
        n.readonly_failed.load(Relaxed),
        n.calls_ok.load(Relaxed),
        n.calls_failed_with_jsonrpc_error.load(Relaxed),
        n.calls_failed_other.load(Relaxed),
        n.session_404.load(Relaxed),
        n.reinitialized.load(Relaxed),
    );
}

/// What both failover modes must show: read-only requests never fail; only tool calls in
/// flight at the moment of death fail (at most a few per client thread), each with a JSON-RPC
/// error.
fn assert_no_work_lost(n: &Counts) {
    assert!(n.readonly_ok.load(Relaxed) > 100);
    assert_eq!(
        n.readonly_failed.load(Relaxed),
        0,
        "a read-only request failed"
    );
    assert_eq!(
        n.calls_failed_other.load(Relaxed),
        0,
        "a failure without a JSON-RPC error"
    );
    assert!(n.calls_failed_with_jsonrpc_error.load(Relaxed) <= 20);
    assert!(n.calls_ok.load(Relaxed) > 100);
}

#[test]
fn kill_and_hang_under_load_with_404_failover() {
    let n = run("404");
    report("404", &n);
    assert_no_work_lost(&n);
}

#[test]
fn kill_and_hang_under_load_with_transparent_reinitialize() {
    let n = run("reinitialize");
    report("reinitialize", &n);
    assert_no_work_lost(&n);
    assert_eq!(
        n.session_404.load(Relaxed),
        0,
        "sessions should move transparently"
    );
}
