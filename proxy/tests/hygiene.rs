//! HTTP hygiene of a proxy, through a real `mcplb` (issue 14): hop-by-hop headers (the fixed
//! ones and those `Connection` names) never cross, the client's address reaches backends
//! (`X-Forwarded-For`/`-Proto` or `Forwarded`) and is believed only from trusted proxies (and
//! then used by limits, hashing and the access log), the PROXY protocol from a trusted
//! balancer, transfer codings other than a lone `chunked` refused, slow bodies bounded by
//! `body_timeout`, the per-address connection cap, and honest `bad_request` counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A backend that records every request head it receives and answers each with a small
/// JSON-RPC result, adding `extra` (header lines, each ending in CRLF) to its answers.
struct RecordingBackend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingBackend {
    fn start(extra: &'static str) -> Self {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                let seen = seen.clone();
                std::thread::spawn(move || serve_recorded(s, &seen, extra));
            }
        });
        RecordingBackend { addr, heads }
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The last request head received (waits up to 10 s for one).
    fn last_head(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(h) = self.heads.lock().unwrap().last() {
                return h.clone();
            }
            assert!(Instant::now() < deadline, "the backend received nothing");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn clear(&self) {
        self.heads.lock().unwrap().clear();
    }
}

fn serve_recorded(mut s: TcpStream, seen: &Mutex<Vec<String>>, extra: &str) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_len]).into_owned();
        let body_len: usize = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .unwrap_or(0);
        while buf.len() < head_len + body_len {
            match s.read(&mut tmp) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        seen.lock().unwrap().push(head);
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
            body.len()
        );
        if s.write_all(answer.as_bytes()).is_err() || s.write_all(body).is_err() {
            return;
        }
    }
}

/// `[proxy]` lines `extra` (listen and workers are set), one group at `/mcp` over `backend`,
/// health checks off (a recording backend answers anything, but keeps the heads clean).
fn config(backend: &str, extra: &str) -> String {
    format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\n{extra}\n\n[[servers]]\nname = \"t\"\n\
         path = \"/mcp\"\nbackends = [\"{backend}\"]\n[servers.health]\nenabled = false\n"
    )
}

/// The value of header `name` in a recorded head (names compared case-insensitively); every
/// line of it joined with ", ".
fn header_in(head: &str, name: &str) -> Option<String> {
    let values: Vec<&str> = head
        .lines()
        .filter_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
        .collect();
    (!values.is_empty()).then(|| values.join(", "))
}

fn ping_body() -> String {
    rpc(1, "ping", json!({})).to_string()
}

/// POSTs a ping with extra headers on a new connection.
fn ping_with(addr: SocketAddr, headers: &[(&str, &str)]) -> mcplb::demo::Response {
    let mut c = HttpClient::connect(addr).unwrap();
    let mut h = vec![
        ("content-type", "application/json"),
        ("accept", "application/json, text/event-stream"),
    ];
    h.extend_from_slice(headers);
    c.request("POST", "/mcp", &h, ping_body().as_bytes())
        .unwrap()
}

/// Sends `bytes` on a new connection from 127.0.0.1 and reads until the server closes it (up
/// to 10 s).
fn exchange_raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

