//! TLS with rustls (ring provider), on both sides of the proxy.
//!
//! [`Conn`] is the one stream type the data path reads and writes: plain TCP (matched first,
//! so the plain path costs one branch), a TLS connection a client opened to mcplb, or a TLS
//! connection mcplb opened to an `https://` backend. [`TlsStream`] drives a rustls connection
//! over monoio's rent-based I/O itself: ciphertext goes through two buffers that are released
//! while the connection idles, so an idle TLS connection holds only rustls' own state.
//!
//! [`TlsTerminator`] holds the client-facing server config behind an `ArcSwap`, read once per
//! handshake (never per request), swapped by [`TlsTerminator::reload`]: by a background thread
//! when the certificate or key files change, or by whoever calls it (SIGHUP, `POST /reload`).

use std::io::{self, Read as _, Write as _};
use std::ops::Range;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ConnectionCommon, ServerConfig, ServerConnection};

/// Size of a socket read of ciphertext (a little over one full TLS record).
const TLS_READ: usize = 17 * 1024;
/// How long a client TLS connection keeps its ciphertext buffers between requests.
const HOT_IDLE: Duration = Duration::from_millis(100);

/// The crypto provider every TLS config of mcplb uses (ring: builds anywhere, fast AES-GCM and
/// ChaCha20-Poly1305).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a chain: leaf first).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no PEM certificate in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// Root certificates from a PEM file.
fn load_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR` honoured), read once per
/// process however many https backends use them.
fn system_roots() -> Result<Arc<rustls::RootCertStore>, String> {
    static ROOTS: std::sync::OnceLock<Result<Arc<rustls::RootCertStore>, String>> =
        std::sync::OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "no system root certificates found ({} error(s)); set `ca`",
                    found.errors.len()
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
}

/// `[proxy.tls]`: the files the client-facing TLS listener is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates; when set, clients must present a certificate they signed.
    pub client_ca: Option<PathBuf>,
    /// Offer HTTP/2 by ALPN (`[proxy.http2] enabled`).
    pub h2: bool,
    /// How often the files are checked for changes (zero: never).
    pub reload_interval: Duration,
}

impl ServerTlsFiles {
    /// Builds a rustls server config from the files: TLS 1.2 and 1.3 with rustls' safe
    /// defaults, ALPN `h2` (when [`ServerTlsFiles::h2`]) and `http/1.1`.
    pub fn build(&self) -> Result<ServerConfig, String> {
        let certs = load_certs(&self.cert)?;
        let key = load_key(&self.key)?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(load_roots(ca)?),
                    provider(),
                )
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
            format!(
                "{} / {}: {e} (does the key belong to the certificate?)",
                self.cert.display(),
                self.key.display()
            )
        })?;
        cfg.alpn_protocols = if self.h2 {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        } else {
            vec![b"http/1.1".to_vec()]
        };
        Ok(cfg)
    }

    /// What the watcher compares: modification time, size and inode of each file.
    fn fingerprint(&self) -> Fingerprint {
        use std::os::unix::fs::MetadataExt as _;
        let m = |p: &Path| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
        };
        [
            m(&self.cert),
            m(&self.key),
            self.client_ca.as_deref().and_then(m),
        ]
    }
}

/// Modification time, size and inode of the certificate, key and client CA files.
type Fingerprint = [Option<(SystemTime, u64, u64)>; 3];

/// The client-facing TLS config, swappable without a restart.
pub struct TlsTerminator {
    current: ArcSwap<ServerConfig>,
    files: Mutex<ServerTlsFiles>,
    /// The files' fingerprint taken before [`new`](Self::new) read them: what the watcher
    /// compares first, so that files replaced before its thread first runs (it may start late
    /// on a busy machine) are still seen as changed.
    loaded: Fingerprint,
}

impl std::fmt::Debug for TlsTerminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTerminator").finish_non_exhaustive()
    }
}

impl TlsTerminator {
    /// Loads the files (an error names the file and what was wrong).
    pub fn new(files: ServerTlsFiles) -> Result<Arc<TlsTerminator>, String> {
        let loaded = files.fingerprint();
        let cfg = files.build()?;
        Ok(Arc::new(TlsTerminator {
            current: ArcSwap::from_pointee(cfg),
            files: Mutex::new(files),
            loaded,
        }))
    }

    /// The config new handshakes use (one atomic load; connections already open keep theirs).
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reloads the certificate, key and client CA: from `files` when given (a config reload
    /// that changed the paths), else from the paths in use. A file that does not load is
    /// refused with the reason and the old certificate stays in use.
    pub fn reload(&self, files: Option<ServerTlsFiles>) -> Result<(), String> {
        let mut cur = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let next = files.unwrap_or_else(|| cur.clone());
        let cfg = next.build()?;
        self.current.store(Arc::new(cfg));
        *cur = next;
        Ok(())
    }

    /// Starts the thread that reloads the files when they change. A bad new file is logged
    /// once and retried on every tick (a deploy may be half-way through writing the files);
    /// the old certificate stays in use meanwhile.
    pub fn watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        let files = |t: &TlsTerminator| t.files.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut seen = self.loaded;
        let _ = std::thread::Builder::new()
            .name("mcplb-tls-watch".into())
            .spawn(move || {
                let mut failing = false;
                loop {
                    let Some(interval) = me.upgrade().map(|t| files(&t).reload_interval) else {
                        return;
                    };
                    if interval.is_zero() {
                        return;
                    }
                    std::thread::sleep(interval);
                    let Some(t) = me.upgrade() else { return };
                    let now = files(&t).fingerprint();
                    if now == seen && !failing {
                        continue;
                    }
                    let changed = now != seen;
                    seen = now;
                    match t.reload(None) {
                        Ok(()) => {
                            failing = false;
                            tracing::info!("TLS certificate reloaded")
                        }
                        Err(e) => {
                            if changed {
                                tracing::error!(
                                    error = %e,
                                    "TLS certificate files changed but do not load; the old certificate stays in use"
                                );
                            }
                            failing = true;
                        }
                    }
                }
            });
    }
}

/// TLS settings of an `https://` backend.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// Verification roots, client certificate, ALPN `http/1.1`.
    pub config: Arc<ClientConfig>,
    /// SNI and the name the certificate must carry: the URL's host.
    pub server_name: ServerName<'static>,
}

