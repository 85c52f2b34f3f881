//! Request shapes that two HTTP parsers could read differently are refused before routing.
//!
//! Pingora 0.9's parser already refuses most ambiguous framing (conflicting `Content-Length`,
//! signs and hex in it, unknown transfer codings, `Transfer-Encoding` on HTTP/1.0, bad chunk
//! sizes). What it lets through, and nginx refuses, is checked here: `Content-Length` together
//! with `Transfer-Encoding` (Pingora issue 945), repeated or list-valued `Content-Length`, a
//! `Transfer-Encoding` other than a single `chunked`, an HTTP/1.1 request without `Host`, and a
//! `Host` that is not a `host[:port]` (RFC 9112 §3.2: a server MUST answer such a request 400;
//! forwarded, `Host: gw/evil` reaches an upstream that may build URLs or route on it).

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::Version;
use pingora::http::RequestHeader;

use crate::error::Reject;

/// Why the request head is refused (400, and the connection is closed). `raw` is the head as
/// received: Pingora drops `Content-Length` from the parsed header when `Transfer-Encoding`
/// is present, so only the raw bytes still show the conflict.
pub fn check_framing(req: &RequestHeader, raw: Option<&[u8]>) -> Result<(), &'static str> {
    // One pass over the headers: each lookup by name would hash it.
    let (mut first_cl, mut cls, mut te, mut tes, mut host) = (None, 0, None, 0, None);
    for (name, v) in &req.headers {
        if name == CONTENT_LENGTH {
            first_cl = first_cl.or(Some(v));
            cls += 1;
        } else if name == TRANSFER_ENCODING {
            te = te.or(Some(v));
            tes += 1;
        } else if name == HOST {
            host = host.or(Some(v));
        }
    }
    if cls > 1 {
        return Err("more than one Content-Length header");
    }
    if let Some(v) = first_cl {
        if v.is_empty() || !v.as_bytes().iter().all(u8::is_ascii_digit) {
            return Err("Content-Length must be a single decimal number");
        }
    }
    if let Some(v) = te {
        if first_cl.is_some() || raw.is_some_and(|r| raw_has_header(r, b"content-length")) {
            return Err("Content-Length and Transfer-Encoding together are ambiguous");
        }
        if req.version != Version::HTTP_11 {
            return Err("Transfer-Encoding is only valid on HTTP/1.1");
        }
        if tes > 1 || !v.as_bytes().eq_ignore_ascii_case(b"chunked") {
            return Err("Transfer-Encoding must be exactly \"chunked\"");
        }
    }
    match host {
        Some(v) if !valid_host(v.as_bytes()) => {
            return Err("the Host header is not a valid host[:port]")
        }
        None if req.version == Version::HTTP_11 && req.uri.authority().is_none() => {
            return Err("an HTTP/1.1 request needs a Host header")
        }
        _ => {}
    }
    Ok(())
}

