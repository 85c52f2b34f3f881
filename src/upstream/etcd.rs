//! `targets: {etcd: {endpoints, prefix, username, password, ca}}`: an upstream's backends
//! from the keys under `prefix` in etcd, each value `host:port` or
//! `{"address": "host:port", "weight": N}`.
//!
//! etcd is asked through its JSON gateway (`POST /v3/kv/range`, `/v3/watch`, keys base64),
//! over Pingora's HTTP/1 client, so no gRPC stack is linked. The background task reads the
//! whole prefix, then holds a watch from the next revision and reads again at its first
//! event. When etcd cannot be reached the last set stays (last-known-good); every new set is
//! written to the state directory and read back at a start while etcd is down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use pingora::connectors::http::v1::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::v1::client::HttpSession;
use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;

use super::discovery::{self, Resolver, TargetAddr};
use crate::config::ConfigErrors;
use crate::config::SecretFile;

/// Each connect, read and write of a range or an authentication.
const STEP: Duration = Duration::from_secs(3);
/// A watch with no event is closed and the prefix read again after this long.
const WATCH_FOR: Duration = Duration::from_secs(300);
/// The largest range answer read.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

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
            .filter_map(|(i, e)| match endpoint(e) {
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
            let path = format!("{base}.{key}");
            let v = s.as_ref()?.load(&path, errs)?;
            match String::from_utf8(v) {
                Ok(v) => Some(v),
                Err(_) => {
                    errs.push(path, "is not UTF-8 text");
                    None
                }
            }
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
                    super::discovery::list_weighted(&set)
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

    /// Read the whole prefix from the first endpoint that answers, and resolve its values.
    pub async fn snapshot(&self, c: &Connector) -> Result<Snapshot, String> {
        let body = serde_json::json!({
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(prefix_end(self.prefix.as_bytes())),
        });
        let answer = self.call(c, "/v3/kv/range", &body).await?;
        let v: serde_json::Value =
            serde_json::from_slice(&answer).map_err(|e| format!("etcd answered no JSON: {e}"))?;
        let revision = int(&v["header"]["revision"]);
        let mut values = Vec::new();
        for kv in v["kvs"].as_array().into_iter().flatten() {
            let key = decode(&kv["key"]);
            let value = decode(&kv["value"]);
            values.push((key, value));
        }
        let resolver = self.resolver.clone();
        let prefix = self.prefix.clone();
        let set = tokio::task::spawn_blocking(move || backends(&prefix, &*resolver, values))
            .await
            .map_err(|e| format!("resolving failed: {e}"))?;
        Ok((set, revision))
    }

    /// Hold a watch on the prefix from `revision`: returns at its first event (or after
    /// [`WATCH_FOR`]), an error when the stream cannot be opened or breaks.
    pub async fn watch(&self, c: &Connector, revision: i64) -> Result<(), String> {
        let body = serde_json::json!({"create_request": {
            "key": B64.encode(&self.prefix),
            "range_end": B64.encode(prefix_end(self.prefix.as_bytes())),
            "start_revision": revision.to_string(),
        }});
        let mut last = String::new();
        for e in &self.endpoints {
            let mut s = match self.open(c, e, "/v3/watch", &body, None).await {
                Ok(s) => s,
                Err(m) => {
                    last = m;
                    continue;
                }
            };
            let events = async {
                let mut seen = Vec::new();
                loop {
                    match s.read_body_ref().await {
                        Ok(Some(chunk)) => {
                            seen.extend_from_slice(chunk);
                            // An event, or the watch cancelled (a compacted revision):
                            // either way, read the prefix again.
                            let hit = |w: &[u8]| memchr::memmem::find(&seen, w).is_some();
                            if hit(b"\"events\"") || hit(b"\"canceled\"") {
                                return Ok(());
                            }
                            if seen.len() > MAX_ANSWER {
                                seen.clear();
                            }
                        }
                        Ok(None) => return Err("the watch ended".to_owned()),
                        Err(e) => return Err(format!("the watch broke: {e}")),
                    }
                }
            };
            let r = tokio::time::timeout(WATCH_FOR, events)
                .await
                .unwrap_or(Ok(()));
            s.shutdown().await;
            return r;
        }
        Err(last)
    }

    /// POST `body` to `path` on each endpoint in turn until one answers 200.
    async fn call(
        &self,
        c: &Connector,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        let mut last = String::from("no endpoint");
        for e in &self.endpoints {
            let exchange = async {
                let mut s = self.open(c, e, path, body, Some(STEP)).await?;
                read_all(&mut s, MAX_ANSWER).await
            };
            match tokio::time::timeout(STEP * 3, exchange).await {
                Ok(Ok(a)) => return Ok(a),
                Ok(Err(m)) => last = format!("{}: {m}", e.authority),
                Err(_) => last = format!("{}: no answer in time", e.authority),
            }
        }
        Err(last)
    }

    /// Connect to `e`, authenticate when configured, send the request and read the answer's
    /// head: a session whose body is the answer (only a 200 is one).
    async fn open(
        &self,
        c: &Connector,
        e: &Endpoint,
        path: &str,
        body: &serde_json::Value,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let token = match &self.credentials {
            None => None,
            Some((user, pass)) => {
                let auth = serde_json::json!({"name": user, "password": pass});
                let mut s = self
                    .send(c, e, "/v3/auth/authenticate", &auth, None, Some(STEP))
                    .await?;
                let answer = read_all(&mut s, 64 * 1024).await?;
                let v: serde_json::Value = serde_json::from_slice(&answer)
                    .map_err(|_| "authentication answered no JSON".to_owned())?;
                match v["token"].as_str() {
                    Some(t) => Some(t.to_owned()),
                    None => return Err("authentication gave no token".into()),
                }
            }
        };
        self.send(c, e, path, body, token.as_deref(), step).await
    }

    /// A connection to `e`: each address its host resolves to in turn (a name such as
    /// `localhost` may resolve to an address etcd does not listen on).
    async fn connect(
        &self,
        c: &Connector,
        e: &Endpoint,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let addrs = tokio::net::lookup_host((e.host.as_str(), e.port))
            .await
            .map_err(|err| format!("cannot resolve {}: {err}", e.host))?;
        let mut last = format!("{} has no address", e.host);
        for addr in addrs {
            let mut peer = HttpPeer::new(addr, e.tls, e.host.clone());
            let o = &mut peer.options;
            o.verify_cert = true;
            o.verify_hostname = true;
            o.ca.clone_from(&self.ca);
            o.connection_timeout = Some(STEP);
            o.total_connection_timeout = Some(STEP);
            o.read_timeout = step;
            o.write_timeout = Some(STEP);
            match c.get_http_session(&peer).await {
                Ok((s, _)) => return Ok(s),
                Err(err) => last = format!("cannot connect to {}: {err}", e.authority),
            }
        }
        Err(last)
    }

    async fn send(
        &self,
        c: &Connector,
        e: &Endpoint,
        path: &str,
        body: &serde_json::Value,
        token: Option<&str>,
        step: Option<Duration>,
    ) -> Result<HttpSession, String> {
        let mut s = self.connect(c, e, step).await?;
        let bytes = body.to_string();
        let len = bytes.len().to_string();
        let mut req =
            RequestHeader::build("POST", path.as_bytes(), None).map_err(|err| err.to_string())?;
        let mut headers = vec![
            ("Host", e.authority.as_str()),
            ("Content-Type", "application/json"),
            ("Content-Length", len.as_str()),
            ("Connection", "close"),
        ];
        if let Some(t) = token {
            headers.push(("Authorization", t));
        }
        for (k, v) in headers {
            req.insert_header(k, v).map_err(|err| err.to_string())?;
        }
        let io = |err: Box<pingora::Error>| format!("{}: {err}", e.authority);
        s.write_request_header(Box::new(req)).await.map_err(io)?;
        s.write_body(bytes.as_bytes()).await.map_err(io)?;
        s.finish_body().await.map_err(io)?;
        s.read_response().await.map_err(io)?;
        match s.get_status().map_or(0, |s| s.as_u16()) {
            200 => Ok(s),
            status => {
                let why = read_all(&mut s, 4096).await.unwrap_or_default();
                let why = String::from_utf8_lossy(&why);
                Err(format!("{path} answered {status} {}", why.trim()))
            }
        }
    }
}

/// The whole answer body (at most `max` bytes); the connection is closed after it.
async fn read_all(s: &mut HttpSession, max: usize) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    while let Some(chunk) = s
        .read_body_ref()
        .await
        .map_err(|e| format!("the answer was cut: {e}"))?
    {
        if answer.len() + chunk.len() > max {
            return Err("the answer is too large".to_owned());
        }
        answer.extend_from_slice(chunk);
    }
    s.shutdown().await;
    Ok(answer)
}

