//! A fleet: three `mcplb` replicas with the same configuration and one `redis-server`, behind
//! HAProxy in TCP mode (round robin, a new connection per request), over two mock backends.
//!
//! - sessions move between replicas: every request of a session goes out on a new connection,
//!   so HAProxy spreads them over the replicas, and each lands on its session's backend;
//! - a `cluster` limit of 30/s admits 30/s in total through all three (not 90/s): within
//!   −15 % of `rate × W + burst` and never above it (the tokens of the window are the bucket's);
//! - one replica killed (SIGKILL) under load: every read-only request of every session is
//!   answered 200; a request whose connection went to the dead replica is sent again (at
//!   most twice, 100 ms apart: HAProxy's check interval) on a new connection, as HTTP
//!   clients do for idempotent requests (counted and printed);
//! - a session key rotation by reload on every replica keeps every session alive, and the new
//!   key's sessions work on every replica.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const KEY_OLD: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const KEY_NEW: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
const RATE: f64 = 30.0;
const BURST: u64 = 10;

/// HAProxy in TCP mode in front of `servers`; killed (by its PID) on drop.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
    cfg: std::path::PathBuf,
}

impl Haproxy {
    fn start(servers: &[SocketAddr]) -> Haproxy {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let list: String = servers
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!("  server r{i} {a} check inter 100ms fall 1 rise 2 observe layer4 error-limit 1 on-error mark-down\n")
            })
            .collect();
        let text = format!(
            "global\n  maxconn 2000\n\
             defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 3\n  option redispatch 1\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  balance roundrobin\n{list}"
        );
        let cfg =
            std::env::temp_dir().join(format!("mcplb-fleet-haproxy-{}.cfg", std::process::id()));
        std::fs::write(&cfg, text).unwrap();
        let bin = if std::path::Path::new("/usr/sbin/haproxy").exists() {
            "/usr/sbin/haproxy"
        } else {
            "haproxy"
        };
        let child = Command::new(bin)
            .args(["-f"])
            .arg(&cfg)
            .arg("-db")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy (the Debian package haproxy; scripts/test.sh installs it)");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until("haproxy to listen", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Haproxy { child, addr, cfg }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.cfg);
    }
}

fn config(backends: &[&MockServer], redis: &str, keys: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|m| format!("\"{}\"", m.url()))
        .collect();
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nsession_keys = [{keys}]\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [cluster]\nredis = \"{redis}\"\nprefix = \"fleet{}\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\n\
         [servers.health]\nenabled = false\n\n\
         [[limits]]\ntool = \"echo\"\nrate = {RATE}\nburst = {BURST}\nscope = \"cluster\"\n",
        std::process::id(),
        list.join(", ")
    )
}

fn admin(p: &Proxy, method: &str, path: &str) -> serde_json::Value {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request(method, path, &[], b"").unwrap();
    r.json().unwrap_or(serde_json::Value::Null)
}

/// One request of a session through the balancer, on a new connection: the answer.
fn send(
    lb: SocketAddr,
    sid: Option<&str>,
    body: &serde_json::Value,
) -> anyhow::Result<mcplb::demo::Response> {
    Ok(HttpClient::connect(lb)?.mcp("/mcp", sid, body)?)
}

/// initialize + initialized through the balancer: (session id, backend name).
fn open(lb: SocketAddr) -> (String, String) {
    let mut c = HttpClient::connect(lb).unwrap();
    init_session(&mut c)
}

fn whoami(lb: SocketAddr, sid: &str) -> (u16, String) {
    let r = send(
        lb,
        Some(sid),
        &rpc(3, "tools/call", json!({"name": "whoami", "arguments": {}})),
    )
    .unwrap();
    let name = r
        .json()
        .ok()
        .and_then(|v| v["result"]["content"][0]["text"].as_str().map(String::from));
    (r.status, name.unwrap_or_default())
}

