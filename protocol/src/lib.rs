//! Zero-copy MCP / JSON-RPC framing for mcplb: bytes in, borrowed views out.
//!
//! No I/O, no clock, no runtime: [`parse_message`] reads the routing fields of
//! one JSON-RPC message, [`SseParser`] and [`SseBoundary`] read or count
//! `text/event-stream` events, and [`LineFramer`] splits stdio traffic into
//! newline-delimited messages.

#![warn(missing_docs)]

pub mod jsonrpc;
pub mod lines;
pub mod method;
pub mod sse;

pub use jsonrpc::{
    parse_message, parse_message_with_depth, response_error_code, response_outcome, Envelope,
    FrameError, FrameErrorKind, JsonStr, MessageKind, MAX_DEPTH,
};
pub use lines::{LineError, LineFramer};
pub use method::Method;
pub use sse::{
    event_data, event_data_in, event_end, EventEnds, SseBoundary, SseError, SseEvent, SseParser,
};
