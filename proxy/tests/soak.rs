//! A short soak of a real `mcplb` under hostile traffic while good clients work: garbage
//! bytes, requests that stop half-way (slowloris), a thousand idle connections, and one key
//! flooding a rate limit. The good clients must see no error and mcplb's memory must stay
//! bounded; the figures are printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

#[test]
#[expect(
    clippy::too_many_lines,
    reason = "a test: one soak scenario (every kind of hostile client beside good ones, then the checks) read top to bottom"
)]
fn good_clients_are_untouched_by_hostile_ones() {
    let m = mock("alpha");
    let cfg = format!(
        "{}[servers.health]\nenabled = false\n\n[[limits]]\nkey = \"header:x-api-key\"\nrate = 50\nburst = 50\n",
        // Every client here, good or hostile, is 127.0.0.1: the per-address connection cap
        // (256 by default) would otherwise be what the thousand idle connections meet.
        config_for(
            &[&m],
            "header_timeout = \"1s\"\nmax_connections_per_ip = 4096\n[admin]\nlisten = \"127.0.0.1:0\""
        )
    );
    let p = start_proxy(&cfg, "auto");
    let (addr, pid) = (p.addr, p.child.id());
    let rss_start = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let good_ok = Arc::new(AtomicU64::new(0));
    let good_err = Arc::new(AtomicU64::new(0));

    // Good clients: sessions calling a tool at a pace under their limit.
    let good: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ok, err) = (stop.clone(), good_ok.clone(), good_err.clone());
            std::thread::spawn(move || {
                let mut c = HttpClient::connect(addr).unwrap();
                let (sid, _) = init_session(&mut c);
                let key = format!("good-{t}");
                let mut i = 0;
                while !stop.load(Relaxed) {
                    i += 1;
                    let body = rpc(
                        i,
                        "tools/call",
                        json!({"name": "echo", "arguments": {"i": i}}),
                    );
                    let r = c.request(
                        "POST",
                        "/mcp",
                        &[
                            ("content-type", "application/json"),
                            ("accept", "application/json, text/event-stream"),
                            ("mcp-session-id", &sid),
                            ("x-api-key", &key),
                        ],
                        body.to_string().as_bytes(),
                    );
                    match r {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Relaxed),
                        other => {
                            eprintln!("good client error: {:?}", other.map(|r| r.status));
                            err.fetch_add(1, Relaxed)
                        }
                    };
                    std::thread::sleep(Duration::from_millis(25));
                }
            })
        })
        .collect();

    // Hostile: a thousand idle connections.
    let idle: Vec<TcpStream> = (0..1000)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let rss_idle = rss_kib(pid);
    // Hostile: garbage, and heads that stop half-way (slowloris), in waves.
    let hostile = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let mut held = Vec::new();
            while !stop.load(Relaxed) {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(&[0x16, 0x03, 0x01, 0xff, b'\r', b'\n', b'\r', b'\n']);
                }
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-len");
                    held.push(s);
                }
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(
                        b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n{\"js",
                    );
                    held.push(s);
                }
                n += 3;
                if held.len() > 400 {
                    held.drain(..200);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            n
        })
    };
    // Hostile: one key flooding its rate limit.
    let flood = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = HttpClient::connect(addr).unwrap();
            let (sid, _) = init_session(&mut c);
            let (mut limited, mut sent) = (0u64, 0u64);
            while !stop.load(Relaxed) {
                sent += 1;
                let body = rpc(sent, "tools/call", json!({"name": "echo", "arguments": {}}));
                let r = c
                    .request(
                        "POST",
                        "/mcp",
                        &[
                            ("content-type", "application/json"),
                            ("mcp-session-id", &sid),
                            ("x-api-key", "flood"),
                        ],
                        body.to_string().as_bytes(),
                    )
                    .unwrap();
                if r.status == 429 {
                    limited += 1;
                }
            }
            (sent, limited)
        })
    };

    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let rss_peak = rss_kib(pid);
    stop.store(true, Relaxed);
    for g in good {
        g.join().unwrap();
    }
    let hostile_conns = hostile.join().unwrap();
    let (flood_sent, flood_limited) = flood.join().unwrap();
    drop(idle);
    std::thread::sleep(Duration::from_millis(1500));
    let stats = HttpClient::connect(p.admin.unwrap())
        .unwrap()
        .request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap();
    let c = &stats["counters"];
    eprintln!(
        "soak {:.1} s: good ok {} errors {} | flood sent {} limited {} | hostile connections {} | \
         slow_clients {} bad_request {} rate_limited {} | RSS start {} KiB, 1000 idle {} KiB, peak {} KiB",
        t.elapsed().as_secs_f64(),
        good_ok.load(Relaxed),
        good_err.load(Relaxed),
        flood_sent,
        flood_limited,
        hostile_conns,
        c["slow_clients"],
        c["bad_request"],
        c["rate_limited"],
        rss_start,
        rss_idle,
        rss_peak,
    );
    assert_eq!(good_err.load(Relaxed), 0, "a good client saw an error");
    assert!(good_ok.load(Relaxed) > 200);
    assert!(flood_limited > 0 && flood_limited < flood_sent);
    assert!(
        c["slow_clients"].as_u64().unwrap() > 0,
        "slowloris heads were not timed out"
    );
    assert!(c["bad_request"].as_u64().unwrap() > 0);
    // Memory stays bounded: well under 100 MiB for all of the above.
    assert!(rss_peak < 100 * 1024, "RSS {rss_peak} KiB");
}
