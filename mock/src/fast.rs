//! The common requests answered without building a serde_json value: `ping`, `tools/list`
//! and `tools/call` of `echo` and `whoami`, each alone in a POST. The request is read with
//! mcplb's zero-copy scanner ([`protocol::parse_message`]); the answers are templates that
//! serde_json rendered once, at start, with markers where the id and the text go, so their
//! key order and escaping are serde_json's.
//!
//! A request goes this way only when the general path would answer it with the same bytes:
//! an id and `echo` arguments that serde_json would write back exactly as they arrived
//! (compact, keys in order, integers, plain escapes). Anything else (batches, other methods
//! and tools, floats, spaces, `\u` escapes) is left to the general path.

use protocol::MessageKind;
use serde_json::{json, Value};

/// Where the id goes in a template (a string serde_json writes as `"\u0001id\u0001"`).
const ID_MARK: &str = "\u{1}id\u{1}";
/// Where a tool's text goes in a template.
const TEXT_MARK: &str = "\u{1}text\u{1}";
/// Deepest nesting of `echo` arguments read here; deeper goes the general way.
const MAX_DEPTH: usize = 32;

/// A request the fast path answers.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Call<'a> {
    Ping,
    ToolsList,
    /// `echo` with its arguments as they arrived (`{}` when there were none).
    Echo(&'a [u8]),
    Whoami,
}

/// A request the fast path answers, and its raw id.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    pub(crate) id: &'a [u8],
    pub(crate) call: Call<'a>,
}

/// Reads `body` as one request the fast path answers, or None.
pub(crate) fn read(body: &[u8]) -> Option<Request<'_>> {
    let env = protocol::parse_message(body).ok()?;
    if env.kind != MessageKind::Request {
        return None;
    }
    let id = env.id.filter(|id| canonical(id))?;
    let method = env.method?;
    let call = if method.eq_str("ping") {
        Call::Ping
    } else if method.eq_str("tools/list") {
        Call::ToolsList
    } else if method.eq_str("tools/call") {
        let name = env.name?;
        if name.eq_str("echo") {
            Call::Echo(match env.arguments {
                Some(a) if canonical(a) => a,
                Some(_) => return None,
                None => b"{}",
            })
        } else if name.eq_str("whoami") {
            Call::Whoami
        } else {
            return None;
        }
    } else {
        return None;
    };
    Some(Request { id, call })
}

/// Whether serde_json, reading the valid JSON `b` into a value and writing it back, gives
/// the same bytes: no whitespace, object keys in strictly rising order without escapes,
/// integers of at most 18 digits (no `-0`), strings with only the escapes serde_json
/// writes for quote, backslash, `\b`, `\f`, `\n`, `\r`, `\t`.
pub(crate) fn canonical(b: &[u8]) -> bool {
    let mut i = 0;
    value(b, &mut i, 0) && i == b.len()
}

fn value(b: &[u8], i: &mut usize, depth: usize) -> bool {
    match b.get(*i) {
        Some(b'{') => {
            if depth >= MAX_DEPTH {
                return false;
            }
            *i += 1;
            if b.get(*i) == Some(&b'}') {
                *i += 1;
                return true;
            }
            let mut last: Option<&[u8]> = None;
            loop {
                let start = *i + 1;
                if !string(b, i) {
                    return false;
                }
                let Some(key) = b.get(start..*i - 1) else {
                    return false;
                };
                if key.contains(&b'\\') || last.is_some_and(|l| l >= key) {
                    return false;
                }
                last = Some(key);
                if b.get(*i) != Some(&b':') {
                    return false;
                }
                *i += 1;
                if !value(b, i, depth + 1) {
                    return false;
                }
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b'}') => {
                        *i += 1;
                        return true;
                    }
                    _ => return false,
                }
            }
        }
        Some(b'[') => {
            if depth >= MAX_DEPTH {
                return false;
            }
            *i += 1;
            if b.get(*i) == Some(&b']') {
                *i += 1;
                return true;
            }
            loop {
                if !value(b, i, depth + 1) {
                    return false;
                }
                match b.get(*i) {
                    Some(b',') => *i += 1,
                    Some(b']') => {
                        *i += 1;
                        return true;
                    }
                    _ => return false,
                }
            }
        }
        Some(b'"') => string(b, i),
        Some(b't') => literal(b, i, b"true"),
        Some(b'f') => literal(b, i, b"false"),
        Some(b'n') => literal(b, i, b"null"),
        Some(b'-' | b'0'..=b'9') => integer(b, i),
        _ => false,
    }
}

