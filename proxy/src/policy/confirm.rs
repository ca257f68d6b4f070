//! Human approval of a call (`effect = "confirm"`), as plain functions and a small state
//! machine over bytes; `data_path::confirm` moves the bytes.
//!
//! How mcplb can ask depends on the client ([`channel`]): a 2025-era session whose client
//! declared `elicitation` in its `initialize` (remembered in the sealed session id) gets an
//! `elicitation/create` on the call's SSE answer and the call waits for the answer; a
//! 2026-07-28 client that declares `elicitation` in its `_meta` gets an `input_required`
//! result whose `requestState` mcplb seals ([`StateFacts`]: the binding of group, tool,
//! arguments and identity, the deciding rule, an expiry), so its retry may reach any replica
//! sharing the session key; any other client is denied, told why.

use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// How long a call waits for its user's answer by default (`confirm_timeout`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// The start of the JSON-RPC id (a string) of mcplb's own `elicitation/create`, followed by
/// the waiting call's token in hex.
pub const OWN_ID_PREFIX: &str = "mcplb-confirm-";

/// The rule number that stands for `confirm_destructive` (a tool whose annotations say
/// `destructiveHint: true`) rather than a `[[policies]]` entry, in a sealed state.
pub const DESTRUCTIVE_RULE: u16 = u16::MAX;

/// How mcplb can ask the human behind a client to approve a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `elicitation/create` on the call's SSE answer (a 2025-era session).
    Stream,
    /// An `input_required` result with a sealed `requestState` (2026-07-28).
    InputRequired,
    /// It cannot: the call is denied with this reason.
    Unavailable(&'static str),
}

/// The channel for a request: `modern` (a 2026-07-28 request outside any session) with
/// `modern_elicits` (its `_meta` declares `elicitation`); otherwise `session` says whether
/// it belongs to a plain group session, `session_elicits` whether that session's client
/// declared `elicitation`.
pub fn channel(
    modern: bool,
    modern_elicits: bool,
    session: bool,
    session_elicits: bool,
) -> Channel {
    match (modern, session) {
        (true, _) if modern_elicits => Channel::InputRequired,
        (true, _) => {
            Channel::Unavailable("the request's _meta declares no `elicitation` client capability")
        }
        (false, true) if session_elicits => Channel::Stream,
        (false, true) => Channel::Unavailable(
            "the client did not declare the `elicitation` capability in its initialize",
        ),
        (false, false) => Channel::Unavailable(
            "the request belongs to no session mcplb can ask the client in (no Mcp-Session-Id)",
        ),
    }
}

/// Whether a client's `capabilities` object (raw JSON) declares form-mode elicitation: an
/// `elicitation` member that is `{}` (form, as before 2025-11-25) or names `form`.
pub fn declares_elicitation(capabilities: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Caps<'a> {
        #[serde(borrow, default)]
        elicitation: Option<&'a RawValue>,
    }
    let Ok(caps) = serde_json::from_slice::<Caps<'_>>(capabilities) else {
        return false;
    };
    let Some(e) = caps.elicitation else {
        return false;
    };
    match serde_json::from_str::<serde_json::Map<String, Value>>(e.get()) {
        Ok(m) => m.is_empty() || m.contains_key("form"),
        Err(_) => false,
    }
}

/// A JSON-RPC request's `params`, read as `P`.
#[derive(Deserialize)]
struct Frame<P> {
    params: P,
}

/// Whether an `initialize` request body declares form-mode elicitation
/// (`params.capabilities.elicitation`).
pub fn initialize_elicits(body: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        capabilities: &'a RawValue,
    }
    serde_json::from_slice::<Frame<Params<'_>>>(body)
        .is_ok_and(|f| declares_elicitation(f.params.capabilities.get().as_bytes()))
}

/// The user's answer to mcplb's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Accepted with `approve: true`: the call goes on.
    Accept,
    /// Declined, or accepted without approving.
    Decline,
    /// Dismissed (or the client answered with an error).
    Cancel,
}

/// The verdict in an elicitation result (`{"action": ..., "content": {"approve": ...}}`).
pub fn verdict(result: &Value) -> Verdict {
    match result.get("action").and_then(Value::as_str) {
        Some("accept") => {
            let approve = result.get("content").and_then(|c| c.get("approve"));
            if approve == Some(&Value::Bool(true)) {
                Verdict::Accept
            } else {
                Verdict::Decline
            }
        }
        Some("decline") => Verdict::Decline,
        _ => Verdict::Cancel,
    }
}

/// mcplb's own id for the question of the call waiting under `token` (a JSON string).
pub fn own_id(token: u64) -> String {
    format!("\"{OWN_ID_PREFIX}{token:016x}\"")
}

