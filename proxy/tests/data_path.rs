//! The data path through a real `mcplb` process, on loopback, on both drivers: JSON and SSE
//! answers, 202, GET/DELETE, stickiness, sealed sessions, limits, broken input, and the
//! 2026-07-28 stateless header checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn json_answers_notifications_and_sealed_sessions() {
    let a = mock("alpha");
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, name) = init_session(&mut c);
        assert_eq!(name, "alpha");
        // The client never sees the backend's own id ("alpha-N").
        assert!(
            !sid.contains("alpha"),
            "session id leaks the backend id: {sid}"
        );
        // The backend repeats the session id on ping answers: the client gets back the very
        // id it holds, not a new sealing of it.
        let r = c
            .mcp("/mcp", Some(&sid), &rpc(3, "ping", json!({})))
            .unwrap();
        assert_eq!(r.header("mcp-session-id"), Some(sid.as_str()));
        let r = c
            .mcp("/mcp", Some(&sid), &rpc(2, "tools/list", json!({})))
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("application/json"));
        let v = r.json().unwrap();
        assert_eq!(v["id"], 2);
        assert!(v["result"]["tools"].as_array().unwrap().len() >= 3);
        // String ids come back as strings, byte for byte.
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &json!({"jsonrpc": "2.0", "id": "req-\u{e9}", "method": "ping"}),
            )
            .unwrap();
        assert_eq!(r.json().unwrap()["id"], "req-\u{e9}");
        // A response from the client (to a server request) is accepted with 202.
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &json!({"jsonrpc": "2.0", "id": 99, "result": {}}),
            )
            .unwrap();
        assert_eq!(r.status, 202, "driver {driver}");
    }
}

#[test]
fn sse_answers_are_forwarded_event_by_event() {
    let a = mock_with(MockConfig {
        name: "alpha".into(),
        progress_events: 3,
        progress_interval: Duration::from_millis(400),
        ..Default::default()
    });
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                    "params": {"name": "progress", "arguments": {}, "_meta": {"progressToken": "tok"}}}),
            )
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/event-stream"));
        assert_eq!(r.events.len(), 4, "3 progress + result");
        let first = r.events[0].0;
        let last = r.events[3].0;
        // Events arrive as the backend sends them (400 ms apart), not all at the end.
        assert!(
            last.duration_since(first) >= Duration::from_millis(700),
            "events were buffered: {:?}",
            last.duration_since(first)
        );
        let p0: serde_json::Value = serde_json::from_str(&r.events[0].1).unwrap();
        assert_eq!(p0["params"]["progressToken"], "tok");
        assert_eq!(r.json().unwrap()["id"], 5);
        // The connection stays usable after a chunked stream.
        assert_eq!(whoami(&mut c, &sid), "alpha");
    }
}

#[test]
fn sessions_stick_to_their_backend() {
    let (a, b, d) = (mock("a"), mock("b"), mock("d"));
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a, &b, &d], ""), driver);
        let mut seen = std::collections::HashSet::new();
        let mut c = HttpClient::connect(p.addr).unwrap();
        for _ in 0..6 {
            let (sid, name) = init_session(&mut c);
            seen.insert(name.clone());
            // Every call of the session, on fresh connections too (any core), hits its backend.
            for i in 0..4 {
                let who = if i % 2 == 0 {
                    whoami(&mut c, &sid)
                } else {
                    whoami(&mut HttpClient::connect(p.addr).unwrap(), &sid)
                };
                assert_eq!(who, name, "driver {driver}");
            }
        }
        assert_eq!(
            seen.len(),
            3,
            "new sessions spread over all backends: {seen:?}"
        );
    }
}