/// Whether `v` is a `Host` value: `uri-host [ ":" port ]` (RFC 9110 §7.2, RFC 3986 §3.2.2),
/// where the host is a bracketed IPv6 address or a name of unreserved and sub-delim
/// characters (an IPv4 address is such a name) and the port is digits.
///
/// Stricter than the grammar in two ways, as nginx is: the host may not be empty (an empty
/// `Host:` is for a target URI without an authority, and an `http` or `https` URI always has
/// one, RFC 9110 §4.2.1; nor is there anything to route on), and percent-encoding is refused
/// (`http::uri::Authority` refuses it too, and the router compares bytes, it does not decode).
/// Pingora has already refused userinfo (`@`) and a second `Host`; `@` is not a name
/// character here either.
///
/// Checked by hand rather than with `http::uri::Authority::try_from`: that copies the value
/// (an allocation on every request) and accepts userinfo, a port that is not a number, and
/// text before or after an IPv6 literal (`x[::1]`, `[::1]x`). What is accepted here is meant
/// to be a subset of what it accepts; the tests check that for every accepted shape they list.
fn valid_host(v: &[u8]) -> bool {
    let rest = if let Some(literal) = v.strip_prefix(b"[") {
        let Some(end) = literal.iter().position(|&b| b == b']') else {
            return false;
        };
        let ipv6 = std::str::from_utf8(&literal[..end])
            .is_ok_and(|s| s.parse::<std::net::Ipv6Addr>().is_ok());
        if !ipv6 {
            return false;
        }
        &literal[end + 1..]
    } else {
        let end = v.iter().position(|&b| b == b':').unwrap_or(v.len());
        let name = &v[..end];
        let name_char = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(b);
        if name.is_empty() || !name.iter().all(name_char) {
            return false;
        }
        &v[end..]
    };
    match rest {
        [] => true,
        // `*DIGIT`: an empty port is allowed by the grammar (RFC 3986 §3.2.3).
        [b':', port @ ..] => port.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Whether the raw request head has a header line named `name` (lower-case).
fn raw_has_header(raw: &[u8], name: &[u8]) -> bool {
    raw.split(|&b| b == b'\n').skip(1).any(|line| {
        line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()..]
                .iter()
                .find(|b| !matches!(b, b' ' | b'\t'))
                .is_some_and(|&b| b == b':')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/x", None).unwrap();
        r.set_version(version);
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn shapes() {
        let host = ("Host", "a");
        let ok = |h: &[(&str, &str)]| check_framing(&req(Version::HTTP_11, h), None);
        assert!(ok(&[host, ("Content-Length", "5")]).is_ok());
        assert!(ok(&[host, ("Transfer-Encoding", "Chunked")]).is_ok());
        assert!(ok(&[host, ("Content-Length", "5"), ("Content-Length", "5")]).is_err());
        assert!(ok(&[host, ("Content-Length", "5, 5")]).is_err());
        assert!(ok(&[host, ("Transfer-Encoding", "gzip, chunked")]).is_err());
        assert!(ok(&[
            host,
            ("Transfer-Encoding", "chunked"),
            ("Transfer-Encoding", "chunked")
        ])
        .is_err());
        assert!(
            ok(&[("Content-Length", "0")]).is_err(),
            "HTTP/1.1 without Host"
        );
        let r10 = req(Version::HTTP_10, &[("Transfer-Encoding", "chunked")]);
        assert!(check_framing(&r10, None).is_err());
        let te = req(Version::HTTP_11, &[host, ("Transfer-Encoding", "chunked")]);
        let raw = b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length : 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check_framing(&te, Some(raw)).is_err());
        let raw_ok = b"POST /x HTTP/1.1\r\nHost: a\r\nX-Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(check_framing(&te, Some(raw_ok)).is_ok());
    }

    /// Host values a client sends are accepted; anything that is not a `host[:port]` is
    /// refused with a message that says so.
    #[test]
    fn host_values() {
        let accepted = [
            "example.com",
            "Example.COM",
            "example.com.",
            "example.com:8080",
            "example.com:",
            "gw",
            "my_host-1.internal",
            "127.0.0.1",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::1]:443",
            "[::ffff:192.0.2.1]:80",
        ];
        for v in accepted {
            let r = req(Version::HTTP_11, &[("Host", v)]);
            assert_eq!(check_framing(&r, None), Ok(()), "{v:?}");
            // Never wider than `http`'s own authority parse, which Pingora uses elsewhere.
            assert!(http::uri::Authority::try_from(v).is_ok(), "{v:?}");
        }
        let refused = [
            ("empty", ""),
            ("a path", "gw/evil"),
            ("a path after the port", "gw:80/x"),
            ("a query", "gw?x=1"),
            ("a fragment", "gw#x"),
            ("userinfo", "a@b"),
            ("userinfo with a password", "user:pw@b"),
            ("a space inside", "ex ample.com"),
            ("a tab inside", "ex\tample.com"),
            ("a port that is not a number", "example.com:http"),
            ("two ports", "example.com:80:81"),
            ("only a port", ":8080"),
            ("a bare IPv6 address", "::1"),
            ("an unclosed IPv6 literal", "[::1"),
            ("not an IPv6 address in brackets", "[example.com]"),
            ("text after an IPv6 literal", "[::1]x"),
            ("text before an IPv6 literal", "x[::1]"),
            ("a zone in an IPv6 literal", "[fe80::1%25eth0]"),
            ("percent-encoding", "ex%61mple.com"),
            ("a backslash", "gw\\evil"),
            ("a quote", "gw\"x"),
            ("non-ASCII", "b\u{fc}cher.example"),
        ];
        for (what, v) in refused {
            let r = req(Version::HTTP_11, &[("Host", v)]);
            assert_eq!(
                check_framing(&r, None),
                Err("the Host header is not a valid host[:port]"),
                "{what}: {v:?}"
            );
        }
        // HTTP/1.0 may leave Host out, but one it sends is held to the same rule.
        assert!(check_framing(&req(Version::HTTP_10, &[]), None).is_ok());
        let r10 = req(Version::HTTP_10, &[("Host", "gw/evil")]);
        assert!(check_framing(&r10, None).is_err());
    }
}

/// What a client may send before tollgate refuses it. Defaults follow nginx's and Envoy's
/// edge guidance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_uri_bytes: usize,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// The default for routes that do not set `max_body`.
    pub max_body: u64,
    pub body_idle_timeout: std::time::Duration,
    pub keepalive_timeout: std::time::Duration,
    /// Total time from the first byte of a request head to its end (slowloris guard).
    pub head_timeout: std::time::Duration,
    /// Longest a write of the response may wait on a client that takes none of it (nginx's
    /// `send_timeout`): a client that stops reading does not hold its connection, its
    /// upstream connection and the response's buffers for ever.
    pub send_timeout: std::time::Duration,
    pub max_connections_per_ip: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            max_body: 10 * 1024 * 1024,
            body_idle_timeout: std::time::Duration::from_secs(30),
            keepalive_timeout: std::time::Duration::from_secs(60),
            head_timeout: std::time::Duration::from_secs(10),
            send_timeout: std::time::Duration::from_secs(60),
            max_connections_per_ip: None,
        }
    }
}

