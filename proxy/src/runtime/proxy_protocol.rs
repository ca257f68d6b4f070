//! The PROXY protocol (v1 text and v2 binary, HAProxy's spec) from a trusted L4 balancer:
//! with `proxy.proxy_protocol = true`, a connection from a peer in `proxy.trusted_proxies`
//! must open with a PROXY header, and its source address becomes the connection's peer (for
//! limits, hashing, forwarding headers and the access log). Connections from other peers are
//! served as they are: nobody else may claim an address.
//!
//! Parsing is `ppp`'s, behind [`parse`], a plain function over the bytes read so far (tested
//! like the other parsers: whole or cut anywhere, any bytes); reading is bounded in size
//! ([`MAX_HEADER`]) and time (`header_timeout`). Bytes after the header (the request, or a TLS
//! ClientHello) are kept for what follows.

use std::net::SocketAddr;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncReadRent;
use monoio::net::TcpStream;
use ppp::{v1, v2, PartialResult};

use crate::control::stats::Counter;
use crate::runtime::core::Core;
use crate::runtime::ClientSlot;

/// Largest PROXY header accepted (v1 is at most 107 bytes; a v2 header with the TLVs that
/// cloud balancers add stays well under this).
pub const MAX_HEADER: usize = 4096;

/// What the bytes at the start of a connection are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A prefix of a PROXY header: read more.
    Incomplete,
    /// A complete header of `len` bytes. `source`: the client's address, or `None` when the
    /// header gives none (v1 `UNKNOWN`, v2 `LOCAL` such as a balancer's health check, or a
    /// family other than TCP over IPv4/IPv6): the connection is the balancer's own.
    Done {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or one mcplb refuses: the connection is closed.
    Invalid(&'static str),
}

/// The start of a PROXY v2 header (its length follows at bytes 14 and 15).
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// The start of a PROXY v1 header.
const V1_SIGNATURE: &[u8] = b"PROXY ";

/// Longest PROXY v1 header, through its CRLF.
const V1_MAX: usize = 107;

/// Reads a PROXY header (v1 or v2) at the start of `buf`.
pub fn parse(buf: &[u8]) -> ProxyHeader {
    if buf.starts_with(V2_SIGNATURE) || V2_SIGNATURE.starts_with(buf) {
        if let (Some(&hi), Some(&lo)) = (buf.get(14), buf.get(15)) {
            if 16 + usize::from(u16::from_be_bytes([hi, lo])) > MAX_HEADER {
                return ProxyHeader::Invalid("PROXY v2 header too long");
            }
        }
        let parsed = v2::Header::try_from(buf.get(..MAX_HEADER).unwrap_or(buf));
        return match parsed {
            Ok(h) => ProxyHeader::Done {
                len: h.len(),
                source: match (h.command, h.addresses) {
                    (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                        Some(SocketAddr::from((a.source_address, a.source_port)))
                    }
                    _ => None,
                },
            },
            Err(e) if e.is_incomplete() => ProxyHeader::Incomplete,
            Err(_) => ProxyHeader::Invalid("bad PROXY v2 header"),
        };
    }
    if !(buf.starts_with(V1_SIGNATURE) || V1_SIGNATURE.starts_with(buf)) {
        return ProxyHeader::Invalid("not a PROXY header");
    }
    // A v1 line is judged whole, once its CRLF is in: ppp would take a line cut after a
    // space for a bad one.
    let line = buf.get(..V1_MAX).unwrap_or(buf);
    let Some(end) = memchr::memmem::find(line, b"\r\n") else {
        return if buf.len() >= V1_MAX {
            ProxyHeader::Invalid("PROXY v1 header too long")
        } else {
            ProxyHeader::Incomplete
        };
    };
    match v1::Header::try_from(line.get(..end + 2).unwrap_or(line)) {
        Ok(h) => ProxyHeader::Done {
            len: end + 2,
            source: match h.addresses {
                v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
                v1::Addresses::Unknown => None,
            },
        },
        Err(_) => ProxyHeader::Invalid("bad PROXY v1 header"),
    }
}

/// Reads the PROXY header at the start of `stream` into `buf` (which may hold its first
/// bytes), before `timeout`: the source it names and the bytes that followed it.
async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
    mut buf: Vec<u8>,
) -> Result<(Option<SocketAddr>, Vec<u8>), (&'static str, Vec<u8>)> {
    let deadline = monoio::time::Instant::now() + timeout;
    loop {
        match parse(&buf) {
            ProxyHeader::Done { len, source } => {
                buf.drain(..len.min(buf.len()));
                return Ok((source, buf));
            }
            ProxyHeader::Invalid(why) => return Err((why, buf)),
            ProxyHeader::Incomplete => {}
        }
        if buf.capacity() - buf.len() < 512 {
            buf.reserve(MAX_HEADER);
        }
        let len = buf.len();
        let read = monoio::time::timeout_at(deadline, stream.read(buf.slice_mut(len..)));
        let Ok((r, slice)) = read.await else {
            return Err(("no PROXY header within header_timeout", Vec::new()));
        };
        buf = slice.into_inner();
        if !matches!(r, Ok(n) if n > 0) {
            return Err(("closed before its PROXY header", buf));
        }
    }
}

