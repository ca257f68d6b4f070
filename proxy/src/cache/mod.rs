//! The response cache's decisions (`[servers.cache]`), as plain functions over bytes, the
//! group's configuration and a time passed in: which requests may be answered from the cache
//! and under which key, how long an answer lives and who may share it (the 2026-07-28 hints
//! `ttlMs` and `cacheScope`, or the group's defaults), which backend notifications evict what,
//! and the answer written from a stored message with the request's own id spliced in. The
//! per-core store is [`store`]; the data path (`data_path::cache`) only moves bytes.

pub mod store;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::{MessageKind, Method};
use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest life an entry gets, whatever a server's `ttlMs` says (24 hours).
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a cached result may be shared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every caller of the group (`cacheScope: "public"`).
    Public,
    /// Only the caller identity that produced it (`cacheScope: "private"`).
    Private,
}

/// A group's `[servers.cache]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Most bytes of entries (messages and keys) per core.
    pub max_bytes: usize,
    /// Life of a result that carries no `ttlMs` (zero: such results are not cached).
    pub default_ttl: Duration,
    /// Scope of a result that carries no `cacheScope` (cached under `default_ttl`).
    pub default_scope: Scope,
    /// Results to requests in a backend session may be shared without an explicit
    /// `cacheScope: "public"` (`sessions = "share"`).
    pub share_sessions: bool,
    /// Tools whose `tools/call` results may be cached (also needs `readOnlyHint` and
    /// `idempotentHint` from the server).
    pub tools: Vec<ratelimit::Glob>,
    /// Life of a cached tool result.
    pub tool_ttl: Duration,
    /// Who shares a cached tool result.
    pub tool_scope: Scope,
}

/// What the cache holds, by the request's method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ToolsList,
    PromptsList,
    ResourcesList,
    TemplatesList,
    ResourcesRead,
    Discover,
    ToolsCall,
}

impl Kind {
    /// The kind of a request's answer, if the cache may hold it.
    pub fn of(m: Method) -> Option<Kind> {
        Some(match m {
            Method::ToolsList => Kind::ToolsList,
            Method::PromptsList => Kind::PromptsList,
            Method::ResourcesList => Kind::ResourcesList,
            Method::ResourceTemplatesList => Kind::TemplatesList,
            Method::ResourcesRead => Kind::ResourcesRead,
            Method::ServerDiscover => Kind::Discover,
            Method::ToolsCall => Kind::ToolsCall,
            _ => return None,
        })
    }

    fn code(self) -> u8 {
        self as u8
    }

    /// The change notifications that evict this kind (bits of [`Changes`]).
    pub fn evicted_by(self) -> u8 {
        match self {
            Kind::ToolsList | Kind::ToolsCall => TOOLS_CHANGED,
            Kind::PromptsList => PROMPTS_CHANGED,
            Kind::ResourcesList | Kind::TemplatesList => RESOURCES_CHANGED,
            Kind::ResourcesRead => RESOURCES_UPDATED,
            // A server's description changes with any of its lists.
            Kind::Discover => TOOLS_CHANGED | PROMPTS_CHANGED | RESOURCES_CHANGED,
        }
    }
}

/// `notifications/tools/list_changed`.
pub const TOOLS_CHANGED: u8 = 1;
/// `notifications/prompts/list_changed`.
pub const PROMPTS_CHANGED: u8 = 2;
/// `notifications/resources/list_changed`.
pub const RESOURCES_CHANGED: u8 = 4;
/// `notifications/resources/updated`.
pub const RESOURCES_UPDATED: u8 = 8;

const NOTIFICATIONS: [(&[u8], u8); 4] = [
    (b"notifications/tools/list_changed", TOOLS_CHANGED),
    (b"notifications/prompts/list_changed", PROMPTS_CHANGED),
    (b"notifications/resources/list_changed", RESOURCES_CHANGED),
    (UPDATED, RESOURCES_UPDATED),
];
/// `notifications/resources/updated`, the one notification that names what changed.
const UPDATED: &[u8] = b"notifications/resources/updated";
/// Longest notification name above, rounded up: the bytes a [`RawSniffer`] keeps between
/// pieces.
const TAIL: usize = 40;

/// What a change notification makes stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change<'a> {
    /// What these notification bits evict (a `resources/updated` bit: every read of the group,
    /// its resource unknown).
    Bits(u8),
    /// The reads of this resource (a `notifications/resources/updated`'s `uri`, its raw JSON
    /// string text: [`note_uri_updated`] hashes it decoded, as reads are).
    Updated(JsonText<'a>),
}

