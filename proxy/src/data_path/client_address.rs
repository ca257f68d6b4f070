//! Who the client is, and what backends are told about it (`proxy.forwarded`,
//! `forwarded_header`, `trusted_proxies`). Plain functions over the request's headers, no
//! allocation: the forwarding headers are merged while the upstream request is written.
//!
//! The client's address is the peer's (the TCP peer, or the source a trusted balancer gave in
//! a PROXY protocol header), unless the peer is a trusted proxy: then it is the right-most
//! address of the forwarding header that is not a trusted proxy (the nearest hop nobody
//! trusted vouches for), as nginx's `real_ip_recursive` and Envoy's trusted hops read it.
//! Entries a client wrote itself sit left of it and are never believed.

use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};

use crate::config::{ClientAddress, ForwardedHeader, ForwardedMode, TrustedProxies};
use crate::data_path::request::Request;
use crate::http::trim_ows;

/// The hop a request arrived on, as the forwarding headers describe it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    /// The peer: the TCP peer, or the source of a trusted PROXY protocol header.
    pub peer: IpText,
    /// The client's address as mcplb believes it ([`client_ip`]).
    pub client: IpText,
    /// The peer is a trusted proxy (its forwarding headers are believed).
    pub peer_trusted: bool,
    /// The client spoke TLS to mcplb.
    pub tls: bool,
}

/// An address with its text as the forwarding headers write it, formatted once (per connection,
/// and again only when a trusted proxy names another client), not on every request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IpText {
    ip: IpAddr,
    len: u8,
    /// Long enough for any IPv6 address (`ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255`).
    text: [u8; 45],
}

impl IpText {
    /// `ip` and its text.
    pub fn new(ip: IpAddr) -> Self {
        let mut text = [0u8; 45];
        let mut cur = std::io::Cursor::new(&mut text[..]);
        let _ = match ip {
            // Dotted decimal without the formatting machinery (a quarter of its cost).
            IpAddr::V4(a) => {
                let mut num = itoa::Buffer::new();
                a.octets().iter().enumerate().try_for_each(|(i, o)| {
                    if i > 0 {
                        cur.write_all(b".")?;
                    }
                    cur.write_all(num.format(*o).as_bytes())
                })
            }
            IpAddr::V6(a) => write!(cur, "{a}"),
        };
        let len = u8::try_from(cur.position()).unwrap_or(0);
        IpText { ip, len, text }
    }

    /// The address.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// Its text (`192.0.2.7`, `2001:db8::1`).
    pub fn as_bytes(&self) -> &[u8] {
        self.text.get(..usize::from(self.len)).unwrap_or_default()
    }

    /// `self` when it already is `ip`'s text (the common case, kept without formatting),
    /// else `ip`'s.
    pub fn of(self, ip: IpAddr) -> Self {
        if self.ip == ip {
            self
        } else {
            IpText::new(ip)
        }
    }
}

/// The client's address for a request from `peer` whose headers are `headers`: `peer`, or,
/// when `peer` is trusted, the right-most address in the `header` list that is not trusted.
/// When every address is trusted, the left-most; an entry that is not an address (`unknown`,
/// an obfuscated node, garbage) ends the walk at the trusted address right of it.
pub fn client_ip<'a>(
    trusted: &TrustedProxies,
    header: ForwardedHeader,
    peer: IpAddr,
    headers: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    // One pass left to right, which ends where a walk from the right would stop.
    let mut walk = Walk::default();
    for (name, value) in headers {
        match header {
            ForwardedHeader::XForwardedFor if name.eq_ignore_ascii_case(b"x-forwarded-for") => {
                for entry in value.split(|b| *b == b',') {
                    let entry = trim_ows(entry);
                    if !entry.is_empty() {
                        walk.step(parse_node(entry), trusted);
                    }
                }
            }
            ForwardedHeader::Forwarded if name.eq_ignore_ascii_case(b"forwarded") => {
                for element in split_unquoted(value, b',') {
                    walk.step(forwarded_for(element), trusted);
                }
            }
            _ => {}
        }
    }
    walk.right_most_untrusted.or(walk.left_most).unwrap_or(peer)
}

