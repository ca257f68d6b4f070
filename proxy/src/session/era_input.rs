//! A 2025-era client of a 2026-07-28 backend, when the backend asks for input: its
//! `input_required` result read, each of its input requests made a server-to-client request
//! on the call's SSE answer (an id of mcplb's naming the waiting call), the client's POSTed
//! answers matched to them, and the retry the backend expects (`inputResponses`, its
//! `requestState`) made. Plain functions over bytes; `data_path::era_ask` moves them.

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The methods a 2026-07-28 server may ask its client for in an `input_required` result.
pub(crate) const INPUT_METHODS: [&str; 3] =
    ["elicitation/create", "sampling/createMessage", "roots/list"];

/// What an `input_required` result asks for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct InputRound {
    /// `(key, method, params)` of each input request, in the result's order.
    pub requests: Vec<(String, String, Option<Value>)>,
    /// The `requestState` the retry must echo.
    pub state: Option<String>,
}

/// What a backend's answer message (one JSON-RPC response) is to a call of a 2025-era client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// The call's answer (a complete result or an error).
    Final,
    /// The backend asks for input first.
    Input(InputRound),
    /// An `input_required` result mcplb cannot turn into requests for the client: why.
    Unbridgeable(String),
}

/// Reads a backend's answer message `msg`.
pub(crate) fn classify(msg: &Value) -> Answer {
    let Some(result) = msg
        .get("result")
        .filter(|r| r.get("resultType").and_then(Value::as_str) == Some("input_required"))
    else {
        return Answer::Final;
    };
    let state = result
        .get("requestState")
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut requests = Vec::new();
    if let Some(asks) = result.get("inputRequests").and_then(Value::as_object) {
        for (key, ask) in asks {
            let Some(method) = ask.get("method").and_then(Value::as_str) else {
                return Answer::Unbridgeable(format!("input request `{key}` names no method"));
            };
            if !INPUT_METHODS.contains(&method) {
                return Answer::Unbridgeable(format!(
                    "input request `{key}` asks for `{method}`, which a 2025-era client has no \
                     request for"
                ));
            }
            requests.push((key.clone(), method.to_string(), ask.get("params").cloned()));
        }
    }
    if requests.is_empty() && state.is_none() {
        return Answer::Unbridgeable(
            "the backend's input_required result has neither inputRequests nor requestState".into(),
        );
    }
    Answer::Input(InputRound { requests, state })
}

/// The prefix of the JSON-RPC ids mcplb gives the requests it sends a 2025-era client for an
/// `input_required` result.
const ASK_PREFIX: &str = "mcplb-ask-";

/// The id (a JSON string) of input request `index` of the call waiting under `token`.
pub(crate) fn ask_id(token: u64, index: usize) -> String {
    format!("{ASK_PREFIX}{token:016x}-{index}")
}

/// The call (`token`) and input request (`index`) an id made by [`ask_id`] names; `None` for
/// any other id.
pub(crate) fn parse_ask_id(id: &str) -> Option<(u64, usize)> {
    let rest = id.strip_prefix(ASK_PREFIX)?;
    let (token, index) = rest.split_once('-')?;
    if token.len() != 16 {
        return None;
    }
    Some((u64::from_str_radix(token, 16).ok()?, index.parse().ok()?))
}

/// The SSE event of a server-to-client request (`id`, `method`, `params`) into `out`.
pub(crate) fn request_event(out: &mut Vec<u8>, id: &str, method: &str, params: Option<&Value>) {
    let mut req = Map::new();
    req.insert("jsonrpc".into(), Value::from("2.0"));
    req.insert("id".into(), Value::from(id));
    req.insert("method".into(), Value::from(method));
    if let Some(p) = params {
        req.insert("params".into(), p.clone());
    }
    out.extend_from_slice(b"event: message\n");
    protocol::sse::write_data(out, Value::Object(req).to_string().as_bytes());
}

#[derive(Deserialize)]
struct Response<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
    #[serde(default)]
    error: Option<Value>,
}

/// A client's answer to one of mcplb's requests: which call and request it answers, and its
/// result (raw JSON) or error.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientAnswer {
    pub token: u64,
    pub index: usize,
    pub outcome: Result<Vec<u8>, Value>,
}

/// Reads a POSTed JSON-RPC response body: `None` when it does not answer a request of
/// [`ask_id`]'s making.
pub(crate) fn client_answer(body: &[u8]) -> Option<ClientAnswer> {
    let r: Response<'_> = serde_json::from_slice(body).ok()?;
    let id: String = serde_json::from_str(r.id?.get()).ok()?;
    let (token, index) = parse_ask_id(&id)?;
    let outcome = match (r.result, r.error) {
        (Some(res), _) => Ok(res.get().as_bytes().to_vec()),
        (None, Some(e)) => Err(e),
        (None, None) => return None,
    };
    Some(ClientAnswer {
        token,
        index,
        outcome,
    })
}

