//! Authentication per route (API keys, JWT, token introspection, client certificates),
//! authorization (consumers / claims), and the identity tollgate forwards upstream.

pub mod api_key;
pub mod cache;
pub mod config;
pub mod ct;
pub mod discovery;
mod failure;
pub mod fetch;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod remote;
pub mod token;

use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::error::Reject;
use crate::headers::names::X_CONSUMER;
use crate::listen::client_auth::PeerCert;

use failure::{bearer_www, fail};
pub use failure::{Failure, Reason};

/// A credential header larger than this is refused before any verification.
pub const MAX_CREDENTIAL: usize = 8 * 1024;

static WWW_KEY: HeaderValue = HeaderValue::from_static("ApiKey");

#[derive(Debug)]
pub enum Provider {
    ApiKey(api_key::ApiKey),
    Jwt(Box<jwt::Jwt>),
    Mtls(mtls::Mtls),
    Introspection(Box<introspect::Introspection>),
}

/// Every provider and consumer, compiled.
#[derive(Debug, Default)]
pub struct Auth {
    pub names: Vec<String>,
    pub providers: Vec<Provider>,
    /// Providers whose settings are in error (so routes naming them are not also wrong).
    pub broken: Vec<String>,
    pub consumer_names: Vec<String>,
    /// `X-Consumer` for each consumer, precomputed.
    pub consumers: Vec<HeaderValue>,
    /// Headers tollgate sets itself: client copies are removed on every route.
    pub identity_headers: Vec<HeaderName>,
}

/// A route's requirement.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    pub providers: Vec<usize>,
    pub consumers: Option<Vec<String>>,
    pub claims: Vec<(String, Vec<String>)>,
    /// One of the providers reads the client certificate: only then is it looked up.
    pub mtls: bool,
    /// A provider asks an introspection endpoint: checked by [`Auth::check_introspecting`].
    pub introspects: bool,
}

/// Who the caller is, and what goes upstream.
#[derive(Debug, Default)]
pub struct Identity {
    pub consumer: Option<HeaderValue>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The credential header to remove before forwarding.
    pub credential: Option<HeaderName>,
    /// The query parameter that carried the key, removed from the upstream target.
    pub credential_query: Option<std::sync::Arc<str>>,
    /// A token caller's claims (JWT, introspection), for `claim:NAME` rate-limit keys.
    pub claims: Option<Arc<jwt::Claims>>,
}

impl Identity {
    /// The consumer's name as bytes, for keying (no check of every byte): a name that is not
    /// ASCII is as good a key.
    pub fn consumer_bytes(&self) -> Option<&[u8]> {
        Some(self.consumer.as_ref()?.as_bytes())
    }

    /// A verified claim, for `key: claim:NAME` limits.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.claims.as_ref()?.get(name)
    }
}

/// `query` without the parameter `name` (`None` when nothing is left).
pub fn strip_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split_once('=').map_or(*kv, |(k, _)| k) != name)
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// The one credential value of `name`: `Ok(None)` if absent, an error if repeated or too big.
fn single<'a>(
    req: &'a RequestHeader,
    name: &HeaderName,
) -> Result<Option<&'a [u8]>, (Reason, &'static str)> {
    let mut it = req.headers.get_all(name).iter();
    let Some(v) = it.next() else { return Ok(None) };
    if it.next().is_some() {
        return Err((
            Reason::Duplicate,
            "the credential header is given more than once",
        ));
    }
    if v.len() > MAX_CREDENTIAL {
        return Err((Reason::TooLarge, "the credential is too large"));
    }
    Ok(Some(v.as_bytes()))
}

fn query_param<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then_some(v)
    })
}

impl Auth {
    /// Provider `p` as `tollgate explain` shows it (no secret, ever).
    pub fn describe(&self, p: usize) -> String {
        let name = &self.names[p];
        match &self.providers[p] {
            Provider::ApiKey(k) => match (&k.header, &k.query) {
                (Some(h), _) => format!("{name} (api_key in header {h})"),
                (None, Some(q)) => format!("{name} (api_key in query parameter {q})"),
                (None, None) => format!("{name} (api_key)"),
            },
            Provider::Jwt(j) => {
                let (iss, aud) = j.issuer_audience();
                let mut d = format!("{name} (jwt {}", j.algorithms().join("/"));
                if let Some(i) = iss {
                    d.push_str(&format!(", issuer {i}"));
                }
                if let Some(a) = aud {
                    d.push_str(&format!(", audience {a}"));
                }
                if let Some(r) = j.remote() {
                    d.push_str(&format!(", {}", r.describe()));
                }
                d.push(')');
                d
            }
            Provider::Mtls(m) => format!("{name} ({})", m.describe()),
            Provider::Introspection(i) => format!("{name} ({})", i.describe()),
        }
    }

    /// The introspection providers, by name.
    pub fn introspections(&self) -> impl Iterator<Item = (&str, &introspect::Introspection)> {
        self.names
            .iter()
            .zip(&self.providers)
            .filter_map(|(n, p)| match p {
                Provider::Introspection(i) => Some((n.as_str(), &**i)),
                _ => None,
            })
    }

