//! `[proxy]` and `[proxy.tls]`: the client-facing listener, its limits and timeouts, and TLS
//! termination.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::fields::{decode_key, parse_duration, resolve, TableCheck};
use crate::config::raw::{RawHttp2, RawHttp3, RawProxy, RawTls};
use crate::config::types::{
    ClientAddress, ForwardedHeader, ForwardedMode, ProxyConfig, TrustedProxies, DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS_PER_IP, DEFAULT_MAX_SSE_EVENT,
};

/// Validates `[proxy]` (an absent table is an empty one: `listen` is then reported missing).
pub(super) fn validate(p: RawProxy, errs: &mut Vec<String>) -> ProxyConfig {
    let mut t = TableCheck::new("proxy", errs);
    let listen = match p.listen.as_deref() {
        None => {
            t.problem("listen", "missing (e.g. \"127.0.0.1:8080\")");
            SocketAddr::from(([127, 0, 0, 1], 0))
        }
        Some(s) => resolve(s).unwrap_or_else(|e| {
            t.problem("listen", e);
            SocketAddr::from(([127, 0, 0, 1], 0))
        }),
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = t.int("workers", p.workers, cores, 1..=1024);
    let session_keys = session_keys(&p, &mut t);
    let watch_interval = match p.watch_interval.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if d.is_zero() => None,
        Some(Ok(d)) if d < Duration::from_millis(100) => {
            t.problem("watch_interval", "at least 100ms (or \"0s\": never)");
            None
        }
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            t.problem("watch_interval", e);
            None
        }
    };
    let client_address = client_address(&p, &mut t);
    let http2 = http2(p.http2.unwrap_or_default(), t.errs());
    let has_tls = p.tls.is_some();
    let tls = p.tls.and_then(|raw| tls(raw, http2.enabled, &mut t));
    let http3 = p.http3.and_then(|h| http3(h, has_tls, t.errs()));
    if p.reuse_port == Some(true) && listen.port() == 0 {
        t.problem(
            "reuse_port",
            "needs a fixed port in proxy.listen (port 0 picks a free port, which no other \
             process listens on)",
        );
    }
    let depth = protocol::MAX_DEPTH;
    let secs = Duration::from_secs;
    ProxyConfig {
        tls,
        http2,
        http3,
        listen,
        workers,
        session_keys,
        session_keys_file: p.session_keys_file.as_ref().map(std::path::PathBuf::from),
        watch_interval,
        max_body_bytes: t.int(
            "max_body_bytes",
            p.max_body_bytes,
            DEFAULT_MAX_BODY,
            1..=1 << 30,
        ),
        max_header_bytes: t.int(
            "max_header_bytes",
            p.max_header_bytes,
            16 * 1024,
            512..=1 << 20,
        ),
        max_headers: t.int("max_headers", p.max_headers, 64, 8..=512),
        max_url_bytes: t.int("max_url_bytes", p.max_url_bytes, 8192, 16..=1 << 20),
        max_json_depth: t.int("max_json_depth", p.max_json_depth, depth, 3..=depth),
        max_sse_event_bytes: t.int(
            "max_sse_event_bytes",
            p.max_sse_event_bytes,
            DEFAULT_MAX_SSE_EVENT,
            1024..=1 << 30,
        ),
        header_timeout: t.duration("header_timeout", p.header_timeout.as_deref(), secs(10)),
        body_timeout: t.duration("body_timeout", p.body_timeout.as_deref(), secs(10)),
        client_address,
        client_idle_timeout: t.duration(
            "client_idle_timeout",
            p.client_idle_timeout.as_deref(),
            secs(60),
        ),
        linger_time: t.duration("linger_time", p.linger_time.as_deref(), secs(30)),
        linger_timeout: t.duration("linger_timeout", p.linger_timeout.as_deref(), secs(5)),
        connect_timeout: t.duration("connect_timeout", p.connect_timeout.as_deref(), secs(3)),
        upstream_timeout: t.duration("upstream_timeout", p.upstream_timeout.as_deref(), secs(300)),
        upstream_idle_timeout: t.duration(
            "upstream_idle_timeout",
            p.upstream_idle_timeout.as_deref(),
            secs(4),
        ),
        sse_head_waits: p.sse_head_waits.unwrap_or(true),
        upstream_max_idle: t.int("upstream_max_idle", p.upstream_max_idle, 256, 0..=1 << 20),
        access_log: p
            .access_log
            .filter(|v| v != "off" && !v.is_empty())
            .map(|v| if v == "stderr" { "-".to_string() } else { v }),
        stats: p.stats.unwrap_or(true),
        reuse_port: p.reuse_port.unwrap_or(false),
        max_connections: t.int(
            "max_connections",
            p.max_connections,
            100_000,
            1..=10_000_000,
        ),
        max_connections_per_ip: t.int_u32(
            "max_connections_per_ip",
            p.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP,
            1..=10_000_000,
        ),
        shutdown_timeout: t.duration("shutdown_timeout", p.shutdown_timeout.as_deref(), secs(30)),
        limit_max_keys: t.int("limit_max_keys", p.limit_max_keys, 100_000, 16..=1 << 24),
    }
}

