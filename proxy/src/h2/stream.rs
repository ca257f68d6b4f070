//! One HTTP/2 stream seen as the data path's client connection (`tls::Conn::H2`), so that
//! the MCP logic (admission, routing, attempts, response rewriting, records) runs unchanged
//! for both fronts, as Apache's mod_http2 runs its HTTP/1.1 request processing on streams:
//! - reading gives the request as HTTP/1.1 bytes: a head made from the stream's pseudo-headers
//!   and fields (values `h2` already validated: no CR, LF or NUL can reach the head), then
//!   the DATA frames (as chunks when the client gave no `content-length`);
//! - writing takes the answer the data path writes as HTTP/1.1 and sends it as HEADERS and
//!   DATA frames: the head parsed once, the body de-chunked and sent as it comes, each piece
//!   waiting for the stream's and the connection's flow-control window (so a slow reader
//!   holds back its backend rather than piling up answer bytes here);
//! - a client's RST_STREAM is what [`H2Stream::peer_event`] reports as a close, so an SSE
//!   stream the client cancels closes its upstream connection like a client that leaves.

use std::io::{self, Write as _};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::http::ChunkedDecoder;
use crate::tls::Incoming;

/// Largest answer head accepted from the data path (its heads are small; a backend's are
/// bounded by the upstream reader).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// The answer's body framing, as the data path wrote it.
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilEnd,
}

/// Where the answer is.
enum Out {
    /// Its head is being collected.
    Head(Vec<u8>),
    /// Its head is sent; the body follows.
    Body(SendStream<Bytes>, Body),
    /// Sent to its end (or the stream is gone).
    Done,
}

/// One stream, read and written as an HTTP/1.1 request and answer.
pub struct H2Stream {
    /// The request as HTTP/1.1 bytes not yet read: the synthesized head, then DATA.
    inbound: Vec<u8>,
    ipos: usize,
    /// The request body, until it ends.
    body: Option<RecvStream>,
    /// The body is passed on as chunks (no `content-length` was given).
    chunked: bool,
    respond: Option<SendResponse<Bytes>>,
    out: Out,
    /// De-chunked answer bytes on their way out.
    scratch: Vec<u8>,
    /// The connection is TLS (for the forwarding headers).
    pub(crate) tls: bool,
}

impl H2Stream {
    /// A stream whose request head is `parts`; `body` is `None` when HEADERS ended the stream.
    pub(crate) fn new(
        parts: &http::request::Parts,
        body: Option<RecvStream>,
        respond: SendResponse<Bytes>,
        tls: bool,
        mut inbound: Vec<u8>,
    ) -> Self {
        inbound.clear();
        let chunked = request_head(parts, body.is_some(), &mut inbound);
        H2Stream {
            inbound,
            ipos: 0,
            body,
            chunked,
            respond: Some(respond),
            out: Out::Head(Vec::new()),
            scratch: Vec::new(),
            tls,
        }
    }

