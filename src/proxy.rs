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
use crate::error::{self, Reject};
use crate::headers;
use crate::observe::access_log;
use crate::router::{Match, Route};

/// The gateway's `ProxyHttp`: a compiled config, read-only on the hot path.
pub struct Tollgate {
    gw: Arc<Gateway>,
}

impl Tollgate {
    pub fn new(gw: Arc<Gateway>) -> Self {
        Tollgate { gw }
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
    /// Set when tollgate answered itself.
    pub local_status: Option<u16>,
    /// The authenticated caller, forwarded upstream.
    pub identity: Option<crate::auth::Identity>,
}

static ALLOW: HeaderName = http::header::ALLOW;

impl Tollgate {
    /// Answer locally with the JSON error contract and remember the status for the log.
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        reject: Reject,
        message: &str,
        extra: &[(HeaderName, HeaderValue)],
    ) -> Result<bool> {
        ctx.local_status = Some(reject.status());
        error::respond(session, reject, message, Some(&ctx.request_id), extra).await?;
        Ok(true)
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
            local_status: None,
            identity: None,
        }
    }

    /// Who is calling: the client IP and the request id, before anything else looks.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        ctx.started = Instant::now();
        let req = session.req_header();
        ctx.request_id = match req.headers.get(&X_REQUEST_ID) {
            Some(v) if client::accept_request_id(v) => v.clone(),
            _ => client::new_request_id(),
        };
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

    /// Normalise the path once, then route. Everything after this sees one path.
    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
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
        let route = match self.gw.router.find(host, &path, &req.method) {
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
        let changed = matches!(path, std::borrow::Cow::Owned(_));
        ctx.target = headers::upstream_target(route, &path, req.uri.query(), changed);
        ctx.route = Some(route.id);
        if let Some(ra) = &route.auth {
            match self.gw.auth.check(ra, req) {
                Ok(id) => {
                    if let Some(q) = &id.credential_query {
                        let query = req
                            .uri
                            .query()
                            .and_then(|s| crate::auth::strip_query_param(s, q));
                        ctx.target = headers::upstream_target(route, &path, query.as_deref(), true);
                    }
                    ctx.identity = Some(id)
                }
                Err(f) => {
                    let extra: Vec<_> = f
                        .www
                        .into_iter()
                        .map(|v| (http::header::WWW_AUTHENTICATE, v))
                        .collect();
                    return self.reject(session, ctx, f.reject, f.message, &extra).await;
                }
            }
        }
        Ok(false)
    }

    /// Pick a backend of the route's upstream that this request has not already failed on.
    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let route = self.route(ctx).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream_peer without a route")
        })?;
        let upstream = &self.gw.upstreams[route.upstream];
        let Some(addr) = upstream.select(&ctx.tried) else {
            return Error::e_explain(
                ErrorType::HTTPStatus(503),
                format!("no backend available in upstream {}", upstream.name),
            );
        };
        ctx.backend = Some(addr);
        Ok(Box::new(upstream.peer(addr)))
    }

    /// Rewrite the target and set the forwarding headers.
    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        req: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::upstream_request(
            req,
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
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::downstream_response(resp, &ctx.request_id, self.route(ctx))
    }

    /// Nothing reached the backend: try another one, within the upstream's retry budget.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
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
        if let Some(b) = ctx.backend {
            ctx.tried.push(b);
        }
        let budget = self
            .route(ctx)
            .map_or(0, |r| self.gw.upstreams[r.upstream].retries as usize);
        if !session.req_header().method.is_idempotent()
            || session.as_ref().retry_buffer_truncated()
            || ctx.tried.len() > budget
        {
            e.set_retry(false);
        } else {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    /// The JSON error contract for failures Pingora reports (502, 503, 504, 400).
    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let reject = Reject::from_proxy_error(e);
        let code = reject.map_or(0, Reject::status);
        if let Some(reject) = reject {
            if session.response_written().is_none() {
                let upstream = self
                    .route(ctx)
                    .map(|r| &*self.gw.upstreams[r.upstream].name);
                let msg = proxy_error_message(reject, upstream);
                ctx.local_status = Some(code);
                let _ = error::respond(session, reject, &msg, Some(&ctx.request_id), &[]).await;
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        access_log::log(session, e, ctx, self.route(ctx));
    }
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
        _ => "the gateway could not complete the request".to_owned(),
    }
}
