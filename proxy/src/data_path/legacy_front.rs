//! Old (2024-11-05) clients: `GET {path}/sse` and `POST {path}/messages` of a group with
//! `legacy_sse = true` go, unchanged, to the group's in-process transport bridge, and its
//! answer streams back. Old clients are rare and their streams long-lived, so a fresh loopback
//! connection serves each request (no pooling).

use std::io::Write as _;
use std::net::SocketAddr;

use monoio::net::TcpStream;

use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::data_path::response::{forward_response, Answer};
use crate::data_path::{reply, upstream};
use crate::http;
use crate::runtime::core::Core;
use crate::tls::Conn;

/// Passes the complete request in `c.req` to the bridge at `front` and forwards its answer.
pub(crate) async fn forward(core: &Core, c: &mut ClientConn, front: SocketAddr) -> Next {
    let unreachable = Refusal::new(502, -32603, "legacy transport bridge unreachable");
    let Ok(mut up) = TcpStream::connect_addr(front).await.map(Conn::Plain) else {
        return reply::refuse(c, &unreachable).await;
    };
    c.out.clear();
    c.out.extend_from_slice(c.req.method_bytes());
    c.out.push(b' ');
    c.out.extend_from_slice(c.req.target());
    let _ = write!(c.out, " HTTP/1.1\r\nhost: {front}\r\n");
    for (name, value) in c.req.headers() {
        if http::is_hop_by_hop(name) && !name.eq_ignore_ascii_case(b"mcp-session-id") {
            continue;
        }
        c.out.extend_from_slice(name);
        c.out.extend_from_slice(b": ");
        c.out.extend_from_slice(value);
        c.out.extend_from_slice(b"\r\n");
    }
    let body = c.req.body();
    let _ = write!(c.out, "content-length: {}\r\n\r\n", body.len());
    c.out.extend_from_slice(body);
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
    };
    let keep = !c.req.head.close;
    forward_response(core, c, answer, keep).await.0
}