/// A string whose opening quote is at `i`; `i` ends past the closing quote.
fn string(b: &[u8], i: &mut usize) -> bool {
    if b.get(*i) != Some(&b'"') {
        return false;
    }
    *i += 1;
    loop {
        match b.get(*i) {
            None => return false,
            Some(b'"') => {
                *i += 1;
                return true;
            }
            Some(b'\\') => {
                if !matches!(
                    b.get(*i + 1),
                    Some(b'"' | b'\\' | b'b' | b'f' | b'n' | b'r' | b't')
                ) {
                    return false;
                }
                *i += 2;
            }
            Some(c) if *c < 0x20 => return false,
            Some(_) => *i += 1,
        }
    }
}

fn literal(b: &[u8], i: &mut usize, word: &[u8]) -> bool {
    if b.get(*i..).is_some_and(|rest| rest.starts_with(word)) {
        *i += word.len();
        true
    } else {
        false
    }
}

/// An integer serde_json keeps as one: `0`, or an optional minus and 1 to 18 digits
/// without a leading zero, and no fraction or exponent.
fn integer(b: &[u8], i: &mut usize) -> bool {
    let neg = b.get(*i) == Some(&b'-');
    let start = *i + usize::from(neg);
    let mut end = start;
    while b.get(end).is_some_and(u8::is_ascii_digit) {
        end += 1;
    }
    let digits = end - start;
    let leading_zero = b.get(start) == Some(&b'0');
    let ok = match digits {
        0 => false,
        1 if leading_zero => !neg,
        n => n <= 18 && !leading_zero,
    };
    *i = end;
    ok && !matches!(b.get(end), Some(b'.' | b'e' | b'E'))
}

/// A rendered answer with one gap for the id, and one for a text after it.
#[derive(Debug)]
struct Template {
    head: Vec<u8>,
    mid: Vec<u8>,
    tail: Vec<u8>,
}

impl Template {
    /// Renders `answer` with serde_json and cuts it at the id marker and, when `text`, at
    /// the text marker after it.
    fn new(answer: &Value, text: bool) -> Option<Template> {
        let bytes = serde_json::to_vec(answer).ok()?;
        let id_mark = serde_json::to_vec(ID_MARK).ok()?;
        let at = find(&bytes, &id_mark)?;
        let (head, rest) = bytes.split_at(at);
        let rest = rest.get(id_mark.len()..)?;
        let (mid, tail) = if text {
            let text_mark = serde_json::to_vec(TEXT_MARK).ok()?;
            // Without its quotes: the text sits inside the template's string.
            let inner = text_mark.get(1..text_mark.len() - 1)?;
            let at = find(rest, inner)?;
            (rest.get(..at)?, rest.get(at + inner.len()..)?)
        } else {
            (rest, &[][..])
        };
        Some(Template {
            head: head.to_vec(),
            mid: mid.to_vec(),
            tail: tail.to_vec(),
        })
    }

    /// Length of the answer with an id of `id` bytes and a text of `text` bytes.
    fn len(&self, id: usize, text: usize) -> usize {
        self.head.len() + id + self.mid.len() + text + self.tail.len()
    }

