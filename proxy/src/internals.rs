//! Private pieces for the tools around mcplb, not an API: the invariants of the data path's
//! HTTP/1.1 handling (request heads, upstream response heads, the chunked decoder, PROXY
//! headers), checked by the fuzz targets in `proxy/fuzz` and by the property tests in
//! `proxy/tests/http_props.rs` so that both check the same things (each `check_*` function
//! panics when an invariant breaks), and what the criterion benches (`bench/benches`) measure.

use std::ops::Range;

pub use crate::data_path::views::{
    parse_request_head, parse_request_head_searched, rewrite_response_head, HeadRefusal,
    RequestHead, ResponseFraming, ResponseHead,
};

use crate::http::{self, ChunkedDecoder};
use crate::session::{SessionSealer, SCRATCH};

/// Measured by the benches: a routed member's request id, and an event relayed as its.
pub use crate::virtual_server::naming::wrap_id;
pub use crate::virtual_server::relay_event;

/// What decoding a chunked body gave.
#[derive(Debug, PartialEq, Eq)]
struct Decoded {
    /// Chunk data handed out (up to the error, if any).
    body: Vec<u8>,
    /// Bytes that belonged to the body; `None` after an error.
    used: Option<usize>,
    done: bool,
    error: Option<&'static str>,
}

fn decode<'a>(pieces: impl IntoIterator<Item = &'a [u8]>) -> Decoded {
    let mut d = ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut used = 0;
    for piece in pieces {
        match d.feed(piece, |b| body.extend_from_slice(b)) {
            Ok(n) => {
                assert!(
                    n <= piece.len(),
                    "feed consumed {n} of {} bytes",
                    piece.len()
                );
                assert!(
                    n == piece.len() || d.is_done(),
                    "feed stopped at {n} of {} bytes without reaching the end",
                    piece.len()
                );
                used += n;
            }
            Err(e) => {
                return Decoded {
                    body,
                    used: None,
                    done: false,
                    error: Some(e.0),
                }
            }
        }
    }
    Decoded {
        body,
        used: Some(used),
        done: d.is_done(),
        error: None,
    }
}

/// The chunked decoder fed `input` whole and cut at `cuts` (taken modulo the length) gives the
/// same data, the same end and the same verdict; the body is never longer than the input;
/// the bytes it says belonged to a finished body decode alone the same way.
pub fn check_chunked(input: &[u8], cuts: &[usize]) {
    let whole = decode([input]);
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    points.sort_unstable();
    let mut pieces = Vec::with_capacity(points.len() + 1);
    let mut at = 0;
    for p in points {
        pieces.push(&input[at..p]);
        at = p;
    }
    pieces.push(&input[at..]);
    assert_eq!(decode(pieces), whole, "split at {cuts:?}");
    assert!(whole.body.len() <= input.len());
    match whole.used {
        Some(used) if whole.done => {
            assert!(used <= input.len());
            assert_eq!(decode([&input[..used]]), whole, "the body's own bytes");
        }
        Some(used) => assert_eq!(used, input.len(), "an unfinished body takes every byte"),
        None => {}
    }
}

