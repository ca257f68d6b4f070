//! Per-core state: everything one worker thread owns and no other core touches. Free I/O
//! buffers (idle connections hold none), pooled keep-alive connections to backends, this core's
//! balancer loads and statistics, and the chain of states a hot reload leaves behind.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;

use crate::balance::{self, CoreBalancer};
use crate::control::access_log::AccessLog;
use crate::control::stats::{CoreRecorder, Counter, Gauge};
use crate::data_path::request::HeaderTable;
use crate::runtime::shared::Shared;
use crate::tls::Conn;
use lb::{UpstreamError, UpstreamErrorKind};

pub(crate) const BUF_SIZE: usize = 4 * 1024;
/// Pooled upstream connections idle at least this long are checked with a peek before reuse.
const PEEK_AFTER_IDLE: Duration = Duration::from_millis(500);
/// Free buffers kept per core (16 KiB each): enough for the connections busy at once.
const MAX_FREE_BUFS: usize = 128;

pub(crate) struct IdleConn {
    stream: Conn,
    since: Instant,
}

/// Per-core state. Lives in an `Rc`: never crosses threads.
pub(crate) struct Core {
    pub(crate) shared: Arc<Shared>,
    /// `pools[group][backend]`: idle keep-alive connections, most recent last.
    pub(crate) pools: Vec<Vec<RefCell<Vec<IdleConn>>>>,
    /// Backend choice for new sessions and stateless requests (this core's loads).
    pub(crate) bal: CoreBalancer,
    /// Free I/O buffers, so idle connections hold none and busy ones allocate none.
    pub(crate) bufs: RefCell<Vec<Vec<u8>>>,
    /// Free header-range tables, so an idle connection holds none either.
    pub(crate) header_tables: RefCell<Vec<HeaderTable>>,
    /// This core's statistics since the last flush to the hub.
    pub(crate) rec: RefCell<CoreRecorder>,
    /// JSON access log lines not yet written, and where they go (off by default).
    pub(crate) access_log: Option<RefCell<AccessLog>>,
    /// Audit trail lines not yet written (`[audit]`; the same kind of log, its own file).
    pub(crate) audit: Option<RefCell<crate::data_path::audit::AuditLog>>,
    /// This core's index (request ids in the access log).
    pub(crate) index: usize,
    /// Set when a reload has built a newer state: connections move to it at their next
    /// request, and connections to backends are no longer pooled here.
    pub(crate) next: RefCell<Option<Rc<Core>>>,
    /// Where reloads publish configurations, and the generation this state was built for.
    pub(crate) live: Arc<crate::control::reload::Live>,
    pub(crate) generation: u64,
    /// Every state of this worker still in use (the flusher's list).
    pub(crate) states: Rc<RefCell<Vec<Rc<Core>>>>,
    /// This worker's idle keep-alive connections, parked with no task.
    pub(crate) park: Rc<crate::runtime::park::IdleSet>,
    /// Backend eras learned and backend sessions held for bridged 2026-07-28 requests.
    pub(crate) bridges: crate::data_path::era_bridge::Bridges,
    /// Policy classes of the callers seen here, per group (built anew with each state, so a
    /// reload's new policies apply at once).
    pub(crate) policy_classes: crate::data_path::policy::ClassCache,
    /// Policed list answers as each caller class saw them last (built anew with each state).
    pub(crate) seen_lists: crate::data_path::policy::SeenLists,
    /// The response caches of the groups with `[servers.cache]` (built anew with each state:
    /// a reload starts them empty).
    pub(crate) caches: crate::data_path::cache::Caches,
}

