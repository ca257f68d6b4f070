//! One supervised child process: spawning (from the bridge's long-lived spawner thread, so
//! that `PR_SET_PDEATHSIG` stops children if mcplb dies), a writer thread on stdin fed by a
//! bounded queue, a reader thread on stdout that frames lines with a hard size cap, a stderr
//! thread that logs each line, and stopping (stdin closed, SIGTERM, SIGKILL).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{lock, Inner, Session};

/// Lines queued for a child's stdin before senders are told it is not reading.
const STDIN_QUEUE: usize = 256;
/// Longest stderr line logged whole; the rest of a longer line is cut.
const MAX_STDERR_LINE: usize = 16 * 1024;
/// Bytes of an over-long stdout line kept to find its JSON-RPC id.
const TOO_LONG_HEAD: usize = 512;

/// What a waiting HTTP request receives from the child's stdout.
pub(super) enum Event {
    /// A notification or server request sent while the request is in flight.
    Message(Value),
    /// The answer (its id already restored to the client's), and the HTTP status to use.
    Final { msg: Value, status: u16 },
}

impl Event {
    /// The JSON-RPC message it carries.
    pub(super) fn into_message(self) -> Value {
        match self {
            Event::Message(m) | Event::Final { msg: m, .. } => m,
        }
    }
}

/// A request written to the child and not answered yet, keyed by its bridge id.
pub(super) struct Pending {
    /// The id the client used, restored on the answer.
    pub(super) client_id: Value,
    /// The client's `_meta.progressToken`, replaced by the bridge id on the way in.
    pub(super) progress_token: Option<Value>,
    pub(super) tx: SyncSender<Event>,
    /// Whether server messages may be streamed to this request's client.
    pub(super) streamable: bool,
    /// The number of the session that sent it (0: the bridge's own request).
    pub(super) session: u64,
}

/// Who a process belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// The per-session pool (idle, or bound to one session).
    Pool,
    /// Slot `i` of the shared processes.
    Slot(usize),
}

/// A running (or exited) child.
pub(super) struct Process {
    /// Bridge-unique number.
    pub(super) seq: u64,
    pub(super) pid: u32,
    pub(super) owner: Owner,
    pub(super) started: Instant,
    stdin: Mutex<Option<SyncSender<Vec<u8>>>>,
    pub(super) pending: Mutex<HashMap<u64, Pending>>,
    /// Per-session mode: the session bound to this process.
    pub(super) session: Mutex<Weak<Session>>,
    /// Shared mode: the `initialize` result this process answered, replayed to later sessions.
    pub(super) init_result: Mutex<Option<Value>>,
    /// Shared mode: `notifications/initialized` was sent to this process.
    pub(super) initialized_sent: AtomicBool,
    /// The bridge asked it to stop (its exit is expected).
    pub(super) stopping: AtomicBool,
    exited: Mutex<bool>,
    exited_cv: Condvar,
    /// Log limiter for junk on stdout.
    junk_lines: AtomicU64,
}

/// Why a line could not be queued for a child's stdin.
pub(super) enum SendError {
    /// The queue is full: the child is not reading its input.
    Busy,
    /// The child is gone.
    Gone,
}

impl Process {
    /// Starts a child for `inner`'s command and its three threads, registering it with the
    /// bridge (refused once the bridge is shutting down).
    pub(super) fn start(inner: &Arc<Inner>, owner: Owner) -> io::Result<Arc<Process>> {
        let cfg = &inner.cfg;
        let Some((program, args)) = cfg.command.split_first() else {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        };
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(cfg.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(cwd) = &cfg.cwd {
            cmd.current_dir(cwd);
        }
        prepare_child(&mut cmd);

        let mut procs = lock(&inner.procs);
        if inner.is_shutdown() {
            return Err(io::Error::other("the bridge is shutting down"));
        }
        let mut child = inner.spawner.spawn(cmd)?;
        let pid = child.id();
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            kill_now(&mut child);
            return Err(io::Error::other("child has no stdio pipes"));
        };
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(STDIN_QUEUE);
        let proc = Arc::new(Process {
            seq: inner.next_id.fetch_add(1, Ordering::Relaxed),
            pid,
            owner,
            started: Instant::now(),
            stdin: Mutex::new(Some(tx)),
            pending: Mutex::new(HashMap::new()),
            session: Mutex::new(Weak::new()),
            init_result: Mutex::new(None),
            initialized_sent: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
            exited: Mutex::new(false),
            exited_cv: Condvar::new(),
            junk_lines: AtomicU64::new(0),
        });
        let name = cfg.name.clone();
        let threads: io::Result<()> = (|| {
            let n = name.clone();
            spawn_thread("stdio-stdin", move || {
                let mut stdin = stdin;
                for mut line in rx {
                    line.push(b'\n');
                    if let Err(e) = stdin.write_all(&line).and_then(|()| stdin.flush()) {
                        tracing::debug!(backend = %n, pid, error = %e, "stdin of stdio server closed");
                        break;
                    }
                }
            })?;
            let n = name.clone();
            spawn_thread("stdio-stderr", move || log_stderr(stderr, &n, pid))?;
            Ok(())
        })();
        if let Err(e) = threads {
            kill_now(&mut child);
            return Err(e);
        }
        let (inner2, proc2) = (inner.clone(), proc.clone());
        let reader = spawn_thread("stdio-stdout", move || {
            read_stdout(&inner2, &proc2, stdout);
            let status = reap(&mut child, pid);
            inner2.on_exit(&proc2, &status);
        });
        if let Err(e) = reader {
            signal(pid, libc::SIGKILL);
            return Err(e);
        }
        procs.insert(proc.seq, proc.clone());
        drop(procs);
        tracing::info!(backend = %name, pid, "started stdio server");
        Ok(proc)
    }