impl UpstreamTls {
    /// Builds the client config of one backend: `ca` (PEM) or the system roots, and an
    /// optional client certificate for mTLS.
    pub fn build(
        host: &str,
        ca: Option<&Path>,
        client_cert: Option<&Path>,
        client_key: Option<&Path>,
    ) -> Result<UpstreamTls, String> {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| format!("`{host}` is not a valid TLS server name: {e}"))?;
        let roots = match ca {
            Some(p) => Arc::new(load_roots(p)?),
            None => system_roots()?,
        };
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut cfg = match (client_cert, client_key) {
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(load_certs(c)?, load_key(k)?)
                .map_err(|e| format!("{} / {}: {e}", c.display(), k.display()))?,
            (None, None) => builder.with_no_client_auth(),
            _ => return Err("`client_cert` and `client_key` go together".to_string()),
        };
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(UpstreamTls {
            config: Arc::new(cfg),
            server_name,
        })
    }
}

/// Gives the ciphertext `rbuf[*rpos..]` to rustls and processes it. Stops early when rustls'
/// plaintext buffer is full (the rest stays in `rbuf` until the reader drains it). Every other
/// refusal is an error: leaving bytes behind that rustls will never take would make the caller
/// spin. `rbuf` is emptied once all of it was taken. (Also HTTP/2's `h2::io::TlsIo`.)
pub(crate) fn feed_records<S>(
    conn: &mut ConnectionCommon<S>,
    rbuf: &mut Vec<u8>,
    rpos: &mut usize,
) -> io::Result<()> {
    feed_slice(conn, rbuf, rpos)?;
    if *rpos >= rbuf.len() {
        rbuf.clear();
        *rpos = 0;
    }
    Ok(())
}

/// [`feed_records`] over `buf[*pos..]`, leaving `buf` as it is (the caller reuses it).
pub(crate) fn feed_slice<S>(
    conn: &mut ConnectionCommon<S>,
    buf: &[u8],
    pos: &mut usize,
) -> io::Result<()> {
    while *pos < buf.len() {
        let mut src = buf.get(*pos..).unwrap_or_default();
        match conn.read_tls(&mut src) {
            // close_notify received: rustls reads nothing more.
            Ok(0) => *pos = buf.len(),
            Ok(k) => *pos += k,
            Err(e) => {
                let state = conn.process_new_packets().map_err(tls_err)?;
                if state.plaintext_bytes_to_read() > 0 {
                    break;
                }
                return Err(e);
            }
        }
        conn.process_new_packets().map_err(tls_err)?;
    }
    Ok(())
}

