//! The 2024-11-05 HTTP+SSE bridges, tested directly (no mcplb process):
//! - `LegacyFront` in front of the workspace's mock Streamable HTTP server, driven by a raw
//!   old-style client (GET /sse, POST to the announced endpoint, answers off the stream);
//! - `LegacyBackend` in front of a tiny old-style server written here (std threads), and in
//!   front of the official Python SDK's SSE server when the repository's `.venv` exists;
//! - both chained: an old client through `LegacyFront` → `LegacyBackend` → an old server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mcplb::bridges::legacy::{LegacyBackend, LegacyFront};
use mcplb::demo::HttpClient;
use mcplb::http::ChunkedDecoder;
use mock::{MockConfig, MockServer};
use protocol::SseParser;
use serde_json::{json, Value};

use common::sse::{header_pairs, SseClient, WAIT};

fn rpc(id: impl Into<Value>, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.into(), "method": method, "params": params})
}

fn init_params() -> Value {
    json!({"protocolVersion": "2024-11-05", "capabilities": {},
        "clientInfo": {"name": "legacy-test", "version": "0"}})
}

// ---------------------------------------------------------------------------------------------
// An old-style (2024-11-05) server: GET /sse + POST /messages?session_id=X

struct OldServer {
    addr: SocketAddr,
    /// SSE connections the bridge closed.
    closed: Arc<AtomicUsize>,
    /// SSE connections opened.
    opened: Arc<AtomicUsize>,
    /// Authorization headers seen on POSTs.
    auth: Arc<Mutex<Vec<String>>>,
}

type Streams = Arc<Mutex<HashMap<String, Sender<Option<String>>>>>;
type Answers = Arc<Mutex<HashMap<String, Sender<Value>>>>;

impl OldServer {
    fn start() -> OldServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let streams: Streams = Arc::default();
        let answers: Answers = Arc::default();
        let closed = Arc::new(AtomicUsize::new(0));
        let opened = Arc::new(AtomicUsize::new(0));
        let auth = Arc::new(Mutex::new(Vec::new()));
        let (c2, o2, a2) = (closed.clone(), opened.clone(), auth.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (streams, answers) = (streams.clone(), answers.clone());
                let (closed, opened, auth) = (c2.clone(), o2.clone(), a2.clone());
                std::thread::spawn(move || {
                    old_conn(conn, &streams, &answers, &closed, &opened, &auth)
                });
            }
        });
        OldServer {
            addr,
            closed,
            opened,
            auth,
        }
    }

    fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }
}

/// Method, target, lower-cased headers and body of one request.
type RawRequest = (String, String, Vec<(String, String)>, Vec<u8>);

fn read_req(conn: &mut TcpStream) -> Option<RawRequest> {
    let mut buf = Vec::new();
    let head_len = loop {
        if let Some(n) = mcplb::http::head_len(&buf) {
            break n;
        }
        let mut tmp = [0u8; 4096];
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    };
    let mut storage = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut storage);
    req.parse(&buf[..head_len]).ok()?;
    let method = req.method?.to_string();
    let path = req.path?.to_string();
    let headers = header_pairs(req.headers);
    let len: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_len..].to_vec();
    while body.len() < len {
        let mut tmp = [0u8; 4096];
        match conn.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&tmp[..n]),
        }
    }
    Some((method, path, headers, body))
}