/// Most keys in `proxy.session_keys` (each is tried in turn on an id that does not open).
pub const MAX_SESSION_KEYS: usize = 8;

/// `session_keys` (or the single `session_key`): each decoded, none repeated. Problems name
/// the key by its place, never by its value.
fn session_keys(p: &RawProxy, t: &mut TableCheck<'_>) -> Vec<[u8; 32]> {
    let from_file;
    let (key, list) = match (&p.session_key, &p.session_keys, &p.session_keys_file) {
        (None, None, None) => return Vec::new(),
        (Some(one), None, None) => ("session_key", std::slice::from_ref(one)),
        (None, Some(list), None) => ("session_keys", list.as_slice()),
        (None, None, Some(path)) => match read_keys_file(path) {
            Ok(keys) => {
                from_file = keys;
                ("session_keys_file", from_file.as_slice())
            }
            Err(e) => {
                t.problem("session_keys_file", format!("{path}: {e}"));
                return Vec::new();
            }
        },
        _ => {
            t.problem(
                "session_keys",
                "set one of proxy.session_key, proxy.session_keys and proxy.session_keys_file, \
                 not several (move the single key into the list or the file)",
            );
            return Vec::new();
        }
    };
    if list.is_empty() {
        t.problem(
            key,
            "empty: give at least one key (the first seals new session ids), or remove it",
        );
    }
    if list.len() > MAX_SESSION_KEYS {
        t.problem(
            key,
            format!(
                "{} keys: at most {MAX_SESSION_KEYS} (drop the oldest: sessions sealed with them \
                 re-initialize)",
                list.len()
            ),
        );
    }
    let mut keys: Vec<[u8; 32]> = Vec::with_capacity(list.len());
    for (i, s) in list.iter().enumerate() {
        let name = if p.session_keys_file.is_some() {
            format!(
                "{key}: key {} (line order, comments and blank lines skipped)",
                i + 1
            )
        } else if p.session_keys.is_some() {
            format!("{key}[{i}]")
        } else {
            key.to_string()
        };
        match decode_key(s) {
            Err(e) => t.problem(&name, e),
            Ok(k) => match keys.iter().position(|o| *o == k) {
                Some(j) => t.problem(&name, format!("the same key as proxy.{key}[{j}]")),
                None => keys.push(k),
            },
        }
    }
    keys
}