    /// Queues one JSON-RPC message for the child's stdin.
    pub(super) fn send(&self, msg: &Value) -> Result<(), SendError> {
        let line = serde_json::to_vec(msg).map_err(|_| SendError::Gone)?;
        let guard = lock(&self.stdin);
        let Some(tx) = guard.as_ref() else {
            return Err(SendError::Gone);
        };
        match tx.try_send(line) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(SendError::Busy),
            Err(TrySendError::Disconnected(_)) => Err(SendError::Gone),
        }
    }

    /// Whether the child has exited and been reaped.
    pub(super) fn has_exited(&self) -> bool {
        *lock(&self.exited)
    }

    pub(super) fn mark_exited(&self) {
        *lock(&self.exited) = true;
        self.exited_cv.notify_all();
    }

    /// Waits up to `d` for the child to exit; true when it has.
    fn wait_exit(&self, d: Duration) -> bool {
        let deadline = Instant::now() + d;
        let mut g = lock(&self.exited);
        while !*g {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = match self.exited_cv.wait_timeout(g, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Stops the child: closes its stdin, then SIGTERM, then SIGKILL after 2 s. Blocks until it
    /// has exited (or 4 s passed, which only a process stuck in the kernel takes).
    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        lock(&self.stdin).take();
        if self.wait_exit(Duration::from_millis(100)) {
            return;
        }
        signal(self.pid, libc::SIGTERM);
        if self.wait_exit(Duration::from_secs(2)) {
            return;
        }
        signal(self.pid, libc::SIGKILL);
        self.wait_exit(Duration::from_secs(2));
    }

    /// Whether a junk stdout line should be logged (the first ten, then one in a thousand).
    pub(super) fn log_junk(&self) -> bool {
        let n = self.junk_lines.fetch_add(1, Ordering::Relaxed);
        n < 10 || n.is_multiple_of(1000)
    }
}

fn spawn_thread(name: &str, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name.to_owned()).spawn(f)
}

/// Children get their own process group (so a stop reaches what they start) and SIGTERM when
/// the thread that spawned them (the bridge's spawner thread) dies, so that they are not
/// orphaned even if mcplb is killed.
#[allow(unsafe_code)]
fn prepare_child(cmd: &mut Command) {
    use std::os::unix::process::CommandExt as _;
    cmd.process_group(0);
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            #[cfg(target_os = "linux")]
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `sig` to the child and its process group.
#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return;
    }
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(-pid, sig);
        libc::kill(pid, sig);
    }
}

fn kill_now(child: &mut Child) {
    signal(child.id(), libc::SIGKILL);
    let _ = child.wait();
}

/// Waits for a child whose stdout closed: it usually exits at once; one that closed stdout
/// but keeps running is killed after 2 s.
fn reap(child: &mut Child, pid: u32) -> String {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.to_string(),
            Ok(None) if Instant::now() >= deadline => {
                signal(pid, libc::SIGKILL);
                return match child.wait() {
                    Ok(status) => format!("{status} (killed: it closed stdout but kept running)"),
                    Err(e) => format!("unknown ({e})"),
                };
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return format!("unknown ({e})"),
        }
    }
}

/// A line framer with a hard cap: memory stays at most `max` bytes whatever the child writes.
/// Of a longer line only its first bytes are kept (to find the JSON-RPC id it answered).
pub(super) struct LineCap {
    max: usize,
    buf: Vec<u8>,
    discarding: bool,
    head: Vec<u8>,
    dropped: usize,
}

