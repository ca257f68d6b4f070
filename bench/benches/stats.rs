//! Cost of the admin port's statistics on a core: recording one request's latencies (total,
//! upstream and own time for its server group, backend, method and tool), and the
//! once-a-second flush of a core's recorder into the hub with 64 tools called in that second.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use mcplb::control::stats::{CoreRecorder, Sample, StatsHub};

fn record(c: &mut Criterion) {
    let mut rec = CoreRecorder::new(&[4]);
    let tool = rec.tool_slot("search");
    let mut i = 0u64;
    c.bench_function("stats/record_tools_call", |b| {
        b.iter(|| {
            i = i.wrapping_add(7919);
            rec.record(black_box(Sample {
                group: 0,
                backend: Some((i % 4) as usize),
                method: 3,
                tool: Some(tool),
                total_us: 50 + i % 5000,
                upstream_us: 40 + i % 4000,
                first_event_us: None,
            }));
        })
    });
    c.bench_function("stats/tool_slot_lookup", |b| {
        b.iter(|| black_box(rec.tool_slot(black_box("search"))))
    });
}

/// One second of a busy core: `per_second` calls spread over 64 tools and 4 backends, with
/// latencies from 50 µs to about 20 ms; then the flush (only the flush is timed).
fn flush(c: &mut Criterion) {
    for per_second in [1_000u64, 20_000] {
        let hub = StatsHub::new();
        let mut rec = CoreRecorder::new(&[4]);
        let tools: Vec<usize> = (0..64)
            .map(|t| rec.tool_slot(&format!("tool_{t:02}")))
            .collect();
        let start = Instant::now();
        let mut i = 0u64;
        let mut second = 0u64;
        c.bench_function(&format!("stats/flush_64_tools_{per_second}_calls"), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    for _ in 0..per_second {
                        i = i.wrapping_add(7919);
                        let total = 50 + (i % 997) * (1 + i % 20);
                        rec.record(Sample {
                            group: 0,
                            backend: Some((i % 4) as usize),
                            method: 3,
                            tool: Some(tools[(i % 64) as usize]),
                            total_us: total,
                            upstream_us: total * 9 / 10,
                            first_event_us: None,
                        });
                    }
                    second += 1;
                    let now = start + Duration::from_secs(second);
                    let t = Instant::now();
                    rec.flush_into(&hub, now);
                    spent += t.elapsed();
                }
                spent
            })
        });
        // Memory after the run (the `footprint` lines need the chunked distributions).
        println!(
            "{per_second} calls/s over 64 tools: core recorder {} KiB, hub {} KiB",
            rec.footprint() / 1024,
            hub.footprint() / 1024
        );
    }
}

criterion_group!(benches, record, flush);
criterion_main!(benches);
