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
                humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
                    E::custom(format!(
                        "bad duration {s:?}: {e} (write e.g. \"500ms\", \"2s\", \"1m\")"
                    ))
                })
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

/// tollgate's own top-level sections. Pingora's `ServerConf` keys sit beside them in the same
/// file and are split off first; each section here is deserialized on its own (see
/// `config::load`) so that one bad section does not hide the errors of the others.
#[derive(Debug, Default)]
pub struct FileConfig {
    pub listen: Option<Vec<String>>,
    pub admin: Option<String>,
    pub trusted_proxies: Vec<String>,
    /// In file order: the order matters for messages and `/health`.
    pub upstreams: Vec<(String, UpstreamFile)>,
    /// `None` where an entry failed to parse, so indexes stay those of the file.
    pub routes: Vec<Option<RouteFile>>,
    /// Authentication: consumers and providers, in file order.
    pub consumers: Vec<(String, crate::auth::config::ConsumerFile)>,
    pub auth: Vec<(String, crate::auth::config::AuthFile)>,
    /// Owned by the rate-limiting issue.
    pub rate_limits: Option<serde_yaml::Value>,
    pub redis: Option<serde_yaml::Value>,
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
    /// Owned by the upstreams issue.
    #[serde(default)]
    pub health_check: Option<serde_yaml::Value>,
    #[serde(default)]
    pub circuit_breaker: Option<serde_yaml::Value>,
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
    /// Authentication: providers (any one admits), allowed consumers, required claims.
    #[serde(default)]
    pub auth: Option<Vec<String>>,
    #[serde(default)]
    pub consumers: Option<Vec<String>>,
    #[serde(default)]
    pub claims: Option<BTreeMap<String, Vec<String>>>,
    /// Owned by the rate-limiting issue.
    #[serde(default)]
    pub rate_limit: Option<serde_yaml::Value>,
}
