//! The bytes of `session::era_listen`: a 2026-07-28 client's `subscriptions/listen` served
//! from the GET stream of the 2025-era backend session mcplb holds for it
//! ([`listen_on_session`]), and a 2025-era client's GET stream served from a
//! `subscriptions/listen` mcplb opens on its 2026-07-28 backend ([`stream_for_client`]).
//! Both relay a long-lived SSE stream, notification by notification, with a keepalive comment
//! to the client when the backend is quiet (so a client that left is noticed).

use std::collections::HashMap;
use std::io::Write as _;
use std::rc::Rc;
use std::time::{Duration, Instant};

use protocol::sse::PendingEvents;

use crate::data_path::era_bridge::{
    self, era_answer, own_request, put_chunk, send, BridgeSession, Own,
};
use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::data_path::response::{self, Framing};
use crate::data_path::upstream::Held;
use crate::data_path::{reply, upstream};
use crate::runtime::core::Core;
use crate::session::era::{self, Declared};
use crate::session::era_listen::{self, StreamFrame};
use crate::tls::Conn;

/// How long a quiet stream waits before a keepalive comment goes to the client.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often a quiet stream looks whether a shutdown began (which ends it).
const TICK: Duration = Duration::from_secs(1);

/// Serves a 2026-07-28 client's `subscriptions/listen` (in `c`) from the GET stream of the
/// bridged session `s` on backend `bi`: its resource subscriptions sent in the session where
/// the backend offers them, the acknowledgment, then each asked-for notification, stamped with
/// the listen's id.
pub(crate) async fn listen_on_session(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    bi: usize,
    s: Rc<BridgeSession>,
) -> Next {
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let Some(asked) = era_listen::filter(c.req.body()) else {
        let r = Refusal::new(
            400,
            -32602,
            "subscriptions/listen needs params.notifications (an object)",
        );
        return reply::refuse(c, &r).await;
    };
    let mut honored = era_listen::honored(&asked, &s.discover);
    let mut subscribed = Vec::new();
    for (n, uri) in honored.uris.iter().enumerate() {
        let body = era_listen::subscribe_body(uri, n);
        let own = Own::Initialized(&s.version);
        let sid = s.sid.as_deref();
        let r = era_bridge::own_exchange(core, &c.req, gi, bi, group, backend, own, sid, &body);
        if matches!(r.await, Ok(a) if a.ok) {
            subscribed.push(uri.clone());
        }
    }
    honored.uris = subscribed;
    let req = own_request(
        backend,
        group,
        Own::Stream(&s.version),
        s.sid.as_deref(),
        b"",
        Some(&c.req),
    );
    let src = match open(core, c, gi, bi, req).await {
        Ok(src) => src,
        Err(status) => {
            let r = Refusal::new(
                502,
                -32603,
                "the 2025-era backend has no standalone (GET) stream for the session mcplb holds: \
                 subscriptions/listen cannot be served from it",
            );
            tracing::debug!(status, "era bridge: GET stream refused");
            return reply::refuse(c, &r).await;
        }
    };
    let id = c.req.id().unwrap_or(b"null").to_vec();
    let mut first = Vec::new();
    first.extend_from_slice(b"event: message\n");
    protocol::sse::write_data(&mut first, &era_listen::acknowledged(&id, &honored));
    let frame = |data: &[u8]| {
        // The session's change notifications evict the group's cached answers.
        crate::data_path::cache::note_message(core, Some(gi), data);
        match era_listen::for_listener(data, &honored, &id) {
            Some(msg) => Frame::Send(msg),
            None => Frame::Skip,
        }
    };
    match relay(core, c, src, first, frame, None, false).await {
        Relayed::Done(next) => next,
        // Without a session to watch, it never changes.
        Relayed::Changed => Next::Close,
    }
}

/// Most sessions whose resource subscriptions this process keeps (past it, the least recently
/// changed goes).
const MAX_SUBSCRIBED: usize = 4096;
/// Most resources one session subscribes to.
const MAX_URIS: usize = 64;

/// What one 2025-era client's session has subscribed to.
struct Subscribed {
    uris: Vec<String>,
    /// Counts the changes (a GET stream opened with an older set opens again).
    generation: u64,
    changed: Instant,
}

/// The resources each 2025-era client's session (mcplb's own, in front of a 2026-07-28
/// backend) has subscribed to, by its sealed id: its GET stream's listen asks for their
/// updates. A mutex, off the request path: taken by `resources/subscribe`/`unsubscribe`,
/// a session's DELETE, when such a GET stream opens, and once a second by each while it is
/// quiet. Per process: a subscription made through another replica is not seen here.
static SUBSCRIBED: std::sync::Mutex<Option<HashMap<Box<[u8]>, Subscribed>>> =
    std::sync::Mutex::new(None);

