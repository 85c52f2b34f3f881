//! The fast path: a plain request to a plaintext HTTP/1 upstream is relayed by tollgate itself,
//! over its own upstream connections ([`crate::upstream::h1`]), instead of by Pingora's proxy
//! loop: from `request_filter` when Pingora's session serves the client, from
//! [`super::own`] when tollgate's own codec does (both through [`Downstream`]). The same code
//! decides the same things: `pick` and the retry rules of `fail_to_connect` /
//! `error_while_proxy`, the upstream request edits of `upstream_request_filter`, the gateway
//! headers and circuit-breaker outcome of `response_filter` (the gateway's own headers
//! written by the codec itself where it can, `crate::policy::stamp::Stamp`), compression; an error goes back
//! to the caller, which answers it as `fail_to_proxy` does.
//!
//! Why: Pingora's upstream leg is half of its engine's cost per request. What takes the fast path is the common case
//! only; everything else keeps Pingora's path, whose rules for it are not repeated here: a
//! request body, HTTP/2 from the client, an upgrade (WebSocket or other), gRPC, a TLS or h2
//! upstream, an absolute-form target, `Expect`, a missing or repeated `Host`, or a `Connection`
//! header that names other headers (which Pingora strips).

use http::header;
use pingora::http::RequestHeader;
use pingora::{Error, ErrorType, Result};

use super::{Ctx, Tollgate};
use crate::downstream::Downstream;
use crate::upstream::h1::{self, Conn};
use crate::upstream::protocol::Protocol;
use crate::upstream::Upstream;

/// How an attempt failed: before anything reached the backend, or after.
enum Failed {
    Connect(Box<Error>),
    Exchange { e: Box<Error>, reused: bool },
}

/// Whether this request is one the fast path relays (see the module doc for the others).
pub(super) fn takes_fast_path(req: &RequestHeader, ctx: &Ctx, up: &Upstream) -> bool {
    ctx.websocket.is_none() && !ctx.grpc && relays_to(up) && plain(req)
}

/// Whether the fast path can relay to this upstream: plaintext HTTP/1.
pub(super) fn relays_to(up: &Upstream) -> bool {
    up.tls.is_none() && up.protocol == Protocol::Http1
}

