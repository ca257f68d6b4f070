//! Reading single values: durations, integers in a range, socket addresses, 32-byte keys; and
//! [`TableCheck`], which reads the values of one table and names every problem with its key
//! path, so that the section validators read as a list of keys and their rules.

use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeInclusive;
use std::time::Duration;

/// Parses a duration such as `500ms`, `10s`, `5m`, `1h` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try \"500ms\", \"10s\", \"5m\")"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit `{u}` in `{s}` (use ms, s, m or h)")),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{s}` is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// FNV-1a, used for stable backend tags.
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Resolves `host:port` to its first address.
pub(super) fn resolve(addr: &str) -> Result<SocketAddr, String> {
    addr.to_socket_addrs()
        .map_err(|e| format!("`{addr}` is not a socket address: {e}"))?
        .next()
        .ok_or_else(|| format!("`{addr}` resolves to no address"))
}

/// 64 hex digits as 32 bytes.
pub(crate) fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A 32-byte key written as 64 hex digits or base64.
pub(super) fn decode_key(s: &str) -> Result<[u8; 32], String> {
    use base64::Engine;
    let bytes = if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(s.get(i * 2..i * 2 + 2).unwrap_or("zz"), 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| "not hex".to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| "must be 32 bytes as 64 hex digits or base64".to_string())?
    };
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must be exactly 32 bytes (got {})", bytes.len()))
}

/// The values of one table (`proxy`, `servers[1].health`, ...): each reader returns the value
/// or, after recording the problem under `path.key`, the default, so validation goes on and
/// every problem is listed.
pub(super) struct TableCheck<'e> {
    path: String,
    errs: &'e mut Vec<String>,
}

impl<'e> TableCheck<'e> {
    /// Checks the table at `path`, recording problems in `errs`.
    pub(super) fn new(path: impl Into<String>, errs: &'e mut Vec<String>) -> Self {
        TableCheck {
            path: path.into(),
            errs,
        }
    }

    /// The key path of `key` in this table.
    pub(super) fn key(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// Records a problem with `key` (the table itself when `key` is empty).
    pub(super) fn problem(&mut self, key: &str, msg: impl std::fmt::Display) {
        if key.is_empty() {
            self.errs.push(format!("{}: {msg}", self.path));
        } else {
            self.errs.push(format!("{}.{key}: {msg}", self.path));
        }
    }

    /// The problem list itself, for validators of nested tables that take it (auth).
    pub(super) fn errs(&mut self) -> &mut Vec<String> {
        self.errs
    }

    /// An integer in `range`, or `default` when absent.
    pub(super) fn int(
        &mut self,
        key: &str,
        v: Option<i64>,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> usize {
        match v {
            None => default,
            Some(n) => match usize::try_from(n) {
                Ok(n) if range.contains(&n) => n,
                _ => {
                    let (min, max) = (range.start(), range.end());
                    self.problem(key, format!("{n} is out of range ({min}..={max})"));
                    default
                }
            },
        }
    }

    /// A `u32` in `range` (the range's bounds fit in a `u32`), or `default` when absent.
    pub(super) fn int_u32(
        &mut self,
        key: &str,
        v: Option<i64>,
        default: u32,
        range: RangeInclusive<u32>,
    ) -> u32 {
        let (min, max) = (*range.start() as usize, *range.end() as usize);
        self.int(key, v, default as usize, min..=max) as u32
    }

    /// A duration above zero, or `default` when absent.
    pub(super) fn duration(&mut self, key: &str, v: Option<&str>, default: Duration) -> Duration {
        match v.map(parse_duration) {
            None => default,
            Some(Ok(d)) if d.is_zero() => {
                self.problem(key, "must be greater than zero");
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(key, e);
                default
            }
        }
    }

    /// A duration, zero included (where zero means "off"), or `default` when absent.
    pub(super) fn duration_or_zero(
        &mut self,
        key: &str,
        v: Option<&str>,
        default: Duration,
    ) -> Duration {
        match v.map(parse_duration) {
            None => default,
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.problem(key, e);
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_check_names_the_key_and_keeps_the_default() {
        let mut errs = Vec::new();
        let mut t = TableCheck::new("servers[1].health", &mut errs);
        assert_eq!(t.int("healthy_threshold", Some(0), 2, 1..=100), 2);
        assert_eq!(t.int("healthy_threshold", Some(7), 2, 1..=100), 7);
        assert_eq!(t.int("x", Some(-1), 5, 0..=10), 5);
        assert_eq!(
            t.duration("interval", Some("0s"), Duration::from_secs(5))
                .as_secs(),
            5
        );
        assert_eq!(
            t.duration("interval", None, Duration::from_secs(5))
                .as_secs(),
            5
        );
        assert!(t
            .duration_or_zero("list_cache_ttl", Some("0s"), Duration::from_secs(5))
            .is_zero());
        assert_eq!(
            errs,
            [
                "servers[1].health.healthy_threshold: 0 is out of range (1..=100)",
                "servers[1].health.x: -1 is out of range (0..=10)",
                "servers[1].health.interval: must be greater than zero",
            ]
        );
    }

    #[test]
    fn keys_decode_from_hex_or_base64() {
        let hex = "ab".repeat(32);
        assert_eq!(decode_key(&hex), Ok([0xab; 32]));
        assert_eq!(decode_hex32(&hex), Some([0xab; 32]));
        assert!(decode_key("c2hvcnQ=").is_err());
        assert_eq!(decode_hex32("zz"), None);
    }
}
