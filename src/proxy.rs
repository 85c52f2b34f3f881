//! The request's story, hook by hook. Each hook delegates its step to one module; the
//! per-request state lives in [`Ctx`].

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

use crate::client::{self, X_REQUEST_ID};
use crate::config::Gateway;
use crate::cors::{self, Cors};
use crate::error::{self, Reject};
use crate::headers;
use crate::observe::Observe;
use crate::router::{self, Match, Route};
use crate::upstream::{self, Upstream};

pub use crate::ctx::Ctx;

mod relay;

/// The gateway's `ProxyHttp`: a compiled config, read-only on the hot path.
pub struct Tollgate {
    gw: Arc<Gateway>,
    obs: Arc<Observe>,
    /// Idle connections the fast path keeps per backend and thread
    /// (`upstream_keepalive_pool_size`).
    pool: usize,
}

impl Tollgate {
    pub fn new(gw: Arc<Gateway>, obs: Arc<Observe>, pool: usize) -> Self {
        Tollgate { gw, obs, pool }
    }

    fn route(&self, ctx: &Ctx) -> Option<&Route> {
        ctx.route.map(|i| &self.gw.router.routes()[i])
    }

    /// The matched route's upstream.
    fn upstream(&self, ctx: &Ctx) -> Option<&Upstream> {
        self.route(ctx).map(|r| &*self.gw.upstreams[r.upstream])
    }

