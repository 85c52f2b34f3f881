//! A JWT provider's keys from its identity provider: `jwks: {url, refresh, min_refresh, ca,
//! on_unavailable}`, or the `jwks_uri` of OpenID discovery (`super::discovery`).
//!
//! The network is never on the request path. The set is fetched when the gateway starts
//! ([`fetch_at_start`]; `tollgate -t` and `explain` never fetch), then by a background service
//! ([`RefreshService`]) every `refresh`, and sooner when a token names a `kid` the set does
//! not have: the request is refused 401 at once and wakes the service, at most once per
//! `min_refresh`, so a flood of made-up kids costs the identity provider one fetch. A failed
//! fetch keeps the last good set (retried every `min_refresh`). Every new set is written to
//! the state directory (temp file, then rename), and read back when the identity provider
//! cannot be reached at start, so a restart during its outage still has keys.
//!
//! The request path reads the set once per verification from an `ArcSwap`; the tokens
//! verified with a set are remembered beside it ([`KeySet`]), so a new set starts afresh.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, Guard};
use async_trait::async_trait;
use pingora::protocols::tls::CaType;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde::Deserialize;
use tokio::sync::Notify;

use super::discovery::{self, Discovery};
use super::fetch::{Client, HttpsUrl};
use super::jwks::{self, KeySet, Origin};
use crate::config::ConfigErrors;
use crate::config::Dur;
use crate::state::write_atomically;

/// `jwks: {url, ...}` as written (`url` left out with `discovery: true`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteJwksFile {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub refresh: Option<Dur>,
    #[serde(default)]
    pub min_refresh: Option<Dur>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub on_unavailable: Option<OnUnavailable>,
}

/// What the gateway does when it has no keys at start (neither the identity provider nor
/// the state directory gives any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// The start fails, with the reason.
    #[default]
    Fail,
    /// It serves, refusing this provider's tokens (401) until the keys arrive.
    Deny,
}

const DEFAULT_REFRESH: Duration = Duration::from_secs(600);
const DEFAULT_MIN_REFRESH: Duration = Duration::from_secs(30);
const SHORTEST: Duration = Duration::from_secs(1);
const LONGEST: Duration = Duration::from_secs(24 * 3600);

/// Where the key set is: a URL, or the `jwks_uri` of a discovery document.
pub enum Source {
    Url(HttpsUrl),
    Discovery(Discovery),
}

/// Why no new set was had.
#[derive(Debug)]
pub struct FetchError {
    pub message: String,
    /// The discovery document names another issuer: a configuration error, fatal at start.
    pub wrong_issuer: bool,
}

impl From<String> for FetchError {
    fn from(message: String) -> FetchError {
        FetchError {
            message,
            wrong_issuer: false,
        }
    }
}