/// A rustls connection driven over a monoio TCP stream.
pub struct TlsStream<C> {
    io: TcpStream,
    conn: C,
    /// Ciphertext read from the socket; `rbuf[rpos..]` is not yet given to rustls.
    rbuf: Vec<u8>,
    rpos: usize,
    /// Ciphertext on its way to the socket.
    wbuf: Vec<u8>,
    /// The socket reached EOF.
    eof: bool,
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<C, S> TlsStream<C>
where
    C: std::ops::DerefMut<Target = ConnectionCommon<S>>,
{
    fn new(io: TcpStream, conn: C) -> Self {
        TlsStream {
            io,
            conn,
            rbuf: Vec::new(),
            rpos: 0,
            wbuf: Vec::new(),
            eof: false,
        }
    }

    /// Writes every TLS record rustls has queued.
    async fn flush_tls(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            let mut w = std::mem::take(&mut self.wbuf);
            w.clear();
            if let Err(e) = self.conn.write_tls(&mut w) {
                self.wbuf = w;
                return Err(e);
            }
            let (r, w) = self.io.write_all(w).await;
            self.wbuf = w;
            r?;
        }
        Ok(())
    }

    /// See [`feed_records`].
    fn feed(&mut self) -> io::Result<()> {
        feed_records(&mut self.conn, &mut self.rbuf, &mut self.rpos)
    }

    /// Reads ciphertext from the socket into rustls (one socket read).
    async fn fill(&mut self) -> io::Result<()> {
        if self.rpos < self.rbuf.len() {
            return self.feed_or_alert().await;
        }
        let mut b = std::mem::take(&mut self.rbuf);
        b.clear();
        if b.capacity() < TLS_READ {
            b.reserve(TLS_READ);
        }
        self.rpos = 0;
        let (r, b) = self.io.read(b).await;
        self.rbuf = b;
        let n = r?;
        if n == 0 {
            self.eof = true;
            let _ = self.conn.read_tls(&mut io::empty());
            return Ok(());
        }
        self.feed_or_alert().await
    }

    async fn feed_or_alert(&mut self) -> io::Result<()> {
        if let Err(e) = self.feed() {
            // Tell the peer why (rustls queued an alert), then fail.
            let _ = self.flush_tls().await;
            return Err(e);
        }
        Ok(())
    }

