//! Hot reload (`SIGHUP`, or `POST /reload` on the admin port).
//!
//! The running configuration lives in one [`Live`] slot: an `Arc<Shared>` and a generation
//! number. A reload reads and validates the new file first (a bad one is refused with every
//! problem listed, and the old configuration keeps running), builds a new `Shared` that keeps
//! everything with state worth keeping (statistics, remembered sessions,
//! backend health by tag, rate-limit tables whose rules did not change, stdio processes and
//! 2024-11-05 bridges whose backends did not change), then publishes it. Each worker is woken
//! (`runtime::shutdown::wake_workers`) and builds a new per-core state; every client connection
//! moves to it at its next request, while requests and SSE streams already under way finish
//! on the configuration they started with. Session keys rotate by reload
//! (`proxy.session_keys`): ids sealed with a key still listed keep opening. Nothing is closed by a reload: not client
//! connections, not sessions (their ids carry the backend's stable tag), not streams.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;

use crate::config::Config;
use crate::runtime::shared::Shared;

/// The configuration the workers and the admin port run on, and its generation.
pub struct Live {
    generation: AtomicU64,
    current: Mutex<Arc<Shared>>,
}

impl Live {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Live {
            generation: AtomicU64::new(0),
            current: Mutex::new(shared),
        }
    }

    /// The current configuration (a mutex held for one `Arc` clone: workers take it only when
    /// the generation moved, the admin port per request).
    pub(crate) fn load(&self) -> Arc<Shared> {
        match self.current.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Bumped by every reload; workers compare it with theirs (one relaxed load).
    #[inline]
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn store(&self, shared: Arc<Shared>) {
        match self.current.lock() {
            Ok(mut g) => *g = shared,
            Err(p) => *p.into_inner() = shared,
        }
        self.generation.fetch_add(1, Ordering::Release);
        crate::runtime::shutdown::wake_workers();
    }
}

/// What a reload keeps running between configurations: bridges to stdio and old-transport
/// backends, old-client fronts, and the health checkers.
#[derive(Default)]
pub(crate) struct Running {
    /// stdio backends: (tag, their config as text, the bridge).
    stdio: Vec<(u32, String, crate::bridges::stdio::StdioBridge)>,
    /// 2024-11-05 backends: (tag, the bridge).
    legacy_backends: Vec<(u32, crate::bridges::legacy::LegacyBackend)>,
    /// Old-client fronts, by group path.
    legacy_fronts: Vec<(String, crate::bridges::legacy::LegacyFront)>,
    /// The checkers of the current configuration (dropping them stops their threads).
    checkers: Option<crate::control::health::Checkers>,
    /// The JWKS refresh thread of the current configuration (dropping it stops the thread).
    jwks: Option<crate::auth::JwksRefresh>,
}

/// Bridges a new configuration no longer uses: stopped after the shutdown grace, so requests
/// and streams still on them can finish.
#[derive(Default)]
pub(crate) struct Retired {
    stdio: Vec<crate::bridges::stdio::StdioBridge>,
    legacy_backends: Vec<crate::bridges::legacy::LegacyBackend>,
    legacy_fronts: Vec<crate::bridges::legacy::LegacyFront>,
}

impl Retired {
    fn is_empty(&self) -> bool {
        self.stdio.is_empty() && self.legacy_backends.is_empty() && self.legacy_fronts.is_empty()
    }
}

impl Running {
    /// Fills the addresses of `config`'s stdio and 2024-11-05 backends: the bridge already
    /// running for the same backend (same tag, same settings), or a new one. Returns the old
    /// configuration's fronts' addresses per group and what is no longer used. On error,
    /// bridges started by this call are stopped and `self` is unchanged.
    pub(crate) fn attach(
        &mut self,
        config: &mut Config,
        local_addr: SocketAddr,
    ) -> anyhow::Result<(Vec<Option<SocketAddr>>, Retired)> {
        let mut next = Running::default();
        let res = self.attach_into(&mut next, config, local_addr);
        match res {
            Ok(fronts) => {
                // Whatever is left in `self` is no longer listed.
                let retired = Retired {
                    stdio: self.stdio.drain(..).map(|(_, _, b)| b).collect(),
                    legacy_backends: self.legacy_backends.drain(..).map(|(_, b)| b).collect(),
                    legacy_fronts: self.legacy_fronts.drain(..).map(|(_, f)| f).collect(),
                };
                next.checkers = self.checkers.take();
                next.jwks = self.jwks.take();
                *self = next;
                Ok((fronts, retired))
            }
            Err(e) => {
                // Give back what was reused; what was started in `next` stops when dropped.
                self.give_back(&mut next);
                Err(e)
            }
        }
    }