/// A JSON string's text, raw (between the quotes, escapes not decoded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonText<'a>(pub &'a [u8]);

impl JsonText<'_> {
    /// The decoded text (borrowed unless it has escapes).
    pub fn decoded(&self) -> Option<std::borrow::Cow<'_, [u8]>> {
        if !self.0.contains(&b'\\') {
            return Some(std::borrow::Cow::Borrowed(self.0));
        }
        let mut quoted = Vec::with_capacity(self.0.len() + 2);
        quoted.push(b'"');
        quoted.extend_from_slice(self.0);
        quoted.push(b'"');
        let s: String = serde_json::from_slice(&quoted).ok()?;
        Some(std::borrow::Cow::Owned(s.into_bytes()))
    }
}

/// Most bytes of an SSE event an [`EventSniffer`] keeps while the event spreads over several
/// pieces and may be a change notification (past it, its notification names are looked for
/// in its bytes instead: [`Change::Bits`], more than needed, never less). A notification is a
/// method name and a URI: far below this.
pub const MAX_NOTE: usize = 16 * 1024;

/// Finds the change notifications in a backend's SSE bytes, fed in pieces of any size, event
/// by event: an event's data is parsed as a JSON-RPC message (`protocol::parse_message`, zero
/// copy) and only a notification whose method is one of the four counts, so an event that only
/// mentions one (a tool's description, a resource's text, a log message) evicts nothing.
///
/// Cost per event: one `memchr2` pass over its bytes to find its lines and its end
/// ([`protocol::sse::EventEnds`]), and a look
/// at its first top-level keys ([`classify`]): an answer (`id`, `result` or `error` first, or
/// after `jsonrpc`) or a request or notification of another method is done with there. Only
/// an event that may be a change notification is searched for `notifications/` and parsed,
/// in place when it lies whole in one piece; one that spreads over pieces is copied (up to
/// [`MAX_NOTE`]) until it is whole. Nothing is allocated on the way but that copy's buffer,
/// once per stream that needs it (and a URI's text when it has escapes).
#[derive(Debug, Default)]
pub struct EventSniffer {
    /// The event in progress that began in an earlier piece.
    open: Open,
    /// Its bytes while it is [`Open::Carry`].
    carry: Vec<u8>,
    /// Data lines joined, for an event with several (reused).
    joined: Vec<u8>,
    /// Where the events end, across pieces (a CRLF split between two pieces is one line end).
    ends: protocol::sse::EventEnds,
    /// The stream's byte-order mark, dropped before its first event.
    bom: protocol::sse::StartBom,
}

/// What is known of the event in progress that began in an earlier piece.
#[derive(Debug, Default)]
enum Open {
    /// No event is in progress.
    #[default]
    None,
    /// It may be a change notification: its bytes are in `carry`.
    Carry,
    /// It is not one.
    Skip,
    /// It grew past [`MAX_NOTE`] undecided: the names found in its bytes.
    Large(RawSniffer, u8),
}

/// What an event's first bytes say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not a change notification: an answer, a request, another method, not JSON-RPC.
    Not,
    /// Maybe one (or not known yet): its whole data must be parsed.
    Maybe,
}