    /// Runs the handshake to its end.
    async fn handshake(&mut self) -> io::Result<()> {
        while self.conn.is_handshaking() {
            if self.conn.wants_write() {
                self.flush_tls().await?;
                continue;
            }
            if self.eof {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof during the TLS handshake",
                ));
            }
            self.fill().await?;
        }
        self.flush_tls().await
    }

    /// Reads plaintext, appending to `buf` (room for at least one byte is made by the caller).
    /// Returns the bytes read; 0 at EOF (close_notify or the socket closing).
    async fn read_more(&mut self, mut buf: Vec<u8>) -> (io::Result<usize>, Vec<u8>) {
        loop {
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    let _ = self.flush_tls().await;
                    return (Err(tls_err(e)), buf);
                }
            };
            let avail = state.plaintext_bytes_to_read();
            if avail > 0 {
                let len = buf.len();
                let room = (buf.capacity() - len).clamp(1, avail);
                buf.resize(len + room, 0);
                let r = self
                    .conn
                    .reader()
                    .read(buf.get_mut(len..).unwrap_or_default());
                let n = *r.as_ref().unwrap_or(&0);
                buf.truncate(len + n);
                return (r, buf);
            }
            if state.peer_has_closed() || self.eof {
                return (Ok(0), buf);
            }
            if self.conn.wants_write() {
                if let Err(e) = self.flush_tls().await {
                    return (Err(e), buf);
                }
            }
            if let Err(e) = self.fill().await {
                return (Err(e), buf);
            }
        }
    }

    /// Encrypts and writes all of `data`.
    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut off = 0;
        while off < data.len() {
            let n = self
                .conn
                .writer()
                .write(data.get(off..).unwrap_or_default())?;
            off += n;
            self.flush_tls().await?;
            if n == 0 && !self.conn.wants_write() {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "TLS writer refused bytes",
                ));
            }
        }
        Ok(())
    }

    /// Whether bytes are already decrypted or buffered, so waiting on the socket would be wrong.
    fn has_buffered(&mut self) -> bool {
        self.rpos < self.rbuf.len()
            || self.conn.process_new_packets().map_or(true, |s| {
                s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
            })
    }

    /// Waits for the socket to become readable: first for a moment holding the ciphertext
    /// buffers (a busy keep-alive connection reuses them), then without them.
    async fn idle_wait(&mut self) -> io::Result<()> {
        if self.has_buffered() {
            return Ok(());
        }
        if self.rbuf.capacity() > 0 || self.wbuf.capacity() > 0 {
            if let Ok(r) = monoio::time::timeout(HOT_IDLE, self.io.readable(false)).await {
                return r;
            }
            self.release();
        }
        self.io.readable(false).await
    }

    /// Drops the ciphertext buffers (an idle connection then holds only rustls' state).
    fn release(&mut self) {
        if self.rpos >= self.rbuf.len() {
            self.rbuf = Vec::new();
            self.rpos = 0;
        }
        self.wbuf = Vec::new();
    }

    /// What the peer has done, as far as rustls knows without reading the socket.
    fn incoming(&mut self) -> Incoming {
        match self.conn.process_new_packets() {
            Err(_) => Incoming::Closed,
            Ok(s) if s.plaintext_bytes_to_read() > 0 => Incoming::Bytes,
            Ok(s) if s.peer_has_closed() || self.eof => Incoming::Closed,
            Ok(_) => Incoming::Nothing,
        }
    }

    /// Gives rustls the ciphertext the socket holds now, without waiting (one non-blocking
    /// syscall). Plaintext it decrypts stays buffered for the next [`TlsStream::read_more`].
    #[allow(unsafe_code)]
    fn fill_now(&mut self) -> io::Result<()> {
        if self.rpos < self.rbuf.len() {
            return self.feed();
        }
        self.rpos = 0;
        self.rbuf.clear();
        self.rbuf.resize(TLS_READ, 0);
        // SAFETY: recv on the socket's valid fd into `rbuf`'s initialized bytes.
        let n = unsafe {
            libc::recv(
                self.io.as_raw_fd(),
                self.rbuf.as_mut_ptr().cast(),
                self.rbuf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        let Ok(n) = usize::try_from(n) else {
            self.rbuf.clear();
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(()),
                _ => Err(e),
            };
        };
        self.rbuf.truncate(n);
        if n == 0 {
            self.eof = true;
            let _ = self.conn.read_tls(&mut io::empty());
            return Ok(());
        }
        self.feed()
    }

    /// See [`Conn::peer_event`].
    async fn peer_event(&mut self) -> Incoming {
        loop {
            match self.incoming() {
                Incoming::Nothing => {}
                seen => return seen,
            }
            if self.io.readable(false).await.is_err() || self.fill_now().is_err() {
                return Incoming::Closed;
            }
        }
    }
}

/// What the peer of a connection has sent that was not read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming {
    /// Nothing yet.
    Nothing,
    /// Bytes, left where the next read finds them.
    Bytes,
    /// The peer closed its side (EOF, TLS close_notify), or the connection failed.
    Closed,
}

/// Looks at a socket's incoming side without waiting and without consuming anything (one
/// `recv` with `MSG_PEEK`).
#[allow(unsafe_code)]
pub(crate) fn peek(s: &TcpStream) -> Incoming {
    let mut b = [0u8; 1];
    // SAFETY: recv on a valid fd into a 1-byte stack buffer.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Incoming::Closed,
        n if n > 0 => Incoming::Bytes,
        _ => match io::Error::last_os_error().kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Incoming::Nothing,
            _ => Incoming::Closed,
        },
    }
}

/// Reads what `s` has already received into `buf`'s spare room (made `reserve` bytes when
/// under 1 KiB, as [`Conn::read_more`] does) without waiting (one `recv` with
/// `MSG_DONTWAIT`): `None` when nothing is there yet (the caller then waits as usual);
/// `Some(Ok(0))` at EOF.
#[allow(unsafe_code)]
pub(crate) fn recv_now(
    s: &TcpStream,
    buf: &mut Vec<u8>,
    reserve: usize,
) -> Option<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(reserve);
    }
    let spare = buf.spare_capacity_mut();
    // SAFETY: recv on a valid fd into `spare`, `spare.len()` bytes of `buf`'s allocation past
    // its length; only the bytes the kernel reports written are then counted as initialised.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        let n = n as usize;
        // SAFETY: the kernel initialised `n <= spare.len()` bytes after the old length.
        unsafe { buf.set_len(buf.len() + n) };
        return Some(Ok(n));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => None,
        _ => Some(Err(e)),
    }
}