    fn give_back(&mut self, next: &mut Running) {
        self.stdio.append(&mut next.stdio);
        self.legacy_backends.append(&mut next.legacy_backends);
        self.legacy_fronts.append(&mut next.legacy_fronts);
    }

    fn attach_into(
        &mut self,
        next: &mut Running,
        config: &mut Config,
        local_addr: SocketAddr,
    ) -> anyhow::Result<Vec<Option<SocketAddr>>> {
        for g in &mut config.servers {
            for b in &mut g.backends {
                let addr = if let Some(sse) = b.legacy_sse.clone() {
                    let bridge = match self.legacy_backends.iter().position(|(t, _)| *t == b.tag) {
                        Some(i) => self.legacy_backends.swap_remove(i).1,
                        None => {
                            let bridge = crate::bridges::legacy::LegacyBackend::start(&sse)
                                .with_context(|| {
                                    format!("servers.{}: backend {}", g.name, b.name)
                                })?;
                            tracing::info!(backend = %b.name, sse = %sse, bridge = %bridge.addr(), "2024-11-05 (HTTP+SSE) backend bridged");
                            bridge
                        }
                    };
                    let addr = bridge.addr();
                    next.legacy_backends.push((b.tag, bridge));
                    addr
                } else if let Some(sc) = b.stdio.clone() {
                    let text = format!("{sc:?}");
                    let reuse = self
                        .stdio
                        .iter()
                        .position(|(t, s, _)| *t == b.tag && *s == text);
                    let bridge = match reuse {
                        Some(i) => self.stdio.swap_remove(i).2,
                        None => {
                            let bridge = crate::bridges::stdio::StdioBridge::start(sc)
                                .with_context(|| {
                                    format!("servers.{}: backend {}", g.name, b.name)
                                })?;
                            tracing::info!(backend = %b.name, command = %b.url, bridge = %bridge.addr(), "stdio backend started");
                            bridge
                        }
                    };
                    let addr = bridge.addr();
                    next.stdio.push((b.tag, text, bridge));
                    addr
                } else {
                    continue;
                };
                b.addr = addr;
                b.authority = addr.to_string();
                b.path = "/mcp".to_string();
            }
        }
        // Old (2024-11-05) clients: a bridge per group with legacy_sse = true, translating to
        // the group's own Streamable HTTP endpoint on this listener.
        let mut fronts = Vec::new();
        for g in &config.servers {
            if !g.legacy_sse {
                fronts.push(None);
                continue;
            }
            let front = match self.legacy_fronts.iter().position(|(p, _)| *p == g.path) {
                Some(i) => self.legacy_fronts.swap_remove(i).1,
                None => crate::bridges::legacy::LegacyFront::start(
                    &format!("http://{local_addr}{}", g.path),
                    &g.path,
                )
                .with_context(|| format!("servers.{}: legacy_sse bridge", g.name))?,
            };
            fronts.push(Some(front.addr()));
            next.legacy_fronts.push((g.path.clone(), front));
        }
        Ok(fronts)
    }

    /// Replaces the checkers (the old ones stop at their next wake-up).
    pub(crate) fn set_checkers(&mut self, c: crate::control::health::Checkers) {
        self.checkers = Some(c);
    }

    /// Replaces the JWKS refresh thread (the old one stops at its next wake-up).
    pub(crate) fn set_jwks(&mut self, j: Option<crate::auth::JwksRefresh>) {
        self.jwks = j;
    }
}

/// Reloads the configuration of a running proxy.
pub struct Reloader {
    path: Option<PathBuf>,
    pub(crate) live: Arc<Live>,
    pub(crate) running: Mutex<Running>,
    local_addr: SocketAddr,
    /// The key generated at start when the config named none (used until a reload names some).
    generated_key: Option<[u8; 32]>,
    /// The `proxy.watch_interval` thread, unparked by every reload (it may have turned the
    /// watch on) and when the reloader goes away (it then ends).
    watcher: std::sync::OnceLock<std::thread::Thread>,
}

