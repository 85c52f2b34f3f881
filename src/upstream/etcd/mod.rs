//! `targets: {etcd: {endpoints, prefix, username, password, ca}}`: an upstream's backends
//! from the keys under `prefix` in etcd, each value `host:port` or
//! `{"address": "host:port", "weight": N}`.
//!
//! etcd is asked through its JSON gateway (`POST /v3/kv/range`, `/v3/watch`, keys base64),
//! over Pingora's HTTP/1 client, so no gRPC stack is linked. The background task reads the
//! whole prefix, then holds a watch from the next revision and reads again at its first
//! event. When etcd cannot be reached the last set stays (last-known-good); every new set is
//! written to the state directory and read back at a start while etcd is down.

mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use pingora::connectors::http::v1::Connector;
use pingora::protocols::tls::CaType;
use serde::Deserialize;

use super::discovery::{self, Resolver, TargetAddr};
use crate::config::ConfigErrors;
use crate::config::SecretFile;

/// `targets: {etcd: {...}}` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub username: Option<SecretFile>,
    #[serde(default)]
    pub password: Option<SecretFile>,
    #[serde(default)]
    pub ca: Option<String>,
}

/// One `endpoints[i]`: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
    authority: String,
}

/// A compiled etcd source.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    pub prefix: String,
    credentials: Option<(String, String)>,
    ca: Option<Arc<CaType>>,
    /// The last-known-good file in the state directory.
    pub cache: PathBuf,
    resolver: Arc<dyn Resolver>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// A set of backends read from etcd, with the revision it was read at.
pub type Snapshot = (Vec<(SocketAddr, usize)>, i64);

impl Etcd {
    /// Check `f` at `base` (`upstreams.NAME.targets.etcd`).
    pub fn compile(
        base: &str,
        upstream: &str,
        f: EtcdFile,
        resolver: Arc<dyn Resolver>,
        state_dir: &std::path::Path,
        errs: &mut ConfigErrors,
    ) -> Option<Etcd> {
        let before = errs.0.len();
        if f.endpoints.is_empty() {
            errs.push(
                format!("{base}.endpoints"),
                "needs at least one etcd endpoint (e.g. [\"http://127.0.0.1:2379\"])",
            );
        }
        let endpoints: Vec<Endpoint> = f
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match client::endpoint(e) {
                Ok(e) => Some(e),
                Err(m) => {
                    errs.push(format!("{base}.endpoints[{i}]"), m);
                    None
                }
            })
            .collect();
        let prefix = f.prefix.unwrap_or_default();
        if !prefix.starts_with('/') {
            errs.push(
                format!("{base}.prefix"),
                "must start with / (e.g. /services/catalog/)",
            );
        }
        let mut secret = |key: &str, s: &Option<SecretFile>| {
            s.as_ref()?.load_text(&format!("{base}.{key}"), errs)
        };
        let user = secret("username", &f.username);
        let pass = secret("password", &f.password);
        match (&f.username, &f.password) {
            (Some(_), None) => errs.push(format!("{base}.password"), "username needs a password"),
            (None, Some(_)) => errs.push(format!("{base}.username"), "password needs a username"),
            _ => {}
        }
        let ca = f.ca.and_then(|file| {
            if !endpoints.iter().any(|e| e.tls) {
                errs.push(format!("{base}.ca"), "only applies to https:// endpoints");
                return None;
            }
            super::tls::read_ca(&format!("{base}.ca"), &file, errs)
        });
        if errs.0.len() > before {
            return None;
        }
        let source = format!("{}\n{prefix}", f.endpoints.join("\n"));
        let cache = state_dir.join(crate::state::file_name("etcd", upstream, &source));
        Some(Etcd {
            endpoints,
            prefix,
            credentials: user.zip(pass),
            ca,
            cache,
            resolver,
        })
    }

    /// The backends under the prefix now, for the load: from etcd, else from the
    /// last-known-good file (with a warning), else the reason neither works.
    pub fn at_load(&self) -> Result<Vec<(SocketAddr, usize)>, String> {
        let fetched = std::thread::scope(|s| {
            s.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| format!("cannot start a runtime: {e}"))?;
                rt.block_on(async { self.snapshot(&self.connector()).await })
            })
            .join()
            .unwrap_or_else(|_| Err("the etcd read panicked".into()))
        });
        match fetched {
            Ok((set, _)) if !set.is_empty() => Ok(set),
            Ok(_) => self.cached(format!("no usable key under {}", self.prefix)),
            Err(e) => self.cached(e),
        }
    }

    /// A client for the endpoints; it loads the system trust store only without a `ca`
    /// ([`super::trust`]).
    pub fn connector(&self) -> Connector {
        super::trust::build_connectors(self.ca.is_none(), || Connector::new(None))
    }

    fn cached(&self, why: String) -> Result<Vec<(SocketAddr, usize)>, String> {
        match read_cache(&self.cache) {
            Ok(set) => {
                log::warn!(
                    "etcd prefix {}: {why}; starting with the last-known-good set from {} ({})",
                    self.prefix,
                    self.cache.display(),
                    discovery::list_weighted(&set)
                );
                Ok(set)
            }
            Err(e) => Err(format!(
                "cannot read {} from etcd ({why}), and no last-known-good set: {e}",
                self.prefix
            )),
        }
    }

    /// Write `set` as the last-known-good set.
    pub fn persist(&self, set: &[(SocketAddr, usize)]) -> Result<(), String> {
        let v: Vec<_> = set
            .iter()
            .map(|(a, w)| serde_json::json!({"address": a.to_string(), "weight": w}))
            .collect();
        let doc = serde_json::json!({"prefix": self.prefix, "backends": v});
        crate::state::write_atomically(&self.cache, doc.to_string().as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", self.cache.display()))
    }
}

