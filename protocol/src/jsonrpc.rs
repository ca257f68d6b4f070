//! One JSON-RPC 2.0 message in, a borrowed [`Envelope`] out: the fields a proxy
//! routes on (id, method, tool name, uri, progress token, protocol version),
//! read in one pass that also validates the whole buffer as JSON.
//!
//! The scanner is iterative with a fixed-size nesting stack, so hostile input
//! can neither overflow the stack nor make it allocate; only keys or strings
//! that contain escapes are ever decoded, and only on request.

use std::borrow::Cow;
use std::ops::Range;

/// Deepest nesting of objects and arrays accepted (and the most
/// [`parse_message_with_depth`] allows); the top-level value is depth 1.
pub const MAX_DEPTH: usize = 64;

/// The shape of a JSON-RPC message, told apart by its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    /// Has `method` and `id`: expects an answer.
    Request,
    /// Has `method` and no `id`: expects no answer.
    Notification,
    /// Has `id` and exactly one of `result` or `error`.
    Response,
    /// A JSON array of messages (2025-03-26 only).
    Batch,
}

/// A JSON string value as it appears in the buffer: the bytes between the
/// quotes, escapes not decoded. Already validated, so decoding cannot fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JsonStr<'a> {
    raw: &'a str,
    has_escapes: bool,
}

impl<'a> JsonStr<'a> {
    /// The bytes between the quotes, exactly as received.
    pub fn raw(&self) -> &'a [u8] {
        self.raw.as_bytes()
    }

    /// The text between the quotes, exactly as received (escapes not decoded).
    pub fn raw_str(&self) -> &'a str {
        self.raw
    }

    /// Whether the raw text contains a backslash escape.
    pub fn has_escapes(&self) -> bool {
        self.has_escapes
    }

    /// The decoded value; borrows from the buffer unless escapes are present.
    pub fn decode(&self) -> Cow<'a, str> {
        if self.has_escapes {
            Cow::Owned(Unescape::new(self.raw).collect())
        } else {
            Cow::Borrowed(self.raw)
        }
    }

    /// Compares the decoded value with `s` without allocating.
    pub fn eq_str(&self, s: &str) -> bool {
        if self.has_escapes {
            Unescape::new(self.raw).eq(s.chars())
        } else {
            self.raw == s
        }
    }
}

/// Decodes the escapes of an already validated JSON string body, char by char.
struct Unescape<'a> {
    chars: std::str::Chars<'a>,
}

impl<'a> Unescape<'a> {
    fn new(raw: &'a str) -> Self {
        Self { chars: raw.chars() }
    }

    fn hex4(chars: &mut std::str::Chars<'a>) -> Option<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            v = v * 16 + chars.next()?.to_digit(16)?;
        }
        Some(v)
    }

    fn unicode(&mut self) -> char {
        let Some(hi) = Self::hex4(&mut self.chars) else {
            return char::REPLACEMENT_CHARACTER;
        };
        if (0xD800..0xDC00).contains(&hi) {
            let mut look = self.chars.clone();
            if look.next() == Some('\\') && look.next() == Some('u') {
                if let Some(lo) = Self::hex4(&mut look) {
                    if (0xDC00..0xE000).contains(&lo) {
                        self.chars = look;
                        let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                        return char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER);
                    }
                }
            }
        }
        char::from_u32(hi).unwrap_or(char::REPLACEMENT_CHARACTER)
    }
}

impl Iterator for Unescape<'_> {
    type Item = char;

    fn next(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        if c != '\\' {
            return Some(c);
        }
        Some(match self.chars.next()? {
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => self.unicode(),
            other => other,
        })
    }
}

