//! The stdio bridge, driven directly over HTTP with a small blocking client, in front of
//! `tests/py/stdio_server.py` (a standard-library MCP server): per-session and shared modes,
//! id and progress-token restoration, live progress, crashes, junk output, timeouts, server
//! requests, and shutdown leaving no child behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mcplb::bridges::stdio::{StdioBridge, StdioConfig, StdioMode};
use serde_json::{json, Value};

fn server_script() -> String {
    format!("{}/../tests/py/stdio_server.py", env!("CARGO_MANIFEST_DIR"))
}

fn config(mode: StdioMode) -> StdioConfig {
    let mut c = StdioConfig::new(
        "test-stdio",
        vec!["python3".into(), "-u".into(), server_script()],
        mode,
    );
    c.request_timeout = Duration::from_secs(20);
    c
}

fn start(mode: StdioMode) -> StdioBridge {
    StdioBridge::start(config(mode)).expect("bridge starts")
}

/// One HTTP answer: status, headers, and the JSON-RPC messages it carried (one for a JSON
/// answer, each `data:` event for SSE) with the time each arrived.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    events: Vec<(Instant, Value)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn is_sse(&self) -> bool {
        self.header("content-type") == Some("text/event-stream")
    }
    /// The last message: the JSON-RPC answer.
    fn last(&self) -> &Value {
        &self.events.last().expect("an answer").1
    }
}

/// Sends one request (`Connection: close`) and reads the answer as it streams, calling
/// `on_event` for each message as it arrives.
fn exchange(
    addr: SocketAddr,
    method: &str,
    session: Option<&str>,
    body: Option<&Value>,
    on_event: &mut dyn FnMut(&Value),
) -> Answer {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body
        .map(|b| serde_json::to_vec(b).unwrap())
        .unwrap_or_default();
    let mut req = format!(
        "{method} /mcp HTTP/1.1\r\nhost: {addr}\r\naccept: application/json, text/event-stream\r\n\
         content-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(sid) = session {
        req.push_str(&format!("mcp-session-id: {sid}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(&body).unwrap();

    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).expect("read head");
        assert!(n > 0, "connection closed before the head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut rest = buf[head_end..].to_vec();
    let mut answer = Answer {
        status,
        headers,
        events: Vec::new(),
    };
    let chunked = answer
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"));
    if !chunked {
        let len: usize = answer
            .header("content-length")
            .unwrap_or("0")
            .parse()
            .unwrap();
        while rest.len() < len {
            let n = s.read(&mut chunk).expect("read body");
            assert!(n > 0, "connection closed inside the body");
            rest.extend_from_slice(&chunk[..n]);
        }
        if len > 0 {
            let v: Value = serde_json::from_slice(&rest[..len]).expect("JSON body");
            on_event(&v);
            answer.events.push((Instant::now(), v));
        }
        return answer;
    }
    // Chunked: decode chunks as they come and split SSE events.
    let mut sse = Vec::new();
    loop {
        // Need a full chunk-size line.
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else {
            let n = s.read(&mut chunk).expect("read chunk");
            assert!(n > 0, "stream closed before its last chunk");
            rest.extend_from_slice(&chunk[..n]);
            continue;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16).unwrap();
        while rest.len() < nl + 2 + size + 2 {
            let n = s.read(&mut chunk).expect("read chunk");
            assert!(n > 0, "stream closed inside a chunk");
            rest.extend_from_slice(&chunk[..n]);
        }
        if size == 0 {
            return answer;
        }
        sse.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
        rest.drain(..nl + 2 + size + 2);
        while let Some(end) = sse.windows(2).position(|w| w == b"\n\n") {
            let event = String::from_utf8(sse.drain(..end + 2).collect()).unwrap();
            let data: String = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            if !data.is_empty() {
                let v: Value = serde_json::from_str(&data).expect("JSON event");
                on_event(&v);
                answer.events.push((Instant::now(), v));
            }
        }
    }
}

fn post(addr: SocketAddr, session: Option<&str>, body: &Value) -> Answer {
    exchange(addr, "POST", session, Some(body), &mut |_| {})
}

fn initialize(addr: SocketAddr) -> String {
    initialize_as(addr, "stdio-test")
}

/// Initializes a session on a server named `server`, for a client that accepts sampling;
/// returns its session id.
fn initialize_as(addr: SocketAddr, server: &str) -> String {
    initialize_with(addr, server, json!({"sampling": {}}))
}

/// Initializes a session for a client that declares none of sampling, elicitation, roots.
fn initialize_plain(addr: SocketAddr) -> String {
    initialize_with(addr, "stdio-test", json!({}))
}

fn initialize_with(addr: SocketAddr, server: &str, capabilities: Value) -> String {
    let a = post(
        addr,
        None,
        &json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": capabilities,
            "clientInfo": {"name": "bridge-test", "version": "1"}}}),
    );
    assert_eq!(a.status, 200, "{:?}", a.events);
    assert_eq!(a.last()["result"]["serverInfo"]["name"], server);
    let sid = a.header("mcp-session-id").expect("session id").to_owned();
    let n = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    );
    assert_eq!(n.status, 202);
    sid
}