fn old_conn(
    mut conn: TcpStream,
    streams: &Streams,
    answers: &Answers,
    closed: &Arc<AtomicUsize>,
    opened: &Arc<AtomicUsize>,
    auth: &Arc<Mutex<Vec<String>>>,
) {
    let Some((method, path, headers, body)) = read_req(&mut conn) else {
        return;
    };
    if method == "GET" && path == "/sse" {
        let id = format!("{:x}", rand::random::<u64>());
        let (tx, rx) = mpsc::channel::<Option<String>>();
        streams.lock().unwrap().insert(id.clone(), tx);
        opened.fetch_add(1, Ordering::SeqCst);
        // A close-delimited stream (no chunking), as simple old servers write it.
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n\
             event: endpoint\r\ndata: /messages?session_id={id}\r\n\r\n"
        );
        if conn.write_all(head.as_bytes()).is_err() {
            return;
        }
        // Notice the bridge closing the connection.
        let mut watch = conn.try_clone().unwrap();
        let closed2 = closed.clone();
        let streams2 = streams.clone();
        let id2 = id.clone();
        std::thread::spawn(move || {
            let mut tmp = [0u8; 64];
            while matches!(watch.read(&mut tmp), Ok(n) if n > 0) {}
            streams2.lock().unwrap().remove(&id2);
            closed2.fetch_add(1, Ordering::SeqCst);
        });
        while let Ok(Some(msg)) = rx.recv() {
            let ev = format!("event: message\r\ndata: {msg}\r\n\r\n");
            if conn.write_all(ev.as_bytes()).is_err() {
                break;
            }
        }
        let _ = conn.shutdown(std::net::Shutdown::Both);
        return;
    }
    if method == "POST" && path.starts_with("/messages?session_id=") {
        if let Some((_, a)) = headers.iter().find(|(n, _)| n == "authorization") {
            auth.lock().unwrap().push(a.clone());
        }
        let id = path.trim_start_matches("/messages?session_id=").to_string();
        let Some(tx) = streams.lock().unwrap().get(&id).cloned() else {
            let _ = conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n");
            return;
        };
        let _ = conn.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 8\r\n\r\nAccepted");
        let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
            return;
        };
        let answers = answers.clone();
        std::thread::spawn(move || old_handle(msg, &tx, &answers));
    }
}

fn old_handle(msg: Value, tx: &Sender<Option<String>>, answers: &Answers) {
    let send = |v: Value| {
        let _ = tx.send(Some(v.to_string()));
    };
    let id = msg["id"].clone();
    let result = |r: Value| json!({"jsonrpc": "2.0", "id": id, "result": r});
    let text = |t: &str| json!({"content": [{"type": "text", "text": t}]});
    let Some(method) = msg["method"].as_str() else {
        // A response from the client to one of our requests.
        if let Some(waiter) = answers.lock().unwrap().remove(&msg["id"].to_string()) {
            let _ = waiter.send(msg);
        }
        return;
    };
    if msg.get("id").is_none() {
        return; // notifications
    }
    match method {
        "initialize" => send(result(json!({"protocolVersion": "2024-11-05",
            "capabilities": {"tools": {}}, "serverInfo": {"name": "old", "version": "1"}}))),
        "ping" => send(result(json!({}))),
        "tools/list" => send(result(json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object"}},
            {"name": "progress", "inputSchema": {"type": "object"}},
            {"name": "ask", "inputSchema": {"type": "object"}},
            {"name": "notify", "inputSchema": {"type": "object"}},
            {"name": "die", "inputSchema": {"type": "object"}}]}))),
        "tools/call" => match msg["params"]["name"].as_str().unwrap_or("") {
            "echo" => send(result(text(
                msg["params"]["arguments"]["text"].as_str().unwrap_or(""),
            ))),
            "progress" => {
                let token = msg["params"]["_meta"]["progressToken"].clone();
                for i in 1..=3 {
                    send(json!({"jsonrpc": "2.0", "method": "notifications/progress",
                        "params": {"progressToken": token, "progress": i, "total": 3}}));
                    std::thread::sleep(Duration::from_millis(100));
                }
                send(result(text("progress done")));
            }
            "ask" => {
                let (wtx, wrx) = mpsc::channel();
                answers
                    .lock()
                    .unwrap()
                    .insert(json!("srv-1").to_string(), wtx);
                send(
                    json!({"jsonrpc": "2.0", "id": "srv-1", "method": "sampling/createMessage",
                    "params": {"messages": [], "maxTokens": 10}}),
                );
                let answer = wrx
                    .recv_timeout(Duration::from_secs(5))
                    .map(|a| {
                        a["result"]["content"]["text"]
                            .as_str()
                            .unwrap_or("?")
                            .to_string()
                    })
                    .unwrap_or_else(|_| "no answer".into());
                send(result(text(&format!("client said {answer}"))));
            }
            "notify" => {
                send(json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}));
                std::thread::sleep(Duration::from_millis(50));
                send(result(text("notified")));
            }
            "die" => {
                let _ = tx.send(None);
            }
            _ => send(json!({"jsonrpc": "2.0", "id": id,
                "error": {"code": -32602, "message": "unknown tool"}})),
        },
        _ => send(json!({"jsonrpc": "2.0", "id": id,
            "error": {"code": -32601, "message": "method not found"}})),
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Initializes a Streamable HTTP session at `addr` and returns its id.
fn streamable_init(c: &mut HttpClient) -> String {
    let r = c
        .mcp("/mcp", None, &rpc(1, "initialize", init_params()))
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let v = r.json().unwrap();
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["serverInfo"]["name"], "old");
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let n = c
        .mcp(
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .unwrap();
    assert_eq!(n.status, 202);
    sid
}

