//! The gateway's own headers on a proxied response: `X-Gateway`, `X-Request-Id`, the
//! RateLimit headers of a limited route, then the route's `response_headers`. Defined once,
//! for both ways a head goes out: inserted into the head's map where Pingora writes the head
//! (its writer writes only the map), written as lines after the backend's where tollgate's own
//! codec does.
//!
//! Why: a map insert hashes the name, probes, and stores a value built for it (the `RateLimit`
//! value allocated, then validated byte by byte), dear for a name that is not a standard
//! one. Nothing after `decorate` reads the
//! gateway's headers, and on a route without CORS or compression nothing reads the route's
//! either (compression reads `Content-Type`, `Cache-Control` and `Vary`, CORS `Vary`; the
//! framing headers cannot be set by a route), so on the own codec they need never be more
//! than bytes.

use std::ops::Deref;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::line;
use crate::headers::names::{GATEWAY_NAME, X_GATEWAY, X_REQUEST_ID};
use crate::policy::limit::{Decision, Limits};
use crate::policy::transform::{Template, Vars};

/// The gateway's headers for one response, described, not yet materialised.
#[derive(Clone, Copy)]
pub struct Stamp<'a> {
    request_id: &'a HeaderValue,
    limit: Option<(&'a Limits, &'a Decision)>,
    route: Option<&'a RouteHeaders>,
    /// The values of the route's headers that name variables, rendered for this request
    /// ([`RouteHeaders::render`]).
    values: &'a [Option<HeaderValue>],
}

impl<'a> Stamp<'a> {
    /// `limit`: the rate-limit decision of a limited route, and the limits it is of; `route`:
    /// the route's `response_headers`.
    pub fn new(
        request_id: &'a HeaderValue,
        limit: Option<(&'a Limits, &'a Decision)>,
        route: Option<&'a RouteHeaders>,
    ) -> Self {
        Stamp {
            request_id,
            limit,
            route,
            values: &[],
        }
    }

    /// The rendered values of the route's headers that name variables.
    pub fn with_values(self, values: &'a [Option<HeaderValue>]) -> Self {
        Stamp { values, ..self }
    }

    /// The route's headers that name variables, each with this request's value (`None`: a
    /// variable it names is absent, and the header is not sent).
    fn rendered(&self) -> impl Iterator<Item = (&'a str, &'a HeaderName, Option<&'a HeaderValue>)> {
        let values = self.values;
        self.route
            .map_or(&[][..], |r| &r.dynamic)
            .iter()
            .enumerate()
            .map(move |(i, (written, name, _))| {
                (&**written, name, values.get(i).and_then(Option::as_ref))
            })
    }

    /// Whether the stamp sets a header of this name (any case). A backend's header of that
    /// name is replaced by the stamp's, as an insert replaces it: a codec reading the
    /// backend's head need not copy it.
    pub fn sets(&self, name: &str) -> bool {
        self.gateway_sets(name) || self.route.is_some_and(|r| r.sets(name))
    }

    fn gateway_sets(&self, name: &str) -> bool {
        // Every name of the gateway's starts with `x` or `r` (`X-Gateway`, `X-Request-Id`,
        // `X-RateLimit-*`, `RateLimit*`, `Retry-After`): most of a backend's are passed over
        // at their first byte.
        if !matches!(name.as_bytes().first().map(|b| b | 0x20), Some(b'x' | b'r')) {
            return false;
        }
        name.eq_ignore_ascii_case(X_GATEWAY.as_str())
            || name.eq_ignore_ascii_case(X_REQUEST_ID.as_str())
            || self.limit.is_some_and(|(l, d)| l.sets(d, name))
    }

    /// Whether [`Self::write`] may stand for [`Self::insert`]: not when the route sets one of
    /// the gateway's names (a `RateLimit-Policy` of its own), as the route's value must win.
    pub fn writable(&self) -> bool {
        self.route
            .is_none_or(|r| !r.pairs.iter().any(|(k, _)| self.gateway_sets(k.as_str())))
    }

    /// Put the headers into a head's map, replacing any of the same names; the route's last,
    /// so that they win. The route's removed names go first: they are the backend's.
    pub fn insert(&self, h: &mut HeaderMap) {
        for name in self.route.map_or(&[][..], |r| &r.removed) {
            h.remove(name);
        }
        if let Some((limits, d)) = self.limit {
            limits.apply(d, h);
        }
        h.insert(&X_GATEWAY, GATEWAY_NAME.clone());
        h.insert(&X_REQUEST_ID, self.request_id.clone());
        for (k, v) in self.route.map_or(&[][..], |r| &r.pairs) {
            h.insert(k, v.clone());
        }
        for (_, name, value) in self.rendered() {
            match value {
                Some(v) => h.insert(name, v.clone()),
                // The backend's never stands in for a value the route would set.
                None => h.remove(name),
            };
        }
    }