/// The keys of a `session_keys_file`: one per line, the first sealing new ids; blank lines and
/// lines starting with `#` skipped, spaces around a key ignored (a trailing newline, as
/// `kubectl create secret --from-file` and editors leave it, is fine).
fn read_keys_file(path: &str) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// `forwarded`, `forwarded_header`, `trusted_proxies` and `proxy_protocol`.
fn client_address(p: &RawProxy, t: &mut TableCheck<'_>) -> ClientAddress {
    let forwarded = match p.forwarded.as_deref() {
        None | Some("append") => ForwardedMode::Append,
        Some("replace") => ForwardedMode::Replace,
        Some("off") => ForwardedMode::Off,
        Some(other) => {
            t.problem(
                "forwarded",
                format!("`{other}` is not one of \"append\", \"replace\", \"off\""),
            );
            ForwardedMode::Append
        }
    };
    let header = match p.forwarded_header.as_deref().map(str::to_ascii_lowercase) {
        None => ForwardedHeader::XForwardedFor,
        Some(h) if h == "x-forwarded-for" => ForwardedHeader::XForwardedFor,
        Some(h) if h == "forwarded" => ForwardedHeader::Forwarded,
        Some(other) => {
            t.problem(
                "forwarded_header",
                format!("`{other}` is not one of \"x-forwarded-for\", \"forwarded\""),
            );
            ForwardedHeader::XForwardedFor
        }
    };
    let mut trusted = Vec::new();
    for (i, entry) in p.trusted_proxies.iter().flatten().enumerate() {
        match parse_net(entry) {
            Some(net) => trusted.push(net),
            None => t.problem(
                &format!("trusted_proxies[{i}]"),
                format!(
                    "`{entry}` is not an IP address or network (e.g. \"10.0.0.0/8\", \
                     \"192.0.2.7\", \"fd00::/8\")"
                ),
            ),
        }
    }
    let proxy_protocol = p.proxy_protocol.unwrap_or(false);
    if proxy_protocol && p.trusted_proxies.as_ref().is_none_or(Vec::is_empty) {
        t.problem(
            "proxy_protocol",
            "needs proxy.trusted_proxies: the balancers allowed to send a PROXY header (a \
             PROXY header from anyone else would let them claim any address)",
        );
    }
    ClientAddress {
        forwarded,
        header,
        trusted: TrustedProxies(trusted),
        proxy_protocol,
    }
}

/// An address (`192.0.2.7`, `::1`) or a network (`10.0.0.0/8`); host bits of a network are
/// ignored.
fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    if s.contains('/') {
        s.parse::<ipnet::IpNet>().ok().map(|n| n.trunc())
    } else {
        s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)
    }
}

/// `[proxy.http3]`: the UDP address and the limits of each QUIC connection. HTTP/3 is TLS 1.3
/// only, with `[proxy.tls]`'s certificate, so it needs that table.
fn http3(h: RawHttp3, has_tls: bool, errs: &mut Vec<String>) -> Option<crate::h3::Http3Config> {
    let d = crate::h3::Http3Config::default();
    let mut t = TableCheck::new("proxy.http3", errs);
    if !has_tls {
        t.problem(
            "",
            "needs [proxy.tls]: HTTP/3 always runs TLS 1.3, with the certificate and key of \
             [proxy.tls] (add that table, or remove [proxy.http3])",
        );
    }
    let listen = match h.listen.as_deref() {
        None => {
            t.problem("listen", "missing: the UDP address (e.g. \"0.0.0.0:8443\")");
            None
        }
        Some(s) => match resolve(s) {
            Ok(a) => Some(a),
            Err(e) => {
                t.problem("listen", e);
                None
            }
        },
    };
    let cfg = crate::h3::Http3Config {
        listen: listen.unwrap_or(d.listen),
        max_concurrent_streams: t.int_u32(
            "max_concurrent_streams",
            h.max_concurrent_streams,
            d.max_concurrent_streams,
            1..=10_000,
        ),
        max_header_list_size: t.int_u32(
            "max_header_list_size",
            h.max_header_list_size,
            d.max_header_list_size,
            1024..=1 << 20,
        ),
        idle_timeout: t.duration("idle_timeout", h.idle_timeout.as_deref(), d.idle_timeout),
        stream_receive_window: t.int_u32(
            "stream_receive_window",
            h.stream_receive_window,
            d.stream_receive_window,
            16_384..=1 << 24,
        ),
        floods: crate::h3::H3FloodLimits {
            max_resets_per_second: t.int_u32(
                "max_resets_per_second",
                h.max_resets_per_second,
                d.floods.max_resets_per_second,
                1..=1_000_000,
            ),
            max_pings_per_second: t.int_u32(
                "max_pings_per_second",
                h.max_pings_per_second,
                d.floods.max_pings_per_second,
                1..=1_000_000,
            ),
            max_migration_frames_per_second: t.int_u32(
                "max_migration_frames_per_second",
                h.max_migration_frames_per_second,
                d.floods.max_migration_frames_per_second,
                1..=1_000_000,
            ),
        },
    };
    // QUIC's idle timeout is a varint of milliseconds (RFC 9000 §18.2): bounded here.
    if cfg.idle_timeout > Duration::from_secs(3600) {
        t.problem("idle_timeout", "at most 1h");
    }
    (listen.is_some() && has_tls).then_some(cfg)
}

