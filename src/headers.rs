//! The headers tollgate sets on the way up and on the way down.
//!
//! Upstream: the path the route resolved to, `X-Forwarded-*`, `X-Real-IP`, `X-Request-Id`.
//! Downstream: the gateway's own are `crate::policy::stamp`'s. The hop-by-hop headers of both
//! directions are one list (`hop`), the gateway's own header names another (`names`).

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, Uri};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;

mod edit;
mod hop;
mod ip;
pub mod names;

pub use edit::{Edit, Overlay};
pub use hop::{is_hop_by_hop, remove_hop_by_hop, InResponse, HOP_BY_HOP};
pub use ip::{ip_value, ipv4_text};
use names::{X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO, X_REAL_IP, X_REQUEST_ID};

/// `name: value\r\n`, the value written in place by `value`. The gateway's names go out in
/// lower case, as Pingora writes a name it has no case for.
pub fn line(out: &mut Vec<u8>, name: &str, value: impl FnOnce(&mut Vec<u8>)) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    value(out);
    out.extend_from_slice(b"\r\n");
}

static HTTP: HeaderValue = HeaderValue::from_static("http");
static HTTPS: HeaderValue = HeaderValue::from_static("https");

/// Room made in a head's map before tollgate adds its headers (five forwarding ones and the
/// consumer up; gateway, RateLimit and a route header or two down): Pingora sizes the map for
/// the headers it parsed, so without it the map grows, and rehashes, once or twice per head.
/// tollgate's own HTTP/1 client sizes its response heads with it from the start.
pub(crate) const HEADROOM: usize = 8;

/// Edit a request head's headers as a plain `HeaderMap`, and hand the head back to Pingora
/// without its header-case map.
///
/// Why: Pingora's heads keep, beside the `HeaderMap`, a second map with each name's original
/// case, and its `insert_header` parses the name again (allocating for any non-standard one,
/// twice) and writes both maps, for each of the dozen headers tollgate sets. Without the
/// case map, HTTP/1 names go out as Pingora writes them itself: standard ones in their usual
/// Title-Case, others in lower case, as HAProxy and Envoy send them (field names are
/// case-insensitive, RFC 9110 section 5.1). A request target that does not round-trip through
/// the URI (absolute form, CONNECT) is kept, and so is HTTP/2's end-of-stream flag.
pub fn edit_request(
    req: &mut RequestHeader,
    edit: impl FnOnce(&mut HeaderMap) -> Result<()>,
) -> Result<()> {
    let from_uri = req.uri.path_and_query().map(|p| p.as_str().as_bytes());
    let raw = req.raw_path();
    let verbatim = (!raw.is_empty() && Some(raw) != from_uri).then(|| raw.to_vec());
    let end_stream = req.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts = http::request::Parts::from(std::mem::replace(req, placeholder));
    parts.headers.reserve(HEADROOM);
    let out = edit(&mut parts.headers);
    *req = RequestHeader::from(parts);
    if let Some(raw) = verbatim {
        req.set_raw_path(&raw)?;
    }
    if let Some(end) = end_stream {
        req.set_send_end_stream(end);
    }
    out
}

/// [`edit_request`] for a response head: its headers as a plain `HeaderMap` (with its status,
/// read-only), handed back without the header-case map. A reason phrase other than the
/// status's usual one is kept.
pub fn edit_response(
    resp: &mut ResponseHeader,
    edit: impl FnOnce(&mut HeaderMap, http::StatusCode),
) -> Result<()> {
    let usual = resp.status.canonical_reason();
    let reason = resp
        .get_reason_phrase()
        .filter(|r| Some(*r) != usual)
        .map(str::to_owned);
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts = http::response::Parts::from(std::mem::replace(resp, placeholder));
    parts.headers.reserve(HEADROOM);
    edit(&mut parts.headers, parts.status);
    *resp = ResponseHeader::from(parts);
    if reason.is_some() {
        resp.set_reason_phrase(reason.as_deref())?;
    }
    Ok(())
}

