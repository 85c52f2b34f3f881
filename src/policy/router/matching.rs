//! A route's `match:` rules: conditions on request headers, query parameters and cookies,
//! all of which must hold for the route to take a request.
//!
//! Compiled once at load (regexes with the `regex` crate: linear time, never recompiled). A
//! check reads the request where it lies: the query or the `Cookie` headers are scanned only
//! by a rule that names one, and nothing is allocated except to percent-decode a query
//! parameter that is encoded.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use http::{HeaderMap, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use regex::bytes::Regex;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::policy::path::form_decode;

/// `match:` as the file says it: name → value, `~regex`, `"!"` (absent) or `=literal`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchFile {
    #[serde(default)]
    pub headers: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub query: BTreeMap<String, Scalar>,
    #[serde(default)]
    pub cookies: BTreeMap<String, Scalar>,
}

/// A YAML scalar read as text: `version: 2` means the string `"2"`.
#[derive(Debug, Clone)]
pub struct Scalar(pub String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value, \"~regex\" or \"!\" (absent)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// What one rule asks of the value(s) it names.
#[derive(Debug)]
pub enum Test {
    /// Some value is exactly this (bytes, case-sensitive).
    Exact(Box<[u8]>),
    /// Some value matches (unanchored unless the pattern anchors itself).
    Regex(Regex),
    /// No value at all.
    Absent,
}

impl Test {
    fn parse(text: &str) -> Result<Test, String> {
        if text == "!" {
            return Ok(Test::Absent);
        }
        if let Some(literal) = text.strip_prefix('=') {
            return Ok(Test::Exact(literal.as_bytes().into()));
        }
        if let Some(pattern) = text.strip_prefix('~') {
            return regex::bytes::RegexBuilder::new(pattern)
                .build()
                .map(Test::Regex)
                .map_err(|e| format!("bad regex {pattern:?}: {}", regex_error(&e)));
        }
        if text.starts_with('!') {
            return Err(format!(
                "{text:?}: \"!\" alone means absent; write \"={text}\" for this literal value"
            ));
        }
        Ok(Test::Exact(text.as_bytes().into()))
    }

    /// Whether the values this rule names (none, one or several) pass.
    fn admits<'v>(&self, mut values: impl Iterator<Item = Cow<'v, [u8]>>) -> bool {
        match self {
            Test::Absent => values.next().is_none(),
            Test::Exact(want) => values.any(|v| *v == **want),
            Test::Regex(re) => values.any(|v| re.is_match(&v)),
        }
    }

    fn same(&self, other: &Test) -> bool {
        match (self, other) {
            (Test::Exact(a), Test::Exact(b)) => a == b,
            (Test::Regex(a), Test::Regex(b)) => a.as_str() == b.as_str(),
            (Test::Absent, Test::Absent) => true,
            _ => false,
        }
    }
}

impl fmt::Display for Test {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Test::Exact(v) => write!(f, "= {:?}", String::from_utf8_lossy(v)),
            Test::Regex(re) => write!(f, "~ {:?}", re.as_str()),
            Test::Absent => f.write_str("absent"),
        }
    }
}

/// The last line of a regex error (`unclosed group`): the rest repeats the pattern.
fn regex_error(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_owned()
}

/// A route's compiled `match:`. Header names are compared case-insensitively, query and
/// cookie names exactly; every list is sorted by name, so two routes with the same rules
/// compare equal whatever order the file wrote them in.
#[derive(Debug)]
pub struct MatchRules {
    headers: Box<[(HeaderName, Test)]>,
    query: Box<[(Box<[u8]>, Test)]>,
    cookies: Box<[(Box<[u8]>, Test)]>,
}

