//! The `tracing` section: `{otlp: {endpoint, timeout}, sample, parent_based, service_name}`,
//! read and checked into [`Config`]; every error names its key.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use crate::config::{parse, ConfigErrors, Dur};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TracingFile {
    otlp: OtlpFile,
    #[serde(default)]
    sample: Option<f64>,
    #[serde(default)]
    parent_based: Option<bool>,
    #[serde(default)]
    service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpFile {
    endpoint: String,
    #[serde(default)]
    timeout: Option<Dur>,
}

/// Where spans go: an OTLP/HTTP collector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    /// `host` or `host:port` as written (the `Host` header), and the address to connect to.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// The request path: the endpoint's own path, then `/v1/traces`.
    pub path: String,
}

/// The compiled `tracing` section.
#[derive(Debug, Clone)]
pub struct Config {
    pub endpoint: Endpoint,
    /// How long one export may take (connect, send, answer).
    pub timeout: Duration,
    /// The share of new traces recorded, 0 to 1.
    pub sample: f64,
    /// A client's `traceparent` decides sampling by its sampled flag.
    pub parent_based: bool,
    pub service_name: String,
}

/// OTLP exporters' default timeout (`OTEL_EXPORTER_OTLP_TIMEOUT`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Read the `tracing` section; `None` (with errors) when it is not valid.
pub fn read(v: Value, errs: &mut ConfigErrors) -> Option<Config> {
    let before = errs.0.len();
    let f: TracingFile = parse("tracing", v, errs)?;
    let endpoint = endpoint(&f.otlp.endpoint)
        .map_err(|why| errs.push("tracing.otlp.endpoint", why))
        .ok();
    let timeout = f.otlp.timeout.map_or(DEFAULT_TIMEOUT, |d| d.0);
    if timeout < Duration::from_millis(10) || timeout > Duration::from_secs(300) {
        errs.push("tracing.otlp.timeout", "must be between 10ms and 5m");
    }
    let sample = f.sample.unwrap_or(1.0);
    if !(0.0..=1.0).contains(&sample) {
        errs.push(
            "tracing.sample",
            format!("must be between 0 and 1 (the share of requests traced), not {sample}"),
        );
    }
    let service_name = f.service_name.unwrap_or_else(|| "tollgate".into());
    if service_name.trim().is_empty() {
        errs.push("tracing.service_name", "must not be empty");
    }
    if errs.0.len() > before {
        return None;
    }
    Some(Config {
        endpoint: endpoint?,
        timeout,
        sample,
        parent_based: f.parent_based.unwrap_or(true),
        service_name,
    })
}

/// `http://host[:port][/path]` or `https://…`: no user, query or fragment.
fn endpoint(url: &str) -> Result<Endpoint, String> {
    let (tls, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(format!(
            "{url:?} is not an http:// or https:// URL (OTLP/HTTP, e.g. http://collector:4318)"
        ));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if url.contains(['?', '#', ' ']) || authority.contains('@') {
        return Err(format!(
            "{url:?}: an endpoint has no user, query, fragment or spaces"
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        // `[::1]:4318`, or `host:4318`; a bare IPv6 literal is only valid in brackets.
        Some((h, p)) if !p.contains(']') => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{url:?}: bad port {p:?}"))?;
            (h, port)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("{url:?} names no host"));
    }
    let path = path.trim_end_matches('/');
    let path = match path.ends_with("/v1/traces") {
        true => path.to_owned(),
        false => format!("{path}/v1/traces"),
    };
    Ok(Endpoint {
        tls,
        authority: authority.to_owned(),
        host: host.to_owned(),
        port,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = endpoint("http://collector:4318").unwrap();
        assert_eq!(
            (e.host.as_str(), e.port, e.path.as_str()),
            ("collector", 4318, "/v1/traces")
        );
        let e = endpoint("https://otel.example.com/base/").unwrap();
        assert_eq!(
            (e.tls, e.port, e.path.as_str()),
            (true, 443, "/base/v1/traces")
        );
        let e = endpoint("http://[::1]:4318/v1/traces").unwrap();
        assert_eq!((e.host.as_str(), e.path.as_str()), ("::1", "/v1/traces"));
        for bad in [
            "collector:4318",
            "ftp://x",
            "http://",
            "http://x:0",
            "http://x:99999",
            "http://u@x",
            "http://x/?a",
        ] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }
}
