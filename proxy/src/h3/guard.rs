//! The HTTP/3 flood guard: what quinn-proto and the `h3` crate leave open, counted per
//! connection in one-second windows (the budget logic of HTTP/2's guard,
//! [`crate::h2::guard::PerSecond`]), from quinn-proto's count of every frame the client sent
//! (nothing is parsed twice):
//! - rapid reset, HTTP/3's form of CVE-2023-44487: request streams opened and cancelled at
//!   once (RESET_STREAM and STOP_SENDING: an HTTP/3 client sends both to cancel one request,
//!   so the larger of the two counts is the number of cancelled streams), each freeing its
//!   stream slot for the next one;
//! - PING floods: every PING makes the server acknowledge;
//! - connection-id and path floods: each RETIRE_CONNECTION_ID makes quinn-proto issue a new
//!   id, each NEW_CONNECTION_ID with `retire_prior_to` makes it retire ids, each
//!   PATH_CHALLENGE needs a PATH_RESPONSE; a client that migrates sends a few;
//! - unidirectional streams beyond HTTP/3's three (control, QPACK encoder and decoder):
//!   unknown types are stopped and dropped, and a client could open them without end; they
//!   count as rapid reset too (streams thrown away; a client usually answers the STOP_SENDING
//!   with a RESET_STREAM, and the larger count is taken).
//!
//! A connection over a budget is closed with H3_EXCESSIVE_LOAD. What quinn-proto and `h3`
//! bound themselves: concurrent streams of each kind, flow-control windows, active connection
//! ids (`active_connection_id_limit`), unknown QUIC frames (a connection error), unknown
//! HTTP/3 stream types (stopped), the QPACK dynamic table (capacity 0: encoder instructions
//! that use it are a connection error) and field sections over `max_header_list_size`
//! (answered 431, counted as `h3_headers_too_large`).

use std::time::Instant;

use quinn_proto::FrameStats;

use crate::h2::guard::PerSecond;

/// `[proxy.http3]`'s flood budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H3FloodLimits {
    /// Request streams a client may cancel in a second (RESET_STREAM or STOP_SENDING frames).
    pub max_resets_per_second: u32,
    /// PING frames a client may send in a second.
    pub max_pings_per_second: u32,
    /// NEW_CONNECTION_ID, RETIRE_CONNECTION_ID and PATH_CHALLENGE frames a client may send in
    /// a second.
    pub max_migration_frames_per_second: u32,
}

impl Default for H3FloodLimits {
    fn default() -> Self {
        H3FloodLimits {
            max_resets_per_second: 100,
            max_pings_per_second: 20,
            max_migration_frames_per_second: 50,
        }
    }
}

/// A flood the guard found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum H3Flood {
    /// More than `max_resets_per_second` cancelled streams (or unidirectional streams past
    /// the three).
    RapidReset,
    /// More than `max_pings_per_second` PING frames.
    Ping,
    /// More than `max_migration_frames_per_second` connection-id and path frames.
    Migration,
}

impl H3Flood {
    /// Its name in logs.
    pub(crate) fn name(self) -> &'static str {
        match self {
            H3Flood::RapidReset => "rapid reset",
            H3Flood::Ping => "PING",
            H3Flood::Migration => "connection id / path",
        }
    }
}

const RESETS: usize = 0;
const STOPS: usize = 1;
const PINGS: usize = 2;
const MIGRATION: usize = 3;
const UNI: usize = 4;
const KINDS: usize = 5;

/// Unidirectional streams HTTP/3 needs from a client.
const UNI_NEEDED: u64 = 3;

/// What the guard counts, as totals since the connection began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Totals([u64; KINDS]);

impl Totals {
    fn of(f: &FrameStats, uni_streams: u64) -> Self {
        Totals([
            f.reset_stream,
            f.stop_sending,
            f.ping,
            f.new_connection_id
                .saturating_add(f.retire_connection_id)
                .saturating_add(f.path_challenge),
            uni_streams.saturating_sub(UNI_NEEDED),
        ])
    }
}

/// One connection's guard.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    limits: H3FloodLimits,
    seen: Totals,
    counts: PerSecond<KINDS>,
}

impl Guard {
    /// A guard for a connection that starts at `now`.
    pub(crate) fn new(limits: H3FloodLimits, now: Instant) -> Self {
        Guard {
            limits,
            seen: Totals::default(),
            counts: PerSecond::new(now),
        }
    }