impl EventSniffer {
    /// Takes the next bytes of the stream; `on` gets what the change notifications that ended
    /// in them make stale.
    pub fn feed(&mut self, piece: &[u8], on: &mut impl FnMut(Change<'_>)) {
        let (held, rest) = self.bom.skip(piece);
        self.feed_events(held, on);
        self.feed_events(rest, on);
    }

    fn feed_events(&mut self, piece: &[u8], on: &mut impl FnMut(Change<'_>)) {
        let mut rest = piece;
        while let Some(n) = self.ends.next_end(rest) {
            let (last, next) = rest.split_at_checked(n).unwrap_or((rest, &[]));
            self.event_end(last, on);
            if next.is_empty() {
                return;
            }
            rest = next;
        }
        if !rest.is_empty() {
            self.event_part(rest);
        }
    }

    /// An event's last bytes (through its blank line) came.
    fn event_end(&mut self, last: &[u8], on: &mut impl FnMut(Change<'_>)) {
        match std::mem::take(&mut self.open) {
            Open::None => event_changes(last, &mut self.joined, on),
            Open::Skip => {}
            Open::Carry if self.carry.len() + last.len() <= MAX_NOTE => {
                self.carry.extend_from_slice(last);
                event_changes(&self.carry, &mut self.joined, on);
                self.carry.clear();
            }
            Open::Carry => {
                let mut raw = RawSniffer::default();
                let bits = raw.feed(&self.carry) | raw.feed(last);
                self.carry.clear();
                if bits != 0 {
                    on(Change::Bits(bits));
                }
            }
            Open::Large(mut raw, bits) => {
                let bits = bits | raw.feed(last);
                if bits != 0 {
                    on(Change::Bits(bits));
                }
            }
        }
    }

    /// Bytes of an event that goes on in the next piece.
    fn event_part(&mut self, part: &[u8]) {
        self.open = match std::mem::take(&mut self.open) {
            Open::None if classify(part) == Verdict::Not => Open::Skip,
            Open::None if part.len() <= MAX_NOTE => {
                self.carry.clear();
                self.carry.extend_from_slice(part);
                Open::Carry
            }
            Open::None => {
                let mut raw = RawSniffer::default();
                let bits = raw.feed(part);
                Open::Large(raw, bits)
            }
            Open::Carry if self.carry.len() + part.len() <= MAX_NOTE => {
                self.carry.extend_from_slice(part);
                if classify(&self.carry) == Verdict::Not {
                    self.carry.clear();
                    Open::Skip
                } else {
                    Open::Carry
                }
            }
            Open::Carry => {
                let mut raw = RawSniffer::default();
                let bits = raw.feed(&self.carry) | raw.feed(part);
                self.carry.clear();
                Open::Large(raw, bits)
            }
            Open::Skip => Open::Skip,
            Open::Large(mut raw, bits) => {
                let bits = bits | raw.feed(part);
                Open::Large(raw, bits)
            }
        };
    }
}

/// What the change notification in one whole SSE event (its raw bytes) makes stale, told to
/// `on`; `joined`: a reused buffer for an event with several data lines.
pub fn event_changes(event: &[u8], joined: &mut Vec<u8>, on: &mut impl FnMut(Change<'_>)) {
    if classify(event) == Verdict::Not || memchr::memmem::find(event, b"notifications/").is_none() {
        return;
    }
    if let Some(data) = protocol::sse::event_data_in(event, joined) {
        message_changes(data, on);
    }
}

/// What one JSON-RPC message (an SSE event's data) makes stale, told to `on`: a change
/// notification's bits, or the resource of a `notifications/resources/updated` (every read
/// when it names none). A batch (2025-03-26) is searched for the names instead.
///
/// A message without `"jsonrpc": "2.0"` is no notification here (the parse refuses it), so it
/// evicts nothing. Decided so: MCP requires `"jsonrpc": "2.0"` on every message, and the
/// official SDKs (Python, TypeScript) always send it and refuse a message without it, so no
/// client acts on such a "notification" either; reading it as they do beats guessing what a
/// broken server meant (test: `only_notifications_of_those_methods_evict`).
pub fn message_changes(data: &[u8], on: &mut impl FnMut(Change<'_>)) {
    let Ok(env) = protocol::parse_message(data) else {
        return;
    };
    if env.kind == MessageKind::Batch {
        let bits = RawSniffer::default().feed(data);
        if bits != 0 {
            on(Change::Bits(bits));
        }
        return;
    }
    if env.kind != MessageKind::Notification {
        return;
    }
    let Some(method) = env.method else {
        return;
    };
    let Some(bit) = NOTIFICATIONS
        .iter()
        .find(|(n, _)| std::str::from_utf8(n).is_ok_and(|n| method.eq_str(n)))
        .map(|(_, bit)| *bit)
    else {
        return;
    };
    match env.uri.filter(|_| bit == RESOURCES_UPDATED) {
        Some(uri) => on(Change::Updated(JsonText(uri.raw()))),
        None => on(Change::Bits(bit)),
    }
}

/// What an SSE event's first bytes (all of it, or a prefix) say it is, from its first data
/// line's first top-level keys: `Not` when one is `id`, `result` or `error` (a request or an
/// answer, never a notification), or `method` with a name that is none of the four, or when
/// the data is not a JSON object or array; `Maybe` otherwise (also when the bytes end first, or
/// a key or method has escapes). Only `jsonrpc` is passed over to read the next key; a
/// notification whose `params` come first is `Maybe`, and parsed.
pub fn classify(event: &[u8]) -> Verdict {
    let Some(data) = first_data(event) else {
        return Verdict::Maybe;
    };
    let mut s = Cursor(data);
    s.ws();
    match s.peek() {
        None => return Verdict::Maybe,
        Some(b'{') => s.skip(1),
        Some(b'[') => return Verdict::Maybe,
        Some(_) => return Verdict::Not,
    }
    for _ in 0..4 {
        s.ws();
        let Some(key) = s.string() else {
            return Verdict::Maybe;
        };
        s.ws();
        if s.peek() != Some(b':') {
            return Verdict::Maybe;
        }
        s.skip(1);
        s.ws();
        match key {
            b"id" | b"result" | b"error" => return Verdict::Not,
            b"method" => {
                let Some(name) = s.string() else {
                    return Verdict::Maybe;
                };
                return if NOTIFICATIONS.iter().any(|(n, _)| *n == name) {
                    Verdict::Maybe
                } else {
                    Verdict::Not
                };
            }
            b"jsonrpc" => {
                if s.string().is_none() {
                    return Verdict::Maybe;
                }
                s.ws();
                if s.peek() != Some(b',') {
                    return Verdict::Maybe;
                }
                s.skip(1);
            }
            _ => return Verdict::Maybe,
        }
    }
    Verdict::Maybe
}

/// The bytes from the value of an SSE event's first `data` line on (to the end of `event`:
/// its line's end is not looked for, [`Cursor`] stops there), or `None` when no data line
/// starts in `event`. Not `protocol::sse::data_lines`: that finds the line's end first, a scan
/// of the whole of a large answer's one data line that this only peeks at.
fn first_data(event: &[u8]) -> Option<&[u8]> {
    let mut rest = event;
    loop {
        if let Some(v) = rest.strip_prefix(b"data") {
            match v.first() {
                Some(b':') => {
                    let v = v.get(1..).unwrap_or_default();
                    return Some(v.strip_prefix(b" ").unwrap_or(v));
                }
                Some(b'\r' | b'\n') => return Some(&[]),
                _ => {}
            }
        }
        let end = memchr::memchr2(b'\r', b'\n', rest)?;
        let skip = if rest.get(end..end + 2) == Some(b"\r\n") {
            2
        } else {
            1
        };
        rest = rest.get(end + skip..).unwrap_or_default();
    }
}

/// A cursor over the start of a JSON text on one line (a line's end reads as the end of the
/// bytes: a value that goes on in the next data line is not judged), for [`classify`].
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.0
            .first()
            .copied()
            .filter(|b| !matches!(b, b'\r' | b'\n'))
    }

    fn skip(&mut self, n: usize) {
        self.0 = self.0.get(n..).unwrap_or_default();
    }

    fn ws(&mut self) {
        let n = self
            .0
            .iter()
            .take_while(|b| matches!(b, b' ' | b'\t'))
            .count();
        self.skip(n);
    }

    /// A string without escapes (its text), or `None` (not a string, escaped, or cut by the
    /// bytes' or the line's end).
    fn string(&mut self) -> Option<&'a [u8]> {
        let rest = self.0.strip_prefix(b"\"")?;
        // Keys and the values read here are a few bytes: a plain loop beats a SIMD search's
        // set-up.
        let end = rest
            .iter()
            .position(|b| matches!(b, b'"' | b'\\' | b'\n' | b'\r'))?;
        if rest.get(end) != Some(&b'"') {
            return None;
        }
        let text = rest.get(..end)?;
        self.skip(end + 2);
        Some(text)
    }
}

/// Finds notification names in raw bytes fed in pieces of any size (a name split between two
/// reads is still found): the fallback for an event too large to keep ([`EventSniffer`]) and
/// for a batch.
#[derive(Debug, Clone)]
pub struct RawSniffer {
    tail: [u8; TAIL],
    len: usize,
}

impl Default for RawSniffer {
    fn default() -> Self {
        RawSniffer {
            tail: [0; TAIL],
            len: 0,
        }
    }
}

impl RawSniffer {
    /// The notifications (bits) whose names are in `bytes` or straddle the previous piece.
    pub fn feed(&mut self, bytes: &[u8]) -> u8 {
        if bytes.is_empty() {
            return 0;
        }
        let mut seen = 0;
        // Most pieces carry no notification at all: one search for the common part.
        let any = memchr::memmem::find(bytes, b"notifications/").is_some();
        let mut joint = [0u8; 2 * TAIL];
        let head = bytes.get(..TAIL.min(bytes.len())).unwrap_or_default();
        let tail = self.tail.get(..self.len).unwrap_or_default();
        joint[..tail.len()].copy_from_slice(tail);
        joint[tail.len()..tail.len() + head.len()].copy_from_slice(head);
        let joint = joint.get(..tail.len() + head.len()).unwrap_or_default();
        for (name, bit) in NOTIFICATIONS {
            if (any && memchr::memmem::find(bytes, name).is_some())
                || (self.len > 0 && memchr::memmem::find(joint, name).is_some())
            {
                seen |= bit;
            }
        }
        // Keep the last TAIL bytes of everything seen.
        if bytes.len() >= TAIL {
            self.tail.copy_from_slice(&bytes[bytes.len() - TAIL..]);
            self.len = TAIL;
        } else {
            let keep = (TAIL - bytes.len()).min(self.len);
            self.tail.copy_within(self.len - keep..self.len, 0);
            self.tail[keep..keep + bytes.len()].copy_from_slice(bytes);
            self.len = keep + bytes.len();
        }
        seen
    }
}

/// Slots of the process-wide change counters (groups are told apart by a hash of their name,
/// so a collision only evicts more than needed).
const SLOTS: usize = 256;

/// Counts of the change notifications seen from each group's backends, on any core: an entry
/// stamped with an older count is stale everywhere. Written only when a notification arrives.
static CHANGES: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];

/// Where a group's change counters sit (from its name; stable across reloads).
pub fn group_slot(name: &str) -> usize {
    // FNV-1a: stable, and no key to keep.
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (h as usize % (SLOTS / 4)) * 4
}

fn bit_index(bit: u8) -> usize {
    bit.trailing_zeros() as usize
}

/// Notes change notifications (bits) seen from a backend of the group at `slot`.
pub fn note_changes(slot: usize, bits: u8) {
    for i in 0..4 {
        if bits & (1 << i) != 0 {
            if let Some(c) = CHANGES.get(slot + i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The stamp of what evicts `kind` in the group at `slot`: a sum of the counts it follows
/// (each only grows, so the sum changes whenever one does).
pub fn stamp(slot: usize, kind: Kind) -> u64 {
    let bits = kind.evicted_by();
    (0..4)
        .filter(|i| bits & (1 << i) != 0)
        .filter_map(|i| CHANGES.get(slot + i))
        .map(|c| c.load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
}

/// Slots of the process-wide counts of `notifications/resources/updated` per resource (a
/// group's slot and the URI hashed together: a collision only evicts more than needed).
const URI_SLOTS: usize = 4096;

/// Counts of the `notifications/resources/updated` seen for each resource, on any core (a
/// `resources/read` entry is stamped with its URI's count too). Written only when one arrives.
static URI_CHANGES: [AtomicU64; URI_SLOTS] = [const { AtomicU64::new(0) }; URI_SLOTS];

/// Where the update count of resource `uri` (its text) of the group at `slot` sits.
fn uri_slot(slot: usize, uri: &[u8]) -> usize {
    let h = (slot as u64)
        .to_le_bytes()
        .iter()
        .chain(uri)
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    h as usize % URI_SLOTS
}

/// Notes a `notifications/resources/updated` for `uri` (its text) from a backend of the
/// group at `slot`: only that resource's reads go stale.
pub fn note_uri_updated(slot: usize, uri: &[u8]) {
    if let Some(c) = URI_CHANGES.get(uri_slot(slot, uri)) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// [`stamp`] of a request of `kind`; a `resources/read` of `uri` (the request's raw JSON
/// string) also follows that resource's updates ([`note_uri_updated`]).
pub fn stamp_for(slot: usize, kind: Kind, uri: Option<&[u8]>) -> u64 {
    let group = stamp(slot, kind);
    if kind != Kind::ResourcesRead {
        return group;
    }
    let Some(text) = uri.and_then(uri_text) else {
        return group;
    };
    URI_CHANGES
        .get(uri_slot(slot, &text))
        .map_or(group, |c| group.wrapping_add(c.load(Ordering::Relaxed)))
}

/// A raw JSON string's text (its escapes decoded only when it has any).
fn uri_text(raw: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(std::borrow::Cow::Borrowed(inner));
    }
    let s: String = serde_json::from_slice(raw).ok()?;
    Some(std::borrow::Cow::Owned(s.into_bytes()))
}

/// Which notification a bit stands for (tests, logs).
pub fn notification_name(bit: u8) -> &'static str {
    NOTIFICATIONS
        .get(bit_index(bit))
        .and_then(|(n, _)| std::str::from_utf8(n).ok())
        .unwrap_or("")
}

/// The parts of a request that shape its answer, borrowed from its body.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct KeyParts<'a> {
    /// `params.cursor`, raw.
    pub cursor: Option<&'a [u8]>,
    /// `params.uri`, raw.
    pub uri: Option<&'a [u8]>,
    /// `params.name`, raw.
    pub name: Option<&'a [u8]>,
    /// `params.arguments`, raw.
    pub arguments: Option<&'a [u8]>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]`, raw.
    pub meta_version: Option<&'a [u8]>,
    /// `params._meta["io.modelcontextprotocol/clientCapabilities"]`, raw.
    pub capabilities: Option<&'a [u8]>,
    /// `params._meta["io.modelcontextprotocol/clientInfo"]`, raw.
    pub client_info: Option<&'a [u8]>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    cursor: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    arguments: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    version: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "io.modelcontextprotocol/clientCapabilities")]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "io.modelcontextprotocol/clientInfo")]
    client_info: Option<&'a RawValue>,
}

/// The request's key parts, or `None` when it may not be answered from the cache: it
/// carries `inputResponses` or `requestState` (a multi round-trip retry), or its body is not
/// one plain JSON object (a repeated key, a batch).
pub fn request_parts(body: &[u8]) -> Option<KeyParts<'_>> {
    if memchr::memmem::find(body, b"\"requestState\"").is_some()
        || memchr::memmem::find(body, b"\"inputResponses\"").is_some()
    {
        return None;
    }
    // serde reads a struct from an array too: only objects, with `params` an object.
    if body.trim_ascii_start().first() != Some(&b'{') || !params_are_objects(body) {
        return None;
    }
    let f: Frame<'_> = serde_json::from_slice(body).ok()?;
    fn raw(v: Option<&RawValue>) -> Option<&[u8]> {
        v.map(|v| v.get().as_bytes())
    }
    let Some(p) = f.params else {
        return Some(KeyParts::default());
    };
    let meta = p.meta.unwrap_or(Meta {
        version: None,
        capabilities: None,
        client_info: None,
    });
    Some(KeyParts {
        cursor: raw(p.cursor),
        uri: raw(p.uri),
        name: raw(p.name),
        arguments: raw(p.arguments),
        meta_version: raw(meta.version),
        capabilities: raw(meta.capabilities),
        client_info: raw(meta.client_info),
    })
}

/// Whether every `"params":` in `body` is followed by an object (conservative: a string value
/// "params" followed by a colon cannot occur in valid JSON outside a key).
fn params_are_objects(body: &[u8]) -> bool {
    memchr::memmem::find_iter(body, b"\"params\"").all(|at| {
        let rest = body.get(at + 8..).unwrap_or_default().trim_ascii_start();
        match rest.strip_prefix(b":") {
            Some(v) => v.trim_ascii_start().first() == Some(&b'{'),
            None => true,
        }
    })
}

/// Whether a request of `kind` for `tool` (a `tools/call`'s name) may be answered from the
/// cache at all: a tool call only when the group names the tool and the server said it only
/// reads and is idempotent (`annotated`).
pub fn eligible(
    cfg: &CacheConfig,
    kind: Kind,
    tool: Option<&str>,
    annotated: impl Fn(&str) -> bool,
) -> bool {
    match kind {
        Kind::ToolsCall => tool.is_some_and(|t| {
            cfg.tools.iter().any(|g| g.matches(t)) && annotated(t) && !cfg.tool_ttl.is_zero()
        }),
        _ => true,
    }
}

/// Most tool names a group remembers as read-only and idempotent (past it the set starts
/// again: a tool not remembered is only not cached).
const MAX_READ_ONLY_TOOLS: usize = 4096;

/// The tools a group's `tools/list` answers said are read-only and idempotent, learned once
/// for every core: read lock-free (one load per `tools/call` the group's `tools` globs name),
/// replaced whole when a list answer teaches something new. Valid under the tools' change
/// stamp it was learned with ([`stamp`] of [`Kind::ToolsList`]): a `tools/list_changed`
/// forgets it.
#[derive(Debug, Default)]
pub struct ReadOnlyTools(arc_swap::ArcSwap<(u64, std::collections::HashSet<Box<str>>)>);

impl ReadOnlyTools {
    /// Whether `tool` was listed read-only and idempotent since the change stamped `stamp`.
    pub fn contains(&self, stamp: u64, tool: &str) -> bool {
        let known = self.0.load();
        known.0 == stamp && known.1.contains(tool)
    }

    /// Learns `tools` from a list answer under `stamp`.
    pub fn learn(&self, stamp: u64, tools: &[String]) {
        if tools.is_empty() || tools.iter().all(|t| self.contains(stamp, t)) {
            return;
        }
        self.0.rcu(|known| {
            let mut set = if known.0 == stamp && known.1.len() + tools.len() <= MAX_READ_ONLY_TOOLS
            {
                known.1.clone()
            } else {
                Default::default()
            };
            set.extend(tools.iter().map(|t| Box::<str>::from(t.as_str())));
            (stamp, set)
        });
    }
}

/// Who a request comes from, as far as the cache's key goes.
///
/// The key holds what the client declared (its capabilities and client info: a 2026-07-28
/// request's `_meta`, or what a 2025-era client declared at `initialize` for mcplb's own
/// session), because an answer can depend on them: a 2025-era server knows them from its
/// session's `initialize` and a 2026-07-28 one from every request, and servers do shape their
/// tools by them (tools that need `elicitation` or a UI extension listed only to clients that
/// declare it). `cacheScope: "public"` says an answer holds nothing of the caller's
/// authorization context, not that it is the same whatever the client can do; and an era
/// bridge's backend session is opened per declaration, so entries shared across declarations
/// would hand one client the answer made for another. Clients of one kind declare the same
/// bytes, so they still share entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requester<'a> {
    /// The caller's identity (empty: none).
    pub identity: &'a str,
    /// The client's `MCP-Protocol-Version` header.
    pub version: &'a [u8],
    /// The request belongs to a backend session.
    pub in_session: bool,
    /// The virtual server whose member request it is (its group index + 1; 0: a request to
    /// the group itself): a member's answers for one virtual server never answer another's
    /// requests, nor the group's own clients.
    pub via: u32,
    /// What the client declared at `initialize` (capabilities, client info; raw), when its
    /// session is one of mcplb's own for a 2026-07-28 backend: each of its requests goes out
    /// with them in `_meta`, as a 2026-07-28 client's own carry them.
    pub declared: Option<(&'a [u8], Option<&'a [u8]>)>,
}

/// Writes the key of a request (`kind`, `parts`, `who`) under `scope` into `out` (cleared
/// first): every part length-prefixed, so different requests never share a key; a private key
/// carries the identity, a public one does not. `false` when there is no such key (private
/// without an identity).
pub fn write_key(
    out: &mut Vec<u8>,
    kind: Kind,
    parts: &KeyParts<'_>,
    who: &Requester<'_>,
    scope: Scope,
) -> bool {
    out.clear();
    out.push(kind.code());
    out.push(u8::from(who.in_session));
    out.extend_from_slice(&who.via.to_le_bytes());
    match scope {
        Scope::Public => out.push(0),
        Scope::Private => {
            if who.identity.is_empty() {
                return false;
            }
            out.push(1);
            field(out, Some(who.identity.as_bytes()));
        }
    }
    field(out, Some(who.version));
    // What the client declared: a server may shape any answer by it (see [`Requester`]).
    let (capabilities, client_info) = match who.declared {
        Some((caps, info)) if parts.capabilities.is_none() => (Some(caps), info),
        _ => (parts.capabilities, parts.client_info),
    };
    for p in [
        parts.meta_version,
        parts.cursor,
        parts.uri,
        parts.name,
        parts.arguments,
        capabilities,
        client_info,
    ] {
        field(out, p);
    }
    true
}

fn field(out: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => out.push(0),
        Some(v) => {
            out.push(1);
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            out.extend_from_slice(v);
        }
    }
}

/// What a result says of its own caching, and what the cache must know of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Hints {
    /// `ttlMs`.
    pub ttl_ms: Option<u64>,
    /// `cacheScope`.
    pub scope: Option<Scope>,
    /// A tool result with `isError: true`.
    pub tool_error: bool,
    /// `resultType` other than `"complete"` (an `input_required` result asks for more).
    pub incomplete: bool,
    /// Tools of a `tools/list` result whose annotations say `readOnlyHint` and
    /// `idempotentHint`.
    pub read_only_tools: Vec<String>,
}

