//! HTTP/1.1 pieces of the data path that need no socket: finding the end of a head, the
//! chunked-transfer state machine (used both to decode request bodies and to find the end of a
//! chunked response that is forwarded byte for byte), hop-by-hop header rules, and the
//! JSON-RPC error answers mcplb writes itself; and [`client`], the one blocking HTTP/1.1
//! client of everything off the data path.

use std::io::Write as _;

pub mod client;

/// Returns the length of the head (through the blank line) if `buf` holds a complete one.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    // One searcher per thread: `memmem::find` builds one per call (about 300 instructions a
    // call in callgrind, two calls per request), where a search of a 300-byte head is 100.
    thread_local! {
        static BLANK_LINE: memchr::memmem::Finder<'static> = memchr::memmem::Finder::new(b"\r\n\r\n");
    }
    if buf.len() < 4 {
        return None;
    }
    BLANK_LINE.with(|f| f.find(buf)).map(|i| i + 4)
}

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1, and the proxy's own
/// `Proxy-Authorization`/`Proxy-Authenticate`, §11.7), plus the ones mcplb rewrites itself
/// (`Host`, framing, the session id). Compared by length first: one or two comparisons per
/// header on the hot path.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 => is(b"te"),
        4 => is(b"host"),
        6 => is(b"expect"),
        7 => is(b"trailer") || is(b"upgrade"),
        10 => is(b"connection") || is(b"keep-alive"),
        14 => is(b"content-length") || is(b"mcp-session-id"),
        16 => is(b"proxy-connection"),
        17 => is(b"transfer-encoding"),
        18 => is(b"proxy-authenticate"),
        19 => is(b"proxy-authorization"),
        _ => false,
    }
}

/// Whether a `Connection` header value names a field that is not already dropped as
/// hop-by-hop (any option other than `close`): such fields describe this hop only and must be
/// removed before forwarding (RFC 9110 §7.6.1).
pub fn connection_names_fields(value: &[u8]) -> bool {
    value.split(|b| *b == b',').any(|t| {
        let t = trim_ows(t);
        !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !is_hop_by_hop(t)
    })
}

/// Whether a comma-separated header value contains `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Trims optional whitespace (space and tab only, RFC 9110 §5.6.3).
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| *b != b' ' && *b != b'\t');
    let end = v.iter().rposition(|b| *b != b' ' && *b != b'\t');
    match (start, end) {
        (Some(s), Some(e)) => v.get(s..=e).unwrap_or_default(),
        _ => &[],
    }
}

/// Whether `t` is a token (RFC 9110 §5.6.2): one or more tchars.
pub fn is_token(t: &[u8]) -> bool {
    !t.is_empty()
        && t.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
}

/// What a message's `Transfer-Encoding` fields (one list, however many lines carry it) say
/// about its body. mcplb decodes only `chunked`, and only alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferCodings {
    /// Codings seen.
    count: u32,
    /// `chunked` was seen.
    chunked: bool,
    /// The last coding seen was `chunked`.
    chunked_last: bool,
    /// A list element was empty, not a token, or `chunked` came with parameters or twice.
    malformed: bool,
}

/// The verdict on a request's `Transfer-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferVerdict {
    /// No `Transfer-Encoding`.
    Absent,
    /// A lone `chunked`: the body is de-chunked.
    Chunked,
    /// `chunked` last, after codings mcplb does not implement (`gzip, chunked`): 501.
    Unsupported,
    /// Not a list of codings, `chunked` twice or with parameters, or `chunked` not last (the
    /// body's length cannot be known, RFC 9112 §6.3): 400.
    Malformed,
}

