//! The route table: host, then the longest path prefix on a segment boundary, then priority
//! and `match` rules (headers, query, cookies: `matching`), then method.
//!
//! Compiled once at load. A lookup is at most (path depth + 1) hash probes per candidate host
//! table, each on a slice of the request path, then a look at the routes sharing that host and
//! prefix: no allocation, no linear scan over the table. A prefix none of whose routes' `match`
//! rules hold yields to shorter prefixes and less specific hosts; a route without `match`
//! costs what it did before rules existed.

pub mod matching;
#[cfg(test)]
mod order_tests;
mod target;

use std::sync::{Arc, OnceLock};

use ahash::AHashMap;
use http::{HeaderValue, Method};
use pingora::http::RequestHeader;

/// Index of an upstream in `Gateway::upstreams`.
pub type UpstreamId = usize;

/// A compiled route.
#[derive(Debug)]
pub struct Route {
    /// Position in the table (set by `Router::new`); the request context keeps only this.
    pub id: usize,
    pub name: Arc<str>,
    pub host: Option<HostPattern>,
    /// Normalised: starts with `/`, no trailing `/` (except the root `/` itself).
    pub prefix: String,
    pub methods: Option<MethodSet>,
    pub strip_prefix: bool,
    /// The upstream; of a `split`, its first branch's.
    pub upstream: UpstreamId,
    /// A weighted choice among upstreams, when the route has one.
    pub split: Option<crate::policy::split::Split>,
    pub response_headers: crate::policy::stamp::RouteHeaders,
    pub max_body: u64,
    /// `ip_allow` / `ip_deny`, when the route has any.
    pub ip_rules: Option<crate::policy::guard::IpRules>,
    pub cors: Option<crate::policy::cors::Cors>,
    /// Rate-limit policies of the route (all must pass).
    pub rate_limits: Vec<crate::policy::limit::PolicyId>,
    /// `None`: a public route.
    pub auth: Option<crate::policy::auth::RouteAuth>,
    /// Idle timeout of the route's WebSocket tunnels; `None`: upgrades are refused.
    pub websocket: Option<std::time::Duration>,
    /// Response compression, when the route has it.
    pub compression: Option<crate::compress::Compression>,
    /// Path rewrite, request header and query edits (`crate::policy::transform`); `None`:
    /// the route has none.
    pub transform: Option<Box<crate::policy::transform::Transform>>,
    /// `match:` rules (all must hold); `None`: the route takes any request at its prefix.
    pub match_rules: Option<Box<matching::MatchRules>>,
    /// Among routes at one host and prefix, higher goes first (then more `match` rules).
    pub priority: i32,
}

impl Route {
    /// Every upstream the route may send a request to.
    pub fn upstreams(&self) -> impl Iterator<Item = UpstreamId> + '_ {
        let split = self.split.iter().flat_map(|s| s.upstreams());
        std::iter::once(self.upstream).chain(split)
    }
}

/// `example.com` (exact) or `*.example.com` (any subdomain, at any depth; not the apex).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// The suffix including its leading dot: `.example.com`.
    Wildcard(String),
}

impl HostPattern {
    /// As the config writes it (`api.example.com`, `*.example.com`).
    pub fn describe(&self) -> String {
        match self {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Wildcard(s) => format!("*{s}"),
        }
    }
}

