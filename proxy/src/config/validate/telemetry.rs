//! `[telemetry]`: the OTLP/HTTP collector spans go to, the service name, the sampling ratio.

use crate::config::fields::TableCheck;
use crate::config::raw::RawTelemetry;
use crate::config::types::TelemetryConfig;

/// Validates `[telemetry]`.
pub(super) fn validate(raw: RawTelemetry, errs: &mut Vec<String>) -> TelemetryConfig {
    let mut t = TableCheck::new("telemetry", errs);
    let endpoint = raw.otlp_endpoint.unwrap_or_default();
    let (authority, path) = if endpoint.is_empty() {
        t.problem(
            "otlp_endpoint",
            "required in [telemetry] (e.g. \"http://127.0.0.1:4318/v1/traces\"); remove the \
             table to turn traces off",
        );
        (String::new(), String::new())
    } else {
        match split_endpoint(&endpoint) {
            Ok(parts) => parts,
            Err(e) => {
                t.problem("otlp_endpoint", e);
                (String::new(), String::new())
            }
        }
    };
    let service_name = raw.service_name.unwrap_or_else(|| "mcplb".into());
    if service_name.trim().is_empty() {
        t.problem("service_name", "must not be empty");
    }
    let sample_ratio = raw.sample_ratio.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample_ratio) {
        t.problem(
            "sample_ratio",
            format!("{sample_ratio} is out of range (0.0..=1.0: the share of new traces recorded)"),
        );
    }
    TelemetryConfig {
        otlp_endpoint: endpoint,
        authority,
        path,
        service_name,
        sample_ratio: sample_ratio.clamp(0.0, 1.0),
    }
}

/// `http://host[:port][/path]` into `host:port` (4318, OTLP/HTTP's port, when none is given)
/// and the path (`/v1/traces` when none is given).
fn split_endpoint(url: &str) -> Result<(String, String), String> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(if url.starts_with("https://") {
            format!(
                "`{url}`: https is not supported for the OTLP exporter; send to a collector on \
                 loopback or a sidecar over http://"
            )
        } else {
            format!("`{url}` must start with http://")
        });
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` has no host (or carries credentials)"));
    }
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        && !authority.ends_with(']');
    let authority = if has_port {
        authority.to_string()
    } else {
        format!("{authority}:4318")
    };
    let path = if path.is_empty() || path == "/" {
        "/v1/traces".to_string()
    } else {
        path.to_string()
    };
    Ok((authority, path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::config::Config;

    fn parse(telemetry: &str) -> Result<Config, Vec<String>> {
        let text = format!(
            "[proxy]\nlisten = \"127.0.0.1:0\"\n[[servers]]\nname = \"g\"\n\
             backends = [\"http://127.0.0.1:9/mcp\"]\n[servers.health]\nenabled = false\n\
             [telemetry]\n{telemetry}"
        );
        Config::parse(&text).map_err(|e| e.0)
    }

    #[test]
    fn telemetry_keys_and_defaults() {
        let c = parse("otlp_endpoint = \"http://127.0.0.1:4318/v1/traces\"\n").expect("valid");
        let t = c.telemetry.expect("telemetry");
        assert_eq!(t.authority, "127.0.0.1:4318");
        assert_eq!(t.path, "/v1/traces");
        assert_eq!(t.service_name, "mcplb");
        assert_eq!(t.sample_ratio, 1.0);
        let c = parse(
            "otlp_endpoint = \"http://collector\"\nservice_name = \"edge\"\nsample_ratio = 0.01\n",
        )
        .expect("valid");
        let t = c.telemetry.expect("telemetry");
        assert_eq!(
            (t.authority.as_str(), t.path.as_str()),
            ("collector:4318", "/v1/traces")
        );
        assert_eq!((t.service_name.as_str(), t.sample_ratio), ("edge", 0.01));
    }

    #[test]
    fn telemetry_problems_name_their_keys() {
        let errs = parse("sample_ratio = 1.5\nservice_name = \" \"\n").expect_err("invalid");
        assert!(
            errs.iter()
                .any(|e| e.starts_with("telemetry.otlp_endpoint: required")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e.starts_with("telemetry.sample_ratio: 1.5 is out of range")),
            "{errs:?}"
        );
        assert!(
            errs.iter()
                .any(|e| e == "telemetry.service_name: must not be empty"),
            "{errs:?}"
        );
        let errs = parse("otlp_endpoint = \"https://c:4318/v1/traces\"\n").expect_err("https");
        assert!(errs[0].contains("https is not supported"), "{errs:?}");
    }
}