impl TransferCodings {
    /// Adds the codings of one `Transfer-Encoding` field value.
    pub fn add(&mut self, value: &[u8]) {
        for element in value.split(|b| *b == b',') {
            let (coding, params) = match memchr::memchr(b';', element) {
                Some(i) => (
                    element.get(..i).unwrap_or_default(),
                    element.get(i..).unwrap_or_default(),
                ),
                None => (element, &b""[..]),
            };
            let coding = trim_ows(coding);
            self.count += 1;
            if !is_token(coding) {
                self.malformed = true;
            } else if coding.eq_ignore_ascii_case(b"chunked") {
                // chunked takes no parameters and is applied at most once (RFC 9112 §7).
                self.malformed |= self.chunked || !params.is_empty();
                self.chunked = true;
                self.chunked_last = true;
            } else {
                self.chunked_last = false;
            }
        }
    }

    /// What the codings add up to.
    pub fn verdict(&self) -> TransferVerdict {
        if self.count == 0 {
            TransferVerdict::Absent
        } else if self.malformed || !self.chunked_last {
            TransferVerdict::Malformed
        } else if self.count > 1 {
            TransferVerdict::Unsupported
        } else {
            TransferVerdict::Chunked
        }
    }
}

/// The verdict on the `Transfer-Encoding` field values `values`.
pub fn transfer_verdict<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> TransferVerdict {
    let mut t = TransferCodings::default();
    for v in values {
        t.add(v);
    }
    t.verdict()
}

/// Parsed headers as owned pairs: names lower-cased, values trimmed (the blocking client and
/// the bridges' servers, off the data path).
pub fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).trim().to_string(),
            )
        })
        .collect()
}

/// Parses a `Content-Length` value strictly (digits only).
/// One pass, no overflow checks: 19 digits always fit in a u64 (a check of every digit and
/// then a checked fold cost ~100 instructions for a 3-digit value; it runs twice a request).
pub fn parse_content_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &c in v {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        n = n * 10 + u64::from(d);
    }
    Some(n)
}

/// The last chunk of a chunked body, without trailers.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// An error in chunked framing.
#[derive(Debug, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    FinalLf,
    Done,
}

/// Incremental `Transfer-Encoding: chunked` parser. Feed it bytes as they arrive; it reports
/// the data ranges and where the message ends, carrying its state across reads.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    size: u64,
    digits: u8,
    trailer_bytes: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            trailer_bytes: 0,
        }
    }

    /// True once the last chunk and trailers have been seen.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// True between chunks: before the first chunk or right after a chunk's CRLF, so the body
    /// can end there with [`LAST_CHUNK`].
    pub fn at_chunk_start(&self) -> bool {
        self.state == ChunkState::Size && self.digits == 0
    }

    /// Consumes bytes from `input` up to the end of the body; calls `on_data` with each piece
    /// of chunk data. Returns how many bytes belonged to the body (less than `input.len()` only
    /// when the body ended inside `input`).
    pub fn feed(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Done => return Ok(i),
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.size = self.size * 16 + u64::from(d);
                        i += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = ChunkState::Ext;
                        i += 1;
                    }
                    b'\r' if self.digits > 0 => {
                        self.state = ChunkState::SizeLf;
                        i += 1;
                    }
                    b'\n' if self.digits > 0 => {
                        self.end_size_line();
                        i += 1;
                    }
                    _ => return Err(ChunkError("bad chunk size")),
                },
                ChunkState::Ext => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > 4096 {
                        return Err(ChunkError("chunk extension too long"));
                    }
                    if b == b'\n' {
                        self.end_size_line();
                    } else if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    }
                    i += 1;
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk size"));
                    }
                    self.end_size_line();
                    i += 1;
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    on_data(&input[i..i + take]);
                    i += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                }
                ChunkState::DataCr => {
                    self.state = match b {
                        b'\r' => ChunkState::DataLf,
                        b'\n' => ChunkState::Size,
                        _ => return Err(ChunkError("expected CRLF after chunk data")),
                    };
                    i += 1;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after chunk data"));
                    }
                    self.state = ChunkState::Size;
                    i += 1;
                }
                ChunkState::TrailerStart => {
                    self.state = match b {
                        b'\r' => ChunkState::FinalLf,
                        b'\n' => ChunkState::Done,
                        _ => ChunkState::TrailerLine,
                    };
                    i += 1;
                }
                ChunkState::TrailerLine => {
                    self.trailer_bytes += 1;
                    if self.trailer_bytes > 8192 {
                        return Err(ChunkError("trailers too long"));
                    }
                    if b == b'\n' {
                        self.state = ChunkState::TrailerStart;
                    }
                    i += 1;
                }
                ChunkState::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError("expected LF after last chunk"));
                    }
                    self.state = ChunkState::Done;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        if self.size == 0 {
            self.state = ChunkState::TrailerStart;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

/// Standard reason phrase for the statuses mcplb writes.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// An HTTP answer carrying a JSON-RPC error object, as mcplb writes it.
#[derive(Debug, Clone, Copy)]
pub struct JsonRpcErrorAnswer<'a> {
    /// HTTP status.
    pub status: u16,
    /// The request's raw id bytes when they could be read (echoed byte for byte); `null` else.
    pub id: Option<&'a [u8]>,
    /// JSON-RPC error code.
    pub code: i32,
    /// The error's message (JSON-escaped here).
    pub message: &'a str,
    /// Say `connection: close`.
    pub close: bool,
    /// Extra header lines, each ending in CRLF.
    pub headers: &'a str,
    /// The error's `data` member (raw JSON).
    pub data: Option<&'a str>,
}

