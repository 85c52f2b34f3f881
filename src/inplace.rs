//! Reload in process: `SIGHUP` reads the file the process was started with again, validates it
//! as `tollgate -t` does, and makes it the generation new requests take ([`crate::live`]);
//! `SIGUSR1` reopens the access log (logrotate's convention).
//!
//! What a reload cannot change in process (the sockets, the admin listener, the engines, the
//! thread count, Pingora's server keys, connection guards) is refused as `needs_upgrade`, and a
//! bad file as `invalid`: either way the running generation stays. State carries by name as
//! across an upgrade ([`crate::handover::Snapshot`]), and in process also health-check verdicts
//! and `sync` policies' local buckets; response cache stores are process-wide by
//! name and size ([`crate::cache`]); metric counts of routes that stay carry over. Each
//! generation runs its own health checks, re-resolution and key-set refresh, stopped when it is
//! replaced.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use log::{error, info, warn};
use pingora::server::configuration::ServerConf;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::gateway::{Gateway, Loaded};
use crate::live::Live;
use crate::observe::access_log::AccessLog;
use crate::observe::metrics::{Layout, Metrics};
use crate::observe::Observe;
use crate::proxy::Tollgate;
use crate::upstream::health::FirstRound;

/// What a reload ended with (the `result` label of `tollgate_reloads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Invalid,
    NeedsUpgrade,
}

impl Outcome {
    pub const ALL: [Outcome; 3] = [Outcome::Ok, Outcome::Invalid, Outcome::NeedsUpgrade];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Invalid => "invalid",
            Outcome::NeedsUpgrade => "needs_upgrade",
        }
    }
}

/// The running config's generation, for `/health` and `/metrics`.
pub struct Reloads {
    state: Mutex<State>,
    counts: [AtomicU64; 3],
    /// Set once `SIGHUP` is handled (before, it is ignored): `/health` shows `config` from then.
    ready: AtomicBool,
}

struct State {
    generation: u64,
    loaded_at: SystemTime,
    last_error: Option<String>,
}

impl Default for Reloads {
    fn default() -> Self {
        Reloads {
            state: Mutex::new(State {
                generation: 1,
                loaded_at: SystemTime::now(),
                last_error: None,
            }),
            counts: Default::default(),
            ready: AtomicBool::new(false),
        }
    }
}

impl Reloads {
    /// `{generation, loaded_at, last_error}`, or `None` until the process accepts `SIGHUP`.
    pub fn json(&self) -> Option<serde_json::Value> {
        if !self.ready.load(Relaxed) {
            return None;
        }
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let loaded_at = humantime::format_rfc3339_seconds(s.loaded_at).to_string();
        Some(serde_json::json!({
            "generation": s.generation,
            "loaded_at": loaded_at,
            "last_error": s.last_error,
            // Reloads tried, applied or not: `tollgate reload` tells its outcome by it.
            "attempts": self.counts.iter().map(|c| c.load(Relaxed)).sum::<u64>(),
        }))
    }

    /// `tollgate_reloads_total`, by result.
    pub fn render(&self, o: &mut String) {
        o.push_str("# HELP tollgate_reloads_total In-process config reloads (SIGHUP), by result.\n# TYPE tollgate_reloads_total counter\n");
        for (r, c) in Outcome::ALL.iter().zip(&self.counts) {
            o.push_str(&format!(
                "tollgate_reloads_total{{result=\"{}\"}} {}\n",
                r.as_str(),
                c.load(Relaxed)
            ));
        }
    }

    fn record(&self, outcome: Outcome, err: Option<String>) {
        self.counts[outcome as usize].fetch_add(1, Relaxed);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if outcome == Outcome::Ok {
            s.generation += 1;
            s.loaded_at = SystemTime::now();
        }
        s.last_error = err;
    }
}

/// What the running process was started with that a reload may not change.
pub struct Fixed {
    pub server: Arc<ServerConf>,
    /// Whether the proxy's connectors hold the system trust store.
    pub system_store: bool,
}

