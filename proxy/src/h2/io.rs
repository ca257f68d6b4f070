//! The bytes under an HTTP/2 connection, in the shape the `h2` crate wants them.
//!
//! Why an adapter at all: `h2` is written against tokio's poll-based `AsyncRead` and
//! `AsyncWrite`, while mcplb's sockets are monoio's completion-based ones (a buffer is lent
//! to the kernel for the whole operation: `AsyncReadRent`). `monoio_compat::StreamWrapper`
//! bridges the two with one owned read buffer and one owned write buffer (one operation of
//! each kind in flight), and works on both of monoio's drivers (io_uring and the legacy
//! epoll one) since it only calls the stream's own `read`/`write`. What is added here:
//! - [`TlsIo`]: rustls driven synchronously over that bridge (the way tokio-rustls does it),
//!   for a connection whose handshake `tls::Conn::accept` already ran and which chose `h2`
//!   by ALPN;
//! - [`H2Io`]: plain or TLS, bytes already read replayed first (the client preface that
//!   identified an h2c connection), and every byte the client sends shown to the flood guard
//!   ([`super::guard::FrameScan`]), which can stop the reading.

use std::cell::{Cell, RefCell};
use std::io::{self, BufRead as _, Write as _};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use monoio::net::TcpStream;
use monoio_compat::StreamWrapper;
use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::guard::{Flood, FrameScan};

/// Ciphertext read from the socket per read.
const TLS_READ: usize = 16 * 1024;

/// A server-side rustls connection (handshake done) over a monoio TCP stream, as tokio I/O.
pub(crate) struct TlsIo {
    io: StreamWrapper<TcpStream>,
    conn: ServerConnection,
    /// Ciphertext read but not yet given to rustls (`cin[cpos..cend]`). `cin` keeps its
    /// length (at least [`TLS_READ`], zeroed once) from read to read: resizing it for every
    /// socket read zeroed 16 KiB each time (callgrind, HTTP/2 over TLS: half of ~133 k
    /// instructions a request were that memset).
    cin: Vec<u8>,
    cpos: usize,
    cend: usize,
    /// Ciphertext rustls produced, on its way to the socket (`cout[opos..]`).
    cout: Vec<u8>,
    opos: usize,
    /// The socket reached EOF.
    eof: bool,
}

impl TlsIo {
    /// `pending`: ciphertext the handshake read past its end (the first application records).
    pub(crate) fn new(io: TcpStream, conn: ServerConnection, pending: Vec<u8>) -> Self {
        TlsIo {
            io: StreamWrapper::new(io),
            conn,
            cend: pending.len(),
            cin: pending,
            cpos: 0,
            cout: Vec::new(),
            opos: 0,
            eof: false,
        }
    }

    /// Gives buffered ciphertext to rustls, as much as it takes now; whether it took any.
    fn feed(&mut self) -> io::Result<bool> {
        let start = self.cpos;
        let held = self.cin.get(..self.cend).unwrap_or_default();
        let fed = crate::tls::feed_slice(&mut self.conn, held, &mut self.cpos);
        let took = self.cpos > start;
        if self.cpos >= self.cend {
            self.cpos = 0;
            self.cend = 0;
        }
        if fed.is_err() {
            // An alert for the peer may be queued; it goes out with the next write.
            self.queue_tls();
        }
        fed.map(|()| took)
    }

    /// Moves what rustls has to send into `cout`.
    fn queue_tls(&mut self) {
        while self.conn.wants_write() {
            if self.conn.write_tls(&mut self.cout).is_err() {
                break;
            }
        }
    }

    /// Writes `cout` to the socket.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.opos < self.cout.len() {
            let rest = self.cout.get(self.opos..).unwrap_or_default();
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, rest))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.opos += n;
        }
        self.cout.clear();
        self.opos = 0;
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            // Plaintext is copied out of rustls's own chunks (`BufRead`), not read into
            // `buf.initialize_unfilled()`: that zeroed all of h2's spare read buffer on every
            // call (callgrind, HTTP/2 over TLS: 55 % of ~148 k instructions a request were that
            // memset, bench/results/2026-12-07-pgo-cover.md). An empty chunk is a clean close
            // (what `read` reports as `Ok(0)`).
            match copy_plaintext(&mut this.conn.reader(), buf) {
                Ok(()) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.cpos < this.cend {
                if this.feed()? {
                    continue;
                }
                // rustls takes nothing and has nothing to read: it will not change.
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "TLS records rustls does not take",
                )));
            }
            if this.eof {
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            // Alerts or key updates rustls queued while reading go out first.
            this.queue_tls();
            if this.opos < this.cout.len() {
                let _ = this.poll_send(cx)?;
            }
            if this.cin.len() < TLS_READ {
                this.cin.resize(TLS_READ, 0);
            }
            this.cpos = 0;
            let mut rb = ReadBuf::new(&mut this.cin);
            let r = Pin::new(&mut this.io).poll_read(cx, &mut rb);
            let got = rb.filled().len();
            this.cend = got;
            ready!(r)?;
            if got == 0 {
                this.eof = true;
            }
            this.feed()?;
        }
    }
}

