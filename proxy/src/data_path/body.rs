//! Stage 3: the request body, read after admission decided the request may come in. By
//! `Content-Length` or de-chunked, capped by `max_body_bytes` (413 before anything reaches a
//! backend), bounded in time (`body_timeout`: 408). `Expect: 100-continue` is answered here, once the request
//! is known to be wanted. When the body is complete the request owns exactly its bytes
//! (pipelined ones move to the connection's `pending` buffer).

use crate::config::ProxyConfig;
use crate::data_path::request::{ClientConn, Refusal, Stop};
use crate::http::ChunkedDecoder;

fn too_large() -> Stop {
    Stop::Refuse(Refusal::invalid(413, "request body too large").closing())
}

fn timed_out() -> Stop {
    Stop::Refuse(Refusal::invalid(408, "request body timed out").closing())
}

/// Reads the body of the request whose head is in `c.req` and marks the request complete.
/// Returns the number of bytes the request took on the wire.
pub(crate) async fn read_body(cfg: &ProxyConfig, c: &mut ClientConn) -> Result<usize, Stop> {
    let h = &c.req.head;
    let (head_len, chunked, declared) = (h.len, h.chunked, h.content_length);
    if h.expect_continue && h.has_body() {
        if declared.is_some_and(|n| n > cfg.max_body_bytes as u64) {
            return Err(too_large());
        }
        c.out.clear();
        c.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let out = std::mem::take(&mut c.out);
        let len = out.len();
        let (w, out) = c.stream.write_range(out, 0..len).await;
        c.out = out;
        c.out.clear();
        if w.is_err() {
            return Err(Stop::Closed);
        }
    }
    // The whole body within `body_timeout` once the head is in (a slow drip of a body holds a
    // connection and its buffer no longer than a slow head does).
    let deadline = crate::runtime::clock::monoio_now() + cfg.body_timeout;
    let end = if chunked {
        read_chunked(cfg, c, head_len, deadline).await?
    } else {
        let n = declared.unwrap_or(0);
        if n > cfg.max_body_bytes as u64 {
            return Err(too_large());
        }
        let end = head_len + n as usize;
        // The buffer grows with the bytes that arrive (each read makes room for at most
        // READ_SIZE more), never to the declared length up front: a client that declares
        // 4 MiB and sends nothing costs no more than one that declares 4 KiB.
        while c.req.buf.len() < end {
            read_some(c, deadline).await?;
        }
        c.req.set_body_in_buf(head_len..end);
        end
    };
    c.complete_request(end);
    Ok(end)
}

/// De-chunks the body after the head into `c.req.decoded`; returns where the chunked body
/// ends in `c.req.buf`.
async fn read_chunked(
    cfg: &ProxyConfig,
    c: &mut ClientConn,
    head_len: usize,
    deadline: monoio::time::Instant,
) -> Result<usize, Stop> {
    let mut dec = ChunkedDecoder::new();
    let mut pos = head_len;
    c.req.decoded.clear();
    loop {
        let r = {
            let decoded = &mut c.req.decoded;
            let raw = c.req.buf.get(pos..).unwrap_or_default();
            dec.feed(raw, |d| decoded.extend_from_slice(d))
        };
        match r {
            Ok(n) => pos += n,
            Err(_) => {
                return Err(Stop::Refuse(
                    Refusal::new(400, -32700, "bad chunked body").closing(),
                ))
            }
        }
        if c.req.decoded.len() > cfg.max_body_bytes {
            return Err(too_large());
        }
        if dec.is_done() {
            c.req.set_body_decoded();
            return Ok(pos);
        }
        // Keep the head, drop chunk bytes already decoded, read more.
        c.req.buf.drain(head_len..pos);
        pos = head_len;
        read_some(c, deadline).await?;
    }
}

/// Reads more of the request into `c.req.buf` before `deadline`.
async fn read_some(c: &mut ClientConn, deadline: monoio::time::Instant) -> Result<(), Stop> {
    let buf = std::mem::take(&mut c.req.buf);
    let read = monoio::time::timeout_at(deadline, c.stream.read_more(buf, super::READ_SIZE));
    let Ok((r, buf)) = read.await else {
        return Err(timed_out());
    };
    c.req.buf = buf;
    match r {
        Ok(0) | Err(_) => Err(Stop::Closed),
        Ok(_) => Ok(()),
    }
}
