//! What the worker threads of one mock server share, built so that the request path takes
//! no lock that another core takes too: counters are per thread (written by their thread
//! only, summed when read), a session id is checked by its number against one atomic
//! counter (a lock only once some session has been deleted), and the recorded headers are
//! locked only when a value differs from what the connection last saw there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Tools counted without a lock (the mock's own); other names go to a map.
pub(crate) const KNOWN_TOOLS: [&str; 8] = [
    "echo",
    "whoami",
    "slow",
    "progress",
    "big",
    "fail",
    "tool_error",
    "wrong_id",
];

/// Headers whose last value is recorded (lowercase), for
/// [`crate::MockServer::last_header`].
pub(crate) const RECORDED_HEADERS: [&str; 4] = [
    "host",
    "authorization",
    "mcp-protocol-version",
    "last-event-id",
];

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds `n` to a counter only one thread writes: a plain load and store, no locked
/// instruction.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}

/// One worker thread's counters, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct ThreadCounts {
    requests: AtomicU64,
    known_tools: [AtomicU64; KNOWN_TOOLS.len()],
    other_tools: Mutex<HashMap<String, u64>>,
}

impl ThreadCounts {
    /// Counts `n` JSON-RPC messages. Only the owning thread calls it.
    pub(crate) fn add_requests(&self, n: u64) {
        bump(&self.requests, n);
    }

    /// Counts a `tools/call` of `name`. Only the owning thread calls it.
    pub(crate) fn add_tool(&self, name: &str) {
        match KNOWN_TOOLS.iter().position(|t| *t == name) {
            Some(i) => bump(&self.known_tools[i], 1),
            None => *lock(&self.other_tools).entry(name.to_string()).or_insert(0) += 1,
        }
    }

    /// Counts a `tools/call` of `KNOWN_TOOLS[index]`. Only the owning thread calls it.
    pub(crate) fn add_known_tool(&self, index: usize) {
        if let Some(c) = self.known_tools.get(index) {
            bump(c, 1);
        }
    }
}

/// The counters of all threads.
pub(crate) struct Counts {
    threads: Box<[ThreadCounts]>,
}

impl Counts {
    pub(crate) fn new(threads: usize) -> Counts {
        Counts {
            threads: (0..threads.max(1))
                .map(|_| ThreadCounts::default())
                .collect(),
        }
    }

    /// The counters of worker `index`.
    pub(crate) fn thread(&self, index: usize) -> &ThreadCounts {
        &self.threads[index % self.threads.len()]
    }

    pub(crate) fn requests(&self) -> u64 {
        self.threads
            .iter()
            .map(|t| t.requests.load(Ordering::Relaxed))
            .sum()
    }

    pub(crate) fn tool_calls(&self, tool: &str) -> u64 {
        match KNOWN_TOOLS.iter().position(|t| *t == tool) {
            Some(i) => self
                .threads
                .iter()
                .map(|t| t.known_tools[i].load(Ordering::Relaxed))
                .sum(),
            None => self
                .threads
                .iter()
                .map(|t| lock(&t.other_tools).get(tool).copied().unwrap_or(0))
                .sum(),
        }
    }
}

/// The sessions a server issued: `NAME-N` for N = 1, 2, …; open unless deleted.
pub(crate) struct Sessions {
    prefix: String,
    issued: AtomicU64,
    ended: Mutex<HashSet<u64>>,
    any_ended: AtomicBool,
}

impl Sessions {
    pub(crate) fn new(name: &str) -> Sessions {
        Sessions {
            prefix: format!("{name}-"),
            issued: AtomicU64::new(0),
            ended: Mutex::new(HashSet::new()),
            any_ended: AtomicBool::new(false),
        }
    }

    /// Issues a new session id.
    pub(crate) fn open(&self) -> String {
        let n = self.issued.fetch_add(1, Ordering::AcqRel) + 1;
        format!("{}{n}", self.prefix)
    }

    /// The number of an id this server issued (written exactly as it issued it).
    fn number(&self, id: &str) -> Option<u64> {
        let digits = id.strip_prefix(self.prefix.as_str())?;
        if digits.is_empty()
            || digits.len() > 19
            || digits.starts_with('0')
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let n: u64 = digits.parse().ok()?;
        (n <= self.issued.load(Ordering::Acquire)).then_some(n)
    }

    /// Whether `id` was issued and not deleted.
    pub(crate) fn is_open(&self, id: &str) -> bool {
        self.number(id).is_some_and(|n| {
            !self.any_ended.load(Ordering::Acquire) || !lock(&self.ended).contains(&n)
        })
    }

    /// Ends an open session; false if `id` is not one.
    pub(crate) fn end(&self, id: &str) -> bool {
        let Some(n) = self.number(id) else {
            return false;
        };
        let mut ended = lock(&self.ended);
        self.any_ended.store(true, Ordering::Release);
        ended.insert(n)
    }

