//! What the file says about caching (`caches`, a route's `cache`) and the one conversion into
//! the runtime [`Stores`] and [`RouteCache`], owning every error message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method};
use serde::Deserialize;

use super::{KeyPart, RouteCache, Stores};
use crate::config::{ConfigErrors, Dur, Size};

/// `caches:` — store name → store.
pub type StoresFile = BTreeMap<String, StoreFile>;

/// One in-memory store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreFile {
    pub max_size: Size,
}

/// A route's `cache`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheFile {
    #[serde(default)]
    pub store: Option<String>,
    #[serde(default)]
    pub ttl: Option<Dur>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub statuses: Option<Vec<u16>>,
    #[serde(default)]
    pub key: Option<Vec<String>>,
    #[serde(default)]
    pub shared: Option<bool>,
    #[serde(default)]
    pub store_set_cookie: Option<bool>,
    #[serde(default)]
    pub honour_client_no_cache: Option<bool>,
    #[serde(default)]
    pub stale_while_revalidate: Option<Dur>,
    #[serde(default)]
    pub stale_if_error: Option<Dur>,
    #[serde(default)]
    pub lock: Option<Dur>,
    #[serde(default)]
    pub max_object: Option<Size>,
}

/// `ttl`'s default: the freshness of a response that states none.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// `lock`'s default: how long requests for one key wait on the request that fills it.
pub const DEFAULT_LOCK: Duration = Duration::from_secs(2);
/// `max_object`'s default (or the store's `max_size`, when smaller).
pub const DEFAULT_MAX_OBJECT: u64 = 8 << 20;
/// `statuses`' default: RFC 9110 §15.1's heuristically cacheable statuses.
pub const DEFAULT_STATUSES: [u16; 12] =
    [200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501];

/// `caches:` compiled: each store, empty.
pub fn stores(file: Option<StoresFile>, errs: &mut ConfigErrors) -> Stores {
    let mut stores = Stores::default();
    for (name, s) in file.unwrap_or_default() {
        if s.max_size.0 == 0 {
            errs.push(format!("caches.{name}.max_size"), "must be greater than 0");
            continue;
        }
        stores.add(name, s.max_size.0 as usize);
    }
    stores
}

/// The route's facts a cache needs: its name, and whether it authenticates.
pub struct RouteFacts<'a> {
    pub name: &'a str,
    pub auth: bool,
}

/// A route's `cache` compiled, or `None` with its errors pushed under `base`.
pub fn compile(
    base: &str,
    f: CacheFile,
    route: RouteFacts<'_>,
    stores: &Stores,
    errs: &mut ConfigErrors,
) -> Option<Arc<RouteCache>> {
    let before = errs.0.len();
    let store = match (&f.store, stores.names().len()) {
        (Some(name), _) => match stores.index(name) {
            Some(i) => Some(i),
            None => {
                errs.push(
                    format!("{base}.store"),
                    format!("no store {name:?} in caches ({})", names(stores)),
                );
                None
            }
        },
        (None, 1) => Some(0),
        (None, 0) => {
            errs.push(
                base,
                "no store to cache in: define one under caches, e.g. caches: {default: {max_size: 256MiB}}",
            );
            None
        }
        (None, _) => {
            errs.push(
                format!("{base}.store"),
                format!("several stores exist ({}): name one", names(stores)),
            );
            None
        }
    };
    let methods = methods(base, f.methods, errs);
    let statuses = statuses(base, f.statuses, errs);
    let key = key_parts(base, f.key.unwrap_or_default(), route.auth, errs);
    let positive = |key: &str, d: Option<Dur>, errs: &mut ConfigErrors| match d {
        Some(d) if d.0.is_zero() => {
            errs.push(format!("{base}.{key}"), "must be greater than 0");
            None
        }
        d => d.map(|d| d.0),
    };
    let ttl = positive("ttl", f.ttl, errs).unwrap_or(DEFAULT_TTL);
    let lock = positive("lock", f.lock, errs).unwrap_or(DEFAULT_LOCK);
    let swr = positive("stale_while_revalidate", f.stale_while_revalidate, errs);
    let sie = positive("stale_if_error", f.stale_if_error, errs);
    if f.shared.is_some() && !route.auth {
        errs.push(
            format!("{base}.shared"),
            "only means something on a route with auth (the consumer is then left out of the key)",
        );
    }
    let max_size = store.map_or(usize::MAX, |s| stores.get(s).max_size);
    let max_object = match f.max_object {
        Some(s) if s.0 == 0 => {
            errs.push(format!("{base}.max_object"), "must be greater than 0");
            0
        }
        Some(s) if s.0 as usize > max_size => {
            errs.push(
                format!("{base}.max_object"),
                format!("is larger than the store's max_size ({max_size} bytes)"),
            );
            0
        }
        Some(s) => s.0 as usize,
        None => (DEFAULT_MAX_OBJECT as usize).min(max_size),
    };
    if errs.0.len() > before {
        return None;
    }
    Some(Arc::new(RouteCache::new(
        route.name,
        stores.get(store?),
        super::Rules {
            ttl,
            methods,
            statuses,
            key,
            shared: f.shared.unwrap_or(false),
            auth: route.auth,
            store_set_cookie: f.store_set_cookie.unwrap_or(false),
            honour_client_no_cache: f.honour_client_no_cache.unwrap_or(false),
            stale_while_revalidate: swr,
            stale_if_error: sie,
            lock,
            max_object,
        },
    )))
}

