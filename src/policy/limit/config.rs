//! What the file says about rate limits (`rate_limits`, `redis`, a route's `rate_limit`) and
//! the one conversion into runtime [`Limits`](super::Limits), owning every error message.

use std::collections::BTreeMap;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;

use super::{Headers, KeyKind, Limits, Policy, PolicyId, Store};
use crate::config::ConfigErrors;
use crate::config::{Dur, SecretFile};

/// `rate_limits:` — policy name → policy.
pub type RateLimitsFile = BTreeMap<String, PolicyFile>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyFile {
    pub requests: u64,
    pub per: Dur,
    /// Requests admitted at once from idle; default `requests`.
    #[serde(default)]
    pub burst: Option<u64>,
    /// `client_ip` (default), `consumer`, `header:NAME`, `claim:NAME`, `route`.
    #[serde(default)]
    pub key: Option<String>,
    /// `local` (default) or `redis`.
    #[serde(default)]
    pub store: Option<String>,
    /// `store: redis` only: decide locally and reconcile with Redis every this often.
    #[serde(default)]
    pub sync: Option<Dur>,
    /// IPv6 clients are keyed per this prefix length (default 64).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// Which headers report the budget: `ietf` (default: `RateLimit`, `RateLimit-Policy`),
    /// `legacy` (`X-RateLimit-*`), `both`, or `none`.
    #[serde(default)]
    pub headers: Option<String>,
}

/// `redis:` — the shared store for `store: redis` policies.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFile {
    /// `redis://host:port[/db]`, or `rediss://` for TLS.
    pub url: String,
    /// An ACL user (Redis 6+); with `password`.
    #[serde(default)]
    pub username: Option<SecretFile>,
    /// `AUTH`'s password: inline, `{env: NAME}` or `{file: PATH}`.
    #[serde(default)]
    pub password: Option<SecretFile>,
    /// `rediss://` only: a PEM file of the CAs to trust (default: the system's).
    #[serde(default)]
    pub ca: Option<String>,
    /// `allow` (fail open, default) or `deny` (503).
    #[serde(default)]
    pub on_error: Option<String>,
    /// Per call; default 50ms.
    #[serde(default)]
    pub timeout: Option<Dur>,
}

/// A route's `rate_limit`: one name or a list of names (all must pass).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RateLimitRef {
    One(String),
    Many(Vec<String>),
}

impl RateLimitRef {
    pub fn names(&self) -> &[String] {
        match self {
            RateLimitRef::One(n) => std::slice::from_ref(n),
            RateLimitRef::Many(v) => v,
        }
    }
}