impl MatchRules {
    /// How many rules: among routes at one prefix and priority, more rules go first.
    pub fn len(&self) -> usize {
        self.headers.len() + self.query.len() + self.cookies.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every rule holds for `req`.
    pub fn holds(&self, req: &RequestHeader) -> bool {
        self.headers
            .iter()
            .all(|(name, t)| header_holds(&req.headers, name, t))
            && self
                .query
                .iter()
                .all(|(name, t)| query_holds(req.uri.query(), name, t))
            && self
                .cookies
                .iter()
                .all(|(name, t)| cookie_holds(&req.headers, name, t))
    }

    /// Each rule as written (`headers.x-env = "canary"`) and whether it holds for `req`.
    pub fn explain(&self, req: &RequestHeader) -> Vec<(String, bool)> {
        let headers = self
            .headers
            .iter()
            .map(|(n, t)| header_holds(&req.headers, n, t));
        let query = self
            .query
            .iter()
            .map(|(n, t)| query_holds(req.uri.query(), n, t));
        let cookies = self
            .cookies
            .iter()
            .map(|(n, t)| cookie_holds(&req.headers, n, t));
        let held = headers.chain(query).chain(cookies);
        self.describe().into_iter().zip(held).collect()
    }

    /// Each rule as written (`headers.x-env = "canary"`).
    pub fn describe(&self) -> Vec<String> {
        let lossy = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let headers = self.headers.iter().map(|(n, t)| format!("headers.{n} {t}"));
        let query = self
            .query
            .iter()
            .map(|(n, t)| format!("query.{} {t}", lossy(n)));
        let cookies = self
            .cookies
            .iter()
            .map(|(n, t)| format!("cookies.{} {t}", lossy(n)));
        headers.chain(query).chain(cookies).collect()
    }

    /// Whether two rule sets ask exactly the same (routes differing only here are distinct).
    pub fn same(&self, other: &MatchRules) -> bool {
        fn same_list<N: PartialEq>(a: &[(N, Test)], b: &[(N, Test)]) -> bool {
            a.len() == b.len()
                && a.iter()
                    .zip(b)
                    .all(|((na, ta), (nb, tb))| na == nb && ta.same(tb))
        }
        same_list(&self.headers, &other.headers)
            && same_list(&self.query, &other.query)
            && same_list(&self.cookies, &other.cookies)
    }
}

/// Whether two routes' optional rules are the same (no rules = `match` left out or empty).
pub fn same_rules(a: Option<&MatchRules>, b: Option<&MatchRules>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.same(b),
        _ => false,
    }
}

fn header_holds(headers: &HeaderMap, name: &HeaderName, t: &Test) -> bool {
    t.admits(
        headers
            .get_all(name)
            .iter()
            .map(|v| Cow::Borrowed(v.as_bytes())),
    )
}

fn query_holds(query: Option<&str>, name: &[u8], t: &Test) -> bool {
    let pairs = query.unwrap_or("").split('&').filter(|p| !p.is_empty());
    t.admits(pairs.filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (*form_decode(k.as_bytes()) == *name).then(|| form_decode(v.as_bytes()))
    }))
}

fn cookie_holds(headers: &HeaderMap, name: &[u8], t: &Test) -> bool {
    let pairs = crate::headers::cookies(headers);
    t.admits(pairs.filter_map(|(k, v)| (k == name).then_some(Cow::Borrowed(v))))
}

