//! From the raw file to the typed [`Config`]: one validator per section, each recording every
//! problem it finds with its key path and going on with a default, so that one run lists all
//! of them. Cross-section rules (a limit naming a group) run after the sections they need.

mod admin;
mod audit;
mod backends;
mod cache;
mod cluster;
mod concurrency;
mod health;
mod limits;
mod names;
mod policies;
mod proxy;
mod servers;
mod telemetry;
mod virtual_server;

use super::fields::TableCheck;
use super::raw::RawConfig;
use super::types::{Config, ServerGroup};

/// Validates the whole file, appending every problem to `errs`; the config is returned only
/// when there is none (including problems `errs` held already, such as unknown keys).
pub(super) fn validate(raw: RawConfig, errs: &mut Vec<String>) -> Option<Config> {
    let proxy = proxy::validate(raw.proxy.unwrap_or_default(), errs);
    let (admin_listen, admin_token) = admin::validate(raw.admin.unwrap_or_default(), errs);
    let mut servers = servers::validate(raw.servers, errs);
    policies::validate(raw.policies, &mut servers, errs);
    let cluster = raw.cluster.map(|c| cluster::validate(c, errs));
    let (limits, limit_scopes) = limits::validate(raw.limits, &servers, cluster.as_ref(), errs);
    let concurrency = concurrency::validate(raw.concurrency, &servers, errs);
    let audit = raw.audit.and_then(|a| audit::validate(a, errs));
    let telemetry = raw.telemetry.map(|t| telemetry::validate(t, errs));
    errs.is_empty().then_some(Config {
        limit_scopes,
        cluster,
        audit,
        proxy,
        admin_listen,
        admin_token,
        servers,
        limits,
        concurrency,
        telemetry,
    })
}

/// `[admin]` alone (see [`crate::config::admin_endpoint`]).
pub(super) fn admin_endpoint(
    raw: super::raw::RawAdmin,
    errs: &mut Vec<String>,
) -> (Option<std::net::SocketAddr>, Option<String>) {
    admin::validate(raw, errs)
}

/// A rule's `server` must name a group.
fn server_must_exist(t: &mut TableCheck<'_>, server: Option<&str>, servers: &[ServerGroup]) {
    if let Some(s) = server {
        if !servers.iter().any(|g| g.name == s) {
            t.problem("server", format!("no [[servers]] group is named `{s}`"));
        }
    }
}
