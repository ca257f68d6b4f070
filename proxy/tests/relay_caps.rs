//! Bounds on what a backend sends that mcplb holds rather than passes on: the era bridge reads
//! a 2025-era backend's SSE answer to a 2026-07-28 client event by event, each event whole
//! (`proxy.max_sse_event_bytes`). Through a real `mcplb` on both drivers, in front of a
//! backend written here on a raw socket: an event that never ends (no blank line) is cut at
//! the bound (the client's stream closes with no part of it, the upstream connection is
//! closed, `upstream_too_large` counts it, a warning names the backend), while another
//! client's calls go on; an event just under the bound goes through whole. A 2025-era client
//! of a 2026-07-28 backend (whose answer mcplb reads event by event for input requests) gets
//! a JSON-RPC error for its call instead of the endless event.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use mcplb::http::client::ClientError;

/// The bound the tests set (`max_sse_event_bytes`).
const BOUND: usize = 1024 * 1024;
/// What the endless event's backend writes of it before it waits for the test's go.
const BEFORE_GO: usize = BOUND / 2;
/// Most the endless event's backend writes of it (8 times the bound): without a bound in
/// mcplb, the client waits for the rest until its read times out.
const MOST: usize = 8 * BOUND;

/// What the backend saw of the endless call.
#[derive(Default)]
struct Seen {
    /// The endless event's first `BEFORE_GO` bytes went out.
    started: AtomicBool,
    /// mcplb closed the endless call's connection (a write failed or the read saw its end).
    closed: AtomicBool,
    /// `tools/call`s answered, by any tool.
    calls: AtomicUsize,
}

/// A 2025-era backend on a raw socket: `initialize` answered with a session, notifications
/// with 202, and `tools/call` by tool name: `small` (one short event), `big` (one event of
/// `big` bytes of text), `endless` (an event that never ends: half the bound, then, once
/// `go` says so, more until mcplb closes the connection or `MOST` bytes went).
fn backend(big: usize, go: mpsc::Receiver<()>) -> (SocketAddr, Arc<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let go = Arc::new(Mutex::new(go));
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let (seen, go) = (s2.clone(), go.clone());
            std::thread::spawn(move || serve(s, big, &seen, &go));
        }
    });
    (addr, seen)
}

fn serve(mut s: TcpStream, big: usize, seen: &Seen, go: &Mutex<mpsc::Receiver<()>>) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut s, &mut buf) {
        if !head.starts_with("post") {
            let _ = s.write_all(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n");
            continue;
        }
        let msg: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let id = msg["id"].to_string();
        let method = msg["method"].as_str().unwrap_or("");
        let ok = match method {
            // As a 2026-07-28 server (a group with `era = "2026"` asks this, never initialize).
            "server/discover" => json_answer(
                &mut s,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"supportedVersions":["2026-07-28"],"capabilities":{{"tools":{{}}}},"_meta":{{"io.modelcontextprotocol/serverInfo":{{"name":"raw","version":"1"}}}}}}}}"#
                ),
            ),
            "initialize" => json_answer(
                &mut s,
                &format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"protocolVersion":"2025-06-18","capabilities":{{"tools":{{}}}},"serverInfo":{{"name":"raw","version":"1"}}}}}}"#
                ),
            ),
            "tools/call" => {
                seen.calls.fetch_add(1, Ordering::SeqCst);
                match msg["params"]["name"].as_str() {
                    Some("endless") => {
                        endless(&mut s, seen, go);
                        return;
                    }
                    Some("big") => sse_answer(&mut s, &id, BOUND / 2, &"b".repeat(big)),
                    _ => sse_answer(&mut s, &id, 0, "small"),
                }
            }
            _ => s
                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                .is_ok(),
        };
        if !ok {
            return;
        }
    }
}

fn json_answer(s: &mut TcpStream, body: &str) -> bool {
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: raw-1\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).is_ok() && s.write_all(body.as_bytes()).is_ok()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";

fn chunk(s: &mut TcpStream, data: &[u8]) -> bool {
    s.write_all(format!("{:x}\r\n", data.len()).as_bytes())
        .is_ok()
        && s.write_all(data).is_ok()
        && s.write_all(b"\r\n").is_ok()
}

