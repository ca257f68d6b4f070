//! The exporter thread: finished spans arrive from the workers through a bounded lock-free
//! channel (a worker never waits: a full queue drops the span and counts it), are batched,
//! encoded as an OTLP `ExportTraceServiceRequest` (protobuf, the `opentelemetry-proto` types)
//! and POSTed to the collector with the blocking client, retried with backoff when the
//! collector is unreachable or asks for it (429, 502, 503, 504 as the OTLP/HTTP spec says).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

use crate::http::client::HttpClient;
use crate::tls::UpstreamTls;

/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// Longest a span waits in a partial batch.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Tries of one batch before it is dropped (and counted).
const MAX_TRIES: u32 = 5;
/// Deadline of the connect, and of each write and read of an export.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Spans handed to a collector that answered 2xx.
pub static SPANS_EXPORTED: AtomicU64 = AtomicU64::new(0);
/// Spans dropped by a worker because the exporter's queue was full.
pub static SPANS_DROPPED: AtomicU64 = AtomicU64::new(0);
/// Spans dropped after the collector failed every try (or refused the batch).
pub static SPANS_FAILED: AtomicU64 = AtomicU64::new(0);
/// Export requests sent again after a failure.
pub static EXPORT_RETRIES: AtomicU64 = AtomicU64::new(0);
/// Spans queued or being exported (what a shutdown waits for).
pub static PENDING: AtomicU64 = AtomicU64::new(0);

/// One attribute value of a span.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    /// A string.
    Str(String),
    /// An integer.
    Int(i64),
    /// A boolean.
    Bool(bool),
}

/// One finished span, as a worker hands it to the exporter.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This span.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace came from the caller.
    pub parent: Option<[u8; 8]>,
    /// Span name (`tools/call get_weather`).
    pub name: String,
    /// Start and end, nanoseconds since the Unix epoch.
    pub start_unix_ns: u64,
    /// End, nanoseconds since the Unix epoch.
    pub end_unix_ns: u64,
    /// The request failed (5xx, or a JSON-RPC error): the span's status is an error with
    /// this message.
    pub error: Option<String>,
    /// Attributes, in order.
    pub attrs: Vec<(&'static str, AttrValue)>,
}

/// Where the exporter sends, and as which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTarget {
    /// `host:port` of the collector.
    pub authority: String,
    /// Over TLS (`https://`), verified against `ca` or the system roots.
    pub https: bool,
    /// PEM roots for the collector's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// Path of the traces endpoint (`/v1/traces`).
    pub path: String,
    /// The `service.name` resource attribute.
    pub service_name: String,
}

/// Encodes a batch as an OTLP `ExportTraceServiceRequest` (the spans' strings move into it).
pub fn encode(spans: &mut Vec<SpanRecord>, service_name: &str) -> Vec<u8> {
    let kv = |key: &str, v: AttrValue| KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(match v {
                AttrValue::Str(s) => any_value::Value::StringValue(s),
                AttrValue::Int(i) => any_value::Value::IntValue(i),
                AttrValue::Bool(b) => any_value::Value::BoolValue(b),
            }),
        }),
        ..Default::default()
    };
    let spans = spans
        .drain(..)
        .map(|s| Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent.map(|p| p.to_vec()).unwrap_or_default(),
            // Sampled, and whether the parent is remote (bits 8 and 9 of the OTLP flags).
            flags: 1 | 0x100 | if s.parent.is_some() { 0x200 } else { 0 },
            name: s.name,
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: s.start_unix_ns,
            end_time_unix_nano: s.end_unix_ns,
            attributes: s.attrs.into_iter().map(|(k, v)| kv(k, v)).collect(),
            status: Some(match s.error {
                Some(m) => Status {
                    message: m,
                    code: status::StatusCode::Error as i32,
                },
                None => Status::default(),
            }),
            ..Default::default()
        })
        .collect();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", AttrValue::Str(service_name.to_string()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "mcplb".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    req.encode_to_vec()
}

