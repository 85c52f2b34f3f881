//! The one conversion from what the file says to what the proxy runs. It owns every config
//! error message: each names the key path and, where it can, says what would be valid.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use super::file::{FileConfig, LimitsFile};
use crate::client::TrustedProxies;
use crate::config::ConfigErrors;
use crate::listen::check_socket_addr;
use crate::observe::access_log::{AccessLog, AccessLogFile};
use crate::policy::guard::Limits;
use crate::policy::router::Router;
use crate::upstream::discovery::Resolver;
use crate::upstream::Upstream;

/// Everything the proxy runs, compiled and validated. The hot path only reads it.
#[derive(Debug)]
pub struct Gateway {
    pub listen: Vec<crate::listen::Listener>,
    pub admin: Option<Admin>,
    pub trusted_proxies: TrustedProxies,
    pub router: Router,
    pub upstreams: Vec<Arc<Upstream>>,
    /// Each route's `mirror`, by route id.
    pub mirrors: Vec<Option<Arc<crate::mirror::Mirror>>>,
    /// The response cache stores (`caches`).
    pub stores: crate::cache::Stores,
    /// Each route's `cache`, by route id.
    pub caches: Vec<Option<Arc<crate::cache::RouteCache>>>,
    pub access_log: AccessLogFile,
    pub limits: Limits,
    pub rate_limits: crate::policy::limit::Limits,
    pub auth: crate::policy::auth::Auth,
    /// tollgate's own HTTP/1 engine serves what it can (`fast_path`, default on); off, every
    /// connection and request takes Pingora's listener, session and proxy path.
    pub fast_path: bool,
    pub underscores: super::file::Underscores,
    /// Where state that outlives a restart is kept (`state_dir`).
    pub state_dir: std::path::PathBuf,
    /// OpenTelemetry tracing (`tracing`); `None`: nothing is traced, nothing forwarded.
    pub tracing: Option<crate::trace::Tracer>,
}

/// `state_dir`'s default: systemd's `StateDirectory=tollgate`.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tollgate";

/// `state_dir`: a directory path (created when first written; nothing is read or written
/// unless a feature keeps state there).
fn state_dir(v: Option<String>, errs: &mut ConfigErrors) -> std::path::PathBuf {
    match v {
        Some(d) if d.trim().is_empty() => {
            errs.push(
                "state_dir",
                "must not be empty (leave it out for /var/lib/tollgate)",
            );
            DEFAULT_STATE_DIR.into()
        }
        Some(d) => {
            let p = std::path::PathBuf::from(d);
            if p.is_file() {
                errs.push(
                    "state_dir",
                    format!("{} is a file, not a directory", p.display()),
                );
            }
            p
        }
        None => DEFAULT_STATE_DIR.into(),
    }
}

/// Under `underscores_in_headers: drop`, an API key header with an underscore would never
/// reach its provider: a config error, at the header's key path.
fn underscored_key_headers(
    policy: super::file::Underscores,
    auth: &[(String, crate::policy::auth::config::AuthFile)],
    errs: &mut ConfigErrors,
) {
    if policy != super::file::Underscores::Drop {
        return;
    }
    for (name, a) in auth {
        if let crate::policy::auth::config::AuthFile::ApiKey(
            crate::policy::auth::config::ApiKeyFile {
                header: Some(h), ..
            },
        ) = a
        {
            if h.contains('_') {
                errs.push(
                    format!("auth.{name}.header"),
                    format!(
                        "{h:?} has an underscore, and underscores_in_headers: drop (the default) \
                         removes such request headers before auth sees them: name it with a dash, \
                         or set underscores_in_headers: allow"
                    ),
                );
            }
        }
    }
}

