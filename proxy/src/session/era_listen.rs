//! `subscriptions/listen` (2026-07-28) and the GET stream (2025 era) across the era bridge,
//! as plain functions over bytes: what a listen request asks for, what mcplb can honor from a
//! 2025-era session, the acknowledgment, which stream notifications go to a listener (stamped
//! with its subscription id), and the listen mcplb opens for a 2025-era client's GET stream.
//! `data_path::era_listen` moves the bytes.

use serde_json::{Map, Value};

use super::era::{Declared, MODERN};

/// The `_meta` key every frame of a listen stream carries: the listen request's id.
pub(crate) const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// The JSON-RPC id of the listen mcplb sends for a 2025-era client's GET stream.
const OWN_LISTEN_ID: &str = "mcplb-listen";

/// What a listen request opts in to (its `params.notifications`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Filter {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    /// URIs whose `notifications/resources/updated` the listener wants.
    pub uris: Vec<String>,
}

/// Whether a request body is a `subscriptions/listen`.
pub(crate) fn is_listen(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"subscriptions/listen").is_some()
        && serde_json::from_slice::<Value>(body).ok().is_some_and(|v| {
            v.get("method").and_then(Value::as_str) == Some("subscriptions/listen")
        })
}

/// The filter of a listen request body; `None` when it has no `params.notifications` object.
pub(crate) fn filter(body: &[u8]) -> Option<Filter> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let n = v.get("params")?.get("notifications")?.as_object()?;
    let flag = |k: &str| n.get(k).and_then(Value::as_bool).unwrap_or(false);
    let uris = n
        .get("resourceSubscriptions")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    Some(Filter {
        tools: flag("toolsListChanged"),
        prompts: flag("promptsListChanged"),
        resources: flag("resourcesListChanged"),
        uris,
    })
}

/// What mcplb honors of `asked` through a 2025-era session whose server declared
/// `capabilities` (raw `server/discover` result): the list changes as asked, resource
/// subscriptions only where the server offers `resources.subscribe`.
pub(crate) fn honored(asked: &Filter, discover: &[u8]) -> Filter {
    let v: Value = serde_json::from_slice(discover).unwrap_or(Value::Null);
    let subscribe = v
        .get("capabilities")
        .and_then(|c| c.get("resources"))
        .and_then(|r| r.get("subscribe"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Filter {
        uris: if subscribe {
            asked.uris.clone()
        } else {
            Vec::new()
        },
        ..asked.clone()
    }
}

fn filter_json(f: &Filter) -> Value {
    let mut m = Map::new();
    if f.tools {
        m.insert("toolsListChanged".into(), Value::Bool(true));
    }
    if f.prompts {
        m.insert("promptsListChanged".into(), Value::Bool(true));
    }
    if f.resources {
        m.insert("resourcesListChanged".into(), Value::Bool(true));
    }
    if !f.uris.is_empty() {
        m.insert("resourceSubscriptions".into(), Value::from(f.uris.clone()));
    }
    Value::Object(m)
}

fn meta(id: &Value) -> Value {
    let mut m = Map::new();
    m.insert(SUBSCRIPTION_ID.into(), id.clone());
    Value::Object(m)
}

/// The `notifications/subscriptions/acknowledged` that opens a listen stream (the listen's id
/// `id`, raw JSON).
pub(crate) fn acknowledged(id: &[u8], honored: &Filter) -> Vec<u8> {
    let id: Value = serde_json::from_slice(id).unwrap_or(Value::Null);
    let mut params = Map::new();
    params.insert("notifications".into(), filter_json(honored));
    params.insert("_meta".into(), meta(&id));
    let msg = serde_json::json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": params,
    });
    msg.to_string().into_bytes()
}

/// The `resources/subscribe` mcplb sends in the session for `uri`.
pub(crate) fn subscribe_body(uri: &str, n: usize) -> Vec<u8> {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": format!("mcplb-subscribe-{n}"),
        "method": "resources/subscribe",
        "params": {"uri": uri},
    })
    .to_string()
    .into_bytes()
}

