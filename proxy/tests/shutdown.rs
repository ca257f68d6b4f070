//! Graceful shutdown of a real `mcplb`: on SIGTERM it stops accepting, lets a tool call in
//! flight finish (its answer says `connection: close`), closes idle keep-alive connections,
//! and exits 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::time::{Duration, Instant};

use common::*;

#[test]
#[allow(unsafe_code)]
fn sigterm_finishes_open_requests_then_exits() {
    let m = mock("alpha");
    let mut p = start_proxy(&config_for(&[&m], ""), "auto");
    let addr = p.addr;
    // An idle keep-alive connection, and a slow call in flight.
    let mut idle = HttpClient::connect(addr).unwrap();
    let (sid, _) = init_session(&mut idle);
    let sid2 = sid.clone();
    let call = std::thread::spawn(move || {
        let mut c = HttpClient::connect(addr).unwrap();
        c.mcp(
            "/mcp",
            Some(&sid2),
            &rpc(
                5,
                "tools/call",
                json!({"name": "slow", "arguments": {"ms": 1500}}),
            ),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(400));
    let pid = p.child.id() as i32;
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    // New connections are refused once the listeners close (they check every 250 ms).
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still accepting after SIGTERM"
    );
    // The idle connection is closed by the server.
    let mut raw = idle_stream(idle);
    let mut b = [0u8; 16];
    assert_eq!(
        raw.read(&mut b).unwrap_or(0),
        0,
        "idle connection not closed"
    );
    // The call in flight completes.
    let r = call.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    // And the process exits, cleanly, soon after.
    let status = wait_exit(&mut p, t);
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The raw socket under a test client (to see the server close it).
fn idle_stream(c: HttpClient) -> std::net::TcpStream {
    c.into_stream()
}

#[test]
#[allow(unsafe_code)]
fn sigterm_lets_a_streaming_sse_tool_call_finish() {
    let m = mock_with(MockConfig {
        name: "streamer".into(),
        progress_events: 15,
        progress_interval: Duration::from_millis(100),
        ..Default::default()
    });
    let mut p = start_proxy(&config_for(&[&m], ""), "auto");
    let addr = p.addr;
    let call = std::thread::spawn(move || {
        let mut c = HttpClient::connect(addr).unwrap();
        let (sid, _) = init_session(&mut c);
        c.mcp(
            "/mcp",
            Some(&sid),
            &rpc(
                8,
                "tools/call",
                json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": 1}}),
            ),
        )
        .unwrap()
    });
    // Let the stream start, then ask mcplb to stop while it runs (about 1.5 s in all).
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    let r = call.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let progress = progress_events(&r);
    assert_eq!(progress, 15, "every progress event arrived after SIGTERM");
    assert_eq!(
        r.json().unwrap()["id"],
        json!(8),
        "the final answer arrived"
    );
    let status = wait_exit(&mut p, t);
    assert!(status.success(), "{status:?}");
}