// ---------------------------------------------------------------------------------------------
// LegacyBackend

#[test]
fn backend_session_calls_and_progress() {
    let old = OldServer::start();
    let bridge = LegacyBackend::start(&old.sse_url()).unwrap();
    assert_eq!(bridge.url(), format!("http://{}/mcp", bridge.addr()));
    let mut c = HttpClient::connect(bridge.addr()).unwrap();
    let sid = streamable_init(&mut c);
    assert_eq!(old.opened.load(Ordering::SeqCst), 1);
    assert_eq!(bridge.sessions(), 1);

    // A quick answer comes back as JSON; ids keep their type.
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                "s-2",
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let v = r.json().unwrap();
    assert_eq!(v["id"], "s-2");
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    let r = c
        .mcp("/mcp", Some(&sid), &rpc(3, "tools/list", json!({})))
        .unwrap();
    assert_eq!(r.json().unwrap()["result"]["tools"][0]["name"], "echo");

    // Progress streams as SSE, each event before the result.
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                4,
                "tools/call",
                json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": "tok"}}),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let msgs: Vec<Value> = r
        .events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(msgs.len(), 4, "{msgs:?}");
    for (i, m) in msgs[..3].iter().enumerate() {
        assert_eq!(m["method"], "notifications/progress");
        assert_eq!(m["params"]["progressToken"], "tok");
        assert_eq!(m["params"]["progress"], i as u64 + 1);
    }
    assert_eq!(msgs[3]["id"], 4);
    assert_eq!(msgs[3]["result"]["content"][0]["text"], "progress done");
    // The events arrived spread out (streamed, not buffered).
    assert!(r.events[3].0.duration_since(r.events[0].0) >= Duration::from_millis(150));

    // A batch (2025-03-26) answers as a JSON array.
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &json!([rpc(5, "ping", json!({})), rpc(6, "ping", json!({}))]),
        )
        .unwrap();
    let v = r.json().unwrap();
    let mut ids: Vec<u64> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, [5, 6]);

    // Unknown method errors come through unchanged.
    let r = c
        .mcp("/mcp", Some(&sid), &rpc(7, "nope", json!({})))
        .unwrap();
    assert_eq!(r.json().unwrap()["error"]["code"], -32601);

    // DELETE closes the old server's stream; the session is gone.
    let d = c
        .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"")
        .unwrap();
    assert_eq!(d.status, 200);
    wait_until("the old stream to close", || {
        old.closed.load(Ordering::SeqCst) == 1
    });
    let r = c
        .mcp("/mcp", Some(&sid), &rpc(8, "ping", json!({})))
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(bridge.sessions(), 0);
}

