//! The request's story, hook by hook. Each hook delegates its step to one module; the
//! per-request state lives in [`Ctx`].

use std::net::{IpAddr, SocketAddr};
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
use crate::guard::HeadTooLarge;
use crate::headers;
use crate::observe::Observe;
use crate::router::{Match, Route};
use crate::upstream;

/// The gateway's `ProxyHttp`: a compiled config, read-only on the hot path.
pub struct Tollgate {
    gw: Arc<Gateway>,
    obs: Arc<Observe>,
}

impl Tollgate {
    pub fn new(gw: Arc<Gateway>, obs: Arc<Observe>) -> Self {
        Tollgate { gw, obs }
    }

    fn route(&self, ctx: &Ctx) -> Option<&Route> {
        ctx.route.map(|i| &self.gw.router.routes()[i])
    }
}

/// What one request learns on its way through the hooks.
pub struct Ctx {
    pub started: Instant,
    pub request_id: HeaderValue,
    pub peer_ip: Option<IpAddr>,
    pub client_ip: Option<IpAddr>,
    /// Index of the matched route.
    pub route: Option<usize>,
    /// The request target for the upstream when it differs from the client's.
    pub target: Option<String>,
    /// Backends this request already tried (failed), so a retry goes elsewhere.
    pub tried: Vec<SocketAddr>,
    pub backend: Option<SocketAddr>,
    /// When the first backend was picked, and when a response head came back.
    pub upstream_started: Option<Instant>,
    pub upstream_answered: Option<Instant>,
    /// The current attempt: counted in flight, its outcome feeds the circuit breaker.
    pub attempt: Option<upstream::Attempt>,
    /// Set when tollgate answered itself.
    pub local_status: Option<u16>,
    /// Whether this request was counted in flight.
    pub counted: bool,
    /// Request body bytes seen so far.
    pub body_bytes: u64,
    /// How the last attempt on a backend failed, for the answer when no backend is left.
    pub last_failure: Option<Reject>,
    /// The rate-limit decision of a limited route, for the response's RateLimit headers.
    pub limit: Option<crate::limit::Decision>,
    /// The authenticated caller, forwarded upstream.
    pub identity: Option<crate::auth::Identity>,
    /// A gRPC call (by its Content-Type): refusals are answered with a gRPC status.
    pub grpc: bool,
    /// The `grpc-status` the call ended with (ours or the backend's), for the access log.
    pub grpc_status: Option<u8>,
    /// A WebSocket handshake its route admits: the tunnel's idle timeout.
    pub websocket: Option<std::time::Duration>,
    /// When the 101 went out: the connection has been a tunnel since.
    pub tunnel: Option<Instant>,
    /// The tunnel was closed by its idle timeout.
    pub tunnel_idled: bool,
    /// The body encoder of a compressed response.
    pub encoder: Option<crate::compress::Encoder>,
}

impl Ctx {
    /// The authenticated caller's name: an API key's consumer, or a JWT's `sub` (or
    /// `consumer_claim`). Keys `key: consumer` limits and `hash_key: consumer` balancing.
    pub fn consumer(&self) -> Option<&str> {
        let c = self.identity.as_ref()?.consumer.as_ref()?;
        c.to_str().ok()
    }

    /// A verified JWT claim, for `key: claim:NAME` limits.
    pub fn claim(&self, name: &str) -> Option<&serde_json::Value> {
        self.identity.as_ref()?.claims.as_ref()?.get(name)
    }
}

static ALLOW: HeaderName = http::header::ALLOW;

impl Tollgate {
    /// Answer locally with the JSON error contract (a gRPC status to a gRPC call) and remember
    /// the status for the log.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reject: Reject,
        message: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        ctx.local_status = Some(reject.status());
        self.obs.metrics.rejected(reject.code());
        let id = Some(&ctx.request_id);
        if ctx.grpc {
            ctx.grpc_status = Some(crate::grpc::status(reject));
        }
        error::respond(session, reject, message, id, extra, ctx.grpc).await?;
        Ok(true)
    }
}

impl Tollgate {
    /// A local answer without a body (a CORS preflight), with the gateway's headers.
    async fn answer_empty(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        status: u16,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        ctx.local_status = Some(status);
        let mut h = ResponseHeader::build(status, Some(extra.len() + 3))?;
        for (k, v) in extra {
            h.insert_header(k.clone(), v.clone())?;
        }
        h.insert_header(http::header::CONTENT_LENGTH, 0)?;
        headers::downstream_response(&mut h, &ctx.request_id, None)?;
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        session.write_response_header(Box::new(h), true).await?;
        Ok(true)
    }
}

impl Tollgate {
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
}