fn call(addr: SocketAddr, sid: &str, id: Value, tool: &str, args: Value) -> Answer {
    post(
        addr,
        Some(sid),
        &json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}}),
    )
}

fn text(v: &Value) -> String {
    v["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {v}"))
        .to_owned()
}

fn pid_of(addr: SocketAddr, sid: &str) -> u32 {
    text(call(addr, sid, json!(99), "pid", json!({})).last())
        .parse()
        .unwrap()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn per_session_sessions_get_their_own_processes_and_shutdown_stops_all() {
    let bridge = start(StdioMode::PerSession);
    assert!(bridge.url().starts_with("http://127.0.0.1:") && bridge.url().ends_with("/mcp"));
    let addr = bridge.addr();
    let (a, b) = (initialize(addr), initialize(addr));
    assert_ne!(a, b);
    let (pa, pb) = (pid_of(addr, &a), pid_of(addr, &b));
    assert_ne!(pa, pb, "two sessions must not share a process");
    assert_eq!(pid_of(addr, &a), pa, "a session stays on its process");
    let list = post(
        addr,
        Some(&a),
        &json!({"jsonrpc": "2.0", "id": "l", "method": "tools/list"}),
    );
    assert_eq!(list.last()["id"], "l");
    assert!(list.last()["result"]["tools"].as_array().unwrap().len() >= 5);
    // Pool refilled: an idle process is waiting besides the two bound ones.
    wait_until("the pool to refill", || bridge.child_pids().len() == 3);
    let all = bridge.child_pids();
    assert!(all.contains(&pa) && all.contains(&pb));
    bridge.shutdown();
    for pid in all {
        assert!(!alive(pid), "child {pid} survived shutdown");
    }
}

#[test]
fn unknown_or_missing_session_is_refused() {
    let bridge = start(StdioMode::PerSession);
    let a = call(bridge.addr(), "nope", json!(1), "pid", json!({}));
    assert_eq!(a.status, 404);
    assert_eq!(a.last()["id"], 1);
    assert!(a.last()["error"].is_object());
    let m = post(
        bridge.addr(),
        None,
        &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    );
    assert_eq!(m.status, 400);
}

#[test]
fn progress_streams_before_the_result_with_the_clients_token() {
    let bridge = start(StdioMode::PerSession);
    let sid = initialize(bridge.addr());
    let a = post(
        bridge.addr(),
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": "p-1", "method": "tools/call",
                "params": {"name": "progress", "arguments": {"delay": 0.4}, "_meta": {"progressToken": "tok-A"}}}),
    );
    assert_eq!(a.status, 200);
    assert!(a.is_sse());
    assert_eq!(a.events.len(), 3, "{:?}", a.events);
    for (_, p) in &a.events[..2] {
        assert_eq!(p["method"], "notifications/progress");
        assert_eq!(p["params"]["progressToken"], "tok-A");
    }
    let (t_first, _) = a.events[0];
    let (t_result, result) = &a.events[2];
    assert_eq!(result["id"], "p-1");
    assert_eq!(text(result), "done");
    assert!(
        t_result.duration_since(t_first) >= Duration::from_millis(500),
        "progress arrived only with the result"
    );
    // Without a token: a plain JSON answer.
    let plain = call(bridge.addr(), &sid, json!(5), "progress", json!({}));
    assert!(!plain.is_sse());
    assert_eq!(plain.last()["id"], 5);
}

