//! The admin listener, a separate Pingora service so that data-plane load never hides the
//! gateway's own health: `/health` (always open: load balancers probe it), `/metrics`, the
//! dashboard at `/` and its data at `/api/status`. With `admin.token` set, every path but
//! `/health` wants it: `Authorization: Bearer TOKEN` from tools, or Basic credentials with it
//! as the password from a browser (which asks once and sends them with the page's requests).

pub mod client;
pub mod purge;
mod status;

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::headers::names::{GATEWAY_NAME, X_GATEWAY};
use crate::inplace::Reloads;
use crate::live::Live;

pub struct Admin {
    started: Instant,
    /// Each admin request reads the generation current when it arrives.
    live: Live,
    reloads: Arc<Reloads>,
}

impl Admin {
    pub fn new(live: Live, reloads: Arc<Reloads>) -> Self {
        Admin {
            started: Instant::now(),
            live,
            reloads,
        }
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let gen = self.live.current();
        let (gw, obs) = (gen.gateway(), gen.observe());
        let routes = gw.router.routes();
        let mirrors: Vec<_> = routes
            .iter()
            .zip(&gw.mirrors)
            .filter_map(|(r, m)| Some((&*r.name, &**m.as_ref()?)))
            .collect();
        let mut body = obs.render(&gw.auth, &gw.rate_limits, &gw.upstreams, &mirrors);
        crate::observe::cache_metrics::render(&mut body, &gw.stores, &gw.caches);
        self.reloads.render(&mut body);
        let body = body.into_bytes();
        Response::builder()
            .status(200)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .header(&X_GATEWAY, GATEWAY_NAME.clone())
            .body(body)
            .expect("static response parts are valid")
    }

    fn health(&self) -> (u16, serde_json::Value) {
        let gen = self.live.current();
        let gw = gen.gateway();
        let upstreams: serde_json::Map<_, _> = gw
            .upstreams
            .iter()
            .map(|u| (u.name.to_string(), crate::upstream::health_json(u)))
            .collect();
        // 503 when some route has no usable backend, so an L4 balancer can use it.
        let down: Vec<&str> = gw
            .router
            .routes()
            .iter()
            .filter(|r| !gw.upstreams[r.upstream].available())
            .map(|r| &*r.name)
            .collect();
        let status = if down.is_empty() { 200 } else { 503 };
        let mut body = serde_json::json!({
                "status": if down.is_empty() { "ok" } else { "degraded" },
                "version": env!("CARGO_PKG_VERSION"),
                // Which process answers: tells the two apart during a graceful upgrade.
                "pid": std::process::id(),
                "uptime_seconds": self.started.elapsed().as_secs(),
                "routes": gw.router.routes().len(),
                "routes_down": down,
                "upstreams": upstreams,
        });
        if let Some(config) = self.reloads.json() {
            body["config"] = config;
        }
        (status, body)
    }
}

fn json(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header(&X_GATEWAY, GATEWAY_NAME.clone())
        .header("cache-control", "no-store")
        .body(body)
        .expect("static response parts are valid")
}

/// The dashboard: one page, its script and style inline, nothing fetched from elsewhere.
const DASHBOARD: &str = include_str!("dashboard.html");

impl Admin {
    /// Whether the request carries the admin token (always, when none is configured).
    fn authorized(&self, req: &http::request::Parts) -> bool {
        let gen = self.live.current();
        let Some(token) = gen
            .gateway()
            .admin
            .as_ref()
            .and_then(|a| a.token.as_deref())
        else {
            return true;
        };
        let Some(auth) = req.headers.get(http::header::AUTHORIZATION) else {
            return false;
        };
        let given = match auth.as_bytes().split_at_checked(6) {
            Some((scheme, b64)) if scheme.eq_ignore_ascii_case(b"basic ") => {
                use base64::Engine;
                let Ok(pair) = base64::engine::general_purpose::STANDARD.decode(b64.trim_ascii())
                else {
                    return false;
                };
                // `user:password`: any user; the password is the token.
                let password = pair
                    .iter()
                    .position(|&b| b == b':')
                    .map(|i| pair[i + 1..].to_vec());
                return password.is_some_and(|p| crate::policy::auth::ct::eq(&p, token));
            }
            _ => match auth.as_bytes().split_at_checked(7) {
                Some((scheme, t)) if scheme.eq_ignore_ascii_case(b"bearer ") => t.trim_ascii(),
                _ => return false,
            },
        };
        crate::policy::auth::ct::eq(given, token)
    }
}

fn unauthorized() -> Response<Vec<u8>> {
    let mut r = json(
        401,
        &serde_json::json!({"error": "unauthorized", "message": "the admin endpoints want the admin token (Authorization: Bearer, or Basic with it as the password)", "request_id": ""}),
    );
    r.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        http::HeaderValue::from_static("Basic realm=\"tollgate admin\", charset=\"UTF-8\""),
    );
    r
}

fn page(body: &'static str) -> Response<Vec<u8>> {
    Response::builder()
        .status(200)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        // Nothing but this page's own inline script and style, and requests to this origin.
        .header(
            "content-security-policy",
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:",
        )
        .header(&X_GATEWAY, GATEWAY_NAME.clone())
        .body(body.as_bytes().to_vec())
        .expect("static response parts are valid")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        if path == "/health" {
            let (status, v) = self.health();
            return json(status, &v);
        }
        if !self.authorized(session.req_header()) {
            return unauthorized();
        }
        match path.as_str() {
            "/" => page(DASHBOARD),
            "/api/status" => {
                let gen = self.live.current();
                json(
                    200,
                    &status::status(gen.gateway(), gen.observe(), self.started),
                )
            }
            "/metrics" => self.metrics(),
            "/cache/purge" => {
                let gen = self.live.current();
                let (status, v) = purge::purge(gen.gateway(), session).await;
                json(status, &v)
            }
            _ => json(
                404,
                &serde_json::json!({"error": "no_route", "message": "admin endpoints: / (dashboard), /api/status, /health, /metrics, /cache/purge", "request_id": ""}),
            ),
        }
    }
}
