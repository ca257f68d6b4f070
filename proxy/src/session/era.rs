//! Bridging the protocol eras, as plain functions over bytes (no I/O); `data_path::era_bridge`
//! moves the bytes.
//!
//! A 2026-07-28 client (stateless; every request carries its own `_meta`) in front of a
//! 2025-era backend (`initialize`, `Mcp-Session-Id`): which requests are bridged, what keys
//! the backend session a request may share, the `initialize` mcplb sends for them, what the
//! backend's answers mean, the `server/discover` result made from them, how an answer is made
//! what the 2026-07-28 wire requires, how a server-to-client request becomes an
//! `input_required` result and the retry's input goes back, and what an era probe says.
//!
//! A 2025-era client in front of a 2026-07-28-only backend: its `initialize` answered from
//! the backend's `server/discover`, the session id mcplb issues (what the client declared, no
//! backend state), and each request made a 2026-07-28 one (`_meta`, mirror headers).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use protocol::Method;

use crate::config::BackendEra;

/// The stateless revision mcplb bridges to the 2025 era.
pub(crate) const MODERN: &str = "2026-07-28";
/// The handshake-era revisions a bridged backend may answer `initialize` with.
pub(crate) const HANDSHAKE_VERSIONS: [&str; 4] =
    ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];
/// The revision mcplb offers in a bridged `initialize` (the newest of the 2025 era).
pub(crate) const OFFERED: &str = "2025-11-25";
/// The JSON-RPC id of mcplb's own `initialize` and probe requests.
const OWN_ID: &str = "\"mcplb-era-bridge\"";

/// A backend's era as this core has learned it (`era = "auto"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Learned {
    /// Not probed yet.
    #[default]
    Unknown,
    /// It speaks the 2025 era (sessions).
    Sessions,
    /// It serves 2026-07-28 requests itself.
    Stateless,
}

/// What becomes of a request on its way to one backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EraRoute {
    /// As it is.
    Plain,
    /// Learn the backend's era first (`server/discover`), then decide again.
    Probe,
    /// Through a backend session of mcplb's.
    Bridge,
}

/// Whether a request declaring `version` in its `_meta` (none: a 2025-era request) goes to a
/// backend as it is, after a probe, or through a session: only 2026-07-28 requests to a
/// 2025-era backend are bridged, and only while `bridge` (`era_bridge`) is on.
pub(crate) fn route(
    bridge: bool,
    configured: BackendEra,
    learned: Learned,
    version: Option<&str>,
) -> EraRoute {
    if !bridge || version != Some(MODERN) {
        return EraRoute::Plain;
    }
    match (configured, learned) {
        (BackendEra::Stateless, _) => EraRoute::Plain,
        (BackendEra::Sessions, _) => EraRoute::Bridge,
        (BackendEra::Auto, Learned::Unknown) => EraRoute::Probe,
        (BackendEra::Auto, Learned::Sessions) => EraRoute::Bridge,
        (BackendEra::Auto, Learned::Stateless) => EraRoute::Plain,
    }
}

/// What a 2026-07-28 request's `_meta` declares about its client, as raw JSON: what a backend
/// session made for it must have been opened with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Declared<'a> {
    /// `io.modelcontextprotocol/clientCapabilities` (`{}` when absent).
    pub capabilities: &'a [u8],
    /// `io.modelcontextprotocol/clientInfo`, when given.
    pub client_info: Option<&'a [u8]>,
    /// `params._meta`, raw (a part of the body): what [`session_request_at`] rewrites.
    pub meta: Option<&'a [u8]>,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, rename = "_meta", default)]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, rename = "io.modelcontextprotocol/clientCapabilities", default)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "io.modelcontextprotocol/clientInfo", default)]
    client_info: Option<&'a RawValue>,
}

/// Reads what a request body's `_meta` declares; `None` when the body is not a JSON object
/// with well-formed `params` (a request the bridge cannot open a session for).
/// The body is parsed once; `_meta` (small) once more, from its raw bytes.
pub(crate) fn declared(body: &[u8]) -> Option<Declared<'_>> {
    let frame: Frame<'_> = serde_json::from_slice(body).ok()?;
    let raw = frame.params.and_then(|p| p.meta);
    let meta: Option<Meta<'_>> = match raw {
        Some(r) => serde_json::from_str(r.get()).ok()?,
        None => None,
    };
    let (caps, info) = meta.map_or((None, None), |m| (m.capabilities, m.client_info));
    let capabilities = caps.map_or(&b"{}"[..], |c| c.get().as_bytes());
    if !capabilities.starts_with(b"{") {
        return None;
    }
    Some(Declared {
        capabilities,
        client_info: info.map(|i| i.get().as_bytes()),
        meta: raw.map(|r| r.get().as_bytes()),
    })
}

/// A backend session's key: what the request declares ([`Declared`]) and who sends it (the
/// caller's owner digest and any credential forwarded to the backend), so that a session is
/// only shared by requests that would have opened the same one. The parts are hashed with
/// FNV-1a 64 for the pool's map, and kept, length-prefixed, so a lookup compares them too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionKey {
    /// The hash of the parts.
    pub hash: u64,
    /// The parts, each after its length (u32, little-endian).
    bytes: Vec<u8>,
}

/// The parts of a session key: the declaration and up to three caller parts.
pub(crate) type KeyParts<'a> = [&'a [u8]; 5];

/// The parts of the key of a session for `d` sent by a caller described by `caller`.
pub(crate) fn key_parts<'a>(d: &Declared<'a>, caller: [&'a [u8]; 3]) -> KeyParts<'a> {
    let [a, b, c] = caller;
    [d.capabilities, d.client_info.unwrap_or(b""), a, b, c]
}

/// The hash of a session key's parts (no allocation).
pub(crate) fn key_hash(parts: &KeyParts<'_>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for part in parts {
        eat(&(part.len() as u32).to_le_bytes());
        eat(part);
    }
    h
}

impl SessionKey {
    /// The key made of `parts`.
    pub fn of(parts: &KeyParts<'_>) -> SessionKey {
        let mut bytes = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
        for part in parts {
            bytes.extend_from_slice(&(part.len() as u32).to_le_bytes());
            bytes.extend_from_slice(part);
        }
        SessionKey {
            hash: key_hash(parts),
            bytes,
        }
    }

    /// Whether this key is made of `parts` (no allocation).
    pub fn matches(&self, parts: &KeyParts<'_>) -> bool {
        let mut rest = self.bytes.as_slice();
        for part in parts {
            let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                return false;
            };
            if u32::from_le_bytes(*len) as usize != part.len() {
                return false;
            }
            let Some((got, tail)) = tail.split_at_checked(part.len()) else {
                return false;
            };
            if got != *part {
                return false;
            }
            rest = tail;
        }
        rest.is_empty()
    }
}

/// The body of the `initialize` mcplb sends to open a backend session for `d`: the declared
/// capabilities and client info (mcplb's own when none), at [`OFFERED`].
pub(crate) fn initialize_body(d: &Declared<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + d.capabilities.len());
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(OWN_ID.as_bytes());
    out.extend_from_slice(b",\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"");
    out.extend_from_slice(OFFERED.as_bytes());
    out.extend_from_slice(b"\",\"capabilities\":");
    out.extend_from_slice(d.capabilities);
    out.extend_from_slice(b",\"clientInfo\":");
    match d.client_info {
        Some(info) => out.extend_from_slice(info),
        None => out.extend_from_slice(own_client_info().as_bytes()),
    }
    out.extend_from_slice(b"}}");
    out
}