    /// Before serving (never for `-t` or `explain`): introspection clients built, remote key
    /// sets fetched ([`remote::fetch_at_start`]).
    pub fn start(&self) -> Result<(), String> {
        for (_, i) in self.introspections() {
            i.start();
        }
        remote::fetch_at_start(&self.remotes())
    }

    /// The providers whose keys come from an identity provider.
    pub fn remotes(&self) -> Vec<Arc<remote::Remote>> {
        self.providers
            .iter()
            .filter_map(|p| match p {
                Provider::Jwt(j) => j.remote().cloned(),
                _ => None,
            })
            .collect()
    }

    /// Mint a token with the HMAC provider `name` (`tollgate token`).
    pub fn mint(&self, name: &str, claims: jwt::Claims) -> Result<String, String> {
        match self.names.iter().position(|n| n == name) {
            Some(i) => match &self.providers[i] {
                Provider::Jwt(j) => j.mint(claims),
                _ => Err(format!("auth {name:?} is not a jwt provider")),
            },
            None => Err(format!(
                "unknown auth {name:?} (known: {})",
                self.names.join(", ")
            )),
        }
    }

    /// Authenticate and authorize a request for `route`, without the network: an
    /// introspection provider is passed over (routes with one use
    /// [`Auth::check_introspecting`]; `tollgate explain` is offline).
    /// `cert`: the client certificate of the connection (looked up only for routes with
    /// [`RouteAuth::mtls`]).
    pub fn check(
        &self,
        route: &RouteAuth,
        req: &RequestHeader,
        cert: Option<&PeerCert>,
    ) -> Result<Identity, Failure> {
        let mut tally = Tally::default();
        for &p in &route.providers {
            if let Some(found) = tally.add(self.check_local(p, req, cert)) {
                return self.authorize(route, found);
            }
        }
        Err(tally.refusal(self, route))
    }

    /// [`Auth::check`] asking the introspection endpoints too (within the request, async).
    pub async fn check_introspecting(
        &self,
        route: &RouteAuth,
        req: &RequestHeader,
        cert: Option<&PeerCert>,
    ) -> Result<Identity, Failure> {
        let mut tally = Tally::default();
        for &p in &route.providers {
            let r = match &self.providers[p] {
                Provider::Introspection(i) => introspect::check_request(i, req).await,
                _ => self.check_local(p, req, cert),
            };
            if let Some(found) = tally.add(r) {
                return self.authorize(route, found);
            }
        }
        Err(tally.refusal(self, route))
    }

    /// Provider `p` on `req`, when it needs no network (`Ok(None)` for one that does).
    fn check_local(
        &self,
        p: usize,
        req: &RequestHeader,
        cert: Option<&PeerCert>,
    ) -> Result<Option<Found>, Failure> {
        match &self.providers[p] {
            Provider::ApiKey(k) => self.check_key(k, req),
            Provider::Jwt(j) => check_jwt(j, req),
            Provider::Mtls(m) => check_mtls(m, cert),
            Provider::Introspection(_) => Ok(None),
        }
    }

    /// The refusal of a request that carries no credential any of the route's providers
    /// looks for.
    fn missing(&self, route: &RouteAuth) -> Failure {
        let has = |f: fn(&Provider) -> bool| route.providers.iter().any(|p| f(&self.providers[*p]));
        let bearer = has(|p| matches!(p, Provider::Jwt(_) | Provider::Introspection(_)));
        let others = has(|p| !matches!(p, Provider::Mtls(_)));
        let challenge = if bearer {
            HeaderValue::from_static("Bearer")
        } else if others {
            WWW_KEY.clone()
        } else {
            mtls::WWW_CERT.clone()
        };
        let why = match (route.mtls, others) {
            (false, _) => (
                Reason::Missing,
                "missing credential: send an API key or an Authorization: Bearer token",
            ),
            (true, false) => (
                Reason::NoCertificate,
                "this route requires a client certificate (mutual TLS)",
            ),
            (true, true) => (
                Reason::Missing,
                "missing credential: send a client certificate, an API key or an Authorization: Bearer token",
            ),
        };
        fail(why, challenge)
    }

    fn check_key(
        &self,
        k: &api_key::ApiKey,
        req: &RequestHeader,
    ) -> Result<Option<Found>, Failure> {
        let (value, credential, credential_query) = match &k.header {
            Some(h) => match single(req, h) {
                Ok(Some(v)) => (v, Some(h.clone()), None),
                Ok(None) => return Ok(None),
                Err(m) => return Err(fail(m, WWW_KEY.clone())),
            },
            None => match k
                .query
                .as_ref()
                .and_then(|q| Some((q, query_param(req, q)?)))
            {
                Some((q, v)) => (v.as_bytes(), None, Some(q.clone())),
                None => return Ok(None),
            },
        };
        match k.table.lookup(value) {
            Some(c) => Ok(Some((
                Identity {
                    consumer: Some(self.consumers[c].clone()),
                    headers: Vec::new(),
                    credential,
                    credential_query,
                    claims: None,
                },
                None,
            ))),
            None => Err(fail(
                (Reason::InvalidKey, "invalid API key"),
                WWW_KEY.clone(),
            )),
        }
    }

