//! OAuth2 token introspection (RFC 7662) for opaque bearer tokens: `type: introspection`.
//!
//! The gateway asks the identity provider's `endpoint` about the `Authorization: Bearer`
//! token, as the client `client_id`, and remembers the verdict by the token's SHA-256
//! ([`cache`]): an active token until its `exp` or for `cache_ttl`, an inactive one for
//! `negative_ttl`. An endpoint that cannot answer (unreachable, slower than `timeout`, not
//! 200, not an RFC 7662 answer) costs the request a 503, never an admission, and nothing is
//! remembered. The answer's members are the token's claims, as a JWT's are: `forward_claims`,
//! `consumer_claim`, a route's `claims` and `key: claim:NAME` limits read them alike.
//!
//! The call is made within the request, asynchronously (the worker thread serves others
//! meanwhile), only on routes naming such a provider; requests with the same unknown token
//! share one call. Connections to the endpoint are kept for the next call.

pub mod cache;
pub mod call;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use pingora::protocols::tls::CaType;
use serde::Deserialize;

use super::cache::Verified;
use super::config::SecretFile;
use super::fetch::{Client, HttpsUrl};
use super::{Failure, Reason};
use crate::config::ConfigErrors;
use crate::config::Dur;
use crate::error::Reject;
use cache::{Digest, Flights, Outcome, Verdicts};
use call::{AuthMethod, Credentials};
use pingora::http::RequestHeader;

/// `type: introspection` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionFile {
    pub endpoint: String,
    pub client_id: String,
    pub client_secret: SecretFile,
    #[serde(default)]
    pub auth_method: AuthMethod,
    #[serde(default)]
    pub cache_ttl: Option<Dur>,
    #[serde(default)]
    pub negative_ttl: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
}

/// Why a token was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// The endpoint says it is not active (401).
    Inactive,
    /// The endpoint could not say (503).
    Unavailable,
}

/// `tollgate_introspection_total`'s `result` labels.
const RESULTS: [&str; 3] = ["hit", "miss", "error"];
const HIT: usize = 0;
const MISS: usize = 1;
const ERROR: usize = 2;
/// The longest a failing endpoint goes unmentioned in the log.
const WARN_EVERY_MS: u64 = 5000;

pub struct Introspection {
    /// `auth.NAME`, for logs.
    pub provider: String,
    pub endpoint: HttpsUrl,
    client_id: String,
    method: AuthMethod,
    credentials: Credentials,
    cache_ttl: Duration,
    negative_ttl: Duration,
    timeout: Duration,
    ca: Option<Arc<CaType>>,
    forward: Vec<(String, HeaderName)>,
    consumer_claim: String,
    verdicts: Verdicts,
    flights: Flights,
    client: OnceLock<Client>,
    /// By [`RESULTS`].
    counts: [AtomicU64; 3],
    /// CLOCK_MONOTONIC ms of the last warning about a failing endpoint, and the failures since.
    warned: AtomicU64,
    unwarned: AtomicU64,
}

impl std::fmt::Debug for Introspection {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.debug_struct("Introspection")
            .field("endpoint", &self.endpoint.text)
            .finish_non_exhaustive()
    }
}

/// `v` within `lo..=hi`, else an error at `path` (and the default).
fn within(
    path: String,
    v: Option<Dur>,
    default: Duration,
    (lo, hi): (Duration, Duration),
    errs: &mut ConfigErrors,
) -> Duration {
    match v {
        Some(Dur(d)) if !(lo..=hi).contains(&d) => {
            errs.push(
                path,
                format!(
                    "must be between {} and {}",
                    humantime::format_duration(lo),
                    humantime::format_duration(hi)
                ),
            );
            default
        }
        Some(Dur(d)) => d,
        None => default,
    }
}

