//! Which HTTP version tollgate speaks to an upstream (`protocol`, `max_h2_streams`).
//!
//! gRPC backends speak only HTTP/2, and often without TLS (h2c). Pingora 0.9 reaches such a
//! backend with prior knowledge when the peer's ALPN is `H2` (minimum version 2) and the peer
//! is not TLS: `pingora_core::connectors::http::Connector::get_http_session` then skips the
//! HTTP/1 pool, and `pingora_core::connectors::http::v2::Connector::new_http_session` starts
//! the HTTP/2 handshake on the plain TCP stream ("we trust the caller that the server speaks
//! h2c"). On a TLS peer the same ALPN offers only `h2`.
//!
//! Pingora opens one HTTP/2 connection per concurrent request unless told otherwise: its peers
//! default to `max_h2_streams: 1` (`pingora_core::upstreams::peer::PeerOptions::new`). tollgate
//! raises that to [`DEFAULT_MAX_H2_STREAMS`], so concurrent requests share a connection as
//! HTTP/2 intends; the backend's own `SETTINGS_MAX_CONCURRENT_STREAMS` still caps it
//! (`pingora_core::connectors::http::v2::ConnectionRef::more_streams_allowed`).

use pingora::protocols::ALPN;
use pingora::upstreams::peer::PeerOptions;

use crate::config::ConfigErrors;

/// Concurrent streams per upstream HTTP/2 connection when `max_h2_streams` is not set: the
/// value HTTP/2 servers commonly advertise (RFC 9113 recommends at least 100).
pub const DEFAULT_MAX_H2_STREAMS: u32 = 100;

/// The HTTP version tollgate speaks to an upstream's backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    #[default]
    Http1,
    /// HTTP/2 only: prior knowledge (h2c) on a cleartext backend, ALPN `h2` on TLS, with up
    /// to `max_streams` concurrent requests on one connection.
    H2 { max_streams: usize },
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2 { .. } => "h2",
        }
    }

    /// Set the peer's ALPN and stream limit (nothing for HTTP/1.1, Pingora's default).
    pub fn apply(self, o: &mut PeerOptions) {
        if let Protocol::H2 { max_streams } = self {
            o.alpn = ALPN::H2;
            o.max_h2_streams = max_streams;
        }
    }
}

/// Compile `protocol` and `max_h2_streams` of the upstream at `base`.
pub fn compile(
    base: &str,
    protocol: Option<&str>,
    max_h2_streams: Option<u32>,
    errs: &mut ConfigErrors,
) -> Protocol {
    let h2 = match protocol {
        None | Some("http1") => false,
        Some("h2") => true,
        Some(other) => {
            let hint = if other.eq_ignore_ascii_case("h2c") {
                " (write h2: on a cleartext backend that is HTTP/2 with prior knowledge, h2c)"
            } else {
                ""
            };
            errs.push(
                format!("{base}.protocol"),
                format!("unknown protocol {other:?} (one of: http1, h2){hint}"),
            );
            false
        }
    };
    match max_h2_streams {
        Some(_) if !h2 => {
            errs.push(
                format!("{base}.max_h2_streams"),
                "only applies to protocol: h2",
            );
            Protocol::Http1
        }
        Some(n) if n == 0 || n > 1000 => {
            errs.push(
                format!("{base}.max_h2_streams"),
                format!("must be between 1 and 1000 (default {DEFAULT_MAX_H2_STREAMS})"),
            );
            Protocol::Http1
        }
        n if h2 => Protocol::H2 {
            max_streams: n.unwrap_or(DEFAULT_MAX_H2_STREAMS) as usize,
        },
        _ => Protocol::Http1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compiled(p: Option<&str>, n: Option<u32>) -> (Protocol, Vec<String>) {
        let mut errs = ConfigErrors::default();
        let proto = compile("upstreams.u", p, n, &mut errs);
        (proto, errs.0.iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn protocols() {
        assert_eq!(compiled(None, None).0, Protocol::Http1);
        assert_eq!(compiled(Some("http1"), None).0, Protocol::Http1);
        assert_eq!(
            compiled(Some("h2"), None).0,
            Protocol::H2 { max_streams: 100 }
        );
        assert_eq!(
            compiled(Some("h2"), Some(8)).0,
            Protocol::H2 { max_streams: 8 }
        );
        let (_, e) = compiled(Some("h2c"), None);
        assert!(
            e[0].contains("upstreams.u.protocol") && e[0].contains("write h2"),
            "{e:?}"
        );
        let (_, e) = compiled(None, Some(10));
        assert!(e[0].contains("upstreams.u.max_h2_streams"), "{e:?}");
        let (_, e) = compiled(Some("h2"), Some(0));
        assert!(e[0].contains("between 1 and 1000"), "{e:?}");
    }

    #[test]
    fn h2_sets_prior_knowledge_and_the_stream_limit() {
        let mut o = PeerOptions::new();
        Protocol::Http1.apply(&mut o);
        assert_eq!(o.alpn, ALPN::H1);
        Protocol::H2 { max_streams: 100 }.apply(&mut o);
        assert_eq!(o.alpn.get_min_http_version(), 2);
        assert_eq!(o.max_h2_streams, 100);
    }
}