/// `[proxy.tls]`: the certificate and key are loaded here, once, so that a bad file is a
/// config error naming the key rather than a failure at start.
fn tls(t: RawTls, h2: bool, proxy: &mut TableCheck<'_>) -> Option<crate::tls::ServerTlsFiles> {
    let (Some(cert), Some(key)) = (t.cert, t.key) else {
        proxy.problem("tls", "needs both `cert` and `key` (PEM files)");
        return None;
    };
    let files = crate::tls::ServerTlsFiles {
        cert: cert.into(),
        key: key.into(),
        client_ca: t.client_ca.map(Into::into),
        h2,
        // "0s" is allowed here: never check the files (reload on demand only).
        reload_interval: match t.reload_interval.as_deref().map(parse_duration) {
            None => Duration::from_secs(5),
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                proxy.problem("tls.reload_interval", e);
                Duration::from_secs(5)
            }
        },
    };
    match files.build() {
        Ok(_) => Some(files),
        Err(e) => {
            proxy.problem("tls", e);
            None
        }
    }
}

/// `[proxy.http2]`: each limit within what RFC 9113 allows and what keeps one connection's
/// memory bounded.
fn http2(h: RawHttp2, errs: &mut Vec<String>) -> crate::h2::Http2Config {
    let d = crate::h2::Http2Config::default();
    let mut t = TableCheck::new("proxy.http2", errs);
    let mut n = |key: &str, v: Option<i64>, default: u32, range: std::ops::RangeInclusive<u32>| {
        t.int_u32(key, v, default, range)
    };
    let f = d.floods;
    let floods = crate::h2::FloodLimits {
        max_resets_per_second: n(
            "max_resets_per_second",
            h.max_resets_per_second,
            f.max_resets_per_second,
            1..=1_000_000,
        ),
        max_continuation_frames: n(
            "max_continuation_frames",
            h.max_continuation_frames,
            f.max_continuation_frames,
            0..=10_000,
        ),
        max_pings_per_second: n(
            "max_pings_per_second",
            h.max_pings_per_second,
            f.max_pings_per_second,
            1..=1_000_000,
        ),
        max_settings_per_second: n(
            "max_settings_per_second",
            h.max_settings_per_second,
            f.max_settings_per_second,
            1..=1_000_000,
        ),
    };
    crate::h2::Http2Config {
        enabled: h.enabled.unwrap_or(d.enabled),
        max_concurrent_streams: n(
            "max_concurrent_streams",
            h.max_concurrent_streams,
            d.max_concurrent_streams,
            1..=10_000,
        ),
        max_header_list_size: n(
            "max_header_list_size",
            h.max_header_list_size,
            d.max_header_list_size,
            1024..=1 << 20,
        ),
        header_table_size: n(
            "header_table_size",
            h.header_table_size,
            d.header_table_size,
            0..=1 << 16,
        ),
        // RFC 9113 §6.5.2: at most 2^31-1; at least a frame's worth.
        initial_window_size: n(
            "initial_window_size",
            h.initial_window_size,
            d.initial_window_size,
            16_384..=(1 << 24),
        ),
        floods,
    }
}