/// An `mtls` provider admits nobody unless some listener asks clients for a certificate: a
/// config error at the provider (unless a listener's own errors explain it).
/// A route rule that reads a client header whose name has an underscore (a `match` header, a
/// `sticky: header:NAME`), where `underscores_in_headers: drop` removes such headers before
/// routing: the rule could never see one, so it is refused rather than silently never held.
fn underscored_route_headers(
    policy: super::file::Underscores,
    routes: &[Option<super::file::RouteFile>],
    errs: &mut ConfigErrors,
) {
    if policy != super::file::Underscores::Drop {
        return;
    }
    let why = |name: &str| {
        format!(
            "{name:?} has an underscore, and underscores_in_headers: drop (the default) removes \
             such request headers before routing: name it with a dash, or set \
             underscores_in_headers: allow"
        )
    };
    for (i, r) in routes.iter().enumerate() {
        let Some(r) = r else { continue };
        let headers = r.match_rules.iter().flat_map(|m| m.headers.keys());
        for name in headers.filter(|n| n.contains('_')) {
            errs.push(format!("routes[{i}].match.headers.{name}"), why(name));
        }
        if let Some(name) = r.sticky.as_deref().and_then(|s| s.strip_prefix("header:")) {
            if name.contains('_') {
                errs.push(format!("routes[{i}].sticky"), why(name));
            }
        }
    }
}

fn mtls_needs_client_auth(
    listen: &[crate::listen::Listener],
    auth: &crate::policy::auth::Auth,
    errs: &mut ConfigErrors,
) {
    let asked = listen
        .iter()
        .any(|l| l.tls.as_ref().is_some_and(|t| t.client_auth.is_some()));
    if asked || errs.0.iter().any(|e| e.path.starts_with("listen")) {
        return;
    }
    for (name, p) in auth.names.iter().zip(&auth.providers) {
        if matches!(p, crate::policy::auth::Provider::Mtls(_)) {
            errs.push(
                format!("auth.{name}"),
                "type mtls needs a TLS listener that asks clients for a certificate \
                 (listen[i].tls.client_auth: {ca, required}); no listener does",
            );
        }
    }
}

