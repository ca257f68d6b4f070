//! Server-sent events (`text/event-stream`) per the WHATWG event-stream rules.
//!
//! [`SseParser`] turns chunks into owned [`SseEvent`]s for clients and the load
//! tester. [`SseBoundary`] only counts where events end, so the proxy can
//! forward raw chunks untouched while knowing how many events went by. Both
//! carry their state across arbitrary chunk boundaries and accept CRLF, CR or
//! LF line endings and a byte-order mark at the stream's start (only there: a
//! later one is line content). [`event_data`] (and [`event_data_in`]) read the
//! data of one event already cut out of a stream, borrowing it in place when it
//! has one `data` line; [`event_end`] and [`EventEnds`] find where events end,
//! to cut them out once [`strip_bom`] (or [`StartBom`], for a stream read in
//! pieces) has dropped the stream's byte-order mark; [`PendingEvents`] does both
//! for a caller that relays a stream event by event. All of them find line ends
//! with one scanner.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::ops::Range;

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
    lines: LineEnds,
    bom: StartBom,
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
            lines: LineEnds::new(),
            bom: StartBom::new(),
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
    pub fn push(&mut self, bytes: &[u8]) {
        let (held, rest) = self.bom.skip(bytes);
        self.push_lines(held);
        self.push_lines(rest);
    }

    fn push_lines(&mut self, bytes: &[u8]) {
        let mut pos = 0;
        while pos < bytes.len() {
            let (line, end) = self.lines.next_line(bytes, pos);
            self.append(bytes.get(line).unwrap_or_default());
            let Some(next) = end else {
                return;
            };
            self.end_line();
            pos = next;
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
        if self.skipping {
            if !std::mem::replace(&mut self.skipped_line_nonempty, false) {
                self.skipping = false;
            }
            return;
        }
        let mut line = std::mem::take(&mut self.line);
        self.field(&line);
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
    lines: LineEnds,
    bom: StartBom,
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
            lines: LineEnds::new(),
            bom: StartBom::new(),
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
        let (held, rest) = self.bom.skip(chunk);
        let ended = self.feed_lines(held) + self.feed_lines(rest);
        self.events = self.events.saturating_add(ended as u64);
        ended
    }

    fn feed_lines(&mut self, chunk: &[u8]) -> usize {
        let mut ended = 0usize;
        let mut pos = 0;
        while pos < chunk.len() {
            let (line, end) = self.lines.next_line(chunk, pos);
            // A line's end counts in its event, also the LF of a CRLF the last chunk cut in
            // two (nothing once that line ended its event, as when the CRLF comes whole).
            if line.start > pos && self.block_bytes > 0 {
                self.block_bytes = self.block_bytes.saturating_add(1);
            }
            self.content(chunk.get(line.clone()).unwrap_or_default());
            let Some(next) = end else {
                break;
            };
            self.block_bytes = self.block_bytes.saturating_add(next - line.end);
            if self.end_line() {
                ended += 1;
            }
            pos = next;
        }
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

    fn content(&mut self, bytes: &[u8]) {
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
/// line content): a stream's own is [`StartBom`]'s to drop first.
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
    lines: LineEnds,
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
            lines: LineEnds::new(),
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
        while pos < piece.len() {
            let (line, end) = self.lines.next_line(piece, pos);
            let Some(next) = end else {
                if !line.is_empty() {
                    self.at_line_start = false;
                    self.has_line = true;
                }
                return None;
            };
            let blank = self.at_line_start && line.is_empty();
            self.has_line |= !blank;
            self.at_line_start = true;
            pos = next;
            if blank && std::mem::take(&mut self.has_line) {
                return Some(pos);
            }
        }
        None
    }
}

/// Line ends in event-stream bytes read in pieces of any size: CRLF, LF or CR ends a line,
/// and a CRLF is one end also when a piece ends between its CR and its LF. The one line
/// scanner of [`SseParser`], [`SseBoundary`] and [`EventEnds`] ([`lines`] is it over bytes
/// read whole).
#[derive(Clone, Copy, Debug, Default)]
struct LineEnds {
    /// The last byte read was a CR that ended a line: an LF next is its second half.
    pending_cr: bool,
}

impl LineEnds {
    const fn new() -> Self {
        Self { pending_cr: false }
    }

    /// Reads `piece` from `pos` (less than its length) to the end of the line there: that
    /// line's bytes in `piece`, and where the next line starts (just past the line's end), or
    /// `None` when the line goes on in the next piece. An LF that ends a CR the last piece
    /// ended with is passed over first (the line's bytes start after it).
    #[inline]
    fn next_line(&mut self, piece: &[u8], mut pos: usize) -> (Range<usize>, Option<usize>) {
        if std::mem::take(&mut self.pending_cr) && piece.get(pos) == Some(&b'\n') {
            pos += 1;
        }
        let rest = piece.get(pos..).unwrap_or_default();
        let Some(off) = memchr::memchr2(b'\r', b'\n', rest) else {
            return (pos..piece.len(), None);
        };
        let at = pos + off;
        let next = match piece.get(at..) {
            Some([b'\r', b'\n', ..]) => at + 2,
            Some([b'\r']) => {
                self.pending_cr = true;
                at + 1
            }
            _ => at + 1,
        };
        (pos..at, Some(next))
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
    Lines {
        bytes,
        pos: 0,
        ends: LineEnds::new(),
    }
}

/// Iterator of [`lines`].
#[derive(Clone, Debug)]
pub struct Lines<'a> {
    bytes: &'a [u8],
    /// Where the next line starts (a final line end leaves no empty line after it).
    pos: usize,
    ends: LineEnds,
}

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let (line, end) = self.ends.next_line(self.bytes, self.pos);
        self.pos = end.unwrap_or(self.bytes.len());
        self.bytes.get(line)
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
/// blank line after it ends the event. A byte-order mark is line content here
/// (a stream's own is [`strip_bom`]'s to drop, before its first event is cut).
pub fn data_lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
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

/// Writes `data` as an event's data lines (one `data: ` line per line of
/// `data`, each ended by CRLF, LF or a lone CR as the event-stream rules end
/// lines, so that a client joins them back with LF) and the blank line that
/// ends the event. A line end in `data` comes back as LF: the rules keep no other.
pub fn write_data(out: &mut Vec<u8>, data: &[u8]) {
    // `memchr`, not `split`: a tool result's data is often one long line.
    out.reserve(data.len() + 8);
    let mut start = 0;
    for end in memchr::memchr2_iter(b'\r', b'\n', data).chain(std::iter::once(data.len())) {
        if end < start {
            // The LF of a CRLF, ended with its CR.
            continue;
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data.get(start..end).unwrap_or_default());
        out.push(b'\n');
        start = end
            + if data.get(end..end + 2) == Some(b"\r\n") {
                2
            } else {
                1
            };
    }
    out.push(b'\n');
}

/// `stream` (an event stream's first bytes) less the byte-order mark it may start with,
/// which the event-stream rules drop there and only there: a caller that cuts events out of
/// a stream ([`event_end`], [`EventEnds`]) drops it before the first cut, and
/// [`event_data`] reads one anywhere else as line content, as a client does.
pub fn strip_bom(stream: &[u8]) -> &[u8] {
    stream.strip_prefix(BOM).unwrap_or(stream)
}

/// [`strip_bom`] for a stream read in pieces of any size (the mark may come split), by
/// [`SseParser`], [`SseBoundary`], [`PendingEvents`] and a caller that cuts events out with
/// [`EventEnds`].
#[derive(Clone, Copy, Debug)]
pub struct StartBom {
    /// Bytes of the mark matched so far; `None` once past the stream's start.
    matched: Option<u8>,
}

impl Default for StartBom {
    fn default() -> Self {
        Self::new()
    }
}

impl StartBom {
    /// At a stream's start.
    pub const fn new() -> Self {
        Self { matched: Some(0) }
    }

    /// `piece` (the stream's next bytes) less the stream's byte-order mark, as two parts to
    /// read in order: what earlier pieces held back as maybe a mark's first bytes when it
    /// turns out not to be one, then the rest of `piece`. Both are empty while all that has
    /// come could still be a mark's first bytes.
    pub fn skip<'a>(&mut self, piece: &'a [u8]) -> (&'static [u8], &'a [u8]) {
        let Some(matched) = self.matched else {
            return (&[], piece);
        };
        let held = BOM.get(..usize::from(matched)).unwrap_or_default();
        let want = BOM.get(held.len()..).unwrap_or_default();
        let n = want.len().min(piece.len());
        if piece.get(..n) != want.get(..n) {
            self.matched = None;
            return (held, piece);
        }
        if n < want.len() {
            self.matched = Some(matched + n as u8);
            return (&[], &[]);
        }
        self.matched = None;
        (&[], piece.get(n..).unwrap_or_default())
    }

    /// Drops the stream's byte-order mark from `pending`, a buffer that holds the stream's
    /// bytes from its start until events are cut out of it: nothing once it has done so (or
    /// found none), nor while `pending` could still be a mark's first bytes (they end no
    /// line, so no event is cut before it can tell). [`PendingEvents`] calls it before it
    /// reads for an event's end.
    fn drop_from(&mut self, pending: &mut Vec<u8>) {
        if self.matched.is_none() || (pending.len() < BOM.len() && BOM.starts_with(pending)) {
            return;
        }
        self.matched = None;
        if pending.starts_with(BOM) {
            pending.drain(..BOM.len());
        }
    }
}