/// The retry of the request `body` (the 2026-07-28 form of the client's request) carrying the
/// client's answers (`responses`: key and raw JSON result) and the round's `state`; `None`
/// when `body` is not a JSON-RPC request object.
pub(crate) fn retry_body(
    body: &[u8],
    responses: &[(String, Vec<u8>)],
    state: Option<&str>,
) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let params = v
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    let mut answers = Map::new();
    for (key, raw) in responses {
        answers.insert(key.clone(), serde_json::from_slice(raw).ok()?);
    }
    params.remove("inputResponses");
    params.remove("requestState");
    if !answers.is_empty() {
        params.insert("inputResponses".into(), Value::Object(answers));
    }
    if let Some(s) = state {
        params.insert("requestState".into(), Value::from(s));
    }
    serde_json::to_vec(&v).ok()
}

/// The error answer (id `id`, raw JSON) a 2025-era client's call gets when the input its
/// backend asked for cannot be had: `why`.
pub(crate) fn call_error(id: &[u8], why: &str) -> Vec<u8> {
    super::era::server_error(if id.is_empty() { b"null" } else { id }, -32603, why)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn input_required_results_are_read() {
        let msg = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",
            "inputRequests":{"a":{"method":"elicitation/create","params":{"message":"m"}},
                             "b":{"method":"roots/list"}},
            "requestState":"S"}});
        let Answer::Input(round) = classify(&msg) else {
            panic!("not input")
        };
        assert_eq!(round.state.as_deref(), Some("S"));
        assert_eq!(round.requests.len(), 2);
        assert_eq!(round.requests[0].0, "a");
        assert_eq!(round.requests[0].1, "elicitation/create");
        assert_eq!(round.requests[1].2, None);
        let done = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"resultType":"complete"}});
        assert_eq!(classify(&done), Answer::Final);
        let err = serde_json::json!({"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}});
        assert_eq!(classify(&err), Answer::Final);
        let odd = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",
            "inputRequests":{"t":{"method":"tasks/get"}}}});
        assert!(matches!(classify(&odd), Answer::Unbridgeable(w) if w.contains("tasks/get")));
        let empty =
            serde_json::json!({"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required"}});
        assert!(matches!(classify(&empty), Answer::Unbridgeable(_)));
        let state_only = serde_json::json!({"jsonrpc":"2.0","id":1,"result":{
            "resultType":"input_required","requestState":"x"}});
        assert!(matches!(classify(&state_only), Answer::Input(r) if r.requests.is_empty()));
    }

    #[test]
    fn ask_ids_round_trip_and_answers_are_matched() {
        let id = ask_id(0xdead_beef, 2);
        assert_eq!(parse_ask_id(&id), Some((0xdead_beef, 2)));
        assert_eq!(parse_ask_id("mcplb-ask-12-1"), None);
        assert_eq!(parse_ask_id("7"), None);
        let mut ev = Vec::new();
        request_event(&mut ev, &id, "roots/list", None);
        let text = String::from_utf8(ev).unwrap();
        let data = text.strip_prefix("event: message\ndata: ").unwrap();
        let v: Value = serde_json::from_str(data.trim_end()).unwrap();
        assert_eq!(v["id"], id.as_str());
        assert_eq!(v["method"], "roots/list");
        assert!(v.get("params").is_none());

        let ok = format!(r#"{{"jsonrpc":"2.0","id":"{id}","result":{{"roots":[]}}}}"#);
        let a = client_answer(ok.as_bytes()).unwrap();
        assert_eq!((a.token, a.index), (0xdead_beef, 2));
        assert_eq!(a.outcome, Ok(br#"{"roots":[]}"#.to_vec()));
        let err =
            format!(r#"{{"jsonrpc":"2.0","id":"{id}","error":{{"code":-1,"message":"no"}}}}"#);
        assert!(client_answer(err.as_bytes()).unwrap().outcome.is_err());
        assert!(client_answer(br#"{"jsonrpc":"2.0","id":3,"result":{}}"#).is_none());
        assert!(client_answer(b"[").is_none());
    }

    #[test]
    fn retries_carry_the_answers_and_the_state() {
        let body = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"t","requestState":"old"}}"#;
        let answers = vec![("a".to_string(), br#"{"action":"accept"}"#.to_vec())];
        let v: Value =
            serde_json::from_slice(&retry_body(body, &answers, Some("S2")).unwrap()).unwrap();
        assert_eq!(v["id"], 4);
        assert_eq!(v["params"]["name"], "t");
        assert_eq!(v["params"]["requestState"], "S2");
        assert_eq!(v["params"]["inputResponses"]["a"]["action"], "accept");
        let v: Value = serde_json::from_slice(&retry_body(body, &[], None).unwrap()).unwrap();
        assert!(v["params"].get("requestState").is_none());
        assert!(v["params"].get("inputResponses").is_none());
        assert!(retry_body(b"3", &answers, None).is_none());
        let e: Value = serde_json::from_slice(&call_error(b"\"c\"", "why")).unwrap();
        assert_eq!(e["id"], "c");
        assert_eq!(e["error"]["message"], "why");
    }
}
