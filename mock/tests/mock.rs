//! Tests of the mock MCP backend, driven by a tiny blocking HTTP/1.1 client.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use mock::http::{decode_chunked, Chunked};
use mock::{MockConfig, MockServer};
use serde_json::{json, Value};

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

struct Client {
    s: TcpStream,
    buf: Vec<u8>,
    host: String,
}

impl Client {
    fn new(server: &MockServer) -> Client {
        let s = TcpStream::connect(server.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Client {
            s,
            buf: Vec::new(),
            host: server.addr().to_string(),
        }
    }

    fn raw(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\n", self.host);
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str("Content-Type: application/json\r\n");
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        req.push_str(body);
        req
    }

    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
        let req = self.raw(method, path, headers, body);
        self.s.write_all(req.as_bytes()).unwrap();
        self.read_response()
    }

    fn post(&mut self, session: Option<&str>, body: &Value) -> Resp {
        let mut h = vec![("Accept", "application/json, text/event-stream")];
        if let Some(s) = session {
            h.push(("Mcp-Session-Id", s));
        }
        self.send("POST", "/mcp", &h, &body.to_string())
    }

    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 65536];
        let n = self.s.read(&mut tmp).unwrap();
        self.buf.extend_from_slice(&tmp[..n]);
        n
    }

    fn read_response(&mut self) -> Resp {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut r = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = r.parse(&self.buf).unwrap() {
                let status = r.code.unwrap();
                let headers: Vec<(String, String)> = r
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_string(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let chunked = headers.iter().any(|(k, v)| {
                    k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked")
                });
                let mut body = Vec::new();
                if chunked {
                    loop {
                        match decode_chunked(&self.buf[n..], &mut body) {
                            Chunked::Done(m) => {
                                self.buf.drain(..n + m);
                                break;
                            }
                            Chunked::Partial => assert!(self.fill() > 0, "eof in body"),
                            Chunked::Invalid => panic!("bad chunked body"),
                        }
                    }
                } else {
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                        .map(|(_, v)| v.parse().unwrap())
                        .unwrap_or(0);
                    while self.buf.len() < n + len {
                        assert!(self.fill() > 0, "eof in body");
                    }
                    body = self.buf[n..n + len].to_vec();
                    self.buf.drain(..n + len);
                }
                return Resp {
                    status,
                    headers,
                    body,
                };
            }
            assert!(self.fill() > 0, "eof before response");
        }
    }
}

fn start(cfg: MockConfig) -> MockServer {
    MockServer::start(cfg, "127.0.0.1:0".parse().unwrap()).unwrap()
}

fn named(name: &str) -> MockConfig {
    MockConfig {
        name: name.to_string(),
        ..MockConfig::default()
    }
}

fn init(c: &mut Client) -> String {
    let r = c.post(
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-03-26","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
    r.header("mcp-session-id")
        .expect("session header")
        .to_string()
}

fn call(id: u64, tool: &str, args: Value) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
}