/// The `notifications/initialized` that completes a bridged handshake.
pub(crate) const INITIALIZED: &[u8] = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

fn own_client_info() -> String {
    format!(
        "{{\"name\":\"mcplb-era-bridge\",\"version\":\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    )
}

/// The `server/discover` mcplb sends to learn a backend's era (`era = "auto"`).
pub(crate) fn probe_body() -> Vec<u8> {
    discover_body(&Declared {
        capabilities: b"{}",
        client_info: None,
        meta: None,
    })
}

/// A `server/discover` for a client that declares `d` (mcplb's own client info when none).
pub(crate) fn discover_body(d: &Declared<'_>) -> Vec<u8> {
    let info = d
        .client_info
        .map_or_else(own_client_info, |i| String::from_utf8_lossy(i).into_owned());
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{OWN_ID},\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{MODERN}\",\"io.modelcontextprotocol/clientCapabilities\":{},\"io.modelcontextprotocol/clientInfo\":{info}}}}}}}",
        String::from_utf8_lossy(d.capabilities)
    )
    .into_bytes()
}

/// What a 2025-era client's `initialize` declares: the revision it asks for, and its
/// capabilities and client info as raw JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello<'a> {
    /// `params.protocolVersion`.
    pub version: &'a str,
    /// `params.capabilities` and `params.clientInfo`.
    pub declared: Declared<'a>,
}

#[derive(Deserialize)]
struct HelloFrame<'a> {
    #[serde(borrow)]
    params: HelloParams<'a>,
}

#[derive(Deserialize)]
struct HelloParams<'a> {
    #[serde(borrow, rename = "protocolVersion")]
    version: &'a str,
    #[serde(borrow, default)]
    capabilities: Option<&'a RawValue>,
    #[serde(borrow, rename = "clientInfo", default)]
    client_info: Option<&'a RawValue>,
}

/// Reads an `initialize` body (`None`: not one mcplb can answer).
pub(crate) fn hello(body: &[u8]) -> Option<Hello<'_>> {
    let f: HelloFrame<'_> = serde_json::from_slice(body).ok()?;
    let capabilities = f
        .params
        .capabilities
        .map_or(&b"{}"[..], |c| c.get().as_bytes());
    if !capabilities.starts_with(b"{") {
        return None;
    }
    Some(Hello {
        version: f.params.version,
        declared: Declared {
            capabilities,
            client_info: f.params.client_info.map(|i| i.get().as_bytes()),
            meta: None,
        },
    })
}

/// The handshake-era revision mcplb answers a client asking for `asked`: the same when it
/// is one of the 2025 era, else the newest (the spec's negotiation).
pub(crate) fn negotiate(asked: &str) -> &'static str {
    HANDSHAKE_VERSIONS
        .iter()
        .find(|v| **v == asked)
        .copied()
        .unwrap_or(OFFERED)
}

/// The answer to a 2025-era client's `initialize` (JSON-RPC id `id`, raw) made from a
/// 2026-07-28 backend's `server/discover` answer `msg`, at revision `version`.
pub(crate) fn initialize_answer(id: &[u8], version: &str, msg: &Value) -> Result<Vec<u8>, String> {
    let result = msg
        .get("result")
        .ok_or("the backend's server/discover answer has no result")?;
    let mut out = serde_json::Map::new();
    out.insert("protocolVersion".into(), Value::from(version));
    out.insert(
        "capabilities".into(),
        result
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default())),
    );
    let info = result
        .get("_meta")
        .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        .cloned()
        .unwrap_or_else(|| serde_json::json!({"name": "mcplb-era-bridge", "version": env!("CARGO_PKG_VERSION")}));
    out.insert("serverInfo".into(), info);
    if let Some(i) = result.get("instructions").filter(|i| i.is_string()) {
        out.insert("instructions".into(), i.clone());
    }
    let id: Value = serde_json::from_slice(id).unwrap_or(Value::Null);
    serde_json::to_vec(&serde_json::json!({"jsonrpc": "2.0", "id": id, "result": out}))
        .map_err(|e| e.to_string())
}

/// What the session id mcplb gives a 2025-era client of a 2026-07-28 backend carries (sealed):
/// what its `initialize` declared, to be sent in every request's `_meta`. No backend state.
const SESSION_PREFIX: &[u8; 4] = b"era1";

/// The plain bytes of such a session id, when they fit `max` (the client info is left out
/// when only that makes them fit).
pub(crate) fn session_payload(d: &Declared<'_>, max: usize) -> Option<Vec<u8>> {
    let build = |info: &[u8]| {
        let mut out = Vec::with_capacity(6 + d.capabilities.len() + info.len());
        out.extend_from_slice(SESSION_PREFIX);
        out.extend_from_slice(&u16::try_from(d.capabilities.len()).ok()?.to_le_bytes());
        out.extend_from_slice(d.capabilities);
        out.extend_from_slice(info);
        (out.len() <= max).then_some(out)
    };
    build(d.client_info.unwrap_or(b"")).or_else(|| build(b""))
}

/// What a session id's plain bytes declare, when mcplb made them for a 2025-era client of a
/// 2026-07-28 backend.
pub(crate) fn parse_session_payload(p: &[u8]) -> Option<Declared<'_>> {
    let rest = p.strip_prefix(SESSION_PREFIX)?;
    let (len, rest) = rest.split_first_chunk::<2>()?;
    let (capabilities, info) = rest.split_at_checked(usize::from(u16::from_le_bytes(*len)))?;
    Some(Declared {
        capabilities,
        client_info: (!info.is_empty()).then_some(info),
        meta: None,
    })
}

/// A 2025-era client's request as a 2026-07-28 backend takes it: `_meta` carrying the
/// revision and what the client declared, and the `Mcp-Method`/`Mcp-Name` header lines that
/// mirror the body. `None`: not a JSON-RPC request object.
pub(crate) fn modern_request(body: &[u8], d: &Declared<'_>) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let method = v.get("method")?.as_str()?.to_string();
    let obj = v.as_object_mut()?;
    let params = obj
        .entry("params")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()?;
    let name = match method.as_str() {
        "tools/call" | "prompts/get" => params.get("name").and_then(Value::as_str),
        "resources/read" => params.get("uri").and_then(Value::as_str),
        _ => None,
    }
    .map(str::to_string);
    let meta = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Default::default()))
        .as_object_mut()?;
    meta.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        Value::from(MODERN),
    );
    meta.insert(
        "io.modelcontextprotocol/clientCapabilities".into(),
        serde_json::from_slice(d.capabilities).ok()?,
    );
    if let Some(info) = d.client_info.and_then(|i| serde_json::from_slice(i).ok()) {
        meta.insert("io.modelcontextprotocol/clientInfo".into(), info);
    }
    let body = serde_json::to_vec(&v).ok()?;
    let mut headers = format!("mcp-method: {method}\r\n").into_bytes();
    if let Some(n) = name.filter(|n| n.bytes().all(|b| (0x20..0x7f).contains(&b))) {
        headers.extend_from_slice(format!("mcp-name: {n}\r\n").as_bytes());
    }
    Some((body, headers))
}

