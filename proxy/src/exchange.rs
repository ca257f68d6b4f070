//! One request stream of a multiplexed front (HTTP/2, HTTP/3) seen as the data path's client
//! connection (`tls::Conn::H2`, `tls::Conn::H3`), so that the MCP logic (admission, routing,
//! attempts, response rewriting, records) runs unchanged for every front, as Apache's
//! mod_http2 runs its HTTP/1.1 request processing on streams:
//! - reading gives the request as HTTP/1.1 bytes: a head made from the stream's pseudo-headers
//!   and fields (values the protocol crate already validated: no CR, LF or NUL can reach the
//!   head), then the body's DATA (as chunks when the client gave no `content-length`);
//! - writing takes the answer the data path writes as HTTP/1.1 and sends it as the protocol's
//!   HEADERS and DATA: the head parsed once, the body de-chunked and sent as it comes, each
//!   piece waiting for the protocol's flow control (so a slow reader holds back its backend
//!   rather than piling up answer bytes here);
//! - the client's reset of the stream is what [`Exchange::peer_event`] reports as a close, so
//!   an SSE stream the client cancels closes its upstream connection like a client that leaves.
//!
//! What differs between the protocols is a [`Wire`]: how body bytes arrive and how the answer's
//! head and body leave.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};

use crate::data_path::request::ClientConn;
use crate::http::ChunkedDecoder;
use crate::runtime::core::Core;
use crate::tls::{Conn, Incoming};

/// Largest answer head accepted from the data path (its heads are small; a backend's are
/// bounded by the upstream reader).
const MAX_ANSWER_HEAD: usize = 64 * 1024;

/// How an answer ended, for [`Wire::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Its framing did not mark its end (the backend closed): it ends now, whole.
    Ended,
    /// Cut short: the client must not take it for a whole answer.
    CutShort,
    /// No answer was begun.
    NoAnswer,
}

/// One protocol's side of a stream.
#[allow(async_fn_in_trait)]
pub trait Wire {
    /// The next bytes of the request body; `None` at its end.
    async fn recv(&mut self) -> Option<io::Result<Bytes>>;
    /// Sends the answer's head; `end`: no body follows.
    async fn send_head(&mut self, head: Response<()>, end: bool) -> io::Result<()>;
    /// Sends answer body bytes; `end`: they are the last ones.
    async fn send_data(&mut self, data: &[u8], end: bool) -> io::Result<()>;
    /// Ends the stream after the data path is done with it.
    async fn finish(&mut self, how: Finish);
    /// Waits until the client resets the stream or its connection ends.
    async fn reset(&mut self);
}

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
    Body(Body),
    /// Sent to its end (or the stream is gone).
    Done,
}

/// One stream, read and written as an HTTP/1.1 request and answer.
pub struct Exchange<W> {
    /// The request as HTTP/1.1 bytes not yet read: the synthesized head.
    inbound: Vec<u8>,
    ipos: usize,
    /// The request body has not ended yet.
    body_open: bool,
    /// The body is passed on as chunks (no `content-length` was given).
    chunked: bool,
    out: Out,
    /// De-chunked answer bytes on their way out.
    scratch: Vec<u8>,
    /// The connection is TLS (for the forwarding headers).
    pub(crate) tls: bool,
    wire: W,
}

