//! The relay: a request the own engine carries ([`crate::fastpath::carries`]) is relayed by
//! tollgate itself, over its own upstream connections ([`crate::fastpath::h1::client`]),
//! instead of by Pingora's proxy loop: from `request_filter` when Pingora's session serves the
//! client, from [`super::own`] when tollgate's own codec does (both through [`Downstream`]).
//! The same code decides the same things: `pick` and the retry rules of `fail_to_connect` /
//! `error_while_proxy`, the upstream request edits of `upstream_request_filter`, the gateway
//! headers and circuit-breaker outcome of `response_filter` (the gateway's own headers
//! written by the codec itself where it can, `crate::policy::stamp::Stamp`), compression; an
//! error goes back to the caller, which answers it as `fail_to_proxy` does.

use pingora::http::{RequestHeader, ResponseHeader};
use pingora::{Error, ErrorType, Result};

use crate::headers::Edit;

use super::{Ctx, Tollgate};
use crate::downstream::Downstream;
use crate::fastpath::h1::client::{self as h1, Conn};

/// What watches a relayed response besides the client: the own engine's cache miss
/// ([`super::miss`]) stores it. The plain relay watches nothing (`()`).
pub(super) trait Tee {
    /// The backend's response head to the client's request `req`, before the gateway's
    /// headers are put on it.
    fn head(&mut self, _req: &RequestHeader, _resp: &mut ResponseHeader) {}
    /// A piece of the body as the backend sent it (before compression).
    fn body(&mut self, _piece: &[u8]) {}
    /// The body ended: all of it was read from the backend (may be said more than once).
    fn end(&mut self) {}
}

impl Tee for () {}

/// How an attempt failed: before anything reached the backend, or after.
enum Failed {
    Connect(Box<Error>),
    Exchange { e: Box<Error>, reused: bool },
}

impl Tollgate {
    /// Relay the request and its response; `Ok(true)`: answered. An `Err` is answered by
    /// Pingora through `fail_to_proxy`, as a failure of its own proxy loop would be.
    pub(super) async fn relay<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        self.relay_teed(session, ctx, &mut ()).await
    }

    /// [`Self::relay`], with `tee` watching the response.
    pub(super) async fn relay_teed<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        tee: &mut impl Tee,
    ) -> Result<bool> {
        let mut head = self.upstream_head(session, ctx)?;
        // Attempts per request, counting retries on pooled connections the backend had
        // closed: Pingora's proxy loop is bounded by the same `max_retries`.
        for attempt in 0..self.max_retries {
            let addr = self.pick(session.req_header(), ctx)?.addr();
            // A sampled trace names each attempt's span as the upstream's parent: the head
            // names the first attempt's already, a retry's is made again.
            if attempt > 0 && ctx.trace.as_ref().is_some_and(|t| t.sampled()) {
                head = self.upstream_head(session, ctx)?;
            }
            let timeouts = self.upstream(ctx).map(|u| u.timeouts).unwrap_or_default();
            let e = match self
                .exchange(session, ctx, addr, &timeouts, &head, tee)
                .await
            {
                Ok(()) => return Ok(true),
                Err(Failed::Connect(e)) => {
                    self.connect_failed(ctx, &session.req_header().method, e)
                }
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
        self.head_for_upstream(session, ctx, |_| true)
    }

    /// The upstream request head of [`Self::upstream_head`] with only the headers `keep`
    /// also keeps.
    pub(super) fn head_for_upstream<D: Downstream>(
        &self,
        session: &D,
        ctx: &Ctx,
        keep: impl Fn(&http::HeaderName) -> bool,
    ) -> Result<Vec<u8>> {
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
        if req.version == http::Version::HTTP_2 {
            // As Pingora's proxy sends an HTTP/2 request to an HTTP/1 upstream: `Host` from
            // `:authority`, the cookie crumbs joined.
            let host = crate::fastpath::h2_host(req).ok_or_else(|| {
                Error::explain(ErrorType::InvalidHTTPHeader, "no authority for the Host")
            })?;
            h.insert(&http::header::HOST, host);
            crate::headers::join_cookie_crumbs(&mut h)?;
        }
        self.forwarded(session.tls(), &mut h, ctx)?;
        let kept = h
            .iter()
            .filter(|(name, _)| !crate::headers::is_hop_by_hop(name) && keep(name));
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
        tee: &mut impl Tee,
    ) -> std::result::Result<(), Failed> {
        let head_request = session.req_header().method == http::Method::HEAD;
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
        tee.head(session.req_header(), &mut resp);
        if body.is_done() {
            tee.end();
        }
        self.answered(&resp, ctx);
        let stamp = session
            .finish_head(&mut resp, self.finish(ctx))
            .map_err(fail)?;
        let encoder = self
            .compression(session.req_header(), &mut resp, ctx)
            .map_err(fail)?;
        let encoded = encoder.is_some();
        session
            .write_response_header(Box::new(resp), stamp, body.is_done() && !encoded)
            .await
            .map_err(fail)?;
        ctx.encoder = encoder;
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
            if let Some(p) = &piece {
                tee.body(p);
            }
            if end {
                tee.end();
            }
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
