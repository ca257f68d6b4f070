//! Server-sent events (`text/event-stream`) per the WHATWG event-stream rules.
//!
//! [`SseParser`] turns chunks into owned [`SseEvent`]s for clients and the load
//! tester. [`SseBoundary`] only counts where events end, so the proxy can
//! forward raw chunks untouched while knowing how many events went by. Both
//! carry their state across arbitrary chunk boundaries and accept CRLF, CR or
//! LF line endings and a leading byte-order mark. [`event_data`] (and
//! [`event_data_in`]) read the data of one event already cut out of a stream,
//! borrowing it in place when it has one `data` line; [`event_end`] and
//! [`EventEnds`] find where events end, to cut them out.

use std::borrow::Cow;
use std::collections::VecDeque;

/// Default [`SseParser`] / [`SseBoundary`] limit on one event's size: tool
/// results of several MiB are normal in MCP.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 16 * 1024 * 1024;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Why an event could not be delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SseError {
    /// An event grew past `max_event_bytes`; it was dropped up to its end.
    /// Raise the limit or treat the stream as broken.
    #[error("SSE event larger than the configured limit; it was dropped")]
    EventTooLarge,
}

/// One dispatched event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` type, when one was given (the spec's default is `message`).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
    /// The stream's last event id at dispatch time (it persists across
    /// events, as a reconnecting client's `Last-Event-ID` would).
    pub id: Option<String>,
    /// A `retry:` value (milliseconds) received since the previous event.
    pub retry: Option<u64>,
}

/// Incremental event-stream parser: [`push`](Self::push) bytes as they
/// arrive, then take events with [`next_event`](Self::next_event).
#[derive(Debug)]
pub struct SseParser {
    max_event_bytes: usize,
    line: Vec<u8>,
    /// The last byte seen was a CR, so a leading LF in the next chunk ends nothing.
    pending_cr: bool,
    /// No line has been completed yet (a BOM may lead the first one).
    at_stream_start: bool,
    /// Dropping an oversized event until its blank line.
    skipping: bool,
    /// Whether the line being skipped has any bytes.
    skipped_line_nonempty: bool,
    data: String,
    event_type: String,
    last_event_id: String,
    retry: Option<u64>,
    ready: VecDeque<Result<SseEvent, SseError>>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

impl SseParser {
    /// A parser with [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser that drops (and reports) events larger than `max` bytes.
    pub fn with_max_event_bytes(max: usize) -> Self {
        Self {
            max_event_bytes: max,
            line: Vec::new(),
            pending_cr: false,
            at_stream_start: true,
            skipping: false,
            skipped_line_nonempty: false,
            data: String::new(),
            event_type: String::new(),
            last_event_id: String::new(),
            retry: None,
            ready: VecDeque::new(),
        }
    }

    /// Feeds received bytes; any events they complete become available.
    pub fn push(&mut self, mut bytes: &[u8]) {
        loop {
            if self.pending_cr && !bytes.is_empty() {
                self.pending_cr = false;
                if let Some(rest) = bytes.strip_prefix(b"\n") {
                    bytes = rest;
                }
            }
            match memchr::memchr2(b'\r', b'\n', bytes) {
                None => {
                    self.append(bytes);
                    return;
                }
                Some(i) => {
                    self.append(bytes.get(..i).unwrap_or_default());
                    self.end_line();
                    match bytes.get(i..) {
                        Some([b'\r', b'\n', rest @ ..]) => bytes = rest,
                        Some([b'\r']) => {
                            self.pending_cr = true;
                            return;
                        }
                        Some([_, rest @ ..]) => bytes = rest,
                        _ => return,
                    }
                }
            }
        }
    }

    /// The next complete event, skipping events dropped for size.
    pub fn next_event(&mut self) -> Option<SseEvent> {
        while let Some(item) = self.ready.pop_front() {
            if let Ok(event) = item {
                return Some(event);
            }
        }
        None
    }

    /// The next complete event, or the error for an event dropped for size
    /// (reported once, where the event would have been).
    pub fn try_next_event(&mut self) -> Option<Result<SseEvent, SseError>> {
        self.ready.pop_front()
    }