/// The keys of a 2026-07-28 request's `_meta` that a 2025-era backend session already has from
/// its `initialize` (and that 2025-era servers may refuse on a session: the Python SDK's
/// HTTP+SSE server answers "this connection serves the handshake protocol era").
const ENVELOPE: [&str; 3] = [
    "io.modelcontextprotocol/protocolVersion",
    "io.modelcontextprotocol/clientCapabilities",
    "io.modelcontextprotocol/clientInfo",
];

/// A 2026-07-28 request as its 2025-era backend session takes it: the envelope's keys out of
/// `params._meta` (and an emptied `_meta` out of `params`), everything else as it was. `None`
/// when the body carries none of them (it goes as it is) or is not a JSON-RPC request object.
/// `meta`: the body's `params._meta`, raw (a part of `body`), as [`declared`] read it, so the
/// body is not parsed again for it.
///
/// The usual body is spliced: only `_meta` is rewritten, the rest copied as it is (a parse
/// into a `Value` and back cost the bridged `tools/call` 10 % more CPU per request, 1.10x
/// [1.08-1.18] by `MODE=era ERA_A=2025 bench/ab.sh`, bench/results/
/// 2026-12-06-ab-era-bridge-envelope-aebfd51-vs-ff92467.md); a `_meta` the splice cannot
/// read (escaped keys, an unusual layout) goes through the `Value`.
pub(crate) fn session_request_at(body: &[u8], meta: Option<&[u8]>) -> Option<Vec<u8>> {
    let spliced = match meta {
        None => Some(None),
        Some(raw) => splice_meta(body, raw),
    };
    spliced.unwrap_or_else(|| session_request_by_value(body))
}

/// [`session_request_at`], the body parsed for its `_meta` (tests).
#[cfg(test)]
fn session_request(body: &[u8]) -> Option<Vec<u8>> {
    splice_envelope(body).unwrap_or_else(|| session_request_by_value(body))
}

/// The splice of [`session_request`]: `None` when the body is not of the shape it reads.
#[cfg(test)]
fn splice_envelope(body: &[u8]) -> Option<Option<Vec<u8>>> {
    let f: Frame<'_> = serde_json::from_slice(body).ok()?;
    match f.params.and_then(|p| p.meta) {
        None => Some(None),
        Some(meta) => splice_meta(body, meta.get().as_bytes()),
    }
}

/// [`splice_envelope`] for the body's `params._meta` at `raw` (a part of `body`).
fn splice_meta(body: &[u8], raw: &[u8]) -> Option<Option<Vec<u8>>> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let start = (raw.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start + raw.len();
    if end > body.len() {
        // Not a part of this body.
        return None;
    }
    // Borrowed keys: a key with escapes fails here and takes the `Value` path.
    let entries: std::collections::BTreeMap<&str, &RawValue> = serde_json::from_slice(raw).ok()?;
    if !entries.keys().any(|k| ENVELOPE.contains(k)) {
        return Some(None);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut kept = entries
        .iter()
        .filter(|(k, _)| !ENVELOPE.contains(k))
        .peekable();
    if kept.peek().is_none() {
        let (cut, resume) = member_span(body, start, end)?;
        out.extend_from_slice(body.get(..cut)?);
        out.extend_from_slice(body.get(resume..)?);
        return Some(Some(out));
    }
    member_span(body, start, end)?; // `_meta` is params' member (not an array's element)
    out.extend_from_slice(body.get(..start)?);
    out.push(b'{');
    for (i, (k, v)) in kept.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b"\":");
        out.extend_from_slice(v.get().as_bytes());
    }
    out.push(b'}');
    out.extend_from_slice(body.get(end..)?);
    Some(Some(out))
}

/// The bytes to cut to take the member `"_meta": VALUE` (VALUE at `start..end`) out of its
/// object, with the comma on one side: `(from, to)`; `None` unless the key is written
/// `"_meta"` right before it.
fn member_span(body: &[u8], start: usize, end: usize) -> Option<(usize, usize)> {
    let back = |mut i: usize| {
        while i > 0 && body[i - 1].is_ascii_whitespace() {
            i -= 1;
        }
        i
    };
    let colon = back(start);
    if colon == 0 || body[colon - 1] != b':' {
        return None;
    }
    let key_end = back(colon - 1);
    let key = key_end.checked_sub(b"\"_meta\"".len())?;
    if body.get(key..key_end)? != b"\"_meta\"" {
        return None;
    }
    let before = back(key);
    match body.get(before.checked_sub(1)?)? {
        b',' => Some((before - 1, end)),
        b'{' => {
            let mut after = end;
            while body.get(after).is_some_and(u8::is_ascii_whitespace) {
                after += 1;
            }
            match body.get(after)? {
                b',' => Some((key, after + 1)),
                b'}' => Some((key, after)),
                _ => None,
            }
        }
        _ => None,
    }
}

/// [`session_request`] through a `serde_json::Value`.
fn session_request_by_value(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let params = v.get_mut("params")?.as_object_mut()?;
    let meta = params.get_mut("_meta")?.as_object_mut()?;
    let before = meta.len();
    meta.retain(|k, _| !ENVELOPE.contains(&k.as_str()));
    if meta.len() == before {
        return None;
    }
    if meta.is_empty() {
        params.remove("_meta");
    }
    serde_json::to_vec(&v).ok()
}

/// The JSON-RPC response in the body of a whole answer: the body itself (`application/json`),
/// or the first event of an SSE stream (`sse`) that carries a response (server requests and
/// notifications before it are passed over).
pub(crate) fn answer_message(body: &[u8], sse: bool) -> Option<Value> {
    if !sse {
        return serde_json::from_slice(body).ok();
    }
    let mut parser = protocol::SseParser::new();
    parser.push(body);
    // The stream ended: a last event without its blank line still counts.
    parser.push(b"\n\n");
    while let Some(ev) = parser.next_event() {
        let Ok(v) = serde_json::from_str::<Value>(&ev.data) else {
            continue;
        };
        if v.get("id").is_some() && (v.get("result").is_some() || v.get("error").is_some()) {
            return Some(v);
        }
    }
    None
}

/// What a backend's answer to mcplb's `initialize` gave: the revision it chose and the
/// `server/discover` result made from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Initialized {
    /// The handshake-era revision the backend chose (sent as `MCP-Protocol-Version`).
    pub protocol_version: String,
    /// The `result` of a `server/discover` answer, as JSON.
    pub discover: Vec<u8>,
}

