//! The headers tollgate sets on the way up and on the way down.
//!
//! Upstream: the path the route resolved to, `X-Forwarded-*`, `X-Real-IP`, `X-Request-Id`.
//! Pingora 0.9 already strips the standard hop-by-hop request headers and the ones `Connection`
//! names (`HttpUpstreamRequestPolicy::standard`), so this module does not do it twice.
//! Downstream: Pingora writes its own `Connection`; this module removes the upstream's other
//! hop-by-hop headers and adds the gateway's.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

use crate::client::X_FORWARDED_FOR;
use crate::router::Route;

pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
pub static X_GATEWAY: HeaderName = HeaderName::from_static("x-gateway");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// The names tollgate inserts on every request, as `&'static str`. Pingora's `insert_header`
/// keeps each name's original case in a side map: from a `HeaderName` it copies the bytes into
/// a fresh allocation (after matching it against its table of titled standard names), from a
/// `&'static str` it takes the string as it is. Same bytes on the wire (lower case).
pub mod name {
    pub const X_FORWARDED_FOR: &str = "x-forwarded-for";
    pub const X_FORWARDED_PROTO: &str = "x-forwarded-proto";
    pub const X_FORWARDED_HOST: &str = "x-forwarded-host";
    pub const X_REAL_IP: &str = "x-real-ip";
    pub const X_REQUEST_ID: &str = "x-request-id";
    pub const X_GATEWAY: &str = "x-gateway";
}

/// An IP address as a header value; IPv4 (the common case) without `fmt`.
pub fn ip_value(ip: IpAddr) -> HeaderValue {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut n = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                if octet >= 100 {
                    buf[n] = b'0' + octet / 100;
                    n += 1;
                }
                if octet >= 10 {
                    buf[n] = b'0' + octet / 10 % 10;
                    n += 1;
                }
                buf[n] = b'0' + octet % 10;
                n += 1;
            }
            HeaderValue::from_bytes(&buf[..n]).expect("digits and dots are a valid header value")
        }
        IpAddr::V6(_) => {
            HeaderValue::try_from(ip.to_string()).expect("an IPv6 address is a valid header value")
        }
    }
}