impl HostPattern {
    /// Parse a configured host; `None` when it is not a plausible host name.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim().to_ascii_lowercase();
        let (wild, name) = match s.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s.as_str()),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.')
            && !name.contains("..");
        if !ok {
            return None;
        }
        Some(if wild {
            HostPattern::Wildcard(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

/// A set of standard methods as a bitmask. Extension methods never match a restricted route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MethodSet(u16);

const METHODS: [(&str, Method); 9] = [
    ("GET", Method::GET),
    ("HEAD", Method::HEAD),
    ("POST", Method::POST),
    ("PUT", Method::PUT),
    ("DELETE", Method::DELETE),
    ("PATCH", Method::PATCH),
    ("OPTIONS", Method::OPTIONS),
    ("CONNECT", Method::CONNECT),
    ("TRACE", Method::TRACE),
];

impl MethodSet {
    fn bit(m: &Method) -> Option<u16> {
        METHODS.iter().position(|(_, x)| x == m).map(|i| 1 << i)
    }

    /// Parse a configured method name (case-insensitive). `GET` also admits `HEAD`, as in nginx.
    pub fn insert_name(&mut self, name: &str) -> bool {
        let upper = name.trim().to_ascii_uppercase();
        match METHODS.iter().position(|(n, _)| *n == upper) {
            Some(i) => {
                self.0 |= 1 << i;
                if upper == "GET" {
                    self.0 |= 1 << 1;
                }
                true
            }
            None => false,
        }
    }

    pub fn contains(&self, m: &Method) -> bool {
        Self::bit(m).is_some_and(|b| self.0 & b != 0)
    }

    pub fn overlaps(&self, other: &MethodSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The `Allow` header value of this set, built once for every set.
    fn allow_value(&self) -> &'static HeaderValue {
        static VALUES: OnceLock<Vec<HeaderValue>> = OnceLock::new();
        let all = VALUES.get_or_init(|| {
            (0..1u16 << METHODS.len())
                .map(|bits| {
                    HeaderValue::from_str(&MethodSet(bits).allow_header())
                        .unwrap_or_else(|_| HeaderValue::from_static(""))
                })
                .collect()
        });
        &all[usize::from(self.0) & (all.len() - 1)]
    }

    fn union(&self, other: &MethodSet) -> MethodSet {
        MethodSet(self.0 | other.0)
    }

    /// The `Allow` header value: `GET, HEAD, POST`.
    pub fn allow_header(&self) -> String {
        METHODS
            .iter()
            .enumerate()
            .filter(|(i, _)| self.0 & (1 << i) != 0)
            .map(|(_, (n, _))| *n)
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub const ALL_KNOWN: &'static str = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS";
}

/// The routes sharing one (host, prefix): higher `priority` first, then more `match` rules,
/// then file order.
#[derive(Debug)]
struct Group {
    routes: Vec<usize>,
}

#[derive(Debug, Default)]
struct PrefixTable {
    groups: AHashMap<Box<str>, Group>,
}

/// The outcome of matching a request.
#[derive(Debug)]
pub enum Match<'a> {
    Route(&'a Route),
    /// A route matches the path, none the method; carries the `Allow` value.
    MethodNotAllowed(&'a HeaderValue),
    NotFound,
}

/// Whether two router verdicts send the request the same way.
pub fn same_verdict(a: &Match, b: &Match) -> bool {
    match (a, b) {
        (Match::Route(x), Match::Route(y)) => x.id == y.id,
        (Match::NotFound, Match::NotFound) => true,
        (Match::MethodNotAllowed(_), Match::MethodNotAllowed(_)) => true,
        _ => false,
    }
}

/// Two routes that can never be told apart: same host, prefix, `match` and `priority`, and
/// overlapping methods.
#[derive(Debug)]
pub struct Conflict {
    pub route: usize,
    pub other: usize,
}

#[derive(Debug, Default)]
pub struct Router {
    routes: Vec<Route>,
    exact: AHashMap<Box<str>, PrefixTable>,
    /// Most specific (longest suffix) first.
    wildcard: Vec<(Box<str>, PrefixTable)>,
    any_host: PrefixTable,
}

impl Router {
    /// Build the table. Routes with the same host, prefix, `match` rules and priority must not
    /// share a method.
    pub fn new(mut routes: Vec<Route>) -> Result<Router, Vec<Conflict>> {
        for (i, r) in routes.iter_mut().enumerate() {
            r.id = i;
        }
        let mut r = Router::default();
        let mut conflicts = Vec::new();
        let mut wild: AHashMap<Box<str>, PrefixTable> = AHashMap::new();
        for (i, route) in routes.iter().enumerate() {
            let table = match &route.host {
                None => &mut r.any_host,
                Some(HostPattern::Exact(h)) => r.exact.entry(h.as_str().into()).or_default(),
                Some(HostPattern::Wildcard(s)) => wild.entry(s.as_str().into()).or_default(),
            };
            let group = table
                .groups
                .entry(route.prefix.as_str().into())
                .or_insert_with(|| Group { routes: Vec::new() });
            for &j in &group.routes {
                let other = &routes[j];
                let clash = match (&other.methods, &route.methods) {
                    (Some(a), Some(b)) => a.overlaps(b),
                    _ => true,
                } && other.priority == route.priority
                    && matching::same_rules(
                        other.match_rules.as_deref(),
                        route.match_rules.as_deref(),
                    );
                if clash {
                    conflicts.push(Conflict { route: i, other: j });
                }
            }
            group.routes.push(i);
        }
        if !conflicts.is_empty() {
            return Err(conflicts);
        }
        r.wildcard = wild.into_iter().collect();
        r.wildcard
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        let tables = r
            .exact
            .values_mut()
            .chain(r.wildcard.iter_mut().map(|(_, t)| t))
            .chain(std::iter::once(&mut r.any_host));
        for table in tables {
            for group in table.groups.values_mut() {
                // Stable: file order breaks the remaining ties.
                group.routes.sort_by_key(|&i| {
                    let r = &routes[i];
                    let rules = r.match_rules.as_ref().map_or(0, |m| m.len());
                    (std::cmp::Reverse(r.priority), std::cmp::Reverse(rules))
                });
            }
        }
        r.routes = routes;
        Ok(r)
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Match a request. `host` is the Host header or authority (any case, port allowed);
    /// `path` is the normalised path, without query; `req` is read only by `match` rules.
    pub fn find(
        &self,
        host: Option<&[u8]>,
        path: &str,
        method: &Method,
        req: &RequestHeader,
    ) -> Match<'_> {
        let mut buf = [0u8; 253];
        let host = host.and_then(|h| host_key(h, &mut buf));
        if let Some(host) = host {
            if let Some(t) = self.exact.get(host) {
                if let Some(m) = self.find_in(t, path, method, req) {
                    return m;
                }
            }
            for (suffix, t) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(&**suffix) {
                    if let Some(m) = self.find_in(t, path, method, req) {
                        return m;
                    }
                }
            }
        }
        self.find_in(&self.any_host, path, method, req)
            .unwrap_or(Match::NotFound)
    }

    fn find_in<'a>(
        &'a self,
        t: &'a PrefixTable,
        path: &str,
        method: &Method,
        req: &RequestHeader,
    ) -> Option<Match<'a>> {
        if t.groups.is_empty() {
            return None;
        }
        let mut candidate = path.strip_suffix('/').unwrap_or(path);
        loop {
            let key = if candidate.is_empty() { "/" } else { candidate };
            if let Some(m) = t.groups.get(key).and_then(|g| self.pick(g, method, req)) {
                return Some(m);
            }
            if candidate.is_empty() {
                return None;
            }
            // A byte loop: segments are short, and `str::rfind` is not always inlined.
            let cut = candidate.bytes().rposition(|b| b == b'/').unwrap_or(0);
            candidate = &candidate[..cut];
        }
    }

    /// The first route of `g` whose `match` rules and method hold; 405 when some route's
    /// rules hold but no such route takes the method (`Allow`: their methods); `None` when
    /// no route's rules hold, so that a shorter prefix is tried.
    fn pick<'a>(&'a self, g: &Group, method: &Method, req: &RequestHeader) -> Option<Match<'a>> {
        let mut allow: Option<MethodSet> = None;
        for &i in &g.routes {
            let r = &self.routes[i];
            if r.match_rules.as_ref().is_some_and(|m| !m.holds(req)) {
                continue;
            }
            match r.methods {
                Some(m) if !m.contains(method) => {
                    allow = Some(allow.unwrap_or_default().union(&m));
                }
                _ => return Some(Match::Route(r)),
            }
        }
        allow.map(|a| Match::MethodNotAllowed(a.allow_value()))
    }
}