impl From<&str> for FetchError {
    fn from(message: &str) -> FetchError {
        FetchError::from(message.to_owned())
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// One provider's remote key set and how it is kept fresh.
pub struct Remote {
    /// `auth.NAME`, for logs.
    pub provider: String,
    pub source: Source,
    pub refresh: Duration,
    pub min_refresh: Duration,
    pub on_unavailable: OnUnavailable,
    /// Where the last good set is kept.
    pub state_file: PathBuf,
    ca: Option<Arc<CaType>>,
    keys: ArcSwap<KeySet>,
    /// CLOCK_MONOTONIC milliseconds before which an unknown kid wakes no fetch.
    next_fetch: AtomicU64,
    /// Whether the last fetch failed (the service then retries every `min_refresh`).
    failing: AtomicBool,
    wake: Notify,
    client: OnceLock<Client>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("from", &self.from())
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// Check `jwks: {url, ...}` at `base` (`auth.NAME.jwks`), or with `discovery` the same
    /// keys but `url`; nothing is fetched.
    pub fn compile(
        provider: &str,
        base: &str,
        f: RemoteJwksFile,
        discovery: Option<Discovery>,
        state_dir: &Path,
        errs: &mut ConfigErrors,
    ) -> Option<Remote> {
        let before = errs.0.len();
        let source = match (f.url, discovery) {
            (None, Some(d)) => Some(Source::Discovery(d)),
            (Some(_), Some(_)) => {
                errs.push(
                    format!("{base}.url"),
                    "not with discovery: true: the key set's URL is the discovery document's \
                     jwks_uri (leave url out, or discovery)",
                );
                None
            }
            (Some(u), None) => HttpsUrl::parse(&u)
                .map_err(|m| errs.push(format!("{base}.url"), m))
                .ok()
                .map(Source::Url),
            (None, None) => {
                errs.push(
                    format!("{base}.url"),
                    "missing: the identity provider's key set URL (or discovery: true with an \
                     https issuer)",
                );
                None
            }
        };
        let mut within = |key: &str, v: Option<Dur>, default: Duration| match v {
            Some(Dur(d)) if !(SHORTEST..=LONGEST).contains(&d) => {
                errs.push(format!("{base}.{key}"), "must be between 1s and 24h");
                default
            }
            Some(Dur(d)) => d,
            None => default,
        };
        let refresh = within("refresh", f.refresh, DEFAULT_REFRESH);
        let min_refresh = within("min_refresh", f.min_refresh, DEFAULT_MIN_REFRESH);
        if min_refresh > refresh {
            errs.push(
                format!("{base}.min_refresh"),
                format!(
                    "must not be longer than refresh ({}): it bounds the fetches between two \
                     refreshes",
                    humantime::format_duration(refresh)
                ),
            );
        }
        let ca =
            f.ca.and_then(|file| crate::upstream::tls::read_ca(&format!("{base}.ca"), &file, errs));
        if errs.0.len() > before {
            return None;
        }
        let source = source?;
        let named_by = match &source {
            Source::Url(u) => &u.text,
            Source::Discovery(d) => &d.document.text,
        };
        Some(Remote {
            state_file: state_dir.join(crate::state::file_name("jwks", provider, named_by)),
            provider: format!("auth.{provider}"),
            source,
            refresh,
            min_refresh,
            on_unavailable: f.on_unavailable.unwrap_or_default(),
            ca,
            keys: ArcSwap::from_pointee(KeySet::empty()),
            next_fetch: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            wake: Notify::new(),
            client: OnceLock::new(),
        })
    }

    /// The current set: read once per verification.
    pub fn keys(&self) -> Guard<Arc<KeySet>> {
        self.keys.load()
    }

    /// A token named a kid the set lacks: wake the refresher, unless it fetched (or was
    /// woken) less than `min_refresh` ago. Lock-free; the request does not wait.
    pub fn unknown_kid(&self) {
        let now = crate::clock::mono_millis();
        let next = self.next_fetch.load(Relaxed);
        if now >= next
            && self
                .next_fetch
                .compare_exchange(next, now + self.min_refresh_ms(), Relaxed, Relaxed)
                .is_ok()
        {
            self.wake.notify_one();
        }
    }

    /// Where the keys come from, for messages: the URL, or the discovery document's
    /// `jwks_uri` (with the URL when one was found).
    pub fn from(&self) -> String {
        match &self.source {
            Source::Url(u) => u.text.clone(),
            Source::Discovery(d) => match d.jwks_uri() {
                Some(u) => format!("{} (the jwks_uri of {})", u.text, d.document.text),
                None => format!("the jwks_uri of {}", d.document.text),
            },
        }
    }

    /// The key path of the setting that names where the keys are.
    pub fn key_path(&self) -> String {
        match &self.source {
            Source::Url(_) => format!("{}.jwks", self.provider),
            Source::Discovery(_) => format!("{}.discovery", self.provider),
        }
    }

    fn min_refresh_ms(&self) -> u64 {
        self.min_refresh.as_millis() as u64
    }

    fn client(&self) -> &Client {
        self.client
            .get_or_init(|| Client::new(self.ca.clone(), false))
    }

    /// Fetch the set now; a good one replaces the current set (when it differs) and is
    /// written to the state directory. The number of keys, or why there are none new.
    pub async fn fetch(&self) -> Result<usize, FetchError> {
        self.next_fetch
            .store(crate::clock::mono_millis() + self.min_refresh_ms(), Relaxed);
        let r = self.try_fetch().await;
        self.failing.store(r.is_err(), Relaxed);
        r
    }

    async fn try_fetch(&self) -> Result<usize, FetchError> {
        let found;
        let url: &HttpsUrl = match &self.source {
            Source::Url(u) => u,
            Source::Discovery(d) => match d.url(self.client(), self.refresh).await {
                Ok(u) => {
                    found = u;
                    &found
                }
                Err(discovery::Failed::Unavailable(m)) => return Err(m.into()),
                Err(discovery::Failed::WrongIssuer(message)) => {
                    return Err(FetchError {
                        message,
                        wrong_issuer: true,
                    })
                }
            },
        };
        let doc = match self.client().get(url).await {
            Ok(d) => d,
            Err(e) => {
                if let Source::Discovery(d) = &self.source {
                    d.stale();
                }
                return Err(e.into());
            }
        };
        let d = jwks::decode(&doc)?;
        for p in &d.problems {
            log::warn!("{}: {}: {p}: left out", self.provider, url.text);
        }
        if d.keys.is_empty() {
            return Err("the set has no key tollgate can verify with".into());
        }
        let n = d.keys.len();
        let current = self.keys.load();
        if current.origin == Origin::Fetched && *current.document == *doc {
            return Ok(n);
        }
        let set = KeySet::new(d.keys, doc.into_boxed_slice(), Origin::Fetched);
        log::info!(
            "{}: {n} keys from {} (kid {})",
            self.provider,
            url.text,
            set.kids().join(", ")
        );
        if *current.document != *set.document {
            if let Err(e) = write_atomically(&self.state_file, &set.document) {
                log::warn!(
                    "{}: cannot keep the keys in {}: {e} (a restart while {} is down would have none)",
                    self.provider,
                    self.state_file.display(),
                    url.host
                );
            }
        }
        self.keys.store(Arc::new(set));
        Ok(n)
    }

    /// Install the set kept in the state directory, if there is a usable one. Its time of
    /// writing, or why there is none.
    pub fn load_cached(&self) -> Result<SystemTime, String> {
        let path = &self.state_file;
        let doc = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let d = jwks::decode(&doc).map_err(|e| format!("{}: {e}", path.display()))?;
        if d.keys.is_empty() {
            return Err(format!("{}: no usable key", path.display()));
        }
        let at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.keys.store(Arc::new(KeySet::new(
            d.keys,
            doc.into_boxed_slice(),
            Origin::Cached,
        )));
        Ok(at)
    }

    /// Where the keys come from and what is held, for `tollgate explain`.
    pub fn describe(&self) -> String {
        let set = self.keys.load();
        let kids = set.kids().join(", ");
        let file = self.state_file.display();
        match set.origin {
            Origin::Nothing => format!(
                "keys from {}; none cached in {file}: its tokens are refused until the \
                 gateway fetches them",
                self.from()
            ),
            Origin::Cached => format!(
                "keys from {}, as cached in {file}{}: kid {kids}",
                self.from(),
                std::fs::metadata(&self.state_file)
                    .and_then(|m| m.modified())
                    .map(|t| format!(" at {}", humantime::format_rfc3339_seconds(t)))
                    .unwrap_or_default()
            ),
            Origin::Fetched => format!("keys fetched from {}: kid {kids}", self.from()),
        }
    }

    /// The refresher's loop for this set, until shutdown.
    async fn run(&self, mut shutdown: ShutdownWatch) {
        let mut wait = if self.keys.load().is_empty() {
            Duration::ZERO
        } else if self.failing.load(Relaxed) {
            // Serving the state directory's copy: ask again soon.
            self.min_refresh
        } else {
            self.refresh
        };
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
            let r = tokio::select! {
                r = self.fetch() => r,
                _ = shutdown.changed() => return,
            };
            if let Err(e) = r {
                let held = self.keys.load();
                if held.is_empty() {
                    log::warn!(
                        "{}: cannot fetch the keys from {}: {e}; its tokens are refused (401) \
                         until the keys arrive (retrying every {})",
                        self.provider,
                        self.from(),
                        humantime::format_duration(self.min_refresh)
                    );
                } else {
                    log::warn!(
                        "{}: cannot refresh the keys from {}: {e}; keeping the {} held \
                         (retrying every {})",
                        self.provider,
                        self.from(),
                        held.len(),
                        humantime::format_duration(self.min_refresh)
                    );
                }
            }
            wait = if self.failing.load(Relaxed) {
                self.min_refresh
            } else {
                self.refresh
            };
        }
    }
}

/// Fetch every remote set before serving (`tollgate` and `tollgate -u`, never `-t`). A set
/// that cannot be fetched falls back on the state directory's copy; with neither, an
/// `on_unavailable: fail` provider makes this an error (the start fails), a `deny` one
/// serves 401 until its keys arrive.
pub fn fetch_at_start(remotes: &[Arc<Remote>]) -> Result<(), String> {
    if remotes.is_empty() {
        return Ok(());
    }
    for r in remotes {
        let _ = r.client.set(Client::new(r.ca.clone(), true));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime to fetch the keys: {e}"))?;
    let results = rt.block_on(futures::future::join_all(remotes.iter().map(|r| r.fetch())));
    let mut fatal = Vec::new();
    for (r, res) in remotes.iter().zip(results) {
        let e = match res {
            Ok(_) => continue,
            // A wrong issuer is the configuration's error, whatever keys are at hand.
            Err(e) if e.wrong_issuer => {
                fatal.push(format!("{}.issuer: {e}", r.provider));
                continue;
            }
            Err(e) => e,
        };
        match r.load_cached() {
            Ok(at) => log::warn!(
                "{}: cannot fetch the keys from {}: {e}; using the set cached in {} at {}",
                r.provider,
                r.from(),
                r.state_file.display(),
                humantime::format_rfc3339_seconds(at)
            ),
            Err(cached) => {
                let why = format!(
                    "{}: cannot fetch the keys from {}: {e}; and no cached set ({cached})",
                    r.key_path(),
                    r.from()
                );
                match r.on_unavailable {
                    OnUnavailable::Fail => fatal.push(why),
                    OnUnavailable::Deny => log::warn!(
                        "{why}; on_unavailable: deny, so its tokens are refused (401) until \
                         the keys arrive"
                    ),
                }
            }
        }
    }
    if fatal.is_empty() {
        Ok(())
    } else {
        Err(fatal.join("\n"))
    }
}

/// Keeps every remote set fresh, off the request path.
pub struct RefreshService {
    pub remotes: Vec<Arc<Remote>>,
}

#[async_trait]
impl BackgroundService for RefreshService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let loops = self.remotes.iter().map(|r| r.run(shutdown.clone()));
        futures::future::join_all(loops).await;
    }
}