/// The token in one of mcplb's own ids (`raw`: the id as JSON), or `None` for any other id.
pub fn token_of(raw: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(raw).ok()?;
    let hex = s
        .strip_prefix('"')?
        .strip_suffix('"')?
        .strip_prefix(OWN_ID_PREFIX)?;
    (hex.len() == 16).then_some(())?;
    u64::from_str_radix(hex, 16).ok()
}

/// The verdict a client's JSON-RPC response body carries (an error counts as cancel).
pub fn response_verdict(body: &[u8]) -> Option<Verdict> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match (v.get("result"), v.get("error")) {
        (Some(r), None) => Some(verdict(r)),
        (None, Some(_)) => Some(Verdict::Cancel),
        _ => None,
    }
}

/// What became of a call that needed approval (the audit trail's `decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An `input_required` result went out; the retry decides.
    Asked,
    /// The user approved: the call was forwarded.
    Confirmed,
    /// The user declined or dismissed the question.
    Declined,
    /// No answer in time (or a sealed state past its expiry).
    TimedOut,
    /// The client cannot be asked.
    Unavailable,
}

impl Outcome {
    /// As the audit trail writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Asked => "confirm_asked",
            Outcome::Confirmed => "confirmed",
            Outcome::Declined => "declined",
            Outcome::TimedOut => "timed_out",
            Outcome::Unavailable => "confirm_unavailable",
        }
    }
}

/// What ended a call's wait for its user on the SSE answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The client answered.
    Answer(Verdict),
    /// No answer within the timeout.
    TimedOut,
    /// The client closed the call's stream.
    ClientLeft,
}

/// The outcome of a wait: only an approving answer forwards the call.
pub fn settle(w: Waited) -> Outcome {
    match w {
        Waited::Answer(Verdict::Accept) => Outcome::Confirmed,
        Waited::Answer(_) | Waited::ClientLeft => Outcome::Declined,
        Waited::TimedOut => Outcome::TimedOut,
    }
}

/// Longest arguments summary in the question (in bytes, cut at a character boundary).
const SUMMARY_MAX: usize = 200;

/// The call's arguments as the question shows them: their JSON, cut to a readable length.
pub fn summarize(arguments: Option<&RawValue>) -> String {
    let raw = arguments.map_or("{}", |a| a.get()).trim();
    if raw.len() <= SUMMARY_MAX {
        return raw.to_string();
    }
    let mut end = SUMMARY_MAX;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", raw.get(..end).unwrap_or_default())
}

/// The `elicitation/create` params asking to approve `tool` with `arguments`: a message naming
/// both and a one-boolean form.
pub fn question(tool: &str, arguments: Option<&RawValue>, rule: &str) -> Value {
    let message = format!(
        "Allow the tool `{tool}` to run with arguments {}? (mcplb asks because of {rule})",
        summarize(arguments)
    );
    serde_json::json!({
        "mode": "form",
        "message": message,
        "requestedSchema": {
            "type": "object",
            "properties": {
                "approve": {
                    "type": "boolean",
                    "title": "Run this tool",
                    "description": format!("Run `{tool}` now"),
                    "default": false,
                }
            },
            "required": ["approve"],
        }
    })
}

/// The `elicitation/create` request for the call waiting under `token` (JSON-RPC).
pub fn elicitation_request(token: u64, params: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(own_id(token).as_bytes());
    out.extend_from_slice(b",\"method\":\"elicitation/create\",\"params\":");
    out.extend_from_slice(params.to_string().as_bytes());
    out.push(b'}');
    out
}

/// The input request of an `input_required` result asking the same (2026-07-28).
pub fn input_request(params: &Value) -> Vec<u8> {
    serde_json::json!({"method": "elicitation/create", "params": params})
        .to_string()
        .into_bytes()
}

/// A tool result saying the call did not run (`isError: true`) for the request `id` (raw),
/// with `resultType` for a 2026-07-28 client.
pub fn refused_result(id: &[u8], tool: &str, outcome: Outcome, modern: bool) -> Vec<u8> {
    let why = match outcome {
        Outcome::TimedOut => "no answer came in time",
        _ => "the user declined it",
    };
    let text =
        format!("mcplb did not run the tool `{tool}`: it needs the user's approval and {why}.");
    let mut result = serde_json::json!({
        "content": [{"type": "text", "text": text}],
        "isError": true,
    });
    if modern {
        result["resultType"] = Value::from("complete");
    }
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"{\"jsonrpc\":\"2.0\",\"id\":");
    out.extend_from_slice(if id.is_empty() { b"null" } else { id });
    out.extend_from_slice(b",\"result\":");
    out.extend_from_slice(result.to_string().as_bytes());
    out.push(b'}');
    out
}

