//! The head of an SSE answer to a request waits for the answer's first event and goes out with
//! it (`proxy.sse_head_waits`, `data_path::gather`): a backend that writes the head and the
//! event apart has them reach the client in one read; no event is held back for what follows
//! it; GET streams and `subscriptions/listen` answers send their head at once; a client that
//! leaves while the head waits is noticed (the upstream connection closes); a stream that
//! breaks still gives the client what came. Through a real `mcplb`, both drivers, a raw client
//! that looks at what its first read gets, and a backend whose steps wait for the test (no
//! timing in the assertions: a step the test gates cannot come early).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

const HEAD: &str =
    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
const EVENT: &str =
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
const END: &str = "0\r\n\r\n";

fn chunk() -> String {
    format!("{:x}\r\n{EVENT}\r\n", EVENT.len())
}

/// A backend's step in answering a request.
#[derive(Clone)]
enum Step {
    Write(String),
    /// Waits until the test says so (or 10 s).
    Gate,
    /// Closes the connection.
    Close,
    /// Reads until the connection closes (or 10 s), then reports whether it closed.
    ExpectClose,
}

/// A backend answering every request with `steps`; the test opens its gates through the
/// returned sender and hears from `ExpectClose` steps on the returned receiver.
fn backend(steps: Vec<Step>) -> (SocketAddr, Sender<()>, Receiver<bool>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (gate_tx, gate_rx) = channel::<()>();
    let gate = Arc::new(Mutex::new(gate_rx));
    let (closed_tx, closed_rx) = channel::<bool>();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let (steps, gate, closed_tx) = (steps.clone(), gate.clone(), closed_tx.clone());
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut buf = Vec::new();
                while read_request(&mut s, &mut buf).is_some() {
                    for step in &steps {
                        match step {
                            Step::Write(p) => {
                                if s.write_all(p.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Step::Gate => {
                                let _ = gate.lock().unwrap().recv_timeout(Duration::from_secs(10));
                            }
                            Step::Close => return,
                            Step::ExpectClose => {
                                let mut b = [0u8; 64];
                                let closed = matches!(s.read(&mut b), Ok(0));
                                let _ = closed_tx.send(closed);
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, gate_tx, closed_rx)
}

fn proxy(backend: SocketAddr, extra: &str, driver: &str) -> Proxy {
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n{extra}\n\n\
         [[servers]]\nname = \"sse\"\npath = \"/mcp\"\nbackends = [\"http://{backend}/mcp\"]\n\
         [servers.health]\nenabled = false\n"
    );
    start_proxy(&cfg, driver)
}

/// A client connection that sent `method` (a POST of a JSON-RPC `rpc_method`, or a GET).
fn send(addr: SocketAddr, method: &str, rpc_method: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = rpc(
        1,
        rpc_method,
        serde_json::json!({"name": "x", "arguments": {}}),
    )
    .to_string();
    let req = if method == "POST" {
        format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n".to_string()
    };
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// One read's bytes (empty at EOF).
fn read_once(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = s.read(&mut buf).expect("the client's read timed out");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Reads until the chunked stream's end or EOF.
fn read_rest(s: &mut TcpStream, mut got: String) -> String {
    while !got.ends_with(END) {
        let more = read_once(s);
        if more.is_empty() {
            break;
        }
        got.push_str(&more);
    }
    got
}

fn body_of(all: &str) -> &str {
    all.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

#[test]
fn the_head_goes_out_with_the_first_event_and_no_event_waits_for_the_end() {
    for driver in DRIVERS {
        // The event is written 100 ms after the head; the end only once the client has the
        // event: were the event held for the end, the client would read nothing (10 s timeout).
        let steps = vec![
            Step::Write(HEAD.into()),
            Step::Gate,
            Step::Write(chunk()),
            Step::Gate,
            Step::Write(END.into()),
        ];
        let (addr, gate, _) = backend(steps);
        let p = proxy(addr, "", driver);
        let mut c = send(p.addr, "POST", "tools/call");
        std::thread::sleep(Duration::from_millis(100));
        gate.send(()).unwrap();
        let first = read_once(&mut c);
        assert!(first.starts_with("HTTP/1.1 200"), "{driver}: {first:?}");
        assert_eq!(
            body_of(&first),
            chunk(),
            "{driver}: the head came without its event"
        );
        gate.send(()).unwrap();
        assert_eq!(read_rest(&mut c, first.clone()), first + END, "{driver}");
    }
}

/// A backend that writes the event and the end only once the client has read the head: the
/// client's first read must be the head alone, then the whole body follows.
fn assert_head_alone(driver: &str, extra: &str, method: &str, rpc_method: &str) {
    let steps = vec![
        Step::Write(HEAD.into()),
        Step::Gate,
        Step::Write(chunk()),
        Step::Write(END.into()),
    ];
    let (addr, gate, _) = backend(steps);
    let p = proxy(addr, extra, driver);
    let mut c = send(p.addr, method, rpc_method);
    let first = read_once(&mut c);
    let what = format!("{driver}, {extra:?}, {method} {rpc_method}");
    assert!(first.starts_with("HTTP/1.1 200"), "{what}: {first:?}");
    assert_eq!(body_of(&first), "", "{what}");
    gate.send(()).unwrap();
    let all = read_rest(&mut c, first);
    assert_eq!(body_of(&all), chunk() + END, "{what}");
}

#[test]
fn with_sse_head_waits_off_the_head_goes_alone() {
    for driver in DRIVERS {
        assert_head_alone(driver, "sse_head_waits = false", "POST", "tools/call");
    }
}

#[test]
fn get_and_listen_streams_send_their_head_at_once() {
    for driver in DRIVERS {
        assert_head_alone(driver, "", "GET", "");
        assert_head_alone(driver, "", "POST", "subscriptions/listen");
    }
}

#[test]
fn a_client_that_leaves_while_the_head_waits_closes_the_upstream_connection() {
    for driver in DRIVERS {
        let steps = vec![Step::Write(HEAD.into()), Step::ExpectClose];
        let (addr, _gate, closed) = backend(steps);
        let p = proxy(addr, "", driver);
        let c = send(p.addr, "POST", "tools/call");
        // Give the head time to reach mcplb, then leave.
        std::thread::sleep(Duration::from_millis(200));
        drop(c);
        assert_eq!(
            closed.recv_timeout(Duration::from_secs(15)),
            Ok(true),
            "{driver}: the upstream connection stayed open after the client left"
        );
    }
}

#[test]
fn a_stream_broken_before_its_end_still_delivers_what_came_then_closes() {
    for driver in DRIVERS {
        let half = chunk()[..chunk().len() / 2].to_string();
        // The half chunk is written once the head waits in mcplb.
        let steps = vec![
            Step::Write(HEAD.into()),
            Step::Gate,
            Step::Write(half.clone()),
            Step::Close,
        ];
        let (addr, gate, _) = backend(steps);
        let p = proxy(addr, "", driver);
        let mut c = send(p.addr, "POST", "tools/call");
        std::thread::sleep(Duration::from_millis(100));
        gate.send(()).unwrap();
        let all = read_rest(&mut c, String::new());
        assert!(all.starts_with("HTTP/1.1 200"), "{driver}: {all:?}");
        assert_eq!(body_of(&all), half, "{driver}: the bytes before the break");
        // The worker goes on serving.
        gate.send(()).unwrap();
        let mut c = send(p.addr, "POST", "tools/call");
        let all = read_rest(&mut c, String::new());
        assert!(all.starts_with("HTTP/1.1 200"), "{driver}: {all:?}");
    }
}
