//! Compile the upstream sections the upstreams module owns (`balance`, `hash_key`,
//! `health_check`, `circuit_breaker`), with every error at its full key path.

use std::time::Duration;

use super::breaker::BreakerConfig;
use super::health::{CheckKind, HealthConfig};
use super::{Balance, HashKey};
use serde::Deserialize;

use crate::config::ConfigErrors;
use crate::config::Dur;

pub fn balance(
    base: &str,
    balance: Option<&str>,
    hash_key: Option<&str>,
    errs: &mut ConfigErrors,
) -> (Balance, HashKey) {
    let b = match balance {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("random") => Balance::Random,
        Some("consistent_hash") => Balance::ConsistentHash,
        Some("least_conn") => Balance::LeastConn,
        Some(other) => {
            errs.push(
                format!("{base}.balance"),
                format!("unknown balancing {other:?} (one of: round_robin, random, consistent_hash, least_conn)"),
            );
            Balance::RoundRobin
        }
    };
    let key = match hash_key {
        None => HashKey::ClientIp,
        Some(_) if b != Balance::ConsistentHash => {
            errs.push(
                format!("{base}.hash_key"),
                "only applies to balance: consistent_hash",
            );
            HashKey::ClientIp
        }
        Some("client_ip") => HashKey::ClientIp,
        Some("consumer") => HashKey::Consumer,
        Some(h) if h.starts_with("header:") => {
            match http::HeaderName::from_bytes(h["header:".len()..].trim().as_bytes()) {
                Ok(n) => HashKey::Header(n),
                Err(_) => {
                    errs.push(
                        format!("{base}.hash_key"),
                        format!("{h:?} does not name a valid header (write header:X-User-Id)"),
                    );
                    HashKey::ClientIp
                }
            }
        }
        Some(other) => {
            errs.push(
                format!("{base}.hash_key"),
                format!("unknown hash key {other:?} (one of: client_ip, consumer, header:NAME)"),
            );
            HashKey::ClientIp
        }
    };
    (b, key)
}

fn dur(
    path: String,
    v: Option<Duration>,
    default: Duration,
    min: Duration,
    errs: &mut ConfigErrors,
) -> Duration {
    let d = v.unwrap_or(default);
    if d < min || d > Duration::from_secs(3600) {
        errs.push(
            path,
            format!("must be between {min:?} and 1h (e.g. \"{default:?}\")"),
        );
    }
    d
}

fn count(path: String, v: Option<u32>, default: u32, errs: &mut ConfigErrors) -> u32 {
    let n = v.unwrap_or(default);
    if n == 0 || n > 100 {
        errs.push(
            path,
            format!("must be between 1 and 100 (default {default})"),
        );
    }
    n
}

pub fn health(base: &str, h: HealthCheckFile, errs: &mut ConfigErrors) -> HealthConfig {
    let base = format!("{base}.health_check");
    let d = HealthConfig::default();
    let kind = match h.kind.as_deref() {
        None | Some("http") => {
            let path = h.path.unwrap_or_else(|| "/".into());
            if !path.starts_with('/') {
                errs.push(format!("{base}.path"), "must start with / (e.g. /health)");
            }
            let status = h.status.unwrap_or(200);
            if !(100..=599).contains(&status) {
                errs.push(format!("{base}.status"), "must be an HTTP status (100-599)");
            }
            CheckKind::Http { path, status }
        }
        Some("tcp") => {
            if h.path.is_some() {
                errs.push(format!("{base}.path"), "only applies to type: http");
            }
            if h.status.is_some() {
                errs.push(format!("{base}.status"), "only applies to type: http");
            }
            CheckKind::Tcp
        }
        Some(other) => {
            errs.push(
                format!("{base}.type"),
                format!("unknown health check type {other:?} (one of: http, tcp)"),
            );
            CheckKind::Tcp
        }
    };
    let ms = Duration::from_millis;
    HealthConfig {
        kind,
        interval: dur(
            format!("{base}.interval"),
            h.interval.map(|d| d.0),
            d.interval,
            ms(100),
            errs,
        ),
        timeout: dur(
            format!("{base}.timeout"),
            h.timeout.map(|d| d.0),
            d.timeout,
            ms(10),
            errs,
        ),
        healthy: count(format!("{base}.healthy"), h.healthy, d.healthy as u32, errs) as usize,
        unhealthy: count(
            format!("{base}.unhealthy"),
            h.unhealthy,
            d.unhealthy as u32,
            errs,
        ) as usize,
    }
}

pub fn breaker(base: &str, c: CircuitBreakerFile, errs: &mut ConfigErrors) -> BreakerConfig {
    let base = format!("{base}.circuit_breaker");
    let d = BreakerConfig::default();
    let failure_statuses = c.failure_statuses.unwrap_or(d.failure_statuses);
    for (i, s) in failure_statuses.iter().enumerate() {
        if !(500..=599).contains(s) {
            errs.push(
                format!("{base}.failure_statuses[{i}]"),
                format!("{s} is not a 5xx status (e.g. [502, 503, 504])"),
            );
        }
    }
    BreakerConfig {
        failures: count(format!("{base}.failures"), c.failures, d.failures, errs),
        open_for: dur(
            format!("{base}.open_for"),
            c.open_for.map(|d| d.0),
            d.open_for,
            Duration::from_millis(100),
            errs,
        ),
        half_open_requests: count(
            format!("{base}.half_open_requests"),
            c.half_open_requests,
            d.half_open_requests,
            errs,
        ),
        failure_statuses,
    }
}

/// `health_check: {type: http, path: /health, status: 200, interval: 2s, timeout: 500ms,
/// healthy: 2, unhealthy: 3}`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub interval: Option<Dur>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub healthy: Option<u32>,
    #[serde(default)]
    pub unhealthy: Option<u32>,
}

/// `circuit_breaker: {failures: 5, open_for: 10s, half_open_requests: 1,
/// failure_statuses: [502, 503, 504]}`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    #[serde(default)]
    pub failures: Option<u32>,
    #[serde(default)]
    pub open_for: Option<Dur>,
    #[serde(default)]
    pub half_open_requests: Option<u32>,
    #[serde(default)]
    pub failure_statuses: Option<Vec<u16>>,
}