/// Point the upstream request at `target` (see `Route::forwarded_target`); `None` leaves it.
///
/// Only the path and query change: a URI that carries a scheme and authority (an HTTP/2
/// client's `:scheme` and `:authority`, an HTTP/1.1 absolute-form target) keeps them, as an
/// unrewritten request would. An HTTP/2 upstream request needs that authority when the client
/// sent no `Host` (Pingora's `proxy_h2` refuses it otherwise: "no authority for H2 upstream
/// request"); an HTTP/1 upstream request is written from the path and gets `Host` from it.
pub fn set_target(req: &mut RequestHeader, target: Option<&str>) -> Result<()> {
    let Some(t) = target else {
        return Ok(());
    };
    let uri = match (req.uri.scheme(), req.uri.authority()) {
        (Some(scheme), Some(authority)) => {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(scheme.clone());
            parts.authority = Some(authority.clone());
            parts.path_and_query = Some(t.try_into().map_err(bad_target)?);
            Uri::from_parts(parts).map_err(bad_target)?
        }
        _ => Uri::try_from(t).map_err(bad_target)?,
    };
    req.set_uri(uri);
    Ok(())
}

/// `target`, if it is one [`set_target`] takes (a request line is written from it): a path
/// from `/` and an optional query, of the bytes `http`'s URI parser accepts there, no
/// fragment. The same test as that parser's, without the copy it makes.
pub fn checked_target(target: &str) -> Result<&str> {
    // Bit 1: allowed in the path; bit 2: in the query (`?` ends the path).
    const CLASSES: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut c = 0;
        while c < 256 {
            let b = c as u8;
            let path = matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E)
                || matches!(b, b'"' | b'{' | b'}' | 0x80..);
            let query = matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E | 0x80..) && b != b'#';
            t[c] = path as u8 | (query as u8) << 1;
            c += 1;
        }
        t
    };
    let b = target.as_bytes();
    let mut need = 1;
    let mut valid = b.first() == Some(&b'/') && b.len() < usize::from(u16::MAX);
    for &c in b {
        if c == b'?' {
            need = 2;
        }
        valid &= CLASSES[usize::from(c)] & need != 0;
    }
    if !valid {
        return Err(pingora::Error::explain(
            pingora::ErrorType::InvalidHTTPHeader,
            "rewriting the request target: not a path and query",
        ));
    }
    Ok(target)
}

fn bad_target(e: impl std::error::Error + Send + Sync + 'static) -> Box<pingora::Error> {
    pingora::Error::because(
        pingora::ErrorType::InvalidHTTPHeader,
        "rewriting the request target",
        e,
    )
}

/// Set the forwarding headers of an upstream request. `tls`: the client reached a TLS
/// listener (`X-Forwarded-Proto: https`, whatever the client sent). Returns the client
/// address as a header value (X-Real-IP's), for whatever else names it.
pub fn forwarding<'n>(
    h: &mut impl Edit<'n>,
    tls: bool,
    peer_ip: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    request_id: &HeaderValue,
) -> Result<Option<HeaderValue>> {
    let peer_value = peer_ip.map(ip_value);
    if let Some(peer) = &peer_value {
        // Append the socket peer to whatever chain the client sent, as nginx's
        // $proxy_add_x_forwarded_for does; several header lines are folded into one.
        let mut sent = h.get_all(&X_FORWARDED_FOR).peekable();
        let xff = if sent.peek().is_some() {
            let mut xff = Vec::new();
            for v in sent {
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
        h.insert(&X_FORWARDED_FOR, xff);
    }
    let real_ip = client_ip.map(|ip| match &peer_value {
        Some(v) if peer_ip == Some(ip) => v.clone(),
        _ => ip_value(ip),
    });
    if let Some(value) = &real_ip {
        h.insert(&X_REAL_IP, value.clone());
    }
    let proto = if tls { &HTTPS } else { &HTTP };
    h.insert(&X_FORWARDED_PROTO, proto.clone());
    match h.get(&http::header::HOST).cloned() {
        Some(host) => h.insert(&X_FORWARDED_HOST, host),
        None => h.remove(&X_FORWARDED_HOST),
    }
    h.insert(&X_REQUEST_ID, request_id.clone());
    Ok(real_ip)
}

/// Join an HTTP/2 request's `cookie` fields into one, separated by `"; "`, before it goes
/// out as HTTP/1 (RFC 9113 section 8.2.3: HTTP/2 clients send each cookie as its own field,
/// an HTTP/1 server expects a single `Cookie` header, RFC 6265 section 5.4).
pub fn join_cookie_crumbs<'n>(h: &mut impl Edit<'n>) -> Result<()> {
    if h.get_all(&http::header::COOKIE).nth(1).is_none() {
        return Ok(());
    }
    let mut joined = Vec::new();
    for (i, c) in h.get_all(&http::header::COOKIE).enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(c.as_bytes());
    }
    let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)).map_err(|e| {
        pingora::Error::because(
            pingora::ErrorType::InvalidHTTPHeader,
            "joining the cookie fields",
            e,
        )
    })?;
    h.insert(&http::header::COOKIE, value);
    Ok(())
}