#[async_trait]
impl ProxyHttp for Tollgate {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            started: Instant::now(),
            request_id: HeaderValue::from_static(""),
            peer_ip: None,
            client_ip: None,
            route: None,
            target: None,
            tried: Vec::new(),
            backend: None,
            upstream_started: None,
            upstream_answered: None,
            attempt: None,
            local_status: None,
            counted: false,
            body_bytes: 0,
            last_failure: None,
            limit: None,
            identity: None,
            grpc: false,
            grpc_status: None,
            websocket: None,
            tunnel: None,
            tunnel_idled: false,
            encoder: None,
        }
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
        let raw = session
            .req_header()
            .headers
            .contains_key(http::header::TRANSFER_ENCODING)
            .then(|| session.as_http1().map(|h1| h1.get_headers_raw_bytes()))
            .flatten();
        if let Err(why) = crate::guard::check_framing(session.req_header(), raw.as_deref()) {
            // The body's extent is unknown: never read what follows as another request.
            session.set_keepalive(None);
            return self
                .reject(session, ctx, Reject::BadRequest, why, &[])
                .await;
        }
        let limits = &self.gw.limits;
        if let Err((kind, why)) = limits.check_head(session.req_header()) {
            let reject = match kind {
                HeadTooLarge::Uri => Reject::UriTooLong,
                HeadTooLarge::Headers => Reject::HeadersTooLarge,
            };
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
                        Some(headers) => self.answer_empty(session, ctx, 204, &headers).await,
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
        if bare != path && !same_verdict(&verdict, &self.gw.router.find(host, &bare, &req.method)) {
            let msg = "the request path has ';' parameters that would change which route it takes";
            return self
                .reject(session, ctx, Reject::BadRequest, msg, &[])
                .await;
        }
        let route = match verdict {
            Match::Route(r) => r,
            Match::NotFound => {
                return self
                    .reject(
                        session,
                        ctx,
                        Reject::NoRoute,
                        "no route matches this request",
                        &[],
                    )
                    .await
            }
            Match::MethodNotAllowed(allow) => {
                let msg = "this route does not allow the request method";
                let allow = [(ALLOW.clone(), allow.clone())];
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
        if declared_body(req).is_some_and(|len| len > route.max_body) {
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
        self.rate_limit(session, ctx, route).await
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
        let route = self.route(ctx).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream_peer without a route")
        })?;
        let up = &self.gw.upstreams[route.upstream];
        ctx.attempt = None;
        let key = upstream::hash_key(up, session.req_header(), ctx.consumer(), ctx.client_ip);
        let Some(attempt) = up.select(&key, &ctx.tried) else {
            if !ctx.tried.is_empty() {
                // Retries used up every usable backend: the client sees the last failure
                // (504 for a timeout, 502 otherwise), not "unavailable".
                let status = ctx.last_failure.map_or(502, Reject::status);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    format!("every backend of upstream {} failed", up.name),
                );
            }
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no backend available in upstream {}", up.name),
            );
        };
        ctx.backend = Some(attempt.addr());
        ctx.upstream_started.get_or_insert_with(Instant::now);
        let mut peer = attempt.peer();
        ctx.attempt = Some(attempt);
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
        headers::upstream_request(
            req,
            tls,
            ctx.target.as_deref(),
            ctx.peer_ip,
            ctx.client_ip,
            &ctx.request_id,
        )?;
        crate::auth::forward(&self.gw.auth, ctx.identity.as_ref(), req)
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
        if let Some(policy) = route.and_then(|r| r.cors.as_ref()) {
            policy.decorate(resp, session.req_header().headers.get(&cors::ORIGIN))?;
        }
        if let Some(d) = &ctx.limit {
            self.gw.rate_limits.apply(d, resp)?;
        }
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
        headers::downstream_response(resp, &ctx.request_id, route)?;
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
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let Some(mut a) = ctx.attempt.take() {
            a.failure();
        }
        ctx.last_failure = Reject::from_proxy_error(&e);
        if let Some(b) = ctx.backend {
            ctx.tried.push(b);
        }
        let budget = self
            .route(ctx)
            .map_or(0, |r| self.gw.upstreams[r.upstream].retries as usize);
        e.set_retry(ctx.tried.len() <= budget);
        e
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
        let mut e = e.more_context(format!("upstream peer {peer}"));
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
        ctx.last_failure = Reject::from_proxy_error(&e);
        if let Some(b) = ctx.backend {
            ctx.tried.push(b);
        }
        let budget = self
            .route(ctx)
            .map_or(0, |r| self.gw.upstreams[r.upstream].retries as usize);
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
                let upstream = self
                    .route(ctx)
                    .map(|r| &*self.gw.upstreams[r.upstream].name);
                let msg = proxy_error_message(reject, upstream);
                let mut extra = Vec::new();
                if reject == Reject::Unavailable {
                    let secs = self
                        .route(ctx)
                        .map_or(1, |r| self.gw.upstreams[r.upstream].retry_after());
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

/// Whether two router verdicts send the request the same way.
fn same_verdict(a: &Match, b: &Match) -> bool {
    match (a, b) {
        (Match::Route(x), Match::Route(y)) => x.id == y.id,
        (Match::NotFound, Match::NotFound) => true,
        (Match::MethodNotAllowed(_), Match::MethodNotAllowed(_)) => true,
        _ => false,
    }
}

/// The body length the client declared, if any.
fn declared_body(req: &RequestHeader) -> Option<u64> {
    req.headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

fn proxy_error_message(reject: Reject, upstream: Option<&str>) -> String {
    let up = upstream.unwrap_or("?");
    match reject {
        Reject::BadGateway => {
            format!("upstream {up} refused the connection or sent an invalid response")
        }
        Reject::GatewayTimeout => format!("upstream {up} did not answer in time"),
        Reject::Unavailable => format!("no backend of upstream {up} is available"),
        Reject::BadRequest => "the request is malformed".to_owned(),
        Reject::PayloadTooLarge => "the request body is larger than this route accepts".to_owned(),
        _ => "the gateway could not complete the request".to_owned(),
    }
}