#[derive(Deserialize)]
struct Answer {
    result: Option<ResultHints>,
}

#[derive(Deserialize)]
struct ResultHints {
    #[serde(rename = "ttlMs")]
    ttl_ms: Option<u64>,
    #[serde(rename = "cacheScope")]
    scope: Option<String>,
    #[serde(rename = "isError", default)]
    is_error: bool,
    #[serde(rename = "resultType")]
    result_type: Option<String>,
    #[serde(default)]
    tools: Vec<ToolHints>,
}

#[derive(Deserialize)]
struct ToolHints {
    name: String,
    annotations: Option<Annotations>,
}

#[derive(Deserialize)]
struct Annotations {
    #[serde(rename = "readOnlyHint", default)]
    read_only: bool,
    #[serde(rename = "idempotentHint", default)]
    idempotent: bool,
}

/// The hints of a response message (`None`: an error, or not a result the cache can read).
pub fn hints(message: &[u8]) -> Option<Hints> {
    let a: Answer = serde_json::from_slice(message).ok()?;
    let r = a.result?;
    let scope = match r.scope.as_deref() {
        None => None,
        Some("public") => Some(Scope::Public),
        // Anything else is read as the narrower scope.
        Some(_) => Some(Scope::Private),
    };
    Some(Hints {
        ttl_ms: r.ttl_ms,
        scope,
        tool_error: r.is_error,
        incomplete: r.result_type.is_some_and(|t| t != "complete"),
        read_only_tools: r
            .tools
            .into_iter()
            .filter(|t| {
                t.annotations
                    .as_ref()
                    .is_some_and(|a| a.read_only && a.idempotent)
            })
            .map(|t| t.name)
            .collect(),
    })
}

