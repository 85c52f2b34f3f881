//! WebSocket upgrades: which requests are handshakes, the per-route rule, and the idle timer
//! of an upgraded connection.
//!
//! Pingora 0.9 already forwards an HTTP/1.1 `Upgrade: websocket` handshake (its default
//! `H1UpgradePolicy::WebSocketOnly` sends `Connection: Upgrade` / `Upgrade: websocket`
//! upstream and strips every other `Upgrade`, such as `h2c`), and after a `101` copies bytes
//! both ways until either side closes. The handshake is routed, authenticated and rate-limited
//! like any request (it counts as one). What Pingora does not give, and this module adds: a
//! per-route switch, and an idle timeout over *both* directions. Pingora's read timeouts are
//! per direction and per read: the upstream's `read` timeout would cut a tunnel in which only
//! the client talks. [`crate::conn::Idle`] instead runs inside the client connection's stream
//! ([`crate::conn::Guarded`]), which sees every byte of the tunnel going either way.

use std::time::Duration;

use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::upstreams::peer::HttpPeer;

use crate::config::ConfigErrors;
use crate::config::Dur;

/// How long an upgraded connection may carry no byte in either direction.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// Whether the request is a WebSocket handshake, by the rule Pingora forwards upgrades with
/// (`proxy_common::is_websocket_upgrade_request`): HTTP/1.1 and `Upgrade: websocket`.
pub fn is_handshake(req: &RequestHeader) -> bool {
    req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
}

/// A route's `websocket` / `websocket_idle_timeout`: the idle timeout of its upgraded
/// connections, or `None` when the route refuses upgrades.
pub fn route_setting(
    base: &str,
    enabled: Option<bool>,
    idle: Option<Dur>,
    errs: &mut ConfigErrors,
) -> Option<Duration> {
    let path = format!("{base}.websocket_idle_timeout");
    match (enabled.unwrap_or(true), idle) {
        (false, Some(_)) => {
            errs.push(path, "has no effect with websocket: false");
            None
        }
        (false, None) => None,
        (true, None) => Some(DEFAULT_IDLE),
        (true, Some(d)) if d.0 < Duration::from_millis(10) || d.0 > Duration::from_secs(86400) => {
            errs.push(path, "must be between 10ms and 24h (e.g. \"60s\")");
            None
        }
        (true, Some(d)) => Some(d.0),
    }
}

/// `upstream_peer` of an admitted handshake: from now on the client connection is timed by
/// [`Idle`] (so waiting for the 101 counts too), and the upstream's per-read timeout, which
/// would cut a tunnel in which only the client talks, is lifted. On a stream tollgate does not
/// wrap, each direction is timed on its own instead (Pingora's read timeouts).
pub fn time_handshake(session: &Session, idle: Duration, peer: &mut HttpPeer) {
    let timed = crate::conn::tunnel(session.as_downstream().stream(), Some(idle));
    peer.options.read_timeout = (!timed).then_some(idle);
}

/// `response_filter` of an admitted handshake: `true` when the upstream switched protocols
/// (the connection is a tunnel now; the idle timer restarts). Any other answer is an ordinary
/// response: the idle timer stops.
pub fn answered(session: &mut Session, idle: Duration, status: http::StatusCode) -> bool {
    let stream = session.as_downstream().stream();
    if status != http::StatusCode::SWITCHING_PROTOCOLS {
        crate::conn::tunnel(stream, None);
        return false;
    }
    let timed = crate::conn::tunnel(stream, Some(idle));
    // The request's body read timeout would otherwise apply to the client's side of the tunnel.
    session.set_read_timeout((!timed).then_some(idle));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: http::Version, upgrade: Option<&str>) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/ws", None).unwrap();
        r.set_version(version);
        if let Some(u) = upgrade {
            r.insert_header("upgrade", u).unwrap();
        }
        r
    }

    #[test]
    fn handshakes() {
        use http::Version;
        assert!(is_handshake(&req(Version::HTTP_11, Some("websocket"))));
        assert!(is_handshake(&req(Version::HTTP_11, Some("WebSocket"))));
        assert!(!is_handshake(&req(Version::HTTP_11, Some("h2c"))));
        assert!(!is_handshake(&req(Version::HTTP_10, Some("websocket"))));
        assert!(!is_handshake(&req(Version::HTTP_11, None)));
    }

    #[test]
    fn settings() {
        let mut errs = ConfigErrors::default();
        let d = |s: u64| Some(Dur(Duration::from_millis(s)));
        assert_eq!(
            route_setting("r", None, None, &mut errs),
            Some(DEFAULT_IDLE)
        );
        assert_eq!(route_setting("r", Some(false), None, &mut errs), None);
        assert_eq!(
            route_setting("r", Some(true), d(300), &mut errs),
            Some(Duration::from_millis(300))
        );
        assert!(errs.0.is_empty());
        route_setting("r", Some(false), d(300), &mut errs);
        route_setting("r", None, d(0), &mut errs);
        assert_eq!(errs.0.len(), 2, "{errs:?}");
    }
}