#[test]
fn unknown_or_tampered_session_is_404() {
    let a = mock("alpha");
    let p = start_proxy(&config_for(&[&a], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    let mut tampered = sid.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    for bad in ["nope", "alpha-1", tampered.as_str()] {
        let r = c
            .mcp("/mcp", Some(bad), &rpc(41, "tools/list", json!({})))
            .unwrap();
        assert_eq!(r.status, 404, "{bad}");
        let v = r.json().unwrap();
        assert_eq!(v["id"], 41);
        assert!(v["error"]["code"].is_i64());
    }
    // A session sealed by another mcplb (another key) is unknown here too.
    let p2 = start_proxy(&config_for(&[&a], ""), "auto");
    let mut c2 = HttpClient::connect(p2.addr).unwrap();
    let r = c2
        .mcp("/mcp", Some(&sid), &rpc(1, "ping", json!({})))
        .unwrap();
    assert_eq!(r.status, 404);
    // With a shared key, replicas route each other's sessions.
    let key = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let extra = format!("session_key = \"{key}\"");
    let r1 = start_proxy(&config_for(&[&a], &extra), "auto");
    let r2 = start_proxy(&config_for(&[&a], &extra), "auto");
    let (sid, _) = init_session(&mut HttpClient::connect(r1.addr).unwrap());
    assert_eq!(
        whoami(&mut HttpClient::connect(r2.addr).unwrap(), &sid),
        "alpha"
    );
}

#[test]
fn get_stream_and_delete() {
    let a = mock("alpha");
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        // GET opens the standalone stream: the first event must arrive while it stays open.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET /mcp HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\nmcp-session-id: {sid}\r\nlast-event-id: ev-7\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("hello from alpha") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream closed early");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.to_ascii_lowercase().contains("text/event-stream"));
        assert_eq!(a.last_header("last-event-id").as_deref(), Some("ev-7"));
        drop(s);
        let d = c
            .request("DELETE", "/mcp", &[("mcp-session-id", &sid)], b"")
            .unwrap();
        assert_eq!(d.status, 200);
        // The backend forgot the session: its 404 comes through unchanged.
        let r = c
            .mcp("/mcp", Some(&sid), &rpc(3, "ping", json!({})))
            .unwrap();
        assert_eq!(r.status, 404, "driver {driver}");
    }
}

#[test]
fn headers_are_forwarded_and_host_rewritten() {
    let a = mock("alpha");
    let p = start_proxy(&config_for(&[&a], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    let body = rpc(4, "ping", json!({})).to_string();
    let r = c
        .request(
            "POST",
            "/mcp",
            &[
                ("content-type", "application/json"),
                ("accept", "application/json, text/event-stream"),
                ("mcp-session-id", &sid),
                ("mcp-protocol-version", "2025-06-18"),
                ("authorization", "Bearer secret-token"),
            ],
            body.as_bytes(),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(a.last_header("host"), Some(a.addr().to_string()));
    assert_eq!(
        a.last_header("authorization").as_deref(),
        Some("Bearer secret-token")
    );
    assert_eq!(
        a.last_header("mcp-protocol-version").as_deref(),
        Some("2025-06-18")
    );
}

#[test]
fn limits_and_broken_input_leave_others_served() {
    let a = mock("alpha");
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a], "max_body_bytes = 1024"), driver);
        // A good client keeps a session open through everything below.
        let mut good = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut good);

        // Oversized body: 413 with a JSON-RPC error, connection closed.
        let mut c = HttpClient::connect(p.addr).unwrap();
        let big = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"x": "y".repeat(4000)}}});
        let r = c.mcp("/mcp", Some(&sid), &big).unwrap();
        assert_eq!(r.status, 413);
        assert_eq!(r.json().unwrap()["error"]["code"], -32600);
        assert_eq!(
            a.tool_calls("echo"),
            0,
            "an oversized call must not reach the backend"
        );

        // Invalid JSON: 400 -32700 with a null id; the connection stays usable.
        let mut c = HttpClient::connect(p.addr).unwrap();
        let r = c
            .request(
                "POST",
                "/mcp",
                &[("mcp-session-id", &sid)],
                b"{\"jsonrpc\":\"2.0\",",
            )
            .unwrap();
        assert_eq!(r.status, 400);
        let v = r.json().unwrap();
        assert_eq!(v["error"]["code"], -32700);
        assert!(v["id"].is_null());
        // Invalid request with a readable id: -32600, id echoed.
        let r = c
            .request(
                "POST",
                "/mcp",
                &[("mcp-session-id", &sid)],
                br#"{"jsonrpc":"2.0","id":"x1","method":42}"#,
            )
            .unwrap();
        assert_eq!(r.status, 400);
        let v = r.json().unwrap();
        assert_eq!(v["error"]["code"], -32600);
        assert_eq!(v["id"], "x1");
        assert_eq!(whoami(&mut c, &sid), "alpha");

        // Garbage bytes: 400 and close.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"\x16\x03\x01garbage\r\n\r\n").unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));

        // Half-sent head and half-sent body, then hang up.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-le")
            .unwrap();
        drop(s);
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"")
            .unwrap();
        drop(s);
        // Smuggling-shaped head: both framings.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(
            b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        )
        .unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400"));
        // Unknown path: 404.
        let r = HttpClient::connect(p.addr)
            .unwrap()
            .mcp("/other", None, &rpc(1, "ping", json!({})))
            .unwrap();
        assert_eq!(r.status, 404);

        // The good client never noticed.
        assert_eq!(whoami(&mut good, &sid), "alpha", "driver {driver}");
    }
}