/// How long a result lives in the cache and who shares it, or `None` when it is not kept:
/// its hints (or the group's defaults when it has none), narrowed by what the request was
/// (in a backend session: kept only when the server says `public`, or `sessions = "share"`,
/// so a tool result in a session only with "share"; private without an identity: never).
pub fn lifetime(
    cfg: &CacheConfig,
    kind: Kind,
    h: &Hints,
    in_session: bool,
    has_identity: bool,
) -> Option<(Duration, Scope)> {
    if h.incomplete {
        return None;
    }
    let (ttl, scope) = if kind == Kind::ToolsCall {
        if h.tool_error {
            return None;
        }
        (cfg.tool_ttl, cfg.tool_scope)
    } else {
        let ttl = match h.ttl_ms {
            Some(ms) => Duration::from_millis(ms),
            None => cfg.default_ttl,
        };
        (ttl, h.scope.unwrap_or(cfg.default_scope))
    };
    if ttl.is_zero() {
        return None;
    }
    // A session's answers may depend on the session: kept only when the server says they do
    // not (a tool result has no such hint), or the group says so.
    if in_session && h.scope != Some(Scope::Public) && !cfg.share_sessions {
        return None;
    }
    if scope == Scope::Private && !has_identity {
        return None;
    }
    Some((ttl.min(MAX_TTL), scope))
}