/// The `name=value` pairs of a request's `Cookie` header(s) (RFC 6265 §5.4), trimmed; a
/// piece without `=` is not a pair.
pub fn cookies(h: &HeaderMap) -> impl Iterator<Item = (&[u8], &[u8])> {
    h.get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
        .filter_map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((pair[..eq].trim_ascii(), pair[eq + 1..].trim_ascii()))
        })
}

/// Whether `name` can be a cookie's name (an RFC 6265 token: no controls, spaces or
/// separators).
pub fn valid_cookie_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .bytes()
            .any(|b| b <= b' ' || b >= 0x7f || b"()<>@,;:\\\"/[]?={}".contains(&b))
}

/// The comma-separated tokens of a header value (`Connection`, `Transfer-Encoding`), trimmed.
pub fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
}

/// Whether a `Transfer-Encoding` value's final coding is `chunked` (what frames the body), as
/// Pingora's sessions read it: the last item of the list, even an empty one (`chunked,` ends
/// with no coding, so the body is not chunked).
pub fn ends_chunked(value: &[u8]) -> bool {
    let last = value.rsplit(|&b| b == b',').next().unwrap_or(value);
    last.trim_ascii().eq_ignore_ascii_case(b"chunked")
}

/// A `Content-Length` value: digits only, at most 18 of them (no sign, no list, no overflow).
/// `Content-Length` forwarded in its canonical form, without leading zeros (`05` reaches the
/// upstream as `5`, as through nginx): a backend that reads `05` another way cannot disagree
/// with the gateway on where the body ends. Admission has made sure it is plain digits.
pub fn canonical_length(req: &mut RequestHeader) -> pingora::Result<()> {
    let padded = req
        .headers
        .get(http::header::CONTENT_LENGTH)
        .map(|v| v.as_bytes())
        .filter(|v| v.len() > 1 && v[0] == b'0');
    if let Some(n) = padded.and_then(parse_length) {
        req.insert_header(http::header::CONTENT_LENGTH, n)?;
    }
    Ok(())
}

pub fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// A message's framing length from its `Content-Length` values (each line, each item of a
/// list), as Pingora's sessions reconcile them (RFC 9110 §8.6): all plain decimal numbers
/// within `u64` and `usize`, and the same. `Ok(None)` for no value; `Err` says why the values
/// frame nothing.
pub fn framing_length<'v>(
    values: impl Iterator<Item = &'v [u8]>,
) -> Result<Option<u64>, &'static str> {
    let mut values = values.peekable();
    // The usual single value of at most 19 plain digits: no split, no overflow check.
    if let Some(v) =
        values.next_if(|v| (1..=19).contains(&v.len()) && v.iter().all(u8::is_ascii_digit))
    {
        if values.peek().is_none() {
            let n = v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if usize::try_from(n).is_ok() {
                return Ok(Some(n));
            }
            return Err("a Content-Length is too large");
        }
        return framing_length_of(std::iter::once(v).chain(values));
    }
    framing_length_of(values)
}

