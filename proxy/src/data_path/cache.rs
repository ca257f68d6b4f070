//! The response cache on the data path (`[servers.cache]`; the decisions are
//! `crate::cache`'s plain functions): a cacheable request is answered from this core's store
//! with its own id spliced in, or waits for an identical request already in flight on this
//! core (coalescing), or goes to a backend with a [`Fill`] that stores the answer on its way
//! back. Change notifications in a backend's SSE streams evict, on every core.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Instant;

use crate::cache::store::{Entry, Moved, Store};
use crate::cache::{self, CacheConfig, Change, EventSniffer, Kind, Requester, Scope};
use crate::config::Config;
use crate::control::stats::{Counter, Gauge};
use crate::data_path::request::{ClientConn, Next};
use crate::data_path::{policy, reply};
use crate::policy::confirm::ToolHints;
use crate::runtime::core::Core;

/// The caches of this core's groups (`None` for groups without `[servers.cache]`).
pub(crate) struct Caches {
    groups: Vec<Option<GroupCache>>,
}

/// One group's cache on this core.
struct GroupCache {
    cfg: Arc<CacheConfig>,
    /// Where the group's change counters are.
    slot: usize,
    store: RefCell<Store>,
    /// Requests on their way to a backend, by key, that identical ones may wait for.
    flights: RefCell<HashMap<Box<[u8]>, Rc<Flight>>>,
    /// The public and private keys of the request being looked up (reused buffers).
    keys: RefCell<(Vec<u8>, Vec<u8>)>,
    /// Cached lists as each caller class with a policy may see them.
    filtered: RefCell<FilteredLists>,
}

/// Most cached list answers a group keeps filtered on a core (each for every class of caller
/// that asked for it); past it, or past the group's `max_bytes`, all are forgotten.
const MAX_FILTERED: usize = 64;

/// One filtered list: the caller class's rules, the message as it may see it, and where its
/// id is.
type FilteredList = (Box<[u16]>, Rc<[u8]>, std::ops::Range<usize>);

/// Cached list answers as the caller classes of a group's policy may see them, so a cache hit
/// of a policed caller is not parsed, filtered and written again: by the cached message they
/// were made from (its address; the message is held, so the address names it while it is
/// kept), then by the class's rules. A message the store no longer holds (replaced after a
/// `list_changed`, expired, evicted) is dropped at the next insertion; a reload starts empty.
#[derive(Default)]
struct FilteredLists {
    by_source: HashMap<usize, (Rc<[u8]>, Vec<FilteredList>)>,
    bytes: usize,
}

impl FilteredLists {
    fn get(&self, source: &Rc<[u8]>, rules: &[u16]) -> Option<(Rc<[u8]>, std::ops::Range<usize>)> {
        let (held, lists) = self.by_source.get(&address(source))?;
        if !Rc::ptr_eq(held, source) {
            return None;
        }
        lists
            .iter()
            .find(|(r, _, _)| **r == *rules)
            .map(|(_, msg, at)| (msg.clone(), at.clone()))
    }

    fn put(&mut self, source: &Rc<[u8]>, list: FilteredList, max_bytes: usize) {
        let size = list.1.len();
        // Messages only this cache still holds are gone from the store.
        self.by_source
            .retain(|_, (held, _)| Rc::strong_count(held) > 1);
        self.bytes = self
            .by_source
            .values()
            .flat_map(|(_, lists)| lists.iter().map(|l| l.1.len()))
            .sum();
        if self.by_source.len() >= MAX_FILTERED || self.bytes + size > max_bytes {
            self.by_source.clear();
            self.bytes = 0;
        }
        if size > max_bytes {
            return;
        }
        self.bytes += size;
        self.by_source
            .entry(address(source))
            .or_insert_with(|| (source.clone(), Vec::new()))
            .1
            .push(list);
    }
}

/// A filtered list to send: the message and where its id is (`None`: it carries the request's
/// own id already).
type FilteredAnswer = (Rc<[u8]>, Option<std::ops::Range<usize>>);

/// Where a cached message is (its identity while it is held).
fn address(msg: &Rc<[u8]>) -> usize {
    Rc::as_ptr(msg) as *const u8 as usize
}

/// A request in flight that others wait for.
#[derive(Default)]
struct Flight {
    done: Cell<bool>,
    wakers: RefCell<Vec<Waker>>,
}

