//! The config file as written: one `serde` struct per TOML table, every key optional so that
//! validation (not deserialization) decides what is missing and says so with the key path.
//!
//! The structs do not use `deny_unknown_fields`: serde would stop at the first unknown key.
//! Unknown keys are collected instead, all of them, while reading (`super::read`).

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
pub(crate) struct RawConfig {
    pub proxy: Option<RawProxy>,
    pub admin: Option<RawAdmin>,
    #[serde(default)]
    pub servers: Vec<RawServer>,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    #[serde(default)]
    pub concurrency: Vec<RawConcurrency>,
    pub cluster: Option<RawCluster>,
    #[serde(default)]
    pub policies: Vec<RawPolicy>,
    pub audit: Option<RawAudit>,
    pub telemetry: Option<RawTelemetry>,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTelemetry {
    pub otlp_endpoint: Option<String>,
    pub ca: Option<String>,
    pub service_name: Option<String>,
    pub sample_ratio: Option<f64>,
}

/// `[cluster]`: the store cluster rate limits share.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCluster {
    pub redis: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<String>,
    pub prefix: Option<String>,
    pub on_unavailable: Option<String>,
    pub max_keys: Option<i64>,
    pub lease_ttl: Option<String>,
    pub timeout: Option<String>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAudit {
    pub log: Option<String>,
    pub arguments: Option<String>,
}

/// `[[policies]]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawPolicy {
    pub server: Option<String>,
    pub effect: Option<String>,
    pub identities: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub claims: Option<BTreeMap<String, String>>,
    pub tools: Option<Vec<String>>,
    pub prompts: Option<Vec<String>>,
    pub resources: Option<Vec<String>>,
    pub methods: Option<Vec<String>>,
}

/// `[[concurrency]]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawConcurrency {
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub resource_prefix: Option<String>,
    pub per: Option<String>,
    pub key: Option<String>,
    pub max: Option<i64>,
    pub queue: Option<i64>,
    pub queue_timeout: Option<String>,
}

/// `[[limits]]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawLimit {
    pub server: Option<String>,
    pub method: Option<String>,
    pub tool: Option<String>,
    pub resource_prefix: Option<String>,
    pub key: Option<String>,
    pub rate: Option<f64>,
    pub burst: Option<i64>,
    pub scope: Option<String>,
    pub on_unavailable: Option<String>,
}

/// `[proxy]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawProxy {
    pub listen: Option<String>,
    pub workers: Option<i64>,
    pub session_key: Option<String>,
    pub session_keys: Option<Vec<String>>,
    pub session_keys_file: Option<String>,
    pub watch_interval: Option<String>,
    pub max_body_bytes: Option<i64>,
    pub max_header_bytes: Option<i64>,
    pub max_headers: Option<i64>,
    pub max_url_bytes: Option<i64>,
    pub max_json_depth: Option<i64>,
    pub max_sse_event_bytes: Option<i64>,
    pub header_timeout: Option<String>,
    pub body_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub linger_time: Option<String>,
    pub linger_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub upstream_idle_timeout: Option<String>,
    pub sse_head_waits: Option<bool>,
    pub upstream_max_idle: Option<i64>,
    pub limit_max_keys: Option<i64>,
    pub access_log: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub max_connections: Option<i64>,
    pub max_connections_per_ip: Option<i64>,
    pub stats: Option<bool>,
    pub reuse_port: Option<bool>,
    pub forwarded: Option<String>,
    pub forwarded_header: Option<String>,
    pub trusted_proxies: Option<Vec<String>>,
    pub proxy_protocol: Option<bool>,
    pub tls: Option<RawTls>,
    pub http2: Option<RawHttp2>,
    pub http3: Option<RawHttp3>,
}

/// `[proxy.http3]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHttp3 {
    pub listen: Option<String>,
    pub max_concurrent_streams: Option<i64>,
    pub max_header_list_size: Option<i64>,
    pub idle_timeout: Option<String>,
    pub stream_receive_window: Option<i64>,
    pub max_resets_per_second: Option<i64>,
    pub max_pings_per_second: Option<i64>,
    pub max_migration_frames_per_second: Option<i64>,
}

/// `[proxy.http2]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHttp2 {
    pub enabled: Option<bool>,
    pub max_concurrent_streams: Option<i64>,
    pub max_header_list_size: Option<i64>,
    pub header_table_size: Option<i64>,
    pub initial_window_size: Option<i64>,
    pub max_resets_per_second: Option<i64>,
    pub max_continuation_frames: Option<i64>,
    pub max_pings_per_second: Option<i64>,
    pub max_settings_per_second: Option<i64>,
}