fn read_to_close(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A ping request with `connection: close` and the given extra header lines.
fn raw_ping(extra: &str) -> Vec<u8> {
    let body = ping_body();
    format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nconnection: close\r\n{extra}\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn stats(p: &Proxy) -> serde_json::Value {
    HttpClient::connect(p.admin.unwrap())
        .unwrap()
        .request("GET", "/stats", &[], b"")
        .unwrap()
        .json()
        .unwrap()
}

/// Waits for the counter `name` to reach `want` (statistics are merged once a second).
fn wait_counter(p: &Proxy, name: &str, want: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    wait_until(&format!("{name} = {want}"), || {
        last = stats(p)["counters"].clone();
        last[name] == want
    });
    last
}

#[test]
fn hop_by_hop_headers_never_cross() {
    let b = RecordingBackend::start(
        "connection: keep-alive, X-Backend-Secret\r\nx-backend-secret: b\r\n\
         proxy-authenticate: Basic realm=\"up\"\r\nx-backend-kept: yes\r\n",
    );
    for driver in DRIVERS {
        b.clear();
        let p = start_proxy(&config(&b.url(), ""), driver);
        let r = ping_with(
            p.addr,
            &[
                ("connection", "keep-alive, X-Secret,x-other-secret"),
                ("x-secret", "s"),
                ("X-Other-Secret", "o"),
                ("proxy-authorization", "Basic dXNlcjpwYXNz"),
                ("proxy-connection", "keep-alive"),
                ("x-kept", "yes"),
            ],
        );
        assert_eq!(r.status, 200, "{driver}");
        let head = b.last_head().to_ascii_lowercase();
        for gone in [
            "x-secret",
            "x-other-secret",
            "proxy-authorization",
            "proxy-connection",
        ] {
            assert_eq!(
                header_in(&head, gone),
                None,
                "{driver}: {gone} forwarded:\n{head}"
            );
        }
        assert_eq!(
            header_in(&head, "x-kept").as_deref(),
            Some("yes"),
            "{driver}"
        );
        // The answer: what the backend's Connection names stays on its hop.
        assert_eq!(
            r.header("x-backend-secret"),
            None,
            "{driver}: {:?}",
            r.headers
        );
        assert_eq!(r.header("proxy-authenticate"), None, "{driver}");
        assert_eq!(r.header("x-backend-kept"), Some("yes"), "{driver}");
    }
}

#[test]
fn the_client_address_reaches_the_backend_as_configured() {
    let b = RecordingBackend::start("");
    // append (the default): the client's own list, then the peer mcplb saw.
    let p = start_proxy(&config(&b.url(), ""), "auto");
    ping_with(
        p.addr,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-proto", "https"),
        ],
    );
    let head = b.last_head();
    assert_eq!(
        header_in(&head, "x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1"),
        "{head}"
    );
    // The scheme is the one the client used: an untrusted client's claim is replaced.
    assert_eq!(
        header_in(&head, "x-forwarded-proto").as_deref(),
        Some("http")
    );
    // Without a list of its own: the peer alone.
    ping_with(p.addr, &[]);
    assert_eq!(
        header_in(&b.last_head(), "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    drop(p);

    // replace: the client's list never reaches the backend.
    let p = start_proxy(&config(&b.url(), "forwarded = \"replace\""), "auto");
    ping_with(
        p.addr,
        &[
            ("x-forwarded-for", "203.0.113.9"),
            ("forwarded", "for=203.0.113.9"),
        ],
    );
    let head = b.last_head();
    assert_eq!(
        header_in(&head, "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(header_in(&head, "forwarded"), None, "{head}");
    drop(p);

    // off: nothing added, nothing removed.
    let p = start_proxy(&config(&b.url(), "forwarded = \"off\""), "auto");
    ping_with(p.addr, &[("x-forwarded-for", "203.0.113.9")]);
    let head = b.last_head();
    assert_eq!(
        header_in(&head, "x-forwarded-for").as_deref(),
        Some("203.0.113.9")
    );
    assert_eq!(header_in(&head, "x-forwarded-proto"), None);
    drop(p);

    // Forwarded (RFC 7239), appended to the client's elements.
    let p = start_proxy(
        &config(&b.url(), "forwarded_header = \"forwarded\""),
        "auto",
    );
    ping_with(p.addr, &[("forwarded", "for=198.51.100.1;proto=https")]);
    let head = b.last_head();
    assert_eq!(
        header_in(&head, "forwarded").as_deref(),
        Some("for=198.51.100.1;proto=https, for=127.0.0.1;proto=http"),
        "{head}"
    );
    assert_eq!(header_in(&head, "x-forwarded-for"), None);
    drop(p);

    // A client naming X-Forwarded-For in Connection drops its own list, never mcplb's entry.
    let p = start_proxy(&config(&b.url(), ""), "auto");
    ping_with(
        p.addr,
        &[
            ("connection", "x-forwarded-for"),
            ("x-forwarded-for", "203.0.113.9"),
        ],
    );
    assert_eq!(
        header_in(&b.last_head(), "x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
}

/// Reads the access log at `path` until it holds `n` lines (up to 10 s).
fn access_log_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_trusted_proxy_names_the_client_for_limits_hashing_and_the_log() {
    let b = RecordingBackend::start("");
    let log = std::env::temp_dir().join(format!("mcplb-hygiene-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    // 127.0.0.1 (the test) is the trusted balancer in front; 2 requests per client address.
    let cfg = format!(
        "{}[[limits]]\nkey = \"client-ip\"\nrate = 0.01\nburst = 2\n",
        config(
            &b.url(),
            &format!(
                "trusted_proxies = [\"127.0.0.1\", \"10.0.0.0/8\"]\nforwarded = \"replace\"\n\
                 access_log = \"{}\"",
                log.display()
            )
        )
    );
    let p = start_proxy(&cfg, "auto");
    let client = |list: &str| ping_with(p.addr, &[("x-forwarded-for", list)]).status;
    assert_eq!(client("198.51.100.1"), 200);
    // Replace sends the client's address as mcplb believes it.
    assert_eq!(
        header_in(&b.last_head(), "x-forwarded-for").as_deref(),
        Some("198.51.100.1")
    );
    // Entries left of the right-most untrusted one are the client's own claims: ignored.
    assert_eq!(client("6.6.6.6, 198.51.100.1, 10.1.2.3"), 200);
    assert_eq!(
        header_in(&b.last_head(), "x-forwarded-for").as_deref(),
        Some("198.51.100.1")
    );
    // The third request of 198.51.100.1 is over its limit, however its list starts ...
    assert_eq!(client("7.7.7.7, 198.51.100.1"), 429);
    // ... and another client behind the same balancer is not.
    assert_eq!(client("198.51.100.2"), 200);
    // The access log names the client, and the connection's peer.
    let lines = access_log_lines(&log, 4);
    let _ = std::fs::remove_file(&log);
    assert_eq!(lines.len(), 4, "{lines:?}");
    // Each worker writes its own lines: sorted, not in request order.
    let mut clients: Vec<&str> = lines
        .iter()
        .map(|l| l["client"].as_str().unwrap())
        .collect();
    clients.sort_unstable();
    assert_eq!(
        clients,
        [
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.1",
            "198.51.100.2"
        ]
    );
    for l in &lines {
        assert!(l["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
    }
    drop(p);

    // Not trusted: its list is not believed (one bucket for 127.0.0.1, whatever it claims).
    let cfg = format!(
        "{}[[limits]]\nkey = \"client-ip\"\nrate = 0.01\nburst = 2\n",
        config(&b.url(), "")
    );
    let p = start_proxy(&cfg, "auto");
    let client = |list: &str| ping_with(p.addr, &[("x-forwarded-for", list)]).status;
    assert_eq!(client("198.51.100.1"), 200);
    assert_eq!(client("198.51.100.2"), 200);
    assert_eq!(client("198.51.100.3"), 429);
}

#[test]
fn hashing_on_client_ip_follows_a_trusted_proxys_list() {
    let backends: Vec<MockServer> = (0..4)
        .map(|i| {
            mock_with(MockConfig {
                name: format!("b{i}"),
                stateless: true,
                ..Default::default()
            })
        })
        .collect();
    let urls: Vec<String> = backends
        .iter()
        .map(|m| format!("\"{}\"", m.url()))
        .collect();
    let cfg = format!(
        "[proxy]\nlisten = \"127.0.0.1:0\"\nworkers = 2\ntrusted_proxies = [\"127.0.0.1\"]\n\n\
         [[servers]]\nname = \"t\"\npath = \"/mcp\"\nbackends = [{}]\nbalance = \"hash\"\n\
         hash_key = \"client-ip\"\n[servers.health]\nenabled = false\n",
        urls.join(", ")
    );
    let p = start_proxy(&cfg, "auto");
    let who = |ip: &str| {
        let mut c = HttpClient::connect(p.addr).unwrap();
        let r = stateless_tool_call(&mut c, "whoami", &[("x-forwarded-for", ip)]);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        r.json().unwrap()["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    // Each client lands on one backend every time (fresh connections, either core);
    // different clients spread.
    let mut seen = std::collections::HashSet::new();
    for i in 0..16 {
        let ip = format!("198.51.100.{i}");
        let first = who(&ip);
        assert!(!first.is_empty());
        for _ in 0..3 {
            assert_eq!(who(&ip), first, "{ip}");
        }
        seen.insert(first);
    }
    assert!(seen.len() > 1, "16 clients all on {seen:?}");
}

/// A mock backend that answers requests without a session.
fn stateless_mock() -> MockServer {
    mock_with(MockConfig {
        name: "alpha".into(),
        stateless: true,
        ..Default::default()
    })
}

/// A PROXY v2 header for a TCP connection from `src` to `dst`.
fn proxy_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n\x21".to_vec();
    let mut body = Vec::new();
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11);
            body.extend(s.ip().octets());
            body.extend(d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            h.push(0x21);
            body.extend(s.ip().octets());
            body.extend(d.ip().octets());
        }
        _ => panic!("one family"),
    }
    body.extend(src.port().to_be_bytes());
    body.extend(dst.port().to_be_bytes());
    h.extend((body.len() as u16).to_be_bytes());
    h.extend(body);
    h
}

/// Connects to `to` from the local address `from` (127.0.0.x).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

#[test]
fn the_proxy_protocol_is_read_from_trusted_balancers_only() {
    let b = RecordingBackend::start("");
    let log = std::env::temp_dir().join(format!("mcplb-hygiene-pp-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    for driver in DRIVERS {
        b.clear();
        // The balancer is 127.0.0.2; 127.0.0.1 is an ordinary client.
        let cfg = format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            config(
                &b.url(),
                &format!(
                    "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.2\"]\n\
                     max_connections_per_ip = 2\naccess_log = \"{}\"",
                    log.display()
                )
            )
        );
        let p = start_proxy(&cfg, driver);
        // v1, the request in the same segment.
        let mut s = connect_from("127.0.0.2", p.addr);
        let mut bytes = b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 443\r\n".to_vec();
        bytes.extend(raw_ping(""));
        s.write_all(&bytes).unwrap();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 200"), "{driver}: {answer}");
        assert_eq!(
            header_in(&b.last_head(), "x-forwarded-for").as_deref(),
            Some("198.51.100.7"),
            "{driver}"
        );
        // v2 with an IPv6 client, the header and the request in separate writes.
        let mut s = connect_from("127.0.0.2", p.addr);
        let src: SocketAddr = "[2001:db8::7]:4711".parse().unwrap();
        let dst: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        s.write_all(&proxy_v2(src, dst)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.write_all(&raw_ping("")).unwrap();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 200"), "{driver}: {answer}");
        assert_eq!(
            header_in(&b.last_head(), "x-forwarded-for").as_deref(),
            Some("2001:db8::7"),
            "{driver}"
        );
        // The per-address cap (2 here) applies to the client the header names, not to the
        // balancer: a third connection of 198.51.100.8 is closed, another client's is not.
        let held: Vec<TcpStream> = (0..2)
            .map(|i| {
                let mut s = connect_from("127.0.0.2", p.addr);
                let line = format!("PROXY TCP4 198.51.100.8 10.0.0.1 {} 443\r\n", 4700 + i);
                s.write_all(line.as_bytes()).unwrap();
                s
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let mut again = connect_from("127.0.0.2", p.addr);
        again
            .write_all(b"PROXY TCP4 198.51.100.8 10.0.0.1 4712 443\r\n")
            .unwrap();
        let _ = again.write_all(&raw_ping(""));
        let answer = read_to_close(&mut again);
        assert!(
            answer.is_empty(),
            "{driver}: third connection served: {answer}"
        );
        let mut other = connect_from("127.0.0.2", p.addr);
        other
            .write_all(b"PROXY TCP4 198.51.100.9 10.0.0.1 4711 443\r\n")
            .unwrap();
        other.write_all(&raw_ping("")).unwrap();
        assert!(
            read_to_close(&mut other).starts_with("HTTP/1.1 200"),
            "{driver}"
        );
        drop(held);
        // A trusted balancer without a PROXY header: closed unanswered, counted.
        let mut s = connect_from("127.0.0.2", p.addr);
        s.write_all(&raw_ping("")).unwrap();
        assert_eq!(read_to_close(&mut s), "", "{driver}");
        wait_counter(&p, "proxy_protocol_errors", 1);
        // Anyone else is served as it is, and cannot claim an address with a header.
        let answer = exchange_raw(p.addr, &raw_ping(""));
        assert!(answer.starts_with("HTTP/1.1 200"), "{driver}: {answer}");
        assert_eq!(
            header_in(&b.last_head(), "x-forwarded-for").as_deref(),
            Some("127.0.0.1")
        );
        let mut bytes = b"PROXY TCP4 198.51.100.7 10.0.0.1 4711 443\r\n".to_vec();
        bytes.extend(raw_ping(""));
        let answer = exchange_raw(p.addr, &bytes);
        assert!(answer.starts_with("HTTP/1.1 400"), "{driver}: {answer}");
        // The access log names the PROXY header's clients.
        drop(p);
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::remove_file(&log);
        for want in ["198.51.100.7", "2001:db8::7", "198.51.100.9"] {
            assert!(
                text.contains(&format!("\"client\":\"{want}\"")),
                "{driver}: {want} not in {text}"
            );
        }
    }
}

#[test]
fn transfer_codings_other_than_a_lone_chunked_are_refused() {
    let m = stateless_mock();
    let p = start_proxy(&config_for(&[&m], ""), "auto");
    for (te, status) in [
        ("gzip, chunked", 501),
        ("gzip", 400),
        ("chunked, gzip", 400),
        ("chunked, chunked", 400),
        ("chunked,", 400),
    ] {
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             transfer-encoding: {te}\r\n\r\n0\r\n\r\n"
        );
        let answer = exchange_raw(p.addr, req.as_bytes());
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{te}: {answer}"
        );
        // A JSON-RPC error, and the connection closed (the body cannot be delimited).
        assert!(answer.contains("connection: close"), "{te}: {answer}");
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], -32600, "{te}: {body}");
    }
    // A lone chunked is still decoded.
    let body = ping_body();
    let req = format!(
        "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         accept: application/json, text/event-stream\r\nconnection: close\r\n\
         transfer-encoding: Chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let answer = exchange_raw(p.addr, req.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[test]
fn a_slow_body_is_cut_off_by_body_timeout() {
    let m = stateless_mock();
    for driver in DRIVERS {
        let p = start_proxy(
            &config_for(&[&m], "body_timeout = \"1s\"\nupstream_timeout = \"300s\""),
            driver,
        );
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        // 4 MiB declared, a few bytes sent, then nothing.
        s.write_all(
            b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
              content-length: 4194304\r\n\r\n{\"jsonrpc\"",
        )
        .unwrap();
        let t = Instant::now();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{driver}: {answer}");
        assert!(
            answer.contains("request body timed out"),
            "{driver}: {answer}"
        );
        // Bounded by body_timeout, not upstream_timeout (a bound, not a timing goal).
        assert!(t.elapsed() < Duration::from_secs(15), "{driver}");
    }
}

/// Reads one answer with a `content-length` body from `s`, leaving the connection open.
fn read_one_answer(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if out.len() >= end + 4 + len {
                return String::from_utf8_lossy(&out).into_owned();
            }
        }
        match s.read(&mut tmp) {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(n) => out.extend_from_slice(&tmp[..n]),
        }
    }
}

#[test]
fn a_slow_head_is_cut_off_by_header_timeout_on_new_and_parked_connections() {
    let m = stateless_mock();
    let partial = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n";
    for driver in DRIVERS {
        let p = start_proxy(
            &config_for(
                &[&m],
                "header_timeout = \"1s\"\nupstream_timeout = \"300s\"",
            ),
            driver,
        );
        // A new connection whose head stops half-way.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.write_all(partial).unwrap();
        let t = Instant::now();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{driver}: {answer}");
        assert!(
            answer.contains("request head timed out"),
            "{driver}: {answer}"
        );
        // Bounded by header_timeout, not upstream_timeout (a bound, not a timing goal).
        assert!(t.elapsed() < Duration::from_secs(15), "{driver}");
        // A keep-alive connection, answered, then idle (parked after its first answer), whose
        // next head stops half-way: its first bytes wake it, the rest never come.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let body = ping_body();
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
             accept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).unwrap();
        let first = read_one_answer(&mut s);
        assert!(first.starts_with("HTTP/1.1 200"), "{driver}: {first}");
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(partial).unwrap();
        let t = Instant::now();
        let answer = read_to_close(&mut s);
        assert!(answer.starts_with("HTTP/1.1 408 "), "{driver}: {answer}");
        assert!(t.elapsed() < Duration::from_secs(15), "{driver}");
    }
}

#[test]
fn one_address_holds_at_most_256_connections_by_default() {
    let m = stateless_mock();
    let p = start_proxy(
        &format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&m], "")
        ),
        "auto",
    );
    let held: Vec<HttpClient> = (0..256)
        .map(|_| HttpClient::connect(p.addr).unwrap())
        .collect();
    // Every one of them is served...
    wait_counter(&p, "connections_accepted", 256);
    // ... and the next ones from the same address are closed at once.
    for _ in 0..4 {
        let answer = exchange_raw(p.addr, &raw_ping(""));
        assert_eq!(answer, "", "a 257th connection was served");
    }
    wait_counter(&p, "connections_refused", 4);
    drop(held);
    drop(p);

    // A trusted proxy is exempt: it carries many clients' connections.
    let p = start_proxy(
        &format!(
            "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
            config_for(&[&m], "trusted_proxies = [\"127.0.0.0/8\"]")
        ),
        "auto",
    );
    let held: Vec<HttpClient> = (0..300)
        .map(|_| HttpClient::connect(p.addr).unwrap())
        .collect();
    let answer = exchange_raw(p.addr, &raw_ping(""));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let c = wait_counter(&p, "connections_accepted", 301);
    assert_eq!(c["connections_refused"], 0);
    drop(held);
}

#[test]
fn closing_an_idle_connection_is_not_a_bad_request() {
    let m = stateless_mock();
    for driver in DRIVERS {
        let log = std::env::temp_dir().join(format!(
            "mcplb-hygiene-idle-{driver}-{}.log",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&log);
        let p = start_proxy(
            &format!(
                "{}[admin]\nlisten = \"127.0.0.1:0\"\n",
                config_for(&[&m], &format!("access_log = \"{}\"", log.display()))
            ),
            driver,
        );
        // A keep-alive client: two requests, then it closes the idle connection, before and
        // after the connection is parked (idle past the longest hot wait, 250 ms).
        for pause in [Duration::ZERO, Duration::from_millis(400)] {
            let mut c = HttpClient::connect(p.addr).unwrap();
            for _ in 0..2 {
                let body = ping_body();
                let r = c
                    .request(
                        "POST",
                        "/mcp",
                        &[("content-type", "application/json")],
                        body.as_bytes(),
                    )
                    .unwrap();
                assert_eq!(r.status, 200);
            }
            std::thread::sleep(pause);
            drop(c);
        }
        // A connection that never sends a byte.
        drop(TcpStream::connect(p.addr).unwrap());
        // Four requests, nothing else: no bad_request, no line with status 0.
        let c = wait_counter(&p, "requests", 4);
        std::thread::sleep(Duration::from_millis(1500));
        let c2 = stats(&p)["counters"].clone();
        assert_eq!(c["bad_request"], 0, "{driver}: {c}");
        assert_eq!(c2["bad_request"], 0, "{driver}: {c2}");
        assert_eq!(c2["requests"], 4, "{driver}: {c2}");
        let lines = access_log_lines(&log, 4);
        assert_eq!(lines.len(), 4, "{driver}: {lines:?}");
        assert!(
            lines.iter().all(|l| l["status"] == 200),
            "{driver}: {lines:?}"
        );
        // A client that leaves half-way through a head is an incomplete request: counted,
        // and logged as 499.
        let mut s = TcpStream::connect(p.addr).unwrap();
        s.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        drop(s);
        wait_counter(&p, "bad_request", 1);
        let lines = access_log_lines(&log, 5);
        let _ = std::fs::remove_file(&log);
        assert_eq!(lines.len(), 5, "{driver}: {lines:?}");
        assert_eq!(lines[4]["status"], 499, "{driver}: {lines:?}");
    }
}

#[test]
fn a_declared_body_length_is_not_reserved_up_front() {
    let m = stateless_mock();
    let p = start_proxy(&config_for(&[&m], "body_timeout = \"60s\""), "auto");
    let pid = p.child.id();
    // Warm up: a request served, so the baseline holds the worker's buffers.
    assert!(exchange_raw(p.addr, &raw_ping("")).starts_with("HTTP/1.1 200"));
    let before = rss_kib(pid);
    // 100 clients each declare a 4 MiB body, send 1 KiB of it, and stall. Reserving the
    // declared length cost about 0.9 MiB of RSS per connection (measured: 175 MiB for 200);
    // growing with the bytes that arrive, a few KiB.
    let stalled: Vec<TcpStream> = (0..100)
        .map(|_| {
            let mut s = TcpStream::connect(p.addr).unwrap();
            let mut req = b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                            content-length: 4194304\r\n\r\n"
                .to_vec();
            req.extend([b' '; 1024]);
            s.write_all(&req).unwrap();
            s
        })
        .collect();
    // Every connection's body is being read (the head was parsed: its 1 KiB arrived).
    std::thread::sleep(Duration::from_millis(1500));
    let after = rss_kib(pid);
    drop(stalled);
    let grown = after.saturating_sub(before);
    assert!(
        grown < 40 * 1024,
        "RSS grew {grown} KiB with 100 stalled 4 MiB bodies ({before} -> {after} KiB)"
    );
}
