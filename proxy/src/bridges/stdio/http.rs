//! The server side of HTTP/1.1 that the stdio bridge needs, over a blocking `TcpStream`:
//! read one request (Content-Length or chunked body, capped), write a whole response or a
//! chunked one for `text/event-stream`. Only mcplb's workers and tests talk to it, on loopback.

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Largest request head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// One parsed request with its body.
pub(super) struct Request {
    pub(super) method: String,
    pub(super) path: String,
    headers: Vec<(String, String)>,
    pub(super) body: Vec<u8>,
    pub(super) keep_alive: bool,
}

impl Request {
    /// The first value of a header (name compared case-insensitively).
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether the client accepts an SSE answer (a missing `Accept` accepts anything).
    pub(super) fn accepts_sse(&self) -> bool {
        match self.header("accept") {
            None => true,
            Some(a) => {
                let a = a.to_ascii_lowercase();
                a.contains("text/event-stream") || a.contains("*/*")
            }
        }
    }
}

/// Why no request could be read.
pub(super) enum ReadError {
    /// The peer closed the connection between requests.
    Closed,
    /// A socket error.
    Io,
    /// Malformed HTTP.
    Bad(&'static str),
    /// The body is over the limit.
    TooLarge,
}

/// A connection and the bytes read from it but not consumed yet.
pub(super) struct Conn {
    pub(super) stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(super) fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf
                        .extend_from_slice(chunk.get(..n).unwrap_or_default());
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return Err(ReadError::Io),
            }
        }
    }

    /// Reads one request; bodies over `max_body` bytes are refused.
    pub(super) fn read_request(&mut self, max_body: usize) -> Result<Request, ReadError> {
        let (mut req, chunked, length) = loop {
            if !self.buf.is_empty() {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut parsed = httparse::Request::new(&mut headers);
                match parsed.parse(&self.buf) {
                    Ok(httparse::Status::Complete(n)) => {
                        let head = head_of(&parsed)?;
                        self.buf.drain(..n);
                        break head;
                    }
                    Ok(httparse::Status::Partial) if self.buf.len() > MAX_HEAD => {
                        return Err(ReadError::Bad("request head too large"))
                    }
                    Ok(httparse::Status::Partial) => {}
                    Err(_) => return Err(ReadError::Bad("malformed request head")),
                }
            }
            if !self.fill()? {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Bad("connection closed inside a request head")
                });
            }
        };
        if chunked {
            req.body = self.read_chunked(max_body)?;
        } else if let Some(n) = length {
            if n > max_body {
                return Err(ReadError::TooLarge);
            }
            req.body = self.take(n)?;
        }
        Ok(req)
    }

    /// Takes exactly `n` bytes.
    fn take(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if !self.fill()? {
                return Err(ReadError::Bad("connection closed inside a body"));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// One line without its CRLF.
    fn line(&mut self) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf) {
                let mut line: Vec<u8> = self.buf.drain(..=i).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(line);
            }
            if self.buf.len() > 8 * 1024 {
                return Err(ReadError::Bad("chunk header line too long"));
            }
            if !self.fill()? {
                return Err(ReadError::Bad("connection closed inside a chunked body"));
            }
        }
    }

    fn read_chunked(&mut self, max_body: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        loop {
            let line = self.line()?;
            let size_part = line.split(|b| *b == b';').next().unwrap_or_default();
            let size_str = std::str::from_utf8(size_part)
                .map_err(|_| ReadError::Bad("bad chunk size"))?
                .trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| ReadError::Bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while !self.line()?.is_empty() {}
                return Ok(body);
            }
            if body.len().saturating_add(size) > max_body {
                return Err(ReadError::TooLarge);
            }
            let data = self.take(size)?;
            body.extend_from_slice(&data);
            if !self.line()?.is_empty() {
                return Err(ReadError::Bad("chunk data not followed by CRLF"));
            }
        }
    }
}

/// Owned request head, whether the body is chunked, and its Content-Length.
fn head_of(
    parsed: &httparse::Request<'_, '_>,
) -> Result<(Request, bool, Option<usize>), ReadError> {
    let method = parsed.method.unwrap_or_default().to_owned();
    let path = parsed.path.unwrap_or_default().to_owned();
    let http10 = parsed.version == Some(0);
    let mut headers = Vec::with_capacity(parsed.headers.len());
    let mut chunked = false;
    let mut length = None;
    let mut keep_alive = !http10;
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .trim()
                    .parse::<usize>()
                    .map_err(|_| ReadError::Bad("bad Content-Length"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            let v = value.to_ascii_lowercase();
            if v.contains("close") {
                keep_alive = false;
            } else if v.contains("keep-alive") {
                keep_alive = true;
            }
        }
        headers.push((h.name.to_owned(), value));
    }
    Ok((
        Request {
            method,
            path,
            headers,
            body: Vec::new(),
            keep_alive,
        },
        chunked,
        length,
    ))
}

fn head(status: u16, headers: &[(&str, &str)], keep_alive: bool) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", crate::http::reason(status)).into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out
}

/// Writes a whole response with a Content-Length.
pub(super) fn write_full(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = head(status, headers, keep_alive);
    out.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    w.write_all(&out)?;
    w.flush()
}

/// Writes the head of a chunked response.
pub(super) fn write_chunked_head(
    w: &mut impl Write,
    status: u16,
    headers: &[(&str, &str)],
    keep_alive: bool,
) -> io::Result<()> {
    let mut out = head(status, headers, keep_alive);
    out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
    w.write_all(&out)?;
    w.flush()
}

/// Writes one chunk (never an empty one: that would end the body).
pub(super) fn write_chunk(w: &mut impl Write, data: &[u8]) -> io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    w.write_all(&out)?;
    w.flush()
}

/// Ends a chunked body.
pub(super) fn write_last_chunk(w: &mut impl Write) -> io::Result<()> {
    w.write_all(b"0\r\n\r\n")?;
    w.flush()
}
