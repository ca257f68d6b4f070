//! The end of the backend sessions mcplb holds for bridged 2026-07-28 requests: when mcplb
//! drops one (idle past [`IDLE`], evicted to make room, its core's state replaced by a
//! reload, or at shutdown) it sends the backend a DELETE for it, as a 2025-era client ends
//! its session. A session a request or a waiting call still holds is ended only once free.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::data_path::era_bridge::{own_exchange_on, BridgeSession, Bridges, Own};
use crate::runtime::core::Core;
use crate::runtime::SHUTDOWN;

/// How long a backend session may go unused before mcplb ends it.
const IDLE: Duration = Duration::from_secs(300);
/// How often a core looks for idle sessions (while it holds any).
const SWEEP_EVERY: Duration = Duration::from_secs(15);
/// How often a core that drops all its sessions (shutdown, reload) looks again for those
/// still in use.
const ENDING_EVERY: Duration = Duration::from_millis(50);

/// A pooled session's place: `(group, backend, key hash)`.
type Key = (usize, usize, u64);

/// The idle limit (a debug build's tests may shorten it: `MCPLB_TEST_ERA_IDLE_MS`).
fn idle_limit() -> Duration {
    #[cfg(debug_assertions)]
    if let Some(d) = crate::runtime::test_hooks::era_idle() {
        return d;
    }
    IDLE
}

/// Whether a request or a waiting call holds `s` besides the pool.
fn in_use(s: &Rc<BridgeSession>) -> bool {
    Rc::strong_count(s) > 1
}

/// Takes from the pool the session to drop to make room: the least recently used of those no
/// request holds, else the least recently used.
pub(super) fn evict(
    sessions: &mut HashMap<Key, Rc<BridgeSession>>,
) -> Option<(Key, Rc<BridgeSession>)> {
    let oldest = |free: bool| {
        sessions
            .iter()
            .filter(|(_, s)| !free || !in_use(s))
            .min_by_key(|(_, s)| s.last_used.get())
            .map(|(k, _)| *k)
    };
    let k = oldest(true).or_else(|| oldest(false))?;
    sessions.remove(&k).map(|s| (k, s))
}

/// Takes from `b`'s pool every session no request holds that has gone unused for `idle`.
fn take_idle(b: &Bridges, now: Instant, idle: Duration) -> Vec<(Key, Rc<BridgeSession>)> {
    let mut sessions = b.sessions.borrow_mut();
    let due: Vec<Key> = sessions
        .iter()
        .filter(|(_, s)| !in_use(s) && now.saturating_duration_since(s.last_used.get()) >= idle)
        .map(|(k, _)| *k)
        .collect();
    due.into_iter()
        .filter_map(|k| sessions.remove(&k).map(|s| (k, s)))
        .collect()
}

/// Sends the DELETE that ends `s` on backend `bi` of group `gi` (its answer does not matter:
/// a backend that has forgotten the session, or answers 405, is done with it too).
async fn end(core: &Core, (gi, bi, _): Key, s: &BridgeSession) {
    let Some(sid) = s.sid.as_deref() else {
        // A stateless 2025 server issued no session: nothing to end.
        return;
    };
    let group = core.shared.config.servers.get(gi);
    let (Some(group), Some(backend)) = (group, group.and_then(|g| g.backends.get(bi))) else {
        return;
    };
    let own = Own::End(&s.version);
    let r = own_exchange_on(core, gi, bi, group, backend, own, Some(sid), b"", None).await;
    tracing::debug!(backend = %backend.name, ended = r.is_ok(), "era bridge: backend session ended");
}

/// This core's state as an `Rc`, for a task of its own.
pub(super) fn rc_of(core: &Core) -> Option<Rc<Core>> {
    let states = core.states.borrow();
    states
        .iter()
        .find(|c| std::ptr::eq(Rc::as_ptr(c), core))
        .cloned()
}

/// Ends `s` (evicted from the pool) once no request holds it, in a task of its own.
pub(super) fn end_later(core: &Core, (k, s): (Key, Rc<BridgeSession>)) {
    let Some(core) = rc_of(core) else {
        return;
    };
    monoio::spawn(async move {
        while in_use(&s) {
            monoio::time::sleep(ENDING_EVERY).await;
        }
        end(&core, k, &s).await;
    });
}

/// Starts this core's sweeper if it has none: it ends idle sessions while the core holds any,
/// and all of them once the core's state is replaced by a reload or a shutdown begins.
pub(super) fn start_sweeping(core: &Core) {
    if core.bridges.sweeping.replace(true) {
        return;
    }
    let Some(rc) = rc_of(core) else {
        core.bridges.sweeping.set(false);
        return;
    };
    monoio::spawn(sweep(rc));
}

async fn sweep(core: Rc<Core>) {
    let idle = idle_limit();
    loop {
        let ending = SHUTDOWN.load(Ordering::Relaxed) || core.next.borrow().is_some();
        let pause = if ending {
            ENDING_EVERY
        } else {
            SWEEP_EVERY.min(idle / 2)
        };
        monoio::time::sleep(pause).await;
        let ending = SHUTDOWN.load(Ordering::Relaxed) || core.next.borrow().is_some();
        let limit = if ending { Duration::ZERO } else { idle };
        for (k, s) in take_idle(&core.bridges, Instant::now(), limit) {
            end(&core, k, &s).await;
        }
        if core.bridges.sessions.borrow().is_empty() {
            core.bridges.sweeping.set(false);
            return;
        }
    }
}

/// At shutdown: ends every session the states in `cores` hold, each once free. The caller
/// keeps the shutdown waiting until this returns.
pub(crate) async fn end_all(cores: Vec<Rc<Core>>) {
    for core in cores {
        loop {
            for (k, s) in take_idle(&core.bridges, Instant::now(), Duration::ZERO) {
                end(&core, k, &s).await;
            }
            if core.bridges.sessions.borrow().is_empty() {
                break;
            }
            monoio::time::sleep(ENDING_EVERY).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn session(age: Duration) -> Rc<BridgeSession> {
        let s = BridgeSession::detached(Some(b"s".to_vec()), "2025-11-25".into());
        s.last_used.set(Instant::now() - age);
        Rc::new(s)
    }

    #[test]
    fn eviction_prefers_the_oldest_free_session() {
        let mut m = HashMap::new();
        let busy = session(Duration::from_secs(50));
        let _held = busy.clone();
        m.insert((0, 0, 1), busy);
        m.insert((0, 0, 2), session(Duration::from_secs(10)));
        m.insert((0, 0, 3), session(Duration::from_secs(20)));
        let (k, _) = evict(&mut m).unwrap();
        assert_eq!(k, (0, 0, 3));
        m.remove(&(0, 0, 2));
        // Only a held one left: it goes (the pool must make room), the holder keeps it.
        let (k, _) = evict(&mut m).unwrap();
        assert_eq!(k, (0, 0, 1));
        assert!(evict(&mut m).is_none());
    }
}