#[test]
fn per_session_crash_fails_the_request_then_the_session_is_gone() {
    let bridge = start(StdioMode::PerSession);
    let sid = initialize(bridge.addr());
    let pid = pid_of(bridge.addr(), &sid);
    let a = call(bridge.addr(), &sid, json!(7), "crash", json!({}));
    assert_eq!(a.last()["id"], 7);
    assert_eq!(a.last()["error"]["code"], -32603);
    wait_until("the crashed child to be reaped", || !alive(pid));
    let after = call(bridge.addr(), &sid, json!(8), "pid", json!({}));
    assert_eq!(after.status, 404);
    // A new session works.
    let sid2 = initialize(bridge.addr());
    assert_ne!(pid_of(bridge.addr(), &sid2), pid);
}

#[test]
fn non_json_stdout_lines_are_skipped() {
    let bridge = start(StdioMode::PerSession);
    let sid = initialize(bridge.addr());
    let a = call(bridge.addr(), &sid, json!(1), "garbage", json!({}));
    assert_eq!(text(a.last()), "after garbage");
    assert_eq!(a.events.len(), 1);
}

#[test]
fn shared_mode_restores_each_clients_ids_with_their_types() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    // Plain sessions (no sampling, elicitation, roots): their calls run together.
    let (a, b) = (initialize_plain(addr), initialize_plain(addr));
    assert_ne!(a, b);
    assert_eq!(pid_of(addr, &a), pid_of(addr, &b), "shared: one process");
    assert_eq!(bridge.child_pids().len(), 1);
    // Interleaved: same ids of different types from two sessions; the slow one answers last.
    let ta = std::thread::spawn({
        let a = a.clone();
        move || {
            call(
                addr,
                &a,
                json!("1"),
                "slow",
                json!({"seconds": 0.6, "text": "A-string"}),
            )
        }
    });
    let tb = std::thread::spawn({
        let b = b.clone();
        move || {
            call(
                addr,
                &b,
                json!(1),
                "slow",
                json!({"seconds": 0.1, "text": "B-number"}),
            )
        }
    });
    let tc = std::thread::spawn({
        let a = a.clone();
        move || call(addr, &a, json!(1), "echo", json!({"text": "A-number"}))
    });
    let (ra, rb, rc) = (ta.join().unwrap(), tb.join().unwrap(), tc.join().unwrap());
    assert_eq!(ra.last()["id"], json!("1"));
    assert_eq!(text(ra.last()), "A-string");
    assert_eq!(rb.last()["id"], json!(1));
    assert_eq!(text(rb.last()), "B-number");
    assert_eq!(rc.last()["id"], json!(1));
    assert_eq!(text(rc.last()), "A-number");
    assert!(rb.events[0].0 < ra.events[0].0, "answers were interleaved");
    // Progress tokens of two sessions are told apart and restored.
    let pa = post(
        addr,
        Some(&a),
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "progress", "arguments": {"delay": 0.05}, "_meta": {"progressToken": 17}}}),
    );
    assert_eq!(pa.events[0].1["params"]["progressToken"], json!(17));
    assert_eq!(pa.last()["id"], json!(2));
}

#[test]
fn shared_crash_answers_an_error_then_recovers() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let sid = initialize(addr);
    let pid = pid_of(addr, &sid);
    let a = call(addr, &sid, json!("c"), "crash", json!({}));
    assert_eq!(a.last()["id"], "c");
    assert_eq!(a.last()["error"]["code"], -32603);
    assert_eq!(a.last()["error"]["message"], "stdio server exited");
    // Same session, restarted (and re-initialized) process.
    let pid2 = pid_of(addr, &sid);
    assert_ne!(pid, pid2);
    assert!(!alive(pid));
    let other = initialize(addr);
    assert_eq!(pid_of(addr, &other), pid2);
}