    /// Reads more of the request, appending to `buf`: 0 once it has all been read.
    pub(crate) async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        if self.ipos < self.inbound.len() {
            let rest = self.inbound.get(self.ipos..).unwrap_or_default();
            buf.extend_from_slice(rest);
            let n = rest.len();
            self.inbound.clear();
            self.ipos = 0;
            return (Ok(n), buf);
        }
        loop {
            let Some(body) = &mut self.body else {
                return (Ok(0), buf);
            };
            match body.data().await {
                Some(Ok(data)) => {
                    // The data path holds the body (capped by max_body_bytes): the window
                    // opens again as soon as the bytes are here.
                    let _ = body.flow_control().release_capacity(data.len());
                    if data.is_empty() {
                        continue;
                    }
                    let before = buf.len();
                    if self.chunked {
                        let _ = write!(buf, "{:x}\r\n", data.len());
                        buf.extend_from_slice(&data);
                        buf.extend_from_slice(b"\r\n");
                    } else {
                        buf.extend_from_slice(&data);
                    }
                    return (Ok(buf.len() - before), buf);
                }
                Some(Err(e)) => {
                    self.body = None;
                    return (Err(io::Error::other(e)), buf);
                }
                None => {
                    self.body = None;
                    if self.chunked {
                        buf.extend_from_slice(crate::http::LAST_CHUNK);
                        return (Ok(crate::http::LAST_CHUNK.len()), buf);
                    }
                    return (Ok(0), buf);
                }
            }
        }
    }

    /// Takes bytes of the HTTP/1.1 answer and sends them as frames.
    pub(crate) async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if let Out::Head(acc) = &mut self.out {
            acc.extend_from_slice(data);
            loop {
                let Some(n) = crate::http::head_len(acc) else {
                    if acc.len() > MAX_ANSWER_HEAD {
                        return Err(io::Error::other("answer head too large"));
                    }
                    return Ok(());
                };
                let head = parse_answer_head(acc.get(..n).unwrap_or_default())?;
                if head.response.status().is_informational() {
                    // 100 Continue: HTTP/2 clients do not wait for it; dropped.
                    acc.drain(..n);
                    continue;
                }
                let rest = acc.split_off(n);
                let Some(mut respond) = self.respond.take() else {
                    self.out = Out::Done;
                    return Err(io::ErrorKind::BrokenPipe.into());
                };
                let empty = matches!(head.body, Body::Length(0));
                let send = respond.send_response(head.response, empty);
                match send {
                    Ok(s) if !empty => self.out = Out::Body(s, head.body),
                    Ok(_) => {
                        self.out = Out::Done;
                        return Ok(());
                    }
                    Err(e) => {
                        self.out = Out::Done;
                        return Err(io::Error::other(e));
                    }
                }
                return self.body(&rest).await;
            }
        }
        self.body(data).await
    }

    /// Sends answer body bytes (as the data path framed them).
    async fn body(&mut self, data: &[u8]) -> io::Result<()> {
        let Out::Body(send, framing) = &mut self.out else {
            return Ok(());
        };
        let r = match framing {
            Body::Length(rem) => {
                let take = (*rem).min(data.len() as u64);
                *rem -= take;
                let end = *rem == 0;
                send_flow(send, data.get(..take as usize).unwrap_or_default(), end).await
            }
            Body::Chunked(dec) => {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                match dec.feed(data, |p| scratch.extend_from_slice(p)) {
                    Ok(_) => send_flow(send, &self.scratch, dec.is_done()).await,
                    Err(e) => Err(io::Error::other(e.0)),
                }
            }
            Body::UntilEnd => send_flow(send, data, false).await,
        };
        match &r {
            Ok(true) | Err(_) => self.out = Out::Done,
            Ok(false) => {}
        }
        r.map(|_| ())
    }

    /// After the data path is done with the stream: an answer whose end its framing does not
    /// mark (until the backend closed) ends here; a stream with no answer at all is reset.
    pub(crate) fn finish(&mut self) {
        match std::mem::replace(&mut self.out, Out::Done) {
            Out::Body(mut s, Body::UntilEnd) => {
                let _ = s.send_data(Bytes::new(), true);
            }
            // Cut short: the client must not take it for a whole answer.
            Out::Body(mut s, _) => s.send_reset(h2::Reason::INTERNAL_ERROR),
            Out::Head(_) => {
                if let Some(mut r) = self.respond.take() {
                    r.send_reset(h2::Reason::CANCEL);
                }
            }
            Out::Done => {}
        }
    }

    /// The request buffer, handed back to the core's free list.
    pub(crate) fn take_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inbound)
    }

    /// Waits until the client resets the stream (or the connection ends): the only event an
    /// answer in progress waits for (the request has been read).
    pub(crate) async fn peer_event(&mut self) -> Incoming {
        std::future::poll_fn(|cx| {
            let r = match (&mut self.out, &mut self.respond) {
                (Out::Body(s, _), _) => s.poll_reset(cx),
                (_, Some(r)) => r.poll_reset(cx),
                _ => return std::task::Poll::Ready(Incoming::Closed),
            };
            r.map(|_| Incoming::Closed)
        })
        .await
    }
}

/// Sends `data` on `send` as the flow-control windows allow, the last piece with END_STREAM
/// when `end`. Returns `end`.
async fn send_flow(send: &mut SendStream<Bytes>, mut data: &[u8], end: bool) -> io::Result<bool> {
    if data.is_empty() {
        if end {
            send.send_data(Bytes::new(), true)
                .map_err(io::Error::other)?;
        }
        return Ok(end);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(io::Error::other(e)),
            None => return Err(io::ErrorKind::BrokenPipe.into()),
        };
        if cap == 0 {
            continue;
        }
        let (now, rest) = data.split_at(cap.min(data.len()));
        send.send_data(Bytes::copy_from_slice(now), end && rest.is_empty())
            .map_err(io::Error::other)?;
        data = rest;
    }
    Ok(end)
}