/// The first change `next` makes that needs an upgrade, as the key that changed.
pub fn needs_upgrade(fixed: &Fixed, running: &Gateway, next: &Loaded) -> Option<String> {
    if let Some(key) = server_key_changed(&fixed.server, &next.server) {
        return Some(key);
    }
    let g = &next.gateway;
    if running.listen.len() != g.listen.len() {
        return Some("listen".into());
    }
    for (i, (a, b)) in running.listen.iter().zip(&g.listen).enumerate() {
        let same = a.addr == b.addr
            && a.h2c == b.h2c
            && a.proxy_protocol == b.proxy_protocol
            && match (&a.tls, &b.tls) {
                (None, None) => true,
                // Certificates are replaced in place; the rest is set up once.
                (Some(a), Some(b)) => a.same_settings(b),
                _ => false,
            };
        if !same {
            return Some(format!("listen[{i}]"));
        }
    }
    if format!("{:?}", running.admin) != format!("{:?}", g.admin) {
        return Some("admin".into());
    }
    if running.fast_path != g.fast_path {
        return Some("fast_path".into());
    }
    let (a, b) = (&running.limits, &g.limits);
    if a.head_timeout != b.head_timeout
        || a.keepalive_timeout != b.keepalive_timeout
        || a.max_connections_per_ip != b.max_connections_per_ip
    {
        return Some("limits (connection guards)".into());
    }
    if g.listen.iter().any(|l| l.proxy_protocol)
        && format!("{:?}", running.trusted_proxies) != format!("{:?}", g.trusted_proxies)
    {
        return Some("trusted_proxies".into());
    }
    let store = g
        .upstreams
        .iter()
        .any(|u| crate::upstream::trust::needs_system_store(u.tls.as_ref()));
    if store && !fixed.system_store {
        return Some("upstreams (the system trust store, first needed now)".into());
    }
    None
}

/// A copy of Pingora's settings (which are not `Clone`), through their serialization.
pub fn copy_server_conf(c: &ServerConf) -> Option<ServerConf> {
    serde_yaml::to_value(c)
        .ok()
        .and_then(|v| serde_yaml::from_value(v).ok())
}

/// The first Pingora server key whose value differs.
fn server_key_changed(a: &ServerConf, b: &ServerConf) -> Option<String> {
    let (Ok(serde_yaml::Value::Mapping(a)), Ok(serde_yaml::Value::Mapping(b))) =
        (serde_yaml::to_value(a), serde_yaml::to_value(b))
    else {
        return Some("Pingora server settings".into());
    };
    a.iter()
        .find(|(k, v)| b.get(*k) != Some(*v))
        .map(|(k, _)| k.as_str().unwrap_or("?").to_owned())
}

/// The generation after `old` for `gw`: its own metrics (carrying `old`'s counts), the access
/// log shared when its section is unchanged, the refusals shared.
pub fn next_generation(old: &Tollgate, gw: Gateway, server: &ServerConf) -> Tollgate {
    let before = old.observe();
    let layout = Layout::of(gw.router.routes(), &gw.rate_limits);
    let proxy_protocol = gw.listen.iter().any(|l| l.proxy_protocol);
    let access_log = if *before.access_log.conf() == gw.access_log {
        before.access_log.clone()
    } else {
        Arc::new(AccessLog::new(gw.access_log.clone()))
    };
    let obs = Observe {
        metrics: Metrics::with_layout(layout).with_proxy_protocol(proxy_protocol),
        access_log,
        refusals: before.refusals.clone(),
    };
    // State last, just before the swap: what the old generation admits after is not carried.
    let running = old.gateway();
    crate::handover::Snapshot::take(running).restore(&gw);
    crate::upstream::health::carry(&running.upstreams, &gw.upstreams);
    gw.rate_limits
        .carry_sync(&running.rate_limits, crate::clock::mono_nanos());
    obs.metrics.carry_from(&before.metrics);
    Tollgate::new(Arc::new(gw), Arc::new(obs), server)
}

/// The background service that handles `SIGHUP` and `SIGUSR1`, and runs each generation's
/// health checks, re-resolution and key-set refresh.
pub struct Reloader {
    pub live: Live,
    /// The `-c` file; `None` (the embedded demo, a config from a string): `SIGHUP` is refused.
    pub path: Option<PathBuf>,
    pub fixed: Fixed,
    pub reloads: Arc<Reloads>,
    /// The first generation's first round of health checks (service-manager readiness).
    pub first_round: FirstRound,
    /// The certificates of each TLS listener (by `listen` index), replaced by a reload.
    pub listener_certs: Vec<(usize, crate::listen::tls::Certs)>,
}