#[test]
fn chunked_request_bodies_and_pipelining() {
    let a = mock("alpha");
    let p = start_proxy(&config_for(&[&a], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    let body = rpc(
        8,
        "tools/call",
        json!({"name": "echo", "arguments": {"a": 1}}),
    )
    .to_string();
    let (x, y) = body.split_at(10);
    let mut raw = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{x}\r\n{:x}\r\n{y}\r\n0\r\n\r\n",
        x.len(),
        y.len()
    );
    // Two more requests pipelined in the same write.
    for id in [9, 10] {
        let b = rpc(id, "ping", json!({})).to_string();
        raw.push_str(&format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\nmcp-session-id: {sid}\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        ));
    }
    c.send_raw(raw.as_bytes()).unwrap();
    for id in [8, 9, 10] {
        let r = c.read_response().unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json().unwrap()["id"], id);
    }
}

#[test]
fn stateless_requests_check_mirror_headers() {
    let s = mock_with(MockConfig {
        name: "sl".into(),
        stateless: true,
        ..Default::default()
    });
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&s], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let body = json!({"jsonrpc": "2.0", "id": "s1", "method": "tools/call",
            "params": {"name": "whoami", "arguments": {},
                "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}})
        .to_string();
        let ok = c
            .request(
                "POST",
                "/mcp",
                &[
                    ("content-type", "application/json"),
                    ("accept", "application/json, text/event-stream"),
                    ("mcp-protocol-version", "2026-07-28"),
                    ("mcp-method", "tools/call"),
                    ("mcp-name", "whoami"),
                ],
                body.as_bytes(),
            )
            .unwrap();
        assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
        assert_eq!(ok.json().unwrap()["result"]["content"][0]["text"], "sl");
        let before = s.tool_calls("whoami");
        for (m, n) in [("tools/list", "whoami"), ("tools/call", "echo")] {
            let bad = c
                .request(
                    "POST",
                    "/mcp",
                    &[
                        ("content-type", "application/json"),
                        ("mcp-protocol-version", "2026-07-28"),
                        ("mcp-method", m),
                        ("mcp-name", n),
                    ],
                    body.as_bytes(),
                )
                .unwrap();
            assert_eq!(bad.status, 400);
            let v = bad.json().unwrap();
            assert_eq!(v["error"]["code"], -32020);
            assert_eq!(v["id"], "s1");
        }
        assert_eq!(
            s.tool_calls("whoami"),
            before,
            "mismatched requests must not reach the backend"
        );
        let _ = driver;
    }
}

#[test]
fn dead_backends_fail_over_for_new_sessions_and_502_when_none() {
    let a = mock("alive");
    // A port with nothing listening.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}/mcp", dead.local_addr().unwrap());
    drop(dead);
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\nconnect_timeout = \"1s\"\n\n[[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"{dead_url}\", \"{}\"]\n\n[[servers]]\nname = \"down\"\npath = \"/down\"\nbackends = [\"{dead_url}\"]\n",
        a.url()
    );
    let p = start_proxy(&cfg, "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    for _ in 0..4 {
        let (_, name) = init_session(&mut c);
        assert_eq!(name, "alive");
    }
    let t = Instant::now();
    let r = c
        .mcp("/down", None, &rpc(3, "tools/list", json!({})))
        .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(r.json().unwrap()["id"], 3);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn tool_calls_are_sent_exactly_once() {
    let a = mock("alpha");
    let p = start_proxy(&config_for(&[&a], ""), "auto");
    let mut c = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut c);
    for i in 0..50 {
        let r = c
            .mcp(
                "/mcp",
                Some(&sid),
                &rpc(
                    100 + i,
                    "tools/call",
                    json!({"name": "echo", "arguments": {"i": i}}),
                ),
            )
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(a.tool_calls("echo"), 50);
}

#[test]
fn requests_after_idle_gaps_are_never_lost() {
    // Keep-alive connections read directly for a short while, then cancel that read and idle
    // with no buffer; requests that arrive around that switch must all be answered.
    let a = mock("alpha");
    for driver in DRIVERS {
        let p = start_proxy(&config_for(&[&a], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut c);
        for gap_ms in [0u64, 95, 100, 105, 150, 20, 99, 101, 250] {
            std::thread::sleep(Duration::from_millis(gap_ms));
            assert_eq!(
                whoami(&mut c, &sid),
                "alpha",
                "gap {gap_ms} ms, driver {driver}"
            );
        }
    }
}

#[test]
fn parked_idle_connections_wake_for_their_next_request_and_time_out() {
    // Idle keep-alive connections leave their task and wait in the core's idle set: each must
    // be served again when its next request comes, one whose client left must be counted
    // closed, and the rest closed by mcplb after client_idle_timeout.
    let a = mock("alpha");
    for driver in DRIVERS {
        let cfg = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            // Long enough that the first of the 100 connections is not closed while the last
            // ones open on a loaded machine (the sweep closes one exactly when it is due).
            config_for(&[&a], "client_idle_timeout = \"5s\"")
        );
        let p = start_proxy(&cfg, driver);
        // Each connection on its own thread: it serves two requests, idles (parked) and is
        // woken by its next one 400 ms later, however long the others take. In one loop the
        // first connection idled while the other 99 opened and the loop came back to it: on a
        // loaded machine (load ~12) that passed client_idle_timeout, mcplb closed it as it
        // should, and its request failed with ClosedBeforeHead.
        let mut conns: Vec<(HttpClient, String)> = std::thread::scope(|s| {
            let opened: Vec<_> = (0..100)
                .map(|i| {
                    s.spawn(move || {
                        let mut c = HttpClient::connect(p.addr).unwrap();
                        let (sid, _) = init_session(&mut c);
                        std::thread::sleep(Duration::from_millis(400));
                        assert_eq!(
                            whoami(&mut c, &sid),
                            "alpha",
                            "connection {i}, driver {driver}"
                        );
                        (c, sid)
                    })
                })
                .collect();
            opened.into_iter().map(|t| t.join().unwrap()).collect()
        });
        // A client leaving while parked is noticed (the gauge goes down by ten).
        std::thread::sleep(Duration::from_millis(400));
        drop(conns.drain(..10));
        let gauge = || {
            let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
            let r = c.request("GET", "/stats", &[], b"").unwrap();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["gauges"]["client_connections"].as_i64().unwrap()
        };
        let t = Instant::now();
        while gauge() != 90 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "client_connections {} (driver {driver})",
                gauge()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Past client_idle_timeout (5 s, swept when one is due) mcplb closes the others.
        std::thread::sleep(Duration::from_millis(6500));
        for (c, _) in conns.drain(..) {
            let mut raw = c.into_stream();
            raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 8];
            // Closed: EOF, or a reset. A read that times out is a connection still open.
            let closed = match raw.read(&mut b) {
                Ok(n) => n == 0,
                Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            };
            assert!(closed, "not closed (driver {driver})");
        }
    }
}