/// Ends a flight when the request that leads it is answered (or fails): its waiters wake and
/// look in the store again.
pub(crate) struct FlightGuard<'a> {
    group: &'a GroupCache,
    key: Box<[u8]>,
    flight: Rc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        self.flight.done.set(true);
        for w in self.flight.wakers.borrow_mut().drain(..) {
            w.wake();
        }
        if let Ok(mut f) = self.group.flights.try_borrow_mut() {
            f.remove(&self.key);
        }
    }
}

/// What the answer to a request that missed fills: the keys it may be kept under, and what
/// the lifetime decision needs.
pub(crate) struct Fill {
    gi: usize,
    kind: Kind,
    /// The change stamp read before the request went out: a change during it leaves the
    /// entry stale.
    stamp: u64,
    in_session: bool,
    public: Box<[u8]>,
    private: Option<Box<[u8]>>,
}

/// What the cache made of a request.
pub(crate) enum Lookup<'a> {
    /// Answered from the cache.
    Answered(Next),
    /// To a backend, with `c.cache_fill` set; identical requests on this core wait for it
    /// while the guard lives.
    Miss(Option<FlightGuard<'a>>),
    /// Not the cache's business.
    Pass,
}

impl Caches {
    /// Empty caches for the groups of `config`.
    pub(crate) fn new(config: &Config) -> Self {
        Caches {
            groups: config
                .servers
                .iter()
                .map(|g| {
                    g.cache.as_ref().map(|cfg| GroupCache {
                        cfg: cfg.clone(),
                        slot: cache::group_slot(&g.name),
                        store: RefCell::new(Store::new(cfg.max_bytes)),
                        flights: Default::default(),
                        keys: Default::default(),
                        filtered: Default::default(),
                    })
                })
                .collect(),
        }
    }

    fn group(&self, gi: usize) -> Option<&GroupCache> {
        self.groups.get(gi).and_then(Option::as_ref)
    }

    /// Whether group `gi` has a cache.
    pub(crate) fn has(&self, gi: usize) -> bool {
        self.group(gi).is_some()
    }

    /// Bytes held by every group's store (the gauge's share of this core).
    pub(crate) fn bytes(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|g| g.store.borrow().bytes())
            .sum()
    }
}

/// The tool name of a `tools/call`, from its raw JSON string (an escaped name is not read:
/// such a call is not cached).
fn tool_name(raw: Option<&[u8]>) -> Option<&str> {
    let inner = raw?.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if inner.contains(&b'\\') {
        return None;
    }
    std::str::from_utf8(inner).ok()
}

/// Answers `c`'s request from the cache when it can (waiting once for an identical request
/// in flight on this core), or marks it to fill the cache on its way back. A hit allocates
/// nothing: the keys are written into the group's reused buffers. `in_session`: the request
/// belongs to a backend's session (not to one of mcplb's own, which hold no backend state);
/// `declared`: what the client of mcplb's own session for a 2026-07-28 backend declared.
pub(crate) async fn lookup<'a>(
    core: &'a Core,
    c: &mut ClientConn,
    gi: usize,
    in_session: bool,
    declared: Option<&crate::session::era::Declared<'_>>,
) -> Lookup<'a> {
    let Some(g) = core.caches.group(gi) else {
        return Lookup::Pass;
    };
    let Some(kind) = Kind::of(c.meta.method) else {
        return Lookup::Pass;
    };
    if c.req.id().is_none() {
        return Lookup::Pass;
    }
    let who = Requester {
        identity: &c.caller.name,
        version: c.req.header(b"mcp-protocol-version").unwrap_or_default(),
        in_session,
        via: 0,
        declared: declared.map(|d| (d.capabilities, d.client_info)),
    };
    let (stamp, public, private) = match probe(core, g, gi, kind, c.req.body(), &who) {
        Probe::Pass => return Lookup::Pass,
        Probe::Hit(msg, at) => {
            core.rec.borrow_mut().count(Counter::CacheHits, 1);
            return Lookup::Answered(answer(core, g, c, &msg, at).await);
        }
        Probe::Miss(stamp, public, private) => (stamp, public, private),
    };
    let flight = g.flights.borrow().get(&public).cloned();
    if let Some(f) = flight {
        let timeout = core.shared.config.proxy.upstream_timeout;
        let _ = monoio::time::timeout(timeout, wait(&f)).await;
        // A change while it waited leaves what the flight kept stale.
        let now_stamp = if kind == Kind::ResourcesRead {
            let uri = cache::request_parts(c.req.body()).and_then(|p| p.uri);
            cache::stamp_for(g.slot, kind, uri)
        } else {
            cache::stamp(g.slot, kind)
        };
        if let Some((msg, at)) = find(core, g, &public, private.as_deref(), now_stamp) {
            core.rec.borrow_mut().count(Counter::CacheCoalesced, 1);
            return Lookup::Answered(answer(core, g, c, &msg, at).await);
        }
    }
    core.rec.borrow_mut().count(Counter::CacheMisses, 1);
    let guard = {
        let mut flights = g.flights.borrow_mut();
        if flights.contains_key(&public) {
            None
        } else {
            let flight = Rc::new(Flight::default());
            flights.insert(public.clone(), flight.clone());
            Some(FlightGuard {
                group: g,
                key: public.clone(),
                flight,
            })
        }
    };
    c.cache_fill = Some(Fill {
        gi,
        kind,
        stamp,
        in_session,
        public,
        private,
    });
    Lookup::Miss(guard)
}