/// The routing-relevant view of one JSON-RPC message, borrowed from its buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// Request, notification, response or batch.
    pub kind: MessageKind,
    /// Exact raw bytes of the id value, quotes included for strings (`"abc"`
    /// or `42`), so an answer can echo it with its type. `null` only appears
    /// in error responses.
    pub id: Option<&'a [u8]>,
    /// The `method` of a request or notification.
    pub method: Option<JsonStr<'a>>,
    /// `params.name` when it is a string (the tool of `tools/call`, the prompt
    /// of `prompts/get`).
    pub name: Option<JsonStr<'a>>,
    /// `params.uri` when it is a string (`resources/read`).
    pub uri: Option<JsonStr<'a>>,
    /// Raw bytes of `params._meta.progressToken`, any JSON type.
    pub progress_token: Option<&'a [u8]>,
    /// Raw bytes of `params.arguments` (a tool call's arguments), any JSON type; the last
    /// one when the key is repeated, as JSON parsers that keep one value per key read it.
    pub arguments: Option<&'a [u8]>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` when it is a
    /// string (2026-07-28 stateless requests).
    pub protocol_version: Option<JsonStr<'a>>,
    /// `params._meta.traceparent` when it is a string: a W3C trace context carried in the
    /// message (for transports without headers). The first one when the key is repeated.
    pub traceparent: Option<JsonStr<'a>>,
    /// Number of elements when `kind` is [`MessageKind::Batch`], else 0.
    pub batch_len: usize,
    /// Whether a top-level `result` key is present.
    pub has_result: bool,
    /// Whether a top-level `error` key is present.
    pub has_error: bool,
    /// Whether `result` is an object whose `isError` member is `true`: an MCP tool call
    /// that ran and failed (MCP reports that inside a successful JSON-RPC answer).
    pub tool_error: bool,
}

/// Why a buffer is not one valid JSON-RPC message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameErrorKind {
    /// The buffer is empty or only whitespace.
    #[error("empty message")]
    Empty,
    /// The buffer ends in the middle of a JSON value.
    #[error("message truncated: the JSON value is incomplete")]
    Truncated,
    /// The buffer is not valid JSON at `offset`.
    #[error("invalid JSON at byte {offset}")]
    Syntax {
        /// Byte offset of the first offending byte.
        offset: usize,
    },
    /// The buffer is not valid UTF-8.
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    /// Objects and arrays are nested deeper than the limit ([`MAX_DEPTH`] at most).
    #[error("JSON nested too deeply")]
    TooDeep,
    /// The message (or a batch element) is not a JSON object.
    #[error("message is not a JSON object or array of objects")]
    NotAnObject,
    /// `jsonrpc` is missing or not exactly `"2.0"`.
    #[error("\"jsonrpc\" must be exactly \"2.0\"")]
    BadVersion,
    /// `id` is not a string or an integer (or `null` outside an error response).
    #[error("\"id\" must be a string or an integer")]
    BadId,
    /// `method` is not a string.
    #[error("\"method\" must be a string")]
    BadMethod,
    /// A key the proxy reads appears twice in the same object.
    #[error("duplicate key in message")]
    DuplicateKey,
    /// The keys do not form a request, notification or response (for example
    /// both `result` and `error`, a response without `id`, or scalar `params`).
    #[error("message is not a valid JSON-RPC request, notification or response")]
    InvalidShape,
    /// A batch with no elements.
    #[error("empty batch")]
    EmptyBatch,
}

/// A rejected message, with where its id was if it could be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct FrameError {
    /// What was wrong.
    pub kind: FrameErrorKind,
    /// Byte range in the buffer of a valid (string or integer) id value, so the
    /// caller can echo it in its error answer. JSON-RPC answers parse errors
    /// (-32700) with `null`; the range is still given when it was read.
    pub id: Option<Range<usize>>,
}

impl FrameError {
    fn new(kind: FrameErrorKind, id: Option<Range<usize>>) -> Self {
        Self { kind, id }
    }

    /// The JSON-RPC error code to answer with: -32700 (parse error) when the
    /// bytes are not JSON, -32600 (invalid request) when the shape is wrong.
    pub fn jsonrpc_code(&self) -> i32 {
        match self.kind {
            FrameErrorKind::Empty
            | FrameErrorKind::Truncated
            | FrameErrorKind::Syntax { .. }
            | FrameErrorKind::InvalidUtf8
            | FrameErrorKind::TooDeep => -32700,
            _ => -32600,
        }
    }