pub fn compile(
    policies: Option<RateLimitsFile>,
    redis: Option<RedisFile>,
    errs: &mut ConfigErrors,
) -> Limits {
    let mut limits = Limits::default();
    if let Some(r) = &redis {
        let timeout = r.timeout.map_or(Duration::from_millis(50), |d| d.0);
        if timeout.is_zero() {
            errs.push("redis.timeout", "must be greater than 0, e.g. \"50ms\"");
        }
        let before = errs.0.len();
        let access = redis_access(r, errs);
        if !r.url.starts_with("redis://") && !r.url.starts_with("rediss://") {
            errs.push("redis.url", format!("{:?} is not a redis:// URL", r.url));
        }
        if errs.0.len() == before {
            let deny = r.on_error.as_deref() == Some("deny");
            match super::redis::RedisStore::new(&r.url, access, timeout, deny) {
                Ok(s) => limits.redis = Some(s),
                Err((key, e)) => errs.push(key, e),
            }
        }
        match r.on_error.as_deref() {
            None | Some("allow" | "deny") => {}
            Some(o) => errs.push(
                "redis.on_error",
                format!("unknown value {o:?} (one of: allow, deny)"),
            ),
        }
    }
    for (name, p) in policies.unwrap_or_default() {
        let base = format!("rate_limits.{name}");
        let before = errs.0.len();
        if p.requests == 0 {
            errs.push(format!("{base}.requests"), "must be at least 1");
        }
        if p.per.0.is_zero() {
            errs.push(format!("{base}.per"), "must be greater than 0, e.g. \"1m\"");
        }
        if p.burst == Some(0) {
            errs.push(
                format!("{base}.burst"),
                "must be at least 1 (or left out: requests)",
            );
        }
        let ipv6_prefix = p.ipv6_prefix.unwrap_or(64);
        if ipv6_prefix == 0 || ipv6_prefix > 128 {
            errs.push(format!("{base}.ipv6_prefix"), "must be between 1 and 128");
        }
        let key = match p.key.as_deref().unwrap_or("client_ip") {
            "client_ip" => KeyKind::ClientIp,
            "route" => KeyKind::Route,
            "consumer" => KeyKind::Consumer,
            k => {
                if let Some(h) = k.strip_prefix("header:") {
                    match HeaderName::from_bytes(h.trim().as_bytes()) {
                        Ok(h) => KeyKind::Header(h),
                        Err(_) => {
                            errs.push(format!("{base}.key"), format!("{h:?} is not a header name"));
                            KeyKind::ClientIp
                        }
                    }
                } else if let Some(c) = k.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                    KeyKind::Claim(c.into())
                } else {
                    errs.push(
                        format!("{base}.key"),
                        format!("unknown key {k:?} (one of: client_ip, consumer, header:NAME, claim:NAME, route)"),
                    );
                    KeyKind::ClientIp
                }
            }
        };
        let store = match p.store.as_deref().unwrap_or("local") {
            "local" => Store::Local,
            "redis" => {
                if redis.is_none() {
                    errs.push(
                        format!("{base}.store"),
                        "store: redis needs a top-level redis section, e.g. redis: {url: \"redis://127.0.0.1:6379\"}",
                    );
                }
                Store::Redis
            }
            s => {
                errs.push(
                    format!("{base}.store"),
                    format!("unknown store {s:?} (one of: local, redis)"),
                );
                Store::Local
            }
        };
        if let Some(d) = &p.sync {
            if store != Store::Redis {
                errs.push(
                    format!("{base}.sync"),
                    "only for store: redis (a local store decides locally anyway)",
                );
            } else if d.0.is_zero() {
                errs.push(
                    format!("{base}.sync"),
                    "must be greater than 0, e.g. \"10ms\" (or left out: one Redis call per request)",
                );
            }
        }
        let headers = match p.headers.as_deref().unwrap_or("ietf") {
            "ietf" => Headers::IETF,
            "legacy" => Headers::LEGACY,
            "both" => Headers::BOTH,
            "none" => Headers::NONE,
            h => {
                errs.push(
                    format!("{base}.headers"),
                    format!("unknown value {h:?} (one of: ietf, legacy, both, none)"),
                );
                Headers::IETF
            }
        };
        if errs.0.len() == before {
            let mut policy = Policy::new(
                &name,
                p.requests,
                p.per.0,
                p.burst.unwrap_or(p.requests),
                key,
                store,
                ipv6_prefix,
            );
            policy.headers = headers;
            if let (Some(d), Some(r)) = (&p.sync, &limits.redis) {
                policy.sync = Some(super::sync::SyncStore::new(
                    r.client().clone(),
                    policy.gcra,
                    d.0,
                    r.timeout,
                ));
            }
            limits.policies.push(policy);
        }
    }
    limits
}

/// Resolve a route's `rate_limit` names against the compiled policies.
pub fn route_limits(
    base: &str,
    r: Option<&RateLimitRef>,
    limits: &Limits,
    known: &[String],
    errs: &mut ConfigErrors,
) -> Vec<PolicyId> {
    let Some(r) = r else { return Vec::new() };
    let mut out = Vec::new();
    if r.names().is_empty() {
        errs.push(
            format!("{base}.rate_limit"),
            "must name at least one rate limit",
        );
    }
    for n in r.names() {
        match limits.find(n) {
            Some(id) => out.push(id),
            // A policy with its own error is reported there, not again here.
            None if known.contains(n) => {}
            None => {
                let k = if known.is_empty() {
                    "none defined".to_owned()
                } else {
                    known.join(", ")
                };
                errs.push(
                    format!("{base}.rate_limit"),
                    format!("unknown rate limit {n:?} (known: {k})"),
                );
            }
        }
    }
    out
}

/// `redis`'s credentials and CAs, read once (the secrets from where they are kept).
fn redis_access(r: &RedisFile, errs: &mut ConfigErrors) -> super::redis::Access {
    let mut text = |key: &str, s: &Option<SecretFile>| {
        let path = format!("redis.{key}");
        let v = s.as_ref()?.load_text(&path, errs)?;
        if v.is_empty() {
            errs.push(path, "is empty: it cannot protect anything");
            return None;
        }
        Some(v)
    };
    let username = text("username", &r.username);
    let password = text("password", &r.password);
    if r.username.is_some() && r.password.is_none() {
        errs.push("redis.password", "username needs a password");
    }
    let ca = r.ca.as_ref().and_then(|file| {
        if !r.url.starts_with("rediss://") {
            errs.push("redis.ca", "only applies to a rediss:// (TLS) url");
            return None;
        }
        match std::fs::read(file) {
            Ok(pem) if openssl::x509::X509::stack_from_pem(&pem).is_ok_and(|c| !c.is_empty()) => {
                Some(pem)
            }
            Ok(_) => {
                errs.push("redis.ca", format!("{file:?} holds no PEM certificate"));
                None
            }
            Err(e) => {
                errs.push("redis.ca", format!("cannot read {file:?}: {e}"));
                None
            }
        }
    });
    super::redis::Access {
        username,
        password,
        ca,
    }
}
