//! Admission: who is calling, which route the request takes, and whether it may: framing
//! and size checks, path normalisation, CORS preflight, routing, address rules,
//! authentication and rate limits. Written against [`Downstream`], so a request gets the same
//! decisions whichever codec serves its client.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;

use super::{Ctx, Tollgate};
use crate::client;
use crate::downstream::{answer, Downstream};
use crate::error::Reject;
use crate::headers::names::X_REQUEST_ID;
use crate::listen::client_auth::PeerCert;
use crate::policy::cors::{self, Cors};
use crate::policy::router::{self, Match, Route};
use crate::policy::split::Split;

impl Tollgate {
    /// Who is calling: the client IP and the request id, before anything else looks. The
    /// request's clock started when its context was made, once its head was read.
    pub(super) fn identify<D: Downstream>(&self, session: &D, ctx: &mut Ctx) {
        self.obs.metrics.request_started();
        ctx.counted = true;
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if client::accept_request_id(v) => v.clone(),
            _ => client::new_request_id(),
        };
        ctx.grpc = crate::grpc::is_grpc(req);
        if let Some(t) = &self.gw.tracing {
            ctx.trace = Some(t.start(&req.headers));
        }
        ctx.peer_ip = session.peer_ip().map(client::canonical);
        ctx.client_ip = ctx.peer_ip.map(|peer| {
            self.gw
                .trusted_proxies
                .client_ip(peer, &session.req_header().headers)
        });
    }

    /// Refuse ambiguous framing, normalise the path once, route, authenticate, rate-limit.
    /// Everything after this sees one unambiguous, admitted request. `true`: answered.
    pub(super) async fn admit<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        let limits = &self.gw.limits;
        session.set_limits(limits);
        if let Err((reject, why)) =
            crate::policy::guard::check_request(session.req_header(), || session.raw_head(), limits)
        {
            // Refused before the body: its extent is unknown, so never read what follows as
            // another request.
            session.set_keepalive(None);
            return self.reject(session, ctx, reject, why, &[]).await;
        }
        if self.underscored(session) {
            let msg = "the request has a header name with an underscore";
            return self
                .reject(session, ctx, Reject::BadRequest, msg, &[])
                .await;
        }
        let req = session.req_header();
        let host = route_host(req);
        let path = match ctx.routed {
            Some(_) => Ok(std::borrow::Cow::Borrowed(req.uri.path())),
            None => crate::policy::path::normalise(req.uri.path()),
        };
        let path = match path {
            Ok(p) => p,
            Err(e) => {
                return self
                    .reject(session, ctx, Reject::BadRequest, e.message(), &[])
                    .await
            }
        };
        if let Some(wanted) = Cors::preflight_method(req) {
            let origin = req.headers.get(&cors::ORIGIN).cloned();
            if let Match::Route(r) = self.gw.router.find(host, &path, &wanted, req) {
                if let (Some(policy), Some(origin)) = (&r.cors, origin) {
                    ctx.route = Some(r.id);
                    return match policy.preflight(&origin, &wanted) {
                        Some(headers) => answer::answer_empty(session, ctx, 204, &headers).await,
                        None => {
                            let msg = "CORS preflight refused for this origin or method";
                            self.reject(session, ctx, Reject::Forbidden, msg, &[]).await
                        }
                    };
                }
            }
        }
        let verdict = match ctx.routed {
            Some(id) => Match::Route(&self.gw.router.routes()[id]),
            None => self.gw.router.find(host, &path, &req.method, req),
        };
        let bare = crate::policy::path::without_params(&path);
        if bare != path
            && !router::same_verdict(
                &verdict,
                &self.gw.router.find(host, &bare, &req.method, req),
            )
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
        if crate::policy::guard::declared_body(req).is_some_and(|len| len > route.max_body) {
            // Refused before reading: the body is never read, so the connection closes.
            let msg = "the request body is larger than this route accepts";
            return self
                .reject(session, ctx, Reject::PayloadTooLarge, msg, &[])
                .await;
        }
        ctx.route = Some(route.id);
        if let Some(ra) = &route.auth {
            let tls = if ra.mtls { session.tls_digest() } else { None };
            let cert = tls.as_deref().and_then(PeerCert::of);
            let checked = if ra.introspects {
                // Boxed: only these routes carry the call's state.
                Box::pin(self.gw.auth.check_introspecting(ra, req, cert)).await
            } else {
                self.gw.auth.check(ra, req, cert)
            };
            match checked {
                Ok(id) => ctx.identity = Some(id),
                Err(f) => {
                    self.obs.auth_failed(route.id, &f);
                    ctx.why = Some(crate::ctx::Why::Auth(f.reason));
                    let www = f.www.map(|v| (http::header::WWW_AUTHENTICATE, v));
                    let extra = www.as_slice();
                    return self.reject(session, ctx, f.reject, f.message, extra).await;
                }
            }
        }
        ctx.upstream = Some(match &route.split {
            None => route.upstream,
            Some(split) => self.branch(split, req, ctx),
        });
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
        ctx.target = match route.forwarded_target(&path, req.uri.query(), key_param, changed) {
            Ok(t) => t,
            Err(e) => {
                let msg = crate::policy::transform::refusal(e);
                return self
                    .reject(session, ctx, Reject::BadRequest, msg, &[])
                    .await;
            }
        };
        if route.response_headers.renders() {
            ctx.response_values = response_values(route, req, ctx);
        }
        self.rate_limit(session, ctx, route).await
    }

    /// The upstream a `split` sends this request to: by its sticky key when it has one, at
    /// random by weight otherwise; a branch with no healthy backend yields (`failover`).
    fn branch(&self, split: &Split, req: &RequestHeader, ctx: &Ctx) -> usize {
        let caller = crate::policy::split::Caller {
            client_ip: ctx.client_ip,
            consumer: ctx.consumer_bytes(),
            headers: &req.headers,
        };
        split.choose(split.key(&caller), |up| self.gw.upstreams[up].available())
    }

    /// Apply `underscores_in_headers` to the request's headers, before routing and auth read
    /// them: `true` when the request is to be refused (`reject`); under `drop` such headers
    /// are removed. One look over the names when none has an underscore.
    fn underscored<D: Downstream>(&self, session: &mut D) -> bool {
        use crate::gateway::file::Underscores;
        // A byte loop: names are short, a `memchr` call per name costs more.
        let underscored = |n: &HeaderName| n.as_str().bytes().any(|b| b == b'_');
        if self.gw.underscores == Underscores::Allow
            || !session.req_header().headers.keys().any(underscored)
        {
            return false;
        }
        if self.gw.underscores == Underscores::Reject {
            return true;
        }
        let req = session.req_header_mut();
        let names: Vec<HeaderName> = req
            .headers
            .keys()
            .filter(|n| underscored(n))
            .cloned()
            .collect();
        for name in &names {
            req.remove_header(name);
        }
        false
    }

    /// Answer locally with the error contract ([`answer::reject`]), counted in the metrics.
    pub(super) async fn reject<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        reject: Reject,
        message: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        self.obs.metrics.rejected(reject.code());
        ctx.why
            .get_or_insert(crate::ctx::Why::Refused(reject.code()));
        answer::reject(session, ctx, reject, message, extra).await
    }

    /// The route's rate limits (all must pass): records the decision for the response
    /// headers, or answers 429 (or 503 when a `deny` Redis store is down). `true`: answered.
    async fn rate_limit<D: Downstream>(
        &self,
        session: &mut D,
        ctx: &mut Ctx,
        route: &Route,
    ) -> Result<bool> {
        if route.rate_limits.is_empty() || ctx.refresh {
            return Ok(false);
        }
        let headers = &session.req_header().headers;
        let who = crate::policy::limit::Caller {
            client_ip: ctx.client_ip,
            identity: ctx.identity.as_ref(),
        };
        ctx.limit = match self
            .gw
            .rate_limits
            .check(&route.rate_limits, &route.name, who, headers)
            .await
        {
            Ok(d) => d,
            Err(crate::policy::limit::StoreUnavailable) => {
                let msg = "the rate limit store is unavailable";
                return self
                    .reject(session, ctx, Reject::Unavailable, msg, &[])
                    .await;
            }
        };
        if let Some(d) = ctx.limit.filter(|d| !d.allowed) {
            self.obs.rate_limited(route.id, &d);
            ctx.why = Some(crate::ctx::Why::RateLimited);
            let extra = self.gw.rate_limits.headers(&d);
            let msg = "rate limit exceeded: retry after the time in Retry-After";
            return self
                .reject(session, ctx, Reject::RateLimited, msg, &extra)
                .await;
        }
        Ok(false)
    }
}

/// The values of a route's `response_headers` that name variables, for this request.
fn response_values(
    route: &crate::policy::router::Route,
    req: &RequestHeader,
    ctx: &Ctx,
) -> Box<[Option<HeaderValue>]> {
    let headers = &route.response_headers;
    let host = match headers.uses_host() {
        true => req.headers.get(http::header::HOST).cloned().or_else(|| {
            let authority = req.uri.authority()?;
            HeaderValue::from_str(authority.as_str()).ok()
        }),
        false => None,
    };
    let client_ip = ctx.client_ip.map(crate::headers::ip_value);
    headers.render(&crate::policy::transform::Vars {
        client_ip: client_ip.as_ref(),
        identity: ctx.identity.as_ref(),
        request_id: &ctx.request_id,
        host: host.as_ref(),
    })
}

/// The host a request is routed by: its `Host`, else its target's authority.
pub(super) fn route_host(req: &RequestHeader) -> Option<&[u8]> {
    req.headers
        .get(http::header::HOST)
        .map(|h| h.as_bytes())
        .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
}