/// One framed line.
pub(super) enum Frame<'a> {
    /// A complete line without its `\n` / `\r\n`.
    Line(&'a [u8]),
    /// A line over the cap: its first bytes and its full length.
    TooLong { head: &'a [u8], len: usize },
}

impl LineCap {
    pub(super) fn new(max: usize) -> Self {
        LineCap {
            max,
            buf: Vec::new(),
            discarding: false,
            head: Vec::new(),
            dropped: 0,
        }
    }

    /// Feeds bytes; `out` is called for each completed line.
    pub(super) fn push(&mut self, mut data: &[u8], out: &mut dyn FnMut(Frame<'_>)) {
        while !data.is_empty() {
            match memchr::memchr(b'\n', data) {
                Some(i) => {
                    let (part, rest) = data.split_at(i);
                    self.partial(part);
                    self.finish(out);
                    data = rest.get(1..).unwrap_or_default();
                }
                None => {
                    self.partial(data);
                    break;
                }
            }
        }
    }

    fn partial(&mut self, part: &[u8]) {
        if self.discarding {
            self.dropped = self.dropped.saturating_add(part.len());
        } else if self.buf.len().saturating_add(part.len()) > self.max.saturating_add(1) {
            self.discarding = true;
            self.dropped = self.buf.len().saturating_add(part.len());
            self.head.clear();
            self.head
                .extend(self.buf.iter().chain(part).take(TOO_LONG_HEAD));
            self.buf.clear();
            self.buf.shrink_to(64 * 1024);
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    fn finish(&mut self, out: &mut dyn FnMut(Frame<'_>)) {
        if self.discarding {
            out(Frame::TooLong {
                head: &self.head,
                len: self.dropped,
            });
            self.discarding = false;
            self.dropped = 0;
            self.head.clear();
            return;
        }
        let mut line: &[u8] = &self.buf;
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        if line.len() > self.max {
            out(Frame::TooLong {
                head: line
                    .get(..TOO_LONG_HEAD.min(line.len()))
                    .unwrap_or_default(),
                len: line.len(),
            });
        } else {
            out(Frame::Line(line));
        }
        self.buf.clear();
    }
}

fn read_stdout(inner: &Arc<Inner>, proc: &Arc<Process>, mut stdout: impl Read) {
    let mut framer = LineCap::new(inner.cfg.max_line_bytes);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stdout.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::warn!(backend = %inner.cfg.name, pid = proc.pid, error = %e, "cannot read stdout of stdio server");
                return;
            }
        };
        framer.push(
            chunk.get(..n).unwrap_or_default(),
            &mut |frame| match frame {
                Frame::Line(line) => inner.on_stdout_line(proc, line),
                Frame::TooLong { head, len } => inner.on_too_long(proc, head, len),
            },
        );
    }
}

fn log_stderr(mut stderr: impl Read, name: &str, pid: u32) {
    let mut framer = LineCap::new(MAX_STDERR_LINE);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stderr.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        framer.push(
            chunk.get(..n).unwrap_or_default(),
            &mut |frame| match frame {
                Frame::Line(line) => {
                    let line = String::from_utf8_lossy(line);
                    tracing::info!(backend = %name, pid, "{line}");
                }
                Frame::TooLong { head, len } => {
                    let head = String::from_utf8_lossy(head);
                    tracing::info!(backend = %name, pid, "{head}... ({len} bytes, cut)");
                }
            },
        );
    }
}

/// Spawns children from one long-lived thread: `PR_SET_PDEATHSIG` fires when the *thread*
/// that forked the child exits, so children must not be forked by short-lived threads.
pub(super) struct Spawner {
    tx: Mutex<Option<mpsc::Sender<SpawnJob>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

type SpawnJob = (Command, mpsc::SyncSender<io::Result<Child>>);

impl Spawner {
    pub(super) fn new() -> io::Result<Spawner> {
        let (tx, rx) = mpsc::channel::<SpawnJob>();
        let thread = spawn_thread("stdio-spawner", move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
        })?;
        Ok(Spawner {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply, answer) = mpsc::sync_channel(1);
        let gone = || io::Error::other("the spawner thread is gone");
        lock(&self.tx)
            .as_ref()
            .ok_or_else(gone)?
            .send((cmd, reply))
            .map_err(|_| gone())?;
        answer.recv().map_err(|_| gone())?
    }

    /// Ends the spawner thread (after every child has been stopped).
    pub(super) fn stop(&self) {
        lock(&self.tx).take();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(cap: &mut LineCap, data: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        cap.push(data, &mut |f| {
            out.push(match f {
                Frame::Line(l) => String::from_utf8_lossy(l).into_owned(),
                Frame::TooLong { head, len } => {
                    format!("TOO LONG {len} {}", String::from_utf8_lossy(head))
                }
            })
        });
        out
    }

    #[test]
    fn lines_split_across_pushes_and_crlf() {
        let mut c = LineCap::new(10);
        assert_eq!(frames(&mut c, b"ab"), Vec::<String>::new());
        assert_eq!(frames(&mut c, b"c\r\nde\nf"), vec!["abc", "de"]);
        assert_eq!(frames(&mut c, b"\n"), vec!["f"]);
    }

    #[test]
    fn long_line_is_dropped_with_its_head_and_memory_stays_bounded() {
        let mut c = LineCap::new(4);
        assert!(frames(&mut c, b"{\"id\":7").is_empty());
        for _ in 0..1000 {
            assert!(frames(&mut c, &[b'x'; 1000]).is_empty());
        }
        assert!(c.buf.capacity() <= 64 * 1024);
        let out = frames(&mut c, b"y\nok\n");
        assert_eq!(out.len(), 2);
        assert!(
            out[0].starts_with("TOO LONG 1000008 {\"id\":7"),
            "{}",
            out[0]
        );
        assert_eq!(out[1], "ok");
    }
}