/// A backend's response message as the cache keeps it: one line of JSON, and where its id is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub bytes: Vec<u8>,
    pub id: Range<usize>,
}

/// The response to the request with id `id` in a backend's answer body (JSON, or an SSE
/// stream whose events carry JSON-RPC messages). `None` when it is not there, or spreads over
/// several lines (it could not go out as one SSE `data:` line).
pub fn response_message(body: &[u8], sse: bool, id: &[u8]) -> Option<Message> {
    let pick = |data: &[u8]| -> Option<Message> {
        let env = protocol::parse_message(data).ok()?;
        if env.kind != MessageKind::Response || env.id != Some(id) {
            return None;
        }
        if memchr::memchr2(b'\n', b'\r', data).is_some() {
            return None;
        }
        let start = env.id?.as_ptr() as usize - data.as_ptr() as usize;
        Some(Message {
            bytes: data.to_vec(),
            id: start..start + id.len(),
        })
    };
    if !sse {
        return pick(body.trim_ascii());
    }
    let mut parser = protocol::sse::SseParser::new();
    parser.push(body);
    while let Some(ev) = parser.next_event() {
        if let Some(m) = pick(ev.data.trim_ascii().as_bytes()) {
            return Some(m);
        }
    }
    None
}

/// Whether the client is answered with an SSE stream rather than JSON: only when its `Accept`
/// names `text/event-stream` and nothing JSON takes.
pub fn wants_sse(accept: Option<&[u8]>) -> bool {
    let Some(a) = accept else {
        return false;
    };
    let has = |n: &[u8]| a.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    has(b"text/event-stream") && !has(b"application/json") && !has(b"*/*") && !has(b"application/*")
}

/// Writes a whole HTTP answer carrying `msg` with `id` in place of the id it was stored with:
/// JSON, or one SSE event; `close` adds `connection: close`.
pub fn write_answer(
    out: &mut Vec<u8>,
    msg: &[u8],
    at: Range<usize>,
    id: &[u8],
    sse: bool,
    close: bool,
) {
    let before = msg.get(..at.start).unwrap_or_default();
    let after = msg.get(at.end..).unwrap_or_default();
    let (pre, post): (&[u8], &[u8]) = if sse {
        (b"event: message\ndata: ", b"\n\n")
    } else {
        (b"", b"")
    };
    let len = pre.len() + before.len() + id.len() + after.len() + post.len();
    out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: ");
    out.extend_from_slice(if sse {
        b"text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no".as_slice()
    } else {
        b"application/json".as_slice()
    });
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(pre);
    out.extend_from_slice(before);
    out.extend_from_slice(id);
    out.extend_from_slice(after);
    out.extend_from_slice(post);
}