impl Route {
    /// Whether this route's host rule admits `host` (same rules as the table; for `explain`).
    pub fn admits_host(&self, host: Option<&[u8]>) -> bool {
        let Some(pattern) = &self.host else {
            return true;
        };
        let mut buf = [0u8; 253];
        match (pattern, host.and_then(|h| host_key(h, &mut buf))) {
            (HostPattern::Exact(e), Some(h)) => h == e,
            (HostPattern::Wildcard(s), Some(h)) => h.len() > s.len() && h.ends_with(s.as_str()),
            (_, None) => false,
        }
    }

    /// Whether the normalised `path` is under this route's prefix on a segment boundary.
    pub fn admits_path(&self, path: &str) -> bool {
        self.prefix == "/"
            || path
                .strip_prefix(self.prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }
}

/// The host without port, lower-cased into `buf` only when it has upper-case letters.
fn host_key<'b>(raw: &'b [u8], buf: &'b mut [u8; 253]) -> Option<&'b str> {
    let raw = raw.trim_ascii();
    // Strip a port; IPv6 literals keep their brackets.
    let host = if raw.first() == Some(&b'[') {
        let end = raw.iter().position(|&b| b == b']')?;
        &raw[..=end]
    } else {
        match raw.iter().rposition(|&b| b == b':') {
            Some(i) => &raw[..i],
            None => raw,
        }
    };
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    if host.iter().any(u8::is_ascii_uppercase) {
        let out = &mut buf[..host.len()];
        out.copy_from_slice(host);
        out.make_ascii_lowercase();
        std::str::from_utf8(out).ok()
    } else {
        std::str::from_utf8(host).ok()
    }
}

/// Normalise a configured prefix: leading `/`, no trailing `/` (the root stays `/`).
pub fn normalise_prefix(p: &str) -> String {
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        "/".to_owned()
    } else {
        t.to_owned()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn route(
        name: &str,
        host: Option<&str>,
        prefix: &str,
        methods: Option<&[&str]>,
    ) -> Route {
        Route {
            id: 0,
            name: name.into(),
            host: host.and_then(HostPattern::parse),
            prefix: normalise_prefix(prefix),
            methods: methods.map(|ms| {
                let mut s = MethodSet::default();
                for m in ms {
                    assert!(s.insert_name(m));
                }
                s
            }),
            strip_prefix: true,
            upstream: 0,
            split: None,
            response_headers: Default::default(),
            max_body: 0,
            ip_rules: None,
            cors: None,
            rate_limits: vec![],
            auth: None,
            websocket: None,
            compression: None,
            transform: None,
            match_rules: None,
            priority: 0,
        }
    }

    /// `Router::find` for a request with no headers.
    fn find<'a>(r: &'a Router, host: Option<&[u8]>, path: &str, method: &Method) -> Match<'a> {
        let req = RequestHeader::build("GET", b"/", None).unwrap();
        r.find(host, path, method, &req)
    }

    pub(crate) fn name(m: Match) -> String {
        match m {
            Match::Route(r) => r.name.to_string(),
            Match::MethodNotAllowed(a) => format!("405 {}", a.to_str().unwrap()),
            Match::NotFound => "404".into(),
        }
    }

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let r = Router::new(vec![
            route("root", None, "/", None),
            route("api", None, "/api", None),
            route("users", None, "/api/users/", None),
        ])
        .unwrap();
        let get = Method::GET;
        assert_eq!(name(find(&r, None, "/api", &get)), "api");
        assert_eq!(name(find(&r, None, "/api/", &get)), "api");
        assert_eq!(name(find(&r, None, "/apix", &get)), "root");
        assert_eq!(name(find(&r, None, "/api/users", &get)), "users");
        assert_eq!(name(find(&r, None, "/api/users/7", &get)), "users");
        assert_eq!(name(find(&r, None, "/api/usersx", &get)), "api");
        assert_eq!(name(find(&r, None, "/", &get)), "root");
    }

    #[test]
    fn hosts_exact_then_wildcard_then_any() {
        let r = Router::new(vec![
            route("exact", Some("api.example.com"), "/", None),
            route("wild", Some("*.example.com"), "/", None),
            route("deep", Some("*.eu.example.com"), "/", None),
            route("any", None, "/x", None),
        ])
        .unwrap();
        let get = Method::GET;
        assert_eq!(
            name(find(&r, Some(b"API.example.com:8080"), "/", &get)),
            "exact"
        );
        assert_eq!(name(find(&r, Some(b"www.example.com"), "/", &get)), "wild");
        assert_eq!(name(find(&r, Some(b"a.eu.example.com"), "/", &get)), "deep");
        assert_eq!(name(find(&r, Some(b"example.com"), "/", &get)), "404");
        assert_eq!(name(find(&r, Some(b"example.com"), "/x/y", &get)), "any");
        assert_eq!(name(find(&r, None, "/x", &get)), "any");
    }

    #[test]
    fn methods_and_allow() {
        let r = Router::new(vec![
            route("read", None, "/items", Some(&["GET"])),
            route("write", None, "/items", Some(&["POST", "PUT"])),
        ])
        .unwrap();
        assert_eq!(name(find(&r, None, "/items", &Method::GET)), "read");
        assert_eq!(name(find(&r, None, "/items", &Method::HEAD)), "read");
        assert_eq!(name(find(&r, None, "/items/1", &Method::PUT)), "write");
        assert_eq!(
            name(find(&r, None, "/items", &Method::DELETE)),
            "405 GET, HEAD, POST, PUT"
        );
        let ext = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(
            name(find(&r, None, "/items", &ext)),
            "405 GET, HEAD, POST, PUT"
        );
    }

    #[test]
    fn overlapping_methods_conflict() {
        let e = Router::new(vec![
            route("a", None, "/a", Some(&["GET"])),
            route("b", None, "/a/", Some(&["GET", "POST"])),
        ])
        .unwrap_err();
        assert_eq!((e[0].route, e[0].other), (1, 0));
    }
}