/// Encodes `body` as chunks of the given sizes (cycled; 0 is read as 1), with a chunk
/// extension on the first chunk and a trailer when asked, followed by unrelated bytes.
/// Returns the encoding and the length of the chunked message in it.
pub fn encode_chunked(
    body: &[u8],
    sizes: &[usize],
    extension: bool,
    trailer: bool,
) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(body.len() + 64);
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let size = sizes
            .get(i % sizes.len().max(1))
            .copied()
            .unwrap_or(1)
            .clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        out.extend_from_slice(format!("{size:x}").as_bytes());
        if extension && i == 0 {
            out.extend_from_slice(b";name=\"value\"");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
        rest = tail;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    if trailer {
        out.extend_from_slice(b"X-Trailer: yes\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let len = out.len();
    out.extend_from_slice(b"POST /next HTTP/1.1\r\n");
    (out, len)
}

/// A body encoded by [`encode_chunked`] decodes to itself, ends where the encoding ends, and
/// does so however it is cut.
pub fn check_chunked_round_trip(
    body: &[u8],
    sizes: &[usize],
    extension: bool,
    trailer: bool,
    cuts: &[usize],
) {
    let (wire, len) = encode_chunked(body, sizes, extension, trailer);
    let d = decode([wire.as_slice()]);
    assert_eq!(d.error, None);
    assert!(d.done);
    assert_eq!(d.body, body);
    assert_eq!(d.used, Some(len));
    check_chunked(&wire, cuts);
}

fn within(r: &Range<usize>, len: usize) -> bool {
    r.start <= r.end && r.end <= len
}

/// The request-head parse: bytes after the head change nothing; every range it returns lies
/// inside the head; the path holds no `?` and the query starts with one; never both
/// Content-Length and chunked; Content-Length agrees with every such header; the session id
/// and `Mcp-Method`/`Mcp-Name` are those headers' values; no more than `max_headers` headers;
/// a body is de-chunked only for a lone `chunked` (501 only for a well-formed list ending in
/// one); a `Connection` header naming fields is noted.
pub fn check_request_head(buf: &[u8], max_headers: usize) {
    assert_eq!(
        parse_request_head(buf, max_headers),
        parse_request_head_searched(buf, max_headers),
        "the whole-buffer parse and the search-then-parse disagree"
    );
    let Some(verdict) = parse_request_head(buf, max_headers) else {
        assert!(http::head_len(buf).is_none());
        return;
    };
    let Some(len) = http::head_len(buf) else {
        panic!("a verdict without a head");
    };
    assert_eq!(
        parse_request_head(&buf[..len], max_headers),
        Some(verdict.clone()),
        "the bytes after the head changed the verdict"
    );
    let h = match verdict {
        Ok(h) => h,
        Err(HeadRefusal::TooManyHeaders) => {
            assert!(max_headers < 512, "431 although every header fits");
            return;
        }
        Err(HeadRefusal::Bad(why)) => {
            assert!(!why.is_empty());
            return;
        }
        Err(HeadRefusal::NotImplemented(why)) => {
            // 501 only for a well-formed list of codings that ends in a lone `chunked`.
            assert!(!why.is_empty());
            let codings = transfer_codings(&buf[..len]);
            assert!(codings.len() > 1, "501 for {codings:?}");
            // Each a token, perhaps with parameters (`gzip;level=1`).
            let mut names = codings
                .iter()
                .map(|c| http::trim_ows(c.split(|b| *b == b';').next().unwrap_or_default()));
            assert!(names.all(http::is_token), "{codings:?}");
            let chunked: Vec<_> = codings
                .iter()
                .filter(|c| c.eq_ignore_ascii_case(b"chunked"))
                .collect();
            assert_eq!(chunked.len(), 1, "{codings:?}");
            assert!(codings
                .last()
                .is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
            return;
        }
    };
    assert_eq!(h.len, len);
    let mut ranges = vec![h.method.clone(), h.path.clone(), h.query.clone()];
    ranges.extend(h.session.iter().cloned());
    ranges.extend(h.mcp_method.iter().cloned());
    ranges.extend(h.mcp_name.iter().cloned());
    for (n, v) in &h.headers {
        ranges.push(n.clone());
        ranges.push(v.clone());
    }
    for r in &ranges {
        assert!(
            within(r, len),
            "range {r:?} outside the head of {len} bytes"
        );
    }
    let bytes = |r: &Range<usize>| &buf[r.clone()];
    assert!(!bytes(&h.method).is_empty());
    assert!(h.query.end > h.path.start, "empty request target");
    assert_eq!(h.path.end, h.query.start);
    assert!(!bytes(&h.path).contains(&b'?'));
    assert!(h.query.is_empty() || bytes(&h.query).first() == Some(&b'?'));
    assert!(!(h.chunked && h.content_length.is_some()));
    assert!(h.headers.len() <= max_headers);
    let (mut session, mut mcp_method, mut mcp_name) = (None, None, None);
    for (n, v) in &h.headers {
        let (name, value) = (bytes(n), bytes(v));
        assert!(!name.is_empty());
        assert!(!name.iter().chain(value).any(|b| *b == b'\r' || *b == b'\n'));
        if name.eq_ignore_ascii_case(b"content-length") {
            assert_eq!(http::parse_content_length(value), h.content_length);
        } else if name.eq_ignore_ascii_case(b"connection") {
            // Any option other than `close` or a hop-by-hop name marks fields to drop.
            let names = value.split(|b| *b == b',').map(http::trim_ows).any(|t| {
                !t.is_empty() && !t.eq_ignore_ascii_case(b"close") && !http::is_hop_by_hop(t)
            });
            assert!(
                !names || h.conn_fields,
                "Connection: {:?}",
                String::from_utf8_lossy(value)
            );
        } else if name.eq_ignore_ascii_case(b"mcp-session-id") {
            session = Some(value);
        } else if name.eq_ignore_ascii_case(b"mcp-method") {
            mcp_method = Some(value);
        } else if name.eq_ignore_ascii_case(b"mcp-name") {
            mcp_name = Some(value);
        }
    }
    // A body is de-chunked only for a lone `chunked` across every Transfer-Encoding line:
    // never a coding dropped silently.
    let codings = transfer_codings(&buf[..len]);
    if h.chunked {
        assert_eq!(codings.len(), 1, "{codings:?}");
        assert!(codings[0].eq_ignore_ascii_case(b"chunked"));
    } else {
        assert!(
            codings.is_empty(),
            "codings {codings:?} accepted without chunked"
        );
    }
    assert_eq!(h.session.as_ref().map(bytes), session);
    assert_eq!(h.mcp_method.as_ref().map(bytes), mcp_method);
    assert_eq!(h.mcp_name.as_ref().map(bytes), mcp_name);
}

/// Every transfer coding the `Transfer-Encoding` lines of `head` list, OWS-trimmed, in order
/// (an independent reading: httparse's headers split at commas).
fn transfer_codings(head: &[u8]) -> Vec<&[u8]> {
    let mut storage = [httparse::EMPTY_HEADER; 512];
    let mut req = httparse::Request::new(&mut storage);
    if !matches!(req.parse(head), Ok(httparse::Status::Complete(_))) {
        return Vec::new();
    }
    req.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(http::trim_ows)
        .collect()
}

/// The response-head rewrite of the head at the start of `buf`: what it writes for the
/// client, completed with a blank line, is a well-formed HTTP/1.1 head with the same status;
/// it carries no hop-by-hop or framing header, nor one the backend's `Connection` names; each
/// `Mcp-Session-Id` opens (with the same key) to the backend's own id and the owner it was
/// sealed with, or is the client's current id when the backend repeats it; an SSE answer says
/// `x-accel-buffering`.
pub fn check_response_head(buf: &[u8], backend_tag: u32) {
    let Some(len) = http::head_len(buf) else {
        return;
    };
    let head = &buf[..len];
    let mut storage = [httparse::EMPTY_HEADER; 128];
    let mut upstream = httparse::Response::new(&mut storage);
    let upstream_ok = matches!(upstream.parse(head), Ok(httparse::Status::Complete(_)));
    let backend_sids: Vec<&[u8]> = upstream
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("mcp-session-id"))
        .map(|h| h.value.trim_ascii())
        .collect();
    let sealer = SessionSealer::new(&[7; 32]);
    let caller = sealer.owner(&[b"api-key", &[1; 32]]);
    // Once as a new session (unowned, and owned), once with the client holding a session
    // whose backend id is the first one the backend sends.
    let current_sid = backend_sids.first().copied();
    for (current, owner) in [
        (None, None),
        (None, Some(&caller)),
        (current_sid.map(|sid| (&b"CLIENT-HELD-ID"[..], sid)), None),
    ] {
        let mut out = Vec::new();
        let rewritten = rewrite_response_head(&sealer, owner, head, backend_tag, current, &mut out);
        let Ok(ResponseHead::Final { status, is_sse, .. }) = rewritten else {
            continue;
        };
        assert!(upstream_ok, "a head httparse refuses was rewritten");
        out.extend_from_slice(b"\r\n");
        let mut storage = [httparse::EMPTY_HEADER; 256];
        let mut client = httparse::Response::new(&mut storage);
        let parsed = client.parse(&out);
        assert!(
            matches!(parsed, Ok(httparse::Status::Complete(n)) if n == out.len()),
            "rewritten head does not parse ({parsed:?}): {:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(client.code, Some(status));
        assert_eq!(client.version, Some(1));
        let mut sids = backend_sids.iter();
        let mut accel = false;
        let named: Vec<&[u8]> = upstream
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .flat_map(|h| h.value.split(|b| *b == b','))
            .map(|t| t.trim_ascii())
            // `close` is an option, not a field name; mcplb's own x-accel-buffering on SSE.
            .filter(|t| {
                let ours = is_sse && t.eq_ignore_ascii_case(b"x-accel-buffering");
                !(ours || t.eq_ignore_ascii_case(b"close"))
            })
            .collect();
        for h in client.headers.iter() {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"mcp-session-id") {
                let Some(backend_sid) = sids.next() else {
                    panic!("more session ids than the backend sent");
                };
                match current {
                    Some((held, sid)) if sid == *backend_sid => assert_eq!(h.value, held),
                    _ => {
                        let mut scratch = [0u8; SCRATCH];
                        let opened = sealer.open(h.value, &mut scratch);
                        let opened = opened.map(|o| (o.tag, o.owner, o.sid));
                        assert_eq!(opened, Some((backend_tag, owner.copied(), *backend_sid)));
                    }
                }
                continue;
            }
            assert!(
                !http::is_hop_by_hop(name),
                "hop-by-hop header {:?} forwarded",
                h.name
            );
            assert!(
                !named.iter().any(|n| n.eq_ignore_ascii_case(name)),
                "{:?}, named in the backend's Connection, forwarded",
                h.name
            );
            accel |= name.eq_ignore_ascii_case(b"x-accel-buffering");
        }
        assert!(sids.next().is_none(), "a session id was lost");
        assert!(!is_sse || accel, "SSE answer without x-accel-buffering");
    }
}

pub use crate::config::{ForwardedHeader, TrustedProxies};
pub use crate::data_path::client_address::client_ip;
pub use crate::runtime::proxy_protocol::{parse as parse_proxy_header, ProxyHeader, MAX_HEADER};

/// The PROXY protocol parse of the bytes at the start of `buf`: a complete header is at most
/// `MAX_HEADER` bytes long and inside `buf`; it is found the same in its own bytes and with
/// anything after it, and every shorter prefix of it is incomplete; an incomplete verdict holds
/// for every prefix and never past `MAX_HEADER` bytes; a refusal stays a refusal whatever
/// follows (`more`).
pub fn check_proxy_header(buf: &[u8], more: &[u8]) {
    let verdict = parse_proxy_header(buf);
    let extended = [buf, more].concat();
    match verdict {
        ProxyHeader::Done { len, .. } => {
            assert!(len > 0 && len <= buf.len() && len <= MAX_HEADER, "{len}");
            assert_eq!(parse_proxy_header(&buf[..len]), verdict, "its own bytes");
            assert_eq!(parse_proxy_header(&extended), verdict, "bytes after it");
            for k in 0..len {
                assert_eq!(
                    parse_proxy_header(&buf[..k]),
                    ProxyHeader::Incomplete,
                    "prefix of {k} bytes"
                );
            }
        }
        ProxyHeader::Incomplete => {
            assert!(buf.len() < MAX_HEADER);
            for k in 0..buf.len() {
                assert_eq!(
                    parse_proxy_header(&buf[..k]),
                    ProxyHeader::Incomplete,
                    "{k}"
                );
            }
        }
        ProxyHeader::Invalid(why) => {
            assert!(!why.is_empty());
            assert!(
                matches!(parse_proxy_header(&extended), ProxyHeader::Invalid(_)),
                "a refusal undone by more bytes"
            );
        }
    }
}

/// A PROXY header written for `source` (v1 text, or v2 binary with `tlvs` bytes of TLVs, or
/// v2 LOCAL), followed by `tail`, parses to that source and the header's length.
pub fn check_proxy_header_round_trip(
    source: std::net::SocketAddr,
    dest: std::net::SocketAddr,
    kind: u8,
    tlvs: &[u8],
    tail: &[u8],
) {
    use std::net::SocketAddr;
    // Both addresses of one family, as a balancer writes them.
    let dest = match (source, dest) {
        (SocketAddr::V4(_), SocketAddr::V6(d)) => SocketAddr::from(([10, 0, 0, 1], d.port())),
        (SocketAddr::V6(_), SocketAddr::V4(d)) => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, d.port()))
        }
        _ => dest,
    };
    let (mut wire, want) = match kind % 3 {
        0 => {
            let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
            let line = format!(
                "PROXY {family} {} {} {} {}\r\n",
                source.ip(),
                dest.ip(),
                source.port(),
                dest.port()
            );
            (line.into_bytes(), Some(source))
        }
        k => {
            let local = k == 2;
            let mut w = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
            w.push(if local { 0x20 } else { 0x21 });
            let mut addrs = Vec::new();
            match (source, dest) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    w.push(0x11);
                    addrs.extend(s.ip().octets());
                    addrs.extend(d.ip().octets());
                }
                (SocketAddr::V6(s), SocketAddr::V6(d)) => {
                    w.push(0x21);
                    addrs.extend(s.ip().octets());
                    addrs.extend(d.ip().octets());
                }
                _ => unreachable!("one family"),
            }
            addrs.extend(source.port().to_be_bytes());
            addrs.extend(dest.port().to_be_bytes());
            // TLVs as type, length, value, cut to what fits.
            let room = MAX_HEADER - 16 - addrs.len();
            let tlv = &tlvs[..tlvs
                .len()
                .min(room.saturating_sub(3))
                .min(u16::MAX as usize)];
            if !tlv.is_empty() {
                addrs.push(0x04); // PP2_TYPE_NOOP
                addrs.extend((tlv.len() as u16).to_be_bytes());
                addrs.extend(tlv);
            }
            w.extend((addrs.len() as u16).to_be_bytes());
            w.extend(addrs);
            (w, (!local).then_some(source))
        }
    };
    let len = wire.len();
    wire.extend_from_slice(tail);
    assert_eq!(
        parse_proxy_header(&wire),
        ProxyHeader::Done { len, source: want },
        "{:?}",
        String::from_utf8_lossy(&wire)
    );
    check_proxy_header(&wire, tail);
}