/// Subscribes (`on`) session `sid` to `uri`, or unsubscribes it: `Err` says why it could not.
pub(crate) fn subscribe(sid: &[u8], uri: &str, on: bool) -> Result<(), &'static str> {
    let Ok(mut held) = SUBSCRIBED.lock() else {
        return Err("mcplb's table of subscriptions failed");
    };
    let held = held.get_or_insert_with(HashMap::new);
    if on && !held.contains_key(sid) && held.len() >= MAX_SUBSCRIBED {
        let oldest = held
            .iter()
            .min_by_key(|(_, s)| s.changed)
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            held.remove(&k);
        }
    }
    let Some(s) = (match held.get_mut(sid) {
        Some(s) => Some(s),
        None if on => Some(held.entry(sid.into()).or_insert(Subscribed {
            uris: Vec::new(),
            generation: 0,
            changed: Instant::now(),
        })),
        None => None,
    }) else {
        return Ok(());
    };
    let had = s.uris.iter().position(|u| u == uri);
    match (on, had) {
        (true, None) if s.uris.len() >= MAX_URIS => {
            return Err("this session subscribes to too many resources (at most 64)")
        }
        (true, None) => s.uris.push(uri.to_string()),
        (false, Some(i)) => {
            s.uris.remove(i);
        }
        _ => return Ok(()),
    }
    s.generation += 1;
    s.changed = Instant::now();
    Ok(())
}

/// Forgets session `sid`'s subscriptions (it ended).
pub(crate) fn forget_subscriptions(sid: &[u8]) {
    if let Ok(mut held) = SUBSCRIBED.lock() {
        if let Some(h) = held.as_mut() {
            h.remove(sid);
        }
    }
}

/// Session `sid`'s subscriptions and their generation.
fn subscriptions(sid: &[u8]) -> (Vec<String>, u64) {
    SUBSCRIBED
        .lock()
        .ok()
        .and_then(|h| h.as_ref()?.get(sid).map(|s| (s.uris.clone(), s.generation)))
        .unwrap_or_default()
}

/// Serves a 2025-era client's GET stream (in `c`, in mcplb's session declaring `d`) from a
/// `subscriptions/listen` for every list change and the resources the session subscribed to,
/// sent to the 2026-07-28 backend `bi`; opened again when those change.
pub(crate) async fn stream_for_client(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    bi: usize,
    d: &Declared<'_>,
) -> Next {
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let sid = c.req.session_id().unwrap_or_default().to_vec();
    let frame = |data: &[u8]| {
        crate::data_path::cache::note_message(core, Some(gi), data);
        match era_listen::stream_frame(data) {
            StreamFrame::Forward => Frame::Send(data.to_vec()),
            StreamFrame::Skip => Frame::Skip,
            StreamFrame::End => Frame::End,
        }
    };
    let mut head_sent = false;
    loop {
        let (uris, generation) = subscriptions(&sid);
        let body = era_listen::listen_for_stream(d, &uris);
        let req = own_request(backend, group, Own::Listen, None, &body, Some(&c.req));
        let opened = open(core, c, gi, bi, req).await;
        let src = match opened {
            Ok(src) => src,
            Err(_) if head_sent => {
                // The client's stream was going on: it ends.
                c.out.clear();
                c.out.extend_from_slice(crate::http::LAST_CHUNK);
                send(c).await;
                return Next::Close;
            }
            Err(status) => {
                let message = if status == 0 {
                    "the 2026-07-28 server behind mcplb could not be reached for the \
                 subscriptions/listen that serves this stream"
                } else {
                    "the 2026-07-28 server behind mcplb refused the subscriptions/listen that \
                 serves this stream"
                };
                return reply::refuse(c, &Refusal::new(405, -32601, message)).await;
            }
        };
        if head_sent {
            // The client's stream goes on: the head made for the new listen is not sent.
            c.out.clear();
        }
        let watch = Some((sid.as_slice(), generation));
        let sent = std::mem::replace(&mut head_sent, true);
        match relay(core, c, src, Vec::new(), frame, watch, sent).await {
            Relayed::Done(next) => return next,
            Relayed::Changed => {}
        }
    }
}

/// How a relayed stream ended.
enum Relayed {
    /// Over: what to do with the client's connection.
    Done(Next),
    /// The session's subscriptions changed: its listen opens again (the client's stream,
    /// its head sent, stays open).
    Changed,
}

/// A stream being relayed: the connection, its framing, the de-chunked bytes not yet relayed.
struct Stream {
    /// The backend's group and index.
    gi: usize,
    bi: usize,
    up: Conn,
    framing: Framing,
    pending: PendingEvents,
    avail: Vec<u8>,
}