    /// A short message for the JSON-RPC error object.
    pub fn message(&self) -> &'static str {
        match self.kind {
            FrameErrorKind::Empty => "Parse error: empty message",
            FrameErrorKind::Truncated => "Parse error: truncated JSON",
            FrameErrorKind::Syntax { .. } => "Parse error: invalid JSON",
            FrameErrorKind::InvalidUtf8 => "Parse error: invalid UTF-8",
            FrameErrorKind::TooDeep => "Parse error: JSON nested too deeply",
            FrameErrorKind::NotAnObject => "Invalid Request: not a JSON object",
            FrameErrorKind::BadVersion => "Invalid Request: jsonrpc must be \"2.0\"",
            FrameErrorKind::BadId => "Invalid Request: id must be a string or integer",
            FrameErrorKind::BadMethod => "Invalid Request: method must be a string",
            FrameErrorKind::DuplicateKey => "Invalid Request: duplicate key",
            FrameErrorKind::InvalidShape => "Invalid Request",
            FrameErrorKind::EmptyBatch => "Invalid Request: empty batch",
        }
    }

    /// The raw id bytes in `buf` (the buffer that was parsed), if known.
    pub fn id_in<'a>(&self, buf: &'a [u8]) -> Option<&'a [u8]> {
        self.id.clone().and_then(|r| buf.get(r))
    }
}

/// Parses and validates one JSON-RPC message (or batch) that fills `buf`.
///
/// The whole buffer must be a single JSON value, optionally surrounded by
/// whitespace. No allocation happens unless a key contains escapes.
pub fn parse_message(buf: &[u8]) -> Result<Envelope<'_>, FrameError> {
    parse_message_with_depth(buf, MAX_DEPTH)
}

