//! Another process's CPU time and context switches, read from `/proc`: what a benchmark
//! divides by the calls of a measured window (`mcplb-load run --watch-pid`), so that the
//! figure is the steady state's, without the sessions' set-up, the warm-up or the closing.

use std::time::Duration;

/// Counters of a thread, or summed over a process's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcCounters {
    /// Run time on a CPU (`/proc/PID/task/TID/schedstat`, first field), ns.
    pub run_ns: u64,
    /// Voluntary and involuntary context switches (`/proc/PID/task/TID/status`).
    pub switches: u64,
}

/// One reading of every thread of a process.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    threads: Vec<(u32, ProcCounters)>,
}

impl Snapshot {
    /// What the process's threads did between `earlier` and `self`: each thread alive now,
    /// less what it had at `earlier` (all of it for a thread started since). A thread that
    /// ended in between is not counted at all (a proxy's workers live as long as it).
    pub fn since(&self, earlier: &Snapshot) -> ProcCounters {
        let mut sum = ProcCounters::default();
        for (tid, now) in &self.threads {
            let before = earlier
                .threads
                .iter()
                .find(|(t, _)| t == tid)
                .map(|(_, c)| *c)
                .unwrap_or_default();
            sum.run_ns += now.run_ns.saturating_sub(before.run_ns);
            sum.switches += now.switches.saturating_sub(before.switches);
        }
        sum
    }
}

/// Reads every thread of `pid` now. Threads that end while they are read are skipped; an
/// error only when the process itself cannot be read.
pub fn read(pid: u32) -> std::io::Result<Snapshot> {
    let mut snap = Snapshot::default();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let dir = entry.path();
        let (Ok(sched), Ok(status)) = (
            std::fs::read_to_string(dir.join("schedstat")),
            std::fs::read_to_string(dir.join("status")),
        ) else {
            continue;
        };
        let c = ProcCounters {
            run_ns: parse_schedstat(&sched).unwrap_or(0),
            switches: parse_switches(&status),
        };
        snap.threads.push((tid, c));
    }
    Ok(snap)
}

/// The run time field of a `schedstat` line (`run_ns wait_ns timeslices`).
fn parse_schedstat(s: &str) -> Option<u64> {
    s.split_ascii_whitespace().next()?.parse().ok()
}

/// `voluntary_ctxt_switches` + `nonvoluntary_ctxt_switches` of a `status` file.
fn parse_switches(s: &str) -> u64 {
    s.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// How long before the measured window the first reading is taken: the reading thread wakes
/// a little early rather than late, so that no measured call's work falls before it. (A call
/// scheduled in this margin would be counted in the CPU and not in the calls: with paced
/// calls on a grid none is; closed loop, a margin's worth of calls in seconds of them.)
pub const LEAD: Duration = Duration::from_millis(2);

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_schedstat("123456 789 10\n"), Some(123_456));
        assert_eq!(parse_schedstat(""), None);
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t7\nnonvoluntary_ctxt_switches:\t 5\n";
        assert_eq!(parse_switches(status), 12);
        assert_eq!(parse_switches("Name: x\n"), 0);
    }

    #[test]
    fn a_thread_that_ended_counts_nothing_and_a_new_one_all() {
        let c = |run_ns, switches| ProcCounters { run_ns, switches };
        let a = Snapshot {
            threads: vec![(1, c(100, 3)), (2, c(500, 9))],
        };
        let b = Snapshot {
            threads: vec![(1, c(150, 5)), (3, c(40, 1))],
        };
        assert_eq!(b.since(&a), c(50 + 40, 2 + 1));
        assert_eq!(a.since(&b), c(500, 9));
    }

    #[test]
    fn reads_this_process_and_sees_it_run() {
        let me = std::process::id();
        let a = read(me).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        // A running thread's run time is brought up to date when it is switched out.
        std::thread::sleep(Duration::from_millis(2));
        let b = read(me).unwrap();
        assert!(b.since(&a).run_ns > 0, "{a:?} -> {b:?}");
        assert!(read(u32::MAX).is_err());
    }
}