impl Core {
    pub(crate) fn take_headers(&self) -> HeaderTable {
        self.header_tables
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(16))
    }

    pub(crate) fn give_headers(&self, mut t: HeaderTable) {
        if t.capacity() == 0 {
            return;
        }
        t.clear();
        let mut tables = self.header_tables.borrow_mut();
        if tables.len() < MAX_FREE_BUFS {
            tables.push(t);
        }
    }

    pub(crate) fn take_buf(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
    }

    pub(crate) fn give_buf(&self, mut b: Vec<u8>) {
        if b.capacity() == 0 {
            return;
        }
        b.clear();
        if b.capacity() > 4 * BUF_SIZE {
            b.shrink_to(BUF_SIZE);
        }
        let mut bufs = self.bufs.borrow_mut();
        if bufs.len() < MAX_FREE_BUFS {
            bufs.push(b);
        }
    }

    /// A pooled connection that is still open (unless `fresh`), or a new one; and whether it
    /// was pooled.
    pub(crate) async fn upstream(
        &self,
        group: usize,
        backend: usize,
        fresh: bool,
    ) -> Result<(Conn, bool), UpstreamError> {
        if !fresh {
            if let Some(c) = self.pooled(group, backend) {
                return Ok((c, true));
            }
        }
        let Some(b) = self
            .shared
            .config
            .servers
            .get(group)
            .and_then(|g| g.backends.get(backend))
        else {
            return Err(UpstreamError::connect(UpstreamErrorKind::ConnectRefused));
        };
        // The connect and, for https backends, the TLS handshake share the connect timeout.
        let connect = async {
            let s = TcpStream::connect_addr(b.addr).await.map_err(|e| {
                tracing::debug!(backend = %b.name, error = %e, "connect failed");
                UpstreamErrorKind::ConnectRefused
            })?;
            let _ = s.set_nodelay(true);
            match &b.tls {
                None => Ok(Conn::Plain(s)),
                Some(tls) => Conn::connect(s, tls).await.map_err(|e| {
                    tracing::debug!(backend = %b.name, error = %e, "TLS handshake failed");
                    UpstreamErrorKind::TlsHandshake
                }),
            }
        };
        let s = match monoio::time::timeout(self.shared.config.proxy.connect_timeout, connect).await
        {
            Ok(r) => r.map_err(UpstreamError::connect)?,
            Err(_) => return Err(UpstreamError::connect(UpstreamErrorKind::ConnectTimeout)),
        };
        self.rec.borrow_mut().count(Counter::UpstreamConnects, 1);
        Ok((s, false))
    }

    /// A pooled connection to the backend that is still open.
    ///
    /// Connections idle past `upstream_idle_timeout` stay where they are: the newest is on
    /// top, so when it has expired every one under it has too, and they are closed by
    /// [`Core::sweep_pools`] after this request's answer rather than before its connect (a
    /// close is a CLOSE and an ASYNC_CANCEL in monoio 0.2.4; eight of them went ahead of the
    /// connect of an agent's first call after a pause).
    fn pooled(&self, group: usize, backend: usize) -> Option<Conn> {
        let timeout = self.shared.config.proxy.upstream_idle_timeout;
        let pool = self.pools.get(group).and_then(|g| g.get(backend))?;
        let now = super::clock::now();
        loop {
            let (mut c, idle) = {
                let mut p = pool.borrow_mut();
                let idle = now.saturating_duration_since(p.last()?.since);
                if idle >= timeout {
                    return None;
                }
                (p.pop()?, idle)
            };
            self.rec.borrow_mut().gauge(Gauge::UpstreamIdle, -1);
            // The peek costs a syscall (about 2.5 µs per request measured here), so only
            // connections idle long enough for a backend to have closed them are checked.
            if idle < PEEK_AFTER_IDLE || still_open(&mut c.stream) {
                return Some(c.stream);
            }
        }
    }

    /// Closes the pooled connections idle `upstream_idle_timeout` or longer at `now` (each
    /// pool's oldest, at its bottom). Run by the flusher ([`crate::runtime::flush`]): on a
    /// wake-up the worker has anyway while requests come, on a timer of its own when none do.
    pub(crate) fn sweep_pools(&self, now: Instant) {
        let timeout = self.shared.config.proxy.upstream_idle_timeout;
        let mut closed = 0usize;
        for pool in self.pools.iter().flatten() {
            let mut p = pool.borrow_mut();
            let expired = p.partition_point(|c| now.saturating_duration_since(c.since) >= timeout);
            if expired > 0 {
                closed += expired;
                p.drain(..expired);
            }
        }
        if closed > 0 {
            self.rec
                .borrow_mut()
                .gauge(Gauge::UpstreamIdle, -(closed as i64));
        }
    }

    /// When a dormant flusher should wake to close pooled connections no request came to use:
    /// once the oldest has idled twice `upstream_idle_timeout` (none pooled: `None`). While
    /// requests come, the flushes at their ends close expired connections with no wake-up of
    /// their own; the slack spares a wake-up per call to an agent that calls a little less
    /// often than the timeout (every 5 s against 4 s), whose next call comes first.
    pub(crate) fn pool_sweep_due(&self) -> Option<Instant> {
        let timeout = self.shared.config.proxy.upstream_idle_timeout;
        let oldest = self
            .pools
            .iter()
            .flatten()
            .filter_map(|p| p.borrow().first().map(|c| c.since))
            .min()?;
        // A timeout too long to add to the clock: never due.
        oldest.checked_add(timeout.saturating_mul(2))
    }

    pub(crate) fn put_upstream(&self, group: usize, backend: usize, mut stream: Conn) {
        if self.next.borrow().is_some() {
            // Replaced by a reload: the connection closes rather than idle in a dead pool.
            return;
        }
        let max = self.shared.config.proxy.upstream_max_idle;
        if !stream.is_clean() {
            return;
        }
        if let Some(pool) = self.pools.get(group).and_then(|g| g.get(backend)) {
            let mut p = pool.borrow_mut();
            if p.len() < max {
                p.push(IdleConn {
                    stream,
                    since: super::clock::now(),
                });
                self.rec.borrow_mut().gauge(Gauge::UpstreamIdle, 1);
            }
        }
    }
}

/// Whether an idle pooled socket is still open: a non-blocking peek sees neither EOF nor
/// unexpected bytes. Costs one syscall; saves sending a request into a socket the backend
/// already closed (which for a `tools/call` could not be safely retried).
fn still_open(s: &mut Conn) -> bool {
    s.is_clean()
        && s.tcp()
            .is_some_and(|t| crate::tls::peek(t) == crate::tls::Incoming::Nothing)
}