/// A call's answer as an SSE stream, written in pieces of 64 KiB back to back: a log
/// notification with `note` bytes of data when `note` is not 0, then the result, one event
/// whose text is `text`.
fn sse_answer(s: &mut TcpStream, id: &str, note: usize, text: &str) -> bool {
    let mut event = String::new();
    if note > 0 {
        let n = "n".repeat(note);
        event = format!(
            "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"level\":\"info\",\"data\":\"{n}\"}}}}\n\n"
        );
    }
    event += &format!(
        "event: message\ndata: {{\"jsonrpc\":\"2.0\",\"id\":{id},\"result\":{{\"content\":[{{\"type\":\"text\",\"text\":\"{text}\"}}]}}}}\n\n"
    );
    s.write_all(SSE_HEAD).is_ok()
        && event.as_bytes().chunks(64 * 1024).all(|p| chunk(s, p))
        && s.write_all(b"0\r\n\r\n").is_ok()
}

/// An event that never ends: its first line's first `BEFORE_GO` bytes, then (after the go)
/// more until a write fails (mcplb closed the connection) or `MOST` went; then it waits for
/// the connection's end.
fn endless(s: &mut TcpStream, seen: &Seen, go: &Mutex<mpsc::Receiver<()>>) {
    let piece = [b'x'; 64 * 1024];
    let mut ok = s.write_all(SSE_HEAD).is_ok() && chunk(s, b"event: message\ndata: ");
    let mut sent = 0;
    while ok && sent < BEFORE_GO {
        ok = chunk(s, &piece);
        sent += piece.len();
    }
    seen.started.store(true, Ordering::SeqCst);
    let _ = go.lock().unwrap().recv_timeout(Duration::from_secs(60));
    while ok && sent < MOST {
        ok = chunk(s, &piece);
        sent += piece.len();
    }
    if ok {
        // Still open: wait (bounded by the read timeout) for mcplb to close it.
        ok = !matches!(s.read(&mut [0u8; 1024]), Ok(0) | Err(_));
    }
    seen.closed.store(!ok, Ordering::SeqCst);
}

/// mcplb in front of `backend`, which speaks the `era` given (`"2025"` or `"2026"`).
fn config(backend: SocketAddr, era: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nmax_sse_event_bytes = {BOUND}\n\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nera = \"{era}\"\nbackends = [\"http://{backend}/mcp\"]\n"
    )
}

/// The text of a call's answer (its last event's result), from a whole answer.
fn call_text(c: &mut HttpClient, id: u64, tool: &str) -> String {
    send_stateless_call(c, id, tool, &[]);
    let r = c.read_response().unwrap();
    assert_eq!(
        r.status,
        200,
        "{tool}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let v = r.json().unwrap();
    assert_eq!(v["id"], id, "{tool}: {v}");
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("{tool}: {v}"))
        .to_string()
}

/// Whether `body` holds bytes of the endless event (its data is a run of `x`).
fn has_event_bytes(body: &[u8]) -> bool {
    body.windows(16).any(|w| w == [b'x'; 16])
}

