//! HTTP/3 on the client side (`[proxy.http3]`): QUIC from quinn's sans-IO `quinn-proto`,
//! driven on each worker's own UDP socket ([`endpoint`]), HTTP/3 from the `h3` crate over a
//! small adapter to its QUIC traits ([`quic`]); each request stream runs the same data path
//! as an HTTP/1.1 request ([`stream`]: the stream as the data path's client connection), in a
//! task of its own on the connection's core; backends stay HTTP/1.1.
//!
//! Which core a connection lives on: the workers' UDP sockets form one `SO_REUSEPORT` group,
//! and a BPF program on the group picks the socket by the destination connection id, whose
//! first bytes name the worker that issued it ([`steer`]), so every datagram of a connection
//! reaches its core even after the client's address changed (see ARCHITECTURE.md).

pub(crate) mod endpoint;
pub(crate) mod guard;
pub(crate) mod quic;
pub mod steer;
pub(crate) mod stream;
pub(crate) mod tokens;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::control::stats::Counter;
use crate::runtime::core::Core;
use crate::runtime::{spawn_client, SHUTDOWN};
use crate::tls::Conn;

pub use endpoint::H3Socket;
pub use guard::H3FloodLimits;
pub use stream::{H3Stream, H3Wire};

/// `[proxy.http3]`: the HTTP/3 front and its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http3Config {
    /// The UDP address (after start: the bound one).
    pub listen: SocketAddr,
    /// Request streams a client may have open at once on one connection (QUIC's
    /// `initial_max_streams_bidi`).
    pub max_concurrent_streams: u32,
    /// Largest request header section accepted (`SETTINGS_MAX_FIELD_SECTION_SIZE`).
    pub max_header_list_size: u32,
    /// A connection that carries no packet for this long is gone (QUIC's `max_idle_timeout`;
    /// mcplb sends keep-alive PINGs at a third of it, so an idle SSE stream does not end it).
    pub idle_timeout: Duration,
    /// Each stream's receive window; the connection's is four times it.
    pub stream_receive_window: u32,
    /// The flood guard's budgets.
    pub floods: H3FloodLimits,
}

impl Default for Http3Config {
    fn default() -> Self {
        Http3Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            max_concurrent_streams: 100,
            max_header_list_size: 16 * 1024,
            idle_timeout: Duration::from_secs(30),
            stream_receive_window: 256 * 1024,
            floods: H3FloodLimits::default(),
        }
    }
}

impl Http3Config {
    /// The QUIC server settings: `tls` (the certificate of `[proxy.tls]`) with ALPN `h3`,
    /// TLS 1.3 only, the transport limits, and address-validation tokens sealed and checked
    /// with `tokens` (Retry, and NEW_TOKEN for a client's next connection).
    ///
    /// With `follow`, the client-facing TLS terminator, the certificate is the terminator's
    /// current one at each handshake, so a certificate its watcher (or a reload) swaps in
    /// serves new QUIC connections as it serves new TCP ones.
    pub(crate) fn quic_server(
        &self,
        tls: &crate::tls::ServerTlsFiles,
        tokens: &tokens::TokenKeys,
        follow: Option<&Arc<crate::tls::TlsTerminator>>,
    ) -> Result<quinn_proto::ServerConfig, String> {
        let mut rustls = tls.build()?;
        if let Some(t) = follow {
            rustls.cert_resolver = Arc::new(FollowTerminator(t.clone()));
        }
        rustls.alpn_protocols = vec![b"h3".to_vec()];
        rustls.max_early_data_size = 0;
        let crypto =
            quinn_proto::crypto::rustls::QuicServerConfig::try_from(rustls).map_err(|e| {
                format!("proxy.http3: the certificate of [proxy.tls] cannot serve QUIC: {e}")
            })?;
        let mut transport = quinn_proto::TransportConfig::default();
        let idle = quinn_proto::IdleTimeout::try_from(self.idle_timeout)
            .map_err(|_| "proxy.http3.idle_timeout: too large".to_string())?;
        let window = quinn_proto::VarInt::from_u32(self.stream_receive_window);
        transport
            .max_concurrent_bidi_streams(quinn_proto::VarInt::from_u32(self.max_concurrent_streams))
            // The client's control and two QPACK streams, and room for unknown ones.
            .max_concurrent_uni_streams(quinn_proto::VarInt::from_u32(8))
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(Some(self.idle_timeout / 3))
            .stream_receive_window(window)
            .receive_window(
                quinn_proto::VarInt::from_u64(u64::from(self.stream_receive_window) * 4)
                    .unwrap_or(window),
            );
        let mut server = quinn_proto::ServerConfig::new(Arc::new(crypto), tokens.key.clone());
        server
            .transport_config(Arc::new(transport))
            .validation_token_config(tokens.validation());
        Ok(server)
    }
}