/// The exporter thread's loop: until every sender is gone, gathers up to [`MAX_BATCH`] spans
/// or what came within [`BATCH_DELAY`] of the first, and exports them.
pub fn run(rx: Receiver<SpanRecord>, target: ExportTarget, tls: Option<UpstreamTls>) {
    let target = Connector { target, tls };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut client = None;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        let deadline = Instant::now() + BATCH_DELAY;
        let mut closed = false;
        while batch.len() < MAX_BATCH {
            match rx.recv_deadline(deadline) {
                Ok(s) => batch.push(s),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        let n = batch.len() as u64;
        let body = encode(&mut batch, &target.service_name);
        if export(&mut client, &target, &body) {
            SPANS_EXPORTED.fetch_add(n, Ordering::Relaxed);
        } else {
            SPANS_FAILED.fetch_add(n, Ordering::Relaxed);
        }
        PENDING.fetch_sub(n, Ordering::Relaxed);
        if closed {
            break;
        }
    }
}

/// What one try of an export came to.
enum Tried {
    Done,
    /// Worth another try: the connection failed (`io`), or the collector answered 429, 502,
    /// 503 or 504.
    Again {
        why: String,
        io: bool,
    },
    /// The collector refused the batch for good.
    Refused(String),
}

/// Sends one encoded batch, trying again with backoff; whether the collector took it. A kept
/// connection that fails (the collector closed it while idle) is replaced at once, without
/// counting a retry.
fn export(client: &mut Option<HttpClient>, target: &Connector, body: &[u8]) -> bool {
    let mut backoff = Duration::from_millis(200);
    let mut tries = 0;
    let mut stale_retry = true;
    loop {
        let reused = client.is_some();
        let (why, io) = match try_once(client, target, body) {
            Tried::Done => return true,
            Tried::Refused(why) => {
                warn(target, &why, "the batch is dropped");
                return false;
            }
            Tried::Again { why, io } => (why, io),
        };
        *client = None;
        if reused && io && std::mem::take(&mut stale_retry) {
            continue;
        }
        tries += 1;
        if tries == MAX_TRIES {
            warn(target, &why, "gave up on the batch after 5 tries");
            return false;
        }
        EXPORT_RETRIES.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

fn warn(target: &Connector, why: &str, what: &'static str) {
    if crate::control::logs::first_in_window("trace export failed", &target.authority, what) {
        tracing::warn!(
            collector = %target.authority,
            error = why,
            "trace export failed: {what} (check telemetry.otlp_endpoint and the collector)"
        );
    }
}

/// The target and, for `https://`, its TLS client config (built once, when the exporter starts).
pub(crate) struct Connector {
    target: ExportTarget,
    tls: Option<UpstreamTls>,
}

impl std::ops::Deref for Connector {
    type Target = ExportTarget;
    fn deref(&self) -> &ExportTarget {
        &self.target
    }
}

impl Connector {
    fn connect(&self) -> Result<HttpClient, crate::http::client::ClientError> {
        match &self.tls {
            None => HttpClient::connect_host(&self.authority, IO_TIMEOUT, IO_TIMEOUT),
            Some(tls) => HttpClient::connect_host_tls(&self.authority, IO_TIMEOUT, tls),
        }
    }
}

fn try_once(client: &mut Option<HttpClient>, target: &Connector, body: &[u8]) -> Tried {
    if client.is_none() {
        match target.connect() {
            Ok(c) => {
                let _ = c.set_read_timeout(Some(IO_TIMEOUT));
                *client = Some(c);
            }
            Err(e) => {
                return Tried::Again {
                    why: e.to_string(),
                    io: true,
                }
            }
        }
    }
    let Some(c) = client.as_mut() else {
        return Tried::Again {
            why: "no connection".into(),
            io: true,
        };
    };
    let headers = [("content-type", "application/x-protobuf")];
    match c.request("POST", &target.path, &headers, body) {
        Ok(r) if (200..300).contains(&r.status) => {
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                *client = None;
            }
            Tried::Done
        }
        Ok(r) if matches!(r.status, 429 | 502 | 503 | 504) => Tried::Again {
            why: format!("collector answered {}", r.status),
            io: false,
        },
        Ok(r) => {
            *client = None;
            Tried::Refused(format!("collector answered {}", r.status))
        }
        Err(e) => Tried::Again {
            why: e.to_string(),
            io: true,
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_encodes_as_otlp_and_decodes_back() {
        let s = SpanRecord {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent: Some([3; 8]),
            name: "tools/call add".into(),
            start_unix_ns: 10,
            end_unix_ns: 20,
            error: Some("JSON-RPC error -32601".into()),
            attrs: vec![
                ("mcp.method.name", AttrValue::Str("tools/call".into())),
                ("mcplb.retries", AttrValue::Int(1)),
            ],
        };
        let bytes = encode(&mut vec![s], "svc");
        let req = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        let rs = &req.resource_spans[0];
        let svc = &rs.resource.as_ref().expect("resource").attributes[0];
        assert_eq!(svc.key, "service.name");
        let span = &rs.scope_spans[0].spans[0];
        assert_eq!(span.trace_id, vec![1; 16]);
        assert_eq!(span.parent_span_id, vec![3; 8]);
        assert_eq!(span.name, "tools/call add");
        assert_eq!(span.kind, span::SpanKind::Server as i32);
        assert_eq!(
            span.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        assert_eq!(span.attributes.len(), 2);
        assert_eq!(
            span.attributes[1]
                .value
                .as_ref()
                .and_then(|v| v.value.clone()),
            Some(any_value::Value::IntValue(1))
        );
    }
}
