//! Loading the one YAML file: Pingora's `ServerConf` keys and tollgate's sections side by side.
//!
//! Two layers, one conversion: `file` says what the YAML says, `compile` turns it into the
//! runtime `Gateway` and owns every error message. Loading never stops at the first problem:
//! every error is collected with the path of the offending key, so a user fixes a file in one
//! pass and nothing is served from a config that is not entirely valid.

pub mod compile;
pub mod file;
mod routes;
mod upstream;

use std::sync::Arc;

use pingora::server::configuration::ServerConf;
use serde_yaml::{Mapping, Value};

use crate::config::{parse, ConfigErrors};
use crate::upstream::discovery::{Resolver, SystemResolver};
pub use compile::Gateway;
use file::{FileConfig, TOLLGATE_KEYS};

/// A fully validated config: what Pingora needs and what tollgate runs.
pub struct Loaded {
    pub server: ServerConf,
    pub gateway: Gateway,
    /// The file it was read from (`SIGHUP` reads it again); `None` for config text.
    pub path: Option<std::path::PathBuf>,
}

/// Defaults tollgate sets where the file is silent, because Pingora's are wrong for a gateway
/// under systemd (a 300 s grace period outlives any sane `TimeoutStopSec`), or slower (see
/// `work_stealing` below).
const DEFAULT_GRACE_PERIOD_SECONDS: u64 = 10;
const DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS: u64 = 5;
const DEFAULT_UPSTREAM_KEEPALIVE_POOL: usize = 1024;

/// Read and validate a config file.
pub fn load_file(path: &str) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut errs = ConfigErrors::default();
        errs.push("", format!("cannot read config file {path}: {e}"));
        errs
    })?;
    let mut loaded = load_str(&text)?;
    loaded.path = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.into()));
    Ok(loaded)
}

/// Parse and validate config text.
pub fn load_str(text: &str) -> Result<Loaded, ConfigErrors> {
    load_str_with(text, std::sync::Arc::new(SystemResolver))
}

/// Parse and validate config text, resolving host-name targets (at load and every
/// `resolve_every`) with `resolver` instead of the system's: the seam tests use to drive DNS.
pub fn load_str_with(text: &str, resolver: Arc<dyn Resolver>) -> Result<Loaded, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    // A byte-order mark is how some editors start a UTF-8 file; YAML allows it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some(line) = too_deep(text) {
        errs.push(
            "",
            format!("not valid YAML: line {line}: nested more than {MAX_DEPTH} levels deep"),
        );
        return Err(errs);
    }
    let root = match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => m,
        Ok(Value::Null) => {
            errs.push(
                "",
                "the config is empty (no keys at all): nothing would be served but 404s",
            );
            return Err(errs);
        }
        Ok(_) => {
            errs.push("", "the config must be a YAML mapping of keys to values");
            return Err(errs);
        }
        Err(e) => {
            errs.push("", format!("not valid YAML: {e}"));
            return Err(errs);
        }
    };

    let pingora_keys = pingora_keys();
    let mut pingora_part = Mapping::new();
    let mut file = FileConfig::default();
    for (k, v) in root {
        let Some(key) = k.as_str().map(str::to_owned) else {
            errs.push("", format!("top-level keys must be strings, found {k:?}"));
            continue;
        };
        if pingora_keys.iter().any(|p| p == &key) {
            pingora_part.insert(k, v);
            continue;
        }
        read_section(&mut file, &key, v, &mut errs);
    }

    let server = server_conf(pingora_part, &mut errs);
    let gateway = compile::compile(file, &resolver, &mut errs);
    match (server, gateway) {
        (Some(server), Some(gateway)) if errs.is_empty() => Ok(Loaded {
            server,
            gateway,
            path: None,
        }),
        _ => Err(errs),
    }
}

/// How deep flow collections (`[`, `{`) may nest. serde_yaml refuses a deeper document too, but
/// only after its parser has gone through it, which takes time quadratic in the depth.
const MAX_DEPTH: usize = 128;

/// The line where flow collections nest deeper than [`MAX_DEPTH`], if they do: a scan that
/// skips quoted strings and comments, so brackets inside them do not count.
fn too_deep(text: &str) -> Option<usize> {
    let (mut depth, mut line) = (0usize, 1usize);
    let mut quote: Option<u8> = None;
    let mut prev = b'\n';
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match (quote, b) {
            (_, b'\n') => line += 1,
            (Some(b'"'), b'\\') => line += usize::from(bytes.next() == Some(b'\n')),
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, b'"' | b'\'') if depth > 0 || matches!(prev, b' ' | b'\t' | b'\n' | b':') => {
                quote = Some(b)
            }
            (None, b'#') if matches!(prev, b' ' | b'\t' | b'\n') => {
                if bytes.by_ref().any(|c| c == b'\n') {
                    line += 1;
                }
                prev = b'\n';
                continue;
            }
            (None, b'[' | b'{') => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Some(line);
                }
            }
            (None, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = b;
    }
    None
}

