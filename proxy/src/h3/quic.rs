//! The `h3` crate's QUIC traits (`h3::quic`) over a `quinn_proto::Connection` that a worker's
//! endpoint driver ([`super::endpoint`]) feeds with datagrams and timeouts.
//!
//! Why an adapter of our own: `h3-quinn` implements these traits over `quinn`, the async
//! shell around quinn-proto, which needs a tokio-like runtime with `Send` tasks, timers and
//! sockets (its `Runtime` trait); a monoio worker runs `!Send` tasks on its own ring. So the
//! sans-IO state machine is driven here directly: the stream handles below call quinn-proto's
//! stream methods on the shared connection state, park their task's waker per stream, and ask
//! the driver to transmit ([`ConnState::kick`]); the driver turns quinn-proto's events back
//! into wake-ups ([`ConnState::on_event`]). Everything lives on one core (`Rc`, `RefCell`).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, WriteBuf};
use quinn_proto::{
    ConnectionError, ConnectionHandle, Dir, Event, ReadError, ReadableError, StreamEvent, StreamId,
    VarInt, WriteError,
};

/// What the driver and the connection's tasks share about one QUIC connection.
pub(crate) struct ConnState {
    pub(crate) conn: quinn_proto::Connection,
    pub(crate) handle: ConnectionHandle,
    readers: HashMap<StreamId, Waker>,
    writers: HashMap<StreamId, Waker>,
    /// Tasks waiting for the peer to stop or reset a stream (an answer in progress).
    watchers: HashMap<StreamId, Waker>,
    accept_bi: Option<Waker>,
    accept_uni: Option<Waker>,
    openers: Vec<Waker>,
    /// Why the connection ended, once it has.
    pub(crate) lost: Option<ConnectionError>,
    /// Queued for the driver's next pass.
    queued: bool,
    kick: Rc<Kick>,
    /// The flood guard, read by the driver after each datagram.
    pub(crate) guard: super::guard::Guard,
    /// Unidirectional streams the client opened (HTTP/3 needs three), for the guard.
    pub(crate) uni_streams: u64,
    /// The client address's slot of `max_connections_per_ip`, held until the driver forgets
    /// the connection (drained, or its endpoint replaced).
    pub(crate) permit: Option<ratelimit::OwnedPermit>,
}