/// Sends `req` on a new connection to backend `bi` and reads its head: an SSE answer of 200
/// (its head, made for the client, in `c.out`), or the status it had (0: none).
async fn open(
    core: &Core,
    c: &mut ClientConn,
    gi: usize,
    bi: usize,
    req: Vec<u8>,
) -> Result<Stream, u16> {
    let Ok((mut up, _)) = core.upstream(gi, bi, true).await else {
        return Err(0);
    };
    let len = req.len();
    let (w, _) = up.write_range(req, 0..len).await;
    if w.is_err() {
        return Err(0);
    }
    let mut buf = Vec::new();
    let deadline = monoio::time::Instant::now() + core.shared.config.proxy.upstream_timeout;
    let Ok(head_len) = upstream::read_head(&mut up, &mut buf, Some(deadline)).await else {
        return Err(0);
    };
    let status = era::status_of(buf.get(..head_len).unwrap_or_default()).unwrap_or(0);
    if status != 200 {
        return Err(status);
    }
    let backend_tag = core.shared.config.backend(gi, bi).map_or(0, |b| b.tag);
    let mut a = era_answer(&mut up, buf, head_len, backend_tag, true);
    let Ok((head, head_len)) = response::final_head(core, c, &mut a).await else {
        return Err(status);
    };
    if !head.is_sse {
        c.out.clear();
        return Err(status);
    }
    let mut buf = a.buf;
    let avail = buf.split_off(head_len.min(buf.len()));
    Ok(Stream {
        gi,
        bi,
        up,
        framing: head.framing,
        pending: PendingEvents::new(),
        avail,
    })
}

/// What becomes of one message of the backend's stream.
enum Frame {
    /// This message goes to the client.
    Send(Vec<u8>),
    /// Nothing goes.
    Skip,
    /// The stream is over.
    End,
}

/// Relays the backend's stream `s` (its head, made for the client, in `c.out`, unless
/// `head_sent`) to the client: `first` (whole events) first, then each message as `frame`
/// makes it, until either side ends, or (`watch`: a session's id and the generation of the
/// subscriptions the stream was opened with) the session's subscriptions change.
async fn relay(
    core: &Core,
    c: &mut ClientConn,
    mut s: Stream,
    first: Vec<u8>,
    frame: impl Fn(&[u8]) -> Frame,
    watch: Option<(&[u8], u64)>,
    head_sent: bool,
) -> Relayed {
    c.meta.status = 200;
    c.meta.sse = true;
    if !head_sent {
        c.out
            .extend_from_slice(b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n");
    }
    if !first.is_empty() {
        put_chunk(c, &first);
    }
    if !c.out.is_empty() && !send(c).await {
        return Relayed::Done(Next::Close);
    }
    c.meta
        .first_event
        .get_or_insert_with(crate::runtime::clock::fresh_ns);
    let mut err = false;
    let mut quiet_since = Instant::now();
    let mut looked = Instant::now();
    loop {
        let (_, done) =
            upstream::collect_events_step(&mut s.framing, &s.avail, &mut s.pending, &mut err);
        s.avail.clear();
        let mut chunk = Vec::new();
        let mut end = err || done;
        while let Some(event) = s.pending.next_event() {
            let framed = frame(&era::event_data(event));
            match framed {
                Frame::Send(msg) => {
                    chunk.extend_from_slice(b"event: message\n");
                    protocol::sse::write_data(&mut chunk, &msg);
                }
                Frame::Skip => {}
                Frame::End => {
                    end = true;
                    break;
                }
            }
        }
        if !chunk.is_empty() {
            put_chunk(c, &chunk);
        }
        if end {
            c.out.extend_from_slice(crate::http::LAST_CHUNK);
            c.meta.upstream_done = Some(crate::runtime::clock::fresh_ns());
            send(c).await;
            // The stream's connection is not pooled; the client's closes with it.
            return Relayed::Done(Next::Close);
        }
        if !c.out.is_empty() && !send(c).await {
            return Relayed::Done(Next::Close);
        }
        if let Some((sid, generation)) = watch.filter(|_| looked.elapsed() >= TICK) {
            looked = Instant::now();
            if subscriptions(sid).1 != generation {
                // The session subscribed or unsubscribed: a listen with the new set.
                return Relayed::Changed;
            }
        }
        // What is left is one event's first bytes: past the bound the client's stream closes
        // without them (cut short, as when the backend's breaks; the connection goes too).
        if upstream::over_bound(core, s.gi, s.bi, s.pending.rest().len(), Held::Event) {
            return Relayed::Done(Next::Close);
        }
        let avail = std::mem::take(&mut s.avail);
        let read = s.up.read_more(avail, super::READ_SIZE);
        match monoio::time::timeout(TICK, read).await {
            Ok((Ok(n), b)) if n > 0 => s.avail = b,
            Ok(_) => {
                s.avail.clear();
                end = true;
            }
            Err(_) => {
                if crate::runtime::SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed) {
                    // A shutdown ends the stream now (the client listens again elsewhere).
                    end = true;
                } else if quiet_since.elapsed() >= KEEPALIVE {
                    // Quiet: a comment tells whether the client is still there.
                    quiet_since = Instant::now();
                    let _ = write!(c.out, "{:x}\r\n: keepalive\n\n\r\n", 13);
                    if !send(c).await {
                        return Relayed::Done(Next::Close);
                    }
                }
            }
        }
        if end {
            c.out.extend_from_slice(crate::http::LAST_CHUNK);
            send(c).await;
            return Relayed::Done(Next::Close);
        }
    }
}