/// An event stream's bytes read so far and not yet cut into events, for a caller that relays a
/// stream event by event: [`extend`](Self::extend) adds the stream's next bytes (pieces of any
/// size), [`next_event`](Self::next_event) cuts the next whole event off the front, the
/// stream's byte-order mark dropped first ([`StartBom`]) and the bytes already read for an
/// event's end not read again ([`EventEnds`]). The events' data are [`SseParser`]'s; their
/// bytes and [`rest`](Self::rest) make up the stream less its byte-order mark.
#[derive(Clone, Debug, Default)]
pub struct PendingEvents {
    bytes: Vec<u8>,
    /// `bytes[..cut]` were handed out as events (dropped when more bytes come).
    cut: usize,
    /// `bytes[cut..cut + scanned]` were read by `ends` and end no event.
    scanned: usize,
    ends: EventEnds,
    bom: StartBom,
}

impl PendingEvents {
    /// At a stream's start.
    pub const fn new() -> Self {
        Self {
            bytes: Vec::new(),
            cut: 0,
            scanned: 0,
            ends: EventEnds::new(),
            bom: StartBom::new(),
        }
    }

    /// Adds the stream's next bytes.
    pub fn extend(&mut self, piece: &[u8]) {
        if self.cut > 0 {
            self.bytes.drain(..self.cut);
            self.cut = 0;
        }
        self.bytes.extend_from_slice(piece);
    }

