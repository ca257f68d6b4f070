//! The flood guard: reads the frame headers of what an HTTP/2 client sends (nothing else: 9
//! bytes a frame, no payload is looked at) and finds the known floods, each with its own
//! counter, before the frames cost more than their reading:
//! - rapid reset (CVE-2023-44487): streams opened and reset at once, each of which would
//!   otherwise start a request (and maybe a backend call) for nothing;
//! - CONTINUATION flood: a header block spread over endless CONTINUATION frames;
//! - PING and SETTINGS floods: control frames the server must answer, sent without end.
//!
//! Counts are per connection in one-second windows; a connection over a limit is sent GOAWAY
//! (`ENHANCE_YOUR_CALM`) and closed. `h2` has its own guards for some of these (pending
//! reset streams, CONTINUATION frames and header list size, tiny DATA frames): they stay on
//! as a second line (h2 refuses a header block in more than max(5, header list size / frame
//! size) frames whatever `max_continuation_frames` says), and connections they end count as
//! `h2_protocol_errors`.

use std::time::{Duration, Instant};

/// The client connection preface (RFC 9113 §3.4).
pub(crate) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;

/// A flood the guard found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flood {
    /// More than `max_resets_per_second` RST_STREAM frames.
    RapidReset,
    /// A header block in more than `max_continuation_frames` CONTINUATION frames.
    Continuation,
    /// More than `max_pings_per_second` PING frames.
    Ping,
    /// More than `max_settings_per_second` SETTINGS frames.
    Settings,
}

/// The guard's limits (`[proxy.http2]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodLimits {
    /// RST_STREAM frames a client may send in a second.
    pub max_resets_per_second: u32,
    /// CONTINUATION frames one header block may take.
    pub max_continuation_frames: u32,
    /// PING frames (not acknowledgements) a client may send in a second.
    pub max_pings_per_second: u32,
    /// SETTINGS frames (not acknowledgements) a client may send in a second.
    pub max_settings_per_second: u32,
}

/// The frame-header scanner of one connection's incoming bytes.
pub(crate) struct FrameScan {
    limits: FloodLimits,
    /// Preface bytes still to pass.
    preface_left: usize,
    /// The frame header being read.
    hdr: [u8; 9],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: usize,
    /// CONTINUATION frames of the header block under way (`None`: none under way).
    block: Option<u32>,
    /// RST_STREAM, PING and SETTINGS frames in the current second.
    counts: PerSecond<3>,
}

const RESETS: usize = 0;
const PINGS: usize = 1;
const SETTINGS_FRAMES: usize = 2;

/// Counts of a few kinds of events in one-second windows, each kind against its own budget
/// (the HTTP/2 guard's frames, the HTTP/3 guard's: [`crate::h3::guard`]).
#[derive(Debug, Clone)]
pub(crate) struct PerSecond<const N: usize> {
    window: Instant,
    counts: [u32; N],
}

impl<const N: usize> PerSecond<N> {
    /// Counts starting at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        PerSecond {
            window: now,
            counts: [0; N],
        }
    }

    /// Starts a new window (all counts zero) when a second has passed since this one began.
    pub(crate) fn roll(&mut self, now: Instant) {
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.counts = [0; N];
        }
    }

    /// Adds `n` events of kind `i` to the current window; whether that kind is now over
    /// `budget`.
    pub(crate) fn add(&mut self, i: usize, n: u32, budget: u32) -> bool {
        match self.counts.get_mut(i) {
            Some(c) => {
                *c = c.saturating_add(n);
                *c > budget
            }
            None => false,
        }
    }
}

impl FrameScan {
    /// A scanner for a connection whose first bytes are the client preface.
    pub(crate) fn new(limits: FloodLimits, now: Instant) -> Self {
        FrameScan {
            limits,
            preface_left: PREFACE.len(),
            hdr: [0; 9],
            have: 0,
            skip: 0,
            block: None,
            counts: PerSecond::new(now),
        }
    }