/// State of the left-to-right walk over a forwarding list, since its last unusable entry.
#[derive(Default)]
struct Walk {
    right_most_untrusted: Option<IpAddr>,
    left_most: Option<IpAddr>,
}

impl Walk {
    fn step(&mut self, node: Option<IpAddr>, trusted: &TrustedProxies) {
        match node {
            Some(ip) => {
                self.left_most.get_or_insert(ip);
                if !trusted.contains(ip) {
                    self.right_most_untrusted = Some(ip);
                }
            }
            None => *self = Walk::default(),
        }
    }
}

/// An address as forwarding headers write it: `192.0.2.7`, `2001:db8::1`, with or without a
/// port (`192.0.2.7:4711`, `[2001:db8::1]:4711`), or brackets alone (`[2001:db8::1]`).
fn parse_node(node: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(node).ok()?;
    let ip = s
        .parse::<IpAddr>()
        .ok()
        .or_else(|| s.parse::<SocketAddr>().ok().map(|a| a.ip()))
        .or_else(|| {
            s.strip_prefix('[')?
                .strip_suffix(']')?
                .parse::<std::net::Ipv6Addr>()
                .ok()
                .map(IpAddr::V6)
        })?;
    Some(ip.to_canonical())
}

/// The `for=` node of one `Forwarded` element (RFC 7239 §4), if it is an address.
fn forwarded_for(element: &[u8]) -> Option<IpAddr> {
    let mut node = None;
    for pair in split_unquoted(element, b';') {
        let pair = trim_ows(pair);
        let Some(eq) = memchr::memchr(b'=', pair) else {
            continue;
        };
        let (key, value) = (pair.get(..eq)?, pair.get(eq + 1..)?);
        if trim_ows(key).eq_ignore_ascii_case(b"for") {
            let value = trim_ows(value);
            let value = match value.strip_prefix(b"\"") {
                Some(quoted) => quoted.strip_suffix(b"\"")?,
                None => value,
            };
            node = parse_node(value);
        }
    }
    node
}

/// Splits `s` at `sep` outside double-quoted strings (a backslash escapes the next byte inside
/// one).
fn split_unquoted(s: &[u8], sep: u8) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(s);
    std::iter::from_fn(move || {
        let s = rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, &b) in s.iter().enumerate() {
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            } else if b == sep && !quoted {
                rest = s.get(i + 1..);
                return s.get(..i);
            }
        }
        rest = None;
        Some(s)
    })
}

/// Whether the request's own header `name` is left out of the upstream request because
/// [`write`] writes it (merged or replaced).
pub(crate) fn is_replaced(cfg: &ClientAddress, name: &[u8]) -> bool {
    let is = |s: &[u8]| name.eq_ignore_ascii_case(s);
    let (xff, forwarded) = match name.len() {
        15 => (is(b"x-forwarded-for"), false),
        17 => (is(b"x-forwarded-proto"), false),
        9 => (false, is(b"forwarded")),
        _ => return false,
    };
    match (cfg.forwarded, cfg.header) {
        (ForwardedMode::Off, _) => false,
        // Replacing: none of the client's forwarding headers reach a backend.
        (ForwardedMode::Replace, _) => xff || forwarded,
        (ForwardedMode::Append, ForwardedHeader::XForwardedFor) => xff,
        (ForwardedMode::Append, ForwardedHeader::Forwarded) => forwarded,
    }
}

