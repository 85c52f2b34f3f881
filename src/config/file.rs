//! What the YAML file says: plain serde types, friendly to users.
//!
//! These types only describe shape. Every semantic check (does the upstream exist, is the
//! CIDR valid, ...) lives in `compile.rs`, which turns them into the runtime structures and
//! owns every error message.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// The longest duration any setting takes: beyond it, arithmetic on it (a rate limit's period,
/// a `Retry-After`) stops meaning anything.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The largest size any setting takes (1 TiB).
const MAX_SIZE: u64 = 1 << 40;

/// A duration written as a string (`500ms`, `2s`, `1m`), parsed with `humantime`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration string such as \"500ms\", \"2s\" or \"1m\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Dur, E> {
                let d = humantime::parse_duration(s.trim()).map_err(|e| {
                    E::custom(format!(
                        "bad duration {s:?}: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
                    ))
                })?;
                if d > MAX_DURATION {
                    return Err(E::custom(format!(
                        "bad duration {s:?}: longer than a year (365d), the most any setting takes"
                    )));
                }
                Ok(Dur(d))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "bad duration {n}: durations need a unit, e.g. \"{n}s\" or \"{n}ms\""
                )))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Dur, E> {
                self.visit_u64(n.unsigned_abs())
            }
            fn visit_f64<E: de::Error>(self, n: f64) -> Result<Dur, E> {
                Err(E::custom(format!(
                    "bad duration {n}: durations are strings with a unit, e.g. \"500ms\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size written as a number of bytes or a string with a unit (`64KiB`, `10MB`), parsed with
/// `bytesize`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (bytes, written) = match serde_yaml::Value::deserialize(d)? {
            serde_yaml::Value::Number(n) => match n.as_u64() {
                Some(b) => (b, n.to_string()),
                None => {
                    return Err(de::Error::custom(format!(
                        "bad size {n}: a whole number of bytes"
                    )))
                }
            },
            serde_yaml::Value::String(s) => match s.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => (b.as_u64(), format!("{s:?}")),
                Err(e) => {
                    return Err(de::Error::custom(format!(
                        "bad size {s:?}: {e} (write e.g. 8192, \"64KiB\", \"10MB\")"
                    )))
                }
            },
            _ => {
                return Err(de::Error::custom(
                    "a size is a number of bytes or a string like \"64KiB\"",
                ))
            }
        };
        if bytes > MAX_SIZE {
            return Err(de::Error::custom(format!(
                "bad size {written}: larger than 1TiB, the most any setting takes"
            )));
        }
        Ok(Size(bytes))
    }
}

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
    pub admin: Option<String>,
    pub trusted_proxies: Vec<String>,
    /// In file order: the order matters for messages and `/health`. `None` where an entry
    /// failed to parse: its name is still known, so routes naming it are not also in error.
    pub upstreams: Vec<(String, Option<UpstreamFile>)>,
    /// `None` where an entry failed to parse, so indexes stay those of the file.
    pub routes: Vec<Option<RouteFile>>,
    /// Authentication: consumers and providers, in file order.
    pub consumers: Vec<(String, crate::auth::config::ConsumerFile)>,
    pub auth: Vec<(String, crate::auth::config::AuthFile)>,
    pub access_log: Option<crate::observe::access_log::AccessLogFile>,
    pub limits: Option<LimitsFile>,
    /// Rate limiting (`crate::limit::config`).
    pub rate_limits: Option<crate::limit::config::RateLimitsFile>,
    pub redis: Option<crate::limit::config::RedisFile>,
    /// `fast_path`: tollgate's own HTTP/1 engine on (the default) or off.
    pub fast_path: Option<bool>,
    pub underscores_in_headers: Option<Underscores>,
    /// Where tollgate keeps what must outlive a restart (a remote JWKS's last good set).
    pub state_dir: Option<String>,
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
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub targets: Vec<TargetFile>,
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

/// `health_check: {type: http, path: /health, status: 200, interval: 2s, timeout: 500ms,
/// healthy: 2, unhealthy: 3}`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub healthy: Option<u32>,
    #[serde(default)]
    pub unhealthy: Option<u32>,
}

/// `circuit_breaker: {failures: 5, open_for: 10s, half_open_requests: 1,
/// failure_statuses: [502, 503, 504]}`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    #[serde(default)]
    pub failures: Option<u32>,
    #[serde(default)]
    pub open_for: Option<Dur>,
    #[serde(default)]
    pub half_open_requests: Option<u32>,
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
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
    pub upstream: String,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub max_body: Option<Size>,
    #[serde(default)]
    pub ip_allow: Option<Vec<String>>,
    #[serde(default)]
    pub ip_deny: Option<Vec<String>>,
    #[serde(default)]
    pub cors: Option<crate::cors::CorsFile>,
    /// Authentication: providers (any one admits), allowed consumers, required claims.
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    #[serde(default)]
    pub consumers: Option<Vec<String>>,
    #[serde(default)]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// A rate limit name or a list of names (all must pass).
    #[serde(default)]
    pub rate_limit: Option<crate::limit::config::RateLimitRef>,
    /// Whether WebSocket upgrades are forwarded (default `true`), and how long an upgraded
    /// connection may stay silent.
    #[serde(default)]
    pub websocket: Option<bool>,
    #[serde(default)]
    pub websocket_idle_timeout: Option<Dur>,
    /// Response compression (`crate::compress`).
    #[serde(default)]
    pub compression: Option<crate::compress::CompressionFile>,
}