impl Introspection {
    /// Check `auth.NAME` (`base`); `forward`: its `forward_claims`, compiled. Nothing is
    /// asked of the endpoint.
    pub fn compile(
        base: &str,
        f: IntrospectionFile,
        forward: Vec<(String, HeaderName)>,
        errs: &mut ConfigErrors,
    ) -> Option<Introspection> {
        let before = errs.0.len();
        let endpoint = HttpsUrl::parse(&f.endpoint)
            .map_err(|m| errs.push(format!("{base}.endpoint"), m))
            .ok();
        if f.client_id.is_empty() {
            errs.push(format!("{base}.client_id"), "must not be empty");
        }
        let path = format!("{base}.client_secret");
        let secret = f.client_secret.load(&path, errs);
        if secret.as_ref().is_some_and(|s| s.is_empty()) {
            errs.push(
                path,
                format!("must not be empty{}", f.client_secret.describe()),
            );
        }
        let day = Duration::from_secs(24 * 3600);
        let cache_ttl = within(
            format!("{base}.cache_ttl"),
            f.cache_ttl,
            Duration::from_secs(60),
            (Duration::ZERO, day),
            errs,
        );
        let negative_ttl = within(
            format!("{base}.negative_ttl"),
            f.negative_ttl,
            Duration::from_secs(5),
            (Duration::ZERO, day),
            errs,
        );
        let timeout = within(
            format!("{base}.timeout"),
            f.timeout,
            Duration::from_secs(2),
            (Duration::from_millis(10), Duration::from_secs(60)),
            errs,
        );
        let ca =
            f.ca.and_then(|file| crate::upstream::tls::read_ca(&format!("{base}.ca"), &file, errs));
        if errs.0.len() > before {
            return None;
        }
        Some(Introspection {
            provider: base.to_owned(),
            endpoint: endpoint?,
            credentials: Credentials::new(f.auth_method, &f.client_id, &secret?),
            client_id: f.client_id,
            method: f.auth_method,
            cache_ttl,
            negative_ttl,
            timeout,
            ca,
            forward,
            consumer_claim: f.consumer_claim.unwrap_or_else(|| "sub".to_owned()),
            verdicts: Verdicts::default(),
            flights: Flights::default(),
            client: OnceLock::new(),
            counts: Default::default(),
            warned: AtomicU64::new(0),
            unwarned: AtomicU64::new(0),
        })
    }

    /// Build the client at startup, before the server's threads (`crate::upstream::trust`).
    pub fn start(&self) {
        let _ = self.client.set(Client::new(self.ca.clone(), true));
    }

    fn client(&self) -> &Client {
        self.client
            .get_or_init(|| Client::new(self.ca.clone(), false))
    }

    /// What the endpoint says of `token`: remembered, or asked now (one call per token at a
    /// time).
    pub async fn check(&self, token: &str) -> Result<Arc<Verified>, Denied> {
        let d = cache::digest(token);
        let out = match self.verdicts.get(&d, crate::clock::mono_millis()) {
            Some(v) => {
                self.counts[HIT].fetch_add(1, Relaxed);
                Outcome::Answered(v)
            }
            None => {
                let flight = self.flights.join(&d);
                let mut asked = false;
                let out = flight
                    .get_or_init(|| {
                        asked = true;
                        self.ask(token, &d)
                    })
                    .await
                    .clone();
                drop(flight);
                let result = match (&out, asked) {
                    (_, false) => HIT,
                    (Outcome::Failed, true) => ERROR,
                    (Outcome::Answered(_), true) => MISS,
                };
                self.counts[result].fetch_add(1, Relaxed);
                out
            }
        };
        match out {
            Outcome::Answered(Some(v)) => Ok(v),
            Outcome::Answered(None) => Err(Denied::Inactive),
            Outcome::Failed => Err(Denied::Unavailable),
        }
    }