/// What a `tools/call` body carries that approval looks at.
#[derive(Debug)]
pub struct Call<'a> {
    /// `params.name`.
    pub tool: String,
    /// `params.arguments`, raw.
    pub arguments: Option<&'a RawValue>,
    /// `params.requestState`, when a string.
    pub state: Option<&'a str>,
    /// `params.inputResponses`, raw.
    pub responses: Option<&'a RawValue>,
}

/// The parts of a `tools/call` body, or `None` when it has no `params.name`.
pub fn call(body: &[u8]) -> Option<Call<'_>> {
    #[derive(Deserialize)]
    struct Params<'a> {
        name: String,
        #[serde(borrow, default)]
        arguments: Option<&'a RawValue>,
        #[serde(borrow, rename = "requestState", default)]
        state: Option<&'a RawValue>,
        #[serde(borrow, rename = "inputResponses", default)]
        responses: Option<&'a RawValue>,
    }
    let f: Frame<Params<'_>> = serde_json::from_slice(body).ok()?;
    let state = f.params.state.and_then(|s| {
        let s = s.get();
        s.strip_prefix('"')?.strip_suffix('"')
    });
    Some(Call {
        tool: f.params.name,
        arguments: f.params.arguments,
        state,
        responses: f.params.responses,
    })
}

/// The verdict in a retry's `inputResponses` (`key`: the input request's key).
pub fn retry_verdict(responses: Option<&RawValue>, key: &str) -> Verdict {
    let v = responses.and_then(|r| serde_json::from_str::<Value>(r.get()).ok());
    match v.as_ref().and_then(|v| v.get(key)) {
        Some(answer) => verdict(answer),
        None => Verdict::Cancel,
    }
}

/// The body without `params.requestState` and `params.inputResponses` (they were mcplb's:
/// the backend gets the call as first sent), or `None` if it cannot be rewritten.
pub fn strip_retry(body: &[u8]) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let params = v.get_mut("params")?.as_object_mut()?;
    params.remove("requestState");
    params.remove("inputResponses");
    serde_json::to_vec(&v).ok()
}

/// What a call is bound to: its group, tool, arguments and caller.
#[derive(Debug, Clone, Copy)]
pub struct Binding<'a> {
    /// The server group's name.
    pub group: &'a str,
    /// The tool.
    pub tool: &'a str,
    /// The arguments, raw (compared in a canonical form: object keys sorted, no spaces).
    pub arguments: Option<&'a RawValue>,
    /// The caller's identity.
    pub identity: &'a str,
}

/// The SHA-256 of a binding, each part length-prefixed; arguments in canonical form (so the
/// same arguments re-serialised by a client in another key order still match).
pub fn binding_hash(b: &Binding<'_>) -> [u8; 32] {
    let args = b
        .arguments
        .and_then(|a| serde_json::from_str::<Value>(a.get()).ok())
        .map(|v| v.to_string())
        .unwrap_or_else(|| "{}".to_string());
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [b.group, b.tool, args.as_str(), b.identity] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part.as_bytes());
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// What a sealed confirmation state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFacts {
    /// When it stops being honoured (milliseconds since the Unix epoch).
    pub expires_ms: u64,
    /// The deciding rule (`policies[N]`), or [`DESTRUCTIVE_RULE`].
    pub rule: u16,
    /// [`binding_hash`] of the call it was issued for.
    pub binding: [u8; 32],
}

/// Marks a confirmation state's payload (inside the sealed kind, against a future layout).
const STATE_MAGIC: &[u8; 4] = b"cfm1";
/// Bytes of a state's payload.
pub const STATE_LEN: usize = 4 + 8 + 2 + 32;

/// The plain bytes of a state (sealed with `session::VERSION_CONFIRM`).
pub fn state_payload(f: &StateFacts) -> [u8; STATE_LEN] {
    let mut out = [0u8; STATE_LEN];
    let (magic, rest) = out.split_at_mut(4);
    magic.copy_from_slice(STATE_MAGIC);
    let (exp, rest) = rest.split_at_mut(8);
    exp.copy_from_slice(&f.expires_ms.to_le_bytes());
    let (rule, binding) = rest.split_at_mut(2);
    rule.copy_from_slice(&f.rule.to_le_bytes());
    binding.copy_from_slice(&f.binding);
    out
}