/// Compile `match:` at `base` (`routes[2].match`); `None` when it has no rules or an error
/// (each pushed with its key path).
pub fn compile(base: &str, file: MatchFile, errs: &mut ConfigErrors) -> Option<Box<MatchRules>> {
    let before = errs.0.len();
    let mut headers: Vec<(HeaderName, Test)> = Vec::new();
    for (k, v) in &file.headers {
        let path = format!("{base}.headers.{k}");
        let Ok(name) = HeaderName::from_bytes(k.as_bytes()) else {
            errs.push(path, "is not a valid header name");
            continue;
        };
        if headers.iter().any(|(n, _)| *n == name) {
            errs.push(path, "is given twice (header names are case-insensitive)");
            continue;
        }
        match Test::parse(&v.0) {
            Ok(Test::Exact(e)) if HeaderValue::from_bytes(&e).is_err() => {
                errs.push(path, "value has characters not allowed in a header");
            }
            Ok(Test::Exact(e)) if e.trim_ascii().len() != e.len() => {
                errs.push(
                    path,
                    "value starts or ends with whitespace, which no request header value does",
                );
            }
            Ok(t) => headers.push((name, t)),
            Err(e) => errs.push(path, e),
        }
    }
    let query = named(&format!("{base}.query"), &file.query, |_| None, errs);
    let cookies = named(
        &format!("{base}.cookies"),
        &file.cookies,
        |k| (!crate::headers::valid_cookie_name(k)).then_some("is not a valid cookie name"),
        errs,
    );
    if errs.0.len() > before {
        return None;
    }
    headers.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    let rules = MatchRules {
        headers: headers.into(),
        query: query.into(),
        cookies: cookies.into(),
    };
    (!rules.is_empty()).then(|| Box::new(rules))
}