/// A message of a 2025-era session's GET stream as a listener (`id`: its listen's id, raw)
/// takes it: the notification stamped with the subscription id, when `f` asks for it; `None`
/// for anything else (other notifications, server requests).
pub(crate) fn for_listener(data: &[u8], f: &Filter, id: &[u8]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(data).ok()?;
    if v.get("id").is_some() {
        return None;
    }
    let wanted = match v.get("method")?.as_str()? {
        "notifications/tools/list_changed" => f.tools,
        "notifications/prompts/list_changed" => f.prompts,
        "notifications/resources/list_changed" => f.resources,
        "notifications/resources/updated" => {
            let uri = v
                .get("params")
                .and_then(|p| p.get("uri"))
                .and_then(Value::as_str);
            uri.is_some_and(|u| f.uris.iter().any(|w| w == u))
        }
        _ => false,
    };
    if !wanted {
        return None;
    }
    let id: Value = serde_json::from_slice(id).ok()?;
    let params = v
        .as_object_mut()?
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    let m = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()?;
    m.insert(SUBSCRIPTION_ID.into(), id);
    serde_json::to_vec(&v).ok()
}

/// The `subscriptions/listen` mcplb sends a 2026-07-28 server for a 2025-era client's GET
/// stream: every list change and the updates of `uris` (the resources the client subscribed
/// to), with what the client's session declares.
pub(crate) fn listen_for_stream(d: &Declared<'_>, uris: &[String]) -> Vec<u8> {
    let caps: Value = serde_json::from_slice(d.capabilities).unwrap_or(Value::Null);
    let mut m = Map::new();
    m.insert(
        "io.modelcontextprotocol/protocolVersion".into(),
        Value::from(MODERN),
    );
    m.insert("io.modelcontextprotocol/clientCapabilities".into(), caps);
    if let Some(info) = d
        .client_info
        .and_then(|i| serde_json::from_slice::<Value>(i).ok())
    {
        m.insert("io.modelcontextprotocol/clientInfo".into(), info);
    }
    let mut notifications = serde_json::json!({
        "toolsListChanged": true,
        "promptsListChanged": true,
        "resourcesListChanged": true,
    });
    if !uris.is_empty() {
        notifications["resourceSubscriptions"] = Value::from(uris.to_vec());
    }
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": OWN_LISTEN_ID,
        "method": "subscriptions/listen",
        "params": {"notifications": notifications, "_meta": m},
    })
    .to_string()
    .into_bytes()
}

/// A 2025-era client's `resources/subscribe` (`true`) or `resources/unsubscribe` (`false`) and
/// its `params.uri`; `None` for any other body.
pub(crate) fn subscription_request(body: &[u8]) -> Option<(bool, String)> {
    memchr::memmem::find(body, b"subscribe")?;
    let v: Value = serde_json::from_slice(body).ok()?;
    let on = match v.get("method")?.as_str()? {
        "resources/subscribe" => true,
        "resources/unsubscribe" => false,
        _ => return None,
    };
    let uri = v.get("params")?.get("uri")?.as_str()?;
    Some((on, uri.to_string()))
}

/// What a frame of mcplb's own listen stream is to a 2025-era client's GET stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StreamFrame {
    /// A notification for the client, as it is.
    Forward,
    /// The acknowledgment, or anything else the client has no use for.
    Skip,
    /// The listen's answer (or error): the stream is over.
    End,
}