impl Core {
    /// Hands a log's buffered lines (the access log's or the audit trail's) to the writer
    /// thread, counting under `dropped` any its full queue had to drop. Borrows the statistics
    /// mutably: never call it while they are borrowed.
    pub(crate) fn flush_log(&self, l: &mut AccessLog, dropped: Counter) {
        let n = l.flush();
        if n > 0 {
            self.rec.borrow_mut().count(dropped, n);
        }
    }

    /// This core's state for `shared`. After a reload, `prev` (the state it replaces) hands
    /// over its free buffers and its idle upstream connections to backends still listed at the
    /// same address.
    pub(crate) fn new(
        live: Arc<crate::control::reload::Live>,
        states: Rc<RefCell<Vec<Rc<Core>>>>,
        park: Rc<crate::runtime::park::IdleSet>,
        index: usize,
        prev: Option<&Core>,
    ) -> Rc<Core> {
        let generation = live.generation();
        let shared = live.load();
        let pools: Vec<Vec<RefCell<Vec<IdleConn>>>> = shared
            .config
            .servers
            .iter()
            .map(|g| {
                g.backends
                    .iter()
                    .map(|_| RefCell::new(Vec::new()))
                    .collect()
            })
            .collect();
        let mut bufs = Vec::new();
        let mut header_tables = Vec::new();
        if let Some(p) = prev {
            bufs = std::mem::take(&mut *p.bufs.borrow_mut());
            header_tables = std::mem::take(&mut *p.header_tables.borrow_mut());
            let mut moved = 0i64;
            for (g, og) in shared.config.servers.iter().zip(&pools) {
                let Some((pgi, pg)) = p
                    .shared
                    .config
                    .servers
                    .iter()
                    .enumerate()
                    .find(|(_, o)| o.name == g.name)
                else {
                    continue;
                };
                for (b, pool) in g.backends.iter().zip(og) {
                    let same = pg
                        .backends
                        .iter()
                        .position(|o| o.tag == b.tag && o.addr == b.addr);
                    if let Some(old) = same.and_then(|pbi| p.pools.get(pgi)?.get(pbi)) {
                        let conns = std::mem::take(&mut *old.borrow_mut());
                        moved += conns.len() as i64;
                        *pool.borrow_mut() = conns;
                    }
                }
            }
            // The rest close; the idle gauge follows what stays pooled.
            let mut closed = 0i64;
            for g in &p.pools {
                for pool in g {
                    closed += pool.borrow_mut().drain(..).count() as i64;
                }
            }
            let mut rec = p.rec.borrow_mut();
            rec.gauge(Gauge::UpstreamIdle, -(closed + moved));
            // The old state's cached answers go with it.
            rec.gauge(Gauge::CacheBytes, -(p.caches.bytes() as i64));
        }
        let access_log = shared
            .config
            .proxy
            .access_log
            .as_deref()
            .and_then(|t| AccessLog::open_or_say(t, "access log"))
            .map(RefCell::new);
        let audit = crate::data_path::audit::AuditLog::open(&shared.config, index);
        let rec = CoreRecorder::for_config(&shared.config);
        let bridges = crate::data_path::era_bridge::Bridges::new(&shared.config);
        let caches = crate::data_path::cache::Caches::new(&shared.config);
        let core = Core {
            pools,
            bal: CoreBalancer::new(&shared.config, index, balance::now_ns()),
            bufs: RefCell::new(bufs),
            header_tables: RefCell::new(header_tables),
            access_log,
            audit,
            index,
            rec: RefCell::new(rec),
            shared,
            next: RefCell::new(None),
            live,
            generation,
            states: states.clone(),
            park,
            bridges,
            policy_classes: Default::default(),
            seen_lists: Default::default(),
            caches,
        };
        if prev.is_some() {
            let n: i64 = core
                .pools
                .iter()
                .flatten()
                .map(|p| p.borrow().len() as i64)
                .sum();
            core.rec.borrow_mut().gauge(Gauge::UpstreamIdle, n);
        }
        let core = Rc::new(core);
        states.borrow_mut().push(core.clone());
        // The flusher drops the state this one replaces once nothing holds it.
        crate::runtime::flush::note();
        core
    }

    /// Whether a reload has published a configuration newer than this state's: one atomic
    /// load, per request and per accepted connection.
    #[inline]
    pub(crate) fn stale(&self) -> bool {
        self.generation != self.live.generation()
    }

    /// The newest state: `self`, the one a reload put after it, or (when the configuration
    /// moved on since) a new one built now.
    pub(crate) fn latest(self: &Rc<Core>) -> Rc<Core> {
        let mut c = self.clone();
        loop {
            let next = c.next.borrow().clone();
            match next {
                Some(n) => c = n,
                None => break,
            }
        }
        if c.stale() {
            let new = Core::new(
                c.live.clone(),
                c.states.clone(),
                c.park.clone(),
                c.index,
                Some(&c),
            );
            *c.next.borrow_mut() = Some(new.clone());
            return new;
        }
        c
    }
}