/// The backends the values name, sorted by address (the first key naming one wins). A
/// value that cannot be used is logged and left out.
fn backends(
    prefix: &str,
    resolver: &dyn Resolver,
    values: Vec<(Vec<u8>, Vec<u8>)>,
) -> Vec<(SocketAddr, usize)> {
    let mut set: Vec<(SocketAddr, usize)> = Vec::new();
    for (key, value) in values {
        let key = String::from_utf8_lossy(&key);
        match value_backends(resolver, &value) {
            Ok(addrs) => {
                for (a, w) in addrs {
                    if !set.iter().any(|(x, _)| *x == a) {
                        set.push((a, w));
                    }
                }
            }
            Err(e) => log::warn!("etcd prefix {prefix}: key {key}: {e}; left out"),
        }
    }
    set.sort();
    set
}

/// `host:port` or `{"address": "host:port", "weight": N}` (weight 1 to 1000, default 1).
fn value_backends(
    resolver: &dyn Resolver,
    value: &[u8],
) -> Result<Vec<(SocketAddr, usize)>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "the value is not UTF-8".to_owned())?;
    let text = text.trim();
    let (address, weight) = if text.starts_with('{') {
        #[derive(Deserialize)]
        struct Value {
            address: String,
            #[serde(default)]
            weight: Option<u64>,
        }
        let v: Value = serde_json::from_str(text)
            .map_err(|e| format!("not {{\"address\": \"host:port\", \"weight\": N}}: {e}"))?;
        (v.address, v.weight.unwrap_or(1))
    } else {
        (text.to_owned(), 1)
    };
    if !(1..=1000).contains(&weight) {
        return Err(format!("weight {weight} is not between 1 and 1000"));
    }
    let weight = weight as usize;
    match discovery::parse_target(&address)? {
        TargetAddr::Ip(a) => Ok(vec![(a, weight)]),
        TargetAddr::Name(host, port) => Ok(discovery::resolve(resolver, &host, port)?
            .into_iter()
            .map(|a| (a, weight))
            .collect()),
    }
}

fn read_cache(path: &std::path::Path) -> Result<Vec<(SocketAddr, usize)>, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
    let set: Vec<(SocketAddr, usize)> = v["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| {
            let a = b["address"].as_str()?.parse().ok()?;
            Some((a, b["weight"].as_u64().unwrap_or(1).max(1) as usize))
        })
        .collect();
    if set.is_empty() {
        return Err(format!("{} holds no backend", path.display()));
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_host_port_or_json_with_a_weight() {
        let r = super::super::discovery::SystemResolver;
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        assert_eq!(value_backends(&r, b"10.0.0.1:80").unwrap(), vec![(a, 1)]);
        assert_eq!(
            value_backends(&r, br#"{"address": "10.0.0.1:80", "weight": 3}"#).unwrap(),
            vec![(a, 3)]
        );
        assert!(value_backends(&r, b"10.0.0.1")
            .unwrap_err()
            .contains("port"));
        assert!(
            value_backends(&r, br#"{"address": "10.0.0.1:80", "weight": 0}"#)
                .unwrap_err()
                .contains("weight")
        );
        assert!(value_backends(&r, br#"{"addr": "x"}"#).is_err());
    }

    #[test]
    fn the_cache_round_trips_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut errs = ConfigErrors::default();
        let f = EtcdFile {
            endpoints: vec!["http://127.0.0.1:1".into()],
            prefix: Some("/s/".into()),
            ..Default::default()
        };
        let r: Arc<dyn Resolver> = Arc::new(super::super::discovery::SystemResolver);
        let e = Etcd::compile("b", "u", f, r, dir.path(), &mut errs).unwrap();
        assert!(read_cache(&e.cache).is_err());
        let set = vec![("10.0.0.1:80".parse().unwrap(), 2)];
        e.persist(&set).unwrap();
        assert_eq!(read_cache(&e.cache).unwrap(), set);
        std::fs::write(&e.cache, r#"{"backends": []}"#).unwrap();
        assert!(read_cache(&e.cache).unwrap_err().contains("no backend"));
    }
}
