//! Cost of recording one request's latencies (the admin port's statistics): total, upstream
//! and own-time histograms for its server group, backend, method and tool, on one core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use mcplb::control::stats::{CoreRecorder, Sample};

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

criterion_group!(benches, record);
criterion_main!(benches);