/// The certificate of the terminator's current TLS config (one atomic load per handshake).
#[derive(Debug)]
struct FollowTerminator(Arc<crate::tls::TlsTerminator>);

impl rustls::server::ResolvesServerCert for FollowTerminator {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.config().cert_resolver.resolve(hello)
    }
}

/// Closes the QUIC connection, if nothing else did, when its HTTP/3 task ends (a set-up that
/// failed or timed out would otherwise leave it open, kept alive by our PINGs).
struct CloseOnDrop(quic::Shared);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        if let Ok(mut s) = self.0.try_borrow_mut() {
            if !s.conn.is_closed() {
                s.conn.close(
                    Instant::now(),
                    quinn_proto::VarInt::from_u32(quic::H3_NO_ERROR),
                    Bytes::new(),
                );
                s.kick();
            }
        }
    }
}

/// Serves one QUIC connection's HTTP/3 until it ends.
pub(crate) async fn serve_connection(core: Rc<Core>, st: quic::Shared, peer: SocketAddr) {
    let _slot = crate::runtime::ClientSlot::open(None);
    let _close = CloseOnDrop(st.clone());
    core.rec.borrow_mut().count(Counter::H3Connections, 1);
    let proxy = &core.shared.config.proxy;
    let (header_timeout, idle_timeout) = (proxy.header_timeout, proxy.client_idle_timeout);
    let max_field = proxy
        .http3
        .map_or(16 * 1024, |h| u64::from(h.max_header_list_size));
    let conn = quic::QuicConn { st: st.clone() };
    let mut b = h3::server::builder();
    b.max_field_section_size(max_field);
    let built = monoio::time::timeout(header_timeout, b.build::<_, Bytes>(conn)).await;
    let mut h3conn = match built {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "HTTP/3 connection set-up failed");
            core.rec.borrow_mut().count(Counter::H3ProtocolErrors, 1);
            return;
        }
        Err(_) => {
            core.rec.borrow_mut().count(Counter::SlowClients, 1);
            return;
        }
    };
    let active = Rc::new(Cell::new(0usize));
    let mut idle_since = Instant::now();
    let mut going_away = false;
    loop {
        let accepted = monoio::time::timeout(Duration::from_millis(250), h3conn.accept()).await;
        match accepted {
            Ok(Ok(Some(resolver))) if !going_away => {
                let core = if core.stale() || core.next.borrow().is_some() {
                    core.latest()
                } else {
                    core.clone()
                };
                let guard = Active::new(&active);
                let task = serve_stream(core.clone(), resolver, st.clone(), peer, guard);
                spawn_client(core, task);
            }
            // Past our GOAWAY: the client should not have opened it.
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                if !e.is_h3_no_error() {
                    tracing::debug!(%peer, error = %e, "HTTP/3 connection ended");
                }
                break;
            }
            Err(_) => {}
        }
        if active.get() > 0 {
            idle_since = Instant::now();
        }
        if going_away && active.get() == 0 {
            break;
        }
        if !going_away && (SHUTDOWN.load(Ordering::Relaxed) || idle_since.elapsed() >= idle_timeout)
        {
            // GOAWAY: the streams under way finish, no new ones start.
            let _ = monoio::time::timeout(Duration::from_secs(1), h3conn.shutdown(0)).await;
            going_away = true;
        }
    }
    // Streams still running hold the connection's state; they end as its close reaches them.
    drop(h3conn);
}