/// What a group's cache has for a request.
enum Probe {
    /// Not the cache's business.
    Pass,
    /// A fresh message and where its id is.
    Hit(Rc<[u8]>, std::ops::Range<usize>),
    /// Nothing fresh: the change stamp read now and the keys (public, private) to fill.
    Miss(u64, Box<[u8]>, Option<Box<[u8]>>),
}

/// Looks a request of `kind` (its JSON-RPC `body`, from `who`) up in group `gi`'s cache `g`.
fn probe(
    core: &Core,
    g: &GroupCache,
    gi: usize,
    kind: Kind,
    body: &[u8],
    who: &Requester<'_>,
) -> Probe {
    let Some(parts) = cache::request_parts(body) else {
        return Probe::Pass;
    };
    let stamp = cache::stamp_for(g.slot, kind, parts.uri);
    let annotated = |t: &str| {
        let known = core.shared.read_only_tools.get(gi).and_then(Option::as_ref);
        known.is_some_and(|k| k.contains(cache::stamp(g.slot, Kind::ToolsList), t))
    };
    if !cache::eligible(&g.cfg, kind, tool_name(parts.name), annotated) {
        return Probe::Pass;
    }
    let mut keys = g.keys.borrow_mut();
    let (public, private) = &mut *keys;
    cache::write_key(public, kind, &parts, who, Scope::Public);
    let has_private = cache::write_key(private, kind, &parts, who, Scope::Private);
    let private = has_private.then_some(private.as_slice());
    match find(core, g, public, private, stamp) {
        Some((msg, at)) => Probe::Hit(msg, at),
        None => Probe::Miss(
            stamp,
            Box::<[u8]>::from(public.as_slice()),
            private.map(Box::<[u8]>::from),
        ),
    }
}

/// A virtual server's request routed to member group `gi` (`body`: as the member gets it,
/// whose id is the client's; `vgi`: the virtual server's group; `in_session`: in a member
/// session): answered from the member group's cache (`Ok`), or the [`Fill`] its answer fills
/// ([`store`] with it; `Err(None)`: not the cache's business). Keyed apart from the group's
/// own requests and from every other virtual server's.
pub(crate) async fn member_lookup(
    core: &Core,
    c: &mut ClientConn,
    (vgi, gi): (usize, usize),
    body: &[u8],
    in_session: bool,
) -> Result<Next, Option<Fill>> {
    let Some(g) = core.caches.group(gi) else {
        return Err(None);
    };
    let Some(kind) =
        Kind::of(c.meta.method).filter(|k| matches!(k, Kind::ToolsCall | Kind::ResourcesRead))
    else {
        return Err(None);
    };
    if c.req.id().is_none() {
        return Err(None);
    }
    let who = Requester {
        identity: &c.caller.name,
        version: c.req.header(b"mcp-protocol-version").unwrap_or_default(),
        in_session,
        via: u32::try_from(vgi).map_or(u32::MAX, |v| v.saturating_add(1)),
        declared: None,
    };
    match probe(core, g, gi, kind, body, &who) {
        Probe::Pass => Err(None),
        Probe::Hit(msg, at) => {
            core.rec.borrow_mut().count(Counter::CacheHits, 1);
            Ok(answer(core, g, c, &msg, at).await)
        }
        Probe::Miss(stamp, public, private) => {
            core.rec.borrow_mut().count(Counter::CacheMisses, 1);
            Err(Some(Fill {
                gi,
                kind,
                stamp,
                in_session,
                public,
                private,
            }))
        }
    }
}