/// Reads the backend's answer to a bridged `initialize` (`msg`: the JSON-RPC response):
/// the chosen revision and the discover result, or why the session cannot be used.
pub(crate) fn initialized(msg: &Value) -> Result<Initialized, String> {
    if let Some(e) = msg.get("error") {
        let text = e.get("message").and_then(Value::as_str).unwrap_or("?");
        return Err(format!("the backend refused initialize: {text}"));
    }
    let result = msg
        .get("result")
        .ok_or("the backend's initialize answer has no result")?;
    let version = result
        .get("protocolVersion")
        .and_then(Value::as_str)
        .ok_or("the backend's initialize answer names no protocolVersion")?;
    if !HANDSHAKE_VERSIONS.contains(&version) {
        return Err(format!(
            "the backend chose protocol version {version}, which mcplb cannot bridge"
        ));
    }
    let mut discover = serde_json::Map::new();
    discover.insert("supportedVersions".into(), Value::from(vec![MODERN]));
    discover.insert(
        "capabilities".into(),
        result
            .get("capabilities")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default())),
    );
    if let Some(i) = result.get("instructions").filter(|i| i.is_string()) {
        discover.insert("instructions".into(), i.clone());
    }
    if let Some(info) = result.get("serverInfo") {
        let mut meta = serde_json::Map::new();
        meta.insert("io.modelcontextprotocol/serverInfo".into(), info.clone());
        discover.insert("_meta".into(), Value::Object(meta));
    }
    discover.insert("resultType".into(), Value::from("complete"));
    discover.insert("ttlMs".into(), Value::from(0));
    // The capabilities answer the declared client capabilities: this caller's, not anyone's.
    discover.insert("cacheScope".into(), Value::from("private"));
    Ok(Initialized {
        protocol_version: version.to_string(),
        discover: serde_json::to_vec(&Value::Object(discover)).unwrap_or_default(),
    })
}

/// A JSON-RPC answer with id `id` (raw bytes) and `result` (raw JSON): a client's
/// `server/discover` answered from a session's discover result, a `ping` mcplb answers.
pub(crate) fn result_answer(out: &mut Vec<u8>, id: &[u8], discover: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(if id.is_empty() { b"null" } else { id });
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(discover);
    out.push(b'}');
}

/// What a backend's answer to mcplb's `server/discover` says about its era: `ok` (a 2xx
/// status) and a result whose `supportedVersions` names [`MODERN`] mean it serves 2026-07-28
/// requests itself; any other answer (an HTTP error such as a 2025-era server's 400 for a
/// request outside a session, a JSON-RPC error) means the 2025 era.
pub(crate) fn probe_verdict(ok: bool, msg: Option<&Value>) -> Learned {
    let modern = ok
        && msg
            .and_then(|m| m.get("result"))
            .and_then(|r| r.get("supportedVersions"))
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|s| s.as_str() == Some(MODERN)));
    if modern {
        Learned::Stateless
    } else {
        Learned::Sessions
    }
}

/// Whether a method's results carry the 2026-07-28 caching hints (`ttlMs`, `cacheScope`).
fn cacheable(method: Method) -> bool {
    matches!(
        method,
        Method::ServerDiscover
            | Method::ToolsList
            | Method::PromptsList
            | Method::ResourcesList
            | Method::ResourceTemplatesList
            | Method::ResourcesRead
    )
}

/// A 2025-era backend's answer `msg` (one JSON-RPC message) to a bridged `method` request,
/// as the 2026-07-28 wire requires it: a `result` object gets `resultType: "complete"`, and
/// for the cacheable methods `ttlMs: 0` and `cacheScope: "private"` (no caching promised that
/// the backend did not make), each only where absent. `None`: nothing to change (a
/// notification, a server request, an error, or a result that has them).
///
/// `id` (raw JSON), when given, replaces the answer's id: the answer to a call that waited for
/// input goes to the client's retry, a request with an id of its own.
pub(crate) fn modern_answer(method: Method, msg: &[u8], id: Option<&[u8]>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(msg).ok()?;
    v.get("id")?;
    v.get("method").is_none().then_some(())?;
    let mut changed = false;
    if let Some(new) = id.and_then(|i| serde_json::from_slice::<Value>(i).ok()) {
        if v.get("id") != Some(&new) {
            v["id"] = new;
            changed = true;
        }
    }
    if v.get("error").is_some() {
        return if changed {
            serde_json::to_vec(&v).ok()
        } else {
            None
        };
    }
    let result = v.get_mut("result")?.as_object_mut()?;
    let mut add = |k: &str, val: Value| {
        if !result.contains_key(k) {
            result.insert(k.to_string(), val);
            changed = true;
        }
    };
    add("resultType", Value::from("complete"));
    if cacheable(method) {
        add("ttlMs", Value::from(0));
        add("cacheScope", Value::from("private"));
    }
    if !changed {
        return None;
    }
    serde_json::to_vec(&v).ok()
}

/// A request the backend sent the client during a bridged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerRequest {
    /// Its JSON-RPC id, raw.
    pub id: Vec<u8>,
    /// Its method.
    pub method: String,
    /// `{"method": ..., "params": ...}`: the input request a 2026-07-28 client answers.
    pub input: Vec<u8>,
    /// What a replay matches it by.
    pub sig: Sig,
}

/// What became of one SSE event of a bridged answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EventVerdict {
    /// Written to `out` (rewritten when it is the answer).
    Forwarded,
    /// A server-to-client request: nothing written.
    Ask(ServerRequest),
}

/// The data of one SSE event (its `data` lines joined with LF, by the event-stream rules of
/// [`protocol::sse::event_data`]: borrowed when it has one); empty when it has none.
pub(crate) fn event_data(event: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    protocol::sse::event_data(event).unwrap_or_default()
}

/// One SSE event of a bridged answer (through its blank line): the answer to the request is
/// written to `out` rewritten by [`modern_answer`] (with the id `id`), a server-to-client
/// request is handed back, any other event (progress, logging) is written as it is.
pub(crate) fn rewrite_event(
    method: Method,
    event: &[u8],
    id: Option<&[u8]>,
    out: &mut Vec<u8>,
) -> EventVerdict {
    let data = event_data(event);
    if let Some(ask) = server_request(&data) {
        return EventVerdict::Ask(ask);
    }
    let Some(new) = modern_answer(method, &data, id) else {
        out.extend_from_slice(event);
        return EventVerdict::Forwarded;
    };
    protocol::sse::replace_data(out, event, &new);
    EventVerdict::Forwarded
}

/// A JSON-RPC request (`id` and `method`) in `data`.
fn server_request(data: &[u8]) -> Option<ServerRequest> {
    let v: Value = serde_json::from_slice(data).ok()?;
    let id = v.get("id")?;
    let method = v.get("method")?.as_str()?;
    let mut input = serde_json::Map::new();
    input.insert("method".into(), Value::from(method));
    if let Some(p) = v.get("params") {
        input.insert("params".into(), p.clone());
    }
    Some(ServerRequest {
        id: serde_json::to_vec(id).ok()?,
        method: method.to_string(),
        input: serde_json::to_vec(&Value::Object(input)).ok()?,
        sig: sig(method, v.get("params")),
    })
}

/// What mcplb does with a server-to-client request during a bridged call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AskKind {
    /// An input request of 2026-07-28 (elicitation, sampling, roots): the call's answer
    /// becomes an `input_required` result.
    Input,
    /// `ping`: mcplb answers it.
    Ping,
    /// Anything else: mcplb answers the backend with a method-not-found error.
    Unsupported,
}

/// What kind of server-to-client request `method` is.
pub(crate) fn ask_kind(method: &str) -> AskKind {
    match method {
        "elicitation/create" | "sampling/createMessage" | "roots/list" => AskKind::Input,
        "ping" => AskKind::Ping,
        _ => AskKind::Unsupported,
    }
}