/// Settings a reload cannot change (they need a restart), with their keys.
fn restart_only(old: &Config, new: &Config) -> Vec<String> {
    let mut errs = Vec::new();
    let mut check = |key: &str, same: bool| {
        if !same {
            errs.push(format!(
                "{key}: cannot change on reload (restart mcplb to change it)"
            ));
        }
    };
    check(
        "proxy.listen",
        old.proxy.listen.ip() == new.proxy.listen.ip()
            && (old.proxy.listen.port() == new.proxy.listen.port() || new.proxy.listen.port() == 0),
    );
    check("proxy.workers", old.proxy.workers == new.proxy.workers);
    // The UDP sockets are bound at start, like the TCP listeners; the QUIC and HTTP/3
    // settings apply to new connections.
    check(
        "proxy.http3",
        old.proxy.http3.is_some() == new.proxy.http3.is_some(),
    );
    if let (Some(o), Some(n)) = (&old.proxy.http3, &new.proxy.http3) {
        check(
            "proxy.http3.listen",
            o.listen.ip() == n.listen.ip()
                && (n.listen.port() == 0 || n.listen.port() == o.listen.port()),
        );
    }
    check("admin.listen", old.admin_listen == new.admin_listen);
    check(
        "proxy.max_connections_per_ip",
        old.proxy.max_connections_per_ip == new.proxy.max_connections_per_ip,
    );
    // Certificates reload; turning TLS on or off does not.
    check(
        "proxy.tls",
        old.proxy.tls.is_some() == new.proxy.tls.is_some(),
    );
    if !old.proxy.session_keys.is_empty() && new.proxy.session_keys.is_empty() {
        errs.push(
            "proxy.session_keys: cannot be removed on reload (every session would end); keep \
             at least the current key, or restart mcplb"
                .to_string(),
        );
    }
    errs
}

/// What differs between two configurations, one line per change, for the log and the
/// `/reload` answer. Names and keys only: never a value that could be a secret.
fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for g in &new.servers {
        let Some(og) = old.servers.iter().find(|o| o.name == g.name) else {
            out.push(format!(
                "servers.{}: added ({} backend(s), path {})",
                g.name,
                g.backends.len(),
                g.path
            ));
            continue;
        };
        for b in &g.backends {
            match og.backends.iter().find(|o| o.tag == b.tag) {
                None => out.push(format!("servers.{}: backend {} added", g.name, b.name)),
                Some(o) => {
                    if o.weight != b.weight {
                        out.push(format!(
                            "servers.{}: backend {} weight {} -> {}",
                            g.name, b.name, o.weight, b.weight
                        ));
                    }
                    if format!("{:?}", o.stdio) != format!("{:?}", b.stdio) {
                        out.push(format!(
                            "servers.{}: backend {} stdio settings changed (new processes)",
                            g.name, b.name
                        ));
                    }
                }
            }
        }
        for o in &og.backends {
            if !g.backends.iter().any(|b| b.tag == o.tag) {
                out.push(format!("servers.{}: backend {} removed", g.name, o.name));
            }
        }
        let health_changed = format!("{:?}", og.health) != format!("{:?}", g.health);
        for (k, changed) in [
            ("path", og.path != g.path),
            ("balance", og.balance != g.balance),
            ("hash_bound", og.hash_bound != g.hash_bound),
            (
                "max_ejection_percent",
                og.max_ejection_percent != g.max_ejection_percent,
            ),
            ("health", health_changed),
            (
                "session_failover",
                og.session_failover != g.session_failover,
            ),
            ("allowed_origins", og.allowed_origins != g.allowed_origins),
            ("legacy_sse", og.legacy_sse != g.legacy_sse),
            ("era", og.era != g.era),
            ("era_bridge", og.era_bridge != g.era_bridge),
            ("policies", og.policy != g.policy),
            ("confirm_timeout", og.confirm_timeout != g.confirm_timeout),
            (
                "confirm_destructive",
                og.confirm_destructive != g.confirm_destructive,
            ),
        ] {
            if changed {
                out.push(format!("servers.{}.{k} changed", g.name));
            }
        }
        if og.auth.api_keys != g.auth.api_keys {
            out.push(format!(
                "servers.{}.auth.api_keys: {} -> {} key(s)",
                g.name,
                og.auth.api_keys.digests.len(),
                g.auth.api_keys.digests.len()
            ));
        }
        for k in crate::auth::changed_keys(&og.auth, &g.auth) {
            out.push(format!("servers.{}.auth.{k} changed", g.name));
        }
    }
    for o in &old.servers {
        if !new.servers.iter().any(|g| g.name == o.name) {
            out.push(format!("servers.{}: removed", o.name));
        }
    }
    if format!("{:?}", old.limits) != format!("{:?}", new.limits) {
        out.push(format!(
            "limits: {} -> {} rule(s) (changed rules start with full buckets)",
            old.limits.len(),
            new.limits.len()
        ));
    }
    if old.limit_scopes != new.limit_scopes || old.cluster != new.cluster {
        out.push("cluster: settings or rule scopes changed (cluster rules lease anew)".to_string());
    }
    if format!("{:?}", old.concurrency) != format!("{:?}", new.concurrency) {
        out.push(format!(
            "concurrency: {} -> {} rule(s)",
            old.concurrency.len(),
            new.concurrency.len()
        ));
    }
    if let Some(line) = describe_keys(&old.proxy.session_keys, &new.proxy.session_keys) {
        out.push(line);
    }
    if old.audit != new.audit {
        out.push("audit changed".to_string());
    }
    if old.proxy.http3 != new.proxy.http3 {
        out.push("proxy.http3: settings changed (new QUIC connections take them)".to_string());
    }
    let mut p_old = old.proxy.clone();
    p_old.session_keys.clear();
    let mut p_new = new.proxy.clone();
    p_new.session_keys.clear();
    if format!("{p_old:?}") != format!("{p_new:?}") {
        out.push("proxy: settings changed".to_string());
    }
    if old.admin_token.is_some() != new.admin_token.is_some() || old.admin_token != new.admin_token
    {
        out.push("admin.token changed".to_string());
    }
    out
}