/// The fresh message (kept under `stamp`, the request's current change stamp) under the
/// public key, else under the private one.
fn find(
    core: &Core,
    g: &GroupCache,
    public: &[u8],
    private: Option<&[u8]>,
    stamp: u64,
) -> Option<(Rc<[u8]>, std::ops::Range<usize>)> {
    let now = Instant::now();
    let mut moved = Moved::default();
    let found = {
        let mut store = g.store.borrow_mut();
        let hit = store
            .get(public, now, stamp, &mut moved)
            .map(|e| (e.msg.clone(), e.id.clone()));
        hit.or_else(|| {
            private
                .and_then(|k| store.get(k, now, stamp, &mut moved))
                .map(|e| (e.msg.clone(), e.id.clone()))
        })
    };
    note_moved(core, &moved);
    found
}

/// Waits until `f` is done.
async fn wait(f: &Flight) {
    std::future::poll_fn(|cx| {
        if f.done.get() {
            return Poll::Ready(());
        }
        f.wakers.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .await;
}

/// Sends the cached message `msg` (its id at `at`) as the answer to `c`'s request `id`,
/// through the caller's list filter when its policy has one (filtered once per caller class
/// and cached message: [`FilteredLists`]).
async fn answer(
    core: &Core,
    g: &GroupCache,
    c: &mut ClientConn,
    msg: &Rc<[u8]>,
    at: std::ops::Range<usize>,
) -> Next {
    let close =
        c.req.head.close || crate::runtime::SHUTDOWN.load(std::sync::atomic::Ordering::Relaxed);
    let sse = cache::wants_sse(c.req.header(b"accept"));
    if c.out.capacity() == 0 {
        c.out = core.take_buf();
    }
    c.out.clear();
    let id = c.req.id().unwrap_or(b"null");
    match c.list_filter.take() {
        None => cache::write_answer(&mut c.out, msg, at, id, sse, close),
        Some(filter) => {
            let seen = g.filtered.borrow().get(msg, filter.class_rules());
            let (body, at) = match seen {
                Some((body, at)) => (body, Some(at)),
                None => match filter_list(core, g, &filter, msg, at, id) {
                    Ok(made) => made,
                    Err(r) => return reply::refuse(c, &r).await,
                },
            };
            match at {
                Some(at) => cache::write_answer(&mut c.out, &body, at, id, sse, close),
                None => cache::write_answer(&mut c.out, &body, 0..0, b"", sse, close),
            }
        }
    }
    c.meta.status = 200;
    c.meta.sse = sse;
    reply::send_out(c, Next::keep_unless(close)).await
}

/// The cached list `msg` (its id at `at`) as the caller of `filter` may see it, with the
/// request's `id` and where it is, kept for the next caller of the same class.
fn filter_list(
    core: &Core,
    g: &GroupCache,
    filter: &policy::ListFilter,
    msg: &Rc<[u8]>,
    at: std::ops::Range<usize>,
    id: &[u8],
) -> Result<FilteredAnswer, crate::data_path::request::Refusal> {
    let mut spliced = Vec::with_capacity(msg.len() + id.len());
    spliced.extend_from_slice(msg.get(..at.start).unwrap_or_default());
    spliced.extend_from_slice(id);
    spliced.extend_from_slice(msg.get(at.end..).unwrap_or_default());
    let body = policy::filter_body(core, filter, spliced, false)?;
    core.rec.borrow_mut().count(Counter::CacheListsFiltered, 1);
    // Kept with the place of its id, for the next request's own; one whose id cannot be
    // found again goes out as it is, and is not kept.
    let Some(m) = cache::response_message(&body, false, id) else {
        return Ok((Rc::from(body), None));
    };
    let body = Rc::<[u8]>::from(m.bytes);
    let list = (Box::from(filter.class_rules()), body.clone(), m.id.clone());
    g.filtered.borrow_mut().put(msg, list, g.cfg.max_bytes);
    Ok((body, Some(m.id)))
}

/// Keeps the backend's answer `body` to the request in `c` (which missed with `fill`) when its
/// hints (or the group's defaults) allow, and learns from a `tools/list` answer which tools
/// only read.
pub(crate) fn store(core: &Core, c: &ClientConn, fill: Fill, body: &[u8], is_sse: bool) {
    let Some(id) = c.req.id() else {
        return;
    };
    let Some(msg) = cache::response_message(body, is_sse, id) else {
        return;
    };
    let Some(h) = cache::hints(&msg.bytes) else {
        return;
    };
    keep(core, c, fill, msg, &h);
}

/// Keeps an answer the era bridge made for the request in `c` (which missed with `fill`):
/// `sent` (JSON, or SSE with `sent_sse`), the answer as the client got it, in the client's
/// era (the key has the era: the request's protocol version); its lifetime from the hints of
/// `backend`, the backend's own answer (JSON or SSE), or none (`None`: an answer mcplb made
/// from the backend session's `initialize`). A 2025-era server sends no hints, so the group's
/// defaults apply, not the `ttlMs: 0` the bridge writes for the client.
pub(crate) fn store_bridged(
    core: &Core,
    c: &ClientConn,
    fill: Fill,
    backend: Option<(&[u8], bool)>,
    (sent, sent_sse): (&[u8], bool),
) {
    let Some(id) = c.req.id() else {
        return;
    };
    let Some(msg) = cache::response_message(sent, sent_sse, id) else {
        return;
    };
    let h = match backend {
        None => cache::hints(&msg.bytes).map(|_| cache::Hints::default()),
        Some((body, sse)) => {
            cache::response_message(body, sse, id).and_then(|m| cache::hints(&m.bytes))
        }
    };
    let Some(h) = h else {
        return;
    };
    keep(core, c, fill, msg, &h);
}

/// Keeps `msg` (a result with hints `h`) under `fill`'s key when its lifetime allows, and
/// learns from a `tools/list` answer which tools only read.
fn keep(core: &Core, c: &ClientConn, fill: Fill, msg: cache::Message, h: &cache::Hints) {
    let Some(g) = core.caches.group(fill.gi) else {
        return;
    };
    if fill.kind == Kind::ToolsList {
        if let Some(known) = core
            .shared
            .read_only_tools
            .get(fill.gi)
            .and_then(Option::as_ref)
        {
            known.learn(cache::stamp(g.slot, Kind::ToolsList), &h.read_only_tools);
        }
    }
    let has_identity = !c.caller.name.is_empty();
    let Some((ttl, scope)) = cache::lifetime(&g.cfg, fill.kind, h, fill.in_session, has_identity)
    else {
        return;
    };
    let key = match scope {
        Scope::Public => fill.public,
        Scope::Private => match fill.private {
            Some(k) => k,
            None => return,
        },
    };
    let entry = Entry {
        msg: msg.bytes.into(),
        id: msg.id,
        expires: Instant::now() + ttl,
        stamp: fill.stamp,
    };
    let mut moved = Moved::default();
    g.store.borrow_mut().put(key, entry, &mut moved);
    note_moved(core, &moved);
}

/// Counts what a store operation dropped and the bytes it moved.
fn note_moved(core: &Core, m: &Moved) {
    if m.evicted == 0 && m.bytes == 0 {
        return;
    }
    let mut rec = core.rec.borrow_mut();
    rec.count(Counter::CacheEvictions, m.evicted);
    rec.gauge(Gauge::CacheBytes, m.bytes);
}

/// Notes a change notification in `data`, one whole message from a backend of group `gi` that
/// reached mcplb some other way than a forwarded answer: the era bridge relays a bridged call's
/// SSE answer or a backend session's GET stream message by message, a virtual server its
/// members' streams. It evicts as in a forwarded answer when the group has a cache. Only a
/// notification counts (a list whose tool describes `notifications/tools/list_changed` evicts
/// nothing; nor does a message without `"jsonrpc": "2.0"`: see `cache::message_changes`).
/// Returns the change bits it carried, cache or not (a virtual server's merged lists follow
/// the list changes of every member).
pub(crate) fn note_message(core: &Core, gi: Option<usize>, data: &[u8]) -> u8 {
    if memchr::memmem::find(data, b"notifications/").is_none() {
        return 0;
    }
    let slot = gi.and_then(|gi| core.caches.group(gi)).map(|g| g.slot);
    let mut bits = 0;
    cache::message_changes(data.trim_ascii(), &mut |ch| {
        bits |= match ch {
            Change::Bits(b) => b,
            Change::Updated(_) => cache::RESOURCES_UPDATED,
        };
        if let Some(slot) = slot {
            note_change(slot, ch);
        }
    });
    bits
}

/// [`note_message`] for one whole SSE event, raw.
pub(crate) fn note_event(core: &Core, gi: usize, event: &[u8]) {
    let Some(g) = core.caches.group(gi) else {
        return;
    };
    let mut joined = Vec::new();
    cache::event_changes(event, &mut joined, &mut |ch| note_change(g.slot, ch));
}

/// Makes what a change notification names stale on every core (the group at `slot`).
fn note_change(slot: usize, change: Change<'_>) {
    match change {
        Change::Bits(bits) => cache::note_changes(slot, bits),
        Change::Updated(uri) => match uri.decoded() {
            Some(text) => cache::note_uri_updated(slot, &text),
            None => cache::note_changes(slot, cache::RESOURCES_UPDATED),
        },
    }
}

/// Most bytes of an SSE answer copied for the cache (a longer one is not kept).
pub(crate) const MAX_COPY: usize = 16 * 1024 * 1024;

/// An SSE answer's bytes (de-chunked) as they are forwarded: change notifications found in
/// them evict on every core, and an answer the cache may keep is copied, so that the stream is
/// never held back (it may carry progress, or a request the client must answer first).
/// A `notifications/tools/list_changed` among them also tells the group's tool hints
/// (`confirm_destructive`: what was known harmless is asked about again). Only a notification
/// counts, however its event is cut between reads: a log line or a tool description that quotes
/// the method does not.
pub(crate) struct Tap<'a> {
    /// The group's change counters, when it has a cache.
    slot: Option<usize>,
    /// The group's tool hints, when its answers are watched for tool changes (borrowed: a
    /// clone of their `Arc` would write its count, a cache line all cores share, per answer).
    hints: Option<&'a ToolHints>,
    sniffer: EventSniffer,
    copy: Option<(Fill, Vec<u8>)>,
}

/// What an SSE answer of group `gi` is handed to as it is forwarded: the change sniffer and,
/// with `fill`, a copy for the cache. `None` when nothing reads its changes: the group has no
/// cache, and no tool hints or `watch_tools` is false.
pub(crate) fn tap(
    core: &Core,
    gi: usize,
    fill: Option<Fill>,
    watch_tools: bool,
) -> Option<Tap<'_>> {
    let slot = core.caches.group(gi).map(|g| g.slot);
    let hints = core
        .shared
        .tool_hints
        .get(gi)
        .and_then(Option::as_deref)
        .filter(|_| watch_tools);
    if slot.is_none() && hints.is_none() {
        return None;
    }
    Some(Tap {
        slot,
        hints,
        sniffer: EventSniffer::default(),
        copy: fill.map(|f| (f, Vec::new())),
    })
}

impl Tap<'_> {
    /// Takes the next bytes of the answer.
    pub(crate) fn take(&mut self, data: &[u8]) {
        let (slot, hints) = (self.slot, &self.hints);
        self.sniffer.feed(data, &mut |change| {
            if let (Some(h), Change::Bits(bits)) = (hints, change) {
                if bits & cache::TOOLS_CHANGED != 0 {
                    h.changed();
                }
            }
            if let Some(slot) = slot {
                note_change(slot, change);
            }
        });
        if let Some((_, copy)) = &mut self.copy {
            if copy.len() + data.len() > MAX_COPY {
                self.copy = None;
            } else {
                copy.extend_from_slice(data);
            }
        }
    }

    /// The answer ended whole: keeps it when the cache may.
    pub(crate) fn finish(self, core: &Core, c: &ClientConn) {
        if let Some((fill, copy)) = self.copy {
            store(core, c, fill, &copy, true);
        }
    }
}
