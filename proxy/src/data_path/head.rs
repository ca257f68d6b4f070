//! Stage 1: the request head. Read until the blank line (bounded in size and time: a
//! slowloris gets 408), parsed with `httparse` into ranges of the request's buffer, with the
//! headers the data path acts on picked out once. Refusals here close the connection: a head
//! that could not be read leaves no way to find the next request.

use crate::config::ProxyConfig;
use crate::data_path::request::{offset_of, ClientConn, Refusal, ReqHead, Stop};
use crate::http;

/// Why a request head was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Answered 431.
    TooManyHeaders,
    /// Answered 400 with this message.
    Bad(&'static str),
    /// Answered 501 with this message: a transfer coding mcplb does not implement.
    NotImplemented(&'static str),
}

impl HeadError {
    /// The answer to a head refused for this reason.
    pub fn refusal(&self) -> Refusal {
        match self {
            HeadError::TooManyHeaders => Refusal::invalid(431, "too many request headers"),
            HeadError::Bad(why) => Refusal::invalid(400, why),
            HeadError::NotImplemented(why) => Refusal::invalid(501, why),
        }
        .closing()
    }
}

/// Parses the complete head `buf[..len]` into `h` (whose header table is reused).
pub(crate) fn parse_head(
    buf: &[u8],
    len: usize,
    max_headers: usize,
    h: &mut ReqHead,
) -> Result<(), HeadError> {
    // Left uninitialised: initialising 512 headers wrote 16 KiB per request.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 512];
    let headers = storage.get_mut(..max_headers.min(512)).unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(buf.get(..len).unwrap_or(buf), headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Bad("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Bad("malformed request line"));
    };
    h.method = offset_of(buf, method.as_bytes());
    let t = offset_of(buf, target.as_bytes());
    let q = target.find('?').map_or(t.end, |i| t.start + i);
    h.path = t.start..q;
    h.query = q..t.end;
    h.minor = minor;
    h.headers.clear();
    h.content_length = None;
    h.chunked = false;
    h.conn_fields = false;
    h.forwarded_for = false;
    h.close = minor == 0;
    h.expect_continue = false;
    h.session = None;
    h.mcp_method = None;
    h.mcp_name = None;
    h.len = len;
    let mut codings = http::TransferCodings::default();
    for hd in req.headers.iter() {
        let name = hd.name.as_bytes();
        let value = hd.value;
        let (nr, vr) = (offset_of(buf, name), offset_of(buf, value));
        if name.eq_ignore_ascii_case(b"content-length") {
            let v =
                http::parse_content_length(value).ok_or(HeadError::Bad("bad content-length"))?;
            if h.content_length.is_some_and(|old| old != v) {
                return Err(HeadError::Bad("conflicting content-length"));
            }
            h.content_length = Some(v);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings.add(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            h.conn_fields |= http::connection_names_fields(value);
            if http::has_token(value, b"close") {
                h.close = true;
            } else if http::has_token(value, b"keep-alive") {
                h.close = false;
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            h.expect_continue = http::has_token(value, b"100-continue");
        } else if name.eq_ignore_ascii_case(b"mcp-session-id") {
            h.session = Some(vr.clone());
        } else if name.eq_ignore_ascii_case(b"mcp-method") {
            h.mcp_method = Some(vr.clone());
        } else if name.eq_ignore_ascii_case(b"mcp-name") {
            h.mcp_name = Some(vr.clone());
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for")
            || name.eq_ignore_ascii_case(b"forwarded")
        {
            h.forwarded_for = true;
        }
        h.headers.push((nr, vr));
    }
    // Only a lone `chunked` is decoded (RFC 9112 §6.1, §6.3): another coding before it would
    // be dropped silently, and a list that does not end in `chunked` has no knowable length.
    h.chunked = match codings.verdict() {
        http::TransferVerdict::Absent => false,
        http::TransferVerdict::Chunked => true,
        http::TransferVerdict::Unsupported => {
            return Err(HeadError::NotImplemented(
                "unsupported transfer-encoding (only chunked is implemented)",
            ))
        }
        http::TransferVerdict::Malformed => {
            return Err(HeadError::Bad("malformed transfer-encoding"))
        }
    };
    if h.chunked && h.content_length.is_some() {
        // Request smuggling guard (RFC 9112 §6.1): refuse rather than guess.
        return Err(HeadError::Bad("both content-length and transfer-encoding"));
    }
    Ok(())
}

/// Reads the head into `c.req.buf` (which may already hold its first bytes) and parses it.
pub(crate) async fn read_head(cfg: &ProxyConfig, c: &mut ClientConn) -> Result<(), Stop> {
    let deadline = crate::runtime::clock::monoio_now() + cfg.header_timeout;
    let head_len = loop {
        if let Some(n) = http::head_len(&c.req.buf) {
            break n;
        }
        if c.req.buf.len() > cfg.max_header_bytes {
            return Err(Stop::Refuse(
                Refusal::invalid(431, "request head too large").closing(),
            ));
        }
        let buf = std::mem::take(&mut c.req.buf);
        let read = monoio::time::timeout_at(deadline, c.stream.read_more(buf, super::READ_SIZE));
        let Ok((r, buf)) = read.await else {
            // Slow or stalled head (slowloris): answer if anything arrived, then close.
            return Err(Stop::Refuse(
                Refusal::invalid(408, "request head timed out").closing(),
            ));
        };
        c.req.buf = buf;
        match r {
            Ok(0) | Err(_) => return Err(Stop::Closed),
            Ok(_) => {}
        }
    };
    if head_len > cfg.max_header_bytes {
        return Err(Stop::Refuse(
            Refusal::invalid(431, "request head too large").closing(),
        ));
    }
    let mut head = std::mem::take(&mut c.req.head);
    let parsed = parse_head(&c.req.buf, head_len, cfg.max_headers, &mut head);
    c.req.head = head;
    if let Err(e) = parsed {
        return Err(Stop::Refuse(e.refusal()));
    }
    let h = &c.req.head;
    if h.path.start.abs_diff(h.query.end) > cfg.max_url_bytes {
        return Err(Stop::Refuse(
            Refusal::invalid(414, "request target too long").closing(),
        ));
    }
    Ok(())
}
