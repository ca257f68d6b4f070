//! An incremental SSE client over a raw socket: the response head, then events as they
//! arrive (de-chunked), for tests of event streams that stay open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use mcplb::http::ChunkedDecoder;
use protocol::{SseEvent, SseParser};
use serde_json::Value;

/// Parsed headers as `(lower-cased name, value)` pairs.
pub fn header_pairs(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).to_string(),
            )
        })
        .collect()
}

/// An open event stream (or the answer that refused to open one: see `status`).
pub struct SseClient {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
    pub chunked: Option<ChunkedDecoder>,
    pub parser: SseParser,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Messages skipped by [`SseClient::response`].
    pub others: Vec<Value>,
}

impl SseClient {
    /// Sends `GET path` with `headers` and reads the response head (the body stays unread).
    pub fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> SseClient {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let head_len = loop {
            if let Some(n) = mcplb::http::head_len(&buf) {
                break n;
            }
            assert!(Instant::now() < deadline, "no response head");
            let mut tmp = [0u8; 4096];
            match stream.read(&mut tmp) {
                Ok(0) => panic!("closed before a head"),
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => {}
            }
        };
        let mut storage = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut storage);
        resp.parse(&buf[..head_len]).unwrap();
        let status = resp.code.unwrap();
        let headers = header_pairs(resp.headers);
        buf.drain(..head_len);
        let chunked = headers
            .iter()
            .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
            .then(ChunkedDecoder::new);
        SseClient {
            stream,
            buf,
            chunked,
            parser: SseParser::new(),
            status,
            headers,
            others: Vec::new(),
        }
    }

    /// The response with this id; other messages read meanwhile go to `others`.
    pub fn response(&mut self, id: impl Into<Value>) -> Value {
        let id = id.into();
        loop {
            let m = self.message(WAIT).expect("a message");
            if m.get("id") == Some(&id) && m.get("method").is_none() {
                return m;
            }
            self.others.push(m);
        }
    }

    /// The next message that is not a `notifications/message` log.
    pub fn non_log(&mut self) -> Value {
        loop {
            let m = self.message(WAIT).expect("a message");
            if m["method"] != "notifications/message" {
                return m;
            }
            self.others.push(m);
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next event within `timeout`; None on timeout or end of stream.
    pub fn next(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(ev) = self.parser.next_event() {
                return Some(ev);
            }
            if !self.buf.is_empty() {
                let data = std::mem::take(&mut self.buf);
                match &mut self.chunked {
                    Some(dec) => {
                        let mut out = Vec::new();
                        let used = dec.feed(&data, |d| out.extend_from_slice(d)).unwrap();
                        self.buf.extend_from_slice(&data[used..]);
                        self.parser.push(&out);
                        if dec.is_done() {
                            return self.parser.next_event();
                        }
                    }
                    None => self.parser.push(&data),
                }
                continue;
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(_) => {}
            }
        }
    }

    /// The next `message` event's JSON.
    pub fn message(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = self.next(left)?;
            if ev.event.as_deref().unwrap_or("message") == "message" && !ev.data.is_empty() {
                return Some(serde_json::from_str(&ev.data).unwrap());
            }
        }
    }

    /// Whether the server closed the stream within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => {}
            }
        }
        false
    }
}

/// How long a test waits for a message it expects.
pub const WAIT: Duration = Duration::from_secs(10);
