//! A client that leaves a streamed answer (a POST's SSE or a GET stream) is noticed at once,
//! through a real `mcplb` on both drivers, plain and TLS: the backend sees its upstream
//! connection close within a second although it writes nothing more (before, mcplb noticed
//! only at its next write: a GET stream stayed open until the backend's next keepalive), and
//! the gauges fall back to zero. Bytes a client sends while a stream runs (a pipelined
//! request) are not lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::ServerName;

/// A backend that answers every request with an SSE stream of one event, then silence (a GET
/// stream between keepalives, a tool call still at work), and reports each connection mcplb
/// closes: the request's method and when.
struct SilentBackend {
    addr: SocketAddr,
    closed: mpsc::Receiver<(String, Instant)>,
}

/// How the backend writes its answer's head and first event.
#[derive(Clone, Copy, Debug)]
enum Writes {
    /// In one write.
    Together,
    /// In two writes, one right after the other (the Python SDK's server does this): mcplb
    /// finds the event waiting behind the head and sends both to the client at once.
    BackToBack,
    /// The head, then the event 100 ms later: mcplb sends the head alone and waits for the
    /// event with the client watched.
    Apart,
}

fn silent_backend() -> SilentBackend {
    silent_backend_writing(Writes::Together)
}

fn silent_backend_writing(writes: Writes) -> SilentBackend {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, closed) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let tx = tx.clone();
            std::thread::spawn(move || stream_then_wait(s, tx, writes));
        }
    });
    SilentBackend { addr, closed }
}

fn stream_then_wait(mut s: TcpStream, tx: mpsc::Sender<(String, Instant)>, writes: Writes) {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    let Some((head, _)) = read_request(&mut s, &mut buf) else {
        return;
    };
    let method = head.split(' ').next().unwrap_or("").to_ascii_uppercase();
    let event = "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":1,\"progress\":1}}\n\n";
    let head =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let chunk = format!("{:x}\r\n{event}\r\n", event.len());
    let wrote = match writes {
        Writes::Together => s.write_all(format!("{head}{chunk}").as_bytes()),
        Writes::BackToBack | Writes::Apart => s.write_all(head.as_bytes()).and_then(|()| {
            if matches!(writes, Writes::Apart) {
                std::thread::sleep(Duration::from_millis(100));
            }
            s.write_all(chunk.as_bytes())
        }),
    };
    if wrote.is_err() {
        return;
    }
    // Nothing more is written: only mcplb closing the connection ends this read.
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(_) => return,
        }
    }
    let _ = tx.send((method, Instant::now()));
}

fn proxy_config(b: &SilentBackend, tls: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n{tls}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [\"http://{}/mcp\"]\n\
         [servers.health]\nenabled = false\n",
        b.addr
    )
}

/// A client connection, plain or TLS, read by hand.
enum Client {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Client {
    fn connect(addr: SocketAddr, tls: Option<&Arc<rustls::ClientConfig>>) -> Client {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match tls {
            None => Client::Plain(s),
            Some(cfg) => {
                let name = ServerName::try_from("localhost").unwrap();
                let conn = rustls::ClientConnection::new(cfg.clone(), name).unwrap();
                Client::Tls(Box::new(rustls::StreamOwned::new(conn, s)))
            }
        }
    }

    fn io(&mut self) -> &mut dyn ReadWrite {
        match self {
            Client::Plain(s) => s,
            Client::Tls(t) => t.as_mut(),
        }
    }