    fn authorize(&self, route: &RouteAuth, (mut id, claims): Found) -> Result<Identity, Failure> {
        let forbidden = Failure {
            reject: Reject::Forbidden,
            reason: Reason::Forbidden,
            message: "this caller is not allowed on this route",
            www: None,
        };
        if let Some(allowed) = &route.consumers {
            let name = id.consumer.as_ref().map(|c| c.as_bytes()).unwrap_or(b"");
            if !allowed.iter().any(|a| a.as_bytes() == name) {
                return Err(forbidden);
            }
        }
        for (claim, values) in &route.claims {
            let ok = claims
                .as_ref()
                .and_then(|c| c.get(claim))
                .is_some_and(|v| match v {
                    // OAuth 2 scopes: one string, space-separated (RFC 6749 §3.3).
                    serde_json::Value::String(s) if is_scope(claim) => {
                        s.split(' ').any(|t| values.iter().any(|v| v == t))
                    }
                    serde_json::Value::String(s) => values.contains(s),
                    serde_json::Value::Array(a) => a
                        .iter()
                        .any(|x| x.as_str().is_some_and(|s| values.iter().any(|v| v == s))),
                    other => values.contains(&other.to_string()),
                });
            if !ok {
                return Err(forbidden);
            }
        }
        id.claims = claims;
        Ok(id)
    }
}

/// Whether a claim holds OAuth 2 scopes (`scope`, RFC 9068; `scp`, as some providers name
/// it): a space-separated list in one string.
fn is_scope(claim: &str) -> bool {
    matches!(claim, "scope" | "scp")
}

/// A credential a provider accepted: who it names, and a JWT's claims.
type Found = (Identity, Option<Arc<jwt::Claims>>);

static AUTHORIZATION: HeaderName = http::header::AUTHORIZATION;

/// The route's providers' verdicts, in order: the first credential accepted wins; else the
/// first refusal, or "missing" when no provider found a credential.
#[derive(Default)]
struct Tally {
    first_err: Option<Failure>,
}

impl Tally {
    fn add(&mut self, r: Result<Option<Found>, Failure>) -> Option<Found> {
        match r {
            Ok(found) => found,
            Err(f) => {
                self.first_err.get_or_insert(f);
                None
            }
        }
    }

    fn refusal(self, auth: &Auth, route: &RouteAuth) -> Failure {
        self.first_err.unwrap_or_else(|| auth.missing(route))
    }
}

/// The `Authorization: Bearer` token, if the request has one.
fn bearer_token(req: &RequestHeader) -> Result<Option<&str>, Failure> {
    let value = match single(req, &AUTHORIZATION) {
        Ok(Some(v)) => v,
        Ok(None) => return Ok(None),
        Err(m) => return Err(fail(m, bearer_www(m.1))),
    };
    match std::str::from_utf8(value).ok().and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
    }) {
        Some(t) => Ok(Some(t.trim())),
        None => {
            let m = "malformed Authorization header: expected Bearer <token>";
            Err(fail((Reason::Malformed, m), bearer_www(m)))
        }
    }
}

/// What a token (verified, or introspected) gives the request.
fn found(v: &cache::Verified) -> Found {
    (
        Identity {
            consumer: v.consumer.clone(),
            headers: v.headers.clone(),
            credential: Some(AUTHORIZATION.clone()),
            credential_query: None,
            claims: None,
        },
        Some(v.claims.clone()),
    )
}

fn check_jwt(j: &jwt::Jwt, req: &RequestHeader) -> Result<Option<Found>, Failure> {
    let Some(token) = bearer_token(req)? else {
        return Ok(None);
    };
    let v = j.check(token).map_err(|m| fail(m, bearer_www(m.1)))?;
    Ok(Some(found(&v)))
}

fn check_mtls(m: &mtls::Mtls, cert: Option<&PeerCert>) -> Result<Option<Found>, Failure> {
    Ok(m.check(cert)?.map(|id| (id, None)))
}

/// Remove client copies of identity headers (every route), then set tollgate's own.
pub fn forward<'n>(
    auth: &'n Auth,
    id: Option<&'n Identity>,
    headers: &mut impl crate::headers::Edit<'n>,
) {
    for h in &auth.identity_headers {
        headers.remove(h);
    }
    if let Some(id) = id {
        if let Some(c) = &id.credential {
            headers.remove(c);
        }
        if let Some(c) = &id.consumer {
            headers.insert(&X_CONSUMER, c.clone());
        }
        for (h, v) in &id.headers {
            headers.insert(h, v.clone());
        }
    }
}