/// [`parse_message`] with a lower nesting limit: `max_depth` levels of objects and arrays
/// (the top-level value is level 1), clamped to 1..=[`MAX_DEPTH`].
pub fn parse_message_with_depth(buf: &[u8], max_depth: usize) -> Result<Envelope<'_>, FrameError> {
    if buf.iter().all(|b| is_ws(*b)) {
        return Err(FrameError::new(FrameErrorKind::Empty, None));
    }
    let text =
        std::str::from_utf8(buf).map_err(|_| FrameError::new(FrameErrorKind::InvalidUtf8, None))?;
    let mut sc = Scanner {
        s: text,
        b: buf,
        pos: 0,
        max_depth: max_depth.clamp(1, MAX_DEPTH),
    };
    sc.ws();
    match sc.peek() {
        Some(b'{') => parse_object(&mut sc),
        Some(b'[') => parse_batch(&mut sc).map_err(|k| FrameError::new(k, None)),
        _ => {
            sc.value(1).map_err(|k| FrameError::new(k, None))?;
            sc.end().map_err(|k| FrameError::new(k, None))?;
            Err(FrameError::new(FrameErrorKind::NotAnObject, None))
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// What kind of value was scanned, with the string when it was one.
#[derive(Clone, Copy)]
enum Val<'a> {
    Str(JsonStr<'a>),
    Int,
    Float,
    Null,
    Bool,
    Object,
    Array,
}

/// Cursor over a buffer already known to be UTF-8.
struct Scanner<'a> {
    s: &'a str,
    b: &'a [u8],
    pos: usize,
    max_depth: usize,
}

type Scan<T> = Result<T, FrameErrorKind>;

const LO: u64 = 0x0101_0101_0101_0101;
const HI: u64 = 0x8080_8080_8080_8080;

/// High bits flag the bytes of `w` (little-endian) that are a quote, a
/// backslash or a control character. Borrows can set spurious flags only
/// above the first real one, so the lowest flag is exact.
fn special_bytes(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(LO) & !v & HI;
    let below_space = w.wrapping_sub(LO * 0x20) & !w & HI;
    below_space | zero(w ^ (LO * u64::from(b'"'))) | zero(w ^ (LO * u64::from(b'\\')))
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.pos).copied()
    }

    fn ws(&mut self) {
        while let Some(c) = self.peek() {
            if is_ws(c) {
                self.pos += 1;
            } else {
                break;
            }
        }
    }

    /// The error for an unexpected byte (or the end) at the cursor.
    fn unexpected(&self) -> FrameErrorKind {
        if self.pos >= self.b.len() {
            FrameErrorKind::Truncated
        } else {
            FrameErrorKind::Syntax { offset: self.pos }
        }
    }

    fn expect(&mut self, c: u8) -> Scan<()> {
        if self.peek() == Some(c) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.unexpected())
        }
    }

    /// Only whitespace may follow the value.
    fn end(&mut self) -> Scan<()> {
        self.ws();
        if self.pos < self.b.len() {
            Err(FrameErrorKind::Syntax { offset: self.pos })
        } else {
            Ok(())
        }
    }

    fn hex4(&mut self) -> Scan<u32> {
        let mut v = 0u32;
        for _ in 0..4 {
            let c = self.peek().ok_or(FrameErrorKind::Truncated)?;
            let d = char::from(c)
                .to_digit(16)
                .ok_or(FrameErrorKind::Syntax { offset: self.pos })?;
            v = v * 16 + d;
            self.pos += 1;
        }
        Ok(v)
    }

    /// Scans a string; the cursor is on its opening quote (every caller has seen it).
    #[inline(always)]
    fn string(&mut self) -> Scan<JsonStr<'a>> {
        debug_assert_eq!(self.peek(), Some(b'"'));
        let b = self.b;
        let start = self.pos + 1;
        let mut i = start;
        let mut has_escapes = false;
        loop {
            // Eight bytes at a time up to the first quote, backslash or control character.
            while let Some(&arr) = b.get(i..).and_then(|r| r.first_chunk::<8>()) {
                let flags = special_bytes(u64::from_le_bytes(arr));
                if flags != 0 {
                    i += (flags.trailing_zeros() / 8) as usize;
                    break;
                }
                i += 8;
            }
            match b.get(i) {
                Some(b'"') => {
                    let raw = self
                        .s
                        .get(start..i)
                        .ok_or(FrameErrorKind::Syntax { offset: start })?;
                    self.pos = i + 1;
                    return Ok(JsonStr { raw, has_escapes });
                }
                Some(b'\\') => {
                    has_escapes = true;
                    self.pos = i + 1;
                    self.escape()?;
                    i = self.pos;
                }
                Some(c) if *c < 0x20 => return Err(FrameErrorKind::Syntax { offset: i }),
                Some(_) => i += 1,
                None => return Err(FrameErrorKind::Truncated),
            }
        }
    }

    /// Scans one escape; the cursor is just past the backslash.
    fn escape(&mut self) -> Scan<()> {
        match self.peek() {
            None => Err(FrameErrorKind::Truncated),
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                let at = self.pos;
                self.pos += 1;
                let hi = self.hex4()?;
                if (0xDC00..0xE000).contains(&hi) {
                    return Err(FrameErrorKind::Syntax { offset: at });
                }
                if (0xD800..0xDC00).contains(&hi) {
                    // A high surrogate must be followed by an escaped low one.
                    self.expect(b'\\')?;
                    self.expect(b'u')?;
                    let lo = self.hex4()?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(FrameErrorKind::Syntax { offset: at });
                    }
                }
                Ok(())
            }
            Some(_) => Err(FrameErrorKind::Syntax { offset: self.pos }),
        }
    }

    fn digits(&mut self) -> Scan<()> {
        match self.peek() {
            Some(b'0'..=b'9') => {}
            _ => return Err(self.unexpected()),
        }
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        Ok(())
    }

    /// Scans a number; returns whether it is an integer (no fraction or exponent).
    fn number(&mut self) -> Scan<bool> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits()?,
            _ => return Err(self.unexpected()),
        }
        let mut int = true;
        if self.peek() == Some(b'.') {
            self.pos += 1;
            int = false;
            self.digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            int = false;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            self.digits()?;
        }
        Ok(int)
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        let rest = self.b.get(self.pos..).unwrap_or_default();
        if rest.starts_with(word) {
            self.pos += word.len();
            Ok(())
        } else if word.starts_with(rest) {
            Err(FrameErrorKind::Truncated)
        } else {
            let bad = rest.iter().zip(word).position(|(a, b)| a != b).unwrap_or(0);
            Err(FrameErrorKind::Syntax {
                offset: self.pos + bad,
            })
        }
    }

    /// Scans an object key and the colon after it.
    #[inline(always)]
    fn key(&mut self) -> Scan<JsonStr<'a>> {
        if self.peek() != Some(b'"') {
            return Err(self.unexpected());
        }
        let k = self.string()?;
        self.ws();
        self.expect(b':')?;
        self.ws();
        Ok(k)
    }

    /// Scans any value; a container here would sit at nesting level `depth`.
    #[inline(always)]
    fn value(&mut self, depth: usize) -> Scan<Val<'a>> {
        match self.peek() {
            Some(b'"') => self.string().map(Val::Str),
            Some(b'-' | b'0'..=b'9') => self
                .number()
                .map(|int| if int { Val::Int } else { Val::Float }),
            Some(b't') => self.literal(b"true").map(|()| Val::Bool),
            Some(b'f') => self.literal(b"false").map(|()| Val::Bool),
            Some(b'n') => self.literal(b"null").map(|()| Val::Null),
            Some(b'{') => self.skip_container(depth).map(|()| Val::Object),
            Some(b'[') => self.skip_container(depth).map(|()| Val::Array),
            _ => Err(self.unexpected()),
        }
    }

    /// Validates and skips an object or array whose opening bracket is at the
    /// cursor and which sits at nesting level `base`, without recursion: a bit
    /// per open level records whether it is an object.
    fn skip_container(&mut self, base: usize) -> Scan<()> {
        let mut is_obj_stack: u128 = 0;
        let mut open: usize = 0;
        'value: loop {
            match self.peek() {
                Some(c @ (b'{' | b'[')) => {
                    if base + open > self.max_depth {
                        return Err(FrameErrorKind::TooDeep);
                    }
                    let is_obj = c == b'{';
                    open += 1;
                    is_obj_stack = (is_obj_stack << 1) | u128::from(is_obj);
                    self.pos += 1;
                    self.ws();
                    let close = if is_obj { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.pos += 1;
                        open -= 1;
                        is_obj_stack >>= 1;
                    } else {
                        if is_obj {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => {
                    self.number()?;
                }
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                _ => return Err(self.unexpected()),
            }
            // After a complete value: close levels until a comma or the end.
            loop {
                if open == 0 {
                    return Ok(());
                }
                self.ws();
                let in_obj = is_obj_stack & 1 == 1;
                match self.peek() {
                    Some(b',') => {
                        self.pos += 1;
                        self.ws();
                        if in_obj {
                            self.key()?;
                        }
                        continue 'value;
                    }
                    Some(b'}') if in_obj => {}
                    Some(b']') if !in_obj => {}
                    _ => return Err(self.unexpected()),
                }
                self.pos += 1;
                open -= 1;
                is_obj_stack >>= 1;
            }
        }
    }

    /// Visits the members of the object at the cursor (level `depth`), calling
    /// `member` with the cursor on each value; `member` must scan the value.
    fn members(&mut self, mut member: impl FnMut(&mut Self, JsonStr<'a>) -> Scan<()>) -> Scan<()> {
        self.expect(b'{')?;
        self.ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            let k = self.key()?;
            member(self, k)?;
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.pos += 1;
                    self.ws();
                }
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.unexpected()),
            }
        }
    }
}

