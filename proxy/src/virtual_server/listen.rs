//! The client's standalone GET stream on a virtual server: a GET stream is opened in each
//! member session that offers one, and their events reach the client as they come, merged
//! into one stream: notifications (each `*/list_changed` once, as its member sent it, and it
//! evicts the merged lists) and server-to-client requests with their ids wrapped, so the
//! client's answer finds the member. Ends when every member stream has ended, when the
//! client leaves (the member streams close with it), or at a shutdown (cleanly, as a plain
//! group's GET stream does).

use std::future::Future as _;
use std::io::Write as _;
use std::pin::Pin;
use std::task::Poll;

use futures_util::future::join_all;
use futures_util::stream::{FuturesUnordered, Stream as _};

use super::fanout;
use super::member::{self, Origin, ReachedParts};
use super::routed::{chunk, note_member_changes, relay_event, send};
use super::session::VirtualSession;
use super::SessionCx;
use crate::config::VirtualServer;
use crate::data_path::request::{ClientConn, Next, Refusal, Stop};
use crate::data_path::response::Framing;
use crate::data_path::upstream::Mirror;
use crate::http;
use crate::runtime::core::Core;
use crate::runtime::shutdown::ShutdownSignal;
use crate::tls::{Conn, Incoming};

/// One member's open GET stream.
struct MemberStream<'a> {
    framing: Framing,
    parser: protocol::sse::SseParser,
    parts: Option<ReachedParts<'a>>,
}

/// What woke the merged stream.
enum Woke {
    /// Member `m`'s read completed.
    Read(usize, Conn, std::io::Result<usize>, Vec<u8>),
    ClientLeft,
    Shutdown,
}

/// A member stream's pending read (the connection travels with it).
type PendingRead = (usize, Conn, std::io::Result<usize>, Vec<u8>);

/// The member streams opened for one client stream: per member (by index), its stream; the
/// connections to read from next; the events that came with the answer heads.
struct Opened<'a> {
    streams: Vec<Option<MemberStream<'a>>>,
    conns: Vec<(usize, Conn)>,
    early_events: Vec<u8>,
}

/// Serves the client's GET: 405 when no member offers a stream.
pub(super) async fn stream(
    core: &Core,
    c: &mut ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
) -> Result<Next, Stop> {
    let Some(s) = &cx.session else {
        return Err(Refusal::invalid(400, "Mcp-Session-Id header required").into());
    };
    let Opened {
        mut streams,
        conns,
        early_events,
    } = open_streams(core, c, vs, cx, s).await;
    let mut reads: FuturesUnordered<_> = conns
        .into_iter()
        .map(|(m, up)| read(m, up, core.take_buf()))
        .collect();
    if reads.is_empty() {
        return Err(
            Refusal::invalid(405, "no member of this virtual server offers a GET stream")
                .with_headers("allow: POST, DELETE\r\n".to_owned())
                .into(),
        );
    }
    let keep = !c.req.head.close;
    c.meta.sse = true;
    c.meta.status = 200;
    c.out.clear();
    let _ = write!(
        c.out,
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\
         x-accel-buffering: no\r\ntransfer-encoding: chunked\r\n{}\r\n",
        if keep { "" } else { "connection: close\r\n" }
    );
    chunk(&mut c.out, &early_events);
    if !send(c).await {
        return Ok(finish_all(core, &mut streams, Next::Close));
    }
    let mut shutdown = ShutdownSignal::new();
    let mut events = Vec::new();
    let mut body = Vec::new();
    loop {
        let woke = {
            let mut peer = std::pin::pin!(c.stream.peer_event());
            std::future::poll_fn(|cx| {
                if let Poll::Ready(Some((m, up, r, b))) = Pin::new(&mut reads).poll_next(cx) {
                    return Poll::Ready(Some(Woke::Read(m, up, r, b)));
                }
                if reads.is_empty() {
                    return Poll::Ready(None);
                }
                match peer.as_mut().poll(cx) {
                    // A client sends nothing on its GET stream but may close it.
                    Poll::Ready(Incoming::Bytes) | Poll::Pending => {}
                    Poll::Ready(_) => return Poll::Ready(Some(Woke::ClientLeft)),
                }
                if Pin::new(&mut shutdown).poll(cx).is_ready() {
                    return Poll::Ready(Some(Woke::Shutdown));
                }
                Poll::Pending
            })
            .await
        };
        let last_chunk = match woke {
            // Every member stream ended: so does the client's, cleanly.
            None => true,
            Some(Woke::ClientLeft) => return Ok(finish_all(core, &mut streams, Next::Close)),
            Some(Woke::Shutdown) => {
                c.out.clear();
                c.out.extend_from_slice(http::LAST_CHUNK);
                send(c).await;
                return Ok(finish_all(core, &mut streams, Next::Close));
            }
            Some(Woke::Read(m, up, r, buf)) => {
                events.clear();
                let got = (m, up, r, buf);
                if let Some((up, buf)) = on_read(core, &mut streams, got, &mut body, &mut events) {
                    reads.push(read(m, up, buf));
                }
                if !events.is_empty() {
                    c.out.clear();
                    chunk(&mut c.out, &events);
                    if !send(c).await {
                        return Ok(finish_all(core, &mut streams, Next::Close));
                    }
                }
                false
            }
        };
        if last_chunk {
            c.out.clear();
            c.out.extend_from_slice(http::LAST_CHUNK);
            let ok = send(c).await;
            let next = if ok && keep {
                Next::KeepAlive
            } else {
                Next::Close
            };
            return Ok(finish_all(core, &mut streams, next));
        }
    }
}

