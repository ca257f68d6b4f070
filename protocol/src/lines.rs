//! Newline framing for stdio transports: MCP over stdio is one JSON-RPC
//! message per line, with no embedded newlines.
//!
//! Memory stays bounded by the line limit plus one pushed chunk: a line that
//! grows past the limit is dropped as it arrives, reported once, and skipped
//! up to its newline.

use std::collections::VecDeque;

/// Why a line could not be returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LineError {
    /// The line was longer than the framer's `max_line`; it was skipped up to
    /// and including its newline. Answer with a too-large error or drop it.
    #[error("line longer than the configured limit; it was skipped")]
    TooLong,
}

/// Splits a byte stream into lines ending in `\n` (a `\r` before it is
/// stripped too).
#[derive(Debug)]
pub struct LineFramer {
    max_line: usize,
    buf: Vec<u8>,
    /// Start of the first line not yet returned.
    start: usize,
    /// Where to search for the next newline (bytes before it have none).
    scanned: usize,
    /// Positions in `buf` where a dropped too-long line must be reported.
    too_long_at: VecDeque<usize>,
    /// Start of the line not yet terminated by a newline.
    line_start: usize,
    /// Dropping bytes until the next newline.
    discarding: bool,
}

impl LineFramer {
    /// A framer that rejects lines longer than `max_line` bytes (terminator
    /// not counted).
    pub fn new(max_line: usize) -> Self {
        Self {
            max_line,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            too_long_at: VecDeque::new(),
            line_start: 0,
            discarding: false,
        }
    }

    /// Appends received bytes; complete lines are then read with
    /// [`next_line`](Self::next_line).
    pub fn push(&mut self, mut bytes: &[u8]) {
        if self.discarding {
            match memchr::memchr(b'\n', bytes) {
                None => return,
                Some(nl) => {
                    self.discarding = false;
                    bytes = bytes.get(nl + 1..).unwrap_or_default();
                }
            }
        }
        self.compact();
        let old_len = self.buf.len();
        self.buf.extend_from_slice(bytes);
        if let Some(i) = memchr::memrchr(b'\n', bytes) {
            self.line_start = old_len + i + 1;
        }
        // Bound the unterminated tail; complete lines are checked on return.
        // One extra byte allows for a `\r` that belongs to the terminator.
        let tail_len = self.buf.len().saturating_sub(self.line_start);
        if tail_len > self.max_line.saturating_add(1) {
            self.buf.truncate(self.line_start);
            self.scanned = self.scanned.min(self.line_start);
            self.too_long_at.push_back(self.line_start);
            self.discarding = true;
        }
    }

    /// Drops returned lines from the front of the buffer.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.drain(..self.start);
        self.scanned = self.scanned.saturating_sub(self.start);
        self.line_start = self.line_start.saturating_sub(self.start);
        for at in &mut self.too_long_at {
            *at = at.saturating_sub(self.start);
        }
        self.start = 0;
    }

    /// The next complete line without its `\n` or `\r\n`, an error for a line
    /// that was too long, or `None` until more bytes are pushed.
    pub fn next_line(&mut self) -> Option<Result<&[u8], LineError>> {
        if self.too_long_at.front() == Some(&self.start) {
            self.too_long_at.pop_front();
            return Some(Err(LineError::TooLong));
        }
        // A reported drop ahead bounds the search: the line before it ends there.
        let limit = self.too_long_at.front().copied().unwrap_or(self.buf.len());
        let from = self.scanned.max(self.start);
        let window = self.buf.get(from..limit)?;
        let Some(i) = memchr::memchr(b'\n', window) else {
            self.scanned = limit;
            return None;
        };
        let nl = from + i;
        let start = self.start;
        self.start = nl + 1;
        self.scanned = self.start;
        let mut line = self.buf.get(start..nl)?;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() > self.max_line {
            return Some(Err(LineError::TooLong));
        }
        Some(Ok(line))
    }

    /// Bytes buffered and not yet returned (the partial line included).
    pub fn buffered(&self) -> usize {
        self.buf.len().saturating_sub(self.start)
    }
}