    /// The next whole event (its bytes up to and including the blank line that ends it), cut
    /// off the front; `None` while no event ends in what has come.
    pub fn next_event(&mut self) -> Option<&[u8]> {
        if self.bom.matched.is_some() {
            // Nothing read yet: the mark, if the stream starts with one, goes first; nothing is
            // read while what has come could still be its first bytes.
            self.bom.drop_from(&mut self.bytes);
            if self.bom.matched.is_some() {
                return None;
            }
        }
        let from = self.cut + self.scanned;
        let unread = self.bytes.get(from..).unwrap_or_default();
        if unread.is_empty() {
            return None;
        }
        let Some(n) = self.ends.next_end(unread) else {
            self.scanned += unread.len();
            return None;
        };
        let (start, end) = (self.cut, from + n);
        self.cut = end;
        self.scanned = 0;
        self.bytes.get(start..end)
    }

    /// What has come and is not cut out yet: an event's first bytes, or (a stream that ended
    /// without a blank line) its last event's.
    pub fn rest(&self) -> &[u8] {
        self.bytes.get(self.cut..).unwrap_or_default()
    }

    /// Whether [`rest`](Self::rest) is empty.
    pub fn is_empty(&self) -> bool {
        self.rest().is_empty()
    }

    /// Takes [`rest`](Self::rest), leaving nothing pending.
    pub fn take_rest(&mut self) -> Vec<u8> {
        self.bytes.drain(..self.cut);
        self.cut = 0;
        self.scanned = 0;
        self.ends = EventEnds::new();
        std::mem::take(&mut self.bytes)
    }
}

/// Writes `event` (one event's bytes) with its data replaced by `data`: its
/// other lines (fields such as `id`, `event`, `retry`, and comments) as they
/// were, each ended by LF, then `data` as [`write_data`] writes it.
pub fn replace_data(out: &mut Vec<u8>, event: &[u8], data: &[u8]) {
    for line in lines(event) {
        if !line.is_empty() && !matches!(field(line), Some((b"data", _))) {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
    }
    write_data(out, data);
}
