//! Pooled upstream connections past `upstream_idle_timeout`, through a real `mcplb` on both
//! drivers: they are closed, not left open for as long as the worker idles (the backend counts
//! its open connections), and a backend that closes idle connections itself (as uvicorn does
//! after 5 s) never has a call sent into a connection it closed: every call is answered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const JSON: &str = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}";

/// A backend's connection counts.
#[derive(Default)]
struct Counts {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// A backend answering every request with `JSON` after `delay`, closing a connection idle for
/// `keep_alive` (uvicorn's rule), and counting its connections.
fn backend(delay: Duration, keep_alive: Duration) -> (SocketAddr, Arc<Counts>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let counts = Arc::new(Counts::default());
    let n = counts.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            n.accepted.fetch_add(1, Ordering::SeqCst);
            n.open.fetch_add(1, Ordering::SeqCst);
            let n = n.clone();
            std::thread::spawn(move || {
                answer_all(s, delay, keep_alive);
                n.open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, counts)
}

fn answer_all(mut s: TcpStream, delay: Duration, keep_alive: Duration) {
    s.set_read_timeout(Some(keep_alive)).unwrap();
    let mut buf = Vec::new();
    loop {
        // None: EOF (mcplb closed it) or its keep-alive ran out (it closes, dropping `s`).
        if read_request(&mut s, &mut buf).is_none() {
            return;
        }
        std::thread::sleep(delay);
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{JSON}",
            JSON.len()
        );
        if s.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

fn config(addr: SocketAddr, workers: usize) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nupstream_idle_timeout = \"1s\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"http://{addr}/mcp\"]\n\
         [servers.health]\nenabled = false\n"
    )
}

fn call(c: &mut HttpClient) -> u16 {
    let r = plain_tool_call(c, "/mcp");
    assert_eq!(String::from_utf8_lossy(&r.body), JSON);
    r.status
}

#[test]
fn expired_pooled_connections_are_closed_while_the_worker_idles() {
    for driver in DRIVERS {
        // The backend keeps connections open (a minute): only mcplb closes them.
        let (addr, counts) = backend(Duration::from_millis(300), Duration::from_secs(60));
        let p = start_proxy(&config(addr, 1), driver);
        // Four calls at once: four upstream connections, then pooled.
        let calls: Vec<_> = (0..4)
            .map(|_| {
                let a = p.addr;
                std::thread::spawn(move || {
                    let mut c = HttpClient::connect(a).unwrap();
                    call(&mut c)
                })
            })
            .collect();
        for t in calls {
            assert_eq!(t.join().unwrap(), 200, "{driver}");
        }
        let opened = counts.accepted.load(Ordering::SeqCst);
        assert!(
            opened >= 2,
            "{driver}: the calls shared {opened} connection(s)"
        );
        // No request comes any more: the pooled connections must still close, not stay open
        // for as long as the worker idles.
        wait_until(
            &format!("{driver}: the backend's open connections to reach 0"),
            || counts.open.load(Ordering::SeqCst) == 0,
        );
    }
}

#[test]
fn a_backend_closing_idle_connections_never_gets_a_call_on_a_closed_one() {
    for driver in DRIVERS {
        // Closes connections idle 1.5 s, mcplb's pool timeout is 1 s.
        let (addr, counts) = backend(Duration::ZERO, Duration::from_millis(1500));
        let p = start_proxy(&config(addr, 1), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        // Gaps on both sides of mcplb's timeout and of the backend's keep-alive.
        for (i, gap) in [0, 300, 900, 1100, 1400, 1600, 200, 2500, 1450, 0]
            .into_iter()
            .enumerate()
        {
            std::thread::sleep(Duration::from_millis(gap));
            assert_eq!(call(&mut c), 200, "{driver}: call {i} after {gap} ms");
        }
        // Each connection is closed by one side or the other in the end.
        wait_until(
            &format!("{driver}: the backend's open connections to reach 0"),
            || counts.open.load(Ordering::SeqCst) == 0,
        );
    }
}
