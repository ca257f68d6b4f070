//! Bridging the protocol eras: a 2026-07-28 client (stateless; every request carries its own
//! `_meta`) in front of a 2025-era backend (`initialize`, `Mcp-Session-Id`). The decisions as
//! plain functions over bytes, with no I/O: which requests are bridged, what keys the backend
//! session a request may share, the `initialize` mcplb sends for them, what the backend's
//! answer means, the `server/discover` result made from it, and what an era probe's answer
//! says. `data_path::era_bridge` moves the bytes.

use serde::Deserialize;
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
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, rename = "_meta", default)]
    meta: Option<Meta<'a>>,
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
pub(crate) fn declared(body: &[u8]) -> Option<Declared<'_>> {
    let frame: Frame<'_> = serde_json::from_slice(body).ok()?;
    let meta = frame.params.and_then(|p| p.meta);
    let (caps, info) = meta.map_or((None, None), |m| (m.capabilities, m.client_info));
    let capabilities = caps.map_or(&b"{}"[..], |c| c.get().as_bytes());
    if !capabilities.starts_with(b"{") {
        return None;
    }
    Some(Declared {
        capabilities,
        client_info: info.map(|i| i.get().as_bytes()),
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
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{OWN_ID},\"method\":\"server/discover\",\"params\":{{\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"{MODERN}\",\"io.modelcontextprotocol/clientCapabilities\":{{}},\"io.modelcontextprotocol/clientInfo\":{}}}}}}}",
        own_client_info()
    )
    .into_bytes()
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

/// The answer to a client's `server/discover` with JSON-RPC id `id` (raw bytes), from a
/// session's discover result.
pub(crate) fn discover_answer(out: &mut Vec<u8>, id: &[u8], discover: &[u8]) {
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
pub(crate) fn modern_answer(method: Method, msg: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(msg).ok()?;
    v.get("id")?;
    let result = v.get_mut("result")?.as_object_mut()?;
    let mut changed = false;
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

/// Where the first complete SSE event in `buf` ends (just past its blank line).
pub(crate) fn event_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i < buf.len() {
        let rest = buf.get(i..).unwrap_or_default();
        if rest.starts_with(b"\r\n\r\n") {
            return Some(i + 4);
        }
        if rest.starts_with(b"\n\n") || rest.starts_with(b"\r\r") {
            return Some(i + 2);
        }
        i += 1;
    }
    None
}

/// One SSE event of a bridged answer (through its blank line), written to `out`: its
/// `data` rewritten by [`modern_answer`] when it is the answer to the request; any other
/// event as it is.
pub(crate) fn rewrite_event(method: Method, event: &[u8], out: &mut Vec<u8>) {
    let lines = || {
        event
            .split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
    };
    let mut data = Vec::new();
    for l in lines() {
        if let Some(d) = l.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    let Some(new) = modern_answer(method, &data) else {
        out.extend_from_slice(event);
        return;
    };
    for l in lines().filter(|l| !l.starts_with(b"data:")) {
        out.extend_from_slice(l);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(&new);
    out.extend_from_slice(b"\n\n");
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
    use super::*;

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
        };
        let b = Declared {
            capabilities: br#"{"sampling":{}}"#,
            client_info: Some(b"{\"name\":\"a\"}"),
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
        discover_answer(&mut out, b"\"q\"", &init.discover);
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
            serde_json::from_slice(&modern_answer(Method::ToolsList, list).unwrap()).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert_eq!(v["result"]["ttlMs"], 0);
        assert_eq!(v["result"]["cacheScope"], "private");
        assert_eq!(v["result"]["tools"], serde_json::json!([]));
        let call = br#"{"jsonrpc":"2.0","id":"a","result":{"content":[]}}"#;
        let v: Value =
            serde_json::from_slice(&modern_answer(Method::ToolsCall, call).unwrap()).unwrap();
        assert_eq!(v["result"]["resultType"], "complete");
        assert!(v["result"].get("ttlMs").is_none());
        // Present already, an error, a notification: unchanged.
        let has = br#"{"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}}"#;
        assert!(modern_answer(Method::ToolsCall, has).is_none());
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}"#;
        assert!(modern_answer(Method::ToolsCall, err).is_none());
        let note = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert!(modern_answer(Method::ToolsCall, note).is_none());
    }

    #[test]
    fn sse_events_are_split_and_only_the_answer_rewritten() {
        let stream = b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\nid: 3\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\r\n\r\nevent: mess";
        let first = event_end(stream).unwrap();
        let mut out = Vec::new();
        rewrite_event(Method::ToolsCall, &stream[..first], &mut out);
        assert_eq!(out, &stream[..first]);
        let rest = &stream[first..];
        let second = event_end(rest).unwrap();
        out.clear();
        rewrite_event(Method::ToolsCall, &rest[..second], &mut out);
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