    /// Reads `bytes`, the next the client sent; a flood once one is found (it stays found).
    pub(crate) fn scan(&mut self, mut bytes: &[u8], now: Instant) -> Option<Flood> {
        let pass = self.preface_left.min(bytes.len());
        self.preface_left -= pass;
        bytes = bytes.get(pass..).unwrap_or_default();
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = bytes.get(n..).unwrap_or_default();
                continue;
            }
            let n = (9 - self.have).min(bytes.len());
            if let (Some(dst), Some(src)) =
                (self.hdr.get_mut(self.have..self.have + n), bytes.get(..n))
            {
                dst.copy_from_slice(src);
            }
            self.have += n;
            bytes = bytes.get(n..).unwrap_or_default();
            if self.have < 9 {
                break;
            }
            self.have = 0;
            let [l0, l1, l2, kind, flags, ..] = self.hdr;
            self.skip = usize::from(l0) << 16 | usize::from(l1) << 8 | usize::from(l2);
            if let Some(f) = self.frame(kind, flags, now) {
                return Some(f);
            }
        }
        None
    }

    /// Counts one frame header.
    fn frame(&mut self, kind: u8, flags: u8, now: Instant) -> Option<Flood> {
        self.counts.roll(now);
        let l = self.limits;
        match kind {
            HEADERS => {
                self.block = (flags & FLAG_END_HEADERS == 0).then_some(0);
            }
            CONTINUATION => {
                let n = self.block.unwrap_or(0) + 1;
                if n > l.max_continuation_frames {
                    return Some(Flood::Continuation);
                }
                self.block = (flags & FLAG_END_HEADERS == 0).then_some(n);
            }
            RST_STREAM => {
                let over = self.counts.add(RESETS, 1, l.max_resets_per_second);
                return over.then_some(Flood::RapidReset);
            }
            PING if flags & FLAG_ACK == 0 => {
                let over = self.counts.add(PINGS, 1, l.max_pings_per_second);
                return over.then_some(Flood::Ping);
            }
            SETTINGS if flags & FLAG_ACK == 0 => {
                let over = self
                    .counts
                    .add(SETTINGS_FRAMES, 1, l.max_settings_per_second);
                return over.then_some(Flood::Settings);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FloodLimits = FloodLimits {
        max_resets_per_second: 3,
        max_continuation_frames: 2,
        max_pings_per_second: 2,
        max_settings_per_second: 2,
    };

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let mut f = vec![
            (payload >> 16) as u8,
            (payload >> 8) as u8,
            payload as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.resize(9 + payload, 0xAB);
        f
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut b = PREFACE.to_vec();
        for f in frames {
            b.extend_from_slice(f);
        }
        b
    }

    /// Scans `bytes` fed in pieces of `step` bytes.
    fn scan_in(bytes: &[u8], step: usize, now: Instant) -> Option<Flood> {
        let mut s = FrameScan::new(LIMITS, now);
        bytes.chunks(step).find_map(|c| s.scan(c, now))
    }

    #[test]
    fn ordinary_traffic_passes_however_it_is_split() {
        let b = stream(&[
            frame(SETTINGS, 0, 12),
            frame(SETTINGS, FLAG_ACK, 0),
            frame(HEADERS, 0, 40),
            frame(CONTINUATION, 0, 30),
            frame(CONTINUATION, FLAG_END_HEADERS, 30),
            frame(0x0, 0x1, 1000),
            frame(PING, 0, 8),
            frame(PING, FLAG_ACK, 8),
            frame(RST_STREAM, 0, 4),
        ]);
        let now = Instant::now();
        for step in [1, 2, 7, 9, 10, 64, b.len()] {
            assert_eq!(scan_in(&b, step, now), None, "step {step}");
        }
    }

    #[test]
    fn each_flood_is_found_past_its_limit() {
        let now = Instant::now();
        let cases = [
            (vec![frame(RST_STREAM, 0, 4); 4], Flood::RapidReset),
            (vec![frame(PING, 0, 8); 3], Flood::Ping),
            (vec![frame(SETTINGS, 0, 6); 3], Flood::Settings),
            (
                vec![
                    frame(HEADERS, 0, 10),
                    frame(CONTINUATION, 0, 10),
                    frame(CONTINUATION, 0, 10),
                    frame(CONTINUATION, 0, 10),
                ],
                Flood::Continuation,
            ),
        ];
        for (frames, flood) in cases {
            let b = stream(&frames);
            for step in [1, 5, b.len()] {
                assert_eq!(scan_in(&b, step, now), Some(flood), "{flood:?} step {step}");
            }
            // One frame fewer is within the limit.
            let b = stream(&frames[..frames.len() - 1]);
            assert_eq!(scan_in(&b, 3, now), None, "{flood:?} at its limit");
        }
    }

    #[test]
    fn counts_start_again_each_second() {
        let t0 = Instant::now();
        let mut s = FrameScan::new(LIMITS, t0);
        assert_eq!(s.scan(PREFACE, t0), None);
        for i in 0..10u64 {
            let t = t0 + Duration::from_millis(600 * i);
            // One ping and one reset each 600 ms: never more than two in a window.
            assert_eq!(s.scan(&frame(PING, 0, 8), t), None);
            assert_eq!(s.scan(&frame(RST_STREAM, 0, 4), t), None);
        }
    }
}