/// The facts of a state's plain bytes, or `None` when they are not a state's.
pub fn parse_state(payload: &[u8]) -> Option<StateFacts> {
    let rest = payload.strip_prefix(STATE_MAGIC)?;
    let (exp, rest) = rest.split_first_chunk::<8>()?;
    let (rule, binding) = rest.split_first_chunk::<2>()?;
    Some(StateFacts {
        expires_ms: u64::from_le_bytes(*exp),
        rule: u16::from_le_bytes(*rule),
        binding: binding.try_into().ok()?,
    })
}

/// `f` sealed as a `requestState` (the session key's AEAD, its own version byte: it never
/// opens as a session id or an era bridge state, nor they as it).
pub fn seal_state(sealer: &crate::session::SessionSealer, f: &StateFacts) -> Option<String> {
    let mut out = Vec::with_capacity(96);
    sealer
        .seal_kind(crate::session::VERSION_CONFIRM, &state_payload(f), &mut out)
        .ok()?;
    String::from_utf8(out).ok()
}

/// The facts of a sealed state, or `None` when no key opens it, it was altered, or it is not
/// a confirmation state.
pub fn open_state(sealer: &crate::session::SessionSealer, sealed: &str) -> Option<StateFacts> {
    let mut buf = Vec::new();
    let (payload, _) =
        sealer.open_kind(crate::session::VERSION_CONFIRM, sealed.as_bytes(), &mut buf)?;
    parse_state(payload)
}

/// Marks a wrapped backend state's payload ([`seal_wrapped`]).
const WRAP_MAGIC: &[u8; 4] = b"cfm2";
/// Bytes of a wrapped state's payload: a state's, then the SHA-256 of the backend's state.
const WRAP_LEN: usize = STATE_LEN + 32;

/// A 2026-07-28 backend's own `requestState` (`backend`) in an approved call's
/// `input_required` round, as the client gets it: `SEALED.BACKEND`, where `SEALED` binds the
/// approval (`f`: the call's binding, the rule, an expiry) to the SHA-256 of `backend`. Its
/// retry goes on without being asked about again ([`open_wrapped`]), the backend getting its
/// own state back; a state made up by the client is no approval.
pub fn seal_wrapped(
    sealer: &crate::session::SessionSealer,
    f: &StateFacts,
    backend: &str,
) -> Option<String> {
    let mut payload = [0u8; WRAP_LEN];
    let (state, hash) = payload.split_at_mut(STATE_LEN);
    state.copy_from_slice(&state_payload(f));
    state.get_mut(..4).map(|m| m.copy_from_slice(WRAP_MAGIC))?;
    hash.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, backend.as_bytes()).as_ref());
    let mut out = Vec::with_capacity(128 + backend.len());
    sealer
        .seal_kind(crate::session::VERSION_CONFIRM, &payload, &mut out)
        .ok()?;
    out.push(b'.');
    out.extend_from_slice(backend.as_bytes());
    String::from_utf8(out).ok()
}

/// The approval a wrapped state carries and the backend's own state in it, or `None` when it
/// is not one, no key opens it, or the backend's part was changed.
pub fn open_wrapped<'a>(
    sealer: &crate::session::SessionSealer,
    state: &'a str,
) -> Option<(StateFacts, &'a str)> {
    let (sealed, backend) = state.split_once('.')?;
    let mut buf = Vec::new();
    let (payload, _) =
        sealer.open_kind(crate::session::VERSION_CONFIRM, sealed.as_bytes(), &mut buf)?;
    let rest = payload.strip_prefix(WRAP_MAGIC)?;
    if payload.len() != WRAP_LEN {
        return None;
    }
    let mut plain = [0u8; STATE_LEN];
    plain.get_mut(..4)?.copy_from_slice(STATE_MAGIC);
    plain
        .get_mut(4..)?
        .copy_from_slice(rest.get(..STATE_LEN - 4)?);
    let facts = parse_state(&plain)?;
    let want = rest.get(STATE_LEN - 4..)?;
    let got = ring::digest::digest(&ring::digest::SHA256, backend.as_bytes());
    let diff = want
        .iter()
        .zip(got.as_ref())
        .fold(0u8, |x, (a, b)| x | (a ^ b));
    (diff == 0).then_some((facts, backend))
}

/// A JSON-RPC message whose result is an `input_required` round with a `requestState`: the
/// message with that state replaced by `wrap(state)`. `None`: not such a message (or `wrap`
/// declined), left as it is.
pub fn wrap_round(message: &[u8], wrap: impl Fn(&str) -> Option<String>) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(message).ok()?;
    let result = v.get_mut("result")?.as_object_mut()?;
    if result.get("resultType").and_then(Value::as_str) != Some("input_required") {
        return None;
    }
    let state = result.get("requestState")?.as_str()?;
    let wrapped = wrap(state)?;
    result.insert("requestState".into(), Value::String(wrapped));
    serde_json::to_vec(&v).ok()
}

