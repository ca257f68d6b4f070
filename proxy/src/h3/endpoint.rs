//! A worker's QUIC endpoint: its own UDP socket (one of the `SO_REUSEPORT` group on
//! `[proxy.http3] listen`), quinn-proto's `Endpoint` and the connections it accepted, driven
//! by one task. Another task only receives datagrams into the inbox, so a receive is never
//! cancelled (a cancelled io_uring receive can lose the datagram it completed with).
//!
//! Each pass: datagrams to the endpoint (new connections: a Retry first, unless the client's
//! address was validated by a token, so a spoofed source gets no more than a Retry back);
//! timeouts due; then every connection a datagram, a timeout or one of its streams touched
//! ([`Kick`]): endpoint events, application events (waking stream tasks), datagrams out.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use monoio::net::udp::UdpSocket;
use quinn_proto::{ConnectionHandle, DatagramEvent, Endpoint, VarInt};

use super::guard::{Guard, H3Flood};
use super::quic::{ConnState, Kick, Shared, H3_EXCESSIVE_LOAD};
use crate::control::stats::Counter;
use crate::runtime::core::Core;
use crate::runtime::{OPEN_CONNECTIONS, SHUTDOWN};

/// Datagrams waiting for the driver past this are dropped (QUIC retransmits): a driver that
/// falls behind does not grow memory without bound.
const INBOX_MAX: usize = 4096;

/// Largest datagram read (QUIC's limit; what arrives is at most the path's MTU).
const MAX_DATAGRAM: usize = 65_527;

/// What a worker needs to serve HTTP/3: its socket and the endpoint's settings (shared by all
/// workers: one stateless-reset key and one token key for the process).
pub struct H3Socket {
    /// This worker's UDP socket, bound, non-blocking.
    pub socket: std::net::UdpSocket,
    /// The QUIC server settings (TLS, transport limits, tokens).
    pub server: Arc<quinn_proto::ServerConfig>,
    /// The endpoint settings (stateless-reset key, connection ids).
    pub endpoint: Arc<quinn_proto::EndpointConfig>,
}

/// Runs the worker's endpoint until the process ends. `newest`: the core's current state
/// (after a reload, new connections take the new one). A panic in the endpoint's pass (quinn
/// or this code, on some datagram) is contained: that worker's QUIC connections end, a new
/// endpoint takes the socket over, and the worker's other clients go on.
pub(crate) async fn drive(h: H3Socket, newest: impl Fn() -> Option<Rc<Core>>) {
    let socket = match UdpSocket::from_std(h.socket) {
        Ok(s) => Rc::new(s),
        Err(e) => {
            tracing::error!(error = %e, "proxy.http3: cannot use the UDP socket");
            return;
        }
    };
    let kick = Rc::new(Kick::default());
    let inbox = Rc::new(RefCell::new(VecDeque::new()));
    monoio::spawn(receive(socket.clone(), inbox.clone(), kick.clone()));
    let new_endpoint = |server: &Arc<quinn_proto::ServerConfig>| {
        Endpoint::new(h.endpoint.clone(), Some(server.clone()), false, None)
    };
    let mut d = Driver {
        ep: new_endpoint(&h.server),
        server: h.server.clone(),
        conns: HashMap::new(),
        socket,
        out: Vec::with_capacity(1500),
        kick,
    };
    loop {
        if crate::runtime::contained(d.run(&inbox, &newest))
            .await
            .is_some()
        {
            return;
        }
        if let Some(core) = newest() {
            core.rec.borrow_mut().count(Counter::WorkerPanics, 1);
        }
        tracing::error!(
            connections = d.conns.len(),
            "the HTTP/3 endpoint panicked: this worker's QUIC connections were closed, a new \
             endpoint serves its socket"
        );
        for (_, c) in d.conns.drain() {
            if let Ok(mut c) = c.try_borrow_mut() {
                c.lost = Some(quinn_proto::ConnectionError::LocallyClosed);
                c.permit = None;
                c.wake_all();
            }
        }
        d.kick.dirty.borrow_mut().clear();
        d.ep = new_endpoint(&d.server);
    }
}