#[test]
fn backend_errors_and_auth() {
    let old = OldServer::start();
    let bridge = LegacyBackend::start(&old.sse_url()).unwrap();
    let mut c = HttpClient::connect(bridge.addr()).unwrap();
    // No session and not initialize: 400 with a JSON-RPC error carrying the id.
    let r = c
        .mcp("/mcp", None, &rpc(9, "tools/list", json!({})))
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["id"], 9);
    // Unknown session: 404.
    let r = c
        .mcp("/mcp", Some("nope"), &rpc(1, "ping", json!({})))
        .unwrap();
    assert_eq!(r.status, 404);
    // Bad JSON: 400; other paths: 404.
    let r = c
        .request(
            "POST",
            "/mcp",
            &[("content-type", "application/json")],
            b"{",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.json().unwrap()["error"]["code"], -32700);
    let r = c.request("GET", "/other", &[], b"").unwrap();
    assert_eq!(r.status, 404);
    // GET without a session: 400.
    let r = c
        .request("GET", "/mcp", &[("accept", "text/event-stream")], b"")
        .unwrap();
    assert_eq!(r.status, 400);

    // Authorization reaches the old server.
    let body = rpc(1, "initialize", init_params()).to_string();
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("authorization", "Bearer t0k"),
            ],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(old.auth.lock().unwrap().as_slice(), ["Bearer t0k"]);
    let sid = r.header("mcp-session-id").unwrap().to_string();

    // The old server's stream closes: requests in flight and later get answers, then 404.
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &rpc(2, "tools/call", json!({"name": "die", "arguments": {}})),
        )
        .unwrap();
    let v = r.json().unwrap();
    assert_eq!(v["id"], 2);
    assert_eq!(v["error"]["code"], -32603);
    wait_until("the session to end", || bridge.sessions() == 0);
    let r = c
        .mcp("/mcp", Some(&sid), &rpc(3, "ping", json!({})))
        .unwrap();
    assert_eq!(r.status, 404);

    // An unreachable old server: 502 with the initialize id.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/sse", dead.local_addr().unwrap());
    drop(dead);
    let bridge2 = LegacyBackend::start(&dead_url).unwrap();
    let mut c2 = HttpClient::connect(bridge2.addr()).unwrap();
    let r = c2
        .mcp("/mcp", None, &rpc(11, "initialize", init_params()))
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json().unwrap()["id"], 11);
    assert!(LegacyBackend::start("https://x/sse").is_err());
}

#[test]
fn backend_server_requests_and_get_stream() {
    let old = OldServer::start();
    let bridge = LegacyBackend::start(&old.sse_url()).unwrap();
    let mut c = HttpClient::connect(bridge.addr()).unwrap();
    let sid = streamable_init(&mut c);

    // A server request during a tool call arrives on that call's stream; the client answers it
    // with a POST (202) and the call completes with what the client said.
    let body = rpc(10, "tools/call", json!({"name": "ask", "arguments": {}})).to_string();
    let mut caller = TcpStream::connect(bridge.addr()).unwrap();
    caller
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    caller.write_all(req.as_bytes()).unwrap();
    let mut stream = SseClient {
        stream: caller,
        buf: Vec::new(),
        chunked: None,
        parser: SseParser::new(),
        status: 0,
        headers: vec![],
        others: vec![],
    };
    // Read the head by hand, then switch to chunked decoding.
    let deadline = Instant::now() + WAIT;
    let head_len = loop {
        if let Some(n) = mcplb::http::head_len(&stream.buf) {
            break n;
        }
        assert!(Instant::now() < deadline);
        let mut tmp = [0u8; 4096];
        if let Ok(n) = stream.stream.read(&mut tmp) {
            stream.buf.extend_from_slice(&tmp[..n]);
        }
    };
    let head = String::from_utf8_lossy(&stream.buf[..head_len]).to_string();
    assert!(head.contains("text/event-stream"), "{head}");
    stream.buf.drain(..head_len);
    stream.chunked = Some(ChunkedDecoder::new());
    let ask = stream.message(WAIT).unwrap();
    assert_eq!(ask["method"], "sampling/createMessage");
    assert_eq!(ask["id"], "srv-1");
    let mut c2 = HttpClient::connect(bridge.addr()).unwrap();
    let r = c2
        .mcp(
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc": "2.0", "id": "srv-1",
                "result": {"role": "assistant", "content": {"type": "text", "text": "42"}, "model": "m"}}),
        )
        .unwrap();
    assert_eq!(r.status, 202);
    let done = stream.message(WAIT).unwrap();
    assert_eq!(done["id"], 10);
    assert_eq!(done["result"]["content"][0]["text"], "client said 42");

    // A server notification while only a JSON-only call is in flight goes to the GET stream.
    let mut get = SseClient::open(bridge.addr(), "/mcp", &[("mcp-session-id", &sid)]);
    assert_eq!(get.status, 200);
    assert!(get
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json"),
                ("mcp-session-id", &sid),
            ],
            rpc(11, "tools/call", json!({"name": "notify", "arguments": {}}))
                .to_string()
                .as_bytes(),
        )
        .unwrap();
    assert_eq!(
        r.json().unwrap()["result"]["content"][0]["text"],
        "notified"
    );
    let n = get.message(WAIT).unwrap();
    assert_eq!(n["method"], "notifications/tools/list_changed");

    // DELETE ends the GET stream too.
    let d = c
        .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"")
        .unwrap();
    assert_eq!(d.status, 200);
    assert!(get.closed_within(WAIT));
}