fn requests_seen(p: &Proxy) -> u64 {
    admin(p, "GET", "/stats")["counters"]["requests"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a test: one end-to-end scenario (Redis, three replicas, HAProxy) read top to bottom"
)]
fn three_replicas_behind_haproxy() {
    let redis = RedisServer::start();
    let alpha = mock("alpha");
    let beta = mock("beta");
    let cfg = config(&[&alpha, &beta], &redis.url(), &format!("\"{KEY_OLD}\""));
    let mut replicas: Vec<Proxy> = (0..3)
        .map(|i| start_proxy(&cfg, if i == 1 { "legacy" } else { "auto" }))
        .collect();
    let lb = Haproxy::start(&replicas.iter().map(|p| p.addr).collect::<Vec<_>>());
    wait_until("every replica to reach Redis", || {
        replicas
            .iter()
            .all(|p| admin(p, "GET", "/stats")["cluster"]["available"] == true)
    });

    // 1. Sessions move between replicas and stay on their backend.
    let before: Vec<u64> = replicas.iter().map(requests_seen).collect();
    let sessions: Vec<(String, String)> = (0..8).map(|_| open(lb.addr)).collect();
    for (sid, backend) in &sessions {
        for _ in 0..6 {
            assert_eq!(whoami(lb.addr, sid), (200, backend.clone()));
        }
    }
    // Wait for the once-a-second statistics flush: every replica served some of them.
    wait_until("every replica to count requests", || {
        replicas
            .iter()
            .zip(&before)
            .all(|(p, b)| requests_seen(p) > *b)
    });

    // 2. A cluster limit of RATE/s holds in total through all three replicas.
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..6 {
            let (ok, refused, stop, lb) = (ok.clone(), refused.clone(), stop.clone(), lb.addr);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let mut c = HttpClient::connect(lb).unwrap();
                    match stateless_tool_call(&mut c, "echo", &[]).status {
                        200 => ok.fetch_add(1, Ordering::Relaxed),
                        429 => refused.fetch_add(1, Ordering::Relaxed),
                        other => panic!("unexpected status {other}"),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
    });
    let w = t0.elapsed().as_secs_f64();
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    let expected = RATE * w + BURST as f64;
    eprintln!(
        "fleet: cluster limit {RATE}/s burst {BURST}, 3 replicas, {w:.2} s: {ok} admitted \
         ({:.0} % of rate x W + burst = {expected:.0}), {refused} refused",
        ok as f64 * 100.0 / expected
    );
    assert!(
        ok as f64 <= expected + 1.0,
        "{ok} admitted, above {expected:.0}"
    );
    assert!(
        ok as f64 >= expected * 0.85,
        "{ok} admitted, below 85 % of {expected:.0}"
    );
    assert!(refused > 0);

    // 3. One replica killed under load: no read-only request of any session fails.
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let resent = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    std::thread::scope(|s| {
        for (i, (sid, _)) in sessions.iter().enumerate() {
            let (stop, answered, resent, failures, lb) = (
                stop.clone(),
                answered.clone(),
                resent.clone(),
                failures.clone(),
                lb.addr,
            );
            s.spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let method = if n & 1 == 0 { "tools/list" } else { "ping" };
                    let body = rpc(n, method, json!({}));
                    let mut r = send(lb, Some(sid), &body);
                    for _ in 0..2 {
                        if r.is_ok() {
                            break;
                        }
                        // The connection went to the killed replica (in flight, or before
                        // HAProxy's check marked it down): again on a new connection, after
                        // the check's interval.
                        resent.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(100));
                        r = send(lb, Some(sid), &body);
                    }
                    match r {
                        Ok(r)
                            if r.status == 200
                                && r.json()
                                    .is_ok_and(|v| v["id"] == n && v.get("error").is_none()) =>
                        {
                            answered.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!(
                            "session {i} {method} {n}: HTTP {} {}",
                            r.status,
                            String::from_utf8_lossy(&r.body)
                        )),
                        Err(e) => failures
                            .lock()
                            .unwrap()
                            .push(format!("session {i} {method} {n}: {e:#}")),
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(1));
        let mut victim = replicas.remove(0);
        let _ = victim.child.kill();
        let _ = victim.child.wait();
        std::thread::sleep(Duration::from_secs(3));
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.lock().unwrap().clone();
    eprintln!(
        "fleet: replica killed under load: {} read-only requests answered, {} sent again on a \
         new connection, {} failed",
        answered.load(Ordering::Relaxed),
        resent.load(Ordering::Relaxed),
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(answered.load(Ordering::Relaxed) > 100);
    for (sid, backend) in &sessions {
        assert_eq!(whoami(lb.addr, sid), (200, backend.clone()));
    }

    // 4. A key rotation by reload on every replica keeps every session alive.
    let rotated = config(
        &[&alpha, &beta],
        &redis.url(),
        &format!("\"{KEY_NEW}\", \"{KEY_OLD}\""),
    );
    for p in &replicas {
        std::fs::write(&p.config_path, &rotated).unwrap();
        let v = admin(p, "POST", "/reload");
        assert_eq!(v["reloaded"], true, "{v}");
        for (sid, backend) in &sessions {
            assert_eq!(whoami(lb.addr, sid), (200, backend.clone()));
        }
    }
    let fresh: Vec<(String, String)> = (0..4).map(|_| open(lb.addr)).collect();
    for (sid, backend) in sessions.iter().chain(&fresh) {
        for _ in 0..4 {
            assert_eq!(whoami(lb.addr, sid), (200, backend.clone()));
        }
    }
}