/// The body with `params.requestState` set to `state` (the rest, `inputResponses` included,
/// as it came), or `None` if it cannot be rewritten.
pub fn with_state(body: &[u8], state: &str) -> Option<Vec<u8>> {
    let mut v: serde_json::Map<String, Value> = serde_json::from_slice(body).ok()?;
    let params = v.get_mut("params")?.as_object_mut()?;
    params.insert("requestState".into(), Value::String(state.to_string()));
    serde_json::to_vec(&v).ok()
}

/// Why a retry's confirmation state is not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Past its expiry: the question timed out.
    Expired,
    /// Issued for another call (tool, arguments, group or caller).
    Mismatch,
}

/// Whether state `f` lets the call bound as `binding` go on at `now_ms`.
pub fn check_state(f: &StateFacts, now_ms: u64, binding: &[u8; 32]) -> Result<(), StateError> {
    if now_ms > f.expires_ms {
        return Err(StateError::Expired);
    }
    // Constant time: the binding is not secret, but nothing is gained by leaking where it
    // differs either.
    let diff = f
        .binding
        .iter()
        .zip(binding)
        .fold(0u8, |x, (a, b)| x | (a ^ b));
    if diff != 0 {
        return Err(StateError::Mismatch);
    }
    Ok(())
}

/// How the deciding rule is named (`policies[N]` or `confirm_destructive`).
pub fn rule_name(rule: Option<usize>) -> String {
    match rule {
        Some(r) if r != usize::from(DESTRUCTIVE_RULE) => format!("policies[{r}]"),
        _ => "confirm_destructive".to_string(),
    }
}

/// Most tool names remembered per kind (destructive, not) and group; past it a name is not
/// learned (an unknown tool is asked about: never a destructive call let through).
const MAX_HINTS: usize = 4096;

/// What a group's backends said about their tools' annotations (`confirm_destructive`), as
/// learned from `tools/list` answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Annotations {
    destructive: std::collections::HashSet<Box<str>>,
    safe: std::collections::HashSet<Box<str>>,
}

impl Annotations {
    /// After a `tools/list` page naming `tools` (name, destructive): each entry's latest word
    /// holds.
    pub fn learned(&self, tools: &[(String, bool)]) -> Annotations {
        let mut next = self.clone();
        for (name, destructive) in tools {
            let (add, drop) = if *destructive {
                (&mut next.destructive, &mut next.safe)
            } else {
                (&mut next.safe, &mut next.destructive)
            };
            drop.remove(name.as_str());
            if add.len() < MAX_HINTS {
                add.insert(name.as_str().into());
            }
        }
        next
    }

    /// After a `notifications/tools/list_changed`: what was known to be harmless may have
    /// changed, so it is asked about again until a list says otherwise; what was destructive
    /// stays so.
    pub fn changed(&self) -> Annotations {
        Annotations {
            destructive: self.destructive.clone(),
            safe: Default::default(),
        }
    }

    /// Whether a call of `tool` needs approval: unless the latest list said it is not
    /// destructive (a tool no list has shown since the start, a reload or a change is asked
    /// about too).
    pub fn needs_approval(&self, tool: &str) -> bool {
        !self.safe.contains(tool)
    }
}

/// A group's [`Annotations`], shared by every core: read lock-free per `tools/call` of a
/// group with `confirm_destructive`, replaced whole when a list or a change arrives.
#[derive(Debug, Default)]
pub struct ToolHints(arc_swap::ArcSwap<Annotations>);

impl ToolHints {
    /// Learns from a `tools/list` page.
    pub fn learn(&self, tools: &[(String, bool)]) {
        if !tools.is_empty() {
            self.0.rcu(|a| a.learned(tools));
        }
    }

    /// [`learn`](Self::learn), unless every tool of `tools` is known as it says already (one
    /// load and a lookup per tool, where learning copies the whole set).
    pub fn learn_if_new(&self, tools: &[(String, bool)]) {
        let known = self.0.load();
        let knows = |(name, destructive): &(String, bool)| {
            let set = if *destructive {
                &known.destructive
            } else {
                &known.safe
            };
            set.contains(name.as_str())
        };
        if !tools.iter().all(knows) {
            self.learn(tools);
        }
    }

    /// Notes a `notifications/tools/list_changed`.
    pub fn changed(&self) {
        self.0.rcu(|a| a.changed());
    }

    /// See [`Annotations::needs_approval`].
    pub fn needs_approval(&self, tool: &str) -> bool {
        self.0.load().needs_approval(tool)
    }
}