    /// Reads the connection's frame counts after it took a datagram, and the unidirectional
    /// streams the client opened; a flood once one is found.
    pub(crate) fn observe(
        &mut self,
        frames: &FrameStats,
        uni_streams: u64,
        now: Instant,
    ) -> Option<H3Flood> {
        let totals = Totals::of(frames, uni_streams);
        if totals == self.seen {
            return None;
        }
        self.counts.roll(now);
        let l = self.limits;
        let mut over = [false; KINDS];
        for (i, (new, old)) in totals.0.iter().zip(self.seen.0).enumerate() {
            let n = u32::try_from(new.saturating_sub(old)).unwrap_or(u32::MAX);
            let budget = match i {
                RESETS | STOPS | UNI => l.max_resets_per_second,
                PINGS => l.max_pings_per_second,
                MIGRATION => l.max_migration_frames_per_second,
                _ => u32::MAX,
            };
            if let Some(o) = over.get_mut(i) {
                *o = n > 0 && self.counts.add(i, n, budget);
            }
        }
        self.seen = totals;
        match over {
            [true, ..] | [_, true, ..] | [.., true] => Some(H3Flood::RapidReset),
            [_, _, true, ..] => Some(H3Flood::Ping),
            [_, _, _, true, _] => Some(H3Flood::Migration),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: H3FloodLimits = H3FloodLimits {
        max_resets_per_second: 3,
        max_pings_per_second: 2,
        max_migration_frames_per_second: 4,
    };

    /// What one datagram adds to the frame totals.
    type Step = fn(&mut FrameStats);

    /// Feeds the guard one datagram at a time, the `i`th at `at[i]` ms.
    fn run(steps: &[Step], at: &[u64]) -> Option<H3Flood> {
        let t0 = Instant::now();
        let mut g = Guard::new(LIMITS, t0);
        let mut f = FrameStats::default();
        for (step, ms) in steps.iter().zip(at) {
            step(&mut f);
            // The control and QPACK streams, always there.
            if let Some(flood) = g.observe(&f, 3, t0 + Duration::from_millis(*ms)) {
                return Some(flood);
            }
        }
        None
    }

    fn cancel(f: &mut FrameStats) {
        f.reset_stream += 1;
        f.stop_sending += 1;
        f.stream += 1;
    }

    fn reset_only(f: &mut FrameStats) {
        f.reset_stream += 1;
    }

    fn stop_only(f: &mut FrameStats) {
        f.stop_sending += 1;
    }

    fn ping(f: &mut FrameStats) {
        f.ping += 1;
    }

    fn retire(f: &mut FrameStats) {
        f.retire_connection_id += 1;
        f.path_challenge += 1;
    }

    fn data(f: &mut FrameStats) {
        f.stream += 3;
        f.acks += 1;
        f.max_stream_data += 1;
    }

    #[test]
    fn a_cancel_is_one_stream_whichever_frames_carry_it() {
        // RESET_STREAM and STOP_SENDING of one cancel count once: three cancels are within
        // the budget of three, the fourth is over it; one kind alone counts the same.
        for step in [cancel as Step, reset_only, stop_only] {
            assert_eq!(run(&[step; 3], &[0, 1, 2]), None);
            assert_eq!(run(&[step; 4], &[0, 1, 2, 3]), Some(H3Flood::RapidReset));
        }
    }

    #[test]
    fn each_flood_is_found_past_its_budget() {
        assert_eq!(run(&[ping as Step; 2], &[0, 1]), None);
        assert_eq!(run(&[ping as Step; 3], &[0, 1, 2]), Some(H3Flood::Ping));
        // Two frames a step: four are the budget, six are over it.
        assert_eq!(run(&[retire as Step; 2], &[0, 1]), None);
        assert_eq!(
            run(&[retire as Step; 3], &[0, 1, 2]),
            Some(H3Flood::Migration)
        );
    }

    #[test]
    fn ordinary_traffic_is_never_a_flood() {
        assert_eq!(run(&[data as Step; 10_000], &[0; 10_000]), None);
    }

    #[test]
    fn counts_start_again_each_second() {
        // A cancel and a ping each 600 ms: ten of each in all, never more than two in one
        // window.
        let steps = [cancel as Step, ping].repeat(10);
        let at: Vec<u64> = (0..20).map(|i| (i / 2) * 600).collect();
        assert_eq!(run(&steps, &at), None);
    }

    #[test]
    fn a_burst_in_one_datagram_counts_whole() {
        let t0 = Instant::now();
        let mut g = Guard::new(LIMITS, t0);
        let mut f = FrameStats::default();
        f.stop_sending = 50;
        assert_eq!(g.observe(&f, 3, t0), Some(H3Flood::RapidReset));
    }

    #[test]
    fn unidirectional_streams_past_the_three_count() {
        let t0 = Instant::now();
        let f = FrameStats::default();
        let mut g = Guard::new(LIMITS, t0);
        // HTTP/3's three and the budget of three more pass; one more is over.
        for uni in 0..=6 {
            assert_eq!(g.observe(&f, uni, t0), None, "{uni}");
        }
        assert_eq!(g.observe(&f, 7, t0), Some(H3Flood::RapidReset));
        // At the budget's pace, never.
        let mut g = Guard::new(LIMITS, t0);
        for i in 0..20u64 {
            let t = t0 + Duration::from_millis(400 * i);
            assert_eq!(g.observe(&f, 3 + i, t), None, "{i}");
        }
    }
}