/// Opens a GET stream in each member session of `s` that has an id of its own (a stateless
/// member has no stream to offer); a member that answers anything but an SSE stream has none.
async fn open_streams<'a>(
    core: &'a Core,
    c: &ClientConn,
    vs: &VirtualServer,
    cx: &SessionCx,
    s: &VirtualSession,
) -> Opened<'a> {
    let which: Vec<usize> = s
        .members
        .iter()
        .filter(|ms| super::session::issued(&ms.sid))
        .map(|ms| usize::from(ms.member))
        .collect();
    let opened = {
        let req = &Origin::of(c, cx);
        join_all(which.iter().map(|&m| async move {
            let member = vs.members.get(m)?;
            let session = fanout::session_for(core, req, vs, cx, m).await.ok()??;
            let o = member::Outbound {
                member,
                session: Some((session.0, &session.1)),
                http_method: b"GET",
                body: b"",
                mirror: Mirror {
                    method: "",
                    name: None,
                    version: None,
                },
                read_only: true,
                timeout: member.timeout,
            };
            let a = member::send(core, req, &o).await.ok()?;
            Some((m, a))
        }))
        .await
    };
    let mut out = Opened {
        streams: (0..vs.members.len()).map(|_| None).collect(),
        conns: Vec::new(),
        early_events: Vec::new(),
    };
    for (m, a) in opened.into_iter().flatten() {
        if a.head.status != 200 || !a.head.sse {
            a.reached.finish(core, None, a.head.status);
            continue;
        }
        let mut ms = MemberStream {
            framing: a.head.framing(),
            parser: protocol::sse::SseParser::new(),
            parts: Some(a.reached),
        };
        let mut err = false;
        let mut body = Vec::new();
        crate::data_path::upstream::collect_step(&mut ms.framing, &a.early, &mut body, &mut err);
        ms.parser.push(&body);
        while let Some(ev) = ms.parser.next_event() {
            relay_event(m, &ev.data, &mut out.early_events);
            note_member_changes(core, ms.parts.as_ref().map(|p| p.gi), &ev.data);
        }
        if let Some(slot) = out.streams.get_mut(m) {
            *slot = Some(ms);
        }
        out.conns.push((m, a.up));
    }
    out
}

/// Takes in what member `m`'s read brought: its events (for the client) into `events`; what
/// the member's next read takes (its connection and buffer), or `None` when its stream ended
/// (its slot emptied, its connection closed).
fn on_read<'a>(
    core: &'a Core,
    streams: &mut [Option<MemberStream<'a>>],
    (m, up, r, mut buf): PendingRead,
    body: &mut Vec<u8>,
    events: &mut Vec<u8>,
) -> Option<(Conn, Vec<u8>)> {
    let Some(Some(ms)) = streams.get_mut(m) else {
        return None;
    };
    let mut err = false;
    body.clear();
    let done = match r {
        Ok(n) if n > 0 => {
            crate::data_path::upstream::collect_step(&mut ms.framing, &buf, body, &mut err).1
        }
        _ => true,
    };
    ms.parser.push(body);
    while let Some(ev) = ms.parser.next_event() {
        relay_event(m, &ev.data, events);
        note_member_changes(core, ms.parts.as_ref().map(|p| p.gi), &ev.data);
    }
    if done || err {
        core.give_buf(buf);
        if let Some(Some(ms)) = streams.get_mut(m).map(Option::take) {
            if let Some(p) = ms.parts {
                p.finish(core, None, 200);
            }
        }
        return None;
    }
    buf.clear();
    Some((up, buf))
}

/// Reads the next bytes of member `m`'s stream (the connection travels with the read).
async fn read(m: usize, mut up: Conn, buf: Vec<u8>) -> PendingRead {
    let (r, b) = up.read_more(buf, crate::data_path::READ_SIZE).await;
    (m, up, r, b)
}

/// Ends every member stream still open (their connections close) and says `next`.
fn finish_all(core: &Core, streams: &mut [Option<MemberStream<'_>>], next: Next) -> Next {
    for ms in streams.iter_mut().filter_map(Option::take) {
        if let Some(p) = ms.parts {
            p.finish(core, None, 200);
        }
    }
    next
}
