//! Stage 1: the request head. Read until the blank line (bounded in size and time: a
//! slowloris gets 408), parsed with `httparse` into ranges of the request's buffer, with the
//! headers the data path acts on picked out once. Refusals here close the connection: a head
//! that could not be read leaves no way to find the next request.

use crate::config::ProxyConfig;
use crate::data_path::request::{offset_of, ClientConn, Refusal, ReqHead, Stop};
use crate::http;
use crate::tls::Conn;

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
    let parsed = parse_prefix(buf.get(..len).unwrap_or(buf), max_headers, h)?;
    if parsed.is_none() {
        return Err(HeadError::Bad("incomplete request head"));
    }
    h.len = len;
    Ok(())
}

/// Parses the head at the start of `buf` (which may hold body bytes after it) into `h`:
/// `Ok(Some(len))` when it is complete (`h.len` is then `len`), `Ok(None)` when it is not.
fn parse_prefix(
    buf: &[u8],
    max_headers: usize,
    h: &mut ReqHead,
) -> Result<Option<usize>, HeadError> {
    // Left uninitialised: initialising 512 headers wrote 16 KiB per request.
    let mut storage = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; 512];
    let headers = storage.get_mut(..max_headers.min(512)).unwrap_or_default();
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
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
    Ok(Some(len))
}

/// The head parsed from what the first read brought, when that holds all of it (the usual
/// case: one parse, no separate search for the blank line first). `None` (anything else: a
/// partial or refused head, a bare-LF line end, leading empty lines, one above `max_bytes`)
/// leaves the answer to the search-then-parse path, which reads more or refuses as before;
/// where this answers, that path gives the same head (`internals::check_request_head`).
pub(crate) fn parse_whole(
    buf: &[u8],
    max_bytes: usize,
    max_headers: usize,
    h: &mut ReqHead,
) -> Option<()> {
    // httparse skips empty lines before the request line; `http::head_len` would stop at them.
    if matches!(buf.first(), None | Some(b'\r' | b'\n')) {
        return None;
    }
    let len = parse_prefix(buf, max_headers, h).ok()??;
    // Then the head ends at its first CRLF CRLF (no request line or header holds CR or LF),
    // where `http::head_len` finds its end, unless a line ended in a bare LF.
    (len <= max_bytes && buf.get(..len)?.ends_with(b"\r\n\r\n")).then_some(())
}

/// Reads the head into `c.req.buf` (which may already hold its first bytes) and parses it.
pub(crate) async fn read_head(cfg: &ProxyConfig, c: &mut ClientConn) -> Result<(), Stop> {
    // Set by the first read (a head already here needs no clock read).
    let mut deadline = None;
    // A request read into an empty buffer comes to a connection that turned readable (woken
    // from the idle set, or past its wait for a first request): its bytes are there, so the
    // first read is one `recv` that does not wait, with no timer armed and no ring operation
    // (on io_uring even a read that finds its bytes waiting arms the timer, and costs a pass
    // through the ring).
    let mut try_now = c.req.buf.is_empty();
    // The first bytes are parsed at once (see `parse_whole`); only a head that needs more
    // reads or a refusal goes through the search for its end.
    let mut first = true;
    let head_len = loop {
        if first && !c.req.buf.is_empty() {
            first = false;
            let mut head = std::mem::take(&mut c.req.head);
            let whole = parse_whole(&c.req.buf, cfg.max_header_bytes, cfg.max_headers, &mut head);
            c.req.head = head;
            if whole.is_some() {
                return check_target(cfg, &c.req.head);
            }
        }
        if let Some(n) = http::head_len(&c.req.buf) {
            break n;
        }
        if c.req.buf.len() > cfg.max_header_bytes {
            return Err(Stop::Refuse(
                Refusal::invalid(431, "request head too large").closing(),
            ));
        }
        if std::mem::take(&mut try_now) {
            if let Conn::Plain(s) = &c.stream {
                match crate::tls::recv_now(s, &mut c.req.buf, super::READ_SIZE) {
                    Some(Ok(0) | Err(_)) => return Err(Stop::Closed),
                    Some(Ok(_)) => continue,
                    None => {}
                }
            }
        }
        let buf = std::mem::take(&mut c.req.buf);
        let deadline = *deadline
            .get_or_insert_with(|| crate::runtime::clock::monoio_now() + cfg.header_timeout);
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
    check_target(cfg, &c.req.head)
}

/// Refuses a request target longer than `max_url_bytes`.
fn check_target(cfg: &ProxyConfig, h: &ReqHead) -> Result<(), Stop> {
    if h.path.start.abs_diff(h.query.end) > cfg.max_url_bytes {
        return Err(Stop::Refuse(
            Refusal::invalid(414, "request target too long").closing(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(buf: &[u8]) -> Option<ReqHead> {
        let mut h = ReqHead::default();
        parse_whole(buf, 8192, 100, &mut h).map(|()| h)
    }

    fn searched(buf: &[u8]) -> Option<ReqHead> {
        let len = http::head_len(buf)?;
        let mut h = ReqHead::default();
        parse_head(buf, len, 100, &mut h).ok().map(|()| h)
    }

    #[test]
    fn a_whole_head_with_its_body_parses_once_as_the_search_would() {
        let buf = b"POST /mcp HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\n{}";
        let h = whole(buf);
        assert!(h.is_some());
        assert_eq!(h, searched(buf));
        assert_eq!(h.map(|h| h.len), Some(buf.len() - 2));
    }

    #[test]
    fn what_the_search_would_answer_otherwise_is_left_to_it() {
        // Partial, leading empty lines (httparse skips them, the search stops at them), a
        // bare-LF line end, and a head above the size limit.
        assert_eq!(whole(b"POST /mcp HTTP/1.1\r\nhost: a\r\n"), None);
        assert_eq!(whole(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"), None);
        assert_eq!(whole(b"GET / HTTP/1.1\nhost: a\n\r\n"), None);
        let mut h = ReqHead::default();
        assert_eq!(
            parse_whole(b"GET / HTTP/1.1\r\n\r\n", 10, 100, &mut h),
            None
        );
        assert!(parse_whole(b"GET / HTTP/1.1\r\n\r\n", 18, 100, &mut h).is_some());
    }
}