fn counter(admin: SocketAddr, name: &str) -> u64 {
    let mut c = HttpClient::connect(admin).unwrap();
    let r = c.request("GET", "/stats", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["counters"][name].as_u64().unwrap()
}

#[test]
fn an_endless_event_is_cut_at_the_bound_and_other_clients_go_on() {
    for driver in DRIVERS {
        let (go_tx, go_rx) = mpsc::channel();
        let (addr, seen) = backend(16, go_rx);
        let log = std::env::temp_dir().join(format!(
            "mcplb-relay-caps-{}-{driver}.log",
            std::process::id()
        ));
        let p = start_proxy_logged(&config(addr, "2025"), driver, Some(("warn", &log)));
        let admin = p.admin.unwrap();

        // The endless call: its answer's head comes, then nothing of the event.
        let mut a = HttpClient::connect_timeout(p.addr, Duration::from_secs(30)).unwrap();
        send_stateless_call(&mut a, 1, "endless", &[]);
        let mut stream = a.into_streaming().unwrap();
        assert_eq!(stream.head.status, 200, "{driver}");
        wait_until("the endless event's first half to go out", || {
            seen.started.load(Ordering::SeqCst)
        });

        // Meanwhile another client's calls are served.
        let mut b = HttpClient::connect_timeout(p.addr, Duration::from_secs(30)).unwrap();
        for id in 10..13 {
            assert_eq!(call_text(&mut b, id, "small"), "small", "{driver}");
        }

        // Past the bound the stream closes, with no byte of the event.
        go_tx.send(()).unwrap();
        let mut got = Vec::new();
        let end = loop {
            match stream.body.next_piece() {
                Ok(Some(piece)) => got.extend_from_slice(&piece),
                other => break other,
            }
        };
        assert!(
            matches!(end, Err(ClientError::ClosedInBody)),
            "{driver}: the stream must be cut (closed mid-body), got {end:?} after {} bytes",
            got.len()
        );
        assert!(
            !has_event_bytes(&got),
            "{driver}: part of the oversized event reached the client"
        );
        wait_until("the endless call's upstream connection to close", || {
            seen.closed.load(Ordering::SeqCst)
        });
        wait_until("the cut to be counted", || {
            counter(admin, "upstream_too_large") >= 1
        });
        assert_eq!(counter(admin, "upstream_too_large"), 1, "{driver}");
        wait_until("a warning naming the backend and the bound", || {
            let logged = std::fs::read_to_string(&log).unwrap_or_default();
            logged.lines().any(|l| {
                l.contains("SSE event over the bound")
                    && l.contains(&addr.to_string())
                    && l.contains(&format!("bound={BOUND}"))
            })
        });

        // The other client goes on, on its connection.
        assert_eq!(call_text(&mut b, 20, "small"), "small", "{driver}");
        let _ = std::fs::remove_file(&log);
    }
}

/// The bound is on one event, not on the stream: a notification of half the bound, then the
/// result, an event just under the bound, written back to back (so that reads take the end of
/// one and the start of the other), reach the client whole.
#[test]
fn an_event_under_the_bound_goes_through_whole() {
    for driver in DRIVERS {
        // The event's text, with its JSON around it, just under the bound.
        let big = BOUND - 1024;
        let (_go, go_rx) = mpsc::channel();
        let (addr, seen) = backend(big, go_rx);
        let p = start_proxy(&config(addr, "2025"), driver);
        let mut c = HttpClient::connect_timeout(p.addr, Duration::from_secs(30)).unwrap();
        c.set_max_body(4 * BOUND);
        send_stateless_call(&mut c, 1, "big", &[]);
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200, "{driver}");
        assert_eq!(r.events.len(), 2, "{driver}");
        let note: serde_json::Value = serde_json::from_str(&r.events[0].1).unwrap();
        assert_eq!(
            note["params"]["data"].as_str().map(str::len),
            Some(BOUND / 2)
        );
        let v = r.json().unwrap();
        assert_eq!(v["id"], 1, "{driver}");
        let text = v["result"]["content"][0]["text"].as_str().unwrap();
        assert_eq!(text.len(), big, "{driver}");
        assert!(text.bytes().all(|b| b == b'b'), "{driver}");
        // The connection and the bridge go on.
        assert_eq!(call_text(&mut c, 2, "small"), "small", "{driver}");
        assert_eq!(seen.calls.load(Ordering::SeqCst), 2, "{driver}");
        assert_eq!(
            counter(p.admin.unwrap(), "upstream_too_large"),
            0,
            "{driver}"
        );
    }
}

/// A 2025-era client's call to a 2026-07-28 backend, whose answer mcplb reads event by event
/// for `input_required` rounds (`era_ask`): an endless event ends the call with a JSON-RPC
/// error for its id in the stream mcplb opened, with no part of the event; the session goes on.
#[test]
fn a_2025_client_of_a_2026_backend_gets_an_error_for_an_endless_event() {
    for driver in DRIVERS {
        let (go_tx, go_rx) = mpsc::channel();
        go_tx.send(()).unwrap();
        let (addr, seen) = backend(16, go_rx);
        let p = start_proxy(&config(addr, "2026"), driver);
        let mut c = HttpClient::connect_timeout(p.addr, Duration::from_secs(30)).unwrap();
        let (sid, _) = init_session(&mut c);
        let call = |c: &mut HttpClient, id: u64, tool: &str| {
            let body = rpc(id, "tools/call", json!({"name": tool, "arguments": {}}));
            c.mcp("/mcp", Some(&sid), &body).unwrap()
        };
        let r = call(&mut c, 2, "endless");
        assert_eq!(r.status, 200, "{driver}");
        assert!(
            !has_event_bytes(&r.body),
            "{driver}: part of the event reached the client"
        );
        let v = r.json().unwrap();
        assert_eq!(v["id"], 2, "{driver}: {v}");
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("max_sse_event_bytes"), "{driver}: {v}");
        wait_until("the endless call's upstream connection to close", || {
            seen.closed.load(Ordering::SeqCst)
        });
        wait_until("the cut to be counted", || {
            counter(p.admin.unwrap(), "upstream_too_large") == 1
        });
        let r = call(&mut c, 3, "small");
        assert_eq!(
            r.json().unwrap()["result"]["content"][0]["text"],
            "small",
            "{driver}"
        );
    }
}