/// Counts a connection's running streams.
struct Active(Rc<Cell<usize>>);

impl Active {
    fn new(n: &Rc<Cell<usize>>) -> Self {
        n.set(n.get() + 1);
        Active(n.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Reads one request stream's head, then runs it through the data path.
async fn serve_stream(
    core: Rc<Core>,
    resolver: h3::server::RequestResolver<quic::QuicConn, Bytes>,
    st: quic::Shared,
    peer: SocketAddr,
    _active: Active,
) {
    let timeout = core.shared.config.proxy.header_timeout;
    let (req, stream) = match monoio::time::timeout(timeout, resolver.resolve_request()).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            // h3 answered 431 to a field section over `max_field_section_size`.
            if matches!(e, h3::error::StreamError::HeaderTooBig { .. }) {
                core.rec.borrow_mut().count(Counter::H3HeadersTooLarge, 1);
            }
            tracing::debug!(%peer, error = %e, "HTTP/3 request refused");
            return;
        }
        Err(_) => {
            core.rec.borrow_mut().count(Counter::SlowClients, 1);
            return;
        }
    };
    core.rec.borrow_mut().count(Counter::H3Streams, 1);
    let (parts, ()) = req.into_parts();
    let s = H3Stream::h3(&parts, stream, st, core.take_buf());
    crate::exchange::serve(&core, Conn::H3(Box::new(s)), peer).await;
}

/// Binds one UDP socket per worker on `addr` (with port 0, one free port for all), in one
/// `SO_REUSEPORT` group. Refuses an address another socket is bound to.
pub(crate) fn bind_workers(
    addr: SocketAddr,
    workers: usize,
) -> anyhow::Result<Vec<std::net::UdpSocket>> {
    use anyhow::Context as _;
    use socket2::{Domain, Protocol, Socket, Type};
    // Without SO_REUSEPORT first: the kernel refuses it when anything is bound there, and it
    // picks the port for port 0.
    let at = {
        let probe = std::net::UdpSocket::bind(addr)
            .with_context(|| format!("proxy.http3.listen: cannot bind UDP {addr}"))?;
        probe.local_addr()?
    };
    let mut out = Vec::with_capacity(workers);
    for _ in 0..workers.max(1) {
        let sock = Socket::new(Domain::for_address(at), Type::DGRAM, Some(Protocol::UDP))
            .and_then(|s| {
                s.set_reuse_port(true)?;
                s.set_nonblocking(true)?;
                // Room for bursts while a worker is busy with other work.
                let _ = s.set_recv_buffer_size(4 << 20);
                let _ = s.set_send_buffer_size(4 << 20);
                s.bind(&at.into())?;
                Ok(s)
            })
            .with_context(|| format!("proxy.http3.listen: cannot bind UDP {at}"))?;
        out.push(sock.into());
    }
    if let Some(first) = out.first() {
        let n = u16::try_from(out.len()).unwrap_or(u16::MAX);
        if let Err(e) = steer::attach(first, n) {
            tracing::warn!(
                error = %e,
                "proxy.http3: cannot attach the connection-id steering program \
                 (SO_ATTACH_REUSEPORT_CBPF); the kernel's address hash picks the worker, so a \
                 client whose address changes may lose its connection"
            );
        }
    }
    Ok(out)
}

/// Each worker's endpoint settings: one stateless-reset key for the process (a worker that
/// gets a datagram of a connection it does not know answers with a reset the client
/// believes), connection ids that name the worker ([`steer::CoreCid`]).
pub(crate) fn endpoint_configs(workers: usize) -> Vec<Arc<quinn_proto::EndpointConfig>> {
    let mut secret = [0u8; 64];
    rand::Rng::fill(&mut rand::thread_rng(), &mut secret[..]);
    let key: Arc<dyn quinn_proto::crypto::HmacKey> =
        Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret));
    (0..workers.max(1))
        .map(|i| {
            let index = u16::try_from(i).unwrap_or(u16::MAX);
            let mut c = quinn_proto::EndpointConfig::new(key.clone());
            c.cid_generator(move || Box::new(steer::CoreCid { index }));
            Arc::new(c)
        })
        .collect()
}