/// Writes a complete HTTP response carrying a JSON-RPC error object to `out`. Error answers
/// are off the hot path, so the body is built in a small `Vec`.
pub fn write_jsonrpc_error(out: &mut Vec<u8>, e: &JsonRpcErrorAnswer<'_>) {
    let JsonRpcErrorAnswer {
        status,
        id,
        code,
        message,
        close,
        headers: extra_headers,
        data,
    } = *e;
    let mut body = Vec::with_capacity(96 + message.len());
    body.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    body.extend_from_slice(id.unwrap_or(b"null"));
    let _ = write!(body, ",\"error\":{{\"code\":{code},\"message\":\"");
    for c in message.chars() {
        match c {
            '"' => body.extend_from_slice(b"\\\""),
            '\\' => body.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(body, "\\u{:04x}", c as u32);
            }
            c => {
                let mut b = [0u8; 4];
                body.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    body.push(b'"');
    if let Some(d) = data {
        body.extend_from_slice(b",\"data\":");
        body.extend_from_slice(d.as_bytes());
    }
    body.extend_from_slice(b"}}");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}{}\r\n",
        reason(status),
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    out.extend_from_slice(&body);
}

/// Percent-decodes a query value (`+` is a space).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(chunks: &[&[u8]]) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut used = 0;
        for c in chunks {
            used += d.feed(c, |b| out.extend_from_slice(b))?;
        }
        Ok((out, used, d.is_done()))
    }

    #[test]
    fn chunked_whole_and_split_at_every_byte() {
        let msg = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: y\r\n\r\nNEXT";
        let (data, used, done) = decode_all(&[msg]).unwrap_or_default();
        assert_eq!(data, b"hello world");
        assert!(done);
        assert_eq!(used, msg.len() - 4);
        for cut in 0..msg.len() {
            let (a, b) = msg.split_at(cut);
            let (data, used, done) = decode_all(&[a, b]).unwrap_or_default();
            assert_eq!(data, b"hello world", "cut {cut}");
            assert!(done);
            assert_eq!(used, msg.len() - 4);
        }
    }

    #[test]
    fn chunk_start_is_only_between_chunks() {
        let msg = b"5\r\nhello\r\n6\r\n world\r\n";
        let mut starts = Vec::new();
        for cut in 0..=msg.len() {
            let mut d = ChunkedDecoder::new();
            assert!(d.feed(&msg[..cut], |_| {}).is_ok());
            if d.at_chunk_start() {
                starts.push(cut);
            }
        }
        assert_eq!(starts, vec![0, 10, msg.len()]);
        let mut d = ChunkedDecoder::new();
        assert!(d.feed(b"0\r\n\r\n", |_| {}).is_ok());
        assert!(d.is_done() && !d.at_chunk_start());
    }

    #[test]
    fn chunked_errors() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffffff\r\n"]).is_err());
        assert!(decode_all(&[b"2\r\nabX\r\n"]).is_err());
        let (_, _, done) = decode_all(&[b"2\r\nab\r\n"]).unwrap_or_default();
        assert!(!done);
    }

    #[test]
    fn error_body_is_valid_json_with_id() {
        for (id, want) in [
            (Some(&b"\"abc\""[..]), serde_json::json!("abc")),
            (Some(&b"42"[..]), serde_json::json!(42)),
            (None, serde_json::Value::Null),
        ] {
            for code in [-32700, -32600, -32020, 0, 7] {
                let mut out = Vec::new();
                write_jsonrpc_error(
                    &mut out,
                    &JsonRpcErrorAnswer {
                        status: 400,
                        id,
                        code,
                        message: "bad \"frame\" \\ \n",
                        close: false,
                        headers: "",
                        data: None,
                    },
                );
                let text = String::from_utf8(out).unwrap_or_default();
                let (head, body) = text.split_once("\r\n\r\n").unwrap_or_default();
                assert!(head.contains(&format!("content-length: {}", body.len())));
                let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
                assert_eq!(v["id"], want);
                assert_eq!(v["error"]["code"], code);
                assert_eq!(v["error"]["message"], "bad \"frame\" \\ \n");
            }
        }
    }

    #[test]
    fn transfer_encoding_is_a_lone_chunked_or_refused() {
        use TransferVerdict::*;
        let one = |v: &[u8]| transfer_verdict([v]);
        assert_eq!(transfer_verdict([]), Absent);
        assert_eq!(one(b"chunked"), Chunked);
        assert_eq!(one(b" Chunked\t"), Chunked);
        assert_eq!(one(b"gzip, chunked"), Unsupported);
        assert_eq!(one(b"identity, chunked"), Unsupported);
        assert_eq!(transfer_verdict([&b"gzip"[..], b"chunked"]), Unsupported);
        for bad in [
            &b"gzip"[..],
            b"chunked, gzip",
            b"chunked, chunked",
            b"chunked,",
            b",chunked",
            b"",
            b"chunked;q=1",
            b"chu nked",
            b"\"chunked\"",
            b"chunked\x0c",
        ] {
            assert_eq!(one(bad), Malformed, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(transfer_verdict([&b"chunked"[..], b"chunked"]), Malformed);
    }

    #[test]
    fn helpers() {
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n\r\nx"), Some(18));
        assert_eq!(head_len(b"GET / HTTP/1.1\r\n"), None);
        assert!(is_hop_by_hop(b"Transfer-Encoding"));
        assert!(!is_hop_by_hop(b"Authorization"));
        assert!(is_hop_by_hop(b"Proxy-Authorization"));
        assert!(is_hop_by_hop(b"TE"));
        assert!(!is_hop_by_hop(b"tex"));
        assert!(has_token(b"keep-alive, Upgrade", b"upgrade"));
        assert!(!connection_names_fields(b"close"));
        assert!(!connection_names_fields(b"Keep-Alive, Upgrade"));
        assert!(connection_names_fields(b"close, X-Secret"));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(parse_content_length(b"4x"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b"99999999999999999999"), None);
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"007"), Some(7));
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"  "), None);
        assert_eq!(parse_content_length(b"1 2"), None);
        assert_eq!(parse_content_length(b"+1"), None);
        assert_eq!(parse_content_length(b"1/"), None);
        assert_eq!(parse_content_length(b"1:"), None);
    }
}
