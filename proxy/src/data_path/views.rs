//! The data path's head handling behind plain views, for `crate::internals`: the same functions
//! the workers call. Not an API.

use crate::data_path::head::{parse_head, parse_whole, HeadError};
use crate::data_path::response::{self, Framing, HeadKind};
use crate::http::{self, ChunkedDecoder};
use crate::session::{Owner, SessionSealer};

/// What the request-head parse made of a head: ranges into the buffer it was given.
pub use crate::data_path::request::ReqHead as RequestHead;

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadRefusal {
    /// Answered 431.
    TooManyHeaders,
    /// Answered 400 with this message.
    Bad(&'static str),
    /// Answered 501 with this message.
    NotImplemented(&'static str),
}

/// The workers' request-head parse of the head at the start of `buf` (the whole-buffer parse
/// first, as they try it on a request's first bytes, then the search for the head's end with
/// `http::head_len` and its parse); `None` while no complete head is there.
pub fn parse_request_head(
    buf: &[u8],
    max_headers: usize,
) -> Option<Result<RequestHead, HeadRefusal>> {
    let mut h = RequestHead::default();
    if parse_whole(buf, usize::MAX, max_headers, &mut h).is_some() {
        return Some(Ok(h));
    }
    parse_request_head_searched(buf, max_headers)
}

/// [`parse_request_head`] without the whole-buffer parse: the head's end found with
/// `http::head_len`, then parsed (what the workers do with a head that came in pieces).
pub fn parse_request_head_searched(
    buf: &[u8],
    max_headers: usize,
) -> Option<Result<RequestHead, HeadRefusal>> {
    let len = http::head_len(buf)?;
    let mut h = RequestHead::default();
    Some(match parse_head(buf, len, max_headers, &mut h) {
        Ok(()) => Ok(h),
        Err(HeadError::TooManyHeaders) => Err(HeadRefusal::TooManyHeaders),
        Err(HeadError::Bad(why)) => Err(HeadRefusal::Bad(why)),
        Err(HeadError::NotImplemented(why)) => Err(HeadRefusal::NotImplemented(why)),
    })
}

/// How the body after a response head is framed.
#[derive(Debug)]
pub enum ResponseFraming {
    None,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

/// What the response-head rewrite made of an upstream head.
#[derive(Debug)]
pub enum ResponseHead {
    /// A 1xx answer the workers skip.
    Interim,
    /// The final head; the client's head (without framing lines and the blank line) was
    /// written to `out`.
    Final {
        status: u16,
        new_session: bool,
        framing: ResponseFraming,
        up_close: bool,
        is_sse: bool,
    },
}

/// The workers' rewrite of an upstream response head `head` (through its blank line) for
/// the client, written to `out`. `owner` is sealed into new session ids; `current` is the
/// sealed id the client sent and the backend's id inside it.
pub fn rewrite_response_head(
    sealer: &SessionSealer,
    owner: Option<&Owner>,
    head: &[u8],
    backend_tag: u32,
    current: Option<(&[u8], &[u8])>,
    out: &mut Vec<u8>,
) -> Result<ResponseHead, &'static str> {
    Ok(
        match response::rewrite_response_head(sealer, owner, head, backend_tag, current, out)? {
            HeadKind::Interim => ResponseHead::Interim,
            HeadKind::Final(h) => ResponseHead::Final {
                status: h.status,
                new_session: h.new_session,
                framing: match h.framing {
                    Framing::None => ResponseFraming::None,
                    Framing::Length(n) => ResponseFraming::Length(n),
                    Framing::Chunked(d) => ResponseFraming::Chunked(d),
                    Framing::UntilClose => ResponseFraming::UntilClose,
                },
                up_close: h.up_close,
                is_sse: h.is_sse,
            },
        },
    )
}