/// `[proxy.tls]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub reload_interval: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub token: Option<String>,
}

/// `[[servers]]`.
#[derive(Debug, Deserialize)]
pub(crate) struct RawServer {
    pub name: Option<String>,
    pub path: Option<String>,
    #[serde(default)]
    pub backends: Vec<RawBackend>,
    pub balance: Option<String>,
    pub hash_key: Option<String>,
    pub hash_bound: Option<f64>,
    pub max_ejection_percent: Option<i64>,
    pub session_failover: Option<String>,
    pub health: Option<RawHealth>,
    pub allowed_origins: Option<Vec<String>>,
    pub auth: Option<crate::auth::RawAuth>,
    pub legacy_sse: Option<bool>,
    pub era: Option<String>,
    pub era_bridge: Option<bool>,
    pub policy_default: Option<String>,
    pub confirm_timeout: Option<String>,
    pub confirm_destructive: Option<bool>,
    /// A virtual server: other groups whose tools, prompts and resources it combines.
    pub members: Option<Vec<RawMember>>,
    pub prefix_mode: Option<String>,
    pub separator: Option<String>,
    pub list_cache_ttl: Option<String>,
    /// `[servers.cache]`: the response cache.
    pub cache: Option<RawCache>,
}

/// `[servers.cache]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCache {
    pub max_bytes: Option<i64>,
    pub default_ttl: Option<String>,
    pub default_scope: Option<String>,
    pub sessions: Option<String>,
    pub tools: Option<Vec<String>>,
    pub tool_ttl: Option<String>,
    pub tool_scope: Option<String>,
}

/// One entry of a virtual server's `members`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawMember {
    pub server: Option<String>,
    pub prefix: Option<String>,
    pub tools: Option<Vec<String>>,
    pub deny_tools: Option<Vec<String>>,
    pub prompts: Option<Vec<String>>,
    pub deny_prompts: Option<Vec<String>>,
    pub resources: Option<Vec<String>>,
    pub deny_resources: Option<Vec<String>>,
    pub rename: Option<BTreeMap<String, String>>,
    pub overrides: Option<BTreeMap<String, RawToolOverride>>,
    pub failure: Option<String>,
    pub timeout: Option<String>,
}

/// `members[N].overrides.TOOL`: what a member's tool shows instead of its own.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawToolOverride {
    pub title: Option<String>,
    pub description: Option<String>,
    pub annotations: Option<toml::Table>,
}

/// `[servers.health]`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawHealth {
    pub enabled: Option<bool>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<i64>,
    pub unhealthy_threshold: Option<i64>,
    pub method: Option<String>,
}

/// One entry of `backends`: a URL string, or a table.
#[derive(Debug)]
pub(crate) enum RawBackend {
    Url(String),
    Table(Box<RawBackendTable>),
}

/// A `backends` entry written as a table: exactly one of `url`, `command` or `sse`, and the
/// options of its kind.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawBackendTable {
    pub url: Option<String>,
    pub sse: Option<String>,
    pub command: Option<Vec<String>>,
    pub mode: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub cwd: Option<String>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    pub max_line_bytes: Option<i64>,
    pub ca: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub name: Option<String>,
    pub weight: Option<i64>,
}

impl RawBackend {
    /// The entry as a table (a bare URL is `{ url = "..." }`).
    pub(crate) fn into_table(self) -> RawBackendTable {
        match self {
            RawBackend::Url(u) => RawBackendTable {
                url: Some(u),
                ..RawBackendTable::default()
            },
            RawBackend::Table(t) => *t,
        }
    }
}

/// Written by hand rather than `#[serde(untagged)]`: an untagged enum buffers the table and
/// reads it again out of sight of the unknown-key collector (whose paths would stop at
/// `backends[N]`), and its one error ("did not match any variant") hides the real problem.
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct EntryVisitor;
        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a URL string or a table such as { url = \"...\" }, { command = [...] } \
                     or { sse = \"...\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Url(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawBackend, E> {
                Ok(RawBackend::Url(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawBackend, A::Error> {
                let table =
                    RawBackendTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawBackend::Table(Box::new(table)))
            }
        }
        d.deserialize_any(EntryVisitor)
    }
}
