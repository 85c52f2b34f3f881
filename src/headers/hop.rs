//! Hop-by-hop headers (RFC 9110 §7.6.1): about one connection, never forwarded as they came.
//! One list, [`HOP_BY_HOP`], for both engines and both directions.
//!
//! Requests: none reaches the upstream. Pingora's proxy loop strips exactly these (and the
//! names `Connection` lists) from what it forwards, but between an HTTP/2 client and an
//! HTTP/2 upstream, where gRPC's `TE: trailers` passes (RFC 9113 §8.2.2); the fast path
//! writes its upstream heads without them ([`is_hop_by_hop`]; its requests' `Connection`
//! lists no other names). Responses: each entry says what becomes of it
//! ([`InResponse`], applied by [`remove_hop_by_hop`]).

use http::header::{
    CONNECTION, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, StatusCode};

/// What becomes of a hop-by-hop header in a response passed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InResponse {
    /// Removed (`Upgrade` is kept on a `101`, whose protocol switch it names).
    Removed,
    /// Written by whichever codec writes the client's response: `Connection` (the names the
    /// backend's lists are removed) and `Transfer-Encoding` (the framing).
    Rewritten,
    /// Passed on: `Trailer` announces the trailers that are passed on, `Proxy-Authenticate`
    /// is for the client; the request-only ones mean nothing in a response.
    Passed,
}

/// A hop-by-hop header and what becomes of it in a response.
pub struct Hop {
    pub name: HeaderName,
    pub response: InResponse,
}

const fn hop(name: HeaderName, response: InResponse) -> Hop {
    Hop { name, response }
}

/// Every hop-by-hop header: the standard ones and those clients still send (Pingora's list).
/// Those removed from responses come first, so that a response's scan stops after them.
pub static HOP_BY_HOP: [Hop; 10] = [
    hop(UPGRADE, InResponse::Removed),
    hop(HeaderName::from_static("keep-alive"), InResponse::Removed),
    hop(
        HeaderName::from_static("proxy-connection"),
        InResponse::Removed,
    ),
    hop(CONNECTION, InResponse::Rewritten),
    hop(TRANSFER_ENCODING, InResponse::Rewritten),
    hop(TE, InResponse::Passed),
    hop(TRAILER, InResponse::Passed),
    hop(PROXY_AUTHENTICATE, InResponse::Passed),
    hop(PROXY_AUTHORIZATION, InResponse::Passed),
    hop(
        HeaderName::from_static("http2-settings"),
        InResponse::Passed,
    ),
];

/// Whether a request header is hop-by-hop: never forwarded upstream. Asked of every header
/// the fast path forwards, so it is [`HOP_BY_HOP`]'s names as one `match` on the name (a
/// dispatch on its length, then one compare), not ten compares; a test keeps the two equal.
pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "http2-settings"
    )
}

/// Whether a response header is one [`remove_hop_by_hop`] removes (`Upgrade` but on a 101).
/// Asked of every response header: one `match`, as [`is_hop_by_hop`]; a test keeps it equal
/// to the list's.
fn removed(name: &HeaderName) -> bool {
    matches!(name.as_str(), "upgrade" | "keep-alive" | "proxy-connection")
}

fn removed_ones() -> impl Iterator<Item = &'static Hop> {
    HOP_BY_HOP
        .iter()
        .take_while(|h| h.response == InResponse::Removed)
}

/// Remove the upstream's hop-by-hop headers (those [`InResponse::Removed`], and the names its
/// `Connection` lists but for the framing headers): first, so that none of the gateway's own is
/// removed for a name the backend's `Connection` lists.
pub fn remove_hop_by_hop(h: &mut HeaderMap, status: StatusCode) {
    // Most responses carry none of these but `Connection`. One look over the few names is
    // cheaper than a remove of each: `keep-alive` and `proxy-connection` are not standard
    // names, so every remove would hash their bytes.
    let (mut connection, mut hop_by_hop) = (false, false);
    for name in h.keys() {
        connection |= name == CONNECTION;
        hop_by_hop |= removed(name);
    }
    let conn = match connection {
        true => h.get(CONNECTION).cloned(),
        false => None,
    };
    if let Some(conn) = conn {
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
                    h.remove(token.to_ascii_lowercase().as_str());
                }
            }
        }
    }
    if hop_by_hop {
        for hop in removed_ones() {
            if hop.name != UPGRADE || status != StatusCode::SWITCHING_PROTOCOLS {
                h.remove(&hop.name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The list is Pingora's (`pingora_proxy::proxy_common::strip_standard_hop_by_hop_headers`),
    /// each name once; a request loses every one of them.
    #[test]
    fn the_list_is_every_hop_by_hop_header_once() {
        let mut names: Vec<&str> = HOP_BY_HOP.iter().map(|h| h.name.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "connection",
                "http2-settings",
                "keep-alive",
                "proxy-authenticate",
                "proxy-authorization",
                "proxy-connection",
                "te",
                "trailer",
                "transfer-encoding",
                "upgrade",
            ]
        );
        for hop in &HOP_BY_HOP {
            let spelt = HeaderName::from_bytes(hop.name.as_str().to_uppercase().as_bytes());
            assert!(is_hop_by_hop(&spelt.unwrap()), "{}", hop.name);
            let in_list = hop.response == InResponse::Removed;
            assert_eq!(removed(&hop.name), in_list, "{}", hop.name);
        }
        let first_kept = HOP_BY_HOP
            .iter()
            .position(|h| h.response != InResponse::Removed);
        assert!(
            HOP_BY_HOP[first_kept.unwrap()..]
                .iter()
                .all(|h| h.response != InResponse::Removed),
            "the ones removed from responses come first"
        );
        // The match in `is_hop_by_hop` holds no name beyond the list.
        for end_to_end in [
            "host",
            "cookie",
            "x-forwarded-for",
            "content-length",
            "tee",
            "accept",
            "authorization",
            "cache-control",
            "content-type",
            "date",
            "expect",
            "proxy-authentication-info",
            "sec-websocket-key",
            "trailers",
            "upgrade-insecure-requests",
        ] {
            assert!(!is_hop_by_hop(&HeaderName::from_static(end_to_end)));
            assert!(!removed(&HeaderName::from_static(end_to_end)));
        }
    }

    /// In a response: the removed ones go (`Upgrade` stays on a 101), with the names the
    /// backend's `Connection` lists but for the framing ones; the rest is left to the codec
    /// or passed on.
    #[test]
    fn a_response_keeps_what_its_direction_keeps() {
        let all = || {
            let mut h = HeaderMap::new();
            for hop in &HOP_BY_HOP {
                h.insert(&hop.name, "v".parse().unwrap());
            }
            h.insert(
                CONNECTION,
                "keep-alive, X-Private, Content-Length".parse().unwrap(),
            );
            h.insert("x-private", "secret".parse().unwrap());
            h.insert("content-length", "1".parse().unwrap());
            h
        };
        for status in [StatusCode::OK, StatusCode::SWITCHING_PROTOCOLS] {
            let mut h = all();
            remove_hop_by_hop(&mut h, status);
            for hop in &HOP_BY_HOP {
                let kept = match hop.response {
                    InResponse::Removed => hop.name == UPGRADE && status.as_u16() == 101,
                    InResponse::Rewritten | InResponse::Passed => true,
                };
                assert_eq!(h.contains_key(&hop.name), kept, "{} on {status}", hop.name);
            }
            assert!(!h.contains_key("x-private"), "named by Connection");
            assert!(h.contains_key("content-length"), "framing stays");
        }
    }
}