// ---------------------------------------------------------------------------------------------
// LegacyFront

/// Opens `/mcp/sse` on the front and returns the stream and the announced POST path.
fn front_open(front: &LegacyFront) -> (SseClient, String) {
    let mut sse = SseClient::open(front.addr(), "/mcp/sse", &[]);
    assert_eq!(sse.status, 200);
    assert!(sse
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    let ev = sse.next(WAIT).unwrap();
    assert_eq!(ev.event.as_deref(), Some("endpoint"));
    assert!(
        ev.data.starts_with("/mcp/messages?sessionId="),
        "{}",
        ev.data
    );
    (sse, ev.data)
}

fn post(c: &mut HttpClient, path: &str, msg: &Value) -> u16 {
    c.request(
        "POST",
        path,
        &[("content-type", "application/json")],
        msg.to_string().as_bytes(),
    )
    .unwrap()
    .status
}

#[test]
fn front_in_front_of_streamable_mock() {
    let mock = MockServer::start(
        MockConfig {
            name: "m1".into(),
            progress_events: 3,
            progress_interval: Duration::from_millis(100),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let front = LegacyFront::start(&mock.url(), "/mcp").unwrap();
    assert_eq!(front.sse_url(), format!("http://{}/mcp/sse", front.addr()));
    let (mut sse, endpoint) = front_open(&front);
    let mut c = HttpClient::connect(front.addr()).unwrap();

    assert_eq!(
        post(&mut c, &endpoint, &rpc(1, "initialize", init_params())),
        202
    );
    let init = sse.message(WAIT).unwrap();
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["serverInfo"]["name"], "m1");
    assert_eq!(mock.sessions(), 1);
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ),
        202
    );
    assert_eq!(
        post(&mut c, &endpoint, &rpc("a", "tools/list", json!({}))),
        202
    );
    let list = sse.response("a");
    assert!(list["result"]["tools"].as_array().unwrap().len() >= 3);
    let version = init["result"]["protocolVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(mock.last_header("mcp-protocol-version"), Some(version));

    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &rpc(3, "tools/call", json!({"name": "whoami", "arguments": {}}))
        ),
        202
    );
    let who = sse.response(3);
    assert_eq!(who["result"]["content"][0]["text"], "m1");

    // Progress: each notification reaches the old client before the result.
    let t0 = Instant::now();
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &rpc(
                4,
                "tools/call",
                json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": 7}})
            )
        ),
        202
    );
    let first = sse.non_log();
    assert_eq!(first["method"], "notifications/progress");
    assert_eq!(first["params"]["progressToken"], 7);
    let first_at = t0.elapsed();
    let mut rest = Vec::new();
    while rest.len() < 3 {
        rest.push(sse.non_log());
    }
    assert_eq!(rest[2]["id"], 4);
    assert_eq!(rest[2]["result"]["content"][0]["text"], "progress done");
    assert!(t0.elapsed() > first_at + Duration::from_millis(150));
    // The upstream's GET stream (server-initiated messages) is relayed too: the mock greets.
    let hello = (0..20)
        .find_map(|_| {
            sse.others
                .iter()
                .find(|m| m["method"] == "notifications/message")
                .cloned()
                .or_else(|| {
                    let m = sse.message(Duration::from_millis(250));
                    m.inspect(|m| sse.others.push(m.clone()));
                    None
                })
        })
        .expect("the GET stream's hello");
    assert_eq!(hello["params"]["data"], "hello from m1");

    // Unknown session: 404; bad JSON: 400; wrong path: 404.
    assert_eq!(
        post(
            &mut c,
            "/mcp/messages?sessionId=nope",
            &rpc(5, "ping", json!({}))
        ),
        404
    );
    let r = c
        .request(
            "POST",
            &endpoint,
            &[("content-type", "application/json")],
            b"{",
        )
        .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(
        c.request("GET", "/elsewhere", &[], b"").unwrap().status,
        404
    );

    // Closing the client's stream DELETEs the upstream session.
    assert_eq!(front.sessions(), 1);
    drop(sse);
    wait_until("the upstream session to be deleted", || {
        mock.sessions() == 0 && front.sessions() == 0
    });
    assert_eq!(
        post(&mut c, &endpoint, &rpc(6, "ping", json!({}))),
        404,
        "the session ended with its stream"
    );
}

