//! A route's transformations of what passes through it: the path rewrite (`rewrite`), the
//! request's header edits (`request_headers`) and its query's (`query`). Compiled once at load
//! (`config`); a request applies precompiled parts. The response's edits
//! (`response_headers`) are the stamp's (`crate::policy::stamp::RouteHeaders`).
//!
//! A route without these keys has no `Transform` and pays nothing for it.

pub mod config;
mod rewrite;
mod template;

use http::HeaderName;

use crate::headers::Edit;
pub use rewrite::{refusal, Rewrite};
pub use template::{Template, Vars, VARIABLES};

/// What a route changes on the way up.
#[derive(Debug, Clone, Default)]
pub struct Transform {
    pub rewrite: Option<Rewrite>,
    pub request: Option<RequestEdits>,
    pub query: Option<QueryEdits>,
}

/// `request_headers: {set, add, remove}`.
#[derive(Debug, Clone, Default)]
pub struct RequestEdits {
    /// Replace the client's copies (removed even when the value is absent this request).
    set: Vec<(HeaderName, Template)>,
    /// Append to the client's copies.
    add: Vec<(HeaderName, Template)>,
    remove: Vec<HeaderName>,
    /// A value names `$host`.
    uses_host: bool,
}

impl RequestEdits {
    /// Whether a value names `$host`: the caller passes the client's `Host` in [`Vars`].
    pub fn uses_host(&self) -> bool {
        self.uses_host
    }

    /// Apply the edits: removes, then sets, then adds.
    pub fn apply<'n>(&'n self, h: &mut impl Edit<'n>, v: &Vars) {
        for name in &self.remove {
            h.remove(name);
        }
        for (name, t) in &self.set {
            match t.render(v) {
                Some(value) => h.insert(name, value),
                // A client's copy never stands in for a value the gateway would set.
                None => h.remove(name),
            }
        }
        for (name, t) in &self.add {
            if let Some(value) = t.render(v) {
                h.append(name, value);
            }
        }
    }
}

/// `query: {set, remove}`: parameters of the upstream target's query.
#[derive(Debug, Clone, Default)]
pub struct QueryEdits {
    /// `name=value`, encoded at load, appended in order.
    set: Vec<Box<str>>,
    /// Names whose parameters are dropped (`remove`, and those `set` replaces), decoded.
    dropped: Vec<Box<str>>,
}

impl QueryEdits {
    /// The edited query (`None`: nothing left).
    pub fn apply(&self, query: Option<&str>) -> Option<String> {
        let mut out = String::with_capacity(query.map_or(0, str::len) + 32);
        for kv in query.unwrap_or("").split('&').filter(|kv| !kv.is_empty()) {
            let name = kv.split_once('=').map_or(kv, |(k, _)| k);
            if self.dropped.iter().any(|d| decoded_eq(name, d)) {
                continue;
            }
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(kv);
        }
        for pair in &self.set {
            if !out.is_empty() {
                out.push('&');
            }
            out.push_str(pair);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// Whether a raw query name (`%`-escapes and `+` for space) reads as `want`: `debu%67` is
/// `debug`, so a client cannot keep a removed parameter by spelling it another way.
fn decoded_eq(raw: &str, want: &str) -> bool {
    *crate::policy::path::form_decode(raw.as_bytes()) == *want.as_bytes()
}

/// A query component, escaped: unreserved characters as they are, every other byte `%XX`.
fn encode_component(s: &str) -> String {
    crate::policy::path::escape(s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn query(set: &[(&str, &str)], remove: &[&str]) -> QueryEdits {
        let mut q = QueryEdits::default();
        for (k, v) in set {
            q.set
                .push(format!("{}={}", encode_component(k), encode_component(v)).into());
            q.dropped.push((*k).into());
        }
        for k in remove {
            q.dropped.push((*k).into());
        }
        q
    }

    #[test]
    fn query_edits() {
        let q = query(&[("source", "gw")], &["debug"]);
        assert_eq!(q.apply(None).unwrap(), "source=gw");
        assert_eq!(
            q.apply(Some("a=1&debug=1&source=client&b&debu%67=2&debug"))
                .unwrap(),
            "a=1&b&source=gw"
        );
        assert_eq!(query(&[], &["debug"]).apply(Some("debug=1")), None);
        assert_eq!(
            query(&[], &["a b"])
                .apply(Some("a+b=1&a%20b=2&c=3"))
                .unwrap(),
            "c=3"
        );
        let q = query(&[("x y", "1&2=3")], &[]);
        assert_eq!(q.apply(Some("z")).unwrap(), "z&x%20y=1%262%3D3");
    }

    #[test]
    fn decoding_comparison() {
        assert!(decoded_eq("debug", "debug"));
        assert!(decoded_eq("d%65bug", "debug"));
        assert!(!decoded_eq("debugx", "debug"));
        assert!(!decoded_eq("debu", "debug"));
        assert!(decoded_eq("%zz", "%zz"));
        assert!(decoded_eq("%+1", "% 1"));
        assert!(!decoded_eq("%+1", "\u{1}"));
        assert!(!decoded_eq("", "a"));
    }

    #[test]
    fn set_replaces_and_an_absent_value_still_removes() {
        let mut e = RequestEdits::default();
        let n = |s: &'static str| HeaderName::from_static(s);
        e.set
            .push((n("x-tenant"), Template::compile("acme", "r").unwrap()));
        e.set
            .push((n("x-user"), Template::compile("$consumer", "r").unwrap()));
        e.add
            .push((n("via"), Template::compile("tollgate", "r").unwrap()));
        e.remove.push(n("x-debug"));
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-tenant", "evil"),
            ("x-tenant", "evil2"),
            ("x-user", "mallory"),
            ("via", "1.1 cdn"),
            ("x-debug", "1"),
            ("keep", "k"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        let rid = HeaderValue::from_static("id");
        let v = Vars {
            client_ip: None,
            identity: None,
            request_id: &rid,
            host: None,
        };
        e.apply(&mut h, &v);
        let all =
            |k: &str| -> Vec<&str> { h.get_all(k).iter().map(|v| v.to_str().unwrap()).collect() };
        assert_eq!(all("x-tenant"), ["acme"]);
        assert!(all("x-user").is_empty());
        assert_eq!(all("via"), ["1.1 cdn", "tollgate"]);
        assert!(all("x-debug").is_empty());
        assert_eq!(all("keep"), ["k"]);
    }
}