impl<W: Wire> Exchange<W> {
    /// A stream whose request head is `parts`; `has_body`: the request's HEADERS did not end
    /// the stream. `inbound`: a buffer for the synthesized head.
    pub(crate) fn new(
        parts: &http::request::Parts,
        has_body: bool,
        wire: W,
        tls: bool,
        mut inbound: Vec<u8>,
    ) -> Self {
        inbound.clear();
        let chunked = request_head(parts, has_body, &mut inbound);
        Exchange {
            inbound,
            ipos: 0,
            body_open: has_body,
            chunked,
            out: Out::Head(Vec::new()),
            scratch: Vec::new(),
            tls,
            wire,
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
        while self.body_open {
            match self.wire.recv().await {
                Some(Ok(data)) => {
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
                    self.body_open = false;
                    return (Err(e), buf);
                }
                None => {
                    self.body_open = false;
                    if self.chunked {
                        buf.extend_from_slice(crate::http::LAST_CHUNK);
                        return (Ok(crate::http::LAST_CHUNK.len()), buf);
                    }
                }
            }
        }
        (Ok(0), buf)
    }

    /// Takes bytes of the HTTP/1.1 answer and sends them as the protocol's frames.
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
                    // 100 Continue: HTTP/2 and HTTP/3 clients do not wait for it; dropped.
                    acc.drain(..n);
                    continue;
                }
                let rest = acc.split_off(n);
                let empty = matches!(head.body, Body::Length(0));
                self.out = Out::Done;
                self.wire.send_head(head.response, empty).await?;
                if !empty {
                    self.out = Out::Body(head.body);
                }
                return self.body(&rest).await;
            }
        }
        self.body(data).await
    }

    /// Sends answer body bytes (as the data path framed them).
    async fn body(&mut self, data: &[u8]) -> io::Result<()> {
        let Out::Body(framing) = &mut self.out else {
            return Ok(());
        };
        let r = match framing {
            Body::Length(rem) => {
                let take = (*rem).min(data.len() as u64);
                *rem -= take;
                let end = *rem == 0;
                let now = data.get(..take as usize).unwrap_or_default();
                self.wire.send_data(now, end).await.map(|_| end)
            }
            Body::Chunked(dec) => {
                self.scratch.clear();
                let scratch = &mut self.scratch;
                match dec.feed(data, |p| scratch.extend_from_slice(p)) {
                    Ok(_) => {
                        let end = dec.is_done();
                        if self.scratch.is_empty() && !end {
                            Ok(false)
                        } else {
                            self.wire.send_data(&self.scratch, end).await.map(|_| end)
                        }
                    }
                    Err(e) => Err(io::Error::other(e.0)),
                }
            }
            Body::UntilEnd => self.wire.send_data(data, false).await.map(|_| false),
        };
        match &r {
            Ok(true) | Err(_) => self.out = Out::Done,
            Ok(false) => {}
        }
        r.map(|_| ())
    }

    /// After the data path is done with the stream: an answer whose end its framing does not
    /// mark (until the backend closed) ends here; one cut short, or no answer at all, resets
    /// the stream.
    pub(crate) async fn finish(&mut self) {
        let how = match std::mem::replace(&mut self.out, Out::Done) {
            Out::Body(Body::UntilEnd) => Finish::Ended,
            Out::Body(_) => Finish::CutShort,
            Out::Head(_) => Finish::NoAnswer,
            Out::Done => return,
        };
        self.wire.finish(how).await;
    }

    /// The request buffer, handed back to the core's free list.
    pub(crate) fn take_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.inbound)
    }

    /// Waits until the client resets the stream (or the connection ends): the only event an
    /// answer in progress waits for (the request has been read).
    pub(crate) async fn peer_event(&mut self) -> Incoming {
        if matches!(self.out, Out::Done) {
            return Incoming::Closed;
        }
        self.wire.reset().await;
        Incoming::Closed
    }

    /// The protocol's side of the stream.
    #[cfg(test)]
    pub(crate) fn wire(&mut self) -> &mut W {
        &mut self.wire
    }
}

/// Runs one stream (`stream`: `Conn::H2` or `Conn::H3`) through the data path, then ends it
/// and hands its buffers back to the core.
pub(crate) async fn serve(core: &Rc<Core>, stream: Conn, peer: SocketAddr) {
    let mut c = ClientConn::new(stream, peer);
    c.req.buf = core.take_buf();
    c.req.head.headers = core.take_headers();
    let _ = crate::runtime::boxed(|| crate::data_path::handle_request(core, &mut c)).await;
    match &mut c.stream {
        Conn::H2(s) => {
            s.finish().await;
            core.give_buf(s.take_buf());
        }
        Conn::H3(s) => {
            s.finish().await;
            core.give_buf(s.take_buf());
        }
        Conn::Plain(_) | Conn::Server(_) | Conn::Client(_) => {}
    }
    crate::runtime::conn::give_back(core, &mut c);
}