fn names(stores: &Stores) -> String {
    match stores.names().join(", ") {
        s if s.is_empty() => "none defined".into(),
        s => s,
    }
}

fn methods(base: &str, m: Option<Vec<String>>, errs: &mut ConfigErrors) -> (bool, bool) {
    let Some(m) = m else {
        return (true, true);
    };
    let (mut get, mut head) = (false, false);
    for (i, name) in m.iter().enumerate() {
        match name.to_ascii_uppercase().as_str() {
            "GET" => get = true,
            "HEAD" => head = true,
            _ => errs.push(
                format!("{base}.methods[{i}]"),
                format!("{name:?}: only GET and HEAD responses are cached"),
            ),
        }
    }
    if !get && !head {
        errs.push(format!("{base}.methods"), "must list GET, HEAD or both");
    }
    (get, head)
}

fn statuses(base: &str, s: Option<Vec<u16>>, errs: &mut ConfigErrors) -> Vec<u16> {
    let Some(s) = s else {
        return DEFAULT_STATUSES.to_vec();
    };
    if s.is_empty() {
        errs.push(
            format!("{base}.statuses"),
            "must list at least one status (leave it out for RFC 9110's heuristically cacheable ones)",
        );
    }
    for (i, code) in s.iter().enumerate() {
        if !(200..=599).contains(code) || *code == 304 {
            errs.push(
                format!("{base}.statuses[{i}]"),
                format!("{code} is not a status a cache stores (200 to 599, not 304)"),
            );
        }
    }
    s
}

fn key_parts(base: &str, parts: Vec<String>, auth: bool, errs: &mut ConfigErrors) -> Vec<KeyPart> {
    let mut out = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let path = format!("{base}.key[{i}]");
        if let Some(name) = p.strip_prefix("header:") {
            match HeaderName::try_from(name.trim()) {
                Ok(h) => out.push(KeyPart::Header(h)),
                Err(_) => errs.push(path, format!("{name:?} is not a header name")),
            }
        } else if let Some(name) = p.strip_prefix("claim:") {
            if !auth {
                errs.push(path, "claim:NAME needs a route with auth");
            } else if name.trim().is_empty() {
                errs.push(path, "claim: needs a claim name");
            } else {
                out.push(KeyPart::Claim(name.trim().into()));
            }
        } else {
            errs.push(
                path,
                format!("{p:?}: a key part is header:NAME or claim:NAME (the host, path and query are always in the key)"),
            );
        }
    }
    out
}

/// Whether `m` is a method the route's cache serves (GET, HEAD).
pub fn cached_method(methods: (bool, bool), m: &Method) -> bool {
    (methods.0 && m == Method::GET) || (methods.1 && m == Method::HEAD)
}
