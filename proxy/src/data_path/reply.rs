//! Answers mcplb makes itself, written to the client: JSON-RPC error objects with the request's
//! id (where it was read) and the right status, and small documents. The one place that
//! decides whether the connection survives an answer made before the body was read, and
//! whether its close must linger.

use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::http;

/// Sends `c.out` to the client and says what next.
pub(crate) async fn send_out(c: &mut ClientConn, next: Next) -> Next {
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    let (r, out) = c.stream.write_range(out, 0..len).await;
    c.meta.bytes_out += len as u64;
    c.out = out;
    c.out.clear();
    match r {
        Ok(()) => next,
        Err(_) => Next::Close,
    }
}

/// What becomes of the connection after an answer to the current request: it closes when the
/// client asked, the refusal says so (`forced`), or the request's body was never read (it
/// would be taken for the next request). A close lingers ([`Next::Linger`]) when request
/// bytes may still be coming: a body not read, a head refused (`forced` before the request
/// was read), bytes of a next request. When it stays open and the body was not read (there
/// was none), the head's bytes are dropped so the next request starts where it should.
pub(crate) fn must_close(c: &mut ClientConn, forced: bool) -> Next {
    let unread = !c.req.is_complete();
    let has_body = c.req.head.has_body();
    if !(forced || c.req.head.close || (unread && has_body)) {
        if unread {
            let end = c.req.head.len;
            c.complete_request(end);
        }
        return Next::KeepAlive;
    }
    if (unread && (has_body || forced)) || !c.pending.is_empty() {
        Next::Linger
    } else {
        Next::Close
    }
}

/// Answers with `r` as a JSON-RPC error object carrying the request's id where known.
pub(crate) async fn refuse(c: &mut ClientConn, r: &Refusal) -> Next {
    let next = must_close(c, r.close);
    let close = next != Next::KeepAlive;
    c.out.clear();
    let answer = http::JsonRpcErrorAnswer {
        status: r.status,
        id: c.req.id(),
        code: r.code,
        message: r.message,
        close,
        headers: r.headers.as_deref().unwrap_or(""),
        data: r.data.as_deref(),
    };
    http::write_jsonrpc_error(&mut c.out, &answer);
    c.meta.code = r.code;
    c.meta.rpc_code = Some(i64::from(r.code));
    c.meta.status = r.status;
    c.meta.by_proxy = true;
    send_out(c, next).await
}

/// Answers 200 with a JSON document (`extra`: more header lines, each ending in CRLF).
pub(crate) async fn document(c: &mut ClientConn, status: u16, body: &[u8], extra: &str) -> Next {
    use std::io::Write as _;
    let next = must_close(c, false);
    let close = next != Next::KeepAlive;
    c.out.clear();
    let _ = write!(
        c.out,
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}{}\r\n",
        http::reason(status),
        body.len(),
        if close { "connection: close\r\n" } else { "" },
    );
    c.out.extend_from_slice(body);
    c.meta.status = status;
    c.meta.by_proxy = true;
    send_out(c, next).await
}

/// Answers 202 with no body (a notification, or a client's answer mcplb takes itself).
pub(crate) async fn accepted(c: &mut ClientConn) -> Next {
    let next = must_close(c, false);
    c.out.clear();
    c.out
        .extend_from_slice(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n");
    if next != Next::KeepAlive {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.meta.status = 202;
    c.meta.by_proxy = true;
    send_out(c, next).await
}

/// Writes the head of an SSE answer mcplb streams itself (chunked; `close`: the connection
/// ends with it) into `c.out`, cleared first.
pub(crate) fn sse_head(c: &mut ClientConn, close: bool) {
    c.out.clear();
    c.out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\ntransfer-encoding: chunked\r\n",
    );
    if close {
        c.out.extend_from_slice(b"connection: close\r\n");
    }
    c.out.extend_from_slice(b"\r\n");
    c.meta.status = 200;
    c.meta.sse = true;
}
