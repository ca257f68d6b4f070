//! Small HTTP/1.1 helpers shared by the mock backend and the load generator:
//! chunked body decoding, header look-up and owned-buffer I/O on monoio
//! streams.

use std::io;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, CancelableAsyncWriteRent,
};
use monoio::net::TcpStream;

/// Outcome of decoding a chunked body from the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunked {
    /// The body is complete; the value is the number of input bytes consumed
    /// (chunks, last chunk and trailers).
    Done(usize),
    /// More input is needed.
    Partial,
    /// The input is not valid chunked encoding.
    Invalid,
}

/// Decodes a `Transfer-Encoding: chunked` body from `input` into `out`.
///
/// `out` is cleared first; on `Partial` its content is unspecified. Chunk
/// extensions are ignored, trailers are skipped.
pub fn decode_chunked(input: &[u8], out: &mut Vec<u8>) -> Chunked {
    out.clear();
    let mut pos = 0usize;
    loop {
        let Some(line_end) = find_crlf(&input[pos..]) else {
            return if input.len() - pos > 1024 {
                Chunked::Invalid
            } else {
                Chunked::Partial
            };
        };
        let line = &input[pos..pos + line_end];
        let size_part = line.split(|&b| b == b';').next().unwrap_or(line);
        let Some(size) = parse_hex(trim_ascii(size_part)) else {
            return Chunked::Invalid;
        };
        pos += line_end + 2;
        if size == 0 {
            // Trailers: lines until an empty one.
            loop {
                let Some(end) = find_crlf(&input[pos..]) else {
                    return Chunked::Partial;
                };
                pos += end + 2;
                if end == 0 {
                    return Chunked::Done(pos);
                }
            }
        }
        let Some(data_end) = pos.checked_add(size) else {
            return Chunked::Invalid;
        };
        if input.len() < data_end + 2 {
            return Chunked::Partial;
        }
        if &input[data_end..data_end + 2] != b"\r\n" {
            return Chunked::Invalid;
        }
        out.extend_from_slice(&input[pos..data_end]);
        pos = data_end + 2;
    }
}

fn find_crlf(b: &[u8]) -> Option<usize> {
    b.windows(2).position(|w| w == b"\r\n")
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    &b[start..end.max(start)]
}

fn parse_hex(b: &[u8]) -> Option<usize> {
    if b.is_empty() || b.len() > 15 {
        return None;
    }
    let mut n = 0usize;
    for &c in b {
        let d = (c as char).to_digit(16)?;
        n = n * 16 + d as usize;
    }
    Some(n)
}

/// Appends one chunk of a chunked body (`size CRLF data CRLF`) to `out`.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The last chunk that ends a chunked body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Finds a header value by case-insensitive name.
pub fn header<'a>(headers: &'a [httparse::Header<'_>], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
}

/// True when the comma-separated header value contains `token`
/// (case-insensitive, ignoring parameters).
pub fn has_token(value: &[u8], token: &str) -> bool {
    value.split(|&b| b == b',').any(|part| {
        let part = part.split(|&b| b == b';').next().unwrap_or(part);
        trim_ascii(part).eq_ignore_ascii_case(token.as_bytes())
    })
}

/// Reads more bytes into the spare capacity of `buf` (growing it to keep at
/// least `min_spare` bytes free). Returns the buffer and the number of bytes
/// read (0 = end of stream). With `cancel`, the read ends when its canceller
/// fires; without, it costs no canceller bookkeeping (a hash-set insert and
/// remove per operation).
pub async fn read_more(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    min_spare: usize,
    cancel: Option<&CancelHandle>,
) -> (io::Result<usize>, Vec<u8>) {
    if buf.capacity() - buf.len() < min_spare {
        buf.reserve(min_spare);
    }
    let len = buf.len();
    let cap = buf.capacity();
    let slice = buf.slice_mut(len..cap);
    let (res, slice) = match cancel {
        Some(c) => stream.cancelable_read(slice, c.clone()).await,
        None => stream.read(slice).await,
    };
    (res, slice.into_inner())
}

/// Writes all of `buf` to the stream; returns the buffer for reuse. `cancel`
/// as for [`read_more`].
pub async fn write_all(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    cancel: Option<&CancelHandle>,
) -> (io::Result<()>, Vec<u8>) {
    let total = buf.len();
    let mut done = 0usize;
    let mut buf = buf;
    while done < total {
        let slice = buf.slice(done..total);
        let (res, slice) = match cancel {
            Some(c) => stream.cancelable_write(slice, c.clone()).await,
            None => stream.write(slice).await,
        };
        buf = slice.into_inner();
        match res {
            Ok(0) => return (Err(io::ErrorKind::WriteZero.into()), buf),
            Ok(n) => done += n,
            Err(e) => return (Err(e), buf),
        }
    }
    (Ok(()), buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_roundtrip() {
        let mut out = Vec::new();
        let input = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        assert_eq!(
            decode_chunked(input, &mut out),
            Chunked::Done(input.len() - 4)
        );
        assert_eq!(out, b"hello world");
        assert_eq!(decode_chunked(b"5\r\nhel", &mut out), Chunked::Partial);
        assert_eq!(decode_chunked(b"zz\r\n", &mut out), Chunked::Invalid);
        assert_eq!(decode_chunked(b"2\r\nabcd\r\n", &mut out), Chunked::Invalid);
        let mut enc = Vec::new();
        push_chunk(&mut enc, b"abc");
        enc.extend_from_slice(LAST_CHUNK);
        assert_eq!(decode_chunked(&enc, &mut out), Chunked::Done(enc.len()));
        assert_eq!(out, b"abc");
    }

    #[test]
    fn tokens() {
        assert!(has_token(
            b"application/json, text/event-stream",
            "text/event-stream"
        ));
        assert!(!has_token(b"application/json", "text/event-stream"));
        assert!(has_token(b"keep-alive, Close", "close"));
    }
}
