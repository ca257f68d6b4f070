//! `[audit]`: where the audit trail goes and what it says of arguments.

use crate::config::fields::TableCheck;
use crate::config::raw::RawAudit;
use crate::config::types::{AuditArguments, AuditConfig};

/// Validates `[audit]`; `None` when it is off (`log` absent, empty or "off").
pub(super) fn validate(raw: RawAudit, errs: &mut Vec<String>) -> Option<AuditConfig> {
    let mut t = TableCheck::new("audit", errs);
    let arguments = match raw.arguments.as_deref() {
        None | Some("off") => AuditArguments::Off,
        Some("hash") => AuditArguments::Hash,
        Some("full") => AuditArguments::Full,
        Some(v) => {
            t.problem(
                "arguments",
                format!("`{v}` (use \"off\", \"hash\" or \"full\")"),
            );
            AuditArguments::Off
        }
    };
    let target = match raw.log.as_deref() {
        None => {
            t.problem(
                "log",
                "missing (a file path, or \"stderr\"; \"off\" turns it off)",
            );
            return None;
        }
        Some("" | "off") => return None,
        Some("stderr") => "-".to_string(),
        Some(p) => p.to_string(),
    };
    Some(AuditConfig { target, arguments })
}
