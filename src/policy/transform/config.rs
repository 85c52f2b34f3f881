//! The transformation keys of a route as the file says them (`rewrite`, `request_headers`,
//! `response_headers`, `query`), and their compilation, every error with its key path.

use std::collections::BTreeMap;

use http::HeaderName;
use serde::de::{self, Deserializer};
use serde::Deserialize;

use super::{encode_component, QueryEdits, RequestEdits, Rewrite, Template, Transform};
use crate::config::ConfigErrors;
use crate::headers::names::{
    RESERVED_RESPONSE, TRACEPARENT, TRACESTATE, X_CONSUMER, X_REAL_IP, X_REQUEST_ID,
};
use crate::policy::stamp::RouteHeaders;

/// `routes[i].rewrite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteFile {
    pub regex: String,
    pub to: String,
}

/// `routes[i].request_headers`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestHeadersFile {
    #[serde(default, deserialize_with = "scalars")]
    pub set: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "scalars")]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `routes[i].query`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryFile {
    #[serde(default, deserialize_with = "scalars")]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// `routes[i].response_headers`: `{set: {...}, remove: [...]}`, or a map of headers, which
/// means `set` (the older form).
#[derive(Debug, Default)]
pub struct ResponseHeadersFile {
    pub set: BTreeMap<String, String>,
    pub remove: Vec<String>,
    /// Written in the full form (key paths `set.NAME`).
    pub full: bool,
}

impl<'de> Deserialize<'de> for ResponseHeadersFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Full {
            #[serde(default, deserialize_with = "scalars")]
            set: BTreeMap<String, String>,
            #[serde(default)]
            remove: Vec<String>,
        }
        let v = serde_yaml::Value::deserialize(d)?;
        let serde_yaml::Value::Mapping(m) = &v else {
            return Err(de::Error::custom(
                "is a map of headers to set, or {set: {NAME: value}, remove: [NAME]}",
            ));
        };
        // `set` or `remove` holding a map or list: the full form (a header named `set`
        // has a string value).
        let full = m.iter().any(|(k, v)| {
            matches!(k.as_str(), Some("set" | "remove")) && !v.is_string() && !v.is_null()
        });
        if full {
            let f: Full = serde_yaml::from_value(v).map_err(de::Error::custom)?;
            return Ok(ResponseHeadersFile {
                set: f.set,
                remove: f.remove,
                full: true,
            });
        }
        let set = scalars(v).map_err(de::Error::custom)?;
        Ok(ResponseHeadersFile {
            set,
            remove: Vec::new(),
            full: false,
        })
    }
}

/// A map of names to values, where a value may be written as a number or `true`/`false`
/// (`{version: 2}` is `"2"`).
fn scalars<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let m = BTreeMap::<String, serde_yaml::Value>::deserialize(d)?;
    m.into_iter()
        .map(|(k, v)| match v {
            serde_yaml::Value::String(s) => Ok((k, s)),
            serde_yaml::Value::Number(n) => Ok((k, n.to_string())),
            serde_yaml::Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(de::Error::custom(format!(
                "{k}: a value is a string, a number or true/false"
            ))),
        })
        .collect()
}

/// A route's request-side transformation keys, together.
pub struct TransformFile {
    pub rewrite: Option<RewriteFile>,
    pub request_headers: Option<RequestHeadersFile>,
    pub query: Option<QueryFile>,
}

/// Compile `routes[i]`'s (`base`) transformation; `None` when it has none (or errors, which
/// are in `errs`). `strip_prefix`: the key as the file says it (a rewrite replaces it);
/// `identity`: the headers the auth providers forward (a route may not set them).
pub fn compile(
    base: &str,
    route: &str,
    f: TransformFile,
    strip_prefix: Option<bool>,
    identity: &[HeaderName],
    errs: &mut ConfigErrors,
) -> Option<Box<Transform>> {
    let before = errs.0.len();
    let rewrite = f.rewrite.and_then(|r| {
        if strip_prefix.is_some() {
            errs.push(
                format!("{base}.rewrite"),
                "cannot be combined with strip_prefix: the rewrite makes the whole path",
            );
        }
        Rewrite::compile(&r.regex, &r.to)
            .map_err(|e| errs.push(format!("{base}.rewrite.{}", e.key), e.message))
            .ok()
    });
    let request = f
        .request_headers
        .map(|h| request_edits(&format!("{base}.request_headers"), route, h, identity, errs));
    let query = f
        .query
        .map(|q| query_edits(&format!("{base}.query"), q, errs));
    let t = Transform {
        rewrite,
        request,
        query,
    };
    let any = t.rewrite.is_some() || t.request.is_some() || t.query.is_some();
    (errs.0.len() == before && any).then(|| Box::new(t))
}

fn header_name(path: &str, k: &str, errs: &mut ConfigErrors) -> Option<HeaderName> {
    HeaderName::from_bytes(k.as_bytes())
        .map(crate::headers::names::lasting_name)
        .map_err(|_| errs.push(path, "is not a valid header name"))
        .ok()
}

