//! `[admin]`: the admin port's address and token (mandatory off loopback).

use std::net::SocketAddr;

use crate::config::fields::{resolve, TableCheck};
use crate::config::raw::RawAdmin;

/// Validates `[admin]` into its address and token.
pub(super) fn validate(
    admin: RawAdmin,
    errs: &mut Vec<String>,
) -> (Option<SocketAddr>, Option<String>) {
    let mut t = TableCheck::new("admin", errs);
    let token = admin.token.filter(|t| !t.is_empty());
    let listen = admin
        .listen
        .and_then(|s| resolve(&s).map_err(|e| t.problem("listen", e)).ok());
    if let Some(a) = listen {
        if !a.ip().is_loopback() && token.is_none() {
            t.problem(
                "token",
                format!("required when admin.listen ({a}) is not a loopback address"),
            );
        }
    }
    (listen, token)
}
