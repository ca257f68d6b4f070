//! Parked (idle keep-alive) client connections that their clients reset or close, through a
//! real `mcplb` on both drivers: the idle set closes them with no task (`park.rs`, `gone`),
//! the connection gauge falls to the connections kept, those keep being served, and a client
//! that sends a request and then shuts its side (a half-close: the same readiness as a close)
//! still gets its answer.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::*;

/// Closes `s` with an RST (SO_LINGER with a zero timeout).
fn reset(s: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on an open socket with a linger struct on the stack.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
    drop(s);
}

fn client_connections(p: &Proxy) -> i64 {
    let mut c = HttpClient::connect(p.admin.unwrap()).unwrap();
    let r = c.request("GET", "/stats", &[], b"").unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["gauges"]["client_connections"].as_i64().unwrap()
}

/// A `tools/call` of `whoami` in session `sid`, as raw bytes.
fn whoami_request(sid: &str) -> Vec<u8> {
    let body = rpc(
        9,
        "tools/call",
        serde_json::json!({"name": "whoami", "arguments": {}}),
    )
    .to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nmcp-session-id: {sid}\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn reset_and_closed_parked_connections_are_closed_and_the_others_served() {
    let a = mock("alpha");
    for driver in DRIVERS {
        let cfg = format!(
            "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&a], "client_idle_timeout = \"60s\"")
        );
        let p = start_proxy(&cfg, driver);
        // 80 connections, each with a session and a call answered: then idle, so parked.
        let mut conns: Vec<(HttpClient, String)> = (0..80)
            .map(|_| {
                let mut c = HttpClient::connect(p.addr).unwrap();
                let (sid, _) = init_session(&mut c);
                assert_eq!(whoami(&mut c, &sid), "alpha", "driver {driver}");
                (c, sid)
            })
            .collect();
        wait_until("80 client connections", || client_connections(&p) == 80);
        // Parked for a while (a hot wait, if any, is over).
        std::thread::sleep(Duration::from_millis(400));
        let half_closed: Vec<_> = conns.drain(..10).collect();
        let closed: Vec<_> = conns.drain(..20).collect();
        let reset_ones: Vec<_> = conns.drain(..30).collect();
        // 30 reset, 20 closed (FIN) at once; 20 kept.
        for (c, _) in reset_ones {
            reset(c.into_stream());
        }
        drop(closed);
        // 10 send a request and shut their side at once: answered all the same.
        let mut raws: Vec<TcpStream> = half_closed
            .into_iter()
            .map(|(c, sid)| {
                let mut s = c.into_stream();
                s.write_all(&whoami_request(&sid)).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
                s
            })
            .collect();
        for s in &mut raws {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut answer = Vec::new();
            s.read_to_end(&mut answer).unwrap();
            let text = String::from_utf8_lossy(&answer);
            assert!(
                text.starts_with("HTTP/1.1 200") && text.contains("alpha"),
                "a half-closed connection's request (driver {driver}): {text}"
            );
        }
        drop(raws);
        wait_until("the reset and closed connections gone", || {
            client_connections(&p) == 20
        });
        // The others are still served, woken from the idle set, and so is a new one.
        for (c, sid) in &mut conns {
            assert_eq!(whoami(c, sid), "alpha", "driver {driver}");
        }
        let mut fresh = HttpClient::connect(p.addr).unwrap();
        let (sid, _) = init_session(&mut fresh);
        assert_eq!(whoami(&mut fresh, &sid), "alpha", "driver {driver}");
        wait_until("21 client connections", || client_connections(&p) == 21);
    }
}