    /// The last event id seen on the stream (for `Last-Event-ID` on reconnect).
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str())
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.skipping {
            self.skipped_line_nonempty |= !bytes.is_empty();
            return;
        }
        self.line.extend_from_slice(bytes);
        let size = self.line.len() + self.data.len() + self.event_type.len();
        if size > self.max_event_bytes {
            self.ready.push_back(Err(SseError::EventTooLarge));
            self.skipping = true;
            self.skipped_line_nonempty = true;
            self.line.clear();
            self.data.clear();
            self.event_type.clear();
        }
    }

    fn end_line(&mut self) {
        let first = std::mem::replace(&mut self.at_stream_start, false);
        if self.skipping {
            if !std::mem::replace(&mut self.skipped_line_nonempty, false) {
                self.skipping = false;
            }
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        let mut text: &[u8] = &line;
        if first {
            text = text.strip_prefix(BOM).unwrap_or(text);
        }
        self.field(text);
        line.clear();
        self.line = line;
    }

    /// Interprets one line (terminator removed).
    fn field(&mut self, line: &[u8]) {
        if line.is_empty() {
            self.dispatch();
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (name, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let value = line.get(i + 1..).unwrap_or_default();
                let value = value.strip_prefix(b" ").unwrap_or(value);
                (line.get(..i).unwrap_or_default(), value)
            }
            None => (line, &[][..]),
        };
        match name {
            b"event" => {
                self.event_type.clear();
                self.event_type.push_str(&String::from_utf8_lossy(value));
            }
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"id" if !value.contains(&0) => {
                self.last_event_id.clear();
                self.last_event_id.push_str(&String::from_utf8_lossy(value));
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                if let Ok(ms) = String::from_utf8_lossy(value).parse::<u64>() {
                    self.retry = Some(ms);
                }
            }
            _ => {}
        }
    }

    fn dispatch(&mut self) {
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        let event_type = std::mem::take(&mut self.event_type);
        self.ready.push_back(Ok(SseEvent {
            event: (!event_type.is_empty()).then_some(event_type),
            data,
            id: self.last_event_id().map(str::to_owned),
            retry: self.retry.take(),
        }));
    }
}

/// Zero-copy event counter for a forwarded `text/event-stream`: feed it each
/// raw chunk and it says how many events (blocks with data, as a client
/// would dispatch them) ended in it. Comment-only blocks such as
/// `: keepalive` are not counted.
#[derive(Clone, Debug)]
pub struct SseBoundary {
    max_event_bytes: usize,
    pending_cr: bool,
    /// Bytes of a leading byte-order mark matched so far; `None` once past it.
    bom_matched: Option<usize>,
    /// The first bytes of the current line, enough to recognise `data`.
    prefix: [u8; 5],
    prefix_len: usize,
    line_len: usize,
    block_has_data: bool,
    block_bytes: usize,
    over_limit: bool,
    events: u64,
}

impl Default for SseBoundary {
    fn default() -> Self {
        Self::new()
    }
}

impl SseBoundary {
    /// A scanner at the start of a stream, with [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A scanner that flags events larger than `max` bytes (see [`try_feed`](Self::try_feed)).
    pub fn with_max_event_bytes(max: usize) -> Self {
        Self {
            max_event_bytes: max,
            pending_cr: false,
            bom_matched: Some(0),
            prefix: [0; 5],
            prefix_len: 0,
            line_len: 0,
            block_has_data: false,
            block_bytes: 0,
            over_limit: false,
            events: 0,
        }
    }

    /// Scans the next chunk of the stream; returns how many events ended in it.
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut ended = 0usize;
        let mut rest = chunk;
        loop {
            if self.pending_cr && !rest.is_empty() {
                self.pending_cr = false;
                if let Some(r) = rest.strip_prefix(b"\n") {
                    self.block_bytes = self.block_bytes.saturating_add(1);
                    rest = r;
                }
            }
            let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.content(rest);
                break;
            };
            self.content(rest.get(..i).unwrap_or_default());
            self.block_bytes = self.block_bytes.saturating_add(1);
            if self.end_line() {
                ended += 1;
            }
            self.pending_cr = rest.get(i) == Some(&b'\r');
            rest = rest.get(i + 1..).unwrap_or_default();
        }
        self.events = self.events.saturating_add(ended as u64);
        ended
    }

    /// Like [`feed`](Self::feed), but fails once an event has grown past the
    /// limit since the last call; the proxy should then end the stream.
    pub fn try_feed(&mut self, chunk: &[u8]) -> Result<usize, SseError> {
        let n = self.feed(chunk);
        if std::mem::replace(&mut self.over_limit, false) {
            Err(SseError::EventTooLarge)
        } else {
            Ok(n)
        }
    }

    /// Events counted since the start of the stream.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Bytes of the event still in progress.
    pub fn pending_event_bytes(&self) -> usize {
        self.block_bytes
    }

    fn content(&mut self, mut bytes: &[u8]) {
        if let Some(mut matched) = self.bom_matched {
            loop {
                if matched == BOM.len() {
                    self.bom_matched = None;
                    break;
                }
                match bytes.first() {
                    None => {
                        self.bom_matched = Some(matched);
                        return;
                    }
                    Some(b) if BOM.get(matched) == Some(b) => {
                        matched += 1;
                        bytes = bytes.get(1..).unwrap_or_default();
                    }
                    Some(_) => {
                        // Not a BOM after all: what matched is line content.
                        self.bom_matched = None;
                        self.line_len += matched;
                        break;
                    }
                }
            }
        }
        if bytes.is_empty() {
            return;
        }
        let room = self.prefix.len().saturating_sub(self.prefix_len);
        for (slot, &b) in self
            .prefix
            .iter_mut()
            .skip(self.prefix_len)
            .zip(bytes.iter().take(room))
        {
            *slot = b;
        }
        self.prefix_len += room.min(bytes.len());
        self.line_len = self.line_len.saturating_add(bytes.len());
        self.block_bytes = self.block_bytes.saturating_add(bytes.len());
        if self.block_bytes > self.max_event_bytes {
            self.over_limit = true;
        }
    }

    /// Ends a line; returns whether it completed an event.
    fn end_line(&mut self) -> bool {
        if let Some(matched) = self.bom_matched.take() {
            self.line_len += matched;
        }
        let prefix = self.prefix.get(..self.prefix_len).unwrap_or_default();
        let is_blank = self.line_len == 0;
        let is_data = prefix == b"data:" || (self.line_len == 4 && prefix == b"data");
        self.prefix_len = 0;
        self.line_len = 0;
        if is_blank {
            let dispatched = std::mem::replace(&mut self.block_has_data, false);
            self.block_bytes = 0;
            return dispatched;
        }
        self.block_has_data |= is_data;
        false
    }
}