/// What a change of `proxy.session_keys` does, in counts (never a key).
fn describe_keys(old: &[[u8; 32]], new: &[[u8; 32]]) -> Option<String> {
    if old == new {
        return None;
    }
    if old.is_empty() {
        return Some(format!(
            "proxy.session_keys: {} key(s) configured (sessions sealed with the generated key \
             end: their clients re-initialize)",
            new.len()
        ));
    }
    let added = new.iter().filter(|k| !old.contains(k)).count();
    let dropped = old.iter().filter(|k| !new.contains(k)).count();
    let sealing = if old.first() == new.first() {
        "same sealing key"
    } else {
        "a new sealing key"
    };
    Some(format!(
        "proxy.session_keys: {} -> {} key(s), {sealing}, {added} added, {dropped} dropped \
         (sessions sealed with a dropped key re-initialize)",
        old.len(),
        new.len()
    ))
}

impl Reloader {
    pub(crate) fn new(
        path: Option<PathBuf>,
        live: Arc<Live>,
        running: Running,
        local_addr: SocketAddr,
        generated_key: Option<[u8; 32]>,
    ) -> Self {
        Reloader {
            path,
            live,
            running: Mutex::new(running),
            local_addr,
            generated_key,
            watcher: std::sync::OnceLock::new(),
        }
    }

    /// Wakes the watch thread, if there is one, to look at the configuration again.
    fn wake_watcher(&self) {
        if let Some(t) = self.watcher.get() {
            t.unpark();
        }
    }

    /// Reads the config file again and, when it is valid, switches to it. Returns the list
    /// of changes, or every problem found (the running configuration is then untouched).
    pub fn reload(&self) -> Result<Vec<String>, Vec<String>> {
        let Some(path) = &self.path else {
            return Err(vec![
                "this mcplb was started without a config file: nothing to reload".to_string(),
            ]);
        };
        let new = Config::load(path).map_err(|e| e.0)?;
        self.apply(new)
    }