#[test]
fn woken_connections_handed_to_warm_tasks_serve_their_own_clients() {
    // A task whose connection parks waits for the next parked connection that wakes on its
    // core (a few per core): each woken connection must be answered on its own socket, in its
    // own session, whichever task takes it; one whose client leaves closes (counted), and
    // the rest are still closed after client_idle_timeout.
    let a = mock("alpha");
    let b = mock("beta");
    for driver in DRIVERS {
        let cfg = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&a, &b], "client_idle_timeout = \"3s\"")
        );
        let p = start_proxy(&cfg, driver);
        // More connections than the warm tasks kept on the two cores.
        let mut conns: Vec<(HttpClient, String, String)> = (0..12)
            .map(|_| {
                let mut c = HttpClient::connect(p.addr).unwrap();
                let (sid, server) = init_session(&mut c);
                (c, sid, server)
            })
            .collect();
        let servers: std::collections::HashSet<_> = conns.iter().map(|c| c.2.clone()).collect();
        assert_eq!(
            servers.len(),
            2,
            "sessions on both backends (driver {driver})"
        );
        for round in 0..4u64 {
            // Past the longest hot wait: each parks right after its answer.
            std::thread::sleep(Duration::from_millis(300));
            // Each round in another order, so connections meet other connections' tasks.
            let n = conns.len();
            for k in 0..n {
                let i = (k * 5 + round as usize * 7) % n;
                let (c, sid, server) = &mut conns[i];
                let id = 1000 * round + i as u64;
                let call = rpc(
                    id,
                    "tools/call",
                    json!({"name": "echo", "arguments": {"conn": i, "round": round}}),
                );
                let r = c.mcp("/mcp", Some(sid), &call).unwrap();
                assert_eq!(r.status, 200, "connection {i} round {round} ({driver})");
                let v = r.json().unwrap();
                assert_eq!(
                    v["id"],
                    json!(id),
                    "connection {i} round {round} ({driver})"
                );
                let text = v["result"]["content"][0]["text"].as_str().unwrap();
                let echoed: serde_json::Value = serde_json::from_str(text).unwrap();
                assert_eq!(echoed, json!({"conn": i, "round": round}), "{driver}");
                if round % 2 == 1 {
                    assert_eq!(whoami(c, sid), *server, "connection {i} ({driver})");
                }
            }
        }
        // Clients leaving while parked close (the gauge goes down by four); the others are
        // still served.
        std::thread::sleep(Duration::from_millis(300));
        drop(conns.drain(..4));
        let gauge = || {
            let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
            let r = c.request("GET", "/stats", &[], b"").unwrap();
            let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            v["gauges"]["client_connections"].as_i64().unwrap()
        };
        wait_until("client_connections back to 8", || gauge() == 8);
        for (i, (c, sid, server)) in conns.iter_mut().enumerate() {
            assert_eq!(whoami(c, sid), *server, "connection {i} ({driver})");
        }
        // Past client_idle_timeout (3 s) mcplb closes the others.
        std::thread::sleep(Duration::from_millis(4500));
        for (c, _, _) in conns.drain(..) {
            let mut raw = c.into_stream();
            raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut b = [0u8; 8];
            assert_eq!(raw.read(&mut b).unwrap_or(0), 0, "not closed ({driver})");
        }
        wait_until("client_connections down to 0", || gauge() == 0);
    }
}

