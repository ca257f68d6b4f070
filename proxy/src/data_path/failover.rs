//! Moving a session to another backend (`session_failover = "reinitialize"`): mcplb replays
//! the client's `initialize` and `notifications/initialized` on a healthy backend and keeps the
//! session id the client holds (the move is remembered in `session::failover`).

use std::io::Write as _;

use crate::balance;
use crate::data_path::upstream;
use crate::runtime::core::Core;

/// Replays a session's `initialize` (then `notifications/initialized`) on a healthy backend
/// other than `from` and those in `tried`: the new backend and its session id.
pub(crate) async fn reinitialize(
    core: &Core,
    gi: usize,
    init_body: &[u8],
    from: usize,
    tried: u64,
    now: u64,
) -> Option<(usize, Vec<u8>)> {
    let group = core.shared.config.servers.get(gi)?;
    let rt = core.shared.groups.get(gi)?;
    let exclude = tried | if from < 64 { 1 << from } else { 0 };
    let timeout = core.shared.config.proxy.upstream_timeout;
    for _ in 0..group.backends.len() {
        let to = core.bal.pick(gi, group, rt, None, exclude, now)?;
        if to == from || !rt.health.is_eligible(to, now) {
            return None;
        }
        let b = group.backends.get(to)?;
        let Ok((mut up, _)) = core.upstream(gi, to, false).await else {
            balance::record_outcome(
                &core.shared.hub,
                rt,
                group,
                to,
                Some(lb::FailureKind::Connect),
                now,
            );
            continue;
        };
        let mut req = Vec::with_capacity(init_body.len() + 256);
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\ncontent-length: {}\r\n\r\n",
            b.path, b.authority, init_body.len()
        );
        req.extend_from_slice(init_body);
        let deadline = monoio::time::Instant::now() + timeout;
        let answer = upstream::exchange(&mut up, req, deadline).await;
        let Some(sid) = answer.session.filter(|_| answer.ok) else {
            continue;
        };
        let note = br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let mut req = Vec::with_capacity(256);
        let _ = write!(
            req,
            "POST {} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\naccept: application/json, text/event-stream\r\nmcp-session-id: ",
            b.path, b.authority
        );
        req.extend_from_slice(&sid);
        let _ = write!(req, "\r\ncontent-length: {}\r\n\r\n", note.len());
        req.extend_from_slice(note);
        let deadline = monoio::time::Instant::now() + timeout;
        if upstream::exchange(&mut up, req, deadline).await.ok {
            return Some((to, sid));
        }
    }
    None
}