/// Why the gateway keeps a request header for itself, if it does.
fn owned_request(name: &HeaderName, identity: &[HeaderName]) -> Option<&'static str> {
    if name.as_str().starts_with("x-forwarded-")
        || [&X_REAL_IP, &X_REQUEST_ID, &X_CONSUMER].contains(&name)
        || [&TRACEPARENT, &TRACESTATE].contains(&name)
        || identity.contains(name)
    {
        return Some(
            "is set by tollgate itself (forwarding and identity headers) and cannot be edited",
        );
    }
    if crate::headers::is_hop_by_hop(name) || name == http::header::CONTENT_LENGTH {
        return Some("is hop-by-hop or framing, which tollgate handles itself");
    }
    None
}

/// Each name once across `set`, `add` and `remove`.
fn once(
    seen: &mut Vec<HeaderName>,
    name: &HeaderName,
    path: &str,
    errs: &mut ConfigErrors,
) -> bool {
    if seen.contains(name) {
        errs.push(
            path,
            "names a header another edit of this route already names",
        );
        return false;
    }
    seen.push(name.clone());
    true
}

fn request_edits(
    base: &str,
    route: &str,
    f: RequestHeadersFile,
    identity: &[HeaderName],
    errs: &mut ConfigErrors,
) -> RequestEdits {
    let mut out = RequestEdits::default();
    let mut seen = Vec::new();
    for (key, list) in [("set", &f.set), ("add", &f.add)] {
        for (k, v) in list {
            let path = format!("{base}.{key}.{k}");
            let Some(name) = header_name(&path, k, errs) else {
                continue;
            };
            if let Some(why) = owned_request(&name, identity) {
                errs.push(path, why);
                continue;
            }
            if !once(&mut seen, &name, &path, errs) {
                continue;
            }
            match Template::compile(v, route) {
                Ok(t) => {
                    out.uses_host |= t.uses_host();
                    match key {
                        "set" => out.set.push((name, t)),
                        _ => out.add.push((name, t)),
                    }
                }
                Err(why) => errs.push(path, why),
            }
        }
    }
    for (j, k) in f.remove.iter().enumerate() {
        let path = format!("{base}.remove[{j}]");
        let Some(name) = header_name(&path, k, errs) else {
            continue;
        };
        if let Some(why) = owned_request(&name, identity) {
            errs.push(path, why);
        } else if name == http::header::HOST {
            errs.push(path, "an HTTP/1.1 request needs a Host: set it instead");
        } else if once(&mut seen, &name, &path, errs) {
            out.remove.push(name);
        }
    }
    out
}

fn query_edits(base: &str, f: QueryFile, errs: &mut ConfigErrors) -> QueryEdits {
    let mut out = QueryEdits::default();
    let mut seen: Vec<&str> = Vec::new();
    let named = |path: String, k: &str, seen: &[&str], errs: &mut ConfigErrors| {
        if k.is_empty() {
            errs.push(path, "a parameter name must not be empty");
            false
        } else if seen.contains(&k) {
            errs.push(
                path,
                "names a parameter another edit of this route already names",
            );
            false
        } else {
            true
        }
    };
    for (k, v) in &f.set {
        if named(format!("{base}.set.{k}"), k, &seen, errs) {
            seen.push(k);
            out.set
                .push(format!("{}={}", encode_component(k), encode_component(v)).into());
            out.dropped.push(k.as_str().into());
        }
    }
    for (j, k) in f.remove.iter().enumerate() {
        if named(format!("{base}.remove[{j}]"), k, &seen, errs) {
            seen.push(k);
            out.dropped.push(k.as_str().into());
        }
    }
    out
}

/// `routes[i].response_headers` (`base`), compiled into the stamp's route headers.
pub fn response_headers(
    base: &str,
    route: &str,
    f: &ResponseHeadersFile,
    errs: &mut ConfigErrors,
) -> RouteHeaders {
    let (mut set, mut rendered) = (Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for (k, v) in &f.set {
        // The map form's key path is `response_headers.NAME`, as it always was.
        let path = match f.full {
            true => format!("{base}.set.{k}"),
            false => format!("{base}.{k}"),
        };
        let Some(name) = header_name(&path, k, errs) else {
            continue;
        };
        if RESERVED_RESPONSE.contains(&&name) {
            errs.push(path, "is set by tollgate itself and cannot be overridden");
            continue;
        }
        seen.push(name.clone());
        match Template::compile(v, route) {
            Ok(t) => match t.fixed() {
                Some(val) => set.push((k.as_str(), name, val.clone())),
                None => rendered.push((k.as_str().into(), name, t)),
            },
            Err(why) => errs.push(path, why),
        }
    }
    let mut removed = Vec::new();
    for (j, k) in f.remove.iter().enumerate() {
        let path = format!("{base}.remove[{j}]");
        let Some(name) = header_name(&path, k, errs) else {
            continue;
        };
        if RESERVED_RESPONSE.contains(&&name) {
            errs.push(path, "is set by tollgate itself and cannot be removed");
        } else if once(&mut seen, &name, &path, errs) {
            removed.push(name);
        }
    }
    RouteHeaders::new(set).rendering(rendered).removing(removed)
}