pub fn compile(
    file: FileConfig,
    resolver: &Arc<dyn Resolver>,
    errs: &mut ConfigErrors,
) -> Option<Gateway> {
    let before = errs.0.len();
    let trusted_proxies = trusted(&file.trusted_proxies, errs);
    let listen = crate::listen::compile(file.listen, !file.trusted_proxies.is_empty(), errs);
    let admin = file.admin.and_then(|a| admin(a, &listen, errs));
    let access_log = file.access_log.unwrap_or_default();
    if let Err(e) = AccessLog::check(&access_log) {
        errs.push(
            "access_log.path",
            format!("cannot open {:?} for appending: {e}", access_log.path),
        );
    }
    let underscores = file.underscores_in_headers.unwrap_or_default();
    underscored_key_headers(underscores, &file.auth, errs);
    underscored_route_headers(underscores, &file.routes, errs);
    let state_dir = state_dir(file.state_dir, errs);
    let auth = crate::policy::auth::config::compile(file.consumers, file.auth, &state_dir, errs);
    mtls_needs_client_auth(&listen, &auth, errs);
    let limit_names: Vec<String> = file
        .rate_limits
        .iter()
        .flat_map(|m| m.keys().cloned())
        .collect();
    let rate_limits = crate::policy::limit::config::compile(file.rate_limits, file.redis, errs);

    // `dns.servers`, when given, answer host-name targets too; else the system's resolver
    // does, and SRV asks /etc/resolv.conf's servers.
    let dns = crate::upstream::source::dns(file.dns, errs);
    let resolver: Arc<dyn Resolver> = match &dns {
        Some(d) => Arc::new(d.clone()),
        None => resolver.clone(),
    };
    let dns = dns.unwrap_or_else(crate::upstream::dns::DnsClient::system);
    let ctx = crate::upstream::source::Ctx {
        dns: &dns,
        resolver: &resolver,
        state_dir: &state_dir,
    };
    let mut names = Vec::new();
    let mut upstreams = Vec::new();
    let mut broken = Vec::new();
    for (name, u) in file.upstreams {
        match u.and_then(|u| super::upstream::upstream(&name, u, &ctx, errs)) {
            Some(up) => {
                names.push(name);
                upstreams.push(Arc::new(up));
            }
            None => broken.push(name),
        }
    }
    let limits = limits(file.limits.unwrap_or_default(), errs);
    let mut route_files = file.routes;
    let mirrors: Vec<Option<Arc<crate::mirror::Mirror>>> = route_files
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let f = r.as_mut()?.mirror.take()?;
            let base = format!("routes[{i}].mirror");
            crate::mirror::Mirror::compile(&base, f, &upstreams, errs).map(Arc::new)
        })
        .collect();
    let stores = crate::cache::config::stores(file.caches, errs);
    let caches: Vec<Option<Arc<crate::cache::RouteCache>>> = route_files
        .iter_mut()
        .enumerate()
        .map(|(i, r)| {
            let r = r.as_mut()?;
            let f = r.cache.take()?;
            let facts = crate::cache::config::RouteFacts {
                name: &r.name,
                auth: r.auth.is_some(),
            };
            crate::cache::config::compile(&format!("routes[{i}].cache"), f, facts, &stores, errs)
        })
        .collect();
    let routes = super::routes::routes(
        route_files,
        (&names, &broken),
        &limits,
        (&rate_limits, &limit_names),
        &auth,
        errs,
    );
    if errs.0.len() > before {
        return None;
    }
    let router = match Router::new(routes) {
        Ok(r) => r,
        Err(conflicts) => {
            for c in conflicts {
                errs.push(
                    format!("routes[{}]", c.route),
                    format!(
                        "same host, path_prefix and overlapping methods as routes[{}], and the same match and priority: one of them could never match",
                        c.other
                    ),
                );
            }
            return None;
        }
    };
    if router.routes().is_empty() {
        log::warn!("config has no routes: every request will get 404 no_route");
    }
    Some(Gateway {
        listen,
        admin,
        trusted_proxies,
        router,
        upstreams,
        mirrors,
        stores,
        caches,
        access_log,
        limits,
        rate_limits,
        auth,
        fast_path: file.fast_path.unwrap_or(true),
        underscores,
        state_dir,
        tracing: file.tracing.map(crate::trace::Tracer::new),
    })
}

fn limits(l: LimitsFile, errs: &mut ConfigErrors) -> Limits {
    let d = Limits::default();
    let mut size = |key: &str, v: Option<crate::config::Size>, default: u64| match v {
        Some(s) if s.0 == 0 => {
            errs.push(format!("limits.{key}"), "must be greater than 0");
            default
        }
        Some(s) => s.0,
        None => default,
    };
    let max_uri_bytes = size("max_uri_bytes", l.max_uri_bytes, d.max_uri_bytes as u64) as usize;
    let max_header_bytes = size(
        "max_header_bytes",
        l.max_header_bytes,
        d.max_header_bytes as u64,
    ) as usize;
    let max_body = size("max_body", l.max_body, d.max_body);
    let max_headers = match l.max_headers {
        Some(n) if n == 0 || n > 250 => {
            errs.push(
                "limits.max_headers",
                "must be between 1 and 250 (Pingora refuses more than 256)",
            );
            d.max_headers
        }
        Some(n) => n,
        None => d.max_headers,
    };
    let max_connections_per_ip = match l.max_connections_per_ip {
        Some(0) => {
            errs.push(
                "limits.max_connections_per_ip",
                "must be at least 1 (or left out: no cap)",
            );
            None
        }
        n => n,
    };
    let mut dur = |key: &str, v, default| positive(format!("limits.{key}"), v, default, errs);
    Limits {
        max_uri_bytes,
        max_header_bytes,
        max_headers,
        max_body,
        body_idle_timeout: dur(
            "body_idle_timeout",
            l.body_idle_timeout,
            d.body_idle_timeout,
        ),
        keepalive_timeout: dur(
            "keepalive_timeout",
            l.keepalive_timeout,
            d.keepalive_timeout,
        ),
        head_timeout: dur("head_timeout", l.head_timeout, d.head_timeout),
        send_timeout: dur("send_timeout", l.send_timeout, d.send_timeout),
        max_connections_per_ip,
    }
}