/// The key of the input request in an `input_required` result mcplb makes (one per round).
pub(crate) const INPUT_KEY: &str = "mcplb-input";

/// The answer to the client's request `id` (raw) saying the call needs `input` (an input
/// request) answered: an `input_required` result carrying `state`, the sealed request state.
pub(crate) fn input_required(out: &mut Vec<u8>, id: &[u8], input: &[u8], state: &[u8]) {
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(if id.is_empty() { b"null" } else { id });
    out.extend_from_slice(b",\"result\":{\"resultType\":\"input_required\",\"inputRequests\":{\"");
    out.extend_from_slice(INPUT_KEY.as_bytes());
    out.extend_from_slice(b"\":");
    out.extend_from_slice(input);
    out.extend_from_slice(b"},\"requestState\":\"");
    out.extend_from_slice(state);
    out.extend_from_slice(b"\"}}");
}

/// What a retry carries: the sealed request state and the input responses, raw, by key.
#[derive(Debug)]
pub(crate) struct RetryInput<'a> {
    /// `params.requestState`.
    pub state: &'a str,
    /// `params.inputResponses`.
    pub responses: std::collections::HashMap<String, &'a RawValue>,
}

#[derive(Deserialize)]
struct RetryFrame<'a> {
    #[serde(borrow)]
    params: RetryParams<'a>,
}

#[derive(Deserialize)]
struct RetryParams<'a> {
    #[serde(borrow, rename = "requestState")]
    state: &'a str,
    #[serde(borrow, rename = "inputResponses", default)]
    responses: std::collections::HashMap<String, &'a RawValue>,
}

/// Whether a request body may carry a `requestState` (every 2026-07-28 request is looked at:
/// a searcher built once, not per request).
pub(crate) fn has_request_state(body: &[u8]) -> bool {
    static NEEDLE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"requestState\""));
    NEEDLE.find(body).is_some()
}

/// The retry parts of a request body, when it has a `requestState` (a plain string).
pub(crate) fn retry_input(body: &[u8]) -> Option<RetryInput<'_>> {
    has_request_state(body).then_some(())?;
    let f: RetryFrame<'_> = serde_json::from_slice(body).ok()?;
    Some(RetryInput {
        state: f.params.state,
        responses: f.params.responses,
    })
}

/// The client's answer `result` (raw) to the backend's request `id` (raw).
pub(crate) fn server_response(id: &[u8], result: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(result.len() + 48);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result);
    out.push(b'}');
    out
}

/// mcplb's error answer to the backend's request `id` (raw).
pub(crate) fn server_error(id: &[u8], code: i32, message: &str) -> Vec<u8> {
    let msg = Value::from(message).to_string();
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{},\"error\":{{\"code\":{code},\"message\":{msg}}}}}",
        String::from_utf8_lossy(id)
    )
    .into_bytes()
}

/// A bridged call's `requestState` (sealed as `session::VERSION_ERA_STATE`): where the call
/// waits for its input (worker and token, for the retry that reaches this mcplb), whose it is,
/// and what a replica that does not hold the call needs to replay it (`r`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CallState {
    /// The worker (core) holding the waiting call.
    pub w: u16,
    /// The call's token there.
    pub t: u64,
    /// The backend's tag.
    pub b: u32,
    /// When it expires (milliseconds since the Unix epoch).
    pub x: u64,
    /// The caller's owner digest, in a group with authentication.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub o: Option<[u8; crate::session::OWNER]>,
    /// What a replay needs; absent when it did not fit the bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<Replay>,
}

/// What a replay of a bridged call needs besides the retry itself (which repeats the call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Replay {
    /// The call it was issued for ([`call_digest`]).
    pub call: String,
    /// The backend's input requests answered in earlier rounds, in order.
    pub done: Vec<Answered>,
    /// The backend's request the retry's input answers.
    pub ask: Sig,
}

/// A backend's input request, as a replay matches it: its method and params' digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Sig {
    pub m: String,
    pub p: String,
}

/// A backend's input request and the client's answer to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Answered {
    pub m: String,
    pub p: String,
    /// The client's result, as it came.
    pub r: Box<RawValue>,
}

impl PartialEq for Answered {
    fn eq(&self, o: &Answered) -> bool {
        self.m == o.m && self.p == o.p && self.r.get() == o.r.get()
    }
}

impl Answered {
    /// Whether this answers a request of signature `s`.
    pub fn answers(&self, s: &Sig) -> bool {
        self.m == s.m && self.p == s.p
    }
}

/// A `notifications/cancelled` for the request `id` (raw), saying `reason`.
pub(crate) fn cancelled(id: &[u8], reason: &str) -> Vec<u8> {
    let reason = Value::from(reason).to_string();
    let mut out = Vec::with_capacity(id.len() + reason.len() + 96);
    out.extend_from_slice(
        b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/cancelled\",\"params\":{\"requestId\":",
    );
    out.extend_from_slice(id);
    out.extend_from_slice(b",\"reason\":");
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"}}");
    out
}