fn endpoint(url: &str) -> Result<Endpoint, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "{url:?} must be http://host:port or https://host:port"
            ))
        }
    };
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{url:?}: give the endpoint without a path"));
    }
    let Some(auth) = uri.authority() else {
        return Err(format!("{url:?} has no host"));
    };
    if auth.as_str().contains('@') {
        return Err(format!(
            "{url:?}: credentials go in username and password, not the URL"
        ));
    }
    let host = auth.host().trim_start_matches('[').trim_end_matches(']');
    if tls && host.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "{url:?} names an IP address: etcd's certificate is checked against a host \
             name, so use a name its certificate carries"
        ));
    }
    Ok(Endpoint {
        tls,
        host: host.to_owned(),
        port: auth.port_u16().unwrap_or(2379),
        authority: auth.as_str().to_owned(),
    })
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int(v: &serde_json::Value) -> i64 {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| v.as_i64())
        .unwrap_or(0)
}

fn decode(v: &serde_json::Value) -> Vec<u8> {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .unwrap_or_default()
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
    fn prefix_end_is_the_next_key_after_every_prefixed_one() {
        assert_eq!(prefix_end(b"/a/"), b"/a0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

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
    fn endpoints_are_http_or_https_urls_without_a_path() {
        let e = endpoint("http://127.0.0.1:2379").unwrap();
        assert_eq!((e.tls, e.port, e.host.as_str()), (false, 2379, "127.0.0.1"));
        assert!(endpoint("https://etcd.internal:2379").unwrap().tls);
        for bad in [
            "127.0.0.1:2379",
            "ftp://x:1",
            "http://x:1/v3",
            "https://10.0.0.1:2379",
            "http://u:p@x:1",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
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