/// Where events end in event-stream bytes fed in pieces of any size: an event
/// ends at a blank line, and a line at CRLF, LF or CR (a CRLF is one end, also
/// when a piece ends between its CR and its LF). The one boundary finder of the
/// proxy: [`event_end`] for bytes that start at an event's start, this for a
/// stream read piece by piece without copying it.
///
/// An event here is the bytes up to and including the blank line that ends
/// it; blank lines before its first line belong to it (they dispatch nothing),
/// so only a block with at least one line is an event (a comment-only block
/// such as `: keepalive` is one). A byte-order mark is not looked at (it is
/// line content).
///
/// A CR at the end of a piece ends its line (the rules say so), and when that
/// line is blank the event ends there: the LF that may open the next piece is
/// then the second half of that CRLF. [`next_end`](Self::next_end) remembers
/// it and does not read it as a blank line of its own; a caller that cuts
/// events out of a buffer leaves that LF at the start of the next event, where
/// it is a blank line before the event's first line, which dispatches nothing.
/// So a stream cut at any points gives the same events' data (and the same
/// bytes, concatenated) as the stream cut whole.
#[derive(Clone, Copy, Debug)]
pub struct EventEnds {
    /// The last byte fed was a CR that ended a line: a LF next is part of it.
    pending_cr: bool,
    /// The next byte starts a line.
    at_line_start: bool,
    /// The event in progress has a line that is not blank.
    has_line: bool,
}

impl Default for EventEnds {
    fn default() -> Self {
        Self::new()
    }
}

impl EventEnds {
    /// A finder at the start of a stream (or of an event).
    pub const fn new() -> Self {
        Self {
            pending_cr: false,
            at_line_start: true,
            has_line: false,
        }
    }

    /// Reads `piece` (the stream's next bytes) up to the end of the first event
    /// that ends in it, and returns that end: the index in `piece` just past the
    /// blank line's line end. `None`: no event ends in `piece`, all of which was
    /// read. Call again with the bytes after the end for the next one.
    #[inline]
    pub fn next_end(&mut self, piece: &[u8]) -> Option<usize> {
        let mut pos = 0;
        if self.pending_cr && !piece.is_empty() {
            self.pending_cr = false;
            if piece.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        loop {
            let rest = piece.get(pos..).unwrap_or_default();
            if rest.is_empty() {
                return None;
            }
            let Some(off) = memchr::memchr2(b'\r', b'\n', rest) else {
                self.at_line_start = false;
                self.has_line = true;
                return None;
            };
            let at = pos + off;
            let blank = self.at_line_start && off == 0;
            self.has_line |= !blank;
            self.at_line_start = true;
            pos = at + 1;
            if piece.get(at) == Some(&b'\r') {
                match piece.get(pos) {
                    Some(b'\n') => pos += 1,
                    Some(_) => {}
                    None => self.pending_cr = true,
                }
            }
            if blank && std::mem::take(&mut self.has_line) {
                return Some(pos);
            }
        }
    }
}

/// Where the first event in `buf` (bytes that start at an event's start) ends:
/// just past the line end of the blank line that ends it, or `None` when no
/// event ends in `buf` yet. See [`EventEnds`] for what counts and for a CR at
/// the end of `buf`: the end is then just past it, and an LF read after it
/// leads the next event.
#[inline]
pub fn event_end(buf: &[u8]) -> Option<usize> {
    EventEnds::new().next_end(buf)
}

/// The lines of event-stream bytes: CRLF, LF or CR ends a line (a CRLF is one
/// end, not two); the last line may be unfinished. Blank lines are yielded (as
/// empty slices): they end events.
pub fn lines(bytes: &[u8]) -> Lines<'_> {
    Lines { rest: Some(bytes) }
}