/// The driver's doorbell: connections that need a pass (transmit, timers, events).
#[derive(Default)]
pub(crate) struct Kick {
    pub(crate) dirty: RefCell<Vec<ConnectionHandle>>,
    rung: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Kick {
    /// Wakes the driver.
    pub(crate) fn ring(&self) {
        self.rung.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Waits until rung (returns at once when it was rung since the last wait).
    pub(crate) async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.rung.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

/// Shared handle on one connection's state.
pub(crate) type Shared = Rc<RefCell<ConnState>>;

impl ConnState {
    pub(crate) fn new(
        conn: quinn_proto::Connection,
        handle: ConnectionHandle,
        kick: Rc<Kick>,
        guard: super::guard::Guard,
        permit: Option<ratelimit::OwnedPermit>,
    ) -> Self {
        ConnState {
            conn,
            handle,
            readers: HashMap::new(),
            writers: HashMap::new(),
            watchers: HashMap::new(),
            accept_bi: None,
            accept_uni: None,
            openers: Vec::new(),
            lost: None,
            queued: false,
            kick,
            guard,
            uni_streams: 0,
            permit,
        }
    }

    /// Asks the driver for a pass over this connection (what a stream operation changed may
    /// need sending).
    pub(crate) fn kick(&mut self) {
        if !self.queued {
            self.queued = true;
            self.kick.dirty.borrow_mut().push(self.handle);
        }
        self.kick.ring();
    }

    /// The driver took this connection off its queue.
    pub(crate) fn dequeued(&mut self) {
        self.queued = false;
    }

    /// One of quinn-proto's application events: wakes whoever waits for it.
    pub(crate) fn on_event(&mut self, ev: Event) {
        let wake = |w: Option<Waker>| {
            if let Some(w) = w {
                w.wake();
            }
        };
        match ev {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => wake(self.accept_bi.take()),
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => wake(self.accept_uni.take()),
            Event::Stream(StreamEvent::Readable { id }) => wake(self.readers.remove(&id)),
            Event::Stream(StreamEvent::Writable { id })
            | Event::Stream(StreamEvent::Finished { id }) => wake(self.writers.remove(&id)),
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                wake(self.writers.remove(&id));
                wake(self.watchers.remove(&id));
            }
            Event::Stream(StreamEvent::Available { .. }) => {
                for w in self.openers.drain(..) {
                    w.wake();
                }
            }
            Event::ConnectionLost { reason } => {
                self.lost = Some(reason);
                self.wake_all();
            }
            Event::HandshakeDataReady
            | Event::Connected
            | Event::DatagramReceived
            | Event::DatagramsUnblocked => {}
        }
    }

    /// Wakes every waiting task (the connection ended).
    pub(crate) fn wake_all(&mut self) {
        let maps = [&mut self.readers, &mut self.writers, &mut self.watchers];
        for m in maps {
            for (_, w) in m.drain() {
                w.wake();
            }
        }
        for w in self.openers.drain(..).chain(self.accept_bi.take()) {
            w.wake();
        }
        if let Some(w) = self.accept_uni.take() {
            w.wake();
        }
    }

    fn conn_error(&self) -> ConnectionErrorIncoming {
        match &self.lost {
            Some(ConnectionError::ApplicationClosed(c)) => {
                ConnectionErrorIncoming::ApplicationClose {
                    error_code: c.error_code.into_inner(),
                }
            }
            Some(ConnectionError::TimedOut) => ConnectionErrorIncoming::Timeout,
            Some(e) => ConnectionErrorIncoming::Undefined(Arc::new(e.clone())),
            None => ConnectionErrorIncoming::InternalError("stream closed".to_string()),
        }
    }

    fn stream_error(&self) -> StreamErrorIncoming {
        StreamErrorIncoming::ConnectionErrorIncoming {
            connection_error: self.conn_error(),
        }
    }

    /// Waits until the peer stops `id` (STOP_SENDING: it will not read the answer) or the
    /// connection ends.
    pub(crate) fn poll_stopped(&mut self, id: StreamId, cx: &mut Context<'_>) -> Poll<()> {
        if self.lost.is_some() || !matches!(self.conn.send_stream(id).stopped(), Ok(None)) {
            return Poll::Ready(());
        }
        self.watchers.insert(id, cx.waker().clone());
        Poll::Pending
    }
}

/// A quinn stream id as h3's (both are QUIC's 62-bit ids).
fn h3_id(id: StreamId) -> Option<quic::StreamId> {
    quic::StreamId::try_from(u64::from(id)).ok()
}

/// An application error code for quinn-proto (h3's codes all fit in a varint).
fn code(c: u64) -> VarInt {
    VarInt::from_u64(c).unwrap_or(VarInt::MAX)
}

/// The connection, as h3 sees it.
pub(crate) struct QuicConn {
    pub(crate) st: Shared,
}

impl QuicConn {
    fn accept(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamId, ConnectionErrorIncoming>> {
        let mut s = self.st.borrow_mut();
        if let Some(id) = s.conn.streams().accept(dir) {
            if dir == Dir::Uni {
                s.uni_streams += 1;
            }
            // Accepting may raise the peer's stream limit: MAX_STREAMS goes out.
            s.kick();
            return Poll::Ready(Ok(id));
        }
        if s.lost.is_some() {
            return Poll::Ready(Err(s.conn_error()));
        }
        let slot = match dir {
            Dir::Bi => &mut s.accept_bi,
            Dir::Uni => &mut s.accept_uni,
        };
        *slot = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl quic::Connection<Bytes> for QuicConn {
    type RecvStream = RecvHalf;
    type OpenStreams = Opener;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<RecvHalf, ConnectionErrorIncoming>> {
        let id = std::task::ready!(self.accept(Dir::Uni, cx))?;
        Poll::Ready(RecvHalf::new(self.st.clone(), id))
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, ConnectionErrorIncoming>> {
        let id = std::task::ready!(self.accept(Dir::Bi, cx))?;
        Poll::Ready(BidiStream::new(self.st.clone(), id))
    }

    fn opener(&self) -> Opener {
        Opener {
            st: self.st.clone(),
        }
    }
}

impl quic::OpenStreams<Bytes> for QuicConn {
    type BidiStream = BidiStream;
    type SendStream = SendHalf;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        quic::Connection::opener(self).poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendHalf, StreamErrorIncoming>> {
        quic::Connection::opener(self).poll_open_send(cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        quic::OpenStreams::close(&mut quic::Connection::opener(self), code, reason)
    }
}

/// Opens streams on the connection (h3's control and QPACK streams).
pub(crate) struct Opener {
    st: Shared,
}

impl Opener {
    fn open(
        &mut self,
        dir: Dir,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamId, StreamErrorIncoming>> {
        let mut s = self.st.borrow_mut();
        if s.lost.is_some() {
            return Poll::Ready(Err(s.stream_error()));
        }
        match s.conn.streams().open(dir) {
            Some(id) => Poll::Ready(Ok(id)),
            None => {
                s.openers.push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

fn unknown(what: &'static str) -> StreamErrorIncoming {
    StreamErrorIncoming::Unknown(what.into())
}

impl quic::OpenStreams<Bytes> for Opener {
    type BidiStream = BidiStream;
    type SendStream = SendHalf;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BidiStream, StreamErrorIncoming>> {
        let id = std::task::ready!(self.open(Dir::Bi, cx))?;
        Poll::Ready(
            BidiStream::new(self.st.clone(), id).map_err(|_| unknown("stream id out of range")),
        )
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<SendHalf, StreamErrorIncoming>> {
        let id = std::task::ready!(self.open(Dir::Uni, cx))?;
        Poll::Ready(
            SendHalf::new(self.st.clone(), id).map_err(|_| unknown("stream id out of range")),
        )
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        let mut s = self.st.borrow_mut();
        let now = std::time::Instant::now();
        s.conn.close(
            now,
            self::code(code.value()),
            Bytes::copy_from_slice(reason),
        );
        s.kick();
    }
}

/// A request stream (both halves).
pub(crate) struct BidiStream {
    send: SendHalf,
    recv: RecvHalf,
}

impl BidiStream {
    fn new(st: Shared, id: StreamId) -> Result<Self, ConnectionErrorIncoming> {
        Ok(BidiStream {
            send: SendHalf::new(st.clone(), id)?,
            recv: RecvHalf::new(st, id)?,
        })
    }
}

impl quic::BidiStream<Bytes> for BidiStream {
    type SendStream = SendHalf;
    type RecvStream = RecvHalf;

    fn split(self) -> (SendHalf, RecvHalf) {
        (self.send, self.recv)
    }
}

impl quic::RecvStream for BidiStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> quic::StreamId {
        self.recv.recv_id()
    }
}

impl quic::SendStream<Bytes> for BidiStream {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> quic::StreamId {
        self.send.send_id()
    }
}

/// The receiving half of a stream.
pub(crate) struct RecvHalf {
    st: Shared,
    id: StreamId,
    h3id: quic::StreamId,
}

impl RecvHalf {
    fn new(st: Shared, id: StreamId) -> Result<Self, ConnectionErrorIncoming> {
        let h3id = h3_id(id)
            .ok_or_else(|| ConnectionErrorIncoming::InternalError("stream id".to_string()))?;
        Ok(RecvHalf { st, id, h3id })
    }
}

impl quic::RecvStream for RecvHalf {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let mut s = self.st.borrow_mut();
        let lost = s.lost.is_some().then(|| s.stream_error());
        let mut stream = s.conn.recv_stream(self.id);
        let mut chunks = match stream.read(true) {
            Ok(c) => c,
            Err(ReadableError::ClosedStream) if lost.is_some() => {
                return Poll::Ready(Err(lost.unwrap_or_else(|| unknown("closed"))))
            }
            // Read to its end already (or never opened).
            Err(ReadableError::ClosedStream) => return Poll::Ready(Ok(None)),
            Err(ReadableError::IllegalOrderedRead) => {
                return Poll::Ready(Err(unknown("unordered read")))
            }
        };
        let r = chunks.next(usize::MAX);
        // Reading frees flow-control credit: the driver sends MAX_STREAM_DATA when due.
        let transmit = chunks.finalize().should_transmit();
        let out = match r {
            Ok(Some(chunk)) => Poll::Ready(Ok(Some(chunk.bytes))),
            Ok(None) => Poll::Ready(Ok(None)),
            Err(ReadError::Reset(c)) => Poll::Ready(Err(StreamErrorIncoming::StreamTerminated {
                error_code: c.into_inner(),
            })),
            Err(ReadError::Blocked) if lost.is_some() => {
                Poll::Ready(Err(lost.unwrap_or_else(|| unknown("closed"))))
            }
            Err(ReadError::Blocked) => {
                s.readers.insert(self.id, cx.waker().clone());
                Poll::Pending
            }
        };
        if transmit {
            s.kick();
        }
        out
    }

    fn stop_sending(&mut self, error_code: u64) {
        let mut s = self.st.borrow_mut();
        let _ = s.conn.recv_stream(self.id).stop(code(error_code));
        s.kick();
    }

    fn recv_id(&self) -> quic::StreamId {
        self.h3id
    }
}

/// What quinn's own stream handles do when dropped, which h3 relies on (it drops a request
/// stream it refused, after a 431 for one): a receiving half not read to its end asks the
/// peer to stop sending (H3_NO_ERROR), a sending half neither finished nor reset is finished
/// (reset, if the peer stopped it). Without it the stream would stay open in quinn-proto,
/// holding one of the client's stream slots until the connection ends.
impl Drop for RecvHalf {
    fn drop(&mut self) {
        if let Ok(mut s) = self.st.try_borrow_mut() {
            if s.lost.is_none()
                && s.conn
                    .recv_stream(self.id)
                    .stop(VarInt::from_u32(H3_NO_ERROR))
                    .is_ok()
            {
                s.kick();
            }
        }
    }
}

impl Drop for SendHalf {
    fn drop(&mut self) {
        if let Ok(mut s) = self.st.try_borrow_mut() {
            if s.lost.is_some() {
                return;
            }
            let mut stream = s.conn.send_stream(self.id);
            // A frame written in part: the stream cannot end cleanly.
            let cut = self.pending.as_ref().is_some_and(|b| b.has_remaining());
            let ended = if cut {
                stream
                    .reset(VarInt::from_u32(H3_INTERNAL_ERROR))
                    .map_err(|_| None)
            } else {
                stream.finish().map_err(Some)
            };
            let changed = match ended {
                Ok(()) => true,
                Err(None) => false,
                Err(Some(quinn_proto::FinishError::Stopped(c))) => stream.reset(c).is_ok(),
                Err(Some(quinn_proto::FinishError::ClosedStream)) => false,
            };
            if changed {
                s.kick();
            }
        }
    }
}

/// HTTP/3's "no error" code (RFC 9114 §8.1).
pub(crate) const H3_NO_ERROR: u32 = 0x100;
/// HTTP/3's "internal error" code.
const H3_INTERNAL_ERROR: u32 = 0x102;
/// HTTP/3's code for a peer that generates excessive load.
pub(crate) const H3_EXCESSIVE_LOAD: u32 = 0x107;

/// The sending half of a stream: one h3 frame at a time, written as flow control allows.
pub(crate) struct SendHalf {
    st: Shared,
    id: StreamId,
    h3id: quic::StreamId,
    pending: Option<WriteBuf<Bytes>>,
}

impl SendHalf {
    fn new(st: Shared, id: StreamId) -> Result<Self, ConnectionErrorIncoming> {
        let h3id = h3_id(id)
            .ok_or_else(|| ConnectionErrorIncoming::InternalError("stream id".to_string()))?;
        Ok(SendHalf {
            st,
            id,
            h3id,
            pending: None,
        })
    }
}

impl quic::SendStream<Bytes> for SendHalf {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        let Some(buf) = &mut self.pending else {
            return Poll::Ready(Ok(()));
        };
        let mut s = self.st.borrow_mut();
        let mut wrote = false;
        let out = loop {
            if !buf.has_remaining() {
                break Poll::Ready(Ok(()));
            }
            match s.conn.send_stream(self.id).write(buf.chunk()) {
                Ok(n) => {
                    buf.advance(n);
                    wrote = true;
                }
                Err(WriteError::Blocked) => {
                    s.writers.insert(self.id, cx.waker().clone());
                    break Poll::Pending;
                }
                Err(WriteError::Stopped(c)) => {
                    break Poll::Ready(Err(StreamErrorIncoming::StreamTerminated {
                        error_code: c.into_inner(),
                    }))
                }
                Err(WriteError::ClosedStream) => break Poll::Ready(Err(s.stream_error())),
            }
        };
        if wrote {
            s.kick();
        }
        drop(s);
        if out.is_ready() {
            self.pending = None;
        }
        out
    }

    fn send_data<T: Into<WriteBuf<Bytes>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.pending.is_some() {
            return Err(unknown("send_data before the last write was done"));
        }
        self.pending = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        std::task::ready!(self.poll_ready(cx))?;
        let mut s = self.st.borrow_mut();
        let r = match s.conn.send_stream(self.id).finish() {
            Ok(()) => Ok(()),
            Err(quinn_proto::FinishError::Stopped(c)) => {
                Err(StreamErrorIncoming::StreamTerminated {
                    error_code: c.into_inner(),
                })
            }
            Err(quinn_proto::FinishError::ClosedStream) => Err(s.stream_error()),
        };
        s.kick();
        Poll::Ready(r)
    }

    fn reset(&mut self, reset_code: u64) {
        let mut s = self.st.borrow_mut();
        let _ = s.conn.send_stream(self.id).reset(code(reset_code));
        s.kick();
    }

    fn send_id(&self) -> quic::StreamId {
        self.h3id
    }
}
