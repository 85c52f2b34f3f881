//! CORS per route: preflights answered at the gateway, allowed origins echoed on responses.

use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::Dur;
use crate::policy::router::MethodSet;

/// `routes[i].cors` in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFile {
    /// Exact origins (`https://app.example.com`) or `"*"`.
    pub origins: Vec<String>,
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<Dur>,
    #[serde(default)]
    pub credentials: bool,
}

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    any_origin: bool,
    origins: Vec<HeaderValue>,
    methods: MethodSet,
    allow_methods: HeaderValue,
    allow_headers: Option<HeaderValue>,
    max_age: HeaderValue,
    credentials: bool,
}

pub static ORIGIN: HeaderName = http::header::ORIGIN;
static ACRM: HeaderName = http::header::ACCESS_CONTROL_REQUEST_METHOD;
static ACAO: HeaderName = http::header::ACCESS_CONTROL_ALLOW_ORIGIN;
static ACAC: HeaderName = http::header::ACCESS_CONTROL_ALLOW_CREDENTIALS;
static ACAM: HeaderName = http::header::ACCESS_CONTROL_ALLOW_METHODS;
static ACAH: HeaderName = http::header::ACCESS_CONTROL_ALLOW_HEADERS;
static ACMA: HeaderName = http::header::ACCESS_CONTROL_MAX_AGE;
static VARY: HeaderName = http::header::VARY;

impl Cors {
    pub fn compile(base: &str, f: CorsFile, errs: &mut ConfigErrors) -> Option<Cors> {
        let before = errs.0.len();
        let any_origin = f.origins.iter().any(|o| o == "*");
        if f.origins.is_empty() {
            errs.push(
                format!("{base}.origins"),
                "list at least one origin, or \"*\"",
            );
        }
        if any_origin && f.credentials {
            errs.push(
                format!("{base}.credentials"),
                "browsers refuse credentials with origin \"*\": list the origins",
            );
        }
        let mut origins = Vec::new();
        for (i, o) in f.origins.iter().enumerate().filter(|(_, o)| *o != "*") {
            let ok = (o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/');
            match HeaderValue::from_str(o) {
                Ok(v) if ok => origins.push(v),
                _ => errs.push(
                    format!("{base}.origins[{i}]"),
                    format!("{o:?} is not an origin like \"https://app.example.com\""),
                ),
            }
        }
        let mut methods = MethodSet::default();
        let names = f
            .methods
            .unwrap_or_else(|| vec!["GET".into(), "HEAD".into(), "POST".into()]);
        for (i, m) in names.iter().enumerate() {
            if !methods.insert_name(m) {
                errs.push(
                    format!("{base}.methods[{i}]"),
                    format!("unknown method {m:?}"),
                );
            }
        }
        for (i, h) in f.headers.iter().enumerate() {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                errs.push(
                    format!("{base}.headers[{i}]"),
                    format!("{h:?} is not a header name"),
                );
            }
        }
        let max_age = f
            .max_age
            .map_or(Duration::from_secs(600), |d| d.0)
            .as_secs();
        if errs.0.len() > before {
            return None;
        }
        Some(Cors {
            any_origin,
            origins,
            allow_methods: HeaderValue::from_str(&methods.allow_header()).ok()?,
            methods,
            allow_headers: (!f.headers.is_empty())
                .then(|| HeaderValue::from_str(&f.headers.join(", ")).ok())
                .flatten(),
            max_age: HeaderValue::from(max_age),
            credentials: f.credentials,
        })
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, when it is allowed.
    fn allow(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any_origin {
            Some(HeaderValue::from_static("*"))
        } else {
            self.origins
                .iter()
                .any(|o| o == origin)
                .then(|| origin.clone())
        }
    }

    /// Whether `req` is a preflight (OPTIONS with Origin and Access-Control-Request-Method).
    pub fn preflight_method(req: &pingora::http::RequestHeader) -> Option<http::Method> {
        if req.method != http::Method::OPTIONS || !req.headers.contains_key(&ORIGIN) {
            return None;
        }
        let m = req.headers.get(&ACRM)?;
        http::Method::from_bytes(m.as_bytes()).ok()
    }

    /// The preflight answer's headers, or `None` when origin or method is not allowed.
    pub fn preflight(
        &self,
        origin: &HeaderValue,
        method: &http::Method,
    ) -> Option<Vec<(HeaderName, HeaderValue)>> {
        let allow = self.allow(origin)?;
        if !self.methods.contains(method) {
            return None;
        }
        let mut h = vec![
            (ACAO.clone(), allow),
            (ACAM.clone(), self.allow_methods.clone()),
            (ACMA.clone(), self.max_age.clone()),
            (VARY.clone(), HeaderValue::from_static("Origin")),
        ];
        if let Some(ah) = &self.allow_headers {
            h.push((ACAH.clone(), ah.clone()));
        }
        if self.credentials {
            h.push((ACAC.clone(), HeaderValue::from_static("true")));
        }
        Some(h)
    }

    /// Add the CORS headers to an actual response for `origin`.
    pub fn decorate(&self, headers: &mut http::HeaderMap, origin: Option<&HeaderValue>) {
        headers.append(&VARY, HeaderValue::from_static("Origin"));
        if let Some(allow) = origin.and_then(|o| self.allow(o)) {
            headers.insert(&ACAO, allow);
            if self.credentials {
                headers.insert(&ACAC, HeaderValue::from_static("true"));
            }
        }
    }
}
