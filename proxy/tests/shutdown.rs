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
    let mut c = HttpClient::connect(addr).unwrap();
    let sid2 = sid.clone();
    let call = std::thread::spawn(move || {
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
    wait_until("the slow call to reach the backend", || {
        m.tool_calls("slow") == 1
    });
    let pid = p.child.id() as i32;
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let t = Instant::now();
    // New connections are refused once the listeners close (they check every 250 ms).
    wait_until("the listeners to close after SIGTERM", || {
        std::net::TcpStream::connect(addr).is_err()
    });
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

/// SIGTERM while tasks wait warm for woken connections (`runtime/park.rs`): every parked
/// connection is closed and the process exits, none of those tasks holding it up.
#[test]
#[allow(unsafe_code)]
fn sigterm_with_warm_tasks_waiting_closes_parked_connections_and_exits() {
    let m = mock("alpha");
    let mut p = start_proxy(&config_for(&[&m], ""), "auto");
    let mut conns: Vec<(HttpClient, String)> = (0..10)
        .map(|_| {
            let mut c = HttpClient::connect(p.addr).unwrap();
            let (sid, _) = init_session(&mut c);
            (c, sid)
        })
        .collect();
    // Woken, served and parked again, twice (past the longest hot wait).
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(300));
        for (c, sid) in conns.iter_mut() {
            assert_eq!(whoami(c, sid), "alpha");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending SIGTERM to the child process this test started.
    unsafe {
        libc::kill(p.child.id() as i32, libc::SIGTERM);
    }
    let t = Instant::now();
    for (c, _) in conns {
        let mut raw = idle_stream(c);
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 16];
        assert_eq!(
            raw.read(&mut b).unwrap_or(0),
            0,
            "parked connection not closed"
        );
    }
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
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    let call = std::thread::spawn(move || {
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
    // Once the call has reached the backend, ask mcplb to stop while it runs (about 1.5 s
    // in all).
    wait_until("the progress call to reach the backend", || {
        m.tool_calls("progress") == 1
    });
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

/// SIGTERM with a session's standalone GET stream open, a streaming tool call in flight and
/// a connection that has sent nothing yet: the GET stream ends at once with a clean end of
/// its chunked body (the client may resume elsewhere), the silent connection closes, the call
/// completes whole, and mcplb exits (0) right after it, not at `shutdown_timeout`.
#[test]
#[allow(unsafe_code)]
fn sigterm_ends_get_streams_and_exits_after_the_last_call() {
    for driver in DRIVERS {
        let m = mock_with(MockConfig {
            name: "streamer".into(),
            progress_events: 30,
            progress_interval: Duration::from_millis(100),
            ..Default::default()
        });
        // A shutdown_timeout far above the call's 3 s, so that exiting at it cannot pass
        // for exiting after the call.
        let config = config_for(&[&m], "shutdown_timeout = \"120s\"");
        let mut p = start_proxy(&config, driver);
        let addr = p.addr;
        let mut c = HttpClient::connect(addr).unwrap();
        let (sid, _) = init_session(&mut c);
        // The session's GET stream, open until its first event has arrived.
        let req = format!(
            "GET /mcp HTTP/1.1\r\nhost: t\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\n\r\n"
        );
        c.send_raw(req.as_bytes()).unwrap();
        c.wait_for(b"hello from streamer").unwrap();
        let get_reader = std::thread::spawn(move || {
            // A chunked body cut short is an error here: Ok means it ended cleanly.
            let r = c.read_response();
            let ended = Instant::now();
            let closed_after = c.into_stream().read(&mut [0u8; 16]).unwrap_or(0) == 0;
            (r, ended, closed_after)
        });
        // A connection that has sent nothing yet.
        let mut silent = std::net::TcpStream::connect(addr).unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut caller = HttpClient::connect(addr).unwrap();
        let sid2 = sid.clone();
        let call = std::thread::spawn(move || {
            let r = caller
                .mcp(
                    "/mcp",
                    Some(&sid2),
                    &rpc(
                        8,
                        "tools/call",
                        json!({"name": "progress", "arguments": {}, "_meta": {"progressToken": 1}}),
                    ),
                )
                .unwrap();
            (r, Instant::now())
        });
        // Once the call has reached the backend (its stream runs about 3 s), ask mcplb to
        // stop. Not a sleep: on a busy machine the call's thread may not have sent it yet.
        wait_until("the progress call to reach the backend", || {
            m.tool_calls("progress") == 1
        });
        let t = Instant::now();
        // SAFETY: sending SIGTERM to the child process this test started.
        unsafe {
            libc::kill(p.child.id() as i32, libc::SIGTERM);
        }
        let (get, get_ended, closed_after) = get_reader.join().unwrap();
        assert_eq!(silent.read(&mut [0u8; 16]).unwrap_or(0), 0, "{driver}");
        let (r, call_ended) = call.join().unwrap();
        assert!(
            get_ended < call_ended,
            "{driver}: the GET stream waited for the call"
        );
        let get =
            get.unwrap_or_else(|e| panic!("{driver}: the GET stream did not end cleanly: {e}"));
        assert_eq!(get.status, 200, "{driver}");
        assert!(get.events[0].1.contains("hello from streamer"), "{driver}");
        assert!(
            closed_after,
            "{driver}: the GET stream's connection stayed open"
        );
        assert_eq!(r.status, 200, "{driver}");
        assert_eq!(progress_events(&r), 30, "{driver}: every progress event");
        assert_eq!(r.json().unwrap()["id"], json!(8), "{driver}");
        let status = loop {
            if let Some(s) = p.child.try_wait().unwrap() {
                break s;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "{driver}: no exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        let exit_after = call_ended.elapsed();
        assert!(status.success(), "{driver}: {status:?}");
        // Not a speed bound: the alternative is the 120 s shutdown_timeout.
        assert!(
            exit_after < Duration::from_secs(30),
            "{driver}: exited {exit_after:?} after the last call ended"
        );
    }
}

/// Every thread of mcplb blocks the signals it takes with sigwait, so a signal never lands on
/// a thread where its default action would kill the process: many SIGHUPs (each a reload)
/// leave it serving, and SIGTERM still ends it with exit status 0. (The log writer thread was
/// once started before the signals were blocked, and a SIGHUP that reached it killed mcplb.)
#[test]
#[allow(unsafe_code)]
fn signals_reach_the_signal_loop_never_another_thread() {
    let m = mock("alpha");
    let mut p = start_proxy(&config_for(&[&m], ""), "auto");
    let pid = p.child.id() as i32;
    for _ in 0..40 {
        // SAFETY: sending SIGHUP to the child process this test started.
        unsafe {
            libc::kill(pid, libc::SIGHUP);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    assert_eq!(whoami(&mut c, &sid), "alpha");
    // SAFETY: as above.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    drop(c);
    let status = wait_exit(&mut p, Instant::now());
    assert!(status.success(), "{status:?}");
}