/// Reads a frame (`data`) of mcplb's own listen stream.
pub(crate) fn stream_frame(data: &[u8]) -> StreamFrame {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return StreamFrame::Skip;
    };
    if v.get("id").and_then(Value::as_str) == Some(OWN_LISTEN_ID) && v.get("method").is_none() {
        return StreamFrame::End;
    }
    match v.get("method").and_then(Value::as_str) {
        Some("notifications/subscriptions/acknowledged") | None => StreamFrame::Skip,
        Some(m) if m.starts_with("notifications/") && v.get("id").is_none() => StreamFrame::Forward,
        Some(_) => StreamFrame::Skip,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn listen_requests_are_read_and_honored() {
        let body = br#"{"jsonrpc":"2.0","id":"l-1","method":"subscriptions/listen","params":{"notifications":{"toolsListChanged":true,"resourceSubscriptions":["a://x"]}}}"#;
        assert!(is_listen(body));
        assert!(!is_listen(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"x":"subscriptions/listen"}}"#));
        let f = filter(body).unwrap();
        assert!(f.tools && !f.prompts && !f.resources);
        assert_eq!(f.uris, vec!["a://x".to_string()]);
        assert!(
            filter(br#"{"jsonrpc":"2.0","id":1,"method":"subscriptions/listen","params":{}}"#)
                .is_none()
        );
        let no_sub = honored(&f, br#"{"capabilities":{"resources":{}}}"#);
        assert!(no_sub.tools && no_sub.uris.is_empty());
        let sub = honored(&f, br#"{"capabilities":{"resources":{"subscribe":true}}}"#);
        assert_eq!(sub.uris, f.uris);
        let ack: Value = serde_json::from_slice(&acknowledged(b"\"l-1\"", &no_sub)).unwrap();
        assert_eq!(ack["method"], "notifications/subscriptions/acknowledged");
        assert_eq!(
            ack["params"]["notifications"],
            serde_json::json!({"toolsListChanged": true})
        );
        assert_eq!(ack["params"]["_meta"][SUBSCRIPTION_ID], "l-1");
        let s: Value = serde_json::from_slice(&subscribe_body("a://x", 0)).unwrap();
        assert_eq!(s["params"]["uri"], "a://x");
    }

    #[test]
    fn only_asked_for_notifications_reach_a_listener_stamped() {
        let f = Filter {
            tools: true,
            uris: vec!["a://x".into()],
            ..Default::default()
        };
        let tools = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        let v: Value = serde_json::from_slice(&for_listener(tools, &f, b"7").unwrap()).unwrap();
        assert_eq!(v["params"]["_meta"][SUBSCRIPTION_ID], 7);
        let prompts = br#"{"jsonrpc":"2.0","method":"notifications/prompts/list_changed"}"#;
        assert!(for_listener(prompts, &f, b"7").is_none());
        let upd = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a://x"}}"#;
        assert!(for_listener(upd, &f, b"7").is_some());
        let other = br#"{"jsonrpc":"2.0","method":"notifications/resources/updated","params":{"uri":"a://y"}}"#;
        assert!(for_listener(other, &f, b"7").is_none());
        let ping = br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
        assert!(for_listener(ping, &f, b"7").is_none());
        let log = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        assert!(for_listener(log, &f, b"7").is_none());
    }

    #[test]
    fn a_get_stream_from_a_listen() {
        let d = Declared {
            capabilities: br#"{"sampling":{}}"#,
            client_info: Some(br#"{"name":"c","version":"1"}"#),
            meta: None,
        };
        let v: Value = serde_json::from_slice(&listen_for_stream(&d, &[])).unwrap();
        assert_eq!(v["method"], "subscriptions/listen");
        assert_eq!(v["params"]["notifications"]["toolsListChanged"], true);
        assert!(v["params"]["notifications"]
            .get("resourceSubscriptions")
            .is_none());
        let uris = ["a://x".to_string()];
        let v: Value = serde_json::from_slice(&listen_for_stream(&d, &uris)).unwrap();
        assert_eq!(
            v["params"]["notifications"]["resourceSubscriptions"],
            serde_json::json!(["a://x"])
        );
        let sub =
            br#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{"uri":"a://x"}}"#;
        assert_eq!(subscription_request(sub), Some((true, "a://x".into())));
        let unsub = br#"{"jsonrpc":"2.0","id":3,"method":"resources/unsubscribe","params":{"uri":"a://x"}}"#;
        assert_eq!(subscription_request(unsub), Some((false, "a://x".into())));
        let read =
            br#"{"jsonrpc":"2.0","id":3,"method":"resources/read","params":{"uri":"subscribe"}}"#;
        assert_eq!(subscription_request(read), None);
        let bad = br#"{"jsonrpc":"2.0","id":3,"method":"resources/subscribe","params":{}}"#;
        assert_eq!(subscription_request(bad), None);
        assert_eq!(
            v["params"]["_meta"]["io.modelcontextprotocol/clientInfo"]["name"],
            "c"
        );
        let ack =
            br#"{"jsonrpc":"2.0","method":"notifications/subscriptions/acknowledged","params":{}}"#;
        assert_eq!(stream_frame(ack), StreamFrame::Skip);
        let n = br#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed","params":{}}"#;
        assert_eq!(stream_frame(n), StreamFrame::Forward);
        let end = br#"{"jsonrpc":"2.0","id":"mcplb-listen","result":{}}"#;
        assert_eq!(stream_frame(end), StreamFrame::End);
        assert_eq!(stream_frame(b"nope"), StreamFrame::Skip);
    }
}