/// A stream of the data path: plain TCP or TLS (to a client or to a backend).
pub enum Conn {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS a client opened to mcplb.
    Server(Box<TlsStream<ServerConnection>>),
    /// TLS mcplb opened to an `https://` backend.
    Client(Box<TlsStream<ClientConnection>>),
    /// One stream of an HTTP/2 client connection, read and written as HTTP/1.1.
    H2(Box<crate::h2::H2Stream>),
    /// One request stream of an HTTP/3 client connection, read and written as HTTP/1.1.
    H3(Box<crate::h3::H3Stream>),
}

impl Conn {
    /// Accepts a client's TLS handshake on `io`; `first`: its first bytes, already read (after
    /// a PROXY protocol header).
    pub async fn accept(
        io: TcpStream,
        config: Arc<ServerConfig>,
        first: Vec<u8>,
    ) -> io::Result<Conn> {
        let conn = ServerConnection::new(config).map_err(tls_err)?;
        let mut s = Box::new(TlsStream::new(io, conn));
        s.rbuf = first;
        s.handshake().await?;
        s.release();
        Ok(Conn::Server(s))
    }

    /// Runs a TLS handshake with a backend on `io`.
    pub async fn connect(io: TcpStream, tls: &UpstreamTls) -> io::Result<Conn> {
        let conn =
            ClientConnection::new(tls.config.clone(), tls.server_name.clone()).map_err(tls_err)?;
        let mut s = Box::new(TlsStream::new(io, conn));
        s.handshake().await?;
        Ok(Conn::Client(s))
    }

    /// Ends the stream for writing at the TLS level (a TLS stream sends its close_notify
    /// alert; a plain one has nothing to send) and returns the TCP socket underneath, whose
    /// bytes are then raw ciphertext to the caller.
    pub async fn into_tcp(self) -> io::Result<TcpStream> {
        match self {
            Conn::Plain(s) => Ok(s),
            Conn::Server(mut t) => {
                t.conn.send_close_notify();
                t.flush_tls().await?;
                Ok(t.io)
            }
            Conn::Client(mut t) => {
                t.conn.send_close_notify();
                t.flush_tls().await?;
                Ok(t.io)
            }
            Conn::H2(_) | Conn::H3(_) => Err(io::Error::other(
                "an HTTP/2 or HTTP/3 stream has no socket of its own",
            )),
        }
    }

