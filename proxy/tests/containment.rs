//! What goes wrong stays small: a panic in one connection's task closes that connection only
//! (the worker goes on serving, `worker_panics` counts it, the log says where), and a worker
//! thread that dies is reported by `/readyz`. The panics are injected with the debug-build
//! hooks `MCPLB_TEST_PANIC_PATH` and `MCPLB_TEST_KILL_WORKER` (`proxy/src/runtime/mod.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;

fn stats(admin: std::net::SocketAddr) -> serde_json::Value {
    let mut c = HttpClient::connect(admin).unwrap();
    let r = c.request("GET", "/stats", &[], b"").unwrap();
    serde_json::from_slice(&r.body).unwrap()
}

#[test]
fn a_panic_in_a_connection_task_closes_that_connection_only() {
    let m = mock("alpha");
    let log = std::env::temp_dir().join(format!("mcplb-contain-{}.log", std::process::id()));
    for driver in DRIVERS {
        let cfg = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&m], "").replace("workers = 2", "workers = 1")
        );
        let p = start_proxy_env(
            &cfg,
            driver,
            Some(("info", &log)),
            &[("MCPLB_TEST_PANIC_PATH", "/boom")],
        );
        // A keep-alive client with a session, before and after the panic on another
        // connection of the same (only) worker.
        let mut good = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut good);
        assert_eq!(whoami(&mut good, &sid), "alpha");

        let mut bad = std::net::TcpStream::connect(p.addr).unwrap();
        bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        bad.write_all(b"GET /boom HTTP/1.1\r\nhost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = bad.read_to_end(&mut answer);
        assert!(
            answer.is_empty(),
            "{driver}: the panicking request got an answer: {:?}",
            String::from_utf8_lossy(&answer)
        );

        // The worker goes on: the old connection and a new one are served.
        assert_eq!(whoami(&mut good, &sid), "alpha", "{driver}");
        let mut fresh = HttpClient::connect(p.addr).unwrap();
        let (sid2, _) = init_session(&mut fresh);
        assert_eq!(whoami(&mut fresh, &sid2), "alpha", "{driver}");

        // Counted (flushed once a second), the connection count released, still ready.
        let admin = p.admin.unwrap();
        let t = Instant::now();
        loop {
            let s = stats(admin);
            let panics = s["counters"]["worker_panics"].as_u64().unwrap();
            let open = s["gauges"]["client_connections"].as_i64().unwrap();
            if panics == 1 && open == 2 {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{driver}: worker_panics {panics}, client_connections {open} (want 1 and 2)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut c = HttpClient::connect(admin).unwrap();
        assert_eq!(c.request("GET", "/readyz", &[], b"").unwrap().status, 200);
        drop((good, fresh, c));
        drop(p);
        // The log says where.
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            text.contains("injected panic") && text.contains("proxy/src/data_path/mod.rs"),
            "{driver}: the panic message and its location are not in the log:\n{text}"
        );
        assert!(
            text.contains("a connection's task panicked"),
            "{driver}: no log line for the contained panic:\n{text}"
        );
    }
    let _ = std::fs::remove_file(&log);
}

#[test]
fn readyz_reports_a_worker_that_died() {
    let m = mock("alpha");
    for driver in DRIVERS {
        let cfg = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&m], "")
        );
        // The injected panic's message goes to a file, not into the test run's output.
        let log = std::env::temp_dir().join(format!("mcplb-dead-{}.log", std::process::id()));
        let p = start_proxy_env(
            &cfg,
            driver,
            Some(("error", &log)),
            &[("MCPLB_TEST_KILL_WORKER", "1")],
        );
        let admin = p.admin.unwrap();
        let t = Instant::now();
        let body = loop {
            let mut c = HttpClient::connect(admin).unwrap();
            let r = c.request("GET", "/readyz", &[], b"").unwrap();
            if r.status == 503 {
                break r.json().unwrap();
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{driver}: /readyz stayed 200"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(
            body["dead_workers"],
            serde_json::json!([1]),
            "{driver}: {body}"
        );
        // The other worker goes on serving (the dead one's listener closed with it).
        for _ in 0..10 {
            let mut c = HttpClient::connect(p.addr).unwrap();
            let (sid, _) = init_session(&mut c);
            assert_eq!(whoami(&mut c, &sid), "alpha", "{driver}");
        }
        drop(p);
        let _ = std::fs::remove_file(&log);
    }
}