    /// Appends the answer; `text` is written by `write_text`.
    fn write(&self, out: &mut Vec<u8>, id: &[u8], write_text: impl FnOnce(&mut Vec<u8>)) {
        out.extend_from_slice(&self.head);
        out.extend_from_slice(id);
        out.extend_from_slice(&self.mid);
        write_text(out);
        out.extend_from_slice(&self.tail);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The answers of the fast path for one server.
#[derive(Debug)]
pub(crate) struct Answers {
    ping: Template,
    tools_list: Template,
    tool_text: Template,
    /// The `whoami` text (the server's name), escaped for a JSON string.
    whoami: Vec<u8>,
}

impl Answers {
    /// Renders the answers the general path gives: `rpc_result(id, result)` for ping, for
    /// the tool list and for a tool's text. None if a marker cannot be found (the fast path
    /// is then off).
    pub(crate) fn new(
        rpc_result: impl Fn(&Value, Value) -> Value,
        tools_list: &Value,
        text_content: impl Fn(&str) -> Value,
        name: &str,
    ) -> Option<Answers> {
        let id = Value::from(ID_MARK);
        let quoted = serde_json::to_vec(name).ok()?;
        Some(Answers {
            ping: Template::new(&rpc_result(&id, json!({})), false)?,
            tools_list: Template::new(&rpc_result(&id, tools_list.clone()), false)?,
            tool_text: Template::new(&rpc_result(&id, text_content(TEXT_MARK)), true)?,
            whoami: quoted.get(1..quoted.len() - 1)?.to_vec(),
        })
    }

    /// Length of the answer to `req`.
    pub(crate) fn len(&self, req: &Request<'_>) -> usize {
        let id = req.id.len();
        match req.call {
            Call::Ping => self.ping.len(id, 0),
            Call::ToolsList => self.tools_list.len(id, 0),
            Call::Echo(args) => self.tool_text.len(id, escaped_len(args)),
            Call::Whoami => self.tool_text.len(id, self.whoami.len()),
        }
    }

    /// Appends the answer to `req`.
    pub(crate) fn write(&self, out: &mut Vec<u8>, req: &Request<'_>) {
        let id = req.id;
        match req.call {
            Call::Ping => self.ping.write(out, id, |_| {}),
            Call::ToolsList => self.tools_list.write(out, id, |_| {}),
            Call::Echo(args) => self.tool_text.write(out, id, |o| escape(o, args)),
            Call::Whoami => self
                .tool_text
                .write(out, id, |o| o.extend_from_slice(&self.whoami)),
        }
    }
}

/// Length of canonical JSON text written as the content of a JSON string: quotes and
/// backslashes gain a backslash (it holds no control characters).
fn escaped_len(text: &[u8]) -> usize {
    text.len() + text.iter().filter(|&&c| c == b'"' || c == b'\\').count()
}

fn escape(out: &mut Vec<u8>, text: &[u8]) {
    let mut rest = text;
    while let Some(at) = rest.iter().position(|&c| c == b'"' || c == b'\\') {
        out.extend_from_slice(&rest[..at]);
        out.push(b'\\');
        out.push(rest[at]);
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What serde_json writes back after reading `b`.
    fn round_trip(b: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::from_slice::<Value>(b).unwrap()).unwrap()
    }

    #[test]
    fn canonical_is_what_serde_json_writes_back() {
        let yes: &[&[u8]] = &[
            br#"{}"#,
            br#"{"text":"hello"}"#,
            br#"{"a":[1,-2,true,false,null,{"b":"\"\\\n"}],"b":{}}"#,
            br#""x""#,
            b"0",
            b"-7",
            b"123456789012345678",
            "{\"é\":\"ü\",\"ü\":1}".as_bytes(),
        ];
        for b in yes {
            assert!(canonical(b), "{}", String::from_utf8_lossy(b));
            assert_eq!(&round_trip(b)[..], *b);
        }
        let no: &[&[u8]] = &[
            br#"{"b":1,"a":2}"#,
            br#"{"a":1,"a":2}"#,
            br#"{ "a":1}"#,
            br#"[1, 2]"#,
            b"1.0",
            b"1e3",
            b"-0",
            b"1234567890123456789",
            br#""\u0041""#,
            br#""a\/b""#,
            br#"{"a\"":1}"#,
            b"[1,2",
            b"01",
        ];
        for b in no {
            assert!(!canonical(b), "{}", String::from_utf8_lossy(b));
        }
    }

    #[test]
    fn reads_only_what_it_answers() {
        let r = read(br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}"#);
        assert_eq!(
            r,
            Some(Request {
                id: b"7",
                call: Call::Echo(br#"{"text":"hi"}"#)
            })
        );
        let r =
            read(br#"{"jsonrpc":"2.0","id":"a","method":"tools/call","params":{"name":"echo"}}"#);
        assert_eq!(r.map(|r| r.call), Some(Call::Echo(b"{}")));
        let r = read(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
        assert_eq!(r.map(|r| r.call), Some(Call::Ping));
        for other in [
            &br#"{"jsonrpc":"2.0","method":"ping"}"#[..],
            br#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":"\u0041","method":"ping"}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"fail"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"b":1,"a":2}}}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{}}"#,
        ] {
            assert_eq!(read(other), None, "{}", String::from_utf8_lossy(other));
        }
    }

    #[test]
    fn escaping_matches_serde_json() {
        let text = br#"{"a":"q\"b\\"}"#;
        let mut out = Vec::new();
        escape(&mut out, text);
        assert_eq!(out.len(), escaped_len(text));
        let want = serde_json::to_vec(std::str::from_utf8(text).unwrap()).unwrap();
        assert_eq!(&out[..], &want[1..want.len() - 1]);
    }
}
