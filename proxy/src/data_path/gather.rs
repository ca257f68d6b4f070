//! An SSE answer's head goes out with its first event.
//!
//! A server that answers a request with an SSE stream writes its head, then each event, then
//! the stream's end: three writes for a `tools/call` answered by the Python SDK, a few
//! microseconds apart. What the backend has already written when the head is read is taken
//! without waiting (`response::take_waiting`) and sent with it. When the head came alone, it
//! is not sent alone: a client can do nothing with the head of an SSE answer but wait for its
//! first event, and on loopback or a LAN a send is the costly part of a small answer (the
//! kernel's transmit, and the client's receive and wake-up, per send). So the head waits for
//! the answer's first body bytes, and goes out with them and whatever already follows them
//! (the stream's end, most often, taken as `take_waiting` takes it behind a head) in one send.
//! No body byte ever waits: from there the stream is forwarded as it comes.
//!
//! Only answers to requests that one response answers are held (`initialize`, `tools/call`
//! and the other methods mcplb names): a `subscriptions/listen` stream, or any method mcplb
//! does not know, may stay open with no event for a long time, and its client may want to see
//! the stream open; a standalone GET stream likewise. `proxy.sse_head_waits = false` sends
//! every head at once.
//!
//! No timer bounds the wait: a timer per answer cost more than the send it saves (measured:
//! with monoio's timer wheel a 1 ms window made the worker's ring wait 0.9 times a call
//! instead of 0.01 and arm 1.0 more polls a call, `bench/results/2026-12-07-gather.md`). A
//! client's own time limits see no difference: it receives nothing it can use before the
//! first event either way.

use crate::data_path::request::ClientConn;
use crate::data_path::response::{next_event, step_read, take_waiting, Framing, Waited, Watch};
use crate::runtime::core::Core;
use crate::tls::Conn;

/// How holding the head ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gathered {
    /// The body goes on: it is forwarded as it comes from here.
    Open,
    /// The body ended; `extra`: bytes followed it on the upstream connection.
    Done { extra: bool },
    /// The upstream connection ended or broke the body's framing, or the client left: what
    /// was gathered goes out (to a client still there), then the client connection closes.
    Cut,
}

/// Reads an answer's first body bytes (its head came alone), then what already waits behind
/// them without waiting again, and appends the body bytes, as the client gets them, to
/// `c.out` (after the head). `ubuf` is the upstream read buffer (its contents are no longer
/// needed); `tap` sees the de-chunked bytes as `response::stream_body` shows them to it.
pub(crate) async fn first_bytes(
    core: &Core,
    c: &mut ClientConn,
    up: &mut Conn,
    ubuf: &mut Vec<u8>,
    framing: &mut Framing,
    tap: Option<&mut super::cache::Tap<'_>>,
) -> Gathered {
    ubuf.clear();
    // The client is watched as a stream's is: one that leaves while the head waits (a long
    // tool call) is noticed at once and the upstream connection closes.
    let mut watch = Watch {
        client: true,
        shutdown: None,
    };
    match next_event(up, std::mem::take(ubuf), &mut c.stream, &mut watch).await {
        Waited::Read(Ok(n), b) if n > 0 => *ubuf = b,
        Waited::Read(_, b) => {
            *ubuf = b;
            return Gathered::Cut;
        }
        _ => {
            // The upstream read went with the wait, and its buffer with it.
            *ubuf = core.take_buf();
            return Gathered::Cut;
        }
    }
    // What already follows (the stream's end, most often) is taken without waiting, as
    // behind the head; EOF or an error is left for the stream's next read, which sees it again.
    if let Conn::Plain(s) = &*up {
        take_waiting(s, ubuf, 0, framing);
    }
    let Some((take, done)) = step_read(c, framing, tap, ubuf, true) else {
        return Gathered::Cut;
    };
    c.out
        .extend_from_slice(ubuf.get(..take).unwrap_or_default());
    if done {
        Gathered::Done {
            extra: take < ubuf.len(),
        }
    } else {
        Gathered::Open
    }
}
