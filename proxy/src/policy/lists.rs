//! What a caller may not use is invisible to it: the answers of `tools/list`, `prompts/list`,
//! `resources/list` and `resources/templates/list` lose the entries a policy hides. Plain
//! functions over a whole answer body (JSON, or an SSE stream whose events carry JSON-RPC
//! messages), so that any path that relays or merges lists (virtual servers too) can call them.

use protocol::sse;
use serde_json::Value;

/// Which list an answer carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// `tools/list`: `result.tools[].name`.
    Tools,
    /// `prompts/list`: `result.prompts[].name`.
    Prompts,
    /// `resources/list`: `result.resources[].uri`.
    Resources,
    /// `resources/templates/list`: `result.resourceTemplates[].uriTemplate`.
    ResourceTemplates,
}

impl ListKind {
    /// The list a request for `method` answers with, if it is one.
    pub fn of(method: protocol::Method) -> Option<ListKind> {
        match method {
            protocol::Method::ToolsList => Some(ListKind::Tools),
            protocol::Method::PromptsList => Some(ListKind::Prompts),
            protocol::Method::ResourcesList => Some(ListKind::Resources),
            protocol::Method::ResourceTemplatesList => Some(ListKind::ResourceTemplates),
            _ => None,
        }
    }

    /// The member of `result` holding the entries, and the entry's member that names it.
    fn members(self) -> (&'static str, &'static str) {
        match self {
            ListKind::Tools => ("tools", "name"),
            ListKind::Prompts => ("prompts", "name"),
            ListKind::Resources => ("resources", "uri"),
            ListKind::ResourceTemplates => ("resourceTemplates", "uriTemplate"),
        }
    }
}

/// Why an answer could not be filtered (it must then not reach the caller unfiltered).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unfilterable;

/// Filters one JSON-RPC message: `Ok(None)` when nothing was hidden (or it is not a list
/// result, such as an error), `Ok(Some(json))` when entries were removed.
pub fn filter_message(
    body: &[u8],
    kind: ListKind,
    visible: impl Fn(&str) -> bool,
) -> Result<Option<Vec<u8>>, Unfilterable> {
    let mut msg: Value = serde_json::from_slice(body).map_err(|_| Unfilterable)?;
    let (list, _) = kind.members();
    let Some(entries) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut(list))
        .and_then(Value::as_array_mut)
    else {
        return Ok(None);
    };
    if !retain_entries(entries, kind, visible) {
        return Ok(None);
    }
    serde_json::to_vec(&msg).map(Some).map_err(|_| Unfilterable)
}

/// Keeps the entries of a list (`result.tools` and the like, as JSON values) that `visible`
/// shows, by their name or URI; an entry without one cannot be judged and is hidden. Whether
/// any was removed. For paths that hold a list as values (a virtual server's merged lists).
pub fn retain_entries(
    entries: &mut Vec<Value>,
    kind: ListKind,
    visible: impl Fn(&str) -> bool,
) -> bool {
    let (_, key) = kind.members();
    let before = entries.len();
    entries.retain(|e| e.get(key).and_then(Value::as_str).is_some_and(&visible));
    entries.len() != before
}

/// Filters a whole answer body: a JSON message, or (`sse`) an event stream, each event's
/// `data` a JSON-RPC message (the list result among them). `Ok(None)`: unchanged.
pub fn filter_answer(
    body: &[u8],
    sse: bool,
    kind: ListKind,
    visible: impl Fn(&str) -> bool,
) -> Result<Option<Vec<u8>>, Unfilterable> {
    if !sse {
        return filter_message(body, kind, visible);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut changed = false;
    for event in events(body) {
        let filtered = match sse::event_data(event) {
            Some(d) if !d.is_empty() => filter_message(&d, kind, &visible)?,
            _ => None,
        };
        match filtered {
            Some(json) => {
                changed = true;
                // The other fields (`id`, `event`, `retry`) as they were, one `data` line.
                sse::replace_data(&mut out, event, &json);
            }
            None => {
                out.extend_from_slice(event);
                out.extend_from_slice(b"\n\n");
            }
        }
    }
    Ok(changed.then_some(out))
}

/// The JSON-RPC messages of a whole answer body: the body itself, or (`sse`) each event's
/// `data`.
pub fn messages(body: &[u8], sse: bool) -> Vec<std::borrow::Cow<'_, [u8]>> {
    if !sse {
        return vec![std::borrow::Cow::Borrowed(body)];
    }
    events(body)
        .into_iter()
        .filter_map(sse::event_data)
        .collect()
}