/// Iterator of [`lines`].
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    /// What is left; `None` once the bytes are used up (a final line end leaves no empty line).
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.rest.filter(|r| !r.is_empty())?;
        let Some(i) = memchr::memchr2(b'\r', b'\n', rest) else {
            self.rest = None;
            return Some(rest);
        };
        let skip = if rest.get(i..i + 2) == Some(b"\r\n") {
            2
        } else {
            1
        };
        self.rest = rest.get(i + skip..);
        rest.get(..i)
    }
}

/// A line's field name and value: the value follows the first colon, less one
/// space right after it; a line without a colon is a name with an empty value
/// (`data` alone is an empty data line). `None` for a comment (a line that
/// starts with a colon) and for a blank line.
pub fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    if line.first().is_none_or(|&b| b == b':') {
        return None;
    }
    Some(match memchr::memchr(b':', line) {
        Some(i) => {
            let value = line.get(i + 1..).unwrap_or_default();
            (
                line.get(..i).unwrap_or_default(),
                value.strip_prefix(b" ").unwrap_or(value),
            )
        }
        None => (line, &[][..]),
    })
}

/// The values of the `data` lines of the first event in `event` (bytes cut out
/// of a stream, with or without the blank line that ends them, or only the
/// first bytes of one: its last line may be unfinished): blank lines before
/// its first data line are passed over (they dispatch nothing), the first
/// blank line after it ends the event. A byte-order mark at the very start is
/// skipped, as at the start of a stream.
pub fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let event = event.strip_prefix(BOM).unwrap_or(event);
    let mut lines = lines(event);
    let mut seen = false;
    std::iter::from_fn(move || loop {
        let line = lines.next()?;
        if line.is_empty() && seen {
            return None;
        }
        if let Some((b"data", value)) = field(line) {
            seen = true;
            return Some(value);
        }
    })
    .fuse()
}

/// The data of the first event in `event` (see [`event_data_in`] for which
/// bytes count), as a client would dispatch it: its `data` lines' values
/// joined with LF. Borrowed from `event` when it has one data line (the
/// common case); allocated only when lines must be joined. `None` when it has
/// no data line (such an event is not dispatched); one bare `data` line is
/// `Some` of nothing.
pub fn event_data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut values = data_lines(event);
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
    join(&mut joined, first, second, values);
    Some(Cow::Owned(joined))
}

/// [`event_data`] with a reused buffer: `joined` (cleared) takes the data only
/// when several lines must be joined, so nothing is allocated once it has grown.
///
/// The event-stream rules (WHATWG HTML, "Interpreting an event stream"): CR,
/// LF and CRLF end lines; a line `name: value` (one optional space after the
/// colon) or `name` alone (empty value); a line starting with a colon is a
/// comment; each `data` line adds its value and an LF to the data, whose last
/// LF goes at dispatch; a blank line dispatches. `event` is taken as the bytes
/// of one event: what follows the first blank line after a data line is not
/// read, and blank lines before any data line are passed over.
pub fn event_data_in<'a>(event: &'a [u8], joined: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut values = data_lines(event);
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(first);
    };
    joined.clear();
    join(joined, first, second, values);
    Some(joined)
}

fn join<'a>(out: &mut Vec<u8>, first: &[u8], second: &[u8], rest: impl Iterator<Item = &'a [u8]>) {
    out.extend_from_slice(first);
    out.push(b'\n');
    out.extend_from_slice(second);
    for v in rest {
        out.push(b'\n');
        out.extend_from_slice(v);
    }
}

/// Writes `data` as an event's data lines (one `data: ` line per LF-separated
/// part, so that a client joins them back into `data`) and the blank line that
/// ends the event.
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    // `memchr`, not `split`: a tool result's data is often one long line.
    out.reserve(data.len() + 8);
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', data).chain(std::iter::once(data.len())) {
        let part = data.get(start..end).unwrap_or_default();
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(part.strip_suffix(b"\r").unwrap_or(part));
        out.push(b'\n');
        start = end + 1;
    }
    out.push(b'\n');
}

/// Writes `event` (one event's bytes) with its data replaced by `data`: its
/// other lines (fields such as `id`, `event`, `retry`, and comments) as they
/// were, each ended by LF, then `data` as [`write_data`] writes it.
pub fn replace_data(out: &mut Vec<u8>, event: &[u8], data: &[u8]) {
    let event = event.strip_prefix(BOM).unwrap_or(event);
    for line in lines(event) {
        if !line.is_empty() && !matches!(field(line), Some((b"data", _))) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    write_data(out, data);
}