#[test]
fn initialize_issues_session_and_whoami() {
    let server = start(named("alpha"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    assert_eq!(sid, "alpha-1");
    let r = c.post(Some(&sid), &call(7, "whoami", json!({})));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["id"], 7);
    assert_eq!(v["result"]["content"][0]["text"], "alpha");
    assert_eq!(v["result"]["isError"], false);
    assert_eq!(server.tool_calls("whoami"), 1);
    assert_eq!(server.tool_calls("echo"), 0);
    assert_eq!(server.requests(), 2);
    assert_eq!(server.sessions(), 1);
    // Also: string ids echo back as strings, the server info is right.
    let r = c.post(
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":"x-1","method":"ping"}),
    );
    assert_eq!(r.json(), json!({"jsonrpc":"2.0","id":"x-1","result":{}}));
}

#[test]
fn tools_echo_big_fail_list() {
    let server = start(named("b"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    let v = c
        .post(Some(&sid), &call(2, "echo", json!({"text":"hi"})))
        .json();
    let text = v["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(text).unwrap(),
        json!({"text":"hi"})
    );
    let v = c
        .post(Some(&sid), &call(3, "big", json!({"bytes": 100000})))
        .json();
    assert_eq!(
        v["result"]["content"][0]["text"].as_str().unwrap().len(),
        100000
    );
    let v = c.post(Some(&sid), &call(4, "fail", json!({}))).json();
    assert_eq!(v["error"]["code"], -32603);
    assert_eq!(v["id"], 4);
    let v = c.post(Some(&sid), &call(7, "tool_error", json!({}))).json();
    assert_eq!(v["result"]["isError"], true);
    assert_eq!(v["id"], 7);
    let v = c
        .post(
            Some(&sid),
            &json!({"jsonrpc":"2.0","id":5,"method":"tools/list"}),
        )
        .json();
    let names: Vec<&str> = v["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "echo",
            "whoami",
            "slow",
            "progress",
            "big",
            "fail",
            "tool_error",
            "wrong_id"
        ]
    );
    let v = c
        .post(Some(&sid), &json!({"jsonrpc":"2.0","id":6,"method":"nope"}))
        .json();
    assert_eq!(v["error"]["code"], -32601);
    let t = Instant::now();
    let v = c
        .post(Some(&sid), &call(8, "slow", json!({"ms": 100})))
        .json();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(v["result"]["content"][0]["text"], "slept 100 ms");
}

/// The one event of an SSE answer, as JSON.
fn sse_event_data(r: &Resp) -> Value {
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(r.body.clone()).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 1, "{text}");
    assert!(events[0].contains("event: message\n"), "{text}");
    serde_json::from_str(events[0].split("data: ").nth(1).unwrap()).unwrap()
}

#[test]
fn sse_calls_answer_tool_calls_as_streams() {
    let server = start(MockConfig {
        sse_calls: true,
        ..named("s")
    });
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    // The fast path (echo, whoami) and the general one (a float argument) alike.
    for (id, tool, args, text) in [
        (2, "echo", json!({"a": 1}), r#"{"a":1}"#),
        (3, "whoami", json!({}), "s"),
        (4, "echo", json!({"f": 1.5}), r#"{"f":1.5}"#),
    ] {
        let r = c.post(Some(&sid), &call(id, tool, args));
        assert_eq!(r.status, 200);
        let v = sse_event_data(&r);
        assert_eq!(v["id"], id);
        assert_eq!(v["result"]["content"][0]["text"], text);
    }
    // A client that accepts only JSON gets JSON; other methods are not streamed.
    let body = call(5, "echo", json!({})).to_string();
    let r = c.send(
        "POST",
        "/mcp",
        &[("Accept", "application/json"), ("Mcp-Session-Id", &sid)],
        &body,
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["id"], 5);
    let r = c.post(Some(&sid), &json!({"jsonrpc":"2.0","id":6,"method":"ping"}));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(server.tool_calls("echo"), 3);
}

#[test]
fn progress_streams_sse() {
    let server = start(named("p"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    let mut req = call(9, "progress", json!({}));
    req["params"]["_meta"] = json!({"progressToken": "tok"});
    let t = Instant::now();
    let r = c.post(Some(&sid), &req);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(r.header("cache-control"), Some("no-cache"));
    let text = String::from_utf8(r.body).unwrap();
    let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert_eq!(events.len(), 4, "{text}");
    for (i, ev) in events.iter().enumerate() {
        assert!(ev.starts_with("id: "), "{ev}");
        assert!(ev.contains("\nevent: message\n"), "{ev}");
        let data = ev.split("data: ").nth(1).unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        if i < 3 {
            assert_eq!(v["method"], "notifications/progress");
            assert_eq!(v["params"]["progressToken"], "tok");
            assert_eq!(v["params"]["progress"], i as u64 + 1);
            assert_eq!(v["params"]["total"], 3);
        } else {
            assert_eq!(v["id"], 9);
            assert_eq!(v["result"]["content"][0]["text"], "progress done");
        }
    }
    // The connection stays usable.
    let r = c.post(
        Some(&sid),
        &json!({"jsonrpc":"2.0","id":10,"method":"ping"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(server.tool_calls("progress"), 1);
}

#[test]
fn sessions_missing_unknown_and_delete() {
    let server = start(named("s"));
    let mut c = Client::new(&server);
    let r = c.post(None, &json!({"jsonrpc":"2.0","id":1,"method":"ping"}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["id"], 1);
    let r = c.post(
        Some("nope"),
        &json!({"jsonrpc":"2.0","id":2,"method":"ping"}),
    );
    assert_eq!(r.status, 404);
    assert!(r.json()["error"]["code"].is_i64());
    let sid = init(&mut c);
    let r = c.send("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(r.status, 200);
    assert_eq!(server.sessions(), 0);
    let r = c.post(Some(&sid), &json!({"jsonrpc":"2.0","id":3,"method":"ping"}));
    assert_eq!(r.status, 404);
    let r = c.send("DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], "");
    assert_eq!(r.status, 404);
    let r = c.send("GET", "/other", &[], "");
    assert_eq!(r.status, 404);
    let r = c.send("PUT", "/mcp", &[], "");
    assert_eq!(r.status, 405);
}

#[test]
fn notification_gets_202_and_counters() {
    let server = start(named("n"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    let r = c.post(
        Some(&sid),
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    );
    assert_eq!(r.status, 202);
    assert!(r.body.is_empty());
    let r = c.post(Some(&sid), &json!({"jsonrpc":"2.0","id":99,"result":{}}));
    assert_eq!(r.status, 202);
    assert_eq!(server.requests(), 3);
}

#[test]
fn keep_alive_and_pipelining() {
    let server = start(named("k"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    // Two requests written at once, answered in order on one connection.
    let a = c.raw(
        "POST",
        "/mcp",
        &[("Mcp-Session-Id", &sid)],
        &call(1, "echo", json!({"n":1})).to_string(),
    );
    let b = c.raw(
        "POST",
        "/mcp",
        &[("Mcp-Session-Id", &sid)],
        &call(2, "echo", json!({"n":2})).to_string(),
    );
    c.s.write_all(format!("{a}{b}").as_bytes()).unwrap();
    assert_eq!(c.read_response().json()["id"], 1);
    assert_eq!(c.read_response().json()["id"], 2);
    // Chunked request body.
    let body = call(3, "whoami", json!({})).to_string();
    let (p1, p2) = body.split_at(10);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: x\r\nMcp-Session-Id: {sid}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{p1}\r\n{:x}\r\n{p2}\r\n0\r\n\r\n",
        p1.len(),
        p2.len()
    );
    c.s.write_all(req.as_bytes()).unwrap();
    assert_eq!(
        c.read_response().json()["result"]["content"][0]["text"],
        "k"
    );
    assert_eq!(server.tool_calls("echo"), 2);
}

#[test]
fn batch_answers_array() {
    let server = start(named("batch"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    let r = c.post(
        Some(&sid),
        &json!([
            {"jsonrpc":"2.0","id":1,"method":"ping"},
            {"jsonrpc":"2.0","method":"notifications/initialized"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami"}}
        ]),
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v.as_array().unwrap().len(), 2);
    assert_eq!(v[1]["result"]["content"][0]["text"], "batch");
    assert_eq!(server.requests(), 4);
}

#[test]
fn stateless_mode_and_discover() {
    let server = start(MockConfig {
        name: "sl".into(),
        stateless: true,
        ..MockConfig::default()
    });
    let mut c = Client::new(&server);
    let r = c.post(
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("mcp-session-id").is_none());
    assert_eq!(r.json()["result"]["protocolVersion"], "2025-06-18");
    let r = c.post(None, &call(2, "whoami", json!({})));
    assert_eq!(r.json()["result"]["content"][0]["text"], "sl");
    let r = c.send(
        "POST",
        "/mcp",
        &[("MCP-Protocol-Version", "2026-07-28")],
        &json!({"jsonrpc":"2.0","id":3,"method":"server/discover"}).to_string(),
    );
    let v = r.json();
    assert_eq!(v["result"]["supportedVersions"], json!(["2026-07-28"]));
    assert_eq!(v["result"]["serverInfo"]["name"], "sl");
    let r = c.send("GET", "/mcp", &[("Accept", "text/event-stream")], "");
    assert_eq!(r.status, 405);
    assert_eq!(
        server.last_header("mcp-protocol-version").as_deref(),
        Some("2026-07-28")
    );
}

#[test]
fn discover_without_session_on_stateful_server() {
    let server = start(named("d"));
    let mut c = Client::new(&server);
    let r = c.post(
        None,
        &json!({"jsonrpc":"2.0","id":1,"method":"server/discover"}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["result"]["serverInfo"]["name"], "d");
}

#[test]
fn records_headers() {
    let server = start(named("h"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    c.send(
        "POST",
        "/mcp",
        &[
            ("Mcp-Session-Id", &sid),
            ("Authorization", "Bearer abc"),
            ("MCP-Protocol-Version", "2025-06-18"),
            ("Last-Event-ID", "42"),
        ],
        &json!({"jsonrpc":"2.0","id":1,"method":"ping"}).to_string(),
    );
    assert_eq!(
        server.last_header("Authorization").as_deref(),
        Some("Bearer abc")
    );
    assert_eq!(
        server.last_header("mcp-protocol-version").as_deref(),
        Some("2025-06-18")
    );
    assert_eq!(server.last_header("Last-Event-ID").as_deref(), Some("42"));
    assert_eq!(server.last_header("host"), Some(server.addr().to_string()));
}

#[test]
fn get_stream_and_405() {
    let server = start(named("g"));
    let mut c = Client::new(&server);
    let sid = init(&mut c);
    let req = c.raw(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), ("Mcp-Session-Id", &sid)],
        "",
    );
    c.s.write_all(req.as_bytes()).unwrap();
    while !String::from_utf8_lossy(&c.buf).contains("hello from g") {
        assert!(c.fill() > 0);
    }
    let text = String::from_utf8_lossy(&c.buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"));
    while !String::from_utf8_lossy(&c.buf).contains(": keepalive") {
        assert!(c.fill() > 0);
    }
    drop(c);

    let off = start(MockConfig {
        get_stream: false,
        ..named("g2")
    });
    let mut c = Client::new(&off);
    let sid = init(&mut c);
    let r = c.send(
        "GET",
        "/mcp",
        &[("Accept", "text/event-stream"), ("Mcp-Session-Id", &sid)],
        "",
    );
    assert_eq!(r.status, 405);
}

#[test]
fn garbage_gets_400_and_close() {
    let server = start(named("x"));
    let mut c = Client::new(&server);
    c.s.write_all(b"\x00\x01garbage\r\n\r\n").unwrap();
    let r = c.read_response();
    assert_eq!(r.status, 400);
    let mut rest = Vec::new();
    let _ = c.s.read_to_end(&mut rest);
    assert!(rest.is_empty());
    // Bad JSON over valid HTTP: 400 parse error, connection kept.
    let mut c = Client::new(&server);
    let r = c.send("POST", "/mcp", &[], "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], -32700);
    let r = c.send("POST", "/mcp", &[("Content-Length", "zz")], "");
    assert_eq!(r.status, 400);
}

#[test]
fn multi_thread_and_prompt_stop() {
    let server = start(MockConfig {
        threads: 2,
        get_stream: true,
        ..named("mt")
    });
    let mut clients: Vec<Client> = (0..8).map(|_| Client::new(&server)).collect();
    let mut sids = Vec::new();
    for c in &mut clients {
        sids.push(init(c));
    }
    // Sessions are shared between threads.
    for (i, c) in clients.iter_mut().enumerate() {
        let sid = &sids[(i + 1) % sids.len()];
        assert_eq!(c.post(Some(sid), &call(1, "echo", json!({}))).status, 200);
    }
    assert_eq!(server.tool_calls("echo"), 8);
    // An open GET stream and idle connections must not hold up stop().
    let mut g = Client::new(&server);
    let req = g.raw(
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", &sids[0]),
        ],
        "",
    );
    g.s.write_all(req.as_bytes()).unwrap();
    g.fill();
    let t = Instant::now();
    server.stop();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // Idle connections are closed.
    let mut rest = Vec::new();
    let _ = clients[0].s.read_to_end(&mut rest);
    assert!(rest.is_empty());
}

/// The answers the fast path writes (`ping`, `tools/list`, `echo`, `whoami`) are byte for
/// byte the general path's: the same request with `"jsonrpc":"1.0"` (which the fast path's
/// scanner refuses and the general path ignores) gets the same response.
#[test]
fn fast_answers_match_the_general_path() {
    for stateless in [false, true] {
        let server = start(MockConfig {
            name: r#"q"b\s"#.to_string(),
            stateless,
            ..MockConfig::default()
        });
        let mut c = Client::new(&server);
        let sid = (!stateless).then(|| init(&mut c));
        let bodies = [
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#,
            r#"{"jsonrpc":"2.0","id":"a b","method":"ping","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":-42,"method":"tools/list"}"#,
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}"#,
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo"}}"#,
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"arguments":{"a":[1,-2,true,null,{"q":"\"\\\n\t"}],"b":"é€😀"},"name":"echo"}}"#,
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":null}}"#,
            r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"echo","arguments":"x"}}"#,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"ech\u006f","arguments":[]}}"#,
        ];
        for body in bodies {
            let general = body.replacen(r#""jsonrpc":"2.0""#, r#""jsonrpc":"1.0""#, 1);
            let mut h = vec![("Accept", "application/json, text/event-stream")];
            if let Some(s) = &sid {
                h.push(("Mcp-Session-Id", s.as_str()));
            }
            let fast = c.send("POST", "/mcp", &h, body);
            let slow = c.send("POST", "/mcp", &h, &general);
            assert_eq!(fast.status, 200, "{body}");
            assert_eq!(fast.headers, slow.headers, "{body}");
            assert_eq!(
                String::from_utf8_lossy(&fast.body),
                String::from_utf8_lossy(&slow.body),
                "{body}"
            );
        }
        assert_eq!(server.tool_calls("echo"), 12);
        assert_eq!(server.tool_calls("whoami"), 2);
        assert_eq!(server.requests(), 20 + u64::from(!stateless));
    }
}