/// Copies what rustls holds of the peer's plaintext into `buf`, chunk by chunk, until `buf`
/// is full or rustls holds no more (`buf` has room). Errors as `Reader::read`'s: `WouldBlock`
/// when there is nothing yet, and nothing is copied then.
fn copy_plaintext(reader: &mut rustls::Reader<'_>, buf: &mut ReadBuf<'_>) -> io::Result<()> {
    let mut copied = false;
    while buf.remaining() > 0 {
        let chunk = match reader.fill_buf() {
            Ok(chunk) => chunk,
            // Whatever was copied goes up first; the condition shows again on the next call.
            Err(_) if copied => break,
            Err(e) => return Err(e),
        };
        if chunk.is_empty() {
            break;
        }
        let n = chunk.len().min(buf.remaining());
        buf.put_slice(chunk.get(..n).unwrap_or_default());
        reader.consume(n);
        copied = true;
    }
    Ok(())
}

impl AsyncWrite for TlsIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        let n = this.conn.writer().write(buf)?;
        this.queue_tls();
        // Started now; finished by the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.queue_tls();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        this.queue_tls();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

/// The transport under one HTTP/2 connection.
pub(crate) enum Transport {
    /// h2c: plain TCP.
    Plain(Box<StreamWrapper<TcpStream>>),
    /// TLS with ALPN `h2`.
    Tls(Box<TlsIo>),
}

impl Transport {
    /// The socket underneath, for a lingering close (what TLS or the wrapper still hold is
    /// dropped: the connection is over).
    pub(crate) fn into_tcp(self) -> TcpStream {
        match self {
            Transport::Plain(s) => s.into_inner(),
            Transport::Tls(t) => t.io.into_inner(),
        }
    }
}

/// An HTTP/2 connection's bytes: `replay` first (bytes read before `h2` took over), then
/// the transport's; each byte read is shown to the flood guard, and once it has found a flood
/// nothing more is read (the connection driver sees [`H2Io::flood`] and ends it).
pub(crate) struct H2Io {
    /// Shared with the connection driver, which takes it back for a lingering close once a
    /// flood stopped the reading (`h2` never gives its I/O back).
    transport: Rc<RefCell<Transport>>,
    replay: Vec<u8>,
    rpos: usize,
    scan: FrameScan,
    flood: Rc<Cell<Option<Flood>>>,
}

impl H2Io {
    /// `flood` is set when the guard finds one.
    pub(crate) fn new(
        transport: Rc<RefCell<Transport>>,
        replay: Vec<u8>,
        scan: FrameScan,
        flood: Rc<Cell<Option<Flood>>>,
    ) -> Self {
        H2Io {
            transport,
            replay,
            rpos: 0,
            scan,
            flood,
        }
    }
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flood.get().is_some() {
            // Nothing more is read; the driver, polled right after, ends the connection.
            return Poll::Pending;
        }
        let start = buf.filled().len();
        if this.rpos < this.replay.len() {
            let rest = this.replay.get(this.rpos..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(rest.get(..n).unwrap_or_default());
            this.rpos += n;
            if this.rpos >= this.replay.len() {
                this.replay = Vec::new();
                this.rpos = 0;
            }
        } else {
            match &mut *this.transport.borrow_mut() {
                Transport::Plain(s) => ready!(Pin::new(s.as_mut()).poll_read(cx, buf))?,
                Transport::Tls(t) => ready!(Pin::new(t.as_mut()).poll_read(cx, buf))?,
            }
        }
        let fresh = buf.filled().get(start..).unwrap_or_default();
        if let Some(f) = this.scan.scan(fresh, Instant::now()) {
            this.flood.set(Some(f));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut *self.get_mut().transport.borrow_mut() {
            Transport::Plain(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.get_mut().transport.borrow_mut() {
            Transport::Plain(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.get_mut().transport.borrow_mut() {
            Transport::Plain(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Transport::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}