/// Which of `names` the key is, comparing decoded text so that an escaped
/// key (`"\u006dethod"`) cannot slip past the duplicate check.
fn which(key: &JsonStr<'_>, names: &[&str]) -> Option<usize> {
    if key.has_escapes() {
        names.iter().position(|n| key.eq_str(n))
    } else {
        names.iter().position(|n| key.raw_str() == *n)
    }
}

/// What the id value was.
#[derive(Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Valid,
    Null,
    Invalid,
}

/// Everything read from a top-level object before the shape is judged.
#[derive(Default)]
struct Fields<'a> {
    jsonrpc_seen: bool,
    version_ok: bool,
    id: Option<(Range<usize>, IdKind)>,
    id_duplicated: bool,
    method: Option<Option<JsonStr<'a>>>,
    params: Option<bool>,
    has_result: bool,
    has_error: bool,
    tool_error: bool,
    duplicate: bool,
    name: Option<JsonStr<'a>>,
    name_seen: bool,
    uri: Option<JsonStr<'a>>,
    uri_seen: bool,
    meta_seen: bool,
    progress_token: Option<Range<usize>>,
    arguments: Option<Range<usize>>,
    protocol_version: Option<JsonStr<'a>>,
    protocol_version_seen: bool,
    traceparent: Option<JsonStr<'a>>,
}