    /// Append the headers as HTTP/1 head lines: the gateway's names in lower case, as Pingora
    /// writes a name it has no case for, the route's as the config writes them. The head they
    /// end must hold none of these names (the backend's were not copied: [`Self::sets`]), and
    /// the stamp must be [`Self::writable`].
    pub fn write(&self, out: &mut Vec<u8>) {
        if let Some((limits, d)) = self.limit {
            limits.write(d, out);
        }
        for (name, value) in [
            (&X_GATEWAY, &GATEWAY_NAME),
            (&X_REQUEST_ID, self.request_id),
        ] {
            line(out, name.as_str(), |o| {
                o.extend_from_slice(value.as_bytes())
            });
        }
        if let Some(r) = self.route {
            out.extend_from_slice(&r.lines);
        }
        for (written, _, value) in self.rendered() {
            if let Some(v) = value {
                line(out, written, |o| o.extend_from_slice(v.as_bytes()));
            }
        }
    }
}

/// A route's `response_headers`, compiled once: the fixed pairs for a head's map, and the
/// same already written as HTTP/1 lines (`Name: value\r\n`, the name as the config writes
/// it); the headers whose values name variables, rendered per request; and the names it
/// removes from the backend's head (`remove`), which a codec reading that head does not copy
/// ([`Stamp::sets`]).
#[derive(Debug, Clone, Default)]
pub struct RouteHeaders {
    pairs: Vec<(HeaderName, HeaderValue)>,
    lines: Box<[u8]>,
    dynamic: Box<[(Box<str>, HeaderName, Template)]>,
    removed: Box<[HeaderName]>,
}

impl RouteHeaders {
    /// Each header with its name as written (in a valid name's bytes, any case).
    pub fn new<'n>(headers: impl IntoIterator<Item = (&'n str, HeaderName, HeaderValue)>) -> Self {
        let (mut pairs, mut lines) = (Vec::new(), Vec::new());
        for (written, name, value) in headers {
            debug_assert!(written.eq_ignore_ascii_case(name.as_str()));
            line(&mut lines, written, |o| {
                o.extend_from_slice(value.as_bytes())
            });
            pairs.push((name, value));
        }
        RouteHeaders {
            pairs,
            lines: lines.into(),
            dynamic: Box::default(),
            removed: Box::default(),
        }
    }

    /// These headers, and those whose values name variables (name as written, name, value).
    pub fn rendering(self, dynamic: Vec<(Box<str>, HeaderName, Template)>) -> Self {
        RouteHeaders {
            dynamic: dynamic.into(),
            ..self
        }
    }

    /// Whether a value names a variable: the caller renders them ([`Self::render`]) once per
    /// request and gives them to the stamp ([`Stamp::with_values`]).
    pub fn renders(&self) -> bool {
        !self.dynamic.is_empty()
    }

    /// Whether a value names `$host`.
    pub fn uses_host(&self) -> bool {
        self.dynamic.iter().any(|(_, _, t)| t.uses_host())
    }

    /// This request's values of the headers that name variables, in order.
    pub fn render(&self, v: &Vars) -> Box<[Option<HeaderValue>]> {
        self.dynamic.iter().map(|(_, _, t)| t.render(v)).collect()
    }

    /// The names of the headers whose values name variables.
    pub fn rendered_names(&self) -> impl Iterator<Item = &HeaderName> {
        self.dynamic.iter().map(|(_, n, _)| n)
    }

    /// These headers, and the backend's of the `removed` names taken out.
    pub fn removing(self, removed: Vec<HeaderName>) -> Self {
        RouteHeaders {
            removed: removed.into(),
            ..self
        }
    }

    /// The names the route removes from the backend's head.
    pub fn removed(&self) -> &[HeaderName] {
        &self.removed
    }

    fn sets(&self, name: &str) -> bool {
        self.pairs
            .iter()
            .map(|(k, _)| k)
            .chain(self.dynamic.iter().map(|(_, k, _)| k))
            .chain(self.removed.iter())
            .any(|k| name.eq_ignore_ascii_case(k.as_str()))
    }
}

impl Deref for RouteHeaders {
    type Target = [(HeaderName, HeaderValue)];

