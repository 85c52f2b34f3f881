//! tollgate's own HTTP/1 engine: a server codec for the client's side and a client with a
//! per-thread pool for the backend's ([`h1`]), and the one rule for what it carries
//! ([`carries`]).
//!
//! Why: Pingora's HTTP/1 session and its upstream leg are most of what a plain request costs
//! it. The engine takes the common case only: a plain request (no body, an origin-form
//! target, one `Host` or HTTP/2 `:authority`, no upgrade, no `Expect`, no gRPC, a
//! `Connection` header about this connection only) routed to a plaintext HTTP/1 upstream.
//! Everything else (a request body, upgrades, gRPC, TLS or h2 upstreams) keeps Pingora's
//! path, whose rules for it are not repeated here. An HTTP/2 client is always read by
//! Pingora's session; the engine is then the upstream leg only. The request's steps are the proxy's either way
//! (`crate::proxy`): the engine only reads and writes the bytes.

use http::header;
use pingora::http::RequestHeader;

use crate::upstream::protocol::Protocol;
use crate::upstream::Upstream;

pub mod h1;

/// Whether the own engine carries `req` to `up`: the request is [`plain`] and the upstream
/// [`relays_to`]. Both engines ask this one question: the server codec before it takes a
/// request from a connection, the proxy before it relays one Pingora's session read.
pub fn carries(req: &RequestHeader, up: &Upstream) -> bool {
    relays_to(up) && plain(req)
}

/// Whether the own engine carries `req` to `up` on a route: never on one with a `cache`
/// (`caches`), whose requests take Pingora's cache path; else [`carries`]. The one rule both
/// the server codec and the proxy ask for a routed request.
pub fn carries_on(req: &RequestHeader, up: &Upstream, caches: bool) -> bool {
    !caches && carries(req, up)
}

/// Whether the engine's client can relay to this upstream: plaintext HTTP/1.
pub fn relays_to(up: &Upstream) -> bool {
    up.tls.is_none() && up.protocol == Protocol::Http1
}

/// Whether the request is one the engine carries wherever it is routed: not CONNECT, no body,
/// no upgrade, not gRPC, an origin-form target and one `Host`, a `Connection` header about
/// this connection only.
pub fn plain(req: &RequestHeader) -> bool {
    // CONNECT changes the framing of what follows (RFC 9112 §6.3): Pingora refuses it (405).
    if req.method == http::Method::CONNECT || req.raw_path().first() != Some(&b'/') {
        return false;
    }
    // One pass over the headers: each lookup by name would hash it.
    let (mut hosts, mut typed) = (0, false);
    for (name, v) in &req.headers {
        let v = v.as_bytes();
        let fine = if name == header::HOST {
            hosts += 1;
            true
        } else if name == header::CONTENT_LENGTH {
            v.trim_ascii() == b"0"
        } else if name == header::CONNECTION {
            crate::headers::tokens(v)
                .all(|t| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close"))
        } else if name == header::CONTENT_TYPE {
            // The first one is the type (`HeaderMap::get`, as `crate::grpc::is_grpc` reads it).
            let first = !std::mem::replace(&mut typed, true);
            !(first && crate::grpc::is_grpc_type(v))
        } else {
            name != header::TRANSFER_ENCODING && name != header::UPGRADE && name != header::EXPECT
        };
        if !fine {
            return false;
        }
    }
    one_host(req, hosts)
}

/// Whose host the request names, once (`hosts`: how many `Host` headers it has): an HTTP/1
/// request's one `Host`; an HTTP/2 request's `:authority` (without userinfo), with no `Host`
/// beside it, which the upstream request gets as its `Host` ([`h2_host`]).
fn one_host(req: &RequestHeader, hosts: usize) -> bool {
    match req.version {
        http::Version::HTTP_11 | http::Version::HTTP_10 => hosts == 1,
        http::Version::HTTP_2 => hosts == 0 && h2_host(req).is_some(),
        _ => false,
    }
}

/// The `Host` an HTTP/2 request's `:authority` makes for an HTTP/1 upstream (as Pingora's
/// proxy sets it), if it has one without userinfo.
pub fn h2_host(req: &RequestHeader) -> Option<http::HeaderValue> {
    let authority = req.uri.authority()?.as_str();
    if authority.contains('@') {
        return None;
    }
    http::HeaderValue::from_str(authority).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::Upstream;

    fn req(extra: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/x?y=1", None).unwrap();
        r.insert_header("host", "example.com").unwrap();
        for (k, v) in extra {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    fn upstream() -> Upstream {
        let spec = crate::upstream::Spec {
            targets: vec![("127.0.0.1:1".parse().unwrap(), 1)],
            ..Default::default()
        };
        Upstream::new("u", spec)
    }

    /// [`plain`] as it was written with a lookup per name, the reference of its one pass.
    fn plain_by_lookups(req: &RequestHeader) -> bool {
        let h = &req.headers;
        let hosts = h.get_all(header::HOST).iter().count();
        req.method != http::Method::CONNECT
            && one_host(req, hosts)
            && req.raw_path().first() == Some(&b'/')
            && !h.contains_key(header::TRANSFER_ENCODING)
            && !h.contains_key(header::UPGRADE)
            && !h.contains_key(header::EXPECT)
            && h.get_all(header::CONTENT_LENGTH)
                .iter()
                .all(|v| v.as_bytes().trim_ascii() == b"0")
            && h.get_all(header::CONNECTION).iter().all(|v| {
                crate::headers::tokens(v.as_bytes()).all(|t| {
                    t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
                })
            })
            && !crate::grpc::is_grpc(req)
    }

    /// Every pair of these headers, in either order, is judged as the lookups judge it.
    #[test]
    fn one_pass_judges_as_lookups_do() {
        let fields = [
            ("host", "b.example"),
            ("content-length", "0"),
            ("content-length", "3"),
            ("connection", "keep-alive"),
            ("connection", "close, x-y"),
            ("content-type", "application/grpc"),
            ("content-type", "text/plain"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("expect", "100-continue"),
            ("x-other", "1"),
        ];
        let mut judged = 0;
        for a in fields {
            for b in fields {
                for with_host in [true, false] {
                    let mut r = RequestHeader::build("GET", b"/x", None).unwrap();
                    if with_host {
                        r.append_header("host", "example.com").unwrap();
                    }
                    r.append_header(a.0, a.1).unwrap();
                    r.append_header(b.0, b.1).unwrap();
                    assert_eq!(plain(&r), plain_by_lookups(&r), "{a:?} {b:?} {with_host}");
                    judged += usize::from(plain(&r));
                }
            }
        }
        assert!(judged > 10, "some of them are plain");
    }

    #[test]
    fn only_plain_requests_are_carried() {
        let up = upstream();
        assert!(carries(&req(&[]), &up));
        assert!(carries(&req(&[("connection", "Keep-Alive")]), &up));
        assert!(carries(&req(&[("content-length", "0")]), &up));
        for (k, v) in [
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("connection", "close, x-secret"),
            ("host", "other.example"),
        ] {
            assert!(!carries(&req(&[(k, v)]), &up), "{k}: {v}");
        }
        let absolute = RequestHeader::build("GET", b"http://a.example/x", None).unwrap();
        assert!(!carries(&absolute, &up));
        let mut connect = RequestHeader::build("CONNECT", b"/x", None).unwrap();
        connect.insert_header("host", "example.com").unwrap();
        assert!(!carries(&connect, &up), "CONNECT with a path");
        let grpc = req(&[("content-type", "application/grpc")]);
        assert!(!carries(&grpc, &up));
    }
}