/// The answer head parsed: what HEADERS carries, and how the body is framed.
struct AnswerHead {
    response: Response<()>,
    body: Body,
}

/// Fields HTTP/2 and HTTP/3 forbid (RFC 9113 §8.2.2, RFC 9114 §4.2): they describe an
/// HTTP/1.1 connection.
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
            return Err(bad("answer header not valid in HTTP/2 or HTTP/3"));
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

    /// A wire that records what it was asked to send.
    #[derive(Default)]
    struct Recorder {
        body: Vec<Bytes>,
        sent: Vec<(String, bool)>,
        finished: Option<Finish>,
    }

    impl Wire for Recorder {
        async fn recv(&mut self) -> Option<io::Result<Bytes>> {
            (!self.body.is_empty()).then(|| Ok(self.body.remove(0)))
        }
        async fn send_head(&mut self, head: Response<()>, end: bool) -> io::Result<()> {
            self.sent
                .push((format!("head {}", head.status().as_u16()), end));
            Ok(())
        }
        async fn send_data(&mut self, data: &[u8], end: bool) -> io::Result<()> {
            self.sent
                .push((String::from_utf8_lossy(data).into_owned(), end));
            Ok(())
        }
        async fn finish(&mut self, how: Finish) {
            self.finished = Some(how);
        }
        async fn reset(&mut self) {}
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_chunked_body_is_read_as_chunks_and_a_chunked_answer_sent_de_chunked() {
        run(async {
            let p = parts(http::Request::post("http://h/mcp").body(()).unwrap());
            let wire = Recorder {
                body: vec![Bytes::from_static(b"{\"a\""), Bytes::from_static(b":1}")],
                ..Recorder::default()
            };
            let mut x = Exchange::new(&p, true, wire, false, Vec::new());
            let mut buf = Vec::new();
            loop {
                let (r, b) = x.read_more(buf).await;
                buf = b;
                if r.unwrap() == 0 {
                    break;
                }
            }
            let text = String::from_utf8(buf).unwrap();
            assert!(
                text.ends_with("\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n"),
                "{text}"
            );
            // The answer arrives in pieces that split the head and the chunks anywhere.
            let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
            for piece in answer.chunks(7) {
                x.write_all(piece).await.unwrap();
            }
            x.finish().await;
            let w = x.wire();
            assert_eq!(w.sent.first().unwrap(), &("head 200".to_string(), false));
            let body: String = w.sent.iter().skip(1).map(|(s, _)| s.as_str()).collect();
            assert_eq!(body, "hello world");
            assert!(w.sent.last().unwrap().1, "the last piece ends the stream");
            assert_eq!(w.finished, None, "a whole answer needs no finishing");
        });
    }

    #[test]
    fn an_answer_cut_short_is_reset_and_one_until_close_ends_whole() {
        run(async {
            let p = parts(http::Request::get("http://h/mcp").body(()).unwrap());
            let mut x = Exchange::new(&p, false, Recorder::default(), false, Vec::new());
            x.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
                .await
                .unwrap();
            x.finish().await;
            assert_eq!(x.wire().finished, Some(Finish::CutShort));
            let mut x = Exchange::new(&p, false, Recorder::default(), false, Vec::new());
            x.write_all(b"HTTP/1.1 200 OK\r\n\r\nabc").await.unwrap();
            x.finish().await;
            assert_eq!(x.wire().finished, Some(Finish::Ended));
            let mut x = Exchange::new(&p, false, Recorder::default(), false, Vec::new());
            x.finish().await;
            assert_eq!(x.wire().finished, Some(Finish::NoAnswer));
        });
    }
}