    /// Switches to `new` (already parsed and validated), as [`Reloader::reload`] does.
    pub fn apply(&self, mut new: Config) -> Result<Vec<String>, Vec<String>> {
        // One reload at a time: the lock is held until the new configuration is live.
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let old = self.live.load();
        let errs = restart_only(&old.config, &new);
        if !errs.is_empty() {
            return Err(errs);
        }
        new.proxy.listen = old.config.proxy.listen;
        if let (Some(n), Some(o)) = (&mut new.proxy.http3, &old.config.proxy.http3) {
            n.listen = o.listen;
        }
        // Client certificates: loaded now (files read again even when their paths did not
        // change), swapped in only once everything else is ready.
        let tls = match &new.proxy.tls {
            Some(files) => Some(
                files
                    .build()
                    .map(|_| files.clone())
                    .map_err(|e| vec![format!("proxy.tls: {e}")])?,
            ),
            None => None,
        };
        let mut changes = describe(&old.config, &new);
        let (fronts, retired) = running
            .attach(&mut new, self.local_addr)
            .map_err(|e| vec![format!("{e:#}")])?;
        let shared = match crate::runtime::shared::build_shared(
            new,
            Some(&old),
            fronts,
            self.generated_key.as_ref(),
        ) {
            Ok(s) => Arc::new(s),
            Err(e) => return Err(vec![format!("{e:#}")]),
        };
        let checkers = crate::control::health::start(
            &shared.config,
            shared.groups.clone(),
            shared.hub.clone(),
        );
        running.set_checkers(checkers);
        // JWKS URLs: the keys of an unchanged URL carry over, then every URL is fetched
        // before the new configuration goes live.
        running.set_jwks(crate::auth::start_refresh(
            &shared.config,
            Some(&old.config),
        ));
        if let (Some(t), Some(files)) = (&shared.tls, tls) {
            match t.reload(Some(files)) {
                Ok(()) => changes.push("proxy.tls: certificates reloaded".to_string()),
                Err(e) => {
                    tracing::error!(error = %e, "proxy.tls: certificates not reloaded; the old ones stay")
                }
            }
        }
        self.live.store(shared.clone());
        self.wake_watcher();
        if changes.is_empty() {
            tracing::info!("configuration reloaded: no change");
        }
        for c in &changes {
            tracing::info!(change = %c, "configuration reloaded");
        }
        if !retired.is_empty() {
            let grace = shared.config.proxy.shutdown_timeout;
            let _ = std::thread::Builder::new()
                .name("mcplb-retire".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    drop(retired);
                });
        }
        Ok(changes)
    }

    /// Stops every bridge and checker (shutdown).
    pub(crate) fn stop_all(&self) {
        let mut running = match self.running.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *running = Running::default();
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        // A watch thread parked with the watch off sees the reloader gone and ends.
        self.wake_watcher();
    }
}

/// What `proxy.watch_interval` compares: the config file and the files it names that a reload
/// reads again (`proxy.session_keys_file`), by content, so that a Kubernetes Secret or
/// ConfigMap volume (updated by swapping a symlink) is seen as well as an edit in place. An
/// unreadable file counts as its error, so a file coming back is a change too.
pub fn watched_fingerprint(path: &std::path::Path, config: &Config) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let files = std::iter::once(path).chain(config.proxy.session_keys_file.as_deref());
    for f in files {
        f.hash(&mut h);
        match std::fs::read(f) {
            Ok(bytes) => bytes.hash(&mut h),
            Err(e) => e.kind().hash(&mut h),
        }
    }
    h.finish()
}

