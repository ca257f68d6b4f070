//! A raw HTTP/2 client written frame by frame (h2c with prior knowledge), for the cases a
//! well-behaved client library will not produce: floods, resets at chosen moments.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;
pub const CANCEL: u32 = 0x8;

/// One frame: `kind`, `flags`, stream id, payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), first byte's high bits `high`.
fn hpack_int(out: &mut Vec<u8>, high: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A header block of literal fields without indexing and without Huffman coding.
pub fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, value) in fields {
        b.push(0x00);
        hpack_int(&mut b, 0, 7, name.len());
        b.extend_from_slice(name.as_bytes());
        hpack_int(&mut b, 0, 7, value.len());
        b.extend_from_slice(value.as_bytes());
    }
    b
}

/// The pseudo-headers of a request to `path`, then `extra`.
pub fn request_block(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", method),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
    ];
    fields.extend_from_slice(extra);
    header_block(&fields)
}

/// HEADERS and DATA of a JSON-RPC POST to /mcp on stream `id`.
pub fn post_frames(id: u32, body: &str) -> Vec<u8> {
    let len = body.len().to_string();
    let block = request_block(
        "POST",
        "/mcp",
        &[
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
            ("content-length", &len),
        ],
    );
    let mut f = frame(HEADERS, END_HEADERS, id, &block);
    f.extend_from_slice(&frame(DATA, END_STREAM, id, body.as_bytes()));
    f
}

/// A frame as read: kind, flags, stream id, payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A connection that has sent the preface and an empty SETTINGS frame.
pub struct RawH2<S: Read + Write = TcpStream> {
    pub s: S,
    buf: Vec<u8>,
    /// The server closed or reset the connection (not a read timeout).
    pub closed: bool,
}

impl RawH2 {
    pub fn connect(addr: SocketAddr) -> RawH2 {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        RawH2::over(s)
    }
}

impl<S: Read + Write> RawH2<S> {
    /// Speaks HTTP/2 over `s` (a TLS stream that chose h2, say).
    pub fn over(s: S) -> RawH2<S> {
        let mut c = RawH2 {
            s,
            buf: Vec::new(),
            closed: false,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&frame(SETTINGS, 0, 0, &[]));
        c.send(&hello);
        c
    }

    /// Writes `bytes`; false when the server has closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> bool {
        self.s.write_all(bytes).is_ok()
    }

    /// The next frame, or `None` at EOF, a reset, or after the 10 s read timeout.
    pub fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let mut b = [0u8; 16384];
            match self.s.read(&mut b) {
                Ok(n) if n > 0 => self.buf.extend_from_slice(&b[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None
                }
                _ => {
                    self.closed = true;
                    return None;
                }
            }
        }
    }

    /// Reads frames until the connection ends; returns the GOAWAY error code if one came,
    /// and whether the connection then ended (EOF or reset, not the read timeout).
    pub fn goaway_then_close(&mut self) -> (Option<u32>, bool) {
        let mut code = None;
        loop {
            match self.next_frame() {
                Some(f) if f.kind == GOAWAY && f.payload.len() >= 8 => {
                    code = Some(u32::from_be_bytes([
                        f.payload[4],
                        f.payload[5],
                        f.payload[6],
                        f.payload[7],
                    ]));
                }
                Some(_) => {}
                None => return (code, self.closed),
            }
        }
    }
}
