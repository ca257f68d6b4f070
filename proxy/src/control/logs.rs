//! Logging that never blocks a worker.
//!
//! Log lines reach stderr through a writer thread (`tracing-appender`'s non-blocking writer):
//! a worker formats its line and queues it, nothing more. When stderr cannot keep up (a pipe
//! nobody reads, a slow terminal or log shipper) and the queue is full, lines are dropped and
//! counted, and the writer thread says how many before the next line it writes. The queue is
//! drained when the [`LogGuard`] drops (at exit; bounded to about a second). Panic messages do
//! not go through it: Rust's panic hook writes them to stderr directly.
//!
//! Warnings on the request path, which a failing backend can repeat thousands of times a
//! second, go through [`first_in_window`]: the first of a kind per backend is logged, repeats
//! within [`REPEAT_WINDOW`] are counted per core, and [`summarize`] (called once a second by
//! each worker) logs how many ("upstream failure: 37 more in the last 10 s"). State changes
//! (a backend ejected or back, a reload) are logged where they happen, never limited.

use std::cell::RefCell;
use std::io::{self, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

/// Log lines queued for the writer thread at most; past it, lines are dropped and counted.
/// (About 6 MiB of lines of 200 bytes.)
pub const QUEUED_LINES: usize = 32 * 1024;

/// How long repeats of a request-path warning are counted before a summary line.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(10);

/// Kinds of repeating warnings tracked per core at most (kinds come from the config's backend
/// names and fixed messages, so this is never reached in practice; past it, lines are logged
/// unlimited rather than lost).
const MAX_KINDS: usize = 256;

/// Keeps the log writer thread running; dropping it writes out what is queued (waiting about a
/// second at most, so a blocked stderr cannot hold up the exit).
pub struct LogGuard {
    _worker: WorkerGuard,
    dropped: ErrorCounter,
}

impl LogGuard {
    /// Log lines dropped so far because the queue was full.
    pub fn dropped_lines(&self) -> usize {
        self.dropped.dropped_lines()
    }
}

/// Installs the global log subscriber: `filter` (an `EnvFilter` directive such as `info` or
/// `mcplb=debug`), formatted lines to stderr through the writer thread; colours when stderr is
/// a terminal.
pub fn init(filter: tracing_subscriber::EnvFilter) -> LogGuard {
    let counter = Arc::new(OnceLock::new());
    let stderr = Stderr {
        out: io::BufWriter::new(io::stderr()),
        dropped: counter.clone(),
        reported: 0,
    };
    let (writer, worker) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("mcplb-log")
        .finish(stderr);
    let dropped = writer.error_counter();
    let _ = counter.set(dropped.clone());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    LogGuard {
        _worker: worker,
        dropped,
    }
}

/// stderr as the writer thread sees it: buffered (a batch of queued lines is one write), and
/// saying how many lines were dropped since it last said so, before the next line.
struct Stderr {
    out: io::BufWriter<io::Stderr>,
    dropped: Arc<OnceLock<ErrorCounter>>,
    reported: usize,
}

impl Stderr {
    fn report_dropped(&mut self) -> io::Result<()> {
        let Some(dropped) = self.dropped.get().map(ErrorCounter::dropped_lines) else {
            return Ok(());
        };
        if dropped > self.reported {
            let n = dropped - self.reported;
            self.reported = dropped;
            writeln!(
                self.out,
                "mcplb: {n} log line(s) dropped: stderr did not keep up (the queue holds \
                 {QUEUED_LINES} lines)"
            )?;
        }
        Ok(())
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.report_dropped()?;
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.report_dropped()?;
        self.out.flush()
    }
}

/// One kind of repeating warning on this core, and its repeats in the current window.
struct Repeat {
    what: &'static str,
    backend: Box<str>,
    detail: &'static str,
    info: bool,
    since: Instant,
    repeats: u64,
}

thread_local! {
    static REPEATS: RefCell<Vec<Repeat>> = const { RefCell::new(Vec::new()) };
}

/// Whether to log this occurrence of the warning `what` about `backend` (a backend's name, or
/// empty) with `detail` (its kind, e.g. the error) now: `true` for the first in a window; a
/// repeat within [`REPEAT_WINDOW`] is counted instead and summarized by [`summarize`].
/// Allocates only for a kind not seen in the current window.
pub(crate) fn first_in_window(what: &'static str, backend: &str, detail: &'static str) -> bool {
    admit(what, backend, detail, false, Instant::now())
}

/// [`first_in_window`] for a line logged at `info` level (its summary is too).
pub(crate) fn first_in_window_info(
    what: &'static str,
    backend: &str,
    detail: &'static str,
) -> bool {
    admit(what, backend, detail, true, Instant::now())
}

fn admit(
    what: &'static str,
    backend: &str,
    detail: &'static str,
    info: bool,
    now: Instant,
) -> bool {
    REPEATS.with(|r| {
        let mut r = r.borrow_mut();
        if let Some(k) = r
            .iter_mut()
            .find(|k| k.what == what && k.detail == detail && *k.backend == *backend)
        {
            k.repeats += 1;
            return false;
        }
        if r.len() < MAX_KINDS {
            r.push(Repeat {
                what,
                backend: backend.into(),
                detail,
                info,
                since: now,
                repeats: 0,
            });
        }
        true
    })
}

/// Whether this thread tracks a kind of warning whose window has not been summarized yet
/// ([`summarize`] still has work).
pub(crate) fn tracking() -> bool {
    REPEATS.with(|r| !r.borrow().is_empty())
}

/// Logs a summary of every kind whose window has passed with repeats ("... 37 more in the last
/// 10 s"), and forgets the kinds that did not repeat (their next occurrence is logged in full).
/// Each worker calls it once a second.
pub(crate) fn summarize(now: Instant) {
    REPEATS.with(|r| {
        r.borrow_mut().retain_mut(|k| {
            let age = now.saturating_duration_since(k.since);
            if age < REPEAT_WINDOW {
                return true;
            }
            if k.repeats == 0 {
                return false;
            }
            let (n, secs) = (k.repeats, age.as_secs());
            if k.info {
                tracing::info!(backend = %k.backend, detail = k.detail, "{}: {n} more in the last {secs} s", k.what);
            } else {
                tracing::warn!(backend = %k.backend, detail = k.detail, "{}: {n} more in the last {secs} s", k.what);
            }
            k.repeats = 0;
            k.since = now;
            true
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds() -> usize {
        REPEATS.with(|r| r.borrow().len())
    }

    #[test]
    fn the_first_of_a_kind_is_logged_repeats_are_counted_then_summarized() {
        let t0 = Instant::now();
        assert!(admit("upstream failure", "b1", "refused", false, t0));
        for _ in 0..37 {
            assert!(!admit("upstream failure", "b1", "refused", false, t0));
        }
        // Another backend or another kind is a kind of its own.
        assert!(admit("upstream failure", "b2", "refused", false, t0));
        assert!(admit("upstream failure", "b1", "timeout", false, t0));
        let repeats = |b: &str, d: &str| {
            REPEATS.with(|r| {
                r.borrow()
                    .iter()
                    .find(|k| &*k.backend == b && k.detail == d)
                    .map(|k| k.repeats)
            })
        };
        assert_eq!(repeats("b1", "refused"), Some(37));
        // Within the window nothing changes.
        summarize(t0 + Duration::from_secs(3));
        assert_eq!(kinds(), 3);
        // Past it: the repeated kind is summarized and counts anew; the others are forgotten.
        summarize(t0 + REPEAT_WINDOW);
        assert_eq!(kinds(), 1);
        assert_eq!(repeats("b1", "refused"), Some(0));
        let later = t0 + REPEAT_WINDOW + Duration::from_secs(1);
        assert!(!admit("upstream failure", "b1", "refused", false, later));
        assert!(admit("upstream failure", "b2", "refused", false, later));
        // A window with no repeat forgets the kind: the next one is logged in full.
        summarize(t0 + REPEAT_WINDOW * 2);
        summarize(t0 + REPEAT_WINDOW * 3);
        assert_eq!(kinds(), 0);
        assert!(admit("upstream failure", "b1", "refused", false, later));
    }
}
