//! Old (2024-11-05) clients: `GET {path}/sse` and `POST {path}/messages` of a group with
//! `legacy_sse = true` go to the group's in-process transport bridge, and its answer streams
//! back. Old clients are rare and their streams long-lived, so a fresh loopback connection
//! serves each request (no pooling).
//!
//! In a group with authentication, an old client's session is bound to its caller like any
//! other: the worker mints the session id the bridge announces (a sealed id carrying the
//! caller's owner, given to the bridge in [`LEGACY_SESSION_HEADER`]), and a
//! `POST {path}/messages?sessionId=...` whose id is not the caller's is refused here (404),
//! before the bridge sees it. The bridge then receives exactly the id that was checked.

use std::io::Write as _;
use std::net::SocketAddr;

use monoio::net::TcpStream;

use crate::bridges::legacy::LEGACY_SESSION_HEADER;
use crate::data_path::request::{ClientConn, HttpMethod, Next, Refusal};
use crate::data_path::response::{forward_response, Answer};
use crate::data_path::route::{self, NotOwner};
use crate::data_path::{record, reply, upstream};
use crate::http;
use crate::runtime::core::Core;
use crate::session::SCRATCH;
use crate::tls::Conn;

/// The backend tag sealed into old-transport session ids (they name no backend).
const LEGACY_TAG: u32 = 0;

/// What the worker checked of an old-transport request before passing it on.
enum Checked<'a> {
    /// Pass it as it came.
    AsIs,
    /// `GET {path}/sse` of a caller with an owner: the session id the bridge is to use.
    Open(Vec<u8>),
    /// `POST {path}/messages` in a session of this caller: its id (as the query gave it).
    Post(&'a [u8]),
}

/// The `sessionId` (or `session_id`) of a query string (with or without its `?`), as written.
pub(crate) fn session_param(query: &[u8]) -> Option<&[u8]> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    let find = |key: &[u8]| {
        query.split(|&b| b == b'&').find_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair.get(..eq)? == key)
                .then(|| pair.get(eq + 1..))
                .flatten()
        })
    };
    find(b"sessionId").or_else(|| find(b"session_id"))
}

/// In a group with authentication: mints the id of a new old-transport session, or checks that
/// a POST's session is the caller's (404 when not, counted and logged).
fn check<'c>(core: &Core, c: &'c ClientConn, gi: usize) -> Result<Checked<'c>, Refusal> {
    let Some(group) = core.shared.config.servers.get(gi) else {
        return Ok(Checked::AsIs);
    };
    if !group.auth.required() {
        return Ok(Checked::AsIs);
    }
    let not_found = Refusal::invalid(404, "Session not found");
    let method = c.req.method();
    if c.req.path().ends_with(b"/sse") {
        let (HttpMethod::Get, Some(owner)) = (method, &c.owner) else {
            // The bridge refuses other methods (405).
            return Ok(Checked::AsIs);
        };
        let mut id = Vec::new();
        let nonce: [u8; 16] = rand::random();
        return match core
            .shared
            .sealer
            .seal(LEGACY_TAG, Some(owner), &nonce, &mut id)
        {
            Ok(()) => Ok(Checked::Open(id)),
            Err(_) => Err(Refusal::new(500, -32603, "cannot open a session")),
        };
    }
    if method != HttpMethod::Post {
        return Ok(Checked::AsIs);
    }
    let Some(id) = session_param(c.req.query()) else {
        return Err(not_found);
    };
    let mut scratch = [0u8; SCRATCH];
    let Some(opened) = core.shared.sealer.open(id, &mut scratch) else {
        return Err(not_found);
    };
    let me = super::admission::owner_under_key(core, c, group, opened.key);
    match route::check_owner(group, &opened, me.as_ref()) {
        Ok(()) => Ok(Checked::Post(id)),
        Err(NotOwner { unowned }) => {
            record::not_owner(core, &group.name, &c.caller.name, unowned);
            Err(not_found)
        }
    }
}