#[test]
fn long_urls_and_deep_json_are_refused_and_counted() {
    let a = mock("alpha");
    let cfg = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config_for(&[&a], "max_url_bytes = 64\nmax_json_depth = 8")
    );
    let p = start_proxy(&cfg, "auto");
    let mut good = HttpClient::connect(p.addr).unwrap();
    let (sid, _) = init_session(&mut good);
    // A target over max_url_bytes: 414 with a JSON-RPC error.
    let mut c = HttpClient::connect(p.addr).unwrap();
    let long = format!("/mcp?{}", "q".repeat(80));
    let r = c
        .request(
            "POST",
            &long,
            &[("content-type", "application/json")],
            b"{}",
        )
        .unwrap();
    assert_eq!(r.status, 414);
    assert_eq!(r.json().unwrap()["error"]["code"], -32600);
    // A body nested deeper than max_json_depth: 400 -32700; one level less is served.
    let nested = |d: usize| {
        format!(
            r#"{{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{{"name":"echo","arguments":{{"x":{}1{}}}}}}}"#,
            "[".repeat(d),
            "]".repeat(d)
        )
    };
    let mut c = HttpClient::connect(p.addr).unwrap();
    let h = [
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-session-id", sid.as_str()),
    ];
    // Levels: the message 1, params 2, arguments 3, then the arrays.
    let r = c.request("POST", "/mcp", &h, nested(6).as_bytes()).unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json().unwrap()["error"]["code"], -32700);
    let r = c.request("POST", "/mcp", &h, nested(5).as_bytes()).unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(whoami(&mut good, &sid), "alpha");
    // Both are counted.
    let t = Instant::now();
    loop {
        let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
        let r = c.request("GET", "/stats", &[], b"").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        if v["counters"]["urls_too_long"] == 1 && v["counters"]["json_too_deep"] == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{}", v["counters"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}