#[test]
fn front_reports_upstream_failures() {
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/mcp", dead.local_addr().unwrap());
    drop(dead);
    let front = LegacyFront::start(&url, "/mcp/").unwrap();
    let (mut sse, endpoint) = front_open(&front);
    let mut c = HttpClient::connect(front.addr()).unwrap();
    assert_eq!(
        post(&mut c, &endpoint, &rpc(1, "initialize", init_params())),
        202
    );
    let err = sse.message(WAIT).unwrap();
    assert_eq!(err["id"], 1);
    assert_eq!(err["error"]["code"], -32603);
    assert!(LegacyFront::start("http://127.0.0.1:1/mcp", "mcp").is_err());
}

#[test]
fn front_upstream_session_expiry_ends_the_stream() {
    let mock = MockServer::start(
        MockConfig {
            name: "m2".into(),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let front = LegacyFront::start(&mock.url(), "/mcp").unwrap();
    let (mut sse, endpoint) = front_open(&front);
    let mut c = HttpClient::connect(front.addr()).unwrap();
    assert_eq!(
        post(&mut c, &endpoint, &rpc(1, "initialize", init_params())),
        202
    );
    sse.message(WAIT).unwrap();
    // End the upstream session behind the bridge's back.
    let mut m = HttpClient::connect(mock.addr()).unwrap();
    for n in 1..=3 {
        let _ = m.request(
            "DELETE",
            "/mcp",
            &[("mcp-session-id", &format!("m2-{n}"))],
            b"",
        );
    }
    assert_eq!(mock.sessions(), 0);
    assert_eq!(post(&mut c, &endpoint, &rpc(2, "ping", json!({}))), 202);
    let err = sse.response(2);
    assert!(err["error"]["code"].is_i64(), "{err}");
    assert!(sse.closed_within(WAIT), "the client must reconnect");
}

// ---------------------------------------------------------------------------------------------
// Both bridges chained: old client → LegacyFront → LegacyBackend → old server

#[test]
fn chained_old_client_to_old_server() {
    let old = OldServer::start();
    let backend = LegacyBackend::start(&old.sse_url()).unwrap();
    let front = LegacyFront::start(&backend.url(), "/mcp").unwrap();
    let (mut sse, endpoint) = front_open(&front);
    let mut c = HttpClient::connect(front.addr()).unwrap();
    assert_eq!(
        post(&mut c, &endpoint, &rpc(1, "initialize", init_params())),
        202
    );
    let init = sse.message(WAIT).unwrap();
    assert_eq!(init["result"]["serverInfo"]["name"], "old");
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"})
        ),
        202
    );
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &rpc(
                2,
                "tools/call",
                json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": "p"}})
            )
        ),
        202
    );
    let mut got = Vec::new();
    while got.len() < 4 {
        got.push(sse.message(WAIT).unwrap());
    }
    assert!(got[..3]
        .iter()
        .all(|m| m["method"] == "notifications/progress"));
    assert_eq!(got[3]["id"], 2);
    // A server request mid-call reaches the old client, whose answer (POSTed to the front)
    // completes the call.
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &rpc(3, "tools/call", json!({"name": "ask", "arguments": {}}))
        ),
        202
    );
    let ask = sse.message(WAIT).unwrap();
    assert_eq!(ask["method"], "sampling/createMessage");
    assert_eq!(
        post(
            &mut c,
            &endpoint,
            &json!({"jsonrpc": "2.0", "id": ask["id"],
                "result": {"role": "assistant", "content": {"type": "text", "text": "yes"}, "model": "m"}})
        ),
        202
    );
    let done = sse.message(WAIT).unwrap();
    assert_eq!(done["id"], 3);
    assert_eq!(done["result"]["content"][0]["text"], "client said yes");
    drop(sse);
    wait_until("the chain to wind down", || {
        backend.sessions() == 0 && old.closed.load(Ordering::SeqCst) == 1
    });
}

