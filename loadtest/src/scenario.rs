//! Scenario files for `mcplb-load run --scenario FILE.toml`: the options of a
//! run plus a weighted method mix.
//!
//! ```toml
//! url = "http://127.0.0.1:8080/mcp"
//! connections = 64
//! duration = "10s"      # or requests = 100000
//! rate = 5000           # optional: open loop
//! stateless = false
//! [[calls]]
//! method = "tools/call"
//! tool = "echo"
//! arguments = { text = "hello" }
//! weight = 8
//! [[calls]]
//! method = "tools/list"
//! weight = 1
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::load::{CallSpec, LoadOptions};

/// A duration in a scenario file: `"10s"`, `"500ms"`, or a number of seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum DurationSpec {
    /// Seconds.
    Secs(f64),
    /// Text such as `10s`, `500ms`, `2m`.
    Text(String),
}

impl DurationSpec {
    /// The duration.
    pub fn get(&self) -> anyhow::Result<Duration> {
        match self {
            DurationSpec::Secs(s) => Duration::try_from_secs_f64(*s)
                .map_err(|e| anyhow::anyhow!("bad duration {s}: {e}")),
            DurationSpec::Text(t) => parse_duration(t).map_err(|e| anyhow::anyhow!(e)),
        }
    }
}

/// A scenario file. Every field is optional; unset fields keep the
/// command line's values (defaults included).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// MCP endpoint URL.
    pub url: Option<String>,
    /// Concurrent connections (virtual users).
    pub connections: Option<usize>,
    /// Measured duration.
    pub duration: Option<DurationSpec>,
    /// Stop after this many measured requests instead.
    pub requests: Option<u64>,
    /// Open loop rate, requests per second.
    pub rate: Option<f64>,
    /// Warm-up time.
    pub warmup: Option<DurationSpec>,
    /// Stateless (2026-07-28) requests.
    pub stateless: Option<bool>,
    /// MCP sessions, spread over the connections (at least `connections`).
    pub sessions: Option<usize>,
    /// Worker threads.
    pub threads: Option<usize>,
    /// Per-request timeout.
    pub timeout: Option<DurationSpec>,
    /// Tool of the single-call mode (ignored when `calls` is given).
    pub tool: Option<String>,
    /// Arguments of the single-call mode.
    pub arguments: Option<Value>,
    /// The method mix; weights are relative.
    #[serde(default)]
    pub calls: Vec<CallSpec>,
}

impl Scenario {
    /// Parses a scenario from TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("scenario: {e}"))
    }

    /// Reads and parses a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Scenario::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// `base` with the fields this scenario sets replaced.
    pub fn apply(&self, mut base: LoadOptions) -> anyhow::Result<LoadOptions> {
        if let Some(v) = &self.url {
            base.url = v.clone();
        }
        if let Some(v) = self.connections {
            base.connections = v;
        }
        if let Some(v) = &self.duration {
            base.duration = v.get()?;
        }
        if self.requests.is_some() {
            base.requests = self.requests;
        }
        if self.rate.is_some() {
            base.rate = self.rate;
        }
        if let Some(v) = &self.warmup {
            base.warmup = v.get()?;
        }
        if let Some(v) = self.stateless {
            base.stateless = v;
        }
        if self.sessions.is_some() {
            base.sessions = self.sessions;
        }
        if let Some(v) = self.threads {
            base.threads = v;
        }
        if let Some(v) = &self.timeout {
            base.timeout = v.get()?;
        }
        if let Some(v) = &self.tool {
            base.tool = v.clone();
        }
        if let Some(v) = &self.arguments {
            base.arguments = v.clone();
        }
        if !self.calls.is_empty() {
            base.calls = self.calls.clone();
        }
        Ok(base)
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic() || c == 'µ') {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration: {s}"))?;
    let secs = match unit {
        "us" | "µs" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s}")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("bad duration {s}: {e}"))
}