/// The tools of one `tools/list` JSON-RPC message and whether each is destructive: its
/// annotations say `destructiveHint: true` (and not `readOnlyHint: true`).
pub fn tool_hints(message: &[u8]) -> Vec<(String, bool)> {
    let Ok(v) = serde_json::from_slice::<Value>(message) else {
        return Vec::new();
    };
    let Some(tools) = v
        .get("result")
        .and_then(|r| r.get("tools"))
        .and_then(Value::as_array)
    else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|t| {
            let name = t.get("name")?.as_str()?;
            let a = t.get("annotations");
            let hint = |k: &str| a.and_then(|a| a.get(k)) == Some(&Value::Bool(true));
            Some((
                name.to_string(),
                hint("destructiveHint") && !hint("readOnlyHint"),
            ))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn the_channel_follows_what_the_client_declared() {
        assert_eq!(channel(true, true, false, false), Channel::InputRequired);
        assert!(matches!(
            channel(true, false, false, false),
            Channel::Unavailable(_)
        ));
        assert_eq!(channel(false, false, true, true), Channel::Stream);
        assert!(
            matches!(channel(false, false, true, false), Channel::Unavailable(m) if m.contains("initialize"))
        );
        assert!(
            matches!(channel(false, true, false, true), Channel::Unavailable(m) if m.contains("session"))
        );
    }

    #[test]
    fn elicitation_declarations() {
        assert!(declares_elicitation(br#"{"elicitation":{}}"#));
        assert!(declares_elicitation(
            br#"{"elicitation":{"form":{},"url":{}}}"#
        ));
        assert!(!declares_elicitation(br#"{"elicitation":{"url":{}}}"#));
        assert!(!declares_elicitation(br#"{"sampling":{}}"#));
        assert!(!declares_elicitation(b"not json"));
        let init = br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"elicitation":{}},"clientInfo":{"name":"x","version":"1"}}}"#;
        assert!(initialize_elicits(init));
        assert!(!initialize_elicits(
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"capabilities":{}}}"#
        ));
    }

    #[test]
    fn verdicts_forward_only_an_approval() {
        let v = |s: &str| verdict(&serde_json::from_str(s).unwrap());
        assert_eq!(
            v(r#"{"action":"accept","content":{"approve":true}}"#),
            Verdict::Accept
        );
        assert_eq!(
            v(r#"{"action":"accept","content":{"approve":false}}"#),
            Verdict::Decline
        );
        assert_eq!(
            v(r#"{"action":"accept","content":{"approve":"yes"}}"#),
            Verdict::Decline
        );
        assert_eq!(v(r#"{"action":"accept"}"#), Verdict::Decline);
        assert_eq!(v(r#"{"action":"decline"}"#), Verdict::Decline);
        assert_eq!(v(r#"{"action":"cancel"}"#), Verdict::Cancel);
        assert_eq!(v(r#"{}"#), Verdict::Cancel);
        assert_eq!(
            response_verdict(br#"{"jsonrpc":"2.0","id":"x","error":{"code":-1,"message":"no"}}"#),
            Some(Verdict::Cancel)
        );
        assert_eq!(response_verdict(b"[]"), None);
        // The wait's state machine: only an approving answer forwards.
        assert_eq!(settle(Waited::Answer(Verdict::Accept)), Outcome::Confirmed);
        assert_eq!(settle(Waited::Answer(Verdict::Decline)), Outcome::Declined);
        assert_eq!(settle(Waited::Answer(Verdict::Cancel)), Outcome::Declined);
        assert_eq!(settle(Waited::ClientLeft), Outcome::Declined);
        assert_eq!(settle(Waited::TimedOut), Outcome::TimedOut);
    }

    #[test]
    fn own_ids_round_trip_and_refuse_strangers() {
        let id = own_id(0xdead_beef);
        assert_eq!(token_of(id.as_bytes()), Some(0xdead_beef));
        assert_eq!(token_of(b"\"mcplb-confirm-xyz\""), None);
        assert_eq!(token_of(b"7"), None);
        assert_eq!(token_of(b"\"other\""), None);
        let req: Value = serde_json::from_slice(&elicitation_request(
            5,
            &question("rm", None, "policies[0]"),
        ))
        .unwrap();
        assert_eq!(req["method"], "elicitation/create");
        assert_eq!(token_of(req["id"].to_string().as_bytes()), Some(5));
        assert_eq!(
            req["params"]["requestedSchema"]["properties"]["approve"]["type"],
            "boolean"
        );
        assert!(req["params"]["message"].as_str().unwrap().contains("`rm`"));
    }

    #[test]
    fn summaries_are_bounded_at_a_character_boundary() {
        let long = raw(&format!("{{\"p\":\"{}\"}}", "é".repeat(300)));
        let s = summarize(Some(&long));
        assert!(
            s.len() <= SUMMARY_MAX + "…".len() && s.ends_with('…'),
            "{s}"
        );
        assert_eq!(summarize(None), "{}");
        assert_eq!(summarize(Some(&raw(r#"{"a":1}"#))), r#"{"a":1}"#);
    }

    #[test]
    fn calls_and_retries_are_read_and_stripped() {
        let body = br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"rm","arguments":{"p":"/"},"requestState":"abc","inputResponses":{"mcplb-input":{"action":"accept","content":{"approve":true}}}}}"#;
        let c = call(body).unwrap();
        assert_eq!((c.tool.as_str(), c.state), ("rm", Some("abc")));
        assert_eq!(retry_verdict(c.responses, "mcplb-input"), Verdict::Accept);
        assert_eq!(retry_verdict(c.responses, "other"), Verdict::Cancel);
        let stripped: Value = serde_json::from_slice(&strip_retry(body).unwrap()).unwrap();
        assert_eq!(
            stripped["params"],
            serde_json::json!({"name":"rm","arguments":{"p":"/"}})
        );
        assert_eq!(stripped["id"], 3);
    }

    #[test]
    fn states_bind_the_call_and_expire() {
        let args = raw(r#"{"b":2,"a":1}"#);
        let same_reordered = raw(r#"{ "a": 1, "b": 2 }"#);
        let b = |tool, args, who| Binding {
            group: "g",
            tool,
            arguments: Some(args),
            identity: who,
        };
        let h = binding_hash(&b("rm", &args, "alice"));
        assert_eq!(h, binding_hash(&b("rm", &same_reordered, "alice")));
        let facts = StateFacts {
            expires_ms: 1_000,
            rule: 3,
            binding: h,
        };
        let parsed = parse_state(&state_payload(&facts)).unwrap();
        assert_eq!(parsed, facts);
        assert_eq!(check_state(&parsed, 999, &h), Ok(()));
        assert_eq!(check_state(&parsed, 1_001, &h), Err(StateError::Expired));
        for other in [
            binding_hash(&b("rmdir", &args, "alice")),
            binding_hash(&b("rm", &raw(r#"{"a":1,"b":3}"#), "alice")),
            binding_hash(&b("rm", &args, "mallory")),
            binding_hash(&Binding {
                group: "h",
                ..b("rm", &args, "alice")
            }),
        ] {
            assert_eq!(check_state(&parsed, 0, &other), Err(StateError::Mismatch));
        }
        assert_eq!(parse_state(b"cfm1short"), None);
        assert_eq!(parse_state(&[0u8; STATE_LEN]), None);
    }

    #[test]
    fn sealed_states_open_only_untouched_and_only_as_states() {
        use crate::session::SessionSealer;
        let sealer = SessionSealer::new(&[7u8; 32]);
        let facts = StateFacts {
            expires_ms: 42,
            rule: 1,
            binding: [9u8; 32],
        };
        let sealed = seal_state(&sealer, &facts).unwrap();
        assert_eq!(open_state(&sealer, &sealed), Some(facts));
        // Any byte changed: refused.
        for i in 0..sealed.len() {
            let mut t = sealed.clone().into_bytes();
            t[i] = if t[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(
                open_state(&sealer, std::str::from_utf8(&t).unwrap()),
                None,
                "byte {i}"
            );
        }
        // Another key: refused; a rotation that keeps the old key: opens.
        assert_eq!(open_state(&SessionSealer::new(&[8u8; 32]), &sealed), None);
        let rotated = SessionSealer::with_keys(&[[8u8; 32], [7u8; 32]]).unwrap();
        assert_eq!(open_state(&rotated, &sealed), Some(facts));
        // Not a session id, nor a virtual server's; and they are not states.
        let mut scratch = [0u8; crate::session::SCRATCH];
        assert!(sealer.open(sealed.as_bytes(), &mut scratch).is_none());
        assert!(sealer
            .open_virtual(sealed.as_bytes(), &mut Vec::new())
            .is_none());
        let mut sid = Vec::new();
        sealer
            .seal(1, None, &state_payload(&facts), &mut sid)
            .unwrap();
        assert_eq!(
            open_state(&sealer, std::str::from_utf8(&sid).unwrap()),
            None
        );
        let mut v = Vec::new();
        sealer.seal_virtual(&state_payload(&facts), &mut v).unwrap();
        assert_eq!(open_state(&sealer, std::str::from_utf8(&v).unwrap()), None);
    }

    #[test]
    fn wrapped_backend_states_carry_the_approval_and_refuse_changes() {
        use crate::session::SessionSealer;
        let sealer = SessionSealer::new(&[7u8; 32]);
        let facts = StateFacts {
            expires_ms: 42,
            rule: 1,
            binding: [9u8; 32],
        };
        let backend = "eyJ0b29sIjoiaW50cm9kdWNlIn0.with.dots";
        let wrapped = seal_wrapped(&sealer, &facts, backend).unwrap();
        assert!(wrapped.ends_with(backend));
        assert_eq!(open_wrapped(&sealer, &wrapped), Some((facts, backend)));
        // Not a plain state, nor a plain state a wrapped one.
        assert_eq!(open_state(&sealer, &wrapped), None);
        let plain = seal_state(&sealer, &facts).unwrap();
        assert_eq!(open_wrapped(&sealer, &plain), None);
        assert_eq!(open_wrapped(&sealer, &format!("{plain}.{backend}")), None);
        // The backend's part changed, the seal changed, another key: refused.
        let (sealed, _) = wrapped.split_once('.').unwrap();
        assert_eq!(open_wrapped(&sealer, &format!("{sealed}.other")), None);
        assert_eq!(
            open_wrapped(&SessionSealer::new(&[8u8; 32]), &wrapped),
            None
        );
        let mut t = wrapped.clone().into_bytes();
        t[3] = if t[3] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open_wrapped(&sealer, std::str::from_utf8(&t).unwrap()),
            None
        );
        // Rounds are rewritten; anything else is left alone.
        let round = br#"{"jsonrpc":"2.0","id":4,"result":{"resultType":"input_required","inputRequests":{},"requestState":"abc"}}"#;
        let out: Value =
            serde_json::from_slice(&wrap_round(round, |s| Some(format!("w({s})"))).unwrap())
                .unwrap();
        assert_eq!(out["result"]["requestState"], "w(abc)");
        assert_eq!(out["id"], 4);
        let done = br#"{"jsonrpc":"2.0","id":4,"result":{"resultType":"complete","content":[]}}"#;
        assert!(wrap_round(done, |s| Some(s.to_string())).is_none());
        let retry = br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"t","requestState":"x.y","inputResponses":{"k":1}}}"#;
        let out: Value = serde_json::from_slice(&with_state(retry, "y").unwrap()).unwrap();
        assert_eq!(out["params"]["requestState"], "y");
        assert_eq!(out["params"]["inputResponses"]["k"], 1);
    }

    #[test]
    fn annotations_are_learned_from_lists_and_forgotten_on_change() {
        let page = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[
            {"name":"rm","annotations":{"destructiveHint":true}},
            {"name":"ls","annotations":{"readOnlyHint":true,"destructiveHint":true}},
            {"name":"add"},
            {"name":"put","annotations":{"destructiveHint":false}}]}}"#;
        let hints = tool_hints(page);
        assert_eq!(
            hints,
            vec![
                ("rm".into(), true),
                ("ls".into(), false),
                ("add".into(), false),
                ("put".into(), false)
            ]
        );
        assert!(
            tool_hints(br#"{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"x"}}"#).is_empty()
        );
        let shared = ToolHints::default();
        // Nothing listed yet: asked (never a destructive call let through unasked).
        assert!(shared.needs_approval("add"));
        shared.learn(&hints);
        assert!(
            shared.needs_approval("rm")
                && !shared.needs_approval("add")
                && !shared.needs_approval("ls")
        );
        assert!(shared.needs_approval("never-listed"));
        // A later page's word holds.
        shared.learn(&[("add".into(), true), ("rm".into(), false)]);
        assert!(shared.needs_approval("add") && !shared.needs_approval("rm"));
        // A change: the harmless ones are asked about again until listed; destructive stays.
        shared.changed();
        assert!(
            shared.needs_approval("rm")
                && shared.needs_approval("add")
                && shared.needs_approval("ls")
        );
        shared.learn(&hints);
        assert!(!shared.needs_approval("ls"));
    }

    #[test]
    fn refused_results_are_tool_errors() {
        let r: Value =
            serde_json::from_slice(&refused_result(b"7", "rm", Outcome::Declined, true)).unwrap();
        assert_eq!(r["id"], 7);
        assert_eq!(r["result"]["isError"], true);
        assert_eq!(r["result"]["resultType"], "complete");
        assert!(r["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("declined"));
        let t: Value =
            serde_json::from_slice(&refused_result(b"\"x\"", "rm", Outcome::TimedOut, false))
                .unwrap();
        assert!(t["result"].get("resultType").is_none());
        assert!(t["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("in time"));
        assert_eq!(rule_name(Some(2)), "policies[2]");
        assert_eq!(
            rule_name(Some(usize::from(DESTRUCTIVE_RULE))),
            "confirm_destructive"
        );
    }
}