    /// One call to the endpoint; its verdict remembered as long as it holds.
    async fn ask(&self, token: &str, d: &Digest) -> Outcome {
        let form = self.credentials.form(token);
        let call = self.client().post_form(
            &self.endpoint,
            self.credentials.authorization(),
            &form,
            self.timeout,
        );
        let answer = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok((status, body))) => call::read(status, &body),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        };
        let now = crate::clock::mono_millis();
        match answer {
            Ok(Some(claims)) => {
                let exp = claims
                    .get("exp")
                    .and_then(|e| e.as_u64().or_else(|| e.as_f64().map(|f| f as u64)));
                let v = Arc::new(Verified::new(
                    claims,
                    &self.forward,
                    &self.consumer_claim,
                    exp.unwrap_or(u64::MAX),
                    None,
                ));
                // Until `exp`, at most `cache_ttl`: a token that expired is not remembered.
                let left = exp.map_or(u64::MAX, |e| {
                    e.saturating_sub(crate::clock::unix_seconds())
                        .saturating_mul(1000)
                });
                let keep = (self.cache_ttl.as_millis() as u64).min(left);
                if keep > 0 {
                    self.verdicts.put(d, Some(v.clone()), now + keep, now);
                }
                Outcome::Answered(Some(v))
            }
            Ok(None) => {
                if !self.negative_ttl.is_zero() {
                    let keep = self.negative_ttl.as_millis() as u64;
                    self.verdicts.put(d, None, now + keep, now);
                }
                Outcome::Answered(None)
            }
            Err(why) => {
                self.warn(now, &why);
                Outcome::Failed
            }
        }
    }

    /// Log a failing endpoint, at most every few seconds (a busy route fails often).
    fn warn(&self, now: u64, why: &str) {
        let last = self.warned.load(Relaxed);
        if now.saturating_sub(last) < WARN_EVERY_MS
            || self
                .warned
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            self.unwarned.fetch_add(1, Relaxed);
            return;
        }
        let more = self.unwarned.swap(0, Relaxed);
        log::warn!(
            "{}: the introspection endpoint {} cannot answer: {why}; its tokens are refused \
             with 503 until it does{}",
            self.provider,
            self.endpoint.text,
            if more > 0 {
                format!(" ({more} more failures since the last warning)")
            } else {
                String::new()
            }
        );
    }

    /// What `tollgate explain` says of it (no secret).
    pub fn describe(&self) -> String {
        let d = humantime::format_duration;
        format!(
            "introspection: would call {} as client {} ({} auth); active tokens kept {} (at \
             most until exp), inactive {}; timeout {}",
            self.endpoint.text,
            self.client_id,
            self.method.as_str(),
            d(self.cache_ttl),
            d(self.negative_ttl),
            d(self.timeout)
        )
    }

    /// How many introspections ended each way (`tollgate_introspection_total`), by result.
    pub fn counts(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        RESULTS
            .iter()
            .zip(&self.counts)
            .map(|(r, c)| (*r, c.load(Relaxed)))
    }
}

/// An opaque token, as its introspection endpoint judges it. A token that is not RFC 6750's
/// `b64token` is refused without asking.
pub(super) async fn check_request(
    i: &Introspection,
    req: &RequestHeader,
) -> Result<Option<super::Found>, Failure> {
    let Some(token) = super::bearer_token(req)? else {
        return Ok(None);
    };
    let b64token = token.trim_end_matches('=');
    if b64token.is_empty()
        || !b64token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        let m = "malformed token: not an RFC 6750 bearer token";
        return Err(super::fail((Reason::Malformed, m), super::bearer_www(m)));
    }
    match i.check(token).await {
        Ok(v) => Ok(Some(super::found(&v))),
        Err(Denied::Inactive) => {
            let m = "the token is not active (expired, revoked or unknown)";
            Err(super::fail((Reason::Inactive, m), super::bearer_www(m)))
        }
        Err(Denied::Unavailable) => Err(Failure {
            reject: Reject::Unavailable,
            reason: Reason::IntrospectionUnavailable,
            message: "the token cannot be checked now: the identity provider's introspection \
                      endpoint is unavailable",
            www: None,
        }),
    }
}