#[test]
fn cancellation_reaches_the_child_under_the_bridge_id() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let sid = initialize(addr);
    let t = std::thread::spawn({
        let sid = sid.clone();
        move || call(addr, &sid, json!("slow-1"), "slow", json!({"seconds": 10}))
    });
    std::thread::sleep(Duration::from_millis(300));
    let c = post(
        addr,
        Some(&sid),
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "slow-1"}}),
    );
    assert_eq!(c.status, 202);
    let started = Instant::now();
    let a = t.join().unwrap();
    // The client's wait ends at once with -32800 and its own id (a server need not answer a
    // cancelled request, so the bridge does not wait for one).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(a.last()["id"], "slow-1");
    assert_eq!(a.last()["error"]["code"], -32800);
    // The child saw the cancellation under the bridge's own (integer) id, not the client's.
    let seen = text(call(addr, &sid, json!(7), "cancelled_ids", json!({})).last());
    let ids: Vec<String> = serde_json::from_str(&seen).unwrap();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(ids[0].parse::<u64>().is_ok(), "child got {ids:?}");
}

#[test]
fn a_line_over_the_limit_answers_an_error_and_the_session_goes_on() {
    let mut cfg = config(StdioMode::PerSession);
    cfg.max_line_bytes = 4096;
    let bridge = StdioBridge::start(cfg).unwrap();
    let sid = initialize(bridge.addr());
    let a = call(
        bridge.addr(),
        &sid,
        json!(3),
        "big",
        json!({"bytes": 100_000}),
    );
    assert_eq!(a.last()["id"], 3);
    assert!(a.last()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_line_bytes"));
    assert_eq!(
        text(call(bridge.addr(), &sid, json!(4), "big", json!({"bytes": 10})).last()),
        "x".repeat(10)
    );
}

#[test]
fn a_server_request_reaches_the_client_and_its_answer_the_child() {
    let bridge = start(StdioMode::PerSession);
    let addr = bridge.addr();
    let sid = initialize(addr);
    let mut saw = None;
    let a = exchange(
        addr,
        "POST",
        Some(&sid),
        Some(
            &json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "sample", "arguments": {}}}),
        ),
        &mut |ev| {
            if ev["method"] == "sampling/createMessage" {
                saw = Some(ev["id"].clone());
                let r = post(
                    addr,
                    Some(&sid),
                    &json!({"jsonrpc": "2.0", "id": ev["id"], "result": {"role": "assistant",
                            "content": {"type": "text", "text": "pong"}, "model": "m"}}),
                );
                assert_eq!(r.status, 202);
            }
        },
    );
    assert_eq!(saw, Some(json!("srv-1")));
    assert!(text(a.last()).contains("pong"), "{}", a.last());
}

#[test]
fn messages_after_the_answer_go_to_the_get_stream() {
    let bridge = start(StdioMode::PerSession);
    let addr = bridge.addr();
    let sid = initialize(addr);
    let (tx, rx) = std::sync::mpsc::channel();
    let get = std::thread::spawn({
        let sid = sid.clone();
        move || {
            exchange(addr, "GET", Some(&sid), None, &mut |ev| {
                let _ = tx.send(ev.clone());
            })
        }
    });
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(
        text(call(addr, &sid, json!(1), "notify_later", json!({})).last()),
        "soon"
    );
    let ev = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("notification on the GET stream");
    assert_eq!(ev["method"], "notifications/message");
    assert_eq!(ev["params"]["data"], "later");
    // DELETE ends the session, its GET stream and its process.
    let pid = pid_of(addr, &sid);
    let d = exchange(addr, "DELETE", Some(&sid), None, &mut |_| {});
    assert_eq!(d.status, 200);
    let g = get.join().unwrap();
    assert!(g.is_sse());
    wait_until("the deleted session's process to stop", || !alive(pid));
    assert_eq!(call(addr, &sid, json!(2), "pid", json!({})).status, 404);
}