    /// The TCP socket underneath (none under an HTTP/2 stream).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Conn::Plain(s) => Some(s),
            Conn::Server(t) => Some(&t.io),
            Conn::Client(t) => Some(&t.io),
            Conn::H2(_) | Conn::H3(_) => None,
        }
    }

    /// A client's TLS connection that chose HTTP/2 by ALPN: its socket, its rustls state and
    /// the ciphertext the handshake read past its end. Any other stream comes back as it was.
    pub fn into_h2(self) -> Result<(TcpStream, ServerConnection, Vec<u8>), Conn> {
        match self {
            Conn::Server(t) if t.conn.alpn_protocol() == Some(b"h2") => {
                let t = *t;
                let pending = t.rbuf.get(t.rpos..).unwrap_or_default().to_vec();
                Ok((t.io, t.conn, pending))
            }
            other => Err(other),
        }
    }

    /// Reads more bytes, appending to `buf`. Returns bytes read (0 = EOF).
    pub async fn read_more(
        &mut self,
        mut buf: Vec<u8>,
        reserve: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(reserve);
        }
        match self {
            Conn::Plain(s) => {
                let len = buf.len();
                let (r, slice) = s.read(buf.slice_mut(len..)).await;
                (r, slice.into_inner())
            }
            Conn::Server(t) => t.read_more(buf).await,
            Conn::Client(t) => t.read_more(buf).await,
            Conn::H2(s) => s.read_more(buf).await,
            Conn::H3(s) => s.read_more(buf).await,
        }
    }

    /// Writes all of `buf[range]`, giving the buffer back.
    pub async fn write_range(
        &mut self,
        buf: Vec<u8>,
        range: Range<usize>,
    ) -> (io::Result<()>, Vec<u8>) {
        if range.is_empty() {
            return (Ok(()), buf);
        }
        match self {
            Conn::Plain(s) => {
                let (r, slice) = s.write_all(monoio::buf::IoBuf::slice(buf, range)).await;
                (r.map(|_| ()), slice.into_inner())
            }
            Conn::Server(t) => {
                let r = t.write_all(buf.get(range).unwrap_or_default()).await;
                (r, buf)
            }
            Conn::Client(t) => {
                let r = t.write_all(buf.get(range).unwrap_or_default()).await;
                (r, buf)
            }
            Conn::H2(s) => {
                let r = s.write_all(buf.get(range).unwrap_or_default()).await;
                (r, buf)
            }
            Conn::H3(s) => {
                let r = s.write_all(buf.get(range).unwrap_or_default()).await;
                (r, buf)
            }
        }
    }

    /// Waits until the next read has something to do: bytes or EOF on the socket, or bytes
    /// TLS already holds.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.readable(false).await,
            // Boxed: the plain arm's future (held by every idle plain connection) stays small.
            Conn::Server(t) => Box::pin(t.idle_wait()).await,
            Conn::Client(t) => {
                if t.has_buffered() {
                    return Ok(());
                }
                t.io.readable(false).await
            }
            // Its request is read at once (it was whole before the stream ran).
            Conn::H2(_) | Conn::H3(_) => Ok(()),
        }
    }

    /// While an answer streams out and nothing is read from the peer: waits until the peer
    /// closes the connection or resets it ([`Incoming::Closed`]), or sends bytes
    /// ([`Incoming::Bytes`]: they stay where the next read finds them, in the socket or, for
    /// TLS, decrypted in rustls' buffer). Never returns [`Incoming::Nothing`]. Dropping it
    /// loses nothing: it only waits for readiness and reads without waiting.
    pub async fn peer_event(&mut self) -> Incoming {
        match self {
            Conn::Plain(s) => loop {
                if s.readable(false).await.is_err() {
                    return Incoming::Closed;
                }
                match peek(s) {
                    Incoming::Nothing => {}
                    seen => return seen,
                }
            },
            Conn::Server(t) => Box::pin(t.peer_event()).await,
            Conn::Client(t) => Box::pin(t.peer_event()).await,
            Conn::H2(s) => s.peer_event().await,
            Conn::H3(s) => s.peer_event().await,
        }
    }

    /// For a pooled backend connection: nothing is buffered that a next answer would be
    /// confused with.
    pub fn is_clean(&mut self) -> bool {
        match self {
            Conn::Plain(_) | Conn::H2(_) | Conn::H3(_) => true,
            Conn::Server(t) => !t.has_buffered(),
            Conn::Client(t) => !t.has_buffered(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn reload_swaps_good_files_and_refuses_bad_ones() {
        let dir = std::env::temp_dir().join(format!("mcplb-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c1, k1) = write_pair(&dir, "one");
        let (c2, k2) = write_pair(&dir, "two");
        let files = |cert: &Path, key: &Path| ServerTlsFiles {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client_ca: None,
            h2: false,
            reload_interval: Duration::ZERO,
        };
        let t = TlsTerminator::new(files(&c1, &k1)).unwrap();
        let before = t.config();
        assert_eq!(before.alpn_protocols, vec![b"http/1.1".to_vec()]);
        // A key that belongs to another certificate is refused; the old config stays.
        let e = t.reload(Some(files(&c1, &k2))).unwrap_err();
        assert!(e.contains("one.pem"), "{e}");
        assert!(Arc::ptr_eq(&before, &t.config()));
        // A missing file too.
        assert!(t.reload(Some(files(&dir.join("nope.pem"), &k1))).is_err());
        assert!(Arc::ptr_eq(&before, &t.config()));
        // Good files are swapped in, and later reloads use the new paths.
        t.reload(Some(files(&c2, &k2))).unwrap();
        let after = t.config();
        assert!(!Arc::ptr_eq(&before, &after));
        std::fs::write(&c2, "garbage").unwrap();
        assert!(t.reload(None).unwrap_err().contains("two.pem"));
        assert!(Arc::ptr_eq(&after, &t.config()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
