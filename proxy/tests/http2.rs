//! HTTP/2 through a real `mcplb` on both drivers, frame by frame (h2c with prior knowledge):
//! each known flood (rapid reset, CONTINUATION, PING, SETTINGS) is refused with GOAWAY
//! `ENHANCE_YOUR_CALM`, that connection closes and the flood is counted on its own counter,
//! while clients on other connections (an HTTP/1.1 keep-alive one opened before, a new HTTP/2
//! one after) go on being served. curl, httpx and the SDK servers are in tests/py/test_http2.py.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::h2::*;
use common::*;

fn config(m: &MockServer) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 1\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"{}\"]\n\
         [servers.health]\nenabled = false\n",
        m.url()
    )
}

fn counters(p: &Proxy) -> serde_json::Value {
    HttpClient::connect(p.admin.unwrap())
        .unwrap()
        .request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()["counters"]
        .clone()
}

/// A stateless tool call on `c` (HTTP/1.1): answered with its result.
fn http1_call(c: &mut HttpClient, id: u64) {
    let r = c
        .mcp(
            "/mcp",
            None,
            &rpc(id, "tools/call", json!({"name": "echo", "arguments": {}})),
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("\"result\""), "{body}");
}

/// A stateless tool call on a new HTTP/2 connection: its answer's DATA carry the result and
/// end the stream.
fn h2_call(addr: std::net::SocketAddr) {
    h2_call_on(&mut RawH2::connect(addr), 1);
}

/// A stateless tool call on stream `id` of `c`.
fn h2_call_on<S: std::io::Read + std::io::Write>(c: &mut RawH2<S>, id: u32) {
    let body = rpc(7, "tools/call", json!({"name": "echo", "arguments": {}})).to_string();
    let req = post_frames(id, &body);
    assert!(c.send(&req));
    let mut answer = Vec::new();
    loop {
        let f = c.next_frame().expect("the HTTP/2 answer did not come");
        if f.kind == DATA && f.stream == id {
            answer.extend_from_slice(&f.payload);
            if f.flags & END_STREAM != 0 {
                break;
            }
        }
        assert!(f.kind != GOAWAY && f.kind != RST_STREAM, "refused: {f:?}");
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains("\"id\":7") && answer.contains("\"result\""),
        "{answer}"
    );
}

/// Tool calls on streams `ids`, sent in one write, each with `pad` bytes of arguments; every
/// answer must come whole (each echoes its own arguments back).
fn h2_calls_at_once<S: std::io::Read + std::io::Write>(c: &mut RawH2<S>, ids: &[u32], pad: usize) {
    let mut req = Vec::new();
    for &id in ids {
        let text = format!("{id}-{}", "x".repeat(pad));
        let body = rpc(
            u64::from(id),
            "tools/call",
            json!({"name": "echo", "arguments": {"text": text}}),
        );
        req.extend_from_slice(&post_frames(id, &body.to_string()));
    }
    assert!(c.send(&req));
    let mut answers: std::collections::HashMap<u32, Vec<u8>> = Default::default();
    let mut ended = 0;
    while ended < ids.len() {
        let f = c.next_frame().expect("an HTTP/2 answer did not come");
        assert!(f.kind != GOAWAY && f.kind != RST_STREAM, "refused: {f:?}");
        if f.kind == DATA && ids.contains(&f.stream) {
            answers
                .entry(f.stream)
                .or_default()
                .extend_from_slice(&f.payload);
            if f.flags & END_STREAM != 0 {
                ended += 1;
            }
        }
    }
    for &id in ids {
        let answer = String::from_utf8_lossy(&answers[&id]);
        assert!(
            answer.contains(&format!("\"id\":{id}")) && answer.contains(&format!("{id}-xxxx")),
            "stream {id}: {}",
            answer.get(..200).unwrap_or(&answer)
        );
    }
}

/// The bytes of each flood, past the default limits.
fn flood(kind: &str) -> Vec<u8> {
    let mut b = Vec::new();
    match kind {
        "h2_rapid_resets" => {
            // GET / (HPACK static entries: :method GET, :scheme http, :path /), at once reset.
            let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
            for i in 0..110u32 {
                let id = 2 * i + 1;
                b.extend_from_slice(&frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
                b.extend_from_slice(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes()));
            }
        }
        "h2_continuation_floods" => {
            // One header block in a HEADERS frame and ten CONTINUATION frames.
            let big = "x".repeat(1100);
            let block = request_block("GET", "/mcp", &[("x-filler", &big)]);
            let mut pieces = block.chunks(block.len() / 10);
            b.extend_from_slice(&frame(HEADERS, END_STREAM, 1, pieces.next().unwrap()));
            for p in pieces {
                b.extend_from_slice(&frame(CONTINUATION, 0, 1, p));
            }
        }
        "h2_ping_floods" => {
            for i in 0..60u64 {
                b.extend_from_slice(&frame(PING, 0, 0, &i.to_be_bytes()));
            }
        }
        "h2_settings_floods" => {
            for _ in 0..60 {
                b.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
            }
        }
        _ => unreachable!(),
    }
    b
}