fn framing_length_of<'v>(
    values: impl Iterator<Item = &'v [u8]>,
) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for item in values.flat_map(|v| v.split(|&b| b == b',')) {
        let item = item.trim_ascii();
        if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
            return Err("a Content-Length is not a decimal number");
        }
        let n = item
            .iter()
            .try_fold(0u64, |n, d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .filter(|&n| usize::try_from(n).is_ok())
            .ok_or("a Content-Length is too large")?;
        if length.is_some_and(|l| l != n) {
            return Err("the Content-Length values disagree");
        }
        length = Some(n);
    }
    Ok(length)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::stamp::Stamp;

    #[test]
    fn checked_targets_are_those_the_uri_parser_takes() {
        let chars = (0u8..0x80).map(char::from).chain(['é', '€']);
        for c in chars.filter(|&c| c != '#') {
            for t in [format!("/a{c}b"), format!("/a?x={c}"), format!("/a?{c}")] {
                let parsed = t.parse::<http::uri::PathAndQuery>().is_ok();
                assert_eq!(checked_target(&t).is_ok(), parsed, "{t:?}");
                // set_target must take what the relay writes.
                let mut req = RequestHeader::build("GET", b"/", None).unwrap();
                assert_eq!(set_target(&mut req, Some(&t)).is_ok(), parsed, "{t:?}");
            }
        }
        for t in ["", "a", "*", "?q", "/a#f", "/a?b#f"] {
            assert!(checked_target(t).is_err(), "{t:?}");
        }
    }

    #[test]
    fn a_rewritten_target_keeps_the_scheme_and_authority() {
        let mut h2 = RequestHeader::build("POST", b"/pfx/pkg.Svc/Call", None).unwrap();
        h2.set_uri(Uri::from_static("http://gw:8080/pfx/pkg.Svc/Call"));
        set_target(&mut h2, Some("/pkg.Svc/Call?a=1")).unwrap();
        assert_eq!(h2.uri, "http://gw:8080/pkg.Svc/Call?a=1");
        assert_eq!(h2.raw_path(), b"/pkg.Svc/Call?a=1");
        let mut h1 = RequestHeader::build("GET", b"/pfx/x", None).unwrap();
        set_target(&mut h1, Some("/x")).unwrap();
        assert_eq!(h1.uri, "/x");
        assert!(set_target(&mut h2, Some("/bad path")).is_err());
    }

    #[test]
    fn cookie_crumbs_become_one_field() {
        let mut h = HeaderMap::new();
        join_cookie_crumbs(&mut h).unwrap();
        assert!(h.is_empty());
        h.append("cookie", HeaderValue::from_static("a=1"));
        join_cookie_crumbs(&mut h).unwrap();
        assert_eq!(h["cookie"], "a=1");
        h.append("cookie", HeaderValue::from_static("b=2; c=3"));
        h.append("cookie", HeaderValue::from_static("d=4"));
        join_cookie_crumbs(&mut h).unwrap();
        let all: Vec<_> = h.get_all("cookie").iter().collect();
        assert_eq!(all, ["a=1; b=2; c=3; d=4"]);
    }

    /// A head as Pingora's HTTP/1 reader leaves it: parsed with the case of every name kept.
    fn wire_request(target: &[u8]) -> RequestHeader {
        let mut req = RequestHeader::build("GET", target, None).unwrap();
        req.insert_header("Host", "a.test").unwrap();
        req.insert_header("X-Custom-Thing", "1").unwrap();
        req
    }

    fn wire(req: &RequestHeader) -> String {
        let mut buf = Vec::new();
        req.header_to_h1_wire(&mut buf);
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn edited_requests_keep_every_header_and_lose_only_the_name_case() {
        let mut req = wire_request(b"/p?q=1");
        assert!(req.has_case());
        edit_request(&mut req, |h| {
            h.insert(&X_REAL_IP, HeaderValue::from_static("10.0.0.1"));
            Ok(())
        })
        .unwrap();
        assert!(!req.has_case());
        assert_eq!(req.raw_path(), b"/p?q=1");
        assert_eq!(req.method, http::Method::GET);
        assert_eq!(
            wire(&req),
            "Host: a.test\r\nx-custom-thing: 1\r\nx-real-ip: 10.0.0.1\r\n"
        );
    }

    #[test]
    fn edited_requests_keep_a_target_the_uri_cannot_carry() {
        let mut req = wire_request(b"http://a.test/p?q=1");
        edit_request(&mut req, |_| Ok(())).unwrap();
        assert_eq!(req.raw_path(), b"http://a.test/p?q=1");
    }

    #[test]
    fn an_error_while_editing_still_gives_the_head_back() {
        let mut req = wire_request(b"/p");
        let r: Result<()> = edit_request(&mut req, |h| {
            h.insert(&X_REAL_IP, HeaderValue::from_static("10.0.0.1"));
            pingora::Error::e_explain(pingora::ErrorType::InternalError, "no")
        });
        assert!(r.is_err());
        assert_eq!(req.raw_path(), b"/p");
        assert_eq!(req.headers.len(), 3);
    }

    #[test]
    fn edited_responses_keep_status_and_an_unusual_reason_phrase() {
        let mut resp = ResponseHeader::build(299, None).unwrap();
        resp.set_reason_phrase(Some("Fine Really")).unwrap();
        resp.insert_header("Content-Type", "text/plain").unwrap();
        let mut seen = None;
        edit_response(&mut resp, |h, status| {
            remove_hop_by_hop(h, status);
            Stamp::new(&HeaderValue::from_static("id1"), None, None).insert(h);
            seen = Some(status);
        })
        .unwrap();
        let seen = seen.unwrap();
        assert_eq!(seen.as_u16(), 299);
        assert_eq!(resp.status.as_u16(), 299);
        assert_eq!(resp.get_reason_phrase(), Some("Fine Really"));
        assert_eq!(resp.headers["x-gateway"], "tollgate");
        assert_eq!(resp.headers["x-request-id"], "id1");
        assert_eq!(resp.headers["content-type"], "text/plain");
        assert!(!resp.has_case());
    }
}