impl Fields<'_> {
    fn valid_id(&self) -> Option<Range<usize>> {
        match &self.id {
            Some((r, IdKind::Valid)) if !self.id_duplicated => Some(r.clone()),
            _ => None,
        }
    }
}

const TOP_KEYS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_KEYS: &[&str] = &["name", "uri", "_meta", "arguments"];
const RESULT_KEYS: &[&str] = &["isError"];
const META_KEYS: &[&str] = &[
    "progressToken",
    "io.modelcontextprotocol/protocolVersion",
    "traceparent",
];

fn parse_object<'a>(sc: &mut Scanner<'a>) -> Result<Envelope<'a>, FrameError> {
    let mut f = Fields::default();
    let scanned = sc
        .members(|sc, key| top_member(sc, key, &mut f))
        .and_then(|()| sc.end());
    if let Err(kind) = scanned {
        return Err(FrameError::new(kind, f.valid_id()));
    }
    judge(sc.b, &f)
}

fn top_member<'a>(sc: &mut Scanner<'a>, key: JsonStr<'a>, f: &mut Fields<'a>) -> Scan<()> {
    match which(&key, TOP_KEYS) {
        Some(0) => {
            f.duplicate |= f.jsonrpc_seen;
            f.jsonrpc_seen = true;
            let v = sc.value(2)?;
            f.version_ok = matches!(v, Val::Str(s) if s.eq_str("2.0"));
        }
        Some(1) => {
            if f.id.is_some() {
                f.duplicate = true;
                f.id_duplicated = true;
            }
            let start = sc.pos;
            let v = sc.value(2)?;
            let kind = match v {
                Val::Str(_) | Val::Int => IdKind::Valid,
                Val::Null => IdKind::Null,
                _ => IdKind::Invalid,
            };
            f.id = Some((start..sc.pos, kind));
        }
        Some(2) => {
            f.duplicate |= f.method.is_some();
            let v = sc.value(2)?;
            f.method = Some(match v {
                Val::Str(s) => Some(s),
                _ => None,
            });
        }
        Some(3) => {
            f.duplicate |= f.params.is_some();
            if sc.peek() == Some(b'{') {
                sc.members(|sc, key| params_member(sc, key, f))?;
                f.params = Some(true);
            } else {
                let v = sc.value(2)?;
                f.params = Some(matches!(v, Val::Array));
            }
        }
        Some(4) => {
            f.duplicate |= f.has_result;
            f.has_result = true;
            if sc.peek() == Some(b'{') {
                // The object sits at level 2, as `value(2)` would check it.
                if sc.max_depth < 2 {
                    return Err(FrameErrorKind::TooDeep);
                }
                sc.members(|sc, key| result_member(sc, key, f))?;
            } else {
                sc.value(2)?;
            }
        }
        Some(5) => {
            f.duplicate |= f.has_error;
            f.has_error = true;
            sc.value(2)?;
        }
        _ => {
            sc.value(2)?;
        }
    }
    Ok(())
}