#[test]
fn each_flood_is_refused_and_other_connections_go_on() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        stateless: true,
        ..Default::default()
    });
    let kinds = [
        "h2_rapid_resets",
        "h2_continuation_floods",
        "h2_ping_floods",
        "h2_settings_floods",
    ];
    for driver in DRIVERS {
        let p = start_proxy(&config(&m), driver);
        let mut kept = HttpClient::connect(p.addr).unwrap();
        http1_call(&mut kept, 1);
        h2_call(p.addr);
        for (i, kind) in kinds.iter().enumerate() {
            let mut c = RawH2::connect(p.addr);
            // The server may close while the flood is still being written.
            let _ = c.send(&flood(kind));
            let (code, closed) = c.goaway_then_close();
            assert_eq!(code, Some(ENHANCE_YOUR_CALM), "{driver} {kind}");
            assert!(closed, "{driver} {kind}: the connection stayed open");
            // Others are served: the HTTP/1.1 connection from before, a new HTTP/2 one.
            http1_call(&mut kept, 10 + i as u64);
            h2_call(p.addr);
        }
        let mut last = serde_json::Value::Null;
        wait_until(&format!("{driver}: each flood counted once"), || {
            last = counters(&p);
            kinds.iter().all(|k| last[k] == 1)
        });
        // The six served HTTP/2 connections and the four floods; no other protocol error.
        assert_eq!(last["h2_connections"], 9, "{driver}: {last}");
        assert_eq!(last["h2_protocol_errors"], 0, "{driver}: {last}");
    }
}

#[test]
fn ordinary_control_frames_are_not_a_flood() {
    let m = mock_with(MockConfig {
        name: "m".into(),
        stateless: true,
        ..Default::default()
    });
    for driver in DRIVERS {
        let p = start_proxy(&config(&m), driver);
        let mut c = RawH2::connect(p.addr);
        // A few pings and settings, a reset of a stream: a browser's day.
        let mut b = Vec::new();
        for i in 0..5u64 {
            b.extend_from_slice(&frame(PING, 0, 0, &i.to_be_bytes()));
            b.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        }
        let block = [0x82, 0x86, 0x84, 0x01, 0x01, b'a'];
        b.extend_from_slice(&frame(HEADERS, END_STREAM | END_HEADERS, 1, &block));
        b.extend_from_slice(&frame(RST_STREAM, 0, 1, &CANCEL.to_be_bytes()));
        assert!(c.send(&b));
        let mut pongs = 0;
        while pongs < 5 {
            let f = c.next_frame().expect("pongs did not come");
            assert_ne!(f.kind, GOAWAY, "{driver}: refused: {f:?}");
            if f.kind == PING && f.flags & 1 != 0 {
                pongs += 1;
            }
        }
        h2_call(p.addr);
    }
}

#[test]
fn tls_clients_choose_http2_or_http11_by_alpn() {
    use std::sync::Arc;
    let m = mock_with(MockConfig {
        name: "m".into(),
        stateless: true,
        ..Default::default()
    });
    let certs = SelfSigned::new("h2-tls");
    let client = |alpn: &[&[u8]]| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(certs.roots.clone())
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    };
    let connect = |addr, cfg: &Arc<rustls::ClientConfig>| {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
        rustls::StreamOwned::new(conn, s)
    };
    for driver in DRIVERS {
        let p = start_proxy(
            &config(&m).replacen("[admin]", &format!("{}\n[admin]", certs.table), 1),
            driver,
        );
        // ALPN h2: HTTP/2 over TLS, several calls on one connection (one stream each).
        let mut h2 = RawH2::over(connect(p.addr, &client(&[b"h2", b"http/1.1"])));
        h2_call_on(&mut h2, 1);
        h2_call_on(&mut h2, 3);
        assert_eq!(h2.s.conn.alpn_protocol(), Some(&b"h2"[..]), "{driver}");
        // Three calls in one write, 12 KB of arguments each: the client's TLS records
        // carry them across several plaintext chunks that the proxy copies out in turn.
        h2_calls_at_once(&mut h2, &[5, 7, 9], 12 * 1024);
        // ALPN http/1.1 (or none): HTTP/1.1 as before.
        for alpn in [&[&b"http/1.1"[..]][..], &[]] {
            let mut s = connect(p.addr, &client(alpn));
            use std::io::{Read, Write};
            s.write_all(b"GET /nothing HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            assert!(
                got.starts_with(b"HTTP/1.1 404"),
                "{driver}: {}",
                String::from_utf8_lossy(&got)
            );
        }
        wait_until("one HTTP/2 connection counted", || {
            counters(&p)["h2_connections"] == 1
        });
    }
}