/// A limit the request head broke: 414 or 431.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadTooLarge {
    Uri,
    Headers,
}

impl Limits {
    pub fn check_head(&self, req: &RequestHeader) -> Result<(), (HeadTooLarge, &'static str)> {
        if req.raw_path().len() > self.max_uri_bytes {
            return Err((
                HeadTooLarge::Uri,
                "the request target is longer than the gateway accepts",
            ));
        }
        if req.headers.len() > self.max_headers {
            return Err((
                HeadTooLarge::Headers,
                "the request has more headers than the gateway accepts",
            ));
        }
        let bytes: usize = req
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum();
        if bytes > self.max_header_bytes {
            return Err((
                HeadTooLarge::Headers,
                "the request headers are larger than the gateway accepts",
            ));
        }
        Ok(())
    }
}

/// The checks of a request head before anything reads it, in order: ambiguous framing
/// ([`check_framing`], 400), then the size limits ([`Limits::check_head`], 414 or 431).
/// `raw_head` gives the head's bytes as received, asked for only when framing needs them.
pub fn check_request(
    req: &RequestHeader,
    raw_head: impl FnOnce() -> Option<bytes::Bytes>,
    limits: &Limits,
) -> Result<(), (Reject, &'static str)> {
    let raw = req
        .headers
        .contains_key(TRANSFER_ENCODING)
        .then(raw_head)
        .flatten();
    check_framing(req, raw.as_deref()).map_err(|why| (Reject::BadRequest, why))?;
    limits.check_head(req).map_err(|(kind, why)| {
        let reject = match kind {
            HeadTooLarge::Uri => Reject::UriTooLong,
            HeadTooLarge::Headers => Reject::HeadersTooLarge,
        };
        (reject, why)
    })
}

/// The body length the client declared, if any.
pub fn declared_body(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// A route's `ip_allow` / `ip_deny`: deny wins; a non-empty allow list admits only its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    pub allow: Vec<ipnet::IpNet>,
    pub deny: Vec<ipnet::IpNet>,
}

impl IpRules {
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = crate::client::canonical(ip);
        !self.deny.iter().any(|n| n.contains(&ip))
            && (self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip)))
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    #[test]
    fn ip_rules() {
        let r = IpRules {
            allow: vec!["10.0.0.0/8".parse().unwrap()],
            deny: vec!["10.0.0.66/32".parse().unwrap()],
        };
        assert!(r.admits("10.1.2.3".parse().unwrap()));
        assert!(r.admits("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.admits("10.0.0.66".parse().unwrap()));
        assert!(!r.admits("192.0.2.1".parse().unwrap()));
        assert!(IpRules::default().admits("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn head_limits() {
        let l = Limits {
            max_headers: 2,
            max_uri_bytes: 10,
            ..Limits::default()
        };
        let mut r = RequestHeader::build("GET", b"/0123456789", None).unwrap();
        assert_eq!(l.check_head(&r).unwrap_err().0, HeadTooLarge::Uri);
        r.set_uri(http::Uri::from_static("/x"));
        for h in ["a", "b", "c"] {
            r.append_header(h, "1").unwrap();
        }
        assert_eq!(l.check_head(&r).unwrap_err().0, HeadTooLarge::Headers);
    }
}