/// Whether the request itself is one the fast path relays: not CONNECT, no body, no upgrade,
/// an origin-form target and one `Host`, a `Connection` header about this connection only.
pub(super) fn plain(req: &RequestHeader) -> bool {
    let h = &req.headers;
    // CONNECT changes the framing of what follows (RFC 9112 §6.3): Pingora refuses it (405).
    req.method != http::Method::CONNECT
        && matches!(req.version, http::Version::HTTP_11 | http::Version::HTTP_10)
        && req.raw_path().first() == Some(&b'/')
        && h.get_all(header::HOST).iter().count() == 1
        && !h.contains_key(header::TRANSFER_ENCODING)
        && !h.contains_key(header::UPGRADE)
        && !h.contains_key(header::EXPECT)
        && h.get_all(header::CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes().trim_ascii() == b"0")
        && h.get_all(header::CONNECTION).iter().all(|v| {
            crate::headers::tokens(v.as_bytes())
                .all(|t| t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close"))
        })
}

impl Tollgate {
    /// Relay the request and its response; `Ok(true)`: answered. An `Err` is answered by
    /// Pingora through `fail_to_proxy`, as a failure of its own proxy loop would be.
    pub(super) async fn relay<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let head = self.upstream_head(session, ctx)?;
        let head_request = session.req_header().method == http::Method::HEAD;
        // Attempts per request, counting retries on pooled connections the backend had
        // closed: Pingora's proxy loop is bounded by the same `max_retries`.
        for _ in 0..self.max_retries {
            let addr = self.pick(session.req_header(), ctx)?.addr();
            let timeouts = self.upstream(ctx).map(|u| u.timeouts).unwrap_or_default();
            let e = match self
                .exchange(session, ctx, addr, &timeouts, &head, head_request)
                .await
            {
                Ok(()) => return Ok(true),
                Err(Failed::Connect(e)) => self.connect_failed(ctx, e),
                Err(Failed::Exchange { e, reused }) => self.proxy_failed(session, e, ctx, reused),
            };
            if !e.retry() {
                return Err(e);
            }
        }
        Err(Error::explain(
            ErrorType::HTTPStatus(502),
            "too many attempts on the upstream",
        ))
    }

    /// The request head as the upstream gets it: the client's, with the edits of
    /// `upstream_request_filter` (made once: every attempt sends the same), as HTTP/1.1 and
    /// without the hop-by-hop headers. Written from the client's head through an overlay of
    /// the edits, never a copy of it.
    fn upstream_head<D: Downstream>(&self, session: &D, ctx: &Ctx) -> Result<Vec<u8>> {
        let req = session.req_header();
        let target = match ctx.target.as_deref() {
            Some(t) => crate::headers::checked_target(t)?.as_bytes(),
            None => req.raw_path(),
        };
        if target.first() != Some(&b'/') {
            return Err(Error::explain(
                ErrorType::InternalError,
                "the upstream request target is not a path",
            ));
        }
        let mut h = crate::headers::Overlay::new(&req.headers);
        self.forwarded(session.tls(), &mut h, ctx)?;
        let kept = h
            .iter()
            .filter(|(name, _)| !crate::headers::is_hop_by_hop(name));
        Ok(h1::request_head(
            &req.method,
            target,
            kept,
            req.headers.len(),
        ))
    }

    /// One attempt on the backend at `addr`: send the head, relay the response.
    async fn exchange<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        addr: std::net::SocketAddr,
        timeouts: &crate::upstream::Timeouts,
        head: &[u8],
        head_request: bool,
    ) -> std::result::Result<(), Failed> {
        let mut conn = Conn::get(addr, timeouts).await.map_err(Failed::Connect)?;
        let reused = conn.reused;
        let fail = |e| Failed::Exchange { e, reused };
        conn.send(head).await.map_err(fail)?;
        // The backend's headers of the names the gateway sets are not copied: they would be
        // replaced, in the map or on the wire.
        let stamp = self.stamp(ctx);
        let (mut resp, mut body) = conn
            .response(head_request, |name| stamp.sets(name))
            .await
            .map_err(fail)?;
        let later = self
            .decorate(session.req_header(), &mut resp, ctx, session.writes_stamp())
            .map_err(fail)?;
        let encoded = ctx.encoder.is_some();
        let stamp = later.then(|| self.stamp(ctx));
        session
            .write_response_header(Box::new(resp), stamp, body.is_done() && !encoded)
            .await
            .map_err(fail)?;
        if body.is_done() && !encoded {
            conn.release(self.pool);
            return Ok(());
        }
        // The body, piece by piece as it arrives: what the client has not taken is not read.
        let fail = |e| Failed::Exchange { e, reused: false };
        let mut piece = match conn.body(&mut body).await {
            Ok(p) => p,
            Err(e) => {
                session.cut_short().await;
                return Err(fail(e));
            }
        };
        loop {
            let end = body.is_done();
            super::encode(ctx, &mut piece, end).map_err(fail)?;
            session
                .write_response_body(piece, end)
                .await
                .map_err(fail)?;
            if end {
                break;
            }
            piece = match conn.body(&mut body).await {
                Ok(p) => p,
                Err(e) => {
                    session.cut_short().await;
                    return Err(fail(e));
                }
            };
        }
        conn.release(self.pool);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn only_plain_requests_take_the_fast_path() {
        let up = upstream();
        let ctx = Ctx::default();
        assert!(takes_fast_path(&req(&[]), &ctx, &up));
        assert!(takes_fast_path(
            &req(&[("connection", "Keep-Alive")]),
            &ctx,
            &up
        ));
        assert!(takes_fast_path(&req(&[("content-length", "0")]), &ctx, &up));
        for (k, v) in [
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("expect", "100-continue"),
            ("connection", "close, x-secret"),
            ("host", "other.example"),
        ] {
            assert!(!takes_fast_path(&req(&[(k, v)]), &ctx, &up), "{k}: {v}");
        }
        let absolute = RequestHeader::build("GET", b"http://a.example/x", None).unwrap();
        assert!(!takes_fast_path(&absolute, &ctx, &up));
        let mut connect = RequestHeader::build("CONNECT", b"/x", None).unwrap();
        connect.insert_header("host", "example.com").unwrap();
        assert!(!takes_fast_path(&connect, &ctx, &up), "CONNECT with a path");
        let grpc = Ctx {
            grpc: true,
            ..Ctx::default()
        };
        assert!(!takes_fast_path(&req(&[]), &grpc, &up));
    }
}