fn params_member<'a>(sc: &mut Scanner<'a>, key: JsonStr<'a>, f: &mut Fields<'a>) -> Scan<()> {
    match which(&key, PARAMS_KEYS) {
        Some(0) => {
            f.duplicate |= f.name_seen;
            f.name_seen = true;
            if let Val::Str(s) = sc.value(3)? {
                f.name = Some(s);
            }
        }
        Some(1) => {
            f.duplicate |= f.uri_seen;
            f.uri_seen = true;
            if let Val::Str(s) = sc.value(3)? {
                f.uri = Some(s);
            }
        }
        Some(2) => {
            f.duplicate |= f.meta_seen;
            f.meta_seen = true;
            if sc.peek() == Some(b'{') {
                sc.members(|sc, key| meta_member(sc, key, f))?;
            } else {
                sc.value(3)?;
            }
        }
        Some(3) => {
            let start = sc.pos;
            sc.value(3)?;
            f.arguments = Some(start..sc.pos);
        }
        _ => {
            sc.value(3)?;
        }
    }
    Ok(())
}

fn result_member<'a>(sc: &mut Scanner<'a>, key: JsonStr<'a>, f: &mut Fields<'a>) -> Scan<()> {
    let start = sc.pos;
    let v = sc.value(3)?;
    if which(&key, RESULT_KEYS) == Some(0) && matches!(v, Val::Bool) {
        f.tool_error = sc.b.get(start) == Some(&b't');
    }
    Ok(())
}

fn meta_member<'a>(sc: &mut Scanner<'a>, key: JsonStr<'a>, f: &mut Fields<'a>) -> Scan<()> {
    match which(&key, META_KEYS) {
        Some(0) => {
            f.duplicate |= f.progress_token.is_some();
            let start = sc.pos;
            sc.value(4)?;
            f.progress_token = Some(start..sc.pos);
        }
        Some(1) => {
            f.duplicate |= f.protocol_version_seen;
            f.protocol_version_seen = true;
            if let Val::Str(s) = sc.value(4)? {
                f.protocol_version = Some(s);
            }
        }
        Some(2) => {
            // Tracing never refuses a message: a repeated key is not an error here, the first
            // string wins.
            if let Val::Str(s) = sc.value(4)? {
                f.traceparent = f.traceparent.or(Some(s));
            }
        }
        _ => {
            sc.value(4)?;
        }
    }
    Ok(())
}

/// Decides the message kind from the keys read, or why there is none.
fn judge<'a>(buf: &'a [u8], f: &Fields<'a>) -> Result<Envelope<'a>, FrameError> {
    use FrameErrorKind as K;
    let fail = |kind| Err(FrameError::new(kind, f.valid_id()));
    if f.duplicate {
        return fail(K::DuplicateKey);
    }
    if !f.version_ok {
        return fail(K::BadVersion);
    }
    let id_kind = f.id.as_ref().map(|(_, k)| *k);
    let kind = if let Some(method) = f.method {
        if method.is_none() {
            return fail(K::BadMethod);
        }
        if f.has_result || f.has_error || f.params == Some(false) {
            return fail(K::InvalidShape);
        }
        match id_kind {
            None => MessageKind::Notification,
            Some(IdKind::Valid) => MessageKind::Request,
            Some(_) => return fail(K::BadId),
        }
    } else if f.has_result || f.has_error {
        if f.has_result && f.has_error {
            return fail(K::InvalidShape);
        }
        match id_kind {
            None => return fail(K::InvalidShape),
            Some(IdKind::Valid) => {}
            Some(IdKind::Null) if f.has_error => {}
            Some(_) => return fail(K::BadId),
        }
        MessageKind::Response
    } else {
        return fail(K::InvalidShape);
    };
    let slice = |r: &Option<Range<usize>>| r.clone().and_then(|r| buf.get(r));
    Ok(Envelope {
        kind,
        id: slice(&f.id.as_ref().map(|(r, _)| r.clone())),
        method: f.method.flatten(),
        name: f.name,
        uri: f.uri,
        progress_token: slice(&f.progress_token),
        arguments: slice(&f.arguments),
        protocol_version: f.protocol_version,
        traceparent: f.traceparent,
        batch_len: 0,
        has_result: f.has_result,
        has_error: f.has_error,
        tool_error: f.tool_error,
    })
}