    /// Sends a request that opens a stream (`POST`: a tool call; `GET`: the standalone
    /// stream) and reads until its first event arrived.
    fn open_stream(&mut self, method: &str) {
        let req = if method == "POST" {
            let body = rpc(
                3,
                "tools/call",
                json!({"name": "long", "arguments": {}, "_meta": {"progressToken": 1}}),
            )
            .to_string();
            format!(
                "POST /mcp HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                 accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        } else {
            "GET /mcp HTTP/1.1\r\nhost: t\r\naccept: text/event-stream\r\n\r\n".to_string()
        };
        self.io().write_all(req.as_bytes()).unwrap();
        read_until(self.io(), b"notifications/progress");
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Reads until `needle` has arrived; returns everything read.
fn read_until(r: &mut dyn ReadWrite, needle: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.windows(needle.len()).any(|w| w == needle) {
        let n = r.read(&mut b).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    got
}

fn stats(admin: SocketAddr) -> serde_json::Value {
    let mut c = HttpClient::connect(admin).unwrap();
    c.request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()
}

fn in_flight(admin: SocketAddr) -> serde_json::Value {
    let mut c = HttpClient::connect(admin).unwrap();
    let b = c
        .request("GET", "/backends", &[], b"")
        .unwrap()
        .json()
        .unwrap();
    b["backends"][0]["in_flight"].clone()
}

fn gauge(admin: SocketAddr, name: &str) -> serde_json::Value {
    stats(admin)["gauges"][name].clone()
}

/// How a client leaves.
#[derive(Clone, Copy, Debug)]
enum Leave {
    /// The socket closes.
    Close,
    /// TLS close_notify, with the socket left open.
    CloseNotify,
}

/// Opens a stream, checks it is counted, leaves as `how`, and checks that the backend saw its
/// upstream connection close within a second and that every gauge fell back to zero.
fn leave_stream(
    p: &Proxy,
    b: &SilentBackend,
    tls: Option<&Arc<rustls::ClientConfig>>,
    method: &str,
    how: Leave,
) {
    let admin = p.admin.unwrap();
    let what = format!("{method} stream, {how:?}, tls: {}", tls.is_some());
    let mut c = Client::connect(p.addr, tls);
    c.open_stream(method);
    wait_until("the stream counted as open", || {
        gauge(admin, "sse_streams_open") == 1 && in_flight(admin) == 1
    });
    assert_eq!(gauge(admin, "upstream_busy"), 1);
    let left = Instant::now();
    let _kept = match (c, how) {
        (c, Leave::Close) => {
            drop(c);
            None
        }
        (Client::Tls(mut t), Leave::CloseNotify) => {
            t.conn.send_close_notify();
            t.conn.complete_io(&mut t.sock).unwrap();
            Some(t)
        }
        (Client::Plain(_), Leave::CloseNotify) => unreachable!("close_notify needs TLS"),
    };
    let (m, at) = b
        .closed
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: the backend never saw its connection close"));
    assert_eq!(m, method, "{what}");
    let after = at.saturating_duration_since(left);
    assert!(
        after < Duration::from_secs(1),
        "{what}: upstream closed {after:?} after the client left"
    );
    wait_until("the gauges back at zero", || {
        let s = stats(admin);
        s["gauges"]["sse_streams_open"] == 0
            && s["gauges"]["upstream_busy"] == 0
            && in_flight(admin) == 0
    });
}

#[test]
fn a_client_leaving_a_stream_closes_its_upstream_at_once() {
    for driver in DRIVERS {
        let b = silent_backend();
        let p = start_proxy(&proxy_config(&b, ""), driver);
        for method in ["POST", "GET"] {
            leave_stream(&p, &b, None, method, Leave::Close);
        }
    }
}

#[test]
fn a_client_leaving_a_stream_whose_head_came_alone_closes_its_upstream_at_once() {
    for writes in [Writes::BackToBack, Writes::Apart] {
        for driver in DRIVERS {
            let b = silent_backend_writing(writes);
            let p = start_proxy(&proxy_config(&b, ""), driver);
            for method in ["POST", "GET"] {
                leave_stream(&p, &b, None, method, Leave::Close);
            }
        }
    }
}

#[test]
fn a_tls_client_leaving_a_stream_closes_its_upstream_at_once() {
    let certs = SelfSigned::new("client-gone");
    let cfg = certs.client_config();
    for driver in DRIVERS {
        let b = silent_backend();
        let p = start_proxy(&proxy_config(&b, &certs.table), driver);
        for method in ["POST", "GET"] {
            for how in [Leave::Close, Leave::CloseNotify] {
                leave_stream(&p, &b, Some(&cfg), method, how);
            }
        }
    }
}

#[test]
fn a_request_pipelined_during_a_stream_is_answered_after_it() {
    for driver in DRIVERS {
        let m = mock_with(MockConfig {
            name: "streamer".into(),
            stateless: true,
            progress_events: 10,
            progress_interval: Duration::from_millis(100),
            ..Default::default()
        });
        let p = start_proxy(&config_for(&[&m], ""), driver);
        let mut c = HttpClient::connect(p.addr).unwrap();
        let post = |id: u64, tool: &str| {
            let body = rpc(
                id,
                "tools/call",
                json!({"name": tool, "arguments": {"text": "after"}, "_meta": {"progressToken": 1}}),
            )
            .to_string();
            format!(
                "POST /mcp HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                 accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        c.send_raw(post(8, "progress").as_bytes()).unwrap();
        c.wait_for(b"notifications/progress").unwrap();
        // The next request arrives while the stream still runs (nine more events to come).
        c.send_raw(post(9, "echo").as_bytes()).unwrap();
        let first = c.read_response().unwrap();
        assert_eq!(first.status, 200, "{driver}");
        assert_eq!(
            progress_events(&first),
            10,
            "{driver}: the stream arrived whole"
        );
        assert_eq!(first.json().unwrap()["id"], 8);
        let second = c.read_response().unwrap();
        assert_eq!(second.status, 200, "{driver}");
        assert_eq!(
            second.json().unwrap()["id"],
            9,
            "{driver}: the pipelined call"
        );
    }
}

/// Opens a stream on HTTP/2 stream `id` of `c` (`POST`: a tool call; `GET`: the standalone
/// stream) and reads until its first event arrived.
fn open_h2_stream(c: &mut common::h2::RawH2, id: u32, method: &str) {
    use common::h2::*;
    let mut req = Vec::new();
    if method == "POST" {
        let body = rpc(
            3,
            "tools/call",
            json!({"name": "long", "arguments": {}, "_meta": {"progressToken": 1}}),
        );
        req = post_frames(id, &body.to_string());
    } else {
        let block = request_block("GET", "/mcp", &[("accept", "text/event-stream")]);
        req.extend_from_slice(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
    }
    assert!(c.send(&req));
    let mut got = Vec::new();
    let needle = b"notifications/progress";
    while !got.windows(needle.len()).any(|w| w == needle) {
        let f = c
            .next_frame()
            .expect("the stream's first event did not come");
        assert!(f.kind != GOAWAY && f.kind != RST_STREAM, "refused: {f:?}");
        if f.kind == DATA && f.stream == id {
            got.extend_from_slice(&f.payload);
        }
    }
}

#[test]
fn an_http2_client_resetting_a_stream_closes_its_upstream_and_keeps_its_connection() {
    use common::h2::*;
    for driver in DRIVERS {
        let b = silent_backend();
        let p = start_proxy(&proxy_config(&b, ""), driver);
        let admin = p.admin.unwrap();
        let mut c = RawH2::connect(p.addr);
        for (i, method) in ["POST", "GET"].into_iter().enumerate() {
            let id = 2 * i as u32 + 1;
            open_h2_stream(&mut c, id, method);
            wait_until("the stream counted as open", || {
                gauge(admin, "sse_streams_open") == 1 && in_flight(admin) == 1
            });
            // RST_STREAM(CANCEL) on that stream alone: the connection stays open.
            assert!(c.send(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes())));
            // The backend writes nothing more: only mcplb closing its connection ends its wait.
            let (m, _) = b
                .closed
                .recv_timeout(Duration::from_secs(20))
                .unwrap_or_else(|_| panic!("{driver} {method}: upstream not closed on reset"));
            assert_eq!(m, method, "{driver}");
            wait_until("the gauges back at zero", || {
                let s = stats(admin);
                s["gauges"]["sse_streams_open"] == 0
                    && s["gauges"]["upstream_busy"] == 0
                    && in_flight(admin) == 0
            });
        }
        // The same connection serves a next stream.
        open_h2_stream(&mut c, 5, "POST");
        assert!(!c.closed, "{driver}");
    }
}
