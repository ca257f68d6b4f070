//! OAuth protected-resource metadata (RFC 9728) for MCP clients' OAuth discovery:
//! `GET /.well-known/oauth-protected-resource{path}` answered from a group's configured
//! document, or relayed from one of its backends (`resource_metadata_passthrough`).

use std::io;

use crate::auth::MetadataAnswer;
use crate::balance;
use crate::data_path::reply;
use crate::data_path::request::{ClientConn, Next, Refusal};
use crate::http::{self, ChunkedDecoder};
use crate::runtime::core::Core;

const CACHING: &str = "cache-control: public, max-age=300\r\naccess-control-allow-origin: *\r\n";

/// Answers a metadata request (`None`: no group has a document for this path).
pub(crate) async fn answer(
    core: &Core,
    c: &mut ClientConn,
    doc: Option<MetadataAnswer<'_>>,
) -> Next {
    match doc {
        Some(MetadataAnswer::Document(m)) => {
            reply::document(c, 200, m.document.as_bytes(), CACHING).await
        }
        Some(MetadataAnswer::Passthrough(gi)) => relay(core, c, gi).await,
        None => reply::refuse(c, &Refusal::invalid(404, "no protected resource here")).await,
    }
}

/// Relays a backend's document: a GET of `/.well-known/oauth-protected-resource{backend
/// path}` to the group's first eligible backend (on a connection then closed), its status and
/// body (at most 64 KiB) passed back as JSON.
async fn relay(core: &Core, c: &mut ClientConn, gi: usize) -> Next {
    const MAX: usize = 64 * 1024;
    let (Some(group), Some(rt)) = (
        core.shared.config.servers.get(gi),
        core.shared.groups.get(gi),
    ) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let now = balance::now_ns();
    let bi = (0..group.backends.len())
        .find(|&i| rt.health.is_eligible(i, now))
        .unwrap_or(0);
    let Some(backend) = group.backends.get(bi) else {
        return reply::refuse(c, &Refusal::new(503, -32603, "no backend available")).await;
    };
    let bpath = backend.path.split('?').next().unwrap_or("");
    let req = format!(
        "GET /.well-known/oauth-protected-resource{} HTTP/1.1\r\nhost: {}\r\naccept: application/json\r\nconnection: close\r\n\r\n",
        bpath.trim_end_matches('/'),
        backend.authority
    );
    let timeout = core.shared.config.proxy.upstream_timeout;
    let fetched = monoio::time::timeout(timeout, async {
        // A connection like any request's (TLS to an https backend), closed after the answer.
        let (mut s, _) = core
            .upstream(gi, bi, true)
            .await
            .map_err(|e| io::Error::other(e.status().1))?;
        let req = req.into_bytes();
        let len = req.len();
        let (w, _) = s.write_range(req, 0..len).await;
        w?;
        let mut buf = core.take_buf();
        loop {
            let (r, b) = s.read_more(buf, super::READ_SIZE).await;
            buf = b;
            match r {
                Ok(0) => return Ok(buf),
                Ok(_) if buf.len() <= MAX => {}
                Ok(_) => return Err(io::Error::other("metadata document too large")),
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    let Ok(Ok(raw)) = fetched else {
        let what = "protected-resource metadata: backend unreachable or too slow";
        if crate::control::logs::first_in_window(what, &backend.name, "") {
            tracing::warn!(backend = %backend.name, "{what}");
        }
        return reply::refuse(c, &Refusal::new(502, -32603, "backend unreachable")).await;
    };
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(&raw) else {
        core.give_buf(raw);
        return reply::refuse(c, &Refusal::new(502, -32603, "bad answer from backend")).await;
    };
    let status = resp.code.unwrap_or(502);
    let chunked = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("transfer-encoding") && http::has_token(h.value, b"chunked")
    });
    let rest = raw.get(n..).unwrap_or_default();
    let mut body = Vec::new();
    if chunked {
        let mut dec = ChunkedDecoder::new();
        let _ = dec.feed(rest, |d| body.extend_from_slice(d));
    } else {
        body.extend_from_slice(rest);
    }
    core.give_buf(raw);
    reply::document(c, status, &body, CACHING).await
}
