//! What the file says about `consumers`, `auth` and a route's `auth`/`consumers`/`claims`,
//! and the one conversion into the runtime verifiers (owning every error message).

use std::collections::BTreeMap;

use http::HeaderName;
use serde::Deserialize;

use super::api_key::{ApiKey, KeyTable};
use super::discovery::Discovery;
use super::introspect::Introspection;
use super::jwt::{Jwks, Jwt};
use super::mtls::{ConsumerFrom, Mtls};
use super::remote::{Remote, RemoteJwksFile};
use super::{Auth, Provider, RouteAuth};
use crate::config::ConfigErrors;
use crate::config::Dur;

pub use crate::config::SecretFile;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerFile {
    #[serde(default)]
    pub api_keys: Vec<SecretFile>,
}

/// `auth.NAME`, by its `type` ([`read`]).
#[derive(Debug)]
pub enum AuthFile {
    ApiKey(ApiKeyFile),
    Jwt(JwtFile),
    /// OAuth2 token introspection (`super::introspect`).
    Introspection(super::introspect::IntrospectionFile),
    Mtls(MtlsFile),
    /// In error (reported): routes naming it are not also wrong.
    Broken,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFile {
    pub algorithms: Vec<String>,
    #[serde(default)]
    pub secret: Option<SecretFile>,
    #[serde(default)]
    pub public_key: Option<SecretFile>,
    /// A document (`{file}`, `{env}`, inline), or `{url, ...}` (`super::remote`).
    #[serde(default)]
    pub jwks: Option<Box<serde_yaml::Value>>,
    #[serde(default)]
    pub issuer: Option<String>,
    /// OpenID discovery: the keys are at the `jwks_uri` of the issuer's document.
    #[serde(default)]
    pub discovery: bool,
    #[serde(default)]
    pub audience: Option<String>,
    #[serde(default)]
    pub leeway: Option<Dur>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsFile {
    /// `cn` (default), `san_dns`, `san_email`, `san_uri`.
    #[serde(default)]
    pub consumer_from: Option<String>,
    #[serde(default)]
    pub forward_certificate: Option<String>,
    #[serde(default)]
    pub forward_fingerprint: Option<String>,
}

/// `auth.NAME` at `path`: its `type`, then that type's settings, so that an error names its
/// key (an internally tagged serde enum loses the path). [`AuthFile::Broken`] after an error.
pub fn read(path: &str, v: serde_yaml::Value, errs: &mut ConfigErrors) -> AuthFile {
    use crate::config::parse;
    const TYPES: &str = "api_key, jwt, introspection or mtls";
    let serde_yaml::Value::Mapping(mut m) = v else {
        errs.push(path, format!("must be a mapping with a type: {TYPES}"));
        return AuthFile::Broken;
    };
    let ty = m.remove("type");
    let v = serde_yaml::Value::Mapping(m);
    let read = match ty.as_ref().map(|t| (t, t.as_str())) {
        Some((_, Some("api_key"))) => parse(path, v, errs).map(AuthFile::ApiKey),
        Some((_, Some("jwt"))) => parse(path, v, errs).map(AuthFile::Jwt),
        Some((_, Some("introspection"))) => parse(path, v, errs).map(AuthFile::Introspection),
        Some((_, Some("mtls"))) => parse(path, v, errs).map(AuthFile::Mtls),
        Some((t, _)) => {
            let t = serde_yaml::to_string(t).unwrap_or_default();
            errs.push(
                format!("{path}.type"),
                format!("unknown type {:?} ({TYPES})", t.trim()),
            );
            None
        }
        None => {
            errs.push(format!("{path}.type"), format!("missing: {TYPES}"));
            None
        }
    };
    read.unwrap_or(AuthFile::Broken)
}

/// The keys of a remote set (`super::remote::RemoteJwksFile`).
const REMOTE_KEYS: [&str; 5] = ["url", "refresh", "min_refresh", "ca", "on_unavailable"];

/// `jwks` at `base`: a document, or a remote set (a mapping with a `url` or another key of a
/// remote set); with `discovery: Some(issuer)`, the settings of the set the issuer's discovery
/// document names. `None` after an error (already reported).
fn jwks(
    name: &str,
    base: &str,
    v: Option<serde_yaml::Value>,
    discovery: Option<Option<&str>>,
    state_dir: &std::path::Path,
    errs: &mut ConfigErrors,
) -> Option<Option<Jwks>> {
    let path = format!("{base}.jwks");
    let remote = v.as_ref().is_some_and(|v| {
        v.as_mapping()
            .is_some_and(|m| REMOTE_KEYS.iter().any(|k| m.contains_key(*k)))
    });
    let remote_set = |f, d, errs: &mut ConfigErrors| {
        let r = Remote::compile(name, &path, f, d, state_dir, errs)?;
        Some(Some(Jwks::Remote(std::sync::Arc::new(r))))
    };
    let Some(issuer) = discovery else {
        return match v {
            None => Some(None),
            Some(v) if remote => {
                let f = crate::config::parse::<RemoteJwksFile>(&path, v, errs)?;
                remote_set(f, None, errs)
            }
            Some(v) => {
                crate::config::parse::<SecretFile>(&path, v, errs).map(|f| Some(Jwks::Local(f)))
            }
        };
    };
    let d = discovered(base, issuer, errs);
    let f = match v.filter(|v| !v.is_null()) {
        None => Some(RemoteJwksFile::default()),
        Some(v) if remote => crate::config::parse::<RemoteJwksFile>(&path, v, errs),
        Some(_) => {
            errs.push(
                &*path,
                "with discovery: true, jwks takes only the settings of the set the discovery \
                 document names: refresh, min_refresh, ca, on_unavailable",
            );
            None
        }
    };
    remote_set(f?, Some(d?), errs)
}

/// `discovery: true`: the issuer it needs, as an https URL.
fn discovered(base: &str, issuer: Option<&str>, errs: &mut ConfigErrors) -> Option<Discovery> {
    match issuer {
        None => {
            errs.push(
                format!("{base}.discovery"),
                "needs issuer: the discovery document is read from \
                 <issuer>/.well-known/openid-configuration",
            );
            None
        }
        Some(i) => Discovery::new(i)
            .map_err(|m| errs.push(format!("{base}.issuer"), m))
            .ok(),
    }
}

pub fn compile(
    consumers: Vec<(String, ConsumerFile)>,
    auth: Vec<(String, AuthFile)>,
    state_dir: &std::path::Path,
    errs: &mut ConfigErrors,
) -> Auth {
    let mut names = Vec::new();
    let mut table = KeyTable::default();
    for (i, (name, c)) in consumers.iter().enumerate() {
        names.push(name.clone());
        for (j, k) in c.api_keys.iter().enumerate() {
            let path = format!("consumers.{name}.api_keys[{j}]");
            let Some(bytes) = k.load(&path, errs) else {
                continue;
            };
            if let Err(m) = table.insert(&bytes, i, matches!(k, SecretFile::Inline(_))) {
                errs.push(path, m);
            }
        }
    }
    let table = std::sync::Arc::new(table);
    let mut out = Auth {
        consumers: names
            .iter()
            .map(|n| http::HeaderValue::from_str(n).unwrap_or(http::HeaderValue::from_static("")))
            .collect(),
        consumer_names: names,
        ..Auth::default()
    };
    out.identity_headers
        .push(crate::headers::names::X_CONSUMER.clone());
    for (name, a) in auth {
        let base = format!("auth.{name}");
        let p = match a {
            AuthFile::Broken => {
                out.broken.push(name);
                continue;
            }
            AuthFile::ApiKey(ApiKeyFile { header, query }) => {
                let header = match (&header, &query) {
                    (Some(h), _) => match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) => Some(h),
                        Err(_) => {
                            errs.push(format!("{base}.header"), "is not a valid header name");
                            None
                        }
                    },
                    (None, Some(_)) => None,
                    (None, None) => Some(crate::headers::names::X_API_KEY.clone()),
                };
                Provider::ApiKey(ApiKey {
                    header,
                    query: query.map(std::sync::Arc::from),
                    table: table.clone(),
                })
            }
            AuthFile::Jwt(JwtFile {
                algorithms,
                secret,
                public_key,
                jwks,
                issuer,
                discovery,
                audience,
                leeway,
                forward_claims,
                consumer_claim,
            }) => {
                let fwd = forwarded(&base, forward_claims, &mut out.identity_headers, errs);
                let discovery = discovery.then_some(issuer.as_deref());
                let jwks =
                    match self::jwks(&name, &base, jwks.map(|v| *v), discovery, state_dir, errs) {
                        Some(j) => j,
                        None => {
                            out.broken.push(name);
                            continue;
                        }
                    };
                match Jwt::compile(
                    &base,
                    &algorithms,
                    secret.as_ref(),
                    public_key.as_ref(),
                    jwks,
                    issuer,
                    audience,
                    leeway.map(|d| d.0.as_secs()).unwrap_or(0),
                    fwd,
                    consumer_claim.unwrap_or_else(|| "sub".to_owned()),
                    errs,
                ) {
                    Some(j) => Provider::Jwt(Box::new(j)),
                    None => {
                        out.broken.push(name);
                        continue;
                    }
                }
            }
            AuthFile::Mtls(MtlsFile {
                consumer_from,
                forward_certificate,
                forward_fingerprint,
            }) => {
                let consumer_from = match consumer_from.as_deref().map(ConsumerFrom::parse) {
                    None => ConsumerFrom::default(),
                    Some(Some(c)) => c,
                    Some(None) => {
                        errs.push(
                            format!("{base}.consumer_from"),
                            format!(
                                "{:?} is not one of cn, san_dns, san_email, san_uri",
                                consumer_from.unwrap_or_default()
                            ),
                        );
                        out.broken.push(name);
                        continue;
                    }
                };
                let mut header = |key: &str, h: Option<String>| {
                    let h = h?;
                    match HeaderName::from_bytes(h.as_bytes()) {
                        Ok(h) => {
                            if !out.identity_headers.contains(&h) {
                                out.identity_headers.push(h.clone());
                            }
                            Some(h)
                        }
                        Err(_) => {
                            errs.push(
                                format!("{base}.{key}"),
                                format!("{h:?} is not a valid header name"),
                            );
                            None
                        }
                    }
                };
                Provider::Mtls(Mtls {
                    consumer_from,
                    forward_certificate: header("forward_certificate", forward_certificate),
                    forward_fingerprint: header("forward_fingerprint", forward_fingerprint),
                })
            }
            AuthFile::Introspection(mut f) => {
                let claims = std::mem::take(&mut f.forward_claims);
                let fwd = forwarded(&base, claims, &mut out.identity_headers, errs);
                match Introspection::compile(&base, f, fwd, errs) {
                    Some(i) => Provider::Introspection(Box::new(i)),
                    None => {
                        out.broken.push(name);
                        continue;
                    }
                }
            }
        };
        out.names.push(name);
        out.providers.push(p);
    }
    out
}