/// The answer head parsed: what HEADERS carries, and how the body is framed.
struct AnswerHead {
    response: Response<()>,
    body: Body,
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2): they describe an HTTP/1.1 connection.
fn connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Parses the answer head the data path wrote (`head`: through its blank line).
fn parse_answer_head(head: &[u8]) -> io::Result<AnswerHead> {
    let bad = |what: &'static str| io::Error::new(io::ErrorKind::InvalidData, what);
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut r = httparse::Response::new(&mut storage);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(bad("malformed answer head")),
    }
    let status = r
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(bad("bad answer status"))?;
    let mut response = Response::new(());
    *response.status_mut() = status;
    let mut body = Body::UntilEnd;
    let mut chunked = false;
    for h in r.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = crate::http::has_token(h.value, b"chunked");
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = crate::http::parse_content_length(h.value).ok_or(bad("bad content-length"))?;
            body = Body::Length(n);
        }
        if connection_specific(name) {
            continue;
        }
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Err(bad("answer header not valid in HTTP/2"));
        };
        response.headers_mut().append(n, v);
    }
    if chunked {
        body = Body::Chunked(ChunkedDecoder::new());
    }
    if status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        body = Body::Length(0);
    }
    Ok(AnswerHead { response, body })
}

/// Writes the request as an HTTP/1.1 head into `out`. Returns whether its body (`has_body`)
/// is passed on as chunks: it is unless the client gave a `content-length`.
pub(crate) fn request_head(
    parts: &http::request::Parts,
    has_body: bool,
    out: &mut Vec<u8>,
) -> bool {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let _ = write!(out, "{} {target} HTTP/1.1\r\n", parts.method);
    let authority = parts.uri.authority();
    if let Some(a) = authority {
        let _ = write!(out, "host: {a}\r\n");
    }
    let mut length = false;
    for (name, value) in &parts.headers {
        if (authority.is_some() && name == http::header::HOST) || name == http::header::TE {
            continue;
        }
        length |= name == http::header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let chunked = has_body && !length;
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if !has_body && !length && parts.method == http::Method::POST {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    chunked
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parts(req: http::Request<()>) -> http::request::Parts {
        req.into_parts().0
    }

    #[test]
    fn a_request_becomes_an_http1_head() {
        let p = parts(
            http::Request::post("https://mcp.example:8443/mcp?x=1")
                .header("content-type", "application/json")
                .header("mcp-session-id", "abc")
                .header("te", "trailers")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        assert!(request_head(&p, true, &mut out));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /mcp?x=1 HTTP/1.1\r\nhost: mcp.example:8443\r\ncontent-type: \
             application/json\r\nmcp-session-id: abc\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let p = parts(
            http::Request::post("http://h/mcp")
                .header("content-length", "5")
                .body(())
                .unwrap(),
        );
        let mut out = Vec::new();
        assert!(!request_head(&p, true, &mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("content-length: 5\r\n\r\n"));
        // No body at all: a POST says so.
        let p = parts(http::Request::post("http://h/mcp").body(()).unwrap());
        let mut out = Vec::new();
        assert!(!request_head(&p, false, &mut out));
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("content-length: 0\r\n\r\n"));
        let p = parts(http::Request::get("http://h/mcp").body(()).unwrap());
        let mut out = Vec::new();
        request_head(&p, false, &mut out);
        assert_eq!(out, b"GET /mcp HTTP/1.1\r\nhost: h\r\n\r\n");
    }

    #[test]
    fn an_answer_head_loses_its_connection_fields() {
        let h = parse_answer_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: \
              chunked\r\nconnection: close\r\nkeep-alive: timeout=5\r\nmcp-session-id: s\r\n\r\n",
        )
        .unwrap();
        assert!(matches!(h.body, Body::Chunked(_)));
        let names: Vec<_> = h.response.headers().keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["content-type", "mcp-session-id"]);
        let h = parse_answer_head(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(matches!(h.body, Body::Length(0)));
        assert_eq!(h.response.status(), 202);
        assert!(parse_answer_head(b"HTTP/1.1 2000 X\r\n\r\n").is_err());
        assert!(parse_answer_head(b"garbage\r\n\r\n").is_err());
    }
}