pub(super) fn cidrs(path: &str, list: &[String], errs: &mut ConfigErrors) -> Vec<IpNet> {
    let mut nets = Vec::new();
    for (i, c) in list.iter().enumerate() {
        let parsed = c
            .parse::<IpNet>()
            .or_else(|_| c.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => nets.push(n.trunc()),
            Err(_) => errs.push(
                format!("{path}[{i}]"),
                format!("{c:?} is not a CIDR or IP (e.g. \"10.0.0.0/8\", \"::1\")"),
            ),
        }
    }
    nets
}

fn trusted(list: &[String], errs: &mut ConfigErrors) -> TrustedProxies {
    TrustedProxies::new(cidrs("trusted_proxies", list, errs))
}

/// A configured duration that must be positive, or the default when absent.
pub(super) fn positive(
    path: String,
    v: Option<crate::config::Dur>,
    default: Duration,
    errs: &mut ConfigErrors,
) -> Duration {
    match v {
        Some(v) if v.0.is_zero() => {
            errs.push(path, "must be greater than 0");
            default
        }
        Some(v) => v.0,
        None => default,
    }
}

/// The admin listener's compiled settings.
#[derive(Debug)]
pub struct Admin {
    pub address: String,
    /// When set, every admin path but `/health` requires it (`Authorization: Bearer`, or a
    /// browser's Basic credentials with it as the password).
    pub token: Option<Box<[u8]>>,
    pub refusals_kept: usize,
}

/// The shortest admin token: one that can be guessed protects nothing.
const MIN_ADMIN_TOKEN: usize = 16;

fn admin(
    a: super::file::AdminFile,
    listen: &[crate::listen::Listener],
    errs: &mut ConfigErrors,
) -> Option<Admin> {
    let key = |k: &str| match k {
        "" => "admin".to_owned(),
        k => format!("admin.{k}"),
    };
    let path = match a.short {
        true => key(""),
        false => key("address"),
    };
    let mut ok = check_socket_addr(&path, &a.address, errs);
    if ok && listen.iter().any(|l| l.addr == a.address) {
        let why = "is also in listen: give the admin endpoint its own address";
        errs.push(path, format!("{} {why}", a.address));
        ok = false;
    }
    let token = match &a.token {
        None => None,
        Some(t) => match t.load(&key("token"), errs) {
            Some(v) if v.len() >= MIN_ADMIN_TOKEN => Some(v.into_boxed_slice()),
            Some(v) => {
                errs.push(
                    key("token"),
                    format!(
                        "is {} bytes{}: an admin token must have at least {MIN_ADMIN_TOKEN}",
                        v.len(),
                        t.describe()
                    ),
                );
                None
            }
            None => None,
        },
    };
    let refusals_kept = match a.refusals_kept {
        Some(0) => {
            errs.push(key("refusals_kept"), "must be at least 1");
            200
        }
        Some(n) if n > 100_000 => {
            errs.push(key("refusals_kept"), "must be at most 100000");
            200
        }
        n => n.unwrap_or(200),
    };
    let loopback = a
        .address
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|s| s.ip().is_loopback());
    if ok && token.is_none() && !loopback {
        log::warn!(
            "admin: {} is not a loopback address and has no token: anyone who reaches it \
             sees routes, backends, refused requests and metrics (set admin.token)",
            a.address
        );
    }
    ok.then_some(Admin {
        address: a.address,
        token,
        refusals_kept,
    })
}