fn parse_batch<'a>(sc: &mut Scanner<'a>) -> Scan<Envelope<'a>> {
    sc.expect(b'[')?;
    sc.ws();
    let mut count = 0usize;
    let mut all_objects = true;
    if sc.peek() == Some(b']') {
        sc.pos += 1;
    } else {
        loop {
            sc.ws();
            all_objects &= sc.peek() == Some(b'{');
            sc.value(2)?;
            count += 1;
            sc.ws();
            match sc.peek() {
                Some(b',') => sc.pos += 1,
                Some(b']') => {
                    sc.pos += 1;
                    break;
                }
                _ => return Err(sc.unexpected()),
            }
        }
    }
    sc.end()?;
    if count == 0 {
        return Err(FrameErrorKind::EmptyBatch);
    }
    if !all_objects {
        return Err(FrameErrorKind::NotAnObject);
    }
    Ok(Envelope {
        kind: MessageKind::Batch,
        id: None,
        method: None,
        name: None,
        uri: None,
        progress_token: None,
        arguments: None,
        protocol_version: None,
        traceparent: None,
        batch_len: count,
        has_result: false,
        has_error: false,
        tool_error: false,
    })
}

/// Whether a JSON-RPC response is an error, read from its first top-level `result` or
/// `error` member only: `Some(true)` for `error`, `Some(false)` for `result`, `None` when
/// `buf` is not an object or neither member comes before the object ends or stops making
/// sense. Members before it are skipped without being validated, and nothing after it is
/// read, so the cost does not grow with the size of the result (servers put `result` or
/// `error` after `jsonrpc` and `id`: a few dozen bytes). For statistics, where
/// [`parse_message`] (which validates every byte) would cost time proportional to the answer.
pub fn response_outcome(buf: &[u8]) -> Option<bool> {
    let (key, _) = find_member(buf, 0, |k| k == b"error" || k == b"result")?;
    Some(key == b"error")
}

/// The `code` of a JSON-RPC error response (`{"error":{"code":-32601,...}}`), read as
/// [`response_outcome`] reads: up to the first top-level `result` or `error` member, then
/// that object's members up to `code`. `None` for a result, or when no integer code is found
/// before the object stops making sense.
pub fn response_error_code(buf: &[u8]) -> Option<i64> {
    let (b"error", error) = find_member(buf, 0, |k| k == b"error" || k == b"result")? else {
        return None;
    };
    let (_, code) = find_member(buf, error, |k| k == b"code")?;
    let digits = std::str::from_utf8(buf.get(code..value_end(buf, code)?)?).ok()?;
    digits.trim_end().parse().ok()
}

/// Walks the members of the object at `buf[i..]` (after whitespace) up to the first whose key
/// `wanted` accepts: that key and where its value starts. Values passed over are skipped
/// without being validated. `None` when the object ends first or stops making sense.
fn find_member(buf: &[u8], i: usize, wanted: impl Fn(&[u8]) -> bool) -> Option<(&[u8], usize)> {
    let mut i = skip_ws(buf, i);
    if buf.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(buf, i);
        if buf.get(i) != Some(&b'"') {
            return None;
        }
        let end = string_end(buf, i + 1)?;
        let key = buf.get(i + 1..end)?;
        i = skip_ws(buf, end + 1);
        if buf.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(buf, i + 1);
        if wanted(key) {
            return Some((key, i));
        }
        i = skip_ws(buf, value_end(buf, i)?);
        match buf.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(buf: &[u8], mut i: usize) -> usize {
    while buf.get(i).is_some_and(|b| is_ws(*b)) {
        i += 1;
    }
    i
}

/// Index of the quote that closes the string whose contents start at `i`. A plain loop:
/// the keys and short values read here are a few bytes, where memchr's setup costs more than
/// it saves.
fn string_end(buf: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match buf.get(i)? {
            b'"' => return Some(i),
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
}

/// Index just past the value that starts at `i` (not validated: nesting and strings are
/// followed, nothing else is checked).
fn value_end(buf: &[u8], mut i: usize) -> Option<usize> {
    match buf.get(i)? {
        b'"' => Some(string_end(buf, i + 1)? + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            loop {
                match buf.get(i)? {
                    b'"' => i = string_end(buf, i + 1)?,
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            while !matches!(buf.get(i)?, b',' | b'}' | b']') && !is_ws(buf[i]) {
                i += 1;
            }
            Some(i)
        }
    }
}