// ---------------------------------------------------------------------------------------------
// The official Python SDK's SSE server behind LegacyBackend (skipped without the venv)

fn venv_python() -> Option<std::path::PathBuf> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let py = root.join(".venv/bin/python");
    py.exists().then_some(py)
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tests/py/SCRIPT --port P --name NAME` and waits for the port.
fn start_py(py: &std::path::Path, script: &str, name: &str) -> (Child, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/py")
        .join(script);
    let child = Child(
        std::process::Command::new(py)
            .arg(script)
            .args(["--port", &port.to_string(), "--name", name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{name} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    (child, port)
}

/// Runs the SDK client round trip of `tests/py/test_legacy_sse.py` (`old-client` or
/// `new-client`) against `url`.
fn run_py_client(py: &std::path::Path, mode: &str, url: &str, name: &str) {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/py/test_legacy_sse.py");
    let out = std::process::Command::new(py)
        .arg(script)
        .args([mode, url, name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("OK"),
        "{mode} against {url} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn python_sdk_clients_through_the_bridges() {
    let Some(py) = venv_python() else {
        eprintln!("skipped: no .venv with the mcp SDK");
        return;
    };
    // The SDK's legacy SSE client → LegacyFront → an SDK Streamable HTTP server.
    let (_new_server, new_port) = start_py(&py, "mcp_server.py", "py-new");
    let front = LegacyFront::start(&format!("http://127.0.0.1:{new_port}/mcp"), "/mcp").unwrap();
    run_py_client(&py, "old-client", &front.sse_url(), "py-new");
    // The SDK's Streamable HTTP client → LegacyBackend → an SSE-only SDK server.
    let (_old_server, old_port) = start_py(&py, "legacy_server.py", "py-old");
    let backend = LegacyBackend::start(&format!("http://127.0.0.1:{old_port}/sse")).unwrap();
    run_py_client(&py, "new-client", &backend.url(), "py-old");
    // The SDK's legacy SSE client → LegacyFront → LegacyBackend → the SSE-only SDK server.
    let front2 = LegacyFront::start(&backend.url(), "/mcp").unwrap();
    run_py_client(&py, "old-client", &front2.sse_url(), "py-old");
    wait_until("sessions to close", || {
        front.sessions() == 0 && front2.sessions() == 0 && backend.sessions() == 0
    });
}

#[test]
fn backend_with_python_sdk_sse_server() {
    let Some(py) = venv_python() else {
        eprintln!("skipped: no .venv with the mcp SDK");
        return;
    };
    let (_child, port) = start_py(&py, "legacy_server.py", "sdk-old");
    let bridge = LegacyBackend::start(&format!("http://127.0.0.1:{port}/sse")).unwrap();
    let mut c = HttpClient::connect(bridge.addr()).unwrap();
    let r = c
        .mcp(
            "/mcp",
            None,
            &rpc(
                1,
                "initialize",
                json!({"protocolVersion": "2025-06-18", "capabilities": {},
                    "clientInfo": {"name": "t", "version": "0"}}),
            ),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["result"]["serverInfo"]["name"], "sdk-old");
    let sid = r.header("mcp-session-id").unwrap().to_string();
    let n = c
        .mcp(
            "/mcp",
            Some(&sid),
            &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .unwrap();
    assert_eq!(n.status, 202);
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                2,
                "tools/call",
                json!({"name": "add", "arguments": {"a": 2, "b": 3}}),
            ),
        )
        .unwrap();
    assert_eq!(r.json().unwrap()["result"]["content"][0]["text"], "5");
    let r = c
        .mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                3,
                "tools/call",
                json!({"name": "slow_progress", "arguments": {"steps": 3, "delay": 0.2},
                    "_meta": {"progressToken": "sdk"}}),
            ),
        )
        .unwrap();
    let msgs: Vec<Value> = r
        .events
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    let progress = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .count();
    assert_eq!(progress, 3, "{msgs:?}");
    let last = msgs.last().unwrap();
    assert_eq!(last["id"], 3);
    assert_eq!(last["result"]["content"][0]["text"], "done");
    let d = c
        .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"")
        .unwrap();
    assert_eq!(d.status, 200);
    wait_until("the session to end", || bridge.sessions() == 0);
}
