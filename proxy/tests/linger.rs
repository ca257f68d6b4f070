//! The lingering close through a real `mcplb`, on both drivers: a client that writes a large
//! body slowly, refused on its head (413), can write all of it and then read its answer and a
//! clean end (no reset); a client that stalls, or trickles bytes for ever, is closed by the
//! bounds (`linger_timeout`, `linger_time`), each counted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

fn counters(p: &Proxy) -> serde_json::Value {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    c.request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()["counters"]
        .clone()
}

fn proxy(driver: &str, extra: &str) -> (MockServer, Proxy) {
    let m = mock("alpha");
    let cfg = format!(
        "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
        config_for(&[&m], &format!("max_body_bytes = 65536\n{extra}"))
    );
    let p = start_proxy(&cfg, driver);
    (m, p)
}

/// A head declaring `len` body bytes over the cap (answered 413 before any is read).
fn head(len: usize) -> String {
    format!(
        "POST /mcp HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\ncontent-length: {len}\r\n\r\n"
    )
}

/// A client that sends the head of a large body, then a byte every 100 ms, never reaching the
/// declared length: its socket to read from, and the writer thread (`true` once a write
/// failed: mcplb closed the connection; it gives up after 60 s).
fn trickling(addr: std::net::SocketAddr) -> (TcpStream, std::thread::JoinHandle<bool>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(head(1 << 20).as_bytes()).unwrap();
    let reader = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if s.write_all(b"x").is_err() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    });
    (reader, writer)
}

#[test]
fn a_slow_large_body_refused_on_its_head_still_gets_its_answer() {
    const PIECE: usize = 64 * 1024;
    const PIECES: usize = 64;
    for driver in DRIVERS {
        let (_m, p) = proxy(driver, "");
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(head(PIECE * PIECES).as_bytes()).unwrap();
        // Slowly, as a client on a slow link: the 413 is sent at once, and mcplb keeps reading.
        let piece = vec![b'x'; PIECE];
        for i in 0..PIECES {
            s.write_all(&piece)
                .unwrap_or_else(|e| panic!("{driver}: write {i} of the body failed: {e}"));
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut answer = Vec::new();
        s.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("{driver}: reading the answer failed: {e}"));
        let text = String::from_utf8_lossy(&answer);
        assert!(text.starts_with("HTTP/1.1 413 "), "{driver}: {text}");
        assert!(text.contains("connection: close"), "{driver}: {text}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let j: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(j["error"]["code"], -32600, "{driver}: {j}");
        assert_eq!(j["error"]["message"], "request body too large");
        drop(s);
        wait_until("the lingering close to be counted", || {
            counters(&p)["lingering_closes"] == 1
        });
        assert_eq!(counters(&p)["lingers_cut"], 0, "{driver}");
    }
}

#[test]
fn a_client_that_stalls_or_never_stops_is_cut_by_the_bounds() {
    for driver in DRIVERS {
        let (_m, p) = proxy(driver, "linger_time = \"2s\"\nlinger_timeout = \"1s\"");
        // Stalls: the head of a large body, then nothing, never closing.
        let mut stalled = TcpStream::connect(p.addr).unwrap();
        stalled.write_all(head(1 << 20).as_bytes()).unwrap();
        // Trickles: a byte every 100 ms, never reaching the declared length.
        let (mut reader, writer) = trickling(p.addr);
        // Both get their answer, then the end of it (mcplb shut its write side).
        for s in [&mut stalled, &mut reader] {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).unwrap();
            let text = String::from_utf8_lossy(&answer);
            assert!(text.starts_with("HTTP/1.1 413 "), "{driver}: {text}");
        }
        assert!(
            writer.join().unwrap(),
            "{driver}: the trickling client was never closed"
        );
        wait_until("both lingers to be cut", || {
            counters(&p)["lingers_cut"] == 2
        });
        assert_eq!(counters(&p)["lingering_closes"], 2, "{driver}");
    }
}

#[test]
#[allow(unsafe_code)]
fn a_shutdown_does_not_wait_for_a_client_that_never_stops() {
    let (_m, mut p) = proxy("auto", "");
    let (mut reader, writer) = trickling(p.addr);
    reader
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    reader.read_to_end(&mut answer).unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413 "));
    let t = Instant::now();
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    // Within wait_exit's bound (10 s), well before linger_time (30 s).
    assert!(wait_exit(&mut p, t).success());
    assert!(
        writer.join().unwrap(),
        "the trickling client was never closed"
    );
}