/// The events of a whole body, cut where [`sse::event_end`] says (a blank line after any line
/// end), each without its line ends before and after (the blank lines before it, the blank line
/// that ends it); an event the body does not end with a blank line is one too.
fn events(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = sse::strip_bom(body);
    loop {
        let end = sse::event_end(rest);
        let (event, next) = rest
            .split_at_checked(end.unwrap_or(rest.len()))
            .unwrap_or((rest, &[]));
        let event = trim_eol(event);
        if !event.is_empty() {
            out.push(event);
        }
        if end.is_none() {
            return out;
        }
        rest = next;
    }
}

/// `s` without the CRs and LFs at either end.
fn trim_eol(mut s: &[u8]) -> &[u8] {
    while let Some((b'\r' | b'\n', tail)) = s.split_first() {
        s = tail;
    }
    while let Some((b'\r' | b'\n', head)) = s.split_last() {
        s = head;
    }
    s
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn names(body: &[u8]) -> Vec<String> {
        let v: Value = serde_json::from_slice(body).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"search_web","inputSchema":{}},{"name":"rm_rf"},{"nameless":1}],"nextCursor":"x"}}"#;

    #[test]
    fn json_lists_lose_hidden_entries() {
        let out = filter_message(LIST.as_bytes(), ListKind::Tools, |n| n != "rm_rf")
            .unwrap()
            .unwrap();
        assert_eq!(names(&out), ["search_web"]);
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["id"], 3);
        assert_eq!(v["result"]["nextCursor"], "x");
    }

    #[test]
    fn errors_and_other_results_pass_unchanged() {
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"x"}}"#;
        assert_eq!(filter_message(err, ListKind::Tools, |_| false), Ok(None));
        assert_eq!(
            filter_message(b"not json", ListKind::Tools, |_| true),
            Err(Unfilterable)
        );
    }

    #[test]
    fn sse_events_are_filtered_one_by_one() {
        let body = format!(
            "event: message\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\"}}\r\n\r\nid: 7\nevent: message\ndata: {LIST}\n\n"
        );
        let out = filter_answer(body.as_bytes(), true, ListKind::Tools, |n| n == "rm_rf")
            .unwrap()
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut evs = text.split("\n\n").filter(|e| !e.is_empty());
        assert!(evs.next().unwrap().contains("notifications/message"));
        let second = evs.next().unwrap();
        assert!(second.starts_with("id: 7\nevent: message\ndata: "));
        let data = second.split("data: ").nth(1).unwrap();
        assert_eq!(names(data.as_bytes()), ["rm_rf"]);
        assert!(evs.next().is_none());
    }

    #[test]
    fn multi_line_data_is_joined() {
        let body = b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\ndata: \"result\":{\"prompts\":[{\"name\":\"a\"},{\"name\":\"b\"}]}}\n\n";
        let out = filter_answer(body, true, ListKind::Prompts, |n| n == "b")
            .unwrap()
            .unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains(r#"[{"name":"b"}]"#));
    }

    #[test]
    fn event_data_follows_the_event_stream_rules() {
        // An empty first data line keeps its LF (it was dropped before protocol::sse), a
        // stream's BOM is skipped, a comment is no data, and an event with one data line is
        // borrowed from the body.
        let body = b"\xEF\xBB\xBFdata\ndata: {}\n\n: note\ndata:  x\r\n\r\nevent: e\n\n";
        let got = messages(body, true);
        assert_eq!(got, [&b"\n{}"[..], b" x"]);
        assert!(matches!(got[1], std::borrow::Cow::Borrowed(_)));
    }
}
