//! What mcplb does when a backend takes a whole request and then fails, through a real `mcplb`
//! process: the backend resets the connection (SO_LINGER 0, then close) or hangs (holds the
//! socket and never answers) after reading a complete request. A `tools/call` that reached a
//! backend must never be sent again (it may have run): it ran exactly once and the client gets
//! a JSON-RPC error with its id (502 after a reset, 504 after `upstream_timeout`). A
//! `tools/list` only reads: it is retried on the other backend and answered 200 from there.
//!
//! Each case runs on a fresh upstream connection (the failing backend closes after every
//! answer) and on a reused one (the failing request goes out on the pooled keep-alive
//! connection an earlier answer left), stateless and inside a session (with
//! `session_failover = "reinitialize"`, where mcplb may move a session to another backend),
//! on both drivers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// What the failing backend does once it has read a whole request for an armed method.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Failure {
    /// SO_LINGER 0 and close: the peer sees a reset.
    Reset,
    /// Keeps the socket open and never answers.
    Hang,
}

/// One request as a test backend received it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    /// How many requests the same connection carried before this one (0: a fresh connection).
    earlier_on_conn: u64,
}

struct BackendState {
    name: String,
    /// `Some`: requests for these methods get the failure instead of an answer.
    failure: Option<(Failure, &'static [&'static str])>,
    /// Answers keep the connection open (else `connection: close` and close after each).
    keep_alive: bool,
    seen: Mutex<Vec<Seen>>,
    sessions: AtomicU64,
    /// Sockets of hung requests, held until the backend is dropped.
    held: Mutex<Vec<TcpStream>>,
    stop: AtomicBool,
}

/// A small HTTP/1.1 MCP backend on 127.0.0.1:0 that counts every request by method (a
/// thread per connection).
struct Backend {
    addr: SocketAddr,
    state: Arc<BackendState>,
}

impl Backend {
    fn start(
        name: &str,
        failure: Option<(Failure, &'static [&'static str])>,
        keep_alive: bool,
    ) -> Backend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let state = Arc::new(BackendState {
            name: name.to_string(),
            failure,
            keep_alive,
            seen: Mutex::new(Vec::new()),
            sessions: AtomicU64::new(0),
            held: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            while !st.stop.load(Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || serve(s, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Backend { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// Requests received for `method`.
    fn count(&self, method: &str) -> usize {
        self.seen().iter().filter(|s| s.method == method).count()
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.state.stop.store(true, Relaxed);
        self.state.held.lock().unwrap().clear();
    }
}

/// Reads one request (head and Content-Length body); `None` at EOF or on an error.
fn read_json_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Value> {
    let (_, body) = read_request(s, buf)?;
    Some(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

fn serve(mut s: TcpStream, st: &BackendState) {
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = Vec::new();
    let mut earlier_on_conn = 0;
    while let Some(msg) = read_json_request(&mut s, &mut buf) {
        let method = msg["method"].as_str().unwrap_or("").to_string();
        st.seen.lock().unwrap().push(Seen {
            method: method.clone(),
            earlier_on_conn,
        });
        earlier_on_conn += 1;
        if let Some((failure, methods)) = st.failure {
            if methods.contains(&method.as_str()) {
                match failure {
                    Failure::Reset => {
                        socket2::SockRef::from(&s)
                            .set_linger(Some(Duration::ZERO))
                            .unwrap();
                        drop(s);
                    }
                    Failure::Hang => st.held.lock().unwrap().push(s),
                }
                return;
            }
        }
        let mut extra = String::new();
        let body = match (&msg["id"], method.as_str()) {
            (Value::Null, _) => None,
            (id, "initialize") => {
                let n = st.sessions.fetch_add(1, Relaxed) + 1;
                extra.push_str(&format!("mcp-session-id: {}-{n}\r\n", st.name));
                Some(json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
                    "serverInfo": {"name": st.name, "version": "0"}}}))
            }
            (id, "tools/list") => Some(json!({"jsonrpc": "2.0", "id": id,
                "result": {"tools": [], "_meta": {"backend": st.name}}})),
            (id, _) => Some(json!({"jsonrpc": "2.0", "id": id,
                "result": {"content": [{"type": "text", "text": st.name}],
                    "_meta": {"backend": st.name}}})),
        };
        if !st.keep_alive {
            extra.push_str("connection: close\r\n");
        }
        let answer = match body {
            None => format!("HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n{extra}\r\n"),
            Some(b) => {
                let b = b.to_string();
                format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n{b}",
                    b.len()
                )
            }
        };
        if s.write_all(answer.as_bytes()).is_err() || !st.keep_alive {
            return;
        }
    }
}

/// One scenario of the matrix.
#[derive(Clone, Copy, Debug)]
struct Case {
    failure: Failure,
    /// The failing request goes out on a pooled connection that already carried an answer.
    reused: bool,
    /// Inside a session (else stateless requests).
    session: bool,
    /// `tools/call` (must run once) or `tools/list` (retried elsewhere).
    method: &'static str,
    driver: &'static str,
}

const UPSTREAM_TIMEOUT: &str = "2s";

fn config(bad: &Backend, good: &Backend) -> String {
    // balance = "hash" on a header lets the test pin a request to the failing backend; health
    // checks are off so that only the test's requests reach the backends.
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nupstream_timeout = \"{UPSTREAM_TIMEOUT}\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"{}\", \"{}\"]\n\
         balance = \"hash\"\nhash_key = \"header:x-pin\"\nsession_failover = \"reinitialize\"\n\n\
         [servers.health]\nenabled = false\n",
        bad.url(),
        good.url()
    )
}

fn post(
    c: &mut HttpClient,
    pin: &str,
    sid: Option<&str>,
    id: Option<u64>,
    method: &str,
    params: Value,
) -> mcplb::demo::Response {
    let mut body = json!({"jsonrpc": "2.0", "method": method, "params": params});
    if let Some(id) = id {
        body["id"] = json!(id);
    }
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("x-pin", pin),
    ];
    match sid {
        Some(s) => h.push(("mcp-session-id", s)),
        None => h.push(("mcp-protocol-version", "2026-07-28")),
    }
    c.request("POST", "/mcp", &h, body.to_string().as_bytes())
        .unwrap()
}