impl Reloader {
    /// Read, validate and swap; the outcome is logged and counted.
    async fn reload(&self) -> bool {
        let started = Instant::now();
        let Some(path) = self.path.clone() else {
            warn!("SIGHUP: no config file to read again (started without -c); nothing changed");
            self.reloads.record(
                Outcome::Invalid,
                Some("started without a config file".into()),
            );
            return false;
        };
        let live = self.live.clone();
        let old = live.current();
        let checked = {
            let old = old.clone();
            let server = self.fixed.server.clone();
            let store = self.fixed.system_store;
            tokio::task::spawn_blocking(move || prepare(&path, &old, server, store)).await
        };
        let next = match checked {
            Ok(Ok(next)) => next,
            Ok(Err((outcome, why))) => {
                match outcome {
                    Outcome::NeedsUpgrade => warn!("SIGHUP: needs an upgrade: {why} changed; the running config stays (run `tollgate reload`)"),
                    _ => error!("SIGHUP: the config is not valid; the running config stays:\n{why}"),
                }
                let why = match outcome {
                    Outcome::NeedsUpgrade => format!("needs an upgrade: {why} changed"),
                    _ => why,
                };
                self.reloads.record(outcome, Some(why));
                return false;
            }
            Err(e) => {
                error!("SIGHUP: the reload failed: {e}");
                self.reloads.record(Outcome::Invalid, Some(e.to_string()));
                return false;
            }
        };
        let validated = started.elapsed();
        let next = next_generation(&old, next, &self.fixed.server);
        let routes = next.gateway().router.routes().len();
        for (i, certs) in &self.listener_certs {
            if let Some(tls) = next.gateway().listen.get(*i).and_then(|l| l.tls.as_ref()) {
                if certs.load().fingerprint() != tls.fingerprint() {
                    info!("listen[{i}]: new handshakes get the certificates read now");
                }
                certs.store(tls.clone());
            }
        }
        live.swap(next);
        self.reloads.record(Outcome::Ok, None);
        let total = started.elapsed();
        info!(
            "SIGHUP: config reloaded in process ({routes} routes) in {total:?} (read and validated in {validated:?}, state carried and swapped in {:?})",
            total - validated
        );
        true
    }
}

/// Load and validate `path`, refuse what needs an upgrade, and start the new gateway's auth.
fn prepare(
    path: &std::path::Path,
    old: &Tollgate,
    server: Arc<ServerConf>,
    system_store: bool,
) -> Result<Gateway, (Outcome, String)> {
    let loaded = crate::gateway::load_file(&path.to_string_lossy())
        .map_err(|errs| (Outcome::Invalid, format!("{}: {errs}", path.display())))?;
    let fixed = Fixed {
        server,
        system_store,
    };
    if let Some(key) = needs_upgrade(&fixed, old.gateway(), &loaded) {
        return Err((Outcome::NeedsUpgrade, key));
    }
    loaded.gateway.auth.start().map_err(|e| {
        (
            Outcome::Invalid,
            format!("{}: cannot start: {e}", path.display()),
        )
    })?;
    Ok(loaded.gateway)
}

/// Start `gw`'s background work; it stops when `stop` says so.
fn spawn_background(gw: &Gateway, stop: watch::Receiver<bool>, first_round: Option<FirstRound>) {
    let having = |has: fn(&crate::upstream::Upstream) -> bool| -> Vec<_> {
        gw.upstreams.iter().filter(|u| has(u)).cloned().collect()
    };
    let checked = having(|u| u.health.is_some());
    if !checked.is_empty() {
        let hc = crate::upstream::health::HealthService {
            first_round: first_round.unwrap_or_else(|| FirstRound::new(checked.len())),
            upstreams: checked,
        };
        let stop = stop.clone();
        tokio::spawn(async move { hc.start(stop).await });
    }
    let resolved = having(|u| u.discovery.is_some() || u.source.is_some());
    if !resolved.is_empty() {
        let rs = crate::upstream::discovery::ResolveService {
            upstreams: resolved,
        };
        let stop = stop.clone();
        tokio::spawn(async move { rs.start(stop).await });
    }
    let remotes = gw.auth.remotes();
    if !remotes.is_empty() {
        let rs = crate::policy::auth::remote::RefreshService { remotes };
        tokio::spawn(async move { rs.start(stop).await });
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let (mut hup, mut usr1) = match (
            signal(SignalKind::hangup()),
            signal(SignalKind::user_defined1()),
        ) {
            (Ok(h), Ok(u)) => (h, u),
            (Err(e), _) | (_, Err(e)) => {
                error!("cannot handle SIGHUP/SIGUSR1: {e}");
                return;
            }
        };
        self.reloads.ready.store(true, Relaxed);
        let (mut stop, rx) = watch::channel(false);
        spawn_background(
            self.live.current().gateway(),
            rx,
            Some(self.first_round.clone()),
        );
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP received: reloading {}", self.path.as_ref().map_or("-".into(), |p| p.display().to_string()));
                    if self.reload().await {
                        let _ = stop.send(true);
                        let (tx, rx) = watch::channel(false);
                        stop = tx;
                        spawn_background(self.live.current().gateway(), rx, None);
                    }
                }
                _ = usr1.recv() => {
                    info!("SIGUSR1 received: reopening the access log");
                    self.live.current().observe().access_log.reopen();
                }
                _ = shutdown.changed() => {
                    let _ = stop.send(true);
                    return;
                }
            }
        }
    }
}