/// Whether a new connection from `peer` must open with a PROXY header: `proxy.proxy_protocol`
/// is on and the peer is a trusted balancer.
pub(crate) fn expected(core: &Core, peer: SocketAddr) -> bool {
    let ca = &core.shared.config.proxy.client_address;
    ca.proxy_protocol && ca.trusted.contains(peer.ip())
}

/// For a new connection that [`expected`] a PROXY header: reads it; the peer becomes the
/// source it names, held to `max_connections_per_ip` (unless it is trusted itself). Returns
/// the connection's peer and the bytes already read past the header; `None` when the
/// connection must close (no valid header, or the source is over its connection limit;
/// counted).
pub(crate) async fn accept(
    core: &Core,
    stream: &mut TcpStream,
    peer: SocketAddr,
    slot: &mut ClientSlot,
) -> Option<(SocketAddr, Vec<u8>)> {
    let cfg = &core.shared.config.proxy;
    match read_header(stream, cfg.header_timeout, core.take_buf()).await {
        Ok((source, rest)) => {
            let source = source.unwrap_or(peer);
            match crate::runtime::per_ip_slot(core, source.ip()) {
                Ok(Some(permit)) => slot.set_permit(permit),
                Ok(None) => {}
                Err(_) => {
                    core.give_buf(rest);
                    return None;
                }
            }
            Some((source, rest))
        }
        Err((why, buf)) => {
            tracing::debug!(%peer, error = why, "PROXY protocol header refused");
            core.rec.borrow_mut().count(Counter::ProxyProtocolErrors, 1);
            core.give_buf(buf);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_headers_name_their_source() {
        let v1 = b"PROXY TCP4 192.0.2.7 10.0.0.1 4711 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(v1),
            ProxyHeader::Done {
                len: 40,
                source: Some(SocketAddr::from(([192, 0, 2, 7], 4711)))
            }
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            ProxyHeader::Done {
                len: 15,
                source: None
            }
        );
        for cut in 0..40 {
            assert_eq!(parse(&v1[..cut]), ProxyHeader::Incomplete, "cut {cut}");
        }
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 10, 0, 0, 1, 0x12, 0x67, 1, 187,
        ]);
        v2.extend(b"rest");
        assert_eq!(
            parse(&v2),
            ProxyHeader::Done {
                len: 28,
                source: Some(SocketAddr::from(([192, 0, 2, 7], 4711)))
            }
        );
        // LOCAL (a balancer's own health check): no source.
        let mut local = V2_SIGNATURE.to_vec();
        local.extend([0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            ProxyHeader::Done {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            // LF alone does not end a line: the request after it makes the line bad.
            b"PROXY TCP4 192.0.2.7 10.0.0.1 4711 443\nGET / HTTP/1.1\r\n",
            b"PROXY TCP4 999.0.2.7 10.0.0.1 4711 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 04711 443\r\n",
            b"PROXY TCP5 192.0.2.7 10.0.0.1 4711 443\r\n",
            b"\x16\x03\x01\x02\x00",
        ] {
            assert!(
                matches!(parse(bad), ProxyHeader::Invalid(_)),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        // A v1 line that never ends.
        assert!(matches!(
            parse(&[b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat()),
            ProxyHeader::Invalid(_)
        ));
        // A v2 header longer than MAX_HEADER is refused from its length alone.
        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend([0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(parse(&v2), ProxyHeader::Invalid(_)));
    }
}
