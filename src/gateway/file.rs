//! What the YAML file says: plain serde types, friendly to users.
//!
//! These types only describe shape. Every semantic check (does the upstream exist, is the
//! CIDR valid, ...) lives in `compile.rs`, which turns them into the runtime structures and
//! owns every error message.

use std::collections::BTreeMap;

use serde::de::{self, Deserializer};
use serde::Deserialize;

pub use crate::config::{Dur, Size};
use crate::upstream::config::{CircuitBreakerFile, HealthCheckFile};

/// `limits:`: what a client may send before tollgate refuses it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    #[serde(default)]
    pub max_uri_bytes: Option<Size>,
    #[serde(default)]
    pub max_header_bytes: Option<Size>,
    #[serde(default)]
    pub max_headers: Option<usize>,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub body_idle_timeout: Option<Dur>,
    #[serde(default)]
    pub keepalive_timeout: Option<Dur>,
    #[serde(default)]
    pub head_timeout: Option<Dur>,
    #[serde(default)]
    pub send_timeout: Option<Dur>,
    #[serde(default)]
    pub max_connections_per_ip: Option<u32>,
}

/// tollgate's own top-level sections. Pingora's `ServerConf` keys sit beside them in the same
/// file and are split off first; each section here is deserialized on its own (see
/// `config::load`) so that one bad section does not hide the errors of the others.
#[derive(Debug, Default)]
pub struct FileConfig {
    /// `None` entries failed to parse (see `crate::listen::read`).
    pub listen: Option<Vec<Option<crate::listen::ListenFile>>>,
    pub admin: Option<AdminFile>,
    pub trusted_proxies: Vec<String>,
    /// In file order: the order matters for messages and `/health`. `None` where an entry
    /// failed to parse: its name is still known, so routes naming it are not also in error.
    pub upstreams: Vec<(String, Option<UpstreamFile>)>,
    /// `None` where an entry failed to parse, so indexes stay those of the file.
    pub routes: Vec<Option<RouteFile>>,
    /// Authentication: consumers and providers, in file order.
    pub consumers: Vec<(String, crate::policy::auth::config::ConsumerFile)>,
    pub auth: Vec<(String, crate::policy::auth::config::AuthFile)>,
    pub access_log: Option<crate::observe::access_log::AccessLogFile>,
    pub limits: Option<LimitsFile>,
    /// Rate limiting (`crate::policy::limit::config`).
    pub rate_limits: Option<crate::policy::limit::config::RateLimitsFile>,
    pub redis: Option<crate::policy::limit::config::RedisFile>,
    /// `fast_path`: tollgate's own HTTP/1 engine on (the default) or off.
    pub fast_path: Option<bool>,
    pub underscores_in_headers: Option<Underscores>,
    /// Where tollgate keeps what must outlive a restart (a remote JWKS's last good set).
    pub state_dir: Option<String>,
    /// OpenTelemetry tracing, compiled by its own module (`crate::trace::config`).
    pub tracing: Option<crate::trace::config::Config>,
    /// The DNS servers discovery asks (`crate::upstream::source::dns`).
    pub dns: Option<crate::upstream::source::DnsFile>,
    /// Response cache stores (`crate::cache::config`).
    pub caches: Option<crate::cache::config::StoresFile>,
}

/// `underscores_in_headers`: what becomes of a request header whose name has an underscore
/// (`X_Api_Key`), which CGI and WSGI backends cannot tell from the same name with a dash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Underscores {
    /// Removed before routing and auth see the request (nginx's default).
    #[default]
    Drop,
    /// Kept and forwarded.
    Allow,
    /// The request is answered 400 `bad_request`.
    Reject,
}

/// The top-level keys tollgate owns, in the order the docs list them.
pub const TOLLGATE_KEYS: &[&str] = &[
    "listen",
    "admin",
    "trusted_proxies",
    "upstreams",
    "consumers",
    "auth",
    "rate_limits",
    "redis",
    "routes",
    "access_log",
    "limits",
    "fast_path",
    "underscores_in_headers",
    "state_dir",
    "tracing",
    "dns",
    "caches",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub targets: TargetsFile,
    #[serde(default)]
    pub balance: Option<String>,
    #[serde(default)]
    pub hash_key: Option<String>,
    #[serde(default)]
    pub timeouts: Option<TimeoutsFile>,
    #[serde(default)]
    pub retries: Option<u32>,
    #[serde(default)]
    pub health_check: Option<HealthCheckFile>,
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerFile>,
    #[serde(default)]
    pub resolve_every: Option<Dur>,
    /// `http1` (default) or `h2` (`crate::upstream::protocol`).
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub max_h2_streams: Option<u32>,
    #[serde(default)]
    pub tls: Option<crate::upstream::tls::UpstreamTlsFile>,
}

/// `targets`: a list of backends, or a discovery source (`{srv: NAME}`, `{etcd: {...}}`).
#[derive(Debug)]
pub enum TargetsFile {
    List(Vec<TargetFile>),
    Source(crate::upstream::source::SourceFile),
}