    /// Sessions issued and not deleted.
    pub(crate) fn open_count(&self) -> usize {
        let issued = self.issued.load(Ordering::Acquire);
        let ended = lock(&self.ended).len() as u64;
        usize::try_from(issued.saturating_sub(ended)).unwrap_or(usize::MAX)
    }
}

/// The last value seen of each of [`RECORDED_HEADERS`], on any connection.
pub(crate) struct RecordedHeaders {
    values: Mutex<[Option<String>; RECORDED_HEADERS.len()]>,
    /// Rises with every change of `values`, always under its lock.
    generation: AtomicU64,
}

/// What one connection knows of [`RecordedHeaders`]: the values it last saw there, valid
/// while the generation has not moved.
pub(crate) struct HeaderCache {
    generation: u64,
    values: [Option<String>; RECORDED_HEADERS.len()],
}

impl Default for HeaderCache {
    fn default() -> Self {
        HeaderCache {
            generation: u64::MAX,
            values: Default::default(),
        }
    }
}

impl RecordedHeaders {
    pub(crate) fn new() -> RecordedHeaders {
        RecordedHeaders {
            values: Mutex::new(Default::default()),
            generation: AtomicU64::new(0),
        }
    }

    /// Records the headers of one request (`None`: absent, which changes nothing).
    pub(crate) fn record(
        &self,
        cache: &mut HeaderCache,
        seen: &[Option<&str>; RECORDED_HEADERS.len()],
    ) {
        let same = |cache: &HeaderCache| {
            seen.iter()
                .zip(&cache.values)
                .all(|(s, c)| s.is_none() || *s == c.as_deref())
        };
        if seen.iter().all(Option::is_none)
            || (self.generation.load(Ordering::Acquire) == cache.generation && same(cache))
        {
            return;
        }
        let mut values = lock(&self.values);
        if self.generation.load(Ordering::Relaxed) != cache.generation {
            cache.values = Default::default();
        }
        for ((seen, value), cached) in seen.iter().zip(values.iter_mut()).zip(&mut cache.values) {
            let Some(v) = seen else { continue };
            if value.as_deref() != Some(*v) {
                *value = Some(v.to_string());
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            let c = cached.get_or_insert_with(String::new);
            c.clear();
            c.push_str(v);
        }
        cache.generation = self.generation.load(Ordering::Relaxed);
    }

    /// The last value of `name` (lowercase).
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        let i = RECORDED_HEADERS.iter().position(|h| *h == name)?;
        lock(&self.values)[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_numbers() {
        let s = Sessions::new("a-b");
        assert!(!s.is_open("a-b-1"));
        assert_eq!(s.open(), "a-b-1");
        assert_eq!(s.open(), "a-b-2");
        for bad in [
            "a-b-01", "a-b-3", "a-b-", "a-b-+1", "a-1", "x-b-1", "a-b-1 ",
        ] {
            assert!(!s.is_open(bad), "{bad}");
        }
        assert!(s.is_open("a-b-1") && s.is_open("a-b-2"));
        assert!(s.end("a-b-1"));
        assert!(!s.end("a-b-1"));
        assert!(!s.is_open("a-b-1") && s.is_open("a-b-2"));
        assert_eq!(s.open_count(), 1);
    }

    #[test]
    fn headers_change_and_come_back() {
        let h = RecordedHeaders::new();
        let (mut a, mut b) = (HeaderCache::default(), HeaderCache::default());
        h.record(&mut a, &[Some("x"), None, None, None]);
        assert_eq!(h.get("host").as_deref(), Some("x"));
        h.record(&mut b, &[Some("y"), Some("k"), None, None]);
        assert_eq!(h.get("host").as_deref(), Some("y"));
        // The first connection sees "x" again: the value moved since it last wrote it.
        h.record(&mut a, &[Some("x"), None, None, None]);
        assert_eq!(h.get("host").as_deref(), Some("x"));
        assert_eq!(h.get("authorization").as_deref(), Some("k"));
        h.record(&mut b, &[None, Some("k2"), None, None]);
        h.record(&mut a, &[Some("x"), None, None, Some("7")]);
        assert_eq!(h.get("authorization").as_deref(), Some("k2"));
        assert_eq!(h.get("last-event-id").as_deref(), Some("7"));
        assert_eq!(h.get("host").as_deref(), Some("x"));
    }

    #[test]
    fn counts_sum_over_threads() {
        let c = Counts::new(2);
        c.thread(0).add_requests(2);
        c.thread(1).add_requests(3);
        c.thread(0).add_tool("echo");
        c.thread(1).add_known_tool(0);
        c.thread(1).add_tool("custom");
        assert_eq!(c.requests(), 5);
        assert_eq!(c.tool_calls("echo"), 2);
        assert_eq!(c.tool_calls("custom"), 1);
        assert_eq!(c.tool_calls("other"), 0);
    }
}
