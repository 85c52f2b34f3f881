//! The request's story, hook by hook. Each hook delegates its step to one module; the
//! per-request state lives in [`Ctx`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, RespCacheable};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::downstream::Downstream;
use crate::error;
use crate::gateway::Gateway;
use crate::headers;
use crate::observe::Observe;
use crate::policy::cors;
use crate::policy::finish::Finish;
use crate::policy::router::Route;
use crate::upstream::{self, Upstream};

pub use crate::ctx::Ctx;

mod admit;
mod cache;
mod failure;
mod miss;
mod own;
mod relay;
mod traced;
mod why;

use failure::summary;

/// Compress a piece of the response body when `response_filter` chose to.
fn encode(ctx: &mut Ctx, body: &mut Option<bytes::Bytes>, end: bool) -> Result<()> {
    if let Some(enc) = ctx.encoder.as_mut() {
        let out = enc.encode(body.as_deref().unwrap_or_default(), end)?;
        *body = (!out.is_empty()).then_some(out);
    }
    Ok(())
}

/// The gateway's `ProxyHttp`: a compiled config, read-only on the hot path.
pub struct Tollgate {
    gw: Arc<Gateway>,
    obs: Arc<Observe>,
    /// Idle connections the fast path keeps per backend and thread
    /// (`upstream_keepalive_pool_size`).
    pool: usize,
    /// Attempts the relay makes per request at most (`max_retries`, as Pingora's own loop).
    max_retries: usize,
    /// Every upstream is one the fast path relays to (the usual case): any plain request
    /// takes it, whichever route it finds, so none needs routing before it is admitted.
    all_relayed: bool,
    /// The gateway's `fast_path`: off, the own codec serves no request (it still answers
    /// heads refused before a session exists) and none is relayed by tollgate itself.
    fast_path: bool,
}

impl Tollgate {
    /// The proxy for `gw`, with Pingora's server settings that bound the relay's upstream
    /// connections and attempts (`upstream_keepalive_pool_size`, `max_retries`).
    pub fn new(gw: Arc<Gateway>, obs: Arc<Observe>, conf: &ServerConf) -> Self {
        let all_relayed = gw.upstreams.iter().all(|u| crate::fastpath::relays_to(u))
            && gw.caches.iter().all(Option::is_none);
        Tollgate {
            fast_path: gw.fast_path,
            gw,
            obs,
            pool: conf.upstream_keepalive_pool_size,
            max_retries: conf.max_retries,
            all_relayed,
        }
    }