impl<'de> Deserialize<'de> for TargetsFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_yaml::Value::deserialize(d)? {
            v @ serde_yaml::Value::Sequence(_) => serde_yaml::from_value(v)
                .map(TargetsFile::List)
                .map_err(de::Error::custom),
            v @ serde_yaml::Value::Mapping(_) => serde_yaml::from_value(v)
                .map(TargetsFile::Source)
                .map_err(de::Error::custom),
            _ => Err(de::Error::custom(
                "a list of \"host:port\", {srv: NAME} or {etcd: {endpoints, prefix}}",
            )),
        }
    }
}

/// A backend: `"10.0.0.1:8080"` or `{address: "10.0.0.1:8080", weight: 2}`.
#[derive(Debug)]
pub struct TargetFile {
    pub address: String,
    pub weight: u32,
}

impl<'de> Deserialize<'de> for TargetFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            address: String,
            #[serde(default = "one")]
            weight: u32,
        }
        fn one() -> u32 {
            1
        }
        match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::String(address) => Ok(TargetFile { address, weight: 1 }),
            serde_yaml::Value::Mapping(m) if m.contains_key("srv") || m.contains_key("etcd") => {
                Err(de::Error::custom(
                    "srv and etcd replace the list: write targets: {srv: NAME} or \
                     targets: {etcd: {...}}, not mixed with \"host:port\" entries",
                ))
            }
            v @ serde_yaml::Value::Mapping(_) => {
                let f: Full = serde_yaml::from_value(v).map_err(de::Error::custom)?;
                Ok(TargetFile {
                    address: f.address,
                    weight: f.weight,
                })
            }
            _ => Err(de::Error::custom(
                "a target is \"host:port\" or {address: \"host:port\", weight: N}",
            )),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    #[serde(default)]
    pub connect: Option<Dur>,
    #[serde(default)]
    pub read: Option<Dur>,
    #[serde(default)]
    pub write: Option<Dur>,
    #[serde(default)]
    pub total: Option<Dur>,
    #[serde(default)]
    pub idle: Option<Dur>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: String,
    #[serde(default)]
    pub host: Option<String>,
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub strip_prefix: Option<bool>,
    #[serde(default)]
    pub upstream: Option<String>,
    /// A weighted choice among upstreams instead of `upstream` (`crate::policy::split`).
    #[serde(default)]
    pub split: Option<Vec<crate::policy::split::BranchFile>>,
    #[serde(default)]
    pub sticky: Option<String>,
    #[serde(default)]
    pub failover: Option<bool>,
    /// A sampled copy of the route's requests to a shadow upstream (`crate::mirror`).
    #[serde(default)]
    pub mirror: Option<crate::mirror::MirrorFile>,
    #[serde(default)]
    pub response_headers: crate::policy::transform::config::ResponseHeadersFile,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub ip_allow: Option<Vec<String>>,
    #[serde(default)]
    pub ip_deny: Option<Vec<String>>,
    #[serde(default)]
    pub cors: Option<crate::policy::cors::CorsFile>,
    /// Authentication: providers (any one admits), allowed consumers, required claims.
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    #[serde(default)]
    pub consumers: Option<Vec<String>>,
    #[serde(default)]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// A rate limit name or a list of names (all must pass).
    #[serde(default)]
    pub rate_limit: Option<crate::policy::limit::config::RateLimitRef>,
    /// Whether WebSocket upgrades are forwarded (default `true`), and how long an upgraded
    /// connection may stay silent.
    #[serde(default)]
    pub websocket: Option<bool>,
    #[serde(default)]
    pub websocket_idle_timeout: Option<Dur>,
    /// Response compression (`crate::compress`).
    #[serde(default)]
    pub compression: Option<crate::compress::CompressionFile>,
    /// Transformation (`crate::policy::transform`): path rewrite, request header and query
    /// edits.
    #[serde(default)]
    pub rewrite: Option<crate::policy::transform::config::RewriteFile>,
    #[serde(default)]
    pub request_headers: Option<crate::policy::transform::config::RequestHeadersFile>,
    #[serde(default)]
    pub query: Option<crate::policy::transform::config::QueryFile>,
    /// Conditions on headers, query and cookies (`crate::policy::router::matching`), and the
    /// order among routes at one host and prefix (higher first; default 0).
    #[serde(default, rename = "match")]
    pub match_rules: Option<crate::policy::router::matching::MatchFile>,
    #[serde(default)]
    pub priority: Option<i32>,
    /// Response caching (`crate::cache`).
    #[serde(default)]
    pub cache: Option<crate::cache::config::CacheFile>,
}

/// `admin`: an address, or `{address, token, refusals_kept}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: String,
    /// A bearer token every admin path but `/health` requires.
    #[serde(default)]
    pub token: Option<crate::policy::auth::config::SecretFile>,
    /// How many recent refusals the dashboard keeps.
    #[serde(default)]
    pub refusals_kept: Option<usize>,
    /// Written as the address alone (`admin: "ADDR"`): errors name `admin`, not
    /// `admin.address`.
    #[serde(skip)]
    pub short: bool,
}