/// The hex SHA-256 of `what`.
fn digest_hex(what: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, what);
    d.as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            use std::fmt::Write as _;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The signature of a server-to-client request of `method` with `params` (its keys in order:
/// the same params in another order sign the same).
pub(crate) fn sig(method: &str, params: Option<&Value>) -> Sig {
    let p = params.map_or_else(String::new, Value::to_string);
    Sig {
        m: method.to_string(),
        p: digest_hex(p.as_bytes()),
    }
}

/// What a call is, for binding a request state to it: the digest of its method and params
/// without `_meta` and the retry's own `inputResponses` and `requestState` (so the first
/// request and each retry of the same call have the same). `None`: not a JSON-RPC request.
pub(crate) fn call_digest(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let method = v.get("method")?.as_str()?;
    let mut params = v.get("params").cloned().unwrap_or(Value::Null);
    if let Some(p) = params.as_object_mut() {
        for k in ["_meta", "inputResponses", "requestState"] {
            p.remove(k);
        }
    }
    let mut what = method.as_bytes().to_vec();
    what.push(b'\n');
    what.extend_from_slice(params.to_string().as_bytes());
    Some(digest_hex(&what))
}

/// The plain bytes of `state`, at most `max`: without what a replay needs when that does not
/// fit (such a call resumes only where it waits).
pub(crate) fn state_bytes(state: &CallState, max: usize) -> Option<Vec<u8>> {
    let out = serde_json::to_vec(state).ok()?;
    if out.len() <= max {
        return Some(out);
    }
    let bare = CallState {
        r: None,
        ..state.clone()
    };
    serde_json::to_vec(&bare).ok().filter(|b| b.len() <= max)
}

/// The state in a request state's plain bytes (`None`: not one mcplb made).
pub(crate) fn parse_call_state(payload: &[u8]) -> Option<CallState> {
    serde_json::from_slice(payload).ok()
}

/// Whether a 2025-era backend's answer with `status` and `body` to a request in a bridged
/// session says it does not know the session (so it ran nothing, and a new session may be
/// opened for the request): 404 as the spec prescribes, or a 400 whose body is a JSON-RPC
/// error with no id, a refusal of the transport rather than the request's own answer (what
/// the TypeScript SDK's servers answer: "Bad Request: No valid session ID provided").
pub(crate) fn session_lost(status: u16, body: &[u8]) -> bool {
    match status {
        404 => true,
        400 => serde_json::from_slice::<Value>(body)
            .is_ok_and(|v| v.get("error").is_some() && v.get("id").is_none_or(Value::is_null)),
        _ => false,
    }
}

/// The status code of a response head (`HTTP/1.1 404 ...`).
pub(crate) fn status_of(head: &[u8]) -> Option<u16> {
    let code = head.get(9..12)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {

    #[test]
    fn a_bridged_request_loses_only_the_envelope() {
        let body = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":1},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"c","version":"1"},"progressToken":3}}}"#;
        let out: Value = serde_json::from_slice(&session_request(body).unwrap()).unwrap();
        assert_eq!(out["id"], 7);
        assert_eq!(out["params"]["arguments"]["a"], 1);
        assert_eq!(
            out["params"]["_meta"],
            serde_json::json!({"progressToken": 3})
        );
        let bare = br#"{"jsonrpc":"2.0","id":8,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#;
        let out: Value = serde_json::from_slice(&session_request(bare).unwrap()).unwrap();
        assert_eq!(out["params"], serde_json::json!({}));
        // Nothing to take out: the body goes as it is.
        assert!(session_request(br#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#).is_none());
        assert!(session_request(
            br#"{"jsonrpc":"2.0","id":9,"method":"ping","params":{"_meta":{"progressToken":1}}}"#
        )
        .is_none());
        assert!(session_request(b"not json").is_none());
        // The usual bodies are spliced, not parsed into a `Value`.
        assert!(splice_envelope(body).is_some_and(|b| b.is_some()));
        assert!(splice_envelope(bare).is_some_and(|b| b.is_some()));
        // The splice and the `Value` path agree, whatever the layout.
        for body in [
            &body[..],
            &bare[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"cursor":"c"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":"c" , "_meta" : { "io.modelcontextprotocol/clientInfo" : {} } }}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":1,"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"},"b":2}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"\u0069o.modelcontextprotocol/protocolVersion":"v","k":1}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[{"io.modelcontextprotocol/protocolVersion":"v"}]}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"x","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"v"}}}]"#,
        ] {
            let parse = |b: Option<Vec<u8>>| b.map(|b| serde_json::from_slice::<Value>(&b).unwrap());
            assert_eq!(
                parse(session_request(body)),
                parse(session_request_by_value(body)),
                "{}",
                String::from_utf8_lossy(body)
            );
            // From `_meta` as `declared` read it (the body not parsed again): the same.
            if let Some(d) = declared(body) {
                assert_eq!(
                    parse(session_request_at(body, d.meta)),
                    parse(session_request(body)),
                    "{}",
                    String::from_utf8_lossy(body)
                );
            }
        }
        // A `_meta` that is not a part of the body is not spliced.
        let other = br#"{"io.modelcontextprotocol/protocolVersion":"v"}"#;
        let out = session_request_at(bare, Some(&other[..]));
        assert_eq!(out, session_request_by_value(bare));
    }

    use super::*;
    use protocol::sse::event_end;

    #[test]
    fn only_modern_requests_to_2025_backends_are_bridged() {
        use BackendEra::*;
        let m = Some(MODERN);
        assert_eq!(route(true, Sessions, Learned::Unknown, m), EraRoute::Bridge);
        assert_eq!(route(true, Auto, Learned::Unknown, m), EraRoute::Probe);
        assert_eq!(route(true, Auto, Learned::Sessions, m), EraRoute::Bridge);
        assert_eq!(route(true, Auto, Learned::Stateless, m), EraRoute::Plain);
        assert_eq!(
            route(true, Stateless, Learned::Sessions, m),
            EraRoute::Plain
        );
        // Off, a 2025-era request, or a revision mcplb does not know: as they are.
        assert_eq!(
            route(false, Sessions, Learned::Sessions, m),
            EraRoute::Plain
        );
        assert_eq!(
            route(true, Sessions, Learned::Sessions, None),
            EraRoute::Plain
        );
        assert_eq!(
            route(true, Sessions, Learned::Sessions, Some("2027-01-01")),
            EraRoute::Plain
        );
    }

    #[test]
    fn declared_reads_capabilities_and_client_info_raw() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientInfo":{"name":"mcp","version":"0.1.0"},"io.modelcontextprotocol/clientCapabilities":{"elicitation":{}}}}}"#;
        let d = declared(body).unwrap();
        assert_eq!(d.capabilities, br#"{"elicitation":{}}"#);
        assert_eq!(
            d.client_info,
            Some(&br#"{"name":"mcp","version":"0.1.0"}"#[..])
        );
        let none = declared(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
        assert_eq!(none.capabilities, b"{}");
        assert_eq!(none.client_info, None);
        assert!(declared(b"[1]").is_none());
        assert!(declared(
            br#"{"params":{"_meta":{"io.modelcontextprotocol/clientCapabilities":3}}}"#
        )
        .is_none());
    }

    #[test]
    fn session_keys_tell_declarations_and_callers_apart() {
        let a = Declared {
            capabilities: b"{}",
            client_info: Some(b"{\"name\":\"a\"}"),
            meta: None,
        };
        let b = Declared {
            capabilities: br#"{"sampling":{}}"#,
            client_info: Some(b"{\"name\":\"a\"}"),
            meta: None,
        };
        let alice = key_parts(&a, [b"alice", b"", b""]);
        let ka = SessionKey::of(&alice);
        assert!(ka.matches(&alice));
        assert_eq!(ka.hash, key_hash(&alice));
        let bob = key_parts(&a, [b"bob", b"", b""]);
        assert!(!ka.matches(&bob));
        assert_ne!(ka.hash, key_hash(&bob));
        let other = key_parts(&b, [b"alice", b"", b""]);
        assert!(!ka.matches(&other));
        assert_ne!(ka.hash, key_hash(&other));
        // Lengths keep shifted parts apart.
        let c = Declared {
            capabilities: b"{}",
            client_info: None,
            meta: None,
        };
        let x1 = key_parts(&c, [b"x", b"", b""]);
        let x2 = key_parts(&c, [b"", b"x", b""]);
        assert!(!SessionKey::of(&x1).matches(&x2));
        assert_ne!(key_hash(&x1), key_hash(&x2));
    }

    #[test]
    fn initialize_carries_the_declared_client() {
        let d = Declared {
            capabilities: br#"{"elicitation":{}}"#,
            client_info: None,
            meta: None,
        };
        let v: Value = serde_json::from_slice(&initialize_body(&d)).unwrap();
        assert_eq!(v["method"], "initialize");
        assert_eq!(v["params"]["protocolVersion"], OFFERED);
        assert_eq!(
            v["params"]["capabilities"]["elicitation"],
            serde_json::json!({})
        );
        assert_eq!(v["params"]["clientInfo"]["name"], "mcplb-era-bridge");
        let p: Value = serde_json::from_slice(&probe_body()).unwrap();
        assert_eq!(p["method"], "server/discover");
        assert_eq!(
            p["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            MODERN
        );
    }

    #[test]
    fn discover_is_made_from_the_initialize_answer() {
        let answer = serde_json::json!({"jsonrpc":"2.0","id":"mcplb-era-bridge","result":{
            "protocolVersion":"2025-06-18","capabilities":{"tools":{"listChanged":true}},
            "serverInfo":{"name":"everything","version":"1"},"instructions":"be nice"}});
        let init = initialized(&answer).unwrap();
        assert_eq!(init.protocol_version, "2025-06-18");
        let mut out = Vec::new();
        result_answer(&mut out, b"\"q\"", &init.discover);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "q");
        let r = &v["result"];
        assert_eq!(r["supportedVersions"], serde_json::json!([MODERN]));
        assert_eq!(r["capabilities"]["tools"]["listChanged"], true);
        assert_eq!(r["instructions"], "be nice");
        assert_eq!(
            r["_meta"]["io.modelcontextprotocol/serverInfo"]["name"],
            "everything"
        );
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
    }

    #[test]
    fn initialize_answers_that_cannot_be_bridged_say_why() {
        let err =
            serde_json::json!({"jsonrpc":"2.0","id":1,"error":{"code":-32600,"message":"nope"}});
        assert!(initialized(&err).unwrap_err().contains("nope"));
        let modern =
            serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2026-07-28"}});
        assert!(initialized(&modern).unwrap_err().contains("2026-07-28"));
        let none = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{}});
        assert!(initialized(&none).is_err());
    }

    #[test]
    fn answer_message_finds_the_response_in_json_and_sse() {
        let json = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        assert_eq!(answer_message(json, false).unwrap()["id"], 1);
        let sse = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{}}\n\nevent: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"x\",\"result\":{\"a\":1}}\n\n";
        assert_eq!(answer_message(sse, true).unwrap()["result"]["a"], 1);
        // A last event without its blank line (the stream ended).
        let cut = b"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"error\":{\"code\":1,\"message\":\"m\"}}";
        assert_eq!(answer_message(cut, true).unwrap()["id"], 2);
        assert!(answer_message(b"data: {\"method\":\"x\"}\n\n", true).is_none());
        assert!(answer_message(b"not json", false).is_none());
    }

    #[test]
    fn probe_verdicts() {
        let modern = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2025-11-25","2026-07-28"]}});
        assert_eq!(probe_verdict(true, Some(&modern)), Learned::Stateless);
        assert_eq!(probe_verdict(false, Some(&modern)), Learned::Sessions);
        let legacy = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"supportedVersions":["2025-11-25"]}});
        assert_eq!(probe_verdict(true, Some(&legacy)), Learned::Sessions);
        let err =
            serde_json::json!({"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"no"}});
        assert_eq!(probe_verdict(true, Some(&err)), Learned::Sessions);
        assert_eq!(probe_verdict(false, None), Learned::Sessions);
    }

    #[test]
    fn answers_get_what_the_2026_wire_requires() {
        let list = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        let v: Value =
            serde_json::from_slice(&modern_answer(Method::ToolsList, list, None).unwrap()).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["ttlMs"], 0);
        assert_eq!(v["result"]["cacheScope"], "private");
        assert_eq!(v["result"]["tools"], serde_json::json!([]));
        let call = br#"{"jsonrpc":"2.0","id":"a","result":{"content":[]}}"#;
        let v: Value =
            serde_json::from_slice(&modern_answer(Method::ToolsCall, call, None).unwrap()).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert!(v["result"].get("ttlMs").is_none());
        // Present already, an error, a notification: unchanged.
        let has = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}}"#;
        assert!(modern_answer(Method::ToolsCall, has, None).is_none());
        assert!(modern_answer(Method::ToolsCall, has, Some(b"1")).is_none());
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}"#;
        assert!(modern_answer(Method::ToolsCall, err, None).is_none());
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(modern_answer(Method::ToolsCall, note, None).is_none());
        // The answer to a call that waited for input goes to the retry's id.
        let v: Value = serde_json::from_slice(
            &modern_answer(Method::ToolsCall, has, Some(b"\"r2\"")).unwrap(),
        )
        .unwrap();
        assert_eq!(v["id"], "r2");
        let v: Value =
            serde_json::from_slice(&modern_answer(Method::ToolsCall, err, Some(b"9")).unwrap())
                .unwrap();
        assert_eq!(v["id"], 9);
        assert_eq!(v["error"]["code"], 1);
    }

    #[test]
    fn sse_events_are_split_and_only_the_answer_rewritten() {
        let stream = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\nid: 3\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\nevent: mess";
        let first = event_end(stream).unwrap();
        let mut out = Vec::new();
        let v = rewrite_event(Method::ToolsCall, &stream[..first], None, &mut out);
        assert_eq!(v, EventVerdict::Forwarded);
        assert_eq!(out, &stream[..first]);
        let rest = &stream[first..];
        let second = event_end(rest).unwrap();
        out.clear();
        rewrite_event(Method::ToolsCall, &rest[..second], None, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, data) = text.split_once("data: ").unwrap();
        assert_eq!(head, "id: 3\nevent: message\n");
        let data = data.strip_suffix("\n\n").unwrap();
        let v: Value = serde_json::from_str(data).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["id"], 1);
        assert_eq!(event_end(&rest[second..]), None);
    }

    #[test]
    fn an_event_ends_at_a_blank_line_after_any_line_end() {
        // A blank line ends an event whatever ends the line before it and the blank line
        // itself (CRLF, LF or CR). `\n\r\n` (LF, then a CRLF blank line) was missed: the two
        // events were cut as one and the second (here the answer) never rewritten.
        for (stream, first) in [
            (&b"data: a\n\r\ndata: b\n\n"[..], 10),
            (b"data: a\r\n\r\ndata: b\n\n", 11),
            (b"data: a\r\n\ndata: b\n\n", 10),
            (b"data: a\r\r\ndata: b\n\n", 10),
            (b"data: a\r\rdata: b\n\n", 9),
            (b"data: a\n\rdata: b\n\n", 9),
        ] {
            assert_eq!(
                event_end(stream),
                Some(first),
                "{:?}",
                String::from_utf8_lossy(stream)
            );
        }
        let answer = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\n";
        let first = event_end(answer).unwrap();
        let mut out = Vec::new();
        rewrite_event(Method::ToolsCall, &answer[first..], None, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"resultType\":\"complete\""), "{text}");
    }

    #[test]
    fn event_data_takes_cr_line_ends_and_bare_data_lines() {
        // Before protocol::sse only LF ended a line here and `data` without a colon was no
        // data line: an answer with CR line ends was forwarded unrewritten.
        let cr = b"id: 3\revent: message\rdata: {\"jsonrpc\":\"2.0\",\"id\":1,\rdata: \"result\":{}}\r\r";
        assert_eq!(
            &*event_data(cr),
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\n\"result\":{}}"
        );
        let mut out = Vec::new();
        rewrite_event(Method::ToolsCall, cr, None, &mut out);
        let text = String::from_utf8(out).unwrap();
        let (head, data) = text.split_once("data: ").unwrap();
        assert_eq!(head, "id: 3\nevent: message\n");
        let v: Value = serde_json::from_str(data.strip_suffix("\n\n").unwrap()).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(&*event_data(b"data\ndata: x\n\n"), b"\nx");
        assert_eq!(&*event_data(b": ping\n\n"), b"");
    }

    #[test]
    fn server_requests_become_input_required_and_retries_go_back() {
        let ev = b"event: message\nid: 5\ndata: {\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"elicitation/create\",\"params\":{\"message\":\"name?\"}}\n\n";
        let mut out = Vec::new();
        let EventVerdict::Ask(ask) = rewrite_event(Method::ToolsCall, ev, Some(b"1"), &mut out)
        else {
            panic!("not an ask")
        };
        assert!(out.is_empty());
        assert_eq!(ask.id, b"0");
        assert_eq!(ask_kind(&ask.method), AskKind::Input);
        assert_eq!(ask_kind("ping"), AskKind::Ping);
        assert_eq!(ask_kind("tasks/get"), AskKind::Unsupported);
        input_required(&mut out, b"\"c-1\"", &ask.input, b"SEALED");
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], "c-1");
        assert_eq!(v["result"]["resultType"], "input_required");
        assert_eq!(v["result"]["requestState"], "SEALED");
        let req = &v["result"]["inputRequests"][INPUT_KEY];
        assert_eq!(req["method"], "elicitation/create");
        assert_eq!(req["params"]["message"], "name?");
        assert!(req.get("id").is_none());

        let retry = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","inputResponses":{"mcplb-input":{"action":"accept","content":{"a":1}}},"requestState":"SEALED"}}"#;
        let r = retry_input(retry).unwrap();
        assert_eq!(r.state, "SEALED");
        let answer = r.responses[INPUT_KEY].get().as_bytes();
        let v: Value = serde_json::from_slice(&server_response(&ask.id, answer)).unwrap();
        assert_eq!(v["id"], 0);
        assert_eq!(v["result"]["action"], "accept");
        assert!(
            retry_input(br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}"#).is_none()
        );
        let v: Value = serde_json::from_slice(&server_error(b"\"s\"", -32601, "no \"x\"")).unwrap();
        assert_eq!(v["error"]["message"], "no \"x\"");

        let state = CallState {
            w: 3,
            t: 0xfeed,
            b: 9,
            x: 1_800_000_000_000,
            o: None,
            r: Some(Replay {
                call: call_digest(br#"{"id":1,"method":"tools/call","params":{"name":"x"}}"#)
                    .unwrap(),
                done: vec![Answered {
                    m: "elicitation/create".into(),
                    p: "ab".into(),
                    r: RawValue::from_string(r#"{"action":"accept"}"#.into()).unwrap(),
                }],
                ask: sig("roots/list", None),
            }),
        };
        let bytes = state_bytes(&state, 4096).unwrap();
        assert_eq!(parse_call_state(&bytes), Some(state.clone()));
        // Past the bound, the replay part goes (the call still resumes where it waits).
        let small = state_bytes(&state, 80).unwrap();
        assert_eq!(parse_call_state(&small).unwrap().r, None);
        assert!(state_bytes(&state, 10).is_none());
        assert_eq!(parse_call_state(b"sess-id-of-a-backend"), None);
        let v: Value = serde_json::from_slice(&cancelled(b"\"c-1\"", "gone \"x\"")).unwrap();
        assert_eq!(v["method"], "notifications/cancelled");
        assert_eq!(v["params"]["requestId"], "c-1");
        assert_eq!(v["params"]["reason"], "gone \"x\"");
    }

    #[test]
    fn call_digests_and_signatures_ignore_what_a_retry_adds() {
        let first = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":{"a":1,"b":2},"_meta":{"x":1}}}"#;
        let retry = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"arguments":{"b":2,"a":1},"name":"t","inputResponses":{"k":{}},"requestState":"s","_meta":{"y":2}}}"#;
        let other = br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"a":1,"b":3}}}"#;
        assert_eq!(call_digest(first), call_digest(retry));
        assert_ne!(call_digest(first), call_digest(other));
        assert_eq!(call_digest(b"[1]"), None);
        let a: Value =
            serde_json::from_str(r#"{"message":"m","requestedSchema":{"x":1,"y":2}}"#).unwrap();
        let b: Value =
            serde_json::from_str(r#"{"requestedSchema":{"y":2,"x":1},"message":"m"}"#).unwrap();
        assert_eq!(
            sig("elicitation/create", Some(&a)),
            sig("elicitation/create", Some(&b))
        );
        assert_ne!(
            sig("elicitation/create", Some(&a)),
            sig("sampling/createMessage", Some(&a))
        );
        assert_ne!(sig("roots/list", None), sig("roots/list", Some(&a)));
    }

    #[test]
    fn a_2025_client_of_a_2026_server() {
        let init = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
        let h = hello(init).unwrap();
        assert_eq!(h.version, "2025-06-18");
        assert_eq!(negotiate(h.version), "2025-06-18");
        assert_eq!(negotiate("2030-01-01"), OFFERED);
        let d: Value = serde_json::from_slice(&discover_body(&h.declared)).unwrap();
        assert_eq!(
            d["params"]["_meta"]["io.modelcontextprotocol/clientCapabilities"]["sampling"],
            serde_json::json!({})
        );
        assert_eq!(
            d["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"],
            "c"
        );
        let discovered = serde_json::json!({"jsonrpc":"2.0","id":"x","result":{"supportedVersions":["2026-07-28"],
            "capabilities":{"tools":{}},"_meta":{"io.modelcontextprotocol/serverInfo":{"name":"modern","version":"2"}}}});
        let a: Value =
            serde_json::from_slice(&initialize_answer(b"0", "2025-06-18", &discovered).unwrap())
                .unwrap();
        assert_eq!(a["id"], 0);
        assert_eq!(a["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(a["result"]["serverInfo"]["name"], "modern");
        assert_eq!(a["result"]["capabilities"]["tools"], serde_json::json!({}));

        let p = session_payload(&h.declared, 256).unwrap();
        assert_eq!(parse_session_payload(&p), Some(h.declared));
        // Too long with the client info: without it; too long anyway: none.
        let no_info = session_payload(&h.declared, 6 + 16).unwrap();
        assert_eq!(parse_session_payload(&no_info).unwrap().client_info, None);
        assert!(session_payload(&h.declared, 8).is_none());
        assert!(parse_session_payload(b"backend-session").is_none());

        let call = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"add","arguments":{"a":1}}}"#;
        let (body, headers) = modern_request(call, &h.declared).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"],
            MODERN
        );
        assert_eq!(v["params"]["arguments"]["a"], 1);
        assert_eq!(headers, b"mcp-method: tools/call\r\nmcp-name: add\r\n");
        let list = br#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#;
        let (body, headers) = modern_request(list, &h.declared).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"],
            "c"
        );
        assert_eq!(headers, b"mcp-method: tools/list\r\n");
    }

    #[test]
    fn lost_sessions() {
        assert!(session_lost(404, b""));
        let ts = br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#;
        assert!(session_lost(400, ts));
        let no_id = br#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request"}}"#;
        assert!(session_lost(400, no_id));
        // The request's own answer (it carries its id), or no JSON-RPC at all: not the session.
        let own = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad"}}"#;
        assert!(!session_lost(400, own));
        assert!(!session_lost(400, b"Bad Request"));
        assert!(!session_lost(200, ts));
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_of(b"HTTP/1.1 404 Not Found\r\n\r\n"), Some(404));
        assert_eq!(status_of(b"HTTP/1.1 2x0 OK\r\n\r\n"), None);
        assert_eq!(status_of(b"HTTP/1.1"), None);
    }
}
