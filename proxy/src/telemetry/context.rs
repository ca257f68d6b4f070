//! W3C Trace Context (`traceparent`): reading a caller's, deciding whether a trace is sampled,
//! and writing the one mcplb passes on. Plain functions over bytes; randomness comes in as
//! arguments, so they are deterministic to test.

/// The trace a request belongs to and mcplb's own span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (the caller's, or a new one).
    pub trace_id: [u8; 16],
    /// The caller's span, mcplb's span's parent (`None`: mcplb started the trace).
    pub parent: Option<[u8; 8]>,
    /// mcplb's span for this request (the parent the backend sees).
    pub span_id: [u8; 8],
    /// Whether the trace is recorded (exported).
    pub sampled: bool,
}

/// A caller's trace context as its `traceparent` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The caller's trace id.
    pub trace_id: [u8; 16],
    /// The caller's span id.
    pub span_id: [u8; 8],
    /// The caller's `sampled` flag.
    pub sampled: bool,
}

/// Length of a version-00 `traceparent`: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_LEN: usize = 55;

/// Parses a `traceparent` value. `None` for anything the W3C rules call invalid: a version
/// other than two lower-case hex digits or `ff`, an all-zero trace or span id, upper-case hex,
/// wrong lengths; a version-00 value must be exactly 55 bytes, a later version may carry more
/// after a `-`.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    let v = v.trim_ascii();
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = hex_byte(v.get(0..2)?)?;
    if version == 0xff || (version == 0 && v.len() != TRACEPARENT_LEN) {
        return None;
    }
    if v.len() > TRACEPARENT_LEN && v.get(TRACEPARENT_LEN) != Some(&b'-') {
        return None;
    }
    if v.get(2) != Some(&b'-') || v.get(35) != Some(&b'-') || v.get(52) != Some(&b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(v.get(3 + 2 * i..5 + 2 * i)?)?;
    }
    let mut span_id = [0u8; 8];
    for (i, b) in span_id.iter_mut().enumerate() {
        *b = hex_byte(v.get(36 + 2 * i..38 + 2 * i)?)?;
    }
    let flags = hex_byte(v.get(53..55)?)?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: flags & 1 == 1,
    })
}

/// Two lower-case hex digits.
fn hex_byte(two: &[u8]) -> Option<u8> {
    let d = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match two {
        [h, l] => Some(d(*h)? << 4 | d(*l)?),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends `bytes` as lower-case hex.
pub fn write_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 15)]);
    }
}

impl TraceContext {
    /// The trace of a request: the caller's `parent` continued (its `sampled` flag decides),
    /// or a new trace sampled with probability `ratio` (by its trace id, as OpenTelemetry's
    /// `TraceIdRatioBased` sampler does, so every hop with the same ratio agrees). `random`
    /// gives the new ids (a `u128` for a trace id, then a `u64` for the span id).
    pub fn decide(parent: Option<Parent>, ratio: f64, random: (u128, u64)) -> TraceContext {
        let (rand_trace, rand_span) = random;
        // A span id is never all zeros.
        let span_id = rand_span.max(1).to_be_bytes();
        match parent {
            Some(p) => TraceContext {
                trace_id: p.trace_id,
                parent: Some(p.span_id),
                span_id,
                sampled: p.sampled,
            },
            None => {
                let trace_id = rand_trace.max(1).to_be_bytes();
                TraceContext {
                    trace_id,
                    parent: None,
                    span_id,
                    sampled: ratio_samples(&trace_id, ratio),
                }
            }
        }
    }

    /// Appends the `traceparent` value that makes mcplb's span the backend's parent.
    pub fn write_traceparent(&self, out: &mut Vec<u8>) {
        // Filled on the stack and appended once (a push per digit cost 4x the instructions).
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        for (i, b) in self.trace_id.iter().enumerate() {
            v[3 + 2 * i] = HEX[usize::from(b >> 4)];
            v[4 + 2 * i] = HEX[usize::from(b & 15)];
        }
        for (i, b) in self.span_id.iter().enumerate() {
            v[36 + 2 * i] = HEX[usize::from(b >> 4)];
            v[37 + 2 * i] = HEX[usize::from(b & 15)];
        }
        if self.sampled {
            v[54] = b'1';
        }
        out.extend_from_slice(&v);
    }
}

/// Whether a new trace with this id is sampled at `ratio`: the id's low 63 bits of its last
/// 8 bytes below `ratio` times 2^63.
fn ratio_samples(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    (x as f64) < ratio * (1u64 << 63) as f64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn a_valid_traceparent_parses_and_writes_back() {
        let p = parse_traceparent(TP).expect("valid");
        assert!(p.sampled);
        assert_eq!(p.span_id, [0xb7, 0xad, 0x6b, 0x71, 0x69, 0x20, 0x33, 0x31]);
        let t = TraceContext::decide(Some(p), 0.0, (7, 0x1122_3344_5566_7788));
        assert_eq!(t.trace_id, p.trace_id);
        assert_eq!(t.parent, Some(p.span_id));
        assert!(t.sampled, "the parent's flag decides, not the ratio");
        let mut out = Vec::new();
        t.write_traceparent(&mut out);
        assert_eq!(
            out,
            b"00-0af7651916cd43dd8448eb211c80319c-1122334455667788-01"
        );
        assert!(
            parse_traceparent(b" 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00 ")
                .is_some_and(|p| !p.sampled)
        );
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            &b""[..],
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            b"ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"00-00000000000000000000000000000000-b7ad6b7169203331-01",
            b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            b"00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            b"0x-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333é-1".as_bytes(),
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A later version may carry more fields.
        assert!(parse_traceparent(
            b"01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-whatever"
        )
        .is_some());
    }

    #[test]
    fn new_traces_follow_the_ratio() {
        let all = TraceContext::decide(None, 1.0, (0, 0));
        assert!(all.sampled && all.parent.is_none());
        assert_ne!(all.trace_id, [0; 16]);
        assert_ne!(all.span_id, [0; 8]);
        assert!(!TraceContext::decide(None, 0.0, (u128::MAX, 1)).sampled);
        // About 1 % of evenly spread ids are sampled at 0.01.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let n = 100_000;
        let sampled = (0..n)
            .filter(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                TraceContext::decide(None, 0.01, (u128::from(x), 1)).sampled
            })
            .count();
        assert!((700..1300).contains(&sampled), "{sampled}");
    }
}