/// Receives datagrams into the driver's inbox.
async fn receive(
    socket: Rc<UdpSocket>,
    inbox: Rc<RefCell<VecDeque<(BytesMut, SocketAddr)>>>,
    kick: Rc<Kick>,
) {
    let mut buf = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        buf.clear();
        let (r, b) = socket.recv_from(buf).await;
        buf = b;
        match r {
            Ok((n, from)) => {
                let mut q = inbox.borrow_mut();
                if q.len() < INBOX_MAX {
                    q.push_back((BytesMut::from(buf.get(..n).unwrap_or_default()), from));
                }
                drop(q);
                kick.ring();
            }
            Err(e) => {
                if crate::control::logs::first_in_window("HTTP/3 receive failed", "", "") {
                    tracing::warn!(error = %e, "HTTP/3: receiving a datagram failed");
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

struct Driver {
    ep: Endpoint,
    /// The endpoint's QUIC settings (the newest configuration's, from its first new
    /// connection on).
    server: Arc<quinn_proto::ServerConfig>,
    conns: HashMap<ConnectionHandle, Shared>,
    socket: Rc<UdpSocket>,
    /// The datagram being built for sending.
    out: Vec<u8>,
    kick: Rc<Kick>,
}

impl Driver {
    /// Passes until the process ends.
    async fn run(
        &mut self,
        inbox: &RefCell<VecDeque<(BytesMut, SocketAddr)>>,
        newest: &impl Fn() -> Option<Rc<Core>>,
    ) {
        loop {
            let next = self
                .conns
                .values()
                .filter_map(|c| c.borrow_mut().conn.poll_timeout())
                .min();
            match next {
                Some(t) => {
                    let at = monoio::time::Instant::from_std(t);
                    let _ = monoio::time::timeout_at(at, self.kick.wait()).await;
                }
                None => self.kick.wait().await,
            }
            let now = Instant::now();
            loop {
                let next = inbox.borrow_mut().pop_front();
                let Some((data, from)) = next else { break };
                self.datagram(now, data, from, newest).await;
            }
            for c in self.conns.values() {
                let mut c = c.borrow_mut();
                if c.conn.poll_timeout().is_some_and(|t| t <= now) {
                    c.conn.handle_timeout(now);
                    c.kick();
                }
            }
            let dirty = std::mem::take(&mut *self.kick.dirty.borrow_mut());
            for h in dirty {
                self.pass(h).await;
            }
        }
    }

    async fn datagram(
        &mut self,
        now: Instant,
        data: BytesMut,
        from: SocketAddr,
        newest: &impl Fn() -> Option<Rc<Core>>,
    ) {
        self.out.clear();
        match self.ep.handle(now, from, None, None, data, &mut self.out) {
            Some(DatagramEvent::ConnectionEvent(h, ev)) => {
                if let Some(c) = self.conns.get(&h) {
                    let mut c = c.borrow_mut();
                    c.conn.handle_event(ev);
                    let frames = c.conn.stats().frame_rx;
                    let uni = c.uni_streams;
                    if let Some(flood) = c.guard.observe(&frames, uni, now) {
                        if !c.conn.is_closed() {
                            let reason = Bytes::from_static(b"excessive load");
                            c.conn
                                .close(now, VarInt::from_u32(H3_EXCESSIVE_LOAD), reason);
                            if let Some(core) = newest() {
                                count_flood(&core, flood, c.conn.remote_address());
                            }
                        }
                    }
                    c.kick();
                }
            }
            Some(DatagramEvent::Response(t)) => self.send(t.size, t.destination).await,
            Some(DatagramEvent::NewConnection(incoming)) => {
                let Some(core) = newest() else {
                    self.ep.ignore(incoming);
                    return;
                };
                // Reloaded settings apply from the next connection on.
                if let Some(server) = &core.shared.h3_server {
                    if !Arc::ptr_eq(server, &self.server) {
                        self.server = server.clone();
                        self.ep.set_server_config(Some(server.clone()));
                    }
                }
                let max = core.shared.config.proxy.max_connections;
                self.out.clear();
                if SHUTDOWN.load(Ordering::Relaxed)
                    || OPEN_CONNECTIONS.load(Ordering::Relaxed) >= max
                {
                    core.rec.borrow_mut().count(Counter::ConnectionsRefused, 1);
                    self.refuse(&core, incoming).await;
                } else if !incoming.remote_address_validated() && incoming.may_retry() {
                    // Address validation: the client must echo the Retry's token from the
                    // address it claims before the server sends anything larger.
                    match self.ep.retry(incoming, &mut self.out) {
                        Ok(t) => {
                            core.rec.borrow_mut().count(Counter::H3Retries, 1);
                            self.send(t.size, t.destination).await;
                        }
                        Err(e) => self.ep.ignore(e.into_incoming()),
                    }
                } else {
                    let peer = incoming.remote_address();
                    // Only a validated address takes a slot of `max_connections_per_ip` (a
                    // spoofed Initial got a Retry above, never a slot).
                    let Ok(permit) = crate::runtime::per_ip_slot(&core, peer.ip()) else {
                        self.refuse(&core, incoming).await;
                        return;
                    };
                    match self.ep.accept(incoming, now, &mut self.out, None) {
                        Ok((h, conn)) => {
                            let floods = core.shared.config.proxy.http3.unwrap_or_default().floods;
                            let guard = Guard::new(floods, now);
                            let st = ConnState::new(conn, h, self.kick.clone(), guard, permit);
                            let st = Rc::new(RefCell::new(st));
                            st.borrow_mut().kick();
                            self.conns.insert(h, st.clone());
                            let task = super::serve_connection(core.clone(), st, peer);
                            crate::runtime::spawn_client(core, task);
                        }
                        Err(e) => {
                            if let Some(t) = e.response {
                                self.send(t.size, t.destination).await;
                            }
                        }
                    }
                }
            }
            None => {}
        }
    }

    /// Everything a connection has to do after something touched it.
    async fn pass(&mut self, h: ConnectionHandle) {
        let Some(st) = self.conns.get(&h).cloned() else {
            return;
        };
        st.borrow_mut().dequeued();
        let mut drained = false;
        {
            let mut s = st.borrow_mut();
            while let Some(ev) = s.conn.poll_endpoint_events() {
                drained |= ev.is_drained();
                if let Some(back) = self.ep.handle_event(h, ev) {
                    s.conn.handle_event(back);
                }
            }
            while let Some(ev) = s.conn.poll() {
                s.on_event(ev);
            }
        }
        loop {
            self.out.clear();
            let now = Instant::now();
            let t = st.borrow_mut().conn.poll_transmit(now, 1, &mut self.out);
            let Some(t) = t else { break };
            self.send(t.size, t.destination).await;
        }
        if drained {
            self.conns.remove(&h);
            let mut s = st.borrow_mut();
            s.permit = None;
            if s.lost.is_none() {
                s.lost = Some(quinn_proto::ConnectionError::LocallyClosed);
            }
            s.wake_all();
        }
    }

    /// Refuses a new connection (CONNECTION_REFUSED in an Initial CONNECTION_CLOSE).
    async fn refuse(&mut self, core: &Core, incoming: quinn_proto::Incoming) {
        core.rec
            .borrow_mut()
            .count(Counter::H3ConnectionsRefused, 1);
        self.out.clear();
        let t = self.ep.refuse(incoming, &mut self.out);
        self.send(t.size, t.destination).await;
    }

    /// Sends the first `size` bytes of `out` to `to` (a failed send is a lost datagram, which
    /// QUIC recovers from).
    async fn send(&mut self, size: usize, to: SocketAddr) {
        let mut buf = std::mem::take(&mut self.out);
        buf.truncate(size);
        let (r, mut b) = self.socket.send_to(buf, to).await;
        if let Err(e) = r {
            if crate::control::logs::first_in_window("HTTP/3 send failed", "", "") {
                tracing::debug!(error = %e, %to, "HTTP/3: sending a datagram failed");
            }
        }
        b.clear();
        self.out = b;
    }
}

/// Counts (and logs, once in a while) a connection the flood guard closed.
fn count_flood(core: &Core, flood: H3Flood, peer: SocketAddr) {
    let counter = match flood {
        H3Flood::RapidReset => Counter::H3RapidResets,
        H3Flood::Ping => Counter::H3PingFloods,
        H3Flood::Migration => Counter::H3MigrationFloods,
    };
    core.rec.borrow_mut().count(counter, 1);
    let what = "HTTP/3 flood: connection closed with H3_EXCESSIVE_LOAD";
    if crate::control::logs::first_in_window_info(what, flood.name(), "") {
        tracing::info!(%peer, flood = flood.name(), "{what}");
    }
}