/// Passes the complete request in `c.req` to the bridge at `front` and forwards its answer.
pub(crate) async fn forward(core: &Core, c: &mut ClientConn, gi: usize, front: SocketAddr) -> Next {
    let mut out = std::mem::take(&mut c.out);
    out.clear();
    match check(core, c, gi) {
        Ok(checked) => write_head(c, &checked, front, &mut out),
        Err(refusal) => {
            c.out = out;
            super::note_id(core, c);
            return reply::refuse(c, &refusal).await;
        }
    }
    c.out = out;
    let unreachable = Refusal::new(502, -32603, "legacy transport bridge unreachable");
    let Ok(mut up) = TcpStream::connect_addr(front).await.map(Conn::Plain) else {
        return reply::refuse(c, &unreachable).await;
    };
    let out = std::mem::take(&mut c.out);
    let len = out.len();
    let (w, out) = up.write_range(out, 0..len).await;
    c.out = out;
    if w.is_err() {
        return reply::refuse(c, &unreachable).await;
    }
    let mut buf = core.take_buf();
    let Ok(head_len) = upstream::read_head(&mut up, &mut buf, None).await else {
        core.give_buf(buf);
        let failed = Refusal::new(502, -32603, "legacy transport bridge failed");
        return reply::refuse(c, &failed).await;
    };
    let answer = Answer {
        up: &mut up,
        buf,
        head_len,
        backend_tag: 0,
        backend_sid: None,
        // An old client's `/sse` stream carries its answers and is not resumable: a shutdown
        // waits for it like for any call.
        end_on_shutdown: false,
        sessionless: false,
    };
    let keep = !c.req.head.close;
    forward_response(core, c, answer, keep).await.0
}

/// Writes the request for the bridge into `out`: the client's request with hop-by-hop headers
/// and any [`LEGACY_SESSION_HEADER`] of its own dropped; a checked POST goes to exactly the
/// session id that was checked, a new session gets the id minted for it.
fn write_head(c: &ClientConn, checked: &Checked<'_>, front: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(c.req.method_bytes());
    out.push(b' ');
    match checked {
        Checked::Post(id) => {
            out.extend_from_slice(c.req.path());
            out.extend_from_slice(b"?sessionId=");
            out.extend_from_slice(id);
        }
        _ => out.extend_from_slice(c.req.target()),
    }
    let _ = write!(out, " HTTP/1.1\r\nhost: {front}\r\n");
    for (name, value) in c.req.headers() {
        if (http::is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"mcp-session-id"))
            || name.eq_ignore_ascii_case(LEGACY_SESSION_HEADER.as_bytes())
        {
            continue;
        }
        header_line(out, name, value);
    }
    if let Checked::Open(id) = checked {
        header_line(out, LEGACY_SESSION_HEADER.as_bytes(), id);
    }
    let body = c.req.body();
    let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
    out.extend_from_slice(body);
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::session_param;

    #[test]
    fn the_session_id_of_a_query() {
        assert_eq!(session_param(b"?sessionId=abc"), Some(&b"abc"[..]));
        assert_eq!(session_param(b"x=1&sessionId=abc&y"), Some(&b"abc"[..]));
        // `sessionId` first, whatever the order; the first of several.
        assert_eq!(
            session_param(b"?session_id=old&sessionId=new"),
            Some(&b"new"[..])
        );
        assert_eq!(session_param(b"?sessionId=a&sessionId=b"), Some(&b"a"[..]));
        assert_eq!(session_param(b"?session_id=abc"), Some(&b"abc"[..]));
        assert_eq!(session_param(b"?sessionId="), Some(&b""[..]));
        // Keys match exactly: no percent-decoding, no prefix match.
        for q in [
            &b""[..],
            b"?",
            b"?sessionId",
            b"?session%49d=abc",
            b"?sessionIdX=abc",
        ] {
            assert_eq!(session_param(q), None, "{:?}", String::from_utf8_lossy(q));
        }
    }
}