    fn deref(&self) -> &Self::Target {
        &self.pairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::limit::Headers;

    fn limits(mode: Headers) -> Limits {
        Limits::one_for_tests(mode)
    }

    /// The head lines as (name, value) pairs, in order.
    fn lines(out: &[u8]) -> Vec<(String, String)> {
        let text = std::str::from_utf8(out).unwrap();
        assert!(text.is_empty() || text.ends_with("\r\n"), "{text:?}");
        text.split_terminator("\r\n")
            .map(|l| {
                let (k, v) = l.split_once(": ").expect("name: value");
                (k.to_owned(), v.to_owned())
            })
            .collect()
    }

    /// What `write` writes is what `insert` inserts, name for name and value for value, and
    /// `sets` says yes to exactly those names in any case: whichever codec writes the head,
    /// the client gets the same headers.
    #[test]
    fn written_lines_are_the_inserted_headers() {
        let id = HeaderValue::from_static("0123456789abcdef");
        let route = RouteHeaders::new([
            (
                "Cache-Control",
                http::header::CACHE_CONTROL,
                HeaderValue::from_static("no-store"),
            ),
            (
                "x-frame-options",
                HeaderName::from_static("x-frame-options"),
                HeaderValue::from_static("DENY"),
            ),
        ]);
        for mode in [Headers::IETF, Headers::LEGACY, Headers::BOTH, Headers::NONE] {
            let limits = limits(mode);
            for allowed in [true, false] {
                let d = Decision {
                    policy: 0,
                    allowed,
                    remaining: 19,
                    reset: 3,
                    retry_after: 7,
                };
                for decision in [None, Some(&d)] {
                    let stamp = Stamp::new(&id, decision.map(|d| (&limits, d)), Some(&route));
                    let mut out = Vec::new();
                    stamp.write(&mut out);
                    let mut map = HeaderMap::new();
                    map.insert("x-gateway", HeaderValue::from_static("backend's"));
                    map.insert("cache-control", HeaderValue::from_static("backend's"));
                    assert!(stamp.writable());
                    stamp.insert(&mut map);
                    let written = lines(&out);
                    assert!(
                        out.windows(15).any(|w| w == b"Cache-Control: "),
                        "as written"
                    );
                    let written: Vec<(String, String)> = written
                        .into_iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v))
                        .collect();
                    let inserted: Vec<(String, String)> = map
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
                        .collect();
                    let (mut a, mut b) = (written.clone(), inserted);
                    a.sort();
                    b.sort();
                    let what = format!("{} allowed={allowed} {decision:?}", mode.describe());
                    assert_eq!(a, b, "{what}");
                    let names: Vec<&str> = written.iter().map(|(k, _)| k.as_str()).collect();
                    for (name, _) in &written {
                        assert!(stamp.sets(name), "{what}: {name}");
                        assert!(stamp.sets(&name.to_ascii_uppercase()), "{what}: {name}");
                    }
                    assert!(names.contains(&"cache-control") && names.contains(&"x-frame-options"));
                    for other in ["content-type", "x-gateways", "ratelimit-x", "retry-afte"] {
                        assert!(!stamp.sets(other), "{what}: {other}");
                    }
                    assert_eq!(
                        names.contains(&"ratelimit"),
                        decision.is_some() && mode.ietf,
                        "{what}"
                    );
                    assert_eq!(
                        names.contains(&"retry-after"),
                        decision.is_some() && !allowed,
                        "{what}"
                    );
                }
            }
        }
    }

    /// A removed name is taken out of the map, and is one a codec reading the backend's head
    /// does not copy, in any case; nothing is written for it.
    #[test]
    fn removed_names_go_both_ways() {
        let id = HeaderValue::from_static("id");
        let route = RouteHeaders::new([(
            "Cache-Control",
            http::header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        )])
        .removing(vec![
            http::header::SERVER,
            HeaderName::from_static("x-powered-by"),
        ]);
        let stamp = Stamp::new(&id, None, Some(&route));
        for name in ["server", "Server", "X-Powered-By", "cache-control"] {
            assert!(stamp.sets(name), "{name}");
        }
        assert!(!stamp.sets("x-powered"));
        assert!(stamp.writable());
        let mut out = Vec::new();
        stamp.write(&mut out);
        let names: Vec<String> = lines(&out).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["x-gateway", "x-request-id", "Cache-Control"]);
        let mut map = HeaderMap::new();
        map.insert("server", HeaderValue::from_static("backend"));
        map.append("x-powered-by", HeaderValue::from_static("a"));
        map.append("x-powered-by", HeaderValue::from_static("b"));
        map.insert("x-kept", HeaderValue::from_static("1"));
        stamp.insert(&mut map);
        let mut left: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(
            left,
            ["cache-control", "x-gateway", "x-kept", "x-request-id"]
        );
    }

    #[test]
    fn a_route_header_of_a_gateway_name_keeps_the_stamp_in_the_map() {
        let id = HeaderValue::from_static("id");
        let limits = limits(Headers::IETF);
        let d = Decision {
            policy: 0,
            allowed: true,
            remaining: 1,
            reset: 1,
            retry_after: 0,
        };
        let header =
            |n: &'static str| (n, HeaderName::from_static(n), HeaderValue::from_static("v"));
        let plain = RouteHeaders::new([header("cache-control"), header("x-frame-options")]);
        let own_policy = RouteHeaders::new([header("ratelimit-policy")]);
        assert!(Stamp::new(&id, Some((&limits, &d)), Some(&plain)).writable());
        let limited = Stamp::new(&id, Some((&limits, &d)), Some(&own_policy));
        assert!(!limited.writable());
        // In the map, the route's value is the one left.
        let mut map = HeaderMap::new();
        limited.insert(&mut map);
        assert_eq!(map["ratelimit-policy"], "v");
        assert!(Stamp::new(&id, None, Some(&own_policy)).writable());
    }
}