/// Query or cookie rules: names are kept as written (already sorted by the map).
fn named(
    base: &str,
    map: &BTreeMap<String, Scalar>,
    bad_name: impl Fn(&str) -> Option<&'static str>,
    errs: &mut ConfigErrors,
) -> Vec<(Box<[u8]>, Test)> {
    let mut out = Vec::new();
    for (k, v) in map {
        let path = format!("{base}.{k}");
        if k.is_empty() {
            errs.push(path, "the name must not be empty");
            continue;
        }
        if let Some(why) = bad_name(k) {
            errs.push(path, why);
            continue;
        }
        match Test::parse(&v.0) {
            Ok(t) => out.push((k.as_bytes().into(), t)),
            Err(e) => errs.push(path, e),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Result<Box<MatchRules>, String> {
        let file: MatchFile = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        let mut errs = ConfigErrors::default();
        match compile("m", file, &mut errs) {
            Some(r) => Ok(r),
            None if errs.is_empty() => Err("no rules".into()),
            None => Err(errs.to_string()),
        }
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", target.as_bytes(), None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn headers_exact_regex_absent_case_insensitive_names() {
        let m = rules(r#"headers: {X-Env: canary, x-beta: "~^(1|true)$", X-Debug: "!"}"#).unwrap();
        assert_eq!(m.len(), 3);
        let ok = req("/", &[("x-env", "canary"), ("X-BETA", "true")]);
        assert!(m.holds(&ok));
        assert!(!m.holds(&req("/", &[("x-env", "Canary"), ("X-Beta", "1")])));
        assert!(!m.holds(&req("/", &[("x-env", "canary"), ("X-Beta", "10")])));
        assert!(!m.holds(&req("/", &[("x-env", "canary")])));
        let debug = req(
            "/",
            &[("x-env", "canary"), ("x-beta", "1"), ("x-debug", "")],
        );
        assert!(!m.holds(&debug));
        // Any one of repeated values will do.
        let two = req(
            "/",
            &[("x-env", "stable"), ("x-env", "canary"), ("x-beta", "1")],
        );
        assert!(m.holds(&two));
    }

    #[test]
    fn regex_is_anchored_only_as_written() {
        let m = rules(r#"headers: {X-V: "~beta"}"#).unwrap();
        assert!(m.holds(&req("/", &[("x-v", "pre-beta-2")])));
        let m = rules(r#"headers: {X-V: "~"}"#).unwrap();
        assert!(m.holds(&req("/", &[("x-v", "")])), "~ alone: present");
        assert!(!m.holds(&req("/", &[])));
    }

    #[test]
    fn literal_escapes() {
        let m = rules(r#"headers: {X-A: "=~x", X-B: "=!", X-C: "==y"}"#).unwrap();
        assert!(m.holds(&req("/", &[("x-a", "~x"), ("x-b", "!"), ("x-c", "=y")])));
        assert!(rules(r#"headers: {X-A: "!x"}"#)
            .unwrap_err()
            .contains("write \"=!x\""));
    }

    #[test]
    fn query_decoded_any_value_absent() {
        let m = rules(r#"query: {version: 2, q: "a b", debug: "!"}"#).unwrap();
        assert!(m.holds(&req("/?version=2&q=a%20b", &[])));
        assert!(m.holds(&req("/?q=a+b&version=1&version=2", &[])));
        assert!(!m.holds(&req("/?version=2&q=a+b&debug", &[])));
        assert!(!m.holds(&req("/?version=2&q=a+b&debug=0", &[])));
        assert!(!m.holds(&req("/?version=3&q=a+b", &[])));
        assert!(!m.holds(&req("/", &[])));
        // Encoded names count; a malformed escape is kept as it is.
        let m = rules(r#"query: {"a b": "%zz%"}"#).unwrap();
        assert!(m.holds(&req("/?a%20b=%zz%", &[])));
    }

    #[test]
    fn cookies_from_every_cookie_header() {
        let m = rules(r#"cookies: {beta: "1", session: "~^s-", gone: "!"}"#).unwrap();
        let both = req("/", &[("cookie", "a=b; beta=1"), ("cookie", "session=s-9")]);
        assert!(m.holds(&both));
        assert!(m.holds(&req("/", &[("cookie", "session=s-1;beta=1 ;x")])));
        assert!(!m.holds(&req("/", &[("cookie", "session=s-1; beta=1; gone=")])));
        assert!(!m.holds(&req("/", &[("cookie", "session=s-1; xbeta=1")])));
        assert!(!m.holds(&req("/", &[("x-cookie", "session=s-1; beta=1")])));
    }

    #[test]
    fn bad_values_are_refused_with_their_path() {
        let e = rules(r#"headers: {X-Env: "~^(a"}"#).unwrap_err();
        assert!(
            e.contains("m.headers.X-Env: bad regex \"^(a\": unclosed group"),
            "{e}"
        );
        for (yaml, want) in [
            (
                r#"headers: {"Bad Name": x}"#,
                "m.headers.Bad Name: is not a valid header name",
            ),
            (r#"headers: {X-A: "a\nb"}"#, "characters not allowed"),
            (r#"headers: {X-A: " a"}"#, "whitespace"),
            (r#"headers: {X-A: "a\t"}"#, "whitespace"),
            (r#"headers: {X-A: a, x-a: b}"#, "is given twice"),
            (r#"query: {"": a}"#, "m.query.: the name must not be empty"),
            (
                r#"cookies: {"a;b": a}"#,
                "m.cookies.a;b: is not a valid cookie name",
            ),
            (r#"query: {q: "~["}"#, "m.query.q: bad regex"),
        ] {
            let e = rules(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
        assert!(rules("headers: {X-A: [1]}")
            .unwrap_err()
            .contains("expected a value"));
        assert!(rules("nope: {}").unwrap_err().contains("unknown field"));
        assert_eq!(rules("{}").unwrap_err(), "no rules");
    }

    #[test]
    fn same_rules_whatever_the_order_or_case() {
        let a = rules(r#"headers: {X-B: "1", x-a: "~z"}"#).unwrap();
        let b = rules(r#"headers: {X-A: "~z", x-b: "1"}"#).unwrap();
        let c = rules(r#"headers: {X-A: "=~z", x-b: "1"}"#).unwrap();
        assert!(a.same(&b));
        assert!(!a.same(&c));
        assert!(same_rules(None, None));
        assert!(!same_rules(Some(&a), None));
    }

    #[test]
    fn explain_tells_each_rule() {
        let m =
            rules(r#"{headers: {X-Env: canary}, query: {v: "!"}, cookies: {b: "~1"}}"#).unwrap();
        let told = m.explain(&req("/?v=1", &[("x-env", "canary")]));
        assert_eq!(
            told,
            vec![
                ("headers.x-env = \"canary\"".to_owned(), true),
                ("query.v absent".to_owned(), false),
                ("cookies.b ~ \"1\"".to_owned(), false),
            ]
        );
    }
}