/// Deserialize one tollgate section into `file`, recording errors under its key path.
fn read_section(file: &mut FileConfig, key: &str, v: Value, errs: &mut ConfigErrors) {
    match key {
        "listen" => file.listen = crate::listen::read(v, errs),
        "admin" => {
            file.admin = match v {
                // The older form: the address alone.
                Value::String(address) => Some(file::AdminFile {
                    address,
                    token: None,
                    refusals_kept: None,
                    short: true,
                }),
                v => parse(key, v, errs),
            }
        }
        "trusted_proxies" => file.trusted_proxies = parse(key, v, errs).unwrap_or_default(),
        "upstreams" => match v {
            Value::Mapping(m) => {
                for (name, u) in m {
                    let name = yaml_key(&name);
                    let u = parse(&format!("upstreams.{name}"), u, errs);
                    file.upstreams.push((name, u));
                }
            }
            Value::Null => {}
            _ => errs.push(
                key,
                "must be a mapping of upstream name to {targets: [...]}",
            ),
        },
        "routes" => match v {
            Value::Sequence(items) => {
                for (i, r) in items.into_iter().enumerate() {
                    file.routes.push(parse(&format!("routes[{i}]"), r, errs));
                }
            }
            Value::Null => {}
            _ => errs.push(key, "must be a list of routes"),
        },
        "consumers" | "auth" => match v {
            Value::Mapping(m) => {
                for (name, x) in m {
                    let name = yaml_key(&name);
                    let path = format!("{key}.{name}");
                    if key == "consumers" {
                        if let Some(c) = parse(&path, x, errs) {
                            file.consumers.push((name, c));
                        }
                    } else {
                        let a = crate::policy::auth::config::read(&path, x, errs);
                        file.auth.push((name, a));
                    }
                }
            }
            Value::Null => {}
            _ => errs.push(key, "must be a mapping of names to settings"),
        },
        "access_log" => file.access_log = parse(key, v, errs),
        "limits" => file.limits = parse(key, v, errs),
        "rate_limits" => file.rate_limits = parse(key, v, errs),
        "redis" => file.redis = parse(key, v, errs),
        "fast_path" => file.fast_path = parse(key, v, errs),
        "underscores_in_headers" => file.underscores_in_headers = parse(key, v, errs),
        "state_dir" => file.state_dir = parse(key, v, errs),
        "tracing" => file.tracing = crate::trace::config::read(v, errs),
        "dns" => file.dns = parse(key, v, errs),
        "caches" => file.caches = parse(key, v, errs),
        _ => errs.push(
            key,
            format!(
                "unknown key (tollgate keys: {}; Pingora keys are also accepted)",
                TOLLGATE_KEYS.join(", ")
            ),
        ),
    }
}

fn yaml_key(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_owned(),
    }
}

/// The keys Pingora's `ServerConf` understands, read from its own serialization so that a
/// Pingora upgrade that adds keys needs no change here.
fn pingora_keys() -> Vec<String> {
    match serde_yaml::to_value(ServerConf::default()) {
        Ok(Value::Mapping(m)) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn server_conf(part: Mapping, errs: &mut ConfigErrors) -> Option<ServerConf> {
    let has = |k: &str| part.contains_key(k);
    let (grace, shutdown, stealing, pool) = (
        has("grace_period_seconds"),
        has("graceful_shutdown_timeout_seconds"),
        has("work_stealing"),
        has("upstream_keepalive_pool_size"),
    );
    let mut conf: ServerConf = parse("", Value::Mapping(part), errs)?;
    if !grace {
        conf.grace_period_seconds = Some(DEFAULT_GRACE_PERIOD_SECONDS);
    }
    if !shutdown {
        conf.graceful_shutdown_timeout_seconds = Some(DEFAULT_GRACEFUL_SHUTDOWN_TIMEOUT_SECONDS);
    }
    if !stealing {
        // One runtime per thread, as nginx has one event loop per worker: in the load harness
        // (1 thread, 32 keep-alive connections) this served 17.2k req/s against 13.1k with
        // Pingora's default work-stealing runtime.
        conf.work_stealing = false;
    }
    if !pool {
        // Pingora keeps 128 idle upstream connections; beyond that many concurrent requests,
        // every release closes a connection and the next request opens one (9,400 new upstream
        // connections in 3 s at 256 client connections in the load harness).
        conf.upstream_keepalive_pool_size = DEFAULT_UPSTREAM_KEEPALIVE_POOL;
    }
    if conf.threads == 0 {
        errs.push("threads", "must be at least 1");
    }
    match conf.validate() {
        Ok(c) => Some(c),
        Err(e) => {
            errs.push("", format!("Pingora server settings: {e}"));
            None
        }
    }
}
