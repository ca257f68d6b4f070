//! The JSON access log: one line per request, buffered per core (no lock per request) and
//! handed, every 250 ms or every 64 KiB, to one writer thread that writes each buffer with
//! one `write` (`O_APPEND`), so cores never interleave inside a line and a worker never waits
//! for the disk or a blocked stderr. When the writer falls behind by [`QUEUED_BUFFERS`]
//! buffers, further ones are dropped, counted (`access_log_lines_dropped`,
//! `audit_lines_dropped` on `/stats` and `/metrics`) and reported in the log. The file is opened
//! again by each new configuration state, so `kill -HUP` after a log rotation writes to the
//! new file (the old one is closed once its last queued buffer is written).
//!
//! The audit trail (`[audit]`, `data_path::audit`) is a second log of this kind: its own
//! file and per-core buffers, the same writer thread and queue.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// A core's buffer is handed to the writer when it holds this much (or every 250 ms).
pub(crate) const FLUSH_BYTES: usize = 64 * 1024;

/// Buffers waiting for the writer thread at most (up to about 4 MiB); past it they are dropped.
pub(crate) const QUEUED_BUFFERS: usize = 64;

/// Where a core's lines go: the file opened for its configuration state, or stderr.
struct Sink {
    file: Option<File>,
}

enum Job {
    Write(Arc<Sink>, Vec<u8>),
    /// Everything queued before it is written: answer on the channel.
    Drain(SyncSender<()>),
}

/// Lines dropped because the writer was behind (reported by the writer, then reset).
static DROPPED: AtomicU64 = AtomicU64::new(0);
static WRITER: OnceLock<Option<SyncSender<Job>>> = OnceLock::new();

/// The writer thread's queue, started on first use (`None` if the thread could not start).
fn writer() -> Option<&'static SyncSender<Job>> {
    WRITER
        .get_or_init(|| {
            let (tx, rx) = sync_channel(QUEUED_BUFFERS);
            match std::thread::Builder::new()
                .name("mcplb-access-log".into())
                .spawn(move || write_loop(rx))
            {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the access log writer: access log off");
                    None
                }
            }
        })
        .as_ref()
}

fn write_loop(rx: Receiver<Job>) {
    yield_to_workers();
    while let Ok(job) = rx.recv() {
        match job {
            Job::Write(sink, buf) => {
                let r = match &sink.file {
                    Some(f) => {
                        let mut f = f;
                        f.write_all(&buf)
                    }
                    None => io::stderr().lock().write_all(&buf),
                };
                if let Err(e) = r {
                    tracing::warn!(error = %e, "access log write failed");
                }
            }
            Job::Drain(done) => {
                let _ = done.send(());
            }
        }
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                lines = dropped,
                "access log lines dropped: the log could not be written fast enough"
            );
        }
    }
}

/// Makes the writer thread a batch thread (`SCHED_BATCH`): woken by a worker's buffer, it
/// does not preempt that worker (or another) but runs when a core is free or at the next
/// scheduler tick. As a normal thread it preempted the worker that woke it about once per
/// buffer (two context switches on a busy core, measured: 0.009 per audited request at
/// 64 KiB buffers). Its share of the CPU is unchanged; where the call fails it stays normal.
#[allow(unsafe_code)]
fn yield_to_workers() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's (pid 0) policy; `param` is a valid, live parameter.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "log writer stays a normal thread");
    }
}

/// A core's buffered JSON access log.
pub(crate) struct AccessLog {
    pub(crate) buf: Vec<u8>,
    sink: Arc<Sink>,
    pub(crate) seq: u64,
}

impl AccessLog {
    /// Opens `target` (a file path, appended to, or `-` for stderr) for one core state.
    pub(crate) fn open(target: &str) -> io::Result<AccessLog> {
        let file = if target == "-" {
            None
        } else {
            Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        // Started now, so a shutdown knows there are lines to write out.
        let _ = writer();
        Ok(AccessLog {
            buf: Vec::with_capacity(FLUSH_BYTES),
            sink: Arc::new(Sink { file }),
            seq: 0,
        })
    }

    /// [`AccessLog::open`], or `None` when `target` cannot be opened (said in the log, as
    /// the `what` log).
    pub(crate) fn open_or_say(target: &str, what: &str) -> Option<AccessLog> {
        match AccessLog::open(target) {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::error!(path = target, error = %e, "cannot open the {what}");
                None
            }
        }
    }

    /// The next line's sequence number on this core and the time now (ms since the epoch).
    pub(crate) fn stamp(&mut self) -> (u64, u128) {
        self.seq += 1;
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        (self.seq, ts)
    }

    /// Hands the buffered lines to the writer thread (never waits for it). How many lines were
    /// dropped because its queue was full (for the core's statistics).
    #[must_use = "dropped lines are counted in the core's statistics"]
    pub(crate) fn flush(&mut self) -> u64 {
        if self.buf.is_empty() {
            return 0;
        }
        let buf = std::mem::replace(&mut self.buf, Vec::with_capacity(FLUSH_BYTES));
        let Some(w) = writer() else { return 0 };
        match w.try_send(Job::Write(self.sink.clone(), buf)) {
            Err(TrySendError::Full(Job::Write(_, buf))) => {
                let lines = memchr::memchr_iter(b'\n', &buf).count() as u64;
                DROPPED.fetch_add(lines, Ordering::Relaxed);
                lines
            }
            _ => 0,
        }
    }
}

/// Whether an access log was written in this process (its writer thread started).
pub(crate) fn in_use() -> bool {
    WRITER.get().is_some_and(Option::is_some)
}

/// Waits (up to `timeout`) until every buffer handed to the writer so far is written: at exit.
pub(crate) fn drain(timeout: Duration) {
    let Some(w) = WRITER.get().and_then(Option::as_ref) else {
        return;
    };
    let (tx, rx) = sync_channel(1);
    let deadline = std::time::Instant::now() + timeout;
    let mut job = Job::Drain(tx);
    // The queue may be full: try until the deadline rather than block on it.
    loop {
        match w.try_send(job) {
            Ok(()) => break,
            Err(TrySendError::Full(j)) if std::time::Instant::now() < deadline => {
                job = j;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(_) => return,
        }
    }
    let _ = rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
}
