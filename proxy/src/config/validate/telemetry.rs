//! `[telemetry]`: the OTLP/HTTP collector spans go to, the service name, the sampling ratio.

use crate::config::fields::TableCheck;
use crate::config::raw::RawTelemetry;
use crate::config::types::TelemetryConfig;

/// Validates `[telemetry]`.
pub(super) fn validate(raw: RawTelemetry, errs: &mut Vec<String>) -> TelemetryConfig {
    let mut t = TableCheck::new("telemetry", errs);
    let endpoint = raw.otlp_endpoint.unwrap_or_default();
    let (authority, path, https) = if endpoint.is_empty() {
        t.problem(
            "otlp_endpoint",
            "required in [telemetry] (e.g. \"http://127.0.0.1:4318/v1/traces\"); remove the \
             table to turn traces off",
        );
        (String::new(), String::new(), false)
    } else {
        match split_endpoint(&endpoint) {
            Ok(parts) => parts,
            Err(e) => {
                t.problem("otlp_endpoint", e);
                (String::new(), String::new(), false)
            }
        }
    };
    let ca = raw.ca.map(std::path::PathBuf::from);
    if https {
        // Built here to name the key of a problem; built again by the exporter it starts.
        if let Err(e) = crate::tls::UpstreamTls::build(
            crate::config::host_of(&authority),
            ca.as_deref(),
            None,
            None,
        ) {
            t.problem(if ca.is_some() { "ca" } else { "otlp_endpoint" }, e);
        }
    } else if ca.is_some() {
        t.problem("ca", "only for an https:// otlp_endpoint");
    }
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
        https,
        ca,
        service_name,
        sample_ratio: sample_ratio.clamp(0.0, 1.0),
    }
}

/// `http[s]://host[:port][/path]` into `host:port` (4318, OTLP/HTTP's port, when none is
/// given), the path (`/v1/traces` when none is given) and whether it is https.
fn split_endpoint(url: &str) -> Result<(String, String, bool), String> {
    let (rest, https) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (None, Some(rest)) => (rest, true),
        (None, None) => return Err(format!("`{url}` must start with http:// or https://")),
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
    Ok((authority, path, https))
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
        let errs = parse("otlp_endpoint = \"ftp://c:4318/v1/traces\"\n").expect_err("ftp");
        assert!(
            errs[0].contains("must start with http:// or https://"),
            "{errs:?}"
        );
        let errs = parse("otlp_endpoint = \"http://c\"\nca = \"/x.pem\"\n").expect_err("ca");
        assert!(
            errs[0].starts_with("telemetry.ca: only for an https://"),
            "{errs:?}"
        );
        let errs = parse("otlp_endpoint = \"https://c\"\nca = \"/nonexistent/ca.pem\"\n")
            .expect_err("missing ca");
        assert!(errs[0].starts_with("telemetry.ca: "), "{errs:?}");
        let t = parse("otlp_endpoint = \"https://[::1]:4318\"\n")
            .expect("https")
            .telemetry
            .expect("telemetry");
        assert!(t.https && t.authority == "[::1]:4318" && t.ca.is_none());
        assert_eq!(crate::config::host_of(&t.authority), "::1");
    }
}
