//! The generator's request path allocates nothing per request: the count of
//! heap allocations in this process (the generator only; the mock backend is a
//! separate `mcplb-load mock` process) grows by far less than one per request.

#![allow(unsafe_code, clippy::unwrap_used, clippy::expect_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use loadtest::{run_load, LoadOptions};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; the only
// extra work is bumping an atomic counter, which never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// A `mcplb-load mock` process on a free port, stopped (by its own PID) on drop.
struct MockProcess {
    child: Child,
    url: String,
}

impl MockProcess {
    fn start(stateless: bool) -> MockProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcplb-load"));
        cmd.args(["mock", "--listen", "127.0.0.1:0"]);
        if stateless {
            cmd.arg("--stateless");
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|u| u.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in the mock's first line: {line:?}"))
            .to_string();
        MockProcess { child, url }
    }
}

impl Drop for MockProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn allocations_for(url: &str, stateless: bool, requests: u64) -> u64 {
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let report = run_load(LoadOptions {
        url: url.to_string(),
        connections: 4,
        threads: 1,
        requests: Some(requests),
        warmup: Duration::ZERO,
        stateless,
        timeout: Duration::from_secs(10),
        ..LoadOptions::default()
    })
    .unwrap();
    let after = ALLOCATIONS.load(Ordering::Relaxed);
    assert_eq!(report.ok, requests, "{report}");
    after - before
}

#[test]
fn no_allocation_per_request() {
    for stateless in [true, false] {
        let mock = MockProcess::start(stateless);
        let few = allocations_for(&mock.url, stateless, 100);
        let many = allocations_for(&mock.url, stateless, 3100);
        let per_request = many.saturating_sub(few) as f64 / 3000.0;
        assert!(
            per_request < 0.05,
            "stateless={stateless}: {few} allocations for 100 requests, {many} for 3100: \
             {per_request:.3} per request"
        );
    }
}