    /// Answer locally with the error contract ([`error::reject`]), counted in the metrics.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reject: Reject,
        message: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        self.obs.metrics.rejected(reject.code());
        error::reject(session, ctx, reject, message, extra).await
    }

    /// The route's rate limits (all must pass): records the decision for the response
    /// headers, or answers 429 (or 503 when a `deny` Redis store is down). `true`: answered.
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<bool> {
        if route.rate_limits.is_empty() {
            return Ok(false);
        }
        let headers = &session.req_header().headers;
        ctx.limit = match self
            .gw
            .rate_limits
            .check(&route.rate_limits, &route.name, ctx, headers)
            .await
        {
            Ok(d) => d,
            Err(crate::limit::StoreUnavailable) => {
                let msg = "the rate limit store is unavailable";
                return self
                    .reject(session, ctx, Reject::Unavailable, msg, &[])
                    .await;
            }
        };
        if let Some(d) = ctx.limit.filter(|d| !d.allowed) {
            self.obs.rate_limited(route.id, &d);
            let extra = self.gw.rate_limits.headers(&d);
            let msg = "rate limit exceeded: retry after the time in Retry-After";
            return self
                .reject(session, ctx, Reject::RateLimited, msg, &extra)
                .await;
        }
        Ok(false)
    }

    /// Pick a backend of the route's upstream that is healthy, whose circuit lets requests
    /// through and that this request has not already failed on; it becomes `ctx.attempt`.
    fn pick<'c>(&self, session: &Session, ctx: &'c mut Ctx) -> Result<&'c upstream::Attempt> {
        let route = self.route(ctx).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream_peer without a route")
        })?;
        let up = &self.gw.upstreams[route.upstream];
        ctx.attempt = None;
        let key = upstream::hash_key(up, session.req_header(), ctx.consumer(), ctx.client_ip);
        let Some(attempt) = up.select(&key, &ctx.tried) else {
            let retried = !ctx.tried.is_empty();
            return Err(error::no_backend(&up.name, retried, ctx.last_failure));
        };
        ctx.backend = Some(attempt.addr());
        ctx.upstream_started.get_or_insert_with(Instant::now);
        Ok(ctx.attempt.insert(attempt))
    }

    /// Nothing reached the backend: another one may be tried, within the retry budget.
    fn connect_failed(&self, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        if let Some(mut a) = ctx.attempt.take() {
            a.failure();
        }
        ctx.attempt_failed(&e);
        let budget = self.upstream(ctx).map_or(0, |u| u.retries as usize);
        e.set_retry(ctx.tried.len() <= budget);
        e
    }

    /// Bytes may have reached the backend: whether to retry, and where (`error_while_proxy`).
    fn proxy_failed(
        &self,
        session: &Session,
        mut e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let replayable = session.req_header().method.is_idempotent()
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated();
        // A pooled connection the backend had already closed: not the backend's failure, and
        // retried on a fresh connection outside the retry budget.
        if client_reused && replayable && matches!(e.retry, pingora::RetryType::ReusedOnly) {
            ctx.attempt = None;
            e.retry.decide_reuse(true);
            return e;
        }
        if let Some(mut a) = ctx.attempt.take() {
            // A client that went away is not the backend's failure.
            if e.esource() == &pingora::ErrorSource::Upstream {
                a.failure();
            }
        }
        ctx.attempt_failed(&e);
        let budget = self.upstream(ctx).map_or(0, |u| u.retries as usize);
        if !replayable || ctx.tried.len() > budget {
            e.set_retry(false);
        } else if e.esource() == &pingora::ErrorSource::Upstream {
            // The backend failed (reset, timeout) before any response reached the client, and
            // the request can be replayed: try another backend.
            e.set_retry(true);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
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
        ctx.started = Instant::now();
        self.obs.metrics.request_started();
        ctx.counted = true;
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if client::accept_request_id(v) => v.clone(),
            _ => client::new_request_id(),
        };
        ctx.grpc = crate::grpc::is_grpc(req);
        ctx.peer_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| client::canonical(a.ip()));
        ctx.client_ip = ctx.peer_ip.map(|peer| {
            self.gw
                .trusted_proxies
                .client_ip(peer, &session.req_header().headers)
        });
        Ok(())
    }

    /// Refuse ambiguous framing, normalise the path once, then route. Everything after this
    /// sees one unambiguous request.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let limits = &self.gw.limits;
        if let Err((reject, why)) = crate::guard::check_request(session, limits) {
            // Refused before the body: its extent is unknown, so never read what follows as
            // another request.
            session.set_keepalive(None);
            return self.reject(session, ctx, reject, why, &[]).await;
        }
        if session.get_keepalive().is_some() {
            session.set_keepalive(Some(limits.keepalive_timeout.as_secs()));
        }
        session.set_read_timeout(Some(limits.body_idle_timeout));

        let req = session.req_header();
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()));
        let path = match crate::path::normalise(req.uri.path()) {
            Ok(p) => p,
            Err(e) => {
                return self
                    .reject(session, ctx, Reject::BadRequest, e.message(), &[])
                    .await
            }
        };
        if let Some(wanted) = Cors::preflight_method(req) {
            let origin = req.headers.get(&cors::ORIGIN).cloned();
            if let Match::Route(r) = self.gw.router.find(host, &path, &wanted) {
                if let (Some(policy), Some(origin)) = (&r.cors, origin) {
                    ctx.route = Some(r.id);
                    return match policy.preflight(&origin, &wanted) {
                        Some(headers) => error::answer_empty(session, ctx, 204, &headers).await,
                        None => {
                            let msg = "CORS preflight refused for this origin or method";
                            self.reject(session, ctx, Reject::Forbidden, msg, &[]).await
                        }
                    };
                }
            }
        }
        let verdict = self.gw.router.find(host, &path, &req.method);
        let bare = crate::path::without_params(&path);
        if bare != path
            && !router::same_verdict(&verdict, &self.gw.router.find(host, &bare, &req.method))
        {
            let msg = "the request path has ';' parameters that would change which route it takes";
            return self
                .reject(session, ctx, Reject::BadRequest, msg, &[])
                .await;
        }
        let route = match verdict {
            Match::Route(r) => r,
            Match::NotFound => {
                let msg = "no route matches this request";
                return self.reject(session, ctx, Reject::NoRoute, msg, &[]).await;
            }
            Match::MethodNotAllowed(allow) => {
                let msg = "this route does not allow the request method";
                let allow = [(http::header::ALLOW, allow.clone())];
                return self
                    .reject(session, ctx, Reject::MethodNotAllowed, msg, &allow)
                    .await;
            }
        };
        if let (Some(rules), Some(ip)) = (&route.ip_rules, ctx.client_ip) {
            if !rules.admits(ip) {
                let msg = "this route does not accept requests from your address";
                return self.reject(session, ctx, Reject::Forbidden, msg, &[]).await;
            }
        }
        if crate::guard::declared_body(req).is_some_and(|len| len > route.max_body) {
            // Refused before reading: the body is never read, so the connection closes.
            let msg = "the request body is larger than this route accepts";
            return self
                .reject(session, ctx, Reject::PayloadTooLarge, msg, &[])
                .await;
        }
        ctx.route = Some(route.id);
        if let Some(ra) = &route.auth {
            match self.gw.auth.check(ra, req) {
                Ok(id) => ctx.identity = Some(id),
                Err(f) => {
                    self.obs.auth_failed(route.id, &f);
                    let www = f.www.map(|v| (http::header::WWW_AUTHENTICATE, v));
                    let extra = www.as_slice();
                    return self.reject(session, ctx, f.reject, f.message, extra).await;
                }
            }
        }
        if crate::websocket::is_handshake(req) {
            let Some(idle) = route.websocket else {
                let msg = "this route does not accept WebSocket upgrades";
                return self.reject(session, ctx, Reject::Forbidden, msg, &[]).await;
            };
            ctx.websocket = Some(idle);
        }
        // What the upstream gets: the routed path, minus the prefix, minus a key carried in
        // the query.
        let key_param = ctx
            .identity
            .as_ref()
            .and_then(|id| id.credential_query.as_deref());
        let changed = matches!(path, std::borrow::Cow::Owned(_));
        ctx.target = headers::forwarded_target(route, &path, req.uri.query(), key_param, changed);
        if self.rate_limit(session, ctx, route).await? {
            return Ok(true);
        }
        let up = &self.gw.upstreams[route.upstream];
        if relay::takes_fast_path(session.req_header(), ctx, up) {
            return self.relay(session, ctx).await;
        }
        Ok(false)
    }

    /// Enforce the route's `max_body` on bodies whose length was not declared up front (not
    /// on a WebSocket tunnel's bytes, which Pingora passes here too).
    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if session.was_upgraded() {
            return Ok(());
        }
        if let Some(b) = body {
            ctx.body_bytes += b.len() as u64;
            if self.route(ctx).is_some_and(|r| ctx.body_bytes > r.max_body) {
                return Error::e_explain(
                    ErrorType::HTTPStatus(413),
                    "the request body is larger than this route accepts",
                );
            }
        }
        Ok(())
    }

    /// Pick a backend of the route's upstream that is healthy, whose circuit lets requests
    /// through and that this request has not already failed on.
    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let mut peer = self.pick(session, ctx)?.peer();
        if let Some(idle) = ctx.websocket {
            crate::websocket::time_handshake(session, idle, &mut peer);
        }
        Ok(Box::new(peer))
    }

    /// Rewrite the target and set the forwarding headers.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Only a TLS listener gives the connection an SSL digest (HTTP/1 and HTTP/2 alike).
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        headers::set_target(req, ctx.target.as_deref())?;
        headers::edit_request(req, |h| {
            headers::forwarding(h, tls, ctx.peer_ip, ctx.client_ip, &ctx.request_id)?;
            crate::auth::forward(&self.gw.auth, ctx.identity.as_ref(), h);
            Ok(())
        })
    }

    /// Gateway headers on every proxied response.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_answered = Some(Instant::now());
        if let Some(a) = ctx.attempt.as_mut() {
            if a.upstream().is_failure_status(resp.status.as_u16()) {
                a.failure();
            } else {
                a.success();
            }
        }
        let route = self.route(ctx);
        if let Some(idle) = ctx.websocket {
            if crate::websocket::answered(session, idle, resp.status) {
                ctx.tunnel = Some(Instant::now());
                self.obs
                    .metrics
                    .websocket(route.map_or(usize::MAX, |r| r.id), 1);
            }
        }
        if ctx.grpc {
            // A trailers-only answer carries its status in the headers.
            ctx.grpc_status = crate::grpc::reported_status(&resp.headers);
        }
        let req = session.req_header();
        headers::edit_response(resp, |h, status| {
            if let Some(policy) = route.and_then(|r| r.cors.as_ref()) {
                policy.decorate(h, req.headers.get(&cors::ORIGIN));
            }
            if let Some(d) = &ctx.limit {
                self.gw.rate_limits.apply(d, h);
            }
            headers::downstream_response(h, status, &ctx.request_id, route);
        })?;
        if let Some(c) = route.and_then(|r| r.compression.as_ref()) {
            ctx.encoder = c.start(session.req_header(), resp)?;
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
        if let Some(enc) = ctx.encoder.as_mut() {
            let out = enc.encode(body.as_deref().unwrap_or_default(), end_of_stream)?;
            *body = (!out.is_empty()).then_some(out);
        }
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
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(ctx, e)
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
        let reject = match unanswered {
            true => Some(Reject::GatewayTimeout),
            false => Reject::from_proxy_error(e),
        };
        let code = reject.map_or(0, Reject::status);
        if let Some(reject) = reject {
            if session.response_written().is_none() {
                let upstream = self.upstream(ctx).map(|u| &*u.name);
                let msg = error::proxy_error_message(reject, upstream);
                let mut extra = Vec::new();
                if reject == Reject::Unavailable {
                    let secs = self.upstream(ctx).map_or(1, |u| u.retry_after());
                    extra.push((http::header::RETRY_AFTER, HeaderValue::from(secs)));
                }
                let _ = self.reject(session, ctx, reject, &msg, &extra).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        if let Some(mut a) = ctx.attempt.take() {
            // The response headers already decided success; an error here (say a reset
            // mid-body) is the backend's failure unless it was the client's doing.
            if e.is_some_and(|e| e.esource() == &pingora::ErrorSource::Upstream) {
                a.failure();
            } else {
                a.success();
            }
        }
        if ctx.tunnel.is_some() {
            self.obs
                .metrics
                .websocket(ctx.route.unwrap_or(usize::MAX), -1);
            ctx.tunnel_idled = crate::conn::idled(session.as_downstream().stream());
        }
        self.obs.finish(session, e, ctx, self.route(ctx));
        crate::conn::rearm(session.as_downstream().stream());
    }
}
