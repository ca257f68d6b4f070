//! OpenTelemetry traces (`[telemetry]`): each request continues the caller's W3C trace (its
//! `traceparent` header, or `params._meta.traceparent`) or starts one, passes mcplb's span on
//! to the backend as its parent, and, when the trace is sampled, ends as one span with the
//! MCP attributes. Spans leave the worker through a bounded lock-free queue to one exporter
//! thread, which batches them and POSTs them as OTLP/HTTP protobuf (`export`).
//!
//! Nothing here runs on the request path unless `[telemetry]` is configured; an unsampled
//! request costs two random numbers and the `traceparent` it passes on, no allocation.

pub mod context;
pub mod export;

use std::sync::atomic::Ordering;

use crossbeam_channel::{Sender, TrySendError};

pub use context::{parse_traceparent, Parent, TraceContext};
pub use export::{AttrValue, ExportTarget, SpanRecord};

/// Spans waiting for the exporter at most; past it a worker drops its span (counted).
pub const QUEUE: usize = 8192;

/// The workers' side of the exporter: a sender into its queue. The exporter thread ends when
/// the last `Tracer` is dropped (after a reload to another collector, or at exit).
pub struct Tracer {
    tx: Sender<SpanRecord>,
    /// Where its exporter sends.
    pub target: ExportTarget,
}

impl Tracer {
    /// Starts an exporter thread for `target`.
    pub fn start(target: ExportTarget) -> std::io::Result<Tracer> {
        let tls = if target.https {
            let host = crate::config::host_of(&target.authority);
            let tls = crate::tls::UpstreamTls::build(host, target.ca.as_deref(), None, None)
                .map_err(std::io::Error::other)?;
            Some(tls)
        } else {
            None
        };
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let t = target.clone();
        std::thread::Builder::new()
            .name("mcplb-otlp".into())
            .spawn(move || export::run(rx, t, tls))?;
        Ok(Tracer { tx, target })
    }

    /// Hands a finished span to the exporter without waiting: a full queue drops it.
    pub fn submit(&self, span: SpanRecord) {
        // Counted first, so the exporter never takes it below zero.
        export::PENDING.fetch_add(1, Ordering::Relaxed);
        match self.tx.try_send(span) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                export::PENDING.fetch_sub(1, Ordering::Relaxed);
                export::SPANS_DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Waits until the spans already handed over are exported (or given up), at most `timeout`:
/// at shutdown, so that the last requests' spans are not lost with the process.
pub fn flush(timeout: std::time::Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while export::PENDING.load(Ordering::Relaxed) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// The trace of a request: the caller's `traceparent` header, else its
/// `params._meta.traceparent`, continued; else a new trace sampled at `ratio`.
pub fn decide(header: Option<&[u8]>, meta: Option<&[u8]>, ratio: f64) -> TraceContext {
    let parent = header
        .and_then(parse_traceparent)
        .or_else(|| meta.and_then(parse_traceparent));
    TraceContext::decide(parent, ratio, (rand::random(), rand::random()))
}

/// The counters `/metrics` shows, as (name, help, value).
pub fn counters() -> [(&'static str, &'static str, u64); 4] {
    let v = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    [
        (
            "trace_spans_exported",
            "Spans the OTLP collector accepted.",
            v(&export::SPANS_EXPORTED),
        ),
        (
            "trace_spans_dropped",
            "Spans dropped because the exporter's queue was full (workers never wait).",
            v(&export::SPANS_DROPPED),
        ),
        (
            "trace_spans_failed",
            "Spans dropped after the collector failed every try or refused them.",
            v(&export::SPANS_FAILED),
        ),
        (
            "trace_export_retries",
            "OTLP export requests sent again after a failure.",
            v(&export::EXPORT_RETRIES),
        ),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// A collector that takes the connection and never answers holds the exporter on its
    /// first batch: the queue fills, and every span past it is dropped and counted, while
    /// `submit` returns at once.
    #[test]
    fn a_full_queue_drops_spans_and_counts_them() {
        let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let tracer = Tracer::start(ExportTarget {
            authority: stuck.local_addr().expect("addr").to_string(),
            https: false,
            ca: None,
            path: "/v1/traces".into(),
            service_name: "test".into(),
        })
        .expect("exporter");
        let span = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: None,
            name: "ping".into(),
            start_unix_ns: 1,
            end_unix_ns: 2,
            error: None,
            attrs: Vec::new(),
        };
        let before = export::SPANS_DROPPED.load(Ordering::Relaxed);
        let extra = 300;
        for _ in 0..QUEUE + export::MAX_BATCH + extra {
            tracer.submit(span.clone());
        }
        let dropped = export::SPANS_DROPPED.load(Ordering::Relaxed) - before;
        // The exporter took at most one batch off the queue before it stalled.
        assert!(dropped >= extra as u64, "{dropped}");
        assert!(dropped <= (export::MAX_BATCH + extra) as u64, "{dropped}");
    }
}