/// Finds a pin that routes to the backend named `bad` and, in a session case, opens a session
/// there. Returns (pin, session id).
fn pin_to_bad(c: &mut HttpClient, case: Case) -> (String, Option<String>) {
    for k in 0..200 {
        let pin = format!("k{k}");
        let (r, who) = if case.session {
            let r = post(
                c,
                &pin,
                None,
                Some(1),
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"}}),
            );
            let who = r.json().unwrap()["result"]["serverInfo"]["name"].clone();
            (r, who)
        } else {
            let r = post(c, &pin, None, Some(1), "ping", json!({}));
            let who = r.json().unwrap()["result"]["_meta"]["backend"].clone();
            (r, who)
        };
        assert_eq!(
            r.status,
            200,
            "{case:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        if who != "bad" {
            continue;
        }
        let sid = case.session.then(|| {
            let sid = r.header("mcp-session-id").expect("session id").to_string();
            let n = post(
                c,
                &pin,
                Some(&sid),
                None,
                "notifications/initialized",
                json!({}),
            );
            assert_eq!(n.status, 202, "{case:?}");
            sid
        });
        return (pin, sid);
    }
    panic!("{case:?}: no pin routes to the failing backend");
}

fn run(case: Case) {
    let bad = Backend::start(
        "bad",
        Some((case.failure, &["tools/call", "tools/list"])),
        case.reused,
    );
    let good = Backend::start("good", None, true);
    let p = start_proxy(&config(&bad, &good), case.driver);
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (pin, sid) = pin_to_bad(&mut c, case);
    let params = if case.method == "tools/call" {
        json!({"name": "work", "arguments": {}})
    } else {
        json!({})
    };
    let id = 4242;
    let good_inits = good.count("initialize");
    let r = post(&mut c, &pin, sid.as_deref(), Some(id), case.method, params);
    let v = r.json().unwrap_or_default();
    let on_bad: Vec<Seen> = bad
        .seen()
        .into_iter()
        .filter(|s| s.method == case.method)
        .collect();
    // The premise: the failing request went out on the kind of connection the case names.
    let first = on_bad
        .first()
        .unwrap_or_else(|| panic!("{case:?}: the failing backend never got the request"));
    assert_eq!(
        first.earlier_on_conn > 0,
        case.reused,
        "{case:?}: the request reached the failing backend on an unexpected connection: {:?}",
        bad.seen()
    );
    if case.method == "tools/call" {
        let total = bad.count("tools/call") + good.count("tools/call");
        assert_eq!(
            total,
            1,
            "{case:?}: the tools/call ran {total} times (failing backend {}, other {}); \
             answer {} {v}",
            bad.count("tools/call"),
            good.count("tools/call"),
            r.status
        );
        let status = match case.failure {
            Failure::Reset => 502,
            Failure::Hang => 504,
        };
        assert_eq!(r.status, status, "{case:?}: {v}");
        assert_eq!(v["jsonrpc"], "2.0", "{case:?}: {v}");
        assert_eq!(
            v["id"], id,
            "{case:?}: the error must carry the request's id: {v}"
        );
        assert!(
            v["error"]["code"].is_i64(),
            "{case:?}: no JSON-RPC error: {v}"
        );
        assert!(v.get("result").is_none(), "{case:?}: {v}");
    } else {
        assert_eq!(r.status, 200, "{case:?}: {v}");
        assert_eq!(v["id"], id, "{case:?}: {v}");
        assert_eq!(v["result"]["_meta"]["backend"], "good", "{case:?}: {v}");
        assert_eq!(good.count("tools/list"), 1, "{case:?}");
        // A reused connection that died before answering may be retried once on a fresh one
        // to the same backend (it only reads) before another backend is tried.
        assert!(
            (1..=2).contains(&on_bad.len()),
            "{case:?}: tools/list reached the failing backend {} times",
            on_bad.len()
        );
        if case.session {
            // The session moved: its initialize was replayed on the other backend.
            assert_eq!(good.count("initialize"), good_inits + 1, "{case:?}");
        }
    }
    // mcplb still serves.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let r = post(&mut c, "elsewhere", None, Some(7), "ping", json!({}));
    assert_eq!(r.status, 200, "{case:?}");
}

fn matrix(failure: Failure, reused: bool) {
    for driver in DRIVERS {
        for session in [false, true] {
            for method in ["tools/call", "tools/list"] {
                run(Case {
                    failure,
                    reused,
                    session,
                    method,
                    driver,
                });
            }
        }
    }
}

#[test]
fn reset_after_full_request_on_a_fresh_connection() {
    matrix(Failure::Reset, false);
}

#[test]
fn reset_after_full_request_on_a_reused_connection() {
    matrix(Failure::Reset, true);
}

#[test]
fn hang_after_full_request_on_a_fresh_connection() {
    matrix(Failure::Hang, false);
}

#[test]
fn hang_after_full_request_on_a_reused_connection() {
    matrix(Failure::Hang, true);
}