/// Starts the thread behind `proxy.watch_interval` (only for a proxy started from a file):
/// every interval of the running configuration it compares [`watched_fingerprint`] with the
/// last one and reloads on a change, as SIGHUP does (a refused reload is logged with every
/// problem and not retried until the files change again). It ends with the reloader. While
/// the watch is off it sleeps with no timer (a reload, which may turn it on, wakes it): an
/// idle mcplb wakes for nothing (measured: this thread's once-a-second check was a quarter of
/// the wake-ups per call of an agent calling four times a second).
pub(crate) fn start_watch(reloader: &Arc<Reloader>) -> std::io::Result<()> {
    let Some(path) = reloader.path.clone() else {
        return Ok(());
    };
    let weak = Arc::downgrade(reloader);
    let mut last = watched_fingerprint(&path, &reloader.live.load().config);
    let thread = std::thread::Builder::new()
        .name("mcplb-watch".into())
        .spawn(move || loop {
            let Some(r) = weak.upgrade() else { return };
            let config = r.live.load();
            let Some(every) = config.config.proxy.watch_interval else {
                drop((r, config));
                // Off in this configuration: until a reload (which may turn it on) or the
                // reloader's end unparks it. A wake-up for any other reason looks again.
                std::thread::park();
                continue;
            };
            let now = watched_fingerprint(&path, &config.config);
            let keys_file = config.config.proxy.session_keys_file.clone();
            drop(config);
            if now != last {
                match r.reload() {
                    Ok(changes) => tracing::info!(
                        changes = changes.len(),
                        file = %path.display(),
                        "watched files changed: configuration reloaded"
                    ),
                    Err(errors) => {
                        for e in &errors {
                            tracing::error!(problem = %e, "watched files changed: reload refused");
                        }
                    }
                }
                // What was looked at before the reload: a file changed while the reload read
                // it differs next time and is read again (taken after the reload, the
                // fingerprint of a change made meanwhile passed for loaded, and it never
                // was). When the reload named other files, what they hold now.
                let live = r.live.load();
                if live.config.proxy.session_keys_file != keys_file {
                    last = watched_fingerprint(&path, &live.config);
                } else {
                    last = now;
                }
            }
            drop(r);
            std::thread::sleep(every);
        })?;
    let _ = reloader.watcher.set(thread.thread().clone());
    // A reload between the thread's first look and `set` unparked nobody: look again.
    thread.thread().unpark();
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[proxy]
listen = "127.0.0.1:0"
workers = 1
[[servers]]
name = "a"
path = "/mcp"
backends = ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
"#;

    #[test]
    fn describe_names_what_changed() {
        let old = Config::parse(BASE).unwrap();
        let new = Config::parse(
            &BASE.replace(r#""http://127.0.0.1:9002""#, r#""http://127.0.0.1:9003""#),
        )
        .unwrap();
        let d = describe(&old, &new);
        assert!(
            d.iter().any(|l| l.contains("backend 127.0.0.1:9003 added")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.contains("backend 127.0.0.1:9002 removed")),
            "{d:?}"
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(describe(&old, &old.clone()).is_empty());
    }

    #[test]
    fn restart_only_settings_are_refused() {
        let old = Config::parse(BASE).unwrap();
        let new = Config::parse(&BASE.replace("workers = 1", "workers = 2")).unwrap();
        let e = restart_only(&old, &new);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("proxy.workers:"), "{e:?}");
        assert!(restart_only(&old, &old.clone()).is_empty());
    }

    #[test]
    fn http3_listen_is_restart_only_its_limits_are_not() {
        let h3 = |listen: &str, streams: u32| {
            let mut c = Config::parse(BASE).unwrap();
            c.proxy.http3 = Some(crate::h3::Http3Config {
                listen: listen.parse().unwrap(),
                max_concurrent_streams: streams,
                ..crate::h3::Http3Config::default()
            });
            c
        };
        // Started on port 0, bound to 4433: the same file again is no change.
        let running = h3("127.0.0.1:4433", 100);
        assert!(restart_only(&running, &h3("127.0.0.1:0", 100)).is_empty());
        // A limit applies to new connections.
        assert!(restart_only(&running, &h3("127.0.0.1:0", 50)).is_empty());
        let changed = describe(&running, &h3("127.0.0.1:4433", 50));
        assert!(
            changed.iter().any(|c| c.starts_with("proxy.http3:")),
            "{changed:?}"
        );
        for moved in [h3("127.0.0.1:4434", 100), h3("127.0.0.2:0", 100)] {
            let e = restart_only(&running, &moved);
            assert!(
                e.len() == 1 && e[0].starts_with("proxy.http3.listen:"),
                "{e:?}"
            );
        }
        let e = restart_only(&running, &Config::parse(BASE).unwrap());
        assert!(e.len() == 1 && e[0].starts_with("proxy.http3:"), "{e:?}");
        let e = restart_only(&Config::parse(BASE).unwrap(), &running);
        assert!(e.len() == 1 && e[0].starts_with("proxy.http3:"), "{e:?}");
    }
}