/// `forward_claims` at `base`: claim and header, each header also among the identity headers
/// (client copies removed on every route).
fn forwarded(
    base: &str,
    forward_claims: BTreeMap<String, String>,
    identity_headers: &mut Vec<HeaderName>,
    errs: &mut ConfigErrors,
) -> Vec<(String, HeaderName)> {
    let mut fwd = Vec::new();
    for (claim, h) in forward_claims {
        match HeaderName::from_bytes(h.as_bytes()) {
            Ok(h) => {
                if !identity_headers.contains(&h) {
                    identity_headers.push(h.clone());
                }
                fwd.push((claim, h));
            }
            Err(_) => errs.push(
                format!("{base}.forward_claims.{claim}"),
                format!("{h:?} is not a valid header name"),
            ),
        }
    }
    fwd
}

/// A route's `auth: [names]`, `consumers: [names]`, `claims: {claim: [values]}`.
pub fn route(
    base: &str,
    auth: &Auth,
    names: Option<&Vec<String>>,
    consumers: Option<&Vec<String>>,
    claims: Option<&BTreeMap<String, Vec<String>>>,
    errs: &mut ConfigErrors,
) -> Option<RouteAuth> {
    let Some(names) = names else {
        if consumers.is_some() {
            errs.push(
                format!("{base}.consumers"),
                "needs auth: [...] on this route",
            );
        }
        if claims.is_some() {
            errs.push(format!("{base}.claims"), "needs auth: [...] on this route");
        }
        return None;
    };
    let known = if auth.names.is_empty() {
        "none defined".to_owned()
    } else {
        auth.names.join(", ")
    };
    let mut providers = Vec::new();
    if names.is_empty() {
        errs.push(
            format!("{base}.auth"),
            "must name at least one auth provider, or be left out for a public route",
        );
    }
    for (i, n) in names.iter().enumerate() {
        match auth.names.iter().position(|x| x == n) {
            Some(p) => providers.push(p),
            // A provider in error has its own message; the route naming it is not wrong.
            None if auth.broken.contains(n) => {}
            None => errs.push(
                format!("{base}.auth[{i}]"),
                format!("unknown auth {n:?} (known: {known})"),
            ),
        }
    }
    let mtls = providers
        .iter()
        .any(|p| matches!(auth.providers[*p], Provider::Mtls(_)));
    // A provider in error may be one whose tokens name their consumer: not known here.
    let broken = names.iter().any(|n| auth.broken.contains(n));
    let consumers = consumers.map(|cs| {
        for (i, c) in cs.iter().enumerate().filter(|_| !broken) {
            let known_key = auth.consumer_names.iter().any(|x| x == c);
            // A token or a certificate names its caller: any name may come.
            let has_token = providers
                .iter()
                .any(|p| !matches!(auth.providers[*p], Provider::ApiKey(_)));
            if !known_key && !has_token {
                errs.push(
                    format!("{base}.consumers[{i}]"),
                    format!(
                        "unknown consumer {c:?} (known: {})",
                        auth.consumer_names.join(", ")
                    ),
                );
            }
        }
        cs.clone()
    });
    let claims = claims
        .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let introspects = providers
        .iter()
        .any(|p| matches!(auth.providers[*p], Provider::Introspection(_)));
    Some(RouteAuth {
        providers,
        consumers,
        claims,
        mtls,
        introspects,
    })
}