/// The request target the upstream receives: the normalised path, minus the route prefix when
/// `strip_prefix` is on, plus the original query. `None` when the target is unchanged.
pub fn upstream_target(
    route: &Route,
    path: &str,
    query: Option<&str>,
    changed: bool,
) -> Option<String> {
    let strip = route.strip_prefix && route.prefix != "/";
    if !strip && !changed {
        return None;
    }
    let rest = if strip {
        &path[route.prefix.len().min(path.len())..]
    } else {
        path
    };
    let rest = if rest.is_empty() { "/" } else { rest };
    let mut t = String::with_capacity(rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    if !rest.starts_with('/') {
        t.push('/');
    }
    t.push_str(rest);
    if let Some(q) = query {
        t.push('?');
        t.push_str(q);
    }
    Some(t)
}

/// [`upstream_target`] for a request whose API key may sit in the query parameter
/// `key_param`: that parameter is never forwarded. `changed`: the path was rewritten.
pub fn forwarded_target(
    route: &Route,
    path: &str,
    query: Option<&str>,
    key_param: Option<&str>,
    changed: bool,
) -> Option<String> {
    match key_param {
        Some(k) => {
            let kept = query.and_then(|q| crate::auth::strip_query_param(q, k));
            upstream_target(route, path, kept.as_deref(), true)
        }
        None => upstream_target(route, path, query, changed),
    }
}

/// Set the upstream request's target, forwarding and identity headers. `tls`: the client
/// reached a TLS listener (`X-Forwarded-Proto: https`, whatever the client sent).
pub fn upstream_request(
    req: &mut RequestHeader,
    tls: bool,
    target: Option<&str>,
    peer_ip: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    request_id: &HeaderValue,
) -> Result<()> {
    if let Some(t) = target {
        let uri = Uri::try_from(t).map_err(|e| {
            pingora::Error::because(
                pingora::ErrorType::InvalidHTTPHeader,
                "rewriting the request target",
                e,
            )
        })?;
        req.set_uri(uri);
    }

    let peer_value = peer_ip.map(ip_value);
    if let Some(peer) = &peer_value {
        // Append the socket peer to whatever chain the client sent, as nginx's
        // $proxy_add_x_forwarded_for does; several header lines are folded into one.
        let xff = if req.headers.contains_key(&X_FORWARDED_FOR) {
            let mut xff = Vec::new();
            for v in req.headers.get_all(&X_FORWARDED_FOR) {
                if let Ok(s) = v.to_str() {
                    xff.extend_from_slice(s.trim().as_bytes());
                    xff.extend_from_slice(b", ");
                }
            }
            xff.extend_from_slice(peer.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(xff)).map_err(|e| {
                pingora::Error::because(
                    pingora::ErrorType::InvalidHTTPHeader,
                    "building X-Forwarded-For",
                    e,
                )
            })?
        } else {
            peer.clone()
        };
        req.insert_header(name::X_FORWARDED_FOR, xff)?;
    }
    if let Some(ip) = client_ip {
        let value = match &peer_value {
            Some(v) if peer_ip == Some(ip) => v.clone(),
            _ => ip_value(ip),
        };
        req.insert_header(name::X_REAL_IP, value)?;
    }
    let proto = if tls { &HTTPS } else { &HTTP };
    req.insert_header(name::X_FORWARDED_PROTO, proto.clone())?;
    if let Some(host) = req.headers.get(http::header::HOST).cloned() {
        req.insert_header(name::X_FORWARDED_HOST, host)?;
    } else {
        req.remove_header(&X_FORWARDED_HOST);
    }
    req.insert_header(name::X_REQUEST_ID, request_id.clone())?;
    Ok(())
}

/// Remove the upstream's hop-by-hop headers (except `Connection`, which Pingora rewrites, and
/// the framing headers it manages) and add the gateway's own.
pub fn downstream_response(
    resp: &mut ResponseHeader,
    request_id: &HeaderValue,
    route: Option<&Route>,
) -> Result<()> {
    if let Some(conn) = resp.headers.get(http::header::CONNECTION).cloned() {
        if let Ok(s) = conn.to_str() {
            const KEEP: [&str; 5] = [
                "close",
                "keep-alive",
                "upgrade",
                "transfer-encoding",
                "content-length",
            ];
            for token in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                // The usual `Connection: keep-alive` is compared in place, never lower-cased
                // into a new String.
                if !KEEP.iter().any(|k| token.eq_ignore_ascii_case(k)) {
                    resp.remove_header(token.to_ascii_lowercase().as_str());
                }
            }
        }
    }
    resp.remove_header(&KEEP_ALIVE);
    resp.remove_header(&PROXY_CONNECTION);
    if resp.status != http::StatusCode::SWITCHING_PROTOCOLS {
        resp.remove_header(&http::header::UPGRADE);
    }
    resp.insert_header(name::X_GATEWAY, crate::error::GATEWAY_NAME.clone())?;
    resp.insert_header(name::X_REQUEST_ID, request_id.clone())?;
    if let Some(route) = route {
        for (k, v) in &route.response_headers {
            resp.insert_header(k.clone(), v.clone())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::normalise_prefix;
    use std::sync::Arc;

    fn route(prefix: &str, strip: bool) -> Route {
        Route {
            id: 0,
            name: Arc::from("r"),
            host: None,
            prefix: normalise_prefix(prefix),
            methods: None,
            strip_prefix: strip,
            upstream: 0,
            response_headers: vec![],
            max_body: 0,
            ip_rules: None,
            cors: None,
            rate_limits: vec![],
            auth: None,
            websocket: None,
            compression: None,
        }
    }

    #[test]
    fn ip_values_match_display() {
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.100.9.199",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_value(ip).to_str().unwrap(), ip.to_string());
        }
    }

    #[test]
    fn targets() {
        let r = route("/private", true);
        assert_eq!(
            upstream_target(&r, "/private/data", Some("a=1"), false).unwrap(),
            "/data?a=1"
        );
        assert_eq!(upstream_target(&r, "/private", None, false).unwrap(), "/");
        assert_eq!(upstream_target(&r, "/private/", None, false).unwrap(), "/");
        assert_eq!(upstream_target(&route("/", true), "/x", None, false), None);
        assert_eq!(
            upstream_target(&route("/p", false), "/p/x", None, false),
            None
        );
        assert_eq!(
            upstream_target(&route("/p", false), "/p/x", Some("q"), true).unwrap(),
            "/p/x?q"
        );
    }
}
