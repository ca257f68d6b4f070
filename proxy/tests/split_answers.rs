//! Answers a backend writes in parts (the head, then the event or body, then a chunked
//! stream's end, each written on its own, back to back or apart) reach the client whole and
//! byte for byte, through a real `mcplb` on both drivers, one keep-alive client connection
//! and one upstream connection reused for every answer: mcplb takes what already waits
//! behind a head before it sends the head on (`response::take_waiting`), and waits for what
//! does not.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;

const EVENT: &str =
    "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}\n\n";
const JSON: &str = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[]}}";

/// How the backend writes an answer's parts.
#[derive(Clone, Copy, Debug)]
enum Parts {
    /// Each on its own write, one right after the other.
    BackToBack,
    /// Each on its own write, 30 ms apart.
    Apart,
}

/// A backend whose answers are SSE (chunked) when the request's path is `/sse` and JSON
/// (content-length) otherwise, written as `parts`; it counts the connections it accepted.
fn backend(parts: Parts) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let n = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            n.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || answer_all(s, parts));
        }
    });
    (addr, accepted)
}

fn answer_all(mut s: TcpStream, parts: Parts) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    while let Some((head, _)) = read_request(&mut s, &mut buf) {
        let sse = head.split(' ').nth(1) == Some("/sse");
        let pieces = if sse {
            vec![
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n".to_string(),
                format!("{:x}\r\n{EVENT}\r\n", EVENT.len()),
                "0\r\n\r\n".to_string(),
            ]
        } else {
            vec![
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    JSON.len()
                ),
                JSON[..10].to_string(),
                JSON[10..].to_string(),
            ]
        };
        for p in pieces {
            if s.write_all(p.as_bytes()).is_err() {
                return;
            }
            if matches!(parts, Parts::Apart) {
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    }
}

#[test]
fn answers_written_in_parts_arrive_whole_on_one_upstream_connection() {
    for parts in [Parts::BackToBack, Parts::Apart] {
        for driver in DRIVERS {
            let (addr, accepted) = backend(parts);
            let cfg = format!(
                "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n\
                 [[servers]]\nname = \"sse\"\npath = \"/sse\"\nbackends = [\"http://{addr}/sse\"]\n\
                 [servers.health]\nenabled = false\n\n\
                 [[servers]]\nname = \"json\"\npath = \"/json\"\nbackends = [\"http://{addr}/json\"]\n\
                 [servers.health]\nenabled = false\n"
            );
            let p = start_proxy(&cfg, driver);
            let mut c = HttpClient::connect(p.addr).unwrap();
            for i in 0..6 {
                let (path, want) = if i % 2 == 0 {
                    ("/sse", EVENT)
                } else {
                    ("/json", JSON)
                };
                let what = format!("{parts:?}, {driver}, answer {i} ({path})");
                let r = plain_tool_call(&mut c, path);
                assert_eq!(r.status, 200, "{what}");
                assert_eq!(String::from_utf8_lossy(&r.body), want, "{what}");
            }
            // One connection for the SSE group's three answers and one for the JSON group's.
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                2,
                "{parts:?}, {driver}: upstream connections were not reused"
            );
        }
    }
}