#[test]
fn a_flood_of_notifications_arrives_whole_and_in_order() {
    let bridge = start(StdioMode::PerSession);
    let sid = initialize(bridge.addr());
    let a = call(
        bridge.addr(),
        &sid,
        json!(1),
        "flood",
        json!({"count": 3000}),
    );
    assert_eq!(a.events.len(), 3001);
    for (i, (_, ev)) in a.events[..3000].iter().enumerate() {
        assert_eq!(ev["params"]["data"], json!(i));
    }
    assert_eq!(text(a.last()), "flooded");
}

#[test]
fn a_silent_child_times_out_with_504() {
    let mut cfg = config(StdioMode::PerSession);
    cfg.request_timeout = Duration::from_millis(400);
    let bridge = StdioBridge::start(cfg).unwrap();
    let sid = initialize(bridge.addr());
    let a = post(
        bridge.addr(),
        Some(&sid),
        &json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "slow", "arguments": {"seconds": 3}}}),
    );
    assert_eq!(a.status, 504);
    assert_eq!(a.last()["id"], 9);
}

#[test]
fn per_session_at_max_refuses_with_503() {
    let mut cfg = config(StdioMode::PerSession);
    cfg.max = 1;
    let bridge = StdioBridge::start(cfg).unwrap();
    let _a = initialize(bridge.addr());
    let b = post(
        bridge.addr(),
        None,
        &json!({"jsonrpc": "2.0", "id": "i", "method": "initialize", "params": {"protocolVersion": "2025-06-18",
                "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
    );
    assert_eq!(b.status, 503);
    assert_eq!(b.last()["id"], "i");
}

#[test]
fn a_command_that_does_not_exist_fails_to_start() {
    let cfg = StdioConfig::new(
        "missing",
        vec!["/nonexistent/mcp-server".into()],
        StdioMode::PerSession,
    );
    let err = StdioBridge::start(cfg).err().expect("start fails");
    assert!(
        format!("{err:#}").contains("/nonexistent/mcp-server"),
        "{err:#}"
    );
}

#[test]
fn mcp_server_time_from_pypi_behind_the_bridge() {
    // The repo's .venv has it (tests/py/requirements.txt); skip quietly elsewhere.
    let python = format!("{}/../.venv/bin/python", env!("CARGO_MANIFEST_DIR"));
    let has_it = std::process::Command::new(&python)
        .args(["-c", "import mcp_server_time"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_it {
        eprintln!("skipped: {python} has no mcp_server_time");
        return;
    }
    let cfg = StdioConfig::new(
        "time",
        vec![python, "-m".into(), "mcp_server_time".into()],
        StdioMode::PerSession,
    );
    let bridge = StdioBridge::start(cfg).unwrap();
    let addr = bridge.addr();
    let sid = initialize_as(addr, "mcp-time");
    let a = call(
        addr,
        &sid,
        json!(1),
        "get_current_time",
        json!({"timezone": "UTC"}),
    );
    let answer: Value = serde_json::from_str(&text(a.last())).unwrap();
    assert_eq!(answer["timezone"], "UTC");
    let pids = bridge.child_pids();
    bridge.shutdown();
    assert!(pids.iter().all(|p| !alive(*p)));
}

/// Calls the `sample` tool with `prompt`, answering the child's sampling request with
/// `answer`. With `hold`, reports the prompt it was asked on the first channel and answers only
/// once the second one says so. Returns the answer and the prompts this client was asked.
fn sample_answering(
    addr: SocketAddr,
    sid: &str,
    prompt: &str,
    answer: &str,
    hold: Option<(mpsc::Sender<String>, mpsc::Receiver<()>)>,
) -> (Answer, Vec<String>) {
    let mut asked = Vec::new();
    let a = exchange(
        addr,
        "POST",
        Some(sid),
        Some(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                     "params": {"name": "sample", "arguments": {"text": prompt}}})),
        &mut |ev| {
            if ev["method"] != "sampling/createMessage" {
                return;
            }
            let text = ev["params"]["messages"][0]["content"]["text"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            asked.push(text.clone());
            if let Some((told, go)) = &hold {
                told.send(text).unwrap();
                go.recv_timeout(Duration::from_secs(30)).expect("go");
            }
            let r = post(
                addr,
                Some(sid),
                &json!({"jsonrpc": "2.0", "id": ev["id"], "result": {"role": "assistant",
                        "content": {"type": "text", "text": answer}, "model": "m"}}),
            );
            assert_eq!(r.status, 202);
        },
    );
    (a, asked)
}

/// The child's record of the tool calls it received: `[name, arguments.text]`.
fn calls_seen(addr: SocketAddr, sid: &str) -> Vec<(String, Option<String>)> {
    serde_json::from_str(&text(
        call(addr, sid, json!("seen"), "calls_seen", json!({})).last(),
    ))
    .unwrap()
}

fn seen(name: &str, text: Option<&str>) -> (String, Option<String>) {
    (name.to_owned(), text.map(str::to_owned))
}

/// Holds session `sid`'s sampling call open (its client has been asked and not answered yet);
/// returns the call's thread and the sender that lets the client answer.
fn hold_a_sampling_call(
    addr: SocketAddr,
    sid: &str,
    prompt: &'static str,
) -> (
    std::thread::JoinHandle<(Answer, Vec<String>)>,
    mpsc::Sender<()>,
) {
    let (told_tx, told_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel();
    let t = std::thread::spawn({
        let sid = sid.to_owned();
        move || sample_answering(addr, &sid, prompt, "answer of A", Some((told_tx, go_rx)))
    });
    let asked = told_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the sampling request reaches the calling client");
    assert_eq!(asked, prompt);
    (t, go_tx)
}

#[test]
fn shared_capable_sessions_take_turns_so_server_requests_reach_their_callers() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let (a, b, p) = (initialize(addr), initialize(addr), initialize_plain(addr));
    // A's call is in flight and its client has been asked for a sampling answer.
    let (ta, go) = hold_a_sampling_call(addr, &a, "from A");
    // B (capable) and then P (plain) must wait for their turn: were either on the process
    // now, a server request could belong to it as well as to A.
    let tb = std::thread::spawn({
        let b = b.clone();
        move || sample_answering(addr, &b, "from B", "answer of B", None)
    });
    wait_until("B's call to wait for its turn", || {
        bridge.queued_calls() == 1
    });
    let tp = std::thread::spawn({
        let p = p.clone();
        move || call(addr, &p, json!(1), "echo", json!({"text": "from P"}))
    });
    wait_until("P's call to wait for its turn", || {
        bridge.queued_calls() == 2
    });
    // A's own calls stay concurrent: this one runs at once, while A's first call waits for
    // its client; the child has received neither B's call nor P's.
    assert_eq!(
        calls_seen(addr, &a),
        vec![seen("sample", Some("from A")), seen("calls_seen", None)]
    );
    go.send(()).unwrap();
    let (ra, asked_a) = ta.join().unwrap();
    let (rb, asked_b) = tb.join().unwrap();
    let rp = tp.join().unwrap();
    assert_eq!(asked_a, ["from A"]);
    assert_eq!(
        asked_b,
        ["from B"],
        "B's client must get B's sampling request"
    );
    assert!(text(ra.last()).contains("answer of A"), "{}", ra.last());
    assert!(text(rb.last()).contains("answer of B"), "{}", rb.last());
    assert_eq!(text(rp.last()), "from P");
    // In FIFO order: B before P.
    assert_eq!(
        calls_seen(addr, &p)[2..],
        [
            seen("sample", Some("from B")),
            seen("echo", Some("from P")),
            seen("calls_seen", None)
        ]
    );
    assert_eq!(bridge.queued_calls(), 0);
}

#[test]
fn shared_a_call_cancelled_while_waiting_for_its_turn_never_reaches_the_child() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let (a, b) = (initialize(addr), initialize(addr));
    let (ta, go) = hold_a_sampling_call(addr, &a, "from A");
    let tb = std::thread::spawn({
        let b = b.clone();
        move || call(addr, &b, json!("b-1"), "echo", json!({"text": "from B"}))
    });
    wait_until("B's call to wait for its turn", || {
        bridge.queued_calls() == 1
    });
    let c = post(
        addr,
        Some(&b),
        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": "b-1"}}),
    );
    assert_eq!(c.status, 202);
    let rb = tb.join().unwrap();
    assert_eq!(rb.last()["id"], "b-1");
    assert_eq!(rb.last()["error"]["code"], -32800);
    assert_eq!(bridge.queued_calls(), 0);
    go.send(()).unwrap();
    let (ra, _) = ta.join().unwrap();
    assert!(text(ra.last()).contains("answer of A"), "{}", ra.last());
    assert_eq!(
        calls_seen(addr, &b),
        vec![seen("sample", Some("from A")), seen("calls_seen", None)]
    );
}

#[test]
fn shared_server_requests_no_caller_can_answer_are_refused_and_pings_answered_by_the_bridge() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let p = initialize_plain(addr);
    // Only a plain session has a call in flight: no client there accepts sampling.
    let r = call(addr, &p, json!(1), "sample", json!({"text": "x"}));
    assert_eq!(
        r.events.len(),
        1,
        "the plain client was sent {:?}",
        r.events
    );
    let refused: Value =
        serde_json::from_str(text(r.last()).trim_start_matches("sampled: ")).unwrap();
    assert_eq!(refused["code"], -32601, "{refused}");
    // The child's ping is answered by the bridge.
    let ping = call(addr, &p, json!(2), "ping_client", json!({}));
    assert_eq!(
        ping.events.len(),
        1,
        "the client was sent {:?}",
        ping.events
    );
    assert_eq!(text(ping.last()), "{}");
}

#[test]
fn shared_new_capable_sessions_go_to_the_process_with_fewest_capable_sessions() {
    let mut cfg = config(StdioMode::Shared);
    (cfg.min, cfg.max) = (2, 2);
    let bridge = StdioBridge::start(cfg).unwrap();
    let addr = bridge.addr();
    // Round robin alone would put b on a's process (a: first, p: second, b: first again).
    let a = initialize(addr);
    let p = initialize_plain(addr);
    let b = initialize(addr);
    let (pa, pp, pb) = (pid_of(addr, &a), pid_of(addr, &p), pid_of(addr, &b));
    assert_ne!(pa, pp, "plain sessions go round robin");
    assert_ne!(
        pa, pb,
        "two capable sessions would take turns on one process"
    );
    assert_eq!(bridge.child_pids().len(), 2);
}

#[test]
fn shared_notifications_never_reach_another_client() {
    let bridge = start(StdioMode::Shared);
    let addr = bridge.addr();
    let (a, b) = (initialize_plain(addr), initialize_plain(addr));
    let logs = |ans: &Answer| -> Vec<String> {
        ans.events
            .iter()
            .filter(|(_, ev)| ev["method"] == "notifications/message")
            .map(|(_, ev)| ev["params"]["data"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // Alone in flight, a session gets the log its call caused.
    let alone = call(addr, &a, json!(1), "log_now", json!({"text": "a-only"}));
    assert_eq!(logs(&alone), ["a-only"]);
    // With A's call in flight, B's log could be either's: it goes to neither.
    let slow = std::thread::spawn({
        let a = a.clone();
        move || {
            call(
                addr,
                &a,
                json!(2),
                "slow",
                json!({"seconds": 1.5, "text": "done"}),
            )
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let b_call = call(addr, &b, json!(3), "log_now", json!({"text": "b-secret"}));
    assert_eq!(text(b_call.last()), "logged");
    let a_call = slow.join().unwrap();
    assert_eq!(text(a_call.last()), "done");
    assert!(logs(&a_call).is_empty(), "A got {:?}", logs(&a_call));
    assert!(logs(&b_call).is_empty(), "B got {:?}", logs(&b_call));
    // A list_changed is news for every session: it reaches B's GET stream.
    let (tx, rx) = std::sync::mpsc::channel();
    let get = std::thread::spawn({
        let b = b.clone();
        move || {
            exchange(addr, "GET", Some(&b), None, &mut |ev| {
                let _ = tx.send(ev.clone());
            })
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        text(call(addr, &a, json!(4), "list_changed", json!({})).last()),
        "changed"
    );
    let ev = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("list_changed on B's GET stream");
    assert_eq!(ev["method"], "notifications/tools/list_changed");
    let d = exchange(addr, "DELETE", Some(&b), None, &mut |_| {});
    assert_eq!(d.status, 200);
    let _ = get.join();
}