/// Writes the forwarding header lines of the upstream request for `req`, which arrived on
/// `hop`: `append` adds the peer to the request's own list, `replace` sends the client's
/// address alone. `X-Forwarded-Proto` is the scheme the client used, or a trusted peer's.
/// Values of the request's forwarding headers that its `Connection` names are left out.
pub(crate) fn write(out: &mut Vec<u8>, cfg: &ClientAddress, hop: &Hop, req: &Request) {
    let ours = match cfg.forwarded {
        ForwardedMode::Off => return,
        ForwardedMode::Append => &hop.peer,
        ForwardedMode::Replace => &hop.client,
    };
    let append = cfg.forwarded == ForwardedMode::Append;
    let scheme: &[u8] = if hop.tls { b"https" } else { b"http" };
    // The request's own values of `name`, each followed by ", " (none when the head has no
    // forwarding header: its headers are not walked then).
    let merge = |out: &mut Vec<u8>, name: &[u8]| {
        if append && req.head.forwarded_for && !req.connection_names(name) {
            for (n, v) in req.headers() {
                let v = trim_ows(v);
                if n.eq_ignore_ascii_case(name) && !v.is_empty() {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
        }
    };
    match cfg.header {
        ForwardedHeader::XForwardedFor => {
            out.extend_from_slice(b"x-forwarded-for: ");
            merge(out, b"x-forwarded-for");
            out.extend_from_slice(ours.as_bytes());
            out.extend_from_slice(b"\r\nx-forwarded-proto: ");
            // A trusted proxy in front knows the scheme its client used.
            let theirs = hop
                .peer_trusted
                .then(|| req.header(b"x-forwarded-proto"))
                .flatten()
                .filter(|v| !v.is_empty() && !req.connection_names(b"x-forwarded-proto"));
            out.extend_from_slice(theirs.unwrap_or(scheme));
            out.extend_from_slice(b"\r\n");
        }
        ForwardedHeader::Forwarded => {
            out.extend_from_slice(b"forwarded: ");
            merge(out, b"forwarded");
            // IPv6 nodes are bracketed and quoted (RFC 7239 §6).
            match ours.ip() {
                IpAddr::V4(_) => {
                    out.extend_from_slice(b"for=");
                    out.extend_from_slice(ours.as_bytes());
                }
                IpAddr::V6(_) => {
                    out.extend_from_slice(b"for=\"[");
                    out.extend_from_slice(ours.as_bytes());
                    out.extend_from_slice(b"]\"");
                }
            }
            out.extend_from_slice(b";proto=");
            out.extend_from_slice(scheme);
            out.extend_from_slice(b"\r\n");
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn xff(t: &TrustedProxies, peer: &str, values: &[&str]) -> IpAddr {
        let headers: Vec<(&[u8], &[u8])> = values
            .iter()
            .map(|v| (&b"X-Forwarded-For"[..], v.as_bytes()))
            .collect();
        client_ip(
            t,
            ForwardedHeader::XForwardedFor,
            ip(peer),
            headers.into_iter(),
        )
    }

    fn fwd(t: &TrustedProxies, peer: &str, values: &[&str]) -> IpAddr {
        let headers: Vec<(&[u8], &[u8])> = values
            .iter()
            .map(|v| (&b"forwarded"[..], v.as_bytes()))
            .collect();
        client_ip(t, ForwardedHeader::Forwarded, ip(peer), headers.into_iter())
    }

    #[test]
    fn addresses_are_written_as_std_writes_them() {
        for a in [
            "0.0.0.0",
            "10.0.255.7",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:255.255.255.255",
        ] {
            let t = IpText::new(ip(a));
            assert_eq!(t.as_bytes(), a.as_bytes());
            assert_eq!(t.ip(), ip(a));
            assert_eq!(t.of(ip(a)).as_bytes(), a.as_bytes());
            assert_eq!(t.of(ip("192.0.2.1")).as_bytes(), b"192.0.2.1");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_address_is_written_as_std_writes_it(v4: u32, v6: u128) {
            for a in [IpAddr::from(v4.to_be_bytes()), IpAddr::from(v6.to_be_bytes())] {
                let (t, want) = (IpText::new(a), a.to_string());
                proptest::prop_assert_eq!(t.as_bytes(), want.as_bytes());
            }
        }
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        let t = trusted(&["10.0.0.0/8", "192.0.2.1/32"]);
        // An untrusted peer's header is never read.
        assert_eq!(xff(&t, "203.0.113.9", &["1.1.1.1"]), ip("203.0.113.9"));
        // A trusted peer: its list, right to left, past trusted hops.
        assert_eq!(
            xff(&t, "10.1.1.1", &["6.6.6.6, 5.5.5.5, 10.2.2.2"]),
            ip("5.5.5.5")
        );
        assert_eq!(
            xff(&t, "10.1.1.1", &["6.6.6.6", "5.5.5.5:4711, 192.0.2.1"]),
            ip("5.5.5.5")
        );
        assert_eq!(
            xff(&t, "10.1.1.1", &["[2001:db8::7]:80"]),
            ip("2001:db8::7")
        );
        // Every hop trusted: the left-most.
        assert_eq!(xff(&t, "10.1.1.1", &["10.3.3.3, 10.2.2.2"]), ip("10.3.3.3"));
        // No header: the peer.
        assert_eq!(xff(&t, "10.1.1.1", &[]), ip("10.1.1.1"));
        // Garbage stops the walk at the trusted hop right of it.
        assert_eq!(
            xff(&t, "10.1.1.1", &["5.5.5.5, unknown, 10.2.2.2"]),
            ip("10.2.2.2")
        );
        assert_eq!(xff(&t, "10.1.1.1", &["nonsense"]), ip("10.1.1.1"));
        // IPv4-mapped peers and entries count as IPv4.
        assert_eq!(
            xff(&t, "::ffff:10.1.1.1", &["::ffff:5.5.5.5"]),
            ip("5.5.5.5")
        );
    }

    #[test]
    fn forwarded_elements_are_read_by_their_for_node() {
        let t = trusted(&["10.0.0.0/8"]);
        assert_eq!(
            fwd(
                &t,
                "10.1.1.1",
                &["for=6.6.6.6, For=\"[2001:db8::1]:80\";proto=https;by=x, for=10.2.2.2"]
            ),
            ip("2001:db8::1")
        );
        // A quoted comma does not split an element.
        assert_eq!(
            fwd(&t, "10.1.1.1", &["for=5.5.5.5;host=\"a,b\""]),
            ip("5.5.5.5")
        );
        assert_eq!(fwd(&t, "10.1.1.1", &["for=_hidden"]), ip("10.1.1.1"));
        assert_eq!(
            fwd(&t, "10.1.1.1", &["for=5.5.5.5", "proto=http"]),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn only_the_configured_forwarding_headers_are_replaced() {
        let mut cfg = ClientAddress {
            forwarded: ForwardedMode::Append,
            header: ForwardedHeader::XForwardedFor,
            trusted: TrustedProxies::default(),
            proxy_protocol: false,
        };
        assert!(is_replaced(&cfg, b"X-Forwarded-For"));
        assert!(is_replaced(&cfg, b"x-forwarded-proto"));
        assert!(!is_replaced(&cfg, b"forwarded"));
        cfg.header = ForwardedHeader::Forwarded;
        assert!(!is_replaced(&cfg, b"x-forwarded-for"));
        assert!(is_replaced(&cfg, b"Forwarded"));
        cfg.forwarded = ForwardedMode::Replace;
        assert!(is_replaced(&cfg, b"x-forwarded-for") && is_replaced(&cfg, b"forwarded"));
        cfg.forwarded = ForwardedMode::Off;
        assert!(!is_replaced(&cfg, b"x-forwarded-for") && !is_replaced(&cfg, b"forwarded"));
        assert!(!is_replaced(&cfg, b"x-forwarded-host"));
    }
}