    /// The compiled config this proxy serves.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gw
    }

    /// Where this proxy reports.
    pub fn observe(&self) -> &Arc<Observe> {
        &self.obs
    }

    fn route(&self, ctx: &Ctx) -> Option<&Route> {
        ctx.route.map(|i| &self.gw.router.routes()[i])
    }

    /// The upstream the request goes to (the route's, or its split's choice).
    fn upstream(&self, ctx: &Ctx) -> Option<&Upstream> {
        let id = ctx
            .upstream
            .or_else(|| self.route(ctx).map(|r| r.upstream))?;
        Some(&*self.gw.upstreams[id])
    }

    /// Pick a backend of the request's upstream that is healthy, whose circuit lets requests
    /// through and that this request has not already failed on; it becomes `ctx.attempt`.
    fn pick<'c>(&self, req: &RequestHeader, ctx: &'c mut Ctx) -> Result<&'c upstream::Attempt> {
        let id = ctx.upstream.or_else(|| self.route(ctx).map(|r| r.upstream));
        let id = id.ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream_peer without a route")
        })?;
        let up = &self.gw.upstreams[id];
        ctx.attempt = None;
        let key = upstream::hash_key(up, req, ctx.consumer_bytes(), ctx.client_ip);
        let Some(attempt) = up.select(&key, &ctx.tried) else {
            let retried = !ctx.tried.is_empty();
            return Err(error::no_backend(&up.name, retried, ctx.last_failure));
        };
        ctx.backend = Some(attempt.addr());
        ctx.upstream_started.get_or_insert_with(Instant::now);
        if let Some(t) = ctx.trace.as_mut() {
            t.attempt(req.method.as_str(), attempt.addr(), &up.name);
        }
        Ok(ctx.attempt.insert(attempt))
    }

    /// What the upstream request carries: the rewritten target and the forwarding headers.
    /// `crumbs`: an HTTP/2 request going out as HTTP/1, whose `cookie` fields become one.
    fn upstream_edits(
        &self,
        tls: bool,
        crumbs: bool,
        req: &mut RequestHeader,
        ctx: &Ctx,
    ) -> Result<()> {
        headers::set_target(req, ctx.target.as_deref())?;
        headers::edit_request(req, |h| {
            if crumbs {
                headers::join_cookie_crumbs(h)?;
            }
            self.forwarded(tls, h, ctx)
        })
    }

    /// The upstream request's headers: forwarding, the caller's identity in place of its
    /// credential, then the route's `request_headers` edits.
    fn forwarded<'n>(
        &'n self,
        tls: bool,
        h: &mut impl headers::Edit<'n>,
        ctx: &'n Ctx,
    ) -> Result<()> {
        let client_ip = headers::forwarding(h, tls, ctx.peer_ip, ctx.client_ip, &ctx.request_id)?;
        crate::policy::auth::forward(&self.gw.auth, ctx.identity.as_ref(), h);
        if let Some(t) = &ctx.trace {
            use crate::headers::names::{TRACEPARENT, TRACESTATE};
            h.insert(&TRACEPARENT, t.upstream_header());
            match &t.state {
                Some(s) => h.insert(&TRACESTATE, s.clone()),
                None if t.stale_state => h.remove(&TRACESTATE),
                None => {}
            }
        }
        let route = self.route(ctx);
        if let Some(edits) = route.and_then(|r| r.transform.as_ref()?.request.as_ref()) {
            let host = match edits.uses_host() {
                true => h.get(&http::header::HOST).cloned(),
                false => None,
            };
            let vars = crate::policy::transform::Vars {
                client_ip: client_ip.as_ref(),
                identity: ctx.identity.as_ref(),
                request_id: &ctx.request_id,
                host: host.as_ref(),
            };
            edits.apply(h, &vars);
        }
        Ok(())
    }

    /// A response head came from the backend: its outcome for the circuit breaker, and the
    /// gRPC status a trailers-only answer carries in its headers.
    fn answered(&self, resp: &ResponseHeader, ctx: &mut Ctx) {
        ctx.upstream_answered = Some(Instant::now());
        if let Some(t) = ctx.trace.as_mut() {
            t.answered(resp.status.as_u16());
        }
        if let Some(a) = ctx.attempt.as_mut() {
            if a.upstream().is_failure_status(resp.status.as_u16()) {
                a.failure();
            } else {
                a.success();
            }
        }
        if ctx.grpc {
            ctx.grpc_status = crate::grpc::reported_status(&resp.headers);
        }
    }

    /// Send a sampled copy of an admitted request to its route's shadow (`mirror`): at once
    /// for a request without a body, at the body's end for one with (`request_body_filter`).
    fn mirror<D: Downstream>(&self, session: &mut D, ctx: &mut Ctx) {
        let Some(m) = ctx.route.and_then(|r| self.gw.mirrors[r].as_ref()) else {
            return;
        };
        if !m.sampled() {
            return;
        }
        let framing = |n: &http::HeaderName| {
            n != http::header::CONTENT_LENGTH && n != http::header::TRANSFER_ENCODING
        };
        let Ok(head) = self.head_for_upstream(session, ctx, framing) else {
            return;
        };
        if session.is_body_empty() {
            m.send(&head, None);
        } else {
            ctx.mirror = Some(Box::new(crate::mirror::Pending::new(m.clone(), head)));
        }
    }

    /// How this request's response head is finished (the route's CORS, the gateway's
    /// headers), for the writer to apply.
    fn finish<'a>(&'a self, ctx: &'a Ctx) -> Finish<'a> {
        let route = self.route(ctx);
        Finish {
            stamp: self.stamp(ctx),
            cors: route.and_then(|r| r.cors.as_ref()),
            compresses: route.is_some_and(|r| r.compression.is_some()),
        }
    }

    /// The body encoder of a route that compresses, when the client accepts its coding and
    /// the finished head calls for it (which it then says).
    fn compression(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &Ctx,
    ) -> Result<Option<crate::compress::Encoder>> {
        match self.route(ctx).and_then(|r| r.compression.as_ref()) {
            Some(c) => c.start(req, resp),
            None => Ok(None),
        }
    }

    /// The gateway's own headers for this request's response, and its route's.
    fn stamp<'a>(&'a self, ctx: &'a Ctx) -> crate::policy::stamp::Stamp<'a> {
        let limit = ctx.limit.as_ref().map(|d| (&self.gw.rate_limits, d));
        let route = self.route(ctx).map(|r| &r.response_headers);
        crate::policy::stamp::Stamp::new(&ctx.request_id, limit, route)
            .with_values(&ctx.response_values)
    }

    /// The request is over, whatever happened: the attempt's outcome, metrics, access log.
    fn finished<D: Downstream>(&self, session: &D, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(mut a) = ctx.attempt.take() {
            // The response headers already decided success; an error here (say a reset
            // mid-body) is the backend's failure unless it was the client's doing.
            if e.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream) {
                a.failure();
            } else {
                a.success();
            }
        }
        let status = self.obs.finish(session, e, ctx, self.route(ctx));
        if let (Some(tracer), Some(mut t)) = (&self.gw.tracing, ctx.trace.take()) {
            self.trace_finished(tracer, &mut t, session, e, ctx, status);
            ctx.trace = Some(t);
        }
        if self.obs.refusals.enabled() && crate::observe::refusals::is_refusal(status) {
            self.record_refusal(session, e, ctx, status);
        }
    }
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::default()
    }

    /// Who is calling: the client IP and the request id, before anything else looks.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        self.identify(session, ctx);
        Ok(())
    }

    /// Admit the request ([`admit`]); the common plain one is then relayed by tollgate itself
    /// ([`relay`]), the others continue through Pingora's proxy loop.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.refresh = session.subrequest_ctx.is_some();
        if self.admit(session, ctx).await? {
            return Ok(true);
        }
        self.mirror(session, ctx);
        let caches = self.route_cache(ctx).is_some();
        // An HTTP/2 request's headers do not say whether a body follows; its stream does.
        if self.fast_path
            && self
                .upstream(ctx)
                .is_some_and(|up| crate::fastpath::carries_on(session.req_header(), up, caches))
            && (session.req_header().version != http::Version::HTTP_2
                || Downstream::is_body_empty(session))
        {
            return self.relay(session, ctx).await;
        }
        Ok(false)
    }

    /// Enforce the route's `max_body` on bodies whose length was not declared up front (not
    /// on a WebSocket tunnel's bytes, which Pingora passes here too). The refusal is the
    /// client's error (`into_down`): Pingora's HTTP/2 upstream loop reads any other error here
    /// as the upstream's, stops reading the body and waits for an answer that never comes.
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(copy) = ctx.mirror.as_mut() {
            if !copy.piece(body.as_deref(), end_of_stream) {
                ctx.mirror = None;
            }
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if self.route(ctx).is_some_and(|r| ctx.body_bytes > r.max_body) {
                let e = Error::explain(
                    ErrorType::HTTPStatus(413),
                    "the request body is larger than this route accepts",
                );
                return Err(e.into_down());
            }
        }
        Ok(())
    }

    /// A caching route's request takes pingora-cache ([`cache`]), after admission.
    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        self.cache_enable(session, ctx);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        self.cache_key(session.req_header(), ctx)
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let forced = self.cache_hit(session.req_header(), ctx);
        // Served from the cache: a request body is read and discarded, so the connection's
        // next request starts where the client meant it to.
        if is_fresh && forced.is_none() && !session.as_downstream_mut().is_body_empty() {
            session.as_downstream_mut().drain_request_body().await?;
        }
        Ok(forced)
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        Ok(self.cache_verdict(session.req_header(), resp, ctx))
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        _ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<[u8; 16]> {
        cache::variance(meta, req)
    }

    /// A stale entry is served while one request revalidates it (within its
    /// `stale-while-revalidate` window) or when the upstream fails (`stale-if-error`); the
    /// windows are the entry's, set when it was stored. The upstream failed when its error
    /// says so, or when the gateway answers for it: a connection refused or dropped is retried
    /// until no backend is left, and that answer (502/503/504) is the last error.
    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        e: Option<&Error>,
    ) -> bool {
        e.is_none_or(|e| match e.esource() {
            pingora::ErrorSource::Upstream => true,
            pingora::ErrorSource::Unset => {
                matches!(e.etype(), ErrorType::HTTPStatus(502..=504))
            }
            _ => false,
        })
    }

    /// Pick a backend of the route's upstream that is healthy, whose circuit lets requests
    /// through and that this request has not already failed on.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = self.pick(session.req_header(), ctx)?.peer();
        if let Some(idle) = ctx.websocket {
            crate::websocket::time_handshake(session, idle, &mut peer);
        }
        Ok(Box::new(peer))
    }

    /// Rewrite the target and set the forwarding headers; an HTTP/2 client's cookie crumbs
    /// are joined for an HTTP/1 upstream.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let crumbs = session.req_header().version == http::Version::HTTP_2
            && req.version != http::Version::HTTP_2;
        // The fast path never sees a body, so only this path forwards a Content-Length that
        // may need it.
        headers::canonical_length(req)?;
        self.upstream_edits(Downstream::tls(session), crumbs, req, ctx)
    }

    /// A WebSocket handshake's answer opens the tunnel; then the gateway headers.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(idle) = ctx.websocket {
            if crate::websocket::answered(session, idle, resp.status) {
                ctx.tunnel = Some(Instant::now());
                let route = ctx.route.unwrap_or(usize::MAX);
                self.obs.metrics.websocket(route, 1);
            }
        }
        self.cache_status(session, resp, ctx);
        self.answered(resp, ctx);
        let origin = session.req_header().headers.get(&cors::ORIGIN);
        self.finish(ctx).apply(resp, origin)?;
        ctx.encoder = self.compression(session.req_header(), resp, ctx)?;
        // An HTTP/1.0 client cannot read chunked framing (RFC 9112 §6.1), which Pingora adds
        // to a body of unknown length: it gets the body as it is, ended by the close, as
        // from the own engine.
        if session.req_header().version == http::Version::HTTP_10
            && resp.headers.contains_key(http::header::TRANSFER_ENCODING)
        {
            resp.remove_header(&http::header::TRANSFER_ENCODING);
            session.set_keepalive(None);
        }
        Ok(())
    }

    /// Compress the body when `response_filter` chose to.
    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<std::time::Duration>> {
        encode(ctx, body, end_of_stream)?;
        Ok(None)
    }

    /// A gRPC call's status arrives in the trailers; they pass through unchanged.
    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut Ctx,
    ) -> Result<Option<bytes::Bytes>> {
        if ctx.grpc {
            ctx.grpc_status = crate::grpc::reported_status(trailers).or(ctx.grpc_status);
        }
        Ok(None)
    }

    /// Nothing reached the backend: try another one, within the upstream's retry budget.
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, &session.req_header().method, e)
    }

    /// Bytes may have reached the backend: retry only idempotent requests whose body is
    /// replayable, within the budget, as Pingora's default does.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let e = e.more_context(format!("upstream peer {peer}"));
        self.proxy_failed(session, e, ctx, client_reused)
    }

    /// The JSON error contract for failures Pingora reports (502, 503, 504, 400).
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        // A WebSocket handshake whose idle timer expired before the upstream's answer.
        let unanswered = ctx.websocket.is_some()
            && ctx.tunnel.is_none()
            && crate::conn::idled(session.as_downstream().stream());
        // The connection ends after this answer (`can_reuse_downstream` below): it says so.
        session.set_keepalive(None);
        self.cache_failed(session, ctx);
        FailToProxy {
            error_code: self.answer_failure(session, e, ctx, unanswered).await,
            can_reuse_downstream: false,
        }
    }

    /// How Pingora's error log names a request it failed: method, path and `Host`, never the
    /// query, which may carry an API key (`type: api_key, query:`; the access log drops it too).
    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        summary(session)
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if ctx.tunnel.is_some() {
            self.obs
                .metrics
                .websocket(ctx.route.unwrap_or(usize::MAX), -1);
            ctx.tunnel_idled = crate::conn::idled(session.as_downstream().stream());
        }
        self.cache_count(session, ctx);
        self.finished(session, e, ctx);
        crate::conn::rearm(session.as_downstream().stream());
    }
}