/// The client address a trusted proxy's `X-Forwarded-For` list gives is what a walk from the
/// right finds: past trusted hops to the first untrusted address (all trusted: the left-most;
/// an entry that is not an address: the trusted hop right of it); the peer's own when it is
/// not trusted. Entries are (address or garbage, trusted?) pairs from a pool.
pub fn check_client_ip(
    peer: std::net::IpAddr,
    entries: &[Option<std::net::IpAddr>],
    lines: usize,
    trusted: &TrustedProxies,
) {
    // The oracle: right to left.
    let expected = if !trusted.contains(peer) {
        peer
    } else {
        let mut last = peer;
        let mut found = None;
        for e in entries.iter().rev() {
            match e {
                Some(ip) => {
                    last = *ip;
                    if !trusted.contains(*ip) {
                        found = Some(*ip);
                        break;
                    }
                }
                None => break,
            }
        }
        found.unwrap_or(last)
    };
    // The same list written over `lines` header lines, with ports on some entries.
    let texts: Vec<String> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| match e {
            Some(std::net::IpAddr::V4(a)) if i % 2 == 1 => format!("{a}:{}", 1000 + i),
            Some(std::net::IpAddr::V6(a)) if i % 2 == 1 => format!("[{a}]:{}", 1000 + i),
            Some(a) => a.to_string(),
            None => "unknown".to_string(),
        })
        .collect();
    let per = texts.len().div_ceil(lines.max(1)).max(1);
    let values: Vec<String> = texts.chunks(per).map(|c| c.join(" , ")).collect();
    let headers: Vec<(&[u8], &[u8])> = values
        .iter()
        .map(|v| (&b"X-Forwarded-For"[..], v.as_bytes()))
        .collect();
    let got = client_ip(
        trusted,
        ForwardedHeader::XForwardedFor,
        peer,
        headers.into_iter(),
    );
    assert_eq!(got, expected, "peer {peer}, list {values:?}");
}
